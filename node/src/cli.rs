//! The `p2pd` command line: argument parsing, the commands, logging and exit codes.

use std::fmt;
use std::fs;
use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use p2p::{Host, NodeAddress, NodeId, NodeKey, Protocol};
use p2p_node::config::{CONFIG_FILE, Config, ConfigError, parse_duration};
use p2p_node::crawl::CrawlOptions;
use p2p_node::testnet::{TestnetOptions, TestnetTransport};
use p2p_node::{Node, NodeError, NodeOptions};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Runs a peer-to-peer node for Tendermint-family chains: MConnection (CometBFT-compatible)
/// and QUIC transports, transaction gossip.
#[derive(Debug, Parser)]
#[command(name = "p2pd", version)]
struct Cli {
    /// The home directory: `config/config.toml`, `config/node_key.json`, `data/`. Default:
    /// `$HOME/.p2pd`.
    #[arg(long, global = true, env = "P2PD_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Log filter in RUST_LOG syntax (e.g. `info`, `p2p=debug,info`); overrides `log_level` in
    /// config.toml. The RUST_LOG environment variable, if set, wins over both.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format; overrides `log_format` in config.toml.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes `config/config.toml` and `config/node_key.json` (CometBFT's format) and creates
    /// `data/`. Refuses to overwrite existing files without --force.
    Init(InitArgs),
    /// Prints the node ID (from the node key).
    ShowNodeId {
        /// Print the libp2p peer ID (`12D3KooW…`) instead, the ID CometBFT's lp2p knows the
        /// node by (as `cometbft show-node-id --libp2p`).
        #[arg(long)]
        libp2p: bool,
    },
    /// Prints every URL this node can be reached at, one per listener (`mconn://id@host:port`,
    /// `quic://id@host:port`, and `lp2p://<peer id>@host:port` with `[p2p.libp2p] enabled`). The host is `p2p.external_address`'s if set (its port too, for
    /// MConnection), else the listen address's, printed as configured: `0.0.0.0` means every
    /// interface. A port of 0 is chosen at start; `start` logs the real addresses.
    ShowNodeAddress,
    /// Runs the node until SIGINT or SIGTERM, then closes connections cleanly and writes the
    /// peer store.
    Start,
    /// Runs N nodes in this process on loopback, gossips transactions among them and prints a
    /// summary. Needs no home directory.
    Testnet(TestnetArgs),
    /// Walks a network through peer exchange from the given addresses and prints every node
    /// found: node info, version, transport, reachability. Needs no home directory.
    Crawl(CrawlArgs),
}

#[derive(Debug, Args)]
struct CrawlArgs {
    /// Where to start: `mconn://id@host:port`, `quic://id@host:port` or `id@host:port`.
    #[arg(required = true, value_name = "ADDRESS", value_parser = crawl_address)]
    start: Vec<NodeAddress>,
    /// Nodes visited at the same time.
    #[arg(long, value_name = "N", value_parser = node_count, default_value_t = 16)]
    concurrency: usize,
    /// Time for one visit (dial, handshake, one PEX request and its answer).
    #[arg(long, value_name = "D", value_parser = duration_arg,
          default_value_t = HumanDuration(Duration::from_secs(10)))]
    timeout: HumanDuration,
    /// Most nodes visited.
    #[arg(long, value_name = "N", value_parser = node_count, default_value_t = 1000)]
    max_nodes: usize,
    /// The network (chain ID) to handshake with at first; by default the first node's.
    #[arg(long, value_name = "ID")]
    chain_id: Option<String>,
    /// Also write the report as JSON to this file (`-` for standard output instead of the
    /// table).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

fn crawl_address(s: &str) -> Result<NodeAddress, String> {
    s.parse::<NodeAddress>().map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Overwrite an existing config.toml and node_key.json (the node gets a new ID).
    #[arg(long)]
    force: bool,
    /// The network's chain ID (peers must share it).
    #[arg(long, value_name = "ID")]
    chain_id: Option<String>,
    /// A name for this node.
    #[arg(long, value_name = "NAME")]
    moniker: Option<String>,
}

