//! A cap on the requests one principal has in flight to the backend at once.
//!
//! The token bucket ([`crate::ratelimit`]) limits how *often* a principal starts an exchange; this
//! limits how *many* run at the same time, which is what protects the backend from one CI job
//! that starts fifty clones at once (each of which may stream for minutes and hold a
//! `git upload-pack` process). A [`Slot`] is held for the whole request, until the response body
//! has been sent or dropped, and gives its place back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Counts of requests in flight per principal, shared by every connection.
pub struct InFlight {
    max: u32,
    counts: Mutex<HashMap<String, u32>>,
}

/// One request's place; dropping it frees the place.
pub struct Slot {
    owner: Arc<InFlight>,
    principal: String,
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
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(principal.to_string()).or_insert(0);
        if self.max != 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            owner: self.clone(),
            principal: principal.to_string(),
        })
    }

    /// Requests of `principal` in flight now.
    pub fn current(&self, principal: &str) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(principal).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.principal) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Idle principals cost no memory.
                counts.remove(&self.principal);
            }
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
    fn idle_principals_are_forgotten_and_zero_means_no_cap() {
        let inflight = InFlight::new(1);
        drop(inflight.try_acquire("token:x").unwrap());
        assert!(inflight.counts.lock().unwrap().is_empty());
        let unlimited = InFlight::new(0);
        let held: Vec<_> = (0..100)
            .map(|_| unlimited.try_acquire("user:ci").unwrap())
            .collect();
        assert_eq!(unlimited.current("user:ci"), 100);
        drop(held);
        assert_eq!(unlimited.current("user:ci"), 0);
    }
}
