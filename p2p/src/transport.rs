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
    /// The peer sent a message on a channel we do not have.
    #[error("peer sent a message on unknown channel {0}")]
    UnknownChannel(ChannelId),
    /// The peer broke the wire protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// An I/O error.
    #[error("connection I/O error: {0}")]
    Io(#[from] std::io::Error),
}
