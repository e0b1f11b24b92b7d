//! UPnP IGD port mapping (feature `upnp`): makes a node behind a home router reachable.
//!
//! [`Upnp::spawn`] starts a task that finds the Internet gateway device on the LAN (SSDP),
//! maps each listening port (TCP for MConn, UDP for QUIC) to the same external port number if
//! it is free, else to another, learns the gateway's external IP, renews each mapping at half
//! its lease (1 hour by default), and removes the mappings on [`Upnp::stop`]. The current
//! external addresses are published in a [`watch`] channel ([`Upnp::subscribe`],
//! [`Upnp::status`]): this is what address advertisement reads.
//!
//! Nothing here stops a node: no gateway, a refused mapping or a failed renewal is logged once
//! (a `warn` with the gateway's answer; repeats at `debug`, the recovery at `info`) and retried
//! with exponential backoff (5 s doubling to 10 minutes by default). A gateway that accepts only
//! permanent leases (UPnP error 725) gets lease 0, refreshed on the same cadence.
//!
//! The decisions (what to ask, when, what an answer means) are a sans-I/O state machine with
//! time as an input; the igd-next calls are a thin driver around it. Every gateway request is
//! bounded by [`UpnpConfig::request_timeout`].
//!
//! Not done here: IPv6 pinholes, NAT-PMP/PCP, and advertising the addresses to peers (the
//! caller decides; see `p2p-node`'s `Node::upnp`).

mod machine;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{AddPortError, PortMappingProtocol, RequestError, SearchOptions};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::machine::{Action, FailureKind, Log, Machine, MapFailure, Timing};
use crate::Protocol;

/// Most ports one mapper maps.
pub const MAX_PORTS: usize = 8;

/// Longest mapping description sent to the gateway, bytes (some gateways refuse long ones).
pub const MAX_DESCRIPTION_LEN: usize = 64;

/// The transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    /// TCP (MConn).
    Tcp,
    /// UDP (QUIC).
    Udp,
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

impl From<PortProtocol> for PortMappingProtocol {
    fn from(p: PortProtocol) -> Self {
        match p {
            PortProtocol::Tcp => Self::TCP,
            PortProtocol::Udp => Self::UDP,
        }
    }
}

/// One listening port to map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRequest {
    /// The p2p protocol served on the port ([`Protocol::MCONN`], [`Protocol::QUIC`]); a copy is
    /// kept only for the published status.
    pub protocol: ProtocolKind,
    /// TCP or UDP.
    pub transport: PortProtocol,
    /// The node's listening port (not 0).
    pub internal_port: u16,
}

/// The p2p protocols UPnP maps ports for (a `Copy` stand-in for [`Protocol`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolKind {
    /// MConn over TCP.
    Mconn,
    /// QUIC over UDP.
    Quic,
}

impl ProtocolKind {
    /// The [`Protocol`] (URL scheme).
    pub fn protocol(self) -> Protocol {
        match self {
            Self::Mconn => Protocol::MCONN,
            Self::Quic => Protocol::QUIC,
        }
    }
}

impl PortRequest {
    /// MConn's TCP port.
    pub fn mconn(port: u16) -> Self {
        Self { protocol: ProtocolKind::Mconn, transport: PortProtocol::Tcp, internal_port: port }
    }

    /// QUIC's UDP port.
    pub fn quic(port: u16) -> Self {
        Self { protocol: ProtocolKind::Quic, transport: PortProtocol::Udp, internal_port: port }
    }
}

/// Settings of the UPnP mapper.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpnpConfig {
    /// The lease asked for (renewed at half of it); whole seconds, 1 s to about 136 years.
    /// Default: 1 hour.
    pub lease: Duration,
    /// The mapping description shown by the gateway (at most [`MAX_DESCRIPTION_LEN`] bytes).
    /// Default: `"p2p"`.
    pub description: String,
    /// How long one gateway search listens for answers. Default: 5 s.
    pub search_timeout: Duration,
    /// Bound of every other gateway request. Default: 5 s.
    pub request_timeout: Duration,
    /// First retry delay after a failure; doubles per further failure. Default: 5 s.
    pub backoff_initial: Duration,
    /// Longest retry delay. Default: 10 minutes.
    pub backoff_max: Duration,
    /// The node's LAN address the gateway forwards to. Default: the address the host uses to
    /// reach the gateway (right unless the listeners are bound to one specific address).
    pub local_ip: Option<IpAddr>,
}

