//! The auth hot path, measured with 1,000,000 tokens in the store.
//!
//! - `cached`: what the gate does per request once a token has been seen — parse the secret,
//!   SHA-256 it, look the record up in the cache (after the store's file checks and a read of the
//!   WAL index header, which say whether anything changed), compare hashes in constant time, and
//!   run the policy.
//! - `uncached`: the same with the record read from SQLite (the first request of a token, or the
//!   first after any commit to the store), inline, the same token each time.
//! - `miss_path`: a cache miss as the gate takes it — the failed cache lookup, then the read on
//!   the caller's thread when it need not wait (`Store::load_auth_record_now`), else on tokio's
//!   blocking pool, which caches the record — for ids spread over the million (each once per
//!   pass, so SQLite's pages are not all hot), the SHA-256 of a secret and its comparison. The
//!   filler tokens' secrets are not known, so the comparison fails and the policy is not run:
//!   its cost is in `cached`.
//! - `miss_pool`: the same misses always read on the blocking pool (`spawn_blocking`, a thread
//!   wake-up each way): the gate's way when SQLite is busy or inline reads are paused, and its
//!   only way before they were tried.
//! - `baseline_sha256`: the SHA-256 of one secret alone, measured in the same run, so the numbers
//!   can be read as ratios on any machine.
//!
//! Run with `cargo bench --bench auth`. Building the 1M-token store takes a few seconds.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use gitgate::clock;
use gitgate::git::RepoPath;
use gitgate::permission::{Access, Level, TokenKind, TokenPermissions};
use gitgate::policy::{self, Target};
use gitgate::store::{Actor, CacheLookup, NewToken, Role, Store};
use gitgate::token;

const FILLER_TOKENS: i64 = 999_999;

fn build_store(path: &Path) -> (Store, String) {
    let store = Store::open(path).expect("open store");
    let actor = Actor {
        name: "bench".into(),
        source: "local".into(),
        logged_in_as_admin: None,
        request: None,
    };
    store
        .add_user("alice", "not-a-real-hash", Role::User, &actor)
        .unwrap();
    store
        .add_grant(
            "alice",
            &Target::parse("team").unwrap(),
            Level::Write,
            &actor,
        )
        .unwrap();
    // alice's token first: past 100 of her live tokens, the store refuses her another
    // (`store::MAX_LIVE_PERSONAL_TOKENS`), and the filler rows are hers.
    let fresh = token::generate().unwrap();
    store
        .insert_token(
            &NewToken {
                id: fresh.id.as_str(),
                kind: TokenKind::Personal,
                name: "laptop",
                owner: Some("alice"),
                scope: None,
                permissions: TokenPermissions::from_names(TokenKind::Personal, &["REPO_WRITE"])
                    .unwrap(),
                secret_hash: token::hash(fresh.secret.expose()),
                expires_at: None,
                allowed_networks: &[],
                created_at: 0,
            },
            &actor,
        )
        .unwrap();
    // Filler rows straight in SQL: a million API calls would measure commits, not lookups.
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {FILLER_TOKENS})
         INSERT INTO tokens (id, kind, name, owner_id, permissions, secret_hash, created_at, created_by)
         SELECT printf('f%011d', i), 'personal', 'filler', 1, 'REPO_READ', randomblob(32), 0, 'bench'
         FROM n;"
    ))
    .unwrap();
    drop(conn);
    (store, fresh.secret.expose().to_string())
}

fn auth(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (store, secret) = build_store(&dir.path().join("bench.db"));
    // As `serve` does: the file checks run only after a change in the store's folders.
    store.watch_folders();
    let repo = RepoPath::parse("team/app").unwrap();
    let now = clock::now_ms();
    let remote: std::net::IpAddr = [127, 0, 0, 1].into();

    let check = |record: &gitgate::store::AuthRecord, presented: &[u8; 32]| {
        assert!(record.secret_matches(presented, now));
        policy::authorize(record, Some("alice"), &repo, Access::Write, remote, now).unwrap()
    };

    let mut group = c.benchmark_group("auth_1M_tokens");
    group.bench_function("baseline_sha256", |b| {
        b.iter(|| token::hash(black_box(&secret)))
    });
    store
        .auth_record_cached(token::parse(&secret).unwrap().as_str())
        .unwrap();
    group.bench_function("cached", |b| {
        b.iter(|| {
            let id = token::parse(black_box(&secret)).unwrap();
            let presented = token::hash(&secret);
            let CacheLookup::Hit(record) = store.cached_auth_record(id.as_str()).unwrap() else {
                panic!("the token should be cached");
            };
            check(&record, &presented)
        })
    });
    group.bench_function("uncached", |b| {
        b.iter(|| {
            let id = token::parse(black_box(&secret)).unwrap();
            let presented = token::hash(&secret);
            let record = store.auth_record(id.as_str()).unwrap().unwrap();
            check(&record, &presented)
        })
    });
    // The ids of the filler rows, visited in a scattered order (7919 is prime to 1,000,000).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    // The `step`th filler id, which must miss the cache, and the version it missed at.
    let missing = |step: i64| {
        let id = format!("f{:011}", (step * 7919) % FILLER_TOKENS + 1);
        match store.cached_auth_record(&id).unwrap() {
            CacheLookup::Miss(at) => (id, at),
            _ => panic!("a filler token was cached or unknown"),
        }
    };
    // The read on tokio's blocking pool, as the gate does it when it cannot read inline.
    let on_the_pool = |id: String, at| {
        let reading = store.clone();
        runtime
            .block_on(async move {
                tokio::task::spawn_blocking(move || reading.load_auth_record(&id, at)).await
            })
            .unwrap()
    };
    let mut step: i64 = 0;
    group.bench_function("miss_path", |b| {
        b.iter(|| {
            step += 1;
            let presented = token::hash(black_box(&secret));
            let (id, at) = missing(step);
            let read = match store.load_auth_record_now(&id, at) {
                Some(read) => read,
                None => on_the_pool(id, at),
            };
            let record = read.unwrap().expect("a filler token");
            black_box(record.secret_matches(&presented, now))
        })
    });
    // Other ids than `miss_path`'s, the last 100,000 of which are cached by now: on from where
    // it stopped. (From the middle of the million, as before, a fast machine's `miss_path` had
    // been there already: "a filler token was cached", 2026-12-05.) The order comes round to
    // an id again only after 999,999 steps, long after the cache was cleared of it.
    let mut pool_step: i64 = step;
    group.bench_function("miss_pool", |b| {
        b.iter(|| {
            pool_step += 1;
            let presented = token::hash(black_box(&secret));
            let (id, at) = missing(pool_step);
            let record = on_the_pool(id, at).unwrap().expect("a filler token");
            black_box(record.secret_matches(&presented, now))
        })
    });
    group.finish();
}

criterion_group!(benches, auth);
criterion_main!(benches);
