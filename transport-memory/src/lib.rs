//! In-process memory transport for `memory:<node-id>` addresses.
//!
//! A [`MemoryNetwork`] connects [`MemoryTransport`]s inside one process. Connections behave like
//! the real transports where it matters to the layers above:
//!
//! * the same handshake semantics: each side proves its ed25519 key by signing a fresh nonce of
//!   the other side, and the NodeInfo travels as its protobuf encoding;
//! * bounded buffers: [`Connection::send`] waits while the peer's buffer is full
//!   ([`MemoryNetworkConfig::connection_buffer`] messages per direction);
//! * per-channel receive limits from the channel descriptors;
//! * close implies flush: the close frame queues behind every message `send` accepted, the peer
//!   reads them and then gets [`ConnectionError::Closed`]; afterwards `send` and `receive` fail
//!   on both ends instead of waiting (checked by the `p2p::conformance` suite).
//!
//! For tests of the layers above it injects faults per directed link ([`LinkConfig`]): latency,
//! silently dropped messages, a paused link (sends stall, as with a peer that stopped reading),
//! plus [`MemoryNetwork::disconnect`] to cut every connection between two nodes and
//! [`MemoryNetwork::inject_accept_errors`] to make a listener's accept fail.
//!
//! # Example: two nodes and the echo channel
//!
//! ```
//! use std::sync::Arc;
//!
//! use p2p::echo::{Echo, echo_channel_descriptor};
//! use p2p::{NodeInfo, NodeKey, Outbound, PeerManagerConfig, PeerStatus, Router, RouterConfig};
//! use p2p_transport_memory::MemoryNetwork;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let net = MemoryNetwork::default();
//! let mut nodes = Vec::new();
//! for moniker in ["alice", "bob"] {
//!     let key = NodeKey::generate();
//!     let info = NodeInfo::new(key.node_id(), "doc-chain", moniker, []);
//!     let router =
//!         Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)?;
//!     router.add_transport(Arc::new(net.transport(router.node_id())?))?;
//!     let channel = router.open_channel::<Echo>(echo_channel_descriptor())?;
//!     let updates = router.subscribe();
//!     router.start()?;
//!     nodes.push((router, channel, updates));
//! }
//! let bob = nodes[1].0.node_id();
//! nodes[0].0.add_address(format!("memory:{bob}").parse()?)?; // alice's PeerManager dials bob
//! let update = nodes[0].2.recv().await?;
//! assert_eq!((update.node_id, update.status), (bob, PeerStatus::Up));
//! nodes[0].1.send(Outbound::to(bob, Echo::Ping("hi".into()))).await?;
//! let envelope = nodes[1].1.recv().await.expect("bob's channel is open");
//! assert_eq!(envelope.message, Echo::Ping("hi".into()));
//! for (router, _, _) in &nodes {
//!     router.stop().await;
//! }
//! # Ok(())
//! # }
//! ```

pub mod testkit;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use p2p::router::ChannelDescriptor;
use p2p::{
    ChannelId, Connection, ConnectionError, Endpoint, EndpointAddr, HandshakeError, NodeId,
    NodeInfo, NodeKey, Protocol, Transport, TransportError,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

/// Domain separation for the handshake signature.
const HANDSHAKE_DOMAIN: &[u8] = b"p2p-memory-handshake-v1";

/// Settings of a [`MemoryNetwork`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemoryNetworkConfig {
    /// Messages buffered per connection direction before `send` waits. Default 64.
    pub connection_buffer: usize,
    /// Connections waiting to be accepted per listener before dials are refused. Default 64.
    pub accept_backlog: usize,
}

impl Default for MemoryNetworkConfig {
    fn default() -> Self {
        Self { connection_buffer: 64, accept_backlog: 64 }
    }
}

