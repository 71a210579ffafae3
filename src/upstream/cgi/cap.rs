//! The cap on backend processes the embedded runner has at once, over all workers
//! (`[upstream] max_processes`).
//!
//! Why: every request the embedded backend answers is a `git http-backend` process, a clone's
//! with `upload-pack` and `pack-objects` under it, a push's with `receive-pack` and
//! `index-pack`, each taking memory and CPU in proportion to its repository. The per-principal
//! cap (`[rate_limit] max_concurrent`) keeps one token from starting hundreds; it does not keep a
//! CI fleet of a hundred principals starting at once from doing so, nor a setup where it is off
//! (500 HTTP/2 push streams started 500 receive-packs). nginx in front of fcgiwrap has the same
//! bound in fcgiwrap's number of children.
//!
//! Past the cap a request waits for a place — a burst is served a little later, not refused —
//! for at most [`WAIT`]; then it is answered `503` with `Retry-After`: the server is busy, not
//! broken. A place is taken before the process starts and given back once it has been reaped, so
//! a push finishing without its client still counts, and so does a process being ended. That the
//! cap is reached is said in the log once per minute while it goes on, as `max_connections` is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::repeats::Repeats;

/// How long a request waits for a place before it is answered `503`.
pub const WAIT: Duration = Duration::from_secs(10);

/// How often the log says, at most, that the cap is still reached.
const SAID_EVERY: Duration = Duration::from_secs(60);

/// The places shared by every worker's backend; see the module doc.
#[derive(Debug)]
pub struct ProcessCap {
    places: Arc<Semaphore>,
    max: usize,
    wait: Duration,
    /// Whether requests waited since the cap was last said to be left (read without the lock).
    in_a_run: AtomicBool,
    at_the_cap: Mutex<Repeats>,
}

/// A place under the cap, held until the process is reaped.
#[derive(Debug)]
pub struct Place(#[allow(dead_code)] OwnedSemaphorePermit);

/// No place came free within the wait: `max` processes ran the whole time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub max: usize,
    pub waited: Duration,
}

impl ProcessCap {
    /// At most `max` processes at once (`max` ≥ 1), a request waiting up to [`WAIT`].
    pub fn new(max: usize) -> ProcessCap {
        ProcessCap::with_wait(max, WAIT)
    }

    /// The same with another wait (tests).
    pub fn with_wait(max: usize, wait: Duration) -> ProcessCap {
        ProcessCap {
            places: Arc::new(Semaphore::new(max)),
            max,
            wait,
            in_a_run: AtomicBool::new(false),
            at_the_cap: Mutex::new(Repeats::new(SAID_EVERY)),
        }
    }

    /// A place for one process: at once when one is free, else when one comes free within the
    /// wait.
    pub async fn place(&self) -> Result<Place, Busy> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            if self.in_a_run.swap(false, Ordering::Relaxed) {
                if let Some(times) = self.said(Repeats::ended) {
                    tracing::info!(
                        max_processes = self.max,
                        times,
                        "below max_processes again: git requests start at once"
                    );
                }
            }
            return Ok(Place(permit));
        }
        self.in_a_run.store(true, Ordering::Relaxed);
        if let Some(times) = self.said(|r| r.failed(Instant::now())) {
            tracing::warn!(
                max_processes = self.max,
                times,
                "max_processes reached: git requests wait up to {}s for a backend process to \
                 end, then are answered 503 (said again at most every {}s while it goes on)",
                self.wait.as_secs(),
                SAID_EVERY.as_secs()
            );
        }
        match tokio::time::timeout(self.wait, self.places.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Place(permit)),
            // Never closed; and waited out: the server is busy.
            Ok(Err(_)) | Err(_) => Err(Busy {
                max: self.max,
                waited: self.wait,
            }),
        }
    }

    /// Backend processes running now (or being ended) under the cap.
    pub fn in_use(&self) -> usize {
        self.max - self.places.available_permits()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    fn said<T>(&self, f: impl FnOnce(&mut Repeats) -> Option<T>) -> Option<T> {
        // A poisoned lock only loses a log line's count.
        let mut repeats = self
            .at_the_cap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut repeats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_place_comes_free_for_the_next_request() {
        let cap = Arc::new(ProcessCap::with_wait(1, Duration::from_secs(5)));
        let first = cap.place().await.expect("a free place");
        assert_eq!(cap.in_use(), 1);
        let waiting = tokio::spawn({
            let cap = cap.clone();
            async move { cap.place().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second request waits");
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(cap.in_use(), 0);
    }

    #[tokio::test]
    async fn a_request_that_waited_out_the_wait_is_busy() {
        let cap = ProcessCap::with_wait(2, Duration::from_millis(30));
        let _a = cap.place().await.unwrap();
        let _b = cap.place().await.unwrap();
        assert_eq!(
            cap.place().await.unwrap_err(),
            Busy {
                max: 2,
                waited: Duration::from_millis(30)
            }
        );
        assert_eq!(cap.in_use(), 2);
    }
}
