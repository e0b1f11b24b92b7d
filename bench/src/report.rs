//! Medians, ratios against the targets, and the table / JSON / `BENCHMARKS.md` output.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use crate::rows::{Measured, RowResult, SlowSample};
use crate::sys::Machine;
use crate::{
    CellResult, ExtraResult, IdleRss, Pairing, Profile, QosSample, Sample, TestType, calib,
};

/// A ratio below this fraction of its target is a gross regression: the only outcome that
/// fails the run (exit status 1). One constant for every target, never tuned per run.
pub(crate) const GROSS_FRACTION: f64 = 0.5;

/// Calibration drift above this fraction (start vs end medians) flags the run.
pub(crate) const DRIFT_LIMIT: f64 = 0.05;

/// What a target compares.
#[derive(Debug, Clone, Copy)]
enum Metric {
    /// Payload rate of cell `a` over payload rate of cell `b` (cells by pairing, size; cc 1,
    /// no delay).
    CellOverCell(Pairing, usize, Pairing, usize),
    /// As `CellOverCell`, both cells at this sender concurrency.
    CellOverCellCc(Pairing, Pairing, usize, usize),
    /// Payload rate of a cell (MB/s) over a calibration row (by id, MB/s).
    CellOverCalib(Pairing, usize, &'static str),
    /// The median of an extra row, absolute.
    Extra(&'static str),
    /// A QoS row (by id): `(2 × idle p99 + slack) / loaded p99` (≥ 1: the loaded p99 is within
    /// twice the idle p99 plus the slack), the slack being 1 ms or, if longer, the time one QUIC
    /// stream window (the most bulk data in flight ahead of a probe) takes to drain at the
    /// row's measured bulk rate ([`qos_slack_ms`]).
    QosBound(&'static str),
    /// A slow-receiver row (by id): with-slow / solo rate of the fast peer.
    SlowRatio(&'static str),
    /// Idle KiB per connection of row `a` (Go) over row `b` (Rust): ≥ 1 when Rust's is at
    /// most Go's.
    IdleOver(&'static str, &'static str),
}

/// The targets of issue 6, all in one place: `(id, description, metric, target)`.
const TARGETS: [(&str, &str, Metric, f64); 19] = [
    (
        "mconn_rr_vs_gg_64k",
        "MConn Rust->Rust / Go->Go, 64 KiB",
        Metric::CellOverCell(Pairing::MConnRustRust, 64 << 10, Pairing::MConnGoGo, 64 << 10),
        3.0,
    ),
    (
        "mconn_rr_vs_gg_1k",
        "MConn Rust->Rust / Go->Go, 1 KiB",
        Metric::CellOverCell(Pairing::MConnRustRust, 1 << 10, Pairing::MConnGoGo, 1 << 10),
        2.0,
    ),
    (
        "mconn_rr_vs_aead_64k",
        "MConn Rust->Rust 64 KiB / AEAD seal 1028 B",
        Metric::CellOverCalib(Pairing::MConnRustRust, 64 << 10, "aead_seal_1028"),
        0.7,
    ),
    (
        "mconn_rg_vs_gg_64k",
        "MConn Rust->Go / Go->Go, 64 KiB",
        Metric::CellOverCell(Pairing::MConnRustGo, 64 << 10, Pairing::MConnGoGo, 64 << 10),
        1.0,
    ),
    (
        "mconn_gr_vs_gg_64k",
        "MConn Go->Rust / Go->Go, 64 KiB",
        Metric::CellOverCell(Pairing::MConnGoRust, 64 << 10, Pairing::MConnGoGo, 64 << 10),
        1.0,
    ),
    (
        "mconn_rg_vs_gg_1k",
        "MConn Rust->Go / Go->Go, 1 KiB",
        Metric::CellOverCell(Pairing::MConnRustGo, 1 << 10, Pairing::MConnGoGo, 1 << 10),
        1.0,
    ),
    (
        "mconn_gr_vs_gg_1k",
        "MConn Go->Rust / Go->Go, 1 KiB",
        Metric::CellOverCell(Pairing::MConnGoRust, 1 << 10, Pairing::MConnGoGo, 1 << 10),
        1.0,
    ),
    (
        "quic_vs_quinn_64k",
        "QUIC native 64 KiB / raw quinn",
        Metric::CellOverCalib(Pairing::QuicRustRust, 64 << 10, "quinn"),
        0.7,
    ),
    (
        "quic_vs_mconn_gg_64k",
        "QUIC native / MConn Go->Go, 64 KiB",
        Metric::CellOverCell(Pairing::QuicRustRust, 64 << 10, Pairing::MConnGoGo, 64 << 10),
        2.0,
    ),
    (
        "lp2p_rr_vs_gg_1k",
        "lp2p Rust->Rust / Go->Go (golp2p), 1 KiB",
        Metric::CellOverCell(Pairing::Lp2pRustRust, 1 << 10, Pairing::Lp2pGoGo, 1 << 10),
        3.0,
    ),
    (
        "lp2p_rr_vs_gg_1k_cc8",
        "lp2p Rust->Rust / Go->Go (golp2p), 1 KiB, 8 senders",
        Metric::CellOverCellCc(Pairing::Lp2pRustRust, Pairing::Lp2pGoGo, 1 << 10, 8),
        3.0,
    ),
    (
        "router_memory_200b",
        "router + memory, 200 B, msg/s",
        Metric::Extra("router-memory.msg-200b"),
        500_000.0,
    ),
    (
        "handshakes_mconn_p16",
        "MConn handshakes/s, 16 in parallel",
        Metric::Extra("handshakes.mconn.p16"),
        1000.0,
    ),
    (
        "handshakes_quic_p16",
        "QUIC handshakes/s, 16 in parallel",
        Metric::Extra("handshakes.quic.p16"),
        1000.0,
    ),
    (
        "qos_quic_loaded_p99",
        "QUIC probe p99 under bulk <= 2x idle p99 + max(1 ms, window drain): (2 idle p99 + slack) / loaded p99",
        Metric::QosBound("qos.quic-rr"),
        1.0,
    ),
    (
        "slow_receiver_mconn",
        "MConn fast-peer rate beside a slow peer / solo (DropNewest)",
        Metric::SlowRatio("slow.mconn.drop"),
        0.9,
    ),
    (
        "slow_receiver_quic",
        "QUIC fast-peer rate beside a slow peer / solo (DropNewest)",
        Metric::SlowRatio("slow.quic.drop"),
        0.9,
    ),
    (
        "idle_kib_mconn_vs_go",
        "MConn idle KiB/conn, Go / Rust, 1000 connections",
        Metric::IdleOver("idle-rss.go-mconn.1000", "idle-rss.mconn.1000"),
        1.0,
    ),
    (
        "idle_kib_quic_vs_go",
        "QUIC idle KiB/conn, Go MConn / Rust QUIC, 1000 connections",
        Metric::IdleOver("idle-rss.go-mconn.1000", "idle-rss.quic.1000"),
        1.0,
    ),
];

/// The latency slack of the QUIC QoS target: 1 ms, or the time the QUIC stream receive window
/// (`QuicConfig::default`, 4 MiB) takes to drain at `bulk_mb_s`, if longer. Bulk data in flight
/// on a flow-controlled stream (at most one window) waits in the receiver's socket buffer ahead
/// of a later probe whatever its priority, so on a machine that moves bulk data more slowly the
/// same window costs the probe proportionally more; 1 ms alone held only on a fast day (the
/// window drained in 0.9 ms at 1.15 GB/s).
pub(crate) fn qos_slack_ms(bulk_mb_s: f64) -> f64 {
    let window = f64::from(p2p_transport_quic::QuicConfig::default().stream_receive_window);
    let drain_ms = if bulk_mb_s > 0.0 { window / (bulk_mb_s * 1e6) * 1e3 } else { 0.0 };
    drain_ms.max(1.0)
}

/// Outcome of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Status {
    /// At or above the target.
    Pass,
    /// Below the target but at or above [`GROSS_FRACTION`] of it.
    Fail,
    /// Below [`GROSS_FRACTION`] of the target.
    Gross,
    /// A cell it needs did not run (filtered out, Go missing) or failed.
    Missing,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL(target)",
            Self::Gross => "GROSS",
            Self::Missing => "n/a",
        }
    }
}

/// One target's outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TargetResult {
    id: &'static str,
    what: &'static str,
    value: Option<f64>,
    target: f64,
    gross_below: f64,
    status: Status,
}

