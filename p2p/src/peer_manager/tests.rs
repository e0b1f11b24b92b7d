use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

const SELF: u8 = 0x80;
const HOUR: Duration = Duration::from_secs(3600);

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n; 20])
}

fn addr(n: u8) -> NodeAddress {
    format!("memory:{}", id(n)).parse().unwrap()
}

fn addr_port(n: u8, port: u16) -> NodeAddress {
    format!("mconn://{}@127.0.0.1:{port}", id(n)).parse().unwrap()
}

fn t(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn config() -> PeerManagerConfig {
    PeerManagerConfig { rng_seed: 7, ..PeerManagerConfig::default() }
}

fn manager(config: PeerManagerConfig) -> PeerManager {
    PeerManager::new(id(SELF), config, Vec::new(), t(0))
}

/// Admits an inbound connection from peer `n` and reports it ready.
fn connect_inbound(pm: &mut PeerManager, n: u8, conn: u64, now: Timestamp) {
    assert_eq!(pm.accepted(id(n), ConnectionId(conn), now), Ok(Admission::Accepted));
    pm.ready(id(n), ConnectionId(conn), now);
}

fn updates(pm: &mut PeerManager) -> Vec<(NodeId, PeerStatus, u64)> {
    pm.drain_updates().map(|u| (u.node_id, u.status, u.connection.0)).collect()
}

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn score_decays_with_half_life_and_is_bounded() {
    let mut pm = manager(config());
    let now = t(1_000_000);
    pm.add_address(addr(1), now).unwrap();
    for _ in 0..10 {
        pm.report_good(id(1), now);
    }
    assert!(approx(pm.score(id(1), now).unwrap(), 10.0));
    assert!(approx(pm.score(id(1), now + HOUR).unwrap(), 5.0));
    assert!(approx(pm.score(id(1), now + 2 * HOUR).unwrap(), 2.5));

    // A change applies the decay first: 5 - 10 = -5, which decays toward 0 as well.
    pm.report(id(1), Severity::Disconnect, now + HOUR);
    assert!(approx(pm.score(id(1), now + HOUR).unwrap(), -5.0));
    assert!(approx(pm.score(id(1), now + 2 * HOUR).unwrap(), -2.5));

    for _ in 0..500 {
        pm.report_good(id(1), now + 2 * HOUR);
    }
    assert!(approx(pm.score(id(1), now + 2 * HOUR).unwrap(), MAX_SCORE));
    for _ in 0..500 {
        pm.report(id(1), Severity::Disconnect, now + 2 * HOUR);
    }
    assert!(approx(pm.score(id(1), now + 2 * HOUR).unwrap(), MIN_SCORE));
    assert_eq!(pm.score(id(2), now), None);

    // Persistent peers keep their fixed top score.
    let mut pm = manager(PeerManagerConfig { persistent_peers: vec![addr(3)], ..config() });
    pm.report(id(3), Severity::Disconnect, now);
    assert_eq!(pm.score(id(3), now), Some(PERSISTENT_SCORE));
}

#[test]
fn dial_order_by_score_then_failures_then_id() {
    let mut pm = manager(PeerManagerConfig { max_outgoing: 100, ..config() });
    let now = t(0);
    for n in [5, 4, 3, 2, 1] {
        pm.add_address(addr(n), now).unwrap();
    }
    pm.report_good(id(3), now);
    pm.report_good(id(3), now);
    pm.report_good(id(2), now);
    pm.report(id(1), Severity::Minor, now);
    let order: Vec<NodeAddress> = std::iter::from_fn(|| pm.dial_next(now)).collect();
    assert_eq!(order, vec![addr(3), addr(2), addr(4), addr(5), addr(1)]);
    assert_eq!(pm.num_dialing(), 5);
    assert_eq!(pm.next_dial_at(), None);
}

#[test]
fn dial_picks_address_with_fewest_failures() {
    let mut pm = manager(config());
    let now = t(0);
    assert_eq!(pm.add_address(addr_port(1, 26656), now), Ok(true));
    assert_eq!(pm.add_address(addr_port(1, 26657), now), Ok(true));
    assert_eq!(pm.add_address(addr_port(1, 26657), now), Ok(false));
    assert_eq!(pm.dial_next(now), Some(addr_port(1, 26656)));
    pm.dial_failed(&addr_port(1, 26656), now);
    // The failed address backs off; the other one is ready at once.
    assert_eq!(pm.dial_next(now), Some(addr_port(1, 26657)));
    assert_eq!(pm.dialed(&addr_port(1, 26657), ConnectionId(1), now), Ok(Admission::Accepted));
}

/// Fails `rounds` dials of peer 1 as soon as they are due; returns the retry delays.
fn failure_delays(pm: &mut PeerManager, rounds: usize) -> Vec<Duration> {
    let mut now = t(10_000);
    let mut delays = Vec::new();
    for _ in 0..rounds {
        assert_eq!(pm.dial_next(now), Some(addr(1)));
        pm.dial_failed(&addr(1), now);
        let next = pm.next_dial_at().unwrap();
        assert_eq!(pm.dial_next(t(next.as_millis() - 1)), None);
        delays.push(next.saturating_sub(now));
        now = next;
    }
    delays
}

fn assert_within_jitter(delay: Duration, base: Duration) {
    assert!(
        delay >= base && delay <= base.mul_f64(1.25),
        "{delay:?} not in [{base:?}, {base:?} * 1.25]"
    );
}

#[test]
fn backoff_doubles_caps_and_is_reproducible() {
    let cfg = PeerManagerConfig {
        min_retry: Duration::from_secs(1),
        max_retry: Duration::from_secs(8),
        ..config()
    };
    let mut pm = manager(cfg.clone());
    pm.add_address(addr(1), t(0)).unwrap();
    let delays = failure_delays(&mut pm, 8);
    for (k, delay) in delays.iter().enumerate() {
        let base = Duration::from_secs(1 << k.min(3));
        assert_within_jitter(*delay, base);
    }

    let mut same = manager(cfg.clone());
    same.add_address(addr(1), t(0)).unwrap();
    assert_eq!(failure_delays(&mut same, 8), delays);

    let mut other = manager(PeerManagerConfig { rng_seed: 8, ..cfg });
    other.add_address(addr(1), t(0)).unwrap();
    assert_ne!(failure_delays(&mut other, 8), delays);
}

#[test]
fn successful_dial_resets_backoff() {
    let mut pm = manager(PeerManagerConfig { min_retry: Duration::from_secs(1), ..config() });
    pm.add_address(addr(1), t(0)).unwrap();
    failure_delays(&mut pm, 3);
    let now = pm.next_dial_at().unwrap();
    assert_eq!(pm.dial_next(now), Some(addr(1)));
    assert_eq!(pm.dialed(&addr(1), ConnectionId(1), now), Ok(Admission::Accepted));
    pm.disconnected(id(1), ConnectionId(1), now);
    // Only the short pause after an outbound disconnect, no backoff.
    assert_eq!(pm.next_dial_at(), Some(now + Duration::from_secs(1)));
    let ops = pm.drain_dirty();
    let Some(StoreOp::Put(record)) =
        ops.iter().find(|op| matches!(op, StoreOp::Put(r) if r.node_id == id(1)))
    else {
        panic!("no record for peer 1: {ops:?}");
    };
    assert_eq!(record.addresses.first().map(|a| a.failures), Some(0));
}

#[test]
fn persistent_peers_are_never_given_up_and_capped() {
    let cfg = PeerManagerConfig {
        min_retry: Duration::from_secs(1),
        max_retry_persistent: Duration::from_secs(5),
        max_dial_failures: 3,
        persistent_peers: vec![addr(1)],
        ..config()
    };
    let mut pm = manager(cfg);
    let delays = failure_delays(&mut pm, 30);
    for (k, delay) in delays.iter().enumerate() {
        let base = Duration::from_secs(1 << k.min(3)).min(Duration::from_secs(5));
        assert_within_jitter(*delay, base);
    }
    assert!(pm.is_persistent(id(1)));
    assert_eq!(pm.addresses(id(1)), vec![addr(1)]);
    assert_eq!(pm.score(id(1), t(0)), Some(PERSISTENT_SCORE));
}

#[test]
fn non_persistent_peer_forgotten_after_max_dial_failures() {
    let mut pm = manager(PeerManagerConfig { max_dial_failures: 3, ..config() });
    pm.add_address(addr(1), t(0)).unwrap();
    pm.drain_dirty();
    failure_delays(&mut pm, 3);
    assert_eq!(pm.num_known(), 1);
    let now = pm.next_dial_at().unwrap();
    assert_eq!(pm.dial_next(now), Some(addr(1)));
    pm.dial_failed(&addr(1), now);
    assert_eq!(pm.num_known(), 0);
    assert_eq!(pm.drain_dirty(), vec![StoreOp::Delete(id(1))]);
    assert_eq!(pm.dial_next(now + HOUR), None);
    assert_eq!(pm.next_dial_at(), None);
}

#[test]
fn max_outgoing_is_respected() {
    let mut pm = manager(PeerManagerConfig { max_outgoing: 3, ..config() });
    for n in 1..=10 {
        pm.add_address(addr(n), t(0)).unwrap();
    }
    let dials: Vec<NodeAddress> = std::iter::from_fn(|| pm.dial_next(t(0))).collect();
    assert_eq!(dials, vec![addr(1), addr(2), addr(3)]);
    assert_eq!(pm.dialed(&addr(1), ConnectionId(1), t(0)), Ok(Admission::Accepted));
    assert_eq!(pm.dial_next(t(0)), None);
    pm.dial_failed(&addr(2), t(0));
    assert_eq!(pm.dial_next(t(0)), Some(addr(4)));
    assert_eq!(pm.dial_next(t(0)), None);
    // Inbound connections do not use outbound slots.
    connect_inbound(&mut pm, 20, 20, t(0));
    assert_eq!(pm.dial_next(t(0)), None);
    pm.disconnected(id(1), ConnectionId(1), t(0));
    assert_eq!(pm.dial_next(t(0)), Some(addr(5)));
}

#[test]
fn persistent_peers_are_dialed_beyond_max_outgoing() {
    let cfg = PeerManagerConfig { max_outgoing: 1, persistent_peers: vec![addr(9)], ..config() };
    let mut pm = manager(cfg);
    pm.add_address(addr(1), t(0)).unwrap();
    assert_eq!(pm.dial_next(t(0)), Some(addr(9)));
    assert_eq!(pm.dial_next(t(0)), None);
    pm.dial_failed(&addr(9), t(0));
    // While the persistent peer backs off, a regular peer takes the only outbound slot...
    assert_eq!(pm.dial_next(t(0)), Some(addr(1)));
    assert_eq!(pm.dialed(&addr(1), ConnectionId(1), t(0)), Ok(Admission::Accepted));
    // ...but the persistent peer is still dialed when its retry time comes.
    let retry = pm.next_dial_at().unwrap();
    assert_eq!(pm.dial_next(retry), Some(addr(9)));
    assert_eq!(pm.dialed(&addr(9), ConnectionId(2), retry), Ok(Admission::Accepted));
    assert_eq!(pm.num_outbound(), 2);
}

#[test]
fn max_connected_is_respected() {
    let mut pm = manager(PeerManagerConfig { max_connected: 2, max_upgrade: 0, ..config() });
    pm.add_address(addr(1), t(0)).unwrap();
    assert_eq!(pm.dial_next(t(0)), Some(addr(1)));
    connect_inbound(&mut pm, 2, 2, t(0));
    // One connected plus one dialing: no more dials; the inbound slot is still free.
    pm.add_address(addr(3), t(0)).unwrap();
    assert_eq!(pm.dial_next(t(0)), None);
    connect_inbound(&mut pm, 4, 4, t(0));
    assert_eq!(pm.accepted(id(5), ConnectionId(5), t(0)), Err(Rejection::Full));
    // The dial completes into a full node.
    assert_eq!(pm.dialed(&addr(1), ConnectionId(1), t(0)), Err(Rejection::Full));
    assert_eq!(pm.num_connected(), 2);
    assert_eq!(pm.num_dialing(), 0);
    assert_eq!(pm.evict_next(), None);
}

#[test]
fn upgrade_dial_evicts_lowest_peer() {
    let mut pm = manager(PeerManagerConfig { max_connected: 2, max_upgrade: 1, ..config() });
    let now = t(0);
    connect_inbound(&mut pm, 1, 1, now);
    connect_inbound(&mut pm, 2, 2, now);
    pm.report(id(1), Severity::Minor, now); // peer 1: 1 - 1 = 0; peer 2: 1.
    pm.add_address(addr(3), now).unwrap();
    // Score 0 is not better than the lowest connected peer (0).
    assert_eq!(pm.dial_next(now), None);
    pm.report_good(id(3), now);
    assert_eq!(pm.dial_next(now), Some(addr(3)));
    assert_eq!(pm.evict_next(), None);
    assert_eq!(pm.dialed(&addr(3), ConnectionId(3), now), Ok(Admission::Accepted));
    assert_eq!(
        pm.evict_next(),
        Some(Eviction {
            node_id: id(1),
            connection: ConnectionId(1),
            reason: EvictReason::Upgrade
        })
    );
    assert_eq!(pm.evict_next(), None);
    // No more room for upgrades until the eviction completes.
    pm.add_address(addr(4), now).unwrap();
    for _ in 0..50 {
        pm.report_good(id(4), now);
    }
    assert_eq!(pm.dial_next(now), None);
    pm.disconnected(id(1), ConnectionId(1), now);
    assert_eq!(pm.num_connected(), 2);
    assert_eq!(pm.dial_next(now), Some(addr(4)));
}

#[test]
fn inbound_upgrade_evicts_lowest_peer() {
    let mut pm = manager(PeerManagerConfig { max_connected: 2, max_upgrade: 1, ..config() });
    let now = t(0);
    connect_inbound(&mut pm, 1, 1, now);
    connect_inbound(&mut pm, 2, 2, now);
    // An unknown peer (score 0) is not better than the connected ones (1).
    assert_eq!(pm.accepted(id(3), ConnectionId(3), now), Err(Rejection::Full));
    pm.add_address(addr(3), now).unwrap();
    pm.report_good(id(3), now);
    pm.report_good(id(3), now);
    assert_eq!(pm.accepted(id(3), ConnectionId(3), now), Ok(Admission::Accepted));
    assert_eq!(
        pm.evict_next(),
        Some(Eviction {
            node_id: id(1),
            connection: ConnectionId(1),
            reason: EvictReason::Upgrade
        })
    );
    // The upgrade slot is taken: even a persistent-grade score cannot get in.
    pm.add_address(addr(4), now).unwrap();
    for _ in 0..50 {
        pm.report_good(id(4), now);
    }
    assert_eq!(pm.accepted(id(4), ConnectionId(4), now), Err(Rejection::Full));
    assert!(pm.num_connected() <= 3);
}

/// One side of a physical connection.
#[derive(Clone, Copy, Debug)]
enum Event {
    /// `dialer` completes the dial of connection `conn`.
    Dialed { dialer: usize, conn: u64 },
    /// The other node accepts connection `conn` dialed by `dialer`.
    Accepted { dialer: usize, conn: u64 },
}

fn permutations(events: &[Event]) -> Vec<Vec<Event>> {
    if events.len() <= 1 {
        return vec![events.to_vec()];
    }
    let mut all = Vec::new();
    for i in 0..events.len() {
        let mut rest = events.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first);
            all.push(tail);
        }
    }
    all
}

