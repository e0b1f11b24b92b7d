//! A hostile peer against the MConn transport: every bad input ends in a typed error and a
//! closed connection, never a panic or a hang. The "evil peer" speaks the handshake by hand with
//! the sans-IO `secret` module and then misbehaves in one specific way per test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use p2p::router::ChannelDescriptor;
use p2p::{
    ChannelId, Connection, ConnectionError, HandshakeError, NodeId, NodeInfo, NodeKey,
    PeerManagerConfig, Router, RouterConfig, Transport as _,
};
use p2p_proto::tendermint::p2p::{DefaultNodeInfo, Packet, PacketMsg, packet::Sum};
use p2p_transport_mconn::secret::{
    Handshake, RecvCipher, SEALED_FRAME_SIZE, SendCipher, parse_ephemeral,
};
use p2p_transport_mconn::{MConnConfig, MConnTransport};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);
const PHASE: Duration = Duration::from_millis(300);
const CHAIN: &str = "evil-chain";

fn config() -> MConnConfig {
    let mut c = MConnConfig::default();
    c.handshake_phase_timeout = PHASE;
    c
}

fn channels() -> Vec<ChannelDescriptor> {
    vec![ChannelDescriptor::new(ChannelId(0x30)).with_max_message_size(2000)]
}

/// The victim: a listening transport plus the identity it handshakes with.
struct Victim {
    transport: MConnTransport,
    key: NodeKey,
    info: NodeInfo,
}

async fn victim() -> Victim {
    let transport = MConnTransport::bind("127.0.0.1:0".parse().unwrap(), config()).await.unwrap();
    let key = NodeKey::generate();
    let info = NodeInfo::new(key.node_id(), CHAIN, "victim", [ChannelId(0x30)])
        .with_listen_addr(transport.local_addr().unwrap().to_string());
    Victim { transport, key, info }
}

impl Victim {
    /// Accepts one connection and runs the handshake; returns its result and the connection.
    async fn accept(&self) -> (Box<dyn Connection>, Result<NodeInfo, HandshakeError>) {
        let mut conn = tokio::time::timeout(T, self.transport.accept()).await.unwrap().unwrap();
        let result = tokio::time::timeout(T, conn.handshake(&self.info, &self.key, &channels()))
            .await
            .expect("the handshake ends by itself (its phases have deadlines)")
            .map(|(info, _)| info);
        (conn, result)
    }
}

async fn connect(v: &Victim) -> TcpStream {
    TcpStream::connect(v.transport.local_addr().unwrap()).await.unwrap()
}

/// Asserts the peer closed the socket (reads EOF or a reset within the timeout).
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(T, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the victim must close the connection");
}

