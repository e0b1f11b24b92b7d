//! `p2pd start` against a real Go CometBFT v0.38.25 node: node A (MConn + QUIC on the same port
//! number) has the Go node as persistent peer; node B speaks only QUIC and has A as persistent
//! peer. A transaction given to the Go node's RPC reaches B through A, and B's log names the
//! transaction by the hash Go's RPC returned.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg(all(feature = "mconn", feature = "quic"))]

mod common;

use common::{P2pd, T, free_dual_port};
use p2p::NodeKey;
use p2p_interop_tests::{GoBinary, GoNode, GoNodeConfig};

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