#[test]
fn simultaneous_dials_keep_the_same_connection_on_both_nodes() {
    let ids = [id(1), id(2)];
    let addrs = [addr(1), addr(2)];
    // Connection 1 is dialed by node 0 (lower ID), connection 2 by node 1.
    let events = [
        Event::Dialed { dialer: 0, conn: 1 },
        Event::Accepted { dialer: 0, conn: 1 },
        Event::Dialed { dialer: 1, conn: 2 },
        Event::Accepted { dialer: 1, conn: 2 },
    ];
    for order in permutations(&events) {
        let mut nodes = [0, 1].map(|i| {
            let mut pm = PeerManager::new(ids[i], config(), Vec::new(), t(0));
            pm.add_address(addrs[1 - i].clone(), t(0)).unwrap();
            assert_eq!(pm.dial_next(t(0)), Some(addrs[1 - i].clone()));
            pm
        });
        let mut closed: Vec<u64> = Vec::new();
        for event in &order {
            let (node, peer, conn, result) = match *event {
                Event::Dialed { dialer, conn } if !closed.contains(&conn) => {
                    let r = nodes[dialer].dialed(&addrs[1 - dialer], ConnectionId(conn), t(1));
                    (dialer, 1 - dialer, conn, r)
                }
                Event::Accepted { dialer, conn } if !closed.contains(&conn) => {
                    let r = nodes[1 - dialer].accepted(ids[dialer], ConnectionId(conn), t(1));
                    (1 - dialer, dialer, conn, r)
                }
                Event::Dialed { dialer, .. } => {
                    // The other end closed the connection before our handshake completed.
                    nodes[dialer].dial_failed(&addrs[1 - dialer], t(1));
                    continue;
                }
                Event::Accepted { .. } => continue,
            };
            // Whatever one end closes, the other end sees closing.
            let to_close = match result {
                Ok(Admission::Accepted) => None,
                Ok(Admission::Replaces(old)) => Some(old.0),
                Err(Rejection::TieBreakLost) => Some(conn),
                Err(other) => panic!("{order:?}: unexpected {other:?}"),
            };
            if let Some(c) = to_close {
                closed.push(c);
                nodes[node].disconnected(ids[peer], ConnectionId(c), t(1));
                nodes[peer].disconnected(ids[node], ConnectionId(c), t(1));
            }
        }
        for (i, pm) in nodes.iter().enumerate() {
            let expected = if i == 0 { Direction::Outbound } else { Direction::Inbound };
            assert_eq!(pm.connection(ids[1 - i]), Some((ConnectionId(1), expected)), "{order:?}");
            assert!(!pm.is_dialing(ids[1 - i]), "{order:?}");
        }
    }
}

