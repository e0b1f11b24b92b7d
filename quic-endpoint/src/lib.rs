//! The QUIC pieces shared by the QUIC transports (`p2p-transport-quic`, `p2p-transport-lp2p`),
//! which, as transports, never depend on each other:
//!
//! * [`identity`]: the libp2p TLS certificate scheme that proves the node key in the TLS 1.3
//!   handshake, with rustls verifiers that derive the peer's [`p2p::NodeId`] (ring provider
//!   only);
//! * [`QuicEndpoint`]: one UDP socket and quinn endpoint serving several protocols on one port,
//!   dispatching inbound connections on the negotiated ALPN protocol;
//! * [`PriorityInbound`]: per-channel bounded receive queues taken in priority order;
//! * [`errors`]: quinn errors and peer certificates mapped to the `p2p` error types.

pub mod congestion;
pub mod errors;
pub mod identity;

mod endpoint;
mod inbound;

pub use endpoint::{
    Accepted, AlpnListener, Congestion, EndpointConfig, EndpointError, EndpointStats, QuicEndpoint,
    StreamLimits, udp_socket,
};
pub use inbound::{InboundSender, PriorityInbound};
