//! Peer management: whom to dial, whom to accept, whom to evict, and what to remember.
//!
//! [`PeerManager`] is a synchronous, sans-IO state machine. It never reads the clock, never
//! sleeps, never locks and never touches the network or the disk: every method that depends on
//! time takes a [`Timestamp`], and randomness (backoff jitter) comes from a small RNG seeded
//! from [`PeerManagerConfig::rng_seed`], so a run is fully reproducible. The router owns it
//! (behind a mutex), tells it about connection events, publishes the [`PeerUpdate`]s from
//! [`PeerManager::drain_updates`], closes the connections returned by
//! [`PeerManager::evict_next`] and writes the [`StoreOp`]s from [`PeerManager::drain_dirty`]
//! to a [`PeerStore`].
//!
//! # Rules
//!
//! **Scores.** Persistent peers (from [`PeerManagerConfig::persistent_peers`]) have the fixed
//! score [`PERSISTENT_SCORE`], above every other peer. Every other peer has a score that starts
//! at 0 and decays exponentially toward 0 with half-life [`PeerManagerConfig::score_half_life`]
//! (applied lazily when read or changed). It changes by: a failed dial −[`DIAL_FAILURE_PENALTY`],
//! a [`Severity::Minor`] report −[`MINOR_PENALTY`], [`Severity::Disconnect`]
//! −[`DISCONNECT_PENALTY`], [`Severity::Ban`] −[`BAN_PENALTY`], a connection that becomes ready
//! +[`CONNECTED_REWARD`], [`PeerManager::report_good`] +[`GOOD_REWARD`]; it always stays within
//! [[`MIN_SCORE`], [`MAX_SCORE`]].
//!
//! **Dialing.** [`PeerManager::dial_next`] picks among peers that are known, not connected, not
//! being dialed, not banned, and have an address whose retry time has come: highest score first,
//! then fewest failures, then lowest node ID. It returns that peer's best ready address (see
//! below; a peer keeps at most [`MAX_ADDRESSES_PER_PEER`] addresses). Capacity:
//! a dial needs `outbound + dialing < max_outgoing` (persistent peers count toward that limit but
//! are dialed even when it is reached) and `connected + dialing < max_connected`. When the
//! second limit is reached, an *upgrade* dial is still allowed while
//! `connected + dialing < max_connected + max_upgrade` if the candidate is persistent or scores
//! strictly higher than the lowest-scored connected non-persistent peer.
//!
//! **Addresses and transports.** A peer may be known by addresses of several protocols
//! (`quic://`, `mconn://`, ...). Only addresses of protocols passed to
//! [`PeerManager::set_dialable_protocols`] (by default: all) are dialed. The ready addresses of
//! a peer are ranked: first those of the protocol whose dial last succeeded (remembered per
//! peer, persisted, and forgotten as soon as an address of that protocol fails), then fewest
//! consecutive failures, then the order of [`PeerManagerConfig::protocol_preference`] (QUIC
//! before MConn by default), then the order in which they were learned. [`dial_next`] returns
//! the best; [`PeerManager::fallback_addresses`] lists the others, which the router tries when
//! the best fails or is slow (it races them, see [`RouterConfig::fallback_delay`]). An
//! address that fails during such a dial backs off ([`PeerManager::attempt_failed`]) without
//! costing the peer score; the dial as a whole fails ([`PeerManager::dial_failed`]) only when
//! every address tried failed.
//!
//! [`dial_next`]: PeerManager::dial_next
//! [`RouterConfig::fallback_delay`]: crate::RouterConfig::fallback_delay
//!
//! **Address book defences.** Addresses from the configuration or an operator
//! ([`PeerManager::add_address`]) are trusted. Addresses a peer gossiped (PEX,
//! [`PeerManager::add_gossiped_address`]) remember their source and are limited: a source may
//! give at most [`PeerManagerConfig::max_gossip_per_source_group`] addresses per
//! [`NetworkGroup`] (the /16 of an IPv4 address, the /32 of an IPv6 one) and
//! [`PeerManagerConfig::max_gossip_per_source`] in all, so one source flooding thousands of
//! addresses from one network fills only its quota ([`AddAddressError::SourceQuota`]). An
//! address whose dial completed the handshake is *verified*: gossip never adds another address
//! for that node ID while it is known ([`AddAddressError::Verified`]), and a full address list
//! never evicts it. Each dial of a gossiped address that reaches a node whose handshake fails
//! (another node ID answers, say) costs its source [`SOURCE_FAILURE_PENALTY`]
//! ([`PeerManager::handshake_failed`]); addresses where nothing answers cost nothing, since
//! honest address books hold stale entries. Banned peers are not re-learned while the ban lasts. Sources and
//! verification are persisted.
//!
//! **Backoff.** After `k` consecutive failures of an address, it is retried at
//! `last_failure + min(min_retry · 2^(k−1), cap) · (1 + jitter)` with `jitter` drawn from
//! `[0, retry_jitter)` and `cap` = `max_retry_persistent` for persistent peers, `max_retry`
//! otherwise. A successful dial resets the address. Persistent peers are never given up; a
//! non-persistent address with more than `max_dial_failures` consecutive failures is forgotten,
//! and so is a peer left without addresses (unless it is banned or connected). When an outbound
//! connection closes, its address is retried no sooner than `min_retry` later (inbound closes
//! delay nothing); from the second consecutive connection on it that lasted less than
//! `min_stable_connection`, no sooner than the backoff for that many failures (a peer that
//! keeps hanging up on us, such as a seed node, is not redialed in a loop). [`PeerManager::next_dial_at`] tells the router when the next such retry time
//! or ban expiry comes.
//!
//! **Admission.** [`PeerManager::dialed`] and [`PeerManager::accepted`] reject our own node ID,
//! banned peers and (`dialed` only) peers we were not dialing ([`Rejection::NotDialing`]). A new
//! connection is admitted while `connected < max_connected`; beyond that only as an upgrade
//! (persistent peer, or score strictly above the lowest-scored connected non-persistent peer)
//! while `connected < max_connected + max_upgrade`, else [`Rejection::Full`]. Whenever the number
//! of connected peers not already being evicted exceeds `max_connected`, the lowest-scored
//! connected non-persistent peer is scheduled for eviction ([`EvictReason::Upgrade`]).
//!
//! **Duplicate and simultaneous connections.** Both nodes reach the same decision on their own:
//! * a new connection to a peer that already has one in the *same* direction replaces it
//!   ([`Admission::Replaces`]): a restarted peer's fresh connection wins over a stale one;
//! * in *different* directions, the connection dialed by the node with the lower node ID is kept
//!   (we keep our outbound one iff our ID is lower); the loser gets [`Rejection::TieBreakLost`],
//!   the winner [`Admission::Replaces`];
//! * an inbound connection from a peer we are dialing is accepted iff the peer's ID is lower
//!   than ours (its dial wins; our dial, when it completes, then loses by the rule above);
//!   otherwise it is rejected and our dial goes on.
//!
//! **Bans.** [`Severity::Ban`] bans a peer for `ban_duration` (bans are persisted) and evicts it
//! ([`EvictReason::Banned`]); until then it is not dialed, not accepted and not re-added by
//! [`PeerManager::add_address`]. Persistent peers are never banned: a ban report evicts them like
//! [`Severity::Disconnect`]. [`Severity::Disconnect`] evicts with [`EvictReason::Misbehaved`].
//! Each connection is returned by [`PeerManager::evict_next`] at most once.
//!
//! **Updates.** A connection reported [`PeerManager::ready`] emits [`PeerStatus::Up`]; when a
//! ready connection ends, by [`PeerManager::disconnected`] or by being replaced, the peer gets
//! [`PeerStatus::Down`]. A replacement therefore shows up as `Down` (at once) followed by `Up`
//! (when the new connection is ready): per peer, `Up` and `Down` strictly alternate, starting
//! with `Up`. Disconnect events of a connection that was replaced are ignored.
//!
//! **Store.** At most `max_peers` peers are remembered. Adding a new peer to a full store prunes
//! the lowest-scored peer that is not persistent, not connected, not being dialed and not banned,
//! provided it scores strictly below a new peer (0); otherwise the address is rejected with
//! [`AddAddressError::StoreFull`]. Inbound peers with no known address are tracked while
//! connected and forgotten when they disconnect, unless they are banned or have a negative score
//! (so a misbehaving peer cannot come back with a clean slate). Every change that must survive
//! a restart (addresses, failures, score, ban, last connection) marks the peer dirty for
//! [`PeerManager::drain_dirty`].

