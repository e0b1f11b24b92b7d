//! A transport conformance suite: one set of behavioural tests that every [`Transport`] /
//! [`Connection`] implementation runs from its own test files (cargo feature `conformance`).
//!
//! # What it checks
//!
//! Each public `async fn` here is one test of one property of the contract in
//! [`crate::transport`], run over real connections made by the transport under test:
//!
//! | test | property |
//! |---|---|
//! | [`open_accept_order`] | dial/accept work in either order, both handshakes run concurrently, each side learns the other's NodeInfo and key, the four endpoints agree |
//! | [`transport_contract`] | unsupported protocols are refused without side effects; `close` ends pending and later `accept`s with [`TransportError::Closed`] |
//! | [`ordered_delivery`] | 1000 messages of varied sizes on one channel arrive intact and in order |
//! | [`zero_length_and_max_size`] | empty messages and messages of exactly `max_message_size` (4 MiB) arrive intact |
//! | [`oversized_message_rejected`] | a message over the receiver's limit is never delivered; the receiver gets [`ConnectionError::MessageTooLarge`] |
//! | [`close_implies_flush`] | everything `send` accepted before `close` reaches a reading peer, which then sees [`ConnectionError::Closed`]; the closed end errors instead of hanging |
//! | [`close_flushes_to_idle_reader`] | `close` completes while the peer is not reading (a small burst that fits the buffers), and the peer still gets it all |
//! | [`backpressure`] | `send` stops completing while the peer does not read, before [`ConformanceHarness::backpressure_bound`] bytes were accepted; nothing is lost once the peer reads again |
//! | [`concurrent_channels`] | four channels in each direction, each fed by its own task, at once: per-channel order kept, nothing lost |
//! | [`unknown_channel`] | a message on a channel the receiver did not declare gives it [`ConnectionError::UnknownChannel`] |
//! | [`undeclared_local_channel`] | sending on a channel missing from the local descriptors never wedges the connection |
//! | [`handshake_fails_when_acceptor_drops`], [`handshake_fails_when_dialer_drops`] | a peer that drops the connection instead of handshaking makes `handshake` return a [`HandshakeError`], not hang |
//! | [`router_rejects_other_network`] | through [`Router`]s: a peer of another network is never admitted and both sides count a handshake failure, while a peer of the same network is |
//!
//! # Transports with different guarantees
//!
//! A harness states its transport's [`Properties`]. The default is the full contract; CometBFT's
//! lp2p transport, which sends every message on its own stream, declares
//! [`Properties::unordered`] (the ordering tests then check that every message arrives exactly
//! once and intact, in any order), [`Properties::no_node_info`] (the handshake cannot learn the
//! peer's network, so [`router_rejects_other_network`] runs only its control and the NodeInfo
//! check compares the node ID and channels) and [`Properties::negotiated_channels`] (a message on
//! a channel the receiver lacks is refused when its stream is negotiated: never delivered, the
//! connection stays up).
//!
//! # Running it for a transport
//!
//! Add `p2p = { workspace = true, features = ["conformance"] }` to the transport crate's
//! `[dev-dependencies]`, implement [`ConformanceHarness`] (a factory of fresh listening
//! transports) in a test file, and invoke [`conformance_tests!`](crate::conformance_tests) with
//! it: the macro writes one `#[tokio::test]` per suite function, so that a failure names the
//! property:
//!
//! ```ignore
//! struct Harness;
//!
//! #[async_trait::async_trait]
//! impl ConformanceHarness for Harness {
//!     async fn listen(&self, key: &NodeKey) -> Result<Listening, BoxError> {
//!         let transport = MyTransport::bind("127.0.0.1:0".parse()?, key).await?;
//!         let endpoint = transport.endpoints().remove(0);
//!         Ok(Listening { transport: Arc::new(transport), endpoint })
//!     }
//! }
//!
//! p2p::conformance_tests!(Harness);
//! ```
//!
//! # Time
//!
//! No test asserts a duration. Every wait is bounded by [`LIVENESS_BOUND`] only so that a hang
//! fails instead of blocking the test run. The one place where the absence of progress is the
//! property itself, [`backpressure`], concludes that `send` is blocked after
//! [`STALL_WINDOW`] without a completed send; a spuriously slow machine can only make it
//! conclude that earlier (the bound then holds trivially), never fail it.
//!
//! # Messages
//!
//! Test messages carry a one-byte stream tag and a sequence number in their first nine bytes
//! and a pattern derived from both in the rest, so loss, reordering, misrouting between
//! channels and corruption are each reported as such.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::address::{Endpoint, EndpointAddr, Host, NodeAddress, Protocol};
use crate::echo::{Echo, echo_channel_descriptor};
use crate::key::NodeKey;
use crate::node_info::NodeInfo;
use crate::peer_manager::{PeerManagerConfig, PeerStatus};
use crate::router::{
    Channel, ChannelDescriptor, Outbound, PeerUpdates, PeerUpdatesError, Router, RouterConfig,
};
use crate::transport::{Connection, ConnectionError, HandshakeError, Transport, TransportError};
use crate::types::{ChannelId, NodeId};

/// Upper bound of every wait in the suite: a test that gets no result within it fails (a hang
/// is a failure). Not a performance requirement; passing runs take a small fraction of it.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(20);

/// How long [`backpressure`] waits for another `send` to complete before concluding that the
/// transport is applying backpressure.
pub const STALL_WINDOW: Duration = Duration::from_secs(1);

/// Default of [`ConformanceHarness::backpressure_bound`]: 64 MiB.
pub const DEFAULT_BACKPRESSURE_BOUND: usize = 64 << 20;

/// The chain ID the suite's nodes advertise.
pub const NETWORK: &str = "conformance";

/// An error from a transport crate's harness, e.g. a failed bind.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A fresh transport listening for connections, as made by [`ConformanceHarness::listen`].
#[derive(Debug, Clone)]
pub struct Listening {
    /// The transport. The suite dials from it, accepts on it and may hand it to a [`Router`].
    pub transport: Arc<dyn Transport>,
    /// Where other transports of the same harness reach it. It must be a concrete address (e.g.
    /// `127.0.0.1:port`, not `0.0.0.0`): the suite checks that the dialer's remote endpoint and
    /// the acceptor's local endpoint both equal it.
    pub endpoint: Endpoint,
}

/// What a transport crate implements to run the suite: a factory of listening transports.
#[async_trait]
pub trait ConformanceHarness: Send + Sync {
    /// Creates a new transport for the node with `key`, listening on a fresh endpoint that the
    /// transports made by earlier and later calls on the same harness can dial. Transports that
    /// bind their identity at creation (QUIC's TLS certificate) must use `key`.
    async fn listen(&self, key: &NodeKey) -> Result<Listening, BoxError>;

    /// Most bytes of 64 KiB messages that [`backpressure`] lets `send` accept on one channel
    /// while the peer does not read, before it fails the transport for lacking backpressure.
    /// Override only if the harness configures unusually large buffers.
    fn backpressure_bound(&self) -> usize {
        DEFAULT_BACKPRESSURE_BOUND
    }

    /// What the transport guarantees beyond the common core; default: everything.
    fn properties(&self) -> Properties {
        Properties::default()
    }
}

