//! [`QuicTransport`]: serves `quic://` on a [`QuicEndpoint`] (one UDP socket for listening and
//! dialling, possibly shared with other QUIC protocols).

use std::net::{SocketAddr, UdpSocket};

use async_trait::async_trait;
use p2p::{Connection, Endpoint, EndpointAddr, NodeKey, Protocol, Transport, TransportError};
use p2p_quic_endpoint::{AlpnListener, QuicEndpoint, StreamLimits};

use crate::conn::QuicConnection;
use crate::{QUIC_ALPN, QuicConfig, QuicError};

/// The streams a `p2p-quic/1` peer may open before the handshake: the control stream (the
/// acceptor's) and 16 unidirectional channel streams. quinn allocates per-stream state for the
/// whole limit when a connection starts (about 48 bytes a stream: 256 cost 12 KiB of an idle
/// connection's 47), so the limit starts at what CometBFT's channel set needs and is set to our
/// channel count when the handshake ends (see `QuicConnection::handshake`).
pub(crate) const STREAM_LIMITS: StreamLimits = StreamLimits { bidi: 1, uni: 16 };

/// The QUIC transport. Serves `quic://`. Outbound connections use the listening UDP socket.
#[derive(Debug)]
pub struct QuicTransport {
    listener: AlpnListener,
    client_config: quinn::ClientConfig,
    config: QuicConfig,
}

impl QuicTransport {
    /// Binds a UDP socket on `addr` (port 0 picks a free port; see
    /// [`QuicTransport::local_addr`]) and listens on it. Must be called inside a Tokio runtime.
    pub fn bind(addr: SocketAddr, key: &NodeKey, config: QuicConfig) -> Result<Self, QuicError> {
        let endpoint = QuicEndpoint::bind(addr, key, config.endpoint_config())?;
        Self::on_endpoint(&endpoint, config)
    }

    /// Serves `p2p-quic/1` on `endpoint` (its node key is the transport's), which may serve
    /// other protocols too. `config`'s socket, keep-alive and window settings are the
    /// endpoint's business for inbound connections (see [`QuicConfig::endpoint_config`]); its
    /// other settings apply here.
    pub fn on_endpoint(endpoint: &QuicEndpoint, config: QuicConfig) -> Result<Self, QuicError> {
        let client_config = endpoint.client_config(QUIC_ALPN, STREAM_LIMITS)?;
        let listener = endpoint.listen(QUIC_ALPN, STREAM_LIMITS)?;
        Ok(Self { listener, client_config, config })
    }

    /// A non-blocking UDP socket bound to `addr`, with the send and receive buffers of
    /// [`QuicConfig::socket_buffer`] requested: the socket [`QuicTransport::bind`] uses (for
    /// raw quinn endpoints that should match it, such as benchmarks). A grant below the request
    /// (the kernel caps it) is logged as a warning, not an error.
    pub fn udp_socket(addr: SocketAddr, config: &QuicConfig) -> std::io::Result<UdpSocket> {
        p2p_quic_endpoint::udp_socket(addr, config.socket_buffer)
    }

    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.endpoint().local_addr()
    }

    /// The endpoint this transport serves on.
    pub fn endpoint(&self) -> &QuicEndpoint {
        self.listener.endpoint()
    }

    fn quic_endpoint(addr: SocketAddr) -> Endpoint {
        Endpoint { protocol: Protocol::QUIC, addr: EndpointAddr::Socket(addr) }
    }
}

#[async_trait]
impl Transport for QuicTransport {
    fn protocols(&self) -> Vec<Protocol> {
        vec![Protocol::QUIC]
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        vec![Self::quic_endpoint(self.local_addr())]
    }

    async fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        let accepted = self.listener.accept().await.ok_or(TransportError::Closed)?;
        let remote = Self::quic_endpoint(accepted.remote_address());
        Ok(Box::new(QuicConnection::inbound(
            accepted,
            Self::quic_endpoint(self.local_addr()),
            remote,
            self.config.clone(),
        )))
    }

    async fn dial(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>, TransportError> {
        if endpoint.protocol != Protocol::QUIC {
            return Err(TransportError::UnsupportedProtocol(endpoint.protocol.clone()));
        }
        let EndpointAddr::Socket(addr) = endpoint.addr else {
            return Err(TransportError::Refused(endpoint.clone()));
        };
        let connecting = self
            .listener
            .endpoint()
            .connect(self.client_config.clone(), addr)
            .map_err(|e| TransportError::Other(Box::new(e)))?;
        Ok(Box::new(QuicConnection::outbound(
            connecting,
            Self::quic_endpoint(self.local_addr()),
            endpoint.clone(),
            self.config.clone(),
        )))
    }

    async fn close(&self) {
        // Refuse new inbound connections; established ones and dials are unaffected.
        self.listener.close();
    }
}
