//! Peer exchange (PEX) on channel 0x00, in the dialect of Tendermint v0.34 and CometBFT v0.38.
//!
//! * [`PexMessage`] is the [`Wrapper`] for `tendermint.p2p.Message` (`PexRequest` = oneof field 1,
//!   `PexAddrs` = field 2). The v0.35 `*V2` messages (fields 3 and 4) are never sent: v0.34 and
//!   v0.38 nodes disconnect a peer that sends them.
//! * [`PexState`] is a sans-IO state machine (no clock, no I/O, seeded randomness) that decides
//!   when to ask whom and how to treat what arrives; it returns [`PexAction`]s.
//! * [`run_pex_reactor`] drives a [`PexState`] on a [`Router`]: it answers requests with
//!   addresses from the [`PeerManager`](crate::PeerManager) and adds the addresses it learns.
//!
//! # Rules
//!
//! The Go reactor (`p2p/pex/pex_reactor.go`) disconnects **and bans for 24 h** a peer that sends
//! a second `PexRequest` less than 10 s after the previous accepted one (the first two on a
//! connection are free), or a `PexAddrs` it did not ask for. It also bans for an `ip` it cannot
//! parse. The rules below keep us clear of all of that:
//!
//! * **Asking.** An *outbound* peer is asked once right after it comes up (as Go does), and on
//!   every tick ([`PexConfig::request_interval`]) one connected peer is asked: the one asked least
//!   recently (never-asked peers first), drawn at random among ties.
//!   Both only while we know fewer than [`PexConfig::want_addresses_below`] peers. A peer has at
//!   most one request outstanding: it is not asked again until it answered (or reconnected), and
//!   a tick only picks a peer last asked at least [`PexConfig::min_request_interval_per_peer`]
//!   ago (never less than [`MIN_REQUEST_INTERVAL`], Go's 10 s plus a margin for jitter).
//! * **Answering.** `PexAddrs` is only ever sent in answer to a request, with at most
//!   [`PexConfig::max_addresses_sent`] (≤ [`MAX_ADDRESSES`]) addresses. A peer's requests are
//!   answered at most once per [`PexConfig::min_answer_interval`] (10 s): a request that comes
//!   sooner is answered when that interval has passed (Go itself sends its first periodic
//!   request at a random time after its on-connect request, so this is normal), and any further
//!   request while one waits is ignored and penalised [`Severity::Minor`]. Request floods never
//!   make us answer faster and never disconnect.
//! * **Receiving.** `PexAddrs` without an outstanding request is ignored and penalised
//!   [`Severity::Disconnect`] ("unsolicited PEX addresses"). Otherwise the first
//!   [`PexConfig::max_addresses_accepted`] entries are taken, the rest dropped silently; entries
//!   with our own node ID or an address nobody can dial (unspecified, broadcast, multicast) are
//!   dropped; malformed entries (bad ID, IP or port) are skipped and cost the sender one
//!   [`Severity::Minor`] penalty per message. A reply that was in flight when its peer
//!   reconnected is accepted within [`LATE_REPLY_GRACE`].
//! * **Encoding.** IPs are written as Go's `net.IP.String()` does: dotted IPv4, RFC 5952 IPv6
//!   without brackets, IPv4-mapped IPv6 as plain IPv4. Only `mconn` addresses with a literal IP
//!   are shared (Go cannot use DNS names or other transports).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::p2p::pex::v1 as url_proto;
use p2p_proto::tendermint::p2p::{Message, NetAddress, PexAddrs, PexRequest, message::Sum};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, warn};

use crate::address::{EndpointAddr, Host, NodeAddress, Protocol};
use crate::node_info::NodeInfo;
use crate::peer_manager::{Direction, PeerStatus, Severity, Timestamp};
use crate::router::{
    Channel, ChannelDescriptor, Outbound, OverflowPolicy, PeerError, PeerUpdates, PeerUpdatesError,
    Router, UnwrapError, Wrapper,
};
use crate::types::{ChannelId, NodeId};

/// The PEX channel.
pub const PEX_CHANNEL: ChannelId = ChannelId(0x00);

/// Largest PEX message Go accepts (its channel's `RecvMessageCapacity`, 256 × 250 bytes).
pub const MAX_PEX_MESSAGE_SIZE: usize = 64_000;

/// Most addresses Go puts in one `PexAddrs` (`maxGetSelection`); we never send more.
pub const MAX_ADDRESSES: usize = 250;

/// Least time between two of our requests to one peer: Go's 10 s limit plus 1 s for jitter.
pub const MIN_REQUEST_INTERVAL: Duration = Duration::from_secs(11);

/// How long after a peer went down (or reconnected) a reply to a request sent on its previous
/// connection is still accepted.
pub const LATE_REPLY_GRACE: Duration = Duration::from_secs(30);

/// The URL PEX channel (`p2p.pex.v1`): full node-address URLs, any transport. Only used with
/// peers whose NodeInfo lists it, so Go nodes never receive a message on it.
pub const URL_PEX_CHANNEL: ChannelId = ChannelId(0x7d);

/// Longest URL accepted in a URL PEX answer; longer entries count as malformed.
pub const MAX_URL_LEN: usize = 512;

/// Largest URL PEX message: [`MAX_ADDRESSES`] URLs of [`MAX_URL_LEN`] bytes plus framing.
pub const MAX_URL_PEX_MESSAGE_SIZE: usize = MAX_ADDRESSES * (MAX_URL_LEN + 3) + 16;

/// Shortest tick period accepted by [`PexState`] (a smaller `request_interval` is raised to it).
const MIN_TICK: Duration = Duration::from_secs(1);

/// The PEX channel's descriptor, with Go's numbers: priority 1, send queue 10, messages up to
/// [`MAX_PEX_MESSAGE_SIZE`]; a full send queue drops the new message.
pub fn pex_channel_descriptor() -> ChannelDescriptor {
    ChannelDescriptor::new(PEX_CHANNEL)
        .with_priority(1)
        .with_queue_capacity(10, 256)
        .with_max_message_size(MAX_PEX_MESSAGE_SIZE)
        .with_overflow(OverflowPolicy::DropNewest)
}

/// The URL PEX channel's descriptor: as [`pex_channel_descriptor`], messages up to
/// [`MAX_URL_PEX_MESSAGE_SIZE`].
pub fn url_pex_channel_descriptor() -> ChannelDescriptor {
    ChannelDescriptor::new(URL_PEX_CHANNEL)
        .with_priority(1)
        .with_queue_capacity(10, 256)
        .with_max_message_size(MAX_URL_PEX_MESSAGE_SIZE)
        .with_overflow(OverflowPolicy::DropNewest)
}

/// Whether anyone could dial `address`: an IP host must not be unspecified, broadcast or
/// multicast, and the port must not be 0. DNS names and opaque addresses (`memory:`) pass.
pub fn is_dialable(address: &NodeAddress) -> bool {
    match address.host_port() {
        Some((Host::Ip(ip), port)) => ip_is_dialable(*ip) && port != 0,
        Some((Host::Dns(_), port)) => port != 0,
        None => true,
    }
}

fn ip_is_dialable(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// Whether `address` may be shared with a peer whose IP is `peer_ip` (`None`: the peer's
/// connection has no IP, e.g. the memory transport).
///
/// Loopback addresses go only to loopback peers, and private-range addresses (RFC 1918, IPv4
/// link-local, IPv6 unique-local and link-local) only to peers in the same range: anybody else
/// would dial a different machine. DNS names and opaque addresses are always shared.
pub fn is_shareable_with(address: &NodeAddress, peer_ip: Option<IpAddr>) -> bool {
    let Some((Host::Ip(ip), _)) = address.host_port() else { return true };
    let ip = ip.to_canonical();
    match ip_scope(ip) {
        IpScope::Public => true,
        scope => peer_ip.is_some_and(|p| ip_scope(p.to_canonical()) == scope),
    }
}

/// Which network an IP belongs to, for [`is_shareable_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpScope {
    Loopback,
    /// 10.0.0.0/8
    Private10,
    /// 172.16.0.0/12
    Private172,
    /// 192.168.0.0/16
    Private192,
    /// 169.254.0.0/16, fe80::/10
    LinkLocal,
    /// fc00::/7
    UniqueLocal,
    Public,
}

fn ip_scope(ip: IpAddr) -> IpScope {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                IpScope::Loopback
            } else if a == 10 {
                IpScope::Private10
            } else if a == 172 && (16..32).contains(&b) {
                IpScope::Private172
            } else if a == 192 && b == 168 {
                IpScope::Private192
            } else if v4.is_link_local() {
                IpScope::LinkLocal
            } else {
                IpScope::Public
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments().first().copied().unwrap_or(0);
            if v6.is_loopback() {
                IpScope::Loopback
            } else if first & 0xfe00 == 0xfc00 {
                IpScope::UniqueLocal
            } else if first & 0xffc0 == 0xfe80 {
                IpScope::LinkLocal
            } else {
                IpScope::Public
            }
        }
    }
}

/// One gossiped address: node ID, IP and port (`tendermint.p2p.NetAddress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PexAddress {
    /// The node the address claims to reach.
    pub node_id: NodeId,
    /// Its IP (IPv4-mapped IPv6 addresses are kept as IPv4).
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
}

impl PexAddress {
    /// An address; an IPv4-mapped IPv6 IP is turned into plain IPv4, as Go does.
    pub fn new(node_id: NodeId, ip: IpAddr, port: u16) -> Self {
        Self { node_id, ip: ip.to_canonical(), port }
    }

