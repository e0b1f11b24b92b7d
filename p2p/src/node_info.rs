//! [`NodeInfo`]: what two nodes exchange right after the SecretConnection handshake, as a
//! validated domain type over CometBFT's `tendermint.p2p.DefaultNodeInfo` protobuf.
//!
//! [`NodeInfo::validate`] mirrors Go's `DefaultNodeInfo.Validate` and
//! [`NodeInfo::compatible_with`] mirrors `CompatibleWith` (CometBFT v0.34/v0.38), so that a node
//! Go accepts is accepted here and vice versa. The one deliberate difference: a DNS host in
//! `listen_addr` is checked for syntax only, never resolved.

use std::collections::HashSet;
use std::fmt::Write as _;

use p2p_proto::tendermint::p2p as proto;
use prost::Message;

use crate::address::{ParseAddressError, parse_host_port};
use crate::types::{ChannelId, NodeId, NodeIdError};

/// The P2P protocol version CometBFT v0.34 to v0.38 speak.
pub const P2P_PROTOCOL: u64 = 8;
/// The block protocol version CometBFT v0.34 to v0.38 speak; peers must match it exactly.
pub const BLOCK_PROTOCOL: u64 = 11;
/// The most channels a node may advertise.
pub const MAX_CHANNELS: usize = 16;
/// The largest encoded NodeInfo accepted (protobuf body, without the length prefix).
pub const MAX_NODE_INFO_SIZE: usize = 10240;

/// The protocol versions a node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProtocolVersion {
    /// The P2P protocol version ([`P2P_PROTOCOL`]). Not checked for compatibility.
    pub p2p: u64,
    /// The block protocol version ([`BLOCK_PROTOCOL`]). Peers must have the same.
    pub block: u64,
    /// The application version. Not checked for compatibility.
    pub app: u64,
}

impl ProtocolVersion {
    /// Builds a protocol version.
    pub const fn new(p2p: u64, block: u64, app: u64) -> Self {
        Self { p2p, block, app }
    }
}

impl Default for ProtocolVersion {
    /// `p2p` [`P2P_PROTOCOL`], `block` [`BLOCK_PROTOCOL`], `app` 0.
    fn default() -> Self {
        Self::new(P2P_PROTOCOL, BLOCK_PROTOCOL, 0)
    }
}

/// A node's self-description, exchanged in the handshake (CometBFT's `DefaultNodeInfo`).
///
/// Build one with [`NodeInfo::new`] and the `with_*` methods. Values received from a peer are
/// untrusted: call [`NodeInfo::validate`] and [`NodeInfo::compatible_with`] before using them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Protocol versions.
    pub protocol_version: ProtocolVersion,
    /// The node's ID; must equal the ID authenticated by the handshake.
    pub node_id: NodeId,
    /// The address the node accepts connections on, e.g. `tcp://1.2.3.4:26656` or
    /// `1.2.3.4:26656` (an optional `scheme://` prefix, then `host:port`).
    pub listen_addr: String,
    /// The chain ID.
    pub network: String,
    /// The software version, e.g. `0.38.25`.
    pub version: String,
    /// The channels the node speaks: a set (no duplicates) of at most [`MAX_CHANNELS`], in the
    /// order they are advertised.
    pub channels: Vec<ChannelId>,
    /// A human-readable name.
    pub moniker: String,
    /// Whether the node indexes transactions: `"on"`, `"off"` or `""`.
    pub tx_index: String,
    /// The node's RPC address, e.g. `tcp://127.0.0.1:26657`, or empty.
    pub rpc_address: String,
}

