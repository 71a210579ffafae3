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
//! Past the cap a request waits for a place — a burst is served a little later, not refused.
//! How long depends on where it is in its exchange, because git shows the reason of a refusal
//! only for the request that starts one (the advertisement, a dumb-HTTP GET): that request waits
//! at most [`START_WAIT`] and is then answered `503` with `Retry-After`, which git prints as
//! `remote: the server is busy ...`. The `git-upload-pack` / `git-receive-pack` POST that goes on
//! with an exchange already let in would be refused as `RPC failed; HTTP 503` with the clone half
//! done, so it goes first — no request starting an exchange takes a place while such a POST
//! waits — and waits as long as the client connection allows (a little under its idle timeout).
//! A place is taken before the process starts and given back once it has been reaped, so a push
//! finishing without its client still counts, and so does a process being ended. That the cap is
//! reached is said in the log once a minute while it goes on, as `max_connections` is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::repeats::Repeats;

/// How long a request that starts an exchange waits for a place before it is answered `503`.
pub const START_WAIT: Duration = Duration::from_secs(10);

/// How often the log says, at most, that the cap is still reached.
const SAID_EVERY: Duration = Duration::from_secs(60);

/// The places shared by every worker's backend; see the module doc.
#[derive(Debug)]
pub struct ProcessCap {
    max: usize,
    state: Mutex<State>,
    /// Woken when a place comes free, or a POST stops waiting.
    freed: Notify,
    start_wait: Duration,
    rpc_wait: Duration,
    /// Whether a run of waits has been said and not yet its end (read without the lock).
    in_a_run: AtomicBool,
    at_the_cap: Mutex<Repeats>,
}

#[derive(Debug, Default)]
struct State {
    in_use: usize,
    /// POSTs of exchanges under way waiting for a place: they go first.
    rpcs_waiting: usize,
}

/// Which request asks for a place (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asking {
    /// One that starts an exchange, or stands alone: waits [`START_WAIT`] at most.
    Start,
    /// The POST of an exchange under way: goes first, waits longer.
    Rpc,
}

/// A place under the cap, held until the process is reaped.
#[derive(Debug)]
pub struct Place(Arc<ProcessCap>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.state().in_use -= 1;
        self.0.freed.notify_waiters();
    }
}

/// No place came free within the wait: `max` processes ran the whole time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub max: usize,
    pub waited: Duration,
}

/// A POST counted among those waiting, until it has a place or gives up (or its request is
/// dropped).
struct RpcWaiting<'a>(&'a ProcessCap);

impl Drop for RpcWaiting<'_> {
    fn drop(&mut self) {
        self.0.state().rpcs_waiting -= 1;
        // The requests it held back may take a place now.
        self.0.freed.notify_waiters();
    }
}

impl ProcessCap {
    /// At most `max` processes at once (`max` ≥ 1). `answer_within` is how long the client
    /// connection waits for an answer before it is closed as idle: neither wait may reach it,
    /// or the client would get no answer at all.
    pub fn new(max: usize, answer_within: Duration) -> ProcessCap {
        ProcessCap::with_waits(max, START_WAIT.min(answer_within), answer_within)
    }

    /// With the two waits given (tests).
    pub fn with_waits(max: usize, start_wait: Duration, rpc_wait: Duration) -> ProcessCap {
        ProcessCap {
            max,
            state: Mutex::new(State::default()),
            freed: Notify::new(),
            start_wait,
            rpc_wait,
            in_a_run: AtomicBool::new(false),
            at_the_cap: Mutex::new(Repeats::new(SAID_EVERY)),
        }
    }

