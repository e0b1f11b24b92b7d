//! The UPnP mapping decisions, without I/O: what to ask the gateway next, when, and what each
//! answer means. Time is an input ([`Instant`]), so the tests drive it deterministically.
//!
//! The driver ([`super`]) loops: [`Machine::poll`] returns an [`Action`]; the driver performs
//! it (an igd-next call, or a wait) and reports the result with the matching `on_*` method,
//! which returns a [`Log`] telling it whether a failure is new (log it) or a repeat (do not).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{PortProtocol, PortRequest};

/// How many external ports are tried for one internal port (the internal port number first,
/// then pseudo-random ones) before the attempt counts as a failure.
pub(crate) const MAX_PORT_CANDIDATES: u8 = 8;

/// The timing rules.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    /// The lease asked for (whole seconds; `0` would mean permanent).
    pub(crate) lease_secs: u32,
    /// First retry delay after a failure; doubles with each further failure.
    pub(crate) backoff_initial: Duration,
    /// Longest retry delay.
    pub(crate) backoff_max: Duration,
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Search for the gateway (SSDP); report with [`Machine::on_discover`].
    Discover,
    /// Ask the gateway for its external IP; report with [`Machine::on_external_ip`].
    ExternalIp,
    /// Add (or renew: the same call) a port mapping; report with [`Machine::on_map`].
    Map {
        /// Which requested port ([`Machine::new`]'s order).
        index: usize,
        /// TCP or UDP.
        protocol: PortProtocol,
        /// The node's port.
        internal_port: u16,
        /// The gateway's port.
        external_port: u16,
        /// Seconds; `0` asks for a permanent mapping.
        lease_secs: u32,
        /// A renewal of an existing mapping (else a new one).
        renewal: bool,
    },
    /// Nothing to do before `until`.
    Wait {
        /// When to poll again.
        until: Instant,
    },
}

/// Why a mapping request failed, as far as the decisions care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MapFailure {
    /// The external port is taken (UPnP error 718, ConflictInMappingEntry).
    PortInUse,
    /// The gateway maps only same-numbered ports (724) and the external port differs.
    SamePortValuesRequired,
    /// The gateway accepts only permanent leases (725, OnlyPermanentLeasesSupported).
    OnlyPermanentLeases,
    /// The gateway could not be reached (the gateway may be gone: search again).
    Unreachable,
    /// Anything else the gateway answered (not authorized, ...).
    Refused,
}

/// Which kind of operation failed (failures are reported once per kind until it succeeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// No gateway found.
    Discovery,
    /// The external IP could not be learned.
    ExternalIp,
    /// A port could not be mapped (by request index).
    Map(usize),
    /// A mapping could not be renewed (by request index).
    Renew(usize),
}

/// What the driver should log about a reported result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Log {
    /// Nothing new.
    Nothing,
    /// A failure of this kind, the first since the last success: log it (warn).
    Failure(FailureKind),
    /// A failure already logged: do not log it again (debug at most).
    Repeated(FailureKind),
    /// A failure that had been logged is over: log the recovery (info).
    Recovered(FailureKind),
    /// The gateway accepts only permanent leases: switched to lease 0 (info).
    PermanentLeases,
}

/// One port mapping the gateway holds for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// Which requested port.
    pub(crate) index: usize,
    /// TCP or UDP.
    pub(crate) protocol: PortProtocol,
    /// The gateway's port.
    pub(crate) external_port: u16,
    /// Seconds (`0`: permanent).
    pub(crate) lease_secs: u32,
}

#[derive(Debug, Clone)]
enum PortState {
    /// Not mapped: try `candidate` at `next_try`.
    Unmapped { next_try: Instant, candidate: u16, tried: u8 },
    /// Mapped: renew at `renew_at`; gone at `expires_at` (never for a permanent mapping).
    Mapped { external: u16, lease_secs: u32, renew_at: Instant, expires_at: Option<Instant> },
}

