//! MConnection transport for `mconn://` (and legacy `id@host:port`) addresses, wire-compatible
//! with CometBFT v0.38 and Tendermint v0.34.
//!
//! Layers, bottom up (see `shared/reference/wire-mconn.md` for the byte-level spec):
//!
//! * [`secret`]: the SecretConnection handshake (X25519, Merlin, HKDF-SHA256, ed25519
//!   `AuthSigMessage`) and its 1044-byte ChaCha20-Poly1305 frames — sans-IO.
//! * the NodeInfo exchange (uvarint-delimited `DefaultNodeInfo`), in [`MConnTransport`]'s
//!   connections, each phase under its own deadline as in Go (3 s).
//! * [`mconn`]: MConnection packets (ping, pong, message chunks with `eof`), message splitting
//!   and reassembly with per-channel limits, priority scheduling and keepalive — sans-IO.
//!
//! One driver task per connection owns the socket and both state machines.

use std::time::Duration;

mod conn;
pub mod mconn;
pub mod secret;
mod transport;

pub use conn::MConnConnection;
pub use transport::MConnTransport;

/// Settings of the MConn transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MConnConfig {
    /// Packet-level settings (payload size, ping interval, pong timeout).
    pub mconn: mconn::MConnConfig,
    /// Time allowed for each handshake phase (SecretConnection, then NodeInfo). Go allows 3 s
    /// per phase; default 3 s.
    pub handshake_phase_timeout: Duration,
    /// Messages per channel waiting inside the connection to be packetised (the router's
    /// per-peer queues hold the rest). The connection interleaves channels by priority, so this
    /// only bounds memory and lets small messages share writes. Default 16.
    pub channel_send_queue: usize,
    /// Outbound messages handed to the connection's driver and not yet taken, and, per
    /// channel, messages waiting while the channel's send queue is full (a full channel makes
    /// only its own senders wait). Default 32.
    pub command_queue: usize,
    /// Received messages waiting for the router's reader; when full the driver stops reading the
    /// socket (backpressure). Default 64.
    pub receive_queue: usize,
    /// Outbound bytes per second on this connection (token bucket, 100 ms burst); `None`
    /// (default) is unlimited. Only delays sending; never drops or disconnects.
    pub send_rate: Option<u64>,
    /// Inbound bytes per second on this connection; `None` (default) is unlimited. When the
    /// bucket is empty the driver stops reading (TCP backpressure to the sender).
    pub recv_rate: Option<u64>,
    /// How long the peer may take none of our bytes (its reactor is stalled, or it is gone)
    /// before the connection is dropped. The pong deadline is paused meanwhile. Default 120 s.
    pub write_stall_timeout: Duration,
    /// Most time a lone small message (less than one 1024-byte frame) waits for company before
    /// it is written. Default zero: output goes out as soon as the socket takes it, and messages
    /// that are already queued together share writes anyway. Pings, pongs and full frames are
    /// never held.
    pub max_flush_delay: Duration,
}

impl MConnConfig {
    /// CometBFT v0.38's defaults: `send_rate` and `recv_rate` 5 120 000 B/s, a 100 ms flush
    /// throttle, 1024-byte packet payloads, 60 s pings with a 45 s pong timeout. Our default
    /// differs in having no rate limits (per-peer caps are a poor substitute for congestion
    /// control, and the router's bounded queues already give backpressure) and no flush delay.
    pub fn cometbft_defaults() -> Self {
        Self {
            send_rate: Some(5_120_000),
            recv_rate: Some(5_120_000),
            max_flush_delay: Duration::from_millis(100),
            ..Self::default()
        }
    }
}

impl Default for MConnConfig {
    fn default() -> Self {
        Self {
            mconn: mconn::MConnConfig::default(),
            handshake_phase_timeout: Duration::from_secs(3),
            channel_send_queue: 16,
            command_queue: 32,
            receive_queue: 64,
            send_rate: None,
            recv_rate: None,
            write_stall_timeout: Duration::from_secs(120),
            max_flush_delay: Duration::ZERO,
        }
    }
}
