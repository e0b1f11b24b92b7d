//! Reactor-facing channels: typed, bounded, with an explicit overflow policy.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::mpsc;

use super::Shared;
use super::queue::Pushed;
use crate::peer_manager::Severity;
use crate::types::{ChannelId, NodeId};

/// What happens when a peer's queue for a channel is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Drop the new message (counted as `dropped_full`). Right for gossip that is re-sent anyway.
    DropNewest,
    /// Drop the oldest queued message of the channel to make room (counted as `dropped_oldest`).
    /// Right for state announcements where only the newest matters.
    DropOldest,
    /// Wait up to the given time for room: backpressure to the sending reactor. If the peer
    /// still has no room at the deadline, the message is dropped (counted as `dropped_timeout`)
    /// and the peer is disconnected as stuck. Other peers of a broadcast are served first and
    /// never wait on a stuck one.
    Wait(Duration),
}

/// Static properties of a channel, shared by both ends of a connection's use of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelDescriptor {
    /// The channel ID (one byte on the MConn wire).
    pub id: ChannelId,
    /// Scheduling priority: higher is served first (strict classes; round-robin among equals).
    pub priority: u8,
    /// Capacity of each peer's outbound FIFO for this channel, in messages.
    pub send_queue_capacity: usize,
    /// Capacity of the inbound queue from all peers to the reactor, in messages. When it is full
    /// the peers' readers wait (backpressure to the senders).
    pub recv_queue_capacity: usize,
    /// Largest message accepted on this channel, in bytes (both directions).
    pub max_message_size: usize,
    /// What to do when a peer's outbound FIFO is full.
    pub overflow: OverflowPolicy,
}

impl ChannelDescriptor {
    /// A descriptor with defaults: priority 1, 256-message queues, 4 MiB messages, `DropNewest`.
    pub fn new(id: impl Into<ChannelId>) -> Self {
        Self {
            id: id.into(),
            priority: 1,
            send_queue_capacity: 256,
            recv_queue_capacity: 256,
            max_message_size: 4 << 20,
            overflow: OverflowPolicy::DropNewest,
        }
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets both queue capacities.
    pub fn with_queue_capacity(mut self, send: usize, recv: usize) -> Self {
        self.send_queue_capacity = send.max(1);
        self.recv_queue_capacity = recv.max(1);
        self
    }

    /// Sets the maximum message size.
    pub fn with_max_message_size(mut self, max: usize) -> Self {
        self.max_message_size = max;
        self
    }

    /// Sets the overflow policy.
    pub fn with_overflow(mut self, overflow: OverflowPolicy) -> Self {
        self.overflow = overflow;
        self
    }
}

/// Converts between a reactor's message type and the protobuf wrapper sent on the wire (the
/// ADR-062 `Wrapper`: e.g. `Echo::Ping` ⇄ `EchoMessage { inner: Ping }`).
pub trait Wrapper: Sized + Send + 'static {
    /// The protobuf type on the wire.
    type Proto: prost::Message + Default;

    /// Wraps a message for sending.
    fn wrap(self) -> Self::Proto;

    /// Unwraps a received message; an error means the peer sent something this channel does
    /// not accept (e.g. an empty oneof) and the peer is disconnected.
    fn unwrap(proto: Self::Proto) -> Result<Self, UnwrapError>;
}

/// Why a received wrapper message could not be unwrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnwrapError(pub String);

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<M> {
    /// The peer that sent it.
    pub from: NodeId,
    /// The message.
    pub message: M,
}

/// Who an outbound message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    /// One connected peer.
    Peer(NodeId),
    /// Every connected peer that has the channel.
    Broadcast,
    /// Every connected peer that has the channel, except this one (typically the peer a
    /// gossiped message came from).
    BroadcastExcept(NodeId),
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound<M> {
    /// The recipient(s).
    pub to: Recipient,
    /// The message.
    pub message: M,
}

impl<M> Outbound<M> {
    /// A message for one peer.
    pub fn to(peer: NodeId, message: M) -> Self {
        Self { to: Recipient::Peer(peer), message }
    }

