//! Calibration rows (ceilings), run at the start and at the end of every run:
//!
//! * AEAD: ring's ChaCha20-Poly1305 (the SecretConnection cipher of `transport-mconn`), one
//!   core, seal and open of 1028-byte frames (SecretConnection's plaintext frame) and of
//!   64 KiB. Open includes copying the sealed frame into the work buffer (as a receiver copies
//!   it out of its socket buffer), because opening decrypts in place.
//! * TCP: one loopback stream, 64 KiB writes, no crypto; and the process CPU it costs (both
//!   ends and the kernel work done in their system calls) per GiB, which with the AEAD rates
//!   gives a CPU bound of an encrypted stream on this machine (see the report's notes).
//! * raw quinn: one connection, one unidirectional stream, 64 KiB chunks, with the QUIC
//!   transport's TLS identity, ALPN and windows (as `transport-quic/benches/quic.rs`).
//! * tokio mpsc: 200-byte `Bytes` through one bounded channel (capacity 1024) between two
//!   tasks, messages/s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use bytes::Bytes;
use p2p::NodeKey;
use p2p_transport_quic::{DUMMY_SERVER_NAME, QUIC_ALPN, QuicConfig, QuicTransport, identity};
use quinn::VarInt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound of every network calibration (only reached if something hangs).
const LIMIT: Duration = Duration::from_secs(60);

/// The calibration rows: `(id, description, unit)`.
pub(crate) const ROWS: [(&str, &str, &str); 9] = [
    ("aead_seal_1028", "AEAD seal, ring ChaCha20-Poly1305, 1028 B, 1 core", "MB/s"),
    ("aead_open_1028", "AEAD open, ring ChaCha20-Poly1305, 1028 B, 1 core", "MB/s"),
    ("aead_seal_64k", "AEAD seal, ring ChaCha20-Poly1305, 64 KiB, 1 core", "MB/s"),
    ("aead_open_64k", "AEAD open, ring ChaCha20-Poly1305, 64 KiB, 1 core", "MB/s"),
    ("tcp", "loopback TCP, 1 stream, 64 KiB writes", "MB/s"),
    ("tcp_cpu", "loopback TCP CPU, both ends (user + system)", "s/GiB"),
    ("quinn", "raw quinn, 1 uni stream, 64 KiB chunks", "MB/s"),
    ("mpsc_msgs", "tokio mpsc, 200 B, bounded 1024", "msg/s"),
    ("mpsc_mb", "tokio mpsc, 200 B (payload rate)", "MB/s"),
];

/// Volumes of one calibration pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Volumes {
    /// Minimum duration of each AEAD measurement.
    pub(crate) aead_time: Duration,
    /// Bytes over loopback TCP.
    pub(crate) tcp_bytes: usize,
    /// Bytes over raw quinn.
    pub(crate) quinn_bytes: usize,
    /// Messages through the mpsc channel.
    pub(crate) mpsc_messages: usize,
}

/// One calibration pass: every row of [`ROWS`], in that order (MB/s as 1e6 B/s).
pub(crate) fn run(rt: &tokio::runtime::Runtime, v: Volumes) -> anyhow::Result<Vec<f64>> {
    let mpsc = rt.block_on(mpsc_rate(v.mpsc_messages))?;
    let (tcp, tcp_cpu) = rt.block_on(tcp_rate(v.tcp_bytes))?;
    Ok(vec![
        aead_seal(1028, v.aead_time)? / 1e6,
        aead_open(1028, v.aead_time)? / 1e6,
        aead_seal(64 << 10, v.aead_time)? / 1e6,
        aead_open(64 << 10, v.aead_time)? / 1e6,
        tcp / 1e6,
        tcp_cpu,
        rt.block_on(raw_quinn(v.quinn_bytes))? / 1e6,
        mpsc,
        mpsc * 200.0 / 1e6,
    ])
}

fn aead_key() -> anyhow::Result<LessSafeKey> {
    let key = UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).map_err(|_| anyhow!("AEAD key"))?;
    Ok(LessSafeKey::new(key))
}

/// A 96-bit nonce: four zero bytes, then `n` little-endian (SecretConnection's layout).
fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    for (d, s) in b.iter_mut().skip(4).zip(n.to_le_bytes()) {
        *d = s;
    }
    Nonce::assume_unique_for_key(b)
}

/// Plaintext bytes sealed per second, in frames of `size` bytes, for at least `min`.
fn aead_seal(size: usize, min: Duration) -> anyhow::Result<f64> {
    let key = aead_key()?;
    let mut buf = vec![7u8; size];
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < min {
        for _ in 0..32 {
            let tag = key
                .seal_in_place_separate_tag(nonce(n), Aad::empty(), &mut buf)
                .map_err(|_| anyhow!("seal"))?;
            let _ = std::hint::black_box(tag);
            n += 1;
        }
    }
    Ok(n as f64 * size as f64 / start.elapsed().as_secs_f64())
}

