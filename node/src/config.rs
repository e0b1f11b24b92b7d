//! `config.toml`: CometBFT's key names where the meaning is the same, plus ours for QUIC.
//!
//! Every field has a default, so an empty file is a valid configuration; unknown keys are
//! errors. Durations are strings such as `"300ms"`, `"3s"` or `"1m"`.

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// A name for this node (CometBFT: `moniker`).
    pub moniker: String,
    /// The network this node belongs to, compared with peers' NodeInfo (CometBFT takes it
    /// from `genesis.json`; there is no genesis here).
    pub chain_id: String,
    /// Log filter, `RUST_LOG` syntax, e.g. `"info"` or `"p2p=debug,info"` (the `RUST_LOG`
    /// environment variable wins).
    pub log_level: String,
    /// `"plain"` or `"json"` (CometBFT's `log_format`).
    pub log_format: String,
    /// The node key, relative to the home directory (CometBFT: `node_key_file`).
    pub node_key_file: String,
    /// Peer-to-peer settings.
    pub p2p: P2pConfig,
    /// Transaction gossip settings.
    pub mempool: MempoolConfig,
    /// Metrics.
    pub instrumentation: InstrumentationConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            moniker: "p2pd".to_owned(),
            chain_id: "p2p-testnet".to_owned(),
            log_level: "info".to_owned(),
            log_format: "plain".to_owned(),
            node_key_file: "config/node_key.json".to_owned(),
            p2p: P2pConfig::default(),
            mempool: MempoolConfig::default(),
            instrumentation: InstrumentationConfig::default(),
        }
    }
}

/// The `[p2p]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct P2pConfig {
    /// MConn (TCP) listen address, `tcp://host:port`; empty: no MConn listener.
    pub laddr: String,
    /// QUIC (UDP) listen address, `udp://host:port` (ours); empty: no QUIC listener. By
    /// default the same port number as `laddr`.
    pub quic_laddr: String,
    /// The address peers should dial, `host:port`, if not the listen address.
    pub external_address: String,
    /// Seed nodes, comma-separated addresses (PEX is not run by this binary yet: they are
    /// dialed like other peers).
    pub seeds: String,
    /// Peers to stay connected to, comma-separated: `id@host:port` (MConn), or
    /// `mconn://`, `quic://` URLs.
    pub persistent_peers: String,
    /// Peers this node never reports or penalises (CometBFT: `unconditional_peer_ids`).
    pub unconditional_peer_ids: String,
    /// Maximum inbound peers.
    pub max_num_inbound_peers: usize,
    /// Maximum outbound peers.
    pub max_num_outbound_peers: usize,
    /// MConn send rate limit, bytes/s per connection (0: unlimited).
    pub send_rate: u64,
    /// MConn receive rate limit, bytes/s per connection (0: unlimited).
    pub recv_rate: u64,
    /// MConn packet payload size.
    pub max_packet_msg_payload_size: usize,
    /// MConn flush throttle (longest delay of a lone small message).
    pub flush_throttle_timeout: String,
    /// Time for the whole node handshake.
    pub handshake_timeout: String,
    /// Time to set up a transport connection.
    pub dial_timeout: String,
    /// How long a dial waits for the preferred address (QUIC) before also trying the next
    /// one (MConn) (ours).
    pub fallback_delay: String,
    /// The peer store (redb), relative to the home directory (CometBFT's `addr_book_file` plays
    /// this role).
    pub peer_store_file: String,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            laddr: "tcp://0.0.0.0:26656".to_owned(),
            quic_laddr: "udp://0.0.0.0:26656".to_owned(),
            external_address: String::new(),
            seeds: String::new(),
            persistent_peers: String::new(),
            unconditional_peer_ids: String::new(),
            max_num_inbound_peers: 40,
            max_num_outbound_peers: 10,
            send_rate: 5_120_000,
            recv_rate: 5_120_000,
            max_packet_msg_payload_size: 1024,
            flush_throttle_timeout: "100ms".to_owned(),
            handshake_timeout: "20s".to_owned(),
            dial_timeout: "3s".to_owned(),
            fallback_delay: "300ms".to_owned(),
            peer_store_file: "data/peers.redb".to_owned(),
        }
    }
}

/// The `[mempool]` section (transaction gossip).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MempoolConfig {
    /// Gossip transactions (CometBFT: `broadcast`).
    pub broadcast: bool,
    /// Largest transaction accepted, bytes.
    pub max_tx_bytes: usize,
    /// Recently seen transactions remembered (duplicates are not forwarded again).
    pub cache_size: usize,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        Self { broadcast: true, max_tx_bytes: 1024 * 1024, cache_size: 10_000 }
    }
}

/// The `[instrumentation]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct InstrumentationConfig {
    /// Serve Prometheus metrics.
    pub prometheus: bool,
    /// Where, `host:port` or `:port`.
    pub prometheus_listen_addr: String,
    /// Metric name prefix.
    pub namespace: String,
    /// Add a `peer_id` label to per-peer metrics (ours; off: high cardinality).
    pub per_peer_labels: bool,
}

impl Default for InstrumentationConfig {
    fn default() -> Self {
        Self {
            prometheus: false,
            prometheus_listen_addr: ":26660".to_owned(),
            namespace: "cometbft".to_owned(),
            per_peer_labels: false,
        }
    }
}
