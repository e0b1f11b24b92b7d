//! QUIC transport for the `quic://` scheme: [`QuicTransport`] (quinn + rustls, ring provider).
//!
//! # Identity
//!
//! TLS 1.3 with libp2p-style self-signed certificates that prove the node's ed25519 key
//! ([`identity`]). Both sides present a certificate; the peer's ed25519 key (and so its
//! [`p2p::NodeId`]) is taken from the verified certificate. Outbound dials are made with
//! `expected = None` because [`p2p::Transport::dial`] does not carry the expected node ID: the
//! [`p2p::Router`] checks the authenticated key returned by [`p2p::Connection::handshake`]
//! against the dialled ID.
//!
//! # Wire protocol `p2p-quic/1` (ALPN [`QUIC_ALPN`])
//!
//! * **Handshake.** The acceptor opens one bidirectional *control stream* and writes its
//!   `DefaultNodeInfo` (protobuf) prefixed by its length as an unsigned LEB128 varint, at most
//!   [`p2p::MAX_NODE_INFO_SIZE`] bytes (a larger length is rejected before anything is
//!   allocated). It does so in 0.5-RTT data, in the same flight as its TLS handshake messages
//!   (NodeInfo is public: anyone may complete a handshake with a key of its own), and reads
//!   nothing from the peer until the client's certificate has been verified. The dialer accepts
//!   the control stream and answers with its own NodeInfo, framed the same way. So the dialer
//!   knows its peer after one round trip (TCP + SecretConnection + NodeInfo take three), the
//!   acceptor after one and a half. The control stream is the only bidirectional stream: a
//!   peer that opens one breaks the protocol. A peer without the ALPN [`QUIC_ALPN`] is refused
//!   in the TLS handshake (alert `no_application_protocol`, reported as
//!   [`p2p::HandshakeError::Protocol`]).
//! * **Messages.** Each side opens, lazily on the first message of a channel, one long-lived
//!   *unidirectional* stream per channel. The stream's first byte is the channel ID; after it
//!   come messages, each framed as a uvarint length followed by that many bytes. Messages of one
//!   channel arrive in order; channels do not block each other (each stream has its own flow
//!   control window, and its QUIC send priority is the channel's priority). The receiver closes
//!   the connection with an application error code ([`error_code`]) when a stream names a
//!   channel it does not have, a second stream names the same channel, or a frame's length
//!   prefix exceeds the channel's `max_message_size` (detected before the body is read). A
//!   body's buffer grows with the bytes received, so a long length prefix costs nothing until
//!   the data arrives. A length prefix is at most 10 bytes and must fit in 64 bits.
//! * **Close.** The closing side finishes its message streams and waits until the peer has
//!   acknowledged their data, then finishes its side of the control stream. A peer that sees
//!   the control stream end reads every message stream to its end, then closes the connection
//!   with code 0 ([`error_code::NO_ERROR`]); the closing side waits for that, then closes with
//!   code 0 itself. Both waits together are bounded by [`QuicConfig::close_timeout`], so a
//!   close flushes what was sent unless the peer's reactor is stuck for longer than that.
//!
//! # Flow control
//!
//! Defaults ([`QuicConfig::default`]): a 4 MiB receive window per stream and 16 MiB per
//! connection. On a long path a stream window must cover the bandwidth-delay product plus the
//! data that arrives while a lost packet is retransmitted (the window cannot move past the
//! hole): in the WAN lab's `intercontinental` profile (150 ms RTT, 0.5% loss, 100 Mbit/s,
//! BDP 1.9 MB) one channel reached 3.4 MB/s with 1 MiB, 9.9 MB/s (0.79 of the link) with
//! 4 MiB and 10.7 MB/s with 8 MiB. The connection window leaves room for three stalled
//! channels before the others stop too; it is also the most a peer can make this node buffer
//! while the receiving reactors do not read (16 MiB per peer, allocated only as data arrives).
//! Lower both for many peers on a small machine; raise them for faster long paths.
//!
//! The congestion controller is [`Congestion::BbrCapped`] (see
//! [`p2p_quic_endpoint::congestion`]): quinn's BBR, which does not back off on random loss,
//! with its window held near 1.25 × the delivery rate × the minimum RTT, so that bulk data
//! neither overfills a shallow bottleneck queue nor sits in it ahead of a high-priority
//! message. On `intercontinental`, CUBIC (quinn's default) carried 0.06 MB/s: any loss-based
//! controller is held near the Mathis bound, 0.14 MB/s at 150 ms and 0.5% loss. Because
//! in-flight data is bounded by the controller rather than the stream window, a probe beside a
//! saturating bulk channel on loopback saw a p99 of 0.4–0.5 ms with these windows (CUBIC with
//! a 1 MiB window: 1.2–2.7 ms).
//!
//! The UDP socket asks for [`QuicConfig::socket_buffer`] bytes of send and receive buffer
//! (4 MiB; the kernel caps it at `net.core.rmem_max` / `wmem_max` and logs a warning through
//! `tracing` when it grants less). With Linux's common 208 KiB default, a receiver that falls
//! behind a bulk sender for a fraction of a millisecond drops datagrams, and a message in a
//! dropped datagram waits for loss recovery: p99 tails of 7–25 ms instead of about 1 ms.
//!
//! Keep-alive every 15 s, idle timeout 30 s. Streams: one bidirectional (the control stream; an
//! endpoint shared with the lp2p transport advertises lp2p's limit, and a `p2p-quic/1` peer that
//! opens a second one is closed) and 16 concurrent unidirectional ones until the handshake ends,
//! then as many as we have channels (one stream per channel ID). quinn allocates state for every
//! stream the limit allows when a connection starts, so a limit far above the channel count
//! costs idle memory (256 streams cost 12 KiB per connection).
//!
//! # Sharing the UDP port
//!
//! [`QuicTransport::bind`] makes its own [`QuicEndpoint`]; [`QuicTransport::on_endpoint`]
//! serves `p2p-quic/1` on an existing one, next to other protocols (CometBFT's lp2p, ALPN
//! `libp2p`): the endpoint reads each client's ALPN and hands the connection to the transport
//! that serves it.

