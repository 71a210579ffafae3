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
}