impl Default for UpnpConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(3600),
            description: "p2p".to_owned(),
            search_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_secs(600),
            local_ip: None,
        }
    }
}

/// Why a mapper could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpnpError {
    /// No port to map.
    #[error("no port to map")]
    NoPorts,
    /// More than [`MAX_PORTS`] ports.
    #[error("{0} ports to map; at most {MAX_PORTS}")]
    TooManyPorts(usize),
    /// A port request for port 0.
    #[error("cannot map port 0 ({0})")]
    PortZero(PortProtocol),
    /// The same port and protocol twice.
    #[error("{transport} port {port} requested twice")]
    Duplicate {
        /// TCP or UDP.
        transport: PortProtocol,
        /// The port.
        port: u16,
    },
    /// The lease is under 1 s or does not fit the protocol's 32-bit seconds.
    #[error("lease {0:?} out of range (1 s to 2^32-1 s)")]
    Lease(Duration),
    /// The description is longer than [`MAX_DESCRIPTION_LEN`] bytes.
    #[error("description longer than {MAX_DESCRIPTION_LEN} bytes")]
    Description,
    /// [`Upnp::spawn`] was called outside a Tokio runtime.
    #[error("not inside a Tokio runtime")]
    NoRuntime,
}

/// One port mapping the gateway holds for this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortMapping {
    /// The p2p protocol served.
    pub protocol: ProtocolKind,
    /// TCP or UDP.
    pub transport: PortProtocol,
    /// The node's port.
    pub internal_port: u16,
    /// Where peers on the Internet reach it: the gateway's external IP and the mapped port.
    pub external: SocketAddr,
    /// The lease granted; `None` for a permanent mapping (gateways that allow no other).
    pub lease: Option<Duration>,
}

/// What UPnP currently provides: published by the mapper whenever it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpnpStatus {
    /// The gateway's control address, once found.
    pub gateway: Option<SocketAddr>,
    /// The gateway's external IP, once learned.
    pub external_ip: Option<IpAddr>,
    /// The mappings held now (none before the external IP is known; in request order).
    pub mappings: Vec<PortMapping>,
}

impl UpnpStatus {
    /// The external address of `protocol`'s port, if mapped.
    pub fn external_addr(&self, protocol: ProtocolKind) -> Option<SocketAddr> {
        self.mappings.iter().find(|m| m.protocol == protocol).map(|m| m.external)
    }
}

