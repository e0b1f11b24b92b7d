//! `config.toml`: CometBFT's key names where the meaning is the same, plus ours for QUIC.
//!
//! Every field has a default, so an empty file is a valid configuration; unknown keys are
//! errors. Durations are strings such as `"300ms"`, `"3s"`, `"1m"` or `"1m30s"` (Go's
//! `time.Duration` syntax, which CometBFT's files use; see [`parse_duration`]).
//!
//! * [`Config::load`] reads and parses a file: syntax errors, unknown keys and values of the
//!   wrong type are reported with the file, the line and the key (`p2p.bogus`).
//! * [`Config::node_options`] checks every value and turns the configuration into
//!   [`NodeOptions`]; errors name the file, the key and the offending value.
//! * [`Config::to_toml`] writes a commented file that [`Config::load`] reads back.
//!
//! Every [`ConfigError`] displays as one line.
//!
//! # Mapping
//!
//! | key | becomes |
//! |-----|---------|
//! | `moniker`, `chain_id` | the NodeInfo's moniker and network |
//! | `node_key_file` | the key [`Config::load_node_key`] reads (relative to the home) |
//! | `p2p.laddr` (`tcp://host:port`) | [`NodeOptions::mconn_listen`] (feature `mconn`) |
//! | `p2p.quic_laddr` (`udp://host:port`) | [`NodeOptions::quic_listen`] (feature `quic`) |
//! | `p2p.external_address` | [`NodeOptions::external_address`] |
//! | `p2p.upnp` (default `false`) | `NodeOptions::upnp` (feature `upnp`): see [`Node::upnp`](crate::Node) |
//! | `p2p.persistent_peers` | [`PeerManagerConfig::persistent_peers`] and [`NodeOptions::peers`] |
//! | `p2p.seeds` | [`NodeOptions::peers`] |
//! | `p2p.pex`, `p2p.seed_mode` | [`NodeOptions::pex`] (`seed_mode` needs `pex`) |
//! | `p2p.max_num_inbound_peers` + `max_num_outbound_peers` | [`PeerManagerConfig::max_connected`] |
//! | `p2p.max_num_outbound_peers` | [`PeerManagerConfig::max_outgoing`] |
//! | `p2p.send_rate`, `recv_rate` (0: unlimited) | the MConn transport's rate limits |
//! | `p2p.max_packet_msg_payload_size` | the MConn packet payload size |
//! | `p2p.flush_throttle_timeout` | the MConn flush delay |
//! | `p2p.handshake_timeout`, `dial_timeout`, `fallback_delay` | the [`RouterConfig`] fields of the same names |
//! | `p2p.peer_store_file` (relative to the home; `""`: none) | [`NodeOptions::peer_store`] |
//! | `p2p.libp2p.enabled` (CometBFT v0.39+) | `NodeOptions::lp2p` (feature `lp2p`): lp2p on the QUIC socket, or on `laddr`'s port over UDP without one |
//! | `p2p.libp2p.bootstrap_peers` (`{ host, id, persistent }`) | `lp2p://id@host` in [`NodeOptions::peers`] (and the persistent peers if `persistent`) |
//! | `mempool.broadcast`, `cache_size` | [`NodeOptions::gossip`] |
//! | `mempool.max_tx_bytes` | [`NodeOptions::max_tx_bytes`] |
//! | `instrumentation.*` | [`NodeOptions::metrics`] (`:26660` means `0.0.0.0:26660`) |
//!
//! `p2p.unconditional_peer_ids` is checked (comma-separated node IDs) but not used yet; so are a
//! bootstrap peer's `private` and `unconditional` flags. CometBFT's `[p2p.libp2p.scaler]` and
//! `[p2p.libp2p.limits]` tables (Go worker pools and resource-manager limits) are accepted and
//! not used: this node's limits are its own (streams per channel, inbound streams, body bytes).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use p2p::{
    Host, NodeAddress, NodeId, NodeKey, NodeKeyError, PeerManagerConfig, Protocol, RouterConfig,
};
use serde::{Deserialize, Serialize};

use crate::NodeOptions;
use crate::gossip::GossipConfig;
use crate::metrics::MetricsOptions;

/// The configuration file's path inside the home directory.
pub const CONFIG_FILE: &str = "config/config.toml";

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
    /// The file this configuration was read from, for error messages.
    #[serde(skip)]
    source: SourceFile,
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
            source: SourceFile::default(),
        }
    }
}

/// The `[p2p]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct P2pConfig {
    /// MConn (TCP) listen address, `tcp://host:port`; empty: no MConn listener. The default
    /// is `tcp://0.0.0.0:26656` if the `mconn` feature is on, else empty.
    pub laddr: String,
    /// QUIC (UDP) listen address, `udp://host:port` (ours); empty: no QUIC listener. By
    /// default the same port number as `laddr` (`udp://0.0.0.0:26656` if the `quic` feature is
    /// on, else empty); port 0 takes the MConn listener's port.
    pub quic_laddr: String,
    /// The address peers should dial, `host:port`, if not the listen address.
    pub external_address: String,
    /// Seed nodes, comma-separated addresses: dialed at start to learn addresses by PEX (a
    /// seed that hangs up is redialed with backoff).
    pub seeds: String,
    /// Peers to stay connected to, comma-separated: `id@host:port` (MConn), or
    /// `mconn://`, `quic://` URLs.
    pub persistent_peers: String,
    /// Map the listening ports on the LAN's UPnP gateway (CometBFT's `upnp`, default off).
    /// Needs the `upnp` cargo feature.
    pub upnp: bool,
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
    /// Run peer exchange (CometBFT's PEX on channel 0x00 with every peer, URL PEX on 0x7d with
    /// peers of this project).
    pub pex: bool,
    /// Seed mode: answer PEX requests and hang up; connect only to collect addresses.
    pub seed_mode: bool,
    /// CometBFT's lp2p transport (`[p2p.libp2p]`, CometBFT v0.39+).
    pub libp2p: Libp2pSection,
}

/// The `[p2p.libp2p]` section: CometBFT's lp2p transport (libp2p over QUIC), with CometBFT's
/// keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Libp2pSection {
    /// Serve lp2p (on the QUIC listener's UDP port; without one, on `laddr`'s port over UDP, as
    /// CometBFT does). Needs the `lp2p` cargo feature.
    pub enabled: bool,
    /// Peers to dial over lp2p: `{ host = "ip:port", id = "12D3KooW…", persistent = true }`.
    pub bootstrap_peers: Vec<BootstrapPeer>,
    /// CometBFT's receive worker autoscaler (`[p2p.libp2p.scaler]`): accepted, not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaler: Option<toml::Table>,
    /// CometBFT's resource-manager limits (`[p2p.libp2p.limits]`): accepted, not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<toml::Table>,
}