use std::collections::{BTreeMap, BTreeSet, VecDeque, vec_deque};
use std::fmt;
use std::ops::{Add, Sub};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::address::{NodeAddress, Protocol};
use crate::types::NodeId;

mod store;
#[cfg(test)]
mod tests;

pub use store::{AddressRecord, PeerRecord, PeerStore, PeerStoreError, StoreOp};

/// The fixed score of persistent peers, above any score another peer can reach.
pub const PERSISTENT_SCORE: f64 = 1e9;
/// The highest score of a non-persistent peer.
pub const MAX_SCORE: f64 = 100.0;
/// The lowest score of a non-persistent peer.
pub const MIN_SCORE: f64 = -1000.0;
/// Score lost by a failed dial.
pub const DIAL_FAILURE_PENALTY: f64 = 1.0;
/// Score lost by a [`Severity::Minor`] report.
pub const MINOR_PENALTY: f64 = 1.0;
/// Score lost by a [`Severity::Disconnect`] report.
pub const DISCONNECT_PENALTY: f64 = 10.0;
/// Score lost by a [`Severity::Ban`] report.
pub const BAN_PENALTY: f64 = 100.0;
/// Score gained by a connection that becomes ready.
pub const CONNECTED_REWARD: f64 = 1.0;
/// Score gained by [`PeerManager::report_good`].
pub const GOOD_REWARD: f64 = 1.0;
/// How many addresses are remembered per peer.
pub const MAX_ADDRESSES_PER_PEER: usize = 8;
/// Score a source loses each time an address it gossiped fails to dial.
pub const SOURCE_FAILURE_PENALTY: f64 = 0.25;

/// A point in time: milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The timestamp `ms` milliseconds after the Unix epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The current wall-clock time; a convenience for callers (the state machine never calls it).
    pub fn now() -> Self {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// How long after `earlier` this timestamp is; zero if it is not after it.
    pub fn saturating_sub(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Self;

    /// Adds whole milliseconds, saturating at the end of time.
    fn add(self, rhs: Duration) -> Self {
        let ms = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ms))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Self;

    /// Subtracts whole milliseconds, saturating at the epoch.
    fn sub(self, rhs: Duration) -> Self {
        let ms = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_sub(ms))
    }
}

/// Identifies one connection; assigned by the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The peer dialed us.
    Inbound,
    /// We dialed the peer.
    Outbound,
}

/// How bad a reported misbehaviour is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Severity {
    /// A score penalty only.
    Minor,
    /// A bigger score penalty, and the peer is evicted.
    Disconnect,
    /// The biggest penalty; the peer is banned for `ban_duration` and evicted.
    Ban,
}

/// Whether a peer is usable by reactors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerStatus {
    /// The peer's connection is ready: reactors may send to it.
    Up,
    /// The peer's connection is gone.
    Down,
}

/// A change of a peer's status, for reactors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerUpdate {
    /// The peer.
    pub node_id: NodeId,
    /// Its new status.
    pub status: PeerStatus,
    /// The direction of the connection that came up or went down.
    pub direction: Direction,
    /// The connection that came up or went down.
    pub connection: ConnectionId,
}

/// Why a connection is evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EvictReason {
    /// Its slot goes to a better peer.
    Upgrade,
    /// The peer was reported with [`Severity::Disconnect`] (or is persistent and was reported
    /// with [`Severity::Ban`]).
    Misbehaved,
    /// The peer was banned.
    Banned,
    /// The connection was superseded by another one to the same peer. Not produced by the
    /// current rules: replacements are reported through [`Admission::Replaces`].
    Replaced,
    /// A reactor asked for it without blaming the peer ([`PeerManager::hang_up`]), e.g. a seed
    /// node that has exchanged addresses.
    HungUp,
}

/// A connection the router must close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// The peer.
    pub node_id: NodeId,
    /// The connection to close.
    pub connection: ConnectionId,
    /// Why.
    pub reason: EvictReason,
}

/// A connection was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The connection is the peer's only one.
    Accepted,
    /// The connection replaces the peer's previous one, which the router must close.
    Replaces(ConnectionId),
}

/// Why a connection was not admitted; the router closes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The peer is this node.
    #[error("the peer is this node itself")]
    Self_,
    /// The peer is banned.
    #[error("the peer is banned until {} ms after the Unix epoch", until.as_millis())]
    Banned {
        /// When the ban ends.
        until: Timestamp,
    },
    /// This very connection was already admitted.
    #[error("this connection was already admitted")]
    AlreadyConnected,
    /// The peer has another connection, which wins the deterministic tie-break.
    #[error("the peer has another connection that wins the tie-break")]
    TieBreakLost,
    /// No slot is free and the peer is not good enough for an upgrade.
    #[error("all connection slots are taken and the peer does not qualify for an upgrade")]
    Full,
    /// A dial completed for a peer we were not dialing.
    #[error("the peer was not being dialed")]
    NotDialing,
}

/// Why [`PeerManager::add_address`] refused an address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddAddressError {
    /// The address is this node's own.
    #[error("the address belongs to this node itself")]
    OwnAddress,
    /// The peer is banned.
    #[error("the peer is banned until {} ms after the Unix epoch", until.as_millis())]
    Banned {
        /// When the ban ends.
        until: Timestamp,
    },
    /// The store is full and holds no prunable peer scoring below a new one.
    #[error(
        "the peer store is full ({max_peers} peers) and no prunable peer scores below a new one"
    )]
    StoreFull {
        /// The configured bound.
        max_peers: usize,
    },
    /// The source already gave us as many addresses as it may (in this network group, or in
    /// all).
    #[error("{source_id} already gave {count} addresses{}, its quota", group.as_ref().map(|g| format!(" in network group {g}")).unwrap_or_default())]
    SourceQuota {
        /// The peer that gossiped the address.
        source_id: NodeId,
        /// The network group (`a.b.0.0/16`, `x:y::/32`, a DNS name), or `None` for the total.
        group: Option<NetworkGroup>,
        /// How many it gave.
        count: usize,
    },
    /// A handshake verified another address of this node ID; gossip does not replace it.
    #[error("the peer's address was verified by a handshake; gossip does not replace it")]
    Verified,
}

/// The network group of an address, for per-source quotas: the /16 of an IPv4 address, the /32
/// of an IPv6 one, the name of a DNS host, or the opaque target (memory addresses).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum NetworkGroup {
    /// The first two octets of an IPv4 address.
    V4([u8; 2]),
    /// The first four octets of an IPv6 address.
    V6([u8; 4]),
    /// A DNS name.
    Name(String),
    /// An address without a host (in-process transports).
    Opaque,
}