/// The parts of the contract a transport may not offer (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Properties {
    /// Messages of one channel arrive in the order they were sent.
    pub ordered: bool,
    /// The handshake exchanges the peers' NodeInfo, so `handshake` returns the peer's own.
    pub node_info_on_wire: bool,
    /// A message on a channel the receiver lacks makes its `receive` fail with
    /// [`ConnectionError::UnknownChannel`] (else the receiver refuses the message's stream).
    pub unknown_channel_error: bool,
}

impl Default for Properties {
    fn default() -> Self {
        Self { ordered: true, node_info_on_wire: true, unknown_channel_error: true }
    }
}

impl Properties {
    /// Messages of one channel may arrive in any order.
    #[must_use]
    pub fn unordered(mut self) -> Self {
        self.ordered = false;
        self
    }

    /// No NodeInfo on the wire: `handshake` makes the peer's up (its node ID and the channels it
    /// speaks are right; network, moniker and versions are not the peer's).
    #[must_use]
    pub fn no_node_info(mut self) -> Self {
        self.node_info_on_wire = false;
        self
    }

    /// Channels are negotiated per stream: a message on a channel the receiver lacks is refused
    /// before delivery and the connection stays up.
    #[must_use]
    pub fn negotiated_channels(mut self) -> Self {
        self.unknown_channel_error = false;
        self
    }
}

/// A failed conformance test: which test, and what went wrong.
///
/// `Debug` prints the same text as `Display`, so a `#[tokio::test]` returning
/// `Result<(), ConformanceError>` shows a readable message.
#[derive(Clone, PartialEq, Eq)]
pub struct ConformanceError {
    /// The suite function that failed.
    pub test: &'static str,
    /// What was observed.
    pub message: String,
}

impl fmt::Display for ConformanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conformance test `{}` failed: {}", self.test, self.message)
    }
}

impl fmt::Debug for ConformanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for ConformanceError {}

type Check<T = ()> = Result<T, String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

async fn run(
    test: &'static str,
    body: impl Future<Output = Check>,
) -> Result<(), ConformanceError> {
    body.await.map_err(|message| ConformanceError { test, message })
}

/// Awaits `fut`, failing with `what` if it takes longer than [`LIVENESS_BOUND`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Check<T> {
    tokio::time::timeout(LIVENESS_BOUND, fut)
        .await
        .map_err(|_| format!("{what}: no result within {LIVENESS_BOUND:?} (hang)"))
}

/// Awaits a spawned task of the suite.
async fn join<T>(what: &str, handle: JoinHandle<Check<T>>) -> Check<T> {
    match within(what, handle).await? {
        Ok(result) => result.map_err(|e| format!("{what}: {e}")),
        Err(e) => Err(format!("{what}: task failed: {e}")),
    }
}

/// Polls `fut` once without waiting.
fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

// --- test messages ---

/// Bytes of tag and sequence number at the start of a test message.
const HEADER: usize = 9;

fn fill(tag: u8, seq: u64, offset: usize) -> u8 {
    (seq as u8).wrapping_mul(31) ^ (offset as u8).wrapping_add(tag) ^ ((offset >> 8) as u8)
}

/// Message `seq` of stream `tag`, `len` bytes long (at least [`HEADER`]).
fn message(tag: u8, seq: u64, len: usize) -> Bytes {
    let len = len.max(HEADER);
    let mut v = Vec::with_capacity(len);
    v.push(tag);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend((HEADER..len).map(|offset| fill(tag, seq, offset)));
    Bytes::from(v)
}

fn header(got: &[u8]) -> Option<(u8, u64)> {
    let tag = *got.first()?;
    let seq: [u8; 8] = got.get(1..HEADER)?.try_into().ok()?;
    Some((tag, u64::from_be_bytes(seq)))
}

/// Checks that `got` is message `seq` of stream `tag`, `len` bytes long.
fn check_message(got: &[u8], tag: u8, seq: u64, len: usize) -> Check {
    let len = len.max(HEADER);
    match header(got) {
        Some((t, s)) if t == tag && s == seq => {}
        Some((t, s)) => {
            return Err(format!(
                "expected message {seq} of stream {tag}, got message {s} of stream {t} \
                 (lost, reordered or misrouted)"
            ));
        }
        None => return Err(format!("expected message {seq} of stream {tag}, got {got:?}")),
    }
    ensure!(got.len() == len, "message {seq} of stream {tag}: {} bytes, sent {len}", got.len());
    if let Some(offset) = (HEADER..len).find(|&i| got.get(i) != Some(&fill(tag, seq, i))) {
        return Err(format!("message {seq} of stream {tag} is corrupted at byte {offset}"));
    }
    Ok(())
}

/// Sizes from 9 bytes to 16 KiB, with a 200 000-byte message every 97.
fn varied_size(seq: u64) -> usize {
    if seq % 97 == 96 { 200_000 } else { HEADER + (seq as usize).wrapping_mul(7919) % 16_384 }
}

// --- nodes and connections ---

struct Node {
    key: NodeKey,
    info: NodeInfo,
    listening: Listening,
}

impl Node {
    fn transport(&self) -> &dyn Transport {
        self.listening.transport.as_ref()
    }

    fn id(&self) -> NodeId {
        self.key.node_id()
    }
}

/// The address a router dials to reach node `id` listening on `ep`.
fn address_of(key: &NodeKey, ep: &Endpoint) -> NodeAddress {
    let id = key.node_id();
    match &ep.addr {
        // lp2p addresses name the node by its key (printed as its libp2p peer ID).
        EndpointAddr::Socket(a) if ep.protocol == Protocol::LP2P => NodeAddress::new_with_key(
            ep.protocol.clone(),
            key.public_key(),
            Host::Ip(a.ip()),
            a.port(),
        ),
        EndpointAddr::Socket(a) => {
            NodeAddress::new_host(ep.protocol.clone(), id, Host::Ip(a.ip()), a.port())
        }
        EndpointAddr::Path(_) => NodeAddress::new_opaque(ep.protocol.clone(), id),
    }
}

fn listen_addr(ep: &Endpoint) -> String {
    match &ep.addr {
        EndpointAddr::Socket(a) => a.to_string(),
        _ => ep.to_string(),
    }
}

async fn listen<H: ConformanceHarness + ?Sized>(h: &H, key: &NodeKey) -> Check<Listening> {
    within("ConformanceHarness::listen", h.listen(key))
        .await?
        .map_err(|e| format!("the harness could not create a transport: {e}"))
}

async fn node<H: ConformanceHarness + ?Sized>(
    h: &H,
    moniker: &str,
    channels: &[ChannelDescriptor],
) -> Check<Node> {
    let key = NodeKey::generate();
    let listening = listen(h, &key).await?;
    let info = NodeInfo::new(key.node_id(), NETWORK, moniker, channels.iter().map(|d| d.id))
        .with_listen_addr(listen_addr(&listening.endpoint));
    Ok(Node { key, info, listening })
}

