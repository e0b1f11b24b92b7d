//! MConn transport throughput, Rust → Rust on loopback, with its ceilings from the same run.
//!
//! `cargo bench -p p2p-transport-mconn --bench mconn` (`-- --quick` for a short run).
//!
//! Rows:
//! * AEAD ceiling: single-core ChaCha20-Poly1305 seal of 1028-byte frames (`SendCipher::seal`).
//! * TCP ceiling: one loopback TCP stream, 64 KiB writes, no crypto.
//! * MConn: messages of 1 KiB and 64 KiB on one channel through two `Connection`s (handshake,
//!   packetising, encryption, driver tasks), payload MB/s; and the ratio to each ceiling.
//!
//! The Go comparison rows (Go → Go, Rust ↔ Go) need the Go peer of `interop-tests` and are not
//! part of this bench yet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::time::Instant;

use bytes::Bytes;
use p2p::router::ChannelDescriptor;
use p2p::{ChannelId, Endpoint, NodeInfo, NodeKey, Protocol, Transport};
use p2p_transport_mconn::secret::Handshake;
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn aead_seal_rate(total: usize) -> f64 {
    let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let a = Handshake::with_ephemeral_secret(key.clone(), [2; 32]);
    let b = Handshake::with_ephemeral_secret(key, [3; 32]);
    let b_pub: [u8; 32] = a_pub(&b);
    let mut auth = a.finish(b_pub).unwrap();
    let data = vec![7u8; 1024];
    let mut out = Vec::with_capacity(2048);
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        out.clear();
        auth.sender().seal(&data, &mut out).unwrap();
        done += data.len();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn a_pub(h: &Handshake) -> [u8; 32] {
    h.ephemeral_message()[3..].try_into().unwrap()
}

async fn tcp_rate(total: usize) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got += n;
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let buf = vec![1u8; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&buf).await.unwrap();
        sent += buf.len();
    }
    reader.await.unwrap();
    total as f64 / start.elapsed().as_secs_f64()
}

async fn mconn_rate(size: usize, total: usize) -> f64 {
    let listener =
        MConnTransport::bind("127.0.0.1:0".parse().unwrap(), MConnConfig::default()).await.unwrap();
    let to = Endpoint::socket(Protocol::MCONN, listener.local_addr().unwrap());
    let dialer = MConnTransport::dial_only(MConnConfig::default());
    let ch = ChannelId(0x30);
    let descs = [ChannelDescriptor::new(ch).with_max_message_size(1 << 20)];
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let ia = NodeInfo::new(ka.node_id(), "bench", "a", [ch]).with_listen_addr("127.0.0.1:1");
    let ib = NodeInfo::new(kb.node_id(), "bench", "b", [ch]).with_listen_addr("127.0.0.1:2");
    let (a, b) = tokio::join!(
        async {
            let mut c = dialer.dial(&to).await.unwrap();
            c.handshake(&ia, &ka, &descs).await.unwrap();
            c
        },
        async {
            let mut c = listener.accept().await.unwrap();
            c.handshake(&ib, &kb, &descs).await.unwrap();
            c
        }
    );
    let count = total / size;
    let sink = tokio::spawn(async move {
        for _ in 0..count {
            b.receive().await.unwrap();
        }
    });
    let msg = Bytes::from(vec![5u8; size]);
    let start = Instant::now();
    for _ in 0..count {
        a.send(ch, msg.clone()).await.unwrap();
    }
    sink.await.unwrap();
    (count * size) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (reps, total) = if quick { (1, 64 << 20) } else { (3, 256 << 20) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mb = |x: f64| x / 1e6;
    let (mut aead, mut tcp, mut m1, mut m64) = (vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        aead.push(aead_seal_rate(total));
        tcp.push(rt.block_on(tcp_rate(total)));
        m64.push(rt.block_on(mconn_rate(64 * 1024, total)));
        m1.push(rt.block_on(mconn_rate(1024, total / 4)));
    }
    let (aead, tcp, m1, m64) = (median(aead), median(tcp), median(m1), median(m64));
    println!("{:<44} {:>10}", "row", "MB/s");
    println!("{:<44} {:>10.0}", "AEAD ceiling: seal 1028-byte frames, 1 core", mb(aead));
    println!("{:<44} {:>10.0}", "TCP ceiling: loopback, 64 KiB writes", mb(tcp));
    println!(
        "{:<44} {:>10.0}   {:.2}x AEAD, {:.2}x TCP",
        "MConn Rust->Rust, 64 KiB messages",
        mb(m64),
        m64 / aead,
        m64 / tcp
    );
    println!(
        "{:<44} {:>10.0}   {:.2}x AEAD, {:.2}x TCP",
        "MConn Rust->Rust, 1 KiB messages",
        mb(m1),
        m1 / aead,
        m1 / tcp
    );
}