impl NetworkGroup {
    /// The group of `address`.
    pub fn of(address: &NodeAddress) -> Self {
        match address.host_port() {
            Some((crate::address::Host::Ip(std::net::IpAddr::V4(ip)), _)) => {
                let [a, b, _, _] = ip.octets();
                Self::V4([a, b])
            }
            Some((crate::address::Host::Ip(std::net::IpAddr::V6(ip)), _)) => {
                let o = ip.octets();
                Self::V6([o[0], o[1], o[2], o[3]])
            }
            Some((crate::address::Host::Dns(name), _)) => Self::Name(name.clone()),
            None => Self::Opaque,
        }
    }
}

impl fmt::Display for NetworkGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4([a, b]) => write!(f, "{a}.{b}.0.0/16"),
            Self::V6([a, b, c, d]) => write!(
                f,
                "{:x}:{:x}::/32",
                u16::from_be_bytes([*a, *b]),
                u16::from_be_bytes([*c, *d])
            ),
            Self::Name(name) => f.write_str(name),
            Self::Opaque => f.write_str("(no host)"),
        }
    }
}

/// Configuration of a [`PeerManager`].
#[derive(Clone, Debug)]
pub struct PeerManagerConfig {
    /// Maximum number of connected peers (default 64), beyond upgrades in progress.
    pub max_connected: usize,
    /// Maximum number of outbound connections plus dials in progress (default 16).
    pub max_outgoing: usize,
    /// Extra connections allowed above `max_connected` while better peers replace worse ones
    /// (default 4).
    pub max_upgrade: usize,
    /// Delay before the first retry of a failed address (default 250 ms).
    pub min_retry: Duration,
    /// Longest delay between retries, before jitter (default 10 minutes).
    pub max_retry: Duration,
    /// Longest delay between retries of a persistent peer, before jitter (default 30 s).
    pub max_retry_persistent: Duration,
    /// Random extra fraction of each retry delay, drawn from `[0, retry_jitter)` (default 0.25;
    /// clamped to `[0, 1]`).
    pub retry_jitter: f64,
    /// Consecutive failures after which a non-persistent address is forgotten (default 16).
    pub max_dial_failures: u32,
    /// How long a ban lasts (default 1 hour).
    pub ban_duration: Duration,
    /// Half-life of the decay of scores toward 0 (default 1 hour).
    pub score_half_life: Duration,
    /// Maximum number of remembered peers (default 1024).
    pub max_peers: usize,
    /// Peers to stay connected to: top score, never given up, never banned.
    pub persistent_peers: Vec<NodeAddress>,
    /// An outbound connection that closes sooner than this after it was admitted is
    /// short-lived: from the second consecutive one on, its address is redialed with the
    /// failure backoff (a peer that keeps hanging up, such as a seed node, is not redialed in a
    /// loop). A connection that lasts longer resets the count. Default 30 s.
    pub min_stable_connection: Duration,
    /// Seed of the RNG that draws backoff jitter.
    pub rng_seed: u64,
    /// Most addresses one peer may give us by gossip (PEX) in one network group (default 16;
    /// see "Address book defences" in the [module documentation](self)).
    pub max_gossip_per_source_group: usize,
    /// Most addresses one peer may give us by gossip in all (default 256).
    pub max_gossip_per_source: usize,
    /// Transport protocols in order of preference when a peer has addresses of several (default
    /// QUIC, then MConn; unlisted protocols come last). See "Addresses and transports" in the
    /// [module documentation](self).
    pub protocol_preference: Vec<Protocol>,
}

impl Default for PeerManagerConfig {
    fn default() -> Self {
        Self {
            max_connected: 64,
            max_outgoing: 16,
            max_upgrade: 4,
            min_retry: Duration::from_millis(250),
            max_retry: Duration::from_secs(600),
            max_retry_persistent: Duration::from_secs(30),
            retry_jitter: 0.25,
            max_dial_failures: 16,
            ban_duration: Duration::from_secs(3600),
            score_half_life: Duration::from_secs(3600),
            max_peers: 1024,
            persistent_peers: Vec::new(),
            min_stable_connection: Duration::from_secs(30),
            rng_seed: 0,
            protocol_preference: vec![Protocol::QUIC, Protocol::MCONN],
            max_gossip_per_source_group: 16,
            max_gossip_per_source: 256,
        }
    }
}

/// One known address of a peer.
#[derive(Debug)]
struct Addr {
    address: NodeAddress,
    failures: u32,
    last_failure: Option<Timestamp>,
    /// Not before this time (backoff); `None`: dialable now.
    retry_at: Option<Timestamp>,
    /// The peer that gossiped it; `None`: configuration or operator.
    source: Option<NodeId>,
    /// A dial of it completed the handshake with the node ID it names.
    verified: bool,
    /// Consecutive short-lived connections on it (see
    /// [`PeerManagerConfig::min_stable_connection`]). Not persisted.
    short_lived: u32,
}

impl Addr {
    fn from_source(address: NodeAddress, source: Option<NodeId>) -> Self {
        Self {
            address,
            failures: 0,
            last_failure: None,
            retry_at: None,
            source,
            verified: false,
            short_lived: 0,
        }
    }

    fn ready_at(&self) -> Timestamp {
        self.retry_at.unwrap_or_default()
    }
}

/// An admitted connection.
#[derive(Debug)]
struct Conn {
    id: ConnectionId,
    direction: Direction,
    /// `Up` was emitted for it.
    ready: bool,
    /// An eviction was scheduled for it.
    evicting: bool,
    /// The address we dialed (outbound only).
    address: Option<NodeAddress>,
    /// Set by [`PeerManager::hang_up`]: the address is not redialed sooner than this after the
    /// connection closes.
    redial_after: Option<Duration>,
    /// When it was admitted.
    since: Timestamp,
}

#[derive(Debug)]
enum Link {
    Idle,
    Dialing(NodeAddress),
    Connected(Conn),
}

#[derive(Debug)]
struct Peer {
    addresses: Vec<Addr>,
    persistent: bool,
    score: f64,
    score_updated_at: Timestamp,
    banned_until: Option<Timestamp>,
    last_connected: Option<Timestamp>,
    /// The protocol of the last successful dial, tried first next time; forgotten when an
    /// address of that protocol fails.
    last_protocol: Option<Protocol>,
    link: Link,
}

impl Peer {
    fn new(now: Timestamp) -> Self {
        Self {
            addresses: Vec::new(),
            persistent: false,
            score: 0.0,
            score_updated_at: now,
            banned_until: None,
            last_connected: None,
            last_protocol: None,
            link: Link::Idle,
        }
    }

    /// The mutable score decayed to `now`.
    fn decayed_score(&self, now: Timestamp, half_life: Duration) -> f64 {
        let elapsed = now.saturating_sub(self.score_updated_at);
        if elapsed.is_zero() {
            self.score
        } else if half_life.is_zero() {
            0.0
        } else {
            self.score * 0.5f64.powf(elapsed.as_secs_f64() / half_life.as_secs_f64())
        }
    }

    fn score_at(&self, now: Timestamp, half_life: Duration) -> f64 {
        if self.persistent { PERSISTENT_SCORE } else { self.decayed_score(now, half_life) }
    }

    /// Adds `delta` to the mutable score (persistent peers keep theirs fixed).
    fn adjust_score(&mut self, delta: f64, now: Timestamp, half_life: Duration) -> bool {
        if self.persistent {
            return false;
        }
        let score = self.decayed_score(now, half_life) + delta;
        self.score = score.clamp(MIN_SCORE, MAX_SCORE);
        self.score_updated_at = now;
        true
    }

