//! QUIC transport throughput and connection setup rate, Rust → Rust on loopback, with the raw
//! quinn ceiling and the MConn transport measured in the same run.
//!
//! `cargo bench -p p2p-transport-quic --bench quic` (`-- --quick` for a short run).
//!
//! Rows:
//! * raw quinn ceiling: one QUIC connection, one unidirectional stream, 64 KiB `Bytes` chunks
//!   written with `write_chunk` and read with `read_chunks` (no framing, no copies of our own).
//!   Same TLS identity path (`identity::server_config`/`client_config`, ALPN `p2p-quic/1`) and
//!   the same windows as [`QuicConfig::default`] (`QuicConfig::quinn_transport_config`).
//! * QUIC native: messages of 64 KiB and 1 KiB on one channel through two handshaken
//!   `QuicConnection`s (`Connection::send` → writer task → uvarint framing on the channel's
//!   stream → reader task → receive queue → `Connection::receive`).
//! * MConn: the same through two `MConnConnection`s over loopback TCP (default `MConnConfig`).
//! * Handshakes/s: 16 dialers in parallel against one listener, each dial + transport handshake
//!   (QUIC: QUIC/TLS 1.3 with the libp2p certificates; MConn: SecretConnection) + NodeInfo
//!   exchange, then the dialer drops the connection; the listener handshakes every inbound
//!   connection and keeps it until the dialer's drop reaches it.
//!
//! MB/s is payload bytes over the time from the first send to the last byte received; CPU is
//! this process's CPU time (user + system, all threads, `CLOCK_PROCESS_CPUTIME_ID`) over the
//! same interval, in seconds per GiB of payload (both ends run in this process) or in
//! milliseconds per handshake (both sides). Full mode reports medians of 3 interleaved runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2p::router::ChannelDescriptor;
use p2p::{ChannelId, Connection, Endpoint, NodeInfo, NodeKey, Protocol, Transport};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use p2p_transport_quic::{DUMMY_SERVER_NAME, QUIC_ALPN, QuicConfig, QuicTransport, identity};
use quinn::VarInt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::task::JoinSet;

/// The channel of the throughput rows.
const CH: ChannelId = ChannelId(0x30);
/// Handshakes in flight at once.
const PARALLEL: usize = 16;
const GIB: f64 = (1u64 << 30) as f64;
/// Bound of every single measurement (only reached if something hangs).
const LIMIT: Duration = Duration::from_secs(120);

/// This process's CPU time (user + system, all threads), in seconds.
fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// One throughput measurement.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Payload bytes per second.
    rate: f64,
    /// Messages (or chunks) per second.
    msgs: f64,
    /// CPU seconds per GiB of payload.
    cpu: f64,
}

impl Run {
    fn new(bytes: usize, msgs: usize, secs: f64, cpu: f64) -> Self {
        Self {
            rate: bytes as f64 / secs,
            msgs: msgs as f64 / secs,
            cpu: cpu / (bytes as f64 / GIB),
        }
    }
}

/// One handshake-rate measurement.
#[derive(Debug, Clone, Copy)]
struct Setup {
    /// Completed handshakes per second.
    rate: f64,
    /// CPU milliseconds per handshake (both sides).
    cpu_ms: f64,
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A quinn endpoint with the transport's server and client configuration for `key`.
fn raw_endpoint(key: &NodeKey) -> (quinn::Endpoint, quinn::ClientConfig) {
    let transport = Arc::new(QuicConfig::default().quinn_transport_config().unwrap());
    let server_tls =
        QuicServerConfig::try_from(identity::server_config(key, QUIC_ALPN).unwrap()).unwrap();
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport.clone());
    let client_tls =
        QuicClientConfig::try_from(identity::client_config(key, QUIC_ALPN, None).unwrap()).unwrap();
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport);
    // The transport's socket (buffers sized as `QuicTransport` sizes them).
    let socket = QuicTransport::udp_socket(localhost(), &QuicConfig::default()).unwrap();
    let runtime = Arc::new(quinn::TokioRuntime);
    let endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)
            .unwrap();
    (endpoint, client)
}

