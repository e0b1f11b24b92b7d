//! `p2pd testnet`: N nodes in one process on loopback, with real transports and temporary
//! homes, gossiping transactions.
//!
//! [`run`] goes through these phases:
//!
//! 1. **Topology.** Every node gets a role ([`NodeRole`]): what it listens on. With
//!    [`TestnetTransport::Mixed`], half the nodes are QUIC-only, a quarter MConn-only and the
//!    rest dual-stack, interleaved. The links form a backbone (each node links to the nearest
//!    earlier node it shares a transport with; node 0 is dual-stack, so the backbone is a
//!    spanning tree) plus one random chord per node ([`TestnetOptions::seed`]). Of the two ends
//!    of a link, the later node dials, and it is given every address of the other node it can
//!    dial: a dual-stack node dialling a dual-stack node gets both `quic://` and `mconn://` and
//!    the router's QUIC preference decides.
//! 2. **Start.** Each node listens on `127.0.0.1`, port 0, with its peer store in its own
//!    directory under a temporary root that is removed at the end.
//! 3. **Connect.** Waits (bounded, [`CONNECT_TIMEOUT`]) until every link is up at both ends.
//! 4. **Gossip.** For [`TestnetOptions::duration`], every node submits transactions at a steady
//!    rate ([`TestnetOptions::rate`]: 100 a second, at most 800 for the whole network by
//!    default). Each transaction carries its origin,
//!    a sequence number and its send time; every node records the first arrival of each
//!    transaction of every other node, and its latency. Progress is shown once a second: a bar
//!    on a terminal, plain lines otherwise.
//! 5. **Drain.** Waits (bounded, [`DRAIN_TIMEOUT`]) until every transaction reached every other
//!    node, then stops the nodes gracefully and prints the summary table.
//!
//! The run fails ([`TestnetError`]) when the network does not connect or when not every
//! transaction reached every node, so the exit code of `p2pd testnet` means something.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::io::IsTerminal as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2p::router::PeerUpdatesError;
use p2p::{Direction, NodeAddress, NodeId, NodeKey, Protocol};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::gossip::{GossipConfig, TxEvent, TxGossip};
use crate::{Node, NodeError, NodeOptions};

/// The chain ID of testnet nodes.
pub const CHAIN_ID: &str = "p2pd-testnet";
/// The most nodes a testnet runs.
pub const MAX_NODES: usize = 1000;
/// How long the nodes have to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Transactions a node submits per second by default.
pub const DEFAULT_TX_RATE: u32 = 100;
/// Transactions the whole network submits per second at most by default.
pub const DEFAULT_NETWORK_TX_RATE: u32 = 800;
/// How long, after the last transaction was submitted, the run waits for it to reach every node.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Transactions the whole network submits per second at most by default behind the WAN
/// emulator: MConn carries about 0.2 MB/s per connection on the `lossy` profile (TCP under
/// 2% loss), so the default stays well below that on every link.
pub const DEFAULT_WAN_NETWORK_TX_RATE: u32 = 160;
/// [`CONNECT_TIMEOUT`] behind the WAN emulator (a dial over a lossy 150 ms path may need
/// several retransmission timeouts).
pub const WAN_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// [`DRAIN_TIMEOUT`] behind the WAN emulator.
pub const WAN_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// The header every testnet transaction starts with: magic, origin, sequence number, send time.
const TX_HEADER: usize = 4 + 4 + 8 + 8;
const TX_MAGIC: [u8; 4] = *b"p2tn";

/// Which transports the testnet's nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TestnetTransport {
    /// Every node listens on QUIC only.
    Quic,
    /// Every node listens on MConn only.
    Mconn,
    /// Half the nodes QUIC-only, a quarter MConn-only, the rest dual-stack (the default).
    #[default]
    Mixed,
}

impl fmt::Display for TestnetTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Quic => "quic",
            Self::Mconn => "mconn",
            Self::Mixed => "mixed",
        })
    }
}

/// What [`run`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TestnetOutput {
    /// A live progress bar if stdout is a terminal, plain progress lines otherwise (the
    /// default).
    #[default]
    Auto,
    /// Plain progress lines, one a second.
    Plain,
    /// Nothing.
    Quiet,
}

/// Settings of a testnet run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TestnetOptions {
    /// Number of nodes (default 8; from 2 to [`MAX_NODES`]).
    pub nodes: usize,
    /// Transports (default mixed).
    pub transport: TestnetTransport,
    /// How long transactions are gossiped (default 8 s).
    pub duration: Duration,
    /// Transactions each node submits per second; `None` (the default):
    /// [`DEFAULT_TX_RATE`] per node, but at most [`DEFAULT_NETWORK_TX_RATE`] for the whole
    /// network (at least 1 per node), so that a large network does not saturate the machine
    /// it runs on.
    pub tx_rate: Option<u32>,
    /// Size of each transaction in bytes (default 256; at least 24, the header).
    pub tx_size: usize,
    /// Seed of the random chords of the topology (default 1).
    pub seed: u64,
    /// What is printed (default: a progress bar on a terminal, plain lines otherwise).
    pub output: TestnetOutput,
    /// Run every node in its own network namespace behind the WAN lab's link emulator with
    /// this profile (default: none, all nodes on `127.0.0.1`). Needs root.
    #[cfg(feature = "wan")]
    pub wan: Option<p2p_wanlab::Profile>,
}

impl TestnetOptions {
    /// The rate each node submits transactions at: [`tx_rate`](Self::tx_rate) or the default.
    pub fn rate(&self) -> u32 {
        let network =
            if self.is_wan() { DEFAULT_WAN_NETWORK_TX_RATE } else { DEFAULT_NETWORK_TX_RATE };
        self.tx_rate.unwrap_or_else(|| {
            let share = network / u32::try_from(self.nodes).unwrap_or(u32::MAX);
            share.clamp(1, DEFAULT_TX_RATE)
        })
    }

    /// Whether the nodes run behind the WAN emulator.
    pub fn is_wan(&self) -> bool {
        #[cfg(feature = "wan")]
        return self.wan.is_some();
        #[cfg(not(feature = "wan"))]
        false
    }

    fn connect_timeout(&self) -> Duration {
        if self.is_wan() { WAN_CONNECT_TIMEOUT } else { CONNECT_TIMEOUT }
    }

    fn drain_timeout(&self) -> Duration {
        if self.is_wan() { WAN_DRAIN_TIMEOUT } else { DRAIN_TIMEOUT }
    }
}

