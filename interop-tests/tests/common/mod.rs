//! A Rust node on the MConn transport for interop tests: its own Tokio runtime, so the test body
//! can block on the Go node's RPC while the router keeps running.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use p2p::consensus::{HeightMirror, consensus_state_channel_descriptor, run_height_announcer};
use p2p::mempool::{Txs, mempool_channel_descriptor};
use p2p::{
    Channel, ChannelId, NodeAddress, NodeId, NodeInfo, NodeKey, PeerManagerConfig, PeerStatus,
    PeerUpdates, Router, RouterConfig,
};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use tokio::runtime::Runtime;

/// A Rust node with the mempool channel.
pub struct RustNode {
    pub rt: Runtime,
    pub router: Router,
    pub updates: PeerUpdates,
    pub txs: Channel<Txs>,
    pub id: NodeId,
    pub port: u16,
}

impl RustNode {
    pub fn start(chain_id: &str, moniker: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (router, updates, txs, id, port) = rt.block_on(async {
            let key = NodeKey::generate();
            let id = key.node_id();
            let transport =
                MConnTransport::bind("127.0.0.1:0".parse().unwrap(), MConnConfig::default())
                    .await
                    .unwrap();
            let port = transport.local_addr().unwrap().port();
            let info = NodeInfo::new(id, chain_id, moniker, Vec::<ChannelId>::new());
            let router =
                Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
                    .unwrap();
            router.add_transport(Arc::new(transport)).unwrap();
            let txs = router
                .open_channel::<Txs>(mempool_channel_descriptor(p2p::mempool::DEFAULT_MAX_TX_BYTES))
                .unwrap();
            // Go gossips a mempool tx only to peers whose consensus height is at least the tx's
            // height - 1: announce the height our peers are at.
            let consensus = router.open_channel(consensus_state_channel_descriptor()).unwrap();
            tokio::spawn(run_height_announcer(consensus, router.subscribe(), HeightMirror::new()));
            let updates = router.subscribe();
            router.start().unwrap();
            (router, updates, txs, id, port)
        });
        Self { rt, router, updates, txs, id, port }
    }

    /// `<id>@127.0.0.1:<port>`, the form Go's `persistent_peers` takes.
    pub fn go_address(&self) -> String {
        format!("{}@127.0.0.1:{}", self.id, self.port)
    }

    pub fn dial(&self, go_address: &str) {
        let addr: NodeAddress = go_address.parse().unwrap();
        self.router.add_address(addr).unwrap();
    }

    /// Waits for the next Up update and returns the peer.
    pub fn wait_up(&mut self, timeout: Duration) -> NodeId {
        let updates = &mut self.updates;
        self.rt.block_on(async {
            loop {
                let u = tokio::time::timeout(timeout, updates.recv())
                    .await
                    .expect("a peer should come up")
                    .unwrap();
                if u.status == PeerStatus::Up {
                    return u.node_id;
                }
            }
        })
    }

    /// Receives mempool messages until one contains `tx`.
    pub fn wait_tx(&mut self, tx: &[u8], timeout: Duration) -> NodeId {
        let txs = &mut self.txs;
        self.rt.block_on(async {
            tokio::time::timeout(timeout, async {
                loop {
                    let env = txs.recv().await.expect("channel open");
                    if env.message.0.iter().any(|t| t == tx) {
                        return env.from;
                    }
                }
            })
            .await
            .expect("transaction should arrive")
        })
    }

    pub fn send_tx(&self, to: NodeId, tx: &[u8]) {
        let out =
            self.rt.block_on(self.txs.send(p2p::Outbound::to(to, Txs(vec![tx.to_vec()])))).unwrap();
        assert_eq!(out.queued, 1);
    }

    /// Whether a Down update arrived (without waiting).
    pub fn saw_down(&mut self) -> bool {
        let mut down = false;
        while let Ok(Ok(u)) = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::ZERO, self.updates.recv()).await })
        {
            down |= u.status == PeerStatus::Down;
        }
        down
    }

    pub fn stop(self) {
        self.rt.block_on(self.router.stop());
    }
}
