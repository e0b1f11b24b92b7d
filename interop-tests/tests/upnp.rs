//! UPnP against a real gateway: Debian's `miniupnpd` (package `miniupnpd-nftables`) in a router
//! network namespace between a LAN namespace and a WAN namespace, checked with Debian's
//! `upnpc` (package `miniupnpc`).
//!
//! * LAN `192.168.77.0/24` (node at .2, router at .1); WAN `11.0.0.0/24` (router at .1, peer at
//!   .2; miniupnpd refuses to serve a private external address). The router forwards and
//!   masquerades LAN→WAN; nothing WAN→LAN is forwarded except what miniupnpd maps.
//! * The node runs in the LAN namespace from a `config.toml` with `upnp = true` (this test
//!   binary re-executed under `ip netns exec`, with the node crate's library: config →
//!   `Node::start`, SIGTERM → `Node::stop`, as `p2pd start` does).
//! * While it runs, `upnpc -l` lists its TCP and UDP mappings with a finite lease; a WAN peer
//!   dials `mconn://` and `quic://` at the external IP and mapped ports and completes the node
//!   handshake over each; after SIGTERM and a clean stop `upnpc -l` lists nothing.
//!
//! Needs root (namespaces, nftables). A missing tool is a failure, never a skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use p2p::{NodeAddress, NodeKey, Protocol};
use p2p_node::config::Config;
use p2p_node::{Node, NodeOptions};

/// Bound of every wait (none of them is a sleep).
const T: Duration = Duration::from_secs(30);
const TEST: &str = "a_node_behind_miniupnpd_is_mapped_reachable_and_unmapped_on_stop";
const ROLE: &str = "P2P_UPNP_TEST_ROLE";
const HOME: &str = "P2P_UPNP_TEST_HOME";
const PEERS: &str = "P2P_UPNP_TEST_PEERS";
const CHAIN: &str = "upnp-test";
const PORT: u16 = 26656;
const LAN_NODE: &str = "192.168.77.2";

#[test]
fn a_node_behind_miniupnpd_is_mapped_reachable_and_unmapped_on_stop() {
    match std::env::var(ROLE).as_deref() {
        Ok("lan") => return lan_node(),
        Ok("wan") => return wan_peer(),
        _ => {}
    }
    let ip = tool("ip", "iproute2");
    let nft = tool("nft", "nftables");
    let miniupnpd = tool("miniupnpd", "miniupnpd-nftables");
    let upnpc = tool("upnpc", "miniupnpc");
    let dir = tempfile::tempdir().unwrap();
    let net = Net::create(&ip, &nft);
    let _gateway = Miniupnpd::start(&net, &miniupnpd, dir.path());

    // The node, on the LAN side.
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("config")).unwrap();
    std::fs::write(
        home.join("config/config.toml"),
        format!(
            "chain_id = \"{CHAIN}\"\n\n[p2p]\nladdr = \"tcp://0.0.0.0:{PORT}\"\n\
             quic_laddr = \"udp://0.0.0.0:{PORT}\"\nupnp = true\npeer_store_file = \"\"\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut node = Proc::spawn(
        Command::new(&ip)
            .args(["netns", "exec", &net.lan])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(ROLE, "lan")
            .env(HOME, &home),
    );
    let mconn = node.wait_line("the node's UPnP MConn address", "UPNP mconn://");
    let quic = node.wait_line("the node's UPnP QUIC address", "UPNP quic://");
    let mapped_after = started.elapsed();
    let mconn: NodeAddress = mconn.trim_start_matches("UPNP ").parse().unwrap();
    let quic: NodeAddress = quic.trim_start_matches("UPNP ").parse().unwrap();
    for a in [&mconn, &quic] {
        let (host, port) = a.host_port().unwrap();
        assert_eq!((host.to_string(), port), ("11.0.0.1".to_owned(), PORT), "{a}");
    }
    eprintln!("mapped {mapped_after:?} after the node process started");

    // The gateway's view.
    let upnpc_list = || {
        let out = Command::new(&ip)
            .args(["netns", "exec", &net.lan])
            .arg(&upnpc)
            .arg("-l")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut listing = String::new();
    wait(T, "upnpc -l to list the TCP and UDP mappings", || {
        listing = upnpc_list();
        mapping(&listing, "TCP").is_some() && mapping(&listing, "UDP").is_some()
    });
    eprintln!("upnpc -l while the node runs:\n{listing}");
    for protocol in ["TCP", "UDP"] {
        let (line, lease) = mapping(&listing, protocol).unwrap();
        assert!(line.contains("'p2p'"), "the description: {line}");
        assert!((1..=3600).contains(&lease), "a finite lease of at most 1 h: {line}");
    }

    // A peer on the WAN side reaches the node through each mapping.
    let wan = Command::new(&ip)
        .args(["netns", "exec", &net.wan])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(ROLE, "wan")
        .env(PEERS, format!("{mconn} {quic}"))
        .output()
        .unwrap();
    let wan_out = String::from_utf8_lossy(&wan.stdout);
    eprintln!("--- WAN peer ---\n{wan_out}\n{}", String::from_utf8_lossy(&wan.stderr));
    assert!(wan.status.success() && wan_out.contains("1 passed"), "the WAN peer failed");
    for protocol in ["mconn", "quic"] {
        assert!(wan_out.contains(&format!("WAN connected over {protocol}")), "{protocol}");
    }

    // A clean stop removes the mappings.
    node.signal_term();
    let status = node.wait_exit();
    assert!(status.success(), "the node did not stop cleanly: {status}");
    assert!(node.lines().iter().any(|l| l == "STOPPED"), "no clean stop");
    for a in [&mconn, &quic] {
        let advertised = format!("EXTERNAL {a}");
        assert!(
            node.lines().contains(&advertised),
            "{a} not among the router's external addresses"
        );
    }
    wait(T, "upnpc -l to list no mapping", || {
        listing = upnpc_list();
        mapping(&listing, "TCP").is_none() && mapping(&listing, "UDP").is_none()
    });
    eprintln!("upnpc -l after the stop:\n{listing}");
}

/// The `upnpc -l` line of our `protocol` mapping to the LAN node and its lease, seconds.
fn mapping(listing: &str, protocol: &str) -> Option<(String, u64)> {
    let target = format!("{PORT}->{LAN_NODE}:{PORT}");
    let line = listing.lines().find(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.get(1) == Some(&protocol) && words.get(2) == Some(&target.as_str())
    })?;
    let lease = line.split_whitespace().last()?.parse().ok()?;
    Some((line.to_owned(), lease))
}

