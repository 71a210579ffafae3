//! Work run on a thread of its own, its result awaited from async code: for what must not go to
//! tokio's blocking pool. That pool's first thread failing to start (a process limit of
//! gitgate's user reached: `ulimit -u`, systemd's `TasksMax`) is a panic, not an error; and the
//! runtime's end waits for its tasks, where a read on a hung file system may never end. Here a
//! thread that cannot start is an error its caller says in words, and one that never ends holds
//! up only those who await it.
//!
//! A readiness check ([`OneAtATime`]) runs at most once at a time and is waited for a bounded
//! time: a check stuck in the kernel (the repositories or the store on a hung NFS mount) is
//! answered "not ready" after [`CHECK_WITHIN`], and no other thread is started for it until it
//! returns. Without that, every probe a load balancer gave up on left its thread behind, one
//! more each time, without bound.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts `work` on a new thread named `name`. Its result, once it has run, comes out of the
/// returned future: `None` if the thread ended without one (a panic, said in the log by
/// [`crate::unwind`]). `Err` when no thread could start.
pub fn run<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<impl Future<Output = Option<T>>> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = done.send(work());
        })?;
    Ok(async move { result.await.ok() })
}

/// Why no thread could start `to` do some work ("read the token store"): the error, and where
/// the limit that stopped it is set. Said in these words wherever gitgate starts a thread of
/// its own, so that an operator who has read it once knows it again.
pub fn cannot_start(to: &str, e: &std::io::Error) -> String {
    format!(
        "cannot start a thread to {to}: {e} (the process limit of gitgate's user, ulimit -u or \
         TasksMax)"
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
                 ulimit -u or TasksMax)"
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
