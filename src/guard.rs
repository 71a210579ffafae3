//! The gate's defences against abuse, wired to the clock, the store and the logs: the pure
//! [`throttle`] (failed authentications per address) and
//! [`ratelimit`](crate::ratelimit) (requests per principal) do the arithmetic; this module feeds
//! them the time, reads the per-principal overrides, and writes the audit events and log lines.
//!
//! Where the gate asks:
//! 1. [`Guard::check_address`] once the request is classified and its form checked, before
//!    credentials are parsed or the store is read: a blocked address costs nothing but an
//!    atomic read (a hash-map lookup while some address is blocked).
//! 2. [`Guard::failed_auth`] from the gate's one place for authentication failures.
//! 3. [`Guard::acquire_slot`] after authorisation: a place among the principal's requests in
//!    flight; then [`Guard::check_principal`]: the principal's bucket (an advertisement takes a
//!    token and buys its POSTs' credits; a POST uses a credit, else a token);
//!    [`Guard::check_api_call`] for a REST API call, once its password has been checked.
//!
//! Overrides (`gitgate ratelimit ...`) are read when the guard is built, then from the store
//! once they are [`REFRESH_AFTER_MS`] old, so a change from the CLI applies within
//! [`OVERRIDES_TTL_MS`] without a store read per request. While one request refreshes them, the
//! others go on with the last map read — but only while it is younger than
//! [`OVERRIDES_TTL_MS`]: after an idle spell the map is old, and each request reads the store
//! itself rather than be judged by it (a burst used to get 429s seconds after an exemption).
//! A slow read that lands after one begun later is dropped: it would put back the overrides
//! from before a change the later one saw, as fresh, for another [`REFRESH_AFTER_MS`].
//! The first read happens before the guard serves anything: an empty map
//! would hand every principal the defaults, and the burst of a CI fleet arriving at a freshly
//! started gitgate would be answered 429 despite its exemption. If a refresh fails the last known
//! overrides stay in force (the token lookup itself fails closed, so a store that is down is
//! answered with 503 anyway).

use crate::log_value::LogText;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use crate::config;
use crate::git::Operation;
use crate::inflight::{InFlight, Slot};
use crate::ratelimit::{Cost, Decision, Limits, RateLimiter};
use crate::request_id::RequestId;
use crate::store::{RateRule, Store, TokenRecord, UnreadableOverride};
use crate::throttle::{self, Throttle};

/// How stale the cached overrides may get: a change applies within this.
pub const OVERRIDES_TTL_MS: i64 = 5_000;

/// The age at which the cached overrides are read again; the second left until
/// [`OVERRIDES_TTL_MS`] is for the read, during which other requests use the last map.
pub const REFRESH_AFTER_MS: i64 = 4_000;

/// A request the guard turns away, with the seconds to put in `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Too many failed authentications from this address.
    AddressBlocked { retry_after_secs: u64 },
    /// The principal's bucket is empty. `log`: whether this refusal is the one to log, with
    /// how many went unlogged before it (see [`crate::repeats::Refusals`]).
    RateLimited {
        principal: String,
        retry_after_secs: u64,
        log: Option<u32>,
    },
    /// The principal already has the most requests in flight it may have.
    TooManyInFlight { principal: String, max: u32 },
}

/// The tail of a principal's burst of rate-limit refusals (see
/// [`crate::repeats::Refusals::tail`]): those since its last line, not logged till now.
pub(crate) fn rate_limit_tail_said(principal: &str, unlogged: u32) {
    tracing::info!(
        target: "gitgate::ratelimit",
        principal = %crate::log_value::LogValue(principal),
        unlogged,
        "rate limit exceeded: the tail of a burst, the principal's refusals since its last such \
         line, not logged till now (said a minute after that line, as its bucket is forgotten, \
         or at the stop)"
    );
}

/// The tail of a principal's burst of refusals for its requests in flight (see
/// [`crate::repeats::Refusals::tail`]).
pub(crate) fn in_flight_tail_said(principal: &str, unlogged: u32) {
    tracing::info!(
        target: "gitgate::ratelimit",
        principal = %crate::log_value::LogValue(principal),
        unlogged,
        "too many requests in flight: the tail of a burst, the principal's refusals since its \
         last such line, not logged till now (said a minute after that line, or at the stop)"
    );
}

/// The wait a request refused for its principal's requests in flight is told, in `Retry-After`
/// and in words: clones take seconds to minutes, so a short wait is the honest hint, and the
/// same number in both places.
const IN_FLIGHT_RETRY_SECS: u64 = 5;

