//! The transport conformance suite (`p2p::conformance`) run against the MConn transport on
//! loopback TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use async_trait::async_trait;
use p2p::conformance::{BoxError, ConformanceHarness, Listening};
use p2p::{Endpoint, NodeKey, Protocol};
use p2p_transport_mconn::{MConnConfig, MConnTransport};

/// MConn transports on 127.0.0.1 with the default configuration.
struct Harness;

#[async_trait]
impl ConformanceHarness for Harness {
    async fn listen(&self, _key: &NodeKey) -> Result<Listening, BoxError> {
        let transport =
            MConnTransport::bind("127.0.0.1:0".parse()?, MConnConfig::default()).await?;
        let addr = transport.local_addr().ok_or("bound transport has no address")?;
        let endpoint = Endpoint::socket(Protocol::MCONN, addr);
        Ok(Listening { transport: Arc::new(transport), endpoint })
    }
}

p2p::conformance_tests!(Harness);
