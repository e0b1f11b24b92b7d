//! `p2pd crawl` and [`p2p_node::crawl`]: against a real three-node CometBFT v0.38 network (the
//! binary, as a process: every node printed with its version), against Rust QUIC-only nodes
//! that speak URL PEX (the library), and with nothing listening (exit status 1, the failure in
//! the report).

#![cfg(all(feature = "mconn", feature = "quic"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;
use std::time::Duration;

use p2p::{NodeAddress, NodeKey};
use p2p_interop_tests::{GoBinary, GoNode, GoNodeConfig, free_port};
use p2p_node::crawl::{CrawlOptions, crawl};
use p2p_node::{Node, NodeOptions};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_p2pd");
const T: Duration = Duration::from_secs(30);

fn go_node(moniker: &str, chain: &str, peer: Option<&GoNode>) -> GoNode {
    GoNode::start(GoNodeConfig {
        moniker: moniker.into(),
        pex: true,
        chain_id: Some(chain.into()),
        persistent_peers: peer.map(|p| vec![p.p2p_address()]).unwrap_or_default(),
        genesis: peer.map(|p| p.home().join("config").join("genesis.json")),
        ..GoNodeConfig::new(GoBinary::Cometbft038)
    })
    .unwrap()
}

#[test]
fn crawl_prints_every_node_of_a_go_testnet_with_its_version() {
    let chain = "crawl-go";
    let a = go_node("go-a", chain, None);
    let b = go_node("go-b", chain, Some(&a));
    let c = go_node("go-c", chain, Some(&a));
    a.wait_for_peer(b.node_id(), T).unwrap();
    a.wait_for_peer(c.node_id(), T).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("crawl.json");
    let out = Command::new(BIN)
        .args(["crawl", &a.p2p_address(), "--timeout", "10s", "--json"])
        .arg(&json)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "crawl failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("crawl: "), "progress on stderr: {stderr}");
    for go in [&a, &b, &c] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(go.node_id()))
            .unwrap_or_else(|| panic!("{} not printed:\n{stdout}", go.node_id()));
        assert!(line.contains("0.38.25") && line.contains(chain), "{line}");
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let nodes = report["nodes"].as_array().unwrap();
    for go in [&a, &b, &c] {
        let n = nodes.iter().find(|n| n["node_id"] == go.node_id()).unwrap();
        assert_eq!(n["reachable"], true, "{n}");
        assert_eq!(n["version"], "0.38.25", "{n}");
        assert_eq!(n["network"], chain, "{n}");
        assert_eq!(n["transport"], "mconn", "{n}");
        assert_eq!(n["pex"], "tendermint", "{n}");
    }
    // B and C were learned from the Go nodes' answers, not given.
    for go in [&b, &c] {
        let n = nodes.iter().find(|n| n["node_id"] == go.node_id()).unwrap();
        assert!(n["learned_from"].is_string(), "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_walks_quic_only_rust_nodes_by_url_pex() {
    let start = |peer: Option<NodeAddress>| async move {
        let mut options = NodeOptions::new(NodeKey::generate(), "crawl-rust")
            .with_quic("127.0.0.1:0".parse().unwrap());
        if let Some(p) = peer {
            options = options.with_peer(p);
        }
        Node::start(options).await.unwrap()
    };
    // A chain: 1 <- 2 <- 3 (each dials the previous one); 1 learns 2 (and 2 learns 3) from
    // the inbound connection's reported address.
    let n1 = start(None).await;
    let n2 = start(Some(n1.addresses()[0].clone())).await;
    let n3 = start(Some(n2.addresses()[0].clone())).await;
    let mut updates = n2.router().subscribe();
    tokio::time::timeout(T, async {
        while n2.router().connected_peers().len() < 2 {
            updates.recv().await.unwrap();
        }
    })
    .await
    .unwrap();

    let report = crawl(CrawlOptions::new(vec![n1.addresses()[0].clone()]), |_| {}).await.unwrap();
    for n in [&n1, &n2, &n3] {
        let found = report.nodes.iter().find(|c| c.node_id == n.id().to_string());
        let found = found.unwrap_or_else(|| panic!("{} not found: {report:#?}", n.id()));
        assert!(found.reachable, "{found:?}");
        assert_eq!((found.transport.as_str(), found.pex.as_str()), ("quic", "url"), "{found:?}");
        assert_eq!(found.network, "crawl-rust");
    }
    for n in [n1, n2, n3] {
        n.stop().await;
    }
}

/// A node heard of at several addresses is tried at each in turn until one works; one whose
/// every address fails is reported once, with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_tries_every_address_of_a_node() {
    let node = Node::start(
        NodeOptions::new(NodeKey::generate(), "crawl-rust")
            .with_quic("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let live = node.addresses()[0].clone();
    let at = |scheme: &str, port: u16| -> NodeAddress {
        format!("{scheme}://{}@127.0.0.1:{port}", node.id()).parse().unwrap()
    };
    // Nothing listens on these ports: TCP is refused at once, the QUIC dial times out.
    let (dead1, dead2) = (at("mconn", free_port().unwrap()), at("quic", free_port().unwrap()));
    let mut options = CrawlOptions::new(vec![dead1.clone(), dead2.clone(), live.clone()]);
    options.timeout = Duration::from_secs(2);
    let report = crawl(options, |_| {}).await.unwrap();
    assert_eq!(report.nodes.len(), 1, "{report:#?}");
    let found = &report.nodes[0];
    assert!(found.reachable, "{found:?}");
    assert_eq!((found.addresses_tried, found.address.as_str()), (3, live.to_string().as_str()));

    // Negative control: only dead addresses, so the node is unreachable after trying both.
    let mut options = CrawlOptions::new(vec![dead1, dead2.clone()]);
    options.timeout = Duration::from_secs(2);
    let report = crawl(options, |_| {}).await.unwrap();
    let found = &report.nodes[0];
    assert!(!found.reachable && found.error.is_some(), "{found:?}");
    assert_eq!((found.addresses_tried, found.address.as_str()), (2, dead2.to_string().as_str()));
    node.stop().await;
}

#[test]
fn crawl_of_nothing_reports_the_failure_and_exits_1() {
    let id = NodeKey::generate().node_id();
    let address = format!("{id}@127.0.0.1:{}", free_port().unwrap());
    let out = Command::new(BIN)
        .args(["crawl", &address, "--timeout", "2s"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with(&id.to_string())).unwrap();
    assert!(line.contains(" no ") && line.contains("dial"), "{line}");
}