impl Verdict {
    /// A rate limit's refusal, in the log as the request `id` it refused, when it is the one to
    /// log (see [`crate::repeats::Refusals`]; the address throttle's block has a line of its
    /// own about the address, said once per block; the in-flight cap's is written by
    /// [`Guard::acquire_slot`]).
    pub fn say(&self, id: crate::request_id::RequestId) {
        if let Verdict::RateLimited {
            principal,
            retry_after_secs,
            log: Some(unlogged),
        } = self
        {
            tracing::info!(
                target: "gitgate::ratelimit",
                request_id = %id,
                principal = %crate::log_value::LogValue(principal),
                retry_after_secs,
                unlogged,
                "rate limit exceeded (said at most once a minute per principal: unlogged counts \
                 its refusals since the last such line, each in the request log with status=429)"
            );
        }
    }

    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Verdict::AddressBlocked { retry_after_secs }
            | Verdict::RateLimited {
                retry_after_secs, ..
            } => *retry_after_secs,
            Verdict::TooManyInFlight { .. } => IN_FLIGHT_RETRY_SECS,
        }
    }

    /// The one-line reason git shows as `remote: ...`.
    pub fn message(&self) -> String {
        match self {
            Verdict::TooManyInFlight { principal, max } => format!(
                "too many requests in flight for {principal} (at most {max} at once); try again \
                 in {IN_FLIGHT_RETRY_SECS} s, or once one of them has finished"
            ),
            Verdict::AddressBlocked { retry_after_secs } => format!(
                "too many failed authentications from your address; try again in {}",
                wait_in_words(*retry_after_secs)
            ),
            Verdict::RateLimited {
                principal,
                retry_after_secs,
                ..
            } => format!(
                "rate limit exceeded for {principal}; try again in {}",
                wait_in_words(*retry_after_secs)
            ),
        }
    }
}

/// A wait as a person reads it: seconds up to two minutes (what `Retry-After` says), then
/// minutes, then hours and minutes — a limit of a few requests a day is "23 h 57 min", not
/// "86207 s". Rounded up: the client that comes back when told is let in.
fn wait_in_words(secs: u64) -> String {
    if secs < 120 {
        return format!("{secs} s");
    }
    let minutes = secs.div_ceil(60);
    if minutes < 120 {
        return format!("{minutes} min");
    }
    match (minutes / 60, minutes % 60) {
        (hours, 0) => format!("{hours} h"),
        (hours, minutes) => format!("{hours} h {minutes} min"),
    }
}

/// The principal a token's requests are counted against: its owner for a personal token (all of
/// a user's tokens share one bucket), the token itself for a project or repository token.
pub fn principal(token: &TokenRecord) -> String {
    let (kind, name) = match &token.owner {
        Some(owner) => ("user:", owner.as_str()),
        None => ("token:", token.id.as_str()),
    };
    // Sized once (format! would grow it): built for every authorised request.
    let mut principal = String::with_capacity(kind.len() + name.len());
    principal.push_str(kind);
    principal.push_str(name);
    principal
}

/// The principal of a user's own requests: the bucket their personal tokens share (see
/// [`principal`]), and the key `gitgate ratelimit set USER` writes.
pub fn user_principal(user: &str) -> String {
    format!("user:{user}")
}

struct Overrides {
    /// When the map was last read (or a refresh claimed), on [`crate::clock::monotonic_ms`].
    fetched_at: i64,
    /// A request is reading them now.
    refreshing: bool,
    rules: Arc<HashMap<String, RateRule>>,
    /// The rows last found unusable, said once each time they change.
    unreadable: Vec<UnreadableOverride>,
}

/// Says which stored overrides cannot be used, when that differs from what was said last.
fn said_unreadable(now: &[UnreadableOverride], before: &[UnreadableOverride]) {
    let same = now.len() == before.len()
        && now
            .iter()
            .zip(before)
            .all(|(a, b)| a.principal == b.principal && a.error == b.error);
    if same {
        return;
    }
    for o in now {
        tracing::error!(
            principal = %crate::log_value::LogValue(&o.principal),
            error = %LogText(&o.error.to_string()),
            "a rate-limit override cannot be used: its principal gets the defaults until it is \
             set again (gitgate ratelimit set) or cleared"
        );
    }
}

/// How often `serve` sweeps the address throttle ([`Guard::sweep`]).
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How often `serve` looks for the tails of bursts of refusals to say: a tail is said within
/// this of its minute's end.
pub const TAILS_SAID_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared by every connection.
pub struct Guard {
    store: Store,
    inflight: Arc<InFlight>,
    rate: Option<(RateLimiter, Limits)>,
    throttle: Throttle,
    /// `[auth_failures] exempt`: addresses whose failures the throttle does not count.
    exempt: Vec<crate::network::Cidr>,
    overrides: RwLock<Overrides>,
}

impl Guard {
    /// Reads the rate-limit overrides from `store` as of `now`: a store that cannot give them
    /// is an error, not an empty map (see the module doc).
    pub fn new(
        store: Store,
        rate_limit: &config::RateLimit,
        auth_failures: &config::AuthFailures,
        now: i64,
    ) -> Result<Guard, String> {
        let rules = store
            .rate_limits()
            .map_err(|e| format!("cannot read the rate-limit overrides: {e}"))?;
        said_unreadable(&rules.unreadable, &[]);
        let stored = rules.usable.len() + rules.unreadable.len();
        if !rate_limit.enabled && stored > 0 {
            // Set by an operator who may expect them to hold (a small bucket for one abusive
            // user): with the buckets off they are never looked at.
            tracing::warn!(
                overrides = stored,
                "rate limiting is off ([rate_limit] enabled = false): the rate-limit overrides in \
                 the store (gitgate ratelimit list) have no effect"
            );
        }
        let rate = rate_limit.enabled.then(|| {
            (
                RateLimiter::new(),
                Limits {
                    capacity: rate_limit.capacity,
                    refill_per_second: rate_limit.refill_per_second,
                },
            )
        });
        Ok(Guard {
            store,
            inflight: InFlight::new(rate_limit.max_concurrent),
            rate,
            throttle: Throttle::new(throttle::Policy {
                max: auth_failures.max,
                window_ms: i64::from(auth_failures.window_seconds) * 1000,
            }),
            exempt: auth_failures.exempt.clone(),
            overrides: RwLock::new(Overrides {
                fetched_at: now,
                refreshing: false,
                rules: Arc::new(
                    rules
                        .usable
                        .into_iter()
                        .map(|o| (o.principal, o.rule))
                        .collect(),
                ),
                unreadable: rules.unreadable,
            }),
        })
    }

