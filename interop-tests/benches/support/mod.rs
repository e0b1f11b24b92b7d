//! The Rust side of `interop-tests/gopeer`'s flood/sink protocol, over the MConn transport's
//! [`Connection`] API (handshake, then `send` / `receive`; no router). Shared by the
//! `mconn_matrix` bench and the `gopeer` test.
//!
//! Protocol (see `gopeer/main.go`'s header comment): every message is a
//! `tendermint.mempool.Message{Txs{[tx]}}` of exactly `size` bytes on [`CHANNEL`]; the tx
//! starts with an 8-byte big-endian sequence number and an 8-byte big-endian send time (Unix
//! nanoseconds, CLOCK_REALTIME). Send-drain: the sink checks size and order (concurrency 1) or
//! that every sequence number arrives exactly once (more senders) and, after the last message,
//! sends one message with the single tx `ack`; the flood stops when that arrives.
//! Send-timeframe: the flood sends for a duration, then the tx `end`; the sink counts what
//! arrives within the duration of the first message and acknowledges the `end`. The sink
//! reports one-way latency quantiles of the counted messages.

// Each user (the bench runner, the `mconn_matrix` bench, the `gopeer` test) needs a part.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use bytes::{Bytes, BytesMut};
use p2p::router::ChannelDescriptor;
use p2p::{ChannelId, Connection, Endpoint, NodeId, NodeInfo, NodeKey, Protocol, Transport};
use p2p_proto::tendermint::mempool::{Message, Txs, message::Sum};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use prost::Message as _;

/// The bench channel: the gopeer's default `--channel`.
pub(crate) const CHANNEL: ChannelId = ChannelId(0x77);
/// Largest message on [`CHANNEL`], as the gopeer's `RecvMessageCapacity` (2 MiB).
pub(crate) const MAX_MESSAGE_SIZE: usize = 2 << 20;
/// The acknowledgement's only transaction.
pub(crate) const ACK_TX: &[u8] = b"ack";
/// The end marker's only transaction (send-timeframe: nothing more follows).
pub(crate) const END_TX: &[u8] = b"end";
/// Length of the sequence number and send time at the start of every flooded transaction.
const HEADER_LEN: usize = 16;

/// Our channel descriptors: [`CHANNEL`] with the gopeer's priority (5) and message limit.
pub(crate) fn descriptors() -> [ChannelDescriptor; 1] {
    [ChannelDescriptor::new(CHANNEL).with_priority(5).with_max_message_size(MAX_MESSAGE_SIZE)]
}

/// This process's CPU time (user + system, all threads), in seconds.
pub(crate) fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Now as Unix nanoseconds (CLOCK_REALTIME), the payload's send-time clock.
pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// One-way latency quantiles, ms (nearest rank).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50_ms: Option<f64>,
    /// 99th percentile.
    pub(crate) p99_ms: Option<f64>,
}

impl Latency {
    /// The quantiles of latencies in ns (sorted here).
    pub(crate) fn of(mut nanos: Vec<u64>) -> Self {
        nanos.sort_unstable();
        let q = |q: f64| {
            let rank = ((nanos.len() as f64 * q).ceil() as usize).saturating_sub(1);
            nanos.get(rank).map(|ns| *ns as f64 / 1e6)
        };
        Self { p50_ms: q(0.50), p99_ms: q(0.99) }
    }
}

/// What one end measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measure {
    /// Messages sent or received.
    pub(crate) messages: u64,
    /// Their encoded bytes.
    pub(crate) bytes: u64,
    /// Sink: first to last received message; flood: first send to acknowledgement.
    pub(crate) seconds: f64,
    /// CPU seconds of this process over the same interval.
    pub(crate) cpu_seconds: f64,
}

/// A Rust node on the MConn transport with [`CHANNEL`], for one connection at a time.
#[derive(Debug)]
pub(crate) struct RustPeer {
    key: NodeKey,
    info: NodeInfo,
    transport: Box<dyn Transport>,
    protocol: Protocol,
    port: u16,
}

