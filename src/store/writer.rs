//! Batched writes off the request path: audit events and tokens' last use.
//!
//! Why: a failed authentication is an audit event, and a successful one updates the token's
//! last-used time. Writing each in its own transaction costs a commit per request — under a flood
//! of bad tokens that is most of gitgate's CPU — and every commit moves the WAL index header,
//! which empties the token cache for every token (`cache.rs`). Last-used writes made that
//! visible: one token used at once costs a commit every few seconds, but three hundred tokens
//! in use (a CI fleet) cost sixty commits a second, and the cache — emptied sixty times a
//! second — missed on every token's next request: 30–40 % fewer requests/s and a p99 eight to
//! eleven times that with one token (docs/PERFORMANCE.md). Both are instead gathered in
//! memory and written by one writer thread in a single `BEGIN IMMEDIATE` transaction: audit
//! events within [`WINDOW`], last-used times at most once per [`LAST_USE_WINDOW`] — so the
//! store takes a bounded number of commits a second however many tokens are in use. (Since
//! then the writer's own commits, which hold only these rows, keep the cache: see `cache.rs`.)
//!
//! Within a window, repeats of the same event (same actor, address, action, target and detail —
//! one bad token tried over and over from one place) become one row with a count and the time
//! of the last repeat: a flood costs a few rows a second, not one row per refusal, and the log
//! still says exactly what happened how often. Different events are never merged. An event
//! arrives borrowed ([`EventRef`]) and is copied only when it is new: a repeat costs its adder a
//! hash and a comparison, no allocation (with the other cuts of 2026-12-01 on the 401 path: 9 %
//! less CPU per refusal in 8 alternating pairs, docs/PERFORMANCE.md).
//!
//! Adding an event touches only the adding thread's own batch (each worker thread has one; the
//! writer takes them all once per window) and wakes nobody but the writer, once per window: a
//! refusal costs neither a thread switch nor cache lines bouncing between the cores of busy
//! workers (against one shared batch under one lock: +4 % refusals/s in an A/B on 2 cores,
//! more to gain with more workers). At most
//! [`DISTINCT`] different events wait per thread and per window, so a flood of varied garbage
//! cannot grow memory; beyond that they are counted, and the count is written as one
//! `audit.dropped` summary, so the audit log still says that (and how many) failures happened.
//!
//! Last use: per token, only the newest time (and the address it came from) is kept; a token
//! whose time is already waiting costs a hash lookup, no allocation. At most [`LAST_USES`]
//! tokens wait per thread and window; beyond that a use is not noted — harmless, as that
//! token's stored time stays old and its next request offers it again.
//!
//! Rows of failed authentications — the events a client without valid credentials causes,
//! one per address and name it tries — are capped ([`Store::keep_failure_events`], `[auth_failures]
//! keep_in_audit`): past the cap (and a tenth more, so that counting is rare) the oldest of them
//! are deleted, with an `audit.pruned` row saying how many; those naming a token that exists (a
//! leaked or revoked one tried again) are capped apart from the rest, each kind at the cap, so a
//! flood of junk cannot prune them. Otherwise clients from many
//! addresses (an IPv6 network has millions of /64s) could grow the store until the disk is
//! full. Changes made by people are never deleted.
//!
//! The writer holds only a weak reference to the store and ends when the store is dropped.
//! It reads and writes on a connection of its own, opened once and kept
//! (`Store::with_writers_conn`), never one of the pool the lookups read on: a lookup in the
//! moment after its commit reads the store (see `cache.rs`), and found the pool's only
//! connection taken by it and opened another — at the open-files limit, a failure.

use crate::log_value::LogText;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::audit::{
    insert_repeated, insert_repeated_in, log_event, log_event_in, log_lost_event, Repeats,
};
use super::tokens::write_last_use;
use super::{Actor, Inner, Store};

/// Most different events waiting to be written; more are counted, not kept.
const DISTINCT: usize = 4096;
/// How long the writer gathers events (and folds repeats) before it commits them.
const WINDOW: Duration = Duration::from_millis(100);
/// Last-used times are written at most this often (the first after a quiet spell within
/// [`WINDOW`]).
const LAST_USE_WINDOW: Duration = Duration::from_secs(1);
/// Most tokens whose last use waits per thread and window.
const LAST_USES: usize = 65_536;
/// Writes of one window's events tried before they are given up (a store locked longer than
/// the busy timeout, a full disk); between two tries the writer waits [`RETRY_PAUSE`].
const ATTEMPTS: u32 = 5;
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The actions of failed authentications, whose rows are capped (see the module doc).
/// `audit.pruned` is one of them: under a long flood there is one every tenth of the cap.
pub(super) const FAILURE_ACTIONS: [&str; 4] = [
    "auth.failed",
    "auth.throttled",
    "audit.dropped",
    "audit.pruned",
];
/// Most failure rows deleted in one transaction, so that a big prune does not hold the write
/// lock (and the CLI's changes) for long.
const PRUNE_CHUNK: u64 = 20_000;
/// Most transactions of a prune per look: a backlog of millions (a cap set on a store kept
/// whole for months) goes over many windows, so that a stop never waits long for it.
const PRUNE_CHUNKS_PER_LOOK: usize = 5;

pub(super) struct Event {
    /// Epoch milliseconds when it happened (not when it was written).
    pub at: i64,
    pub actor: Actor,
    pub action: &'static str,
    pub target: String,
    pub detail: String,
    /// The request it happened in (its first, for repeats folded into one row): what joins
    /// the row to that request's log line. Not part of what makes two events the same.
    pub request: Option<crate::request_id::RequestId>,
}

/// An event as the code that adds it has it: borrowed, made an [`Event`] (copied) only when it
/// is not a repeat of one already waiting.
pub(super) struct EventRef<'a> {
    pub at: i64,
    pub name: &'a str,
    pub source: &'a str,
    pub action: &'static str,
    pub target: &'a str,
    pub detail: &'a str,
    /// The request it happened in, if any.
    pub request: Option<crate::request_id::RequestId>,
}

/// What makes two events the same event (everything but the time): compared to fold repeats,
/// hashed to find them.
type Identity<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);

fn key(identity: &Identity<'_>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    identity.hash(&mut h);
    h.finish()
}

impl EventRef<'_> {
    fn identity(&self) -> Identity<'_> {
        (
            self.action,
            self.name,
            self.source,
            self.target,
            self.detail,
        )
    }

    fn to_owned(&self) -> Event {
        Event {
            at: self.at,
            actor: Actor {
                name: self.name.to_string(),
                source: self.source.to_string(),
                logged_in_as_admin: None,
                // Kept apart, in `request`: not part of what makes two events the same.
                request: None,
            },
            action: self.action,
            target: self.target.to_string(),
            detail: self.detail.to_string(),
            request: self.request,
        }
    }
}

impl Event {
    fn identity(&self) -> Identity<'_> {
        (
            self.action,
            &self.actor.name,
            &self.actor.source,
            &self.target,
            &self.detail,
        )
    }
}

/// Distinct events of one window, in the order they first happened, each with its repeats.
#[derive(Default)]
struct Batch {
    events: Vec<(Event, Repeats)>,
    /// Index into `events` by their identity's hash (`key`).
    index: HashMap<u64, Vec<usize>>,
    /// The event of `events` the last [`Batch::add`] counted or kept: a flood of refusals is
    /// mostly one event repeated, which is then compared with it and counted, not hashed twice
    /// (its identity, then that hash in `index`) and looked up.
    last: Option<usize>,
    total: u64,
    /// Events not kept because [`DISTINCT`] were already waiting.
    dropped: u64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.total == 0 && self.dropped == 0
    }

    /// Fold another thread's window into this one: repeats add up, the cap still holds.
    fn absorb(&mut self, other: Batch) {
        for (event, repeats) in other.events {
            self.add_repeated(event, repeats);
        }
        self.dropped += other.dropped;
    }

    /// Add one event: a repeat of one waiting is counted (no copy), a new one copied.
    fn add(&mut self, event: &EventRef<'_>) {
        let seen_as = Repeats {
            count: 1,
            last: event.at,
        };
        let identity = event.identity();
        if let Some(i) = self
            .last
            .filter(|&i| self.events[i].0.identity() == identity)
        {
            self.count(i, seen_as);
            return;
        }
        let key = key(&identity);
        self.last = match self.waiting(key, &identity) {
            Some(i) => {
                self.count(i, seen_as);
                Some(i)
            }
            None => self.keep(key, event.to_owned(), seen_as),
        };
    }

    fn add_repeated(&mut self, event: Event, seen_as: Repeats) {
        let key = key(&event.identity());
        match self.waiting(key, &event.identity()) {
            Some(i) => self.count(i, seen_as),
            None => {
                self.keep(key, event, seen_as);
            }
        }
    }

    /// Where the event of `identity` (hashed to `key`) waits, if it does.
    fn waiting(&self, key: u64, identity: &Identity<'_>) -> Option<usize> {
        self.index
            .get(&key)?
            .iter()
            .copied()
            .find(|&i| self.events[i].0.identity() == *identity)
    }

    fn count(&mut self, i: usize, seen_as: Repeats) {
        let repeats = &mut self.events[i].1;
        repeats.count += seen_as.count;
        repeats.last = repeats.last.max(seen_as.last);
        self.total += seen_as.count;
    }

    /// Keep a new event, unless [`DISTINCT`] are waiting already (then it is only counted);
    /// where it was kept.
    fn keep(&mut self, key: u64, event: Event, seen_as: Repeats) -> Option<usize> {
        if self.events.len() >= DISTINCT {
            self.dropped += seen_as.count;
            return None;
        }
        self.total += seen_as.count;
        let at = self.events.len();
        self.index.entry(key).or_default().push(at);
        self.events.push((event, seen_as));
        Some(at)
    }
}