impl Default for TestnetOptions {
    fn default() -> Self {
        Self {
            nodes: 8,
            transport: TestnetTransport::Mixed,
            duration: Duration::from_secs(8),
            tx_rate: None,
            tx_size: 256,
            seed: 1,
            output: TestnetOutput::Auto,
            #[cfg(feature = "wan")]
            wan: None,
        }
    }
}

/// What a testnet node listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodeRole {
    /// QUIC only.
    Quic,
    /// MConn only.
    Mconn,
    /// Both QUIC and MConn.
    Dual,
}

impl NodeRole {
    /// Whether the node listens on (and dials) QUIC.
    pub fn has_quic(self) -> bool {
        matches!(self, Self::Quic | Self::Dual)
    }

    /// Whether the node listens on (and dials) MConn.
    pub fn has_mconn(self) -> bool {
        matches!(self, Self::Mconn | Self::Dual)
    }

    /// The transport two nodes of these roles connect over (QUIC if both have it), if any.
    pub fn link_protocol(self, other: Self) -> Option<Protocol> {
        if self.has_quic() && other.has_quic() {
            Some(Protocol::QUIC)
        } else if self.has_mconn() && other.has_mconn() {
            Some(Protocol::MCONN)
        } else {
            None
        }
    }

    fn can_dial(self, protocol: &Protocol) -> bool {
        (*protocol == Protocol::QUIC && self.has_quic())
            || (*protocol == Protocol::MCONN && self.has_mconn())
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Quic => "quic",
            Self::Mconn => "mconn",
            Self::Dual => "quic+mconn",
        })
    }
}

/// One node's numbers in a [`TestnetReport`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeReport {
    /// The node's index (0-based).
    pub index: usize,
    /// Its node ID.
    pub node_id: NodeId,
    /// What it listens on.
    pub role: NodeRole,
    /// Peers it should have (its links in the topology).
    pub expected_peers: usize,
    /// Peers connected at the end of the run.
    pub peers: usize,
    /// Connected peers by the transport in use, most used first.
    pub transports: Vec<(Protocol, usize)>,
    /// Transactions it submitted.
    pub txs_sent: u64,
    /// Transactions of other nodes it received (first arrivals).
    pub txs_received: u64,
    /// Transactions of other nodes it should have received (all of them).
    pub txs_expected: u64,
    /// Message bytes sent to its connected peers (per-connection counters at the end).
    pub bytes_sent: u64,
    /// Message bytes received from its connected peers.
    pub bytes_received: u64,
    /// Median latency from submission at the origin to first arrival here.
    pub latency_p50: Option<Duration>,
    /// 99th-percentile latency.
    pub latency_p99: Option<Duration>,
    /// Transaction events its recorder missed because it fell behind.
    pub lagged: u64,
    /// Dials that connected through an address other than the preferred one.
    pub dial_fallbacks: u64,
}

/// What a testnet run measured.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TestnetReport {
    /// The transports of the run.
    pub transport: TestnetTransport,
    /// The WAN profile the nodes ran behind (`None`: loopback).
    pub wan: Option<String>,
    /// One row per node, by index.
    pub nodes: Vec<NodeReport>,
    /// Links in the topology.
    pub links: usize,
    /// Connections at the end of the run by the transport in use (each counted once).
    pub links_by_transport: Vec<(Protocol, usize)>,
    /// Time from the first node's start until every link was up (nodes dial as they start).
    pub connect_time: Duration,
    /// Time transactions were submitted.
    pub gossip_time: Duration,
    /// Time from the last submission until every transaction had arrived everywhere (or the
    /// drain timed out).
    pub drain_time: Duration,
    /// Transactions submitted, all nodes.
    pub txs_sent: u64,
    /// Deliveries expected: every transaction to every other node.
    pub txs_expected: u64,
    /// Deliveries seen (first arrivals at nodes other than the origin).
    pub txs_delivered: u64,
    /// Message bytes sent, all nodes.
    pub bytes_sent: u64,
    /// Median delivery latency, all nodes.
    pub latency_p50: Option<Duration>,
    /// 99th-percentile delivery latency, all nodes.
    pub latency_p99: Option<Duration>,
    /// Largest delivery latency.
    pub latency_max: Option<Duration>,
    /// Transaction events missed by lagging recorders, all nodes.
    pub lagged: u64,
    /// Transaction copies dropped on full peer queues by the gossip, all nodes.
    pub gossip_dropped: u64,
    /// Dials that fell back to a less preferred address, all nodes.
    pub dial_fallbacks: u64,
}

impl TestnetReport {
    /// Deliveries seen over deliveries expected (1 when none were expected).
    pub fn delivery_ratio(&self) -> f64 {
        if self.txs_expected == 0 {
            1.0
        } else {
            self.txs_delivered as f64 / self.txs_expected as f64
        }
    }

    /// Whether every transaction reached every other node.
    pub fn is_complete(&self) -> bool {
        self.txs_delivered >= self.txs_expected
    }
}

/// Why a testnet run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestnetError {
    /// The options cannot be run.
    #[error("invalid testnet options: {0}")]
    InvalidOptions(String),
    /// The temporary home directory could not be created.
    #[error("cannot create the temporary home directory: {0}")]
    Home(#[source] std::io::Error),
    /// A node could not start.
    #[error("node {index} did not start: {source}")]
    Start {
        /// Which node.
        index: usize,
        /// Why.
        source: Box<NodeError>,
    },
    /// Not every link came up in time.
    #[error(
        "the network did not connect within {timeout:?}: {up}/{expected} links up; missing: {}",
        missing.join(", ")
    )]
    NotConnected {
        /// The bound.
        timeout: Duration,
        /// Links up.
        up: usize,
        /// Links in the topology.
        expected: usize,
        /// The links that were not up (`a–b (protocol)`).
        missing: Vec<String>,
    },
    /// A node's transaction gossip stopped during the run.
    #[error("node {index}: transaction gossip stopped")]
    GossipStopped {
        /// Which node.
        index: usize,
    },
    /// A task of the run panicked.
    #[error("a testnet task failed: {0}")]
    Task(String),
    /// The WAN lab (namespaces, TUN devices, emulator) could not be set up.
    #[error("WAN lab: {0}")]
    Wan(String),
    /// Not every transaction reached every other node in time.
    #[error(
        "only {delivered} of {expected} transaction deliveries arrived ({:.2}%)",
        report.delivery_ratio() * 100.0
    )]
    Incomplete {
        /// Deliveries seen.
        delivered: u64,
        /// Deliveries expected.
        expected: u64,
        /// The whole report.
        report: Box<TestnetReport>,
    },
}

