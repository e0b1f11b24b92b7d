//! [`Lp2pTransport`]: serves `lp2p://` on a [`QuicEndpoint`] (ALPN `libp2p`).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use p2p::{Connection, Endpoint, EndpointAddr, NodeKey, Protocol, Transport, TransportError};
use p2p_quic_endpoint::{AlpnListener, EndpointConfig, QuicEndpoint, StreamLimits};

use crate::conn::Lp2pConnection;
use crate::{LP2P_ALPN, Lp2pConfig, Lp2pError};

/// The lp2p transport: libp2p over QUIC, as CometBFT v0.40's `lp2p` speaks it. Serves `lp2p://`;
/// dials from the listening UDP socket (a Go node redials the address it sees us at).
#[derive(Debug)]
pub struct Lp2pTransport {
    listener: AlpnListener,
    client_config: quinn::ClientConfig,
    config: Arc<Lp2pConfig>,
}

impl Lp2pTransport {
    /// Binds a UDP socket on `addr` (port 0 picks a free port) with `endpoint` settings and
    /// serves lp2p on it. Must be called inside a Tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        key: &NodeKey,
        endpoint: EndpointConfig,
        config: Lp2pConfig,
    ) -> Result<Self, Lp2pError> {
        let endpoint = QuicEndpoint::bind(addr, key, endpoint)?;
        Self::on_endpoint(&endpoint, config)
    }

    /// Serves lp2p (ALPN `libp2p`) on `endpoint`, which may serve `p2p-quic/1` too: the node
    /// key of the endpoint is the transport's.
    pub fn on_endpoint(endpoint: &QuicEndpoint, config: Lp2pConfig) -> Result<Self, Lp2pError> {
        // Peers open one bidirectional stream per message; lp2p uses no unidirectional ones.
        let limits = StreamLimits { bidi: config.max_inbound_streams, uni: 0 };
        let client_config = endpoint.client_config(LP2P_ALPN, limits)?;
        let listener = endpoint.listen(LP2P_ALPN, limits)?;
        Ok(Self { listener, client_config, config: Arc::new(config) })
    }

    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.endpoint().local_addr()
    }

    /// The endpoint this transport serves on.
    pub fn endpoint(&self) -> &QuicEndpoint {
        self.listener.endpoint()
    }

    /// Our libp2p peer ID (`12D3KooW…`), the ID Go nodes know us by.
    pub fn peer_id(&self) -> String {
        p2p::peer_id::libp2p_peer_id(&self.endpoint().node_key().public_key())
    }

    /// [`Transport::accept`] with the concrete connection type (for its
    /// [`stats`](Lp2pConnection::stats) and [`ping`](Lp2pConnection::ping)).
    pub async fn accept_connection(&self) -> Result<Lp2pConnection, TransportError> {
        let accepted = self.listener.accept().await.ok_or(TransportError::Closed)?;
        let remote = Self::lp2p_endpoint(accepted.remote_address());
        let local = self.local_addr();
        Ok(Lp2pConnection::inbound(
            accepted,
            Self::lp2p_endpoint(local),
            remote,
            local,
            self.config.clone(),
        ))
    }

    /// [`Transport::dial`] of `lp2p` at `addr`, with the concrete connection type.
    pub fn dial_connection(&self, addr: SocketAddr) -> Result<Lp2pConnection, TransportError> {
        let connecting = self
            .endpoint()
            .connect(self.client_config.clone(), addr)
            .map_err(|e| TransportError::Other(Box::new(e)))?;
        let local = self.local_addr();
        Ok(Lp2pConnection::outbound(
            connecting,
            Self::lp2p_endpoint(local),
            Self::lp2p_endpoint(addr),
            local,
            self.config.clone(),
        ))
    }

    fn lp2p_endpoint(addr: SocketAddr) -> Endpoint {
        Endpoint::socket(Protocol::LP2P, addr)
    }
}

#[async_trait]
impl Transport for Lp2pTransport {
    fn protocols(&self) -> Vec<Protocol> {
        vec![Protocol::LP2P]
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        vec![Self::lp2p_endpoint(self.local_addr())]
    }

    async fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        Ok(Box::new(self.accept_connection().await?))
    }

    async fn dial(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>, TransportError> {
        if endpoint.protocol != Protocol::LP2P {
            return Err(TransportError::UnsupportedProtocol(endpoint.protocol.clone()));
        }
        let EndpointAddr::Socket(addr) = endpoint.addr else {
            return Err(TransportError::Refused(endpoint.clone()));
        };
        Ok(Box::new(self.dial_connection(addr)?))
    }

    async fn close(&self) {
        self.listener.close();
    }
}
