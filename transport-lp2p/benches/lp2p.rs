//! lp2p transport throughput, Rust → Rust on loopback, beside its ceiling measured in the same
//! run: raw quinn with one bidirectional stream per message (open, write, finish; the receiver
//! reads to the end and finishes), as many streams in flight as the transport allows per
//! channel (48). The transport adds multistream-select, length framing, the echo and the
//! receive queues on top of exactly that.
//!
//! `cargo bench -p p2p-transport-lp2p --bench lp2p` (`-- --quick` for a short run).
//!
//! MB/s is payload bytes over first send → last receive; CPU is this process's CPU time
//! (both ends run here) per GiB of payload.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2p::router::ChannelDescriptor;
use p2p::{ChannelId, Connection, NodeInfo, NodeKey};
use p2p_quic_endpoint::{EndpointConfig, QuicEndpoint, StreamLimits};
use p2p_transport_lp2p::{Lp2pConfig, Lp2pTransport};
use tokio::sync::Semaphore;

const CH: ChannelId = ChannelId(0x77);
const GIB: f64 = (1u64 << 30) as f64;
const IN_FLIGHT: usize = 48;
/// Bound of one measurement (only reached if something hangs).
const LIMIT: Duration = Duration::from_secs(120);

fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[derive(Debug, Clone, Copy)]
struct Run {
    msgs: f64,
    rate: f64,
    cpu: f64,
}

fn run(count: usize, size: usize, start: Instant, cpu: f64) -> Run {
    let secs = start.elapsed().as_secs_f64();
    let bytes = (count * size) as f64;
    Run {
        msgs: count as f64 / secs,
        rate: bytes / secs,
        cpu: (cpu_seconds() - cpu) / (bytes / GIB),
    }
}

/// Raw quinn, one stream per message.
async fn raw(count: usize, size: usize) -> Run {
    let limits = StreamLimits { bidi: 256, uni: 0 };
    let server = QuicEndpoint::bind(lo(), &NodeKey::generate(), EndpointConfig::default()).unwrap();
    let listener = server.listen(b"bench", limits).unwrap();
    let client = QuicEndpoint::bind(lo(), &NodeKey::generate(), EndpointConfig::default()).unwrap();
    let connecting = client
        .connect(client.client_config(b"bench", limits).unwrap(), server.local_addr())
        .unwrap();
    let (a, b) = tokio::join!(connecting, async {
        match listener.accept().await.unwrap() {
            p2p_quic_endpoint::Accepted::Connecting(c) => c.await.unwrap(),
            _ => panic!("failed"),
        }
    });
    let (a, b) = (a.unwrap(), b);
    let receiver = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let (mut send, mut recv) = b.accept_bi().await.unwrap();
            tasks.spawn(async move {
                let got = recv.read_to_end(size + 16).await.unwrap();
                assert_eq!(got.len(), size);
                send.finish().unwrap();
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let payload = Bytes::from(vec![7u8; size]);
    let (start, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..count {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let (a, payload) = (a.clone(), payload.clone());
        tokio::spawn(async move {
            let (mut send, mut recv) = a.open_bi().await.unwrap();
            send.write_chunk(payload).await.unwrap();
            send.finish().unwrap();
            let _ = recv.read_to_end(16).await;
            drop(permit);
        });
    }
    receiver.await.unwrap();
    run(count, size, start, cpu)
}

/// The lp2p transport's `Connection`s.
async fn lp2p(count: usize, size: usize) -> Run {
    let mut config = Lp2pConfig::default();
    config.greeting = None;
    config.ping_on_connect = false;
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let ta = Lp2pTransport::bind(lo(), &ka, EndpointConfig::default(), config.clone()).unwrap();
    let tb = Lp2pTransport::bind(lo(), &kb, EndpointConfig::default(), config).unwrap();
    let descs = [ChannelDescriptor::new(CH).with_max_message_size(1 << 20)];
    let (ia, ib) = (
        NodeInfo::new(ka.node_id(), "bench", "a", [CH]).with_listen_addr("127.0.0.1:1"),
        NodeInfo::new(kb.node_id(), "bench", "b", [CH]).with_listen_addr("127.0.0.1:1"),
    );
    let (a, b) = tokio::join!(
        async {
            let mut c = ta.dial_connection(tb.local_addr()).unwrap();
            c.handshake(&ia, &ka, &descs).await.unwrap();
            c
        },
        async {
            let mut c = tb.accept_connection().await.unwrap();
            c.handshake(&ib, &kb, &descs).await.unwrap();
            c
        }
    );
    let b = Arc::new(b);
    let receiver = {
        let b = b.clone();
        tokio::spawn(async move {
            for _ in 0..count {
                let (_, m) = b.receive().await.unwrap();
                assert_eq!(m.len(), size);
            }
        })
    };
    let payload = Bytes::from(vec![7u8; size]);
    let (start, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..count {
        a.send(CH, payload.clone()).await.unwrap();
    }
    receiver.await.unwrap();
    let r = run(count, size, start, cpu);
    a.close().await;
    r
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = if std::env::var_os("LP2P_BENCH_ST").is_some() {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
    };
    let reps = if quick { 1 } else { 3 };
    let cases = [
        (1usize << 10, if quick { 50_000 } else { 200_000 }),
        (64 << 10, if quick { 2_000 } else { 8_000 }),
    ];
    println!(
        "lp2p transport vs raw quinn (one stream per message, {IN_FLIGHT} in flight), loopback, medians of {reps}"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>10} {:>14} {:>14} {:>10} {:>7}",
        "size", "raw msg/s", "raw MB/s", "raw CPU", "lp2p msg/s", "lp2p MB/s", "lp2p CPU", "ratio"
    );
    for (size, count) in cases {
        let mut raws = Vec::new();
        let mut ours = Vec::new();
        for _ in 0..reps {
            raws.push(
                rt.block_on(async { tokio::time::timeout(LIMIT, raw(count, size)).await }).unwrap(),
            );
            ours.push(
                rt.block_on(async { tokio::time::timeout(LIMIT, lp2p(count, size)).await })
                    .unwrap(),
            );
        }
        let median = |v: &mut Vec<Run>| {
            v.sort_by(|x, y| x.msgs.total_cmp(&y.msgs));
            v[v.len() / 2]
        };
        let (r, o) = (median(&mut raws), median(&mut ours));
        println!(
            "{:<8} {:>14.0} {:>14.1} {:>9.2}s {:>14.0} {:>14.1} {:>9.2}s {:>7.2}",
            format!("{} KiB", size >> 10),
            r.msgs,
            r.rate / 1e6,
            r.cpu,
            o.msgs,
            o.rate / 1e6,
            o.cpu,
            o.msgs / r.msgs
        );
    }
}
