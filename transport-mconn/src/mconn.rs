//! The MConnection multiplexer as a sans-IO state machine.
//!
//! [`MConnection`] works on the *decrypted* byte stream of a SecretConnection: it turns queued
//! channel messages into uvarint-delimited `tendermint.p2p.Packet`s ([`MConnection::poll_transmit`]),
//! parses incoming packets and reassembles channel messages ([`MConnection::handle_input`],
//! [`MConnection::poll_event`]), and runs the ping/pong liveness protocol
//! ([`MConnection::poll_timeout`], [`MConnection::handle_timeout`]). It does no I/O and never reads
//! the clock: every time-dependent call takes the current [`Instant`] from the driver.
//!
//! Wire facts (CometBFT v0.38 / Tendermint v0.34 `p2p/conn/connection.go`):
//! * each packet is `uvarint(len) || Packet`, with `Packet` a oneof of ping, pong and
//!   `PacketMsg{channel_id, eof, data}`;
//! * a message is cut into chunks of at most `max_packet_payload` bytes, `eof` set on the last one
//!   (an empty message is a single empty chunk with `eof`);
//! * the receiver caps a packet body at the encoded size of a full chunk on channel 1 (1034 bytes
//!   for the default payload of 1024);
//! * pings go out every 60 s and the peer must answer within 45 s.
//!
//! Any error returned by [`MConnection::handle_input`] or [`MConnection::handle_timeout`] is fatal:
//! the driver must close the connection. Later calls return [`MConnError::Failed`].

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2p_proto::tendermint::p2p::{Packet, PacketMsg, packet::Sum};
use prost::Message as _;
use prost::encoding::{encode_varint, encoded_len_varint};

/// Default number of data bytes per `PacketMsg` (`max_packet_msg_payload_size`).
pub const DEFAULT_MAX_PACKET_PAYLOAD: usize = 1024;

/// Default maximum size of one reassembled message on a channel (Go's 21 MiB).
pub const DEFAULT_RECV_MESSAGE_CAPACITY: usize = 22_020_096;

/// Default interval between our pings (Go's `defaultPingInterval`).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(60);

/// Default time the peer has to answer a ping (Go's `defaultPongTimeout`).
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(45);

/// How often the per-channel `recently_sent` counters decay (Go's `updateStats` interval).
const DECAY_PERIOD: Duration = Duration::from_secs(2);

/// After this many decay periods every counter is zero anyway (0.8^200 · 2^64 < 1).
const MAX_DECAY_ROUNDS: u128 = 200;

/// The longest valid uvarint.
const MAX_VARINT_LEN: u8 = 10;

/// An encoded, delimited `Packet{PacketPing{}}`.
const PING_BYTES: [u8; 3] = [0x02, 0x0a, 0x00];

/// An encoded, delimited `Packet{PacketPong{}}`.
const PONG_BYTES: [u8; 3] = [0x02, 0x12, 0x00];

/// Protobuf key of `Packet.packet_msg` (field 3, length-delimited).
const KEY_PACKET_MSG: u8 = 0x1a;
/// Protobuf key of `PacketMsg.channel_id` (field 1, varint).
const KEY_CHANNEL_ID: u8 = 0x08;
/// Protobuf key of `PacketMsg.eof` (field 2, varint).
const KEY_EOF: u8 = 0x10;
/// Protobuf key of `PacketMsg.data` (field 3, length-delimited).
const KEY_DATA: u8 = 0x1a;

/// A fatal MConnection error: the connection must be closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MConnError {
    /// [`MConnection::new`] was given no channels.
    #[error("an MConnection needs at least one channel, none were given")]
    NoChannels,
    /// The same channel ID was registered twice.
    #[error("channel {id:#04x} is registered more than once")]
    DuplicateChannel {
        /// The repeated channel ID.
        id: u8,
    },
    /// A channel was registered with priority 0.
    #[error("channel {id:#04x} has priority 0, the priority must be at least 1")]
    ZeroPriority {
        /// The channel ID.
        id: u8,
    },
    /// A channel was registered with a send queue capacity of 0.
    #[error("channel {id:#04x} has a send queue capacity of 0, it must be at least 1")]
    ZeroSendQueueCapacity {
        /// The channel ID.
        id: u8,
    },
    /// The configuration has `max_packet_payload == 0`.
    #[error("max_packet_payload is 0, it must be at least 1 byte")]
    ZeroMaxPacketPayload,
    /// The configuration has a zero ping interval or pong timeout.
    #[error("{name} is 0, it must be positive")]
    ZeroDuration {
        /// The name of the configuration field.
        name: &'static str,
    },
    /// An incoming packet's length prefix is above the maximum packet body size.
    #[error("packet body of {size} bytes exceeds the maximum of {max} bytes")]
    PacketTooLarge {
        /// The length announced by the prefix.
        size: u64,
        /// The largest accepted body.
        max: usize,
    },
    /// An incoming length prefix is not a valid uvarint.
    #[error(
        "packet length prefix is not a valid uvarint (more than 10 bytes or above 64 bits) after {len} bytes"
    )]
    MalformedLengthPrefix {
        /// Number of prefix bytes read when the error was found.
        len: u8,
    },
    /// An incoming packet body is not a valid protobuf `Packet`.
    #[error("packet body of {len} bytes is not a valid protobuf Packet: {source}")]
    Decode {
        /// The body length.
        len: usize,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
    /// An incoming packet has no (known) oneof variant set.
    #[error("packet body of {len} bytes has no known message type (neither ping, pong nor msg)")]
    EmptyPacket {
        /// The body length.
        len: usize,
    },
    /// An incoming `PacketMsg` names a channel that is not registered locally (or is outside
    /// 0..=255).
    #[error("unknown channel {channel:#x}: not registered locally")]
    UnknownChannel {
        /// The `channel_id` the peer sent.
        channel: i32,
    },
    /// A reassembled message would exceed the channel's receive capacity.
    #[error(
        "received message on channel {channel:#04x} would grow to {size} bytes, above the channel's capacity of {capacity} bytes"
    )]
    MessageTooLarge {
        /// The channel ID.
        channel: u8,
        /// Bytes already buffered plus the new chunk.
        size: usize,
        /// The channel's `recv_message_capacity`.
        capacity: usize,
    },
    /// The peer did not answer our ping in time.
    #[error("pong timeout: no pong received within {timeout:?} of our ping")]
    PongTimeout {
        /// The configured pong timeout.
        timeout: Duration,
    },
    /// The connection already failed with an earlier error and must be dropped.
    #[error("the MConnection already failed with an earlier error")]
    Failed,
}

/// Why [`MConnection::queue`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The channel's send queue holds `send_queue_capacity` messages already.
    #[error("the channel's send queue is full")]
    Full,
    /// The channel is not registered on this connection.
    #[error("the channel is not registered on this connection")]
    UnknownChannel,
}

/// A channel to register on an [`MConnection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSpec {
    /// The channel ID (the wire `channel_id`).
    pub id: u8,
    /// Send priority, at least 1; a channel with twice the priority gets about twice the
    /// bandwidth when several channels have data pending.
    pub priority: u8,
    /// How many whole messages may wait in the send queue (at least 1). The message currently
    /// being packetised does not count.
    pub send_queue_capacity: usize,
    /// Maximum size of one reassembled incoming message; a larger one is a fatal error.
    pub recv_message_capacity: usize,
}

