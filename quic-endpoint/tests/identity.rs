//! Tests of the libp2p TLS identity: certificate generation/verification, the libp2p spec's
//! test vectors, tampering, fuzzing, and in-memory rustls handshakes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use p2p::{NodeId, NodeKey};
use p2p_quic_endpoint::identity::{
    CertificateKey, DUMMY_SERVER_NAME, IdentityError, LIBP2P_ALPN, LIBP2P_EXTENSION_OID,
    SIGNATURE_PREFIX, client_config, generate_certificate, generate_certificate_with,
    handshake_peer, identity_error, libp2p_peer_id, peer_node_id, server_config, server_config_for,
    verify_certificate,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rcgen::PublicKeyData as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, ServerConnection};

fn now() -> UnixTime {
    UnixTime::now()
}

fn at(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

fn seed_key() -> NodeKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = i as u8;
    }
    NodeKey::from_seed(seed)
}

// ---------------------------------------------------------------------------------------------
// Round trip and identity vectors
// ---------------------------------------------------------------------------------------------

#[test]
fn round_trip_seed_vector() {
    let key = seed_key();
    assert_eq!(
        hex::encode(key.public_key().as_bytes()),
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    );
    let (cert, _private) = generate_certificate(&key).unwrap();
    let peer = verify_certificate(&cert, now()).unwrap();
    assert_eq!(peer.public_key, key.public_key());
    assert_eq!(peer.node_id, key.node_id());
    assert_eq!(peer.node_id.to_string(), "56475aa75463474c0285df5dbf2bcab73da65135");
    assert_eq!(peer.libp2p_peer_id(), "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB");
    assert_eq!(
        libp2p_peer_id(&key.public_key()),
        "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
    );
    assert_eq!(peer_node_id(std::slice::from_ref(&cert)).unwrap(), peer);
}

#[test]
fn generated_certificate_shape() {
    use x509_parser::prelude::*;
    let key = NodeKey::generate();
    let (cert, _) = generate_certificate(&key).unwrap();
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).unwrap();
    assert_eq!(x509.version(), X509Version::V3);
    assert_eq!(x509.signature_algorithm.algorithm.to_id_string(), "1.2.840.10045.4.3.2");
    assert_eq!(x509.public_key().algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1");
    assert_eq!(
        x509.public_key().algorithm.parameters.as_ref().unwrap().as_oid().unwrap().to_id_string(),
        "1.2.840.10045.3.1.7"
    );
    // Positive, non-zero serial below 2^62.
    let serial = x509.tbs_certificate.serial.clone();
    assert!(serial > 0u32.into() && serial < (1u64 << 62).into(), "{serial}");
    // notBefore one hour back, notAfter far in the future.
    let now_secs = now().as_secs() as i64;
    let not_before = x509.validity().not_before.timestamp();
    assert!((now_secs - 3600 - not_before).abs() < 120, "{not_before} vs {now_secs}");
    assert!(x509.validity().not_after.timestamp() > now_secs + 90 * 365 * 86400);
    // Exactly the libp2p extension, not critical.
    let exts = x509.extensions();
    assert_eq!(exts.len(), 1);
    assert_eq!(exts[0].oid.to_id_string(), "1.3.6.1.4.1.53594.1.1");
    assert!(!exts[0].critical);
    // Two certificates for the same key differ (fresh certificate key and serial).
    let (cert2, _) = generate_certificate(&key).unwrap();
    assert_ne!(cert, cert2);
    assert_eq!(verify_certificate(&cert2, now()).unwrap().node_id, key.node_id());
}

// ---------------------------------------------------------------------------------------------
// libp2p spec (tls/tls.md) test vectors
// ---------------------------------------------------------------------------------------------