#[derive(Debug, Clone)]
struct Port {
    request: PortRequest,
    state: PortState,
    /// Consecutive failures (for the backoff).
    failures: u32,
}

#[derive(Debug, Clone)]
enum Gateway {
    /// Not found yet (or lost): search at `retry_at`.
    Unknown { retry_at: Instant },
    /// Found.
    Known,
}

/// The decision state of one mapper: the gateway, the external IP, each port's mapping.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    timing: Timing,
    ports: Vec<Port>,
    gateway: Gateway,
    discovery_failures: u32,
    ip_failures: u32,
    external_ip: Option<IpAddr>,
    ip_refresh_at: Option<Instant>,
    lease_secs: u32,
    /// Failures logged and not yet recovered from (at most 2 + 2 per port).
    reported: Vec<FailureKind>,
    rng: u64,
}

impl Machine {
    /// A machine for `ports`, starting at `now` with a search. `seed` picks the fallback
    /// external ports.
    pub(crate) fn new(timing: Timing, ports: &[PortRequest], now: Instant, seed: u64) -> Self {
        let lease_secs = timing.lease_secs;
        Self {
            timing,
            ports: ports
                .iter()
                .map(|&request| Port {
                    request,
                    state: PortState::Unmapped {
                        next_try: now,
                        candidate: request.internal_port,
                        tried: 0,
                    },
                    failures: 0,
                })
                .collect(),
            gateway: Gateway::Unknown { retry_at: now },
            discovery_failures: 0,
            ip_failures: 0,
            external_ip: None,
            ip_refresh_at: None,
            lease_secs,
            reported: Vec::new(),
            // xorshift must not start at 0.
            rng: seed | 1,
        }
    }

    /// The next thing to do at `now`.
    pub(crate) fn poll(&mut self, now: Instant) -> Action {
        self.expire(now);
        let retry_at = match self.gateway {
            Gateway::Unknown { retry_at } => retry_at,
            Gateway::Known => {
                return self.poll_known(now);
            }
        };
        if now >= retry_at {
            return Action::Discover;
        }
        // Mappings held from before the gateway was lost still expire meanwhile.
        let until = self
            .ports
            .iter()
            .filter_map(|p| match p.state {
                PortState::Mapped { expires_at, .. } => expires_at,
                PortState::Unmapped { .. } => None,
            })
            .fold(retry_at, Instant::min);
        Action::Wait { until }
    }

    fn poll_known(&mut self, now: Instant) -> Action {
        match self.ip_refresh_at {
            Some(at) if now < at => {}
            _ => return Action::ExternalIp,
        }
        let lease_secs = self.lease_secs;
        let mut until = self.ip_refresh_at.unwrap_or(now);
        for (index, port) in self.ports.iter().enumerate() {
            let (due, external, renewal, lease) = match port.state {
                PortState::Unmapped { next_try, candidate, .. } => {
                    (next_try, candidate, false, lease_secs)
                }
                PortState::Mapped { external, renew_at, expires_at, .. } => {
                    (expires_at.map_or(renew_at, |e| renew_at.min(e)), external, true, lease_secs)
                }
            };
            if now >= due {
                return Action::Map {
                    index,
                    protocol: port.request.transport,
                    internal_port: port.request.internal_port,
                    external_port: external,
                    lease_secs: lease,
                    renewal,
                };
            }
            until = until.min(due);
        }
        Action::Wait { until }
    }

    /// Drops mappings whose lease ran out without a renewal.
    fn expire(&mut self, now: Instant) {
        for port in &mut self.ports {
            if let PortState::Mapped { external, expires_at: Some(at), .. } = port.state
                && now >= at
            {
                port.state = PortState::Unmapped { next_try: now, candidate: external, tried: 0 };
            }
        }
    }

