//! A user-space WAN link emulator for tests and benchmarks, in the manner of Mahimahi: the
//! kernel here has no `netem`, so packets leave each node's network namespace through a TUN
//! device and one emulator thread decides, per packet, whether it is lost, how long it queues
//! behind a rate limit, and when it arrives at the other end. Real kernel TCP and UDP stacks run
//! on both ends, so loss recovery and head-of-line blocking are real, not modelled.
//!
//! * [`model`]: the link model, sans-IO (loss, rate limit with a drop-tail queue, delay,
//!   jitter, reordering), deterministic for a seed.
//! * [`profile`]: the named profiles `lan`, `continent`, `intercontinental`, `lossy`.
//! * [`Lab`]: namespaces, TUN devices and the emulator thread; [`Netns`] runs code, runtimes
//!   and processes inside one node's namespace.
//!
//! The lab needs root (network namespaces, TUN devices) and `ip` (iproute2) to bring each
//! namespace's loopback up.
//!
//! ```no_run
//! use p2p_wanlab::{Lab, Profile};
//! let lab = Lab::start(2, Profile::Lossy.link())?;
//! let (a, b) = (lab.node(0), lab.node(1));
//! let server = b.run(|| std::net::UdpSocket::bind((b.addr(), 9000)))??;
//! let client = a.run(|| std::net::UdpSocket::bind((a.addr(), 0)))??;
//! client.send_to(b"hello", (b.addr(), 9000))?;
//! # let _ = server;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod lab;
pub mod model;
pub mod profile;

pub use lab::{
    DEFAULT_TCP_CONGESTION, EmulatorCounters, Lab, LabBuilder, LabError, LabStats, MAX_IN_FLIGHT,
    MAX_NODES, Netns,
};
pub use model::{GilbertElliott, Link, LinkCounters, LinkSpec, Loss, Verdict};
pub use profile::Profile;
