//! A hostile lp2p peer: raw quinn with a libp2p TLS certificate, writing whatever it likes on
//! QUIC streams to a victim [`Lp2pTransport`]. Every case checks the victim's typed reaction (the
//! error `receive` returns, the close code, the counters) and that what is bounded stays
//! bounded; most end by checking an honest message still gets through.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use p2p::router::ChannelDescriptor;
use p2p::{
    ChannelId, Connection, ConnectionError, HandshakeError, NodeAddress, NodeInfo, NodeKey,
    PeerManagerConfig, Protocol, Router, RouterConfig,
};
use p2p_quic_endpoint::{EndpointConfig, identity};
use p2p_transport_lp2p::multistream::{self, HEADER, NA};
use p2p_transport_lp2p::{Lp2pConfig, Lp2pConnection, Lp2pTransport, error_code};
use quinn::VarInt;

/// Bound of every wait.
const T: Duration = Duration::from_secs(10);
const CHAIN: &str = "lp2p-bad-input";
/// The victim's channel, limited to [`LIMIT`] bytes.
const CH: ChannelId = ChannelId(0x30);
const LIMIT: usize = 1000;

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn channels() -> Vec<ChannelDescriptor> {
    vec![ChannelDescriptor::new(CH).with_max_message_size(LIMIT)]
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

fn token(t: &str) -> Vec<u8> {
    let mut out = Vec::new();
    multistream::encode(t, &mut out);
    out
}

fn channel_protocol(ch: u8) -> String {
    multistream::Protocol::Channel(ch).to_string()
}

/// `header ‖ channel protocol ‖ uvarint(len) ‖ body`.
fn framed(ch: u8, body: &[u8]) -> Vec<u8> {
    let mut out = multistream::header_and(&channel_protocol(ch));
    out.extend(uvarint(body.len() as u64));
    out.extend_from_slice(body);
    out
}

/// The victim: an lp2p transport with a short stream timeout, so that slow cases end soon.
struct Victim {
    transport: Lp2pTransport,
    key: NodeKey,
    info: NodeInfo,
}

fn victim_with(config: Lp2pConfig) -> Victim {
    let key = NodeKey::generate();
    let transport = Lp2pTransport::bind(lo(), &key, EndpointConfig::default(), config).unwrap();
    let info = NodeInfo::new(key.node_id(), CHAIN, "victim", [CH])
        .with_listen_addr(transport.local_addr().to_string());
    Victim { transport, key, info }
}

fn victim() -> Victim {
    let mut config = Lp2pConfig::default();
    config.stream_timeout = Duration::from_millis(500);
    config.identify_timeout = Duration::from_secs(2);
    config.greeting = None;
    config.ping_on_connect = false;
    victim_with(config)
}

type Handshaken = Result<(NodeInfo, VerifyingKey), HandshakeError>;

impl Victim {
    fn addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    async fn accept(&self) -> (Lp2pConnection, Handshaken) {
        let mut conn =
            tokio::time::timeout(T, self.transport.accept_connection()).await.unwrap().unwrap();
        let result = tokio::time::timeout(T, conn.handshake(&self.info, &self.key, &channels()))
            .await
            .expect("the handshake ends by itself");
        (conn, result)
    }

    /// An honest lp2p peer still gets a message through.
    async fn serves_an_honest_peer(&self) {
        let key = NodeKey::generate();
        let mut config = Lp2pConfig::default();
        config.greeting = None;
        let honest = Lp2pTransport::bind(lo(), &key, EndpointConfig::default(), config).unwrap();
        let info = NodeInfo::new(key.node_id(), CHAIN, "honest", [CH])
            .with_listen_addr(honest.local_addr().to_string());
        let dial = async {
            let mut c = honest.dial_connection(self.addr()).unwrap();
            c.handshake(&info, &key, &channels()).await.unwrap();
            c
        };
        let (c, (v, result)) = tokio::join!(dial, self.accept());
        result.unwrap();
        c.send(CH, Bytes::from_static(b"hello")).await.unwrap();
        let got = tokio::time::timeout(T, v.receive()).await.unwrap().unwrap();
        assert_eq!(got, (CH, Bytes::from_static(b"hello")));
        c.close().await;
    }
}

/// How the evil peer answers the victim's own streams (identify, ping, greeting).
#[derive(Clone)]
enum Answers {
    /// `na` to everything.
    Na,
    /// This identify answer (after the header and echo), then FIN.
    Identify(Vec<u8>),
}

/// The evil peer's connection.
struct Evil {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

fn evil_client(key: &NodeKey, alpn: &[u8]) -> quinn::ClientConfig {
    let tls = identity::client_config(key, alpn, None).unwrap();
    let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(tls));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(256));
    config.transport_config(Arc::new(transport));
    config
}

