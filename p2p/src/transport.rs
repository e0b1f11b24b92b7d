//! The [`Transport`] and [`Connection`] traits every transport crate implements.
//!
//! The shape follows ADR-062: a transport listens and dials [`Endpoint`]s of the protocols it
//! serves; a connection does the node handshake (NodeInfo exchange plus proof of the peer's
//! ed25519 key) and then carries whole messages tagged with a [`ChannelId`]. Framing, encryption
//! and multiplexing are the transport's business; routing, queueing and peer policy are the
//! router's.
//!
//! # Contract
//!
//! * [`Transport::dial`] of an endpoint whose protocol the transport does not serve returns
//!   [`TransportError::UnsupportedProtocol`] without side effects, so the router can try the next
//!   transport.
//! * [`Transport::accept`] returns [`TransportError::Closed`] once the transport is closed; any
//!   other error is transient and the router keeps accepting.
//! * [`Connection::send`] applies backpressure: it waits while the peer is not reading. It must be
//!   cancel-safe in the sense that dropping the future either sends the whole message or nothing.
//! * [`Connection::receive`] yields messages of one channel in the order they were sent. A message
//!   larger than the channel's [`ChannelDescriptor::max_message_size`] is an error, detected before
//!   the message is buffered where the wire format allows it.
//! * `send` and `receive` may be called concurrently from two tasks.
//! * [`Connection::close`] flushes messages already accepted by `send`, then closes.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;

use crate::address::{Endpoint, Protocol};
use crate::key::NodeKey;
use crate::node_info::{NodeInfo, NodeInfoError};
use crate::router::ChannelDescriptor;
use crate::types::{ChannelId, NodeId};

/// A transport: listens for and dials connections of one or more protocols.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The URL schemes this transport serves, e.g. `[Protocol::MCONN]`.
    fn protocols(&self) -> Vec<Protocol>;

    /// The endpoints this transport listens on (empty if it only dials).
    fn endpoints(&self) -> Vec<Endpoint>;

    /// Waits for the next inbound connection (not yet handshaken).
    async fn accept(&self) -> Result<Box<dyn Connection>, TransportError>;

    /// Dials an endpoint (no handshake yet).
    async fn dial(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>, TransportError>;

    /// Stops listening. Pending and later [`Transport::accept`] calls return
    /// [`TransportError::Closed`]; established connections are not affected.
    async fn close(&self);
}

/// A connection to one peer.
#[async_trait]
pub trait Connection: Send + Sync + fmt::Debug {
    /// Performs the node handshake: proves our key, authenticates the peer's key and exchanges
    /// [`NodeInfo`]. `channels` are the local channel descriptors (receive limits, priorities).
    ///
    /// Returns the peer's NodeInfo and authenticated public key. The caller checks that the key's
    /// node ID matches the dialled ID and the NodeInfo, and applies timeouts.
    async fn handshake(
        &mut self,
        local_info: &NodeInfo,
        key: &NodeKey,
        channels: &[ChannelDescriptor],
    ) -> Result<(NodeInfo, VerifyingKey), HandshakeError>;

    /// Completes the transport's own connection setup, such as QUIC's TLS handshake, on a
    /// dialled connection, before [`handshake`](Self::handshake).
    ///
    /// The router races a peer's addresses up to this point (the first connection established
    /// wins; see `RouterConfig::fallback_delay`), so a transport whose
    /// [`Transport::dial`] returns before the peer has answered should finish connecting here,
    /// or a dead path (say, UDP blocked) would win the race. `handshake` must work without it
    /// too. The default does nothing (for MConn, `dial` returns a connected TCP stream).
    async fn establish(&mut self) -> Result<(), HandshakeError> {
        Ok(())
    }

    /// Sends one message on a channel, waiting while the transport's buffers are full.
    async fn send(&self, channel: ChannelId, message: Bytes) -> Result<(), ConnectionError>;

    /// Receives the next message.
    async fn receive(&self) -> Result<(ChannelId, Bytes), ConnectionError>;

    /// Our end of the connection.
    fn local_endpoint(&self) -> Endpoint;

    /// The peer's end of the connection.
    fn remote_endpoint(&self) -> Endpoint;

    /// Flushes what `send` has accepted, then closes the connection. Idempotent.
    async fn close(&self);

    /// Closes the connection for `reason`, telling the peer why if the protocol can (QUIC sends
    /// an application error code and the reason text). [`CloseReason::Normal`] must flush like
    /// [`close`](Self::close); the other reasons may drop unsent data. The default ignores the
    /// reason and calls `close`.
    async fn close_with(&self, reason: &CloseReason) {
        let _ = reason;
        self.close().await;
    }
}

