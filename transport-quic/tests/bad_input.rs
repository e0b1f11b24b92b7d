//! A hostile peer against the QUIC transport, end to end over loopback UDP: every bad input ends
//! in a typed error (and, where the protocol says so, a `CONNECTION_CLOSE` with the matching
//! application error code), never a panic, a hang or an unbounded buffer; and the victim keeps
//! serving honest peers afterwards.
//!
//! The evil peer is raw quinn + rustls (+ rcgen for hand-made certificates) speaking
//! `p2p-quic/1` by hand, then misbehaving in one way per test. Checks that live in the router
//! (the dialled ID, the network) run against a `Router` with a `QuicTransport`; the router only
//! logs its typed errors, so those tests read them from a capturing `tracing` subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use p2p::mempool::{MEMPOOL_CHANNEL, Txs, mempool_channel_descriptor};
use p2p::router::ChannelDescriptor;
use p2p::{
    ChannelId, Connection, ConnectionError, Endpoint, HandshakeError, MAX_NODE_INFO_SIZE,
    NodeAddress, NodeInfo, NodeInfoError, NodeKey, PeerManagerConfig, PeerStatus, PeerUpdates,
    Protocol, Router, RouterConfig, Transport as _,
};
use p2p_transport_quic::identity::{IdentityError, LIBP2P_EXTENSION_OID, SIGNATURE_PREFIX};
use p2p_transport_quic::{QUIC_ALPN, QuicConfig, QuicTransport, error_code};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::PublicKeyData as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Failure bound of every wait (never reached when the code under test is right).
const T: Duration = Duration::from_secs(10);
/// The victim's channel with a small limit.
const SMALL: ChannelId = MEMPOOL_CHANNEL;
const SMALL_MAX: usize = 2000;
/// The victim's channel with a limit far beyond any allocation (see
/// `never_ending_message_costs_only_what_arrived`).
const HUGE: ChannelId = ChannelId(0x31);
const HUGE_MAX: usize = usize::MAX >> 1;
const CHAIN: &str = "evil-chain";

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn channels() -> Vec<ChannelDescriptor> {
    vec![
        ChannelDescriptor::new(SMALL).with_max_message_size(SMALL_MAX),
        ChannelDescriptor::new(HUGE).with_max_message_size(HUGE_MAX),
    ]
}

fn uvarint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

/// `uvarint(len) || body`.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = uvarint(body.len() as u64);
    out.extend_from_slice(body);
    out
}

fn evil_info(key: &NodeKey, network: &str) -> NodeInfo {
    NodeInfo::new(key.node_id(), network, "evil", [SMALL]).with_listen_addr("127.0.0.1:1")
}

