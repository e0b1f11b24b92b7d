//! Two Rust routers over the MConn transport on loopback TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use p2p::Transport as _;
use p2p::echo::{Echo, echo_channel_descriptor};
use p2p::mempool::{Txs, mempool_channel_descriptor};
use p2p::router::OverflowPolicy;
use p2p::{
    Channel, ChannelId, NodeAddress, NodeInfo, NodeKey, Outbound, PeerManagerConfig, PeerStatus,
    PeerUpdates, Protocol, Router, RouterConfig,
};
use p2p_transport_mconn::{MConnConfig, MConnTransport};

const T: Duration = Duration::from_secs(20);

struct Node {
    router: Router,
    updates: PeerUpdates,
    echo: Channel<Echo>,
    txs: Channel<Txs>,
    addr: NodeAddress,
}

async fn node(moniker: &str, network: &str) -> Node {
    node_with(moniker, network, MConnConfig::default()).await
}

async fn node_with(moniker: &str, network: &str, config: MConnConfig) -> Node {
    let key = NodeKey::generate();
    let id = key.node_id();
    let transport = MConnTransport::bind("127.0.0.1:0".parse().unwrap(), config).await.unwrap();
    let local = transport.local_addr().unwrap();
    let info = NodeInfo::new(id, network, moniker, Vec::<ChannelId>::new());
    let router =
        Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
            .unwrap();
    router.add_transport(Arc::new(transport)).unwrap();
    let echo = router.open_channel::<Echo>(echo_channel_descriptor()).unwrap();
    let txs = router
        .open_channel::<Txs>(
            // `Wait`: a full queue makes `send` await room (backpressure), so nothing is dropped.
            mempool_channel_descriptor(8 << 20)
                .with_queue_capacity(64, 64)
                .with_overflow(OverflowPolicy::Wait(T)),
        )
        .unwrap();
    let updates = router.subscribe();
    router.start().unwrap();
    let addr = format!("mconn://{id}@{local}").parse().unwrap();
    Node { router, updates, echo, txs, addr }
}

