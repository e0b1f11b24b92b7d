#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! `testnet::run`: short real-transport networks on loopback, one per transport mode.

use std::time::Duration;

use p2p::Protocol;
use p2p_node::testnet::{
    self, NodeRole, TestnetError, TestnetOptions, TestnetOutput, TestnetReport, TestnetTransport,
};

fn options(transport: TestnetTransport) -> TestnetOptions {
    let mut o = TestnetOptions::default();
    o.nodes = 6;
    o.transport = transport;
    o.duration = Duration::from_secs(2);
    o.tx_rate = Some(50);
    o.output = TestnetOutput::Plain;
    o
}

/// Every node connected to all its topology peers, every transaction everywhere, latencies
/// measured.
fn check_complete(report: &TestnetReport) {
    assert_eq!(report.nodes.len(), 6);
    assert!(report.links >= 5, "at least a spanning tree: {}", report.links);
    let connections: usize = report.links_by_transport.iter().map(|(_, n)| n).sum();
    assert_eq!(connections, report.links, "{:?}", report.links_by_transport);
    for node in &report.nodes {
        assert!(node.peers >= 1, "node {} has no peer", node.index);
        assert_eq!(node.peers, node.expected_peers, "node {}", node.index);
        assert_eq!(node.transports.iter().map(|(_, n)| n).sum::<usize>(), node.peers);
        assert!(node.txs_sent > 0, "node {} sent nothing", node.index);
        assert_eq!(node.txs_received, node.txs_expected, "node {}", node.index);
        assert!(node.bytes_sent > 0 && node.bytes_received > 0, "node {}", node.index);
        let (p50, p99) = (node.latency_p50.unwrap(), node.latency_p99.unwrap());
        assert!(p50 <= p99, "node {}: p50 {p50:?} > p99 {p99:?}", node.index);
        assert_eq!(node.lagged, 0);
    }
    let sent: u64 = report.nodes.iter().map(|n| n.txs_sent).sum();
    assert_eq!(report.txs_sent, sent);
    assert_eq!(report.txs_expected, sent * 5);
    assert_eq!(report.txs_delivered, report.txs_expected);
    assert!(report.is_complete());
    assert_eq!(report.delivery_ratio(), 1.0);
    assert!(report.latency_p50.is_some() && report.latency_p99.is_some());
}

fn connections_over(report: &TestnetReport, protocol: &Protocol) -> usize {
    report.links_by_transport.iter().filter(|(p, _)| p == protocol).map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_network_uses_both_transports_and_delivers_everything() {
    let report = testnet::run(options(TestnetTransport::Mixed)).await.unwrap();
    check_complete(&report);
    assert!(connections_over(&report, &Protocol::QUIC) > 0, "{:?}", report.links_by_transport);
    assert!(connections_over(&report, &Protocol::MCONN) > 0, "{:?}", report.links_by_transport);
    let roles: Vec<NodeRole> = report.nodes.iter().map(|n| n.role).collect();
    for role in [NodeRole::Quic, NodeRole::Mconn, NodeRole::Dual] {
        assert!(roles.contains(&role), "{roles:?}");
    }
    // Single-transport nodes only use their transport.
    for node in &report.nodes {
        let only = match node.role {
            NodeRole::Quic => Protocol::QUIC,
            NodeRole::Mconn => Protocol::MCONN,
            _ => continue,
        };
        assert!(node.transports.iter().all(|(p, _)| *p == only), "{node:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_network_delivers_everything() {
    let report = testnet::run(options(TestnetTransport::Quic)).await.unwrap();
    check_complete(&report);
    assert_eq!(connections_over(&report, &Protocol::QUIC), report.links);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mconn_network_delivers_everything() {
    let report = testnet::run(options(TestnetTransport::Mconn)).await.unwrap();
    check_complete(&report);
    assert_eq!(connections_over(&report, &Protocol::MCONN), report.links);
}

#[tokio::test]
async fn a_single_node_is_refused() {
    let mut o = options(TestnetTransport::Mixed);
    o.nodes = 1;
    let err = testnet::run(o).await.unwrap_err();
    assert!(matches!(err, TestnetError::InvalidOptions(_)), "{err}");
}

/// The WAN testnet: each node in its own network namespace behind the emulator's `lossy`
/// profile (100 ms RTT, 2% bursty loss). Every link crosses the emulator (a node's only route
/// to another is its TUN device), so the latencies include at least one emulated one-way delay.
#[cfg(feature = "wan")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wan_lossy_network_delivers_everything_across_the_emulator() {
    let mut o = options(TestnetTransport::Mixed);
    o.wan = Some(p2p_wanlab::Profile::Lossy);
    o.tx_rate = Some(20);
    let report = testnet::run(o).await.unwrap();
    check_complete(&report);
    assert_eq!(report.wan.as_deref(), Some("lossy"));
    assert!(connections_over(&report, &Protocol::QUIC) > 0, "{:?}", report.links_by_transport);
    assert!(connections_over(&report, &Protocol::MCONN) > 0, "{:?}", report.links_by_transport);
    // One emulated hop is 50 ms one way: no transaction arrives sooner.
    let p50 = report.latency_p50.unwrap();
    assert!(p50 >= Duration::from_millis(50), "p50 {p50:?} is below one emulated hop");
}
