//! Prometheus metrics: an HTTP endpoint serving `GET /metrics` in the OpenMetrics text format.
//!
//! Off by default: a [`crate::Node`] serves metrics only when
//! [`NodeOptions::metrics`](crate::NodeOptions::metrics) is set (`[instrumentation] prometheus =
//! true` in `config.toml`).
//!
//! # Design
//!
//! **Collected at scrape time.** Every value is read when Prometheus scrapes, from the counters
//! the stack keeps anyway: [`Router::stats`], [`Router::connected_peers`] and
//! [`TxGossip::stats`]. The endpoint is a [`prometheus_client`] registry holding one
//! [`Collector`], which encodes constant counters and gauges from those snapshots. Nothing is
//! mirrored into metric objects on the hot path, so metrics cost nothing per message, cannot
//! drift from the router's own counters, and series of peers that are gone disappear by
//! themselves (no stale per-peer series to garbage-collect). A scrape costs two snapshots and
//! a few kilobytes of text.
//!
//! **Format.** The body is what `prometheus_client` produces: OpenMetrics text 1.0 (counters
//! are exposed as `<name>_total`, the body ends with `# EOF`), served with the content type
//! `application/openmetrics-text; version=1.0.0; charset=utf-8`, which Prometheus (2.x and
//! 3.x) negotiates and parses natively. Counters and gauges only, so the body is also valid
//! Prometheus text format 0.0.4 for tools that ignore the content type.
//!
//! **Bounded.** At most [`MAX_CONNECTIONS`] connections are served at once; further clients
//! wait in the kernel's accept backlog, never as tasks. A connection must send its request
//! headers within [`HEADER_READ_TIMEOUT`] (this also closes idle keep-alive connections) and
//! is closed after [`MAX_CONNECTION_LIFETIME`] whatever it does, so slow clients cannot hold
//! the slots. [`MetricsServer::stop`] (or dropping the server) closes the listener and every
//! connection. Only `GET`/`HEAD /metrics` is served; other paths get 404, other methods 405.
//!
//! # Metrics
//!
//! Every name is prefixed with `{namespace}_p2p_` (CometBFT's namespace, `cometbft`, by
//! default; an empty namespace gives just `p2p_`). Names and meanings follow CometBFT's p2p
//! metrics where it has one; `ch_id` is the channel ID in hex as CometBFT's `chID` label
//! (`0x30`), `transport` the transport protocol (`mconn`, `quic`, `memory`), `direction`
//! `inbound` or `outbound`. Series marked *per peer* exist only with
//! [`MetricsOptions::per_peer_labels`] (the `peer_id` label is the peer's node ID; its
//! cardinality grows with the number of peers ever seen by Prometheus).
//!
//! | Name (after the prefix) | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `peers` | gauge | `direction`, `transport` | Connected peers. |
//! | `connections` | gauge | `transport` | Connected peers per transport (every transport listed, also at 0). |
//! | `peer_pending_send_bytes` | gauge | none, or `peer_id` (per peer) | Bytes queued to peers and not yet handed to their connections: the sum over peers, or one series per peer. |
//! | `peer_pending_send_messages` | gauge | none, or `peer_id` (per peer) | Messages queued to peers, likewise. |
//! | `peer_send_bytes_total` | counter | `ch_id` | Message bytes handed to peers' connections on the channel. |
//! | `peer_receive_bytes_total` | counter | `ch_id` | Message bytes received from peers on the channel. |
//! | `message_queued_total` | counter | `ch_id` | Messages queued to peers on the channel (a broadcast counts once per peer). |
//! | `message_send_total` | counter | `ch_id` | Messages handed to peers' connections on the channel. |
//! | `message_receive_total` | counter | `ch_id` | Messages delivered to the channel's reactor. |
//! | `messages_dropped_total` | counter | `ch_id`, `reason` | Messages dropped: `full` (peer queue full), `oldest` (dropped to make room), `timeout` (a blocking send gave up), `peer_gone` (peer disconnected before queueing), `decode_error` (received, undecodable). |
//! | `messages_dropped_on_disconnect_total` | counter | none | Queued messages discarded when their peer disconnected. |
//! | `peer_connection_send_bytes_total` | counter | `peer_id` (per peer) | Message bytes sent to the peer on its current connection (restarts at 0 on reconnect). |
//! | `peer_connection_receive_bytes_total` | counter | `peer_id` (per peer) | Message bytes received from the peer on its current connection. |
//! | `peer_info` | info | `peer_id`, `direction`, `transport` (per peer) | One series per connected peer: the transport its connection uses. |
//! | `dials_total` | counter | `transport`, `outcome` | Outbound connection attempts: `succeeded` (the peer was admitted over this transport), `failed` (connect or handshake failed, including attempts after which the dial fell back to another address). |
//! | `dial_failures_total` | counter | none | Dials that failed on every address tried (or in the handshake). |
//! | `dial_fallbacks_total` | counter | none | Dials that connected through an address other than the preferred one (e.g. MConn after QUIC failed). |
//! | `inbound_connections_total` | counter | `transport` | Inbound connections admitted. |
//! | `inbound_shed_total` | counter | none | Inbound connections closed because too many handshakes were pending. |
//! | `accept_errors_total` | counter | none | Errors returned by transports' accept. |
//! | `handshake_failures_total` | counter | `reason` | Failed handshakes, either direction, by reason (`authentication`, `invalid_node_info`, `incompatible`, `id_mismatch`, `self_connection`, `protocol`, `timeout`, `connection`). |
//! | `rejected_connections_total` | counter | none | Connections the peer manager refused after the handshake (limits, bans, duplicates). |
//! | `evictions_total` | counter | `reason` | Connections closed on the peer manager's orders: `upgrade`, `misbehaved`, `banned`, `replaced`. |
//! | `peer_updates_lagged_total` | counter | none | Peer-status updates missed by lagging subscribers (reactors). |
//! | `mempool_txs_received_total` | counter | none | Transactions received from peers by the transaction gossip (duplicates included). |
//! | `mempool_txs_submitted_total` | counter | none | Transactions submitted locally. |
//! | `mempool_txs_duplicates_total` | counter | none | Received or submitted transactions already seen (not forwarded again). |
//! | `mempool_txs_sent_total` | counter | none | Transaction copies queued to peers. |
//! | `mempool_txs_dropped_total` | counter | none | Transaction copies dropped because a peer's queue was full. |
//!
//! The `mempool_*` series exist only when transaction gossip runs.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use p2p::Router;
use p2p::peer_manager::Direction;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::gossip::TxGossip;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send a request's headers (and the longest a keep-alive connection may
/// stay idle).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection is kept, busy or not.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How long connections get to finish their response when the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// The content type of the body `prometheus_client` encodes.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where and how to serve metrics.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MetricsOptions {
    /// Listen address of the HTTP endpoint (`/metrics`); port 0 picks a free port (see
    /// [`MetricsServer::local_addr`]).
    pub listen: SocketAddr,
    /// Metric name prefix (CometBFT: `cometbft`): names are `{namespace}_p2p_*`. Letters,
    /// digits, `_` and `:`, not starting with a digit; empty for no prefix.
    pub namespace: String,
    /// Add per-peer series with a `peer_id` label (off by default: one series per peer).
    pub per_peer_labels: bool,
}