    /// Forget the addresses whose failures no longer count, and give back what a flood of
    /// them took (see [`Throttle::sweep`]). `serve` calls it every [`SWEEP_EVERY`].
    ///
    /// (See also [`Guard::say_refusal_tails`], called more often.)
    /// Says the tails of principals' bursts of refusals (rate limit, requests in flight) due
    /// at `now`, or all of them when `now_or_never` (at the stop): see
    /// [`crate::repeats::Refusals::tail`]. `serve` calls it every [`TAILS_SAID_EVERY`].
    pub fn say_refusal_tails(&self, now: i64, now_or_never: bool) {
        if let Some((limiter, _)) = &self.rate {
            for (principal, unlogged) in limiter.refusal_tails(now, now_or_never) {
                rate_limit_tail_said(&principal, unlogged);
            }
        }
        for (principal, unlogged) in self.inflight.refusal_tails(now, now_or_never) {
            in_flight_tail_said(&principal, unlogged);
        }
    }

    pub fn sweep(&self, now: i64) {
        let swept = self.throttle.sweep(now);
        if swept.shrunk {
            // The tables a flood grew went back to mimalloc, which keeps freed pages for reuse
            // until something collects them; without this the process stays at the flood's
            // peak (measured: 47 MB after 200,000 addresses, 15 MB with it). Once per sweep
            // that shrank a table, so not on any request's path.
            // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
            unsafe { libmimalloc_sys::mi_collect(true) };
            tracing::info!(
                target: "gitgate::throttle",
                forgotten = swept.forgotten,
                tracked = self.throttle.len(),
                "failed-authentication throttle: addresses whose failures no longer count \
                 forgotten, and their memory given back"
            );
        } else if swept.forgotten > 0 {
            tracing::debug!(
                target: "gitgate::throttle",
                forgotten = swept.forgotten,
                tracked = self.throttle.len(),
                "failed-authentication throttle: addresses whose failures no longer count \
                 forgotten"
            );
        }
    }

    /// Step 1: is this address blocked? No store access. An exempt address never is, also
    /// when the throttle counts its neighbours with it (an IPv6 address counts by its /64).
    pub fn check_address(&self, addr: IpAddr, now: i64) -> Result<(), Verdict> {
        if !self.exempt.is_empty() && self.exempt(addr) {
            return Ok(());
        }
        self.throttle.check(addr, now).map_err(|retry_after_secs| {
            crate::metrics::METRICS.throttled();
            Verdict::AddressBlocked { retry_after_secs }
        })
    }

    fn exempt(&self, addr: IpAddr) -> bool {
        self.exempt.iter().any(|network| network.contains(addr))
    }

    /// Step 2: count a failed authentication; a new block is logged and audited off the path,
    /// the log line naming the request (`id`) whose failure made it.
    /// An exempt address's failures are not counted, so it is never blocked (and step 1 costs
    /// it nothing more).
    pub fn failed_auth(&self, addr: IpAddr, tried: u64, now: i64, id: RequestId) {
        if self.exempt(addr) {
            return;
        }
        let Some(block) = self.throttle.record_failure(addr, tried, now) else {
            return;
        };
        let policy = self.throttle.policy();
        let detail = format!(
            "{} failed authentications within {} s: blocked for {} s (block {} in a row)",
            policy.max,
            policy.window_ms / 1000,
            block.retry_after_secs,
            block.strike
        );
        tracing::warn!(
            target: "gitgate::throttle",
            request_id = %id,
            remote = %addr,
            retry_after_secs = block.retry_after_secs,
            strike = block.strike,
            "address blocked after repeated authentication failures (it lifts by itself after \
             retry_after_secs, and at a restart; an address that must never be blocked, a CI \
             runner's or an office NAT's, goes in [auth_failures] exempt, read at start)"
        );
        // Batched with the failures' rows by the store's writer (its own thread, one commit a
        // window), the row keeping the block's time and the request whose failure made it, as
        // the warning above does. Written on its own instead (a task and a transaction per
        // block, waiting for a write lock held elsewhere, a `sqlite3` shell or a backup, one
        // block at a time), blocks from many addresses (an IPv6 /48 has 65,536 /64s) piled up
        // a task each for as long as the lock was held, without bound; each row was timed
        // when it was written, not when the block was made; and each commit emptied the token
        // cache of every worker. The writer holds what waits for a lock within its caps, and a
        // row the store cannot take (a full disk) is logged whole: what it would have held.
        let target = addr.to_string();
        self.store.record_request_event_later(
            ("gitgate", &target),
            "auth.throttled",
            &target,
            &detail,
            Some(id),
        );
    }