    /// The result of a search.
    pub(crate) fn on_discover(&mut self, now: Instant, found: bool) -> Log {
        if found {
            self.gateway = Gateway::Known;
            self.discovery_failures = 0;
            self.ip_refresh_at = None;
            // Renew what we still hold (it may be another gateway, or one that rebooted).
            for port in &mut self.ports {
                match &mut port.state {
                    PortState::Mapped { renew_at, .. } => *renew_at = now,
                    PortState::Unmapped { next_try, .. } => *next_try = now,
                }
            }
            self.succeeded(FailureKind::Discovery)
        } else {
            let delay = self.backoff(self.discovery_failures);
            self.discovery_failures = self.discovery_failures.saturating_add(1);
            self.gateway = Gateway::Unknown { retry_at: now + delay };
            self.failed(FailureKind::Discovery)
        }
    }

    /// The result of asking for the external IP (`None`: failed, or the gateway has none).
    pub(crate) fn on_external_ip(&mut self, now: Instant, ip: Option<IpAddr>) -> Log {
        match ip.filter(|ip| !ip.is_unspecified()) {
            Some(ip) => {
                self.external_ip = Some(ip);
                self.ip_failures = 0;
                self.ip_refresh_at = Some(now + self.refresh_interval());
                self.succeeded(FailureKind::ExternalIp)
            }
            None => {
                // Without an external IP the mappings are worth nothing to advertise, and a
                // gateway that cannot answer this may be gone: search again, with backoff.
                self.external_ip = None;
                let delay = self.backoff(self.ip_failures);
                self.ip_failures = self.ip_failures.saturating_add(1);
                self.gateway = Gateway::Unknown { retry_at: now + delay };
                self.failed(FailureKind::ExternalIp)
            }
        }
    }

    /// The result of the [`Action::Map`] for port `index` (the action's fields are repeated
    /// here so a stale report cannot be applied to the wrong state).
    pub(crate) fn on_map(
        &mut self,
        now: Instant,
        index: usize,
        external_port: u16,
        lease_secs: u32,
        result: Result<(), MapFailure>,
    ) -> Log {
        let refresh = self.refresh_interval();
        let backoff_initial = self.timing.backoff_initial;
        let backoff_max = self.timing.backoff_max;
        let internal = self.ports.get(index).map_or(0, |p| p.request.internal_port);
        let candidate_port = self.next_candidate(internal);
        let Some(port) = self.ports.get_mut(index) else {
            return Log::Nothing;
        };
        let renewal = matches!(port.state, PortState::Mapped { .. });
        let kind = if renewal { FailureKind::Renew(index) } else { FailureKind::Map(index) };
        match result {
            Ok(()) => {
                port.failures = 0;
                let expires_at =
                    (lease_secs > 0).then(|| now + Duration::from_secs(u64::from(lease_secs)));
                // Renew at half the lease; a permanent one is refreshed on the same cadence as
                // a finite one would be, in case the gateway forgot it (a reboot).
                let renew_after = if lease_secs > 0 {
                    Duration::from_secs(u64::from(lease_secs) / 2).max(Duration::from_secs(1))
                } else {
                    refresh
                };
                port.state = PortState::Mapped {
                    external: external_port,
                    lease_secs,
                    renew_at: now + renew_after,
                    expires_at,
                };
                let mut log = self.succeeded(FailureKind::Map(index));
                if let Log::Recovered(_) = self.succeeded(FailureKind::Renew(index)) {
                    log = Log::Recovered(FailureKind::Renew(index));
                }
                log
            }
            Err(MapFailure::OnlyPermanentLeases) if lease_secs != 0 => {
                // Retry at once with lease 0, for every port from now on.
                self.lease_secs = 0;
                match &mut port.state {
                    PortState::Unmapped { next_try, .. } => *next_try = now,
                    PortState::Mapped { renew_at, .. } => *renew_at = now,
                }
                Log::PermanentLeases
            }
            Err(MapFailure::PortInUse | MapFailure::SamePortValuesRequired)
                if !renewal
                    && matches!(port.state, PortState::Unmapped { tried, .. } if tried + 1 < MAX_PORT_CANDIDATES) =>
            {
                // Another client holds it: try another external port at once. A gateway that
                // wants same-numbered ports will refuse the others too (counted below).
                if let PortState::Unmapped { next_try, candidate, tried } = &mut port.state {
                    *tried += 1;
                    *next_try = now;
                    *candidate = candidate_port;
                }
                Log::Nothing
            }
            Err(MapFailure::PortInUse) if renewal => {
                // Our mapping is gone and someone else took the port: map another.
                port.state =
                    PortState::Unmapped { next_try: now, candidate: candidate_port, tried: 1 };
                self.failed(kind)
            }
            Err(MapFailure::Unreachable) => {
                // The gateway may be gone: search again (held mappings live until they expire).
                let delay = backoff(backoff_initial, backoff_max, self.discovery_failures);
                self.discovery_failures = self.discovery_failures.saturating_add(1);
                self.gateway = Gateway::Unknown { retry_at: now + delay };
                self.failed(kind)
            }
            Err(_) => {
                let delay = backoff(backoff_initial, backoff_max, port.failures);
                port.failures = port.failures.saturating_add(1);
                match &mut port.state {
                    PortState::Unmapped { next_try, candidate, tried } => {
                        *next_try = now + delay;
                        *candidate = port.request.internal_port;
                        *tried = 0;
                    }
                    PortState::Mapped { renew_at, expires_at, .. } => {
                        // Retry before the lease runs out: at most half the time left.
                        let left = expires_at.map(|e| e.saturating_duration_since(now) / 2);
                        let delay =
                            left.map_or(delay, |l| delay.min(l.max(Duration::from_secs(1))));
                        *renew_at = now + delay;
                    }
                }
                self.failed(kind)
            }
        }
    }

