//! The lab: `n` network namespaces, each with one TUN device, and one emulator thread (in the
//! caller's namespace) that moves IPv4 packets between the TUN devices through the link model.
//!
//! Node `i` has the address `10.77.0.(i + 1)/24` on its TUN device `wan0`, so the kernel
//! routes every packet for another node into the TUN device, where the emulator reads it,
//! passes it through the link `i → j` ([`crate::model::Link`]) and, at its delivery time,
//! writes it into node `j`'s TUN device. Each namespace also has its loopback up.
//!
//! A namespace is created by a thread that calls `unshare(CLONE_NEWNET)`; the lab keeps a file
//! descriptor of it, so it lives until the lab (and every thread, socket and process in it) is
//! gone. Nothing is named, nothing is left behind. Code enters a namespace by running on a
//! thread that called `setns` ([`Netns::run`]); a socket belongs to the namespace it was created
//! in, wherever it is used later, and a thread or process inherits its creator's namespace, so a
//! Tokio runtime built by [`Netns::runtime`] has every worker (and every blocking thread its
//! workers spawn) in the namespace.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::time::TimeSpec;
use tun_rs::{DeviceBuilder, SyncDevice};

use crate::model::{Link, LinkCounters, LinkSpec, Verdict};

/// The most nodes a lab holds (`10.77.0.1` … `10.77.0.250`).
pub const MAX_NODES: usize = 250;
/// Packets held by the emulator at once, over all links (beyond: dropped and counted).
pub const MAX_IN_FLIGHT: usize = 65_536;
/// The largest packet the emulator reads (the TUN MTU is at most this).
const MAX_PACKET: usize = 9216;
/// Each TUN device's kernel queue (packets waiting for the emulator to read them), a common
/// NIC default: it absorbs the emulator's scheduling hiccups; beyond it the kernel drops.
const TX_QUEUE_LEN: u32 = 1000;
/// Packets read from one TUN device before the emulator looks at the others.
const READ_BATCH: usize = 64;
/// The longest the emulator sleeps before it looks at its command channel.
const IDLE_WAKE: Duration = Duration::from_millis(5);

/// Errors of building or running a lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A lab needs at least two nodes and at most [`MAX_NODES`].
    #[error("a lab has 2 to {MAX_NODES} nodes, not {0}")]
    Nodes(usize),
    /// `unshare(CLONE_NEWNET)` or `setns` failed (they need root, or `CAP_SYS_ADMIN`).
    #[error("network namespace: {0} (the lab needs root or CAP_SYS_ADMIN)")]
    Namespace(#[source] nix::Error),
    /// Creating or configuring a TUN device failed (it needs `/dev/net/tun` and `CAP_NET_ADMIN`).
    #[error("TUN device: {0} (the lab needs /dev/net/tun and CAP_NET_ADMIN)")]
    Tun(#[source] std::io::Error),
    /// Bringing a namespace's loopback up failed (it runs `ip link set lo up`, from iproute2).
    #[error("loopback up (ip link set lo up, from iproute2): {0}")]
    Loopback(String),
    /// Setting a namespace's sysctl failed (e.g. an unknown congestion control).
    #[error("sysctl {0}")]
    Sysctl(String),
    /// Another I/O error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A thread of the lab panicked or is gone.
    #[error("lab thread: {0}")]
    Thread(&'static str),
}

/// A network namespace of the lab (node `index`).
#[derive(Debug, Clone)]
pub struct Netns {
    fd: Arc<OwnedFd>,
    index: usize,
    addr: Ipv4Addr,
}

impl Netns {
    /// The node's index in the lab.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The node's address (`10.77.0.(index + 1)`), reachable from every other node.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, LabError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(LabError::Namespace)?;
                Ok(f())
            })
            .join()
            .map_err(|_| LabError::Thread("a Netns::run closure panicked"))?
        })
    }

    /// A multi-thread Tokio runtime (timers and I/O on) whose threads all live in this
    /// namespace. Run work on it with `spawn`, not `block_on`: `block_on` polls its future on
    /// the calling thread, which may be in another namespace.
    pub fn runtime(&self, workers: usize) -> Result<tokio::runtime::Runtime, LabError> {
        self.run(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers.max(1))
                .thread_name(format!("wanlab-ns{}", self.index))
                .enable_all()
                .build()
        })?
        .map_err(|source| LabError::Io { what: "building a runtime", source })
    }

    /// Spawns `command` inside this namespace.
    pub fn spawn(&self, command: &mut Command) -> Result<Child, LabError> {
        self.run(|| command.spawn())?.map_err(|source| LabError::Io { what: "spawning", source })
    }
}

