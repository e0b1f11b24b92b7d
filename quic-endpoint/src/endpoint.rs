//! [`QuicEndpoint`]: one UDP socket and quinn endpoint serving several QUIC protocols, told
//! apart by the ALPN protocol each client offers.

use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use p2p::NodeKey;
use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::identity::{self, DUMMY_SERVER_NAME, IdentityError};

/// Settings of a [`QuicEndpoint`]: the socket, and the QUIC transport parameters of the
/// connections it accepts (each protocol adds the stream limits it needs, see [`StreamLimits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Interval of QUIC keep-alive (PING) frames.
    pub keep_alive_interval: Duration,
    /// Idle timeout: a connection with no traffic (keep-alives count) for this long is dropped.
    pub idle_timeout: Duration,
    /// Receive window of each stream, in bytes.
    pub stream_receive_window: u32,
    /// Receive window of the whole connection, in bytes.
    pub receive_window: u32,
    /// Send and receive buffer requested for the UDP socket (`SO_SNDBUF` / `SO_RCVBUF`), in
    /// bytes; the kernel caps it (on Linux at `net.core.wmem_max` / `rmem_max`).
    pub socket_buffer: usize,
    /// Most inbound connections whose TLS ClientHello (and so ALPN) is still awaited; more are
    /// refused at once.
    pub max_pending: usize,
    /// Most connections of one protocol waiting for its transport to accept them; more are
    /// dropped.
    pub accept_queue: usize,
    /// How long an inbound connection may take to name its ALPN protocol (its ClientHello)
    /// before it is dropped.
    pub alpn_timeout: Duration,
    /// Congestion controller of every connection (both directions use their own sender's).
    pub congestion: Congestion,
}

/// Which congestion controller a QUIC sender runs (quinn's implementations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Congestion {
    /// CUBIC (RFC 9438), quinn's default: loss-based, like Linux TCP's default.
    Cubic,
    /// NewReno (RFC 9002 §7): loss-based, halves its window on every loss event.
    NewReno,
    /// BBR (version 1, quinn's port) as quinn runs it: model-based, ignores random loss, but
    /// quinn paces at `window / RTT` with BBR's window of two BDPs, so it overfills a
    /// drop-tail queue shallower than a BDP (see [`crate::congestion`]).
    Bbr,
    /// [`crate::congestion::CappedBbr`], the default: quinn's BBR with its window capped at
    /// 1.25 × the delivery rate it measures × (the minimum RTT + an ACK allowance of at most
    /// 1 ms), so it neither backs off on random loss nor overfills a shallow bottleneck queue.
    #[default]
    BbrCapped,
}

impl std::str::FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cubic" => Ok(Self::Cubic),
            "newreno" => Ok(Self::NewReno),
            "bbr" => Ok(Self::Bbr),
            "bbr-capped" => Ok(Self::BbrCapped),
            other => Err(format!(
                "unknown congestion controller {other:?} (cubic, newreno, bbr, bbr-capped)"
            )),
        }
    }
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cubic => "cubic",
            Self::NewReno => "newreno",
            Self::Bbr => "bbr",
            Self::BbrCapped => "bbr-capped",
        })
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            stream_receive_window: 4 << 20,
            receive_window: 16 << 20,
            socket_buffer: 4 << 20,
            max_pending: 64,
            accept_queue: 64,
            alpn_timeout: Duration::from_secs(5),
            congestion: Congestion::default(),
        }
    }
}

/// How many concurrent streams of each kind a protocol lets a peer open. An endpoint serving
/// several protocols advertises the largest of each (a protocol that does not use a kind of
/// stream refuses such streams itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamLimits {
    /// Bidirectional streams.
    pub bidi: u32,
    /// Unidirectional streams.
    pub uni: u32,
}

impl StreamLimits {
    /// The larger of each limit.
    pub fn max(self, other: Self) -> Self {
        Self { bidi: self.bidi.max(other.bidi), uni: self.uni.max(other.uni) }
    }
}

impl EndpointConfig {
    /// The quinn transport configuration of this endpoint with the given stream limits (for
    /// dials of one protocol, or the accepting side of all of them).
    pub fn transport_config(
        &self,
        limits: StreamLimits,
    ) -> Result<quinn::TransportConfig, EndpointError> {
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| EndpointError::Config(format!("idle timeout: {e}")))?;
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive_interval))
            .max_idle_timeout(Some(idle))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.receive_window))
            .send_window(u64::from(self.receive_window))
            .max_concurrent_uni_streams(VarInt::from_u32(limits.uni))
            .max_concurrent_bidi_streams(VarInt::from_u32(limits.bidi));
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            Congestion::NewReno => t.congestion_controller_factory(Arc::new(
                quinn::congestion::NewRenoConfig::default(),
            )),
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
            Congestion::BbrCapped => t.congestion_controller_factory(Arc::new(
                crate::congestion::CappedBbrConfig::default(),
            )),
        };
        Ok(t)
    }
}

