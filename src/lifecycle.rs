//! The token lifecycle rules, in one place for every interface: the CLI and the REST API call
//! these functions and only translate their answers (an exit message, or a JSON error with a
//! status). Nothing here knows about HTTP or the terminal.
//!
//! The rules (after Bitbucket Data Center's personal access tokens):
//! - **Who acts** is a [`Caller`]: a user who proved their password, or the operator at the
//!   host's command line (an administrator). Tokens never act: [`login`] refuses a token given as
//!   the password, so a leaked token cannot mint, widen or un-revoke tokens.
//! - **Personal tokens** are created (and rotated, which mints a new secret) only by their owner.
//!   An administrator cannot create one for somebody else — otherwise an admin could act as any
//!   user without leaving that user's name out of the audit trail. Owners and administrators
//!   list, show, edit and revoke them.
//! - **Project and repository tokens** are created, listed, edited, rotated and revoked by
//!   administrators only.
//! - **Edit** changes the name, the permissions and the allowed networks; **never the expiry**.
//!   An attempt to change it is refused with a message that says why.
//! - **Expiry policy** (global, in the settings table): when `expiryRequired` is on, a new token
//!   must have an expiry of at most `maxExpiryDays` days; existing tokens that do not meet it are
//!   reported as non-compliant ([`ExpiryPolicy::compliant`]) so an admin can find them.
//! - **Permissions** follow Bitbucket's combination rules ([`TokenPermissions::from_names`]); at
//!   use, a personal token never exceeds its owner's permission (see [`crate::policy`]).
//! - **Rotate** gives a token a new secret with the same id, name and permissions; the old
//!   secret stays valid for an optional overlap (default none, at most [`MAX_OVERLAP_SECS`]).

use std::fmt;

use crate::clock::{self, DAY_MS};
use crate::credentials::Secret;
use crate::network;
use crate::password;
use crate::permission::{TokenKind, TokenPermissions};
use crate::policy::Target;
use crate::store::{
    Actor, ExpiryTest, Listing, NewToken, ReplacedSecret, Store, StoreError, TokenEdit, TokenPage,
    TokenRecord,
};
use crate::token::{self, TokenId};

/// The longest overlap a rotation may keep the old secret valid for: one week.
pub const MAX_OVERLAP_SECS: u32 = 7 * 24 * 60 * 60;

/// Settings keys of the expiry policy.
const EXPIRY_REQUIRED: &str = "policy.expiry_required";
const MAX_EXPIRY_DAYS: &str = "policy.max_expiry_days";

/// The longest expiry, and the largest policy maximum, in days: 100 years. Anything longer is
/// a typo (`--expiry-days 4294967295` would expire in the year 11,761,247), not a plan.
pub const MAX_DAYS: u32 = 36_500;

/// Who is acting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The operator at the host's command line: an administrator, but not the owner of anyone's
    /// personal tokens (creating or rotating one needs the owner's password, i.e. [`login`]).
    Operator,
    /// A user who proved their password.
    User { slug: String, admin: bool },
}

impl Caller {
    fn is_admin(&self) -> bool {
        matches!(self, Caller::Operator | Caller::User { admin: true, .. })
    }

    fn is(&self, user: &str) -> bool {
        matches!(self, Caller::User { slug, .. } if slug == user)
    }
}

