//! Router behaviour over the memory transport: the failure modes of Tendermint v0.35's router
//! (prior-art.md §2) must not happen. Every wait is on an event (peer update, message, counter
//! reached) with a generous timeout that only fires on failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use p2p::echo::{Echo, EchoEvent, echo_channel_descriptor, handle_echo};
use p2p::peer_manager::PeerStore;
use p2p::router::{ChannelDescriptor, OverflowPolicy, PeerUpdatesError, UnwrapError, Wrapper};
use p2p::{ChannelId, NodeKey, Outbound, PeerError, PeerStatus, RouterConfig, Severity};
use p2p_proto::tendermint::mempool::{Message, Txs, message::Sum};
use p2p_transport_memory::testkit::{TestNode, TestNodeOptions};
use p2p_transport_memory::{LinkConfig, MemoryNetwork};

const T: Duration = Duration::from_secs(20);

/// A test message: one tx whose bytes are a sequence number.
#[derive(Debug, Clone, PartialEq)]
struct Seq(u64);

impl Wrapper for Seq {
    type Proto = Message;
    fn wrap(self) -> Message {
        Message { sum: Some(Sum::Txs(Txs { txs: vec![self.0.to_le_bytes().to_vec()] })) }
    }
    fn unwrap(proto: Message) -> Result<Self, UnwrapError> {
        match proto.sum {
            Some(Sum::Txs(t)) => {
                let b: [u8; 8] = t
                    .txs
                    .first()
                    .and_then(|b| b.as_slice().try_into().ok())
                    .ok_or_else(|| UnwrapError("bad seq".into()))?;
                Ok(Self(u64::from_le_bytes(b)))
            }
            None => Err(UnwrapError("empty".into())),
        }
    }
}

fn opts() -> TestNodeOptions {
    TestNodeOptions::default()
}

