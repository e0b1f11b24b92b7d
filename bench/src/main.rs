//! `p2p-bench`: the project's bench runner (issue 6).
//!
//! One run = calibration (ceilings) → the matrix, interleaved → calibration again; then the
//! table (stdout), optional JSON (`--json PATH`) and optional `BENCHMARKS.md` at the
//! workspace root (`--write-benchmarks-md`). Exit status: 0, or 1 if a target ratio is below
//! [`report::GROSS_FRACTION`] of its target (a gross regression), or 2 if a cell failed.
//!
//! ```text
//! cargo run --release -p p2p-bench -- --quick                  # CI profile
//! cargo run --release -p p2p-bench -- --full --json bench.json --write-benchmarks-md
//! cargo run --release -p p2p-bench -- --quick --only mconn-rr,quic   # a subset of rows
//! ```
//!
//! Profiles (see [`Profile`]): `--quick` runs send-drain, send-timeframe (2 s) and
//! broadcast-drain (1 sender + 7 receivers) at 1 KiB and 64 KiB, concurrency 1 and 8, no
//! receive delay, 256 MiB per drain cell, 3 interleaved repetitions (about 3 minutes on 2
//! cores); `--full` (the default, about an hour with the lp2p cells) adds 200 B, 8 KiB and
//! 512 KiB, a 20 ms receive delay and a 5 s timeframe. Go pairings (the Go peer floods from
//! `cc` goroutines, to 7 peers for broadcast, and sleeps in its reactor for the delay) run
//! send-drain without
//! delay at every size and concurrency; the full profile adds the other test types and the
//! delay at 1 KiB and 64 KiB (send-timeframe without delay only). Broadcast runs at
//! concurrency 1 only, as in CometBFT's matrix.
//!
//! Besides the matrix, both profiles run the rows of [`rows`]: QoS through the router (MConn,
//! QUIC; 300 probes per phase quick, 1000 full), slow receiver (MConn, QUIC; `DropNewest` and
//! `Wait` policies; 1 s windows quick, 3 s full) and idle-connection RSS (MConn, QUIC,
//! memory at 1, 100 and 1000 connections; the listening side in a child process started with
//! the hidden `--idle-server <transport>` flag). `--only qos,slow,idle` selects them.

mod calib;
mod go;
mod report;
mod rows;
mod rr;
#[allow(clippy::indexing_slicing)]
#[path = "../../interop-tests/benches/support/mod.rs"]
mod support;
mod sys;
mod wan;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use crate::calib::Volumes;
use crate::go::{GoNet, GoPairing};
use crate::rr::{Kind, Test};

/// Bytes in a GiB.
pub(crate) const GIB: f64 = (1u64 << 30) as f64;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(name = "p2p-bench", about = "Transport and router benchmarks with calibration ceilings")]
struct Args {
    /// The CI profile (well under 8 minutes on 2 cores).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The full profile (the default; about an hour on 2 cores).
    #[arg(long)]
    full: bool,
    /// Also write every sample, median, calibration and ratio as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write the tables, machine, command and Go version to BENCHMARKS.md at the workspace root.
    #[arg(long)]
    write_benchmarks_md: bool,
    /// Run only the rows whose id contains one of these comma-separated strings (e.g.
    /// `mconn-rr,quic-rr,msg-64kb`, `handshakes`, `router`). Calibration always runs.
    #[arg(long, value_name = "FILTER")]
    only: Option<String>,
    /// Repetitions per cell (default: 5 quick, 3 full).
    #[arg(long)]
    reps: Option<usize>,
    /// Skip the Go pairings even if the Go peer is built.
    #[arg(long)]
    no_go: bool,
    /// Run the WAN rows instead (issue 13): each end in its own network namespace behind the
    /// user-space link emulator (needs root). With `--quick`: the short CI version.
    #[arg(long)]
    wan: bool,
    /// The WAN profiles to run, comma-separated (default: lan,continent,intercontinental,lossy).
    #[arg(long, value_name = "PROFILES", requires = "wan")]
    wan_profiles: Option<String>,
    /// Internal: run as the listening process of an idle-RSS row (`mconn`, `quic`, `memory`).
    #[arg(long, hide = true, value_name = "TRANSPORT")]
    idle_server: Option<String>,
}