/// When a token was last used, and from where.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LastUse {
    at: i64,
    addr: IpAddr,
}

/// Tokens' last uses of one window, the newest per token.
#[derive(Default)]
struct LastUses {
    tokens: HashMap<String, LastUse>,
}

impl LastUses {
    fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Keep `used` if it is the token's newest; a token already waiting costs no allocation.
    fn note(&mut self, id: &str, used: LastUse) {
        let room = self.tokens.len() < LAST_USES;
        match self.tokens.get_mut(id) {
            Some(kept) if used.at > kept.at => *kept = used,
            Some(_) => {}
            None if room => {
                self.tokens.insert(id.to_owned(), used);
            }
            None => {}
        }
    }

    /// Fold another thread's last uses into these, the newest per token winning.
    fn absorb(&mut self, other: LastUses) {
        for (id, used) in other.tokens {
            match self.tokens.get_mut(&id) {
                Some(kept) if kept.at >= used.at => {}
                Some(kept) => *kept = used,
                None => {
                    self.tokens.insert(id, used);
                }
            }
        }
    }
}

/// What one thread has gathered for the writer.
#[derive(Default)]
struct Gathered {
    events: Batch,
    last_uses: LastUses,
}

/// Whether a batch holds what the writer has not taken: last uses left for a later write, or
/// events a thread added after the writer emptied its batch, in the moment before the batch
/// is looked at again — the thread's last, if it ended then (a worker at the stop), which a
/// batch forgotten with them would lose, unwritten, unlogged and uncounted.
fn still_waiting(gathered: &Gathered) -> bool {
    !gathered.last_uses.is_empty() || !gathered.events.is_empty()
}

/// Events waiting for the writer, and the signal that wakes it.
#[derive(Default)]
struct Pending {
    /// One batch per thread that has added events; the owner locks its own (uncontended but for
    /// the writer, once per window).
    batches: Mutex<Vec<Arc<Mutex<Gathered>>>>,
    /// Set by the first event of a window, cleared by the writer as it takes the window.
    open: AtomicBool,
    /// Transactions that wrote last uses (for tests).
    #[cfg(test)]
    last_use_commits: std::sync::atomic::AtomicU64,
    wake: Mutex<()>,
    arrived: Condvar,
    /// Held from taking a window to its commit (by the writer thread, or by a flush).
    writing: Mutex<()>,
    /// What a failed write gave back, taken with the next window (see [`ATTEMPTS`]).
    held_back: Mutex<Gathered>,
    /// Failed writes in a row.
    failures: std::sync::atomic::AtomicU32,
    /// Failed writes (not for a lock) as the log says them: the first at once, then at most
    /// once a minute with how many since, for as long as they fail (a full disk).
    failures_said: Mutex<FailuresSaid>,
    /// Writes in a row that found the store locked by another process (never given up).
    busy_waits: std::sync::atomic::AtomicU32,
    /// Since when writes have failed or waited for the lock, until one is made: its end is
    /// said too, else an operator who read "wait for the lock" or "trying again" never learns
    /// that they were written.
    troubled_since: Mutex<Option<Instant>>,
    /// Most failure rows kept (see the module doc); 0 keeps them all.
    failure_cap: std::sync::atomic::AtomicU64,
    /// Failure rows written outside the batches (in their own transactions: a failed REST
    /// login, a block) since the writer last looked.
    direct_failures: std::sync::atomic::AtomicU64,
}

/// A thread's own batch for one writer.
type OwnBatch = (Weak<Pending>, Arc<Mutex<Gathered>>);

thread_local! {
    /// This thread's batch for each writer it has added to (one per store; tests have many).
    static OWN: RefCell<Vec<OwnBatch>> = const { RefCell::new(Vec::new()) };
}

impl Pending {
    /// The calling thread's batch, registered with the writer on first use.
    fn own_batch(self: &Arc<Self>) -> Arc<Mutex<Gathered>> {
        OWN.with(|own| {
            let mut own = own.borrow_mut();
            if let Some((_, batch)) = own
                .iter()
                .find(|(p, _)| std::ptr::eq(p.as_ptr(), Arc::as_ptr(self)))
            {
                return batch.clone();
            }
            own.retain(|(p, _)| p.strong_count() > 0);
            let batch = Arc::new(Mutex::new(Gathered::default()));
            self.batches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(batch.clone());
            own.push((Arc::downgrade(self), batch.clone()));
            batch
        })
    }

    /// Everything the threads gathered, folded into one batch — last uses only when
    /// `with_last_uses` — and whether last uses were left waiting. Batches of threads that have
    /// ended are forgotten once emptied.
    fn take(&self, with_last_uses: bool) -> (Batch, LastUses, bool) {
        let mut all = Batch::default();
        let mut last_uses = LastUses::default();
        let mut left = false;
        let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        for b in std::iter::once(&self.held_back).chain(batches.iter().map(|b| &**b)) {
            let mut gathered = b.lock().unwrap_or_else(|p| p.into_inner());
            all.absorb(std::mem::take(&mut gathered.events));
            if with_last_uses {
                last_uses.absorb(std::mem::take(&mut gathered.last_uses));
            } else {
                left |= !gathered.last_uses.is_empty();
            }
        }
        // A thread that has ended is forgotten, unless what it gathered is still waiting.
        batches.retain(|b| {
            Arc::strong_count(b) > 1 || still_waiting(&b.lock().unwrap_or_else(|p| p.into_inner()))
        });
        // Rows in the order the events first happened, whichever thread saw them.
        all.events.sort_by_key(|(e, _)| e.at);
        all.index.clear();
        all.last = None;
        (all, last_uses, left)
    }

    /// Open a window if none is: the first addition of a window wakes the writer, later ones
    /// only read the flag.
    fn open_window(&self) {
        if !self.open.load(Ordering::Relaxed) && !self.open.swap(true, Ordering::AcqRel) {
            let _wake = self.wake.lock().unwrap_or_else(|p| p.into_inner());
            self.arrived.notify_one();
        }
    }
}

pub(super) struct BatchWriter {
    pending: Arc<Pending>,
    /// Whether its thread started; why not, if it could not.
    started: OnceLock<Result<(), String>>,
}

impl BatchWriter {
    pub(super) fn new() -> BatchWriter {
        BatchWriter {
            pending: Arc::new(Pending::default()),
            started: OnceLock::new(),
        }
    }

    /// Add `event` to the current window.
    pub(super) fn send(&self, store: &Arc<Inner>, event: EventRef<'_>) {
        self.gather(store, |g| g.events.add(&event));
    }

    /// Note that token `id` was used at `at` (epoch ms) from `addr`, to be written soon.
    pub(super) fn last_use(&self, store: &Arc<Inner>, id: &str, at: i64, addr: IpAddr) {
        self.gather(store, |g| g.last_uses.note(id, LastUse { at, addr }));
    }

    /// Add to the calling thread's batch and open a window; starts the writer thread on first
    /// use.
    fn gather(&self, store: &Arc<Inner>, add: impl FnOnce(&mut Gathered)) {
        let _ = self.start(store);
        let own = self.pending.own_batch();
        add(&mut own.lock().unwrap_or_else(|p| p.into_inner()));
        self.pending.open_window();
    }

    /// Write everything waiting now, on the calling thread, whether or not its window is over:
    /// at shutdown, so that nothing gathered is lost with the process. Waits for a write the
    /// writer thread has under way, which would otherwise die unfinished with the process.
    /// Whether everything was written (or nothing was waiting).
    pub(super) fn flush(&self, store: &Store) -> bool {
        let _writing = self
            .pending
            .writing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (batch, last_uses, _) = self.pending.take(true);
        if !batch.is_empty() || !last_uses.is_empty() {
            tracing::info!(
                events = batch.events.len(),
                last_uses = last_uses.tokens.len(),
                "writing what was still pending at the stop"
            );
            // The last try: nobody is left to try again.
            if let Err(e) = write(store, &batch, &last_uses) {
                give_up(&e, &batch, &last_uses, true);
                return false;
            }
        }
        true
    }

    /// Keep at most `cap` rows of failed authentications of each kind — naming a token that
    /// exists, or not (0: all of them).
    pub(super) fn keep_failure_events(&self, store: &Arc<Inner>, cap: u64) {
        self.pending.failure_cap.store(cap, Ordering::Relaxed);
        // A first look soon after the start: a backlog left by the last run (a stop half-way,
        // a cap just set lower) goes without waiting for the next failure.
        self.failure_written(store);
    }

    /// A failure row was written in a transaction of its own: counted towards the cap, looked
    /// at by the writer with its next window (opened here).
    pub(super) fn failure_written(&self, store: &Arc<Inner>) {
        if self.pending.failure_cap.load(Ordering::Relaxed) == 0 {
            return;
        }
        let _ = self.start(store);
        self.pending.direct_failures.fetch_add(1, Ordering::Relaxed);
        self.pending.open_window();
    }

    /// Transactions so far that wrote last uses.
    #[cfg(test)]
    pub(super) fn last_use_commits(&self) -> u64 {
        self.pending.last_use_commits.load(Ordering::Relaxed)
    }

