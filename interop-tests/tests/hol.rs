//! Head-of-line blocking between channels, QUIC beside MConn, on loopback.
//!
//! Scenario: channel BULK (priority 1) streams 4 MiB messages flat out while channel VOTE
//! (priority 10) sends 200-byte messages, one every [`VOTE_INTERVAL`], each carrying its send
//! time. VOTE delivery latency (from the sender's send call to the receiver's receive) is
//! measured idle (no bulk traffic) and under load, with the bulk throughput of the same load
//! phase. Both ends run in this process, so send and receive times come from one clock. The
//! scenario runs at two levels, for each transport:
//! * **connection**: two handshaken `Connection`s, BULK and VOTE sent by two tasks calling
//!   `Connection::send` concurrently (the transport's own multiplexing);
//! * **router**: two `p2p::Router`s with a BULK and a VOTE channel (what a node does).
//!
//! The figures are printed (`cargo test -p p2p-interop-tests --test hol -- --nocapture`). What
//! is asserted, and why it holds on a loaded 2-core CI machine:
//! * every vote is delivered, in order, at every level and on both transports (the only MConn
//!   assertion: its latencies are reported beside QUIC's, not judged);
//! * QUIC, both levels: the load phase overlaps real bulk traffic (at least
//!   [`MIN_BULK_IN_LOAD`] bulk messages complete while the votes are sent) and votes keep
//!   flowing through it: between two consecutive vote deliveries at most
//!   [`MAX_BULK_BETWEEN_VOTES`] bulk messages complete (votes stuck behind the bulk stream would
//!   let a run of bulk messages through before the next vote);
//! * QUIC latency, relative to the time one 4 MiB bulk message takes at the bulk rate measured
//!   in the same phase (phase duration / bulk messages completed), never to an absolute time: a
//!   slower or busier machine slows the bulk messages and the votes alike, and CPU contention
//!   that delays the vote tasks delays the bulk stream too. A vote queued *behind* bulk data
//!   (one FIFO shared by the channels) waits for every bulk message ahead of it in the
//!   pipeline, which is always full here: at least one bulk message time for nearly every vote,
//!   so the median tells the two apart with a wide margin while the p99 bound is generous
//!   (scheduling hiccups on 2 busy cores make the tail noisy).
//!   Both levels: loaded p50 < half a bulk message time and p99 < [`BULK_MESSAGES_P99`] bulk
//!   message times (measured on an idle machine: connection p50 0.02–0.1, p99 0.1–0.75; router
//!   p50 ≈ 0.06, p99 ≈ 0.65). This is the property itself: on QUIC, votes do not wait for whole
//!   bulk messages, neither in the transport nor in the router (whose per-peer writer keeps one
//!   send in flight per channel, so a BULK send waiting for stream credit does not hold up
//!   VOTE). The bounds fail a transport that queues votes behind bulk data (MConn here: p50 ≈
//!   12–25, p99 ≈ 30–50 bulk message times at both levels).
//!
//! Vote pacing uses a Tokio interval: it generates load, nothing waits on it for correctness;
//! every wait for a result is on the event itself, bounded by a generous timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2p::router::{ChannelDescriptor, OverflowPolicy, UnwrapError, Wrapper};
use p2p::{
    ChannelId, Connection, Endpoint, NodeAddress, NodeId, NodeInfo, NodeKey, Outbound,
    PeerManagerConfig, PeerStatus, PeerUpdates, Protocol, Router, RouterConfig, Transport,
};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use p2p_transport_quic::{QuicConfig, QuicTransport};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Bound of every wait; only reached on failure.
const T: Duration = Duration::from_secs(20);
const BULK: ChannelId = ChannelId(0x70);
const VOTE: ChannelId = ChannelId(0x71);
/// Size of a bulk message.
const BULK_SIZE: usize = 4 << 20;
/// Size of a vote on the wire (the router adds 3 bytes of protobuf framing to its payload).
const VOTE_SIZE: usize = 200;
const VOTE_INTERVAL: Duration = Duration::from_millis(2);
/// Votes sent with no bulk traffic.
const IDLE_VOTES: u64 = 100;
/// Votes sent while bulk messages stream.
const LOAD_VOTES: u64 = 500;
/// Least bulk messages that must complete during the load phase (QUIC).
const MIN_BULK_IN_LOAD: u64 = 5;
/// Most bulk messages that may complete between two consecutive vote deliveries (QUIC).
const MAX_BULK_BETWEEN_VOTES: u64 = 6;
/// QUIC, both levels: loaded p99 vote latency must stay below this many bulk message times.
const BULK_MESSAGES_P99: u32 = 2;