    /// Step 3: a place among the principal's requests in flight, held until the response ends
    /// — for a POST, one that carries on an exchange, up to twice the cap (see [`InFlight`]).
    /// Refused with a log line at most once a minute per principal, its requests ending and
    /// starting meanwhile or not (see [`crate::repeats::Refusals`]; without the request's id:
    /// the gate's line says it, with `status=429`).
    pub fn acquire_slot(&self, principal: &str, operation: Operation) -> Result<Slot, Verdict> {
        let slot = match operation {
            Operation::Rpc(_) => self.inflight.try_continue(principal),
            Operation::Advertise(_) | Operation::Dumb => self.inflight.try_acquire(principal),
        };
        slot.ok_or_else(|| {
            if let Some(unlogged) = self
                .inflight
                .refused(principal, crate::clock::monotonic_ms())
            {
                tracing::info!(
                    target: "gitgate::ratelimit",
                    principal = %crate::log_value::LogValue(principal),
                    max = self.inflight.max(),
                    unlogged,
                    "too many requests in flight (said at most once a minute per principal: \
                     unlogged counts its refusals since the last such line, each in the request \
                     log with status=429)"
                );
            }
            Verdict::TooManyInFlight {
                principal: principal.to_string(),
                max: self.inflight.max(),
            }
        })
    }

    /// Step 4: charge the principal's bucket (see [`Cost::of`](crate::ratelimit::Cost::of)): an
    /// advertisement takes a token and buys credits for the POSTs that follow it; a POST uses
    /// a credit, else a token. Exempt principals pass without a charge.
    pub async fn check_principal(
        &self,
        principal: &str,
        operation: Operation,
        now: i64,
    ) -> Result<(), Verdict> {
        self.charge(principal, Cost::of(operation), now).await
    }

    /// Step 3 for the REST API: an authenticated call takes a token from its user's bucket —
    /// the one their personal tokens' git requests draw from, with the same overrides — as a
    /// call to Bitbucket's REST API does. Asked only once the password has been checked: an
    /// unauthenticated caller must not be able to empty someone else's bucket.
    pub async fn check_api_call(&self, user: &str, now: i64) -> Result<(), Verdict> {
        self.charge(&user_principal(user), Cost::Token, now).await
    }

    async fn charge(&self, principal: &str, cost: Cost, now: i64) -> Result<(), Verdict> {
        let Some((limiter, defaults)) = &self.rate else {
            return Ok(());
        };
        let limits = match self.overrides(now).await.get(principal) {
            Some(RateRule::Exempt) => return Ok(()),
            Some(RateRule::Limits {
                capacity,
                refill_per_second,
            }) => Limits {
                capacity: *capacity,
                refill_per_second: *refill_per_second,
            },
            None => *defaults,
        };
        match limiter.check(principal, cost, limits, now) {
            Decision::Allow { .. } => Ok(()),
            // Said by the caller, with the request's id (see [`Verdict::say`]).
            Decision::Limited {
                retry_after_secs,
                log,
            } => Err(Verdict::RateLimited {
                principal: principal.to_string(),
                retry_after_secs,
                log,
            }),
        }
    }

    /// The overrides, read again from the store once older than [`REFRESH_AFTER_MS`]; while
    /// another request reads them, the last map is used until it is [`OVERRIDES_TTL_MS`] old.
    async fn overrides(&self, now: i64) -> Arc<HashMap<String, RateRule>> {
        // Fresh enough to use without a read; or, while another request reads, to use still.
        let fresh = |o: &Overrides| {
            let age = now - o.fetched_at;
            (0..REFRESH_AFTER_MS).contains(&age)
                || (o.refreshing && (0..OVERRIDES_TTL_MS).contains(&age))
        };
        {
            // Every request of every worker comes here: the read side lets them in together.
            let cached = self.overrides.read().unwrap_or_else(|p| p.into_inner());
            if fresh(&cached) {
                return cached.rules.clone();
            }
        }
        {
            let mut cached = self.overrides.write().unwrap_or_else(|p| p.into_inner());
            if fresh(&cached) {
                return cached.rules.clone();
            }
            // Claim the refresh so concurrent requests use the last map read meanwhile (while
            // it is young enough).
            cached.refreshing = true;
        }
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || store.rate_limits()).await;
        let mut cached = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        cached.refreshing = false;
        // A read begun later (once this one's map was a TTL old) may have landed first: what
        // this one read may then be older than a change that one saw, and would stand for as
        // fresh, putting the old overrides back for another REFRESH_AFTER_MS. It is dropped.
        let superseded = now < cached.fetched_at;
        // Read at `now` or later: what was read is at least that fresh. (A failed read keeps
        // the last map, and is not tried again by every request until then either.)
        cached.fetched_at = cached.fetched_at.max(now);
        match read {
            Ok(Ok(_)) if superseded => {}
            Ok(Ok(list)) => {
                said_unreadable(&list.unreadable, &cached.unreadable);
                cached.unreadable = list.unreadable;
                cached.rules = Arc::new(
                    list.usable
                        .into_iter()
                        .map(|o| (o.principal, o.rule))
                        .collect(),
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %LogText(&e.to_string()), "could not read rate-limit overrides; keeping the last known ones");
            }
            Err(e) => {
                tracing::warn!(error = %LogText(&e.to_string()), "rate-limit override task failed");
            }
        }
        cached.rules.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::Service;

