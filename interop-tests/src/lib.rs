//! Harness for interop tests against real Go CometBFT / Tendermint processes.
//!
//! [`GoNode::start`] creates a fresh home directory, runs `<bin> init`, rewrites the
//! generated `config/config.toml` for loopback use (free ports on 127.0.0.1, lenient
//! address book, no duplicate-IP filter, PEX off by default, no Prometheus / pprof), starts
//! `<bin> start --proxy_app=kvstore` and waits until its RPC answers. The node is killed when
//! the [`GoNode`] is dropped; its home directory is removed, unless the thread is panicking,
//! in which case the directory is kept and the tail of the node's log is printed.
//!
//! The binaries are installed by `interop-tests/scripts/install-go-nodes.sh` into
//! `<workspace>/.cache/go-bin/`; a missing binary is an error, never a silent skip.
//!
//! The RPC helpers speak plain HTTP/1.1 over [`std::net::TcpStream`] to the node's URI
//! (GET) RPC endpoints and return the JSON `result` object.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use tempfile::TempDir;

/// What to do when a Go binary is missing.
pub const INSTALL_HINT: &str = "run interop-tests/scripts/install-go-nodes.sh";

/// How long [`GoNode::start`] waits for the node's RPC `/status` to answer.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Interval between two polls in [`wait_for`] and while waiting for start-up.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Timeout for connecting to, writing to and reading from a node's RPC server.
const RPC_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Log lines included in the error when a node fails to start.
const START_ERROR_LOG_LINES: usize = 50;

/// Log lines printed when a node is dropped during a panic.
const PANIC_LOG_LINES: usize = 80;

/// How often [`GoNode::start`] retries with new ports when a port was taken in the meantime.
const START_ATTEMPTS: usize = 3;

/// A pinned Go node implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoBinary {
    /// CometBFT v0.38.25 (`cometbft`), classic comet-p2p (SecretConnection + MConnection).
    Cometbft038,
    /// Tendermint v0.34.24 (`tendermint`), the last tendermint/tendermint v0.34 release.
    Tendermint034,
    /// CometBFT v0.40.0 (`cometbft`), whose experimental `lp2p` transport (libp2p over QUIC,
    /// [`GoNodeConfig::lp2p`]) replaces comet-p2p when enabled.
    Cometbft040,
}

impl GoBinary {
    /// The executable's name (`cometbft` or `tendermint`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Cometbft038 | Self::Cometbft040 => "cometbft",
            Self::Tendermint034 => "tendermint",
        }
    }

    /// The pinned release (its tag without the leading `v`).
    pub fn version(self) -> &'static str {
        match self {
            Self::Cometbft038 => "0.38.25",
            Self::Tendermint034 => "0.34.24",
            Self::Cometbft040 => "0.40.0",
        }
    }

    /// The version `<bin> version` and `/status` report: the release, except for v0.40.0,
    /// whose tag did not bump the version constant (it reports 0.39.0).
    pub fn reported_version(self) -> &'static str {
        match self {
            Self::Cometbft040 => "0.39.0",
            other => other.version(),
        }
    }

    /// Environment variable that overrides the binary's path.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Cometbft038 => "COMETBFT_038_BIN",
            Self::Tendermint034 => "TENDERMINT_034_BIN",
            Self::Cometbft040 => "COMETBFT_040_BIN",
        }
    }

    /// Where the install script puts the binary:
    /// `<workspace>/.cache/go-bin/<name>-v<version>/<name>`.
    pub fn default_path(self) -> PathBuf {
        workspace_root()
            .join(".cache")
            .join("go-bin")
            .join(format!("{}-v{}", self.name(), self.version()))
            .join(self.name())
    }

    /// The binary to run: the path in [`GoBinary::env_var`] if that variable is set and not
    /// empty, else [`GoBinary::default_path`].
    ///
    /// Fails (with the hint to run the install script) if the file does not exist.
    pub fn path(self) -> anyhow::Result<PathBuf> {
        let (path, origin) = match std::env::var_os(self.env_var()) {
            Some(p) if !p.is_empty() => (PathBuf::from(p), format!("${}", self.env_var())),
            _ => (self.default_path(), "the default location".to_owned()),
        };
        if !path.is_file() {
            bail!(
                "{} v{} not found at {} ({origin}): {INSTALL_HINT}",
                self.name(),
                self.version(),
                path.display(),
            );
        }
        Ok(path)
    }
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize().unwrap_or(dir)
}

/// How to configure a [`GoNode`] before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoNodeConfig {
    /// Which implementation to run.
    pub binary: GoBinary,
    /// The node's moniker (top-level `moniker` in `config.toml`).
    pub moniker: String,
    /// `[p2p] persistent_peers`, as `<hex id>@<host>:<port>` strings.
    pub persistent_peers: Vec<String>,
    /// `[p2p] pex` (default `false`, for deterministic topologies).
    pub pex: bool,
    /// `[p2p] seed_mode` (default `false`).
    pub seed_mode: bool,
    /// Overrides `chain_id` in `config/genesis.json` (applied after [`GoNodeConfig::genesis`]).
    pub chain_id: Option<String>,
    /// A `genesis.json` to copy over the generated one, e.g. another node's
    /// `home().join("config/genesis.json")` so that both are on the same chain (this node is
    /// then not a validator, unless its key is in that genesis).
    pub genesis: Option<PathBuf>,
    /// Extra `[p2p]` settings: `(key, TOML literal)`, e.g.
    /// `("flush_throttle_timeout".into(), "\"10ms\"".into())`. Applied after all other edits.
    pub extra_p2p: Vec<(String, String)>,
    /// Extra settings in any section: `(section, key, TOML literal)`; section `""` is the
    /// top level, e.g. `("mempool".into(), "size".into(), "100".into())`. Applied last.
    pub extra_config: Vec<(String, String, String)>,
    /// `--log_level` (default `p2p:debug,*:info`; both v0.38 and v0.34 accept this syntax).
    pub log_level: String,
    /// `[consensus] create_empty_blocks` (default `true`).
    pub create_empty_blocks: bool,
    /// `[consensus] timeout_commit` (default: the Go default, 1 s).
    pub timeout_commit: Option<Duration>,
    /// `[p2p.libp2p] enabled` (CometBFT v0.40.0 only): the node speaks lp2p (QUIC on UDP
    /// [`GoNode::p2p_port`]) instead of comet-p2p.
    pub lp2p: bool,
    /// `[p2p.libp2p] bootstrap_peers`, as `(host:port, 12D3KooW… peer ID, persistent)`.
    pub bootstrap_peers: Vec<(String, String, bool)>,
}

