//! [`Lp2pConnection`]: one libp2p-over-QUIC connection (see the crate documentation).
//!
//! After the QUIC/TLS handshake a connection runs:
//! * one *accept loop*, started before anything else (a Go peer opens identify and channel
//!   streams at once), which spawns one task per peer-opened bidirectional stream (quinn's
//!   stream limit, [`Lp2pConfig::max_inbound_streams`], bounds them) and refuses
//!   unidirectional ones;
//! * one task per message we send, holding one of its channel's
//!   [`Lp2pConfig::max_streams_per_channel`] slots until the peer has answered and read the
//!   message; [`Connection::send`] waits for a slot, then returns (cancel-safe: once it
//!   returns the message is the task's; before, nothing was sent).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use ed25519_dalek::VerifyingKey;
use p2p::router::ChannelDescriptor;
use p2p::{
    ChannelId, CloseReason, Connection, ConnectionError, Endpoint, HandshakeError, NodeId,
    NodeInfo, NodeKey,
};
use p2p_quic_endpoint::{Accepted, InboundSender, PriorityInbound, errors};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info};

use crate::identify::{self, PeerIdentity};
use crate::multistream::{self, HEADER, NA, Protocol};
use crate::{Lp2pConfig, error_code, multiaddr};

/// Most bytes taken from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Most protocols an opener may propose on one stream before we reset it.
const MAX_PROPOSALS: usize = 8;

/// Concurrent ping streams a peer may have open (go-libp2p allows 2 inbound per peer).
const PING_STREAMS: usize = 2;

/// The ping payload size.
const PING_SIZE: usize = 32;

/// How long a ping stream may stay idle.
const PING_IDLE: Duration = Duration::from_secs(60);

/// Most bytes the answer to a message stream may carry after the echo.
const ANSWER_TAIL_LIMIT: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a stream exchange failed.
#[derive(Debug)]
enum Fault {
    /// The connection is gone.
    Lost(ConnectionError),
    /// The peer broke the protocol: the connection is closed.
    Violation(ConnectionError),
    /// Only this stream failed: it is reset and counted.
    Stream(String),
}

fn read_fault(e: quinn::ReadError) -> Fault {
    match e {
        quinn::ReadError::ConnectionLost(e) => Fault::Lost(errors::connection_error(e)),
        quinn::ReadError::Reset(code) => {
            Fault::Stream(format!("peer reset the stream (code {code})"))
        }
        e => Fault::Stream(e.to_string()),
    }
}

fn violation(msg: impl Into<String>) -> Fault {
    Fault::Violation(ConnectionError::Protocol(msg.into()))
}

/// The read side of a stream with a buffer, for tokens and length prefixes.
struct Reader {
    recv: RecvStream,
    buf: BytesMut,
    finished: bool,
    /// Longest wait for the next bytes (`None`: no limit).
    idle: Option<Duration>,
}

impl Reader {
    fn new(recv: RecvStream, idle: Option<Duration>) -> Self {
        Self { recv, buf: BytesMut::new(), finished: false, idle }
    }

    /// The next chunk of at most `max` bytes, `None` at the end of the stream.
    async fn chunk(&mut self, max: usize) -> Result<Option<Bytes>, Fault> {
        let read = self.recv.read_chunk(max, true);
        let chunk = match self.idle {
            Some(idle) => tokio::time::timeout(idle, read)
                .await
                .map_err(|_| Fault::Stream(format!("no data for {idle:?}")))?,
            None => read.await,
        };
        match chunk.map_err(read_fault)? {
            Some(c) => Ok(Some(c.bytes)),
            None => {
                self.finished = true;
                Ok(None)
            }
        }
    }

    /// Reads more into the buffer; `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, Fault> {
        if self.finished {
            return Ok(false);
        }
        match self.chunk(READ_CHUNK).await? {
            Some(c) => {
                self.buf.extend_from_slice(&c);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next multistream token; `None` if the stream ends cleanly before one starts.
    async fn token(&mut self) -> Result<Option<String>, Fault> {
        loop {
            match multistream::parse(&self.buf) {
                Ok(Some((token, used))) => {
                    let token = token.to_owned();
                    self.buf.advance(used);
                    return Ok(Some(token));
                }
                Ok(None) => {}
                Err(e) => return Err(Fault::Violation(ConnectionError::Protocol(e.to_string()))),
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Fault::Stream("stream ended inside a multistream token".into()))
                };
            }
        }
    }

