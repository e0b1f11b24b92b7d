//! The link model, sans-IO: what happens to one packet entering one direction of a link, as a
//! pure function of the packet's length, its arrival time and the link's seeded random state.
//!
//! A packet passes three stages, in this order (the order `netem` + `tbf` apply them):
//!
//! 1. **Loss**: [`Loss::None`], independent ([`Loss::Bernoulli`]) or bursty
//!    ([`Loss::GilbertElliott`]). A lost packet costs no bandwidth.
//! 2. **Rate limit** (optional): a transmitter of `rate_bps` behind a drop-tail queue that holds
//!    at most [`LinkSpec::queue`] worth of the rate. A packet that finds the queue fuller than
//!    that is dropped; otherwise it leaves once every packet before it has been serialised and
//!    its own bits have been sent.
//! 3. **Propagation**: the one-way [`LinkSpec::delay`] plus a uniform jitter in
//!    `[-jitter, +jitter]`. Jitter never reorders: a packet is never delivered before the one
//!    sent ahead of it, unless it is picked for reordering (probability [`LinkSpec::reorder`]),
//!    in which case it is held back by [`LinkSpec::reorder_gap`] and later packets overtake it.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How a link loses packets.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Loss {
    /// Nothing is lost.
    None,
    /// Every packet is lost with this probability, independently.
    Bernoulli(f64),
    /// The Gilbert–Elliott two-state Markov model: a good and a bad state, each with its own
    /// loss probability; the state may change before every packet.
    GilbertElliott(GilbertElliott),
}

/// Parameters of the Gilbert–Elliott loss model (probabilities per packet).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// P(good → bad).
    pub p: f64,
    /// P(bad → good); the mean stay in the bad state is `1 / r` packets.
    pub r: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The Gilbert special case (nothing lost in the good state, everything in the bad one)
    /// with a long-run loss rate `mean` and a mean loss-burst length `burst` packets
    /// (`burst >= 1`): `r = 1 / burst`, `p = mean · r / (1 − mean)`.
    pub fn bursty(mean: f64, burst: f64) -> Self {
        let r = 1.0 / burst.max(1.0);
        let mean = mean.clamp(0.0, 0.999);
        Self { p: mean * r / (1.0 - mean), r, loss_good: 0.0, loss_bad: 1.0 }
    }

    /// The long-run loss rate: `π_bad · loss_bad + π_good · loss_good`, `π_bad = p / (p + r)`.
    pub fn mean_loss(&self) -> f64 {
        let total = self.p + self.r;
        if total <= 0.0 {
            return self.loss_good;
        }
        let bad = self.p / total;
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

impl Loss {
    /// The long-run fraction of packets this model loses.
    pub fn mean(&self) -> f64 {
        match self {
            Self::None => 0.0,
            Self::Bernoulli(p) => *p,
            Self::GilbertElliott(ge) => ge.mean_loss(),
        }
    }
}

/// One direction of a link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Uniform jitter added to `delay`, in `[-jitter, +jitter]` (never reorders by itself).
    pub jitter: Duration,
    /// Loss model.
    pub loss: Loss,
    /// Bandwidth limit in bits per second of IP packet bytes; `None`: unlimited.
    pub rate_bps: Option<u64>,
    /// The drop-tail queue in front of the rate limit, as time at the rate (a queue of 50 ms at
    /// 100 Mbit/s holds 625 kB). Unused without a rate limit.
    pub queue: Duration,
    /// Probability that a packet is held back by `reorder_gap` so that later ones overtake it.
    pub reorder: f64,
    /// How long a reordered packet is held back.
    pub reorder_gap: Duration,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::None,
            rate_bps: None,
            queue: Duration::from_millis(50),
            reorder: 0.0,
            reorder_gap: Duration::from_millis(1),
        }
    }
}

impl LinkSpec {
    /// A link with this one-way delay and nothing else.
    pub fn delay(delay: Duration) -> Self {
        Self { delay, ..Self::default() }
    }

    /// This link with a loss model.
    #[must_use]
    pub fn with_loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }

    /// This link with a rate limit (bits/s) and a drop-tail queue of `queue` at that rate.
    #[must_use]
    pub fn with_rate(mut self, rate_bps: u64, queue: Duration) -> Self {
        self.rate_bps = Some(rate_bps);
        self.queue = queue;
        self
    }

    /// This link with jitter.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// This link with reordering: probability `p`, held back by `gap`.
    #[must_use]
    pub fn with_reorder(mut self, p: f64, gap: Duration) -> Self {
        self.reorder = p;
        self.reorder_gap = gap;
        self
    }
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The loss model lost it.
    Loss,
    /// The rate limiter's queue was full.
    QueueFull,
}

/// What becomes of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped.
    Drop(DropReason),
    /// Delivered at this time (on the caller's clock, the one `now` is on).
    Deliver(Duration),
}

