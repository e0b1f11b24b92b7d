//! Node addresses (`mconn://id@host:port`, `quic://id@host:port`, `memory:id`, legacy
//! `id@host:port`) and the resolved [`Endpoint`]s transports dial.
//!
//! # Accepted forms
//!
//! | Input                              | Meaning                                             |
//! |------------------------------------|-----------------------------------------------------|
//! | `mconn://<id>@<host>:<port>`       | MConnection over TCP                                |
//! | `quic://<id>@<host>:<port>`        | QUIC                                                |
//! | `lp2p://<peer-id>@<host>:<port>`   | CometBFT's libp2p over QUIC (`12D3KooW…` peer ID)   |
//! | `<scheme>://<id>@<host>:<port>`    | any other transport registered at runtime           |
//! | `<scheme>:<id>`                    | an opaque address, e.g. `memory:<id>`               |
//! | `<id>@<host>:<port>`               | legacy CometBFT form, means `mconn`                 |
//! | `tcp://<id>@<host>:<port>`         | CometBFT config form, normalised to `mconn`         |
//!
//! The host is an IPv4 address, a bracketed IPv6 address (`[::1]`) or a DNS name (RFC 1123,
//! lowercased, resolved on every dial). The port is a decimal number from 1 to 65535. Schemes,
//! node IDs and DNS names are normalised to lowercase, so `parse(addr.to_string()) == addr`.
//! Nothing is trimmed: whitespace anywhere is an error.
//!
//! `lp2p` addresses name the node by its libp2p peer ID (`12D3KooW…`, case-sensitive base58),
//! which embeds the node's ed25519 key (see [`crate::peer_id`]); the [`NodeId`] is derived
//! from it. A hex node ID cannot be turned into a peer ID (it is a hash), so an `lp2p` address
//! with one is an error, and only `lp2p` addresses take a peer ID.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;

use crate::dns::{DnsError, Resolver};
use crate::peer_id::{self, PeerIdError};
use crate::types::{NodeId, NodeIdError};

/// The forms a node address may take, for error messages.
const EXPECTED: &str = "expected mconn://<node-id>@<host>:<port>, quic://<node-id>@<host>:<port>, \
                        lp2p://<12D3KooW-peer-id>@<host>:<port>, <node-id>@<host>:<port> or \
                        memory:<node-id>";

/// A transport protocol, named by its URL scheme (`mconn`, `quic`, `memory`, ...).
///
/// Schemes are lowercase ASCII: a letter followed by letters, digits, `+`, `-` or `.`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(Cow<'static, str>);

impl Protocol {
    /// MConnection over TCP (CometBFT/Tendermint wire protocol).
    pub const MCONN: Self = Self(Cow::Borrowed("mconn"));
    /// Our native QUIC protocol.
    pub const QUIC: Self = Self(Cow::Borrowed("quic"));
    /// The in-process memory transport used by tests and examples.
    pub const MEMORY: Self = Self(Cow::Borrowed("memory"));
    /// CometBFT's libp2p-over-QUIC transport (`lp2p`, CometBFT v0.39+): addresses carry the
    /// libp2p peer ID. Served by the `p2p-transport-lp2p` crate.
    pub const LP2P: Self = Self(Cow::Borrowed("lp2p"));

    /// Validates a URL scheme and returns it as a protocol, lowercased.
    ///
    /// A scheme is an ASCII letter followed by ASCII letters, digits, `+`, `-` or `.`
    /// (RFC 3986 §3.1). Upper-case letters are accepted and lowercased. Note that `tcp` is *not*
    /// mapped to [`Protocol::MCONN`] here; only address parsing does that.
    pub fn new(scheme: &str) -> Result<Self, ParseAddressError> {
        if !is_valid_scheme(scheme) {
            return Err(ParseAddressError::BadProtocol { scheme: scheme.to_owned() });
        }
        let lower = scheme.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "mconn" => Self::MCONN,
            "quic" => Self::QUIC,
            "memory" => Self::MEMORY,
            "lp2p" => Self::LP2P,
            _ => Self(Cow::Owned(lower)),
        })
    }

    /// The scheme, lowercase.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether addresses of this protocol must have a host and port (`mconn`, `quic`, `lp2p`).
    fn needs_host(&self) -> bool {
        *self == Self::MCONN || *self == Self::QUIC || *self == Self::LP2P
    }

    /// Whether addresses of this protocol must not have a host and port (`memory`).
    fn takes_no_host(&self) -> bool {
        *self == Self::MEMORY
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol({})", self.0)
    }
}

impl FromStr for Protocol {
    type Err = ParseAddressError;

    /// Same as [`Protocol::new`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Whether `s` is a valid URL scheme (RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`).
fn is_valid_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// The host part of a node address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Host {
    /// A literal IP address.
    Ip(IpAddr),
    /// A DNS name, lowercase, resolved on every dial.
    Dns(String),
}

impl fmt::Display for Host {
    /// Prints an IP address as is (IPv6 without brackets) or the DNS name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Dns(name) => f.write_str(name),
        }
    }
}

impl FromStr for Host {
    type Err = ParseAddressError;

    /// Parses an IPv4 address, an IPv6 address with or without brackets, or a DNS name
    /// (validated against RFC 1123 and lowercased; not resolved).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.chars().any(char::is_whitespace) {
            return Err(ParseAddressError::Whitespace { input: s.to_owned() });
        }
        if let Some(inner) = s.strip_prefix('[') {
            let Some(inner) = inner.strip_suffix(']') else {
                return Err(ParseAddressError::UnclosedBracket { input: s.to_owned() });
            };
            return parse_bracketed_ipv6(s, inner);
        }
        if let Ok(ip) = s.parse::<Ipv6Addr>() {
            return Ok(Self::Ip(IpAddr::V6(ip)));
        }
        parse_host(s, s)
    }
}

/// Where a node can be reached: protocol, node ID and either host and port or an opaque path.
///
/// An `lp2p` address also holds the node's public key, taken from its libp2p peer ID.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    protocol: Protocol,
    node_id: NodeId,
    /// The key named by a libp2p peer ID (`lp2p` addresses), validated; printed as that ID.
    /// Raw bytes keep the address small.
    key: Option<[u8; 32]>,
    target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    HostPort(Host, u16),
    Opaque,
}

