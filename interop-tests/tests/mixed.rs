//! Mixed MConn/QUIC networks through the `Router`: QUIC is preferred, MConn is the fallback
//! when UDP is dropped (in a network namespace with an nftables rule), a node without a QUIC
//! transport never dials `quic://` addresses, and two connections to the same peer over
//! different transports are resolved by the simultaneous-dial tie-break.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use p2p::echo::{Echo, echo_channel_descriptor};
use p2p::router::{ProtocolStats, RouterStats};
use p2p::{
    Direction, NodeAddress, NodeId, NodeInfo, NodeKey, PeerManagerConfig, PeerStatus, PeerUpdates,
    Protocol, Router, RouterConfig, Transport as _,
};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use p2p_transport_quic::{QuicConfig, QuicTransport};

/// Failure bound of every wait (not a sleep).
const T: Duration = Duration::from_secs(20);

/// Which transports a node has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stack {
    /// MConn on TCP port P and QUIC on UDP port P.
    Dual,
    /// QUIC only.
    QuicOnly,
}

struct Node {
    router: Arc<Router>,
    updates: PeerUpdates,
    id: NodeId,
    port: u16,
    _echo: p2p::Channel<Echo>,
}

impl Node {
    async fn start(stack: Stack, config: RouterConfig) -> Self {
        Self::start_knowing(stack, config, &[]).await
    }

    /// Starts a node that knows `known` from the start (so its first dial sees all of them).
    async fn start_knowing(stack: Stack, config: RouterConfig, known: &[NodeAddress]) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let key = NodeKey::generate();
        let id = key.node_id();
        let info = NodeInfo::new(id, "mixed", "node", Vec::<p2p::ChannelId>::new());
        let router = Router::new(key.clone(), info, config, PeerManagerConfig::default(), None)
            .map(Arc::new)
            .unwrap();
        let port = match stack {
            Stack::Dual => {
                // The same port number on TCP (MConn) and UDP (QUIC): bind TCP on an ephemeral
                // port, then UDP on the same number (retrying if that UDP port is taken).
                let mut bound = None;
                for _ in 0..20 {
                    let mconn = MConnTransport::bind(
                        "127.0.0.1:0".parse().unwrap(),
                        MConnConfig::default(),
                    )
                    .await
                    .unwrap();
                    let port = mconn.local_addr().unwrap().port();
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    if let Ok(quic) = QuicTransport::bind(addr, &key, QuicConfig::default()) {
                        bound = Some((mconn, quic, port));
                        break;
                    }
                }
                let (mconn, quic, port) = bound.expect("no port free on both TCP and UDP");
                router.add_transport(Arc::new(mconn)).unwrap();
                router.add_transport(Arc::new(quic)).unwrap();
                port
            }
            Stack::QuicOnly => {
                let quic = QuicTransport::bind(
                    "127.0.0.1:0".parse().unwrap(),
                    &key,
                    QuicConfig::default(),
                )
                .unwrap();
                let port = quic.local_addr().port();
                router.add_transport(Arc::new(quic)).unwrap();
                port
            }
        };
        let echo = router.open_channel::<Echo>(echo_channel_descriptor()).unwrap();
        let updates = router.subscribe();
        for address in known {
            router.add_address(address.clone()).unwrap();
        }
        router.start().unwrap();
        Self { router, updates, id, port, _echo: echo }
    }

    fn quic(&self) -> NodeAddress {
        format!("quic://{}@127.0.0.1:{}", self.id, self.port).parse().unwrap()
    }

    fn mconn(&self) -> NodeAddress {
        format!("mconn://{}@127.0.0.1:{}", self.id, self.port).parse().unwrap()
    }

    /// Waits for `PeerStatus::Up` of `peer`.
    async fn wait_up(&mut self, peer: NodeId) {
        tokio::time::timeout(T, async {
            loop {
                let u = self.updates.recv().await.unwrap();
                if u.node_id == peer && u.status == PeerStatus::Up {
                    return;
                }
            }
        })
        .await
        .expect("peer did not come up");
    }

    /// The protocol and direction of the connection to `peer`.
    fn link(&self, peer: NodeId) -> Option<(Protocol, Direction)> {
        let peers = self.router.connected_peers();
        let p = peers.iter().find(|p| p.node_id == peer)?;
        Some((p.endpoint.protocol.clone(), p.direction))
    }
}