/// Emulator-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmulatorCounters {
    /// Packets read from the TUN devices.
    pub read: u64,
    /// Packets written to their destination's TUN device.
    pub delivered: u64,
    /// Packets with no node at their destination (not IPv4, or outside `10.77.0.0/24`).
    pub unroutable: u64,
    /// Packets dropped because [`MAX_IN_FLIGHT`] were held already.
    pub overflow: u64,
    /// Packets the destination TUN device refused.
    pub write_errors: u64,
    /// The most packets held at once.
    pub max_in_flight: u64,
    /// Sum of every delivered packet's lateness (written − due), ns: the emulator's own delay.
    pub late_ns_sum: u64,
    /// The largest lateness, ns.
    pub late_ns_max: u64,
}

impl EmulatorCounters {
    /// Mean lateness of a delivered packet (written − due).
    pub fn mean_late(&self) -> Duration {
        Duration::from_nanos(self.late_ns_sum.checked_div(self.delivered).unwrap_or(0))
    }
}

/// A snapshot of the lab's counters.
#[derive(Debug, Clone, Default)]
pub struct LabStats {
    /// Emulator-wide counters.
    pub emulator: EmulatorCounters,
    /// Per link direction: `(from, to, counters)`, for links that carried a packet.
    pub links: Vec<(usize, usize, LinkCounters)>,
}

impl LabStats {
    /// The counters of link `from → to` (zero if it never carried a packet).
    pub fn link(&self, from: usize, to: usize) -> LinkCounters {
        self.links
            .iter()
            .find(|(f, t, _)| (*f, *t) == (from, to))
            .map(|(_, _, c)| *c)
            .unwrap_or_default()
    }
}

enum Control {
    SetLinks(LinkSpec, mpsc::Sender<()>),
    SetLink(usize, usize, LinkSpec),
    Stats(mpsc::Sender<LabStats>),
    Stop,
}

/// Builds a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    nodes: usize,
    spec: LinkSpec,
    seed: u64,
    mtu: u16,
    congestion: String,
}

/// The TCP congestion control a lab's namespaces use unless told otherwise: Linux's stock
/// default. A namespace would otherwise inherit the host's (this machine's kernel defaults to
/// `bbr`, which ignores random loss), and a figure would depend on the machine it ran on.
pub const DEFAULT_TCP_CONGESTION: &str = "cubic";

impl LabBuilder {
    /// `nodes` nodes; every link direction gets `spec`.
    pub fn new(nodes: usize, spec: LinkSpec) -> Self {
        Self { nodes, spec, seed: 1, mtu: 1500, congestion: DEFAULT_TCP_CONGESTION.to_owned() }
    }

    /// The namespaces' TCP congestion control (`net.ipv4.tcp_congestion_control`, e.g.
    /// `cubic`, `reno`, `bbr`); default [`DEFAULT_TCP_CONGESTION`].
    #[must_use]
    pub fn tcp_congestion(mut self, name: &str) -> Self {
        name.clone_into(&mut self.congestion);
        self
    }

