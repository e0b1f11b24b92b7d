//! MConn cells with Go ends: Rust → Go, Go → Rust and Go ↔ Go, using the interop tests' Go
//! flood/sink peer (`interop-tests/gopeer`: CometBFT v0.38.25's `p2p.Switch` with a flood/sink
//! reactor, one process per end, `--unlimited`, 1024-byte packets, 100 ms flush throttle) and
//! the Rust side of its protocol (`interop-tests/benches/support`, shared with the
//! `mconn_matrix` bench). Messages are `tendermint.mempool.Message{Txs{[tx]}}` of exactly the
//! cell's size on channel 0x77 carrying a sequence number and the send time (Unix ns), so the
//! sinks (Go and Rust) report one-way latency. All test types run: send-drain, send-timeframe
//! (the flood sends for the timeframe, then an end marker; the sink counts what arrives within
//! the timeframe of its first message) and broadcast-drain (one flood, `n` sinks, every message
//! to all), with `cc` sending goroutines/tasks and a receive delay in the sink.
//!
//! Also the Go ↔ Go QoS row ([`qos_gogo`]) and the Go idle-connection memory row
//! ([`idle_rss`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use p2p::{Connection, NodeInfo, NodeKey, Transport};
use p2p_interop_tests::{GoPeer, GoPeerConfig, GoPeerRole, GoProgram};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::rr::Test;
use crate::support::{self, FloodSpec, Latency, Measure, RustPeer, SinkReport, SinkSpec};
use crate::sys::{RssSampler, cpu_seconds, peak_rss_mib, reset_peak_rss};
use crate::{GIB, IdleRss, QosSample, Sample};

/// The chain ID of every node.
const CHAIN_ID: &str = "p2p-bench";
/// Per-process and per-cell time limit (plus the timeframe).
const CELL_TIMEOUT: Duration = Duration::from_secs(180);
/// Interval between QoS probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Connections the idle-RSS row dials at a time.
const IDLE_DIAL_PARALLELISM: usize = 16;
/// How long the idle-RSS row waits for the Go peer to report all connections.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The idle-RSS row's "settled" criterion: no change of the Go peer's peer count for this long.
const IDLE_SETTLE: Duration = Duration::from_secs(1);

/// Which ends are Go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GoPairing {
    /// Rust flood, Go sink(s).
    RustGo,
    /// Go flood, Rust sink(s).
    GoRust,
    /// Go flood, Go sink(s).
    GoGo,
}

/// Which Go network the Go ends speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GoNet {
    /// comet-p2p (MConn): `gopeer`, CometBFT v0.38.25.
    MConn,
    /// lp2p (libp2p over QUIC): `golp2p`, CometBFT v0.40.0; the Rust end is the lp2p
    /// transport.
    Lp2p,
}

impl GoNet {
    fn program(self) -> GoProgram {
        match self {
            Self::MConn => GoProgram::Gopeer,
            Self::Lp2p => GoProgram::Golp2p,
        }
    }

    async fn rust_peer(self, moniker: &str) -> anyhow::Result<RustPeer> {
        match self {
            Self::MConn => RustPeer::listen(CHAIN_ID, moniker).await,
            Self::Lp2p => RustPeer::listen_lp2p(CHAIN_ID, moniker).await,
        }
    }
}

/// Whether the gopeer binary for the current sources exists (else why not).
pub(crate) fn available() -> anyhow::Result<()> {
    GoPeer::binary_path().map(|_| ())
}

/// Whether the golp2p binary for the current sources exists (else why not).
pub(crate) fn lp2p_available() -> anyhow::Result<()> {
    GoPeer::program_path(GoProgram::Golp2p).map(|_| ())
}

/// A number field of a gopeer result line.
fn field_f64(v: &Value, k: &str) -> anyhow::Result<f64> {
    v.get(k).and_then(Value::as_f64).ok_or_else(|| anyhow!("no {k} in {v}"))
}

/// The measure of a gopeer result line.
fn go_measure(v: &Value) -> anyhow::Result<Measure> {
    let u = |k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(|| anyhow!("no {k} in {v}"));
    Ok(Measure {
        messages: u("messages")?,
        bytes: u("bytes")?,
        seconds: field_f64(v, "seconds")?,
        cpu_seconds: field_f64(v, "cpu_seconds")?,
    })
}