    /// The next uvarint; `None` if the stream ends cleanly before one starts.
    async fn uvarint(&mut self) -> Result<Option<u64>, Fault> {
        loop {
            match unsigned_varint::decode::u64(&self.buf) {
                Ok((n, rest)) => {
                    let used = self.buf.len() - rest.len();
                    self.buf.advance(used);
                    return Ok(Some(n));
                }
                Err(unsigned_varint::decode::Error::Insufficient) if self.buf.len() < 10 => {}
                Err(_) => return Err(violation("malformed length prefix")),
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Fault::Stream("stream ended inside a length prefix".into()))
                };
            }
        }
    }

    /// Exactly `len` bytes. The buffer grows with the bytes that arrive (at most doubling, never
    /// beyond `len`), so a declared length costs nothing until the data comes.
    async fn body(&mut self, len: usize) -> Result<Bytes, Fault> {
        if self.buf.len() >= len {
            return Ok(self.buf.split_to(len).freeze());
        }
        let mut body = Vec::with_capacity(len.min(READ_CHUNK).max(self.buf.len()));
        body.extend_from_slice(&self.buf.split());
        while body.len() < len {
            let missing = len - body.len();
            let Some(chunk) = self.chunk(missing.min(READ_CHUNK)).await? else {
                let n = body.len();
                return Err(Fault::Stream(format!(
                    "stream ended after {n} of {len} message bytes"
                )));
            };
            let spare = body.capacity() - body.len();
            if spare < chunk.len() {
                body.reserve_exact(body.len().max(chunk.len()).min(missing));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }

    /// Reads and drops exactly `len` bytes.
    async fn skip(&mut self, len: usize) -> Result<(), Fault> {
        let buffered = self.buf.len().min(len);
        self.buf.advance(buffered);
        let mut left = len - buffered;
        while left > 0 {
            let Some(chunk) = self.chunk(left.min(READ_CHUNK)).await? else {
                return Err(Fault::Stream(format!("stream ended {left} bytes before the end")));
            };
            left -= chunk.len();
        }
        Ok(())
    }

    /// Reads to the end of the stream, dropping at most `limit` bytes.
    async fn drain(&mut self, limit: usize) -> Result<(), Fault> {
        let mut seen = self.buf.len();
        self.buf.clear();
        while let Some(chunk) = self.chunk(READ_CHUNK).await? {
            seen += chunk.len();
            if seen > limit {
                return Err(violation(format!("more than {limit} bytes after an answer")));
            }
        }
        Ok(())
    }
}

/// Counters of one connection.
#[derive(Debug, Default)]
struct Counters {
    streams_opened: AtomicU64,
    streams_accepted: AtomicU64,
    received: AtomicU64,
    discarded: AtomicU64,
    refused_sends: AtomicU64,
    stream_errors: AtomicU64,
    negotiation_refusals: AtomicU64,
    uni_refused: AtomicU64,
    pings_answered: AtomicU64,
}

/// A snapshot of an [`Lp2pConnection`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lp2pStats {
    /// Streams we opened (messages, identify, ping).
    pub streams_opened: u64,
    /// Streams the peer opened.
    pub streams_accepted: u64,
    /// Channel messages delivered to [`Connection::receive`]'s queues.
    pub received: u64,
    /// Messages read and dropped on channels we do not have
    /// ([`Lp2pConfig::discard_channels`]).
    pub discarded: u64,
    /// Messages we did not send because the peer refused their channel (`na`).
    pub refused_sends: u64,
    /// Streams that failed alone (reset, timed out, ended early) and were reset.
    pub stream_errors: u64,
    /// Protocols we answered `na`.
    pub negotiation_refusals: u64,
    /// Unidirectional streams refused (lp2p uses none).
    pub uni_refused: u64,
    /// Ping payloads echoed.
    pub pings_answered: u64,
}

/// One of our channels, as the receiving side sees it.
struct LocalChannel {
    max: usize,
    tx: InboundSender,
}

/// Streams we opened and have not seen answered and read yet.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(Arc<Shared>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.in_flight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.in_flight.idle.notify_waiters();
        }
    }
}

/// A message for a channel's writer, with its stream slot and in-flight mark.
type Outgoing = (Bytes, OwnedSemaphorePermit, InFlightGuard);

/// The sending side of one channel: at most [`Lp2pConfig::max_streams_per_channel`] slots, and
/// the queue of the task that opens a stream per message (as long as the slots).
#[derive(Clone)]
struct ChannelOut {
    slots: Arc<Semaphore>,
    queue: mpsc::Sender<Outgoing>,
}

/// State shared by a running connection and its tasks.
struct Shared {
    conn: quinn::Connection,
    config: Arc<Lp2pConfig>,
    peer_key: VerifyingKey,
    inbound: PriorityInbound,
    /// Serialises [`Connection::receive`] calls.
    receiving: tokio::sync::Mutex<()>,
    channels: HashMap<u8, LocalChannel>,
    priorities: HashMap<u8, u8>,
    /// Per channel: its stream slots and its writer's queue.
    outbound: Mutex<HashMap<u8, ChannelOut>>,
    /// Channels the peer answered `na` for.
    refused: Mutex<HashSet<u8>>,
    body_budget: Arc<Semaphore>,
    body_budget_total: usize,
    ping_slots: Arc<Semaphore>,
    identify: Bytes,
    in_flight: InFlight,
    closing: AtomicBool,
    failure: Mutex<Option<ConnectionError>>,
    counters: Counters,
}

impl Shared {
    fn set_failure(&self, e: ConnectionError) {
        lock(&self.failure).get_or_insert(e);
    }

    /// Records `e` and closes the connection with `code` (the peer broke the protocol).
    fn fail(&self, e: ConnectionError, code: u32) {
        let reason = e.to_string();
        self.set_failure(e);
        self.conn.close(VarInt::from_u32(code), errors::reason_bytes(&reason));
    }

    fn serves(&self, p: Protocol) -> bool {
        match p {
            Protocol::Channel(ch) => {
                self.channels.contains_key(&ch) || self.config.discard_channels.contains(&ch)
            }
            Protocol::Identify | Protocol::Ping => true,
        }
    }