const SPEC_ED25519: &str = "308201ae30820156a0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea37c307a3078060a2b0601040183a25a0101046a3068042408011220a77f1d92fedb59dddaea5a1c4abd1ac2fbde7d7b879ed364501809923d7c11b90440d90d2769db992d5e6195dbb08e706b6651e024fda6cfb8846694a435519941cac215a8207792e42849cccc6cd8136c6e4bde92a58c5e08cfd4206eb5fe0bf909300a06082a8648ce3d0403020346003043021f50f6b6c52711a881778718238f650c9fb48943ae6ee6d28427dc6071ae55e702203625f116a7a454db9c56986c82a25682f7248ea1cb764d322ea983ed36a31b77";
const SPEC_ECDSA: &str = "308201f63082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea381c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004bf30511f909414ebdd3242178fd290f093a551cf75c973155de0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3dd72a801980d205e8a1ad29f2044730450220064ea8124774caf8f50e57f436aa62350ce652418c019df5d98a3ac666c9386a022100aa59d704a931b5f72fb9222cb6cc51f954d04a4e2e5450f8805fe8918f71eaae300a06082a8648ce3d04030203470030440220799395b0b6c1e940a7e4484705f610ab51ed376f19ff9d7c16757cfbf61b8d4302206205c03fbb0f95205c779be86581d3e31c01871ad5d1f3435bcf375cb0e5088a";
const SPEC_SECP256K1: &str = "308201ba3082015fa0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea38184308181307f060a2b0601040183a25a01010471306f0425080212210206dc6968726765b820f050263ececf7f71e4955892776c0970542efd689d2382044630440220145e15a991961f0d08cd15425bb95ec93f6ffa03c5a385eedc34ecf464c7a8ab022026b3109b8a3f40ef833169777eb2aa337cfb6282f188de0666d1bcec2a4690dd300a06082a8648ce3d0403020349003046022100e1a217eeef9ec9204b3f774a08b70849646b6a1e6b8b27f93dc00ed58545d9fe022100b00dafa549d0f03547878338c7b15e7502888f6d45db387e5ae6b5d46899cef0";
const SPEC_INVALID: &str = "308201f73082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea381c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004bf30511f909414ebdd3242178fd290f093a551cf75c973155de0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3dd72a801980d205e8a1ad29f204473045022100bb6e03577b7cc7a3cd1558df0da2b117dfdcc0399bc2504ebe7de6f65cade72802206de96e2a5be9b6202adba24ee0362e490641ac45c240db71fe955f2c5cf8df6e300a06082a8648ce3d0403020348003045022100e847f267f43717358f850355bdcabbefb2cfbf8a3c043b203a14788a092fe8db022027c1d04a2d41fd6b57a7e8b3989e470325de4406e52e084e34a3fd56eef0d0df";

fn spec_cert(hex_der: &str) -> CertificateDer<'static> {
    CertificateDer::from(hex::decode(hex_der).unwrap())
}

#[test]
fn spec_vector_ed25519() {
    let peer = verify_certificate(&spec_cert(SPEC_ED25519), now()).unwrap();
    assert_eq!(peer.libp2p_peer_id(), "12D3KooWM6CgA9iBFZmcYAHA6A2qvbAxqfkmrYiRQuz3XEsk4Ksv");
    assert_eq!(
        hex::encode(peer.public_key.as_bytes()),
        "a77f1d92fedb59dddaea5a1c4abd1ac2fbde7d7b879ed364501809923d7c11b9"
    );
    assert_eq!(peer.node_id, NodeId::from_public_key(&peer.public_key));
    // The vector is valid from 1975 to 4096.
    assert!(matches!(
        verify_certificate(&spec_cert(SPEC_ED25519), at(0)),
        Err(IdentityError::NotYetValid { .. })
    ));
}

#[test]
fn spec_vectors_other_key_types_are_unsupported() {
    for (vector, key_type) in [(SPEC_ECDSA, 3), (SPEC_SECP256K1, 2)] {
        let e = verify_certificate(&spec_cert(vector), now()).unwrap_err();
        assert!(
            matches!(e, IdentityError::UnsupportedKeyType { key_type: k } if k == key_type),
            "{e:?}"
        );
        assert!(e.to_string().contains("unsupported key type"), "{e}");
    }
}