impl Default for GoNodeConfig {
    fn default() -> Self {
        Self {
            binary: GoBinary::Cometbft038,
            moniker: "go-node".to_owned(),
            persistent_peers: Vec::new(),
            pex: false,
            seed_mode: false,
            chain_id: None,
            genesis: None,
            extra_p2p: Vec::new(),
            extra_config: Vec::new(),
            log_level: "p2p:debug,*:info".to_owned(),
            create_empty_blocks: true,
            timeout_commit: None,
            lp2p: false,
            bootstrap_peers: Vec::new(),
        }
    }
}

impl GoNodeConfig {
    /// The default configuration for `binary`.
    pub fn new(binary: GoBinary) -> Self {
        Self { binary, ..Self::default() }
    }
}

/// A running Go node with the built-in `kvstore` app, listening on 127.0.0.1.
///
/// Killed (SIGKILL) and waited for on drop. Its home directory is deleted on drop, except
/// while the thread is panicking: then it is kept and its log tail is printed to stderr.
#[derive(Debug)]
pub struct GoNode {
    config: GoNodeConfig,
    binary_path: PathBuf,
    /// `None` once the directory has been kept or removed.
    home_dir: Option<TempDir>,
    home: PathBuf,
    child: Option<Child>,
    p2p_port: u16,
    rpc_port: u16,
    node_id: String,
    /// `show-node-id --libp2p` (v0.40.0 only).
    libp2p_peer_id: Option<String>,
    chain_id: String,
}

impl GoNode {
    /// Initialises a new home directory, configures and starts the node, and waits (at most
    /// [`STARTUP_TIMEOUT`]) until its RPC `/status` answers.
    ///
    /// Checks that the node ID reported by `/status` equals the one printed by
    /// `<bin> show-node-id`. If the process exits early or does not answer in time, the
    /// error contains the last 50 lines of its log.
    pub fn start(config: GoNodeConfig) -> anyhow::Result<Self> {
        let binary_path = config.binary.path()?;
        let home_dir = tempfile::Builder::new()
            .prefix(&format!("{}-{}-", config.binary.name(), sanitize(&config.moniker)))
            .tempdir()
            .context("creating the node's home directory")?;
        let home = home_dir.path().to_path_buf();

        run_to_completion(&binary_path, &["init", "--home"], &home)?;
        write_genesis(&home, &config)?;
        let expected_id =
            run_to_completion(&binary_path, &["show-node-id", "--home"], &home)?.trim().to_owned();
        let libp2p_peer_id = (config.binary == GoBinary::Cometbft040)
            .then(|| {
                run_to_completion(&binary_path, &["show-node-id", "--libp2p", "--home"], &home)
            })
            .transpose()?
            .map(|id| id.trim().to_owned());

        let mut node = Self {
            config,
            binary_path,
            home_dir: Some(home_dir),
            home,
            child: None,
            p2p_port: 0,
            rpc_port: 0,
            node_id: String::new(),
            libp2p_peer_id,
            chain_id: String::new(),
        };

        let mut attempt = 0;
        loop {
            attempt += 1;
            node.p2p_port = free_port()?;
            node.rpc_port = free_port()?;
            node.write_config()?;
            match node.spawn_and_wait() {
                Ok(()) => break,
                Err(e)
                    if attempt < START_ATTEMPTS
                        && node.log().contains("address already in use") =>
                {
                    eprintln!("{}: port taken, retrying with new ports: {e:#}", node.describe());
                    node.kill_child();
                    // Keep the previous attempt's log, but start the next one on a clean file.
                    let old = node.log_path().with_extension(format!("log.{attempt}"));
                    fs::rename(node.log_path(), old).context("moving the node log aside")?;
                }
                Err(e) => return Err(e),
            }
        }

        let status = node.status()?;
        let id = str_at(&status, &["node_info", "id"])?.to_owned();
        if id != expected_id {
            bail!(
                "{}: /status reports node id {id}, but show-node-id printed {expected_id}",
                node.describe()
            );
        }
        node.node_id = id;
        node.chain_id = str_at(&status, &["node_info", "network"])?.to_owned();
        Ok(node)
    }

    /// The configuration the node was started with.
    pub fn config(&self) -> &GoNodeConfig {
        &self.config
    }

    /// Which implementation runs.
    pub fn binary(&self) -> GoBinary {
        self.config.binary
    }

    /// The path of the executable that runs.
    pub fn binary_path(&self) -> &Path {
        &self.binary_path
    }

    /// The node's moniker.
    pub fn moniker(&self) -> &str {
        &self.config.moniker
    }

    /// The node's ID (40 lowercase hex characters), as reported by `/status`.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's libp2p peer ID (`12D3KooW…`, from `show-node-id --libp2p`): its ID on lp2p
    /// (v0.40.0 only).
    pub fn libp2p_peer_id(&self) -> Option<&str> {
        self.libp2p_peer_id.as_deref()
    }

    /// `lp2p://<peer id>@127.0.0.1:<port>`, the address a Rust lp2p transport dials (v0.40.0
    /// only; the node listens there only with [`GoNodeConfig::lp2p`]).
    pub fn lp2p_address(&self) -> Option<String> {
        let id = self.libp2p_peer_id.as_deref()?;
        Some(format!("lp2p://{id}@127.0.0.1:{}", self.p2p_port))
    }

    /// The port of the P2P listener on 127.0.0.1.
    pub fn p2p_port(&self) -> u16 {
        self.p2p_port
    }