fn protocol_stats(stats: &RouterStats, protocol: &Protocol) -> ProtocolStats {
    stats.protocols.iter().find(|(p, _)| p == protocol).map(|(_, s)| s.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_nodes_connect_over_quic_and_listen_on_one_port_number() {
    let mut b = Node::start(Stack::Dual, RouterConfig::default()).await;
    // Learned MConn first: the preference, not the order, picks QUIC.
    let mut a =
        Node::start_knowing(Stack::Dual, RouterConfig::default(), &[b.mconn(), b.quic()]).await;
    a.wait_up(b.id).await;
    b.wait_up(a.id).await;
    assert_eq!(a.link(b.id), Some((Protocol::QUIC, Direction::Outbound)));
    assert_eq!(b.link(a.id), Some((Protocol::QUIC, Direction::Inbound)));

    let (sa, sb) = (a.router.stats(), b.router.stats());
    assert_eq!(sa.dial_fallbacks, 0);
    let quic = protocol_stats(&sa, &Protocol::QUIC);
    assert_eq!((quic.dials_succeeded, quic.attempts_failed, quic.connected), (1, 0, 1));
    assert_eq!(protocol_stats(&sa, &Protocol::MCONN).attempts_failed, 0, "MConn never tried");
    assert_eq!(protocol_stats(&sb, &Protocol::QUIC).accepted, 1);
    assert_eq!(protocol_stats(&sb, &Protocol::MCONN).accepted, 0);
    // NodeInfo advertises the MConn (TCP) endpoint, which Go nodes can dial.
    assert_eq!(b.router.node_info().listen_addr, format!("127.0.0.1:{}", b.port));
    a.router.stop().await;
    b.router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_only_node_never_dials_mconn_addresses() {
    let mut b = Node::start(Stack::Dual, RouterConfig::default()).await;
    let known = [b.mconn(), b.quic()];
    let mut a = Node::start_knowing(Stack::QuicOnly, RouterConfig::default(), &known).await;
    a.wait_up(b.id).await;
    b.wait_up(a.id).await;
    assert_eq!(a.link(b.id), Some((Protocol::QUIC, Direction::Outbound)));
    let sa = a.router.stats();
    assert_eq!((sa.dials_failed, sa.dial_fallbacks), (0, 0));
    assert_eq!(sa.protocols.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), [Protocol::QUIC]);
    // The MConn address is kept (it can be shared), not dialed.
    let known = a.router.inspect_peer_manager(|pm, _| pm.addresses(b.id));
    assert!(known.contains(&b.mconn()));
    a.router.stop().await;
    b.router.stop().await;
}

/// A dials B over QUIC while B dials A over MConn, at the same time. Both nodes must settle on
/// the same single connection: the one dialed by the node with the lower ID (the same rule as
/// for simultaneous dials over one transport), whatever its transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_different_transports_are_resolved_by_the_tie_break() {
    for round in 0..3 {
        let mut a = Node::start(Stack::Dual, RouterConfig::default()).await;
        let mut b = Node::start(Stack::Dual, RouterConfig::default()).await;
        // Only one address each way, so each side dials its own transport.
        let (ra, rb) = (a.router.clone(), b.router.clone());
        let (qb, ma) = (b.quic(), a.mconn());
        tokio::join!(async { ra.add_address(qb).unwrap() }, async { rb.add_address(ma).unwrap() });
        a.wait_up(b.id).await;
        b.wait_up(a.id).await;
        let (lower_dials_quic, expect_a, expect_b) = if a.id < b.id {
            (true, (Protocol::QUIC, Direction::Outbound), (Protocol::QUIC, Direction::Inbound))
        } else {
            (false, (Protocol::MCONN, Direction::Inbound), (Protocol::MCONN, Direction::Outbound))
        };
        // A replaced connection shows up as Down then Up; wait for the two views to agree on
        // the winner (bounded), then check it stays.
        let agreed = tokio::time::timeout(T, async {
            loop {
                if a.link(b.id) == Some(expect_a.clone()) && b.link(a.id) == Some(expect_b.clone())
                {
                    return;
                }
                tokio::select! {
                    _ = a.updates.recv() => {}
                    _ = b.updates.recv() => {}
                }
            }
        })
        .await;
        assert!(
            agreed.is_ok(),
            "round {round}: lower ID dials QUIC: {lower_dials_quic}; A sees {:?}, B sees {:?}",
            a.link(b.id),
            b.link(a.id)
        );
        // Both dials ended (one won, one lost): nobody is still dialing or connected twice.
        for (n, other) in [(&a, b.id), (&b, a.id)] {
            let (dialing, connected) =
                n.router.inspect_peer_manager(|pm, _| (pm.is_dialing(other), pm.num_connected()));
            assert!(!dialing && connected == 1);
        }
        a.router.stop().await;
        b.router.stop().await;
    }
}

/// Set in the re-executed test process that runs inside its own network namespace.
const NETNS_ENV: &str = "P2P_TEST_IN_NETNS";

/// The fallback: B is dual-stack, but UDP is dropped (an nftables rule in a network namespace
/// this test creates, so nothing outside it is affected). A knows B's `quic://` and
/// `mconn://` addresses; it tries QUIC first, starts MConn after `fallback_delay`, and is
/// connected over MConn while the QUIC attempt is still pending, i.e. well within the dial
/// timeout: the abandoned QUIC attempt counts as neither failed nor timed out. A QUIC-only
/// node's dial of the same `quic://` address fails, proving UDP really is dropped.
#[test]
fn falls_back_to_mconn_when_udp_is_dropped() {
    if std::env::var_os(NETNS_ENV).is_some() {
        return fallback_in_netns();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(exe)
        .args(["--exact", "falls_back_to_mconn_when_udp_is_dropped", "--nocapture"])
        .env(NETNS_ENV, "1")
        .output()
        .expect("running unshare (util-linux) to create a network namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- namespaced run ---\n{stdout}\n{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the namespaced test failed (creating a network namespace needs root or \
         CAP_SYS_ADMIN): {}",
        out.status
    );
}

fn sh(program: &str, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// Collects the process's log lines (this process runs only the namespaced test).
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn fallback_in_netns() {
    let log = LogBuffer::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("p2p=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    sh("ip", &["link", "set", "lo", "up"], None);
    sh(
        "nft",
        &["-f", "-"],
        Some(
            "table inet p2p_test {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    meta l4proto udp drop\n  }\n}\n",
        ),
    );
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut b = Node::start(Stack::Dual, RouterConfig::default()).await;
        let mut config = RouterConfig::default();
        config.dial_timeout = Duration::from_secs(3);
        config.fallback_delay = Duration::from_millis(300);
        let mut a = Node::start_knowing(Stack::Dual, config, &[b.quic(), b.mconn()]).await;
        a.wait_up(b.id).await;
        b.wait_up(a.id).await;
        assert_eq!(a.link(b.id), Some((Protocol::MCONN, Direction::Outbound)));
        let sa = a.router.stats();
        assert_eq!(sa.dial_fallbacks, 1, "the dial fell back");
        assert_eq!(sa.dials_failed, 0);
        let quic = protocol_stats(&sa, &Protocol::QUIC);
        // Abandoned when MConn connected: had it failed or timed out (3 s), it would count.
        assert_eq!((quic.attempts_failed, quic.dials_succeeded), (0, 0));
        assert_eq!(protocol_stats(&sa, &Protocol::MCONN).dials_succeeded, 1);
        let text = log.text();
        let said = text.lines().find(|l| l.contains("fell back to another address"));
        let said = said.expect("the node logs the fallback");
        assert!(said.contains(&b.quic().to_string()) && said.contains("protocol=mconn"), "{said}");
        // Negative control: QUIC alone cannot reach B here.
        let key = NodeKey::generate();
        let c = QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &key, QuicConfig::default())
            .unwrap();
        let endpoint = p2p::Endpoint::socket(Protocol::QUIC, ([127, 0, 0, 1], b.port).into());
        let connect = async {
            let mut conn = c.dial(&endpoint).await.map_err(|e| e.to_string())?;
            conn.establish().await.map_err(|e| e.to_string())
        };
        let dialled = tokio::time::timeout(Duration::from_secs(1), connect).await;
        assert!(!matches!(dialled, Ok(Ok(()))), "QUIC connected although UDP is dropped");
        for n in [&a, &b] {
            n.router.stop().await;
        }
    });
}
