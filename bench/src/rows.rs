//! The QoS, slow-receiver and idle-connection rows (issue 6, items 4 and 5), Rust side.
//!
//! * **QoS** (`qos.<transport>-rr`): two `Router`s over MConn or QUIC, a high-priority probe
//!   channel (200-byte messages on the wire, one every [`PROBE_INTERVAL`], each carrying its
//!   send time) and a low-priority bulk channel. Probe one-way latency (send call → the
//!   receiving reactor's `recv`, one clock: both nodes are in this process) is measured idle
//!   (probes only) and then while one task floods 64 KiB bulk messages from the same sender;
//!   the bulk rate is measured over the loaded phase.
//! * **Slow receiver** (`slow.<transport>.<policy>`): one `Router` S sends 64 KiB messages on
//!   one channel from one reactor task (`Outbound::broadcast` in a loop) to F, whose reactor
//!   drains at once, and L, whose reactor sleeps [`SLOW_DELAY`] per message. F's receive rate
//!   is measured with F as S's only peer (solo), then with L connected too; value =
//!   with-slow / solo. `drop` uses the router's default `OverflowPolicy::DropNewest`, `wait`
//!   uses `OverflowPolicy::Wait` (backpressure). The with-slow window starts once L's queue at
//!   S is full (the sender checks `Router::connected_peers`); the transport buffers below it
//!   may still be filling then (MConn's are deeper than QUIC's), so a `wait` row's with-slow
//!   figure is an upper bound of its steady state.
//! * **Idle RSS** (`idle-rss.<transport>.<n>`): a separate process (this binary,
//!   `--idle-server <transport>`) accepts and handshakes `n` connections through the
//!   transport's `Connection` API and holds them idle; its `VmRSS` is read before the first
//!   connection and after all `n` are up. The memory transport exists in one process only:
//!   there the child process holds both ends of every connection (its own fresh heap, not this
//!   process's, whose heap carries the earlier cells' allocations).

use std::io::{BufRead, Write as _};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use bytes::Bytes;
use p2p::router::{ChannelDescriptor, OverflowPolicy, UnwrapError, Wrapper};
use p2p::{
    ChannelId, Connection, Endpoint, EndpointAddr, NodeAddress, NodeId, NodeInfo, NodeKey,
    Outbound, PeerManagerConfig, PeerStatus, PeerUpdates, Protocol, Router, RouterConfig,
    Transport,
};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use p2p_transport_memory::MemoryNetwork;
use p2p_transport_quic::{QuicConfig, QuicTransport};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::rr::Kind;
use crate::{IdleRss, Profile, QosSample};

/// Bound of every wait for an event; only reached on failure.
const T: Duration = Duration::from_secs(30);
/// Bulk channel of the QoS rows (low priority).
const BULK: ChannelId = ChannelId(0x70);
/// Probe channel of the QoS rows (high priority).
const PROBE: ChannelId = ChannelId(0x71);
/// The one channel of the slow-receiver rows.
const DATA: ChannelId = ChannelId(0x72);
/// Where the loopback rows listen.
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// Probe size on the wire (the `Bytes` wrapper adds 3 bytes of protobuf framing).
const PROBE_SIZE: usize = 200;
/// Time between two probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Message size of the slow-receiver rows.
const SLOW_SIZE: usize = 64 << 10;
/// What L's reactor sleeps after every message.
pub(crate) const SLOW_DELAY: Duration = Duration::from_millis(20);
/// Per-peer send queue of the slow-receiver channel, in messages.
const SLOW_QUEUE: usize = 64;
/// Connections dialled in parallel by the idle-RSS rows.
const IDLE_PARALLEL: usize = 16;
/// Time between the server reporting all connections up and the RSS read: a settle period
/// (the measurement's definition of "idle"), not a wait for an event.
const IDLE_SETTLE: Duration = Duration::from_millis(500);
/// Descriptor (fd) budget of one idle-RSS process beyond two per connection.
const FD_MARGIN: u64 = 256;

/// Opaque bytes as a channel message (the wire form is a protobuf `BytesValue`).
#[derive(Debug, Clone)]
pub(crate) struct Raw(Bytes);

impl Wrapper for Raw {
    type Proto = Bytes;
    fn wrap(self) -> Bytes {
        self.0
    }
    fn unwrap(proto: Bytes) -> Result<Self, UnwrapError> {
        Ok(Self(proto))
    }
}

/// Sequence number and send time (µs since the row's base instant), big-endian, padded.
fn stamped(seq: u64, base: Instant, len: usize) -> Bytes {
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&(base.elapsed().as_micros() as u64).to_be_bytes());
    b.resize(len.max(16), 0x5a);
    Bytes::from(b)
}

fn field(b: &[u8], at: usize) -> anyhow::Result<u64> {
    let s = b.get(at..at + 8).ok_or_else(|| anyhow!("short message"))?;
    Ok(u64::from_be_bytes(s.try_into()?))
}