/// The ceiling: raw quinn, one unidirectional stream, 64 KiB chunks.
async fn raw_quinn(total: usize) -> Run {
    const CHUNK: usize = 64 * 1024;
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let (ea, client) = raw_endpoint(&ka);
    let (eb, _) = raw_endpoint(&kb);
    let to = eb.local_addr().unwrap();
    let (ca, cb) = tokio::join!(
        async { ea.connect_with(client, to, DUMMY_SERVER_NAME).unwrap().await.unwrap() },
        async { eb.accept().await.unwrap().await.unwrap() }
    );
    let count = total / CHUNK;
    let sink = tokio::spawn(async move {
        let mut stream = cb.accept_uni().await.unwrap();
        let mut got = 0;
        let mut chunks: Vec<Bytes> = vec![Bytes::new(); 32];
        while let Some(n) = stream.read_chunks(&mut chunks).await.unwrap() {
            got += chunks[..n].iter().map(Bytes::len).sum::<usize>();
        }
        assert_eq!(got, count * CHUNK);
        cb
    });
    let chunk = Bytes::from(vec![5u8; CHUNK]);
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut stream = ca.open_uni().await.unwrap();
    for _ in 0..count {
        stream.write_chunk(chunk.clone()).await.unwrap();
    }
    stream.finish().unwrap();
    let cb = tokio::time::timeout(LIMIT, sink).await.unwrap().unwrap();
    let run = Run::new(count * CHUNK, count, start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    ca.close(VarInt::from_u32(0), b"done");
    cb.close(VarInt::from_u32(0), b"done");
    ea.wait_idle().await;
    eb.wait_idle().await;
    run
}

fn descriptors() -> [ChannelDescriptor; 1] {
    [ChannelDescriptor::new(CH).with_max_message_size(1 << 20)]
}

fn node_info(key: &NodeKey, moniker: &str) -> NodeInfo {
    NodeInfo::new(key.node_id(), "bench", moniker, [CH]).with_listen_addr("127.0.0.1:1")
}

/// Two handshaken connections from `dialer` to `listener` (which listens on `to`).
async fn pair(
    dialer: &dyn Transport,
    listener: &dyn Transport,
    to: &Endpoint,
) -> (Box<dyn Connection>, Box<dyn Connection>) {
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let (ia, ib) = (node_info(&ka, "a"), node_info(&kb, "b"));
    let descs = descriptors();
    tokio::join!(
        async {
            let mut c = dialer.dial(to).await.unwrap();
            c.handshake(&ia, &ka, &descs).await.unwrap();
            c
        },
        async {
            let mut c = listener.accept().await.unwrap();
            c.handshake(&ib, &kb, &descs).await.unwrap();
            c
        }
    )
}

/// Sends `total / size` messages of `size` bytes from `a` to `b`.
async fn flood(a: Box<dyn Connection>, b: Box<dyn Connection>, size: usize, total: usize) -> Run {
    let count = total / size;
    let sink = tokio::spawn(async move {
        for _ in 0..count {
            let (ch, msg) = b.receive().await.unwrap();
            assert_eq!((ch, msg.len()), (CH, size));
        }
        b
    });
    let msg = Bytes::from(vec![5u8; size]);
    let (start, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..count {
        a.send(CH, msg.clone()).await.unwrap();
    }
    let b = tokio::time::timeout(LIMIT, sink).await.unwrap().unwrap();
    let run = Run::new(count * size, count, start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let _ = tokio::join!(a.close(), b.close());
    run
}

async fn quic_rate(size: usize, total: usize) -> Run {
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let ta = QuicTransport::bind(localhost(), &ka, QuicConfig::default()).unwrap();
    let tb = QuicTransport::bind(localhost(), &kb, QuicConfig::default()).unwrap();
    let to = Endpoint::socket(Protocol::QUIC, tb.local_addr());
    let (a, b) = pair(&ta, &tb, &to).await;
    flood(a, b, size, total).await
}

async fn mconn_rate(size: usize, total: usize) -> Run {
    let listener = MConnTransport::bind(localhost(), MConnConfig::default()).await.unwrap();
    let to = Endpoint::socket(Protocol::MCONN, listener.local_addr().unwrap());
    let dialer = MConnTransport::dial_only(MConnConfig::default());
    let (a, b) = pair(&dialer, &listener, &to).await;
    flood(a, b, size, total).await
}

/// `total` handshakes from `dialer` to `listener` (at `to`), [`PARALLEL`] at a time.
async fn setup_rate(
    dialer: Arc<dyn Transport>,
    listener: Arc<dyn Transport>,
    to: Endpoint,
    total: usize,
) -> Setup {
    let (ka, kb) = (Arc::new(NodeKey::generate()), Arc::new(NodeKey::generate()));
    let (ia, ib) = (Arc::new(node_info(&ka, "a")), Arc::new(node_info(&kb, "b")));
    let acceptor = tokio::spawn(async move {
        let mut inbound = JoinSet::new();
        for _ in 0..total {
            let mut c = listener.accept().await.unwrap();
            let (kb, ib) = (kb.clone(), ib.clone());
            inbound.spawn(async move {
                // Done when both sides are: the acceptor finishes half a round trip after the
                // dialer (it reads the dialer's NodeInfo last), then drops the connection,
                // which ends the dialer's wait.
                c.handshake(&ib, &kb, &descriptors()).await.unwrap();
            });
        }
        while let Some(r) = inbound.join_next().await {
            r.unwrap();
        }
    });
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut dialers = JoinSet::new();
    for _ in 0..PARALLEL {
        let (dialer, to, next) = (dialer.clone(), to.clone(), next.clone());
        let (ka, ia) = (ka.clone(), ia.clone());
        dialers.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let mut c = dialer.dial(&to).await.unwrap();
                c.handshake(&ia, &ka, &descriptors()).await.unwrap();
                // Keep the connection until the acceptor's handshake is done and it drops it.
                let _ = c.receive().await;
            }
        });
    }
    while let Some(r) = dialers.join_next().await {
        r.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    tokio::time::timeout(LIMIT, acceptor).await.unwrap().unwrap();
    Setup { rate: total as f64 / secs, cpu_ms: cpu * 1e3 / total as f64 }
}

async fn quic_setup(total: usize) -> Setup {
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let ta = Arc::new(QuicTransport::bind(localhost(), &ka, QuicConfig::default()).unwrap());
    let tb = Arc::new(QuicTransport::bind(localhost(), &kb, QuicConfig::default()).unwrap());
    let to = Endpoint::socket(Protocol::QUIC, tb.local_addr());
    setup_rate(ta, tb, to, total).await
}

async fn mconn_setup(total: usize) -> Setup {
    let listener =
        Arc::new(MConnTransport::bind(localhost(), MConnConfig::default()).await.unwrap());
    let to = Endpoint::socket(Protocol::MCONN, listener.local_addr().unwrap());
    let dialer = Arc::new(MConnTransport::dial_only(MConnConfig::default()));
    setup_rate(dialer, listener, to, total).await
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_run(runs: &[Run]) -> Run {
    Run {
        rate: median(runs.iter().map(|r| r.rate).collect()),
        msgs: median(runs.iter().map(|r| r.msgs).collect()),
        cpu: median(runs.iter().map(|r| r.cpu).collect()),
    }
}

fn median_setup(runs: &[Setup]) -> Setup {
    Setup {
        rate: median(runs.iter().map(|r| r.rate).collect()),
        cpu_ms: median(runs.iter().map(|r| r.cpu_ms).collect()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only ROW` (raw, q64, q1, m64, m1, qs, ms): run one row only, e.g. under `perf`.
    let only = args.iter().position(|a| a == "--only").map(|i| args[i + 1].clone());
    let (reps, total, handshakes) = if quick { (1, 256 << 20, 1000) } else { (3, 1 << 30, 4000) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    eprintln!(
        "quic bench: {} profile, {} MiB per 64 KiB row, {} MiB per 1 KiB row, {handshakes} \
         handshakes per setup row, {reps} repetition(s)",
        if quick { "quick" } else { "full" },
        total >> 20,
        total >> 22,
    );
    let (mut raw, mut q64, mut q1, mut m64, mut m1) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut qs, mut ms) = (vec![], vec![]);
    if let Some(row) = only {
        // Profiling aid: run one row `reps` times and print its figures only.
        for _ in 0..reps {
            match row.as_str() {
                "raw" => println!("{:?}", rt.block_on(raw_quinn(total))),
                "q64" => println!("{:?}", rt.block_on(quic_rate(64 * 1024, total))),
                "q1" => println!("{:?}", rt.block_on(quic_rate(1024, total / 4))),
                "m64" => println!("{:?}", rt.block_on(mconn_rate(64 * 1024, total))),
                "m1" => println!("{:?}", rt.block_on(mconn_rate(1024, total / 4))),
                "qs" => println!("{:?}", rt.block_on(quic_setup(handshakes))),
                "ms" => println!("{:?}", rt.block_on(mconn_setup(handshakes))),
                other => panic!("--only {other}: expected raw, q64, q1, m64, m1, qs or ms"),
            }
        }
        return;
    }
    for _ in 0..reps {
        raw.push(rt.block_on(raw_quinn(total)));
        q64.push(rt.block_on(quic_rate(64 * 1024, total)));
        q1.push(rt.block_on(quic_rate(1024, total / 4)));
        m64.push(rt.block_on(mconn_rate(64 * 1024, total)));
        m1.push(rt.block_on(mconn_rate(1024, total / 4)));
        qs.push(rt.block_on(quic_setup(handshakes)));
        ms.push(rt.block_on(mconn_setup(handshakes)));
    }
    let (raw, q64, q1, m64, m1) =
        (median_run(&raw), median_run(&q64), median_run(&q1), median_run(&m64), median_run(&m1));
    let (qs, ms) = (median_setup(&qs), median_setup(&ms));

    println!(
        "{:<40} {:>8} {:>10} {:>10}   ratio",
        "row (loopback, one connection)", "MB/s", "msg/s", "CPU s/GiB"
    );
    let row = |name: &str, r: Run, ratio: String| {
        println!("{name:<40} {:>8.0} {:>10.0} {:>10.2}   {ratio}", r.rate / 1e6, r.msgs, r.cpu);
    };
    row("raw quinn ceiling: 1 uni stream, 64 KiB", raw, String::new());
    row(
        "QUIC native, 64 KiB messages",
        q64,
        format!("{:.2}x raw quinn, {:.2}x MConn", q64.rate / raw.rate, q64.rate / m64.rate),
    );
    row(
        "QUIC native, 1 KiB messages",
        q1,
        format!("{:.2}x raw quinn, {:.2}x MConn", q1.rate / raw.rate, q1.rate / m1.rate),
    );
    row("MConn, 64 KiB messages", m64, String::new());
    row("MConn, 1 KiB messages", m1, String::new());
    println!(
        "{:<40} {:>8} {:>10} {:>10}",
        "connection setup, 16 in parallel", "", "hs/s", "CPU ms/hs"
    );
    let setup = |name: &str, s: Setup, ratio: String| {
        println!("{name:<40} {:>8} {:>10.0} {:>10.2}   {ratio}", "", s.rate, s.cpu_ms);
    };
    setup("QUIC: dial + TLS 1.3 + NodeInfo", qs, format!("{:.2}x MConn", qs.rate / ms.rate));
    setup("MConn: dial + SecretConnection + NodeInfo", ms, String::new());
    println!(
        "Targets: QUIC native 64 KiB >= 0.7x raw quinn; >= 1000 handshakes/s with 16 in parallel."
    );
}