    fn ban_until(&self, now: Timestamp) -> Option<Timestamp> {
        self.banned_until.filter(|until| *until > now)
    }

    fn connection(&self) -> Option<&Conn> {
        match &self.link {
            Link::Connected(conn) => Some(conn),
            _ => None,
        }
    }

    /// The addresses that can be dialed now, best first (see "Addresses and transports" in
    /// the module documentation).
    fn ranked_addresses<'a>(&'a self, now: Timestamp, rules: &AddressRules) -> Vec<&'a Addr> {
        let mut ready: Vec<(usize, &Addr)> = (self.addresses.iter().enumerate())
            .filter(|(_, a)| a.ready_at() <= now && rules.dialable(a.address.protocol()))
            .collect();
        ready.sort_by_key(|(i, a)| {
            let protocol = a.address.protocol();
            let remembered = self.last_protocol.as_ref() == Some(protocol);
            (!remembered, a.failures, rules.rank(protocol), *i)
        });
        ready.into_iter().map(|(_, a)| a).collect()
    }

    /// The address to dial now, if any.
    fn best_address(&self, now: Timestamp, rules: &AddressRules) -> Option<&Addr> {
        self.ranked_addresses(now, rules).into_iter().next()
    }

    /// Records a failed dial of `addr`: backoff, or forgets it after too many failures.
    /// Returns whether the peer has no address left.
    fn address_failed(
        &mut self,
        addr: &NodeAddress,
        now: Timestamp,
        config: &PeerManagerConfig,
        rng: &mut SmallRng,
    ) -> bool {
        if self.last_protocol.as_ref() == Some(addr.protocol()) {
            self.last_protocol = None;
        }
        let persistent = self.persistent;
        let Some(pos) = self.addresses.iter().position(|a| a.address == *addr) else {
            return self.addresses.is_empty();
        };
        let Some(entry) = self.addresses.get_mut(pos) else {
            return self.addresses.is_empty();
        };
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = Some(now);
        if !persistent && entry.failures > config.max_dial_failures {
            tracing::debug!(%addr, failures = entry.failures, "forgetting address");
            self.addresses.remove(pos);
        } else {
            let delay = backoff(config, rng, entry.failures, persistent);
            entry.retry_at = Some(now + delay);
        }
        self.addresses.is_empty()
    }

    fn address_mut(&mut self, address: &NodeAddress) -> Option<&mut Addr> {
        self.addresses.iter_mut().find(|a| a.address == *address)
    }

    /// Adds an address; returns whether it is new. When the list is full, the address with the
    /// most failures makes room, if it has failed at all (`force`: even if not).
    fn add_address(&mut self, address: NodeAddress, force: bool) -> bool {
        self.add_address_from(address, None, force)
    }

    /// [`add_address`](Self::add_address) remembering who gossiped it. A verified address is
    /// never evicted to make room.
    fn add_address_from(
        &mut self,
        address: NodeAddress,
        source: Option<NodeId>,
        force: bool,
    ) -> bool {
        if self.addresses.iter().any(|a| a.address == address) {
            return false;
        }
        if self.addresses.len() >= MAX_ADDRESSES_PER_PEER {
            let dialing = match &self.link {
                Link::Dialing(a) => Some(a),
                _ => None,
            };
            let worst = (self.addresses.iter().enumerate())
                .filter(|(_, a)| {
                    Some(&a.address) != dialing && !a.verified && (force || a.failures > 0)
                })
                .max_by_key(|(i, a)| (a.failures, *i))
                .map(|(i, _)| i);
            match worst {
                Some(i) => {
                    self.addresses.remove(i);
                }
                None => return false,
            }
        }
        self.addresses.push(Addr::from_source(address, source));
        true
    }

    /// Whether the peer has anything worth persisting.
    fn worth_storing(&self, now: Timestamp) -> bool {
        !self.addresses.is_empty() || self.persistent || self.ban_until(now).is_some()
    }

    fn record(&self, node_id: NodeId) -> PeerRecord {
        PeerRecord {
            node_id,
            addresses: (self.addresses.iter())
                .map(|a| AddressRecord {
                    address: a.address.to_string(),
                    failures: a.failures,
                    last_failure: a.last_failure,
                    source: a.source,
                    verified: a.verified,
                })
                .collect(),
            persistent: self.persistent,
            score: self.score,
            score_updated_at: self.score_updated_at,
            banned_until: self.banned_until,
            last_connected: self.last_connected,
            last_protocol: self.last_protocol.as_ref().map(|p| p.as_str().to_owned()),
        }
    }
}

/// Which addresses may be dialed, and in which order of protocols.
#[derive(Debug, Default)]
struct AddressRules {
    /// Protocols some transport can dial; `None`: all.
    dialable: Option<BTreeSet<Protocol>>,
    /// [`PeerManagerConfig::protocol_preference`].
    preference: Vec<Protocol>,
}

impl AddressRules {
    fn dialable(&self, protocol: &Protocol) -> bool {
        self.dialable.as_ref().is_none_or(|set| set.contains(protocol))
    }

    fn rank(&self, protocol: &Protocol) -> usize {
        self.preference.iter().position(|p| p == protocol).unwrap_or(self.preference.len())
    }
}

/// The retry delay after `failures` consecutive failures (see the module documentation).
fn backoff(
    config: &PeerManagerConfig,
    rng: &mut SmallRng,
    failures: u32,
    persistent: bool,
) -> Duration {
    let cap = if persistent { config.max_retry_persistent } else { config.max_retry };
    let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
    let delay = config.min_retry.saturating_mul(factor).min(cap);
    let max_jitter = if config.retry_jitter > 0.0 { config.retry_jitter.min(1.0) } else { 0.0 };
    let jitter = if max_jitter > 0.0 { rng.random_range(0.0..max_jitter) } else { 0.0 };
    Duration::try_from_secs_f64(delay.as_secs_f64() * (1.0 + jitter)).unwrap_or(delay)
}

/// Decides whom to dial, accept and evict; keeps scores, backoff and bans. See the
/// [module documentation](self) for the rules.
#[derive(Debug)]
pub struct PeerManager {
    self_id: NodeId,
    config: PeerManagerConfig,
    peers: BTreeMap<NodeId, Peer>,
    updates: VecDeque<PeerUpdate>,
    evictions: VecDeque<Eviction>,
    dirty: BTreeSet<NodeId>,
    rng: SmallRng,
    /// The latest time passed in.
    clock: Timestamp,
    rules: AddressRules,
}

