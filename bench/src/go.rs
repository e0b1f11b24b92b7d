//! MConn cells with Go ends: Rust → Go, Go → Rust and Go ↔ Go, using the interop tests' Go
//! flood/sink peer (`interop-tests/gopeer`: CometBFT v0.38.25's `p2p.Switch` with a flood/sink
//! reactor, one process per end, `--unlimited`, 1024-byte packets, 100 ms flush throttle) and
//! the Rust side of its protocol (`interop-tests/benches/support`, shared with the
//! `mconn_matrix` bench). Messages are `tendermint.mempool.Message{Txs{[tx]}}` of exactly the
//! cell's size on channel 0x77 with a sequence number, not a timestamp, so these cells have no
//! latency figures; the gopeer floods from one goroutine (concurrency 1) and its reactor has
//! no receive delay.

use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use p2p_interop_tests::{GoPeer, GoPeerConfig, GoPeerRole};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::support::{self, Measure, RustPeer};
use crate::sys::{RssSampler, peak_rss_mib, reset_peak_rss};
use crate::{GIB, Sample};

/// The chain ID of every node.
const CHAIN_ID: &str = "p2p-bench";
/// Per-process and per-cell time limit.
const CELL_TIMEOUT: Duration = Duration::from_secs(180);

/// Which ends are Go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GoPairing {
    /// Rust flood, Go sink.
    RustGo,
    /// Go flood, Rust sink.
    GoRust,
    /// Go flood, Go sink.
    GoGo,
}

/// Whether the gopeer binary for the current sources exists (else why not).
pub(crate) fn available() -> anyhow::Result<()> {
    GoPeer::binary_path().map(|_| ())
}

fn go_measure(v: &Value) -> anyhow::Result<Measure> {
    let f = |k: &str| v.get(k).and_then(Value::as_f64).ok_or_else(|| anyhow!("no {k} in {v}"));
    let u = |k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(|| anyhow!("no {k} in {v}"));
    Ok(Measure {
        messages: u("messages")?,
        bytes: u("bytes")?,
        seconds: f("seconds")?,
        cpu_seconds: f("cpu_seconds")?,
    })
}

fn config(role: GoPeerRole, size: usize, count: u64, dial: Option<String>) -> GoPeerConfig {
    GoPeerConfig {
        size,
        count,
        dial,
        unlimited: true,
        timeout: CELL_TIMEOUT,
        ..GoPeerConfig::new(role, CHAIN_ID)
    }
}

/// A Go peer and the sampler of its peak RSS.
struct Go {
    peer: GoPeer,
    rss: Option<RssSampler>,
}

impl Go {
    fn start(config: &GoPeerConfig) -> anyhow::Result<Self> {
        let peer = GoPeer::start(config)?;
        let rss = peer.pid().map(RssSampler::start);
        Ok(Self { peer, rss })
    }

    /// Waits for the result line and the exit; returns the measure and the peak RSS.
    fn finish(mut self) -> anyhow::Result<(Measure, Option<f64>)> {
        let result = self.peer.wait_result(CELL_TIMEOUT);
        let rss = self.rss.take().and_then(RssSampler::finish);
        Ok((go_measure(&result?)?, rss))
    }
}

fn sample(
    flood: Measure,
    sink: Measure,
    rss: (Option<f64>, Option<f64>),
    rss_reset: bool,
) -> anyhow::Result<Sample> {
    ensure!(
        flood.messages == sink.messages,
        "flood sent {}, sink got {}",
        flood.messages,
        sink.messages
    );
    let gib = sink.bytes as f64 / GIB;
    Ok(Sample {
        rate: sink.bytes as f64 / sink.seconds,
        msgs: sink.messages as f64 / sink.seconds,
        p50_ms: None,
        p99_ms: None,
        cpu_flood: Some(flood.cpu_seconds / gib),
        cpu_sink: Some(sink.cpu_seconds / gib),
        cpu_total: (flood.cpu_seconds + sink.cpu_seconds) / gib,
        rss_flood_mib: rss.0,
        rss_sink_mib: rss.1,
        rss_reset,
    })
}

/// Runs one send-drain cell (concurrency 1, no receive delay) of `count` messages of `size`.
pub(crate) fn send_drain(
    rt: &Runtime,
    pairing: GoPairing,
    size: usize,
    count: u64,
) -> anyhow::Result<Sample> {
    match pairing {
        GoPairing::RustGo => {
            let go = Go::start(&config(GoPeerRole::Sink, size, count, None))?;
            let rss_reset = reset_peak_rss();
            let to = go.peer.p2p_address();
            let flood = rt.block_on(async {
                let a = RustPeer::listen(CHAIN_ID, "rust-flood").await?;
                let c = a.dial(&to).await?;
                let m = support::flood(c.as_ref(), size, count, CELL_TIMEOUT).await?;
                c.close().await;
                anyhow::Ok(m)
            });
            let rust_rss = peak_rss_mib(None);
            let (sink, go_rss) = go.finish()?;
            sample(flood.context("Rust flood")?, sink, (rust_rss, go_rss), rss_reset)
        }
        GoPairing::GoRust => {
            let rss_reset = reset_peak_rss();
            let b = rt.block_on(RustPeer::listen(CHAIN_ID, "rust-sink"))?;
            let go = Go::start(&config(GoPeerRole::Flood, size, count, Some(b.address())))?;
            let sink = rt.block_on(async {
                let c = b.accept().await?;
                support::sink(c.as_ref(), size, count, CELL_TIMEOUT).await
            });
            let rust_rss = peak_rss_mib(None);
            let (flood, go_rss) = go.finish()?;
            sample(flood, sink.context("Rust sink")?, (go_rss, rust_rss), rss_reset)
        }
        GoPairing::GoGo => {
            let sink = Go::start(&config(GoPeerRole::Sink, size, count, None))?;
            let to = sink.peer.p2p_address();
            let flood = Go::start(&config(GoPeerRole::Flood, size, count, Some(to)))?;
            let (s, s_rss) = sink.finish()?;
            let (f, f_rss) = flood.finish()?;
            sample(f, s, (f_rss, s_rss), true)
        }
    }
}

/// The CometBFT version in the gopeer's `go.mod`.
pub(crate) fn cometbft_version() -> Option<String> {
    let path = p2p_interop_tests::workspace_root().join("interop-tests/gopeer/go.mod");
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("require github.com/cometbft/cometbft "))
        .or_else(|| {
            text.lines().find_map(|l| l.trim().strip_prefix("github.com/cometbft/cometbft "))
        })
        .map(|v| v.trim().to_owned())
}
