//! The WAN rows (`--wan`, issue 13): the same measurements as the loopback QoS rows, but with
//! each end in its own network namespace of a [`p2p_wanlab::Lab`], joined by an emulated link
//! of a named profile (`lan`, `continent`, `intercontinental`, `lossy`; see
//! [`p2p_wanlab::profile`]). Real kernel TCP (CUBIC, the lab's default) and UDP run on both
//! ends.
//!
//! Per profile, in one lab:
//! * `qos.<pairing>`: a 200 B probe every [`PROBE_INTERVAL`] on a high-priority channel, idle
//!   (the floor) and then while a low-priority channel to the same peer is flooded with 64 KiB
//!   messages (after [`settle`]); probe one-way p50/p99/max and the bulk goodput. Pairings:
//!   `quic-rr`, `mconn-rr` (two Rust routers) and `mconn-gg` (two gopeer processes, Go
//!   CometBFT v0.38's MConnection, rate limits off).
//! * `connect.<transport>`: dial → `PeerStatus::Up` at the dialer, sequentially, a fresh
//!   dialing router each time; p50/p99.
//! * `goodput.<transport>[-4ch]`: one (or four equal-priority) channels flooded with 64 KiB
//!   messages, the payload rate over a fixed window after [`goodput_settle`]. The
//!   `goodput.quic-cubic` / `goodput.quic-bbr` rows run QUIC with quinn's CUBIC and quinn's
//!   unmodified BBR instead of the default capped BBR (the comparison behind the default;
//!   full profile, or when `--only` names them).
//!
//! Before the profiles, the emulator's own cost: the RTT it adds with 0 ms configured and the
//! packets/s it moves (a UDP flood through an unlimited link).
//!
//! When `lan` runs, the same rows run first on the host's loopback, without a lab (profile name
//! `loopback`, `lan`'s settle times; the host's own TCP congestion control), so the `lan`
//! targets can compare each QUIC-vs-MConn ratio with its loopback value in the same run.
//!
//! Targets (issue 13) are ratios within the run; a miss is reported, not fatal (the run fails
//! only if a row breaks). The lossy-profile property itself is a test
//! (`bench/tests/wan_lossy.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use p2p::router::ChannelDescriptor;
use p2p::{ChannelId, NodeId};
use p2p_transport_quic::{Congestion, QuicConfig};
use p2p_wanlab::{Lab, LinkSpec, Netns, Profile};
use serde::Serialize;

use crate::go::{GoPlace, qos_gogo_in};
use crate::rows::{GoodputPlace, GoodputSample, QosPlace, goodput_in, node_on, qos_in, wait_up};
use crate::rr::Kind;
use crate::{QosSample, selected};

/// Time between two probes (the "a 200 B probe every 10 ms").
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Bulk message size.
const BULK: usize = 64 << 10;

/// The loaded phase starts this long after the first bulk bytes arrive: ten RTTs (past slow
/// start), at least 1 s.
fn settle(p: Profile) -> Duration {
    (p.rtt() * 10).max(Duration::from_secs(1))
}

/// The goodput window starts this long after the first bulk bytes arrive: twenty RTTs (past
/// startup and the first bandwidth probes), at least 1 s.
fn goodput_settle(p: Profile) -> Duration {
    (p.rtt() * 20).max(Duration::from_secs(1))
}

/// The QoS/connect/goodput rows of every profile, in order.
const IDS: [&str; 14] = [
    "qos.quic-rr",
    "qos.mconn-rr",
    "qos.mconn-gg",
    "qos.lp2p-rr",
    "connect.quic",
    "connect.mconn",
    "connect.lp2p",
    "goodput.quic",
    "goodput.quic-4ch",
    "goodput.mconn",
    "goodput.mconn-4ch",
    "goodput.lp2p",
    "goodput.quic-cubic",
    "goodput.quic-bbr",
];

/// Rows only the full profile runs (or `--only` names): the lp2p pairing (Rust↔Rust, CometBFT's
/// one stream per message) and quinn's own controllers, for comparison; the quick profile
/// keeps within CI's five minutes.
const COMPARISON: [&str; 5] =
    ["qos.lp2p-rr", "connect.lp2p", "goodput.lp2p", "goodput.quic-cubic", "goodput.quic-bbr"];