/// One `[p2p.libp2p] bootstrap_peers` entry, as CometBFT writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BootstrapPeer {
    /// `ip:port` or `dns-name:port` (a `tcp://` prefix is ignored, as CometBFT ignores it); the
    /// port is UDP.
    pub host: String,
    /// The peer's libp2p peer ID, `12D3KooW…` (`cometbft show-node-id --libp2p`).
    pub id: String,
    /// Keep the peer connected (redialled with backoff, never banned).
    pub persistent: bool,
    /// CometBFT's `private`: accepted, not used.
    pub private: bool,
    /// CometBFT's `unconditional`: accepted, not used.
    pub unconditional: bool,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            laddr: if cfg!(feature = "mconn") { "tcp://0.0.0.0:26656" } else { "" }.to_owned(),
            quic_laddr: if cfg!(feature = "quic") { "udp://0.0.0.0:26656" } else { "" }.to_owned(),
            external_address: String::new(),
            seeds: String::new(),
            persistent_peers: String::new(),
            upnp: false,
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
            pex: true,
            seed_mode: false,
            libp2p: Libp2pSection::default(),
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

/// The file a [`Config`] came from. Not part of the configuration: two configurations with
/// the same values are equal whatever their files.
#[derive(Debug, Clone, Default)]
struct SourceFile(Option<PathBuf>);

impl PartialEq for SourceFile {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// What an error message calls a configuration that was not read from a file.
const BUILT_IN: &str = "(built-in configuration)";

/// Why a configuration could not be read, parsed or used. Every message is one line naming the
/// file and, where there is one, the key and the offending value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}{}", file.display(), not_found_hint(source))]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{}", parse_message(file, *line, key.as_deref(), message))]
    Parse {
        /// The file.
        file: PathBuf,
        /// The line (1-based), if known.
        line: Option<usize>,
        /// The key, dotted (`p2p.laddr`), if known.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A value is invalid.
    #[error("{}: {key}: {value:?}: {reason}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The key, dotted (`p2p.persistent_peers`).
        key: String,
        /// The offending value (one entry of a list).
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A value needs a transport this build does not have.
    #[error(
        "{}: {key}: {value:?} needs the `{feature}` cargo feature, which this build does not have",
        file.display()
    )]
    MissingFeature {
        /// The file.
        file: PathBuf,
        /// The key, dotted.
        key: String,
        /// The offending value.
        value: String,
        /// The cargo feature.
        feature: &'static str,
    },
    /// The node key could not be loaded (the message names the key file).
    #[error(transparent)]
    NodeKey(#[from] NodeKeyError),
    /// The configuration could not be turned into TOML.
    #[error("cannot write the configuration as TOML: {0}")]
    Serialize(String),
}

fn not_found_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::NotFound { " (run `p2pd init` first)" } else { "" }
}

fn parse_message(file: &Path, line: Option<usize>, key: Option<&str>, message: &str) -> String {
    let mut out = file.display().to_string();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
    }
    if let Some(key) = key {
        out.push_str(": ");
        out.push_str(key);
    }
    out.push_str(": ");
    // toml's messages are one line, but make sure: the contract is one line per error.
    out.push_str(&one_line(message));
    out
}

/// Joins the lines of `s` with `"; "`, dropping empty ones.
fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// Why a duration string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}; expected e.g. \"300ms\", \"3s\", \"1m30s\"")]
#[non_exhaustive]
pub struct ParseDurationError {
    /// The rejected input.
    pub input: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses a duration in Go's `time.Duration` syntax, as CometBFT's files write them: one or
/// more decimal numbers, each with an optional fraction and a unit (`ns`, `us` or `µs`, `ms`,
/// `s`, `m`, `h`), e.g. `"300ms"`, `"1.5s"`, `"1m30s"`; `"0"` alone needs no unit. Negative
/// durations are refused.
pub fn parse_duration(input: &str) -> Result<Duration, ParseDurationError> {
    let err = |reason| ParseDurationError { input: input.to_owned(), reason };
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    if input.is_empty() {
        return Err(err("it is empty"));
    }
    if input.starts_with('-') {
        return Err(err("it is negative"));
    }
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !is_number(c)).unwrap_or(rest.len());
        let (number, after) = rest.split_at_checked(number_len).ok_or_else(|| err("bad number"))?;
        let unit_len = after.find(is_number).unwrap_or(after.len());
        let (unit, next) = after.split_at_checked(unit_len).ok_or_else(|| err("bad unit"))?;
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err("a number has no unit (ns, us, ms, s, m, h)")),
            _ => return Err(err("unknown unit (expected ns, us, ms, s, m or h)")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(err("expected a number before the unit"));
        }
        let whole: u128 =
            if whole.is_empty() { 0 } else { whole.parse().map_err(|_| err("it is too large"))? };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(|| err("it is too large"))?;
        // At most 18 fractional digits count (finer than a nanosecond for every unit).
        let fraction: String = fraction.chars().take(18).collect();
        if !fraction.is_empty() {
            let digits: u128 = fraction.parse().map_err(|_| err("bad fraction"))?;
            let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(18));
            nanos = nanos.saturating_add(digits.saturating_mul(unit_nanos) / scale);
        }
        total = total.checked_add(nanos).ok_or_else(|| err("it is too large"))?;
        rest = next;
    }
    let nanos = u64::try_from(total).map_err(|_| err("it is too large"))?;
    Ok(Duration::from_nanos(nanos))
}

