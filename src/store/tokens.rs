//! Tokens: id, kind, name, owner or scope, permissions, the SHA-256 of the secret, and their
//! lifecycle times. The secret itself is never stored.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use super::audit::record;
use super::grants::grants_of;
use super::users::{require_user, Role};
use super::{setting_in, Actor, Result, SettingsCheck, Store, StoreError};
use crate::clock;
use crate::network::{self, Cidr};
use crate::permission::{Level, TokenKind, TokenPermissions};
use crate::policy::Target;

/// A token as listed and shown: everything but the secret's hash.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    pub id: String,
    pub kind: TokenKind,
    pub name: String,
    /// The owning user's slug, for personal tokens.
    pub owner: Option<String>,
    /// The project or repository, for scoped tokens.
    pub scope: Option<Target>,
    pub permissions: TokenPermissions,
    pub created_at: i64,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_addr: Option<String>,
    pub revoked_at: Option<i64>,
    /// When the secret was last replaced (`token rotate`).
    pub rotated_at: Option<i64>,
    /// Source networks the token may be used from; empty means anywhere.
    pub allowed_networks: Vec<Cidr>,
}

impl TokenRecord {
    /// The JSON shape used by `--json` output (Bitbucket-like camelCase; never the secret).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "name": self.name,
            "kind": self.kind.as_str(),
            "user": self.owner,
            "scope": self.scope.as_ref().map(|s| s.to_string()),
            "permissions": self.permissions.names(),
            "createdAt": self.created_at,
            "createdBy": self.created_by,
            "expiresAt": self.expires_at,
            "lastUsedAt": self.last_used_at,
            "lastUsedAddress": self.last_used_addr,
            "revokedAt": self.revoked_at,
            "rotatedAt": self.rotated_at,
            "allowedNetworks": self.network_names(),
        })
    }

    /// Whether the token still opens anything at `now` (ms since the epoch): neither revoked
    /// nor expired.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }

    /// The allowed networks as text, e.g. `["10.0.0.0/8"]`.
    pub fn network_names(&self) -> Vec<String> {
        self.allowed_networks.iter().map(Cidr::to_string).collect()
    }

    /// Who or what the token stands for: the owner, or `project:team` / `repo:team/app`.
    pub fn principal(&self) -> String {
        match (&self.owner, &self.scope) {
            (Some(owner), _) => owner.clone(),
            (None, Some(Target::Project(p))) => format!("project:{p}"),
            (None, Some(Target::Repo(r))) => format!("repo:{r}"),
            (None, None) => format!("token:{}", self.id),
        }
    }
}

/// What authentication needs in one read: the token, its hash, and its owner's current state.
#[derive(Clone, Debug)]
pub struct AuthRecord {
    pub token: TokenRecord,
    pub secret_hash: Vec<u8>,
    /// After a rotation with an overlap: the previous secret's hash and until when it is valid.
    pub previous: Option<(Vec<u8>, i64)>,
    pub owner: Option<Owner>,
    /// For a project or repository token: why its name may not be the identity the git backend
    /// sees (a user's name, or not printable ASCII — refused when set, so only in a store edited
    /// by hand or older than the rule); read with the record, so that a request costs nothing.
    pub unusable_name: Option<String>,
    /// When this process last queued the token's use for the store (ms since the epoch; 0:
    /// never), see [`AuthRecord::claim_use`].
    pub queued_use: QueuedUse,
    /// When this process last said that the previous secret was used (see
    /// [`AuthRecord::previous_used`]).
    pub previous_said: QueuedUse,
}

/// A time kept beside a cached record and changed in place: the cache outlives the writer's
/// commits of last uses, so the record's `last_used_at` is the time read from the store, not
/// the newest one queued.
#[derive(Debug, Default)]
pub struct QueuedUse(AtomicI64);

