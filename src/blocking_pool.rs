//! tokio's blocking pool, each runtime's, with all its threads started with the runtime and
//! kept for its life: a `spawn_blocking` (a token read on a cache miss, a password check, the
//! CGI runner's look at a process group, the upstream's name looked up) never starts a thread.
//!
//! The pool starts threads as work comes and ends them after 10 s idle, and a thread started
//! late can end the process. Under a memory limit (`RLIMIT_AS`: `ulimit -v`, systemd's
//! `LimitAS=`) glibc hands a new thread the stack of one that ended, and the standard library
//! then maps its signal stack inside the new thread, where a failure aborts the process
//! ("failed to allocate an alternative stack"); under a process limit the pool's first thread
//! failing to start is a panic. With its threads all there from the start, a limit met later
//! is met by what the work itself needs (a git process that cannot start: a `503`), never by
//! a thread.
//!
//! The price: a pool of [`THREADS`] per runtime, where tokio allows 512; a ninth blocking call
//! at once waits for one of the eight to end (the store's misses are four at a time
//! process-wide, `Store::miss_slots`; password checks two per core, `api`). What can hang for
//! seconds waits for its turn outside the pool, where giving up ends the wait, so that it never
//! takes all eight: lookups of the upstream's name four at a time (`upstream::lookup`: a
//! resolver that does not answer), REST calls' store work two at a time process-wide
//! (`api::STORE_WORK_AT_ONCE`: a store locked by another process, a listing of a large one).
//! Blocks' audit events, which wait for a store write-locked by another process, are not
//! written here at all: the store's writer batches them with the failures' on its own thread
//! (`guard`).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The blocking threads of each runtime (each worker's, the main one's).
pub const THREADS: usize = 8;

/// How long the start waits for one of the pool's threads to say it runs. A thread starts in
/// microseconds; one that is not there after this never started (tokio says nothing of a
/// thread it could not start once it has one).
const STARTED_WITHIN: Duration = Duration::from_secs(10);

/// `builder` with a pool of [`THREADS`] threads that never end for idling (named
/// `gitgate-block`), each marked as one for [`may_block`]; [`start`] starts them. A
/// current-thread runtime starts no thread but these: its event loop is the thread that runs
/// it.
pub fn configure(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder
        .max_blocking_threads(THREADS)
        .thread_keep_alive(Duration::MAX)
        .thread_name("gitgate-block")
        .on_thread_start(|| A_BLOCKING_THREAD.with(|b| b.set(true)))
}

thread_local! {
    /// This thread is one of a blocking pool's (see [`configure`]).
    static A_BLOCKING_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread may wait (for a store connection to come back, say): one of a
/// blocking pool's threads, or one outside any runtime (the command line, a thread of the
/// process's own). Never an event loop's, or any other thread inside a runtime: a wait there
/// would hold up every connection it serves.
pub fn may_block() -> bool {
    A_BLOCKING_THREAD.with(|b| b.get()) || tokio::runtime::Handle::try_current().is_err()
}

/// `work` on the blocking pool, for a caller that may give up waiting for it (a deadline, a
/// connect timeout): dropped before a thread took it, it never starts — tokio otherwise runs
/// a blocking task it has not started yet, for nobody, holding what it holds (a turn, then a
/// thread) — and one running already runs to its end.
pub async fn unless_given_up<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    struct AbortedIfDropped<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortedIfDropped<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortedIfDropped(tokio::task::spawn_blocking(work));
    (&mut task.0).await
}

