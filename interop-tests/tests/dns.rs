//! DNS host names in node addresses, against a real DNS server: Debian's `dnsmasq` (package
//! `dnsmasq-base`), run on a free loopback port with its own hosts file, which the tests rewrite
//! and make it reload (SIGHUP).
//!
//! * lookups return every address of a name, IPv6 and IPv4 interleaved;
//! * names that do not exist, or have no address, fail with typed errors naming the host;
//! * answers are cached for their TTL, and no longer;
//! * a router dialling a peer by host name follows a changed record on its next dial.
//!
//! A missing `dnsmasq` fails the tests (CI installs it); it is never a skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use p2p::echo::{Echo, echo_channel_descriptor};
use p2p::{
    Endpoint, EndpointAddr, NodeAddress, NodeId, NodeInfo, NodeKey, PeerManagerConfig, PeerStatus,
    PeerUpdates, ResolveError, Resolver, Router, RouterConfig,
};
use p2p_transport_mconn::{MConnConfig, MConnTransport};

/// Failure bound of every wait (not a sleep).
const T: Duration = Duration::from_secs(20);

/// A node ID for addresses that are only resolved, never dialled.
const ID: &str = "10ba682c8ad13513971e8b56881aab8bd702bb80";

/// A `dnsmasq` answering for `*.test` from a hosts file, on `127.0.0.1:<free port>`, killed on
/// drop.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    hosts: PathBuf,
    /// dnsmasq's log lines (it logs to stderr).
    log: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq with `hosts` (hosts-file syntax) as its only data, plus `extra` options,
    /// and waits until it has read the file.
    fn start(hosts: &str, extra: &[&str]) -> Self {
        let binary = dnsmasq_binary();
        let dir = tempfile::tempdir().unwrap();
        let hosts_path = dir.path().join("hosts");
        std::fs::write(&hosts_path, hosts).unwrap();
        let mut last_log = Vec::new();
        // The port is free when picked but may be taken before dnsmasq binds it: retry.
        for _ in 0..10 {
            let port = free_port();
            let mut cmd = Command::new(&binary);
            cmd.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--pid-file",
                "--log-facility=-",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local=/test/",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts_path.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
            if rustix::process::getuid().is_root() {
                // Else dnsmasq drops to `nobody`, who cannot re-read our private hosts file.
                cmd.arg("--user=root");
            }
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {binary:?}: {e}"));
            let stderr = child.stderr.take().unwrap();
            let (tx, log) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            match wait_for_read(&log, &mut child, &hosts_path) {
                Ok(()) => {
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    return Self { child, addr, hosts: hosts_path, log, _dir: dir };
                }
                Err(lines) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let in_use = lines.iter().any(|l| l.contains("Address already in use"));
                    last_log = lines;
                    if !in_use {
                        break;
                    }
                }
            }
        }
        panic!("dnsmasq did not start:\n{}", last_log.join("\n"));
    }

    /// Replaces the hosts file and makes dnsmasq reload it (SIGHUP, which also empties its
    /// cache); returns once it has.
    fn set_hosts(&mut self, hosts: &str) {
        // Write a new file and rename it over the old: dnsmasq never sees half a file.
        let tmp = self.hosts.with_extension("new");
        std::fs::write(&tmp, hosts).unwrap();
        std::fs::rename(&tmp, &self.hosts).unwrap();
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
        if let Err(log) = wait_for_read(&self.log, &mut self.child, &self.hosts) {
            panic!("dnsmasq did not reload {}:\n{}", self.hosts.display(), log.join("\n"));
        }
    }

    fn resolver(&self) -> Resolver {
        Resolver::with_nameserver(self.addr).unwrap()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until dnsmasq logs that it (re)read `hosts`; on a failure to read it, an
/// exit or a timeout, returns the log lines seen.
fn wait_for_read(
    log: &mpsc::Receiver<String>,
    child: &mut Child,
    hosts: &Path,
) -> Result<(), Vec<String>> {
    let wanted = format!("read {}", hosts.display());
    let deadline = std::time::Instant::now() + T;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(&wanted) => return Ok(()),
            Ok(line) if line.contains("failed to load names") => {
                seen.push(line);
                return Err(seen);
            }
            Ok(line) => seen.push(line),
            Err(_) => {
                match child.try_wait() {
                    Ok(Some(status)) => seen.push(format!("(dnsmasq exited: {status})")),
                    _ => seen.push("(no such log line in time)".to_owned()),
                }
                return Err(seen);
            }
        }
    }
}

