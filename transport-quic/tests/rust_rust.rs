//! Two Rust routers over the QUIC transport on loopback UDP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use p2p::echo::{Echo, echo_channel_descriptor};
use p2p::mempool::{MEMPOOL_CHANNEL, Txs, mempool_channel_descriptor};
use p2p::router::{ChannelDescriptor, OverflowPolicy};
use p2p::{
    Channel, ChannelId, NodeAddress, NodeInfo, NodeKey, Outbound, PeerManagerConfig, PeerStatus,
    PeerUpdates, Protocol, Router, RouterConfig, Transport as _,
};
use p2p_transport_quic::{QuicConfig, QuicTransport};

const T: Duration = Duration::from_secs(20);

struct Node {
    router: Router,
    updates: PeerUpdates,
    echo: Channel<Echo>,
    txs: Channel<Txs>,
    addr: NodeAddress,
}

async fn node(moniker: &str, network: &str) -> Node {
    node_with(moniker, network, echo_channel_descriptor(), 8 << 20).await
}

async fn node_with(moniker: &str, network: &str, echo: ChannelDescriptor, max_tx: usize) -> Node {
    let key = NodeKey::generate();
    let id = key.node_id();
    let transport =
        QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &key, QuicConfig::default()).unwrap();
    assert_eq!(transport.protocols(), vec![Protocol::QUIC]);
    let local = transport.local_addr();
    let info = NodeInfo::new(id, network, moniker, Vec::<ChannelId>::new());
    let router =
        Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
            .unwrap();
    router.add_transport(Arc::new(transport)).unwrap();
    // `Wait`: a full queue makes `send` await room (backpressure), so nothing is dropped.
    let echo = router.open_channel::<Echo>(echo.with_overflow(OverflowPolicy::Wait(T))).unwrap();
    let txs = router
        .open_channel::<Txs>(
            mempool_channel_descriptor(max_tx)
                .with_queue_capacity(64, 64)
                .with_overflow(OverflowPolicy::Wait(T)),
        )
        .unwrap();
    let updates = router.subscribe();
    router.start().unwrap();
    let addr = format!("quic://{id}@{local}").parse().unwrap();
    Node { router, updates, echo, txs, addr }
}

async fn wait_status(updates: &mut PeerUpdates, status: PeerStatus) -> p2p::NodeId {
    loop {
        let u = tokio::time::timeout(T, updates.recv()).await.unwrap().unwrap();
        if u.status == status {
            return u.node_id;
        }
    }
}

async fn connect(a: &mut Node, b: &mut Node) {
    a.router.add_address(b.addr.clone()).unwrap();
    assert_eq!(wait_status(&mut a.updates, PeerStatus::Up).await, b.addr.node_id());
    assert_eq!(wait_status(&mut b.updates, PeerStatus::Up).await, a.addr.node_id());
}

async fn send_tx(tx: &p2p::router::ChannelSender<Txs>, to: p2p::NodeId, body: Vec<u8>) {
    let out = tx.send(Outbound::to(to, Txs(vec![body]))).await.unwrap();
    assert_eq!(out.queued, 1);
}