/// Polls `f` once: its output if it is ready at once.
async fn ready_now<F: Future>(f: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        out = f => Some(out),
        () = std::future::ready(()) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The victim: a QuicTransport
// ---------------------------------------------------------------------------------------------

struct Victim {
    transport: QuicTransport,
    key: NodeKey,
    info: NodeInfo,
}

type Handshaken = Result<(NodeInfo, VerifyingKey), HandshakeError>;

fn victim() -> Victim {
    let key = NodeKey::generate();
    let transport = QuicTransport::bind(lo(), &key, QuicConfig::default()).unwrap();
    let info = NodeInfo::new(key.node_id(), CHAIN, "victim", [SMALL, HUGE])
        .with_listen_addr(transport.local_addr().to_string());
    Victim { transport, key, info }
}

impl Victim {
    fn addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Accepts one connection and runs the handshake (bounded by `T`).
    async fn accept(&self) -> (Box<dyn Connection>, Handshaken) {
        let mut conn = tokio::time::timeout(T, self.transport.accept()).await.unwrap().unwrap();
        let result = tokio::time::timeout(T, conn.handshake(&self.info, &self.key, &channels()))
            .await
            .expect("the handshake ends by itself");
        (conn, result)
    }

    /// An honest peer still gets through: handshake and one message.
    async fn serves_an_honest_peer(&self) {
        let key = NodeKey::generate();
        let transport = QuicTransport::bind(lo(), &key, QuicConfig::default()).unwrap();
        let info = NodeInfo::new(key.node_id(), CHAIN, "honest", [SMALL])
            .with_listen_addr(transport.local_addr().to_string());
        let to = Endpoint::socket(Protocol::QUIC, self.addr());
        let honest = async {
            let mut c = tokio::time::timeout(T, transport.dial(&to)).await.unwrap().unwrap();
            let (info, peer) = tokio::time::timeout(T, c.handshake(&info, &key, &channels()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!((info.node_id, peer), (self.key.node_id(), self.key.public_key()));
            c
        };
        let (c, (v, result)) = tokio::join!(honest, self.accept());
        let (info, peer) = result.unwrap();
        assert_eq!((info.moniker.as_str(), peer), ("honest", key.public_key()));
        c.send(SMALL, Bytes::from_static(b"hello")).await.unwrap();
        let got = tokio::time::timeout(T, v.receive()).await.unwrap().unwrap();
        assert_eq!(got, (SMALL, Bytes::from_static(b"hello")));
        c.close().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The evil peer: raw quinn + rustls
// ---------------------------------------------------------------------------------------------

/// A server verifier that accepts anything (the evil peer does not care who it talks to).
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A quinn client config presenting `cert` (any certificate at all).
fn raw_client(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> quinn::ClientConfig {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider())))
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

/// A quinn client config with a valid libp2p identity for `key`, offering `alpn`.
fn valid_client(key: &NodeKey, alpn: &[u8]) -> quinn::ClientConfig {
    let tls = p2p_transport_quic::client_config(key, alpn, None).unwrap();
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

/// Starts a QUIC connection to `to` from a fresh endpoint (returned to keep it alive).
fn evil_dial(to: SocketAddr, config: quinn::ClientConfig) -> (quinn::Endpoint, quinn::Connecting) {
    let endpoint = quinn::Endpoint::client(lo()).unwrap();
    let connecting = endpoint.connect_with(config, to, "l").unwrap();
    (endpoint, connecting)
}

/// The TLS alert (as a QUIC transport error code) with which the peer refused the handshake.
async fn tls_refusal(connecting: quinn::Connecting) -> quinn::TransportErrorCode {
    // TLS 1.3 client authentication ends after the client's last flight: the client may see
    // its handshake complete and the server's refusal only afterwards.
    let err = match tokio::time::timeout(T, connecting).await.unwrap() {
        Ok(conn) => tokio::time::timeout(T, conn.closed()).await.unwrap(),
        Err(e) => e,
    };
    match err {
        quinn::ConnectionError::ConnectionClosed(close) => close.error_code,
        other => panic!("expected a CONNECTION_CLOSE with a TLS alert, got {other:?}"),
    }
}

fn assert_tls_alert(code: quinn::TransportErrorCode) {
    assert!((0x100..0x200).contains(&u64::from(code)), "not a TLS alert: {code:?}");
}

/// The application error code with which the victim closed the connection.
async fn close_code(conn: &quinn::Connection) -> u32 {
    match tokio::time::timeout(T, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => {
            u32::try_from(close.error_code.into_inner()).unwrap()
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

/// An evil peer past the handshake.
struct Evil {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    control_send: quinn::SendStream,
    control_recv: quinn::RecvStream,
}

/// Connects to the victim with a valid identity and accepts the control stream (the acceptor
/// opens it).
async fn evil_connect(to: SocketAddr, key: &NodeKey) -> Evil {
    let (endpoint, connecting) = evil_dial(to, valid_client(key, QUIC_ALPN));
    let conn = tokio::time::timeout(T, connecting).await.unwrap().unwrap();
    let (control_send, control_recv) =
        tokio::time::timeout(T, conn.accept_bi()).await.unwrap().unwrap();
    Evil { _endpoint: endpoint, conn, control_send, control_recv }
}

/// Reads the victim's NodeInfo from the control stream.
async fn read_node_info(recv: &mut quinn::RecvStream) -> NodeInfo {
    let mut len = 0u64;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await.unwrap();
        len |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; usize::try_from(len).unwrap()];
    recv.read_exact(&mut body).await.unwrap();
    NodeInfo::decode(&body).unwrap()
}

/// A complete, valid handshake with the victim; returns the victim's connection.
async fn established(v: &Victim) -> (Box<dyn Connection>, Evil) {
    let key = NodeKey::generate();
    let evil = async {
        let mut evil = evil_connect(v.addr(), &key).await;
        let info = framed(&evil_info(&key, CHAIN).encode_to_vec());
        evil.control_send.write_all(&info).await.unwrap();
        let theirs = read_node_info(&mut evil.control_recv).await;
        assert_eq!(theirs.node_id, v.key.node_id());
        evil
    };
    let ((conn, result), evil) = tokio::join!(v.accept(), evil);
    let (info, peer) = result.unwrap();
    assert_eq!((info.moniker.as_str(), peer), ("evil", key.public_key()));
    (conn, evil)
}

/// The error that ends the victim's `receive` (messages delivered before it are skipped).
async fn receive_error(conn: &dyn Connection) -> ConnectionError {
    loop {
        match tokio::time::timeout(T, conn.receive()).await.unwrap() {
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-made certificates
// ---------------------------------------------------------------------------------------------

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    assert!(content.len() < 128);
    let mut out = vec![tag, content.len() as u8];
    out.extend_from_slice(content);
    out
}

/// `SignedKey { publicKey: protobuf ed25519 key of `key`, signature }`.
fn signed_key(key: &NodeKey, signature: &[u8]) -> Vec<u8> {
    let mut proto = vec![0x08, 0x01, 0x12, 0x20];
    proto.extend_from_slice(key.public_key().as_bytes());
    let mut fields = der_tlv(0x04, &proto);
    fields.extend(der_tlv(0x04, signature));
    der_tlv(0x30, &fields)
}

#[derive(Debug, Clone, Copy)]
enum BadCert {
    /// An ordinary self-signed certificate without the libp2p extension.
    NoExtension,
    /// The host key's signature over the certificate key is corrupt.
    BadHostSignature,
    /// The certificate's self-signature is corrupt.
    BadSelfSignature,
    /// Valid in every other way, but expired.
    Expired,
}

/// A certificate for `key` broken in the given way, and its private key.
fn bad_cert(key: &NodeKey, bad: BadCert) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(1);
    if let BadCert::Expired = bad {
        params.not_before = now - time::Duration::days(2);
        params.not_after = now - time::Duration::days(1);
    }
    if !matches!(bad, BadCert::NoExtension) {
        let mut message = SIGNATURE_PREFIX.to_vec();
        message.extend_from_slice(&cert_key.subject_public_key_info());
        let mut signature = key.sign(&message).to_bytes().to_vec();
        if let BadCert::BadHostSignature = bad {
            signature[7] ^= 0x20;
        }
        params.custom_extensions.push(rcgen::CustomExtension::from_oid_content(
            &LIBP2P_EXTENSION_OID,
            signed_key(key, &signature),
        ));
    }
    let mut der = params.self_signed(&cert_key).unwrap().der().to_vec();
    if let BadCert::BadSelfSignature = bad {
        // The last byte belongs to the ECDSA signature's `s`.
        *der.last_mut().unwrap() ^= 0x01;
    }
    (CertificateDer::from(der), PrivateKeyDer::Pkcs8(cert_key.serialize_der().into()))
}

/// The [`IdentityError`] the victim's verifier raises for `bad` (field values aside).
fn expected_identity_error(bad: BadCert) -> IdentityError {
    match bad {
        BadCert::NoExtension => IdentityError::MissingExtension,
        BadCert::BadHostSignature => IdentityError::BadHostSignature,
        BadCert::BadSelfSignature => IdentityError::BadSelfSignature(String::new()),
        BadCert::Expired => IdentityError::Expired { not_after: 0, now: 0 },
    }
}

/// The variant name of an [`IdentityError`]: what it leaves in the TLS error text (rustls
/// formats a verifier's error with `Debug`, and quinn keeps only that text).
fn variant_name(e: &IdentityError) -> String {
    format!("{e:?}").chars().take_while(char::is_ascii_alphanumeric).collect()
}

// ---------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_client_certificates_are_refused() {
    let v = victim();
    for bad in [
        BadCert::NoExtension,
        BadCert::BadHostSignature,
        BadCert::BadSelfSignature,
        BadCert::Expired,
    ] {
        let (cert, key) = bad_cert(&NodeKey::generate(), bad);
        let (_endpoint, connecting) = evil_dial(v.addr(), raw_client(cert, key));
        let (evil, (conn, result)) = tokio::join!(tls_refusal(connecting), v.accept());
        match result {
            Err(HandshakeError::Authentication(msg)) => {
                let variant = variant_name(&expected_identity_error(bad));
                assert!(msg.contains(&format!("OtherError({variant}")), "{bad:?}: {msg}");
            }
            other => panic!("{bad:?}: expected an authentication error, got {other:?}"),
        }
        assert_tls_alert(evil);
        assert!(matches!(conn.receive().await, Err(ConnectionError::Closed)));
    }
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn dialer_refuses_a_server_certificate_without_the_extension() {
    let (cert, key) = bad_cert(&NodeKey::generate(), BadCert::NoExtension);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    let server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    let evil = quinn::Endpoint::server(server, lo()).unwrap();
    let evil_addr = evil.local_addr().unwrap();
    let evil_side = async {
        let incoming = tokio::time::timeout(T, evil.accept()).await.unwrap().unwrap();
        tls_refusal(incoming.accept().unwrap()).await
    };

    let v = victim();
    let dial = async {
        let to = Endpoint::socket(Protocol::QUIC, evil_addr);
        let mut conn = v.transport.dial(&to).await.unwrap();
        tokio::time::timeout(T, conn.handshake(&v.info, &v.key, &channels())).await.unwrap()
    };
    let (code, result) = tokio::join!(evil_side, dial);
    match result {
        Err(HandshakeError::Authentication(msg)) => {
            let variant = variant_name(&IdentityError::MissingExtension);
            assert!(msg.contains(&format!("OtherError({variant}")), "{msg}");
        }
        other => panic!("expected an authentication error, got {other:?}"),
    }
    assert_tls_alert(code);
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn wrong_or_missing_alpn_is_refused() {
    let v = victim();
    for alpn in [&b"libp2p"[..], b"p2p-quic/2", b""] {
        let (_endpoint, connecting) = evil_dial(v.addr(), valid_client(&NodeKey::generate(), alpn));
        let (evil, (_conn, result)) = tokio::join!(tls_refusal(connecting), v.accept());
        assert!(
            matches!(result, Err(HandshakeError::Protocol(ref m)) if m.contains("ALPN")),
            "{alpn:?}: {result:?}"
        );
        // RFC 9001 §8.1: no_application_protocol (TLS alert 120).
        assert_eq!(evil, quinn::TransportErrorCode::crypto(120), "{alpn:?}");
    }
    v.serves_an_honest_peer().await;
}

// ---------------------------------------------------------------------------------------------
// NodeInfo exchange
// ---------------------------------------------------------------------------------------------

/// Connects, writes `control` on the control stream (then keeps it open), and returns the
/// victim's handshake result and the application error code it closed the connection with.
async fn handshake_with_control_bytes(v: &Victim, control: &[u8]) -> (Handshaken, u32) {
    let key = NodeKey::generate();
    let evil = async {
        let mut evil = evil_connect(v.addr(), &key).await;
        evil.control_send.write_all(control).await.unwrap();
        evil
    };
    let ((conn, result), evil) = tokio::join!(v.accept(), evil);
    drop(conn);
    (result, close_code(&evil.conn).await)
}

#[tokio::test]
async fn node_info_length_over_the_limit_is_refused_before_the_body() {
    let v = victim();
    // No body follows any of these prefixes: the victim must refuse on the prefix alone.
    let max = MAX_NODE_INFO_SIZE;
    for len in [max as u64 + 1, 1 << 30, 1 << 62, u64::MAX] {
        let (result, code) = handshake_with_control_bytes(&v, &uvarint(len)).await;
        let want = usize::try_from(len).unwrap();
        assert!(
            matches!(
                result,
                Err(HandshakeError::InvalidNodeInfo(NodeInfoError::TooLarge { len, max: m }))
                    if len == want && m == max
            ),
            "{len}: {result:?}"
        );
        assert_eq!(code, error_code::PROTOCOL_VIOLATION);
    }
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn malformed_node_info_is_a_typed_error() {
    let v = victim();
    // Not protobuf at all.
    let (result, code) = handshake_with_control_bytes(&v, &framed(&[0xff; 40])).await;
    assert!(
        matches!(result, Err(HandshakeError::InvalidNodeInfo(NodeInfoError::Decode(_)))),
        "{result:?}"
    );
    assert_eq!(code, error_code::PROTOCOL_VIOLATION);
    // Protobuf, but the node ID is not hex.
    let key = NodeKey::generate();
    let mut body = evil_info(&key, CHAIN).encode_to_vec();
    let id = key.node_id().to_string();
    let at = body.windows(id.len()).position(|w| w == id.as_bytes()).unwrap();
    body[at..at + id.len()].fill(b'z');
    let (result, code) = handshake_with_control_bytes(&v, &framed(&body)).await;
    assert!(
        matches!(result, Err(HandshakeError::InvalidNodeInfo(NodeInfoError::BadNodeId { .. }))),
        "{result:?}"
    );
    assert_eq!(code, error_code::PROTOCOL_VIOLATION);
    // A length prefix that overflows 64 bits, and one that never ends.
    for prefix in [[&[0xff; 9][..], &[0x02]].concat(), vec![0x80; 11]] {
        let (result, code) = handshake_with_control_bytes(&v, &prefix).await;
        assert!(
            matches!(result, Err(HandshakeError::Protocol(ref m)) if m.contains("length prefix")),
            "{prefix:02x?}: {result:?}"
        );
        assert_eq!(code, error_code::PROTOCOL_VIOLATION);
    }
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn peer_that_never_finishes_its_node_info_does_not_complete_the_handshake() {
    let v = victim();
    let key = NodeKey::generate();
    // Half a NodeInfo, then silence.
    let body = evil_info(&key, CHAIN).encode_to_vec();
    let mut partial = uvarint(body.len() as u64);
    partial.extend_from_slice(&body[..body.len() / 2]);
    let evil = async {
        let mut evil = evil_connect(v.addr(), &key).await;
        evil.control_send.write_all(&partial).await.unwrap();
        evil
    };
    let victim = async {
        let mut conn = tokio::time::timeout(T, v.transport.accept()).await.unwrap().unwrap();
        // The router bounds the handshake with its timeout; a short one stands in for it.
        let descriptors = channels();
        let handshake = conn.handshake(&v.info, &v.key, &descriptors);
        let result = tokio::time::timeout(Duration::from_millis(300), handshake).await;
        (conn, result)
    };
    let (evil, (conn, result)) = tokio::join!(evil, victim);
    assert!(result.is_err(), "the handshake must not complete: {result:?}");
    // Dropping the abandoned connection closes it: the evil peer is not left hanging.
    drop(conn);
    assert_eq!(close_code(&evil.conn).await, error_code::NO_ERROR);
    v.serves_an_honest_peer().await;
}

// ---------------------------------------------------------------------------------------------
// Channel streams
// ---------------------------------------------------------------------------------------------

/// Opens a channel stream and writes `bytes` on it (left open).
async fn write_stream(evil: &Evil, bytes: &[u8]) -> quinn::SendStream {
    let mut s = evil.conn.open_uni().await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

#[tokio::test]
async fn unknown_channel_stream_closes_with_unknown_channel() {
    let v = victim();
    let (conn, evil) = established(&v).await;
    let _s = write_stream(&evil, &[&[0x55][..], &framed(b"hi")].concat()).await;
    let err = receive_error(conn.as_ref()).await;
    assert!(matches!(err, ConnectionError::UnknownChannel(ChannelId(0x55))), "{err:?}");
    assert_eq!(close_code(&evil.conn).await, error_code::UNKNOWN_CHANNEL);
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn oversize_length_prefix_is_refused_before_the_body() {
    let v = victim();
    // Only the prefix is sent: an implementation that waited for (or allocated) the body
    // would hang here, or abort on the 2^62-byte allocation.
    for len in [SMALL_MAX as u64 + 1, 1 << 30, 1 << 62, u64::MAX] {
        let (conn, evil) = established(&v).await;
        // A valid message first: the limit applies per message, not per stream.
        let mut bytes = vec![SMALL.0];
        bytes.extend(framed(&[7; SMALL_MAX]));
        bytes.extend(uvarint(len));
        let _s = write_stream(&evil, &bytes).await;
        let first = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap();
        assert_eq!((first.0, first.1.len()), (SMALL, SMALL_MAX));
        let err = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap_err();
        let want = usize::try_from(len).unwrap();
        assert!(
            matches!(err, ConnectionError::MessageTooLarge { channel, size, max }
                if channel == SMALL && size == want && max == SMALL_MAX),
            "{len}: {err:?}"
        );
        assert_eq!(close_code(&evil.conn).await, error_code::MESSAGE_TOO_LARGE);
    }
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn malformed_frames_are_protocol_violations() {
    let v = victim();
    let cases: [(Vec<u8>, bool, &str); 3] = [
        // A length prefix that overflows 64 bits.
        ([&[SMALL.0][..], &[0xff; 9], &[0x02]].concat(), false, "length prefix"),
        // A stream that ends inside a length prefix.
        (vec![SMALL.0, 0x80], true, "inside a length prefix"),
        // A stream that ends inside a message.
        ([&[SMALL.0][..], &uvarint(100), &[1; 10]].concat(), true, "10 of 100"),
    ];
    for (bytes, finish, what) in cases {
        let (conn, evil) = established(&v).await;
        let mut s = write_stream(&evil, &bytes).await;
        if finish {
            s.finish().unwrap();
        }
        let err = receive_error(conn.as_ref()).await;
        assert!(matches!(err, ConnectionError::Protocol(ref m) if m.contains(what)), "{err:?}");
        assert_eq!(close_code(&evil.conn).await, error_code::PROTOCOL_VIOLATION);
    }
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn second_stream_for_a_channel_is_a_protocol_violation() {
    let v = victim();
    let (conn, evil) = established(&v).await;
    let _a = write_stream(&evil, &[&[SMALL.0][..], &framed(b"one")].concat()).await;
    let _b = write_stream(&evil, &[&[SMALL.0][..], &framed(b"two")].concat()).await;
    let err = receive_error(conn.as_ref()).await;
    assert!(
        matches!(err, ConnectionError::Protocol(ref m) if m.contains("second stream for channel")),
        "{err:?}"
    );
    assert_eq!(close_code(&evil.conn).await, error_code::PROTOCOL_VIOLATION);
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn junk_after_node_info_on_the_control_stream_is_bounded() {
    let v = victim();
    let (conn, mut evil) = established(&v).await;
    // The control stream carries nothing after the NodeInfo; the victim reads at most 1 KiB of
    // junk before it gives up.
    evil.control_send.write_all(&[0xaa; 4096]).await.unwrap();
    let err = receive_error(conn.as_ref()).await;
    assert!(
        matches!(err, ConnectionError::Protocol(ref m) if m.contains("control stream")),
        "{err:?}"
    );
    assert_eq!(close_code(&evil.conn).await, error_code::PROTOCOL_VIOLATION);
    v.serves_an_honest_peer().await;
}

// ---------------------------------------------------------------------------------------------
// Streams without end
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unidirectional_streams_without_end_stay_within_the_limit() {
    let v = victim();
    let (conn, evil) = established(&v).await;
    // A peer's credit from the victim's transport parameters: 16 concurrent unidirectional
    // streams; 16 open at once, the 17th waits for one of them to end.
    let mut open = Vec::new();
    for i in 0..16 {
        let s = ready_now(evil.conn.open_uni()).await;
        open.push(s.unwrap_or_else(|| panic!("stream {i} is within the limit")).unwrap());
    }
    let next = evil.conn.open_uni();
    tokio::pin!(next);
    assert!(ready_now(&mut next).await.is_none(), "the 17th concurrent stream must wait");
    // Ending them (empty) lets the victim read and drop them, which gives new credit, but
    // since its handshake ended only up to one stream per channel of its own (2).
    for mut s in open {
        s.finish().unwrap();
    }
    let mut a = tokio::time::timeout(T, next).await.unwrap().unwrap();
    let mut b = tokio::time::timeout(T, evil.conn.open_uni()).await.unwrap().unwrap();
    a.write_all(&[&[HUGE.0][..], &framed(b"a")].concat()).await.unwrap();
    b.write_all(&[&[SMALL.0][..], &framed(b"b")].concat()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap());
    }
    got.sort();
    assert_eq!(got, [(SMALL, Bytes::from_static(b"b")), (HUGE, Bytes::from_static(b"a"))]);
    let third = evil.conn.open_uni();
    tokio::pin!(third);
    assert!(ready_now(&mut third).await.is_none(), "a third concurrent stream must wait");
    b.finish().unwrap();
    let mut s = tokio::time::timeout(T, third).await.unwrap().unwrap();
    s.finish().unwrap();
    // ... again and again: the victim does not hold on to finished streams.
    for _ in 0..1000 {
        let mut s = tokio::time::timeout(T, evil.conn.open_uni()).await.unwrap().unwrap();
        s.finish().unwrap();
    }
    // And the connection still works.
    a.write_all(&framed(b"still here")).await.unwrap();
    let got = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap();
    assert_eq!(got, (HUGE, Bytes::from_static(b"still here")));
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn extra_bidirectional_stream_is_a_protocol_violation() {
    let v = victim();
    let (conn, evil) = established(&v).await;
    // One concurrent bidirectional stream of the dialer's (the control stream is the
    // acceptor's); the 2nd waits.
    let mut extra =
        ready_now(evil.conn.open_bi()).await.expect("one bidi stream is within the limit").unwrap();
    assert!(ready_now(evil.conn.open_bi()).await.is_none(), "the 2nd must wait");
    // Using it is a protocol violation (its data would otherwise never be read).
    extra.0.write_all(b"hello?").await.unwrap();
    let err = receive_error(conn.as_ref()).await;
    assert!(
        matches!(err, ConnectionError::Protocol(ref m) if m.contains("bidirectional")),
        "{err:?}"
    );
    assert_eq!(close_code(&evil.conn).await, error_code::PROTOCOL_VIOLATION);
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn never_ending_message_costs_only_what_arrived() {
    let v = victim();
    let (conn, evil) = established(&v).await;
    // A frame within the channel's (huge) limit whose body keeps trickling in: the victim's
    // buffer grows with the data, it is not sized by the prefix (2^62 bytes could not even be
    // allocated: the process would abort).
    let claimed: u64 = 1 << 62;
    let mut s = write_stream(&evil, &[&[HUGE.0][..], &uvarint(claimed)].concat()).await;
    // 9 MiB is more than the 8 MiB stream window: this write completes only because the victim
    // reads (and buffers) past the prefix.
    let sent = 9 << 20;
    tokio::time::timeout(T, s.write_all(&vec![0x5a; sent])).await.unwrap().unwrap();
    // Meanwhile the other channel is not blocked.
    let _other = write_stream(&evil, &[&[SMALL.0][..], &framed(b"ping")].concat()).await;
    let got = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap();
    assert_eq!(got, (SMALL, Bytes::from_static(b"ping")));
    // The message never completes; ending its stream is a protocol violation.
    s.finish().unwrap();
    let err = receive_error(conn.as_ref()).await;
    let what = format!("after {sent} of {claimed} message bytes");
    assert!(matches!(err, ConnectionError::Protocol(ref m) if m.contains(&what)), "{err:?}");
    assert_eq!(close_code(&evil.conn).await, error_code::PROTOCOL_VIOLATION);
    v.serves_an_honest_peer().await;
}

// ---------------------------------------------------------------------------------------------
// Checks in the router
// ---------------------------------------------------------------------------------------------

/// Records the router's log events (`key=value` text) so tests can see its typed errors.
struct Log {
    lines: Mutex<Vec<String>>,
    changed: tokio::sync::watch::Sender<usize>,
}

struct Capture(&'static Log);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target().starts_with("p2p::router") && metadata.is_event()
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lines.lock().unwrap().push(fields.0);
        self.0.changed.send_modify(|n| *n += 1);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn log() -> &'static Log {
    static LOG: OnceLock<&'static Log> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static Log = Box::leak(Box::new(Log {
            lines: Mutex::new(Vec::new()),
            changed: tokio::sync::watch::channel(0).0,
        }));
        tracing::subscriber::set_global_default(Capture(log)).unwrap();
        log
    })
}

impl Log {
    /// Waits for a logged event containing every one of `parts`.
    async fn wait_for(&self, parts: &[&str]) -> String {
        let mut changed = self.changed.subscribe();
        let found = tokio::time::timeout(T, async {
            loop {
                let hit = self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| parts.iter().all(|p| l.contains(p)))
                    .cloned();
                if let Some(line) = hit {
                    return line;
                }
                changed.changed().await.unwrap();
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no router log event with {parts:?}"))
    }
}

struct Node {
    router: Router,
    _txs: p2p::Channel<Txs>,
    updates: PeerUpdates,
    addr: NodeAddress,
    local: SocketAddr,
}

fn node(network: &str, config: RouterConfig) -> Node {
    let key = NodeKey::generate();
    let id = key.node_id();
    let transport = QuicTransport::bind(lo(), &key, QuicConfig::default()).unwrap();
    let local = transport.local_addr();
    let info = NodeInfo::new(id, network, "node", Vec::<ChannelId>::new());
    let router = Router::new(key, info, config, PeerManagerConfig::default(), None).unwrap();
    router.add_transport(Arc::new(transport)).unwrap();
    let txs = router.open_channel::<Txs>(mempool_channel_descriptor(SMALL_MAX)).unwrap();
    let updates = router.subscribe();
    router.start().unwrap();
    let addr = format!("quic://{id}@{local}").parse().unwrap();
    Node { router, _txs: txs, updates, addr, local }
}

impl Node {
    /// An honest node of `network` connects to this one.
    async fn serves_an_honest_peer(&mut self, network: &str) {
        let mut honest = node(network, RouterConfig::default());
        honest.router.add_address(self.addr.clone()).unwrap();
        for (updates, want) in
            [(&mut honest.updates, self.addr.node_id()), (&mut self.updates, honest.addr.node_id())]
        {
            loop {
                let u = tokio::time::timeout(T, updates.recv()).await.unwrap().unwrap();
                if u.status == PeerStatus::Up {
                    assert_eq!(u.node_id, want);
                    break;
                }
            }
        }
        honest.router.stop().await;
    }
}

/// Handshakes with the router as `key` sending `info`, then expects the router's graceful
/// close: the end of the control stream.
async fn evil_handshake_then_refused(to: SocketAddr, key: &NodeKey, info: &NodeInfo) {
    let mut evil = evil_connect(to, key).await;
    evil.control_send.write_all(&framed(&info.encode_to_vec())).await.unwrap();
    let _ = read_node_info(&mut evil.control_recv).await;
    let rest = tokio::time::timeout(T, evil.control_recv.read_to_end(1024)).await.unwrap();
    assert_eq!(rest.unwrap(), Vec::<u8>::new(), "the router closes the connection");
    evil.conn.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_info_for_another_network_or_node_is_refused_by_the_router() {
    let log = log();
    let network = format!("chain-{}", rand::random::<u64>());
    let mut v = node(&network, RouterConfig::default());

    // Another network.
    let key = NodeKey::generate();
    let other = format!("other-{}", rand::random::<u64>());
    evil_handshake_then_refused(v.local, &key, &evil_info(&key, &other)).await;
    let want = HandshakeError::InvalidNodeInfo(NodeInfoError::NetworkMismatch {
        ours: network.clone(),
        peer: other,
    });
    log.wait_for(&["inbound handshake failed", &want.to_string()]).await;

    // A NodeInfo that names another node than the certificate proves.
    let key = NodeKey::generate();
    let named = NodeKey::generate().node_id();
    let mut info = evil_info(&key, &network);
    info.node_id = named;
    evil_handshake_then_refused(v.local, &key, &info).await;
    let want = HandshakeError::IdMismatch {
        authenticated: key.node_id(),
        claimed: named,
        claimed_by: "its NodeInfo",
    };
    log.wait_for(&["inbound handshake failed", &want.to_string()]).await;

    assert!(v.router.stats().handshake_failures >= 2);
    assert!(v.router.connected_peers().is_empty());
    v.serves_an_honest_peer(&network).await;
    v.router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialled_node_id_mismatch_is_refused_by_the_router() {
    let log = log();
    let network = format!("chain-{}", rand::random::<u64>());
    // An evil listener with a valid identity of its own, dialled under another node ID.
    let evil_key = NodeKey::generate();
    let tls = p2p_transport_quic::server_config(&evil_key, QUIC_ALPN).unwrap();
    let server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    let endpoint = quinn::Endpoint::server(server, lo()).unwrap();
    let evil_addr = endpoint.local_addr().unwrap();
    let info = evil_info(&evil_key, &network);
    let evil = tokio::spawn(async move {
        let incoming = tokio::time::timeout(T, endpoint.accept()).await.unwrap().unwrap();
        let conn = tokio::time::timeout(T, incoming.accept().unwrap()).await.unwrap().unwrap();
        let (mut send, mut recv) = tokio::time::timeout(T, conn.open_bi()).await.unwrap().unwrap();
        send.write_all(&framed(&info.encode_to_vec())).await.unwrap();
        let _ = read_node_info(&mut recv).await;
        let rest = tokio::time::timeout(T, recv.read_to_end(1024)).await.unwrap();
        assert_eq!(rest.unwrap(), Vec::<u8>::new(), "the router closes the connection");
        conn.close(0u32.into(), b"");
    });

    let v = node(&network, RouterConfig::default());
    let claimed = NodeKey::generate().node_id();
    v.router.add_address(format!("quic://{claimed}@{evil_addr}").parse().unwrap()).unwrap();
    tokio::time::timeout(T, evil).await.unwrap().unwrap();
    let want = HandshakeError::IdMismatch {
        authenticated: evil_key.node_id(),
        claimed,
        claimed_by: "the dialled address",
    };
    log.wait_for(&["dial failed", &want.to_string()]).await;
    assert!(v.router.stats().handshake_failures >= 1);
    assert!(v.router.connected_peers().is_empty());
    v.router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_times_out_a_peer_that_never_sends_node_info() {
    let log = log();
    let network = format!("chain-{}", rand::random::<u64>());
    let mut config = RouterConfig::default();
    let limit = Duration::from_millis(317);
    config.handshake_timeout = limit;
    let mut v = node(&network, config);
    // TLS completes, then the evil peer never answers the victim's NodeInfo.
    let (_endpoint, connecting) = evil_dial(v.local, valid_client(&NodeKey::generate(), QUIC_ALPN));
    let conn = tokio::time::timeout(T, connecting).await.unwrap().unwrap();
    let want = HandshakeError::Timeout(limit);
    log.wait_for(&["inbound handshake failed", &want.to_string()]).await;
    // The abandoned connection is closed, not left to the idle timeout.
    assert_eq!(close_code(&conn).await, error_code::NO_ERROR);
    assert!(v.router.connected_peers().is_empty());
    v.serves_an_honest_peer(&network).await;
    v.router.stop().await;
}