/// Why an endpoint could not be created or a protocol not served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The TLS identity could not be built.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The TLS configuration is unusable for QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
    /// The transport configuration is invalid.
    #[error("invalid QUIC configuration: {0}")]
    Config(String),
    /// Another transport already serves this ALPN protocol on the endpoint.
    #[error("ALPN protocol {0:?} is already served on this endpoint")]
    AlreadyServed(String),
    /// Binding the UDP socket, or dialling, failed.
    #[error("QUIC endpoint I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// quinn refused to start a connection (e.g. an invalid remote address).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
}

/// A non-blocking UDP socket bound to `addr`, with `buffer` bytes of send and receive buffer
/// requested. A grant below the request (the kernel caps it) is logged as a warning, not an
/// error.
pub fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(SockProtocol::UDP))?;
    // Best effort: a refused size leaves the default, which the check below reports.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    // Linux reports twice the size it granted (the doubling covers its own bookkeeping).
    let scale = if cfg!(target_os = "linux") { 2 } else { 1 };
    let recv = socket.recv_buffer_size().unwrap_or(0) / scale;
    let send = socket.send_buffer_size().unwrap_or(0) / scale;
    if recv < buffer || send < buffer {
        warn!(
            wanted = buffer,
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

/// Counters of a [`QuicEndpoint`]'s dispatcher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Inbound connections handed to the transport of their ALPN protocol.
    pub routed: u64,
    /// Inbound connections whose TLS handshake failed before naming a protocol served here
    /// (no common ALPN, bad ClientHello); handed to the first protocol's transport, which
    /// reports the failure.
    pub failed_alpn: u64,
    /// Inbound connections refused because [`EndpointConfig::max_pending`] were already
    /// waiting for their ClientHello.
    pub refused_pending: u64,
    /// Inbound connections dropped because their ALPN did not arrive within
    /// [`EndpointConfig::alpn_timeout`].
    pub timed_out: u64,
    /// Inbound connections dropped because their protocol's accept queue was full.
    pub dropped_full: u64,
}

#[derive(Debug, Default)]
struct Counters {
    routed: AtomicU64,
    failed_alpn: AtomicU64,
    refused_pending: AtomicU64,
    timed_out: AtomicU64,
    dropped_full: AtomicU64,
}

struct Route {
    alpn: Vec<u8>,
    limits: StreamLimits,
    tx: mpsc::Sender<Accepted>,
    id: u64,
}

#[derive(Default)]
struct Routes {
    entries: Vec<Route>,
    next_id: u64,
}

struct Inner {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    key: NodeKey,
    config: EndpointConfig,
    routes: Arc<Mutex<Routes>>,
    counters: Arc<Counters>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.dispatcher).take() {
            task.abort();
        }
        self.endpoint.set_server_config(None);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One UDP socket and quinn endpoint for dialling and accepting QUIC connections of several
/// protocols: the native `p2p-quic/1` and CometBFT's `lp2p` (ALPN `libp2p`) share a port this
/// way, as a Go lp2p node expects its peers to listen where they dial from.
///
/// Each transport [`listen`](Self::listen)s for its ALPN protocol; the endpoint offers every
/// registered protocol in its TLS configuration (the node key's libp2p certificate), reads each
/// inbound connection's ClientHello, and hands the connection to the transport of the protocol
/// the client named. A client offering none of them fails its TLS handshake (alert
/// `no_application_protocol`); that connection goes to the first registered transport, which
/// reports the failure. Bounded: at most [`EndpointConfig::max_pending`] connections wait for
/// their ClientHello, at most [`EndpointConfig::accept_queue`] per protocol for their transport.
///
/// Cheap to clone (a handle); the endpoint lives while a handle or a listener does.
#[derive(Clone)]
pub struct QuicEndpoint {
    inner: Arc<Inner>,
}

impl fmt::Debug for QuicEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alpns: Vec<String> = self.alpns().iter().map(|a| alpn_text(a)).collect();
        f.debug_struct("QuicEndpoint")
            .field("local_addr", &self.inner.local_addr)
            .field("alpns", &alpns)
            .finish_non_exhaustive()
    }
}

fn alpn_text(alpn: &[u8]) -> String {
    String::from_utf8_lossy(alpn).into_owned()
}