#[test]
fn duplicate_in_different_directions_keeps_the_lower_ids_dial() {
    let mut pm = manager(config());
    // Peer 1 < self: its dial (our inbound) wins over ours.
    pm.add_address(addr(1), t(0)).unwrap();
    pm.dial_next(t(0));
    assert_eq!(pm.dialed(&addr(1), ConnectionId(1), t(0)), Ok(Admission::Accepted));
    assert_eq!(pm.accepted(id(1), ConnectionId(2), t(0)), Ok(Admission::Replaces(ConnectionId(1))));
    assert_eq!(pm.connection(id(1)), Some((ConnectionId(2), Direction::Inbound)));
    // Peer 0xf0 > self: our dial wins.
    pm.add_address(addr(0xf0), t(0)).unwrap();
    assert_eq!(pm.dial_next(t(0)), Some(addr(0xf0)));
    assert_eq!(pm.accepted(id(0xf0), ConnectionId(3), t(0)), Err(Rejection::TieBreakLost));
    assert!(pm.is_dialing(id(0xf0)));
    assert_eq!(pm.dialed(&addr(0xf0), ConnectionId(4), t(0)), Ok(Admission::Accepted));
    assert_eq!(pm.accepted(id(0xf0), ConnectionId(5), t(0)), Err(Rejection::TieBreakLost));
    assert_eq!(pm.connection(id(0xf0)), Some((ConnectionId(4), Direction::Outbound)));
}

#[test]
fn same_direction_connection_replaces_the_old_one() {
    let mut pm = manager(config());
    connect_inbound(&mut pm, 1, 1, t(0));
    assert_eq!(pm.accepted(id(1), ConnectionId(1), t(0)), Err(Rejection::AlreadyConnected));
    assert_eq!(pm.accepted(id(1), ConnectionId(2), t(1)), Ok(Admission::Replaces(ConnectionId(1))));
    assert_eq!(updates(&mut pm), vec![(id(1), PeerStatus::Up, 1), (id(1), PeerStatus::Down, 1)]);
    // The old connection's close is ignored; the new one comes up.
    pm.disconnected(id(1), ConnectionId(1), t(2));
    pm.ready(id(1), ConnectionId(2), t(2));
    assert_eq!(updates(&mut pm), vec![(id(1), PeerStatus::Up, 2)]);
    assert_eq!(pm.connection(id(1)), Some((ConnectionId(2), Direction::Inbound)));
    // Replacing a connection that never became ready emits nothing.
    assert_eq!(pm.accepted(id(1), ConnectionId(3), t(3)), Ok(Admission::Replaces(ConnectionId(2))));
    assert_eq!(pm.accepted(id(1), ConnectionId(4), t(3)), Ok(Admission::Replaces(ConnectionId(3))));
    assert_eq!(updates(&mut pm), vec![(id(1), PeerStatus::Down, 2)]);
}

