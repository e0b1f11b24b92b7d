//! The binary multiaddrs of QUIC v1 socket addresses (`/ip4/1.2.3.4/udp/26656/quic-v1`), as
//! carried in identify messages. Only the forms lp2p uses are understood; anything else is
//! skipped, never an error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Multicodec of `ip4` (4 bytes follow).
const IP4: u64 = 0x04;
/// Multicodec of `ip6` (16 bytes follow).
const IP6: u64 = 0x29;
/// Multicodec of `udp` (a big-endian 16-bit port follows).
const UDP: u64 = 0x0111;
/// Multicodec of `quic-v1` (RFC 9000; `quic`, 0x01cc, is draft-29).
const QUIC_V1: u64 = 0x01cd;
/// Multicodec of `p2p` (a length-prefixed peer ID multihash follows).
const P2P: u64 = 0x01a5;

fn push_varint(n: u64, out: &mut Vec<u8>) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(n, &mut buf));
}

/// `/ip4|ip6/<ip>/udp/<port>/quic-v1` in binary form.
pub fn encode_quic_v1(addr: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    match addr.ip() {
        IpAddr::V4(ip) => {
            push_varint(IP4, &mut out);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            push_varint(IP6, &mut out);
            out.extend_from_slice(&ip.octets());
        }
    }
    push_varint(UDP, &mut out);
    out.extend_from_slice(&addr.port().to_be_bytes());
    push_varint(QUIC_V1, &mut out);
    out
}

/// The socket address of a binary `/ip4|ip6/<ip>/udp/<port>/quic-v1[/p2p/<id>]` multiaddr, or
/// `None` for any other (or malformed) multiaddr.
pub fn decode_quic_v1(mut input: &[u8]) -> Option<SocketAddr> {
    let next = |input: &mut &[u8]| -> Option<u64> {
        let (code, rest) = unsigned_varint::decode::u64(input).ok()?;
        *input = rest;
        Some(code)
    };
    let take = |input: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, rest) = input.split_at_checked(n)?;
        *input = rest;
        Some(head.to_vec())
    };
    let ip = match next(&mut input)? {
        IP4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(take(&mut input, 4)?).ok()?)),
        IP6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(take(&mut input, 16)?).ok()?)),
        _ => return None,
    };
    if next(&mut input)? != UDP {
        return None;
    }
    let port = u16::from_be_bytes(<[u8; 2]>::try_from(take(&mut input, 2)?).ok()?);
    if next(&mut input)? != QUIC_V1 {
        return None;
    }
    if !input.is_empty() {
        // Only a trailing `/p2p/<peer id>` is allowed.
        if next(&mut input)? != P2P {
            return None;
        }
        let len = usize::try_from(next(&mut input)?).ok()?;
        take(&mut input, len)?;
        if !input.is_empty() {
            return None;
        }
    }
    Some(SocketAddr::new(ip, port))
}

/// The text form of a QUIC v1 multiaddr, for logs: `/ip4/1.2.3.4/udp/26656/quic-v1`.
pub fn quic_v1_text(addr: SocketAddr) -> String {
    let family = if addr.is_ipv4() { "ip4" } else { "ip6" };
    format!("/{family}/{}/udp/{}/quic-v1", addr.ip(), addr.port())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn go_listen_address_byte_for_byte() {
        // lp2p-observed.md §2.5: `/ip4/127.0.0.1/udp/34402/quic-v1` from a v0.40.0 node.
        let go = hex::decode("047f000001910286 62cd03".replace(' ', "")).unwrap();
        let addr: SocketAddr = "127.0.0.1:34402".parse().unwrap();
        assert_eq!(encode_quic_v1(addr), go);
        assert_eq!(decode_quic_v1(&go), Some(addr));
        assert_eq!(quic_v1_text(addr), "/ip4/127.0.0.1/udp/34402/quic-v1");
    }

    #[test]
    fn round_trips_and_refuses_other_forms() {
        for addr in ["[::1]:1", "10.1.2.3:65535", "[2001:db8::7]:26656"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(decode_quic_v1(&encode_quic_v1(addr)), Some(addr));
        }
        let addr: SocketAddr = "1.2.3.4:5".parse().unwrap();
        let mut with_peer = encode_quic_v1(addr);
        with_peer.extend_from_slice(&[0xa5, 0x03, 0x02, 0x00, 0x00]);
        assert_eq!(decode_quic_v1(&with_peer), Some(addr));
        let mut junk = encode_quic_v1(addr);
        junk.push(0);
        assert_eq!(decode_quic_v1(&junk), None);
        // Draft-29 `quic`, TCP, truncated, empty.
        let mut draft = encode_quic_v1(addr);
        let n = draft.len();
        draft[n - 2] = 0xcc;
        assert_eq!(decode_quic_v1(&draft), None);
        assert_eq!(decode_quic_v1(&hex::decode("047f0000010606f6").unwrap()), None);
        let full = encode_quic_v1(addr);
        for cut in 0..full.len() {
            assert_eq!(decode_quic_v1(&full[..cut]), None, "cut {cut}");
        }
    }
}