impl NodeAddress {
    /// An address with a host and port, e.g. `mconn://<id>@1.2.3.4:26656`.
    ///
    /// No validation happens here: a `memory` protocol, a port of 0 or a [`Host::Dns`] that is
    /// not a valid DNS name make an address that prints but does not parse back. Parse user
    /// input with [`str::parse`] instead.
    pub fn new_host(protocol: Protocol, node_id: NodeId, host: Host, port: u16) -> Self {
        Self { protocol, node_id, key: None, target: Target::HostPort(host, port) }
    }

    /// An address naming the node by its public key, printed as its libp2p peer ID, e.g.
    /// `lp2p://12D3KooW…@1.2.3.4:26656` (the node ID is derived from the key).
    pub fn new_with_key(protocol: Protocol, key: VerifyingKey, host: Host, port: u16) -> Self {
        Self {
            protocol,
            node_id: NodeId::from_public_key(&key),
            key: Some(key.to_bytes()),
            target: Target::HostPort(host, port),
        }
    }

    /// An opaque address without host and port, e.g. `memory:<id>`.
    ///
    /// No validation happens here: an opaque `mconn` or `quic` address prints but does not
    /// parse back.
    pub fn new_opaque(protocol: Protocol, node_id: NodeId) -> Self {
        Self { protocol, node_id, key: None, target: Target::Opaque }
    }

    /// The same node ID and host and port (or opaque path) under another protocol, e.g. the QUIC
    /// twin of an MConn address. The public key, if any, is kept only for `lp2p` (other
    /// protocols print the hex node ID); an `lp2p` twin of an address without a key prints but
    /// does not parse back.
    pub fn with_protocol(&self, protocol: Protocol) -> Self {
        let key = if protocol == Protocol::LP2P { self.key } else { None };
        Self { protocol, node_id: self.node_id, key, target: self.target.clone() }
    }

    /// The node's public key, if the address names it (`lp2p` addresses do).
    pub fn public_key(&self) -> Option<VerifyingKey> {
        self.key.and_then(|k| VerifyingKey::from_bytes(&k).ok())
    }

    /// The protocol (URL scheme) of this address.
    pub fn protocol(&self) -> &Protocol {
        &self.protocol
    }

    /// The node ID this address claims to reach; a dial must prove it.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Host and port, if this address has them (`memory:` addresses do not).
    pub fn host_port(&self) -> Option<(&Host, u16)> {
        match &self.target {
            Target::HostPort(h, p) => Some((h, *p)),
            Target::Opaque => None,
        }
    }

    /// Resolves this address to the endpoints a transport can dial, with `resolver` for a DNS
    /// host.
    ///
    /// * an IP host gives one socket endpoint, without a DNS query;
    /// * a DNS host is looked up with `resolver` (A and AAAA; the resolver's cache follows the
    ///   records' TTLs, so calling this on every dial follows DNS changes): every address found,
    ///   IPv6 and IPv4 interleaved, IPv6 first, without duplicates (see [`crate::dns`]);
    /// * an opaque address gives one [`EndpointAddr::Path`] holding the node ID.
    pub async fn resolve_with(&self, resolver: &Resolver) -> Result<Vec<Endpoint>, ResolveError> {
        match &self.target {
            Target::HostPort(Host::Dns(name), port) => Ok(resolver
                .lookup(name, *port)
                .await?
                .into_iter()
                .map(|addr| Endpoint::socket(self.protocol.clone(), addr))
                .collect()),
            _ => Ok(self.literal_endpoints().unwrap_or_default()),
        }
    }

    /// Resolves this address like [`resolve_with`](Self::resolve_with), a DNS host with a
    /// [`Resolver::system`] made for this call.
    ///
    /// That resolver, and so its cache, lives for this call only: code that resolves
    /// repeatedly (the [`Router`](crate::Router) does on every dial) should keep a [`Resolver`]
    /// and call [`resolve_with`](Self::resolve_with).
    pub async fn resolve(&self) -> Result<Vec<Endpoint>, ResolveError> {
        match &self.target {
            Target::HostPort(Host::Dns(name), port) => {
                let resolver = Resolver::system().map_err(|source| ResolveError::Setup {
                    host: name.clone(),
                    port: *port,
                    source,
                })?;
                self.resolve_with(&resolver).await
            }
            _ => Ok(self.literal_endpoints().unwrap_or_default()),
        }
    }

    /// The endpoints of an address that needs no DNS (an IP host or an opaque address), or
    /// `None` for a DNS host.
    pub(crate) fn literal_endpoints(&self) -> Option<Vec<Endpoint>> {
        match &self.target {
            Target::Opaque => Some(vec![Endpoint {
                protocol: self.protocol.clone(),
                addr: EndpointAddr::Path(self.node_id.to_string()),
            }]),
            Target::HostPort(Host::Ip(ip), port) => {
                Some(vec![Endpoint::socket(self.protocol.clone(), SocketAddr::new(*ip, *port))])
            }
            Target::HostPort(Host::Dns(_), _) => None,
        }
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = match self.public_key() {
            Some(key) => peer_id::libp2p_peer_id(&key),
            None => self.node_id.to_string(),
        };
        let protocol = &self.protocol;
        match &self.target {
            Target::HostPort(Host::Ip(IpAddr::V6(ip)), port) => {
                write!(f, "{protocol}://{id}@[{ip}]:{port}")
            }
            Target::HostPort(Host::Ip(ip), port) => write!(f, "{protocol}://{id}@{ip}:{port}"),
            Target::HostPort(Host::Dns(name), port) => {
                write!(f, "{protocol}://{id}@{name}:{port}")
            }
            Target::Opaque => write!(f, "{protocol}:{id}"),
        }
    }
}

impl fmt::Debug for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeAddress({self})")
    }
}

