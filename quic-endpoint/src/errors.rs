//! Mapping quinn's errors and peer certificates to the [`p2p::transport`] error types, the same
//! way for every QUIC transport.

use ed25519_dalek::VerifyingKey;
use p2p::{ConnectionError, HandshakeError};
use quinn::VarInt;
use rustls::pki_types::CertificateDer;

use crate::identity;

/// Most bytes of a close reason sent or reported (QUIC frames must fit in one packet).
pub const MAX_REASON: usize = 256;

/// The TLS `no_application_protocol` alert, which QUIC requires when no ALPN is common.
pub const NO_APPLICATION_PROTOCOL_ALERT: u8 = 120;

/// Maps a quinn connection error: a local close, or the peer's application close with code 0,
/// is [`ConnectionError::Closed`]; another application close is
/// [`ConnectionError::ClosedByPeer`] (reason truncated to [`MAX_REASON`] bytes); a timeout or a
/// transport error is an I/O error (the router does not blame the peer for those).
pub fn connection_error(e: quinn::ConnectionError) -> ConnectionError {
    use std::io::{Error, ErrorKind};
    match e {
        quinn::ConnectionError::LocallyClosed => ConnectionError::Closed,
        quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == VarInt::from_u32(0) => {
            ConnectionError::Closed
        }
        quinn::ConnectionError::ApplicationClosed(c) => ConnectionError::ClosedByPeer {
            code: c.error_code.into_inner(),
            reason: String::from_utf8_lossy(c.reason.get(..MAX_REASON).unwrap_or(&c.reason))
                .into_owned(),
        },
        quinn::ConnectionError::TimedOut => {
            ConnectionError::Io(Error::new(ErrorKind::TimedOut, "QUIC connection timed out"))
        }
        e => ConnectionError::Io(Error::new(ErrorKind::ConnectionAborted, e.to_string())),
    }
}

/// Maps a failed QUIC/TLS handshake of a connection for `protocol` (the ALPN, for the message):
/// no common ALPN protocol (TLS alert 120) is a protocol mismatch, any other TLS alert an
/// authentication failure, anything else a connection failure.
pub fn handshake_error(e: quinn::ConnectionError, protocol: &str) -> HandshakeError {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    let no_alpn = quinn::TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL_ALERT);
    match &e {
        quinn::ConnectionError::TransportError(t) if t.code == no_alpn => {
            HandshakeError::Protocol(format!("no common ALPN protocol (we speak {protocol}): {e}"))
        }
        quinn::ConnectionError::ConnectionClosed(c) if c.error_code == no_alpn => {
            HandshakeError::Protocol(format!("peer does not speak {protocol} (ALPN): {e}"))
        }
        quinn::ConnectionError::TransportError(t) if crypto(t.code) => {
            HandshakeError::Authentication(format!("TLS handshake failed: {e}"))
        }
        quinn::ConnectionError::ConnectionClosed(c) if crypto(c.error_code) => {
            HandshakeError::Authentication(format!("peer rejected the TLS handshake: {e}"))
        }
        _ => HandshakeError::Connection(connection_error(e)),
    }
}

/// The peer's node key, from the certificate of an established connection (not verified again:
/// the handshake's verifiers checked this certificate; see [`identity::handshake_peer`]).
pub fn peer_public_key(conn: &quinn::Connection) -> Result<VerifyingKey, HandshakeError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| HandshakeError::Authentication("peer presented no certificate".into()))?;
    let peer = identity::handshake_peer(&certs)
        .map_err(|e| HandshakeError::Authentication(e.to_string()))?;
    Ok(peer.public_key)
}

/// `text` cut to at most [`MAX_REASON`] bytes at a character boundary, for a close reason.
pub fn reason_bytes(text: &str) -> &[u8] {
    let mut end = text.len().min(MAX_REASON);
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.as_bytes().get(..end).unwrap_or_default()
}
