//! N nodes on the memory transport, wired through their PeerManagers, each broadcasting
//! transactions to its peers; prints `delivered X/Y messages`, latency percentiles and peers per
//! node.
//!
//! ```text
//! cargo run --release --example memnet -- --nodes 50 --messages 100
//! ```
//!
//! Node `i` is given the addresses of nodes `i+1 ..= i+degree` (mod N) and dials them through
//! its PeerManager, so every node ends up with `2 * degree` peers. The channel uses the `Wait`
//! overflow policy: a full peer queue makes the sender wait (backpressure) instead of dropping,
//! so X must equal Y. The example exits non-zero otherwise.

#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use p2p::router::{ChannelDescriptor, OverflowPolicy, UnwrapError, Wrapper};
use p2p::{ChannelId, Outbound};
use p2p_proto::tendermint::mempool::{Message, Txs, message::Sum};
use p2p_transport_memory::testkit::{TestNode, TestNodeOptions};
use p2p_transport_memory::{LinkConfig, MemoryNetwork, MemoryNetworkConfig};
use tokio::sync::Notify;

/// A transaction: 8 bytes origin node, 8 bytes send time (ns since start), padding.
#[derive(Debug, Clone)]
struct Tx(Vec<u8>);

impl Wrapper for Tx {
    type Proto = Message;

    fn wrap(self) -> Message {
        Message { sum: Some(Sum::Txs(Txs { txs: vec![self.0] })) }
    }

    fn unwrap(proto: Message) -> Result<Self, UnwrapError> {
        match proto.sum {
            Some(Sum::Txs(Txs { mut txs })) if txs.len() == 1 => {
                Ok(Self(txs.pop().unwrap_or_default()))
            }
            _ => Err(UnwrapError("expected exactly one tx".into())),
        }
    }
}

