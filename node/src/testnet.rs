//! `p2pd testnet`: N nodes in one process on loopback (work in progress).

use std::time::Duration;

/// Which transports the testnet's nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TestnetTransport {
    /// Every node listens on QUIC only.
    Quic,
    /// Every node listens on MConn only.
    Mconn,
    /// Half the nodes QUIC-only, a quarter MConn-only, the rest dual-stack (the default).
    #[default]
    Mixed,
}

/// Settings of a testnet run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TestnetOptions {
    /// Number of nodes (default 8).
    pub nodes: usize,
    /// Transports (default mixed).
    pub transport: TestnetTransport,
    /// How long transactions are gossiped (default 8 s).
    pub duration: Duration,
}

impl Default for TestnetOptions {
    fn default() -> Self {
        Self { nodes: 8, transport: TestnetTransport::Mixed, duration: Duration::from_secs(8) }
    }
}

/// What a testnet run measured.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TestnetReport {}

/// Why a testnet run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestnetError {
    /// A node could not start.
    #[error("node {index} did not start: {source}")]
    Start {
        /// Which node.
        index: usize,
        /// Why.
        source: crate::NodeError,
    },
}

/// Runs a testnet, printing live progress and the summary to stdout.
pub async fn run(options: TestnetOptions) -> Result<TestnetReport, TestnetError> {
    let _ = options;
    Ok(TestnetReport::default())
}