    #[test]
    fn a_wait_is_said_in_the_unit_a_person_reads_it_in_and_never_shorter() {
        let said = |secs| wait_in_words(secs);
        assert_eq!(said(1), "1 s");
        assert_eq!(said(119), "119 s");
        assert_eq!(said(120), "2 min");
        assert_eq!(said(121), "3 min");
        assert_eq!(said(3600), "60 min");
        assert_eq!(said(7140), "119 min");
        assert_eq!(said(7141), "2 h");
        assert_eq!(said(7200), "2 h");
        assert_eq!(said(86_207), "23 h 57 min");
        // No overflow at the end of the range.
        assert_eq!(said(u64::MAX), "5124095576030431 h 1 min");
        let refused = Verdict::RateLimited {
            principal: "user:alice".into(),
            retry_after_secs: 86_207,
            log: None,
        };
        assert_eq!(
            refused.message(),
            "rate limit exceeded for user:alice; try again in 23 h 57 min"
        );
        let blocked = Verdict::AddressBlocked {
            retry_after_secs: 3600,
        };
        assert!(blocked.message().ends_with("try again in 60 min"));
    }
    use crate::permission::{TokenKind, TokenPermissions};
    use crate::store::test_support::{actor, temp_store};
    use crate::store::Role;

    fn token(owner: Option<&str>) -> TokenRecord {
        let kind = if owner.is_some() {
            TokenKind::Personal
        } else {
            TokenKind::Project
        };
        TokenRecord {
            id: "abcdefghijkl".into(),
            kind,
            name: "t".into(),
            owner: owner.map(String::from),
            scope: None,
            permissions: TokenPermissions::from_names(kind, &["REPO_READ"]).unwrap(),
            created_at: 0,
            created_by: "test".into(),
            expires_at: None,
            last_used_at: None,
            last_used_addr: None,
            revoked_at: None,
            rotated_at: None,
            allowed_networks: Vec::new(),
        }
    }

    fn guard(store: Store, capacity: u32) -> Guard {
        guard_at(store, capacity, 0)
    }

    fn guard_at(store: Store, capacity: u32, now: i64) -> Guard {
        Guard::new(
            store,
            &config::RateLimit {
                enabled: true,
                capacity,
                refill_per_second: 1.0,
                max_concurrent: 0,
            },
            &config::AuthFailures {
                max: 2,
                window_seconds: 60,
                ..Default::default()
            },
            now,
        )
        .unwrap()
    }

    #[test]
    fn principals() {
        assert_eq!(principal(&token(Some("alice"))), "user:alice");
        assert_eq!(principal(&token(None)), "token:abcdefghijkl");
    }

    #[tokio::test]
    async fn only_exchange_starts_are_limited_and_exemptions_apply() {
        let (_d, store) = temp_store();
        let g = guard(store.clone(), 1);
        let alice = token(Some("alice"));
        let advertise = Operation::Advertise(Service::UploadPack);
        let rpc = Operation::Rpc(Service::UploadPack);
        assert_eq!(
            g.check_principal(&principal(&alice), advertise, 0).await,
            Ok(())
        );
        let limited = g
            .check_principal(&principal(&alice), advertise, 0)
            .await
            .unwrap_err();
        assert_eq!(limited.retry_after_secs(), 1);
        assert!(limited.message().contains("user:alice"));
        for _ in 0..10 {
            assert_eq!(g.check_principal(&principal(&alice), rpc, 0).await, Ok(()));
        }
        // An exemption is read from the store once the cached overrides are stale.
        store.add_user("alice", "x", Role::User, &actor()).unwrap();
        store
            .set_rate_limit("user:alice", RateRule::Exempt, &actor())
            .unwrap();
        let later = OVERRIDES_TTL_MS + 1;
        for _ in 0..5 {
            assert_eq!(
                g.check_principal(&principal(&alice), advertise, later)
                    .await,
                Ok(())
            );
        }
    }

    /// After an idle spell, a request arriving while another reads the overrides is not judged
    /// by the old map: it reads them itself. (A burst right after an exemption got 429s.)
    #[tokio::test]
    async fn a_stale_map_is_not_used_while_another_request_refreshes_it() {
        let (_d, store) = temp_store();
        let g = guard(store.clone(), 1);
        let alice = token(Some("alice"));
        let advertise = Operation::Advertise(Service::UploadPack);
        store.add_user("alice", "x", Role::User, &actor()).unwrap();
        store
            .set_rate_limit("user:alice", RateRule::Exempt, &actor())
            .unwrap();
        // Another request has claimed the refresh (and is still reading).
        g.overrides.write().unwrap().refreshing = true;
        let idle = 10 * OVERRIDES_TTL_MS;
        for _ in 0..5 {
            assert_eq!(
                g.check_principal(&principal(&alice), advertise, idle).await,
                Ok(())
            );
        }
        // A map younger than the promise is used meanwhile, a refresh under way or not.
        store.clear_rate_limit("user:alice", &actor()).unwrap();
        g.overrides.write().unwrap().refreshing = true;
        let soon = idle + REFRESH_AFTER_MS + 1;
        // More than the bucket's one: the exemption the map holds is what lets them all in.
        for _ in 0..3 {
            assert_eq!(
                g.check_principal(&principal(&alice), advertise, soon).await,
                Ok(())
            );
        }
    }

