//! Prometheus metrics (work in progress: the endpoint is being written).

use std::net::SocketAddr;
use std::sync::Arc;

use p2p::Router;

use crate::gossip::TxGossip;

/// Where and how to serve metrics.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MetricsOptions {
    /// Listen address of the HTTP endpoint (`/metrics`).
    pub listen: SocketAddr,
    /// Metric name prefix (CometBFT: `cometbft`).
    pub namespace: String,
    /// Add a `peer_id` label to per-peer metrics.
    pub per_peer_labels: bool,
}

impl MetricsOptions {
    /// Serve on `listen` with CometBFT's namespace and no per-peer labels.
    pub fn new(listen: SocketAddr) -> Self {
        Self { listen, namespace: "cometbft".to_owned(), per_peer_labels: false }
    }
}

/// A running metrics endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    local: SocketAddr,
}

impl MetricsServer {
    /// Binds and serves until [`stop`](Self::stop).
    pub async fn serve(
        options: MetricsOptions,
        router: Arc<Router>,
        gossip: Option<TxGossip>,
    ) -> std::io::Result<Self> {
        let _ = (router, gossip);
        Ok(Self { local: options.listen })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops serving.
    pub async fn stop(self) {}
}
