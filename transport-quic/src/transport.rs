//! [`QuicTransport`]: one quinn endpoint (one UDP socket) that listens on and dials `quic://`
//! endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use p2p::{Connection, Endpoint, EndpointAddr, NodeKey, Protocol, Transport, TransportError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use tokio::sync::watch;

use crate::conn::QuicConnection;
use crate::{DUMMY_SERVER_NAME, QUIC_ALPN, QuicConfig, QuicError, identity};

/// Most concurrent unidirectional streams a peer may open: one per channel ID.
const MAX_UNI_STREAMS: u32 = 256;
/// Most concurrent bidirectional streams a peer may open (the control stream needs one).
const MAX_BIDI_STREAMS: u32 = 4;

/// The QUIC transport. Serves `quic://`. Outbound connections use the listening UDP socket.
#[derive(Debug)]
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    client_config: quinn::ClientConfig,
    config: QuicConfig,
    closed: watch::Sender<bool>,
}

impl QuicTransport {
    /// Binds a UDP socket on `addr` (port 0 picks a free port; see
    /// [`QuicTransport::local_addr`]) and listens on it. Must be called inside a Tokio runtime.
    pub fn bind(addr: SocketAddr, key: &NodeKey, config: QuicConfig) -> Result<Self, QuicError> {
        let transport = Arc::new(transport_config(&config)?);
        let server_tls = QuicServerConfig::try_from(identity::server_config(key, QUIC_ALPN)?)
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(transport.clone());
        let client_tls = QuicClientConfig::try_from(identity::client_config(key, QUIC_ALPN, None)?)
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_tls));
        client_config.transport_config(transport);
        let endpoint = quinn::Endpoint::server(server, addr)?;
        let local_addr = endpoint.local_addr()?;
        Ok(Self { endpoint, local_addr, client_config, config, closed: watch::channel(false).0 })
    }

    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn endpoint(addr: SocketAddr) -> Endpoint {
        Endpoint { protocol: Protocol::QUIC, addr: EndpointAddr::Socket(addr) }
    }
}

fn transport_config(config: &QuicConfig) -> Result<quinn::TransportConfig, QuicError> {
    let idle = IdleTimeout::try_from(config.idle_timeout)
        .map_err(|e| QuicError::Config(format!("idle timeout: {e}")))?;
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(config.keep_alive_interval))
        .max_idle_timeout(Some(idle))
        .stream_receive_window(VarInt::from_u32(config.stream_receive_window))
        .receive_window(VarInt::from_u32(config.receive_window))
        .send_window(u64::from(config.receive_window))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS));
    Ok(t)
}

#[async_trait]
impl Transport for QuicTransport {
    fn protocols(&self) -> Vec<Protocol> {
        vec![Protocol::QUIC]
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        vec![Self::endpoint(self.local_addr)]
    }

    async fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        let mut closed = self.closed.subscribe();
        if *closed.borrow() {
            return Err(TransportError::Closed);
        }
        let incoming = tokio::select! {
            i = self.endpoint.accept() => i.ok_or(TransportError::Closed)?,
            _ = closed.wait_for(|c| *c) => return Err(TransportError::Closed),
        };
        let remote = Self::endpoint(incoming.remote_address());
        Ok(Box::new(QuicConnection::inbound(
            incoming,
            Self::endpoint(self.local_addr),
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
            .endpoint
            .connect_with(self.client_config.clone(), addr, DUMMY_SERVER_NAME)
            .map_err(|e| TransportError::Other(Box::new(e)))?;
        Ok(Box::new(QuicConnection::outbound(
            connecting,
            Self::endpoint(self.local_addr),
            endpoint.clone(),
            self.config.clone(),
        )))
    }

    async fn close(&self) {
        self.closed.send_replace(true);
        // Refuse new inbound connections; established ones and dials are unaffected.
        self.endpoint.set_server_config(None);
    }
}
