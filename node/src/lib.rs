//! The node: assembles the p2p stack into something to run.
//!
//! * [`Node`] / [`NodeOptions`]: a [`p2p::Router`] with the transports enabled by cargo
//!   features (`mconn`, `quic`, `memory`; all on by default), transaction gossip on CometBFT's
//!   mempool channel ([`gossip`]), the echo reactor, and the consensus-height announcer that
//!   makes Go CometBFT peers gossip their transactions to us.
//! * [`config`]: `config.toml` with CometBFT's key names.
//! * [`metrics`]: the Prometheus endpoint.
//! * The `p2pd` binary: `init`, `show-node-id`, `show-node-address`, `start`, `testnet`.

pub mod config;
pub mod gossip;
pub mod metrics;
pub mod testnet;
mod node;

pub use node::{Node, NodeError, NodeOptions};