impl Config {
    /// Reads and parses `path` (see [`Config::from_toml`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { file: path.to_owned(), source })?;
        Self::from_toml(&text, path)
    }

    /// Parses TOML text; `file` names it in error messages. Missing keys take their defaults;
    /// unknown keys and values of the wrong type are errors naming the key. Values are not
    /// checked here: [`Config::node_options`] does that.
    pub fn from_toml(text: &str, file: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let file = file.as_ref();
        let parse_error = |key: Option<String>, e: &toml::de::Error| ConfigError::Parse {
            file: file.to_owned(),
            line: e.span().map(|span| line_of(text, span.start)),
            key,
            message: e.message().to_owned(),
        };
        let de = toml::Deserializer::parse(text).map_err(|e| parse_error(None, &e))?;
        let mut config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path();
            let key = path.iter().next().is_some().then(|| path.to_string());
            parse_error(key, e.inner())
        })?;
        config.source = SourceFile(Some(file.to_owned()));
        Ok(config)
    }

    /// The file this configuration was read from (or set with [`Config::with_file`]).
    pub fn file(&self) -> Option<&Path> {
        self.source.0.as_deref()
    }

    /// Sets the file named in error messages (e.g. the file a new configuration will be written
    /// to).
    #[must_use]
    pub fn with_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.source = SourceFile(Some(file.into()));
        self
    }

    /// The configuration as TOML, with a comment above every key. [`Config::from_toml`] reads
    /// it back to an equal configuration.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let plain = toml::to_string_pretty(self)
            .map_err(|e| ConfigError::Serialize(one_line(&e.to_string())))?;
        let mut out = String::from(
            "# p2pd configuration. Key names follow CometBFT's config.toml where the meaning is\n\
             # the same. Durations: \"300ms\", \"3s\", \"1m30s\". Unknown keys are errors.\n\n",
        );
        let mut section = String::new();
        for line in plain.lines() {
            let trimmed = line.trim();
            if let Some(name) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                if let Some(comment) = section_comment(&section) {
                    push_comment(&mut out, comment);
                }
            } else if let Some((key, _)) = trimmed.split_once(" = ") {
                let full =
                    if section.is_empty() { key.to_owned() } else { format!("{section}.{key}") };
                if let Some(comment) = key_comment(&full) {
                    push_comment(&mut out, comment);
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        Ok(out)
    }

    /// The node key file: `node_key_file` relative to `home`.
    pub fn node_key_path(&self, home: &Path) -> PathBuf {
        home.join(&self.node_key_file)
    }

    /// Loads the node key from [`Config::node_key_path`].
    pub fn load_node_key(&self, home: &Path) -> Result<NodeKey, ConfigError> {
        Ok(NodeKey::load(self.node_key_path(home))?)
    }

    /// The peer store file: `p2p.peer_store_file` relative to `home`; `None` if empty.
    pub fn peer_store_path(&self, home: &Path) -> Option<PathBuf> {
        (!self.p2p.peer_store_file.is_empty()).then(|| home.join(&self.p2p.peer_store_file))
    }

    /// The MConn listen address (`p2p.laddr`), `None` if empty. A host name is resolved
    /// (the first address is taken). An address is an error if the `mconn` feature is off.
    pub fn mconn_listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.listen_addr(
            "p2p.laddr",
            &self.p2p.laddr,
            &["tcp", "mconn"],
            "mconn",
            cfg!(feature = "mconn"),
        )
    }

    /// The QUIC listen address (`p2p.quic_laddr`), `None` if empty. A host name is resolved
    /// (the first address is taken). Port 0 means the MConn listener's port (see
    /// [`Node::start`](crate::Node::start)). An address is an error if the `quic` feature is off.
    pub fn quic_listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.listen_addr(
            "p2p.quic_laddr",
            &self.p2p.quic_laddr,
            &["udp", "quic"],
            "quic",
            cfg!(feature = "quic"),
        )
    }

    /// The address advertised to peers (`p2p.external_address`: `host:port`, an optional
    /// `tcp://` in front), `None` if empty.
    pub fn external_address(&self) -> Result<Option<(Host, u16)>, ConfigError> {
        let value = self.p2p.external_address.as_str();
        if value.is_empty() {
            return Ok(None);
        }
        let host_port = value.strip_prefix("tcp://").unwrap_or(value);
        parse_host_port(host_port)
            .map(Some)
            .map_err(|reason| self.invalid("p2p.external_address", value, reason))
    }

    /// The metrics endpoint (`instrumentation.prometheus_listen_addr`; `:port` means every
    /// IPv4 interface), whether or not `instrumentation.prometheus` is on.
    pub fn metrics_listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        let key = "instrumentation.prometheus_listen_addr";
        let value = self.instrumentation.prometheus_listen_addr.as_str();
        let value = value.strip_prefix("tcp://").unwrap_or(value);
        if let Some(port) = value.strip_prefix(':') {
            let port = port
                .parse::<u16>()
                .map_err(|e| self.invalid(key, value, format!("bad port: {e}")))?;
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        }
        resolve(value).map_err(|reason| self.invalid(key, value, reason))
    }

    /// Checks every value and builds the options of a [`Node`](crate::Node) with `key`. Files
    /// are relative to `home`; nothing is read or written.
    pub fn node_options(&self, home: &Path, key: NodeKey) -> Result<NodeOptions, ConfigError> {
        let own = key.node_id();
        if !is_ascii_text(&self.moniker) {
            return Err(self.invalid(
                "moniker",
                &self.moniker,
                "must be printable ASCII, not blank",
            ));
        }
        if !is_ascii_text(&self.chain_id) || self.chain_id.len() > 50 {
            return Err(self.invalid(
                "chain_id",
                &self.chain_id,
                "must be printable ASCII, not blank, at most 50 characters",
            ));
        }
        if !matches!(self.log_format.as_str(), "plain" | "json") {
            return Err(self.invalid(
                "log_format",
                &self.log_format,
                "expected \"plain\" or \"json\"",
            ));
        }
        if self.node_key_file.is_empty() {
            return Err(self.invalid("node_key_file", "", "must not be empty"));
        }

        let mut options =
            NodeOptions::new(key, self.chain_id.clone()).with_moniker(self.moniker.clone());

        // Listeners.
        let mconn_listen = self.mconn_listen_addr()?;
        let quic_listen = self.quic_listen_addr()?;
        #[cfg(feature = "mconn")]
        {
            options.mconn_listen = mconn_listen;
            options.mconn = self.mconn_config()?;
        }
        #[cfg(not(feature = "mconn"))]
        {
            let _ = (mconn_listen, self.mconn_config()?);
        }
        #[cfg(feature = "quic")]
        {
            options.quic_listen = quic_listen;
        }
        #[cfg(not(feature = "quic"))]
        {
            let _ = quic_listen;
        }
        if self.p2p.libp2p.enabled {
            #[cfg(feature = "lp2p")]
            {
                options.lp2p = Some(p2p_transport_lp2p::Lp2pConfig::default());
                options.lp2p_listen = quic_listen
                    .or(mconn_listen)
                    .or(Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 26656))));
            }
            #[cfg(not(feature = "lp2p"))]
            return Err(ConfigError::MissingFeature {
                file: self.file_path(),
                key: "p2p.libp2p.enabled".to_owned(),
                value: "true".to_owned(),
                feature: "lp2p",
            });
        }
        if self.p2p.upnp {
            #[cfg(feature = "upnp")]
            {
                options.upnp = Some(p2p::upnp::UpnpConfig::default());
            }
            #[cfg(not(feature = "upnp"))]
            return Err(ConfigError::MissingFeature {
                file: self.file_path(),
                key: "p2p.upnp".to_owned(),
                value: "true".to_owned(),
                feature: "upnp",
            });
        }
        options.external_address = self.external_address()?.map(|(host, port)| match host {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            host => format!("{host}:{port}"),
        });

        // Peers.
        let mut persistent =
            self.peer_list("p2p.persistent_peers", &self.p2p.persistent_peers, own)?;
        let mut seeds = self.peer_list("p2p.seeds", &self.p2p.seeds, own)?;
        for (peer, persist) in self.bootstrap_peers(own)? {
            if persist { &mut persistent } else { &mut seeds }.push(peer);
        }
        for id in split_list(&self.p2p.unconditional_peer_ids) {
            id.parse::<NodeId>()
                .map_err(|e| self.invalid("p2p.unconditional_peer_ids", id, e.to_string()))?;
        }
        let peer_manager = PeerManagerConfig {
            max_connected: self
                .p2p
                .max_num_inbound_peers
                .saturating_add(self.p2p.max_num_outbound_peers),
            max_outgoing: self.p2p.max_num_outbound_peers,
            persistent_peers: persistent.clone(),
            ..PeerManagerConfig::default()
        };
        options.peer_manager = peer_manager;
        options.peers = persistent;
        options.peers.extend(seeds);

        // Peer exchange.
        if self.p2p.seed_mode && !self.p2p.pex {
            return Err(self.invalid("p2p.seed_mode", "true", "needs p2p.pex = true"));
        }
        options.pex = self.p2p.pex.then(|| {
            let mut pex = p2p::pex::PexConfig::default();
            pex.seed_mode = self.p2p.seed_mode;
            pex
        });

        // Router.
        let mut router = RouterConfig::default();
        router.handshake_timeout =
            self.duration("p2p.handshake_timeout", &self.p2p.handshake_timeout, false)?;
        router.dial_timeout = self.duration("p2p.dial_timeout", &self.p2p.dial_timeout, false)?;
        router.fallback_delay =
            self.duration("p2p.fallback_delay", &self.p2p.fallback_delay, true)?;
        options.router = router;
        options.peer_store = self.peer_store_path(home);

        // Gossip.
        if self.mempool.max_tx_bytes == 0 {
            return Err(self.invalid("mempool.max_tx_bytes", "0", "must be at least 1"));
        }
        if self.mempool.cache_size == 0 {
            return Err(self.invalid("mempool.cache_size", "0", "must be at least 1"));
        }
        options.max_tx_bytes = self.mempool.max_tx_bytes;
        options.gossip = self.mempool.broadcast.then(|| GossipConfig {
            cache_size: self.mempool.cache_size,
            ..GossipConfig::default()
        });

        // Metrics.
        let metrics_listen = self.metrics_listen_addr()?;
        let namespace = &self.instrumentation.namespace;
        if !is_metric_namespace(namespace) {
            return Err(self.invalid(
                "instrumentation.namespace",
                namespace,
                "must be letters, digits and '_', not starting with a digit",
            ));
        }
        options.metrics = self.instrumentation.prometheus.then(|| {
            let mut metrics = MetricsOptions::new(metrics_listen);
            metrics.namespace = namespace.clone();
            metrics.per_peer_labels = self.instrumentation.per_peer_labels;
            metrics
        });
        Ok(options)
    }

    /// The MConn transport settings (`send_rate`, `recv_rate`, `max_packet_msg_payload_size`,
    /// `flush_throttle_timeout`).
    #[cfg(feature = "mconn")]
    fn mconn_config(&self) -> Result<p2p_transport_mconn::MConnConfig, ConfigError> {
        let flush =
            self.duration("p2p.flush_throttle_timeout", &self.p2p.flush_throttle_timeout, true)?;
        let payload = self.checked_payload()?;
        let mut config = p2p_transport_mconn::MConnConfig::default();
        config.send_rate = (self.p2p.send_rate > 0).then_some(self.p2p.send_rate);
        config.recv_rate = (self.p2p.recv_rate > 0).then_some(self.p2p.recv_rate);
        config.max_flush_delay = flush;
        config.mconn.max_packet_payload = payload;
        Ok(config)
    }

    /// Without MConn the settings are still checked.
    #[cfg(not(feature = "mconn"))]
    fn mconn_config(&self) -> Result<(), ConfigError> {
        self.duration("p2p.flush_throttle_timeout", &self.p2p.flush_throttle_timeout, true)?;
        self.checked_payload()?;
        Ok(())
    }

    fn checked_payload(&self) -> Result<usize, ConfigError> {
        let payload = self.p2p.max_packet_msg_payload_size;
        if !(1..=MAX_PACKET_PAYLOAD).contains(&payload) {
            return Err(self.invalid(
                "p2p.max_packet_msg_payload_size",
                &payload.to_string(),
                format!("must be from 1 to {MAX_PACKET_PAYLOAD}"),
            ));
        }
        Ok(payload)
    }

    fn file_path(&self) -> PathBuf {
        self.source.0.clone().unwrap_or_else(|| PathBuf::from(BUILT_IN))
    }

    fn invalid(&self, key: &str, value: &str, reason: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            file: self.file_path(),
            key: key.to_owned(),
            value: value.to_owned(),
            reason: one_line(&reason.to_string()),
        }
    }

    fn duration(&self, key: &str, value: &str, zero_ok: bool) -> Result<Duration, ConfigError> {
        let d = parse_duration(value).map_err(|e| self.invalid(key, value, e.reason))?;
        if d.is_zero() && !zero_ok {
            return Err(self.invalid(key, value, "must be more than zero"));
        }
        Ok(d)
    }

    fn listen_addr(
        &self,
        key: &str,
        value: &str,
        schemes: &[&str],
        feature: &'static str,
        enabled: bool,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        if value.is_empty() {
            return Ok(None);
        }
        if !enabled {
            return Err(ConfigError::MissingFeature {
                file: self.file_path(),
                key: key.to_owned(),
                value: value.to_owned(),
                feature,
            });
        }
        let host_port = match value.split_once("://") {
            Some((scheme, rest)) if schemes.contains(&scheme) => rest,
            Some((scheme, _)) => {
                let expected = schemes.first().copied().unwrap_or_default();
                return Err(self.invalid(
                    key,
                    value,
                    format!("unsupported scheme {scheme:?}; expected {expected}://host:port"),
                ));
            }
            None => value,
        };
        resolve(host_port).map(Some).map_err(|reason| self.invalid(key, value, reason))
    }

    fn peer_list(
        &self,
        key: &str,
        value: &str,
        own: NodeId,
    ) -> Result<Vec<NodeAddress>, ConfigError> {
        let mut peers = Vec::new();
        for entry in split_list(value) {
            let address: NodeAddress =
                entry.parse().map_err(|e: p2p::ParseAddressError| self.invalid(key, entry, e))?;
            if address.node_id() == own {
                return Err(self.invalid(key, entry, "this is this node's own ID"));
            }
            let protocol = address.protocol();
            let feature = if *protocol == Protocol::MCONN {
                Some(("mconn", cfg!(feature = "mconn")))
            } else if *protocol == Protocol::QUIC {
                Some(("quic", cfg!(feature = "quic")))
            } else if *protocol == Protocol::LP2P {
                Some(("lp2p", cfg!(feature = "lp2p")))
            } else {
                None
            };
            match feature {
                Some((_, true)) => {}
                Some((feature, false)) => {
                    return Err(ConfigError::MissingFeature {
                        file: self.file_path(),
                        key: key.to_owned(),
                        value: entry.to_owned(),
                        feature,
                    });
                }
                None => {
                    return Err(self.invalid(
                        key,
                        entry,
                        format!("p2pd cannot dial {protocol} addresses; use mconn, quic or lp2p"),
                    ));
                }
            }
            peers.push(address);
        }
        Ok(peers)
    }
}