#[derive(Debug, Args)]
struct TestnetArgs {
    /// Number of nodes.
    #[arg(long, value_name = "N", value_parser = node_count,
          default_value_t = TestnetOptions::default().nodes)]
    nodes: usize,
    /// Transports: every node QUIC, every node MConnection, or a mix.
    #[arg(long, value_enum, default_value_t = TransportArg::from(TestnetOptions::default().transport))]
    transport: TransportArg,
    /// How long transactions are gossiped (e.g. `500ms`, `10s`, `1m`).
    #[arg(long, value_name = "D", value_parser = duration_arg,
          default_value_t = HumanDuration(TestnetOptions::default().duration))]
    duration: HumanDuration,
    /// Run every node in its own network namespace behind the WAN lab's link emulator with this
    /// profile: `lan` (1 ms RTT), `continent` (40 ms, 0.1% loss), `intercontinental` (150 ms,
    /// 0.5% loss, 100 Mbit/s) or `lossy` (100 ms, 2% bursty loss, 50 Mbit/s). Needs root.
    #[cfg(feature = "wan")]
    #[arg(long, value_name = "PROFILE")]
    wan: Option<p2p_wanlab::Profile>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// `testnet --transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    /// Every node listens on QUIC only.
    Quic,
    /// Every node listens on MConnection only.
    Mconn,
    /// Some nodes QUIC, some MConnection, some both.
    Mixed,
}

impl From<TestnetTransport> for TransportArg {
    fn from(t: TestnetTransport) -> Self {
        match t {
            TestnetTransport::Quic => Self::Quic,
            TestnetTransport::Mconn => Self::Mconn,
            _ => Self::Mixed,
        }
    }
}

impl From<TransportArg> for TestnetTransport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Quic => Self::Quic,
            TransportArg::Mconn => Self::Mconn,
            TransportArg::Mixed => Self::Mixed,
        }
    }
}

impl fmt::Display for TransportArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
        f.write_str(&name)
    }
}

/// A duration that prints the way [`parse_duration`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HumanDuration(Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_nanos() == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else if self.0.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", self.0.as_millis())
        } else {
            write!(f, "{}ns", self.0.as_nanos())
        }
    }
}

fn duration_arg(s: &str) -> Result<HumanDuration, String> {
    parse_duration(s).map(HumanDuration).map_err(|e| e.to_string())
}

fn node_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("there must be at least 1 node".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A failed command: the exit code and the one-line message printed after `error: `.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Exit code 2: bad configuration, key, command line or listen address.
    fn config(message: impl fmt::Display) -> Self {
        Self { code: 2, message: message.to_string() }
    }

    /// Exit code 1: anything else.
    fn other(message: impl fmt::Display) -> Self {
        Self { code: 1, message: message.to_string() }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::config(e)
    }
}

/// Parses the command line, runs the command, prints a failure as one line on stderr and
/// returns the exit code.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let message: Vec<&str> =
                failure.message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            eprintln!("error: {}", message.join("; "));
            ExitCode::from(failure.code)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Init(args) => init(&home(cli)?, args),
        Command::ShowNodeId { libp2p } => {
            let home = home(cli)?;
            let config = load_config(&home)?;
            let key = config.load_node_key(&home)?;
            if *libp2p {
                println!("{}", p2p::libp2p_peer_id(&key.public_key()));
            } else {
                println!("{}", key.node_id());
            }
            Ok(())
        }
        Command::ShowNodeAddress => {
            let home = home(cli)?;
            let config = load_config(&home)?;
            let key = config.load_node_key(&home)?;
            for address in advertised_addresses(&config, &key.public_key())? {
                println!("{address}");
            }
            Ok(())
        }
        Command::Start => start(cli, &home(cli)?),
        Command::Testnet(args) => testnet(cli, args),
        Command::Crawl(args) => crawl(cli, args),
    }
}