/// A bound transport (on `ip`, any port) and the endpoint it listens on.
async fn listening(
    kind: Kind,
    key: &NodeKey,
    ip: IpAddr,
    quic: &QuicConfig,
) -> anyhow::Result<(Arc<dyn Transport>, Endpoint)> {
    let any = std::net::SocketAddr::new(ip, 0);
    Ok(match kind {
        Kind::MConn => {
            let t = MConnTransport::bind(any, MConnConfig::default()).await?;
            let at = t.local_addr().ok_or_else(|| anyhow!("no local address"))?;
            (Arc::new(t), Endpoint::socket(Protocol::MCONN, at))
        }
        Kind::Quic => {
            let t = QuicTransport::bind(any, key, quic.clone())?;
            let at = Endpoint::socket(Protocol::QUIC, t.local_addr());
            (Arc::new(t), at)
        }
        Kind::Lp2p => {
            let t = p2p_transport_lp2p::Lp2pTransport::bind(
                any,
                key,
                p2p_quic_endpoint::EndpointConfig::default(),
                crate::rr::lp2p_config(),
            )?;
            let at = Endpoint::socket(Protocol::LP2P, t.local_addr());
            (Arc::new(t), at)
        }
        Kind::Memory => bail!("router rows run over MConn, QUIC or lp2p"),
    })
}

/// A started router with its channels.
pub(crate) struct Node {
    pub(crate) router: Arc<Router>,
    pub(crate) updates: PeerUpdates,
    pub(crate) addr: NodeAddress,
    channels: Vec<p2p::Channel<Raw>>,
}

async fn node(kind: Kind, moniker: &str, descs: &[ChannelDescriptor]) -> anyhow::Result<Node> {
    node_on(kind, moniker, descs, LOOPBACK).await
}

/// [`node`], listening on `ip`.
pub(crate) async fn node_on(
    kind: Kind,
    moniker: &str,
    descs: &[ChannelDescriptor],
    ip: IpAddr,
) -> anyhow::Result<Node> {
    node_with(kind, moniker, descs, ip, &QuicConfig::default()).await
}

/// [`node_on`] with `quic` as the QUIC transport's configuration (other kinds ignore it).
pub(crate) async fn node_with(
    kind: Kind,
    moniker: &str,
    descs: &[ChannelDescriptor],
    ip: IpAddr,
    quic: &QuicConfig,
) -> anyhow::Result<Node> {
    let key = NodeKey::generate();
    let id = key.node_id();
    let (transport, at) = listening(kind, &key, ip, quic).await?;
    let EndpointAddr::Socket(socket) = at.addr else { bail!("not a socket endpoint") };
    let addr: NodeAddress = match kind {
        Kind::Lp2p => NodeAddress::new_with_key(
            Protocol::LP2P,
            key.public_key(),
            p2p::Host::Ip(socket.ip()),
            socket.port(),
        ),
        Kind::Quic => format!("quic://{id}@{socket}").parse()?,
        _ => format!("mconn://{id}@{socket}").parse()?,
    };
    let info = NodeInfo::new(id, "p2p-bench", moniker, Vec::<ChannelId>::new());
    let router =
        Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)?;
    router.add_transport(transport)?;
    let channels = descs
        .iter()
        .map(|d| router.open_channel::<Raw>(d.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let updates = router.subscribe();
    router.start()?;
    Ok(Node { router: Arc::new(router), updates, addr, channels })
}

/// Waits for `peer` to come up in `updates`.
pub(crate) async fn wait_up(updates: &mut PeerUpdates, peer: NodeId) -> anyhow::Result<()> {
    let wait = async {
        loop {
            let u = updates.recv().await?;
            if u.status == PeerStatus::Up && u.node_id == peer {
                return anyhow::Ok(());
            }
        }
    };
    tokio::time::timeout(T, wait).await.context("peer did not come up")?
}

/// `a` dials `b`; returns once both see the other up.
async fn connect(a: &mut Node, b: &mut Node) -> anyhow::Result<()> {
    a.router.add_address(b.addr.clone())?;
    let (ida, idb) = (a.router.node_id(), b.router.node_id());
    let (ra, rb) = tokio::join!(wait_up(&mut a.updates, idb), wait_up(&mut b.updates, ida));
    ra.and(rb)
}

fn take(channels: &mut Vec<p2p::Channel<Raw>>) -> anyhow::Result<p2p::Channel<Raw>> {
    channels.pop().ok_or_else(|| anyhow!("channel missing"))
}

/// The `q` quantile (nearest rank) of sorted µs latencies, in ms.
fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(rank).map_or(f64::NAN, |us| *us as f64 / 1e3)
}

/// A bulk channel of the QoS and goodput rows: priority 1, room for `bulk_size` messages, a
/// short queue whose sender waits (so a flood is paced by the connection, not dropped).
fn bulk_channel(id: ChannelId, bulk_size: usize) -> ChannelDescriptor {
    ChannelDescriptor::new(id)
        .with_priority(1)
        .with_max_message_size(bulk_size + 16)
        .with_queue_capacity(16, 16)
        .with_overflow(OverflowPolicy::Wait(T))
}

/// A reactor on `rt` that counts the payload bytes `channel` receives; the count is watched
/// through the returned receiver.
fn count_bytes(
    rt: &tokio::runtime::Runtime,
    channel: p2p::Channel<Raw>,
) -> (JoinHandle<()>, watch::Receiver<u64>) {
    let (bytes, seen) = watch::channel(0u64);
    let (_, mut rx) = channel.split();
    let reactor = rt.spawn(async move {
        while let Some(env) = rx.recv().await {
            let n = env.message.0.len() as u64;
            bytes.send_modify(|b| *b += n);
        }
    });
    (reactor, seen)
}

/// Sends `bulk_size`-byte messages on `tx` to `to` until `stop` is set (or the router stops).
async fn flood(
    tx: p2p::router::ChannelSender<Raw>,
    to: NodeId,
    bulk_size: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let msg = Bytes::from(vec![0xb0; bulk_size]);
    while !stop.load(Ordering::Relaxed) {
        tx.send(Outbound::to(to, Raw(msg.clone()))).await?;
    }
    Ok(())
}

