//! [`PriorityInbound`]: received messages, one bounded queue per channel, taken highest
//! priority first. Shared by the QUIC transports, whose streams deliver concurrently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use p2p::ChannelId;
use tokio::sync::{Notify, mpsc};

/// Received messages, one bounded queue per channel (filled by that channel's readers), so a
/// channel whose queue is full stops only its own readers: a flood on a bulk channel never
/// queues ahead of a vote. [`take`](Self::take) returns the message of the highest-priority
/// channel that has one, round-robin among channels of equal priority.
#[derive(Debug)]
pub struct PriorityInbound {
    /// Sorted by priority, highest first.
    queues: Mutex<Vec<Queue>>,
    /// A reader queued a message, or the connection's readers are done.
    ready: Notify,
    /// No reader will queue again: the queues drain, then receiving fails.
    done: AtomicBool,
    /// Messages per channel queue.
    capacity: usize,
    priorities: HashMap<u8, u8>,
}

#[derive(Debug)]
struct Queue {
    channel: u8,
    priority: u8,
    rx: mpsc::Receiver<Bytes>,
}

/// The sending half of one channel's queue (see [`PriorityInbound::register`]). Cloneable: with
/// one stream per message, every stream of the channel holds one.
#[derive(Debug, Clone)]
pub struct InboundSender {
    tx: mpsc::Sender<Bytes>,
}

impl InboundSender {
    /// Queues a message, waiting while the channel's queue is full; `false` if the receiving
    /// side is gone. Wake the receiver afterwards with [`PriorityInbound::notify`].
    pub async fn send(&self, message: Bytes) -> bool {
        self.tx.send(message).await.is_ok()
    }

    /// Queues a message if there is room now: `Err(message)` back if the queue is full (or the
    /// receiving side is gone; then [`send`](Self::send) says so).
    pub fn try_send(&self, message: Bytes) -> Result<(), Bytes> {
        self.tx.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PriorityInbound {
    /// Queues of `capacity` messages each (at least 1); `priorities` maps channel IDs to their
    /// priorities (unknown channels get 0).
    pub fn new(capacity: usize, priorities: HashMap<u8, u8>) -> Self {
        Self {
            queues: Mutex::new(Vec::new()),
            ready: Notify::new(),
            done: AtomicBool::new(false),
            capacity: capacity.max(1),
            priorities,
        }
    }

    /// A new queue for `channel`. Call once per channel (QUIC's one stream per channel) or keep
    /// the sender and clone it (lp2p's one stream per message).
    pub fn register(&self, channel: u8) -> InboundSender {
        let (tx, rx) = mpsc::channel(self.capacity);
        let priority = self.priorities.get(&channel).copied().unwrap_or(0);
        let mut queues = lock(&self.queues);
        let at = queues.iter().position(|q| q.priority < priority).unwrap_or(queues.len());
        queues.insert(at, Queue { channel, priority, rx });
        InboundSender { tx }
    }

    /// Wakes a waiting [`receive`](Self::receive) after a message was queued.
    pub fn notify(&self) {
        self.ready.notify_one();
    }

    /// The next message by priority, if one is queued.
    pub fn take(&self) -> Option<(ChannelId, Bytes)> {
        let mut queues = lock(&self.queues);
        let mut found = None;
        for (i, q) in queues.iter_mut().enumerate() {
            if let Ok(message) = q.rx.try_recv() {
                found = Some((i, q.priority, ChannelId(q.channel), message));
                break;
            }
        }
        let (i, priority, channel, message) = found?;
        // Round-robin: the queue served goes last among those of its priority.
        let end = (queues.iter().skip(i)).take_while(|q| q.priority == priority).count() + i;
        if let Some(group) = queues.get_mut(i..end) {
            group.rotate_left(1);
        }
        Some((channel, message))
    }

    /// No reader will queue messages any more (the connection ended).
    pub fn finish(&self) {
        self.done.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// The next message by priority, waiting for one; `None` once [`finish`](Self::finish) was
    /// called and the queues are empty. Callers serialise their calls (one receiver).
    pub async fn receive(&self) -> Option<(ChannelId, Bytes)> {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(message) = self.take() {
                return Some(message);
            }
            if self.done.load(Ordering::Acquire) {
                // Readers are gone; what they queued is taken above or here.
                return self.take();
            }
            ready.await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn highest_priority_first_round_robin_within_a_priority() {
        let inbound = PriorityInbound::new(4, HashMap::from([(1, 1), (2, 5), (3, 5)]));
        let low = inbound.register(1);
        let a = inbound.register(2);
        let b = inbound.register(3);
        for (tx, tag) in [(&low, b"l"), (&a, b"a"), (&a, b"a"), (&b, b"b"), (&b, b"b")] {
            assert!(tx.send(Bytes::from_static(tag)).await);
        }
        let order: Vec<u8> =
            std::iter::from_fn(|| inbound.take()).map(|(ch, _)| ch.0).collect::<Vec<_>>();
        assert_eq!(order, vec![2, 3, 2, 3, 1]);
        inbound.finish();
        assert_eq!(inbound.receive().await, None);
    }

    #[tokio::test]
    async fn receive_waits_for_a_message_and_drains_after_finish() {
        let inbound = std::sync::Arc::new(PriorityInbound::new(1, HashMap::new()));
        let tx = inbound.register(7);
        let waiter = {
            let inbound = inbound.clone();
            tokio::spawn(async move { inbound.receive().await })
        };
        assert!(tx.send(Bytes::from_static(b"x")).await);
        inbound.notify();
        assert_eq!(waiter.await.unwrap(), Some((ChannelId(7), Bytes::from_static(b"x"))));
        assert!(tx.send(Bytes::from_static(b"y")).await);
        inbound.finish();
        assert_eq!(inbound.receive().await, Some((ChannelId(7), Bytes::from_static(b"y"))));
        assert_eq!(inbound.receive().await, None);
    }
}
