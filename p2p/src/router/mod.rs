//! The [`Router`]: owns transports and connections, runs the dial, accept and evict loops, and
//! moves messages between reactor [`Channel`]s and peers.
//!
//! # Concurrency
//!
//! * One task pair per peer: a writer that drains the peer's outbound queue into the connection, and
//!   a reader that pushes received messages into the channels' bounded inbound queues.
//! * Reactors enqueue directly into per-peer queues. The map of connected peers is a
//!   copy-on-write snapshot ([`arc_swap`]), so the send path takes no router-wide lock; the only
//!   lock it takes is the recipient peer's own queue mutex, held for a push.
//! * The [`PeerManager`] sits behind a mutex that is taken on connection events (dial, accept,
//!   disconnect, report), never per message. Its [`PeerUpdate`]s are published on a bounded
//!   broadcast channel that never blocks it: a subscriber that falls behind is told how many
//!   updates it missed ([`PeerUpdatesError::Lagged`]) and the router counts it.
//! * The dial, accept, evict and store loops run under a supervisor that restarts a loop that
//!   panics or returns unexpectedly. The accept loop treats every error except
//!   [`TransportError::Closed`] as transient, and dials run concurrently up to
//!   [`RouterConfig::dial_concurrency`].

mod channel;
pub(crate) mod queue;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

use channel::ChannelStats;
pub use channel::{
    Channel, ChannelDescriptor, ChannelReceiver, ChannelSender, ChannelStatsSnapshot, Envelope,
    Outbound, OverflowPolicy, PeerError, Recipient, SendError, SendOutcome, UnwrapError, Wrapper,
};
use queue::{ChannelSet, PeerQueue, Scheduler, TryPop};

use crate::address::{Endpoint, Host, NodeAddress, Protocol};
use crate::dns::Resolver;
use crate::key::NodeKey;
use crate::node_info::NodeInfo;
use crate::peer_manager::{
    AddAddressError, Admission, ConnectionId, Direction, EvictReason, PeerManager,
    PeerManagerConfig, PeerStore, PeerUpdate, Severity, Timestamp,
};
use crate::transport::{
    CloseReason, Connection, ConnectionError, HandshakeError, Transport, TransportError,
};
use crate::types::{ChannelId, NodeId};

/// Router settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterConfig {
    /// Dials in flight at once (resolution, connect and handshake). Default 32.
    pub dial_concurrency: usize,
    /// Inbound connections in the handshake at once; more are closed on arrival. Default 64.
    pub max_pending_handshakes: usize,
    /// Time to establish a transport connection. Default 3 s.
    pub dial_timeout: Duration,
    /// Time for the whole node handshake. Default 5 s (Go allows 3 s per phase).
    pub handshake_timeout: Duration,
    /// Buffered [`PeerUpdate`]s per subscriber before it is told it lagged. Default 1024.
    pub peer_updates_capacity: usize,
    /// Most messages a peer's writer takes from its queue at once. Default 64.
    pub writer_batch_messages: usize,
    /// Most bytes a peer's writer takes from its queue at once (a high-priority message waits
    /// at most this much already-dequeued data). Default 256 KiB.
    pub writer_batch_bytes: usize,
    /// Least time between two peer-store writes (changes in between are batched). Default 100 ms.
    pub store_flush_interval: Duration,
    /// Time a stopping router gives peers to flush their queues. Default 5 s.
    pub shutdown_grace: Duration,
    /// When a peer has several dialable addresses (say `quic://` and `mconn://`), how long the
    /// router waits for the preferred one to connect before it also tries the next one, in
    /// parallel (the first to connect wins, the others are abandoned; a failure starts the next
    /// at once). Default 300 ms: enough for a QUIC handshake across most of the world, short
    /// enough that a node whose UDP is blocked falls back to TCP well within
    /// [`dial_timeout`](Self::dial_timeout).
    pub fallback_delay: Duration,
    /// Resolves the DNS hosts of addresses, on every dial (see [`crate::dns`]: answers are
    /// cached for their TTL, so a changed record is followed once the old one expires; every
    /// address found is tried in turn, IPv6 and IPv4 interleaved). Default `None`: a
    /// [`Resolver::system`], made at the first dial of a DNS host (a failure to make it fails
    /// that dial and is retried at the next).
    pub resolver: Option<Resolver>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            dial_concurrency: 32,
            max_pending_handshakes: 64,
            dial_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            peer_updates_capacity: 1024,
            writer_batch_messages: 64,
            writer_batch_bytes: 256 * 1024,
            store_flush_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(5),
            fallback_delay: Duration::from_millis(300),
            resolver: None,
        }
    }
}

/// Errors from configuring or starting a [`Router`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// Channels and transports must be added before [`Router::start`].
    #[error("the router has already been started; open channels and add transports before start()")]
    AlreadyStarted,
    /// A channel with this ID is already open.
    #[error("channel {0} is already open")]
    DuplicateChannel(ChannelId),
    /// Too many channels for the NodeInfo (at most 16).
    #[error("at most {max} channels can be opened (NodeInfo limit), tried to open {id}")]
    TooManyChannels {
        /// The limit.
        max: usize,
        /// The channel that did not fit.
        id: ChannelId,
    },
    /// No transport was added.
    #[error("no transport was added; add at least one before start()")]
    NoTransport,
    /// The peer store failed.
    #[error("peer store: {0}")]
    Store(#[from] crate::peer_manager::PeerStoreError),
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The address did not resolve.
    #[error("could not resolve: {0}")]
    Resolve(String),
    /// No registered transport serves the address's protocol.
    #[error("no transport serves protocol {0:?}")]
    NoTransport(Protocol),
    /// The transport failed to connect.
    #[error("{endpoint}: {source}")]
    Transport {
        /// The endpoint.
        endpoint: Endpoint,
        /// The error.
        source: TransportError,
    },
    /// The transport did not connect in time.
    #[error("{0}: connect timed out")]
    Timeout(Endpoint),
    /// The handshake failed.
    #[error("{endpoint}: handshake failed: {source}")]
    Handshake {
        /// The endpoint.
        endpoint: Endpoint,
        /// The error.
        source: HandshakeError,
    },
    /// The address resolved to nothing.
    #[error("address resolved to no endpoints")]
    NoEndpoints,
}

/// Error from [`PeerUpdates::recv`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerUpdatesError {
    /// The subscriber fell behind and missed this many updates; re-read the current state with
    /// [`Router::connected_peers`] and continue.
    #[error("peer-update subscriber lagged and missed {0} updates")]
    Lagged(u64),
    /// The router stopped.
    #[error("router stopped")]
    Closed,
}

/// An ordered stream of peer up/down updates. Never blocks the router.
#[derive(Debug)]
pub struct PeerUpdates {
    rx: broadcast::Receiver<PeerUpdate>,
    lagged: Arc<AtomicU64>,
}

impl PeerUpdates {
    /// The next update.
    pub async fn recv(&mut self) -> Result<PeerUpdate, PeerUpdatesError> {
        match self.rx.recv().await {
            Ok(u) => Ok(u),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.lagged.fetch_add(n, Ordering::Relaxed);
                Err(PeerUpdatesError::Lagged(n))
            }
            Err(broadcast::error::RecvError::Closed) => Err(PeerUpdatesError::Closed),
        }
    }

    /// Updates published since this subscription last received one, including those it will
    /// miss for lagging behind.
    pub fn pending(&self) -> usize {
        self.rx.len()
    }
}