impl MetricsOptions {
    /// Serve on `listen` with CometBFT's namespace and no per-peer labels.
    pub fn new(listen: SocketAddr) -> Self {
        Self { listen, namespace: "cometbft".to_owned(), per_peer_labels: false }
    }

    /// Sets the metric name prefix.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Adds (or not) the per-peer series with a `peer_id` label.
    pub fn with_per_peer_labels(mut self, on: bool) -> Self {
        self.per_peer_labels = on;
        self
    }
}

/// A running metrics endpoint. Stop it with [`stop`](Self::stop); dropping it stops it too,
/// without waiting.
#[derive(Debug)]
pub struct MetricsServer {
    local: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `options.listen` and serves until [`stop`](Self::stop). Must be called inside a
    /// Tokio runtime. Fails if the address cannot be bound or the namespace is not a valid
    /// metric name prefix ([`io::ErrorKind::InvalidInput`]).
    pub async fn serve(
        options: MetricsOptions,
        router: Arc<Router>,
        gossip: Option<TxGossip>,
    ) -> io::Result<Self> {
        if !valid_namespace(&options.namespace) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "invalid metrics namespace {:?}: use letters, digits, '_' and ':', not \
                     starting with a digit",
                    options.namespace
                ),
            ));
        }
        let prefix = if options.namespace.is_empty() {
            "p2p".to_owned()
        } else {
            format!("{}_p2p", options.namespace)
        };
        let mut registry = Registry::with_prefix(prefix);
        registry.register_collector(Box::new(P2pCollector {
            router,
            gossip,
            per_peer: options.per_peer_labels,
        }));
        let listener = TcpListener::bind(options.listen).await?;
        let local = listener.local_addr()?;
        let (shutdown, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::new(registry), stopped));
        tracing::info!(addr = %local, "serving Prometheus metrics on /metrics");
        Ok(Self { local, shutdown, task })
    }

    /// The bound address (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops serving: closes the listener, lets open connections finish their response
    /// briefly, then closes them.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            tracing::debug!(error = %e, "metrics server task ended abnormally");
        }
    }
}