/// Why a string is not a valid node address (or protocol, or host).
///
/// Every message quotes the rejected input and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseAddressError {
    /// The input is empty.
    #[error("empty node address: {EXPECTED}")]
    Empty,
    /// The input contains whitespace (nothing is trimmed).
    #[error("node address {input:?} contains whitespace: remove it ({EXPECTED})")]
    Whitespace {
        /// The rejected input.
        input: String,
    },
    /// [`Protocol::new`] was given an invalid scheme.
    #[error(
        "invalid protocol scheme {scheme:?}: expected an ASCII letter followed by letters, \
         digits, '+', '-' or '.', e.g. mconn or quic"
    )]
    BadProtocol {
        /// The rejected scheme.
        scheme: String,
    },
    /// The scheme before `:` or `://` is not a valid URL scheme.
    #[error(
        "node address {input:?} has an invalid scheme {scheme:?}: a scheme is an ASCII letter \
         followed by letters, digits, '+', '-' or '.' ({EXPECTED})"
    )]
    BadScheme {
        /// The rejected input.
        input: String,
        /// The offending scheme.
        scheme: String,
    },
    /// There is no node ID (no `<node-id>@` before the host, or an empty one).
    #[error("node address {input:?} has no node ID: {EXPECTED}")]
    MissingNodeId {
        /// The rejected input.
        input: String,
    },
    /// The node ID is not 40 hex characters.
    #[error("node address {input:?} has an invalid node ID: {source}")]
    BadNodeId {
        /// The rejected input.
        input: String,
        /// What is wrong with the node ID.
        source: NodeIdError,
    },
    /// An `lp2p` address whose ID is not the libp2p peer ID of an ed25519 key.
    #[error(
        "node address {input:?} has an invalid libp2p peer ID: {source}; an lp2p address names \
         the node by its 12D3KooW... peer ID (`cometbft show-node-id --libp2p` or \
         `p2pd show-node-address` print it)"
    )]
    BadPeerId {
        /// The rejected input.
        input: String,
        /// What is wrong with the peer ID.
        source: PeerIdError,
    },
    /// An `lp2p` address with a hex node ID, which cannot be turned into a peer ID.
    #[error(
        "node address {input:?}: lp2p addresses need the node's libp2p peer ID (12D3KooW...), \
         not its hex node ID, which cannot be turned into one (`cometbft show-node-id --libp2p` \
         or `p2pd show-node-address` print it)"
    )]
    Lp2pNeedsPeerId {
        /// The rejected input.
        input: String,
    },
    /// A libp2p peer ID in an address of another protocol (only `lp2p` takes one).
    #[error(
        "node address {input:?}: only lp2p:// addresses take a libp2p peer ID; {protocol} \
         addresses name the node by its 40-hex node ID"
    )]
    PeerIdNotAllowed {
        /// The rejected input.
        input: String,
        /// The protocol.
        protocol: Protocol,
    },
    /// There is a `user:password@` part instead of a node ID.
    #[error(
        "node address {input:?} has a user:password part; only a node ID may stand before '@' \
         ({EXPECTED})"
    )]
    UserInfo {
        /// The rejected input.
        input: String,
    },
    /// There is no host after the node ID.
    #[error("node address {input:?} has no host: expected <scheme>://<node-id>@<host>:<port>")]
    MissingHost {
        /// The rejected input.
        input: String,
    },
    /// The host is neither an IP address nor a valid DNS name.
    #[error(
        "node address {input:?} has an invalid host {host:?}: {reason}; expected an IPv4 \
         address, a bracketed IPv6 address such as [::1] or a DNS name"
    )]
    BadHost {
        /// The rejected input.
        input: String,
        /// The offending host.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An IPv6 host without brackets (the port would be ambiguous).
    #[error(
        "node address {input:?}: the host in {host_port:?} looks like an IPv6 address without \
         brackets; write it as [<ipv6>]:<port>, e.g. [::1]:26656"
    )]
    Ipv6NeedsBrackets {
        /// The rejected input.
        input: String,
        /// The host-and-port part.
        host_port: String,
    },
    /// A `[` without its `]`.
    #[error("node address {input:?} has an unclosed '[': write IPv6 hosts as [<ipv6>]:<port>")]
    UnclosedBracket {
        /// The rejected input.
        input: String,
    },
    /// There is no port, or it is empty.
    #[error(
        "node address {input:?} has no port: expected <host>:<port> with a port from 1 to 65535"
    )]
    MissingPort {
        /// The rejected input.
        input: String,
    },
    /// The port is not a decimal number in range.
    #[error(
        "node address {input:?} has an invalid port {port:?}: expected a decimal number from \
         {min} to 65535"
    )]
    BadPort {
        /// The rejected input.
        input: String,
        /// The offending port text.
        port: String,
        /// The smallest port allowed here.
        min: u16,
    },
    /// Text (a path, query or fragment, or junk after `]`) follows the host and port.
    #[error(
        "node address {input:?} has unexpected text {suffix:?} after the host and port: paths, \
         queries and fragments are not allowed ({EXPECTED})"
    )]
    UnexpectedSuffix {
        /// The rejected input.
        input: String,
        /// The unexpected text.
        suffix: String,
    },
    /// An opaque address (`<scheme>:<node-id>`) for a protocol that needs a host and port.
    #[error(
        "node address {input:?}: protocol {protocol} needs a host and port; write \
         {protocol}://<node-id>@<host>:<port>"
    )]
    ProtocolNeedsHost {
        /// The rejected input.
        input: String,
        /// The protocol.
        protocol: Protocol,
    },
    /// A host address (`<scheme>://...`) for a protocol that takes none (`memory`).
    #[error(
        "node address {input:?}: protocol {protocol} takes no host or port; write \
         {protocol}:<node-id>"
    )]
    ProtocolTakesNoHost {
        /// The rejected input.
        input: String,
        /// The protocol.
        protocol: Protocol,
    },
    /// `<scheme>:<node-id>@<host>...`: a host in an opaque address (the `//` is missing).
    #[error(
        "node address {input:?} has '@' but no '//' after the scheme: write \
         {protocol}://<node-id>@<host>:<port>, or {protocol}:<node-id> for an address without \
         host"
    )]
    OpaqueWithHost {
        /// The rejected input.
        input: String,
        /// The protocol.
        protocol: Protocol,
    },
}