    /// The gateway's external IP, once learned.
    pub(crate) fn external_ip(&self) -> Option<IpAddr> {
        self.external_ip
    }

    /// The mappings currently held (the lease has not run out), in request order.
    pub(crate) fn held(&self, now: Instant) -> Vec<Held> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(index, port)| match port.state {
                PortState::Mapped { external, lease_secs, expires_at, .. }
                    if expires_at.is_none_or(|e| now < e) =>
                {
                    Some(Held {
                        index,
                        protocol: port.request.transport,
                        external_port: external,
                        lease_secs,
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// The interval between refreshes of the external IP (and of permanent mappings).
    fn refresh_interval(&self) -> Duration {
        let lease = u64::from(self.timing.lease_secs.max(2));
        Duration::from_secs(lease / 2)
    }

    fn backoff(&self, failures: u32) -> Duration {
        backoff(self.timing.backoff_initial, self.timing.backoff_max, failures)
    }

    /// A pseudo-random external port in 1024..=65535 other than `not` (xorshift64).
    fn next_candidate(&mut self, not: u16) -> u16 {
        let span = u64::from(u16::MAX - 1024) + 1;
        loop {
            let mut x = self.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.rng = x;
            // < 65536 by construction.
            let port = u16::try_from(1024 + x % span).unwrap_or(u16::MAX);
            if port != not {
                return port;
            }
        }
    }

    fn failed(&mut self, kind: FailureKind) -> Log {
        if self.reported.contains(&kind) {
            Log::Repeated(kind)
        } else {
            self.reported.push(kind);
            Log::Failure(kind)
        }
    }

    fn succeeded(&mut self, kind: FailureKind) -> Log {
        let before = self.reported.len();
        self.reported.retain(|k| *k != kind);
        if self.reported.len() < before { Log::Recovered(kind) } else { Log::Nothing }
    }
}

/// `initial * 2^failures`, at most `max`.
fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.min(16);
    initial.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    const LEASE: u32 = 3600;

    fn timing() -> Timing {
        Timing {
            lease_secs: LEASE,
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
        }
    }

    fn ports() -> Vec<PortRequest> {
        vec![PortRequest::mconn(26656), PortRequest::quic(26656)]
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Discovers, learns the IP and maps both ports at `t0`.
    fn mapped(t0: Instant) -> Machine {
        let mut m = Machine::new(timing(), &ports(), t0, 42);
        assert_eq!(m.poll(t0), Action::Discover);
        assert_eq!(m.on_discover(t0, true), Log::Nothing);
        assert_eq!(m.poll(t0), Action::ExternalIp);
        assert_eq!(m.on_external_ip(t0, Some([203, 0, 113, 7].into())), Log::Nothing);
        for (index, protocol) in [(0, PortProtocol::Tcp), (1, PortProtocol::Udp)] {
            assert_eq!(
                m.poll(t0),
                Action::Map {
                    index,
                    protocol,
                    internal_port: 26656,
                    external_port: 26656,
                    lease_secs: LEASE,
                    renewal: false
                }
            );
            assert_eq!(m.on_map(t0, index, 26656, LEASE, Ok(())), Log::Nothing);
        }
        m
    }

    #[test]
    fn maps_same_port_first_then_waits_for_half_the_lease() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        assert_eq!(m.external_ip(), Some([203, 0, 113, 7].into()));
        let held = m.held(t0);
        assert_eq!(held.len(), 2);
        assert!(held.iter().all(|h| h.external_port == 26656 && h.lease_secs == LEASE));
        // Nothing until half the lease: then the IP is refreshed and both ports renewed.
        assert_eq!(m.poll(t0 + secs(1)), Action::Wait { until: t0 + secs(1800) });
        let t1 = t0 + secs(1800);
        assert_eq!(m.poll(t1), Action::ExternalIp);
        m.on_external_ip(t1, Some([203, 0, 113, 7].into()));
        for index in 0..2 {
            match m.poll(t1) {
                Action::Map {
                    index: i, external_port: 26656, renewal: true, lease_secs, ..
                } => {
                    assert_eq!((i, lease_secs), (index, LEASE));
                }
                other => panic!("expected a renewal, got {other:?}"),
            }
            m.on_map(t1, index, 26656, LEASE, Ok(()));
        }
        assert_eq!(m.poll(t1), Action::Wait { until: t1 + secs(1800) });
    }

    #[test]
    fn no_gateway_backs_off_exponentially_up_to_the_cap_and_logs_once() {
        let t0 = Instant::now();
        let mut m = Machine::new(timing(), &ports(), t0, 1);
        let mut now = t0;
        let mut delays = Vec::new();
        let mut logs = Vec::new();
        for _ in 0..9 {
            assert_eq!(m.poll(now), Action::Discover);
            logs.push(m.on_discover(now, false));
            let Action::Wait { until } = m.poll(now) else { panic!("should wait") };
            delays.push(until - now);
            now = until;
        }
        let expected: Vec<_> = [5, 10, 20, 40, 80, 160, 300, 300, 300].map(secs).into();
        assert_eq!(delays, expected);
        assert_eq!(logs[0], Log::Failure(FailureKind::Discovery));
        assert!(logs[1..].iter().all(|l| *l == Log::Repeated(FailureKind::Discovery)));
        assert!(m.held(now).is_empty());
        // Found at last: the recovery is logged, the backoff reset.
        assert_eq!(m.poll(now), Action::Discover);
        assert_eq!(m.on_discover(now, true), Log::Recovered(FailureKind::Discovery));
        assert_eq!(m.poll(now), Action::ExternalIp);
        m.on_external_ip(now, None);
        let Action::Wait { until } = m.poll(now) else { panic!("should wait") };
        assert_eq!(until - now, secs(5), "a failed IP query starts its own backoff");
    }

    #[test]
    fn a_taken_port_falls_back_to_other_ports() {
        let t0 = Instant::now();
        let mut m = Machine::new(timing(), &ports()[..1], t0, 7);
        m.on_discover(t0, true);
        m.poll(t0);
        m.on_external_ip(t0, Some([198, 51, 100, 1].into()));
        let mut tried = Vec::new();
        for _ in 0..MAX_PORT_CANDIDATES {
            let Action::Map { external_port, renewal: false, .. } = m.poll(t0) else {
                panic!("should map")
            };
            tried.push(external_port);
            let log = m.on_map(t0, 0, external_port, LEASE, Err(MapFailure::PortInUse));
            if tried.len() < usize::from(MAX_PORT_CANDIDATES) {
                assert_eq!(log, Log::Nothing, "a taken port is not yet a failure");
            } else {
                assert_eq!(log, Log::Failure(FailureKind::Map(0)));
            }
        }
        assert_eq!(tried[0], 26656);
        assert!(tried[1..].iter().all(|p| *p >= 1024 && *p != 26656));
        let mut distinct = tried.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), tried.len(), "each candidate is new: {tried:?}");
        // All taken: back off, then start over with the same port number.
        assert_eq!(m.poll(t0), Action::Wait { until: t0 + secs(5) });
        let t1 = t0 + secs(5);
        let Action::Map { external_port, .. } = m.poll(t1) else { panic!("should map") };
        assert_eq!(external_port, 26656);
        // A fallback port that works is held and renewed as such.
        m.on_map(t1, 0, external_port, LEASE, Err(MapFailure::PortInUse));
        let Action::Map { external_port: other, .. } = m.poll(t1) else { panic!("should map") };
        assert_eq!(m.on_map(t1, 0, other, LEASE, Ok(())), Log::Recovered(FailureKind::Map(0)));
        assert_eq!(m.held(t1)[0].external_port, other);
    }

    #[test]
    fn only_permanent_leases_switches_to_lease_zero_for_every_port() {
        let t0 = Instant::now();
        let mut m = Machine::new(timing(), &ports(), t0, 3);
        m.on_discover(t0, true);
        m.poll(t0);
        m.on_external_ip(t0, Some([198, 51, 100, 1].into()));
        assert_eq!(
            m.on_map(t0, 0, 26656, LEASE, Err(MapFailure::OnlyPermanentLeases)),
            Log::PermanentLeases
        );
        for index in 0..2 {
            let Action::Map { index: i, lease_secs, external_port, .. } = m.poll(t0) else {
                panic!("should map")
            };
            assert_eq!((i, lease_secs, external_port), (index, 0, 26656));
            assert_eq!(m.on_map(t0, index, 26656, 0, Ok(())), Log::Nothing);
        }
        // A permanent mapping never expires but is refreshed every half lease.
        let late = t0 + secs(100_000);
        assert_eq!(m.held(late).len(), 2);
        assert_eq!(m.poll(t0), Action::Wait { until: t0 + secs(1800) });
        // A 725 for lease 0 is not a reason to loop.
        let t1 = t0 + secs(1800);
        m.on_external_ip(t1, Some([198, 51, 100, 1].into()));
        let log = m.on_map(t1, 0, 26656, 0, Err(MapFailure::OnlyPermanentLeases));
        assert_eq!(log, Log::Failure(FailureKind::Renew(0)));
    }

    #[test]
    fn a_failed_renewal_retries_before_expiry_then_drops_the_mapping() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        let mut now = t0 + secs(1800);
        m.poll(now);
        m.on_external_ip(now, Some([203, 0, 113, 7].into()));
        let mut logs = Vec::new();
        // Renewals of port 0 keep failing (port 1 renews fine).
        loop {
            match m.poll(now) {
                Action::Map { index: 0, renewal: true, external_port, lease_secs, .. } => {
                    logs.push(m.on_map(
                        now,
                        0,
                        external_port,
                        lease_secs,
                        Err(MapFailure::Refused),
                    ));
                }
                Action::Map { index: 1, external_port, lease_secs, .. } => {
                    m.on_map(now, 1, external_port, lease_secs, Ok(()));
                }
                Action::Map { index: 0, renewal: false, .. } => break,
                Action::Wait { until } => {
                    assert!(until > now);
                    now = until;
                }
                Action::ExternalIp => {
                    m.on_external_ip(now, Some([203, 0, 113, 7].into()));
                }
                other => panic!("unexpected {other:?}"),
            }
            // Until the lease runs out, the mapping is still held and advertised.
            let held = m.held(now);
            if now < t0 + secs(3600) {
                assert!(held.iter().any(|h| h.index == 0), "held at {:?}", now - t0);
            } else {
                assert!(held.iter().all(|h| h.index != 0));
            }
            assert!(logs.len() < 64, "bounded retries before expiry");
        }
        assert_eq!(now, t0 + secs(3600), "the mapping is re-added once it expired");
        assert_eq!(logs[0], Log::Failure(FailureKind::Renew(0)));
        assert!(logs[1..].iter().all(|l| *l == Log::Repeated(FailureKind::Renew(0))));
        assert!(logs.len() > 3, "retried several times before expiry: {logs:?}");
    }

