//! When a request body last moved, for the backends' waits on an answer.
//!
//! A backend may take its time before it answers, as long as the client's upload is still
//! moving: git http-backend reads a whole push before it says more than its headers, and
//! another CGI program may read it all before even those. So "no answer for `idle`" is counted
//! from the later of the wait's start and the upload's last frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared between a request body on its way to the backend and the task waiting for the answer.
#[derive(Clone)]
pub struct Progress {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Something moved now.
    pub fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// How long since something last moved (or since [`Progress::new`]).
    pub fn idle(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_counts_from_the_last_touch() {
        let p = Progress::new();
        std::thread::sleep(Duration::from_millis(300));
        assert!(p.idle() >= Duration::from_millis(300));
        p.clone().touch();
        // A generous bound: a loaded 2-core machine may stall the thread for a while.
        assert!(p.idle() < Duration::from_millis(300));
    }
}
