//! The identify protocol's message: ours to send, the peer's to check and read.

use std::net::SocketAddr;

use ed25519_dalek::VerifyingKey;
use p2p_proto::libp2p::identify::Identify;
use p2p_proto::prost::Message as _;

use crate::multiaddr;
use crate::multistream::Protocol;

/// Largest identify message accepted (go-libp2p's `signedIDSize`).
pub(crate) const MAX_MESSAGE: usize = 8 * 1024;

/// Most identify messages merged from one stream (go-libp2p's `maxMessages`).
pub(crate) const MAX_MESSAGES: usize = 10;

/// Most protocols kept from a peer's identify.
const MAX_PROTOCOLS: usize = 256;

/// What we tell a peer about ourselves.
pub(crate) fn ours(
    key: &VerifyingKey,
    listen: SocketAddr,
    observed: SocketAddr,
    protocols: &[Protocol],
    agent: &str,
) -> Vec<u8> {
    let mut names: Vec<String> = protocols.iter().map(ToString::to_string).collect();
    names.push(Protocol::Identify.to_string());
    names.push(Protocol::Ping.to_string());
    let message = Identify {
        protocol_version: Some(String::new()),
        agent_version: Some(agent.to_owned()),
        public_key: Some(p2p::peer_id::libp2p_public_key(key).to_vec()),
        listen_addrs: vec![multiaddr::encode_quic_v1(listen)],
        observed_addr: Some(multiaddr::encode_quic_v1(observed)),
        protocols: names,
        signed_peer_record: None,
    };
    message.encode_length_delimited_to_vec()
}

/// What a peer told us about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    /// The protocols it handles that we recognise.
    pub(crate) protocols: Vec<Protocol>,
    /// Its QUIC v1 listen addresses.
    pub(crate) listen: Vec<SocketAddr>,
    /// Its agent version, if printable ASCII.
    pub(crate) agent: Option<String>,
}

/// Why a peer's identify answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum IdentifyError {
    /// A message did not decode.
    #[error("identify message does not decode: {0}")]
    Decode(String),
    /// The public key in it is not the one the TLS handshake authenticated.
    #[error("identify names another public key than the TLS handshake authenticated")]
    KeyMismatch,
}

/// Merges decoded identify messages (repeated fields append, later scalars win, as
/// go-libp2p's `proto.Merge`), then checks and extracts what we use.
pub(crate) fn peer(
    messages: &[Vec<u8>],
    key: &VerifyingKey,
) -> Result<PeerIdentity, IdentifyError> {
    let mut merged = Identify::default();
    for m in messages {
        merged.merge(m.as_slice()).map_err(|e| IdentifyError::Decode(e.to_string()))?;
    }
    if let Some(public_key) = &merged.public_key
        && public_key.as_slice() != p2p::peer_id::libp2p_public_key(key)
    {
        return Err(IdentifyError::KeyMismatch);
    }
    let mut protocols = Vec::new();
    for name in merged.protocols.iter().take(MAX_PROTOCOLS) {
        if let Some(p) = Protocol::parse(name)
            && !protocols.contains(&p)
        {
            protocols.push(p);
        }
    }
    let listen = merged.listen_addrs.iter().filter_map(|a| multiaddr::decode_quic_v1(a)).collect();
    let agent = merged
        .agent_version
        .filter(|a| !a.is_empty() && a.len() <= 64 && a.bytes().all(|b| (0x20..0x7f).contains(&b)));
    Ok(PeerIdentity { protocols, listen, agent })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use p2p::NodeKey;

    use super::*;

    #[test]
    fn our_message_reads_back_and_merges_like_go() {
        let key = NodeKey::generate().public_key();
        let listen: SocketAddr = "127.0.0.1:26656".parse().unwrap();
        let observed: SocketAddr = "127.0.0.1:1234".parse().unwrap();
        let framed = ours(&key, listen, observed, &[Protocol::Channel(0x30)], "test/1");
        // Length-delimited: a uvarint, then the message.
        let (len, body) = unsigned_varint::decode::usize(&framed).unwrap();
        assert_eq!(len, body.len());
        let body = body.to_vec();
        let got = peer(std::slice::from_ref(&body), &key).unwrap();
        assert_eq!(
            got.protocols,
            vec![Protocol::Channel(0x30), Protocol::Identify, Protocol::Ping]
        );
        assert_eq!(got.listen, vec![listen]);
        assert_eq!(got.agent.as_deref(), Some("test/1"));
        // A second message (go-libp2p sends the signed record apart) adds to the first.
        let second = Identify {
            protocols: vec!["/ipfs/ping/1.0.0".into(), "/x".into()],
            ..Default::default()
        };
        let both = peer(&[body.clone(), second.encode_to_vec()], &key).unwrap();
        assert_eq!(both.protocols, got.protocols);
        // Another key, garbage.
        let other = NodeKey::generate().public_key();
        assert_eq!(peer(std::slice::from_ref(&body), &other), Err(IdentifyError::KeyMismatch));
        assert!(matches!(peer(&[vec![0xff, 0xff]], &key), Err(IdentifyError::Decode(_))));
        // No key at all is accepted (the certificate proves the key anyway).
        assert!(peer(&[second.encode_to_vec()], &key).is_ok());
    }
}
