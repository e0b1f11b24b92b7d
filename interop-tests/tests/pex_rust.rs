//! URL PEX between Rust nodes (`p2p.pex.v1` on channel 0x7d): QUIC-only nodes that know only
//! one bootstrap node find each other, because URL PEX carries `quic://` addresses (the Go
//! dialect on channel 0x00 carries only MConn IP addresses, so it could not).
//!
//! Each node runs the PEX reactor with both channels. The nodes start one after the other and
//! are given only the bootstrap node's address; the test waits (bounded) until every node is
//! connected to every other one, then checks how the addresses were learned and that each
//! node's external address was confirmed by what its peers observed.

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
    // only the bootstrap node's). A node that was dialed learns the dialer's address when its
    // PEX reactor handles the peer's `Up`, just after the router lists the peer: bounded wait.
    let knows_all = |nodes: &[Node]| {
        nodes.iter().all(|n| {
            nodes.iter().filter(|o| o.id != n.id).all(|other| {
                let known = n.router.inspect_peer_manager(|pm, _| pm.addresses(other.id));
                known.contains(&other.quic())
                    && known.iter().all(|a| *a.protocol() == Protocol::QUIC)
            })
        })
    };
    let deadline = tokio::time::Instant::now() + T;
    while !knows_all(&nodes) {
        assert!(tokio::time::Instant::now() < deadline, "addresses not all learned by gossip");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Peers report where they see each node (URL PEX `observed`); two agreeing on a QUIC
    // node's listening port confirm its external address.
    let confirmed = |n: &Node| n.router.external_addresses().contains(&n.quic());
    while !nodes.iter().all(confirmed) {
        assert!(tokio::time::Instant::now() < deadline, "external addresses not confirmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
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

/// An evil peer on a raw MConn connection answers the Rust node's PEX request with malformed,
/// undialable and too many entries (penalised, never a disconnect; only well-formed entries,
/// within the per-source quota, are learned), then sends bytes that are no PEX message at all
/// (the node disconnects it and counts a decode error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pex_answers_cost_score_and_garbage_disconnects() {
    use bytes::Bytes;
    use p2p::Transport as _;
    use p2p::pex::PEX_CHANNEL;
    use p2p_proto::tendermint::p2p::{Message, NetAddress, PexAddrs, message::Sum};
    use p2p_transport_mconn::{MConnConfig, MConnTransport};
    use prost::Message as _;

    let chain = "evil-pex";
    let evil_key = NodeKey::generate();
    let evil_id = evil_key.node_id();
    let evil =
        MConnTransport::bind("127.0.0.1:0".parse().unwrap(), MConnConfig::default()).await.unwrap();
    let evil_port = evil.local_addr().unwrap().port();
    let node = p2p_node::Node::start(
        p2p_node::NodeOptions::new(NodeKey::generate(), chain)
            .with_mconn("127.0.0.1:0".parse().unwrap())
            .with_peer(format!("mconn://{evil_id}@127.0.0.1:{evil_port}").parse().unwrap()),
    )
    .await
    .unwrap();

    let mut conn = evil.accept().await.unwrap();
    let info = NodeInfo::new(evil_id, chain, "evil", [PEX_CHANNEL])
        .with_listen_addr(format!("127.0.0.1:{evil_port}"));
    conn.handshake(&info, &evil_key, &[pex_channel_descriptor()]).await.unwrap();
    // The node dialed us, so it asks at once.
    tokio::time::timeout(T, async {
        loop {
            let (channel, bytes) = conn.receive().await.unwrap();
            let message = Message::decode(bytes.as_ref()).unwrap();
            if channel == PEX_CHANNEL && matches!(message.sum, Some(Sum::PexRequest(_))) {
                return;
            }
        }
    })
    .await
    .expect("no PexRequest from the node");
    let score = |n: &p2p_node::Node| {
        n.router().inspect_peer_manager(|pm, now| pm.score(evil_id, now)).unwrap()
    };
    let before = score(&node);

    let entry = |id: String, ip: &str, port: u32| NetAddress { id, ip: ip.into(), port };
    let mut addrs = vec![
        entry("not-a-node-id".into(), "10.0.0.1", 26656),
        entry(NodeKey::generate().node_id().to_string(), "10.0.0.2", 0),
        entry(NodeKey::generate().node_id().to_string(), "not an ip", 26656),
        entry(NodeKey::generate().node_id().to_string(), "0.0.0.0", 26656),
        entry(NodeKey::generate().node_id().to_string(), "224.0.0.1", 26656),
    ];
    // 300 more well-formed entries, all in 10.1.0.0/16: too many for one answer, and far more
    // than one source may place in one network group.
    for i in 0..300u32 {
        let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        addrs.push(entry(NodeKey::generate().node_id().to_string(), &ip, 26656));
    }
    let answer = Message { sum: Some(Sum::PexAddrs(PexAddrs { addrs })) };
    conn.send(PEX_CHANNEL, Bytes::from(answer.encode_to_vec())).await.unwrap();

    // Malformed (3 entries), undialable (2) and too many (305): three minor penalties.
    let expected = before - 3.0 * p2p::peer_manager::MINOR_PENALTY;
    let deadline = tokio::time::Instant::now() + T;
    while score(&node) > expected + 1e-6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "score {} stayed above {expected}",
            score(&node)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(node.router().connected_peers().iter().any(|p| p.node_id == evil_id), "kept");
    let learned = node.router().inspect_peer_manager(|pm, _| pm.num_known()) - 1;
    assert_eq!(
        learned,
        PeerManagerConfig::default().max_gossip_per_source_group,
        "only the per-group quota of the well-formed entries is learned"
    );

    // Not a PEX message at all: decode error, disconnected.
    conn.send(PEX_CHANNEL, Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])).await.unwrap();
    let closed = tokio::time::timeout(T, async {
        loop {
            if conn.receive().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the node kept a peer that sent garbage");
    let stats = node.router().stats();
    let pex = stats.channels.iter().find(|(id, _)| *id == PEX_CHANNEL).unwrap().1;
    assert_eq!(pex.decode_errors, 1);
    node.stop().await;
}