fn crawl(cli: &Cli, args: &CrawlArgs) -> Result<(), Failure> {
    let level = cli.log_level.as_deref().unwrap_or("warn");
    init_logging(log_filter(level, "--log-level")?, cli.log_format.unwrap_or(LogFormat::Plain))?;
    let mut options = CrawlOptions::new(args.start.clone());
    options.concurrency = args.concurrency;
    options.timeout = args.timeout.0;
    options.max_nodes = args.max_nodes;
    options.chain_id = args.chain_id.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::other(format!("cannot start the Tokio runtime: {e}")))?;
    let report = runtime
        .block_on(p2p_node::crawl::crawl(options, |p| {
            eprintln!(
                "crawl: {} visited, {} reachable, {} in flight, {} queued",
                p.visited, p.reachable, p.in_flight, p.queued
            );
        }))
        .map_err(Failure::config)?;
    let json = || {
        serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::other(format!("cannot encode the report: {e}")))
    };
    match &args.json {
        Some(path) if path.as_os_str() == "-" => println!("{}", json()?),
        Some(path) => {
            print!("{}", p2p_node::crawl::table(&report));
            fs::write(path, json()? + "\n")
                .map_err(|e| Failure::other(format!("cannot write {}: {e}", path.display())))?;
        }
        None => print!("{}", p2p_node::crawl::table(&report)),
    }
    if report.reachable().next().is_none() {
        return Err(Failure::other("no node was reachable"));
    }
    Ok(())
}

/// `--home`, `P2PD_HOME`, or `$HOME/.p2pd`.
fn home(cli: &Cli) -> Result<PathBuf, Failure> {
    if let Some(home) = &cli.home {
        return Ok(home.clone());
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(".p2pd")),
        _ => Err(Failure::config("no home directory: pass --home or set P2PD_HOME")),
    }
}

fn load_config(home: &Path) -> Result<Config, Failure> {
    Ok(Config::load(home.join(CONFIG_FILE))?)
}

fn init(home: &Path, args: &InitArgs) -> Result<(), Failure> {
    let config_path = home.join(CONFIG_FILE);
    let mut config = Config::default().with_file(&config_path);
    if let Some(chain_id) = &args.chain_id {
        config.chain_id.clone_from(chain_id);
    }
    if let Some(moniker) = &args.moniker {
        config.moniker.clone_from(moniker);
    }
    let key = NodeKey::generate();
    let key_path = config.node_key_path(home);
    // Everything is checked before anything is written.
    config.node_options(home, key.clone())?;
    let text = config.to_toml()?;
    if !args.force {
        for path in [&config_path, &key_path] {
            if path.symlink_metadata().is_ok() {
                return Err(Failure::config(format!(
                    "{}: already exists; pass --force to overwrite it",
                    path.display()
                )));
            }
        }
    }
    let data = home.join("data");
    let dirs = [config_path.parent(), key_path.parent(), Some(data.as_path())];
    for dir in dirs.into_iter().flatten() {
        fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the directory", dir.display()))
            .map_err(|e| Failure::config(format!("{e:#}")))?;
    }
    write_atomic(&config_path, text.as_bytes())
        .with_context(|| format!("{}: cannot write", config_path.display()))
        .map_err(|e| Failure::config(format!("{e:#}")))?;
    key.save(&key_path).map_err(Failure::config)?;
    println!("node ID {}", key.node_id());
    println!("wrote {}", config_path.display());
    println!("wrote {}", key_path.display());
    Ok(())
}

