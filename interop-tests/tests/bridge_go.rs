//! A Rust bridge node between Go CometBFT v0.38 (MConn) and a Rust QUIC-only node:
//!
//! ```text
//! Go cometbft v0.38.25 ──MConn (TCP 127.0.0.1:P)──▶ Rust bridge ◀──QUIC (UDP 127.0.0.1:P)── Rust QUIC-only node
//! ```
//!
//! The bridge runs one [`Router`] with both an MConn transport and a QUIC transport listening on
//! the same port number (TCP and UDP), the mempool channel, a consensus height announcer (so Go
//! gossips mempool transactions to it) and the node crate's transaction gossip
//! (`p2p_node::gossip::TxGossip`).
//! Go dials the bridge (the bridge is in its `persistent_peers`); the QUIC-only node dials the
//! bridge at `quic://<bridge id>@127.0.0.1:P`. Transactions go both ways: Go's RPC → QUIC-only
//! node, and QUIC-only node → Go's mempool (proved by the kvstore committing it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p::consensus::{HeightMirror, consensus_state_channel_descriptor, run_height_announcer};
use p2p::mempool::{DEFAULT_MAX_TX_BYTES, Txs, mempool_channel_descriptor};
use p2p::{
    Channel, ChannelId, Direction, Endpoint, NodeAddress, NodeId, NodeInfo, NodeKey, Outbound,
    PeerManagerConfig, PeerStatus, PeerUpdates, Protocol, Router, RouterConfig,
};
use p2p_interop_tests::{GoBinary, GoNode, GoNodeConfig, wait_for};
use p2p_node::gossip::{GossipConfig, TxGossip};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use p2p_transport_quic::{QuicConfig, QuicTransport};
use serde_json::Value;
use tokio::runtime::Runtime;

/// Timeout of each step.
const T: Duration = Duration::from_secs(30);
/// Tries to find a port number free on both TCP and UDP.
const BIND_ATTEMPTS: usize = 5;

/// The bridge: MConn and QUIC on one port number, mempool relay, height announcer.
struct Bridge {
    router: Arc<Router>,
    updates: PeerUpdates,
    id: NodeId,
    port: u16,
    relay: TxGossip,
}

impl Bridge {
    async fn start(chain_id: &str) -> Self {
        let key = NodeKey::generate();
        let id = key.node_id();
        let (mconn, quic) = bind_same_port(&key).await;
        let port = quic.local_addr().port();
        let info = NodeInfo::new(id, chain_id, "rust-bridge", Vec::<ChannelId>::new());
        let router = Arc::new(
            Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
                .unwrap(),
        );
        // MConn first: the NodeInfo advertises the first transport's endpoint (127.0.0.1:P).
        router.add_transport(Arc::new(mconn)).unwrap();
        router.add_transport(Arc::new(quic)).unwrap();
        let txs =
            router.open_channel::<Txs>(mempool_channel_descriptor(DEFAULT_MAX_TX_BYTES)).unwrap();
        // Go gossips a tx only to peers whose consensus height is ≥ the tx's height − 1: mirror
        // the height Go announces back to it (as `RustNode` does).
        let consensus = router.open_channel(consensus_state_channel_descriptor()).unwrap();
        tokio::spawn(run_height_announcer(consensus, router.subscribe(), HeightMirror::new()));
        let relay = TxGossip::spawn(txs, GossipConfig::default());
        let updates = router.subscribe();
        router.start().unwrap();
        Self { router, updates, id, port, relay }
    }

    /// `<id>@127.0.0.1:<P>`: Go's `persistent_peers` form (MConn over TCP).
    fn go_address(&self) -> String {
        format!("{}@127.0.0.1:{}", self.id, self.port)
    }

    /// `quic://<id>@127.0.0.1:<P>`: the same port number, over UDP.
    fn quic_address(&self) -> NodeAddress {
        format!("quic://{}@127.0.0.1:{}", self.id, self.port).parse().unwrap()
    }
}

