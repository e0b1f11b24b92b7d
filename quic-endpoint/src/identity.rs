//! Node identity in the QUIC/TLS 1.3 handshake, using the libp2p TLS certificate scheme.
//!
//! Each side presents one self-signed certificate whose key is a throw-away key: ECDSA P-256 for
//! the libp2p ALPN (what go-libp2p presents), Ed25519 for the project's own protocols (cheaper
//! to verify); either is accepted from a peer.
//! The certificate carries the libp2p Public Key Extension (OID `1.3.6.1.4.1.53594.1.1`):
//!
//! ```text
//! SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }
//! ```
//!
//! where `publicKey` is the protobuf libp2p `PublicKey` of the node's ed25519 key
//! (`08 01 12 20 || pk`) and `signature` is the node key's ed25519 signature over
//! `"libp2p-tls-handshake:" || DER SubjectPublicKeyInfo of the certificate key`. A verified
//! certificate therefore proves the node key, from which the [`NodeId`] (and the libp2p peer
//! ID) is derived. There is no certificate authority and no host name check; the TLS 1.3
//! `CertificateVerify` proves possession of the certificate key.
//!
//! [`server_config`] and [`client_config`] build rustls configurations (TLS 1.3 only, mutual
//! authentication, no session resumption) with custom verifiers running
//! [`verify_certificate`]; on a dial the client also requires the peer's [`NodeId`] to equal the
//! dialled one. After the handshake, [`handshake_peer`] on the connection's peer certificates
//! gives the authenticated peer (and [`peer_node_id`] verifies the certificate again).

use std::fmt;
use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use p2p::{NodeId, NodeKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{SignatureScheme, SupportedProtocolVersion};
use x509_parser::asn1_rs::{FromDer as _, Sequence};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA,
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
    OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};

/// The OID of the libp2p Public Key Extension, as arcs.
pub const LIBP2P_EXTENSION_OID: [u64; 9] = [1, 3, 6, 1, 4, 1, 53594, 1, 1];

/// The prefix of the message the node key signs: `prefix || DER SPKI of the certificate key`.
pub const SIGNATURE_PREFIX: &[u8] = b"libp2p-tls-handshake:";

/// The ALPN protocol libp2p uses over QUIC.
pub const LIBP2P_ALPN: &[u8] = b"libp2p";

/// A dummy TLS server name for dialling. Verification ignores it, and the client configs
/// from [`client_config`] do not send SNI.
pub const DUMMY_SERVER_NAME: &str = "l";

/// The libp2p protobuf `KeyType` of ed25519 keys.
const KEY_TYPE_ED25519: u64 = 1;

/// Only TLS 1.3 is offered or accepted.
static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Extensions this implementation understands and so accepts even when marked critical.
/// (They carry no meaning for a self-signed libp2p certificate; they are ignored.)
const KNOWN_EXTENSIONS: [&x509_parser::der_parser::oid::Oid<'static>; 6] = [
    &OID_X509_EXT_BASIC_CONSTRAINTS,
    &OID_X509_EXT_KEY_USAGE,
    &OID_X509_EXT_EXTENDED_KEY_USAGE,
    &OID_X509_EXT_SUBJECT_ALT_NAME,
    &OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
    &OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
];

/// A peer authenticated by its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPeer {
    /// The peer's ed25519 node key.
    pub public_key: VerifyingKey,
    /// The peer's node ID, derived from `public_key`.
    pub node_id: NodeId,
}

impl VerifiedPeer {
    /// The peer's libp2p peer ID (`12D3KooW…`), see [`libp2p_peer_id`].
    pub fn libp2p_peer_id(&self) -> String {
        libp2p_peer_id(&self.public_key)
    }
}