    /// The seed of the links' random streams (each direction derives its own); default 1.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The TUN devices' MTU (576 to 9000); default 1500, an Ethernet path.
    #[must_use]
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.mtu = mtu.clamp(576, MAX_PACKET as u16);
        self
    }

    /// Creates the namespaces and TUN devices and starts the emulator thread.
    pub fn start(self) -> Result<Lab, LabError> {
        if !(2..=MAX_NODES).contains(&self.nodes) {
            return Err(LabError::Nodes(self.nodes));
        }
        allow_congestion(&self.congestion)?;
        let mut nodes = Vec::with_capacity(self.nodes);
        let mut devices = Vec::with_capacity(self.nodes);
        for index in 0..self.nodes {
            let (ns, dev) = create_node(index, self.mtu, &self.congestion)?;
            nodes.push(ns);
            devices.push(dev);
        }
        let (control, rx) = mpsc::channel();
        let n = self.nodes;
        let mut links = Vec::with_capacity(n * n);
        for from in 0..n {
            for to in 0..n {
                links.push(Link::new(self.spec.clone(), link_seed(self.seed, from, to)));
            }
        }
        let emulator = Emulator::new(devices, links, self.seed, rx);
        let thread = std::thread::Builder::new()
            .name("wanlab-emulator".into())
            .spawn(move || emulator.run())
            .map_err(|source| LabError::Io { what: "spawning the emulator", source })?;
        Ok(Lab { nodes, control, thread: Some(thread), spec: self.spec })
    }
}

fn link_seed(seed: u64, from: usize, to: usize) -> u64 {
    // SplitMix64 of (seed, from, to): independent streams per direction.
    let mut z = seed ^ ((from as u64) << 32 | to as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A namespace other than the host's may only select a congestion control in the host's
/// `net.ipv4.tcp_allowed_congestion_control`: adds `name` to it if missing. That list only says
/// what may be selected; the host's own default is not touched.
fn allow_congestion(name: &str) -> Result<(), LabError> {
    const ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";
    let sysctl =
        |e: std::io::Error| LabError::Sysctl(format!("tcp_allowed_congestion_control: {e}"));
    let allowed = std::fs::read_to_string(ALLOWED).map_err(sysctl)?;
    if allowed.split_whitespace().any(|a| a == name) {
        return Ok(());
    }
    std::fs::write(ALLOWED, format!("{} {name}", allowed.trim())).map_err(sysctl)
}

fn node_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, (index + 1) as u8)
}

/// Creates namespace `index` on a thread of its own and, inside it, the TUN device and the
/// loopback, and sets its TCP congestion control.
fn create_node(index: usize, mtu: u16, congestion: &str) -> Result<(Netns, SyncDevice), LabError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(LabError::Namespace)?;
            let fd: OwnedFd = File::open("/proc/thread-self/ns/net")
                .map_err(|source| LabError::Io { what: "opening the namespace", source })?
                .into();
            let addr = node_addr(index);
            let dev = DeviceBuilder::new()
                .name("wan0")
                .ipv4(addr, 24u8, None)
                .mtu(mtu)
                .tx_queue_len(TX_QUEUE_LEN)
                .enable(true)
                .build_sync()
                .map_err(LabError::Tun)?;
            dev.set_nonblocking(true).map_err(LabError::Tun)?;
            let out = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .output()
                .map_err(|e| LabError::Loopback(e.to_string()))?;
            if !out.status.success() {
                return Err(LabError::Loopback(String::from_utf8_lossy(&out.stderr).into_owned()));
            }
            // /proc/sys/net is the namespace of the thread that opens it.
            std::fs::write("/proc/sys/net/ipv4/tcp_congestion_control", congestion).map_err(
                |e| LabError::Sysctl(format!("tcp_congestion_control={congestion}: {e}")),
            )?;
            Ok((Netns { fd: Arc::new(fd), index, addr }, dev))
        })
        .join()
        .map_err(|_| LabError::Thread("creating a namespace panicked"))?
    })
}