#[test]
fn spec_vector_invalid_is_rejected() {
    assert!(verify_certificate(&spec_cert(SPEC_INVALID), now()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Hand-built certificates (rcgen) for tampering tests
// ---------------------------------------------------------------------------------------------

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    assert!(content.len() < 128);
    let mut out = vec![tag, content.len() as u8];
    out.extend_from_slice(content);
    out
}

fn signed_key(public_key_proto: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut fields = der_tlv(0x04, public_key_proto);
    fields.extend(der_tlv(0x04, signature));
    der_tlv(0x30, &fields)
}

fn proto(key: &NodeKey) -> Vec<u8> {
    let mut out = vec![0x08, 0x01, 0x12, 0x20];
    out.extend_from_slice(key.public_key().as_bytes());
    out
}

fn host_signature(key: &NodeKey, spki: &[u8]) -> Vec<u8> {
    let mut msg = SIGNATURE_PREFIX.to_vec();
    msg.extend_from_slice(spki);
    key.sign(&msg).to_bytes().to_vec()
}

/// Builds the libp2p extension content from the certificate key's SPKI (or omits it).
type ExtensionFn = Box<dyn Fn(&[u8]) -> Option<Vec<u8>>>;

/// A predicate on an error.
type ErrorCheck = fn(&IdentityError) -> bool;

struct Spec {
    alg: &'static rcgen::SignatureAlgorithm,
    /// Given the certificate key's SPKI, the libp2p extension content (or none).
    extension: ExtensionFn,
    critical: bool,
    extra: Vec<rcgen::CustomExtension>,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
}

impl Spec {
    fn new(key: NodeKey) -> Self {
        Self {
            alg: &rcgen::PKCS_ECDSA_P256_SHA256,
            extension: Box::new(move |spki| {
                Some(signed_key(&proto(&key), &host_signature(&key, spki)))
            }),
            critical: false,
            extra: Vec::new(),
            not_before: time::OffsetDateTime::now_utc() - time::Duration::hours(1),
            not_after: time::OffsetDateTime::now_utc() + time::Duration::days(1),
        }
    }

    fn build(self) -> CertificateDer<'static> {
        let cert_key = rcgen::KeyPair::generate_for(self.alg).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x12, 0x34]));
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        if let Some(content) = (self.extension)(&cert_key.subject_public_key_info()) {
            let mut ext = rcgen::CustomExtension::from_oid_content(&LIBP2P_EXTENSION_OID, content);
            ext.set_criticality(self.critical);
            params.custom_extensions.push(ext);
        }
        params.custom_extensions.extend(self.extra);
        params.self_signed(&cert_key).unwrap().der().clone()
    }
}

#[test]
fn hand_built_valid_certificates() {
    let key = NodeKey::generate();
    // Baseline.
    let cert = Spec::new(key.clone()).build();
    assert_eq!(verify_certificate(&cert, now()).unwrap().node_id, key.node_id());
    // The extension may be critical.
    let mut spec = Spec::new(key.clone());
    spec.critical = true;
    assert_eq!(verify_certificate(&spec.build(), now()).unwrap().node_id, key.node_id());
    // Unknown non-critical extensions are ignored.
    let mut spec = Spec::new(key.clone());
    spec.extra.push(rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![0x05, 0x00]));
    assert_eq!(verify_certificate(&spec.build(), now()).unwrap().node_id, key.node_id());
    // Other certificate key types work too (ed25519, P-384).
    for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let mut spec = Spec::new(key.clone());
        spec.alg = alg;
        assert_eq!(verify_certificate(&spec.build(), now()).unwrap().node_id, key.node_id());
    }
}

#[test]
fn tampered_host_signature() {
    let key = NodeKey::generate();
    let mut spec = Spec::new(key.clone());
    let k = key.clone();
    spec.extension = Box::new(move |spki| {
        let mut sig = host_signature(&k, spki);
        sig[10] ^= 0x01;
        Some(signed_key(&proto(&k), &sig))
    });
    let e = verify_certificate(&spec.build(), now()).unwrap_err();
    assert!(matches!(e, IdentityError::BadHostSignature), "{e:?}");
}

#[test]
fn swapped_host_key() {
    let key = NodeKey::generate();
    let other = NodeKey::generate();
    let mut spec = Spec::new(key.clone());
    spec.extension =
        Box::new(move |spki| Some(signed_key(&proto(&other), &host_signature(&key, spki))));
    let e = verify_certificate(&spec.build(), now()).unwrap_err();
    assert!(matches!(e, IdentityError::BadHostSignature), "{e:?}");
}

