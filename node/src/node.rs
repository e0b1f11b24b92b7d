//! [`Node`]: a router with the transports enabled by cargo features, transaction gossip, peer
//! exchange (optionally as a seed), the echo reactor, the consensus-height announcer (so Go
//! peers gossip to us) and, optionally, a metrics endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use p2p::consensus::{HeightMirror, consensus_state_channel_descriptor, run_height_announcer};
use p2p::echo::{Echo, EchoEvent, echo_channel_descriptor, handle_echo};
use p2p::mempool::{Txs, mempool_channel_descriptor};
use p2p::peer_manager::PeerStore;
use p2p::pex::{PexConfig, pex_channel_descriptor, run_pex_reactor, url_pex_channel_descriptor};
use p2p::{
    NodeAddress, NodeId, NodeInfo, NodeKey, PeerManagerConfig, Protocol, Router, RouterConfig,
};
use tokio::task::JoinHandle;

use crate::gossip::{GossipConfig, TxGossip};
use crate::metrics::{MetricsOptions, MetricsServer};

/// Everything needed to start a [`Node`]. Build it with [`NodeOptions::new`] and the `with_*`
/// methods, or from a configuration file with [`crate::config::Config::node_options`].
#[derive(Debug)]
#[non_exhaustive]
pub struct NodeOptions {
    /// The node key (its ID is the node's ID).
    pub key: NodeKey,
    /// The network (chain ID) peers must share.
    pub chain_id: String,
    /// A human-readable name.
    pub moniker: String,
    /// MConn (TCP) listen address.
    #[cfg(feature = "mconn")]
    pub mconn_listen: Option<SocketAddr>,
    /// MConn settings.
    #[cfg(feature = "mconn")]
    pub mconn: p2p_transport_mconn::MConnConfig,
    /// QUIC (UDP) listen address.
    #[cfg(feature = "quic")]
    pub quic_listen: Option<SocketAddr>,
    /// QUIC settings.
    #[cfg(feature = "quic")]
    pub quic: p2p_transport_quic::QuicConfig,
    /// Serve CometBFT's lp2p (libp2p over QUIC) with these settings; `None`: off. It shares the
    /// QUIC listener's UDP socket if there is one, else binds [`NodeOptions::lp2p_listen`].
    #[cfg(feature = "lp2p")]
    pub lp2p: Option<p2p_transport_lp2p::Lp2pConfig>,
    /// Where lp2p listens when there is no QUIC listener to share (port 0 with an MConn
    /// listener: its port number, as CometBFT's lp2p uses `p2p.laddr`'s port on UDP).
    #[cfg(feature = "lp2p")]
    pub lp2p_listen: Option<SocketAddr>,
    /// An in-process memory network to join.
    #[cfg(feature = "memory")]
    pub memory: Option<p2p_transport_memory::MemoryNetwork>,
    /// The address advertised in NodeInfo (`host:port`); default: the MConn listen address.
    pub external_address: Option<String>,
    /// Peers to dial at start (seeds and other known peers).
    pub peers: Vec<NodeAddress>,
    /// Router settings.
    pub router: RouterConfig,
    /// Peer manager settings (persistent peers, limits).
    pub peer_manager: PeerManagerConfig,
    /// The peer store file; `None`: peers are not remembered across restarts.
    pub peer_store: Option<PathBuf>,
    /// Gossip transactions on the mempool channel.
    pub gossip: Option<GossipConfig>,
    /// Largest transaction, bytes.
    pub max_tx_bytes: usize,
    /// Serve Prometheus metrics.
    pub metrics: Option<MetricsOptions>,
    /// Map the MConn (TCP) and QUIC (UDP) listening ports on the LAN's UPnP gateway; `None`
    /// (the default): off. See [`Node::upnp`].
    #[cfg(feature = "upnp")]
    pub upnp: Option<p2p::upnp::UpnpConfig>,
    /// Run peer exchange (both dialects; see [`p2p::pex`]); `None`: no PEX.
    pub pex: Option<PexConfig>,
}