/// The CPU bound of an encrypted stream (seal, TCP, open) on this machine's cores.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct CpuBound {
    /// The bound, MB/s.
    bound_mb_s: f64,
    /// The bound over the AEAD seal 1028 B ceiling (what `mconn_rr_vs_aead_64k` compares).
    bound_over_seal: f64,
    /// The MConn Rust->Rust 64 KiB cell over the bound.
    cell_over_bound: Option<f64>,
}

/// One calibration row: medians of the start and end passes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CalibRow {
    id: &'static str,
    what: &'static str,
    unit: &'static str,
    start: f64,
    end: f64,
    /// |end − start| / start.
    drift: f64,
    drifted: bool,
    start_samples: Vec<f64>,
    end_samples: Vec<f64>,
}

impl CalibRow {
    /// The ceiling used for ratios: the mean of the start and end medians.
    fn ceiling(&self) -> f64 {
        (self.start + self.end) / 2.0
    }
}

/// The median of each field of a cell's samples.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Medians {
    /// The cell's id.
    id: String,
    rate_mb_s: f64,
    msgs_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    cpu_flood_s_gib: Option<f64>,
    cpu_sink_s_gib: Option<f64>,
    cpu_total_s_gib: f64,
    rss_flood_mib: Option<f64>,
    rss_sink_mib: Option<f64>,
    /// Ratio to the transport's ceiling (see `ceiling_name`).
    x_ceiling: Option<f64>,
    ceiling_name: &'static str,
}

