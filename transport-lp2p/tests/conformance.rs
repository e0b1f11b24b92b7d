//! The transport conformance suite (`p2p::conformance`) run against the lp2p transport on
//! loopback UDP, with the lp2p exceptions: messages of a channel are not ordered (one stream per
//! message), no NodeInfo on the wire, channels negotiated per stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use async_trait::async_trait;
use p2p::conformance::{BoxError, ConformanceHarness, Listening, Properties};
use p2p::{Endpoint, NodeKey, Protocol};
use p2p_quic_endpoint::EndpointConfig;
use p2p_transport_lp2p::{Lp2pConfig, Lp2pTransport};

/// lp2p transports on 127.0.0.1. No greeting and no discarded channels: between two of our
/// nodes neither is needed, and the suite's channel IDs overlap CometBFT's.
struct Harness;

#[async_trait]
impl ConformanceHarness for Harness {
    async fn listen(&self, key: &NodeKey) -> Result<Listening, BoxError> {
        let mut config = Lp2pConfig::default();
        config.greeting = None;
        config.discard_channels.clear();
        let transport =
            Lp2pTransport::bind("127.0.0.1:0".parse()?, key, EndpointConfig::default(), config)?;
        let endpoint = Endpoint::socket(Protocol::LP2P, transport.local_addr());
        Ok(Listening { transport: Arc::new(transport), endpoint })
    }

    fn properties(&self) -> Properties {
        Properties::default().unordered().no_node_info().negotiated_channels()
    }
}

p2p::conformance_tests!(Harness);