/// Sends probes `first..first + count`, one per `interval`, and collects their latencies
/// (µs, sorted) from `delivered`; they must arrive complete, each once, and in order if
/// `ordered` (lp2p sends every message on its own stream, so a lost packet lets a later probe
/// overtake an earlier one). A probe may take up
/// to 30 s or 6000 intervals (60 s at the WAN rows' 10 ms: MConn's TCP send buffer alone holds
/// tens of seconds of bulk on a lossy long link).
#[allow(clippy::too_many_arguments)]
async fn probe_phase(
    tx: &p2p::router::ChannelSender<Raw>,
    to: NodeId,
    delivered: &mut mpsc::Receiver<(u64, u64)>,
    base: Instant,
    first: u64,
    count: usize,
    interval: Duration,
    ordered: bool,
) -> anyhow::Result<Vec<u64>> {
    let tx = tx.clone();
    let sender = tokio::spawn(async move {
        // Pacing: this interval generates the load; nothing waits on it for a result.
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in first..first + count as u64 {
            tick.tick().await;
            let out = tx.send(Outbound::to(to, Raw(stamped(seq, base, PROBE_SIZE - 3)))).await?;
            ensure!(out.queued == 1, "probe {seq} dropped");
        }
        anyhow::Ok(())
    });
    let mut lat = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::with_capacity(count);
    for seq in first..first + count as u64 {
        let (got, us) = tokio::time::timeout(T.max(interval * 6000), delivered.recv())
            .await
            .context("probe not delivered")?
            .ok_or_else(|| anyhow!("probe receiver ended"))?;
        if ordered {
            ensure!(got == seq, "probe {got} arrived where {seq} was due");
        } else {
            let expected = first..first + count as u64;
            ensure!(expected.contains(&got) && seen.insert(got), "probe {got} unexpected");
        }
        lat.push(us);
    }
    sender.await??;
    lat.sort_unstable();
    Ok(lat)
}

/// One QoS measurement through two routers (see the module docs): `probes` probes idle, then
/// `probes` probes while `bulk_size` messages flood the bulk channel of the same connection.
pub(crate) async fn qos(kind: Kind, bulk_size: usize, probes: usize) -> anyhow::Result<QosSample> {
    // The receiving node runs on its own runtime (one worker; the caller runs the sending node
    // on another, see `rows`), as it would in its own process: its tasks do not queue behind
    // the sender's bulk work on the same workers.
    let place = QosPlace {
        ip_a: LOOPBACK,
        ip_b: LOOPBACK,
        rt_b: node_runtime()?,
        interval: PROBE_INTERVAL,
        settle: Duration::ZERO,
    };
    qos_in(kind, bulk_size, probes, place).await
}

/// Where and how a QoS measurement runs: the sending node (A) on the caller's runtime,
/// listening on `ip_a`; the receiving node (B) on `rt_b`, listening on `ip_b`.
pub(crate) struct QosPlace {
    /// A's listen address.
    pub(crate) ip_a: IpAddr,
    /// B's listen address.
    pub(crate) ip_b: IpAddr,
    /// B's runtime (shut down at the end).
    pub(crate) rt_b: tokio::runtime::Runtime,
    /// Time between two probes.
    pub(crate) interval: Duration,
    /// How long the flood runs after its first bytes arrive before the loaded probes start
    /// (past slow start on a long link; zero on loopback). A settle period, the measurement's
    /// definition of "loaded", not a wait for an event.
    pub(crate) settle: Duration,
}

/// [`qos`] placed by `place` (e.g. in two WAN lab namespaces).
pub(crate) async fn qos_in(
    kind: Kind,
    bulk_size: usize,
    probes: usize,
    place: QosPlace,
) -> anyhow::Result<QosSample> {
    ensure!(probes > 0, "no probes");
    let QosPlace { ip_a, ip_b, rt_b, interval, settle } = place;
    let descs = [
        bulk_channel(BULK, bulk_size),
        ChannelDescriptor::new(PROBE)
            .with_priority(10)
            .with_max_message_size(1024)
            .with_queue_capacity(1024, 1024)
            .with_overflow(OverflowPolicy::Wait(T)),
    ];
    let mut a = node_on(kind, "qos-a", &descs, ip_a).await?;
    let descs_b = descs.clone();
    let mut b = rt_b.spawn(async move { node_on(kind, "qos-b", &descs_b, ip_b).await }).await??;
    connect(&mut a, &mut b).await?;
    let to = b.router.node_id();
    let base = Instant::now();
    let (b_probe, b_bulk) = (take(&mut b.channels)?, take(&mut b.channels)?);
    let (a_probe, a_bulk) = (take(&mut a.channels)?, take(&mut a.channels)?);
    // Room for every probe of both phases: the probe reactor never waits on this queue.
    let (lat_tx, mut delivered) = mpsc::channel::<(u64, u64)>(2 * probes);
    let (_, mut probe_rx) = b_probe.split();
    let probe_reactor = rt_b.spawn(async move {
        while let Some(env) = probe_rx.recv().await {
            let now = base.elapsed().as_micros() as u64;
            let seq = field(&env.message.0, 0)?;
            let sent = field(&env.message.0, 8)?;
            lat_tx.try_send((seq, now.saturating_sub(sent))).context("probe queue full")?;
        }
        anyhow::Ok(())
    });
    let (bulk_reactor, bulk_seen) = count_bytes(&rt_b, b_bulk);
    let probe_tx = a_probe.sender();
    let result = async {
        let idle =
            probe_phase(&probe_tx, to, &mut delivered, base, 0, probes, interval, kind.ordered())
                .await?;
        // Loaded: one task floods bulk messages; probes start once bulk is arriving.
        let stop = Arc::new(AtomicBool::new(false));
        let flood = tokio::spawn(flood(a_bulk.sender(), to, bulk_size, stop.clone()));
        let mut seen = bulk_seen.clone();
        tokio::time::timeout(T, seen.wait_for(|&n| n >= 2 * bulk_size as u64))
            .await
            .context("no bulk traffic")??;
        if !settle.is_zero() {
            tokio::time::sleep(settle).await;
        }
        let (t0, b0) = (Instant::now(), *bulk_seen.borrow());
        let loaded = probe_phase(
            &probe_tx,
            to,
            &mut delivered,
            base,
            probes as u64,
            probes,
            interval,
            kind.ordered(),
        )
        .await?;
        let (secs, b1) = (t0.elapsed().as_secs_f64(), *bulk_seen.borrow());
        stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(T, flood).await.context("bulk sender stuck")???;
        anyhow::Ok(QosSample {
            idle_p50_ms: quantile_ms(&idle, 0.50),
            idle_p99_ms: quantile_ms(&idle, 0.99),
            loaded_p50_ms: quantile_ms(&loaded, 0.50),
            loaded_p99_ms: quantile_ms(&loaded, 0.99),
            loaded_max_ms: loaded.last().map(|us| *us as f64 / 1e3),
            bulk_mb_s: (b1 - b0) as f64 / secs / 1e6,
            probes,
        })
    }
    .await;
    let b_router = b.router.clone();
    let b_stop = rt_b.spawn(async move { b_router.stop().await });
    let (_, _) = tokio::join!(a.router.stop(), b_stop);
    bulk_reactor.abort();
    probe_reactor.abort();
    rt_b.shutdown_background();
    result
}