/// The latency quantiles of a gopeer sink's result line (absent if nothing was counted).
fn go_latency(v: &Value) -> Latency {
    Latency {
        p50_ms: v.get("p50_ms").and_then(Value::as_f64),
        p99_ms: v.get("p99_ms").and_then(Value::as_f64),
    }
}

/// A cell's parameters as both ends see them.
#[derive(Debug, Clone, Copy)]
struct CellSpec {
    /// What the flood sends.
    flood: FloodSpec,
    /// What every sink expects.
    sink: SinkSpec,
    /// Sinks (broadcast: several; one flood sends every message to all).
    receivers: usize,
    /// The Go network.
    net: GoNet,
}

impl CellSpec {
    /// The spec of a matrix cell (`count` is per receiver; at least 1).
    fn new(net: GoNet, test: Test, size: usize, cc: usize, delay: Duration, count: u64) -> Self {
        let (receivers, duration) = match test {
            Test::Drain => (1, None),
            Test::Timeframe(d) => (1, Some(d)),
            Test::Broadcast(n) => (n.max(1), None),
        };
        let timeout = CELL_TIMEOUT + duration.unwrap_or_default();
        let count = count.max(1);
        Self {
            flood: FloodSpec { size, count, concurrency: cc.max(1), duration, timeout },
            sink: SinkSpec {
                size,
                count,
                concurrency: cc.max(1),
                delay,
                duration,
                timeout,
                ordered: net == GoNet::MConn,
            },
            receivers,
            net,
        }
    }

    /// The gopeer settings for one end (a flood dials `dial`, comma-separated).
    fn go_config(&self, role: GoPeerRole, dial: Option<String>) -> GoPeerConfig {
        let flood = role == GoPeerRole::Flood;
        GoPeerConfig {
            size: self.sink.size,
            count: self.sink.count,
            dial,
            unlimited: true,
            concurrency: self.sink.concurrency,
            recv_delay: if flood { Duration::ZERO } else { self.sink.delay },
            duration: self.sink.duration,
            peers: if flood { self.receivers } else { 1 },
            // The Go process outlives our own limit a little, so ours reports first.
            timeout: self.sink.timeout + Duration::from_secs(10),
            program: self.net.program(),
            ..GoPeerConfig::new(role, CHAIN_ID)
        }
    }
}

/// A Go peer and the sampler of its peak RSS.
struct Go {
    /// The process.
    peer: GoPeer,
    /// Its peak-RSS sampler.
    rss: Option<RssSampler>,
}

impl Go {
    /// Starts a gopeer and samples its RSS.
    fn start(config: &GoPeerConfig) -> anyhow::Result<Self> {
        let peer = GoPeer::start(config)?;
        let rss = peer.pid().map(RssSampler::start);
        Ok(Self { peer, rss })
    }

    /// Waits for the result line and the exit; returns the result and the peak RSS.
    fn finish(mut self, timeout: Duration) -> anyhow::Result<(Value, Option<f64>)> {
        let result = self.peer.wait_result(timeout);
        let rss = self.rss.take().and_then(RssSampler::finish);
        Ok((result?, rss))
    }

    /// As [`Go::finish`] for a sink: its report.
    fn finish_sink(self, timeout: Duration) -> anyhow::Result<(SinkReport, Option<f64>)> {
        let (v, rss) = self.finish(timeout)?;
        Ok((SinkReport { measure: go_measure(&v)?, latency: go_latency(&v) }, rss))
    }
}

/// Waits for every Go sink's report; returns the reports and each process's peak RSS.
fn finish_sinks(
    sinks: Vec<Go>,
    limit: Duration,
) -> anyhow::Result<(Vec<SinkReport>, Vec<Option<f64>>)> {
    let mut reports = Vec::with_capacity(sinks.len());
    let mut go_rss = Vec::with_capacity(sinks.len());
    for s in sinks {
        let (r, rss) = s.finish_sink(limit)?;
        reports.push(r);
        go_rss.push(rss);
    }
    Ok((reports, go_rss))
}

/// The largest of some optional values.
fn max_of(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    values.into_iter().flatten().reduce(f64::max)
}