/// Why a certificate was not generated or not accepted, or a TLS config not built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// rcgen failed to generate the certificate key or the certificate.
    #[error("generating the TLS certificate failed: {0}")]
    Generate(#[source] rcgen::Error),
    /// rustls rejected the configuration.
    #[error("building the TLS configuration failed: {0}")]
    Config(#[source] rustls::Error),
    /// The peer presented no certificate or more than one.
    #[error("peer presented {count} certificates; exactly one is required")]
    CertificateCount {
        /// The number of certificates presented.
        count: usize,
    },
    /// The certificate is not valid DER X.509.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// Bytes follow the certificate.
    #[error("{0} bytes of trailing data after the certificate")]
    TrailingData(usize),
    /// The signature algorithm is too weak (SHA-1) or differs between the certificate and its
    /// `tbsCertificate`.
    #[error("certificate signature algorithm {0} is not acceptable")]
    BadSignatureAlgorithm(String),
    /// An elliptic-curve key does not use the named-curve encoding.
    #[error("certificate elliptic-curve key does not use a named curve")]
    NotNamedCurve,
    /// The certificate has an `issuerUniqueID` or `subjectUniqueID`.
    #[error("certificate contains the deprecated issuerUniqueID/subjectUniqueID fields")]
    UniqueIdentifier,
    /// The self-signature does not verify with the certificate's own key.
    #[error("certificate self-signature is invalid: {0}")]
    BadSelfSignature(String),
    /// The time is before the certificate's `notBefore`.
    #[error("certificate is not valid before {not_before} (UNIX), now is {now}")]
    NotYetValid {
        /// `notBefore`, UNIX seconds.
        not_before: i64,
        /// The verification time, UNIX seconds.
        now: u64,
    },
    /// The time is after the certificate's `notAfter`.
    #[error("certificate expired at {not_after} (UNIX), now is {now}")]
    Expired {
        /// `notAfter`, UNIX seconds.
        not_after: i64,
        /// The verification time, UNIX seconds.
        now: u64,
    },
    /// The certificate has a critical extension this implementation does not understand.
    #[error("certificate has an unknown critical extension {oid}")]
    UnknownCriticalExtension {
        /// The extension's OID, dotted.
        oid: String,
    },
    /// The certificate has no libp2p Public Key Extension.
    #[error("certificate has no libp2p public key extension (1.3.6.1.4.1.53594.1.1)")]
    MissingExtension,
    /// The certificate has more than one libp2p Public Key Extension.
    #[error("certificate has more than one libp2p public key extension")]
    DuplicateExtension,
    /// The extension value is not a DER `SignedKey`.
    #[error("malformed libp2p SignedKey extension: {0}")]
    MalformedSignedKey(String),
    /// The `publicKey` field is not a valid protobuf libp2p `PublicKey`.
    #[error("malformed libp2p PublicKey: {0}")]
    MalformedPublicKey(&'static str),
    /// The host key is not ed25519 (libp2p `KeyType` 0 = RSA, 2 = secp256k1, 3 = ECDSA).
    #[error(
        "unsupported key type {key_type} in the libp2p public key; only ed25519 (type 1) is supported"
    )]
    UnsupportedKeyType {
        /// The libp2p `KeyType` number.
        key_type: u64,
    },
    /// The ed25519 host key is not 32 bytes or not a valid curve point.
    #[error("invalid ed25519 host key")]
    InvalidHostKey,
    /// The host key's signature over the certificate key does not verify.
    #[error("the host key signature over the certificate key is invalid")]
    BadHostSignature,
    /// The peer's node ID is not the one that was dialled.
    #[error("peer ID mismatch: dialled {expected}, but the peer proved {actual}")]
    PeerIdMismatch {
        /// The dialled node ID.
        expected: NodeId,
        /// The node ID the peer's certificate proves.
        actual: NodeId,
    },
}

/// The libp2p peer ID of an ed25519 key (`12D3KooW…`); see [`p2p::peer_id`].
pub fn libp2p_peer_id(key: &VerifyingKey) -> String {
    p2p::peer_id::libp2p_peer_id(key)
}

/// The protobuf libp2p `PublicKey { Type: Ed25519, Data: pk }` = `08 01 12 20 || pk`.
fn libp2p_public_key_protobuf(key: &VerifyingKey) -> Vec<u8> {
    p2p::peer_id::libp2p_public_key(key).to_vec()
}

/// A DER TLV with a short- or long-form length (up to 65535 bytes of content).
fn der_tlv(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
}

