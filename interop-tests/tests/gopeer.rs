//! Our Go peer (`interop-tests/gopeer`, CometBFT v0.38.25's `p2p` package) against the Rust MConn
//! transport: 1000 multi-packet messages (3000 bytes, three 1024-byte packets each) in each
//! direction arrive complete and in order, and the Go side reports no error; with several
//! senders every message arrives exactly once; a Go flood broadcasts to several Rust sinks; a
//! send-timeframe exchange ends with the end marker; both sinks report latency.
//!
//! Needs `interop-tests/scripts/install-go-nodes.sh` (a missing gopeer binary fails the test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[allow(unreachable_pub)]
#[path = "../benches/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use p2p_interop_tests::{GoPeer, GoPeerConfig, GoPeerRole};
use serde_json::Value;
use support::{FloodSpec, RustPeer, SinkSpec};
use tokio::runtime::Runtime;

const CHAIN_ID: &str = "gopeer-test";
const COUNT: u64 = 1000;
const SIZE: usize = 3000;
const TIMEOUT: Duration = Duration::from_secs(60);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The result says all messages, and the Go log has no error line until the exchange was
/// complete (CometBFT's logger marks errors with `E[`; gopeer logs at error level only). After
/// that the Switch may log the peer's hang-up (EOF) as an error: that is the teardown.
fn assert_go_clean(go: &GoPeer, result: &Value, peer: &str) {
    assert_eq!(result["messages"].as_u64(), Some(COUNT), "{result}");
    assert_eq!(result["bytes"].as_u64(), Some(COUNT * SIZE as u64), "{result}");
    assert_eq!(result["peer"].as_str(), Some(peer), "{result}");
    let stderr = go.stderr();
    let exchange: Vec<&str> =
        stderr.lines().take_while(|l| *l != "gopeer: exchange complete").collect();
    assert!(exchange.len() < stderr.lines().count(), "no completion line:\n{stderr}");
    let errors = exchange.iter().filter(|l| l.starts_with("E[") || l.contains("error")).count();
    assert_eq!(errors, 0, "Go side logged errors during the exchange:\n{stderr}");
}

#[test]
fn go_floods_rust_complete_and_in_order() {
    let rt = runtime();
    let rust = rt.block_on(RustPeer::listen(CHAIN_ID, "rust-sink")).unwrap();
    // CometBFT's default rates (5 120 000 B/s) on the Go side: ~0.6 s for 3 MB.
    let mut go = GoPeer::start(&GoPeerConfig {
        size: SIZE,
        count: COUNT,
        unlimited: false,
        dial: Some(rust.address()),
        timeout: TIMEOUT,
        ..GoPeerConfig::new(GoPeerRole::Flood, CHAIN_ID)
    })
    .unwrap();
    let measure = rt
        .block_on(async {
            let conn = rust.accept().await?;
            // Checks every message's size and sequence number, then acknowledges.
            support::sink(conn.as_ref(), SIZE, COUNT, TIMEOUT).await
        })
        .unwrap();
    assert_eq!(measure.messages, COUNT);
    assert_eq!(measure.bytes, COUNT * SIZE as u64);
    let result = go.wait_result(TIMEOUT).unwrap();
    assert_go_clean(&go, &result, &rust.node_id().to_string());
}

/// The flood's `--dial` peers are persistent: when its first dial fails (here: the Rust end
/// closes the TCP connection before the SecretConnection handshake, as a lost SYN on a lossy
/// link fails Go's 1 s dial), the Go Switch redials and the exchange completes.
#[test]
fn go_flood_redials_after_a_failed_first_dial() {
    let rt = runtime();
    let rust = rt.block_on(RustPeer::listen(CHAIN_ID, "rust-sink")).unwrap();
    let mut go = GoPeer::start(&GoPeerConfig {
        size: SIZE,
        count: 10,
        unlimited: true,
        dial: Some(rust.address()),
        timeout: TIMEOUT,
        ..GoPeerConfig::new(GoPeerRole::Flood, CHAIN_ID)
    })
    .unwrap();
    let measure = rt
        .block_on(async {
            rust.refuse_one().await?;
            let conn = rust.accept().await?;
            support::sink(conn.as_ref(), SIZE, 10, TIMEOUT).await
        })
        .unwrap();
    assert_eq!(measure.messages, 10);
    let result = go.wait_result(TIMEOUT).unwrap();
    assert_eq!(result["peer"].as_str(), Some(rust.node_id().to_string().as_str()));
    let stderr = go.stderr();
    assert!(stderr.contains("failed, the Switch redials it"), "no failed first dial:\n{stderr}");
}

#[test]
fn rust_floods_go_complete_and_in_order() {
    let rt = runtime();
    // The Go sink checks every message's size and sequence number and fails on the first bad
    // one; it acknowledges only after all COUNT arrived.
    let mut go = GoPeer::start(&GoPeerConfig {
        size: SIZE,
        count: COUNT,
        unlimited: true,
        timeout: TIMEOUT,
        ..GoPeerConfig::new(GoPeerRole::Sink, CHAIN_ID)
    })
    .unwrap();
    let rust = rt.block_on(RustPeer::listen(CHAIN_ID, "rust-flood")).unwrap();
    let measure = rt
        .block_on(async {
            let conn = rust.dial(&go.p2p_address()).await?;
            let m = support::flood(conn.as_ref(), SIZE, COUNT, TIMEOUT).await;
            conn.close().await;
            m
        })
        .unwrap();
    assert_eq!(measure.messages, COUNT);
    let result = go.wait_result(TIMEOUT).unwrap();
    assert_go_clean(&go, &result, &rust.node_id().to_string());
}

