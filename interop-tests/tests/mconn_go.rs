//! The Rust MConn transport against real Go nodes (CometBFT v0.38.25 and Tendermint v0.34.24)
//! on loopback: handshakes in both directions, liveness across Go's ping interval, mempool
//! transactions both ways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::RustNode;
use p2p_interop_tests::{GoBinary, GoNode, GoNodeConfig, wait_for};

const T: Duration = Duration::from_secs(30);
/// Go pings every 60 s and drops a peer whose pong is 45 s late: hold past two pings.
const HOLD: Duration = Duration::from_secs(125);

fn rust_dials_go(binary: GoBinary) {
    let go = GoNode::start(GoNodeConfig { moniker: "go-node".into(), ..GoNodeConfig::new(binary) })
        .unwrap();
    let mut rust = RustNode::start(go.chain_id(), "rust-node");
    rust.dial(&format!("mconn://{}", go.p2p_address()));
    let peer = rust.wait_up(T);
    assert_eq!(peer.to_string(), go.node_id());
    let connected_at = Instant::now();
    go.wait_for_peer(&rust.id.to_string(), T).unwrap();
    let peers = go.peers().unwrap();
    assert!(
        peers.contains(&(rust.id.to_string(), "rust-node".to_owned())),
        "Go's /net_info lists the Rust node with its moniker: {peers:?}"
    );

    // Go → Rust: a transaction submitted to Go's RPC is gossiped to the Rust node on 0x30.
    // Go sends a tx only to peers whose consensus height is ≥ the tx's height - 1: submitting
    // it at height ≥ 3 proves the Rust node's height announcements work.
    go.wait_for_height(3, T).unwrap();
    go.broadcast_tx_sync(b"go2rust=1").unwrap();
    assert_eq!(rust.wait_tx(b"go2rust=1", T), peer);

    // Rust → Go: a transaction sent on 0x30 reaches Go's mempool and is committed.
    rust.send_tx(peer, b"rust2go=1");
    wait_for(T, "rust2go committed by Go's kvstore", || {
        Ok(go.abci_query_value(b"rust2go")?.as_deref() == Some(b"1".as_slice()))
    })
    .unwrap();

    // Liveness: the connection survives two of Go's ping intervals.
    let remaining = HOLD.saturating_sub(connected_at.elapsed());
    std::thread::sleep(remaining);
    assert!(go.has_peer(&rust.id.to_string()).unwrap(), "Go still lists the Rust node");
    assert_eq!(rust.router.connected_peers().len(), 1, "Rust still connected");
    assert!(!rust.saw_down(), "the connection never dropped");
    // Go logged two pings to us and our two pongs (p2p debug log). Go's second ping is due
    // 120 s after its side of the connection started: poll a little past the hold for it.
    wait_for(T, "Go to log two pings sent and two pongs received", || {
        Ok(go.count_log_matches("Send Ping") >= 2 && go.count_log_matches("Receive Pong") >= 2)
    })
    .unwrap();
    assert_eq!(go.count_log_matches("Stopping peer for error"), 0, "{}", go.log_tail(40));
    assert_eq!(go.count_log_matches("pong timeout"), 0);
    rust.stop();
}

fn go_dials_rust(binary: GoBinary) {
    let chain = format!("interop-{}", binary.name());
    let mut rust = RustNode::start(&chain, "rust-node");
    let go = GoNode::start(GoNodeConfig {
        persistent_peers: vec![rust.go_address()],
        chain_id: Some(chain.clone()),
        ..GoNodeConfig::new(binary)
    })
    .unwrap();
    let peer = rust.wait_up(T);
    assert_eq!(peer.to_string(), go.node_id());
    go.wait_for_peer(&rust.id.to_string(), T).unwrap();
    let summary = rust.router.connected_peers();
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].direction, p2p::Direction::Inbound);
    assert_eq!(summary[0].node_info.network, chain);
    go.wait_for_height(3, T).unwrap();
    go.broadcast_tx_sync(b"inbound=1").unwrap();
    assert_eq!(rust.wait_tx(b"inbound=1", T), peer);
    rust.stop();
}

#[test]
fn cometbft_038_rust_dials_go() {
    rust_dials_go(GoBinary::Cometbft038);
}

#[test]
fn cometbft_038_go_dials_rust() {
    go_dials_rust(GoBinary::Cometbft038);
}

#[test]
fn tendermint_034_rust_dials_go() {
    rust_dials_go(GoBinary::Tendermint034);
}

#[test]
fn tendermint_034_go_dials_rust() {
    go_dials_rust(GoBinary::Tendermint034);
}

fn wrong_chain_id_refused_on_both_sides(binary: GoBinary) {
    let go_chain = format!("go-chain-{}", binary.name());
    // Rust dials Go with the wrong chain id.
    let rust = RustNode::start("rust-wrong-chain", "rust-node");
    let go = GoNode::start(GoNodeConfig {
        chain_id: Some(go_chain.clone()),
        persistent_peers: vec![rust.go_address()],
        ..GoNodeConfig::new(binary)
    })
    .unwrap();
    rust.dial(&format!("mconn://{}", go.p2p_address()));
    // Both directions fail: Rust's dial of Go, and Go's dial of Rust (persistent peer).
    wait_for(T, "a failed dial and a refused inbound handshake on the Rust side", || {
        let s = rust.router.stats();
        Ok(s.dials_failed >= 1 && s.handshake_failures >= 2)
    })
    .unwrap();
    wait_for(T, "Go to log the refusal with both chain ids", || {
        Ok(go.log().lines().any(|l| l.contains("rust-wrong-chain") && l.contains(&go_chain)))
    })
    .unwrap();
    assert!(rust.router.connected_peers().is_empty());
    assert!(go.peers().unwrap().is_empty());
    rust.stop();
}

#[test]
fn cometbft_038_wrong_chain_id() {
    wrong_chain_id_refused_on_both_sides(GoBinary::Cometbft038);
}

#[test]
fn tendermint_034_wrong_chain_id() {
    wrong_chain_id_refused_on_both_sides(GoBinary::Tendermint034);
}