#[test]
fn ban_evicts_and_expires_in_virtual_time() {
    let ban = Duration::from_secs(60);
    let mut pm = manager(PeerManagerConfig { ban_duration: ban, ..config() });
    let start = t(1_000);
    pm.add_address(addr(1), start).unwrap();
    connect_inbound(&mut pm, 1, 1, start);
    pm.report(id(1), Severity::Ban, start);
    assert!(pm.is_banned(id(1), start));
    let until = start + ban;
    assert_eq!(
        pm.evict_next(),
        Some(Eviction { node_id: id(1), connection: ConnectionId(1), reason: EvictReason::Banned })
    );
    pm.report(id(1), Severity::Ban, start);
    pm.report(id(1), Severity::Disconnect, start);
    assert_eq!(pm.evict_next(), None);
    pm.disconnected(id(1), ConnectionId(1), start);

    let later = t(2_000);
    assert_eq!(pm.accepted(id(1), ConnectionId(2), later), Err(Rejection::Banned { until }));
    assert_eq!(pm.add_address(addr_port(1, 1), later), Err(AddAddressError::Banned { until }));
    assert_eq!(pm.dial_next(later), None);
    assert_eq!(pm.next_dial_at(), Some(until));
    assert!(pm.is_banned(id(1), t(until.as_millis() - 1)));
    assert!(!pm.is_banned(id(1), until));
    assert_eq!(pm.dial_next(until), Some(addr(1)));
}

#[test]
fn banned_inbound_peer_is_remembered_and_not_readdable() {
    let mut pm = manager(config());
    connect_inbound(&mut pm, 1, 1, t(0));
    pm.report(id(1), Severity::Ban, t(0));
    pm.disconnected(id(1), ConnectionId(1), t(0));
    assert!(pm.is_banned(id(1), t(0)));
    assert_eq!(pm.add_address(addr(1), t(1)), Err(AddAddressError::Banned { until: t(0) + HOUR }));
    assert_eq!(pm.add_address(addr(1), t(0) + HOUR), Ok(true));
}

#[test]
fn persistent_peers_are_evicted_but_not_banned() {
    let mut pm = manager(PeerManagerConfig { persistent_peers: vec![addr(1)], ..config() });
    assert_eq!(pm.dial_next(t(0)), Some(addr(1)));
    assert_eq!(pm.dialed(&addr(1), ConnectionId(1), t(0)), Ok(Admission::Accepted));
    pm.report(id(1), Severity::Ban, t(0));
    assert!(!pm.is_banned(id(1), t(0)));
    assert_eq!(pm.evict_next().map(|e| e.reason), Some(EvictReason::Misbehaved));
    pm.disconnected(id(1), ConnectionId(1), t(0));
    assert_eq!(pm.dial_next(t(0)), None);
    assert_eq!(pm.next_dial_at(), Some(t(250)));
    assert_eq!(pm.dial_next(t(250)), Some(addr(1)));
}

#[test]
fn up_and_down_alternate_in_order() {
    let mut pm = manager(config());
    assert_eq!(pm.accepted(id(1), ConnectionId(1), t(0)), Ok(Admission::Accepted));
    assert_eq!(pm.accepted(id(2), ConnectionId(2), t(0)), Ok(Admission::Accepted));
    // Closing a connection that never became ready emits nothing.
    pm.disconnected(id(2), ConnectionId(2), t(0));
    pm.ready(id(1), ConnectionId(1), t(0));
    pm.ready(id(1), ConnectionId(1), t(0));
    pm.ready(id(1), ConnectionId(9), t(0));
    pm.ready(id(2), ConnectionId(2), t(0));
    connect_inbound(&mut pm, 2, 3, t(1));
    pm.disconnected(id(1), ConnectionId(9), t(2));
    pm.disconnected(id(1), ConnectionId(1), t(2));
    pm.disconnected(id(1), ConnectionId(1), t(2));
    pm.disconnected(id(2), ConnectionId(3), t(3));
    assert_eq!(
        updates(&mut pm),
        vec![
            (id(1), PeerStatus::Up, 1),
            (id(2), PeerStatus::Up, 3),
            (id(1), PeerStatus::Down, 1),
            (id(2), PeerStatus::Down, 3),
        ]
    );
    // Peers without addresses are forgotten once disconnected.
    assert_eq!(pm.num_known(), 0);
}

#[test]
fn self_and_unsolicited_connections_are_rejected() {
    let mut pm = manager(config());
    assert_eq!(pm.add_address(addr(SELF), t(0)), Err(AddAddressError::OwnAddress));
    assert_eq!(pm.accepted(id(SELF), ConnectionId(1), t(0)), Err(Rejection::Self_));
    assert_eq!(pm.dialed(&addr(SELF), ConnectionId(1), t(0)), Err(Rejection::Self_));
    assert_eq!(pm.dialed(&addr(1), ConnectionId(1), t(0)), Err(Rejection::NotDialing));
    pm.add_address(addr(1), t(0)).unwrap();
    assert_eq!(pm.dialed(&addr(1), ConnectionId(1), t(0)), Err(Rejection::NotDialing));
}

#[test]
fn store_round_trip_keeps_peers_scores_and_bans() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.redb");
    let start = t(1_700_000_000_000);
    let cfg = PeerManagerConfig {
        persistent_peers: vec![addr(4)],
        min_retry: Duration::from_secs(10),
        ..config()
    };
    {
        let store = PeerStore::open(&path).unwrap();
        assert!(store.load().unwrap().is_empty());
        let mut pm = PeerManager::new(id(SELF), cfg.clone(), store.load().unwrap(), start);
        for n in 1..=3 {
            pm.add_address(addr(n), start).unwrap();
        }
        pm.add_address(addr_port(1, 26656), start).unwrap();
        for _ in 0..8 {
            pm.report_good(id(1), start);
        }
        connect_inbound(&mut pm, 2, 2, start);
        pm.report(id(2), Severity::Ban, start);
        pm.disconnected(id(2), ConnectionId(2), start);
        assert_eq!(pm.dial_next(start), Some(addr(4)));
        // Peer 1's MConn address ranks before its memory one (not in `protocol_preference`).
        assert_eq!(pm.dial_next(start), Some(addr_port(1, 26656)));
        assert_eq!(pm.dial_next(start), Some(addr(3)));
        pm.dial_failed(&addr(3), start);
        store.apply(&pm.drain_dirty()).unwrap();
        assert!(pm.drain_dirty().is_empty());
    }

    let store = PeerStore::open(&path).unwrap();
    let records = store.load().unwrap();
    assert_eq!(
        records.iter().map(|r| r.node_id).collect::<Vec<_>>(),
        vec![id(1), id(2), id(3), id(4)]
    );
    let later = start + HOUR;
    let pm = PeerManager::new(id(SELF), cfg.clone(), records.clone(), later);
    assert!(approx(pm.score(id(1), later).unwrap(), 4.0));
    assert_eq!(pm.addresses(id(1)), vec![addr(1), addr_port(1, 26656)]);
    assert!(pm.is_banned(id(2), later - Duration::from_secs(1)));
    assert!(!pm.is_banned(id(2), later));
    assert!(approx(pm.score(id(2), later).unwrap(), (1.0 - BAN_PENALTY) / 2.0));
    assert!(approx(pm.score(id(3), later).unwrap(), -0.5));
    let record3 = records.iter().find(|r| r.node_id == id(3)).unwrap();
    assert_eq!(
        record3.addresses.first().map(|a| (a.failures, a.last_failure)),
        Some((1, Some(start)))
    );
    assert_eq!(pm.score(id(4), later), Some(PERSISTENT_SCORE));

    // The configuration decides which peers are persistent.
    let mut pm = PeerManager::new(id(SELF), config(), records, later);
    assert!(!pm.is_persistent(id(4)));
    let ops = pm.drain_dirty();
    assert!(
        matches!(ops.as_slice(), [StoreOp::Put(r)] if r.node_id == id(4) && !r.persistent),
        "{ops:?}"
    );
}