#[test]
fn go_sink_rejects_a_wrong_chain_id() {
    let rt = runtime();
    let go = GoPeer::start(&GoPeerConfig {
        timeout: TIMEOUT,
        ..GoPeerConfig::new(GoPeerRole::Sink, CHAIN_ID)
    })
    .unwrap();
    let rust = rt.block_on(RustPeer::listen("another-chain", "rust-flood")).unwrap();
    let err = rt.block_on(rust.dial(&go.p2p_address())).map(drop).unwrap_err();
    // Either side may notice first: we check the network after the handshake, Go closes.
    let msg = format!("{err:#}");
    assert!(msg.contains("network") || msg.contains("closed") || msg.contains("reset"), "{msg}");
}

#[test]
fn rust_floods_go_from_four_tasks_each_message_once_with_latency() {
    let rt = runtime();
    // The Go sink checks that every sequence number below COUNT arrives exactly once.
    let mut go = GoPeer::start(&GoPeerConfig {
        size: SIZE,
        count: COUNT,
        concurrency: 4,
        timeout: TIMEOUT,
        ..GoPeerConfig::new(GoPeerRole::Sink, CHAIN_ID)
    })
    .unwrap();
    let rust = rt.block_on(RustPeer::listen(CHAIN_ID, "rust-flood")).unwrap();
    let spec =
        FloodSpec { size: SIZE, count: COUNT, concurrency: 4, duration: None, timeout: TIMEOUT };
    let measure = rt
        .block_on(async {
            let conn: Arc<dyn p2p::Connection> = Arc::from(rust.dial(&go.p2p_address()).await?);
            let m = support::flood_to(std::slice::from_ref(&conn), &spec).await;
            conn.close().await;
            m
        })
        .unwrap();
    assert_eq!(measure.messages, COUNT);
    let result = go.wait_result(TIMEOUT).unwrap();
    assert_go_clean(&go, &result, &rust.node_id().to_string());
    let (p50, p99) = (result["p50_ms"].as_f64().unwrap(), result["p99_ms"].as_f64().unwrap());
    assert!(0.0 <= p50 && p50 <= p99, "{result}");
}

#[test]
fn go_broadcasts_to_three_rust_sinks_from_two_goroutines() {
    let rt = runtime();
    let sinks: Vec<RustPeer> =
        (0..3).map(|_| rt.block_on(RustPeer::listen(CHAIN_ID, "rust-sink")).unwrap()).collect();
    let dial = sinks.iter().map(RustPeer::address).collect::<Vec<_>>().join(",");
    let mut go = GoPeer::start(&GoPeerConfig {
        size: SIZE,
        count: COUNT,
        concurrency: 2,
        peers: 3,
        dial: Some(dial),
        timeout: TIMEOUT,
        ..GoPeerConfig::new(GoPeerRole::Flood, CHAIN_ID)
    })
    .unwrap();
    let spec = SinkSpec {
        size: SIZE,
        count: COUNT,
        concurrency: 2,
        delay: Duration::ZERO,
        duration: None,
        timeout: TIMEOUT,
        ordered: true,
    };
    let reports = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for p in sinks {
            set.spawn(async move {
                let c = p.accept().await?;
                support::sink_with(c.as_ref(), &spec).await
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.push(r.unwrap().unwrap());
        }
        all
    });
    assert_eq!(reports.len(), 3);
    for r in &reports {
        assert_eq!(r.measure.messages, COUNT);
        assert!(r.latency.p50_ms.unwrap() <= r.latency.p99_ms.unwrap());
    }
    let result = go.wait_result(TIMEOUT).unwrap();
    assert_eq!(result["messages"].as_u64(), Some(COUNT), "{result}");
    assert_eq!(result["peers"].as_u64(), Some(3), "{result}");
}

#[test]
fn go_floods_rust_for_a_timeframe_then_ends() {
    let rt = runtime();
    let duration = Duration::from_millis(500);
    let rust = rt.block_on(RustPeer::listen(CHAIN_ID, "rust-sink")).unwrap();
    let mut go = GoPeer::start(&GoPeerConfig {
        size: SIZE,
        duration: Some(duration),
        dial: Some(rust.address()),
        timeout: TIMEOUT,
        ..GoPeerConfig::new(GoPeerRole::Flood, CHAIN_ID)
    })
    .unwrap();
    let spec = SinkSpec {
        size: SIZE,
        count: 0,
        concurrency: 1,
        delay: Duration::from_millis(1),
        duration: Some(duration),
        timeout: TIMEOUT,
        ordered: true,
    };
    // The sink returns only after the end marker (and acknowledges it).
    let report = rt
        .block_on(async {
            let conn = rust.accept().await?;
            support::sink_with(conn.as_ref(), &spec).await
        })
        .unwrap();
    let result = go.wait_result(TIMEOUT).unwrap();
    let sent = result["messages"].as_u64().unwrap();
    assert!(report.measure.messages > 0 && report.measure.messages <= sent, "{result}");
    assert_eq!(report.measure.seconds, duration.as_secs_f64());
    assert!(report.latency.p99_ms.is_some());
}
