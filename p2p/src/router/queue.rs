//! Per-peer outbound queues.
//!
//! Each connected peer has one [`PeerQueue`]: a bounded FIFO per channel plus a scheduler that
//! decides which channel the peer's writer task serves next. Enqueueing never waits for the
//! writer: it takes a per-peer mutex for a few hundred nanoseconds, so a stuck peer can only fill
//! its *own* queues (tendermint#8903 cannot happen).
//!
//! # Scheduling: strict priority classes, round-robin within a class
//!
//! Channels are grouped by [`ChannelDescriptor::priority`](super::ChannelDescriptor::priority).
//! The writer always serves the highest class that has a message waiting; channels that share a
//! priority are served one message at a time in turn. Within one channel the order is strict
//! FIFO. Strict classes starve lower classes while a higher class is saturated: give bulk
//! channels (block parts, mempool) lower priorities than latency-critical ones (votes), and
//! bound the producers of high classes.
//!
//! The scheduler ([`Scheduler`]) is a plain data structure with no locking or I/O, tested
//! deterministically below.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::types::ChannelId;

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued.
    Queued,
    /// Queued after dropping the oldest queued message of the channel.
    QueuedDroppedOldest,
    /// Not queued: the channel's queue is full.
    Full,
    /// Not queued: the queue is closed (peer gone).
    Closed,
}

#[derive(Debug)]
struct Lane {
    id: ChannelId,
    capacity: usize,
    messages: VecDeque<Bytes>,
}

#[derive(Debug)]
struct Class {
    /// Indices into `lanes`, in channel registration order.
    lanes: Vec<usize>,
    /// Round-robin cursor into `lanes`.
    next: usize,
}

/// Strict-priority, round-robin-within-class scheduler over bounded per-channel FIFOs.
#[derive(Debug)]
pub(crate) struct Scheduler {
    lanes: Vec<Lane>,
    /// Highest priority first.
    classes: Vec<Class>,
    queued: usize,
    queued_bytes: usize,
}

impl Scheduler {
    /// Creates a scheduler for channels given as `(id, priority, capacity)`, indexed by slot
    /// (the position in `channels`).
    pub(crate) fn new(channels: &[(ChannelId, u8, usize)]) -> Self {
        let lanes = channels
            .iter()
            .map(|&(id, _, capacity)| Lane {
                id,
                capacity: capacity.max(1),
                messages: VecDeque::new(),
            })
            .collect();
        let mut priorities: Vec<u8> = channels.iter().map(|c| c.1).collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        priorities.dedup();
        let classes = priorities
            .into_iter()
            .map(|p| Class {
                lanes: channels
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.1 == p)
                    .map(|(i, _)| i)
                    .collect(),
                next: 0,
            })
            .collect();
        Self { lanes, classes, queued: 0, queued_bytes: 0 }
    }

    /// Appends a message to a channel's FIFO. With `drop_oldest`, a full FIFO drops its oldest
    /// message to make room; otherwise a full FIFO rejects the new one.
    pub(crate) fn push(&mut self, slot: usize, message: Bytes, drop_oldest: bool) -> Pushed {
        let Some(lane) = self.lanes.get_mut(slot) else {
            return Pushed::Full;
        };
        let mut result = Pushed::Queued;
        if lane.messages.len() >= lane.capacity {
            if !drop_oldest {
                return Pushed::Full;
            }
            if let Some(old) = lane.messages.pop_front() {
                self.queued -= 1;
                self.queued_bytes -= old.len();
            }
            result = Pushed::QueuedDroppedOldest;
        }
        self.queued += 1;
        self.queued_bytes += message.len();
        lane.messages.push_back(message);
        result
    }

    /// Whether a channel's FIFO has room.
    pub(crate) fn has_room(&self, slot: usize) -> bool {
        self.lanes.get(slot).is_some_and(|l| l.messages.len() < l.capacity)
    }

    /// Takes the next message to send: from the highest non-empty class, round-robin within it.
    #[cfg(test)]
    pub(crate) fn pop(&mut self) -> Option<(ChannelId, Bytes)> {
        self.pop_excluding(&ChannelSet::default())
    }

    /// Like [`pop`](Self::pop), skipping the channels in `busy` (their messages stay queued,
    /// in order).
    pub(crate) fn pop_excluding(&mut self, busy: &ChannelSet) -> Option<(ChannelId, Bytes)> {
        if self.queued == 0 {
            return None;
        }
        for class in &mut self.classes {
            let n = class.lanes.len();
            for step in 0..n {
                let idx = (class.next + step) % n;
                let Some(&lane_idx) = class.lanes.get(idx) else { continue };
                let Some(lane) = self.lanes.get_mut(lane_idx) else { continue };
                if busy.contains(lane.id) {
                    continue;
                }
                if let Some(msg) = lane.messages.pop_front() {
                    class.next = (idx + 1) % n;
                    self.queued -= 1;
                    self.queued_bytes -= msg.len();
                    return Some((lane.id, msg));
                }
            }
        }
        None
    }

    /// Number of queued messages.
    pub(crate) fn len(&self) -> usize {
        self.queued
    }

    /// Bytes queued.
    pub(crate) fn bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Drops everything; returns how many messages were dropped.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.queued;
        for lane in &mut self.lanes {
            lane.messages.clear();
        }
        self.queued = 0;
        self.queued_bytes = 0;
        n
    }
}

