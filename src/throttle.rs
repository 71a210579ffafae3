//! Failed-authentication throttling per source address.
//!
//! After `max` failed authentications from one address within `window` (a wrong token, a
//! malformed `Authorization`, a wrong user name), the address is blocked: every request from it
//! gets `429` with `Retry-After` for the back-off, without the store being read. Each block that
//! follows another doubles the back-off (window, 2×, 4×, ... capped at [`MAX_BACKOFF_MS`]); an
//! address that stays quiet for a full back-off after its block ends is forgotten.
//!
//! Why:
//! - Guessing a 256-bit token is hopeless, but a flood of bad credentials still costs a hash, a
//!   store read and an audit write each; the block is checked before all three.
//! - Requests *without* credentials are not failures: git sends one before asking its credential
//!   helper, and that must never count against a user.
//! - A valid token does not clear the count: an attacker holding one cheap token must not be
//!   able to reset their own back-off between guesses.
//! - The price: clients behind one NAT share an address, so one misconfigured CI job can block
//!   its neighbours for the back-off. The default (10 per minute) is far above what a person
//!   mistyping produces.
//!
//! Pure: every method takes `now` (milliseconds, on [`crate::clock::monotonic_ms`] in the gate).
//! Memory is bounded the same way as the rate limiter's: forgotten entries are swept when a
//! shard grows.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{PoisonError, RwLock};

const SHARDS: usize = 16;
const MIN_SWEEP_AT: usize = 256;
/// The longest back-off: one hour.
pub const MAX_BACKOFF_MS: i64 = 3_600_000;

/// When to block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Failures within `window_ms` that start a block.
    pub max: u32,
    /// The counting window, and the first back-off.
    pub window_ms: i64,
}

impl Policy {
    /// The back-off for the `strike`-th block in a row (1-based): window × 2^(strike-1), capped.
    pub fn backoff_ms(&self, strike: u32) -> i64 {
        let shift = strike.saturating_sub(1).min(30);
        self.window_ms
            .saturating_mul(1i64 << shift)
            .min(MAX_BACKOFF_MS.max(self.window_ms))
    }
}

/// The state of one address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    window_start: i64,
    failures: u32,
    /// Blocks so far in this run of misbehaviour.
    strikes: u32,
    blocked_until: i64,
}

impl Entry {
    /// Forgettable once a whole back-off has passed after the block ended, with no failures
    /// counting in the current window.
    fn is_forgettable(&self, policy: &Policy, now: i64) -> bool {
        let quiet_until = self
            .blocked_until
            .saturating_add(policy.backoff_ms(self.strikes.max(1)));
        now >= quiet_until && now.saturating_sub(self.window_start) >= policy.window_ms
    }
}

/// A new block, to be logged and audited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// 1 for the first block, 2 for the next, ...
    pub strike: u32,
    pub retry_after_secs: u64,
}

struct Shard {
    entries: HashMap<IpAddr, Entry>,
    sweep_at: usize,
}

/// Failure counts and blocks of every address.
pub struct Throttle {
    policy: Policy,
    /// Every request reads its shard ([`Throttle::check`]); only failures write.
    shards: Vec<RwLock<Shard>>,
}

fn secs_until(until: i64, now: i64) -> u64 {
    let ms = until.saturating_sub(now).max(0) as u64;
    ms.div_ceil(1000).max(1)
}

