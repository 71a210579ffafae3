//! Per-principal rate limiting with token buckets, after Bitbucket Data Center's: each principal
//! (a personal token's owner, or a scoped token itself) has a bucket of `capacity` tokens that
//! refills at `refill_per_second`; a counted request takes one, and an empty bucket means `429`
//! with `Retry-After` until the next token is there.
//!
//! Why these choices:
//! - **Pure.** Every method takes `now` (milliseconds) as a value, so the arithmetic is
//!   unit-tested without clocks or sleeps; the gate passes [`crate::clock::monotonic_ms`] in,
//!   so a wall clock stepped back neither stops the refill nor lengthens a wait.
//! - **Bounded memory.** A bucket that has refilled to capacity is indistinguishable from no
//!   bucket, so it can be dropped. Each shard sweeps such idle buckets when it has grown past its
//!   last sweep size, which keeps memory proportional to the principals active in the last
//!   `capacity / refill` seconds. Principals are authenticated token owners or scoped tokens, so an
//!   unauthenticated client cannot create entries at all.
//! - **Sharded.** A `Mutex<HashMap>` per shard, picked by hashing the principal, keeps two
//!   requests of different principals from contending on one lock on the hot path.
//! - **Clones count once.** The request that starts an exchange (the `info/refs` advertisement,
//!   or a dumb-HTTP GET) takes a token; the `git-upload-pack` / `git-receive-pack` POSTs that
//!   follow an advertisement are paid for by it: each advertisement gives the principal
//!   [`RPC_CREDITS`] POSTs for [`RPC_CREDIT_MS`] (at most [`MAX_RPC_CREDITS`] saved up), so a long clone or a
//!   protocol-v2 fetch that makes several POSTs costs one token. A POST with no credit left
//!   takes a token like any request: POSTs sent without advertisements — each one starts a
//!   pack — are limited too; see [`Cost`].

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use crate::git::Operation;
use crate::repeats::Refusals;

/// Number of shards; a small power of two is plenty for a 2–16 core machine.
const SHARDS: usize = 16;
/// A shard does not sweep before it holds this many buckets.
const MIN_SWEEP_AT: usize = 256;

/// POSTs each advertisement pays for: a clone makes one or two (protocol v2: `ls-refs`, then
/// `fetch`), a fetch's negotiation a few more.
pub const RPC_CREDITS: u32 = 16;
/// The most POST credits a principal can save up.
pub const MAX_RPC_CREDITS: u32 = 64;
/// How long after its principal's last advertisement a credit may be used: git sends its POSTs
/// right after the advertisement; credits saved up for later would be a second bucket.
pub const RPC_CREDIT_MS: i64 = 5 * 60 * 1000;

/// A bucket's size and refill rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// The burst: how many requests a principal can make at once after being idle.
    pub capacity: u32,
    /// Tokens added per second (may be fractional, e.g. 0.5).
    pub refill_per_second: f64,
}

/// The fastest refill a bucket may have: a principal allowed more than this many requests a
/// second is not limited at all, and `ratelimit exempt` (or `enabled = false`) says so plainly.
pub const MAX_REFILL_PER_SECOND: f64 = 1_000_000.0;

/// The slowest: one request a day. Below it a bucket is a ban in disguise (`1e-300` answered
/// "try again in 4294967295 s"), and its rate printed as 300 digits.
pub const MIN_REFILL_PER_SECOND: f64 = 1.0 / 86_400.0;

impl Limits {
    /// Whether `refill_per_second` can be a bucket's: from [`MIN_REFILL_PER_SECOND`] to
    /// [`MAX_REFILL_PER_SECOND`] (which also keeps it printable without an exponent).
    pub fn refill_in_range(refill_per_second: f64) -> bool {
        (MIN_REFILL_PER_SECOND..=MAX_REFILL_PER_SECOND).contains(&refill_per_second)
    }

