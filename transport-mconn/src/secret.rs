//! SecretConnection: the authenticated-encryption layer of the Tendermint/CometBFT MConnection
//! transport, as a sans-IO state machine.
//!
//! Nothing here touches a socket or a clock; the async driver does the I/O and feeds bytes in:
//!
//! 1. [`Handshake::new`] creates an ephemeral X25519 key. Send [`Handshake::ephemeral_message`]
//!    (35 bytes, cleartext), and at the same time read the peer's message with
//!    [`parse_ephemeral`] (it never consumes bytes past the message, so leftovers belong to the
//!    encrypted stage).
//! 2. [`Handshake::finish`] computes the DH secret, the Merlin challenge and the two
//!    ChaCha20-Poly1305 keys, giving an [`Authenticating`].
//! 3. Seal [`Authenticating::auth_message`] with [`Authenticating::sender`] and send it; open the
//!    peer's frames with [`Authenticating::receiver`] and feed the decrypted bytes to
//!    [`Authenticating::read_peer_auth`] until it returns the peer's verified ed25519 key.
//! 4. [`Authenticating::into_ciphers`] gives the [`SendCipher`] and [`RecvCipher`] for the rest
//!    of the connection: a stream of fixed [`SEALED_FRAME_SIZE`]-byte frames.
//!
//! Wire format: every length prefix in the handshake is a protobuf unsigned varint. A sealed
//! frame is `ChaCha20-Poly1305(LE u32 chunk length || payload || filler)` with empty associated
//! data and a per-direction nonce `00000000 || LE u64 counter`.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hkdf::Hkdf;
use merlin::Transcript;
use p2p_proto::tendermint::crypto::{PublicKey, public_key::Sum};
use p2p_proto::tendermint::p2p::AuthSigMessage;
use prost::Message;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::Sha256;
use x25519_dalek::StaticSecret;

/// Maximum number of payload bytes in one frame (Go's `dataMaxSize`).
pub const FRAME_DATA_SIZE: usize = 1024;
/// Size of a plaintext frame: the 4-byte little-endian chunk length plus [`FRAME_DATA_SIZE`].
pub const FRAME_PLAINTEXT_SIZE: usize = 4 + FRAME_DATA_SIZE;
/// Size of a sealed frame on the wire: [`FRAME_PLAINTEXT_SIZE`] plus the 16-byte Poly1305 tag.
pub const SEALED_FRAME_SIZE: usize = FRAME_PLAINTEXT_SIZE + TAG_SIZE;
/// Size of the cleartext ephemeral-key message: `22 0a 20` followed by the 32-byte X25519 key.
pub const EPHEMERAL_MESSAGE_LEN: usize = 3 + 32;
/// Largest handshake message body accepted (Go's delimited-reader limit, 1 MiB).
pub const MAX_HANDSHAKE_MESSAGE: usize = 1024 * 1024;

/// Poly1305 tag size.
const TAG_SIZE: usize = 16;
/// Body length of the ephemeral-key message: `0a 20` plus the 32-byte key.
const EPHEMERAL_BODY_LEN: usize = 34;
/// A u64 varint is at most 10 bytes long.
const MAX_VARINT_LEN: usize = 10;
/// Merlin transcript label.
const TRANSCRIPT_LABEL: &[u8] = b"TENDERMINT_SECRET_CONNECTION_TRANSCRIPT_HASH";
/// HKDF info string.
const HKDF_INFO: &[u8] = b"TENDERMINT_SECRET_CONNECTION_KEY_AND_CHALLENGE_GEN";

/// Everything that can go wrong in the SecretConnection handshake or frame codec. Every error is
/// fatal for the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// A handshake message's length prefix is larger than [`MAX_HANDSHAKE_MESSAGE`].
    #[error("handshake message exceeds max size ({len} > {MAX_HANDSHAKE_MESSAGE})")]
    MessageTooLarge {
        /// The announced length (or a lower bound of it, if the varint was cut short).
        len: u64,
    },
    /// A length prefix is not a valid unsigned varint (longer than 10 bytes or overflowing u64).
    #[error("malformed varint length prefix (longer than 10 bytes or overflowing u64)")]
    MalformedVarint,
    /// The ephemeral-key message announces a body length other than 34.
    #[error("ephemeral key message body is {len} bytes, expected 34")]
    EphemeralLength {
        /// The announced body length.
        len: usize,
    },
    /// The ephemeral-key message body is not `0a 20` followed by 32 bytes.
    #[error("ephemeral key message is not a BytesValue holding a 32-byte X25519 key")]
    MalformedEphemeral,
    /// The peer sent our own ephemeral public key back.
    #[error("remote ephemeral key equals our own ephemeral key")]
    ReflectedEphemeral,
    /// The X25519 shared secret is all zeros: the peer's ephemeral key is a low-order point.
    #[error("bad remote ephemeral key: low order point (all-zero shared secret)")]
    LowOrderPoint,
    /// The AEAD implementation rejected a derived key.
    #[error("could not set up ChaCha20-Poly1305 with the derived key")]
    CipherInit,
    /// The peer's AuthSigMessage is not valid protobuf.
    #[error("peer's AuthSigMessage is not valid protobuf: {0}")]
    AuthSigDecode(#[source] prost::DecodeError),
    /// The peer's AuthSigMessage has no public key (empty or unknown `PublicKey.sum`).
    #[error("fromproto: key type in peer's AuthSigMessage is not supported (empty oneof)")]
    UnsupportedKeyType,
    /// The peer's ed25519 public key does not have 32 bytes.
    #[error("invalid size for PubKeyEd25519: got {len} bytes, expected 32")]
    Ed25519KeySize {
        /// The length received.
        len: usize,
    },
    /// The peer's secp256k1 public key does not have 33 bytes.
    #[error("invalid size for PubKeySecp256k1: got {len} bytes, expected 33")]
    Secp256k1KeySize {
        /// The length received.
        len: usize,
    },
    /// The peer authenticated with a (well-formed) secp256k1 key; only ed25519 is allowed.
    #[error("expected ed25519 pubkey, got secp256k1")]
    NotEd25519,
    /// The peer's signature does not have 64 bytes.
    #[error("challenge verification failed: signature is {len} bytes, expected 64")]
    SignatureSize {
        /// The length received.
        len: usize,
    },
    /// The peer's 32-byte ed25519 public key is not a valid curve point.
    #[error("challenge verification failed: peer's ed25519 public key is not a valid point")]
    InvalidPeerKey,
    /// The peer's signature over the challenge does not verify.
    #[error("challenge verification failed: bad signature over the challenge")]
    ChallengeVerification,
    /// [`SendCipher::seal_frame`] was given more than [`FRAME_DATA_SIZE`] bytes.
    #[error("frame payload is {len} bytes, at most {FRAME_DATA_SIZE} fit in one frame")]
    FrameTooLarge {
        /// The payload length given.
        len: usize,
    },
    /// [`RecvCipher::open_frame`] was given a slice that is not [`SEALED_FRAME_SIZE`] bytes.
    #[error("sealed frame is {len} bytes, expected {SEALED_FRAME_SIZE}")]
    SealedFrameSize {
        /// The slice length given.
        len: usize,
    },
    /// Sealing a frame failed inside the AEAD implementation.
    #[error("failed to encrypt SecretConnection frame")]
    Encrypt,
    /// A frame's Poly1305 tag did not verify (corrupted, forged or out-of-order frame).
    #[error("failed to decrypt SecretConnection: authentication tag mismatch")]
    Decrypt,
    /// A decrypted frame announces more than [`FRAME_DATA_SIZE`] payload bytes.
    #[error("chunkLength is greater than dataMaxSize ({len} > {FRAME_DATA_SIZE})")]
    ChunkLength {
        /// The announced chunk length.
        len: u32,
    },
    /// The nonce counter of this direction reached `u64::MAX`; using it again would reuse nonces.
    #[error("SecretConnection nonce counter exhausted; the connection must be closed")]
    NonceExhausted,
}