    /// The PEX form of an `mconn` address with a literal IP; `None` for any other address
    /// (DNS names, other transports, opaque addresses), which Go could not use.
    pub fn from_node_address(address: &NodeAddress) -> Option<Self> {
        if *address.protocol() != Protocol::MCONN {
            return None;
        }
        match address.host_port()? {
            (Host::Ip(ip), port) => Some(Self::new(address.node_id(), *ip, port)),
            _ => None,
        }
    }

    /// `mconn://<id>@<ip>:<port>`.
    pub fn to_node_address(&self) -> NodeAddress {
        NodeAddress::new_host(Protocol::MCONN, self.node_id, Host::Ip(self.ip), self.port)
    }

    /// Whether anyone could dial it: not unspecified, broadcast or multicast, port not 0.
    pub fn is_dialable(&self) -> bool {
        ip_is_dialable(self.ip) && self.port != 0
    }

    fn to_proto(self) -> NetAddress {
        NetAddress {
            id: self.node_id.to_string(),
            // `Display` of std's IP types matches Go's `net.IP.String()` once mapped addresses
            // are canonical: dotted IPv4, RFC 5952 IPv6 without brackets.
            ip: self.ip.to_canonical().to_string(),
            port: u32::from(self.port),
        }
    }

    /// Parses one entry; `None` if its ID, IP or port is malformed (port 0 included).
    fn from_proto(proto: &NetAddress) -> Option<Self> {
        let node_id = proto.id.parse().ok()?;
        let ip: IpAddr = proto.ip.parse().ok()?;
        let port = u16::try_from(proto.port).ok().filter(|p| *p != 0)?;
        Some(Self::new(node_id, ip, port))
    }
}

/// A message of the PEX protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PexMessage {
    /// Asks the peer for addresses (`PexRequest`).
    Request,
    /// Addresses, in answer to a request (`PexAddrs`).
    Addrs {
        /// The well-formed entries, in the order received.
        addresses: Vec<PexAddress>,
        /// How many received entries were malformed (bad ID, IP or port) and left out. Ignored
        /// when sending.
        invalid: usize,
    },
}

impl PexMessage {
    /// An `Addrs` message to send.
    pub fn addrs(addresses: Vec<PexAddress>) -> Self {
        Self::Addrs { addresses, invalid: 0 }
    }
}

impl Wrapper for PexMessage {
    type Proto = Message;

    fn wrap(self) -> Message {
        let sum = match self {
            Self::Request => Sum::PexRequest(PexRequest {}),
            Self::Addrs { addresses, .. } => Sum::PexAddrs(PexAddrs {
                addrs: addresses.into_iter().map(PexAddress::to_proto).collect(),
            }),
        };
        Message { sum: Some(sum) }
    }

    /// Rejects only a message without a oneof (which includes the v0.35 `*V2` messages, unknown
    /// here). Malformed address entries are skipped and counted in
    /// [`PexMessage::Addrs::invalid`], not fatal.
    fn unwrap(proto: Message) -> Result<Self, UnwrapError> {
        match proto.sum {
            Some(Sum::PexRequest(PexRequest {})) => Ok(Self::Request),
            Some(Sum::PexAddrs(PexAddrs { addrs })) => {
                let addresses: Vec<PexAddress> =
                    addrs.iter().filter_map(PexAddress::from_proto).collect();
                let invalid = addrs.len() - addresses.len();
                Ok(Self::Addrs { addresses, invalid })
            }
            None => Err(UnwrapError("PEX message without a request or addresses".into())),
        }
    }
}

/// A message of URL PEX (`p2p.pex.v1`, on [`URL_PEX_CHANNEL`]), spoken between nodes that both
/// list that channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlPexMessage {
    /// Asks the peer for addresses.
    Request,
    /// Addresses, in answer to a request.
    Addrs {
        /// The well-formed entries, in the order received.
        addresses: Vec<NodeAddress>,
        /// How many received entries were malformed (not a node-address URL, or longer than
        /// [`MAX_URL_LEN`]) and left out. Ignored when sending.
        invalid: usize,
        /// The requester's IP and port as the answering node saw them (`None` if not given or
        /// malformed).
        observed: Option<SocketAddr>,
    },
}

impl UrlPexMessage {
    /// An `Addrs` message to send.
    pub fn addrs(addresses: Vec<NodeAddress>) -> Self {
        Self::Addrs { addresses, invalid: 0, observed: None }
    }
}

impl Wrapper for UrlPexMessage {
    type Proto = url_proto::PexMessage;

    fn wrap(self) -> url_proto::PexMessage {
        use url_proto::pex_message::Sum as UrlSum;
        let sum = match self {
            Self::Request => UrlSum::Request(url_proto::PexRequest {}),
            Self::Addrs { addresses, observed, .. } => UrlSum::Addrs(url_proto::PexAddrs {
                urls: addresses.iter().map(ToString::to_string).collect(),
                observed: observed.map(|o| o.to_string()).unwrap_or_default(),
            }),
        };
        url_proto::PexMessage { sum: Some(sum) }
    }

    /// Rejects only a message without a oneof. Malformed URLs are skipped and counted in
    /// [`UrlPexMessage::Addrs::invalid`], not fatal.
    fn unwrap(proto: url_proto::PexMessage) -> Result<Self, UnwrapError> {
        use url_proto::pex_message::Sum as UrlSum;
        match proto.sum {
            Some(UrlSum::Request(url_proto::PexRequest {})) => Ok(Self::Request),
            Some(UrlSum::Addrs(url_proto::PexAddrs { urls, observed })) => {
                let addresses: Vec<NodeAddress> = (urls.iter())
                    .filter(|u| u.len() <= MAX_URL_LEN)
                    .filter_map(|u| u.parse().ok())
                    .collect();
                let invalid = urls.len() - addresses.len();
                let observed = observed.parse().ok();
                Ok(Self::Addrs { addresses, invalid, observed })
            }
            None => Err(UnwrapError("URL PEX message without a request or addresses".into())),
        }
    }
}

/// PEX settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PexConfig {
    /// How often one connected peer is asked for addresses (default 30 s, Go's `ensurePeers`
    /// period; at least 1 s).
    pub request_interval: Duration,
    /// Least time between two requests to the same peer (default 30 s; raised to at least
    /// [`MIN_REQUEST_INTERVAL`], since Go bans below 10 s).
    pub min_request_interval_per_peer: Duration,
    /// Least time between two answers to the same peer (default 10 s, Go's own limit).
    pub min_answer_interval: Duration,
    /// Most addresses per answer (default 100, which v0.35 peers accept too; at most
    /// [`MAX_ADDRESSES`]).
    pub max_addresses_sent: usize,
    /// Most addresses taken from one received message; the rest are dropped (default 250).
    pub max_addresses_accepted: usize,
    /// Peers are asked only while we know fewer peers than this (default 1000, as Go).
    pub want_addresses_below: usize,
    /// Seed of the RNG that picks whom to ask.
    pub seed: u64,
    /// Seed mode, as CometBFT's `seed_mode`: an inbound peer is answered once and then
    /// disconnected, and an outbound peer is disconnected once it answered (the node connects
    /// only to collect addresses). Default off.
    pub seed_mode: bool,
    /// In seed mode, how long after answering (or being answered) the peer is disconnected, so
    /// the answer is delivered before the connection closes (default 2 s).
    pub seed_hangup_delay: Duration,
    /// In seed mode, the longest a peer stays connected, answered or not (default 60 s).
    pub seed_max_connection_time: Duration,
    /// In seed mode, how long a hung-up peer's address waits before it is dialed again
    /// (default 2 min, so a seed does not redial the same peers in a loop).
    pub seed_redial_after: Duration,
}

impl Default for PexConfig {
    fn default() -> Self {
        Self {
            request_interval: Duration::from_secs(30),
            min_request_interval_per_peer: Duration::from_secs(30),
            min_answer_interval: Duration::from_secs(10),
            max_addresses_sent: 100,
            max_addresses_accepted: MAX_ADDRESSES,
            want_addresses_below: 1000,
            seed: 0,
            seed_mode: false,
            seed_hangup_delay: Duration::from_secs(2),
            seed_max_connection_time: Duration::from_secs(60),
            seed_redial_after: Duration::from_secs(120),
        }
    }
}

/// What a peer did wrong in PEX (the reason of a [`PexAction::Penalise`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PexError {
    /// Addresses we did not ask for (Go bans for this).
    #[error("unsolicited PEX addresses")]
    Unsolicited,
    /// A request while its previous one still waits for its (rate-limited) answer.
    #[error("PEX request while an earlier one still waits for its answer")]
    RequestWhileWaiting,
    /// Entries that do not parse: bad node ID, IP, port (0 included) or URL.
    #[error("{0} malformed PEX address(es) (bad node ID, IP, port or URL)")]
    Malformed(usize),
    /// Entries nobody can dial: an unspecified, broadcast or multicast IP.
    #[error("{0} PEX address(es) nobody can dial (unspecified, broadcast or multicast IP)")]
    Undialable(usize),
    /// More entries than one answer may hold; the first `max` were used.
    #[error("{count} PEX addresses in one answer, more than {max}; the rest were dropped")]
    TooMany {
        /// Entries received.
        count: usize,
        /// Entries used.
        max: usize,
    },
}

/// What the driver of a [`PexState`] must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PexAction {
    /// Send this message to the peer. If it could not be queued, call
    /// [`PexState::send_failed`].
    Send(NodeId, PexMessage),
    /// Answer the peer's request: send it `PexMessage::Addrs` with up to
    /// [`PexConfig::max_addresses_sent`] known addresses (not its own).
    Respond(NodeId),
    /// Add these addresses (`mconn://id@ip:port`), gossiped by `from`, to the peer manager
    /// (subject to its per-source quotas).
    Learn {
        /// The peer that sent them.
        from: NodeId,
        /// The addresses.
        addresses: Vec<NodeAddress>,
    },
    /// Report the peer's misbehaviour.
    Penalise(NodeId, Severity, PexError),
    /// Disconnect the peer without a penalty (seed mode: it got or gave its addresses).
    HangUp(NodeId),
}