impl QuicEndpoint {
    /// Binds a UDP socket on `addr` (port 0 picks a free port; see
    /// [`local_addr`](Self::local_addr)). It accepts nothing until a protocol is served with
    /// [`listen`](Self::listen). Must be called inside a Tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        key: &NodeKey,
        config: EndpointConfig,
    ) -> Result<Self, EndpointError> {
        let socket = udp_socket(addr, config.socket_buffer)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let local_addr = endpoint.local_addr()?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                local_addr,
                key: key.clone(),
                config,
                routes: Arc::default(),
                counters: Arc::default(),
                dispatcher: Mutex::new(None),
            }),
        })
    }

    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The node key the endpoint's certificates prove.
    pub fn node_key(&self) -> &NodeKey {
        &self.inner.key
    }

    /// The endpoint's settings.
    pub fn config(&self) -> &EndpointConfig {
        &self.inner.config
    }

    /// The ALPN protocols served, in order of registration.
    pub fn alpns(&self) -> Vec<Vec<u8>> {
        lock(&self.inner.routes).entries.iter().map(|r| r.alpn.clone()).collect()
    }

    /// The dispatcher's counters.
    pub fn stats(&self) -> EndpointStats {
        let c = &self.inner.counters;
        EndpointStats {
            routed: c.routed.load(Ordering::Relaxed),
            failed_alpn: c.failed_alpn.load(Ordering::Relaxed),
            refused_pending: c.refused_pending.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            dropped_full: c.dropped_full.load(Ordering::Relaxed),
        }
    }

    /// Serves `alpn`: inbound connections that name it are queued for the returned listener,
    /// whose peers may open up to `limits` streams (the endpoint advertises the largest limits
    /// of all its protocols). Serving stops when the listener is closed or dropped.
    pub fn listen(&self, alpn: &[u8], limits: StreamLimits) -> Result<AlpnListener, EndpointError> {
        let (tx, rx) = mpsc::channel(self.inner.config.accept_queue.max(1));
        let id = {
            let mut routes = lock(&self.inner.routes);
            if routes.entries.iter().any(|r| r.alpn == alpn) {
                return Err(EndpointError::AlreadyServed(alpn_text(alpn)));
            }
            let id = routes.next_id;
            routes.next_id += 1;
            routes.entries.push(Route { alpn: alpn.to_vec(), limits, tx, id });
            if let Err(e) = self.apply(&routes) {
                routes.entries.retain(|r| r.id != id);
                return Err(e);
            }
            id
        };
        self.start_dispatcher();
        Ok(AlpnListener {
            endpoint: self.clone(),
            alpn: alpn.to_vec(),
            id,
            rx: tokio::sync::Mutex::new(rx),
            closed: watch::channel(false).0,
        })
    }

    /// Starts a connection to `addr` with `config` (its TLS configuration names the protocol).
    pub fn connect(
        &self,
        config: quinn::ClientConfig,
        addr: SocketAddr,
    ) -> Result<quinn::Connecting, EndpointError> {
        Ok(self.inner.endpoint.connect_with(config, addr, DUMMY_SERVER_NAME)?)
    }

    /// A client configuration for dialling with `alpn`: the node key's certificate, the
    /// endpoint's transport settings with `limits`, no expected peer (the caller checks the
    /// authenticated key).
    pub fn client_config(
        &self,
        alpn: &[u8],
        limits: StreamLimits,
    ) -> Result<quinn::ClientConfig, EndpointError> {
        let tls = identity::client_config(&self.inner.key, alpn, None)?;
        let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| EndpointError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(tls));
        config.transport_config(Arc::new(self.inner.config.transport_config(limits)?));
        Ok(config)
    }

    /// Installs the server configuration for the registered protocols (none: refuse all).
    fn apply(&self, routes: &Routes) -> Result<(), EndpointError> {
        if routes.entries.is_empty() {
            self.inner.endpoint.set_server_config(None);
            return Ok(());
        }
        let alpns: Vec<&[u8]> = routes.entries.iter().map(|r| r.alpn.as_slice()).collect();
        let limits = routes.entries.iter().fold(StreamLimits::default(), |l, r| l.max(r.limits));
        let tls = identity::server_config_for(&self.inner.key, &alpns)?;
        let tls = QuicServerConfig::try_from(tls).map_err(|e| EndpointError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls));
        server.transport_config(Arc::new(self.inner.config.transport_config(limits)?));
        self.inner.endpoint.set_server_config(Some(server));
        Ok(())
    }

    fn unregister(&self, id: u64) {
        let mut routes = lock(&self.inner.routes);
        let before = routes.entries.len();
        routes.entries.retain(|r| r.id != id);
        if routes.entries.len() != before
            && let Err(e) = self.apply(&routes)
        {
            warn!(error = %e, "QUIC endpoint: could not rebuild the server configuration");
        }
    }

    fn start_dispatcher(&self) {
        let mut task = lock(&self.inner.dispatcher);
        if task.is_some() {
            return;
        }
        *task = Some(tokio::spawn(dispatch_loop(
            self.inner.endpoint.clone(),
            self.inner.routes.clone(),
            self.inner.counters.clone(),
            self.inner.config.clone(),
        )));
    }
}