/// The median of some optional values (upper median).
fn median_of(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// What the ends of one cell measured.
struct Ends {
    /// The flood's measure (messages per receiver).
    flood: Measure,
    /// Every sink's report.
    sinks: Vec<SinkReport>,
    /// The sinks' CPU seconds together (the Rust sinks share this process).
    sink_cpu: f64,
    /// Peak RSS of the flood process and the largest of the sink processes', MiB.
    rss: (Option<f64>, Option<f64>),
    /// Whether this process's peak RSS was reset before the cell.
    rss_reset: bool,
}

/// The cell's sample. Rates are summed over receivers; latency is the median of the
/// receivers' p50 and the largest of their p99 (the Go sinks report quantiles, not samples).
fn sample(spec: &CellSpec, ends: Ends) -> anyhow::Result<Sample> {
    let Ends { flood, sinks, sink_cpu, rss, rss_reset } = ends;
    ensure!(sinks.len() == spec.receivers, "{} of {} sinks reported", sinks.len(), spec.receivers);
    let (mut rate, mut msgs, mut bytes) = (0.0, 0.0, 0u64);
    for s in &sinks {
        let m = s.measure;
        if spec.sink.duration.is_some() {
            ensure!(
                m.messages <= flood.messages,
                "flood sent {}, sink counted {}",
                flood.messages,
                m.messages
            );
        } else {
            ensure!(
                m.messages == flood.messages,
                "flood sent {}, sink got {}",
                flood.messages,
                m.messages
            );
        }
        ensure!(m.messages > 0 && m.seconds > 0.0, "sink measured nothing: {m:?}");
        rate += m.bytes as f64 / m.seconds;
        msgs += m.messages as f64 / m.seconds;
        bytes += m.bytes;
    }
    let gib = bytes as f64 / GIB;
    Ok(Sample {
        rate,
        msgs,
        p50_ms: median_of(sinks.iter().map(|s| s.latency.p50_ms)),
        p99_ms: max_of(sinks.iter().map(|s| s.latency.p99_ms)),
        cpu_flood: Some(flood.cpu_seconds / gib),
        cpu_sink: Some(sink_cpu / gib),
        cpu_total: (flood.cpu_seconds + sink_cpu) / gib,
        rss_flood_mib: rss.0,
        rss_sink_mib: rss.1,
        rss_reset,
    })
}

/// Runs one cell: `test` with messages of `size` bytes from `cc` concurrent senders, the sinks
/// sleeping `delay` after every message, `count` messages (per receiver; ignored by
/// send-timeframe).
pub(crate) fn run_cell(
    rt: &Runtime,
    (net, pairing): (GoNet, GoPairing),
    test: Test,
    size: usize,
    cc: usize,
    delay: Duration,
    count: u64,
) -> anyhow::Result<Sample> {
    let spec = CellSpec::new(net, test, size, cc, delay, count);
    let limit = spec.sink.timeout + Duration::from_secs(15);
    match pairing {
        GoPairing::RustGo => {
            let mut sinks = Vec::with_capacity(spec.receivers);
            for _ in 0..spec.receivers {
                sinks.push(Go::start(&spec.go_config(GoPeerRole::Sink, None))?);
            }
            let rss_reset = reset_peak_rss();
            let to: Vec<String> = sinks.iter().map(|g| g.peer.p2p_address()).collect();
            // Bounded as a whole (dial and handshake included): a stuck end fails the cell
            // instead of the run.
            let flood = rt.block_on(bounded(limit, "the Rust flood", async {
                let a = net.rust_peer("rust-flood").await?;
                let mut conns: Vec<Arc<dyn Connection>> = Vec::with_capacity(to.len());
                for addr in &to {
                    conns.push(Arc::from(a.dial(addr).await?));
                }
                let m = support::flood_to(&conns, &spec.flood).await;
                for c in &conns {
                    c.close().await;
                }
                m
            }));
            let rust_rss = peak_rss_mib(None);
            let (reports, go_rss) = finish_sinks(sinks, limit)?;
            let flood = flood.context("Rust flood")?;
            let sink_cpu = reports.iter().map(|r| r.measure.cpu_seconds).sum();
            let rss = (rust_rss, max_of(go_rss));
            sample(&spec, Ends { flood, sinks: reports, sink_cpu, rss, rss_reset })
        }
        GoPairing::GoRust => {
            let rss_reset = reset_peak_rss();
            let peers = rt.block_on(async {
                let mut peers = Vec::with_capacity(spec.receivers);
                for _ in 0..spec.receivers {
                    peers.push(net.rust_peer("rust-sink").await?);
                }
                anyhow::Ok(peers)
            })?;
            let dial = peers.iter().map(RustPeer::address).collect::<Vec<_>>().join(",");
            let go = Go::start(&spec.go_config(GoPeerRole::Flood, Some(dial)))?;
            let cpu = cpu_seconds();
            let sinks = rt.block_on(bounded(limit, "the Rust sinks", async {
                let mut set = JoinSet::new();
                for p in peers {
                    let s = spec.sink;
                    set.spawn(async move {
                        let c = p.accept().await?;
                        support::sink_with(c.as_ref(), &s).await
                    });
                }
                let mut reports = Vec::with_capacity(spec.receivers);
                while let Some(r) = set.join_next().await {
                    reports.push(r.context("sink task")??);
                }
                anyhow::Ok(reports)
            }));
            // One receiver: its own interval; several share this process, so the whole span.
            let span_cpu = cpu_seconds() - cpu;
            let rust_rss = peak_rss_mib(None);
            let (flood, go_rss) = go.finish(limit)?;
            let sinks = sinks.context("Rust sink")?;
            let sink_cpu = match sinks.as_slice() {
                [one] => one.measure.cpu_seconds,
                _ => span_cpu,
            };
            let flood = go_measure(&flood)?;
            sample(&spec, Ends { flood, sinks, sink_cpu, rss: (go_rss, rust_rss), rss_reset })
        }
        GoPairing::GoGo => {
            let mut sinks = Vec::with_capacity(spec.receivers);
            for _ in 0..spec.receivers {
                sinks.push(Go::start(&spec.go_config(GoPeerRole::Sink, None))?);
            }
            let dial = sinks.iter().map(|g| g.peer.p2p_address()).collect::<Vec<_>>().join(",");
            let flood = Go::start(&spec.go_config(GoPeerRole::Flood, Some(dial)))?;
            let (reports, go_rss) = finish_sinks(sinks, limit)?;
            let (f, f_rss) = flood.finish(limit)?;
            let sink_cpu = reports.iter().map(|r| r.measure.cpu_seconds).sum();
            let rss = (f_rss, max_of(go_rss));
            let flood = go_measure(&f)?;
            sample(&spec, Ends { flood, sinks: reports, sink_cpu, rss, rss_reset: true })
        }
    }
}

/// Awaits `f`, failing with `what` if it takes longer than `limit` (accepts and dials have no
/// bound of their own).
async fn bounded<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| anyhow!("{what} did not finish within {limit:?}"))?
}