    /// Start the writer thread on first use; `Err` says why it could not be (a process limit
    /// reached), which `serve` makes a refusal to start: it would serve without writing audit
    /// events or last uses until its stop.
    pub(super) fn start(&self, store: &Arc<Inner>) -> Result<(), String> {
        self.started
            .get_or_init(|| {
                let weak = Arc::downgrade(store);
                let pending = self.pending.clone();
                let spawned = std::thread::Builder::new()
                    .name("gitgate-writer".into())
                    .spawn(move || run(weak, pending));
                spawned.map(drop).map_err(|e| {
                    tracing::error!(error = %LogText(&e.to_string()), "cannot start the store's writer thread");
                    format!("cannot start the store's writer thread: {e}")
                })
            })
            .clone()
    }
}

fn run(store: Weak<Inner>, pending: Arc<Pending>) {
    let mut last_uses_written: Option<Instant> = None;
    let mut failure_rows = FailureRows::default();
    let mut drops = DropsSaid::default();
    loop {
        // Sleep until a window opens (checking now and then that the store still exists).
        {
            let mut wake = pending.wake.lock().unwrap_or_else(|p| p.into_inner());
            while !pending.open.load(Ordering::Acquire) && !failure_rows.due() {
                if store.strong_count() == 0 {
                    return;
                }
                wake = pending
                    .arrived
                    .wait_timeout(wake, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        std::thread::sleep(WINDOW);
        // Events from here on open the next window (or land in this one, if their thread's
        // batch has not been taken yet: nothing is lost either way).
        pending.open.store(false, Ordering::Release);
        let writing = pending.writing.lock().unwrap_or_else(|p| p.into_inner());
        let due = last_uses_written.is_none_or(|t| t.elapsed() >= LAST_USE_WINDOW);
        let (batch, last_uses, left) = pending.take(due);
        if left {
            // Come back for them in a later window.
            pending.open.store(true, Ordering::Release);
        }
        if !last_uses.is_empty() {
            last_uses_written = Some(Instant::now());
            #[cfg(test)]
            pending.last_use_commits.fetch_add(1, Ordering::Relaxed);
        }
        let cap = pending.failure_cap.load(Ordering::Relaxed);
        let direct = pending.direct_failures.swap(0, Ordering::Relaxed);
        if batch.is_empty() && last_uses.is_empty() {
            // Pruning waits for nobody's flush (a stop's): `writing` guards windows only.
            drop(writing);
            if cap > 0 && (direct > 0 || failure_rows.backlog()) {
                let Some(inner) = store.upgrade() else { return };
                failure_rows.prune(&Store { inner }, cap, direct);
                if failure_rows.due() {
                    pending.open.store(true, Ordering::Release);
                }
            }
            continue;
        }
        let Some(inner) = store.upgrade() else { return };
        // The strong reference is dropped before the pause below: held by this thread while
        // the process stops, it would keep the store from being dropped at the stop (its last
        // word, `Drop for Inner`, and SQLite's checkpoint on close, which is what keeps the log
        // of a store whose -wal was deleted).
        let store_now = Store { inner };
        let written = write(&store_now, &batch, &last_uses);
        match written {
            Ok(()) => {
                pending.failures.store(0, Ordering::Relaxed);
                pending.busy_waits.store(0, Ordering::Relaxed);
                said_written_again(&pending);
                drop(writing);
                // Counted once written (a window that failed is tried again with its count).
                drops.dropped(batch.dropped, Instant::now());
                if cap > 0 {
                    let batched = batch
                        .events
                        .iter()
                        .filter(|(e, _)| FAILURE_ACTIONS.contains(&e.action))
                        .count() as u64
                        + u64::from(batch.dropped > 0);
                    failure_rows.prune(&store_now, cap, batched + direct);
                    if failure_rows.due() {
                        pending.open.store(true, Ordering::Release);
                    }
                }
                drop(store_now);
            }
            Err(e) => {
                let path = store_now.path().to_path_buf();
                drop(store_now);
                failed(&pending, &e, batch, last_uses, Some(&path));
                // Try again after a pause, with whatever the next window brings.
                drop(writing);
                std::thread::sleep(RETRY_PAUSE);
                pending.open.store(true, Ordering::Release);
            }
        }
    }
}

/// Audit events not recorded for want of room in a window: each window's count is its
/// `audit.dropped` event; all of them are counted in `gitgate_audit_events_dropped_total` and
/// said as a warning — at once, then at most once a minute with how many since ([`crate::repeats::Repeats`]),
/// as the flood that causes them (varied failed authentications from many addresses) may last
/// for hours.
struct DropsSaid(crate::repeats::Repeats);

impl Default for DropsSaid {
    fn default() -> DropsSaid {
        DropsSaid(crate::repeats::Repeats::new(DROPS_SAID_EVERY))
    }
}

/// How often, at most, dropped audit events are warned of.
const DROPS_SAID_EVERY: Duration = Duration::from_secs(60);

impl DropsSaid {
    fn dropped(&mut self, count: u64, now: Instant) {
        if count == 0 {
            return;
        }
        crate::metrics::METRICS.audit_events_dropped(count);
        if let Some(dropped) = self.0.failed_times(count, now) {
            tracing::warn!(
                dropped,
                "audit events were not recorded: more different ones came in a window than \
                 are kept ({DISTINCT} per worker thread per 100 ms) — a flood of varied failed \
                 authentications, or a store too slow to keep up; each window's count is in its \
                 audit.dropped event, all in gitgate_audit_events_dropped_total (said again at \
                 most once a minute, with how many since)"
            );
        }
    }
}

/// What the writer knows of the failure rows in the store: looked at once, then estimated from
/// what it adds, and looked at again only once the estimate passes the cap by a tenth.
#[derive(Default)]
struct FailureRows {
    estimate: Option<u64>,
    /// The last look left rows beyond the cap for the next (a backlog bigger than one look
    /// takes, or a look that failed).
    more: bool,
    /// After a look failed (the store locked, say), not before this: a failing store is not
    /// tried every window.
    not_before: Option<Instant>,
    /// Looks that failed in a row: each waits twice as long as the last, up to
    /// [`PRUNE_RETRY_MAX`] (a store gone for good is not a warning every 5 s).
    failed_looks: u32,
}

/// How long after a failed look the next is tried, the first time.
const PRUNE_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between failed looks.
const PRUNE_RETRY_MAX: Duration = Duration::from_secs(300);

impl FailureRows {
    /// Whether rows beyond the cap may be left: the writer keeps its windows coming, events
    /// or not, until a look has found none (one that failed is tried again [`PRUNE_RETRY`]
    /// later, the wait doubling after each failed look up to [`PRUNE_RETRY_MAX`]).
    fn backlog(&self) -> bool {
        self.more
    }

    /// Whether the next look at a backlog may be now (not waiting after a failed one).
    fn due(&self) -> bool {
        self.more && self.not_before.is_none_or(|t| Instant::now() >= t)
    }

    /// Note `added` new failure rows, and delete the oldest beyond `cap` if there are more.
    /// A failure here is logged and tried again later (nothing is lost by keeping rows a
    /// while longer).
    fn prune(&mut self, store: &Store, cap: u64, added: u64) {
        let slack = (cap / 10).max(100);
        if let Some(estimate) = self.estimate {
            if estimate + added <= cap + slack {
                self.estimate = Some(estimate + added);
                return;
            }
        }
        if self.not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match prune_failure_rows(store, cap) {
            // At most `cap` are left (fewer, if there were fewer): looked at again after the
            // slack, whichever it was; with more to go, at the next window (`backlog`).
            Ok(pruned) => {
                self.estimate = pruned.done.then_some(cap);
                self.more = !pruned.done;
                self.not_before = None;
                self.failed_looks = 0;
            }
            Err(e) => {
                let wait = PRUNE_RETRY
                    .saturating_mul(1 << self.failed_looks.min(6))
                    .min(PRUNE_RETRY_MAX);
                self.failed_looks += 1;
                self.estimate = None;
                self.more = true;
                self.not_before = Some(Instant::now() + wait);
                tracing::warn!(target: "gitgate::store", error = %LogText(&e.to_string()), "could not delete old failed-authentication events from the audit log; trying again in {} s", wait.as_secs());
            }
        }
    }
}

/// What one look at the failure rows did.
#[derive(Debug, PartialEq)]
struct Pruned {
    deleted: u64,
    /// Whether every row beyond the cap is gone (not left for the next look).
    done: bool,
}

/// Delete the failure rows older than the newest `cap` of them, in transactions of at most
/// [`PRUNE_CHUNK`] and at most [`PRUNE_CHUNKS_PER_LOOK`] of them. Each transaction also writes
/// how many have gone so far into one `audit.pruned` event, so the audit log says what was
/// deleted even when a prune stops half-way (a kill, a lock). The rows to keep are fixed by id
/// before anything is deleted, so two servers pruning one store at once never delete more than
/// the oldest beyond the cap between them.
fn prune_failure_rows(store: &Store, cap: u64) -> Result<Pruned, super::StoreError> {
    let others = prune_rows_of(store, cap, Failures::Others)?;
    let naming = prune_rows_of(store, cap, Failures::NamingAToken)?;
    Ok(Pruned {
        deleted: others.deleted + naming.deleted,
        done: others.done && naming.done,
    })
}

/// The two kinds of failure rows, each capped on its own: a flood of junk (unknown tokens,
/// made-up names, from many addresses) must not push out the failures that name a token that
/// exists — a revoked token tried again, a leaked one guessed at — which an incident needs.
/// Anyone who knows a token's id can make those too, so they are capped as well.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Failures {
    Others,
    NamingAToken,
}

impl Failures {
    /// The target of this kind's own `audit.pruned` events, which count towards its cap.
    fn pruned_target(self) -> &'static str {
        match self {
            Failures::Others => "",
            // No token id has a `-` in it.
            Failures::NamingAToken => "failures-naming-tokens",
        }
    }

    /// The SQL condition on an audit row of this kind.
    fn condition(self) -> String {
        const NAMING_A_TOKEN: &str = "((action = 'auth.failed' AND target IN (SELECT id FROM \
             tokens)) OR (action = 'audit.pruned' AND target = 'failures-naming-tokens'))";
        match self {
            Failures::Others => {
                let in_list = FAILURE_ACTIONS.map(|a| format!("'{a}'")).join(", ");
                format!("action IN ({in_list}) AND NOT {NAMING_A_TOKEN}")
            }
            Failures::NamingAToken => NAMING_A_TOKEN.to_owned(),
        }
    }

    /// How this kind is said in its `audit.pruned` event.
    fn words(self) -> &'static str {
        match self {
            Failures::Others => "failed-authentication events",
            Failures::NamingAToken => {
                "failed-authentication events naming a token that exists (kept apart from the \
                 others, under a cap of their own)"
            }
        }
    }
}

