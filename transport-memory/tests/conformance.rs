//! The transport conformance suite (`p2p::conformance`) run against the memory transport.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use async_trait::async_trait;
use p2p::NodeKey;
use p2p::conformance::{self, BoxError, ConformanceError, ConformanceHarness, Listening};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_accept_order() -> Result<(), ConformanceError> {
    conformance::open_accept_order(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_contract() -> Result<(), ConformanceError> {
    conformance::transport_contract(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_delivery() -> Result<(), ConformanceError> {
    conformance::ordered_delivery(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_and_max_size() -> Result<(), ConformanceError> {
    conformance::zero_length_and_max_size(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_rejected() -> Result<(), ConformanceError> {
    conformance::oversized_message_rejected(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_implies_flush() -> Result<(), ConformanceError> {
    conformance::close_implies_flush(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_to_idle_reader() -> Result<(), ConformanceError> {
    conformance::close_flushes_to_idle_reader(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure() -> Result<(), ConformanceError> {
    conformance::backpressure(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_channels() -> Result<(), ConformanceError> {
    conformance::concurrent_channels(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_channel() -> Result<(), ConformanceError> {
    conformance::unknown_channel(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_local_channel() -> Result<(), ConformanceError> {
    conformance::undeclared_local_channel(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_fails_when_acceptor_drops() -> Result<(), ConformanceError> {
    conformance::handshake_fails_when_acceptor_drops(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_fails_when_dialer_drops() -> Result<(), ConformanceError> {
    conformance::handshake_fails_when_dialer_drops(&Harness::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_rejects_other_network() -> Result<(), ConformanceError> {
    conformance::router_rejects_other_network(&Harness::default()).await
}