/// Why a lifecycle action was refused. Each variant maps to one HTTP status in the REST API.
#[derive(Debug)]
pub enum Error {
    /// The request itself is wrong: bad permissions, expiry, name or network (400).
    Invalid(String),
    /// The caller is not who they claim, or used a token instead of a password (401).
    Unauthenticated(String),
    /// The caller may not do this (403).
    Forbidden(String),
    /// No such user or token (404).
    NotFound(String),
    /// The token's state forbids it, e.g. it is revoked (409).
    Conflict(String),
    /// The store failed (busy, broken).
    Store(StoreError),
    /// Not possible now, for a reason of the server's own that passes (503): a password that
    /// could not be checked for want of memory.
    Unavailable(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(m)
            | Error::Unauthenticated(m)
            | Error::Forbidden(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::Unavailable(m) => f.write_str(m),
            Error::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => Error::Invalid(m),
            StoreError::NotFound(m) => Error::NotFound(m),
            StoreError::Conflict(m) => Error::Conflict(m),
            StoreError::Refused(m) => Error::Forbidden(m),
            other => Error::Store(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a login's user name is written down (audited, logged, answered): as
/// `store::as_written_down` says, except that a name typed with capitals is the user it names
/// when there is one (`Alice` logs in as alice, and her failed logins count towards her lock
/// and are hers in `gitgate audit --user alice`): only a name that names nobody may be a
/// password typed in its place.
pub fn name_written_down(store: &Store, user: &str) -> String {
    let lower = user.to_ascii_lowercase();
    match crate::store::as_written_down(user) {
        crate::store::NOT_A_USER_NAME
            if crate::store::as_written_down(&lower) == lower
                && store.user(&lower).ok().flatten().is_some() =>
        {
            lower
        }
        written => written.to_ascii_lowercase(),
    }
}

/// Check a user's password and return them as a [`Caller`]. Every failure is audited (with the
/// reason, never the password) and answered with the same message whether or not the user
/// exists. A gitgate token in place of the password is refused by name: tokens cannot manage
/// tokens.
pub fn login(store: &Store, user: &str, password: &str, actor: &Actor) -> Result<Caller> {
    // Written down (audited, logged, answered) only if it could be a user name: a password
    // typed in its place must not be kept. Looked up in lower case, as git's side compares it
    // (user names are lower-case: `Alice` is alice).
    let shown = name_written_down(store, user);
    let user = &user.to_ascii_lowercase();
    let fail = |reason: &str, message: String| {
        store.record_event_or_log(actor, "auth.failed", &shown, reason);
        Err(Error::Unauthenticated(message))
    };
    if token::parse(password).is_some() {
        return fail(
            "access token used as a management password",
            "access tokens cannot be used to manage tokens or users: authenticate with your password".into(),
        );
    }
    // One answer for every failure: a locked user answered differently from an unknown one
    // would tell a guesser which names exist, and one whose right password got a different
    // answer while locked or disabled would confirm the guess (a password that may work
    // elsewhere). So the lock and a disabled user are mentioned to everyone, and the details go
    // only to the audit log and the server's log.
    let wrong = || {
        if shown == crate::store::NOT_A_USER_NAME {
            // Nothing to unlock by that name, which is not repeated: it may be a password.
            return format!(
                "authentication failed for the user name given (not repeated, as it has capitals \
                 or characters user names do not have, and may be a password typed in its place; \
                 names are matched in any case, so this alone is not the cause): wrong user name \
                 or password, a disabled user, or password logins locked after \
                 {PASSWORD_FAILURES_BEFORE_LOCK} wrong passwords in a row"
            );
        }
        format!(
            "authentication failed for user '{shown}': wrong user name or password, a disabled \
             user, or password logins locked after {PASSWORD_FAILURES_BEFORE_LOCK} wrong passwords in a row (for \
             {} minutes; an administrator can lift it: gitgate user unlock {shown}, and it \
             leaves the user's tokens working)",
            PASSWORD_LOCK_MS / 60_000
        )
    };
    let now = clock::now_ms();
    // Failures counted in memory while the store took no writes go into it once it does, where
    // `user unlock` and `user passwd` see them.
    unrecorded::offer(store, user, now);
    let mut stored_lock = store.user(user)?.and_then(|u| u.locked_until);
    if let Some(until) = stored_lock.filter(|&until| lock_made_ahead(until, now)) {
        // Kept as it is if it cannot be written: a longer lock, never none.
        if let Ok(capped) = store.cap_password_lock(user, now, PASSWORD_LOCK_MS) {
            tracing::warn!(
                user,
                was = %clock::datetime(until),
                until = %capped.map_or_else(|| "-".into(), clock::datetime),
                "a password lock ended further ahead than a lock lasts: the wall clock went back since it was made (or was ahead then); it now ends a lock's length from now"
            );
            stored_lock = capped;
        }
    }
    // The later of the store's lock and one counted in memory (see `unrecorded`), if in force.
    let lock_in_force = |stored: Option<i64>, now: i64| {
        stored
            .into_iter()
            .chain(unrecorded::locked_until(store, user, now))
            .max()
            .filter(|&until| now < until)
    };
    // A password that could not be checked (its memory not had) is neither right nor wrong:
    // answered as the server's shortage, and not counted towards the lock.
    let unchecked = |e: password::Unchecked| password_unchecked(&e, &shown, actor);
    // The argon2 time of a check whose answer is known without one.
    let as_long_as_a_check = || {
        dummy_hash()
            .map_err(password::Unchecked::from)
            .and_then(|hash| password::verify(password, hash))
            .map_err(unchecked)
    };
    if let Some(until) = lock_in_force(stored_lock, now) {
        // The same argon2 time as any other answer, and the same answer when it cannot be had.
        as_long_as_a_check()?;
        tracing::info!(
            user,
            source = %crate::log_value::LogValue(&actor.source),
            until = %clock::datetime(until),
            "password login refused: locked"
        );
        return fail("password locked", wrong());
    }
    let Some(hash) = store.password_hash(user)? else {
        // Spend the same argon2 time as for a real user, so that the answer's timing does not
        // tell which user names exist.
        as_long_as_a_check()?;
        return fail("unknown user", wrong());
    };
    let right = match password::verify(password, &hash) {
        Ok(right) => right,
        // A hash edited by hand that asks for days of a thread (or memory the machine lacks),
        // or that names argon2 but that argon2 cannot check: refused, as any failed login is,
        // in a check's time, and said to the operator. Not a wrong password: nothing is
        // counted towards the lock.
        Err(e @ (password::Unchecked::BeyondLimits(_) | password::Unchecked::Unreadable(_))) => {
            as_long_as_a_check()?;
            let why = e.to_string();
            if let Some(times) = refused_unchecked_due(user, &why) {
                tracing::error!(
                    user,
                    source = %crate::log_value::LogValue(&actor.source),
                    times,
                    error = %crate::log_value::LogText(&why),
                    "a password login is refused unchecked: gitgate does not check the user's \
                     stored password hash; every login of the user is refused until the \
                     password is set again (said again at most once a minute for this user \
                     and hash while it goes on)"
                );
            }
            let reason = match e {
                password::Unchecked::BeyondLimits(_) => {
                    "stored password hash beyond what gitgate checks"
                }
                _ => "stored password hash gitgate cannot check",
            };
            return fail(reason, wrong());
        }
        Err(e) => return Err(unchecked(e)),
    };
    if !right {
        let locked = match store.record_password_failure(
            user,
            now,
            PASSWORD_FAILURES_BEFORE_LOCK,
            PASSWORD_LOCK_MS,
            actor,
        ) {
            Ok(locked) => locked,
            // Not counted in the store (a full disk, a store made read-only): counted here, and
            // answered as any wrong password. A 500 for a wrong password only told a guesser
            // which guess was right, with no lock and no address throttle (it counts 401s).
            Err(e) => {
                tracing::error!(user, source = %crate::log_value::LogValue(&actor.source), error = %crate::log_value::LogText(&e.to_string()), "could not record a wrong password in the token store; counted in memory towards the lock until the store takes it");
                unrecorded::failed(store, user, now, actor)
            }
        };
        if let Some(until) = locked {
            tracing::warn!(
                user,
                source = %crate::log_value::LogValue(&actor.source),
                until = %clock::datetime(until),
                "password logins locked after repeated failures"
            );
        }
        return fail("wrong password", wrong());
    }
    let Some(account) = store.user(user)? else {
        return fail("unknown user", wrong());
    };
    // A lock made while this password was being checked refuses it too: guesses run at once,
    // and argon2 takes its time, so without this the guesses in flight when the lock was made
    // were each still answered, the right one with a login.
    if let Some(until) = lock_in_force(account.locked_until, clock::now_ms()) {
        tracing::info!(
            user,
            source = %crate::log_value::LogValue(&actor.source),
            until = %clock::datetime(until),
            "password login refused: locked while its password was being checked"
        );
        return fail("password locked", wrong());
    }
    // Forgetting earlier failures is no reason to refuse the right password: with the store
    // unwritable, a right guess would otherwise get an answer of its own (a 500).
    if let Err(e) = store.clear_password_failures(user) {
        tracing::warn!(user, error = %crate::log_value::LogText(&e.to_string()), "could not clear a user's earlier wrong passwords in the token store");
    }
    unrecorded::forget(store, user);
    if !account.active {
        tracing::info!(user, source = %crate::log_value::LogValue(&actor.source), "password login refused: user disabled");
        return fail("user disabled", wrong());
    }
    Ok(Caller::User {
        slug: account.slug,
        admin: account.role == crate::store::Role::Admin,
    })
}

/// Wrong passwords the store could not record (see [`login`]), counted in this process towards
/// the same lock: per store and user name, and written into the store as soon as it takes
/// writes again (tried every few seconds from a thread of its own, and at the user's next
/// login), where `user unlock` and `user passwd` lift the lock as any other. Bounded: with
/// [`unrecorded::MAX_USERS`] names counted, a name not among them is taken as locked — closed
/// rather than open while the store takes no writes.
mod unrecorded {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    use super::{PASSWORD_FAILURES_BEFORE_LOCK, PASSWORD_LOCK_MS};
    use crate::clock;
    use crate::store::{Actor, Store};

    pub(super) const MAX_USERS: usize = 4096;

    /// How often what was counted here is offered to the store again.
    const RETRY: Duration = Duration::from_secs(5);

    /// What was counted for one user of one store.
    struct Counted {
        /// Wrong passwords not yet in the store (towards the lock).
        failures: u32,
        /// The lock they made, not yet in the store.
        until: Option<i64>,
        /// When the first of them came: an unlock or new password after it wins.
        since: i64,
        /// Who failed last, for the `user.locked` event.
        actor: Actor,
        store: Store,
    }

    type Counts = HashMap<(PathBuf, String), Counted>;

    fn counts() -> std::sync::MutexGuard<'static, Counts> {
        static COUNTS: OnceLock<Mutex<Counts>> = OnceLock::new();
        COUNTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn key(store: &Store, user: &str) -> (PathBuf, String) {
        (store.path().to_path_buf(), user.to_owned())
    }

    /// A wrong password the store could not record; the lock's end if it makes one.
    pub(super) fn failed(store: &Store, user: &str, now: i64, actor: &Actor) -> Option<i64> {
        let locked = {
            let mut counts = counts();
            let key = key(store, user);
            if !counts.contains_key(&key) && counts.len() >= MAX_USERS {
                counts.retain(|_, c| c.until.is_some_and(|u| now < u));
                if counts.len() >= MAX_USERS {
                    return Some(now + PASSWORD_LOCK_MS);
                }
            }
            let counted = counts.entry(key).or_insert_with(|| Counted {
                failures: 0,
                until: None,
                since: now,
                actor: actor.clone(),
                store: store.clone(),
            });
            counted.failures += 1;
            counted.actor = actor.clone();
            if counted.failures >= PASSWORD_FAILURES_BEFORE_LOCK {
                counted.failures = 0;
                counted.until = Some(now + PASSWORD_LOCK_MS);
            }
            counted.until.filter(|_| counted.failures == 0)
        };
        keep_offering();
        locked
    }

    /// Until when the user's password logins are locked by failures counted here.
    pub(super) fn locked_until(store: &Store, user: &str, now: i64) -> Option<i64> {
        let counts = counts();
        if counts.is_empty() {
            return None;
        }
        match counts.get(&key(store, user)) {
            Some(c) => c.until.filter(|&u| now < u),
            // Full of names: one more could not be counted (see `failed`).
            None if counts.len() >= MAX_USERS => Some(now + PASSWORD_LOCK_MS),
            None => None,
        }
    }

    /// Offers what was counted for `user` of `store` to the store; what it takes is no longer
    /// counted here (failures counted meanwhile stay).
    pub(super) fn offer(store: &Store, user: &str, now: i64) {
        let key = key(store, user);
        let offered = {
            let counts = counts();
            match counts.get(&key) {
                Some(c) => (c.failures, c.until, c.since, c.actor.clone()),
                None => return,
            }
        };
        let (failures, until, since, actor) = offered;
        let until = until.filter(|&u| now < u);
        let written = failures == 0 && until.is_none()
            || store
                .record_password_failures_from_memory(
                    user,
                    failures,
                    until,
                    since,
                    now,
                    PASSWORD_FAILURES_BEFORE_LOCK,
                    PASSWORD_LOCK_MS,
                    &actor,
                )
                .is_ok();
        if !written {
            return;
        }
        let mut counts = counts();
        if let Some(c) = counts.get_mut(&key) {
            c.failures -= failures.min(c.failures);
            if c.until == offered.1 {
                c.until = None;
            }
            if c.failures == 0 && c.until.is_none() {
                counts.remove(&key);
            }
        }
    }

    /// The right password: what was counted here is forgotten.
    pub(super) fn forget(store: &Store, user: &str) {
        let mut counts = counts();
        if !counts.is_empty() {
            counts.remove(&key(store, user));
        }
    }

    /// Offers everything counted here to its store every [`RETRY`], from a thread of its own,
    /// until nothing is left (one thread at a time).
    fn keep_offering() {
        static RUNNING: AtomicBool = AtomicBool::new(false);
        if RUNNING.swap(true, Ordering::AcqRel) {
            return;
        }
        // One of the threads the server started with (see `own_thread`): one started now,
        // under a memory limit, could abort the process. Its end is not awaited.
        let started = crate::own_thread::run("gitgate-unrecorded-logins", || loop {
            std::thread::sleep(RETRY);
            let waiting: Vec<(Store, String)> = counts()
                .iter()
                .map(|((_, user), c)| (c.store.clone(), user.clone()))
                .collect();
            for (store, user) in &waiting {
                offer(store, user, clock::now_ms());
            }
            let counts = counts();
            if counts.is_empty() {
                RUNNING.store(false, Ordering::Release);
                return;
            }
        });
        if started.is_err() {
            RUNNING.store(false, Ordering::Release);
        }
    }
}

/// The most networks a token may be limited to: each is checked on every request, stored with
/// the token and named in its refusals.
pub const MAX_NETWORKS: usize = 64;

/// A token's allowed networks as given for a new token or an edit (see
/// [`network::parse_new_list`]), at most [`MAX_NETWORKS`].
fn token_networks(items: &[String]) -> Result<Vec<network::Cidr>> {
    if items.len() > MAX_NETWORKS {
        return Err(Error::Invalid(format!(
            "a token may be limited to at most {MAX_NETWORKS} networks ({} given): give wider \
             ones (a /16 for a range of /24s)",
            items.len()
        )));
    }
    network::parse_new_list(items).map_err(Error::Invalid)
}

/// The most personal tokens one user may have that can still be used; counted again in the
/// transaction that adds one ([`crate::store::MAX_LIVE_PERSONAL_TOKENS`]).
pub const MAX_LIVE_TOKENS: u64 = crate::store::MAX_LIVE_PERSONAL_TOKENS;

/// Consecutive wrong passwords after which a user's password logins are locked. Counted per user
/// name, whatever the source address (the per-address throttle in [`crate::throttle`] covers
/// the other axis). Tokens are never locked, so an attacker cannot lock anyone out of git.
pub const PASSWORD_FAILURES_BEFORE_LOCK: u32 = 10;
/// How long the lock lasts unless an administrator lifts it with `gitgate user unlock`.
pub const PASSWORD_LOCK_MS: i64 = 15 * 60 * 1000;

/// Whether a password lock ending at `until` was made on a clock ahead of `now`'s: it ends
/// more than [`PASSWORD_LOCK_MS`] from now, longer than any lock is made for.
fn lock_made_ahead(until: i64, now: i64) -> bool {
    until.saturating_sub(now) > PASSWORD_LOCK_MS
}

/// A valid argon2id hash of nothing anyone knows, computed once, for [`login`]'s unknown users.
/// One that could not be made for want of memory is made at the next login: kept, an empty
/// hash would answer unknown users at once, telling their names from real ones by the time.
fn dummy_hash() -> Result<&'static str, password::NoMemory> {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(hash) = HASH.get() {
        return Ok(hash);
    }
    match password::hash("gitgate: no such user") {
        Ok(hash) => Ok(HASH.get_or_init(|| hash)),
        Err(password::HashError::NoMemory(e)) => Err(e),
        // No randomness from the OS for its salt: none is kept, and it is tried again.
        Err(password::HashError::Refused(_)) => Ok(""),
    }
}

/// A password check that could not run for want of memory ([`password::NoMemory`]): said in
/// the log at once, then at most once a minute with how many since (a flood of logins at the
/// limit would otherwise write a line each), and answered as the server's passing shortage.
fn password_unchecked(e: &password::Unchecked, user: &str, actor: &Actor) -> Error {
    use std::sync::{LazyLock, Mutex};
    static SAID: LazyLock<Mutex<crate::repeats::Repeats>> = LazyLock::new(|| {
        Mutex::new(crate::repeats::Repeats::new(
            std::time::Duration::from_secs(60),
        ))
    });
    let due = SAID
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .failed(std::time::Instant::now());
    if let Some(times) = due {
        tracing::error!(
            user,
            source = %crate::log_value::LogValue(&actor.source),
            times,
            error = %crate::log_value::LogText(&e.to_string()),
            "a password could not be checked: its login is refused as unavailable (a REST \
             call's 503) and not counted as a failure; said again at most once a minute while \
             it goes on"
        );
    }
    Error::Unavailable(password_unchecked_told(actor).to_string())
}

/// Whether a login refused unchecked (a stored hash edited by hand beyond what gitgate checks,
/// or one argon2 cannot read) is to be said now, and how many times since it was last said:
/// at once for a user and hash not said in the last minute, then at most once a minute. Each
/// attempt at such a user's login was an ERROR line: whoever can reach the REST API could
/// write the operator's log at the rate of the address throttle. Kept per user and hash (a
/// second user's, or a new hash's, is news), at most [`REFUSED_UNCHECKED_KEPT`] of them.
fn refused_unchecked_due(user: &str, why: &str) -> Option<u64> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    type Said = HashMap<(String, String), crate::repeats::Repeats>;
    static SAID: LazyLock<Mutex<Said>> = LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    let key = (user.to_owned(), why.to_owned());
    if said.len() >= REFUSED_UNCHECKED_KEPT && !said.contains_key(&key) {
        // More broken hashes than any store holds by accident: start again rather than grow.
        said.clear();
    }
    said.entry(key)
        .or_insert_with(|| crate::repeats::Repeats::new(std::time::Duration::from_secs(60)))
        .failed(std::time::Instant::now())
}

/// The most users and hashes [`refused_unchecked_due`] keeps counts for.
const REFUSED_UNCHECKED_KEPT: usize = 1024;

/// What a caller whose password could not be checked for want of memory is told, by where
/// the reason was said: a REST call (its actor carries the request's id) in gitgate's log,
/// which its administrator reads; the command line (`gitgate token create` as the owner), which
/// checks the password in its own process, on its own stderr, in the ERROR line just above.
fn password_unchecked_told(actor: &Actor) -> &'static str {
    if actor.request.is_some() {
        PASSWORD_UNCHECKED
    } else {
        PASSWORD_UNCHECKED_HERE
    }
}