/// The name of the rows run on the host's loopback instead of a lab.
const LOOPBACK: &str = "loopback";

/// Where a row's two nodes run.
#[derive(Clone, Copy)]
enum Site<'a> {
    /// Node 0 and node 1 of a lab, behind the emulated link.
    Lab(&'a Lab),
    /// Both on the host's loopback (127.0.0.1), no emulator.
    Loopback,
}

impl Site<'_> {
    /// The profile column of this site's rows.
    fn name(self, profile: Profile) -> &'static str {
        match self {
            Self::Lab(_) => profile.name(),
            Self::Loopback => LOOPBACK,
        }
    }

    /// Node `i`'s address.
    fn ip(self, i: usize) -> IpAddr {
        match self {
            Self::Lab(lab) => IpAddr::V4(lab.node(i).addr()),
            Self::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// A one-worker runtime for node `i` (in its namespace for a lab).
    fn runtime(self, i: usize) -> anyhow::Result<tokio::runtime::Runtime> {
        match self {
            Self::Lab(lab) => Ok(lab.node(i).runtime(1)?),
            Self::Loopback => Ok(tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?),
        }
    }
}

/// What a `--wan` run does.
#[derive(Debug, Clone)]
pub(crate) struct WanArgs {
    /// The short CI profile (fewer probes and dials).
    pub(crate) quick: bool,
    /// Profiles to run, in order.
    pub(crate) profiles: Vec<Profile>,
    /// Row filter (ids contain one of these), as `--only`.
    pub(crate) only: Option<Vec<String>>,
    /// Run the Go ↔ Go rows (gopeer is built).
    pub(crate) go: bool,
    /// Write the report as JSON here.
    pub(crate) json: Option<PathBuf>,
    /// Replace the WAN section of `BENCHMARKS.md` (everything from its `## WAN rows` heading;
    /// the loopback part is kept) with this run's report.
    pub(crate) write_md: bool,
}

/// Connect-time figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectSample {
    /// Dials measured.
    pub(crate) dials: usize,
    /// Median, ms.
    pub(crate) p50_ms: f64,
    /// 99th percentile (nearest rank), ms.
    pub(crate) p99_ms: f64,
    /// Fastest, ms.
    pub(crate) min_ms: f64,
}

/// One row's result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WanRow {
    /// Profile name.
    pub(crate) profile: &'static str,
    /// Row id, e.g. `qos.quic-rr`.
    pub(crate) id: &'static str,
    /// QoS figures (a `qos.` row).
    pub(crate) qos: Option<QosSample>,
    /// Connect figures (a `connect.` row).
    pub(crate) connect: Option<ConnectSample>,
    /// Goodput figures (a `goodput.` row).
    pub(crate) goodput: Option<GoodputSample>,
    /// Why the row failed.
    pub(crate) error: Option<String>,
    /// Wall time of the row, s.
    pub(crate) secs: f64,
}

/// The emulator's own cost.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EmulatorCost {
    /// UDP echo RTT through the emulator with 0 ms configured: p50, µs.
    pub(crate) rtt_p50_us: f64,
    /// The same, p99, µs.
    pub(crate) rtt_p99_us: f64,
    /// Packets per second it delivered under a UDP flood (1228-byte IP packets).
    pub(crate) packets_per_s: f64,
    /// Mean lateness of a packet (written − due) over the flood, µs.
    pub(crate) mean_late_us: f64,
}

/// One target: a ratio and what it must be.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WanTarget {
    /// What is compared.
    pub(crate) what: String,
    /// The ratio measured (NaN: a row is missing).
    pub(crate) value: f64,
    /// The bound.
    pub(crate) bound: f64,
    /// `true`: value must be at most the bound; `false`: at least.
    pub(crate) at_most: bool,
}

impl WanTarget {
    fn verdict(&self) -> &'static str {
        if !self.value.is_finite() {
            "n/a"
        } else if (self.at_most && self.value <= self.bound)
            || (!self.at_most && self.value >= self.bound)
        {
            "PASS"
        } else {
            "FAIL(target)"
        }
    }
}

