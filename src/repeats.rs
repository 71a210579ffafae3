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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// The last failure, while a run goes on.
    last_failed: Option<Instant>,
}

impl Repeats {
    pub fn new(window: Duration) -> Repeats {
        Repeats {
            window,
            last_said: None,
            unsaid: 0,
            total: 0,
            last_failed: None,
        }
    }

    /// The window given to [`Repeats::new`].
    pub fn window(&self) -> Duration {
        self.window
    }

    /// One more failure at `now`: `Some(n)` when a line should be said now, `n` the failures
    /// it stands for (this one and those not said since the last line); `None` to stay quiet.
    pub fn failed(&mut self, now: Instant) -> Option<u64> {
        self.failed_times(1, now)
    }

    /// `times` more failures at `now` (a count made elsewhere, such as a window's dropped
    /// events), said as [`Repeats::failed`] says one: `Some(n)` when a line should be said now.
    pub fn failed_times(&mut self, times: u64, now: Instant) -> Option<u64> {
        self.unsaid += times;
        self.total += times;
        self.last_failed = Some(now);
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

    /// The failures not said yet, once a window has passed since the last line: `Some(n)` for
    /// the line the next failure would have said. A burst's count is otherwise said only with
    /// the next failure, which may not come for hours — so a caller that holds unsaid failures
    /// looks again when [`Repeats::unsaid_due_at`] says, from a timer.
    pub fn unsaid_due(&mut self, now: Instant) -> Option<u64> {
        if self.unsaid == 0 {
            return None;
        }
        if self
            .last_said
            .is_some_and(|said| now.saturating_duration_since(said) < self.window)
        {
            return None;
        }
        self.last_said = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }

    /// When failures not said yet are due to be (see [`Repeats::unsaid_due`]); `None` when
    /// there are none.
    pub fn unsaid_due_at(&self) -> Option<Instant> {
        (self.unsaid > 0).then(|| self.last_said.map(|said| said + self.window))?
    }

    /// When [`Repeats::ended_quietly`] would end the run, if no failure comes before: a window
    /// after the last one. `None` with no run going on.
    pub fn quiet_end_at(&self) -> Option<Instant> {
        self.last_failed.map(|last| last + self.window)
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

    /// As [`Repeats::ended`], for a limit that is reached now and then rather than a failure
    /// that stops: the run ends only once a whole window has passed since its last failure
    /// (`None` before that). A load that hovers at the limit would otherwise end and start a
    /// run, and say it, with every request.
    pub fn ended_quietly(&mut self, now: Instant) -> Option<u64> {
        match self.last_failed {
            Some(last) if now.saturating_duration_since(last) >= self.window => self.ended(),
            _ => None,
        }
    }
}

/// A principal's refusals (a rate limit's, the cap of requests in flight), logged at most once
/// per [`REFUSALS_SAID_EVERY_MS`]: a client that ignores `Retry-After` and floods would
/// otherwise double the log's lines (each request has its own line besides, with its status).
/// The line after a quiet spell says how many refusals went unlogged before it; those of a
/// burst that stopped, which no next refusal says, are said as its tail ([`Refusals::tail`]):
/// once its minute has passed, when the state is forgotten (the bucket refilled and swept, the
/// place in flight let go, its last request ended and its last line a minute old), or at the
/// stop. Kept with the principal's other state (its bucket, its count in flight), in 24 bytes,
/// on the monotonic clock in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// When one was last logged (`None`: never) ...
    said_at_ms: Option<i64>,
    /// ... and how many were refused since, unlogged.
    unsaid: u32,
}

/// How often a principal's refusals of one kind are logged at most.
pub const REFUSALS_SAID_EVERY_MS: i64 = 60_000;

impl Refusals {
    /// One more refusal at `now`: `Some(n)` when it is the one to log (the first, and then the
    /// first a minute after the last logged one), `n` the refusals not logged between; `None`
    /// to stay quiet. A `now` before the last line (it cannot be, on the monotonic clock) logs.
    pub fn refused(&mut self, now: i64) -> Option<u32> {
        if self.said_lately(now) {
            self.unsaid = self.unsaid.saturating_add(1);
            return None;
        }
        self.said_at_ms = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }

