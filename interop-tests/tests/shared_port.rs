//! One UDP port, two QUIC protocols: a router serving `p2p-quic/1` and lp2p (`libp2p`) on one
//! [`QuicEndpoint`]; a QUIC-only peer and an lp2p-only peer reach it at the same address, each
//! with its own ALPN, and their messages arrive.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use p2p::echo::{Echo, echo_channel_descriptor};
use p2p::{
    Channel, ChannelId, Endpoint, NodeAddress, NodeId, NodeInfo, NodeKey, Outbound,
    PeerManagerConfig, PeerStatus, PeerUpdates, Protocol, Router, RouterConfig, Transport,
};
use p2p_quic_endpoint::{EndpointConfig, QuicEndpoint};
use p2p_transport_lp2p::{Lp2pConfig, Lp2pTransport};
use p2p_transport_quic::{QuicConfig, QuicTransport};

const T: Duration = Duration::from_secs(20);

struct Node {
    router: Router,
    echo: Channel<Echo>,
    updates: PeerUpdates,
    id: NodeId,
}

fn node(key: NodeKey, transports: Vec<Arc<dyn Transport>>) -> Node {
    let id = key.node_id();
    let info = NodeInfo::new(id, "shared-port", "n", Vec::<ChannelId>::new());
    let router =
        Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
            .unwrap();
    for t in transports {
        router.add_transport(t).unwrap();
    }
    let echo = router.open_channel::<Echo>(echo_channel_descriptor()).unwrap();
    let updates = router.subscribe();
    router.start().unwrap();
    Node { router, echo, updates, id }
}

/// Waits until every peer in `peers` has been reported `Up` on `updates`, in any order (an update
/// for one peer must not be dropped while waiting for another).
async fn wait_up(updates: &mut PeerUpdates, peers: &[NodeId]) {
    let mut missing: Vec<NodeId> = peers.to_vec();
    tokio::time::timeout(T, async {
        while !missing.is_empty() {
            let u = updates.recv().await.unwrap();
            if u.status == PeerStatus::Up {
                missing.retain(|id| *id != u.node_id);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("peers never came up: {missing:?}"));
}

fn lo() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_and_lp2p_share_one_udp_port() {
    let key = NodeKey::generate();
    let endpoint = QuicEndpoint::bind(lo(), &key, QuicConfig::default().endpoint_config()).unwrap();
    let quic = QuicTransport::on_endpoint(&endpoint, QuicConfig::default()).unwrap();
    let lp2p = Lp2pTransport::on_endpoint(&endpoint, Lp2pConfig::default()).unwrap();
    let port = endpoint.local_addr();
    assert_eq!((quic.local_addr(), lp2p.local_addr()), (port, port));
    assert_eq!(endpoint.alpns(), vec![b"p2p-quic/1".to_vec(), b"libp2p".to_vec()]);
    let public = key.public_key();
    let mut hub = node(key, vec![Arc::new(quic), Arc::new(lp2p)]);
    let endpoints = hub.router.endpoints();
    assert!(endpoints.contains(&Endpoint::socket(Protocol::QUIC, port)), "{endpoints:?}");
    assert!(endpoints.contains(&Endpoint::socket(Protocol::LP2P, port)), "{endpoints:?}");

    let qkey = NodeKey::generate();
    let q = QuicTransport::bind(lo(), &qkey, QuicConfig::default()).unwrap();
    let mut quic_peer = node(qkey, vec![Arc::new(q)]);
    let lkey = NodeKey::generate();
    let l =
        Lp2pTransport::bind(lo(), &lkey, EndpointConfig::default(), Lp2pConfig::default()).unwrap();
    let mut lp2p_peer = node(lkey, vec![Arc::new(l)]);

    let host = p2p::Host::Ip(port.ip());
    quic_peer
        .router
        .add_address(NodeAddress::new_host(Protocol::QUIC, hub.id, host.clone(), port.port()))
        .unwrap();
    lp2p_peer
        .router
        .add_address(NodeAddress::new_with_key(Protocol::LP2P, public, host, port.port()))
        .unwrap();
    wait_up(&mut quic_peer.updates, &[hub.id]).await;
    wait_up(&mut lp2p_peer.updates, &[hub.id]).await;
    wait_up(&mut hub.updates, &[quic_peer.id, lp2p_peer.id]).await;

    let peers = hub.router.connected_peers();
    let proto = |id| peers.iter().find(|p| p.node_id == id).unwrap().endpoint.protocol.clone();
    assert_eq!(proto(quic_peer.id), Protocol::QUIC);
    assert_eq!(proto(lp2p_peer.id), Protocol::LP2P);
    assert_eq!(endpoint.stats().routed, 2, "{:?}", endpoint.stats());

    for (from, tag) in [(&quic_peer, "over quic"), (&lp2p_peer, "over lp2p")] {
        from.echo.send(Outbound::to(hub.id, Echo::Ping(tag.into()))).await.unwrap();
        let got = tokio::time::timeout(T, hub.echo.recv()).await.unwrap().unwrap();
        assert_eq!((got.from, got.message), (from.id, Echo::Ping(tag.into())));
    }
    for n in [&hub, &quic_peer, &lp2p_peer] {
        n.router.stop().await;
    }
}