    /// The P2P listen address as a socket address.
    pub fn p2p_socket_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.p2p_port))
    }

    /// `<node id>@127.0.0.1:<p2p port>`, the form `persistent_peers` uses.
    pub fn p2p_address(&self) -> String {
        format!("{}@127.0.0.1:{}", self.node_id, self.p2p_port)
    }

    /// The port of the RPC server on 127.0.0.1.
    pub fn rpc_port(&self) -> u16 {
        self.rpc_port
    }

    /// `http://127.0.0.1:<rpc port>`.
    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    /// The chain ID (the `network` the node reports in `/status`).
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// The node's home directory (`config/`, `data/`, `node.log`).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `<home>/node.log`: the node's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.home.join("node.log")
    }

    /// The whole log so far (invalid UTF-8 replaced).
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines.get(lines.len().saturating_sub(n)..).unwrap_or_default().join("\n")
    }

    /// How many log lines contain `needle` (e.g. `"Stopping peer for error"`).
    pub fn count_log_matches(&self, needle: &str) -> usize {
        self.log().lines().filter(|line| line.contains(needle)).count()
    }

    /// Log lines that would mean the node punished peer `peer_id` (stopped it for an error,
    /// banned it, marked it bad) or saw a PEX protocol violation (an unsolicited address list,
    /// a request too soon) from anybody.
    pub fn punishments_of(&self, peer_id: &str) -> Vec<String> {
        let about_peer = ["Stopping peer for error", "blacklist", "MarkBad"];
        let anywhere = ["unsolicited", "too soon"];
        (self.log().lines())
            .filter(|l| {
                anywhere.iter().any(|n| l.contains(n))
                    || (l.contains(peer_id)
                        && (about_peer.iter().any(|n| l.contains(n))
                            || l.to_lowercase().contains("ban")))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The OS process ID, while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process (SIGKILL) and waits for it. The home directory stays; see
    /// [`GoNode::restart`].
    pub fn stop(&mut self) {
        self.kill_child();
    }

    /// Stops the node if it runs, starts it again on the same home directory and ports,
    /// and waits until its RPC answers. The log is appended to.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill_child();
        self.spawn_and_wait()
    }

    /// GETs `path_and_query` (e.g. `/status` or `/abci_query?data=0x6b`) from the RPC server
    /// and returns the JSON-RPC `result`; a JSON-RPC `error` becomes an `Err`.
    pub fn rpc(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let path = if path_and_query.starts_with('/') {
            path_and_query.to_owned()
        } else {
            format!("/{path_and_query}")
        };
        let (status, body) = http_get(self.rpc_port, &path)
            .with_context(|| format!("{}: RPC GET {path}", self.describe()))?;
        let mut json: Value = serde_json::from_slice(&body).with_context(|| {
            format!(
                "{}: RPC GET {path}: HTTP {status}, body is not JSON: {}",
                self.describe(),
                String::from_utf8_lossy(&body)
            )
        })?;
        if let Some(error) = json.get("error").filter(|e| !e.is_null()) {
            bail!("{}: RPC GET {path}: HTTP {status}, error {error}", self.describe());
        }
        match json.as_object_mut().and_then(|o| o.remove("result")) {
            Some(result) => Ok(result),
            None => bail!("{}: RPC GET {path}: HTTP {status}, no result: {json}", self.describe()),
        }
    }

    /// `/status`.
    pub fn status(&self) -> anyhow::Result<Value> {
        self.rpc("/status")
    }

    /// `/net_info`.
    pub fn net_info(&self) -> anyhow::Result<Value> {
        self.rpc("/net_info")
    }

    /// The connected peers from `/net_info`, as `(node id, moniker)`.
    pub fn peers(&self) -> anyhow::Result<Vec<(String, String)>> {
        let info = self.net_info()?;
        let Some(peers) = info.get("peers").and_then(Value::as_array) else {
            return Ok(Vec::new());
        };
        peers
            .iter()
            .map(|p| {
                let id = str_at(p, &["node_info", "id"])?.to_owned();
                let moniker = str_at(p, &["node_info", "moniker"])?.to_owned();
                Ok((id, moniker))
            })
            .collect()
    }

    /// Whether a peer with this node ID is connected (per `/net_info`).
    pub fn has_peer(&self, node_id: &str) -> anyhow::Result<bool> {
        Ok(self.peers()?.iter().any(|(id, _)| id == node_id))
    }

    /// Waits until a peer with this node ID is connected.
    pub fn wait_for_peer(&self, node_id: &str, timeout: Duration) -> anyhow::Result<()> {
        wait_for(timeout, &format!("{} to have peer {node_id}", self.describe()), || {
            self.has_peer(node_id)
        })
    }

    /// `/broadcast_tx_sync?tx=0x<hex>`: submits `tx` to the mempool and returns the result
    /// (`code`, `data`, `log`, `hash`). Fails if CheckTx returns a non-zero code.
    pub fn broadcast_tx_sync(&self, tx: &[u8]) -> anyhow::Result<Value> {
        let result = self.rpc(&format!("/broadcast_tx_sync?tx=0x{}", hex::encode(tx)))?;
        let code = result.get("code").and_then(Value::as_u64).unwrap_or(0);
        if code != 0 {
            bail!("{}: CheckTx rejected the tx with code {code}: {result}", self.describe());
        }
        Ok(result)
    }

    /// The transactions in the mempool (`/unconfirmed_txs?limit=100`; Go caps at 100).
    pub fn unconfirmed_txs(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let result = self.rpc("/unconfirmed_txs?limit=100")?;
        let Some(txs) = result.get("txs").and_then(Value::as_array) else {
            return Ok(Vec::new());
        };
        txs.iter()
            .map(|tx| {
                let s = tx.as_str().ok_or_else(|| anyhow!("tx is not a string: {tx}"))?;
                BASE64.decode(s).with_context(|| format!("tx is not base64: {s}"))
            })
            .collect()
    }

    /// `/num_unconfirmed_txs` → `n_txs`.
    pub fn num_unconfirmed_txs(&self) -> anyhow::Result<u64> {
        u64_at(&self.rpc("/num_unconfirmed_txs")?, &["n_txs"])
    }

    /// The latest committed height (`/status` → `sync_info.latest_block_height`).
    pub fn latest_height(&self) -> anyhow::Result<u64> {
        u64_at(&self.status()?, &["sync_info", "latest_block_height"])
    }

    /// Waits until the latest committed height is at least `height`.
    pub fn wait_for_height(&self, height: u64, timeout: Duration) -> anyhow::Result<()> {
        wait_for(timeout, &format!("{} to reach height {height}", self.describe()), || {
            Ok(self.latest_height()? >= height)
        })
    }

    /// The kvstore value stored under `key` (`/abci_query?data=0x<hex key>`), or `None` if
    /// the key is not set.
    pub fn abci_query_value(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let result = self.rpc(&format!("/abci_query?data=0x{}", hex::encode(key)))?;
        let response = result
            .get("response")
            .ok_or_else(|| anyhow!("abci_query without response: {result}"))?;
        let code = response.get("code").and_then(Value::as_u64).unwrap_or(0);
        if code != 0 {
            bail!("{}: abci_query failed with code {code}: {response}", self.describe());
        }
        match response.get("value").and_then(Value::as_str) {
            None => Ok(None),
            Some(v) => BASE64.decode(v).map(Some).with_context(|| format!("value not base64: {v}")),
        }
    }

    /// `"<name> v<version> '<moniker>'"`, for messages.
    fn describe(&self) -> String {
        format!(
            "{} v{} '{}'",
            self.config.binary.name(),
            self.config.binary.version(),
            self.config.moniker
        )
    }

    /// Rewrites `config/config.toml` from the configuration and the chosen ports.
    fn write_config(&self) -> anyhow::Result<()> {
        let path = self.home.join("config").join("config.toml");
        let mut text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let c = &self.config;
        let mut set = |section: &str, key: &str, value: String| {
            text = set_toml_value(&text, section, key, &value);
        };
        set("", "moniker", toml_string(&c.moniker));
        set("rpc", "laddr", toml_string(&format!("tcp://127.0.0.1:{}", self.rpc_port)));
        set("rpc", "pprof_laddr", toml_string(""));
        set("p2p", "laddr", toml_string(&format!("tcp://127.0.0.1:{}", self.p2p_port)));
        set("p2p", "external_address", toml_string(&format!("127.0.0.1:{}", self.p2p_port)));
        set("p2p", "addr_book_strict", "false".to_owned());
        set("p2p", "allow_duplicate_ip", "true".to_owned());
        set("p2p", "pex", c.pex.to_string());
        set("p2p", "seed_mode", c.seed_mode.to_string());
        set("p2p", "persistent_peers", toml_string(&c.persistent_peers.join(",")));
        set("consensus", "create_empty_blocks", c.create_empty_blocks.to_string());
        if let Some(t) = c.timeout_commit {
            set("consensus", "timeout_commit", toml_string(&go_duration(t)));
        }
        set("instrumentation", "prometheus", "false".to_owned());
        if c.lp2p {
            set("p2p.libp2p", "enabled", "true".to_owned());
            // `cometbft init` writes this key inside a comment (a template bug), so it is
            // always added here.
            let peers: Vec<String> = c
                .bootstrap_peers
                .iter()
                .map(|(host, id, persistent)| {
                    format!(
                        "{{ host = {}, id = {}, persistent = {persistent} }}",
                        toml_string(host),
                        toml_string(id)
                    )
                })
                .collect();
            set("p2p.libp2p", "bootstrap_peers", format!("[{}]", peers.join(", ")));
        }
        for (key, value) in &c.extra_p2p {
            set("p2p", key, value.clone());
        }
        for (section, key, value) in &c.extra_config {
            set(section, key, value.clone());
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Starts `<bin> start` with output appended to `node.log`, then waits for `/status`.
    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let child = Command::new(&self.binary_path)
            .arg("start")
            .arg("--home")
            .arg(&self.home)
            .arg("--proxy_app=kvstore")
            .arg("--log_level")
            .arg(&self.config.log_level)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {} start", self.binary_path.display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(exit) = child.try_wait().context("polling the node process")?
            {
                self.child = None;
                bail!(
                    "{} exited during start-up ({exit}); last {START_ERROR_LOG_LINES} log lines:\n{}",
                    self.describe(),
                    self.log_tail(START_ERROR_LOG_LINES)
                );
            }
            if self.status().is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill_child();
                bail!(
                    "{}: RPC /status did not answer within {STARTUP_TIMEOUT:?}; last \
                     {START_ERROR_LOG_LINES} log lines:\n{}",
                    self.describe(),
                    self.log_tail(START_ERROR_LOG_LINES)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if the process has already exited; wait() reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for GoNode {
    fn drop(&mut self) {
        self.kill_child();
        let Some(home) = self.home_dir.take() else { return };
        if thread::panicking() {
            let tail = self.log_tail(PANIC_LOG_LINES);
            let path = home.keep();
            eprintln!(
                "==> {}: test panicked; keeping home {}\n==> log {} (last {PANIC_LOG_LINES} lines):\n{tail}\n==> end of log of {}",
                self.describe(),
                path.display(),
                path.join("node.log").display(),
                self.describe(),
            );
        }
        // Otherwise `home` is dropped here, which removes the directory.
    }
}

/// Polls `f` every [`POLL_INTERVAL`] until it returns `Ok(true)`.
///
/// Fails with a message naming `what` if `timeout` passes first; an `Err` from `f` is
/// returned at once (map transient errors to `Ok(false)` to keep polling). Polling is the
/// only option here: the Go node's RPC offers no event to await.
pub fn wait_for(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f().with_context(|| format!("while waiting for {what}"))? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// A port on 127.0.0.1 that was free a moment ago and has not been handed out before by
/// this process (binds port 0, reads the port, closes the listener).
pub fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner).insert(port) {
            return Ok(port);
        }
    }
    bail!("no fresh free port found on 127.0.0.1")
}

/// Runs `<bin> <args...> <home>` to completion and returns its stdout; fails with its
/// output if it exits non-zero.
fn run_to_completion(bin: &Path, args: &[&str], home: &Path) -> anyhow::Result<String> {
    let output = Command::new(bin)
        .args(args)
        .arg(home)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} {}", bin.display(), args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{} {} {} failed ({}):\n{}{}",
            bin.display(),
            args.join(" "),
            home.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Applies [`GoNodeConfig::genesis`] and [`GoNodeConfig::chain_id`] to `config/genesis.json`.
fn write_genesis(home: &Path, config: &GoNodeConfig) -> anyhow::Result<()> {
    let path = home.join("config").join("genesis.json");
    if let Some(src) = &config.genesis {
        fs::copy(src, &path)
            .with_context(|| format!("copying {} to {}", src.display(), path.display()))?;
    }
    if let Some(chain_id) = &config.chain_id {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut genesis: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let obj = genesis
            .as_object_mut()
            .ok_or_else(|| anyhow!("{} is not a JSON object", path.display()))?;
        obj.insert("chain_id".to_owned(), Value::String(chain_id.clone()));
        let out = serde_json::to_string_pretty(&genesis)?;
        fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Sets `key = value` (a TOML literal) in `[section]` of a TOML document, replacing an
/// existing assignment of `key` in that section only (`""` = top level, before any header).
/// A missing key is added right after the section header; a missing section is appended.
pub fn set_toml_value(text: &str, section: &str, key: &str, value: &str) -> String {
    let new_line = format!("{key} = {value}");
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    // Index in `out` after which a missing key would be inserted.
    let mut insert_at: Option<usize> = section.is_empty().then_some(0);
    let mut done = false;
    for line in text.lines() {
        if let Some(name) = toml_header(line) {
            current = name.to_owned();
            out.push(line.to_owned());
            if !done && current == section {
                insert_at = Some(out.len());
            }
            continue;
        }
        if !done && current == section && assigns_key(line, key) {
            out.push(new_line.clone());
            done = true;
            continue;
        }
        out.push(line.to_owned());
    }
    if !done {
        match insert_at {
            Some(i) if i <= out.len() => out.insert(i, new_line),
            _ => {
                out.push(String::new());
                out.push(format!("[{section}]"));
                out.push(new_line);
            }
        }
    }
    let mut joined = out.join("\n");
    joined.push('\n');
    joined
}

/// The table name if `line` is a `[table]` header (not an `[[array]]` header).
fn toml_header(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('[')?;
    if rest.starts_with('[') {
        return None;
    }
    let end = rest.find(']')?;
    rest.get(..end).map(str::trim)
}

/// Whether `line` is an assignment `key = ...` (the exact key, not a longer one).
fn assigns_key(line: &str, key: &str) -> bool {
    line.trim_start().strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// A TOML basic string (JSON string escapes are valid TOML escapes).
fn toml_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A Go `time.ParseDuration` string.
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// Keeps ASCII alphanumerics, `-` and `_` (for the temp dir name).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect()
}

/// The string at a JSON path.
fn str_at<'a>(value: &'a Value, path: &[&str]) -> anyhow::Result<&'a str> {
    let mut v = value;
    for key in path {
        v = v.get(key).ok_or_else(|| anyhow!("missing {} in {value}", path.join(".")))?;
    }
    v.as_str().ok_or_else(|| anyhow!("{} is not a string in {value}", path.join(".")))
}

/// A Go int64/uint64 at a JSON path (a quoted decimal in Tendermint's JSON; plain numbers
/// are accepted too).
fn u64_at(value: &Value, path: &[&str]) -> anyhow::Result<u64> {
    let mut v = value;
    for key in path {
        v = v.get(key).ok_or_else(|| anyhow!("missing {} in {value}", path.join(".")))?;
    }
    match v {
        Value::String(s) => s.parse().with_context(|| format!("{} = {s:?}", path.join("."))),
        Value::Number(n) => n.as_u64().ok_or_else(|| anyhow!("{} = {n}", path.join("."))),
        other => bail!("{} is not an integer: {other}", path.join(".")),
    }
}

/// A minimal HTTP/1.1 GET to 127.0.0.1:`port` with `Connection: close`; returns the status
/// code and the body (chunked transfer encoding is decoded).
fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, RPC_IO_TIMEOUT)?;
    stream.set_read_timeout(Some(RPC_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(RPC_IO_TIMEOUT))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_http_response(&response)
}

/// Splits an HTTP/1.x response into status code and (de-chunked) body.
fn parse_http_response(response: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete HTTP response ({} bytes)", response.len()))?;
    let head = String::from_utf8_lossy(response.get(..split).unwrap_or_default());
    let body = response.get(split + 4..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line {status_line:?}"))?;
    let mut chunked = false;
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().context("bad Content-Length")?);
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(len) = content_length {
        body.get(..len)
            .ok_or_else(|| anyhow!("body shorter ({}) than Content-Length {len}", body.len()))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

/// Decodes a `Transfer-Encoding: chunked` body (trailers are ignored).
fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size line"))?;
        let size_line =
            String::from_utf8_lossy(body.get(..line_end).unwrap_or_default()).into_owned();
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_hex:?}"))?;
        body = body.get(line_end + 2..).unwrap_or_default();
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or_else(|| anyhow!("truncated chunk"))?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).ok_or_else(|| anyhow!("truncated chunk terminator"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# top comment
moniker = \"vm\"

[rpc]
laddr = \"tcp://127.0.0.1:26657\"
pprof_laddr = \"\"

[p2p]
laddr = \"tcp://0.0.0.0:26656\"
laddr_extra = 1
pex = true

[p2p.libp2p]
pex = true
";

    #[test]
    fn toml_edits_stay_in_their_section() {
        let t = set_toml_value(SAMPLE, "p2p", "laddr", "\"tcp://127.0.0.1:1\"");
        assert!(t.contains("[rpc]\nladdr = \"tcp://127.0.0.1:26657\""));
        assert!(t.contains("[p2p]\nladdr = \"tcp://127.0.0.1:1\"\nladdr_extra = 1"));
        let t = set_toml_value(&t, "p2p", "pex", "false");
        assert!(t.contains("pex = false\n\n[p2p.libp2p]\npex = true\n"));
        let t = set_toml_value(&t, "", "moniker", "\"x\"");
        assert!(t.contains("# top comment\nmoniker = \"x\"\n"));
    }

    #[test]
    fn toml_missing_keys_and_sections_are_added() {
        let t = set_toml_value(SAMPLE, "rpc", "unsafe", "true");
        assert!(t.contains("[rpc]\nunsafe = true\nladdr"));
        let t = set_toml_value(&t, "mempool", "size", "10");
        assert!(t.ends_with("\n[mempool]\nsize = 10\n"));
        let t = set_toml_value(&t, "", "new_top", "1");
        assert!(t.starts_with("new_top = 1\n# top comment"));
    }

    #[test]
    fn http_parsing_handles_length_and_chunks() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_http_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked).unwrap(), (500, b"abcde".to_vec()));
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1500000ns");
    }

    #[test]
    fn default_paths_point_into_the_workspace_cache() {
        let p = GoBinary::Tendermint034.default_path();
        assert!(p.ends_with(".cache/go-bin/tendermint-v0.34.24/tendermint"), "{}", p.display());
    }
}