impl RustPeer {
    /// Listens on 127.0.0.1 (a free port); `chain_id` is our NodeInfo's network.
    pub(crate) async fn listen(chain_id: &str, moniker: &str) -> anyhow::Result<Self> {
        let transport = MConnTransport::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config())
            .await
            .context("binding the Rust MConn transport")?;
        let port = transport.local_addr().ok_or_else(|| anyhow!("no local address"))?.port();
        let key = NodeKey::generate();
        let info = NodeInfo::new(key.node_id(), chain_id, moniker, [CHANNEL])
            .with_listen_addr(format!("127.0.0.1:{port}"));
        Ok(Self { key, info, transport: Box::new(transport), protocol: Protocol::MCONN, port })
    }

    /// Listens for CometBFT's lp2p on 127.0.0.1 (a free UDP port): the Rust end of a `golp2p`
    /// pairing. No greeting (the first bench message provisions us at a Go peer), no ping.
    pub(crate) async fn listen_lp2p(chain_id: &str, moniker: &str) -> anyhow::Result<Self> {
        let key = NodeKey::generate();
        let mut config = p2p_transport_lp2p::Lp2pConfig::default();
        config.greeting = None;
        config.ping_on_connect = false;
        let transport = p2p_transport_lp2p::Lp2pTransport::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &key,
            p2p_quic_endpoint::EndpointConfig::default(),
            config,
        )
        .context("binding the Rust lp2p transport")?;
        let port = transport.local_addr().port();
        let info = NodeInfo::new(key.node_id(), chain_id, moniker, [CHANNEL])
            .with_listen_addr(format!("127.0.0.1:{port}"));
        Ok(Self { key, info, transport: Box::new(transport), protocol: Protocol::LP2P, port })
    }

    /// Whether messages arrive in order (not on lp2p).
    pub(crate) fn ordered(&self) -> bool {
        self.protocol != Protocol::LP2P
    }

    /// Our node ID.
    pub(crate) fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    /// `<id>@127.0.0.1:<port>` (lp2p: the libp2p peer ID).
    pub(crate) fn address(&self) -> String {
        if self.protocol == Protocol::LP2P {
            let id = p2p::peer_id::libp2p_peer_id(&self.key.public_key());
            return format!("{id}@127.0.0.1:{}", self.port);
        }
        format!("{}@127.0.0.1:{}", self.node_id(), self.port)
    }

    /// Accepts one connection and handshakes; checks the peer's network.
    pub(crate) async fn accept(&self) -> anyhow::Result<Box<dyn Connection>> {
        let mut conn = self.transport.accept().await.context("accepting")?;
        let (info, _) = conn
            .handshake(&self.info, &self.key, &descriptors())
            .await
            .context("handshake (inbound)")?;
        self.check_peer(&info)?;
        Ok(conn)
    }

    /// Accepts one connection and closes it before the handshake (a peer whose first dial
    /// fails).
    #[allow(dead_code)]
    pub(crate) async fn refuse_one(&self) -> anyhow::Result<()> {
        drop(self.transport.accept().await.context("accepting")?);
        Ok(())
    }

    /// Dials `<id>@host:port` (lp2p: `<peer id>@host:port`) and handshakes; checks the peer's
    /// ID and network.
    pub(crate) async fn dial(&self, address: &str) -> anyhow::Result<Box<dyn Connection>> {
        let (id, addr) = address.split_once('@').ok_or_else(|| anyhow!("no id in {address}"))?;
        let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
        let id = if self.protocol == Protocol::LP2P {
            p2p::peer_id::node_id_of_peer_id(id)?.to_string()
        } else {
            id.to_owned()
        };
        let mut conn = self
            .transport
            .dial(&Endpoint::socket(self.protocol.clone(), addr))
            .await
            .with_context(|| format!("dialing {address}"))?;
        let (info, key) = conn
            .handshake(&self.info, &self.key, &descriptors())
            .await
            .context("handshake (outbound)")?;
        let got = NodeId::from_public_key(&key).to_string();
        ensure!(got == id, "dialed {id} but the peer's key is {got}");
        self.check_peer(&info)?;
        Ok(conn)
    }

    fn check_peer(&self, info: &NodeInfo) -> anyhow::Result<()> {
        ensure!(
            info.network == self.info.network,
            "peer is on network {:?}, we are on {:?}",
            info.network,
            self.info.network
        );
        ensure!(info.channels.contains(&CHANNEL), "peer lacks channel {CHANNEL:?}");
        Ok(())
    }
}

/// Our MConn settings: the defaults (1024-byte packet payloads as CometBFT's, no rate limits).
fn config() -> MConnConfig {
    MConnConfig::default()
}

/// Length of the protobuf varint of `x`.
fn varint_len(mut x: usize) -> usize {
    let mut n = 1;
    while x >= 0x80 {
        x >>= 7;
        n += 1;
    }
    n
}