    /// Milliseconds for an empty bucket to fill up again: after this long idle, a bucket can go.
    fn full_after_ms(&self) -> i64 {
        if self.refill_per_second <= 0.0 {
            return i64::MAX;
        }
        let ms = f64::from(self.capacity) * 1000.0 / self.refill_per_second;
        if ms >= i64::MAX as f64 {
            i64::MAX
        } else {
            ms.ceil() as i64
        }
    }
}

/// What the limiter says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; `remaining` whole tokens are left.
    Allow { remaining: u32 },
    /// Over the limit: try again in `retry_after_secs` seconds (at least 1). `log`: whether
    /// this refusal is the one to log (see [`Refusals`]), with how many of the principal's
    /// refusals since its last line went unlogged.
    Limited {
        retry_after_secs: u64,
        log: Option<u32>,
    },
}

/// One principal's bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    updated_ms: i64,
    /// POSTs already paid for by advertisements ...
    rpc_credits: u32,
    /// ... until then.
    credits_until_ms: i64,
    /// Its refusals, for the log.
    refusals: Refusals,
}

impl Bucket {
    /// A full bucket as of `now`.
    pub fn full(limits: &Limits, now: i64) -> Bucket {
        Bucket {
            tokens: f64::from(limits.capacity),
            updated_ms: now,
            rpc_credits: 0,
            credits_until_ms: 0,
            refusals: Refusals::default(),
        }
    }

    /// Charge a request of this cost: an advertisement takes a token and pays for the POSTs
    /// that follow it; such a POST uses up a credit, or takes a token when none is left.
    pub fn charge(&mut self, cost: Cost, limits: &Limits, now: i64) -> Decision {
        match cost {
            Cost::Token => self.take(limits, now),
            Cost::Advertisement => {
                let decision = self.take(limits, now);
                if matches!(decision, Decision::Allow { .. }) {
                    let saved = if self.has_credit(now) {
                        self.rpc_credits
                    } else {
                        0
                    };
                    self.rpc_credits = (saved + RPC_CREDITS).min(MAX_RPC_CREDITS);
                    self.credits_until_ms = now.saturating_add(RPC_CREDIT_MS);
                }
                decision
            }
            Cost::Rpc if self.has_credit(now) => {
                self.rpc_credits -= 1;
                self.refill(limits, now);
                Decision::Allow {
                    remaining: self.tokens.floor() as u32,
                }
            }
            Cost::Rpc => self.take(limits, now),
        }
    }

    /// Refill for the time since the last update, then take one token if there is one.
    ///
    /// A clock that goes backwards adds nothing (and does not move `updated_ms` back).
    pub fn take(&mut self, limits: &Limits, now: i64) -> Decision {
        self.refill(limits, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Decision::Allow {
                remaining: self.tokens.floor() as u32,
            };
        }
        let missing = 1.0 - self.tokens;
        let secs = if limits.refill_per_second > 0.0 {
            (missing / limits.refill_per_second).ceil()
        } else {
            f64::from(u32::MAX)
        };
        Decision::Limited {
            // At most what an empty refill gives: a rate so small that the wait overflows
            // (`1e-300` per second) is no reason to answer `Retry-After: 18446744073709551615`.
            retry_after_secs: (secs.min(f64::from(u32::MAX)) as u64).max(1),
            // Decided by the limiter, which keeps the bucket.
            log: None,
        }
    }

    fn refill(&mut self, limits: &Limits, now: i64) {
        let elapsed_ms = now.saturating_sub(self.updated_ms);
        if elapsed_ms <= 0 {
            return;
        }
        let added = elapsed_ms as f64 / 1000.0 * limits.refill_per_second;
        self.tokens = (self.tokens + added).min(f64::from(limits.capacity));
        self.updated_ms = now;
    }

    fn has_credit(&self, now: i64) -> bool {
        self.rpc_credits > 0 && now <= self.credits_until_ms
    }

    /// Whether the bucket would be full at `now` with no credit left (so forgetting it changes
    /// nothing).
    fn is_idle(&self, limits: &Limits, now: i64) -> bool {
        now.saturating_sub(self.updated_ms) >= limits.full_after_ms() && !self.has_credit(now)
    }
}