/// The DER `SignedKey` for `key` over the certificate key `spki`.
fn signed_key_der(key: &NodeKey, spki: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_PREFIX.len() + spki.len());
    message.extend_from_slice(SIGNATURE_PREFIX);
    message.extend_from_slice(spki);
    let signature = key.sign(&message);
    let mut fields = Vec::with_capacity(110);
    der_tlv(0x04, &libp2p_public_key_protobuf(&key.public_key()), &mut fields);
    der_tlv(0x04, &signature.to_bytes(), &mut fields);
    let mut out = Vec::with_capacity(fields.len() + 4);
    der_tlv(0x30, &fields, &mut out);
    out
}

/// The key type of the throw-away certificate key (the node key is always ed25519).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertificateKey {
    /// ECDSA P-256, certificate signed with ECDSA-SHA256: what go-libp2p presents, so what
    /// every libp2p implementation accepts. Used for the libp2p ALPN ([`LIBP2P_ALPN`]).
    EcdsaP256,
    /// Ed25519: about a third cheaper to verify than P-256 with ring (each handshake verifies
    /// the peer's self-signature and its `CertificateVerify`). Used for every other ALPN.
    Ed25519,
}

impl CertificateKey {
    /// The key type this module uses for `alpn`: P-256 for [`LIBP2P_ALPN`] (interoperable with
    /// go-libp2p as it is), Ed25519 for the project's own protocols.
    pub fn for_alpn(alpn: &[u8]) -> Self {
        if alpn == LIBP2P_ALPN { Self::EcdsaP256 } else { Self::Ed25519 }
    }

    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// A fresh self-signed libp2p TLS certificate for `key` and its private key (PKCS#8), with an
/// ECDSA P-256 certificate key ([`CertificateKey::EcdsaP256`], go-libp2p's choice); see
/// [`generate_certificate_with`].
pub fn generate_certificate(
    key: &NodeKey,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), IdentityError> {
    generate_certificate_with(key, CertificateKey::EcdsaP256)
}

/// A fresh self-signed libp2p TLS certificate for `key` and its private key (PKCS#8).
///
/// The certificate key is a new key of type `cert_key` that also signs the certificate
/// (ECDSA-SHA256 or Ed25519). It carries the libp2p Public Key Extension (not critical, like
/// go-libp2p) signed by `key`, a random positive serial number below 2^62, a subject consisting
/// of a random `serialNumber` attribute, `notBefore` one hour ago and `notAfter` in 100 years.
pub fn generate_certificate_with(
    key: &NodeKey,
    cert_key: CertificateKey,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), IdentityError> {
    use rcgen::PublicKeyData as _;

    let cert_key =
        rcgen::KeyPair::generate_for(cert_key.algorithm()).map_err(IdentityError::Generate)?;
    let extension = rcgen::CustomExtension::from_oid_content(
        &LIBP2P_EXTENSION_OID,
        signed_key_der(key, &cert_key.subject_public_key_info()),
    );

    let serial = (rand::random::<u64>() >> 2).max(1);
    let mut params = rcgen::CertificateParams::default();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial.to_be_bytes()));
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), rand::random::<u64>().to_string());
    params.distinguished_name = name;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(100 * 365 + 25);
    params.custom_extensions.push(extension);

    let cert = params.self_signed(&cert_key).map_err(IdentityError::Generate)?;
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert_key.serialize_der()));
    Ok((cert.der().clone(), private_key))
}

