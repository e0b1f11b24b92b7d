//! Process measurements (CPU time, peak RSS) and a description of the machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

/// This process's CPU time (user + system, all threads), in seconds.
pub(crate) fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Resets this process's peak RSS (`VmHWM`) to its current RSS by writing `5` to
/// `/proc/self/clear_refs` (Linux 4.0 and later). Returns whether that worked; if not, the
/// peak RSS of a cell is the process's peak so far (monotonic over the run).
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `VmHWM` (peak resident set size) of `pid`, or of this process for `None`, in MiB.
pub(crate) fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or_else(|| "/proc/self/status".to_owned(), |p| format!("/proc/{p}/status"));
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Samples another process's `VmHWM` every 10 ms until it exits or [`RssSampler::finish`] is
/// called; the result is the last (largest) value seen, so a peak in the last 10 ms before
/// the process exits can be missed.
#[derive(Debug)]
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Option<f64>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub(crate) fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak: Option<f64> = None;
            while !flag.load(Ordering::Acquire) {
                match peak_rss_mib(Some(pid)) {
                    Some(v) => peak = Some(peak.map_or(v, |p: f64| p.max(v))),
                    None if peak.is_some() => break,
                    None => {}
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        Self { stop, handle }
    }

    /// Stops sampling; the peak seen, in MiB.
    pub(crate) fn finish(self) -> Option<f64> {
        self.stop.store(true, Ordering::Release);
        self.handle.join().ok().flatten()
    }
}

/// The 1-minute load average.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// What the run ran on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub(crate) cpu_model: String,
    /// Whether the CPU advertises VAES / AVX-512F / SHA-NI (AEAD and hash speed depend on them).
    pub(crate) cpu_features: Vec<String>,
    /// CPUs available to this process (`nproc`).
    pub(crate) nproc: usize,
    /// `/proc/sys/kernel/osrelease`.
    pub(crate) kernel: String,
    /// The host's default TCP congestion control (`net.ipv4.tcp_congestion_control`). The
    /// loopback MConn rows run on it, and the Go -> Rust ratio depends on it (bench/PROFILING.md).
    pub(crate) tcp_congestion: String,
    /// `MemTotal` in GiB.
    pub(crate) mem_gib: f64,
    /// `go version`, if Go rows ran.
    pub(crate) go_version: Option<String>,
    /// The CometBFT version the Go peer is built from (its `go.mod`).
    pub(crate) go_peer_cometbft: Option<String>,
}

impl Machine {
    /// Reads `/proc` (fields it cannot read are `"unknown"` / 0).
    pub(crate) fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        };
        let flags = field("flags").unwrap_or_default();
        let cpu_features = ["avx2", "avx512f", "vaes", "vpclmulqdq", "sha_ni"]
            .into_iter()
            .filter(|f| flags.split_whitespace().any(|x| x == *f))
            .map(str::to_owned)
            .collect();
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
        Self {
            cpu_model: field("model name").unwrap_or_else(|| "unknown".to_owned()),
            cpu_features,
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned()),
            tcp_congestion: tcp_congestion(),
            mem_gib,
            go_version: None,
            go_peer_cometbft: None,
        }
    }
}

/// The host's default TCP congestion control, or `"unknown"`.
pub(crate) fn tcp_congestion() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// `go version`, if a `go` is on the path.
pub(crate) fn go_version() -> Option<String> {
    let out = std::process::Command::new("go").arg("version").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