/// Checks what one side's handshake returned against the other side's identity.
fn check_peer(props: Properties, side: &str, got: &(NodeInfo, VerifyingKey), peer: &Node) -> Check {
    let (info, key) = got;
    ensure!(
        *key == peer.key.public_key(),
        "{side}: handshake returned key of node {}, expected the peer's ({})",
        NodeId::from_public_key(key),
        peer.id()
    );
    if !props.node_info_on_wire {
        ensure!(
            info.node_id == peer.id(),
            "{side}: handshake returned NodeInfo of {}, expected the peer's ({})",
            info.node_id,
            peer.id()
        );
        ensure!(
            !info.channels.is_empty() && info.channels.iter().all(|c| peer.info.has_channel(*c)),
            "{side}: handshake returned channels {:?}, the peer has {:?}",
            info.channels,
            peer.info.channels
        );
        return info.validate().map_err(|e| format!("{side}: made-up NodeInfo is invalid: {e}"));
    }
    ensure!(
        *info == peer.info,
        "{side}: handshake returned NodeInfo {info:?}, expected the peer's {:?}",
        peer.info
    );
    Ok(())
}

/// Runs both handshakes concurrently and checks each side got the other's identity.
async fn handshake_both(
    props: Properties,
    dialer: &Node,
    mut dialed: Box<dyn Connection>,
    dialer_channels: &[ChannelDescriptor],
    acceptor: &Node,
    mut accepted: Box<dyn Connection>,
    acceptor_channels: &[ChannelDescriptor],
) -> Check<(Arc<dyn Connection>, Arc<dyn Connection>)> {
    let (d, a) = tokio::join!(
        within("dialer handshake", dialed.handshake(&dialer.info, &dialer.key, dialer_channels)),
        within(
            "acceptor handshake",
            accepted.handshake(&acceptor.info, &acceptor.key, acceptor_channels)
        ),
    );
    let d = d?.map_err(|e| format!("dialer handshake failed: {e}"))?;
    let a = a?.map_err(|e| format!("acceptor handshake failed: {e}"))?;
    check_peer(props, "dialer", &d, acceptor)?;
    check_peer(props, "acceptor", &a, dialer)?;
    Ok((Arc::from(dialed), Arc::from(accepted)))
}

/// Dials and accepts concurrently (no handshake).
async fn dial_accept(
    dialer: &Node,
    acceptor: &Node,
) -> Check<(Box<dyn Connection>, Box<dyn Connection>)> {
    let (dialed, accepted) = tokio::join!(
        within("dial", dialer.transport().dial(&acceptor.listening.endpoint)),
        within("accept", acceptor.transport().accept()),
    );
    let dialed = dialed?.map_err(|e| format!("dial failed: {e}"))?;
    let accepted = accepted?.map_err(|e| format!("accept failed: {e}"))?;
    Ok((dialed, accepted))
}

/// Two handshaken connections. The nodes (and so the transports) live as long as the pair.
struct Pair {
    dialer: Arc<dyn Connection>,
    acceptor: Arc<dyn Connection>,
    _nodes: (Node, Node),
}

async fn pair<H: ConformanceHarness + ?Sized>(
    h: &H,
    dialer_channels: &[ChannelDescriptor],
    acceptor_channels: &[ChannelDescriptor],
) -> Check<Pair> {
    let d = node(h, "dialer", dialer_channels).await?;
    let a = node(h, "acceptor", acceptor_channels).await?;
    let (dialed, accepted) = dial_accept(&d, &a).await?;
    let (dialer, acceptor) = handshake_both(
        h.properties(),
        &d,
        dialed,
        dialer_channels,
        &a,
        accepted,
        acceptor_channels,
    )
    .await?;
    Ok(Pair { dialer, acceptor, _nodes: (d, a) })
}

async fn send(conn: &dyn Connection, channel: ChannelId, msg: Bytes, what: &str) -> Check {
    within(what, conn.send(channel, msg)).await?.map_err(|e| format!("{what}: send failed: {e}"))
}

async fn receive(conn: &dyn Connection, what: &str) -> Check<(ChannelId, Bytes)> {
    within(what, conn.receive()).await?.map_err(|e| format!("{what}: receive failed: {e}"))
}

/// Receives message `seq` of stream `tag` (`len` bytes) on `channel`.
async fn expect_message(
    conn: &dyn Connection,
    channel: ChannelId,
    tag: u8,
    seq: u64,
    len: usize,
) -> Check {
    let what = format!("receiving message {seq} of stream {tag}");
    let (ch, msg) = receive(conn, &what).await?;
    ensure!(ch == channel, "{what}: arrived on channel {ch}, sent on {channel}");
    check_message(&msg, tag, seq, len)
}

/// Receives messages `seqs` of stream `tag` on `channel`, of sizes `size(seq)`: in order if the
/// transport keeps order, else each exactly once in any order.
async fn expect_messages(
    props: Properties,
    conn: &dyn Connection,
    channel: ChannelId,
    tag: u8,
    seqs: std::ops::Range<u64>,
    size: fn(u64) -> usize,
) -> Check {
    if props.ordered {
        for seq in seqs {
            expect_message(conn, channel, tag, seq, size(seq)).await?;
        }
        return Ok(());
    }
    let mut missing: std::collections::BTreeSet<u64> = seqs.collect();
    while let Some(&next) = missing.first() {
        let what =
            format!("receiving stream {tag} (message {next} and {} more)", missing.len() - 1);
        let (ch, msg) = receive(conn, &what).await?;
        ensure!(ch == channel, "{what}: a message arrived on channel {ch}, sent on {channel}");
        let Some((t, seq)) = header(&msg).filter(|(t, _)| *t == tag) else {
            return Err(format!("{what}: got a message that is not of stream {tag}: {msg:?}"));
        };
        ensure!(
            missing.remove(&seq),
            "{what}: message {seq} of stream {t} arrived twice or was never sent"
        );
        check_message(&msg, tag, seq, size(seq))?;
    }
    Ok(())
}

/// Expects `receive` to fail with [`ConnectionError::Closed`].
async fn expect_closed(conn: &dyn Connection, what: &str) -> Check {
    match within(what, conn.receive()).await? {
        Err(ConnectionError::Closed) => Ok(()),
        Err(e) => Err(format!("{what}: expected ConnectionError::Closed, got {e:?}")),
        Ok((ch, msg)) => Err(format!(
            "{what}: expected the end of the connection, got {} bytes on {ch}",
            msg.len()
        )),
    }
}

/// Spawns a task that sends messages `0..count` of stream `tag` on `channel`.
fn spawn_sender(
    conn: Arc<dyn Connection>,
    channel: ChannelId,
    tag: u8,
    count: u64,
    size: fn(u64) -> usize,
) -> JoinHandle<Check> {
    tokio::spawn(async move {
        for seq in 0..count {
            let what = format!("sending message {seq} of stream {tag} on channel {channel}");
            send(conn.as_ref(), channel, message(tag, seq, size(seq)), &what).await?;
        }
        Ok(())
    })
}

fn descriptor(id: u8) -> ChannelDescriptor {
    ChannelDescriptor::new(ChannelId(id))
}

/// The channel most tests use.
const CH: ChannelId = ChannelId(0x20);

// --- the tests ---