    /// Handles a failed stream exchange.
    fn fault(&self, f: Fault, send: &mut SendStream, recv: &mut RecvStream) {
        match f {
            Fault::Lost(e) => self.set_failure(e),
            Fault::Violation(e) => {
                debug!(peer = %NodeId::from_public_key(&self.peer_key), error = %e, "lp2p: protocol violation");
                self.fail(e, error_code::CONN_PROTOCOL_VIOLATION);
            }
            Fault::Stream(msg) => {
                self.counters.stream_errors.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %NodeId::from_public_key(&self.peer_key), error = %msg, "lp2p: stream failed");
                let code = VarInt::from_u32(error_code::STREAM_PROTOCOL_VIOLATION);
                let _ = send.reset(code);
                let _ = recv.stop(code);
            }
        }
    }

    /// The sending side of `channel`, its writer started on first use.
    fn outbound(self: &Arc<Self>, channel: u8) -> ChannelOut {
        let mut map = lock(&self.outbound);
        map.entry(channel)
            .or_insert_with(|| {
                let prefix = multistream::header_and(&Protocol::Channel(channel).to_string());
                let slots = self.config.max_streams_per_channel.max(1);
                // Room for every slot: a sender holding a slot never waits here.
                let (queue, rx) = mpsc::channel(slots);
                let slots = Semaphore::new(slots);
                tokio::spawn(channel_writer(self.clone(), channel, Bytes::from(prefix), rx));
                ChannelOut { slots: Arc::new(slots), queue }
            })
            .clone()
    }

    fn stats(&self) -> Lp2pStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Lp2pStats {
            streams_opened: get(&c.streams_opened),
            streams_accepted: get(&c.streams_accepted),
            received: get(&c.received),
            discarded: get(&c.discarded),
            refused_sends: get(&c.refused_sends),
            stream_errors: get(&c.stream_errors),
            negotiation_refusals: get(&c.negotiation_refusals),
            uni_refused: get(&c.uni_refused),
            pings_answered: get(&c.pings_answered),
        }
    }
}

/// Queues a message on `channel`: waits for a stream slot, then hands the message to its own
/// task. Fails only when the connection is closing or gone.
async fn send_on(shared: &Arc<Shared>, channel: u8, message: Bytes) -> Result<(), ConnectionError> {
    if shared.closing.load(Ordering::Acquire) {
        return Err(ConnectionError::Closed);
    }
    if let Some(reason) = shared.conn.close_reason() {
        return Err(lock(&shared.failure)
            .take()
            .unwrap_or_else(|| errors::connection_error(reason)));
    }
    if lock(&shared.refused).contains(&channel) {
        shared.counters.refused_sends.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let out = shared.outbound(channel);
    let permit = out.slots.acquire_owned().await.map_err(|_| ConnectionError::Closed)?;
    shared.in_flight.count.fetch_add(1, Ordering::AcqRel);
    let guard = InFlightGuard(shared.clone());
    out.queue.send((message, permit, guard)).await.map_err(|_| ConnectionError::Closed)
}

/// Drives every message stream of one channel: takes the queued messages, opens a stream for
/// each (many per wake-up, so quinn packs them together) and polls them all until they are
/// answered. Ends with the connection.
async fn channel_writer(
    shared: Arc<Shared>,
    channel: u8,
    prefix: Bytes,
    mut queue: mpsc::Receiver<Outgoing>,
) {
    use futures_util::StreamExt as _;
    let mut streams = futures_util::stream::FuturesUnordered::new();
    let closed = shared.conn.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            _ = &mut closed => break,
            // Streams first (only those woken are polled), so answered ones free their slots.
            Some(()) = streams.next(), if !streams.is_empty() => {}
            m = queue.recv() => {
                let Some(first) = m else { break };
                let mut next = Some(first);
                while let Some((message, permit, guard)) = next.take() {
                    streams.push(send_message(guard, channel, prefix.clone(), message, permit));
                    next = queue.try_recv().ok();
                }
            }
        }
    }
    // The connection is gone: the streams fail at once.
    while streams.next().await.is_some() {}
}

/// Sends one message on its own stream and waits until the peer has answered and read it.
async fn send_message(
    guard: InFlightGuard,
    channel: u8,
    prefix: Bytes,
    message: Bytes,
    _permit: OwnedSemaphorePermit,
) {
    let shared = &guard.0;
    let (mut send, recv) = match shared.conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return shared.set_failure(errors::connection_error(e)),
    };
    shared.counters.streams_opened.fetch_add(1, Ordering::Relaxed);
    let priority = shared.priorities.get(&channel).copied().unwrap_or(0);
    let _ = send.set_priority(i32::from(priority));
    let mut reader = Reader::new(recv, None);
    let result = async {
        let mut len = unsigned_varint::encode::u64_buffer();
        let len = unsigned_varint::encode::u64(message.len() as u64, &mut len);
        let mut head = BytesMut::with_capacity(prefix.len() + len.len());
        head.extend_from_slice(&prefix);
        head.extend_from_slice(len);
        let mut chunks = [head.freeze(), message];
        match send.write_all_chunks(&mut chunks).await {
            // Go's receiver stops its side (code 0) once it has read the message.
            Ok(()) => {}
            Err(quinn::WriteError::Stopped(code)) if code.into_inner() == 0 => {}
            Err(quinn::WriteError::ConnectionLost(e)) => {
                return Err(Fault::Lost(errors::connection_error(e)));
            }
            Err(e) => return Err(Fault::Stream(format!("write failed: {e}"))),
        }
        let _ = send.finish();
        // The answer: the header and the echo (or `na`), within the stream timeout; then the
        // end of the stream, once the peer has read the message (no limit: a peer that reads
        // slowly holds our slots, which is backpressure).
        let stream_timeout = shared.config.stream_timeout;
        let answer = tokio::time::timeout(stream_timeout, async {
            let header = reader.token().await?;
            let answer = reader.token().await?;
            Ok::<_, Fault>((header, answer))
        })
        .await
        .map_err(|_| Fault::Stream(format!("no answer within {stream_timeout:?}")))??;
        match answer {
            (Some(h), Some(a))
                if h == HEADER && Protocol::parse(&a) == Some(Protocol::Channel(channel)) =>
            {
                reader.drain(ANSWER_TAIL_LIMIT).await
            }
            (Some(h), Some(a)) if h == HEADER && a == NA => {
                shared.counters.refused_sends.fetch_add(1, Ordering::Relaxed);
                if lock(&shared.refused).insert(channel) {
                    info!(
                        peer = %NodeId::from_public_key(&shared.peer_key),
                        channel = %ChannelId(channel),
                        "lp2p peer does not speak this channel; messages on it are dropped"
                    );
                }
                Ok(())
            }
            (None, _) | (_, None) => Err(Fault::Stream("stream ended before the answer".into())),
            (Some(h), Some(a)) => Err(violation(format!("unexpected answer {h:?} {a:?}"))),
        }
    }
    .await;
    if let Err(f) = result {
        shared.fault(f, &mut send, &mut reader.recv);
    }
}

