//! Work run on a thread of its own, its result awaited from async code: for what must not go to
//! tokio's blocking pool. That pool's first thread failing to start (a process limit of
//! gitgate's user reached: `ulimit -u`, systemd's `TasksMax`) is a panic, not an error; and the
//! runtime's end waits for its tasks, where a read on a hung file system may never end. Here a
//! thread that cannot start is an error its caller says in words, and one that never ends holds
//! up only those who await it.
//!
//! The threads are started up front ([`stand_by`], as `serve` starts) and wait for work, each
//! going back to waiting when its work is done: under a memory limit (`RLIMIT_AS`: `ulimit -v`,
//! systemd's `LimitAS=`) a thread started later may not fail as an error at all. glibc hands a
//! new thread the stack of one that ended, needing no memory for it, and the standard library
//! then maps the thread's signal stack inside the new thread, where a failure aborts the whole
//! process ("failed to allocate an alternative stack"): a readiness probe, a SIGHUP or a
//! metrics scrape ended the server. A thread is started after the start only when every one is
//! busy, and only once the memory a thread needs was found free ([`room_for_a_thread`]);
//! else its caller is told, as of a process limit.
//!
//! A readiness check ([`OneAtATime`]) runs at most once at a time and is waited for a bounded
//! time: a check stuck in the kernel (the repositories or the store on a hung NFS mount) is
//! answered "not ready" after [`CHECK_WITHIN`], and no other thread is started for it until it
//! returns. Without that, every probe a load balancer gave up on left its thread behind, one
//! more each time, without bound.

use std::future::Future;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Work handed to a waiting thread: it says its own outcome (a channel of its own).
type Job = Box<dyn FnOnce() + Send>;

/// The threads waiting for work: where to send each its next.
static WAITING: Mutex<Vec<mpsc::Sender<Job>>> = Mutex::new(Vec::new());

/// The name of a thread waiting for work; while it runs some, the kernel knows it by the name
/// [`run`] was given (`ps -L`, `/proc/PID/task/*/comm`: a check stuck on a hung mount shows as
/// `gitgate-ping`).
const WAITING_NAME: &str = "gitgate-waiting";

/// Starts `count` threads that wait for work from [`run`], so that none has to start later
/// (see the module's doc). `Err` when one cannot start: the caller says it with
/// [`cannot_start`].
pub fn stand_by(count: usize) -> std::io::Result<()> {
    for _ in 0..count {
        let next = start_waiting()?;
        WAITING.lock().unwrap_or_else(|e| e.into_inner()).push(next);
    }
    Ok(())
}

/// Starts one thread that runs the work sent to it, one piece at a time, and after each puts
/// itself back among the [`WAITING`]; it lives as long as the process.
fn start_waiting() -> std::io::Result<mpsc::Sender<Job>> {
    let (next, work) = mpsc::channel::<Job>();
    let itself = next.clone();
    std::thread::Builder::new()
        .name(WAITING_NAME.into())
        .spawn(move || {
            allocate_now();
            while let Ok(job) = work.recv() {
                job();
                set_thread_name(WAITING_NAME);
                WAITING
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(itself.clone());
            }
        })?;
    Ok(next)
}

/// Makes the allocators' state for the calling thread, as a thread started up front does at
/// once: mimalloc (gitgate's allocator) maps it at a thread's first allocation, and glibc's
/// malloc (which the C library itself uses: a thread-local's destructor is registered with
/// it) gives a thread its arena at its first, mapping one. Either failing later, a memory
/// limit reached by then, aborts the process ("failed to register TLS destructor: out of
/// memory").
pub fn allocate_now() {
    std::hint::black_box(Vec::<u8>::with_capacity(64));
    // SAFETY: a block from glibc's malloc, freed at once (`free` takes a null pointer too).
    unsafe { libc::free(std::hint::black_box(libc::malloc(64))) };
}

/// The name the kernel shows for the calling thread (at most 15 bytes are kept).
fn set_thread_name(name: &str) {
    let mut bytes = [0u8; 16];
    let kept = name.len().min(15);
    bytes[..kept].copy_from_slice(&name.as_bytes()[..kept]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which `bytes` is.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr());
    }
}