/// **Open/accept order.** Dial and accept work in either order and the handshakes run
/// concurrently: (1) `accept` is already pending when `dial` is called; (2) `dial` completes and
/// the dialer's handshake is started before `accept` is even called. In both cases each side's
/// `handshake` returns exactly the other side's NodeInfo and ed25519 key; all four endpoints
/// have the listener's protocol; the dialer's remote endpoint and the acceptor's local endpoint
/// are the listening endpoint, the acceptor's remote endpoint is the dialer's local endpoint;
/// and one message crosses in each direction.
pub async fn open_accept_order<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("open_accept_order", async {
        let channels = [descriptor(CH.0)];
        // (1) Accept first.
        let d = node(h, "dialer", &channels).await?;
        let a = node(h, "acceptor", &channels).await?;
        let mut accept = pin!(within("accept (pending before dial)", a.transport().accept()));
        ensure!(
            poll_once(accept.as_mut()).is_pending(),
            "accept returned before anything was dialled"
        );
        let dialed = within("dial", d.transport().dial(&a.listening.endpoint))
            .await?
            .map_err(|e| format!("dial failed: {e}"))?;
        let accepted = accept.await?.map_err(|e| format!("accept failed: {e}"))?;
        let props = h.properties();
        let (dc, ac) =
            handshake_both(props, &d, dialed, &channels, &a, accepted, &channels).await?;
        check_endpoints(dc.as_ref(), &a, ac.as_ref())?;
        ping_pong(dc.as_ref(), ac.as_ref()).await?;

        // (2) Dial and start the dialer's handshake before accepting.
        let d = node(h, "dialer", &channels).await?;
        let a = node(h, "acceptor", &channels).await?;
        let mut dialed = within("dial", d.transport().dial(&a.listening.endpoint))
            .await?
            .map_err(|e| format!("dial failed: {e}"))?;
        let (info, key, chans) = (d.info.clone(), d.key.clone(), channels.clone());
        let dialer_hs = tokio::spawn(async move {
            let r = dialed.handshake(&info, &key, &chans).await;
            (dialed, r)
        });
        let mut accepted = within("accept (after dial)", a.transport().accept())
            .await?
            .map_err(|e| format!("accept failed: {e}"))?;
        let acceptor_result =
            within("acceptor handshake", accepted.handshake(&a.info, &a.key, &channels))
                .await?
                .map_err(|e| format!("acceptor handshake failed: {e}"))?;
        let (dialed, dialer_result) = within("dialer handshake", dialer_hs)
            .await?
            .map_err(|e| format!("dialer handshake task failed: {e}"))?;
        let dialer_result = dialer_result.map_err(|e| format!("dialer handshake failed: {e}"))?;
        check_peer(props, "dialer", &dialer_result, &a)?;
        check_peer(props, "acceptor", &acceptor_result, &d)?;
        check_endpoints(dialed.as_ref(), &a, accepted.as_ref())?;
        ping_pong(dialed.as_ref(), accepted.as_ref()).await
    })
    .await
}

fn check_endpoints(dc: &dyn Connection, a: &Node, ac: &dyn Connection) -> Check {
    let listening = &a.listening.endpoint;
    let protocol = &listening.protocol;
    ensure!(
        a.transport().protocols().contains(protocol),
        "the listening endpoint's protocol {protocol} is not among the transport's protocols {:?}",
        a.transport().protocols()
    );
    ensure!(
        a.transport().endpoints().contains(listening),
        "the transport's endpoints {:?} do not include the listening endpoint {listening}",
        a.transport().endpoints()
    );
    let ends = [
        ("dialer local", dc.local_endpoint()),
        ("dialer remote", dc.remote_endpoint()),
        ("acceptor local", ac.local_endpoint()),
        ("acceptor remote", ac.remote_endpoint()),
    ];
    for (name, ep) in &ends {
        ensure!(ep.protocol == *protocol, "{name} endpoint {ep} is not of protocol {protocol}");
    }
    ensure!(
        dc.remote_endpoint() == *listening,
        "dialer's remote endpoint {} is not the endpoint it dialled ({listening})",
        dc.remote_endpoint()
    );
    ensure!(
        ac.local_endpoint() == *listening,
        "acceptor's local endpoint {} is not its listening endpoint ({listening})",
        ac.local_endpoint()
    );
    ensure!(
        ac.remote_endpoint() == dc.local_endpoint(),
        "acceptor's remote endpoint {} is not the dialer's local endpoint {}",
        ac.remote_endpoint(),
        dc.local_endpoint()
    );
    Ok(())
}

async fn ping_pong(dc: &dyn Connection, ac: &dyn Connection) -> Check {
    send(dc, CH, message(1, 0, 100), "dialer sends a message").await?;
    expect_message(ac, CH, 1, 0, 100).await?;
    send(ac, CH, message(2, 0, 100), "acceptor sends a message").await?;
    expect_message(dc, CH, 2, 0, 100).await
}

/// **Transport contract.** Dialing an endpoint of a protocol the transport does not serve
/// returns [`TransportError::UnsupportedProtocol`] (the router then tries another transport);
/// [`Transport::close`] makes a pending `accept` and every later one return
/// [`TransportError::Closed`].
pub async fn transport_contract<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("transport_contract", async {
        let key = NodeKey::generate();
        let l = listen(h, &key).await?;
        let served = l.transport.protocols();
        ensure!(!served.is_empty(), "the transport serves no protocol");
        let candidates = [Protocol::MEMORY, Protocol::MCONN, Protocol::QUIC];
        let other = candidates
            .into_iter()
            .find(|p| !served.contains(p))
            .map_or_else(|| Protocol::new("conformance-none"), Ok)
            .map_err(|e| format!("protocol: {e}"))?;
        let target = match &l.endpoint.addr {
            EndpointAddr::Socket(a) => Endpoint::socket(other.clone(), *a),
            EndpointAddr::Path(p) => Endpoint::path(other.clone(), p.clone()),
        };
        match within("dial of an unsupported protocol", l.transport.dial(&target)).await? {
            Err(TransportError::UnsupportedProtocol(p)) if p == other => {}
            Err(e) => {
                return Err(format!(
                    "dial of {target}: expected UnsupportedProtocol({other}), got {e:?}"
                ));
            }
            Ok(c) => return Err(format!("dial of {target} succeeded: {c:?}")),
        }

        let mut accept = pin!(within("accept pending during close", l.transport.accept()));
        ensure!(poll_once(accept.as_mut()).is_pending(), "accept returned with nothing dialled");
        within("transport close", l.transport.close()).await?;
        match accept.await? {
            Err(TransportError::Closed) => {}
            other => {
                return Err(format!("pending accept after close: expected Closed, got {other:?}"));
            }
        }
        match within("accept after close", l.transport.accept()).await? {
            Err(TransportError::Closed) => Ok(()),
            other => Err(format!("accept after close: expected Closed, got {other:?}")),
        }
    })
    .await
}

/// **Ordered delivery.** 1000 messages of sizes from 9 bytes to 200 000 bytes, sent on one
/// channel by one task while the peer reads, arrive intact and in the order they were sent.
pub async fn ordered_delivery<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("ordered_delivery", async {
        const COUNT: u64 = 1000;
        let channels = [descriptor(CH.0)];
        let p = pair(h, &channels, &channels).await?;
        let sender = spawn_sender(p.dialer.clone(), CH, 7, COUNT, varied_size);
        expect_messages(h.properties(), p.acceptor.as_ref(), CH, 7, 0..COUNT, varied_size).await?;
        join("sender", sender).await
    })
    .await
}