async fn recv<M: Wrapper>(ch: &mut p2p::Channel<M>) -> p2p::Envelope<M> {
    tokio::time::timeout(T, ch.recv()).await.expect("message within timeout").expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_pings_are_answered() {
    let net = MemoryNetwork::default();
    let mut a = TestNode::new(&net, "a", opts());
    let mut b = TestNode::new(&net, "b", opts());
    let mut ca = a.channel::<Echo>(echo_channel_descriptor());
    let mut cb = b.channel::<Echo>(echo_channel_descriptor());
    a.start();
    b.start();
    a.dial(&b);
    a.wait_up(&[b.id], T).await;
    b.wait_up(&[a.id], T).await;
    ca.send(Outbound::to(b.id, Echo::Ping("hi".into()))).await.unwrap();
    let env = recv(&mut cb).await;
    assert_eq!(handle_echo(&cb, env).await, EchoEvent::Pinged { from: a.id, content: "hi".into() });
    let env = recv(&mut ca).await;
    assert_eq!(env.message, Echo::Pong("hi".into()));
    // NodeInfo exchange worked: each side sees the other's moniker and the echo channel.
    let peers = a.router.connected_peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].node_info.moniker, "b");
    assert!(peers[0].node_info.has_channel(p2p::echo::ECHO_CHANNEL));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_take_effect_end_to_end() {
    let net = MemoryNetwork::default();
    let low =
        ChannelDescriptor::new(ChannelId(0x30)).with_priority(1).with_queue_capacity(1000, 1000);
    let high =
        ChannelDescriptor::new(ChannelId(0x22)).with_priority(7).with_queue_capacity(1000, 1000);
    let mut a = TestNode::new(&net, "a", opts());
    let mut b = TestNode::new(&net, "b", opts());
    let a_low = a.channel::<Seq>(low.clone());
    let a_high = a.channel::<Seq>(high.clone());
    let b_low = b.channel::<Seq>(low);
    let b_high = b.channel::<Seq>(high);
    a.start();
    b.start();
    a.dial(&b);
    a.wait_up(&[b.id], T).await;
    b.wait_up(&[a.id], T).await;

    // Stall a's writer: pause the link, send one message that the writer takes and blocks on.
    net.set_link(a.id, b.id, LinkConfig { paused: true, ..LinkConfig::default() });
    a_low.send(Outbound::to(b.id, Seq(0))).await.unwrap();
    // Backlog: 200 bulk messages first, then 200 high-priority ones.
    for i in 1..=200 {
        a_low.send(Outbound::to(b.id, Seq(i))).await.unwrap();
    }
    for i in 1..=200 {
        a_high.send(Outbound::to(b.id, Seq(1000 + i))).await.unwrap();
    }
    net.set_link(a.id, b.id, LinkConfig::default());

    // Merge both inbound channels into one arrival order (one task, so order is meaningful).
    let (_, mut rl) = b_low.split();
    let (_, mut rh) = b_high.split();
    let mut order = Vec::new();
    while order.len() < 401 {
        tokio::select! {
            biased;
            Some(e) = rh.recv() => order.push(e.message.0),
            Some(e) = rl.recv() => order.push(e.message.0),
        }
    }
    // The first message was already dequeued before the backlog built up. After it, the writer
    // may have had one batch in flight; everything after that batch must be high before low.
    let first_low_after_high = order.iter().position(|&s| s >= 1000).unwrap();
    let last_high = order.iter().rposition(|&s| s >= 1000).unwrap();
    let lows_before_last_high = order[..last_high].iter().filter(|&&s| s < 1000).count();
    assert!(
        lows_before_last_high <= 1 + RouterConfig::default().writer_batch_messages,
        "priorities ignored: {lows_before_last_high} bulk messages overtook votes (first vote at {first_low_after_high})"
    );
    // FIFO within each channel.
    let lows: Vec<u64> = order.iter().copied().filter(|&s| s < 1000).collect();
    let highs: Vec<u64> = order.iter().copied().filter(|&s| s >= 1000).collect();
    assert_eq!(lows, (0..=200).collect::<Vec<_>>());
    assert_eq!(highs, (1001..=1200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_within_a_channel_under_backlog() {
    let net = MemoryNetwork::default();
    let desc = ChannelDescriptor::new(ChannelId(0x30))
        .with_queue_capacity(64, 64)
        .with_overflow(OverflowPolicy::Wait(T));
    let mut a = TestNode::new(&net, "a", opts());
    let b = TestNode::new(&net, "b", opts());
    let ca = a.channel::<Seq>(desc.clone());
    let mut cb = b.channel::<Seq>(desc);
    a.start();
    b.start();
    a.dial(&b);
    a.wait_up(&[b.id], T).await;
    // Latency on the link keeps a backlog in every queue along the way.
    net.set_link(
        a.id,
        b.id,
        LinkConfig { latency: Duration::from_millis(2), ..LinkConfig::default() },
    );
    let sender = tokio::spawn(async move {
        for i in 0..5000 {
            let out = ca.send(Outbound::broadcast(Seq(i))).await.unwrap();
            assert_eq!(out.queued, 1);
        }
        ca
    });
    for i in 0..5000 {
        assert_eq!(recv(&mut cb).await.message, Seq(i), "reordered");
    }
    let ca = sender.await.unwrap();
    assert_eq!(ca.stats().dropped_full + ca.stats().dropped_timeout, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_peer_does_not_slow_a_healthy_one() {
    // tendermint#8903: one blocked connection froze the shared queue and sends to every peer.
    // Here the hub broadcasts in rounds of 8 and waits for the healthy peer to receive each
    // round; the stuck peer (its link paused) must neither delay a round nor lose the healthy
    // peer a message, and only its own bounded queue overflows.
    const CAP: usize = 16;
    const ROUND: u64 = 8;
    const N: u64 = 2_000;
    let net = MemoryNetwork::default();
    let desc = ChannelDescriptor::new(ChannelId(0x20)).with_queue_capacity(CAP, 1024);
    let mut hub = TestNode::new(&net, "hub", opts());
    let mut healthy = TestNode::new(&net, "healthy", opts());
    let mut stuck = TestNode::new(&net, "stuck", opts());
    let ch = hub.channel::<Seq>(desc.clone());
    let mut healthy_ch = healthy.channel::<Seq>(desc.clone());
    let _stuck_ch = stuck.channel::<Seq>(desc);
    for n in [&hub, &healthy, &stuck] {
        n.start();
    }
    hub.dial(&healthy);
    hub.dial(&stuck);
    hub.wait_up(&[healthy.id, stuck.id], T).await;
    healthy.wait_up(&[hub.id], T).await;
    stuck.wait_up(&[hub.id], T).await;
    net.set_link(hub.id, stuck.id, LinkConfig { paused: true, ..LinkConfig::default() });

    let mut next = 0;
    for round in 0..N / ROUND {
        for i in 0..ROUND {
            let out = ch.send(Outbound::broadcast(Seq(round * ROUND + i))).await.unwrap();
            assert_eq!(out.queued + out.dropped, 2);
        }
        for _ in 0..ROUND {
            assert_eq!(
                recv(&mut healthy_ch).await.message,
                Seq(next),
                "healthy peer lost or reordered"
            );
            next += 1;
        }
    }
    let stats = ch.stats();
    // Everything beyond the stuck peer's queue (CAP) and the batch its writer took before it
    // blocked (1 ..= CAP messages, depending on when it woke) was dropped, for the stuck peer
    // only: the healthy peer received all N above.
    let n = N as usize;
    assert!(
        (n - 2 * CAP..n - CAP).contains(&(stats.dropped_full as usize)),
        "dropped {}",
        stats.dropped_full
    );
    let stuck_backlog = hub
        .router
        .connected_peers()
        .into_iter()
        .find(|p| p.node_id == stuck.id)
        .map(|p| p.backlog.0)
        .unwrap();
    assert_eq!(stuck_backlog, CAP, "the stuck peer's queue is full and bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_policy_evicts_a_stuck_peer_and_keeps_serving_others() {
    let net = MemoryNetwork::default();
    let desc = ChannelDescriptor::new(ChannelId(0x21))
        .with_queue_capacity(8, 1024)
        .with_overflow(OverflowPolicy::Wait(Duration::from_millis(200)));
    let mut hub = TestNode::new(&net, "hub", opts());
    let mut healthy = TestNode::new(&net, "healthy", opts());
    let stuck = TestNode::new(&net, "stuck", opts());
    let ch = hub.channel::<Seq>(desc.clone());
    let mut healthy_ch = healthy.channel::<Seq>(desc.clone());
    let _stuck_ch = stuck.channel::<Seq>(desc);
    for n in [&hub, &healthy, &stuck] {
        n.start();
    }
    hub.dial(&healthy);
    hub.dial(&stuck);
    hub.wait_up(&[healthy.id, stuck.id], T).await;
    healthy.wait_up(&[hub.id], T).await;
    net.set_link(hub.id, stuck.id, LinkConfig { paused: true, ..LinkConfig::default() });
    let send = tokio::spawn(async move {
        for i in 0..2000 {
            ch.send(Outbound::broadcast(Seq(i))).await.unwrap();
        }
        ch
    });
    hub.wait_status(stuck.id, PeerStatus::Down, T).await;
    for i in 0..2000 {
        assert_eq!(recv(&mut healthy_ch).await.message, Seq(i));
    }
    let ch = send.await.unwrap();
    assert!(ch.stats().dropped_timeout >= 1);
    let score = hub.router.inspect_peer_manager(|pm, now| pm.score(stuck.id, now)).unwrap();
    assert!(score < 0.0, "a stuck peer is penalised, score {score}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_peer_update_subscriber_does_not_stall_dials() {
    let net = MemoryNetwork::default();
    let mut router_cfg = RouterConfig::default();
    router_cfg.peer_updates_capacity = 4;
    let mut hub_opts = opts();
    hub_opts.router = router_cfg;
    hub_opts.peer_manager.max_outgoing = 32;
    let hub = TestNode::new(&net, "hub", hub_opts);
    // `hub.updates` was subscribed before start and is never read: it lags.
    let mut spokes: Vec<TestNode> =
        (0..20).map(|i| TestNode::new(&net, &format!("s{i}"), opts())).collect();
    hub.start();
    for s in &spokes {
        s.start();
        hub.dial(s);
    }
    for s in &mut spokes {
        s.wait_up(&[hub.id], T).await;
    }
    let mut updates = hub.updates;
    // A spoke sees the hub up a moment before the hub publishes the spoke's `Up`: wait (bounded)
    // until all 20 were published to this never-read subscription.
    tokio::time::timeout(T, async {
        while updates.pending() < 20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the hub did not publish 20 peer updates");
    match updates.recv().await {
        Err(PeerUpdatesError::Lagged(n)) => assert!(n >= 16, "missed {n}"),
        other => panic!("expected lag, got {other:?}"),
    }
    assert!(hub.router.stats().peer_updates_lagged >= 16);
    assert_eq!(hub.router.connected_peers().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loop_survives_errors() {
    let net = MemoryNetwork::default();
    let mut a = TestNode::new(&net, "a", opts());
    let mut b = TestNode::new(&net, "b", opts());
    net.inject_accept_errors(b.id, 5);
    a.start();
    b.start();
    a.dial(&b);
    b.wait_up(&[a.id], T).await;
    a.wait_up(&[b.id], T).await;
    assert_eq!(b.router.stats().accept_errors, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_network_is_rejected_with_both_chain_ids() {
    let net = MemoryNetwork::default();
    let mut other = opts();
    other.network = "chain-b".into();
    let a = TestNode::new(&net, "a", opts());
    let b = TestNode::new(&net, "b", other);
    a.start();
    b.start();
    a.dial(&b);
    // The dial fails and is retried with backoff; wait until the first failure is counted.
    eventually(|| a.router.stats().dials_failed > 0).await;
    assert_eq!(a.router.connected_peers().len(), 0);
    assert!(a.router.stats().handshake_failures >= 1);
    let err = a.router.node_info().compatible_with(&b.router.node_info()).unwrap_err().to_string();
    assert!(err.contains("memnet") && err.contains("chain-b"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_undecodable_messages_disconnect_the_sender() {
    let net = MemoryNetwork::default();
    let small = ChannelDescriptor::new(ChannelId(0x30)).with_max_message_size(64);
    let big = ChannelDescriptor::new(ChannelId(0x30)).with_max_message_size(1 << 20);
    let mut a = TestNode::new(&net, "a", opts());
    let mut b = TestNode::new(&net, "b", opts());
    let ca = a.channel::<Echo>(big);
    let _cb = b.channel::<Seq>(small);
    a.start();
    b.start();
    b.dial(&a);
    a.wait_up(&[b.id], T).await;
    b.wait_up(&[a.id], T).await;
    // 1 KiB on a channel whose receiver allows 64 bytes.
    ca.send(Outbound::to(b.id, Echo::Ping("x".repeat(1024)))).await.unwrap();
    b.wait_status(a.id, PeerStatus::Down, T).await;
    let score = b.router.inspect_peer_manager(|pm, now| pm.score(a.id, now)).unwrap();
    assert!(score < 0.0, "sender penalised: {score}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_store_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.redb");
    let net = MemoryNetwork::default();
    let key = NodeKey::generate();
    let mut b = TestNode::new(&net, "b", opts());
    let c = TestNode::new(&net, "c", opts());
    b.start();
    {
        let mut a = TestNode::with_key(
            &net,
            key.clone(),
            "a",
            opts(),
            Some(PeerStore::open(&path).unwrap()),
        );
        a.start();
        a.dial(&b);
        a.router.add_address(c.address()).unwrap();
        a.wait_up(&[b.id], T).await;
        b.wait_up(&[a.id], T).await;
        a.router.report(PeerError {
            node_id: c.id,
            severity: Severity::Ban,
            reason: "test ban".into(),
        });
        a.router.stop().await;
    }
    // Restart with the same key and store on a new network (the old transport name is gone).
    let net2 = MemoryNetwork::default();
    let a2 = TestNode::with_key(&net2, key, "a", opts(), Some(PeerStore::open(&path).unwrap()));
    let (known_b, banned_c, score_b) = a2.router.inspect_peer_manager(|pm, now| {
        (!pm.addresses(b.id).is_empty(), pm.is_banned(c.id, now), pm.score(b.id, now))
    });
    assert!(known_b, "b's address survived the restart");
    assert!(banned_c, "c's ban survived the restart");
    assert!(score_b.unwrap() > 0.0, "b's score (a successful connection) survived");
}

/// Waits until `cond` holds, checking every few milliseconds, failing after [`T`]. Used only
/// for conditions that have no event of their own (counters).
async fn eventually(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached within {T:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A transport whose first `accept` panics: the router's supervisor must restart the loop.
#[derive(Debug)]
struct PanicOnce {
    inner: p2p_transport_memory::MemoryTransport,
    panicked: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl p2p::Transport for PanicOnce {
    fn protocols(&self) -> Vec<p2p::Protocol> {
        self.inner.protocols()
    }
    fn endpoints(&self) -> Vec<p2p::Endpoint> {
        self.inner.endpoints()
    }
    async fn accept(&self) -> Result<Box<dyn p2p::Connection>, p2p::TransportError> {
        if !self.panicked.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected panic in accept");
        }
        self.inner.accept().await
    }
    async fn dial(
        &self,
        endpoint: &p2p::Endpoint,
    ) -> Result<Box<dyn p2p::Connection>, p2p::TransportError> {
        self.inner.dial(endpoint).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_restarts_a_panicked_accept_loop() {
    let net = MemoryNetwork::default();
    let key = NodeKey::generate();
    let info = p2p::NodeInfo::new(key.node_id(), "memnet", "b", Vec::new());
    let b = p2p::Router::new(key, info, RouterConfig::default(), Default::default(), None).unwrap();
    let inner = net.transport(b.node_id()).unwrap();
    let transport = PanicOnce { inner, panicked: Default::default() };
    b.add_transport(std::sync::Arc::new(transport)).unwrap();
    let mut b_updates = b.subscribe();
    b.start().unwrap();
    let mut a = TestNode::new(&net, "a", opts());
    a.start();
    a.router.add_address(p2p::NodeAddress::new_opaque(p2p::Protocol::MEMORY, b.node_id())).unwrap();
    a.wait_up(&[b.node_id()], T).await;
    let up = tokio::time::timeout(T, b_updates.recv()).await.unwrap().unwrap();
    assert_eq!((up.node_id, up.status), (a.id, PeerStatus::Up));
}

/// A transport whose dials wait at a gate, recording how many are in flight at once.
#[derive(Debug)]
struct GatedDials {
    inner: p2p_transport_memory::MemoryTransport,
    gate: tokio::sync::Semaphore,
    in_flight: tokio::sync::watch::Sender<usize>,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl p2p::Transport for GatedDials {
    fn protocols(&self) -> Vec<p2p::Protocol> {
        self.inner.protocols()
    }
    fn endpoints(&self) -> Vec<p2p::Endpoint> {
        self.inner.endpoints()
    }
    async fn accept(&self) -> Result<Box<dyn p2p::Connection>, p2p::TransportError> {
        self.inner.accept().await
    }
    async fn dial(
        &self,
        endpoint: &p2p::Endpoint,
    ) -> Result<Box<dyn p2p::Connection>, p2p::TransportError> {
        let mut now = 0;
        self.in_flight.send_modify(|n| {
            *n += 1;
            now = *n;
        });
        self.max_in_flight.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        let permit = self.gate.acquire().await.unwrap();
        permit.forget();
        self.in_flight.send_modify(|n| *n -= 1);
        self.inner.dial(endpoint).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_run_concurrently_within_the_limit() {
    const LIMIT: usize = 4;
    const PEERS: usize = 12;
    let net = MemoryNetwork::default();
    let key = NodeKey::generate();
    let info = p2p::NodeInfo::new(key.node_id(), "memnet", "hub", Vec::new());
    let mut cfg = RouterConfig::default();
    cfg.dial_concurrency = LIMIT;
    cfg.dial_timeout = Duration::from_secs(60);
    let pm = p2p::PeerManagerConfig { max_outgoing: PEERS, ..Default::default() };
    let hub = p2p::Router::new(key, info, cfg, pm, None).unwrap();
    let transport = std::sync::Arc::new(GatedDials {
        inner: net.transport(hub.node_id()).unwrap(),
        gate: tokio::sync::Semaphore::new(0),
        in_flight: tokio::sync::watch::channel(0).0,
        max_in_flight: Default::default(),
    });
    hub.add_transport(transport.clone()).unwrap();
    let mut updates = hub.subscribe();
    hub.start().unwrap();
    let mut spokes = Vec::new();
    for i in 0..PEERS {
        let s = TestNode::new(&net, &format!("s{i}"), opts());
        s.start();
        hub.add_address(s.address()).unwrap();
        spokes.push(s);
    }
    // All LIMIT dial slots fill up while the gate is closed...
    let mut watch = transport.in_flight.subscribe();
    tokio::time::timeout(T, watch.wait_for(|n| *n == LIMIT)).await.unwrap().unwrap();
    // ...then every dial completes once it opens, never more than LIMIT at a time.
    transport.gate.add_permits(PEERS);
    let mut up = 0;
    while up < PEERS {
        let u = tokio::time::timeout(T, updates.recv()).await.unwrap().unwrap();
        if u.status == PeerStatus::Up {
            up += 1;
        }
    }
    assert_eq!(transport.max_in_flight.load(std::sync::atomic::Ordering::SeqCst), LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_except_skips_one_peer_and_sent_bytes_are_counted() {
    let net = MemoryNetwork::default();
    let desc = ChannelDescriptor::new(ChannelId(0x30));
    let mut hub = TestNode::new(&net, "hub", opts());
    let spokes: Vec<TestNode> =
        (0..3).map(|i| TestNode::new(&net, &format!("s{i}"), opts())).collect();
    let ch = hub.channel::<Seq>(desc.clone());
    let mut chans: Vec<_> = spokes.iter().map(|s| s.channel::<Seq>(desc.clone())).collect();
    hub.start();
    for s in &spokes {
        s.start();
        hub.dial(s);
    }
    let ids: Vec<_> = spokes.iter().map(|s| s.id).collect();
    hub.wait_up(&ids, T).await;
    let out = ch.send(Outbound::broadcast_except(ids[0], Seq(7))).await.unwrap();
    assert_eq!(out.queued, 2);
    // Then a plain broadcast: spoke 0's first message must be this one.
    assert_eq!(ch.send(Outbound::broadcast(Seq(8))).await.unwrap().queued, 3);
    assert_eq!(recv(&mut chans[0]).await.message, Seq(8), "spoke 0 got the excluded message");
    for c in &mut chans[1..] {
        assert_eq!(recv(c).await.message, Seq(7));
        assert_eq!(recv(c).await.message, Seq(8));
    }
    let stats = ch.stats();
    assert_eq!((stats.sent_queued, stats.sent), (5, 5));
    let msg_len = prost::Message::encoded_len(&Seq(7).wrap()) as u64;
    assert_eq!(stats.sent_bytes, 5 * msg_len);
    let peers = hub.router.connected_peers();
    let total: u64 = peers.iter().map(|p| p.sent_bytes).sum();
    assert_eq!(total, 5 * msg_len);
}