    /// A message for every connected peer that has the channel.
    pub fn broadcast(message: M) -> Self {
        Self { to: Recipient::Broadcast, message }
    }

    /// A message for every connected peer that has the channel, except `peer`.
    pub fn broadcast_except(peer: NodeId, message: M) -> Self {
        Self { to: Recipient::BroadcastExcept(peer), message }
    }
}

/// A reactor's report that a peer misbehaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerError {
    /// The peer.
    pub node_id: NodeId,
    /// How bad it was: `Minor` lowers the score, `Disconnect` also disconnects, `Ban` also bans.
    pub severity: Severity,
    /// What the peer did, for logs.
    pub reason: String,
}

/// Result of a send: how many peers got the message queued, and how many did not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Peers the message was queued for.
    pub queued: usize,
    /// Peers it was dropped for (full queue, timed out, or peer went away).
    pub dropped: usize,
}

/// Errors from [`ChannelSender::send`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message is larger than the channel allows.
    #[error("message of {size} bytes exceeds channel {channel}'s limit of {max} bytes")]
    MessageTooLarge {
        /// The channel.
        channel: ChannelId,
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The recipient is not connected (or does not have the channel).
    #[error("peer {0} is not connected or does not have this channel")]
    PeerNotConnected(NodeId),
    /// The router has stopped.
    #[error("router stopped")]
    RouterStopped,
}

/// Per-channel counters. Read them with [`ChannelStats::snapshot`].
#[derive(Debug, Default)]
pub(crate) struct ChannelStats {
    pub(crate) sent_queued: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) sent_bytes: AtomicU64,
    pub(crate) dropped_full: AtomicU64,
    pub(crate) dropped_oldest: AtomicU64,
    pub(crate) dropped_timeout: AtomicU64,
    pub(crate) dropped_peer_gone: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) received_bytes: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
}

/// A snapshot of a channel's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStatsSnapshot {
    /// Messages queued to peers (a broadcast counts once per peer).
    pub sent_queued: u64,
    /// Messages handed to peers' connections.
    pub sent: u64,
    /// Bytes of the messages handed to peers' connections.
    pub sent_bytes: u64,
    /// Dropped because a peer's queue was full (`DropNewest`).
    pub dropped_full: u64,
    /// Older messages dropped to make room (`DropOldest`).
    pub dropped_oldest: u64,
    /// Dropped because a `Wait` deadline passed.
    pub dropped_timeout: u64,
    /// Dropped because the peer disconnected while they were queued.
    pub dropped_peer_gone: u64,
    /// Messages delivered to the reactor's inbound queue.
    pub received: u64,
    /// Bytes delivered to the reactor's inbound queue.
    pub received_bytes: u64,
    /// Received messages that failed to decode or unwrap.
    pub decode_errors: u64,
}

impl ChannelStats {
    pub(crate) fn snapshot(&self) -> ChannelStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ChannelStatsSnapshot {
            sent_queued: l(&self.sent_queued),
            sent: l(&self.sent),
            sent_bytes: l(&self.sent_bytes),
            dropped_full: l(&self.dropped_full),
            dropped_oldest: l(&self.dropped_oldest),
            dropped_timeout: l(&self.dropped_timeout),
            dropped_peer_gone: l(&self.dropped_peer_gone),
            received: l(&self.received),
            received_bytes: l(&self.received_bytes),
            decode_errors: l(&self.decode_errors),
        }
    }
}

/// A typed, bidirectional reactor channel. [`Channel::split`] gives independent halves for
/// reactors that send and receive from different tasks.
pub struct Channel<M: Wrapper> {
    sender: ChannelSender<M>,
    receiver: ChannelReceiver<M>,
}

impl<M: Wrapper> fmt::Debug for Channel<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").field("id", &self.sender.descriptor.id).finish()
    }
}