/// Fault injection for one direction of the links between two nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkConfig {
    /// Delay added to every message (order is kept).
    pub latency: Duration,
    /// Discard every message silently.
    pub drop_messages: bool,
    /// Make `send` wait (as if the peer stopped reading) until unpaused.
    pub paused: bool,
}

#[derive(Debug)]
struct Link {
    config: watch::Sender<LinkConfig>,
}

#[derive(Debug, Default)]
struct Severed {
    flag: AtomicBool,
    notify: Notify,
}

impl Severed {
    fn sever(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
    fn is_severed(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct NetState {
    listeners: HashMap<NodeId, mpsc::Sender<MemoryConnection>>,
    links: HashMap<(NodeId, NodeId), Arc<Link>>,
    pairs: HashMap<(NodeId, NodeId), Vec<Weak<Severed>>>,
    accept_faults: HashMap<NodeId, Arc<AtomicU32>>,
}

struct NetInner {
    config: MemoryNetworkConfig,
    state: Mutex<NetState>,
}

impl NetInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn link(&self, from: NodeId, to: NodeId) -> Arc<Link> {
        self.lock()
            .links
            .entry((from, to))
            .or_insert_with(|| Arc::new(Link { config: watch::channel(LinkConfig::default()).0 }))
            .clone()
    }
}

/// An in-process network of memory transports.
#[derive(Clone)]
pub struct MemoryNetwork {
    inner: Arc<NetInner>,
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNetwork").field("config", &self.inner.config).finish()
    }
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        Self::new(MemoryNetworkConfig::default())
    }
}

/// Errors from [`MemoryNetwork::transport`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryNetworkError {
    /// A transport for this node ID already exists in the network.
    #[error("a memory transport for node {0} already exists in this network")]
    AlreadyListening(NodeId),
}

impl MemoryNetwork {
    /// A new, empty network.
    pub fn new(config: MemoryNetworkConfig) -> Self {
        Self { inner: Arc::new(NetInner { config, state: Mutex::new(NetState::default()) }) }
    }

    /// Creates the transport of a node; it listens on `memory:<node_id>`.
    pub fn transport(&self, node_id: NodeId) -> Result<MemoryTransport, MemoryNetworkError> {
        let (tx, rx) = mpsc::channel(self.inner.config.accept_backlog.max(1));
        let faults = Arc::new(AtomicU32::new(0));
        {
            let mut st = self.inner.lock();
            if st.listeners.get(&node_id).is_some_and(|l| !l.is_closed()) {
                return Err(MemoryNetworkError::AlreadyListening(node_id));
            }
            st.listeners.insert(node_id, tx.clone());
            st.accept_faults.insert(node_id, faults.clone());
        }
        Ok(MemoryTransport {
            network: self.inner.clone(),
            node_id,
            accept: tokio::sync::Mutex::new(rx),
            closed: watch::channel(false).0,
            faults,
            listener: tx,
        })
    }

    /// Sets the fault configuration of the direction `from → to` (all current and future
    /// connections between the two nodes).
    pub fn set_link(&self, from: NodeId, to: NodeId, config: LinkConfig) {
        self.inner.link(from, to).config.send_replace(config);
    }

    /// Cuts every current connection between `a` and `b` (both directions fail with
    /// [`ConnectionError::Closed`]).
    pub fn disconnect(&self, a: NodeId, b: NodeId) {
        let key = if a < b { (a, b) } else { (b, a) };
        let pairs = self.inner.lock().pairs.remove(&key).unwrap_or_default();
        for p in pairs.iter().filter_map(Weak::upgrade) {
            p.sever();
        }
    }

    /// Makes the next `count` accept calls of `node`'s transport fail with an I/O error.
    pub fn inject_accept_errors(&self, node: NodeId, count: u32) {
        if let Some(f) = self.inner.lock().accept_faults.get(&node) {
            f.fetch_add(count, Ordering::AcqRel);
        }
    }
}