/// What one profile runs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Profile {
    /// `quick` or `full`.
    pub(crate) name: &'static str,
    /// Repetitions of every cell (interleaved).
    pub(crate) reps: usize,
    /// Message sizes in bytes.
    pub(crate) sizes: Vec<usize>,
    /// Test types (Go pairings: see the matrix loop in `run`).
    pub(crate) tests: Vec<TestType>,
    /// Length of a send-timeframe cell.
    pub(crate) timeframe: Duration,
    /// Receivers of a broadcast cell (besides the sender).
    pub(crate) broadcast_receivers: usize,
    /// Sender concurrency values (broadcast: 1 only).
    pub(crate) concurrency: Vec<usize>,
    /// Receive delays in ms (Go pairings: see the matrix loop in `run`).
    pub(crate) delays_ms: Vec<u64>,
    /// Payload bytes per send-drain cell without delay (count = bytes / size).
    pub(crate) drain_bytes: usize,
    /// Messages per cell with a receive delay.
    pub(crate) delay_count: usize,
    /// Most messages per lp2p cell (one stream per message).
    pub(crate) lp2p_messages: usize,
    /// Handshakes per connection-setup row.
    pub(crate) handshakes: usize,
    /// Messages in the router + memory row.
    pub(crate) router_messages: usize,
    /// Probes per phase (idle, loaded) of a QoS row.
    pub(crate) qos_probes: usize,
    /// Measurement window of each phase (solo, with slow peer) of a slow-receiver row.
    pub(crate) slow_window: Duration,
    /// Connection counts of the idle-RSS rows.
    pub(crate) idle_conns: Vec<usize>,
    /// Calibration pass volumes.
    #[serde(skip)]
    pub(crate) calib: Volumes,
    /// Calibration passes at the start and at the end (medians compared for drift).
    pub(crate) calib_reps: usize,
}

impl Profile {
    fn quick() -> Self {
        Self {
            name: "quick",
            reps: 3,
            sizes: vec![1 << 10, 64 << 10],
            tests: vec![TestType::Drain, TestType::Timeframe, TestType::Broadcast],
            timeframe: Duration::from_secs(2),
            broadcast_receivers: 7,
            concurrency: vec![1, 8],
            delays_ms: vec![0],
            drain_bytes: 256 << 20,
            delay_count: 100,
            lp2p_messages: 16_384,
            handshakes: 1000,
            router_messages: 200_000,
            qos_probes: 300,
            slow_window: Duration::from_secs(1),
            idle_conns: vec![1, 100, 1000],
            calib: Volumes {
                aead_time: Duration::from_millis(300),
                tcp_bytes: 1 << 30,
                quinn_bytes: 512 << 20,
                mpsc_messages: 1_000_000,
            },
            calib_reps: 3,
        }
    }

    fn full() -> Self {
        Self {
            name: "full",
            reps: 3,
            sizes: vec![200, 1 << 10, 8 << 10, 64 << 10, 512 << 10],
            tests: vec![TestType::Drain, TestType::Timeframe, TestType::Broadcast],
            timeframe: Duration::from_secs(5),
            broadcast_receivers: 7,
            concurrency: vec![1, 8],
            delays_ms: vec![0, 20],
            drain_bytes: 256 << 20,
            delay_count: 150,
            lp2p_messages: 65_536,
            handshakes: 2000,
            router_messages: 400_000,
            qos_probes: 1000,
            slow_window: Duration::from_secs(3),
            idle_conns: vec![1, 100, 1000],
            calib: Volumes {
                aead_time: Duration::from_millis(500),
                tcp_bytes: 1 << 30,
                quinn_bytes: 512 << 20,
                mpsc_messages: 2_000_000,
            },
            calib_reps: 3,
        }
    }
}