/// Runs a testnet, printing live progress and the summary to stdout (see the
/// [module docs](self)). Must be called inside a Tokio runtime.
pub async fn run(options: TestnetOptions) -> Result<TestnetReport, TestnetError> {
    validate(&options)?;
    let topology = Topology::new(options.nodes, options.transport, options.seed)?;
    let out = Output::new(options.output);
    let root =
        tempfile::Builder::new().prefix("p2pd-testnet-").tempdir().map_err(TestnetError::Home)?;
    out.line(&header(&options, &topology, root.path()));

    let mut net = Network::default();
    let result = drive(&options, &topology, root.path(), &mut net, &out).await;
    let stopping = Instant::now();
    let stopped = net.members.len();
    net.stop().await;
    out.line(&format!("stopped {stopped} nodes in {}", fmt_duration(stopping.elapsed())));
    let report = result?;
    out.line("");
    out.line(&summary(&report));
    if report.is_complete() {
        Ok(report)
    } else {
        Err(TestnetError::Incomplete {
            delivered: report.txs_delivered,
            expected: report.txs_expected,
            report: Box::new(report),
        })
    }
}

fn validate(options: &TestnetOptions) -> Result<(), TestnetError> {
    let invalid = |s: String| Err(TestnetError::InvalidOptions(s));
    if options.nodes < 2 || options.nodes > MAX_NODES {
        return invalid(format!("nodes must be from 2 to {MAX_NODES}, not {}", options.nodes));
    }
    if options.tx_rate == Some(0) {
        return invalid("the transaction rate must be at least 1 per second".to_owned());
    }
    if options.tx_size < TX_HEADER || options.tx_size > p2p::mempool::DEFAULT_MAX_TX_BYTES {
        return invalid(format!(
            "transactions must be from {TX_HEADER} to {} bytes, not {}",
            p2p::mempool::DEFAULT_MAX_TX_BYTES,
            options.tx_size
        ));
    }
    if options.duration > Duration::from_secs(24 * 3600) {
        return invalid("the duration must be at most a day".to_owned());
    }
    let needs_quic = options.transport != TestnetTransport::Mconn;
    let needs_mconn = options.transport != TestnetTransport::Quic;
    if needs_quic && !cfg!(feature = "quic") {
        return invalid(format!("{} needs the `quic` feature", options.transport));
    }
    if needs_mconn && !cfg!(feature = "mconn") {
        return invalid(format!("{} needs the `mconn` feature", options.transport));
    }
    Ok(())
}

/// A link of the topology: `dialer` (the later node) dials `target`.
#[derive(Debug, Clone)]
struct Link {
    dialer: usize,
    target: usize,
    protocol: Protocol,
}

#[derive(Debug)]
struct Topology {
    roles: Vec<NodeRole>,
    links: Vec<Link>,
}

impl Topology {
    fn new(nodes: usize, transport: TestnetTransport, seed: u64) -> Result<Self, TestnetError> {
        let roles = roles(nodes, transport);
        let mut pairs: BTreeSet<(usize, usize)> = BTreeSet::new();
        // Backbone: each node links to the nearest earlier node it shares a transport with.
        for (i, role) in roles.iter().enumerate() {
            if let Some((j, _)) = roles
                .iter()
                .enumerate()
                .take(i)
                .rev()
                .find(|(_, r)| r.link_protocol(*role).is_some())
            {
                pairs.insert((j, i));
            }
        }
        // Chords: one random compatible non-neighbour per node.
        let mut rng = SmallRng::seed_from_u64(seed);
        for (i, role) in roles.iter().enumerate() {
            let candidates: Vec<usize> = (roles.iter().enumerate())
                .filter(|(j, r)| {
                    *j != i
                        && r.link_protocol(*role).is_some()
                        && !pairs.contains(&((*j).min(i), (*j).max(i)))
                })
                .map(|(j, _)| j)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            if let Some(&j) = candidates.get(rng.random_range(0..candidates.len())) {
                pairs.insert((j.min(i), j.max(i)));
            }
        }
        let links: Vec<Link> = pairs
            .into_iter()
            .filter_map(|(a, b)| {
                let protocol = roles.get(a)?.link_protocol(*roles.get(b)?)?;
                Some(Link { dialer: b, target: a, protocol })
            })
            .collect();
        // The backbone makes the graph connected; check it anyway.
        let mut reached = BTreeSet::from([0]);
        loop {
            let before = reached.len();
            for l in &links {
                if reached.contains(&l.dialer) || reached.contains(&l.target) {
                    reached.insert(l.dialer);
                    reached.insert(l.target);
                }
            }
            if reached.len() == before {
                break;
            }
        }
        if reached.len() != nodes {
            return Err(TestnetError::InvalidOptions(format!(
                "no connected topology for {nodes} nodes with {transport} transports"
            )));
        }
        Ok(Self { roles, links })
    }

    fn neighbours(&self, index: usize) -> impl Iterator<Item = usize> + '_ {
        self.links.iter().filter_map(move |l| {
            if l.dialer == index {
                Some(l.target)
            } else if l.target == index {
                Some(l.dialer)
            } else {
                None
            }
        })
    }

    fn count(&self, role: NodeRole) -> usize {
        self.roles.iter().filter(|r| **r == role).count()
    }
}

/// The roles of `n` nodes: for mixed, half QUIC-only, a quarter MConn-only and the rest (at
/// least one) dual-stack, each spread evenly over the indices, node 0 dual-stack.
fn roles(n: usize, transport: TestnetTransport) -> Vec<NodeRole> {
    match transport {
        TestnetTransport::Quic => vec![NodeRole::Quic; n],
        TestnetTransport::Mconn => vec![NodeRole::Mconn; n],
        TestnetTransport::Mixed => {
            let quic = n / 2;
            let mconn = n / 4;
            let dual = n - quic - mconn;
            // (k, count, rank, role): the k-th of `count` nodes sits at fraction k/count.
            let mut slots: Vec<(usize, usize, usize, NodeRole)> = Vec::with_capacity(n);
            for (rank, (count, role)) in
                [(dual, NodeRole::Dual), (quic, NodeRole::Quic), (mconn, NodeRole::Mconn)]
                    .into_iter()
                    .enumerate()
            {
                slots.extend((0..count).map(|k| (k, count, rank, role)));
            }
            slots.sort_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)).then(a.2.cmp(&b.2)));
            slots.into_iter().map(|s| s.3).collect()
        }
    }
}

/// Per-node counters shared with its tasks.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
}

/// What a node's recorder saw.
#[derive(Debug, Default)]
struct Received {
    /// Latencies of first arrivals, nanoseconds.
    latencies: Vec<u64>,
    lagged: u64,
}