/// A whole run, as written to JSON.
#[derive(Debug, Serialize)]
pub(crate) struct Run {
    profile: Profile,
    command: String,
    machine: Machine,
    load_average_start_end: (Option<f64>, Option<f64>),
    seconds: f64,
    calibration: Vec<CalibRow>,
    calibration_drifted: bool,
    cells: Vec<CellResult>,
    medians: Vec<Option<Medians>>,
    extras: Vec<ExtraResult>,
    /// QoS, slow-receiver and idle-connection rows.
    rows: Vec<RowResult>,
    /// The median of each field of each row's samples.
    row_medians: Vec<Option<Measured>>,
    targets: Vec<TargetResult>,
    go_skipped: Option<String>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn median_opt(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    v.collect::<Option<Vec<f64>>>().and_then(median)
}

/// The median of each field of a row's samples (all of one kind), or `None` without samples.
fn median_measured(samples: &[Measured]) -> Option<Measured> {
    let first = samples.first()?;
    macro_rules! med {
        ($variant:ident, $field:ident) => {
            median(
                samples
                    .iter()
                    .filter_map(|m| match m {
                        Measured::$variant(x) => Some(x.$field as f64),
                        _ => None,
                    })
                    .collect(),
            )?
        };
    }
    Some(match first {
        Measured::Qos(q) => Measured::Qos(QosSample {
            idle_p50_ms: med!(Qos, idle_p50_ms),
            idle_p99_ms: med!(Qos, idle_p99_ms),
            loaded_p50_ms: med!(Qos, loaded_p50_ms),
            loaded_p99_ms: med!(Qos, loaded_p99_ms),
            // The largest over the repetitions (a maximum of maxima).
            loaded_max_ms: samples
                .iter()
                .filter_map(|m| match m {
                    Measured::Qos(x) => x.loaded_max_ms,
                    _ => None,
                })
                .reduce(f64::max),
            bulk_mb_s: med!(Qos, bulk_mb_s),
            probes: q.probes,
        }),
        Measured::Slow(_) => Measured::Slow(SlowSample {
            solo_mb_s: med!(Slow, solo_mb_s),
            with_slow_mb_s: med!(Slow, with_slow_mb_s),
            ratio: med!(Slow, ratio),
            slow_received: med!(Slow, slow_received) as u64,
            dropped: med!(Slow, dropped) as u64,
        }),
        Measured::Idle(i) => Measured::Idle(IdleRss {
            conns: i.conns,
            baseline_mib: med!(Idle, baseline_mib),
            total_mib: med!(Idle, total_mib),
            kib_per_conn: med!(Idle, kib_per_conn),
        }),
    })
}

fn column(samples: &[Vec<f64>], i: usize) -> Vec<f64> {
    samples.iter().filter_map(|s| s.get(i).copied()).collect()
}

impl Run {
    /// Computes medians, drift and target outcomes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        profile: Profile,
        command: String,
        machine: Machine,
        load: (Option<f64>, Option<f64>),
        seconds: f64,
        calib_start: &[Vec<f64>],
        calib_end: &[Vec<f64>],
        cells: Vec<CellResult>,
        extras: Vec<ExtraResult>,
        rows: Vec<RowResult>,
        go_skipped: Option<String>,
    ) -> Self {
        let calibration: Vec<CalibRow> = calib::ROWS
            .iter()
            .enumerate()
            .map(|(i, &(id, what, unit))| {
                let (ss, es) = (column(calib_start, i), column(calib_end, i));
                let start = median(ss.clone()).unwrap_or(f64::NAN);
                let end = median(es.clone()).unwrap_or(f64::NAN);
                let drift = ((end - start) / start).abs();
                CalibRow {
                    id,
                    what,
                    unit,
                    start,
                    end,
                    drift,
                    drifted: drift.is_nan() || drift > DRIFT_LIMIT,
                    start_samples: ss,
                    end_samples: es,
                }
            })
            .collect();
        let ceiling = |id: &str| calibration.iter().find(|c| c.id == id).map(CalibRow::ceiling);
        let medians: Vec<Option<Medians>> = cells
            .iter()
            .map(|c| {
                let s: &[Sample] = &c.samples;
                let rate = median(s.iter().map(|x| x.rate).collect())?;
                let msgs = median(s.iter().map(|x| x.msgs).collect())?;
                let (ceiling_name, x_ceiling) = match c.spec.map(|s| s.pairing) {
                    Some(Pairing::QuicRustRust) => {
                        ("raw quinn", ceiling("quinn").map(|q| rate / 1e6 / q))
                    }
                    Some(Pairing::MemoryRustRust) => {
                        ("mpsc msg/s", ceiling("mpsc_msgs").map(|q| msgs / q))
                    }
                    _ => ("AEAD seal 1028 B", ceiling("aead_seal_1028").map(|q| rate / 1e6 / q)),
                };
                Some(Medians {
                    id: c.id.clone(),
                    rate_mb_s: rate / 1e6,
                    msgs_s: msgs,
                    p50_ms: median_opt(s.iter().map(|x| x.p50_ms)),
                    p99_ms: median_opt(s.iter().map(|x| x.p99_ms)),
                    cpu_flood_s_gib: median_opt(s.iter().map(|x| x.cpu_flood)),
                    cpu_sink_s_gib: median_opt(s.iter().map(|x| x.cpu_sink)),
                    cpu_total_s_gib: median(s.iter().map(|x| x.cpu_total).collect())?,
                    rss_flood_mib: median_opt(s.iter().map(|x| x.rss_flood_mib)),
                    rss_sink_mib: median_opt(s.iter().map(|x| x.rss_sink_mib)),
                    x_ceiling,
                    ceiling_name,
                })
            })
            .collect();
        let cell_rate_cc = |p: Pairing, size: usize, cc: usize| -> Option<f64> {
            cells.iter().zip(&medians).find_map(|(c, m)| {
                let s = c.spec?;
                (s.test == TestType::Drain
                    && s.pairing == p
                    && s.size == size
                    && s.cc == cc
                    && s.delay_ms == 0)
                    .then_some(m.as_ref()?.rate_mb_s)
            })
        };
        let cell_rate = |p: Pairing, size: usize| cell_rate_cc(p, size, 1);
        let extra = |id: &str| {
            extras
                .iter()
                .find(|e| e.id == id && e.error.is_none())
                .and_then(|e| median(e.values.clone()))
        };
        let row_medians: Vec<Option<Measured>> = rows
            .iter()
            .map(|r| if r.error.is_some() { None } else { median_measured(&r.samples) })
            .collect();
        let row = |id: &str| {
            rows.iter().zip(&row_medians).find(|(r, _)| r.id == id).and_then(|(_, m)| *m)
        };
        let targets = TARGETS
            .iter()
            .map(|&(id, what, metric, target)| {
                let value = match metric {
                    Metric::CellOverCell(a, sa, b, sb) => {
                        cell_rate(a, sa).zip(cell_rate(b, sb)).map(|(x, y)| x / y)
                    }
                    Metric::CellOverCellCc(a, b, size, cc) => {
                        cell_rate_cc(a, size, cc).zip(cell_rate_cc(b, size, cc)).map(|(x, y)| x / y)
                    }
                    Metric::CellOverCalib(a, sa, c) => {
                        cell_rate(a, sa).zip(ceiling(c)).map(|(x, y)| x / y)
                    }
                    Metric::Extra(e) => extra(e),
                    Metric::QosBound(id) => match row(id) {
                        Some(Measured::Qos(q)) => Some(
                            (2.0 * q.idle_p99_ms + qos_slack_ms(q.bulk_mb_s)) / q.loaded_p99_ms,
                        ),
                        _ => None,
                    },
                    Metric::SlowRatio(id) => match row(id) {
                        Some(Measured::Slow(s)) => Some(s.ratio),
                        _ => None,
                    },
                    Metric::IdleOver(go, rust) => match (row(go), row(rust)) {
                        (Some(Measured::Idle(g)), Some(Measured::Idle(r))) => {
                            Some(g.kib_per_conn / r.kib_per_conn)
                        }
                        _ => None,
                    },
                }
                .filter(|v| v.is_finite());
                let status = match value {
                    None => Status::Missing,
                    Some(v) if v >= target => Status::Pass,
                    Some(v) if v >= target * GROSS_FRACTION => Status::Fail,
                    Some(_) => Status::Gross,
                };
                TargetResult {
                    id,
                    what,
                    value,
                    target,
                    gross_below: target * GROSS_FRACTION,
                    status,
                }
            })
            .collect();
        let calibration_drifted = calibration.iter().any(|c| c.drifted);
        Self {
            profile,
            command,
            machine,
            load_average_start_end: load,
            seconds,
            calibration,
            calibration_drifted,
            cells,
            medians,
            extras,
            rows,
            row_medians,
            targets,
            go_skipped,
        }
    }

