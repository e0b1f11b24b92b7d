//! A Rust node on the MConn transport for interop tests: its own Tokio runtime, so the test body
//! can block on the Go node's RPC while the router keeps running.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p2p::consensus::{HeightMirror, consensus_state_channel_descriptor, run_height_announcer};
use p2p::mempool::{MEMPOOL_CHANNEL, Txs, mempool_channel_descriptor};
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

/// A bounded set of recently seen transactions, for [`run_mempool_relay`].
///
/// Keeps the 64-bit hashes (SipHash with a random key per set, so peers cannot aim for
/// collisions) of the last `capacity` distinct transactions in a ring: when it is full, the
/// oldest entry is forgotten. Memory is `O(capacity)`, whatever the transactions' sizes.
#[derive(Debug)]
pub struct SeenTxs {
    capacity: usize,
    order: VecDeque<u64>,
    keys: HashSet<u64>,
    hasher: RandomState,
}

impl SeenTxs {
    /// An empty set that remembers at most `capacity` (at least 1) transactions.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            order: VecDeque::with_capacity(capacity),
            keys: HashSet::with_capacity(capacity),
            hasher: RandomState::new(),
        }
    }

    /// Records `tx`; returns whether it was new (not among the remembered ones).
    pub fn insert(&mut self, tx: &[u8]) -> bool {
        let key = self.hasher.hash_one(tx);
        if !self.keys.insert(key) {
            return false;
        }
        if self.order.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.keys.remove(&oldest);
        }
        self.order.push_back(key);
        true
    }

    /// Whether `tx` is remembered.
    pub fn contains(&self, tx: &[u8]) -> bool {
        self.keys.contains(&self.hasher.hash_one(tx))
    }

    /// How many transactions are remembered (at most the capacity).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The most transactions remembered at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Counters of a [`run_mempool_relay`] task.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Transactions received from peers (each tx of a batch counts).
    pub received: AtomicU64,
    /// Received transactions that were already in the seen-set, so not forwarded.
    pub duplicates: AtomicU64,
    /// (transaction, peer) pairs queued for sending.
    pub forwarded: AtomicU64,
    /// (transaction, peer) pairs that could not be queued (full queue, peer gone).
    pub dropped: AtomicU64,
}

impl RelayStats {
    /// `(received, duplicates, forwarded, dropped)` as of now.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (l(&self.received), l(&self.duplicates), l(&self.forwarded), l(&self.dropped))
    }
}

/// A minimal mempool relay (test scaffolding, no CheckTx): every transaction received on the
/// mempool channel that is not in `seen` is sent, one transaction per message as CometBFT does,
/// to every other connected peer that has the mempool channel, never back to its sender.
///
/// The peers are read from [`Router::connected_peers`] per received message (the channel API
/// has no "broadcast except the sender"). Runs until the router stops.
pub async fn run_mempool_relay(
    router: Arc<Router>,
    mut txs: Channel<Txs>,
    mut seen: SeenTxs,
    stats: Arc<RelayStats>,
) {
    while let Some(envelope) = txs.recv().await {
        let batch = envelope.message.0;
        let received = batch.len() as u64;
        let fresh: Vec<Vec<u8>> = batch.into_iter().filter(|tx| seen.insert(tx)).collect();
        stats.received.fetch_add(received, Ordering::Relaxed);
        stats.duplicates.fetch_add(received - fresh.len() as u64, Ordering::Relaxed);
        if fresh.is_empty() {
            continue;
        }
        let targets: Vec<NodeId> = router
            .connected_peers()
            .into_iter()
            .filter(|p| {
                p.node_id != envelope.from && p.node_info.channels.contains(&MEMPOOL_CHANNEL)
            })
            .map(|p| p.node_id)
            .collect();
        for peer in targets {
            for tx in &fresh {
                match txs.send(p2p::Outbound::to(peer, Txs(vec![tx.clone()]))).await {
                    Ok(out) => {
                        stats.forwarded.fetch_add(out.queued as u64, Ordering::Relaxed);
                        stats.dropped.fetch_add(out.dropped as u64, Ordering::Relaxed);
                    }
                    Err(p2p::router::SendError::RouterStopped) => return,
                    // The peer left since the snapshot (or the tx is too large for the channel,
                    // which cannot happen: both ends use the same limit).
                    Err(_) => {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