/// The Go ↔ Go QoS row: a Go flood sends `probes` 200-byte probes, one per 5 ms, on channel
/// 0x78 (priority 10) with no other traffic (idle phase), then floods `bulk_size`-byte
/// messages on channel 0x77 (priority 5) as fast as it can and, once 200 of them are queued,
/// sends `probes` more (loaded phase); the Go sink reports the probes' one-way latency per
/// phase and the bulk rate. Both processes are Go, so `_rt` is unused (the signature matches
/// the Rust rows').
pub(crate) fn qos_gogo(
    _rt: &Runtime,
    bulk_size: usize,
    probes: usize,
) -> anyhow::Result<QosSample> {
    qos_gogo_in(bulk_size, probes, PROBE_INTERVAL, None, None)
}

/// Where a Go ↔ Go QoS row's processes run: each listens on its host and is spawned by its
/// spawner (a WAN lab namespace each).
#[derive(Debug, Clone)]
pub(crate) struct GoPlace {
    /// The flood's (sender's) listen IP and spawner.
    pub(crate) flood: (std::net::IpAddr, p2p_interop_tests::Spawner),
    /// The sink's (receiver's) listen IP and spawner.
    pub(crate) sink: (std::net::IpAddr, p2p_interop_tests::Spawner),
}

/// [`qos_gogo`] with probes every `interval`, placed by `place` (default: both on loopback).
/// With a `settle`, the loaded phase starts once 2 bulk messages are queued and `settle` has
/// passed (instead of once 200 are queued), as the Rust WAN rows do.
pub(crate) fn qos_gogo_in(
    bulk_size: usize,
    probes: usize,
    interval: Duration,
    place: Option<GoPlace>,
    settle: Option<Duration>,
) -> anyhow::Result<QosSample> {
    let settle_args: Vec<String> = match settle {
        Some(d) => vec![
            "--warm-bulk".to_owned(),
            "2".to_owned(),
            "--probe-settle".to_owned(),
            format!("{}ms", d.as_millis()),
        ],
        None => Vec::new(),
    };
    ensure!(probes > 0, "no probes");
    let placed =
        |c: GoPeerConfig, at: Option<&(std::net::IpAddr, p2p_interop_tests::Spawner)>| match at {
            Some((ip, spawner)) => GoPeerConfig { host: *ip, spawner: Some(spawner.clone()), ..c },
            None => c,
        };
    let probe_args = |c: GoPeerConfig| GoPeerConfig {
        size: bulk_size,
        unlimited: true,
        timeout: CELL_TIMEOUT,
        extra_args: vec![
            "--probes".to_owned(),
            probes.to_string(),
            "--probe-interval".to_owned(),
            format!("{}us", interval.as_micros()),
            "--probe-size".to_owned(),
            "200".to_owned(),
        ]
        .into_iter()
        .chain(settle_args.iter().cloned())
        .collect(),
        ..c
    };
    let sink_at = place.as_ref().map(|p| &p.sink);
    let flood_at = place.as_ref().map(|p| &p.flood);
    let mut sink =
        GoPeer::start(&placed(probe_args(GoPeerConfig::new(GoPeerRole::Sink, CHAIN_ID)), sink_at))?;
    let mut flood = GoPeer::start(&placed(
        probe_args(GoPeerConfig {
            dial: Some(sink.p2p_address()),
            ..GoPeerConfig::new(GoPeerRole::Flood, CHAIN_ID)
        }),
        flood_at,
    ))?;
    let limit = CELL_TIMEOUT + Duration::from_secs(15);
    // A failed end explains itself; the other end's stderr says what it saw meanwhile.
    let r = match sink.wait_result(limit) {
        Ok(r) => r,
        Err(e) => bail!("QoS sink: {e:#}\n(the flood's side)\n{}", flood.stderr_tail()),
    };
    if let Err(e) = flood.wait_result(limit) {
        bail!("QoS flood: {e:#}\n(the sink's side)\n{}", sink.stderr_tail());
    }
    let f = |k: &str| field_f64(&r, k);
    let n = r.get("probes").and_then(Value::as_u64).ok_or_else(|| anyhow!("no probes in {r}"))?;
    ensure!(n == probes as u64, "sink measured {n} probes per phase, expected {probes}");
    let bulk_seconds = f("bulk_seconds")?;
    ensure!(bulk_seconds > 0.0, "no bulk interval: {r}");
    Ok(QosSample {
        idle_p50_ms: f("idle_p50_ms")?,
        idle_p99_ms: f("idle_p99_ms")?,
        loaded_p50_ms: f("loaded_p50_ms")?,
        loaded_p99_ms: f("loaded_p99_ms")?,
        loaded_max_ms: None,
        bulk_mb_s: f("bulk_bytes")? / bulk_seconds / 1e6,
        probes,
    })
}

