//! The `p2pd` binary, run as a process in temporary homes: `init`, `show-node-id`,
//! `show-node-address`, `start` (signals, peers), `testnet`, and bad configurations (exit code 2,
//! one line on stderr, nothing written). They expect both listeners, so need both transports.

#![cfg(all(feature = "mconn", feature = "quic"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use p2p::{NodeAddress, NodeKey, Protocol};
use p2p_node::config::Config;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_p2pd");

/// Bound on waiting for a node to log something or exit.
const WAIT: Duration = Duration::from_secs(60);

fn p2pd(home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--home").arg(home).env_remove("RUST_LOG").env_remove("P2PD_HOME");
    cmd
}

fn run(home: &Path, args: &[&str]) -> Output {
    p2pd(home).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn config_path(home: &Path) -> PathBuf {
    home.join("config/config.toml")
}

fn key_path(home: &Path) -> PathBuf {
    home.join("config/node_key.json")
}

/// A home initialised by `p2pd init`.
fn init_home() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

/// Rewrites config.toml with `edit` applied to its table.
fn edit_config(home: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let path = config_path(home);
    let mut table: toml::Table = fs::read_to_string(&path).unwrap().parse().unwrap();
    edit(&mut table);
    fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: impl Into<toml::Value>) {
    table[section].as_table_mut().unwrap().insert(key.to_owned(), value.into());
}

/// Every file and directory under `dir` with the files' contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.insert(path.clone(), None);
                todo.push(path);
            } else {
                out.insert(path.clone(), Some(fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Runs `args` in `home` and checks: exit code 2, exactly one line on stderr, starting with
/// `error: ` and containing every needle, and no change under `home`.
fn assert_refused(home: &Path, args: &[&str], needles: &[&str]) -> String {
    let before = snapshot(home);
    let out = run(home, args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr {err:?} stdout {:?}", stdout(&out));
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    assert_eq!(snapshot(home), before, "{args:?} changed the home directory");
    err
}

fn show_node_id(home: &Path) -> String {
    let out = run(home, &["show-node-id"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

#[test]
fn init_writes_a_cometbft_key_and_a_loadable_config() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let out = run(home, &["init", "--chain-id", "test-chain", "--moniker", "alpha"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(home.join("data").is_dir());

    // node_key.json has CometBFT's shape and the ID show-node-id prints.
    let text = fs::read_to_string(key_path(home)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let object = json.as_object().unwrap();
    assert_eq!(object.len(), 1, "{text}");
    assert_eq!(json["priv_key"]["type"], "tendermint/PrivKeyEd25519");
    let value = json["priv_key"]["value"].as_str().unwrap();
    assert_eq!(value.len(), 88, "base64 of 64 bytes: {value}");
    assert!(value.ends_with("==") && !value.trim_end_matches('=').contains('='));
    let key = NodeKey::load(key_path(home)).unwrap();
    assert_eq!(text, key.to_json(), "compact, as CometBFT writes it");
    let id = show_node_id(home);
    assert_eq!(id, key.node_id().to_string());
    assert!(stdout(&out).contains(&id));

    // config.toml loads back with the flags applied and CometBFT's key names.
    let config = Config::load(config_path(home)).unwrap();
    assert_eq!(config.chain_id, "test-chain");
    assert_eq!(config.moniker, "alpha");
    let mut expected = Config::default();
    expected.chain_id = "test-chain".to_owned();
    expected.moniker = "alpha".to_owned();
    assert_eq!(config, expected);
    let raw = fs::read_to_string(config_path(home)).unwrap();
    for key in [
        "laddr",
        "external_address",
        "persistent_peers",
        "seeds",
        "max_num_inbound_peers",
        "max_num_outbound_peers",
        "send_rate",
        "recv_rate",
        "quic_laddr",
    ] {
        assert!(raw.contains(&format!("\n{key} = ")), "{key} missing");
    }
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = init_home();
    let home = dir.path();
    let id = show_node_id(home);
    assert_refused(home, &["init"], &["config.toml", "already exists", "--force"]);
    assert_eq!(show_node_id(home), id);

    // Only the key left: still refused, and config.toml is not written.
    fs::remove_file(config_path(home)).unwrap();
    assert_refused(home, &["init"], &["node_key.json", "--force"]);
    assert!(!config_path(home).exists());

    // --force writes both again: a new key, a default config.
    fs::write(config_path(home), "moniker = \"edited\"\n").unwrap();
    let out = run(home, &["init", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(show_node_id(home), id);
    assert_eq!(Config::load(config_path(home)).unwrap(), Config::default());
}

#[test]
fn show_node_address_prints_every_listener() {
    let dir = init_home();
    let home = dir.path();
    let id = show_node_id(home);
    let out = run(home, &["show-node-address"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [format!("mconn://{id}@0.0.0.0:26656"), format!("quic://{id}@0.0.0.0:26656")]
    );
    for line in &lines {
        let address: NodeAddress = line.parse().unwrap();
        assert_eq!(address.node_id().to_string(), id);
    }

    edit_config(home, |t| {
        set(t, "p2p", "external_address", "198.51.100.7:30000");
        set(t, "p2p", "quic_laddr", "udp://0.0.0.0:30001");
    });
    let out = run(home, &["show-node-address"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let addresses: Vec<NodeAddress> = stdout(&out).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(addresses.len(), 2);
    assert_eq!(*addresses[0].protocol(), Protocol::MCONN);
    assert_eq!(addresses[0].to_string(), format!("mconn://{id}@198.51.100.7:30000"));
    assert_eq!(*addresses[1].protocol(), Protocol::QUIC);
    assert_eq!(addresses[1].to_string(), format!("quic://{id}@198.51.100.7:30001"));

    edit_config(home, |t| set(t, "p2p", "quic_laddr", ""));
    let out = run(home, &["show-node-address"]);
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
}

#[test]
fn unknown_key_is_refused() {
    let dir = init_home();
    let home = dir.path();
    edit_config(home, |t| set(t, "p2p", "bogus", 1));
    assert_refused(home, &["start"], &["config.toml", "p2p.bogus", "unknown field"]);
    assert_refused(home, &["show-node-id"], &["config.toml", "p2p.bogus"]);
}

#[test]
fn malformed_peer_address_is_refused() {
    let dir = init_home();
    let home = dir.path();
    edit_config(home, |t| set(t, "p2p", "persistent_peers", "abc@x"));
    assert_refused(home, &["start"], &["config.toml", "p2p.persistent_peers", "\"abc@x\""]);
}

#[test]
fn bad_log_level_is_refused() {
    let dir = init_home();
    let home = dir.path();
    edit_config(home, |t| {
        t.insert("log_level".to_owned(), "p2p=loud".into());
    });
    assert_refused(home, &["start"], &["config.toml", "log_level", "p2p=loud"]);
}

#[test]
fn mconn_port_in_use_is_refused() {
    let dir = init_home();
    let home = dir.path();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    edit_config(home, |t| {
        set(t, "p2p", "laddr", format!("tcp://{addr}"));
        set(t, "p2p", "quic_laddr", "udp://127.0.0.1:0");
    });
    assert_refused(home, &["start"], &["config.toml", "p2p.laddr", &addr.to_string()]);
}

#[test]
fn quic_port_in_use_is_refused() {
    let dir = init_home();
    let home = dir.path();
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    edit_config(home, |t| {
        set(t, "p2p", "laddr", "tcp://127.0.0.1:0");
        set(t, "p2p", "quic_laddr", format!("udp://{addr}"));
    });
    assert_refused(home, &["start"], &["p2p.quic_laddr", &addr.to_string()]);
}

#[test]
fn unreadable_key_file_is_refused() {
    let dir = init_home();
    let home = dir.path();
    fs::write(key_path(home), "not json").unwrap();
    assert_refused(home, &["start"], &["node_key.json", "not valid JSON"]);
    assert_refused(home, &["show-node-id"], &["node_key.json"]);

    fs::remove_file(key_path(home)).unwrap();
    fs::create_dir(key_path(home)).unwrap();
    assert_refused(home, &["start"], &["node_key.json"]);
    assert_refused(home, &["show-node-address"], &["node_key.json"]);
}

#[test]
fn start_without_init_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(dir.path(), &["start"], &["config.toml", "p2pd init"]);
    assert!(snapshot(dir.path()).is_empty());
}

/// A running `p2pd start` whose stdout (the log) goes to a file.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(home: &Path, extra: &[&str]) -> Self {
        let log = home.join("stdout.log");
        let child = p2pd(home)
            .args(extra)
            .arg("start")
            .stdout(Stdio::from(fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(fs::File::create(home.join("stderr.log")).unwrap()))
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until a line satisfies `pred` (bounded by [`WAIT`]).
    fn wait_for_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.log().lines().find(|l| pred(l)) {
                return line.to_owned();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("p2pd exited ({status}) before logging {what}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "no {what} in the log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The addresses logged as `listening` (the node must run with `--log-format json`).
    fn listening(&mut self) -> Vec<NodeAddress> {
        self.wait_for_line("listening", |l| l.contains("\"listening\""));
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "listening")
            .map(|v| v["fields"]["address"].as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    fn terminate(&mut self) -> ExitStatus {
        let status =
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "p2pd did not exit on SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A home listening on loopback with ports chosen at start.
fn loopback_home() -> TempDir {
    let dir = init_home();
    edit_config(dir.path(), |t| {
        set(t, "p2p", "laddr", "tcp://127.0.0.1:0");
        set(t, "p2p", "quic_laddr", "udp://127.0.0.1:0");
    });
    dir
}

#[test]
fn start_stops_cleanly_on_sigterm() {
    let dir = loopback_home();
    let home = dir.path();
    let id = show_node_id(home);
    let mut node = Running::start(home, &["--log-format", "json"]);
    let addresses = node.listening();
    let protocols: Vec<&Protocol> = addresses.iter().map(NodeAddress::protocol).collect();
    assert_eq!(protocols, [&Protocol::MCONN, &Protocol::QUIC]);
    assert!(addresses.iter().all(|a| a.node_id().to_string() == id));

    let status = node.terminate();
    assert!(status.success(), "{status}:\n{}", node.log());
    let log = node.log();
    assert!(log.contains("SIGTERM") && log.contains("node stopped cleanly"), "{log}");
    for line in log.lines() {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(json["level"].is_string(), "{line}");
    }
    assert_eq!(fs::read_to_string(home.join("stderr.log")).unwrap(), "");
    assert!(home.join("data/peers.redb").exists(), "the peer store is written");
}

#[test]
fn persistent_peer_connects() {
    let a_dir = loopback_home();
    let b_dir = loopback_home();
    let a_id = show_node_id(a_dir.path());
    let b_id = show_node_id(b_dir.path());
    let mut a = Running::start(a_dir.path(), &["--log-format", "json"]);
    let a_addresses = a.listening();
    let mconn = a_addresses.iter().find(|x| *x.protocol() == Protocol::MCONN).unwrap();
    let (host, port) = mconn.host_port().unwrap();
    // CometBFT's legacy form for MConnection, a URL for QUIC.
    let quic = a_addresses.iter().find(|x| *x.protocol() == Protocol::QUIC).unwrap();
    let peers = format!("{a_id}@{host}:{port},{quic}");
    edit_config(b_dir.path(), |t| set(t, "p2p", "persistent_peers", peers));

    let mut b = Running::start(b_dir.path(), &[]);
    b.wait_for_line("peer connected to A", |l| l.contains("peer connected") && l.contains(&a_id));
    a.wait_for_line("peer connected to B", |l| l.contains("peer connected") && l.contains(&b_id));
    assert!(b.log().contains("INFO"), "plain format by default");

    assert!(b.terminate().success(), "{}", b.log());
    assert!(a.terminate().success(), "{}", a.log());
}

#[test]
fn testnet_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["testnet", "--nodes", "2", "--transport", "mconn", "--duration", "300ms"],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let out = run(dir.path(), &["testnet", "--transport", "carrier-pigeon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("carrier-pigeon"));
    assert!(snapshot(dir.path()).is_empty(), "testnet needs no home");
}