/// What we know about one peer.
#[derive(Debug)]
struct PeerPex {
    /// `false`: the peer went down with a request outstanding; kept only to accept a late reply.
    connected: bool,
    direction: Direction,
    /// A request of ours is unanswered.
    outstanding: bool,
    last_requested: Option<Timestamp>,
    last_answered: Option<Timestamp>,
    /// A request that came too soon, to be answered at this time.
    answer_due: Option<Timestamp>,
    /// A reply to a request sent on an earlier connection is accepted until then.
    late_reply_until: Option<Timestamp>,
    /// Seed mode: the peer is to be disconnected at this time.
    hang_up_at: Option<Timestamp>,
}

impl PeerPex {
    fn new(direction: Direction) -> Self {
        Self {
            connected: true,
            direction,
            outstanding: false,
            last_requested: None,
            last_answered: None,
            answer_due: None,
            late_reply_until: None,
            hang_up_at: None,
        }
    }
}

/// The PEX protocol as a sans-IO state machine; see the [module documentation](self) for the
/// rules. Time is passed in; randomness comes from [`PexConfig::seed`].
#[derive(Debug)]
pub struct PexState {
    self_id: NodeId,
    config: PexConfig,
    rng: SmallRng,
    peers: BTreeMap<NodeId, PeerPex>,
    /// The next periodic request; set by the first call that passes a time.
    next_request_at: Option<Timestamp>,
}

impl PexState {
    /// A state machine for node `self_id`. Out-of-range settings are clamped (see
    /// [`PexConfig`]).
    pub fn new(self_id: NodeId, mut config: PexConfig) -> Self {
        config.request_interval = config.request_interval.max(MIN_TICK);
        config.min_request_interval_per_peer =
            config.min_request_interval_per_peer.max(MIN_REQUEST_INTERVAL);
        config.max_addresses_sent = config.max_addresses_sent.min(MAX_ADDRESSES);
        let rng = SmallRng::seed_from_u64(config.seed);
        Self { self_id, config, rng, peers: BTreeMap::new(), next_request_at: None }
    }

    /// The configuration in effect (after clamping).
    pub fn config(&self) -> &PexConfig {
        &self.config
    }

    /// The connected peers, by node ID.
    pub fn connected_peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.iter().filter(|(_, p)| p.connected).map(|(id, _)| *id)
    }

    /// Whether a request of ours to `peer` is unanswered.
    pub fn has_outstanding_request(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.connected && p.outstanding)
    }

    fn start_clock(&mut self, now: Timestamp) {
        if self.next_request_at.is_none() {
            self.next_request_at = Some(now + self.config.request_interval);
        }
    }

    fn wants(&self, known_peers: usize) -> bool {
        known_peers < self.config.want_addresses_below
    }

    /// Records a request to `peer` and returns the action that sends it.
    fn request(&mut self, peer: NodeId, now: Timestamp) -> Option<PexAction> {
        let state = self.peers.get_mut(&peer)?;
        state.outstanding = true;
        state.last_requested = Some(now);
        Some(PexAction::Send(peer, PexMessage::Request))
    }

    /// `peer` came up. An outbound peer is asked for addresses at once if we want some.
    /// Idempotent: a peer that is already up only has its direction updated.
    pub fn peer_up(
        &mut self,
        peer: NodeId,
        direction: Direction,
        now: Timestamp,
        known_peers: usize,
    ) -> Vec<PexAction> {
        self.start_clock(now);
        let late_reply_until = match self.peers.get_mut(&peer) {
            Some(state) if state.connected => {
                state.direction = direction;
                return Vec::new();
            }
            Some(state) => state.late_reply_until.filter(|until| *until > now),
            None => None,
        };
        let mut state = PeerPex::new(direction);
        state.late_reply_until = late_reply_until;
        if self.config.seed_mode {
            state.hang_up_at = Some(now + self.config.seed_max_connection_time);
        }
        self.peers.insert(peer, state);
        let mut actions = Vec::new();
        if direction == Direction::Outbound && self.wants(known_peers) {
            actions.extend(self.request(peer, now));
        }
        actions
    }

    /// `peer` went down: its requests and ours are forgotten (as Go does), except that a reply
    /// to our outstanding request is still accepted for [`LATE_REPLY_GRACE`].
    pub fn peer_down(&mut self, peer: NodeId, now: Timestamp) {
        self.start_clock(now);
        let Some(state) = self.peers.get_mut(&peer) else { return };
        let pending = state.outstanding || state.late_reply_until.is_some_and(|u| u > now);
        if pending {
            *state = PeerPex::new(state.direction);
            state.connected = false;
            state.late_reply_until = Some(now + LATE_REPLY_GRACE);
        } else {
            self.peers.remove(&peer);
        }
    }

    /// Our request to `peer` was not queued (full queue, peer gone): it is not outstanding.
    pub fn send_failed(&mut self, peer: NodeId) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.outstanding = false;
        }
    }

    /// Handles a message from `peer`.
    pub fn on_message(
        &mut self,
        peer: NodeId,
        message: PexMessage,
        now: Timestamp,
    ) -> Vec<PexAction> {
        self.start_clock(now);
        match message {
            PexMessage::Request => self.on_request(peer, now),
            PexMessage::Addrs { addresses, invalid } => {
                let addresses = addresses.iter().map(PexAddress::to_node_address).collect();
                self.on_addrs(peer, addresses, invalid, now)
            }
        }
    }

    /// Handles a URL PEX message from `peer`: the same rules as [`on_message`](Self::on_message)
    /// (one request or answer state per peer, whichever dialect it arrives in).
    pub fn on_url_message(
        &mut self,
        peer: NodeId,
        message: UrlPexMessage,
        now: Timestamp,
    ) -> Vec<PexAction> {
        self.start_clock(now);
        match message {
            UrlPexMessage::Request => self.on_request(peer, now),
            UrlPexMessage::Addrs { addresses, invalid, .. } => {
                self.on_addrs(peer, addresses, invalid, now)
            }
        }
    }

    /// Seed mode: `peer` is disconnected after [`PexConfig::seed_hangup_delay`] (or earlier if
    /// already due).
    fn hang_up_soon(&mut self, peer: NodeId, now: Timestamp) {
        if !self.config.seed_mode {
            return;
        }
        let at = now + self.config.seed_hangup_delay;
        if let Some(state) = self.peers.get_mut(&peer).filter(|s| s.connected) {
            state.hang_up_at = Some(state.hang_up_at.map_or(at, |t| t.min(at)));
        }
    }

    fn on_request(&mut self, peer: NodeId, now: Timestamp) -> Vec<PexAction> {
        let min_answer = self.config.min_answer_interval;
        // A request from a peer we have not seen come up (our updates lagged): it is connected.
        let state = self.peers.entry(peer).or_insert_with(|| PeerPex::new(Direction::Inbound));
        if !state.connected {
            // The connection it came on is gone; there is nobody to answer.
            return Vec::new();
        }
        if state.answer_due.is_some() {
            return vec![PexAction::Penalise(peer, Severity::Minor, PexError::RequestWhileWaiting)];
        }
        match state.last_answered {
            Some(last) if now.saturating_sub(last) < min_answer => {
                state.answer_due = Some(last + min_answer);
                Vec::new()
            }
            _ => {
                state.last_answered = Some(now);
                let inbound = state.direction == Direction::Inbound;
                if inbound {
                    self.hang_up_soon(peer, now);
                }
                vec![PexAction::Respond(peer)]
            }
        }
    }

    fn on_addrs(
        &mut self,
        peer: NodeId,
        addresses: Vec<NodeAddress>,
        invalid: usize,
        now: Timestamp,
    ) -> Vec<PexAction> {
        let solicited = match self.peers.get_mut(&peer) {
            Some(state) if state.outstanding => {
                state.outstanding = false;
                true
            }
            Some(state) if state.late_reply_until.is_some_and(|u| u > now) => {
                state.late_reply_until = None;
                true
            }
            _ => false,
        };
        if self.peers.get(&peer).is_some_and(|s| !s.connected && s.late_reply_until.is_none()) {
            self.peers.remove(&peer);
        }
        if !solicited {
            return vec![PexAction::Penalise(peer, Severity::Disconnect, PexError::Unsolicited)];
        }
        let mut actions = Vec::new();
        let minor = |e| PexAction::Penalise(peer, Severity::Minor, e);
        if invalid > 0 {
            actions.push(minor(PexError::Malformed(invalid)));
        }
        let (count, max) = (addresses.len() + invalid, self.config.max_addresses_accepted);
        if count > max.max(MAX_ADDRESSES) {
            actions.push(minor(PexError::TooMany { count, max }));
        }
        let (dialable, undialable): (Vec<NodeAddress>, Vec<NodeAddress>) =
            addresses.into_iter().take(max).partition(is_dialable);
        if !undialable.is_empty() {
            actions.push(minor(PexError::Undialable(undialable.len())));
        }
        let learned: Vec<NodeAddress> =
            dialable.into_iter().filter(|a| a.node_id() != self.self_id).collect();
        if !learned.is_empty() {
            actions.push(PexAction::Learn { from: peer, addresses: learned });
        }
        if self.peers.get(&peer).is_some_and(|s| s.direction == Direction::Outbound) {
            self.hang_up_soon(peer, now);
        }
        actions
    }

    /// Does what is due at `now`: delayed answers, and the periodic request to the least recently
    /// asked eligible peer. Call it at [`next_tick`](Self::next_tick) (calling it early is harmless).
    pub fn on_tick(&mut self, now: Timestamp, known_peers: usize) -> Vec<PexAction> {
        self.start_clock(now);
        let mut actions = Vec::new();
        self.peers.retain(|_, s| s.connected || s.late_reply_until.is_some_and(|u| u > now));
        for (id, state) in &mut self.peers {
            if state.late_reply_until.is_some_and(|u| u <= now) {
                state.late_reply_until = None;
            }
            if let Some(due) = state.answer_due
                && due <= now
            {
                state.answer_due = None;
                state.last_answered = Some(now);
                actions.push(PexAction::Respond(*id));
                if self.config.seed_mode && state.direction == Direction::Inbound {
                    let at = now + self.config.seed_hangup_delay;
                    state.hang_up_at = Some(state.hang_up_at.map_or(at, |t| t.min(at)));
                }
            }
            if let Some(at) = state.hang_up_at
                && at <= now
                && state.connected
            {
                state.hang_up_at = None;
                actions.push(PexAction::HangUp(*id));
            }
        }
        if self.next_request_at.is_some_and(|at| at <= now) {
            self.next_request_at = Some(now + self.config.request_interval);
            if self.wants(known_peers) {
                let spacing = self.config.min_request_interval_per_peer;
                let eligible: Vec<(NodeId, Option<Timestamp>)> = (self.peers.iter())
                    .filter(|(_, s)| {
                        s.connected
                            && !s.outstanding
                            && s.last_requested.is_none_or(|t| now.saturating_sub(t) >= spacing)
                    })
                    .map(|(id, s)| (*id, s.last_requested))
                    .collect();
                // Ask the peer asked least recently (never-asked peers first), so every peer's
                // view is sampled in turn; random among ties.
                let oldest = eligible.iter().map(|(_, t)| *t).min();
                let eligible: Vec<NodeId> = eligible
                    .into_iter()
                    .filter(|(_, t)| Some(*t) == oldest)
                    .map(|(id, _)| id)
                    .collect();
                if !eligible.is_empty() {
                    let pick = self.rng.random_range(0..eligible.len());
                    if let Some(peer) = eligible.get(pick).copied() {
                        actions.extend(self.request(peer, now));
                    }
                }
            }
        }
        actions
    }

    /// When [`on_tick`](Self::on_tick) next has something to do; `None` before any time was
    /// passed in.
    pub fn next_tick(&self) -> Option<Timestamp> {
        let connected = self.peers.values().filter(|s| s.connected);
        let due = connected.flat_map(|s| s.answer_due.into_iter().chain(s.hang_up_at));
        due.chain(self.next_request_at).min()
    }
}