#[test]
fn store_applies_deletes_and_skips_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.redb");
    let store = PeerStore::open(&path).unwrap();
    let mut pm = manager(config());
    pm.add_address(addr(1), t(0)).unwrap();
    pm.add_address(addr(2), t(0)).unwrap();
    store.apply(&pm.drain_dirty()).unwrap();
    store.apply(&[StoreOp::Delete(id(1)), StoreOp::Delete(id(9))]).unwrap();
    drop(store);
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut table =
                tx.open_table(redb::TableDefinition::<&str, &[u8]>::new("peers")).unwrap();
            table.insert("garbage", b"not json".as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let store = PeerStore::open(&path).unwrap();
    let records = store.load().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records.first().map(|r| r.node_id), Some(id(2)));

    let memory = PeerStore::in_memory().unwrap();
    memory.apply(&[StoreOp::Put(records[0].clone())]).unwrap();
    assert_eq!(memory.load().unwrap(), records);

    let error = PeerStore::open(dir.path()).unwrap_err();
    assert!(error.to_string().contains(&dir.path().display().to_string()), "{error}");
}

#[test]
fn bounded_store_pruning_rule() {
    let mut pm = manager(PeerManagerConfig { max_peers: 5, ..config() });
    let now = t(0);
    for n in 1..=5 {
        pm.add_address(addr(n), now).unwrap();
    }
    connect_inbound(&mut pm, 1, 1, now); // connected: not prunable
    pm.report(id(1), Severity::Disconnect, now);
    pm.report(id(2), Severity::Ban, now); // banned: not prunable
    pm.report(id(3), Severity::Minor, now); // -1: prunable
    pm.report(id(3), Severity::Minor, now); // -2
    pm.report(id(4), Severity::Minor, now); // -1: prunable
    assert_eq!(pm.dial_next(now), Some(addr(5))); // dialing: not prunable
    pm.drain_dirty();

    assert_eq!(pm.add_address(addr(6), now), Ok(true));
    assert_eq!(pm.drain_dirty(), vec![StoreOp::Delete(id(3)), StoreOp::Put(pm_record(&pm, 6))]);
    assert_eq!(pm.add_address(addr(7), now), Ok(true));
    assert_eq!(pm.score(id(4), now), None);
    // Left: 1 (connected), 2 (banned), 5 (dialing), 6 and 7 (score 0, not below a new peer).
    assert_eq!(pm.add_address(addr(8), now), Err(AddAddressError::StoreFull { max_peers: 5 }));
    assert_eq!(pm.num_known(), 5);
}

fn pm_record(pm: &PeerManager, n: u8) -> PeerRecord {
    PeerRecord {
        node_id: id(n),
        addresses: pm
            .addresses(id(n))
            .iter()
            .map(|a| AddressRecord {
                address: a.to_string(),
                failures: 0,
                last_failure: None,
                source: None,
                verified: false,
            })
            .collect(),
        persistent: false,
        score: 0.0,
        score_updated_at: t(0),
        banned_until: None,
        last_connected: None,
        last_protocol: None,
    }
}