/// The receive limit [`zero_length_and_max_size`] and [`oversized_message_rejected`] use.
const LIMIT: usize = 4 << 20;

/// **Zero-length and maximum-size messages.** With the receiver's channel limited to
/// `max_message_size` = 4 MiB, an empty message, a message of exactly 4 MiB, another empty
/// message and a small one arrive intact and in order (in both directions).
pub async fn zero_length_and_max_size<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("zero_length_and_max_size", async {
        let channels = [descriptor(CH.0).with_max_message_size(LIMIT)];
        let p = pair(h, &channels, &channels).await?;
        let messages = [Bytes::new(), message(3, 1, LIMIT), Bytes::new(), message(3, 3, 10)];
        for (from, to, name) in [
            (&p.dialer, &p.acceptor, "dialer to acceptor"),
            (&p.acceptor, &p.dialer, "acceptor to dialer"),
        ] {
            let sender = {
                let (conn, messages) = (from.clone(), messages.clone());
                tokio::spawn(async move {
                    for (i, m) in messages.into_iter().enumerate() {
                        send(conn.as_ref(), CH, m, &format!("sending message {i}")).await?;
                    }
                    Ok(())
                })
            };
            let mut unordered = messages.to_vec();
            for (i, want) in messages.iter().enumerate() {
                let what = format!("{name}: receiving message {i} ({} bytes)", want.len());
                let (ch, got) = receive(to.as_ref(), &what).await?;
                ensure!(ch == CH, "{what}: arrived on channel {ch}");
                if h.properties().ordered {
                    ensure!(got.len() == want.len(), "{what}: got {} bytes", got.len());
                    ensure!(got == *want, "{what}: content differs");
                } else {
                    let at = unordered.iter().position(|m| *m == got);
                    let at =
                        at.ok_or_else(|| format!("{what}: got {} bytes not sent", got.len()))?;
                    unordered.swap_remove(at);
                }
            }
            join(name, sender).await?;
        }
        Ok(())
    })
    .await
}

/// **Oversized messages.** The receiver declares `max_message_size` = 4 MiB on a channel, the
/// sender (whose own limit is larger, so a sender-side check of its own limit cannot hide the
/// case) sends 4 MiB + 1 bytes. The receiver must not deliver it: its `receive` returns
/// [`ConnectionError::MessageTooLarge`] naming the channel, the limit and a size above it.
/// After that error, `receive` either fails too (the connection was closed, as MConn and QUIC
/// do) or yields the next message intact (as the memory transport does): the oversized message
/// is never delivered.
///
/// Without per-channel order, the small message sent after the oversized one may be delivered
/// before the error; nothing else may.
///
/// The sender's `send` of the oversized message may succeed or fail. No transport here refuses
/// it on the sending side — the sender does not know the peer's limits — so the property all
/// transports share is the receiver's typed error.
pub async fn oversized_message_rejected<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("oversized_message_rejected", async {
        let sender_channels = [descriptor(CH.0).with_max_message_size(2 * LIMIT)];
        let receiver_channels = [descriptor(CH.0).with_max_message_size(LIMIT)];
        let p = pair(h, &sender_channels, &receiver_channels).await?;
        send(p.dialer.as_ref(), CH, message(4, 0, 1000), "sending a valid message").await?;
        expect_message(p.acceptor.as_ref(), CH, 4, 0, 1000).await?;
        let sender = {
            let conn = p.dialer.clone();
            tokio::spawn(async move {
                // Either outcome is allowed; it must not hang.
                let _ = conn.send(CH, message(4, 1, LIMIT + 1)).await;
                let _ = conn.send(CH, message(4, 2, 1000)).await;
                Ok(())
            })
        };
        let what = "receiving a message over the limit";
        let mut next = within(what, p.acceptor.receive()).await?;
        if !h.properties().ordered
            && let Ok((ch, m)) = &next
        {
            // Unordered: the small message sent after it may win the race; it must be that one.
            ensure!(*ch == CH, "{what}: a message on channel {ch}");
            check_message(m, 4, 2, 1000).map_err(|e| format!("{what}: {e}"))?;
            next = within(what, p.acceptor.receive()).await?;
        }
        match next {
            Err(ConnectionError::MessageTooLarge { channel, size, max }) => {
                ensure!(channel == CH, "{what}: error names channel {channel}, sent on {CH}");
                ensure!(max == LIMIT, "{what}: error names limit {max}, the channel's is {LIMIT}");
                ensure!(size > max, "{what}: error names size {size}, not above the limit {max}");
            }
            Err(e) => return Err(format!("{what}: expected MessageTooLarge, got {e:?}")),
            Ok((ch, m)) => {
                return Err(format!("{what}: delivered {} bytes on channel {ch}", m.len()));
            }
        }
        match within("receiving after the oversized message", p.acceptor.receive()).await? {
            Err(_) => {}
            Ok((ch, m)) => {
                ensure!(ch == CH, "after the oversized message: a message on channel {ch}");
                check_message(&m, 4, 2, 1000)
                    .map_err(|e| format!("after the oversized message: {e}"))?;
            }
        }
        join("sender", sender).await
    })
    .await
}

/// **Close implies flush.** One task sends 300 messages (up to 200 000 bytes) and then calls
/// `close`, while the peer reads: the peer receives all 300, intact and in order, and then
/// `receive` returns [`ConnectionError::Closed`] instead of hanging. On the closed end, `close`
/// returns, a second `close` returns (idempotent), and `send` and `receive` return errors
/// instead of hanging. On the peer's end, `receive` keeps returning `Closed` and `send` fails
/// within 16 attempts (it must neither block nor keep accepting messages nobody reads).
pub async fn close_implies_flush<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("close_implies_flush", async {
        const COUNT: u64 = 300;
        let channels = [descriptor(CH.0)];
        let p = pair(h, &channels, &channels).await?;
        let closer = {
            let conn = p.dialer.clone();
            tokio::spawn(async move {
                for seq in 0..COUNT {
                    let what = format!("sending message {seq}");
                    send(conn.as_ref(), CH, message(5, seq, varied_size(seq)), &what).await?;
                }
                within("close", conn.close()).await?;
                Ok(())
            })
        };
        expect_messages(h.properties(), p.acceptor.as_ref(), CH, 5, 0..COUNT, varied_size).await?;
        expect_closed(p.acceptor.as_ref(), "peer's receive after the last message").await?;
        check_peer_end(p.acceptor.as_ref()).await?;
        join("sending and closing", closer).await?;
        check_closed_end(p.dialer.as_ref()).await
    })
    .await
}

/// Most `send`s that may still succeed after `receive` reported the peer's close.
const SENDS_AFTER_PEER_CLOSE: usize = 16;