/// What a REST call whose password could not be checked for want of memory is told.
pub const PASSWORD_UNCHECKED: &str = "gitgate cannot check a password now: it is short of \
    memory (the reason is in gitgate's log); try again in a moment";

/// What the command line says when it could not check the owner's password for want of
/// memory: its own, not the server's.
pub const PASSWORD_UNCHECKED_HERE: &str = "the password cannot be checked now: this command is \
    short of memory (the reason is in the ERROR line above); try again in a moment";

/// The global expiry policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpiryPolicy {
    /// New tokens must have an expiry.
    pub expiry_required: bool,
    /// When required: the most days a new token may live. `None`: any number.
    pub max_expiry_days: Option<u32>,
}

impl ExpiryPolicy {
    /// Whether a new token with `expiry_days` may be created.
    pub fn check_new(&self, expiry_days: Option<u32>) -> Result<(), String> {
        if !self.expiry_required {
            return Ok(());
        }
        let limit = match self.max_expiry_days {
            Some(max) => format!(" of at most {max} days"),
            None => String::new(),
        };
        match (expiry_days, self.max_expiry_days) {
            (None, _) => Err(format!(
                "the token policy requires an expiry: give expiryDays (--expiry-days){limit}"
            )),
            (Some(days), Some(max)) if days > max => Err(format!(
                "{days} days is more than the token policy allows: the maximum expiry is {max} days"
            )),
            _ => Ok(()),
        }
    }

    /// Whether an existing token meets the policy: always when no expiry is required;
    /// otherwise it needs an expiry, within the maximum counted from its creation.
    pub fn compliant(&self, token: &TokenRecord) -> bool {
        if !self.expiry_required {
            return true;
        }
        match (token.expires_at, self.max_expiry_days) {
            (None, _) => false,
            (Some(_), None) => true,
            // Saturating: a row gitgate never writes (created before 1970, expiring at the end
            // of time) would overflow, and a wrapped lifetime would read as within the maximum.
            (Some(at), Some(max)) => at.saturating_sub(token.created_at) <= i64::from(max) * DAY_MS,
        }
    }

    /// The tokens of a listing of every token that are (`compliant`) or are not compliant,
    /// and active at `now` — an expired token breaks no policy —, as [`ExpiryPolicy::compliant`]
    /// tells them apart; `None` when no token can be (none breaks a policy that requires no
    /// expiry).
    pub fn listing(&self, compliant: bool, now: i64) -> Option<Listing<'static>> {
        let expiry = match (self.expiry_required, compliant) {
            (false, true) => None,
            (false, false) => return None,
            (true, meets) => Some(ExpiryTest {
                max_lifetime_ms: self.max_expiry_days.map(|max| i64::from(max) * DAY_MS),
                meets,
            }),
        };
        Some(Listing::Active { now, expiry })
    }

    /// The tokens an admin has to act on: active at `now` (an expired or revoked token opens
    /// nothing, so it breaks no policy) and not compliant.
    pub fn breaches<'a>(&self, tokens: &'a [TokenRecord], now: i64) -> Vec<&'a TokenRecord> {
        tokens
            .iter()
            .filter(|t| t.is_active(now) && !self.compliant(t))
            .collect()
    }

    /// A one-line description for messages and audit events.
    pub fn describe(&self) -> String {
        match (self.expiry_required, self.max_expiry_days) {
            (false, None) => "expiry optional".into(),
            (false, Some(max)) => {
                format!("expiry optional (a maximum of {max} days is kept for when it is required)")
            }
            (true, None) => "expiry required".into(),
            (true, Some(max)) => format!("expiry required, at most {max} days"),
        }
    }
}

/// The policy now in force.
pub fn policy(store: &Store) -> Result<ExpiryPolicy> {
    Ok(policy_from(&|key| store.setting(key))?)
}

/// The policy as a store's settings say (see `Store::inspect`): for `check`, which reads the
/// store without opening it.
pub fn policy_of_settings(
    settings: &std::collections::HashMap<String, Result<String, String>>,
) -> crate::store::Result<ExpiryPolicy> {
    policy_from(&|key| match settings.get(key) {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some(value.clone())),
        Some(Err(why)) => Err(StoreError::Unreadable(why.clone())),
    })
}

/// The policy as the settings read by `setting` say. A value gitgate does not write (changed by
/// hand: `yes`, ` 30`, `-5`) is refused, not read as the most permissive policy: a token
/// created on such a guess could outlive what the policy was meant to allow.
fn policy_from(
    setting: &dyn Fn(&str) -> crate::store::Result<Option<String>>,
) -> crate::store::Result<ExpiryPolicy> {
    let unreadable = |key: &str, value: &str, written: &str| {
        StoreError::Unreadable(format!(
            "the token expiry policy in the store cannot be read: {key} is {}, where gitgate \
             writes {written} (changed by hand?); nothing is decided on it — set the whole \
             policy again: gitgate policy set --expiry-required yes|no --max-expiry-days N \
             (or --no-max-expiry-days), or a PUT of admin/policy with both expiryRequired and \
             maxExpiryDays",
            crate::log_value::LogValue(value)
        ))
    };
    let required = match setting(EXPIRY_REQUIRED)?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(unreadable(EXPIRY_REQUIRED, other, "true or false")),
    };
    let max = match setting(MAX_EXPIRY_DAYS)?.as_deref() {
        None | Some("") => None,
        Some(days) => match days.parse::<u32>() {
            Ok(d) if d > 0 && days.bytes().all(|b| b.is_ascii_digit()) => Some(d),
            _ => {
                return Err(unreadable(
                    MAX_EXPIRY_DAYS,
                    days,
                    "a whole number of days from 1, or nothing",
                ))
            }
        },
    };
    Ok(ExpiryPolicy {
        expiry_required: required,
        max_expiry_days: max,
    })
}

/// A change to the expiry policy: what `policy set` and the REST API's `PUT` were given, each
/// part left out (`None`) keeping its value. Applied to the policy as it is under the store's
/// write lock, so that two changes at once (one setting the maximum, the other requiring
/// expiry) cannot undo each other, as a read before the lock and a write of the whole policy
/// after it could.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyChange {
    pub expiry_required: Option<bool>,
    /// `Some(None)`: no maximum.
    pub max_expiry_days: Option<Option<u32>>,
}

impl PolicyChange {
    /// Pure: `current` with this change's parts.
    pub fn applied_to(&self, current: ExpiryPolicy) -> ExpiryPolicy {
        ExpiryPolicy {
            expiry_required: self.expiry_required.unwrap_or(current.expiry_required),
            max_expiry_days: self.max_expiry_days.unwrap_or(current.max_expiry_days),
        }
    }
}

/// The whole policy, every part given.
impl From<ExpiryPolicy> for PolicyChange {
    fn from(p: ExpiryPolicy) -> Self {
        PolicyChange {
            expiry_required: Some(p.expiry_required),
            max_expiry_days: Some(p.max_expiry_days),
        }
    }
}

/// Change the policy (administrators only). It applies to the next token created; existing
/// tokens keep their expiry and are reported by [`ExpiryPolicy::compliant`]. Returns the policy
/// now in force, and whether it changed (and was audited).
pub fn set_policy(
    store: &Store,
    caller: &Caller,
    change: PolicyChange,
    actor: &Actor,
) -> Result<(ExpiryPolicy, bool)> {
    may_set_policy(caller)?;
    if change.max_expiry_days == Some(Some(0)) {
        return Err(Error::Invalid(
            "maxExpiryDays (--max-expiry-days) must be at least 1 (or null, \
             --no-max-expiry-days, for no maximum)"
                .into(),
        ));
    }
    if change
        .max_expiry_days
        .flatten()
        .is_some_and(|d| d > MAX_DAYS)
    {
        return Err(Error::Invalid(format!(
            "maxExpiryDays (--max-expiry-days) may be at most {MAX_DAYS} (100 years), or null \
             (--no-max-expiry-days) for no maximum"
        )));
    }
    Ok(store.change_settings("policy.changed", actor, |setting| {
        // A policy that cannot be read is set again whole: both parts given, no guess needed.
        let current = match (policy_from(setting), change) {
            (Ok(current), _) => Some(current),
            (
                Err(StoreError::Unreadable(_)),
                PolicyChange {
                    expiry_required: Some(_),
                    max_expiry_days: Some(_),
                },
            ) => None,
            (Err(e), _) => return Err(e),
        };
        let new = change.applied_to(current.unwrap_or(ExpiryPolicy {
            expiry_required: false,
            max_expiry_days: None,
        }));
        // Nothing to change, nothing to audit.
        if Some(new) == current {
            return Ok(((new, false), None));
        }
        let pairs = vec![
            (EXPIRY_REQUIRED, new.expiry_required.to_string()),
            (
                MAX_EXPIRY_DAYS,
                new.max_expiry_days
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
            ),
        ];
        Ok(((new, true), Some((pairs, new.describe()))))
    })?)
}

/// Whether `caller` may change the policy: administrators only. [`set_policy`] asks it; the
/// REST API asks it first too, so that who asks is answered before what they ask (a bad body).
pub fn may_set_policy(caller: &Caller) -> Result<()> {
    if !caller.is_admin() {
        return Err(Error::Forbidden(
            "only administrators can change the token policy".into(),
        ));
    }
    Ok(())
}

/// Whom a token is for: a user's personal token, or a project or repository token. Also the
/// collection a REST path names (`users/{user}`, `projects/{key}`, `projects/{key}/repos/{slug}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Personal(String),
    Scoped(Target),
}

impl Subject {
    /// The subject a stored token belongs to.
    pub fn of(token: &TokenRecord) -> Subject {
        match (&token.owner, &token.scope) {
            (Some(owner), _) => Subject::Personal(owner.clone()),
            (None, Some(scope)) => Subject::Scoped(scope.clone()),
            // The schema forbids this; treat it as an admin-only token.
            (None, None) => Subject::Scoped(Target::Project(String::new())),
        }
    }
}

/// Whether `caller` may see and manage the tokens of `subject` (creation has its own rule).
fn may_manage(caller: &Caller, subject: &Subject) -> Result<()> {
    match subject {
        Subject::Personal(user) if caller.is(user) || caller.is_admin() => Ok(()),
        Subject::Personal(user) => Err(Error::Forbidden(format!(
            "you may only manage your own tokens, not those of '{user}'"
        ))),
        Subject::Scoped(_) => may_manage_scoped(caller),
    }
}

/// Whether `caller` may see and manage project and repository tokens: administrators only.
/// The REST API asks it before it reads a `projects/...` path's key and slug, so that who asks
/// is answered before what they ask (a key that is none).
pub fn may_manage_scoped(caller: &Caller) -> Result<()> {
    administrators_only(caller, "manage")
}