impl NodeOptions {
    /// Options for a node with `key` on network `chain_id`: no listener, no peers, gossip and
    /// PEX on, metrics off, default router and peer-manager settings.
    pub fn new(key: NodeKey, chain_id: impl Into<String>) -> Self {
        Self {
            key,
            chain_id: chain_id.into(),
            moniker: "p2pd".to_owned(),
            #[cfg(feature = "mconn")]
            mconn_listen: None,
            #[cfg(feature = "mconn")]
            mconn: p2p_transport_mconn::MConnConfig::default(),
            #[cfg(feature = "quic")]
            quic_listen: None,
            #[cfg(feature = "quic")]
            quic: p2p_transport_quic::QuicConfig::default(),
            #[cfg(feature = "lp2p")]
            lp2p: None,
            #[cfg(feature = "lp2p")]
            lp2p_listen: None,
            #[cfg(feature = "memory")]
            memory: None,
            external_address: None,
            peers: Vec::new(),
            router: RouterConfig::default(),
            peer_manager: PeerManagerConfig::default(),
            peer_store: None,
            gossip: Some(GossipConfig::default()),
            max_tx_bytes: p2p::mempool::DEFAULT_MAX_TX_BYTES,
            metrics: None,
            #[cfg(feature = "upnp")]
            upnp: None,
            pex: Some(PexConfig::default()),
        }
    }

    /// Sets the moniker.
    pub fn with_moniker(mut self, moniker: impl Into<String>) -> Self {
        self.moniker = moniker.into();
        self
    }

    /// Listens for MConn on `addr` (TCP).
    #[cfg(feature = "mconn")]
    pub fn with_mconn(mut self, addr: SocketAddr) -> Self {
        self.mconn_listen = Some(addr);
        self
    }

    /// Listens for QUIC on `addr` (UDP).
    #[cfg(feature = "quic")]
    pub fn with_quic(mut self, addr: SocketAddr) -> Self {
        self.quic_listen = Some(addr);
        self
    }

    /// Serves lp2p with `config` (on the QUIC listener's socket, or on `addr` without one).
    #[cfg(feature = "lp2p")]
    pub fn with_lp2p(mut self, addr: SocketAddr, config: p2p_transport_lp2p::Lp2pConfig) -> Self {
        self.lp2p = Some(config);
        self.lp2p_listen = Some(addr);
        self
    }

    /// Joins an in-process memory network.
    #[cfg(feature = "memory")]
    pub fn with_memory(mut self, network: p2p_transport_memory::MemoryNetwork) -> Self {
        self.memory = Some(network);
        self
    }

    /// Maps the listening ports on the LAN's UPnP gateway with `config`.
    #[cfg(feature = "upnp")]
    pub fn with_upnp(mut self, config: p2p::upnp::UpnpConfig) -> Self {
        self.upnp = Some(config);
        self
    }