/// Checks the end whose peer closed, after its `receive` returned [`ConnectionError::Closed`]:
/// `receive` keeps failing, and `send` fails within [`SENDS_AFTER_PEER_CLOSE`] attempts instead
/// of accepting messages nobody reads (or blocking).
async fn check_peer_end(conn: &dyn Connection) -> Check {
    expect_closed(conn, "receive again after the peer's close").await?;
    for i in 0..SENDS_AFTER_PEER_CLOSE {
        let what = format!("send {i} after the peer closed");
        if within(&what, conn.send(CH, message(9, i as u64, 10))).await?.is_err() {
            return Ok(());
        }
    }
    Err(format!("{SENDS_AFTER_PEER_CLOSE} sends succeeded after the peer closed the connection"))
}

/// Checks the end that called `close`.
async fn check_closed_end(conn: &dyn Connection) -> Check {
    within("second close (idempotent)", conn.close()).await?;
    let sent = within("send after close", conn.send(CH, message(9, 0, 10))).await?;
    ensure!(sent.is_err(), "send after close succeeded");
    let received = within("receive on the closed end", conn.receive()).await?;
    ensure!(received.is_err(), "receive after close returned a message: {received:?}");
    Ok(())
}

/// **Close flushes to an idle reader.** 16 messages of 1 KiB (well within any transport's
/// buffers) are sent and `close` is called while the peer is *not* calling `receive`: `close`
/// completes, and the peer then receives all 16 in order followed by
/// [`ConnectionError::Closed`]. Both ends are then checked as in [`close_implies_flush`].
pub async fn close_flushes_to_idle_reader<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("close_flushes_to_idle_reader", async {
        const COUNT: u64 = 16;
        let channels = [descriptor(CH.0)];
        let p = pair(h, &channels, &channels).await?;
        for seq in 0..COUNT {
            send(p.dialer.as_ref(), CH, message(6, seq, 1024), &format!("sending message {seq}"))
                .await?;
        }
        within("close while the peer is not reading", p.dialer.close()).await?;
        expect_messages(h.properties(), p.acceptor.as_ref(), CH, 6, 0..COUNT, |_| 1024).await?;
        expect_closed(p.acceptor.as_ref(), "peer's receive after the last message").await?;
        check_peer_end(p.acceptor.as_ref()).await?;
        check_closed_end(p.dialer.as_ref()).await
    })
    .await
}

/// Size of the messages [`backpressure`] sends.
const BACKPRESSURE_MESSAGE: usize = 64 << 10;

/// **Backpressure.** The peer stops calling `receive`; a task keeps sending 64 KiB messages on
/// one channel. `send` must stop completing (no completion for [`STALL_WINDOW`]) before
/// [`ConformanceHarness::backpressure_bound`] bytes (default [`DEFAULT_BACKPRESSURE_BOUND`],
/// 64 MiB) have been accepted; the connection stays usable: once the peer reads again, the
/// blocked `send` completes and every message arrives intact and in order.
pub async fn backpressure<H: ConformanceHarness + ?Sized>(h: &H) -> Result<(), ConformanceError> {
    run("backpressure", async {
        let channels = [descriptor(CH.0)];
        let p = pair(h, &channels, &channels).await?;
        let bound = h.backpressure_bound();
        // One message more than the bound allows ends the sender in a failing run.
        let cap = (bound / BACKPRESSURE_MESSAGE + 1) as u64;
        let (progress_tx, mut progress) = watch::channel(0u64);
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let (conn, stop) = (p.dialer.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seq = 0;
                while seq < cap && !stop.load(Ordering::Acquire) {
                    let msg = message(8, seq, BACKPRESSURE_MESSAGE);
                    conn.send(CH, msg).await.map_err(|e| format!("send {seq} failed: {e}"))?;
                    seq += 1;
                    progress_tx.send_replace(seq);
                }
                // The end marker tells the reader how many there were.
                let end = message(9, seq, HEADER);
                conn.send(CH, end).await.map_err(|e| format!("sending the end marker: {e}"))?;
                Ok(seq)
            })
        };
        loop {
            match tokio::time::timeout(STALL_WINDOW, progress.changed()).await {
                // No send completed for a while: the transport holds the sender back.
                Err(_) => break,
                Ok(Ok(())) => {
                    let accepted = *progress.borrow_and_update();
                    let bytes = accepted as usize * BACKPRESSURE_MESSAGE;
                    ensure!(
                        bytes <= bound,
                        "send accepted {accepted} messages ({bytes} bytes) while the peer did not \
                         read, more than the bound of {bound} bytes: no backpressure"
                    );
                }
                Ok(Err(_)) => {
                    // The sender ended on its own: an error, or the cap without blocking.
                    let sent = join("sender", sender).await?;
                    return Err(format!(
                        "send never blocked while the peer did not read ({sent} messages sent)"
                    ));
                }
            }
        }
        stop.store(true, Ordering::Release);
        let mut seq = 0u64;
        if !h.properties().ordered {
            // The end marker may arrive before the others; it says how many there were.
            let mut seen = std::collections::BTreeSet::new();
            let mut total = None;
            while total != Some(seen.len() as u64) {
                let what = format!("receiving after the reader resumed ({} so far)", seen.len());
                let (ch, msg) = receive(p.acceptor.as_ref(), &what).await?;
                ensure!(ch == CH, "{what}: arrived on channel {ch}");
                match header(&msg) {
                    Some((9, n)) if total.is_none() => {
                        check_message(&msg, 9, n, HEADER)?;
                        total = Some(n);
                    }
                    Some((8, n)) if seen.insert(n) => {
                        check_message(&msg, 8, n, BACKPRESSURE_MESSAGE)?
                    }
                    _ => return Err(format!("{what}: unexpected or repeated message {msg:?}")),
                }
            }
            let sent = join("sender", sender).await?;
            ensure!(Some(sent) == total, "sender sent {sent} messages, the marker says {total:?}");
            ensure!(seen.iter().copied().eq(0..sent), "messages arrived: {seen:?}, sent 0..{sent}");
            return Ok(());
        }
        loop {
            let what = format!("receiving message {seq} after the reader resumed");
            let (ch, msg) = receive(p.acceptor.as_ref(), &what).await?;
            ensure!(ch == CH, "{what}: arrived on channel {ch}");
            if header(&msg).is_some_and(|(tag, _)| tag == 9) {
                check_message(&msg, 9, seq, HEADER)?;
                break;
            }
            check_message(&msg, 8, seq, BACKPRESSURE_MESSAGE)?;
            seq += 1;
        }
        let sent = join("sender", sender).await?;
        ensure!(sent == seq, "sender sent {sent} messages, {seq} arrived");
        Ok(())
    })
    .await
}