mod conn;
mod transport;

use std::time::Duration;

pub use conn::QuicConnection;
pub use identity::{
    CertificateKey, DUMMY_SERVER_NAME, IdentityError, LIBP2P_ALPN, LIBP2P_EXTENSION_OID,
    SIGNATURE_PREFIX, VerifiedPeer, client_config, generate_certificate, generate_certificate_with,
    handshake_peer, identity_error, libp2p_peer_id, peer_node_id, server_config,
    verify_certificate,
};
/// The libp2p TLS identity (shared with the lp2p transport; see [`p2p_quic_endpoint`]).
pub use p2p_quic_endpoint::identity;
pub use p2p_quic_endpoint::{Congestion, EndpointConfig, EndpointError, QuicEndpoint};
pub use transport::QuicTransport;

/// The ALPN protocol of the native protocol described in the crate documentation.
pub const QUIC_ALPN: &[u8] = b"p2p-quic/1";

/// Application error codes used in QUIC `CONNECTION_CLOSE` frames.
pub mod error_code {
    /// Normal close.
    pub const NO_ERROR: u32 = 0;
    /// The peer broke the wire protocol (bad framing, duplicate channel stream, bad handshake).
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// The peer opened a stream for a channel we do not have.
    pub const UNKNOWN_CHANNEL: u32 = 2;
    /// The peer sent a message larger than the channel's limit.
    pub const MESSAGE_TOO_LARGE: u32 = 3;
    /// The connection was evicted for a better peer or replaced by another connection to the
    /// same peer ([`p2p::CloseReason::Evicted`], [`p2p::CloseReason::Replaced`]).
    pub const EVICTED: u32 = 4;
    /// A reactor reported the peer for misbehaviour ([`p2p::CloseReason::Misbehaved`]); the
    /// reason text says what it did.
    pub const MISBEHAVED: u32 = 5;
    /// The peer was banned ([`p2p::CloseReason::Banned`]); the reason text says why.
    pub const BANNED: u32 = 6;
}

/// Configuration of a [`QuicTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuicConfig {
    /// Interval of QUIC keep-alive (PING) frames.
    pub keep_alive_interval: Duration,
    /// Idle timeout: a connection with no traffic (keep-alives count) for this long is dropped.
    pub idle_timeout: Duration,
    /// Receive window of each stream (channel), in bytes.
    pub stream_receive_window: u32,
    /// Receive window of the whole connection, in bytes.
    pub receive_window: u32,
    /// Received messages buffered per channel for [`p2p::Connection::receive`] (each channel
    /// has its own queue, so a full one stops only that channel's stream).
    pub receive_queue: usize,
    /// Bound of [`p2p::Connection::close`] (flush and wait for the peer's close), kept below the
    /// router's 2 s close timeout.
    pub close_timeout: Duration,
    /// Send and receive buffer requested for the UDP socket (`SO_SNDBUF` / `SO_RCVBUF`), in
    /// bytes; the kernel caps it (on Linux at `net.core.wmem_max` / `rmem_max`).
    pub socket_buffer: usize,
    /// Congestion controller of the connections' senders.
    pub congestion: Congestion,
}

impl QuicConfig {
    /// The quinn transport configuration `p2p-quic/1` connections of this configuration run
    /// with (windows, timeouts, congestion controller, stream limits), for raw quinn endpoints
    /// that must match it, such as benchmark ceilings.
    pub fn quinn_transport_config(&self) -> Result<quinn::TransportConfig, QuicError> {
        Ok(self.endpoint_config().transport_config(transport::STREAM_LIMITS)?)
    }

    /// The settings of a [`QuicEndpoint`] for this configuration (socket buffer, keep-alive,
    /// idle timeout, windows), for [`QuicTransport::on_endpoint`] and endpoints shared with
    /// other QUIC protocols.
    pub fn endpoint_config(&self) -> EndpointConfig {
        let mut e = EndpointConfig::default();
        e.keep_alive_interval = self.keep_alive_interval;
        e.idle_timeout = self.idle_timeout;
        e.stream_receive_window = self.stream_receive_window;
        e.receive_window = self.receive_window;
        e.socket_buffer = self.socket_buffer;
        e.congestion = self.congestion;
        e
    }
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            stream_receive_window: 4 << 20,
            receive_window: 16 << 20,
            receive_queue: 16,
            close_timeout: Duration::from_millis(1500),
            socket_buffer: 4 << 20,
            congestion: Congestion::default(),
        }
    }
}

/// Why a [`QuicTransport`] could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// The TLS identity could not be built.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The TLS configuration is unusable for QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
    /// The transport configuration is invalid.
    #[error("invalid QUIC configuration: {0}")]
    Config(String),
    /// Binding the UDP socket failed.
    #[error("binding the QUIC endpoint failed: {0}")]
    Io(#[from] std::io::Error),
    /// The shared endpoint refused (e.g. it already serves `p2p-quic/1`).
    #[error("QUIC endpoint: {0}")]
    Endpoint(EndpointError),
}

impl From<EndpointError> for QuicError {
    fn from(e: EndpointError) -> Self {
        match e {
            EndpointError::Io(e) => Self::Io(e),
            EndpointError::Identity(e) => Self::Identity(e),
            EndpointError::Tls(e) => Self::Tls(e),
            EndpointError::Config(e) => Self::Config(e),
            other => Self::Endpoint(other),
        }
    }
}