/// High-priority probe latency on one connection, idle and under saturating bulk traffic on
/// another channel of the same connection (a QoS row).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct QosSample {
    /// Probe one-way latency p50 with no bulk traffic, ms.
    pub(crate) idle_p50_ms: f64,
    /// Probe one-way latency p99 with no bulk traffic, ms.
    pub(crate) idle_p99_ms: f64,
    /// Probe one-way latency p50 while bulk traffic saturates the connection, ms.
    pub(crate) loaded_p50_ms: f64,
    /// Probe one-way latency p99 while bulk traffic saturates the connection, ms.
    pub(crate) loaded_p99_ms: f64,
    /// The slowest probe of the loaded phase, ms (Rust rows; the Go sink does not report it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) loaded_max_ms: Option<f64>,
    /// Bulk payload rate during the loaded phase, MB/s.
    pub(crate) bulk_mb_s: f64,
    /// Probes measured per phase.
    pub(crate) probes: usize,
}

/// Resident memory of one process holding `conns` idle, handshaken connections (a
/// connection-cost row).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct IdleRss {
    /// Idle connections held.
    pub(crate) conns: usize,
    /// RSS (`VmRSS`) of the process before the first connection, MiB.
    pub(crate) baseline_mib: f64,
    /// RSS with `conns` connections up and idle, MiB.
    pub(crate) total_mib: f64,
    /// `(total - baseline) / conns`, KiB.
    pub(crate) kib_per_conn: f64,
}

/// One measurement of one cell.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Sample {
    /// Payload bytes per second (first send → last receive).
    pub(crate) rate: f64,
    /// Messages per second.
    pub(crate) msgs: f64,
    /// Median one-way latency, ms (send timestamp in the payload; Go broadcast cells: the
    /// median of the receivers' medians).
    pub(crate) p50_ms: Option<f64>,
    /// 99th-percentile latency, ms (Go broadcast cells: the largest receiver's).
    pub(crate) p99_ms: Option<f64>,
    /// CPU s/GiB of the flood process (none when both ends share this process).
    pub(crate) cpu_flood: Option<f64>,
    /// CPU s/GiB of the sink process.
    pub(crate) cpu_sink: Option<f64>,
    /// CPU s/GiB of both ends together.
    pub(crate) cpu_total: f64,
    /// Peak RSS of the flood process, MiB.
    pub(crate) rss_flood_mib: Option<f64>,
    /// Peak RSS of the sink process, MiB (the same process as the flood for Rust ↔ Rust).
    pub(crate) rss_sink_mib: Option<f64>,
    /// Whether this process's peak RSS was reset before the cell (else it is the run's peak).
    pub(crate) rss_reset: bool,
}

/// A pairing of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Pairing {
    /// MConn, both ends Rust.
    MConnRustRust,
    /// MConn, Rust flood → Go sink.
    MConnRustGo,
    /// MConn, Go flood → Rust sink.
    MConnGoRust,
    /// MConn, both ends Go.
    MConnGoGo,
    /// QUIC native protocol, both ends Rust.
    QuicRustRust,
    /// Memory transport, both ends Rust.
    MemoryRustRust,
    /// CometBFT's lp2p (libp2p over QUIC), both ends Rust.
    Lp2pRustRust,
    /// lp2p, Rust flood → Go sink (`golp2p`, CometBFT v0.40.0's lp2p package).
    Lp2pRustGo,
    /// lp2p, Go flood → Rust sink.
    Lp2pGoRust,
    /// lp2p, both ends Go.
    Lp2pGoGo,
}

impl Pairing {
    /// Run order within a repetition (A B C … A B C …).
    const ALL: [Self; 10] = [
        Self::MConnRustRust,
        Self::MConnRustGo,
        Self::MConnGoRust,
        Self::MConnGoGo,
        Self::QuicRustRust,
        Self::MemoryRustRust,
        Self::Lp2pRustRust,
        Self::Lp2pRustGo,
        Self::Lp2pGoRust,
        Self::Lp2pGoGo,
    ];

