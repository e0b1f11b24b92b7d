//! The PEX reactor against real Go nodes (CometBFT v0.38.25 and Tendermint v0.34.24): Go asks us
//! for addresses and accepts our answers, answers ours, and never disconnects or bans us.
//!
//! Topology, per Go version:
//!
//! * Go node **A** has the Rust node as persistent peer: A dials us, so A is outbound and sends
//!   its `PexRequest` right after connecting (and more at its `ensurePeers` ticks).
//! * Go node **B** (A's genesis, so A and B may connect without trouble) is dialed by the Rust
//!   node: we are outbound and ask B at once. B's own persistent peer is a fake address, which
//!   puts it in B's address book, so B's answer carries something new to us. B takes one
//!   inbound peer only (us), since it asks a random peer per tick and A would otherwise dial
//!   it after learning its address from us.
//! * The Rust node knows two fake addresses (127.0.0.5, nothing listens) to answer with.
//!
//! Over a 40 s window we check Go's p2p/pex debug log (`Request addrs`, `Received message` with
//! our addresses, `Dialing peer` to them) and that no line about the Rust node reports an error
//! stop, a ban, an unsolicited list or a too-early request; both Go nodes still list the Rust
//! node at the end, the Rust node never saw them go down, and it never penalised them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p::pex::{PexAddress, PexConfig, PexMessage, pex_channel_descriptor, run_pex_reactor};
use p2p::{
    Channel, ChannelId, NodeAddress, NodeId, NodeInfo, NodeKey, Outbound, PeerManagerConfig,
    PeerStatus, PeerUpdates, Router, RouterConfig,
};
use p2p_interop_tests::{GoBinary, GoNode, GoNodeConfig, free_port, wait_for};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(30);
/// How long both connections are watched.
const WINDOW: Duration = Duration::from_secs(40);
/// Go's `ensurePeers` runs first after a random 0-30 s and then every 30 s, asking one random
/// peer each time: a peer that connected just after the first tick is asked up to ~60 s after
/// the Go node started. Polling bound, not a sleep.
const GO_TICK_WAIT: Duration = Duration::from_secs(75);
/// Go logs the node's own PEX module at debug level too.
const LOG_LEVEL: &str = "p2p:debug,pex:debug,*:info";

/// A Rust node on MConn running the PEX reactor on its own runtime.
struct PexNode {
    rt: Runtime,
    router: Arc<Router>,
    updates: PeerUpdates,
    reactor: Option<JoinHandle<()>>,
    /// The PEX channel, when no reactor runs (the negative control drives it by hand).
    channel: Option<Channel<PexMessage>>,
    id: NodeId,
    port: u16,
}

impl PexNode {
    /// Starts a node that knows `known`, with the PEX reactor if `reactor`.
    fn start(chain_id: &str, known: &[NodeAddress], reactor: bool) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (router, updates, reactor, channel, id, port) = rt.block_on(async {
            let key = NodeKey::generate();
            let id = key.node_id();
            let transport =
                MConnTransport::bind("127.0.0.1:0".parse().unwrap(), MConnConfig::default())
                    .await
                    .unwrap();
            let port = transport.local_addr().unwrap().port();
            let info = NodeInfo::new(id, chain_id, "rust-pex", Vec::<ChannelId>::new());
            let router = Arc::new(
                Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
                    .unwrap(),
            );
            router.add_transport(Arc::new(transport)).unwrap();
            let channel = router.open_channel(pex_channel_descriptor()).unwrap();
            let reactor_updates = router.subscribe();
            let updates = router.subscribe();
            for address in known {
                router.add_address(address.clone()).unwrap();
            }
            router.start().unwrap();
            if reactor {
                let config = PexConfig::default();
                let task = run_pex_reactor(router.clone(), channel, None, reactor_updates, config);
                (router, updates, Some(tokio::spawn(task)), None, id, port)
            } else {
                (router, updates, None, Some(channel), id, port)
            }
        });
        Self { rt, router, updates, reactor, channel, id, port }
    }

    /// `<id>@127.0.0.1:<port>`, the form Go's `persistent_peers` takes.
    fn go_address(&self) -> String {
        format!("{}@127.0.0.1:{}", self.id, self.port)
    }

    fn knows(&self, address: &NodeAddress) -> bool {
        self.router.inspect_peer_manager(|pm, _| pm.addresses(address.node_id()).contains(address))
    }

    fn score(&self, peer: NodeId) -> Option<f64> {
        self.router.inspect_peer_manager(|pm, now| pm.score(peer, now))
    }

    fn is_connected_to(&self, peer: &str) -> bool {
        self.router.connected_peers().iter().any(|p| p.node_id.to_string() == peer)
    }

    /// The peers that went down so far (without waiting).
    fn downs(&mut self) -> Vec<NodeId> {
        let mut downs = Vec::new();
        while let Ok(Ok(u)) = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::ZERO, self.updates.recv()).await })
        {
            if u.status == PeerStatus::Down {
                downs.push(u.node_id);
            }
        }
        downs
    }

    /// Sends on the PEX channel directly (no reactor).
    fn send(&self, to: NodeId, message: PexMessage) {
        let channel = self.channel.as_ref().expect("no reactor runs");
        let out = self.rt.block_on(channel.send(Outbound::to(to, message))).unwrap();
        assert_eq!(out.queued, 1);
    }

    fn stop(mut self) {
        let reactor = self.reactor.take();
        self.rt.block_on(async {
            self.router.stop().await;
            if let Some(reactor) = reactor {
                let ended = tokio::time::timeout(T, reactor).await;
                ended.expect("the reactor ends with the router").unwrap();
            }
        });
    }
}