/// Bulk goodput of one connection (a goodput row).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GoodputSample {
    /// Channels flooded at once.
    pub(crate) channels: usize,
    /// Payload bytes delivered per second over the measured window, all channels, MB/s.
    pub(crate) mb_s: f64,
    /// The slowest channel's share of `mb_s` times `channels` (1.0: an even split).
    pub(crate) fairness: f64,
    /// Length of the measured window, s.
    pub(crate) secs: f64,
}

/// Where and how long a goodput row runs: A (sending) on the caller's runtime at `ip_a`, B on
/// `rt_b` at `ip_b`.
pub(crate) struct GoodputPlace {
    /// A's listen address.
    pub(crate) ip_a: IpAddr,
    /// B's listen address.
    pub(crate) ip_b: IpAddr,
    /// B's runtime (shut down at the end).
    pub(crate) rt_b: tokio::runtime::Runtime,
    /// Flood time before the window starts, once the first bytes arrived (past slow start).
    pub(crate) settle: Duration,
    /// The measured window.
    pub(crate) measure: Duration,
}

/// `channels` equal-priority channels from A to B, each flooded with `bulk_size`-byte messages
/// by its own task; the payload rate B's reactors see over `place.measure`, after
/// `place.settle`. `quic` configures the QUIC transport of both ends.
pub(crate) async fn goodput_in(
    kind: Kind,
    quic: &QuicConfig,
    channels: usize,
    bulk_size: usize,
    place: GoodputPlace,
) -> anyhow::Result<GoodputSample> {
    ensure!((1..=16).contains(&channels), "1 to 16 channels");
    let GoodputPlace { ip_a, ip_b, rt_b, settle, measure } = place;
    let descs: Vec<ChannelDescriptor> =
        (0..channels).map(|i| bulk_channel(ChannelId(0x60 + i as u8), bulk_size)).collect();
    let mut a = node_with(kind, "goodput-a", &descs, ip_a, quic).await?;
    let (descs_b, quic_b) = (descs.clone(), quic.clone());
    let mut b = rt_b
        .spawn(async move { node_with(kind, "goodput-b", &descs_b, ip_b, &quic_b).await })
        .await??;
    connect(&mut a, &mut b).await?;
    let to = b.router.node_id();
    let mut counters = Vec::new();
    let mut reactors = Vec::new();
    for ch in b.channels.drain(..) {
        let (reactor, seen) = count_bytes(&rt_b, ch);
        reactors.push(reactor);
        counters.push(seen);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut floods = JoinSet::new();
    for ch in a.channels.drain(..) {
        floods.spawn(flood(ch.sender(), to, bulk_size, stop.clone()));
    }
    let result = async {
        let total = |c: &[watch::Receiver<u64>]| c.iter().map(|r| *r.borrow()).collect::<Vec<_>>();
        let mut first = counters.first().cloned().ok_or_else(|| anyhow!("no channel"))?;
        tokio::time::timeout(T, first.wait_for(|&n| n >= bulk_size as u64))
            .await
            .context("no bulk traffic")??;
        // A settle period and a measured window: the measurement's definition, not a wait for
        // an event.
        tokio::time::sleep(settle).await;
        let (t0, before) = (Instant::now(), total(&counters));
        tokio::time::sleep(measure).await;
        let (secs, after) = (t0.elapsed().as_secs_f64(), total(&counters));
        let per: Vec<f64> =
            after.iter().zip(&before).map(|(x, y)| (x - y) as f64 / secs / 1e6).collect();
        let sum: f64 = per.iter().sum();
        let min = per.iter().copied().fold(f64::INFINITY, f64::min);
        anyhow::Ok(GoodputSample {
            channels,
            mb_s: sum,
            fairness: if sum > 0.0 { min * channels as f64 / sum } else { 0.0 },
            secs,
        })
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let b_router = b.router.clone();
    let b_stop = rt_b.spawn(async move { b_router.stop().await });
    let (_, _) = tokio::join!(a.router.stop(), b_stop);
    // The floods end with the routers (a send to a stopped router fails); their result does
    // not matter once the window is measured.
    floods.abort_all();
    for r in reactors {
        r.abort();
    }
    rt_b.shutdown_background();
    result
}

/// Slow-receiver overflow policy of the data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum SlowPolicy {
    /// `OverflowPolicy::DropNewest` (the router's default): `send` never waits.
    Drop,
    /// `OverflowPolicy::Wait(30 s)`: `send` waits for room in every recipient's queue.
    Wait,
}

/// One slow-receiver measurement.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct SlowSample {
    /// F's receive rate with F as the only peer, MB/s.
    pub(crate) solo_mb_s: f64,
    /// F's receive rate with the slow peer L receiving the same stream, MB/s.
    pub(crate) with_slow_mb_s: f64,
    /// `with_slow / solo`.
    pub(crate) ratio: f64,
    /// Messages L's reactor received during the with-slow window.
    pub(crate) slow_received: u64,
    /// Messages S's channel dropped (full queue) over the whole row.
    pub(crate) dropped: u64,
}