    /// The refusals left unlogged since the last line, as the tail of their burst: `Some(n)`
    /// (`n` > 0) once [`REFUSALS_SAID_EVERY_MS`] has passed since that line — a burst that
    /// stopped has no next refusal to say its count — or at once when `now_or_never` (the state
    /// is about to be forgotten, or the process stops). The tail is the line of its minute: a
    /// refusal within the minute after it is counted by the next line, as after any other, so
    /// that a client refused every few seconds still gets one line a minute, not a tail and a
    /// new first line each minute.
    pub fn tail(&mut self, now: i64, now_or_never: bool) -> Option<u32> {
        if self.unsaid == 0 || (!now_or_never && self.said_lately(now)) {
            return None;
        }
        self.said_at_ms = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }

    /// Whether a line was said within the last [`REFUSALS_SAID_EVERY_MS`] before `now`: the
    /// next refusal would stay quiet.
    pub fn said_lately(&self, now: i64) -> bool {
        self.said_at_ms
            .is_some_and(|said| (0..REFUSALS_SAID_EVERY_MS).contains(&now.saturating_sub(said)))
    }
}

/// [`Refusals`] of requests whose principal is not known — refused for their form, or as a
/// web page of another site's, before any credentials are read — kept per key (the client's
/// address and the reason it was told). A page of another site that fires `<img src>` at a
/// repository every second, or a client that repeats one malformed request, would otherwise
/// add a second line to each of its requests; a new reason, or another address, is still said
/// at once. At most `most` keys are kept (a key costs some 50 bytes): when the map is full,
/// the keys not said within the last window are forgotten (their unlogged refusals are counted
/// by their request lines only), and while it is still full, every other key shares one count
/// — clients that vary what they send cannot grow the map, nor get a line per request back.
/// And at most `most_per_client` of them are one client's ([`RefusalsBy::per_client`]; the
/// client of a key is what `client_of` makes of it): one client that sends a new reason with
/// each request would otherwise hold every key, said anew each minute so never forgotten, and
/// the first refusal of any other address — a new attacker's — would go to the shared count,
/// unsaid; its keys past its share go to that count instead.
/// Each key keeps a `T` given with the refusal that was said last (the request id of its
/// line), which its tail names ([`RefusalsBy::tails`]).
#[derive(Debug)]
pub struct RefusalsBy<K, T = (), C = ()> {
    keys: std::collections::HashMap<K, (Refusals, T)>,
    most: usize,
    /// How many keys each client holds (none: no entry), and the most it may.
    held: std::collections::HashMap<C, usize>,
    most_per_client: usize,
    client_of: fn(&K) -> C,
    /// The keys that found no room, and those forgotten with refusals unsaid.
    overflow: Refusals,
    /// When the full map was last looked through for keys to forget: at most once a second,
    /// so that a flood from more addresses than it holds does not pay a pass over every key
    /// for each of its refusals.
    swept_at_ms: Option<i64>,
}

impl<K: std::hash::Hash + Eq + Clone> RefusalsBy<K> {
    pub fn new(most: usize) -> RefusalsBy<K> {
        RefusalsBy::with_tags(most)
    }
}

impl<K: std::hash::Hash + Eq + Clone, T: Copy + Default> RefusalsBy<K, T> {
    /// As [`RefusalsBy::new`], each key keeping a `T` (see [`RefusalsBy::refused_with`]).
    pub fn with_tags(most: usize) -> RefusalsBy<K, T> {
        RefusalsBy::per_client(most, most, |_| ())
    }
}

impl<K, T, C> RefusalsBy<K, T, C>
where
    K: std::hash::Hash + Eq + Clone,
    T: Copy + Default,
    C: std::hash::Hash + Eq,
{
    /// At most `most` keys, and at most `most_per_client` of one client's (`client_of` says
    /// whose a key is), each keeping a `T`.
    pub fn per_client(
        most: usize,
        most_per_client: usize,
        client_of: fn(&K) -> C,
    ) -> RefusalsBy<K, T, C> {
        RefusalsBy {
            keys: std::collections::HashMap::new(),
            most,
            held: std::collections::HashMap::new(),
            most_per_client,
            client_of,
            overflow: Refusals::default(),
            swept_at_ms: None,
        }
    }

    /// One more refusal for `key` at `now` (monotonic milliseconds): as [`Refusals::refused`],
    /// `Some(n)` when it is the one to log, `n` the refusals of its key not logged before it.
    pub fn refused(&mut self, key: K, now: i64) -> Option<u32> {
        self.refused_with(key, now, T::default())
    }

    /// [`RefusalsBy::refused`], keeping `tag` with the key when this refusal is the one said.
    pub fn refused_with(&mut self, key: K, now: i64, tag: T) -> Option<u32> {
        if !self.keys.contains_key(&key) {
            let client = (self.client_of)(&key);
            if self.no_room_for(&client) {
                self.sweep(now);
                if self.no_room_for(&client) {
                    return self.overflow.refused(now);
                }
            }
            *self.held.entry(client).or_default() += 1;
        }
        let (refusals, kept) = self.keys.entry(key).or_default();
        let said = refusals.refused(now);
        if said.is_some() {
            *kept = tag;
        }
        said
    }

    /// Whether a new key of `client`'s finds no place: the map is full, or the client holds
    /// its share of it.
    fn no_room_for(&self, client: &C) -> bool {
        self.keys.len() >= self.most
            || self
                .held
                .get(client)
                .is_some_and(|&held| held >= self.most_per_client)
    }

    /// Forgets the keys not said within the last window, at most once a [`SWEPT_EVERY_MS`]:
    /// a key forgotten with refusals unsaid leaves them to the overflow's tail.
    fn sweep(&mut self, now: i64) {
        if self
            .swept_at_ms
            .is_some_and(|swept| (0..SWEPT_EVERY_MS).contains(&now.saturating_sub(swept)))
        {
            return;
        }
        self.swept_at_ms = Some(now);
        let (overflow, held, client_of) = (&mut self.overflow, &mut self.held, self.client_of);
        self.keys.retain(|key, (r, _)| {
            let keep = r.said_lately(now);
            if !keep {
                overflow.unsaid = overflow.unsaid.saturating_add(r.unsaid);
                if let Some(n) = held.get_mut(&client_of(key)) {
                    *n = n.saturating_sub(1);
                }
            }
            keep
        });
        held.retain(|_, n| *n > 0);
    }

    /// The tails due at `now` (see [`Refusals::tail`]): each key's, with the tag of its last
    /// line, and the overflow's (`None`: keys that found no room or were forgotten).
    pub fn tails(&mut self, now: i64, now_or_never: bool) -> Vec<(Option<K>, u32, T)> {
        let mut tails: Vec<(Option<K>, u32, T)> = self
            .keys
            .iter_mut()
            .filter_map(|(key, (r, tag))| {
                Some((Some(key.clone()), r.tail(now, now_or_never)?, *tag))
            })
            .collect();
        if let Some(n) = self.overflow.tail(now, now_or_never) {
            tails.push((None, n, T::default()));
        }
        tails
    }

    /// How many keys are kept.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// How often at most a [`RefusalsBy`] with no room for a new key looks for keys to forget.
const SWEPT_EVERY_MS: i64 = 1_000;

/// [`Repeats`] for a failure said with its cause: a cause other than the last one said is said
/// at once, as news (a store that was missing and is now a different file), the same cause at
/// most once per window.
#[derive(Debug)]
pub struct RepeatedCause {
    repeats: Repeats,
    cause: String,
}

impl RepeatedCause {
    pub fn new(window: Duration) -> RepeatedCause {
        RepeatedCause {
            repeats: Repeats::new(window),
            cause: String::new(),
        }
    }

    /// As [`Repeats::failed`], with this failure's `cause`.
    pub fn failed(&mut self, cause: &str, now: Instant) -> Option<u64> {
        if cause != self.cause {
            cause.clone_into(&mut self.cause);
            self.repeats.last_said = None;
        }
        self.repeats.failed(now)
    }

    /// It worked again: as [`Repeats::ended`] (the run's total, once), and the next failure is
    /// news whatever its cause.
    pub fn ended(&mut self) -> Option<u64> {
        self.cause.clear();
        self.repeats.ended()
    }
}

/// [`Repeats`] shared by the requests that fail, and a task that says what falls due when no
/// further failure comes to say it: a burst's count a window after the line that began it,
/// and, for a limit reached now and then, the run's end a window after its last failure. Said
/// only with the next failure, either could wait for hours.
#[derive(Debug)]
pub struct SaidInTime {
    repeats: Mutex<Repeats>,
    /// Whether a task is looking (one at a time, while something is due).
    looking_again: AtomicBool,
}

/// What [`SaidInTime`]'s task found due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Failures not said yet, a window after the last line ([`Repeats::unsaid_due`]).
    Unsaid(u64),
    /// The run's total, a window after its last failure ([`Repeats::ended_quietly`]).
    Ended(u64),
}

impl SaidInTime {
    pub fn new(window: Duration) -> SaidInTime {
        SaidInTime {
            repeats: Mutex::new(Repeats::new(window)),
            looking_again: AtomicBool::new(false),
        }
    }

