//! Helpers for tests and examples: build nodes on a [`MemoryNetwork`] in a few lines.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use p2p::peer_manager::PeerManagerConfig;
use p2p::router::{Channel, ChannelDescriptor, PeerUpdatesError, Wrapper};
use p2p::{
    NodeAddress, NodeId, NodeInfo, NodeKey, PeerStatus, PeerStore, PeerUpdates, Router,
    RouterConfig,
};

use crate::{MemoryNetwork, MemoryTransport};

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`). For examples and tests.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// A node under test: its router, its transport's address and a peer-update subscription.
#[derive(Debug)]
pub struct TestNode {
    /// The node's router (not started until [`TestNode::start`]).
    pub router: Router,
    /// The node's ID.
    pub id: NodeId,
    /// A subscription taken before start, so no update is missed.
    pub updates: PeerUpdates,
}

/// Options for [`TestNode::new`].
#[derive(Debug, Clone)]
pub struct TestNodeOptions {
    /// Chain ID to advertise.
    pub network: String,
    /// Router settings.
    pub router: RouterConfig,
    /// Peer-manager settings.
    pub peer_manager: PeerManagerConfig,
}

impl Default for TestNodeOptions {
    fn default() -> Self {
        Self {
            network: "memnet".into(),
            router: RouterConfig::default(),
            peer_manager: PeerManagerConfig::default(),
        }
    }
}

impl TestNode {
    /// Creates a node with a fresh key on `network`, without a peer store.
    pub fn new(network: &MemoryNetwork, moniker: &str, options: TestNodeOptions) -> Self {
        Self::with_key(network, NodeKey::generate(), moniker, options, None)
    }

    /// Creates a node with a given key and optional peer store.
    pub fn with_key(
        network: &MemoryNetwork,
        key: NodeKey,
        moniker: &str,
        options: TestNodeOptions,
        store: Option<PeerStore>,
    ) -> Self {
        let id = key.node_id();
        let info = NodeInfo::new(id, options.network.clone(), moniker, Vec::new());
        let router = Router::new(key, info, options.router, options.peer_manager, store)
            .unwrap_or_else(|e| panic!("router for {moniker}: {e}"));
        let transport: MemoryTransport =
            network.transport(id).unwrap_or_else(|e| panic!("transport for {moniker}: {e}"));
        router
            .add_transport(Arc::new(transport))
            .unwrap_or_else(|e| panic!("add transport for {moniker}: {e}"));
        let updates = router.subscribe();
        Self { router, id, updates }
    }

    /// Opens a channel (before start).
    pub fn channel<M: Wrapper>(&self, descriptor: ChannelDescriptor) -> Channel<M> {
        self.router.open_channel(descriptor).unwrap_or_else(|e| panic!("open channel: {e}"))
    }

    /// Starts the router.
    pub fn start(&self) {
        self.router.start().unwrap_or_else(|e| panic!("start: {e}"));
    }

    /// This node's `memory:` address.
    pub fn address(&self) -> NodeAddress {
        NodeAddress::new_opaque(p2p::Protocol::MEMORY, self.id)
    }

    /// Tells this node to dial `other`.
    pub fn dial(&self, other: &Self) {
        self.router.add_address(other.address()).unwrap_or_else(|e| panic!("add address: {e}"));
    }

    /// Waits until every peer in `peers` is up (and returns the updates seen), failing after
    /// `limit`.
    pub async fn wait_up(&mut self, peers: &[NodeId], limit: Duration) {
        let mut want: HashSet<NodeId> = peers.iter().copied().collect();
        let wait = async {
            while !want.is_empty() {
                match self.updates.recv().await {
                    Ok(u) if u.status == PeerStatus::Up => {
                        want.remove(&u.node_id);
                    }
                    Ok(_) => {}
                    Err(PeerUpdatesError::Lagged(_)) => {
                        for p in self.router.connected_peers() {
                            want.remove(&p.node_id);
                        }
                    }
                    Err(e) => panic!("peer updates ended: {e}"),
                }
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            panic!("peers not up within {limit:?}");
        }
    }

    /// Waits for the next update about `peer` with `status`, failing after `limit`.
    pub async fn wait_status(&mut self, peer: NodeId, status: PeerStatus, limit: Duration) {
        let wait = async {
            loop {
                match self.updates.recv().await {
                    Ok(u) if u.node_id == peer && u.status == status => return,
                    Ok(_) | Err(PeerUpdatesError::Lagged(_)) => {}
                    Err(e) => panic!("peer updates ended: {e}"),
                }
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            panic!("{peer} did not become {status:?} within {limit:?}");
        }
    }
}