impl Config {
    /// `[p2p.libp2p] bootstrap_peers` as `lp2p://` addresses, each with its `persistent` flag.
    fn bootstrap_peers(&self, own: NodeId) -> Result<Vec<(NodeAddress, bool)>, ConfigError> {
        let key = "p2p.libp2p.bootstrap_peers";
        let mut out = Vec::new();
        for peer in &self.p2p.libp2p.bootstrap_peers {
            let host = peer.host.strip_prefix("tcp://").unwrap_or(&peer.host);
            let text = format!("lp2p://{}@{host}", peer.id);
            let entry = format!("{{ host = {:?}, id = {:?} }}", peer.host, peer.id);
            let address: NodeAddress =
                text.parse().map_err(|e: p2p::ParseAddressError| self.invalid(key, &entry, e))?;
            if address.node_id() == own {
                return Err(self.invalid(key, &entry, "this is this node's own ID"));
            }
            if !cfg!(feature = "lp2p") {
                return Err(ConfigError::MissingFeature {
                    file: self.file_path(),
                    key: key.to_owned(),
                    value: entry,
                    feature: "lp2p",
                });
            }
            out.push((address, peer.persistent));
        }
        Ok(out)
    }
}

/// The largest `p2p.max_packet_msg_payload_size` accepted (CometBFT's default is 1024).
const MAX_PACKET_PAYLOAD: usize = 1024 * 1024;