fn memory_endpoint(id: NodeId) -> Endpoint {
    Endpoint { protocol: Protocol::MEMORY, addr: EndpointAddr::Path(id.to_string()) }
}

/// A node's memory transport: listens on `memory:<node_id>` and dials other nodes of the same
/// [`MemoryNetwork`].
pub struct MemoryTransport {
    network: Arc<NetInner>,
    node_id: NodeId,
    accept: tokio::sync::Mutex<mpsc::Receiver<MemoryConnection>>,
    closed: watch::Sender<bool>,
    faults: Arc<AtomicU32>,
    /// Our entry in the network's listener table (to remove exactly it on drop).
    listener: mpsc::Sender<MemoryConnection>,
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport").field("node_id", &self.node_id).finish()
    }
}

impl MemoryTransport {
    /// The endpoint this transport listens on.
    pub fn endpoint(&self) -> Endpoint {
        memory_endpoint(self.node_id)
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn protocols(&self) -> Vec<Protocol> {
        vec![Protocol::MEMORY]
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        vec![self.endpoint()]
    }

    async fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        if self
            .faults
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(TransportError::Io(std::io::Error::other("injected accept fault")));
        }
        let mut closed = self.closed.subscribe();
        let mut rx = self.accept.lock().await;
        tokio::select! {
            c = rx.recv() => c.map(|c| Box::new(c) as Box<dyn Connection>).ok_or(TransportError::Closed),
            _ = closed.wait_for(|c| *c) => Err(TransportError::Closed),
        }
    }

    async fn dial(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>, TransportError> {
        if endpoint.protocol != Protocol::MEMORY {
            return Err(TransportError::UnsupportedProtocol(endpoint.protocol.clone()));
        }
        let EndpointAddr::Path(path) = &endpoint.addr else {
            return Err(TransportError::Refused(endpoint.clone()));
        };
        let target: NodeId = path.parse().map_err(|e| TransportError::Other(Box::new(e)))?;
        let listener = self.network.lock().listeners.get(&target).cloned();
        let Some(listener) = listener else {
            return Err(TransportError::Refused(endpoint.clone()));
        };
        let (ours, theirs) = self.pair(target);
        listener.try_send(theirs).map_err(|_| TransportError::Refused(endpoint.clone()))?;
        Ok(Box::new(ours))
    }

    async fn close(&self) {
        self.closed.send_replace(true);
        let mut st = self.network.lock();
        if st.listeners.get(&self.node_id).is_some_and(|l| l.same_channel(&self.listener)) {
            st.listeners.remove(&self.node_id);
        }
    }
}

impl MemoryTransport {
    fn pair(&self, target: NodeId) -> (MemoryConnection, MemoryConnection) {
        let cap = self.network.config.connection_buffer.max(1);
        let (a_tx, b_rx) = mpsc::channel(cap);
        let (b_tx, a_rx) = mpsc::channel(cap);
        let severed = Arc::new(Severed::default());
        let key =
            if self.node_id < target { (self.node_id, target) } else { (target, self.node_id) };
        {
            let mut st = self.network.lock();
            let list = st.pairs.entry(key).or_default();
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&severed));
        }
        let out_link = self.network.link(self.node_id, target).config.subscribe();
        let in_link = self.network.link(target, self.node_id).config.subscribe();
        let a = MemoryConnection::new(self.node_id, target, a_tx, a_rx, out_link, severed.clone());
        let b = MemoryConnection::new(target, self.node_id, b_tx, b_rx, in_link, severed);
        (a, b)
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        let mut st = self.network.lock();
        if st.listeners.get(&self.node_id).is_some_and(|l| l.same_channel(&self.listener)) {
            st.listeners.remove(&self.node_id);
        }
    }
}

#[derive(Debug)]
enum Frame {
    Hello([u8; 32]),
    Auth { node_info: Bytes, public_key: [u8; 32], signature: [u8; 64] },
    Message { channel: ChannelId, payload: Bytes, deliver_at: Option<Instant> },
    Close,
}

