//! Core of a Tendermint ADR-062 style peer-to-peer stack.
//!
//! * [`NodeId`], [`NodeKey`], [`NodeInfo`], [`NodeAddress`]: identities and addresses;
//!   [`peer_id`]: the libp2p peer IDs (`12D3KooW…`) of ed25519 keys, for `lp2p://` addresses.
//! * [`Resolver`]: DNS for host names in addresses (system configuration or a given server),
//!   looked up on every dial, cached for the records' TTLs.
//! * [`Transport`] / [`Connection`]: what a transport crate implements (`mconn`, `quic`, `memory`).
//! * [`Router`]: owns the connections, runs the dial/accept/evict loops and moves messages between
//!   reactor [`Channel`]s and peers through bounded per-peer priority queues.
//! * `upnp` (feature `upnp`, off by default): UPnP IGD port mapping of the listening ports,
//!   publishing the external addresses.
//! * [`PeerManager`]: a synchronous state machine (no I/O, time passed in) that decides whom to
//!   dial, accept and evict, keeps scores and bans, and is persisted in a [`PeerStore`].
//!
//! This crate depends on no transport; transports live in their own crates and register the
//! URL schemes they serve with [`Router::add_transport`].

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod address;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod consensus;
pub mod dns;
pub mod echo;
pub mod key;
pub mod mempool;
pub mod node_info;
pub mod peer_id;
pub mod peer_manager;
pub mod pex;
pub mod router;
pub mod transport;
pub mod types;
#[cfg(feature = "upnp")]
pub mod upnp;

pub use address::{
    Endpoint, EndpointAddr, Host, NodeAddress, ParseAddressError, Protocol, ResolveError,
};
pub use dns::{DnsError, Resolver};
pub use key::{NodeKey, NodeKeyError};
pub use node_info::{MAX_CHANNELS, MAX_NODE_INFO_SIZE, NodeInfo, NodeInfoError, ProtocolVersion};
pub use peer_id::{PeerIdError, libp2p_peer_id, parse_libp2p_peer_id};
pub use peer_manager::{
    Direction, PeerManager, PeerManagerConfig, PeerStatus, PeerStore, PeerUpdate, Severity,
};
pub use router::{
    Channel, ChannelDescriptor, Envelope, Outbound, OverflowPolicy, PeerError, PeerUpdates,
    Recipient, Router, RouterConfig, Wrapper,
};
pub use transport::{
    CloseReason, Connection, ConnectionError, HandshakeError, Transport, TransportError,
};
pub use types::{ChannelId, NodeId, NodeIdError};