/// Answers the victim's streams as `answers` says.
async fn answer(conn: quinn::Connection, answers: Answers) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let answers = answers.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            // Read the header and the proposal (both arrive in the first packet).
            let mut tokens = Vec::new();
            while tokens.len() < 2 {
                let Ok(Some(chunk)) = recv.read_chunk(4096, true).await else { return };
                buf.extend_from_slice(&chunk.bytes);
                while let Ok(Some((t, n))) = multistream::parse(&buf) {
                    tokens.push(t.to_owned());
                    buf.drain(..n);
                }
            }
            let mut out = token(HEADER);
            match (&answers, tokens[1].as_str()) {
                (Answers::Identify(body), multistream::IDENTIFY) => {
                    out.extend(token(multistream::IDENTIFY));
                    out.extend_from_slice(body);
                }
                _ => out.extend(token(NA)),
            }
            let _ = send.write_all(&out).await;
            let _ = send.finish();
        });
    }
}

/// Connects an evil peer and has the victim accept and handshake it.
async fn evil_connect(v: &Victim, answers: Answers) -> (Evil, Lp2pConnection, Handshaken) {
    let key = NodeKey::generate();
    let endpoint = quinn::Endpoint::client(lo()).unwrap();
    let connecting = endpoint
        .connect_with(evil_client(&key, b"libp2p"), v.addr(), identity::DUMMY_SERVER_NAME)
        .unwrap();
    let evil = async {
        let conn = tokio::time::timeout(T, connecting).await.unwrap().unwrap();
        tokio::spawn(answer(conn.clone(), answers));
        conn
    };
    let (conn, (victim_conn, result)) = tokio::join!(evil, v.accept());
    (Evil { _endpoint: endpoint, conn }, victim_conn, result)
}

impl Evil {
    /// Opens a stream, writes `bytes`, finishes it if `finish`.
    async fn stream(&self, bytes: &[u8], finish: bool) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        if finish {
            send.finish().unwrap();
        }
        (send, recv)
    }

    /// The application code the victim closed the connection with.
    async fn close_code(&self) -> u64 {
        match tokio::time::timeout(T, self.conn.closed()).await.unwrap() {
            quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
            other => panic!("expected an application close, got {other:?}"),
        }
    }
}

