//! A cap on the requests one principal has in flight to the backend at once.
//!
//! The token bucket ([`crate::ratelimit`]) limits how *often* a principal starts an exchange; this
//! limits how *many* run at the same time, which is what protects the backend from one CI job
//! that starts fifty clones at once (each of which may stream for minutes and hold a
//! `git upload-pack` process). A [`Slot`] is held for the whole request, until the response body
//! has been sent or dropped, and gives its place back when dropped.
//!
//! The cap is checked where an exchange starts (the advertisement, a dumb-HTTP GET): refused
//! there, git prints the reason. A clone admitted that way sends its `git-upload-pack` POST
//! next, and a POST refused for the cap is a clone cut off half-way with nothing said (git does
//! not print a failed POST's answer: "RPC failed; HTTP 429", "expected flush after ref
//! listing"). So a POST may take places up to twice the cap ([`InFlight::try_continue`]): the
//! exchanges admitted can finish, new ones are refused while their POSTs hold the places, and
//! POSTs sent without advertisements are still bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::repeats::Refusals;

/// Counts of requests in flight per principal, shared by every connection.
pub struct InFlight {
    max: u32,
    counts: Mutex<HashMap<Arc<str>, Place>>,
}

/// One principal's requests in flight, and its refusals for the log. Forgotten when its last
/// request ends, or, if a refusal of its was logged within the last minute, once that minute
/// has passed ([`InFlight::refusal_tails`]): a client whose requests keep ending and starting
/// would otherwise be told anew after each end, not once a minute.
#[derive(Default)]
struct Place {
    count: u32,
    refusals: Refusals,
}

/// One request's place; dropping it frees the place.
pub struct Slot {
    /// `None` when there is no cap: nothing to count, nothing to give back.
    held: Option<(Arc<InFlight>, Arc<str>)>,
}

