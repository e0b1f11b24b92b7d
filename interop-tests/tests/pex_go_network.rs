//! Discovery with real Go CometBFT v0.38 networks (issue 7's acceptance):
//!
//! * A Rust node (the `p2p-node` library, PEX on) whose only configured peer is one node of a
//!   three-node Go network learns the other two through PEX, connects to all three, and all
//!   three Go nodes have its address in their address books (they serve it to a probe that
//!   asks); over a 60 s window no Go node punishes it (no ban, no error stop, no PEX
//!   violation).
//! * A Rust seed node (`seed_mode`) serves addresses to Go nodes that list it in `seeds`: the
//!   second Go node learns the first from the seed and connects to it, and the seed hangs up.
//!
//! Go nodes run with PEX on, `addr_book_strict = false` and `allow_duplicate_ip = true` (all on
//! 127.0.0.1; see the harness).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p::pex::{PexConfig, PexMessage, pex_channel_descriptor};
use p2p::{
    ChannelId, NodeId, NodeInfo, NodeKey, Outbound, PeerManagerConfig, PeerStatus, Router,
    RouterConfig,
};
use p2p_interop_tests::{GoBinary, GoNode, GoNodeConfig, wait_for};
use p2p_node::{Node, NodeOptions};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use tokio::runtime::Runtime;

const T: Duration = Duration::from_secs(30);
/// How long the Rust node is watched once connected to the whole Go network.
const WINDOW: Duration = Duration::from_secs(60);
/// Go logs its PEX reactor at debug level too.
const LOG_LEVEL: &str = "p2p:debug,pex:debug,*:info";

fn go_node(moniker: &str, chain: &str, f: impl FnOnce(&mut GoNodeConfig)) -> GoNode {
    let mut config = GoNodeConfig {
        moniker: moniker.into(),
        pex: true,
        chain_id: Some(chain.into()),
        log_level: LOG_LEVEL.into(),
        ..GoNodeConfig::new(GoBinary::Cometbft038)
    };
    f(&mut config);
    GoNode::start(config).unwrap()
}

/// A Rust node on MConn (127.0.0.1) on its own runtime.
fn rust_node(rt: &Runtime, chain: &str, peers: &[String], pex: PexConfig) -> Node {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut options = NodeOptions::new(NodeKey::generate(), chain)
        .with_moniker("rust")
        .with_mconn(SocketAddr::from(([127, 0, 0, 1], 0)));
    options.pex = Some(pex);
    for p in peers {
        options = options.with_peer(format!("mconn://{p}").parse().unwrap());
    }
    rt.block_on(Node::start(options)).unwrap()
}

fn connected(node: &Node) -> BTreeSet<String> {
    node.router().connected_peers().iter().map(|p| p.node_id.to_string()).collect()
}

/// Lines of `log` that contain all of `needles`.
fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines().filter(|l| needles.iter().all(|n| l.contains(n))).collect()
}

/// Connects a fresh node (PEX channel only, no reactor) to `go`, sends one `PexRequest` and
/// returns the node IDs in Go's answer.
async fn ask_for_addresses(go: &GoNode, chain: &str) -> Vec<String> {
    let key = NodeKey::generate();
    let info = NodeInfo::new(key.node_id(), chain, "probe", Vec::<ChannelId>::new());
    let router =
        Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
            .map(Arc::new)
            .unwrap();
    let transport =
        MConnTransport::bind("127.0.0.1:0".parse().unwrap(), MConnConfig::default()).await.unwrap();
    router.add_transport(Arc::new(transport)).unwrap();
    let mut channel = router.open_channel(pex_channel_descriptor()).unwrap();
    let mut updates = router.subscribe();
    router.start().unwrap();
    let go_id: NodeId = go.node_id().parse().unwrap();
    router.add_address(format!("mconn://{}", go.p2p_address()).parse().unwrap()).unwrap();
    let served = tokio::time::timeout(T, async {
        loop {
            let u = updates.recv().await.unwrap();
            if u.node_id == go_id && u.status == PeerStatus::Up {
                break;
            }
        }
        channel.send(Outbound::to(go_id, PexMessage::Request)).await.unwrap();
        loop {
            let envelope = channel.recv().await.expect("router stopped");
            if let PexMessage::Addrs { addresses, .. } = envelope.message {
                return addresses.iter().map(|a| a.node_id.to_string()).collect::<Vec<_>>();
            }
        }
    })
    .await
    .expect("Go did not answer the probe's PexRequest");
    router.stop().await;
    served
}