    /// A place for one process: at once when one is free (and, for a request that starts an
    /// exchange, no POST waits), else when one comes free within the wait.
    pub async fn place(self: &Arc<Self>, asking: Asking) -> Result<Place, Busy> {
        if let Some(place) = self.take(asking) {
            if self.in_a_run.load(Ordering::Relaxed) {
                if let Some(times) = self.said(|r| r.ended_quietly(Instant::now())) {
                    self.in_a_run.store(false, Ordering::Relaxed);
                    tracing::info!(
                        max_processes = self.max,
                        times,
                        "below max_processes again: no request has waited for a place for {}s",
                        SAID_EVERY.as_secs()
                    );
                }
            }
            return Ok(place);
        }
        let wait = match asking {
            Asking::Start => self.start_wait,
            Asking::Rpc => self.rpc_wait,
        };
        if let Some(times) = self.said(|r| r.failed(Instant::now())) {
            self.in_a_run.store(true, Ordering::Relaxed);
            tracing::warn!(
                max_processes = self.max,
                times,
                "max_processes reached: a request that starts a clone, fetch or push waits up to \
                 {}s for a backend process to end, then is answered 503; the POST of one under \
                 way goes first and waits up to {}s (said again at most every {}s while it \
                 goes on)",
                self.start_wait.as_secs(),
                self.rpc_wait.as_secs(),
                SAID_EVERY.as_secs()
            );
        }
        let _waiting = (asking == Asking::Rpc).then(|| {
            self.state().rpcs_waiting += 1;
            RpcWaiting(self)
        });
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(place) = self.take(asking) {
                return Ok(place);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Busy {
                    max: self.max,
                    waited: wait,
                });
            }
        }
    }

    /// A place if one is free for `asking` now.
    fn take(self: &Arc<Self>, asking: Asking) -> Option<Place> {
        let mut state = self.state();
        let held_back = asking == Asking::Start && state.rpcs_waiting > 0;
        if state.in_use >= self.max || held_back {
            return None;
        }
        state.in_use += 1;
        Some(Place(self.clone()))
    }

    /// Backend processes running now (or being ended) under the cap.
    pub fn in_use(&self) -> usize {
        self.state().in_use
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is one counter step: a panic cannot leave it half done.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    fn cap(max: usize, start_ms: u64, rpc_ms: u64) -> Arc<ProcessCap> {
        Arc::new(ProcessCap::with_waits(
            max,
            Duration::from_millis(start_ms),
            Duration::from_millis(rpc_ms),
        ))
    }

    #[tokio::test]
    async fn a_place_comes_free_for_the_next_request() {
        let cap = cap(1, 5000, 5000);
        let first = cap.place(Asking::Start).await.expect("a free place");
        assert_eq!(cap.in_use(), 1);
        let waiting = tokio::spawn({
            let cap = cap.clone();
            async move { cap.place(Asking::Start).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second request waits");
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(cap.in_use(), 0);
    }

    #[tokio::test]
    async fn a_request_that_waited_out_its_wait_is_busy() {
        let cap = cap(2, 30, 60);
        let _a = cap.place(Asking::Start).await.unwrap();
        let _b = cap.place(Asking::Start).await.unwrap();
        assert_eq!(
            cap.place(Asking::Start).await.unwrap_err(),
            Busy {
                max: 2,
                waited: Duration::from_millis(30)
            }
        );
        assert_eq!(
            cap.place(Asking::Rpc).await.unwrap_err(),
            Busy {
                max: 2,
                waited: Duration::from_millis(60)
            }
        );
        assert_eq!(cap.in_use(), 2);
        assert_eq!(
            cap.state().rpcs_waiting,
            0,
            "the POST that gave up is not counted"
        );
    }

    /// A burst of new exchanges must not starve the POSTs of those already let in: a place that
    /// comes free goes to a waiting POST, whoever waited longer.
    #[tokio::test]
    async fn a_waiting_post_goes_before_requests_that_start_an_exchange() {
        let cap = cap(1, 5000, 5000);
        let held = cap.place(Asking::Start).await.unwrap();
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (i, asking) in [Asking::Start, Asking::Start, Asking::Rpc]
            .into_iter()
            .enumerate()
        {
            let (cap, tx) = (cap.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let place = cap.place(asking).await.unwrap();
                tx.send((i, asking)).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(place);
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(order.recv().await, Some((2, Asking::Rpc)));
        assert_eq!(cap.in_use(), 0);
    }

    /// A request dropped while it waits (its client left) leaves nothing behind: no place
    /// taken, and a POST no longer holds the others back.
    #[tokio::test]
    async fn a_request_dropped_while_waiting_leaves_nothing_behind() {
        let cap = cap(1, 5000, 5000);
        let held = cap.place(Asking::Start).await.unwrap();
        let post = tokio::spawn({
            let cap = cap.clone();
            async move { cap.place(Asking::Rpc).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(cap.state().rpcs_waiting, 1);
        post.abort();
        let _ = post.await;
        assert_eq!(cap.state().rpcs_waiting, 0);
        drop(held);
        assert!(cap.place(Asking::Start).await.is_ok());
        assert_eq!(cap.in_use(), 0);
    }
}
