//! [`MConnTransport`]: listens on and dials TCP for `mconn://` endpoints.

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use p2p::{Connection, Endpoint, EndpointAddr, Protocol, Transport, TransportError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::MConnConfig;
use crate::conn::MConnConnection;

/// The MConnection transport. Serves `mconn://` (legacy `id@host:port` addresses parse to it).
#[derive(Debug)]
pub struct MConnTransport {
    listener: Option<TcpListener>,
    local_addr: Option<SocketAddr>,
    config: MConnConfig,
    closed: watch::Sender<bool>,
}

impl MConnTransport {
    /// Listens on `addr` (port 0 picks a free port; see [`MConnTransport::local_addr`]).
    pub async fn bind(addr: SocketAddr, config: MConnConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener: Some(listener),
            local_addr: Some(local_addr),
            config,
            closed: watch::channel(false).0,
        })
    }

    /// A transport that only dials.
    pub fn dial_only(config: MConnConfig) -> Self {
        Self { listener: None, local_addr: None, config, closed: watch::channel(false).0 }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    fn endpoint(addr: SocketAddr) -> Endpoint {
        Endpoint { protocol: Protocol::MCONN, addr: EndpointAddr::Socket(addr) }
    }
}

#[async_trait]
impl Transport for MConnTransport {
    fn protocols(&self) -> Vec<Protocol> {
        vec![Protocol::MCONN]
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.local_addr.map(Self::endpoint).into_iter().collect()
    }

    async fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        let Some(listener) = &self.listener else {
            // Dial-only: never yields a connection; ends when closed.
            let mut closed = self.closed.subscribe();
            let _ = closed.wait_for(|c| *c).await;
            return Err(TransportError::Closed);
        };
        let mut closed = self.closed.subscribe();
        if *closed.borrow() {
            return Err(TransportError::Closed);
        }
        let (stream, remote) = tokio::select! {
            r = listener.accept() => r?,
            _ = closed.wait_for(|c| *c) => return Err(TransportError::Closed),
        };
        let local = stream.local_addr()?;
        Ok(Box::new(MConnConnection::new(
            stream,
            Self::endpoint(local),
            Self::endpoint(remote),
            self.config.clone(),
        )))
    }

    async fn dial(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>, TransportError> {
        if endpoint.protocol != Protocol::MCONN {
            return Err(TransportError::UnsupportedProtocol(endpoint.protocol.clone()));
        }
        let EndpointAddr::Socket(addr) = endpoint.addr else {
            return Err(TransportError::Refused(endpoint.clone()));
        };
        let stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => TransportError::Refused(endpoint.clone()),
            _ => TransportError::Io(e),
        })?;
        let local = stream.local_addr()?;
        Ok(Box::new(MConnConnection::new(
            stream,
            Self::endpoint(local),
            endpoint.clone(),
            self.config.clone(),
        )))
    }

    async fn close(&self) {
        self.closed.send_replace(true);
    }
}