/// A running UPnP mapper. [`Upnp::stop`] removes the mappings; dropping it only stops the
/// task (the gateway drops the mappings when their lease runs out).
#[derive(Debug)]
pub struct Upnp {
    status: watch::Receiver<UpnpStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Upnp {
    /// Starts mapping `ports` in the background (inside a Tokio runtime).
    pub fn spawn(config: UpnpConfig, ports: &[PortRequest]) -> Result<Self, UpnpError> {
        if ports.is_empty() {
            return Err(UpnpError::NoPorts);
        }
        if ports.len() > MAX_PORTS {
            return Err(UpnpError::TooManyPorts(ports.len()));
        }
        for (i, p) in ports.iter().enumerate() {
            if p.internal_port == 0 {
                return Err(UpnpError::PortZero(p.transport));
            }
            let same =
                |q: &PortRequest| q.transport == p.transport && q.internal_port == p.internal_port;
            if ports.iter().take(i).any(same) {
                return Err(UpnpError::Duplicate { transport: p.transport, port: p.internal_port });
            }
        }
        let lease_secs = u32::try_from(config.lease.as_secs())
            .ok()
            .filter(|s| *s > 0)
            .ok_or(UpnpError::Lease(config.lease))?;
        if config.description.len() > MAX_DESCRIPTION_LEN {
            return Err(UpnpError::Description);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| UpnpError::NoRuntime)?;
        let timing = Timing {
            lease_secs,
            backoff_initial: config.backoff_initial.max(Duration::from_millis(10)),
            backoff_max: config.backoff_max.max(config.backoff_initial),
        };
        let machine = Machine::new(timing, ports, Instant::now().into_std(), rand::random());
        let (status_tx, status) = watch::channel(UpnpStatus::default());
        let (stop, stop_rx) = oneshot::channel();
        let driver = Driver { config, ports: ports.to_vec(), machine, status: status_tx };
        let task = runtime.spawn(driver.run(stop_rx));
        Ok(Self { status, stop: Some(stop), task: Some(task) })
    }

    /// The current status.
    pub fn status(&self) -> UpnpStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every status change (external IP, mappings added, moved or lost).
    pub fn subscribe(&self) -> watch::Receiver<UpnpStatus> {
        self.status.clone()
    }

    /// Stops: removes the mappings from the gateway (bounded by the request timeout) and waits
    /// for the task to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Upnp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The I/O side: runs the machine's actions against the gateway.
struct Driver {
    config: UpnpConfig,
    ports: Vec<PortRequest>,
    machine: Machine,
    status: watch::Sender<UpnpStatus>,
}

/// The gateway found, and our address as it sees us.
struct Found {
    gateway: Gateway<Tokio>,
    local_ip: IpAddr,
}

impl Driver {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut found: Option<Found> = None;
        // A mapping request cut short by stop may have been applied: removed too.
        let mut in_flight: Option<(PortProtocol, u16)> = None;
        loop {
            let now = Instant::now();
            let action = self.machine.poll(now.into_std());
            let step = async {
                match action {
                    Action::Wait { until } => {
                        tokio::time::sleep_until(Instant::from_std(until)).await;
                        None
                    }
                    Action::Discover => Some(Step::Discovered(self.discover().await)),
                    Action::ExternalIp => {
                        let Some(f) = &found else { return Some(Step::Ip(Err(no_gateway()))) };
                        let ip = tokio::time::timeout(
                            self.config.request_timeout,
                            f.gateway.get_external_ip(),
                        )
                        .await;
                        Some(Step::Ip(match ip {
                            Ok(Ok(ip)) => Ok(ip),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("timed out".to_owned()),
                        }))
                    }
                    Action::Map { protocol, internal_port, external_port, lease_secs, .. } => {
                        let Some(f) = &found else {
                            return Some(Step::Mapped(Err((
                                MapFailure::Unreachable,
                                no_gateway(),
                            ))));
                        };
                        let local = SocketAddr::new(f.local_ip, internal_port);
                        let add = f.gateway.add_port(
                            protocol.into(),
                            external_port,
                            local,
                            lease_secs,
                            &self.config.description,
                        );
                        let result = tokio::time::timeout(self.config.request_timeout, add).await;
                        Some(Step::Mapped(match result {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err((map_failure(&e), e.to_string())),
                            Err(_) => Err((MapFailure::Unreachable, "timed out".to_owned())),
                        }))
                    }
                }
            };
            if let Action::Map { protocol, external_port, .. } = &action {
                in_flight = Some((*protocol, *external_port));
            }
            let step = tokio::select! {
                _ = &mut stop => break,
                step = step => step,
            };
            in_flight = None;
            let now = Instant::now().into_std();
            match (step, &action) {
                (None, _) => {}
                (Some(Step::Discovered(result)), _) => {
                    let log = self.machine.on_discover(now, result.is_ok());
                    match result {
                        Ok(f) => {
                            self.log(log, "");
                            tracing::debug!(gateway = %f.gateway.addr, local_ip = %f.local_ip, "UPnP gateway found");
                            found = Some(f);
                        }
                        Err(e) => {
                            found = None;
                            self.log(log, &e);
                        }
                    }
                }
                (Some(Step::Ip(result)), _) => {
                    let ip = result.as_ref().ok().copied();
                    let log = self.machine.on_external_ip(now, ip);
                    let text = match &result {
                        Err(e) => e.clone(),
                        Ok(ip) if ip.is_unspecified() => {
                            "the gateway has no external IP (0.0.0.0)".to_owned()
                        }
                        Ok(_) => String::new(),
                    };
                    self.log(log, &text);
                    if let Ok(ip) = result
                        && !ip.is_unspecified()
                        && !is_global(ip)
                        && self.status.borrow().external_ip != Some(ip)
                    {
                        tracing::warn!(external_ip = %ip, "UPnP: the gateway's external IP is not public (another NAT in front of it?); the mapped ports may be unreachable from the Internet");
                    }
                }
                (
                    Some(Step::Mapped(result)),
                    Action::Map { index, external_port, lease_secs, .. },
                ) => {
                    let (r, text) = match result {
                        Ok(()) => (Ok(()), String::new()),
                        Err((f, text)) => (Err(f), text),
                    };
                    let log = self.machine.on_map(now, *index, *external_port, *lease_secs, r);
                    self.log(log, &text);
                }
                (Some(_), _) => {}
            }
            self.publish(found.as_ref().map(|f| f.gateway.addr));
        }
        // Stopping: remove what the gateway holds for us.
        let mut remove: Vec<(PortProtocol, u16)> = self
            .machine
            .held(Instant::now().into_std())
            .iter()
            .map(|h| (h.protocol, h.external_port))
            .collect();
        if let Some(extra) = in_flight.filter(|m| !remove.contains(m)) {
            remove.push(extra);
        }
        self.status.send_replace(UpnpStatus::default());
        let Some(f) = found else { return };
        let removals = async {
            for (protocol, port) in &remove {
                match f.gateway.remove_port((*protocol).into(), *port).await {
                    Ok(()) => {
                        tracing::info!(%protocol, external_port = port, "UPnP mapping removed")
                    }
                    Err(igd_next::RemovePortError::NoSuchPortMapping) => {}
                    Err(e) => {
                        tracing::warn!(%protocol, external_port = port, error = %e, "UPnP: could not remove a mapping (it lapses with its lease)");
                    }
                }
            }
        };
        if tokio::time::timeout(self.config.request_timeout, removals).await.is_err() {
            tracing::warn!("UPnP: removing the mappings timed out (they lapse with their lease)");
        }
    }

    /// Searches for the gateway and works out our address on its network.
    async fn discover(&self) -> Result<Found, String> {
        let mut options = SearchOptions::default();
        if let Some(ip) = self.config.local_ip {
            options.bind_addr = SocketAddr::new(ip, 0);
        }
        options.timeout = Some(self.config.search_timeout);
        options.single_search_timeout = Some(self.config.search_timeout);
        let gateway = igd_next::aio::tokio::search_gateway(options)
            .await
            .map_err(|e| format!("no UPnP gateway found: {e}"))?;
        let local_ip = match self.config.local_ip {
            Some(ip) => ip,
            None => local_ip_towards(gateway.addr)
                .map_err(|e| format!("no route to the gateway {}: {e}", gateway.addr))?,
        };
        Ok(Found { gateway, local_ip })
    }

    /// Logs what the machine says about a result (`error`: the gateway's answer).
    fn log(&self, log: Log, error: &str) {
        match log {
            Log::Nothing => {}
            Log::Failure(kind) => {
                let what = self.describe(kind);
                tracing::warn!(
                    error,
                    "UPnP: {what} failed; retrying with backoff (repeats are not logged)"
                );
            }
            Log::Repeated(kind) => {
                let what = self.describe(kind);
                tracing::debug!(error, "UPnP: {what} failed again");
            }
            Log::Recovered(kind) => {
                let what = self.describe(kind);
                tracing::info!("UPnP: {what} works again");
            }
            Log::PermanentLeases => {
                tracing::info!(
                    "UPnP: the gateway accepts only permanent leases; mapping with lease 0 (refreshed periodically, removed on stop)"
                );
            }
        }
    }

    fn describe(&self, kind: FailureKind) -> String {
        let port = |i: usize| {
            self.ports
                .get(i)
                .map(|p| format!("{} port {}", p.transport, p.internal_port))
                .unwrap_or_default()
        };
        match kind {
            FailureKind::Discovery => "gateway discovery".to_owned(),
            FailureKind::ExternalIp => "learning the external IP".to_owned(),
            FailureKind::Map(i) => format!("mapping {}", port(i)),
            FailureKind::Renew(i) => format!("renewing the mapping of {}", port(i)),
        }
    }

    /// Publishes the status if it changed, logging the changes.
    fn publish(&self, gateway: Option<SocketAddr>) {
        let now = Instant::now().into_std();
        let external_ip = self.machine.external_ip();
        let mappings: Vec<PortMapping> = match external_ip {
            None => Vec::new(),
            Some(ip) => self
                .machine
                .held(now)
                .iter()
                .filter_map(|h| {
                    let request = self.ports.get(h.index)?;
                    Some(PortMapping {
                        protocol: request.protocol,
                        transport: request.transport,
                        internal_port: request.internal_port,
                        external: SocketAddr::new(ip, h.external_port),
                        lease: (h.lease_secs > 0)
                            .then(|| Duration::from_secs(u64::from(h.lease_secs))),
                    })
                })
                .collect(),
        };
        let status = UpnpStatus { gateway, external_ip, mappings };
        self.status.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            for m in &status.mappings {
                if !current.mappings.contains(m) {
                    tracing::info!(
                        protocol = %m.protocol.protocol(),
                        transport = %m.transport,
                        internal_port = m.internal_port,
                        external = %m.external,
                        lease_secs = m.lease.map_or(0, |l| l.as_secs()),
                        "UPnP port mapped"
                    );
                }
            }
            for m in &current.mappings {
                if !status.mappings.iter().any(|n| n.protocol == m.protocol && n.external == m.external) {
                    tracing::warn!(protocol = %m.protocol.protocol(), external = %m.external, "UPnP mapping lost");
                }
            }
            *current = status;
            true
        });
    }
}