/// How much address space a thread started now may need: its stack (the standard library's
/// 2 MiB), its signal stack and guard pages, and as much again of margin for what other threads
/// map meanwhile.
const THREAD_ROOM: usize = 4 << 20;

/// `Ok` when the memory a new thread needs can be mapped now; else the error of the mapping
/// (`ENOMEM`: a memory limit reached). Looked at before a thread is started after the start:
/// a thread the standard library cannot give a signal stack aborts the process instead of
/// failing (see the module's doc). What other threads map between this look and the thread's
/// start is left to the margin.
pub fn room_for_a_thread() -> std::io::Result<()> {
    // SAFETY: a new private anonymous mapping, unmapped at once; nothing points into it.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            THREAD_ROOM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        );
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        libc::munmap(at, THREAD_ROOM);
    }
    Ok(())
}

/// Runs `work` on a thread of its own, known to the kernel as `name` meanwhile: one of those
/// waiting ([`stand_by`]), or, when all are busy, a new one, which waits for more work after.
/// Its result, once it has run, comes out of the returned future: `None` if it ended without
/// one (a panic, said in the log by [`crate::unwind`]; the thread lives on). `Err` when no
/// thread could start: none was free, and there is no room for another
/// ([`room_for_a_thread`]) or it could not start.
pub fn run<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<impl Future<Output = Option<T>>> {
    let (done, result) = tokio::sync::oneshot::channel();
    let name = name.to_string();
    let mut job: Job = Box::new(move || {
        set_thread_name(&name);
        if let Ok(outcome) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
            let _ = done.send(outcome);
        }
    });
    loop {
        let waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let thread = match waiting {
            Some(thread) => thread,
            None => {
                room_for_a_thread()?;
                start_waiting()?
            }
        };
        // A thread that is gone (never: each holds its own sender) hands the work back.
        match thread.send(job) {
            Ok(()) => return Ok(async move { result.await.ok() }),
            Err(mpsc::SendError(back)) => job = back,
        }
    }
}

/// Why no thread could start `to` do some work ("read the token store"): the error, and where
/// the limits that stopped it are set. Said in these words wherever gitgate starts a thread of
/// its own, so that an operator who has read it once knows it again.
pub fn cannot_start(to: &str, e: &std::io::Error) -> String {
    format!(
        "cannot start a thread to {to}: {e} (the process limit of gitgate's user, ulimit -u or \
         TasksMax, or its memory limit, ulimit -v or LimitAS)"
    )
}

/// How long a readiness check is waited for: the store's ping and the CGI program's look take
/// milliseconds, a few hundred on a machine under load; one that takes longer is stuck.
pub const CHECK_WITHIN: Duration = Duration::from_secs(5);

/// One kind of readiness check (the store's ping, the CGI program's look), run on a thread of
/// its own at most once at a time: when the one running started, if one is.
#[derive(Debug, Default, Clone)]
pub struct OneAtATime(Arc<Mutex<Option<Instant>>>);

/// Ends the check's turn in its [`OneAtATime`] when dropped: after the work has run, or with the
/// work unrun when no thread could start.
struct Turn(Arc<Mutex<Option<Instant>>>);

impl Drop for Turn {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl OneAtATime {
    /// [`run`] for a check that answers in words: its outcome, or why there is none — the check
    /// before has not returned yet (none is started), this one did not return `within`, no
    /// thread could start ([`cannot_start`]), or its thread ended without one (a panic, said in
    /// the log by [`crate::unwind`]).
    pub async fn check<T: Send + 'static>(
        &self,
        name: &str,
        to: &str,
        within: Duration,
        work: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let now = Instant::now();
        {
            let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(since) = *running {
                return Err(still_running(to, now.saturating_duration_since(since)));
            }
            *running = Some(now);
        }
        let turn = Turn(self.0.clone());
        let work = move || {
            let _turn = turn;
            work()
        };
        match run(name, work) {
            Err(e) => Err(cannot_start(to, &e)),
            Ok(running) => match tokio::time::timeout(within, running).await {
                Ok(Some(outcome)) => outcome,
                Ok(None) => Err("the check failed: its thread ended".to_string()),
                Err(_) => Err(format!(
                    "the check did not return within {} s: a call to {to} is stuck (a hung \
                     file system?); no other is started until it returns",
                    within.as_secs()
                )),
            },
        }
    }
}