async fn wait_up(updates: &mut PeerUpdates) -> p2p::NodeId {
    loop {
        let u = tokio::time::timeout(T, updates.recv()).await.unwrap().unwrap();
        if u.status == PeerStatus::Up {
            return u.node_id;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_small_and_large_cross_mconn() {
    let mut a = node("a", "chain").await;
    let mut b = node("b", "chain").await;
    a.router.add_address(b.addr.clone()).unwrap();
    assert_eq!(wait_up(&mut a.updates).await, b.addr.node_id());
    assert_eq!(wait_up(&mut b.updates).await, a.addr.node_id());
    let peers = a.router.connected_peers();
    assert_eq!(peers[0].node_info.moniker, "b");
    assert_eq!(peers[0].endpoint.protocol, Protocol::MCONN);

    // Echo round trip.
    a.echo.send(Outbound::to(b.addr.node_id(), Echo::Ping("hi".into()))).await.unwrap();
    let env = tokio::time::timeout(T, b.echo.recv()).await.unwrap().unwrap();
    assert_eq!(env.message, Echo::Ping("hi".into()));

    // Many transactions of assorted sizes, incl. multi-packet ones, arrive intact and in order.
    let sizes = [1usize, 100, 1023, 1024, 1025, 3000, 65_536, 1 << 20, 5 << 20];
    let sender = {
        let tx = a.txs.sender();
        let to = b.addr.node_id();
        tokio::spawn(async move {
            for round in 0..20u8 {
                for &n in &sizes {
                    let body = vec![round.wrapping_add(n as u8); n];
                    let out = tx.send(Outbound::to(to, Txs(vec![body]))).await.unwrap();
                    assert_eq!(out.queued, 1);
                }
            }
        })
    };
    for round in 0..20u8 {
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
async fn wrong_chain_id_is_refused_with_both_ids() {
    // Through the routers: no connection comes up on either side.
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
    assert!(b.router.stats().handshake_failures >= 1);

    // The error each side reports names both chain IDs.
    let listener =
        MConnTransport::bind("127.0.0.1:0".parse().unwrap(), MConnConfig::default()).await.unwrap();
    let to = p2p::Endpoint::socket(Protocol::MCONN, listener.local_addr().unwrap());
    let dialer = MConnTransport::dial_only(MConnConfig::default());
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let ia = NodeInfo::new(ka.node_id(), "chain-a", "a", [ChannelId(0x30)])
        .with_listen_addr("127.0.0.1:1");
    let ib = NodeInfo::new(kb.node_id(), "chain-b", "b", [ChannelId(0x30)])
        .with_listen_addr("127.0.0.1:2");
    let descs = [mempool_channel_descriptor(1024)];
    let (got_b, got_a) = tokio::join!(
        async {
            let mut c = dialer.dial(&to).await.unwrap();
            c.handshake(&ia, &ka, &descs).await.unwrap().0
        },
        async {
            let mut c = listener.accept().await.unwrap();
            c.handshake(&ib, &kb, &descs).await.unwrap().0
        }
    );
    for err in [ia.compatible_with(&got_b).unwrap_err(), ib.compatible_with(&got_a).unwrap_err()] {
        let msg = err.to_string();
        assert!(msg.contains("chain-a") && msg.contains("chain-b"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_connections_still_deliver_everything_in_order() {
    let mut a = node_with("a", "chain", MConnConfig::cometbft_defaults()).await;
    let mut b = node_with("b", "chain", MConnConfig::cometbft_defaults()).await;
    a.router.add_address(b.addr.clone()).unwrap();
    wait_up(&mut a.updates).await;
    wait_up(&mut b.updates).await;
    let to = b.addr.node_id();
    let tx = a.txs.sender();
    let sender = tokio::spawn(async move {
        for i in 0..40u32 {
            let body = vec![i as u8; 64 * 1024];
            let out = tx.send(Outbound::to(to, Txs(vec![body]))).await.unwrap();
            assert_eq!(out.queued, 1);
        }
    });
    for i in 0..40u32 {
        let env = tokio::time::timeout(T, b.txs.recv()).await.unwrap().unwrap();
        assert_eq!(env.message.0[0], vec![i as u8; 64 * 1024]);
    }
    sender.await.unwrap();
}

/// A slow reactor must not cost the connection its liveness: with a 200 ms ping interval and a
/// 300 ms pong timeout, the receiver's reactor stops reading for 3 s while the sender floods.
/// Both sides keep the connection (the pong deadline pauses while data is backed up) and every
/// message arrives once the reactor resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reactor_does_not_kill_liveness() {
    let mut config = MConnConfig::default();
    config.mconn.ping_interval = Duration::from_millis(200);
    config.mconn.pong_timeout = Duration::from_millis(300);
    let mut a = node_with("a", "chain", config.clone()).await;
    let mut b = node_with("b", "chain", config).await;
    a.router.add_address(b.addr.clone()).unwrap();
    wait_up(&mut a.updates).await;
    wait_up(&mut b.updates).await;
    let to = b.addr.node_id();
    const N: u32 = 300;
    let tx = a.txs.sender();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let body = vec![i as u8; 64 * 1024];
            let out = tx.send(Outbound::to(to, Txs(vec![body]))).await.unwrap();
            assert_eq!(out.queued, 1);
        }
    });
    // The reactor is "busy" (not reading) for 3 s: ten pong timeouts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..N {
        let env = tokio::time::timeout(T, b.txs.recv()).await.unwrap().unwrap();
        assert_eq!(env.message.0[0][0], i as u8);
    }
    sender.await.unwrap();
    // No Down update on either side.
    for updates in [&mut a.updates, &mut b.updates] {
        while let Ok(Ok(u)) = tokio::time::timeout(Duration::ZERO, updates.recv()).await {
            assert_ne!(u.status, PeerStatus::Down, "connection dropped: {u:?}");
        }
    }
    assert_eq!(a.router.connected_peers().len(), 1);
}