/// The whole `--wan` report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WanReport {
    /// `quick` or `full`.
    pub(crate) profile_set: &'static str,
    /// Probes per phase of a QoS row.
    pub(crate) probes: usize,
    /// Dials per connect row.
    pub(crate) dials: usize,
    /// Measured window of a goodput row, s.
    pub(crate) goodput_secs: f64,
    /// The emulator's own cost.
    pub(crate) emulator: Option<EmulatorCost>,
    /// Every row.
    pub(crate) rows: Vec<WanRow>,
    /// Targets.
    pub(crate) targets: Vec<WanTarget>,
    /// Wall time, s.
    pub(crate) secs: f64,
}

/// Runs the WAN rows and prints the report; fails if a row broke.
pub(crate) fn run(args: &WanArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (probes, dials) = if args.quick { (200, 10) } else { (1000, 50) };
    let measure = Duration::from_secs(if args.quick { 3 } else { 15 });
    let only = args.only.as_deref();
    eprintln!(
        "p2p-bench --wan: {} profile(s), {probes} probes per phase, {dials} dials",
        args.profiles.len()
    );
    let emulator = if selected(only, "emulator") {
        Some(emulator_cost().context("measuring the emulator")?)
    } else {
        None
    };
    let mut rows = Vec::new();
    let rows_at = |site: Site<'_>, profile: Profile, rows: &mut Vec<WanRow>| {
        for id in IDS {
            let name = site.name(profile);
            let full = format!("{name}.{id}");
            if !selected(only, &full)
                || (id.ends_with("-gg") && !args.go)
                || (COMPARISON.contains(&id) && args.quick && only.is_none())
            {
                continue;
            }
            let t = Instant::now();
            let mut row = WanRow {
                profile: name,
                id,
                qos: None,
                connect: None,
                goodput: None,
                error: None,
                secs: 0.0,
            };
            let result = match id {
                "qos.quic-rr" => {
                    qos_rust(site, profile, Kind::Quic, probes).map(|q| row.qos = Some(q))
                }
                "qos.mconn-rr" => {
                    qos_rust(site, profile, Kind::MConn, probes).map(|q| row.qos = Some(q))
                }
                "qos.mconn-gg" => qos_go(site, profile, probes).map(|q| row.qos = Some(q)),
                "qos.lp2p-rr" => {
                    qos_rust(site, profile, Kind::Lp2p, probes).map(|q| row.qos = Some(q))
                }
                "connect.lp2p" => {
                    connect_rust(site, Kind::Lp2p, dials).map(|c| row.connect = Some(c))
                }
                "connect.quic" => {
                    connect_rust(site, Kind::Quic, dials).map(|c| row.connect = Some(c))
                }
                "connect.mconn" => {
                    connect_rust(site, Kind::MConn, dials).map(|c| row.connect = Some(c))
                }
                goodput => {
                    goodput_row(site, profile, goodput, measure).map(|g| row.goodput = Some(g))
                }
            };
            row.secs = t.elapsed().as_secs_f64();
            match result {
                Ok(()) => eprintln!("  {full:<34} {} ({:.1} s)", brief(&row), row.secs),
                Err(e) => {
                    eprintln!("  {full:<34} FAILED: {e:#}");
                    row.error = Some(format!("{e:#}"));
                }
            }
            rows.push(row);
        }
    };
    for &profile in &args.profiles {
        if profile == Profile::Lan {
            rows_at(Site::Loopback, profile, &mut rows);
        }
        let lab = Lab::start(2, profile.link()).context("starting the lab")?;
        rows_at(Site::Lab(&lab), profile, &mut rows);
        if let Ok(stats) = lab.stats() {
            let e = stats.emulator;
            eprintln!(
                "  {profile}: emulator read {} delivered {} overflow {} late mean {:?} max {:?}",
                e.read,
                e.delivered,
                e.overflow,
                e.mean_late(),
                Duration::from_nanos(e.late_ns_max)
            );
        }
    }
    let targets = targets(&rows);
    let report = WanReport {
        profile_set: if args.quick { "quick" } else { "full" },
        probes,
        dials,
        goodput_secs: measure.as_secs_f64(),
        emulator,
        rows,
        targets,
        secs: started.elapsed().as_secs_f64(),
    };
    println!("{}", markdown(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if args.write_md {
        let path = p2p_interop_tests::workspace_root().join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let keep = old.find("\n## WAN rows").and_then(|i| old.get(..i)).unwrap_or(&old).trim_end();
        let m = crate::sys::Machine::detect();
        let command: Vec<String> = std::env::args().skip(1).collect();
        let text = format!(
            "{keep}\n\n{}\n\n- Command: `cargo run --release -p p2p-bench -- {}` (as root)\n- Date: {}\n- CPU: {} ({} CPUs); kernel {}; host TCP congestion control {} (the `loopback` rows; the lab's namespaces use CUBIC)\n",
            markdown(&report).trim_end(),
            command.join(" "),
            crate::report::date(),
            m.cpu_model,
            m.nproc,
            m.kernel,
            m.tcp_congestion
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let broken = report.rows.iter().filter(|r| r.error.is_some()).count();
    if broken > 0 {
        eprintln!("p2p-bench --wan: {broken} row(s) failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn brief(row: &WanRow) -> String {
    if let Some(q) = &row.qos {
        format!(
            "idle p50/p99 {:.1}/{:.1} ms, loaded p50/p99 {:.1}/{:.1} ms, bulk {:.2} MB/s",
            q.idle_p50_ms, q.idle_p99_ms, q.loaded_p50_ms, q.loaded_p99_ms, q.bulk_mb_s
        )
    } else if let Some(c) = &row.connect {
        format!("connect p50/p99 {:.1}/{:.1} ms", c.p50_ms, c.p99_ms)
    } else if let Some(g) = &row.goodput {
        format!("{:.2} MB/s over {} channel(s), fairness {:.2}", g.mb_s, g.channels, g.fairness)
    } else {
        String::new()
    }
}

/// A QoS row between two Rust routers, node 0 sending, node 1 receiving.
fn qos_rust(
    site: Site<'_>,
    profile: Profile,
    kind: Kind,
    probes: usize,
) -> anyhow::Result<QosSample> {
    let rt_a = site.runtime(0)?;
    let place = QosPlace {
        ip_a: site.ip(0),
        ip_b: site.ip(1),
        rt_b: site.runtime(1)?,
        interval: PROBE_INTERVAL,
        settle: settle(profile),
    };
    // `spawn`, not `block_on`: the future must run on a worker inside node 0's namespace.
    let task = rt_a.spawn(qos_in(kind, BULK, probes, place));
    let result = rt_a.block_on(task).map_err(|e| anyhow!("QoS task: {e}"))?;
    rt_a.shutdown_background();
    result
}

/// A goodput row (`id` is `goodput.<transport>[-4ch]`, or a QUIC controller comparison) from
/// node 0 to node 1.
fn goodput_row(
    site: Site<'_>,
    profile: Profile,
    id: &str,
    measure: Duration,
) -> anyhow::Result<GoodputSample> {
    let mut quic = QuicConfig::default();
    let (kind, channels) = match id {
        "goodput.quic" => (Kind::Quic, 1),
        "goodput.quic-4ch" => (Kind::Quic, 4),
        "goodput.mconn" => (Kind::MConn, 1),
        "goodput.mconn-4ch" => (Kind::MConn, 4),
        "goodput.lp2p" => (Kind::Lp2p, 1),
        "goodput.quic-cubic" => {
            quic.congestion = Congestion::Cubic;
            (Kind::Quic, 1)
        }
        "goodput.quic-bbr" => {
            quic.congestion = Congestion::Bbr;
            (Kind::Quic, 1)
        }
        other => return Err(anyhow!("unknown WAN row {other}")),
    };
    let rt_a = site.runtime(0)?;
    let place = GoodputPlace {
        ip_a: site.ip(0),
        ip_b: site.ip(1),
        rt_b: site.runtime(1)?,
        settle: goodput_settle(profile),
        measure,
    };
    let task = rt_a.spawn(async move { goodput_in(kind, &quic, channels, BULK, place).await });
    let result = rt_a.block_on(task).map_err(|e| anyhow!("goodput task: {e}"))?;
    rt_a.shutdown_background();
    result
}

fn spawner(ns: &Netns) -> p2p_interop_tests::Spawner {
    let ns = ns.clone();
    p2p_interop_tests::Spawner(std::sync::Arc::new(move |cmd| {
        ns.spawn(cmd).map_err(std::io::Error::other)
    }))
}

/// The Go ↔ Go QoS row: the gopeer flood in node 0, the sink in node 1.
fn qos_go(site: Site<'_>, profile: Profile, probes: usize) -> anyhow::Result<QosSample> {
    let place = match site {
        Site::Lab(lab) => {
            let (a, b) = (lab.node(0), lab.node(1));
            Some(GoPlace {
                flood: (IpAddr::V4(a.addr()), spawner(a)),
                sink: (IpAddr::V4(b.addr()), spawner(b)),
            })
        }
        Site::Loopback => None,
    };
    qos_gogo_in(BULK, probes, PROBE_INTERVAL, place, Some(settle(profile)))
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(rank).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// `dials` sequential dials from a fresh router in node 0 to one router in node 1, each timed
/// from `add_address` to `PeerStatus::Up` at the dialer.
fn connect_rust(site: Site<'_>, kind: Kind, dials: usize) -> anyhow::Result<ConnectSample> {
    ensure!(dials > 0, "no dials");
    let (rt_a, rt_b) = (site.runtime(0)?, site.runtime(1)?);
    let (ip_a, ip_b) = (site.ip(0), site.ip(1));
    let descs = [ChannelDescriptor::new(ChannelId(0x71))];
    let descs_b = descs.clone();
    let server = rt_a
        .block_on(rt_b.spawn(async move { node_on(kind, "wan-connect-b", &descs_b, ip_b).await }))
        .map_err(|e| anyhow!("connect server task: {e}"))??;
    let (target, b_id): (_, NodeId) = (server.addr.clone(), server.router.node_id());
    let task = rt_a.spawn(async move {
        let mut times = Vec::with_capacity(dials);
        for _ in 0..dials {
            let mut dialer = node_on(kind, "wan-connect-a", &descs, ip_a).await?;
            let t0 = Instant::now();
            dialer.router.add_address(target.clone())?;
            wait_up(&mut dialer.updates, b_id).await?;
            times.push(t0.elapsed());
            dialer.router.stop().await;
        }
        anyhow::Ok(times)
    });
    let mut times = rt_a.block_on(task).map_err(|e| anyhow!("connect task: {e}"))??;
    let router = server.router.clone();
    let _ = rt_a.block_on(rt_b.spawn(async move { router.stop().await }));
    rt_a.shutdown_background();
    rt_b.shutdown_background();
    times.sort();
    Ok(ConnectSample {
        dials,
        p50_ms: quantile(&times, 0.5),
        p99_ms: quantile(&times, 0.99),
        min_ms: quantile(&times, 0.0),
    })
}

/// The emulator's cost: echo RTT at 0 ms configured, and packets/s under a UDP flood.
fn emulator_cost() -> anyhow::Result<EmulatorCost> {
    let lab = Lab::start(2, LinkSpec::default())?;
    let (a, b) = (lab.node(0), lab.node(1));
    let server = b.run(|| UdpSocket::bind((b.addr(), 0)))??;
    let to = server.local_addr()?;
    let echo = server.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            if n > 1 && echo.send_to(buf.get(..n).unwrap_or_default(), from).is_err() {
                return;
            }
        }
    });
    let client = a.run(|| UdpSocket::bind((a.addr(), 0)))??;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut rtts = Vec::with_capacity(500);
    let mut buf = [0u8; 64];
    for i in 0..500u64 {
        let t0 = Instant::now();
        client.send_to(&i.to_be_bytes(), to)?;
        loop {
            let n = client.recv(&mut buf).context("echo lost on a lossless link")?;
            if buf.get(..n) == Some(&i.to_be_bytes()[..]) {
                break;
            }
        }
        rtts.push(t0.elapsed());
    }
    rtts.sort();
    // The flood: 1200-byte payloads to a port with no listener, as fast as node 0 can send,
    // for 1 s; what the emulator delivered in that second is its rate.
    let before = lab.stats()?.emulator;
    let flood = vec![0u8; 1200];
    let sink = SocketAddr::new(IpAddr::V4(b.addr()), 9);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        for _ in 0..64 {
            // Node 1's kernel drops them (its rate-limited ICMP errors cross back too).
            let _ = client.send_to(&flood, sink);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let after = lab.stats()?.emulator;
    let delivered = after.delivered - before.delivered;
    let late = after.late_ns_sum - before.late_ns_sum;
    Ok(EmulatorCost {
        rtt_p50_us: quantile(&rtts, 0.5) * 1e3,
        rtt_p99_us: quantile(&rtts, 0.99) * 1e3,
        packets_per_s: delivered as f64 / secs,
        mean_late_us: late as f64 / delivered.max(1) as f64 / 1e3,
    })
}

fn find<'a>(rows: &'a [WanRow], profile: Profile, id: &str) -> Option<&'a WanRow> {
    find_at(rows, profile.name(), id)
}

fn find_at<'a>(rows: &'a [WanRow], name: &str, id: &str) -> Option<&'a WanRow> {
    rows.iter().find(|r| r.profile == name && r.id == id && r.error.is_none())
}

