//! `p2pd start` as a bridge between the two kinds of Go network, which cannot talk to each
//! other: a CometBFT v0.38.25 node (comet-p2p: MConn over TCP) and a CometBFT v0.40.0 node with
//! `[p2p.libp2p] enabled = true` (lp2p: libp2p over QUIC).
//!
//! ```text
//! cometbft v0.38.25 ◀──MConn (TCP P)── p2pd ──lp2p (UDP P)──▶ cometbft v0.40.0
//! ```
//!
//! p2pd dials both (the Go v0.38 node as `persistent_peers`, the v0.40 node in CometBFT's own
//! `[p2p.libp2p] bootstrap_peers` form). A tx sent to either Go node's RPC is committed by the
//! other one's kvstore, relayed once (each tx is new to p2pd exactly once). The two Go nodes are
//! separate single-validator chains with the same chain ID: mempool transactions cross, blocks
//! and votes are not bridged (see the README).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg(all(feature = "mconn", feature = "lp2p"))]

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::{P2pd, T, free_dual_port};
use p2p::NodeKey;
use p2p_interop_tests::{GoBinary, GoNode, GoNodeConfig, wait_for};

#[test]
fn p2pd_bridges_comet_p2p_and_lp2p_networks() {
    let chain = "bridge-mconn-lp2p";
    let start = |binary, lp2p| {
        GoNode::start(GoNodeConfig {
            moniker: format!("go-{}", if lp2p { "lp2p" } else { "mconn" }),
            chain_id: Some(chain.into()),
            timeout_commit: Some(Duration::from_millis(500)),
            lp2p,
            ..GoNodeConfig::new(binary)
        })
        .unwrap()
    };
    let mconn_go = start(GoBinary::Cometbft038, false);
    let lp2p_go = start(GoBinary::Cometbft040, true);
    let lp2p_id = lp2p_go.libp2p_peer_id().unwrap().to_owned();

    let key = NodeKey::generate();
    let id = key.node_id().to_string();
    let peer_id = p2p::libp2p_peer_id(&key.public_key());
    let port = free_dual_port();
    let bridge = P2pd::start(
        "bridge",
        &format!(
            "moniker = \"bridge\"\nchain_id = \"{chain}\"\n\n[p2p]\n\
             laddr = \"tcp://127.0.0.1:{port}\"\nquic_laddr = \"udp://127.0.0.1:{port}\"\n\
             persistent_peers = \"{}\"\n\n[p2p.libp2p]\nenabled = true\n\
             bootstrap_peers = [{{ host = \"127.0.0.1:{}\", id = \"{lp2p_id}\", persistent = true }}]\n",
            mconn_go.p2p_address(),
            lp2p_go.p2p_port(),
        ),
        &key,
    );
    bridge.wait_log(
        "the bridge connects to the MConn node",
        &["peer connected", mconn_go.node_id(), "protocol=mconn"],
    );
    bridge.wait_log(
        "the bridge connects to the lp2p node",
        &["peer connected", lp2p_go.node_id(), "protocol=lp2p"],
    );
    mconn_go.wait_for_peer(&id, T).unwrap();
    wait_for(T, "the lp2p node lists the bridge by its peer ID", || lp2p_go.has_peer(&peer_id))
        .unwrap();
    for go in [&mconn_go, &lp2p_go] {
        go.wait_for_height(3, T).unwrap();
    }

    // MConn network → lp2p network.
    let tx = b"mconn2lp2p=1";
    let hash = mconn_go.broadcast_tx_sync(tx).unwrap()["hash"].as_str().unwrap().to_owned();
    wait_for(T, "the lp2p node commits the MConn node's tx", || {
        Ok(lp2p_go.abci_query_value(b"mconn2lp2p")?.as_deref() == Some(b"1".as_slice()))
    })
    .unwrap();
    // lp2p network → MConn network.
    let tx2 = b"lp2p2mconn=1";
    let hash2 = lp2p_go.broadcast_tx_sync(tx2).unwrap()["hash"].as_str().unwrap().to_owned();
    wait_for(T, "the MConn node commits the lp2p node's tx", || {
        Ok(mconn_go.abci_query_value(b"lp2p2mconn")?.as_deref() == Some(b"1".as_slice()))
    })
    .unwrap();

    // Each tx was new to the bridge once, from the node it started at: no loop, no duplicate.
    let log = bridge.log();
    for (hash, from) in [(&hash, mconn_go.node_id()), (&hash2, lp2p_go.node_id())] {
        let news: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("new transaction") && l.contains(hash.as_str()))
            .collect();
        assert_eq!(news.len(), 1, "{news:#?}");
        assert!(news[0].contains(from), "{}", news[0]);
    }
    for go in [&mconn_go, &lp2p_go] {
        assert_eq!(go.count_log_matches("Stopping peer for error"), 0, "{}", go.log_tail(40));
        assert_eq!(go.count_log_matches("failed to send message"), 0, "{}", go.log_tail(40));
    }
}

/// `p2pd show-node-id --libp2p` agrees with `cometbft show-node-id --libp2p` (v0.40.0) on a key
/// written by `cometbft init`, and `show-node-address` prints the lp2p address with it.
#[test]
fn p2pd_prints_the_libp2p_peer_id_cometbft_prints() {
    let go_home = tempfile::tempdir().unwrap();
    let cometbft = GoBinary::Cometbft040.path().unwrap();
    let run_go = |args: &[&str]| {
        let out = Command::new(&cometbft).args(args).arg("--home").arg(go_home.path()).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    run_go(&["init"]);
    let go_peer_id = run_go(&["show-node-id", "--libp2p"]);
    let go_hex_id = run_go(&["show-node-id"]);

    let home = tempfile::tempdir().unwrap();
    fs::create_dir_all(home.path().join("config")).unwrap();
    fs::copy(go_home.path().join("config/node_key.json"), home.path().join("config/node_key.json"))
        .unwrap();
    fs::write(
        home.path().join("config/config.toml"),
        "[p2p]\nladdr = \"tcp://127.0.0.1:26656\"\nquic_laddr = \"udp://127.0.0.1:26656\"\n\n\
         [p2p.libp2p]\nenabled = true\n",
    )
    .unwrap();
    let p2pd = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_p2pd"))
            .arg("--home")
            .arg(home.path())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(p2pd(&["show-node-id", "--libp2p"]).trim(), go_peer_id);
    assert_eq!(p2pd(&["show-node-id"]).trim(), go_hex_id);
    let addresses = p2pd(&["show-node-address"]);
    assert!(
        addresses.lines().any(|l| l == format!("lp2p://{go_peer_id}@127.0.0.1:26656")),
        "{addresses}"
    );
}
