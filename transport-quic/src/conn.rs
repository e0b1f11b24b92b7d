//! [`QuicConnection`]: one QUIC connection carrying the `p2p-quic/1` protocol (see the crate
//! documentation).
//!
//! After the handshake a connection runs these tasks:
//! * one *writer* per channel we send on, spawned on the first send: it owns the channel's
//!   unidirectional stream and is fed through a one-message queue, so [`Connection::send`] is
//!   cancel-safe (a message is either queued whole or not at all) and waits while QUIC flow
//!   control holds the stream;
//! * one *accept loop* that accepts the peer's unidirectional streams and watches the control
//!   stream for the peer's close;
//! * one *reader* per accepted stream, delivering messages to its channel's bounded queue;
//!   [`Connection::receive`] takes from the highest-priority channel with a message (a full
//!   queue stops only its own reader: backpressure to the peer on that stream alone).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ed25519_dalek::VerifyingKey;
use p2p::router::ChannelDescriptor;
use p2p::{
    ChannelId, CloseReason, Connection, ConnectionError, Endpoint, HandshakeError,
    MAX_NODE_INFO_SIZE, NodeInfo, NodeInfoError, NodeKey,
};
use quinn::{ReadExactError, RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use crate::{QuicConfig, error_code};
use p2p_quic_endpoint::{Accepted, PriorityInbound, errors};

/// Most bytes a peer may write on the control stream after its NodeInfo.
const CONTROL_TAIL_LIMIT: usize = 1024;

/// Most bytes taken from a stream at once while reading a message body; also the initial
/// capacity of a large message's buffer.
const READ_CHUNK: usize = 64 * 1024;

/// A failure and the application error code to close the connection with (0: do not close,
/// the connection is already gone).
type Failure = (ConnectionError, u32);

enum Pending {
    Inbound(quinn::Connecting),
    /// Failed in its first packet (see [`Accepted::Failed`]).
    Failed(quinn::ConnectionError),
    Outbound(quinn::Connecting),
    /// Outbound, TLS handshake done by [`Connection::establish`].
    Established(quinn::Connection),
}

struct Writers {
    closing: bool,
    queues: HashMap<u8, WriterQueue>,
    tasks: Vec<JoinHandle<()>>,
}

/// A channel's outbound queue: at most [`QUEUE_MESSAGES`] messages and about [`QUEUE_BYTES`]
/// bytes (a larger message takes the whole byte budget) wait for the stream's writer task.
#[derive(Clone)]
struct WriterQueue {
    messages: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
}

/// Messages queued per channel for its stream writer.
const QUEUE_MESSAGES: usize = 64;
/// Bytes queued per channel for its stream writer (beyond what quinn buffers).
const QUEUE_BYTES: usize = 1 << 20;
/// Most bytes a writer hands quinn in one call.
const WRITE_BATCH: usize = 256 * 1024;
/// Messages up to this size are copied, with their length prefix, into one buffer per batch;
/// larger ones go to quinn as they are.
const COALESCE_MAX: usize = 4 * 1024;

struct Running {
    conn: quinn::Connection,
    priorities: HashMap<u8, u8>,
    writers: Mutex<Writers>,
    inbound: Arc<PriorityInbound>,
    /// Serialises [`Connection::receive`] calls.
    receiving: tokio::sync::Mutex<()>,
    failure: Arc<Mutex<Option<ConnectionError>>>,
    control: tokio::sync::Mutex<Option<SendStream>>,
}

enum State {
    Pending(Pending),
    Running(Box<Running>),
    Failed,
}

/// A QUIC connection. Created by [`crate::QuicTransport`]; usable after
/// [`Connection::handshake`], which also completes the QUIC/TLS handshake.
pub struct QuicConnection {
    state: State,
    local: Endpoint,
    remote: Endpoint,
    config: QuicConfig,
}

impl fmt::Debug for QuicConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicConnection")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl Drop for QuicConnection {
    fn drop(&mut self) {
        if let State::Running(r) = &self.state {
            // The background tasks hold handles too; without this the keep-alives would keep
            // an abandoned connection open.
            r.conn.close(VarInt::from_u32(error_code::NO_ERROR), b"dropped");
        }
    }
}

