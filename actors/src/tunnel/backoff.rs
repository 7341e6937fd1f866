//! The channel's two waits, as pure schedules: after an empty read, and after a transient request error.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff;

/// An exponential schedule with jitter: the `n`-th wait is `initial × multiplier^n`, at most `max`, then
/// spread by ± `jitter` (a fraction).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelBackoff {
    /// The first wait.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// The growth factor between waits (at least 1).
    pub multiplier: f64,
    /// The longest wait, before jitter.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// The spread, a fraction in `0.0..=1.0`: each wait is scaled by a random factor in `1 ± jitter`.
    pub jitter: f64,
}

impl Default for ChannelBackoff {
    /// The empty-read schedule of the reference workers: 10 ms, × 5, at most 5 s, jitter 0.25.
    fn default() -> Self {
        ChannelBackoff::EMPTY_READS
    }
}

impl ChannelBackoff {
    /// After an empty read of a stream channel (the reference workers' schedule): 10 ms, × 5, at most 5 s,
    /// jitter 0.25. A full read starts it over.
    pub const EMPTY_READS: ChannelBackoff = ChannelBackoff {
        initial: Duration::from_millis(10),
        multiplier: 5.0,
        max: Duration::from_secs(5),
        jitter: 0.25,
    };

    /// After a transient request error (the Go SDK's): 16 ms, × 2, at most 3 s, jitter 0.2.
    pub const TRANSIENT_ERRORS: ChannelBackoff = ChannelBackoff {
        initial: Duration::from_millis(16),
        multiplier: 2.0,
        max: Duration::from_secs(3),
        jitter: 0.2,
    };

    /// The wait before attempt `attempt + 1`, with `unit` a uniform random number in `0.0..1.0`.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let base = backoff::exponential(self.initial, self.multiplier, self.max, attempt);
        backoff::spread(base, backoff::Jitter::Symmetric(self.jitter), unit)
    }

    /// The wait before attempt `attempt + 1`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }

    /// Checks the fields; `prefix` is the options path (`"empty_read_backoff"`), the error names the field.
    pub(crate) fn check(&self, prefix: &str) -> Result<(), (String, String)> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err((
                format!("{prefix}.multiplier"),
                format!("must be at least 1 (got {})", self.multiplier),
            ));
        }
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            return Err((
                format!("{prefix}.jitter"),
                format!("must be within 0.0..=1.0 (got {})", self.jitter),
            ));
        }
        if self.initial.is_zero() || self.initial > self.max {
            return Err((
                format!("{prefix}.initial"),
                format!(
                    "must be above zero and at most max (got {}, max {})",
                    humantime::format_duration(self.initial),
                    humantime::format_duration(self.max)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_reads_grow_five_fold_to_five_seconds() {
        let b = ChannelBackoff::EMPTY_READS;
        let mid = |n| b.delay_with(n, 0.5);
        assert_eq!(mid(0), Duration::from_millis(10));
        assert_eq!(mid(1), Duration::from_millis(50));
        assert_eq!(mid(2), Duration::from_millis(250));
        assert_eq!(mid(3), Duration::from_millis(1250));
        assert_eq!(mid(4), Duration::from_secs(5));
        assert_eq!(mid(40), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let b = ChannelBackoff::EMPTY_READS;
        assert_eq!(b.delay_with(0, 0.0), Duration::from_micros(7_500));
        assert_eq!(b.delay_with(0, 1.0), Duration::from_micros(12_500));
        for _ in 0..1_000 {
            let d = b.delay(2);
            assert!(
                d >= Duration::from_micros(187_500) && d <= Duration::from_micros(312_500),
                "{d:?}"
            );
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut b = ChannelBackoff::TRANSIENT_ERRORS;
        b.multiplier = 0.5;
        assert_eq!(b.check("retry").unwrap_err().0, "retry.multiplier");
        let mut b = ChannelBackoff::TRANSIENT_ERRORS;
        b.jitter = f64::NAN;
        assert_eq!(b.check("retry").unwrap_err().0, "retry.jitter");
        let mut b = ChannelBackoff::TRANSIENT_ERRORS;
        b.initial = Duration::from_secs(10);
        assert_eq!(b.check("retry").unwrap_err().0, "retry.initial");
        assert!(ChannelBackoff::EMPTY_READS.check("x").is_ok());
    }
}
