//! URL PEX between Rust nodes (`p2p.pex.v1` on channel 0x7d): QUIC-only nodes that know only
//! one bootstrap node find each other, because URL PEX carries `quic://` addresses (the Go
//! dialect on channel 0x00 carries only MConn IP addresses, so it could not).
//!
//! Each node runs the PEX reactor with both channels. The nodes start one after the other and
//! are given only the bootstrap node's address; the test waits (bounded) until every node is
//! connected to every other one, then checks how the addresses were learned.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use p2p::pex::{
    PexConfig, URL_PEX_CHANNEL, pex_channel_descriptor, run_pex_reactor, url_pex_channel_descriptor,
};
use p2p::{
    NodeAddress, NodeId, NodeInfo, NodeKey, PeerManagerConfig, PeerStatus, PeerUpdates, Protocol,
    Router, RouterConfig,
};
use p2p_transport_quic::{QuicConfig, QuicTransport};
use tokio::task::JoinHandle;

/// Bound on the whole discovery.
const T: Duration = Duration::from_secs(60);

struct Node {
    router: Arc<Router>,
    updates: PeerUpdates,
    reactor: JoinHandle<()>,
    id: NodeId,
    port: u16,
}

impl Node {
    async fn start(known: &[NodeAddress], pex: PexConfig) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let key = NodeKey::generate();
        let id = key.node_id();
        let info = NodeInfo::new(id, "pex-rust", "node", Vec::<p2p::ChannelId>::new());
        let router = Router::new(
            key.clone(),
            info,
            RouterConfig::default(),
            PeerManagerConfig::default(),
            None,
        )
        .map(Arc::new)
        .unwrap();
        let quic = QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &key, QuicConfig::default())
            .unwrap();
        let port = quic.local_addr().port();
        router.add_transport(Arc::new(quic)).unwrap();
        let legacy = router.open_channel(pex_channel_descriptor()).unwrap();
        let urls = router.open_channel(url_pex_channel_descriptor()).unwrap();
        let reactor_updates = router.subscribe();
        let updates = router.subscribe();
        for address in known {
            router.add_address(address.clone()).unwrap();
        }
        router.start().unwrap();
        assert!(router.node_info().channels.contains(&URL_PEX_CHANNEL));
        assert_eq!(router.node_info().listen_addr, format!("quic://127.0.0.1:{port}"));
        let reactor =
            tokio::spawn(run_pex_reactor(router.clone(), legacy, Some(urls), reactor_updates, pex));
        Self { router, updates, reactor, id, port }
    }

    fn quic(&self) -> NodeAddress {
        format!("quic://{}@127.0.0.1:{}", self.id, self.port).parse().unwrap()
    }

    fn connected(&self) -> BTreeSet<NodeId> {
        self.router.connected_peers().iter().map(|p| p.node_id).collect()
    }

    async fn stop(self) {
        self.router.stop().await;
        let _ = self.reactor.await;
    }
}

fn pex_config() -> PexConfig {
    let mut config = PexConfig::default();
    config.request_interval = Duration::from_secs(1);
    config
}

/// Waits, on peer updates, until each node in `nodes` is connected to all of `want(node)`.
async fn wait_connected(nodes: &mut [Node], want: impl Fn(&Node) -> BTreeSet<NodeId>) {
    tokio::time::timeout(T, async {
        loop {
            let missing: Vec<usize> = (0..nodes.len())
                .filter(|i| !want(&nodes[*i]).is_subset(&nodes[*i].connected()))
                .collect();
            let Some(&i) = missing.first() else { return };
            // Something has to change on a node that is not there yet: await its next update.
            let u = nodes[i].updates.recv().await.unwrap();
            let _ = u.status == PeerStatus::Up;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let views: Vec<String> =
            nodes.iter().map(|n| format!("{} -> {:?}", n.id, n.connected())).collect();
        panic!("nodes did not all connect within {T:?}: {views:#?}")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_only_nodes_find_each_other_through_a_bootstrap_node_by_url_pex() {
    let bootstrap = Node::start(&[], pex_config()).await;
    let entry = [bootstrap.quic()];
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(&entry, pex_config()).await);
    }
    let ids: BTreeSet<NodeId> = nodes.iter().map(|n| n.id).collect();
    wait_connected(&mut nodes, |n| ids.iter().copied().filter(|id| *id != n.id).collect()).await;

    // Every node knows every other one by its QUIC address, learned by gossip (it was given
    // only the bootstrap node's).
    for n in &nodes {
        for other in nodes.iter().filter(|o| o.id != n.id) {
            let known = n.router.inspect_peer_manager(|pm, _| pm.addresses(other.id));
            assert!(known.contains(&other.quic()), "{} knows {:?} for {}", n.id, known, other.id);
            assert!(known.iter().all(|a| *a.protocol() == Protocol::QUIC), "{known:?}");
        }
    }
    bootstrap.stop().await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_only_seed_introduces_nodes_and_hangs_up() {
    let mut seed_config = pex_config();
    seed_config.seed_mode = true;
    let seed = Node::start(&[], seed_config).await;
    let entry = [seed.quic()];
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(&entry, pex_config()).await);
    }
    let ids: BTreeSet<NodeId> = nodes.iter().map(|n| n.id).collect();
    wait_connected(&mut nodes, |n| ids.iter().copied().filter(|id| *id != n.id).collect()).await;
    // The seed hung up on the peers it answered (a normal close, no penalty).
    let hung_up = |s: &Node| {
        s.router.stats().evictions.iter().find(|(r, _)| *r == "hung_up").map_or(0, |(_, n)| *n)
    };
    tokio::time::timeout(T, async {
        let mut updates = seed.router.subscribe();
        while hung_up(&seed) == 0 {
            let _ = updates.recv().await;
        }
    })
    .await
    .expect("the seed never hung up");
    for n in &nodes {
        let score = seed.router.inspect_peer_manager(|pm, now| pm.score(n.id, now));
        assert!(score.is_none_or(|s| s >= 0.0), "seed penalised {}: {score:?}", n.id);
    }
    seed.stop().await;
    for n in nodes {
        n.stop().await;
    }
}