impl NodeInfo {
    /// A node info with the default protocol versions (p2p 8, block 11, app 0), this crate's
    /// version as `version`, `tx_index` `"off"` and an empty `listen_addr` and `rpc_address`.
    ///
    /// Set `listen_addr` with [`NodeInfo::with_listen_addr`] before sending it: an empty one does
    /// not [validate](NodeInfo::validate).
    pub fn new(
        node_id: NodeId,
        network: impl Into<String>,
        moniker: impl Into<String>,
        channels: impl IntoIterator<Item = ChannelId>,
    ) -> Self {
        Self {
            protocol_version: ProtocolVersion::default(),
            node_id,
            listen_addr: String::new(),
            network: network.into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            channels: channels.into_iter().collect(),
            moniker: moniker.into(),
            tx_index: "off".to_owned(),
            rpc_address: String::new(),
        }
    }

    /// Sets the protocol versions.
    #[must_use]
    pub fn with_protocol_version(mut self, protocol_version: ProtocolVersion) -> Self {
        self.protocol_version = protocol_version;
        self
    }

    /// Sets the listen address (`[scheme://]host:port`).
    #[must_use]
    pub fn with_listen_addr(mut self, listen_addr: impl Into<String>) -> Self {
        self.listen_addr = listen_addr.into();
        self
    }

    /// Sets the software version.
    #[must_use]
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets `tx_index` (`"on"`, `"off"` or `""`).
    #[must_use]
    pub fn with_tx_index(mut self, tx_index: impl Into<String>) -> Self {
        self.tx_index = tx_index.into();
        self
    }

    /// Sets the RPC address.
    #[must_use]
    pub fn with_rpc_address(mut self, rpc_address: impl Into<String>) -> Self {
        self.rpc_address = rpc_address.into();
        self
    }

    /// Whether the node advertises `channel`.
    pub fn has_channel(&self, channel: ChannelId) -> bool {
        self.channels.contains(&channel)
    }

    /// Checks the fields as Go's `DefaultNodeInfo.Validate` does, in the same order:
    ///
    /// * `listen_addr`: an optional `scheme://` prefix, then `host:port` with a literal IP
    ///   (IPv6 in brackets) or a syntactically valid DNS name (not resolved) and a decimal port
    ///   from 0 to 65535;
    /// * `version`: empty, or printable ASCII (0x20 to 0x7E) that is not only spaces;
    /// * `channels`: at most [`MAX_CHANNELS`], no duplicates;
    /// * `moniker`: non-empty printable ASCII, not only spaces;
    /// * `tx_index`: `""`, `"on"` or `"off"`;
    /// * `rpc_address`: empty, or printable ASCII that is not only spaces.
    ///
    /// The node ID is valid by construction (see [`TryFrom<proto::DefaultNodeInfo>`]).
    pub fn validate(&self) -> Result<(), NodeInfoError> {
        // Our extension: in-process `memory:<node-id>` nodes advertise their memory address.
        // Go nodes never see it (they only talk to the MConn transport).
        let memory_id = self
            .listen_addr
            .strip_prefix("memory:")
            .filter(|rest| !rest.starts_with("//"))
            .and_then(|rest| rest.parse::<NodeId>().ok());
        if memory_id.is_none() {
            let host_port = match self.listen_addr.split_once("://") {
                Some((_, rest)) => rest,
                None => &self.listen_addr,
            };
            parse_host_port(&self.listen_addr, host_port, 0).map_err(|source| {
                NodeInfoError::BadListenAddr { listen_addr: self.listen_addr.clone(), source }
            })?;
        }

        if !self.version.is_empty() && !is_ascii_text(&self.version) {
            return Err(NodeInfoError::BadVersion { version: self.version.clone() });
        }

        if self.channels.len() > MAX_CHANNELS {
            return Err(NodeInfoError::TooManyChannels {
                channels: self.channels.clone(),
                max: MAX_CHANNELS,
            });
        }
        let mut seen = HashSet::with_capacity(self.channels.len());
        if let Some(dup) = self.channels.iter().find(|c| !seen.insert(**c)) {
            return Err(NodeInfoError::DuplicateChannel {
                channel: *dup,
                channels: self.channels.clone(),
            });
        }

        if !is_ascii_text(&self.moniker) {
            return Err(NodeInfoError::BadMoniker { moniker: self.moniker.clone() });
        }

        if !matches!(self.tx_index.as_str(), "" | "on" | "off") {
            return Err(NodeInfoError::BadTxIndex { tx_index: self.tx_index.clone() });
        }

        if !self.rpc_address.is_empty() && !is_ascii_text(&self.rpc_address) {
            return Err(NodeInfoError::BadRpcAddress { rpc_address: self.rpc_address.clone() });
        }
        Ok(())
    }

