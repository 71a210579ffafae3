//! Failed-authentication throttling per source address.
//!
//! After `max` failed authentications from one address within `window` (a wrong token, a
//! malformed `Authorization`, a wrong user name), the address is blocked: every request from it
//! gets `429` with `Retry-After` for the back-off, without the store being read. Each block that
//! follows another doubles the back-off (window, 2×, 4×, ... capped at [`MAX_BACKOFF_MS`]); an
//! address that stays quiet — no block, no failure — for a full back-off is forgotten.
//!
//! The window slides: failures are counted in [`STEPS`] steps of a window each, over the last
//! `STEPS + 1` steps, so `max` failures within any one window block, wherever its edges fall (a
//! fixed window let `2 × (max − 1)` through around its edge). A failure counts for at least a
//! window and at most `1 + 1/STEPS` of one; the memory per address stays fixed.
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
//! shard grows. Unlike the rate limiter's principals, addresses are the client's to choose, so a
//! flood from many of them grows the table with no login at all; once it stops, no new failure
//! comes to sweep it, so `serve` also calls [`Throttle::sweep`] on a timer, and a sweep that
//! leaves a map mostly empty gives its memory back (a `HashMap` keeps its peak capacity).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{PoisonError, RwLock};

const SHARDS: usize = 16;
const MIN_SWEEP_AT: usize = 256;
/// The longest back-off: one hour.
pub const MAX_BACKOFF_MS: i64 = 3_600_000;
/// Steps per window of the failure count.
pub const STEPS: i64 = 32;
/// Steps counted: the current one and a whole window before it.
const COUNTED: usize = STEPS as usize + 1;

/// When to block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Failures within `window_ms` that start a block.
    pub max: u32,
    /// The counting window, and the first back-off.
    pub window_ms: i64,
}

impl Policy {
    /// The step (of a window's [`STEPS`]) that `now` falls in.
    fn step(&self, now: i64) -> i64 {
        now.div_euclid((self.window_ms / STEPS).max(1))
    }

    /// The back-off for the `strike`-th block in a row (1-based): window × 2^(strike-1), capped.
    pub fn backoff_ms(&self, strike: u32) -> i64 {
        let shift = strike.saturating_sub(1).min(30);
        self.window_ms
            .saturating_mul(1i64 << shift)
            .min(MAX_BACKOFF_MS.max(self.window_ms))
    }
}

/// The state of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Failures per step, a ring indexed by step number modulo its length.
    failures: [u16; COUNTED],
    /// The step of the newest failure in `failures`.
    newest_step: i64,
    last_failure: i64,
    /// Blocks so far in this run of misbehaviour.
    strikes: u32,
    blocked_until: i64,
    /// The credentials of the last failures counted ([`crate::credentials::fingerprint`]) and
    /// when each was: the same ones failing again within a window are not counted again.
    recent: [(u64, i64); RECENT],
}

/// Credentials remembered per address: a client cycling through more than this many bad ones
/// has each counted as new, as it should.
const RECENT: usize = 4;

impl Default for Entry {
    fn default() -> Entry {
        Entry {
            failures: [0; COUNTED],
            newest_step: 0,
            last_failure: 0,
            strikes: 0,
            blocked_until: 0,
            recent: [(0, i64::MIN); RECENT],
        }
    }
}

impl Entry {
    /// Forgettable once a whole back-off has passed with neither a block nor a failure, and no
    /// failure still counts.
    fn is_forgettable(&self, policy: &Policy, now: i64) -> bool {
        let quiet_since = self.blocked_until.max(self.last_failure);
        now >= quiet_since.saturating_add(policy.backoff_ms(self.strikes.max(1)))
            && policy.step(now) - self.newest_step >= COUNTED as i64
    }