/// Everything the victim sends back on a stream, until its end or a reset.
async fn read_answer(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, quinn::ReadToEndError> {
    tokio::time::timeout(T, recv.read_to_end(64 * 1024)).await.unwrap()
}

async fn receive_error(conn: &Lp2pConnection) -> ConnectionError {
    match tokio::time::timeout(T, conn.receive()).await.unwrap() {
        Err(e) => e,
        Ok(m) => panic!("expected an error, got {m:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// TLS and identity
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_alpn_is_refused_in_the_tls_handshake() {
    let v = victim();
    for alpn in [&b"p2p-quic/1"[..], b"libp2p/2", b""] {
        let endpoint = quinn::Endpoint::client(lo()).unwrap();
        let connecting =
            endpoint.connect_with(evil_client(&NodeKey::generate(), alpn), v.addr(), "l").unwrap();
        let (evil, (_conn, result)) = tokio::join!(connecting, v.accept());
        assert!(evil.is_err(), "{alpn:?}: the TLS handshake completed");
        assert!(
            matches!(result, Err(HandshakeError::Protocol(ref m)) if m.contains("ALPN")),
            "{alpn:?}: {result:?}"
        );
    }
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn a_dial_to_the_wrong_peer_id_is_refused_by_the_router() {
    // The router dials lp2p://<someone else>@victim: the certificate proves the victim's key,
    // not the one the address names.
    let v = victim();
    let key = NodeKey::generate();
    let transport =
        Lp2pTransport::bind(lo(), &key, EndpointConfig::default(), Lp2pConfig::default()).unwrap();
    let info = NodeInfo::new(key.node_id(), CHAIN, "dialer", []);
    let router =
        Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
            .unwrap();
    router.add_transport(Arc::new(transport)).unwrap();
    let _txs = router
        .open_channel::<p2p::mempool::Txs>(p2p::mempool::mempool_channel_descriptor(LIMIT))
        .unwrap();
    router.start().unwrap();
    let someone_else = NodeKey::generate().public_key();
    let wrong = NodeAddress::new_with_key(
        Protocol::LP2P,
        someone_else,
        p2p::Host::Ip(v.addr().ip()),
        v.addr().port(),
    );
    router.add_address(wrong).unwrap();
    let accepting = async {
        // The victim sees the connection; the dialer gives up on it.
        let _ = tokio::time::timeout(T, v.accept()).await;
    };
    let counted = async {
        tokio::time::timeout(T, async {
            while router.stats().handshake_failures == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the dialer counts a handshake failure");
    };
    tokio::join!(accepting, counted);
    assert!(router.connected_peers().is_empty(), "nobody was admitted");
    router.stop().await;
    v.serves_an_honest_peer().await;
}

// ---------------------------------------------------------------------------------------------
// Identify
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn identify_garbage_is_refused_and_the_handshake_assumes_our_channels() {
    let v = victim();
    for garbage in [
        // A length, then bytes that are no protobuf.
        [uvarint(4), vec![0xff, 0xff, 0xff, 0xff]].concat(),
        // Over the 8 KiB message limit (declared only).
        uvarint(9000),
        // A malformed length prefix.
        vec![0xff; 11],
        // An identify naming another public key.
        {
            use p2p_proto::prost::Message as _;
            let other = NodeKey::generate().public_key();
            let m = p2p_proto::libp2p::identify::Identify {
                public_key: Some(p2p::peer_id::libp2p_public_key(&other).to_vec()),
                protocols: vec!["/p2p/cometbft/1.0.0/channel/0x99".into()],
                ..Default::default()
            };
            m.encode_length_delimited_to_vec()
        },
    ] {
        let (evil, conn, result) = evil_connect(&v, Answers::Identify(garbage.clone())).await;
        match result {
            // A malformed prefix breaks the protocol: the connection is refused.
            Err(HandshakeError::Protocol(msg)) => {
                assert!(garbage[0] == 0xff && garbage.len() == 11, "{msg}");
                assert_eq!(evil.close_code().await, u64::from(error_code::CONN_PROTOCOL_VIOLATION));
            }
            // Otherwise identify alone is refused: the peer gets our channels, as if it had not
            // answered.
            Ok((info, _)) => assert_eq!(info.channels, vec![CH], "{garbage:?}"),
            Err(e) => panic!("{garbage:?}: {e:?}"),
        }
        drop(conn);
    }
    v.serves_an_honest_peer().await;
}

// ---------------------------------------------------------------------------------------------
// multistream-select
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_protocols_get_na_and_the_connection_stays() {
    let v = victim();
    let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
    result.unwrap();
    for proto in ["/ipfs/id/push/1.0.0", "/p2p/cometbft/1.0.0/channel/0x99", "/x/y"] {
        let (_send, mut recv) = evil.stream(&multistream::header_and(proto), true).await;
        let answer = read_answer(&mut recv).await.unwrap();
        assert_eq!(answer, [token(HEADER), token(NA)].concat(), "{proto}");
    }
    assert_eq!(conn.stats().negotiation_refusals, 3);
    // Still usable.
    let (_s, mut r) = evil.stream(&framed(CH.0, b"still here"), true).await;
    let got = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap();
    assert_eq!(got, (CH, Bytes::from_static(b"still here")));
    assert_eq!(
        read_answer(&mut r).await.unwrap(),
        multistream::header_and(&channel_protocol(CH.0))
    );
}

#[tokio::test]
async fn too_many_proposals_on_one_stream_reset_it() {
    let v = victim();
    let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
    result.unwrap();
    let mut out = token(HEADER);
    for i in 0..20 {
        out.extend(token(&format!("/nope/{i}")));
    }
    let (_send, mut recv) = evil.stream(&out, false).await;
    match read_answer(&mut recv).await {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(
                code.into_inner(),
                u64::from(error_code::STREAM_PROTOCOL_NEGOTIATION_FAILED)
            );
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    assert_eq!(conn.stats().negotiation_refusals, 8);
    // Only the stream: the connection still carries messages.
    let (_s, _r) = evil.stream(&framed(CH.0, b"alive"), true).await;
    let got = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap();
    assert_eq!(got, (CH, Bytes::from_static(b"alive")));
}

#[tokio::test]
async fn malformed_multistream_tokens_close_the_connection() {
    for (name, bytes) in [
        ("wrong header", [token("/multistream/2.0.0"), token(&channel_protocol(CH.0))].concat()),
        ("token over 1024 bytes", [uvarint(2000), vec![b'x'; 16]].concat()),
        ("token without newline", b"\x13/multistream/1.0.0!".to_vec()),
        ("malformed token length", vec![0x80, 0x80, 0x80, 0x80]),
        ("token not UTF-8", [uvarint(4), vec![0xff, 0xfe, 0xfd, b'\n']].concat()),
    ] {
        let v = victim();
        let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
        result.unwrap();
        let _stream = evil.stream(&bytes, false).await;
        assert_eq!(
            evil.close_code().await,
            u64::from(error_code::CONN_PROTOCOL_VIOLATION),
            "{name}"
        );
        assert!(matches!(receive_error(&conn).await, ConnectionError::Protocol(_)), "{name}");
        v.serves_an_honest_peer().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Message framing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_length_over_the_channel_limit_is_refused_before_the_body() {
    let v = victim();
    let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
    result.unwrap();
    // Only the prefix: the victim must not wait for (or allocate) the body.
    let mut out = multistream::header_and(&channel_protocol(CH.0));
    out.extend(uvarint(LIMIT as u64 + 1));
    let _stream = evil.stream(&out, false).await;
    match receive_error(&conn).await {
        ConnectionError::MessageTooLarge { channel, size, max } => {
            assert_eq!((channel, size, max), (CH, LIMIT + 1, LIMIT));
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert_eq!(evil.close_code().await, u64::from(error_code::CONN_PROTOCOL_VIOLATION));
}

#[tokio::test]
async fn a_malformed_length_prefix_closes_the_connection() {
    let v = victim();
    let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
    result.unwrap();
    let mut out = multistream::header_and(&channel_protocol(CH.0));
    out.extend([0xff; 11]);
    let _stream = evil.stream(&out, false).await;
    assert!(matches!(receive_error(&conn).await, ConnectionError::Protocol(_)));
    assert_eq!(evil.close_code().await, u64::from(error_code::CONN_PROTOCOL_VIOLATION));
}

#[tokio::test]
async fn streams_that_end_early_are_reset_alone() {
    let v = victim();
    let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
    result.unwrap();
    // No length; half a body.
    let mut half = framed(CH.0, &[7; 100]);
    half.truncate(half.len() - 50);
    for bytes in [multistream::header_and(&channel_protocol(CH.0)), half] {
        let (_send, mut recv) = evil.stream(&bytes, true).await;
        assert!(
            matches!(
                read_answer(&mut recv).await,
                Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(_)))
            ),
            "the victim resets the stream"
        );
    }
    assert_eq!(conn.stats().stream_errors, 2);
    let (_s, _r) = evil.stream(&framed(CH.0, b"ok"), true).await;
    let got = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap();
    assert_eq!(got, (CH, Bytes::from_static(b"ok")));
}

#[tokio::test]
async fn a_stalled_body_is_reset_after_the_stream_timeout_and_costs_only_what_arrived() {
    let v = victim();
    let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
    result.unwrap();
    // Declares the limit, sends 10 bytes, then nothing.
    let mut out = multistream::header_and(&channel_protocol(CH.0));
    out.extend(uvarint(LIMIT as u64));
    out.extend([1; 10]);
    let (_send, mut recv) = evil.stream(&out, false).await;
    let answer = tokio::time::timeout(T, async {
        let mut got = Vec::new();
        loop {
            match recv.read_chunk(1024, true).await {
                Ok(Some(c)) => got.extend_from_slice(&c.bytes),
                Ok(None) => return Ok(got),
                Err(e) => return Err((got, e)),
            }
        }
    })
    .await
    .unwrap();
    // The echo came at once (before the body); then the reset.
    match answer {
        Err((got, quinn::ReadError::Reset(_))) => {
            assert_eq!(got, multistream::header_and(&channel_protocol(CH.0)));
        }
        other => panic!("expected the echo and a reset, got {other:?}"),
    }
    assert_eq!(conn.stats().stream_errors, 1);
    assert_eq!(conn.stats().received, 0);
}

#[tokio::test]
async fn discard_channels_are_read_and_dropped_and_bounded() {
    let mut config = Lp2pConfig::default();
    config.greeting = None;
    config.ping_on_connect = false;
    config.max_discard_size = 4096;
    let v = victim_with(config);
    let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
    result.unwrap();
    // 0x20 (consensus) is not ours but CometBFT's: read and dropped, the stream answered.
    let (_s, mut r) = evil.stream(&framed(0x20, &[0; 4096]), true).await;
    assert_eq!(
        read_answer(&mut r).await.unwrap(),
        multistream::header_and(&channel_protocol(0x20))
    );
    assert_eq!(conn.stats().discarded, 1);
    // Over the discard limit: the stream is reset, the connection stays.
    let (_s, mut r) = evil.stream(&framed(0x20, &[0; 4097]), true).await;
    assert!(read_answer(&mut r).await.is_err());
    assert_eq!(conn.stats().stream_errors, 1);
    let (_s, _r) = evil.stream(&framed(CH.0, b"mine"), true).await;
    let got = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap();
    assert_eq!(got, (CH, Bytes::from_static(b"mine")));
}

// ---------------------------------------------------------------------------------------------
// Floods
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stream_flood_is_held_at_the_stream_limit_and_timed_out() {
    let v = victim();
    let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
    result.unwrap();
    // Streams that say nothing: quinn's limit lets 256 exist at once; the 257th waits.
    let mut held = Vec::new();
    for _ in 0..256 {
        let (mut send, recv) = evil.conn.open_bi().await.unwrap();
        send.write_all(&token(HEADER)).await.unwrap();
        held.push((send, recv));
    }
    let extra = tokio::time::timeout(Duration::from_millis(200), evil.conn.open_bi()).await;
    assert!(extra.is_err(), "a 257th concurrent stream was allowed");
    // The victim gives up on each silent stream after its stream timeout: no task is left per
    // stream (no event tells; the counter is polled, bounded).
    tokio::time::timeout(T, async {
        while conn.stats().stream_errors < 256 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every silent stream timed out");
    // The credit comes back once the flooder's stack ends its halves (quinn resets a stopped
    // stream when it is dropped): QUIC never frees a stream the peer keeps open.
    drop(held);
    let more = tokio::time::timeout(T, evil.conn.open_bi()).await;
    assert!(more.is_ok(), "the slots were never freed");
    v.serves_an_honest_peer().await;
}

#[tokio::test]
async fn a_third_ping_stream_is_refused() {
    let v = victim();
    let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
    result.unwrap();
    let mut pings = Vec::new();
    for _ in 0..2 {
        let mut out = multistream::header_and(multistream::PING);
        out.extend([9; 32]);
        let (send, mut recv) = evil.stream(&out, false).await;
        let prefix = multistream::header_and(multistream::PING).len();
        let mut echo = vec![0; prefix + 32];
        tokio::time::timeout(T, recv.read_exact(&mut echo)).await.unwrap().unwrap();
        assert_eq!(&echo[prefix..], &[9; 32]);
        pings.push((send, recv));
    }
    let (_s, mut r) = evil.stream(&multistream::header_and(multistream::PING), false).await;
    match read_answer(&mut r).await {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code.into_inner(), u64::from(error_code::STREAM_RESOURCE_LIMIT_EXCEEDED));
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    assert_eq!(conn.stats().pings_answered, 2);
}

#[tokio::test]
async fn unidirectional_streams_are_refused() {
    // Served alone lp2p lets a peer open no unidirectional stream; an endpoint shared with
    // p2p-quic/1 allows 256, and lp2p stops each. Here: the shared case's limit, by hand.
    let v = victim();
    let (evil, conn, result) = evil_connect(&v, Answers::Na).await;
    result.unwrap();
    let opened = tokio::time::timeout(Duration::from_millis(300), async {
        let mut s = evil.conn.open_uni().await?;
        s.write_all(b"junk").await.map_err(|_| quinn::ConnectionError::LocallyClosed)?;
        Ok::<_, quinn::ConnectionError>(s)
    })
    .await;
    // Either the peer may open none (limit 0), or the stream is stopped.
    if let Ok(Ok(s)) = opened {
        assert!(tokio::time::timeout(T, s.stopped()).await.is_ok());
        assert_eq!(conn.stats().uni_refused, 1);
    }
    let (_s, _r) = evil.stream(&framed(CH.0, b"bidi ok"), true).await;
    let got = tokio::time::timeout(T, conn.receive()).await.unwrap().unwrap();
    assert_eq!(got.1, Bytes::from_static(b"bidi ok"));
}

// ---------------------------------------------------------------------------------------------
// Through a router
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn undecodable_messages_get_the_peer_disconnected_and_counted() {
    // lp2p cannot tell a peer of another chain by its handshake: its messages failing to decode
    // is what shows it. The router counts the drop and closes the connection as misbehaving.
    let key = NodeKey::generate();
    let transport =
        Lp2pTransport::bind(lo(), &key, EndpointConfig::default(), Lp2pConfig::default()).unwrap();
    let addr = transport.local_addr();
    let info = NodeInfo::new(key.node_id(), CHAIN, "victim", []);
    let router =
        Router::new(key, info, RouterConfig::default(), PeerManagerConfig::default(), None)
            .unwrap();
    router.add_transport(Arc::new(transport)).unwrap();
    let mut txs = router
        .open_channel::<p2p::mempool::Txs>(p2p::mempool::mempool_channel_descriptor(LIMIT))
        .unwrap();
    router.start().unwrap();

    let evil_key = NodeKey::generate();
    let endpoint = quinn::Endpoint::client(lo()).unwrap();
    let conn = endpoint
        .connect_with(evil_client(&evil_key, b"libp2p"), addr, identity::DUMMY_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    tokio::spawn(answer(conn.clone(), Answers::Na));
    // A mempool message whose field 1 (txs) has the wrong wire type (fixed32).
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&framed(0x30, &[0x0d, 0xff, 0xff, 0xff, 0xff])).await.unwrap();
    send.finish().unwrap();
    let evil = Evil { _endpoint: endpoint, conn };
    // The reactor's receive decodes it: nothing is handed over, the peer is reported.
    let (code, received) = tokio::join!(evil.close_code(), async {
        tokio::time::timeout(Duration::from_secs(2), txs.recv()).await
    });
    assert_eq!(code, u64::from(error_code::CONN_PROTOCOL_VIOLATION));
    assert!(received.is_err(), "nothing reached the reactor: {received:?}");
    assert_eq!(txs.stats().decode_errors, 1);
    router.stop().await;
}