    /// Checks that a peer (`other`) can talk to us, as Go's `CompatibleWith`: the same block
    /// protocol, the same network (chain ID), and, if we have channels, at least one of them in
    /// common. The P2P and app versions and the software version are not compared.
    pub fn compatible_with(&self, other: &Self) -> Result<(), NodeInfoError> {
        if self.protocol_version.block != other.protocol_version.block {
            return Err(NodeInfoError::BlockProtocolMismatch {
                ours: self.protocol_version.block,
                peer: other.protocol_version.block,
            });
        }
        if self.network != other.network {
            return Err(NodeInfoError::NetworkMismatch {
                ours: self.network.clone(),
                peer: other.network.clone(),
            });
        }
        if !self.channels.is_empty() && !self.channels.iter().any(|c| other.has_channel(*c)) {
            return Err(NodeInfoError::NoCommonChannel {
                ours: self.channels.clone(),
                peer: other.channels.clone(),
            });
        }
        Ok(())
    }

    /// Decodes a protobuf `DefaultNodeInfo` body (without its length prefix) of at most
    /// [`MAX_NODE_INFO_SIZE`] bytes. Like [`TryFrom`], this does not [validate](Self::validate).
    pub fn decode(bytes: &[u8]) -> Result<Self, NodeInfoError> {
        if bytes.len() > MAX_NODE_INFO_SIZE {
            return Err(NodeInfoError::TooLarge { len: bytes.len(), max: MAX_NODE_INFO_SIZE });
        }
        let raw = proto::DefaultNodeInfo::decode(bytes).map_err(NodeInfoError::Decode)?;
        Self::try_from(raw)
    }

    /// Encodes as a protobuf `DefaultNodeInfo` body (no length prefix), byte-identical to Go.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        proto::DefaultNodeInfo::from(self).encode_to_vec()
    }
}

/// Go's `IsASCIIText` and not only spaces: non-empty, every byte in 0x20..=0x7E, some byte not
/// a space.
fn is_ascii_text(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x20..=0x7e).contains(&b)) && s.bytes().any(|b| b != b' ')
}

impl TryFrom<proto::DefaultNodeInfo> for NodeInfo {
    type Error = NodeInfoError;

    /// Converts a received `DefaultNodeInfo`, checking only the node ID: 40 **lowercase** hex
    /// characters (Go compares the string with the authenticated ID, so upper case would fail
    /// there). Missing `protocol_version` and `other` read as zeros and empty strings, as in Go.
    fn try_from(raw: proto::DefaultNodeInfo) -> Result<Self, Self::Error> {
        let node_id: NodeId = raw.default_node_id.parse().map_err(|source| {
            NodeInfoError::BadNodeId { value: raw.default_node_id.clone(), source }
        })?;
        if raw.default_node_id.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(NodeInfoError::NodeIdNotLowercase { value: raw.default_node_id });
        }
        let version = raw.protocol_version.unwrap_or_default();
        let other = raw.other.unwrap_or_default();
        Ok(Self {
            protocol_version: ProtocolVersion::new(version.p2p, version.block, version.app),
            node_id,
            listen_addr: raw.listen_addr,
            network: raw.network,
            version: raw.version,
            channels: raw.channels.into_iter().map(ChannelId).collect(),
            moniker: raw.moniker,
            tx_index: other.tx_index,
            rpc_address: other.rpc_address,
        })
    }
}