/// A connected peer, as reported by [`Router::connected_peers`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeerSummary {
    /// The peer's ID.
    pub node_id: NodeId,
    /// Who dialled.
    pub direction: Direction,
    /// The peer's NodeInfo.
    pub node_info: NodeInfo,
    /// The peer's endpoint (protocol shows the transport in use).
    pub endpoint: Endpoint,
    /// Messages and bytes waiting in its outbound queue.
    pub backlog: (usize, usize),
    /// Message bytes sent to it on this connection (handed to the transport).
    pub sent_bytes: u64,
    /// Message bytes received from it on this connection.
    pub received_bytes: u64,
}

/// Router counters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RouterStats {
    /// Dials that ended in a connected peer.
    pub dials_succeeded: u64,
    /// Dials that failed (resolution, connect, handshake).
    pub dials_failed: u64,
    /// Inbound connections accepted by transports.
    pub inbound_accepted: u64,
    /// Inbound connections closed because too many handshakes were pending.
    pub inbound_shed: u64,
    /// Errors returned by transports' accept.
    pub accept_errors: u64,
    /// Handshakes that failed (either direction).
    pub handshake_failures: u64,
    /// Handshake failures by [`HandshakeError::reason`] (every reason listed, in the order of
    /// [`HandshakeError::REASONS`]).
    pub handshake_failures_by_reason: Vec<(&'static str, u64)>,
    /// Connections the router closed on the peer manager's orders, by reason (`upgrade`,
    /// `misbehaved`, `banned`, `replaced`).
    pub evictions: Vec<(&'static str, u64)>,
    /// Connections the peer manager rejected after the handshake.
    pub rejected: u64,
    /// Peer-update deliveries missed by lagging subscribers.
    pub peer_updates_lagged: u64,
    /// Queued messages discarded because their peer disconnected.
    pub dropped_on_disconnect: u64,
    /// Dials that connected through an address other than the preferred one (for example
    /// MConn after QUIC failed or was slow).
    pub dial_fallbacks: u64,
    /// Per-channel counters.
    pub channels: Vec<(ChannelId, ChannelStatsSnapshot)>,
    /// Per-transport-protocol counters, for every protocol a transport serves.
    pub protocols: Vec<(Protocol, ProtocolStats)>,
}

/// Counters of one transport protocol, in [`RouterStats::protocols`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProtocolStats {
    /// Dials whose connection over this protocol was admitted.
    pub dials_succeeded: u64,
    /// Connection attempts over this protocol that failed (connect or handshake), including
    /// attempts after which the dial fell back to another address.
    pub attempts_failed: u64,
    /// Inbound connections over this protocol that were admitted.
    pub accepted: u64,
    /// Peers connected over this protocol now.
    pub connected: usize,
}

#[derive(Debug, Default)]
struct ProtocolCounters {
    dials_succeeded: AtomicU64,
    attempts_failed: AtomicU64,
    accepted: AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    dials_succeeded: AtomicU64,
    dials_failed: AtomicU64,
    inbound_accepted: AtomicU64,
    inbound_shed: AtomicU64,
    accept_errors: AtomicU64,
    handshake_failures: AtomicU64,
    handshake_reasons: [AtomicU64; HandshakeError::REASONS.len()],
    evictions: [AtomicU64; EVICT_REASONS.len()],
    rejected: AtomicU64,
    dropped_on_disconnect: AtomicU64,
    dial_fallbacks: AtomicU64,
}

/// Labels of [`EvictReason`]s, in the order of [`evict_reason_index`].
const EVICT_REASONS: [&str; 5] = ["upgrade", "misbehaved", "banned", "replaced", "hung_up"];

fn evict_reason_index(reason: EvictReason) -> usize {
    match reason {
        EvictReason::Upgrade => 0,
        EvictReason::Misbehaved => 1,
        EvictReason::Banned => 2,
        EvictReason::Replaced => 3,
        EvictReason::HungUp => 4,
    }
}