    /// Count one failure at `step`; the failures counted within the last window, this one
    /// included.
    fn count(&mut self, step: i64) -> u32 {
        // Steps since the newest failure are empty; a step before it (cannot happen on the
        // monotonic clock) counts as the newest.
        let step = step.max(self.newest_step);
        let gap = step - self.newest_step;
        if gap >= COUNTED as i64 {
            self.failures = [0; COUNTED];
        } else {
            for s in self.newest_step + 1..=step {
                self.failures[s.rem_euclid(COUNTED as i64) as usize] = 0;
            }
        }
        self.newest_step = step;
        let slot = &mut self.failures[step.rem_euclid(COUNTED as i64) as usize];
        *slot = slot.saturating_add(1);
        self.failures.iter().map(|&n| u32::from(n)).sum()
    }

    /// Whether `tried` failed within the last window already; else it is remembered (in place
    /// of the oldest) and `false`.
    fn tried_again(&mut self, tried: u64, window_ms: i64, now: i64) -> bool {
        let within = |at: i64| now.saturating_sub(at) < window_ms;
        if let Some(seen) = self
            .recent
            .iter_mut()
            .find(|(f, at)| *f == tried && within(*at))
        {
            // Still the same client repeating itself: it stays one failure until it has been
            // quiet for a window.
            seen.1 = now;
            return true;
        }
        let oldest = self
            .recent
            .iter_mut()
            .min_by_key(|(_, at)| *at)
            .expect("RECENT > 0");
        *oldest = (tried, now);
        false
    }
}

/// What a [`Throttle::sweep`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Addresses forgotten.
    pub forgotten: usize,
    /// Some shard's table shrank: memory went back to the allocator.
    pub shrunk: bool,
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

impl Shard {
    /// Drop the forgettable entries; if the map is left with room for over four times what it
    /// holds (and for more than [`MIN_SWEEP_AT`]), shrink it to twice that. Returns how many
    /// entries went.
    fn sweep(&mut self, policy: &Policy, now: i64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| !e.is_forgettable(policy, now));
        let kept = self.entries.len().max(MIN_SWEEP_AT);
        if self.entries.capacity() > kept * 4 {
            self.entries.shrink_to(kept * 2);
        }
        self.sweep_at = (self.entries.len() * 2).max(MIN_SWEEP_AT);
        before - self.entries.len()
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.entries.capacity()
    }
}

/// Failure counts and blocks of every address.
pub struct Throttle {
    policy: Policy,
    /// A request reads its shard ([`Throttle::check`]) only while some address is blocked
    /// (see `blocks_end`); only failures write.
    shards: Vec<RwLock<Shard>>,
    /// When the block that ends last ends (monotonic ms; 0 before the first block): until a
    /// block starts, and once every block is over, a check is one atomic read — no lock, no
    /// hash — on every request.
    blocks_end: AtomicI64,
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
            blocks_end: AtomicI64::new(0),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The address an entry is kept under (see [`crate::network::client_key`]).
    fn key(addr: IpAddr) -> IpAddr {
        crate::network::client_key(addr)
    }