/// Runs the PEX reactor until the router stops (its channel closes).
///
/// `channel` must be the router's channel opened with [`pex_channel_descriptor`]; `url_channel`,
/// if given, the one opened with [`url_pex_channel_descriptor`] (then peers whose NodeInfo lists
/// [`URL_PEX_CHANNEL`] are asked and answered with full URLs of any transport there, and others
/// on `channel` with `mconn` addresses only); `updates` a [`Router::subscribe`] subscription
/// (peers that came up before it are picked up from [`Router::connected_peers`] at start and
/// whenever the subscription lags).
///
/// Answers come from the [`PeerManager`](crate::PeerManager)'s known addresses (best-scored
/// peers first, banned peers left out), filtered by [`is_shareable_with`] for the asking peer's
/// IP; learned addresses go to [`Router::add_gossiped_address`] (per-source quotas); penalties to
/// [`Channel::report_error`]; seed-mode hang-ups to [`Router::hang_up`].
pub async fn run_pex_reactor(
    router: Arc<Router>,
    channel: Channel<PexMessage>,
    url_channel: Option<Channel<UrlPexMessage>>,
    mut updates: PeerUpdates,
    config: PexConfig,
) {
    let mut reactor = Reactor {
        state: PexState::new(router.node_id(), config),
        router,
        channel,
        url_channel,
        url_peers: HashMap::new(),
        observed: ObservedAddresses::default(),
    };
    let mut updates_open = true;
    let actions = reactor.resync();
    reactor.execute(actions).await;
    loop {
        let sleep = reactor.state.next_tick().map_or(Duration::from_secs(3600), |at| {
            at.saturating_sub(Timestamp::now()).max(Duration::from_millis(1))
        });
        let url_recv = async {
            match reactor.url_channel.as_mut() {
                Some(c) => c.recv().await,
                None => std::future::pending().await,
            }
        };
        // Peer updates first: a peer's `Up` is published before any of its messages is read.
        let actions = tokio::select! {
            biased;
            update = updates.recv(), if updates_open => {
                let now = Timestamp::now();
                match update {
                    Ok(u) if u.status == PeerStatus::Up => {
                        reactor.note_dialect(u.node_id);
                        let known = reactor.known();
                        reactor.state.peer_up(u.node_id, u.direction, now, known)
                    }
                    Ok(u) => {
                        reactor.url_peers.remove(&u.node_id);
                        reactor.state.peer_down(u.node_id, now);
                        Vec::new()
                    }
                    Err(PeerUpdatesError::Lagged(n)) => {
                        warn!(missed = n, "PEX reactor lagged behind peer updates; resyncing");
                        reactor.resync()
                    }
                    Err(_) => {
                        updates_open = false;
                        Vec::new()
                    }
                }
            }
            envelope = reactor.channel.recv() => {
                let Some(envelope) = envelope else {
                    debug!("PEX channel closed; reactor stops");
                    return;
                };
                reactor.state.on_message(envelope.from, envelope.message, Timestamp::now())
            }
            envelope = url_recv => {
                let Some(envelope) = envelope else {
                    debug!("URL PEX channel closed; reactor stops");
                    return;
                };
                if let UrlPexMessage::Addrs { observed: Some(seen), .. } = &envelope.message {
                    reactor.observe(envelope.from, *seen);
                }
                reactor.state.on_url_message(envelope.from, envelope.message, Timestamp::now())
            }
            () = tokio::time::sleep(sleep) => {
                let known = reactor.known();
                reactor.state.on_tick(Timestamp::now(), known)
            }
        };
        reactor.execute(actions).await;
    }
}

/// The address a peer reports in its NodeInfo's `listen_addr`, as a node address: a bare
/// `host:port` is MConn (as Go reads it), `<scheme>://host:port` names its transport, and
/// `memory:<id>` is an in-process node. An unspecified IP (the peer listens on all interfaces)
/// is replaced by `remote_ip`, the IP its connection came from. `None` if the result would not
/// be dialable.
pub fn reported_address(info: &NodeInfo, remote_ip: Option<IpAddr>) -> Option<NodeAddress> {
    let listen = info.listen_addr.as_str();
    let url = if listen.starts_with("memory:") {
        listen.to_owned()
    } else if let Some((scheme, host_port)) = listen.split_once("://") {
        format!("{scheme}://{}@{host_port}", info.node_id)
    } else {
        format!("mconn://{}@{listen}", info.node_id)
    };
    let address: NodeAddress = url.parse().ok()?;
    if address.node_id() != info.node_id {
        return None;
    }
    let address = match address.host_port() {
        Some((Host::Ip(ip), port)) if ip.is_unspecified() => NodeAddress::new_host(
            address.protocol().clone(),
            address.node_id(),
            Host::Ip(remote_ip?.to_canonical()),
            port,
        ),
        _ => address,
    };
    is_dialable(&address).then_some(address)
}

/// Distinct peers that must report the same observed address before it is taken as ours.
pub const OBSERVERS_TO_CONFIRM: usize = 2;

/// Most observed addresses an [`ObservedAddresses`] tracks at once (the least observed is
/// dropped for a new one).
pub const MAX_OBSERVED: usize = 16;

/// What peers report seeing us as (URL PEX `observed`), until enough distinct peers agree.
///
/// Sans-IO: [`observe`](Self::observe) returns the address once [`OBSERVERS_TO_CONFIRM`]
/// distinct peers reported it, exactly once. A peer reporting again, or reporting several
/// addresses, counts once per address; at most [`MAX_OBSERVED`] addresses are tracked.
#[derive(Debug, Default)]
pub struct ObservedAddresses {
    seen: BTreeMap<SocketAddr, (Vec<NodeId>, bool)>,
}

impl ObservedAddresses {
    /// Records that `peer` saw us at `addr`; returns `addr` when this report confirms it.
    /// Undialable addresses (unspecified, multicast, port 0) are ignored.
    pub fn observe(&mut self, peer: NodeId, addr: SocketAddr) -> Option<SocketAddr> {
        if !ip_is_dialable(addr.ip()) || addr.port() == 0 {
            return None;
        }
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if !self.seen.contains_key(&addr) && self.seen.len() >= MAX_OBSERVED {
            let weakest = (self.seen.iter())
                .filter(|(_, (_, confirmed))| !confirmed)
                .min_by_key(|(_, (peers, _))| peers.len())
                .map(|(a, _)| *a)?;
            self.seen.remove(&weakest);
        }
        let (peers, confirmed) = self.seen.entry(addr).or_default();
        if *confirmed || peers.contains(&peer) {
            return None;
        }
        peers.push(peer);
        if peers.len() >= OBSERVERS_TO_CONFIRM {
            *confirmed = true;
            return Some(addr);
        }
        None
    }
}