/// Starts all of `runtime`'s blocking threads now (built with [`configure`]): one blocking call
/// per thread, each held until all are running, so that each needs a thread of its own. Before
/// each, a thread of the process's own is looked for room ([`crate::own_thread::room_for_a_thread`])
/// and started and ended: tokio's failing start of the pool's first thread is a panic, and of a
/// later one is not said at all; this says it, in [`crate::own_thread::cannot_start`]'s words.
pub fn start(runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    let cannot = |e: &std::io::Error| crate::own_thread::cannot_start("block on", e);
    let running = Arc::new((Mutex::new(0usize), Condvar::new()));
    let released = Release(Arc::new((Mutex::new(false), Condvar::new())));
    for n in 1..=THREADS {
        crate::own_thread::room_for_a_thread().map_err(|e| cannot(&e))?;
        std::thread::Builder::new()
            .name("gitgate-block".into())
            .spawn(|| {})
            .map_err(|e| cannot(&e))?
            .join()
            .map_err(|_| "a thread started to try the blocking pool's start failed".to_string())?;
        let (arrived, release) = (running.clone(), released.0.clone());
        runtime.spawn_blocking(move || {
            crate::own_thread::allocate_now();
            *arrived.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            arrived.1.notify_all();
            let (done, wake) = &*release;
            let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
            while !*done {
                done = wake.wait(done).unwrap_or_else(|e| e.into_inner());
            }
        });
        let (count, arrived) = &*running;
        let count = count.lock().unwrap_or_else(|e| e.into_inner());
        let (count, _) = arrived
            .wait_timeout_while(count, STARTED_WITHIN, |count| *count < n)
            .unwrap_or_else(|e| e.into_inner());
        if *count < n {
            return Err(format!(
                "cannot start the blocking threads: {} of {THREADS} started within {} s (the \
                 process limit of gitgate's user, ulimit -u or TasksMax, or its memory limit, \
                 ulimit -v or LimitAS)",
                *count,
                STARTED_WITHIN.as_secs()
            ));
        }
    }
    Ok(())
}

/// A current-thread runtime as each worker's, its blocking threads started: for tests of work
/// that shares them.
#[cfg(test)]
pub fn started_for_a_test() -> tokio::runtime::Runtime {
    let runtime = configure(&mut tokio::runtime::Builder::new_current_thread())
        .enable_all()
        .build()
        .unwrap();
    start(&runtime).unwrap();
    runtime
}

/// Lets the held blocking calls of [`start`] return when dropped, whether all started or not.
struct Release(Arc<(Mutex<bool>, Condvar)>);

impl Drop for Release {
    fn drop(&mut self) {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.0 .1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threads of the pool's number [`THREADS`] are all running once `start` returns, and
    /// stay: a burst of blocking calls, each held until all run, starts no other and needs
    /// no more than those.
    #[test]
    fn every_blocking_thread_runs_from_the_start_and_no_other_starts() {
        // A name of this runtime's own: other tests in this process start pools of their own.
        let runtime = configure(&mut tokio::runtime::Builder::new_current_thread())
            .thread_name("pool-under-test")
            .enable_all()
            .build()
            .unwrap();
        start(&runtime).unwrap();
        let threads = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter(|t| {
                    let comm = t.as_ref().unwrap().path().join("comm");
                    std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "pool-under-test")
                })
                .count()
        };
        let before = threads();
        assert!(before >= THREADS, "{before}");
        let all = Arc::new(std::sync::Barrier::new(THREADS));
        let names: Vec<_> = (0..THREADS)
            .map(|_| {
                let all = all.clone();
                runtime.spawn_blocking(move || {
                    all.wait();
                    std::thread::current().id()
                })
            })
            .collect();
        let ids: std::collections::HashSet<_> = runtime.block_on(async {
            let mut ids = std::collections::HashSet::new();
            for n in names {
                ids.insert(n.await.unwrap());
            }
            ids
        });
        assert_eq!(ids.len(), THREADS);
        assert_eq!(threads(), before);
    }

    /// Only an event loop may not wait: its runtime's blocking threads and a thread outside
    /// any runtime may.
    #[test]
    fn an_event_loop_may_not_block_and_the_blocking_threads_may() {
        let runtime = configure(&mut tokio::runtime::Builder::new_current_thread())
            .enable_all()
            .build()
            .unwrap();
        let (on_the_loop, on_a_blocking_thread) = runtime.block_on(async {
            let on_the_loop = may_block();
            let blocking = tokio::task::spawn_blocking(may_block).await.unwrap();
            (on_the_loop, blocking)
        });
        assert!(!on_the_loop, "the event loop may not block");
        assert!(on_a_blocking_thread, "a blocking thread may");
        let _inside = runtime.enter();
        assert!(!may_block(), "a thread inside the runtime may not");
        drop(_inside);
        assert!(may_block(), "a thread outside any runtime may");
        assert!(std::thread::spawn(may_block).join().unwrap());
    }
}