/// Runs the SecretConnection handshake as the evil side; `tamper` may replace our AuthSig
/// message. Returns the ciphers.
async fn evil_secret(
    stream: &mut TcpStream,
    key: &SigningKey,
    tamper: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> (SendCipher, RecvCipher) {
    let hs = Handshake::new(key.clone());
    stream.write_all(&hs.ephemeral_message()).await.unwrap();
    let mut buf = Vec::new();
    let remote = loop {
        if let Some((k, used)) = parse_ephemeral(&buf).unwrap() {
            buf.drain(..used);
            break k;
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut auth = hs.finish(remote).unwrap();
    let message = tamper(auth.auth_message());
    let mut out = Vec::new();
    auth.sender().seal(&message, &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    // Read (and ignore) the victim's AuthSig frame.
    while buf.len() < SEALED_FRAME_SIZE {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "victim closed during auth");
        buf.extend_from_slice(&chunk[..n]);
    }
    auth.receiver().open_frame(&mut buf[..SEALED_FRAME_SIZE]).unwrap();
    auth.into_ciphers()
}

fn evil_info(key: &SigningKey) -> NodeInfo {
    let id = NodeId::from_public_key(&key.verifying_key());
    NodeInfo::new(id, CHAIN, "evil", [ChannelId(0x30)]).with_listen_addr("127.0.0.1:1")
}

async fn send_sealed(stream: &mut TcpStream, send: &mut SendCipher, plain: &[u8]) {
    let mut out = Vec::new();
    send.seal(plain, &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
}

/// A complete, valid handshake; returns the victim's connection and our send cipher.
async fn established(v: &Victim) -> (Box<dyn Connection>, TcpStream, SendCipher) {
    let key = SigningKey::from_bytes(&rand::random());
    let mut stream = connect(v).await;
    let evil = async {
        let (mut send, _recv) = evil_secret(&mut stream, &key, |m| m).await;
        let info = DefaultNodeInfo::from(&evil_info(&key)).encode_length_delimited_to_vec();
        send_sealed(&mut stream, &mut send, &info).await;
        send
    };
    let ((conn, result), send) = tokio::join!(v.accept(), evil);
    assert_eq!(result.unwrap().moniker, "evil");
    (conn, stream, send)
}

fn packet(channel: i32, eof: bool, data: Vec<u8>) -> Vec<u8> {
    Packet { sum: Some(Sum::PacketMsg(PacketMsg { channel_id: channel, eof, data: data.into() })) }
        .encode_length_delimited_to_vec()
}

#[tokio::test]
async fn garbage_before_the_handshake() {
    let v = victim().await;
    let mut stream = connect(&v).await;
    stream.write_all(&[0xff; 64]).await.unwrap();
    let (_conn, result) = v.accept().await;
    assert!(matches!(result, Err(HandshakeError::Authentication(_))), "{result:?}");
    drop(_conn);
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn a_peer_that_stalls_mid_handshake_times_out() {
    let v = victim().await;
    let mut stream = connect(&v).await;
    // Send our ephemeral key, then nothing.
    let hs = Handshake::new(SigningKey::from_bytes(&[9; 32]));
    stream.write_all(&hs.ephemeral_message()).await.unwrap();
    let (conn, result) = v.accept().await;
    assert!(matches!(result, Err(HandshakeError::Timeout(d)) if d == PHASE), "{result:?}");
    drop(conn);
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn auth_signature_over_the_wrong_challenge() {
    let v = victim().await;
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut stream = connect(&v).await;
    let evil = evil_secret(&mut stream, &key, |mut m| {
        let last = m.len() - 1;
        m[last] ^= 1; // corrupt the signature
        m
    });
    let ((conn, result), _) = tokio::join!(v.accept(), evil);
    let err = result.unwrap_err();
    assert!(matches!(err, HandshakeError::Authentication(_)), "{err:?}");
    drop(conn);
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn oversized_node_info() {
    let v = victim().await;
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut stream = connect(&v).await;
    let evil = async {
        let (mut send, _) = evil_secret(&mut stream, &key, |m| m).await;
        let mut info = DefaultNodeInfo::from(&evil_info(&key));
        info.moniker = "m".repeat(11_000); // above the 10240-byte NodeInfo limit
        send_sealed(&mut stream, &mut send, &info.encode_length_delimited_to_vec()).await;
    };
    let ((conn, result), ()) = tokio::join!(v.accept(), evil);
    let err = result.unwrap_err();
    assert!(err.to_string().contains("10240"), "{err}");
    drop(conn);
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn non_canonical_node_info() {
    let v = victim().await;
    let key = SigningKey::from_bytes(&[6; 32]);
    let mut stream = connect(&v).await;
    let evil = async {
        let (mut send, _) = evil_secret(&mut stream, &key, |m| m).await;
        let mut info = DefaultNodeInfo::from(&evil_info(&key));
        info.default_node_id = info.default_node_id.to_uppercase(); // Go compares lowercase
        send_sealed(&mut stream, &mut send, &info.encode_length_delimited_to_vec()).await;
    };
    let ((conn, result), ()) = tokio::join!(v.accept(), evil);
    assert!(matches!(result, Err(HandshakeError::InvalidNodeInfo(_))), "{result:?}");
    drop(conn);
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn frame_with_a_bad_mac() {
    let v = victim().await;
    let (conn, mut stream, _) = established(&v).await;
    stream.write_all(&[0x42; SEALED_FRAME_SIZE]).await.unwrap();
    let err = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("decrypt"), "{err}");
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn oversized_packet() {
    let v = victim().await;
    let (conn, mut stream, mut send) = established(&v).await;
    // 1025 payload bytes on channel 0x30 with eof: a 1035-byte body, above the 1034 limit.
    send_sealed(&mut stream, &mut send, &packet(0x30, true, vec![1; 1025])).await;
    let err = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap_err();
    assert!(matches!(err, ConnectionError::Protocol(ref m) if m.contains("1034")), "{err}");
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn message_over_the_channel_limit() {
    let v = victim().await;
    let (conn, mut stream, mut send) = established(&v).await;
    // Channel 0x30 accepts 2000 bytes: three 1024-byte chunks exceed it before eof.
    for _ in 0..3 {
        send_sealed(&mut stream, &mut send, &packet(0x30, false, vec![1; 1024])).await;
    }
    let err = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap_err();
    assert!(
        matches!(err, ConnectionError::MessageTooLarge { channel: ChannelId(0x30), max: 2000, .. }),
        "{err}"
    );
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn unknown_channel() {
    let v = victim().await;
    let (conn, mut stream, mut send) = established(&v).await;
    send_sealed(&mut stream, &mut send, &packet(0x55, true, b"hi".to_vec())).await;
    let err = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap_err();
    assert!(matches!(err, ConnectionError::UnknownChannel(ChannelId(0x55))), "{err}");
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn valid_messages_still_flow() {
    // Control: the evil peer's harness is right, so the failures above are the victim's checks.
    let v = victim().await;
    let (conn, mut stream, mut send) = established(&v).await;
    send_sealed(&mut stream, &mut send, &packet(0x30, false, vec![1; 1024])).await;
    send_sealed(&mut stream, &mut send, &packet(0x30, true, vec![2; 10])).await;
    let (ch, msg) = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap();
    assert_eq!(ch, ChannelId(0x30));
    assert_eq!(msg.len(), 1034);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_that_does_not_match_the_dialled_id() {
    // A listener that completes a valid handshake with its own key, while the router dials it
    // under another node ID: the router must refuse the connection.
    let evil_key = SigningKey::from_bytes(&[3; 32]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let evil = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (mut send, _) = evil_secret(&mut stream, &evil_key, |m| m).await;
        let info = DefaultNodeInfo::from(&evil_info(&evil_key)).encode_length_delimited_to_vec();
        send_sealed(&mut stream, &mut send, &info).await;
        assert_closed(&mut stream).await;
    });
    let key = NodeKey::generate();
    let info = NodeInfo::new(key.node_id(), CHAIN, "dialer", [ChannelId(0x30)]);
    let router =
        Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
            .unwrap();
    router.add_transport(Arc::new(MConnTransport::dial_only(config()))).unwrap();
    let _ch = router.open_channel::<p2p::mempool::Txs>(channels()[0].clone()).unwrap();
    router.start().unwrap();
    let claimed = NodeKey::from_seed([4; 32]).node_id();
    router.add_address(format!("mconn://{claimed}@{addr}").parse().unwrap()).unwrap();
    tokio::time::timeout(T, evil).await.unwrap().unwrap();
    // The router counts the failure right after closing the socket the evil peer saw close.
    let deadline = tokio::time::Instant::now() + T;
    while router.stats().handshake_failures == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the failure is counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(router.connected_peers().is_empty());
    assert_eq!(router.stats().handshake_failures, 1);
}