    #[tokio::test]
    async fn an_api_call_takes_a_token_from_its_users_bucket() {
        let (_d, store) = temp_store();
        let g = guard(store.clone(), 2);
        let alice = principal(&token(Some("alice")));
        let advertise = Operation::Advertise(Service::UploadPack);
        // A REST call and a clone draw from one bucket: alice's.
        assert_eq!(g.check_api_call("alice", 0).await, Ok(()));
        assert_eq!(g.check_principal(&alice, advertise, 0).await, Ok(()));
        let limited = g.check_api_call("alice", 0).await.unwrap_err();
        assert!(limited.message().contains("user:alice"), "{limited:?}");
        assert!(g.check_principal(&alice, advertise, 0).await.is_err());
        // Another user's calls draw from theirs.
        assert_eq!(g.check_api_call("bob", 0).await, Ok(()));
        // An exemption covers the API too.
        store.add_user("alice", "x", Role::User, &actor()).unwrap();
        store
            .set_rate_limit(&user_principal("alice"), RateRule::Exempt, &actor())
            .unwrap();
        let later = OVERRIDES_TTL_MS + 1;
        for _ in 0..5 {
            assert_eq!(g.check_api_call("alice", later).await, Ok(()));
        }
    }

    #[tokio::test]
    async fn an_exemption_holds_from_the_first_requests_of_a_burst() {
        let (_d, store) = temp_store();
        store.add_user("ci", "x", Role::User, &actor()).unwrap();
        store
            .set_rate_limit("user:ci", RateRule::Exempt, &actor())
            .unwrap();
        // Built long after time 0, as a server is, and asked at once by many requests: none may
        // be charged against the defaults (a bucket of 1) while the overrides are read.
        let now = 10 * OVERRIDES_TTL_MS;
        let g = Arc::new(guard_at(store, 1, now));
        let who = principal(&token(Some("ci")));
        let advertise = Operation::Advertise(Service::UploadPack);
        let burst: Vec<_> = (0..8)
            .map(|_| {
                let (g, who) = (g.clone(), who.clone());
                tokio::spawn(async move { g.check_principal(&who, advertise, now).await })
            })
            .collect();
        for request in burst {
            assert_eq!(request.await.unwrap(), Ok(()));
        }
        // The refresh after the TTL keeps it, and a request during that refresh uses the map
        // already read rather than an empty one.
        let later = now + OVERRIDES_TTL_MS;
        let (a, b) = tokio::join!(
            g.check_principal(&who, advertise, later),
            g.check_principal(&who, advertise, later)
        );
        assert_eq!((a, b), (Ok(()), Ok(())));
    }

    #[test]
    fn a_store_without_its_overrides_table_is_an_error() {
        let (dir, store) = temp_store();
        rusqlite::Connection::open(dir.path().join("t.db"))
            .unwrap()
            .execute_batch("DROP TABLE rate_limits")
            .unwrap();
        let err = Guard::new(
            store,
            &config::RateLimit {
                enabled: true,
                capacity: 1,
                refill_per_second: 1.0,
                max_concurrent: 0,
            },
            &config::AuthFailures {
                max: 2,
                window_seconds: 60,
                ..Default::default()
            },
            0,
        )
        .err()
        .expect("no guard without its overrides");
        assert!(err.contains("rate-limit overrides"), "{err}");
    }