/// MConnection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MConnConfig {
    /// Data bytes per `PacketMsg` we send (default 1024, at least 1). It also defines the largest
    /// packet body we accept: the encoded size of a full chunk on channel 1, see
    /// [`MConnConfig::max_packet_body`].
    pub max_packet_payload: usize,
    /// Interval between our pings, sent whatever the traffic (default 60 s).
    pub ping_interval: Duration,
    /// Time the peer has to answer a ping (default 45 s).
    pub pong_timeout: Duration,
}

impl Default for MConnConfig {
    fn default() -> Self {
        Self {
            max_packet_payload: DEFAULT_MAX_PACKET_PAYLOAD,
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
        }
    }
}

impl MConnConfig {
    /// The largest packet body (after the length prefix) we accept: the encoded size of
    /// `Packet{PacketMsg{channel_id: 1, eof: true, data: [max_packet_payload bytes]}}`
    /// (1034 for a payload of 1024, as in Go).
    pub fn max_packet_body(&self) -> usize {
        packet_msg_body_len(1, true, self.max_packet_payload)
    }
}

/// Something the connection produced for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A complete message arrived on a channel.
    Message {
        /// The channel ID.
        channel: u8,
        /// The reassembled message bytes.
        data: Bytes,
    },
}

/// Per-channel state.
struct Channel {
    id: u8,
    priority: u8,
    send_queue_capacity: usize,
    recv_message_capacity: usize,
    /// Whole messages waiting to be packetised.
    queue: VecDeque<Bytes>,
    /// The rest of the message being packetised; `None` between messages.
    sending: Option<Bytes>,
    /// Bytes written recently (delimiter included), decayed ×0.8 every 2 s.
    recently_sent: u64,
    /// Chunks of the incoming message received so far.
    recv_buf: Vec<u8>,
}

impl Channel {
    fn has_pending(&self) -> bool {
        self.sending.is_some() || !self.queue.is_empty()
    }
}

/// Where the parser is in the incoming byte stream.
enum RxState {
    /// Reading the uvarint length prefix.
    Prefix {
        /// Value accumulated so far.
        value: u64,
        /// Number of prefix bytes read so far.
        len: u8,
    },
    /// Reading a body of `len` bytes; `buf` holds the part received so far.
    Body { len: usize, buf: Vec<u8> },
}

impl RxState {
    const START: Self = Self::Prefix { value: 0, len: 0 };
}

/// The MConnection state machine for one peer; see the [module docs](self).
///
/// # Send scheduling
///
/// Like Go's `selectChannelToGossipOn`: for every `PacketMsg`, among the channels with pending
/// data the one with the smallest `recently_sent / priority` is chosen (ties go to the channel
/// registered first). `recently_sent` grows by the bytes written for the channel (length prefix
/// included) and decays ×0.8 every 2 s. A channel sends one message at a time, so chunks of
/// different messages on the same channel never interleave; chunks of different channels do.
pub struct MConnection {
    config: MConnConfig,
    max_body: usize,
    /// Channels in registration order.
    channels: Vec<Channel>,
    /// Channel ID → index into `channels`.
    index: [Option<u8>; 256],
    /// Bytes of outbound messages not yet packetised.
    queued_bytes: usize,
    events: VecDeque<Event>,
    rx: RxState,
    pong_pending: bool,
    ping_pending: bool,
    /// When the next ping is due; `None` if it would overflow `Instant`.
    next_ping: Option<Instant>,
    /// When the running pong timer fires (in unpaused time, see `pause_reading`).
    pong_deadline: Option<Instant>,
    /// Set while reading is paused.
    paused_since: Option<Instant>,
    /// When the `recently_sent` counters decay next.
    next_decay: Option<Instant>,
    failed: bool,
}

