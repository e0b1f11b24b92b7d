//! DNS resolution of the host names in node addresses, with [`hickory_resolver`].
//!
//! A [`Resolver`] looks a name up with A and AAAA queries in parallel and returns every address
//! found, IPv6 and IPv4. [`NodeAddress::resolve_with`](crate::NodeAddress::resolve_with) uses it,
//! and so does the [`Router`](crate::Router) on every dial of an address with a DNS host (see
//! [`RouterConfig::resolver`](crate::RouterConfig::resolver)), so a changed record is followed
//! as soon as the old answer's TTL has run out.
//!
//! # Where the answers come from
//!
//! * [`Resolver::system`]: the name servers, search domains and options (`ndots`, `timeout`,
//!   `attempts`) of `/etc/resolv.conf`, and `/etc/hosts` (read once, when the resolver is made).
//!   If `/etc/resolv.conf` cannot be read or names no server, a warning is logged and a name
//!   server on `127.0.0.1:53` is used, as the C library does. Name services configured only in
//!   `nsswitch.conf` (mDNS, LDAP, ...) are not consulted.
//! * [`Resolver::with_nameserver`]: one server, over UDP (and TCP when an answer is truncated),
//!   without the hosts file. For tests, and for operators who want a specific server.
//!
//! # TTLs and the cache
//!
//! Answers are cached, per resolver and its clones, for their TTL: an address is not asked for
//! again before its record's TTL has run out, and is asked for again on the first lookup after.
//! A record with TTL 0 is never cached. Negative answers ("no such name", "no address") are
//! cached for the TTL of the zone's SOA record, at most [`NEGATIVE_MAX_TTL`], and not at all
//! when the server sends no SOA. The cache holds at most [`CACHE_SIZE`] answers; when it is
//! full, some are dropped before their TTL runs out (and asked for again when next needed).
//!
//! # Order of the addresses
//!
//! IPv6 and IPv4 addresses are interleaved, IPv6 first (RFC 8305 §4): `v6, v4, v6, v4, ...`,
//! each family in the server's order, without duplicates. A dialer that tries the addresses in
//! order thus reaches a dual-stack host over either family after at most one failed attempt.
//!
//! # Literal IP addresses
//!
//! A host that is an IP address is returned as is; no query is sent.
//!
//! # Runtime
//!
//! Lookups must run on a Tokio runtime. A resolver keeps connections to its name servers whose
//! background tasks run on the runtime of the lookup that opened them, so use one resolver (and
//! its clones) from one runtime.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tracing::warn;

use crate::address::ResolveError;

/// Most answers a [`Resolver`]'s cache holds (an A or an AAAA answer for one name counts one).
pub const CACHE_SIZE: u64 = 1024;

/// Longest time a negative answer ("no such name", "no address") is cached, whatever the zone
/// says: a peer whose name is created later is found within this time.
pub const NEGATIVE_MAX_TTL: Duration = Duration::from_secs(60);

/// A DNS resolver with a TTL-respecting cache; cheap to clone (clones share the cache).
///
/// See the [module documentation](self) for where answers come from, caching and ordering.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    source: Source,
}

/// Where a [`Resolver`]'s answers come from, for `Debug`.
#[derive(Debug, Clone, Copy)]
enum Source {
    System,
    Nameserver(SocketAddr),
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Source::System => f.write_str("Resolver(system)"),
            Source::Nameserver(server) => write!(f, "Resolver(nameserver {server})"),
        }
    }
}

