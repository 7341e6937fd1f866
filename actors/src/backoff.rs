//! arbor's backoff: one growth rule and one jitter rule ([`exponential`], [`spread`]) under every schedule arbor
//! keeps, and gRPC's connection-backoff schedule (`doc/connection-backoff.md`, [`Backoff`]), used by the
//! connection actor between connect attempts and by the activator's etcd backend between sessions.
//!
//! The other schedules are policies over the same core, each next to what it paces: the tunnel channel's waits
//! after an empty read or a transient error (`tunnel::backoff`, delays from the end of a try) and a
//! supervisor's restart delays (`supervisor::RestartBackoff`, reset after a stable period). They differ in what
//! they count from and when they start over, which is why they are three configurations, not in how they grow.
//!
//! Written here rather than taken from `backon` or `backoff`: `backon`'s jitter adds a uniform `(0, delay)` (it
//! cannot express gRPC's symmetric +-20 %), and both crates count delays from the end of a failed try, whereas
//! gRPC counts from the *start* of an attempt (`current_deadline = now + backoff`) and derives the attempt's
//! connect timeout from that deadline. `backoff` is also unmaintained (RUSTSEC-2025-0012).

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The `attempt`-th delay of an exponential schedule: `initial × multiplier^attempt`, at most `max`. Saturates
/// whatever the inputs (a multiplier below 1, or not finite, counts as 1); never panics.
pub fn exponential(initial: Duration, multiplier: f64, max: Duration, attempt: u32) -> Duration {
    let multiplier = if multiplier.is_finite() {
        multiplier.max(1.0)
    } else {
        1.0
    };
    let growth = multiplier.powi(attempt.min(1_024) as i32);
    let secs = (initial.as_secs_f64() * growth).min(max.as_secs_f64());
    Duration::try_from_secs_f64(secs).unwrap_or(max)
}

/// How a delay is spread at random, so that many clients failing together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Scaled by a factor in `1 ± fraction` (gRPC's and the tunnel channel's).
    Symmetric(f64),
    /// Lengthened by up to `fraction` of itself (the supervisor's restart delays: never earlier than asked).
    Additive(f64),
}

/// `delay` spread by `jitter`, with `unit` a uniform random number in `0.0..1.0`. Fractions are clamped to
/// `0.0..=1.0` (not finite: no jitter); never panics.
pub fn spread(delay: Duration, jitter: Jitter, unit: f64) -> Duration {
    let fraction = |f: f64| if f.is_finite() { f.clamp(0.0, 1.0) } else { 0.0 };
    let unit = unit.clamp(0.0, 1.0);
    let factor = match jitter {
        Jitter::Symmetric(f) => 1.0 - fraction(f) + 2.0 * fraction(f) * unit,
        Jitter::Additive(f) => 1.0 + fraction(f) * unit,
    };
    Duration::try_from_secs_f64(delay.as_secs_f64() * factor).unwrap_or(delay)
}

/// Backoff parameters. The defaults are gRPC's.
///
/// Durations are (de)serialised with `humantime` (`"1s"`, `"250ms"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackoffConfig {
    /// First delay between attempt starts (gRPC INITIAL_BACKOFF, 1 s).
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth factor per failed attempt (gRPC MULTIPLIER, 1.6).
    pub multiplier: f64,
    /// Symmetric jitter as a fraction of the delay (gRPC JITTER, 0.2 = +-20 %).
    pub jitter: f64,
    /// Cap on the delay (gRPC MAX_BACKOFF, 120 s).
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Lower bound on one attempt's connect timeout (gRPC MIN_CONNECT_TIMEOUT, 20 s).
    #[serde(with = "humantime_serde")]
    pub min_connect_timeout: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(120),
            min_connect_timeout: Duration::from_secs(20),
        }
    }
}

