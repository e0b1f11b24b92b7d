//! Rust ↔ Rust rows, both ends in this process, at the **connection level** (the `Connection`
//! API of each transport: handshake, `send`, `receive`; no router), which is what the
//! CometBFT matrix's per-transport numbers compare; plus the connection-setup rows and the
//! router + memory row.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use bytes::{Bytes, BytesMut};
use p2p::router::{ChannelDescriptor, OverflowPolicy, UnwrapError, Wrapper};
use p2p::{ChannelId, Connection, Endpoint, NodeInfo, NodeKey, Outbound, Protocol, Transport};
use p2p_proto::tendermint::mempool::{Message, Txs, message::Sum};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use p2p_transport_memory::MemoryNetwork;
use p2p_transport_memory::testkit::{TestNode, TestNodeOptions};
use p2p_transport_quic::{QuicConfig, QuicTransport};
use tokio::task::JoinSet;

use crate::sys::{cpu_seconds, peak_rss_mib, reset_peak_rss};
use crate::{GIB, Sample};

/// The bench channel: the Go peer's 0x77, not the 0xAA of CometBFT's bench. A channel ID of
/// 0x80 or more takes a 2-byte varint, so a packet with a full 1024-byte payload and EOF set
/// (the last packet of every message whose size is a multiple of 1024) encodes to 1035 bytes,
/// one more than the 1034-byte limit Go (and our port) derive with channel 0x01; such
/// messages are rejected as a protocol violation. CometBFT's own bench escapes this only by
/// raising the packet payload to 4 MiB.
const CH: ChannelId = ChannelId(0x77);
/// Largest message on [`CH`].
const MAX_MESSAGE: usize = 1 << 20;
/// Bound of every cell (only reached if something hangs).
const LIMIT: Duration = Duration::from_secs(180);
/// Bytes at the start of every payload: sequence number, then send time (µs), big-endian.
const HEADER: usize = 16;

/// A Rust transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `MConnTransport`, default `MConnConfig` (no rate limits, 1024-byte packets).
    MConn,
    /// `QuicTransport`, default `QuicConfig`.
    Quic,
    /// `MemoryTransport` on one `MemoryNetwork` (default buffers).
    Memory,
    /// `Lp2pTransport`, default `Lp2pConfig` without greeting or ping (CometBFT's lp2p: one
    /// stream per message).
    Lp2p,
}

impl Kind {
    /// Whether messages of one channel arrive in the order sent (lp2p: not).
    pub(crate) fn ordered(self) -> bool {
        self != Self::Lp2p
    }
}

/// The lp2p settings of the bench: defaults, no greeting (no Go peer to provision us), no ping.
pub(crate) fn lp2p_config() -> p2p_transport_lp2p::Lp2pConfig {
    let mut c = p2p_transport_lp2p::Lp2pConfig::default();
    c.greeting = None;
    c.ping_on_connect = false;
    c
}