#[derive(Debug)]
struct Member {
    node: Node,
    gossip: TxGossip,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Network {
    members: Vec<Member>,
    /// Recorders, in node order.
    recorders: Vec<tokio::task::JoinHandle<Received>>,
    /// Peer-update forwarders; aborted when dropped.
    watchers: JoinSet<()>,
    /// The WAN lab and the nodes' runtimes (one per namespace), if the run has one.
    #[cfg(feature = "wan")]
    wan: Option<Wan>,
}

/// Where a node runs: the address it listens on, and the runtime whose threads are in its
/// network namespace (`None`: the caller's runtime, on loopback).
struct Place {
    ip: Ipv4Addr,
    runtime: Option<tokio::runtime::Handle>,
}

impl Network {
    async fn stop(mut self) {
        self.watchers.abort_all();
        for r in &self.recorders {
            r.abort();
        }
        let mut stops = JoinSet::new();
        let members: Vec<Member> = self.members.drain(..).collect();
        for (index, m) in members.into_iter().enumerate() {
            // A node stops on the runtime it runs on (its sockets are registered there).
            match self.place(index).runtime {
                Some(rt) => {
                    let task = rt.spawn(m.node.stop());
                    stops.spawn(async move {
                        let _ = task.await;
                    });
                }
                None => {
                    stops.spawn(m.node.stop());
                }
            }
        }
        while stops.join_next().await.is_some() {}
        #[cfg(feature = "wan")]
        if let Some(wan) = self.wan.take() {
            wan.shutdown();
        }
    }

    fn place(&self, index: usize) -> Place {
        #[cfg(feature = "wan")]
        if let Some(wan) = &self.wan {
            return wan.place(index);
        }
        let _ = index;
        Place { ip: Ipv4Addr::LOCALHOST, runtime: None }
    }

    fn wan_name(&self) -> Option<String> {
        #[cfg(feature = "wan")]
        return self.wan.as_ref().map(|w| w.profile.name().to_owned());
        #[cfg(not(feature = "wan"))]
        None
    }

    fn delivered(&self) -> u64 {
        self.members.iter().map(|m| m.counters.received.load(Ordering::Relaxed)).sum()
    }

    fn sent(&self) -> u64 {
        self.members.iter().map(|m| m.counters.sent.load(Ordering::Relaxed)).sum()
    }

    /// Message bytes sent on all current connections.
    fn bytes_sent(&self) -> u64 {
        (self.members.iter())
            .flat_map(|m| m.node.router().connected_peers())
            .map(|p| p.sent_bytes)
            .sum()
    }

    /// Links of `topology` up at both ends.
    fn links_up<'t>(&self, topology: &'t Topology) -> (usize, Vec<&'t Link>) {
        let connected: Vec<HashSet<NodeId>> = (self.members.iter())
            .map(|m| m.node.router().connected_peers().into_iter().map(|p| p.node_id).collect())
            .collect();
        let id = |i: usize| self.members.get(i).map(|m| m.node.id());
        let sees = |a: usize, b: usize| {
            id(b).is_some_and(|b| connected.get(a).is_some_and(|set| set.contains(&b)))
        };
        let missing: Vec<&Link> = (topology.links.iter())
            .filter(|l| !(sees(l.dialer, l.target) && sees(l.target, l.dialer)))
            .collect();
        (topology.links.len() - missing.len(), missing)
    }
}

/// The WAN lab of a run: one network namespace per node behind the link emulator, and one
/// single-worker runtime per namespace (a socket belongs to the namespace of the thread that
/// created it, and MConn dials create theirs on the dialling node's runtime).
#[cfg(feature = "wan")]
struct Wan {
    profile: p2p_wanlab::Profile,
    runtimes: Vec<tokio::runtime::Runtime>,
    lab: p2p_wanlab::Lab,
}

#[cfg(feature = "wan")]
impl fmt::Debug for Wan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wan").field("profile", &self.profile).finish_non_exhaustive()
    }
}

#[cfg(feature = "wan")]
impl Wan {
    fn start(profile: p2p_wanlab::Profile, nodes: usize, seed: u64) -> Result<Self, TestnetError> {
        let wan_err = |e: p2p_wanlab::LabError| TestnetError::Wan(e.to_string());
        let lab = p2p_wanlab::LabBuilder::new(nodes, profile.link())
            .seed(seed)
            .start()
            .map_err(wan_err)?;
        let runtimes = (lab.nodes().iter())
            .map(|ns| ns.runtime(1))
            .collect::<Result<Vec<_>, _>>()
            .map_err(wan_err)?;
        Ok(Self { profile, runtimes, lab })
    }

    fn place(&self, index: usize) -> Place {
        let ip = self.lab.nodes().get(index).map_or(Ipv4Addr::LOCALHOST, |ns| ns.addr());
        Place { ip, runtime: self.runtimes.get(index).map(|rt| rt.handle().clone()) }
    }

    /// Stops the runtimes (without blocking: this runs inside the caller's runtime), then the
    /// emulator.
    fn shutdown(self) {
        for rt in self.runtimes {
            rt.shutdown_background();
        }
        drop(self.lab);
    }
}