/// Counts messages a reactor received.
fn counting_reactor(
    ch: p2p::Channel<Raw>,
    delay: Duration,
) -> (watch::Receiver<u64>, JoinHandle<()>) {
    let (count, seen) = watch::channel(0u64);
    let (_, mut rx) = ch.split();
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            count.send_modify(|n| *n += 1);
            if !delay.is_zero() {
                // The slow reactor's processing time (inline, as a blocking `Receive` would be).
                tokio::time::sleep(delay).await;
            }
        }
    });
    (seen, task)
}

/// F's rate over `window`: messages received in it × size / elapsed, MB/s.
async fn rate_over(seen: &watch::Receiver<u64>, window: Duration) -> f64 {
    let (t0, c0) = (Instant::now(), *seen.borrow());
    // The measurement window itself (a duration, not a wait for an event).
    tokio::time::sleep(window).await;
    let (secs, c1) = (t0.elapsed().as_secs_f64(), *seen.borrow());
    (c1 - c0) as f64 * SLOW_SIZE as f64 / secs / 1e6
}

/// One slow-receiver measurement (see the module docs); each phase measures F over `window`.
pub(crate) async fn slow_receiver(
    kind: Kind,
    policy: SlowPolicy,
    window: Duration,
) -> anyhow::Result<SlowSample> {
    let overflow = match policy {
        SlowPolicy::Drop => OverflowPolicy::DropNewest,
        SlowPolicy::Wait => OverflowPolicy::Wait(T),
    };
    let descs = [ChannelDescriptor::new(DATA)
        .with_max_message_size(SLOW_SIZE + 16)
        .with_queue_capacity(SLOW_QUEUE, SLOW_QUEUE)
        .with_overflow(overflow)];
    let mut s = node(kind, "slow-s", &descs).await?;
    let mut f = node(kind, "slow-f", &descs).await?;
    let mut l = node(kind, "slow-l", &descs).await?;
    connect(&mut s, &mut f).await?;
    let (f_seen, f_task) = counting_reactor(take(&mut f.channels)?, Duration::ZERO);
    let (l_seen, l_task) = counting_reactor(take(&mut l.channels)?, SLOW_DELAY);
    let s_ch = take(&mut s.channels)?;
    let l_id = l.router.node_id();
    // Set once L's queue at S is full (the with-slow steady state).
    let (l_full_tx, mut l_full) = watch::channel(false);
    let stop = Arc::new(AtomicBool::new(false));
    // The sending reactor: one task, one broadcast per message, as a gossip reactor does.
    let sender = {
        let (tx, stop) = (s_ch.sender(), stop.clone());
        tokio::spawn(async move {
            let payload = Bytes::from(vec![0x5a; SLOW_SIZE]);
            while !stop.load(Ordering::Relaxed) {
                let out = tx.send(Outbound::broadcast(Raw(payload.clone()))).await?;
                if out.queued == 0 {
                    // Every queue was full (DropNewest): let the writers run.
                    tokio::task::yield_now().await;
                }
            }
            anyhow::Ok(())
        })
    };
    // Watches S's queue for L (every 2 ms, measurement only): the sender itself cannot look
    // while a `Wait` send is blocked on that very queue.
    let watcher = {
        let router = s.router.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            loop {
                tick.tick().await;
                let full = (router.connected_peers().iter())
                    .any(|p| p.node_id == l_id && p.backlog.0 >= SLOW_QUEUE);
                if full {
                    l_full_tx.send_replace(true);
                    return;
                }
            }
        })
    };
    let result = async {
        let mut warm = f_seen.clone();
        tokio::time::timeout(T, warm.wait_for(|&n| n >= 64)).await.context("F got nothing")??;
        let solo = rate_over(&f_seen, window).await;
        connect(&mut s, &mut l).await?;
        tokio::time::timeout(T, l_full.wait_for(|&full| full))
            .await
            .context("L's queue never filled")??;
        let l0 = *l_seen.borrow();
        let with_slow = rate_over(&f_seen, window).await;
        let slow_received = *l_seen.borrow() - l0;
        anyhow::Ok(SlowSample {
            solo_mb_s: solo,
            with_slow_mb_s: with_slow,
            ratio: with_slow / solo,
            slow_received,
            dropped: s_ch.stats().dropped_full,
        })
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let stopped = tokio::time::timeout(T, sender).await;
    tokio::join!(s.router.stop(), f.router.stop(), l.router.stop());
    f_task.abort();
    l_task.abort();
    watcher.abort();
    let sample = result?;
    stopped.context("sender stuck")???;
    Ok(sample)
}