pub use go_peer::{GoPeer, GoPeerConfig, GoPeerRole, GoProgram, SpawnFn, Spawner};

/// [`GoPeer`]: our own small Go P2P node (`interop-tests/gopeer`, CometBFT v0.38.25's `p2p`
/// package as a library) with a flood/sink reactor on one channel.
mod go_peer {
    use std::fs::File;
    use std::io::{BufRead, BufReader, Read};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
    use std::thread;
    use std::time::{Duration, Instant};

    use anyhow::{Context, anyhow, bail};
    use serde_json::Value;
    use tempfile::NamedTempFile;

    use super::{
        INSTALL_HINT, START_ATTEMPTS, STARTUP_TIMEOUT, SocketAddr, free_port, go_duration,
        workspace_root,
    };

    /// Environment variable that overrides the gopeer binary's path.
    const GOPEER_BIN_ENV: &str = "GOPEER_BIN";

    /// Lines of the gopeer's stderr quoted in errors.
    const STDERR_LINES: usize = 30;

    /// Which Go peer program runs: ours on CometBFT v0.38's `p2p` package (MConn), or ours on
    /// CometBFT v0.40's `lp2p` package (libp2p over QUIC). They take the same flags (`golp2p`
    /// a subset: no idle role, no probes) and print the same JSON lines; `golp2p`'s `ready`
    /// `id` is its libp2p peer ID (`12D3KooW…`) and its `--dial` takes `<peer id>@host:port`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub enum GoProgram {
        /// `interop-tests/gopeer` (CometBFT v0.38.25 `p2p`).
        #[default]
        Gopeer,
        /// `interop-tests/golp2p` (CometBFT v0.40.0 `lp2p`).
        Golp2p,
    }

    impl GoProgram {
        /// The program's (and its directory's) name.
        pub fn name(self) -> &'static str {
            match self {
                Self::Gopeer => "gopeer",
                Self::Golp2p => "golp2p",
            }
        }

        fn env_var(self) -> &'static str {
            match self {
                Self::Gopeer => GOPEER_BIN_ENV,
                Self::Golp2p => "GOLP2P_BIN",
            }
        }
    }

    /// What a [`GoPeer`] does with its peers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum GoPeerRole {
        /// Sends `count` messages (or for `duration`) to each of its `peers` peers, then waits
        /// for their acknowledgements.
        Flood,
        /// Receives and checks `count` messages (or those of `duration`), acknowledges,
        /// flushes and exits.
        Sink,
        /// Accepts inbound peers and keeps them idle, printing a `peers` event on every change
        /// of their number ([`GoPeer::next_event`]); runs until its `timeout`.
        Idle,
    }

    impl GoPeerRole {
        /// The `--role` value.
        pub fn as_str(self) -> &'static str {
            match self {
                Self::Flood => "flood",
                Self::Sink => "sink",
                Self::Idle => "idle",
            }
        }
    }

    /// Command-line settings of a [`GoPeer`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GoPeerConfig {
        /// `--role`.
        pub role: GoPeerRole,
        /// `--chain-id`: the `network` of its NodeInfo; a peer must have the same.
        pub chain_id: String,
        /// `--channel`: the one channel it has (default 0x77).
        pub channel: u8,
        /// `--size`: encoded message size (the mempool `Txs` wrapper included), at least 16.
        pub size: usize,
        /// `--count`: messages to send or to expect.
        pub count: u64,
        /// `--unlimited`: send and receive rates 1e9 B/s instead of CometBFT's 5 120 000.
        pub unlimited: bool,
        /// `--dial <id>@host:port`, if any; several comma-separated (a flood with `peers`).
        pub dial: Option<String>,
        /// `--concurrency`: flood: sending goroutines; sink: the flood's value (1 checks the
        /// order, more check that every sequence number arrives exactly once).
        pub concurrency: usize,
        /// `--recv-delay`: the sink sleeps this long after every counted message.
        pub recv_delay: Duration,
        /// `--duration`: send-timeframe mode (both ends): the flood sends for this long, then
        /// an end marker; the sink counts what arrives within this long of the first message.
        pub duration: Option<Duration>,
        /// `--peers`: a flood waits for this many peers and sends every message to all.
        pub peers: usize,
        /// `--timeout`: the process gives up (with an error result) after this long.
        pub timeout: Duration,
        /// Further arguments, e.g. `["--max-packet-payload", "4096"]`.
        pub extra_args: Vec<String>,
        /// Which program runs (default [`GoProgram::Gopeer`]).
        pub program: GoProgram,
        /// The IP it listens on (default 127.0.0.1), e.g. a WAN lab namespace's address.
        pub host: std::net::IpAddr,
        /// How the process is spawned (default: `Command::spawn` here), e.g. inside a network
        /// namespace.
        pub spawner: Option<Spawner>,
    }

    /// Spawns a prepared [`Command`] somewhere else than the caller's context (e.g. on a thread
    /// inside a network namespace, which the child inherits).
    #[derive(Clone)]
    pub struct Spawner(
        /// The spawn function.
        pub std::sync::Arc<SpawnFn>,
    );

    /// What a [`Spawner`] calls: spawn this command, somewhere.
    pub type SpawnFn = dyn Fn(&mut Command) -> std::io::Result<Child> + Send + Sync;

    impl std::fmt::Debug for Spawner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Spawner(..)")
        }
    }

    impl PartialEq for Spawner {
        fn eq(&self, other: &Self) -> bool {
            std::sync::Arc::ptr_eq(&self.0, &other.0)
        }
    }

    impl Eq for Spawner {}

    impl GoPeerConfig {
        /// A configuration with channel 0x77, 1024-byte messages, 1000 of them, rate limits
        /// off, no dial, concurrency 1, no receive delay, send-drain (no duration), one peer
        /// and a 5-minute timeout.
        pub fn new(role: GoPeerRole, chain_id: impl Into<String>) -> Self {
            Self {
                role,
                chain_id: chain_id.into(),
                channel: 0x77,
                size: 1024,
                count: 1000,
                unlimited: true,
                dial: None,
                concurrency: 1,
                recv_delay: Duration::ZERO,
                duration: None,
                peers: 1,
                timeout: Duration::from_secs(300),
                extra_args: Vec::new(),
                program: GoProgram::Gopeer,
                host: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                spawner: None,
            }
        }
    }

    /// A running `gopeer` process listening on 127.0.0.1. Killed and waited for on drop.
    ///
    /// Its stdout is a stream of JSON lines (`ready`, then `result`); its stderr goes to a
    /// temporary file, quoted in errors.
    #[derive(Debug)]
    pub struct GoPeer {
        child: Option<Child>,
        lines: Receiver<String>,
        stderr: NamedTempFile,
        node_id: String,
        port: u16,
        host: std::net::IpAddr,
        role: GoPeerRole,
    }

    impl GoPeer {
        /// The directory the install script builds the current gopeer sources into:
        /// `<workspace>/.cache/go-bin/gopeer-<first 16 hex digits of the sources' SHA-256>`
        /// (the hash rule is [`GoPeer::program_dir`]'s).
        pub fn default_dir() -> anyhow::Result<PathBuf> {
            Self::program_dir(GoProgram::Gopeer)
        }

        /// [`GoPeer::default_dir`] of `program` (`…/golp2p-<hash>` for `golp2p`).
        ///
        /// The hash is taken over, concatenated: `go.mod`, `go.sum` and the `*.go` files (in
        /// byte order of their names) of `interop-tests/<program>`, then `go.mod` and the
        /// `*.go` files (likewise) of `interop-tests/gocommon`, the module both programs
        /// compile in, so that a change there finds a new binary too. The install script
        /// (`install_program`) hashes the same bytes.
        pub fn program_dir(program: GoProgram) -> anyhow::Result<PathBuf> {
            let root = workspace_root().join("interop-tests");
            let mut data = Vec::new();
            for (dir, first) in
                [(program.name(), &["go.mod", "go.sum"][..]), ("gocommon", &["go.mod"][..])]
            {
                let src = root.join(dir);
                let mut names: Vec<String> = std::fs::read_dir(&src)
                    .with_context(|| format!("listing {}", src.display()))?
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".go"))
                    .collect();
                names.sort();
                for name in first.iter().map(|s| (*s).to_owned()).chain(names) {
                    let path = src.join(&name);
                    data.extend(
                        std::fs::read(&path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    );
                }
            }
            let hash = sha256_hex(&data)?;
            let short = hash.get(..16).ok_or_else(|| anyhow!("short sha256sum output"))?;
            let dir = format!("{}-{short}", program.name());
            Ok(workspace_root().join(".cache").join("go-bin").join(dir))
        }

        /// The binary to run: `$GOPEER_BIN` if set and not empty, else `gopeer` in
        /// [`GoPeer::default_dir`]. Fails (with the install hint) if it does not exist, e.g.
        /// because the sources changed since the last install.
        pub fn binary_path() -> anyhow::Result<PathBuf> {
            Self::program_path(GoProgram::Gopeer)
        }

        /// [`GoPeer::binary_path`] of `program` (`$GOLP2P_BIN` overrides `golp2p`'s).
        pub fn program_path(program: GoProgram) -> anyhow::Result<PathBuf> {
            let path = match std::env::var_os(program.env_var()) {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => Self::program_dir(program)?.join(program.name()),
            };
            if !path.is_file() {
                bail!(
                    "{} not found at {} (built from the current sources?): {INSTALL_HINT}",
                    program.name(),
                    path.display()
                );
            }
            Ok(path)
        }

        /// Spawns the gopeer on a free port of 127.0.0.1 and waits (at most
        /// [`STARTUP_TIMEOUT`]) for its `ready` line. If it dials, it does so after that line.
        pub fn start(config: &GoPeerConfig) -> anyhow::Result<Self> {
            let bin = Self::program_path(config.program)?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let port = free_port()?;
                match Self::spawn(&bin, config, port) {
                    Ok(peer) => return Ok(peer),
                    Err(e)
                        if attempt < START_ATTEMPTS
                            && format!("{e:#}").contains("address already in use") =>
                    {
                        eprintln!("gopeer: port {port} taken, retrying: {e:#}");
                    }
                    Err(e) => return Err(e),
                }
            }
        }

        fn spawn(bin: &Path, config: &GoPeerConfig, port: u16) -> anyhow::Result<Self> {
            let stderr = NamedTempFile::with_prefix("gopeer-stderr-")
                .context("creating the gopeer's stderr file")?;
            let mut cmd = Command::new(bin);
            cmd.arg("--listen")
                .arg(SocketAddr::new(config.host, port).to_string())
                .arg("--role")
                .arg(config.role.as_str())
                .arg("--chain-id")
                .arg(&config.chain_id)
                .arg("--channel")
                .arg(format!("{:#04x}", config.channel))
                .arg("--size")
                .arg(config.size.to_string())
                .arg("--count")
                .arg(config.count.to_string())
                .arg("--timeout")
                .arg(format!("{}ms", config.timeout.as_millis()));
            if config.unlimited {
                cmd.arg("--unlimited");
            }
            if let Some(dial) = &config.dial {
                cmd.arg("--dial").arg(dial);
            }
            if config.concurrency != 1 {
                cmd.arg("--concurrency").arg(config.concurrency.to_string());
            }
            if !config.recv_delay.is_zero() {
                cmd.arg("--recv-delay").arg(go_duration(config.recv_delay));
            }
            if let Some(d) = config.duration {
                cmd.arg("--duration").arg(go_duration(d));
            }
            if config.peers != 1 {
                cmd.arg("--peers").arg(config.peers.to_string());
            }
            cmd.args(&config.extra_args);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr.reopen().context("opening the gopeer's stderr file")?);
            let mut child = match &config.spawner {
                Some(spawner) => (spawner.0)(&mut cmd),
                None => cmd.spawn(),
            }
            .with_context(|| format!("spawning {}", bin.display()))?;
            let stdout = child.stdout.take().ok_or_else(|| anyhow!("gopeer without stdout"))?;
            let (tx, lines) = mpsc::channel();
            thread::Builder::new()
                .name("gopeer-stdout".to_owned())
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                })
                .context("spawning the gopeer stdout reader")?;
            let mut peer = Self {
                child: Some(child),
                lines,
                stderr,
                node_id: String::new(),
                port,
                host: config.host,
                role: config.role,
            };
            let ready = peer.next_event("ready", STARTUP_TIMEOUT)?;
            peer.node_id = ready
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("gopeer ready line without id: {ready}"))?
                .to_owned();
            Ok(peer)
        }

        /// The node ID: 40 lowercase hex digits (gopeer) or the libp2p peer ID, `12D3KooW…`
        /// (golp2p).
        pub fn node_id(&self) -> &str {
            &self.node_id
        }

        /// The listen port on 127.0.0.1.
        pub fn port(&self) -> u16 {
            self.port
        }

        /// `<id>@<host>:<port>`, for dialing it.
        pub fn p2p_address(&self) -> String {
            format!("{}@{}", self.node_id, SocketAddr::new(self.host, self.port))
        }

        /// The role it was started with.
        pub fn role(&self) -> GoPeerRole {
            self.role
        }

        /// The OS process ID while it runs.
        pub fn pid(&self) -> Option<u32> {
            self.child.as_ref().map(Child::id)
        }

        /// Its stderr so far (invalid UTF-8 replaced).
        pub fn stderr(&self) -> String {
            let mut text = Vec::new();
            let _ = File::open(self.stderr.path()).and_then(|mut f| f.read_to_end(&mut text));
            String::from_utf8_lossy(&text).into_owned()
        }

        /// Waits for its `result` line and its exit; returns the result object
        /// (`messages`, `bytes`, `seconds`, `cpu_seconds`, `peer`). An `error` in the result,
        /// a non-zero exit or no result within `timeout` is an `Err` quoting its stderr.
        pub fn wait_result(&mut self, timeout: Duration) -> anyhow::Result<Value> {
            let result = self.next_event("result", timeout)?;
            if let Some(error) = result.get("error").and_then(Value::as_str) {
                bail!("gopeer {} failed: {error}\n{}", self.role.as_str(), self.stderr_tail());
            }
            // It exits right after printing the result.
            if let Some(mut child) = self.child.take() {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    if let Some(status) = child.try_wait()? {
                        if !status.success() {
                            bail!("gopeer exited with {status}\n{}", self.stderr_tail());
                        }
                        break;
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!("gopeer did not exit after its result\n{}", self.stderr_tail());
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            }
            Ok(result)
        }

        /// The next JSON line whose `event` is `event` (e.g. `peers` of the idle role), within
        /// `timeout`; other lines are skipped, a `result` line first is an error.
        pub fn next_event(&mut self, event: &str, timeout: Duration) -> anyhow::Result<Value> {
            match self.try_next_event(event, timeout)? {
                Some(value) => Ok(value),
                None => bail!("no gopeer {event} line within {timeout:?}\n{}", self.stderr_tail()),
            }
        }

        /// As [`GoPeer::next_event`], but `None` if no such line came within `timeout`.
        pub fn try_next_event(
            &mut self,
            event: &str,
            timeout: Duration,
        ) -> anyhow::Result<Option<Value>> {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = match self.lines.recv_timeout(left) {
                    Ok(line) => line,
                    Err(RecvTimeoutError::Timeout) => return Ok(None),
                    Err(RecvTimeoutError::Disconnected) => {
                        let status = self.child.as_mut().and_then(|c| c.wait().ok());
                        self.child = None;
                        bail!(
                            "gopeer exited ({}) before its {event} line\n{}",
                            status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string()),
                            self.stderr_tail()
                        )
                    }
                };
                let value: Value = serde_json::from_str(&line)
                    .with_context(|| format!("gopeer printed a non-JSON line: {line}"))?;
                match value.get("event").and_then(Value::as_str) {
                    Some(e) if e == event => return Ok(Some(value)),
                    Some("result") => {
                        bail!(
                            "gopeer result before its {event} line: {line}\n{}",
                            self.stderr_tail()
                        )
                    }
                    _ => {}
                }
            }
        }

        /// The last lines of its stderr, headed, for an error message.
        pub fn stderr_tail(&self) -> String {
            let text = self.stderr();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines.get(lines.len().saturating_sub(STDERR_LINES)..).unwrap_or_default();
            format!("--- gopeer stderr (last {STDERR_LINES} lines) ---\n{}", tail.join("\n"))
        }
    }

    impl Drop for GoPeer {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                // Fails only if it already exited; wait() reaps it either way.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// SHA-256 of `data` in hex, by `sha256sum` (coreutils), as the install script computes it.
    fn sha256_hex(data: &[u8]) -> anyhow::Result<String> {
        use std::io::Write as _;
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running sha256sum")?;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("sha256sum without stdin"))?;
        let data = data.to_vec();
        let writer = thread::spawn(move || stdin.write_all(&data));
        let output = child.wait_with_output().context("running sha256sum")?;
        writer
            .join()
            .map_err(|_| anyhow!("sha256sum writer panicked"))?
            .context("writing to sha256sum")?;
        if !output.status.success() {
            bail!("sha256sum failed: {}", output.status);
        }
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text.split_whitespace().next().unwrap_or_default().to_owned())
    }
}