async fn drive(
    options: &TestnetOptions,
    topology: &Topology,
    root: &Path,
    net: &mut Network,
    out: &Output,
) -> Result<TestnetReport, TestnetError> {
    let n = options.nodes;
    let total_per_node = txs_per_node(options);
    let total = usize::try_from(total_per_node.saturating_mul(n as u64)).unwrap_or(usize::MAX);
    let gossip_config = GossipConfig {
        // Remember every transaction of the run, so none is forwarded twice.
        cache_size: total.saturating_add(1024).clamp(10_000, 4_000_000),
        // Room for every event of the run, within reason (a broadcast channel allocates its
        // slots up front); a recorder that still falls behind counts what it missed.
        events_capacity: total.clamp(4096, 1 << 16),
        ..GossipConfig::default()
    };
    // The shared time base of the transactions' send times.
    let base = Instant::now();
    let (stop_recorders, stop_rx) = watch::channel(false);
    let changed = Arc::new(Notify::new());

    // Start.
    #[cfg(feature = "wan")]
    if let Some(profile) = options.wan {
        net.wan = Some(Wan::start(profile, n, options.seed)?);
    }
    let started = Instant::now();
    for (index, role) in topology.roles.iter().enumerate() {
        let mut peers = Vec::new();
        for link in topology.links.iter().filter(|l| l.dialer == index) {
            if let Some(target) = net.members.get(link.target) {
                peers.extend(
                    (target.node.addresses().iter())
                        .filter(|a| role.can_dial(a.protocol()))
                        .cloned(),
                );
            }
        }
        // QUIC first: the order the router would prefer anyway.
        peers.sort_by_key(|a| *a.protocol() != Protocol::QUIC);
        let node = start_node(index, *role, root, &gossip_config, &peers, net.place(index)).await?;
        let Some(gossip) = node.gossip().cloned() else {
            return Err(TestnetError::GossipStopped { index });
        };
        let mut updates = node.router().subscribe();
        let wake = changed.clone();
        net.watchers.spawn(async move {
            loop {
                match updates.recv().await {
                    Err(PeerUpdatesError::Closed) => return,
                    _ => wake.notify_one(),
                }
            }
        });
        let counters = Arc::new(Counters::default());
        let origin = u32::try_from(index).unwrap_or(u32::MAX);
        net.recorders.push(tokio::spawn(record(
            origin,
            gossip.subscribe(),
            base,
            stop_rx.clone(),
            counters.clone(),
            changed.clone(),
        )));
        net.members.push(Member { node, gossip, counters });
    }
    out.line(&format!("started {n} nodes in {}", fmt_duration(started.elapsed())));

    // Connect.
    let connecting = Instant::now();
    // Dials start with the nodes; the connect time counts from the first start.
    let expected_links = topology.links.len();
    let mut progress = Progress::spinner(out.mode, "connect");
    let deadline = connecting + options.connect_timeout();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_print = None::<Instant>;
    loop {
        let (up, missing) = net.links_up(topology);
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            progress.finish(None);
            return Err(TestnetError::NotConnected {
                timeout: options.connect_timeout(),
                up,
                expected: expected_links,
                missing: missing
                    .iter()
                    .map(|l| format!("{}–{} ({})", l.target, l.dialer, l.protocol))
                    .collect(),
            });
        }
        let msg = format!("{up}/{expected_links} links up");
        if last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            progress.update(None, msg, true);
            last_print = Some(Instant::now());
        } else {
            progress.update(None, msg, false);
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = ticker.tick() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    let connect_time = started.elapsed();
    let by_transport = links_by_transport(net);
    progress.finish(Some(format!(
        "{} up {} after the first node started ({})",
        if expected_links == 1 {
            "the link".to_owned()
        } else {
            format!("all {expected_links} links")
        },
        fmt_duration(connect_time),
        fmt_transports(&by_transport, " ")
    )));

    // Gossip.
    let gossiping = Instant::now();
    let mut senders = JoinSet::new();
    for (index, m) in net.members.iter().enumerate() {
        senders.spawn(send(
            index,
            m.gossip.clone(),
            base,
            gossiping,
            options.duration,
            options.rate(),
            options.tx_size,
            m.counters.clone(),
        ));
    }
    let duration_ms = u64::try_from(options.duration.as_millis()).unwrap_or(u64::MAX);
    let mut progress = Progress::bar(out.mode, duration_ms.max(1), "gossip");
    progress.update(Some(0), format!("links {expected_links}/{expected_links}"), false);
    // The bar moves four times a second; rates are measured once a second.
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last = Sample { at: gossiping, sent: 0, delivered: 0, bytes: net.bytes_sent() };
    let bytes_at_start = last.bytes;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let elapsed = gossiping.elapsed().min(options.duration);
                let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                if last.at.elapsed() < Duration::from_millis(990) {
                    progress.update(Some(ms), None, false);
                    continue;
                }
                let now = Sample::take(net);
                let (up, _) = net.links_up(topology);
                let msg = format!(
                    "{:>4.1}/{} s  links {up}/{expected_links}  {} tx/s  {} deliveries/s  {}/s",
                    elapsed.as_secs_f64(),
                    options.duration.as_secs_f64(),
                    fmt_count(now.rate(&last, |s| s.sent)),
                    fmt_count(now.rate(&last, |s| s.delivered)),
                    fmt_bytes(now.rate(&last, |s| s.bytes)),
                );
                progress.update(Some(ms), msg, true);
                last = now;
            }
            done = senders.join_next() => match done {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(index))) => {
                    progress.finish(None);
                    return Err(TestnetError::GossipStopped { index });
                }
                Some(Err(e)) => {
                    progress.finish(None);
                    return Err(TestnetError::Task(e.to_string()));
                }
            },
        }
    }
    let gossip_time = gossiping.elapsed();
    let sent = net.sent();
    let expected = sent.saturating_mul(n as u64 - 1);
    let bytes = net.bytes_sent().saturating_sub(bytes_at_start);
    progress.finish(Some(format!(
        "gossiped {} transactions in {} ({} tx/s, {}/s on the wire)",
        fmt_count(sent),
        fmt_duration(gossip_time),
        fmt_count(per_second(sent, gossip_time)),
        fmt_bytes(per_second(bytes, gossip_time)),
    )));

    // Drain.
    let draining = Instant::now();
    let deadline = draining + options.drain_timeout();
    loop {
        let notified = changed.notified();
        if net.delivered() >= expected || Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    let delivered = net.delivered();
    let drain_time = draining.elapsed();
    out.line(&format!(
        "delivered {}/{} ({:.2}%) within {} after the last submission",
        fmt_count(delivered),
        fmt_count(expected),
        ratio(delivered, expected) * 100.0,
        fmt_duration(drain_time)
    ));

    // Collect.
    let _ = stop_recorders.send(true);
    let mut received = Vec::with_capacity(n);
    for r in net.recorders.drain(..) {
        received.push(r.await.map_err(|e| TestnetError::Task(e.to_string()))?);
    }
    let mut report = TestnetReport {
        transport: options.transport,
        wan: net.wan_name(),
        links: expected_links,
        links_by_transport: links_by_transport(net),
        connect_time,
        gossip_time,
        drain_time,
        ..TestnetReport::default()
    };
    let mut all_latencies = Vec::new();
    for ((index, m), (role, mut rec)) in
        net.members.iter().enumerate().zip(topology.roles.iter().zip(received))
    {
        let peers = m.node.router().connected_peers();
        let stats = m.node.router().stats();
        let mut transports: BTreeMap<Protocol, usize> = BTreeMap::new();
        for p in &peers {
            *transports.entry(p.endpoint.protocol.clone()).or_default() += 1;
        }
        let mut transports: Vec<(Protocol, usize)> = transports.into_iter().collect();
        transports.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let txs_sent = m.counters.sent.load(Ordering::Relaxed);
        rec.latencies.sort_unstable();
        let node = NodeReport {
            index,
            node_id: m.node.id(),
            role: *role,
            expected_peers: topology.neighbours(index).count(),
            peers: peers.len(),
            transports,
            txs_sent,
            txs_received: m.counters.received.load(Ordering::Relaxed),
            txs_expected: sent - txs_sent,
            bytes_sent: peers.iter().map(|p| p.sent_bytes).sum(),
            bytes_received: peers.iter().map(|p| p.received_bytes).sum(),
            latency_p50: percentile(&rec.latencies, 50),
            latency_p99: percentile(&rec.latencies, 99),
            lagged: rec.lagged,
            dial_fallbacks: stats.dial_fallbacks,
        };
        report.txs_sent += node.txs_sent;
        report.txs_expected += node.txs_expected;
        report.txs_delivered += node.txs_received;
        report.bytes_sent += node.bytes_sent;
        report.lagged += node.lagged;
        report.dial_fallbacks += node.dial_fallbacks;
        report.gossip_dropped += m.gossip.stats().dropped;
        report.nodes.push(node);
        all_latencies.append(&mut rec.latencies);
    }
    all_latencies.sort_unstable();
    report.latency_p50 = percentile(&all_latencies, 50);
    report.latency_p99 = percentile(&all_latencies, 99);
    report.latency_max = all_latencies.last().map(|ns| Duration::from_nanos(*ns));
    Ok(report)
}