/// Raises `RLIMIT_NOFILE`'s soft limit to the hard limit; errors if that leaves fewer than
/// `need` descriptors.
pub(crate) fn raise_nofile(need: u64) -> anyhow::Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum;
    if lim.current != hard {
        setrlimit(Resource::Nofile, rustix::process::Rlimit { current: hard, maximum: hard })
            .context("raising RLIMIT_NOFILE")?;
    }
    let have = getrlimit(Resource::Nofile).current;
    ensure!(have.is_none_or(|h| h >= need), "RLIMIT_NOFILE {have:?} is below {need}");
    Ok(())
}

/// `VmRSS` of `pid`, MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow!("no VmRSS"))?;
    let kib: f64 = line.split_whitespace().nth(1).ok_or_else(|| anyhow!("bad VmRSS"))?.parse()?;
    Ok(kib / 1024.0)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::MConn => "mconn",
        Kind::Quic => "quic",
        Kind::Memory => "memory",
        Kind::Lp2p => "lp2p",
    }
}

/// Parses `--idle-server`'s argument.
pub(crate) fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    match s {
        "mconn" => Ok(Kind::MConn),
        "quic" => Ok(Kind::Quic),
        "memory" => Ok(Kind::Memory),
        "lp2p" => Ok(Kind::Lp2p),
        other => bail!("unknown transport {other:?}"),
    }
}

fn idle_info(key: &NodeKey, moniker: &str) -> NodeInfo {
    NodeInfo::new(key.node_id(), "p2p-bench", moniker, [DATA]).with_listen_addr("127.0.0.1:1")
}

fn idle_descs() -> [ChannelDescriptor; 1] {
    [ChannelDescriptor::new(DATA)]
}

/// Prints one JSON event line on stdout.
fn event(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// The child of an idle-RSS row: listens (MConn, QUIC), prints
/// `{"event":"listening","addr":…}`, then handshakes every inbound connection and holds it,
/// printing `{"event":"accepted","count":n}` after each. Memory: prints
/// `{"event":"listening"}`, reads `n` from stdin, makes `n` connected, handshaken pairs in
/// this process and prints `{"event":"done","count":n}`. Exits when stdin closes.
pub(crate) fn idle_server(kind: Kind) -> anyhow::Result<()> {
    raise_nofile(2 * 1000 + FD_MARGIN)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (line_tx, mut lines) = mpsc::channel::<String>(4);
    // stdin: the parent's commands; EOF ends the process.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rt.block_on(async move {
        let key = Arc::new(NodeKey::generate());
        let info = Arc::new(idle_info(&key, "idle-server"));
        let held = Arc::new(std::sync::Mutex::new(Vec::<Box<dyn Connection>>::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let accepted = |c: Box<dyn Connection>| -> anyhow::Result<()> {
            held.lock().map_err(|_| anyhow!("poisoned"))?.push(c);
            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
            event(&serde_json::json!({"event": "accepted", "count": n}))
        };
        if kind == Kind::Memory {
            event(&serde_json::json!({"event": "listening"}))?;
            let Some(line) = lines.recv().await else { return Ok(()) };
            let n: usize = line.trim().parse().context("connection count")?;
            let net = MemoryNetwork::default();
            let kd = NodeKey::generate();
            let dialer = Arc::new(net.transport(kd.node_id())?);
            let listener = Arc::new(net.transport(key.node_id())?);
            let to = listener.endpoint();
            let (kd, id) = (Arc::new(kd), Arc::new(idle_info(&key, "idle-dialer")));
            let accept = {
                let (listener, key, info) = (listener.clone(), key.clone(), info.clone());
                tokio::spawn(async move {
                    let mut out = Vec::with_capacity(n);
                    let mut hs = JoinSet::new();
                    for _ in 0..n {
                        let mut c = listener.accept().await?;
                        let (key, info) = (key.clone(), info.clone());
                        hs.spawn(async move {
                            c.handshake(&info, &key, &idle_descs()).await?;
                            anyhow::Ok(c)
                        });
                        while let Some(r) = hs.try_join_next() {
                            out.push(r??);
                        }
                    }
                    while let Some(r) = hs.join_next().await {
                        out.push(r??);
                    }
                    anyhow::Ok(out)
                })
            };
            let next = Arc::new(AtomicUsize::new(0));
            let mut dials = JoinSet::new();
            for _ in 0..IDLE_PARALLEL {
                let (dialer, to, next, kd, id) =
                    (dialer.clone(), to.clone(), next.clone(), kd.clone(), id.clone());
                dials.spawn(async move {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let mut c = dialer.dial(&to).await?;
                        c.handshake(&id, &kd, &idle_descs()).await?;
                        mine.push(c);
                    }
                    anyhow::Ok(mine)
                });
            }
            let mut ends = Vec::with_capacity(2 * n);
            while let Some(r) = dials.join_next().await {
                ends.extend(r??);
            }
            ends.extend(tokio::time::timeout(T, accept).await.context("accept stuck")???);
            held.lock().map_err(|_| anyhow!("poisoned"))?.extend(ends);
            event(&serde_json::json!({"event": "done", "count": n}))?;
            while lines.recv().await.is_some() {}
            return Ok(());
        }
        let (transport, at) = listening(kind, &key, LOOPBACK, &QuicConfig::default()).await?;
        let EndpointAddr::Socket(addr) = at.addr else { bail!("not a socket endpoint") };
        event(&serde_json::json!({"event": "listening", "addr": addr.to_string()}))?;
        let (done_tx, mut done) = mpsc::channel::<anyhow::Result<Box<dyn Connection>>>(64);
        loop {
            tokio::select! {
                line = lines.recv() => if line.is_none() { return Ok(()) },
                c = transport.accept() => {
                    let mut c = c?;
                    let (key, info, done_tx) = (key.clone(), info.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        let r = c.handshake(&info, &key, &idle_descs()).await.map(|_| c);
                        let _ = done_tx.send(r.map_err(anyhow::Error::from)).await;
                    });
                }
                Some(r) = done.recv() => accepted(r?)?,
            }
        }
    })
}

