//! MConn throughput matrix on loopback: Rust→Rust, Rust→Go, Go→Rust and Go→Go, with the AEAD
//! ceiling from the same run.
//!
//! `cargo bench -p p2p-interop-tests --bench mconn_matrix` (`-- --quick` for a short run).
//! Needs the gopeer binary: `interop-tests/scripts/install-go-nodes.sh`.
//!
//! * Go ends: `interop-tests/gopeer` (CometBFT v0.38.25's `p2p.Switch` + `MultiplexTransport`
//!   with a flood/sink reactor), one process per end, `--unlimited` (send/recv rate 1e9 B/s),
//!   1024-byte max packet payload, CometBFT's default 100 ms flush throttle.
//! * Rust ends: `MConnTransport` connections of this process (the `Connection` API: handshake,
//!   `send`, `receive`; no router), default `MConnConfig` (no rate limits, 1024-byte payloads).
//! * Messages: `tendermint.mempool.Message{Txs{[tx]}}` of exactly 1 KiB or 64 KiB on channel
//!   0x77, the tx carrying a sequence number the sink checks; the sink acknowledges the last.
//!
//! Per cell: payload MB/s (message bytes over the sink's first-to-last message time) and CPU
//! seconds per GiB of each process (Go: getrusage; Rust: CLOCK_PROCESS_CPUTIME_ID), the sink
//! over the same interval and the flood from its first send to the ack. Rust→Rust runs both
//! ends in this one process, so only its total is known. Cells run interleaved (every pairing
//! and size once per repetition); the table shows medians.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use p2p_interop_tests::{GoPeer, GoPeerConfig, GoPeerRole};
use p2p_transport_mconn::secret::Handshake;
use serde_json::Value;
use tokio::runtime::Runtime;

use support::{Measure, RustPeer, cpu_seconds};

/// The chain ID of every node in the bench.
const CHAIN_ID: &str = "mconn-matrix";
/// Per-process and per-cell time limit.
const CELL_TIMEOUT: Duration = Duration::from_secs(300);
const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pairing {
    RustRust,
    RustGo,
    GoRust,
    GoGo,
}

impl Pairing {
    const ALL: [Self; 4] = [Self::RustRust, Self::RustGo, Self::GoRust, Self::GoGo];

    /// Short name for `--only`.
    fn code(self) -> &'static str {
        match self {
            Self::RustRust => "rr",
            Self::RustGo => "rg",
            Self::GoRust => "gr",
            Self::GoGo => "gg",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::RustRust => "Rust -> Rust",
            Self::RustGo => "Rust -> Go",
            Self::GoRust => "Go -> Rust",
            Self::GoGo => "Go -> Go",
        }
    }
}

/// One cell's result.
#[derive(Debug, Clone, Copy)]
struct Cell {
    /// Payload bytes per second.
    rate: f64,
    /// CPU s/GiB of the flood process (`None`: shared with the sink, in-process).
    flood_cpu: Option<f64>,
    /// CPU s/GiB of the sink process.
    sink_cpu: Option<f64>,
    /// CPU s/GiB of both ends.
    total_cpu: f64,
}

fn json_f64(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or_else(|| panic!("no {key} in {v}"))
}

fn go_measure(v: &Value) -> Measure {
    if std::env::args().any(|a| a == "--verbose") {
        eprintln!("    go: {v}");
    }
    Measure {
        messages: v.get("messages").and_then(Value::as_u64).unwrap(),
        bytes: v.get("bytes").and_then(Value::as_u64).unwrap(),
        seconds: json_f64(v, "seconds"),
        cpu_seconds: json_f64(v, "cpu_seconds"),
    }
}

fn go_config(role: GoPeerRole, size: usize, count: u64, dial: Option<String>) -> GoPeerConfig {
    GoPeerConfig {
        size,
        count,
        dial,
        unlimited: true,
        timeout: CELL_TIMEOUT,
        ..GoPeerConfig::new(role, CHAIN_ID)
    }
}