#[test]
fn signature_over_another_certificate_key() {
    let key = NodeKey::generate();
    let mut spec = Spec::new(key.clone());
    let other_spki = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .subject_public_key_info();
    spec.extension =
        Box::new(move |_spki| Some(signed_key(&proto(&key), &host_signature(&key, &other_spki))));
    let e = verify_certificate(&spec.build(), now()).unwrap_err();
    assert!(matches!(e, IdentityError::BadHostSignature), "{e:?}");
}

#[test]
fn malformed_extension_contents() {
    let key = NodeKey::generate();
    let cases: Vec<(Vec<u8>, ErrorCheck)> = vec![
        (vec![], |e| matches!(e, IdentityError::MalformedSignedKey(_))),
        (vec![0x30, 0x00], |e| matches!(e, IdentityError::MalformedSignedKey(_))),
        (der_tlv(0x30, &der_tlv(0x04, &[1, 2])), |e| {
            matches!(e, IdentityError::MalformedSignedKey(_))
        }),
        // BIT STRINGs instead of OCTET STRINGs.
        (der_tlv(0x30, &[der_tlv(0x03, &[0, 1]), der_tlv(0x03, &[0, 1])].concat()), |e| {
            matches!(e, IdentityError::MalformedSignedKey(_))
        }),
        (signed_key(&[0xff], &[0; 64]), |e| matches!(e, IdentityError::MalformedPublicKey(_))),
        (signed_key(&[0x08, 0x00, 0x12, 0x01, 0x00], &[0; 64]), |e| {
            matches!(e, IdentityError::UnsupportedKeyType { key_type: 0 })
        }),
        (signed_key(&proto(&key), &[0; 63]), |e| matches!(e, IdentityError::BadHostSignature)),
        (signed_key(&proto(&key), &[0; 64]), |e| matches!(e, IdentityError::BadHostSignature)),
    ];
    for (content, check) in cases {
        let mut spec = Spec::new(key.clone());
        let c = content.clone();
        spec.extension = Box::new(move |_| Some(c.clone()));
        let e = verify_certificate(&spec.build(), now()).unwrap_err();
        assert!(check(&e), "{content:02x?}: {e:?}");
    }
}

#[test]
fn missing_or_duplicate_extension() {
    let key = NodeKey::generate();
    let mut spec = Spec::new(key.clone());
    spec.extension = Box::new(|_| None);
    let e = verify_certificate(&spec.build(), now()).unwrap_err();
    assert!(matches!(e, IdentityError::MissingExtension), "{e:?}");

    let mut spec = Spec::new(key.clone());
    spec.extra.push(rcgen::CustomExtension::from_oid_content(
        &LIBP2P_EXTENSION_OID,
        signed_key(&proto(&key), &[0; 64]),
    ));
    let e = verify_certificate(&spec.build(), now()).unwrap_err();
    assert!(matches!(e, IdentityError::DuplicateExtension | IdentityError::Malformed(_)), "{e:?}");
}

#[test]
fn unknown_critical_extension() {
    let key = NodeKey::generate();
    let mut spec = Spec::new(key);
    let mut ext = rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4, 5], vec![0x05, 0x00]);
    ext.set_criticality(true);
    spec.extra.push(ext);
    let e = verify_certificate(&spec.build(), now()).unwrap_err();
    assert!(
        matches!(&e, IdentityError::UnknownCriticalExtension { oid } if oid == "1.2.3.4.5"),
        "{e:?}"
    );
}

#[test]
fn validity_window() {
    let key = NodeKey::generate();
    let mut spec = Spec::new(key.clone());
    spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let e = verify_certificate(&spec.build(), now()).unwrap_err();
    assert!(matches!(e, IdentityError::Expired { .. }), "{e:?}");
    assert!(e.to_string().contains("expired"));

    let mut spec = Spec::new(key.clone());
    spec.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    spec.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let e = verify_certificate(&spec.build(), now()).unwrap_err();
    assert!(matches!(e, IdentityError::NotYetValid { .. }), "{e:?}");

    // A generated certificate: valid from an hour ago, not two hours ago.
    let (cert, _) = generate_certificate(&key).unwrap();
    let now_secs = now().as_secs();
    assert!(verify_certificate(&cert, at(now_secs - 3500)).is_ok());
    assert!(matches!(
        verify_certificate(&cert, at(now_secs - 7200)),
        Err(IdentityError::NotYetValid { .. })
    ));
    assert!(matches!(
        verify_certificate(&cert, at(now_secs + 200 * 365 * 86400)),
        Err(IdentityError::Expired { .. })
    ));
}