/// One end of a memory connection.
pub struct MemoryConnection {
    local: NodeId,
    remote: NodeId,
    tx: mpsc::Sender<Frame>,
    rx: Mutex<mpsc::Receiver<Frame>>,
    link: watch::Receiver<LinkConfig>,
    severed: Arc<Severed>,
    /// Maximum message size per channel byte (`None`: we do not have the channel).
    limits: Vec<Option<usize>>,
    /// We closed the connection: `send` and `receive` fail from now on.
    closed: AtomicBool,
    /// Wakes a `receive` that waits while we close.
    close_notify: Notify,
    /// The peer's close frame arrived: it neither reads nor writes any more.
    peer_closed: AtomicBool,
}

impl fmt::Debug for MemoryConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConnection")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish()
    }
}

impl MemoryConnection {
    fn new(
        local: NodeId,
        remote: NodeId,
        tx: mpsc::Sender<Frame>,
        rx: mpsc::Receiver<Frame>,
        link: watch::Receiver<LinkConfig>,
        severed: Arc<Severed>,
    ) -> Self {
        Self {
            local,
            remote,
            tx,
            rx: Mutex::new(rx),
            link,
            severed,
            limits: Vec::new(),
            closed: AtomicBool::new(false),
            close_notify: Notify::new(),
            peer_closed: AtomicBool::new(false),
        }
    }

    /// Whether either side closed the connection or the network cut it.
    fn is_closed(&self) -> bool {
        self.severed.is_severed()
            || self.closed.load(Ordering::Acquire)
            || self.peer_closed.load(Ordering::Acquire)
    }

    async fn send_frame(&self, frame: Frame) -> Result<(), ConnectionError> {
        if self.is_closed() {
            return Err(ConnectionError::Closed);
        }
        // Fast path: room in the buffer, no need to watch for a cut link.
        let frame = match self.tx.try_send(frame) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ConnectionError::Closed),
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        let severed = self.severed.notify.notified();
        tokio::pin!(severed);
        severed.as_mut().enable();
        if self.severed.is_severed() {
            return Err(ConnectionError::Closed);
        }
        tokio::select! {
            r = self.tx.send(frame) => r.map_err(|_| ConnectionError::Closed),
            _ = severed => Err(ConnectionError::Closed),
        }
    }

    fn lock_rx(&self) -> std::sync::MutexGuard<'_, mpsc::Receiver<Frame>> {
        self.rx.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn recv_frame(&self) -> Result<Frame, ConnectionError> {
        if self.is_closed() {
            return Err(ConnectionError::Closed);
        }
        // Fast path: a frame is already buffered.
        match self.lock_rx().try_recv() {
            Ok(frame) => return Ok(frame),
            Err(mpsc::error::TryRecvError::Disconnected) => return Err(ConnectionError::Closed),
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        let severed = self.severed.notify.notified();
        tokio::pin!(severed);
        severed.as_mut().enable();
        let closing = self.close_notify.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        if self.is_closed() {
            return Err(ConnectionError::Closed);
        }
        // The receiver's lock is held only inside `poll_recv`, never across an await.
        let recv = std::future::poll_fn(|cx| self.lock_rx().poll_recv(cx));
        tokio::select! {
            f = recv => f.ok_or(ConnectionError::Closed),
            _ = severed => Err(ConnectionError::Closed),
            _ = closing => Err(ConnectionError::Closed),
        }
    }

    fn sign_input(their_nonce: &[u8; 32], our_nonce: &[u8; 32]) -> Vec<u8> {
        [HANDSHAKE_DOMAIN, their_nonce, our_nonce].concat()
    }
}