/// Appends `x` as a protobuf varint.
fn put_varint(out: &mut Vec<u8>, mut x: usize) {
    while x >= 0x80 {
        out.push((x as u8 & 0x7f) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// Encoded size of `Message{Txs{[tx]}}` for a tx of `tx_len` bytes.
fn wrapped_len(tx_len: usize) -> usize {
    let inner = 1 + varint_len(tx_len) + tx_len;
    1 + varint_len(inner) + inner
}

/// The tx length whose wrapped message is exactly `size` bytes (as the gopeer computes it).
pub(crate) fn tx_len_for(size: usize) -> anyhow::Result<usize> {
    (size.saturating_sub(12)..=size.saturating_sub(2))
        .rev()
        .find(|&l| l > HEADER_LEN && wrapped_len(l) == size)
        .ok_or_else(|| anyhow!("no tx length wraps to exactly {size} bytes"))
}

/// Builds the flood's messages: a template of `size` bytes, copied per message with the
/// sequence number and send time patched in (one allocation and copy per message, as Go's
/// marshalling).
#[derive(Debug)]
pub(crate) struct Messages {
    template: Vec<u8>,
    seq_at: usize,
}

impl Messages {
    /// The template for messages of exactly `size` encoded bytes.
    pub(crate) fn new(size: usize) -> anyhow::Result<Self> {
        let tx_len = tx_len_for(size)?;
        let mut template = Vec::with_capacity(size);
        template.push(0x0a); // Message.txs, length-delimited
        put_varint(&mut template, 1 + varint_len(tx_len) + tx_len);
        template.push(0x0a); // Txs.txs, length-delimited
        put_varint(&mut template, tx_len);
        let seq_at = template.len();
        template.extend((0..tx_len).map(|i| i as u8));
        ensure!(template.len() == size, "template is {} bytes, not {size}", template.len());
        Ok(Self { template, seq_at })
    }

    /// Message `seq`, stamped with the current time.
    pub(crate) fn get(&self, seq: u64) -> Bytes {
        let mut b = BytesMut::from(&self.template[..]);
        b[self.seq_at..self.seq_at + 8].copy_from_slice(&seq.to_be_bytes());
        b[self.seq_at + 8..self.seq_at + HEADER_LEN].copy_from_slice(&unix_nanos().to_be_bytes());
        b.freeze()
    }
}

/// Decodes a mempool wrapper message into its transactions.
fn decode_txs(bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    match Message::decode(bytes).context("decoding a mempool Message")?.sum {
        Some(Sum::Txs(Txs { txs })) => Ok(txs),
        None => bail!("mempool Message without Txs"),
    }
}

/// A message with the single transaction `tx` (the ack or the end marker).
fn control_message(tx: &[u8]) -> Bytes {
    Message { sum: Some(Sum::Txs(Txs { txs: vec![tx.to_vec()] })) }.encode_to_vec().into()
}

/// What a flood sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FloodSpec {
    /// Encoded message size.
    pub(crate) size: usize,
    /// Messages per connection (send-drain; ignored with `duration`).
    pub(crate) count: u64,
    /// Sending tasks (task j sends sequence numbers j, j + n, …).
    pub(crate) concurrency: usize,
    /// Send-timeframe: send for this long, then the end marker.
    pub(crate) duration: Option<Duration>,
    /// Limit of the whole exchange, acknowledgements included.
    pub(crate) timeout: Duration,
}

/// Sends sequence numbers `first`, `first + step`, … below `limit` to every connection of
/// `conns` (each message to all), stopping before a send at or after `stop`; returns how many
/// it sent (per connection).
async fn send_seqs(
    conns: &[&dyn Connection],
    messages: &Messages,
    (first, step, limit): (u64, u64, u64),
    stop: Option<Instant>,
) -> anyhow::Result<u64> {
    let mut sent = 0;
    let mut seq = first;
    while seq < limit && stop.is_none_or(|s| Instant::now() < s) {
        let m = messages.get(seq);
        for c in conns {
            c.send(CHANNEL, m.clone()).await.with_context(|| format!("sending message {seq}"))?;
        }
        sent += 1;
        seq = seq.saturating_add(step);
    }
    Ok(sent)
}

/// Waits for the acknowledgement on every connection of `conns`, in turn.
async fn await_acks(conns: &[&dyn Connection]) -> anyhow::Result<()> {
    for (i, c) in conns.iter().enumerate() {
        let (channel, bytes) = c.receive().await.with_context(|| format!("ack of peer {i}"))?;
        ensure!(channel == CHANNEL, "message on unexpected channel {channel:?}");
        let txs = decode_txs(&bytes)?;
        ensure!(txs == [ACK_TX], "expected the ack, got {} txs", txs.len());
    }
    Ok(())
}

/// Sends `count` messages of `size` bytes from one task, then waits (at most `timeout` in
/// all) for the acknowledgement.
pub(crate) async fn flood(
    conn: &dyn Connection,
    size: usize,
    count: u64,
    timeout: Duration,
) -> anyhow::Result<Measure> {
    let messages = Messages::new(size)?;
    let start = Instant::now();
    let cpu = cpu_seconds();
    let run = async {
        send_seqs(&[conn], &messages, (0, 1, count), None).await?;
        await_acks(&[conn]).await
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| anyhow!("flood of {count} messages not acknowledged within {timeout:?}"))??;
    Ok(Measure {
        messages: count,
        bytes: count * size as u64,
        seconds: start.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    })
}

/// Floods every connection of `conns` as `spec` says (every message to all of them, from
/// `spec.concurrency` tasks), then sends the end marker (send-timeframe) and waits for every
/// acknowledgement. `messages` in the result is per connection.
pub(crate) async fn flood_to(
    conns: &[Arc<dyn Connection>],
    spec: &FloodSpec,
) -> anyhow::Result<Measure> {
    let messages = Arc::new(Messages::new(spec.size)?);
    let start = Instant::now();
    let cpu = cpu_seconds();
    let stop = spec.duration.map(|d| start + d);
    let limit = if spec.duration.is_some() { u64::MAX } else { spec.count };
    let step = spec.concurrency.max(1) as u64;
    let run = async {
        let mut senders = tokio::task::JoinSet::new();
        for j in 0..step {
            let (conns, messages) = (conns.to_vec(), messages.clone());
            senders.spawn(async move {
                let refs: Vec<&dyn Connection> = conns.iter().map(AsRef::as_ref).collect();
                send_seqs(&refs, &messages, (j, step, limit), stop).await
            });
        }
        let mut sent = 0;
        while let Some(r) = senders.join_next().await {
            sent += r.context("sender task")??;
        }
        let refs: Vec<&dyn Connection> = conns.iter().map(AsRef::as_ref).collect();
        if spec.duration.is_some() {
            for c in &refs {
                c.send(CHANNEL, control_message(END_TX)).await.context("sending the end")?;
            }
        }
        await_acks(&refs).await?;
        anyhow::Ok(sent)
    };
    let sent = tokio::time::timeout(spec.timeout, run)
        .await
        .map_err(|_| anyhow!("flood not acknowledged within {:?}", spec.timeout))??;
    Ok(Measure {
        messages: sent,
        bytes: sent * spec.size as u64,
        seconds: start.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    })
}

/// What a sink expects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SinkSpec {
    /// Encoded message size.
    pub(crate) size: usize,
    /// Messages to expect (send-drain; ignored with `duration`).
    pub(crate) count: u64,
    /// The flood's concurrency: 1 checks the order, more that every number arrives once.
    pub(crate) concurrency: usize,
    /// Sleep after every counted message.
    pub(crate) delay: Duration,
    /// Send-timeframe: count what arrives within this long of the first message, then wait
    /// for the end marker.
    pub(crate) duration: Option<Duration>,
    /// Limit of the whole exchange.
    pub(crate) timeout: Duration,
    /// Whether the transport keeps per-channel order (lp2p does not: then every number is
    /// checked to arrive once, and the end marker may overtake messages of the timeframe).
    pub(crate) ordered: bool,
}

/// What a sink measured: the counted messages (send-timeframe: `seconds` is the duration) and
/// their latency.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SinkReport {
    /// Counted messages, bytes, seconds, CPU.
    pub(crate) measure: Measure,
    /// One-way latency of the counted messages.
    pub(crate) latency: Latency,
}