impl BackoffConfig {
    /// gRPC's multiplier, jitter and minimum connect timeout between `initial` and `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        BackoffConfig {
            initial,
            max,
            ..BackoffConfig::default()
        }
    }

    /// Check the values; the error names the offending field.
    pub fn validate(&self) -> Result<(), BackoffConfigError> {
        if self.initial.is_zero() {
            return Err(BackoffConfigError::new("initial", "must be greater than zero"));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(BackoffConfigError::new(
                "multiplier",
                "must be a finite number >= 1",
            ));
        }
        if !(self.jitter.is_finite() && (0.0..1.0).contains(&self.jitter)) {
            return Err(BackoffConfigError::new("jitter", "must be in [0, 1)"));
        }
        if self.max < self.initial {
            return Err(BackoffConfigError::new("max", "must be >= initial"));
        }
        if self.min_connect_timeout.is_zero() {
            return Err(BackoffConfigError::new(
                "min_connect_timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    /// The bounds `[low, high]` within which the gap between the starts of attempt `n` and `n + 1` (0-based)
    /// falls when every attempt fails fast. Attempt 0's gap has no jitter, per the spec.
    pub fn gap_bounds(&self, n: u32) -> (Duration, Duration) {
        let mut backoff = self.initial.as_secs_f64();
        for _ in 0..n {
            backoff = (backoff * self.multiplier).min(self.max.as_secs_f64());
        }
        if n == 0 {
            let d = Duration::from_secs_f64(backoff);
            return (d, d);
        }
        (
            Duration::from_secs_f64(backoff * (1.0 - self.jitter)),
            Duration::from_secs_f64(backoff * (1.0 + self.jitter)),
        )
    }
}

/// A backoff field with an invalid value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid backoff setting `{field}`: {reason}")]
pub struct BackoffConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl BackoffConfigError {
    fn new(field: &'static str, reason: &'static str) -> Self {
        BackoffConfigError { field, reason }
    }
}

/// One attempt's plan: when the next may start, and how long this one may take to connect.
#[derive(Debug, Clone, Copy)]
pub struct AttemptPlan {
    /// The earliest start of the next attempt if this one fails (gRPC `current_deadline`).
    pub next_start: Instant,
    /// `max(next_start - now, MIN_CONNECT_TIMEOUT)`.
    pub connect_timeout: Duration,
}

/// The running schedule of one connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    current: Option<Duration>,
}

impl Backoff {
    /// A schedule starting afresh.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            current: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Forget past failures (on READY).
    pub fn reset(&mut self) {
        self.current = None;
    }

    /// Plan an attempt starting `now`.
    pub fn begin_attempt(&mut self, now: Instant) -> AttemptPlan {
        let delay = match self.current {
            None => {
                self.current = Some(self.config.initial);
                self.config.initial
            }
            Some(prev) => {
                // gRPC grows the un-jittered delay, so jitter never compounds.
                let next = exponential(prev, self.config.multiplier, self.config.max, 1);
                self.current = Some(next);
                spread(next, Jitter::Symmetric(self.config.jitter), rand::rng().random())
            }
        };
        AttemptPlan {
            next_start: now + delay,
            connect_timeout: delay.max(self.config.min_connect_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_grows_caps_spreads_and_saturates() {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        assert_eq!(exponential(ms(100), 2.0, s(5), 0), ms(100));
        assert_eq!(exponential(ms(100), 2.0, s(5), 3), ms(800));
        assert_eq!(exponential(ms(100), 2.0, s(5), 30), s(5));
        assert_eq!(exponential(ms(100), 2.0, s(5), u32::MAX), s(5));
        assert_eq!(exponential(ms(100), f64::NAN, s(5), 9), ms(100));
        assert_eq!(spread(s(10), Jitter::Symmetric(0.2), 0.0), s(8));
        assert_eq!(spread(s(10), Jitter::Symmetric(0.2), 1.0), s(12));
        assert_eq!(spread(s(10), Jitter::Additive(0.5), 0.0), s(10));
        assert_eq!(spread(s(10), Jitter::Additive(0.5), 1.0), s(15));
        assert_eq!(spread(s(10), Jitter::Additive(f64::INFINITY), 1.0), s(10));
    }

    #[test]
    fn grpc_defaults_and_growth_within_jitter() {
        let cfg = BackoffConfig::default();
        cfg.validate().unwrap();
        let mut b = Backoff::new(cfg.clone());
        let t0 = Instant::now();
        let p0 = b.begin_attempt(t0);
        assert_eq!(p0.next_start - t0, Duration::from_secs(1));
        assert_eq!(p0.connect_timeout, Duration::from_secs(20));
        let mut expected = 1.0f64;
        for n in 1..30u32 {
            let p = b.begin_attempt(t0);
            expected = (expected * 1.6).min(120.0);
            let gap = (p.next_start - t0).as_secs_f64();
            assert!(
                gap >= expected * 0.8 - 1e-9 && gap <= expected * 1.2 + 1e-9,
                "n={n} gap={gap}"
            );
            let (lo, hi) = cfg.gap_bounds(n);
            assert!(p.next_start - t0 >= lo && p.next_start - t0 <= hi);
            assert!(p.connect_timeout >= Duration::from_secs(20));
        }
        // Capped at 120 s +- 20 %.
        assert!(cfg.gap_bounds(29).1 <= Duration::from_secs(144));
        b.reset();
        assert_eq!(b.begin_attempt(t0).next_start - t0, Duration::from_secs(1));
    }

    #[test]
    fn invalid_config_names_field() {
        let cfg = BackoffConfig {
            multiplier: 0.5,
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err().field, "multiplier");
        let cfg = BackoffConfig {
            jitter: f64::NAN,
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err().field, "jitter");
    }

    #[test]
    fn humantime_serde() {
        let cfg: BackoffConfig = serde_json::from_str(r#"{"initial":"250ms","max":"5s"}"#).unwrap();
        assert_eq!(cfg.initial, Duration::from_millis(250));
        assert_eq!(cfg.max, Duration::from_secs(5));
        assert_eq!(cfg.multiplier, 1.6);
    }
}
