//! libp2p peer IDs of ed25519 keys: the `12D3KooW…` strings CometBFT's `lp2p` transport uses as
//! node IDs.
//!
//! A libp2p peer ID is a multihash of the protobuf-encoded public key
//! `PublicKey { Type = 1 (Ed25519), Data = pk }` = `08 01 12 20 ‖ pk`. Keys of at most 42 bytes
//! are not hashed: the multihash is the *identity* one, `00 24 ‖ key bytes`, so the ID carries the
//! key itself, in base58btc (Bitcoin alphabet), always 52 characters starting with `12D3KooW`.
//! The key, and from it the project's [`NodeId`], can therefore be recovered from the ID; the
//! reverse is impossible (a [`NodeId`] is a hash), which is why `lp2p://` addresses carry the
//! peer ID rather than the hex node ID.
//!
//! Only ed25519 identity IDs are accepted: CometBFT node keys are ed25519, and other key types
//! (`16Uiu2HA…` secp256k1, `Qm…` hashed RSA keys) cannot be mapped to a [`NodeId`].

use ed25519_dalek::VerifyingKey;

use crate::types::NodeId;

/// The protobuf libp2p `PublicKey` prefix of an ed25519 key: field 1 (`Type`) = 1, field 2
/// (`Data`) of 32 bytes.
pub const ED25519_PUBLIC_KEY_PREFIX: [u8; 4] = [0x08, 0x01, 0x12, 0x20];

/// The identity multihash header for a 36-byte digest: code `0x00`, length `0x24`.
const IDENTITY_MULTIHASH: [u8; 2] = [0x00, 0x24];

/// Bytes of an ed25519 peer ID before base58: multihash header, key prefix, key.
pub const PEER_ID_BYTES: usize = 2 + 4 + 32;

/// Characters of an ed25519 peer ID in base58btc.
pub const PEER_ID_LEN: usize = 52;

/// The Bitcoin base58 alphabet.
const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Why a string is not the libp2p peer ID of an ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerIdError {
    /// The string has a character outside the base58btc alphabet.
    #[error("libp2p peer ID {input:?} is not base58 (character {bad:?} at position {pos})")]
    NotBase58 {
        /// The rejected input.
        input: String,
        /// The first offending character.
        bad: char,
        /// Its position.
        pos: usize,
    },
    /// The string is not the 52 characters of an ed25519 identity peer ID (`12D3KooW…`), e.g. a
    /// secp256k1 (`16Uiu2HA…`) or hashed RSA (`Qm…`) peer ID.
    #[error(
        "libp2p peer ID {input:?} is not the ID of an ed25519 key (expected 52 characters \
         starting with 12D3KooW; CometBFT node keys are ed25519)"
    )]
    NotEd25519 {
        /// The rejected input.
        input: String,
    },
    /// The embedded 32 bytes are not a valid ed25519 public key.
    #[error("libp2p peer ID {input:?} embeds an invalid ed25519 public key")]
    InvalidKey {
        /// The rejected input.
        input: String,
    },
}

/// The protobuf libp2p `PublicKey` of an ed25519 key: `08 01 12 20 ‖ pk` (36 bytes).
pub fn libp2p_public_key(key: &VerifyingKey) -> [u8; 36] {
    let mut out = [0u8; 36];
    let (prefix, data) = out.split_at_mut(ED25519_PUBLIC_KEY_PREFIX.len());
    prefix.copy_from_slice(&ED25519_PUBLIC_KEY_PREFIX);
    data.copy_from_slice(key.as_bytes());
    out
}

/// The libp2p peer ID of an ed25519 key: base58btc of `00 24 08 01 12 20 ‖ pk`, a 52-character
/// string starting with `12D3KooW`.
pub fn libp2p_peer_id(key: &VerifyingKey) -> String {
    base58_encode(&libp2p_peer_id_bytes(key))
}

/// The raw bytes of a libp2p peer ID of an ed25519 key (the multihash `00 24 08 01 12 20 ‖ pk`),
/// as carried in binary multiaddrs (`/p2p/<id>`) and identify messages.
pub fn libp2p_peer_id_bytes(key: &VerifyingKey) -> [u8; PEER_ID_BYTES] {
    let mut bytes = [0u8; PEER_ID_BYTES];
    let (header, rest) = bytes.split_at_mut(IDENTITY_MULTIHASH.len());
    header.copy_from_slice(&IDENTITY_MULTIHASH);
    rest.copy_from_slice(&libp2p_public_key(key));
    bytes
}

/// Parses the libp2p peer ID of an ed25519 key (`12D3KooW…`) back into the key.
pub fn parse_libp2p_peer_id(input: &str) -> Result<VerifyingKey, PeerIdError> {
    if let Some((pos, bad)) = input.chars().enumerate().find(|&(_, c)| !is_base58(c)) {
        return Err(PeerIdError::NotBase58 { input: input.to_owned(), bad, pos });
    }
    let not_ed25519 = || PeerIdError::NotEd25519 { input: input.to_owned() };
    if input.len() != PEER_ID_LEN {
        return Err(not_ed25519());
    }
    let bytes = base58_decode(input).ok_or_else(not_ed25519)?;
    let Some(key) = bytes
        .strip_prefix(&IDENTITY_MULTIHASH)
        .and_then(|rest| rest.strip_prefix(&ED25519_PUBLIC_KEY_PREFIX))
    else {
        return Err(not_ed25519());
    };
    let key: &[u8; 32] = key.try_into().map_err(|_| not_ed25519())?;
    VerifyingKey::from_bytes(key).map_err(|_| PeerIdError::InvalidKey { input: input.to_owned() })
}