/// Verifies a peer's libp2p TLS certificate at time `now` and returns the peer it proves.
///
/// Checks, in order: DER X.509 without trailing data; a signature algorithm without SHA-1 that
/// matches the `tbsCertificate`'s; named-curve EC parameters; no unique identifiers; the
/// self-signature; the validity window; no unknown critical extension; exactly one libp2p
/// extension holding a DER `SignedKey` whose public key is a protobuf ed25519 key; the host
/// key's ed25519 signature over `"libp2p-tls-handshake:" || SPKI`.
///
/// The certificate is hostile input: every failure is an [`IdentityError`], never a panic.
pub fn verify_certificate(
    cert: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<VerifiedPeer, IdentityError> {
    let (rest, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::TrailingData(rest.len()));
    }

    // Signature algorithm and key encoding.
    let alg = &x509.signature_algorithm.algorithm;
    if *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA {
        return Err(IdentityError::BadSignatureAlgorithm(alg.to_id_string()));
    }
    if x509.signature_algorithm != x509.tbs_certificate.signature {
        return Err(IdentityError::BadSignatureAlgorithm(format!(
            "{} (tbsCertificate says {})",
            alg.to_id_string(),
            x509.tbs_certificate.signature.algorithm.to_id_string()
        )));
    }
    let spki = x509.public_key();
    if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki.algorithm.parameters.as_ref().is_none_or(|p| p.as_oid().is_err())
    {
        return Err(IdentityError::NotNamedCurve);
    }
    if x509.issuer_uid.is_some() || x509.subject_uid.is_some() {
        return Err(IdentityError::UniqueIdentifier);
    }
    x509.verify_signature(None).map_err(|e| IdentityError::BadSelfSignature(e.to_string()))?;

    // Validity window.
    let now_secs = now.as_secs();
    let not_before = x509.validity().not_before.timestamp();
    let not_after = x509.validity().not_after.timestamp();
    let now_i64 = i64::try_from(now_secs).unwrap_or(i64::MAX);
    if now_i64 < not_before {
        return Err(IdentityError::NotYetValid { not_before, now: now_secs });
    }
    if now_i64 > not_after {
        return Err(IdentityError::Expired { not_after, now: now_secs });
    }

    let (public_key, signature) = host_key_and_signature(&x509)?;
    let signature =
        Signature::from_slice(&signature).map_err(|_| IdentityError::BadHostSignature)?;
    let mut message = Vec::with_capacity(SIGNATURE_PREFIX.len() + spki.raw.len());
    message.extend_from_slice(SIGNATURE_PREFIX);
    message.extend_from_slice(spki.raw);
    public_key.verify_strict(&message, &signature).map_err(|_| IdentityError::BadHostSignature)?;

    Ok(VerifiedPeer { node_id: NodeId::from_public_key(&public_key), public_key })
}

/// The host key and its signature from the certificate's single libp2p extension, after
/// checking that no unknown extension is critical.
fn host_key_and_signature(
    x509: &X509Certificate<'_>,
) -> Result<(VerifyingKey, Vec<u8>), IdentityError> {
    let libp2p_oid = x509_parser::der_parser::oid::Oid::from(&LIBP2P_EXTENSION_OID)
        .map_err(|_| IdentityError::MissingExtension)?;
    let mut signed_key = None;
    for ext in x509.extensions() {
        if ext.oid == libp2p_oid {
            if signed_key.is_some() {
                return Err(IdentityError::DuplicateExtension);
            }
            signed_key = Some(ext.value);
        } else if ext.critical && !KNOWN_EXTENSIONS.iter().any(|known| **known == ext.oid) {
            return Err(IdentityError::UnknownCriticalExtension { oid: ext.oid.to_id_string() });
        }
    }
    let signed_key = signed_key.ok_or(IdentityError::MissingExtension)?;
    let (public_key_proto, signature) = decode_signed_key(signed_key)?;
    Ok((decode_ed25519_public_key(&public_key_proto)?, signature))
}

/// Decodes `SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }`.
fn decode_signed_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), IdentityError> {
    let malformed = |e: &dyn fmt::Display| IdentityError::MalformedSignedKey(e.to_string());
    let (rest, seq) = Sequence::from_der(der).map_err(|e| malformed(&e))?;
    if !rest.is_empty() {
        return Err(malformed(&"trailing data after the SEQUENCE"));
    }
    let content: &[u8] = &seq.content;
    let (content, public_key) = <&[u8]>::from_der(content).map_err(|e| malformed(&e))?;
    let (content, signature) = <&[u8]>::from_der(content).map_err(|e| malformed(&e))?;
    if !content.is_empty() {
        return Err(malformed(&"trailing data inside the SEQUENCE"));
    }
    Ok((public_key.to_vec(), signature.to_vec()))
}

/// Reads a protobuf varint (at most 10 bytes, no overflow).
fn read_varint(input: &mut &[u8]) -> Result<u64, IdentityError> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = input.split_first() else {
            return Err(IdentityError::MalformedPublicKey("truncated varint"));
        };
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(IdentityError::MalformedPublicKey("varint overflows 64 bits"));
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(IdentityError::MalformedPublicKey("varint longer than 10 bytes"))
}