fn cell(flood: Measure, sink: Measure, shared_cpu: Option<f64>) -> Cell {
    assert_eq!(flood.messages, sink.messages);
    let gib = sink.bytes as f64 / GIB;
    let (flood_cpu, sink_cpu, total_cpu) = match shared_cpu {
        Some(total) => (None, None, total / gib),
        None => (
            Some(flood.cpu_seconds / gib),
            Some(sink.cpu_seconds / gib),
            (flood.cpu_seconds + sink.cpu_seconds) / gib,
        ),
    };
    Cell { rate: sink.bytes as f64 / sink.seconds, flood_cpu, sink_cpu, total_cpu }
}

fn run_cell(rt: &Runtime, pairing: Pairing, size: usize, count: u64) -> Cell {
    match pairing {
        Pairing::RustRust => rt.block_on(async {
            let a = RustPeer::listen(CHAIN_ID, "rust-flood").await.unwrap();
            let b = RustPeer::listen(CHAIN_ID, "rust-sink").await.unwrap();
            let to = b.address();
            let (fc, sc) = tokio::join!(a.dial(&to), b.accept());
            let (fc, sc) = (fc.unwrap(), sc.unwrap());
            let cpu = cpu_seconds();
            let sink =
                tokio::spawn(
                    async move { support::sink(sc.as_ref(), size, count, CELL_TIMEOUT).await },
                );
            let flood = support::flood(fc.as_ref(), size, count, CELL_TIMEOUT).await.unwrap();
            fc.close().await;
            let sink = sink.await.unwrap().unwrap();
            let cpu = cpu_seconds() - cpu;
            cell(flood, sink, Some(cpu))
        }),
        Pairing::RustGo => {
            let mut go = GoPeer::start(&go_config(GoPeerRole::Sink, size, count, None)).unwrap();
            let flood = rt.block_on(async {
                let a = RustPeer::listen(CHAIN_ID, "rust-flood").await.unwrap();
                let c = a.dial(&go.p2p_address()).await.unwrap();
                let m = support::flood(c.as_ref(), size, count, CELL_TIMEOUT).await.unwrap();
                c.close().await;
                m
            });
            let sink = go_measure(&go.wait_result(CELL_TIMEOUT).unwrap());
            cell(flood, sink, None)
        }
        Pairing::GoRust => {
            let b = rt.block_on(RustPeer::listen(CHAIN_ID, "rust-sink")).unwrap();
            let mut go =
                GoPeer::start(&go_config(GoPeerRole::Flood, size, count, Some(b.address())))
                    .unwrap();
            let sink = rt.block_on(async {
                let c = b.accept().await.unwrap();
                support::sink(c.as_ref(), size, count, CELL_TIMEOUT).await.unwrap()
            });
            let flood = go_measure(&go.wait_result(CELL_TIMEOUT).unwrap());
            cell(flood, sink, None)
        }
        Pairing::GoGo => {
            let mut sink = GoPeer::start(&go_config(GoPeerRole::Sink, size, count, None)).unwrap();
            let mut flood =
                GoPeer::start(&go_config(GoPeerRole::Flood, size, count, Some(sink.p2p_address())))
                    .unwrap();
            let s = go_measure(&sink.wait_result(CELL_TIMEOUT).unwrap());
            let f = go_measure(&flood.wait_result(CELL_TIMEOUT).unwrap());
            cell(f, s, None)
        }
    }
}