/// The node process: `config.toml` from `$P2P_UPNP_TEST_HOME`, prints its UPnP addresses as
/// `UPNP <url>` lines, stops on SIGTERM, printing its router's external addresses as
/// `EXTERNAL <url>` lines first, and then `STOPPED`.
fn lan_node() {
    tracing_subscriber::fmt()
        .with_env_filter("p2p=info,p2p_node=info")
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let home = PathBuf::from(std::env::var_os(HOME).unwrap());
    let config = Config::load(home.join("config/config.toml")).unwrap();
    let options = config.node_options(&home, NodeKey::generate()).unwrap();
    assert!(options.upnp.is_some(), "upnp = true turns UPnP on");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    rt.unwrap().block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).unwrap();
        let node = Node::start(options).await.unwrap();
        let id = node.id();
        let mut status = node.upnp().expect("UPnP is on");
        let mut printed = Vec::new();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                changed = status.changed() => {
                    changed.unwrap();
                    let now = status.borrow_and_update().clone();
                    for a in p2p_node::upnp_node_addresses(id, &now) {
                        if !printed.contains(&a) {
                            println!("UPNP {a}");
                            printed.push(a);
                        }
                    }
                }
            }
        }
        // What peer exchange advertises: the mappings are confirmed external addresses.
        for a in node.router().external_addresses() {
            println!("EXTERNAL {a}");
        }
        node.stop().await;
        println!("STOPPED");
    });
}

/// The WAN peer: for each address in `$P2P_UPNP_TEST_PEERS`, a node that knows only that
/// address dials it and must complete the handshake over that protocol.
fn wan_peer() {
    tracing_subscriber::fmt()
        .with_env_filter("p2p=info")
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let peers: Vec<NodeAddress> =
        std::env::var(PEERS).unwrap().split_whitespace().map(|a| a.parse().unwrap()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    rt.unwrap().block_on(async {
        for peer in peers {
            let protocol = peer.protocol().clone();
            let mut options = NodeOptions::new(NodeKey::generate(), CHAIN).with_peer(peer.clone());
            if protocol == Protocol::QUIC {
                options = options.with_quic("0.0.0.0:0".parse().unwrap());
            } // else: a dial-only MConn transport.
            let node = Node::start(options).await.unwrap();
            let mut updates = node.router().subscribe();
            let up = tokio::time::timeout(T, async {
                loop {
                    let peers = node.router().connected_peers();
                    if let Some(p) = peers.iter().find(|p| p.node_id == peer.node_id()) {
                        return p.endpoint.protocol.clone();
                    }
                    updates.recv().await.unwrap();
                }
            })
            .await;
            let connected = up.unwrap_or_else(|_| panic!("no connection to {peer} within {T:?}"));
            assert_eq!(connected, protocol);
            println!("WAN connected over {protocol} to {peer}");
            node.stop().await;
        }
    });
}

/// `name` on PATH or in /usr/sbin; a missing tool fails the test.
fn tool(name: &str, package: &str) -> PathBuf {
    let dirs = std::env::var("PATH").unwrap_or_default();
    let found = dirs
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("`{name}` not found: install Debian's `{package}` (scripts/test does)")
    })
}