/// A vote: its sequence number and send time (nanoseconds since the scenario's base instant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Vote {
    seq: u64,
    sent_ns: u64,
}

impl Vote {
    fn encode(self, len: usize) -> Bytes {
        let mut b = vec![0u8; len];
        b[..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.sent_ns.to_le_bytes());
        Bytes::from(b)
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let field = |r: std::ops::Range<usize>| {
            b.get(r).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes)
        };
        Some(Self { seq: field(0..8)?, sent_ns: field(8..16)? })
    }
}

impl Wrapper for Vote {
    type Proto = Bytes;
    fn wrap(self) -> Bytes {
        self.encode(VOTE_SIZE - 3)
    }
    fn unwrap(proto: Bytes) -> Result<Self, UnwrapError> {
        Self::decode(&proto).ok_or_else(|| UnwrapError("short vote".into()))
    }
}

/// A bulk message: opaque bytes.
#[derive(Debug, Clone)]
struct Bulk(Bytes);

impl Wrapper for Bulk {
    type Proto = Bytes;
    fn wrap(self) -> Bytes {
        self.0
    }
    fn unwrap(proto: Bytes) -> Result<Self, UnwrapError> {
        Ok(Self(proto))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Quic,
    MConn,
}

fn descriptors() -> [ChannelDescriptor; 2] {
    [
        ChannelDescriptor::new(BULK)
            .with_priority(1)
            .with_max_message_size(BULK_SIZE + 16)
            .with_queue_capacity(4, 4)
            .with_overflow(OverflowPolicy::Wait(T)),
        ChannelDescriptor::new(VOTE)
            .with_priority(10)
            .with_max_message_size(1024)
            .with_queue_capacity(1024, 1024)
            .with_overflow(OverflowPolicy::Wait(T)),
    ]
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Sends one message of a scenario (panics on failure).
type SendFn<M> = Arc<dyn Fn(M) -> BoxFuture + Send + Sync>;

/// The ends of one scenario, whatever the level.
struct Ends {
    send_vote: SendFn<Vote>,
    send_bulk: SendFn<Bytes>,
    /// Delivered votes: the vote, its latency, and the bulk messages completed by then.
    votes: mpsc::Receiver<(Vote, Duration, u64)>,
    /// Bulk messages completed so far.
    bulk_done: watch::Receiver<u64>,
    /// Tears the scenario down (stops routers or closes connections, joins the tasks).
    shutdown: Box<dyn FnOnce() -> BoxFuture + Send>,
}

/// Delivery bookkeeping on the receiving side, shared by both levels.
#[derive(Clone)]
struct Sink {
    base: Instant,
    votes: mpsc::Sender<(Vote, Duration, u64)>,
    bulk_done: Arc<watch::Sender<u64>>,
}

impl Sink {
    fn bulk(&self, len: usize) {
        assert_eq!(len, BULK_SIZE);
        self.bulk_done.send_modify(|n| *n += 1);
    }
    fn vote(&self, vote: Vote) {
        let latency = self.base.elapsed() - Duration::from_nanos(vote.sent_ns);
        self.votes.try_send((vote, latency, *self.bulk_done.borrow())).unwrap();
    }
}

fn sink(base: Instant) -> (Sink, mpsc::Receiver<(Vote, Duration, u64)>, watch::Receiver<u64>) {
    // Room for every vote of the scenario: the sink never waits.
    let (votes, votes_rx) = mpsc::channel(usize::try_from(IDLE_VOTES + LOAD_VOTES).unwrap());
    let (bulk_done, bulk_rx) = watch::channel(0);
    (Sink { base, votes, bulk_done: Arc::new(bulk_done) }, votes_rx, bulk_rx)
}

/// A bound transport and the endpoint it listens on.
async fn transport(kind: Kind, key: &NodeKey) -> (Arc<dyn Transport>, Endpoint) {
    match kind {
        Kind::Quic => {
            let t = QuicTransport::bind("127.0.0.1:0".parse().unwrap(), key, QuicConfig::default())
                .unwrap();
            let at = Endpoint::socket(Protocol::QUIC, t.local_addr());
            (Arc::new(t), at)
        }
        Kind::MConn => {
            let t = MConnTransport::bind("127.0.0.1:0".parse().unwrap(), MConnConfig::default())
                .await
                .unwrap();
            let at = Endpoint::socket(Protocol::MCONN, t.local_addr().unwrap());
            (Arc::new(t), at)
        }
    }
}

/// Connection level: two handshaken connections; the receiver demultiplexes `receive`.
async fn connection_ends(kind: Kind, base: Instant) -> Ends {
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let (ta, _) = transport(kind, &ka).await;
    let (tb, to) = transport(kind, &kb).await;
    let info = |k: &NodeKey, m: &str| {
        NodeInfo::new(k.node_id(), "hol", m, [BULK, VOTE]).with_listen_addr("127.0.0.1:1")
    };
    let (ia, ib) = (info(&ka, "a"), info(&kb, "b"));
    let descs = descriptors();
    let (a, b) = tokio::join!(
        async {
            let mut c = ta.dial(&to).await.unwrap();
            c.handshake(&ia, &ka, &descs).await.unwrap();
            c
        },
        async {
            let mut c = tb.accept().await.unwrap();
            c.handshake(&ib, &kb, &descs).await.unwrap();
            c
        }
    );
    let a: Arc<dyn Connection> = Arc::from(a);
    let (sink, votes, bulk_done) = sink(base);
    let receiver = tokio::spawn(async move {
        while let Ok((ch, msg)) = b.receive().await {
            match ch {
                BULK => sink.bulk(msg.len()),
                VOTE => sink.vote(Vote::decode(&msg).unwrap()),
                other => panic!("message on channel {other}"),
            }
        }
    });
    let (av, ab, ac) = (a.clone(), a.clone(), a);
    Ends {
        send_vote: Arc::new(move |v: Vote| {
            let a = av.clone();
            Box::pin(async move { a.send(VOTE, v.encode(VOTE_SIZE)).await.unwrap() })
        }),
        send_bulk: Arc::new(move |m: Bytes| {
            let a = ab.clone();
            Box::pin(async move { a.send(BULK, m).await.unwrap() })
        }),
        votes,
        bulk_done,
        shutdown: Box::new(move || {
            Box::pin(async move {
                ac.close().await;
                tokio::time::timeout(T, receiver).await.unwrap().unwrap();
                drop((ta, tb));
            })
        }),
    }
}

struct Node {
    router: Router,
    updates: PeerUpdates,
    bulk: p2p::Channel<Bulk>,
    vote: p2p::Channel<Vote>,
    addr: NodeAddress,
}

async fn node(kind: Kind, moniker: &str) -> Node {
    let key = NodeKey::generate();
    let id = key.node_id();
    let (transport, at) = transport(kind, &key).await;
    let scheme = if kind == Kind::Quic { "quic" } else { "mconn" };
    let p2p::EndpointAddr::Socket(socket) = at.addr else { unreachable!() };
    let addr = format!("{scheme}://{id}@{socket}").parse().unwrap();
    let info = NodeInfo::new(id, "hol", moniker, Vec::<ChannelId>::new());
    let router =
        Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
            .unwrap();
    router.add_transport(transport).unwrap();
    let [bulk, vote] = descriptors();
    let bulk = router.open_channel::<Bulk>(bulk).unwrap();
    let vote = router.open_channel::<Vote>(vote).unwrap();
    let updates = router.subscribe();
    router.start().unwrap();
    Node { router, updates, bulk, vote, addr }
}

async fn wait_up(updates: &mut PeerUpdates) -> NodeId {
    loop {
        let u = tokio::time::timeout(T, updates.recv()).await.unwrap().unwrap();
        if u.status == PeerStatus::Up {
            return u.node_id;
        }
    }
}

/// Router level: two routers, each channel's receiver in its own task.
async fn router_ends(kind: Kind, base: Instant) -> Ends {
    let mut a = node(kind, "a").await;
    let mut b = node(kind, "b").await;
    let to = b.addr.node_id();
    a.router.add_address(b.addr.clone()).unwrap();
    assert_eq!(wait_up(&mut a.updates).await, to);
    assert_eq!(wait_up(&mut b.updates).await, a.addr.node_id());
    let (sink, votes, bulk_done) = sink(base);
    let Node { router: b_router, bulk: mut b_bulk, vote: mut b_vote, .. } = b;
    let bulk_receiver = {
        let sink = sink.clone();
        tokio::spawn(async move {
            while let Some(env) = b_bulk.recv().await {
                sink.bulk(env.message.0.len());
            }
        })
    };
    let vote_receiver = tokio::spawn(async move {
        while let Some(env) = b_vote.recv().await {
            sink.vote(env.message);
        }
    });
    let (vote_tx, bulk_tx) = (a.vote.sender(), a.bulk.sender());
    let a_router = a.router;
    Ends {
        send_vote: Arc::new(move |v: Vote| {
            let tx = vote_tx.clone();
            Box::pin(async move {
                assert_eq!(tx.send(Outbound::to(to, v)).await.unwrap().queued, 1);
            })
        }),
        send_bulk: Arc::new(move |m: Bytes| {
            let tx = bulk_tx.clone();
            Box::pin(async move {
                assert_eq!(tx.send(Outbound::to(to, Bulk(m))).await.unwrap().queued, 1);
            })
        }),
        votes,
        bulk_done,
        shutdown: Box::new(move || {
            Box::pin(async move {
                a_router.stop().await;
                b_router.stop().await;
                for task in [bulk_receiver, vote_receiver] {
                    tokio::time::timeout(T, task).await.unwrap().unwrap();
                }
            })
        }),
    }
}

/// Sorted latencies and their percentiles.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut v: Vec<Duration>) -> Self {
        v.sort();
        Self(v)
    }
    fn pct(&self, p: usize) -> Duration {
        self.0[(self.0.len() * p / 100).min(self.0.len() - 1)]
    }
    fn max(&self) -> Duration {
        *self.0.last().unwrap()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// What one scenario measured.
struct Figures {
    name: String,
    idle: Latencies,
    loaded: Latencies,
    /// Bulk messages completed during the load phase.
    bulk_msgs: u64,
    /// Duration of the load phase (first vote sent to last vote received).
    load_time: Duration,
    /// Most bulk messages completed between two consecutive vote deliveries.
    max_bulk_between_votes: u64,
}

impl Figures {
    fn bulk_rate(&self) -> f64 {
        (self.bulk_msgs * BULK_SIZE as u64) as f64 / self.load_time.as_secs_f64()
    }
    /// Time one bulk message took at the measured bulk rate.
    fn bulk_msg_time(&self) -> Duration {
        self.load_time / u32::try_from(self.bulk_msgs.max(1)).unwrap()
    }
    fn print(&self) {
        println!(
            "{:<17} idle p50 {} p99 {} | loaded p50 {} p90 {} p99 {} max {} | bulk {:.0} MB/s \
             ({} x 4 MiB in {}, {} per message; loaded p99 = {:.2} bulk messages) | at most {} \
             bulk messages between consecutive votes",
            self.name,
            ms(self.idle.pct(50)),
            ms(self.idle.pct(99)),
            ms(self.loaded.pct(50)),
            ms(self.loaded.pct(90)),
            ms(self.loaded.pct(99)),
            ms(self.loaded.max()),
            self.bulk_rate() / 1e6,
            self.bulk_msgs,
            ms(self.load_time),
            ms(self.bulk_msg_time()),
            self.loaded.pct(99).as_secs_f64() / self.bulk_msg_time().as_secs_f64(),
            self.max_bulk_between_votes,
        );
    }
}

/// Sends votes `first..first + count`, one per [`VOTE_INTERVAL`], and collects their
/// deliveries, which must be complete and in order.
async fn votes(ends: &mut Ends, base: Instant, first: u64, count: u64) -> Vec<(Duration, u64)> {
    let send = ends.send_vote.clone();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(VOTE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in first..first + count {
            tick.tick().await;
            let sent_ns = u64::try_from(base.elapsed().as_nanos()).unwrap();
            send(Vote { seq, sent_ns }).await;
        }
    });
    let mut got = Vec::new();
    for seq in first..first + count {
        let (vote, latency, bulk_done) =
            tokio::time::timeout(T, ends.votes.recv()).await.unwrap().unwrap();
        assert_eq!(vote.seq, seq, "votes arrive in order, none lost");
        got.push((latency, bulk_done));
    }
    sender.await.unwrap();
    got
}

async fn run(name: &str, ends: impl Future<Output = Ends>, base: Instant) -> Figures {
    let mut ends = ends.await;
    // Idle: votes only.
    let idle = votes(&mut ends, base, 0, IDLE_VOTES).await;
    assert_eq!(*ends.bulk_done.borrow(), 0);

    // Load: bulk flat out; the votes start once bulk messages are arriving.
    let stop = Arc::new(AtomicBool::new(false));
    let flood: JoinHandle<()> = {
        let (send, stop) = (ends.send_bulk.clone(), stop.clone());
        tokio::spawn(async move {
            let msg = Bytes::from(vec![0xb0; BULK_SIZE]);
            while !stop.load(Ordering::SeqCst) {
                send(msg.clone()).await;
            }
        })
    };
    tokio::time::timeout(T, ends.bulk_done.wait_for(|&n| n >= 2)).await.unwrap().unwrap();
    let (t0, done0) = (Instant::now(), *ends.bulk_done.borrow());
    let loaded = votes(&mut ends, base, IDLE_VOTES, LOAD_VOTES).await;
    let (load_time, done1) = (t0.elapsed(), *ends.bulk_done.borrow());
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(T, flood).await.unwrap().unwrap();
    (ends.shutdown)().await;

    let mut max_between = 0;
    let mut prev = done0;
    for &(_, done) in &loaded {
        max_between = max_between.max(done - prev);
        prev = done;
    }
    let figures = Figures {
        name: name.to_owned(),
        idle: Latencies::new(idle.into_iter().map(|(d, _)| d).collect()),
        loaded: Latencies::new(loaded.into_iter().map(|(d, _)| d).collect()),
        bulk_msgs: done1 - done0,
        load_time,
        max_bulk_between_votes: max_between,
    };
    figures.print();
    figures
}

fn assert_votes_flow(f: &Figures) {
    assert!(
        f.bulk_msgs >= MIN_BULK_IN_LOAD,
        "{}: only {} bulk messages completed while the votes were sent",
        f.name,
        f.bulk_msgs
    );
    assert!(
        f.max_bulk_between_votes <= MAX_BULK_BETWEEN_VOTES,
        "{}: {} bulk messages completed between two consecutive votes",
        f.name,
        f.max_bulk_between_votes
    );
}

/// One test, so that the four scenarios run one after another and do not compete for the CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_votes_beside_4_mib_bulk_messages() {
    let base = Instant::now();
    let quic_conn = run("QUIC connection", connection_ends(Kind::Quic, base), base).await;
    run("MConn connection", connection_ends(Kind::MConn, base), base).await;
    let quic_router = run("QUIC router", router_ends(Kind::Quic, base), base).await;
    run("MConn router", router_ends(Kind::MConn, base), base).await;

    assert_votes_flow(&quic_conn);
    assert_votes_flow(&quic_router);
    for f in [&quic_conn, &quic_router] {
        assert!(
            f.loaded.pct(50) < f.bulk_msg_time() / 2,
            "{}: loaded p50 vote latency {} is not below half a bulk message time ({})",
            f.name,
            ms(f.loaded.pct(50)),
            ms(f.bulk_msg_time())
        );
        assert!(
            f.loaded.pct(99) < f.bulk_msg_time() * BULK_MESSAGES_P99,
            "{}: loaded p99 vote latency {} is not below {BULK_MESSAGES_P99} bulk message times \
             ({} each)",
            f.name,
            ms(f.loaded.pct(99)),
            ms(f.bulk_msg_time())
        );
    }
}