/// Reads the uvarint length prefix at the front of `input`, bounded by [`MAX_HANDSHAKE_MESSAGE`].
///
/// Returns `Ok(None)` if the varint is incomplete, else `Ok(Some((length, prefix_len)))`.
fn read_length_prefix(input: &[u8]) -> Result<Option<(usize, usize)>, SecretError> {
    let mut value: u64 = 0;
    for (i, &byte) in input.iter().take(MAX_VARINT_LEN).enumerate() {
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(SecretError::MalformedVarint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        // Later bytes only add to the value: reject an oversized prefix as early as possible.
        let len = usize::try_from(value)
            .ok()
            .filter(|&len| len <= MAX_HANDSHAKE_MESSAGE)
            .ok_or(SecretError::MessageTooLarge { len: value })?;
        if byte < 0x80 {
            return Ok(Some((len, i + 1)));
        }
    }
    if input.len() >= MAX_VARINT_LEN { Err(SecretError::MalformedVarint) } else { Ok(None) }
}

/// Parses the peer's ephemeral-key message at the front of `input`.
///
/// Returns `Ok(None)` if more bytes are needed, and `Ok(Some((key, consumed)))` once the whole
/// message is there; `consumed` never goes past the message. The message must be a uvarint
/// length of 34 followed by exactly `0a 20 <32-byte key>`: anything else is an error (a length
/// above [`MAX_HANDSHAKE_MESSAGE`], a malformed varint, another length, a wrong body).
pub fn parse_ephemeral(input: &[u8]) -> Result<Option<([u8; 32], usize)>, SecretError> {
    let Some((len, prefix_len)) = read_length_prefix(input)? else {
        return Ok(None);
    };
    if len != EPHEMERAL_BODY_LEN {
        return Err(SecretError::EphemeralLength { len });
    }
    let end = prefix_len + len;
    let Some(body) = input.get(prefix_len..end) else {
        return Ok(None);
    };
    let body: &[u8; 34] = body.try_into().map_err(|_| SecretError::MalformedEphemeral)?;
    let [0x0a, 0x20, key @ ..] = *body else {
        return Err(SecretError::MalformedEphemeral);
    };
    Ok(Some((key, end)))
}

/// HKDF-SHA256 over the X25519 shared secret (no salt, info
/// `TENDERMINT_SECRET_CONNECTION_KEY_AND_CHALLENGE_GEN`, 96 bytes of output), split as Go's
/// `deriveSecrets`.
///
/// Returns `(recv_key, send_key, okm[64..96])`. The side with the lexicographically smaller
/// ephemeral key (`local_is_least`) receives with `okm[0..32]` and sends with `okm[32..64]`; the
/// other side the opposite. The third value is unused by the protocol (it was the challenge
/// before Merlin) and only returned for the golden test vectors.
pub fn derive_secrets(
    dh_secret: &[u8; 32],
    local_is_least: bool,
) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let hkdf = Hkdf::<Sha256>::new(None, dh_secret);
    let mut okm = [[0u8; 32]; 3];
    match hkdf.expand(HKDF_INFO, okm.as_flattened_mut()) {
        Ok(()) => {}
        // HKDF-SHA256 can produce up to 8160 bytes; 96 is a constant far below that.
        Err(hkdf::InvalidLength) => unreachable!("96 bytes is a valid HKDF-SHA256 length"),
    }
    let [first, second, legacy] = okm;
    if local_is_least { (first, second, legacy) } else { (second, first, legacy) }
}

/// Builds the 12-byte nonce for frame `counter` (`00000000 || LE u64`), refusing `u64::MAX`.
///
/// Go increments the counter right after each frame and panics instead of wrapping, so the last
/// usable counter is `u64::MAX - 1`.
fn nonce_for(counter: u64) -> Result<Nonce, SecretError> {
    if counter == u64::MAX {
        return Err(SecretError::NonceExhausted);
    }
    let [a, b, c, d, e, f, g, h] = counter.to_le_bytes();
    Ok(Nonce::assume_unique_for_key([0, 0, 0, 0, a, b, c, d, e, f, g, h]))
}

/// Wraps a 32-byte key for ChaCha20-Poly1305.
fn aead_key(key: &[u8; 32]) -> Result<LessSafeKey, SecretError> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| SecretError::CipherInit)
}

/// First handshake stage: our node key and a fresh ephemeral X25519 key pair.
pub struct Handshake {
    local_key: SigningKey,
    ephemeral_secret: StaticSecret,
    ephemeral_public: [u8; 32],
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("local_key", &self.local_key.verifying_key())
            .field("ephemeral_public", &self.ephemeral_public)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Starts a handshake for node key `local_key` with a random ephemeral secret.
    pub fn new(local_key: SigningKey) -> Self {
        Self::with_ephemeral_secret(local_key, rand::random::<[u8; 32]>())
    }

    /// Starts a handshake with a given ephemeral X25519 secret (clamped by X25519 itself). Only
    /// for test vectors: reusing an ephemeral secret breaks forward secrecy.
    pub fn with_ephemeral_secret(local_key: SigningKey, secret: [u8; 32]) -> Self {
        let ephemeral_secret = StaticSecret::from(secret);
        let ephemeral_public = x25519_dalek::PublicKey::from(&ephemeral_secret).to_bytes();
        Self { local_key, ephemeral_secret, ephemeral_public }
    }