/// The router, as seen by the state machine: random events against a small node.
#[test]
fn random_operations_keep_invariants() {
    let cfg = PeerManagerConfig {
        max_connected: 4,
        max_outgoing: 2,
        max_upgrade: 1,
        max_peers: 12,
        max_dial_failures: 3,
        min_retry: Duration::from_millis(100),
        max_retry: Duration::from_secs(5),
        max_retry_persistent: Duration::from_secs(1),
        ban_duration: Duration::from_secs(20),
        score_half_life: Duration::from_secs(30),
        persistent_peers: vec![addr(3)],
        ..config()
    };
    let limits = (cfg.max_connected, cfg.max_outgoing, cfg.max_upgrade);
    let mut pm = manager(cfg);
    let mut rng = SmallRng::seed_from_u64(42);
    let mut now = t(0);
    let mut next_conn = 0u64;
    let mut dials: Vec<NodeAddress> = Vec::new();
    // Connections the router believes open, per peer.
    let mut open: BTreeMap<u64, NodeId> = BTreeMap::new();
    let mut up: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut stats = [0usize; 4]; // accepted, replaced, rejected, evicted
    let peer = |rng: &mut SmallRng| {
        let n = rng.random_range(1..=24u8);
        if n == 24 { SELF } else { n }
    };

    for step in 0..10_000 {
        match rng.random_range(0..100) {
            0..=14 => {
                let n = peer(&mut rng);
                let address = if rng.random_bool(0.5) {
                    addr(n)
                } else {
                    addr_port(n, rng.random_range(1..4))
                };
                let _ = pm.add_address(address, now);
            }
            15..=29 => {
                if let Some(a) = pm.dial_next(now) {
                    dials.push(a);
                }
                if let Some(at) = pm.next_dial_at() {
                    assert!(at > now, "step {step}");
                }
            }
            30..=44 if !dials.is_empty() => {
                let a = dials.swap_remove(rng.random_range(0..dials.len()));
                if rng.random_bool(0.6) {
                    next_conn += 1;
                    match pm.dialed(&a, ConnectionId(next_conn), now) {
                        Ok(admission) => {
                            stats[0] += 1;
                            open.insert(next_conn, a.node_id());
                            if let Admission::Replaces(old) = admission {
                                stats[1] += 1;
                                open.remove(&old.0);
                                pm.disconnected(a.node_id(), old, now);
                            }
                        }
                        Err(_) => stats[2] += 1,
                    }
                } else {
                    pm.dial_failed(&a, now);
                }
            }
            45..=54 => {
                let n = peer(&mut rng);
                next_conn += 1;
                match pm.accepted(id(n), ConnectionId(next_conn), now) {
                    Ok(admission) => {
                        stats[0] += 1;
                        open.insert(next_conn, id(n));
                        if let Admission::Replaces(old) = admission {
                            stats[1] += 1;
                            open.remove(&old.0);
                            pm.disconnected(id(n), old, now);
                        }
                    }
                    Err(_) => stats[2] += 1,
                }
            }
            55..=69 => {
                if let Some((&conn, &node)) =
                    open.iter().min_by_key(|(c, _)| **c ^ rng.random_range(0..64))
                {
                    pm.ready(node, ConnectionId(conn), now);
                }
            }
            70..=74 => {
                if let Some((&conn, &node)) =
                    open.iter().min_by_key(|(c, _)| **c ^ rng.random_range(0..64))
                {
                    open.remove(&conn);
                    pm.disconnected(node, ConnectionId(conn), now);
                }
            }
            75..=82 => {
                let severity = match rng.random_range(0..10) {
                    0..=5 => Severity::Minor,
                    6..=8 => Severity::Disconnect,
                    _ => Severity::Ban,
                };
                pm.report(id(peer(&mut rng)), severity, now);
            }
            83..=87 => pm.report_good(id(peer(&mut rng)), now),
            88..=92 => {
                while let Some(eviction) = pm.evict_next() {
                    stats[3] += 1;
                    assert_eq!(
                        open.remove(&eviction.connection.0),
                        Some(eviction.node_id),
                        "step {step}"
                    );
                    pm.disconnected(eviction.node_id, eviction.connection, now);
                }
            }
            93..=96 => now = now + Duration::from_millis(rng.random_range(0..3_000)),
            _ => {
                let _ = pm.drain_dirty();
            }
        }

        // Invariants.
        let (max_connected, max_outgoing, max_upgrade) = limits;
        let connected: Vec<(NodeId, Direction)> = pm.connected_peers().collect();
        assert!(connected.len() <= max_connected + max_upgrade, "step {step}");
        assert_eq!(pm.num_connected(), connected.len());
        let outbound = (connected.iter())
            .filter(|(n, d)| *d == Direction::Outbound && !pm.is_persistent(*n))
            .count();
        // The router may still have a dial in flight that the manager already closed (an
        // inbound connection from that peer won), never the reverse.
        let dialing: Vec<NodeId> = (1..=23).map(id).filter(|n| pm.is_dialing(*n)).collect();
        assert_eq!(pm.num_dialing(), dialing.len());
        for n in &dialing {
            assert!(dials.iter().any(|a| a.node_id() == *n), "step {step}");
        }
        let dialing = dialing.iter().filter(|n| !pm.is_persistent(**n)).count();
        assert!(outbound + dialing <= max_outgoing, "step {step}");
        for (n, _) in &connected {
            assert!(!pm.is_dialing(*n), "step {step}");
            let (conn, _) = pm.connection(*n).unwrap();
            assert_eq!(open.get(&conn.0), Some(n), "step {step}");
        }
        assert!(pm.connection(id(SELF)).is_none() && !pm.is_dialing(id(SELF)));
        let new_updates: Vec<PeerUpdate> = pm.drain_updates().collect();
        for update in new_updates {
            match update.status {
                PeerStatus::Up => {
                    assert_eq!(
                        up.insert(update.node_id, update.connection.0),
                        None,
                        "step {step}: Up twice"
                    );
                    assert_eq!(pm.connection(update.node_id).map(|c| c.0), Some(update.connection));
                }
                PeerStatus::Down => {
                    assert_eq!(
                        up.remove(&update.node_id),
                        Some(update.connection.0),
                        "step {step}: Down without Up"
                    );
                }
            }
        }
    }
    let [accepted, replaced, rejected, evicted] = stats;
    assert!(accepted > 100 && replaced > 10 && rejected > 100 && evicted > 10, "{stats:?}");
}

fn quic(n: u8) -> NodeAddress {
    format!("quic://{}@127.0.0.1:26656", id(n)).parse().unwrap()
}

fn mconn(n: u8) -> NodeAddress {
    addr_port(n, 26656)
}

/// Dials peer `n` at `address` (which `dial_next` must return) and admits the connection.
fn dial_and_connect(pm: &mut PeerManager, address: &NodeAddress, conn: u64, now: Timestamp) {
    let n = address.node_id();
    assert_eq!(pm.dialed(address, ConnectionId(conn), now), Ok(Admission::Accepted));
    pm.ready(n, ConnectionId(conn), now);
}

#[test]
fn quic_is_preferred_and_mconn_is_the_fallback() {
    let mut pm = manager(config());
    // Learned MConn first: the preference, not the order of learning, decides.
    pm.add_address(mconn(1), t(0)).unwrap();
    pm.add_address(quic(1), t(0)).unwrap();
    assert_eq!(pm.fallback_addresses(id(1), t(0)), vec![], "not dialing yet");
    assert_eq!(pm.dial_next(t(0)), Some(quic(1)));
    assert_eq!(pm.fallback_addresses(id(1), t(0)), vec![mconn(1)]);

    // QUIC fails (UDP blocked), MConn connects: no score lost, QUIC backs off.
    pm.attempt_failed(&quic(1), t(100));
    assert!(approx(pm.score(id(1), t(100)).unwrap(), 0.0), "an attempt costs no score");
    assert!(pm.is_dialing(id(1)), "the dial goes on");
    dial_and_connect(&mut pm, &mconn(1), 1, t(110));
    assert_eq!(pm.connection(id(1)), Some((ConnectionId(1), Direction::Outbound)));

    // After a disconnect (and QUIC's backoff), the protocol that worked is tried first.
    pm.disconnected(id(1), ConnectionId(1), t(200));
    let later = t(3_600_000);
    assert_eq!(pm.dial_next(later), Some(mconn(1)), "the remembered protocol first");
    assert_eq!(pm.fallback_addresses(id(1), later), vec![quic(1)]);

    // The remembered protocol fails: it is forgotten, and the preference applies again among
    // addresses with as many failures.
    pm.dial_failed(&mconn(1), later);
    assert!(pm.score(id(1), later).unwrap() < CONNECTED_REWARD, "a failed dial costs score");
    let much_later = later + HOUR;
    assert_eq!(pm.dial_next(much_later), Some(quic(1)));
}

#[test]
fn a_successful_quic_dial_is_remembered_too() {
    let mut pm = manager(config());
    pm.add_address(quic(1), t(0)).unwrap();
    pm.add_address(mconn(1), t(0)).unwrap();
    assert_eq!(pm.dial_next(t(0)), Some(quic(1)));
    dial_and_connect(&mut pm, &quic(1), 1, t(10));
    pm.disconnected(id(1), ConnectionId(1), t(20));
    assert_eq!(pm.dial_next(t(3_600_000)), Some(quic(1)));
}