impl FromStr for NodeAddress {
    type Err = ParseAddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ParseAddressError::Empty);
        }
        if input.chars().any(char::is_whitespace) {
            return Err(ParseAddressError::Whitespace { input: input.to_owned() });
        }
        // Hierarchical form: `<scheme>://<node-id>@<host>:<port>`.
        if let Some((scheme, authority)) = input.split_once("://") {
            let protocol = address_protocol(input, scheme)?;
            if protocol.takes_no_host() {
                return Err(ParseAddressError::ProtocolTakesNoHost {
                    input: input.to_owned(),
                    protocol,
                });
            }
            return parse_host_address(input, protocol, authority);
        }
        let at = input.find('@');
        // Opaque form: `<scheme>:<node-id>`, the `:` coming before any `@`.
        if let Some((scheme, rest)) = input.split_once(':')
            && at.is_none_or(|at| scheme.len() < at)
        {
            let protocol = address_protocol(input, scheme)?;
            if rest.contains('@') {
                return Err(ParseAddressError::OpaqueWithHost {
                    input: input.to_owned(),
                    protocol,
                });
            }
            if protocol.needs_host() {
                return Err(ParseAddressError::ProtocolNeedsHost {
                    input: input.to_owned(),
                    protocol,
                });
            }
            if rest.is_empty() {
                return Err(ParseAddressError::MissingNodeId { input: input.to_owned() });
            }
            let node_id = parse_node_id(input, rest)?;
            return Ok(Self::new_opaque(protocol, node_id));
        }
        // Legacy CometBFT form: `<node-id>@<host>:<port>`.
        if at.is_some() {
            return parse_host_address(input, Protocol::MCONN, input);
        }
        // Neither `:` nor `@`.
        if input.parse::<NodeId>().is_ok() {
            Err(ParseAddressError::MissingHost { input: input.to_owned() })
        } else {
            Err(ParseAddressError::MissingNodeId { input: input.to_owned() })
        }
    }
}

/// The protocol of an address scheme: validated, lowercased, `tcp` mapped to `mconn`.
fn address_protocol(input: &str, scheme: &str) -> Result<Protocol, ParseAddressError> {
    if scheme.eq_ignore_ascii_case("tcp") {
        return Ok(Protocol::MCONN);
    }
    Protocol::new(scheme).map_err(|_| ParseAddressError::BadScheme {
        input: input.to_owned(),
        scheme: scheme.to_owned(),
    })
}

/// Parses `<node-id>@<host>:<port>` (the part after `scheme://`, or a whole legacy address).
fn parse_host_address(
    input: &str,
    protocol: Protocol,
    authority: &str,
) -> Result<NodeAddress, ParseAddressError> {
    let Some((id, host_port)) = authority.split_once('@') else {
        return Err(if authority.parse::<NodeId>().is_ok() {
            ParseAddressError::MissingHost { input: input.to_owned() }
        } else {
            ParseAddressError::MissingNodeId { input: input.to_owned() }
        });
    };
    if id.contains(':') {
        return Err(ParseAddressError::UserInfo { input: input.to_owned() });
    }
    if id.is_empty() {
        return Err(ParseAddressError::MissingNodeId { input: input.to_owned() });
    }
    if protocol == Protocol::LP2P {
        if id.parse::<NodeId>().is_ok() {
            return Err(ParseAddressError::Lp2pNeedsPeerId { input: input.to_owned() });
        }
        let key = peer_id::parse_libp2p_peer_id(id)
            .map_err(|source| ParseAddressError::BadPeerId { input: input.to_owned(), source })?;
        let (host, port) = parse_host_port(input, host_port, 1)?;
        return Ok(NodeAddress::new_with_key(protocol, key, host, port));
    }
    if peer_id::looks_like_peer_id(id) && peer_id::parse_libp2p_peer_id(id).is_ok() {
        return Err(ParseAddressError::PeerIdNotAllowed { input: input.to_owned(), protocol });
    }
    let node_id = parse_node_id(input, id)?;
    let (host, port) = parse_host_port(input, host_port, 1)?;
    Ok(NodeAddress::new_host(protocol, node_id, host, port))
}

fn parse_node_id(input: &str, id: &str) -> Result<NodeId, ParseAddressError> {
    id.parse().map_err(|source| ParseAddressError::BadNodeId { input: input.to_owned(), source })
}

/// Parses `<host>:<port>` with the port at least `min_port`. `input` is quoted in errors.
///
/// Shared with [`crate::node_info`], which accepts port 0 in a `listen_addr` as Go does.
pub(crate) fn parse_host_port(
    input: &str,
    host_port: &str,
    min_port: u16,
) -> Result<(Host, u16), ParseAddressError> {
    if host_port.is_empty() {
        return Err(ParseAddressError::MissingHost { input: input.to_owned() });
    }
    if host_port.chars().any(char::is_whitespace) {
        return Err(ParseAddressError::Whitespace { input: input.to_owned() });
    }
    let end = host_port.find(['/', '?', '#']).unwrap_or(host_port.len());
    let (host_port, suffix) = host_port.split_at(end);
    if !suffix.is_empty() {
        return Err(ParseAddressError::UnexpectedSuffix {
            input: input.to_owned(),
            suffix: suffix.to_owned(),
        });
    }

    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some((inner, after)) = bracketed.split_once(']') else {
            return Err(ParseAddressError::UnclosedBracket { input: input.to_owned() });
        };
        let host = parse_bracketed_ipv6(input, inner)?;
        let port = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => {
                return Err(ParseAddressError::MissingPort { input: input.to_owned() });
            }
            None => {
                return Err(ParseAddressError::UnexpectedSuffix {
                    input: input.to_owned(),
                    suffix: after.to_owned(),
                });
            }
        };
        (host, port)
    } else {
        let colons = host_port.matches(':').count();
        if colons >= 2
            && (host_port.parse::<Ipv6Addr>().is_ok()
                || host_port.rsplit_once(':').is_some_and(|(h, _)| h.parse::<Ipv6Addr>().is_ok()))
        {
            return Err(ParseAddressError::Ipv6NeedsBrackets {
                input: input.to_owned(),
                host_port: host_port.to_owned(),
            });
        }
        let Some((host, port)) = host_port.split_once(':') else {
            // Check the host first, so `id@bad_host` reports the host.
            parse_host(input, host_port)?;
            return Err(ParseAddressError::MissingPort { input: input.to_owned() });
        };
        (parse_host(input, host)?, port)
    };
    Ok((host, parse_port(input, port, min_port)?))
}

