//! A failure that repeats many times a second, said in the log once per window with how many
//! times it happened.
//!
//! An accept loop out of file descriptors fails every time it tries (every 50 ms, as it backs
//! off), for as long as a client holds its connections open: one line each would be 72,000
//! lines an hour in the operator's log, written by whoever can open connections. [`Repeats`]
//! says the first failure at once, then at most one line per window with the count since the
//! last line, and the end of the run of failures with its total — so the log still shows when
//! it started, that it goes on, and when it stopped. Pure (the caller passes the time), so the
//! counting is tested without waiting.

use std::time::{Duration, Instant};

/// Counts one kind of failure; see the module doc.
#[derive(Debug)]
pub struct Repeats {
    window: Duration,
    /// When a line was last said, while failures go on.
    last_said: Option<Instant>,
    /// Failures since that line.
    unsaid: u64,
    /// Failures since the run began.
    total: u64,
}

impl Repeats {
    pub fn new(window: Duration) -> Repeats {
        Repeats {
            window,
            last_said: None,
            unsaid: 0,
            total: 0,
        }
    }

    /// One more failure at `now`: `Some(n)` when a line should be said now, `n` the failures
    /// it stands for (this one and those not said since the last line); `None` to stay quiet.
    pub fn failed(&mut self, now: Instant) -> Option<u64> {
        self.unsaid += 1;
        self.total += 1;
        let due = match self.last_said {
            None => true,
            Some(said) => now.saturating_duration_since(said) >= self.window,
        };
        if !due {
            return None;
        }
        self.last_said = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }

    /// It worked again: `Some(total)` of the run of failures that ended when there was one,
    /// once; `None` when nothing had failed since the last end.
    pub fn ended(&mut self) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let total = self.total;
        *self = Repeats::new(self.window);
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_said_then_one_line_per_window_with_the_count() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut r = Repeats::new(Duration::from_secs(10));
        assert_eq!(r.failed(ms(0)), Some(1));
        // Every 50 ms for just under the window: quiet.
        for i in 1..200 {
            assert_eq!(r.failed(ms(i * 50)), None, "failure {i}");
        }
        // At the window's end, the line counts the 199 unsaid and this one.
        assert_eq!(r.failed(ms(10_000)), Some(200));
        assert_eq!(r.failed(ms(10_050)), None);
        assert_eq!(r.ended(), Some(202));
        // A new run is said at once again.
        assert_eq!(r.ended(), None);
        assert_eq!(r.failed(ms(10_100)), Some(1));
    }

    #[test]
    fn nothing_failed_nothing_ended() {
        let mut r = Repeats::new(Duration::from_secs(1));
        assert_eq!(r.ended(), None);
    }

    #[test]
    fn a_clock_that_goes_back_stays_quiet_rather_than_saying_more() {
        let t0 = Instant::now() + Duration::from_secs(60);
        let mut r = Repeats::new(Duration::from_secs(10));
        assert_eq!(r.failed(t0), Some(1));
        assert_eq!(r.failed(t0 - Duration::from_secs(30)), None);
    }
}
