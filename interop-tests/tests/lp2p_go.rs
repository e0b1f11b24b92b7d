//! The lp2p transport against a real CometBFT v0.40.0 node with `[p2p.libp2p] enabled = true`
//! (libp2p over QUIC), in both directions:
//!
//! ```text
//! Rust (Router + Lp2pTransport) ──lp2p dial──▶ cometbft v0.40.0 (UDP 127.0.0.1:P)
//! cometbft v0.40.0 ──bootstrap_peers dial──▶ Rust (UDP 127.0.0.1:Q)
//! ```
//!
//! Each test checks: both sides see the peer (Go's `/net_info` lists the Rust node by its
//! `12D3KooW…` peer ID), a tx sent to Go's RPC reaches the Rust node's mempool channel, a tx the
//! Rust node sends is committed by Go's kvstore, and Go's log shows no failed send, reset,
//! removal or error about the Rust peer. The Go-dials-Rust test keeps the link for 120 s first
//! (set `LP2P_SOAK_SECS` to change it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p::consensus::{HeightMirror, consensus_state_channel_descriptor, run_height_announcer};
use p2p::mempool::{DEFAULT_MAX_TX_BYTES, Txs, mempool_channel_descriptor};
use p2p::{
    Channel, ChannelId, Direction, NodeAddress, NodeId, NodeInfo, NodeKey, Outbound,
    PeerManagerConfig, PeerStatus, PeerUpdates, Protocol, Router, RouterConfig,
};
use p2p_interop_tests::{GoBinary, GoNode, GoNodeConfig, wait_for};
use p2p_quic_endpoint::EndpointConfig;
use p2p_transport_lp2p::{Lp2pConfig, Lp2pTransport};
use tokio::runtime::Runtime;

/// Timeout of each step.
const T: Duration = Duration::from_secs(30);

/// A Rust node: a router with the lp2p transport, the mempool channel and the consensus-height
/// announcer (Go gossips a tx only to peers whose height it knows).
struct RustNode {
    router: Arc<Router>,
    updates: PeerUpdates,
    txs: Channel<Txs>,
    peer_id: String,
    addr: SocketAddr,
}