/// **Concurrent channels.** Both sides declare four channels and send on all four at once, in
/// both directions, each channel fed by its own task (200 messages of up to 200 000 bytes
/// each), while each side reads: every message arrives intact, on the channel it was sent on,
/// in per-channel order.
pub async fn concurrent_channels<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("concurrent_channels", async {
        const COUNT: u64 = 200;
        let ids = [0x40u8, 0x41, 0x42, 0x43];
        let channels: Vec<ChannelDescriptor> = ids.iter().map(|&id| descriptor(id)).collect();
        let p = pair(h, &channels, &channels).await?;
        let mut senders = Vec::new();
        let mut readers = Vec::new();
        for (from, to) in [(&p.dialer, &p.acceptor), (&p.acceptor, &p.dialer)] {
            for &id in &ids {
                senders.push(spawn_sender(from.clone(), ChannelId(id), id, COUNT, varied_size));
            }
            let conn = to.clone();
            let ordered = h.properties().ordered;
            readers.push(tokio::spawn(async move {
                let mut next = [0u64; 4];
                let mut seen: [std::collections::BTreeSet<u64>; 4] = Default::default();
                for _ in 0..COUNT * ids.len() as u64 {
                    let (ch, msg) = receive(conn.as_ref(), "receiving").await?;
                    let i = ids
                        .iter()
                        .position(|&id| ChannelId(id) == ch)
                        .ok_or_else(|| format!("a message arrived on unexpected channel {ch}"))?;
                    let (Some(slot), Some(set)) = (next.get_mut(i), seen.get_mut(i)) else {
                        return Err(format!("no slot for channel {ch}"));
                    };
                    let seq = if ordered {
                        *slot
                    } else {
                        let (_, seq) = header(&msg).ok_or_else(|| format!("on {ch}: {msg:?}"))?;
                        ensure!(set.insert(seq), "on channel {ch}: message {seq} arrived twice");
                        seq
                    };
                    check_message(&msg, ch.0, seq, varied_size(seq))
                        .map_err(|e| format!("on channel {ch}: {e}"))?;
                    *slot += 1;
                }
                Ok(())
            }));
        }
        for r in readers {
            join("reader", r).await?;
        }
        for s in senders {
            join("sender", s).await?;
        }
        Ok(())
    })
    .await
}

/// **Unknown channel.** The dialer declares channels A and B, the acceptor only A. After a
/// message on A arrives, the dialer sends on B: the acceptor's `receive` returns
/// [`ConnectionError::UnknownChannel`] naming B and never delivers the message. (All
/// transports detect this on the receiving side, which is the only side that knows its
/// channels; the sender's `send` may succeed.)
pub async fn unknown_channel<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("unknown_channel", async {
        let b = ChannelId(0x21);
        let p = pair(h, &[descriptor(CH.0), descriptor(b.0)], &[descriptor(CH.0)]).await?;
        send(p.dialer.as_ref(), CH, message(10, 0, 100), "sending on a shared channel").await?;
        expect_message(p.acceptor.as_ref(), CH, 10, 0, 100).await?;
        let sender = {
            let conn = p.dialer.clone();
            tokio::spawn(async move {
                let _ = conn.send(b, message(10, 1, 100)).await;
                Ok(())
            })
        };
        if !h.properties().unknown_channel_error {
            // The receiver refuses the stream: after a message on A, the dialer's close (which
            // waits for the peer's answers to every stream) leaves nothing but the end.
            join("sender", sender).await?;
            send(p.dialer.as_ref(), CH, message(10, 2, 100), "sending on the shared channel")
                .await?;
            expect_message(p.acceptor.as_ref(), CH, 10, 2, 100).await?;
            within("dialer close", p.dialer.close()).await?;
            return expect_closed(p.acceptor.as_ref(), "receiving after a refused channel").await;
        }
        let what = "receiving a message on a channel the receiver did not declare";
        match within(what, p.acceptor.receive()).await? {
            Err(ConnectionError::UnknownChannel(ch)) if ch == b => {}
            Err(e) => return Err(format!("{what}: expected UnknownChannel({b}), got {e:?}")),
            Ok((ch, m)) => {
                return Err(format!("{what}: delivered {} bytes on channel {ch}", m.len()));
            }
        }
        join("sender", sender).await
    })
    .await
}

/// **Sending on an undeclared local channel.** The dialer declares only channel A, the
/// acceptor A and C. The dialer sends on C (a channel missing from its own descriptors), then on
/// A. The send on C must return (an error, or success); it must not wedge the connection: the
/// message on A still arrives, and if the send on C succeeded its message arrives on C too.
pub async fn undeclared_local_channel<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("undeclared_local_channel", async {
        let c = ChannelId(0x22);
        let p = pair(h, &[descriptor(CH.0)], &[descriptor(CH.0), descriptor(c.0)]).await?;
        let on_c =
            within("send on a channel not declared locally", p.dialer.send(c, message(11, 0, 100)))
                .await?;
        send(p.dialer.as_ref(), CH, message(11, 1, 100), "sending on a declared channel after it")
            .await?;
        let mut want_c = on_c.is_ok();
        let mut want_a = true;
        while want_a || want_c {
            let what = "receiving after a send on a channel the sender did not declare";
            let (ch, msg) = receive(p.acceptor.as_ref(), what).await?;
            if ch == CH && want_a {
                check_message(&msg, 11, 1, 100)?;
                want_a = false;
            } else if ch == c && want_c {
                check_message(&msg, 11, 0, 100)?;
                want_c = false;
            } else {
                return Err(format!("{what}: unexpected message on channel {ch}"));
            }
        }
        Ok(())
    })
    .await
}

/// **Handshake rejection: the acceptor drops the connection** right after `accept`, without
/// handshaking. The dialer's `handshake` returns a [`HandshakeError`] (no hang, no panic).
pub async fn handshake_fails_when_acceptor_drops<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("handshake_fails_when_acceptor_drops", async {
        let channels = [descriptor(CH.0)];
        let d = node(h, "dialer", &channels).await?;
        let a = node(h, "acceptor", &channels).await?;
        let (mut dialed, accepted) = dial_accept(&d, &a).await?;
        drop(accepted);
        let what = "dialer handshake after the acceptor dropped the connection";
        let result = within(what, dialed.handshake(&d.info, &d.key, &channels)).await?;
        expect_handshake_error(what, result)
    })
    .await
}

/// **Handshake rejection: the dialer drops the connection** right after it was accepted,
/// without handshaking. The acceptor's `handshake` returns a [`HandshakeError`].
pub async fn handshake_fails_when_dialer_drops<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("handshake_fails_when_dialer_drops", async {
        let channels = [descriptor(CH.0)];
        let d = node(h, "dialer", &channels).await?;
        let a = node(h, "acceptor", &channels).await?;
        let (dialed, mut accepted) = dial_accept(&d, &a).await?;
        drop(dialed);
        let what = "acceptor handshake after the dialer dropped the connection";
        let result = within(what, accepted.handshake(&a.info, &a.key, &channels)).await?;
        expect_handshake_error(what, result)
    })
    .await
}

fn expect_handshake_error(
    what: &str,
    result: Result<(NodeInfo, VerifyingKey), HandshakeError>,
) -> Check {
    match result {
        Err(HandshakeError::Timeout(t)) => Err(format!(
            "{what}: the transport reported its own timeout ({t:?}) instead of the drop"
        )),
        Err(_) => Ok(()),
        Ok((info, _)) => Err(format!("{what}: handshake succeeded with {info:?}")),
    }
}