#[test]
fn tampered_der_bytes() {
    let (cert, _) = generate_certificate(&NodeKey::generate()).unwrap();
    let der = cert.as_ref().to_vec();

    // Garbage and truncation.
    for garbage in [vec![], vec![0x30], vec![0x30, 0x82, 0xff, 0xff], b"not a certificate".to_vec()]
    {
        let e = verify_certificate(&CertificateDer::from(garbage.clone()), now()).unwrap_err();
        assert!(matches!(e, IdentityError::Malformed(_)), "{garbage:02x?}: {e:?}");
    }
    let e = verify_certificate(&CertificateDer::from(der[..der.len() - 1].to_vec()), now())
        .unwrap_err();
    assert!(matches!(e, IdentityError::Malformed(_)), "{e:?}");

    // Trailing data.
    let mut trailing = der.clone();
    trailing.push(0);
    let e = verify_certificate(&CertificateDer::from(trailing), now()).unwrap_err();
    assert!(matches!(e, IdentityError::TrailingData(1)), "{e:?}");

    // Flipping a byte of the host signature inside the extension breaks the self-signature.
    let mut flipped = der.clone();
    let prefix = [0x04, 0x40];
    let pos = flipped.windows(2).rposition(|w| w == prefix).unwrap() + 2 + 5;
    flipped[pos] ^= 0x80;
    let e = verify_certificate(&CertificateDer::from(flipped), now()).unwrap_err();
    assert!(matches!(e, IdentityError::BadSelfSignature(_)), "{e:?}");
}

#[test]
fn random_mutations_never_panic() {
    let key = NodeKey::from_seed([0x42; 32]);
    let (cert, _) = generate_certificate(&key).unwrap();
    let der = cert.as_ref().to_vec();
    let mut rng = SmallRng::seed_from_u64(0x5eed_1234);
    let mut accepted = 0usize;
    for _ in 0..10_000 {
        let mut m = der.clone();
        match rng.random_range(0..5) {
            0 => {
                let i = rng.random_range(0..m.len());
                m[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..m.len());
                    m[i] = rng.random();
                }
            }
            2 => m.truncate(rng.random_range(0..m.len())),
            3 => {
                let i = rng.random_range(0..=m.len());
                m.insert(i, rng.random());
            }
            _ => {
                let i = rng.random_range(0..m.len());
                m.remove(i);
            }
        }
        if let Ok(peer) = verify_certificate(&CertificateDer::from(m), now()) {
            // Whatever survives must still prove the same key.
            assert_eq!(peer.node_id, key.node_id());
            accepted += 1;
        }
    }
    assert!(accepted < 100, "{accepted} mutations accepted");
}

#[test]
fn peer_node_id_requires_exactly_one_certificate() {
    let (cert, _) = generate_certificate(&NodeKey::generate()).unwrap();
    assert!(matches!(peer_node_id(&[]), Err(IdentityError::CertificateCount { count: 0 })));
    assert!(matches!(
        peer_node_id(&[cert.clone(), cert]),
        Err(IdentityError::CertificateCount { count: 2 })
    ));
}

// ---------------------------------------------------------------------------------------------
// In-memory TLS 1.3 handshakes
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Side {
    Client,
    Server,
}

/// Drives a handshake by copying bytes between the two connections.
fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), (Side, rustls::Error)> {
    for _ in 0..20 {
        let mut progressed = false;
        while client.wants_write() {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().map_err(|e| (Side::Server, e))?;
            }
        }
        while server.wants_write() {
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().map_err(|e| (Side::Client, e))?;
            }
        }
        if !progressed && !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn connect(
    client_key: &NodeKey,
    server_key: &NodeKey,
    expected: Option<NodeId>,
) -> (ClientConnection, ServerConnection, Result<(), (Side, rustls::Error)>) {
    let client_cfg = client_config(client_key, LIBP2P_ALPN, expected).unwrap();
    let server_cfg = server_config(server_key, LIBP2P_ALPN).unwrap();
    let mut client = ClientConnection::new(
        Arc::new(client_cfg),
        ServerName::try_from(DUMMY_SERVER_NAME).unwrap(),
    )
    .unwrap();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let result = handshake(&mut client, &mut server);
    (client, server, result)
}