/// Binds an MConn (TCP) transport on a free port P of 127.0.0.1, then a QUIC (UDP) transport on
/// the same port number; retries with another P if UDP P is taken.
async fn bind_same_port(key: &NodeKey) -> (MConnTransport, QuicTransport) {
    for attempt in 1..=BIND_ATTEMPTS {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mconn = MConnTransport::bind(any, MConnConfig::default()).await.unwrap();
        let tcp = mconn.local_addr().unwrap();
        match QuicTransport::bind(tcp, key, QuicConfig::default()) {
            Ok(quic) => {
                assert_eq!(quic.local_addr(), tcp, "TCP and UDP on the same address");
                return (mconn, quic);
            }
            Err(e) => eprintln!("attempt {attempt}: UDP {tcp} not available: {e}"),
        }
    }
    panic!("no port number free on both TCP and UDP after {BIND_ATTEMPTS} attempts");
}

/// A Rust node with only a QUIC transport and the mempool channel.
struct QuicNode {
    router: Router,
    updates: PeerUpdates,
    txs: Channel<Txs>,
    id: NodeId,
}

impl QuicNode {
    async fn start(chain_id: &str) -> Self {
        let key = NodeKey::generate();
        let id = key.node_id();
        let quic = QuicTransport::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            &key,
            QuicConfig::default(),
        )
        .unwrap();
        let info = NodeInfo::new(id, chain_id, "rust-quic-only", Vec::<ChannelId>::new());
        let router =
            Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
                .unwrap();
        router.add_transport(Arc::new(quic)).unwrap();
        // No consensus channel: its only peer is the bridge, whose relay does not look at heights.
        let txs =
            router.open_channel::<Txs>(mempool_channel_descriptor(DEFAULT_MAX_TX_BYTES)).unwrap();
        let updates = router.subscribe();
        router.start().unwrap();
        Self { router, updates, txs, id }
    }

    /// Receives mempool messages until one contains `tx`; returns its sender and every tx
    /// received on the way, `tx` included (as lossy UTF-8, for readable assertions).
    async fn recv_until(&mut self, tx: &[u8]) -> (NodeId, Vec<String>) {
        let mut all = Vec::new();
        tokio::time::timeout(T, async {
            loop {
                let env = self.txs.recv().await.expect("mempool channel open");
                let found = env.message.0.iter().any(|t| t == tx);
                all.extend(env.message.0.iter().map(|t| lossy(t)));
                if found {
                    return env.from;
                }
            }
        })
        .await
        .map(|from| (from, all.clone()))
        .unwrap_or_else(|_| panic!("{:?} not received within {T:?}; got {all:?}", lossy(tx)))
    }

    async fn send_tx(&self, to: NodeId, tx: &[u8]) {
        let out = self.txs.send(Outbound::to(to, Txs(vec![tx.to_vec()]))).await.unwrap();
        assert_eq!(out.queued, 1, "queued for the bridge");
    }
}