/// Whether `ns` can prefix metric names (`[a-zA-Z_:][a-zA-Z0-9_:]*`, or empty).
fn valid_namespace(ns: &str) -> bool {
    let mut chars = ns.chars();
    match chars.next() {
        None => true,
        Some(first) => {
            (first.is_ascii_alphabetic() || first == '_' || first == ':')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        // Take a slot first: while all are busy, new clients wait in the accept backlog.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok((stream, _)) => {
                connections.spawn(serve_connection(
                    stream,
                    registry.clone(),
                    stopped.clone(),
                    permit,
                ));
            }
            Err(error) => {
                tracing::debug!(%error, "metrics endpoint: accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
        }
    }
    drop(listener);
    // Connections saw the stop signal and are shutting down gracefully; bound the wait.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE * 2, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    registry: Arc<Registry>,
    mut stopped: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(&registry, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let lifetime = tokio::time::sleep(MAX_CONNECTION_LIFETIME);
    tokio::pin!(lifetime);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
            return;
        }
        _ = stopped.wait_for(|s| *s) => {}
        () = &mut lifetime => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
}

fn respond(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::warn!(%error, "could not encode metrics");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "could not encode metrics\n");
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Reads the router's and the gossip's counters at each scrape.
#[derive(Debug)]
struct P2pCollector {
    router: Arc<Router>,
    gossip: Option<TxGossip>,
    per_peer: bool,
}

/// A label set: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

fn direction_label(direction: Direction) -> &'static str {
    match direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

/// Writes a counter family: one series per label set.
fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes an unlabelled counter.
fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// Writes a gauge family: one series per label set.
fn gauges(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes an unlabelled gauge.
fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for P2pCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let e = &mut encoder;
        let stats = self.router.stats();
        let peers = self.router.connected_peers();

        // Peers and connections.
        let mut by_kind: BTreeMap<(&'static str, String), u64> = BTreeMap::new();
        for (protocol, _) in &stats.protocols {
            for direction in [Direction::Inbound, Direction::Outbound] {
                by_kind.insert((direction_label(direction), protocol.to_string()), 0);
            }
        }
        for peer in &peers {
            let key = (direction_label(peer.direction), peer.endpoint.protocol.to_string());
            *by_kind.entry(key).or_default() += 1;
        }
        gauges(
            e,
            "peers",
            "Connected peers, by connection direction and transport",
            by_kind.into_iter().map(|((direction, transport), n)| {
                (vec![("direction", direction.to_owned()), ("transport", transport)], n)
            }),
        )?;
        gauges(
            e,
            "connections",
            "Connected peers per transport",
            stats.protocols.iter().map(|(protocol, p)| {
                (vec![("transport", protocol.to_string())], p.connected as u64)
            }),
        )?;
        let pending_bytes = "Bytes queued to peers, not yet handed to their connections";
        let pending_messages = "Messages queued to peers, not yet handed to their connections";
        if self.per_peer {
            let id = |p: &p2p::router::PeerSummary| vec![("peer_id", p.node_id.to_string())];
            gauges(
                e,
                "peer_pending_send_bytes",
                pending_bytes,
                peers.iter().map(|p| (id(p), p.backlog.1 as u64)),
            )?;
            gauges(
                e,
                "peer_pending_send_messages",
                pending_messages,
                peers.iter().map(|p| (id(p), p.backlog.0 as u64)),
            )?;
        } else {
            let sum = |f: fn(&(usize, usize)) -> usize| {
                peers.iter().map(|p| f(&p.backlog) as u64).sum::<u64>()
            };
            gauge(e, "peer_pending_send_bytes", pending_bytes, sum(|b| b.1))?;
            gauge(e, "peer_pending_send_messages", pending_messages, sum(|b| b.0))?;
        }

        // Per channel.
        let ch = |id: p2p::ChannelId| vec![("ch_id", format!("{:#04x}", id.0))];
        let mut channels = stats.channels.clone();
        channels.sort_by_key(|(id, _)| id.0);
        let channels = &channels;
        counters(
            e,
            "peer_send_bytes",
            "Message bytes handed to peers' connections, by channel",
            channels.iter().map(|(id, s)| (ch(*id), s.sent_bytes)),
        )?;
        counters(
            e,
            "peer_receive_bytes",
            "Message bytes received from peers, by channel",
            channels.iter().map(|(id, s)| (ch(*id), s.received_bytes)),
        )?;
        counters(
            e,
            "message_queued",
            "Messages queued to peers, by channel (a broadcast counts once per peer)",
            channels.iter().map(|(id, s)| (ch(*id), s.sent_queued)),
        )?;
        counters(
            e,
            "message_send",
            "Messages handed to peers' connections, by channel",
            channels.iter().map(|(id, s)| (ch(*id), s.sent)),
        )?;
        counters(
            e,
            "message_receive",
            "Messages delivered to reactors, by channel",
            channels.iter().map(|(id, s)| (ch(*id), s.received)),
        )?;
        counters(
            e,
            "messages_dropped",
            "Messages dropped, by channel and reason (full, oldest, timeout, peer_gone, \
             decode_error)",
            channels.iter().flat_map(|(id, s)| {
                [
                    ("full", s.dropped_full),
                    ("oldest", s.dropped_oldest),
                    ("timeout", s.dropped_timeout),
                    ("peer_gone", s.dropped_peer_gone),
                    ("decode_error", s.decode_errors),
                ]
                .map(|(reason, n)| {
                    let mut labels = ch(*id);
                    labels.push(("reason", reason.to_owned()));
                    (labels, n)
                })
            }),
        )?;
        counter(
            e,
            "messages_dropped_on_disconnect",
            "Queued messages discarded when their peer disconnected",
            stats.dropped_on_disconnect,
        )?;

        // Per peer, when asked for.
        if self.per_peer {
            let id = |p: &p2p::router::PeerSummary| vec![("peer_id", p.node_id.to_string())];
            counters(
                e,
                "peer_connection_send_bytes",
                "Message bytes sent to the peer on its current connection",
                peers.iter().map(|p| (id(p), p.sent_bytes)),
            )?;
            counters(
                e,
                "peer_connection_receive_bytes",
                "Message bytes received from the peer on its current connection",
                peers.iter().map(|p| (id(p), p.received_bytes)),
            )?;
            let mut info = e.encode_descriptor(
                "peer",
                "A connected peer: its connection's direction and transport",
                None,
                MetricType::Info,
            )?;
            for p in &peers {
                let labels: Labels = vec![
                    ("peer_id", p.node_id.to_string()),
                    ("direction", direction_label(p.direction).to_owned()),
                    ("transport", p.endpoint.protocol.to_string()),
                ];
                info.encode_info(&labels)?;
            }
        }

        // Connection establishment.
        let transport = |protocol: &p2p::Protocol| ("transport", protocol.to_string());
        counters(
            e,
            "dials",
            "Outbound connection attempts, by transport and outcome (succeeded: the peer was \
             admitted; failed: connect or handshake failed)",
            stats.protocols.iter().flat_map(|(protocol, p)| {
                [("succeeded", p.dials_succeeded), ("failed", p.attempts_failed)].map(
                    |(outcome, n)| (vec![transport(protocol), ("outcome", outcome.to_owned())], n),
                )
            }),
        )?;
        counter(
            e,
            "dial_failures",
            "Dials that failed on every address tried or in the handshake",
            stats.dials_failed,
        )?;
        counter(
            e,
            "dial_fallbacks",
            "Dials that connected through an address other than the preferred one",
            stats.dial_fallbacks,
        )?;
        counters(
            e,
            "inbound_connections",
            "Inbound connections admitted, by transport",
            stats.protocols.iter().map(|(protocol, p)| (vec![transport(protocol)], p.accepted)),
        )?;
        counter(
            e,
            "inbound_shed",
            "Inbound connections closed because too many handshakes were pending",
            stats.inbound_shed,
        )?;
        counter(e, "accept_errors", "Errors returned by transports' accept", stats.accept_errors)?;
        counters(
            e,
            "handshake_failures",
            "Failed handshakes (either direction), by reason",
            stats
                .handshake_failures_by_reason
                .iter()
                .map(|(reason, n)| (vec![("reason", (*reason).to_owned())], *n)),
        )?;
        counter(
            e,
            "rejected_connections",
            "Connections the peer manager refused after the handshake",
            stats.rejected,
        )?;
        counters(
            e,
            "evictions",
            "Connections closed on the peer manager's orders, by reason",
            stats.evictions.iter().map(|(reason, n)| (vec![("reason", (*reason).to_owned())], *n)),
        )?;
        counter(
            e,
            "peer_updates_lagged",
            "Peer-status updates missed by lagging subscribers",
            stats.peer_updates_lagged,
        )?;

        // Transaction gossip.
        if let Some(gossip) = &self.gossip {
            let g = gossip.stats();
            counter(
                e,
                "mempool_txs_received",
                "Transactions received from peers by the transaction gossip (duplicates \
                 included)",
                g.received,
            )?;
            counter(e, "mempool_txs_submitted", "Transactions submitted locally", g.submitted)?;
            counter(
                e,
                "mempool_txs_duplicates",
                "Received or submitted transactions already seen (not forwarded again)",
                g.duplicates,
            )?;
            counter(e, "mempool_txs_sent", "Transaction copies queued to peers", g.sent)?;
            counter(
                e,
                "mempool_txs_dropped",
                "Transaction copies dropped because a peer's queue was full",
                g.dropped,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_namespace;

    #[test]
    fn namespaces() {
        for ok in ["", "cometbft", "tendermint", "my_chain", "_x", "a:b", "x1"] {
            assert!(valid_namespace(ok), "{ok:?}");
        }
        for bad in ["1x", "my-chain", "a b", "é", "a.b"] {
            assert!(!valid_namespace(bad), "{bad:?}");
        }
    }
}