/// `n` network namespaces joined by emulated links (see the module docs). Dropping it stops the
/// emulator; the namespaces go once nothing uses them.
#[derive(Debug)]
pub struct Lab {
    nodes: Vec<Netns>,
    control: mpsc::Sender<Control>,
    thread: Option<JoinHandle<()>>,
    spec: LinkSpec,
}

impl Lab {
    /// A lab of `nodes` nodes with `spec` on every link direction (seed 1, MTU 1500).
    pub fn start(nodes: usize, spec: LinkSpec) -> Result<Self, LabError> {
        LabBuilder::new(nodes, spec).start()
    }

    /// Node `index`'s namespace.
    ///
    /// # Panics
    /// If `index` is not below the lab's node count (a caller's bug, not input).
    #[allow(clippy::indexing_slicing)]
    pub fn node(&self, index: usize) -> &Netns {
        &self.nodes[index]
    }

    /// Every node's namespace.
    pub fn nodes(&self) -> &[Netns] {
        &self.nodes
    }

    /// The spec every link was started with, or last set to by [`Lab::set_links`].
    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// Gives every link direction `spec` (fresh state: queues empty, good state); returns once
    /// the emulator applies it. Packets already scheduled keep their delivery times.
    pub fn set_links(&mut self, spec: LinkSpec) -> Result<(), LabError> {
        self.spec = spec.clone();
        let (done, applied) = mpsc::channel();
        self.control
            .send(Control::SetLinks(spec, done))
            .map_err(|_| LabError::Thread("emulator gone"))?;
        applied.recv_timeout(Duration::from_secs(5)).map_err(|_| LabError::Thread("emulator stuck"))
    }

    /// Gives the direction `from → to` its own spec from now on.
    pub fn set_link(&self, from: usize, to: usize, spec: LinkSpec) -> Result<(), LabError> {
        self.control
            .send(Control::SetLink(from, to, spec))
            .map_err(|_| LabError::Thread("emulator gone"))
    }