/// A set of channel IDs (a 256-bit bitmap).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelSet([u64; 4]);

impl ChannelSet {
    pub(crate) fn insert(&mut self, ch: ChannelId) {
        if let Some(w) = self.0.get_mut(usize::from(ch.0 / 64)) {
            *w |= 1 << (ch.0 % 64);
        }
    }

    pub(crate) fn remove(&mut self, ch: ChannelId) {
        if let Some(w) = self.0.get_mut(usize::from(ch.0 / 64)) {
            *w &= !(1 << (ch.0 % 64));
        }
    }

    pub(crate) fn contains(&self, ch: ChannelId) -> bool {
        self.0.get(usize::from(ch.0 / 64)).is_some_and(|w| w & (1 << (ch.0 % 64)) != 0)
    }
}

/// What [`PeerQueue::try_pop_excluding`] found.
#[derive(Debug)]
pub(crate) enum TryPop {
    /// The next message to send.
    Message(ChannelId, Bytes),
    /// Nothing to send now (empty, or only messages of busy channels).
    Nothing,
    /// Closed and drained: the writer is done.
    Done,
}

#[derive(Debug)]
struct State {
    scheduler: Scheduler,
    closed: bool,
}

/// A peer's outbound queue, shared between the senders (reactor channels) and the peer's writer
/// task.
#[derive(Debug)]
pub(crate) struct PeerQueue {
    state: Mutex<State>,
    /// Wakes the writer: a message was queued, or the queue was closed. `notify_one` stores a
    /// permit, so a wake-up between the writer's check and its wait is never lost.
    data: Notify,
    /// Wakes senders waiting for room (overflow policy `Wait`).
    room: Notify,
}