/// One QUIC-vs-MConn comparison the `lan` rows are held to against loopback.
#[derive(Clone, Copy)]
struct LanRatio {
    /// What is compared, oriented so that higher is better for QUIC.
    what: &'static str,
    /// The QUIC row.
    quic: &'static str,
    /// The MConn row.
    mconn: &'static str,
    /// The figure compared.
    figure: fn(&WanRow) -> Option<f64>,
    /// A lower figure is better (latency), so the ratio is MConn / QUIC.
    lower_is_better: bool,
}

impl LanRatio {
    /// The ratio at one site (NaN: a row is missing or failed).
    fn at(self, rows: &[WanRow], name: &str) -> f64 {
        let q = find_at(rows, name, self.quic).and_then(self.figure);
        let m = find_at(rows, name, self.mconn).and_then(self.figure);
        match (q, m) {
            (Some(q), Some(m)) if self.lower_is_better => m / q,
            (Some(q), Some(m)) => q / m,
            _ => f64::NAN,
        }
    }
}

/// The `lan` rows against loopback (issue 13: "no row worse than 0.9 of its loopback figure's
/// ratio").
const LAN_VS_LOOPBACK: [LanRatio; 4] = [
    LanRatio {
        what: "probe p99 under bulk, MConn / QUIC",
        quic: "qos.quic-rr",
        mconn: "qos.mconn-rr",
        figure: |r| r.qos.map(|q| q.loaded_p99_ms),
        lower_is_better: true,
    },
    LanRatio {
        what: "connect p50, MConn / QUIC",
        quic: "connect.quic",
        mconn: "connect.mconn",
        figure: |r| r.connect.as_ref().map(|c| c.p50_ms),
        lower_is_better: true,
    },
    LanRatio {
        what: "goodput 1 channel, QUIC / MConn",
        quic: "goodput.quic",
        mconn: "goodput.mconn",
        figure: |r| r.goodput.as_ref().map(|g| g.mb_s),
        lower_is_better: false,
    },
    LanRatio {
        what: "goodput 4 channels, QUIC / MConn",
        quic: "goodput.quic-4ch",
        mconn: "goodput.mconn-4ch",
        figure: |r| r.goodput.as_ref().map(|g| g.mb_s),
        lower_is_better: false,
    },
];