/// Writes `data` to a temporary file next to `path`, syncs it and renames it over `path`.
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// One URL per configured listener, as `show-node-address` prints them.
fn advertised_addresses(
    config: &Config,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<Vec<NodeAddress>, ConfigError> {
    let id = NodeId::from_public_key(key);
    let external = config.external_address()?;
    let mconn = config.mconn_listen_addr()?;
    let quic = config.quic_listen_addr()?;
    let mut addresses = Vec::new();
    if let Some(addr) = mconn {
        let (host, port) = match &external {
            Some((host, port)) => (host.clone(), *port),
            None => (Host::Ip(addr.ip()), addr.port()),
        };
        addresses.push(NodeAddress::new_host(Protocol::MCONN, id, host, port));
    }
    if let Some(addr) = quic {
        let port = match (addr.port(), mconn) {
            (0, Some(mconn)) => mconn.port(),
            (port, _) => port,
        };
        let host = external.clone().map_or(Host::Ip(addr.ip()), |(host, _)| host);
        addresses.push(NodeAddress::new_host(Protocol::QUIC, id, host, port));
    }
    // lp2p listens on the QUIC socket, or on laddr's port over UDP without one; its address
    // names the node by its libp2p peer ID.
    if config.p2p.libp2p.enabled
        && let Some(addr) = quic.or(mconn)
    {
        let port = match (addr.port(), mconn) {
            (0, Some(mconn)) => mconn.port(),
            (port, _) => port,
        };
        let host = external.map_or(Host::Ip(addr.ip()), |(host, _)| host);
        addresses.push(NodeAddress::new_with_key(Protocol::LP2P, *key, host, port));
    }
    Ok(addresses)
}

fn start(cli: &Cli, home: &Path) -> Result<(), Failure> {
    // Everything is checked before anything is written or bound for good.
    let config = load_config(home)?;
    let key = config.load_node_key(home)?;
    let options = config.node_options(home, key)?;
    let file = home.join(CONFIG_FILE);
    let format = match cli.log_format {
        Some(format) => format,
        None if config.log_format == "json" => LogFormat::Json,
        None => LogFormat::Plain,
    };
    let level = match &cli.log_level {
        Some(level) => (level.as_str(), "--log-level".to_owned()),
        None => (config.log_level.as_str(), format!("{}: log_level", file.display())),
    };
    let filter = log_filter(level.0, &level.1)?;
    probe_listeners(&config, &options, &file)?;
    init_logging(filter, format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::other(format!("cannot start the Tokio runtime: {e}")))?;
    let peer_store = config.peer_store_path(home);
    runtime.block_on(run_node(options, &file, peer_store))
}

/// Binds and releases every listen address with a fixed port, so a port in use is reported
/// before [`Node::start`] creates the peer store.
fn probe_listeners(config: &Config, options: &NodeOptions, file: &Path) -> Result<(), Failure> {
    let in_use = |key: &str, what: &str, addr: SocketAddr, e: io::Error| {
        Failure::config(format!("{}: {key}: cannot listen on {what} {addr}: {e}", file.display()))
    };
    let mconn = config.mconn_listen_addr()?;
    if let Some(addr) = mconn.filter(|a| a.port() != 0) {
        TcpListener::bind(addr).map_err(|e| in_use("p2p.laddr", "mconn", addr, e))?;
    }
    if let Some(mut addr) = config.quic_listen_addr()? {
        if addr.port() == 0
            && let Some(mconn) = mconn
        {
            addr.set_port(mconn.port());
        }
        if addr.port() != 0 {
            UdpSocket::bind(addr).map_err(|e| in_use("p2p.quic_laddr", "quic", addr, e))?;
        }
    }
    if let Some(metrics) = &options.metrics
        && metrics.listen.port() != 0
    {
        TcpListener::bind(metrics.listen).map_err(|e| {
            in_use("instrumentation.prometheus_listen_addr", "metrics", metrics.listen, e)
        })?;
    }
    Ok(())
}

async fn run_node(
    options: NodeOptions,
    file: &Path,
    peer_store: Option<PathBuf>,
) -> Result<(), Failure> {
    let store_existed = peer_store.as_ref().map(|p| (p.exists(), p.parent().map(Path::exists)));
    let node = match Node::start(options).await {
        Ok(node) => node,
        Err(e) => {
            // Leave nothing behind: remove a peer store this failed start created.
            if let (Some(path), Some((false, dir_existed))) = (&peer_store, store_existed) {
                let _ = fs::remove_file(path);
                if dir_existed == Some(false)
                    && let Some(dir) = path.parent()
                {
                    let _ = fs::remove_dir(dir);
                }
            }
            return Err(node_error(file, e));
        }
    };
    // Install the handlers before announcing the addresses: whoever waits for them may signal
    // at once.
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            node.stop().await;
            return Err(Failure::other(format!("cannot install signal handlers: {e}")));
        }
    };
    for address in node.addresses() {
        info!(%address, "listening");
    }
    if let Some(addr) = node.metrics_addr() {
        info!(%addr, "serving metrics at /metrics");
    }
    #[cfg(feature = "upnp")]
    let upnp_log = node.upnp().map(|mut status| {
        info!("UPnP on: looking for the gateway");
        let id = node.id();
        tokio::spawn(async move {
            // Every change of the external addresses (a future address advertiser reads the
            // same watch through `Node::upnp`).
            let mut last = Vec::new();
            while status.changed().await.is_ok() {
                let now = status.borrow_and_update().clone();
                let addresses = p2p_node::upnp_node_addresses(id, &now);
                if addresses == last {
                    continue;
                }
                for address in &addresses {
                    info!(%address, "reachable through UPnP");
                }
                if addresses.is_empty() {
                    info!("no UPnP external address");
                }
                last = addresses;
            }
        })
    });
    let signal = signals.recv().await;
    #[cfg(feature = "upnp")]
    if let Some(task) = upnp_log {
        task.abort();
    }
    info!(signal, "shutting down: closing connections and writing the peer store");
    let stop = node.stop();
    tokio::pin!(stop);
    tokio::select! {
        () = &mut stop => {}
        signal = signals.recv() => {
            warn!(signal, "second signal: exiting without a clean stop");
            return Err(Failure::other(format!("{signal} during shutdown; stopped uncleanly")));
        }
    }
    info!("node stopped cleanly");
    Ok(())
}