    /// Dials `peer` at start.
    pub fn with_peer(mut self, peer: NodeAddress) -> Self {
        self.peers.push(peer);
        self
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A listen address could not be bound.
    #[error("cannot listen on {protocol} {addr}: {source}")]
    Listen {
        /// The transport.
        protocol: Protocol,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The QUIC transport could not be set up.
    #[error("QUIC transport: {0}")]
    Quic(String),
    /// The lp2p transport could not be set up.
    #[error("lp2p transport: {0}")]
    Lp2p(String),
    /// No transport: enable a listener, a memory network, or a transport feature.
    #[error("no transport is configured (enable MConn, QUIC or a memory network)")]
    NoTransport,
    /// The memory network refused the node.
    #[error("memory network: {0}")]
    Memory(String),
    /// The peer store could not be opened.
    #[error("peer store: {0}")]
    Store(#[from] p2p::peer_manager::PeerStoreError),
    /// The router refused the setup.
    #[error("router: {0}")]
    Router(#[from] p2p::router::RouterError),
    /// A peer address was refused (own address, banned, store full).
    #[error("peer {address}: {source}")]
    Peer {
        /// The address.
        address: NodeAddress,
        /// Why.
        source: p2p::peer_manager::AddAddressError,
    },
    /// The UPnP mapper refused its settings.
    #[cfg(feature = "upnp")]
    #[error("UPnP: {0}")]
    Upnp(#[from] p2p::upnp::UpnpError),
    /// The metrics endpoint could not be served.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running node. Stop it with [`Node::stop`] (dropping it stops the router without
/// flushing).
#[derive(Debug)]
pub struct Node {
    router: Arc<Router>,
    gossip: Option<TxGossip>,
    addresses: Vec<NodeAddress>,
    metrics: Option<MetricsServer>,
    #[cfg(feature = "upnp")]
    upnp: Option<p2p::upnp::Upnp>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Binds the listeners, starts the router and the reactors, and dials the configured
    /// peers. Must be called inside a Tokio runtime.
    pub async fn start(options: NodeOptions) -> Result<Self, NodeError> {
        let id = options.key.node_id();
        let mut info = NodeInfo::new(id, &options.chain_id, &options.moniker, Vec::new());
        if let Some(external) = &options.external_address {
            info = info.with_listen_addr(external.clone());
        }
        let store = match &options.peer_store {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                Some(PeerStore::open(path)?)
            }
            None => None,
        };
        let router = Router::new(
            options.key.clone(),
            info,
            options.router.clone(),
            options.peer_manager.clone(),
            store,
        )
        .map(Arc::new)?;
        #[cfg_attr(
            not(any(feature = "mconn", feature = "quic", feature = "memory")),
            allow(unused_mut)
        )]
        let mut addresses: Vec<NodeAddress> = Vec::new();
        #[cfg_attr(
            not(any(feature = "mconn", feature = "quic", feature = "memory")),
            allow(unused_mut)
        )]
        let mut transports = 0;
        // The UDP socket QUIC listens on, which lp2p shares.
        #[cfg(feature = "lp2p")]
        #[cfg_attr(not(feature = "quic"), allow(unused_mut))]
        let mut quic_endpoint: Option<p2p_quic_endpoint::QuicEndpoint> = None;

        #[cfg(feature = "mconn")]
        if let Some(addr) = options.mconn_listen {
            let t = p2p_transport_mconn::MConnTransport::bind(addr, options.mconn.clone())
                .await
                .map_err(|source| NodeError::Listen { protocol: Protocol::MCONN, addr, source })?;
            if let Some(local) = t.local_addr() {
                addresses.push(socket_address(Protocol::MCONN, id, local));
            }
            router.add_transport(Arc::new(t))?;
            transports += 1;
        }
        #[cfg(feature = "quic")]
        if let Some(addr) = options.quic_listen {
            // Port 0 with an MConn listener: take MConn's port number (UDP and TCP ports are
            // separate, so the same number is usually free).
            #[cfg(feature = "mconn")]
            let mut addr = addr;
            #[cfg(feature = "mconn")]
            if addr.port() == 0
                && let Some(mconn) = addresses.iter().find(|a| *a.protocol() == Protocol::MCONN)
                && let Some((_, port)) = mconn.host_port()
            {
                addr.set_port(port);
            }
            let t =
                p2p_transport_quic::QuicTransport::bind(addr, &options.key, options.quic.clone())
                    .map_err(|e| match e {
                    p2p_transport_quic::QuicError::Io(source) => {
                        NodeError::Listen { protocol: Protocol::QUIC, addr, source }
                    }
                    other => NodeError::Quic(other.to_string()),
                })?;
            addresses.push(socket_address(Protocol::QUIC, id, t.local_addr()));
            #[cfg(feature = "lp2p")]
            {
                quic_endpoint = Some(t.endpoint().clone());
            }
            router.add_transport(Arc::new(t))?;
            transports += 1;
        }
        #[cfg(feature = "lp2p")]
        if let Some(config) = &options.lp2p {
            let t = match &quic_endpoint {
                Some(endpoint) => {
                    p2p_transport_lp2p::Lp2pTransport::on_endpoint(endpoint, config.clone())
                        .map_err(|e| NodeError::Lp2p(e.to_string()))
                }
                None => {
                    let Some(mut addr) = options.lp2p_listen else {
                        return Err(NodeError::Lp2p(
                            "no listen address (set p2p.quic_laddr or p2p.laddr)".to_owned(),
                        ));
                    };
                    if addr.port() == 0
                        && let Some(mconn) =
                            addresses.iter().find(|a| *a.protocol() == Protocol::MCONN)
                        && let Some((_, port)) = mconn.host_port()
                    {
                        addr.set_port(port);
                    }
                    p2p_transport_lp2p::Lp2pTransport::bind(
                        addr,
                        &options.key,
                        p2p_quic_endpoint::EndpointConfig::default(),
                        config.clone(),
                    )
                    .map_err(|e| match e {
                        p2p_transport_lp2p::Lp2pError::Endpoint(
                            p2p_quic_endpoint::EndpointError::Io(source),
                        ) => NodeError::Listen { protocol: Protocol::LP2P, addr, source },
                        other => NodeError::Lp2p(other.to_string()),
                    })
                }
            }?;
            let local = t.local_addr();
            addresses.push(NodeAddress::new_with_key(
                Protocol::LP2P,
                options.key.public_key(),
                p2p::Host::Ip(local.ip()),
                local.port(),
            ));
            router.add_transport(Arc::new(t))?;
            transports += 1;
        }
        #[cfg(feature = "memory")]
        if let Some(network) = &options.memory {
            let t = network.transport(id).map_err(|e| NodeError::Memory(e.to_string()))?;
            addresses.push(NodeAddress::new_opaque(Protocol::MEMORY, id));
            router.add_transport(Arc::new(t))?;
            transports += 1;
        }
        if transports == 0 {
            // A dial-only node still needs a transport to dial with.
            #[cfg(feature = "mconn")]
            {
                let t = p2p_transport_mconn::MConnTransport::dial_only(options.mconn.clone());
                router.add_transport(Arc::new(t))?;
                transports += 1;
            }
        }
        if transports == 0 {
            return Err(NodeError::NoTransport);
        }

        let mut tasks = Vec::new();
        let gossip = match &options.gossip {
            Some(config) => {
                let channel =
                    router.open_channel::<Txs>(mempool_channel_descriptor(options.max_tx_bytes))?;
                Some(TxGossip::spawn(channel, config.clone()))
            }
            None => None,
        };
        let consensus = router.open_channel(consensus_state_channel_descriptor())?;
        tasks.push(tokio::spawn(run_height_announcer(
            consensus,
            router.subscribe(),
            HeightMirror::new(),
        )));
        let echo = router.open_channel::<Echo>(echo_channel_descriptor())?;
        tasks.push(tokio::spawn(async move {
            let mut echo = echo;
            while let Some(envelope) = echo.recv().await {
                if let EchoEvent::Ponged { from, content } = handle_echo(&echo, envelope).await {
                    tracing::debug!(peer = %from, %content, "pong");
                }
            }
        }));
        let pex = match &options.pex {
            Some(config) => Some((
                router.open_channel(pex_channel_descriptor())?,
                router.open_channel(url_pex_channel_descriptor())?,
                router.subscribe(),
                config.clone(),
            )),
            None => None,
        };
        // Metrics first: if the endpoint cannot be served, nothing has connected yet.
        let metrics = match &options.metrics {
            Some(m) => Some(
                MetricsServer::serve(m.clone(), router.clone(), gossip.clone())
                    .await
                    .map_err(|source| NodeError::Metrics { addr: m.listen, source })?,
            ),
            None => None,
        };
        router.start()?;
        // An operator-configured external address is confirmed for MConn (the transport
        // CometBFT's `external_address` is about); peer exchange advertises it.
        #[cfg(feature = "mconn")]
        if let Some(external) = &options.external_address
            && options.mconn_listen.is_some()
            && let Ok(address) = format!("mconn://{id}@{external}").parse::<NodeAddress>()
        {
            router.add_external_address(address);
        }
        if let Some((legacy, urls, updates, config)) = pex {
            tasks.push(tokio::spawn(run_pex_reactor(
                router.clone(),
                legacy,
                Some(urls),
                updates,
                config,
            )));
        }
        for peer in &options.peers {
            router
                .add_address(peer.clone())
                .map_err(|source| NodeError::Peer { address: peer.clone(), source })?;
        }
        // After the listeners are bound: their ports are known.
        #[cfg(feature = "upnp")]
        let upnp = match &options.upnp {
            Some(config) => start_upnp(config, &addresses)?,
            None => None,
        };
        // The gateway's mappings are addresses others can dial: peer exchange advertises them
        // while they last.
        #[cfg(feature = "upnp")]
        if let Some(upnp) = &upnp {
            tasks.push(tokio::spawn(advertise_upnp(router.clone(), upnp.subscribe())));
        }
        tracing::info!(node = %id, addresses = ?addresses.iter().map(ToString::to_string).collect::<Vec<_>>(), "node started");
        Ok(Self {
            router,
            gossip,
            addresses,
            metrics,
            #[cfg(feature = "upnp")]
            upnp,
            tasks,
        })
    }

    /// The node's ID.
    pub fn id(&self) -> NodeId {
        self.router.node_id()
    }

    /// The router (for opening more channels, use [`Router`] directly instead).
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The transaction gossip, if enabled.
    pub fn gossip(&self) -> Option<&TxGossip> {
        self.gossip.as_ref()
    }

    /// Every address this node can be reached at, one per listener (`mconn://`, `quic://`,
    /// `lp2p://<peer id>@…`, `memory:`).
    pub fn addresses(&self) -> &[NodeAddress] {
        &self.addresses
    }

    /// The metrics endpoint's address, if serving.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// The UPnP mapper's status (gateway, external IP, port mappings), if UPnP is on: a
    /// [`watch`](tokio::sync::watch) receiver that sees every change, for address
    /// advertisement to read.
    ///
    /// How it relates to [`NodeOptions::external_address`] (`p2p.external_address`): that one
    /// is the operator's word and is what NodeInfo advertises; UPnP does not change it. UPnP's
    /// addresses are the node's own finding, confirmed by the gateway, for an advertiser to use
    /// when no external address is configured (address advertisement is not built yet).
    #[cfg(feature = "upnp")]
    pub fn upnp(&self) -> Option<tokio::sync::watch::Receiver<p2p::upnp::UpnpStatus>> {
        self.upnp.as_ref().map(p2p::upnp::Upnp::subscribe)
    }

    /// The addresses peers on the Internet can dial now through the UPnP mappings
    /// (`mconn://id@external-ip:port`, `quic://...`); empty if UPnP is off or has none yet.
    #[cfg(feature = "upnp")]
    pub fn upnp_addresses(&self) -> Vec<NodeAddress> {
        match &self.upnp {
            Some(upnp) => upnp_node_addresses(self.id(), &upnp.status()),
            None => Vec::new(),
        }
    }

    /// Stops gracefully: removes the UPnP mappings, closes connections after flushing their
    /// queues, writes the peer store.
    pub async fn stop(self) {
        #[cfg(feature = "upnp")]
        if let Some(upnp) = self.upnp {
            upnp.stop().await;
        }
        if let Some(m) = self.metrics {
            m.stop().await;
        }
        self.router.stop().await;
        for task in self.tasks {
            task.abort();
        }
    }
}

#[cfg(any(feature = "mconn", feature = "quic"))]
fn socket_address(protocol: Protocol, id: NodeId, addr: SocketAddr) -> NodeAddress {
    NodeAddress::new_host(protocol, id, p2p::Host::Ip(addr.ip()), addr.port())
}

/// The NodeAddresses of a UPnP status's mappings.
#[cfg(feature = "upnp")]
pub fn upnp_node_addresses(id: NodeId, status: &p2p::upnp::UpnpStatus) -> Vec<NodeAddress> {
    status
        .mappings
        .iter()
        .map(|m| {
            let ip = p2p::Host::Ip(m.external.ip());
            NodeAddress::new_host(m.protocol.protocol(), id, ip, m.external.port())
        })
        .collect()
}

/// Keeps the router's external addresses in step with the UPnP mappings.
#[cfg(feature = "upnp")]
async fn advertise_upnp(
    router: Arc<Router>,
    mut status: tokio::sync::watch::Receiver<p2p::upnp::UpnpStatus>,
) {
    let id = router.node_id();
    let mut current: Vec<NodeAddress> = Vec::new();
    loop {
        let now = upnp_node_addresses(id, &status.borrow_and_update());
        for gone in current.iter().filter(|a| !now.contains(a)) {
            router.remove_external_address(gone);
        }
        for new in now.iter().filter(|a| !current.contains(a)) {
            router.add_external_address(new.clone());
        }
        current = now;
        if status.changed().await.is_err() {
            for gone in &current {
                router.remove_external_address(gone);
            }
            return;
        }
    }
}

/// Starts the UPnP mapper for the socket listeners in `addresses` (loopback ones excepted).
#[cfg(feature = "upnp")]
fn start_upnp(
    config: &p2p::upnp::UpnpConfig,
    addresses: &[NodeAddress],
) -> Result<Option<p2p::upnp::Upnp>, p2p::upnp::UpnpError> {
    use p2p::upnp::PortRequest;
    let mut ports = Vec::new();
    let mut config = config.clone();
    for address in addresses {
        let Some((host, port)) = address.host_port() else { continue };
        if let p2p::Host::Ip(ip) = host {
            if ip.is_loopback() {
                continue;
            }
            // A listener bound to one address: the gateway forwards to that one.
            if !ip.is_unspecified() && config.local_ip.is_none() {
                config.local_ip = Some(*ip);
            }
        }
        if *address.protocol() == Protocol::MCONN {
            ports.push(PortRequest::mconn(port));
        } else if *address.protocol() == Protocol::QUIC || *address.protocol() == Protocol::LP2P {
            // lp2p shares the QUIC socket: one UDP mapping serves both.
            let udp = PortRequest::quic(port);
            if !ports.contains(&udp) {
                ports.push(udp);
            }
        }
    }
    if ports.is_empty() {
        tracing::warn!(
            "UPnP is on but no TCP or UDP listener is bound to a LAN address: nothing to map"
        );
        return Ok(None);
    }
    p2p::upnp::Upnp::spawn(config, &ports).map(Some)
}

#[cfg(all(test, feature = "mconn"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[tokio::test]
    async fn a_configured_external_address_is_confirmed_for_mconn_only() {
        let key = NodeKey::generate();
        let id = key.node_id();
        let mut options = NodeOptions::new(key, "ext").with_mconn("127.0.0.1:0".parse().unwrap());
        options.external_address = Some("203.0.113.5:26656".to_owned());
        let node = Node::start(options).await.unwrap();
        let expected: NodeAddress = format!("mconn://{id}@203.0.113.5:26656").parse().unwrap();
        assert_eq!(node.router().external_addresses(), vec![expected]);
        assert_eq!(node.router().node_info().listen_addr, "203.0.113.5:26656");
        node.stop().await;
    }
}
