//! CometBFT's `lp2p` transport (libp2p over QUIC, CometBFT v0.39+/v0.40) for the `lp2p://`
//! scheme: [`Lp2pTransport`], on the project's quinn endpoint (ring only), which it can share
//! with the native `p2p-quic/1` transport on one UDP port.
//!
//! # Wire protocol (as a CometBFT v0.40.0 node speaks it)
//!
//! * **QUIC v1 + TLS 1.3, ALPN `libp2p`**, each side presenting a libp2p TLS certificate signed
//!   by its ed25519 node key (`p2p_quic_endpoint::identity`). The peer's node key, its
//!   [`p2p::NodeId`] and its libp2p peer ID (`12D3KooW…`, see [`p2p::peer_id`]) come from the
//!   verified certificate. QUIC streams are used directly (no yamux, no Noise).
//! * **multistream-select 1.0 on every stream** ([`multistream`]): the opener sends
//!   `/multistream/1.0.0` and a protocol ID, the responder the header and an echo (or `na`).
//!   We pipeline the opener's side (header, protocol and payload in one write) and, as a
//!   responder, echo as soon as the protocol line is read, before reading the payload (a Go
//!   opener waits for the echo before it finishes its stream).
//! * **Channels**: `/p2p/cometbft/1.0.0/channel/0xNN`, **one stream per message**:
//!   `uvarint(len) ‖ message`, then FIN. The receiver reads the length (refusing one above the
//!   channel's `max_message_size` before reading the body), reads the body into a buffer that
//!   grows with the bytes that arrive (a declared length is never allocated up front), queues
//!   the message, then finishes its side: the opener's stream ends once the message is queued,
//!   which is what [`p2p::Connection::close`] waits for.
//! * **identify** (`/ipfs/id/1.0.0`): answered with our public key, listen address (a binary
//!   `/ip4/…/udp/…/quic-v1` multiaddr), the observed address, our protocols and agent
//!   ([`Lp2pConfig::agent_version`]); asked of every peer during the handshake, bounded by
//!   [`Lp2pConfig::identify_timeout`], up to 10 messages of 8 KiB each as go-libp2p writes them.
//! * **ping** (`/ipfs/ping/1.0.0`): 32-byte payloads echoed, at most two ping streams per peer
//!   (go-libp2p's limit); one ping after the handshake measures the round trip (logged).
//!
//! # What a CometBFT node needs from a peer (checked against a running v0.40.0 node)
//!
//! * Go provisions an inbound peer only on its first channel message, so after the handshake a
//!   greeting is sent ([`Lp2pConfig::greeting`]: a blocksync `StatusRequest` on 0x40, answered
//!   by a `StatusResponse`).
//! * Go's `AddPeer` sends to the new peer synchronously (blocksync status, consensus round
//!   step), each waiting up to 10 s for its stream: Go-opened streams are accepted and answered
//!   at once, and streams of the channels CometBFT's reactors use but this node does not
//!   ([`Lp2pConfig::discard_channels`]) are read and discarded instead of refused, so Go's
//!   sends succeed and its log stays clean. Other unknown protocols get `na`.
//! * Go's resource manager allows 64 concurrent inbound streams per protocol per peer: at most
//!   [`Lp2pConfig::max_streams_per_channel`] (48) of our streams per channel are unfinished at
//!   once; `send` waits for a free one (backpressure), and the writes run in their own tasks so
//!   a channel keeps that many messages in flight.
//!
//! # NodeInfo
//!
//! lp2p has no NodeInfo on the wire. [`p2p::Connection::handshake`] builds the peer's from what
//! is known: its ID from the certificate, the channels it lists in identify (those of ours it
//! supports; all of ours if identify fails), its listen address from identify (or the
//! connection's remote address), its agent as the moniker, and *our own* network and protocol
//! versions. So a peer of another chain, or with other block-protocol versions, cannot be told
//! apart by the protocol: it is admitted, and shows up only when its messages fail to decode
//! (the router counts `decode_error` drops per channel and logs the peer). Operators bridge
//! chains only by configuration: list the right peers.
//!
//! # Ordering
//!
//! Messages of one channel are **not** delivered in order: each is its own stream, read
//! concurrently (Go handles them concurrently too). This is the documented exception of this
//! transport to the [`p2p::transport`] contract. Channel priorities still hold: a stream's QUIC
//! send priority is its channel's, and received messages are taken highest priority first.

pub mod multiaddr;
pub mod multistream;

mod conn;
mod identify;
mod transport;

use std::time::Duration;

use bytes::Bytes;
use p2p::ChannelId;

pub use conn::{Lp2pConnection, Lp2pStats};
pub use transport::Lp2pTransport;

/// The ALPN protocol of libp2p over QUIC.
pub const LP2P_ALPN: &[u8] = p2p_quic_endpoint::identity::LIBP2P_ALPN;