    #[tokio::test]
    async fn failures_block_the_address_and_are_audited() {
        let (_d, store) = temp_store();
        let g = guard(store.clone(), 60);
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(g.check_address(addr, 0), Ok(()));
        g.failed_auth(addr, 1, 0, RequestId::next());
        g.failed_auth(addr, 2, 1, RequestId::next());
        assert_eq!(
            g.check_address(addr, 2),
            Err(Verdict::AddressBlocked {
                retry_after_secs: 60
            })
        );
        for _ in 0..100 {
            let events = store.audit_events(None, 10).unwrap();
            if events.iter().any(|e| e.action == "auth.throttled") {
                assert!(events.iter().any(|e| e.target == "192.0.2.7"));
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("no auth.throttled audit event");
    }

    /// Blocks from many addresses while another process holds the store's write lock (a
    /// `sqlite3` shell, a backup): their audit events wait for the lock in the store's writer,
    /// holding nothing of the worker's — no task, no blocking thread, so that its token reads
    /// on a cache miss and its password checks run at once — and once the lock is let go each
    /// row has its block's time and request. Before, each block was a task of its own, waiting
    /// for its turn to write (one at a time) for as long as the lock was held, so that blocks
    /// from many addresses piled up without bound (24 tasks here), and each row was timed when
    /// it was written, after the lock; before that, each took a blocking thread for the
    /// store's busy timeout (5 s), and the read waited behind them all.
    #[test]
    fn block_events_waiting_for_the_store_hold_nothing_of_the_worker() {
        let runtime = crate::blocking_pool::started_for_a_test();
        let (_d, store) = temp_store();
        let holder = rusqlite::Connection::open(store.path()).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let g = guard(store.clone(), 60);
        let blocks = 3 * crate::blocking_pool::THREADS;
        let mut made = Vec::new();
        let blocked_by = runtime.block_on(async {
            let mut ids = Vec::new();
            for i in 0..blocks {
                let addr: IpAddr = format!("192.0.2.{}", i + 1).parse().unwrap();
                let id = RequestId::next();
                let before = crate::clock::now_ms();
                g.failed_auth(addr, 1, 0, RequestId::next());
                g.failed_auth(addr, 2, 1, id);
                made.push((addr.to_string(), before, crate::clock::now_ms()));
                ids.push(id.to_string());
                assert!(g.check_address(addr, 2).is_err());
            }
            // Whatever the blocks started on this runtime runs up to where it waits.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            let alive = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            assert_eq!(alive, 0, "tasks left waiting by {blocks} blocks");
            let read = tokio::task::spawn_blocking(|| "the token's record");
            let read = tokio::time::timeout(std::time::Duration::from_secs(10), read)
                .await
                .expect("a store read waited behind the blocks' audit events");
            assert_eq!(read.unwrap(), "the token's record");
            ids
        });
        // The lock is let go some time after the last block: a row timed at its writing
        // would be later than its block.
        let last_made = made.last().unwrap().2;
        while crate::clock::now_ms() <= last_made + 50 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        holder.execute_batch("COMMIT").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let rows = loop {
            let rows: Vec<_> = store
                .audit_events(None, 1_000)
                .unwrap()
                .into_iter()
                .filter(|e| e.action == "auth.throttled")
                .collect();
            if rows.len() == blocks || std::time::Instant::now() > deadline {
                break rows;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(rows.len(), blocks, "{rows:?}");
        for ((addr, before, after), id) in made.iter().zip(&blocked_by) {
            let row = rows.iter().find(|r| &r.target == addr).unwrap();
            assert!(
                (*before..=*after).contains(&row.at),
                "{addr}'s row is timed {}, its block was made within {before}..={after}",
                row.at
            );
            assert_eq!(
                (row.actor.as_str(), row.source.as_str()),
                ("gitgate", addr.as_str())
            );
            assert_eq!(row.request_id.as_deref(), Some(id.as_str()));
            assert!(row.detail.contains("blocked for 60 s"), "{}", row.detail);
        }
    }

    /// A guard blocking after two failures, except for the `exempt` networks; its store's
    /// folder is kept with it.
    fn exempting(exempt: &str) -> (tempfile::TempDir, Guard) {
        let (dir, store) = temp_store();
        let guard = Guard::new(
            store,
            &config::RateLimit::default(),
            &config::AuthFailures {
                max: 2,
                window_seconds: 60,
                exempt: crate::network::parse_new_list(&[exempt]).unwrap(),
                ..Default::default()
            },
            0,
        )
        .unwrap();
        (dir, guard)
    }

    #[tokio::test]
    async fn an_exempt_network_is_never_blocked() {
        let (_d, g) = exempting("192.0.2.0/24");
        let (nat, other): (IpAddr, IpAddr) = (
            "192.0.2.7".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        );
        for at in 0..10 {
            g.failed_auth(nat, at as u64, at, RequestId::next());
            g.failed_auth(other, at as u64, at, RequestId::next());
        }
        assert_eq!(g.check_address(nat, 20), Ok(()));
        assert!(g.check_address(other, 20).is_err());
        // An IPv6 address counts by its /64: a neighbour's failures do not block an exempt one.
        let (_d, g) = exempting("2001:db8::10/128");
        let (nat, neighbour): (IpAddr, IpAddr) = (
            "2001:db8::10".parse().unwrap(),
            "2001:db8::11".parse().unwrap(),
        );
        for at in 0..10 {
            g.failed_auth(neighbour, at as u64, at, RequestId::next());
        }
        assert!(g.check_address(neighbour, 20).is_err());
        assert_eq!(g.check_address(nat, 20), Ok(()));
    }

    /// An exempt address's failures are not counted at all: with the throttle counting an
    /// IPv6 address by its /64, an exempt one failing again and again blocks none of its
    /// neighbours, and no block of it is audited.
    #[tokio::test]
    async fn an_exempt_addresss_failures_block_no_neighbour() {
        let (_d, g) = exempting("2001:db8::10/128");
        let (nat, neighbour): (IpAddr, IpAddr) = (
            "2001:db8::10".parse().unwrap(),
            "2001:db8::11".parse().unwrap(),
        );
        for at in 0..10 {
            g.failed_auth(nat, at as u64, at, RequestId::next());
        }
        assert_eq!(g.check_address(neighbour, 20), Ok(()));
        assert_eq!(g.check_address(nat, 20), Ok(()));
        // Whatever the store's writer holds (a block's row would wait there) is written now.
        assert!(g.store.flush_pending_writes());
        let events = g.store.audit_events(None, 10).unwrap();
        assert!(
            !events.iter().any(|e| e.action == "auth.throttled"),
            "{events:?}"
        );
    }

    /// An override set from the CLI applies within [`OVERRIDES_TTL_MS`] of the last read, at
    /// that age itself included: not one request judged by the old map.
    #[tokio::test]
    async fn an_exemption_applies_once_the_cached_overrides_are_the_ttl_old() {
        let (_d, store) = temp_store();
        let g = guard(store.clone(), 1);
        let alice = principal(&token(Some("alice")));
        let advertise = Operation::Advertise(Service::UploadPack);
        store.add_user("alice", "x", Role::User, &actor()).unwrap();
        store
            .set_rate_limit("user:alice", RateRule::Exempt, &actor())
            .unwrap();
        for _ in 0..3 {
            assert_eq!(
                g.check_principal(&alice, advertise, OVERRIDES_TTL_MS).await,
                Ok(())
            );
        }
    }

    /// A refresh whose read of the store was slow (a loaded store, a busy blocking pool) and
    /// that lands after one begun later, at [`OVERRIDES_TTL_MS`], leaves that one's map in
    /// place: it used to put back what it read before the exemption, as fresh as the newer
    /// one, and the exemption, once applied, was withdrawn until the next refresh.
    #[tokio::test]
    async fn a_slow_refresh_landing_after_a_later_one_does_not_put_back_the_map_before_it() {
        use std::future::Future;
        let (_d, store) = temp_store();
        let alice = principal(&token(Some("alice")));
        let advertise = Operation::Advertise(Service::UploadPack);
        store.add_user("alice", "x", Role::User, &actor()).unwrap();
        // The refresh due at REFRESH_AFTER_MS reads the store (no override yet), then is held
        // before it lands: polled once, it waits for its read (unless the read was done by
        // then, when a new guard tries again).
        let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
        let (g, slow) = (0..50)
            .find_map(|_| {
                let g = Arc::new(guard(store.clone(), 1));
                let (held, alice) = (g.clone(), alice.clone());
                let mut slow = Box::pin(async move {
                    held.check_principal(&alice, advertise, REFRESH_AFTER_MS)
                        .await
                });
                slow.as_mut()
                    .poll(&mut noop)
                    .is_pending()
                    .then_some((g, slow))
            })
            .expect("a refresh that waited for its read");
        // Its read is done meanwhile, on the blocking pool.
        std::thread::sleep(std::time::Duration::from_millis(500));
        store
            .set_rate_limit("user:alice", RateRule::Exempt, &actor())
            .unwrap();
        // At the TTL the last map is too old to wait on: this request reads it itself.
        assert_eq!(
            g.check_principal(&alice, advertise, OVERRIDES_TTL_MS).await,
            Ok(())
        );
        // The slow one lands (asked before the exemption: its own verdict is either).
        let _ = slow.await;
        for _ in 0..3 {
            assert_eq!(
                g.check_principal(&alice, advertise, OVERRIDES_TTL_MS + 1)
                    .await,
                Ok(())
            );
        }
    }

    /// A principal's own limits replace the defaults: a bucket of 3 lets three advertisements
    /// in at once where the defaults (a bucket of 1) let one.
    #[tokio::test]
    async fn a_principals_own_limits_replace_the_defaults() {
        let (_d, store) = temp_store();
        store.add_user("ci", "x", Role::User, &actor()).unwrap();
        store
            .set_rate_limit(
                "user:ci",
                RateRule::Limits {
                    capacity: 3,
                    refill_per_second: 1.0,
                },
                &actor(),
            )
            .unwrap();
        let g = guard(store, 1);
        let ci = principal(&token(Some("ci")));
        let advertise = Operation::Advertise(Service::UploadPack);
        for _ in 0..3 {
            assert_eq!(g.check_principal(&ci, advertise, 0).await, Ok(()));
        }
        assert!(matches!(
            g.check_principal(&ci, advertise, 0).await,
            Err(Verdict::RateLimited { .. })
        ));
    }

    /// `[rate_limit] enabled = false` turns the buckets off: no request is ever answered 429
    /// for its principal's rate, however many come at once.
    #[tokio::test]
    async fn with_rate_limiting_off_no_principal_is_limited() {
        let (_d, store) = temp_store();
        let g = Guard::new(
            store,
            &config::RateLimit {
                enabled: false,
                capacity: 1,
                refill_per_second: 1.0,
                max_concurrent: 0,
            },
            &config::AuthFailures::default(),
            0,
        )
        .unwrap();
        let alice = principal(&token(Some("alice")));
        for _ in 0..10 {
            let advertise = Operation::Advertise(Service::UploadPack);
            assert_eq!(g.check_principal(&alice, advertise, 0).await, Ok(()));
            assert_eq!(g.check_api_call("alice", 0).await, Ok(()));
        }
    }

    /// The in-flight cap counts the requests that start an exchange against `max`; a POST that
    /// carries one on may go up to twice that, so an exchange under way is not cut in two.
    #[test]
    fn a_post_carries_its_exchange_on_past_the_cap_that_stops_a_new_one() {
        let (_d, store) = temp_store();
        let g = Guard::new(
            store,
            &config::RateLimit {
                max_concurrent: 1,
                ..Default::default()
            },
            &config::AuthFailures::default(),
            0,
        )
        .unwrap();
        let advertise = Operation::Advertise(Service::UploadPack);
        let rpc = Operation::Rpc(Service::UploadPack);
        let _first = g.acquire_slot("user:alice", advertise).unwrap();
        assert_eq!(
            g.acquire_slot("user:alice", advertise).err(),
            Some(Verdict::TooManyInFlight {
                principal: "user:alice".into(),
                max: 1
            })
        );
        let refused = g.acquire_slot("user:alice", Operation::Dumb).err().unwrap();
        // Told to come back shortly, not at once, and in words how soon: the seconds of its
        // `Retry-After`.
        assert!(refused.retry_after_secs() > 0, "{refused:?}");
        assert!(
            refused.message().ends_with(&format!(
                "(at most 1 at once); try again in {} s, or once one of them has finished",
                refused.retry_after_secs()
            )),
            "{}",
            refused.message()
        );
        let _post = g.acquire_slot("user:alice", rpc).unwrap();
        assert!(g.acquire_slot("user:alice", rpc).is_err());
        // Another principal has places of its own.
        assert!(g.acquire_slot("user:bob", advertise).is_ok());
    }
}
