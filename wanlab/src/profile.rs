//! Named link profiles: what one direction of every link in a lab looks like.
//!
//! Loss is per direction (data and acknowledgements are lost alike); the RTT is twice the
//! one-way delay. Jitter never reorders (see [`crate::model`]).
//!
//! | profile            | RTT    | jitter (one way) | loss (each direction)              | rate, queue        |
//! |--------------------|--------|------------------|------------------------------------|--------------------|
//! | `lan`              | 1 ms   | 0                | 0                                  | unlimited          |
//! | `continent`        | 40 ms  | ±0.5 ms          | 0.1 % independent                  | unlimited          |
//! | `intercontinental` | 150 ms | ±1 ms            | 0.5 % independent                  | 100 Mbit/s, 50 ms  |
//! | `lossy`            | 100 ms | ±2 ms            | 2 % bursty (Gilbert, mean burst 3) | 50 Mbit/s, 50 ms   |
//!
//! "Unlimited" means the emulator's own packet rate is the limit (see the crate docs for what
//! it moves).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::model::{GilbertElliott, LinkSpec, Loss};

/// A named link profile (see the module docs for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Profile {
    /// 1 ms RTT, no loss, no rate limit.
    Lan,
    /// 40 ms RTT, 0.1 % loss.
    Continent,
    /// 150 ms RTT, 0.5 % loss, 100 Mbit/s.
    Intercontinental,
    /// 100 ms RTT, 2 % bursty loss, 50 Mbit/s.
    Lossy,
}

impl Profile {
    /// Every profile, shortest RTT first.
    pub const ALL: [Self; 4] = [Self::Lan, Self::Continent, Self::Intercontinental, Self::Lossy];

    /// The profile's name (`lan`, `continent`, `intercontinental`, `lossy`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Lan => "lan",
            Self::Continent => "continent",
            Self::Intercontinental => "intercontinental",
            Self::Lossy => "lossy",
        }
    }

    /// The round-trip time the profile configures (twice the one-way delay).
    pub fn rtt(self) -> Duration {
        self.link().delay * 2
    }

    /// The emulated bandwidth, bits/s (`None`: unlimited).
    pub fn rate_bps(self) -> Option<u64> {
        self.link().rate_bps
    }

    /// One direction of a link of this profile.
    pub fn link(self) -> LinkSpec {
        let us = Duration::from_micros;
        match self {
            Self::Lan => LinkSpec::delay(us(500)),
            Self::Continent => LinkSpec::delay(Duration::from_millis(20))
                .with_jitter(us(500))
                .with_loss(Loss::Bernoulli(0.001)),
            Self::Intercontinental => LinkSpec::delay(Duration::from_millis(75))
                .with_jitter(us(1000))
                .with_loss(Loss::Bernoulli(0.005))
                .with_rate(100_000_000, Duration::from_millis(50)),
            Self::Lossy => LinkSpec::delay(Duration::from_millis(50))
                .with_jitter(us(2000))
                .with_loss(Loss::GilbertElliott(GilbertElliott::bursty(0.02, 3.0)))
                .with_rate(50_000_000, Duration::from_millis(50)),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A profile name that is not one of [`Profile::ALL`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown WAN profile {0:?} (expected lan, continent, intercontinental or lossy)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| UnknownProfile(s.to_owned()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn profiles_match_their_table() {
        let ms = Duration::from_millis;
        let rows: Vec<_> = Profile::ALL
            .iter()
            .map(|p| (p.name(), p.rtt(), p.rate_bps(), p.link().loss.mean()))
            .collect();
        assert_eq!(rows[0], ("lan", ms(1), None, 0.0));
        assert_eq!(rows[1], ("continent", ms(40), None, 0.001));
        assert_eq!(rows[2], ("intercontinental", ms(150), Some(100_000_000), 0.005));
        assert_eq!((rows[3].0, rows[3].1, rows[3].2), ("lossy", ms(100), Some(50_000_000)));
        assert!((rows[3].3 - 0.02).abs() < 1e-12);
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>().unwrap(), p);
        }
        assert!("mars".parse::<Profile>().is_err());
    }
}