/// **Handshake rejection through the router.** Router A (network `conformance-a`) dials router
/// B (network `conformance-b`) over the harness's transports: neither side reports
/// [`PeerStatus::Up`] for the other or lists it among its connected peers, and both count a
/// handshake failure in [`Router::stats`]. As a control, router C of A's network then dials A,
/// both report `Up` and an echo message crosses. All three routers open the echo channel.
pub async fn router_rejects_other_network<H: ConformanceHarness + ?Sized>(
    h: &H,
) -> Result<(), ConformanceError> {
    run("router_rejects_other_network", async {
        let mut a = RouterNode::start(h, "a", "conformance-a").await?;
        if !h.properties().node_info_on_wire {
            // The transport cannot learn the peer's network: only the control applies.
            let mut c = RouterNode::start(h, "c", "conformance-a").await?;
            c.router.add_address(a.address.clone()).map_err(|e| format!("add address: {e}"))?;
            let never = NodeKey::generate().node_id();
            c.wait_up(a.id, never).await?;
            a.wait_up(c.id, never).await?;
            c.echo
                .send(Outbound::to(a.id, Echo::Ping("conformance".into())))
                .await
                .map_err(|e| format!("router c: echo send: {e}"))?;
            let got = within("router a: echo message from c", a.echo.recv()).await?;
            ensure!(
                got.as_ref().is_some_and(|e| e.from == c.id),
                "router a received {got:?}, expected c's echo ping"
            );
            for n in [&a, &c] {
                within("router stop", n.router.stop()).await?;
            }
            return Ok(());
        }
        let mut b = RouterNode::start(h, "b", "conformance-b").await?;
        a.router.add_address(b.address.clone()).map_err(|e| format!("add address: {e}"))?;
        // No event reports a failed handshake: poll the counters, bounded.
        within("handshake failures counted by both routers", async {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                if a.router.stats().handshake_failures > 0
                    && b.router.stats().handshake_failures > 0
                {
                    break;
                }
            }
        })
        .await?;
        let (a_id, b_id) = (a.id, b.id);
        for (node, other) in [(&mut a, b_id), (&mut b, a_id)] {
            node.expect_no_up(other)?;
            ensure!(
                node.router.connected_peers().iter().all(|p| p.node_id != other),
                "router {} lists the peer of another network as connected",
                node.name
            );
        }

        // Control: a peer of the same network is admitted over the same transports.
        let mut c = RouterNode::start(h, "c", "conformance-a").await?;
        c.router.add_address(a.address.clone()).map_err(|e| format!("add address: {e}"))?;
        c.wait_up(a.id, b.id).await?;
        a.wait_up(c.id, b.id).await?;
        c.echo
            .send(Outbound::to(a.id, Echo::Ping("conformance".into())))
            .await
            .map_err(|e| format!("router c: echo send: {e}"))?;
        let got = within("router a: echo message from c", a.echo.recv()).await?;
        ensure!(
            got.as_ref()
                .is_some_and(|e| e.from == c.id && e.message == Echo::Ping("conformance".into())),
            "router a received {got:?}, expected c's echo ping"
        );
        b.expect_no_up(a.id)?;
        for n in [&a, &b, &c] {
            within("router stop", n.router.stop()).await?;
        }
        Ok(())
    })
    .await
}

struct RouterNode {
    name: &'static str,
    router: Router,
    echo: Channel<Echo>,
    updates: PeerUpdates,
    id: NodeId,
    address: NodeAddress,
}

impl RouterNode {
    async fn start<H: ConformanceHarness + ?Sized>(
        h: &H,
        name: &'static str,
        network: &str,
    ) -> Check<Self> {
        let key = NodeKey::generate();
        let id = key.node_id();
        let listening = listen(h, &key).await?;
        let address = address_of(&key, &listening.endpoint);
        let info = NodeInfo::new(id, network, name, []);
        let router =
            Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
                .map_err(|e| format!("router {name}: {e}"))?;
        router.add_transport(listening.transport).map_err(|e| format!("router {name}: {e}"))?;
        // A channel in common (transports may require at least one, as MConn does).
        let echo = router
            .open_channel::<Echo>(echo_channel_descriptor())
            .map_err(|e| format!("router {name}: {e}"))?;
        let updates = router.subscribe();
        router.start().map_err(|e| format!("router {name}: {e}"))?;
        Ok(Self { name, router, echo, updates, id, address })
    }

    /// Fails if an `Up` update for `peer` is already queued.
    fn expect_no_up(&mut self, peer: NodeId) -> Check {
        loop {
            let next = {
                let recv = pin!(self.updates.recv());
                poll_once(recv)
            };
            match next {
                Poll::Pending | Poll::Ready(Err(PeerUpdatesError::Closed)) => return Ok(()),
                Poll::Ready(Ok(u)) if u.node_id == peer && u.status == PeerStatus::Up => {
                    return Err(format!(
                        "router {} admitted {peer}, a peer of another network",
                        self.name
                    ));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(PeerUpdatesError::Lagged(_))) => {
                    ensure!(
                        self.router.connected_peers().iter().all(|p| p.node_id != peer),
                        "router {} admitted {peer}, a peer of another network",
                        self.name
                    );
                }
            }
        }
    }

    /// Waits for `Up` of `peer`, failing on an `Up` of `never`.
    async fn wait_up(&mut self, peer: NodeId, never: NodeId) -> Check {
        let name = self.name;
        within(&format!("router {name}: {peer} up"), async {
            loop {
                match self.updates.recv().await {
                    Ok(u) if u.status == PeerStatus::Up && u.node_id == peer => return Ok(()),
                    Ok(u) if u.status == PeerStatus::Up && u.node_id == never => {
                        return Err(format!(
                            "router {name} admitted {never}, a peer of another network"
                        ));
                    }
                    Ok(_) | Err(PeerUpdatesError::Lagged(_)) => {}
                    Err(PeerUpdatesError::Closed) => {
                        return Err(format!("router {name}: peer updates ended"));
                    }
                }
            }
        })
        .await?
    }
}

/// Writes one `#[tokio::test]` per conformance test, each running it with the harness
/// expression `$harness` (evaluated anew per test). Invoke it at the top level of a test file of
/// the transport crate (which needs `tokio` with the `macros` and `rt-multi-thread` features):
/// `p2p::conformance_tests!(Harness);`.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn open_accept_order() -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::open_accept_order(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn transport_contract() -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::transport_contract(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn ordered_delivery() -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::ordered_delivery(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn zero_length_and_max_size() -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::zero_length_and_max_size(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn oversized_message_rejected() -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::oversized_message_rejected(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn close_implies_flush() -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::close_implies_flush(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn close_flushes_to_idle_reader() -> Result<(), $crate::conformance::ConformanceError>
        {
            $crate::conformance::close_flushes_to_idle_reader(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn backpressure() -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::backpressure(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_channels() -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::concurrent_channels(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn unknown_channel() -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::unknown_channel(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn undeclared_local_channel() -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::undeclared_local_channel(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn handshake_fails_when_acceptor_drops()
        -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::handshake_fails_when_acceptor_drops(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn handshake_fails_when_dialer_drops()
        -> Result<(), $crate::conformance::ConformanceError> {
            $crate::conformance::handshake_fails_when_dialer_drops(&$harness).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn router_rejects_other_network() -> Result<(), $crate::conformance::ConformanceError>
        {
            $crate::conformance::router_rejects_other_network(&$harness).await
        }
    };
}