    fn shard(&self, addr: &IpAddr) -> &RwLock<Shard> {
        let mut h = DefaultHasher::new();
        addr.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// `Err(retry_after_secs)` while `addr` is blocked.
    pub fn check(&self, addr: IpAddr, now: i64) -> Result<(), u64> {
        if now >= self.blocks_end.load(Ordering::Acquire) {
            // No address is blocked now. A block that starts while this runs is one this
            // request passed just before (as with a read of the shard just before its write).
            return Ok(());
        }
        let addr = Throttle::key(addr);
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

    /// Count one failed authentication with the credentials `tried` (see
    /// [`crate::credentials::fingerprint`]); `Some` if this failure starts a block. The same
    /// credentials failing again within a window count once.
    pub fn record_failure(&self, addr: IpAddr, tried: u64, now: i64) -> Option<Block> {
        let addr = Throttle::key(addr);
        let policy = self.policy;
        let mut shard = self
            .shard(&addr)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.entries.len() >= shard.sweep_at {
            shard.sweep(&policy, now);
        }
        let entry = shard.entries.entry(addr).or_default();
        if entry.is_forgettable(&policy, now) && entry.strikes > 0 {
            // Quiet for a whole back-off: start over.
            *entry = Entry::default();
        }
        if entry.blocked_until > now {
            // Already blocked (a request that passed the check just before the block began).
            return None;
        }
        entry.last_failure = now;
        if entry.tried_again(tried, policy.window_ms, now) {
            return None;
        }
        if entry.count(policy.step(now)) < policy.max {
            return None;
        }
        entry.strikes = entry.strikes.saturating_add(1);
        let backoff = policy.backoff_ms(entry.strikes);
        entry.blocked_until = now.saturating_add(backoff);
        self.blocks_end
            .fetch_max(entry.blocked_until, Ordering::Release);
        // The failures that made this block are spent.
        entry.failures = [0; COUNTED];
        Some(Block {
            strike: entry.strikes,
            retry_after_secs: secs_until(entry.blocked_until, now),
        })
    }

    /// Forget every address that has been quiet for its back-off, in every shard, and give the
    /// memory of a mostly emptied shard back. For a timer: after a flood from many addresses
    /// ends, nothing else would.
    pub fn sweep(&self, now: i64) -> Swept {
        let mut swept = Swept::default();
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            let room = shard.entries.capacity();
            swept.forgotten += shard.sweep(&self.policy, now);
            swept.shrunk |= shard.entries.capacity() < room;
        }
        swept
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

    /// A failure with credentials not tried before.
    fn fail(t: &Throttle, addr: IpAddr, now: i64) -> Option<Block> {
        static TRIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        t.record_failure(addr, TRIED.fetch_add(1, Ordering::Relaxed), now)
    }

    #[test]
    fn the_same_credentials_failing_again_count_once_while_they_repeat() {
        let t = Throttle::new(P);
        // libgit2 sends the same bad token again after each 401: ten times, one failure.
        for i in 0..10 {
            assert_eq!(t.record_failure(ip(1), 7, i), None, "repeat {i}");
        }
        assert_eq!(t.check(ip(1), 10), Ok(()));
        // Still repeating a window later, with no pause of a window: still one.
        for at in (1_000..120_000).step_by(1_000) {
            assert_eq!(t.record_failure(ip(1), 7, at), None, "at {at}");
        }
        // New credentials are new guesses (the first, counted at 0, is out of the window now).
        assert_eq!(t.record_failure(ip(1), 8, 120_001), None);
        assert_eq!(t.record_failure(ip(1), 9, 120_002), None);
        assert!(t.record_failure(ip(1), 10, 120_003).is_some());
        // More distinct ones than are remembered each count as new.
        let t = Throttle::new(Policy {
            max: 10,
            window_ms: 60_000,
        });
        let blocked = (0..10u64)
            .flat_map(|round| (100..100 + RECENT as u64 + 1).map(move |f| (round, f)))
            .enumerate()
            .any(|(i, (_, f))| t.record_failure(ip(2), f, i as i64).is_some());
        assert!(blocked);
    }

    #[test]
    fn blocks_after_max_failures_in_the_window() {
        let t = Throttle::new(P);
        assert_eq!(fail(&t, ip(1), 0), None);
        assert_eq!(fail(&t, ip(1), 1_000), None);
        assert_eq!(t.check(ip(1), 1_000), Ok(()));
        let block = fail(&t, ip(1), 2_000).unwrap();
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

    /// The check's shortcut (no block running) must never hide one: a shorter block that ends
    /// before another still holds is seen ending, the longer one still seen.
    #[test]
    fn blocks_of_different_lengths_each_hold_to_their_own_end() {
        let t = Throttle::new(P);
        // ip(1): a first block at 0..60 s, then a second (120 s) from 60 s: until 180 s.
        let first = loop_until_block(&t, ip(1), 0);
        assert_eq!(first.strike, 1);
        assert_eq!(t.check(ip(1), 60_100), Ok(()));
        assert_eq!(loop_until_block(&t, ip(1), 60_100).strike, 2);
        // ip(2): one block of 60 s, from 100 s.
        assert_eq!(loop_until_block(&t, ip(2), 100_000).strike, 1);
        assert!(t.check(ip(2), 150_000).is_err());
        assert!(t.check(ip(1), 150_000).is_err());
        // ip(2)'s ended, ip(1)'s holds; nobody else is blocked meanwhile.
        assert_eq!(t.check(ip(2), 170_000), Ok(()));
        assert!(t.check(ip(1), 170_000).is_err());
        assert_eq!(t.check(ip(3), 170_000), Ok(()));
        // All over.
        assert_eq!(t.check(ip(1), 190_000), Ok(()));
    }

    #[test]
    fn failures_spread_over_windows_do_not_block() {
        let t = Throttle::new(P);
        // Two failures per window, never three inside one (nor within the 1/32 of a window
        // more that a failure may count for).
        for i in 0..10 {
            assert_eq!(fail(&t, ip(1), i * 62_000), None);
            assert_eq!(fail(&t, ip(1), i * 62_000 + 1), None);
        }
        assert_eq!(t.check(ip(1), 620_000), Ok(()));
    }

    #[test]
    fn the_window_slides_so_a_burst_around_its_edge_is_caught() {
        let t = Throttle::new(Policy {
            max: 3,
            window_ms: 20_000,
        });
        // One at 0 and one at 19.9 s; then two just after 20 s, where a fixed window started at
        // the first failure would begin counting again: three within 0.3 s must block.
        assert_eq!(fail(&t, ip(1), 0), None);
        assert_eq!(fail(&t, ip(1), 19_900), None);
        let blocked = [20_100, 20_200]
            .iter()
            .any(|&at| fail(&t, ip(1), at).is_some());
        assert!(blocked, "three failures within 0.3 s were let through");
        // Failures a whole window apart still do not add up.
        let t = Throttle::new(P);
        assert_eq!(fail(&t, ip(2), 0), None);
        assert_eq!(fail(&t, ip(2), 1), None);
        assert_eq!(fail(&t, ip(2), 62_000), None);
    }

    #[test]
    fn guessing_on_below_the_limit_after_a_block_keeps_the_back_off_growing() {
        let t = Throttle::new(P);
        for i in 0..3 {
            fail(&t, ip(1), i);
        }
        // Blocked until 60_002. Then two failures a window apart, never enough for a block, and
        // never a whole back-off of quiet: the next block doubles.
        assert_eq!(fail(&t, ip(1), 70_000), None);
        assert_eq!(fail(&t, ip(1), 125_000), None);
        let block = loop_until_block(&t, ip(1), 150_000);
        assert_eq!(block.strike, 2);
        assert_eq!(block.retry_after_secs, 120);
    }

    fn loop_until_block(t: &Throttle, addr: IpAddr, mut now: i64) -> Block {
        loop {
            if let Some(b) = fail(t, addr, now) {
                return b;
            }
            now += 1;
        }
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
                if let Some(b) = fail(&t, ip(9), now) {
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
            fail(&t, ip(1), i);
        }
        assert!(t.check(ip(1), 10).is_err());
        // Block ends at 60_002; a whole back-off of quiet later it is forgotten.
        let later = 60_002 + 60_000 + 1;
        for i in 0..2 {
            assert_eq!(fail(&t, ip(1), later + i), None);
        }
        assert_eq!(fail(&t, ip(1), later + 2).map(|b| b.strike), Some(1));
    }

    #[test]
    fn one_ipv6_64_and_both_forms_of_an_ipv4_address_count_as_one() {
        let t = Throttle::new(P);
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        fail(&t, v6("2001:db8:1:2::1"), 0);
        fail(&t, v6("2001:db8:1:2:ffff::9"), 1);
        assert!(fail(&t, v6("2001:db8:1:2:abcd::7"), 2).is_some());
        assert!(t.check(v6("2001:db8:1:2::1234"), 3).is_err());
        assert_eq!(t.check(v6("2001:db8:1:3::1"), 3), Ok(()), "another /64");
        fail(&t, ip(5), 0);
        fail(&t, v6("::ffff:192.0.2.5"), 1);
        assert!(fail(&t, ip(5), 2).is_some());
        assert!(t.check(v6("::ffff:192.0.2.5"), 3).is_err());
    }

    #[test]
    fn memory_is_bounded_by_sweeps() {
        let t = Throttle::new(P);
        for n in 0..20_000u32 {
            fail(&t, IpAddr::from(n.to_be_bytes()), 0);
        }
        let before = t.len();
        for n in 0..20_000u32 {
            fail(
                &t,
                IpAddr::from((n | 0x8000_0000).to_be_bytes()),
                10_000_000,
            );
        }
        assert!(t.len() < before + 20_000 / 2, "{} entries", t.len());
    }

    fn capacity(t: &Throttle) -> usize {
        t.shards.iter().map(|s| s.read().unwrap().capacity()).sum()
    }

    #[test]
    fn a_timed_sweep_after_a_flood_forgets_the_addresses_and_gives_the_memory_back() {
        let t = Throttle::new(P);
        // One failure each from 100,000 addresses, then silence.
        for n in 0..100_000u32 {
            fail(&t, IpAddr::from((0x0a00_0000 | n).to_be_bytes()), 0);
        }
        let peak = capacity(&t);
        assert!(peak >= 100_000, "capacity {peak}");
        // Before their failures have stopped counting nothing is forgotten.
        assert_eq!(t.sweep(P.window_ms / 2), Swept::default());
        assert_eq!(t.len(), 100_000);
        // One address still misbehaving, blocked, is kept through the sweep.
        let late = P.window_ms * 3;
        for i in 0..3 {
            fail(&t, ip(1), late + i);
        }
        let swept = t.sweep(late + 10);
        assert_eq!(swept.forgotten, 100_000);
        assert!(swept.shrunk);
        assert_eq!(t.len(), 1, "only the blocked address is left");
        assert!(t.check(ip(1), late + 10).is_err(), "its block holds");
        let after = capacity(&t);
        assert!(
            after <= SHARDS * MIN_SWEEP_AT * 4,
            "capacity {after} after the sweep, {peak} at the peak"
        );
        // And the shards take new addresses as before.
        for n in 0..1000u32 {
            fail(&t, IpAddr::from((0x0b00_0000 | n).to_be_bytes()), late + 20);
        }
        assert_eq!(t.len(), 1001);
    }

    #[test]
    fn the_failures_that_made_a_block_do_not_count_once_it_ends() {
        let t = Throttle::new(P);
        for i in 0..3 {
            fail(&t, ip(1), i);
        }
        // Blocked until 60_002; one mistake right as it ends is one failure, not a new block.
        assert_eq!(fail(&t, ip(1), 60_002), None);
        assert_eq!(t.check(ip(1), 60_003), Ok(()));
    }

    #[test]
    fn the_same_credentials_after_a_quiet_window_count_again() {
        let t = Throttle::new(P);
        assert_eq!(t.record_failure(ip(1), 7, 0), None);
        assert_eq!(t.record_failure(ip(1), 7, 70_000), None);
        assert_eq!(t.record_failure(ip(1), 8, 70_001), None);
        assert!(t.record_failure(ip(1), 9, 70_002).is_some());
    }

    /// A window longer than the hour cap is still the first back-off, and no later one is
    /// shorter: the cap never cuts a block below the window.
    #[test]
    fn a_window_longer_than_the_cap_is_the_back_off() {
        let long = Policy {
            max: 3,
            window_ms: 2 * MAX_BACKOFF_MS,
        };
        for strike in [1, 2, 5] {
            assert_eq!(
                long.backoff_ms(strike),
                2 * MAX_BACKOFF_MS,
                "strike {strike}"
            );
        }
    }

    /// However many blocks an address has run into, the back-off is the cap: never an
    /// overflow, never a back-off that is negative or shorter.
    #[test]
    fn the_back_off_stays_at_the_cap_for_any_strike() {
        for strike in [31, 32, 63, 64, 65, 1000, u32::MAX] {
            assert_eq!(P.backoff_ms(strike), MAX_BACKOFF_MS, "strike {strike}");
        }
    }

    /// An address is forgotten once it has been quiet for exactly its back-off, not a
    /// millisecond later: its next block is a first one again.
    #[test]
    fn quiet_for_exactly_the_back_off_starts_over() {
        let t = Throttle::new(P);
        for i in 0..3 {
            fail(&t, ip(1), i);
        }
        // Blocked until 60_002; quiet from then for one back-off of 60 s.
        let later = 60_002 + 60_000;
        for i in 0..2 {
            assert_eq!(fail(&t, ip(1), later + i), None);
        }
        assert_eq!(fail(&t, ip(1), later + 2).map(|b| b.strike), Some(1));
    }

    /// A sweep does not forget an address whose failures still count: with or without one in
    /// between, the same failures block.
    #[test]
    fn a_sweep_keeps_an_address_whose_failures_still_count() {
        for sweep in [false, true] {
            let t = Throttle::new(P);
            assert_eq!(fail(&t, ip(1), 30_000), None);
            assert_eq!(fail(&t, ip(1), 30_001), None);
            // A whole back-off after the last failure, but the first still counts (steps 16
            // and 48: 32 steps apart, fewer than the 33 counted).
            if sweep {
                assert_eq!(t.sweep(90_002).forgotten, 0);
            }
            assert!(fail(&t, ip(1), 90_002).is_some(), "sweep: {sweep}");
        }
    }

    /// A failure from more than the counted steps ago does not count, also when newer failures
    /// came in between (its slot in the ring is reused, and must be emptied first).
    #[test]
    fn a_failure_older_than_the_counted_steps_does_not_count() {
        let t = Throttle::new(P);
        // Steps 0, 16 and 33 (of 1,875 ms): the first is out of the 33 steps counted.
        assert_eq!(fail(&t, ip(1), 0), None);
        assert_eq!(fail(&t, ip(1), 30_000), None);
        assert_eq!(fail(&t, ip(1), 62_000), None);
        assert_eq!(t.check(ip(1), 62_000), Ok(()));
    }

    /// A failure recorded while the address is blocked (its request passed the check just
    /// before the block began) neither counts nor lengthens the block.
    #[test]
    fn failures_while_blocked_do_not_count() {
        let t = Throttle::new(P);
        for i in 0..3 {
            fail(&t, ip(1), i);
        }
        // Blocked until 60_002.
        for i in 0..6 {
            assert_eq!(fail(&t, ip(1), 10 + i), None);
        }
        assert_eq!(t.check(ip(1), 60_001), Err(1));
        assert_eq!(t.check(ip(1), 60_002), Ok(()));
        // And the failures made during the block are not waiting to block again.
        assert_eq!(fail(&t, ip(1), 60_002), None);
        assert_eq!(t.check(ip(1), 60_003), Ok(()));
    }

    /// A block ends at its millisecond, also while another address's block, running longer,
    /// keeps the check from taking its shortcut.
    #[test]
    fn a_block_ends_at_its_end_while_a_longer_one_holds() {
        let t = Throttle::new(P);
        for i in 0..3 {
            fail(&t, ip(1), i);
        }
        for i in 0..3 {
            fail(&t, ip(2), 1_000 + i);
        }
        // ip(1) until 60_002, ip(2) until 61_002.
        assert_eq!(t.check(ip(1), 60_001), Err(1));
        assert_eq!(t.check(ip(1), 60_002), Ok(()));
        assert!(t.check(ip(2), 60_002).is_err());
    }

    /// `Retry-After` is rounded up: a client that waits what it is told finds its block over,
    /// never one that asks again too early and is refused again.
    #[test]
    fn retry_after_never_ends_before_the_block() {
        let t = Throttle::new(P);
        for i in 0..3 {
            fail(&t, ip(1), i);
        }
        // Blocked until 60_002.
        for now in [2, 1_000, 1_500, 30_001, 59_003, 60_001] {
            let Err(secs) = t.check(ip(1), now) else {
                panic!("not blocked at {now}");
            };
            let back = now + secs as i64 * 1000;
            assert!(back >= 60_002, "at {now}: told {secs} s");
            assert_eq!(t.check(ip(1), back), Ok(()), "at {now}");
        }
    }

    /// The same credentials a whole window after they were last tried are a new guess: the
    /// window is half-open.
    #[test]
    fn the_same_credentials_exactly_a_window_later_count_again() {
        let t = Throttle::new(P);
        assert_eq!(t.record_failure(ip(1), 7, 0), None);
        assert_eq!(t.record_failure(ip(1), 7, 60_000), None);
        assert!(t.record_failure(ip(1), 8, 60_001).is_some());
    }
}
