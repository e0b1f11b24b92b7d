//! The transport conformance suite (`p2p::conformance`) run against the memory transport.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use async_trait::async_trait;
use p2p::NodeKey;
use p2p::conformance::{BoxError, ConformanceHarness, Listening};
use p2p_transport_memory::MemoryNetwork;

/// Transports on one memory network, with its default buffers.
#[derive(Default)]
struct Harness {
    network: MemoryNetwork,
}

#[async_trait]
impl ConformanceHarness for Harness {
    async fn listen(&self, key: &NodeKey) -> Result<Listening, BoxError> {
        let transport = self.network.transport(key.node_id())?;
        let endpoint = transport.endpoint();
        Ok(Listening { transport: Arc::new(transport), endpoint })
    }
}

p2p::conformance_tests!(Harness::default());