#[derive(Debug)]
struct Args {
    nodes: usize,
    messages: usize,
    degree: usize,
    size: usize,
    latency_ms: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args { nodes: 50, messages: 100, degree: 4, size: 200, latency_ms: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<u64> {
            let v = it.next().with_context(|| format!("{flag} needs a value"))?;
            v.parse().with_context(|| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--nodes" => a.nodes = value()? as usize,
            "--messages" => a.messages = value()? as usize,
            "--degree" => a.degree = value()? as usize,
            "--size" => a.size = value()? as usize,
            "--latency-ms" => a.latency_ms = value()?,
            "-h" | "--help" => {
                println!(
                    "memnet [--nodes N=50] [--messages M=100 per node] [--degree D=4 dials per node] [--size BYTES=200] [--latency-ms MS=0]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other:?} (try --help)"),
        }
    }
    if a.nodes < 2 * a.degree + 1 {
        bail!("--nodes must be larger than 2 * --degree ({} <= {})", a.nodes, 2 * a.degree);
    }
    if a.size < 16 {
        bail!("--size must be at least 16 bytes");
    }
    Ok(a)
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    Duration::from_nanos(sorted.get(idx).copied().unwrap_or_default())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    p2p_transport_memory::testkit::init_tracing();
    let args = parse_args()?;
    let n = args.nodes;
    let net = MemoryNetwork::new(MemoryNetworkConfig::default());
    let descriptor = ChannelDescriptor::new(ChannelId(0x30))
        .with_priority(5)
        .with_queue_capacity(256, 1024)
        .with_overflow(OverflowPolicy::Wait(Duration::from_secs(30)));

    let mut nodes = Vec::with_capacity(n);
    let mut channels = Vec::with_capacity(n);
    for i in 0..n {
        let node = TestNode::new(&net, &format!("node-{i}"), TestNodeOptions::default());
        channels.push(node.channel::<Tx>(descriptor.clone()));
        nodes.push(node);
    }
    if args.latency_ms > 0 {
        for a in &nodes {
            for b in &nodes {
                if a.id != b.id {
                    let link = LinkConfig {
                        latency: Duration::from_millis(args.latency_ms),
                        ..LinkConfig::default()
                    };
                    net.set_link(a.id, b.id, link);
                }
            }
        }
    }
    let t0 = Instant::now();
    for node in &nodes {
        node.start();
    }
    for i in 0..n {
        for k in 1..=args.degree {
            let target = &nodes[(i + k) % n];
            nodes[i].dial(target);
        }
    }
    // Wait (on peer updates, not on time) until every node has its 2*degree peers.
    for i in 0..n {
        let want: Vec<_> = (1..=args.degree)
            .flat_map(|k| [nodes[(i + k) % n].id, nodes[(i + n - k) % n].id])
            .collect();
        nodes[i].wait_up(&want, Duration::from_secs(60)).await;
    }
    let connect_time = t0.elapsed();

    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let start = Instant::now();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, ch) in channels.into_iter().enumerate() {
        let (tx, mut rx) = ch.split();
        let received = received.clone();
        let progress = progress.clone();
        receivers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(env) = rx.recv().await {
                let bytes = env.message.0;
                let sent_ns = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
                let now_ns = start.elapsed().as_nanos() as u64;
                latencies.push(now_ns.saturating_sub(sent_ns));
                received.fetch_add(1, Ordering::Relaxed);
                progress.notify_one();
            }
            latencies
        }));
        let (messages, size) = (args.messages, args.size);
        senders.push(tokio::spawn(async move {
            let mut queued = 0u64;
            let mut dropped = 0u64;
            for _ in 0..messages {
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let now_ns = start.elapsed().as_nanos() as u64;
                payload[8..16].copy_from_slice(&now_ns.to_le_bytes());
                let out = tx.send(Outbound::broadcast(Tx(payload))).await?;
                queued += out.queued as u64;
                dropped += out.dropped as u64;
            }
            anyhow::Ok((queued, dropped))
        }));
    }
    let (mut expected, mut dropped) = (0u64, 0u64);
    for s in senders {
        let (q, d) = s.await??;
        expected += q;
        dropped += d;
    }
    // Wait until everything queued has arrived (event-driven), or give up after 60 s.
    let wait = async {
        loop {
            let notified = progress.notified();
            if received.load(Ordering::Relaxed) >= expected {
                break;
            }
            notified.await;
        }
    };
    let complete = tokio::time::timeout(Duration::from_secs(60), wait).await.is_ok();
    let elapsed = start.elapsed();

    let peers: Vec<usize> = nodes.iter().map(|nd| nd.router.connected_peers().len()).collect();
    let mut dropped_stats = 0;
    for node in &nodes {
        for (_, s) in node.router.stats().channels {
            dropped_stats +=
                s.dropped_full + s.dropped_oldest + s.dropped_timeout + s.dropped_peer_gone;
        }
    }
    for node in &nodes {
        node.router.stop().await;
    }
    let mut latencies = Vec::new();
    for r in receivers {
        latencies.extend(r.await?);
    }
    latencies.sort_unstable();
    let delivered = received.load(Ordering::Relaxed);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "nodes {n}, degree {} (peers per node min {} / max {}), {} broadcasts of {} B each, connected in {:.0} ms",
        args.degree,
        peers.iter().min().unwrap_or(&0),
        peers.iter().max().unwrap_or(&0),
        n * args.messages,
        args.size,
        ms(connect_time)
    );
    println!(
        "latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {:.0} deliveries/s over {:.0} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
        delivered as f64 / elapsed.as_secs_f64(),
        ms(elapsed)
    );
    println!(
        "delivered {delivered}/{expected} messages ({dropped} dropped at send, {dropped_stats} dropped in queues)"
    );
    if !complete || delivered != expected || dropped != 0 || dropped_stats != 0 {
        bail!("lost messages: delivered {delivered} of {expected}");
    }
    Ok(())
}