impl Counters {
    fn handshake_failed(&self, e: &HandshakeError) {
        bump(&self.handshake_failures);
        let reason = e.reason();
        if let Some(i) = HandshakeError::REASONS.iter().position(|r| *r == reason)
            && let Some(c) = self.handshake_reasons.get(i)
        {
            bump(c);
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Most confirmed external addresses a router keeps ([`Router::add_external_address`]).
pub const MAX_EXTERNAL_ADDRESSES: usize = 16;

/// Maximum number of channels (the NodeInfo limit).
const MAX_CHANNELS: usize = 16;

#[derive(Debug)]
struct Route {
    descriptor: ChannelDescriptor,
    tx: mpsc::Sender<(NodeId, Bytes)>,
    stats: Arc<ChannelStats>,
}

#[derive(Debug)]
struct ChannelTable {
    routes: Vec<Route>,
    /// Channel byte → index into `routes` (a direct table: one lookup per received message).
    by_id: [Option<u8>; 256],
}

impl Default for ChannelTable {
    fn default() -> Self {
        Self { routes: Vec::new(), by_id: [None; 256] }
    }
}

impl ChannelTable {
    fn route(&self, id: ChannelId) -> Option<&Route> {
        let index = self.by_id.get(usize::from(id.0)).copied().flatten()?;
        self.routes.get(usize::from(index))
    }

    fn contains(&self, id: ChannelId) -> bool {
        self.route(id).is_some()
    }

    fn descriptors(&self) -> Vec<ChannelDescriptor> {
        self.routes.iter().map(|r| r.descriptor.clone()).collect()
    }

    fn scheduler(&self) -> Scheduler {
        let chans: Vec<(ChannelId, u8, usize)> = self
            .routes
            .iter()
            .map(|r| (r.descriptor.id, r.descriptor.priority, r.descriptor.send_queue_capacity))
            .collect();
        Scheduler::new(&chans)
    }
}

/// A connected peer's shared state.
#[derive(Debug)]
pub(crate) struct PeerHandle {
    pub(crate) node_id: NodeId,
    conn_id: ConnectionId,
    direction: Direction,
    pub(crate) queue: PeerQueue,
    /// Bitset of the channels the peer advertised.
    channels: [u64; 4],
    node_info: NodeInfo,
    endpoint: Endpoint,
    stop: Notify,
    /// Why the router disconnects it (the first reason given wins).
    close_reason: Mutex<Option<CloseReason>>,
    /// The reason of the last report that disconnects it, for the close reason.
    misbehaviour: Mutex<Option<String>>,
    /// Message bytes handed to the connection.
    sent_bytes: AtomicU64,
    /// Message bytes received and routed to a channel.
    received_bytes: AtomicU64,
}

impl PeerHandle {
    pub(crate) fn has_channel(&self, ch: ChannelId) -> bool {
        let i = usize::from(ch.0);
        self.channels.get(i / 64).is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// Tells the peer task to disconnect now, discarding queued messages.
    fn summary(&self) -> PeerSummary {
        PeerSummary {
            node_id: self.node_id,
            direction: self.direction,
            node_info: self.node_info.clone(),
            endpoint: self.endpoint.clone(),
            backlog: self.queue.backlog(),
            sent_bytes: self.sent_bytes.load(Ordering::Relaxed),
            received_bytes: self.received_bytes.load(Ordering::Relaxed),
        }
    }

    /// Closes the connection once the messages already queued for the peer are sent.
    fn hang_up(&self) {
        self.close_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(CloseReason::Normal);
        self.queue.close(true);
    }

    fn disconnect(&self, reason: CloseReason) {
        self.close_reason.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(reason);
        self.stop.notify_one();
    }

    fn has_close_reason(&self) -> bool {
        self.close_reason.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    fn take_close_reason(&self) -> Option<CloseReason> {
        self.close_reason.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn note_misbehaviour(&self, reason: &str) {
        *self.misbehaviour.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
    }

    fn misbehaviour(&self) -> String {
        let noted = self.misbehaviour.lock().unwrap_or_else(PoisonError::into_inner).clone();
        noted.unwrap_or_else(|| "reported by a reactor".to_owned())
    }
}

type PeerMap = HashMap<NodeId, Arc<PeerHandle>>;

#[derive(Default)]
struct Setup {
    transports: Vec<Arc<dyn Transport>>,
    table: ChannelTable,
}

/// State shared by the router's tasks and its channels.
pub(crate) struct Shared {
    node_id: NodeId,
    key: NodeKey,
    config: RouterConfig,
    node_info: OnceLock<NodeInfo>,
    base_info: NodeInfo,
    table: OnceLock<ChannelTable>,
    transports: OnceLock<HashMap<Protocol, Vec<Arc<dyn Transport>>>>,
    pub(crate) peers: ArcSwap<PeerMap>,
    peers_write: Mutex<()>,
    peer_gone: Notify,
    pm: Mutex<PeerManager>,
    /// Taken (and so closed) by [`Router::stop`] after the final write.
    store: Mutex<Option<Arc<PeerStore>>>,
    dial_wake: Notify,
    evict_wake: Notify,
    store_wake: Notify,
    updates: broadcast::Sender<PeerUpdate>,
    lagged: Arc<AtomicU64>,
    stopped: AtomicBool,
    shutdown: watch::Sender<bool>,
    next_conn: AtomicU64,
    counters: Counters,
    /// Per-protocol counters, one entry per protocol some transport serves (set at start).
    protocol_counters: OnceLock<Vec<(Protocol, ProtocolCounters)>>,
    /// [`RouterConfig::resolver`], or the system resolver once a dial needed it.
    resolver: OnceLock<Resolver>,
    /// Confirmed addresses of this node as others can dial it ([`Router::add_external_address`]).
    external: Mutex<Vec<NodeAddress>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn subscribe_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn now() -> Timestamp {
        Timestamp::now()
    }

    fn lock_pm(&self) -> std::sync::MutexGuard<'_, PeerManager> {
        self.pm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a peer-manager operation, then publishes its updates and wakes the loops that may
    /// have new work.
    fn with_pm<R>(&self, f: impl FnOnce(&mut PeerManager, Timestamp) -> R) -> R {
        let r = self.with_pm_quiet(f);
        self.dial_wake.notify_one();
        self.evict_wake.notify_one();
        r
    }

    /// Like [`Self::with_pm`] but does not wake the dial and evict loops (used by those loops).
    fn with_pm_quiet<R>(&self, f: impl FnOnce(&mut PeerManager, Timestamp) -> R) -> R {
        let mut pm = self.lock_pm();
        let r = f(&mut pm, Self::now());
        for update in pm.drain_updates() {
            // Never blocks; an error only means there is no subscriber.
            let _ = self.updates.send(update);
        }
        drop(pm);
        self.store_wake.notify_one();
        r
    }

    /// Applies a reactor's (or the router's own) report about a peer.
    pub(crate) fn report(&self, error: PeerError) {
        match error.severity {
            Severity::Minor => {
                debug!(peer = %error.node_id, reason = %error.reason, "peer penalised")
            }
            _ => {
                info!(peer = %error.node_id, severity = ?error.severity, reason = %error.reason, "peer misbehaved");
                if let Some(handle) = self.peers.load().get(&error.node_id) {
                    handle.note_misbehaviour(&error.reason);
                }
            }
        }
        self.with_pm(|pm, now| pm.report(error.node_id, error.severity, now));
    }

    fn store_handle(&self) -> Option<Arc<PeerStore>> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn table(&self) -> &ChannelTable {
        static EMPTY: OnceLock<ChannelTable> = OnceLock::new();
        self.table.get().unwrap_or_else(|| EMPTY.get_or_init(ChannelTable::default))
    }

    fn local_info(&self) -> &NodeInfo {
        self.node_info.get().unwrap_or(&self.base_info)
    }

    fn update_peers(&self, f: impl FnOnce(&mut PeerMap)) {
        let _guard = self.peers_write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut map = PeerMap::clone(&self.peers.load());
        f(&mut map);
        self.peers.store(Arc::new(map));
    }

    /// Bumps a per-protocol counter.
    fn bump_protocol(&self, protocol: &Protocol, f: impl FnOnce(&ProtocolCounters) -> &AtomicU64) {
        if let Some((_, c)) =
            self.protocol_counters.get().and_then(|all| all.iter().find(|(p, _)| p == protocol))
        {
            bump(f(c));
        }
    }

    fn transports_for(&self, protocol: &Protocol) -> &[Arc<dyn Transport>] {
        self.transports.get().and_then(|m| m.get(protocol)).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Routes messages between reactor channels and peers; see the [module docs](self).
#[derive(Debug)]
pub struct Router {
    shared: Arc<Shared>,
    setup: Mutex<Option<Setup>>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setup").field("transports", &self.transports.len()).finish()
    }
}

impl Router {
    /// Creates a router. Known peers (scores, bans, addresses) are loaded from `store`; without
    /// a store nothing is persisted.
    pub fn new(
        key: NodeKey,
        node_info: NodeInfo,
        config: RouterConfig,
        peer_manager: PeerManagerConfig,
        store: Option<PeerStore>,
    ) -> Result<Self, RouterError> {
        let node_id = key.node_id();
        let records = match &store {
            Some(s) => s.load()?,
            None => Vec::new(),
        };
        let pm = PeerManager::new(node_id, peer_manager, records, Timestamp::now());
        let (updates, _) = broadcast::channel(config.peer_updates_capacity.max(1));
        let (shutdown, _) = watch::channel(false);
        let resolver = OnceLock::new();
        if let Some(r) = config.resolver.clone() {
            let _ = resolver.set(r);
        }
        let shared = Arc::new(Shared {
            node_id,
            key,
            config,
            node_info: OnceLock::new(),
            base_info: node_info,
            table: OnceLock::new(),
            transports: OnceLock::new(),
            peers: ArcSwap::from_pointee(PeerMap::new()),
            peers_write: Mutex::new(()),
            peer_gone: Notify::new(),
            pm: Mutex::new(pm),
            store: Mutex::new(store.map(Arc::new)),
            dial_wake: Notify::new(),
            evict_wake: Notify::new(),
            store_wake: Notify::new(),
            updates,
            lagged: Arc::new(AtomicU64::new(0)),
            stopped: AtomicBool::new(false),
            shutdown,
            next_conn: AtomicU64::new(1),
            external: Mutex::new(Vec::new()),
            counters: Counters::default(),
            protocol_counters: OnceLock::new(),
            resolver,
        });
        Ok(Self { shared, setup: Mutex::new(Some(Setup::default())), supervisor: Mutex::new(None) })
    }

    /// This node's ID.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// This node's NodeInfo as advertised (its channel list is filled in by [`Router::start`]).
    pub fn node_info(&self) -> NodeInfo {
        self.shared.local_info().clone()
    }

    fn with_setup<R>(&self, f: impl FnOnce(&mut Setup) -> R) -> Result<R, RouterError> {
        let mut guard = self.setup.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_mut().map(f).ok_or(RouterError::AlreadyStarted)
    }

    /// Registers a transport for the protocols it serves. Several transports may serve one
    /// protocol; dials try them in registration order.
    pub fn add_transport(&self, transport: Arc<dyn Transport>) -> Result<(), RouterError> {
        self.with_setup(|s| s.transports.push(transport))
    }

    /// Opens a typed channel. All channels must be opened before [`Router::start`]: they are
    /// advertised in the NodeInfo.
    pub fn open_channel<M: Wrapper>(
        &self,
        descriptor: ChannelDescriptor,
    ) -> Result<Channel<M>, RouterError> {
        let shared = self.shared.clone();
        self.with_setup(|s| {
            if s.table.contains(descriptor.id) {
                return Err(RouterError::DuplicateChannel(descriptor.id));
            }
            if s.table.routes.len() >= MAX_CHANNELS {
                return Err(RouterError::TooManyChannels { max: MAX_CHANNELS, id: descriptor.id });
            }
            let (tx, rx) = mpsc::channel(descriptor.recv_queue_capacity.max(1));
            let stats = Arc::new(ChannelStats::default());
            let slot = s.table.routes.len();
            if let Some(entry) = s.table.by_id.get_mut(usize::from(descriptor.id.0)) {
                // `slot` < MAX_CHANNELS (16), so it fits in a byte.
                *entry = u8::try_from(slot).ok();
            }
            s.table.routes.push(Route { descriptor: descriptor.clone(), tx, stats: stats.clone() });
            Ok(Channel::new(shared, slot, descriptor, stats, rx))
        })?
    }

    /// Subscribes to peer up/down updates from now on.
    pub fn subscribe(&self) -> PeerUpdates {
        PeerUpdates { rx: self.shared.updates.subscribe(), lagged: self.shared.lagged.clone() }
    }

    /// Tells the peer manager about an address (e.g. from config or PEX).
    pub fn add_address(&self, address: NodeAddress) -> Result<bool, AddAddressError> {
        self.shared.with_pm(|pm, now| pm.add_address(address, now))
    }

    /// Adds an address that peer `from` gossiped (PEX): the peer manager's per-source quotas
    /// apply, and it never replaces an address a handshake verified (see
    /// [`PeerManager::add_gossiped_address`]).
    pub fn add_gossiped_address(
        &self,
        address: NodeAddress,
        from: NodeId,
    ) -> Result<bool, AddAddressError> {
        self.shared.with_pm(|pm, now| pm.add_gossiped_address(address, from, now))
    }

    /// Runs a read-only query against the peer manager (scores, bans, known peers).
    pub fn inspect_peer_manager<R>(&self, f: impl FnOnce(&PeerManager, Timestamp) -> R) -> R {
        let pm = self.shared.lock_pm();
        f(&pm, Timestamp::now())
    }

    /// Reports a peer (same as [`ChannelSender::report_error`]).
    pub fn report(&self, error: PeerError) {
        self.shared.report(error);
    }

    /// Closes the connection to `peer` without blaming it (its score is unchanged; QUIC peers
    /// see a normal close), and redials its address no sooner than `redial_after` after the
    /// close. Messages already queued for it are sent first when the connection can take them
    /// before the close. Does nothing unless the peer is connected.
    pub fn hang_up(&self, peer: NodeId, redial_after: Duration) {
        debug!(%peer, "hanging up");
        self.shared.with_pm(|pm, now| pm.hang_up(peer, redial_after, now));
    }

    /// Records a confirmed address of this node as others can dial it: from configuration
    /// (an operator's external address), a UPnP gateway's mapping, or what enough peers observed.
    /// Peer exchange advertises these (see [`crate::pex`]). Returns `false` if the address names
    /// another node ID, is already known, or [`MAX_EXTERNAL_ADDRESSES`] are known.
    pub fn add_external_address(&self, address: NodeAddress) -> bool {
        if address.node_id() != self.shared.node_id {
            return false;
        }
        let mut external = self.shared.external.lock().unwrap_or_else(PoisonError::into_inner);
        if external.contains(&address) || external.len() >= MAX_EXTERNAL_ADDRESSES {
            return false;
        }
        info!(%address, "external address confirmed");
        external.push(address);
        true
    }

    /// Forgets a confirmed address (e.g. a UPnP mapping that was removed).
    pub fn remove_external_address(&self, address: &NodeAddress) {
        self.shared
            .external
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|a| a != address);
    }

    /// The confirmed addresses of this node (see [`add_external_address`](Self::add_external_address)).
    pub fn external_addresses(&self) -> Vec<NodeAddress> {
        self.shared.external.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The connected peer `peer`, if it is connected.
    pub fn peer(&self, peer: NodeId) -> Option<PeerSummary> {
        self.shared.peers.load().get(&peer).map(|p| p.summary())
    }

    /// The endpoints the transports listen on.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.shared
            .transports
            .get()
            .map(|m| {
                let mut seen: Vec<Endpoint> = Vec::new();
                for t in m.values().flatten() {
                    for e in t.endpoints() {
                        if !seen.contains(&e) {
                            seen.push(e);
                        }
                    }
                }
                seen
            })
            .unwrap_or_default()
    }

    /// Currently connected peers.
    pub fn connected_peers(&self) -> Vec<PeerSummary> {
        self.shared.peers.load().values().map(|p| p.summary()).collect()
    }

    /// A snapshot of the router's counters.
    pub fn stats(&self) -> RouterStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RouterStats {
            dials_succeeded: l(&c.dials_succeeded),
            dials_failed: l(&c.dials_failed),
            inbound_accepted: l(&c.inbound_accepted),
            inbound_shed: l(&c.inbound_shed),
            accept_errors: l(&c.accept_errors),
            handshake_failures: l(&c.handshake_failures),
            handshake_failures_by_reason: (HandshakeError::REASONS
                .iter()
                .zip(&c.handshake_reasons))
            .map(|(r, n)| (*r, l(n)))
            .collect(),
            evictions: EVICT_REASONS.iter().zip(&c.evictions).map(|(r, n)| (*r, l(n))).collect(),
            rejected: l(&c.rejected),
            peer_updates_lagged: l(&self.shared.lagged),
            dropped_on_disconnect: l(&c.dropped_on_disconnect),
            dial_fallbacks: l(&c.dial_fallbacks),
            protocols: {
                let peers = self.shared.peers.load();
                (self.shared.protocol_counters.get().into_iter().flatten())
                    .map(|(protocol, pc)| {
                        let connected =
                            peers.values().filter(|p| p.endpoint.protocol == *protocol).count();
                        let stats = ProtocolStats {
                            dials_succeeded: l(&pc.dials_succeeded),
                            attempts_failed: l(&pc.attempts_failed),
                            accepted: l(&pc.accepted),
                            connected,
                        };
                        (protocol.clone(), stats)
                    })
                    .collect()
            },
            channels: self
                .shared
                .table()
                .routes
                .iter()
                .map(|r| (r.descriptor.id, r.stats.snapshot()))
                .collect(),
        }
    }

    /// Starts the loops. Must be called inside a Tokio runtime.
    pub fn start(&self) -> Result<(), RouterError> {
        let setup = {
            let mut guard = self.setup.lock().unwrap_or_else(PoisonError::into_inner);
            guard.take().ok_or(RouterError::AlreadyStarted)?
        };
        if setup.transports.is_empty() {
            *self.setup.lock().unwrap_or_else(PoisonError::into_inner) = Some(setup);
            return Err(RouterError::NoTransport);
        }
        let shared = &self.shared;
        let mut info = shared.base_info.clone();
        info.channels = setup.table.routes.iter().map(|r| r.descriptor.id).collect();
        if info.listen_addr.is_empty() {
            // Advertise a listening endpoint unless the caller set an address: an MConn one if
            // there is one (Go nodes read `listen_addr` as the TCP address to dial), else the
            // first.
            let endpoints: Vec<Endpoint> =
                setup.transports.iter().flat_map(|t| t.endpoints()).collect();
            let advertised = (endpoints.iter().find(|e| e.protocol == Protocol::MCONN))
                .or_else(|| endpoints.first());
            if let Some(e) = advertised {
                // Go reads a bare `host:port` as MConn; other transports carry their scheme.
                info.listen_addr = match &e.addr {
                    crate::address::EndpointAddr::Socket(a) if e.protocol == Protocol::MCONN => {
                        a.to_string()
                    }
                    _ => e.to_string(),
                };
            }
        }
        let _ = shared.node_info.set(info);
        let mut by_protocol: HashMap<Protocol, Vec<Arc<dyn Transport>>> = HashMap::new();
        for t in &setup.transports {
            for p in t.protocols() {
                by_protocol.entry(p).or_default().push(t.clone());
            }
        }
        let mut protocols: Vec<Protocol> = by_protocol.keys().cloned().collect();
        protocols.sort();
        shared.lock_pm().set_dialable_protocols(protocols.iter().cloned());
        let _ = shared
            .protocol_counters
            .set(protocols.into_iter().map(|p| (p, ProtocolCounters::default())).collect());
        let _ = shared.transports.set(by_protocol);
        let _ = shared.table.set(setup.table);

        let sup = tokio::spawn(supervise_all(shared.clone(), setup.transports));
        *self.supervisor.lock().unwrap_or_else(PoisonError::into_inner) = Some(sup);
        info!(node = %shared.node_id, "router started");
        Ok(())
    }

    /// Stops gracefully: stops accepting and dialing, lets every peer flush its queue (up to
    /// [`RouterConfig::shutdown_grace`]), closes the connections and writes the peer store.
    pub async fn stop(&self) {
        let shared = &self.shared;
        if shared.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = shared.shutdown.send(true);
        if let Some(map) = shared.transports.get() {
            for t in map.values().flatten() {
                t.close().await;
            }
        }
        for peer in shared.peers.load().values() {
            peer.queue.close(true);
        }
        let deadline = tokio::time::Instant::now() + shared.config.shutdown_grace;
        loop {
            let gone = shared.peer_gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if shared.peers.load().is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, gone).await.is_err() {
                warn!(peers = shared.peers.load().len(), "peers did not flush in time; closing");
                for peer in shared.peers.load().values() {
                    peer.disconnect(CloseReason::Normal);
                }
                break;
            }
        }
        let sup = self.supervisor.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(sup) = sup {
            let _ = sup.await;
        }
        flush_store(shared).await;
        // Release the database so the same file can be opened again (e.g. by a restarted node).
        shared.store.lock().unwrap_or_else(PoisonError::into_inner).take();
        info!(node = %shared.node_id, "router stopped");
    }
}

impl Drop for Router {
    /// A router dropped without [`Router::stop`] stops its loops and disconnects its peers
    /// (without flushing) so no task outlives it.
    fn drop(&mut self) {
        let shared = &self.shared;
        if shared.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = shared.shutdown.send(true);
        for peer in shared.peers.load().values() {
            peer.disconnect(CloseReason::Normal);
        }
    }
}

/// A router loop; it returns only when it is finished for good (router stopping, transport
/// closed). A panic is restarted by [`supervise`].
type LoopFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn supervise_all(shared: Arc<Shared>, transports: Vec<Arc<dyn Transport>>) {
    let mut set = JoinSet::new();
    {
        let s = shared.clone();
        set.spawn(supervise(s.clone(), "dial", move || Box::pin(dial_loop(s.clone()))));
    }
    {
        let s = shared.clone();
        set.spawn(supervise(s.clone(), "evict", move || Box::pin(evict_loop(s.clone()))));
    }
    if shared.store_handle().is_some() {
        let s = shared.clone();
        set.spawn(supervise(s.clone(), "store", move || Box::pin(store_loop(s.clone()))));
    }
    for t in transports {
        let s = shared.clone();
        set.spawn(supervise(s.clone(), "accept", move || {
            Box::pin(accept_loop(s.clone(), t.clone()))
        }));
    }
    while set.join_next().await.is_some() {}
}

/// Runs a loop, restarting it (with a short backoff) if it panics or returns while the router
/// is still running.
async fn supervise(
    shared: Arc<Shared>,
    name: &'static str,
    make: impl Fn() -> LoopFuture + Send + 'static,
) {
    let mut restarts: u32 = 0;
    loop {
        let result = tokio::spawn(make()).await;
        if shared.is_stopped() {
            return;
        }
        match result {
            Ok(()) => return,
            Err(e) if e.is_panic() => error!(loop = name, "router loop panicked; restarting"),
            Err(_) => return,
        }
        restarts = restarts.saturating_add(1);
        let backoff = Duration::from_millis(50).saturating_mul(restarts.min(100));
        let mut shutdown = shared.shutdown.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn dial_loop(shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(shared.config.dial_concurrency.max(1)));
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if shared.is_stopped() {
            return;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (next, wake_at) =
            shared.with_pm_quiet(|pm, now| (pm.dial_next(now), pm.next_dial_at()));
        if let Some(address) = next {
            let s = shared.clone();
            let span = info_span!("dial", peer = %address.node_id(), %address);
            tokio::spawn(
                async move {
                    dial_peer(&s, address).await;
                    drop(permit);
                }
                .instrument(span),
            );
            continue;
        }
        drop(permit);
        let sleep = match wake_at {
            Some(at) => {
                let now = Timestamp::now();
                Duration::from_millis(at.as_millis().saturating_sub(now.as_millis()))
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = shared.dial_wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Dials `primary`'s peer: `primary` first, then, racing it, the peer's other dialable
/// addresses (see [`RouterConfig::fallback_delay`]); the first transport connection wins and
/// goes through the node handshake.
async fn dial_peer(shared: &Arc<Shared>, primary: NodeAddress) {
    let peer = primary.node_id();
    let fallbacks = shared.with_pm_quiet(|pm, now| pm.fallback_addresses(peer, now));
    let (winner, failures) = race_connect(shared, primary.clone(), fallbacks).await;
    for (address, error) in &failures {
        shared.bump_protocol(address.protocol(), |c| &c.attempts_failed);
        if matches!(error, DialError::Handshake { .. }) {
            shared.with_pm_quiet(|pm, now| pm.handshake_failed(address, now));
        }
        if winner.is_some() {
            info!(%address, %error, "connection attempt failed; another address is in use");
        }
    }
    let Some((address, conn)) = winner else {
        // Every address failed: the dial fails with the last one, the others back off.
        let mut failures = failures;
        let last = failures.pop();
        shared.with_pm(|pm, now| {
            for (address, _) in &failures {
                pm.attempt_failed(address, now);
            }
            if let Some((address, _)) = &last {
                pm.dial_failed(address, now);
            } else {
                // Nothing was attempted (cannot happen: the primary always is); end the dial.
                pm.dial_failed(&primary, now);
            }
        });
        bump(&shared.counters.dials_failed);
        if let Some((_, e)) = last {
            info!(error = %e, "dial failed");
        }
        return;
    };
    shared.with_pm_quiet(|pm, now| {
        for (address, _) in &failures {
            pm.attempt_failed(address, now);
        }
    });
    if address != primary {
        bump(&shared.counters.dial_fallbacks);
        info!(
            preferred = %primary,
            used = %address,
            protocol = %address.protocol(),
            "fell back to another address of the peer"
        );
    }
    let endpoint = conn.remote_endpoint();
    let (conn, info) = match handshake(shared, conn, Some(peer)).await {
        Ok(x) => x,
        Err(source) => {
            shared.counters.handshake_failed(&source);
            bump(&shared.counters.dials_failed);
            shared.bump_protocol(address.protocol(), |c| &c.attempts_failed);
            let e = DialError::Handshake { endpoint, source };
            info!(error = %e, "dial failed");
            shared.with_pm(|pm, now| {
                pm.handshake_failed(&address, now);
                pm.dial_failed(&address, now);
            });
            return;
        }
    };
    let conn_id = ConnectionId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    match shared.with_pm(|pm, now| pm.dialed(&address, conn_id, now)) {
        Ok(admission) => {
            bump(&shared.counters.dials_succeeded);
            shared.bump_protocol(address.protocol(), |c| &c.dials_succeeded);
            spawn_peer(shared, conn, info, conn_id, Direction::Outbound, admission);
        }
        Err(rejection) => {
            bump(&shared.counters.rejected);
            info!(reason = %rejection, "dialled peer not admitted");
            conn.close().await;
        }
    }
}

/// Connects to the first of `primary` and `fallbacks` that answers: `primary` at once, each
/// next address when the previous attempt failed or [`RouterConfig::fallback_delay`] passed,
/// whichever comes first. Returns the winner (the other attempts are abandoned, closing what
/// they opened) and the attempts that failed, in order of failure.
async fn race_connect(
    shared: &Arc<Shared>,
    primary: NodeAddress,
    fallbacks: Vec<NodeAddress>,
) -> (Option<(NodeAddress, Box<dyn Connection>)>, Vec<(NodeAddress, DialError)>) {
    let mut pending = std::iter::once(primary).chain(fallbacks);
    let mut attempts: JoinSet<Result<Box<dyn Connection>, DialError>> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, NodeAddress> = HashMap::new();
    let mut failures = Vec::new();
    let mut next = pending.next();
    let mut next_at = tokio::time::Instant::now();
    loop {
        if let Some(address) = next.take_if(|_| attempts.is_empty()) {
            let s = shared.clone();
            let a = address.clone();
            let handle = attempts.spawn(async move { connect(&s, &a).await }.in_current_span());
            running.insert(handle.id(), address);
            next = pending.next();
            next_at = tokio::time::Instant::now() + shared.config.fallback_delay;
            continue;
        }
        tokio::select! {
            joined = attempts.join_next_with_id() => {
                let (id, result) = match joined {
                    None => return (None, failures),
                    Some(Ok((id, result))) => (id, result),
                    Some(Err(e)) => {
                        let error = DialError::Resolve(format!("connection attempt panicked: {e}"));
                        (e.id(), Err(error))
                    }
                };
                let Some(address) = running.remove(&id) else { continue };
                match result {
                    Ok(conn) => return (Some((address, conn)), failures),
                    Err(error) => {
                        debug!(%address, %error, "connection attempt failed");
                        failures.push((address, error));
                    }
                }
            }
            _ = tokio::time::sleep_until(next_at), if next.is_some() => {
                if let Some(address) = next.take() {
                    let s = shared.clone();
                    let a = address.clone();
                    let handle =
                        attempts.spawn(async move { connect(&s, &a).await }.in_current_span());
                    running.insert(handle.id(), address);
                    next = pending.next();
                    next_at = tokio::time::Instant::now() + shared.config.fallback_delay;
                }
            }
        }
    }
}

/// Resolves `address` and connects a transport to it (no node handshake yet).
///
/// The lookup is bounded by [`RouterConfig::dial_timeout`]. A name with several addresses
/// (IPv6 and IPv4, in the resolver's interleaved order) is raced happy-eyeballs style: the next
/// endpoint is tried [`RouterConfig::fallback_delay`] after the previous one started, or as
/// soon as it failed; each attempt is bounded by `dial_timeout`, and the first connection wins
/// (the others are dropped). So an address family that silently drops packets costs one
/// fallback delay, not a whole dial timeout.
async fn connect(
    shared: &Arc<Shared>,
    address: &NodeAddress,
) -> Result<Box<dyn Connection>, DialError> {
    let timeout = shared.config.dial_timeout;
    let endpoints =
        tokio::time::timeout(timeout, resolve(shared, address)).await.map_err(|_| {
            DialError::Resolve(format!("looking up {address} timed out after {timeout:?}"))
        })??;
    let mut last = DialError::NoEndpoints;
    let mut candidates: Vec<(Endpoint, Arc<dyn Transport>)> = Vec::new();
    for endpoint in endpoints {
        let transports = shared.transports_for(&endpoint.protocol);
        if transports.is_empty() {
            last = DialError::NoTransport(endpoint.protocol.clone());
        }
        candidates.extend(transports.iter().map(|t| (endpoint.clone(), t.clone())));
    }
    let mut pending = candidates.into_iter();
    let mut attempts: JoinSet<Result<Box<dyn Connection>, DialError>> = JoinSet::new();
    let mut next_at = tokio::time::Instant::now();
    loop {
        let start_next = attempts.is_empty() || tokio::time::Instant::now() >= next_at;
        if start_next && let Some((endpoint, transport)) = pending.next() {
            let s = shared.clone();
            attempts.spawn(
                async move { connect_endpoint(&s, endpoint, transport).await }.in_current_span(),
            );
            next_at = tokio::time::Instant::now() + shared.config.fallback_delay;
            continue;
        }
        if attempts.is_empty() {
            return Err(last);
        }
        let more = pending.len() > 0;
        tokio::select! {
            joined = attempts.join_next() => match joined {
                Some(Ok(Ok(conn))) => return Ok(conn),
                Some(Ok(Err(error))) => {
                    debug!(%address, %error, "endpoint attempt failed");
                    last = error;
                    // The next endpoint starts at once.
                    next_at = tokio::time::Instant::now();
                }
                Some(Err(e)) => last = DialError::Resolve(format!("dial attempt panicked: {e}")),
                None => return Err(last),
            },
            _ = tokio::time::sleep_until(next_at), if more => {}
        }
    }
}

/// Dials one endpoint with one transport and establishes the connection, within the dial
/// timeout.
async fn connect_endpoint(
    shared: &Shared,
    endpoint: Endpoint,
    transport: Arc<dyn Transport>,
) -> Result<Box<dyn Connection>, DialError> {
    let connect = async {
        let mut conn = transport.dial(&endpoint).await?;
        match conn.establish().await {
            Ok(()) => Ok(Ok(conn)),
            Err(e) => {
                conn.close().await;
                Ok(Err(e))
            }
        }
    };
    match tokio::time::timeout(shared.config.dial_timeout, connect).await {
        Ok(Ok(Ok(conn))) => Ok(conn),
        Ok(Ok(Err(source))) => {
            shared.counters.handshake_failed(&source);
            Err(DialError::Handshake { endpoint, source })
        }
        Ok(Err(TransportError::UnsupportedProtocol(p))) => Err(DialError::NoTransport(p)),
        Ok(Err(source)) => Err(DialError::Transport { endpoint, source }),
        Err(_) => Err(DialError::Timeout(endpoint)),
    }
}

/// The endpoints of `address`: a DNS host is looked up now, with the configured resolver or the
/// system's (made on first use).
async fn resolve(shared: &Shared, address: &NodeAddress) -> Result<Vec<Endpoint>, DialError> {
    let Some((Host::Dns(name), port)) = address.host_port() else {
        return Ok(address.literal_endpoints().unwrap_or_default());
    };
    let resolver = match shared.resolver.get() {
        Some(r) => r,
        None => {
            let system = Resolver::system().map_err(|source| {
                DialError::Resolve(
                    crate::address::ResolveError::Setup { host: name.clone(), port, source }
                        .to_string(),
                )
            })?;
            shared.resolver.get_or_init(|| system)
        }
    };
    address.resolve_with(resolver).await.map_err(|e| DialError::Resolve(e.to_string()))
}

/// Runs the transport handshake under the timeout and checks the identity and NodeInfo.
async fn handshake(
    shared: &Arc<Shared>,
    mut conn: Box<dyn Connection>,
    expected: Option<NodeId>,
) -> Result<(Box<dyn Connection>, NodeInfo), HandshakeError> {
    let limit = shared.config.handshake_timeout;
    let descriptors = shared.table().descriptors();
    let result =
        tokio::time::timeout(limit, conn.handshake(shared.local_info(), &shared.key, &descriptors))
            .await;
    let checked = match result {
        Err(_) => Err(HandshakeError::Timeout(limit)),
        Ok(Err(e)) => Err(e),
        Ok(Ok((info, key))) => check_peer(shared, &info, &key, expected).map(|()| info),
    };
    match checked {
        Ok(info) => Ok((conn, info)),
        Err(e) => {
            conn.close().await;
            Err(e)
        }
    }
}

fn check_peer(
    shared: &Shared,
    info: &NodeInfo,
    key: &ed25519_dalek::VerifyingKey,
    expected: Option<NodeId>,
) -> Result<(), HandshakeError> {
    let authenticated = NodeId::from_public_key(key);
    if let Some(claimed) = expected
        && claimed != authenticated
    {
        return Err(HandshakeError::IdMismatch {
            authenticated,
            claimed,
            claimed_by: "the dialled address",
        });
    }
    if info.node_id != authenticated {
        return Err(HandshakeError::IdMismatch {
            authenticated,
            claimed: info.node_id,
            claimed_by: "its NodeInfo",
        });
    }
    if authenticated == shared.node_id {
        return Err(HandshakeError::SelfConnection(authenticated));
    }
    info.validate()?;
    shared.local_info().compatible_with(info)?;
    Ok(())
}

async fn accept_loop(shared: Arc<Shared>, transport: Arc<dyn Transport>) {
    let pending = Arc::new(Semaphore::new(shared.config.max_pending_handshakes.max(1)));
    let mut shutdown = shared.shutdown.subscribe();
    let mut consecutive_errors: u32 = 0;
    loop {
        let accepted = tokio::select! {
            r = transport.accept() => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok(conn) => {
                consecutive_errors = 0;
                bump(&shared.counters.inbound_accepted);
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    bump(&shared.counters.inbound_shed);
                    warn!(remote = %conn.remote_endpoint(), "too many pending handshakes; closing inbound connection");
                    tokio::spawn(async move { conn.close().await });
                    continue;
                };
                let s = shared.clone();
                let span = info_span!("inbound", remote = %conn.remote_endpoint());
                tokio::spawn(
                    async move {
                        accept_peer(&s, conn).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(TransportError::Closed) => {
                debug!("transport closed; accept loop ends");
                return;
            }
            Err(e) => {
                bump(&shared.counters.accept_errors);
                consecutive_errors = consecutive_errors.saturating_add(1);
                warn!(error = %e, "accept failed; continuing");
                // Back off on repeated errors (e.g. out of file descriptors) instead of spinning.
                if consecutive_errors > 1 {
                    let backoff = Duration::from_millis(10)
                        .saturating_mul(1 << consecutive_errors.min(7))
                        .min(Duration::from_secs(1));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }
}

async fn accept_peer(shared: &Arc<Shared>, conn: Box<dyn Connection>) {
    let (conn, info) = match handshake(shared, conn, None).await {
        Ok(x) => x,
        Err(e) => {
            shared.counters.handshake_failed(&e);
            info!(error = %e, "inbound handshake failed");
            return;
        }
    };
    let conn_id = ConnectionId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    let peer = info.node_id;
    match shared.with_pm(|pm, now| pm.accepted(peer, conn_id, now)) {
        Ok(admission) => {
            shared.bump_protocol(&conn.remote_endpoint().protocol, |c| &c.accepted);
            spawn_peer(shared, conn, info, conn_id, Direction::Inbound, admission);
        }
        Err(rejection) => {
            bump(&shared.counters.rejected);
            info!(%peer, reason = %rejection, "inbound peer not admitted");
            conn.close().await;
        }
    }
}

fn spawn_peer(
    shared: &Arc<Shared>,
    conn: Box<dyn Connection>,
    info: NodeInfo,
    conn_id: ConnectionId,
    direction: Direction,
    admission: Admission,
) {
    let mut channels = [0u64; 4];
    for ch in &info.channels {
        let i = usize::from(ch.0);
        if let Some(w) = channels.get_mut(i / 64) {
            *w |= 1u64 << (i % 64);
        }
    }
    let handle = Arc::new(PeerHandle {
        node_id: info.node_id,
        conn_id,
        direction,
        queue: PeerQueue::new(shared.table().scheduler()),
        channels,
        endpoint: conn.remote_endpoint(),
        node_info: info,
        stop: Notify::new(),
        close_reason: Mutex::new(None),
        misbehaviour: Mutex::new(None),
        sent_bytes: AtomicU64::new(0),
        received_bytes: AtomicU64::new(0),
    });
    let mut replaced = None;
    shared.update_peers(|map| {
        replaced = map.insert(handle.node_id, handle.clone());
    });
    if shared.is_stopped() {
        // Admitted while the router was stopping: let the peer task flush nothing and exit.
        handle.queue.close(true);
    }
    if let Some(old) = replaced {
        debug!(peer = %old.node_id, old = %old.conn_id, new = %conn_id, ?admission, "connection replaced");
        old.disconnect(CloseReason::Replaced);
    }
    let conn: Arc<dyn Connection> = Arc::from(conn);
    let s = shared.clone();
    let span = info_span!("peer", peer = %handle.node_id, conn = %conn_id);
    tokio::spawn(run_peer(s, conn, handle).instrument(span));
}

async fn run_peer(shared: Arc<Shared>, conn: Arc<dyn Connection>, handle: Arc<PeerHandle>) {
    let peer = handle.node_id;
    shared.with_pm(|pm, now| pm.ready(peer, handle.conn_id, now));
    info!(
        direction = ?handle.direction,
        protocol = %handle.endpoint.protocol,
        endpoint = %handle.endpoint,
        "peer connected"
    );
    let mut reader = tokio::spawn(read_loop(shared.clone(), conn.clone(), handle.clone()));
    let reason: String = tokio::select! {
        r = write_loop(&shared, conn.as_ref(), &handle) => match r {
            Ok(()) if handle.has_close_reason() => "hung up".into(),
            Ok(()) => "router stopping".into(),
            Err(e) => format!("send failed: {e}"),
        },
        r = &mut reader => match r {
            Ok(reason) => reason,
            Err(e) => format!("reader task failed: {e}"),
        },
        _ = handle.stop.notified() => "disconnected by the router".into(),
    };
    reader.abort();
    let dropped = handle.queue.close(false);
    if dropped > 0 {
        shared.counters.dropped_on_disconnect.fetch_add(dropped as u64, Ordering::Relaxed);
    }
    let close = handle.take_close_reason().unwrap_or(CloseReason::Normal);
    if tokio::time::timeout(Duration::from_secs(2), conn.close_with(&close)).await.is_err() {
        debug!("connection close timed out");
    }
    shared.update_peers(|map| {
        if map.get(&peer).is_some_and(|h| Arc::ptr_eq(h, &handle)) {
            map.remove(&peer);
        }
    });
    shared.with_pm(|pm, now| pm.disconnected(peer, handle.conn_id, now));
    shared.peer_gone.notify_waiters();
    info!(%reason, dropped, "peer disconnected");
}

/// A send handed to the connection that has not completed yet.
type PendingSend<'a> = Pin<Box<dyn Future<Output = Result<(), ConnectionError>> + Send + 'a>>;

/// Drains the peer's queue into the connection.
///
/// Sends of different channels run concurrently: a send that waits (a 4 MiB block part on a
/// full QUIC stream, say) makes only its own channel wait, while the writer keeps taking the
/// other channels' messages in priority order. Each channel has at most one send in flight, so
/// per-channel order is kept.
async fn write_loop(
    shared: &Shared,
    conn: &dyn Connection,
    handle: &PeerHandle,
) -> Result<(), ConnectionError> {
    let (max_msgs, max_bytes) =
        (shared.config.writer_batch_messages.max(1), shared.config.writer_batch_bytes.max(1));
    let mut inflight: Vec<(ChannelId, u64, PendingSend<'_>)> = Vec::new();
    let mut busy = ChannelSet::default();
    let completed = |ch: ChannelId, len: u64| {
        handle.sent_bytes.fetch_add(len, Ordering::Relaxed);
        if let Some(route) = shared.table().route(ch) {
            route.stats.sent.fetch_add(1, Ordering::Relaxed);
            route.stats.sent_bytes.fetch_add(len, Ordering::Relaxed);
        }
    };
    loop {
        // Hand the connection what can be sent now, highest priority first.
        let (mut taken, mut bytes) = (0, 0);
        let mut done = false;
        while taken < max_msgs && bytes < max_bytes {
            let (ch, msg) = match handle.queue.try_pop_excluding(&busy) {
                TryPop::Message(ch, msg) => (ch, msg),
                TryPop::Nothing => break,
                TryPop::Done => {
                    done = true;
                    break;
                }
            };
            taken += 1;
            bytes += msg.len();
            let len = msg.len() as u64;
            let mut send = conn.send(ch, msg);
            // Most sends complete at once; only a send that has to wait is kept.
            match std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
                Poll::Ready(Ok(())) => completed(ch, len),
                Poll::Ready(Err(e)) => return Err(lost(shared, inflight.len(), e)),
                Poll::Pending => {
                    busy.insert(ch);
                    inflight.push((ch, len, send));
                }
            }
        }
        if done && inflight.is_empty() {
            return Ok(());
        }
        if taken >= max_msgs || bytes >= max_bytes {
            // More may be waiting: let other tasks run, then go on.
            tokio::task::yield_now().await;
        }
        // Wait for a pending send to finish or for new messages.
        let data = handle.queue.wait_data();
        tokio::pin!(data);
        let waited = std::future::poll_fn(|cx| {
            let mut progressed = false;
            let mut i = 0;
            while let Some((ch, len, send)) = inflight.get_mut(i) {
                match send.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => {
                        let (ch, len) = (*ch, *len);
                        completed(ch, len);
                        busy.remove(ch);
                        drop(inflight.swap_remove(i));
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => i += 1,
                }
            }
            if progressed || (!done && data.as_mut().poll(cx).is_ready()) {
                Poll::Ready(Ok(()))
            } else if taken >= max_msgs || bytes >= max_bytes {
                // The round stopped at its limit, not because the queue was empty.
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await;
        if let Err(e) = waited {
            return Err(lost(shared, inflight.len(), e));
        }
    }
}

/// Counts the sends abandoned when the connection failed; returns the error.
fn lost(shared: &Shared, pending: usize, e: ConnectionError) -> ConnectionError {
    shared.counters.dropped_on_disconnect.fetch_add(pending as u64, Ordering::Relaxed);
    e
}

async fn read_loop(
    shared: Arc<Shared>,
    conn: Arc<dyn Connection>,
    handle: Arc<PeerHandle>,
) -> String {
    let peer = handle.node_id;
    loop {
        let (ch, bytes) = match conn.receive().await {
            Ok(m) => m,
            Err(ConnectionError::Closed) => return "connection closed".into(),
            Err(e @ ConnectionError::Io(_)) => {
                return format!("receive failed: {e}");
            }
            Err(e) => {
                shared.report(PeerError {
                    node_id: peer,
                    severity: Severity::Disconnect,
                    reason: e.to_string(),
                });
                return format!("receive failed: {e}");
            }
        };
        let Some(route) = shared.table().route(ch) else {
            let reason = format!("message on unknown channel {ch}");
            shared.report(PeerError {
                node_id: peer,
                severity: Severity::Disconnect,
                reason: reason.clone(),
            });
            return reason;
        };
        if bytes.len() > route.descriptor.max_message_size {
            let reason = format!(
                "message of {} bytes on channel {ch} exceeds its limit of {}",
                bytes.len(),
                route.descriptor.max_message_size
            );
            shared.report(PeerError {
                node_id: peer,
                severity: Severity::Disconnect,
                reason: reason.clone(),
            });
            return reason;
        }
        route.stats.received.fetch_add(1, Ordering::Relaxed);
        route.stats.received_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        handle.received_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        // Backpressure: a full inbound queue makes this peer's reader wait. If the reactor
        // dropped its channel the message is discarded.
        let _ = route.tx.send((peer, bytes)).await;
    }
}

async fn evict_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let evictions: Vec<_> =
            shared.with_pm_quiet(|pm, _| std::iter::from_fn(|| pm.evict_next()).collect());
        let peers = shared.peers.load();
        for e in evictions {
            if let Some(p) = peers.get(&e.node_id).filter(|p| p.conn_id == e.connection) {
                let reason = match e.reason {
                    EvictReason::Upgrade => CloseReason::Evicted,
                    EvictReason::Replaced => CloseReason::Replaced,
                    EvictReason::Misbehaved => CloseReason::Misbehaved(p.misbehaviour()),
                    EvictReason::Banned => CloseReason::Banned(p.misbehaviour()),
                    EvictReason::HungUp => CloseReason::Normal,
                };
                if let Some(c) = shared.counters.evictions.get(evict_reason_index(e.reason)) {
                    bump(c);
                }
                info!(peer = %e.node_id, %reason, "evicting peer");
                if e.reason == EvictReason::HungUp {
                    p.hang_up();
                } else {
                    p.disconnect(reason);
                }
            }
        }
        tokio::select! {
            _ = shared.evict_wake.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn store_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = shared.store_wake.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        flush_store(&shared).await;
        tokio::select! {
            _ = tokio::time::sleep(shared.config.store_flush_interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn flush_store(shared: &Arc<Shared>) {
    let Some(store) = shared.store_handle() else { return };
    let ops = shared.lock_pm().drain_dirty();
    if ops.is_empty() {
        return;
    }
    let n = ops.len();
    match tokio::task::spawn_blocking(move || store.apply(&ops)).await {
        Ok(Ok(())) => debug!(records = n, "peer store written"),
        Ok(Err(e)) => error!(error = %e, "peer store write failed"),
        Err(e) => error!(error = %e, "peer store writer task failed"),
    }
}