/// Pure: why a check was not started, the one before it still running after `lasted`.
fn still_running(to: &str, lasted: Duration) -> String {
    format!(
        "the check started {} s ago has not returned: a call to {to} is stuck (a hung file \
         system?); no other is started until it returns",
        lasted.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_result_comes_from_a_thread_of_its_own_and_a_panic_is_none() {
        let here = std::thread::current().id();
        let running = run("gitgate-test", move || std::thread::current().id() != here).unwrap();
        assert_eq!(running.await, Some(true));
        let panicked = run("gitgate-test", || -> u8 { panic!("on purpose") }).unwrap();
        assert_eq!(panicked.await, None);
    }

    /// A thread that cannot start is said with the limit to look at, in the same words for
    /// every check; a check's outcome is its own, and one whose thread ended without an
    /// outcome says so.
    #[tokio::test]
    async fn a_check_says_why_it_has_no_outcome() {
        let e = std::io::Error::from_raw_os_error(11);
        assert_eq!(
            cannot_start("read it", &e),
            format!(
                "cannot start a thread to read it: {e} (the process limit of gitgate's user, \
                 ulimit -u or TasksMax, or its memory limit, ulimit -v or LimitAS)"
            )
        );
        let ready = OneAtATime::default();
        let within = CHECK_WITHIN;
        assert_eq!(
            ready
                .check("gitgate-test", "read it", within, || Ok(7))
                .await,
            Ok(7)
        );
        assert_eq!(
            ready
                .check::<()>("gitgate-test", "read it", within, || Err(
                    "unreadable".into()
                ))
                .await,
            Err("unreadable".to_string())
        );
        assert_eq!(
            ready
                .check::<()>("gitgate-test", "read it", within, || panic!("on purpose"))
                .await,
            Err("the check failed: its thread ended".to_string())
        );
        // A panic ended its turn: the next check runs.
        assert_eq!(
            ready
                .check("gitgate-test", "read it", within, || Ok(8))
                .await,
            Ok(8)
        );
    }

    /// A check stuck in a call (a hung file system) is answered after `within`; the checks
    /// that follow start no thread of their own until it returns, and say so; then checks run
    /// again.
    #[tokio::test]
    async fn a_stuck_check_is_not_ready_and_starts_no_other_until_it_returns() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let ready = OneAtATime::default();
        let started = Arc::new(AtomicUsize::new(0));
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let count = started.clone();
        let within = Duration::from_millis(50);
        let first = ready
            .check::<()>("gitgate-test", "read it", within, move || {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stuck.recv();
                Ok(())
            })
            .await;
        assert!(
            first
                .as_ref()
                .is_err_and(|why| why.starts_with("the check did not return within 0 s")),
            "{first:?}"
        );
        for _ in 0..3 {
            let count = started.clone();
            let next = ready
                .check::<()>("gitgate-test", "read it", within, move || {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await;
            assert!(
                next.as_ref()
                    .is_err_and(|why| why.contains("has not returned: a call to read it is stuck")),
                "{next:?}"
            );
        }
        assert_eq!(started.load(Ordering::SeqCst), 1);
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ready
                .check("gitgate-test", "read it", within, || Ok(9))
                .await
            {
                Ok(n) => break assert_eq!(n, 9),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(why) => panic!("the released check never ended its turn: {why}"),
            }
        }
    }

    #[test]
    fn a_check_still_running_is_said_with_how_long() {
        assert_eq!(
            still_running("read it", Duration::from_millis(61_500)),
            "the check started 61 s ago has not returned: a call to read it is stuck (a hung \
             file system?); no other is started until it returns"
        );
    }
}