/// A [`NodeError`] as a one-line message naming the configuration key it comes from.
fn node_error(file: &Path, e: NodeError) -> Failure {
    let key = match &e {
        NodeError::Listen { protocol, .. } if *protocol == Protocol::MCONN => Some("p2p.laddr"),
        NodeError::Listen { protocol, .. } if *protocol == Protocol::QUIC => Some("p2p.quic_laddr"),
        NodeError::Listen { protocol, .. } if *protocol == Protocol::LP2P => {
            Some("p2p.libp2p.enabled")
        }
        NodeError::Metrics { .. } => Some("instrumentation.prometheus_listen_addr"),
        NodeError::Store(_) => Some("p2p.peer_store_file"),
        _ => None,
    };
    match key {
        Some(key) => Failure::config(format!("{}: {key}: {e}", file.display())),
        None => Failure::config(format!("{}: {e}", file.display())),
    }
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere), installed at once.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Self)
    }

    /// Waits for the next Ctrl-C.
    async fn recv(&mut self) -> &'static str {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        "Ctrl-C"
    }
}

/// The log filter: RUST_LOG if set, else `level` (`source` names it in errors).
fn log_filter(level: &str, source: &str) -> Result<EnvFilter, Failure> {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            EnvFilter::try_new(&env).map_err(|e| Failure::config(format!("RUST_LOG: {env:?}: {e}")))
        }
        _ => EnvFilter::try_new(level)
            .map_err(|e| Failure::config(format!("{source}: {level:?}: {e}"))),
    }
}

/// Logs to stdout, plain or as JSON lines (no colours unless stdout is a terminal).
fn init_logging(filter: EnvFilter, format: LogFormat) -> Result<(), Failure> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stdout)
        .with_ansi(io::stdout().is_terminal());
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| Failure::other(format!("cannot set up logging: {e}")))
}