/// The non-empty, trimmed entries of a comma-separated list.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Non-empty printable ASCII that is not only spaces (what NodeInfo accepts).
fn is_ascii_text(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x20..=0x7e).contains(&b)) && s.bytes().any(|b| b != b' ')
}

/// Empty, or a Prometheus name prefix.
fn is_metric_namespace(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.char_indices().take_while(|(i, _)| *i < offset).filter(|(_, c)| *c == '\n').count() + 1
}

/// `host:port` (IPv6 in brackets) with a port from 1 to 65535; the host is not resolved.
fn parse_host_port(value: &str) -> Result<(Host, u16), String> {
    let (host, port) = value.rsplit_once(':').ok_or_else(|| "expected host:port".to_owned())?;
    if host.is_empty() {
        return Err("expected host:port; the host is missing".to_owned());
    }
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    if port == 0 {
        return Err("the port must be from 1 to 65535".to_owned());
    }
    let host = Host::from_str(host).map_err(|e| e.to_string())?;
    Ok((host, port))
}

/// `host:port` to a socket address: an IP literal (IPv6 in brackets), or a name resolved now
/// (the first address is taken). Port 0 is accepted.
fn resolve(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(|| "expected host:port".to_owned())?;
    if host.is_empty() {
        return Err("expected host:port; the host is missing".to_owned());
    }
    port.parse::<u16>().map_err(|_| format!("bad port {port:?}"))?;
    let mut found = value.to_socket_addrs().map_err(|e| format!("cannot resolve: {e}"))?;
    found.next().ok_or_else(|| "the host name has no address".to_owned())
}

fn push_comment(out: &mut String, comment: &str) {
    for line in comment.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
}

fn section_comment(section: &str) -> Option<&'static str> {
    Some(match section {
        "p2p" => "Peer-to-peer settings.",
        "p2p.libp2p" => "CometBFT's experimental lp2p transport (CometBFT's keys).",
        "mempool" => "Transaction gossip on CometBFT's mempool channel (0x30). No mempool is kept.",
        "instrumentation" => "Prometheus metrics.",
        _ => return None,
    })
}