impl Throttle {
    pub fn new(policy: Policy) -> Throttle {
        Throttle {
            policy,
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        entries: HashMap::new(),
                        sweep_at: MIN_SWEEP_AT,
                    })
                })
                .collect(),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    fn shard(&self, addr: &IpAddr) -> &RwLock<Shard> {
        let mut h = DefaultHasher::new();
        addr.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// `Err(retry_after_secs)` while `addr` is blocked.
    pub fn check(&self, addr: IpAddr, now: i64) -> Result<(), u64> {
        // Poison only means a panic elsewhere mid-update of plain numbers: keep going.
        let shard = self
            .shard(&addr)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.entries.get(&addr) {
            Some(e) if e.blocked_until > now => Err(secs_until(e.blocked_until, now)),
            _ => Ok(()),
        }
    }

    /// Count one failed authentication; `Some` if this failure starts a block.
    pub fn record_failure(&self, addr: IpAddr, now: i64) -> Option<Block> {
        let policy = self.policy;
        let mut shard = self
            .shard(&addr)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.entries.len() >= shard.sweep_at {
            shard.entries.retain(|_, e| !e.is_forgettable(&policy, now));
            shard.sweep_at = (shard.entries.len() * 2).max(MIN_SWEEP_AT);
        }
        let entry = shard.entries.entry(addr).or_insert(Entry {
            window_start: now,
            ..Entry::default()
        });
        if entry.is_forgettable(&policy, now) && entry.strikes > 0 {
            // Quiet for a whole back-off after the last block: start over.
            *entry = Entry {
                window_start: now,
                ..Entry::default()
            };
        }
        if entry.blocked_until > now {
            // Already blocked (a request that passed the check just before the block began).
            return None;
        }
        if now.saturating_sub(entry.window_start) >= policy.window_ms || now < entry.window_start {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures < policy.max {
            return None;
        }
        entry.strikes = entry.strikes.saturating_add(1);
        let backoff = policy.backoff_ms(entry.strikes);
        entry.blocked_until = now.saturating_add(backoff);
        entry.failures = 0;
        entry.window_start = entry.blocked_until;
        Some(Block {
            strike: entry.strikes,
            retry_after_secs: secs_until(entry.blocked_until, now),
        })
    }

    /// Addresses currently tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|s| s.entries.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        max: 3,
        window_ms: 60_000,
    };

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn blocks_after_max_failures_in_the_window() {
        let t = Throttle::new(P);
        assert_eq!(t.record_failure(ip(1), 0), None);
        assert_eq!(t.record_failure(ip(1), 1_000), None);
        assert_eq!(t.check(ip(1), 1_000), Ok(()));
        let block = t.record_failure(ip(1), 2_000).unwrap();
        assert_eq!(
            block,
            Block {
                strike: 1,
                retry_after_secs: 60
            }
        );
        assert_eq!(t.check(ip(1), 2_000), Err(60));
        assert_eq!(t.check(ip(1), 61_500), Err(1));
        assert_eq!(t.check(ip(1), 62_000), Ok(()));
        // Another address is not affected.
        assert_eq!(t.check(ip(2), 2_000), Ok(()));
    }

    #[test]
    fn failures_spread_over_windows_do_not_block() {
        let t = Throttle::new(P);
        // Two failures per window, never three inside one.
        for i in 0..10 {
            assert_eq!(t.record_failure(ip(1), i * 61_000), None);
            assert_eq!(t.record_failure(ip(1), i * 61_000 + 1), None);
        }
        assert_eq!(t.check(ip(1), 610_000), Ok(()));
    }

    #[test]
    fn back_off_grows_and_is_capped() {
        assert_eq!(P.backoff_ms(1), 60_000);
        assert_eq!(P.backoff_ms(2), 120_000);
        assert_eq!(P.backoff_ms(3), 240_000);
        assert_eq!(P.backoff_ms(40), MAX_BACKOFF_MS);
        let t = Throttle::new(P);
        let mut now = 0;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let block = loop {
                if let Some(b) = t.record_failure(ip(9), now) {
                    break b;
                }
                now += 1;
            };
            seen.push(block.retry_after_secs);
            assert!(t.check(ip(9), now).is_err());
            now += block.retry_after_secs as i64 * 1000;
            assert_eq!(t.check(ip(9), now), Ok(()));
        }
        assert_eq!(seen, vec![60, 120, 240]);
    }

    #[test]
    fn quiet_address_starts_over() {
        let t = Throttle::new(P);
        for i in 0..3 {
            t.record_failure(ip(1), i);
        }
        assert!(t.check(ip(1), 10).is_err());
        // Block ends at 60_002; a whole back-off of quiet later it is forgotten.
        let later = 60_002 + 60_000 + 1;
        for i in 0..2 {
            assert_eq!(t.record_failure(ip(1), later + i), None);
        }
        assert_eq!(
            t.record_failure(ip(1), later + 2).map(|b| b.strike),
            Some(1)
        );
    }

    #[test]
    fn memory_is_bounded_by_sweeps() {
        let t = Throttle::new(P);
        for n in 0..20_000u32 {
            t.record_failure(IpAddr::from(n.to_be_bytes()), 0);
        }
        let before = t.len();
        for n in 0..20_000u32 {
            t.record_failure(IpAddr::from((n | 0x8000_0000).to_be_bytes()), 10_000_000);
        }
        assert!(t.len() < before + 20_000 / 2, "{} entries", t.len());
    }
}