/// The sink's sequence-number check: in order, or each number once (a growable bitset).
#[derive(Debug)]
enum SeqCheck {
    /// The next expected number.
    InOrder(u64),
    /// The numbers seen so far.
    Once(Vec<u64>),
}

impl SeqCheck {
    /// Accepts `seq` (below `limit`) or says why not.
    fn check(&mut self, seq: u64, limit: u64) -> anyhow::Result<()> {
        match self {
            Self::InOrder(next) => {
                ensure!(seq == *next, "sequence number {seq}, expected {next} (lost or reordered)");
                *next += 1;
            }
            Self::Once(bits) => {
                ensure!(seq < limit, "sequence number {seq} out of range");
                let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                if bits.len() <= word {
                    bits.resize(word + 1, 0);
                }
                let w = bits.get_mut(word).ok_or_else(|| anyhow!("bitset"))?;
                ensure!(*w & bit == 0, "sequence number {seq} arrived twice");
                *w |= bit;
            }
        }
        Ok(())
    }
}

/// Receives `count` messages of `size` bytes (checking size and sequence), acknowledges, waits
/// (at most 5 s) for the flood to hang up and closes the connection.
pub(crate) async fn sink(
    conn: &dyn Connection,
    size: usize,
    count: u64,
    timeout: Duration,
) -> anyhow::Result<Measure> {
    let spec = SinkSpec {
        size,
        count,
        concurrency: 1,
        delay: Duration::ZERO,
        duration: None,
        timeout,
        ordered: true,
    };
    Ok(sink_with(conn, &spec).await?.measure)
}

