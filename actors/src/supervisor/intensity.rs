//! Restart intensity: "at most `max_restarts` within `period`", in O(1) per restart.
//!
//! OTP keeps a list of restart times and walks it on every restart, so a supervisor that has restarted 10,000
//! times inside one window pays for all of them each time. Here the last `max_restarts` restart times sit in a
//! ring: the restart about to happen exceeds the intensity exactly when the ring is full and its oldest entry
//! (the `max_restarts`-th most recent restart) is still inside the window. Restarts that have left the window
//! leave the ring too, so it holds no more than the window's restarts (a wide intensity, say a million within an
//! hour, costs memory only while restarts really come that fast).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct RestartIntensity {
    max_restarts: usize,
    period: Duration,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    pub(crate) fn new(max_restarts: u32, period: Duration) -> Self {
        RestartIntensity {
            max_restarts: max_restarts as usize,
            period,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; `false` when it is one too many for the window.
    pub(crate) fn record(&mut self, now: Instant) -> bool {
        if self.max_restarts == 0 {
            return false;
        }
        while self
            .recent
            .front()
            .is_some_and(|&oldest| now.saturating_duration_since(oldest) > self.period)
        {
            self.recent.pop_front();
        }
        if self.recent.len() == self.max_restarts {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    pub(crate) fn max_restarts(&self) -> u32 {
        self.max_restarts as u32
    }

    pub(crate) fn period(&self) -> Duration {
        self.period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_exactly_max_restarts_within_the_period() {
        let start = Instant::now();
        let mut intensity = RestartIntensity::new(3, Duration::from_secs(5));
        assert!(intensity.record(start));
        assert!(intensity.record(start + Duration::from_secs(1)));
        assert!(intensity.record(start + Duration::from_secs(2)));
        assert!(!intensity.record(start + Duration::from_secs(3)));
    }

    #[test]
    fn restarts_older_than_the_period_are_forgotten() {
        let start = Instant::now();
        let mut intensity = RestartIntensity::new(2, Duration::from_secs(5));
        assert!(intensity.record(start));
        assert!(intensity.record(start + Duration::from_secs(1)));
        // the oldest is 6 s old by now: it no longer counts
        assert!(intensity.record(start + Duration::from_secs(6)));
        assert!(!intensity.record(start + Duration::from_secs(6)));
    }

    #[test]
    fn restarts_that_left_the_window_leave_the_ring() {
        let start = Instant::now();
        let mut intensity = RestartIntensity::new(1_000_000, Duration::from_secs(5));
        for i in 0..1_000u64 {
            assert!(intensity.record(start + Duration::from_millis(i)));
        }
        assert_eq!(intensity.recent.len(), 1_000);
        // 10 s later only this restart is inside the window
        assert!(intensity.record(start + Duration::from_secs(10)));
        assert_eq!(intensity.recent.len(), 1);
    }

    #[test]
    fn zero_max_restarts_refuses_every_restart() {
        let mut intensity = RestartIntensity::new(0, Duration::from_secs(5));
        assert!(!intensity.record(Instant::now()));
    }

    #[test]
    fn a_long_run_inside_one_window_keeps_a_bounded_ring() {
        let start = Instant::now();
        let mut intensity = RestartIntensity::new(10_000, Duration::from_secs(3600));
        for i in 0..10_000u64 {
            assert!(intensity.record(start + Duration::from_micros(i)));
        }
        assert!(!intensity.record(start + Duration::from_secs(1)));
        assert_eq!(intensity.recent.len(), 10_000);
    }
}