async fn start_node(
    index: usize,
    role: NodeRole,
    root: &Path,
    gossip: &GossipConfig,
    peers: &[NodeAddress],
    place: Place,
) -> Result<Node, TestnetError> {
    let key = NodeKey::generate();
    let loopback = SocketAddr::from((place.ip, 0));
    let home = root.join(format!("node{index}"));
    // A dual-stack node's QUIC listener takes its MConn port number; should that UDP port be
    // taken, try again with another.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut options =
            NodeOptions::new(key.clone(), CHAIN_ID).with_moniker(format!("testnet-{index}"));
        options.peer_store = Some(home.join("data").join("peers.redb"));
        options.gossip = Some(gossip.clone());
        options.peers = peers.to_vec();
        // The testnet's links are its topology (counted and checked): no peer exchange.
        options.pex = None;
        #[cfg(feature = "mconn")]
        if role.has_mconn() {
            options = options.with_mconn(loopback);
        }
        #[cfg(feature = "quic")]
        if role.has_quic() {
            options = options.with_quic(loopback);
        }
        let _ = (role, loopback);
        let started = match &place.runtime {
            Some(rt) => rt
                .spawn(Node::start(options))
                .await
                .map_err(|e| TestnetError::Task(e.to_string()))?,
            None => Node::start(options).await,
        };
        match started {
            Ok(node) => return Ok(node),
            Err(NodeError::Listen { .. }) if attempts < 3 && role == NodeRole::Dual => continue,
            Err(source) => return Err(TestnetError::Start { index, source: Box::new(source) }),
        }
    }
}

fn txs_per_node(options: &TestnetOptions) -> u64 {
    (options.duration.as_secs_f64() * f64::from(options.rate())).round() as u64
}

/// Submits `rate` transactions a second for `duration` from `start`; returns `Err(index)` if
/// the gossip stopped.
#[allow(clippy::too_many_arguments)]
async fn send(
    index: usize,
    gossip: TxGossip,
    base: Instant,
    start: Instant,
    duration: Duration,
    rate: u32,
    size: usize,
    counters: Arc<Counters>,
) -> Result<(), usize> {
    let total = (duration.as_secs_f64() * f64::from(rate)).round() as u64;
    let origin = u32::try_from(index).unwrap_or(u32::MAX);
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0;
    while seq < total {
        ticker.tick().await;
        let due = ((start.elapsed().as_secs_f64() * f64::from(rate)) as u64 + 1).min(total);
        while seq < due {
            let tx = encode_tx(origin, seq, base.elapsed(), size);
            gossip.submit(tx).await.map_err(|_| index)?;
            counters.sent.fetch_add(1, Ordering::Relaxed);
            seq += 1;
        }
    }
    // The phase lasts `duration` even though the last transaction may go out a little earlier.
    tokio::time::sleep_until(start + duration).await;
    Ok(())
}

/// Records first arrivals of other nodes' transactions until told to stop (after draining
/// what is buffered).
async fn record(
    own: u32,
    mut events: broadcast::Receiver<TxEvent>,
    base: Instant,
    mut stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
    changed: Arc<Notify>,
) -> Received {
    let mut seen: HashSet<(u32, u64)> = HashSet::new();
    let mut out = Received::default();
    loop {
        let event = tokio::select! {
            biased;
            event = events.recv() => event,
            _ = stop.wait_for(|s| *s) => return out,
        };
        match event {
            Ok(event) => {
                if event.from.is_none() {
                    continue;
                }
                let Some(tx) = decode_tx(&event.tx) else { continue };
                if tx.origin == own || !seen.insert((tx.origin, tx.seq)) {
                    continue;
                }
                let sent_at = base + tx.sent;
                out.latencies.push(
                    u64::try_from(event.at.saturating_duration_since(sent_at).as_nanos())
                        .unwrap_or(u64::MAX),
                );
                counters.received.fetch_add(1, Ordering::Relaxed);
                changed.notify_one();
            }
            Err(broadcast::error::RecvError::Lagged(n)) => out.lagged += n,
            Err(broadcast::error::RecvError::Closed) => return out,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TxHeader {
    origin: u32,
    seq: u64,
    sent: Duration,
}

fn encode_tx(origin: u32, seq: u64, sent: Duration, size: usize) -> Vec<u8> {
    let mut tx = Vec::with_capacity(size.max(TX_HEADER));
    tx.extend_from_slice(&TX_MAGIC);
    tx.extend_from_slice(&origin.to_le_bytes());
    tx.extend_from_slice(&seq.to_le_bytes());
    tx.extend_from_slice(&u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX).to_le_bytes());
    tx.resize(size.max(TX_HEADER), b'.');
    tx
}

fn decode_tx(tx: &[u8]) -> Option<TxHeader> {
    let (magic, rest) = tx.split_first_chunk::<4>()?;
    if *magic != TX_MAGIC {
        return None;
    }
    let (origin, rest) = rest.split_first_chunk::<4>()?;
    let (seq, rest) = rest.split_first_chunk::<8>()?;
    let (sent, _) = rest.split_first_chunk::<8>()?;
    Some(TxHeader {
        origin: u32::from_le_bytes(*origin),
        seq: u64::from_le_bytes(*seq),
        sent: Duration::from_nanos(u64::from_le_bytes(*sent)),
    })
}

/// Nearest-rank percentile of sorted nanoseconds.
fn percentile(sorted: &[u64], p: usize) -> Option<Duration> {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).map(|ns| Duration::from_nanos(*ns))
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

fn per_second(count: u64, over: Duration) -> u64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 { (count as f64 / secs).round() as u64 } else { 0 }
}

/// Connections by transport, counted at the dialling end.
fn links_by_transport(net: &Network) -> Vec<(Protocol, usize)> {
    let mut by: BTreeMap<Protocol, usize> = BTreeMap::new();
    for m in &net.members {
        for p in m.node.router().connected_peers() {
            if p.direction == Direction::Outbound {
                *by.entry(p.endpoint.protocol).or_default() += 1;
            }
        }
    }
    let mut by: Vec<(Protocol, usize)> = by.into_iter().collect();
    by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    by
}

/// Counters at one moment, for rates.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    sent: u64,
    delivered: u64,
    bytes: u64,
}