/// Why the router closes a connection (see [`Connection::close_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Nothing wrong: the node is stopping, or the connection ended by itself.
    Normal,
    /// Evicted to give its slot to a better peer.
    Evicted,
    /// Superseded by another connection to the same peer (tie-break or reconnect).
    Replaced,
    /// The peer misbehaved: a reactor reported a `PeerError` that disconnects; the text is
    /// its reason.
    Misbehaved(String),
    /// The peer was banned; the text is the reason reported.
    Banned(String),
}

impl CloseReason {
    /// The reason text, e.g. for a QUIC `CONNECTION_CLOSE` frame.
    pub fn text(&self) -> &str {
        match self {
            Self::Normal => "normal close",
            Self::Evicted => "evicted for a better peer",
            Self::Replaced => "replaced by another connection",
            Self::Misbehaved(text) | Self::Banned(text) => text,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misbehaved(text) => write!(f, "misbehaved: {text}"),
            Self::Banned(text) => write!(f, "banned: {text}"),
            other => f.write_str(other.text()),
        }
    }
}

/// Errors from [`Transport`] operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The transport does not serve this protocol; the router tries another transport.
    #[error("this transport does not serve protocol {0:?}")]
    UnsupportedProtocol(Protocol),
    /// The transport was closed.
    #[error("transport closed")]
    Closed,
    /// Nothing listens at the endpoint, or it refused the connection.
    #[error("connection refused by {0}")]
    Refused(Endpoint),
    /// An I/O error.
    #[error("transport I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A transport-specific error.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Errors from [`Connection::handshake`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer failed to prove the key it claimed (bad signature or key).
    #[error("peer failed to authenticate: {0}")]
    Authentication(String),
    /// The peer's NodeInfo did not decode or validate.
    #[error("invalid peer NodeInfo: {0}")]
    InvalidNodeInfo(#[from] NodeInfoError),
    /// The authenticated key does not belong to the node we dialled or that the NodeInfo names.
    #[error("peer authenticated as {authenticated} but {claimed_by} says {claimed}")]
    IdMismatch {
        /// The ID derived from the authenticated key.
        authenticated: NodeId,
        /// The ID that was expected.
        claimed: NodeId,
        /// Where the expected ID came from ("the dialled address" or "its NodeInfo").
        claimed_by: &'static str,
    },
    /// The peer connected to itself (our own node ID).
    #[error("connected to ourselves ({0})")]
    SelfConnection(NodeId),
    /// A handshake message broke the protocol.
    #[error("handshake protocol violation: {0}")]
    Protocol(String),
    /// The handshake did not finish in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The connection failed during the handshake.
    #[error("connection failed during handshake: {0}")]
    Connection(#[from] ConnectionError),
}

impl HandshakeError {
    /// All values of [`reason`](Self::reason), for metrics that list every reason.
    pub const REASONS: [&'static str; 8] = [
        "authentication",
        "invalid_node_info",
        "incompatible",
        "id_mismatch",
        "self_connection",
        "protocol",
        "timeout",
        "connection",
    ];

    /// A short, stable, low-cardinality name of the failure, for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Authentication(_) => "authentication",
            Self::InvalidNodeInfo(
                NodeInfoError::NetworkMismatch { .. }
                | NodeInfoError::BlockProtocolMismatch { .. }
                | NodeInfoError::NoCommonChannel { .. },
            ) => "incompatible",
            Self::InvalidNodeInfo(_) => "invalid_node_info",
            Self::IdMismatch { .. } => "id_mismatch",
            Self::SelfConnection(_) => "self_connection",
            Self::Protocol(_) => "protocol",
            Self::Timeout(_) => "timeout",
            Self::Connection(_) => "connection",
        }
    }
}

/// Errors from [`Connection::send`] and [`Connection::receive`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The connection is closed (by either side).
    #[error("connection closed")]
    Closed,
    /// A message exceeds the channel's limit.
    #[error("message of {size} bytes on channel {channel} exceeds its limit of {max} bytes")]
    MessageTooLarge {
        /// The channel.
        channel: ChannelId,
        /// The message size (or a lower bound of it).
        size: usize,
        /// The channel's limit.
        max: usize,
    },
    /// A message on a channel that is not open: the peer sent one on a channel we do not
    /// have, or we tried to send on a channel not declared at the handshake.
    #[error("message on unknown channel {0}")]
    UnknownChannel(ChannelId),
    /// The peer broke the wire protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer closed the connection with an error (see [`Connection::close_with`]): a
    /// transport-specific code and the peer's reason text (truncated and lossily decoded).
    #[error("peer closed the connection with error code {code}: {reason}")]
    ClosedByPeer {
        /// The transport's error code (for QUIC, the application error code).
        code: u64,
        /// The peer's reason.
        reason: String,
    },
    /// An I/O error.
    #[error("connection I/O error: {0}")]
    Io(#[from] std::io::Error),
}