/// What a request costs its principal's bucket.
///
/// A smart-HTTP clone, fetch or push is `GET info/refs?service=...` followed by one or more
/// `POST git-upload-pack`/`git-receive-pack` on the same credentials; charging the
/// advertisement for them makes a clone cost one request however many round trips protocol v2
/// or a large negotiation takes. Dumb-HTTP reads have no such start, so each takes a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// A token.
    Token,
    /// A token, and credit for the POSTs that follow.
    Advertisement,
    /// A credit from an advertisement, or else a token.
    Rpc,
}

impl Cost {
    pub fn of(operation: Operation) -> Cost {
        match operation {
            Operation::Advertise(_) => Cost::Advertisement,
            Operation::Dumb => Cost::Token,
            Operation::Rpc(_) => Cost::Rpc,
        }
    }
}

struct Shard {
    buckets: HashMap<String, (Bucket, Limits)>,
    /// Sweep when the map reaches this size.
    sweep_at: usize,
}

/// The buckets of every principal, sharded.
pub struct RateLimiter {
    shards: Vec<Mutex<Shard>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new()
    }
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        sweep_at: MIN_SWEEP_AT,
                    })
                })
                .collect(),
        }
    }

    fn shard(&self, principal: &str) -> &Mutex<Shard> {
        let mut h = DefaultHasher::new();
        principal.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Take one token from `principal`'s bucket under `limits` (the default or its override).
    ///
    /// If the limits of a principal change (an override set or cleared), its bucket is kept but
    /// capped at the new capacity.
    pub fn check(&self, principal: &str, cost: Cost, limits: Limits, now: i64) -> Decision {
        // A poisoned lock only means another request panicked mid-update of plain numbers;
        // the data is still usable, and refusing every request of the shard would be worse.
        let mut shard = self
            .shard(principal)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The tails of the bursts of principals whose buckets are forgotten here, said once
        // the shard is let go: else those refusals are counted by no line.
        let mut forgotten = Vec::new();
        if shard.buckets.len() >= shard.sweep_at {
            shard.buckets.retain(|principal, (b, l)| {
                let idle = b.is_idle(l, now);
                if let Some(n) = idle.then(|| b.refusals.tail(now, true)).flatten() {
                    forgotten.push((principal.clone(), n));
                }
                !idle
            });
            shard.sweep_at = (shard.buckets.len() * 2).max(MIN_SWEEP_AT);
        }
        let decision = Self::charge_in(&mut shard, principal, cost, limits, now);
        drop(shard);
        for (principal, unlogged) in forgotten {
            crate::guard::rate_limit_tail_said(&principal, unlogged);
        }
        decision
    }

    /// [`RateLimiter::check`] in its shard.
    fn charge_in(
        shard: &mut Shard,
        principal: &str,
        cost: Cost,
        limits: Limits,
        now: i64,
    ) -> Decision {
        let entry = shard
            .buckets
            .entry(principal.to_string())
            .or_insert_with(|| (Bucket::full(&limits, now), limits));
        if entry.1 != limits {
            entry.1 = limits;
            entry.0.tokens = entry.0.tokens.min(f64::from(limits.capacity));
        }
        match entry.0.charge(cost, &limits, now) {
            Decision::Limited {
                retry_after_secs, ..
            } => Decision::Limited {
                retry_after_secs,
                log: entry.0.refusals.refused(now),
            },
            allowed => allowed,
        }
    }

    /// The tails of principals' bursts of refusals due at `now` (see
    /// [`Refusals::tail`]): each principal with refusals unlogged since its last line, and how
    /// many.
    pub fn refusal_tails(&self, now: i64, now_or_never: bool) -> Vec<(String, u32)> {
        let mut tails = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (principal, (bucket, _)) in shard.buckets.iter_mut() {
                if let Some(n) = bucket.refusals.tail(now, now_or_never) {
                    tails.push((principal.clone(), n));
                }
            }
        }
        tails
    }

    /// How many buckets are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.buckets.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::Service;
    use crate::repeats::REFUSALS_SAID_EVERY_MS;

    const L: Limits = Limits {
        capacity: 3,
        refill_per_second: 1.0,
    };

    #[test]
    fn burst_then_limited_then_refilled() {
        let mut b = Bucket::full(&L, 0);
        assert_eq!(b.take(&L, 0), Decision::Allow { remaining: 2 });
        assert_eq!(b.take(&L, 0), Decision::Allow { remaining: 1 });
        assert_eq!(b.take(&L, 0), Decision::Allow { remaining: 0 });
        assert_eq!(
            b.take(&L, 0),
            Decision::Limited {
                retry_after_secs: 1,
                log: None
            }
        );
        assert_eq!(
            b.take(&L, 500),
            Decision::Limited {
                retry_after_secs: 1,
                log: None
            }
        );
        assert_eq!(b.take(&L, 1000), Decision::Allow { remaining: 0 });
        // Ten idle seconds refill only up to capacity.
        assert_eq!(b.take(&L, 11_000), Decision::Allow { remaining: 2 });
    }

    #[test]
    fn retry_after_rounds_up_for_slow_refill() {
        let slow = Limits {
            capacity: 1,
            refill_per_second: 0.1,
        };
        let mut b = Bucket::full(&slow, 0);
        assert!(matches!(b.take(&slow, 0), Decision::Allow { .. }));
        assert_eq!(
            b.take(&slow, 0),
            Decision::Limited {
                retry_after_secs: 10,
                log: None
            }
        );
        assert_eq!(
            b.take(&slow, 2_500),
            Decision::Limited {
                retry_after_secs: 8,
                log: None
            }
        );
        // A rate so small the wait overflows waits as long as no refill at all.
        let tiny = Limits {
            capacity: 1,
            refill_per_second: 1e-300,
        };
        let mut b = Bucket::full(&tiny, 0);
        assert!(matches!(b.take(&tiny, 0), Decision::Allow { .. }));
        assert_eq!(
            b.take(&tiny, 5_000),
            Decision::Limited {
                retry_after_secs: u64::from(u32::MAX),
                log: None
            }
        );
    }

    /// A flood past the limit is logged once a minute per principal, each line with the
    /// refusals left out since the last; another principal's refusals are their own.
    #[test]
    fn a_principals_refusals_are_logged_once_a_minute_with_the_count_left_out() {
        let none = Limits {
            capacity: 1,
            refill_per_second: 0.0,
        };
        let rl = RateLimiter::new();
        let log_of = |d: Decision| match d {
            Decision::Limited { log, .. } => log,
            Decision::Allow { .. } => panic!("allowed"),
        };
        assert!(matches!(
            rl.check("alice", Cost::Token, none, 0),
            Decision::Allow { .. }
        ));
        assert_eq!(log_of(rl.check("alice", Cost::Token, none, 0)), Some(0));
        for at in [1, 30_000, REFUSALS_SAID_EVERY_MS - 1] {
            assert_eq!(
                log_of(rl.check("alice", Cost::Token, none, at)),
                None,
                "{at}"
            );
        }
        rl.check("bob", Cost::Token, none, 10);
        assert_eq!(log_of(rl.check("bob", Cost::Token, none, 10)), Some(0));
        // A POST without credit is refused and counted like any request.
        assert_eq!(log_of(rl.check("alice", Cost::Rpc, none, 59_000)), None);
        assert_eq!(
            log_of(rl.check("alice", Cost::Token, none, REFUSALS_SAID_EVERY_MS)),
            Some(4)
        );
        assert_eq!(
            log_of(rl.check("alice", Cost::Token, none, REFUSALS_SAID_EVERY_MS + 1)),
            None
        );
        assert_eq!(
            log_of(rl.check("alice", Cost::Token, none, 3 * REFUSALS_SAID_EVERY_MS)),
            Some(1)
        );
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let mut b = Bucket::full(&L, 10_000);
        for _ in 0..3 {
            b.take(&L, 10_000);
        }
        assert!(matches!(b.take(&L, 0), Decision::Limited { .. }));
        assert!(matches!(b.take(&L, 10_500), Decision::Limited { .. }));
        assert!(matches!(b.take(&L, 11_000), Decision::Allow { .. }));
    }

    #[test]
    fn principals_are_independent() {
        let rl = RateLimiter::new();
        for _ in 0..3 {
            assert!(matches!(
                rl.check("alice", Cost::Token, L, 0),
                Decision::Allow { .. }
            ));
        }
        assert!(matches!(
            rl.check("alice", Cost::Token, L, 0),
            Decision::Limited { .. }
        ));
        assert!(matches!(
            rl.check("bob", Cost::Token, L, 0),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn an_advertisement_pays_for_the_posts_that_follow_it_and_no_more() {
        let mut b = Bucket::full(&L, 0);
        assert_eq!(
            b.charge(Cost::Advertisement, &L, 0),
            Decision::Allow { remaining: 2 }
        );
        for _ in 0..RPC_CREDITS {
            assert_eq!(b.charge(Cost::Rpc, &L, 0), Decision::Allow { remaining: 2 });
        }
        // Beyond the credit, a POST costs a token like any request.
        assert_eq!(b.charge(Cost::Rpc, &L, 0), Decision::Allow { remaining: 1 });
        assert_eq!(b.charge(Cost::Rpc, &L, 0), Decision::Allow { remaining: 0 });
        assert!(matches!(
            b.charge(Cost::Rpc, &L, 0),
            Decision::Limited { .. }
        ));

        // POSTs with no advertisement at all: limited as soon as the bucket is empty.
        let mut b = Bucket::full(&L, 0);
        for _ in 0..3 {
            assert!(matches!(b.charge(Cost::Rpc, &L, 0), Decision::Allow { .. }));
        }
        assert!(matches!(
            b.charge(Cost::Rpc, &L, 0),
            Decision::Limited { .. }
        ));

        // Credits saved up are capped; a refused advertisement earns none.
        let big = Limits {
            capacity: 100,
            refill_per_second: 0.0,
        };
        let mut b = Bucket::full(&big, 0);
        for _ in 0..10 {
            b.charge(Cost::Advertisement, &big, 0);
        }
        assert_eq!(b.rpc_credits, MAX_RPC_CREDITS);
        let mut b = Bucket::full(&L, 0);
        for _ in 0..3 {
            b.charge(Cost::Token, &L, 0);
        }
        assert!(matches!(
            b.charge(Cost::Advertisement, &L, 0),
            Decision::Limited { .. }
        ));
        assert_eq!(b.rpc_credits, 0);

        // Credits are for the POSTs that follow, not saved for later.
        let mut b = Bucket::full(&L, 0);
        b.charge(Cost::Advertisement, &L, 0);
        // Still in time: a credit (the bucket has refilled meanwhile, and stays full).
        assert_eq!(
            b.charge(Cost::Rpc, &L, RPC_CREDIT_MS),
            Decision::Allow { remaining: 3 }
        );
        // Past it: tokens, although 15 credits are left.
        assert_eq!(
            b.charge(Cost::Rpc, &L, RPC_CREDIT_MS + 1),
            Decision::Allow { remaining: 2 }
        );
        assert_eq!(
            b.charge(Cost::Rpc, &L, RPC_CREDIT_MS + 1),
            Decision::Allow { remaining: 1 }
        );
    }

    #[test]
    fn a_bucket_with_credit_left_is_not_swept() {
        let fast = Limits {
            capacity: 1,
            refill_per_second: 1000.0,
        };
        let rl = RateLimiter::new();
        rl.check("cloner", Cost::Advertisement, fast, 0);
        // Enough other principals, a moment later (every bucket full again), to make the shard
        // sweep: the cloner's POSTs still have their credit.
        for i in 0..(MIN_SWEEP_AT * SHARDS * 2) {
            rl.check(&format!("u{i}"), Cost::Token, fast, 10);
        }
        rl.check("cloner", Cost::Token, fast, 10); // empties its one-token bucket
        assert_eq!(
            rl.check("cloner", Cost::Rpc, fast, 10),
            Decision::Allow { remaining: 0 }
        );
    }

    #[test]
    fn changed_limits_cap_the_bucket() {
        let rl = RateLimiter::new();
        let big = Limits {
            capacity: 100,
            refill_per_second: 1.0,
        };
        assert_eq!(
            rl.check("ci", Cost::Token, big, 0),
            Decision::Allow { remaining: 99 }
        );
        assert_eq!(
            rl.check("ci", Cost::Token, L, 0),
            Decision::Allow { remaining: 2 }
        );
    }

    #[test]
    fn idle_buckets_are_evicted() {
        let rl = RateLimiter::new();
        for i in 0..5_000 {
            rl.check(&format!("user{i}"), Cost::Token, L, 0);
        }
        assert_eq!(rl.len(), 5_000);
        // Long after every bucket refilled, new traffic sweeps the old entries away.
        for i in 0..5_000 {
            rl.check(&format!("other{i}"), Cost::Token, L, 1_000_000);
        }
        assert!(rl.len() < 7_000, "{} buckets kept", rl.len());
        // Buckets still refilling are not forgotten (that would reset their limit).
        let rl = RateLimiter::new();
        for _ in 0..3 {
            rl.check("busy", Cost::Token, L, 0);
        }
        for i in 0..5_000 {
            rl.check(&format!("u{i}"), Cost::Token, L, 100);
        }
        assert!(matches!(
            rl.check("busy", Cost::Token, L, 200),
            Decision::Limited { .. }
        ));
    }

    #[test]
    fn only_exchange_starts_count() {
        assert_eq!(
            Cost::of(Operation::Advertise(Service::UploadPack)),
            Cost::Advertisement
        );
        assert_eq!(
            Cost::of(Operation::Advertise(Service::ReceivePack)),
            Cost::Advertisement
        );
        assert_eq!(Cost::of(Operation::Dumb), Cost::Token);
        assert_eq!(Cost::of(Operation::Rpc(Service::UploadPack)), Cost::Rpc);
        assert_eq!(Cost::of(Operation::Rpc(Service::ReceivePack)), Cost::Rpc);
    }

    /// Credits that lapsed are gone: an advertisement after [`RPC_CREDIT_MS`] buys its own
    /// [`RPC_CREDITS`], not those plus what an old one left unused.
    #[test]
    fn an_advertisement_after_the_credits_lapsed_does_not_add_to_them() {
        let mut b = Bucket::full(&L, 0);
        b.charge(Cost::Advertisement, &L, 0);
        assert_eq!(b.rpc_credits, RPC_CREDITS);
        b.charge(Cost::Advertisement, &L, RPC_CREDIT_MS + 1);
        assert_eq!(b.rpc_credits, RPC_CREDITS);
        // While they last, they add up.
        b.charge(Cost::Advertisement, &L, RPC_CREDIT_MS + 2);
        assert_eq!(b.rpc_credits, 2 * RPC_CREDITS);
    }

    /// SECURITY.md gives the number (promise 7 and its known limits): an advertisement pays
    /// for the 16 POSTs of its principal that follow it, so one token of the bucket buys at
    /// most 17 requests that may each start a pack. Counted with the number written out, as
    /// the other tests count in `RPC_CREDITS` and would follow it wherever it went.
    #[test]
    fn an_advertisement_pays_for_the_sixteen_posts_the_documentation_says() {
        let one = Limits {
            capacity: 1,
            refill_per_second: 0.0,
        };
        let mut b = Bucket::full(&one, 0);
        assert_eq!(
            b.charge(Cost::Advertisement, &one, 0),
            Decision::Allow { remaining: 0 }
        );
        for n in 1..=16 {
            assert!(
                matches!(b.charge(Cost::Rpc, &one, 0), Decision::Allow { .. }),
                "POST {n}"
            );
        }
        assert!(
            matches!(b.charge(Cost::Rpc, &one, 0), Decision::Limited { .. }),
            "the 17th POST"
        );
    }
}