    /// The counters so far (the emulator answers within a few ms).
    pub fn stats(&self) -> Result<LabStats, LabError> {
        let (tx, rx) = mpsc::channel();
        self.control.send(Control::Stats(tx)).map_err(|_| LabError::Thread("emulator gone"))?;
        rx.recv_timeout(Duration::from_secs(5)).map_err(|_| LabError::Thread("emulator stuck"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A packet waiting for its delivery time.
struct Pending {
    at: Duration,
    seq: u64,
    to: usize,
    buf: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    // Reversed: `BinaryHeap` is a max-heap, the earliest delivery must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Emulator {
    devices: Vec<SyncDevice>,
    links: Vec<Link>,
    seed: u64,
    control: mpsc::Receiver<Control>,
    heap: BinaryHeap<Pending>,
    scratch: Vec<u8>,
    counters: EmulatorCounters,
    epoch: Instant,
    seq: u64,
}

impl Emulator {
    fn new(
        devices: Vec<SyncDevice>,
        links: Vec<Link>,
        seed: u64,
        control: mpsc::Receiver<Control>,
    ) -> Self {
        Self {
            devices,
            links,
            seed,
            control,
            heap: BinaryHeap::new(),
            scratch: vec![0; MAX_PACKET],
            counters: EmulatorCounters::default(),
            epoch: Instant::now(),
            seq: 0,
        }
    }

    fn n(&self) -> usize {
        self.devices.len()
    }

    fn run(mut self) {
        // Wake-ups as close to the deadline as the kernel allows (the default slack is 50 µs).
        let _ = nix::sys::prctl::set_timerslack(1);
        loop {
            if !self.handle_control() {
                return;
            }
            let now = self.epoch.elapsed();
            let wait = self.heap.peek().map_or(IDLE_WAKE, |p| p.at.saturating_sub(now));
            let ready = self.poll(wait.min(IDLE_WAKE));
            for (i, readable) in ready.into_iter().enumerate() {
                if readable {
                    self.read_from(i);
                }
            }
            self.deliver_due();
        }
    }

    /// Which devices are readable after waiting at most `wait`.
    fn poll(&self, wait: Duration) -> Vec<bool> {
        let mut fds: Vec<PollFd<'_>> =
            self.devices.iter().map(|d| PollFd::new(d.as_fd(), PollFlags::POLLIN)).collect();
        let timeout = TimeSpec::from_duration(wait);
        match ppoll(&mut fds, Some(timeout), None) {
            Ok(n) if n > 0 => fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
                .collect(),
            _ => vec![false; fds.len()],
        }
    }

    /// Handles pending commands; false once told to stop (or the lab is gone).
    fn handle_control(&mut self) -> bool {
        loop {
            match self.control.try_recv() {
                Ok(Control::SetLinks(spec, done)) => {
                    let n = self.n();
                    for (k, link) in self.links.iter_mut().enumerate() {
                        *link = Link::new(spec.clone(), link_seed(self.seed, k / n, k % n));
                    }
                    let _ = done.send(());
                }
                Ok(Control::SetLink(from, to, spec)) => {
                    let n = self.n();
                    if from < n
                        && to < n
                        && let Some(link) = self.links.get_mut(from * n + to)
                    {
                        *link = Link::new(spec, link_seed(self.seed, from, to));
                    }
                }
                Ok(Control::Stats(reply)) => {
                    let n = self.n();
                    let links = self
                        .links
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.counters().packets > 0)
                        .map(|(k, l)| (k / n, k % n, l.counters()))
                        .collect();
                    let _ = reply.send(LabStats { emulator: self.counters, links });
                }
                Ok(Control::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    /// The node a packet is for: IPv4 to `10.77.0.(j + 1)`.
    fn destination(&self, packet: &[u8]) -> Option<usize> {
        let version = packet.first()? >> 4;
        let dst = packet.get(16..20)?;
        if version != 4 || dst.get(..3)? != [10, 77, 0] {
            return None;
        }
        let j = usize::from(*dst.get(3)?).checked_sub(1)?;
        (j < self.n()).then_some(j)
    }

    fn read_from(&mut self, from: usize) {
        for _ in 0..READ_BATCH {
            let Some(dev) = self.devices.get(from) else { return };
            let Ok(len) = dev.recv(&mut self.scratch) else {
                // WouldBlock (drained) or a transient error: look again next round.
                return;
            };
            let packet = self.scratch.get(..len).unwrap_or_default();
            self.counters.read += 1;
            let Some(to) = self.destination(packet).filter(|to| *to != from) else {
                self.counters.unroutable += 1;
                continue;
            };
            let now = self.epoch.elapsed();
            let n = self.n();
            let Some(link) = self.links.get_mut(from * n + to) else { continue };
            match link.admit(now, len) {
                Verdict::Drop(_) => {}
                Verdict::Deliver(at) => {
                    if self.heap.len() >= MAX_IN_FLIGHT {
                        self.counters.overflow += 1;
                        continue;
                    }
                    self.seq += 1;
                    let buf = self.scratch.get(..len).unwrap_or_default().to_vec();
                    self.heap.push(Pending { at, seq: self.seq, to, buf });
                    self.counters.max_in_flight =
                        self.counters.max_in_flight.max(self.heap.len() as u64);
                }
            }
        }
    }

    fn deliver_due(&mut self) {
        let now = self.epoch.elapsed();
        while self.heap.peek().is_some_and(|p| p.at <= now) {
            let Some(p) = self.heap.pop() else { break };
            let late = now.saturating_sub(p.at).as_nanos() as u64;
            match self.devices.get(p.to).map(|d| d.send(&p.buf)) {
                Some(Ok(_)) => {
                    self.counters.delivered += 1;
                    self.counters.late_ns_sum += late;
                    self.counters.late_ns_max = self.counters.late_ns_max.max(late);
                }
                _ => self.counters.write_errors += 1,
            }
        }
    }
}
