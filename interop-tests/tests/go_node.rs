//! Smoke tests against the real Go binaries (installed by
//! `interop-tests/scripts/install-go-nodes.sh`). A missing binary fails the test.

// Test helpers outside #[test] functions: panicking on failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use p2p_interop_tests::{GoBinary, GoNode, GoNodeConfig, wait_for};

/// Starts a single-validator node, checks version and node ID, and commits a kvstore tx.
fn smoke(binary: GoBinary) {
    let node = GoNode::start(GoNodeConfig {
        moniker: format!("smoke-{}", binary.name()),
        timeout_commit: Some(Duration::from_millis(300)),
        ..GoNodeConfig::new(binary)
    })
    .unwrap();

    let status = node.status().unwrap();
    assert_eq!(status["node_info"]["version"], binary.reported_version(), "{status}");
    assert_eq!(status["node_info"]["network"], node.chain_id());
    assert_eq!(status["node_info"]["moniker"], node.moniker());
    assert_eq!(status["node_info"]["listen_addr"], format!("127.0.0.1:{}", node.p2p_port()));

    // The node ID the Go node reports equals the one our own NodeKey derives from its key file.
    let key = p2p::NodeKey::load(node.home().join("config").join("node_key.json")).unwrap();
    assert_eq!(node.node_id(), key.node_id().to_string());
    assert_eq!(node.p2p_address(), format!("{}@127.0.0.1:{}", key.node_id(), node.p2p_port()));

    assert!(node.peers().unwrap().is_empty());
    assert_eq!(node.abci_query_value(b"smoke").unwrap(), None);

    let res = node.broadcast_tx_sync(b"smoke=1").unwrap();
    assert_eq!(res["code"], 0, "{res}");
    wait_for(Duration::from_secs(30), "tx smoke=1 to be committed", || {
        Ok(node.abci_query_value(b"smoke")? == Some(b"1".to_vec()))
    })
    .unwrap();
    assert!(node.latest_height().unwrap() >= 1);
    assert!(node.unconfirmed_txs().unwrap().is_empty());
    assert_eq!(node.count_log_matches("Stopping peer for error"), 0);
    assert!(node.count_log_matches("Started node") + node.count_log_matches("Starting Node") > 0);
}

#[test]
fn cometbft_v0_38_node_starts_and_commits_a_tx() {
    smoke(GoBinary::Cometbft038);
}

#[test]
fn tendermint_v0_34_node_starts_and_commits_a_tx() {
    smoke(GoBinary::Tendermint034);
}

/// A second node on the first node's genesis dials it through `persistent_peers`; both list
/// each other in `/net_info`, and a tx sent to one reaches the other's state.
#[test]
fn two_cometbft_nodes_connect_as_persistent_peers() {
    let a = GoNode::start(GoNodeConfig {
        moniker: "a".into(),
        timeout_commit: Some(Duration::from_millis(300)),
        ..GoNodeConfig::default()
    })
    .unwrap();
    let mut b = GoNode::start(GoNodeConfig {
        moniker: "b".into(),
        genesis: Some(a.home().join("config").join("genesis.json")),
        persistent_peers: vec![a.p2p_address()],
        ..GoNodeConfig::default()
    })
    .unwrap();
    assert_eq!(a.chain_id(), b.chain_id());
    b.wait_for_peer(a.node_id(), Duration::from_secs(20)).unwrap();
    a.wait_for_peer(b.node_id(), Duration::from_secs(20)).unwrap();
    assert_eq!(a.peers().unwrap(), vec![(b.node_id().to_owned(), "b".to_owned())]);

    b.broadcast_tx_sync(b"via=b").unwrap();
    wait_for(Duration::from_secs(30), "tx via=b committed on a", || {
        Ok(a.abci_query_value(b"via")? == Some(b"b".to_vec()))
    })
    .unwrap();
    assert_eq!(a.count_log_matches("Stopping peer for error"), 0, "{}", a.log_tail(40));

    // Restart b on the same home and ports: it redials its persistent peer a.
    b.stop();
    assert!(!b.is_running());
    wait_for(Duration::from_secs(20), "a to drop b", || Ok(!a.has_peer(b.node_id())?)).unwrap();
    b.restart().unwrap();
    a.wait_for_peer(b.node_id(), Duration::from_secs(20)).unwrap();
    // The in-memory kvstore is rebuilt from b's block store (replay) and from a.
    wait_for(Duration::from_secs(30), "b's state after restart", || {
        Ok(b.abci_query_value(b"via")? == Some(b"b".to_vec()))
    })
    .unwrap();
}