impl<M: Wrapper> Channel<M> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        slot: usize,
        descriptor: ChannelDescriptor,
        stats: Arc<ChannelStats>,
        inbound: mpsc::Receiver<(NodeId, Bytes)>,
    ) -> Self {
        let sender = ChannelSender {
            shared: shared.clone(),
            slot,
            descriptor: descriptor.clone(),
            stats: stats.clone(),
            _m: PhantomData,
        };
        let shutdown = shared.subscribe_shutdown();
        let receiver =
            ChannelReceiver { shared, descriptor, stats, inbound, shutdown, _m: PhantomData };
        Self { sender, receiver }
    }

    /// The channel's ID.
    pub fn id(&self) -> ChannelId {
        self.sender.descriptor.id
    }

    /// Receives the next message (see [`ChannelReceiver::recv`]).
    pub async fn recv(&mut self) -> Option<Envelope<M>> {
        self.receiver.recv().await
    }

    /// Sends a message (see [`ChannelSender::send`]).
    pub async fn send(&self, out: Outbound<M>) -> Result<SendOutcome, SendError> {
        self.sender.send(out).await
    }

    /// Reports a misbehaving peer (see [`ChannelSender::report_error`]).
    pub fn report_error(&self, error: PeerError) {
        self.sender.report_error(error);
    }

    /// This channel's counters.
    pub fn stats(&self) -> ChannelStatsSnapshot {
        self.sender.stats.snapshot()
    }

    /// A clone of the sending half.
    pub fn sender(&self) -> ChannelSender<M> {
        self.sender.clone()
    }

    /// Splits into independent sending and receiving halves.
    pub fn split(self) -> (ChannelSender<M>, ChannelReceiver<M>) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a [`Channel`]. Cheap to clone.
pub struct ChannelSender<M> {
    shared: Arc<Shared>,
    slot: usize,
    descriptor: ChannelDescriptor,
    stats: Arc<ChannelStats>,
    _m: PhantomData<fn(M)>,
}

impl<M> Clone for ChannelSender<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            slot: self.slot,
            descriptor: self.descriptor.clone(),
            stats: self.stats.clone(),
            _m: PhantomData,
        }
    }
}

impl<M> fmt::Debug for ChannelSender<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSender").field("id", &self.descriptor.id).finish()
    }
}

impl<M: Wrapper> ChannelSender<M> {
    /// Encodes the message once and queues it for its recipient(s) according to the channel's
    /// [`OverflowPolicy`]. With `DropNewest`/`DropOldest` this never waits. With `Wait(d)` it
    /// waits at most `d` for peers whose queue is full, after queueing for all the others.
    ///
    /// A unicast to a peer that is not connected, or that did not advertise this channel, is
    /// an error; a broadcast skips such peers.
    pub async fn send(&self, out: Outbound<M>) -> Result<SendOutcome, SendError> {
        let bytes = Bytes::from(out.message.wrap().encode_to_vec());
        self.send_bytes(out.to, bytes).await
    }