fn run(program: &Path, args: &[&str], stdin: Option<&str>) {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}; creating network namespaces needs root): {}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `f` until true, at most `bound`.
fn wait(bound: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {bound:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three network namespaces (LAN, router, WAN) joined by veth pairs; deleted on drop.
struct Net {
    ip: PathBuf,
    lan: String,
    router: String,
    wan: String,
}

impl Net {
    fn create(ip: &Path, nft: &Path) -> Self {
        let pid = std::process::id();
        let net = Self {
            ip: ip.to_owned(),
            lan: format!("p2pupnp{pid}l"),
            router: format!("p2pupnp{pid}r"),
            wan: format!("p2pupnp{pid}w"),
        };
        for ns in [&net.lan, &net.router, &net.wan] {
            run(ip, &["netns", "add", ns], None);
        }
        let (l, r, w) = (net.lan.as_str(), net.router.as_str(), net.wan.as_str());
        let steps: &[&[&str]] = &[
            &["-n", r, "link", "add", "rl", "type", "veth", "peer", "name", "l0", "netns", l],
            &["-n", r, "link", "add", "rw", "type", "veth", "peer", "name", "w0", "netns", w],
            &["-n", l, "addr", "add", "192.168.77.2/24", "dev", "l0"],
            &["-n", r, "addr", "add", "192.168.77.1/24", "dev", "rl"],
            &["-n", r, "addr", "add", "11.0.0.1/24", "dev", "rw"],
            &["-n", w, "addr", "add", "11.0.0.2/24", "dev", "w0"],
            &["-n", l, "link", "set", "l0", "up"],
            &["-n", l, "link", "set", "lo", "up"],
            &["-n", r, "link", "set", "rl", "up"],
            &["-n", r, "link", "set", "rw", "up"],
            &["-n", r, "link", "set", "lo", "up"],
            &["-n", w, "link", "set", "w0", "up"],
            &["-n", w, "link", "set", "lo", "up"],
            // The LAN routes via the router; the WAN has no route to the LAN at all.
            &["-n", l, "route", "add", "default", "via", "192.168.77.1"],
        ];
        for args in steps {
            run(ip, args, None);
        }
        let in_router = |program: &Path, args: &[&str], stdin: Option<&str>| {
            let mut all = vec!["netns", "exec", r, program.to_str().unwrap()];
            all.extend_from_slice(args);
            run(ip, &all, stdin);
        };
        in_router(Path::new("/bin/sh"), &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], None);
        // miniupnpd (nftables backend) adds its rules to these chains (named in its config).
        in_router(nft, &["-f", "-"], Some(RULES));
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.lan, &self.router, &self.wan] {
            let _ = Command::new(&self.ip).args(["netns", "del", ns]).status();
        }
    }
}

const RULES: &str = "\
table inet p2p_filter {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname \"rl\" oifname \"rw\" accept
    jump miniupnpd
  }
  chain miniupnpd {
  }
}
table inet p2p_nat {
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
    oifname \"rw\" masquerade
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
";

/// miniupnpd in the router namespace, in the foreground; killed on drop.
struct Miniupnpd {
    _proc: Proc,
}

impl Miniupnpd {
    fn start(net: &Net, binary: &Path, dir: &Path) -> Self {
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=rw\nlistening_ip=rl\nhttp_port=0\nenable_upnp=yes\n\
                 enable_natpmp=no\nsecure_mode=no\nsystem_uptime=yes\n\
                 uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b\n\
                 upnp_table_name=p2p_filter\nupnp_nat_table_name=p2p_nat\n\
                 upnp_forward_chain=miniupnpd\nupnp_nat_chain=prerouting_miniupnpd\n\
                 upnp_nat_postrouting_chain=postrouting_miniupnpd\n\
                 lease_file={}\n\
                 allow 1024-65535 192.168.77.0/24 1024-65535\n\
                 deny 0-65535 0.0.0.0/0 0-65535\n",
                dir.join("leases").display()
            ),
        )
        .unwrap();
        let mut proc = Proc::spawn(
            Command::new(&net.ip)
                .args(["netns", "exec", &net.router])
                .arg(binary)
                .arg("-f")
                .arg(&conf)
                .arg("-P")
                .arg(dir.join("miniupnpd.pid"))
                .arg("-d"),
        );
        proc.wait_line("miniupnpd to listen", "HTTP listening on port");
        Self { _proc: proc }
    }
}

/// A child process whose stdout and stderr lines are collected (and echoed on stderr); killed
/// on drop.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [Box::new(out) as Box<dyn std::io::Read + Send>, Box::new(err)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("  | {line}");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self { child, lines, seen: Vec::new() }
    }

    /// Waits (at most [`T`]) for a line containing `needle`; returns it from `needle` on.
    fn wait_line(&mut self, what: &str, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l[l.find(needle).unwrap()..].to_owned();
        }
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(at) = line.find(needle) {
                        return line[at..].to_owned();
                    }
                }
                Err(_) => {
                    let exited = self.child.try_wait().unwrap();
                    panic!("no line with {needle:?} ({what}) within {T:?}; exited: {exited:?}");
                }
            }
        }
    }

    fn lines(&mut self) -> Vec<String> {
        self.seen.extend(self.lines.try_iter());
        self.seen.clone()
    }

    fn signal_term(&self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    /// Waits (at most [`T`]) for the exit; collects the remaining output.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader threads end at EOF: drain what they still hold.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit within {T:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
