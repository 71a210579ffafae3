//! Work run on a thread of its own, its result awaited from async code: for what must not go to
//! tokio's blocking pool. That pool's first thread failing to start (a process limit of
//! gitgate's user reached: `ulimit -u`, systemd's `TasksMax`) is a panic, not an error; and the
//! runtime's end waits for its tasks, where a read on a hung file system may never end. Here a
//! thread that cannot start is an error its caller says in words, and one that never ends holds
//! up only those who await it.

use std::future::Future;

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

/// [`run`] for a check that answers in words (the readiness checks): its outcome, or why there
/// is none — no thread could start ([`cannot_start`]), or its thread ended without one (a panic,
/// said in the log by [`crate::unwind`]).
pub async fn check<T: Send + 'static>(
    name: &str,
    to: &str,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match run(name, work) {
        Err(e) => Err(cannot_start(to, &e)),
        Ok(running) => running
            .await
            .unwrap_or_else(|| Err("the check failed: its thread ended".to_string())),
    }
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
        assert_eq!(check("gitgate-test", "read it", || Ok(7)).await, Ok(7));
        assert_eq!(
            check::<()>("gitgate-test", "read it", || Err("unreadable".into())).await,
            Err("unreadable".to_string())
        );
        assert_eq!(
            check::<()>("gitgate-test", "read it", || panic!("on purpose")).await,
            Err("the check failed: its thread ended".to_string())
        );
    }
}