impl InFlight {
    /// `max` requests per principal at once; 0 means no cap.
    pub fn new(max: u32) -> Arc<InFlight> {
        Arc::new(InFlight {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// A place for one more request of `principal`, or `None` when it already has `max`.
    pub fn try_acquire(self: &Arc<Self>, principal: &str) -> Option<Slot> {
        self.acquire_below(principal, self.max)
    }

    /// A place for a POST that carries on an exchange (see the module docs): `None` only when
    /// the principal has twice `max` in flight.
    pub fn try_continue(self: &Arc<Self>, principal: &str) -> Option<Slot> {
        self.acquire_below(principal, self.max.saturating_mul(2))
    }

    fn acquire_below(self: &Arc<Self>, principal: &str, limit: u32) -> Option<Slot> {
        if self.max == 0 {
            return Some(Slot { held: None });
        }
        let mut counts = self.counts();
        // A principal with requests in flight already has its key: no allocation then.
        let key = match counts.get_key_value(principal) {
            Some((_, place)) if place.count >= limit => return None,
            Some((key, _)) => key.clone(),
            None => Arc::from(principal),
        };
        counts.entry(key.clone()).or_default().count += 1;
        Some(Slot {
            held: Some((self.clone(), key)),
        })
    }

    /// Requests of `principal` in flight now (always 0 without a cap: nothing is counted).
    pub fn current(&self, principal: &str) -> u32 {
        self.counts().get(principal).map_or(0, |place| place.count)
    }

    /// After a refusal of `principal`'s at `now` (monotonic ms): whether to log it (see
    /// [`Refusals`]). Forgotten meanwhile (no request in flight, and its last line a minute
    /// old), it is news.
    pub fn refused(&self, principal: &str, now: i64) -> Option<u32> {
        match self.counts().get_mut(principal) {
            Some(place) => place.refusals.refused(now),
            None => Some(0),
        }
    }

    /// The tails of principals' bursts of refusals due at `now` (see
    /// [`Refusals::tail`]): each principal with refusals unlogged since its last line, and how
    /// many. Principals with no request in flight whose last line is a minute old are
    /// forgotten here.
    pub fn refusal_tails(&self, now: i64, now_or_never: bool) -> Vec<(Arc<str>, u32)> {
        let mut tails = Vec::new();
        self.counts().retain(|principal, place| {
            if let Some(n) = place.refusals.tail(now, now_or_never) {
                tails.push((principal.clone(), n));
            }
            place.count > 0 || place.refusals.said_lately(now)
        });
        tails
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<Arc<str>, Place>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some((owner, principal)) = self.held.take() else {
            return;
        };
        let mut counts = owner.counts();
        let mut tail = None;
        if let Some(place) = counts.get_mut(&principal) {
            place.count = place.count.saturating_sub(1);
            // A principal refused within the last minute is kept till that minute has passed
            // (see [`Place`]); its tail is said then, by `refusal_tails`.
            let now = || crate::clock::monotonic_ms();
            if place.count == 0 && !place.refusals.said_lately(now()) {
                // Its burst's last refusals, said as the place is forgotten (once let go).
                tail = place.refusals.tail(now(), true);
                // Idle principals cost no memory.
                counts.remove(&principal);
            }
        }
        drop(counts);
        if let Some(unlogged) = tail {
            crate::guard::in_flight_tail_said(&principal, unlogged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_principal_and_frees_on_drop() {
        let inflight = InFlight::new(2);
        let a1 = inflight.try_acquire("user:alice").unwrap();
        let _a2 = inflight.try_acquire("user:alice").unwrap();
        assert!(inflight.try_acquire("user:alice").is_none());
        // Others are not affected.
        let _b = inflight.try_acquire("user:bob").unwrap();
        drop(a1);
        assert_eq!(inflight.current("user:alice"), 1);
        assert!(inflight.try_acquire("user:alice").is_some());
    }

    #[test]
    fn a_post_that_carries_on_an_exchange_may_go_up_to_twice_the_cap() {
        let inflight = InFlight::new(2);
        // Two clones admitted: their advertisements are done, their POSTs come.
        let posts: Vec<_> = (0..2)
            .map(|_| inflight.try_continue("token:ci").unwrap())
            .collect();
        // A third clone is refused where it starts (git prints why) ...
        assert!(inflight.try_acquire("token:ci").is_none());
        // ... while POSTs of exchanges under way get through, up to twice the cap.
        let more: Vec<_> = (0..2)
            .map(|_| inflight.try_continue("token:ci").unwrap())
            .collect();
        assert!(inflight.try_continue("token:ci").is_none());
        assert_eq!(inflight.current("token:ci"), 4);
        drop((posts, more));
        assert_eq!(inflight.current("token:ci"), 0);
        assert!(InFlight::new(0).try_continue("token:ci").is_some());
    }

    /// Refusals for the cap are logged once a minute per principal, a tail included, while
    /// its requests keep ending and starting; a principal idle for a minute after its last
    /// line is forgotten, and its next refusal is news. (On the monotonic clock: a request
    /// ends at the time of the `drop`.)
    #[test]
    fn refusals_are_logged_once_a_minute_while_the_principals_requests_come_and_go() {
        let inflight = InFlight::new(1);
        let t0 = crate::clock::monotonic_ms();
        let held = inflight.try_acquire("token:ci").unwrap();
        assert!(inflight.try_acquire("token:ci").is_none());
        assert_eq!(inflight.refused("token:ci", t0), Some(0));
        assert_eq!(inflight.refused("token:ci", t0 + 1), None);
        // Its last request ends within the minute of that line: no tail yet, nothing forgotten.
        drop(held);
        let held = inflight.try_acquire("token:ci").unwrap();
        assert_eq!(
            inflight.refused("token:ci", t0 + 2),
            None,
            "within the minute"
        );
        drop(held);
        assert!(inflight.refusal_tails(t0 + 59_999, false).is_empty());
        assert_eq!(
            inflight.refusal_tails(t0 + 60_000, false),
            vec![(Arc::from("token:ci"), 2)]
        );
        // The tail is the line of its minute; idle a minute after it, the place is forgotten.
        assert!(inflight.refusal_tails(t0 + 119_999, false).is_empty());
        assert_eq!(inflight.counts.lock().unwrap().len(), 1);
        assert!(inflight.refusal_tails(t0 + 120_000, false).is_empty());
        assert!(inflight.counts.lock().unwrap().is_empty());
        let _held = inflight.try_acquire("token:ci").unwrap();
        assert_eq!(inflight.refused("token:ci", t0 + 120_001), Some(0));
        assert_eq!(inflight.refused("user:nobody", t0), Some(0));
    }

    #[test]
    fn a_principal_in_flight_keeps_one_key() {
        let inflight = InFlight::new(8);
        let first = inflight.try_acquire("user:ci").unwrap();
        let second = inflight.try_acquire("user:ci").unwrap();
        let key = |s: &Slot| s.held.as_ref().unwrap().1.clone();
        // The second request reuses the first one's key instead of allocating its own.
        assert!(Arc::ptr_eq(&key(&first), &key(&second)));
        assert_eq!(inflight.current("user:ci"), 2);
    }

    #[test]
    fn idle_principals_are_forgotten_and_zero_means_no_cap() {
        let inflight = InFlight::new(1);
        drop(inflight.try_acquire("token:x").unwrap());
        assert!(inflight.counts.lock().unwrap().is_empty());
        let unlimited = InFlight::new(0);
        let held: Vec<_> = (0..100)
            .map(|_| unlimited.try_acquire("user:ci").unwrap())
            .collect();
        assert_eq!(held.len(), 100);
        assert!(
            unlimited.counts.lock().unwrap().is_empty(),
            "without a cap nothing is counted"
        );
    }
}