/// Accepts the peer's streams until the connection ends, then lets the queues drain.
async fn accept_loop(shared: Arc<Shared>) {
    let mut handlers = JoinSet::new();
    loop {
        tokio::select! {
            s = shared.conn.accept_bi() => match s {
                Ok((mut send, recv)) => {
                    shared.counters.streams_accepted.fetch_add(1, Ordering::Relaxed);
                    let mut reader = Reader::new(recv, Some(shared.config.stream_timeout));
                    // Most streams carry one small message that is all there already: serve it
                    // here, without a task.
                    match receive_now(&shared, &mut send, &mut reader) {
                        Now::Done => {}
                        Now::Later => {
                            handlers.spawn(handle_stream(shared.clone(), send, reader));
                        }
                        Now::Finish { rest, body, channel, budget } => {
                            let what = (rest, body, channel);
                            handlers.spawn(finish_queueing(shared.clone(), send, reader, what, budget));
                        }
                    }
                }
                Err(e) => {
                    shared.set_failure(errors::connection_error(e));
                    break;
                }
            },
            s = shared.conn.accept_uni() => match s {
                Ok(mut recv) => {
                    shared.counters.uni_refused.fetch_add(1, Ordering::Relaxed);
                    let _ = recv.stop(VarInt::from_u32(error_code::STREAM_PROTOCOL_VIOLATION));
                }
                Err(e) => {
                    shared.set_failure(errors::connection_error(e));
                    break;
                }
            },
            Some(_) = handlers.join_next() => {}
        }
    }
    while handlers.join_next().await.is_some() {}
    shared.inbound.finish();
}

/// Negotiates, as the responder, the protocol of a peer-opened stream: `None` if the peer gave
/// up (ended the stream) first.
async fn negotiate(
    shared: &Shared,
    send: &mut SendStream,
    reader: &mut Reader,
) -> Result<Option<Protocol>, Fault> {
    // The opener usually sends everything at once; if its header is not complete in the first
    // bytes, it may be waiting for ours: send it now.
    if reader.buf.is_empty() {
        reader.fill().await?;
    }
    let mut header_sent = false;
    if !matches!(multistream::parse(&reader.buf), Ok(Some(_))) {
        let mut out = Vec::new();
        multistream::encode(HEADER, &mut out);
        send.write_all(&out).await.map_err(|e| Fault::Stream(format!("write failed: {e}")))?;
        header_sent = true;
    }
    match reader.token().await? {
        Some(h) if h == HEADER => {}
        Some(h) => {
            return Err(Fault::Violation(ConnectionError::Protocol(
                multistream::TokenError::BadHeader(h).to_string(),
            )));
        }
        None => return Ok(None),
    }
    for attempt in 0..MAX_PROPOSALS {
        let token = match reader.token().await {
            Ok(Some(token)) => token,
            Ok(None) => return Ok(None),
            // After a `na`, a pipelining opener's payload follows where a proposal would: the
            // stream is useless, but the opener did nothing wrong.
            Err(Fault::Violation(e)) if attempt > 0 => {
                return Err(Fault::Stream(format!("after a refused protocol: {e}")));
            }
            Err(f) => return Err(f),
        };
        let mut out = Vec::with_capacity(token.len() + 24);
        if !header_sent {
            multistream::encode(HEADER, &mut out);
            header_sent = true;
        }
        match Protocol::parse(&token).filter(|p| shared.serves(*p)) {
            Some(p) => {
                multistream::encode(&token, &mut out);
                send.write_all(&out)
                    .await
                    .map_err(|e| Fault::Stream(format!("write failed: {e}")))?;
                return Ok(Some(p));
            }
            None => {
                shared.counters.negotiation_refusals.fetch_add(1, Ordering::Relaxed);
                multistream::encode(NA, &mut out);
                send.write_all(&out)
                    .await
                    .map_err(|e| Fault::Stream(format!("write failed: {e}")))?;
            }
        }
    }
    let code = VarInt::from_u32(error_code::STREAM_PROTOCOL_NEGOTIATION_FAILED);
    let _ = send.reset(code);
    let _ = reader.recv.stop(code);
    Err(Fault::Stream(format!("more than {MAX_PROPOSALS} protocols proposed")))
}

/// Polls `f` once, without waiting.
fn poll_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// What [`receive_now`] did.
enum Now {
    /// The message was read, answered and queued.
    Done,
    /// Not everything is there yet: the stream's task goes on from the buffered bytes.
    Later,
    /// Read, and answered but for `rest` of the echo (flow control took only part of it), or
    /// its channel's queue is full: write the rest, queue the message, then end the stream.
    Finish { rest: Bytes, body: Bytes, channel: u8, budget: OwnedSemaphorePermit },
}