enum Step {
    Discovered(Result<Found, String>),
    Ip(Result<IpAddr, String>),
    Mapped(Result<(), (MapFailure, String)>),
}

fn no_gateway() -> String {
    "no gateway".to_owned()
}

/// What an igd-next error means for the decisions.
fn map_failure(e: &AddPortError) -> MapFailure {
    match e {
        AddPortError::PortInUse => MapFailure::PortInUse,
        AddPortError::SamePortValuesRequired => MapFailure::SamePortValuesRequired,
        AddPortError::OnlyPermanentLeasesSupported => MapFailure::OnlyPermanentLeases,
        AddPortError::RequestError(
            RequestError::IoError(_)
            | RequestError::HyperError(_)
            | RequestError::HyperClientError(_),
        ) => MapFailure::Unreachable,
        _ => MapFailure::Refused,
    }
}

/// The local address the host uses to reach `gateway` (a connected UDP socket sends nothing).
fn local_ip_towards(gateway: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = match gateway {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(gateway)?;
    Ok(socket.local_addr()?.ip())
}

/// A publicly routable address (not private, CGNAT, loopback, link-local, documentation...).
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments().first().copied().unwrap_or(0);
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[tokio::test]
    async fn bad_requests_are_refused() {
        let c = UpnpConfig::default;
        assert_eq!(Upnp::spawn(c(), &[]).unwrap_err(), UpnpError::NoPorts);
        let many = vec![PortRequest::mconn(1); MAX_PORTS + 1];
        assert_eq!(Upnp::spawn(c(), &many).unwrap_err(), UpnpError::TooManyPorts(MAX_PORTS + 1));
        assert_eq!(
            Upnp::spawn(c(), &[PortRequest::quic(0)]).unwrap_err(),
            UpnpError::PortZero(PortProtocol::Udp)
        );
        assert_eq!(
            Upnp::spawn(c(), &[PortRequest::mconn(5), PortRequest::mconn(5)]).unwrap_err(),
            UpnpError::Duplicate { transport: PortProtocol::Tcp, port: 5 }
        );
        let short = UpnpConfig { lease: Duration::from_millis(500), ..c() };
        assert!(matches!(Upnp::spawn(short, &[PortRequest::mconn(5)]), Err(UpnpError::Lease(_))));
        let long = UpnpConfig { description: "x".repeat(65), ..c() };
        assert_eq!(
            Upnp::spawn(long, &[PortRequest::mconn(5)]).unwrap_err(),
            UpnpError::Description
        );
        // TCP and UDP on one port number are two mappings.
        let both = Upnp::spawn(c(), &[PortRequest::mconn(5), PortRequest::quic(5)]).unwrap();
        assert_eq!(both.status(), UpnpStatus::default());
        both.stop().await;
    }

    #[test]
    fn outside_a_runtime_is_an_error() {
        let e = Upnp::spawn(UpnpConfig::default(), &[PortRequest::mconn(5)]).unwrap_err();
        assert_eq!(e, UpnpError::NoRuntime);
    }

    #[test]
    fn public_addresses() {
        for ip in ["10.1.2.3", "192.168.1.1", "100.64.0.1", "127.0.0.1", "0.0.0.0", "fd00::1"] {
            assert!(!is_global(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "8.8.8.8", "100.128.0.1", "2001:4860::1"] {
            assert!(is_global(ip.parse().unwrap()), "{ip}");
        }
    }
}