/// The channels CometBFT v0.40's reactors open (consensus 0x20–0x23, mempool 0x30, evidence
/// 0x38, blocksync 0x40, statesync 0x60–0x61), which a Go node sends on unasked.
pub const COMETBFT_CHANNELS: [u8; 9] = [0x20, 0x21, 0x22, 0x23, 0x30, 0x38, 0x40, 0x60, 0x61];

/// The blocksync channel.
pub const BLOCKSYNC_CHANNEL: ChannelId = ChannelId(0x40);

/// go-libp2p's connection and stream error codes (`core/network/conn.go`, `mux.go`), used in
/// our `CONNECTION_CLOSE` and `RESET_STREAM` frames.
pub mod error_code {
    /// Normal close.
    pub const NO_ERROR: u32 = 0;
    /// Connection: the peer broke the protocol (bad multistream token, oversized message).
    pub const CONN_PROTOCOL_VIOLATION: u32 = 0x1003;
    /// Connection: replaced by another connection to the same peer.
    pub const CONN_SUPPLANTED: u32 = 0x1004;
    /// Connection: evicted for a better peer (go-libp2p's connection manager says "garbage
    /// collected").
    pub const CONN_GARBAGE_COLLECTED: u32 = 0x1005;
    /// Connection: the peer was banned (refused, as by a connection gater).
    pub const CONN_GATED: u32 = 0x1007;
    /// Stream: protocol negotiation failed (too many `na`s, bad token).
    pub const STREAM_PROTOCOL_NEGOTIATION_FAILED: u32 = 0x1001;
    /// Stream: a resource limit was hit (too many ping streams).
    pub const STREAM_RESOURCE_LIMIT_EXCEEDED: u32 = 0x1002;
    /// Stream: the peer broke the stream protocol (ended early, too long).
    pub const STREAM_PROTOCOL_VIOLATION: u32 = 0x1004;
}

/// Configuration of an [`Lp2pTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lp2pConfig {
    /// Received messages buffered per channel for [`p2p::Connection::receive`].
    pub receive_queue: usize,
    /// Most of our streams of one channel to one peer unfinished at once (Go's resource manager
    /// resets the 65th inbound stream of a protocol).
    pub max_streams_per_channel: usize,
    /// Most streams a peer may have open to us at once (QUIC `initial_max_streams_bidi`;
    /// go-libp2p advertises 256).
    pub max_inbound_streams: u32,
    /// Bytes of message bodies being read from a peer's streams at once; a stream waits (and
    /// QUIC flow control stops the peer) beyond it.
    pub receive_buffer: usize,
    /// Longest a stream may take to negotiate, or stay without progress; then it is reset
    /// (CometBFT's `TimeoutStream`).
    pub stream_timeout: Duration,
    /// How long the handshake waits for the peer's identify answer (go-libp2p's default).
    pub identify_timeout: Duration,
    /// Bound of [`p2p::Connection::close`] (waiting for our streams to be read).
    pub close_timeout: Duration,
    /// The agent version announced in identify.
    pub agent_version: String,
    /// Channels whose streams are read and discarded when we do not have them, instead of
    /// refused with `na` (default: [`COMETBFT_CHANNELS`]).
    pub discard_channels: Vec<u8>,
    /// Largest message read (and discarded) on a [`discard_channels`](Self::discard_channels)
    /// stream.
    pub max_discard_size: usize,
    /// A message sent on every new connection whose peer supports its channel, so that a Go
    /// peer that did not dial us provisions us (default: blocksync `StatusRequest` on 0x40).
    pub greeting: Option<(ChannelId, Bytes)>,
    /// Ping the peer once after the handshake and log the round trip.
    pub ping_on_connect: bool,
}

/// The encoded blocksync `Message { status_request: StatusRequest {} }`: `22 00`.
pub fn blocksync_status_request() -> Bytes {
    use p2p_proto::prost::Message as _;
    use p2p_proto::tendermint::blocksync::{Message, StatusRequest, message::Sum};
    Bytes::from(Message { sum: Some(Sum::StatusRequest(StatusRequest {})) }.encode_to_vec())
}

impl Default for Lp2pConfig {
    fn default() -> Self {
        Self {
            receive_queue: 64,
            max_streams_per_channel: 48,
            max_inbound_streams: 256,
            receive_buffer: 16 << 20,
            stream_timeout: Duration::from_secs(10),
            identify_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_millis(1500),
            agent_version: concat!("rust-p2p/", env!("CARGO_PKG_VERSION")).to_owned(),
            discard_channels: COMETBFT_CHANNELS.to_vec(),
            max_discard_size: 16 << 20,
            greeting: Some((BLOCKSYNC_CHANNEL, blocksync_status_request())),
            ping_on_connect: true,
        }
    }
}

/// Why an [`Lp2pTransport`] could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Lp2pError {
    /// The shared endpoint refused (binding failed, `libp2p` already served, bad settings).
    #[error("lp2p transport: {0}")]
    Endpoint(#[from] p2p_quic_endpoint::EndpointError),
}

#[cfg(test)]
mod tests {
    #[test]
    fn greeting_is_a_status_request() {
        assert_eq!(super::blocksync_status_request().as_ref(), [0x22, 0x00]);
    }
}