/// Ok for an administrator; else the refusal that says only administrators may `act` on
/// project and repository tokens.
fn administrators_only(caller: &Caller, act: &str) -> Result<()> {
    if caller.is_admin() {
        return Ok(());
    }
    Err(Error::Forbidden(format!(
        "only administrators (the admin role) can {act} project and repository tokens: a grant \
         of admin on a project or repository is not enough"
    )))
}

/// A new token, as asked for.
pub struct CreateRequest {
    pub subject: Subject,
    pub name: String,
    pub permissions: Vec<String>,
    pub expiry_days: Option<u32>,
    /// CIDR networks the token may be used from; empty means anywhere.
    pub allowed_networks: Vec<String>,
}

/// What a new token asks for, checked as [`create`] checks it, whoever asks — so that the
/// command line can refuse a mistyped permission, expiry or network before it asks the owner
/// for a password. Its permissions and networks, parsed.
pub fn check_new(
    store: &Store,
    req: &CreateRequest,
) -> Result<(TokenPermissions, Vec<network::Cidr>)> {
    let (kind, owner) = match &req.subject {
        Subject::Personal(user) => (TokenKind::Personal, Some(user.as_str())),
        Subject::Scoped(Target::Project(_)) => (TokenKind::Project, None),
        Subject::Scoped(Target::Repo(_)) => (TokenKind::Repository, None),
    };
    let permissions =
        TokenPermissions::from_names(kind, &req.permissions).map_err(Error::Invalid)?;
    // Checked here for a clear answer before the policy's, and again inside the write (see
    // `MAX_LIVE_TOKENS`).
    if let Some(user) = owner {
        if store.live_personal_tokens(user)? >= MAX_LIVE_TOKENS {
            return Err(crate::store::too_many_personal_tokens(user).into());
        }
    }
    match req.expiry_days {
        Some(0) => return Err(Error::Invalid("the expiry must be at least 1 day".into())),
        Some(days) if days > MAX_DAYS => {
            // "Leave it out" only where the policy lets a token live without an expiry.
            let may_leave_out = policy_from(&|key| store.setting(key))?
                .check_new(None)
                .is_ok();
            return Err(Error::Invalid(format!(
                "the expiry may be at most {MAX_DAYS} days (100 years){}",
                if may_leave_out {
                    "; leave it out for a token that does not expire"
                } else {
                    ""
                }
            )));
        }
        _ => {}
    }
    policy_from(&|key| store.setting(key))?
        .check_new(req.expiry_days)
        .map_err(StoreError::Invalid)?;
    let allowed_networks = token_networks(&req.allowed_networks)?;
    // Last, as the write itself checked it before `check_new` was: each request's first
    // refusal is the one it always was.
    crate::store::validate_name(&req.name)?;
    Ok((permissions, allowed_networks))
}

/// Whether `caller` may create a token for `subject`: a personal token only its owner, a
/// project or repository token administrators only. [`create`] asks it; the REST API asks it
/// first too, so that who asks is answered before what they ask (a bad body or target).
pub fn may_create(store: &Store, caller: &Caller, subject: &Subject) -> Result<()> {
    match subject {
        Subject::Personal(user) if !caller.is(user) => {
            // An administrator may know who exists (the lists show it): a name that is
            // nobody's is told as such, not as a rule about other users' tokens.
            if caller.is_admin() && store.user(user)?.is_none() {
                return Err(Error::NotFound(crate::store::no_such_user(user)));
            }
            Err(Error::Forbidden(if caller.is_admin() {
                format!(
                    "administrators cannot create personal tokens for other users: \
                     '{user}' must create it with their own password"
                )
            } else {
                format!("you may only create personal tokens for yourself, not for '{user}'")
            }))
        }
        Subject::Scoped(_) => may_create_scoped(caller),
        _ => Ok(()),
    }
}

/// Whether `caller` may create project and repository tokens: administrators only. Asked by
/// [`may_create`], and by the REST API before it reads a `projects/...` path (see
/// [`may_manage_scoped`]).
pub fn may_create_scoped(caller: &Caller) -> Result<()> {
    administrators_only(caller, "create")
}

/// Create a token; returns its record and the secret, which is shown once and never stored.
pub fn create(
    store: &Store,
    caller: &Caller,
    req: CreateRequest,
    actor: &Actor,
) -> Result<(TokenRecord, Secret)> {
    may_create(store, caller, &req.subject)?;
    let (kind, owner, scope) = match &req.subject {
        Subject::Personal(user) => (TokenKind::Personal, Some(user.as_str()), None),
        Subject::Scoped(target @ Target::Project(_)) => (TokenKind::Project, None, Some(target)),
        Subject::Scoped(target @ Target::Repo(_)) => (TokenKind::Repository, None, Some(target)),
    };
    let (permissions, allowed_networks) = check_new(store, &req)?;
    // Checked in `check_new` for a clear answer, and again inside the write: a policy set
    // meanwhile (by an administrator, in another process) must not let this token through.
    let allowed = |setting: &dyn Fn(&str) -> crate::store::Result<Option<String>>| {
        policy_from(setting)?
            .check_new(req.expiry_days)
            .map_err(StoreError::Invalid)
    };
    let now = clock::now_ms();
    let expires_at = req.expiry_days.map(|days| now + i64::from(days) * DAY_MS);
    let fresh =
        token::generate().map_err(|e| Error::Invalid(format!("no randomness from the OS: {e}")))?;
    let record = store.insert_token_if(
        &NewToken {
            id: fresh.id.as_str(),
            kind,
            name: &req.name,
            owner,
            scope,
            permissions,
            secret_hash: token::hash(fresh.secret.expose()),
            expires_at,
            allowed_networks: &allowed_networks,
            created_at: now,
        },
        &allowed,
        actor,
    )?;
    Ok((record, fresh.secret))
}

/// Whether `caller` may list `subject`'s tokens, and, for a user's, that the user exists: the
/// answer to who asks and about whom comes before the one to a bad page (`?limit=0`).
pub fn may_list(store: &Store, caller: &Caller, subject: &Subject) -> Result<()> {
    may_manage(caller, subject)?;
    if let Subject::Personal(user) = subject {
        if store.user(user)?.is_none() {
            return Err(Error::NotFound(crate::store::no_such_user(user)));
        }
    }
    Ok(())
}

/// One page of `subject`'s tokens that are not revoked, newest first (see [`may_list`]).
pub fn list_page(
    store: &Store,
    caller: &Caller,
    subject: &Subject,
    start: usize,
    limit: usize,
) -> Result<TokenPage> {
    may_manage(caller, subject)?;
    let listing = match subject {
        Subject::Personal(user) => Listing::Personal(user),
        Subject::Scoped(target) => Listing::Scoped(target),
    };
    Ok(store.token_page(listing, start, limit)?)
}

/// One page of every token not revoked, of every kind, newest first; with `compliant`, only
/// the active ones that meet the expiry policy, or only those that do not (administrators
/// only).
pub fn all_page(
    store: &Store,
    caller: &Caller,
    compliant: Option<(bool, &ExpiryPolicy)>,
    start: usize,
    limit: usize,
) -> Result<TokenPage> {
    may_list_all(caller)?;
    let listing = match compliant {
        None => Listing::Every,
        Some((want, policy)) => match policy.listing(want, clock::now_ms()) {
            Some(listing) => listing,
            None => {
                return Ok(TokenPage {
                    tokens: Vec::new(),
                    start: 0,
                    next: None,
                })
            }
        },
    };
    Ok(store.token_page(listing, start, limit)?)
}

/// Whether `caller` may list every token: administrators only.
pub fn may_list_all(caller: &Caller) -> Result<()> {
    if !caller.is_admin() {
        return Err(Error::Forbidden(
            "only administrators can list every token".into(),
        ));
    }
    Ok(())
}

/// One token. With `within` (a REST path's collection), a token of another subject is "not
/// found", so ids cannot be probed across users.
pub fn get(
    store: &Store,
    caller: &Caller,
    within: Option<&Subject>,
    id: &str,
) -> Result<TokenRecord> {
    if let Some(subject) = within {
        may_manage(caller, subject)?;
        if let Subject::Personal(user) = subject {
            if store.user(user)?.is_none() {
                return Err(Error::NotFound(crate::store::no_such_user(user)));
            }
        }
    }
    let not_found = || Error::NotFound(format!("no token with id '{id}'"));
    let token = store.token(id)?.ok_or_else(not_found)?;
    let subject = Subject::of(&token);
    if within.is_some_and(|w| *w != subject) {
        return Err(not_found());
    }
    may_manage(caller, &subject)?;
    Ok(token)
}

/// What an edit asks for. `expiry_days` and `expiry_date` exist only so that an attempt to
/// change the expiry is refused with a clear message instead of being ignored.
#[derive(Default)]
pub struct EditRequest {
    pub name: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub allowed_networks: Option<Vec<String>>,
    pub expiry_days: Option<u32>,
    /// `Some(None)`: asked to remove the expiry; `Some(Some(ms))`: asked to set it to `ms`.
    pub expiry_date: Option<Option<i64>>,
}

/// Change a token's name, permissions or networks.
pub fn edit(
    store: &Store,
    caller: &Caller,
    within: Option<&Subject>,
    id: &str,
    req: EditRequest,
    actor: &Actor,
) -> Result<TokenRecord> {
    let token = get(store, caller, within, id)?;
    let changes_expiry =
        req.expiry_days.is_some() || req.expiry_date.is_some_and(|d| d != token.expires_at);
    if changes_expiry {
        let now = match token.expires_at {
            Some(at) => format!("expires on {}", clock::datetime(at)),
            None => "has no expiry".into(),
        };
        return Err(Error::Invalid(format!(
            "the expiry of a token never changes once it is created (token '{}' {now}): \
             create a new token with the expiry you want and revoke this one",
            token.name
        )));
    }
    if token.revoked_at.is_some() {
        return Err(Error::Conflict(format!(
            "token '{}' ({id}) is revoked and cannot be changed",
            token.name
        )));
    }
    let permissions = match &req.permissions {
        Some(names) => {
            Some(TokenPermissions::from_names(token.kind, names).map_err(Error::Invalid)?)
        }
        None => None,
    };
    let allowed_networks = match &req.allowed_networks {
        Some(list) => Some(token_networks(list)?),
        None => None,
    };
    Ok(store.edit_token(
        id,
        &TokenEdit {
            name: req.name,
            permissions,
            allowed_networks,
        },
        actor,
    )?)
}

/// Revoke a token: refused from the next request on, also by a server in another process.
pub fn revoke(
    store: &Store,
    caller: &Caller,
    within: Option<&Subject>,
    id: &str,
    actor: &Actor,
) -> Result<TokenRecord> {
    get(store, caller, within, id)?;
    Ok(store.revoke_token(id, actor)?)
}

/// Whether `token` can be given a new secret with `overlap_secs` of overlap, as [`rotate`]
/// checks it (the store checks the revocation again inside the write) — so that the command
/// line can refuse a revoked or expired token before it asks the owner for a password.
pub fn check_rotation(token: &TokenRecord, overlap_secs: u32) -> Result<()> {
    if token.revoked_at.is_some() {
        return Err(Error::Conflict(format!(
            "token '{}' ({}) is revoked and cannot be rotated",
            token.name, token.id
        )));
    }
    if overlap_secs > MAX_OVERLAP_SECS {
        return Err(Error::Invalid(format!(
            "the overlap may be at most {MAX_OVERLAP_SECS} seconds (7 days)"
        )));
    }
    // The expiry never changes, so a new secret for an expired token would be dead on arrival.
    if let Some(expired) = token.expires_at.filter(|&at| at <= clock::now_ms()) {
        return Err(Error::Conflict(format!(
            "token '{}' expired on {}: its expiry never changes, so a new secret would not \
             work; create a new token instead",
            token.name,
            clock::datetime(expired)
        )));
    }
    Ok(())
}