#[test]
fn only_dialable_protocols_are_dialed() {
    let mut pm = manager(config());
    pm.set_dialable_protocols([Protocol::MCONN]);
    pm.add_address(quic(1), t(0)).unwrap();
    pm.add_address(quic(2), t(0)).unwrap();
    pm.add_address(mconn(2), t(0)).unwrap();
    // Peer 1 has only a QUIC address: kept (e.g. for PEX), never dialed.
    assert_eq!(pm.dial_next(t(0)), Some(mconn(2)));
    assert_eq!(pm.fallback_addresses(id(2), t(0)), vec![], "QUIC is not dialable");
    assert_eq!(pm.dial_next(t(0)), None);
    assert_eq!(pm.addresses(id(1)), vec![quic(1)]);
    assert_eq!(pm.next_dial_at(), None);
}

#[test]
fn attempt_failed_is_ignored_unless_dialing() {
    let mut pm = manager(config());
    pm.add_address(quic(1), t(0)).unwrap();
    pm.attempt_failed(&quic(1), t(0));
    assert_eq!(pm.dial_next(t(0)), Some(quic(1)), "no backoff was recorded");
}

#[test]
fn dial_failed_accepts_any_address_of_the_dialed_peer() {
    let mut pm = manager(config());
    pm.add_address(quic(1), t(0)).unwrap();
    pm.add_address(mconn(1), t(0)).unwrap();
    assert_eq!(pm.dial_next(t(0)), Some(quic(1)));
    pm.attempt_failed(&quic(1), t(10));
    pm.dial_failed(&mconn(1), t(20));
    assert!(!pm.is_dialing(id(1)));
    // Both addresses back off.
    assert_eq!(pm.dial_next(t(20)), None);
    assert!(pm.next_dial_at().is_some_and(|at| at > t(20)));
}

#[test]
fn the_remembered_protocol_survives_a_restart() {
    let store = PeerStore::in_memory().unwrap();
    {
        let mut pm = manager(config());
        pm.add_address(quic(1), t(0)).unwrap();
        pm.add_address(mconn(1), t(0)).unwrap();
        assert_eq!(pm.dial_next(t(0)), Some(quic(1)));
        pm.attempt_failed(&quic(1), t(5));
        dial_and_connect(&mut pm, &mconn(1), 1, t(10));
        store.apply(&pm.drain_dirty()).unwrap();
    }
    let records = store.load().unwrap();
    assert_eq!(records.first().and_then(|r| r.last_protocol.as_deref()), Some("mconn"));
    let later = t(3_600_000);
    let mut pm = PeerManager::new(id(SELF), config(), records, later);
    assert_eq!(pm.dial_next(later), Some(mconn(1)));
}

#[test]
fn a_fallback_that_won_the_race_is_remembered_over_the_preference() {
    let mut pm = manager(config());
    pm.add_address(quic(1), t(0)).unwrap();
    pm.add_address(mconn(1), t(0)).unwrap();
    assert_eq!(pm.dial_next(t(0)), Some(quic(1)));
    // QUIC was slow, MConn (started after the fallback delay) connected first; the QUIC
    // attempt was abandoned, not failed, so both addresses have no failures.
    dial_and_connect(&mut pm, &mconn(1), 1, t(400));
    pm.disconnected(id(1), ConnectionId(1), t(500));
    assert_eq!(pm.dial_next(t(3_600_000)), Some(mconn(1)));
    assert_eq!(pm.fallback_addresses(id(1), t(3_600_000)), vec![quic(1)]);
}

fn v4(n: u8, ip: [u8; 4], port: u16) -> NodeAddress {
    let [a, b, c, d] = ip;
    format!("mconn://{}@{a}.{b}.{c}.{d}:{port}", id(n)).parse().unwrap()
}

/// A node ID from a counter (for floods of distinct peers).
fn id_n(n: u32) -> NodeId {
    let mut bytes = [0xee; 20];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    NodeId::from_bytes(bytes)
}

