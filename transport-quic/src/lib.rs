//! QUIC transport for the `quic://` scheme.
//!
//! The transport itself (quinn endpoint, streams, the [`p2p::Transport`] implementation) is not
//! built yet. Issue 4 builds it here; so far this crate provides its first building block, the
//! TLS 1.3 identity layer ([`identity`]): libp2p-style self-signed certificates that prove the
//! node's ed25519 key, and rustls client/server configurations whose verifiers derive and check
//! the peer's [`p2p::NodeId`].

pub mod identity;

pub use identity::{
    DUMMY_SERVER_NAME, IdentityError, LIBP2P_ALPN, LIBP2P_EXTENSION_OID, SIGNATURE_PREFIX,
    VerifiedPeer, client_config, generate_certificate, identity_error, libp2p_peer_id,
    peer_node_id, server_config, verify_certificate,
};