    /// 1 if any target is GROSS, 2 if a cell or row failed, else 0.
    pub(crate) fn exit_code(&self) -> ExitCode {
        if self.targets.iter().any(|t| t.status == Status::Gross) {
            ExitCode::from(1)
        } else if self.cells.iter().any(|c| c.error.is_some())
            || self.extras.iter().any(|e| e.error.is_some())
            || self.rows.iter().any(|r| r.error.is_some())
        {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        }
    }

    /// The CPU bound of an encrypted stream from the calibration: sealing, the TCP stack (both
    /// ends' system calls) and opening each cost CPU per byte, and with `nproc` cores the
    /// stream cannot go faster than `nproc` over their sum, nor faster than one core seals or
    /// opens (one connection seals on one core and opens on one).
    fn mconn_cpu_bound(&self) -> Option<CpuBound> {
        let ceiling = |id: &str| {
            self.calibration.iter().find(|c| c.id == id).map(CalibRow::ceiling).filter(|v| *v > 0.0)
        };
        let (seal, open, tcp_cpu) =
            (ceiling("aead_seal_1028")?, ceiling("aead_open_1028")?, ceiling("tcp_cpu")?);
        let gib_mb = f64::from(1u32 << 30) / 1e6;
        // Seconds of CPU per MB for each stage.
        let per_mb = 1.0 / seal + 1.0 / open + tcp_cpu / gib_mb;
        let bound = (self.machine.nproc.max(1) as f64 / per_mb).min(seal).min(open);
        let cell = self.cells.iter().zip(&self.medians).find_map(|(c, m)| {
            let s = c.spec?;
            (s.test == TestType::Drain
                && s.pairing == Pairing::MConnRustRust
                && s.size == 64 << 10
                && s.cc == 1
                && s.delay_ms == 0)
                .then_some(m.as_ref()?.rate_mb_s)
        });
        Some(CpuBound {
            bound_mb_s: bound,
            bound_over_seal: bound / seal,
            cell_over_bound: cell.map(|r| r / bound),
        })
    }