#[test]
fn one_source_flooding_one_network_group_fills_only_its_quota() {
    let cfg = PeerManagerConfig { max_peers: 10_000, ..config() };
    let (per_group, total) = (cfg.max_gossip_per_source_group, cfg.max_gossip_per_source);
    let mut pm = manager(cfg);
    let source = id(1);
    let mut accepted = 0;
    for n in 0..5000u32 {
        let [_, _, c, d] = n.to_be_bytes();
        let addr: NodeAddress = format!("mconn://{}@10.1.{c}.{d}:26656", id_n(n)).parse().unwrap();
        match pm.add_gossiped_address(addr, source, t(0)) {
            Ok(true) => accepted += 1,
            Err(AddAddressError::SourceQuota { source_id, group: Some(group), count }) => {
                assert_eq!((source_id, count), (source, per_group));
                assert_eq!(group.to_string(), "10.1.0.0/16");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted, per_group);
    // Another source may still add in that group; the flooder may add elsewhere until its total.
    let other: NodeAddress = format!("mconn://{}@10.1.0.1:1", id_n(90_000)).parse().unwrap();
    assert_eq!(pm.add_gossiped_address(other, id(2), t(0)), Ok(true));
    let mut elsewhere = 0;
    for n in 0..1000u32 {
        // A different /16 for every address.
        let (a, b) = (20 + n % 200, n / 200);
        let addr: NodeAddress =
            format!("mconn://{}@{a}.{b}.0.1:26656", id_n(100_000 + n)).parse().unwrap();
        if pm.add_gossiped_address(addr, source, t(0)) == Ok(true) {
            elsewhere += 1;
        }
    }
    assert_eq!(accepted + elsewhere, total, "the flooder's total quota");
    // Configured addresses are not gossip: no quota.
    for n in 0..50u32 {
        let addr: NodeAddress =
            format!("mconn://{}@10.1.9.{n}:26656", id_n(200_000 + n)).parse().unwrap();
        assert_eq!(pm.add_address(addr, t(0)), Ok(true));
    }
}

#[test]
fn gossip_does_not_replace_a_verified_address() {
    let mut pm = manager(config());
    let good = v4(3, [192, 0, 2, 3], 26656);
    pm.add_address(good.clone(), t(0)).unwrap();
    assert_eq!(pm.dial_next(t(0)), Some(good.clone()));
    dial_and_connect(&mut pm, &good, 1, t(1));
    let evil = v4(3, [203, 0, 113, 66], 26656);
    assert_eq!(pm.add_gossiped_address(evil, id(9), t(2)), Err(AddAddressError::Verified));
    assert_eq!(pm.addresses(id(3)), vec![good.clone()]);
    // Even operator-added addresses filling the list never evict the verified one.
    for port in 1..=20 {
        let _ = pm.add_address(v4(3, [198, 51, 100, 1], port), t(3));
    }
    assert!(pm.addresses(id(3)).contains(&good));
}

#[test]
fn gossip_for_an_unverified_peer_is_added_with_its_source() {
    let mut pm = manager(config());
    pm.add_address(v4(3, [192, 0, 2, 3], 1), t(0)).unwrap();
    assert_eq!(pm.add_gossiped_address(v4(3, [192, 0, 2, 4], 1), id(9), t(0)), Ok(true));
    assert_eq!(pm.add_gossiped_address(v4(3, [192, 0, 2, 4], 1), id(9), t(0)), Ok(false));
    assert_eq!(pm.addresses(id(3)).len(), 2);
}

#[test]
fn failing_gossiped_addresses_cost_their_source() {
    let mut pm = manager(config());
    connect_inbound(&mut pm, 9, 1, t(0));
    let before = pm.score(id(9), t(0)).unwrap();
    let bad = v4(4, [192, 0, 2, 4], 26656);
    assert_eq!(pm.add_gossiped_address(bad.clone(), id(9), t(0)), Ok(true));
    assert_eq!(pm.dial_next(t(0)), Some(bad.clone()));
    // Nothing answered: stale addresses are normal, the source keeps its score.
    pm.dial_failed(&bad, t(0));
    assert!(approx(pm.score(id(9), t(0)).unwrap(), before));
    // Someone else answered at that address: the source pays.
    pm.handshake_failed(&bad, t(0));
    let after = pm.score(id(9), t(0)).unwrap();
    assert!(approx(before - after, SOURCE_FAILURE_PENALTY), "{before} -> {after}");
}

#[test]
fn banned_peers_are_not_relearned_through_gossip() {
    let mut pm = manager(config());
    connect_inbound(&mut pm, 5, 1, t(0));
    pm.report(id(5), Severity::Ban, t(0));
    let err = pm.add_gossiped_address(v4(5, [192, 0, 2, 5], 1), id(9), t(1)).unwrap_err();
    assert!(matches!(err, AddAddressError::Banned { .. }), "{err:?}");
}

#[test]
fn address_sources_and_verification_survive_a_restart() {
    let store = PeerStore::in_memory().unwrap();
    let verified = v4(3, [192, 0, 2, 3], 26656);
    {
        let mut pm = manager(config());
        pm.add_address(verified.clone(), t(0)).unwrap();
        assert_eq!(pm.dial_next(t(0)), Some(verified.clone()));
        dial_and_connect(&mut pm, &verified, 1, t(1));
        pm.add_gossiped_address(v4(4, [192, 0, 2, 4], 1), id(9), t(2)).unwrap();
        store.apply(&pm.drain_dirty()).unwrap();
    }
    let records = store.load().unwrap();
    let r4 = records.iter().find(|r| r.node_id == id(4)).unwrap();
    assert_eq!(r4.addresses[0].source, Some(id(9)));
    let r3 = records.iter().find(|r| r.node_id == id(3)).unwrap();
    assert!(r3.addresses[0].verified);
    let mut pm = PeerManager::new(id(SELF), config(), records, t(10));
    let evil = v4(3, [203, 0, 113, 66], 26656);
    assert_eq!(pm.add_gossiped_address(evil, id(9), t(11)), Err(AddAddressError::Verified));
}

#[test]
fn hang_up_keeps_the_score_and_holds_the_redial() {
    let mut pm = manager(config());
    pm.add_address(addr(1), t(0)).unwrap();
    assert_eq!(pm.dial_next(t(0)), Some(addr(1)));
    assert_eq!(pm.dialed(&addr(1), ConnectionId(1), t(0)), Ok(Admission::Accepted));
    pm.ready(id(1), ConnectionId(1), t(0));
    let before = pm.score(id(1), t(0));
    pm.hang_up(id(1), Duration::from_secs(120), t(0));
    assert_eq!(pm.score(id(1), t(0)), before);
    assert_eq!(pm.evict_next().map(|e| e.reason), Some(EvictReason::HungUp));
    pm.disconnected(id(1), ConnectionId(1), t(1000));
    assert_eq!(pm.dial_next(t(1000)), None);
    assert_eq!(pm.next_dial_at(), Some(t(121_000)));
    assert_eq!(pm.dial_next(t(121_000)), Some(addr(1)));
}

#[test]
fn hang_up_of_an_unconnected_peer_does_nothing() {
    let mut pm = manager(config());
    pm.add_address(addr(1), t(0)).unwrap();
    pm.hang_up(id(1), Duration::from_secs(120), t(0));
    assert_eq!(pm.evict_next(), None);
    assert_eq!(pm.dial_next(t(0)), Some(addr(1)));
}

#[test]
fn shareable_addresses_filter_and_take_several_per_peer() {
    let mut pm = manager(config());
    let mconn = addr_port(1, 26656);
    let quic: NodeAddress = format!("quic://{}@127.0.0.1:26656", id(1)).parse().unwrap();
    pm.add_address(mconn.clone(), t(0)).unwrap();
    pm.add_address(quic.clone(), t(0)).unwrap();
    pm.add_address(addr_port(2, 1), t(0)).unwrap();
    let mut both = pm.shareable_addresses(t(0), id(9), 10, 4, |a| a.node_id() == id(1));
    both.sort_by_key(ToString::to_string);
    assert_eq!(both, vec![mconn.clone(), quic.clone()]);
    let only_mconn =
        pm.shareable_addresses(t(0), id(9), 10, 4, |a| *a.protocol() == Protocol::MCONN);
    assert_eq!(only_mconn.len(), 2);
    assert!(only_mconn.contains(&mconn));
    assert_eq!(pm.shareable_addresses(t(0), id(9), 1, 4, |_| true).len(), 1);
    assert!(pm.shareable_addresses(t(0), id(1), 10, 4, |a| a.node_id() == id(1)).is_empty());
}

#[test]
fn short_lived_connections_back_off_from_the_second_one_and_a_stable_one_resets() {
    let mut pm = manager(PeerManagerConfig { retry_jitter: 0.0, ..config() });
    pm.add_address(addr(1), t(0)).unwrap();
    let mut now = 0;
    let mut conn = 0;
    // Connects at `now`, closes `lasted` ms later; returns when the address is dialable again.
    let mut cycle = |pm: &mut PeerManager, lasted: u64| {
        conn += 1;
        assert_eq!(pm.dial_next(t(now)), Some(addr(1)), "dialable at {now}");
        assert_eq!(pm.dialed(&addr(1), ConnectionId(conn), t(now)), Ok(Admission::Accepted));
        pm.ready(id(1), ConnectionId(conn), t(now));
        now += lasted;
        pm.disconnected(id(1), ConnectionId(conn), t(now));
        let at = pm.next_dial_at().unwrap();
        let wait = at.saturating_sub(t(now)).as_millis() as u64;
        now = now.max(at.saturating_sub(t(0)).as_millis() as u64);
        wait
    };
    assert_eq!(cycle(&mut pm, 2000), 250, "the first short-lived close is not held");
    assert_eq!(cycle(&mut pm, 2000), 250, "second: backoff for 1 failure");
    assert_eq!(cycle(&mut pm, 2000), 500);
    assert_eq!(cycle(&mut pm, 2000), 1000);
    assert_eq!(cycle(&mut pm, 60_000), 250, "a stable connection resets the count");
    assert_eq!(cycle(&mut pm, 2000), 250);
}