impl PeerManager {
    /// Creates a manager for node `self_id` from the records of a [`PeerStore`].
    ///
    /// Persistent peers from the configuration are added; the configuration decides which peers
    /// are persistent, whatever the records say. Unusable records (own ID, no valid address and
    /// no active ban) are dropped and deleted from the store at the next
    /// [`drain_dirty`](Self::drain_dirty); if there are more than `max_peers`, the lowest-scored
    /// prunable ones are dropped too.
    pub fn new(
        self_id: NodeId,
        config: PeerManagerConfig,
        stored: Vec<PeerRecord>,
        now: Timestamp,
    ) -> Self {
        let rng = SmallRng::seed_from_u64(config.rng_seed);
        let rules = AddressRules { dialable: None, preference: config.protocol_preference.clone() };
        let mut manager = Self {
            self_id,
            config,
            peers: BTreeMap::new(),
            updates: VecDeque::new(),
            evictions: VecDeque::new(),
            dirty: BTreeSet::new(),
            rng,
            clock: now,
            rules,
        };
        for record in stored {
            manager.load(record, now);
        }

        let persistent = std::mem::take(&mut manager.config.persistent_peers);
        for (id, peer) in &mut manager.peers {
            if peer.persistent && !persistent.iter().any(|a| a.node_id() == *id) {
                peer.persistent = false;
                manager.dirty.insert(*id);
            }
        }
        for address in &persistent {
            let id = address.node_id();
            if id == self_id {
                tracing::warn!(%address, "ignoring own address among persistent peers");
                continue;
            }
            let peer = manager.peers.entry(id).or_insert_with(|| Peer::new(now));
            peer.persistent = true;
            peer.banned_until = None;
            peer.add_address(address.clone(), true);
            manager.dirty.insert(id);
        }
        manager.config.persistent_peers = persistent;

        for peer in manager.peers.values_mut() {
            for addr in &mut peer.addresses {
                if addr.failures > 0
                    && let Some(last) = addr.last_failure
                {
                    let delay =
                        backoff(&manager.config, &mut manager.rng, addr.failures, peer.persistent);
                    addr.retry_at = Some(last + delay);
                }
            }
        }
        while manager.peers.len() > manager.config.max_peers {
            let Some((id, _)) = manager.prune_candidate(now) else {
                break;
            };
            manager.forget(id);
        }
        manager
    }

    fn load(&mut self, record: PeerRecord, now: Timestamp) {
        let id = record.node_id;
        if id == self.self_id || self.peers.contains_key(&id) {
            tracing::warn!(peer = %id, "dropping stored peer record: own or duplicate node ID");
            self.dirty.insert(id);
            return;
        }
        let mut peer = Peer::new(now);
        peer.persistent = record.persistent;
        peer.score =
            if record.score.is_finite() { record.score.clamp(MIN_SCORE, MAX_SCORE) } else { 0.0 };
        peer.score_updated_at = record.score_updated_at;
        peer.banned_until = record.banned_until;
        peer.last_connected = record.last_connected;
        peer.last_protocol = record.last_protocol.as_deref().and_then(|p| Protocol::new(p).ok());
        for stored in record.addresses {
            match stored.address.parse::<NodeAddress>() {
                Ok(address)
                    if address.node_id() == id && peer.addresses.len() < MAX_ADDRESSES_PER_PEER =>
                {
                    if peer.add_address_from(address, stored.source, false)
                        && let Some(addr) = peer.addresses.last_mut()
                    {
                        addr.failures = stored.failures;
                        addr.last_failure = stored.last_failure;
                        addr.verified = stored.verified;
                    }
                }
                Ok(_) => {
                    tracing::warn!(peer = %id, address = %stored.address, "dropping stored address: wrong node ID or too many");
                    self.dirty.insert(id);
                }
                Err(error) => {
                    tracing::warn!(peer = %id, address = %stored.address, %error, "dropping unparsable stored address");
                    self.dirty.insert(id);
                }
            }
        }
        if peer.addresses.is_empty() && peer.ban_until(now).is_none() {
            self.dirty.insert(id);
            return;
        }
        self.peers.insert(id, peer);
    }

    fn tick(&mut self, now: Timestamp) {
        self.clock = self.clock.max(now);
    }

    fn half_life(&self) -> Duration {
        self.config.score_half_life
    }

    fn forget(&mut self, id: NodeId) {
        self.peers.remove(&id);
        self.dirty.insert(id);
    }

    /// The prunable peer with the lowest score (then lowest node ID): not persistent, not
    /// connected, not being dialed, not banned.
    fn prune_candidate(&self, now: Timestamp) -> Option<(NodeId, f64)> {
        (self.peers.iter())
            .filter(|(_, p)| {
                !p.persistent && matches!(p.link, Link::Idle) && p.ban_until(now).is_none()
            })
            .map(|(id, p)| (*id, p.score_at(now, self.half_life())))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
    }

    /// The connected non-persistent peer with the lowest score (then lowest node ID) whose
    /// connection is not already being evicted.
    fn lowest_connected(&self, now: Timestamp) -> Option<(NodeId, f64)> {
        (self.peers.iter())
            .filter(|(_, p)| !p.persistent && p.connection().is_some_and(|c| !c.evicting))
            .map(|(id, p)| (*id, p.score_at(now, self.half_life())))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
    }

    /// Whether `peer` may take an upgrade slot.
    fn upgrade_worthy(&self, peer: NodeId, now: Timestamp) -> bool {
        let (persistent, score) = self
            .peers
            .get(&peer)
            .map_or((false, 0.0), |p| (p.persistent, p.score_at(now, self.half_life())));
        persistent || self.lowest_connected(now).is_some_and(|(_, lowest)| score > lowest)
    }

    /// Adds a peer address learned from the configuration or an operator (addresses gossiped by
    /// peers go through [`add_gossiped_address`](Self::add_gossiped_address)).
    ///
    /// Returns `Ok(false)` if the address was already known (or the peer already has
    /// [`MAX_ADDRESSES_PER_PEER`] addresses, none of which has failed).
    pub fn add_address(
        &mut self,
        addr: NodeAddress,
        now: Timestamp,
    ) -> Result<bool, AddAddressError> {
        self.tick(now);
        self.insert_address(addr, None, now)
    }

    /// Records `addr` (from `source`, if gossiped): the own-ID, ban and store-size rules.
    fn insert_address(
        &mut self,
        addr: NodeAddress,
        source: Option<NodeId>,
        now: Timestamp,
    ) -> Result<bool, AddAddressError> {
        let id = addr.node_id();
        if id == self.self_id {
            return Err(AddAddressError::OwnAddress);
        }
        if let Some(peer) = self.peers.get_mut(&id) {
            if let Some(until) = peer.ban_until(now) {
                return Err(AddAddressError::Banned { until });
            }
            let added = peer.add_address_from(addr, source, false);
            if added {
                self.dirty.insert(id);
            }
            return Ok(added);
        }
        if self.peers.len() >= self.config.max_peers {
            match self.prune_candidate(now) {
                Some((victim, score)) if score < 0.0 => self.forget(victim),
                _ => {
                    return Err(AddAddressError::StoreFull { max_peers: self.config.max_peers });
                }
            }
        }
        let mut peer = Peer::new(now);
        peer.addresses.push(Addr::from_source(addr, source));
        self.peers.insert(id, peer);
        self.dirty.insert(id);
        Ok(true)
    }

    /// Adds an address that peer `source` gossiped (PEX). On top of the rules of
    /// [`add_address`](Self::add_address): refused with [`AddAddressError::Verified`] if a
    /// handshake verified another address of the same node ID, and with
    /// [`AddAddressError::SourceQuota`] once `source` gave
    /// [`max_gossip_per_source_group`](PeerManagerConfig::max_gossip_per_source_group) addresses
    /// in the address's [`NetworkGroup`] or
    /// [`max_gossip_per_source`](PeerManagerConfig::max_gossip_per_source) in all.
    pub fn add_gossiped_address(
        &mut self,
        addr: NodeAddress,
        source: NodeId,
        now: Timestamp,
    ) -> Result<bool, AddAddressError> {
        self.tick(now);
        let id = addr.node_id();
        if id == self.self_id {
            return Err(AddAddressError::OwnAddress);
        }
        if let Some(peer) = self.peers.get(&id) {
            if let Some(until) = peer.ban_until(now) {
                return Err(AddAddressError::Banned { until });
            }
            if peer.addresses.iter().any(|a| a.address == addr) {
                return Ok(false);
            }
            if peer.addresses.iter().any(|a| a.verified) {
                return Err(AddAddressError::Verified);
            }
        }
        let group = NetworkGroup::of(&addr);
        let (mut total, mut in_group) = (0, 0);
        for a in self.peers.values().flat_map(|p| &p.addresses) {
            if a.source == Some(source) {
                total += 1;
                if NetworkGroup::of(&a.address) == group {
                    in_group += 1;
                }
            }
        }
        if in_group >= self.config.max_gossip_per_source_group {
            return Err(AddAddressError::SourceQuota {
                source_id: source,
                group: Some(group),
                count: in_group,
            });
        }
        if total >= self.config.max_gossip_per_source {
            return Err(AddAddressError::SourceQuota {
                source_id: source,
                group: None,
                count: total,
            });
        }
        self.insert_address(addr, Some(source), now)
    }