    /// Our cleartext ephemeral-key message: `22 0a 20 <32-byte X25519 public key>`.
    pub fn ephemeral_message(&self) -> [u8; EPHEMERAL_MESSAGE_LEN] {
        let mut message = [0u8; EPHEMERAL_MESSAGE_LEN];
        let [len, tag, value_len, key @ ..] = &mut message;
        *len = 0x22;
        *tag = 0x0a;
        *value_len = 0x20;
        *key = self.ephemeral_public;
        message
    }

    /// Completes the key exchange with the peer's ephemeral public key.
    ///
    /// Rejects a key equal to ours and a low-order key (all-zero shared secret). Sorts the two
    /// ephemeral keys, runs the Merlin transcript for the challenge, derives the send and receive
    /// keys with HKDF from the raw shared secret, and signs the challenge with our node key.
    pub fn finish(self, remote_ephemeral: [u8; 32]) -> Result<Authenticating, SecretError> {
        if remote_ephemeral == self.ephemeral_public {
            return Err(SecretError::ReflectedEphemeral);
        }
        let shared =
            self.ephemeral_secret.diffie_hellman(&x25519_dalek::PublicKey::from(remote_ephemeral));
        if !shared.was_contributory() {
            return Err(SecretError::LowOrderPoint);
        }
        let local_is_least = self.ephemeral_public < remote_ephemeral;
        let (lo, hi) = if local_is_least {
            (&self.ephemeral_public, &remote_ephemeral)
        } else {
            (&remote_ephemeral, &self.ephemeral_public)
        };
        let mut transcript = Transcript::new(TRANSCRIPT_LABEL);
        transcript.append_message(b"EPHEMERAL_LOWER_PUBLIC_KEY", lo);
        transcript.append_message(b"EPHEMERAL_UPPER_PUBLIC_KEY", hi);
        transcript.append_message(b"DH_SECRET", shared.as_bytes());
        let mut challenge = [0u8; 32];
        transcript.challenge_bytes(b"SECRET_CONNECTION_MAC", &mut challenge);

        let (recv_key, send_key, _) = derive_secrets(shared.as_bytes(), local_is_least);
        Ok(Authenticating {
            challenge,
            local_public: self.local_key.verifying_key(),
            signature: self.local_key.sign(&challenge),
            sender: SendCipher::new(&send_key)?,
            receiver: RecvCipher::new(&recv_key)?,
        })
    }
}

/// Second handshake stage: the ciphers are ready and both sides authenticate over them.
pub struct Authenticating {
    challenge: [u8; 32],
    local_public: VerifyingKey,
    signature: Signature,
    sender: SendCipher,
    receiver: RecvCipher,
}

impl fmt::Debug for Authenticating {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticating")
            .field("local_public", &self.local_public)
            .field("sender", &self.sender)
            .field("receiver", &self.receiver)
            .finish_non_exhaustive()
    }
}

impl Authenticating {
    /// The 32-byte Merlin challenge both sides sign.
    pub fn challenge(&self) -> &[u8; 32] {
        &self.challenge
    }

    /// Our uvarint-delimited AuthSigMessage (our ed25519 key and our signature over the
    /// challenge; 103 bytes), to be sealed with [`Self::sender`].
    pub fn auth_message(&self) -> Vec<u8> {
        AuthSigMessage {
            pub_key: Some(PublicKey {
                sum: Some(Sum::Ed25519(self.local_public.to_bytes().into())),
            }),
            sig: self.signature.to_bytes().into(),
        }
        .encode_length_delimited_to_vec()
    }

    /// The cipher for our direction.
    pub fn sender(&mut self) -> &mut SendCipher {
        &mut self.sender
    }

    /// The cipher for the peer's direction.
    pub fn receiver(&mut self) -> &mut RecvCipher {
        &mut self.receiver
    }

    /// Parses and verifies the peer's uvarint-delimited AuthSigMessage at the front of the
    /// decrypted stream `plaintext`.
    ///
    /// Returns `Ok(None)` if more bytes are needed, and `Ok(Some((peer_key, consumed)))` once the
    /// signature verified; bytes after `consumed` belong to the next message. Checks in Go's
    /// order: the public key is set and has a valid size (ed25519: 32 bytes; secp256k1: 33 bytes,
    /// then rejected as not ed25519), the signature has 64 bytes and verifies over the challenge.
    pub fn read_peer_auth(
        &self,
        plaintext: &[u8],
    ) -> Result<Option<(VerifyingKey, usize)>, SecretError> {
        let Some((len, prefix_len)) = read_length_prefix(plaintext)? else {
            return Ok(None);
        };
        let end = prefix_len + len;
        let Some(body) = plaintext.get(prefix_len..end) else {
            return Ok(None);
        };
        let message = AuthSigMessage::decode(body).map_err(SecretError::AuthSigDecode)?;
        let key = match message.pub_key.and_then(|key| key.sum) {
            None => return Err(SecretError::UnsupportedKeyType),
            Some(Sum::Ed25519(key)) => <[u8; 32]>::try_from(key.as_slice())
                .map_err(|_| SecretError::Ed25519KeySize { len: key.len() })?,
            Some(Sum::Secp256k1(key)) if key.len() == 33 => return Err(SecretError::NotEd25519),
            Some(Sum::Secp256k1(key)) => {
                return Err(SecretError::Secp256k1KeySize { len: key.len() });
            }
        };
        let signature = <[u8; 64]>::try_from(message.sig.as_slice())
            .map_err(|_| SecretError::SignatureSize { len: message.sig.len() })?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| SecretError::InvalidPeerKey)?;
        key.verify(&self.challenge, &Signature::from_bytes(&signature))
            .map_err(|_| SecretError::ChallengeVerification)?;
        Ok(Some((key, end)))
    }

    /// Ends the handshake, giving the ciphers for the rest of the connection.
    pub fn into_ciphers(self) -> (SendCipher, RecvCipher) {
        (self.sender, self.receiver)
    }
}

/// Seals outgoing frames: the send key and the frame counter of our direction.
pub struct SendCipher {
    key: LessSafeKey,
    counter: u64,
}

impl fmt::Debug for SendCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendCipher").field("frames_sent", &self.counter).finish_non_exhaustive()
    }
}

impl SendCipher {
    /// A cipher with the given key, starting at nonce 0.
    fn new(key: &[u8; 32]) -> Result<Self, SecretError> {
        Ok(Self { key: aead_key(key)?, counter: 0 })
    }