/// `VmRSS` of `pid`, MiB.
fn vm_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow!("no VmRSS in {path}"))?
        .parse()?;
    Ok(kib / 1024.0)
}

/// The soft `Max open files` limit of `pid` (`None`: unlimited).
fn nofile_limit(pid: u32) -> anyhow::Result<Option<u64>> {
    let path = format!("/proc/{pid}/limits");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let soft = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow!("no Max open files in {path}"))?;
    Ok(soft.parse().ok())
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to the hard limit; returns the new soft
/// limit (`None`: unlimited).
fn raise_nofile() -> anyhow::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = Rlimit { current: lim.maximum, maximum: lim.maximum };
        setrlimit(Resource::Nofile, raised).context("raising RLIMIT_NOFILE")?;
    }
    Ok(lim.maximum)
}

/// Dials `address` `conns` times, each connection a fresh node (the Go Switch refuses a
/// second connection from one node ID), [`IDLE_DIAL_PARALLELISM`] at a time; returns the
/// handshaken connections.
async fn dial_idle(address: &str, conns: usize) -> anyhow::Result<Vec<Box<dyn Connection>>> {
    let (_, addr) = address.split_once('@').ok_or_else(|| anyhow!("no id in {address}"))?;
    let to = p2p::Endpoint::socket(p2p::Protocol::MCONN, addr.parse()?);
    let transport = Arc::new(MConnTransport::dial_only(MConnConfig::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..IDLE_DIAL_PARALLELISM.min(conns.max(1)) {
        let (transport, to, next) = (transport.clone(), to.clone(), next.clone());
        workers.spawn(async move {
            let mut held: Vec<Box<dyn Connection>> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= conns {
                    break;
                }
                let key = NodeKey::generate();
                let info =
                    NodeInfo::new(key.node_id(), CHAIN_ID, format!("idle-{i}"), [support::CHANNEL])
                        .with_listen_addr("127.0.0.1:1");
                let mut c = transport.dial(&to).await.with_context(|| format!("dial {i}"))?;
                c.handshake(&info, &key, &support::descriptors())
                    .await
                    .with_context(|| format!("handshake {i}"))?;
                held.push(c);
            }
            anyhow::Ok(held)
        });
    }
    let mut all = Vec::with_capacity(conns);
    while let Some(r) = workers.join_next().await {
        all.extend(r.context("dial task")??);
    }
    Ok(all)
}

/// The peer count of a gopeer `peers` event.
fn peers_of(v: &Value) -> anyhow::Result<usize> {
    let n = v.get("peers").and_then(Value::as_u64).ok_or_else(|| anyhow!("no peers in {v}"))?;
    Ok(usize::try_from(n)?)
}

/// The Go idle-connection row: `VmRSS` of a gopeer (`--role idle`) before and with `conns`
/// handshaken, idle MConn connections from this process (each a fresh node, dialled 16 at a
/// time), after its peer count reached `conns` and then did not change for 1 s.
pub(crate) fn idle_rss(rt: &Runtime, conns: usize) -> anyhow::Result<IdleRss> {
    ensure!(conns > 0, "no connections");
    let ours = raise_nofile()?;
    // Each connection takes one descriptor here and one in the gopeer, plus some slack.
    let need = conns as u64 + 64;
    ensure!(ours.is_none_or(|l| l >= need), "RLIMIT_NOFILE {ours:?} is below {need}");
    let mut go = GoPeer::start(&GoPeerConfig {
        timeout: Duration::from_secs(600),
        extra_args: vec!["--max-inbound".to_owned(), (conns + 16).to_string()],
        ..GoPeerConfig::new(GoPeerRole::Idle, CHAIN_ID)
    })?;
    let pid = go.pid().ok_or_else(|| anyhow!("gopeer without a pid"))?;
    let theirs = nofile_limit(pid)?;
    ensure!(
        theirs.is_none_or(|l| l >= need),
        "gopeer's open-file limit {theirs:?} is below {need}"
    );
    let baseline_mib = vm_rss_mib(pid)?;
    let held = rt.block_on(dial_idle(&go.p2p_address(), conns))?;
    ensure!(held.len() == conns, "{} of {conns} connections", held.len());
    let mut peers = 0;
    while peers < conns {
        peers = peers_of(&go.next_event("peers", IDLE_TIMEOUT)?)?;
    }
    // Settled: no change for IDLE_SETTLE (bounded, in case it keeps changing).
    for _ in 0..conns.saturating_mul(2) {
        match go.try_next_event("peers", IDLE_SETTLE)? {
            Some(v) => peers = peers_of(&v)?,
            None => break,
        }
    }
    if peers != conns {
        bail!("gopeer has {peers} peers, expected {conns}");
    }
    let total_mib = vm_rss_mib(pid)?;
    rt.block_on(async {
        for c in &held {
            c.close().await;
        }
    });
    drop(held);
    Ok(IdleRss {
        conns,
        baseline_mib,
        total_mib,
        kib_per_conn: (total_mib - baseline_mib) * 1024.0 / conns as f64,
    })
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