impl QuicConnection {
    pub(crate) fn inbound(
        accepted: Accepted,
        local: Endpoint,
        remote: Endpoint,
        config: QuicConfig,
    ) -> Self {
        let pending = match accepted {
            Accepted::Connecting(connecting) => Pending::Inbound(connecting),
            Accepted::Failed { error, .. } => Pending::Failed(error),
            // A variant added later: nothing to handshake with.
            _ => Pending::Failed(quinn::ConnectionError::LocallyClosed),
        };
        Self { state: State::Pending(pending), local, remote, config }
    }

    pub(crate) fn outbound(
        connecting: quinn::Connecting,
        local: Endpoint,
        remote: Endpoint,
        config: QuicConfig,
    ) -> Self {
        Self { state: State::Pending(Pending::Outbound(connecting)), local, remote, config }
    }

    fn running(&self) -> Result<&Running, ConnectionError> {
        match &self.state {
            State::Running(r) => Ok(r),
            _ => Err(ConnectionError::Closed),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set_failure(failure: &Mutex<Option<ConnectionError>>, e: ConnectionError) {
    lock(failure).get_or_insert(e);
}

fn conn_err(e: quinn::ConnectionError) -> ConnectionError {
    errors::connection_error(e)
}

fn handshake_err(e: quinn::ConnectionError) -> HandshakeError {
    errors::handshake_error(e, "p2p-quic/1")
}

fn read_err(e: quinn::ReadError) -> Failure {
    match e {
        quinn::ReadError::ConnectionLost(e) => (conn_err(e), 0),
        quinn::ReadError::Reset(code) => (
            ConnectionError::Protocol(format!("peer reset a stream (code {code})")),
            error_code::PROTOCOL_VIOLATION,
        ),
        e => (ConnectionError::Protocol(e.to_string()), error_code::PROTOCOL_VIOLATION),
    }
}

fn write_err(e: quinn::WriteError) -> Failure {
    match e {
        quinn::WriteError::ConnectionLost(e) => (conn_err(e), 0),
        quinn::WriteError::Stopped(code) => (
            ConnectionError::Protocol(format!("peer stopped a stream (code {code})")),
            error_code::PROTOCOL_VIOLATION,
        ),
        e => (ConnectionError::Protocol(e.to_string()), error_code::PROTOCOL_VIOLATION),
    }
}

fn protocol(msg: impl Into<String>) -> Failure {
    (ConnectionError::Protocol(msg.into()), error_code::PROTOCOL_VIOLATION)
}

fn encode_uvarint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a uvarint; `Ok(None)` if the stream ended cleanly before its first byte.
async fn read_uvarint(stream: &mut RecvStream) -> Result<Option<u64>, Failure> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        match stream.read_exact(&mut byte).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(_)) if i == 0 => return Ok(None),
            Err(ReadExactError::FinishedEarly(_)) => {
                return Err(protocol("stream ended inside a length prefix"));
            }
            Err(ReadExactError::ReadError(e)) => return Err(read_err(e)),
        }
        let [b] = byte;
        if i == 9 && b > 1 {
            return Err(protocol("length prefix overflows 64 bits"));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(protocol("malformed length prefix"))
}

/// Reads exactly `len` bytes (the length was checked against its limit by the caller).
///
/// The buffer grows with the bytes that actually arrive (at most doubling, never beyond `len`),
/// so a length prefix alone, or a body trickled slowly, costs memory in proportion to what the
/// peer sent rather than to what it claimed.
async fn read_body(stream: &mut RecvStream, len: usize) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::with_capacity(len.min(READ_CHUNK));
    while body.len() < len {
        let missing = len.saturating_sub(body.len());
        let chunk = match stream.read_chunk(missing.min(READ_CHUNK), true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => {
                let n = body.len();
                return Err(protocol(format!("stream ended after {n} of {len} message bytes")));
            }
            Err(e) => return Err(read_err(e)),
        };
        let spare = body.capacity().saturating_sub(body.len());
        if spare < chunk.len() {
            body.reserve_exact(body.len().max(chunk.len()).min(missing));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn failure_to_handshake(f: Failure) -> HandshakeError {
    match f {
        (e, 0) => HandshakeError::Connection(e),
        (e, _) => HandshakeError::Protocol(e.to_string()),
    }
}

/// Writes our NodeInfo on the control stream.
async fn write_node_info(
    send: &mut SendStream,
    local_info: &NodeInfo,
) -> Result<(), HandshakeError> {
    let body = local_info.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 2);
    encode_uvarint(body.len() as u64, &mut out);
    out.extend_from_slice(&body);
    send.write_all(&out).await.map_err(|e| failure_to_handshake(write_err(e)))
}

/// Reads the peer's NodeInfo from the control stream (its length is checked before anything
/// is allocated).
async fn read_node_info(recv: &mut RecvStream) -> Result<NodeInfo, HandshakeError> {
    let len = read_uvarint(recv)
        .await
        .map_err(failure_to_handshake)?
        .ok_or(HandshakeError::Connection(ConnectionError::Closed))?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_NODE_INFO_SIZE {
        return Err(HandshakeError::InvalidNodeInfo(NodeInfoError::TooLarge {
            len,
            max: MAX_NODE_INFO_SIZE,
        }));
    }
    let body = read_body(recv, len).await.map_err(failure_to_handshake)?;
    Ok(NodeInfo::decode(&body)?)
}

/// The acceptor's side of the handshake: opens the control stream and writes our NodeInfo in
/// 0.5-RTT data (with the TLS server flight, before the client is authenticated: NodeInfo is
/// public), then waits for the TLS handshake to complete (the client's certificate verified)
/// before it reads anything from the peer.
async fn accept_handshake(
    connecting: quinn::Connecting,
    local_info: &NodeInfo,
) -> Result<(quinn::Connection, HandshakeResult), HandshakeError> {
    let (conn, established) = match connecting.into_0rtt() {
        Ok((conn, established)) => (conn, Some(established)),
        // quinn documents that an incoming connection always converts; should it not, the
        // NodeInfo goes after the handshake.
        Err(connecting) => (connecting.await.map_err(handshake_err)?, None),
    };
    let result = async {
        let (mut send, mut recv) =
            conn.open_bi().await.map_err(|e| HandshakeError::Connection(conn_err(e)))?;
        write_node_info(&mut send, local_info).await?;
        if let Some(established) = established {
            // Resolves when the handshake completes, or (false) when it failed.
            let _ = established.await;
        }
        if let Some(reason) = conn.close_reason() {
            return Err(handshake_err(reason));
        }
        let peer_key = peer_key(&conn)?;
        let info = read_node_info(&mut recv).await?;
        Ok((peer_key, info, send, recv))
    }
    .await
    // A handshake that failed reports why (a TLS alert, a timeout), not the stream error.
    .map_err(|e| conn.close_reason().map_or(e, handshake_err));
    Ok((conn, result))
}

/// The peer's key and NodeInfo, and the control stream.
type HandshakeResult = Result<(VerifyingKey, NodeInfo, SendStream, RecvStream), HandshakeError>;

fn peer_key(conn: &quinn::Connection) -> Result<VerifyingKey, HandshakeError> {
    errors::peer_public_key(conn)
}

/// The dialer's side of the handshake (TLS done): accepts the control stream, whose NodeInfo
/// arrived with the handshake, and answers with ours.
async fn dial_handshake(conn: &quinn::Connection, local_info: &NodeInfo) -> HandshakeResult {
    let peer_key = peer_key(conn)?;
    let (mut send, mut recv) =
        conn.accept_bi().await.map_err(|e| HandshakeError::Connection(conn_err(e)))?;
    write_node_info(&mut send, local_info).await?;
    let info = read_node_info(&mut recv).await?;
    Ok((peer_key, info, send, recv))
}

#[async_trait]
impl Connection for QuicConnection {
    async fn establish(&mut self) -> Result<(), HandshakeError> {
        if !matches!(self.state, State::Pending(Pending::Outbound(_))) {
            return Ok(());
        }
        let State::Pending(Pending::Outbound(connecting)) =
            std::mem::replace(&mut self.state, State::Failed)
        else {
            return Ok(());
        };
        // The QUIC/TLS handshake: the peer's certificate is verified here.
        let conn = connecting.await.map_err(handshake_err)?;
        self.state = State::Pending(Pending::Established(conn));
        Ok(())
    }

    async fn handshake(
        &mut self,
        local_info: &NodeInfo,
        _key: &NodeKey,
        channels: &[ChannelDescriptor],
    ) -> Result<(NodeInfo, VerifyingKey), HandshakeError> {
        let State::Pending(pending) = std::mem::replace(&mut self.state, State::Failed) else {
            return Err(HandshakeError::Protocol("handshake already done".into()));
        };
        // The TLS handshake (our key was bound into the endpoint's certificate) and the
        // NodeInfo exchange on the control stream, which the acceptor opens.
        let (conn, result) = match pending {
            Pending::Failed(error) => return Err(handshake_err(error)),
            Pending::Inbound(connecting) => accept_handshake(connecting, local_info).await?,
            Pending::Outbound(connecting) => {
                let conn = connecting.await.map_err(handshake_err)?;
                let result = dial_handshake(&conn, local_info).await;
                (conn, result)
            }
            Pending::Established(conn) => {
                let result = dial_handshake(&conn, local_info).await;
                (conn, result)
            }
        };
        let (peer_key, peer_info, control_send, control_recv) = match result {
            Ok(x) => x,
            Err(e) => {
                let code = match e {
                    HandshakeError::Connection(_) => error_code::NO_ERROR,
                    _ => error_code::PROTOCOL_VIOLATION,
                };
                conn.close(VarInt::from_u32(code), b"handshake failed");
                return Err(e);
            }
        };

        let limits: Arc<HashMap<u8, usize>> =
            Arc::new(channels.iter().map(|d| (d.id.0, d.max_message_size)).collect());
        // One stream per channel of ours is all a peer may open (a stream for another channel,
        // or a second one for a channel, closes the connection): more credit than that only
        // costs memory, less would stall a peer's channels above the initial 16.
        conn.set_max_concurrent_uni_streams(VarInt::from_u32(
            u32::try_from(limits.len()).unwrap_or(u32::MAX),
        ));
        let priorities: HashMap<u8, u8> = channels.iter().map(|d| (d.id.0, d.priority)).collect();
        let inbound = Arc::new(PriorityInbound::new(self.config.receive_queue, priorities.clone()));
        let failure = Arc::new(Mutex::new(None));
        let accept =
            accept_loop(conn.clone(), control_recv, limits, inbound.clone(), failure.clone());
        let finished = inbound.clone();
        tokio::spawn(async move {
            accept.await;
            finished.finish();
        });
        self.state = State::Running(Box::new(Running {
            conn,
            priorities,
            writers: Mutex::new(Writers {
                closing: false,
                queues: HashMap::new(),
                tasks: Vec::new(),
            }),
            inbound,
            receiving: tokio::sync::Mutex::new(()),
            failure,
            control: tokio::sync::Mutex::new(Some(control_send)),
        }));
        Ok((peer_info, peer_key))
    }

    async fn send(&self, channel: ChannelId, message: Bytes) -> Result<(), ConnectionError> {
        let running = self.running()?;
        if let Some(reason) = running.conn.close_reason() {
            return Err(conn_err(reason));
        }
        let queue = {
            let mut writers = lock(&running.writers);
            if writers.closing {
                return Err(ConnectionError::Closed);
            }
            match writers.queues.get(&channel.0) {
                Some(q) => q.clone(),
                None => {
                    let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
                    let queue =
                        WriterQueue { messages: tx, bytes: Arc::new(Semaphore::new(QUEUE_BYTES)) };
                    let priority = running.priorities.get(&channel.0).copied().unwrap_or(0);
                    let task = tokio::spawn(writer(
                        running.conn.clone(),
                        channel.0,
                        i32::from(priority),
                        rx,
                        running.failure.clone(),
                        self.config.close_timeout,
                    ));
                    writers.tasks.push(task);
                    writers.queues.insert(channel.0, queue.clone());
                    queue
                }
            }
        };
        let cost = u32::try_from(message.len().clamp(1, QUEUE_BYTES)).unwrap_or(u32::MAX);
        let permit =
            queue.bytes.acquire_many_owned(cost).await.map_err(|_| ConnectionError::Closed)?;
        queue.messages.send((message, permit)).await.map_err(|_| ConnectionError::Closed)
    }

    async fn receive(&self) -> Result<(ChannelId, Bytes), ConnectionError> {
        let running = self.running()?;
        let _one_at_a_time = running.receiving.lock().await;
        match running.inbound.receive().await {
            Some(message) => Ok(message),
            // Readers are gone once the accept loop ended and what they queued was taken.
            None => Err(lock(&running.failure).take().unwrap_or(ConnectionError::Closed)),
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    fn remote_endpoint(&self) -> Endpoint {
        self.remote.clone()
    }

    async fn close_with(&self, reason: &CloseReason) {
        let code = match reason {
            CloseReason::Evicted | CloseReason::Replaced => error_code::EVICTED,
            CloseReason::Misbehaved(_) => error_code::MISBEHAVED,
            CloseReason::Banned(_) => error_code::BANNED,
            _ => return self.close().await,
        };
        let Ok(running) = self.running() else { return };
        lock(&running.writers).closing = true;
        // Not a graceful close: what is unsent is dropped, the peer learns why at once.
        running.conn.close(VarInt::from_u32(code), errors::reason_bytes(reason.text()));
    }

    async fn close(&self) {
        let Ok(running) = self.running() else { return };
        let deadline = tokio::time::Instant::now() + self.config.close_timeout;
        let tasks = {
            let mut writers = lock(&running.writers);
            writers.closing = true;
            // Dropping the queues lets each writer finish its stream once it has written what
            // it holds and the peer has acknowledged it.
            writers.queues.clear();
            std::mem::take(&mut writers.tasks)
        };
        let flushed = tokio::time::timeout_at(deadline, async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
        if flushed.is_err() {
            debug!(remote = %self.remote, "QUIC close: streams not flushed in time");
        }
        if let Some(mut control) = running.control.lock().await.take() {
            // Tells the peer we are closing; it closes the connection once it has read all.
            let _ = control.finish();
            let _ = tokio::time::timeout_at(deadline, running.conn.closed()).await;
        }
        running.conn.close(VarInt::from_u32(error_code::NO_ERROR), b"bye");
    }
}

/// Owns one channel's outbound stream.
async fn writer(
    conn: quinn::Connection,
    channel: u8,
    priority: i32,
    mut queue: mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>,
    failure: Arc<Mutex<Option<ConnectionError>>>,
    close_timeout: Duration,
) {
    let result = async {
        let mut stream = conn.open_uni().await.map_err(|e| (conn_err(e), 0))?;
        let _ = stream.set_priority(priority);
        stream.write_all(&[channel]).await.map_err(write_err)?;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut permits = Vec::new();
        let mut small = BytesMut::new();
        let mut prefix = Vec::with_capacity(10);
        while let Some(first) = queue.recv().await {
            // Take what else is waiting (up to a batch) and hand it to quinn in one call:
            // small messages are copied together with their prefixes, large ones are not.
            let mut next = Some(first);
            let mut batched = 0;
            while let Some((message, permit)) = next.take() {
                batched += message.len();
                prefix.clear();
                encode_uvarint(message.len() as u64, &mut prefix);
                if message.len() <= COALESCE_MAX {
                    small.extend_from_slice(&prefix);
                    small.extend_from_slice(&message);
                } else {
                    if !small.is_empty() {
                        chunks.push(small.split().freeze());
                    }
                    chunks.push(Bytes::copy_from_slice(&prefix));
                    chunks.push(message);
                }
                permits.push(permit);
                if batched < WRITE_BATCH {
                    next = queue.try_recv().ok();
                }
            }
            if !small.is_empty() {
                chunks.push(small.split().freeze());
            }
            stream.write_all_chunks(&mut chunks).await.map_err(write_err)?;
            chunks.clear();
            // The bytes are quinn's now: make room in the queue.
            permits.clear();
        }
        let _ = stream.finish();
        let _ = tokio::time::timeout(close_timeout, stream.stopped()).await;
        Ok::<_, Failure>(())
    }
    .await;
    if let Err((e, code)) = result {
        debug!(channel, error = %e, "QUIC stream writer failed");
        queue.close();
        fail(&conn, &failure, e, code);
    }
}

fn fail(
    conn: &quinn::Connection,
    failure: &Mutex<Option<ConnectionError>>,
    e: ConnectionError,
    code: u32,
) {
    let reason = e.to_string();
    set_failure(failure, e);
    if code != error_code::NO_ERROR {
        conn.close(VarInt::from_u32(code), reason.as_bytes());
    }
}

/// Accepts the peer's channel streams; when the peer finishes the control stream (it is
/// closing), reads every stream to its end and then closes the connection.
async fn accept_loop(
    conn: quinn::Connection,
    mut control: RecvStream,
    limits: Arc<HashMap<u8, usize>>,
    inbound: Arc<PriorityInbound>,
    failure: Arc<Mutex<Option<ConnectionError>>>,
) {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut readers = JoinSet::new();
    let spawn = |readers: &mut JoinSet<()>, stream: RecvStream| {
        readers.spawn(reader(
            stream,
            conn.clone(),
            limits.clone(),
            seen.clone(),
            inbound.clone(),
            failure.clone(),
        ));
    };
    let control_end = control.read_to_end(CONTROL_TAIL_LIMIT);
    tokio::pin!(control_end);
    loop {
        tokio::select! {
            biased;
            s = conn.accept_uni() => match s {
                Ok(stream) => spawn(&mut readers, stream),
                Err(e) => {
                    set_failure(&failure, conn_err(e));
                    return;
                }
            },
            s = conn.accept_bi() => {
                // The control stream is the only bidirectional stream; data on another one
                // would sit in quinn's buffers unread.
                let (e, code) = match s {
                    Ok(_) => protocol("peer opened a bidirectional stream besides the control stream"),
                    Err(e) => (conn_err(e), 0),
                };
                fail(&conn, &failure, e, code);
                return;
            },
            r = &mut control_end => match r {
                Ok(_) => break,
                Err(quinn::ReadToEndError::Read(e)) => {
                    let (e, code) = read_err(e);
                    fail(&conn, &failure, e, code);
                    return;
                }
                Err(e) => {
                    let (e, code) = protocol(format!("control stream: {e}"));
                    fail(&conn, &failure, e, code);
                    return;
                }
            },
            Some(_) = readers.join_next() => {}
        }
    }
    // The peer is closing: take the streams that already arrived, read them to their end.
    while let Ok(Ok(stream)) = tokio::time::timeout(Duration::ZERO, conn.accept_uni()).await {
        spawn(&mut readers, stream);
    }
    while readers.join_next().await.is_some() {}
    conn.close(VarInt::from_u32(error_code::NO_ERROR), b"bye");
}

/// Reads one channel stream of the peer.
async fn reader(
    mut stream: RecvStream,
    conn: quinn::Connection,
    limits: Arc<HashMap<u8, usize>>,
    seen: Arc<Mutex<HashSet<u8>>>,
    inbound: Arc<PriorityInbound>,
    failure: Arc<Mutex<Option<ConnectionError>>>,
) {
    let result = async {
        let mut first = [0u8; 1];
        match stream.read_exact(&mut first).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(_)) => return Ok(()),
            Err(ReadExactError::ReadError(e)) => return Err(read_err(e)),
        }
        let [ch] = first;
        let channel = ChannelId(ch);
        let Some(&max) = limits.get(&ch) else {
            return Err((ConnectionError::UnknownChannel(channel), error_code::UNKNOWN_CHANNEL));
        };
        if !lock(&seen).insert(ch) {
            return Err(protocol(format!("second stream for channel {channel}")));
        }
        let queue = inbound.register(ch);
        loop {
            let Some(len) = read_uvarint(&mut stream).await? else { return Ok(()) };
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > max {
                return Err((
                    ConnectionError::MessageTooLarge { channel, size: len, max },
                    error_code::MESSAGE_TOO_LARGE,
                ));
            }
            let body = read_body(&mut stream, len).await?;
            if !queue.send(Bytes::from(body)).await {
                return Ok(());
            }
            inbound.notify();
        }
    }
    .await;
    if let Err((e, code)) = result {
        debug!(error = %e, "QUIC stream reader failed");
        fail(&conn, &failure, e, code);
    }
}