impl RustNode {
    async fn start(chain_id: &str) -> Self {
        let key = NodeKey::generate();
        let id = key.node_id();
        let lp2p = Lp2pTransport::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            &key,
            EndpointConfig::default(),
            Lp2pConfig::default(),
        )
        .unwrap();
        let (peer_id, addr) = (lp2p.peer_id(), lp2p.local_addr());
        let info = NodeInfo::new(id, chain_id, "rust-lp2p", Vec::<ChannelId>::new());
        let router = Arc::new(
            Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
                .unwrap(),
        );
        router.add_transport(Arc::new(lp2p)).unwrap();
        let txs =
            router.open_channel::<Txs>(mempool_channel_descriptor(DEFAULT_MAX_TX_BYTES)).unwrap();
        let consensus = router.open_channel(consensus_state_channel_descriptor()).unwrap();
        tokio::spawn(run_height_announcer(consensus, router.subscribe(), HeightMirror::new()));
        let updates = router.subscribe();
        router.start().unwrap();
        Self { router, updates, txs, peer_id, addr }
    }

    async fn wait_up(&mut self, peer: NodeId) {
        tokio::time::timeout(T, async {
            loop {
                let u = self.updates.recv().await.expect("peer updates open");
                if u.status == PeerStatus::Up && u.node_id == peer {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{peer} did not come up within {T:?}"));
    }

    /// Receives mempool messages until one carries `tx`; returns its sender.
    async fn recv_until(&mut self, tx: &[u8]) -> NodeId {
        let mut seen = Vec::new();
        tokio::time::timeout(T, async {
            loop {
                let env = self.txs.recv().await.expect("mempool channel open");
                seen.extend(env.message.0.iter().map(|t| String::from_utf8_lossy(t).into_owned()));
                if env.message.0.iter().any(|t| t == tx) {
                    return env.from;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("tx not received within {T:?}; got {seen:?}"))
    }
}

/// The Go node's view of `peer_id` in `/net_info`.
fn go_lists(go: &GoNode, peer_id: &str) -> anyhow::Result<bool> {
    let info = go.net_info()?;
    Ok(info["peers"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["node_info"]["id"] == peer_id)))
}

/// Lines of Go's log that report trouble with the Rust peer or with any stream: failed sends,
/// resets, removals, read or unmarshal failures, any error line, warnings naming the peer.
fn go_complaints(go: &GoNode, peer_id: &str) -> Vec<String> {
    go.log()
        .lines()
        .filter(|l| {
            l.contains("failed to send message")
                || l.contains("Failed to read payload")
                || l.contains("Failed to unmarshal")
                || l.contains("Rejected msg bytes")
                || l.contains("Removing peer")
                || l.contains("Stopping peer for error")
                || l.contains("stream reset")
                || l.contains("Failed to ping")
                || l.starts_with("E[")
                || (l.starts_with("W[") && l.contains(peer_id))
        })
        .map(str::to_owned)
        .collect()
}

/// Txs both ways and Go's log checked.
fn exchange_txs(rt: &Runtime, rust: &mut RustNode, go: &GoNode, go_id: NodeId, tag: &str) {
    let to_rust = format!("go2rust-{tag}=1");
    go.broadcast_tx_sync(to_rust.as_bytes()).unwrap();
    let from = rt.block_on(rust.recv_until(to_rust.as_bytes()));
    assert_eq!(from, go_id);

    let key = format!("rust2go-{tag}");
    let tx = format!("{key}=1");
    let out = rt
        .block_on(rust.txs.send(Outbound::to(go_id, Txs(vec![tx.clone().into_bytes()]))))
        .unwrap();
    assert_eq!(out.queued, 1);
    wait_for(T, "the Rust tx committed by Go's kvstore", || {
        Ok(go.abci_query_value(key.as_bytes())?.as_deref() == Some(b"1".as_slice()))
    })
    .unwrap();
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn lp2p_go(chain: &str, bootstrap: Vec<(String, String, bool)>) -> GoNode {
    GoNode::start(GoNodeConfig {
        moniker: "go-lp2p".into(),
        chain_id: Some(chain.into()),
        timeout_commit: Some(Duration::from_millis(500)),
        lp2p: true,
        bootstrap_peers: bootstrap,
        ..GoNodeConfig::new(GoBinary::Cometbft040)
    })
    .unwrap()
}

#[test]
fn rust_dials_go_lp2p() {
    let started = Instant::now();
    let chain = "lp2p-rust-dials";
    let rt = runtime();
    let mut rust = rt.block_on(RustNode::start(chain));
    let go = lp2p_go(chain, Vec::new());
    let address: NodeAddress = go.lp2p_address().unwrap().parse().unwrap();
    let go_id = address.node_id();
    assert_eq!(go_id.to_string(), go.node_id(), "the peer ID names the node's key");
    assert!(rust.router.add_address(address).unwrap());
    rt.block_on(rust.wait_up(go_id));

    let peers = rust.router.connected_peers();
    let go_peer = peers.iter().find(|p| p.node_id == go_id).expect("Go is a peer");
    assert_eq!(go_peer.endpoint.protocol, Protocol::LP2P);
    assert_eq!(go_peer.direction, Direction::Outbound);
    assert_eq!(go_peer.node_info.moniker, "cometbft", "the agent from identify");
    assert!(go_peer.node_info.has_channel(ChannelId(0x30)), "{:?}", go_peer.node_info);
    // Go provisions us on our first message (the greeting) and lists us by our peer ID.
    wait_for(T, "Go lists the Rust peer", || go_lists(&go, &rust.peer_id)).unwrap();

    go.wait_for_height(3, T).unwrap();
    exchange_txs(&rt, &mut rust, &go, go_id, "a");
    let complaints = go_complaints(&go, &rust.peer_id);
    assert!(complaints.is_empty(), "Go's log: {complaints:#?}");
    rt.block_on(rust.router.stop());
    eprintln!("rust_dials_go_lp2p took {:?}", started.elapsed());
}

#[test]
fn go_dials_rust_lp2p_and_the_link_lasts() {
    let started = Instant::now();
    let chain = "lp2p-go-dials";
    let rt = runtime();
    let mut rust = rt.block_on(RustNode::start(chain));
    let host = rust.addr.to_string();
    let go = lp2p_go(chain, vec![(host, rust.peer_id.clone(), true)]);
    let go_id: NodeId = go.node_id().parse().unwrap();
    rt.block_on(rust.wait_up(go_id));
    let peers = rust.router.connected_peers();
    let go_peer = peers.iter().find(|p| p.node_id == go_id).expect("Go is a peer");
    assert_eq!(go_peer.direction, Direction::Inbound);
    wait_for(T, "Go lists the Rust peer", || go_lists(&go, &rust.peer_id)).unwrap();
    wait_for(T, "Go's log: Connected to peer (it dialled its bootstrap peer)", || {
        Ok(go.log().contains("Connected to peer"))
    })
    .unwrap();

    go.wait_for_height(3, T).unwrap();
    exchange_txs(&rt, &mut rust, &go, go_id, "b");

    // The link lasts: Go keeps gossiping consensus to us (discarded, or mirrored on 0x20)
    // and nothing fails on either side.
    let soak = std::env::var("LP2P_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(120), Duration::from_secs);
    let height = go.latest_height().unwrap();
    let mut downs = HashSet::new();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + soak;
        while let Ok(u) = tokio::time::timeout_at(deadline, rust.updates.recv()).await {
            let u = u.expect("peer updates open");
            if u.status != PeerStatus::Up {
                downs.insert(format!("{u:?}"));
            }
        }
    });
    assert!(downs.is_empty(), "the Rust side saw {downs:?}");
    assert!(go_lists(&go, &rust.peer_id).unwrap(), "Go still lists the Rust peer");
    assert!(go.latest_height().unwrap() > height, "Go kept making blocks");
    exchange_txs(&rt, &mut rust, &go, go_id, "c");
    let complaints = go_complaints(&go, &rust.peer_id);
    assert!(complaints.is_empty(), "Go's log after {soak:?}: {complaints:#?}");
    rt.block_on(rust.router.stop());
    eprintln!("go_dials_rust_lp2p took {:?}", started.elapsed());
}
