//! Batched audit writes off the request path.
//!
//! Why: a failed authentication is an audit event, and writing each one in its own transaction
//! costs a commit per refused request — under a flood of bad tokens that is most of gitgate's CPU,
//! and every commit also moves `PRAGMA data_version`, which empties the token cache for everyone
//! else. Events are instead queued (bounded) to one writer thread that commits whatever has
//! queued up, up to [`BATCH`] events, in a single `BEGIN IMMEDIATE` transaction.
//!
//! The queue is bounded so a flood cannot grow memory; an event that finds it full is counted,
//! and the count is written as one summary event with the next batch, so the audit log still says
//! that (and how many) failures happened. The thread holds only a weak reference to the store and
//! ends when the store is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};

use super::{audit::record, Actor, Inner, Store};

/// Events waiting to be written before new ones are counted instead.
const QUEUE: usize = 4096;
/// Most events per transaction.
const BATCH: usize = 512;

pub(super) struct Event {
    pub actor: Actor,
    pub action: &'static str,
    pub target: String,
    pub detail: String,
}

pub(super) struct AuditWriter {
    tx: Mutex<Option<SyncSender<Event>>>,
    dropped: Arc<AtomicU64>,
}

impl AuditWriter {
    pub(super) fn new() -> AuditWriter {
        AuditWriter {
            tx: Mutex::new(None),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queue `event`; starts the writer thread on first use.
    pub(super) fn send(&self, store: &Arc<Inner>, event: Event) {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let sender = tx.get_or_insert_with(|| {
            let (sender, receiver) = sync_channel(QUEUE);
            let weak = Arc::downgrade(store);
            let dropped = self.dropped.clone();
            let spawned = std::thread::Builder::new()
                .name("gitgate-audit".into())
                .spawn(move || run(weak, receiver, dropped));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the audit writer thread");
            }
            sender
        });
        match sender.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn run(store: Weak<Inner>, events: Receiver<Event>, dropped: Arc<AtomicU64>) {
    while let Ok(first) = events.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match events.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let Some(inner) = store.upgrade() else { return };
        let store = Store { inner };
        let lost = dropped.swap(0, Ordering::Relaxed);
        let written = store.write(|tx| {
            for e in &batch {
                record(tx, &e.actor, e.action, &e.target, &e.detail)?;
            }
            if lost > 0 {
                let actor = Actor {
                    name: "gitgate".into(),
                    source: "local".into(),
                };
                let detail = format!(
                    "{lost} more events (e.g. {}) were not recorded one by one: the audit queue was full",
                    batch[0].action
                );
                record(tx, &actor, "audit.dropped", "", &detail)?;
            }
            Ok(())
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, events = batch.len(), "could not write audit events");
            for _ in 0..batch.len() {
                crate::metrics::METRICS.side_effect_failure();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::store::test_support::{actor, temp_store};

    #[test]
    fn queued_events_are_written_soon_in_order() {
        let (_dir, store) = temp_store();
        for i in 0..100 {
            store.record_event_later(actor(), "auth.failed", format!("t{i}"), "bad".into());
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
    }
}
