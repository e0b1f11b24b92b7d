//! Small identifier types shared by every layer: [`NodeId`] and [`ChannelId`].

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

/// Length of a node ID in bytes (the first 20 bytes of SHA-256 of the ed25519 public key).
pub const NODE_ID_LEN: usize = 20;

/// A node's identity: the first 20 bytes of SHA-256 of its ed25519 public key.
///
/// Written as 40 lowercase hex characters, exactly as CometBFT's `p2p.ID`. Parsing accepts
/// upper-case hex too (Go's `validateID` does) and normalises it to lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; NODE_ID_LEN]);

impl NodeId {
    /// Wraps 20 raw bytes.
    pub const fn from_bytes(bytes: [u8; NODE_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// Derives the node ID of an ed25519 public key.
    pub fn from_public_key(key: &VerifyingKey) -> Self {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut id = [0u8; NODE_ID_LEN];
        for (dst, src) in id.iter_mut().zip(digest) {
            *dst = src;
        }
        Self(id)
    }

    /// The raw 20 bytes.
    pub const fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Why a string is not a node ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeIdError {
    /// The string does not have 40 characters.
    #[error("node ID {input:?} has {len} characters, expected 40 hex characters (20 bytes)")]
    Length {
        /// The rejected input.
        input: String,
        /// Its length in characters.
        len: usize,
    },
    /// The string has a character that is not a hex digit.
    #[error("node ID {input:?} is not hexadecimal (character {bad:?} at position {pos})")]
    NotHex {
        /// The rejected input.
        input: String,
        /// The first offending character.
        bad: char,
        /// Its position.
        pos: usize,
    },
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((pos, bad)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(NodeIdError::NotHex { input: s.to_owned(), bad, pos });
        }
        if s.len() != NODE_ID_LEN * 2 {
            return Err(NodeIdError::Length { input: s.to_owned(), len: s.chars().count() });
        }
        let mut id = [0u8; NODE_ID_LEN];
        hex::decode_to_slice(s, &mut id)
            .map_err(|_| NodeIdError::Length { input: s.to_owned(), len: s.len() })?;
        Ok(Self(id))
    }
}

/// A reactor channel: one byte on the MConnection wire, one stream per direction on QUIC.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u8);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.0)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({:#04x})", self.0)
    }
}

impl From<u8> for ChannelId {
    fn from(value: u8) -> Self {
        Self(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(pub_hex: &str) -> String {
        let mut pk = [0u8; 32];
        hex::decode_to_slice(pub_hex, &mut pk).unwrap();
        NodeId::from_public_key(&VerifyingKey::from_bytes(&pk).unwrap()).to_string()
    }

    #[test]
    fn node_id_vectors_from_wire_spec() {
        // wire-mconn.md §3.1 and §1.11.
        assert_eq!(
            id_of("877864f9013c73a40b4f24a9f1371fcdc949c3f046efdce2181fe9200f837cf1"),
            "27a081b935f841c87eb400a37bfa0e7ddc6897e7"
        );
        assert_eq!(
            id_of("013ffe69a2f5781d38efb32e77d24c9bc4a1f0122f39894f182f4a90852615a1"),
            "a3258dcbf45dca0df052981870f2d1441a36d145"
        );
        assert_eq!(
            id_of("d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"),
            "10ba682c8ad13513971e8b56881aab8bd702bb80"
        );
    }

    #[test]
    fn node_id_parse_normalises_case() {
        let id: NodeId = "10BA682C8AD13513971E8B56881AAB8BD702BB80".parse().unwrap();
        assert_eq!(id.to_string(), "10ba682c8ad13513971e8b56881aab8bd702bb80");
        assert!(matches!("10ba".parse::<NodeId>(), Err(NodeIdError::Length { len: 4, .. })));
        assert!(matches!(
            "zz".parse::<NodeId>(),
            Err(NodeIdError::NotHex { bad: 'z', pos: 0, .. })
        ));
    }
}