    /// The tables, as Markdown (also what stdout shows).
    pub(crate) fn markdown(&self) -> String {
        let mut o = String::new();
        let f = |v: Option<f64>, prec: usize| {
            v.map_or_else(|| "-".to_owned(), |x| format!("{x:.prec$}"))
        };
        let _ = writeln!(
            o,
            "### Calibration (medians of {} passes at the start and at the end)\n",
            self.profile.calib_reps
        );
        let _ = writeln!(o, "| calibration | unit | start | end | drift |");
        let _ = writeln!(o, "|---|---|---:|---:|---:|");
        for c in &self.calibration {
            let _ = writeln!(
                o,
                "| {} | {} | {:.p$} | {:.p$} | {:.1}%{} |",
                c.what,
                c.unit,
                c.start,
                c.end,
                c.drift * 100.0,
                if c.drifted { " **DRIFT**" } else { "" },
                p = if c.start.abs() < 10.0 { 2 } else { 0 },
            );
        }
        if let Some(b) = self.mconn_cpu_bound() {
            let _ = writeln!(
                o,
                "\nCPU bound of an encrypted stream on this machine ({} cores): min(seal, open, cores / (1/seal + 1/open + TCP CPU)) = {:.0} MB/s = {:.2}x AEAD seal 1028 B; MConn Rust->Rust 64 KiB reaches {}.",
                self.machine.nproc,
                b.bound_mb_s,
                b.bound_over_seal,
                b.cell_over_bound
                    .map_or_else(|| "- (not run)".to_owned(), |r| format!("{r:.2} of it")),
            );
        }
        if self.calibration_drifted {
            let _ = writeln!(
                o,
                "\n**Calibration drifted by more than {:.0}% between start and end: treat this run's numbers with care.**",
                DRIFT_LIMIT * 100.0
            );
        }
        let _ = writeln!(
            o,
            "\n### Matrix ({} profile, medians of {} interleaved repetitions)\n",
            self.profile.name, self.profile.reps
        );
        let _ = writeln!(
            o,
            "| cell | msgs | MB/s | msg/s | p50 ms | p99 ms | CPU s/GiB flood / sink / total | peak RSS MiB flood / sink | x ceiling |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for (c, m) in self.cells.iter().zip(&self.medians) {
            let Some(m) = m else {
                let _ = writeln!(
                    o,
                    "| {} | {} | FAILED: {} | | | | | | |",
                    c.id,
                    c.messages,
                    c.error.as_deref().unwrap_or("no sample").replace('|', "/")
                );
                continue;
            };
            let same_process = c.spec.is_some_and(|s| s.pairing.kind().is_some());
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} | {:.0} | {} | {} | {} / {} / {:.2} | {} | {} |",
                c.id,
                if c.messages == 0 { "-".to_owned() } else { c.messages.to_string() },
                m.rate_mb_s,
                m.msgs_s,
                f(m.p50_ms, 2),
                f(m.p99_ms, 2),
                f(m.cpu_flood_s_gib, 2),
                f(m.cpu_sink_s_gib, 2),
                m.cpu_total_s_gib,
                if same_process {
                    format!("{} (one process)", f(m.rss_flood_mib, 0))
                } else {
                    format!("{} / {}", f(m.rss_flood_mib, 0), f(m.rss_sink_mib, 0))
                },
                m.x_ceiling
                    .map_or_else(|| "-".to_owned(), |x| format!("{x:.3}x {}", m.ceiling_name)),
            );
        }
        if let Some(why) = &self.go_skipped {
            let _ = writeln!(o, "\nGo pairings skipped: {why}");
        }
        if !self.extras.is_empty() {
            let _ = writeln!(o, "\n### Other rows (medians)\n");
            let _ = writeln!(o, "| row | value | unit | CPU ms per handshake | x ceiling |");
            let _ = writeln!(o, "|---|---:|---|---:|---|");
            let mpsc = self.calibration.iter().find(|c| c.id == "mpsc_msgs").map(CalibRow::ceiling);
            for e in &self.extras {
                let v = median(e.values.clone());
                let x = if e.id.starts_with("router") {
                    v.zip(mpsc).map_or_else(
                        || "-".to_owned(),
                        |(v, m)| format!("{:.2}x mpsc msg/s", v / m),
                    )
                } else {
                    "-".to_owned()
                };
                let value = match (&e.error, v) {
                    (Some(err), _) => format!("FAILED: {}", err.replace('|', "/")),
                    (None, v) => f(v, 0),
                };
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} |",
                    e.what,
                    value,
                    e.unit,
                    f(median(e.cpu_ms.clone()), 2),
                    x
                );
            }
        }
        self.rows_markdown(&mut o);
        let _ = writeln!(
            o,
            "\n### Targets (GROSS = below {:.0}% of the target: fails the run)\n",
            GROSS_FRACTION * 100.0
        );
        let _ = writeln!(o, "| ratio | value | target | status |");
        let _ = writeln!(o, "|---|---:|---:|---|");
        for t in &self.targets {
            let prec = if t.target >= 100.0 { 0 } else { 2 };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                t.what,
                f(t.value, prec),
                t.target,
                t.status.label()
            );
        }
        let _ = writeln!(o, "\nRun took {:.0} s.", self.seconds);
        o
    }

    /// The QoS, slow-receiver and idle-connection tables (medians), for the rows that ran.
    fn rows_markdown(&self, o: &mut String) {
        let all: Vec<(&RowResult, &Option<Measured>)> =
            self.rows.iter().zip(&self.row_medians).collect();
        let failed = |r: &RowResult| {
            format!("FAILED: {}", r.error.as_deref().unwrap_or("no sample").replace('|', "/"))
        };
        let qos: Vec<_> = all.iter().filter(|(r, _)| r.id.starts_with("qos.")).collect();
        if !qos.is_empty() {
            let _ = writeln!(
                o,
                "\n### QoS through the router: 200 B probes every 5 ms, idle then beside 64 KiB bulk (medians)\n"
            );
            let _ = writeln!(
                o,
                "| row | probes/phase | idle p50 ms | idle p99 ms | loaded p50 ms | loaded p99 ms | bulk MB/s |"
            );
            let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
            for (r, m) in qos {
                match m {
                    Some(Measured::Qos(q)) => {
                        let _ = writeln!(
                            o,
                            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} |",
                            r.what,
                            q.probes,
                            q.idle_p50_ms,
                            q.idle_p99_ms,
                            q.loaded_p50_ms,
                            q.loaded_p99_ms,
                            q.bulk_mb_s
                        );
                    }
                    _ => {
                        let _ = writeln!(o, "| {} | {} | | | | | |", r.what, failed(r));
                    }
                }
            }
        }
        let slow: Vec<_> = all.iter().filter(|(r, _)| r.id.starts_with("slow.")).collect();
        if !slow.is_empty() {
            let _ = writeln!(
                o,
                "\n### Slow receiver: fast peer's rate, solo and beside a slow peer (medians)\n"
            );
            let _ = writeln!(
                o,
                "| row | solo MB/s | with slow MB/s | ratio | slow peer got (msgs) | dropped (msgs) |"
            );
            let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
            for (r, m) in slow {
                match m {
                    Some(Measured::Slow(s)) => {
                        let _ = writeln!(
                            o,
                            "| {} | {:.0} | {:.1} | {:.3} | {} | {} |",
                            r.what,
                            s.solo_mb_s,
                            s.with_slow_mb_s,
                            s.ratio,
                            s.slow_received,
                            s.dropped
                        );
                    }
                    _ => {
                        let _ = writeln!(o, "| {} | {} | | | | |", r.what, failed(r));
                    }
                }
            }
        }
        let idle: Vec<_> = all.iter().filter(|(r, _)| r.id.starts_with("idle-rss.")).collect();
        if !idle.is_empty() {
            let _ = writeln!(
                o,
                "\n### Idle connections: VmRSS of the process holding them (medians)\n"
            );
            let _ = writeln!(o, "| row | conns | baseline MiB | total MiB | KiB/conn |");
            let _ = writeln!(o, "|---|---:|---:|---:|---:|");
            for (r, m) in idle {
                match m {
                    Some(Measured::Idle(i)) => {
                        let _ = writeln!(
                            o,
                            "| {} | {} | {:.1} | {:.1} | {:.1} |",
                            r.what, i.conns, i.baseline_mib, i.total_mib, i.kib_per_conn
                        );
                    }
                    _ => {
                        let _ = writeln!(o, "| {} | {} | | | |", r.what, failed(r));
                    }
                }
            }
        }
    }

    /// The whole `BENCHMARKS.md`: provenance, machine, method notes and [`Run::markdown`].
    pub(crate) fn benchmarks_md(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(o, "# Benchmarks\n");
        let _ = writeln!(
            o,
            "Generated by `p2p-bench` (crate `bench/`); do not edit by hand. Regenerate with\n`cargo run --release -p p2p-bench -- --full --write-benchmarks-md` on an idle machine.\n"
        );
        let _ = writeln!(o, "- Command: `{}`", self.command);
        let _ = writeln!(o, "- Date: {}", date());
        let _ = writeln!(
            o,
            "- CPU: {} ({}; features: {})",
            m.cpu_model,
            plural(m.nproc, "CPU"),
            m.cpu_features.join(", ")
        );
        let _ = writeln!(
            o,
            "- Memory: {:.1} GiB; kernel {}; host TCP congestion control {}",
            m.mem_gib, m.kernel, m.tcp_congestion
        );
        let (ls, le) = self.load_average_start_end;
        let _ = writeln!(
            o,
            "- Load average (1 min) at start / end: {} / {}",
            ls.map_or("?".to_owned(), |v| format!("{v:.2}")),
            le.map_or("?".to_owned(), |v| format!("{v:.2}"))
        );
        match (&m.go_version, &m.go_peer_cometbft) {
            (Some(v), c) => {
                let _ = writeln!(
                    o,
                    "- Go: {v}; Go peer built on CometBFT {}",
                    c.as_deref().unwrap_or("?")
                );
            }
            (None, _) => {
                let _ = writeln!(o, "- Go rows: not run");
            }
        }
        let _ = writeln!(o, "\n## Method\n");
        let _ = writeln!(
            o,
            "- Rust <-> Rust cells are **connection level** (each transport's `Connection`: handshake, `send`, `receive`; no router), both ends in one process (so CPU is the total of both ends and RSS is the one process). Payload: 8-byte sequence number, 8-byte send time (us), filler; latency = receive time - send time (same clock).\n\
             - Go pairings use `interop-tests/gopeer` (CometBFT's `p2p.Switch`, `--unlimited`, 1024-byte packets, 100 ms flush throttle), one process per end (Go->Go broadcast: 8 processes), with mempool-wrapped messages of exactly the cell size on channel 0x77 carrying an 8-byte sequence number and an 8-byte send time (Unix ns, one machine); every sink, Go or Rust, measures one-way latency = receive time - send time. The Go flood sends from `cc` goroutines (broadcast: every message to all 7 peers); the Go sink sleeps the receive delay inside `Receive`; send-timeframe ends in-band with an `end` transaction and the Go sink counts what arrives within the timeframe of its first message. Broadcast latency with Go ends is the median of the receivers' p50 and the largest receiver p99. Quick profile: Go cells are send-drain without delay only; full profile: send-drain without delay at every size, the other test types and the delay at 1 KiB and 64 KiB (send-timeframe without delay). A Go flood's last messages wait for CometBFT's 100 ms flush timer, so Go-flood cells can read up to ~10% slow at 256 MiB. CPU per process from getrusage (Go) and CLOCK_PROCESS_CPUTIME_ID (Rust).\n\
             - send-drain: `msgs` messages from `cc` concurrent senders; MB/s = payload bytes / (first send -> last receive). send-timeframe: senders send for {:.0} s, messages arriving later are in flight and not counted; MB/s = bytes received in time / timeframe. broadcast-drain: one sender, {} receivers (one connection each), every message to every receiver (encoded once), `msgs` per receiver; MB/s and msg/s are the sums over receivers. Receive delay: the receiver sleeps after every message (inline, like comet-p2p's `Receive`); delay cells send a fixed {} messages.\n\
             - Peak RSS is `VmHWM` from `/proc/<pid>/status`. It is process-wide and monotonic; this process resets it before each cell (`echo 5 > /proc/self/clear_refs`), and Go processes are sampled every 10 ms.\n\
             - Cells run interleaved (every pairing once per repetition, A B A B); tables show medians. Calibration runs at the start and at the end; a drift above {:.0}% flags the run.\n\
             - Ceilings: MConn rows vs ring ChaCha20-Poly1305 seal of 1028-byte frames (one core); QUIC vs raw quinn (same TLS/ALPN/windows); memory vs tokio mpsc msg/s.\n\
             - QoS rows go through two `Router`s (both in this process): a priority-10 probe channel (200 B on the wire, one every 5 ms, send time in the payload; latency = send call -> receiving reactor's `recv`) and a priority-1 bulk channel; {} probes idle, then {} while one task floods 64 KiB bulk messages to the same peer (bulk MB/s over that phase). Target: (2 x idle p99 + slack) / loaded p99 >= 1 for QUIC, the slack being 1 ms or the time one default stream window (4 MiB) takes to drain at the row's bulk rate, if longer; MConn and lp2p are reported only.\n\
             - Slow-receiver rows: router S broadcasts 64 KiB messages from one reactor task to F (drains at once) and L (its reactor sleeps 20 ms per message); F's rate is measured over {:.1} s with F alone, then over {:.1} s once L's 64-message queue at S is full; ratio = with slow / solo. `drop` = channel policy `DropNewest` (the default: `send` never waits), `wait` = `Wait` (`send` waits for room at every recipient, so one task's stream is paced by the slowest peer).\n\
             - Idle-RSS rows: a child process (`p2p-bench --idle-server <transport>`) listens and handshakes inbound connections via the transport's `Connection` API and holds them; the bench dials them (16 in parallel; QUIC through one client endpoint) and keeps them idle. VmRSS of the child before the first connection and 0.5 s after it reported all up. Memory transport: both ends of every pair in the child (so KiB/conn covers both ends).",
            self.profile.timeframe.as_secs_f64(),
            self.profile.broadcast_receivers,
            self.profile.delay_count,
            DRIFT_LIMIT * 100.0,
            self.profile.qos_probes,
            self.profile.qos_probes,
            self.profile.slow_window.as_secs_f64(),
            self.profile.slow_window.as_secs_f64(),
        );
        let _ = writeln!(o, "\n## Results\n");
        o.push_str(&self.markdown());
        o
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// `date -u` (RFC 3339), or seconds since the epoch if `date` is missing.
pub(crate) fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("{secs} s since the epoch")
        })
}
