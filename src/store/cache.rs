//! An in-memory cache of [`AuthRecord`]s in front of SQLite, so that the auth hot path is a hash
//! lookup instead of a query — without giving up immediate revocation.
//!
//! Invalidation uses SQLite's `PRAGMA data_version`: on one connection its value changes whenever
//! *any other* connection (another process such as the CLI, or another connection of this one)
//! has committed since the last read. Every lookup reads it first (a few hundred nanoseconds on a
//! dedicated connection); if it moved, the whole cache is dropped. A revocation, a disabled user or
//! a removed grant is therefore seen on the very next request, exactly as without the cache.
//! Time-based rules (expiry) are applied by the policy with the current time, so a cached record
//! never outlives its expiry.
//!
//! Unknown ids are not cached (that would let anyone fill memory); the cache is cleared when it
//! reaches [`MAX_ENTRIES`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::Connection;

use super::AuthRecord;

/// Entries kept before the cache starts over.
pub const MAX_ENTRIES: usize = 100_000;

pub(super) struct AuthCache {
    watcher: Mutex<Connection>,
    state: RwLock<State>,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
}

struct State {
    version: i64,
    entries: HashMap<String, Arc<AuthRecord>>,
}

impl AuthCache {
    pub(super) fn new(watcher: Connection) -> AuthCache {
        AuthCache {
            watcher: Mutex::new(watcher),
            state: RwLock::new(State {
                version: i64::MIN,
                entries: HashMap::new(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Forget everything and watch a new connection (the store file was replaced).
    pub(super) fn reset(&self, watcher: Connection) {
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = watcher;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.entries.clear();
        state.version = i64::MIN;
    }

    /// The store's current data version as this cache's connection sees it.
    pub(super) fn version(&self) -> rusqlite::Result<i64> {
        let conn = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached("PRAGMA data_version")?;
        let version: i64 = stmt.query_row([], |r| r.get(0))?;
        Ok(version)
    }

    /// The cached record for `id`, if the cache is still valid at `version`.
    pub(super) fn get(&self, id: &str, version: i64) -> Option<Arc<AuthRecord>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let found = if state.version == version {
            state.entries.get(id).cloned()
        } else {
            None
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remember `record`, read after `version` was observed.
    pub(super) fn put(&self, record: Arc<AuthRecord>, version: i64) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.version != version {
            state.entries.clear();
            state.version = version;
        }
        if state.entries.len() >= MAX_ENTRIES {
            state.entries.clear();
        }
        state.entries.insert(record.token.id.clone(), record);
    }
}

#[cfg(test)]
mod tests {
    use crate::permission::{TokenKind, TokenPermissions};
    use crate::store::test_support::actor;
    use crate::store::{CacheLookup, NewToken, Role, Store};

    #[test]
    fn a_commit_from_another_connection_invalidates_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let server = Store::open(&path).unwrap();
        // Stands for the CLI: another process with its own connections to the same file.
        let cli = Store::open(&path).unwrap();
        cli.add_user("alice", "h", Role::User, &actor()).unwrap();
        cli.insert_token(
            &NewToken {
                id: "abcdefghijkl",
                kind: TokenKind::Personal,
                name: "laptop",
                owner: Some("alice"),
                scope: None,
                permissions: TokenPermissions::from_names(TokenKind::Personal, &["REPO_READ"])
                    .unwrap(),
                secret_hash: [1; 32],
                expires_at: None,
                allowed_networks: &[],
                created_at: 0,
            },
            &actor(),
        )
        .unwrap();

        assert!(matches!(
            server.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Miss(_)
        ));
        let first = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(first.token.revoked_at.is_none());
        let CacheLookup::Hit(hit) = server.cached_auth_record("abcdefghijkl").unwrap() else {
            panic!("expected a cache hit");
        };
        assert!(std::sync::Arc::ptr_eq(&first, &hit));

        cli.revoke_token("abcdefghijkl", &actor()).unwrap();
        assert!(matches!(
            server.cached_auth_record("abcdefghijkl").unwrap(),
            CacheLookup::Miss(_)
        ));
        let fresh = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(fresh.token.revoked_at.is_some());

        cli.set_user_active("alice", false, &actor()).unwrap();
        let fresh = server.auth_record_cached("abcdefghijkl").unwrap().unwrap();
        assert!(!fresh.owner.as_ref().unwrap().active);
        let (hits, misses) = server.cache_stats();
        assert!(hits >= 1 && misses >= 3, "{hits} {misses}");
    }
}