impl From<&NodeInfo> for proto::DefaultNodeInfo {
    /// Always sets `protocol_version` and `other`, as Go's encoder always emits them.
    fn from(info: &NodeInfo) -> Self {
        Self {
            protocol_version: Some(proto::ProtocolVersion {
                p2p: info.protocol_version.p2p,
                block: info.protocol_version.block,
                app: info.protocol_version.app,
            }),
            default_node_id: info.node_id.to_string(),
            listen_addr: info.listen_addr.clone(),
            network: info.network.clone(),
            version: info.version.clone(),
            channels: info.channels.iter().map(|c| c.0).collect(),
            moniker: info.moniker.clone(),
            other: Some(proto::DefaultNodeInfoOther {
                tx_index: info.tx_index.clone(),
                rpc_address: info.rpc_address.clone(),
            }),
        }
    }
}

/// Formats channels as `[0x40, 0x20]`.
fn fmt_channels(channels: &[ChannelId]) -> String {
    let mut out = String::from("[");
    for (i, c) in channels.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{c}");
    }
    out.push(']');
    out
}

/// Why a [`NodeInfo`] is malformed, invalid or incompatible.
///
/// Messages name the field and quote the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeInfoError {
    /// The encoded node info is larger than [`MAX_NODE_INFO_SIZE`].
    #[error("node info is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a protobuf `DefaultNodeInfo`.
    #[error("node info is not a valid protobuf DefaultNodeInfo: {0}")]
    Decode(#[source] prost::DecodeError),
    /// `id` is not a node ID.
    #[error("node info id {value:?} is invalid: {source}")]
    BadNodeId {
        /// The received ID.
        value: String,
        /// Why it is invalid.
        source: NodeIdError,
    },
    /// `id` has upper-case hex digits.
    #[error("node info id {value:?} must be lowercase hex")]
    NodeIdNotLowercase {
        /// The received ID.
        value: String,
    },
    /// `listen_addr` is not `[scheme://]host:port`.
    #[error(
        "node info listen_addr {listen_addr:?} is invalid (expected [scheme://]<host>:<port>): \
         {source}"
    )]
    BadListenAddr {
        /// The received listen address.
        listen_addr: String,
        /// Why it is invalid.
        source: ParseAddressError,
    },
    /// `version` is not empty and not printable ASCII, or only spaces.
    #[error(
        "node info version {version:?} must be empty or printable ASCII (0x20 to 0x7E) that is \
         not only spaces"
    )]
    BadVersion {
        /// The received version.
        version: String,
    },
    /// More than [`MAX_CHANNELS`] channels.
    #[error(
        "node info has {} channels {}, at most {max} are allowed",
        .channels.len(),
        fmt_channels(.channels)
    )]
    TooManyChannels {
        /// The received channels.
        channels: Vec<ChannelId>,
        /// The limit.
        max: usize,
    },
    /// A channel appears twice.
    #[error("node info channels {} list channel {channel} more than once", fmt_channels(.channels))]
    DuplicateChannel {
        /// The first repeated channel.
        channel: ChannelId,
        /// The received channels.
        channels: Vec<ChannelId>,
    },
    /// `moniker` is empty, not printable ASCII, or only spaces.
    #[error(
        "node info moniker {moniker:?} must be non-empty printable ASCII (0x20 to 0x7E) that is \
         not only spaces"
    )]
    BadMoniker {
        /// The received moniker.
        moniker: String,
    },
    /// `tx_index` is not `""`, `"on"` or `"off"`.
    #[error("node info tx_index {tx_index:?} must be \"on\", \"off\" or empty")]
    BadTxIndex {
        /// The received value.
        tx_index: String,
    },
    /// `rpc_address` is not empty and not printable ASCII, or only spaces.
    #[error(
        "node info rpc_address {rpc_address:?} must be empty or printable ASCII (0x20 to 0x7E) \
         that is not only spaces"
    )]
    BadRpcAddress {
        /// The received value.
        rpc_address: String,
    },
    /// The peer's block protocol differs from ours.
    #[error("block protocol mismatch: ours {ours}, peer's {peer}")]
    BlockProtocolMismatch {
        /// Our block protocol.
        ours: u64,
        /// The peer's.
        peer: u64,
    },
    /// The peer is on another network (chain ID).
    #[error("network mismatch: ours {ours:?}, peer's {peer:?}")]
    NetworkMismatch {
        /// Our chain ID.
        ours: String,
        /// The peer's.
        peer: String,
    },
    /// The peer has none of our channels.
    #[error(
        "no common channel: ours {}, peer's {}",
        fmt_channels(.ours),
        fmt_channels(.peer)
    )]
    NoCommonChannel {
        /// Our channels.
        ours: Vec<ChannelId>,
        /// The peer's.
        peer: Vec<ChannelId>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "10ba682c8ad13513971e8b56881aab8bd702bb80";
    const GOLDEN_A: &str = "8d010a040808100b1228313062613638326338616431333531333937316538623536\
                            383831616162386264373032626238301a157463703a2f2f3132372e302e302e313a\
                            3236363536220a746573742d636861696e2a07302e33382e3235320a402021222330\
                            386061003a066e6f64652d61421b0a026f6e12157463703a2f2f3132372e302e302e\
                            313a3236363537";

    fn chans(bytes: &[u8]) -> Vec<ChannelId> {
        bytes.iter().copied().map(ChannelId).collect()
    }

    fn node_a() -> NodeInfo {
        NodeInfo::new(
            ID_A.parse().unwrap(),
            "test-chain",
            "node-a",
            chans(&[0x40, 0x20, 0x21, 0x22, 0x23, 0x30, 0x38, 0x60, 0x61, 0x00]),
        )
        .with_listen_addr("tcp://127.0.0.1:26656")
        .with_version("0.38.25")
        .with_tx_index("on")
        .with_rpc_address("tcp://127.0.0.1:26657")
    }

    #[test]
    fn golden_node_a() {
        let info = node_a();
        assert_eq!(info.protocol_version, ProtocolVersion::new(8, 11, 0));
        info.validate().unwrap();
        let encoded = proto::DefaultNodeInfo::from(&info).encode_length_delimited_to_vec();
        assert_eq!(hex::encode(&encoded), GOLDEN_A);
        assert_eq!(encoded.len(), 143);
        // The body decodes back to the same value.
        let body = info.encode_to_vec();
        assert_eq!(encoded.get(2..), Some(body.as_slice()));
        assert_eq!(NodeInfo::decode(&body).unwrap(), info);
    }

    #[test]
    fn defaults() {
        let info = NodeInfo::new(ID_A.parse().unwrap(), "c", "m", chans(&[1]));
        assert_eq!(info.protocol_version, ProtocolVersion { p2p: 8, block: 11, app: 0 });
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.tx_index, "off");
        assert!(info.has_channel(ChannelId(1)));
        assert!(!info.has_channel(ChannelId(2)));
        // An empty listen address does not validate; a set one does.
        assert!(matches!(info.validate(), Err(NodeInfoError::BadListenAddr { .. })));
        info.with_listen_addr("1.2.3.4:26656").validate().unwrap();
    }

    #[test]
    fn empty_other_and_protocol_version_always_encoded() {
        let info = NodeInfo::new(ID_A.parse().unwrap(), "", "m", [])
            .with_protocol_version(ProtocolVersion::new(0, 0, 0))
            .with_tx_index("")
            .with_version("");
        let body = info.encode_to_vec();
        // Field 1 (empty ProtocolVersion) first, field 8 (empty Other) last: `0a 00` ... `42 00`.
        assert_eq!(body.get(..2), Some(&[0x0a, 0x00][..]));
        assert_eq!(body.get(body.len() - 2..), Some(&[0x42, 0x00][..]));
        assert_eq!(NodeInfo::decode(&body).unwrap(), info);
    }

    #[test]
    fn try_from_missing_optionals() {
        let raw = proto::DefaultNodeInfo { default_node_id: ID_A.into(), ..Default::default() };
        let info = NodeInfo::try_from(raw).unwrap();
        assert_eq!(info.protocol_version, ProtocolVersion::new(0, 0, 0));
        assert_eq!(info.tx_index, "");
        assert_eq!(info.rpc_address, "");
    }

    #[test]
    fn try_from_bad_ids() {
        for id in ["", "abc", "zz", &ID_A[..39]] {
            let raw = proto::DefaultNodeInfo { default_node_id: id.into(), ..Default::default() };
            let e = NodeInfo::try_from(raw).unwrap_err();
            assert!(matches!(e, NodeInfoError::BadNodeId { .. }), "{id:?}: {e:?}");
            assert!(e.to_string().contains(&format!("{id:?}")));
        }
        let upper = ID_A.to_uppercase();
        let raw = proto::DefaultNodeInfo { default_node_id: upper.clone(), ..Default::default() };
        let e = NodeInfo::try_from(raw).unwrap_err();
        assert!(matches!(e, NodeInfoError::NodeIdNotLowercase { .. }), "{e:?}");
        assert!(e.to_string().contains(&upper));
    }

    #[test]
    fn decode_limits() {
        let big = vec![0u8; MAX_NODE_INFO_SIZE + 1];
        assert!(matches!(NodeInfo::decode(&big), Err(NodeInfoError::TooLarge { .. })));
        assert!(matches!(NodeInfo::decode(&[0xff, 0xff]), Err(NodeInfoError::Decode(_))));
        // A valid encoding of exactly the limit is not rejected for its size.
        let mut info = node_a();
        let base = info.encode_to_vec().len();
        info.moniker.push_str(&"x".repeat(MAX_NODE_INFO_SIZE - base - 1)); // its length prefix grows by a byte
        let body = info.encode_to_vec();
        assert_eq!(body.len(), MAX_NODE_INFO_SIZE);
        assert_eq!(NodeInfo::decode(&body).unwrap(), info);
    }

    #[test]
    fn listen_addr_validation() {
        for ok in [
            "tcp://0.0.0.0:26656",
            "1.2.3.4:26656",
            "[::1]:0",
            "mconn://[2001:db8::1]:65535",
            "example.com:1",
            "Node-1.EXAMPLE.org:26656",
            "localhost:26656",
        ] {
            let info = node_a().with_listen_addr(ok);
            info.validate().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in [
            "",
            "tcp://",
            "1.2.3.4",
            ":26656",
            "1.2.3.4:",
            "1.2.3.4:65536",
            "1.2.3.4:http",
            "::1:80",
            "a@b:1",
            "tcp://1.2.3.4:1/x",
            "1.2.3.400:1",
            "bad_host:1",
            "[::1:1",
            " 1.2.3.4:1",
        ] {
            let e = node_a().with_listen_addr(bad).validate().unwrap_err();
            assert!(matches!(e, NodeInfoError::BadListenAddr { .. }), "{bad:?}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains("listen_addr") && msg.contains(&format!("{bad:?}")), "{msg}");
        }
    }

    #[test]
    fn field_validation() {
        let check = |info: NodeInfo, value: &str, ok: fn(&NodeInfoError) -> bool| {
            let e = info.validate().unwrap_err();
            assert!(ok(&e), "{value:?}: {e:?}");
            assert!(e.to_string().contains(value), "{e} does not mention {value:?}");
        };
        // version
        node_a().with_version("").validate().unwrap();
        node_a().with_version("v1.0.0-rc1 (abc)").validate().unwrap();
        for bad in ["   ", "1.0\t", "vé", "\u{7f}"] {
            check(node_a().with_version(bad), &format!("{bad:?}"), |e| {
                matches!(e, NodeInfoError::BadVersion { .. })
            });
        }
        // channels
        let mut info = node_a();
        info.channels = (0..16).map(ChannelId).collect();
        info.validate().unwrap();
        info.channels = (0..17).map(ChannelId).collect();
        check(info, "17 channels", |e| matches!(e, NodeInfoError::TooManyChannels { .. }));
        let mut info = node_a();
        info.channels = chans(&[0x40, 0x20, 0x40]);
        check(info, "[0x40, 0x20, 0x40]", |e| {
            matches!(e, NodeInfoError::DuplicateChannel { channel: ChannelId(0x40), .. })
        });
        let mut info = node_a();
        info.channels.clear();
        info.validate().unwrap();
        // moniker
        for bad in ["", " ", "tab\there", "ünï"] {
            let mut info = node_a();
            info.moniker = bad.into();
            check(info, &format!("moniker {bad:?}"), |e| {
                matches!(e, NodeInfoError::BadMoniker { .. })
            });
        }
        // tx_index
        node_a().with_tx_index("").validate().unwrap();
        node_a().with_tx_index("off").validate().unwrap();
        for bad in ["ON", "yes", " on"] {
            check(node_a().with_tx_index(bad), &format!("tx_index {bad:?}"), |e| {
                matches!(e, NodeInfoError::BadTxIndex { .. })
            });
        }
        // rpc_address
        node_a().with_rpc_address("").validate().unwrap();
        for bad in ["  ", "tcp://x\n"] {
            check(node_a().with_rpc_address(bad), &format!("rpc_address {bad:?}"), |e| {
                matches!(e, NodeInfoError::BadRpcAddress { .. })
            });
        }
    }

    #[test]
    fn compatibility() {
        let a = node_a();
        let mut b = node_a();
        b.node_id = "a3258dcbf45dca0df052981870f2d1441a36d145".parse().unwrap();
        b.protocol_version.p2p = 7;
        b.protocol_version.app = 99;
        b.version = "9.9.9".into();
        b.channels = chans(&[0x38]);
        a.compatible_with(&b).unwrap();

        let mut c = b.clone();
        c.protocol_version.block = 10;
        let e = a.compatible_with(&c).unwrap_err();
        assert_eq!(e, NodeInfoError::BlockProtocolMismatch { ours: 11, peer: 10 });
        assert_eq!(e.to_string(), "block protocol mismatch: ours 11, peer's 10");

        let mut c = b.clone();
        c.network = "chain-b".into();
        let mut ours = a.clone();
        ours.network = "chain-a".into();
        let e = ours.compatible_with(&c).unwrap_err();
        assert!(matches!(e, NodeInfoError::NetworkMismatch { .. }));
        assert_eq!(e.to_string(), r#"network mismatch: ours "chain-a", peer's "chain-b""#);

        let mut c = b.clone();
        c.channels = chans(&[0x01, 0x02]);
        let e = a.compatible_with(&c).unwrap_err();
        assert!(matches!(e, NodeInfoError::NoCommonChannel { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("[0x40, 0x20, 0x21, 0x22, 0x23, 0x30, 0x38, 0x60, 0x61, 0x00]"),
            "{msg}"
        );
        assert!(msg.contains("[0x01, 0x02]"), "{msg}");

        // With no channels of our own, any peer with the same chain and block protocol is fine.
        let mut empty = a.clone();
        empty.channels.clear();
        empty.compatible_with(&c).unwrap();
        // But a peer with no channels is not compatible with us.
        c.channels.clear();
        assert!(matches!(a.compatible_with(&c), Err(NodeInfoError::NoCommonChannel { .. })));
    }
}