impl Sample {
    fn take(net: &Network) -> Self {
        Self {
            at: Instant::now(),
            sent: net.sent(),
            delivered: net.delivered(),
            bytes: net.bytes_sent(),
        }
    }

    fn rate(&self, earlier: &Self, field: impl Fn(&Self) -> u64) -> u64 {
        per_second(
            field(self).saturating_sub(field(earlier)),
            self.at.saturating_duration_since(earlier.at),
        )
    }
}

// ---- Output -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bar,
    Plain,
    Quiet,
}

#[derive(Debug)]
struct Output {
    mode: Mode,
}

impl Output {
    fn new(output: TestnetOutput) -> Self {
        let mode = match output {
            TestnetOutput::Auto if std::io::stdout().is_terminal() => Mode::Bar,
            TestnetOutput::Auto | TestnetOutput::Plain => Mode::Plain,
            TestnetOutput::Quiet => Mode::Quiet,
        };
        Self { mode }
    }

    fn line(&self, line: &str) {
        if self.mode != Mode::Quiet {
            println!("{line}");
        }
    }
}

/// A phase's live progress: an indicatif bar or spinner on a terminal, plain lines otherwise.
#[derive(Debug)]
struct Progress {
    mode: Mode,
    prefix: &'static str,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn spinner(mode: Mode, prefix: &'static str) -> Self {
        Self::new(mode, None, prefix, "{spinner:.green} {prefix:>7} {elapsed:>4} {wide_msg}")
    }

    fn bar(mode: Mode, len: u64, prefix: &'static str) -> Self {
        Self::new(
            mode,
            Some(len),
            prefix,
            "{spinner:.green} {prefix:>7} [{bar:24.cyan/blue}] {wide_msg}",
        )
    }

    fn new(mode: Mode, len: Option<u64>, prefix: &'static str, template: &str) -> Self {
        let bar = (mode == Mode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stdout());
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(prefix);
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Self { mode, prefix, bar }
    }

    /// Shows `msg`; in plain mode only when `print` (once a second).
    fn update(&self, position: Option<u64>, msg: impl Into<Option<String>>, print: bool) {
        let msg = msg.into();
        match &self.bar {
            Some(bar) => {
                if let Some(p) = position {
                    bar.set_position(p);
                }
                if let Some(msg) = msg {
                    bar.set_message(msg);
                }
            }
            None if self.mode == Mode::Plain && print => {
                if let Some(msg) = msg {
                    println!("{:>7}  {msg}", self.prefix);
                }
            }
            None => {}
        }
    }

    /// Removes the bar and prints `line`.
    fn finish(&mut self, line: Option<String>) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(line) = line
            && self.mode != Mode::Quiet
        {
            println!("{line}");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn header(options: &TestnetOptions, topology: &Topology, root: &Path) -> String {
    let mut roles = Vec::new();
    for (role, name) in [
        (NodeRole::Dual, "dual-stack"),
        (NodeRole::Quic, "QUIC-only"),
        (NodeRole::Mconn, "MConn-only"),
    ] {
        let count = topology.count(role);
        if count > 0 {
            roles.push(format!("{count} {name}"));
        }
    }
    let place = wan_place(options);
    format!(
        "testnet: {} nodes {place}, {} ({}), {}\n\
         gossip:  {} tx/s per node for {} s, {}-byte transactions\n\
         homes:   {}",
        options.nodes,
        options.transport,
        roles.join(", "),
        plural(topology.links.len(), "link"),
        options.rate(),
        options.duration.as_secs_f64(),
        options.tx_size,
        root.display()
    )
}

/// Where the nodes run, for the header.
fn wan_place(options: &TestnetOptions) -> String {
    #[cfg(feature = "wan")]
    if let Some(p) = options.wan {
        let link = p.link();
        return format!(
            "in network namespaces behind the WAN emulator, profile {p} ({} ms RTT{}{})",
            p.rtt().as_millis(),
            p.rate_bps().map(|r| format!(", {} Mbit/s", r / 1_000_000)).unwrap_or_default(),
            if link.loss.mean() > 0.0 {
                format!(", {:.1}% loss", link.loss.mean() * 100.0)
            } else {
                String::new()
            },
        );
    }
    let _ = options;
    "on 127.0.0.1".to_owned()
}

/// The summary: a table with a row per node, then the totals.
fn summary(report: &TestnetReport) -> String {
    let head = [
        "node",
        "id",
        "listens",
        "peers",
        "transports",
        "tx sent",
        "tx recv",
        "sent",
        "recv",
        "p50",
        "p99",
    ];
    let right = [true, false, false, true, false, true, true, true, true, true, true];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| (*s).to_owned()).collect()];
    for node in &report.nodes {
        let id = node.node_id.to_string();
        rows.push(vec![
            node.index.to_string(),
            id.get(..8).unwrap_or(&id).to_owned(),
            node.role.to_string(),
            if node.peers == node.expected_peers {
                node.peers.to_string()
            } else {
                format!("{}/{}", node.peers, node.expected_peers)
            },
            fmt_transports(&node.transports, "×"),
            fmt_count(node.txs_sent),
            if node.txs_received == node.txs_expected {
                fmt_count(node.txs_received)
            } else {
                format!("{}/{}", fmt_count(node.txs_received), fmt_count(node.txs_expected))
            },
            fmt_bytes(node.bytes_sent),
            fmt_bytes(node.bytes_received),
            node.latency_p50.map_or_else(|| "-".to_owned(), fmt_duration),
            node.latency_p99.map_or_else(|| "-".to_owned(), fmt_duration),
        ]);
    }
    let mut widths = vec![0; head.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let cells: Vec<String> = (row.iter().zip(&widths).zip(right))
            .map(
                |((cell, w), right)| {
                    if right { format!("{cell:>w$}") } else { format!("{cell:<w$}") }
                },
            )
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    let latency = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), fmt_duration);
    let active = report.gossip_time + report.drain_time;
    text.push_str(&format!(
        "\nlinks         {} ({}), all up in {}, dial fallbacks {}\n",
        report.links,
        fmt_transports(&report.links_by_transport, " "),
        fmt_duration(report.connect_time),
        report.dial_fallbacks
    ));
    text.push_str(&format!(
        "transactions  {} sent, {}/{} deliveries ({:.2}%)\n",
        fmt_count(report.txs_sent),
        fmt_count(report.txs_delivered),
        fmt_count(report.txs_expected),
        report.delivery_ratio() * 100.0,
    ));
    text.push_str(&format!(
        "drops         {} copies on full peer queues, {} events missed by recorders\n",
        fmt_count(report.gossip_dropped),
        fmt_count(report.lagged),
    ));
    text.push_str(&format!(
        "traffic       {} of messages sent in {:.1} s ({}/s)\n",
        fmt_bytes(report.bytes_sent),
        active.as_secs_f64(),
        fmt_bytes(per_second(report.bytes_sent, active))
    ));
    text.push_str(&format!(
        "latency       p50 {}, p99 {}, max {} (first arrival, submission at the origin to each node){}\n",
        latency(report.latency_p50),
        latency(report.latency_p99),
        latency(report.latency_max),
        report.wan.as_ref().map(|p| format!(", behind WAN profile {p}")).unwrap_or_default()
    ));
    text.push_str(if report.is_complete() {
        "result        OK: every transaction reached every node"
    } else {
        "result        FAILED: not every transaction reached every node"
    });
    text
}

