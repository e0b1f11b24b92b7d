//! The transport conformance suite (`p2p::conformance`) run against the MConn transport on
//! loopback TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use async_trait::async_trait;
use p2p::conformance::{self, BoxError, ConformanceError, ConformanceHarness, Listening};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_accept_order() -> Result<(), ConformanceError> {
    conformance::open_accept_order(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_contract() -> Result<(), ConformanceError> {
    conformance::transport_contract(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_delivery() -> Result<(), ConformanceError> {
    conformance::ordered_delivery(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_and_max_size() -> Result<(), ConformanceError> {
    conformance::zero_length_and_max_size(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_rejected() -> Result<(), ConformanceError> {
    conformance::oversized_message_rejected(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_implies_flush() -> Result<(), ConformanceError> {
    conformance::close_implies_flush(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_to_idle_reader() -> Result<(), ConformanceError> {
    conformance::close_flushes_to_idle_reader(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure() -> Result<(), ConformanceError> {
    conformance::backpressure(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_channels() -> Result<(), ConformanceError> {
    conformance::concurrent_channels(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_channel() -> Result<(), ConformanceError> {
    conformance::unknown_channel(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_local_channel() -> Result<(), ConformanceError> {
    conformance::undeclared_local_channel(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_fails_when_acceptor_drops() -> Result<(), ConformanceError> {
    conformance::handshake_fails_when_acceptor_drops(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_fails_when_dialer_drops() -> Result<(), ConformanceError> {
    conformance::handshake_fails_when_dialer_drops(&Harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_rejects_other_network() -> Result<(), ConformanceError> {
    conformance::router_rejects_other_network(&Harness).await
}