    /// Seals `data` as `ceil(len / 1024)` frames appended to `out` (nothing for empty data).
    ///
    /// Fails without writing anything if the nonce counter cannot cover all frames.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), SecretError> {
        let frames = data.len().div_ceil(FRAME_DATA_SIZE);
        let available = u64::MAX - self.counter;
        if u64::try_from(frames).map_or(true, |frames| frames > available) {
            return Err(SecretError::NonceExhausted);
        }
        out.reserve(frames.saturating_mul(SEALED_FRAME_SIZE));
        for chunk in data.chunks(FRAME_DATA_SIZE) {
            self.seal_frame(chunk, out)?;
        }
        Ok(())
    }

    /// Seals one frame holding `data` (at most [`FRAME_DATA_SIZE`] bytes, zero filler) and
    /// appends its [`SEALED_FRAME_SIZE`] bytes to `out`.
    pub fn seal_frame(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), SecretError> {
        let chunk_len = u32::try_from(data.len())
            .ok()
            .filter(|_| data.len() <= FRAME_DATA_SIZE)
            .ok_or(SecretError::FrameTooLarge { len: data.len() })?;
        let start = out.len();
        out.reserve(SEALED_FRAME_SIZE);
        out.extend_from_slice(&chunk_len.to_le_bytes());
        out.extend_from_slice(data);
        out.resize(start + FRAME_PLAINTEXT_SIZE, 0);
        // `start` was the length before we appended, so this split cannot fail.
        let (_, plaintext) = out.split_at_mut(start);
        match self.seal_in_place(plaintext) {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(err) => {
                out.truncate(start);
                Err(err)
            }
        }
    }

    /// Encrypts `plaintext` in place with the next nonce and returns the tag.
    fn seal_in_place(&mut self, plaintext: &mut [u8]) -> Result<Tag, SecretError> {
        let nonce = nonce_for(self.counter)?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), plaintext)
            .map_err(|_| SecretError::Encrypt)?;
        // `nonce_for` refused u64::MAX, so this cannot overflow.
        self.counter += 1;
        Ok(tag)
    }

    /// Number of frames sealed so far (the counter of the next nonce).
    pub fn frames_sent(&self) -> u64 {
        self.counter
    }
}

/// Opens incoming frames: the receive key and the frame counter of the peer's direction.
pub struct RecvCipher {
    key: LessSafeKey,
    counter: u64,
}

impl fmt::Debug for RecvCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvCipher").field("frames_received", &self.counter).finish_non_exhaustive()
    }
}

impl RecvCipher {
    /// A cipher with the given key, starting at nonce 0.
    fn new(key: &[u8; 32]) -> Result<Self, SecretError> {
        Ok(Self { key: aead_key(key)?, counter: 0 })
    }

