//! `p2pd start` against a real Go CometBFT v0.38.25 node: node A (MConn + QUIC on the same port
//! number) has the Go node as persistent peer; node B speaks only QUIC and has A as persistent
//! peer. A transaction given to the Go node's RPC reaches B through A, and B's log names the
//! transaction by the hash Go's RPC returned.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg(all(feature = "mconn", feature = "quic"))]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use p2p::NodeKey;
use p2p_interop_tests::{GoBinary, GoNode, GoNodeConfig, free_port, wait_for};

const T: Duration = Duration::from_secs(30);

/// A `p2pd start` process; killed (and its log printed) on drop.
struct P2pd {
    name: &'static str,
    child: Child,
    log: PathBuf,
    _home: tempfile::TempDir,
}

impl P2pd {
    /// Writes a home with `config` as config.toml and a fresh key, and starts the node.
    fn start(name: &'static str, config: &str, key: &NodeKey) -> Self {
        let home = tempfile::tempdir().unwrap();
        fs::create_dir_all(home.path().join("config")).unwrap();
        fs::write(home.path().join("config/config.toml"), config).unwrap();
        fs::write(home.path().join("config/node_key.json"), key.to_json()).unwrap();
        let log = home.path().join("node.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_p2pd"))
            .arg("--home")
            .arg(home.path())
            .arg("start")
            .env("RUST_LOG", "p2p_node=debug,p2p=info,info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { name, child, log, _home: home }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing all of `needles`; returns it.
    fn wait_log(&self, what: &str, needles: &[&str]) -> String {
        let mut found = String::new();
        wait_for(T, what, || {
            let log = self.log();
            match log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                Some(line) => {
                    found = line.to_owned();
                    Ok(true)
                }
                None => Ok(false),
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n--- {} log ---\n{}", self.name, self.log()));
        found
    }
}

impl Drop for P2pd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ({}) ---\n{}", self.name, log_path(&self.log), self.log());
        }
    }
}

fn log_path(p: &Path) -> String {
    p.display().to_string()
}

/// A port free on both TCP and UDP (the node listens on both with the same number).
fn free_dual_port() -> u16 {
    for _ in 0..50 {
        let port = free_port().unwrap();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both TCP and UDP");
}

#[test]
fn p2pd_relays_a_go_transaction_to_a_quic_only_node() {
    let chain = "p2pd-go-relay";
    let go = GoNode::start(GoNodeConfig {
        moniker: "go".into(),
        chain_id: Some(chain.into()),
        ..GoNodeConfig::new(GoBinary::Cometbft038)
    })
    .unwrap();

    let (key_a, key_b) = (NodeKey::generate(), NodeKey::generate());
    let (id_a, id_b) = (key_a.node_id().to_string(), key_b.node_id().to_string());
    let port_a = free_dual_port();
    let port_b = free_dual_port();
    let a = P2pd::start(
        "bridge",
        &format!(
            "moniker = \"bridge\"\nchain_id = \"{chain}\"\n\n[p2p]\n\
             laddr = \"tcp://127.0.0.1:{port_a}\"\nquic_laddr = \"udp://127.0.0.1:{port_a}\"\n\
             persistent_peers = \"{}\"\n",
            go.p2p_address()
        ),
        &key_a,
    );
    let b = P2pd::start(
        "quic-only",
        &format!(
            "moniker = \"quic-only\"\nchain_id = \"{chain}\"\n\n[p2p]\n\
             laddr = \"\"\nquic_laddr = \"udp://127.0.0.1:{port_b}\"\n\
             persistent_peers = \"quic://{id_a}@127.0.0.1:{port_a}\"\n"
        ),
        &key_b,
    );

    // Go ⇄ A over MConn (A dials its persistent peer), B ⇄ A over QUIC.
    go.wait_for_peer(&id_a, T).unwrap();
    a.wait_log("A connects to Go over MConn", &["peer connected", go.node_id(), "protocol=mconn"]);
    b.wait_log("B connects to A over QUIC", &["peer connected", &id_a, "protocol=quic"]);
    a.wait_log("A accepts B over QUIC", &["peer connected", &id_b, "protocol=quic"]);
    // Go gossips a tx only to peers at a high enough consensus height: A mirrors Go's.
    go.wait_for_height(3, T).unwrap();

    let tx = b"p2pd-relay=1";
    let result = go.broadcast_tx_sync(tx).unwrap();
    let hash = result["hash"].as_str().expect("broadcast_tx_sync returns the hash").to_owned();
    assert_eq!(hash, p2p_node::gossip::tx_hash(tx));
    a.wait_log("A receives the tx from Go", &["new transaction", &hash, go.node_id()]);
    b.wait_log("B receives the tx from A", &["new transaction", &hash, &id_a]);
    // B received it once: no second "new transaction" line (the gossip de-duplicates).
    assert_eq!(b.log().lines().filter(|l| l.contains(&hash)).count(), 1);
}
