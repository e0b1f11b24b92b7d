//! The node: assembles the p2p stack into something to run.
//!
//! * [`Node`] / [`NodeOptions`]: a [`p2p::Router`] with the transports enabled by cargo
//!   features (`mconn`, `quic`, `memory`; all on by default), transaction gossip on CometBFT's
//!   mempool channel ([`gossip`]), the echo reactor, and the consensus-height announcer that
//!   makes Go CometBFT peers gossip their transactions to us.
//! * [`config`]: `config.toml` with CometBFT's key names.
//! * [`metrics`]: the Prometheus endpoint.
//! * UPnP (feature `upnp`, on by default; off at run time unless `p2p.upnp = true` or
//!   [`NodeOptions::upnp`]): maps the listening ports on the LAN's gateway (`p2p::upnp`).
//! * [`crawl`]: walks a network through PEX (`p2pd crawl`).
//! * The `p2pd` binary: `init`, `show-node-id`, `show-node-address`, `start`, `testnet`,
//!   `crawl`.
//!
//! # A node in a few lines
//!
//! Two nodes on loopback QUIC; one gossips a transaction, the other receives it:
//!
//! ```
//! # #[cfg(feature = "quic")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use p2p::NodeKey;
//! use p2p_node::{Node, NodeOptions};
//!
//! let alice = Node::start(
//!     NodeOptions::new(NodeKey::generate(), "my-chain").with_quic("127.0.0.1:0".parse()?),
//! )
//! .await?;
//! let mut txs = alice.gossip().expect("gossip is on by default").subscribe();
//!
//! let bob = Node::start(
//!     NodeOptions::new(NodeKey::generate(), "my-chain")
//!         .with_quic("127.0.0.1:0".parse()?)
//!         .with_peer(alice.addresses()[0].clone()), // quic://<alice's id>@127.0.0.1:<port>
//! )
//! .await?;
//! // Wait until bob has alice as a peer (subscribe first, then check: no event is missed).
//! let mut updates = bob.router().subscribe();
//! while bob.router().connected_peers().is_empty() {
//!     updates.recv().await?;
//! }
//!
//! bob.gossip().expect("gossip is on by default").submit(&b"key=value"[..]).await?;
//! let event = txs.recv().await?;
//! assert_eq!((&event.tx[..], event.from), (&b"key=value"[..], Some(bob.id())));
//! bob.stop().await;
//! alice.stop().await;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "quic"))]
//! # fn main() {}
//! ```

pub mod config;
pub mod crawl;
pub mod gossip;
pub mod metrics;
mod node;
pub mod testnet;

#[cfg(feature = "upnp")]
pub use node::upnp_node_addresses;
pub use node::{Node, NodeError, NodeOptions};
