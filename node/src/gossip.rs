//! Transaction gossip on CometBFT's mempool channel (0x30): every transaction this node has not
//! seen recently, whether submitted locally or received from a peer, is sent once to every other
//! connected peer that has the channel (never back to the peer it came from).
//!
//! It keeps no mempool: no validation, no ordering, no eviction by fee. It is what a relayer, a
//! seed or a bridge between MConn and QUIC networks needs. What it remembers is bounded: a ring
//! of the last [`GossipConfig::cache_size`] transaction hashes (CometBFT's `cache_size` plays the
//! same role). Go peers send a transaction only to peers whose consensus height is high enough;
//! run [`p2p::consensus::run_height_announcer`] next to it to receive theirs.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use p2p::mempool::Txs;
use p2p::router::SendError;
use p2p::{Channel, NodeId, Outbound};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

/// Settings of [`TxGossip`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GossipConfig {
    /// How many recently seen transactions are remembered (default 10 000, CometBFT's
    /// `mempool.cache_size`).
    pub cache_size: usize,
    /// Locally submitted transactions waiting for the gossip task (default 1024).
    pub submit_queue: usize,
    /// Buffered [`TxEvent`]s per subscriber before it lags (default 4096).
    pub events_capacity: usize,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self { cache_size: 10_000, submit_queue: 1024, events_capacity: 4096 }
    }
}

/// A transaction this node saw for the first time.
#[derive(Debug, Clone)]
pub struct TxEvent {
    /// The transaction.
    pub tx: Bytes,
    /// The peer it came from; `None` if it was submitted locally.
    pub from: Option<NodeId>,
    /// When it arrived.
    pub at: Instant,
}

/// Counters of a [`TxGossip`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GossipStats {
    /// Transactions received from peers.
    pub received: u64,
    /// Received or submitted transactions already seen (not forwarded again).
    pub duplicates: u64,
    /// Transactions submitted locally.
    pub submitted: u64,
    /// Copies queued to peers.
    pub sent: u64,
    /// Copies a peer's full queue dropped.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    duplicates: AtomicU64,
    submitted: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
}

/// Why a transaction could not be submitted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The gossip task has stopped (the router stopped).
    #[error("transaction gossip has stopped")]
    Stopped,
}

/// Handle of a running transaction-gossip reactor. Cloning it is cheap.
#[derive(Debug, Clone)]
pub struct TxGossip {
    submit: mpsc::Sender<Bytes>,
    events: broadcast::Sender<TxEvent>,
    counters: Arc<Counters>,
}

impl TxGossip {
    /// Starts the reactor on `channel` (the mempool channel, opened before the router
    /// started). The task ends when the router stops.
    pub fn spawn(channel: Channel<Txs>, config: GossipConfig) -> Self {
        let (submit, submitted) = mpsc::channel(config.submit_queue.max(1));
        let (events, _) = broadcast::channel(config.events_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let task = GossipTask {
            channel,
            submitted,
            seen: SeenTxs::new(config.cache_size),
            events: events.clone(),
            counters: counters.clone(),
        };
        tokio::spawn(task.run());
        Self { submit, events, counters }
    }

    /// Gossips a transaction of this node to all peers (waits while the submit queue is full).
    pub async fn submit(&self, tx: impl Into<Bytes>) -> Result<(), SubmitError> {
        self.submit.send(tx.into()).await.map_err(|_| SubmitError::Stopped)
    }

    /// Every new transaction from now on (local or from peers).
    pub fn subscribe(&self) -> broadcast::Receiver<TxEvent> {
        self.events.subscribe()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GossipStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        GossipStats {
            received: l(&c.received),
            duplicates: l(&c.duplicates),
            submitted: l(&c.submitted),
            sent: l(&c.sent),
            dropped: l(&c.dropped),
        }
    }
}

struct GossipTask {
    channel: Channel<Txs>,
    submitted: mpsc::Receiver<Bytes>,
    seen: SeenTxs,
    events: broadcast::Sender<TxEvent>,
    counters: Arc<Counters>,
}

impl GossipTask {
    async fn run(mut self) {
        let mut submit_open = true;
        loop {
            let (txs, from) = tokio::select! {
                envelope = self.channel.recv() => match envelope {
                    Some(e) => {
                        self.counters.received.fetch_add(e.message.0.len() as u64, Ordering::Relaxed);
                        (e.message.0.into_iter().map(Bytes::from).collect::<Vec<_>>(), Some(e.from))
                    }
                    None => return,
                },
                tx = self.submitted.recv(), if submit_open => match tx {
                    Some(tx) => {
                        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
                        (vec![tx], None)
                    }
                    None => {
                        submit_open = false;
                        continue;
                    }
                },
            };
            for tx in txs {
                if !self.seen.insert(&tx) {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let hash = tx_hash(&tx);
                    match from {
                        Some(peer) => {
                            tracing::debug!(%hash, %peer, len = tx.len(), "new transaction")
                        }
                        None => tracing::debug!(%hash, len = tx.len(), "new local transaction"),
                    }
                }
                let _ = self.events.send(TxEvent { tx: tx.clone(), from, at: Instant::now() });
                let message = Txs(vec![tx.to_vec()]);
                let out = match from {
                    Some(peer) => Outbound::broadcast_except(peer, message),
                    None => Outbound::broadcast(message),
                };
                match self.channel.send(out).await {
                    Ok(outcome) => {
                        self.counters.sent.fetch_add(outcome.queued as u64, Ordering::Relaxed);
                        self.counters.dropped.fetch_add(outcome.dropped as u64, Ordering::Relaxed);
                    }
                    Err(SendError::RouterStopped) => return,
                    Err(error) => tracing::debug!(%error, "could not gossip a transaction"),
                }
            }
        }
    }
}

/// A transaction's hash as CometBFT prints it (RPC `broadcast_tx_*` `hash`, logs): SHA-256,
/// uppercase hex.
pub fn tx_hash(tx: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(tx);
    digest.iter().map(|b| format!("{b:02X}")).collect()
}

/// The hashes of the last `capacity` transactions seen (a ring; the oldest is forgotten first).
///
/// Hashes use a per-process random key (SipHash), so a peer cannot craft colliding
/// transactions to make us skip another's; a collision only means a transaction is not
/// forwarded by this node.
#[derive(Debug)]
pub struct SeenTxs {
    capacity: usize,
    order: VecDeque<u64>,
    keys: HashSet<u64>,
    hasher: RandomState,
}

impl SeenTxs {
    /// An empty set remembering at most `capacity` (at least 1) transactions.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            keys: HashSet::with_capacity(capacity.min(1 << 16)),
            hasher: RandomState::new(),
        }
    }

    /// Records `tx`; returns whether it was new.
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

    /// How many transactions are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_set_is_bounded_and_forgets_the_oldest() {
        let mut seen = SeenTxs::new(3);
        for tx in [b"a", b"b", b"c"] {
            assert!(seen.insert(tx));
        }
        assert!(!seen.insert(b"a"));
        assert!(seen.insert(b"d"), "new");
        assert_eq!(seen.len(), 3);
        assert!(seen.insert(b"a"), "the oldest was forgotten");
        assert!(!seen.insert(b"d"));
    }

    #[test]
    fn tx_hash_is_cometbft_style() {
        // SHA-256("abc"), uppercase.
        assert_eq!(
            tx_hash(b"abc"),
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
        );
    }
}