    /// Sends an already-encoded wrapper message.
    pub async fn send_bytes(&self, to: Recipient, bytes: Bytes) -> Result<SendOutcome, SendError> {
        let ch = self.descriptor.id;
        if bytes.len() > self.descriptor.max_message_size {
            return Err(SendError::MessageTooLarge {
                channel: ch,
                size: bytes.len(),
                max: self.descriptor.max_message_size,
            });
        }
        if self.shared.is_stopped() {
            return Err(SendError::RouterStopped);
        }
        let peers = self.shared.peers.load_full();
        let drop_oldest = self.descriptor.overflow == OverflowPolicy::DropOldest;
        let mut outcome = SendOutcome::default();
        let mut waiting = Vec::new();
        let mut push = |peer: &Arc<super::PeerHandle>, outcome: &mut SendOutcome| match peer
            .queue
            .push(self.slot, bytes.clone(), drop_oldest)
        {
            Pushed::Queued => outcome.queued += 1,
            Pushed::QueuedDroppedOldest => {
                outcome.queued += 1;
                self.stats.dropped_oldest.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Full => match self.descriptor.overflow {
                OverflowPolicy::Wait(_) => waiting.push(peer.clone()),
                _ => {
                    outcome.dropped += 1;
                    self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
                }
            },
            Pushed::Closed => {
                outcome.dropped += 1;
                self.stats.dropped_peer_gone.fetch_add(1, Ordering::Relaxed);
            }
        };
        match to {
            Recipient::Peer(id) => {
                let Some(peer) = peers.get(&id).filter(|p| p.has_channel(ch)) else {
                    return Err(SendError::PeerNotConnected(id));
                };
                push(peer, &mut outcome);
            }
            Recipient::Broadcast => {
                for peer in peers.values().filter(|p| p.has_channel(ch)) {
                    push(peer, &mut outcome);
                }
            }
            Recipient::BroadcastExcept(except) => {
                for peer in peers.values().filter(|p| p.node_id != except && p.has_channel(ch)) {
                    push(peer, &mut outcome);
                }
            }
        }
        if let OverflowPolicy::Wait(limit) = self.descriptor.overflow
            && !waiting.is_empty()
        {
            // One absolute deadline for all stuck peers: a broadcast waits at most `limit` in
            // total, however many peers are full.
            let deadline = tokio::time::Instant::now() + limit;
            for peer in waiting {
                match peer.queue.push_wait(self.slot, bytes.clone(), deadline).await {
                    Pushed::Queued | Pushed::QueuedDroppedOldest => outcome.queued += 1,
                    Pushed::Full => {
                        outcome.dropped += 1;
                        self.stats.dropped_timeout.fetch_add(1, Ordering::Relaxed);
                        self.shared.report(PeerError {
                            node_id: peer.node_id,
                            severity: Severity::Disconnect,
                            reason: format!(
                                "send queue of channel {ch} stuck for more than {limit:?}"
                            ),
                        });
                    }
                    Pushed::Closed => {
                        outcome.dropped += 1;
                        self.stats.dropped_peer_gone.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.stats.sent_queued.fetch_add(outcome.queued as u64, Ordering::Relaxed);
        Ok(outcome)
    }

    /// Reports a misbehaving peer to the peer manager (scoring, disconnect, ban).
    pub fn report_error(&self, error: PeerError) {
        self.shared.report(error);
    }

    /// The channel's descriptor.
    pub fn descriptor(&self) -> &ChannelDescriptor {
        &self.descriptor
    }
}

/// The receiving half of a [`Channel`].
pub struct ChannelReceiver<M> {
    shared: Arc<Shared>,
    descriptor: ChannelDescriptor,
    stats: Arc<ChannelStats>,
    inbound: mpsc::Receiver<(NodeId, Bytes)>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _m: PhantomData<fn() -> M>,
}

impl<M> fmt::Debug for ChannelReceiver<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelReceiver").field("id", &self.descriptor.id).finish()
    }
}

impl<M: Wrapper> ChannelReceiver<M> {
    /// Receives the next message. Messages that fail to decode or unwrap are not returned: the
    /// sender is reported (and disconnected) and the next message is awaited. Returns `None`
    /// after the router stopped.
    pub async fn recv(&mut self) -> Option<Envelope<M>> {
        loop {
            let (from, bytes) = match self.inbound.try_recv() {
                Ok(m) => m,
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    biased;
                    m = self.inbound.recv() => m?,
                    _ = self.shutdown.wait_for(|s| *s) => return None,
                },
            };
            let decoded = M::Proto::decode(bytes)
                .map_err(|e| e.to_string())
                .and_then(|p| M::unwrap(p).map_err(|e| e.0));
            match decoded {
                Ok(message) => return Some(Envelope { from, message }),
                Err(reason) => {
                    self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    self.shared.report(PeerError {
                        node_id: from,
                        severity: Severity::Disconnect,
                        reason: format!(
                            "undecodable message on channel {}: {reason}",
                            self.descriptor.id
                        ),
                    });
                }
            }
        }
    }
}