#[async_trait]
impl Connection for MemoryConnection {
    async fn handshake(
        &mut self,
        local_info: &NodeInfo,
        key: &NodeKey,
        channels: &[ChannelDescriptor],
    ) -> Result<(NodeInfo, VerifyingKey), HandshakeError> {
        self.limits = vec![None; 256];
        for c in channels {
            if let Some(slot) = self.limits.get_mut(usize::from(c.id.0)) {
                *slot = Some(c.max_message_size);
            }
        }
        // Send first, then receive: both sides do the same, in parallel.
        let our_nonce: [u8; 32] = rand::random();
        self.send_frame(Frame::Hello(our_nonce)).await?;
        let their_nonce = match self.recv_frame().await? {
            Frame::Hello(n) => n,
            other => {
                return Err(HandshakeError::Protocol(format!("expected hello, got {other:?}")));
            }
        };
        if their_nonce == our_nonce {
            return Err(HandshakeError::Protocol("peer echoed our nonce".into()));
        }
        let signature = key.sign(&Self::sign_input(&their_nonce, &our_nonce)).to_bytes();
        self.send_frame(Frame::Auth {
            node_info: Bytes::from(local_info.encode_to_vec()),
            public_key: key.public_key().to_bytes(),
            signature,
        })
        .await?;
        let Frame::Auth { node_info, public_key, signature } = self.recv_frame().await? else {
            return Err(HandshakeError::Protocol("expected auth message".into()));
        };
        let peer_key = VerifyingKey::from_bytes(&public_key)
            .map_err(|e| HandshakeError::Authentication(format!("invalid public key: {e}")))?;
        peer_key
            .verify(&Self::sign_input(&our_nonce, &their_nonce), &Signature::from_bytes(&signature))
            .map_err(|_| {
                HandshakeError::Authentication("signature over our nonce is invalid".into())
            })?;
        let info = NodeInfo::decode(&node_info)?;
        Ok((info, peer_key))
    }

    async fn send(&self, channel: ChannelId, message: Bytes) -> Result<(), ConnectionError> {
        let config = if self.link.borrow().paused {
            let mut link = self.link.clone();
            match link.wait_for(|c| !c.paused).await {
                Ok(c) => c.clone(),
                Err(_) => LinkConfig::default(),
            }
        } else {
            self.link.borrow().clone()
        };
        if config.drop_messages {
            return Ok(());
        }
        let deliver_at = (!config.latency.is_zero()).then(|| Instant::now() + config.latency);
        self.send_frame(Frame::Message { channel, payload: message, deliver_at }).await
    }

    async fn receive(&self) -> Result<(ChannelId, Bytes), ConnectionError> {
        match self.recv_frame().await? {
            Frame::Message { channel, payload, deliver_at } => {
                if let Some(at) = deliver_at {
                    tokio::time::sleep_until(at).await;
                }
                let limit = self.limits.get(usize::from(channel.0)).copied().flatten();
                match limit {
                    None => Err(ConnectionError::UnknownChannel(channel)),
                    Some(max) if payload.len() > max => {
                        Err(ConnectionError::MessageTooLarge { channel, size: payload.len(), max })
                    }
                    Some(_) => Ok((channel, payload)),
                }
            }
            Frame::Close => {
                self.peer_closed.store(true, Ordering::Release);
                Err(ConnectionError::Closed)
            }
            other => Err(ConnectionError::Protocol(format!(
                "unexpected frame after handshake: {other:?}"
            ))),
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        memory_endpoint(self.local)
    }

    fn remote_endpoint(&self) -> Endpoint {
        memory_endpoint(self.remote)
    }

    async fn close(&self) {
        // The close frame queues behind every message `send` accepted: close implies flush.
        if !self.closed.load(Ordering::Acquire) {
            let _ = self.send_frame(Frame::Close).await;
            self.closed.store(true, Ordering::Release);
            // We read no more: the peer's sends fail instead of filling a buffer nobody reads,
            // and a `receive` waiting here ends.
            self.lock_rx().close();
            self.close_notify.notify_waiters();
        }
    }
}