/// The parent's handle on an idle-RSS child.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<serde_json::Value>,
}

impl Server {
    fn spawn(kind: Kind) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["--idle-server", kind_name(kind)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning the idle server")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stdin = child.stdin.take();
        let (tx, events) = mpsc::channel(64);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                if tx.blocking_send(v).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, stdin, events })
    }

    async fn next(&mut self) -> anyhow::Result<serde_json::Value> {
        tokio::time::timeout(T, self.events.recv())
            .await
            .context("idle server silent")?
            .ok_or_else(|| anyhow!("idle server exited"))
    }

    /// Waits until the server reports `n` connections.
    async fn wait_count(&mut self, n: usize) -> anyhow::Result<()> {
        loop {
            let v = self.next().await?;
            if v.get("count").and_then(serde_json::Value::as_u64) == Some(n as u64) {
                return Ok(());
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes stdin (the server exits) and reaps it; kills it (by its pid) if it has not
    /// exited within 5 s.
    fn finish(mut self) {
        drop(self.stdin.take());
        let pid = self.child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut child = self.child;
        std::thread::spawn(move || {
            let _ = child.wait();
            let _ = tx.send(());
        });
        if rx.recv_timeout(Duration::from_secs(5)).is_err()
            && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// One idle-RSS measurement: `n` idle connections to (MConn, QUIC) or within (memory) a child
/// process; its `VmRSS` before and after.
pub(crate) async fn idle_rss(kind: Kind, n: usize) -> anyhow::Result<IdleRss> {
    ensure!(n > 0, "no connections");
    raise_nofile(2 * n as u64 + FD_MARGIN)?;
    let mut server = Server::spawn(kind)?;
    let result = async {
        let listening = server.next().await?;
        let baseline = rss_mib(server.pid())?;
        let mut held: Vec<Box<dyn Connection>> = Vec::new();
        let mut dialer_keep: Option<Arc<dyn Transport>> = None;
        if kind == Kind::Memory {
            let stdin = server.stdin.as_mut().ok_or_else(|| anyhow!("no stdin"))?;
            writeln!(stdin, "{n}")?;
            stdin.flush()?;
        } else {
            let addr: std::net::SocketAddr = listening
                .get("addr")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| anyhow!("no address in {listening}"))?
                .parse()?;
            let key = Arc::new(NodeKey::generate());
            let (dialer, to): (Arc<dyn Transport>, Endpoint) = match kind {
                Kind::MConn => (
                    Arc::new(MConnTransport::dial_only(MConnConfig::default())),
                    Endpoint::socket(Protocol::MCONN, addr),
                ),
                _ => (
                    // One client endpoint for every dial.
                    Arc::new(QuicTransport::bind(
                        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                        &key,
                        QuicConfig::default(),
                    )?),
                    Endpoint::socket(Protocol::QUIC, addr),
                ),
            };
            let info = Arc::new(idle_info(&key, "idle-dialer"));
            let next = Arc::new(AtomicUsize::new(0));
            let mut dials = JoinSet::new();
            for _ in 0..IDLE_PARALLEL.min(n) {
                let (dialer, to, next, key, info) =
                    (dialer.clone(), to.clone(), next.clone(), key.clone(), info.clone());
                dials.spawn(async move {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let mut c = dialer.dial(&to).await?;
                        c.handshake(&info, &key, &idle_descs()).await?;
                        mine.push(c);
                    }
                    anyhow::Ok(mine)
                });
            }
            let dialled = async {
                while let Some(r) = dials.join_next().await {
                    held.extend(r??);
                }
                anyhow::Ok(())
            };
            tokio::time::timeout(T * 4, dialled).await.context("dialling timed out")??;
            dialer_keep = Some(dialer);
        }
        server.wait_count(n).await?;
        // Settle: part of the measurement's definition (connections idle), not an event wait.
        tokio::time::sleep(IDLE_SETTLE).await;
        let total = rss_mib(server.pid())?;
        drop((held, dialer_keep));
        anyhow::Ok(IdleRss {
            conns: n,
            baseline_mib: baseline,
            total_mib: total,
            kib_per_conn: (total - baseline) * 1024.0 / n as f64,
        })
    }
    .await;
    let _ = tokio::task::spawn_blocking(move || server.finish()).await;
    result
}

/// What one repetition of a row measured.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Measured {
    /// A QoS row.
    Qos(QosSample),
    /// A slow-receiver row.
    Slow(SlowSample),
    /// An idle-connection row.
    Idle(IdleRss),
}

/// Runs one repetition of a row.
type RunFn = Box<dyn Fn(&tokio::runtime::Runtime, &Profile) -> anyhow::Result<Measured>>;

/// A row of this module: id (for `--only`), description, and how to run it.
pub(crate) struct Row {
    /// Row id, e.g. `qos.quic-rr`.
    pub(crate) id: String,
    /// What it measures.
    pub(crate) what: String,
    /// One repetition.
    pub(crate) run: RunFn,
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row").field("id", &self.id).finish()
    }
}