/// Decodes the protobuf libp2p `PublicKey { required KeyType Type = 1; required bytes Data = 2 }`
/// and requires an ed25519 key. Unknown or repeated fields are rejected.
fn decode_ed25519_public_key(mut input: &[u8]) -> Result<VerifyingKey, IdentityError> {
    let mut key_type = None;
    let mut data: Option<&[u8]> = None;
    while !input.is_empty() {
        let tag = read_varint(&mut input)?;
        match (tag >> 3, tag & 7) {
            (1, 0) if key_type.is_none() => key_type = Some(read_varint(&mut input)?),
            (2, 2) if data.is_none() => {
                let len = usize::try_from(read_varint(&mut input)?)
                    .map_err(|_| IdentityError::MalformedPublicKey("length too large"))?;
                let Some((bytes, rest)) = input.split_at_checked(len) else {
                    return Err(IdentityError::MalformedPublicKey("truncated Data field"));
                };
                data = Some(bytes);
                input = rest;
            }
            (1 | 2, _) => {
                return Err(IdentityError::MalformedPublicKey("repeated or mistyped field"));
            }
            _ => return Err(IdentityError::MalformedPublicKey("unknown field")),
        }
    }
    let key_type = key_type.ok_or(IdentityError::MalformedPublicKey("missing Type field"))?;
    let data = data.ok_or(IdentityError::MalformedPublicKey("missing Data field"))?;
    if key_type != KEY_TYPE_ED25519 {
        return Err(IdentityError::UnsupportedKeyType { key_type });
    }
    let bytes: &[u8; 32] = data.try_into().map_err(|_| IdentityError::InvalidHostKey)?;
    VerifyingKey::from_bytes(bytes).map_err(|_| IdentityError::InvalidHostKey)
}

/// The authenticated peer of a finished handshake, from the connection's peer certificates
/// (`peer_certificates()` of a rustls or quinn connection).
///
/// Requires exactly one certificate and runs [`verify_certificate`] at the current time. The
/// handshake's verifiers already ran the same checks, so this only fails if the handshake did
/// not use the configs of this module or the certificate expired since.
pub fn peer_node_id(certs: &[CertificateDer<'_>]) -> Result<VerifiedPeer, IdentityError> {
    match certs {
        [cert] => verify_certificate(cert, UnixTime::now()),
        _ => Err(IdentityError::CertificateCount { count: certs.len() }),
    }
}

/// The peer of a finished handshake whose verifiers came from this module ([`server_config`],
/// [`client_config`] and their variants), from the connection's peer certificates.
///
/// Those verifiers already ran [`verify_certificate`] on this very certificate during the
/// handshake, so this only parses it and reads the host key from its libp2p extension: no
/// signature is checked again (that is [`peer_node_id`]). Requires exactly one certificate.
pub fn handshake_peer(certs: &[CertificateDer<'_>]) -> Result<VerifiedPeer, IdentityError> {
    let [cert] = certs else {
        return Err(IdentityError::CertificateCount { count: certs.len() });
    };
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let (public_key, _) = host_key_and_signature(&x509)?;
    Ok(VerifiedPeer { node_id: NodeId::from_public_key(&public_key), public_key })
}

/// The [`IdentityError`] inside a rustls error raised by this module's verifiers, if any.
pub fn identity_error(err: &rustls::Error) -> Option<&IdentityError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<IdentityError>()
        }
        _ => None,
    }
}