/// Accepts inbound connections and hands each to the protocol its client names.
async fn dispatch_loop(
    endpoint: quinn::Endpoint,
    routes: Arc<Mutex<Routes>>,
    counters: Arc<Counters>,
    config: EndpointConfig,
) {
    let pending = Arc::new(Semaphore::new(config.max_pending.max(1)));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            counters.refused_pending.fetch_add(1, Ordering::Relaxed);
            debug!(remote = %incoming.remote_address(), "QUIC: too many handshakes pending, refused");
            incoming.refuse();
            continue;
        };
        tokio::spawn(dispatch(
            incoming,
            routes.clone(),
            counters.clone(),
            config.alpn_timeout,
            permit,
        ));
    }
}

async fn dispatch(
    incoming: quinn::Incoming,
    routes: Arc<Mutex<Routes>>,
    counters: Arc<Counters>,
    alpn_timeout: Duration,
    permit: OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let (accepted, alpn) = match incoming.accept() {
        Ok(mut connecting) => {
            match tokio::time::timeout(alpn_timeout, connecting.handshake_data()).await {
                Ok(Ok(data)) => (
                    Accepted::Connecting(connecting),
                    data.downcast::<HandshakeData>().ok().and_then(|d| d.protocol),
                ),
                Ok(Err(_)) => (Accepted::Connecting(connecting), None),
                Err(_) => {
                    counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    debug!(%remote, "QUIC: no ClientHello in time, dropped");
                    return;
                }
            }
        }
        // The ClientHello was in the first packet and failed at once (e.g. no common ALPN).
        Err(error) => (Accepted::Failed { remote, error }, None),
    };
    drop(permit);
    let tx = {
        let routes = lock(&routes);
        let exact = alpn.as_ref().and_then(|a| routes.entries.iter().find(|r| r.alpn == *a));
        match exact {
            Some(route) => Some(route.tx.clone()),
            None => {
                counters.failed_alpn.fetch_add(1, Ordering::Relaxed);
                routes.entries.first().map(|r| r.tx.clone())
            }
        }
    };
    let Some(tx) = tx else { return };
    match tx.try_send(accepted) {
        Ok(()) => {
            if alpn.is_some() {
                counters.routed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            counters.dropped_full.fetch_add(1, Ordering::Relaxed);
            debug!(%remote, "QUIC: accept queue full, connection dropped");
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// An inbound connection handed to a protocol's transport by [`AlpnListener::accept`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Accepted {
    /// Its TLS handshake is under way (the client named this protocol, or failed later in the
    /// handshake: awaiting it reports how).
    Connecting(quinn::Connecting),
    /// It failed before a connection existed, in its first packet (for example no common ALPN
    /// protocol): handed to the endpoint's first protocol so that its transport reports it.
    Failed {
        /// The client's address.
        remote: SocketAddr,
        /// Why it failed.
        error: quinn::ConnectionError,
    },
}

impl Accepted {
    /// The client's address.
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Self::Connecting(c) => c.remote_address(),
            Self::Failed { remote, .. } => *remote,
        }
    }
}

/// Inbound connections of one ALPN protocol of a [`QuicEndpoint`]. Dropping it stops serving
/// the protocol.
pub struct AlpnListener {
    endpoint: QuicEndpoint,
    alpn: Vec<u8>,
    id: u64,
    rx: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    closed: watch::Sender<bool>,
}

impl fmt::Debug for AlpnListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlpnListener")
            .field("alpn", &alpn_text(&self.alpn))
            .field("local_addr", &self.endpoint.local_addr())
            .finish_non_exhaustive()
    }
}

impl AlpnListener {
    /// The endpoint this listener belongs to.
    pub fn endpoint(&self) -> &QuicEndpoint {
        &self.endpoint
    }

    /// The next inbound connection of this protocol: its client named the protocol or, if
    /// this is the endpoint's first protocol, failed before naming one; `None` once
    /// [`close`](Self::close)d.
    pub async fn accept(&self) -> Option<Accepted> {
        let mut closed = self.closed.subscribe();
        if *closed.borrow() {
            return None;
        }
        let mut rx = tokio::select! {
            rx = self.rx.lock() => rx,
            _ = closed.wait_for(|c| *c) => return None,
        };
        tokio::select! {
            c = rx.recv() => c,
            _ = closed.wait_for(|c| *c) => None,
        }
    }

    /// Stops serving the protocol: new connections naming it fail their TLS handshake, pending
    /// and later [`accept`](Self::accept)s return `None`. Established connections are not
    /// affected. Idempotent.
    pub fn close(&self) {
        if !self.closed.send_replace(true) {
            self.endpoint.unregister(self.id);
        }
    }
}

impl Drop for AlpnListener {
    fn drop(&mut self) {
        self.close();
    }
}
