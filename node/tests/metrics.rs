//! The Prometheus endpoint: two nodes connect, `/metrics` answers in the text format, the peer
//! gauges show one peer with the transport in use, the mempool channel's counters move when a
//! transaction is gossiped, and `peer_id` labels appear only when asked for.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg(all(feature = "mconn", feature = "quic"))]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use p2p::peer_manager::PeerStatus;
use p2p::{NodeId, NodeKey, PeerUpdates, Protocol};
use p2p_node::metrics::MetricsOptions;
use p2p_node::{Node, NodeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A parsed scrape: every sample, and the type of every family.
#[derive(Debug, Default)]
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Scrape {
    /// Parses the Prometheus / OpenMetrics text format; panics on any malformed line, on a
    /// sample of a family without a `# TYPE` line, and on a missing or misplaced `# EOF`.
    fn parse(text: &str) -> Self {
        let mut scrape = Self::default();
        let mut helps = HashMap::new();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "the body must end with # EOF");
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# ") {
                let (keyword, rest) = rest.split_once(' ').expect(line);
                let (name, value) = rest.split_once(' ').expect(line);
                assert!(valid_name(name), "bad family name in {line:?}");
                match keyword {
                    "TYPE" => {
                        assert!(
                            ["counter", "gauge", "info", "histogram", "summary", "unknown"]
                                .contains(&value),
                            "bad type in {line:?}"
                        );
                        let old = scrape.types.insert(name.to_owned(), value.to_owned());
                        assert!(old.is_none(), "two TYPE lines for {name}");
                    }
                    "HELP" => {
                        assert!(helps.insert(name.to_owned(), value.to_owned()).is_none());
                    }
                    "UNIT" => {}
                    other => panic!("unknown descriptor {other:?} in {line:?}"),
                }
                continue;
            }
            assert!(!line.starts_with('#'), "stray comment {line:?}");
            let sample = parse_sample(line);
            assert!(
                scrape.family_of(&sample.name).is_some(),
                "sample {} has no TYPE line",
                sample.name
            );
            scrape.samples.push(sample);
        }
        for family in helps.keys() {
            assert!(scrape.types.contains_key(family), "HELP without TYPE for {family}");
        }
        scrape
    }

    /// The family a sample name belongs to (counters add `_total`, infos `_info`).
    fn family_of<'a>(&self, sample: &'a str) -> Option<&'a str> {
        let candidates = [
            (sample, None),
            (sample.strip_suffix("_total").unwrap_or(""), Some("counter")),
            (sample.strip_suffix("_created").unwrap_or(""), Some("counter")),
            (sample.strip_suffix("_info").unwrap_or(""), Some("info")),
        ];
        candidates.into_iter().find_map(|(family, needs)| {
            let ty = self.types.get(family)?;
            match needs {
                None if ty == "gauge" || ty == "unknown" => Some(family),
                Some(needs) if ty == needs => Some(family),
                _ => None,
            }
        })
    }

    /// Samples named `name` whose labels include every pair of `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The sum of the matching samples' values.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).iter().map(|s| s.value).sum()
    }

    /// The one matching sample's value.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0].value
    }

    fn has_label(&self, label: &str) -> bool {
        self.samples.iter().any(|s| s.labels.contains_key(label))
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",...} value`, label values with `\\`, `\"` and `\n` escapes.
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "bad sample name in {line:?}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut pairs) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = pairs.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) =
                pairs.split_once("=\"").unwrap_or_else(|| panic!("bad labels: {line:?}"));
            assert!(valid_name(key), "bad label name {key:?} in {line:?}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c @ ('\\' | '"')) => value.push(c),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            assert!(labels.insert(key.to_owned(), value).is_none(), "label twice in {line:?}");
            pairs = &after[end + 1..];
            pairs = pairs.strip_prefix(',').unwrap_or(pairs);
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before value: {line:?}"));
    let value = value.split(' ').next().unwrap(); // An optional timestamp may follow.
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    Sample { name: name.to_owned(), labels, value }
}

#[test]
fn the_parser_accepts_escapes_and_rejects_untyped_samples() {
    let ok =
        "# HELP a_x A.\n# TYPE a_x counter\na_x_total{k=\"q\\\"u\\\\o\\nte\",l=\"2\"} 3\n# EOF\n";
    let s = Scrape::parse(ok);
    assert_eq!(s.samples[0].labels["k"], "q\"u\\o\nte");
    assert_eq!(s.value("a_x_total", &[("l", "2")]), 3.0);
    let untyped = std::panic::catch_unwind(|| Scrape::parse("a_y 1\n# EOF\n"));
    assert!(untyped.is_err());
}

/// A minimal HTTP/1.1 GET: the status code, the headers (lowercased names) and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, HashMap<String, String>, String) {
    request("GET", addr, path).await
}