    /// `f` on the counts, under their lock.
    pub fn with<T>(&self, f: impl FnOnce(&mut Repeats) -> T) -> T {
        f(&mut self.repeats())
    }

    fn repeats(&self) -> MutexGuard<'_, Repeats> {
        // A poisoned lock only loses a log line's count.
        self.repeats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Called after a failure: unless a task is already looking, starts one on the running
    /// tokio runtime (none: nothing is said later) that sleeps until something is due, hands it
    /// to `say`, and goes on while more is due. `ends_quietly`: whether the run also ends, and
    /// is said to, once a window passes without a failure.
    pub fn look_again_later<F>(self: &Arc<Self>, ends_quietly: bool, say: F)
    where
        F: Fn(Due) + Send + 'static,
    {
        if self.looking_again.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.looking_again.store(false, Ordering::Release);
            return;
        };
        let said = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let next = {
                    let Some(said) = said.upgrade() else { return };
                    let repeats = said.repeats();
                    let next = repeats
                        .unsaid_due_at()
                        .or(ends_quietly.then(|| repeats.quiet_end_at()).flatten());
                    let Some(next) = next else {
                        // Under the lock: a failure counted after this starts a task of its own.
                        said.looking_again.store(false, Ordering::Release);
                        return;
                    };
                    next
                };
                tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
                let Some(said) = said.upgrade() else { return };
                let now = Instant::now();
                let (unsaid, ended) = {
                    let mut repeats = said.repeats();
                    let unsaid = repeats.unsaid_due(now);
                    let ended = if ends_quietly {
                        repeats.ended_quietly(now)
                    } else {
                        None
                    };
                    (unsaid, ended)
                };
                if let Some(times) = unsaid {
                    say(Due::Unsaid(times));
                }
                if let Some(times) = ended {
                    say(Due::Ended(times));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_cause_is_said_at_once_and_the_same_one_once_per_window() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut r = RepeatedCause::new(Duration::from_secs(10));
        assert_eq!(r.failed("missing", s(0)), Some(1));
        assert_eq!(r.failed("missing", s(1)), None);
        assert_eq!(r.failed("missing", s(2)), None);
        assert_eq!(r.failed("replaced", s(3)), Some(3));
        assert_eq!(r.failed("replaced", s(4)), None);
        assert_eq!(r.failed("replaced", s(13)), Some(2));
        // Over: its total once, and the same cause again is news, counted from one.
        assert_eq!(r.ended(), Some(6));
        assert_eq!(r.ended(), None);
        assert_eq!(r.failed("replaced", s(14)), Some(1));
    }

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
    fn counts_made_elsewhere_are_said_as_single_failures_are() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut r = Repeats::new(Duration::from_secs(60));
        // The first count at once, whole; the next ones within the window quiet, then their
        // sum with the first count past it.
        assert_eq!(r.failed_times(100, s(0)), Some(100));
        assert_eq!(r.failed_times(50, s(1)), None);
        assert_eq!(r.failed(s(2)), None);
        assert_eq!(r.failed_times(7, s(61)), Some(58));
        assert_eq!(r.ended(), Some(158));
    }

