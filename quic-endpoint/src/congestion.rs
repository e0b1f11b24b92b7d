//! The congestion controllers a [`crate::QuicEndpoint`] can run ([`crate::Congestion`]), and the
//! one the project adds and runs by default: quinn's BBR with its in-flight data capped by the
//! rate it measures being delivered ([`CappedBbr`]).
//!
//! Why a cap: quinn 0.11 paces every controller at `window / smoothed RTT` and never reads
//! BBR's pacing rate. BBR (v1) keeps a window of twice its bandwidth-delay estimate, so on
//! quinn it sends at about twice the bottleneck rate whenever it has data, and a drop-tail
//! bottleneck shallower than one BDP overflows all the time (on the WAN lab's
//! `intercontinental` profile, a 50 ms queue on a 150 ms path, 29% of the packets were
//! dropped and goodput was 0.6 of the link). [`CappedBbr`] keeps BBR's model and lowers the
//! window to [`CAP_GAIN`] × the most bytes acknowledged in one minimum-RTT round over the last
//! ten rounds (never below the initial window). Lost bytes are never acknowledged, so random
//! loss does not lower the estimate (the reason to prefer BBR over CUBIC on lossy paths: the
//! Mathis bound holds CUBIC to 0.14 MB/s at 150 ms and 0.5% loss), while the window can grow
//! by at most [`CAP_GAIN`] per round, so the standing queue stays near a quarter of a BDP and
//! a high-priority message waits behind little bulk data.
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Bbr, BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// The window cap as a multiple of the delivery rate × the minimum RTT: above 1 so that the
/// path is never idle for ACK delay and so that the rate can grow (by up to this factor per
/// round trip), well below BBR's own 2 so that the standing queue stays near a quarter of a
/// BDP.
pub const CAP_GAIN: f64 = 1.25;

/// Most time added to the minimum RTT in the cap (never more than the minimum RTT itself):
/// acknowledgements arrive in bursts (a receiver acknowledges every other packet, a busy host
/// batches them), and on a short path that aggregation is a large part of the round trip;
/// without it the cap held the WAN lab's 1 ms `lan` path at half of what CUBIC carried (190
/// against 403 MB/s; with it 407). On long paths it is noise; on loopback (50 µs) it is
/// bounded by the RTT, so bulk data stays a fraction of a millisecond ahead of a probe.
pub const ACK_ALLOWANCE: Duration = Duration::from_millis(1);

/// Delivery-rate samples (one per round trip) the maximum is taken over.
const ROUNDS: usize = 10;

/// Builds [`CappedBbr`] controllers.
#[derive(Debug, Clone, Default)]
pub struct CappedBbrConfig {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for CappedBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let inner = Bbr::new(self.bbr.clone(), current_mtu);
        Box::new(CappedBbr { floor: inner.initial_window(), inner, rate: DeliveryRate::new(now) })
    }
}

/// quinn's BBR with the window capped at [`CAP_GAIN`] × the delivery rate (the most bytes
/// acknowledged per round trip over the last ten) × the minimum RTT, and never below the
/// initial window (see the module documentation).
#[derive(Debug, Clone)]
pub struct CappedBbr {
    inner: Bbr,
    rate: DeliveryRate,
    floor: u64,
}

/// Bytes acknowledged per round trip, sampled once per minimum RTT; the maximum over the last
/// [`ROUNDS`] samples (a loss-free estimate of the bottleneck rate: lost bytes are never
/// acknowledged, and the maximum ignores rounds the application left idle).
#[derive(Debug, Clone)]
struct DeliveryRate {
    min_rtt: Option<Duration>,
    round_start: Instant,
    round_bytes: u64,
    /// Bytes/s per round, newest last.
    samples: [f64; ROUNDS],
    next: usize,
}

impl DeliveryRate {
    fn new(now: Instant) -> Self {
        Self { min_rtt: None, round_start: now, round_bytes: 0, samples: [0.0; ROUNDS], next: 0 }
    }