fn fake_address(ip: &str) -> NodeAddress {
    let id = NodeKey::generate().node_id();
    format!("mconn://{id}@{ip}:{}", free_port().unwrap()).parse().unwrap()
}

/// `id@ip:port`, as Go prints a `NetAddress`.
fn go_form(address: &NodeAddress) -> String {
    let (host, port) = address.host_port().unwrap();
    format!("{}@{host}:{port}", address.node_id())
}

/// Lines of `log` that contain all of `needles`.
fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines().filter(|l| needles.iter().all(|n| l.contains(n))).collect()
}

/// Lines that would mean Go punished the Rust node for something.
fn punishments(go: &GoNode, rust_id: &str) -> Vec<String> {
    go.punishments_of(rust_id)
}

fn pex_with_go(binary: GoBinary) {
    let started = Instant::now();
    let chain = format!("pex-{}", binary.name());
    let ours = [fake_address("127.0.0.5"), fake_address("127.0.0.5")];
    let behind_b = fake_address("127.0.0.6");
    let mut rust = PexNode::start(&chain, &ours, true);
    let rust_id = rust.id.to_string();

    let go_a = GoNode::start(GoNodeConfig {
        moniker: "go-a".into(),
        pex: true,
        persistent_peers: vec![rust.go_address()],
        chain_id: Some(chain.clone()),
        log_level: LOG_LEVEL.into(),
        ..GoNodeConfig::new(binary)
    })
    .unwrap();
    let go_b = GoNode::start(GoNodeConfig {
        moniker: "go-b".into(),
        pex: true,
        persistent_peers: vec![go_form(&behind_b)],
        // B asks one *random* peer per ensurePeers tick. A learns B's address from us and
        // dials it; with A as a second peer B would pick us only half the time. One inbound
        // slot (ours: we dial B before A can know B) makes B's choice certain.
        extra_p2p: vec![("max_num_inbound_peers".into(), "1".into())],
        genesis: Some(go_a.home().join("config").join("genesis.json")),
        chain_id: Some(chain.clone()),
        log_level: LOG_LEVEL.into(),
        ..GoNodeConfig::new(binary)
    })
    .unwrap();
    rust.router.add_address(format!("mconn://{}", go_b.p2p_address()).parse().unwrap()).unwrap();

    go_a.wait_for_peer(&rust_id, T).unwrap();
    go_b.wait_for_peer(&rust_id, T).unwrap();
    // Go may list us a moment before our router has admitted the connection.
    wait_for(T, "the Rust node to list both Go nodes", || {
        Ok(rust.is_connected_to(go_a.node_id()) && rust.is_connected_to(go_b.node_id()))
    })
    .unwrap();
    let connected = Instant::now();
    let go_a_id: NodeId = go_a.node_id().parse().unwrap();
    let go_b_id: NodeId = go_b.node_id().parse().unwrap();

    // A (outbound) asks us at once; our answer reaches A's reactor with our fake addresses.
    wait_for(T, "Go A to send us a PexRequest", || {
        Ok(!lines_with(&go_a.log(), &["Request addrs", &rust_id]).is_empty())
    })
    .unwrap();
    let our_ip = "127.0.0.5";
    wait_for(T, "Go A to receive our PexAddrs", || {
        Ok(!lines_with(&go_a.log(), &["Received message", our_ip]).is_empty())
    })
    .unwrap();
    // We asked B (our outbound peer) at once and learned B's persistent peer from its answer.
    wait_for(T, "the Rust node to learn B's address book entry", || Ok(rust.knows(&behind_b)))
        .unwrap();
    // A stored our addresses: its ensurePeers dials them.
    wait_for(GO_TICK_WAIT, "Go A to dial one of our addresses", || {
        Ok(!lines_with(&go_a.log(), &["Dialing peer", our_ip]).is_empty())
    })
    .unwrap();
    // B asks us at its first ensurePeers tick after we connected, and gets our addresses.
    wait_for(GO_TICK_WAIT, "Go B to ask us and receive our PexAddrs", || {
        let log = go_b.log();
        Ok(!lines_with(&log, &["Request addrs", &rust_id]).is_empty()
            && !lines_with(&log, &["Received message", our_ip]).is_empty())
    })
    .unwrap();

    std::thread::sleep(WINDOW.saturating_sub(connected.elapsed()));

    for (name, go) in [("A", &go_a), ("B", &go_b)] {
        let log = go.log();
        let pex_lines = lines_with(&log, &["module=pex", &rust_id]).join("\n");
        let bad = punishments(go, &rust_id);
        assert!(bad.is_empty(), "Go {name} punished the Rust node:\n{}", bad.join("\n"));
        let refused = lines_with(&log, &["Failed to add new address", our_ip]);
        assert!(refused.is_empty(), "Go {name} refused our addresses:\n{}", refused.join("\n"));
        assert!(go.has_peer(&rust_id).unwrap(), "Go {name} still lists the Rust node");
        let asked = lines_with(&log, &["Request addrs", &rust_id]).len();
        // Go logs a received PexRequest as `msg=` with nothing after it.
        let our_requests = (log.lines())
            .filter(|l| l.contains("Received message") && l.contains(&rust_id))
            .filter(|l| l.trim_end().ends_with("msg="))
            .count();
        let our_answers = lines_with(&log, &["Received message", &rust_id, our_ip]).len();
        eprintln!(
            "[{binary:?}] Go {name}: asked us {asked}x, got {our_answers} answers and \
             {our_requests} requests from us"
        );
        assert!(asked >= 1 && our_answers >= 1, "Go {name}:\n{pex_lines}");
        // We asked B on connect, and A at our first tick (B, asked < 30 s before, is not
        // eligible then). Go accepted both: nothing above says "too soon".
        assert!(our_requests >= 1, "Go {name} got our PexRequest:\n{pex_lines}");
    }
    assert!(rust.is_connected_to(go_a.node_id()) && rust.is_connected_to(go_b.node_id()));
    assert_eq!(rust.downs(), Vec::<NodeId>::new(), "no connection dropped");
    // Connecting earns +1 (decaying with a 1 h half-life); a penalty would cost at least 1.
    for (name, id) in [("A", go_a_id), ("B", go_b_id)] {
        let score = rust.score(id).unwrap();
        assert!(score > 0.5, "the Rust node penalised Go {name}: score {score}");
    }
    let stats = rust.router.stats();
    let pex = stats.channels.iter().find(|(id, _)| *id == ChannelId(0)).unwrap().1;
    assert_eq!(pex.decode_errors, 0);
    eprintln!(
        "[{binary:?}] Rust PEX channel: {} received, {} sent; watched {:?}, test {:?}",
        pex.received,
        pex.sent_queued,
        connected.elapsed(),
        started.elapsed(),
    );
    rust.stop();
}