/// Wraps an [`IdentityError`] as a rustls certificate error.
fn to_rustls(err: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Verifies a certificate chain as presented in a handshake: exactly one certificate.
fn verify_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<VerifiedPeer, IdentityError> {
    if !intermediates.is_empty() {
        return Err(IdentityError::CertificateCount { count: 1 + intermediates.len() });
    }
    verify_certificate(end_entity, now)
}

/// The ring crypto provider, TLS 1.3 suites only, AES-128-GCM first.
///
/// rustls' default order puts AES-256-GCM-SHA384 first; AES-128-GCM-SHA256 (Go's first choice
/// on hardware with AES instructions, and QUIC's Initial suite) encrypts with 10 rounds instead
/// of 14 and runs its key schedule on SHA-256 (hardware SHA on current x86) instead of SHA-384.
/// ChaCha20-Poly1305 stays offered for peers without AES hardware.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The certificate the server presents: by the ALPN the client offers (see
/// [`CertificateKey::for_alpn`]); P-256 when it offers [`LIBP2P_ALPN`] or none.
#[derive(Debug)]
struct ByAlpn {
    p256: Option<Arc<rustls::sign::CertifiedKey>>,
    ed25519: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for ByAlpn {
    fn resolve(
        &self,
        client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let wants_ed25519 = client_hello.alpn().is_some_and(|mut offered| {
            offered.all(|alpn| CertificateKey::for_alpn(alpn) == CertificateKey::Ed25519)
        });
        let offers_ed25519 = client_hello.signature_schemes().contains(&SignatureScheme::ED25519);
        match (&self.p256, &self.ed25519) {
            (_, Some(ed)) if wants_ed25519 && offers_ed25519 => Some(Arc::clone(ed)),
            (Some(p256), _) => Some(Arc::clone(p256)),
            (None, ed) => ed.clone(),
        }
    }
}

/// A certificate for `key` with a `cert_key` key, loaded for rustls.
fn certified_key(
    key: &NodeKey,
    cert_key: CertificateKey,
    provider: &CryptoProvider,
) -> Result<Arc<rustls::sign::CertifiedKey>, IdentityError> {
    let (cert, private_key) = generate_certificate_with(key, cert_key)?;
    let certified = rustls::sign::CertifiedKey::from_der(vec![cert], private_key, provider)
        .map_err(IdentityError::Config)?;
    Ok(Arc::new(certified))
}

/// Checks the TLS 1.3 `CertificateVerify` signature with the provider's algorithms.
fn verify_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// Client-side verifier of the server's certificate.
struct ServerVerifier {
    provider: Arc<CryptoProvider>,
    expected: Option<NodeId>,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier").field("expected", &self.expected).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let peer = verify_chain(end_entity, intermediates, now).map_err(to_rustls)?;
        if let Some(expected) = self.expected
            && expected != peer.node_id
        {
            return Err(to_rustls(IdentityError::PeerIdMismatch {
                expected,
                actual: peer.node_id,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Server-side verifier of the client's certificate (mandatory).
struct ClientVerifier {
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_chain(end_entity, intermediates, now).map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls server config presenting a fresh certificate for `key` (see
/// [`generate_certificate_with`]): ECDSA P-256 to clients offering [`LIBP2P_ALPN`] (or no ALPN,
/// or no Ed25519 signatures), Ed25519 to clients of the other protocols
/// ([`CertificateKey::for_alpn`]).
///
/// TLS 1.3 only (ring provider); a client certificate is required and checked with
/// [`verify_certificate`] (inbound connections accept any node ID); no session tickets or
/// resumption, no early data. `alpn` is the single ALPN protocol offered (none if empty; use
/// [`LIBP2P_ALPN`] for libp2p compatibility).
pub fn server_config(key: &NodeKey, alpn: &[u8]) -> Result<rustls::ServerConfig, IdentityError> {
    let alpns: &[&[u8]] = if alpn.is_empty() { &[] } else { &[alpn] };
    server_config_for(key, alpns)
}

/// Like [`server_config`], offering several ALPN protocols (in order of preference): one
/// endpoint serving several protocols on one UDP port, each client naming the one it speaks.
pub fn server_config_for(
    key: &NodeKey,
    alpns: &[&[u8]],
) -> Result<rustls::ServerConfig, IdentityError> {
    let provider = provider();
    let needs = |kind| {
        alpns.is_empty() && kind == CertificateKey::EcdsaP256
            || alpns.iter().any(|a| CertificateKey::for_alpn(a) == kind)
    };
    let resolver = ByAlpn {
        p256: if needs(CertificateKey::EcdsaP256) {
            Some(certified_key(key, CertificateKey::EcdsaP256, &provider)?)
        } else {
            None
        },
        ed25519: if needs(CertificateKey::Ed25519) {
            Some(certified_key(key, CertificateKey::Ed25519, &provider)?)
        } else {
            None
        },
    };
    let verifier = Arc::new(ClientVerifier { provider: Arc::clone(&provider) });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)
        .map_err(IdentityError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.max_early_data_size = 0;
    Ok(config)
}

/// A rustls client config presenting a fresh certificate for `key` (see
/// [`generate_certificate_with`]), whose key type [`CertificateKey::for_alpn`] picks for
/// `alpn`.
///
/// TLS 1.3 only (ring provider); the server certificate is checked with
/// [`verify_certificate`] and, if `expected` is given (an outbound dial), its node ID must equal
/// `expected` ([`IdentityError::PeerIdMismatch`] otherwise, inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; see [`identity_error`]).
/// No SNI is sent (pass any name, e.g. [`DUMMY_SERVER_NAME`]); no resumption, no early data.
/// `alpn` is the single ALPN protocol offered (none if empty).
pub fn client_config(
    key: &NodeKey,
    alpn: &[u8],
    expected: Option<NodeId>,
) -> Result<rustls::ClientConfig, IdentityError> {
    let provider = provider();
    let (cert, private_key) = generate_certificate_with(key, CertificateKey::for_alpn(alpn))?;
    let verifier = Arc::new(ServerVerifier { provider: Arc::clone(&provider), expected });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)
        .map_err(IdentityError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], private_key)
        .map_err(IdentityError::Config)?;
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    config.enable_sni = false;
    config.enable_early_data = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_limits() {
        let mut max: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read_varint(&mut max).unwrap(), u64::MAX);
        let mut over: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(read_varint(&mut over).is_err());
        let mut long: &[u8] = &[0x80; 11];
        assert!(read_varint(&mut long).is_err());
        let mut truncated: &[u8] = &[0x80];
        assert!(read_varint(&mut truncated).is_err());
    }

    #[test]
    fn protobuf_public_key_variants() {
        let pk = NodeKey::from_seed([7; 32]).public_key();
        let good = libp2p_public_key_protobuf(&pk);
        assert_eq!(decode_ed25519_public_key(&good).unwrap(), pk);
        // Field order does not matter.
        let mut swapped = vec![0x12, 0x20];
        swapped.extend_from_slice(pk.as_bytes());
        swapped.extend_from_slice(&[0x08, 0x01]);
        assert_eq!(decode_ed25519_public_key(&swapped).unwrap(), pk);
        // Repeated, unknown, missing, truncated, wrong length, other key types.
        let mut repeated = good.clone();
        repeated.extend_from_slice(&[0x08, 0x01]);
        assert!(matches!(
            decode_ed25519_public_key(&repeated),
            Err(IdentityError::MalformedPublicKey(_))
        ));
        let mut unknown = good.clone();
        unknown.extend_from_slice(&[0x18, 0x01]);
        assert!(matches!(
            decode_ed25519_public_key(&unknown),
            Err(IdentityError::MalformedPublicKey(_))
        ));
        assert!(matches!(
            decode_ed25519_public_key(&good[2..]),
            Err(IdentityError::MalformedPublicKey(_))
        ));
        assert!(matches!(
            decode_ed25519_public_key(&good[..30]),
            Err(IdentityError::MalformedPublicKey(_))
        ));
        assert!(matches!(
            decode_ed25519_public_key(&[0x08, 0x01, 0x12, 0x01, 0x00]),
            Err(IdentityError::InvalidHostKey)
        ));
        let mut secp = good.clone();
        secp[1] = 2;
        assert!(matches!(
            decode_ed25519_public_key(&secp),
            Err(IdentityError::UnsupportedKeyType { key_type: 2 })
        ));
    }

    #[test]
    fn signed_key_round_trip() {
        let key = NodeKey::from_seed([9; 32]);
        let der = signed_key_der(&key, b"spki");
        let (pk, sig) = decode_signed_key(&der).unwrap();
        assert_eq!(pk, libp2p_public_key_protobuf(&key.public_key()));
        assert_eq!(sig.len(), 64);
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(decode_signed_key(&trailing), Err(IdentityError::MalformedSignedKey(_))));
        let mut long_content = vec![0u8; 300];
        long_content[0] = 1;
        let mut out = Vec::new();
        der_tlv(0x04, &long_content, &mut out);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}
