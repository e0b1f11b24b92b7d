//! What the node's process tests share: a `p2pd start` process in a temporary home.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use p2p::NodeKey;
use p2p_interop_tests::{free_port, wait_for};

/// Bound of every wait.
pub const T: Duration = Duration::from_secs(30);

/// A `p2pd start` process; killed (and its log printed) on drop.
pub struct P2pd {
    name: &'static str,
    child: Child,
    log: PathBuf,
    _home: tempfile::TempDir,
}

impl P2pd {
    /// Writes a home with `config` as config.toml and `key`, and starts the node.
    pub fn start(name: &'static str, config: &str, key: &NodeKey) -> Self {
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

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing all of `needles`; returns it.
    pub fn wait_log(&self, what: &str, needles: &[&str]) -> String {
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
            eprintln!("--- {} log ({}) ---\n{}", self.name, self.log.display(), self.log());
        }
    }
}

/// A port free on both TCP and UDP (the node listens on both with the same number).
pub fn free_dual_port() -> u16 {
    for _ in 0..50 {
        let port = free_port().unwrap();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both TCP and UDP");
}