/// The token `id` if `caller` may give it a new secret: one they may see ([`get`], whose "not
/// found" hides another subject's token), and a personal token only its owner, because a
/// rotation hands out a working secret. [`rotate`] asks it; the REST API asks it first too, so
/// that who asks is answered before what they ask (a bad overlap).
pub fn may_rotate(
    store: &Store,
    caller: &Caller,
    within: Option<&Subject>,
    id: &str,
) -> Result<TokenRecord> {
    let token = get(store, caller, within, id)?;
    if let Some(owner) = &token.owner {
        if !caller.is(owner) {
            return Err(Error::Forbidden(format!(
                "only '{owner}' can rotate their personal token '{}': a rotation hands out a new secret",
                token.name
            )));
        }
    }
    Ok(token)
}

/// Give a token a new secret. The old one keeps working for `overlap_secs` (0: stops at once).
/// A personal token is rotated only by its owner, because rotation hands out a working secret.
/// Also returns the secret it replaced, for [`undo_rotation`] when the new one cannot be shown.
pub fn rotate(
    store: &Store,
    caller: &Caller,
    within: Option<&Subject>,
    id: &str,
    overlap_secs: u32,
    actor: &Actor,
) -> Result<(TokenRecord, Secret, ReplacedSecret)> {
    let token = may_rotate(store, caller, within, id)?;
    check_rotation(&token, overlap_secs)?;
    // A new secret is a new credential, so it follows the policy new tokens follow: a token
    // that breaks it keeps working until revoked or expired, but is not issued a fresh secret.
    // Checked here, and again inside the write (a policy set meanwhile applies).
    let allowed = |setting: &dyn Fn(&str) -> crate::store::Result<Option<String>>| {
        let policy = policy_from(setting)?;
        if policy.compliant(&token) {
            return Ok(());
        }
        Err(StoreError::Invalid(format!(
            "token '{}' does not meet the expiry policy ({}), so it cannot be given a new \
             secret; create a new token instead",
            token.name,
            policy.describe()
        )))
    };
    allowed(&|key| store.setting(key))?;
    let token_id: TokenId = id.parse().map_err(Error::Invalid)?;
    let secret = token::generate_with_id(&token_id)
        .map_err(|e| Error::Invalid(format!("no randomness from the OS: {e}")))?;
    let until = (overlap_secs > 0).then(|| clock::now_ms() + i64::from(overlap_secs) * 1000);
    let (record, replaced) =
        store.rotate_token(id, token::hash(secret.expose()), until, &allowed, actor)?;
    Ok((record, secret, replaced))
}