    /// Short id used in row ids and `--only`.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::MConnRustRust => "mconn-rr",
            Self::MConnRustGo => "mconn-rg",
            Self::MConnGoRust => "mconn-gr",
            Self::MConnGoGo => "mconn-gg",
            Self::QuicRustRust => "quic-rr",
            Self::MemoryRustRust => "mem-rr",
            Self::Lp2pRustRust => "lp2p-rr",
            Self::Lp2pRustGo => "lp2p-rg",
            Self::Lp2pGoRust => "lp2p-gr",
            Self::Lp2pGoGo => "lp2p-gg",
        }
    }

    /// Display name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::MConnRustRust => "MConn Rust->Rust",
            Self::MConnRustGo => "MConn Rust->Go",
            Self::MConnGoRust => "MConn Go->Rust",
            Self::MConnGoGo => "MConn Go->Go",
            Self::QuicRustRust => "QUIC Rust->Rust",
            Self::MemoryRustRust => "memory Rust->Rust",
            Self::Lp2pRustRust => "lp2p Rust->Rust",
            Self::Lp2pRustGo => "lp2p Rust->Go",
            Self::Lp2pGoRust => "lp2p Go->Rust",
            Self::Lp2pGoGo => "lp2p Go->Go",
        }
    }

    fn go(self) -> Option<GoPairing> {
        match self {
            Self::MConnRustGo | Self::Lp2pRustGo => Some(GoPairing::RustGo),
            Self::MConnGoRust | Self::Lp2pGoRust => Some(GoPairing::GoRust),
            Self::MConnGoGo | Self::Lp2pGoGo => Some(GoPairing::GoGo),
            _ => None,
        }
    }

    /// Whether the pairing is over lp2p.
    fn is_lp2p(self) -> bool {
        matches!(self, Self::Lp2pRustRust | Self::Lp2pRustGo | Self::Lp2pGoRust | Self::Lp2pGoGo)
    }

    /// The Go network of a pairing with Go ends.
    fn go_net(self) -> GoNet {
        match self {
            Self::Lp2pRustGo | Self::Lp2pGoRust | Self::Lp2pGoGo => GoNet::Lp2p,
            _ => GoNet::MConn,
        }
    }

    fn kind(self) -> Option<Kind> {
        match self {
            Self::MConnRustRust => Some(Kind::MConn),
            Self::QuicRustRust => Some(Kind::Quic),
            Self::MemoryRustRust => Some(Kind::Memory),
            Self::Lp2pRustRust => Some(Kind::Lp2p),
            _ => None,
        }
    }
}

/// A test type of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum TestType {
    /// send-drain: a fixed message count, until all arrived.
    Drain,
    /// send-timeframe: as many as fit in the profile's timeframe.
    Timeframe,
    /// broadcast-drain: one sender, the profile's receivers, a fixed count each.
    Broadcast,
}

impl TestType {
    fn code(self) -> &'static str {
        match self {
            Self::Drain => "send-drain",
            Self::Timeframe => "send-timeframe",
            Self::Broadcast => "broadcast-drain",
        }
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Test type.
    pub(crate) test: TestType,
    /// Who talks to whom over what.
    pub(crate) pairing: Pairing,
    /// Message bytes.
    pub(crate) size: usize,
    /// Concurrent senders.
    pub(crate) cc: usize,
    /// Receive delay, ms.
    pub(crate) delay_ms: u64,
    /// Messages.
    pub(crate) count: usize,
}

impl Spec {
    /// `<test>.<pairing>.msg-<size>.cc-<n>.delay-<d>`, after CometBFT's case names.
    pub(crate) fn id(&self) -> String {
        let size = if self.size.is_multiple_of(1024) {
            format!("{}kb", self.size / 1024)
        } else {
            format!("{}b", self.size)
        };
        let delay =
            if self.delay_ms == 0 { "no".to_owned() } else { format!("{}ms", self.delay_ms) };
        let test = self.test.code();
        format!("{test}.{}.msg-{size}.cc-{}.delay-{delay}", self.pairing.code(), self.cc)
    }
}