    /// A dial of `addr` reached a node but the handshake failed (say, another node ID answered):
    /// if a peer gossiped the address, that source loses [`SOURCE_FAILURE_PENALTY`]. Addresses
    /// where nothing answers cost their source nothing: address books of honest nodes are full
    /// of stale entries. Report the dial's outcome as usual besides.
    pub fn handshake_failed(&mut self, addr: &NodeAddress, now: Timestamp) {
        self.tick(now);
        self.blame_source(addr, now);
    }

    /// Makes the source of a gossiped address lose [`SOURCE_FAILURE_PENALTY`].
    fn blame_source(&mut self, addr: &NodeAddress, now: Timestamp) {
        let half_life = self.half_life();
        let source = (self.peers.get(&addr.node_id()))
            .and_then(|p| p.addresses.iter().find(|a| a.address == *addr))
            .and_then(|a| a.source);
        if let Some(source) = source
            && source != addr.node_id()
            && let Some(src) = self.peers.get_mut(&source)
            && src.adjust_score(-SOURCE_FAILURE_PENALTY, now, half_life)
        {
            self.dirty.insert(source);
        }
    }

    /// Picks the next address to dial, if any candidate is ready and capacity allows, and marks
    /// its peer as being dialed. The router reports the outcome with [`dialed`](Self::dialed) or
    /// [`dial_failed`](Self::dial_failed).
    pub fn dial_next(&mut self, now: Timestamp) -> Option<NodeAddress> {
        self.tick(now);
        let connected = self.num_connected();
        let dialing = self.num_dialing();
        let outbound = self.num_outbound() + dialing;
        let total = connected + dialing;
        if total >= self.config.max_connected + self.config.max_upgrade {
            return None;
        }
        let lowest = self.lowest_connected(now).map(|(_, score)| score);

        let mut candidates: Vec<(f64, u32, NodeId, bool)> = (self.peers.iter())
            .filter(|(_, p)| matches!(p.link, Link::Idle) && p.ban_until(now).is_none())
            .filter_map(|(id, p)| {
                let addr = p.best_address(now, &self.rules)?;
                Some((p.score_at(now, self.half_life()), addr.failures, *id, p.persistent))
            })
            .collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let (_, _, id, _) = candidates.into_iter().find(|&(score, _, _, persistent)| {
            let outbound_ok = persistent || outbound < self.config.max_outgoing;
            let slot_ok = total < self.config.max_connected
                || persistent
                || lowest.is_some_and(|l| score > l);
            outbound_ok && slot_ok
        })?;

        let peer = self.peers.get_mut(&id)?;
        let address = peer.best_address(now, &self.rules)?.address.clone();
        peer.link = Link::Dialing(address.clone());
        Some(address)
    }

    /// Restricts dialing to addresses of `protocols` (those the router has a transport for);
    /// addresses of other protocols are kept and shared, but never dialed. By default every
    /// protocol is dialable.
    pub fn set_dialable_protocols(&mut self, protocols: impl IntoIterator<Item = Protocol>) {
        self.rules.dialable = Some(protocols.into_iter().collect());
    }

    /// While `peer` is being dialed: its other addresses that may be dialed now, best first,
    /// for the router to try if the address from [`dial_next`](Self::dial_next) fails or is
    /// slow. The outcome of each is reported with [`attempt_failed`](Self::attempt_failed),
    /// and of the dial as a whole with [`dialed`](Self::dialed) or
    /// [`dial_failed`](Self::dial_failed).
    pub fn fallback_addresses(&self, peer: NodeId, now: Timestamp) -> Vec<NodeAddress> {
        let Some(known) = self.peers.get(&peer) else {
            return Vec::new();
        };
        let Link::Dialing(primary) = &known.link else {
            return Vec::new();
        };
        (known.ranked_addresses(now, &self.rules).into_iter())
            .filter(|a| a.address != *primary)
            .map(|a| a.address.clone())
            .collect()
    }

    /// One address tried during a dial of its peer failed while the dial goes on with another:
    /// the address backs off (or is forgotten) as after [`dial_failed`](Self::dial_failed),
    /// but the peer's score is left alone. Ignored unless the peer is being dialed.
    pub fn attempt_failed(&mut self, addr: &NodeAddress, now: Timestamp) {
        self.tick(now);
        let id = addr.node_id();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if !matches!(peer.link, Link::Dialing(_)) {
            return;
        }
        peer.address_failed(addr, now, &self.config, &mut self.rng);
        self.dirty.insert(id);
    }

    /// The earliest time a peer that cannot be dialed now (retry backoff or ban) becomes
    /// dialable, for the router's timer; `None` if there is none. Times not after the latest
    /// timestamp passed to the manager are left out: those peers are only waiting for capacity,
    /// which connection events free.
    pub fn next_dial_at(&self) -> Option<Timestamp> {
        (self.peers.values())
            .filter(|p| matches!(p.link, Link::Idle))
            .filter_map(|p| {
                let dialable =
                    p.addresses.iter().filter(|a| self.rules.dialable(a.address.protocol()));
                let ready = dialable.map(Addr::ready_at).min()?;
                let at = p.banned_until.map_or(ready, |until| until.max(ready));
                (at > self.clock).then_some(at)
            })
            .min()
    }

    /// A dial returned by [`dial_next`](Self::dial_next) failed, `addr` (the address from
    /// `dial_next` or one of the [`fallback_addresses`](Self::fallback_addresses)) last:
    /// schedules its retry, or forgets it after too many failures, and costs the peer
    /// [`DIAL_FAILURE_PENALTY`]. Ignored unless we were dialing `addr`'s peer.
    pub fn dial_failed(&mut self, addr: &NodeAddress, now: Timestamp) {
        self.tick(now);
        let id = addr.node_id();
        let half_life = self.half_life();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let known = peer.addresses.iter().any(|a| a.address == *addr);
        if !matches!(&peer.link, Link::Dialing(dialing) if dialing == addr || known) {
            tracing::debug!(%addr, "ignoring failure of a dial that is not in progress");
            return;
        }
        peer.link = Link::Idle;
        peer.adjust_score(-DIAL_FAILURE_PENALTY, now, half_life);
        self.dirty.insert(id);
        let empty = peer.address_failed(addr, now, &self.config, &mut self.rng);
        if empty && peer.ban_until(now).is_none() && !peer.persistent {
            self.forget(id);
        }
    }

