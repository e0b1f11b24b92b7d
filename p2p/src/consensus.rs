//! Consensus-height announcements for nodes that do not run consensus.
//!
//! CometBFT's mempool reactor sends a transaction to a peer only once that peer's consensus
//! height, learned from its `NewRoundStep` messages on channel 0x20, is at least the height at
//! which the transaction entered the mempool minus one. A node without consensus (a relayer, a
//! seed, a tx-gossip service) that never announces a height therefore receives only transactions
//! that arrived at height 1. [`run_height_announcer`] fixes that: it listens to its peers'
//! `NewRoundStep` messages and announces the highest valid height it has seen, as a node that has
//! just reached that height (round 0, step `NewHeight`).
//!
//! Go disconnects a peer whose `NewRoundStep` fails validation: height below the chain's initial
//! height, `last_commit_round` other than −1 at the initial height, or negative above it. The
//! announced step copies `height` and `last_commit_round` from a peer's own valid announcement,
//! so it is valid on the same chain; with [`HeightMirror::with_initial_height`] (from genesis)
//! Go's exact rule is enforced on what peers send before anything is mirrored.

use p2p_proto::tendermint::consensus::{Message, NewRoundStep, message::Sum};

use crate::peer_manager::PeerStatus;
use crate::router::{
    Channel, ChannelDescriptor, Outbound, OverflowPolicy, PeerUpdates, PeerUpdatesError,
    UnwrapError, Wrapper,
};
use crate::types::ChannelId;

/// CometBFT's consensus "State" channel.
pub const CONSENSUS_STATE_CHANNEL: ChannelId = ChannelId(0x20);

/// `RoundStepNewHeight`, the step of a node that has just reached a height.
pub const STEP_NEW_HEIGHT: u32 = 1;
/// `RoundStepCommit`, the last valid step value.
pub const STEP_COMMIT: u32 = 8;

/// A peer's announced position in consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundStep {
    /// Block height.
    pub height: i64,
    /// Round within the height.
    pub round: i32,
    /// Step within the round (1 = NewHeight ... 8 = Commit).
    pub step: u32,
    /// Seconds since the round started (may be negative in Go).
    pub seconds_since_start_time: i64,
    /// The round in which the previous height committed; −1 at the chain's initial height.
    pub last_commit_round: i32,
}

/// A message on the consensus State channel, as far as a non-consensus node cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsensusState {
    /// A `NewRoundStep` announcement.
    NewRoundStep(RoundStep),
    /// Any other consensus message (new valid block, has-vote, maj23, ...): ignored.
    Other,
}

impl Wrapper for ConsensusState {
    type Proto = Message;

    fn wrap(self) -> Message {
        match self {
            Self::NewRoundStep(s) => Message {
                sum: Some(Sum::NewRoundStep(NewRoundStep {
                    height: s.height,
                    round: s.round,
                    step: s.step,
                    seconds_since_start_time: s.seconds_since_start_time,
                    last_commit_round: s.last_commit_round,
                })),
            },
            Self::Other => Message { sum: None },
        }
    }

    /// Never fails: the variants this crate does not model decode as [`ConsensusState::Other`].
    fn unwrap(proto: Message) -> Result<Self, UnwrapError> {
        Ok(match proto.sum {
            Some(Sum::NewRoundStep(m)) => Self::NewRoundStep(RoundStep {
                height: m.height,
                round: m.round,
                step: m.step,
                seconds_since_start_time: m.seconds_since_start_time,
                last_commit_round: m.last_commit_round,
            }),
            None => Self::Other,
        })
    }
}

/// The State channel's descriptor: CometBFT's priority 6 and 1 MiB limit; only the newest
/// announcement matters, so a full queue drops the oldest.
pub fn consensus_state_channel_descriptor() -> ChannelDescriptor {
    ChannelDescriptor::new(CONSENSUS_STATE_CHANNEL)
        .with_priority(6)
        .with_queue_capacity(16, 256)
        .with_max_message_size(1 << 20)
        .with_overflow(OverflowPolicy::DropOldest)
}

/// Tracks the highest height peers announce and what to announce in turn (sans-IO).
#[derive(Debug, Clone, Default)]
pub struct HeightMirror {
    initial_height: Option<i64>,
    announced: Option<RoundStep>,
}

impl HeightMirror {
    /// A mirror that does not know the chain's initial height: it accepts announcements that are
    /// valid for some initial height (−1 only with height ≥ 1; otherwise `last_commit_round` ≥ 0
    /// and height ≥ 2).
    pub fn new() -> Self {
        Self::default()
    }

    /// A mirror that knows the chain's initial height (genesis) and applies Go's exact rule.
    pub fn with_initial_height(initial_height: i64) -> Self {
        Self { initial_height: Some(initial_height), announced: None }
    }

    /// What we currently announce.
    pub fn current(&self) -> Option<RoundStep> {
        self.announced
    }

