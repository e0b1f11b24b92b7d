//! The crawler behind `p2pd crawl`: walks a network through PEX and reports every node found.
//!
//! Starting from the given addresses, every node is visited once: dialed (MConn or QUIC, by
//! the address's scheme; DNS names resolved), handshaken, asked for addresses once, and hung
//! up on. Nodes that list the URL PEX channel ([`URL_PEX_CHANNEL`]) are asked there and answer
//! with every transport's URL; others (Go nodes) are asked on CometBFT's PEX channel, which is
//! what a Go node accepts from a new inbound peer (one request, answered at once). Addresses
//! learned are queued and visited in turn, at most [`CrawlOptions::concurrency`] at a time and
//! [`CrawlOptions::max_nodes`] in all.
//!
//! The crawler has no chain ID of its own: a Go node hangs up on a peer of another network
//! right after the handshake, so the crawler handshakes with the network (and block protocol)
//! of the last node it saw, and redials a node once with the node's own if they differ. Each
//! visit is bounded by [`CrawlOptions::timeout`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2p::pex::{
    PEX_CHANNEL, PexMessage, URL_PEX_CHANNEL, UrlPexMessage, pex_channel_descriptor,
    url_pex_channel_descriptor,
};
use p2p::router::{ChannelDescriptor, Wrapper};
use p2p::{
    Connection, ConnectionError, Endpoint, HandshakeError, NodeAddress, NodeId, NodeInfo, NodeKey,
    Protocol, ProtocolVersion, Transport, TransportError,
};
use p2p_proto::prost::Message as _;
use serde::Serialize;
use tokio::task::JoinSet;

/// What to crawl and how hard.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CrawlOptions {
    /// Where to start.
    pub start: Vec<NodeAddress>,
    /// Nodes visited at the same time (default 16).
    pub concurrency: usize,
    /// Time for one visit: dial, handshake, request and answer (default 10 s).
    pub timeout: Duration,
    /// Most nodes visited (default 1000).
    pub max_nodes: usize,
    /// The network to handshake with before any node was seen (default: the first node's).
    pub chain_id: Option<String>,
}

impl CrawlOptions {
    /// Crawl from `start` with the defaults.
    pub fn new(start: Vec<NodeAddress>) -> Self {
        Self {
            start,
            concurrency: 16,
            timeout: Duration::from_secs(10),
            max_nodes: 1000,
            chain_id: None,
        }
    }
}

/// One node the crawl heard of.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CrawledNode {
    /// The node ID.
    pub node_id: String,
    /// The address visited (the last one tried if none worked).
    pub address: String,
    /// Who told us about it (`None`: a start address).
    pub learned_from: Option<String>,
    /// The visit completed the handshake.
    pub reachable: bool,
    /// Why the visit failed, if it did.
    pub error: Option<String>,
    /// Its transport: `mconn` or `quic`.
    pub transport: String,
    /// Milliseconds from dial to completed handshake.
    pub handshake_ms: Option<f64>,
    /// From its NodeInfo (empty if unreachable).
    pub moniker: String,
    /// Software version (`0.38.25` for CometBFT v0.38.25).
    pub version: String,
    /// Network (chain ID).
    pub network: String,
    /// P2P, block and app protocol versions.
    pub protocol_version: [u64; 3],
    /// The channels it speaks.
    pub channels: Vec<u8>,
    /// The listen address it reports.
    pub listen_addr: String,
    /// Which PEX it answered: `url`, `tendermint`, or `none` (no PEX channel, or no answer).
    pub pex: String,
    /// Addresses in its answer.
    pub addresses_returned: usize,
    /// Addresses of this node dialed, in the order heard of (start addresses, then addresses
    /// learned before a visit succeeded; at most [`MAX_ADDRESSES_PER_NODE`]), up to the first
    /// that worked.
    pub addresses_tried: usize,
}

/// Most addresses of one node the crawl keeps and tries (a node may listen on several
/// transports or interfaces, and peers may report stale ones).
pub const MAX_ADDRESSES_PER_NODE: usize = 8;

/// The result of a crawl.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CrawlReport {
    /// Every node heard of, by node ID.
    pub nodes: Vec<CrawledNode>,
    /// Addresses heard of but not visited because of [`CrawlOptions::max_nodes`].
    pub skipped: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl CrawlReport {
    /// The nodes whose handshake completed.
    pub fn reachable(&self) -> impl Iterator<Item = &CrawledNode> {
        self.nodes.iter().filter(|n| n.reachable)
    }
}

/// Counts for progress output.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Visits finished.
    pub visited: usize,
    /// Of those, reachable.
    pub reachable: usize,
    /// Visits running.
    pub in_flight: usize,
    /// Addresses waiting.
    pub queued: usize,
}