    /// Our dial of `addr` completed its handshake on connection `conn`, and the peer proved to be
    /// `addr.node_id()`. Whatever the outcome, the dial is over.
    pub fn dialed(
        &mut self,
        addr: &NodeAddress,
        conn: ConnectionId,
        now: Timestamp,
    ) -> Result<Admission, Rejection> {
        self.tick(now);
        let id = addr.node_id();
        if id == self.self_id {
            return Err(Rejection::Self_);
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return Err(Rejection::NotDialing);
        };
        let was_dialing = matches!(peer.link, Link::Dialing(_));
        if was_dialing {
            peer.link = Link::Idle;
        }
        if let Some(until) = peer.ban_until(now) {
            return Err(Rejection::Banned { until });
        }
        let admission = match &peer.link {
            Link::Connected(_) => {
                self.resolve_duplicate(id, conn, Direction::Outbound, Some(addr), now)?
            }
            Link::Idle if was_dialing => {
                self.check_capacity(id, now)?;
                self.admit(id, conn, Direction::Outbound, Some(addr), now);
                Admission::Accepted
            }
            _ => return Err(Rejection::NotDialing),
        };
        // A successful dial resets the address and makes its protocol the one to try first.
        if let Some(peer) = self.peers.get_mut(&id) {
            if peer.last_protocol.as_ref() != Some(addr.protocol()) {
                peer.last_protocol = Some(addr.protocol().clone());
                self.dirty.insert(id);
            }
            if let Some(entry) = peer.address_mut(addr)
                && (entry.failures > 0 || entry.retry_at.is_some() || !entry.verified)
            {
                *entry = Addr {
                    verified: true,
                    short_lived: entry.short_lived,
                    ..Addr::from_source(addr.clone(), entry.source)
                };
                self.dirty.insert(id);
            }
        }
        Ok(admission)
    }

    /// The inbound connection `conn` completed its handshake; the peer proved to be `peer`.
    pub fn accepted(
        &mut self,
        peer: NodeId,
        conn: ConnectionId,
        now: Timestamp,
    ) -> Result<Admission, Rejection> {
        self.tick(now);
        if peer == self.self_id {
            return Err(Rejection::Self_);
        }
        if let Some(known) = self.peers.get(&peer) {
            if let Some(until) = known.ban_until(now) {
                return Err(Rejection::Banned { until });
            }
            match &known.link {
                Link::Connected(_) => {
                    return self.resolve_duplicate(peer, conn, Direction::Inbound, None, now);
                }
                // Simultaneous dials: the connection dialed by the lower node ID wins.
                Link::Dialing(_) if peer > self.self_id => return Err(Rejection::TieBreakLost),
                Link::Dialing(_) | Link::Idle => {}
            }
        }
        self.check_capacity(peer, now)?;
        self.admit(peer, conn, Direction::Inbound, None, now);
        Ok(Admission::Accepted)
    }

    /// A new connection to an already connected peer: the tie-break rules.
    fn resolve_duplicate(
        &mut self,
        id: NodeId,
        conn: ConnectionId,
        direction: Direction,
        address: Option<&NodeAddress>,
        now: Timestamp,
    ) -> Result<Admission, Rejection> {
        let self_id = self.self_id;
        let Some(peer) = self.peers.get_mut(&id) else {
            return Err(Rejection::NotDialing);
        };
        let Link::Connected(existing) = &peer.link else {
            return Err(Rejection::NotDialing);
        };
        if existing.id == conn {
            return Err(Rejection::AlreadyConnected);
        }
        let keep_new = existing.direction == direction || {
            // Keep the connection dialed by the node with the lower ID.
            let keep_outbound = self_id < id;
            (direction == Direction::Outbound) == keep_outbound
        };
        if !keep_new {
            return Err(Rejection::TieBreakLost);
        }
        let old = existing.id;
        if existing.ready {
            self.updates.push_back(PeerUpdate {
                node_id: id,
                status: PeerStatus::Down,
                direction: existing.direction,
                connection: old,
            });
        }
        self.admit(id, conn, direction, address, now);
        Ok(Admission::Replaces(old))
    }

    /// Whether a new connection of `peer` fits (see the module documentation).
    fn check_capacity(&self, peer: NodeId, now: Timestamp) -> Result<(), Rejection> {
        let connected = self.num_connected();
        if connected < self.config.max_connected {
            return Ok(());
        }
        if connected < self.config.max_connected + self.config.max_upgrade
            && self.upgrade_worthy(peer, now)
        {
            return Ok(());
        }
        Err(Rejection::Full)
    }

    /// Records the connection, then schedules an upgrade eviction if too many peers are connected.
    fn admit(
        &mut self,
        id: NodeId,
        conn: ConnectionId,
        direction: Direction,
        address: Option<&NodeAddress>,
        now: Timestamp,
    ) {
        let peer = self.peers.entry(id).or_insert_with(|| Peer::new(now));
        peer.link = Link::Connected(Conn {
            id: conn,
            direction,
            ready: false,
            evicting: false,
            address: address.cloned(),
            redial_after: None,
            since: now,
        });
        let active =
            (self.peers.values()).filter(|p| p.connection().is_some_and(|c| !c.evicting)).count();
        if active > self.config.max_connected
            && let Some((victim, _)) = self.lowest_connected(now)
        {
            self.schedule_eviction(victim, EvictReason::Upgrade);
        }
    }