fn lp2p(key: &NodeKey) -> anyhow::Result<p2p_transport_lp2p::Lp2pTransport> {
    Ok(p2p_transport_lp2p::Lp2pTransport::bind(
        localhost(),
        key,
        p2p_quic_endpoint::EndpointConfig::default(),
        lp2p_config(),
    )?)
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn descriptors() -> [ChannelDescriptor; 1] {
    [ChannelDescriptor::new(CH).with_max_message_size(MAX_MESSAGE)]
}

fn node_info(key: &NodeKey, moniker: &str) -> NodeInfo {
    NodeInfo::new(key.node_id(), "testing", moniker, [CH]).with_listen_addr("127.0.0.1:1")
}

/// A connected, handshaken pair and what must outlive it.
struct Pair {
    a: Arc<dyn Connection>,
    b: Arc<dyn Connection>,
    _transports: Vec<Box<dyn Transport>>,
}

async fn handshaken(
    dialer: &dyn Transport,
    listener: &dyn Transport,
    to: &Endpoint,
    keys: (&NodeKey, &NodeKey),
) -> anyhow::Result<(Arc<dyn Connection>, Arc<dyn Connection>)> {
    let (ia, ib) = (node_info(keys.0, "a"), node_info(keys.1, "b"));
    let descs = descriptors();
    let (a, b) = tokio::join!(
        async {
            let mut c = dialer.dial(to).await.context("dial")?;
            c.handshake(&ia, keys.0, &descs).await.context("outbound handshake")?;
            anyhow::Ok(c)
        },
        async {
            let mut c = listener.accept().await.context("accept")?;
            c.handshake(&ib, keys.1, &descs).await.context("inbound handshake")?;
            anyhow::Ok(c)
        }
    );
    Ok((Arc::from(a?), Arc::from(b?)))
}

async fn pair(kind: Kind) -> anyhow::Result<Pair> {
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let (dialer, listener, to): (Box<dyn Transport>, Box<dyn Transport>, Endpoint) = match kind {
        Kind::MConn => {
            let l = MConnTransport::bind(localhost(), MConnConfig::default()).await?;
            let addr = l.local_addr().ok_or_else(|| anyhow!("no local address"))?;
            let d = MConnTransport::dial_only(MConnConfig::default());
            (Box::new(d), Box::new(l), Endpoint::socket(Protocol::MCONN, addr))
        }
        Kind::Quic => {
            let d = QuicTransport::bind(localhost(), &ka, QuicConfig::default())?;
            let l = QuicTransport::bind(localhost(), &kb, QuicConfig::default())?;
            let to = Endpoint::socket(Protocol::QUIC, l.local_addr());
            (Box::new(d), Box::new(l), to)
        }
        Kind::Memory => {
            let net = MemoryNetwork::default();
            let d = net.transport(ka.node_id())?;
            let l = net.transport(kb.node_id())?;
            let to = l.endpoint();
            (Box::new(d), Box::new(l), to)
        }
        Kind::Lp2p => {
            let (d, l) = (lp2p(&ka)?, lp2p(&kb)?);
            let to = Endpoint::socket(Protocol::LP2P, l.local_addr());
            (Box::new(d), Box::new(l), to)
        }
    };
    let (a, b) = handshaken(dialer.as_ref(), listener.as_ref(), &to, (&ka, &kb)).await?;
    Ok(Pair { a, b, _transports: vec![dialer, listener] })
}

/// What a Rust ↔ Rust cell does (after CometBFT's `lp2p/bench_test.go` test types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Test {
    /// Send `count` messages, wait until all have arrived.
    Drain,
    /// Send for this long; what arrives after it is in flight and not counted.
    Timeframe(Duration),
    /// One sender, this many receivers (each its own connection); every message goes to every
    /// receiver (one encoding, cloned per connection); `count` is per receiver.
    Broadcast(usize),
}

/// What one receiver saw.
struct Received {
    /// Latencies in µs.
    latencies: Vec<u64>,
    /// Time of the last counted message.
    last: Instant,
}