/// Why a crawl could not run at all (a failed visit is reported in [`CrawledNode::error`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrawlError {
    /// Nothing to start from.
    #[error("no start address")]
    NoStart,
    /// A start address has a transport this build cannot dial.
    #[error("cannot dial {0}: no transport for its protocol in this build")]
    Unsupported(NodeAddress),
    /// The QUIC client endpoint could not be set up.
    #[error("QUIC client: {0}")]
    Quic(String),
}

/// Why one visit failed.
#[derive(Debug, thiserror::Error)]
enum VisitError {
    #[error("resolving: {0}")]
    Resolve(#[from] p2p::ResolveError),
    #[error("the name resolved to no address")]
    NoEndpoint,
    #[error("no transport for protocol {0}")]
    NoTransport(Protocol),
    #[error("dial: {0}")]
    Dial(#[from] TransportError),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("connection: {0}")]
    Connection(#[from] ConnectionError),
    #[error("the node's key is {authenticated}, not the {claimed} its address names")]
    WrongId { authenticated: NodeId, claimed: NodeId },
    #[error("PEX answer does not decode: {0}")]
    Decode(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// What a successful visit found.
struct Visit {
    info: NodeInfo,
    handshake: Duration,
    pex: &'static str,
    addresses: Vec<NodeAddress>,
}

/// The transports the crawler dials with, by protocol.
struct Dialers {
    by_protocol: BTreeMap<Protocol, Arc<dyn Transport>>,
}

impl Dialers {
    fn new(key: &NodeKey) -> Result<Self, CrawlError> {
        #[cfg_attr(not(any(feature = "mconn", feature = "quic")), allow(unused_mut))]
        let mut by_protocol: BTreeMap<Protocol, Arc<dyn Transport>> = BTreeMap::new();
        #[cfg(feature = "mconn")]
        by_protocol.insert(
            Protocol::MCONN,
            Arc::new(p2p_transport_mconn::MConnTransport::dial_only(
                p2p_transport_mconn::MConnConfig::default(),
            )),
        );
        #[cfg(feature = "quic")]
        {
            let any = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
            let quic = p2p_transport_quic::QuicTransport::bind(
                any,
                key,
                p2p_transport_quic::QuicConfig::default(),
            )
            .map_err(|e| CrawlError::Quic(e.to_string()))?;
            by_protocol.insert(Protocol::QUIC, Arc::new(quic));
        }
        let _ = key;
        Ok(Self { by_protocol })
    }
}

/// Shared state of the crawl.
struct State {
    key: NodeKey,
    dialers: Dialers,
    resolver: Option<p2p::dns::Resolver>,
    /// Network and block protocol to handshake with (the last node's).
    guess: Mutex<(String, u64)>,
    timeout: Duration,
}

/// Crawls the network from `options.start`, calling `progress` after every visit.
pub async fn crawl(
    options: CrawlOptions,
    mut progress: impl FnMut(Progress),
) -> Result<CrawlReport, CrawlError> {
    let started = Instant::now();
    if options.start.is_empty() {
        return Err(CrawlError::NoStart);
    }
    let key = NodeKey::generate();
    let dialers = Dialers::new(&key)?;
    if let Some(a) = options.start.iter().find(|a| !dialers.by_protocol.contains_key(a.protocol()))
    {
        return Err(CrawlError::Unsupported(a.clone()));
    }
    let state = Arc::new(State {
        key,
        dialers,
        resolver: p2p::dns::Resolver::system().ok(),
        guess: Mutex::new((
            options.chain_id.clone().unwrap_or_default(),
            ProtocolVersion::default().block,
        )),
        timeout: options.timeout,
    });

    let mut nodes: BTreeMap<NodeId, CrawledNode> = BTreeMap::new();
    let mut seen: HashSet<NodeId> = HashSet::new();
    let mut queue: VecDeque<(NodeAddress, Option<NodeId>)> = VecDeque::new();
    // Further addresses of nodes already queued, tried in turn while the visits fail.
    let mut more: HashMap<NodeId, Alternates> = HashMap::new();
    let mut skipped = 0;
    for a in &options.start {
        if seen.insert(a.node_id()) {
            queue.push_back((a.clone(), None));
            more.insert(a.node_id(), Alternates::new(a.clone()));
        } else if let Some(m) = more.get_mut(&a.node_id()) {
            m.add(a.clone(), None);
        }
    }
    let mut running: JoinSet<(NodeAddress, Option<NodeId>, Result<Visit, VisitError>)> =
        JoinSet::new();
    let mut counts = Progress::default();
    let concurrency = options.concurrency.max(1);
    loop {
        while running.len() < concurrency
            && let Some((address, from)) = queue.pop_front()
        {
            let state = state.clone();
            running.spawn(async move {
                let result = visit(&state, &address).await;
                (address, from, result)
            });
        }
        counts.in_flight = running.len();
        counts.queued = queue.len();
        let Some(done) = running.join_next().await else { break };
        let Ok((address, from, result)) = done else { continue };
        let visited = address.node_id();
        if result.is_err()
            && let Some((next, next_from)) = more.get_mut(&visited).and_then(Alternates::next)
        {
            // Another address of the same node: try it before reporting the node.
            queue.push_back((next, next_from));
            continue;
        }
        let tried = more.remove(&visited).map_or(1, |m| m.tried);
        counts.visited += 1;
        let mut node = CrawledNode {
            node_id: address.node_id().to_string(),
            address: address.to_string(),
            learned_from: from.map(|f| f.to_string()),
            reachable: false,
            error: None,
            transport: address.protocol().to_string(),
            handshake_ms: None,
            moniker: String::new(),
            version: String::new(),
            network: String::new(),
            protocol_version: [0; 3],
            channels: Vec::new(),
            listen_addr: String::new(),
            pex: "none".to_owned(),
            addresses_returned: 0,
            addresses_tried: tried,
        };
        match result {
            Ok(v) => {
                counts.reachable += 1;
                node.reachable = true;
                node.handshake_ms = Some(v.handshake.as_secs_f64() * 1000.0);
                node.moniker = v.info.moniker.clone();
                node.version = v.info.version.clone();
                node.network = v.info.network.clone();
                let p = v.info.protocol_version;
                node.protocol_version = [p.p2p, p.block, p.app];
                node.channels = v.info.channels.iter().map(|c| c.0).collect();
                node.listen_addr = v.info.listen_addr.clone();
                node.pex = v.pex.to_owned();
                node.addresses_returned = v.addresses.len();
                let me = state.key.node_id();
                for learned in v.addresses {
                    let id = learned.node_id();
                    if id == me || !state.dialers.by_protocol.contains_key(learned.protocol()) {
                        continue;
                    }
                    if seen.contains(&id) {
                        // Not visited yet (or being visited): another address to fall back on.
                        if let Some(m) = more.get_mut(&id) {
                            m.add(learned, Some(visited));
                        }
                    } else if seen.len() >= options.max_nodes {
                        skipped += 1;
                    } else {
                        seen.insert(id);
                        more.insert(id, Alternates::new(learned.clone()));
                        queue.push_back((learned, Some(visited)));
                    }
                }
            }
            Err(e) => node.error = Some(e.to_string()),
        }
        nodes.insert(visited, node);
        counts.in_flight = running.len();
        counts.queued = queue.len();
        progress(counts);
    }
    Ok(CrawlReport {
        nodes: nodes.into_values().collect(),
        skipped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The addresses of one node not visited yet (a visit is queued or running with another).
struct Alternates {
    /// Every address heard of (deduplicated, at most [`MAX_ADDRESSES_PER_NODE`]).
    known: Vec<NodeAddress>,
    /// Not tried yet, with who reported them.
    untried: VecDeque<(NodeAddress, Option<NodeId>)>,
    /// Addresses dialed so far.
    tried: usize,
}

impl Alternates {
    fn new(first: NodeAddress) -> Self {
        Self { known: vec![first], untried: VecDeque::new(), tried: 1 }
    }

    fn add(&mut self, address: NodeAddress, from: Option<NodeId>) {
        if self.known.len() < MAX_ADDRESSES_PER_NODE && !self.known.contains(&address) {
            self.known.push(address.clone());
            self.untried.push_back((address, from));
        }
    }

    fn next(&mut self) -> Option<(NodeAddress, Option<NodeId>)> {
        let next = self.untried.pop_front()?;
        self.tried += 1;
        Some(next)
    }
}

/// Visits one node, bounded by the crawl's timeout; redials once with the node's network if
/// ours differed.
async fn visit(state: &State, address: &NodeAddress) -> Result<Visit, VisitError> {
    let run = async {
        let guess = state.guess.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let first = visit_once(state, address, &guess).await?;
        let theirs = (first.info.network.clone(), first.info.protocol_version.block);
        *state.guess.lock().unwrap_or_else(PoisonError::into_inner) = theirs.clone();
        if theirs == guess || first.pex != "none" {
            return Ok(first);
        }
        // It probably hung up on a stranger: try again as one of its own network.
        visit_once(state, address, &theirs).await.or(Ok(first))
    };
    tokio::time::timeout(state.timeout, run)
        .await
        .map_err(|_| VisitError::Timeout(state.timeout))?
}

async fn visit_once(
    state: &State,
    address: &NodeAddress,
    (network, block): &(String, u64),
) -> Result<Visit, VisitError> {
    let endpoint = resolve(state, address).await?;
    let transport = (state.dialers.by_protocol.get(address.protocol()))
        .ok_or_else(|| VisitError::NoTransport(address.protocol().clone()))?;
    let started = Instant::now();
    let mut conn = transport.dial(&endpoint).await?;
    conn.establish().await?;
    let channels: [ChannelDescriptor; 2] = [pex_channel_descriptor(), url_pex_channel_descriptor()];
    let network = if network.is_empty() { "crawler" } else { network.as_str() };
    let version = ProtocolVersion { block: *block, ..ProtocolVersion::default() };
    let info =
        NodeInfo::new(state.key.node_id(), network, "p2pd-crawler", channels.iter().map(|d| d.id))
            .with_protocol_version(version)
            .with_listen_addr("0.0.0.0:0");
    let (peer_info, peer_key) = conn.handshake(&info, &state.key, &channels).await?;
    let handshake = started.elapsed();
    let authenticated = NodeId::from_public_key(&peer_key);
    if authenticated != address.node_id() {
        conn.close().await;
        return Err(VisitError::WrongId { authenticated, claimed: address.node_id() });
    }
    let compatible = peer_info.network == network && peer_info.protocol_version.block == *block;
    let (pex, addresses) = if !compatible {
        ("none", Vec::new())
    } else if peer_info.has_channel(URL_PEX_CHANNEL) {
        ("url", ask_urls(conn.as_ref()).await?)
    } else if peer_info.has_channel(PEX_CHANNEL) {
        ("tendermint", ask_tendermint(conn.as_ref()).await?)
    } else {
        ("none", Vec::new())
    };
    conn.close().await;
    Ok(Visit { info: peer_info, handshake, pex, addresses })
}

async fn resolve(state: &State, address: &NodeAddress) -> Result<Endpoint, VisitError> {
    let endpoints = match &state.resolver {
        Some(r) => address.resolve_with(r).await?,
        None => address.resolve().await?,
    };
    endpoints.into_iter().next().ok_or(VisitError::NoEndpoint)
}

fn encode<M: Wrapper>(message: M) -> Bytes {
    Bytes::from(message.wrap().encode_to_vec())
}

fn decode<M: Wrapper>(bytes: &[u8]) -> Result<M, VisitError> {
    let proto = M::Proto::decode(bytes).map_err(|e| VisitError::Decode(e.to_string()))?;
    M::unwrap(proto).map_err(|e| VisitError::Decode(e.to_string()))
}

async fn ask_urls(conn: &dyn Connection) -> Result<Vec<NodeAddress>, VisitError> {
    conn.send(URL_PEX_CHANNEL, encode(UrlPexMessage::Request)).await?;
    loop {
        let (channel, bytes) = conn.receive().await?;
        if channel != URL_PEX_CHANNEL {
            continue;
        }
        if let UrlPexMessage::Addrs { addresses, .. } = decode::<UrlPexMessage>(&bytes)? {
            return Ok(addresses);
        }
    }
}

async fn ask_tendermint(conn: &dyn Connection) -> Result<Vec<NodeAddress>, VisitError> {
    conn.send(PEX_CHANNEL, encode(PexMessage::Request)).await?;
    loop {
        let (channel, bytes) = conn.receive().await?;
        if channel != PEX_CHANNEL {
            continue;
        }
        if let PexMessage::Addrs { addresses, .. } = decode::<PexMessage>(&bytes)? {
            return Ok(addresses.iter().map(|a| a.to_node_address()).collect());
        }
    }
}

/// The report as a table, one node per line.
pub fn table(report: &CrawlReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<40}  {:<9} {:<6} {:<16} {:<10} {:<20} {:<10} {:>5}  address",
        "node id", "reachable", "proto", "moniker", "version", "network", "pex", "addrs"
    );
    for n in &report.nodes {
        let _ = writeln!(
            o,
            "{:<40}  {:<9} {:<6} {:<16} {:<10} {:<20} {:<10} {:>5}  {}{}",
            n.node_id,
            if n.reachable { "yes" } else { "no" },
            n.transport,
            n.moniker,
            n.version,
            n.network,
            n.pex,
            n.addresses_returned,
            n.address,
            n.error.as_deref().map(|e| format!("  ({e})")).unwrap_or_default(),
        );
    }
    let reachable = report.reachable().count();
    let _ = writeln!(
        o,
        "{} node(s), {reachable} reachable, {} skipped (max nodes), {:.1} s",
        report.nodes.len(),
        report.skipped,
        report.seconds
    );
    o
}