    /// Whether Go would accept this step (`ValidateBasic` and `ValidateHeight`).
    pub fn is_valid(&self, s: &RoundStep) -> bool {
        let basic = s.height >= 0
            && s.round >= 0
            && (STEP_NEW_HEIGHT..=STEP_COMMIT).contains(&s.step)
            && s.last_commit_round >= -1;
        let height = match self.initial_height {
            Some(initial) => {
                s.height >= initial
                    && (s.height != initial || s.last_commit_round == -1)
                    && (s.height == initial || s.last_commit_round >= 0)
            }
            None => {
                s.height >= 1
                    && (s.last_commit_round == -1 || (s.height >= 2 && s.last_commit_round >= 0))
            }
        };
        basic && height
    }

    /// Takes a peer's announcement; returns the new step to announce if the peer is higher than
    /// what we announce.
    pub fn on_peer_step(&mut self, step: &RoundStep) -> Option<RoundStep> {
        if !self.is_valid(step) || self.announced.is_some_and(|a| a.height >= step.height) {
            return None;
        }
        let ours = RoundStep {
            height: step.height,
            round: 0,
            step: STEP_NEW_HEIGHT,
            seconds_since_start_time: 0,
            last_commit_round: step.last_commit_round,
        };
        self.announced = Some(ours);
        Some(ours)
    }
}

/// Announces the highest consensus height the node's peers announce (see the module docs).
/// Runs until the router stops.
pub async fn run_height_announcer(
    mut channel: Channel<ConsensusState>,
    mut updates: PeerUpdates,
    mut mirror: HeightMirror,
) {
    loop {
        tokio::select! {
            envelope = channel.recv() => {
                let Some(envelope) = envelope else { return };
                if let ConsensusState::NewRoundStep(step) = envelope.message
                    && let Some(ours) = mirror.on_peer_step(&step)
                {
                    let _ = channel.send(Outbound::broadcast(ConsensusState::NewRoundStep(ours))).await;
                }
            }
            update = updates.recv() => match update {
                Ok(u) if u.status == PeerStatus::Up => {
                    if let Some(ours) = mirror.current() {
                        let _ = channel.send(Outbound::to(u.node_id, ConsensusState::NewRoundStep(ours))).await;
                    }
                }
                Ok(_) | Err(PeerUpdatesError::Lagged(_)) => {}
                Err(_) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn step(height: i64, lcr: i32) -> RoundStep {
        RoundStep { height, round: 2, step: 3, seconds_since_start_time: 5, last_commit_round: lcr }
    }

    #[test]
    fn mirrors_the_highest_valid_height_as_a_fresh_new_height() {
        let mut m = HeightMirror::new();
        assert_eq!(m.on_peer_step(&step(1, -1)).unwrap().height, 1);
        let ours = m.on_peer_step(&step(7, 0)).unwrap();
        assert_eq!(
            ours,
            RoundStep {
                height: 7,
                round: 0,
                step: STEP_NEW_HEIGHT,
                seconds_since_start_time: 0,
                last_commit_round: 0
            }
        );
        assert_eq!(m.on_peer_step(&step(7, 1)), None, "not higher");
        assert_eq!(m.on_peer_step(&step(5, 0)), None, "lower");
        assert_eq!(m.current().unwrap().height, 7);
    }

    #[test]
    fn invalid_announcements_are_never_mirrored() {
        let mut m = HeightMirror::new();
        for bad in [
            step(1, 0),  // initial height needs -1
            step(0, -1), // height 0
            step(3, -2), // lcr below -1
            RoundStep { step: 0, ..step(3, 0) },
            RoundStep { step: 9, ..step(3, 0) },
            RoundStep { round: -1, ..step(3, 0) },
        ] {
            assert_eq!(m.on_peer_step(&bad), None, "{bad:?}");
        }
        // With the initial height known, Go's exact rule applies.
        let mut m = HeightMirror::with_initial_height(1);
        assert_eq!(m.on_peer_step(&step(5, -1)), None, "above initial needs lcr >= 0");
        assert!(m.on_peer_step(&step(5, 0)).is_some());
        let mut m = HeightMirror::with_initial_height(1000);
        assert_eq!(m.on_peer_step(&step(999, 0)), None);
        assert!(m.on_peer_step(&step(1000, -1)).is_some());
    }

    #[test]
    fn unmodelled_consensus_messages_decode_as_other() {
        // vote_set_maj23 (field 8) with some body: unknown to our schema.
        let bytes = [0x42, 0x02, 0x08, 0x05];
        let msg = Message::decode(&bytes[..]).unwrap();
        assert_eq!(ConsensusState::unwrap(msg).unwrap(), ConsensusState::Other);
        let ours = ConsensusState::NewRoundStep(step(9, 0));
        let back = ConsensusState::unwrap(
            Message::decode(&ours.clone().wrap().encode_to_vec()[..]).unwrap(),
        );
        assert_eq!(back.unwrap(), ours);
    }
}