/// The fast path of a peer-opened stream: takes what has arrived and, if it is a whole message
/// of one of our channels, answers, queues and ends it at once. Anything else (more bytes to
/// wait for, other protocols, errors) is left to [`handle_stream`], with the bytes read so far
/// in `reader`'s buffer.
fn receive_now(shared: &Shared, send: &mut SendStream, reader: &mut Reader) -> Now {
    while let Some(chunk) = poll_now(reader.recv.read_chunk(READ_CHUNK, true)) {
        match chunk {
            Ok(Some(c)) => reader.buf.extend_from_slice(&c.bytes),
            Ok(None) => {
                reader.finished = true;
                break;
            }
            Err(_) => return Now::Later,
        }
    }
    let buf = &reader.buf[..];
    let Ok(Some((HEADER, h))) = multistream::parse(buf) else { return Now::Later };
    let Some(rest) = buf.get(h..) else { return Now::Later };
    let Ok(Some((token, t))) = multistream::parse(rest) else { return Now::Later };
    let Some(Protocol::Channel(channel)) = Protocol::parse(token) else { return Now::Later };
    let Some(local) = shared.channels.get(&channel) else { return Now::Later };
    let Some(rest) = rest.get(t..) else { return Now::Later };
    let Ok((len, body)) = unsigned_varint::decode::u64(rest) else { return Now::Later };
    let Ok(len) = usize::try_from(len) else { return Now::Later };
    if len > local.max || body.len() < len {
        return Now::Later;
    }
    let cost = u32::try_from(len.clamp(1, shared.body_budget_total)).unwrap_or(u32::MAX);
    let Ok(budget) = shared.body_budget.clone().try_acquire_many_owned(cost) else {
        return Now::Later;
    };
    // The echo: `header ‖ protocol`, as received.
    let echo_len = h + t;
    let Some(echo) = buf.get(..echo_len) else { return Now::Later };
    let written = match poll_now(send.write(echo)) {
        // Nothing written: the stream's task starts over from the buffered bytes.
        Some(Ok(0)) | Some(Err(_)) | None => return Now::Later,
        Some(Ok(n)) => n,
    };
    let rest = Bytes::copy_from_slice(echo.get(written..).unwrap_or_default());
    let consumed = buf.len() - (body.len() - len);
    let mut taken = reader.buf.split_to(consumed);
    let body = taken.split_off(consumed - len).freeze();
    if !rest.is_empty() {
        return Now::Finish { rest, body, channel, budget };
    }
    match local.tx.try_send(body) {
        Ok(()) => {
            shared.counters.received.fetch_add(1, Ordering::Relaxed);
            shared.inbound.notify();
            end_stream(send, reader);
            drop(budget);
            Now::Done
        }
        Err(body) => Now::Finish { rest, body, channel, budget },
    }
}

/// After the message is queued: end our side; the opener may count the message as delivered.
fn end_stream(send: &mut SendStream, reader: &mut Reader) {
    let _ = send.finish();
    if !reader.finished {
        let _ = reader.recv.stop(VarInt::from_u32(0));
    }
}

/// The rest of a fast-path stream: the rest of the echo, then the message queued (waiting for
/// room), then the end of the stream.
async fn finish_queueing(
    shared: Arc<Shared>,
    mut send: SendStream,
    mut reader: Reader,
    (rest, body, channel): (Bytes, Bytes, u8),
    _budget: OwnedSemaphorePermit,
) {
    let Some(local) = shared.channels.get(&channel) else { return };
    if !rest.is_empty()
        && let Err(e) = send.write_all(&rest).await
    {
        return shared.fault(
            Fault::Stream(format!("write failed: {e}")),
            &mut send,
            &mut reader.recv,
        );
    }
    if local.tx.send(body).await {
        shared.counters.received.fetch_add(1, Ordering::Relaxed);
        shared.inbound.notify();
        end_stream(&mut send, &mut reader);
    }
}

/// Serves one peer-opened stream.
async fn handle_stream(shared: Arc<Shared>, mut send: SendStream, mut reader: Reader) {
    let timeout = shared.config.stream_timeout;
    let negotiated =
        tokio::time::timeout(timeout, negotiate(&shared, &mut send, &mut reader)).await;
    let result = match negotiated {
        Ok(Ok(None)) => return,
        Ok(Ok(Some(Protocol::Channel(ch)))) => {
            receive_message(&shared, ch, &mut send, &mut reader).await
        }
        Ok(Ok(Some(Protocol::Identify))) => answer_identify(&shared, &mut send).await,
        Ok(Ok(Some(Protocol::Ping))) => answer_ping(&shared, &mut send, &mut reader).await,
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Fault::Stream(format!("negotiation took over {timeout:?}"))),
    };
    if let Err(f) = result {
        shared.fault(f, &mut send, &mut reader.recv);
    }
}

