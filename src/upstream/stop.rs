//! The stop, as a request waiting for its backend's answer sees it.
//!
//! A stop gives the requests in flight the grace period (`[server.limits] shutdown_grace`),
//! then cuts their connections. A request still waiting for its answer to begin then — behind
//! an HTTP upstream that is slow or hangs, or a CGI program that has not sent its headers —
//! used to be cut off with nothing said, and git reports a connection closed before any answer
//! as `fatal: Authentication failed`, which sends people to their tokens. So each backend keeps
//! a [`StopClock`]: at a stop it says when, a little before the cut, such requests are answered
//! `503` with the reason instead, and their answers have time to go out.
//!
//! One clock per worker's backend: each worker starts its own drain ([`StopClock::stopping`]),
//! and the earliest end said counts. Waiting on the clock costs a request that is forwarded an
//! uncontended lock and an atomic add each way — the waiters are counted, so that the stop
//! knows whether answers are going out that its cut must wait for.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// At a stop, how long before the grace period's end the requests still waiting are answered
/// (at most half the grace period): time for the answer to go out before the cut.
const ANSWER_BEFORE_CUT: Duration = Duration::from_secs(1);

/// When a stop that began at `now` with `grace` to run answers the requests still waiting.
pub fn answers_due(now: Instant, grace: Duration) -> Instant {
    now + grace - ANSWER_BEFORE_CUT.min(grace / 2)
}

/// When a request whose wait began at `began` is answered, for a stop whose answers are `due`
/// and whose cut comes at `cut`. A request let in after the answers were due (the push a
/// stopping server still takes on a connection that asked for its advertisement) is not answered
/// `503` before its backend had a chance: it gets half the time left before the cut.
fn answer_at(began: Instant, due: Instant, cut: Instant) -> Instant {
    if began <= due {
        due
    } else {
        began + cut.saturating_duration_since(began) / 2
    }
}

/// When a stopping server answers the requests still waiting for their backend; see the module
/// doc.
#[derive(Debug, Default)]
pub struct StopClock {
    /// `None` until a stop begins; then when the waiting requests are answered, and when the
    /// connections are cut.
    due: Mutex<Option<Due>>,
    /// Told when `due` is set or moves earlier.
    moved: Notify,
    /// Requests waiting on the clock now.
    waiting: AtomicUsize,
    /// Requests the clock ended (see [`StopClock::answered`]).
    answered: AtomicUsize,
}

impl StopClock {
    /// The server stops, its connections cut off after `grace`: the requests waiting then are
    /// answered a little before that ([`answers_due`]); a second call with an earlier end
    /// (a second stop signal: `Duration::ZERO`) moves it. Returns how many wait now.
    pub fn stopping(&self, grace: Duration) -> usize {
        let now = Instant::now();
        let said = Due {
            answers: answers_due(now, grace),
            cut: now + grace,
        };
        {
            let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
            *due = Some(due.map_or(said, |due| Due {
                answers: due.answers.min(said.answers),
                cut: due.cut.min(said.cut),
            }));
        }
        self.moved.notify_waiters();
        self.waiting.load(Ordering::Relaxed)
    }

    /// How many waiting requests the stop ended, to be answered: their answers must be let out
    /// before their connections are cut.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// Resolves when the server stops and the answer of a request still waiting is due; a
    /// request waits on it beside its backend (`select!`), never before a stop. Counted as
    /// waiting from its first poll, as answered when it resolves; a request whose first poll
    /// comes after the answers were due waits as `answer_at` says.
    pub async fn due(&self) -> Stopped {
        // When the wait began, read only once a stop is under way: a wait that began before
        // the stop's first word began before its answers were due.
        let mut began = None;
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(&self.waiting);
        loop {
            let mut moved = pin!(self.moved.notified());
            moved.as_mut().enable();
            let due = *self.due.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(due) = due {
                let began = *began.get_or_insert_with(Instant::now);
                let at = answer_at(began, due.answers, due.cut);
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {
                        self.answered.fetch_add(1, Ordering::Relaxed);
                        return Stopped;
                    }
                    () = moved.as_mut() => {}
                }
            } else {
                moved.await;
            }
        }
    }
}

/// A stop's two times (see [`StopClock::stopping`]).
#[derive(Debug, Clone, Copy)]
struct Due {
    answers: Instant,
    cut: Instant,
}