/// [`prune_failure_rows`] for one kind of failure row.
fn prune_rows_of(store: &Store, cap: u64, kind: Failures) -> Result<Pruned, super::StoreError> {
    let condition = kind.condition();
    // Walking the ids down: the `cap`th newest failure row and the one after it. Only with
    // more than `cap` is anything deleted, and then from the `cap`th on, so that with the
    // `audit.pruned` event written below there are `cap` again.
    let at_the_cap: Vec<i64> = store.with_writers_conn(|c| {
        let mut q = c.prepare(&format!(
            "SELECT id FROM audit_events WHERE {condition} \
             ORDER BY id DESC LIMIT 2 OFFSET ?1"
        ))?;
        let ids = q
            .query_map([i64::try_from(cap - 1).unwrap_or(i64::MAX)], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        Ok(ids)
    })?;
    let [boundary, _] = at_the_cap[..] else {
        return Ok(Pruned {
            deleted: 0,
            done: true,
        });
    };
    let actor = Actor::gitgate("local");
    // With the running total of every prune on this store, since the first: the events of
    // earlier prunes are failure rows too, and go in turn, so the newest one left must say how
    // much was lost before it.
    let detail = |deleted: u64, in_all: Option<(u64, i64)>| {
        let in_all = in_all.map_or(String::new(), |(total, since)| {
            format!(" ({total} in all since {})", crate::clock::datetime(since))
        });
        format!(
            "deleted the {deleted} oldest {}: more than [auth_failures] keep_in_audit = {cap} \
             were stored{in_all}",
            kind.words()
        )
    };
    let mut in_all: Option<(u64, i64)> = None;
    let mut deleted = 0u64;
    // The event saying so, once written (its id is above the boundary: never deleted here).
    let mut event: Option<i64> = None;
    let mut done = false;
    for _ in 0..PRUNE_CHUNKS_PER_LOOK {
        let mut n = 0;
        let mut in_all_now = in_all;
        let step = store.write_bookkeeping(|tx| {
            n = tx.execute(
                &format!(
                    "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events \
                     WHERE id <= ?1 AND {condition} ORDER BY id LIMIT ?2)"
                ),
                [boundary, PRUNE_CHUNK as i64],
            )? as u64;
            if n > 0 {
                in_all_now = Some(add_to_the_pruned_total(tx, n)?);
                let text = detail(deleted + n, in_all_now);
                match event {
                    None => {
                        let now = crate::clock::now_ms();
                        insert_repeated(
                            tx,
                            &actor,
                            "audit.pruned",
                            kind.pruned_target(),
                            &text,
                            now,
                            None,
                        )?;
                        event = Some(tx.last_insert_rowid());
                    }
                    Some(id) => {
                        tx.execute(
                            "UPDATE audit_events SET detail = ?1 WHERE id = ?2",
                            rusqlite::params![text, id],
                        )?;
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = step {
            // The steps before it are committed, and their event says so: the log too.
            if deleted > 0 {
                log_event(
                    crate::clock::now_ms(),
                    &actor,
                    "audit.pruned",
                    kind.pruned_target(),
                    &detail(deleted, in_all),
                    None,
                );
            }
            return Err(e);
        }
        deleted += n;
        in_all = in_all_now;
        if n < PRUNE_CHUNK {
            done = true;
            break;
        }
    }
    if deleted > 0 {
        let text = detail(deleted, in_all);
        log_event(
            crate::clock::now_ms(),
            &actor,
            "audit.pruned",
            kind.pruned_target(),
            &text,
            None,
        );
    }
    Ok(Pruned { deleted, done })
}

/// Adds `n` to the running total of failure rows pruned from this store, in the pruning's own
/// transaction; returns the total and since when it runs (the first prune's time).
fn add_to_the_pruned_total(tx: &rusqlite::Connection, n: u64) -> rusqlite::Result<(u64, i64)> {
    use rusqlite::OptionalExtension;
    let read = |key: &str| -> rusqlite::Result<Option<i64>> {
        Ok(tx
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok()))
    };
    let total = u64::try_from(read(PRUNED_TOTAL)?.unwrap_or(0)).unwrap_or(0) + n;
    let since = match read(PRUNED_SINCE)? {
        Some(since) => since,
        None => crate::clock::now_ms(),
    };
    for (key, value) in [
        (PRUNED_TOTAL, total.to_string()),
        (PRUNED_SINCE, since.to_string()),
    ] {
        tx.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, &value],
        )?;
    }
    Ok((total, since))
}

/// The settings that keep [`add_to_the_pruned_total`]'s total.
const PRUNED_TOTAL: &str = "audit.pruned_total";
const PRUNED_SINCE: &str = "audit.pruned_since";

/// One transaction for the window: one row per distinct event, plus the summary of any dropped,
/// and the tokens' last uses. The events are logged once they are stored.
fn write(store: &Store, batch: &Batch, last_uses: &LastUses) -> Result<(), super::StoreError> {
    let summary = dropped_summary(batch);
    let now = crate::clock::now_ms();
    // Nothing here is read by a decision: the token cache keeps its entries across it.
    store.write_bookkeeping(|tx| {
        for (e, repeats) in &batch.events {
            insert_repeated_in(
                tx,
                &e.actor,
                e.action,
                &e.target,
                &e.detail,
                e.at,
                Some(repeats),
                e.request,
            )?;
        }
        if let Some((actor, detail)) = &summary {
            insert_repeated(tx, actor, "audit.dropped", "", detail, now, None)?;
        }
        for (id, used) in &last_uses.tokens {
            write_last_use(tx, id, used.at, &used.addr.to_string())?;
        }
        Ok(())
    })?;
    for (e, repeats) in &batch.events {
        log_event_in(
            e.at,
            &e.actor,
            e.action,
            &e.target,
            &e.detail,
            Some(repeats),
            e.request,
        );
    }
    if let Some((actor, detail)) = &summary {
        log_event(now, actor, "audit.dropped", "", detail, None);
    }
    Ok(())
}

/// The `audit.dropped` event of a window that dropped events: its actor and detail.
fn dropped_summary(batch: &Batch) -> Option<(Actor, String)> {
    (batch.dropped > 0).then(|| {
        let actor = Actor::gitgate("local");
        let detail = format!(
            "{} more events (e.g. {}) were not recorded: {DISTINCT} different events were already waiting",
            batch.dropped,
            batch.events.first().map_or("auth.failed", |(e, _)| e.action)
        );
        (actor, detail)
    })
}

/// Failed writes of the store's writer, said in the log (see [`Pending::failures_said`]): a
/// write is tried again every second for as long as the store fails it, and a full disk can
/// last for hours — a warning for each try was one line a second, and the lines of last uses
/// given up one more every five.
struct FailuresSaid(crate::repeats::RepeatedCause);

impl Default for FailuresSaid {
    fn default() -> FailuresSaid {
        FailuresSaid(crate::repeats::RepeatedCause::new(FAILURES_SAID_EVERY))
    }
}

/// How often, at most, failed writes of one cause are warned of.
const FAILURES_SAID_EVERY: Duration = Duration::from_secs(60);

/// A window that could not be written: kept for the next window unless it has had its
/// [`ATTEMPTS`], then given up.
fn failed(
    pending: &Pending,
    e: &super::StoreError,
    batch: Batch,
    last_uses: LastUses,
    store: Option<&std::path::Path>,
) {
    pending
        .troubled_since
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(Instant::now);
    if matches!(e, super::StoreError::Busy) {
        // Another process holds the write lock (a backup, an open `sqlite3`, a long CLI
        // change): the events wait for it however long it takes, as the start-up warning says —
        // held in memory within the window's caps, repeats folded, retried every pause.
        let waits = pending.busy_waits.fetch_add(1, Ordering::Relaxed);
        if waits.is_multiple_of(60) {
            // Who holds it, and what to do: SQLite says only "database is locked".
            let held = store.map(super::locks::write_lock_said);
            tracing::warn!(
                error = %LogText(&e.to_string()),
                events = batch.total,
                tokens = last_uses.tokens.len(),
                held = held.as_deref().map(|h| tracing::field::display(LogText(h))),
                "the token store is locked by another process: audit events and last uses wait for the lock"
            );
        }
        let mut held = pending.held_back.lock().unwrap_or_else(|p| p.into_inner());
        held.events.absorb(batch);
        held.last_uses.absorb(last_uses);
        return;
    }
    let attempt = pending.failures.fetch_add(1, Ordering::Relaxed) + 1;
    let said = pending
        .failures_said
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .0
        .failed(&e.to_string(), Instant::now());
    if attempt >= ATTEMPTS {
        // Counted (and logged) before the count of tries starts over: whoever sees it start
        // over sees the loss counted too.
        give_up(e, &batch, &last_uses, said.is_some());
        pending.failures.store(0, Ordering::Release);
        return;
    }
    if let Some(failed_writes) = said {
        tracing::warn!(
            error = %LogText(&e.to_string()),
            events = batch.total,
            tokens = last_uses.tokens.len(),
            failed_writes,
            "could not write audit events and last uses (try {attempt} of {ATTEMPTS}); trying \
             again every second (said again at most once a minute while it fails, with how many \
             writes failed since)"
        );
    }
    let mut held = pending.held_back.lock().unwrap_or_else(|p| p.into_inner());
    held.events.absorb(batch);
    held.last_uses.absorb(last_uses);
}

/// A write made after others failed or waited for the lock: said once, with how long the
/// trouble lasted (a warning, as the failures were: a log read at `warn` sees both ends).
fn said_written_again(pending: &Pending) {
    let since = pending
        .troubled_since
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(since) = since {
        let failed_writes = pending
            .failures_said
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .ended()
            .unwrap_or(0);
        tracing::warn!(
            for_s = since.elapsed().as_secs(),
            failed_writes,
            "the token store takes audit events and last uses again: those that waited for \
             its lock, or were being tried again, are written (any given up before are logged \
             above as lost)"
        );
    }
}

/// Log and count what is lost; the events themselves go to the log, so that the audit trail
/// keeps them even where the store could not. Last uses lost are said only with the failure's
/// own line (`say_last_uses`), at most once a minute: they are bookkeeping, given up every
/// few seconds while the store fails, and counted in the metric.
fn give_up(e: &super::StoreError, batch: &Batch, last_uses: &LastUses, say_last_uses: bool) {
    if !batch.is_empty() {
        tracing::warn!(error = %LogText(&e.to_string()), events = batch.total, "could not write audit events; they are lost from the store and only logged");
        for (event, repeats) in &batch.events {
            let (actor, action) = (&event.actor, event.action);
            log_lost_event(
                e,
                event.at,
                actor,
                action,
                &event.target,
                &event.detail,
                repeats.count,
                event.request,
            );
        }
    }
    // The window's dropped events were only in its `audit.dropped` row, counted once written:
    // given up, they are counted and said here, or nothing would ever say they happened.
    let summary = dropped_summary(batch);
    if let Some((actor, detail)) = &summary {
        crate::metrics::METRICS.audit_events_dropped(batch.dropped);
        let now = crate::clock::now_ms();
        log_lost_event(e, now, actor, "audit.dropped", "", detail, 1, None);
    }
    if !last_uses.is_empty() && say_last_uses {
        tracing::warn!(error = %LogText(&e.to_string()), tokens = last_uses.tokens.len(), "could not record last use");
    }
    let rows_lost = batch.total + u64::from(summary.is_some());
    for _ in 0..rows_lost + last_uses.tokens.len() as u64 {
        crate::metrics::METRICS.side_effect_failure();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{
        prune_failure_rows, FailureRows, ATTEMPTS, PRUNE_CHUNK, PRUNE_CHUNKS_PER_LOOK, RETRY_PAUSE,
    };
    use crate::store::test_support::{actor, logged, refuse_audit_inserts, temp_store};
    use crate::store::{Actor, Store};

    /// The store's audit rows as (action, target), oldest first.
    fn rows(store: &Store) -> Vec<(String, String)> {
        store
            .audit_events(None, 100_000)
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.target))
            .collect()
    }

    /// Failures that name a token that exists (a revoked one tried again) are capped apart from
    /// the rest: a flood of junk does not push them out, and they are capped too (anyone who
    /// knows a token's id can make them).
    #[test]
    fn failures_naming_a_token_that_exists_are_capped_apart_from_the_junk() {
        use crate::store::test_support::personal_token;
        let (_dir, store) = temp_store();
        store
            .add_user("alice", "x", crate::store::Role::User, &actor())
            .unwrap();
        store
            .insert_token(&personal_token("leakedtoken1", "ci", "alice"), &actor())
            .unwrap();
        for i in 0..70 {
            store
                .record_event(&actor(), "auth.failed", "leakedtoken1", &format!("try {i}"))
                .unwrap();
        }
        for i in 0..500 {
            store
                .record_event(&actor(), "auth.failed", &format!("junk{i}"), "")
                .unwrap();
        }
        let pruned = prune_failure_rows(&store, 50).unwrap();
        // Each kind down to 49, its audit.pruned event the 50th.
        assert_eq!((pruned.deleted, pruned.done), (451 + 21, true));
        let left = rows(&store);
        let naming = left
            .iter()
            .filter(|r| r.0 == "auth.failed" && r.1 == "leakedtoken1")
            .count();
        assert_eq!(naming, 49, "{left:?}");
        let junk = left.iter().filter(|r| r.1.starts_with("junk")).count();
        assert_eq!(junk, 49, "{left:?}");
        let said: Vec<String> = store
            .audit_events(None, 100_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "audit.pruned")
            .map(|e| e.detail)
            .collect();
        assert!(
            said.iter()
                .any(|d| d.contains("naming a token that exists")),
            "{said:?}"
        );
        assert_eq!(prune_failure_rows(&store, 50).unwrap().deleted, 0);
    }

    #[test]
    fn failure_rows_beyond_the_cap_go_oldest_first_and_changes_stay() {
        let (_dir, store) = temp_store();
        let admin = Actor {
            name: "admin".into(),
            ..actor()
        };
        store
            .record_event(&admin, "token.created", "first", "")
            .unwrap();
        for i in 0..250 {
            let actor = Actor {
                name: format!("guess{i}"),
                ..admin.clone()
            };
            store
                .record_event(&actor, "auth.failed", &format!("t{i}"), "")
                .unwrap();
            if i == 100 {
                store
                    .record_event(&admin, "token.revoked", "middle", "")
                    .unwrap();
            }
        }
        let log = crate::store::test_support::logged(|| {
            let pruned = prune_failure_rows(&store, 50).unwrap();
            assert_eq!((pruned.deleted, pruned.done), (201, true));
        });
        assert!(log.contains("audit.pruned"), "{log}");
        let left = rows(&store);
        let failures: Vec<_> = left.iter().filter(|r| r.0 == "auth.failed").collect();
        // The newest 49 stay, and the event that says so makes 50.
        assert_eq!(failures.len(), 49);
        assert_eq!(failures[0].1, "t201");
        assert_eq!(failures[48].1, "t249");
        // Changes by people are never deleted, and the prune says what it did.
        for kept in ["token.created", "token.revoked"] {
            assert!(left.iter().any(|r| r.0 == kept), "{kept}: {left:?}");
        }
        let pruned = store
            .audit_events(None, 100_000)
            .unwrap()
            .into_iter()
            .find(|e| e.action == "audit.pruned")
            .expect("an audit.pruned event");
        assert!(
            pruned.detail.contains("deleted the 201 oldest"),
            "{}",
            pruned.detail
        );
        assert!(
            pruned.detail.contains("(201 in all since "),
            "{}",
            pruned.detail
        );
        // At the cap — the audit.pruned event counts too — nothing happens.
        assert_eq!(prune_failure_rows(&store, 50).unwrap().deleted, 0);
        assert_eq!(rows(&store).len(), left.len());
        // The next prune's event carries the running total: the first one's event may itself
        // be among the rows deleted.
        for i in 0..30 {
            store
                .record_event(&admin, "auth.failed", &format!("u{i}"), "")
                .unwrap();
        }
        let pruned = prune_failure_rows(&store, 50).unwrap();
        assert_eq!(pruned.deleted, 31);
        let newest = store
            .audit_events(None, 100_000)
            .unwrap()
            .into_iter()
            .rfind(|e| e.action == "audit.pruned")
            .expect("an audit.pruned event");
        assert!(
            newest.detail.contains("deleted the 31 oldest")
                && newest.detail.contains("(232 in all since "),
            "{}",
            newest.detail
        );
    }

    #[test]
    fn two_stores_pruning_at_once_keep_the_newest_rows() {
        // Two servers on one store: each prunes while both write. The newest `cap` rows are
        // never deleted, however the prunes interleave.
        let (dir, first) = temp_store();
        let second = Store::open(&dir.path().join("t.db")).unwrap();
        let actor = Actor {
            name: "x".into(),
            ..actor()
        };
        let failures = |store: &Store| {
            store
                .with_conn(|c| {
                    Ok(c.query_row(
                        "SELECT count(*) FROM audit_events WHERE action IN \
                         ('auth.failed', 'audit.pruned')",
                        [],
                        |r| r.get::<_, i64>(0),
                    )?)
                })
                .unwrap()
        };
        for i in 0..150 {
            first
                .record_event(&actor, "auth.failed", &format!("t{i}"), "")
                .unwrap();
        }
        std::thread::scope(|scope| {
            for (n, store) in [&first, &second].into_iter().enumerate() {
                let actor = actor.clone();
                scope.spawn(move || {
                    for round in 0..40 {
                        for i in 0..5 {
                            let t = format!("s{n}-{round}-{i}");
                            store.record_event(&actor, "auth.failed", &t, "").unwrap();
                        }
                        prune_failure_rows(store, 100).unwrap();
                        let left = failures(store);
                        assert!(left >= 100, "{left} rows left after a prune");
                    }
                });
            }
        });
        prune_failure_rows(&first, 100).unwrap();
        assert_eq!(failures(&first), 100);
    }

    #[test]
    fn a_big_backlog_goes_over_several_looks_each_step_recorded() {
        let (_dir, store) = temp_store();
        let many = (PRUNE_CHUNK as usize) * PRUNE_CHUNKS_PER_LOOK + 5_000;
        store
            .with_conn(|c| {
                fill_failures(c, many);
                Ok(())
            })
            .unwrap();
        let said = |store: &Store| -> Vec<String> {
            store
                .audit_events(None, 10)
                .unwrap()
                .into_iter()
                .chain(store.audit_events(Some(1_000_000_000), 10).unwrap())
                .filter(|e| e.action == "audit.pruned")
                .map(|e| e.detail)
                .collect()
        };
        // The first look stops after its transactions, and its one event says what they did.
        let first = prune_failure_rows(&store, 10).unwrap();
        let done = PRUNE_CHUNK * PRUNE_CHUNKS_PER_LOOK as u64;
        assert_eq!((first.deleted, first.done), (done, false));
        let events = said(&store);
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(
            events[0].contains(&format!("deleted the {done} oldest")),
            "{events:?}"
        );
        // The next look finishes (the first event is one of the newest rows kept).
        let second = prune_failure_rows(&store, 10).unwrap();
        assert!(second.done && second.deleted > 0, "{second:?}");
    }

    #[test]
    fn a_look_that_found_the_store_locked_is_tried_again_later() {
        let (dir, store) = temp_store();
        let many = (PRUNE_CHUNK as usize) + 5_000;
        let fill = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        fill_failures(&fill, many);
        // Another process holds the write lock past the busy timeout (5 s) while the first
        // look runs, then lets go.
        fill.execute_batch("BEGIN IMMEDIATE").unwrap();
        store.keep_failure_events(10);
        std::thread::sleep(Duration::from_secs(6));
        fill.execute_batch("COMMIT").unwrap();
        // Nothing else comes: the writer tries again by itself.
        let start = Instant::now();
        while count(&store) > 10 && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(count(&store), 10);
    }

    /// `n` auth.failed rows, at 1, 2, ... ms.
    fn fill_failures(c: &rusqlite::Connection, n: usize) {
        c.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO audit_events (at, actor, action, target, detail, source)
             SELECT i, 'x', 'auth.failed', '', '', 'local' FROM n",
            [n as i64],
        )
        .unwrap();
    }

    /// Rows in the audit table.
    fn count(store: &Store) -> i64 {
        store
            .with_conn(|c| {
                Ok(c.query_row("SELECT count(*) FROM audit_events", [], |r| {
                    r.get::<_, i64>(0)
                })?)
            })
            .unwrap()
    }

    #[test]
    fn the_writer_works_a_backlog_down_from_the_start_without_waiting_for_failures() {
        let (_dir, store) = temp_store();
        let many = (PRUNE_CHUNK as usize) * PRUNE_CHUNKS_PER_LOOK * 2 + 5_000;
        store
            .with_conn(|c| {
                fill_failures(c, many);
                Ok(())
            })
            .unwrap();
        // Setting the cap (as `serve` does at its start) is enough: the writer looks, and goes
        // on over its next windows until the backlog is gone, with no failure coming.
        store.keep_failure_events(10);
        let start = Instant::now();
        while count(&store) > 10 && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(count(&store), 10);
    }

    #[test]
    fn failure_rows_are_counted_again_only_past_a_tenth_over_the_cap() {
        let (_dir, store) = temp_store();
        let actor = Actor {
            name: "x".into(),
            ..actor()
        };
        let add = |n: usize, from: usize| {
            for i in from..from + n {
                store
                    .record_event(&actor, "auth.failed", &format!("t{i}"), "")
                    .unwrap();
            }
        };
        let failures = || {
            rows(&store)
                .iter()
                .filter(|r| r.0 == "auth.failed" || r.0 == "audit.pruned")
                .count()
        };
        let mut known = FailureRows::default();
        add(1500, 0);
        // First time: counted, and cut to the cap at once.
        known.prune(&store, 1000, 1500);
        assert_eq!(failures(), 1000);
        // Within the slack (a tenth of the cap): left alone ...
        add(100, 1500);
        known.prune(&store, 1000, 100);
        assert_eq!(failures(), 1100);
        // ... past it: counted and cut.
        add(1, 1600);
        known.prune(&store, 1000, 1);
        assert_eq!(failures(), 1000);
    }

    #[test]
    fn events_the_store_cannot_take_at_the_last_try_are_still_logged() {
        let (_dir, store) = temp_store();
        refuse_audit_inserts(store.path());
        store.record_event_later(("test", "local"), "auth.failed", "mallory", "bad token");
        // Shutdown's flush is the last try.
        let log = logged(|| assert!(!store.inner.batch_writer.flush(&store)));
        assert!(log.contains("only logged"), "{log}");
        assert!(
            log.contains("auth.failed") && log.contains("mallory") && log.contains("bad token"),
            "the lost event itself is not in the log: {log}"
        );
    }

    /// A lost event a request made keeps that request's id in its log line, as its row would
    /// have: the line is all that is left to join the failure to its request's lines.
    #[test]
    fn a_lost_event_of_a_request_is_logged_with_its_request_id() {
        let (_dir, store) = temp_store();
        refuse_audit_inserts(store.path());
        let id = crate::request_id::RequestId::next();
        store.record_request_event_later(
            ("test", "local"),
            "auth.failed",
            "mallory",
            "bad token",
            Some(id),
        );
        let log = logged(|| assert!(!store.inner.batch_writer.flush(&store)));
        let lost = log
            .lines()
            .find(|l| l.contains("it is only logged") && l.contains("mallory"))
            .unwrap_or_else(|| panic!("the lost event is not in the log: {log}"));
        assert!(
            lost.contains(&format!("request_id={id}")),
            "the lost event's line does not name its request: {lost}"
        );
    }

    /// The line of a lost event has the time it happened (`at`, epoch ms, as its row and its
    /// `audit` line would), not only the time of the give-up, which can be seconds later.
    #[test]
    fn a_lost_events_line_has_the_time_it_happened() {
        let (_dir, store) = temp_store();
        refuse_audit_inserts(store.path());
        let before = crate::clock::now_ms();
        store.record_event_later(("test", "local"), "auth.failed", "trudy", "bad token");
        let after = crate::clock::now_ms();
        // The give-up comes in a later millisecond, so that its time is not the event's.
        while crate::clock::now_ms() <= after {
            std::hint::spin_loop();
        }
        let log = logged(|| assert!(!store.inner.batch_writer.flush(&store)));
        let lost = log
            .lines()
            .find(|l| l.contains("it is only logged") && l.contains("trudy"))
            .unwrap_or_else(|| panic!("the lost event is not in the log: {log}"));
        let at: i64 = lost
            .split(' ')
            .find_map(|field| field.strip_prefix("at="))
            .unwrap_or_else(|| panic!("the lost event's line has no time: {lost}"))
            .parse()
            .unwrap();
        assert!((before..=after).contains(&at), "{before}..={after}: {lost}");
    }

    /// Promise 9: a write that keeps failing is tried 5 times, a second or more apart, then
    /// given up (its events logged as lost, as the test above shows for the last try) and
    /// counted in `gitgate_side_effect_write_failures_total`.
    #[test]
    fn a_window_that_can_never_be_written_is_given_up_and_counted_after_five_tries() {
        let (_dir, store) = temp_store();
        refuse_audit_inserts(store.path());
        let counted = crate::metrics::METRICS.side_effect_failures();
        let start = Instant::now();
        // 25 events: the count is the whole process's, which other tests' lost events (one or
        // two each) move too; only this give-up moves it by 25.
        for i in 0..25 {
            let target = format!("eve{i}");
            store.record_event_later(("test", "local"), "auth.failed", &target, "never stored");
        }
        // The writer's count of failures in a row climbs to 4, then starts over at the give-up.
        let failures = &store.inner.batch_writer.pending.failures;
        let mut most = 0;
        loop {
            let now = failures.load(std::sync::atomic::Ordering::Acquire);
            most = most.max(now);
            if most >= ATTEMPTS - 1 && now == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the writer never gave up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Five tries, a second or more apart: the give-up comes after four pauses.
        assert!(
            start.elapsed() >= RETRY_PAUSE * (ATTEMPTS - 1),
            "{:?}",
            start.elapsed()
        );
        assert!(crate::metrics::METRICS.side_effect_failures() >= counted + 25);
        assert!(store
            .audit_events(None, 100)
            .unwrap()
            .iter()
            .all(|e| !e.target.starts_with("eve")));
    }

    /// A batch whose thread has ended is forgotten only once nothing waits in it: events its
    /// thread added after the writer emptied it (its last, as it ended) are still taken, as
    /// last uses left for a later write are.
    #[test]
    fn a_batch_is_still_waiting_while_it_holds_events_or_last_uses() {
        let mut gathered = super::Gathered::default();
        assert!(!super::still_waiting(&gathered));
        gathered.events.add(&super::EventRef {
            at: 1,
            name: "ci",
            source: "127.0.0.1",
            action: "auth.failed",
            target: "aaa",
            detail: "invalid token (repo team/app)",
            request: None,
        });
        assert!(super::still_waiting(&gathered));
        let _ = std::mem::take(&mut gathered.events);
        assert!(!super::still_waiting(&gathered));
    }

    /// Each event is counted as its own, whether it repeats the one added just before it
    /// (compared, not hashed) or one further back; the first time of each is kept.
    #[test]
    fn a_repeat_of_the_last_event_or_an_earlier_one_is_counted_as_its_own() {
        let mut batch = super::Batch::default();
        let event = |at, target| super::EventRef {
            at,
            name: "ci",
            source: "127.0.0.1",
            action: "auth.failed",
            target,
            detail: "invalid token (repo team/app)",
            request: None,
        };
        for (at, target) in [(1, "aaa"), (2, "aaa"), (3, "bbb"), (4, "aaa"), (5, "bbb")] {
            batch.add(&event(at, target));
        }
        batch.add(&super::EventRef {
            detail: "invalid token (repo team/other)",
            ..event(6, "bbb")
        });
        let counted: Vec<(&str, &str, u64, i64, i64)> = batch
            .events
            .iter()
            .map(|(e, r)| (e.target.as_str(), e.detail.as_str(), r.count, e.at, r.last))
            .collect();
        assert_eq!(
            counted,
            [
                ("aaa", "invalid token (repo team/app)", 3, 1, 4),
                ("bbb", "invalid token (repo team/app)", 2, 3, 5),
                ("bbb", "invalid token (repo team/other)", 1, 6, 6),
            ]
        );
        assert_eq!(batch.total, 6);
    }

    /// A store locked by another process is waited for, however many tries it takes: the
    /// events are held (repeats folded), never given up as after other errors.
    #[test]
    fn a_locked_store_is_waited_for_not_given_up() {
        let pending = super::Pending::default();
        for at in 0..(ATTEMPTS as i64 * 3) {
            let mut batch = super::Batch::default();
            batch.add(&super::EventRef {
                at,
                name: "test",
                source: "local",
                action: "auth.failed",
                target: "eve",
                detail: "while locked",
                request: None,
            });
            super::failed(
                &pending,
                &crate::store::StoreError::Busy,
                batch,
                super::LastUses::default(),
                None,
            );
        }
        let held = pending.held_back.lock().unwrap();
        assert_eq!(held.events.total, ATTEMPTS as u64 * 3, "every one held");
        assert_eq!(held.events.events.len(), 1, "folded into one");
        assert_eq!(
            pending.failures.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn a_window_that_could_not_be_written_is_written_by_a_later_try() {
        let (_dir, store) = temp_store();
        refuse_audit_inserts(store.path());
        for i in 0..3 {
            store.record_event_later(("test", "local"), "auth.failed", &format!("t{i}"), "bad");
        }
        let writer = store.inner.batch_writer.pending.clone();
        let start = Instant::now();
        while writer.failures.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no write was tried"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        store
            .with_conn(|c| Ok(c.execute_batch("DROP TRIGGER refuse")?))
            .unwrap();
        let written = loop {
            let failures: Vec<_> = store
                .audit_events(None, 100)
                .unwrap()
                .into_iter()
                .filter(|e| e.action == "auth.failed")
                .collect();
            if failures.len() >= 3 || start.elapsed() > Duration::from_secs(15) {
                break failures;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let targets: Vec<_> = written.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(targets, ["t0", "t1", "t2"], "each event once, in order");
        // The count of failures in a row starts over after the successful write.
        while writer.failures.load(std::sync::atomic::Ordering::Relaxed) != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "failures not reset"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn dropped_events_are_counted_and_warned_of_at_most_once_a_minute() {
        use crate::metrics::METRICS;
        let before = METRICS.audit_events_dropped_so_far();
        let mut drops = super::DropsSaid::default();
        let t0 = Instant::now();
        let log = logged(|| {
            drops.dropped(0, t0);
            drops.dropped(100, t0);
            drops.dropped(50, t0 + Duration::from_secs(1));
            drops.dropped(7, t0 + Duration::from_secs(61));
        });
        // Other tests may drop some meanwhile: at least these.
        assert!(METRICS.audit_events_dropped_so_far() - before >= 157);
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("audit events were not recorded"))
            .collect();
        assert_eq!(warned.len(), 2, "{log}");
        assert!(
            warned[0].contains(" WARN ") && warned[0].contains("dropped=100"),
            "{log}"
        );
        assert!(warned[1].contains("dropped=57"), "{log}");
    }

    #[test]
    fn queued_events_are_written_soon_in_order() {
        let (_dir, store) = temp_store();
        for i in 0..100 {
            store.record_event_later(("test", "local"), "auth.failed", &format!("t{i}"), "bad");
        }
        let start = Instant::now();
        let events = loop {
            let events = store.audit_events(None, 1000).unwrap();
            let failures: Vec<_> = events
                .into_iter()
                .filter(|e| e.action == "auth.failed")
                .collect();
            if failures.len() == 100 || start.elapsed() > Duration::from_secs(10) {
                break failures;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(events.len(), 100);
        assert_eq!(events[0].target, "t0");
        assert_eq!(events[99].target, "t99");
        assert!(events.iter().all(|e| e.count == 1 && e.last_at.is_none()));
    }

    #[test]
    fn a_window_keeps_at_most_distinct_events_and_counts_the_rest() {
        let mut batch = super::Batch::default();
        for i in 0..super::DISTINCT + 5 {
            batch.add(&super::EventRef {
                at: i as i64,
                name: "test",
                source: "local",
                action: "auth.failed",
                target: &format!("t{i}"),
                detail: "bad",
                request: None,
            });
        }
        // A repeat of one already waiting is still folded in, not dropped.
        batch.add(&super::EventRef {
            at: 99_999,
            name: "test",
            source: "local",
            action: "auth.failed",
            target: "t0",
            detail: "bad",
            request: None,
        });
        assert_eq!(batch.events.len(), super::DISTINCT);
        assert_eq!(batch.dropped, 5);
        assert_eq!(batch.total, super::DISTINCT as u64 + 1);
        assert_eq!(
            (batch.events[0].1.count, batch.events[0].1.last),
            (2, 99_999)
        );
    }

    #[test]
    fn windows_of_several_threads_fold_into_one_in_time_order() {
        let pending = std::sync::Arc::new(super::Pending::default());
        // Plain threads, joined: a join returns once the thread has ended, its thread-locals
        // dropped (a scoped thread's may still be running their destructors).
        let threads: Vec<_> = (0..2i64)
            .map(|t| {
                let pending = pending.clone();
                std::thread::spawn(move || {
                    let own = pending.own_batch();
                    for i in 0..100 {
                        own.lock().unwrap().events.add(&failure(10 + i, "same"));
                    }
                    own.lock()
                        .unwrap()
                        .events
                        .add(&failure(5 - t, &format!("only-{t}")));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (batch, _, _) = pending.take(true);
        let rows: Vec<(&str, u64)> = batch
            .events
            .iter()
            .map(|(e, r)| (e.target.as_str(), r.count))
            .collect();
        assert_eq!(rows, [("only-1", 1), ("only-0", 1), ("same", 200)]);
        assert_eq!(batch.total, 202);
        assert_eq!(batch.events[2].1.last, 109);
        // Both threads have ended: their batches are forgotten once taken.
        assert!(pending.batches.lock().unwrap().is_empty());
        assert!(pending.take(true).0.is_empty());
    }

    fn used(at: i64, addr: &str) -> super::LastUse {
        super::LastUse {
            at,
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn a_token_keeps_its_newest_use_and_a_window_is_capped() {
        let mut uses = super::LastUses::default();
        uses.note("a", used(10, "192.0.2.1"));
        uses.note("a", used(30, "192.0.2.3"));
        uses.note("a", used(20, "192.0.2.2"));
        assert_eq!(uses.tokens["a"], used(30, "192.0.2.3"));
        let mut other = super::LastUses::default();
        other.note("a", used(25, "192.0.2.9"));
        other.note("b", used(5, "192.0.2.5"));
        uses.absorb(other);
        assert_eq!(uses.tokens["a"], used(30, "192.0.2.3"));
        assert_eq!(uses.tokens["b"], used(5, "192.0.2.5"));
        let mut newer = super::LastUses::default();
        newer.note("b", used(6, "192.0.2.6"));
        uses.absorb(newer);
        assert_eq!(uses.tokens["b"], used(6, "192.0.2.6"));

        let mut full = super::LastUses::default();
        for i in 0..super::LAST_USES + 10 {
            full.note(&format!("t{i}"), used(1, "192.0.2.1"));
        }
        assert_eq!(full.tokens.len(), super::LAST_USES);
        // A token already waiting still moves forward when the window is full.
        full.note("t0", used(2, "192.0.2.1"));
        assert_eq!(full.tokens["t0"].at, 2);
    }

    /// Last uses wait for their own, slower window; one noted by a thread that has since ended
    /// still waits, and is taken when due.
    #[test]
    fn last_uses_wait_for_their_window_even_when_their_thread_has_ended() {
        let pending = std::sync::Arc::new(super::Pending::default());
        let p = pending.clone();
        std::thread::spawn(move || {
            p.own_batch()
                .lock()
                .unwrap()
                .last_uses
                .note("tok", used(7, "192.0.2.7"));
        })
        .join()
        .unwrap();
        let (events, uses, left) = pending.take(false);
        assert!(events.is_empty() && uses.is_empty());
        assert!(left, "the last use is reported as still waiting");
        let (_, uses, left) = pending.take(true);
        assert_eq!(uses.tokens["tok"], used(7, "192.0.2.7"));
        assert!(!left);
        // Taken, the ended thread's batch is forgotten.
        assert!(pending.batches.lock().unwrap().is_empty());
    }

    #[test]
    fn repeats_within_the_window_are_one_row_with_a_count() {
        let (_dir, store) = temp_store();
        for _ in 0..300 {
            store.record_event_later(("test", "local"), "auth.failed", "tok", "bad");
        }
        // A different detail, target or address is a different event.
        store.record_event_later(("test", "local"), "auth.failed", "tok", "worse");
        store.record_event_later(("test", "local"), "auth.failed", "other", "bad");
        store.record_event_later(("test", "192.0.2.7"), "auth.failed", "tok", "bad");
        let start = Instant::now();
        let failures = loop {
            let failures: Vec<_> = store
                .audit_events(None, 1000)
                .unwrap()
                .into_iter()
                .filter(|e| e.action == "auth.failed")
                .collect();
            let total: i64 = failures.iter().map(|e| e.count).sum();
            if total == 303 || start.elapsed() > Duration::from_secs(10) {
                break failures;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let total: i64 = failures.iter().map(|e| e.count).sum();
        assert_eq!(total, 303, "every failure is counted");
        // The 300 repeats arrive well inside a few windows: a handful of rows, not 300.
        assert!(failures.len() <= 12, "{} rows", failures.len());
        let folded = failures.iter().find(|e| e.count > 1).expect("a folded row");
        assert_eq!(
            (folded.target.as_str(), folded.detail.as_str()),
            ("tok", "bad")
        );
        assert!(folded.last_at.unwrap() >= folded.at);
        for (target, detail, source) in [
            ("tok", "worse", "local"),
            ("other", "bad", "local"),
            ("tok", "bad", "192.0.2.7"),
        ] {
            let n: i64 = failures
                .iter()
                .filter(|e| e.target == target && e.detail == detail && e.source == source)
                .map(|e| e.count)
                .sum();
            assert_eq!(n, 1, "{target} {detail} {source}");
        }
    }

    /// The first event of a window wakes the writer: each is stored about a window later, not
    /// at the writer's next look of its own (once a second).
    #[test]
    fn the_first_event_of_a_window_wakes_the_writer() {
        let (_dir, store) = temp_store();
        let stored = |target: &str| {
            store
                .audit_events(None, 100)
                .unwrap()
                .iter()
                .any(|e| e.target == target)
        };
        let wait_for = |target: &str| {
            let start = Instant::now();
            while !stored(target) {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "{target} never stored"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // The writer thread started, and waiting.
        store.record_event_later(("test", "local"), "auth.failed", "warm-up", "bad");
        wait_for("warm-up");
        let start = Instant::now();
        for i in 0..10 {
            let target = format!("t{i}");
            store.record_event_later(("test", "local"), "auth.failed", &target, "bad");
            wait_for(&target);
        }
        // About 10 windows of 100 ms; without the wake-up, about 10 s (a bound far from both,
        // for a machine busy with the other tests).
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{:?} for 10 events one after the other",
            start.elapsed()
        );
    }

    /// An event for the tests below: a failed authentication naming `target`, at `at`.
    fn failure(at: i64, target: &str) -> super::EventRef<'_> {
        super::EventRef {
            at,
            name: "test",
            source: "local",
            action: "auth.failed",
            target,
            detail: "bad",
            request: None,
        }
    }

    /// A repeat folded in from another thread's window keeps the event's latest time, whichever
    /// window is folded first: the row's `last_at` says when the flood last struck.
    #[test]
    fn a_folded_repeat_keeps_the_latest_time_whatever_the_order() {
        let mut later = super::Batch::default();
        later.add(&failure(50, "tok"));
        let mut earlier = super::Batch::default();
        earlier.add(&failure(40, "tok"));
        later.absorb(earlier);
        let repeats = &later.events[0].1;
        assert_eq!((repeats.count, repeats.last), (2, 50));
    }

    /// Events dropped in one thread's window are still counted once the windows are folded
    /// together, so that the `audit.dropped` row says how many were lost.
    #[test]
    fn events_dropped_in_a_threads_window_are_still_counted_when_folded() {
        let pending = std::sync::Arc::new(super::Pending::default());
        let p = pending.clone();
        std::thread::spawn(move || {
            let own = p.own_batch();
            let mut own = own.lock().unwrap();
            for i in 0..super::DISTINCT + 3 {
                own.events.add(&failure(i as i64, &format!("t{i}")));
            }
        })
        .join()
        .unwrap();
        let (batch, _, _) = pending.take(true);
        assert_eq!(batch.events.len(), super::DISTINCT);
        assert_eq!(batch.dropped, 3, "the drops were lost in the fold");
    }

    /// With no last use waiting, a window taken before last uses are due does not say that
    /// some are left: the writer would otherwise come back every window for nothing.
    #[test]
    fn no_last_use_waiting_is_not_reported_as_left() {
        let pending = std::sync::Arc::new(super::Pending::default());
        pending
            .own_batch()
            .lock()
            .unwrap()
            .events
            .add(&failure(1, "tok"));
        let (batch, _, left) = pending.take(false);
        assert_eq!(batch.total, 1);
        assert!(!left, "nothing was waiting");
    }

    /// A window that keeps failing (not for a lock) is held for exactly [`ATTEMPTS`] tries: held
    /// back after each of the first four, given up (logged as lost) at the fifth, and the count
    /// of failures in a row starts over.
    #[test]
    fn a_failing_window_is_given_up_at_exactly_the_last_attempt() {
        let pending = super::Pending::default();
        let error = crate::store::StoreError::Invalid("disk full".into());
        let mut batch = super::Batch::default();
        batch.add(&failure(1, "eve"));
        for attempt in 1..ATTEMPTS {
            super::failed(&pending, &error, batch, super::LastUses::default(), None);
            assert_eq!(
                pending.failures.load(std::sync::atomic::Ordering::Relaxed),
                attempt
            );
            batch = std::mem::take(&mut pending.held_back.lock().unwrap().events);
            assert_eq!(batch.total, 1, "not held for try {}", attempt + 1);
        }
        let log =
            logged(|| super::failed(&pending, &error, batch, super::LastUses::default(), None));
        assert!(
            log.contains("only logged"),
            "not given up at the last try: {log}"
        );
        assert!(pending.held_back.lock().unwrap().events.is_empty());
        assert_eq!(
            pending.failures.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    /// A store that keeps failing writes (a full disk, for hours) is warned of once, then at
    /// most once a minute with how many writes failed since — not once a try (every second),
    /// nor with a line of last uses given up every five tries; the line that says the writes
    /// work again says how many failed in all.
    #[test]
    fn a_store_that_keeps_failing_writes_is_warned_of_once_a_minute() {
        let pending = super::Pending::default();
        let error = crate::store::StoreError::Invalid("database or disk is full".into());
        let log = logged(|| {
            for _ in 0..3 * ATTEMPTS {
                let mut uses = super::LastUses::default();
                uses.note("tok", used(1, "192.0.2.1"));
                super::failed(&pending, &error, super::Batch::default(), uses, None);
                pending.held_back.lock().unwrap().last_uses = super::LastUses::default();
            }
        });
        let warned = log
            .matches("could not write audit events and last uses")
            .count();
        assert_eq!(warned, 1, "{log}");
        assert!(!log.contains("could not record last use"), "{log}");
        *pending.troubled_since.lock().unwrap() = Some(Instant::now());
        let log = logged(|| super::said_written_again(&pending));
        assert!(
            log.contains(&format!("failed_writes={}", 3 * ATTEMPTS)),
            "{log}"
        );
    }

    /// Last uses given up are counted as lost side effects too, not only audit events.
    #[test]
    fn last_uses_given_up_are_counted_as_failed_side_effects() {
        let counted = crate::metrics::METRICS.side_effect_failures();
        let mut uses = super::LastUses::default();
        for i in 0..1000 {
            uses.note(&format!("t{i}"), used(1, "192.0.2.1"));
        }
        let error = crate::store::StoreError::Invalid("disk full".into());
        super::give_up(&error, &super::Batch::default(), &uses, true);
        // The count is the whole process's: other tests only add to it.
        assert!(crate::metrics::METRICS.side_effect_failures() >= counted + 1000);
    }

    /// A window that dropped events and is then given up (a full disk) still counts them in
    /// `gitgate_audit_events_dropped_total` and logs its `audit.dropped` event as lost: they
    /// were said only by that row, so nothing said they happened.
    #[test]
    fn events_dropped_in_a_window_given_up_are_counted_and_logged() {
        let mut batch = super::Batch::default();
        for i in 0..super::DISTINCT + 3 {
            batch.add(&failure(i as i64, &format!("t{i}")));
        }
        assert_eq!(batch.dropped, 3);
        let counted = crate::metrics::METRICS.audit_events_dropped_so_far();
        let error = crate::store::StoreError::Invalid("database or disk is full".into());
        let log = logged(|| super::give_up(&error, &batch, &super::LastUses::default(), true));
        let lost = log
            .lines()
            .find(|l| l.contains("it is only logged") && l.contains("audit.dropped"))
            .unwrap_or_else(|| panic!("the dropped events are not said: {log}"));
        assert!(lost.contains("3 more events"), "{lost}");
        // The count is the whole process's: other tests only add to it.
        assert!(crate::metrics::METRICS.audit_events_dropped_so_far() >= counted + 3);
    }

    /// A single event dropped from a window is still said in an `audit.dropped` row.
    #[test]
    fn one_dropped_event_is_still_recorded_as_dropped() {
        let (_dir, store) = temp_store();
        let mut batch = super::Batch::default();
        for i in 0..super::DISTINCT + 1 {
            batch.add(&failure(i as i64, &format!("t{i}")));
        }
        assert_eq!(batch.dropped, 1);
        super::write(&store, &batch, &super::LastUses::default()).unwrap();
        let dropped: Vec<_> = store
            .audit_events(None, 100_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "audit.dropped")
            .collect();
        assert_eq!(dropped.len(), 1, "the lost event is not said");
        assert!(
            dropped[0].detail.starts_with("1 more events"),
            "{}",
            dropped[0].detail
        );
    }
}