#[test]
fn rust_node_seeded_with_one_go_node_joins_a_three_node_go_network() {
    let chain = "pex-go-network";
    let a = go_node("go-a", chain, |_| {});
    let genesis = a.home().join("config").join("genesis.json");
    let b = go_node("go-b", chain, |c| {
        c.persistent_peers = vec![a.p2p_address()];
        c.genesis = Some(genesis.clone());
    });
    let c = go_node("go-c", chain, |c| {
        c.persistent_peers = vec![a.p2p_address()];
        c.genesis = Some(genesis.clone());
    });
    a.wait_for_peer(b.node_id(), T).unwrap();
    a.wait_for_peer(c.node_id(), T).unwrap();

    let rt = Runtime::new().unwrap();
    let rust = rust_node(&rt, chain, &[a.p2p_address()], PexConfig::default());
    let rust_id = rust.id().to_string();
    let go_ids: BTreeSet<String> = [&a, &b, &c].iter().map(|g| g.node_id().to_owned()).collect();
    wait_for(T, "the Rust node to learn B and C from A and connect to all three", || {
        Ok(go_ids.is_subset(&connected(&rust)))
    })
    .unwrap();
    let joined = Instant::now();
    // It dialed B and C, so it learned them by PEX (it was given A only).
    let dialed: BTreeSet<String> = (rust.router().connected_peers().iter())
        .filter(|p| p.direction == p2p::Direction::Outbound)
        .map(|p| p.node_id.to_string())
        .collect();
    assert!(dialed.contains(b.node_id()) && dialed.contains(c.node_id()), "{dialed:?}");

    // The observation window: Go's PEX ticks every 30 s, so every Go node gets to ask.
    std::thread::sleep(WINDOW.saturating_sub(joined.elapsed()));
    for (name, go) in [("A", &a), ("B", &b), ("C", &c)] {
        let bad = go.punishments_of(&rust_id);
        assert!(bad.is_empty(), "Go {name} punished the Rust node:\n{}", bad.join("\n"));
        assert!(go.has_peer(&rust_id).unwrap(), "Go {name} no longer lists the Rust node");
    }
    assert!(go_ids.is_subset(&connected(&rust)), "a Go peer dropped: {:?}", connected(&rust));
    let stats = rust.router().stats();
    let pex = stats.channels.iter().find(|(id, _)| *id == ChannelId(0)).unwrap().1;
    assert_eq!(pex.decode_errors, 0);
    eprintln!("Rust PEX channel: {} received, {} sent", pex.received, pex.sent_queued);

    // Every Go node has the Rust node's address in its address book: a fresh probe that asks
    // it for addresses gets ours. (Go saves its book to disk only every 2 minutes, and races
    // that save against its exit when stopped, so the file is no evidence.)
    for (name, go) in [("A", &a), ("B", &b), ("C", &c)] {
        let served = rt.block_on(ask_for_addresses(go, chain));
        assert!(served.contains(&rust_id), "Go {name} does not serve our address: {served:?}");
    }
    rt.block_on(rust.stop());
}

#[test]
fn rust_seed_serves_addresses_to_go_nodes_that_list_it_in_seeds() {
    let chain = "pex-rust-seed";
    let rt = Runtime::new().unwrap();
    let mut seed_config = PexConfig::default();
    seed_config.seed_mode = true;
    let seed = rust_node(&rt, chain, &[], seed_config);
    let seed_id = seed.id().to_string();
    let seed_address = format!("{seed_id}@127.0.0.1:{}", {
        let a = &seed.addresses()[0];
        a.host_port().unwrap().1
    });
    let seeds = |c: &mut GoNodeConfig| {
        c.extra_p2p.push(("seeds".into(), format!("\"{seed_address}\"")));
    };

    let a = go_node("go-a", chain, seeds);
    let a_id: NodeId = a.node_id().parse().unwrap();
    // The seed learns A's address from A's NodeInfo when A dials it.
    wait_for(T, "the seed to learn Go A's address", || {
        Ok(!seed.router().inspect_peer_manager(|pm, _| pm.addresses(a_id)).is_empty())
    })
    .unwrap();
    let genesis = a.home().join("config").join("genesis.json");
    let b = go_node("go-b", chain, |c| {
        seeds(c);
        c.genesis = Some(genesis.clone());
    });
    // B knows only the seed: it connects to A because the seed told it about A (or told A
    // about B).
    b.wait_for_peer(a.node_id(), T).unwrap();
    let (log_a, log_b) = (a.log(), b.log());
    let told_b = lines_with(&log_b, &["Received message", &seed_id, a.node_id()]);
    let told_a = lines_with(&log_a, &["Received message", &seed_id, b.node_id()]);
    assert!(
        !told_b.is_empty() || !told_a.is_empty(),
        "no PexAddrs from the seed naming the other Go node:\nB:\n{}\nA:\n{}",
        b.log_tail(40),
        a.log_tail(40)
    );
    // The seed hangs up after answering; Go sees an ordinary close, never a PEX violation.
    wait_for(T, "the seed to hang up", || {
        let stats = seed.router().stats();
        Ok(stats.evictions.iter().any(|(r, n)| *r == "hung_up" && *n > 0))
    })
    .unwrap();
    for (name, go) in [("A", &a), ("B", &b)] {
        let log = go.log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("unsolicited")
                    || l.contains("too soon")
                    || (l.contains(&seed_id)
                        && (l.to_lowercase().contains("ban") || l.contains("MarkBad")))
            })
            .collect();
        assert!(bad.is_empty(), "Go {name} punished the seed:\n{}", bad.join("\n"));
    }
    rt.block_on(seed.stop());
}