    /// Opens one sealed frame in place and returns its payload.
    ///
    /// `frame` must be exactly [`SEALED_FRAME_SIZE`] bytes; its contents are garbage afterwards.
    /// The filler after the payload is ignored. Errors: a wrong slice size, a bad tag
    /// ([`SecretError::Decrypt`]), a chunk length above [`FRAME_DATA_SIZE`], an exhausted nonce.
    pub fn open_frame<'a>(&mut self, frame: &'a mut [u8]) -> Result<&'a [u8], SecretError> {
        if frame.len() != SEALED_FRAME_SIZE {
            return Err(SecretError::SealedFrameSize { len: frame.len() });
        }
        let nonce = nonce_for(self.counter)?;
        let plaintext: &'a [u8] =
            self.key.open_in_place(nonce, Aad::empty(), frame).map_err(|_| SecretError::Decrypt)?;
        // `nonce_for` refused u64::MAX, so this cannot overflow.
        self.counter += 1;
        let Some((chunk_len, rest)) = plaintext.split_first_chunk::<4>() else {
            return Err(SecretError::SealedFrameSize { len: plaintext.len() });
        };
        let chunk_len = u32::from_le_bytes(*chunk_len);
        usize::try_from(chunk_len)
            .ok()
            .filter(|&len| len <= FRAME_DATA_SIZE)
            .and_then(|len| rest.get(..len))
            .ok_or(SecretError::ChunkLength { len: chunk_len })
    }

    /// Number of frames opened so far (the counter of the next nonce).
    #[cfg(test)]
    fn frames_received(&self) -> u64 {
        self.counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use sha2::Digest;

    const GOLDEN: &str = include_str!("../testdata/TestDeriveSecretsAndChallengeGolden.golden");

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn node_key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    /// Two finished handshakes (A with seed 0x11, B with seed 0x22), random ephemerals.
    fn pair() -> (Authenticating, Authenticating) {
        let a = Handshake::new(node_key(0x11));
        let b = Handshake::new(node_key(0x22));
        let a_eph = parse_ephemeral(&a.ephemeral_message()).unwrap().unwrap().0;
        let b_eph = parse_ephemeral(&b.ephemeral_message()).unwrap().unwrap().0;
        (a.finish(b_eph).unwrap(), b.finish(a_eph).unwrap())
    }

    /// A send/receive pair sharing one key.
    fn cipher_pair() -> (SendCipher, RecvCipher) {
        let key = [7u8; 32];
        (SendCipher::new(&key).unwrap(), RecvCipher::new(&key).unwrap())
    }

    /// Seals an arbitrary 1028-byte plaintext, bypassing the frame encoder.
    fn seal_raw(sender: &mut SendCipher, plaintext: &[u8; FRAME_PLAINTEXT_SIZE]) -> Vec<u8> {
        let mut frame = plaintext.to_vec();
        let tag = sender.seal_in_place(&mut frame).unwrap();
        frame.extend_from_slice(tag.as_ref());
        frame
    }

    fn auth_bytes(pub_key: Option<Sum>, sig: Vec<u8>) -> Vec<u8> {
        AuthSigMessage { pub_key: Some(PublicKey { sum: pub_key }), sig }
            .encode_length_delimited_to_vec()
    }

    #[test]
    fn golden_derive_secrets() {
        let mut lines = 0;
        for line in GOLDEN.lines() {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 5, "{line}");
            let local_is_least = match fields[1] {
                "true" => true,
                "false" => false,
                other => panic!("bad bool {other}"),
            };
            let (recv, send, legacy) = derive_secrets(&unhex(fields[0]), local_is_least);
            assert_eq!(hex::encode(recv), fields[2], "recv, line {lines}");
            assert_eq!(hex::encode(send), fields[3], "send, line {lines}");
            assert_eq!(hex::encode(legacy), fields[4], "okm[64..96], line {lines}");
            lines += 1;
        }
        assert_eq!(lines, 32);
    }

    #[test]
    fn merlin_canonical_vector() {
        let mut transcript = Transcript::new(b"test protocol");
        transcript.append_message(b"some label", b"some data");
        let mut challenge = [0u8; 32];
        transcript.challenge_bytes(b"challenge", &mut challenge);
        assert_eq!(
            hex::encode(challenge),
            "d5a21972d0d5fe320c0d263fac7fffb8145aa640af6e9bca177c03c7efcf0615"
        );
    }

    #[test]
    fn end_to_end_vector() {
        let a_secret: [u8; 32] = std::array::from_fn(|i| i as u8 + 0x01);
        let b_secret: [u8; 32] = std::array::from_fn(|i| i as u8 + 0x21);
        let a = Handshake::with_ephemeral_secret(node_key(0x11), a_secret);
        let b = Handshake::with_ephemeral_secret(node_key(0x22), b_secret);

        let a_msg = a.ephemeral_message();
        assert_eq!(
            hex::encode(a_msg),
            "220a2007a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c"
        );
        let (a_eph, consumed) = parse_ephemeral(&a_msg).unwrap().unwrap();
        assert_eq!(consumed, EPHEMERAL_MESSAGE_LEN);
        let (b_eph, _) = parse_ephemeral(&b.ephemeral_message()).unwrap().unwrap();
        assert_eq!(
            hex::encode(b_eph),
            "5869aff450549732cbaaed5e5df9b30a6da31cb0e5742bad5ad4a1a768f1a67b"
        );
        assert!(a_eph < b_eph, "A is least");

        let dh = StaticSecret::from(a_secret)
            .diffie_hellman(&x25519_dalek::PublicKey::from(b_eph))
            .to_bytes();
        assert_eq!(
            hex::encode(dh),
            "a84dc7c3c8f058b1b2dc4cd1e9b5dc0a7987f88b6a9564cde3391fc421159e77"
        );
        let okm0 = "98c6615b5960d49d4e408d0c4fff744ebb2a34a37f7dc9bc2e3d3c57dfb440af";
        let okm1 = "ec8f82ecf4b7d32463db849a4e719f2d5bbaae670fc29dfe1f3bacede58a63bd";
        let okm2 = "7cb9cb1300bf5c812a1d74c845f70583303dabf272dbeddd3e169b8d7f361431";
        let (a_recv, a_send, legacy) = derive_secrets(&dh, true);
        assert_eq!((hex::encode(a_recv), hex::encode(a_send)), (okm0.into(), okm1.into()));
        assert_eq!(hex::encode(legacy), okm2);
        let (b_recv, b_send, _) = derive_secrets(&dh, false);
        assert_eq!((b_recv, b_send), (a_send, a_recv));

        let mut a = a.finish(b_eph).unwrap();
        let mut b = b.finish(a_eph).unwrap();
        let challenge = "73741efc08f7a79fb3434cd0516b49401a6ffa569aeec3766268a90157017252";
        assert_eq!(hex::encode(a.challenge()), challenge);
        assert_eq!(hex::encode(b.challenge()), challenge);

        assert_eq!(
            hex::encode(a.local_public.as_bytes()),
            "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"
        );
        assert_eq!(
            hex::encode(b.local_public.as_bytes()),
            "a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455a4f0"
        );
        let sig = "12668b9b4d8b52c2fe270898f471e206e072f0d9fe3df04596f45a2da2ba4565\
                   0bee3108edb23ae84aaaece9ec078e7d68f043620c0eae93e5bc53bd02416c04";
        assert_eq!(hex::encode(a.signature.to_bytes()), sig);
        let auth = a.auth_message();
        assert_eq!(auth.len(), 103);
        assert_eq!(
            hex::encode(&auth),
            format!(
                "660a220a20d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737\
                 1240{sig}"
            )
        );

        let mut frame = Vec::new();
        a.sender().seal(&auth, &mut frame).unwrap();
        assert_eq!(frame.len(), SEALED_FRAME_SIZE);
        assert_eq!(
            hex::encode(&frame[..48]),
            "4d72b57b6c1a592cfb8694ae896675ffb3050026f0c601c1efd3f07e2a5bd73f\
             9a04301fba65e21322bdb4f2075f23b7"
        );
        assert_eq!(
            hex::encode(&frame[SEALED_FRAME_SIZE - 16..]),
            "c878921bd8b4b257b1a16994c968b699"
        );
        assert_eq!(
            hex::encode(Sha256::digest(&frame)),
            "d397e8a0cd554dc1be70a32b45b1cb1e2a0e2e43d1dd170d699acb41f5d3825f"
        );

        // The same frame through raw ChaCha20-Poly1305 with A's send key = okm[32..64].
        let mut plaintext = [0u8; FRAME_PLAINTEXT_SIZE];
        plaintext[..4].copy_from_slice(&103u32.to_le_bytes());
        plaintext[4..107].copy_from_slice(&auth);
        assert_eq!(seal_raw(&mut SendCipher::new(&a_send).unwrap(), &plaintext), frame);

        // B opens it with B's receive key and verifies A.
        let payload = b.receiver().open_frame(&mut frame).unwrap().to_vec();
        assert_eq!(payload, auth);
        let (peer, consumed) = b.read_peer_auth(&payload).unwrap().unwrap();
        assert_eq!(peer, a.local_public);
        assert_eq!(consumed, 103);
    }

    #[test]
    fn two_party_handshake_and_stream() {
        let (mut a, mut b) = pair();
        assert_eq!(a.challenge(), b.challenge());

        let mut a_wire = Vec::new();
        let a_auth = a.auth_message();
        a.sender().seal(&a_auth, &mut a_wire).unwrap();
        let mut b_wire = Vec::new();
        let b_auth = b.auth_message();
        b.sender().seal(&b_auth, &mut b_wire).unwrap();

        let a_plain = b.receiver().open_frame(&mut a_wire).unwrap().to_vec();
        let b_plain = a.receiver().open_frame(&mut b_wire).unwrap().to_vec();
        // Partial input asks for more.
        for cut in 0..a_plain.len() {
            assert!(b.read_peer_auth(&a_plain[..cut]).unwrap().is_none());
        }
        let (a_key, used) = b.read_peer_auth(&a_plain).unwrap().unwrap();
        assert_eq!((a_key, used), (node_key(0x11).verifying_key(), a_plain.len()));
        let (b_key, _) = a.read_peer_auth(&b_plain).unwrap().unwrap();
        assert_eq!(b_key, node_key(0x22).verifying_key());
        // A's signature is bound to this session's challenge: another session rejects it.
        let (_, other) = pair();
        assert!(matches!(other.read_peer_auth(&a_plain), Err(SecretError::ChallengeVerification)));

        let (mut a_send, _) = a.into_ciphers();
        let (_, mut b_recv) = b.into_ciphers();
        let data: Vec<u8> = (0..2500u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut wire = Vec::new();
        a_send.seal(&data, &mut wire).unwrap();
        assert_eq!(wire.len(), 3 * SEALED_FRAME_SIZE);
        assert_eq!(a_send.frames_sent(), 4);
        let mut lens = Vec::new();
        let mut received = Vec::new();
        for frame in wire.chunks_mut(SEALED_FRAME_SIZE) {
            let payload = b_recv.open_frame(frame).unwrap();
            lens.push(payload.len());
            received.extend_from_slice(payload);
        }
        assert_eq!(lens, [1024, 1024, 452]);
        assert_eq!(received, data);
        assert_eq!(b_recv.frames_received(), 4);
    }

    #[test]
    fn seal_empty_gives_no_frames() {
        let (mut sender, _) = cipher_pair();
        let mut out = vec![1, 2, 3];
        sender.seal(&[], &mut out).unwrap();
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(sender.frames_sent(), 0);
        // seal appends after existing content.
        sender.seal(&[9; 1024], &mut out).unwrap();
        assert_eq!(out.len(), 3 + SEALED_FRAME_SIZE);
        assert_eq!(sender.frames_sent(), 1);
    }

    #[test]
    fn zero_length_frame_decodes_empty() {
        let (mut sender, mut receiver) = cipher_pair();
        let mut out = Vec::new();
        sender.seal_frame(&[], &mut out).unwrap();
        assert_eq!(out.len(), SEALED_FRAME_SIZE);
        assert_eq!(receiver.open_frame(&mut out).unwrap(), &[] as &[u8]);
    }

    #[test]
    fn seal_frame_too_large_rejected() {
        let (mut sender, _) = cipher_pair();
        let mut out = Vec::new();
        assert!(matches!(
            sender.seal_frame(&[0; 1025], &mut out),
            Err(SecretError::FrameTooLarge { len: 1025 })
        ));
        assert!(out.is_empty());
        assert_eq!(sender.frames_sent(), 0);
    }

    #[test]
    fn random_filler_ignored() {
        let (mut sender, mut receiver) = cipher_pair();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut plaintext = [0u8; FRAME_PLAINTEXT_SIZE];
        rng.fill(&mut plaintext[..]);
        plaintext[..4].copy_from_slice(&10u32.to_le_bytes());
        let expected = plaintext[4..14].to_vec();
        let mut frame = seal_raw(&mut sender, &plaintext);
        assert_eq!(receiver.open_frame(&mut frame).unwrap(), expected);
    }

    #[test]
    fn chunk_length_over_limit_rejected() {
        let (mut sender, mut receiver) = cipher_pair();
        for len in [1024u32, 1025, u32::MAX] {
            let mut plaintext = [0u8; FRAME_PLAINTEXT_SIZE];
            plaintext[..4].copy_from_slice(&len.to_le_bytes());
            let mut frame = seal_raw(&mut sender, &plaintext);
            let result = receiver.open_frame(&mut frame);
            if len == 1024 {
                assert_eq!(result.unwrap().len(), 1024);
            } else {
                let err = result.unwrap_err();
                assert!(matches!(err, SecretError::ChunkLength { len: l } if l == len));
                assert!(err.to_string().contains("chunkLength is greater than dataMaxSize"));
            }
        }
    }

    #[test]
    fn flipped_bit_is_bad_mac() {
        for position in [0, 5, 1027, 1028, SEALED_FRAME_SIZE - 1] {
            let (mut sender, mut receiver) = cipher_pair();
            let mut frame = Vec::new();
            sender.seal_frame(b"hello", &mut frame).unwrap();
            frame[position] ^= 0x01;
            let err = receiver.open_frame(&mut frame).unwrap_err();
            assert!(matches!(err, SecretError::Decrypt));
            assert!(err.to_string().contains("failed to decrypt SecretConnection"));
            assert_eq!(receiver.frames_received(), 0);
        }
    }

    #[test]
    fn sealed_frame_wrong_size_rejected() {
        let (mut sender, mut receiver) = cipher_pair();
        let mut frame = Vec::new();
        sender.seal_frame(b"x", &mut frame).unwrap();
        frame.push(0);
        assert!(matches!(
            receiver.open_frame(&mut frame),
            Err(SecretError::SealedFrameSize { len: 1045 })
        ));
        assert!(matches!(
            receiver.open_frame(&mut []),
            Err(SecretError::SealedFrameSize { len: 0 })
        ));
    }

    #[test]
    fn nonce_layout() {
        let key = [3u8; 32];
        let mut sender = SendCipher::new(&key).unwrap();
        let mut out = Vec::new();
        sender.seal_frame(b"first", &mut out).unwrap();
        sender.seal_frame(b"second", &mut out).unwrap();
        let second = &out[SEALED_FRAME_SIZE..];

        // Frame 1 uses nonce 00000000 || 01 00 00 00 00 00 00 00.
        let nonce: [u8; 12] = unhex("000000000100000000000000");
        let mut plaintext = [0u8; FRAME_PLAINTEXT_SIZE];
        plaintext[..4].copy_from_slice(&6u32.to_le_bytes());
        plaintext[4..10].copy_from_slice(b"second");
        let raw = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
        let tag = raw
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut plaintext,
            )
            .unwrap();
        assert_eq!(&second[..FRAME_PLAINTEXT_SIZE], &plaintext[..]);
        assert_eq!(&second[FRAME_PLAINTEXT_SIZE..], tag.as_ref());

        // Out-of-order frames fail: the receiver is at nonce 0.
        let mut receiver = RecvCipher::new(&key).unwrap();
        let mut swapped = second.to_vec();
        assert!(matches!(receiver.open_frame(&mut swapped), Err(SecretError::Decrypt)));

        // A high counter lands in bytes 4..12, little-endian.
        let counter = 0x0102_0304_0506_0708u64;
        let mut high = SendCipher { key: aead_key(&key).unwrap(), counter };
        let mut frame = Vec::new();
        high.seal_frame(b"", &mut frame).unwrap();
        let mut receiver = RecvCipher { key: aead_key(&key).unwrap(), counter };
        assert_eq!(receiver.open_frame(&mut frame).unwrap(), b"");
        let mut plaintext = [0u8; FRAME_PLAINTEXT_SIZE];
        let tag = raw
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(unhex("000000000807060504030201")),
                Aad::empty(),
                &mut plaintext,
            )
            .unwrap();
        let mut expected = plaintext.to_vec();
        expected.extend_from_slice(tag.as_ref());
        let mut frame = Vec::new();
        SendCipher { key: aead_key(&key).unwrap(), counter }.seal_frame(b"", &mut frame).unwrap();
        assert_eq!(frame, expected);
    }

    #[test]
    fn nonce_exhaustion() {
        let key = [5u8; 32];
        let mut sender = SendCipher { key: aead_key(&key).unwrap(), counter: u64::MAX - 2 };
        let mut receiver = RecvCipher { key: aead_key(&key).unwrap(), counter: u64::MAX - 2 };
        let mut out = Vec::new();
        // Three frames need counters MAX-2, MAX-1, MAX: refused up front, nothing written.
        assert!(matches!(sender.seal(&[0; 2049], &mut out), Err(SecretError::NonceExhausted)));
        assert!(out.is_empty());
        sender.seal(&[1; 2048], &mut out).unwrap();
        assert_eq!(sender.frames_sent(), u64::MAX);
        assert!(matches!(sender.seal_frame(b"x", &mut out), Err(SecretError::NonceExhausted)));
        assert!(matches!(sender.seal(b"x", &mut out), Err(SecretError::NonceExhausted)));
        assert_eq!(out.len(), 2 * SEALED_FRAME_SIZE);

        for frame in out.chunks_mut(SEALED_FRAME_SIZE) {
            assert_eq!(receiver.open_frame(frame).unwrap(), [1; 1024]);
        }
        let mut another = vec![0; SEALED_FRAME_SIZE];
        assert!(matches!(receiver.open_frame(&mut another), Err(SecretError::NonceExhausted)));
    }

    #[test]
    fn parse_ephemeral_partial_and_trailing() {
        let message = Handshake::new(node_key(1)).ephemeral_message();
        for cut in 0..message.len() {
            assert!(parse_ephemeral(&message[..cut]).unwrap().is_none(), "cut {cut}");
        }
        let mut longer = message.to_vec();
        longer.extend_from_slice(&[0xaa; 100]);
        let (key, consumed) = parse_ephemeral(&longer).unwrap().unwrap();
        assert_eq!(consumed, 35);
        assert_eq!(key, message[3..]);
        // A non-minimal varint for 34 is still 34, as Go's reader accepts it.
        let mut padded = vec![0xa2, 0x00];
        padded.extend_from_slice(&message[1..]);
        assert_eq!(parse_ephemeral(&padded).unwrap().unwrap(), (key, 36));
    }

    #[test]
    fn parse_ephemeral_errors() {
        let message = Handshake::new(node_key(1)).ephemeral_message();
        let mut wrong_len = message.to_vec();
        wrong_len[0] = 0x21;
        assert!(matches!(
            parse_ephemeral(&wrong_len),
            Err(SecretError::EphemeralLength { len: 33 })
        ));
        // A wrong length is rejected before the body arrives.
        assert!(matches!(parse_ephemeral(&[0x00]), Err(SecretError::EphemeralLength { len: 0 })));

        let mut wrong_tag = message.to_vec();
        wrong_tag[1] = 0x12; // field 2
        assert!(matches!(parse_ephemeral(&wrong_tag), Err(SecretError::MalformedEphemeral)));
        let mut wrong_wire_type = message.to_vec();
        wrong_wire_type[1] = 0x08;
        assert!(matches!(parse_ephemeral(&wrong_wire_type), Err(SecretError::MalformedEphemeral)));

        // A 33-byte key: length 35, 0a 21 <33 bytes>.
        let mut long_key = vec![0x23, 0x0a, 0x21];
        long_key.extend_from_slice(&[4; 33]);
        assert!(matches!(
            parse_ephemeral(&long_key),
            Err(SecretError::EphemeralLength { len: 35 })
        ));
        // Same size, but the inner length says 33 and the body lies.
        let mut inner = message.to_vec();
        inner[2] = 0x21;
        assert!(matches!(parse_ephemeral(&inner), Err(SecretError::MalformedEphemeral)));

        // 1 MiB + 1: 0x100001 = 81 80 c0 00.
        let too_big = [0x81, 0x80, 0xc0, 0x00];
        let err = parse_ephemeral(&too_big).unwrap_err();
        assert!(matches!(err, SecretError::MessageTooLarge { len: 0x10_0001 }), "{err}");
        assert!(err.to_string().contains("exceeds max size"));
        assert!(parse_ephemeral(&[0xff; 11]).is_err());
        assert!(parse_ephemeral(&[0xff; 3]).is_err());
        let mut overlong = [0x80; 11];
        overlong[10] = 0x01;
        assert!(matches!(parse_ephemeral(&overlong), Err(SecretError::MalformedVarint)));
        let mut overflowing = [0x80; 10];
        overflowing[9] = 0x02;
        assert!(matches!(parse_ephemeral(&overflowing), Err(SecretError::MalformedVarint)));
        // An incomplete varint of zero-valued continuation bytes waits for more, up to 10 bytes.
        assert!(parse_ephemeral(&[0x80; 9]).unwrap().is_none());
        assert!(matches!(parse_ephemeral(&[0x80; 10]), Err(SecretError::MalformedVarint)));
    }

    #[test]
    fn finish_rejects_low_order_and_reflected() {
        let low_order = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        for point in low_order {
            let result = Handshake::new(node_key(1)).finish(unhex(point));
            assert!(matches!(result, Err(SecretError::LowOrderPoint)), "{point}");
        }
        let hs = Handshake::new(node_key(1));
        let own = hs.ephemeral_public;
        assert!(matches!(hs.finish(own), Err(SecretError::ReflectedEphemeral)));
    }

    #[test]
    fn read_peer_auth_errors() {
        let (a, b) = pair();
        let good = a.auth_message();
        let key = a.local_public.to_bytes().to_vec();
        let sig = a.signature.to_bytes().to_vec();
        assert!(b.read_peer_auth(&good).unwrap().is_some());

        let check = |bytes: &[u8], expected: fn(&SecretError) -> bool| {
            let err = b.read_peer_auth(bytes).unwrap_err();
            assert!(expected(&err), "unexpected error {err:?}");
        };
        let mut bad_sig = sig.clone();
        bad_sig[10] ^= 0x40;
        check(&auth_bytes(Some(Sum::Ed25519(key.clone())), bad_sig), |e| {
            matches!(e, SecretError::ChallengeVerification)
        });
        // Another key's valid signature over the same challenge.
        let other = node_key(0x33);
        let other_sig = other.sign(b.challenge()).to_bytes().to_vec();
        check(&auth_bytes(Some(Sum::Ed25519(key.clone())), other_sig.clone()), |e| {
            matches!(e, SecretError::ChallengeVerification)
        });
        let ok = auth_bytes(Some(Sum::Ed25519(other.verifying_key().to_bytes().into())), other_sig);
        assert_eq!(b.read_peer_auth(&ok).unwrap().unwrap().0, other.verifying_key());

        let mut secp = vec![0x02];
        secp.extend_from_slice(&[0x11; 32]);
        check(&auth_bytes(Some(Sum::Secp256k1(secp)), sig.clone()), |e| {
            matches!(e, SecretError::NotEd25519)
        });
        check(&auth_bytes(Some(Sum::Secp256k1(vec![2; 32])), sig.clone()), |e| {
            matches!(e, SecretError::Secp256k1KeySize { len: 32 })
        });
        check(&auth_bytes(None, sig.clone()), |e| matches!(e, SecretError::UnsupportedKeyType));
        let no_key = AuthSigMessage { pub_key: None, sig: sig.clone() };
        check(&no_key.encode_length_delimited_to_vec(), |e| {
            matches!(e, SecretError::UnsupportedKeyType)
        });
        check(&auth_bytes(Some(Sum::Ed25519(key[..31].to_vec())), sig.clone()), |e| {
            matches!(e, SecretError::Ed25519KeySize { len: 31 })
        });
        check(&auth_bytes(Some(Sum::Ed25519(key.clone())), sig[..63].to_vec()), |e| {
            matches!(e, SecretError::SignatureSize { len: 63 })
        });
        check(&auth_bytes(Some(Sum::Ed25519(key.clone())), vec![]), |e| {
            matches!(e, SecretError::SignatureSize { len: 0 })
        });
        let not_a_point = (0..=255u8)
            .map(|byte| [byte; 32])
            .find(|bytes| VerifyingKey::from_bytes(bytes).is_err())
            .unwrap();
        check(&auth_bytes(Some(Sum::Ed25519(not_a_point.to_vec())), sig.clone()), |e| {
            matches!(e, SecretError::InvalidPeerKey)
        });
        check(&[0x05, 0xff, 0xff, 0xff, 0xff, 0xff], |e| {
            matches!(e, SecretError::AuthSigDecode(_))
        });
        check(&[0x03, 0x0a, 0x05, 0x00], |e| matches!(e, SecretError::AuthSigDecode(_)));
        check(&[0x81, 0x80, 0xc0, 0x00], |e| matches!(e, SecretError::MessageTooLarge { .. }));
        check(&[0xff; 11], |e| matches!(e, SecretError::MessageTooLarge { .. }));
        assert!(b.read_peer_auth(&[]).unwrap().is_none());
        assert!(b.read_peer_auth(&[0x80, 0x80]).unwrap().is_none());
    }

    #[test]
    fn debug_hides_secrets() {
        let secret = [0xabu8; 32];
        let hs = Handshake::with_ephemeral_secret(node_key(0x11), secret);
        let debug = format!("{hs:?}");
        assert!(!debug.contains("171, 171, 171"), "{debug}");
        assert!(!debug.to_lowercase().contains(&hex::encode([0x11u8; 32])), "{debug}");
        assert!(!debug.contains("17, 17, 17"), "{debug}");
        let auth =
            hs.finish(unhex("5869aff450549732cbaaed5e5df9b30a6da31cb0e5742bad5ad4a1a768f1a67b"));
        let auth = auth.unwrap();
        let debug = format!("{auth:?}");
        let challenge: Vec<String> = auth.challenge().iter().map(u8::to_string).collect();
        assert!(!debug.contains(&challenge.join(", ")), "{debug}");
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = SmallRng::seed_from_u64(0x5ec2e7);
        let (a, b) = pair();
        let good_auth = a.auth_message();
        let good_eph = Handshake::new(node_key(9)).ephemeral_message();
        let (mut sender, mut receiver) = cipher_pair();
        let mut buf = vec![0u8; 2048];
        for case in 0..10_000 {
            // Random bytes.
            let len = rng.random_range(0..200);
            rng.fill(&mut buf[..len]);
            let _ = parse_ephemeral(&buf[..len]);
            let _ = b.read_peer_auth(&buf[..len]);

            // Mutated valid messages: a few flipped bytes, then a random cut.
            let mut eph = good_eph.to_vec();
            let mut auth = good_auth.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..eph.len());
                eph[i] = rng.random();
                let i = rng.random_range(0..auth.len());
                auth[i] = rng.random();
            }
            eph.truncate(rng.random_range(0..=eph.len()));
            auth.truncate(rng.random_range(0..=auth.len()));
            let _ = parse_ephemeral(&eph);
            if let Ok(Some((_, used))) = b.read_peer_auth(&auth) {
                assert!(used <= auth.len());
            }

            // Random frames: of random size, then sealed with a random chunk length.
            let len = if case % 2 == 0 { SEALED_FRAME_SIZE } else { rng.random_range(0..2048) };
            rng.fill(&mut buf[..len]);
            assert!(receiver.open_frame(&mut buf[..len]).is_err());
            let mut plaintext = [0u8; FRAME_PLAINTEXT_SIZE];
            rng.fill(&mut plaintext[..]);
            let chunk_len: u32 =
                if case % 3 == 0 { rng.random() } else { rng.random_range(0..1100) };
            plaintext[..4].copy_from_slice(&chunk_len.to_le_bytes());
            let mut frame = seal_raw(&mut sender, &plaintext);
            match receiver.open_frame(&mut frame) {
                Ok(payload) => assert_eq!(payload, &plaintext[4..4 + chunk_len as usize]),
                Err(err) => {
                    assert!(chunk_len > 1024, "{err}");
                    assert!(matches!(err, SecretError::ChunkLength { .. }));
                }
            }
        }
    }

    #[test]
    #[ignore = "benchmark: run with --release -- --ignored --nocapture"]
    fn seal_throughput() {
        const TOTAL: usize = 64 * 1024 * 1024;
        const BATCH: usize = 64 * 1024;
        let (mut sender, _) = cipher_pair();
        let data = vec![0x5a; BATCH];
        let mut out = Vec::with_capacity(BATCH / FRAME_DATA_SIZE * SEALED_FRAME_SIZE);
        let start = std::time::Instant::now();
        let mut sealed = 0;
        while sealed < TOTAL {
            out.clear();
            sender.seal(&data, &mut out).unwrap();
            std::hint::black_box(&out);
            sealed += BATCH;
        }
        let secs = start.elapsed().as_secs_f64();
        let mb = TOTAL as f64 / 1e6;
        println!(
            "seal: {} frames, {:.1} MB payload in {:.3} s = {:.1} MB/s payload ({:.1} MB/s on the wire)",
            sender.frames_sent(),
            mb,
            secs,
            mb / secs,
            mb * SEALED_FRAME_SIZE as f64 / FRAME_DATA_SIZE as f64 / secs
        );
    }
}