/// A minimal HTTP/1.1 request without a body.
async fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
) -> (u16, HashMap<String, String>, String) {
    let mut stream = timeout(T, TcpStream::connect(addr)).await.unwrap().unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(T, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect::<HashMap<_, _>>();
    if let Some(len) = headers.get("content-length").filter(|_| method != "HEAD") {
        assert_eq!(body.len(), len.parse::<usize>().unwrap());
    }
    (status, headers, body.to_owned())
}

async fn scrape(node: &Node) -> Scrape {
    let (status, headers, body) = get(node.metrics_addr().unwrap(), "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let content_type = &headers["content-type"];
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0")
            || content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    Scrape::parse(&body)
}

/// Scrapes `node` until `done` holds (bounded).
async fn scrape_until(node: &Node, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let result = timeout(T, async {
        loop {
            let s = scrape(node).await;
            if done(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    result.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn wait_up(updates: &mut PeerUpdates, peer: NodeId) {
    timeout(T, async {
        loop {
            let u = updates.recv().await.unwrap();
            if u.node_id == peer && u.status == PeerStatus::Up {
                return;
            }
        }
    })
    .await
    .expect("peer did not come up");
}

/// Starts the listener `a` (built by `listen`) and the dialer `b`, connects them over
/// `transport`, and waits until both see the other up.
async fn connected_pair(
    transport: Protocol,
    per_peer_labels: bool,
    listen: impl Fn(NodeOptions) -> NodeOptions,
) -> (Node, Node) {
    let metrics = MetricsOptions::new(local()).with_per_peer_labels(per_peer_labels);
    let mut a = listen(NodeOptions::new(NodeKey::generate(), "chain").with_moniker("a"));
    a.metrics = Some(metrics.clone());
    let a = Node::start(a).await.unwrap();
    let mut b = listen(NodeOptions::new(NodeKey::generate(), "chain").with_moniker("b"));
    b.metrics = Some(metrics);
    let b = Node::start(b).await.unwrap();
    for node in [&a, &b] {
        let addr = node.metrics_addr().unwrap();
        assert_ne!(addr.port(), 0, "local_addr must be the bound address");
    }
    let (mut a_up, mut b_up) = (a.router().subscribe(), b.router().subscribe());
    let address = a.addresses().iter().find(|x| *x.protocol() == transport).unwrap().clone();
    b.router().add_address(address).unwrap();
    wait_up(&mut a_up, b.id()).await;
    wait_up(&mut b_up, a.id()).await;
    (a, b)
}

/// The peer gauges of a node with one peer over `transport` in `direction`.
fn assert_one_peer(s: &Scrape, transport: &str, direction: &str) {
    assert_eq!(s.types["cometbft_p2p_peers"], "gauge");
    assert_eq!(s.sum("cometbft_p2p_peers", &[]), 1.0);
    let peers = [("transport", transport), ("direction", direction)];
    assert_eq!(s.value("cometbft_p2p_peers", &peers), 1.0);
    assert_eq!(s.value("cometbft_p2p_connections", &[("transport", transport)]), 1.0);
    assert_eq!(s.sum("cometbft_p2p_connections", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_quic_without_peer_labels() {
    let (a, b) = connected_pair(Protocol::QUIC, false, |o| o.with_quic(local())).await;

    let (sa, sb) = (scrape(&a).await, scrape(&b).await);
    assert_one_peer(&sa, "quic", "inbound");
    assert_one_peer(&sb, "quic", "outbound");
    assert_eq!(sa.value("cometbft_p2p_inbound_connections_total", &[("transport", "quic")]), 1.0);
    let dialed = [("transport", "quic"), ("outcome", "succeeded")];
    assert_eq!(sb.value("cometbft_p2p_dials_total", &dialed), 1.0);
    for s in [&sa, &sb] {
        assert!(!s.has_label("peer_id"), "no peer_id label unless asked for");
        assert!(s.find("cometbft_p2p_peer_info", &[]).is_empty());
        assert_eq!(s.find("cometbft_p2p_peer_pending_send_bytes", &[]).len(), 1);
        // Every reason is listed, also at 0.
        let drops = s.find("cometbft_p2p_messages_dropped_total", &[("ch_id", "0x30")]);
        assert_eq!(drops.len(), 5, "{drops:?}");
        assert_eq!(s.find("cometbft_p2p_handshake_failures_total", &[]).len(), 8);
    }

    // A transaction from A reaches B: the mempool channel's counters move on both sides.
    let mut b_txs = b.gossip().unwrap().subscribe();
    a.gossip().unwrap().submit(b"metrics-tx".to_vec()).await.unwrap();
    let event = timeout(T, b_txs.recv()).await.unwrap().unwrap();
    assert_eq!(event.from, Some(a.id()));
    let ch = [("ch_id", "0x30")];
    let sb = scrape(&b).await;
    assert!(sb.value("cometbft_p2p_mempool_txs_received_total", &[]) >= 1.0);
    assert!(sb.value("cometbft_p2p_message_receive_total", &ch) >= 1.0);
    assert!(sb.value("cometbft_p2p_peer_receive_bytes_total", &ch) >= 10.0);
    // A's send counters are bumped after the bytes leave, so B may see them first.
    let sa = scrape_until(&a, "A's mempool send counters", |s| {
        s.value("cometbft_p2p_mempool_txs_sent_total", &[]) >= 1.0
            && s.value("cometbft_p2p_message_send_total", &ch) >= 1.0
    })
    .await;
    assert_eq!(sa.value("cometbft_p2p_mempool_txs_submitted_total", &[]), 1.0);
    assert!(sa.value("cometbft_p2p_peer_send_bytes_total", &ch) >= 10.0);
    assert!(sa.value("cometbft_p2p_message_queued_total", &ch) >= 1.0);

    // Other paths are not served.
    let (status, _, _) = get(a.metrics_addr().unwrap(), "/other").await;
    assert_eq!(status, 404);
    let (status, _, _) = get(a.metrics_addr().unwrap(), "/").await;
    assert_eq!(status, 404);

    let (status, headers, _) = request("POST", a.metrics_addr().unwrap(), "/metrics").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD");
    let (status, headers, body) = request("HEAD", a.metrics_addr().unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("application/openmetrics-text"));
    assert!(body.is_empty());

    // Stopping closes the listener and open connections.
    let addr = a.metrics_addr().unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    a.stop().await;
    let mut buf = [0; 16];
    match timeout(T, idle.read(&mut buf)).await.expect("idle connection left open") {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(TcpStream::connect(addr).await.is_err());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_mconn_with_peer_labels() {
    let (a, b) = connected_pair(Protocol::MCONN, true, |o| o.with_mconn(local())).await;

    let (sa, sb) = (scrape(&a).await, scrape(&b).await);
    assert_one_peer(&sa, "mconn", "inbound");
    assert_one_peer(&sb, "mconn", "outbound");
    for (s, other, direction) in [(&sa, b.id(), "inbound"), (&sb, a.id(), "outbound")] {
        let id = other.to_string();
        let info = [("peer_id", id.as_str()), ("transport", "mconn"), ("direction", direction)];
        assert_eq!(s.types["cometbft_p2p_peer"], "info");
        assert_eq!(s.value("cometbft_p2p_peer_info", &info), 1.0);
        let peer = [("peer_id", id.as_str())];
        s.value("cometbft_p2p_peer_pending_send_bytes", &peer);
        s.value("cometbft_p2p_peer_pending_send_messages", &peer);
        s.value("cometbft_p2p_peer_connection_send_bytes_total", &peer);
        s.value("cometbft_p2p_peer_connection_receive_bytes_total", &peer);
    }

    // The per-peer byte counters move with a transaction.
    let mut b_txs = b.gossip().unwrap().subscribe();
    a.gossip().unwrap().submit(b"per-peer-tx".to_vec()).await.unwrap();
    timeout(T, b_txs.recv()).await.unwrap().unwrap();
    let a_id = a.id().to_string();
    let sb = scrape(&b).await;
    let from_a = [("peer_id", a_id.as_str())];
    assert!(sb.value("cometbft_p2p_peer_connection_receive_bytes_total", &from_a) >= 11.0);
    assert!(sb.value("cometbft_p2p_mempool_txs_received_total", &[]) >= 1.0);

    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_bad_namespace_is_refused_and_an_empty_one_drops_the_prefix() {
    let mut bad = NodeOptions::new(NodeKey::generate(), "chain");
    bad.metrics = Some(MetricsOptions::new(local()).with_namespace("my-chain"));
    assert!(Node::start(bad).await.is_err());

    let mut options = NodeOptions::new(NodeKey::generate(), "chain");
    options.metrics = Some(MetricsOptions::new(local()).with_namespace(""));
    let node = Node::start(options).await.unwrap();
    let s = scrape(&node).await;
    assert_eq!(s.sum("p2p_peers", &[]), 0.0);
    assert!(s.samples.iter().all(|x| x.name.starts_with("p2p_")));
    node.stop().await;
}