/// The IPv6 address between `[` and `]`.
fn parse_bracketed_ipv6(input: &str, inner: &str) -> Result<Host, ParseAddressError> {
    inner.parse::<Ipv6Addr>().map(|ip| Host::Ip(IpAddr::V6(ip))).map_err(|_| {
        ParseAddressError::BadHost {
            input: input.to_owned(),
            host: format!("[{inner}]"),
            reason: "brackets must hold an IPv6 address",
        }
    })
}

/// A host without brackets: an IPv4 address or a DNS name (lowercased).
fn parse_host(input: &str, host: &str) -> Result<Host, ParseAddressError> {
    if host.is_empty() {
        return Err(ParseAddressError::MissingHost { input: input.to_owned() });
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let bad = |reason| ParseAddressError::BadHost {
        input: input.to_owned(),
        host: host.to_owned(),
        reason,
    };
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad("it is made of digits and dots but is not a valid IPv4 address"));
    }
    check_dns_name(host).map_err(bad)?;
    Ok(Host::Dns(host.to_ascii_lowercase()))
}

/// Checks RFC 1123 host name syntax: dot-separated labels of 1 to 63 letters, digits and
/// hyphens, not starting or ending with a hyphen, at most 253 characters in all.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("a DNS name has at most 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("a DNS name cannot have an empty label (leading, trailing or double dot)");
        }
        if label.len() > 63 {
            return Err("a DNS label has at most 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("a DNS name may only contain ASCII letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a DNS label cannot start or end with '-'");
        }
    }
    Ok(())
}

/// A decimal port from `min` to 65535. Only ASCII digits (no sign) are accepted.
fn parse_port(input: &str, port: &str, min: u16) -> Result<u16, ParseAddressError> {
    if port.is_empty() {
        return Err(ParseAddressError::MissingPort { input: input.to_owned() });
    }
    let bad = || ParseAddressError::BadPort { input: input.to_owned(), port: port.to_owned(), min };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p >= min => Ok(p),
        _ => Err(bad()),
    }
}

/// Why [`NodeAddress::resolve`], [`NodeAddress::resolve_with`] or [`Resolver::lookup`] failed.
///
/// Every message names the host and port.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The DNS name does not exist (NXDOMAIN).
    #[error("could not resolve host {host:?} (port {port}): no such DNS name (NXDOMAIN)")]
    NoSuchHost {
        /// The DNS name.
        host: String,
        /// The port of the address.
        port: u16,
    },
    /// The DNS name exists but has no A or AAAA record.
    #[error("could not resolve host {host:?} (port {port}): the name has no A or AAAA record")]
    NoAddresses {
        /// The DNS name.
        host: String,
        /// The port of the address.
        port: u16,
    },
    /// The DNS lookup failed: a timeout, an unreachable or failing name server, an invalid name.
    #[error("could not resolve host {host:?} (port {port}): {source}")]
    Lookup {
        /// The DNS name.
        host: String,
        /// The port of the address.
        port: u16,
        /// The resolver's error.
        source: DnsError,
    },
    /// The system resolver could not be set up.
    #[error("could not resolve host {host:?} (port {port}): no system DNS resolver: {source}")]
    Setup {
        /// The DNS name.
        host: String,
        /// The port of the address.
        port: u16,
        /// The resolver's error.
        source: DnsError,
    },
}

impl ResolveError {
    /// The DNS name that did not resolve.
    pub fn host(&self) -> &str {
        match self {
            Self::NoSuchHost { host, .. }
            | Self::NoAddresses { host, .. }
            | Self::Lookup { host, .. }
            | Self::Setup { host, .. } => host,
        }
    }
}

/// A resolved place to dial or listen: a protocol plus a socket address or an opaque path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The protocol this endpoint speaks.
    pub protocol: Protocol,
    /// The resolved address.
    pub addr: EndpointAddr,
}

impl Endpoint {
    /// An endpoint at an IP socket address.
    pub fn socket(protocol: Protocol, addr: SocketAddr) -> Self {
        Self { protocol, addr: EndpointAddr::Socket(addr) }
    }

    /// An endpoint at an opaque path (e.g. the node ID of a `memory:` address).
    pub fn path(protocol: Protocol, path: impl Into<String>) -> Self {
        Self { protocol, addr: EndpointAddr::Path(path.into()) }
    }
}

impl fmt::Display for Endpoint {
    /// `quic://1.2.3.4:5`, `mconn://[::1]:26656` or `memory:<path>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            EndpointAddr::Socket(addr) => write!(f, "{}://{addr}", self.protocol),
            EndpointAddr::Path(path) => write!(f, "{}:{path}", self.protocol),
        }
    }
}