/// Counters of one link direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Packets offered to the link.
    pub packets: u64,
    /// Bytes offered to the link.
    pub bytes: u64,
    /// Packets the loss model dropped.
    pub lost: u64,
    /// Packets the full queue dropped.
    pub queue_drops: u64,
    /// Packets held back for reordering.
    pub reordered: u64,
}

/// The state of one link direction (see the module docs).
#[derive(Debug)]
pub struct Link {
    spec: LinkSpec,
    rng: SmallRng,
    bad: bool,
    /// When the transmitter is free again (the rate stage).
    busy_until: Duration,
    /// The delivery time of the last in-order packet (jitter never reorders).
    last_delivery: Duration,
    counters: LinkCounters,
}

impl Link {
    /// A link direction in its initial state (good, idle), with its own random stream.
    pub fn new(spec: LinkSpec, seed: u64) -> Self {
        Self {
            spec,
            rng: SmallRng::seed_from_u64(seed),
            bad: false,
            busy_until: Duration::ZERO,
            last_delivery: Duration::ZERO,
            counters: LinkCounters::default(),
        }
    }

    /// The link's parameters.
    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// Counters so far.
    pub fn counters(&self) -> LinkCounters {
        self.counters
    }

    fn lost(&mut self) -> bool {
        match self.spec.loss {
            Loss::None => false,
            Loss::Bernoulli(p) => self.rng.random_bool(p.clamp(0.0, 1.0)),
            Loss::GilbertElliott(ge) => {
                let flip = if self.bad { ge.r } else { ge.p };
                if self.rng.random_bool(flip.clamp(0.0, 1.0)) {
                    self.bad = !self.bad;
                }
                let p = if self.bad { ge.loss_bad } else { ge.loss_good };
                self.rng.random_bool(p.clamp(0.0, 1.0))
            }
        }
    }