    #[test]
    fn an_unreachable_gateway_is_searched_again_and_held_mappings_are_renewed() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        let t1 = t0 + secs(1800);
        m.poll(t1);
        m.on_external_ip(t1, Some([203, 0, 113, 7].into()));
        let Action::Map { index: 0, .. } = m.poll(t1) else { panic!("should renew") };
        let log = m.on_map(t1, 0, 26656, LEASE, Err(MapFailure::Unreachable));
        assert_eq!(log, Log::Failure(FailureKind::Renew(0)));
        assert_eq!(m.poll(t1), Action::Wait { until: t1 + secs(5) });
        assert_eq!(m.held(t1).len(), 2, "still held until the lease runs out");
        let t2 = t1 + secs(5);
        assert_eq!(m.poll(t2), Action::Discover);
        m.on_discover(t2, true);
        assert_eq!(m.poll(t2), Action::ExternalIp);
        m.on_external_ip(t2, Some([203, 0, 113, 9].into()));
        assert_eq!(m.external_ip(), Some([203, 0, 113, 9].into()), "a new IP is taken");
        for index in 0..2 {
            let Action::Map { index: i, renewal: true, external_port: 26656, .. } = m.poll(t2)
            else {
                panic!("should renew at once")
            };
            assert_eq!(i, index);
            let log = m.on_map(t2, index, 26656, LEASE, Ok(()));
            let expected =
                if index == 0 { Log::Recovered(FailureKind::Renew(0)) } else { Log::Nothing };
            assert_eq!(log, expected);
        }
    }

    #[test]
    fn a_renewal_finding_the_port_taken_maps_another() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        let t1 = t0 + secs(1800);
        m.poll(t1);
        m.on_external_ip(t1, Some([203, 0, 113, 7].into()));
        m.poll(t1);
        let log = m.on_map(t1, 0, 26656, LEASE, Err(MapFailure::PortInUse));
        assert_eq!(log, Log::Failure(FailureKind::Renew(0)));
        let Action::Map { index: 0, external_port, renewal: false, .. } = m.poll(t1) else {
            panic!("should map another port")
        };
        assert_ne!(external_port, 26656);
        assert!(m.held(t1).iter().all(|h| h.index != 0));
    }

    #[test]
    fn backoff_is_bounded() {
        let (i, max) = (secs(5), secs(300));
        assert_eq!(backoff(i, max, 0), secs(5));
        assert_eq!(backoff(i, max, 3), secs(40));
        assert_eq!(backoff(i, max, u32::MAX), max);
    }
}