/// The address part of an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointAddr {
    /// An IP socket address (TCP or UDP, depending on the protocol).
    Socket(SocketAddr),
    /// An opaque path, e.g. the node ID of a `memory:` address.
    Path(String),
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    type HostPort = (Host, u16);
    type Check = fn(&ParseAddressError) -> bool;

    const ID: &str = "10ba682c8ad13513971e8b56881aab8bd702bb80";
    const ID_UPPER: &str = "10BA682C8AD13513971E8B56881AAB8BD702BB80";

    fn id() -> NodeId {
        ID.parse().unwrap()
    }

    fn parse(s: &str) -> NodeAddress {
        s.parse().unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn err(s: &str) -> ParseAddressError {
        match s.parse::<NodeAddress>() {
            Ok(a) => panic!("{s:?} should not parse, got {a}"),
            Err(e) => {
                let msg = e.to_string();
                if !s.is_empty() {
                    assert!(
                        msg.contains(&format!("{s:?}")),
                        "message {msg:?} does not quote {s:?}"
                    );
                }
                e
            }
        }
    }

    #[test]
    fn protocol_new() {
        assert_eq!(Protocol::new("mconn").unwrap(), Protocol::MCONN);
        assert_eq!(Protocol::new("QUIC").unwrap(), Protocol::QUIC);
        assert_eq!(Protocol::new("Memory").unwrap(), Protocol::MEMORY);
        assert!(matches!(Protocol::new("quic").unwrap().0, Cow::Borrowed(_)));
        let custom = Protocol::new("WebRTC+udp.v-2").unwrap();
        assert_eq!(custom.as_str(), "webrtc+udp.v-2");
        assert!(matches!(custom.0, Cow::Owned(_)));
        assert_eq!("x".parse::<Protocol>().unwrap().as_str(), "x");
        for bad in ["", "1abc", "+a", "a b", "a_b", "a:b", "é"] {
            let e = Protocol::new(bad).unwrap_err();
            assert_eq!(e, ParseAddressError::BadProtocol { scheme: bad.to_owned() });
            assert!(e.to_string().contains(&format!("{bad:?}")));
        }
    }

    #[test]
    fn parses_valid_forms() {
        let v4 = Host::Ip("1.2.3.4".parse().unwrap());
        let cases: Vec<(String, Protocol, Option<HostPort>)> = vec![
            (format!("mconn://{ID}@1.2.3.4:26656"), Protocol::MCONN, Some((v4.clone(), 26656))),
            (format!("quic://{ID}@1.2.3.4:1"), Protocol::QUIC, Some((v4.clone(), 1))),
            (format!("{ID}@1.2.3.4:65535"), Protocol::MCONN, Some((v4.clone(), 65535))),
            (format!("tcp://{ID}@1.2.3.4:26656"), Protocol::MCONN, Some((v4.clone(), 26656))),
            (format!("TCP://{ID}@1.2.3.4:26656"), Protocol::MCONN, Some((v4, 26656))),
            (
                format!("quic://{ID}@[::1]:26656"),
                Protocol::QUIC,
                Some((Host::Ip("::1".parse().unwrap()), 26656)),
            ),
            (
                format!("{ID}@[2001:DB8::1]:9"),
                Protocol::MCONN,
                Some((Host::Ip("2001:db8::1".parse().unwrap()), 9)),
            ),
            (
                format!("mconn://{ID}@[::ffff:1.2.3.4]:9"),
                Protocol::MCONN,
                Some((Host::Ip("::ffff:1.2.3.4".parse().unwrap()), 9)),
            ),
            (
                format!("mconn://{ID}@Node-1.Example.COM:26656"),
                Protocol::MCONN,
                Some((Host::Dns("node-1.example.com".into()), 26656)),
            ),
            (
                format!("quic://{ID}@localhost:5"),
                Protocol::QUIC,
                Some((Host::Dns("localhost".into()), 5)),
            ),
            (
                format!("{ID}@1.2.3.4.nip.io:7"),
                Protocol::MCONN,
                Some((Host::Dns("1.2.3.4.nip.io".into()), 7)),
            ),
            (
                format!("MConn://{ID_UPPER}@x1:026656"),
                Protocol::MCONN,
                Some((Host::Dns("x1".into()), 26656)),
            ),
            (
                format!("webrtc+udp://{ID}@10.0.0.1:443"),
                Protocol::new("webrtc+udp").unwrap(),
                Some((Host::Ip("10.0.0.1".parse().unwrap()), 443)),
            ),
            (format!("memory:{ID}"), Protocol::MEMORY, None),
            (format!("MEMORY:{ID_UPPER}"), Protocol::MEMORY, None),
            (format!("tor-v3:{ID}"), Protocol::new("tor-v3").unwrap(), None),
        ];
        for (input, protocol, host_port) in cases {
            let a = parse(&input);
            assert_eq!(a.protocol(), &protocol, "{input}");
            assert_eq!(a.node_id(), id(), "{input}");
            assert_eq!(a.host_port(), host_port.as_ref().map(|(h, p)| (h, *p)), "{input}");
            // Round trip through Display.
            assert_eq!(parse(&a.to_string()), a, "{input}");
        }
    }

    #[test]
    fn display_normalises() {
        assert_eq!(
            parse(&format!("{ID_UPPER}@1.2.3.4:26656")).to_string(),
            format!("mconn://{ID}@1.2.3.4:26656")
        );
        assert_eq!(
            parse(&format!("tcp://{ID}@Example.org:1")).to_string(),
            format!("mconn://{ID}@example.org:1")
        );
        assert_eq!(
            parse(&format!("QUIC://{ID}@[2001:0db8:0:0::1]:2")).to_string(),
            format!("quic://{ID}@[2001:db8::1]:2")
        );
        assert_eq!(parse(&format!("Memory:{ID_UPPER}")).to_string(), format!("memory:{ID}"));
        assert_eq!(
            format!("{:?}", parse(&format!("memory:{ID}"))),
            format!("NodeAddress(memory:{ID})")
        );
    }

    #[test]
    fn round_trips_constructed_addresses() {
        let addrs = [
            NodeAddress::new_host(Protocol::MCONN, id(), Host::Ip("127.0.0.1".parse().unwrap()), 1),
            NodeAddress::new_host(Protocol::QUIC, id(), Host::Ip("fe80::1".parse().unwrap()), 80),
            NodeAddress::new_host(Protocol::MCONN, id(), Host::Dns("a.b".into()), 65535),
            NodeAddress::new_opaque(Protocol::MEMORY, id()),
            NodeAddress::new_opaque(Protocol::new("x").unwrap(), id()),
        ];
        for a in addrs {
            assert_eq!(parse(&a.to_string()), a);
        }
    }

    #[test]
    fn with_protocol_keeps_host_and_port() {
        let a = parse(&format!("mconn://{ID}@[::1]:26656"));
        let q = a.with_protocol(Protocol::QUIC);
        assert_eq!(q.protocol(), &Protocol::QUIC);
        assert_eq!(q.node_id(), a.node_id());
        assert_eq!(q.host_port(), a.host_port());
        assert_eq!(q.to_string(), format!("quic://{ID}@[::1]:26656"));
    }

    #[test]
    fn host_from_str() {
        assert_eq!("1.2.3.4".parse::<Host>().unwrap(), Host::Ip("1.2.3.4".parse().unwrap()));
        assert_eq!("::1".parse::<Host>().unwrap(), Host::Ip("::1".parse().unwrap()));
        assert_eq!("[::1]".parse::<Host>().unwrap(), Host::Ip("::1".parse().unwrap()));
        assert_eq!("A.b".parse::<Host>().unwrap(), Host::Dns("a.b".into()));
        assert!(matches!("[::1".parse::<Host>(), Err(ParseAddressError::UnclosedBracket { .. })));
        assert!(matches!("1.2.3.400".parse::<Host>(), Err(ParseAddressError::BadHost { .. })));
        assert!(matches!("".parse::<Host>(), Err(ParseAddressError::MissingHost { .. })));
        assert_eq!(Host::Ip("::1".parse().unwrap()).to_string(), "::1");
        assert_eq!(Host::Dns("a.b".into()).to_string(), "a.b");
    }

    #[test]
    fn rejects_bad_inputs() {
        use ParseAddressError as E;
        let long_label = "a".repeat(64);
        let long_name = vec!["abcdefghi"; 26].join(".");
        assert!(long_name.len() > 253);
        let cases: Vec<(String, Check)> = vec![
            (String::new(), |e| matches!(e, E::Empty)),
            (format!(" mconn://{ID}@1.2.3.4:1"), |e| matches!(e, E::Whitespace { .. })),
            (format!("mconn://{ID}@1.2.3.4:1\n"), |e| matches!(e, E::Whitespace { .. })),
            (format!("mconn://{ID}@1.2.3.4 :1"), |e| matches!(e, E::Whitespace { .. })),
            (format!("1mconn://{ID}@1.2.3.4:1"), |e| matches!(e, E::BadScheme { .. })),
            (format!("://{ID}@1.2.3.4:1"), |e| matches!(e, E::BadScheme { .. })),
            (format!("mc_onn://{ID}@1.2.3.4:1"), |e| matches!(e, E::BadScheme { .. })),
            (format!("mem ory:{ID}"), |e| matches!(e, E::Whitespace { .. })),
            (format!("m_m:{ID}"), |e| matches!(e, E::BadScheme { .. })),
            ("mconn://1.2.3.4:26656".into(), |e| matches!(e, E::MissingNodeId { .. })),
            ("mconn://@1.2.3.4:26656".into(), |e| matches!(e, E::MissingNodeId { .. })),
            ("hello".into(), |e| matches!(e, E::MissingNodeId { .. })),
            ("memory:".into(), |e| matches!(e, E::MissingNodeId { .. })),
            ("mconn://abc@1.2.3.4:1".into(), |e| {
                matches!(e, E::BadNodeId { source: NodeIdError::Length { len: 3, .. }, .. })
            }),
            (format!("mconn://{ID}0@1.2.3.4:1"), |e| {
                matches!(e, E::BadNodeId { source: NodeIdError::Length { len: 41, .. }, .. })
            }),
            ("mconn://10ba682c8ad13513971e8b56881aab8bd702bbxx@1.2.3.4:1".into(), |e| {
                matches!(e, E::BadNodeId { source: NodeIdError::NotHex { bad: 'x', .. }, .. })
            }),
            ("memory:nothex".into(), |e| matches!(e, E::BadNodeId { .. })),
            ("mconn://user:password@1.2.3.4:1".into(), |e| matches!(e, E::UserInfo { .. })),
            (format!("mconn://{ID}@:26656"), |e| matches!(e, E::MissingHost { .. })),
            (format!("mconn://{ID}@"), |e| matches!(e, E::MissingHost { .. })),
            (format!("mconn://{ID}"), |e| matches!(e, E::MissingHost { .. })),
            (ID.to_owned(), |e| matches!(e, E::MissingHost { .. })),
            (format!("{ID}@1.2.3.400:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@123:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@01.2.3.4:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@under_score.com:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@-lead.com:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@trail-.com:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@a..b:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@a.b.:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@{long_label}.com:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@{long_name}:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@héllo.com:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@[1.2.3.4]:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@[fe80::1%eth0]:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("{ID}@{ID}@1.2.3.4:1"), |e| matches!(e, E::BadHost { .. })),
            (format!("mconn://{ID}@::1:26656"), |e| matches!(e, E::Ipv6NeedsBrackets { .. })),
            (format!("mconn://{ID}@2001:db8::1"), |e| matches!(e, E::Ipv6NeedsBrackets { .. })),
            (format!("mconn://{ID}@[::1:26656"), |e| matches!(e, E::UnclosedBracket { .. })),
            (format!("mconn://{ID}@1.2.3.4"), |e| matches!(e, E::MissingPort { .. })),
            (format!("mconn://{ID}@1.2.3.4:"), |e| matches!(e, E::MissingPort { .. })),
            (format!("mconn://{ID}@[::1]"), |e| matches!(e, E::MissingPort { .. })),
            (format!("mconn://{ID}@host:http"), |e| matches!(e, E::BadPort { .. })),
            (format!("mconn://{ID}@host:0"), |e| matches!(e, E::BadPort { min: 1, .. })),
            (format!("mconn://{ID}@host:65536"), |e| matches!(e, E::BadPort { .. })),
            (format!("mconn://{ID}@host:+80"), |e| matches!(e, E::BadPort { .. })),
            (format!("mconn://{ID}@host:-1"), |e| matches!(e, E::BadPort { .. })),
            (format!("mconn://{ID}@host:1:2"), |e| matches!(e, E::BadPort { .. })),
            (
                format!("mconn://{ID}@1.2.3.4:1/path"),
                |e| matches!(e, E::UnexpectedSuffix { suffix, .. } if suffix == "/path"),
            ),
            (format!("mconn://{ID}@1.2.3.4:1?q=1"), |e| matches!(e, E::UnexpectedSuffix { .. })),
            (format!("mconn://{ID}@1.2.3.4:1#frag"), |e| matches!(e, E::UnexpectedSuffix { .. })),
            (format!("mconn://{ID}@[::1]x:1"), |e| matches!(e, E::UnexpectedSuffix { .. })),
            (
                format!("mconn:{ID}"),
                |e| matches!(e, E::ProtocolNeedsHost { protocol, .. } if *protocol == Protocol::MCONN),
            ),
            (format!("quic:{ID}"), |e| matches!(e, E::ProtocolNeedsHost { .. })),
            (format!("tcp:{ID}"), |e| matches!(e, E::ProtocolNeedsHost { .. })),
            (
                format!("memory://{ID}@1.2.3.4:1"),
                |e| matches!(e, E::ProtocolTakesNoHost { protocol, .. } if *protocol == Protocol::MEMORY),
            ),
            (format!("memory://{ID}"), |e| matches!(e, E::ProtocolTakesNoHost { .. })),
            (format!("mconn:{ID}@1.2.3.4:1"), |e| matches!(e, E::OpaqueWithHost { .. })),
            ("user:password@1.2.3.4:1".into(), |e| matches!(e, E::OpaqueWithHost { .. })),
        ];
        assert!(cases.len() >= 25);
        for (input, check) in &cases {
            let e = err(input);
            assert!(check(&e), "{input:?}: unexpected error {e:?}");
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let msg = err(&format!("mconn:{ID}")).to_string();
        assert!(msg.contains("mconn://<node-id>@<host>:<port>"), "{msg}");
        let msg = err(&format!("memory://{ID}")).to_string();
        assert!(msg.contains("memory:<node-id>"), "{msg}");
        let msg = err("").to_string();
        assert!(msg.contains("expected mconn://<node-id>@<host>:<port>"), "{msg}");
        let msg = err(&format!("{ID}@::1:5")).to_string();
        assert!(msg.contains("[::1]:26656"), "{msg}");
    }

    #[test]
    fn endpoint_display() {
        let e = Endpoint::socket(Protocol::QUIC, "1.2.3.4:5".parse().unwrap());
        assert_eq!(e.to_string(), "quic://1.2.3.4:5");
        let e = Endpoint::socket(Protocol::MCONN, "[::1]:26656".parse().unwrap());
        assert_eq!(e.to_string(), "mconn://[::1]:26656");
        assert_eq!(Endpoint::path(Protocol::MEMORY, ID).to_string(), format!("memory:{ID}"));
    }

    #[tokio::test]
    async fn resolve_ip_literal() {
        let a = parse(&format!("quic://{ID}@[::1]:26656"));
        assert_eq!(
            a.resolve().await.unwrap(),
            vec![Endpoint::socket(Protocol::QUIC, "[::1]:26656".parse().unwrap())]
        );
        let a = parse(&format!("{ID}@10.1.2.3:7"));
        assert_eq!(
            a.resolve().await.unwrap(),
            vec![Endpoint::socket(Protocol::MCONN, "10.1.2.3:7".parse().unwrap())]
        );
    }

    #[tokio::test]
    async fn resolve_localhost() {
        let a = parse(&format!("mconn://{ID}@localhost:26656"));
        let endpoints = a.resolve().await.unwrap();
        assert!(!endpoints.is_empty());
        let mut seen = HashSet::new();
        for e in &endpoints {
            assert!(seen.insert(e.clone()), "duplicate endpoint {e}");
            assert_eq!(e.protocol, Protocol::MCONN);
        }
        assert!(
            endpoints.iter().any(|e| matches!(
                e.addr,
                EndpointAddr::Socket(s) if s.ip().is_loopback() && s.port() == 26656
            )),
            "{endpoints:?}"
        );
    }

    #[tokio::test]
    async fn resolve_memory() {
        let a = parse(&format!("memory:{ID}"));
        assert_eq!(a.resolve().await.unwrap(), vec![Endpoint::path(Protocol::MEMORY, ID)]);
    }

    #[tokio::test]
    async fn resolve_failure_names_host() {
        // `.invalid` is reserved (RFC 2606) and never resolves.
        let a = parse(&format!("mconn://{ID}@no-such-host.invalid:1"));
        let e = a.resolve().await.unwrap_err();
        assert_eq!(e.host(), "no-such-host.invalid");
        assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
    }

    /// `wire-lp2p.md` §2: the peer ID of the key with seed 0x00..0x1f, and its hex node ID.
    const PEER_ID: &str = "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB";
    const PEER_NODE_ID: &str = "56475aa75463474c0285df5dbf2bcab73da65135";

    #[test]
    fn lp2p_addresses_carry_the_peer_id() {
        let input = format!("lp2p://{PEER_ID}@127.0.0.1:26656");
        let a = parse(&input);
        assert_eq!(a.protocol(), &Protocol::LP2P);
        assert_eq!(a.node_id().to_string(), PEER_NODE_ID);
        assert_eq!(a.to_string(), input);
        let key = a.public_key().unwrap();
        assert_eq!(peer_id::libp2p_peer_id(&key), PEER_ID);
        assert_eq!(
            NodeAddress::new_with_key(Protocol::LP2P, key, Host::Ip([127, 0, 0, 1].into()), 26656),
            a
        );
        // DNS and IPv6 hosts, upper-case scheme.
        let b = parse(&format!("LP2P://{PEER_ID}@Seed.Example.org:1"));
        assert_eq!(b.to_string(), format!("lp2p://{PEER_ID}@seed.example.org:1"));
        let c = parse(&format!("lp2p://{PEER_ID}@[::1]:2"));
        assert_eq!(parse(&c.to_string()), c);
        // The twin under another protocol prints the hex ID; back under lp2p it keeps no key
        // it never had, but an lp2p address keeps its own.
        let quic = a.with_protocol(Protocol::QUIC);
        assert_eq!(quic.to_string(), format!("quic://{PEER_NODE_ID}@127.0.0.1:26656"));
        assert_eq!(quic.public_key(), None);
        assert_eq!(a.with_protocol(Protocol::LP2P), a);
    }

    #[test]
    fn lp2p_addresses_refuse_hex_ids_and_others_refuse_peer_ids() {
        let e = err(&format!("lp2p://{PEER_NODE_ID}@1.2.3.4:5"));
        assert!(matches!(e, ParseAddressError::Lp2pNeedsPeerId { .. }), "{e:?}");
        assert!(e.to_string().contains("show-node-id --libp2p"), "{e}");
        let e = err("lp2p://16Uiu2HAmKJ6fm5bVvKqEZsfaVD9MYWmb1TtwVS5sN9zRgiFEZ6dG@1.2.3.4:5");
        assert!(matches!(e, ParseAddressError::BadPeerId { .. }), "{e:?}");
        let e = err(&format!("lp2p://{PEER_ID}@1.2.3.4"));
        assert!(matches!(e, ParseAddressError::MissingPort { .. }), "{e:?}");
        let e = err(&format!("lp2p:{PEER_ID}"));
        assert!(matches!(e, ParseAddressError::ProtocolNeedsHost { .. }), "{e:?}");
        for scheme in ["mconn://", "quic://", ""] {
            let e = err(&format!("{scheme}{PEER_ID}@1.2.3.4:5"));
            assert!(matches!(e, ParseAddressError::PeerIdNotAllowed { .. }), "{scheme}: {e:?}");
        }
    }
}
