//! Golden wire bytes from the Tendermint/CometBFT p2p wire protocol. These
//! are byte-exact facts: if a test here fails, the schema or the generator
//! broke wire compatibility.

use p2p_proto::bytes::Bytes;
use p2p_proto::echo::{EchoMessage, PingMessage, echo_message};
use p2p_proto::prost::Message;
use p2p_proto::tendermint::crypto::{PublicKey, public_key};
use p2p_proto::tendermint::mempool;
use p2p_proto::tendermint::p2p::{
    AuthSigMessage, BytesValue, DefaultNodeInfo, DefaultNodeInfoOther, Message as PexMessage,
    NetAddress, Packet, PacketMsg, PacketPing, PacketPong, PexAddrs, PexRequest, ProtocolVersion,
    message as pex_message, packet,
};

fn delimited<M: Message>(msg: &M) -> Vec<u8> {
    msg.encode_length_delimited_to_vec()
}

fn packet_msg(channel_id: i32, eof: bool, data: Vec<u8>) -> Packet {
    Packet {
        sum: Some(packet::Sum::PacketMsg(PacketMsg { channel_id, eof, data: Bytes::from(data) })),
    }
}

#[test]
fn ping_and_pong() {
    let ping = Packet { sum: Some(packet::Sum::PacketPing(PacketPing {})) };
    let pong = Packet { sum: Some(packet::Sum::PacketPong(PacketPong {})) };
    assert_eq!(delimited(&ping), [0x02, 0x0a, 0x00]);
    assert_eq!(delimited(&pong), [0x02, 0x12, 0x00]);
    assert_eq!(Packet::decode_length_delimited(&[0x02u8, 0x0a, 0x00][..]).unwrap(), ping);
    assert_eq!(Packet::decode_length_delimited(&[0x02u8, 0x12, 0x00][..]).unwrap(), pong);
}

#[test]
fn pex_request_on_channel_0() {
    let req = PexMessage { sum: Some(pex_message::Sum::PexRequest(PexRequest {})) };
    assert_eq!(req.encode_to_vec(), [0x0a, 0x00]);
    let pkt = packet_msg(0x00, true, req.encode_to_vec());
    let wire = delimited(&pkt);
    assert_eq!(wire, hex::decode("081a0610011a020a00").unwrap());
    let back = Packet::decode_length_delimited(wire.as_slice()).unwrap();
    assert_eq!(back, pkt);
    let Some(packet::Sum::PacketMsg(msg)) = back.sum else {
        panic!("not a PacketMsg");
    };
    assert_eq!(PexMessage::decode(msg.data).unwrap(), req);
}

#[test]
fn pex_addrs_round_trip() {
    let addrs = PexMessage {
        sum: Some(pex_message::Sum::PexAddrs(PexAddrs {
            addrs: vec![NetAddress {
                id: "10ba682c8ad13513971e8b56881aab8bd702bb80".into(),
                ip: "127.0.0.1".into(),
                port: 26656,
            }],
        })),
    };
    let bytes = addrs.encode_to_vec();
    assert_eq!(PexMessage::decode(bytes.as_slice()).unwrap(), addrs);
}

#[test]
fn mempool_txs_on_channel_0x30() {
    let txs = mempool::Message {
        sum: Some(mempool::message::Sum::Txs(mempool::Txs { txs: vec![b"hello".to_vec()] })),
    };
    let pkt = packet_msg(0x30, true, txs.encode_to_vec());
    let wire = delimited(&pkt);
    assert_eq!(wire, hex::decode("111a0f083010011a090a070a0568656c6c6f").unwrap());
    assert_eq!(Packet::decode_length_delimited(wire.as_slice()).unwrap(), pkt);
}

#[test]
fn full_1024_byte_packet_msg() {
    let pkt = packet_msg(1, true, vec![0xab; 1024]);
    // Body without the length delimiter.
    assert_eq!(pkt.encoded_len(), 1034);
    assert_eq!(pkt.encode_to_vec().len(), 1034);
    // 1034 needs a two-byte varint delimiter.
    assert_eq!(delimited(&pkt).len(), 1036);
}

const NODE_INFO_HEX: &str = "8d010a040808100b1228313062613638326338616431333531333937316538623536383831616162386264373032626238301a157463703a2f2f3132372e302e302e313a3236363536220a746573742d636861696e2a07302e33382e3235320a402021222330386061003a066e6f64652d61421b0a026f6e12157463703a2f2f3132372e302e302e313a3236363537";

#[test]
fn default_node_info() {
    let info = DefaultNodeInfo {
        protocol_version: Some(ProtocolVersion { p2p: 8, block: 11, app: 0 }),
        default_node_id: "10ba682c8ad13513971e8b56881aab8bd702bb80".into(),
        listen_addr: "tcp://127.0.0.1:26656".into(),
        network: "test-chain".into(),
        version: "0.38.25".into(),
        channels: vec![0x40, 0x20, 0x21, 0x22, 0x23, 0x30, 0x38, 0x60, 0x61, 0x00],
        moniker: "node-a".into(),
        other: Some(DefaultNodeInfoOther {
            tx_index: "on".into(),
            rpc_address: "tcp://127.0.0.1:26657".into(),
        }),
    };
    let golden = hex::decode(NODE_INFO_HEX).unwrap();
    assert_eq!(golden.len(), 143);
    assert_eq!(delimited(&info), golden);
    assert_eq!(DefaultNodeInfo::decode_length_delimited(golden.as_slice()).unwrap(), info);
}

#[test]
fn bytes_value_ephemeral_key() {
    let value = BytesValue { value: vec![0x5a; 32] };
    let wire = delimited(&value);
    assert_eq!(wire.len(), 35);
    assert_eq!(wire.get(..3), Some(&[0x22u8, 0x0a, 0x20][..]));
    assert_eq!(BytesValue::decode_length_delimited(wire.as_slice()).unwrap(), value);
}

#[test]
fn auth_sig_message_round_trip() {
    let msg = AuthSigMessage {
        pub_key: Some(PublicKey { sum: Some(public_key::Sum::Ed25519(vec![7; 32])) }),
        sig: vec![9; 64],
    };
    let wire = delimited(&msg);
    // delimiter 0x66; pub_key: 0a 22 (0a 20 <32 bytes>); sig: 12 40 <64 bytes>.
    assert_eq!(wire.get(..5), Some(&[0x66u8, 0x0a, 0x22, 0x0a, 0x20][..]));
    assert_eq!(AuthSigMessage::decode_length_delimited(wire.as_slice()).unwrap(), msg);
}

#[test]
fn echo_round_trip() {
    let ping = EchoMessage {
        inner: Some(echo_message::Inner::Ping(PingMessage { content: "hi".into() })),
    };
    let bytes = ping.encode_to_vec();
    assert_eq!(bytes, [0x0a, 0x04, 0x0a, 0x02, b'h', b'i']);
    assert_eq!(EchoMessage::decode(bytes.as_slice()).unwrap(), ping);
    // The versioned path names the same types.
    let _: p2p_proto::p2p::echo::v1::PongMessage = p2p_proto::echo::PongMessage::default();
}
