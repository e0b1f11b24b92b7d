//! Router + memory transport throughput, against a raw tokio channel in the same run.
//!
//! `cargo bench -p p2p-transport-memory --bench router` (add `-- --quick` for a short run).
//!
//! Rows: messages/s through `Channel::send` → per-peer queue → writer task → memory connection
//! → reader task → inbound queue → `Channel::recv`, at 200 B and 64 KiB, to one peer and
//! broadcast to eight peers; and the same message count through one `tokio::sync::mpsc`
//! channel (producer → consumer task) as the ceiling. "cost/msg" is the extra time per message
//! over the raw channel: 1e9/router_rate − 1e9/mpsc_rate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use p2p::router::{ChannelDescriptor, OverflowPolicy, UnwrapError, Wrapper};
use p2p::{ChannelId, Outbound};
use p2p_proto::tendermint::mempool::{Message, Txs, message::Sum};
use p2p_transport_memory::MemoryNetwork;
use p2p_transport_memory::testkit::{TestNode, TestNodeOptions};

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

/// Sends `count` messages of `size` bytes from one node to `peers` receivers; returns
/// deliveries per second (count × peers / elapsed).
async fn router_rate(size: usize, peers: usize, count: usize) -> f64 {
    let net = MemoryNetwork::default();
    let desc = ChannelDescriptor::new(ChannelId(0x30))
        .with_queue_capacity(1024, 4096)
        .with_max_message_size(1 << 20)
        .with_overflow(OverflowPolicy::Wait(Duration::from_secs(30)));
    let mut src = TestNode::new(&net, "src", TestNodeOptions::default());
    let src_ch = src.channel::<Tx>(desc.clone());
    src.start();
    let mut sinks = Vec::new();
    for i in 0..peers {
        let node = TestNode::new(&net, &format!("sink{i}"), TestNodeOptions::default());
        let ch = node.channel::<Tx>(desc.clone());
        node.start();
        src.dial(&node);
        sinks.push((node, ch));
    }
    let ids: Vec<_> = sinks.iter().map(|(n, _)| n.id).collect();
    src.wait_up(&ids, Duration::from_secs(10)).await;
    for (n, _) in &mut sinks {
        n.wait_up(&[src.id], Duration::from_secs(10)).await;
    }
    let payload = Bytes::from(vec![7u8; size]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (node, ch) in sinks {
        let (_, mut rx) = ch.split();
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                rx.recv().await.expect("channel open");
            }
            drop(node);
        }));
    }
    let sender = src_ch.sender();
    for _ in 0..count {
        let out = sender.send(Outbound::broadcast(Tx(payload.clone()))).await.unwrap();
        assert_eq!(out.queued, peers);
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    src.router.stop().await;
    (count * peers) as f64 / elapsed.as_secs_f64()
}

/// The same message count through one bounded tokio mpsc channel between two tasks.
async fn mpsc_rate(size: usize, count: usize) -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let payload = Bytes::from(vec![7u8; size]);
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        for _ in 0..count {
            rx.recv().await.unwrap();
        }
    });
    for _ in 0..count {
        tx.send(payload.clone()).await.unwrap();
    }
    consumer.await.unwrap();
    count as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only 200B-1` etc. runs one case (for profiling).
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let reps = if quick { 1 } else { 3 };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!(
        "{:<28} {:>14} {:>14} {:>8} {:>12}",
        "case", "router msg/s", "mpsc msg/s", "ratio", "cost/msg ns"
    );
    for (size, peers, count) in [
        (200usize, 1usize, 400_000usize),
        (200, 8, 100_000),
        (64 * 1024, 1, 20_000),
        (64 * 1024, 8, 5_000),
    ] {
        let name = format!("{}B-{}", size, peers);
        if only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        let count = if quick { count / 4 } else { count };
        let mut r = Vec::new();
        let mut m = Vec::new();
        for _ in 0..reps {
            // Interleave the two so drift affects both alike.
            r.push(rt.block_on(router_rate(size, peers, count)));
            m.push(rt.block_on(mpsc_rate(size, count * peers)));
        }
        let (r, m) = (median(r), median(m));
        let case = format!("{} B, {} peer(s)", size, peers);
        println!("{:<28} {:>14.0} {:>14.0} {:>8.3} {:>12.0}", case, r, m, r / m, 1e9 / r - 1e9 / m);
    }
}