    /// The fate of a `len`-byte packet arriving at `now`.
    pub fn admit(&mut self, now: Duration, len: usize) -> Verdict {
        self.counters.packets += 1;
        self.counters.bytes += len as u64;
        if self.lost() {
            self.counters.lost += 1;
            return Verdict::Drop(DropReason::Loss);
        }
        let depart = match self.spec.rate_bps {
            Some(rate) if rate > 0 => {
                let backlog = self.busy_until.saturating_sub(now);
                if backlog > self.spec.queue {
                    self.counters.queue_drops += 1;
                    return Verdict::Drop(DropReason::QueueFull);
                }
                let bits = len as u128 * 8;
                let ns = (bits * 1_000_000_000).div_ceil(u128::from(rate));
                let tx = Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
                self.busy_until = self.busy_until.max(now) + tx;
                self.busy_until
            }
            _ => now,
        };
        let mut at = depart + self.spec.delay;
        if !self.spec.jitter.is_zero() {
            let j = self.spec.jitter.as_nanos() as i64;
            let offset = self.rng.random_range(-j..=j);
            at = if offset >= 0 {
                at + Duration::from_nanos(offset as u64)
            } else {
                at.saturating_sub(Duration::from_nanos(offset.unsigned_abs())).max(depart)
            };
        }
        if self.spec.reorder > 0.0 && self.rng.random_bool(self.spec.reorder.clamp(0.0, 1.0)) {
            self.counters.reordered += 1;
            return Verdict::Deliver(at.max(self.last_delivery) + self.spec.reorder_gap);
        }
        at = at.max(self.last_delivery);
        self.last_delivery = at;
        Verdict::Deliver(at)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn deliver(v: Verdict) -> Duration {
        match v {
            Verdict::Deliver(at) => at,
            Verdict::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    #[test]
    fn delay_only_adds_the_delay() {
        let mut l = Link::new(LinkSpec::delay(20 * MS), 1);
        assert_eq!(deliver(l.admit(MS, 1500)), 21 * MS);
        assert_eq!(deliver(l.admit(5 * MS, 40)), 25 * MS);
    }

    #[test]
    fn rate_limit_serialises_and_the_queue_drops_its_tail() {
        // 12 Mbit/s: a 1500-byte packet takes 1 ms; the queue holds 3 ms.
        let spec = LinkSpec::delay(10 * MS).with_rate(12_000_000, 3 * MS);
        let mut l = Link::new(spec, 1);
        let got: Vec<Verdict> = (0..6).map(|_| l.admit(Duration::ZERO, 1500)).collect();
        assert_eq!(got[0], Verdict::Deliver(11 * MS));
        assert_eq!(got[1], Verdict::Deliver(12 * MS));
        assert_eq!(got[2], Verdict::Deliver(13 * MS));
        assert_eq!(got[3], Verdict::Deliver(14 * MS));
        // Backlog 4 ms > 3 ms: dropped, and a dropped packet costs no transmit time.
        assert_eq!(got[4], Verdict::Drop(DropReason::QueueFull));
        assert_eq!(got[5], Verdict::Drop(DropReason::QueueFull));
        // Once the queue drains below the limit, packets are taken again.
        assert_eq!(deliver(l.admit(2 * MS, 1500)), 15 * MS);
        assert_eq!(l.counters().queue_drops, 2);
    }

    #[test]
    fn a_steady_stream_gets_exactly_the_configured_rate() {
        let spec = LinkSpec::default().with_rate(8_000_000, 100 * MS);
        let mut l = Link::new(spec, 1);
        let mut last = Duration::ZERO;
        // 1000 bytes at 8 Mbit/s take 1 ms: a burst of 1000 at once fills the 100 ms queue
        // (101 packets pass), the rest is dropped, and what passes leaves 1 ms apart.
        for _ in 0..1000 {
            if let Verdict::Deliver(at) = l.admit(Duration::ZERO, 1000) {
                assert_eq!(at, last + MS);
                last = at;
            }
        }
        let passed = l.counters().packets - l.counters().queue_drops;
        assert_eq!(passed, 101);
        assert_eq!(last, Duration::from_millis(passed));
    }

    #[test]
    fn bernoulli_loss_rate_matches_over_many_packets() {
        let mut l = Link::new(LinkSpec::default().with_loss(Loss::Bernoulli(0.01)), 7);
        for i in 0..200_000u64 {
            l.admit(Duration::from_micros(i), 100);
        }
        let rate = l.counters().lost as f64 / 200_000.0;
        assert!((rate - 0.01).abs() < 0.001, "{rate}");
    }

    #[test]
    fn gilbert_elliott_matches_its_mean_and_burst_length() {
        let ge = GilbertElliott::bursty(0.02, 4.0);
        assert!((ge.mean_loss() - 0.02).abs() < 1e-12);
        let mut l = Link::new(LinkSpec::default().with_loss(Loss::GilbertElliott(ge)), 3);
        let (mut bursts, mut in_burst) = (0u64, false);
        for i in 0..400_000u64 {
            let lost = l.admit(Duration::from_micros(i), 100) == Verdict::Drop(DropReason::Loss);
            if lost && !in_burst {
                bursts += 1;
            }
            in_burst = lost;
        }
        let lost = l.counters().lost;
        let rate = lost as f64 / 400_000.0;
        assert!((rate - 0.02).abs() < 0.003, "loss {rate}");
        let mean_burst = lost as f64 / bursts as f64;
        assert!((mean_burst - 4.0).abs() < 0.4, "burst {mean_burst}");
    }

    #[test]
    fn jitter_stays_in_bounds_and_never_reorders() {
        let spec = LinkSpec::delay(10 * MS).with_jitter(2 * MS);
        // (spacing between packets, lowest and highest one-way delay allowed)
        let spread = |spacing: Duration| {
            let mut l = Link::new(spec.clone(), 5);
            let mut prev = Duration::ZERO;
            let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
            for i in 0..10_000u32 {
                let now = spacing * i;
                let at = deliver(l.admit(now, 100));
                assert!(at >= prev, "reordered");
                prev = at;
                lo = lo.min(at - now);
                hi = hi.max(at - now);
            }
            (lo, hi)
        };
        // Sparse packets (5 ms apart, more than the jitter's 4 ms spread) see all of it.
        let (lo, hi) = spread(5 * MS);
        assert!(lo >= 8 * MS && lo < 8 * MS + MS / 10, "{lo:?}");
        assert!(hi <= 12 * MS && hi > 12 * MS - MS / 10, "{hi:?}");
        // Dense packets keep their order, so an early one waits for the one ahead of it: the
        // low end is cut off, the high end exceeds +jitter by at most the spacing.
        let (lo, hi) = spread(MS / 10);
        assert!(lo >= 8 * MS, "{lo:?}");
        assert!(hi <= 12 * MS + MS / 10, "{hi:?}");
    }

    #[test]
    fn reordered_packets_are_overtaken() {
        let spec = LinkSpec::delay(5 * MS).with_reorder(1.0, 2 * MS);
        let mut l = Link::new(spec, 1);
        assert_eq!(deliver(l.admit(Duration::ZERO, 100)), 7 * MS);
        let spec = LinkSpec::delay(5 * MS).with_reorder(0.1, 2 * MS);
        let mut l = Link::new(spec, 9);
        let times: Vec<Duration> =
            (0..1000u64).map(|i| deliver(l.admit(Duration::from_micros(i * 100), 100))).collect();
        let overtaken = times.windows(2).filter(|w| w[1] < w[0]).count();
        let reordered = l.counters().reordered;
        assert!((70..=130).contains(&reordered), "{reordered}");
        // Each held-back packet is overtaken by the one after it (unless that one is held too).
        assert!(overtaken as u64 <= reordered && overtaken as u64 >= reordered * 8 / 10);
    }

    #[test]
    fn the_same_seed_gives_the_same_fates() {
        let spec = LinkSpec::delay(MS)
            .with_loss(Loss::GilbertElliott(GilbertElliott::bursty(0.05, 3.0)))
            .with_jitter(MS);
        let run = |seed| {
            let mut l = Link::new(spec.clone(), seed);
            (0..1000u64).map(|i| l.admit(Duration::from_micros(i), 1200)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
