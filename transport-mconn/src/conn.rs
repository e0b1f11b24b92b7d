//! The async side of an MConnection: the handshake over a TCP stream, then one driver task per
//! connection that owns the socket, the SecretConnection ciphers and the [`MConnection`] state
//! machine.
//!
//! The driver task serves, in one `select!` loop: outbound commands from [`Connection::send`],
//! socket reads (decrypt frames → packets → messages), socket writes (packets → frames), the
//! MConnection timers (our pings, the pong deadline) and delivery of received messages to a
//! bounded queue read by [`Connection::receive`]. When that queue is full (a slow reactor), the
//! driver stops reading the socket — TCP backpressure to the peer.
//!
//! Liveness: the pong deadline runs only while both directions flow. It pauses while our reactor
//! is slow (we are not reading, so we cannot see the pong) and while our output is stuck (the
//! peer is applying backpressure: alive, but its reactor is slow). A slow reactor on either side
//! therefore never gets a healthy connection dropped for a missing pong; a peer that takes none
//! of our bytes for [`MConnConfig::write_stall_timeout`] is dropped.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use p2p::router::ChannelDescriptor;
use p2p::{
    ChannelId, Connection, ConnectionError, Endpoint, HandshakeError, NodeInfo, NodeKey,
    node_info::MAX_NODE_INFO_SIZE,
};
use p2p_proto::tendermint::p2p::DefaultNodeInfo;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, trace};

use crate::MConnConfig;
use crate::mconn::{ChannelSpec, Event, MConnError, MConnection};
use crate::secret::{
    Handshake, RecvCipher, SEALED_FRAME_SIZE, SecretError, SendCipher, parse_ephemeral,
};

/// Most plaintext bytes the driver packetises per write (about 250 frames).
const WRITE_CHUNK: usize = 256 * 1024;
/// Most bytes read from the socket at once.
const READ_CHUNK: usize = 256 * 1024;
/// Buffer size an idle connection keeps: buffers grow under load and shrink back to this, so an
/// idle connection costs a few KiB, not the ~1 MiB a busy one uses.
const IDLE_BUFFER: usize = 16 * 1024;

enum Command {
    /// A message, with its channel's admission permit (released once the message is in the
    /// MConnection's queue for the channel).
    Send(ChannelId, Bytes, OwnedSemaphorePermit),
    Close(oneshot::Sender<()>),
}

struct Running {
    commands: mpsc::Sender<Command>,
    events: Mutex<mpsc::Receiver<(ChannelId, Bytes)>>,
    /// Why the driver ended, handed to the first `receive` after the end.
    failure: Arc<Mutex<Option<ConnectionError>>>,
    /// The channels declared at the handshake (bit per channel ID); MConnection cannot send
    /// on others.
    channels: [u64; 4],
    /// Per declared channel: how many more of its messages may wait for the driver (so a
    /// channel whose queue is full makes only its own senders wait, not the other channels').
    admission: Vec<(ChannelId, Arc<Semaphore>)>,
}

enum State {
    Raw(TcpStream),
    Running(Running),
    Failed,
}

/// An MConnection over TCP. Created by [`crate::MConnTransport`]; usable after
/// [`Connection::handshake`].
pub struct MConnConnection {
    state: State,
    local: Endpoint,
    remote: Endpoint,
    config: MConnConfig,
}

impl fmt::Debug for MConnConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MConnConnection")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl MConnConnection {
    pub(crate) fn new(
        stream: TcpStream,
        local: Endpoint,
        remote: Endpoint,
        config: MConnConfig,
    ) -> Self {
        let _ = stream.set_nodelay(true);
        Self { state: State::Raw(stream), local, remote, config }
    }

    fn running(&self) -> Result<&Running, ConnectionError> {
        match &self.state {
            State::Running(r) => Ok(r),
            _ => Err(ConnectionError::Closed),
        }
    }
}