    fn schedule_eviction(&mut self, id: NodeId, reason: EvictReason) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Link::Connected(conn) = &mut peer.link else {
            return;
        };
        if !conn.evicting {
            conn.evicting = true;
            self.evictions.push_back(Eviction { node_id: id, connection: conn.id, reason });
        }
    }

    /// The router started the tasks of `peer`'s connection `conn`: emits [`PeerStatus::Up`].
    /// Ignored unless `conn` is the peer's current, not yet ready connection.
    pub fn ready(&mut self, peer: NodeId, conn: ConnectionId, now: Timestamp) {
        self.tick(now);
        let half_life = self.half_life();
        let Some(known) = self.peers.get_mut(&peer) else {
            return;
        };
        let Link::Connected(current) = &mut known.link else {
            return;
        };
        if current.id != conn || current.ready {
            return;
        }
        current.ready = true;
        let direction = current.direction;
        known.last_connected = Some(now);
        known.adjust_score(CONNECTED_REWARD, now, half_life);
        self.dirty.insert(peer);
        self.updates.push_back(PeerUpdate {
            node_id: peer,
            status: PeerStatus::Up,
            direction,
            connection: conn,
        });
    }

    /// `peer`'s connection `conn` closed: emits [`PeerStatus::Down`] if it was ready. Ignored
    /// unless `conn` is the peer's current connection (a replaced one was already handled).
    pub fn disconnected(&mut self, peer: NodeId, conn: ConnectionId, now: Timestamp) {
        self.tick(now);
        let half_life = self.half_life();
        let Some(known) = self.peers.get_mut(&peer) else {
            return;
        };
        if known.connection().is_none_or(|c| c.id != conn) {
            return;
        }
        let Link::Connected(old) = std::mem::replace(&mut known.link, Link::Idle) else {
            return;
        };
        if old.ready {
            self.updates.push_back(PeerUpdate {
                node_id: peer,
                status: PeerStatus::Down,
                direction: old.direction,
                connection: conn,
            });
        }
        let persistent = known.persistent;
        if let Some(entry) = old.address.as_ref().and_then(|a| known.address_mut(a)) {
            let mut wait = old.redial_after.unwrap_or_default().max(self.config.min_retry);
            if now.saturating_sub(old.since) < self.config.min_stable_connection {
                entry.short_lived = entry.short_lived.saturating_add(1);
                if entry.short_lived >= 2 {
                    let hold =
                        backoff(&self.config, &mut self.rng, entry.short_lived - 1, persistent);
                    wait = wait.max(hold);
                }
            } else {
                entry.short_lived = 0;
            }
            entry.retry_at = Some(entry.ready_at().max(now + wait));
        }
        // An address-less (inbound-only) peer is remembered only while it is banned or
        // penalised, so a misbehaving peer cannot reconnect with a clean score.
        let remember = known.ban_until(now).is_some() || known.score_at(now, half_life) < 0.0;
        if known.addresses.is_empty()
            && !known.persistent
            && (!remember || self.peers.len() > self.config.max_peers)
        {
            self.forget(peer);
        }
    }

    /// The next connection the router must close, each returned once.
    pub fn evict_next(&mut self) -> Option<Eviction> {
        while let Some(eviction) = self.evictions.pop_front() {
            let current = self.peers.get(&eviction.node_id).and_then(Peer::connection);
            if current.is_some_and(|c| c.id == eviction.connection) {
                return Some(eviction);
            }
        }
        None
    }

    /// Closes `peer`'s connection without blaming it ([`EvictReason::HungUp`]; its score is
    /// unchanged), and redials the address it was dialed on no sooner than `redial_after` after
    /// the close. Ignored unless the peer is connected.
    pub fn hang_up(&mut self, peer: NodeId, redial_after: Duration, now: Timestamp) {
        self.tick(now);
        if let Some(Link::Connected(conn)) = self.peers.get_mut(&peer).map(|p| &mut p.link) {
            conn.redial_after = Some(redial_after);
        }
        self.schedule_eviction(peer, EvictReason::HungUp);
    }

    /// Reports misbehaviour of `peer` (see [`Severity`]). Ignored for unknown peers.
    pub fn report(&mut self, peer: NodeId, severity: Severity, now: Timestamp) {
        self.tick(now);
        let half_life = self.half_life();
        let ban_duration = self.config.ban_duration;
        let Some(known) = self.peers.get_mut(&peer) else {
            tracing::debug!(%peer, ?severity, "ignoring report of an unknown peer");
            return;
        };
        let penalty = match severity {
            Severity::Minor => MINOR_PENALTY,
            Severity::Disconnect => DISCONNECT_PENALTY,
            Severity::Ban => BAN_PENALTY,
        };
        known.adjust_score(-penalty, now, half_life);
        let eviction = match severity {
            Severity::Minor => None,
            Severity::Ban if !known.persistent => {
                let until = now + ban_duration;
                known.banned_until = Some(known.banned_until.map_or(until, |b| b.max(until)));
                Some(EvictReason::Banned)
            }
            Severity::Disconnect | Severity::Ban => Some(EvictReason::Misbehaved),
        };
        self.dirty.insert(peer);
        if let Some(reason) = eviction {
            self.schedule_eviction(peer, reason);
        }
    }

    /// Reports useful behaviour of `peer`: raises its score by [`GOOD_REWARD`] (up to
    /// [`MAX_SCORE`]). Ignored for unknown peers.
    pub fn report_good(&mut self, peer: NodeId, now: Timestamp) {
        self.tick(now);
        let half_life = self.half_life();
        if let Some(known) = self.peers.get_mut(&peer)
            && known.adjust_score(GOOD_REWARD, now, half_life)
        {
            self.dirty.insert(peer);
        }
    }

    /// The effective score of `peer` at `now`, if it is known.
    pub fn score(&self, peer: NodeId, now: Timestamp) -> Option<f64> {
        self.peers.get(&peer).map(|p| p.score_at(now, self.half_life()))
    }

    /// Whether `peer` is banned at `now`.
    pub fn is_banned(&self, peer: NodeId, now: Timestamp) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.ban_until(now).is_some())
    }

    /// Whether `peer` is configured as persistent.
    pub fn is_persistent(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.persistent)
    }

    /// Whether we are dialing `peer`.
    pub fn is_dialing(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_some_and(|p| matches!(p.link, Link::Dialing(_)))
    }

    /// `peer`'s admitted connection (ready or not) and its direction.
    pub fn connection(&self, peer: NodeId) -> Option<(ConnectionId, Direction)> {
        self.peers.get(&peer)?.connection().map(|c| (c.id, c.direction))
    }

    /// The peers with an admitted connection (ready or not), by node ID.
    pub fn connected_peers(&self) -> impl Iterator<Item = (NodeId, Direction)> + '_ {
        (self.peers.iter()).filter_map(|(id, p)| p.connection().map(|c| (*id, c.direction)))
    }

    /// The known addresses of `peer`.
    pub fn addresses(&self, peer: NodeId) -> Vec<NodeAddress> {
        self.peers
            .get(&peer)
            .map_or_else(Vec::new, |p| p.addresses.iter().map(|a| a.address.clone()).collect())
    }

    /// Up to `limit` addresses to share with other nodes (e.g. by PEX): one per known peer (its
    /// address with the fewest consecutive dial failures), best-scored peers first (then lowest
    /// node ID), leaving out banned peers and `exclude` (typically the peer that asked).
    pub fn known_addresses(
        &self,
        now: Timestamp,
        exclude: NodeId,
        limit: usize,
    ) -> Vec<NodeAddress> {
        self.shareable_addresses(now, exclude, limit, 1, |_| true)
    }

    /// Like [`known_addresses`](Self::known_addresses), but only addresses for which `keep` is
    /// true, and up to `per_peer` of each peer's (fewest consecutive dial failures first, e.g.
    /// its QUIC and its MConn address). At most `limit` addresses in all.
    pub fn shareable_addresses(
        &self,
        now: Timestamp,
        exclude: NodeId,
        limit: usize,
        per_peer: usize,
        keep: impl Fn(&NodeAddress) -> bool,
    ) -> Vec<NodeAddress> {
        let half_life = self.half_life();
        let mut found: Vec<(f64, NodeId, Vec<&NodeAddress>)> = (self.peers.iter())
            .filter(|(id, p)| **id != exclude && p.ban_until(now).is_none())
            .filter_map(|(id, p)| {
                let mut mine: Vec<&Addr> =
                    p.addresses.iter().filter(|a| keep(&a.address)).collect();
                mine.sort_by_key(|a| a.failures);
                let mine: Vec<&NodeAddress> =
                    mine.into_iter().take(per_peer).map(|a| &a.address).collect();
                (!mine.is_empty()).then(|| (p.score_at(now, half_life), *id, mine))
            })
            .collect();
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        found.into_iter().flat_map(|(_, _, a)| a).take(limit).cloned().collect()
    }

    /// Number of peers with an admitted connection.
    pub fn num_connected(&self) -> usize {
        self.peers.values().filter(|p| p.connection().is_some()).count()
    }

    /// Number of outbound connections.
    pub fn num_outbound(&self) -> usize {
        (self.peers.values())
            .filter(|p| p.connection().is_some_and(|c| c.direction == Direction::Outbound))
            .count()
    }

    /// Number of dials in progress.
    pub fn num_dialing(&self) -> usize {
        self.peers.values().filter(|p| matches!(p.link, Link::Dialing(_))).count()
    }

    /// Number of known peers.
    pub fn num_known(&self) -> usize {
        self.peers.len()
    }

    /// Takes the pending peer updates, oldest first.
    pub fn drain_updates(&mut self) -> vec_deque::Drain<'_, PeerUpdate> {
        self.updates.drain(..)
    }

    /// Takes the store operations for the peers changed since the last call, one per peer.
    pub fn drain_dirty(&mut self) -> Vec<StoreOp> {
        let dirty = std::mem::take(&mut self.dirty);
        (dirty.into_iter())
            .map(|id| match self.peers.get(&id) {
                Some(peer) if peer.worth_storing(self.clock) => StoreOp::Put(peer.record(id)),
                _ => StoreOp::Delete(id),
            })
            .collect()
    }
}