/// The I/O side of [`run_pex_reactor`].
struct Reactor {
    state: PexState,
    router: Arc<Router>,
    channel: Channel<PexMessage>,
    url_channel: Option<Channel<UrlPexMessage>>,
    /// Connected peers, by whether they speak URL PEX, and their IP and port as we see them
    /// (for [`is_shareable_with`] and the `observed` field of our answers).
    url_peers: HashMap<NodeId, (bool, Option<SocketAddr>)>,
    /// What URL PEX peers report seeing us as.
    observed: ObservedAddresses,
}

impl Reactor {
    fn known(&self) -> usize {
        self.router.inspect_peer_manager(|pm, _| pm.num_known())
    }

    /// Records whether `peer` speaks URL PEX (both sides list [`URL_PEX_CHANNEL`]) and its IP;
    /// learns the listening address an inbound peer reports in its NodeInfo (the peer is its
    /// source, as in Go), so it can be shared.
    fn note_dialect(&mut self, peer: NodeId) {
        let Some(summary) = self.router.peer(peer) else { return };
        let urls =
            self.url_channel.is_some() && summary.node_info.channels.contains(&URL_PEX_CHANNEL);
        let remote = match summary.endpoint.addr {
            EndpointAddr::Socket(sa) => Some(sa),
            EndpointAddr::Path(_) => None,
        };
        self.url_peers.insert(peer, (urls, remote));
        if summary.direction == Direction::Inbound
            && let Some(address) = reported_address(&summary.node_info, remote.map(|r| r.ip()))
            && let Err(e) = self.router.add_gossiped_address(address.clone(), peer)
        {
            debug!(%peer, %address, error = %e, "reported listening address not added");
        }
    }

    /// A peer reported seeing us at `seen`. Once enough peers agree, and the port is the one a
    /// transport of ours listens on (so no NAT rewrote it: true of QUIC, whose dials leave from
    /// its listening socket, never of MConn's ephemeral TCP ports), that transport's address at
    /// the observed IP is confirmed as ours.
    fn observe(&mut self, peer: NodeId, seen: SocketAddr) {
        // Only our own answers' unsolicited claims are worth nothing: accept reports from
        // peers whose answer we asked for (the state drops unsolicited answers anyway).
        let Some(confirmed) = self.observed.observe(peer, seen) else { return };
        let me = self.router.node_id();
        for endpoint in self.router.endpoints() {
            if let EndpointAddr::Socket(listen) = endpoint.addr
                && listen.port() == confirmed.port()
                && endpoint.protocol == Protocol::QUIC
            {
                let address = NodeAddress::new_host(
                    endpoint.protocol,
                    me,
                    Host::Ip(confirmed.ip()),
                    listen.port(),
                );
                self.router.add_external_address(address);
            }
        }
    }

    fn speaks_urls(&self, peer: NodeId) -> bool {
        self.url_peers.get(&peer).is_some_and(|(urls, _)| *urls)
    }

    /// Brings the state in line with the router's connected peers.
    fn resync(&mut self) -> Vec<PexAction> {
        let now = Timestamp::now();
        let known = self.known();
        let connected = self.router.connected_peers();
        let gone: Vec<NodeId> = (self.state.connected_peers())
            .filter(|id| !connected.iter().any(|p| p.node_id == *id))
            .collect();
        for peer in gone {
            self.url_peers.remove(&peer);
            self.state.peer_down(peer, now);
        }
        let mut actions = Vec::new();
        for peer in connected {
            self.note_dialect(peer.node_id);
            actions.extend(self.state.peer_up(peer.node_id, peer.direction, now, known));
        }
        actions
    }

    async fn execute(&mut self, actions: Vec<PexAction>) {
        for action in actions {
            match action {
                PexAction::Send(peer, message) => {
                    let queued = match (&self.url_channel, self.speaks_urls(peer), message) {
                        (Some(urls), true, PexMessage::Request) => {
                            urls.send(Outbound::to(peer, UrlPexMessage::Request)).await
                        }
                        (_, _, message) => self.channel.send(Outbound::to(peer, message)).await,
                    };
                    if !matches!(queued, Ok(outcome) if outcome.queued > 0) {
                        debug!(%peer, "PEX request not queued");
                        self.state.send_failed(peer);
                    }
                }
                PexAction::Respond(peer) => self.respond(peer).await,
                PexAction::Learn { from, addresses } => {
                    let count = addresses.len();
                    let mut refused = 0;
                    for address in addresses {
                        // Own, banned, verified-elsewhere or over-quota addresses are refused.
                        if self.router.add_gossiped_address(address, from).is_err() {
                            refused += 1;
                        }
                    }
                    debug!(%from, count, refused, "learned PEX addresses");
                }
                PexAction::Penalise(peer, severity, error) => {
                    let reason = error.to_string();
                    self.channel.report_error(PeerError { node_id: peer, severity, reason });
                }
                PexAction::HangUp(peer) => {
                    debug!(%peer, "seed mode: hanging up");
                    self.router.hang_up(peer, self.state.config().seed_redial_after);
                }
            }
        }
    }