#[test]
fn handshake_with_expected_node_id() {
    let client_key = NodeKey::generate();
    let server_key = NodeKey::generate();
    let (client, server, result) = connect(&client_key, &server_key, Some(server_key.node_id()));
    result.unwrap();
    assert_eq!(client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(client.alpn_protocol(), Some(LIBP2P_ALPN));
    assert_eq!(server.alpn_protocol(), Some(LIBP2P_ALPN));
    // No SNI was sent.
    assert_eq!(server.server_name(), None);
    let server_peer = peer_node_id(client.peer_certificates().unwrap()).unwrap();
    assert_eq!(server_peer.node_id, server_key.node_id());
    assert_eq!(server_peer.public_key, server_key.public_key());
    let client_peer = peer_node_id(server.peer_certificates().unwrap()).unwrap();
    assert_eq!(client_peer.node_id, client_key.node_id());
}

#[test]
fn handshake_without_expectation_accepts_any_peer() {
    let client_key = NodeKey::generate();
    let server_key = NodeKey::generate();
    let (client, server, result) = connect(&client_key, &server_key, None);
    result.unwrap();
    assert_eq!(
        peer_node_id(client.peer_certificates().unwrap()).unwrap().node_id,
        server_key.node_id()
    );
    assert_eq!(
        peer_node_id(server.peer_certificates().unwrap()).unwrap().node_id,
        client_key.node_id()
    );
}

#[test]
fn handshake_with_wrong_expected_node_id_fails() {
    let client_key = NodeKey::generate();
    let server_key = NodeKey::generate();
    let wrong = NodeKey::generate().node_id();
    let (_, _, result) = connect(&client_key, &server_key, Some(wrong));
    let (side, err) = result.unwrap_err();
    assert!(matches!(side, Side::Client), "{side:?}: {err}");
    let identity = identity_error(&err).unwrap_or_else(|| panic!("not an identity error: {err:?}"));
    assert!(
        matches!(identity, IdentityError::PeerIdMismatch { expected, actual }
            if *expected == wrong && *actual == server_key.node_id()),
        "{identity:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&wrong.to_string()), "{msg}");
    assert!(msg.contains(&server_key.node_id().to_string()), "{msg}");
}

/// A client-side verifier that accepts any server certificate (for a client without a
/// certificate of its own).
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[test]
fn handshake_without_client_certificate_fails() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client_cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    client_cfg.alpn_protocols = vec![LIBP2P_ALPN.to_vec()];
    let server_cfg = server_config(&NodeKey::generate(), LIBP2P_ALPN).unwrap();
    let mut client =
        ClientConnection::new(Arc::new(client_cfg), ServerName::try_from("l").unwrap()).unwrap();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let (side, err) = handshake(&mut client, &mut server).unwrap_err();
    assert!(matches!(side, Side::Server), "{side:?}: {err}");
    assert!(matches!(err, rustls::Error::NoCertificatesPresented), "{err:?}");
}

#[test]
fn handshake_rejects_foreign_client_certificate() {
    // A client presenting an ordinary certificate without the libp2p extension is rejected by
    // the server.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::default().self_signed(&cert_key).unwrap();
    let private_key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert_key.serialize_der().into());
    let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_client_auth_cert(vec![cert.der().clone()], private_key)
        .unwrap();
    let server_cfg = server_config(&NodeKey::generate(), b"").unwrap();
    let mut client =
        ClientConnection::new(Arc::new(client_cfg), ServerName::try_from("l").unwrap()).unwrap();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let (side, err) = handshake(&mut client, &mut server).unwrap_err();
    assert!(matches!(side, Side::Server), "{side:?}: {err}");
    assert!(matches!(identity_error(&err), Some(IdentityError::MissingExtension)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Certificate key types
// ---------------------------------------------------------------------------------------------

/// DER of the Ed25519 algorithm OID (1.3.101.112) and of the P-256 curve OID (1.2.840.10045.3.1.7).
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn ed25519_certificate_verifies_and_its_tampering_does_not() {
    let key = NodeKey::generate();
    let (cert, _) = generate_certificate_with(&key, CertificateKey::Ed25519).unwrap();
    assert!(contains(cert.as_ref(), OID_ED25519) && !contains(cert.as_ref(), OID_P256));
    assert_eq!(verify_certificate(&cert, now()).unwrap().node_id, key.node_id());
    // The self-signature is the last 64 bytes of the DER.
    let mut der = cert.as_ref().to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    let e = verify_certificate(&CertificateDer::from(der), now()).unwrap_err();
    assert!(matches!(e, IdentityError::BadSelfSignature(_)), "{e:?}");
    // The default stays P-256 (go-libp2p's choice).
    let (p256, _) = generate_certificate(&key).unwrap();
    assert!(contains(p256.as_ref(), OID_P256) && !contains(p256.as_ref(), OID_ED25519));
    assert_eq!(CertificateKey::for_alpn(LIBP2P_ALPN), CertificateKey::EcdsaP256);
    assert_eq!(CertificateKey::for_alpn(b"p2p-quic/1"), CertificateKey::Ed25519);
}

#[test]
fn handshake_peer_reads_the_host_key_without_verifying_again() {
    let key = NodeKey::generate();
    let (cert, _) = generate_certificate_with(&key, CertificateKey::Ed25519).unwrap();
    let verified = peer_node_id(std::slice::from_ref(&cert)).unwrap();
    assert_eq!(handshake_peer(std::slice::from_ref(&cert)).unwrap(), verified);
    // A broken self-signature is what the handshake's verifier rejects; handshake_peer, which
    // runs after a verifier accepted the certificate, does not check it again.
    let mut der = cert.as_ref().to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    let broken = [CertificateDer::from(der)];
    assert!(peer_node_id(&broken).is_err());
    assert_eq!(handshake_peer(&broken).unwrap(), verified);
    // Structure is still checked.
    assert!(matches!(handshake_peer(&[]), Err(IdentityError::CertificateCount { count: 0 })));
    let foreign_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let foreign = rcgen::CertificateParams::default().self_signed(&foreign_key).unwrap();
    assert!(matches!(
        handshake_peer(&[foreign.der().clone()]),
        Err(IdentityError::MissingExtension)
    ));
}

#[test]
fn server_presents_the_certificate_key_of_the_alpn_the_client_offers() {
    let server_key = NodeKey::generate();
    let native: &[u8] = b"p2p-quic/1";
    let server_cfg = Arc::new(server_config_for(&server_key, &[LIBP2P_ALPN, native]).unwrap());
    for (alpn, oid) in [(LIBP2P_ALPN, OID_P256), (native, OID_ED25519)] {
        let client_key = NodeKey::generate();
        let client_cfg = client_config(&client_key, alpn, Some(server_key.node_id())).unwrap();
        let mut client = ClientConnection::new(
            Arc::new(client_cfg),
            ServerName::try_from(DUMMY_SERVER_NAME).unwrap(),
        )
        .unwrap();
        let mut server = ServerConnection::new(Arc::clone(&server_cfg)).unwrap();
        handshake(&mut client, &mut server).unwrap();
        assert_eq!(server.alpn_protocol(), Some(alpn));
        let server_cert = &client.peer_certificates().unwrap()[0];
        let client_cert = &server.peer_certificates().unwrap()[0];
        assert!(contains(server_cert.as_ref(), oid), "{alpn:?}: server certificate key");
        assert!(contains(client_cert.as_ref(), oid), "{alpn:?}: client certificate key");
        assert_eq!(
            handshake_peer(client.peer_certificates().unwrap()).unwrap().node_id,
            server_key.node_id()
        );
        assert_eq!(
            handshake_peer(server.peer_certificates().unwrap()).unwrap().node_id,
            client_key.node_id()
        );
        // AES-128-GCM is negotiated first.
        assert_eq!(
            client.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}