/// A cell's samples.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CellResult {
    /// [`Spec::id`].
    pub(crate) id: String,
    /// [`Pairing::name`].
    pub(crate) pairing: &'static str,
    /// Message bytes.
    pub(crate) size: usize,
    /// Concurrent senders.
    pub(crate) concurrency: usize,
    /// Receive delay, ms.
    pub(crate) delay_ms: u64,
    /// Messages per repetition (per receiver; 0 for send-timeframe: as many as fit).
    pub(crate) messages: usize,
    /// One per successful repetition.
    pub(crate) samples: Vec<Sample>,
    /// The first error, if any repetition failed.
    pub(crate) error: Option<String>,
    #[serde(skip)]
    pub(crate) spec: Option<Spec>,
}

/// A row outside the matrix (connection setup, router + memory).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ExtraResult {
    /// Row id.
    pub(crate) id: &'static str,
    /// What it measures.
    pub(crate) what: &'static str,
    /// Unit of `values`.
    pub(crate) unit: &'static str,
    /// One per repetition.
    pub(crate) values: Vec<f64>,
    /// Secondary figure per repetition (CPU ms per handshake), if any.
    pub(crate) cpu_ms: Vec<f64>,
    /// The first error, if any repetition failed.
    pub(crate) error: Option<String>,
}

pub(crate) fn selected(only: Option<&[String]>, id: &str) -> bool {
    only.is_none_or(|terms| terms.iter().any(|t| id.contains(t.as_str())))
}