/// Single-core seal rate of the SecretConnection cipher (ring's ChaCha20-Poly1305): 1024 data
/// bytes per 1028-byte plaintext frame, data bytes per second.
fn aead_seal_rate(total: usize) -> f64 {
    let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let a = Handshake::with_ephemeral_secret(key.clone(), [2; 32]);
    let b = Handshake::with_ephemeral_secret(key, [3; 32]);
    let b_pub: [u8; 32] = b.ephemeral_message()[3..].try_into().unwrap();
    let mut auth = a.finish(b_pub).unwrap();
    let data = vec![7u8; 1024];
    let mut out = Vec::with_capacity(2048);
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        out.clear();
        auth.sender().seal(&data, &mut out).unwrap();
        done += data.len();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_opt(v: Vec<Option<f64>>) -> Option<f64> {
    v.into_iter().collect::<Option<Vec<f64>>>().map(median)
}

fn fmt_cpu(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only rr,gg`: run only these pairings (rr, rg, gr, gg); `--reps N`: repetitions;
    // `--verbose`: print the Go peers' result lines (with user/system CPU split).
    let arg_value = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].clone());
    let only: Option<Vec<String>> =
        arg_value("--only").map(|v| v.split(',').map(str::to_owned).collect());
    let pairings: Vec<Pairing> = Pairing::ALL
        .into_iter()
        .filter(|p| only.as_ref().is_none_or(|o| o.iter().any(|c| c == p.code())))
        .collect();
    let (reps, per_cell) = if quick { (1, 32usize << 20) } else { (3, 256usize << 20) };
    let reps = arg_value("--reps").map_or(reps, |r| r.parse().expect("--reps N"));
    let sizes = [1024usize, 64 * 1024];
    if let Err(e) = GoPeer::binary_path() {
        panic!("{e:#}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    eprintln!(
        "mconn_matrix: {} profile, {} MiB per cell, {reps} repetition(s)",
        if quick { "quick" } else { "full" },
        per_cell >> 20
    );
    let mut aead = Vec::new();
    let mut results: Vec<Vec<Vec<Cell>>> = vec![vec![Vec::new(); pairings.len()]; sizes.len()];
    for rep in 0..reps {
        aead.push(aead_seal_rate(per_cell));
        for (si, &size) in sizes.iter().enumerate() {
            let count = (per_cell / size) as u64;
            for (pi, &pairing) in pairings.iter().enumerate() {
                let c = run_cell(&rt, pairing, size, count);
                eprintln!(
                    "  rep {} {:>5} B {:<13} {:>8.1} MB/s  cpu {} / {} / {:.2} s/GiB",
                    rep + 1,
                    size,
                    pairing.name(),
                    c.rate / 1e6,
                    fmt_cpu(c.flood_cpu),
                    fmt_cpu(c.sink_cpu),
                    c.total_cpu
                );
                results[si][pi].push(c);
            }
        }
    }

    let aead = median(aead);
    println!();
    println!(
        "MConn loopback matrix ({} profile: {} MiB per cell, median of {reps}; CPU in s/GiB)",
        if quick { "quick" } else { "full" },
        per_cell >> 20
    );
    println!(
        "{:<8} {:<13} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "message", "pairing", "MB/s", "x Go->Go", "x AEAD", "flood CPU", "sink CPU", "total CPU"
    );
    for (si, &size) in sizes.iter().enumerate() {
        let cells: Vec<(f64, Option<f64>, Option<f64>, f64)> = results[si]
            .iter()
            .map(|runs| {
                (
                    median(runs.iter().map(|c| c.rate).collect()),
                    median_opt(runs.iter().map(|c| c.flood_cpu).collect()),
                    median_opt(runs.iter().map(|c| c.sink_cpu).collect()),
                    median(runs.iter().map(|c| c.total_cpu).collect()),
                )
            })
            .collect();
        let go_go = pairings.iter().position(|&p| p == Pairing::GoGo).map(|i| cells[i].0);
        for (pi, &pairing) in pairings.iter().enumerate() {
            let (rate, flood_cpu, sink_cpu, total_cpu) = cells[pi];
            println!(
                "{:<8} {:<13} {:>9.1} {:>9} {:>9.2} {:>10} {:>10} {:>10.2}{}",
                format!("{} KiB", size >> 10),
                pairing.name(),
                rate / 1e6,
                go_go.map_or_else(|| "-".to_owned(), |g| format!("{:.2}x", rate / g)),
                rate / aead,
                fmt_cpu(flood_cpu),
                fmt_cpu(sink_cpu),
                total_cpu,
                if pairing == Pairing::RustRust { "  (both ends in this process)" } else { "" }
            );
        }
    }
    println!(
        "AEAD ceiling: ring ChaCha20-Poly1305 seal of 1028-byte frames, 1 core: {:.1} MB/s of data",
        aead / 1e6
    );
    println!("Targets: Rust -> Rust >= 3x Go -> Go, and >= 0.5x AEAD at 64 KiB.");
}