/// Receives as `spec` says (see the module comment), acknowledges, waits (at most 5 s) for the
/// flood to hang up and closes the connection.
pub(crate) async fn sink_with(
    conn: &dyn Connection,
    spec: &SinkSpec,
) -> anyhow::Result<SinkReport> {
    let tx_len = tx_len_for(spec.size)?;
    let mut check = if spec.concurrency <= 1 && spec.ordered {
        SeqCheck::InOrder(0)
    } else {
        SeqCheck::Once(Vec::new())
    };
    // Sequence numbers of a timeframe are unbounded; this only guards the bitset's size.
    let limit = spec.duration.map_or(spec.count, |_| 1 << 40);
    let mut got = 0u64;
    let mut first = None;
    let mut last = None;
    let mut latencies = Vec::with_capacity(spec.count.min(1 << 20) as usize);
    // Unordered: the end marker may overtake messages of the window; then the window's end
    // (from the first message) is awaited.
    let mut window_end: Option<tokio::time::Instant> = None;
    let run = async {
        loop {
            if spec.duration.is_none() && got == spec.count {
                break;
            }
            let received = match window_end {
                Some(end) => match tokio::time::timeout_at(end, conn.receive()).await {
                    Ok(r) => r,
                    Err(_) => break,
                },
                None => conn.receive().await,
            };
            let (channel, bytes) =
                received.with_context(|| format!("receiving after {got} messages"))?;
            let now = Instant::now();
            let nanos = unix_nanos();
            ensure!(channel == CHANNEL, "message on unexpected channel {channel:?}");
            let txs = decode_txs(&bytes)?;
            if let Some(d) = spec.duration
                && txs == [END_TX]
            {
                match first {
                    Some((start, _)) if !spec.ordered && now - start < d => {
                        window_end = Some(tokio::time::Instant::from_std(start + d));
                        continue;
                    }
                    _ => break,
                }
            }
            ensure!(bytes.len() == spec.size, "{} bytes, expected {}", bytes.len(), spec.size);
            let [tx] = txs.as_slice() else { bail!("{} txs in one message", txs.len()) };
            ensure!(tx.len() == tx_len, "tx of {} bytes", tx.len());
            let seq = u64::from_be_bytes(tx[..8].try_into()?);
            let sent = u64::from_be_bytes(tx[8..HEADER_LEN].try_into()?);
            check.check(seq, limit).with_context(|| format!("after {got} messages"))?;
            let (start, _) = *first.get_or_insert_with(|| (now, cpu_seconds()));
            if spec.duration.is_some_and(|d| now - start > d) {
                continue; // in flight after the window: not counted, not delayed
            }
            got += 1;
            latencies.push(nanos.saturating_sub(sent));
            last = Some((now, cpu_seconds()));
            if !spec.delay.is_zero() {
                tokio::time::sleep(spec.delay).await;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(spec.timeout, run)
        .await
        .map_err(|_| anyhow!("only {got} messages within {:?}", spec.timeout))??;
    conn.send(CHANNEL, control_message(ACK_TX)).await.context("sending the ack")?;
    // The flood hangs up when the ack arrives; closing first would make its end log our EOF.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.receive()).await;
    conn.close().await;
    let ((start, cpu), (end, end_cpu)) =
        first.zip(last).ok_or_else(|| anyhow!("no message counted"))?;
    let seconds = spec.duration.map_or_else(|| (end - start).as_secs_f64(), |d| d.as_secs_f64());
    Ok(SinkReport {
        measure: Measure {
            messages: got,
            bytes: got * spec.size as u64,
            seconds,
            cpu_seconds: end_cpu - cpu,
        },
        latency: Latency::of(latencies),
    })
}