fn testnet(cli: &Cli, args: &TestnetArgs) -> Result<(), Failure> {
    let level = cli.log_level.as_deref().unwrap_or("warn");
    let filter = log_filter(level, "--log-level")?;
    init_logging(filter, cli.log_format.unwrap_or(LogFormat::Plain))?;
    let mut options = TestnetOptions::default();
    options.nodes = args.nodes;
    options.transport = args.transport.into();
    options.duration = args.duration.0;
    #[cfg(feature = "wan")]
    {
        options.wan = args.wan;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::other(format!("cannot start the Tokio runtime: {e}")))?;
    runtime.block_on(p2p_node::testnet::run(options)).map(drop).map_err(Failure::other)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn testnet_flags() {
        let cli = Cli::try_parse_from([
            "p2pd",
            "testnet",
            "--nodes",
            "5",
            "--transport",
            "quic",
            "--duration",
            "1m30s",
        ])
        .unwrap();
        let Command::Testnet(args) = cli.command else { panic!("{cli:?}") };
        assert_eq!(args.nodes, 5);
        assert_eq!(args.transport, TransportArg::Quic);
        assert_eq!(args.duration.0, Duration::from_secs(90));
    }

    #[test]
    fn testnet_defaults_are_the_library_defaults() {
        let cli = Cli::try_parse_from(["p2pd", "testnet"]).unwrap();
        let Command::Testnet(args) = cli.command else { panic!("{cli:?}") };
        let defaults = TestnetOptions::default();
        assert_eq!(args.nodes, defaults.nodes);
        assert_eq!(TestnetTransport::from(args.transport), defaults.transport);
        assert_eq!(args.duration.0, defaults.duration);
    }

    #[test]
    fn bad_testnet_flags_are_usage_errors() {
        for bad in [
            &["--nodes", "0"][..],
            &["--nodes", "x"],
            &["--transport", "tcp"],
            &["--duration", "5"],
            &["--duration", "-1s"],
        ] {
            let args = ["p2pd", "testnet"].into_iter().chain(bad.iter().copied());
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn human_duration_round_trips() {
        for d in [
            Duration::from_secs(8),
            Duration::from_millis(1500),
            Duration::from_nanos(7),
            Duration::ZERO,
        ] {
            let text = HumanDuration(d).to_string();
            assert_eq!(parse_duration(&text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn global_flags_after_the_command() {
        let cli =
            Cli::try_parse_from(["p2pd", "start", "--home", "/x", "--log-format", "json"]).unwrap();
        assert_eq!(cli.home, Some(PathBuf::from("/x")));
        assert_eq!(cli.log_format, Some(LogFormat::Json));
        assert!(matches!(cli.command, Command::Start));
    }

    #[test]
    #[cfg(all(feature = "mconn", feature = "quic"))]
    fn addresses_use_the_external_host() {
        let key = NodeKey::from_seed([1; 32]).public_key();
        let id = NodeId::from_public_key(&key);
        let mut config = Config::default();
        config.p2p.laddr = "tcp://0.0.0.0:26656".to_owned();
        config.p2p.quic_laddr = "udp://0.0.0.0:0".to_owned();
        let plain: Vec<String> =
            advertised_addresses(&config, &key).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(
            plain,
            [format!("mconn://{id}@0.0.0.0:26656"), format!("quic://{id}@0.0.0.0:26656")]
        );
        config.p2p.external_address = "node.example.com:443".to_owned();
        config.p2p.quic_laddr = "udp://0.0.0.0:26657".to_owned();
        let external: Vec<String> =
            advertised_addresses(&config, &key).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(
            external,
            [
                format!("mconn://{id}@node.example.com:443"),
                format!("quic://{id}@node.example.com:26657")
            ]
        );
        // lp2p on the QUIC port, named by the libp2p peer ID.
        config.p2p.libp2p.enabled = true;
        let with_lp2p: Vec<String> =
            advertised_addresses(&config, &key).unwrap().iter().map(ToString::to_string).collect();
        let peer_id = p2p::libp2p_peer_id(&key);
        assert_eq!(with_lp2p.last().unwrap(), &format!("lp2p://{peer_id}@node.example.com:26657"));
        config.p2p.libp2p.enabled = false;
        config.p2p.laddr = String::new();
        config.p2p.quic_laddr = String::new();
        assert!(advertised_addresses(&config, &key).unwrap().is_empty());
    }
}