/// Waits for Up updates of all of `peers`.
async fn wait_up(updates: &mut PeerUpdates, peers: &[NodeId]) {
    let mut missing: HashSet<NodeId> = peers.iter().copied().collect();
    tokio::time::timeout(T, async {
        while !missing.is_empty() {
            let u = updates.recv().await.expect("peer updates open");
            if u.status == PeerStatus::Up {
                missing.remove(&u.node_id);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("peers {missing:?} did not come up within {T:?}"));
}

fn lossy(tx: &[u8]) -> String {
    String::from_utf8_lossy(tx).into_owned()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn go_mconn_bridge_quic_only_node_mempool_both_ways() {
    let started = Instant::now();
    let chain = "bridge-go-quic";
    let rt = runtime();
    let mut bridge = rt.block_on(Bridge::start(chain));
    let mut quic = rt.block_on(QuicNode::start(chain));

    // Go dials the bridge over MConn (TCP P); the QUIC-only node dials it over QUIC (UDP P).
    let go = GoNode::start(GoNodeConfig {
        moniker: "go-node".into(),
        persistent_peers: vec![bridge.go_address()],
        chain_id: Some(chain.into()),
        timeout_commit: Some(Duration::from_millis(500)),
        ..GoNodeConfig::new(GoBinary::Cometbft038)
    })
    .unwrap();
    let go_id: NodeId = go.node_id().parse().unwrap();
    assert!(quic.router.add_address(bridge.quic_address()).unwrap());
    rt.block_on(wait_up(&mut bridge.updates, &[go_id, quic.id]));
    rt.block_on(wait_up(&mut quic.updates, &[bridge.id]));
    go.wait_for_peer(&bridge.id.to_string(), T).unwrap();

    // The bridge listens on one port number for both: TCP for MConn, UDP for QUIC.
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, bridge.port));
    let endpoints = bridge.router.endpoints();
    assert!(endpoints.contains(&Endpoint::socket(Protocol::MCONN, local)), "{endpoints:?}");
    assert!(endpoints.contains(&Endpoint::socket(Protocol::QUIC, local)), "{endpoints:?}");
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    // The QUIC-only node has nothing but QUIC.
    let quic_endpoints = quic.router.endpoints();
    assert!(quic_endpoints.iter().all(|e| e.protocol == Protocol::QUIC), "{quic_endpoints:?}");

    // Go ⇄ bridge is MConn (Go dialled), QUIC-only node ⇄ bridge is QUIC (it dialled).
    let bridge_peers = bridge.router.connected_peers();
    assert_eq!(bridge_peers.len(), 2, "{bridge_peers:?}");
    let go_peer = bridge_peers.iter().find(|p| p.node_id == go_id).expect("Go is a peer");
    assert_eq!(go_peer.endpoint.protocol, Protocol::MCONN);
    assert_eq!(go_peer.direction, Direction::Inbound);
    assert_eq!(go_peer.node_info.network, chain);
    let quic_peer =
        bridge_peers.iter().find(|p| p.node_id == quic.id).expect("QUIC node is a peer");
    assert_eq!(quic_peer.endpoint.protocol, Protocol::QUIC);
    assert_eq!(quic_peer.direction, Direction::Inbound);
    let quic_peers = quic.router.connected_peers();
    assert_eq!(quic_peers.len(), 1, "{quic_peers:?}");
    assert_eq!(quic_peers[0].node_id, bridge.id);
    assert_eq!(quic_peers[0].endpoint, Endpoint::socket(Protocol::QUIC, local));
    assert_eq!(quic_peers[0].direction, Direction::Outbound);
    // Go's side: it dialled the bridge (an outbound peer in /net_info).
    let net_info = go.net_info().unwrap();
    let go_view = net_info["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["node_info"]["id"] == bridge.id.to_string().as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("Go lists the bridge: {net_info}"));
    assert_eq!(go_view["is_outbound"], Value::Bool(true), "{go_view}");
    assert_eq!(go_view["node_info"]["moniker"], "rust-bridge");

    // Go → QUIC-only node. Go gossips a tx only to peers at height ≥ tx height − 1: submitting it
    // at height ≥ 3 shows the bridge's announced height satisfies that rule.
    go.wait_for_height(3, T).unwrap();
    go.broadcast_tx_sync(b"go2quic=1").unwrap();
    let (from, got) = rt.block_on(quic.recv_until(b"go2quic=1"));
    assert_eq!(from, bridge.id, "relayed by the bridge");
    assert_eq!(got, ["go2quic=1"], "exactly that tx");

    // QUIC-only node → Go: the bridge relays it to Go over MConn, Go's mempool takes it and the
    // kvstore commits it (the only way into Go's blocks here is its mempool).
    rt.block_on(quic.send_tx(bridge.id, b"quic2go=1"));
    wait_for(T, "quic2go committed by Go's kvstore", || {
        Ok(go.abci_query_value(b"quic2go")?.as_deref() == Some(b"1".as_slice()))
    })
    .unwrap();

    // No echo: a second Go tx is the next (and only) thing the QUIC-only node receives, so the
    // bridge sent neither its own tx back nor go2quic=1 twice. Ordered: one QUIC stream per
    // channel, and the relay handled quic2go=1 before Go could commit it.
    go.broadcast_tx_sync(b"go2quic=2").unwrap();
    let (from, got) = rt.block_on(quic.recv_until(b"go2quic=2"));
    assert_eq!(from, bridge.id);
    assert_eq!(got, ["go2quic=2"], "nothing echoed or repeated before it");

    // The relay saw three txs, each once (Go does not send a tx back to its sender), and
    // forwarded each to exactly one peer.
    wait_for(T, "relay counters (received 3, duplicates 0, forwarded 3, dropped 0)", || {
        let s = bridge.relay.stats();
        Ok((s.received, s.duplicates, s.sent, s.dropped) == (3, 0, 3, 0))
    })
    .unwrap();
    assert_eq!(go.count_log_matches("Stopping peer for error"), 0, "{}", go.log_tail(40));

    rt.block_on(async { tokio::join!(quic.router.stop(), bridge.router.stop()) });
    drop(go);
    eprintln!("bridge test took {:?}", started.elapsed());
}