impl Resolver {
    /// A resolver configured like the system's: `/etc/resolv.conf` and `/etc/hosts`.
    ///
    /// If `/etc/resolv.conf` cannot be read or names no server, logs a warning and uses a name
    /// server on `127.0.0.1:53`, as the C library does. Reads the files now; nothing is sent.
    pub fn system() -> Result<Self, DnsError> {
        let (config, options) = match hickory_resolver::system_conf::read_system_conf() {
            Ok(conf) => conf,
            Err(error) => {
                warn!(
                    %error,
                    "could not use the system DNS configuration (/etc/resolv.conf); \
                     using a name server on 127.0.0.1:53"
                );
                let local = NameServerConfig::udp_and_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST));
                (ResolverConfig::from_name_servers(vec![local]), ResolverOpts::default())
            }
        };
        Self::build(config, options, Source::System)
    }

    /// A resolver that asks only `server`, over UDP (and TCP when an answer is truncated), and
    /// does not read `/etc/hosts`. Nothing is sent until the first lookup.
    pub fn with_nameserver(server: SocketAddr) -> Result<Self, DnsError> {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let name_server = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
        let config = ResolverConfig::from_name_servers(vec![name_server]);
        let mut options = ResolverOpts::default();
        options.use_hosts_file = ResolveHosts::Never;
        Self::build(config, options, Source::Nameserver(server))
    }

    fn build(
        config: ResolverConfig,
        mut options: ResolverOpts,
        source: Source,
    ) -> Result<Self, DnsError> {
        options.ip_strategy = LookupIpStrategy::Ipv6AndIpv4;
        options.cache_size = CACHE_SIZE;
        options.negative_max_ttl = Some(NEGATIVE_MAX_TTL);
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(DnsError)?;
        Ok(Self { inner, source })
    }

    /// Looks `host` up (A and AAAA) and returns every address with `port`, IPv6 and IPv4
    /// interleaved (see the [module documentation](self)), without duplicates and never empty.
    ///
    /// An IP address is returned as is, without a query. Errors name `host` and `port`:
    /// [`ResolveError::NoSuchHost`] when the name does not exist, [`ResolveError::NoAddresses`]
    /// when it has neither A nor AAAA records, [`ResolveError::Lookup`] for anything else
    /// (timeouts, unreachable or failing servers, invalid names).
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found = self.inner.lookup_ip(host).await.map_err(|e| classify(host, port, e))?;
        let addrs = interleave(found.iter());
        if addrs.is_empty() {
            return Err(ResolveError::NoAddresses { host: host.to_owned(), port });
        }
        Ok(addrs.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }
}

/// Maps a hickory error to a [`ResolveError`] naming the host.
fn classify(host: &str, port: u16, error: NetError) -> ResolveError {
    let host = host.to_owned();
    if error.is_nx_domain() {
        ResolveError::NoSuchHost { host, port }
    } else if error.is_no_records_found() {
        ResolveError::NoAddresses { host, port }
    } else {
        ResolveError::Lookup { host, port, source: DnsError(error) }
    }
}

/// RFC 8305 §4 order: IPv6 and IPv4 alternating, IPv6 first, each family in its given order;
/// duplicates dropped.
fn interleave(ips: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    let (mut v6, mut v4) = (Vec::new(), Vec::new());
    for ip in ips {
        if seen.insert(ip) {
            if ip.is_ipv6() { v6.push(ip) } else { v4.push(ip) }
        }
    }
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut v6, mut v4) = (v6.into_iter(), v4.into_iter());
    loop {
        match (v6.next(), v4.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// A DNS failure other than "no such name" or "no address": a timeout, an unreachable or failing
/// name server, an invalid name, or a resolver that could not be set up.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DnsError(NetError);

impl DnsError {
    /// Whether the name servers did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self.0, NetError::Timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn interleaves_ipv6_first() {
        let given = ips(&["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "2001:db8::2"]);
        let want = ips(&["2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2", "192.0.2.3"]);
        assert_eq!(interleave(given), want);
        assert_eq!(interleave(ips(&["::1", "::2"])), ips(&["::1", "::2"]));
        assert_eq!(interleave(ips(&["10.0.0.1"])), ips(&["10.0.0.1"]));
        assert_eq!(interleave(Vec::new()), Vec::<IpAddr>::new());
    }

    #[test]
    fn drops_duplicates() {
        let given = ips(&["10.0.0.1", "::1", "10.0.0.1", "::1", "10.0.0.2"]);
        assert_eq!(interleave(given), ips(&["::1", "10.0.0.1", "10.0.0.2"]));
    }

    /// An IP literal is answered without a query: the server here does not exist.
    #[tokio::test]
    async fn ip_literals_send_no_query() {
        // Port 9 (discard) on loopback: nothing answers DNS there.
        let r = Resolver::with_nameserver("127.0.0.1:9".parse().unwrap()).unwrap();
        assert_eq!(
            r.lookup("192.0.2.7", 26656).await.unwrap(),
            ["192.0.2.7:26656".parse().unwrap()]
        );
        assert_eq!(r.lookup("2001:db8::7", 1).await.unwrap(), ["[2001:db8::7]:1".parse().unwrap()]);
    }

    #[test]
    fn debug_names_the_source() {
        let r = Resolver::with_nameserver("127.0.0.1:5353".parse().unwrap()).unwrap();
        assert_eq!(format!("{r:?}"), "Resolver(nameserver 127.0.0.1:5353)");
        assert_eq!(format!("{:?}", Resolver::system().unwrap()), "Resolver(system)");
    }

    #[tokio::test]
    async fn system_resolver_reads_the_hosts_file() {
        // `localhost` is in every /etc/hosts; no name server is needed.
        let found = Resolver::system().unwrap().lookup("localhost", 7).await.unwrap();
        assert!(found.iter().all(|a| a.ip().is_loopback() && a.port() == 7), "{found:?}");
        assert!(!found.is_empty());
    }
}
