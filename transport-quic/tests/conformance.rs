//! The transport conformance suite (`p2p::conformance`) run against the QUIC transport on
//! loopback UDP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use async_trait::async_trait;
use p2p::conformance::{BoxError, ConformanceHarness, Listening};
use p2p::{Endpoint, NodeKey, Protocol};
use p2p_transport_quic::{QuicConfig, QuicTransport};

/// QUIC transports on 127.0.0.1 with the default configuration (the key goes into the TLS
/// certificate).
struct Harness;

#[async_trait]
impl ConformanceHarness for Harness {
    async fn listen(&self, key: &NodeKey) -> Result<Listening, BoxError> {
        let transport = QuicTransport::bind("127.0.0.1:0".parse()?, key, QuicConfig::default())?;
        let endpoint = Endpoint::socket(Protocol::QUIC, transport.local_addr());
        Ok(Listening { transport: Arc::new(transport), endpoint })
    }
}

p2p::conformance_tests!(Harness);