/// Receives until `count` messages arrived or `deadline` passed, checking size and (with one
/// sender, no deadline) order; sleeps `delay` after each message.
async fn receive_loop(
    conn: Arc<dyn Connection>,
    size: usize,
    ordered: bool,
    delay: Duration,
    count: usize,
    deadline: Option<tokio::time::Instant>,
    base: Instant,
) -> anyhow::Result<Received> {
    let mut latencies = Vec::with_capacity(count.min(1 << 16));
    let mut last = Instant::now();
    for i in 0..count {
        // `timeout_at` polls its future first, so check the deadline ourselves: a backlog of
        // ready messages must not be counted after it.
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let (ch, msg) = match deadline {
            Some(d) => match tokio::time::timeout_at(d, conn.receive()).await {
                Ok(r) => r,
                Err(_) => break,
            },
            None => conn.receive().await,
        }
        .with_context(|| format!("receiving message {i}"))?;
        let now = base.elapsed().as_micros() as u64;
        last = Instant::now();
        ensure!(ch == CH && msg.len() == size, "message {i}: {} bytes on {ch:?}", msg.len());
        let seq = read_u64(&msg, 0)?;
        ensure!(!ordered || seq == i as u64, "message {i}: sequence number {seq}");
        latencies.push(now.saturating_sub(read_u64(&msg, 8)?));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    Ok(Received { latencies, last })
}

/// Sender `j` of `cc`: sequence numbers j, j + cc, … below `count`, each to every connection
/// of `conns`, until `deadline` (a send still waiting then is abandoned).
async fn send_loop(
    conns: Vec<Arc<dyn Connection>>,
    size: usize,
    j: usize,
    cc: usize,
    count: usize,
    deadline: Option<tokio::time::Instant>,
    base: Instant,
) -> anyhow::Result<()> {
    for seq in (j..count).step_by(cc) {
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let mut m = BytesMut::with_capacity(size);
        m.extend_from_slice(&(seq as u64).to_be_bytes());
        m.extend_from_slice(&(base.elapsed().as_micros() as u64).to_be_bytes());
        m.resize(size, 0xa5);
        let m = m.freeze();
        for c in &conns {
            let sent = match deadline {
                Some(d) => match tokio::time::timeout_at(d, c.send(CH, m.clone())).await {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                },
                None => c.send(CH, m.clone()).await,
            };
            sent.with_context(|| format!("sending message {seq}"))?;
        }
    }
    Ok(())
}

/// One Rust ↔ Rust cell. Rate is payload bytes received over first send → last counted
/// receive (timeframe: over the timeframe), summed over receivers for broadcast; latency
/// quantiles are over all receivers' messages. CPU and peak RSS are this process's (all ends).
pub(crate) async fn run_cell(
    kind: Kind,
    test: Test,
    size: usize,
    cc: usize,
    delay: Duration,
    count: usize,
) -> anyhow::Result<Sample> {
    ensure!(size >= HEADER, "messages must be at least {HEADER} bytes");
    let rss_reset = reset_peak_rss();
    let receivers = match test {
        Test::Broadcast(n) => n.max(1),
        _ => 1,
    };
    let mut pairs = Vec::with_capacity(receivers);
    for _ in 0..receivers {
        pairs.push(pair(kind).await?);
    }
    let (count, timeframe) = match test {
        Test::Timeframe(t) => (usize::MAX, Some(t)),
        _ => (count, None),
    };
    let base = Instant::now();
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let deadline = timeframe.map(|t| tokio::time::Instant::now() + t);
    let mut sinks = JoinSet::new();
    for p in &pairs {
        let ordered = kind.ordered() && cc == 1 && timeframe.is_none();
        sinks.spawn(receive_loop(p.b.clone(), size, ordered, delay, count, deadline, base));
    }
    let mut senders = JoinSet::new();
    let conns: Vec<Arc<dyn Connection>> = pairs.iter().map(|p| p.a.clone()).collect();
    for j in 0..cc {
        senders.spawn(send_loop(conns.clone(), size, j, cc, count, deadline, base));
    }
    let run = async {
        let mut send_error = None;
        while let Some(r) = senders.join_next().await {
            if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                send_error.get_or_insert(e);
                senders.abort_all();
            }
        }
        if let Some(e) = send_error {
            // A receiver's error, if any, is usually the cause; report both.
            sinks.abort_all();
            let mut why = String::new();
            while let Some(r) = sinks.join_next().await {
                if let Ok(Err(s)) = r {
                    why = format!(" (receiver: {s:#})");
                }
            }
            return Err(e.context(format!("sender failed{why}")));
        }
        let mut all = Vec::with_capacity(receivers);
        while let Some(r) = sinks.join_next().await {
            all.push(r??);
        }
        anyhow::Ok(all)
    };
    let limit = LIMIT + timeframe.unwrap_or_default();
    let received = tokio::time::timeout(limit, run).await.context("cell timed out")??;
    let cpu = cpu_seconds() - cpu;
    let rss = peak_rss_mib(None);
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        for p in &pairs {
            tokio::join!(p.a.close(), p.b.close());
        }
    })
    .await;
    let (mut rate, mut msgs, mut bytes) = (0.0, 0.0, 0.0);
    let mut lat = Vec::new();
    for r in received {
        let secs = match timeframe {
            Some(t) => t.as_secs_f64(),
            None => (r.last - start).as_secs_f64(),
        };
        let n = r.latencies.len() as f64;
        rate += n * size as f64 / secs;
        msgs += n / secs;
        bytes += n * size as f64;
        lat.extend(r.latencies);
    }
    ensure!(!lat.is_empty(), "no message arrived");
    lat.sort_unstable();
    Ok(Sample {
        rate,
        msgs,
        p50_ms: percentile_ms(&lat, 0.50),
        p99_ms: percentile_ms(&lat, 0.99),
        cpu_flood: None,
        cpu_sink: None,
        cpu_total: cpu / (bytes / GIB),
        rss_flood_mib: rss,
        rss_sink_mib: rss,
        rss_reset,
    })
}