/// The comment written above each key by [`Config::to_toml`].
fn key_comment(key: &str) -> Option<&'static str> {
    Some(match key {
        "moniker" => "A name for this node, shown to peers. Printable ASCII.",
        "chain_id" => {
            "The network: peers with another chain ID are refused (CometBFT reads it from\n\
             genesis.json)."
        }
        "log_level" => {
            "Log filter, RUST_LOG syntax: \"info\", \"p2p=debug,info\". The RUST_LOG environment\n\
             variable and --log-level override it."
        }
        "log_format" => "\"plain\" or \"json\" (--log-format overrides it).",
        "node_key_file" => {
            "The node key, CometBFT's node_key.json format, relative to the home directory."
        }
        "p2p.laddr" => {
            "MConnection (TCP, CometBFT-compatible) listen address, tcp://host:port;\n\
             \"\" for none. Needs the `mconn` cargo feature."
        }
        "p2p.quic_laddr" => {
            "QUIC (UDP) listen address, udp://host:port; \"\" for none. Port 0 takes laddr's\n\
             port. Needs the `quic` cargo feature."
        }
        "p2p.external_address" => {
            "The address peers should dial, host:port, if not the listen address (\"\": the\n\
             listen address)."
        }
        "p2p.seeds" => {
            "Seed nodes, comma-separated addresses, dialed at start to learn peers by PEX."
        }
        "p2p.persistent_peers" => {
            "Peers to stay connected to, comma-separated: id@host:port (MConnection),\n\
             mconn://id@host:port or quic://id@host:port."
        }
        "p2p.upnp" => {
            "Map the listening ports (TCP for MConnection, UDP for QUIC) on the LAN's UPnP\n\
             gateway, renew the leases, remove the mappings on stop, and log the external\n\
             addresses. Needs the `upnp` cargo feature. external_address, if set, is still what\n\
             the node advertises."
        }
        "p2p.unconditional_peer_ids" => "Comma-separated node IDs (checked; not used yet).",
        "p2p.max_num_inbound_peers" => "Maximum number of inbound peers.",
        "p2p.max_num_outbound_peers" => "Maximum number of outbound peers.",
        "p2p.send_rate" => "MConnection send rate per connection, bytes/s (0: unlimited).",
        "p2p.recv_rate" => "MConnection receive rate per connection, bytes/s (0: unlimited).",
        "p2p.max_packet_msg_payload_size" => "MConnection packet payload size, bytes.",
        "p2p.flush_throttle_timeout" => {
            "Longest time a lone small MConnection message waits for company (\"0\": none)."
        }
        "p2p.handshake_timeout" => "Time allowed for the whole handshake with a peer.",
        "p2p.dial_timeout" => "Time allowed to set up a transport connection.",
        "p2p.fallback_delay" => {
            "When a peer has QUIC and MConnection addresses: how long a dial waits for QUIC\n\
             before also trying MConnection."
        }
        "p2p.pex" => {
            "Peer exchange: CometBFT's PEX (channel 0x00) with every peer, and full-URL PEX\n\
             (channel 0x7d, QUIC addresses included) with peers that list that channel."
        }
        "p2p.seed_mode" => {
            "Seed mode: answer PEX requests, then hang up; connect to peers only to collect\n\
             their addresses. Needs pex = true."
        }
        "p2p.libp2p.enabled" => {
            "CometBFT's lp2p (libp2p over QUIC, CometBFT v0.39+): served on the QUIC listener's\n\
             UDP port (or laddr's port over UDP without one). Needs the `lp2p` cargo feature."
        }
        "p2p.libp2p.bootstrap_peers" => {
            "lp2p peers to dial: [{ host = \"ip:port\", id = \"12D3KooW...\", persistent = true }]\n\
             (the id is `cometbft show-node-id --libp2p`)."
        }
        "p2p.peer_store_file" => {
            "The peer store, relative to the home directory (\"\": peers are not remembered)."
        }
        "mempool.broadcast" => "Gossip transactions.",
        "mempool.max_tx_bytes" => "Largest transaction accepted, bytes.",
        "mempool.cache_size" => {
            "Recently seen transactions remembered (duplicates are not forwarded again)."
        }
        "instrumentation.prometheus" => "Serve Prometheus metrics at /metrics.",
        "instrumentation.prometheus_listen_addr" => {
            "Where, host:port; \":26660\" means every IPv4 interface."
        }
        "instrumentation.namespace" => "Metric name prefix.",
        "instrumentation.per_peer_labels" => {
            "Add a peer_id label to per-peer metrics (high cardinality)."
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    fn key() -> NodeKey {
        NodeKey::from_seed([7; 32])
    }

    fn other_id() -> NodeId {
        NodeKey::from_seed([8; 32]).node_id()
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "/home/x/config/config.toml")
    }

    /// The one-line message of an error, checked to be one line and to name the file.
    fn message(e: &ConfigError) -> String {
        let msg = e.to_string();
        assert_eq!(msg.lines().count(), 1, "{msg}");
        msg
    }

    #[test]
    fn durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("300ms", Duration::from_millis(300)),
            ("3s", Duration::from_secs(3)),
            ("1m", Duration::from_secs(60)),
            ("2h", Duration::from_secs(7200)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            (".5ms", Duration::from_micros(500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("+1s", Duration::from_secs(1)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "3", "s", "1.2.3s", "-1s", "1d", "1 s", "1s ", ".s", "3sms", "1e3s"] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("600000000h").is_err(), "does not fit a u64 of nanoseconds");
    }

    #[test]
    fn empty_file_is_the_default() {
        let config = parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.file(), Some(Path::new("/home/x/config/config.toml")));
        assert_eq!(Config::default().file(), None);
    }

    #[test]
    fn to_toml_round_trips_and_comments_every_key() {
        let mut config = Config { moniker: "node \"one\"".to_owned(), ..Config::default() };
        config.p2p.persistent_peers = format!("{}@1.2.3.4:26656", other_id());
        config.mempool.broadcast = false;
        config.instrumentation.prometheus = true;
        let text = config.to_toml().unwrap();
        assert_eq!(parse(&text).unwrap(), config);
        let mut previous = "";
        for line in text.lines() {
            if !line.starts_with('#') && line.contains(" = ") {
                assert!(previous.starts_with('#'), "no comment above {line:?}");
            }
            previous = line;
        }
        // Every key of every section is written.
        for key in ["moniker", "laddr", "quic_laddr", "send_rate", "cache_size", "namespace"] {
            assert!(text.contains(&format!("\n{key} = ")), "{key} missing:\n{text}");
        }
    }

    #[test]
    fn unknown_keys_name_the_file_line_and_key() {
        let e = parse("moniker = \"a\"\n\n[p2p]\nladdr = \"tcp://0.0.0.0:1\"\nbogus = 1\n")
            .unwrap_err();
        let msg = message(&e);
        assert!(
            matches!(&e, ConfigError::Parse { key: Some(k), line: Some(5), .. } if k == "p2p.bogus"),
            "{e:?}"
        );
        assert!(
            msg.starts_with("/home/x/config/config.toml:5: p2p.bogus: unknown field `bogus`"),
            "{msg}"
        );

        let e = parse("bogus = true\n").unwrap_err();
        assert!(message(&e).contains(": bogus: unknown field"), "{e}");
        let e = parse("[nope]\n").unwrap_err();
        assert!(message(&e).contains("nope"), "{e}");
    }

    #[test]
    fn wrong_types_and_syntax_errors() {
        let e = parse("[p2p]\nmax_num_inbound_peers = \"x\"\n").unwrap_err();
        let msg = message(&e);
        assert!(msg.contains("config.toml:2: p2p.max_num_inbound_peers: invalid type"), "{msg}");
        let e = parse("[mempool]\nbroadcast = 1\n").unwrap_err();
        assert!(message(&e).contains("mempool.broadcast"), "{e}");
        let e = parse("moniker = [\n").unwrap_err();
        assert!(message(&e).starts_with("/home/x/config/config.toml:"), "{e}");
        let e = parse("moniker = \"a\"\nmoniker = \"b\"\n").unwrap_err();
        assert!(message(&e).contains("config.toml:2"), "{e}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let e = Config::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            message(&e).contains("config.toml: cannot read") && e.to_string().contains("p2pd init")
        );
        std::fs::write(&path, "[p2p]\nseeds = \"\"\n").unwrap();
        assert_eq!(Config::load(&path).unwrap(), Config::default());
    }

    #[test]
    #[cfg(all(feature = "mconn", feature = "quic"))]
    fn node_options_mapping() {
        let peer = other_id();
        let seed = NodeKey::from_seed([9; 32]).node_id();
        let text = format!(
            r#"
moniker = "m"
chain_id = "chain-1"
[p2p]
laddr = "tcp://127.0.0.1:26000"
quic_laddr = "udp://[::1]:26001"
external_address = "tcp://example.com:443"
persistent_peers = "{peer}@10.0.0.1:26656, quic://{peer}@10.0.0.1:26656,"
seeds = "mconn://{seed}@seed.example.com:26656"
unconditional_peer_ids = "{peer}"
max_num_inbound_peers = 7
max_num_outbound_peers = 3
send_rate = 0
recv_rate = 1000
max_packet_msg_payload_size = 4096
flush_throttle_timeout = "10ms"
handshake_timeout = "7s"
dial_timeout = "1500ms"
fallback_delay = "0"
peer_store_file = "data/store.redb"
[mempool]
max_tx_bytes = 2048
cache_size = 5
[instrumentation]
prometheus = true
prometheus_listen_addr = ":9100"
namespace = "p2p"
per_peer_labels = true
"#
        );
        let config = parse(&text).unwrap();
        let home = Path::new("/srv/p2pd");
        let o = config.node_options(home, key()).unwrap();
        assert_eq!(o.key.node_id(), key().node_id());
        assert_eq!(o.chain_id, "chain-1");
        assert_eq!(o.moniker, "m");
        assert_eq!(o.mconn_listen, Some("127.0.0.1:26000".parse().unwrap()));
        assert_eq!(o.quic_listen, Some("[::1]:26001".parse().unwrap()));
        assert_eq!(o.external_address.as_deref(), Some("example.com:443"));
        let persistent: Vec<String> =
            o.peer_manager.persistent_peers.iter().map(ToString::to_string).collect();
        assert_eq!(
            persistent,
            [format!("mconn://{peer}@10.0.0.1:26656"), format!("quic://{peer}@10.0.0.1:26656")]
        );
        let peers: Vec<String> = o.peers.iter().map(ToString::to_string).collect();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[..2], persistent[..]);
        assert_eq!(peers[2], format!("mconn://{seed}@seed.example.com:26656"));
        assert_eq!(o.peer_manager.max_connected, 10);
        assert_eq!(o.peer_manager.max_outgoing, 3);
        assert_eq!(o.mconn.send_rate, None);
        assert_eq!(o.mconn.recv_rate, Some(1000));
        assert_eq!(o.mconn.mconn.max_packet_payload, 4096);
        assert_eq!(o.mconn.max_flush_delay, Duration::from_millis(10));
        assert_eq!(o.router.handshake_timeout, Duration::from_secs(7));
        assert_eq!(o.router.dial_timeout, Duration::from_millis(1500));
        assert_eq!(o.router.fallback_delay, Duration::ZERO);
        assert_eq!(o.peer_store, Some(PathBuf::from("/srv/p2pd/data/store.redb")));
        assert_eq!(o.max_tx_bytes, 2048);
        assert_eq!(o.gossip.as_ref().map(|g| g.cache_size), Some(5));
        let metrics = o.metrics.unwrap();
        assert_eq!(metrics.listen, "0.0.0.0:9100".parse().unwrap());
        assert_eq!(metrics.namespace, "p2p");
        assert!(metrics.per_peer_labels);
    }

    #[test]
    fn defaults_map_to_options() {
        let home = Path::new("/srv/p2pd");
        let o = Config::default().node_options(home, key()).unwrap();
        #[cfg(feature = "mconn")]
        {
            assert_eq!(o.mconn_listen, Some("0.0.0.0:26656".parse().unwrap()));
            assert_eq!(o.mconn.send_rate, Some(5_120_000));
            assert_eq!(o.mconn.max_flush_delay, Duration::from_millis(100));
        }
        #[cfg(feature = "quic")]
        assert_eq!(o.quic_listen, Some("0.0.0.0:26656".parse().unwrap()));
        assert_eq!(o.external_address, None);
        assert!(o.peers.is_empty() && o.peer_manager.persistent_peers.is_empty());
        assert_eq!(o.peer_manager.max_connected, 50);
        assert_eq!(o.peer_manager.max_outgoing, 10);
        assert_eq!(o.router.handshake_timeout, Duration::from_secs(20));
        assert_eq!(o.peer_store, Some(PathBuf::from("/srv/p2pd/data/peers.redb")));
        assert!(o.gossip.is_some());
        assert!(o.metrics.is_none());
        assert_eq!(Config::default().node_key_path(home), home.join("config/node_key.json"));
    }

    #[test]
    fn switches_turn_things_off() {
        let mut config = Config::default();
        config.p2p.laddr = String::new();
        config.p2p.quic_laddr = String::new();
        config.p2p.peer_store_file = String::new();
        config.mempool.broadcast = false;
        let o = config.node_options(Path::new("/h"), key()).unwrap();
        #[cfg(feature = "mconn")]
        assert_eq!(o.mconn_listen, None);
        #[cfg(feature = "quic")]
        assert_eq!(o.quic_listen, None);
        assert_eq!(o.peer_store, None);
        assert!(o.gossip.is_none());
    }

    #[test]
    fn pex_and_seed_mode_map_to_the_pex_options() {
        let home = Path::new("/srv/p2pd");
        let o = Config::default().node_options(home, key()).unwrap();
        assert!(o.pex.as_ref().is_some_and(|p| !p.seed_mode), "PEX on by default, as CometBFT");
        let mut config = Config::default();
        config.p2p.seed_mode = true;
        let o = config.node_options(home, key()).unwrap();
        assert!(o.pex.as_ref().is_some_and(|p| p.seed_mode));
        config.p2p.pex = false;
        let e = config.node_options(home, key()).unwrap_err().to_string();
        assert!(e.contains("p2p.seed_mode") && e.contains("needs p2p.pex"), "{e}");
        config.p2p.seed_mode = false;
        assert!(config.node_options(home, key()).unwrap().pex.is_none());
    }

    /// `(section, key, value)` that must be refused, and a string the message must contain.
    #[test]
    fn invalid_values_name_the_key_and_value() {
        let own = key().node_id();
        let peer = other_id();
        let cases: Vec<(&str, &str, String, &str)> = vec![
            ("", "moniker", "\"\"".into(), "moniker: \"\""),
            ("", "moniker", "\"caf\u{e9}\"".into(), "moniker"),
            ("", "chain_id", "\" \"".into(), "chain_id"),
            ("", "log_format", "\"xml\"".into(), "log_format: \"xml\""),
            ("", "node_key_file", "\"\"".into(), "node_key_file"),
            ("p2p", "laddr", "\"udp://0.0.0.0:1\"".into(), "p2p.laddr: \"udp://0.0.0.0:1\""),
            ("p2p", "laddr", "\"tcp://0.0.0.0\"".into(), "p2p.laddr"),
            ("p2p", "laddr", "\"tcp://0.0.0.0:99999\"".into(), "p2p.laddr"),
            ("p2p", "quic_laddr", "\"tcp://0.0.0.0:1\"".into(), "p2p.quic_laddr"),
            ("p2p", "external_address", "\"1.2.3.4\"".into(), "p2p.external_address"),
            ("p2p", "external_address", "\"1.2.3.4:0\"".into(), "p2p.external_address"),
            ("p2p", "external_address", "\"bad host:1\"".into(), "p2p.external_address"),
            ("p2p", "persistent_peers", "\"abc@x\"".into(), "p2p.persistent_peers: \"abc@x\": "),
            (
                "p2p",
                "persistent_peers",
                format!("\"nope,{peer}@1.2.3.4:1\""),
                "p2p.persistent_peers: \"nope\"",
            ),
            ("p2p", "persistent_peers", format!("\"{own}@1.2.3.4:1\""), "own ID"),
            ("p2p", "persistent_peers", format!("\"memory:{peer}\""), "cannot dial memory"),
            ("p2p", "seeds", "\"x\"".into(), "p2p.seeds: \"x\""),
            ("p2p", "unconditional_peer_ids", "\"zz\"".into(), "p2p.unconditional_peer_ids"),
            ("p2p", "max_packet_msg_payload_size", "0".into(), "p2p.max_packet_msg_payload_size"),
            ("p2p", "flush_throttle_timeout", "\"fast\"".into(), "p2p.flush_throttle_timeout"),
            ("p2p", "handshake_timeout", "\"0s\"".into(), "more than zero"),
            ("p2p", "dial_timeout", "\"3\"".into(), "p2p.dial_timeout: \"3\""),
            ("p2p", "fallback_delay", "\"1x\"".into(), "p2p.fallback_delay"),
            ("mempool", "max_tx_bytes", "0".into(), "mempool.max_tx_bytes"),
            ("mempool", "cache_size", "0".into(), "mempool.cache_size"),
            (
                "instrumentation",
                "prometheus_listen_addr",
                "\":http\"".into(),
                "instrumentation.prometheus_listen_addr",
            ),
            ("instrumentation", "namespace", "\"a-b\"".into(), "instrumentation.namespace"),
        ];
        for (section, name, value, needle) in cases {
            let text = if section.is_empty() {
                format!("{name} = {value}\n")
            } else {
                format!("[{section}]\n{name} = {value}\n")
            };
            let config = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let e = config.node_options(Path::new("/h"), key()).unwrap_err();
            let msg = message(&e);
            assert!(msg.starts_with("/home/x/config/config.toml: "), "{msg}");
            assert!(msg.contains(needle), "{text}: {msg}");
        }
    }

    #[test]
    fn built_in_configuration_errors_say_so() {
        let mut config = Config::default();
        config.p2p.seeds = "x".to_owned();
        let msg = config.node_options(Path::new("/h"), key()).unwrap_err().to_string();
        assert!(msg.starts_with(BUILT_IN), "{msg}");
        let msg = config
            .with_file("/new/config.toml")
            .node_options(Path::new("/h"), key())
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("/new/config.toml: p2p.seeds"), "{msg}");
    }

    #[test]
    fn listen_addresses_accept_bare_host_port_and_names() {
        let mut config = Config::default();
        config.p2p.laddr = "127.0.0.1:5".to_owned();
        config.p2p.quic_laddr = "quic://localhost:0".to_owned();
        if cfg!(feature = "mconn") {
            assert_eq!(config.mconn_listen_addr().unwrap(), Some("127.0.0.1:5".parse().unwrap()));
        }
        if cfg!(feature = "quic") {
            let quic = config.quic_listen_addr().unwrap().unwrap();
            assert!(quic.ip().is_loopback() && quic.port() == 0, "{quic}");
        }
        config.instrumentation.prometheus_listen_addr = "127.0.0.1:9000".to_owned();
        assert_eq!(config.metrics_listen_addr().unwrap(), "127.0.0.1:9000".parse().unwrap());
        config.p2p.external_address = "[::1]:80".to_owned();
        let (host, port) = config.external_address().unwrap().unwrap();
        assert_eq!((host.to_string().as_str(), port), ("::1", 80));
    }

    #[test]
    #[cfg(not(feature = "quic"))]
    fn quic_address_without_the_feature() {
        let e = parse("[p2p]\nquic_laddr = \"udp://0.0.0.0:1\"\n")
            .unwrap()
            .node_options(Path::new("/h"), key())
            .unwrap_err();
        assert!(matches!(e, ConfigError::MissingFeature { feature: "quic", .. }), "{e:?}");
        assert!(message(&e).contains("p2p.quic_laddr"));
        assert_eq!(Config::default().p2p.quic_laddr, "");
        let peer = other_id();
        let e = parse(&format!("[p2p]\npersistent_peers = \"quic://{peer}@1.2.3.4:5\"\n"))
            .unwrap()
            .node_options(Path::new("/h"), key())
            .unwrap_err();
        assert!(matches!(e, ConfigError::MissingFeature { feature: "quic", .. }), "{e:?}");
    }

    #[test]
    #[cfg(not(feature = "mconn"))]
    fn mconn_address_without_the_feature() {
        let e = parse("[p2p]\nladdr = \"tcp://0.0.0.0:1\"\n")
            .unwrap()
            .node_options(Path::new("/h"), key())
            .unwrap_err();
        assert!(matches!(e, ConfigError::MissingFeature { feature: "mconn", .. }), "{e:?}");
        assert!(message(&e).contains("p2p.laddr") && message(&e).contains("`mconn`"));
        assert_eq!(Config::default().p2p.laddr, "");
    }

    #[test]
    fn node_key_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        let config = Config::default();
        let e = config.load_node_key(dir.path()).unwrap_err();
        assert!(message(&e).contains("node_key.json"), "{e}");
        std::fs::write(config.node_key_path(dir.path()), "{}").unwrap();
        let e = config.load_node_key(dir.path()).unwrap_err();
        assert!(message(&e).contains("node_key.json"), "{e}");
        key().save(config.node_key_path(dir.path())).unwrap();
        assert_eq!(config.load_node_key(dir.path()).unwrap().node_id(), key().node_id());
    }

    #[test]
    #[cfg(all(feature = "lp2p", feature = "quic", feature = "mconn"))]
    fn libp2p_section_in_cometbft_form() {
        let peer = NodeKey::from_seed([3; 32]).public_key();
        let peer_id = p2p::libp2p_peer_id(&peer);
        let other = p2p::libp2p_peer_id(&NodeKey::from_seed([4; 32]).public_key());
        // CometBFT's keys, its scaler and limits tables included (accepted, not used).
        let text = format!(
            "[p2p]\nladdr = \"tcp://127.0.0.1:26656\"\nquic_laddr = \"\"\n\n[p2p.libp2p]\nenabled = true\n\
             bootstrap_peers = [\n  {{ host = \"10.0.0.1:26656\", id = \"{peer_id}\", persistent = true }},\n\
             {{ host = \"tcp://seed.example.org:26656\", id = \"{other}\", private = true }},\n]\n\n\
             [p2p.libp2p.scaler]\nmin_workers = 4\nmax_workers = 32\n\n\
             [[p2p.libp2p.scaler.overrides]]\nreactor = \"MEMPOOL\"\nmin_workers = 8\n\n\
             [p2p.libp2p.limits]\nmode = \"default\"\n"
        );
        let config = parse(&text).unwrap();
        let options = config.node_options(Path::new("/h"), key()).unwrap();
        assert!(options.lp2p.is_some());
        // No QUIC listener: lp2p takes laddr's port over UDP, as CometBFT does.
        assert_eq!(options.lp2p_listen, Some("127.0.0.1:26656".parse().unwrap()));
        let persistent: Vec<String> =
            options.peer_manager.persistent_peers.iter().map(ToString::to_string).collect();
        assert_eq!(persistent, [format!("lp2p://{peer_id}@10.0.0.1:26656")]);
        assert!(
            options
                .peers
                .iter()
                .any(|a| a.to_string() == format!("lp2p://{other}@seed.example.org:26656"))
        );
        // It writes back and reads again.
        assert_eq!(parse(&config.to_toml().unwrap()).unwrap(), config);

        // A hex ID, an unknown key, an lp2p URL in persistent_peers.
        let hex = parse(&format!(
            "[p2p.libp2p]\nbootstrap_peers = [{{ host = \"1.2.3.4:5\", id = \"{}\" }}]\n",
            NodeId::from_public_key(&peer)
        ))
        .unwrap();
        let e = hex.node_options(Path::new("/h"), key()).unwrap_err();
        assert!(message(&e).contains("p2p.libp2p.bootstrap_peers"), "{e}");
        assert!(message(&e).contains("show-node-id --libp2p"), "{e}");
        let e = parse("[p2p.libp2p]\nenable = true\n").unwrap_err();
        assert!(message(&e).contains("enable"), "{e}");
        let url =
            parse(&format!("[p2p]\npersistent_peers = \"lp2p://{peer_id}@1.2.3.4:5\"\n")).unwrap();
        let options = url.node_options(Path::new("/h"), key()).unwrap();
        assert_eq!(options.peer_manager.persistent_peers.len(), 1);
    }
}