fn calibrate(
    rt: &tokio::runtime::Runtime,
    p: &Profile,
    when: &str,
) -> anyhow::Result<Vec<Vec<f64>>> {
    eprintln!("calibration ({when}) ...");
    (0..p.calib_reps).map(|_| calib::run(rt, p.calib)).collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p2p-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if let Some(kind) = &args.idle_server {
        rows::idle_server(rows::parse_kind(kind)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.wan {
        let profiles = match &args.wan_profiles {
            Some(list) => list
                .split(',')
                .map(|p| p.trim().parse::<p2p_wanlab::Profile>())
                .collect::<Result<Vec<_>, _>>()?,
            None => p2p_wanlab::Profile::ALL.to_vec(),
        };
        let go =
            !args.no_go && go::available().map_err(|e| eprintln!("Go rows skipped: {e:#}")).is_ok();
        return wan::run(&wan::WanArgs {
            quick: args.quick,
            profiles,
            only: args.only.as_ref().map(|o| o.split(',').map(|s| s.trim().to_owned()).collect()),
            go,
            json: args.json.clone(),
            write_md: args.write_benchmarks_md,
        });
    }
    let mut profile = if args.quick { Profile::quick() } else { Profile::full() };
    if let Some(r) = args.reps {
        profile.reps = r.max(1);
    }
    let only: Option<Vec<String>> =
        args.only.as_ref().map(|o| o.split(',').map(|s| s.trim().to_owned()).collect());
    let only = only.as_deref();
    let go_status = if args.no_go { Err(anyhow::anyhow!("--no-go")) } else { go::available() };
    if let Err(e) = &go_status {
        eprintln!("Go pairings skipped: {e:#}");
    }
    let lp2p_go_status =
        if args.no_go { Err(anyhow::anyhow!("--no-go")) } else { go::lp2p_available() };
    if let Err(e) = &lp2p_go_status {
        eprintln!("Go lp2p pairings skipped: {e:#}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let started = Instant::now();
    let load_start = sys::load_average();
    eprintln!(
        "p2p-bench: {} profile, {} repetition(s); host TCP congestion control {}",
        profile.name,
        profile.reps,
        sys::tcp_congestion()
    );

    // The matrix, in run order.
    let mut cells: Vec<CellResult> = Vec::new();
    for &test in &profile.tests {
        for &size in &profile.sizes {
            for &cc in &profile.concurrency {
                for &delay_ms in &profile.delays_ms {
                    for pairing in Pairing::ALL {
                        // Go cells cost a process start each and cannot share a process, so
                        // they are trimmed to the budget: the quick profile (CI) runs only
                        // send-drain without delay (what the target ratios compare); the full
                        // profile runs that at every size and every other test type and delay
                        // at 1 KiB and 64 KiB (send-timeframe without delay).
                        let plain_drain = test == TestType::Drain && delay_ms == 0;
                        let go_skipped = if profile.name == "quick" {
                            !plain_drain
                        } else {
                            !plain_drain
                                && (!matches!(size, 1024 | 65536)
                                    || (test == TestType::Timeframe && delay_ms != 0))
                        };
                        let status = match pairing.go_net() {
                            GoNet::MConn => &go_status,
                            GoNet::Lp2p => &lp2p_go_status,
                        };
                        if pairing.go().is_some() && (go_skipped || status.is_err()) {
                            continue;
                        }
                        if test == TestType::Broadcast && cc != 1 {
                            continue;
                        }
                        let count = match (test, delay_ms) {
                            (TestType::Timeframe, _) => 0,
                            (_, 0) => (profile.drain_bytes / size).max(1),
                            _ => profile.delay_count,
                        };
                        let count = if test == TestType::Broadcast && delay_ms == 0 {
                            (count / profile.broadcast_receivers.max(1)).max(1)
                        } else {
                            count
                        };
                        // lp2p moves one stream per message: Go's lp2p manages a few thousand
                        // small messages a second, so its cells (and, for the same volume, the
                        // Rust lp2p ones) send at most `lp2p_messages`.
                        let count = if pairing.is_lp2p() && delay_ms == 0 && count > 0 {
                            count.min(profile.lp2p_messages)
                        } else {
                            count
                        };
                        let spec = Spec { test, pairing, size, cc, delay_ms, count };
                        if !selected(only, &spec.id()) {
                            continue;
                        }
                        cells.push(CellResult {
                            id: spec.id(),
                            pairing: pairing.name(),
                            size,
                            concurrency: cc,
                            delay_ms,
                            messages: count,
                            samples: Vec::new(),
                            error: None,
                            spec: Some(spec),
                        });
                    }
                }
            }
        }
    }
    let mut extras: Vec<ExtraResult> = [
        (
            "handshakes.mconn.p16",
            "MConn setup: dial + SecretConnection + NodeInfo, 16 in parallel",
            "hs/s",
        ),
        ("handshakes.quic.p16", "QUIC setup: dial + TLS 1.3 + NodeInfo, 16 in parallel", "hs/s"),
        ("router-memory.msg-200b", "router + memory transport, 200 B, 1 peer", "msg/s"),
    ]
    .into_iter()
    .filter(|(id, _, _)| selected(only, id))
    .map(|(id, what, unit)| ExtraResult {
        id,
        what,
        unit,
        values: vec![],
        cpu_ms: vec![],
        error: None,
    })
    .collect();

    // QoS, slow-receiver and idle-connection rows (`rows`).
    let row_specs: Vec<rows::Row> = rows::rows(&profile, go_status.is_ok())
        .into_iter()
        .filter(|r| selected(only, &r.id))
        .collect();
    let mut row_results: Vec<rows::RowResult> = row_specs
        .iter()
        .map(|r| rows::RowResult {
            id: r.id.clone(),
            what: r.what.clone(),
            samples: vec![],
            error: None,
        })
        .collect();

    let calib_start = calibrate(&rt, &profile, "start")?;
    for rep in 0..profile.reps {
        for cell in &mut cells {
            let Some(spec) = cell.spec else { continue };
            let test = match spec.test {
                TestType::Drain => Test::Drain,
                TestType::Timeframe => Test::Timeframe(profile.timeframe),
                TestType::Broadcast => Test::Broadcast(profile.broadcast_receivers),
            };
            let delay = Duration::from_millis(spec.delay_ms);
            let result = match (spec.pairing.kind(), spec.pairing.go()) {
                (Some(kind), _) => {
                    rt.block_on(rr::run_cell(kind, test, spec.size, spec.cc, delay, spec.count))
                }
                (None, Some(g)) => go::run_cell(
                    &rt,
                    (spec.pairing.go_net(), g),
                    test,
                    spec.size,
                    spec.cc,
                    delay,
                    spec.count as u64,
                ),
                (None, None) => Err(anyhow::anyhow!("pairing without ends")),
            };
            match result {
                Ok(s) => {
                    eprintln!(
                        "  rep {} {:<48} {:>9.1} MB/s {:>10.0} msg/s",
                        rep + 1,
                        cell.id,
                        s.rate / 1e6,
                        s.msgs
                    );
                    cell.samples.push(s);
                }
                Err(e) => {
                    eprintln!("  rep {} {:<48} FAILED: {e:#}", rep + 1, cell.id);
                    cell.error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        for extra in &mut extras {
            let r = match extra.id {
                "handshakes.mconn.p16" => {
                    rt.block_on(rr::handshakes(Kind::MConn, profile.handshakes, 16))
                }
                "handshakes.quic.p16" => {
                    rt.block_on(rr::handshakes(Kind::Quic, profile.handshakes, 16))
                }
                _ => rt
                    .block_on(rr::router_rate(200, profile.router_messages))
                    .map(|r| (r, f64::NAN)),
            };
            match r {
                Ok((v, cpu)) => {
                    eprintln!("  rep {} {:<48} {:>10.0} {}", rep + 1, extra.id, v, extra.unit);
                    extra.values.push(v);
                    if cpu.is_finite() {
                        extra.cpu_ms.push(cpu);
                    }
                }
                Err(e) => {
                    eprintln!("  rep {} {:<48} FAILED: {e:#}", rep + 1, extra.id);
                    extra.error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        for (spec, result) in row_specs.iter().zip(&mut row_results) {
            let t = Instant::now();
            match (spec.run)(&rt, &profile) {
                Ok(m) => {
                    let secs = t.elapsed().as_secs_f64();
                    eprintln!("  rep {} {:<48} {} ({secs:.1} s)", rep + 1, spec.id, m.brief());
                    result.samples.push(m);
                }
                Err(e) => {
                    eprintln!("  rep {} {:<48} FAILED: {e:#}", rep + 1, spec.id);
                    result.error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    }
    let calib_end = calibrate(&rt, &profile, "end")?;

    let mut machine = sys::Machine::detect();
    let go_cells = cells.iter().any(|c| c.spec.is_some_and(|s| s.pairing.go().is_some()));
    let go_rows = row_results.iter().any(|r| r.id.contains("-gg") || r.id.contains(".go-"));
    if go_status.is_ok() && (go_cells || go_rows) {
        machine.go_version = sys::go_version();
        machine.go_peer_cometbft = go::cometbft_version();
    }
    let command = std::iter::once("cargo run --release -p p2p-bench --".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let run = report::Run::new(
        profile,
        command,
        machine,
        (load_start, sys::load_average()),
        started.elapsed().as_secs_f64(),
        &calib_start,
        &calib_end,
        cells,
        extras,
        row_results,
        go_status.err().map(|e| format!("{e:#}")),
    );
    let text = run.markdown();
    println!("{text}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&run)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if args.write_benchmarks_md {
        let path = p2p_interop_tests::workspace_root().join("BENCHMARKS.md");
        // The WAN section (`--wan --write-benchmarks-md`) is another run's: keep it.
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let wan = old.find("\n## WAN rows").and_then(|i| old.get(i..)).unwrap_or("");
        std::fs::write(&path, format!("{}{wan}", run.benchmarks_md()))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(run.exit_code())
}
