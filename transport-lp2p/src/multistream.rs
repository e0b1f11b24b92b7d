//! multistream-select 1.0, sans I/O: the token encoding and a bounded incremental parser.
//!
//! Every message is `uvarint(len(text) + 1) ‖ text ‖ '\n'`. An initiator sends the header
//! [`HEADER`] and a protocol ID; the responder sends the header and either echoes the protocol
//! (accepted) or answers [`NA`] (the initiator may then propose another). Tokens longer than
//! [`MAX_TOKEN`] bytes are refused, as go-multistream does.

use std::fmt;

/// The multistream-select 1.0 header token.
pub const HEADER: &str = "/multistream/1.0.0";

/// The refusal token ("not available").
pub const NA: &str = "na";

/// Longest token accepted, newline included (go-multistream's limit).
pub const MAX_TOKEN: usize = 1024;

/// A token violating multistream-select 1.0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The length prefix is not a valid (minimal, 64-bit) uvarint.
    #[error("malformed multistream length prefix")]
    BadLength,
    /// The token is longer than [`MAX_TOKEN`] bytes.
    #[error("multistream token of {0} bytes exceeds the limit of {MAX_TOKEN}")]
    TooLong(u64),
    /// The token does not end with a newline.
    #[error("multistream token does not end with a newline")]
    NoNewline,
    /// The token is not UTF-8.
    #[error("multistream token is not UTF-8")]
    NotUtf8,
    /// The peer's first token is not the multistream-select 1.0 header.
    #[error("expected the multistream header {HEADER:?}, got {0:?}")]
    BadHeader(String),
}

/// Appends the encoding of `token` (without newline) to `out`.
pub fn encode(token: &str, out: &mut Vec<u8>) {
    let mut buf = unsigned_varint::encode::usize_buffer();
    out.extend_from_slice(unsigned_varint::encode::usize(token.len() + 1, &mut buf));
    out.extend_from_slice(token.as_bytes());
    out.push(b'\n');
}

/// The encoding of `header ‖ token`: what an initiator sends to propose `token`, and what a
/// responder sends to accept it.
pub fn header_and(token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER.len() + token.len() + 6);
    encode(HEADER, &mut out);
    encode(token, &mut out);
    out
}

/// Parses one token from the start of `input`: `Ok(None)` if more bytes are needed, else the
/// token (without newline) and the number of bytes it took.
pub fn parse(input: &[u8]) -> Result<Option<(&str, usize)>, TokenError> {
    let (len, rest) = match unsigned_varint::decode::u64(input) {
        Ok(x) => x,
        Err(unsigned_varint::decode::Error::Insufficient) => {
            // A prefix longer than two bytes would already exceed the token limit.
            return if input.len() >= 3 { Err(TokenError::BadLength) } else { Ok(None) };
        }
        Err(_) => return Err(TokenError::BadLength),
    };
    if len > MAX_TOKEN as u64 {
        return Err(TokenError::TooLong(len));
    }
    let len = len as usize;
    let prefix = input.len() - rest.len();
    let Some(body) = rest.get(..len) else { return Ok(None) };
    let Some((&b'\n', text)) = body.split_last() else { return Err(TokenError::NoNewline) };
    let text = std::str::from_utf8(text).map_err(|_| TokenError::NotUtf8)?;
    Ok(Some((text, prefix + len)))
}

/// A protocol a stream may be opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `/p2p/cometbft/1.0.0/channel/0xNN`: one CometBFT channel message.
    Channel(u8),
    /// `/ipfs/id/1.0.0`: identify.
    Identify,
    /// `/ipfs/ping/1.0.0`: ping.
    Ping,
}

/// The CometBFT channel protocol prefix (`lp2p/stream.go` `ProtocolIDPrefix`).
pub const CHANNEL_PREFIX: &str = "/p2p/cometbft/1.0.0/channel/0x";
/// The identify protocol.
pub const IDENTIFY: &str = "/ipfs/id/1.0.0";
/// The ping protocol.
pub const PING: &str = "/ipfs/ping/1.0.0";