    /// `bytes` were acknowledged at `now`; `min_rtt` is the connection's minimum RTT.
    fn on_ack(&mut self, now: Instant, bytes: u64, min_rtt: Duration) {
        if min_rtt.is_zero() {
            return;
        }
        self.min_rtt = Some(min_rtt);
        self.round_bytes = self.round_bytes.saturating_add(bytes);
        let elapsed = now.saturating_duration_since(self.round_start);
        if elapsed >= min_rtt {
            let sample = self.round_bytes as f64 / elapsed.as_secs_f64();
            if let Some(slot) = self.samples.get_mut(self.next % ROUNDS) {
                *slot = sample;
            }
            self.next = self.next.wrapping_add(1);
            self.round_start = now;
            self.round_bytes = 0;
        }
    }

    /// [`CAP_GAIN`] × the maximum rate × (the minimum RTT + the smaller of
    /// [`ACK_ALLOWANCE`] and the minimum RTT), in bytes; `None` before a full round.
    fn cap(&self) -> Option<u64> {
        let rtt = self.min_rtt?;
        let max = self.samples.iter().copied().fold(0.0, f64::max);
        // `as` saturates, so an absurd estimate means no cap rather than a wrap.
        let span = rtt + rtt.min(ACK_ALLOWANCE);
        (max > 0.0).then_some((max * span.as_secs_f64() * CAP_GAIN) as u64)
    }
}

impl Controller for CappedBbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.rate.on_ack(now, bytes, rtt.min());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        let window = self.inner.window();
        match self.rate.cap() {
            Some(cap) => window.min(cap.max(self.floor)),
            None => window,
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        // ControllerMetrics is non-exhaustive: start from the inner one, report our window.
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_cap_before_a_full_round() {
        let t = Instant::now();
        let mut r = DeliveryRate::new(t);
        assert_eq!(r.cap(), None);
        r.on_ack(t + 10 * MS, 10_000, 100 * MS);
        assert_eq!(r.cap(), None);
        // A zero minimum RTT (no sample yet) is ignored.
        r.on_ack(t + 500 * MS, 10_000, Duration::ZERO);
        assert_eq!(r.cap(), None);
    }

    #[test]
    fn cap_is_gain_times_max_rate_times_min_rtt() {
        let t = Instant::now();
        let mut r = DeliveryRate::new(t);
        // 1 MB per 100 ms round = 10 MB/s; cap = 1.25 × 10 MB/s × (100 ms + 1 ms allowance).
        r.on_ack(t + 50 * MS, 500_000, 100 * MS);
        r.on_ack(t + 100 * MS, 500_000, 100 * MS);
        assert_eq!(r.cap(), Some(1_262_500));
        // A slower round does not lower the maximum...
        r.on_ack(t + 200 * MS, 100_000, 100 * MS);
        assert_eq!(r.cap(), Some(1_262_500));
        // ...until ten slower rounds have pushed it out.
        for i in 3..=12u32 {
            r.on_ack(t + i * 100 * MS, 200_000, 100 * MS);
        }
        assert_eq!(r.cap(), Some(252_500));
    }

    #[test]
    fn ack_allowance_is_at_most_the_min_rtt() {
        let t = Instant::now();
        let mut r = DeliveryRate::new(t);
        // 100 MB/s on a 100 µs path: 1.25 × 100 MB/s × 200 µs (the allowance is cut to 100 µs).
        let us = Duration::from_micros(100);
        r.on_ack(t + us, 10_000, us);
        assert_eq!(r.cap(), Some(25_000));
    }

    #[test]
    fn window_is_bbrs_capped_with_the_initial_window_as_floor() {
        let t = Instant::now();
        let mut c = CappedBbr {
            inner: Bbr::new(Arc::new(BbrConfig::default()), 1200),
            rate: DeliveryRate::new(t),
            floor: 0,
        };
        let raw = c.inner.window();
        c.floor = raw / 4;
        assert_eq!(c.window(), raw, "no cap before a sample");
        // A tiny delivery rate caps at the floor, not below.
        c.rate.on_ack(t + 100 * MS, 1, 100 * MS);
        assert_eq!(c.window(), raw / 4);
        // A huge one leaves BBR's window.
        c.rate.on_ack(t + 200 * MS, u64::MAX / 2, 100 * MS);
        assert_eq!(c.window(), raw);
    }
}
