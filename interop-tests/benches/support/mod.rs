//! The Rust side of `interop-tests/gopeer`'s flood/sink protocol, over the MConn transport's
//! [`Connection`] API (handshake, then `send` / `receive`; no router). Shared by the
//! `mconn_matrix` bench and the `gopeer` test.
//!
//! Protocol (see `gopeer/main.go`): every message is a `tendermint.mempool.Message{Txs{[tx]}}`
//! of exactly `size` bytes on [`CHANNEL`]; the tx starts with an 8-byte big-endian sequence
//! number 0, 1, 2, … The sink checks size and order and, after the last message, sends one
//! message with the single tx `ack`; the flood stops when that arrives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
/// Length of the sequence number at the start of every flooded transaction.
const SEQ_LEN: usize = 8;

/// Our channel descriptors: [`CHANNEL`] with the gopeer's priority (5) and message limit.
pub(crate) fn descriptors() -> [ChannelDescriptor; 1] {
    [ChannelDescriptor::new(CHANNEL).with_priority(5).with_max_message_size(MAX_MESSAGE_SIZE)]
}

/// This process's CPU time (user + system, all threads), in seconds.
pub(crate) fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
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
    transport: MConnTransport,
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
        Ok(Self { key, info, transport, port })
    }

    /// Our node ID.
    pub(crate) fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    /// `<id>@127.0.0.1:<port>`.
    pub(crate) fn address(&self) -> String {
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

    /// Dials `<id>@host:port` and handshakes; checks the peer's ID and network.
    pub(crate) async fn dial(&self, address: &str) -> anyhow::Result<Box<dyn Connection>> {
        let (id, addr) = address.split_once('@').ok_or_else(|| anyhow!("no id in {address}"))?;
        let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
        let mut conn = self
            .transport
            .dial(&Endpoint::socket(Protocol::MCONN, addr))
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
        .find(|&l| l >= SEQ_LEN && wrapped_len(l) == size)
        .ok_or_else(|| anyhow!("no tx length wraps to exactly {size} bytes"))
}

/// Builds the flood's messages: a template of `size` bytes, copied per message with the
/// sequence number patched in (one allocation and copy per message, as Go's marshalling).
#[derive(Debug)]
pub(crate) struct Messages {
    template: Vec<u8>,
    seq_at: usize,
}

impl Messages {
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

    pub(crate) fn get(&self, seq: u64) -> Bytes {
        let mut b = BytesMut::from(&self.template[..]);
        b[self.seq_at..self.seq_at + SEQ_LEN].copy_from_slice(&seq.to_be_bytes());
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

fn ack_message() -> Bytes {
    Message { sum: Some(Sum::Txs(Txs { txs: vec![ACK_TX.to_vec()] })) }.encode_to_vec().into()
}

/// Sends `count` messages of `size` bytes, then waits (at most `timeout` in all) for the
/// acknowledgement.
pub(crate) async fn flood(
    conn: &dyn Connection,
    size: usize,
    count: u64,
    timeout: Duration,
) -> anyhow::Result<Measure> {
    let messages = Messages::new(size)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let start = Instant::now();
    let cpu = cpu_seconds();
    let run = async {
        for seq in 0..count {
            conn.send(CHANNEL, messages.get(seq))
                .await
                .with_context(|| format!("sending message {seq} of {count}"))?;
        }
        let (channel, bytes) = conn.receive().await.context("waiting for the ack")?;
        ensure!(channel == CHANNEL, "message on unexpected channel {channel:?}");
        let txs = decode_txs(&bytes)?;
        ensure!(txs == [ACK_TX], "expected the ack, got {} txs", txs.len());
        anyhow::Ok(())
    };
    tokio::time::timeout_at(deadline, run)
        .await
        .map_err(|_| anyhow!("flood of {count} messages not acknowledged within {timeout:?}"))??;
    Ok(Measure {
        messages: count,
        bytes: count * size as u64,
        seconds: start.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    })
}

/// Receives `count` messages of `size` bytes (checking size and sequence), acknowledges, waits
/// (at most 5 s) for the flood to hang up and closes the connection.
pub(crate) async fn sink(
    conn: &dyn Connection,
    size: usize,
    count: u64,
    timeout: Duration,
) -> anyhow::Result<Measure> {
    let tx_len = tx_len_for(size)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = 0u64;
    let mut first = None;
    let run = async {
        while got < count {
            let (channel, bytes) = conn
                .receive()
                .await
                .with_context(|| format!("receiving message {got} of {count}"))?;
            if first.is_none() {
                first = Some((Instant::now(), cpu_seconds()));
            }
            ensure!(channel == CHANNEL, "message on unexpected channel {channel:?}");
            ensure!(bytes.len() == size, "message {got}: {} bytes, expected {size}", bytes.len());
            for tx in decode_txs(&bytes)? {
                ensure!(tx.len() == tx_len, "message {got}: tx of {} bytes", tx.len());
                let seq = u64::from_be_bytes(tx[..SEQ_LEN].try_into()?);
                ensure!(seq == got, "message {got}: sequence number {seq} (lost or reordered)");
                got += 1;
            }
        }
        anyhow::Ok((Instant::now(), cpu_seconds()))
    };
    let (end, end_cpu) = tokio::time::timeout_at(deadline, run)
        .await
        .map_err(|_| anyhow!("only {got} of {count} messages within {timeout:?}"))??;
    conn.send(CHANNEL, ack_message()).await.context("sending the ack")?;
    // The flood hangs up when the ack arrives; closing first would make its end log our EOF.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.receive()).await;
    conn.close().await;
    let (start, cpu) = first.ok_or_else(|| anyhow!("no message"))?;
    Ok(Measure {
        messages: got,
        bytes: got * size as u64,
        seconds: (end - start).as_secs_f64(),
        cpu_seconds: end_cpu - cpu,
    })
}