/// `1 link`, `15 links`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// `quic×3 mconn×1` (with `sep` "×") or `quic 3, mconn 1`-style (with `sep` " ").
fn fmt_transports(transports: &[(Protocol, usize)], sep: &str) -> String {
    if transports.is_empty() {
        return "-".to_owned();
    }
    let joiner = if sep == " " { ", " } else { " " };
    transports.iter().map(|(p, n)| format!("{p}{sep}{n}")).collect::<Vec<_>>().join(joiner)
}

/// `12,345`.
fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Decimal units: `512 B`, `1.5 kB`, `12.3 MB`.
fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = "kB";
    for u in UNITS.iter().skip(1) {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

/// `850µs`, `1.25ms`, `3.40s`.
fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1e6 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn mixed_roles_are_interleaved_with_a_dual_stack_node_first() {
        use NodeRole::{Dual as D, Mconn as M, Quic as Q};
        assert_eq!(roles(8, TestnetTransport::Mixed), [D, Q, M, Q, D, Q, M, Q]);
        assert_eq!(roles(2, TestnetTransport::Mixed), [D, Q]);
        for n in 2..60 {
            let r = roles(n, TestnetTransport::Mixed);
            assert_eq!(r.len(), n);
            assert_eq!(r[0], D);
            assert_eq!(r.iter().filter(|r| **r == Q).count(), n / 2);
            assert_eq!(r.iter().filter(|r| **r == M).count(), n / 4);
        }
    }

    #[test]
    fn topologies_are_connected_and_links_share_a_transport() {
        for transport in [TestnetTransport::Mixed, TestnetTransport::Quic, TestnetTransport::Mconn]
        {
            for n in 2..40 {
                for seed in 0..4 {
                    let t = Topology::new(n, transport, seed).unwrap();
                    let mut pairs = HashSet::new();
                    for l in &t.links {
                        assert!(l.dialer > l.target, "the later node dials");
                        assert!(pairs.insert((l.target, l.dialer)), "no duplicate links");
                        let expected = t.roles[l.dialer].link_protocol(t.roles[l.target]);
                        assert_eq!(Some(l.protocol.clone()), expected);
                    }
                    assert!(t.links.len() >= n - 1);
                }
            }
        }
        // Mixed networks of 4+ nodes use both transports.
        let t = Topology::new(8, TestnetTransport::Mixed, 1).unwrap();
        assert!(t.links.iter().any(|l| l.protocol == Protocol::QUIC));
        assert!(t.links.iter().any(|l| l.protocol == Protocol::MCONN));
    }

    #[test]
    fn transactions_round_trip_and_foreign_ones_are_ignored() {
        let tx = encode_tx(7, 42, Duration::from_micros(1234), 256);
        assert_eq!(tx.len(), 256);
        let h = decode_tx(&tx).unwrap();
        assert_eq!(h, TxHeader { origin: 7, seq: 42, sent: Duration::from_micros(1234) });
        assert_eq!(encode_tx(1, 2, Duration::ZERO, 0).len(), TX_HEADER);
        assert!(decode_tx(b"hello").is_none());
        assert!(decode_tx(&tx[..TX_HEADER - 1]).is_none());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(Duration::from_nanos(50)));
        assert_eq!(percentile(&v, 99), Some(Duration::from_nanos(99)));
        assert_eq!(percentile(&[5], 99), Some(Duration::from_nanos(5)));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(1234567), "1,234,567");
        assert_eq!(fmt_count(100), "100");
        assert_eq!(fmt_bytes(999), "999 B");
        assert_eq!(fmt_bytes(1500), "1.5 kB");
        assert_eq!(fmt_bytes(12_300_000), "12.3 MB");
        assert_eq!(fmt_duration(Duration::from_micros(850)), "850µs");
        assert_eq!(fmt_duration(Duration::from_micros(1250)), "1.25ms");
        let t = [(Protocol::QUIC, 3), (Protocol::MCONN, 1)];
        assert_eq!(fmt_transports(&t, "×"), "quic×3 mconn×1");
        assert_eq!(fmt_transports(&t, " "), "quic 3, mconn 1");
    }

    #[test]
    fn the_default_rate_is_bounded_network_wide() {
        let mut o = TestnetOptions::default();
        assert_eq!(o.rate(), DEFAULT_TX_RATE);
        o.nodes = 50;
        assert_eq!(o.rate(), 16);
        o.nodes = MAX_NODES;
        assert_eq!(o.rate(), 1);
        o.tx_rate = Some(7);
        assert_eq!(o.rate(), 7);
    }

    #[test]
    fn invalid_options_are_refused() {
        let mut o = TestnetOptions { nodes: 1, ..TestnetOptions::default() };
        assert!(matches!(validate(&o), Err(TestnetError::InvalidOptions(_))));
        o.nodes = 4;
        o.tx_size = 3;
        assert!(matches!(validate(&o), Err(TestnetError::InvalidOptions(_))));
        assert!(validate(&TestnetOptions::default()).is_ok());
    }
}