impl Clone for QueuedUse {
    fn clone(&self) -> QueuedUse {
        QueuedUse(AtomicI64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl AuthRecord {
    /// Whether a use at `now` is to be queued for the store: none was stored or queued in the
    /// last `interval` ms. At most one caller gets `true` for each interval, however many
    /// requests share the cached record.
    pub fn claim_use(&self, now: i64, interval: i64) -> bool {
        let queued = self.queued_use.0.load(Ordering::Relaxed);
        // A last use later than now (the clock was ahead, or went back since) is no use at
        // all: else it would keep every use from being recorded until the clock got there.
        let past = |at: i64| {
            if at.saturating_sub(now) > FUTURE_USE_MS {
                i64::MIN
            } else {
                at
            }
        };
        let last = past(queued).max(past(self.token.last_used_at.unwrap_or(i64::MIN)));
        now.saturating_sub(last) >= interval
            && self
                .queued_use
                .0
                .compare_exchange(queued, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether `presented` (the SHA-256 of the secret the client sent) is this token's secret at
    /// time `now`: the current one, or the previous one inside its rotation overlap. Both
    /// comparisons always run, in constant time.
    pub fn secret_matches(&self, presented: &[u8], now: i64) -> bool {
        let current = crate::token::constant_time_eq(presented, &self.secret_hash);
        let previous = match &self.previous {
            Some((hash, until)) => crate::token::constant_time_eq(presented, hash) && now < *until,
            None => false,
        };
        current | previous
    }

    /// When the overlap of the secret `presented` ends, if it is the previous one (inside its
    /// rotation's overlap, not the current one), and this process has not said so in the last
    /// minute: a client still holds the old secret, which the operator planning the rotation
    /// must hear before the overlap ends. Nothing to do for a token never rotated. A saying
    /// more than `FUTURE_USE_MS` later than `now` is no saying at all (the wall clock went
    /// back since, as in [`AuthRecord::claim_use`]): else the record, cached across the
    /// writer's commits, kept the line unsaid for as long as the clock was stepped back.
    pub fn previous_used(&self, presented: &[u8], now: i64) -> Option<i64> {
        let (hash, until) = self.previous.as_ref()?;
        if now >= *until
            || !crate::token::constant_time_eq(presented, hash)
            || crate::token::constant_time_eq(presented, &self.secret_hash)
        {
            return None;
        }
        let said = self.previous_said.0.load(Ordering::Relaxed);
        ((said.saturating_sub(now) > FUTURE_USE_MS || now.saturating_sub(said) >= 60_000)
            && self
                .previous_said
                .0
                .compare_exchange(said, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok())
        .then_some(*until)
    }

    /// Whether `presented` is the secret this token's last rotation replaced, past its overlap
    /// (compared in constant time): its holder is told the token has a new secret, rather than
    /// a bare "invalid token" — a CI job still holding the old one, most often.
    pub fn replaced_secret_matches(&self, presented: &[u8], now: i64) -> bool {
        match &self.previous {
            Some((hash, until)) => crate::token::constant_time_eq(presented, hash) && now >= *until,
            None => false,
        }
    }
}

/// A personal token's owner as of this read.
#[derive(Clone, Debug)]
pub struct Owner {
    pub slug: String,
    pub role: Role,
    pub active: bool,
    pub grants: Vec<(Target, Level)>,
}

/// A token about to be stored.
pub struct NewToken<'a> {
    pub id: &'a str,
    pub kind: TokenKind,
    pub name: &'a str,
    pub owner: Option<&'a str>,
    pub scope: Option<&'a Target>,
    pub permissions: TokenPermissions,
    pub secret_hash: [u8; 32],
    pub expires_at: Option<i64>,
    pub allowed_networks: &'a [Cidr],
    /// Epoch ms; the same instant the expiry was counted from, so that `expiresAt - createdAt`
    /// is exactly the days asked for.
    pub created_at: i64,
}

/// The secret a rotation replaced, as stored: what [`Store::undo_rotation`] puts back. Only
/// hashes, never a secret.
#[derive(Clone, Debug)]
pub struct ReplacedSecret {
    secret_hash: Vec<u8>,
    previous_hash: Option<Vec<u8>>,
    previous_valid_until: Option<i64>,
    rotated_at: Option<i64>,
}

/// What an edit changes; `None` leaves a field as it is. The expiry is deliberately absent: it
/// never changes once a token exists.
#[derive(Default)]
pub struct TokenEdit {
    pub name: Option<String>,
    pub permissions: Option<TokenPermissions>,
    pub allowed_networks: Option<Vec<Cidr>>,
}

fn networks_to_db(networks: &[Cidr]) -> Option<String> {
    if networks.is_empty() {
        None
    } else {
        Some(
            networks
                .iter()
                .map(Cidr::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

/// Token names: 1–100 characters, no control characters, no space at either end (the backend
/// knows a project or repository token by its name, and HTTP and git trim the spaces around
/// it, so `bob ` would arrive as `bob`).
pub fn validate_name(name: &str) -> Result<()> {
    let length = name.chars().count();
    if length > 100 {
        return Err(StoreError::Invalid(format!(
            "a token name must be 1-100 characters: this one has {length}"
        )));
    }
    if name.trim().is_empty()
        || name
            .chars()
            .any(|c| c.is_control() || crate::credentials::is_invisible_format(c))
        || crate::credentials::stacks_combining_marks(name)
        || crate::credentials::tags_outside_a_flag(name)
    {
        return Err(StoreError::Invalid(
            "a token name must be 1-100 characters without control, invisible, line-breaking \
             or text-direction characters (nor more than 4 accents on one letter)"
                .into(),
        ));
    }
    if name.trim() != name {
        return Err(StoreError::Invalid(format!(
            "a token name may not begin or end with a space: '{name}'"
        )));
    }
    // Names are shown in lists, audit events and logs, and a scoped token's is its identity
    // upstream: a secret pasted here would be stored and logged in the clear. Not echoed.
    if crate::credentials::names_a_secret(name) {
        return Err(StoreError::Invalid(
            "a token name may not hold a gitgate token or anything that looks like a secret \
             (the name is shown in lists and logs): was a secret pasted into it? Choose \
             another name, and if it was a real secret, rotate or revoke that token"
                .into(),
        ));
    }
    Ok(())
}

const SELECT: &str = "SELECT t.id, t.kind, t.name, u.slug, t.scope, t.permissions, t.created_at,
    t.created_by, t.expires_at, t.last_used_at, t.last_used_addr, t.revoked_at, t.secret_hash, t.owner_id,
    t.rotated_at, t.allowed_networks, t.previous_hash, t.previous_valid_until
    FROM tokens t LEFT JOIN users u ON u.id = t.owner_id";

type TokenRow = (TokenRecord, Vec<u8>, Option<i64>, Option<(Vec<u8>, i64)>);

/// The tokens whose row meets `condition` (with `?1` bound to `param`), newest first.
fn tokens_where(
    c: &rusqlite::Connection,
    condition: &str,
    param: Option<&str>,
) -> Result<Vec<TokenRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "{SELECT} WHERE {condition} ORDER BY t.created_at DESC, t.id"
    ))?;
    let mut out = Vec::new();
    for row in stmt.query_map([param], token_from_row)? {
        out.extend(listed(row)?);
    }
    Ok(out)
}

/// A row of a listing, or none when it cannot be read: one row edited by hand into what
/// gitgate cannot read must not hide every other token from the operator: left out, and said
/// (its id named). It authenticates nothing either way (see `token_from_row`).
fn listed(row: rusqlite::Result<TokenRow>) -> Result<Option<TokenRecord>> {
    match row {
        Ok(row) => Ok(Some(row.0)),
        Err(e @ rusqlite::Error::ToSqlConversionFailure(_)) => {
            tracing::warn!(error = %crate::log_value::LogText(&e.to_string()), "a token row that cannot be read is left out of the list");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Which tokens a listing of the REST API shows, newest first: never a revoked one.
#[derive(Clone, Copy, Debug)]
pub enum Listing<'a> {
    /// A user's personal tokens.
    Personal(&'a str),
    /// A project's or a repository's tokens.
    Scoped(&'a Target),
    /// Every token.
    Every,
    /// Every token that still opens something at `now` (not expired either), and with
    /// `expiry` only those whose expiry meets it, or only those whose expiry does not.
    Active {
        now: i64,
        expiry: Option<ExpiryTest>,
    },
}

/// A rule on a token's expiry: it has one, at most `max_lifetime_ms` after its creation when
/// that is given. `meets`: the tokens that keep it, else those that break it.
#[derive(Clone, Copy, Debug)]
pub struct ExpiryTest {
    pub max_lifetime_ms: Option<i64>,
    pub meets: bool,
}

/// One page of a [`Listing`].
#[derive(Debug)]
pub struct TokenPage {
    pub tokens: Vec<TokenRecord>,
    /// Where the page starts: where it was asked to, or the listing's end when that is before.
    pub start: usize,
    /// Where the next page starts, if tokens follow this one: the page's rows counted, a row
    /// that cannot be read among them (left out of `tokens`, and said in the log).
    pub next: Option<usize>,
}

impl Listing<'_> {
    /// The SQL condition on `t` (tokens) and `u` (their owner), and its parameters.
    fn condition(&self) -> (String, Vec<rusqlite::types::Value>) {
        use rusqlite::types::Value;
        match *self {
            Listing::Personal(user) => (
                "t.revoked_at IS NULL AND u.slug = ?1".into(),
                vec![Value::Text(user.into())],
            ),
            // The two spellings a stored scope reads back as this one in (`Target::parse`):
            // as written, and a repository with `.git` (`team/app.git`, edited by hand).
            Listing::Scoped(scope) => {
                let text = scope.to_string();
                let with_git = match scope {
                    Target::Repo(_) => format!("{text}.git"),
                    Target::Project(_) => text.clone(),
                };
                (
                    "t.revoked_at IS NULL AND t.owner_id IS NULL AND t.scope IN (?1, ?2)".into(),
                    vec![Value::Text(text), Value::Text(with_git)],
                )
            }
            Listing::Every => ("t.revoked_at IS NULL".into(), vec![]),
            Listing::Active { now, expiry } => {
                let active = "t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?1)";
                let Some(test) = expiry else {
                    return (active.into(), vec![Value::Integer(now)]);
                };
                // Never NULL (`created_at` is NOT NULL), so that NOT is its opposite. A
                // lifetime past i64 is a REAL in SQLite, on the same side of the maximum as
                // `ExpiryPolicy::compliant`'s saturated one.
                let meets = "(t.expires_at IS NOT NULL \
                     AND (?2 IS NULL OR t.expires_at - t.created_at <= ?2))";
                let not = if test.meets { "" } else { "NOT " };
                (
                    format!("{active} AND {not}{meets}"),
                    vec![
                        Value::Integer(now),
                        test.max_lifetime_ms.map_or(Value::Null, Value::Integer),
                    ],
                )
            }
        }
    }
}

/// The rows read into token records on this thread, for tests of how much a listing reads.
#[cfg(test)]
pub(crate) mod rows_read {
    use std::cell::Cell;
    thread_local!(pub(crate) static ROWS: Cell<u64> = const { Cell::new(0) });
    pub(crate) fn count() -> u64 {
        ROWS.with(Cell::get)
    }
}

/// A token row, or why it cannot be read, naming the token: one row edited by hand into what
/// gitgate cannot read (an unknown permission, a date that is text) fails what reads it — a
/// listing, an authentication (`503`, fail closed) — and the operator must know which.
fn token_from_row(r: &rusqlite::Row) -> rusqlite::Result<TokenRow> {
    #[cfg(test)]
    rows_read::ROWS.with(|n| n.set(n.get() + 1));
    read_token_row(r).map_err(|e| match r.get::<_, String>(0) {
        // (The variant whose text is the message alone.)
        Ok(id) => rusqlite::Error::ToSqlConversionFailure(
            format!("token {id} cannot be read from the store (its row was changed by hand?): {e}")
                .into(),
        ),
        Err(_) => e,
    })
}

fn read_token_row(r: &rusqlite::Row) -> rusqlite::Result<TokenRow> {
    let bad = |i: usize, m: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, m.into())
    };
    let kind: TokenKind = r.get::<_, String>(1)?.parse().map_err(|m| bad(1, m))?;
    let scope = match r.get::<_, Option<String>>(4)? {
        Some(s) => Some(Target::parse(&s).map_err(|m| bad(4, m))?),
        None => None,
    };
    let names: String = r.get(5)?;
    let names: Vec<&str> = names.split(',').collect();
    let permissions = TokenPermissions::from_names(kind, &names).map_err(|m| bad(5, m))?;
    let networks: Option<String> = r.get(15)?;
    let networks: Vec<&str> = networks
        .as_deref()
        .map(|n| n.split(',').collect())
        .unwrap_or_default();
    let allowed_networks = network::parse_list(&networks).map_err(|m| bad(15, m))?;
    let previous = match (
        r.get::<_, Option<Vec<u8>>>(16)?,
        r.get::<_, Option<i64>>(17)?,
    ) {
        (Some(hash), Some(until)) => Some((hash, until)),
        _ => None,
    };
    Ok((
        TokenRecord {
            id: r.get(0)?,
            kind,
            name: r.get(2)?,
            owner: r.get(3)?,
            scope,
            permissions,
            created_at: r.get(6)?,
            created_by: r.get(7)?,
            expires_at: r.get(8)?,
            last_used_at: r.get(9)?,
            last_used_addr: r.get(10)?,
            revoked_at: r.get(11)?,
            rotated_at: r.get(14)?,
            allowed_networks,
        },
        r.get(12)?,
        r.get(13)?,
        previous,
    ))
}

/// The most personal tokens one user may hold that can still be used. One user must not fill
/// the store's disk: Bitbucket caps personal tokens per user too. Revoked and expired ones do
/// not count. (Project and repository tokens are made by administrators only, a CI fleet's
/// hundreds among them.)
pub const MAX_LIVE_PERSONAL_TOKENS: u64 = 100;

/// The refusal of a token over [`MAX_LIVE_PERSONAL_TOKENS`]: a bad request (`400` over REST),
/// as Bitbucket's create answers "the user already has their maximum number of tokens".
pub fn too_many_personal_tokens(owner: &str) -> StoreError {
    StoreError::Invalid(format!(
        "user '{owner}' already has {MAX_LIVE_PERSONAL_TOKENS} personal tokens that can be used, \
         the most allowed: revoke one first"
    ))
}

fn live_personal_tokens_in(c: &rusqlite::Connection, owner: &str) -> Result<u64> {
    let n: i64 = c.query_row(
        "SELECT count(*) FROM tokens t JOIN users u ON u.id = t.owner_id \
         WHERE u.slug = ?1 AND t.revoked_at IS NULL \
         AND (t.expires_at IS NULL OR t.expires_at > ?2)",
        params![owner, clock::now_ms()],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn find_token(c: &rusqlite::Connection, id: &str) -> Result<Option<TokenRecord>> {
    Ok(c.prepare_cached(&format!("{SELECT} WHERE t.id = ?1"))?
        .query_row([id], token_from_row)
        .optional()?
        .map(|(t, ..)| t))
}

fn require_token(c: &rusqlite::Connection, id: &str) -> Result<TokenRecord> {
    find_token(c, id)?.ok_or_else(|| StoreError::NotFound(format!("no token with id '{id}'")))
}

impl Store {
    /// Insert a new token. A project or repository token may not be named after a user: the
    /// backend knows it by its name (`REMOTE_USER`, the identity header), so the token would
    /// pass for that user there — in hooks and reflogs, or with an upstream that logs users in
    /// by that header. (`users::add_user` refuses the other way round.)
    pub fn insert_token(&self, new: &NewToken, actor: &Actor) -> Result<TokenRecord> {
        self.insert_token_if(new, &|_| Ok(()), actor)
    }

    /// How many personal tokens of `owner` can still be used: neither revoked nor expired.
    pub fn live_personal_tokens(&self, owner: &str) -> Result<u64> {
        self.with_conn(|c| live_personal_tokens_in(c, owner))
    }

    /// [`Store::insert_token`] if `allowed` holds for the settings in the same transaction.
    pub fn insert_token_if(
        &self,
        new: &NewToken,
        allowed: SettingsCheck<'_>,
        actor: &Actor,
    ) -> Result<TokenRecord> {
        validate_name(new.name)?;
        self.write(|tx| {
            allowed(&|key| setting_in(tx, key))?;
            let owner_id = match new.owner {
                Some(slug) => Some(require_user(tx, slug)?.id),
                None => None,
            };
            // Counted in the transaction that adds the token: two made at once (two API
            // calls, or the CLI beside the server) cannot both take the last place.
            if let Some(slug) = new.owner {
                if live_personal_tokens_in(tx, slug)? >= MAX_LIVE_PERSONAL_TOKENS {
                    return Err(too_many_personal_tokens(slug));
                }
            }
            if new.owner.is_none() {
                refuse_a_listing_name(new.name)?;
                refuse_user_name(tx, new.name)?;
            }
            tx.execute(
                "INSERT INTO tokens (id, kind, name, owner_id, scope, permissions, secret_hash,
                                     created_at, created_by, expires_at, allowed_networks)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    new.id,
                    new.kind.as_str(),
                    new.name,
                    owner_id,
                    new.scope.map(|s| s.to_string()),
                    new.permissions.to_string(),
                    &new.secret_hash[..],
                    new.created_at,
                    actor.name,
                    new.expires_at,
                    networks_to_db(new.allowed_networks),
                ],
            )?;
            let token = require_token(tx, new.id)?;
            // The moment, as every other date gitgate prints: a day alone is a day of UTC,
            // which is not the day the token ends everywhere.
            let expiry = match token.expires_at {
                Some(ms) => format!("on {}", clock::datetime(ms)),
                None => "never".into(),
            };
            record(
                tx,
                actor,
                "token.created",
                &token.id,
                &format!(
                    "{} token '{}' for {} with {}, expires {expiry}, networks {}",
                    token.kind.as_str(),
                    token.name,
                    token.principal(),
                    token.permissions,
                    networks_to_db(&token.allowed_networks).unwrap_or_else(|| "anywhere".into())
                ),
            )?;
            Ok(token)
        })
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.with_conn(|c| find_token(c, id))
    }

    /// Tokens, newest first; only those owned by `owner` when given.
    pub fn tokens(&self, owner: Option<&str>) -> Result<Vec<TokenRecord>> {
        self.with_conn(|c| {
            if let Some(slug) = owner {
                require_user(c, slug)?;
            }
            tokens_where(c, "?1 IS NULL OR u.slug = ?1", owner)
        })
    }

    /// One page of `listing`: its tokens from `start` (0 is the newest), at most `limit` of
    /// them. SQLite sorts the ids alone and reads the page's rows only, so that a page of a
    /// million tokens holds a page, not the table; one past the page says whether more follow.
    /// A personal listing of a user that does not exist is [`StoreError::NotFound`].
    pub fn token_page(&self, listing: Listing, start: usize, limit: usize) -> Result<TokenPage> {
        let (condition, params) = listing.condition();
        let (first, last) = (params.len() + 1, params.len() + 2);
        let sql = format!(
            "{SELECT} WHERE t.rowid IN (SELECT t.rowid FROM tokens t \
               LEFT JOIN users u ON u.id = t.owner_id WHERE {condition} \
               ORDER BY t.created_at DESC, t.id LIMIT ?{last} OFFSET ?{first}) \
             ORDER BY t.created_at DESC, t.id"
        );
        let count_sql = format!(
            "SELECT count(*) FROM tokens t LEFT JOIN users u ON u.id = t.owner_id \
             WHERE {condition}"
        );
        let wanted = limit.saturating_add(1);
        self.with_conn(|c| {
            if let Listing::Personal(user) = listing {
                require_user(c, user)?;
            }
            let mut stmt = c.prepare_cached(&sql)?;
            let mut bound = params.clone();
            bound.push(i64::try_from(start).unwrap_or(i64::MAX).into());
            bound.push(i64::try_from(wanted).unwrap_or(i64::MAX).into());
            let (mut tokens, mut rows) = (Vec::new(), 0usize);
            for row in stmt.query_map(rusqlite::params_from_iter(bound), token_from_row)? {
                rows += 1;
                if rows > limit {
                    break;
                }
                // One that cannot be read still counts for the pages' starts.
                tokens.extend(listed(row)?);
            }
            if rows > limit {
                return Ok(TokenPage {
                    tokens,
                    start,
                    next: Some(start + limit),
                });
            }
            // Nothing from `start` on: where the listing ends, not a number past it.
            let start = if rows == 0 && start > 0 {
                let total: i64 =
                    c.query_row(&count_sql, rusqlite::params_from_iter(params), |r| r.get(0))?;
                start.min(usize::try_from(total).unwrap_or(0))
            } else {
                start
            };
            Ok(TokenPage {
                tokens,
                start,
                next: None,
            })
        })
    }

    /// Revoke the token `id` whose row cannot be read (see `token_from_row`), without reading
    /// it: the operator's way to end it for good, where [`Store::revoke_token`] fails on the
    /// row. `false`: no such token, or revoked already.
    pub fn revoke_unreadable_token(&self, id: &str, actor: &Actor) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE tokens SET revoked_at = ?1, revoked_by = ?2 \
                 WHERE id = ?3 AND (revoked_at IS NULL OR typeof(revoked_at) != 'integer')",
                params![clock::now_ms(), actor.name, id],
            )?;
            if n == 0 {
                return Ok(false);
            }
            record(
                tx,
                actor,
                "token.revoked",
                id,
                "a token whose row cannot be read",
            )?;
            clear_the_rule_of_a_revoked_token(tx, actor, id)?;
            Ok(true)
        })
    }

    pub fn revoke_token(&self, id: &str, actor: &Actor) -> Result<TokenRecord> {
        self.write(|tx| {
            let token = require_token(tx, id)?;
            if token.revoked_at.is_some() {
                return Err(StoreError::Conflict(format!(
                    "token '{}' ({id}) is already revoked",
                    token.name
                )));
            }
            tx.execute(
                "UPDATE tokens SET revoked_at = ?1, revoked_by = ?2 WHERE id = ?3",
                params![clock::now_ms(), actor.name, id],
            )?;
            record(
                tx,
                actor,
                "token.revoked",
                id,
                &format!("token '{}' of {}", token.name, token.principal()),
            )?;
            clear_the_rule_of_a_revoked_token(tx, actor, id)?;
            require_token(tx, id)
        })
    }

    /// Change a token's name, permissions or networks (never its expiry), with an audit event
    /// naming what changed. A revoked token cannot be edited.
    pub fn edit_token(&self, id: &str, edit: &TokenEdit, actor: &Actor) -> Result<TokenRecord> {
        self.write(|tx| {
            let before = require_token(tx, id)?;
            // Only a new name is checked: an edit that sends the name back unchanged (as a
            // GET-modify-PUT does) must not fail on a rule newer than the name.
            if let Some(name) = edit.name.as_deref().filter(|n| *n != before.name) {
                validate_name(name)?;
            }
            if before.revoked_at.is_some() {
                return Err(StoreError::Conflict(format!(
                    "token '{}' ({id}) is revoked and cannot be changed",
                    before.name
                )));
            }
            let mut changes = Vec::new();
            if let Some(name) = edit.name.as_deref().filter(|n| *n != before.name) {
                if before.owner.is_none() {
                    refuse_a_listing_name(name)?;
                    refuse_user_name(tx, name)?;
                }
                tx.execute(
                    "UPDATE tokens SET name = ?1 WHERE id = ?2",
                    params![name, id],
                )?;
                changes.push(format!("name '{}' -> '{name}'", before.name));
            }
            if let Some(p) = edit.permissions.filter(|p| *p != before.permissions) {
                tx.execute(
                    "UPDATE tokens SET permissions = ?1 WHERE id = ?2",
                    params![p.to_string(), id],
                )?;
                changes.push(format!("permissions {} -> {p}", before.permissions));
            }
            if let Some(n) = edit
                .allowed_networks
                .as_ref()
                .filter(|n| **n != before.allowed_networks)
            {
                tx.execute(
                    "UPDATE tokens SET allowed_networks = ?1 WHERE id = ?2",
                    params![networks_to_db(n), id],
                )?;
                let show = |v: &[Cidr]| match networks_to_db(v) {
                    Some(s) => s,
                    None => "anywhere".into(),
                };
                changes.push(format!(
                    "networks {} -> {}",
                    show(&before.allowed_networks),
                    show(n)
                ));
            }
            if !changes.is_empty() {
                record(
                    tx,
                    actor,
                    "token.edited",
                    id,
                    &format!("token of {}: {}", before.principal(), changes.join("; ")),
                )?;
            }
            require_token(tx, id)
        })
    }

    /// Replace a token's secret hash. With `previous_valid_until`, the old secret keeps working
    /// until then (the rotation overlap); without, it stops at once.
    pub fn rotate_token(
        &self,
        id: &str,
        new_hash: [u8; 32],
        previous_valid_until: Option<i64>,
        allowed: SettingsCheck<'_>,
        actor: &Actor,
    ) -> Result<(TokenRecord, ReplacedSecret)> {
        self.write(|tx| {
            allowed(&|key| setting_in(tx, key))?;
            let before = require_token(tx, id)?;
            if before.revoked_at.is_some() {
                return Err(StoreError::Conflict(format!(
                    "token '{}' ({id}) is revoked and cannot be rotated",
                    before.name
                )));
            }
            let replaced = tx.query_row(
                "SELECT secret_hash, previous_hash, previous_valid_until, rotated_at
                 FROM tokens WHERE id = ?1",
                [id],
                |r| {
                    Ok(ReplacedSecret {
                        secret_hash: r.get(0)?,
                        previous_hash: r.get(1)?,
                        previous_valid_until: r.get(2)?,
                        rotated_at: r.get(3)?,
                    })
                },
            )?;
            let now = clock::now_ms();
            // No secret outlives its token: an overlap past the expiry ends with it (and is
            // audited so).
            let previous_valid_until = previous_valid_until
                .map(|until| before.expires_at.map_or(until, |expiry| until.min(expiry)))
                .filter(|until| *until > now);
            // The replaced secret's hash is kept either way, valid until the overlap ends or
            // never (until 0, which no clock stepped back reaches): a client still sending it
            // is told it was replaced.
            tx.execute(
                "UPDATE tokens SET
                    previous_hash = secret_hash,
                    previous_valid_until = COALESCE(?1, 0),
                    secret_hash = ?2,
                    rotated_at = ?3
                 WHERE id = ?4",
                params![previous_valid_until, &new_hash[..], now, id],
            )?;
            let overlap = match previous_valid_until {
                Some(until) => format!("old secret valid until {}", clock::datetime(until)),
                None => "old secret refused at once".into(),
            };
            record(
                tx,
                actor,
                "token.rotated",
                id,
                &format!(
                    "token '{}' of {}; {overlap}",
                    before.name,
                    before.principal()
                ),
            )?;
            Ok((require_token(tx, id)?, replaced))
        })
    }

    /// Put back the secret a rotation replaced, when its new secret never reached anyone (the
    /// CLI could not print it): without this the token would be left with a secret nobody has.
    /// Only while the token still has the rotation's `new_hash` — a rotation made meanwhile is
    /// not undone — and audited, as the rotation was.
    pub fn undo_rotation(
        &self,
        id: &str,
        new_hash: [u8; 32],
        replaced: &ReplacedSecret,
        actor: &Actor,
    ) -> Result<()> {
        self.write(|tx| {
            let token = require_token(tx, id)?;
            let changed = tx.execute(
                "UPDATE tokens SET secret_hash = ?1, previous_hash = ?2,
                    previous_valid_until = ?3, rotated_at = ?4
                 WHERE id = ?5 AND secret_hash = ?6 AND revoked_at IS NULL",
                params![
                    replaced.secret_hash,
                    replaced.previous_hash,
                    replaced.previous_valid_until,
                    replaced.rotated_at,
                    id,
                    &new_hash[..]
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::Conflict(format!(
                    "token '{}' ({id}) was rotated again or revoked meanwhile",
                    token.name
                )));
            }
            record(
                tx,
                actor,
                "token.rotation_undone",
                id,
                &format!(
                    "token '{}' of {}; its new secret could not be shown, so the old one works again",
                    token.name,
                    token.principal()
                ),
            )
        })
    }

    /// How many live (not revoked, not yet expired) tokens expire within `window_ms` of `now`:
    /// the metrics' early warning. One indexed-free scan; called about once a minute.
    pub fn count_expiring(&self, now: i64, window_ms: i64) -> Result<u64> {
        self.with_conn(|c| {
            let n: i64 = c.query_row(
                "SELECT count(*) FROM tokens t WHERE t.revoked_at IS NULL \
                 AND t.expires_at IS NOT NULL AND t.expires_at > ?1 AND t.expires_at <= ?2 \
                 AND (t.owner_id IS NULL \
                      OR EXISTS (SELECT 1 FROM users u WHERE u.id = t.owner_id AND u.active))",
                params![now, now.saturating_add(window_ms)],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    /// Everything authentication needs about token `id`, in one read transaction.
    pub fn auth_record(&self, id: &str) -> Result<Option<AuthRecord>> {
        self.with_conn_checking_itself(|c| auth_record_in(c, id))
    }

    /// Note a successful use (not audited: it is not a change anyone made), written soon in a batch with other tokens' (see `writer.rs`): for
    /// the request path, which must not cost a commit per token — every commit empties the
    /// token cache. Never blocks; a failed write is logged and counted by the writer.
    pub fn note_last_use(&self, id: &str, at: i64, addr: IpAddr) {
        self.inner.batch_writer.last_use(&self.inner, id, at, addr);
    }
}

/// How far past the present a stored last use may lie before it is taken as a clock's error
/// (one that was ahead, or went back since) and overwritten by a use of now: a minute, well
/// past any delay between a use and its write.
const FUTURE_USE_MS: i64 = 60_000;

/// Records a use at `at` (from `addr`), unless the stored one is later: batches of two
/// processes may be written out of order. A stored use more than [`FUTURE_USE_MS`] past the
/// present is overwritten all the same — else, after the clock went back, no use (from a new
/// address included) would be recorded until the clock caught up with it.
pub(super) fn write_last_use(c: &Connection, id: &str, at: i64, addr: &str) -> Result<()> {
    c.prepare_cached(
        "UPDATE tokens SET last_used_at = ?1, last_used_addr = ?2
         WHERE id = ?3 AND (last_used_at IS NULL OR last_used_at < ?1 OR last_used_at > ?4)",
    )?
    .execute(params![
        at,
        addr,
        id,
        crate::clock::now_ms().saturating_add(FUTURE_USE_MS)
    ])?;
    Ok(())
}

/// Refuse `name` for a project or repository token when it is not printable ASCII, or when a
/// user has that name (see [`Store::insert_token`]).
/// `name` as git writes a committer's name into a reflog line (`ident.c`,
/// `strbuf_addstr_without_crud`): without the "crud" git strips from both ends (control
/// characters and spaces, `. , : ; < > " \ '`), and without the line's delimiters `<`, `>`
/// and newlines anywhere.
pub fn as_git_writes_it(name: &str) -> String {
    let crud =
        |c: char| c <= ' ' || matches!(c, '.' | ',' | ':' | ';' | '<' | '>' | '"' | '\\' | '\'');
    name.trim_matches(crud)
        .chars()
        .filter(|c| !matches!(c, '\n' | '<' | '>'))
        .collect()
}

/// Refuse `name` for a new (or renamed) project or repository token when it has a comma: an
/// HTTP upstream gets the name in its identity header, where a comma makes a list, and one
/// that reads the last item (as of a header sent twice, merged) would take `ci, alice` for
/// alice. Not checked at login: a token named so before the rule keeps working (with the
/// built-in runner the name is `REMOTE_USER`, no list); only a new such name is refused.
fn refuse_a_listing_name(name: &str) -> Result<()> {
    if name.contains(',') {
        return Err(StoreError::Invalid(format!(
            "a project or repository token's name is the identity the git backend sees, sent in \
             a header where a comma makes it a list whose last item could pass for a user \
             ('{name}'): leave the comma out"
        )));
    }
    Ok(())
}

fn refuse_user_name(c: &rusqlite::Connection, name: &str) -> Result<()> {
    // The backend knows the token by its name (its identity header, REMOTE_USER, reflogs), so
    // the name must not pass for a user's. Beyond ASCII, look-alikes (the Kelvin sign K,
    // full-width letters, a dotted capital I) would slip past any comparison short of Unicode
    // normalisation, and the user side compares with SQLite's ASCII-only NOCASE.
    if !name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(StoreError::Invalid(format!(
            "a project or repository token's name is the identity the git backend sees (in \
             reflogs and hooks), so it is kept to printable ASCII — letters, digits, spaces and \
             punctuation — and cannot pass for a user's name; '{name}' is not"
        )));
    }
    // Case-insensitively: some upstreams (Gitea) treat user names so. And as git writes it into
    // a reflog, which drops `<`, `>` and leading or trailing punctuation: `al<>ice` and
    // `alice.` are written `alice` there.
    // Both names as git writes them: a user `ci.` is written `ci` as well.
    let trimmed = name.trim().to_lowercase();
    let in_reflogs = as_git_writes_it(name).to_lowercase();
    let passes_for_a_user = super::users::find_user(c, &trimmed)?.is_some() || {
        let mut users = c.prepare_cached("SELECT slug FROM users")?;
        let slugs = users.query_map([], |r| r.get::<_, String>(0))?;
        let mut found = false;
        for slug in slugs {
            if as_git_writes_it(&slug?).eq_ignore_ascii_case(&in_reflogs) {
                found = true;
                break;
            }
        }
        found
    };
    if passes_for_a_user {
        return Err(StoreError::Conflict(format!(
            "a project or repository token cannot be named '{name}': that is a user's name, \
             and the git backend knows a project or repository token by its name, so it would \
             pass for that user there; choose another name"
        )));
    }
    Ok(())
}

/// The auth record of token `id`, read on `c` in one read transaction.
/// Makes the statements a token lookup runs, as a readiness check: a store whose tables were
/// changed by hand (a column renamed) fails every lookup, and is not ready — its `SELECT 1`s
/// alone would pass.
pub(super) fn lookups_can_run(c: &Connection) -> Result<()> {
    // Made afresh, not taken from the cache: a cached statement is made again for a changed
    // schema only when it runs.
    c.prepare(&format!("{SELECT} WHERE t.id = ?1"))?;
    super::users::require_user(c, "")
        .map(drop)
        .or_else(|e| match e {
            StoreError::NotFound(_) => Ok(()),
            e => Err(e),
        })?;
    super::grants::grants_of(c, 0)?;
    Ok(())
}

pub(super) fn auth_record_in(c: &mut Connection, id: &str) -> Result<Option<AuthRecord>> {
    let tx = c.transaction()?;
    // A newer gitgate may have migrated the store under this running one (its CLI run before
    // the server was restarted): its tables may say a revocation or a disabled owner in a way
    // this one cannot read, so nothing is decided from them. Every commit of another process
    // empties the token cache, so the first lookup after the migration lands here. (Page 1's
    // header, which the transaction reads anyway.)
    super::schema::refuse_newer(&tx)?;
    let found = tx
        .prepare_cached(&format!("{SELECT} WHERE t.id = ?1"))?
        .query_row([id], token_from_row)
        .optional()?;
    let Some((token, secret_hash, owner_id, previous)) = found else {
        return Ok(None);
    };
    let owner = match (owner_id, &token.owner) {
        (Some(owner_id), Some(slug)) => {
            let user = require_user(&tx, slug)?;
            Some(Owner {
                slug: user.slug,
                role: user.role,
                active: user.active,
                grants: grants_of(&tx, owner_id)?,
            })
        }
        _ => None,
    };
    let unusable_name = match owner_id {
        None => match refuse_user_name(&tx, &token.name) {
            Ok(()) => None,
            Err(StoreError::Invalid(why) | StoreError::Conflict(why)) => Some(why),
            Err(e) => return Err(e),
        },
        Some(_) => None,
    };
    Ok(Some(AuthRecord {
        token,
        secret_hash,
        previous,
        owner,
        unusable_name,
        queued_use: QueuedUse::default(),
        previous_said: QueuedUse::default(),
    }))
}

/// A revoked token never authenticates again, so a rate-limit rule of its own (a scoped
/// token's, `token:ID`) would never apply: it goes with the revocation, audited, so that
/// `ratelimit list` shows only rules that count.
fn clear_the_rule_of_a_revoked_token(
    tx: &rusqlite::Transaction<'_>,
    actor: &Actor,
    id: &str,
) -> Result<()> {
    let principal = format!("token:{id}");
    let n = tx.execute("DELETE FROM rate_limits WHERE principal = ?1", [&principal])?;
    if n > 0 {
        record(
            tx,
            actor,
            "ratelimit.cleared",
            &principal,
            "the token was revoked",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{
        actor, edit_by_hand, personal_token, repository_token, temp_store,
    };
    use super::*;
    use crate::store::CacheLookup;

    fn perms(names: &[&str]) -> TokenPermissions {
        TokenPermissions::from_names(TokenKind::Personal, names).unwrap()
    }

    #[test]
    fn a_use_is_queued_once_an_interval_whatever_the_cached_record_says() {
        let (_dir, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        store
            .insert_token(&personal_token("abcdefghijkl", "laptop", "alice"), &actor())
            .unwrap();
        let mut record = store.auth_record("abcdefghijkl").unwrap().unwrap();
        assert!(record.claim_use(10_000, 5_000), "never used: queue it");
        assert!(!record.claim_use(10_001, 5_000), "queued a moment ago");
        assert!(
            !record.clone().claim_use(14_999, 5_000),
            "a clone knows it too"
        );
        assert!(record.claim_use(15_000, 5_000), "an interval later");
        record.token.last_used_at = Some(30_000);
        assert!(!record.claim_use(31_000, 5_000), "stored a moment ago");
        assert!(record.claim_use(35_000, 5_000));
        // A stored use far past now: the clock went back. Recorded again, not in a month.
        let mut record = store.auth_record("abcdefghijkl").unwrap().unwrap();
        record.token.last_used_at = Some(40_000 + 30 * 86_400_000);
        assert!(
            record.claim_use(40_000, 5_000),
            "a use stored in the future"
        );
        assert!(!record.claim_use(40_001, 5_000), "queued a moment ago");
        record.token.last_used_at = Some(50_000 + FUTURE_USE_MS);
        assert!(
            !record.claim_use(50_000, 5_000),
            "within a minute: in order"
        );
    }

    #[test]
    fn names_that_hide_or_reorder_text_are_refused() {
        for bad in [
            "alice\u{200B}",
            "\u{202E}nimda",
            "ci\u{2066}x",
            "\u{FEFF}deploy",
            "a\u{00AD}b",
            // Shown as a blank; a tag; a line break; a noncharacter; a smear of accents.
            "a\u{3164}b",
            "\u{115F}",
            "ci\u{E0041}",
            "ci \u{1F3F4}x\u{E0067}",
            "one\u{2028}two",
            "one\u{2029}two",
            "x\u{FFFF}",
            "x\u{1FFFE}",
            &format!("z{}", "\u{0301}".repeat(99)),
        ] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains("invisible"), "{bad:?}: {e}");
        }
        // Too long: said with its length.
        let e = validate_name(&"x".repeat(101)).unwrap_err().to_string();
        assert!(e.contains("1-100 characters: this one has 101"), "{e}");
        validate_name(&"x".repeat(100)).unwrap();
        // A secret pasted as the name: never stored, never echoed.
        let secret = "ggt_2ssrpb4buu6m_4sxQ0aaBbCcDdEeFfGgHhIiJjKkLlMmNnOoPpQqRr_onlebw";
        // Long hyphenated labels in mixed case are names, not secrets.
        for good in [
            "GitHubActions-deploy-production-cluster-eu-west",
            "Jenkins-nightly-build-and-release-pipeline",
        ] {
            validate_name(good).unwrap();
        }
        for bad in [
            secret.to_string(),
            format!("ci {secret}"),
            secret[17..].to_string(),
        ] {
            let e = validate_name(&bad).unwrap_err().to_string();
            assert!(e.contains("looks like a secret"), "{bad:?}: {e}");
            assert!(!e.contains(&secret[17..]), "{e}");
        }
        for good in [
            "laptop",
            "CI – nightly",
            "Zoë's key",
            "デプロイ",
            "ci (team/app)",
            // Accents as scripts write them, precomposed or combining (Vietnamese: two).
            "Nguyễn's laptop",
            "Nguye\u{0302}\u{0303}n's laptop",
            // A flag of a subdivision (Scotland's: tags after the black flag); Mongolian with
            // a free variation selector.
            "CI \u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
            "\u{182D}\u{180B}\u{1820}",
        ] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn insert_list_revoke_and_auth_record() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        store
            .add_grant(
                "alice",
                &Target::parse("team").unwrap(),
                Level::Write,
                &actor(),
            )
            .unwrap();
        let t = store
            .insert_token(
                &NewToken {
                    id: "abcdefghijkl",
                    kind: TokenKind::Personal,
                    name: "laptop",
                    owner: Some("alice"),
                    scope: None,
                    permissions: perms(&["REPO_WRITE"]),
                    secret_hash: [7; 32],
                    expires_at: None,
                    allowed_networks: &[],
                    created_at: clock::now_ms(),
                },
                &actor(),
            )
            .unwrap();
        assert_eq!(t.owner.as_deref(), Some("alice"));
        let rec = store.auth_record("abcdefghijkl").unwrap().unwrap();
        assert_eq!(rec.secret_hash, vec![7; 32]);
        let owner = rec.owner.unwrap();
        assert_eq!(owner.grants.len(), 1);
        assert!(store.auth_record("nope").unwrap().is_none());
        assert_eq!(store.tokens(Some("alice")).unwrap().len(), 1);
        assert!(store.tokens(None).unwrap()[0]
            .to_json()
            .get("token")
            .is_none());

        store
            .with_conn(|c| write_last_use(c, "abcdefghijkl", 1000, "127.0.0.1"))
            .unwrap();
        assert_eq!(
            store.token("abcdefghijkl").unwrap().unwrap().last_used_at,
            Some(1000)
        );
        // An older use does not overwrite a newer one.
        store
            .with_conn(|c| write_last_use(c, "abcdefghijkl", 999, "192.0.2.1"))
            .unwrap();
        let t = store.token("abcdefghijkl").unwrap().unwrap();
        assert_eq!(t.last_used_at, Some(1000));
        assert_eq!(t.last_used_addr.as_deref(), Some("127.0.0.1"));
        // One stored in the future (written under a clock that was ahead) gives way to now's.
        let now = crate::clock::now_ms();
        let ahead = now + 30 * 86_400_000;
        for (at, addr) in [(ahead, "192.0.2.9"), (now, "192.0.2.10")] {
            store
                .with_conn(|c| write_last_use(c, "abcdefghijkl", at, addr))
                .unwrap();
        }
        let t = store.token("abcdefghijkl").unwrap().unwrap();
        assert_eq!(t.last_used_at, Some(now));
        assert_eq!(t.last_used_addr.as_deref(), Some("192.0.2.10"));

        store.revoke_token("abcdefghijkl", &actor()).unwrap();
        assert!(store
            .token("abcdefghijkl")
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some());
        assert!(matches!(
            store.revoke_token("abcdefghijkl", &actor()),
            Err(StoreError::Conflict(_))
        ));
    }

    /// The settings check of a change runs inside its write transaction: no other process
    /// can change a setting (the expiry policy) between the check and the write.
    #[test]
    fn names_are_cleaned_as_git_cleans_them_for_reflogs() {
        for (name, written) in [
            ("alice", "alice"),
            ("al<>ice", "alice"),
            ("alice.", "alice"),
            ("'alice'", "alice"),
            ("  \"alice\";", "alice"),
            ("<alice>", "alice"),
            ("ci bot", "ci bot"),
            ("ci.bot", "ci.bot"),
            ("a\nb", "ab"),
        ] {
            assert_eq!(as_git_writes_it(name), written, "{name:?}");
        }
    }

    /// A scoped token whose name git would write into a reflog as a user's is refused, and a
    /// user is not added under the name such a token would be written as.
    #[test]
    fn a_scoped_name_git_would_write_as_a_users_is_refused() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        let repo = crate::policy::Target::parse("team/app").unwrap();
        for (i, name) in ["al<>ice", "alice.", "'Alice'", "<alice>"]
            .iter()
            .enumerate()
        {
            let id = format!("scoped{i:06}");
            let t = repository_token(&id, name, &repo);
            match store.insert_token(&t, &actor()) {
                Err(StoreError::Conflict(m)) => assert!(m.contains("a user's name"), "{m}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let t = repository_token("scoped000009", "bob;", &repo);
        store.insert_token(&t, &actor()).unwrap();
        match store.add_user("bob", "h", Role::User, &actor()) {
            Err(StoreError::Conflict(m)) => assert!(m.contains("scoped000009"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A user whose own name git writes otherwise: `ci.` is written `ci`, both ways.
        match store.add_user("bob.", "h", Role::User, &actor()) {
            Err(StoreError::Conflict(m)) => assert!(m.contains("scoped000009"), "{m}"),
            other => panic!("{other:?}"),
        }
        store.add_user("ci.", "h", Role::User, &actor()).unwrap();
        for (i, name) in ["ci", "'ci.'", "ci;"].iter().enumerate() {
            let id = format!("scopedci{i:04}");
            let t = repository_token(&id, name, &repo);
            match store.insert_token(&t, &actor()) {
                Err(StoreError::Conflict(m)) => assert!(m.contains("a user's name"), "{m}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
    }

    /// A rotation without an overlap keeps the old secret's hash only to tell its holder: it
    /// never works again, whatever the clock says (stepped back by NTP or a snapshot resume).
    #[test]
    fn a_secret_replaced_at_once_never_works_again() {
        let (_d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        let old = store
            .with_conn(|c| {
                Ok(
                    c.query_row("SELECT secret_hash FROM tokens WHERE id = ?1", [id], |r| {
                        r.get::<_, Vec<u8>>(0)
                    })?,
                )
            })
            .unwrap();
        store
            .rotate_token(id, [9; 32], None, &|_| Ok(()), &actor())
            .unwrap();
        let record = store.auth_record(id).unwrap().unwrap();
        let now = clock::now_ms();
        for at in [now, now - 86_400_000, 1] {
            assert!(!record.secret_matches(&old, at), "{at}");
            assert!(record.replaced_secret_matches(&old, at), "{at}");
        }
        assert!(record.secret_matches(&[9; 32], now));
        assert!(!record.replaced_secret_matches(&[9; 32], now));
    }

    /// A rotation's overlap ends with its token: the old secret is kept no later than the
    /// expiry, and the audit says so.
    #[test]
    fn a_rotation_overlap_ends_with_its_token() {
        let (_d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        let now = clock::now_ms();
        let expiry = now + 60_000;
        store
            .with_conn(|c| {
                c.execute("UPDATE tokens SET expires_at = ?1", params![expiry])?;
                Ok(())
            })
            .unwrap();
        store
            .rotate_token(id, [9; 32], Some(now + 600_000), &|_| Ok(()), &actor())
            .unwrap();
        let (_, until) = store.auth_record(id).unwrap().unwrap().previous.unwrap();
        assert_eq!(until, expiry);
        let rotated = store
            .audit_events(None, 100)
            .unwrap()
            .into_iter()
            .find(|e| e.action == "token.rotated")
            .unwrap();
        assert!(
            rotated.detail.contains(&clock::datetime(expiry)),
            "{}",
            rotated.detail
        );
    }

    /// The early warning counts tokens that could be used until they expire: not revoked ones,
    /// nor those of a disabled owner (git refuses them already).
    #[test]
    fn tokens_expiring_soon_are_only_usable_ones() {
        let (_d, store) = temp_store();
        let now = clock::now_ms();
        let ids = alices_tokens(&store, 3);
        store
            .with_conn(|c| {
                c.execute(
                    "UPDATE tokens SET expires_at = ?1",
                    params![now + 3 * 86_400_000],
                )?;
                Ok(())
            })
            .unwrap();
        let week = 7 * 86_400_000;
        assert_eq!(store.count_expiring(now, week).unwrap(), 3);
        store.revoke_token(&ids[0], &actor()).unwrap();
        assert_eq!(store.count_expiring(now, week).unwrap(), 2);
        store.set_user_active("alice", false, &actor()).unwrap();
        assert_eq!(store.count_expiring(now, week).unwrap(), 0);
    }

    /// The cap is counted in the write that adds the token, not only by the caller before it:
    /// a token added straight to the store past the cap is refused, and a revoked one frees
    /// its place.
    #[test]
    fn the_personal_token_cap_is_kept_by_the_write_itself() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        let ids: Vec<String> = (0..=MAX_LIVE_PERSONAL_TOKENS)
            .map(|n| format!("cap{n:09}"))
            .collect();
        let add = |id: &str| {
            store.insert_token(
                &NewToken {
                    id,
                    kind: TokenKind::Personal,
                    name: "laptop",
                    owner: Some("alice"),
                    scope: None,
                    permissions: perms(&["REPO_READ"]),
                    secret_hash: [7; 32],
                    expires_at: None,
                    allowed_networks: &[],
                    created_at: clock::now_ms(),
                },
                &actor(),
            )
        };
        for id in &ids[..MAX_LIVE_PERSONAL_TOKENS as usize] {
            add(id).unwrap();
        }
        let last = &ids[MAX_LIVE_PERSONAL_TOKENS as usize];
        match add(last) {
            Err(StoreError::Invalid(m)) => assert!(m.contains("revoke one first"), "{m}"),
            other => panic!("over the cap: {other:?}"),
        }
        assert!(store.token(last).unwrap().is_none());
        store.revoke_token(&ids[0], &actor()).unwrap();
        add(last).unwrap();
    }

    #[test]
    fn the_settings_check_runs_under_the_write_lock_and_can_refuse() {
        let (dir, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        let path = dir.path().join("t.db");
        let other_writer_was_kept_out = std::cell::Cell::new(false);
        let check = |setting: &dyn Fn(&str) -> Result<Option<String>>| {
            assert_eq!(setting("policy.expiry_required")?, None);
            let other = rusqlite::Connection::open(&path).unwrap();
            other
                .busy_timeout(std::time::Duration::from_millis(50))
                .unwrap();
            let tried = other.execute(
                "INSERT INTO settings (key, value) VALUES ('policy.expiry_required', 'true')",
                [],
            );
            other_writer_was_kept_out.set(matches!(
                tried.map_err(|e| e.sqlite_error_code()),
                Err(Some(rusqlite::ErrorCode::DatabaseBusy))
            ));
            Ok(())
        };
        store
            .insert_token_if(
                &personal_token("abcdefghijkl", "a", "alice"),
                &check,
                &actor(),
            )
            .unwrap();
        assert!(other_writer_was_kept_out.get());

        let refuse = |_: &dyn Fn(&str) -> Result<Option<String>>| {
            Err(StoreError::Invalid("no (test)".into()))
        };
        let e = store
            .insert_token_if(
                &personal_token("mnopqrstuvwx", "b", "alice"),
                &refuse,
                &actor(),
            )
            .unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)));
        assert!(store.token("mnopqrstuvwx").unwrap().is_none());
    }

    /// A project's or repository's tokens are read by SQL, also a row whose scope was edited by
    /// hand into another spelling of the same repository; not another repository's.
    #[test]
    fn scoped_tokens_are_those_of_their_scope_however_spelled() {
        let (dir, store) = temp_store();
        let app = Target::parse("team/app").unwrap();
        let apple = Target::parse("team/apple").unwrap();
        for (id, scope) in [
            ("aaaaaaaaaaaa", &app),
            ("bbbbbbbbbbbb", &app),
            ("cccccccccccc", &apple),
        ] {
            store
                .insert_token(&repository_token(id, id, scope), &actor())
                .unwrap();
        }
        let raw = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        raw.execute(
            "UPDATE tokens SET scope = 'team/app.git' WHERE id = 'bbbbbbbbbbbb'",
            [],
        )
        .unwrap();
        let listed = |scope: &Target| -> Vec<String> {
            let page = store.token_page(Listing::Scoped(scope), 0, 25).unwrap();
            let mut ids: Vec<String> = page.tokens.into_iter().map(|t| t.id).collect();
            ids.sort();
            ids
        };
        assert_eq!(listed(&app), ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]);
        assert!(listed(&Target::parse("team").unwrap()).is_empty());
    }

    #[test]
    fn scoped_tokens_have_no_owner() {
        let (_d, store) = temp_store();
        let scope = Target::parse("team/app").unwrap();
        let t = store
            .insert_token(
                &NewToken {
                    expires_at: Some(5),
                    created_at: clock::now_ms(),
                    ..repository_token("mnopqrstuvwx", "ci", &scope)
                },
                &actor(),
            )
            .unwrap();
        assert_eq!(t.principal(), "repo:team/app");
        assert!(store
            .auth_record("mnopqrstuvwx")
            .unwrap()
            .unwrap()
            .owner
            .is_none());
    }

    #[test]
    fn a_store_migrated_by_a_newer_gitgate_decides_nothing_more() {
        let (d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        let CacheLookup::Miss(at) = store.cached_auth_record(id).unwrap() else {
            panic!("a first lookup misses");
        };
        assert!(store.load_auth_record(id, at).unwrap().is_some());
        assert!(matches!(
            store.cached_auth_record(id).unwrap(),
            CacheLookup::Hit(_)
        ));
        assert!(store.ping().is_ok());
        // A newer gitgate's CLI migrates the store while this one serves.
        edit_by_hand(
            &d,
            &format!(
                "PRAGMA user_version = {}",
                super::super::schema::CURRENT + 1
            ),
        );
        let CacheLookup::Miss(at) = store.cached_auth_record(id).unwrap() else {
            panic!("another process's commit empties the cache");
        };
        let e = store.load_auth_record(id, at).unwrap_err().to_string();
        assert!(e.contains("newer than this gitgate knows"), "{e}");
        assert!(store.auth_record("nosuchtoken1").is_err());
        // Not ready either (`/readyz`), so that a load balancer sends requests elsewhere.
        let e = store.ping().unwrap_err().to_string();
        assert!(e.contains("newer than this gitgate knows"), "{e}");
        // Nor is anything else read or written there: the REST API's logins, lists and changes.
        for e in [
            store.user("alice").err(),
            store.tokens(Some("alice")).err(),
            store.revoke_token(id, &actor()).err(),
            store.add_user("carol", "h", Role::User, &actor()).err(),
        ] {
            let e = e.expect("refused").to_string();
            assert!(e.contains("newer than this gitgate knows"), "{e}");
        }
    }

    /// A row edited by hand into what gitgate cannot read fails closed, and the error names
    /// the token, so that the operator knows which row to mend.
    #[test]
    fn an_unreadable_token_row_is_named_in_the_error() {
        let (d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        store
            .insert_token(&personal_token("abcdefghijkl", "laptop", "alice"), &actor())
            .unwrap();
        edit_by_hand(&d, "UPDATE tokens SET permissions = 'BOGUS'");
        store
            .insert_token(&personal_token("bcdefghijklm", "desk", "alice"), &actor())
            .unwrap();
        // The others are still listed; that one is said, not listed.
        let log = crate::store::test_support::logged(|| {
            let listed = store.tokens(Some("alice")).unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].id, "bcdefghijklm");
        });
        assert!(log.contains("token abcdefghijkl cannot be read"), "{log}");
        for e in [
            store.auth_record("abcdefghijkl").unwrap_err().to_string(),
            store.token("abcdefghijkl").unwrap_err().to_string(),
        ] {
            assert!(
                e.contains("token abcdefghijkl cannot be read from the store")
                    && e.contains("BOGUS"),
                "{e}"
            );
        }
        // The operator can still end it for good.
        assert!(store
            .revoke_unreadable_token("abcdefghijkl", &actor())
            .unwrap());
        assert!(!store
            .revoke_unreadable_token("abcdefghijkl", &actor())
            .unwrap());
        assert!(!store
            .revoke_unreadable_token("nosuchtoken1", &actor())
            .unwrap());
    }

    /// A project or repository token named after a user in a store edited by hand: its record
    /// says so, for the policy to refuse it (see `policy`).
    #[test]
    fn a_scoped_token_renamed_by_hand_to_a_user_name_is_marked_unusable() {
        let (d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        let scope = Target::parse("team/app").unwrap();
        let id = "mnopqrstuvwx";
        store
            .insert_token(&repository_token(id, "ci", &scope), &actor())
            .unwrap();
        assert!(store
            .auth_record(id)
            .unwrap()
            .unwrap()
            .unusable_name
            .is_none());
        rusqlite::Connection::open(d.path().join("t.db"))
            .unwrap()
            .execute("UPDATE tokens SET name = 'Alice' WHERE id = ?1", [id])
            .unwrap();
        let why = store.auth_record(id).unwrap().unwrap().unusable_name;
        assert!(why.is_some_and(|w| w.contains("that is a user's name")));
        // A comma, refused for a new name only: a token named so before the rule still works.
        rusqlite::Connection::open(d.path().join("t.db"))
            .unwrap()
            .execute(
                "UPDATE tokens SET name = 'build, deploy' WHERE id = ?1",
                [id],
            )
            .unwrap();
        assert_eq!(store.auth_record(id).unwrap().unwrap().unusable_name, None);
    }

    #[test]
    fn a_scoped_token_and_a_user_never_share_a_name() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        let scope = Target::parse("team").unwrap();
        let project = |id: &'static str, name: &'static str| NewToken {
            id,
            kind: TokenKind::Project,
            name,
            owner: None,
            scope: Some(&scope),
            permissions: TokenPermissions::from_names(TokenKind::Project, &["REPO_READ"]).unwrap(),
            secret_hash: [1; 32],
            expires_at: None,
            allowed_networks: &[],
            created_at: 1,
        };
        // Named after a user (in any case): the backend would take it for that user.
        for name in ["alice", "Alice"] {
            match store.insert_token(&project("mnopqrstuvwx", name), &actor()) {
                Err(StoreError::Conflict(m)) => assert!(m.contains("a user's name"), "{m}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        // Look-alikes of a user's name (the Kelvin sign, a full-width letter, a dotted capital
        // I): refused with every other name beyond printable ASCII, in either order.
        for name in ["\u{212A}ate", "\u{FF41}lice", "AL\u{130}CE", "caf\u{E9}"] {
            match store.insert_token(&project("mnopqrstuvwx", name), &actor()) {
                Err(StoreError::Invalid(m)) => assert!(m.contains("printable ASCII"), "{m}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        // A comma: the identity header would be a list, whose last item could be a user.
        for name in ["x, alice", "ci,deploy"] {
            match store.insert_token(&project("mnopqrstuvwx", name), &actor()) {
                Err(StoreError::Invalid(m)) => assert!(m.contains("leave the comma out"), "{m}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        // Spaces around a name: the backend (HTTP, git) trims them, so they are refused.
        for name in ["alice ", " Alice", "ci "] {
            match store.insert_token(&project("mnopqrstuvwx", name), &actor()) {
                Err(StoreError::Invalid(m)) => {
                    assert!(m.contains("begin or end with a space"), "{m}")
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        store
            .insert_token(&project("mnopqrstuvwx", "ci"), &actor())
            .unwrap();
        // A name with spaces from an older store still keeps a user from taking the name.
        store
            .insert_token(&project("legacyabcdef", "dave"), &actor())
            .unwrap();
        store
            .with_conn(|c| {
                c.execute(
                    "UPDATE tokens SET name = 'dave ' WHERE id = 'legacyabcdef'",
                    [],
                )?;
                Ok(())
            })
            .unwrap();
        assert!(matches!(
            store.add_user("dave", "h", Role::User, &actor()),
            Err(StoreError::Conflict(_))
        ));
        // Renamed to a user's name: refused, and nothing changed.
        let rename = TokenEdit {
            name: Some("alice".into()),
            ..TokenEdit::default()
        };
        assert!(matches!(
            store.edit_token("mnopqrstuvwx", &rename, &actor()),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.token("mnopqrstuvwx").unwrap().unwrap().name, "ci");
        let lookalike = TokenEdit {
            name: Some("\u{212A}ate".into()),
            ..TokenEdit::default()
        };
        assert!(matches!(
            store.edit_token("mnopqrstuvwx", &lookalike, &actor()),
            Err(StoreError::Invalid(_))
        ));
        // A new user named like a live scoped token: refused, until the token is revoked.
        match store.add_user("ci", "h", Role::User, &actor()) {
            Err(StoreError::Conflict(m)) => assert!(m.contains("mnopqrstuvwx"), "{m}"),
            other => panic!("{other:?}"),
        }
        store.revoke_token("mnopqrstuvwx", &actor()).unwrap();
        store.add_user("ci", "h", Role::User, &actor()).unwrap();
        // ... or has expired (it can never be used again: its expiry never changes).
        store
            .insert_token(
                &NewToken {
                    expires_at: Some(clock::now_ms() - 1),
                    ..project("expiredabcde", "old-ci")
                },
                &actor(),
            )
            .unwrap();
        store.add_user("old-ci", "h", Role::User, &actor()).unwrap();
        // A personal token may be called anything (beyond ASCII too), its owner's name included.
        store
            .insert_token(&personal_token("abcdefghijkl", "alice", "alice"), &actor())
            .unwrap();
        store
            .insert_token(
                &personal_token("bcdefghijklm", "Zo\u{EB}'s key", "alice"),
                &actor(),
            )
            .unwrap();
    }

    #[test]
    fn an_edit_that_sends_the_name_back_unchanged_is_not_held_to_newer_name_rules() {
        let (_d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        store
            .insert_token(&personal_token("abcdefghijkl", "ok", "alice"), &actor())
            .unwrap();
        // A name from before the rule on secret-like names.
        let old = "x".repeat(20) + "Aa1" + &"y".repeat(20);
        store
            .with_conn(|c| {
                c.execute(
                    "UPDATE tokens SET name = ?1 WHERE id = 'abcdefghijkl'",
                    [&old],
                )?;
                Ok(())
            })
            .unwrap();
        let same = TokenEdit {
            name: Some(old.clone()),
            permissions: Some(perms(&["REPO_READ"])),
            ..TokenEdit::default()
        };
        store.edit_token("abcdefghijkl", &same, &actor()).unwrap();
        // A new name is held to them.
        let other = TokenEdit {
            name: Some(old.replace('x', "z")),
            ..TokenEdit::default()
        };
        assert!(matches!(
            store.edit_token("abcdefghijkl", &other, &actor()),
            Err(StoreError::Invalid(_))
        ));
    }

    /// `n` personal tokens of new users, by id: alice's first, then (past the cap of
    /// [`MAX_LIVE_PERSONAL_TOKENS`] per user) alice2's, alice3's...
    fn alices_tokens(store: &Store, n: usize) -> Vec<String> {
        let ids: Vec<String> = (0..n).map(|i| format!("tok{i:09}")).collect();
        let per_user = MAX_LIVE_PERSONAL_TOKENS as usize;
        for (i, id) in ids.iter().enumerate() {
            let owner = match i / per_user {
                0 => "alice".to_string(),
                n => format!("alice{}", n + 1),
            };
            if i % per_user == 0 {
                store.add_user(&owner, "h", Role::User, &actor()).unwrap();
            }
            store
                .insert_token(&personal_token(id, id, &owner), &actor())
                .unwrap();
        }
        ids
    }

    /// Uses noted on the request path reach the store soon, with the newest use of each token.
    #[test]
    fn last_uses_noted_later_are_written_soon_the_newest_winning() {
        let (_d, store) = temp_store();
        let ids = alices_tokens(&store, 50);
        let addr: IpAddr = "192.0.2.9".parse().unwrap();
        for (i, id) in ids.iter().enumerate() {
            store.note_last_use(id, 1000 + i as i64, addr);
            // A later use of the same token wins; an older one does not.
            store.note_last_use(id, 5000 + i as i64, addr);
            store.note_last_use(id, 10, "198.51.100.1".parse().unwrap());
        }
        let used = |store: &Store| -> Vec<(Option<i64>, Option<String>)> {
            ids.iter()
                .map(|id| {
                    let t = store.token(id).unwrap().unwrap();
                    (t.last_used_at, t.last_used_addr)
                })
                .collect()
        };
        let expected: Vec<_> = (0..50)
            .map(|i| (Some(5000 + i as i64), Some("192.0.2.9".to_string())))
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let seen = loop {
            let seen = used(&store);
            if seen == expected || std::time::Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(seen, expected);
    }

    /// However many tokens are in use, their last uses cost about one commit a second — each
    /// commit empties the token cache — not one commit per token.
    #[test]
    fn last_uses_of_many_tokens_cost_about_one_commit_a_second() {
        use std::time::{Duration, Instant};
        let (_d, store) = temp_store();
        let ids = alices_tokens(&store, 200);
        let addr: IpAddr = "192.0.2.9".parse().unwrap();
        let start = Instant::now();
        std::thread::scope(|s| {
            for chunk in ids.chunks(50) {
                let store = &store;
                s.spawn(move || {
                    for round in 1..=5 {
                        for id in chunk {
                            store.note_last_use(id, round, addr);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
            }
        });
        let deadline = start + Duration::from_secs(20);
        while !ids
            .iter()
            .all(|id| store.token(id).unwrap().unwrap().last_used_at == Some(5))
        {
            assert!(Instant::now() < deadline, "last uses not written in time");
            std::thread::sleep(Duration::from_millis(20));
        }
        let commits = store.inner.batch_writer.last_use_commits();
        // One right away, then at most one a second (and one more for a window in progress).
        let bound = 2 + start.elapsed().as_secs();
        assert!(
            (1..=bound).contains(&commits),
            "{commits} commits for 200 tokens used 5 times each in {:?}",
            start.elapsed()
        );
    }

    /// A token ends at its expiry: active until the millisecond before, not at it.
    #[test]
    fn a_token_is_no_longer_active_at_its_expiry() {
        let (_d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        let mut t = store.token(id).unwrap().unwrap();
        t.expires_at = Some(1_000);
        assert!(t.is_active(999));
        assert!(!t.is_active(1_000));
        t.expires_at = None;
        assert!(t.is_active(i64::MAX));
        t.revoked_at = Some(0);
        assert!(!t.is_active(0));
    }

    /// The store's record of token `id` rotated to the secret hash `[9; 32]`, the old one
    /// (returned) kept until `until`.
    fn rotated_with_overlap(store: &Store, id: &str, until: i64) -> (AuthRecord, Vec<u8>) {
        let old = store.auth_record(id).unwrap().unwrap().secret_hash;
        store
            .rotate_token(id, [9; 32], Some(until), &|_| Ok(()), &actor())
            .unwrap();
        let record = store.auth_record(id).unwrap().unwrap();
        assert_eq!(record.previous.as_ref().unwrap().1, until);
        (record, old)
    }

    /// A rotation's overlap ends at its `until`: the old secret works until the millisecond
    /// before, and from then on is only recognised as replaced — never both, never neither.
    #[test]
    fn the_old_secret_stops_working_at_the_end_of_its_overlap() {
        let (_d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        let until = clock::now_ms() + 600_000;
        let (record, old) = rotated_with_overlap(&store, id, until);
        assert!(record.secret_matches(&old, until - 1));
        assert!(!record.replaced_secret_matches(&old, until - 1));
        assert!(!record.secret_matches(&old, until));
        assert!(record.replaced_secret_matches(&old, until));
        // The new secret works throughout.
        assert!(record.secret_matches(&[9; 32], until - 1));
        assert!(record.secret_matches(&[9; 32], until));
    }

    /// A use of the previous secret inside its overlap is said once a minute, not at every
    /// request; the current secret's use and the old one's past the overlap are not said.
    #[test]
    fn a_use_of_the_previous_secret_is_said_once_a_minute() {
        let (_d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        let now = clock::now_ms();
        let until = now + 600_000;
        let (record, old) = rotated_with_overlap(&store, id, until);
        assert_eq!(record.previous_used(&[9; 32], now), None);
        assert_eq!(record.previous_used(&old, now), Some(until));
        assert_eq!(record.previous_used(&old, now + 59_999), None);
        assert_eq!(record.previous_used(&old, now + 60_000), Some(until));
        assert_eq!(record.previous_used(&old, until), None);
    }

    /// The wall clock stepped back (an NTP correction) after the previous secret's use was
    /// said: the next use is said again, not kept unsaid until the clock is back where it was.
    /// Within a minute of the saying, a moment earlier (two requests racing) is not a step.
    #[test]
    fn a_use_of_the_previous_secret_is_said_again_after_the_clock_went_back() {
        let (_d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        let now = clock::now_ms();
        let until = now + 7_200_000;
        let (record, old) = rotated_with_overlap(&store, id, until);
        assert_eq!(record.previous_used(&old, now), Some(until));
        assert_eq!(record.previous_used(&old, now - FUTURE_USE_MS), None);
        assert_eq!(record.previous_used(&old, now - 3_600_000), Some(until));
        assert_eq!(record.previous_used(&old, now - 3_600_000 + 1), None);
    }

    /// A revoked token stays as it was revoked: neither edited nor given a new secret.
    #[test]
    fn a_revoked_token_is_neither_edited_nor_rotated() {
        let (_d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        store.revoke_token(id, &actor()).unwrap();
        let before = store.auth_record(id).unwrap().unwrap();
        let edit = TokenEdit {
            name: Some("renamed".into()),
            ..TokenEdit::default()
        };
        assert!(matches!(
            store.edit_token(id, &edit, &actor()),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.rotate_token(id, [9; 32], None, &|_| Ok(()), &actor()),
            Err(StoreError::Conflict(_))
        ));
        let after = store.auth_record(id).unwrap().unwrap();
        assert_eq!(after.token.name, before.token.name);
        assert_eq!(after.secret_hash, before.secret_hash);
        assert!(after.previous.is_none());
    }

    /// The rotation's undo puts no secret back into a token revoked meanwhile: it fails, and
    /// the token keeps the secret it was revoked with.
    #[test]
    fn a_rotation_is_not_undone_on_a_token_revoked_meanwhile() {
        let (_d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        let (_, replaced) = store
            .rotate_token(id, [9; 32], None, &|_| Ok(()), &actor())
            .unwrap();
        store.revoke_token(id, &actor()).unwrap();
        assert!(matches!(
            store.undo_rotation(id, [9; 32], &replaced, &actor()),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.auth_record(id).unwrap().unwrap().secret_hash,
            vec![9; 32]
        );
    }

    /// An overlap that would end before the rotation is none: the old secret is refused at
    /// once, and the audit says so rather than name a moment already past.
    #[test]
    fn an_overlap_already_over_is_audited_as_none() {
        let (_d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        let past = clock::now_ms() - 60_000;
        store
            .rotate_token(id, [9; 32], Some(past), &|_| Ok(()), &actor())
            .unwrap();
        let (_, until) = store.auth_record(id).unwrap().unwrap().previous.unwrap();
        assert_eq!(until, 0);
        let rotated = store
            .audit_events(None, 100)
            .unwrap()
            .into_iter()
            .find(|e| e.action == "token.rotated")
            .unwrap();
        assert!(
            rotated.detail.contains("old secret refused at once"),
            "{}",
            rotated.detail
        );
    }

    /// A token whose expiry is the very moment asked about has expired: it is not counted as
    /// expiring soon.
    #[test]
    fn a_token_expiring_now_is_not_counted_as_expiring_soon() {
        let (_d, store) = temp_store();
        alices_tokens(&store, 2);
        let now = clock::now_ms();
        store
            .with_conn(|c| {
                c.execute(
                    "UPDATE tokens SET expires_at = ?1 WHERE id = 'tok000000000'",
                    params![now],
                )?;
                c.execute(
                    "UPDATE tokens SET expires_at = ?1 WHERE id = 'tok000000001'",
                    params![now + 1],
                )?;
                Ok(())
            })
            .unwrap();
        assert_eq!(store.count_expiring(now, 86_400_000).unwrap(), 1);
    }

    /// Expired personal tokens do not count against [`MAX_LIVE_PERSONAL_TOKENS`]: a user whose
    /// tokens have all expired may make a new one.
    #[test]
    fn expired_personal_tokens_free_their_places() {
        let (_d, store) = temp_store();
        let ids = alices_tokens(&store, MAX_LIVE_PERSONAL_TOKENS as usize);
        let past = clock::now_ms() - 1;
        store
            .with_conn(|c| {
                c.execute("UPDATE tokens SET expires_at = ?1", params![past])?;
                Ok(())
            })
            .unwrap();
        assert_eq!(store.live_personal_tokens("alice").unwrap(), 0);
        store
            .insert_token(&personal_token("fresh0000000", "fresh", "alice"), &actor())
            .unwrap();
        assert_eq!(ids.len() as u64, MAX_LIVE_PERSONAL_TOKENS);
    }

    /// A revocation the store cannot read (a text where the time goes, from an edit by hand)
    /// is no revocation yet: the operator's revoke writes a real one, and the token reads back
    /// as revoked.
    #[test]
    fn a_revocation_that_cannot_be_read_is_written_again() {
        let (d, store) = temp_store();
        store.add_user("alice", "h", Role::User, &actor()).unwrap();
        store
            .insert_token(&personal_token("abcdefghijkl", "laptop", "alice"), &actor())
            .unwrap();
        edit_by_hand(&d, "UPDATE tokens SET revoked_at = 'yesterday'");
        assert!(store.token("abcdefghijkl").is_err());
        assert!(store
            .revoke_unreadable_token("abcdefghijkl", &actor())
            .unwrap());
        let t = store.token("abcdefghijkl").unwrap().unwrap();
        assert!(t.revoked_at.is_some());
        assert!(!t.is_active(clock::now_ms()));
    }

    /// `--json` and the REST API show every lifecycle time of a token, by its camelCase name.
    #[test]
    fn a_tokens_json_shows_its_lifecycle_times() {
        let (_d, store) = temp_store();
        let id = &alices_tokens(&store, 1)[0];
        let mut t = store.token(id).unwrap().unwrap();
        t.expires_at = Some(5);
        t.last_used_at = Some(3);
        t.last_used_addr = Some("192.0.2.1".into());
        t.revoked_at = Some(4);
        t.rotated_at = Some(2);
        let json = t.to_json();
        assert_eq!(json["createdAt"], 1);
        assert_eq!(json["expiresAt"], 5);
        assert_eq!(json["lastUsedAt"], 3);
        assert_eq!(json["lastUsedAddress"], "192.0.2.1");
        assert_eq!(json["revokedAt"], 4);
        assert_eq!(json["rotatedAt"], 2);
        assert_eq!(json["user"], "alice");
        assert!(json.get("secretHash").is_none() && json.get("token").is_none());
    }
}