fn received(router: &Router, ch: ChannelId) -> u64 {
    router.stats().channels.iter().find(|(c, _)| *c == ch).map_or(0, |(_, s)| s.received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_small_and_large_cross_quic() {
    let mut a = node("a", "chain").await;
    let mut b = node("b", "chain").await;
    connect(&mut a, &mut b).await;
    let peers = a.router.connected_peers();
    assert_eq!(peers[0].node_info.moniker, "b");
    assert_eq!(peers[0].endpoint.protocol, Protocol::QUIC);

    // Echo round trip.
    a.echo.send(Outbound::to(b.addr.node_id(), Echo::Ping("hi".into()))).await.unwrap();
    let env = tokio::time::timeout(T, b.echo.recv()).await.unwrap().unwrap();
    assert_eq!(env.message, Echo::Ping("hi".into()));
    assert_eq!(env.from, a.addr.node_id());
    b.echo.send(Outbound::to(a.addr.node_id(), Echo::Pong("hi".into()))).await.unwrap();
    let env = tokio::time::timeout(T, a.echo.recv()).await.unwrap().unwrap();
    assert_eq!(env.message, Echo::Pong("hi".into()));

    // Many transactions of assorted sizes up to 5 MiB arrive intact and in order.
    let sizes = [1usize, 100, 1023, 1024, 1025, 3000, 65_536, 1 << 20, 5 << 20];
    let sender = {
        let tx = a.txs.sender();
        let to = b.addr.node_id();
        tokio::spawn(async move {
            for round in 0..10u8 {
                for &n in &sizes {
                    send_tx(&tx, to, vec![round.wrapping_add(n as u8); n]).await;
                }
            }
        })
    };
    for round in 0..10u8 {
        for &n in &sizes {
            let env = tokio::time::timeout(T, b.txs.recv()).await.unwrap().unwrap();
            assert_eq!(env.message.0.len(), 1);
            assert_eq!(env.message.0[0].len(), n);
            assert!(env.message.0[0].iter().all(|&x| x == round.wrapping_add(n as u8)));
        }
    }
    sender.await.unwrap();
    a.router.stop().await;
    b.router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_channels_concurrently_in_both_directions() {
    let mut a = node("a", "chain").await;
    let mut b = node("b", "chain").await;
    connect(&mut a, &mut b).await;
    const N: u32 = 200;
    let spawn_senders = |from: &Node, to: p2p::NodeId| {
        let tx = from.txs.sender();
        let echo = from.echo.sender();
        let txs = tokio::spawn(async move {
            for i in 0..N {
                send_tx(&tx, to, i.to_be_bytes().repeat(4096)).await;
            }
        });
        let pings = tokio::spawn(async move {
            for i in 0..N {
                let o = echo.send(Outbound::to(to, Echo::Ping(i.to_string()))).await.unwrap();
                assert_eq!(o.queued, 1);
            }
        });
        (txs, pings)
    };
    let (ta, pa) = spawn_senders(&a, b.addr.node_id());
    let (tb, pb) = spawn_senders(&b, a.addr.node_id());
    for node in [&mut a, &mut b] {
        let (echo, txs) = (&mut node.echo, &mut node.txs);
        let pings = async {
            for i in 0..N {
                let env = tokio::time::timeout(T, echo.recv()).await.unwrap().unwrap();
                assert_eq!(env.message, Echo::Ping(i.to_string()));
            }
        };
        let txs = async {
            for i in 0..N {
                let env = tokio::time::timeout(T, txs.recv()).await.unwrap().unwrap();
                assert_eq!(env.message.0[0], i.to_be_bytes().repeat(4096));
            }
        };
        tokio::join!(pings, txs);
    }
    for h in [ta, pa, tb, pb] {
        h.await.unwrap();
    }
}

/// A small message on a higher-priority channel overtakes big messages on another channel that
/// were sent before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_message_is_not_stuck_behind_a_big_one() {
    let urgent = echo_channel_descriptor().with_priority(10);
    let mut a = node_with("a", "chain", urgent.clone(), 8 << 20).await;
    let mut b = node_with("b", "chain", urgent, 8 << 20).await;
    connect(&mut a, &mut b).await;
    let to = b.addr.node_id();
    // The urgent channel's stream is open before the bulk starts (its first message opens it).
    a.echo.send(Outbound::to(to, Echo::Ping("warm-up".into()))).await.unwrap();
    let env = tokio::time::timeout(T, b.echo.recv()).await.unwrap().unwrap();
    assert_eq!(env.message, Echo::Ping("warm-up".into()));
    // The first big message is handed over; the others queue behind it (on the same channel,
    // so they cannot go before it is written) while the ping goes out. On one ordered stream
    // the ping would arrive after the whole first message at least.
    const BIG: u64 = 3;
    send_tx(&a.txs.sender(), to, vec![0; 4 << 20]).await;
    let txs = a.txs.sender();
    let rest = tokio::spawn(async move {
        for i in 1..BIG {
            send_tx(&txs, to, vec![i as u8; 4 << 20]).await;
        }
    });
    a.echo.send(Outbound::to(to, Echo::Ping("urgent".into()))).await.unwrap();
    let env = tokio::time::timeout(T, b.echo.recv()).await.unwrap().unwrap();
    assert_eq!(env.message, Echo::Ping("urgent".into()));
    let done = received(&b.router, MEMPOOL_CHANNEL);
    assert_eq!(done, 0, "the ping waited for {done} big message(s) sent before it");
    for i in 0..BIG {
        let env = tokio::time::timeout(T, b.txs.recv()).await.unwrap().unwrap();
        assert_eq!(env.message.0[0], vec![i as u8; 4 << 20]);
    }
    rest.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_the_receivers_limit_disconnects() {
    let mut a = node("a", "chain").await;
    let mut b = node_with("b", "chain", echo_channel_descriptor(), 1024).await;
    connect(&mut a, &mut b).await;
    // Within a's limit for the channel, over b's.
    a.txs.send(Outbound::to(b.addr.node_id(), Txs(vec![vec![7; 64 * 1024]]))).await.unwrap();
    assert_eq!(wait_status(&mut b.updates, PeerStatus::Down).await, a.addr.node_id());
    assert_eq!(wait_status(&mut a.updates, PeerStatus::Down).await, b.addr.node_id());
    assert_eq!(received(&b.router, MEMPOOL_CHANNEL), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_chain_id_is_refused() {
    let a = node("a", "chain-a").await;
    let b = node("b", "chain-b").await;
    a.router.add_address(b.addr.clone()).unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while a.router.stats().dials_failed == 0 || b.router.stats().handshake_failures == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the dial should fail on both sides");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.router.connected_peers().is_empty());
    assert!(b.router.connected_peers().is_empty());
    assert!(a.router.stats().handshake_failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_and_closed_transport() {
    let key = NodeKey::generate();
    let t =
        QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &key, QuicConfig::default()).unwrap();
    let mconn = p2p::Endpoint::socket(Protocol::MCONN, t.local_addr());
    assert!(matches!(t.dial(&mconn).await, Err(p2p::TransportError::UnsupportedProtocol(_))));
    assert_eq!(t.endpoints(), vec![p2p::Endpoint::socket(Protocol::QUIC, t.local_addr())]);
    t.close().await;
    assert!(matches!(t.accept().await, Err(p2p::TransportError::Closed)));
}

/// A connected pair of raw connections (no router), handshaken with the given channels.
async fn raw_pair(
    a_channels: &[ChannelDescriptor],
    b_channels: &[ChannelDescriptor],
) -> (Box<dyn p2p::Connection>, Box<dyn p2p::Connection>, NodeKey, NodeKey) {
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let ta =
        QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &ka, QuicConfig::default()).unwrap();
    let tb =
        QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &kb, QuicConfig::default()).unwrap();
    let ia = NodeInfo::new(ka.node_id(), "chain", "a", [MEMPOOL_CHANNEL])
        .with_listen_addr(ta.local_addr().to_string());
    let ib = NodeInfo::new(kb.node_id(), "chain", "b", [MEMPOOL_CHANNEL])
        .with_listen_addr(tb.local_addr().to_string());
    let to = p2p::Endpoint::socket(Protocol::QUIC, tb.local_addr());
    let (ca, cb) = tokio::join!(
        async {
            let mut c = ta.dial(&to).await.unwrap();
            let (info, key) = c.handshake(&ia, &ka, a_channels).await.unwrap();
            assert_eq!(info.node_id, kb.node_id());
            assert_eq!(key, kb.public_key());
            c
        },
        async {
            let mut c = tb.accept().await.unwrap();
            let (info, key) = c.handshake(&ib, &kb, b_channels).await.unwrap();
            assert_eq!(info.moniker, "a");
            assert_eq!(key, ka.public_key());
            c
        }
    );
    (ca, cb, ka, kb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_reports_message_too_large() {
    let (a, b, _, _) =
        raw_pair(&[mempool_channel_descriptor(1 << 20)], &[mempool_channel_descriptor(1000)]).await;
    a.send(MEMPOOL_CHANNEL, vec![1; 1008].into()).await.unwrap();
    a.send(MEMPOOL_CHANNEL, vec![2; 1009].into()).await.unwrap();
    let (ch, msg) = tokio::time::timeout(T, b.receive()).await.unwrap().unwrap();
    assert_eq!((ch, msg.len()), (MEMPOOL_CHANNEL, 1008));
    match tokio::time::timeout(T, b.receive()).await.unwrap() {
        Err(p2p::ConnectionError::MessageTooLarge { channel, size: 1009, max: 1008 }) => {
            assert_eq!(channel, MEMPOOL_CHANNEL);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // The sender's connection is closed by the receiver.
    let e = tokio::time::timeout(T, a.receive()).await.unwrap().unwrap_err();
    assert!(e.to_string().contains("error code 3"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_what_was_sent() {
    let descs = [mempool_channel_descriptor(1 << 20), echo_channel_descriptor()];
    let (a, b, _, _) = raw_pair(&descs, &descs).await;
    const N: usize = 100;
    // 6.4 MiB: more than the windows and queues between the two ends hold, so the reader runs
    // while the sender sends.
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let (_, msg) = tokio::time::timeout(T, b.receive()).await.unwrap().unwrap();
            assert_eq!(msg, vec![i as u8; 64 * 1024]);
        }
        let end = tokio::time::timeout(T, b.receive()).await.unwrap();
        assert!(matches!(end, Err(p2p::ConnectionError::Closed)), "{end:?}");
    });
    for i in 0..N {
        tokio::time::timeout(T, a.send(MEMPOOL_CHANNEL, vec![i as u8; 64 * 1024].into()))
            .await
            .unwrap()
            .unwrap();
    }
    a.close().await;
    reader.await.unwrap();
    assert!(a.send(MEMPOOL_CHANNEL, vec![1].into()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reasons_reach_the_peer_as_error_codes() {
    use p2p::{CloseReason, ConnectionError};
    use p2p_transport_quic::error_code;
    let descs = [mempool_channel_descriptor(1 << 20)];
    let cases = [
        (CloseReason::Misbehaved("sent an invalid vote".into()), error_code::MISBEHAVED),
        (CloseReason::Banned("double signing".into()), error_code::BANNED),
        (CloseReason::Evicted, error_code::EVICTED),
        (CloseReason::Replaced, error_code::EVICTED),
    ];
    for (reason, code) in cases {
        let (a, b, _, _) = raw_pair(&descs, &descs).await;
        a.close_with(&reason).await;
        match tokio::time::timeout(T, b.receive()).await.unwrap() {
            Err(ConnectionError::ClosedByPeer { code: got, reason: text }) => {
                assert_eq!((got, text.as_str()), (u64::from(code), reason.text()));
            }
            other => panic!("{reason:?}: expected ClosedByPeer, got {other:?}"),
        }
    }
    // A reason longer than a packet allows is truncated (at a character boundary).
    let (a, b, _, _) = raw_pair(&descs, &descs).await;
    a.close_with(&CloseReason::Misbehaved("é".repeat(1000))).await;
    match tokio::time::timeout(T, b.receive()).await.unwrap() {
        Err(ConnectionError::ClosedByPeer { reason, .. }) => {
            assert!(reason.len() <= 256 && reason.chars().all(|c| c == 'é'), "{reason}");
        }
        other => panic!("expected ClosedByPeer, got {other:?}"),
    }
    // A normal close is graceful: the peer sees a clean end.
    let (a, b, _, _) = raw_pair(&descs, &descs).await;
    let reader = tokio::spawn(async move { b.receive().await });
    a.close_with(&CloseReason::Normal).await;
    assert!(matches!(
        tokio::time::timeout(T, reader).await.unwrap().unwrap(),
        Err(ConnectionError::Closed)
    ));
}

/// A reactor's `PeerError` that disconnects the peer reaches it as the QUIC close reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_peer_learns_why_it_was_disconnected() {
    let mut a = node("a", "chain").await;
    let key = NodeKey::generate();
    let t =
        QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &key, QuicConfig::default()).unwrap();
    let info = NodeInfo::new(key.node_id(), "chain", "evil", [MEMPOOL_CHANNEL])
        .with_listen_addr(t.local_addr().to_string());
    let (host, port) = a.addr.host_port().unwrap();
    let to = p2p::Endpoint::socket(Protocol::QUIC, format!("{host}:{port}").parse().unwrap());
    let mut conn = t.dial(&to).await.unwrap();
    conn.handshake(&info, &key, &[mempool_channel_descriptor(1 << 20)]).await.unwrap();
    let up = loop {
        let u = tokio::time::timeout(T, a.updates.recv()).await.unwrap().unwrap();
        if u.status == PeerStatus::Up {
            break u;
        }
    };
    assert_eq!(up.node_id, key.node_id());
    a.txs.report_error(p2p::PeerError {
        node_id: key.node_id(),
        severity: p2p::Severity::Disconnect,
        reason: "sent a transaction that does not decode".into(),
    });
    match tokio::time::timeout(T, conn.receive()).await.unwrap() {
        Err(p2p::ConnectionError::ClosedByPeer { code, reason }) => {
            assert_eq!(code, u64::from(p2p_transport_quic::error_code::MISBEHAVED));
            assert_eq!(reason, "sent a transaction that does not decode");
        }
        other => panic!("expected ClosedByPeer, got {other:?}"),
    }
    a.router.stop().await;
}