fn read_u64(msg: &[u8], at: usize) -> anyhow::Result<u64> {
    let b = msg.get(at..at + 8).ok_or_else(|| anyhow!("short message"))?;
    Ok(u64::from_be_bytes(b.try_into()?))
}

/// The `q` quantile of sorted microsecond latencies, in ms (nearest rank).
fn percentile_ms(sorted: &[u64], q: f64) -> Option<f64> {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(rank).map(|us| *us as f64 / 1e3)
}

/// Connection setup: `total` dials + transport handshake + NodeInfo exchange, `parallel` at a
/// time, against one listener (which handshakes every inbound connection and keeps it until
/// the dialer's drop reaches it). Returns handshakes/s and CPU ms per handshake (both sides).
pub(crate) async fn handshakes(
    kind: Kind,
    total: usize,
    parallel: usize,
) -> anyhow::Result<(f64, f64)> {
    let (ka, kb) = (Arc::new(NodeKey::generate()), Arc::new(NodeKey::generate()));
    let (dialer, listener, to): (Arc<dyn Transport>, Arc<dyn Transport>, Endpoint) = match kind {
        Kind::MConn => {
            let l = MConnTransport::bind(localhost(), MConnConfig::default()).await?;
            let addr = l.local_addr().ok_or_else(|| anyhow!("no local address"))?;
            let d = MConnTransport::dial_only(MConnConfig::default());
            (Arc::new(d), Arc::new(l), Endpoint::socket(Protocol::MCONN, addr))
        }
        Kind::Quic => {
            let d = QuicTransport::bind(localhost(), &ka, QuicConfig::default())?;
            let l = QuicTransport::bind(localhost(), &kb, QuicConfig::default())?;
            let to = Endpoint::socket(Protocol::QUIC, l.local_addr());
            (Arc::new(d), Arc::new(l), to)
        }
        Kind::Lp2p => {
            let (d, l) = (lp2p(&ka)?, lp2p(&kb)?);
            let to = Endpoint::socket(Protocol::LP2P, l.local_addr());
            (Arc::new(d), Arc::new(l), to)
        }
        Kind::Memory => anyhow::bail!("no handshake row for the memory transport"),
    };
    let (ia, ib) = (Arc::new(node_info(&ka, "a")), Arc::new(node_info(&kb, "b")));
    let acceptor = tokio::spawn(async move {
        let mut inbound = JoinSet::new();
        for _ in 0..total {
            let mut c = listener.accept().await?;
            let (kb, ib) = (kb.clone(), ib.clone());
            inbound.spawn(async move {
                // The acceptor is done last (a QUIC acceptor reads the dialer's NodeInfo half a
                // round trip after the dialer is up); its drop ends the dialer's wait.
                c.handshake(&ib, &kb, &descriptors()).await?;
                anyhow::Ok(())
            });
        }
        while let Some(r) = inbound.join_next().await {
            r??;
        }
        anyhow::Ok(())
    });
    let next = Arc::new(AtomicUsize::new(0));
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut dialers = JoinSet::new();
    for _ in 0..parallel {
        let (dialer, to, next, ka, ia) =
            (dialer.clone(), to.clone(), next.clone(), ka.clone(), ia.clone());
        dialers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let mut c = dialer.dial(&to).await?;
                c.handshake(&ia, &ka, &descriptors()).await?;
                // Keep the connection until the acceptor is done with it too.
                let _ = c.receive().await;
            }
            anyhow::Ok(())
        });
    }
    let run = async {
        while let Some(r) = dialers.join_next().await {
            r??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(LIMIT, run).await.context("handshakes timed out")??;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    tokio::time::timeout(LIMIT, acceptor).await.context("acceptor timed out")???;
    Ok((total as f64 / secs, cpu * 1e3 / total as f64))
}

/// A mempool transaction as the router's channel message.
#[derive(Debug, Clone)]
struct Tx(Bytes);

impl Wrapper for Tx {
    type Proto = Message;
    fn wrap(self) -> Message {
        Message { sum: Some(Sum::Txs(Txs { txs: vec![self.0.to_vec()] })) }
    }
    fn unwrap(proto: Message) -> Result<Self, UnwrapError> {
        match proto.sum {
            Some(Sum::Txs(mut t)) => Ok(Self(Bytes::from(t.txs.pop().unwrap_or_default()))),
            None => Err(UnwrapError("empty".into())),
        }
    }
}

/// Router + memory transport (the whole stack: `Channel::send` → per-peer queue → writer task →
/// memory connection → reader task → inbound queue → `Channel::recv`): `count` messages of
/// `size` bytes to one peer; deliveries per second.
pub(crate) async fn router_rate(size: usize, count: usize) -> anyhow::Result<f64> {
    let net = MemoryNetwork::default();
    let desc = ChannelDescriptor::new(ChannelId(0x30))
        .with_queue_capacity(1024, 4096)
        .with_max_message_size(MAX_MESSAGE)
        .with_overflow(OverflowPolicy::Wait(Duration::from_secs(30)));
    let mut src = TestNode::new(&net, "src", TestNodeOptions::default());
    let src_ch = src.channel::<Tx>(desc.clone());
    src.start();
    let mut sink = TestNode::new(&net, "sink", TestNodeOptions::default());
    let ch = sink.channel::<Tx>(desc);
    sink.start();
    src.dial(&sink);
    src.wait_up(&[sink.id], Duration::from_secs(10)).await;
    sink.wait_up(&[src.id], Duration::from_secs(10)).await;
    let payload = Bytes::from(vec![7u8; size]);
    let start = Instant::now();
    let (_, mut rx) = ch.split();
    let receiver = tokio::spawn(async move {
        for i in 0..count {
            rx.recv().await.ok_or_else(|| anyhow!("channel closed after {i}"))?;
        }
        anyhow::Ok(())
    });
    let sender = src_ch.sender();
    let run = async {
        for _ in 0..count {
            let out = sender.send(Outbound::broadcast(Tx(payload.clone()))).await?;
            ensure!(out.queued == 1, "queued to {} peers", out.queued);
        }
        receiver.await?
    };
    tokio::time::timeout(LIMIT, run).await.context("router row timed out")??;
    let rate = count as f64 / start.elapsed().as_secs_f64();
    src.router.stop().await;
    sink.router.stop().await;
    Ok(rate)
}