fn targets(rows: &[WanRow]) -> Vec<WanTarget> {
    let qos = |p, id| find(rows, p, id).and_then(|r| r.qos);
    let conn = |p, id| find(rows, p, id).and_then(|r| r.connect.clone());
    let goodput = |p, id| find(rows, p, id).and_then(|r| r.goodput.as_ref().map(|g| g.mb_s));
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => x / y,
        _ => f64::NAN,
    };
    let mut v = Vec::new();
    for p in [Profile::Intercontinental, Profile::Lossy] {
        if rows.iter().all(|r| r.profile != p.name()) {
            continue;
        }
        let quic = qos(p, "qos.quic-rr");
        let q99 = quic.as_ref().map(|q| q.loaded_p99_ms);
        v.push(WanTarget {
            what: format!("{p}: QUIC probe p99 under bulk / Rust MConn's"),
            value: ratio(q99, qos(p, "qos.mconn-rr").map(|q| q.loaded_p99_ms)),
            bound: 0.5,
            at_most: true,
        });
        v.push(WanTarget {
            what: format!("{p}: QUIC probe p99 under bulk / Go MConn's"),
            value: ratio(q99, qos(p, "qos.mconn-gg").map(|q| q.loaded_p99_ms)),
            bound: 0.3,
            at_most: true,
        });
        let rtt = p.rtt().as_secs_f64() * 1e3;
        v.push(WanTarget {
            what: format!("{p}: QUIC probe p99 under bulk / (idle p99 + 1 RTT)"),
            value: ratio(q99, quic.as_ref().map(|q| q.idle_p99_ms + rtt)),
            bound: 1.0,
            at_most: true,
        });
    }
    for p in Profile::ALL {
        if rows.iter().all(|r| r.profile != p.name()) {
            continue;
        }
        if p.rtt() >= Duration::from_millis(40) {
            v.push(WanTarget {
                what: format!("{p}: QUIC connect p50 / MConn's"),
                value: ratio(
                    conn(p, "connect.quic").map(|c| c.p50_ms),
                    conn(p, "connect.mconn").map(|c| c.p50_ms),
                ),
                bound: 0.5,
                at_most: true,
            });
        }
        for (quic, mconn, what) in [
            ("goodput.quic", "goodput.mconn", "1 channel"),
            ("goodput.quic-4ch", "goodput.mconn-4ch", "4 channels"),
        ] {
            v.push(WanTarget {
                what: format!("{p}: QUIC bulk goodput ({what}) / Rust MConn's"),
                value: ratio(goodput(p, quic), goodput(p, mconn)),
                bound: 1.0,
                at_most: false,
            });
        }
        if p == Profile::Lan && rows.iter().any(|r| r.profile == LOOPBACK) {
            for r in LAN_VS_LOOPBACK {
                v.push(WanTarget {
                    what: format!("{p}: {} / the same ratio on loopback", r.what),
                    value: r.at(rows, p.name()) / r.at(rows, LOOPBACK),
                    bound: 0.9,
                    at_most: false,
                });
            }
        }
        if let Some(bps) = p.rate_bps().filter(|_| p == Profile::Intercontinental) {
            v.push(WanTarget {
                what: format!("{p}: QUIC bulk goodput (1 channel) / emulated bandwidth"),
                value: ratio(goodput(p, "goodput.quic").map(|g| g * 8e6), Some(bps as f64)),
                bound: 0.8,
                at_most: false,
            });
        }
    }
    v
}