/// Take back a rotation whose new `secret` never reached anyone: the token's old secret (and
/// its overlap, if it had one) works again. Refused if the token was rotated again meanwhile.
pub fn undo_rotation(
    store: &Store,
    id: &str,
    secret: &Secret,
    replaced: &ReplacedSecret,
    actor: &Actor,
) -> Result<()> {
    Ok(store.undo_rotation(id, token::hash(secret.expose()), replaced, actor)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permission::Level;
    use crate::store::Role;

    fn actor() -> Actor {
        Actor {
            name: "test".into(),
            source: "local".into(),
            logged_in_as_admin: None,
            request: None,
        }
    }

    fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let h = password::hash("pw").unwrap();
        store.add_user("alice", &h, Role::User, &actor()).unwrap();
        store.add_user("bob", &h, Role::User, &actor()).unwrap();
        store.add_user("root", &h, Role::Admin, &actor()).unwrap();
        store
            .add_grant(
                "alice",
                &Target::parse("team").unwrap(),
                Level::Write,
                &actor(),
            )
            .unwrap();
        (dir, store)
    }

    /// alice's password hash set to `stored`; a login with the right password and one with a
    /// wrong one are each refused as any failed login is answered. The ERROR line that said the
    /// hash was refused unchecked: one for the two (each test's hash is its own, so tests run
    /// side by side do not share a count).
    fn refused_unchecked_with(store: &Store, stored: &str) -> String {
        store
            .set_password("alice", stored, clock::now_ms(), &actor())
            .unwrap();
        let log = crate::store::test_support::logged(|| {
            for password in ["pw", "wrong"] {
                match login(store, "alice", password, &actor()) {
                    Err(Error::Unauthenticated(m)) => {
                        assert!(m.contains("wrong user name or password"), "{m}")
                    }
                    other => panic!("{other:?}"),
                }
            }
        });
        // Two attempts, one line: the second within the minute is counted, not said.
        let said: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("refused unchecked"))
            .collect();
        assert_eq!(said.len(), 1, "{log}");
        assert!(said[0].contains("times=1"), "{log}");
        said[0].to_string()
    }

    /// A stored hash asking for more than gitgate checks (edited by hand: passes by the
    /// billion, which held the check's thread for days) refuses the login unchecked, as any
    /// failed login is answered, with an ERROR naming the user and what to do; it counts
    /// nothing towards the lock, whatever the password. Other users log in as ever, and the
    /// password set again logs in.
    #[test]
    fn a_stored_hash_beyond_what_gitgate_checks_refuses_the_login_and_says_so() {
        let (_dir, store) = setup();
        let said = refused_unchecked_with(
            &store,
            "$argon2id$v=19$m=19456,t=4294967295,p=1$BwcHBwcHBwcHBwcHBwcHBw$\
             AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        );
        assert!(
            said.contains("ERROR") && said.contains("user=\"alice\""),
            "{said}"
        );
        assert!(
            said.contains("t=4294967295") && said.contains("gitgate user passwd"),
            "{said}"
        );
        assert_eq!(store.user("alice").unwrap().unwrap().failed_logins, Some(0));
        assert!(login(&store, "bob", "pw", &actor()).is_ok());
        store
            .set_password(
                "alice",
                &password::hash("pw").unwrap(),
                clock::now_ms(),
                &actor(),
            )
            .unwrap();
        assert!(login(&store, "alice", "pw", &actor()).is_ok());
    }

    /// A stored string that names argon2 but that argon2 cannot check (passes past 2^32 - 1,
    /// one more than the test above edits in) refuses the login unchecked as that one does:
    /// the same answer, an ERROR naming the user and what to do, nothing counted. Before, it
    /// was taken for a wrong password: counted towards the lock (ten and the user was locked
    /// out, the right password too), and said nowhere.
    #[test]
    fn a_stored_argon2_hash_argon2_cannot_check_refuses_the_login_and_says_so() {
        let (_dir, store) = setup();
        let said = refused_unchecked_with(
            &store,
            "$argon2id$v=19$m=19456,t=4294967296,p=1$BwcHBwcHBwcHBwcHBwcHBw$\
             AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        );
        assert!(
            said.contains("ERROR")
                && said.contains("user=\"alice\"")
                && said.contains("t=4294967296")
                && said.contains("gitgate user passwd"),
            "{said}"
        );
        assert_eq!(store.user("alice").unwrap().unwrap().failed_logins, Some(0));
    }

    /// A password that could not be checked for want of memory is told by where its reason
    /// was said: a REST call (its actor has the request's id) in gitgate's log, the command line
    /// on its own stderr, in the ERROR line above — not in a server's log it may not have.
    #[test]
    fn a_password_unchecked_is_told_where_its_reason_was_said() {
        let rest_call = Actor {
            request: Some(crate::request_id::RequestId::next()),
            ..actor()
        };
        assert_eq!(password_unchecked_told(&rest_call), PASSWORD_UNCHECKED);
        let here = password_unchecked_told(&Actor::cli());
        assert_eq!(here, PASSWORD_UNCHECKED_HERE);
        assert!(!here.contains("gitgate's log"), "{here}");
    }

    /// Guesses run at once: a lock made by the wrong ones while the right one's argon2 runs
    /// refuses the right one too, as a lock made before it came would.
    #[test]
    fn a_lock_made_while_the_right_password_is_checked_refuses_it() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let (_dir, store) = setup();
        // alice's password hashed at 50 passes instead of 2 (near the most gitgate checks), so
        // that its check (about half a second, more on a busy machine) surely outlasts the
        // lock made beside it.
        let params = argon2::Params::new(19 * 1024, 50, 1, None).unwrap();
        let slow = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"pw", &SaltString::encode_b64(&[7; 16]).unwrap())
            .unwrap()
            .to_string();
        store
            .set_password("alice", &slow, clock::now_ms(), &actor())
            .unwrap();
        let refused = std::thread::scope(|s| {
            let right = s.spawn(|| login(&store, "alice", "pw", &actor()));
            std::thread::sleep(std::time::Duration::from_millis(100));
            // The wrong password that completes the count (one, here).
            let locked = store
                .record_password_failure("alice", clock::now_ms(), 1, PASSWORD_LOCK_MS, &actor())
                .unwrap();
            assert!(locked.is_some());
            right.join().unwrap().unwrap_err()
        });
        assert!(
            refused.to_string().contains("wrong user name or password"),
            "{refused}"
        );
        // Once lifted, the same password logs in.
        store.unlock_user("alice", &actor()).unwrap();
        assert_eq!(
            login(&store, "alice", "pw", &actor()).unwrap(),
            user("alice")
        );
    }

    #[test]
    fn a_failed_login_the_store_cannot_record_is_still_logged() {
        let (_dir, store) = setup();
        crate::store::test_support::refuse_audit_inserts(store.path());
        let log = crate::store::test_support::logged(|| {
            assert!(login(&store, "alice", "wrong", &actor()).is_err());
        });
        assert!(log.contains("only logged"), "{log}");
        assert!(
            log.contains("auth.failed") && log.contains("alice"),
            "the failed login is not in the log: {log}"
        );
    }

    /// A store that takes no writes (a full disk) still counts wrong passwords towards the
    /// lock, and answers them as any wrong password: a 500 for a wrong guess only (and 200 for
    /// the right one) told a guesser which was right, with nothing limiting the guesses.
    /// A lock ending further ahead than a lock lasts can only come from a clock ahead of now's.
    #[test]
    fn a_lock_made_ahead_is_one_ending_further_than_a_lock_lasts() {
        assert!(!lock_made_ahead(1000 + PASSWORD_LOCK_MS, 1000));
        assert!(lock_made_ahead(1001 + PASSWORD_LOCK_MS, 1000));
        assert!(!lock_made_ahead(500, 1000));
        assert!(!lock_made_ahead(i64::MIN, i64::MAX));
    }

    #[test]
    fn wrong_passwords_the_store_cannot_record_still_lock() {
        let (_dir, store) = setup();
        rusqlite::Connection::open(store.path())
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse_users BEFORE UPDATE ON users \
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full (test)'); END;",
            )
            .unwrap();
        for _ in 1..PASSWORD_FAILURES_BEFORE_LOCK {
            let e = login(&store, "bob", "wrong", &actor()).unwrap_err();
            assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        }
        // Not locked yet: the right password works.
        assert_eq!(login(&store, "bob", "pw", &actor()).unwrap(), user("bob"));
        for _ in 0..PASSWORD_FAILURES_BEFORE_LOCK {
            let e = login(&store, "bob", "wrong", &actor()).unwrap_err();
            assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        }
        // Locked: the right password gets the answer of a wrong one.
        let e = login(&store, "bob", "pw", &actor()).unwrap_err();
        assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        // Another user, and the same name in another store, are not.
        assert_eq!(
            login(&store, "alice", "pw", &actor()).unwrap(),
            user("alice")
        );
        let (_other_dir, other) = setup();
        assert_eq!(login(&other, "bob", "pw", &actor()).unwrap(), user("bob"));
        // Once the store takes writes again, the lock counted in memory goes into it (from the
        // thread that offers it every few seconds; here at once), where an administrator's
        // unlock lifts it before any login.
        let (_third_dir, third) = setup();
        let refuse = "CREATE TRIGGER refuse_users BEFORE UPDATE ON users \
                      BEGIN SELECT RAISE(ABORT, 'database or disk is full (test)'); END;";
        rusqlite::Connection::open(third.path())
            .unwrap()
            .execute_batch(refuse)
            .unwrap();
        for _ in 0..PASSWORD_FAILURES_BEFORE_LOCK {
            assert!(login(&third, "bob", "wrong", &actor()).is_err());
        }
        assert!(login(&third, "bob", "pw", &actor()).is_err(), "locked");
        unrecorded::offer(&third, "bob", clock::now_ms());
        assert_eq!(third.user("bob").unwrap().unwrap().locked_until, None);
        rusqlite::Connection::open(third.path())
            .unwrap()
            .execute_batch("DROP TRIGGER refuse_users")
            .unwrap();
        unrecorded::offer(&third, "bob", clock::now_ms());
        assert!(third.user("bob").unwrap().unwrap().locked_until.is_some());
        assert!(third.unlock_user("bob", &actor()).unwrap());
        assert_eq!(login(&third, "bob", "pw", &actor()).unwrap(), user("bob"));
        // Unlocked before the count reached the store (nothing locked there yet): the unlock's
        // event lifts the lock the server holds in memory too.
        let (_fourth_dir, fourth) = setup();
        rusqlite::Connection::open(fourth.path())
            .unwrap()
            .execute_batch(refuse)
            .unwrap();
        for _ in 0..PASSWORD_FAILURES_BEFORE_LOCK {
            assert!(login(&fourth, "bob", "wrong", &actor()).is_err());
        }
        rusqlite::Connection::open(fourth.path())
            .unwrap()
            .execute_batch("DROP TRIGGER refuse_users")
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(!fourth.unlock_user("bob", &actor()).unwrap());
        unrecorded::offer(&fourth, "bob", clock::now_ms());
        assert_eq!(fourth.user("bob").unwrap().unwrap().locked_until, None);
        assert_eq!(login(&fourth, "bob", "pw", &actor()).unwrap(), user("bob"));
        // The store takes writes again: the lock goes into it with the next login (audited),
        // where an administrator's unlock lifts it.
        rusqlite::Connection::open(store.path())
            .unwrap()
            .execute_batch("DROP TRIGGER refuse_users")
            .unwrap();
        assert!(login(&store, "bob", "pw", &actor()).is_err());
        let bob = store.user("bob").unwrap().unwrap();
        assert!(bob.locked_until.is_some(), "the lock is in the store");
        assert!(store
            .audit_events(None, 1000)
            .unwrap()
            .iter()
            .any(|e| e.action == "user.locked" && e.detail.contains("counted in memory")));
        store.unlock_user("bob", &actor()).unwrap();
        assert_eq!(login(&store, "bob", "pw", &actor()).unwrap(), user("bob"));
    }

    fn user(slug: &str) -> Caller {
        Caller::User {
            slug: slug.into(),
            admin: slug == "root",
        }
    }

    fn personal(user: &str, days: Option<u32>) -> CreateRequest {
        CreateRequest {
            subject: Subject::Personal(user.into()),
            name: "laptop".into(),
            permissions: vec!["REPO_WRITE".into()],
            expiry_days: days,
            allowed_networks: vec![],
        }
    }

    #[test]
    fn login_refuses_tokens_wrong_passwords_and_disabled_users() {
        let (_d, store) = setup();
        assert_eq!(
            login(&store, "alice", "pw", &actor()).unwrap(),
            user("alice")
        );
        assert_eq!(login(&store, "root", "pw", &actor()).unwrap(), user("root"));
        let (_, secret) =
            create(&store, &user("alice"), personal("alice", None), &actor()).unwrap();
        let e = login(&store, "alice", secret.expose(), &actor()).unwrap_err();
        assert!(
            matches!(&e, Error::Unauthenticated(m) if m.contains("access tokens cannot")),
            "{e}"
        );
        let wrong = login(&store, "alice", "nope", &actor())
            .unwrap_err()
            .to_string();
        let unknown = login(&store, "zed", "nope", &actor())
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains("wrong user name or password")
                && unknown.contains("wrong user name or password")
        );
        store.set_user_active("bob", false, &actor()).unwrap();
        // The right password of a disabled user gets the answer a wrong one gets.
        let disabled = login(&store, "bob", "pw", &actor())
            .unwrap_err()
            .to_string();
        assert_eq!(disabled, wrong.replace("alice", "bob"));
        assert!(!disabled.contains("is disabled"), "{disabled}");
        let failures = store
            .audit_events(None, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "auth.failed")
            .count();
        assert_eq!(failures, 4);
    }

    /// One user cannot fill the store: at most MAX_LIVE_TOKENS tokens that can be used, and
    /// MAX_NETWORKS networks on each.
    #[test]
    fn tokens_per_user_and_networks_per_token_are_capped() {
        let (_d, store) = setup();
        let alice = user("alice");
        let mut first = None;
        for _ in 0..MAX_LIVE_TOKENS {
            let (t, _) = create(&store, &alice, personal("alice", None), &actor()).unwrap();
            first.get_or_insert(t.id);
        }
        // Invalid (400 over REST), as Bitbucket's "maximum number of tokens".
        match create(&store, &alice, personal("alice", None), &actor()) {
            Err(Error::Invalid(m)) => {
                assert!(m.contains("already has 100 personal tokens"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        // A revoked one no longer counts.
        revoke(&store, &alice, None, &first.unwrap(), &actor()).unwrap();
        assert!(create(&store, &alice, personal("alice", None), &actor()).is_ok());
        // Networks.
        let many = |n: usize| -> Vec<String> { (0..n).map(|i| format!("10.0.{i}.0/24")).collect() };
        let mut req = personal("bob", None);
        req.allowed_networks = many(MAX_NETWORKS + 1);
        match create(&store, &user("bob"), req, &actor()) {
            Err(Error::Invalid(m)) => assert!(m.contains("at most 64 networks"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut req = personal("bob", None);
        req.allowed_networks = many(MAX_NETWORKS);
        assert!(create(&store, &user("bob"), req, &actor()).is_ok());
    }

    #[test]
    fn who_may_create_what() {
        let (_d, store) = setup();
        assert!(create(&store, &user("alice"), personal("alice", None), &actor()).is_ok());
        // For a name that is nobody's, an administrator is told so.
        assert!(matches!(
            create(&store, &user("root"), personal("ghost", None), &actor()),
            Err(Error::NotFound(m)) if m == "no user 'ghost'"
        ));
        let e = create(&store, &user("root"), personal("alice", None), &actor()).unwrap_err();
        assert!(
            matches!(&e, Error::Forbidden(m) if m.contains("administrators cannot create personal tokens"))
        );
        assert!(matches!(
            create(&store, &Caller::Operator, personal("alice", None), &actor()),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            create(&store, &user("bob"), personal("alice", None), &actor()),
            Err(Error::Forbidden(_))
        ));
        let scoped = |c: &Caller| {
            create(
                &store,
                c,
                CreateRequest {
                    subject: Subject::Scoped(Target::parse("team/app").unwrap()),
                    name: "ci".into(),
                    permissions: vec!["REPO_READ".into()],
                    expiry_days: Some(30),
                    allowed_networks: vec!["10.0.0.0/8".into()],
                },
                &actor(),
            )
        };
        assert!(matches!(scoped(&user("alice")), Err(Error::Forbidden(_))));
        let (t, _) = scoped(&user("root")).unwrap();
        assert_eq!(t.network_names(), ["10.0.0.0/8"]);
        assert!(scoped(&Caller::Operator).is_ok());
    }

    #[test]
    fn expiry_policy() {
        let (_d, store) = setup();
        assert!(matches!(
            set_policy(
                &store,
                &user("alice"),
                ExpiryPolicy::default().into(),
                &actor()
            ),
            Err(Error::Forbidden(_))
        ));
        let (old, _) = create(&store, &user("alice"), personal("alice", None), &actor()).unwrap();
        let p = ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: Some(90),
        };
        set_policy(&store, &user("root"), p.into(), &actor()).unwrap();
        assert_eq!(policy(&store).unwrap(), p);
        // The audit event says what the policy is now; setting it again changes nothing.
        let changes = |store: &Store| {
            store
                .audit_events(None, 100)
                .unwrap()
                .into_iter()
                .filter(|e| e.action == "policy.changed")
                .map(|e| e.detail)
                .collect::<Vec<_>>()
        };
        assert_eq!(changes(&store), ["expiry required, at most 90 days"]);
        set_policy(&store, &user("root"), p.into(), &actor()).unwrap();
        assert_eq!(changes(&store).len(), 1);
        let optional = ExpiryPolicy {
            expiry_required: false,
            max_expiry_days: Some(10),
        };
        set_policy(&store, &user("root"), optional.into(), &actor()).unwrap();
        assert!(
            changes(&store).iter().any(
                |d| d.contains("expiry optional") && d.contains("a maximum of 10 days is kept")
            ),
            "{:?}",
            changes(&store)
        );
        // Past 100 years is refused before the policy is asked, and told to leave the expiry
        // out only where a token may go without one (here it may: expiry is optional).
        let past_100_years = |store: &Store| {
            create(
                store,
                &user("alice"),
                personal("alice", Some(MAX_DAYS + 1)),
                &actor(),
            )
            .unwrap_err()
            .to_string()
        };
        let e = past_100_years(&store);
        assert!(
            e.contains("at most 36500 days") && e.contains("leave it out"),
            "{e}"
        );
        set_policy(&store, &user("root"), p.into(), &actor()).unwrap();
        let e = past_100_years(&store);
        assert!(
            e.contains("at most 36500 days") && !e.contains("leave it out"),
            "{e}"
        );
        let e = create(&store, &user("alice"), personal("alice", None), &actor()).unwrap_err();
        assert!(e.to_string().contains("at most 90 days"), "{e}");
        let e = create(
            &store,
            &user("alice"),
            personal("alice", Some(91)),
            &actor(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("the maximum expiry is 90 days"),
            "{e}"
        );
        let (new, _) = create(
            &store,
            &user("alice"),
            personal("alice", Some(90)),
            &actor(),
        )
        .unwrap();
        assert!(!p.compliant(&old));
        assert!(p.compliant(&new));
        assert!(ExpiryPolicy::default().compliant(&old));
        // Of the tokens breaking it, only the active ones need an admin: an expired or a
        // revoked token opens nothing.
        let now = crate::clock::now_ms();
        let mut expired = old.clone();
        expired.id = "expired".into();
        expired.expires_at = Some(now);
        let mut revoked = old.clone();
        revoked.id = "revoked".into();
        revoked.revoked_at = Some(now);
        let mut expiring = old.clone();
        expiring.id = "expiring".into();
        expiring.expires_at = Some(now + 1 + 91 * DAY_MS);
        let all = [old.clone(), new.clone(), expired, revoked, expiring];
        let ids: Vec<&str> = p
            .breaches(&all, now)
            .iter()
            .map(|t| t.id.as_str())
            .collect();
        assert_eq!(ids, [old.id.as_str(), "expiring"]);
        // A token that breaks the policy gets no new secret; one that meets it does.
        let e = rotate(&store, &user("alice"), None, &old.id, 0, &actor()).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("create a new token instead")),
            "{e}"
        );
        assert!(rotate(&store, &user("alice"), None, &new.id, 0, &actor()).is_ok());
        set_policy(
            &store,
            &Caller::Operator,
            ExpiryPolicy::default().into(),
            &actor(),
        )
        .unwrap();
        assert!(create(&store, &user("alice"), personal("alice", None), &actor()).is_ok());
        assert!(matches!(
            set_policy(
                &store,
                &Caller::Operator,
                ExpiryPolicy {
                    expiry_required: true,
                    max_expiry_days: Some(0)
                }
                .into(),
                &actor()
            ),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn policy_changes_at_once_keep_each_others_parts() {
        // Two administrators (two processes: two store handles) change different parts of the
        // policy at the same time; neither may write back the other's part as it read it
        // before taking the write lock. The last change of `expiry_required` is `true`, so
        // that is what must be in force at the end, whatever the maximum.
        let (dir, store) = setup();
        let path = dir.path().join("t.db");
        for round in 0..5 {
            set_policy(
                &store,
                &Caller::Operator,
                ExpiryPolicy::default().into(),
                &actor(),
            )
            .unwrap();
            let maximum = {
                let store = Store::open(&path).unwrap();
                std::thread::spawn(move || {
                    for days in 1..=60 {
                        let change = PolicyChange {
                            max_expiry_days: Some(Some(days)),
                            ..Default::default()
                        };
                        set_policy(&store, &Caller::Operator, change, &actor()).unwrap();
                    }
                })
            };
            let other = Store::open(&path).unwrap();
            for i in 0..=20 {
                let change = PolicyChange {
                    expiry_required: Some(i % 2 == 0),
                    ..Default::default()
                };
                set_policy(&other, &Caller::Operator, change, &actor()).unwrap();
            }
            maximum.join().unwrap();
            assert_eq!(
                policy(&store).unwrap(),
                ExpiryPolicy {
                    expiry_required: true,
                    max_expiry_days: Some(60)
                },
                "round {round}"
            );
        }
    }

    #[test]
    fn a_policy_change_keeps_what_it_does_not_name() {
        let current = ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: Some(30),
        };
        let only_the_maximum = PolicyChange {
            max_expiry_days: Some(None),
            ..Default::default()
        };
        assert_eq!(
            only_the_maximum.applied_to(current),
            ExpiryPolicy {
                expiry_required: true,
                max_expiry_days: None
            }
        );
        assert_eq!(PolicyChange::default().applied_to(current), current);
        let whole = ExpiryPolicy::default();
        assert_eq!(PolicyChange::from(whole).applied_to(current), whole);
    }

    /// A policy changed by hand into what gitgate does not write is refused, not read as "no
    /// policy" (which let a token be created that the policy meant to forbid); `policy set`
    /// with both parts sets it again.
    #[test]
    fn a_policy_that_cannot_be_read_allows_nothing_until_it_is_set_again() {
        let (dir, store) = setup();
        let strict = PolicyChange {
            expiry_required: Some(true),
            max_expiry_days: Some(Some(30)),
        };
        set_policy(&store, &Caller::Operator, strict, &actor()).unwrap();
        let db = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        for (key, value) in [
            (EXPIRY_REQUIRED, "yes"),
            (EXPIRY_REQUIRED, "TRUE"),
            (MAX_EXPIRY_DAYS, "abc"),
            (MAX_EXPIRY_DAYS, "-5"),
            (MAX_EXPIRY_DAYS, "0"),
            (MAX_EXPIRY_DAYS, " 30"),
            (MAX_EXPIRY_DAYS, "+30"),
            (MAX_EXPIRY_DAYS, "99999999999999999999"),
        ] {
            set_policy(&store, &Caller::Operator, strict, &actor()).unwrap();
            db.execute(
                "UPDATE settings SET value = ?2 WHERE key = ?1",
                [key, value],
            )
            .unwrap();
            let e = policy(&store).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{key} is")) && e.contains("gitgate policy set"),
                "{value}: {e}"
            );
            // No token on a guess, with no expiry or a long one.
            for days in [None, Some(400)] {
                let refused = create(&store, &user("alice"), personal("alice", days), &actor());
                assert!(
                    matches!(&refused, Err(Error::Store(StoreError::Unreadable(_)))),
                    "{value}: {:?}",
                    refused.map(|(t, _)| t.expires_at)
                );
            }
            // Half a change needs the other half, which cannot be read.
            let half = PolicyChange {
                expiry_required: Some(true),
                ..Default::default()
            };
            assert!(set_policy(&store, &Caller::Operator, half, &actor()).is_err());
            // The whole policy given: set, and read again.
            let (set, changed) = set_policy(&store, &Caller::Operator, strict, &actor()).unwrap();
            assert!(changed, "{value}");
            assert_eq!(policy(&store).unwrap(), set);
        }
    }

    #[test]
    fn an_expiry_beyond_a_hundred_years_is_a_typo() {
        let (_d, store) = setup();
        let e = create(
            &store,
            &user("alice"),
            personal("alice", Some(u32::MAX)),
            &actor(),
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("at most 36500 days")),
            "{e}"
        );
        assert!(create(
            &store,
            &user("alice"),
            personal("alice", Some(MAX_DAYS)),
            &actor()
        )
        .is_ok());
        let too_long = ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: Some(MAX_DAYS + 1),
        };
        assert!(matches!(
            set_policy(&store, &Caller::Operator, too_long.into(), &actor()),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn an_expired_token_is_not_given_a_new_secret() {
        let (_d, store) = setup();
        let (t, _) = create(&store, &user("alice"), personal("alice", Some(1)), &actor()).unwrap();
        rusqlite::Connection::open(store.path())
            .unwrap()
            .execute(
                "UPDATE tokens SET expires_at = ?1 WHERE id = ?2",
                rusqlite::params![clock::now_ms() - 1, t.id],
            )
            .unwrap();
        let e = rotate(&store, &user("alice"), None, &t.id, 0, &actor()).unwrap_err();
        assert!(
            matches!(&e, Error::Conflict(m) if m.contains("expired on") && m.contains("create a new token")),
            "{e}"
        );
    }

    #[test]
    fn edit_revoke_rotate_rules() {
        let (_d, store) = setup();
        let (t, old_secret) = create(
            &store,
            &user("alice"),
            personal("alice", Some(10)),
            &actor(),
        )
        .unwrap();
        let alice = Subject::Personal("alice".into());
        // Bob can neither see nor change Alice's token; the admin can.
        assert!(matches!(
            get(&store, &user("bob"), None, &t.id),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            get(
                &store,
                &user("bob"),
                Some(&Subject::Personal("bob".into())),
                &t.id
            ),
            Err(Error::NotFound(_))
        ));
        assert!(get(&store, &user("root"), Some(&alice), &t.id).is_ok());
        let e = edit(
            &store,
            &user("root"),
            Some(&alice),
            &t.id,
            EditRequest {
                expiry_days: Some(100),
                ..Default::default()
            },
            &actor(),
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("never changes")),
            "{e}"
        );
        // Repeating the current expiry is not a change.
        let same = EditRequest {
            expiry_date: Some(t.expires_at),
            name: Some("renamed".into()),
            ..Default::default()
        };
        assert_eq!(
            edit(&store, &user("root"), None, &t.id, same, &actor())
                .unwrap()
                .name,
            "renamed"
        );
        let e = edit(
            &store,
            &user("alice"),
            None,
            &t.id,
            EditRequest {
                permissions: Some(vec!["ADMIN".into()]),
                ..Default::default()
            },
            &actor(),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Invalid(_)));
        let edited = edit(
            &store,
            &user("alice"),
            None,
            &t.id,
            EditRequest {
                permissions: Some(vec!["REPO_READ".into()]),
                ..Default::default()
            },
            &actor(),
        )
        .unwrap();
        assert_eq!(edited.permissions.to_string(), "REPO_READ");
        assert_eq!(edited.expires_at, t.expires_at);

        // Rotation: owner only; the old secret stops at once without an overlap.
        assert!(matches!(
            rotate(&store, &user("root"), None, &t.id, 0, &actor()),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            rotate(
                &store,
                &user("alice"),
                None,
                &t.id,
                MAX_OVERLAP_SECS + 1,
                &actor()
            ),
            Err(Error::Invalid(_))
        ));
        let (r, new_secret, _) = rotate(&store, &user("alice"), None, &t.id, 0, &actor()).unwrap();
        assert_eq!(
            (r.id.as_str(), r.permissions),
            (t.id.as_str(), edited.permissions)
        );
        assert_eq!(token::parse(new_secret.expose()).unwrap().as_str(), t.id);
        let rec = store.auth_record(&t.id).unwrap().unwrap();
        let now = clock::now_ms();
        assert!(rec.secret_matches(&token::hash(new_secret.expose()), now));
        assert!(!rec.secret_matches(&token::hash(old_secret.expose()), now));
        // With an overlap the previous secret works until it ends.
        let (_, newer, _) = rotate(&store, &user("alice"), None, &t.id, 60, &actor()).unwrap();
        let rec = store.auth_record(&t.id).unwrap().unwrap();
        assert!(rec.secret_matches(&token::hash(newer.expose()), now));
        assert!(rec.secret_matches(&token::hash(new_secret.expose()), now));
        assert!(!rec.secret_matches(&token::hash(new_secret.expose()), now + 61_000));
        // Undone (its secret was never shown): both secrets before it work as they did, and a
        // second undo, or one after a later rotation, finds the token changed and leaves it.
        let (_, unseen, replaced) =
            rotate(&store, &user("alice"), None, &t.id, 0, &actor()).unwrap();
        let (_, later, replaced_later) =
            rotate(&store, &user("alice"), None, &t.id, 0, &actor()).unwrap();
        assert!(matches!(
            undo_rotation(&store, &t.id, &unseen, &replaced, &actor()),
            Err(Error::Conflict(_))
        ));
        undo_rotation(&store, &t.id, &later, &replaced_later, &actor()).unwrap();
        let rec = store.auth_record(&t.id).unwrap().unwrap();
        assert!(rec.secret_matches(&token::hash(unseen.expose()), now));
        assert!(!rec.secret_matches(&token::hash(later.expose()), now));
        undo_rotation(&store, &t.id, &unseen, &replaced, &actor()).unwrap();
        let rec = store.auth_record(&t.id).unwrap().unwrap();
        assert!(rec.secret_matches(&token::hash(newer.expose()), now));
        assert!(rec.secret_matches(&token::hash(new_secret.expose()), now));
        assert!(!rec.secret_matches(&token::hash(unseen.expose()), now));
        assert!(matches!(
            undo_rotation(&store, &t.id, &unseen, &replaced, &actor()),
            Err(Error::Conflict(_))
        ));

        assert!(matches!(
            revoke(&store, &user("bob"), None, &t.id, &actor()),
            Err(Error::Forbidden(_))
        ));
        revoke(&store, &user("root"), Some(&alice), &t.id, &actor()).unwrap();
        assert!(matches!(
            revoke(&store, &user("alice"), None, &t.id, &actor()),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            edit(
                &store,
                &user("alice"),
                None,
                &t.id,
                EditRequest {
                    name: Some("x".into()),
                    ..Default::default()
                },
                &actor()
            ),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            rotate(&store, &user("alice"), None, &t.id, 0, &actor()),
            Err(Error::Conflict(_))
        ));

        let actions: Vec<String> = store
            .audit_events(None, 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        for a in [
            "token.created",
            "token.edited",
            "token.rotated",
            "token.rotation_undone",
            "token.revoked",
        ] {
            assert!(
                actions.iter().any(|x| x == a),
                "{a} missing from {actions:?}"
            );
        }
    }

    #[test]
    fn lists_are_per_subject() {
        let (_d, store) = setup();
        create(&store, &user("alice"), personal("alice", None), &actor()).unwrap();
        create(&store, &user("bob"), personal("bob", None), &actor()).unwrap();
        let alice = Subject::Personal("alice".into());
        let list = |caller: &Caller, subject: &Subject| {
            list_page(&store, caller, subject, 0, 25).map(|page| page.tokens)
        };
        assert_eq!(list(&user("alice"), &alice).unwrap().len(), 1);
        assert_eq!(list(&user("root"), &alice).unwrap().len(), 1);
        assert!(matches!(
            list(&user("bob"), &alice),
            Err(Error::Forbidden(_))
        ));
        let team = Subject::Scoped(Target::parse("team").unwrap());
        assert!(matches!(
            list(&user("alice"), &team),
            Err(Error::Forbidden(_))
        ));
        assert!(list(&user("root"), &team).unwrap().is_empty());
    }

    #[test]
    fn expiry_required_without_a_maximum_still_requires_an_expiry() {
        let p = ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: None,
        };
        let e = p.check_new(None).unwrap_err();
        assert!(e.contains("requires an expiry"), "{e}");
        assert!(p.check_new(Some(3650)).is_ok());
    }

    #[test]
    fn a_token_is_compliant_up_to_the_maximum_exactly() {
        let (_d, store) = setup();
        let (t, _) = create(
            &store,
            &user("alice"),
            personal("alice", Some(30)),
            &actor(),
        )
        .unwrap();
        let p = ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: Some(30),
        };
        let mut at_max = t.clone();
        at_max.expires_at = Some(t.created_at + 30 * DAY_MS);
        assert!(p.compliant(&at_max));
        let mut over = t.clone();
        over.expires_at = Some(t.created_at + 30 * DAY_MS + 1);
        assert!(!p.compliant(&over));
    }

    /// A token row gitgate never writes (changed by hand, or from another tool: created before
    /// 1970, expiring at the end of time) is as far over the maximum as it reads: its lifetime
    /// overflowed, a panic in a debug build (a `500` for the token list, `policy show` killed)
    /// and in a release build a wrap to a negative lifetime, which read as within any maximum,
    /// so that such a token was listed compliant and given a new secret by a rotation.
    #[test]
    fn a_lifetime_too_long_to_count_is_over_the_maximum() {
        let (_d, store) = setup();
        let (t, _) = create(
            &store,
            &user("alice"),
            personal("alice", Some(30)),
            &actor(),
        )
        .unwrap();
        let p = ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: Some(30),
        };
        for (created_at, expires_at) in [(-1, i64::MAX), (i64::MIN, 0), (i64::MIN, i64::MAX)] {
            let mut endless = t.clone();
            endless.created_at = created_at;
            endless.expires_at = Some(expires_at);
            assert!(!p.compliant(&endless), "{created_at} to {expires_at}");
        }
        // Expiring before its creation is within any maximum, as it always was.
        let mut backwards = t.clone();
        backwards.created_at = i64::MAX;
        backwards.expires_at = Some(i64::MIN);
        assert!(p.compliant(&backwards));
    }

    /// The longest overlap, a week, is allowed; only a longer one is refused.
    #[test]
    fn a_rotation_may_keep_the_old_secret_for_a_week_exactly() {
        let (_d, store) = setup();
        let alice = user("alice");
        let (t, old) = create(&store, &alice, personal("alice", None), &actor()).unwrap();
        assert!(matches!(
            rotate(&store, &alice, None, &t.id, MAX_OVERLAP_SECS + 1, &actor()),
            Err(Error::Invalid(_))
        ));
        let (_, new, _) = rotate(&store, &alice, None, &t.id, MAX_OVERLAP_SECS, &actor()).unwrap();
        let rec = store.auth_record(&t.id).unwrap().unwrap();
        let now = clock::now_ms();
        let almost_a_week = now + i64::from(MAX_OVERLAP_SECS) * 1000 - 60_000;
        assert!(rec.secret_matches(&token::hash(new.expose()), now));
        assert!(rec.secret_matches(&token::hash(old.expose()), almost_a_week));
    }

    /// A policy maximum of a hundred years exactly is a policy, not a typo; one day more is.
    #[test]
    fn a_policy_maximum_of_a_hundred_years_exactly_is_allowed() {
        let (_d, store) = setup();
        let longest = ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: Some(MAX_DAYS),
        };
        set_policy(&store, &Caller::Operator, longest.into(), &actor()).unwrap();
        assert_eq!(policy(&store).unwrap(), longest);
        let too_long = ExpiryPolicy {
            max_expiry_days: Some(MAX_DAYS + 1),
            ..longest
        };
        assert!(matches!(
            set_policy(&store, &Caller::Operator, too_long.into(), &actor()),
            Err(Error::Invalid(_))
        ));
        assert_eq!(policy(&store).unwrap(), longest);
    }

    /// Only an administrator is told that a name is nobody's: a user who asks for a token of
    /// another name gets the same refusal whether or not that name is a user's, so that it
    /// does not tell them which user names exist.
    #[test]
    fn a_user_is_not_told_whether_another_name_exists() {
        let (_d, store) = setup();
        let refusal =
            |name: &str| match create(&store, &user("bob"), personal(name, None), &actor()) {
                Err(Error::Forbidden(m)) => m.replace(name, "NAME"),
                other => panic!("{name}: {other:?}"),
            };
        assert_eq!(refusal("ghost"), refusal("alice"));
    }

    /// Going through every token (`admin/tokens`) is for administrators only, also when the
    /// lifecycle is called without the REST API's own check first; a refused caller is shown
    /// no token.
    #[test]
    fn only_administrators_may_go_through_every_token() {
        let (_d, store) = setup();
        create(&store, &user("alice"), personal("alice", None), &actor()).unwrap();
        let refused = all_page(&store, &user("alice"), None, 0, 25);
        assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
        let page = all_page(&store, &user("root"), None, 0, 25).unwrap();
        assert_eq!(page.tokens.len(), 1);
    }

    /// The store's listing of the tokens that meet, or break, the expiry policy (SQL) picks
    /// the tokens [`ExpiryPolicy::compliant`] and `is_active` pick, for every policy: no
    /// expiry, a past one, a lifetime at the maximum and one past it, and lifetimes past i64
    /// both ways (rows gitgate never writes, where SQLite's arithmetic leaves integers).
    #[test]
    fn the_stores_compliance_listing_is_the_policys_own() {
        let (dir, store) = setup();
        let now = clock::now_ms();
        let lifetimes: [(i64, Option<i64>); 8] = [
            (now, None),
            (now - 10 * DAY_MS, Some(now - DAY_MS)),
            (now, Some(now + 30 * DAY_MS)),
            (now, Some(now + 30 * DAY_MS + 1)),
            (now, Some(now + 400 * DAY_MS)),
            (i64::MIN, Some(i64::MAX)),
            (i64::MAX, Some(i64::MAX)),
            (now - DAY_MS, Some(now + DAY_MS)),
        ];
        let scope = Target::parse("team/app").unwrap();
        for (i, (created, expires)) in lifetimes.iter().enumerate() {
            let (id, name) = (format!("tokencompl{i:02}"), format!("t{i}"));
            let mut new = crate::store::test_support::repository_token(&id, &name, &scope);
            new.expires_at = *expires;
            store.insert_token(&new, &actor()).unwrap();
            crate::store::test_support::edit_by_hand(
                &dir,
                &format!("UPDATE tokens SET created_at = {created} WHERE id = '{id}'"),
            );
        }
        let every = store.tokens(None).unwrap();
        let ids = |tokens: &[TokenRecord]| {
            let mut ids: Vec<String> = tokens.iter().map(|t| t.id.clone()).collect();
            ids.sort();
            ids
        };
        for policy in [
            ExpiryPolicy::default(),
            ExpiryPolicy {
                expiry_required: true,
                max_expiry_days: None,
            },
            ExpiryPolicy {
                expiry_required: true,
                max_expiry_days: Some(30),
            },
        ] {
            for want in [true, false] {
                let page = all_page(&store, &user("root"), Some((want, &policy)), 0, 1000);
                let expected: Vec<TokenRecord> = every
                    .iter()
                    .filter(|t| t.is_active(now) && policy.compliant(t) == want)
                    .cloned()
                    .collect();
                assert_eq!(
                    ids(&page.unwrap().tokens),
                    ids(&expected),
                    "{policy:?}, compliant={want}"
                );
            }
        }
    }

    /// Changing a revoked token is a conflict (409), whatever the edit asks for: its state is
    /// the answer, not a fault in permissions or networks it will never use.
    #[test]
    fn an_edit_of_a_revoked_token_is_a_conflict_whatever_it_asks() {
        let (_d, store) = setup();
        let alice = user("alice");
        let (t, _) = create(&store, &alice, personal("alice", None), &actor()).unwrap();
        revoke(&store, &alice, None, &t.id, &actor()).unwrap();
        let too_many: Vec<String> = (0..=MAX_NETWORKS)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        for req in [
            EditRequest {
                permissions: Some(vec!["ADMIN".into()]),
                ..Default::default()
            },
            EditRequest {
                allowed_networks: Some(too_many),
                ..Default::default()
            },
        ] {
            let e = edit(&store, &alice, None, &t.id, req, &actor()).unwrap_err();
            assert!(
                matches!(&e, Error::Conflict(m) if m.contains("is revoked")),
                "{e}"
            );
        }
    }

    /// When expiry is required without a maximum, any token with an expiry meets the policy
    /// and only one without breaks it.
    #[test]
    fn without_a_maximum_any_expiry_is_compliant() {
        let (_d, store) = setup();
        let alice = user("alice");
        let (forever, _) = create(&store, &alice, personal("alice", None), &actor()).unwrap();
        let (long, _) =
            create(&store, &alice, personal("alice", Some(MAX_DAYS)), &actor()).unwrap();
        let p = ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: None,
        };
        assert!(p.compliant(&long));
        assert!(!p.compliant(&forever));
    }

    /// A token asked for under a user that is not there is "no user", as the REST path's
    /// collection names nobody; not "no token", which would send the caller looking for one.
    #[test]
    fn a_token_under_a_user_that_is_not_there_is_no_user() {
        let (_d, store) = setup();
        let (t, _) = create(&store, &user("alice"), personal("alice", None), &actor()).unwrap();
        let ghost = Subject::Personal("ghost".into());
        for id in [t.id.as_str(), "abcdefghijkl"] {
            assert!(
                matches!(
                    get(&store, &user("root"), Some(&ghost), id),
                    Err(Error::NotFound(m)) if m == "no user 'ghost'"
                ),
                "{id}"
            );
        }
    }
}