impl fmt::Debug for MConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MConnection")
            .field("config", &self.config)
            .field("channels", &self.channels.iter().map(|c| c.id).collect::<Vec<_>>())
            .field("queued_bytes", &self.queued_bytes)
            .field("pending_events", &self.events.len())
            .field("pong_pending", &self.pong_pending)
            .field("ping_pending", &self.ping_pending)
            .field("pong_deadline", &self.pong_deadline)
            .field("paused", &self.paused_since.is_some())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl MConnection {
    /// Creates the state machine for a fresh connection at time `now`; the first ping is due at
    /// `now + ping_interval`.
    ///
    /// Fails if `channels` is empty, holds a duplicate ID, a priority of 0 or a send queue
    /// capacity of 0, or if the configuration has a zero payload size or duration.
    pub fn new(
        config: MConnConfig,
        channels: &[ChannelSpec],
        now: Instant,
    ) -> Result<Self, MConnError> {
        if config.max_packet_payload == 0 {
            return Err(MConnError::ZeroMaxPacketPayload);
        }
        if config.ping_interval.is_zero() {
            return Err(MConnError::ZeroDuration { name: "ping_interval" });
        }
        if config.pong_timeout.is_zero() {
            return Err(MConnError::ZeroDuration { name: "pong_timeout" });
        }
        if channels.is_empty() {
            return Err(MConnError::NoChannels);
        }
        let mut index = [None; 256];
        let mut list = Vec::with_capacity(channels.len());
        for spec in channels {
            if spec.priority == 0 {
                return Err(MConnError::ZeroPriority { id: spec.id });
            }
            if spec.send_queue_capacity == 0 {
                return Err(MConnError::ZeroSendQueueCapacity { id: spec.id });
            }
            let slot = index.get_mut(usize::from(spec.id));
            let Some(slot @ None) = slot else {
                return Err(MConnError::DuplicateChannel { id: spec.id });
            };
            // At most 256 distinct u8 IDs, so the position fits in a u8.
            *slot = u8::try_from(list.len()).ok();
            list.push(Channel {
                id: spec.id,
                priority: spec.priority,
                send_queue_capacity: spec.send_queue_capacity,
                recv_message_capacity: spec.recv_message_capacity,
                queue: VecDeque::new(),
                sending: None,
                recently_sent: 0,
                recv_buf: Vec::new(),
            });
        }
        Ok(Self {
            config,
            max_body: config.max_packet_body(),
            channels: list,
            index,
            queued_bytes: 0,
            events: VecDeque::new(),
            rx: RxState::START,
            pong_pending: false,
            ping_pending: false,
            next_ping: now.checked_add(config.ping_interval),
            pong_deadline: None,
            paused_since: None,
            next_decay: now.checked_add(DECAY_PERIOD),
            failed: false,
        })
    }

    fn channel_index(&self, id: u8) -> Option<usize> {
        self.index.get(usize::from(id)).copied().flatten().map(usize::from)
    }

    // --- sending ---

    /// Whether `channel`'s send queue has room for another message (false for an unknown
    /// channel).
    pub fn can_queue(&self, channel: u8) -> bool {
        self.channel_index(channel)
            .and_then(|i| self.channels.get(i))
            .is_some_and(|c| c.queue.len() < c.send_queue_capacity)
    }

    /// Queues `message` for sending on `channel`. The bytes are not copied: packets are slices
    /// of `message`.
    pub fn queue(&mut self, channel: u8, message: Bytes) -> Result<(), QueueError> {
        let ch = self
            .channel_index(channel)
            .and_then(|i| self.channels.get_mut(i))
            .ok_or(QueueError::UnknownChannel)?;
        if ch.queue.len() >= ch.send_queue_capacity {
            return Err(QueueError::Full);
        }
        self.queued_bytes = self.queued_bytes.saturating_add(message.len());
        ch.queue.push_back(message);
        Ok(())
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has something to write: queued data, a
    /// pending pong or a pending ping.
    pub fn wants_to_transmit(&self) -> bool {
        self.pong_pending || self.ping_pending || self.has_queued_data()
    }

    fn has_queued_data(&self) -> bool {
        self.channels.iter().any(Channel::has_pending)
    }

    /// Bytes of queued outbound messages not yet packetised (including the unsent rest of a
    /// message being split).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Appends encoded, uvarint-length-delimited Packets to `out` until the next one would push
    /// the bytes appended by this call above `max_bytes` (at least one packet is written if
    /// anything is pending) or nothing is left. Returns the number of packets written.
    ///
    /// Order: a pending pong, then a pending ping, then `PacketMsg`s, one chunk at a time, each
    /// from the channel chosen as described in the [type docs](Self#send-scheduling). A message
    /// is split into `max_packet_payload`-byte chunks, `eof` set on the last one; an empty
    /// message is one empty chunk with `eof`.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>, max_bytes: usize) -> usize {
        self.apply_decay(now);
        let start = out.len();
        let mut packets = 0;
        loop {
            let budget = max_bytes.saturating_sub(out.len().saturating_sub(start));
            let fits = |size: usize| packets == 0 || size <= budget;
            if self.pong_pending || self.ping_pending {
                let (bytes, flag) = if self.pong_pending {
                    (&PONG_BYTES, &mut self.pong_pending)
                } else {
                    (&PING_BYTES, &mut self.ping_pending)
                };
                if !fits(bytes.len()) {
                    break;
                }
                out.extend_from_slice(bytes);
                *flag = false;
                packets += 1;
                continue;
            }
            let Some(ch) = self.select_channel().and_then(|i| self.channels.get_mut(i)) else {
                break;
            };
            if ch.sending.is_none() {
                ch.sending = ch.queue.pop_front();
            }
            let Some(sending) = ch.sending.as_mut() else {
                break;
            };
            let chunk_len = sending.len().min(self.config.max_packet_payload);
            let eof = chunk_len == sending.len();
            let size = packet_msg_delimited_len(ch.id, eof, chunk_len);
            if !fits(size) {
                break;
            }
            let chunk = sending.split_to(chunk_len);
            if eof {
                ch.sending = None;
            }
            write_packet_msg(out, ch.id, eof, &chunk);
            ch.recently_sent = ch.recently_sent.saturating_add(size as u64);
            self.queued_bytes = self.queued_bytes.saturating_sub(chunk_len);
            packets += 1;
        }
        packets
    }

    /// The pending channel with the least `recently_sent / priority`, earliest registered on
    /// ties.
    fn select_channel(&self) -> Option<usize> {
        let mut best: Option<(usize, &Channel)> = None;
        for (i, ch) in self.channels.iter().enumerate() {
            if !ch.has_pending() {
                continue;
            }
            let better = match best {
                None => true,
                // a.sent / a.prio < b.sent / b.prio  ⇔  a.sent · b.prio < b.sent · a.prio
                Some((_, b)) => {
                    u128::from(ch.recently_sent) * u128::from(b.priority)
                        < u128::from(b.recently_sent) * u128::from(ch.priority)
                }
            };
            if better {
                best = Some((i, ch));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Applies every decay tick due at `now` (exactly as if each had been applied on time,
    /// since counters only grow inside `poll_transmit`, which calls this first).
    fn apply_decay(&mut self, now: Instant) {
        let Some(next) = self.next_decay else {
            return;
        };
        if now < next {
            return;
        }
        let periods = now.duration_since(next).as_nanos() / DECAY_PERIOD.as_nanos() + 1;
        for ch in &mut self.channels {
            if periods >= MAX_DECAY_ROUNDS {
                ch.recently_sent = 0;
            } else {
                for _ in 0..periods {
                    let x = ch.recently_sent;
                    // floor(x · 0.8) without overflow, like Go's int64(float64(x) * 0.8)
                    ch.recently_sent = x / 5 * 4 + (x % 5) * 4 / 5;
                }
            }
        }
        let step = u32::try_from(periods).ok().and_then(|p| DECAY_PERIOD.checked_mul(p));
        self.next_decay =
            step.and_then(|s| next.checked_add(s)).or_else(|| now.checked_add(DECAY_PERIOD));
    }

    // --- receiving ---

    /// Feeds decrypted bytes from the peer. Every complete packet is processed; an incomplete
    /// tail is kept (at most one maximal packet body plus a 10-byte prefix). A length prefix
    /// above [`MConnConfig::max_packet_body`] is rejected before any of the body is buffered.
    ///
    /// A ping schedules one pong (several pings before the next `poll_transmit` still give one
    /// pong), a pong stops the pong timer, and a `PacketMsg` is appended to its channel's
    /// reassembly buffer; on `eof` an [`Event::Message`] is queued.
    ///
    /// Errors (all fatal): malformed or oversized length prefix, undecodable packet, packet with
    /// no known oneof, unknown channel, message above the channel's receive capacity. Events
    /// queued before the error stay queued but should be discarded with the connection.
    pub fn handle_input(&mut self, _now: Instant, data: &[u8]) -> Result<(), MConnError> {
        if self.failed {
            return Err(MConnError::Failed);
        }
        let result = self.parse(data);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn parse(&mut self, mut data: &[u8]) -> Result<(), MConnError> {
        while !data.is_empty() {
            match &mut self.rx {
                RxState::Prefix { value, len } => {
                    let Some((&byte, rest)) = data.split_first() else {
                        break;
                    };
                    data = rest;
                    let shift = u32::from(*len) * 7;
                    *len += 1;
                    // The 10th byte may only carry the top bit of a u64 (and no continuation).
                    if *len == MAX_VARINT_LEN && byte > 1 {
                        return Err(MConnError::MalformedLengthPrefix { len: *len });
                    }
                    *value |= u64::from(byte & 0x7f) << shift;
                    if byte & 0x80 != 0 {
                        continue;
                    }
                    let size = *value;
                    let body_len = usize::try_from(size)
                        .ok()
                        .filter(|&l| l <= self.max_body)
                        .ok_or(MConnError::PacketTooLarge { size, max: self.max_body })?;
                    if body_len == 0 {
                        // An empty body decodes to a Packet without a oneof: rejected.
                        self.rx = RxState::START;
                        self.handle_packet_body(&[])?;
                    } else if let Some((body, rest)) = data.split_at_checked(body_len) {
                        // Fast path: the whole body is in `data`, decode it in place.
                        data = rest;
                        self.rx = RxState::START;
                        self.handle_packet_body(body)?;
                    } else {
                        let mut buf = Vec::with_capacity(body_len);
                        buf.extend_from_slice(data);
                        data = &[];
                        self.rx = RxState::Body { len: body_len, buf };
                    }
                }
                RxState::Body { len, buf } => {
                    let missing = len.saturating_sub(buf.len());
                    let (part, rest) = data.split_at(missing.min(data.len()));
                    buf.extend_from_slice(part);
                    data = rest;
                    if buf.len() == *len {
                        let body = Bytes::from(std::mem::take(buf));
                        self.rx = RxState::START;
                        self.handle_packet_bytes(body)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes a body that is borrowed from the input (the payload is copied once).
    fn handle_packet_body(&mut self, body: &[u8]) -> Result<(), MConnError> {
        let packet = Packet::decode(body)
            .map_err(|source| MConnError::Decode { len: body.len(), source })?;
        self.handle_packet(packet, body.len())
    }

    /// Decodes a buffered body (the payload is sliced, not copied).
    fn handle_packet_bytes(&mut self, body: Bytes) -> Result<(), MConnError> {
        let len = body.len();
        let packet = Packet::decode(body).map_err(|source| MConnError::Decode { len, source })?;
        self.handle_packet(packet, len)
    }

    fn handle_packet(&mut self, packet: Packet, len: usize) -> Result<(), MConnError> {
        match packet.sum {
            None => Err(MConnError::EmptyPacket { len }),
            Some(Sum::PacketPing(_)) => {
                self.pong_pending = true;
                Ok(())
            }
            Some(Sum::PacketPong(_)) => {
                self.pong_deadline = None;
                Ok(())
            }
            Some(Sum::PacketMsg(msg)) => self.handle_packet_msg(msg),
        }
    }

    fn handle_packet_msg(&mut self, msg: PacketMsg) -> Result<(), MConnError> {
        let unknown = MConnError::UnknownChannel { channel: msg.channel_id };
        let Some(ch) = u8::try_from(msg.channel_id)
            .ok()
            .and_then(|id| self.channel_index(id))
            .and_then(|i| self.channels.get_mut(i))
        else {
            return Err(unknown);
        };
        let size = ch.recv_buf.len().saturating_add(msg.data.len());
        if size > ch.recv_message_capacity {
            return Err(MConnError::MessageTooLarge {
                channel: ch.id,
                size,
                capacity: ch.recv_message_capacity,
            });
        }
        if !msg.eof {
            ch.recv_buf.extend_from_slice(&msg.data);
            return Ok(());
        }
        let data = if ch.recv_buf.is_empty() {
            // Single-chunk message: hand over the decoded payload as is.
            msg.data
        } else {
            ch.recv_buf.extend_from_slice(&msg.data);
            Bytes::from(std::mem::take(&mut ch.recv_buf))
        };
        self.events.push_back(Event::Message { channel: ch.id, data });
        Ok(())
    }

    /// Takes the next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Number of events waiting in [`poll_event`](Self::poll_event); a driver can stop reading
    /// while this is high.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    // --- time ---

    /// When [`handle_timeout`](Self::handle_timeout) should be called next: the earliest of the
    /// next ping time, the pong deadline (unless reading is paused) and, if data is queued, the
    /// next decay tick of the send scheduler.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut earliest = self.next_ping;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        };
        if self.paused_since.is_none() {
            consider(self.pong_deadline);
        }
        if self.has_queued_data() {
            consider(self.next_decay);
        }
        earliest
    }

    /// Advances timers to `now`. Fails with [`MConnError::PongTimeout`] if the pong deadline has
    /// passed (not while reading is paused). If a ping is due, schedules one and, unless a pong
    /// timer is already running, starts the pong timer (`now + pong_timeout`).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), MConnError> {
        if self.failed {
            return Err(MConnError::Failed);
        }
        self.apply_decay(now);
        if self.paused_since.is_none()
            && let Some(deadline) = self.pong_deadline
            && now >= deadline
        {
            self.failed = true;
            return Err(MConnError::PongTimeout { timeout: self.config.pong_timeout });
        }
        if let Some(due) = self.next_ping
            && now >= due
        {
            self.ping_pending = true;
            if self.pong_deadline.is_none() {
                // While paused, the timer starts counting when reading resumes: resume shifts
                // the deadline by `resume - paused_since`.
                let start = self.paused_since.unwrap_or(now);
                self.pong_deadline = start.checked_add(self.config.pong_timeout);
            }
            let next = due.checked_add(self.config.ping_interval);
            self.next_ping = match next {
                Some(n) if n > now => Some(n),
                _ => now.checked_add(self.config.ping_interval),
            };
        }
        Ok(())
    }

    /// Marks reading from the socket as paused (backpressure). Until
    /// [`resume_reading`](Self::resume_reading), the pong deadline does not fire, and the paused
    /// time is added to it on resume. Pausing twice keeps the first start time.
    pub fn pause_reading(&mut self, now: Instant) {
        if self.paused_since.is_none() {
            self.paused_since = Some(now);
        }
    }

    /// Ends a pause started by [`pause_reading`](Self::pause_reading), moving the pong deadline
    /// later by the time spent paused. Does nothing if not paused.
    pub fn resume_reading(&mut self, now: Instant) {
        if let Some(since) = self.paused_since.take()
            && let Some(deadline) = self.pong_deadline
        {
            self.pong_deadline = deadline.checked_add(now.saturating_duration_since(since));
        }
    }
}

/// Encoded size of `PacketMsg{channel_id, eof, data: [data_len bytes]}` (zero fields omitted).
fn packet_msg_inner_len(channel: u8, eof: bool, data_len: usize) -> usize {
    let channel_len = if channel == 0 { 0 } else { 1 + encoded_len_varint(u64::from(channel)) };
    let eof_len = if eof { 2 } else { 0 };
    let data_field_len = if data_len == 0 {
        0
    } else {
        (1 + encoded_len_varint(data_len as u64)).saturating_add(data_len)
    };
    channel_len + eof_len + data_field_len
}

/// Encoded size of `Packet{PacketMsg{..}}` without the length prefix.
fn packet_msg_body_len(channel: u8, eof: bool, data_len: usize) -> usize {
    let inner = packet_msg_inner_len(channel, eof, data_len);
    (1 + encoded_len_varint(inner as u64)).saturating_add(inner)
}

/// Encoded size of `Packet{PacketMsg{..}}` with the length prefix.
fn packet_msg_delimited_len(channel: u8, eof: bool, data_len: usize) -> usize {
    let body = packet_msg_body_len(channel, eof, data_len);
    encoded_len_varint(body as u64).saturating_add(body)
}

/// Appends `uvarint(len) || Packet{PacketMsg{channel, eof, data}}` to `out`, byte-identical to
/// prost's encoding.
fn write_packet_msg(out: &mut Vec<u8>, channel: u8, eof: bool, data: &[u8]) {
    out.reserve(packet_msg_delimited_len(channel, eof, data.len()));
    encode_varint(packet_msg_body_len(channel, eof, data.len()) as u64, out);
    out.push(KEY_PACKET_MSG);
    encode_varint(packet_msg_inner_len(channel, eof, data.len()) as u64, out);
    if channel != 0 {
        out.push(KEY_CHANNEL_ID);
        encode_varint(u64::from(channel), out);
    }
    if eof {
        out.extend_from_slice(&[KEY_EOF, 0x01]);
    }
    if !data.is_empty() {
        out.push(KEY_DATA);
        encode_varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_proto::tendermint::p2p::{PacketPing, PacketPong};

    const SEC: Duration = Duration::from_secs(1);

    /// A tiny deterministic PRNG for tests (xorshift64*).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn spec(id: u8, priority: u8) -> ChannelSpec {
        ChannelSpec {
            id,
            priority,
            send_queue_capacity: 1000,
            recv_message_capacity: DEFAULT_RECV_MESSAGE_CAPACITY,
        }
    }

    fn conn(channels: &[ChannelSpec], now: Instant) -> MConnection {
        MConnection::new(MConnConfig::default(), channels, now).unwrap()
    }

    /// Drains everything pending into one buffer.
    fn drain(c: &mut MConnection, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        while c.wants_to_transmit() {
            c.poll_transmit(now, &mut out, usize::MAX);
        }
        out
    }

    fn decode_all(mut bytes: &[u8]) -> Vec<Packet> {
        let mut packets = Vec::new();
        while !bytes.is_empty() {
            packets.push(Packet::decode_length_delimited(&mut bytes).unwrap());
        }
        packets
    }

    fn msgs(packets: &[Packet]) -> Vec<&PacketMsg> {
        packets
            .iter()
            .filter_map(|p| match &p.sum {
                Some(Sum::PacketMsg(m)) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn events(c: &mut MConnection) -> Vec<(u8, Bytes)> {
        std::iter::from_fn(|| c.poll_event())
            .map(|Event::Message { channel, data }| (channel, data))
            .collect()
    }

    fn delimited(packet: &Packet) -> Vec<u8> {
        packet.encode_length_delimited_to_vec()
    }

    fn msg_packet(channel_id: i32, eof: bool, data: &[u8]) -> Vec<u8> {
        delimited(&Packet {
            sum: Some(Sum::PacketMsg(PacketMsg {
                channel_id,
                eof,
                data: Bytes::copy_from_slice(data),
            })),
        })
    }

    // --- golden bytes ---

    #[test]
    fn golden_ping_pong() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(0, 1)], t0);
        c.handle_timeout(t0 + 60 * SEC).unwrap();
        assert_eq!(drain(&mut c, t0), hex::decode("020a00").unwrap());
        c.handle_input(t0, &hex::decode("020a00").unwrap()).unwrap();
        assert_eq!(drain(&mut c, t0), hex::decode("021200").unwrap());
        assert_eq!(delimited(&Packet { sum: Some(Sum::PacketPing(PacketPing {})) }), PING_BYTES);
        assert_eq!(delimited(&Packet { sum: Some(Sum::PacketPong(PacketPong {})) }), PONG_BYTES);
    }

    #[test]
    fn golden_pex_request_and_mempool() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(0, 1), spec(0x30, 5)], t0);
        c.queue(0, Bytes::from_static(&[0x0a, 0x00])).unwrap();
        assert_eq!(drain(&mut c, t0), hex::decode("081a0610011a020a00").unwrap());
        c.queue(0x30, Bytes::from(hex::decode("0a070a0568656c6c6f").unwrap())).unwrap();
        assert_eq!(drain(&mut c, t0), hex::decode("111a0f083010011a090a070a0568656c6c6f").unwrap());
        // And the receiving side decodes them.
        c.handle_input(t0, &hex::decode("081a0610011a020a00").unwrap()).unwrap();
        c.handle_input(t0, &hex::decode("111a0f083010011a090a070a0568656c6c6f").unwrap()).unwrap();
        assert_eq!(
            events(&mut c),
            vec![
                (0, Bytes::from_static(&[0x0a, 0x00])),
                (0x30, Bytes::from(hex::decode("0a070a0568656c6c6f").unwrap()))
            ]
        );
    }

    #[test]
    fn full_payload_on_channel_1_is_1034_byte_body() {
        let t0 = Instant::now();
        assert_eq!(MConnConfig::default().max_packet_body(), 1034);
        let mut c = conn(&[spec(1, 1)], t0);
        c.queue(1, Bytes::from(vec![7u8; 1024])).unwrap();
        let out = drain(&mut c, t0);
        assert_eq!(&out[..2], &[0x8a, 0x08]); // uvarint(1034)
        assert_eq!(out.len(), 2 + 1034);
        assert_eq!(out, msg_packet(1, true, &[7u8; 1024]));
    }

    #[test]
    fn encoder_matches_prost() {
        for channel in [0u8, 1, 0x30, 0x7f, 0x80, 0xff] {
            for len in [0usize, 1, 127, 128, 1024, 16_384, 20_000] {
                for eof in [false, true] {
                    let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
                    let mut out = Vec::new();
                    write_packet_msg(&mut out, channel, eof, &data);
                    let expected = msg_packet(i32::from(channel), eof, &data);
                    assert_eq!(out, expected, "ch {channel} len {len} eof {eof}");
                    assert_eq!(packet_msg_delimited_len(channel, eof, len), expected.len());
                }
            }
        }
    }

    // --- splitting and reassembly ---

    #[test]
    fn splits_3000_bytes_into_three_packets() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(0x20, 1)], t0);
        let message: Bytes = (0..3000u32).map(|i| i as u8).collect::<Vec<_>>().into();
        c.queue(0x20, message.clone()).unwrap();
        assert_eq!(c.queued_bytes(), 3000);
        let mut out = Vec::new();
        assert_eq!(c.poll_transmit(t0, &mut out, usize::MAX), 3);
        assert_eq!(c.queued_bytes(), 0);
        assert!(!c.wants_to_transmit());
        let packets = decode_all(&out);
        let m = msgs(&packets);
        assert_eq!(m.iter().map(|m| m.data.len()).collect::<Vec<_>>(), [1024, 1024, 952]);
        assert_eq!(m.iter().map(|m| m.eof).collect::<Vec<_>>(), [false, false, true]);
        assert!(m.iter().all(|m| m.channel_id == 0x20));
        let mut receiver = conn(&[spec(0x20, 1)], t0);
        receiver.handle_input(t0, &out).unwrap();
        assert_eq!(events(&mut receiver), vec![(0x20, message)]);
    }

    #[test]
    fn empty_message_is_one_eof_packet() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(0x21, 1)], t0);
        c.queue(0x21, Bytes::new()).unwrap();
        assert!(c.wants_to_transmit());
        let out = drain(&mut c, t0);
        assert_eq!(out, hex::decode("061a0408211001").unwrap());
        let mut receiver = conn(&[spec(0x21, 1)], t0);
        receiver.handle_input(t0, &out).unwrap();
        assert_eq!(events(&mut receiver), vec![(0x21, Bytes::new())]);
    }

    #[test]
    fn max_bytes_budget() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1)], t0);
        c.queue(1, Bytes::from(vec![1u8; 6000])).unwrap();
        let mut out = Vec::new();
        // Budget below one packet still yields one packet.
        // (a full chunk without eof on channel 1 is 1034 bytes with its prefix)
        assert_eq!(c.poll_transmit(t0, &mut out, 0), 1);
        assert_eq!(out.len(), 1034);
        // Exactly two full packets fit.
        out.clear();
        assert_eq!(c.poll_transmit(t0, &mut out, 2 * 1034), 2);
        assert_eq!(out.len(), 2 * 1034);
        // One byte short of two: one.
        out.clear();
        assert_eq!(c.poll_transmit(t0, &mut out, 2 * 1034 - 1), 1);
        // Appends to existing content, budget counts only the new bytes: chunk 5 (1034) and
        // the eof chunk of 6000 - 5 * 1024 = 880 bytes.
        let before = out.len();
        assert_eq!(c.poll_transmit(t0, &mut out, 1034 + 892), 2);
        assert_eq!(out.len() - before, 1034 + 892);
        assert!(!c.wants_to_transmit());
        assert_eq!(c.poll_transmit(t0, &mut out, usize::MAX), 0);
    }

    fn back_to_back(seed: u64, one_byte: bool) {
        let t0 = Instant::now();
        let mut rng = XorShift(seed);
        let channels = [spec(0, 1), spec(0x20, 6), spec(0x30, 5), spec(0x40, 2)];
        let mut a = conn(&channels, t0);
        let mut b = conn(&channels, t0);
        let mut expected: Vec<Vec<Bytes>> = vec![Vec::new(); channels.len()];
        let mut received: Vec<Vec<Bytes>> = vec![Vec::new(); channels.len()];
        let total = 300;
        let mut sent = 0;
        let mut now = t0;
        let mut wire = Vec::new();
        while sent < total || a.wants_to_transmit() || !wire.is_empty() {
            // Queue a few messages.
            for _ in 0..rng.below(4) {
                if sent == total {
                    break;
                }
                let ci = rng.below(channels.len());
                let len = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(100),
                    2 => rng.below(3000),
                    _ => 1024 * (1 + rng.below(3)),
                };
                let data: Bytes = (0..len).map(|_| rng.next() as u8).collect::<Vec<_>>().into();
                if a.queue(channels[ci].id, data.clone()).is_ok() {
                    expected[ci].push(data);
                    sent += 1;
                }
            }
            a.poll_transmit(now, &mut wire, rng.below(5000));
            // Feed a random prefix of the wire, in random slices.
            let mut feed = rng.below(wire.len() + 1);
            if !a.wants_to_transmit() && sent == total {
                feed = wire.len();
            }
            let chunk: Vec<u8> = wire.drain(..feed).collect();
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let n = if one_byte { 1 } else { 1 + rng.below(rest.len()) };
                let (head, tail) = rest.split_at(n);
                b.handle_input(now, head).unwrap();
                rest = tail;
            }
            for (ch, data) in events(&mut b) {
                let ci = channels.iter().position(|s| s.id == ch).unwrap();
                received[ci].push(data);
            }
            now += Duration::from_millis(rng.below(700) as u64);
        }
        assert_eq!(received, expected);
        assert_eq!(received.iter().map(Vec::len).sum::<usize>(), total);
    }

    #[test]
    fn back_to_back_random_slices() {
        for seed in 1..6 {
            back_to_back(seed, false);
        }
    }

    #[test]
    fn back_to_back_one_byte_at_a_time() {
        back_to_back(42, true);
    }

    // --- scheduling ---

    #[test]
    fn high_priority_small_messages_overtake_big_message() {
        let t0 = Instant::now();
        // Low-priority channel registered first so that it wins the initial tie.
        let mut c = conn(&[spec(0x40, 1), spec(0x20, 10)], t0);
        c.queue(0x40, Bytes::from(vec![0xbb; 100 * 1024])).unwrap();
        for i in 0..20u8 {
            c.queue(0x20, Bytes::from(vec![i; 200])).unwrap();
        }
        let packets = decode_all(&drain(&mut c, t0));
        let m = msgs(&packets);
        let last_small = m.iter().rposition(|m| m.channel_id == 0x20).unwrap();
        let big_eof = m.iter().position(|m| m.channel_id == 0x40 && m.eof).unwrap();
        assert!(last_small < big_eof, "small done at {last_small}, big at {big_eof}");
        // The big message had started first (tie → registration order) and was still in flight.
        assert_eq!(m[0].channel_id, 0x40);
        assert!(last_small < 30);
        // Packets of different channels interleave.
        assert!(m[..last_small].iter().any(|m| m.channel_id == 0x40));
    }

    #[test]
    fn no_interleaving_within_a_channel() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1), spec(2, 1)], t0);
        let mut expected = [Vec::new(), Vec::new()];
        for i in 0..10u8 {
            for (k, ch) in [1u8, 2].into_iter().enumerate() {
                let data = Bytes::from(vec![i * 2 + ch; 500 + 700 * usize::from(i)]);
                c.queue(ch, data.clone()).unwrap();
                expected[k].push(data);
            }
        }
        let packets = decode_all(&drain(&mut c, t0));
        for (k, ch) in [1i32, 2].into_iter().enumerate() {
            // Concatenating the chunks of a channel in order and splitting at eof gives the
            // messages in order: no chunk of another message got in between.
            let mut got = Vec::new();
            let mut cur = Vec::new();
            for m in msgs(&packets).into_iter().filter(|m| m.channel_id == ch) {
                cur.extend_from_slice(&m.data);
                if m.eof {
                    got.push(Bytes::from(std::mem::take(&mut cur)));
                }
            }
            assert_eq!(got, expected[k]);
        }
        // Channels interleave.
        let ids: Vec<i32> = msgs(&packets).iter().map(|m| m.channel_id).collect();
        assert!(ids.windows(2).filter(|w| w[0] != w[1]).count() > 10);
    }

    #[test]
    fn bandwidth_follows_priority_and_decays() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1), spec(2, 3)], t0);
        c.queue(1, Bytes::from(vec![1; 400 * 1024])).unwrap();
        c.queue(2, Bytes::from(vec![2; 400 * 1024])).unwrap();
        let mut out = Vec::new();
        c.poll_transmit(t0, &mut out, 200 * 1034);
        let packets = decode_all(&out);
        let ones = msgs(&packets).iter().filter(|m| m.channel_id == 1).count();
        let twos = msgs(&packets).iter().filter(|m| m.channel_id == 2).count();
        assert_eq!(ones + twos, 200);
        assert!((49..=51).contains(&ones), "{ones} vs {twos}");
        assert_eq!(c.channels[0].recently_sent, ones as u64 * 1034);
        // Two seconds later the counters decayed ×0.8; four seconds later ×0.64.
        let before = c.channels[0].recently_sent;
        c.handle_timeout(t0 + 2 * SEC).unwrap();
        assert_eq!(c.channels[0].recently_sent, before * 4 / 5);
        c.handle_timeout(t0 + 5 * SEC).unwrap();
        assert_eq!(c.channels[0].recently_sent, before * 4 / 5 * 4 / 5);
        // Long idle: decays to zero; next tick is in the future.
        c.handle_timeout(t0 + 10_000 * SEC).unwrap();
        assert_eq!(c.channels[0].recently_sent, 0);
        assert!(c.next_decay.unwrap() > t0 + 10_000 * SEC);
        assert!(c.next_decay.unwrap() <= t0 + 10_002 * SEC);
    }

    // --- limits ---

    #[test]
    fn packet_body_limit() {
        let t0 = Instant::now();
        let wide = ChannelSpec { recv_message_capacity: 1 << 20, ..spec(0, 1) };
        let channels = [wide, spec(0x30, 5)];
        // 1025 bytes on 0x30 → 1035-byte body: rejected.
        let p = msg_packet(0x30, true, &[0; 1025]);
        assert_eq!(p.len() - 2, 1035);
        let mut c = conn(&channels, t0);
        let err = c.handle_input(t0, &p).unwrap_err();
        assert!(matches!(err, MConnError::PacketTooLarge { size: 1035, max: 1034 }), "{err}");
        assert!(err.to_string().contains("1035") && err.to_string().contains("1034"));
        // Later calls fail too.
        assert!(matches!(c.handle_input(t0, &[]), Err(MConnError::Failed)));
        // 1025 and 1026 bytes on channel 0 fit in 1034.
        let mut c = conn(&channels, t0);
        for len in [1025, 1026] {
            let p = msg_packet(0, true, &vec![9; len]);
            assert!(p.len() - 2 <= 1034);
            c.handle_input(t0, &p).unwrap();
            assert_eq!(events(&mut c), vec![(0, Bytes::from(vec![9; len]))]);
        }
    }

    #[test]
    fn huge_length_prefix_rejected_without_buffering() {
        let t0 = Instant::now();
        let mut prefix = Vec::new();
        encode_varint(1u64 << 40, &mut prefix);
        let mut c = conn(&[spec(0, 1)], t0);
        let err = c.handle_input(t0, &prefix).unwrap_err();
        assert!(matches!(err, MConnError::PacketTooLarge { size, .. } if size == 1 << 40));
        // One byte over the limit, prefix alone.
        let mut c = conn(&[spec(0, 1)], t0);
        assert!(c.handle_input(t0, &[0x8b, 0x08]).is_err());
        // At the limit: buffered, nothing fails until the body is complete.
        let mut c = conn(&[spec(0, 1)], t0);
        c.handle_input(t0, &[0x8a, 0x08]).unwrap();
        assert!(matches!(&c.rx, RxState::Body { len: 1034, buf } if buf.is_empty()));
    }

    #[test]
    fn malformed_varint_rejected() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(0, 1)], t0);
        let err = c.handle_input(t0, &[0xff; 11]).unwrap_err();
        assert!(matches!(err, MConnError::MalformedLengthPrefix { len: 10 }), "{err}");
        // 10th byte above 1 overflows u64.
        let mut c = conn(&[spec(0, 1)], t0);
        let mut bytes = vec![0x80; 9];
        bytes.push(0x02);
        assert!(matches!(
            c.handle_input(t0, &bytes),
            Err(MConnError::MalformedLengthPrefix { len: 10 })
        ));
        // A non-minimal but valid varint (`82 00` = 2) is accepted, like Go.
        let mut c = conn(&[spec(0, 1)], t0);
        c.handle_input(t0, &[0x82, 0x00, 0x0a, 0x00]).unwrap();
        assert!(c.wants_to_transmit());
    }

    #[test]
    fn recv_message_capacity_enforced() {
        let t0 = Instant::now();
        let small = ChannelSpec { recv_message_capacity: 2000, ..spec(0x20, 1) };
        let mut c = conn(&[small], t0);
        // Exactly at capacity is fine.
        let mut input = msg_packet(0x20, false, &[1; 1000]);
        input.extend(msg_packet(0x20, true, &[2; 1000]));
        c.handle_input(t0, &input).unwrap();
        assert_eq!(events(&mut c).len(), 1);
        let mut input = msg_packet(0x20, false, &[1; 1000]);
        input.extend(msg_packet(0x20, false, &[2; 1000]));
        input.extend(msg_packet(0x20, true, &[3]));
        let err = c.handle_input(t0, &input).unwrap_err();
        assert!(
            matches!(
                err,
                MConnError::MessageTooLarge { channel: 0x20, size: 2001, capacity: 2000 }
            ),
            "{err}"
        );
        assert_eq!(c.pending_events(), 0);
    }

    #[test]
    fn unknown_channel_rejected() {
        let t0 = Instant::now();
        for id in [0x31, -1, 256, 0x30 + 256, i32::MAX, i32::MIN] {
            let mut c = conn(&[spec(0x30, 1)], t0);
            let err = c.handle_input(t0, &msg_packet(id, true, b"x")).unwrap_err();
            assert!(matches!(err, MConnError::UnknownChannel { channel } if channel == id));
            assert!(err.to_string().contains("unknown channel"));
        }
    }

    #[test]
    fn empty_or_unknown_oneof_rejected() {
        let t0 = Instant::now();
        // Zero-length body, empty Packet, unknown field 4.
        for input in [&[0x00][..], &[0x02, 0x22, 0x00][..], &[0x02, 0x20, 0x01][..]] {
            let mut c = conn(&[spec(0, 1)], t0);
            let err = c.handle_input(t0, input).unwrap_err();
            assert!(matches!(err, MConnError::EmptyPacket { .. }), "{input:?}: {err}");
        }
    }

    #[test]
    fn garbage_rejected() {
        let t0 = Instant::now();
        for input in [&[0x03, 0xff, 0xff, 0xff][..], &[0x02, 0x1a, 0x05][..], &[0x01, 0x0b][..]] {
            let mut c = conn(&[spec(0, 1)], t0);
            let err = c.handle_input(t0, input).unwrap_err();
            assert!(matches!(err, MConnError::Decode { .. }), "{input:?}: {err}");
        }
        // Same garbage through the buffered path (byte by byte).
        let mut c = conn(&[spec(0, 1)], t0);
        c.handle_input(t0, &[0x03]).unwrap();
        c.handle_input(t0, &[0xff, 0xff]).unwrap();
        assert!(matches!(c.handle_input(t0, &[0xff]), Err(MConnError::Decode { len: 3, .. })));
    }

    #[test]
    fn random_inputs_never_panic() {
        let t0 = Instant::now();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let channels =
            [ChannelSpec { recv_message_capacity: 3000, ..spec(0, 1) }, spec(1, 1), spec(0x30, 5)];
        let mut accepted = 0;
        for _ in 0..10_000 {
            let mut c = conn(&channels, t0);
            let len = rng.below(64);
            let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Bias some inputs toward plausible packets.
            if rng.below(2) == 0 && !input.is_empty() {
                input[0] = rng.below(len) as u8;
                if len > 1 {
                    input[1] = [0x0a, 0x12, 0x1a][rng.below(3)];
                }
            }
            let mut rest = &input[..];
            let mut ok = true;
            while !rest.is_empty() && ok {
                let (head, tail) = rest.split_at(1 + rng.below(rest.len()));
                ok = c.handle_input(t0, head).is_ok();
                rest = tail;
            }
            while c.poll_event().is_some() {}
            accepted += usize::from(ok);
            let _ = c.handle_timeout(t0 + 100 * SEC);
        }
        assert!(accepted > 0);
    }

    // --- ping / pong ---

    #[test]
    fn pings_every_interval_regardless_of_traffic() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1)], t0);
        assert_eq!(c.poll_timeout(), Some(t0 + 60 * SEC));
        let mut pings = 0;
        for s in 1..=300u32 {
            let now = t0 + s * SEC;
            // Constant traffic both ways.
            c.queue(1, Bytes::from_static(b"data")).unwrap();
            c.handle_input(now, &msg_packet(1, true, b"in")).unwrap();
            c.handle_timeout(now).unwrap();
            let packets = decode_all(&drain(&mut c, now));
            if packets.iter().any(|p| matches!(p.sum, Some(Sum::PacketPing(_)))) {
                pings += 1;
                assert_eq!(s % 60, 0, "ping at {s}s");
                c.handle_input(now, &PONG_BYTES).unwrap();
            }
        }
        assert_eq!(pings, 5);
    }

    #[test]
    fn several_pings_get_one_pong_first() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1)], t0);
        c.queue(1, Bytes::from_static(b"hello")).unwrap();
        c.handle_timeout(t0 + 60 * SEC).unwrap();
        c.handle_input(t0, &[PING_BYTES, PING_BYTES, PING_BYTES].concat()).unwrap();
        let packets = decode_all(&drain(&mut c, t0));
        assert_eq!(packets.len(), 3);
        assert!(matches!(packets[0].sum, Some(Sum::PacketPong(_))));
        assert!(matches!(packets[1].sum, Some(Sum::PacketPing(_))));
        assert!(matches!(packets[2].sum, Some(Sum::PacketMsg(_))));
        assert!(!c.wants_to_transmit());
    }

    #[test]
    fn pong_timeout() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1)], t0);
        c.handle_timeout(t0 + 59 * SEC).unwrap();
        assert!(!c.wants_to_transmit());
        c.handle_timeout(t0 + 60 * SEC).unwrap();
        assert!(c.wants_to_transmit());
        assert_eq!(c.poll_timeout(), Some(t0 + 105 * SEC));
        c.handle_timeout(t0 + 104 * SEC).unwrap();
        let err = c.handle_timeout(t0 + 105 * SEC).unwrap_err();
        assert!(matches!(err, MConnError::PongTimeout { timeout } if timeout == 45 * SEC));
        assert!(matches!(c.handle_timeout(t0 + 106 * SEC), Err(MConnError::Failed)));
    }

    #[test]
    fn pong_clears_deadline() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1)], t0);
        c.handle_timeout(t0 + 60 * SEC).unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + 105 * SEC));
        c.handle_input(t0 + 61 * SEC, &PONG_BYTES).unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + 120 * SEC));
        c.handle_timeout(t0 + 110 * SEC).unwrap();
        // Unsolicited pongs are harmless.
        c.handle_input(t0 + 111 * SEC, &PONG_BYTES).unwrap();
        c.handle_timeout(t0 + 119 * SEC).unwrap();
    }

    #[test]
    fn pause_extends_pong_deadline() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1)], t0);
        c.handle_timeout(t0 + 60 * SEC).unwrap(); // deadline t0+105
        c.pause_reading(t0 + 70 * SEC);
        c.pause_reading(t0 + 80 * SEC); // no effect
        assert_eq!(c.poll_timeout(), Some(t0 + 120 * SEC)); // only the next ping
        c.handle_timeout(t0 + 110 * SEC).unwrap(); // past the old deadline, but paused
        c.resume_reading(t0 + 100 * SEC + SEC * 30); // paused 60 s → deadline t0+165
        assert_eq!(c.poll_timeout(), Some(t0 + 120 * SEC));
        c.handle_timeout(t0 + 120 * SEC).unwrap(); // ping; the old timer keeps running
        assert_eq!(c.poll_timeout(), Some(t0 + 165 * SEC));
        c.handle_timeout(t0 + 164 * SEC).unwrap();
        assert!(matches!(c.handle_timeout(t0 + 165 * SEC), Err(MConnError::PongTimeout { .. })));
        c.resume_reading(t0 + 200 * SEC); // not paused: no effect, no panic
    }

    #[test]
    fn ping_while_paused_starts_timer_on_resume() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1)], t0);
        c.pause_reading(t0 + 10 * SEC);
        c.handle_timeout(t0 + 60 * SEC).unwrap();
        assert!(c.wants_to_transmit());
        c.resume_reading(t0 + 100 * SEC);
        assert_eq!(c.pong_deadline, Some(t0 + 145 * SEC));
        c.handle_timeout(t0 + 144 * SEC).unwrap();
        assert!(c.handle_timeout(t0 + 145 * SEC).is_err());
    }

    #[test]
    fn poll_timeout_includes_decay_only_when_queued() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1)], t0);
        assert_eq!(c.poll_timeout(), Some(t0 + 60 * SEC));
        c.queue(1, Bytes::from_static(b"x")).unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + 2 * SEC));
        c.handle_timeout(t0 + 3 * SEC).unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + 4 * SEC));
        drain(&mut c, t0 + 3 * SEC);
        assert_eq!(c.poll_timeout(), Some(t0 + 60 * SEC));
    }

    // --- queue and construction ---

    #[test]
    fn queue_capacity_and_unknown_channel() {
        let t0 = Instant::now();
        let mut c = conn(&[ChannelSpec { send_queue_capacity: 2, ..spec(0x30, 5) }], t0);
        assert!(c.can_queue(0x30));
        c.queue(0x30, Bytes::from_static(b"a")).unwrap();
        c.queue(0x30, Bytes::from_static(b"bc")).unwrap();
        assert!(!c.can_queue(0x30));
        assert_eq!(c.queue(0x30, Bytes::from_static(b"d")), Err(QueueError::Full));
        assert_eq!(c.queued_bytes(), 3);
        assert!(!c.can_queue(0x31));
        assert_eq!(c.queue(0x31, Bytes::new()), Err(QueueError::UnknownChannel));
        // Sending one packet frees a slot.
        let mut out = Vec::new();
        assert_eq!(c.poll_transmit(t0, &mut out, 0), 1);
        assert!(c.can_queue(0x30));
        assert_eq!(c.queued_bytes(), 2);
    }

    #[test]
    fn queue_does_not_copy() {
        let t0 = Instant::now();
        let mut c = conn(&[spec(1, 1)], t0);
        let message = Bytes::from(vec![5u8; 5000]);
        c.queue(1, message.clone()).unwrap();
        let mut out = Vec::new();
        c.poll_transmit(t0, &mut out, 0);
        let rest = c.channels[0].sending.as_ref().unwrap();
        assert_eq!(rest.as_ptr(), message[1024..].as_ptr());
    }

    #[test]
    fn new_rejects_bad_config() {
        let t0 = Instant::now();
        let cfg = MConnConfig::default();
        let new = |cfg, ch: &[ChannelSpec]| MConnection::new(cfg, ch, t0).unwrap_err();
        assert!(matches!(new(cfg, &[]), MConnError::NoChannels));
        assert!(matches!(
            new(cfg, &[spec(3, 1), spec(4, 1), spec(3, 2)]),
            MConnError::DuplicateChannel { id: 3 }
        ));
        assert!(matches!(new(cfg, &[spec(3, 0)]), MConnError::ZeroPriority { id: 3 }));
        assert!(matches!(
            new(cfg, &[ChannelSpec { send_queue_capacity: 0, ..spec(5, 1) }]),
            MConnError::ZeroSendQueueCapacity { id: 5 }
        ));
        let zero_payload = MConnConfig { max_packet_payload: 0, ..cfg };
        assert!(matches!(new(zero_payload, &[spec(1, 1)]), MConnError::ZeroMaxPacketPayload));
        let zero_ping = MConnConfig { ping_interval: Duration::ZERO, ..cfg };
        assert!(matches!(new(zero_ping, &[spec(1, 1)]), MConnError::ZeroDuration { .. }));
        // All 256 channel IDs can be registered.
        let all: Vec<ChannelSpec> = (0..=255u8).map(|id| spec(id, 1)).collect();
        let c = MConnection::new(cfg, &all, t0).unwrap();
        assert!(c.can_queue(255) && c.can_queue(0));
    }
}