/// Reads from `stream` into `buf` until `parse` returns a value; `parse` returns how many bytes
/// it consumed, which are removed from the front of `buf`.
async fn read_until<T>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut parse: impl FnMut(&mut Vec<u8>) -> Result<Option<T>, HandshakeError>,
) -> Result<T, HandshakeError> {
    loop {
        if let Some(v) = parse(buf)? {
            return Ok(v);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(ConnectionError::from)?;
        if n == 0 {
            return Err(HandshakeError::Connection(ConnectionError::Closed));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// Decrypts every complete frame at the front of `cipher_buf` into `plain`.
fn open_frames(
    recv: &mut RecvCipher,
    cipher_buf: &mut Vec<u8>,
    plain: &mut Vec<u8>,
) -> Result<(), SecretError> {
    let mut offset = 0;
    while cipher_buf.len() - offset >= SEALED_FRAME_SIZE {
        let Some(frame) = cipher_buf.get_mut(offset..offset + SEALED_FRAME_SIZE) else { break };
        plain.extend_from_slice(recv.open_frame(frame)?);
        offset += SEALED_FRAME_SIZE;
    }
    cipher_buf.drain(..offset);
    Ok(())
}

fn secret_error(e: SecretError) -> HandshakeError {
    HandshakeError::Authentication(e.to_string())
}

/// Reads one uvarint-delimited message from the front of `plain`: `Ok(None)` if incomplete.
fn take_delimited(plain: &mut Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, HandshakeError> {
    let mut len: u64 = 0;
    for (i, byte) in plain.iter().enumerate().take(10) {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > max {
                return Err(HandshakeError::Protocol(format!(
                    "NodeInfo of {len} bytes exceeds the limit of {max} bytes"
                )));
            }
            let start = i + 1;
            if plain.len() < start + len {
                return Ok(None);
            }
            let body = plain.get(start..start + len).map(<[u8]>::to_vec).unwrap_or_default();
            plain.drain(..start + len);
            return Ok(Some(body));
        }
    }
    if plain.len() >= 10 {
        return Err(HandshakeError::Protocol("malformed NodeInfo length prefix".into()));
    }
    Ok(None)
}

#[async_trait]
impl Connection for MConnConnection {
    async fn handshake(
        &mut self,
        local_info: &NodeInfo,
        key: &NodeKey,
        channels: &[ChannelDescriptor],
    ) -> Result<(NodeInfo, VerifyingKey), HandshakeError> {
        let State::Raw(mut stream) = std::mem::replace(&mut self.state, State::Failed) else {
            return Err(HandshakeError::Protocol("handshake already done".into()));
        };
        let phase = self.config.handshake_phase_timeout;
        let timed = |what: &'static str| {
            move |_| {
                debug!(phase = what, limit = ?phase, "handshake phase timed out");
                HandshakeError::Timeout(phase)
            }
        };

        // Phase 1: SecretConnection. Send first, then read (both sides do the same).
        let mut cipher_buf = Vec::with_capacity(4096);
        let (mut send, mut recv, peer_key, mut plain) = tokio::time::timeout(phase, async {
            let hs = Handshake::new(key.signing_key().clone());
            stream.write_all(&hs.ephemeral_message()).await.map_err(ConnectionError::from)?;
            let remote = read_until(&mut stream, &mut cipher_buf, |buf| {
                Ok(parse_ephemeral(buf).map_err(secret_error)?.map(|(key, used)| {
                    buf.drain(..used);
                    key
                }))
            })
            .await?;
            let mut auth = hs.finish(remote).map_err(secret_error)?;
            let mut out = Vec::with_capacity(SEALED_FRAME_SIZE);
            let message = auth.auth_message();
            auth.sender().seal(&message, &mut out).map_err(secret_error)?;
            stream.write_all(&out).await.map_err(ConnectionError::from)?;
            let mut plain = Vec::new();
            let peer_key = read_until(&mut stream, &mut cipher_buf, |buf| {
                open_frames(auth.receiver(), buf, &mut plain).map_err(secret_error)?;
                Ok(auth.read_peer_auth(&plain).map_err(secret_error)?.map(|(k, used)| {
                    plain.drain(..used);
                    k
                }))
            })
            .await?;
            let (send, recv) = auth.into_ciphers();
            Ok::<_, HandshakeError>((send, recv, peer_key, plain))
        })
        .await
        .map_err(timed("SecretConnection handshake"))??;

        // Phase 2: NodeInfo exchange, under a fresh deadline as in Go.
        let peer_info = tokio::time::timeout(phase, async {
            let proto = DefaultNodeInfo::from(local_info);
            let mut out = Vec::new();
            send.seal(&proto.encode_length_delimited_to_vec(), &mut out).map_err(secret_error)?;
            stream.write_all(&out).await.map_err(ConnectionError::from)?;
            let body = read_until(&mut stream, &mut cipher_buf, |buf| {
                open_frames(&mut recv, buf, &mut plain).map_err(secret_error)?;
                take_delimited(&mut plain, MAX_NODE_INFO_SIZE)
            })
            .await?;
            Ok::<_, HandshakeError>(NodeInfo::decode(&body)?)
        })
        .await
        .map_err(timed("NodeInfo exchange"))??;

        // Start the driver with whatever arrived behind the handshake.
        let specs: Vec<ChannelSpec> = channels
            .iter()
            .map(|d| ChannelSpec {
                id: d.id.0,
                priority: d.priority.max(1),
                send_queue_capacity: self.config.channel_send_queue.max(1),
                recv_message_capacity: d.max_message_size,
            })
            .collect();
        let mut mconn = MConnection::new(self.config.mconn, &specs, Instant::now().into_std())
            .map_err(|e| HandshakeError::Protocol(format!("local channel setup: {e}")))?;
        if !plain.is_empty() {
            mconn
                .handle_input(Instant::now().into_std(), &plain)
                .map_err(|e| HandshakeError::Connection(mconn_error(e)))?;
        }
        let (commands_tx, commands_rx) = mpsc::channel(self.config.command_queue.max(1));
        let (events_tx, events_rx) = mpsc::channel(self.config.receive_queue.max(1));
        let failure = Arc::new(Mutex::new(None));
        let (reader, writer) = stream.into_split();
        let driver = Driver {
            mconn,
            send,
            recv,
            reader,
            writer,
            commands: commands_rx,
            events: events_tx,
            cipher_in: cipher_buf,
            failure: failure.clone(),
            send_limit: self.config.send_rate.map(|r| RateLimiter::new(r, Instant::now())),
            recv_limit: self.config.recv_rate.map(|r| RateLimiter::new(r, Instant::now())),
            write_stall_timeout: self.config.write_stall_timeout,
            max_flush_delay: self.config.max_flush_delay,
        };
        tokio::spawn(driver.run());
        let mut declared = [0u64; 4];
        for d in channels {
            if let Some(word) = declared.get_mut(usize::from(d.id.0 / 64)) {
                *word |= 1 << (d.id.0 % 64);
            }
        }
        let per_channel = self.config.command_queue.max(1);
        let admission =
            channels.iter().map(|d| (d.id, Arc::new(Semaphore::new(per_channel)))).collect();
        self.state = State::Running(Running {
            commands: commands_tx,
            events: Mutex::new(events_rx),
            failure,
            channels: declared,
            admission,
        });
        Ok((peer_info, peer_key))
    }

    async fn send(&self, channel: ChannelId, message: Bytes) -> Result<(), ConnectionError> {
        let running = self.running()?;
        let declared = (running.channels.get(usize::from(channel.0 / 64)))
            .is_some_and(|word| word & (1 << (channel.0 % 64)) != 0);
        let admission = running.admission.iter().find(|(id, _)| *id == channel);
        let (true, Some((_, admission))) = (declared, admission) else {
            return Err(ConnectionError::UnknownChannel(channel));
        };
        let Ok(permit) = admission.clone().acquire_owned().await else {
            return Err(take_failure(&running.failure));
        };
        if running.commands.send(Command::Send(channel, message, permit)).await.is_err() {
            return Err(take_failure(&running.failure));
        }
        Ok(())
    }

    async fn receive(&self) -> Result<(ChannelId, Bytes), ConnectionError> {
        let running = self.running()?;
        let next = std::future::poll_fn(|cx| {
            running.events.lock().unwrap_or_else(PoisonError::into_inner).poll_recv(cx)
        })
        .await;
        next.ok_or_else(|| take_failure(&running.failure))
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    fn remote_endpoint(&self) -> Endpoint {
        self.remote.clone()
    }

    async fn close(&self) {
        let Ok(running) = self.running() else { return };
        let (ack_tx, ack_rx) = oneshot::channel();
        if running.commands.send(Command::Close(ack_tx)).await.is_ok() {
            let _ = ack_rx.await;
        }
    }
}

fn take_failure(failure: &Mutex<Option<ConnectionError>>) -> ConnectionError {
    failure.lock().unwrap_or_else(PoisonError::into_inner).take().unwrap_or(ConnectionError::Closed)
}

fn mconn_error(e: MConnError) -> ConnectionError {
    match e {
        MConnError::UnknownChannel { channel } => match u8::try_from(channel) {
            Ok(ch) => ConnectionError::UnknownChannel(ChannelId(ch)),
            Err(_) => ConnectionError::Protocol(e.to_string()),
        },
        MConnError::MessageTooLarge { channel, size, capacity } => {
            ConnectionError::MessageTooLarge { channel: ChannelId(channel), size, max: capacity }
        }
        other => ConnectionError::Protocol(other.to_string()),
    }
}

struct Driver {
    mconn: MConnection,
    send: SendCipher,
    recv: RecvCipher,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<(ChannelId, Bytes)>,
    cipher_in: Vec<u8>,
    failure: Arc<Mutex<Option<ConnectionError>>>,
    send_limit: Option<RateLimiter>,
    recv_limit: Option<RateLimiter>,
    write_stall_timeout: Duration,
    max_flush_delay: Duration,
}

/// Whether to packetise and write now, or hold a lone small message for company.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    Now,
    At(Instant),
}

/// Flush batching with a bound: with `max_delay` zero (the default) output is written as soon as
/// the socket takes it. Otherwise less than one frame of queued message data is held until more
/// arrives or `max_delay` has passed since it was first held. A full frame, pings, pongs and a
/// close are never held.
fn flush_decision(
    queued_bytes: usize,
    closing: bool,
    hold_since: &mut Option<Instant>,
    now: Instant,
    max_delay: Duration,
) -> Flush {
    let small = queued_bytes > 0 && queued_bytes < crate::secret::FRAME_DATA_SIZE;
    if max_delay.is_zero() || !small || closing {
        *hold_since = None;
        return Flush::Now;
    }
    let since = *hold_since.get_or_insert(now);
    if now >= since + max_delay {
        *hold_since = None;
        Flush::Now
    } else {
        Flush::At(since + max_delay)
    }
}

/// A token bucket over bytes: `rate` bytes/s with a burst of a tenth of a second (at least
/// 64 KiB, so one write or read always fits). Only delays; never drops or disconnects.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate / 10.0).max(65_536.0);
        Self { rate, burst, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    fn consume(&mut self, bytes: usize, now: Instant) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    /// When the bucket is non-negative again; `None` if it is now.
    fn blocked_until(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        (self.tokens < 0.0).then(|| now + Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

fn blocked_until(limit: &mut Option<RateLimiter>, now: Instant) -> Option<Instant> {
    limit.as_mut().and_then(|l| l.blocked_until(now))
}

enum Ended {
    /// Close requested: flushed; acknowledge.
    Closed(oneshot::Sender<()>),
    /// All handles dropped.
    Dropped,
    /// The peer closed or an error occurred.
    Failed(ConnectionError),
}

impl Driver {
    async fn run(mut self) {
        let ended = self.drive().await;
        match ended {
            Ended::Closed(ack) => {
                let _ = self.writer.shutdown().await;
                let _ = ack.send(());
            }
            Ended::Dropped => {
                let _ = self.writer.shutdown().await;
            }
            Ended::Failed(e) => {
                debug!(error = %e, "mconn connection ended");
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
            }
        }
    }

    async fn drive(&mut self) -> Ended {
        let mut plain_out: Vec<u8> = Vec::new();
        let mut cipher_out: Vec<u8> = Vec::new();
        // Spare room offered to each read: doubles while reads fill it, up to READ_CHUNK.
        let mut read_room = IDLE_BUFFER;
        let mut written = 0usize;
        // A received message waiting for room in the events queue (reading is paused meanwhile).
        let mut undelivered: Option<(ChannelId, Bytes)> = None;
        // Per channel, messages waiting for room in the channel's MConnection send queue (at
        // most `command_queue` each: the admission permits bound them).
        let mut waiting: Vec<(u8, VecDeque<(Bytes, OwnedSemaphorePermit)>)> = Vec::new();
        let mut closing: Option<oneshot::Sender<()>> = None;
        let mut commands_open = true;
        let mut paused = false;
        let mut stalled_since: Option<Instant> = None;
        let mut hold_since: Option<Instant> = None;
        // Frames that arrived together with the end of the handshake.
        if let Err(e) = process_input(
            &mut self.cipher_in,
            &mut self.recv,
            &mut self.mconn,
            Instant::now().into_std(),
        ) {
            return Ended::Failed(e);
        }

        loop {
            let now = Instant::now();
            // Deliver received messages until the queue is full.
            if undelivered.is_none() {
                while let Some(Event::Message { channel, data }) = self.mconn.poll_event() {
                    match self.events.try_send((ChannelId(channel), data)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(m)) => {
                            undelivered = Some(m);
                            break;
                        }
                        // Nobody reads any more: discard.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
            // Move waiting messages into the MConnection as their channels get room.
            for (ch, queue) in &mut waiting {
                while self.mconn.can_queue(*ch)
                    && let Some((msg, permit)) = queue.pop_front()
                {
                    if let Err(e) = self.mconn.queue(*ch, msg) {
                        return Ended::Failed(ConnectionError::Protocol(e.to_string()));
                    }
                    drop(permit);
                }
            }
            let nothing_waiting = waiting.iter().all(|(_, q)| q.is_empty());
            // Produce more ciphertext once the previous batch is written.
            let send_blocked = blocked_until(&mut self.send_limit, now);
            let flush = flush_decision(
                self.mconn.queued_bytes(),
                closing.is_some(),
                &mut hold_since,
                now,
                self.max_flush_delay,
            );
            if written == cipher_out.len() && send_blocked.is_none() && flush == Flush::Now {
                cipher_out.clear();
                written = 0;
                if self.mconn.wants_to_transmit() {
                    plain_out.clear();
                    self.mconn.poll_transmit(now.into_std(), &mut plain_out, WRITE_CHUNK);
                    if let Err(e) = self.send.seal(&plain_out, &mut cipher_out) {
                        return Ended::Failed(ConnectionError::Protocol(e.to_string()));
                    }
                    if let Some(limit) = &mut self.send_limit {
                        limit.consume(cipher_out.len(), now);
                    }
                }
            }
            // Liveness. The pong deadline only runs while the peer can hear us and we hear it:
            // it pauses while our reactor is slow (we stopped reading) and while the peer is
            // flow-controlling us (our output is stuck), which means it is alive but slow. A
            // peer that takes none of our bytes for `write_stall_timeout` is dropped.
            let output_pending = written < cipher_out.len();
            match (output_pending, stalled_since) {
                // Output waiting: the stall clock runs from now, or from the last write progress.
                (true, None) => stalled_since = Some(now),
                (false, Some(_)) => stalled_since = None,
                _ => {}
            }
            if let Some(since) = stalled_since
                && now.saturating_duration_since(since) >= self.write_stall_timeout
            {
                return Ended::Failed(ConnectionError::Protocol(format!(
                    "peer took none of our data for {:?}",
                    self.write_stall_timeout
                )));
            }
            let want_pause = undelivered.is_some() || output_pending;
            if want_pause != paused {
                if want_pause {
                    self.mconn.pause_reading(now.into_std());
                } else {
                    self.mconn.resume_reading(now.into_std());
                }
                paused = want_pause;
            }
            let idle_out = written == cipher_out.len() && !self.mconn.wants_to_transmit();
            if let Some(ack) = closing.take() {
                if idle_out && nothing_waiting {
                    let _ = self.writer.flush().await;
                    return Ended::Closed(ack);
                }
                closing = Some(ack);
            }
            // Keep polling commands while closing, to notice when every handle is dropped (a
            // close that timed out because the peer stopped reading).
            let accept_commands = commands_open;
            // Idle: give memory back.
            if written == cipher_out.len() && !self.mconn.wants_to_transmit() {
                plain_out.shrink_to(IDLE_BUFFER);
                cipher_out.shrink_to(IDLE_BUFFER);
            }
            if self.cipher_in.len() < SEALED_FRAME_SIZE && read_room == IDLE_BUFFER {
                self.cipher_in.shrink_to(IDLE_BUFFER + SEALED_FRAME_SIZE);
            }
            // Read straight into the ciphertext buffer (no intermediate copy).
            self.cipher_in.reserve(read_room);
            let recv_blocked = blocked_until(&mut self.recv_limit, now);
            let reading = undelivered.is_none() && recv_blocked.is_none();
            let timeout = [
                self.mconn.poll_timeout().map(Instant::from_std),
                stalled_since.map(|t| t + self.write_stall_timeout),
                match flush {
                    Flush::At(t) => Some(t),
                    Flush::Now => None,
                },
                send_blocked.filter(|_| self.mconn.wants_to_transmit()),
                recv_blocked,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| now + Duration::from_secs(3600));

            tokio::select! {
                cmd = self.commands.recv(), if accept_commands => {
                    // Take every command already waiting (up to a full channel queue), so that
                    // many small messages share one write.
                    let mut next = cmd;
                    loop {
                        match next {
                            Some(Command::Send(ch, msg, permit)) => {
                                let i = match waiting.iter().position(|(c, _)| *c == ch.0) {
                                    Some(i) => i,
                                    None => {
                                        waiting.push((ch.0, VecDeque::new()));
                                        waiting.len() - 1
                                    }
                                };
                                if let Some((_, queue)) = waiting.get_mut(i) {
                                    if queue.is_empty() && self.mconn.can_queue(ch.0) {
                                        if let Err(e) = self.mconn.queue(ch.0, msg) {
                                            return Ended::Failed(ConnectionError::Protocol(e.to_string()));
                                        }
                                        drop(permit);
                                    } else {
                                        queue.push_back((msg, permit));
                                    }
                                }
                            }
                            Some(Command::Close(ack)) => {
                                closing = Some(ack);
                                break;
                            }
                            None => {
                                commands_open = false;
                                if self.events.is_closed() {
                                    return Ended::Dropped;
                                }
                                break;
                            }
                        }
                        match self.commands.try_recv() {
                            Ok(cmd) => next = Some(cmd),
                            Err(_) => break,
                        }
                    }
                }
                r = self.writer.write(cipher_out.get(written..).unwrap_or_default()), if written < cipher_out.len() => {
                    match r {
                        Ok(0) => return Ended::Failed(ConnectionError::Closed),
                        Ok(n) => {
                            written += n;
                            // Progress: the peer takes our bytes.
                            stalled_since = None;
                        }
                        Err(e) => return Ended::Failed(e.into()),
                    }
                }
                r = self.reader.read_buf(&mut self.cipher_in), if reading => {
                    let n = match r {
                        Ok(0) => return Ended::Failed(ConnectionError::Closed),
                        Ok(n) => n,
                        Err(e) => return Ended::Failed(e.into()),
                    };
                    trace!(bytes = n, "read");
                    read_room = if n >= read_room { (read_room * 2).min(READ_CHUNK) } else { IDLE_BUFFER.max(read_room / 2) };
                    if let Some(limit) = &mut self.recv_limit {
                        limit.consume(n, Instant::now());
                    }
                    let now = Instant::now().into_std();
                    if let Err(e) = process_input(&mut self.cipher_in, &mut self.recv, &mut self.mconn, now) {
                        return Ended::Failed(e);
                    }
                }
                permit = self.events.reserve(), if undelivered.is_some() => {
                    if let (Ok(permit), Some(m)) = (permit, undelivered.take()) {
                        permit.send(m);
                    } else {
                        undelivered = None;
                    }
                }
                () = tokio::time::sleep_until(timeout) => {
                    if let Err(e) = self.mconn.handle_timeout(Instant::now().into_std()) {
                        return Ended::Failed(mconn_error(e));
                    }
                }
            }
        }
    }
}

/// Decrypts complete frames at the front of `cipher_in` and feeds their payload to the
/// MConnection.
fn process_input(
    cipher_in: &mut Vec<u8>,
    recv: &mut RecvCipher,
    mconn: &mut MConnection,
    now: std::time::Instant,
) -> Result<(), ConnectionError> {
    let mut offset = 0;
    while cipher_in.len() - offset >= SEALED_FRAME_SIZE {
        let Some(frame) = cipher_in.get_mut(offset..offset + SEALED_FRAME_SIZE) else { break };
        let payload =
            recv.open_frame(frame).map_err(|e| ConnectionError::Protocol(e.to_string()))?;
        mconn.handle_input(now, payload).map_err(mconn_error)?;
        offset += SEALED_FRAME_SIZE;
    }
    cipher_in.drain(..offset);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_batching_holds_a_lone_small_message_at_most_the_bound() {
        let t0 = Instant::now();
        let d = Duration::from_millis(100);
        let mut hold = None;
        // Default (zero bound): never hold.
        assert_eq!(flush_decision(10, false, &mut hold, t0, Duration::ZERO), Flush::Now);
        // A lone small message is held until the bound...
        assert_eq!(flush_decision(10, false, &mut hold, t0, d), Flush::At(t0 + d));
        let t1 = t0 + Duration::from_millis(60);
        assert_eq!(flush_decision(500, false, &mut hold, t1, d), Flush::At(t0 + d));
        // ...and no longer.
        assert_eq!(flush_decision(500, false, &mut hold, t0 + d, d), Flush::Now);
        assert_eq!(hold, None);
        // A full frame, nothing queued (pings/pongs) or a close: at once.
        assert_eq!(flush_decision(1024, false, &mut hold, t0, d), Flush::Now);
        assert_eq!(flush_decision(0, false, &mut hold, t0, d), Flush::Now);
        assert_eq!(flush_decision(10, true, &mut hold, t0, d), Flush::Now);
    }

    #[test]
    fn rate_limiter_refills_at_its_rate_and_caps_the_burst() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1_000_000, t0); // 1 MB/s, burst 100 kB
        assert_eq!(l.blocked_until(t0), None);
        l.consume(300_000, t0); // 200 kB in debt
        let until = l.blocked_until(t0).unwrap();
        assert_eq!(until - t0, Duration::from_millis(200));
        // Half way: still blocked, 100 ms left.
        let mid = t0 + Duration::from_millis(100);
        assert_eq!(l.blocked_until(mid).unwrap() - mid, Duration::from_millis(100));
        // Long idle refills only up to the burst.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(l.blocked_until(later), None);
        l.consume(100_000, later);
        assert_eq!(l.blocked_until(later), None, "a full burst is allowed");
        l.consume(1, later);
        assert!(l.blocked_until(later).is_some());
    }
}