/// Plaintext bytes opened per second, frames of `size` bytes, for at least `min`.
fn aead_open(size: usize, min: Duration) -> anyhow::Result<f64> {
    let key = aead_key()?;
    let mut sealed = vec![7u8; size];
    let tag = key
        .seal_in_place_separate_tag(nonce(0), Aad::empty(), &mut sealed)
        .map_err(|_| anyhow!("seal"))?;
    sealed.extend_from_slice(tag.as_ref());
    let mut work = Vec::with_capacity(sealed.len());
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < min {
        for _ in 0..32 {
            work.clear();
            work.extend_from_slice(&sealed);
            let plain = key
                .open_in_place(nonce(0), Aad::empty(), &mut work)
                .map_err(|_| anyhow!("open"))?;
            let _ = std::hint::black_box(plain);
            n += 1;
        }
    }
    Ok(n as f64 * size as f64 / start.elapsed().as_secs_f64())
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Loopback TCP bytes per second, one stream, 64 KiB writes and reads, and the process CPU
/// seconds per GiB moved.
async fn tcp_rate(total: usize) -> anyhow::Result<(f64, f64)> {
    let listener = tokio::net::TcpListener::bind(localhost()).await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf).await?;
            ensure!(n > 0, "early EOF after {got} bytes");
            got += n;
        }
        anyhow::Ok(())
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![1u8; 64 << 10];
    let (start, cpu) = (Instant::now(), crate::sys::cpu_seconds());
    let mut sent = 0;
    while sent < total {
        s.write_all(&buf).await?;
        sent += buf.len();
    }
    tokio::time::timeout(LIMIT, reader).await.context("TCP calibration timed out")???;
    let cpu = crate::sys::cpu_seconds() - cpu;
    Ok((sent as f64 / start.elapsed().as_secs_f64(), cpu / (sent as f64 / f64::from(1u32 << 30))))
}

/// A quinn endpoint on loopback with the transport's server and client configuration.
fn raw_endpoint(key: &NodeKey) -> anyhow::Result<(quinn::Endpoint, quinn::ClientConfig)> {
    let transport = Arc::new(QuicConfig::default().quinn_transport_config()?);
    let server_tls = QuicServerConfig::try_from(identity::server_config(key, QUIC_ALPN)?)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport.clone());
    let client_tls = QuicClientConfig::try_from(identity::client_config(key, QUIC_ALPN, None)?)?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport);
    // The transport's socket (buffers sized as `QuicTransport` sizes them).
    let socket = QuicTransport::udp_socket(localhost(), &QuicConfig::default())?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)?;
    Ok((endpoint, client))
}

/// Raw quinn payload bytes per second: one unidirectional stream of 64 KiB chunks.
async fn raw_quinn(total: usize) -> anyhow::Result<f64> {
    const CHUNK: usize = 64 << 10;
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let (ea, client) = raw_endpoint(&ka)?;
    let (eb, _) = raw_endpoint(&kb)?;
    let to = eb.local_addr()?;
    let (ca, cb) = tokio::join!(
        async { anyhow::Ok(ea.connect_with(client, to, DUMMY_SERVER_NAME)?.await?) },
        async { anyhow::Ok(eb.accept().await.ok_or_else(|| anyhow!("no incoming"))?.await?) }
    );
    let (ca, cb) = (ca?, cb?);
    let count = total / CHUNK;
    let sink = tokio::spawn(async move {
        let mut stream = cb.accept_uni().await?;
        let mut got = 0;
        let mut chunks: Vec<Bytes> = vec![Bytes::new(); 32];
        while let Some(n) = stream.read_chunks(&mut chunks).await? {
            got += chunks.iter().take(n).map(Bytes::len).sum::<usize>();
        }
        ensure!(got == count * CHUNK, "received {got} bytes of {}", count * CHUNK);
        anyhow::Ok(cb)
    });
    let chunk = Bytes::from(vec![5u8; CHUNK]);
    let start = Instant::now();
    let mut stream = ca.open_uni().await?;
    for _ in 0..count {
        stream.write_chunk(chunk.clone()).await?;
    }
    stream.finish()?;
    let cb =
        tokio::time::timeout(LIMIT, sink).await.context("quinn calibration timed out")???;
    let rate = (count * CHUNK) as f64 / start.elapsed().as_secs_f64();
    ca.close(VarInt::from_u32(0), b"done");
    cb.close(VarInt::from_u32(0), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::join!(ea.wait_idle(), eb.wait_idle())
    })
    .await;
    Ok(rate)
}

/// Messages per second through one bounded tokio mpsc channel (producer → consumer task).
async fn mpsc_rate(count: usize) -> anyhow::Result<f64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let payload = Bytes::from(vec![7u8; 200]);
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        for _ in 0..count {
            rx.recv().await.ok_or_else(|| anyhow!("mpsc closed"))?;
        }
        anyhow::Ok(())
    });
    for _ in 0..count {
        tx.send(payload.clone()).await.map_err(|_| anyhow!("mpsc closed"))?;
    }
    consumer.await??;
    Ok(count as f64 / start.elapsed().as_secs_f64())
}