fn f(x: f64) -> String {
    if x.is_finite() { format!("{x:.1}") } else { "-".to_owned() }
}

fn markdown(r: &WanReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## WAN rows ({} profile: {} probes per phase every {} ms, {} dials; {:.0} s)\n",
        r.profile_set,
        r.probes,
        PROBE_INTERVAL.as_millis(),
        r.dials,
        r.secs
    );
    if let Some(e) = &r.emulator {
        let _ = writeln!(
            s,
            "Emulator cost: echo RTT with 0 ms configured p50 {:.0} µs, p99 {:.0} µs; {:.0} packets/s \
             delivered under a UDP flood (mean lateness {:.1} µs).\n",
            e.rtt_p50_us, e.rtt_p99_us, e.packets_per_s, e.mean_late_us
        );
    }
    let _ = writeln!(
        s,
        "| profile | pairing | idle p50 | idle p99 | loaded p50 | loaded p99 | loaded max | bulk MB/s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for row in r.rows.iter().filter(|x| x.id.starts_with("qos.")) {
        match (&row.qos, &row.error) {
            (Some(q), _) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                    row.profile,
                    &row.id[4..],
                    f(q.idle_p50_ms),
                    f(q.idle_p99_ms),
                    f(q.loaded_p50_ms),
                    f(q.loaded_p99_ms),
                    q.loaded_max_ms.map_or_else(|| "-".to_owned(), f),
                    q.bulk_mb_s
                );
            }
            (None, e) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | FAILED: {} |||||",
                    row.profile,
                    &row.id[4..],
                    e.as_deref().unwrap_or("?")
                );
            }
        }
    }
    let _ = writeln!(s, "\n| profile | transport | connect p50 ms | p99 ms | min ms |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for row in r.rows.iter().filter(|x| x.id.starts_with("connect.")) {
        match (&row.connect, &row.error) {
            (Some(c), _) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    row.profile,
                    &row.id[8..],
                    f(c.p50_ms),
                    f(c.p99_ms),
                    f(c.min_ms)
                );
            }
            (None, e) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | FAILED: {} |||",
                    row.profile,
                    &row.id[8..],
                    e.as_deref().unwrap_or("?")
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\n| profile | goodput row | MB/s ({:.0} s window) | of the link | fairness |",
        r.goodput_secs
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for row in r.rows.iter().filter(|x| x.id.starts_with("goodput.")) {
        let link = Profile::ALL
            .into_iter()
            .find(|p| p.name() == row.profile)
            .and_then(|p| p.rate_bps())
            .map(|bps| bps as f64 / 8e6);
        match (&row.goodput, &row.error) {
            (Some(g), _) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {} | {:.2} |",
                    row.profile,
                    &row.id[8..],
                    g.mb_s,
                    link.map_or_else(|| "-".to_owned(), |l| format!("{:.2}", g.mb_s / l)),
                    g.fairness
                );
            }
            (None, e) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | FAILED: {} |||",
                    row.profile,
                    &row.id[8..],
                    e.as_deref().unwrap_or("?")
                );
            }
        }
    }
    let _ = writeln!(s, "\n### WAN targets (ratios in this run)\n");
    let _ = writeln!(s, "| target | value | bound | verdict |");
    let _ = writeln!(s, "|---|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {} {} | {} |",
            t.what,
            t.value,
            if t.at_most { "≤" } else { "≥" },
            t.bound,
            t.verdict()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(profile: &'static str, id: &'static str) -> WanRow {
        WanRow { profile, id, qos: None, connect: None, goodput: None, error: None, secs: 0.0 }
    }

    fn goodput(profile: &'static str, id: &'static str, mb_s: f64) -> WanRow {
        WanRow {
            goodput: Some(GoodputSample { channels: 1, mb_s, fairness: 1.0, secs: 3.0 }),
            ..row(profile, id)
        }
    }

    fn connect(profile: &'static str, id: &'static str, p50_ms: f64) -> WanRow {
        WanRow {
            connect: Some(ConnectSample { dials: 1, p50_ms, p99_ms: p50_ms, min_ms: p50_ms }),
            ..row(profile, id)
        }
    }

    fn target<'a>(targets: &'a [WanTarget], what: &str) -> &'a WanTarget {
        targets.iter().find(|t| t.what.contains(what)).unwrap_or_else(|| panic!("no {what}"))
    }

    #[test]
    fn lan_ratios_are_held_to_their_loopback_values() {
        let rows = vec![
            goodput(LOOPBACK, "goodput.quic", 900.0),
            goodput(LOOPBACK, "goodput.mconn", 750.0),
            goodput("lan", "goodput.quic", 330.0),
            goodput("lan", "goodput.mconn", 340.0),
            connect(LOOPBACK, "connect.quic", 0.9),
            connect(LOOPBACK, "connect.mconn", 0.45),
            connect("lan", "connect.quic", 2.0),
            connect("lan", "connect.mconn", 4.0),
        ];
        let t = targets(&rows);
        // Goodput: (330 / 340) / (900 / 750), higher is better.
        let g = target(&t, "lan: goodput 1 channel");
        assert!((g.value - (330.0 / 340.0) / (900.0 / 750.0)).abs() < 1e-9);
        assert_eq!(g.verdict(), "FAIL(target)");
        // Connect: lower is better, so MConn / QUIC: (4 / 2) / (0.45 / 0.9) = 4.
        let c = target(&t, "lan: connect p50");
        assert!((c.value - 4.0).abs() < 1e-9);
        assert_eq!(c.verdict(), "PASS");
        // A missing row gives no verdict rather than a made-up one.
        assert_eq!(target(&t, "lan: goodput 4 channels").verdict(), "n/a");
    }

    #[test]
    fn no_lan_vs_loopback_targets_without_loopback_rows() {
        let rows = vec![goodput("lan", "goodput.quic", 330.0)];
        assert!(targets(&rows).iter().all(|t| !t.what.contains("on loopback")));
    }

    #[test]
    fn a_failed_row_is_not_used() {
        let mut broken = goodput("lan", "goodput.mconn", 1.0);
        broken.error = Some("boom".to_owned());
        let rows = vec![goodput("lan", "goodput.quic", 330.0), broken];
        assert_eq!(target(&targets(&rows), "lan: QUIC bulk goodput (1 channel)").verdict(), "n/a");
    }
}