#[test]
fn cometbft_038_pex() {
    pex_with_go(GoBinary::Cometbft038);
}

#[test]
fn tendermint_034_pex() {
    pex_with_go(GoBinary::Tendermint034);
}

/// Negative control: what the reactor avoids does get the Rust node punished, and the checks
/// above see it. A Rust node without the reactor sends three requests back to back (the third
/// is "too soon"), reconnects (Go's ban does not block inbound peers) and sends an unsolicited
/// PexAddrs.
fn go_punishes_what_the_reactor_avoids(binary: GoBinary) {
    let chain = format!("pex-neg-{}", binary.name());
    let go = GoNode::start(GoNodeConfig {
        moniker: "go-neg".into(),
        pex: true,
        chain_id: Some(chain.clone()),
        log_level: LOG_LEVEL.into(),
        ..GoNodeConfig::new(binary)
    })
    .unwrap();
    let rust = PexNode::start(&chain, &[], false);
    let rust_id = rust.id.to_string();
    let go_id: NodeId = go.node_id().parse().unwrap();
    rust.router.add_address(format!("mconn://{}", go.p2p_address()).parse().unwrap()).unwrap();
    wait_for(T, "the Rust node to connect", || Ok(rust.is_connected_to(go.node_id()))).unwrap();
    assert!(punishments(&go, &rust_id).is_empty());

    for _ in 0..3 {
        rust.send(go_id, PexMessage::Request);
    }
    wait_for(T, "Go to stop the Rust node for a request sent too soon", || {
        let bad = punishments(&go, &rust_id);
        Ok(bad.iter().any(|l| l.contains("too soon") && l.contains("Stopping peer for error")))
    })
    .unwrap();

    // The router redials; Go accepts the inbound connection despite the ban.
    wait_for(T, "Go to drop the Rust node", || Ok(!go.has_peer(&rust_id)?)).unwrap();
    wait_for(T, "the Rust node to reconnect", || {
        Ok(rust.is_connected_to(go.node_id()) && go.has_peer(&rust_id)?)
    })
    .unwrap();
    let fake = PexAddress::from_node_address(&fake_address("127.0.0.5")).unwrap();
    rust.send(go_id, PexMessage::addrs(vec![fake]));
    wait_for(T, "Go to stop the Rust node for unsolicited addresses", || {
        let bad = punishments(&go, &rust_id);
        Ok(bad.iter().any(|l| l.contains("unsolicited") && l.contains("Stopping peer for error")))
    })
    .unwrap();
    eprintln!("[{binary:?}] caught:\n{}", punishments(&go, &rust_id).join("\n"));
    rust.stop();
}

#[test]
fn cometbft_038_negative_control() {
    go_punishes_what_the_reactor_avoids(GoBinary::Cometbft038);
}

#[test]
fn tendermint_034_negative_control() {
    go_punishes_what_the_reactor_avoids(GoBinary::Tendermint034);
}