impl Protocol {
    /// Recognises a protocol ID. Channel IDs are exactly two lower-case hex digits, as Go's
    /// `%02x` writes them.
    pub fn parse(id: &str) -> Option<Self> {
        match id {
            IDENTIFY => Some(Self::Identify),
            PING => Some(Self::Ping),
            _ => {
                let hex = id.strip_prefix(CHANNEL_PREFIX)?;
                let lower = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
                if hex.len() != 2 || !hex.bytes().all(lower) {
                    return None;
                }
                u8::from_str_radix(hex, 16).ok().map(Self::Channel)
            }
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(ch) => write!(f, "{CHANNEL_PREFIX}{ch:02x}"),
            Self::Identify => f.write_str(IDENTIFY),
            Self::Ping => f.write_str(PING),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    /// Byte-exact tokens from `wire-lp2p.md` §4 and `lp2p-observed.md` §2.2.
    #[test]
    fn tokens_match_go_byte_for_byte() {
        let cases: [(&str, &str); 6] = [
            (HEADER, "132f6d756c746973747265616d2f312e302e300a"),
            (
                "/p2p/cometbft/1.0.0/channel/0x20",
                "212f7032702f636f6d65746266742f312e302e302f6368616e6e656c2f307832300a",
            ),
            (IDENTIFY, "0f2f697066732f69642f312e302e300a"),
            ("/ipfs/id/push/1.0.0", "142f697066732f69642f707573682f312e302e300a"),
            (PING, "112f697066732f70696e672f312e302e300a"),
            (NA, "036e610a"),
        ];
        for (token, hex) in cases {
            let mut out = Vec::new();
            encode(token, &mut out);
            assert_eq!(hex::encode(&out), hex, "{token}");
            assert_eq!(parse(&out).unwrap(), Some((token, out.len())));
        }
        // The observed mempool frame's multistream part.
        let both = header_and(&Protocol::Channel(0x30).to_string());
        assert_eq!(both.len(), 20 + 34);
        assert_eq!(both[20], 0x21);
    }

    #[test]
    fn incremental_and_bounded() {
        let mut all = Vec::new();
        encode(HEADER, &mut all);
        for cut in 0..all.len() {
            assert_eq!(parse(&all[..cut]).unwrap(), None, "cut {cut}");
        }
        // Longest allowed token, then one byte more.
        let long = "x".repeat(MAX_TOKEN - 1);
        let mut out = Vec::new();
        encode(&long, &mut out);
        assert_eq!(parse(&out).unwrap().unwrap().1, out.len());
        let mut out = Vec::new();
        encode(&format!("{long}x"), &mut out);
        assert_eq!(parse(&out), Err(TokenError::TooLong(MAX_TOKEN as u64 + 1)));
        // Declared huge: refused from the prefix alone.
        assert_eq!(parse(&[0xff, 0xff, 0x03]), Err(TokenError::TooLong(0xffff)));
        assert_eq!(parse(&[0x80, 0x80, 0x80]), Err(TokenError::BadLength));
        assert_eq!(parse(&[0x80, 0x00]), Err(TokenError::BadLength), "not minimal");
        assert_eq!(parse(b"\x03na!"), Err(TokenError::NoNewline));
        assert_eq!(parse(b"\x00"), Err(TokenError::NoNewline));
        assert_eq!(parse(b"\x03\xff\xfe\n"), Err(TokenError::NotUtf8));
    }

    #[test]
    fn protocol_ids() {
        for ch in [0x00u8, 0x20, 0x30, 0x40, 0x61, 0xaa, 0xff] {
            let id = Protocol::Channel(ch).to_string();
            assert_eq!(Protocol::parse(&id), Some(Protocol::Channel(ch)), "{id}");
        }
        assert_eq!(Protocol::Channel(0x0a).to_string(), "/p2p/cometbft/1.0.0/channel/0x0a");
        assert_eq!(Protocol::parse(IDENTIFY), Some(Protocol::Identify));
        assert_eq!(Protocol::parse(PING), Some(Protocol::Ping));
        for bad in [
            "/p2p/cometbft/1.0.0/channel/0xAA",
            "/p2p/cometbft/1.0.0/channel/0x1",
            "/p2p/cometbft/1.0.0/channel/0x123",
            "/p2p/cometbft/1.0.0/channel/0x+1",
            "/p2p/cometbft/2.0.0/channel/0x20",
            "/ipfs/id/push/1.0.0",
            "/libp2p/circuit/relay/0.2.0/stop",
            "",
        ] {
            assert_eq!(Protocol::parse(bad), None, "{bad}");
        }
    }
}