/// `dnsmasq` on `PATH`, or in `/usr/sbin` (not on a normal user's `PATH` on Debian).
fn dnsmasq_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("dnsmasq"))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!(
                "dnsmasq not found (on PATH or in /usr/sbin): these tests run a real DNS server; \
                 install Debian's dnsmasq-base (apt-get install dnsmasq-base)"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A port free on 127.0.0.1 for both UDP and TCP, right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn address(host: &str, port: u16) -> NodeAddress {
    format!("mconn://{ID}@{host}:{port}").parse().unwrap()
}

fn socket(endpoint: &Endpoint) -> SocketAddr {
    match endpoint.addr {
        EndpointAddr::Socket(s) => s,
        ref other => panic!("not a socket endpoint: {other:?}"),
    }
}

fn ips(endpoints: &[Endpoint]) -> Vec<IpAddr> {
    endpoints.iter().map(|e| socket(e).ip()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_return_every_ipv6_and_ipv4_address_interleaved() {
    let dns = Dnsmasq::start(
        "2001:db8::1 multi.test\n\
         2001:db8::2 multi.test\n\
         192.0.2.1 multi.test\n\
         192.0.2.2 multi.test\n\
         192.0.2.3 multi.test\n\
         192.0.2.9 v4only.test\n\
         2001:db8::9 v6only.test\n",
        &[],
    );
    let resolver = dns.resolver();

    let endpoints = address("multi.test", 26656).resolve_with(&resolver).await.unwrap();
    assert!(endpoints.iter().all(|e| socket(e).port() == 26656), "{endpoints:?}");
    let found = ips(&endpoints);
    let families: Vec<bool> = found.iter().map(IpAddr::is_ipv6).collect();
    assert_eq!(families, [true, false, true, false, false], "IPv6 first, interleaved: {found:?}");
    let mut sorted = found.clone();
    sorted.sort();
    let want: Vec<IpAddr> = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "2001:db8::2"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(sorted, want, "every address, once");

    // A name with one family: the empty answer for the other does not fail the lookup.
    let found = resolver.lookup("v4only.test", 1).await.unwrap();
    assert_eq!(found, ["192.0.2.9:1".parse::<SocketAddr>().unwrap()]);
    let found = resolver.lookup("v6only.test", 1).await.unwrap();
    assert_eq!(found, ["[2001:db8::9]:1".parse::<SocketAddr>().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_without_addresses_fail_with_typed_errors_naming_the_host() {
    let dns = Dnsmasq::start("192.0.2.1 exists.test\n", &["--txt-record=txt-only.test,hello"]);
    let resolver = dns.resolver();

    let e = address("missing.test", 26656).resolve_with(&resolver).await.unwrap_err();
    assert!(
        matches!(&e, ResolveError::NoSuchHost { host, port: 26656 } if host == "missing.test"),
        "{e:?}"
    );
    assert!(e.to_string().contains("\"missing.test\""), "{e}");
    assert!(e.to_string().contains("NXDOMAIN"), "{e}");

    // The name exists (it has a TXT record) but has no A or AAAA record.
    let e = address("txt-only.test", 7).resolve_with(&resolver).await.unwrap_err();
    assert!(
        matches!(&e, ResolveError::NoAddresses { host, port: 7 } if host == "txt-only.test"),
        "{e:?}"
    );
    assert!(e.to_string().contains("\"txt-only.test\""), "{e}");

    // The failures did not break the resolver.
    let found = resolver.lookup("exists.test", 1).await.unwrap();
    assert_eq!(found, ["192.0.2.1:1".parse::<SocketAddr>().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_for_their_ttl_and_no_longer() {
    // Records with a TTL of one hour.
    let mut dns = Dnsmasq::start("192.0.2.1 long.test\n", &["--local-ttl=3600"]);
    let cached = dns.resolver();
    assert_eq!(ips(&address("long.test", 1).resolve_with(&cached).await.unwrap()), [v4(1)]);
    dns.set_hosts("192.0.2.2 long.test\n");
    // The server has the new record (a new resolver, with an empty cache, sees it) ...
    let fresh = dns.resolver();
    assert_eq!(ips(&address("long.test", 1).resolve_with(&fresh).await.unwrap()), [v4(2)]);
    // ... but the old answer's TTL has not run out: the first resolver does not ask again.
    assert_eq!(ips(&address("long.test", 1).resolve_with(&cached).await.unwrap()), [v4(1)]);
    // Clones share the cache.
    let clone = cached.clone();
    assert_eq!(ips(&address("long.test", 1).resolve_with(&clone).await.unwrap()), [v4(1)]);
    drop(dns);

    // Records with a TTL of 0 are not cached: the next lookup sees a change at once.
    let mut dns = Dnsmasq::start("192.0.2.1 short.test\n", &["--local-ttl=0"]);
    let resolver = dns.resolver();
    assert_eq!(ips(&address("short.test", 1).resolve_with(&resolver).await.unwrap()), [v4(1)]);
    dns.set_hosts("192.0.2.2 short.test\n");
    assert_eq!(ips(&address("short.test", 1).resolve_with(&resolver).await.unwrap()), [v4(2)]);
}

fn v4(last: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, last])
}

/// A started router.
struct Node {
    router: Arc<Router>,
    updates: PeerUpdates,
    listen: SocketAddr,
    /// MConn needs a channel; this one is never used.
    _echo: p2p::Channel<Echo>,
}

/// A started router with `mconn` as its transport.
async fn router(
    key: NodeKey,
    mconn: MConnTransport,
    config: RouterConfig,
    pm: PeerManagerConfig,
) -> Node {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let info = NodeInfo::new(key.node_id(), "dns-test", "node", Vec::<p2p::ChannelId>::new());
    let router = Arc::new(Router::new(key, info, config, pm, None).unwrap());
    let listen = mconn.local_addr().unwrap();
    router.add_transport(Arc::new(mconn)).unwrap();
    let echo = router.open_channel::<Echo>(echo_channel_descriptor()).unwrap();
    let updates = router.subscribe();
    router.start().unwrap();
    Node { router, updates, listen, _echo: echo }
}

async fn mconn(listen: SocketAddr) -> std::io::Result<MConnTransport> {
    MConnTransport::bind(listen, MConnConfig::default()).await
}

/// Waits (bounded) for `status` of `peer`, skipping other updates.
async fn wait_for(updates: &mut PeerUpdates, peer: NodeId, status: PeerStatus) {
    tokio::time::timeout(T, async {
        loop {
            let u = updates.recv().await.unwrap();
            if u.node_id == peer && u.status == status {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {status:?} update for {peer}"));
}

/// The endpoint `router` is connected to `peer` at.
fn endpoint_of(router: &Router, peer: NodeId) -> SocketAddr {
    let peers = router.connected_peers();
    let summary = peers.iter().find(|p| p.node_id == peer).expect("peer not connected");
    socket(&summary.endpoint)
}

/// The acceptance test: a peer named by host name, the record changed, the next dial goes to
/// the new address.
///
/// `peer.test` points at 127.0.0.2, where node K listens; the dialler connects there. Then the
/// same node K (same key) also listens on 127.0.0.3, the record is changed to 127.0.0.3 and the
/// first instance stops: the dialler's next dial resolves the name again and connects to
/// 127.0.0.3, which only the second instance serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_dial_follows_a_changed_record() {
    let mut dns = Dnsmasq::start("127.0.0.2 peer.test\n", &["--local-ttl=0"]);
    // Node K's two homes: the same port on 127.0.0.2 and on 127.0.0.3.
    let mut homes = None;
    for _ in 0..20 {
        let old = mconn("127.0.0.2:0".parse().unwrap()).await.unwrap();
        let port = old.local_addr().unwrap().port();
        if let Ok(new) = mconn(SocketAddr::from(([127, 0, 0, 3], port))).await {
            homes = Some((old, new, port));
            break;
        }
    }
    let (old_home, new_home, port) = homes.expect("no port free on both 127.0.0.2 and 127.0.0.3");
    let key = NodeKey::generate();
    let k = key.node_id();
    let any = PeerManagerConfig::default;
    let old = router(key.clone(), old_home, RouterConfig::default(), any()).await;
    let by_name: NodeAddress = format!("mconn://{k}@peer.test:{port}").parse().unwrap();

    let mut config = RouterConfig::default();
    config.resolver = Some(dns.resolver());
    let pm = PeerManagerConfig { persistent_peers: vec![by_name.clone()], ..any() };
    let own = mconn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut dialer = router(NodeKey::generate(), own, config, pm).await;
    let d = dialer.router.node_id();

    wait_for(&mut dialer.updates, k, PeerStatus::Up).await;
    assert_eq!(endpoint_of(&dialer.router, k), old.listen);

    // The same node (same key) also on its new home; then the record changes and the old
    // home closes.
    let mut new = router(key, new_home, RouterConfig::default(), any()).await;
    dns.set_hosts("127.0.0.3 peer.test\n");
    old.router.stop().await;

    wait_for(&mut dialer.updates, k, PeerStatus::Down).await;
    wait_for(&mut dialer.updates, k, PeerStatus::Up).await;
    assert_eq!(endpoint_of(&dialer.router, k), new.listen, "the redial used the changed record");
    assert_eq!(new.listen, SocketAddr::from(([127, 0, 0, 3], port)));
    wait_for(&mut new.updates, d, PeerStatus::Up).await;
    // The address the dialler knows is still the name, not an IP.
    let known = dialer.router.inspect_peer_manager(|pm, _| pm.addresses(k));
    assert_eq!(known, [by_name]);

    dialer.router.stop().await;
    new.router.stop().await;
}

/// A name with a silent address first: `both.test` has `::1` (where a UDP socket takes QUIC
/// packets and never answers) and `127.0.0.1` (where node K serves QUIC on the same port). The
/// resolver puts IPv6 first, so the dialer's first attempt goes into the void; the endpoints
/// are raced, so the second starts after the fallback delay and wins. The dial timeout is
/// longer than the test's bound: trying the endpoints one after the other would not connect in
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_address_of_a_name_costs_a_fallback_delay_not_a_dial_timeout() {
    use p2p_transport_quic::{QuicConfig, QuicTransport};

    let dns = Dnsmasq::start("::1 both.test\n127.0.0.1 both.test\n", &[]);
    let resolved = address("both.test", 1).resolve_with(&dns.resolver()).await.unwrap();
    assert_eq!(ips(&resolved), ["::1".parse::<IpAddr>().unwrap(), "127.0.0.1".parse().unwrap()]);

    // Node K on 127.0.0.1:P (QUIC) and a black hole on [::1]:P (UDP).
    let key = NodeKey::generate();
    let k = key.node_id();
    let mut bound = None;
    for _ in 0..20 {
        let quic = QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &key, QuicConfig::default())
            .unwrap();
        let port = quic.local_addr().port();
        if let Ok(hole) = UdpSocket::bind(("::1", port)) {
            bound = Some((quic, hole, port));
            break;
        }
    }
    let (quic, _hole, port) = bound.expect("no port free on both 127.0.0.1 and ::1");
    let info = NodeInfo::new(k, "dns-test", "k", Vec::<p2p::ChannelId>::new());
    let node_k = Arc::new(
        Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
            .unwrap(),
    );
    node_k.add_transport(Arc::new(quic)).unwrap();
    let _echo_k = node_k.open_channel::<Echo>(echo_channel_descriptor()).unwrap();
    node_k.start().unwrap();

    let mut config = RouterConfig::default();
    config.resolver = Some(dns.resolver());
    config.dial_timeout = T * 3;
    config.fallback_delay = Duration::from_millis(200);
    let by_name: NodeAddress = format!("quic://{k}@both.test:{port}").parse().unwrap();
    let pm = PeerManagerConfig { persistent_peers: vec![by_name], ..PeerManagerConfig::default() };
    let dialer_key = NodeKey::generate();
    let info = NodeInfo::new(dialer_key.node_id(), "dns-test", "d", Vec::<p2p::ChannelId>::new());
    // Dual-stack client socket, so both families can be dialed.
    let client =
        QuicTransport::bind("[::]:0".parse().unwrap(), &dialer_key, QuicConfig::default()).unwrap();
    let dialer = Arc::new(Router::new(dialer_key, info, config, pm, None).unwrap());
    dialer.add_transport(Arc::new(client)).unwrap();
    let _echo_d = dialer.open_channel::<Echo>(echo_channel_descriptor()).unwrap();
    let mut updates = dialer.subscribe();
    dialer.start().unwrap();

    wait_for(&mut updates, k, PeerStatus::Up).await;
    let at = endpoint_of(&dialer, k);
    assert_eq!(at.ip().to_canonical(), IpAddr::from([127, 0, 0, 1]), "connected via IPv4");
    dialer.stop().await;
    node_k.stop().await;
}