fn row(
    id: impl Into<String>,
    what: impl Into<String>,
    run: impl Fn(&tokio::runtime::Runtime, &Profile) -> anyhow::Result<Measured> + 'static,
) -> Row {
    Row { id: id.into(), what: what.into(), run: Box::new(run) }
}

/// A runtime with one worker: a QoS row's sending node runs on one, its receiving node on
/// another, as two single-core processes would.
fn node_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?)
}

/// Every row of this module for profile `p`, in run order; rows with a Go end only if `go`
/// (the Go peer is built): `qos.mconn-gg` and `idle-rss.go-mconn.<n>` (see [`crate::go`]).
pub(crate) fn rows(p: &Profile, go: bool) -> Vec<Row> {
    let mut v = vec![
        row(
            "qos.mconn-rr",
            "MConn Rust<->Rust, router: 200 B probes beside 64 KiB bulk",
            |_, p| {
                node_runtime()?
                    .block_on(qos(Kind::MConn, 64 << 10, p.qos_probes))
                    .map(Measured::Qos)
            },
        ),
        row("qos.quic-rr", "QUIC Rust<->Rust, router: 200 B probes beside 64 KiB bulk", |_, p| {
            node_runtime()?.block_on(qos(Kind::Quic, 64 << 10, p.qos_probes)).map(Measured::Qos)
        }),
        row("qos.lp2p-rr", "lp2p Rust<->Rust, router: 200 B probes beside 64 KiB bulk", |_, p| {
            node_runtime()?.block_on(qos(Kind::Lp2p, 64 << 10, p.qos_probes)).map(Measured::Qos)
        }),
    ];
    if go {
        v.push(row(
            "qos.mconn-gg",
            "MConn Go<->Go (gopeer): 200 B probes beside 64 KiB bulk",
            |rt, p| crate::go::qos_gogo(rt, 64 << 10, p.qos_probes).map(Measured::Qos),
        ));
    }
    for (kind, policy) in [
        (Kind::MConn, SlowPolicy::Drop),
        (Kind::Quic, SlowPolicy::Drop),
        (Kind::MConn, SlowPolicy::Wait),
        (Kind::Quic, SlowPolicy::Wait),
    ] {
        let (name, pol) = match policy {
            SlowPolicy::Drop => ("drop", "DropNewest (default)"),
            SlowPolicy::Wait => ("wait", "Wait (backpressure)"),
        };
        v.push(row(
            format!("slow.{}.{name}", kind_name(kind)),
            format!(
                "{} router, 64 KiB broadcast, {pol}: fast peer beside one sleeping {} ms/msg",
                kind_name(kind),
                SLOW_DELAY.as_millis()
            ),
            move |rt, p| {
                rt.block_on(slow_receiver(kind, policy, p.slow_window)).map(Measured::Slow)
            },
        ));
    }
    for &n in &p.idle_conns {
        for kind in [Kind::MConn, Kind::Quic, Kind::Memory] {
            let what = match kind {
                Kind::Memory => format!("memory: {n} idle pairs, both ends in one child process"),
                _ => format!("{}: {n} idle inbound connections, server process", kind_name(kind)),
            };
            v.push(row(format!("idle-rss.{}.{n}", kind_name(kind)), what, move |rt, _| {
                rt.block_on(idle_rss(kind, n)).map(Measured::Idle)
            }));
        }
        if go {
            v.push(row(
                format!("idle-rss.go-mconn.{n}"),
                format!("Go (gopeer) MConn: {n} idle inbound connections from Rust"),
                move |rt, _| crate::go::idle_rss(rt, n).map(Measured::Idle),
            ));
        }
    }
    v
}

/// A row's repetitions.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RowResult {
    /// [`Row::id`].
    pub(crate) id: String,
    /// [`Row::what`].
    pub(crate) what: String,
    /// One per successful repetition.
    pub(crate) samples: Vec<Measured>,
    /// The first error, if any repetition failed.
    pub(crate) error: Option<String>,
}

impl Measured {
    /// One line for the progress log.
    pub(crate) fn brief(&self) -> String {
        match self {
            Self::Qos(q) => format!(
                "idle p50/p99 {:.2}/{:.2} ms, loaded {:.2}/{:.2} ms, bulk {:.0} MB/s",
                q.idle_p50_ms, q.idle_p99_ms, q.loaded_p50_ms, q.loaded_p99_ms, q.bulk_mb_s
            ),
            Self::Slow(s) => format!(
                "solo {:.0} MB/s, with slow {:.0} MB/s, ratio {:.3} (L got {}, dropped {})",
                s.solo_mb_s, s.with_slow_mb_s, s.ratio, s.slow_received, s.dropped
            ),
            Self::Idle(i) => format!(
                "{} conns: {:.1} -> {:.1} MiB, {:.1} KiB/conn",
                i.conns, i.baseline_mib, i.total_mib, i.kib_per_conn
            ),
        }
    }
}