    #[test]
    fn a_limit_reached_now_and_then_is_one_run_until_a_quiet_window() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut r = Repeats::new(Duration::from_secs(60));
        assert_eq!(r.failed(s(0)), Some(1));
        // Below the limit between failures: the run goes on, nothing more said.
        for i in 1..30 {
            assert_eq!(r.ended_quietly(s(2 * i - 1)), None);
            assert_eq!(r.failed(s(2 * i)), None);
        }
        assert_eq!(r.ended_quietly(s(59 + 58)), None);
        assert_eq!(r.ended_quietly(s(58 + 60)), Some(30));
        assert_eq!(r.ended_quietly(s(58 + 61)), None);
        assert_eq!(r.failed(s(200)), Some(1));
    }

    /// Refusals whose principal is unknown are said once a minute per key, a new key at once;
    /// a full map forgets the keys said long ago, and shares one count among the rest.
    #[test]
    fn refusals_are_said_once_a_minute_per_key_and_the_keys_are_bounded() {
        let min = REFUSALS_SAID_EVERY_MS;
        let mut r = RefusalsBy::new(2);
        assert_eq!(r.refused("a", 0), Some(0));
        for t in 1..100 {
            assert_eq!(r.refused("a", t * 10), None, "{t}");
        }
        // Another key is news, whatever the first one's count.
        assert_eq!(r.refused("b", 1_000), Some(0));
        assert_eq!(r.refused("a", min), Some(99));
        assert_eq!(r.refused("a", min + 1), None);
        // Full: a third key shares the overflow's count while both are said lately ...
        assert_eq!(r.refused("c", min + 2), Some(0));
        assert_eq!(r.refused("d", min + 3), None);
        assert_eq!(r.refused("c", min + 4), None);
        assert_eq!(r.len(), 2);
        // ... and takes the place of one said a minute ago once there is one (and a second
        // has passed since the map was last looked through, at min + 2).
        assert_eq!(r.refused("c", 1_000 + min + 2), Some(0));
        assert_eq!(r.len(), 2);
        assert_eq!(r.refused("b", 1_000 + min + 3), None);
    }

    /// A burst that stops is not left with its last minute's count unsaid: its tail is due a
    /// minute after its last line (or at once at a stop), once, and only when there is one.
    #[test]
    fn the_tail_of_a_burst_is_said_once_its_minute_has_passed() {
        let min = REFUSALS_SAID_EVERY_MS;
        let mut r = Refusals::default();
        assert_eq!(r.refused(0), Some(0));
        for t in 1..=7 {
            assert_eq!(r.refused(t), None);
        }
        assert_eq!(r.tail(min - 1, false), None, "before its minute");
        assert_eq!(r.tail(min, false), Some(7));
        assert_eq!(r.tail(min + 1, true), None, "said already");
        // The tail is the line of its minute: the refusals within the minute after it are
        // quiet, their tail due a minute after it, or said at a stop whatever the window.
        assert_eq!(r.refused(min + 2), None);
        assert_eq!(r.refused(min + 3), None);
        assert_eq!(r.tail(2 * min - 1, false), None, "within the tail's minute");
        assert_eq!(
            r.tail(min + 4, true),
            Some(2),
            "at a stop, whatever the window"
        );
        // A refusal a minute after the last line, a tail, is said at once.
        assert_eq!(r.refused(2 * min + 4), Some(0));
        // Per key, with the tag of the key's last line; keys without a tail say nothing.
        let mut by: RefusalsBy<&str, u32> = RefusalsBy::with_tags(8);
        assert_eq!(by.refused_with("a", 0, 11), Some(0));
        assert_eq!(by.refused_with("a", 1, 12), None);
        assert_eq!(by.refused_with("b", 2, 21), Some(0));
        assert_eq!(by.tails(min + 5, false), vec![(Some("a"), 1, 11)]);
        assert!(by.tails(min + 6, true).is_empty());
    }

    /// A client refused every 11 s, its tails looked for every 5 s as the server does: a
    /// tail is the line of its minute, so the refusal after it is counted by the next line,
    /// not said at once — one line a minute at most, and every refusal counted by one.
    #[test]
    fn sparse_refusals_and_their_tails_are_said_at_most_once_a_minute() {
        let min = REFUSALS_SAID_EVERY_MS;
        let mut r = Refusals::default();
        let mut said_at = Vec::new();
        let mut counted = 0;
        let mut refused = 0;
        for t in (0..600_000).step_by(1_000) {
            if t % 11_000 == 3_000 {
                refused += 1;
                if let Some(n) = r.refused(t) {
                    said_at.push(t);
                    counted += n + 1;
                }
            }
            if t % 5_000 == 0 {
                if let Some(n) = r.tail(t, false) {
                    said_at.push(t);
                    counted += n;
                }
            }
        }
        counted += r.tail(600_000, true).unwrap_or(0);
        assert_eq!(counted, refused);
        for two in said_at.windows(2) {
            assert!(two[1] - two[0] >= min, "lines at {said_at:?}");
        }
        assert!(said_at.len() >= 9, "{said_at:?}");
    }

    /// A full map is looked through for keys to forget at most once a second: a key that
    /// could take a forgotten one's place waits for the next pass, sharing the overflow's
    /// count until then.
    #[test]
    fn a_full_map_is_swept_at_most_once_a_second() {
        let min = REFUSALS_SAID_EVERY_MS;
        let mut r = RefusalsBy::new(2);
        assert_eq!(r.refused("a", 0), Some(0));
        assert_eq!(r.refused("b", 1), Some(0));
        // Full, "a" and "b" said lately: a pass finds nothing to forget, the overflow says "c".
        assert_eq!(r.refused("c", min - 500), Some(0));
        assert_eq!(r.len(), 2);
        // 600 ms on, "a" and "b" could go, but the last pass was within the second: none now,
        // and "d" shares the overflow's count.
        assert_eq!(r.refused("d", min + 100), None);
        assert_eq!(r.len(), 2);
        // A second after that pass, they go, and "e" takes a place of its own.
        assert_eq!(r.refused("e", min + 500), Some(0));
        assert_eq!(r.len(), 1);
    }

    /// One client sending a new reason with each refusal holds its share of the keys, no
    /// more: another client's first refusal is still said at once (it went to the shared
    /// count, unsaid, once the first held every key), and the first one's keys past its share
    /// share that count. Its keys forgotten, it has its share again.
    #[test]
    fn one_client_varying_its_reason_cannot_take_every_key() {
        let min = REFUSALS_SAID_EVERY_MS;
        let mut r: RefusalsBy<(&str, u32), (), &str> = RefusalsBy::per_client(64, 4, |k| k.0);
        let mut said = 0;
        for i in 0..1_000 {
            said += u32::from(r.refused(("flood", i), i64::from(i)).is_some());
        }
        assert_eq!(
            r.refused(("new", 0), 1_000),
            Some(0),
            "another client's first"
        );
        assert_eq!(r.refused(("new", 1), 1_001), Some(0));
        // The first client's four keys, and the shared count's first line.
        assert_eq!(said, 5);
        assert_eq!(r.len(), 6);
        // A minute on, its keys said long ago are forgotten, and it has places again; the
        // other's, said within the minute, stay.
        assert_eq!(r.refused(("flood", 5_000), min + 500), Some(0));
        assert_eq!(r.len(), 3);
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

    /// What `SaidInTime`'s task says, and when: a burst's count a window after the caller's
    /// first line, then (`ends_quietly`) the run's end a window after its last failure; and
    /// without `ends_quietly`, the count alone.
    #[test]
    fn the_task_says_the_count_and_the_end_when_they_fall_due() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for ends_quietly in [true, false] {
            let window = Duration::from_millis(150);
            let said = Arc::new(SaidInTime::new(window));
            let heard = Arc::new(Mutex::new(Vec::new()));
            let started = Instant::now();
            runtime.block_on(async {
                for _ in 0..3 {
                    if said.with(|r| r.failed(Instant::now())).is_some() {
                        heard
                            .lock()
                            .unwrap()
                            .push((Due::Unsaid(1), started.elapsed()));
                    }
                    let heard = heard.clone();
                    said.look_again_later(ends_quietly, move |due| {
                        heard.lock().unwrap().push((due, started.elapsed()));
                    });
                }
                // Until the task has said what falls due and ended (it clears looking_again
                // last), 10 s at most. Waited for, not slept: a thread held past the task's
                // timers and a fixed sleep's wakes with all of them due, and block_on polls
                // this future first and returns before the task has run.
                let waiting = Instant::now();
                while said.looking_again.load(Ordering::Acquire)
                    && waiting.elapsed() < Duration::from_secs(10)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let heard = heard.lock().unwrap().clone();
            let dues: Vec<Due> = heard.iter().map(|(d, _)| *d).collect();
            if ends_quietly {
                assert_eq!(dues, [Due::Unsaid(1), Due::Unsaid(2), Due::Ended(3)]);
            } else {
                assert_eq!(dues, [Due::Unsaid(1), Due::Unsaid(2)]);
            }
            assert!(heard[1].1 >= window, "{heard:?}");
            // One task at a time, and none left once nothing is due.
            assert!(!said.looking_again.load(Ordering::Acquire));
        }
    }

    /// A burst's count is said a window after the line that began it, without a next failure.
    #[test]
    fn a_bursts_count_is_due_a_window_after_its_first_line() {
        let t0 = Instant::now();
        let mut r = Repeats::new(Duration::from_secs(60));
        assert_eq!(r.unsaid_due_at(), None);
        assert_eq!(r.failed(t0), Some(1));
        assert_eq!(r.unsaid_due_at(), None, "nothing unsaid");
        for i in 1..70 {
            assert_eq!(r.failed(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(r.unsaid_due_at(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(r.unsaid_due(t0 + Duration::from_secs(59)), None);
        assert_eq!(r.unsaid_due(t0 + Duration::from_secs(60)), Some(69));
        assert_eq!(r.unsaid_due(t0 + Duration::from_secs(200)), None);
        assert_eq!(r.unsaid_due_at(), None);
        // The run goes on: the next failure within the window is not said at once.
        assert_eq!(r.failed(t0 + Duration::from_secs(61)), None);
        assert_eq!(r.unsaid_due_at(), Some(t0 + Duration::from_secs(120)));
        assert_eq!(r.quiet_end_at(), Some(t0 + Duration::from_secs(121)));
        assert_eq!(r.ended(), Some(71));
        assert_eq!(r.quiet_end_at(), None);
    }
}
