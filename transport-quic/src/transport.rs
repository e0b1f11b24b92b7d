//! [`QuicTransport`]: one quinn endpoint (one UDP socket) that listens on and dials `quic://`
//! endpoints.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use async_trait::async_trait;
use p2p::{Connection, Endpoint, EndpointAddr, NodeKey, Protocol, Transport, TransportError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::sync::watch;
use tracing::warn;

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
        let socket = Self::udp_socket(addr, &config)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let local_addr = endpoint.local_addr()?;
        Ok(Self { endpoint, local_addr, client_config, config, closed: watch::channel(false).0 })
    }

    /// A non-blocking UDP socket bound to `addr`, with the send and receive buffers of
    /// [`QuicConfig::socket_buffer`] requested: the socket [`QuicTransport::bind`] uses (for
    /// raw quinn endpoints that should match it, such as benchmarks). A grant below the request
    /// (the kernel caps it) is logged as a warning, not an error.
    pub fn udp_socket(addr: SocketAddr, config: &QuicConfig) -> std::io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(SockProtocol::UDP))?;
        let want = config.socket_buffer;
        // Best effort: a refused size leaves the default, which the check below reports.
        let _ = socket.set_recv_buffer_size(want);
        let _ = socket.set_send_buffer_size(want);
        // Linux reports twice the size it granted (the doubling covers its own bookkeeping).
        let scale = if cfg!(target_os = "linux") { 2 } else { 1 };
        let recv = socket.recv_buffer_size().unwrap_or(0) / scale;
        let send = socket.send_buffer_size().unwrap_or(0) / scale;
        if recv < want || send < want {
            warn!(
                wanted = want,
                receive = recv,
                send,
                "UDP socket buffers smaller than requested (raise net.core.rmem_max and \
                 net.core.wmem_max): bursts beyond them are dropped and wait for loss recovery"
            );
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket.into())
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