/// Reads one channel message, queues it (or drops it, on a discard channel), then ends the
/// stream.
async fn receive_message(
    shared: &Shared,
    channel: u8,
    send: &mut SendStream,
    reader: &mut Reader,
) -> Result<(), Fault> {
    let local = shared.channels.get(&channel);
    let max = local.map_or(shared.config.max_discard_size, |c| c.max);
    let Some(len) = reader.uvarint().await? else {
        return Err(Fault::Stream("stream ended before the message length".into()));
    };
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(match local {
            Some(_) => Fault::Violation(ConnectionError::MessageTooLarge {
                channel: ChannelId(channel),
                size: len,
                max,
            }),
            None => Fault::Stream(format!("discarded message of {len} bytes over {max}")),
        });
    }
    match local {
        Some(local) => {
            // The bytes of bodies in memory are bounded per connection: wait for room before
            // reading (QUIC flow control holds the peer meanwhile).
            let cost = len.clamp(1, shared.body_budget_total);
            let cost = u32::try_from(cost).unwrap_or(u32::MAX);
            let _budget = shared
                .body_budget
                .clone()
                .acquire_many_owned(cost)
                .await
                .map_err(|_| Fault::Lost(ConnectionError::Closed))?;
            let body = reader.body(len).await?;
            if !local.tx.send(body).await {
                return Ok(());
            }
            shared.counters.received.fetch_add(1, Ordering::Relaxed);
            shared.inbound.notify();
        }
        None => {
            reader.skip(len).await?;
            shared.counters.discarded.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Read and queued: end our side; the opener may now count the message as delivered.
    end_stream(send, reader);
    Ok(())
}

async fn answer_identify(shared: &Shared, send: &mut SendStream) -> Result<(), Fault> {
    send.write_all(&shared.identify)
        .await
        .map_err(|e| Fault::Stream(format!("write failed: {e}")))?;
    let _ = send.finish();
    Ok(())
}

async fn answer_ping(
    shared: &Shared,
    send: &mut SendStream,
    reader: &mut Reader,
) -> Result<(), Fault> {
    let Ok(_slot) = shared.ping_slots.clone().try_acquire_owned() else {
        let code = VarInt::from_u32(error_code::STREAM_RESOURCE_LIMIT_EXCEEDED);
        let _ = send.reset(code);
        let _ = reader.recv.stop(code);
        return Ok(());
    };
    reader.idle = Some(PING_IDLE);
    loop {
        while reader.buf.len() < PING_SIZE {
            if !reader.fill().await? {
                let _ = send.finish();
                return Ok(());
            }
        }
        let payload = reader.buf.split_to(PING_SIZE);
        send.write_all(&payload).await.map_err(|e| Fault::Stream(format!("write failed: {e}")))?;
        shared.counters.pings_answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Asks the peer who it is: `None` if it does not speak identify.
async fn identify_peer(shared: &Shared) -> Result<Option<PeerIdentity>, Fault> {
    let (mut send, recv) =
        shared.conn.open_bi().await.map_err(|e| Fault::Lost(errors::connection_error(e)))?;
    shared.counters.streams_opened.fetch_add(1, Ordering::Relaxed);
    let mut reader = Reader::new(recv, Some(shared.config.identify_timeout));
    send.write_all(&multistream::header_and(multistream::IDENTIFY))
        .await
        .map_err(|e| Fault::Stream(format!("write failed: {e}")))?;
    let _ = send.finish();
    if reader.token().await?.as_deref() != Some(HEADER) {
        return Err(Fault::Stream("no multistream header in the identify answer".into()));
    }
    match reader.token().await?.as_deref() {
        Some(multistream::IDENTIFY) => {}
        Some(NA) | None => return Ok(None),
        Some(other) => return Err(violation(format!("unexpected identify answer {other:?}"))),
    }
    let mut messages = Vec::new();
    while let Some(len) = reader.uvarint().await? {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > identify::MAX_MESSAGE {
            return Err(Fault::Stream(format!("identify message of {len} bytes")));
        }
        if messages.len() == identify::MAX_MESSAGES {
            return Err(Fault::Stream("too many identify messages".into()));
        }
        messages.push(reader.body(len).await?.to_vec());
    }
    identify::peer(&messages, &shared.peer_key).map(Some).map_err(|e| Fault::Stream(e.to_string()))
}

/// One ping: the round trip of 32 random bytes.
async fn ping_peer(shared: &Shared) -> Result<Duration, Fault> {
    let (mut send, recv) =
        shared.conn.open_bi().await.map_err(|e| Fault::Lost(errors::connection_error(e)))?;
    shared.counters.streams_opened.fetch_add(1, Ordering::Relaxed);
    let mut reader = Reader::new(recv, Some(shared.config.stream_timeout));
    let payload: [u8; PING_SIZE] = rand::random();
    let mut out = multistream::header_and(multistream::PING);
    out.extend_from_slice(&payload);
    let start = Instant::now();
    send.write_all(&out).await.map_err(|e| Fault::Stream(format!("write failed: {e}")))?;
    let header = reader.token().await?;
    let answer = reader.token().await?;
    if header.as_deref() != Some(HEADER) || answer.as_deref() != Some(multistream::PING) {
        return Err(Fault::Stream(format!("ping refused: {answer:?}")));
    }
    while reader.buf.len() < PING_SIZE {
        if !reader.fill().await? {
            return Err(Fault::Stream("ping stream ended early".into()));
        }
    }
    let rtt = start.elapsed();
    let echoed = reader.buf.split_to(PING_SIZE);
    let _ = send.finish();
    if echoed.as_ref() != payload {
        return Err(violation("ping echo differs"));
    }
    Ok(rtt)
}

enum Pending {
    Inbound(quinn::Connecting),
    Outbound(quinn::Connecting),
    /// Outbound, QUIC/TLS handshake done by [`Connection::establish`].
    Established(quinn::Connection),
    /// Failed in its first packet.
    Failed(quinn::ConnectionError),
}

enum State {
    Pending(Pending),
    Running(Arc<Shared>, JoinHandle<()>),
    Failed,
}

/// A libp2p-over-QUIC connection. Created by [`crate::Lp2pTransport`]; usable after
/// [`Connection::handshake`].
pub struct Lp2pConnection {
    state: State,
    local: Endpoint,
    remote: Endpoint,
    /// Our listening address, announced in identify.
    listen: SocketAddr,
    config: Arc<Lp2pConfig>,
}

impl fmt::Debug for Lp2pConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lp2pConnection")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl Drop for Lp2pConnection {
    fn drop(&mut self) {
        if let State::Running(shared, accept) = &self.state {
            accept.abort();
            shared.conn.close(VarInt::from_u32(error_code::NO_ERROR), b"dropped");
        }
    }
}

impl Lp2pConnection {
    pub(crate) fn inbound(
        accepted: Accepted,
        local: Endpoint,
        remote: Endpoint,
        listen: SocketAddr,
        config: Arc<Lp2pConfig>,
    ) -> Self {
        let pending = match accepted {
            Accepted::Connecting(c) => Pending::Inbound(c),
            Accepted::Failed { error, .. } => Pending::Failed(error),
            _ => Pending::Failed(quinn::ConnectionError::LocallyClosed),
        };
        Self { state: State::Pending(pending), local, remote, listen, config }
    }

    pub(crate) fn outbound(
        connecting: quinn::Connecting,
        local: Endpoint,
        remote: Endpoint,
        listen: SocketAddr,
        config: Arc<Lp2pConfig>,
    ) -> Self {
        Self { state: State::Pending(Pending::Outbound(connecting)), local, remote, listen, config }
    }

    fn running(&self) -> Result<&Arc<Shared>, ConnectionError> {
        match &self.state {
            State::Running(s, _) => Ok(s),
            _ => Err(ConnectionError::Closed),
        }
    }

    /// The connection's counters (zero before the handshake).
    pub fn stats(&self) -> Lp2pStats {
        self.running().map(|s| s.stats()).unwrap_or_default()
    }

    /// Pings the peer once (`/ipfs/ping/1.0.0`): the round trip.
    pub async fn ping(&self) -> Result<Duration, ConnectionError> {
        let shared = self.running()?;
        ping_peer(shared).await.map_err(|f| match f {
            Fault::Lost(e) | Fault::Violation(e) => e,
            Fault::Stream(msg) => ConnectionError::Protocol(msg),
        })
    }

    /// The peer's libp2p peer ID (`12D3KooW…`), once handshaken.
    pub fn peer_id(&self) -> Option<String> {
        self.running().ok().map(|s| p2p::peer_id::libp2p_peer_id(&s.peer_key))
    }
}

/// The NodeInfo of a peer, made up from what lp2p tells (see the crate documentation).
fn peer_node_info(
    peer: &VerifyingKey,
    local: &NodeInfo,
    channels: &[ChannelDescriptor],
    identity: Option<&PeerIdentity>,
    remote: SocketAddr,
) -> NodeInfo {
    let ours = channels.iter().map(|d| d.id);
    let peer_channels: Vec<ChannelId> = match identity {
        Some(id) => ours.filter(|c| id.protocols.contains(&Protocol::Channel(c.0))).collect(),
        None => ours.collect(),
    };
    let listen = identity
        .and_then(|id| {
            (id.listen.iter())
                .find(|a| a.is_ipv4() == remote.is_ipv4() && !a.ip().is_unspecified())
                .copied()
        })
        .unwrap_or(remote);
    let moniker = identity.and_then(|id| id.agent.clone()).unwrap_or_else(|| "lp2p".to_owned());
    NodeInfo::new(NodeId::from_public_key(peer), local.network.clone(), moniker, peer_channels)
        .with_listen_addr(format!("lp2p://{listen}"))
        .with_protocol_version(local.protocol_version)
        .with_version("")
        .with_tx_index("")
}

#[async_trait]
impl Connection for Lp2pConnection {
    async fn establish(&mut self) -> Result<(), HandshakeError> {
        if !matches!(self.state, State::Pending(Pending::Outbound(_))) {
            return Ok(());
        }
        let State::Pending(Pending::Outbound(connecting)) =
            std::mem::replace(&mut self.state, State::Failed)
        else {
            return Ok(());
        };
        let conn = connecting.await.map_err(|e| errors::handshake_error(e, "libp2p"))?;
        self.state = State::Pending(Pending::Established(conn));
        Ok(())
    }

    async fn handshake(
        &mut self,
        local_info: &NodeInfo,
        key: &NodeKey,
        channels: &[ChannelDescriptor],
    ) -> Result<(NodeInfo, VerifyingKey), HandshakeError> {
        let State::Pending(pending) = std::mem::replace(&mut self.state, State::Failed) else {
            return Err(HandshakeError::Protocol("handshake already done".into()));
        };
        let hs_err = |e| errors::handshake_error(e, "libp2p");
        let conn = match pending {
            Pending::Inbound(c) | Pending::Outbound(c) => c.await.map_err(hs_err)?,
            Pending::Established(conn) => conn,
            Pending::Failed(e) => return Err(hs_err(e)),
        };
        let peer_key = match errors::peer_public_key(&conn) {
            Ok(k) => k,
            Err(e) => {
                conn.close(
                    VarInt::from_u32(error_code::CONN_PROTOCOL_VIOLATION),
                    b"bad certificate",
                );
                return Err(e);
            }
        };
        let remote = conn.remote_address();
        // Announce where we listen: the bound address, or the local address the peer reached
        // if we listen on every interface.
        let listen = match conn.local_ip() {
            Some(ip) if self.listen.ip().is_unspecified() => {
                SocketAddr::new(ip, self.listen.port())
            }
            _ => self.listen,
        };
        let mut served: Vec<Protocol> =
            channels.iter().map(|d| Protocol::Channel(d.id.0)).collect();
        for &ch in &self.config.discard_channels {
            if !served.contains(&Protocol::Channel(ch)) {
                served.push(Protocol::Channel(ch));
            }
        }
        let identify =
            identify::ours(&key.public_key(), listen, remote, &served, &self.config.agent_version);
        let priorities: HashMap<u8, u8> = channels.iter().map(|d| (d.id.0, d.priority)).collect();
        let inbound = PriorityInbound::new(self.config.receive_queue, priorities.clone());
        let local_channels = channels
            .iter()
            .map(|d| {
                (d.id.0, LocalChannel { max: d.max_message_size, tx: inbound.register(d.id.0) })
            })
            .collect();
        let budget = self.config.receive_buffer.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            conn,
            config: self.config.clone(),
            peer_key,
            inbound,
            receiving: tokio::sync::Mutex::new(()),
            channels: local_channels,
            priorities,
            outbound: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashSet::new()),
            body_budget: Arc::new(Semaphore::new(budget)),
            body_budget_total: budget,
            ping_slots: Arc::new(Semaphore::new(PING_STREAMS)),
            identify: Bytes::from(identify),
            in_flight: InFlight::default(),
            closing: AtomicBool::new(false),
            failure: Mutex::new(None),
            counters: Counters::default(),
        });
        // Answer the peer's streams from now on: Go opens identify and channel streams at once.
        let accept = tokio::spawn(accept_loop(shared.clone()));
        let peer_id = NodeId::from_public_key(&peer_key);
        let identity = match tokio::time::timeout(
            self.config.identify_timeout,
            identify_peer(&shared),
        )
        .await
        {
            Ok(Ok(identity)) => identity,
            Ok(Err(Fault::Lost(e))) => {
                accept.abort();
                return Err(HandshakeError::Connection(e));
            }
            Ok(Err(Fault::Violation(e))) => {
                accept.abort();
                shared.fail(
                    ConnectionError::Protocol(e.to_string()),
                    error_code::CONN_PROTOCOL_VIOLATION,
                );
                return Err(HandshakeError::Protocol(format!("identify: {e}")));
            }
            Ok(Err(Fault::Stream(msg))) => {
                debug!(peer = %peer_id, error = %msg, "lp2p: identify failed; assuming the peer has all our channels");
                None
            }
            Err(_) => {
                debug!(peer = %peer_id, "lp2p: no identify answer in time; assuming the peer has all our channels");
                None
            }
        };
        let info = peer_node_info(&peer_key, local_info, channels, identity.as_ref(), remote);
        debug!(
            peer = %peer_id,
            peer_id = %p2p::peer_id::libp2p_peer_id(&peer_key),
            agent = identity.as_ref().and_then(|i| i.agent.as_deref()).unwrap_or(""),
            channels = ?info.channels,
            listen = %info.listen_addr,
            "lp2p peer identified"
        );
        // A Go peer that did not dial us provisions us on our first message.
        if let Some((channel, greeting)) = &self.config.greeting {
            let supported = identity
                .as_ref()
                .is_none_or(|i| i.protocols.contains(&Protocol::Channel(channel.0)));
            if supported {
                let _ = send_on(&shared, channel.0, greeting.clone()).await;
            }
        }
        if self.config.ping_on_connect {
            let pinger = shared.clone();
            tokio::spawn(async move {
                match ping_peer(&pinger).await {
                    Ok(rtt) => debug!(peer = %peer_id, ?rtt, "lp2p ping"),
                    Err(f) => debug!(peer = %peer_id, error = ?f, "lp2p ping failed"),
                }
            });
        }
        debug!(peer = %peer_id, remote = %multiaddr::quic_v1_text(remote), "lp2p connection up");
        self.state = State::Running(shared, accept);
        Ok((info, peer_key))
    }

    async fn send(&self, channel: ChannelId, message: Bytes) -> Result<(), ConnectionError> {
        send_on(self.running()?, channel.0, message).await
    }

    async fn receive(&self) -> Result<(ChannelId, Bytes), ConnectionError> {
        let shared = self.running()?;
        let _one_at_a_time = shared.receiving.lock().await;
        match shared.inbound.receive().await {
            Some(message) => Ok(message),
            None => Err(lock(&shared.failure).take().unwrap_or(ConnectionError::Closed)),
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
            CloseReason::Evicted => error_code::CONN_GARBAGE_COLLECTED,
            CloseReason::Replaced => error_code::CONN_SUPPLANTED,
            CloseReason::Misbehaved(_) => error_code::CONN_PROTOCOL_VIOLATION,
            CloseReason::Banned(_) => error_code::CONN_GATED,
            _ => return self.close().await,
        };
        let Ok(shared) = self.running() else { return };
        shared.closing.store(true, Ordering::Release);
        shared.conn.close(VarInt::from_u32(code), errors::reason_bytes(reason.text()));
    }

    async fn close(&self) {
        let Ok(shared) = self.running() else { return };
        shared.closing.store(true, Ordering::Release);
        // Wait until the peer has read what we sent (each stream ends once it has).
        let flushed = tokio::time::timeout(self.config.close_timeout, async {
            loop {
                let idle = shared.in_flight.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if shared.in_flight.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
        if flushed.is_err() {
            debug!(remote = %self.remote, "lp2p close: messages not read by the peer in time");
        }
        shared.conn.close(VarInt::from_u32(error_code::NO_ERROR), b"bye");
    }
}