/// The server stopped before the backend's answer began (see [`StopClock::due`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// A waiting request, counted while its future lives.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answers_are_due_a_second_before_the_cut_or_halfway_through_a_short_grace() {
        let now = Instant::now();
        assert_eq!(
            answers_due(now, Duration::from_secs(30)),
            now + Duration::from_secs(29)
        );
        assert_eq!(
            answers_due(now, Duration::from_millis(800)),
            now + Duration::from_millis(400)
        );
        assert_eq!(answers_due(now, Duration::ZERO), now);
    }

    #[test]
    fn a_request_let_in_after_the_answers_were_due_gets_half_the_time_left() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let (due, cut) = (now + ms(2000), now + ms(3000));
        assert_eq!(answer_at(now, due, cut), due, "waiting when the stop came");
        assert_eq!(answer_at(due, due, cut), due);
        assert_eq!(answer_at(now + ms(2200), due, cut), now + ms(2600));
        assert_eq!(
            answer_at(now + ms(3500), due, cut),
            now + ms(3500),
            "past the cut"
        );
        // A second stop signal: answers and cut at once.
        assert_eq!(answer_at(now + ms(10), now, now), now + ms(10));
    }

    #[tokio::test]
    async fn a_wait_ends_as_usual_while_no_stop_comes() {
        let clock = StopClock::default();
        let out = tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => Ok(7),
            stopped = clock.due() => Err(stopped),
        };
        assert_eq!(out, Ok(7));
        assert_eq!(clock.answered(), 0);
        assert_eq!(clock.waiting.load(Ordering::Relaxed), 0);
    }

    /// A waiting request on a task of its own: what its wait gave, and when.
    fn waiting(clock: &std::sync::Arc<StopClock>) -> tokio::task::JoinHandle<(Stopped, Instant)> {
        let clock = clock.clone();
        tokio::spawn(async move {
            let out = clock.due().await;
            (out, Instant::now())
        })
    }

    #[tokio::test]
    async fn a_stop_ends_a_wait_before_its_grace_period_does() {
        for tries in 1.. {
            let clock = std::sync::Arc::new(StopClock::default());
            let task = waiting(&clock);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let stopped = Instant::now();
            assert_eq!(
                clock.stopping(Duration::from_millis(800)),
                1,
                "one request waits"
            );
            let (out, at) = task.await.unwrap();
            assert_eq!(out, Stopped);
            // Half of a grace period shorter than two seconds.
            assert!(
                at >= stopped + Duration::from_millis(400),
                "{:?}",
                at - stopped
            );
            assert_eq!(clock.answered(), 1);
            assert_eq!(clock.waiting.load(Ordering::Relaxed), 0);
            if at < stopped + Duration::from_millis(800) {
                break;
            }
            // Woken at the grace period's end: the wait's own, or this thread held 400 ms (a
            // loaded machine; found by holding the process 0.6 s). Tried again, three times
            // at most: a wait that lasts the whole grace period fails each.
            assert!(tries < 3, "ended after {:?}, three times", at - stopped);
        }
    }

    #[tokio::test]
    async fn a_second_stop_signal_ends_the_waits_at_once_and_a_later_end_moves_nothing() {
        let clock = std::sync::Arc::new(StopClock::default());
        clock.stopping(Duration::from_secs(30));
        let task = waiting(&clock);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A worker that began its drain later says a later end: the earlier one counts.
        clock.stopping(Duration::from_secs(60));
        assert_eq!(
            clock
                .due
                .lock()
                .unwrap()
                .map(|due| due.answers > Instant::now() + Duration::from_secs(31)),
            Some(false)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = Instant::now();
        clock.stopping(Duration::ZERO);
        let (out, at) = task.await.unwrap();
        assert_eq!(out, Stopped);
        assert!(at < second + Duration::from_secs(1), "{:?}", at - second);
    }

    /// A wait begun 100 ms after the answers were due, 300 ms before the cut, is answered
    /// halfway to the cut: never sooner (whatever the machine does, the wait began no sooner
    /// than `began`), and before the cut. A try in which the test's thread was held until less
    /// than 200 ms were left, or past the cut before the answer was seen, shows nothing and is
    /// made again on a new clock, three times at most; an answer sooner than halfway fails at
    /// once.
    #[tokio::test]
    async fn a_wait_begun_after_the_answers_were_due_is_not_answered_at_once() {
        let mut tries = Vec::new();
        for _ in 0..3 {
            let clock = std::sync::Arc::new(StopClock::default());
            clock.stopping(Duration::from_millis(800));
            let due = clock.due.lock().unwrap().unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let began = Instant::now();
            let left = due.cut.saturating_duration_since(began);
            if left < Duration::from_millis(200) {
                tries.push(format!("began {left:?} before the cut"));
                continue;
            }
            let (out, at) = waiting(&clock).await.unwrap();
            assert_eq!(out, Stopped);
            assert!(
                at >= began + left / 2,
                "answered {:?} after the wait began, with {left:?} left before the cut",
                at - began
            );
            if at < due.cut {
                return;
            }
            tries.push(format!("answered {:?} after the cut", at - due.cut));
        }
        panic!("no try was answered before the cut: {tries:?}");
    }

    #[tokio::test]
    async fn a_wait_begun_after_the_cut_ends_at_once() {
        let clock = StopClock::default();
        clock.stopping(Duration::ZERO);
        let out = tokio::time::timeout(Duration::from_secs(5), clock.due()).await;
        assert_eq!(out, Ok(Stopped));
        assert_eq!(clock.answered(), 1);
    }

    /// Of two stops said, the earlier cut counts as the earlier answers do: a worker that
    /// began its drain later does not give a request let in late more time than the
    /// connections have.
    #[tokio::test]
    async fn a_later_cut_said_by_a_second_worker_moves_nothing() {
        let clock = StopClock::default();
        let first = Instant::now();
        clock.stopping(Duration::from_secs(2));
        clock.stopping(Duration::from_secs(60));
        let due = clock.due.lock().unwrap().unwrap();
        assert!(
            due.cut <= first + Duration::from_secs(3),
            "{:?}",
            due.cut - first
        );
        assert!(due.answers <= first + Duration::from_secs(2));
    }
}