    /// Answers `peer`'s request in its dialect.
    async fn respond(&mut self, peer: NodeId) {
        let limit = self.state.config().max_addresses_sent;
        let peer_addr = self.url_peers.get(&peer).and_then(|(_, remote)| *remote);
        let peer_ip = peer_addr.map(|a| a.ip());
        let urls = self.speaks_urls(peer);
        let addresses = self.router.inspect_peer_manager(|pm, now| {
            if urls {
                // Every transport's address of a peer (QUIC and MConn, say).
                pm.shareable_addresses(now, peer, limit, 4, |a| {
                    a.node_id() != peer && is_dialable(a) && is_shareable_with(a, peer_ip)
                })
            } else {
                pm.shareable_addresses(now, peer, limit, 1, |a| {
                    PexAddress::from_node_address(a).is_some_and(|p| p.is_dialable())
                        && is_shareable_with(a, peer_ip)
                })
            }
        });
        // Our own addresses go first in URL answers (Go peers read ours from our NodeInfo):
        // only confirmed ones, i.e. external addresses (configuration, UPnP, observations) and
        // endpoints bound to a specific IP.
        let addresses = if urls {
            let me = self.router.node_id();
            let bound = (self.router.endpoints().into_iter()).filter_map(|e| match e.addr {
                EndpointAddr::Socket(sa) if !sa.ip().is_unspecified() => {
                    Some(NodeAddress::new_host(e.protocol, me, Host::Ip(sa.ip()), sa.port()))
                }
                _ => None,
            });
            let mut all: Vec<NodeAddress> = Vec::new();
            for a in self.router.external_addresses().into_iter().chain(bound) {
                if is_dialable(&a) && is_shareable_with(&a, peer_ip) && !all.contains(&a) {
                    all.push(a);
                }
            }
            all.extend(addresses);
            all.truncate(limit);
            all
        } else {
            addresses
        };
        debug!(%peer, count = addresses.len(), urls, "answering PEX request");
        let sent = match &self.url_channel {
            Some(channel) if urls => {
                let answer = UrlPexMessage::Addrs { addresses, invalid: 0, observed: peer_addr };
                channel.send(Outbound::to(peer, answer)).await
            }
            _ => {
                let legacy = addresses.iter().filter_map(PexAddress::from_node_address).collect();
                self.channel.send(Outbound::to(peer, PexMessage::addrs(legacy))).await
            }
        };
        if let Err(e) = sent {
            debug!(%peer, error = %e, "PEX answer not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use prost::Message as _;

    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 20])
    }

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + secs * 1000)
    }

    fn ms(millis: u64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + millis)
    }

    fn addr(n: u8, port: u16) -> PexAddress {
        PexAddress::new(id(n), IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)), port)
    }

    fn addrs_msg(list: Vec<PexAddress>) -> PexMessage {
        PexMessage::addrs(list)
    }

    const ME: u8 = 0xee;

    fn state() -> PexState {
        PexState::new(id(ME), PexConfig::default())
    }

    fn requests(actions: &[PexAction]) -> Vec<NodeId> {
        (actions.iter())
            .filter_map(|a| match a {
                PexAction::Send(p, PexMessage::Request) => Some(*p),
                _ => None,
            })
            .collect()
    }

    fn penalties(actions: &[PexAction]) -> Vec<(NodeId, Severity)> {
        (actions.iter())
            .filter_map(|a| match a {
                PexAction::Penalise(p, s, _) => Some((*p, *s)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn golden_bytes() {
        // wire-mconn.md §5.1: PexRequest message = 0a 00.
        assert_eq!(PexMessage::Request.wrap().encode_to_vec(), [0x0a, 0x00]);
        // §4.1: PexAddrs{[{10ba68..bb80, "127.0.0.1", 26656}]}.
        let node: NodeId = "10ba682c8ad13513971e8b56881aab8bd702bb80".parse().unwrap();
        let msg = addrs_msg(vec![PexAddress::new(node, IpAddr::V4(Ipv4Addr::LOCALHOST), 26656)]);
        let bytes = msg.clone().wrap().encode_to_vec();
        let expected = format!(
            "123b0a390a28{}1209{}18a0d001",
            hex::encode("10ba682c8ad13513971e8b56881aab8bd702bb80"),
            hex::encode("127.0.0.1")
        );
        assert_eq!(hex::encode(&bytes), expected);
        let back = PexMessage::unwrap(Message::decode(&bytes[..]).unwrap()).unwrap();
        assert_eq!(back, msg);
        let back = PexMessage::unwrap(Message::decode(&[0x0a, 0x00][..]).unwrap()).unwrap();
        assert_eq!(back, PexMessage::Request);
    }

    #[test]
    fn unwrap_rejects_empty_oneof_and_v2_messages() {
        assert!(PexMessage::unwrap(Message { sum: None }).is_err());
        // v0.35 PexRequestV2 is oneof field 3: unknown here, so the oneof is empty.
        let v2 = Message::decode(&[0x1a, 0x00][..]).unwrap();
        assert!(PexMessage::unwrap(v2).is_err());
    }

    #[test]
    fn malformed_entries_are_skipped_and_counted() {
        let good = "10ba682c8ad13513971e8b56881aab8bd702bb80";
        let entry =
            |id: &str, ip: &str, port: u32| NetAddress { id: id.into(), ip: ip.into(), port };
        let proto = Message {
            sum: Some(Sum::PexAddrs(PexAddrs {
                addrs: vec![
                    entry(good, "1.2.3.4", 26656),
                    entry("xyz", "1.2.3.4", 26656),
                    entry(good, "not-an-ip", 26656),
                    entry(good, "[::1]", 26656),
                    entry(good, "1.2.3.4", 70000),
                    entry(good, "1.2.3.4", 0),
                    entry(&good.to_uppercase(), "::ffff:5.6.7.8", 1),
                    entry(good, "2001:db8::1", 2),
                ],
            })),
        };
        let PexMessage::Addrs { addresses, invalid } = PexMessage::unwrap(proto).unwrap() else {
            panic!("not addrs");
        };
        assert_eq!(invalid, 5);
        let node: NodeId = good.parse().unwrap();
        assert_eq!(
            addresses,
            vec![
                PexAddress::new(node, "1.2.3.4".parse().unwrap(), 26656),
                PexAddress::new(node, "5.6.7.8".parse().unwrap(), 1),
                PexAddress::new(node, "2001:db8::1".parse().unwrap(), 2),
            ]
        );
    }

    #[test]
    fn ips_are_encoded_as_go_prints_them() {
        let node = id(1);
        let enc = |ip: IpAddr| PexAddress::new(node, ip, 1).to_proto().ip;
        assert_eq!(enc(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))), "192.168.0.1");
        let mapped = Ipv4Addr::new(1, 2, 3, 4).to_ipv6_mapped();
        assert_eq!(enc(IpAddr::V6(mapped)), "1.2.3.4");
        // A struct literal bypasses `new`: still sent as IPv4.
        let raw = PexAddress { node_id: node, ip: IpAddr::V6(mapped), port: 1 };
        assert_eq!(raw.to_proto().ip, "1.2.3.4");
        assert_eq!(enc("2001:0db8:0:0:1:0:0:1".parse().unwrap()), "2001:db8::1:0:0:1");
        assert_eq!(enc("fe80::0:0:1".parse().unwrap()), "fe80::1");
        assert_eq!(enc(IpAddr::V6(Ipv6Addr::LOCALHOST)), "::1");
        let a = PexAddress::new(node, "::1".parse().unwrap(), 26656);
        assert_eq!(a.to_node_address().to_string(), format!("mconn://{node}@[::1]:26656"));
        assert_eq!(PexAddress::from_node_address(&a.to_node_address()), Some(a));
        let dns: NodeAddress = format!("mconn://{node}@example.com:1").parse().unwrap();
        assert_eq!(PexAddress::from_node_address(&dns), None);
        let quic: NodeAddress = format!("quic://{node}@1.2.3.4:1").parse().unwrap();
        assert_eq!(PexAddress::from_node_address(&quic), None);
    }

    #[test]
    fn descriptor_matches_go() {
        let d = pex_channel_descriptor();
        assert_eq!((d.id, d.priority, d.send_queue_capacity), (ChannelId(0), 1, 10));
        assert_eq!(d.max_message_size, 64_000);
        assert_eq!(d.overflow, OverflowPolicy::DropNewest);
        // 250 IPv6 addresses with 5-digit ports fit Go's channel limit.
        let node = id(1);
        let ip: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let big = addrs_msg(vec![PexAddress::new(node, ip, 65535); MAX_ADDRESSES]);
        assert!(big.wrap().encoded_len() <= MAX_PEX_MESSAGE_SIZE);
    }

    #[test]
    fn known_addresses_are_best_scored_first_one_per_peer_without_banned_or_excluded() {
        use crate::peer_manager::{PeerManager, PeerManagerConfig};
        let now = t(0);
        let mut pm = PeerManager::new(id(ME), PeerManagerConfig::default(), Vec::new(), now);
        let mconn = |n: u8, port: u16| addr(n, port).to_node_address();
        for n in 1..=5 {
            pm.add_address(mconn(n, 1), now).unwrap();
        }
        pm.add_address(mconn(2, 2), now).unwrap();
        pm.report_good(id(3), now);
        pm.report(id(4), Severity::Minor, now);
        pm.report(id(5), Severity::Ban, now);
        // Peer 2's first address fails once (−1): its second one is shared instead.
        loop {
            let dial = pm.dial_next(now).unwrap();
            if dial.node_id() == id(2) {
                assert_eq!(dial, mconn(2, 1));
                pm.dial_failed(&dial, now);
                break;
            }
        }
        pm.report_good(id(2), now);
        pm.report_good(id(2), now);
        // Scores now: 2 → 1, 3 → 1, 1 → 0, 4 → −1; 5 is banned.
        let all = pm.known_addresses(now, id(9), usize::MAX);
        assert_eq!(all, vec![mconn(2, 2), mconn(3, 1), mconn(1, 1), mconn(4, 1)]);
        assert_eq!(pm.known_addresses(now, id(3), 2), vec![mconn(2, 2), mconn(1, 1)]);
    }

    #[test]
    fn outbound_peers_are_asked_on_connect_inbound_are_not() {
        let mut s = state();
        let a = s.peer_up(id(1), Direction::Outbound, t(0), 5);
        assert_eq!(a, vec![PexAction::Send(id(1), PexMessage::Request)]);
        assert!(s.has_outstanding_request(id(1)));
        assert!(s.peer_up(id(2), Direction::Inbound, t(0), 5).is_empty());
        // Not while we know enough peers.
        assert!(s.peer_up(id(3), Direction::Outbound, t(0), 1000).is_empty());
        // A repeated Up changes nothing and sends nothing.
        assert!(s.peer_up(id(1), Direction::Outbound, t(1), 5).is_empty());
    }

    #[test]
    fn ticks_ask_the_least_recently_asked_peer_spaced_per_peer() {
        let mut s = state();
        for n in 1..=3 {
            assert!(s.peer_up(id(n), Direction::Inbound, t(0), 5).is_empty());
        }
        assert_eq!(s.next_tick(), Some(t(30)));
        assert!(s.on_tick(t(29), 5).is_empty(), "nothing before the tick");
        let mut last_asked: BTreeMap<NodeId, Timestamp> = BTreeMap::new();
        let mut seen = Vec::new();
        for k in 1..=12u64 {
            let now = t(30 * k);
            assert_eq!(s.next_tick(), Some(now));
            let a = s.on_tick(now, 5);
            let asked = requests(&a);
            assert_eq!(asked.len(), 1, "one peer per tick: {a:?}");
            let peer = asked[0];
            if let Some(prev) = last_asked.insert(peer, now) {
                assert!(now.saturating_sub(prev) >= Duration::from_secs(30));
            }
            seen.push(peer);
            // It answers at once.
            let a = s.on_message(peer, addrs_msg(vec![]), now);
            assert!(a.is_empty(), "{a:?}");
        }
        for n in 1..=3 {
            assert!(seen.contains(&id(n)), "picks reach every peer: {seen:?}");
        }
        // Least recently asked first: the first three ticks ask three different peers, and
        // the picks then rotate.
        let mut first: Vec<NodeId> = seen[..3].to_vec();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 3, "{seen:?}");
        assert_eq!(seen[3..6], seen[..3], "rotation: {seen:?}");
        // The same seed gives the same picks.
        let mut again = state();
        for n in 1..=3 {
            again.peer_up(id(n), Direction::Inbound, t(0), 5);
        }
        let first = requests(&again.on_tick(t(30), 5));
        assert_eq!(first, vec![seen[0]]);
        // No requests while we know enough peers, but the tick still advances.
        assert!(requests(&again.on_tick(t(60), 1000)).is_empty());
        assert_eq!(again.next_tick(), Some(t(90)));
    }

    #[test]
    fn per_peer_spacing_holds_with_fast_ticks() {
        let config = PexConfig {
            request_interval: Duration::from_secs(5),
            min_request_interval_per_peer: Duration::from_secs(1), // raised to 11 s
            ..PexConfig::default()
        };
        let mut s = PexState::new(id(ME), config);
        assert_eq!(s.config().min_request_interval_per_peer, MIN_REQUEST_INTERVAL);
        s.peer_up(id(1), Direction::Inbound, t(0), 5);
        let mut asked_at = Vec::new();
        for k in 1..=12u64 {
            let now = t(5 * k);
            let a = s.on_tick(now, 5);
            if !requests(&a).is_empty() {
                asked_at.push(5 * k);
                s.on_message(id(1), addrs_msg(vec![]), now);
            }
        }
        assert_eq!(asked_at, vec![5, 20, 35, 50]);
    }

    #[test]
    fn at_most_one_outstanding_request_per_peer() {
        let mut s = state();
        assert_eq!(requests(&s.peer_up(id(1), Direction::Outbound, t(0), 5)), vec![id(1)]);
        // It never answers: never asked again.
        for k in 1..=10u64 {
            assert!(requests(&s.on_tick(t(30 * k), 5)).is_empty());
        }
        // After a reconnect it may be asked again.
        s.peer_down(id(1), t(301));
        assert_eq!(requests(&s.peer_up(id(1), Direction::Outbound, t(302), 5)), vec![id(1)]);
        // A request that could not be queued is not outstanding.
        s.send_failed(id(1));
        assert!(!s.has_outstanding_request(id(1)));
        assert_eq!(requests(&s.on_tick(t(340), 5)), vec![id(1)]);
    }

    #[test]
    fn unsolicited_addresses_are_penalised_and_ignored() {
        let mut s = state();
        s.peer_up(id(1), Direction::Inbound, t(0), 5);
        let a = s.on_message(id(1), addrs_msg(vec![addr(7, 1)]), t(1));
        assert_eq!(
            a,
            vec![PexAction::Penalise(id(1), Severity::Disconnect, PexError::Unsolicited)]
        );
        // A second reply to one request is unsolicited too.
        s.peer_up(id(2), Direction::Outbound, t(0), 5);
        let a = s.on_message(id(2), addrs_msg(vec![addr(7, 1)]), t(1));
        assert_eq!(
            a,
            vec![PexAction::Learn { from: id(2), addresses: vec![addr(7, 1).to_node_address()] }]
        );
        let a = s.on_message(id(2), addrs_msg(vec![addr(7, 1)]), t(2));
        assert_eq!(penalties(&a), vec![(id(2), Severity::Disconnect)]);
        // From a peer we do not know at all.
        let a = s.on_message(id(9), addrs_msg(vec![]), t(2));
        assert_eq!(penalties(&a), vec![(id(9), Severity::Disconnect)]);
    }

    #[test]
    fn oversize_answers_are_truncated_with_a_minor_penalty_never_a_disconnect() {
        let mut s = state();
        s.peer_up(id(1), Direction::Outbound, t(0), 5);
        let many: Vec<PexAddress> = (0..300u16)
            .map(|i| PexAddress::new(id(2), IpAddr::V4(Ipv4Addr::LOCALHOST), i + 1))
            .collect();
        let a = s.on_message(id(1), addrs_msg(many.clone()), t(1));
        assert_eq!(
            a[0],
            PexAction::Penalise(
                id(1),
                Severity::Minor,
                PexError::TooMany { count: 300, max: MAX_ADDRESSES }
            )
        );
        let [_, PexAction::Learn { addresses: learned, .. }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(learned.len(), MAX_ADDRESSES);
        assert_eq!(learned[249], many[249].to_node_address());
        // Exactly the limit is fine.
        s.peer_up(id(3), Direction::Outbound, t(0), 5);
        let a = s.on_message(id(3), addrs_msg(many[..MAX_ADDRESSES].to_vec()), t(1));
        assert!(penalties(&a).is_empty(), "{a:?}");
    }

    #[test]
    fn own_addresses_are_dropped_malformed_and_undialable_ones_cost_a_minor_penalty() {
        let mut s = state();
        s.peer_up(id(1), Direction::Outbound, t(0), 5);
        let list = vec![
            addr(ME, 1),
            PexAddress::new(id(3), IpAddr::V4(Ipv4Addr::UNSPECIFIED), 1),
            PexAddress::new(id(4), IpAddr::V4(Ipv4Addr::BROADCAST), 1),
            PexAddress::new(id(5), "ff02::1".parse().unwrap(), 1),
            addr(6, 26656),
        ];
        let a = s.on_message(id(1), PexMessage::Addrs { addresses: list, invalid: 2 }, t(1));
        assert_eq!(
            a,
            vec![
                PexAction::Penalise(id(1), Severity::Minor, PexError::Malformed(2)),
                PexAction::Penalise(id(1), Severity::Minor, PexError::Undialable(3)),
                PexAction::Learn { from: id(1), addresses: vec![addr(6, 26656).to_node_address()] },
            ]
        );
        assert_eq!(
            PexError::Undialable(3).to_string(),
            "3 PEX address(es) nobody can dial (unspecified, broadcast or multicast IP)"
        );
    }

    #[test]
    fn request_flood_is_answered_once_per_interval_and_never_disconnects() {
        let mut s = state();
        s.peer_up(id(1), Direction::Inbound, t(0), 5);
        let mut responds = Vec::new();
        let mut minors = 0;
        // 100 requests per second for 60 s, ticking as the driver would.
        for i in 0..6000u64 {
            let now = ms(i * 10);
            let mut a = s.on_message(id(1), PexMessage::Request, now);
            if s.next_tick().is_some_and(|at| at <= now) {
                a.extend(s.on_tick(now, 5));
            }
            for action in a {
                match action {
                    PexAction::Respond(p) => {
                        assert_eq!(p, id(1));
                        responds.push(i * 10);
                    }
                    PexAction::Penalise(_, Severity::Minor, _) => minors += 1,
                    PexAction::Send(_, PexMessage::Request) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(responds, vec![0, 10_000, 20_000, 30_000, 40_000, 50_000]);
        assert_eq!(minors, 6000 - 6 - 1, "every ignored request costs a minor penalty");
    }

    #[test]
    fn a_second_request_within_the_interval_is_answered_late_without_penalty() {
        // Go asks an outbound peer on connect and again at its first (random) ensurePeers tick.
        let mut s = state();
        s.peer_up(id(1), Direction::Inbound, t(0), 5);
        assert_eq!(s.on_message(id(1), PexMessage::Request, t(1)), [PexAction::Respond(id(1))]);
        assert!(s.on_message(id(1), PexMessage::Request, t(3)).is_empty());
        assert_eq!(s.next_tick(), Some(t(11)));
        assert!(s.on_tick(t(10), 5).is_empty());
        assert_eq!(s.on_tick(t(11), 5), [PexAction::Respond(id(1))]);
        // Ten seconds after that answer, a request is answered at once again.
        assert_eq!(s.on_message(id(1), PexMessage::Request, t(21)), [PexAction::Respond(id(1))]);
        // A pending answer is dropped when the peer goes away, and the state resets.
        assert!(s.on_message(id(1), PexMessage::Request, t(22)).is_empty());
        s.peer_down(id(1), t(23));
        assert!(s.on_tick(t(31), 5).iter().all(|a| !matches!(a, PexAction::Respond(_))));
        s.peer_up(id(1), Direction::Inbound, t(32), 5);
        assert_eq!(s.on_message(id(1), PexMessage::Request, t(32)), [PexAction::Respond(id(1))]);
    }

    #[test]
    fn late_reply_after_reconnect_is_accepted() {
        let mut s = state();
        s.peer_up(id(1), Direction::Outbound, t(0), 5);
        s.peer_down(id(1), t(1));
        s.peer_up(id(1), Direction::Inbound, t(2), 5);
        let a = s.on_message(id(1), addrs_msg(vec![addr(7, 1)]), t(3));
        assert_eq!(
            a,
            vec![PexAction::Learn { from: id(1), addresses: vec![addr(7, 1).to_node_address()] }]
        );
        // Only once.
        let a = s.on_message(id(1), addrs_msg(vec![]), t(4));
        assert_eq!(penalties(&a), vec![(id(1), Severity::Disconnect)]);
        // Also while the peer is down, within the grace period; the entry is then dropped.
        s.peer_up(id(2), Direction::Outbound, t(10), 5);
        s.peer_down(id(2), t(11));
        assert_eq!(s.connected_peers().collect::<Vec<_>>(), vec![id(1)]);
        let a = s.on_message(id(2), addrs_msg(vec![]), t(12));
        assert!(a.is_empty());
        let a = s.on_message(id(2), addrs_msg(vec![]), t(13));
        assert_eq!(penalties(&a), vec![(id(2), Severity::Disconnect)]);
        // After the grace period it is unsolicited.
        s.peer_up(id(3), Direction::Outbound, t(20), 5);
        s.peer_down(id(3), t(21));
        s.on_tick(t(21) + LATE_REPLY_GRACE, 5);
        let a = s.on_message(id(3), addrs_msg(vec![]), t(22) + LATE_REPLY_GRACE);
        assert_eq!(penalties(&a), vec![(id(3), Severity::Disconnect)]);
    }

    fn url(s: &str) -> NodeAddress {
        s.parse().unwrap()
    }

    fn seed_state() -> PexState {
        let config = PexConfig {
            seed_mode: true,
            seed_hangup_delay: Duration::from_secs(2),
            seed_max_connection_time: Duration::from_secs(60),
            ..PexConfig::default()
        };
        PexState::new(id(ME), config)
    }

    fn hang_ups(actions: &[PexAction]) -> Vec<NodeId> {
        (actions.iter())
            .filter_map(|a| match a {
                PexAction::HangUp(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn url_messages_round_trip_and_count_malformed_entries() {
        let quic = url(&format!("quic://{}@10.0.0.1:26656", id(1)));
        let dns = url(&format!("mconn://{}@node.example.com:26656", id(2)));
        let bytes = UrlPexMessage::addrs(vec![quic.clone(), dns.clone()]).wrap().encode_to_vec();
        let decoded = url_proto::PexMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            UrlPexMessage::unwrap(decoded).unwrap(),
            UrlPexMessage::Addrs { addresses: vec![quic.clone(), dns], invalid: 0, observed: None }
        );
        let request = UrlPexMessage::Request.wrap().encode_to_vec();
        let decoded = url_proto::PexMessage::decode(request.as_slice()).unwrap();
        assert_eq!(UrlPexMessage::unwrap(decoded).unwrap(), UrlPexMessage::Request);

        let long = format!("quic://{}@{}.com:1", id(3), "a".repeat(MAX_URL_LEN));
        let proto = url_proto::PexMessage {
            sum: Some(url_proto::pex_message::Sum::Addrs(url_proto::PexAddrs {
                urls: vec![
                    quic.to_string(),
                    "not a url".into(),
                    "quic://zz@1.2.3.4:5".into(),
                    format!("quic://{}@1.2.3.4:0", id(4)),
                    long,
                ],
                observed: "not an address".into(),
            })),
        };
        assert_eq!(
            UrlPexMessage::unwrap(proto).unwrap(),
            UrlPexMessage::Addrs { addresses: vec![quic.clone()], invalid: 4, observed: None }
        );
        // The observed address round-trips, IPv6 included.
        let seen: SocketAddr = "[2001:db8::1]:26656".parse().unwrap();
        let bytes = UrlPexMessage::Addrs {
            addresses: vec![quic.clone()],
            invalid: 0,
            observed: Some(seen),
        }
        .wrap()
        .encode_to_vec();
        let decoded = url_proto::PexMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            UrlPexMessage::unwrap(decoded).unwrap(),
            UrlPexMessage::Addrs { addresses: vec![quic], invalid: 0, observed: Some(seen) }
        );
        assert!(UrlPexMessage::unwrap(url_proto::PexMessage { sum: None }).is_err());
    }

    #[test]
    fn url_descriptor_fits_a_full_answer() {
        let d = url_pex_channel_descriptor();
        assert_eq!(d.id, URL_PEX_CHANNEL);
        // The longest valid URL: a 253-character DNS name (four labels of at most 63).
        let label = "a".repeat(63);
        let host = format!("{label}.{label}.{label}.{}", "a".repeat(61));
        assert_eq!(host.len(), 253);
        let longest = format!("quic://{}@{host}:65535", id(1));
        assert!(longest.len() <= MAX_URL_LEN);
        let full = UrlPexMessage::addrs(vec![url(&longest); MAX_ADDRESSES]).wrap().encode_to_vec();
        assert!(full.len() <= MAX_URL_PEX_MESSAGE_SIZE, "{} bytes", full.len());
    }

    #[test]
    fn url_answers_are_learned_with_their_transport() {
        let mut s = state();
        assert_eq!(requests(&s.peer_up(id(1), Direction::Outbound, t(0), 0)), vec![id(1)]);
        let quic = url(&format!("quic://{}@10.0.0.2:26656", id(2)));
        let unspecified = url(&format!("quic://{}@0.0.0.0:26656", id(3)));
        let own = url(&format!("quic://{}@10.0.0.9:26656", id(ME)));
        let actions = s.on_url_message(
            id(1),
            UrlPexMessage::Addrs {
                addresses: vec![quic.clone(), unspecified, own],
                invalid: 1,
                observed: None,
            },
            t(1),
        );
        assert!(actions.contains(&PexAction::Penalise(
            id(1),
            Severity::Minor,
            PexError::Malformed(1)
        )));
        assert!(actions.contains(&PexAction::Penalise(
            id(1),
            Severity::Minor,
            PexError::Undialable(1)
        )));
        assert!(actions.contains(&PexAction::Learn { from: id(1), addresses: vec![quic] }));
        // The answer settled the request: a second one is unsolicited, whichever dialect.
        let again = s.on_url_message(id(1), UrlPexMessage::addrs(vec![]), t(2));
        assert_eq!(penalties(&again), vec![(id(1), Severity::Disconnect)]);
    }

    #[test]
    fn shareable_addresses_follow_the_network_of_the_asking_peer() {
        let a = |host: &str| url(&format!("quic://{}@{host}:1", id(1)));
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ten = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        let public = IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8));
        assert!(is_shareable_with(&a("127.0.0.1"), Some(lo)));
        assert!(!is_shareable_with(&a("127.0.0.1"), Some(ten)));
        assert!(!is_shareable_with(&a("127.0.0.1"), None));
        assert!(is_shareable_with(&a("10.9.9.9"), Some(ten)));
        assert!(!is_shareable_with(&a("10.9.9.9"), Some(public)));
        assert!(!is_shareable_with(&a("192.168.1.1"), Some(ten)));
        assert!(!is_shareable_with(&a("172.16.0.1"), Some(public)));
        assert!(is_shareable_with(&a("172.32.0.1"), Some(lo)));
        assert!(is_shareable_with(&a("[fd00::1]"), Some(IpAddr::V6("fd12::2".parse().unwrap()))));
        assert!(!is_shareable_with(&a("[fd00::1]"), Some(public)));
        assert!(is_shareable_with(&a("[::ffff:127.0.0.1]"), Some(lo)));
        assert!(is_shareable_with(&a("1.2.3.4"), Some(lo)));
        assert!(is_shareable_with(&a("node.example.com"), Some(public)));
        assert!(is_shareable_with(&url(&format!("memory:{}", id(1))), None));
    }

    #[test]
    fn seed_answers_inbound_peers_once_then_hangs_up() {
        let mut s = seed_state();
        assert!(s.peer_up(id(1), Direction::Inbound, t(0), 0).is_empty());
        let actions = s.on_message(id(1), PexMessage::Request, t(1));
        assert_eq!(actions, vec![PexAction::Respond(id(1))]);
        assert_eq!(s.next_tick(), Some(t(3)));
        assert!(hang_ups(&s.on_tick(t(2), 0)).is_empty());
        assert_eq!(hang_ups(&s.on_tick(t(3), 0)), vec![id(1)]);
        // Only once, even if the connection lingers.
        assert!(hang_ups(&s.on_tick(t(10), 0)).is_empty());
    }

    #[test]
    fn seed_hangs_up_on_outbound_peers_once_they_answered_and_on_idle_peers_eventually() {
        let mut s = seed_state();
        assert_eq!(requests(&s.peer_up(id(1), Direction::Outbound, t(0), 0)), vec![id(1)]);
        s.on_message(id(1), addrs_msg(vec![addr(2, 26656)]), t(1));
        assert_eq!(hang_ups(&s.on_tick(t(3), 0)), vec![id(1)]);
        // An inbound peer that never asks is dropped after the connection time limit.
        s.peer_up(id(4), Direction::Inbound, t(10), 0);
        assert!(hang_ups(&s.on_tick(t(69), 0)).is_empty());
        assert_eq!(hang_ups(&s.on_tick(t(70), 0)), vec![id(4)]);
    }

    #[test]
    fn without_seed_mode_nobody_is_hung_up() {
        let mut s = state();
        s.peer_up(id(1), Direction::Inbound, t(0), 0);
        s.on_message(id(1), PexMessage::Request, t(1));
        s.peer_up(id(2), Direction::Outbound, t(0), 0);
        s.on_message(id(2), addrs_msg(vec![addr(3, 1)]), t(1));
        for secs in [3, 61, 3600] {
            assert!(hang_ups(&s.on_tick(t(secs), 0)).is_empty());
        }
    }

    #[test]
    fn reported_addresses_name_their_transport_and_fill_in_the_remote_ip() {
        let info = |listen: &str| {
            NodeInfo::new(id(1), "chain", "m", [PEX_CHANNEL]).with_listen_addr(listen.to_owned())
        };
        let remote = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(
            reported_address(&info("10.0.0.1:26656"), remote),
            Some(url(&format!("mconn://{}@10.0.0.1:26656", id(1))))
        );
        // Go nodes may report `tcp://`, an alias of MConn.
        assert_eq!(
            reported_address(&info("tcp://0.0.0.0:26656"), remote),
            Some(url(&format!("mconn://{}@10.0.0.7:26656", id(1))))
        );
        assert_eq!(
            reported_address(&info("quic://0.0.0.0:9000"), remote),
            Some(url(&format!("quic://{}@10.0.0.7:9000", id(1))))
        );
        assert_eq!(reported_address(&info("0.0.0.0:9000"), None), None);
        assert_eq!(reported_address(&info("10.0.0.1:0"), remote), None);
        assert_eq!(
            reported_address(&info(&format!("memory:{}", id(1))), None),
            Some(url(&format!("memory:{}", id(1))))
        );
        // Another node's memory address is not this peer's.
        assert_eq!(reported_address(&info(&format!("memory:{}", id(2))), None), None);
    }

    #[test]
    fn observed_addresses_are_confirmed_by_two_distinct_peers_once() {
        let mut o = ObservedAddresses::default();
        let seen: SocketAddr = "203.0.113.7:26656".parse().unwrap();
        assert_eq!(o.observe(id(1), seen), None);
        assert_eq!(o.observe(id(1), seen), None, "the same peer twice counts once");
        assert_eq!(o.observe(id(2), seen), Some(seen));
        assert_eq!(o.observe(id(3), seen), None, "confirmed once");
        // Mapped IPv6 is the IPv4 address.
        let mapped: SocketAddr = "[::ffff:198.51.100.1]:9".parse().unwrap();
        o.observe(id(1), mapped);
        assert_eq!(
            o.observe(id(2), "198.51.100.1:9".parse().unwrap()),
            Some("198.51.100.1:9".parse().unwrap())
        );
        // Nonsense is ignored.
        assert_eq!(o.observe(id(1), "0.0.0.0:1".parse().unwrap()), None);
        assert_eq!(o.observe(id(2), "0.0.0.0:1".parse().unwrap()), None);
        assert_eq!(o.observe(id(2), "203.0.113.9:0".parse().unwrap()), None);
    }

    #[test]
    fn a_flood_of_observations_keeps_the_table_bounded_and_confirmed_entries() {
        let mut o = ObservedAddresses::default();
        let real: SocketAddr = "203.0.113.7:26656".parse().unwrap();
        o.observe(id(1), real);
        assert_eq!(o.observe(id(2), real), Some(real));
        // One liar reports 1000 different addresses: the table stays bounded...
        for i in 0..1000u32 {
            let fake = SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 1));
            assert_eq!(o.observe(id(9), fake), None);
        }
        assert!(o.seen.len() <= MAX_OBSERVED);
        // ...and keeps the confirmed one.
        assert!(o.seen.get(&real).is_some_and(|(_, confirmed)| *confirmed));
    }
}
