//! Every byte from the network (and every string from a config file) may be hostile: the
//! decoders must return errors, never panic. Seeded pseudo-random inputs and mutations of valid
//! inputs, so failures reproduce.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use p2p::echo::Echo;
use p2p::router::Wrapper;
use p2p::{NodeAddress, NodeId, NodeInfo, NodeKey};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CASES: usize = 20_000;

fn mutate(rng: &mut SmallRng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..4) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v.truncate(i);
            }
            2 => {
                let i = rng.random_range(0..=v.len());
                v.insert(i, rng.random());
            }
            _ if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v.remove(i);
            }
            _ => v.push(rng.random()),
        }
    }
    v
}

fn sample_info() -> NodeInfo {
    let id: NodeId = "10ba682c8ad13513971e8b56881aab8bd702bb80".parse().unwrap();
    NodeInfo::new(id, "test-chain", "node-a", [0x40, 0x20, 0x30].map(p2p::ChannelId))
        .with_listen_addr("tcp://127.0.0.1:26656")
}

#[test]
fn node_info_decode_never_panics() {
    let mut rng = SmallRng::seed_from_u64(1);
    let valid = sample_info().encode_to_vec();
    assert_eq!(NodeInfo::decode(&valid).unwrap(), sample_info());
    let mut ok = 0;
    for i in 0..CASES {
        let input = if i % 2 == 0 {
            mutate(&mut rng, &valid)
        } else {
            let len = rng.random_range(0..300);
            (0..len).map(|_| rng.random()).collect()
        };
        if let Ok(info) = NodeInfo::decode(&input) {
            let _ = info.validate();
            ok += 1;
        }
    }
    // Some mutations (e.g. in a string's bytes) still decode; most do not.
    assert!(ok < CASES, "{ok}");
    let huge = vec![0u8; p2p::MAX_NODE_INFO_SIZE + 1];
    assert!(NodeInfo::decode(&huge).is_err(), "oversized NodeInfo is rejected");
}

#[test]
fn address_parsing_never_panics_and_round_trips() {
    let mut rng = SmallRng::seed_from_u64(2);
    let valid = [
        "mconn://10ba682c8ad13513971e8b56881aab8bd702bb80@127.0.0.1:26656",
        "quic://10ba682c8ad13513971e8b56881aab8bd702bb80@[::1]:26656",
        "memory:10ba682c8ad13513971e8b56881aab8bd702bb80",
        "10ba682c8ad13513971e8b56881aab8bd702bb80@node.example.com:26656",
    ];
    let mut parsed = 0;
    for i in 0..CASES {
        let base = valid[i % valid.len()].as_bytes();
        let bytes = mutate(&mut rng, base);
        let s = String::from_utf8_lossy(&bytes);
        match s.parse::<NodeAddress>() {
            Ok(addr) => {
                parsed += 1;
                let again: NodeAddress = addr.to_string().parse().unwrap();
                assert_eq!(again, addr, "round trip of {s:?}");
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    assert!(parsed > 0 && parsed < CASES, "{parsed}");
}

#[test]
fn node_key_json_never_panics() {
    let mut rng = SmallRng::seed_from_u64(3);
    let json = NodeKey::from_seed([7; 32]).to_json();
    for _ in 0..CASES {
        let bytes = mutate(&mut rng, json.as_bytes());
        let _ = NodeKey::from_json(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn wrapper_decode_never_panics() {
    let mut rng = SmallRng::seed_from_u64(4);
    let valid = Echo::Ping("hello".into()).wrap().encode_to_vec();
    for _ in 0..CASES {
        let bytes = mutate(&mut rng, &valid);
        if let Ok(proto) = p2p_proto::echo::EchoMessage::decode(&bytes[..]) {
            let _ = Echo::unwrap(proto);
        }
    }
}