impl PeerQueue {
    pub(crate) fn new(scheduler: Scheduler) -> Self {
        Self {
            state: Mutex::new(State { scheduler, closed: false }),
            data: Notify::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-push; the queue is still
        // structurally valid, so keep going.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Non-blocking push.
    pub(crate) fn push(&self, slot: usize, message: Bytes, drop_oldest: bool) -> Pushed {
        let pushed = {
            let mut st = self.lock();
            if st.closed {
                return Pushed::Closed;
            }
            st.scheduler.push(slot, message, drop_oldest)
        };
        if matches!(pushed, Pushed::Queued | Pushed::QueuedDroppedOldest) {
            self.data.notify_one();
        }
        pushed
    }

    /// Push that waits for room until `deadline`. Returns `Full` if the deadline passed.
    pub(crate) async fn push_wait(
        &self,
        slot: usize,
        message: Bytes,
        deadline: tokio::time::Instant,
    ) -> Pushed {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Register interest before checking, so a pop between check and wait wakes us.
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed {
                    return Pushed::Closed;
                }
                if st.scheduler.has_room(slot) {
                    let pushed = st.scheduler.push(slot, message, false);
                    drop(st);
                    self.data.notify_one();
                    return pushed;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Pushed::Full;
            }
        }
    }

    /// Takes the next message whose channel is not in `busy`, without waiting.
    pub(crate) fn try_pop_excluding(&self, busy: &ChannelSet) -> TryPop {
        let popped = {
            let mut st = self.lock();
            match st.scheduler.pop_excluding(busy) {
                Some((ch, msg)) => TryPop::Message(ch, msg),
                None if st.closed && st.scheduler.len() == 0 => return TryPop::Done,
                None => return TryPop::Nothing,
            }
        };
        self.room.notify_waiters();
        popped
    }

    /// Waits until a message is queued or the queue is closed (a wake-up sent since the last
    /// wait is not lost).
    pub(crate) async fn wait_data(&self) {
        self.data.notified().await;
    }

    /// Closes the queue: pending and later pushes fail, the writer drains what is queued
    /// (if `drain`) or nothing. Returns the number of messages discarded.
    pub(crate) fn close(&self, drain: bool) -> usize {
        let dropped = {
            let mut st = self.lock();
            st.closed = true;
            if drain { 0 } else { st.scheduler.clear() }
        };
        self.data.notify_one();
        self.room.notify_waiters();
        dropped
    }

    /// Messages and bytes currently queued.
    pub(crate) fn backlog(&self) -> (usize, usize) {
        let st = self.lock();
        (st.scheduler.len(), st.scheduler.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn drain(s: &mut Scheduler) -> Vec<(u8, String)> {
        std::iter::from_fn(|| s.pop())
            .map(|(c, m)| (c.0, String::from_utf8(m.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn higher_priority_is_served_first_under_backlog() {
        // slot 0: bulk (prio 1), slot 1: votes (prio 7).
        let mut s = Scheduler::new(&[(ChannelId(0x30), 1, 100), (ChannelId(0x22), 7, 100)]);
        for i in 0..5 {
            assert_eq!(s.push(0, b(&format!("bulk{i}")), false), Pushed::Queued);
        }
        for i in 0..3 {
            assert_eq!(s.push(1, b(&format!("vote{i}")), false), Pushed::Queued);
        }
        let order = drain(&mut s);
        let chans: Vec<u8> = order.iter().map(|o| o.0).collect();
        assert_eq!(chans, vec![0x22, 0x22, 0x22, 0x30, 0x30, 0x30, 0x30, 0x30]);
    }

    #[test]
    fn fifo_within_a_channel_under_backlog() {
        let mut s = Scheduler::new(&[(ChannelId(1), 5, 1000), (ChannelId(2), 5, 1000)]);
        for i in 0..500 {
            s.push(i % 2, b(&format!("{}", i)), false);
        }
        let out = drain(&mut s);
        for ch in [1u8, 2] {
            let seq: Vec<usize> =
                out.iter().filter(|o| o.0 == ch).map(|o| o.1.parse().unwrap()).collect();
            assert!(seq.windows(2).all(|w| w[0] < w[1]), "channel {ch} reordered: {seq:?}");
            assert_eq!(seq.len(), 250);
        }
    }

    #[test]
    fn equal_priorities_round_robin() {
        let mut s = Scheduler::new(&[(ChannelId(1), 3, 10), (ChannelId(2), 3, 10)]);
        for i in 0..3 {
            s.push(0, b(&format!("a{i}")), false);
            s.push(1, b(&format!("b{i}")), false);
        }
        let chans: Vec<u8> = drain(&mut s).iter().map(|o| o.0).collect();
        assert_eq!(chans, vec![1, 2, 1, 2, 1, 2]);
    }

    #[test]
    fn overflow_policies() {
        let mut s = Scheduler::new(&[(ChannelId(1), 1, 2)]);
        assert_eq!(s.push(0, b("1"), false), Pushed::Queued);
        assert_eq!(s.push(0, b("2"), false), Pushed::Queued);
        assert_eq!(s.push(0, b("3"), false), Pushed::Full);
        assert_eq!(s.push(0, b("4"), true), Pushed::QueuedDroppedOldest);
        assert_eq!(s.len(), 2);
        assert_eq!(s.bytes(), 2);
        let out: Vec<String> = drain(&mut s).into_iter().map(|o| o.1).collect();
        assert_eq!(out, vec!["2", "4"]);
        assert_eq!(s.push(7, b("x"), false), Pushed::Full, "unknown slot is rejected");
    }

    fn pop_now(q: &PeerQueue, busy: &ChannelSet) -> Option<(ChannelId, Bytes)> {
        match q.try_pop_excluding(busy) {
            TryPop::Message(ch, msg) => Some((ch, msg)),
            _ => None,
        }
    }

    #[tokio::test]
    async fn push_wait_gets_room_when_writer_pops() {
        let q = std::sync::Arc::new(PeerQueue::new(Scheduler::new(&[(ChannelId(1), 1, 1)])));
        assert_eq!(q.push(0, b("first"), false), Pushed::Queued);
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            q2.push_wait(0, b("second"), deadline).await
        });
        assert_eq!(pop_now(&q, &ChannelSet::default()).unwrap().1, b("first"));
        assert_eq!(waiter.await.unwrap(), Pushed::Queued);
        q.wait_data().await;
        assert_eq!(pop_now(&q, &ChannelSet::default()).unwrap().1, b("second"));
    }

    #[tokio::test(start_paused = true)]
    async fn push_wait_times_out_on_a_stuck_writer() {
        let q = PeerQueue::new(Scheduler::new(&[(ChannelId(1), 1, 1)]));
        q.push(0, b("first"), false);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        assert_eq!(q.push_wait(0, b("second"), deadline).await, Pushed::Full);
    }

    #[tokio::test]
    async fn close_drains_then_ends() {
        let q = PeerQueue::new(Scheduler::new(&[(ChannelId(1), 1, 4)]));
        q.push(0, b("a"), false);
        q.close(true);
        assert_eq!(q.push(0, b("b"), false), Pushed::Closed);
        assert!(pop_now(&q, &ChannelSet::default()).is_some());
        assert!(matches!(q.try_pop_excluding(&ChannelSet::default()), TryPop::Done));
    }

    #[test]
    fn busy_channels_are_skipped_and_keep_their_order() {
        let mut s = Scheduler::new(&[(ChannelId(1), 1, 8), (ChannelId(2), 9, 8)]);
        for m in ["b1", "b2"] {
            s.push(0, b(m), false);
        }
        s.push(1, b("v1"), false);
        let mut busy = ChannelSet::default();
        // The high-priority channel is busy (a send in flight): the low one is served.
        busy.insert(ChannelId(2));
        assert_eq!(s.pop_excluding(&busy).map(|(c, m)| (c.0, m)), Some((1, b("b1"))));
        busy.insert(ChannelId(1));
        assert_eq!(s.pop_excluding(&busy), None, "both busy: nothing");
        busy.remove(ChannelId(2));
        assert_eq!(s.pop_excluding(&busy).map(|(c, m)| (c.0, m)), Some((2, b("v1"))));
        busy.remove(ChannelId(1));
        assert_eq!(s.pop_excluding(&busy).map(|(c, m)| (c.0, m)), Some((1, b("b2"))));
    }
}