/// Whether `input` looks like a libp2p peer ID rather than a hex node ID: it is not 40 hex
/// characters and uses only base58 characters. (Used to pick the error message.)
pub fn looks_like_peer_id(input: &str) -> bool {
    !(input.len() == 40 && input.bytes().all(|b| b.is_ascii_hexdigit()))
        && input.len() > 40
        && input.chars().all(is_base58)
}

/// The node ID of the key a peer ID names.
pub fn node_id_of_peer_id(input: &str) -> Result<NodeId, PeerIdError> {
    parse_libp2p_peer_id(input).map(|key| NodeId::from_public_key(&key))
}

fn is_base58(c: char) -> bool {
    u8::try_from(c).is_ok_and(|b| ALPHABET.contains(&b))
}

/// Base58 (Bitcoin alphabet) encoding.
pub(crate) fn base58_encode(input: &[u8]) -> String {
    // Little-endian base-58 digits.
    let mut digits: Vec<u8> = Vec::with_capacity(input.len() * 138 / 100 + 1);
    for &byte in input {
        let mut carry = u32::from(byte);
        for digit in &mut digits {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = input.iter().take_while(|&&b| b == 0).count();
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(
        digits.iter().rev().map(|&d| ALPHABET.get(usize::from(d)).map_or('1', |&c| char::from(c))),
    );
    out
}

/// Base58 (Bitcoin alphabet) decoding; `None` on a character outside the alphabet. The input is
/// short (callers bound it), so the quadratic loop is fine.
pub(crate) fn base58_decode(input: &str) -> Option<Vec<u8>> {
    // Little-endian base-256 digits.
    let mut bytes: Vec<u8> = Vec::with_capacity(input.len());
    for c in input.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)?;
        let mut carry = u32::try_from(value).ok()?;
        for byte in &mut bytes {
            carry += u32::from(*byte) * 58;
            *byte = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let zeros = input.bytes().take_while(|&b| b == b'1').count();
    let mut out = vec![0u8; zeros];
    out.extend(bytes.iter().rev());
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::key::NodeKey;

    /// `wire-lp2p.md` §2: seed 0x00..0x1f (computed with Python `cryptography`).
    const SEED_VECTOR_ID: &str = "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB";
    const SEED_VECTOR_HEX: &str = "56475aa75463474c0285df5dbf2bcab73da65135";

    fn seed_key() -> VerifyingKey {
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        NodeKey::from_seed(seed).public_key()
    }

    #[test]
    fn known_vector() {
        let key = seed_key();
        assert_eq!(
            hex::encode(key.as_bytes()),
            "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
        );
        assert_eq!(libp2p_peer_id(&key), SEED_VECTOR_ID);
        assert_eq!(parse_libp2p_peer_id(SEED_VECTOR_ID).unwrap(), key);
        assert_eq!(node_id_of_peer_id(SEED_VECTOR_ID).unwrap().to_string(), SEED_VECTOR_HEX);
    }

    #[test]
    fn go_node_vector() {
        // lp2p-observed.md: a CometBFT v0.40.0 node's two IDs. Only the pair's consistency can
        // be checked without the key: the peer ID decodes and hashes to the hex ID.
        let id = "12D3KooWAi6BhV8X9X3GKYAKaVHZfD6YMhJRtbKoDwuxon15tQN6";
        assert_eq!(
            node_id_of_peer_id(id).unwrap().to_string(),
            "27984156c5e0e16fa75e12b2fb8785ca1befe6f5"
        );
    }

    #[test]
    fn round_trips_random_keys() {
        for _ in 0..64 {
            let key = NodeKey::generate().public_key();
            let id = libp2p_peer_id(&key);
            assert_eq!(id.len(), PEER_ID_LEN);
            assert!(id.starts_with("12D3KooW"), "{id}");
            assert!(looks_like_peer_id(&id));
            assert_eq!(parse_libp2p_peer_id(&id).unwrap(), key);
            assert_eq!(base58_decode(&id).unwrap(), libp2p_peer_id_bytes(&key));
        }
    }

    #[test]
    fn base58_known_values() {
        assert_eq!(base58_encode(b""), "");
        assert_eq!(base58_encode(&[0]), "1");
        assert_eq!(base58_encode(&[0, 0, 1]), "112");
        assert_eq!(base58_encode(b"hello world"), "StV1DL6CwTryKyV");
        assert_eq!(base58_decode("StV1DL6CwTryKyV").unwrap(), b"hello world");
        assert_eq!(base58_decode("112").unwrap(), vec![0, 0, 1]);
        assert_eq!(base58_decode("0"), None);
    }

    #[test]
    fn rejects_other_ids() {
        for (input, want) in [
            // secp256k1 and hashed-RSA peer IDs (valid libp2p, not ed25519).
            ("16Uiu2HAmKJ6fm5bVvKqEZsfaVD9MYWmb1TtwVS5sN9zRgiFEZ6dG", "NotEd25519"),
            ("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "NotEd25519"),
            // A hex node ID, the alphabet's missing characters, too short, too long.
            (SEED_VECTOR_HEX, "NotBase58"),
            ("12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeS0", "NotBase58"),
            ("12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeS", "NotEd25519"),
            ("12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSBB", "NotEd25519"),
            ("", "NotEd25519"),
        ] {
            let e = parse_libp2p_peer_id(input).unwrap_err();
            assert!(format!("{e:?}").starts_with(want), "{input}: {e:?}");
        }
        // One character changed: still 52 base58 characters, but a different key or none.
        let mut changed = SEED_VECTOR_ID.to_owned();
        changed.replace_range(51..52, "C");
        assert_ne!(parse_libp2p_peer_id(&changed).ok(), Some(seed_key()));
        assert!(!looks_like_peer_id(SEED_VECTOR_HEX));
    }
}
