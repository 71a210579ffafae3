//! `gitgate token ...`: create, list, show, revoke.
//!
//! `create` prints the secret alone on stdout so that `TOKEN=$(gitgate token create ...)` works;
//! the details go to stderr. The secret is shown this once and never again.

use std::path::Path;

use serde_json::json;

use super::{out_raw, print_json, read_password, when};
use crate::clock;
use crate::credentials::Secret;
use crate::lifecycle::{self, Caller, CreateRequest, EditRequest, ExpiryPolicy, Subject};
use crate::policy::Target;
use crate::store::{Actor, Store, StoreError, TokenRecord};

/// Who `token create` is for, as given on the command line (exactly one is set; clap enforces it).
pub struct For<'a> {
    pub user: Option<&'a str>,
    pub project: Option<&'a str>,
    pub repo: Option<&'a str>,
    /// The config's `[server] git_prefix`: where a project or repository token is served.
    pub git_prefix: &'a str,
    /// The embedded backend's `project_root`, to say so when a scoped token's target is not
    /// there (see [`super::not_served_yet`]).
    pub project_root: Option<&'a std::path::Path>,
}

/// The rest of what `token create` was given.
pub struct Create<'a> {
    pub name: &'a str,
    pub permissions: &'a [String],
    pub expiry_days: Option<u32>,
    pub allowed_networks: &'a [String],
    pub password_stdin: bool,
    pub json: bool,
}

/// Where a new secret would be written, when nobody could read it there: standard output is
/// `/dev/null`. Closed, it is that too (the Rust runtime opens `/dev/null` in its place at
/// start), and every write would succeed: the token would work with a secret nobody saw.
fn secret_would_be_lost() -> Result<(), String> {
    match std::fs::read_link("/proc/self/fd/1") {
        Ok(target) if target == Path::new("/dev/null") => Err(
            "standard output is closed or /dev/null, and the secret is shown only once, there: \
             send it to a file or a pipe (nothing was changed)"
                .into(),
        ),
        _ => Ok(()),
    }
}

pub fn create(store: &Store, who: For, c: Create) -> Result<(), String> {
    secret_would_be_lost()?;
    let Create {
        name,
        permissions,
        expiry_days,
        allowed_networks,
        password_stdin,
        json,
    } = c;
    let mut caller = Caller::Operator;
    let subject = match (who.user, who.project, who.repo) {
        (Some(user), None, None) => {
            owner_may_log_in(store, user, "created")?;
            // What the token asks for, before its owner is asked for a password: a mistyped
            // permission is not told only after the password was typed.
            lifecycle::check_new(
                store,
                &CreateRequest {
                    subject: Subject::Personal(user.to_string()),
                    name: name.to_string(),
                    permissions: permissions.to_vec(),
                    expiry_days,
                    allowed_networks: allowed_networks.to_vec(),
                },
            )
            .map_err(|e| e.to_string())?;
            caller = login_as_owner(store, user, password_stdin, "created")?;
            Subject::Personal(user.to_string())
        }
        (None, Some(project), None) => {
            if project.contains('/') {
                return Err(format!(
                    "--project takes a project key, not '{project}': use --repo for a repository"
                ));
            }
            Subject::Scoped(Target::parse_new(project, who.git_prefix)?)
        }
        (None, None, Some(repo)) => {
            if !repo.contains('/') {
                return Err(format!(
                    "--repo takes PROJECT/REPO, not '{repo}': use --project for a whole project"
                ));
            }
            Subject::Scoped(Target::parse_new(repo, who.git_prefix)?)
        }
        _ => return Err("give exactly one of --user, --project or --repo".into()),
    };
    if password_stdin && matches!(subject, Subject::Scoped(_)) {
        return Err(
            "--password-stdin is for personal tokens (their owner's password): project and \
             repository tokens are the operator's, made without one"
                .into(),
        );
    }
    let not_served = match &subject {
        Subject::Scoped(target) => who
            .project_root
            .and_then(|root| super::not_served_yet(target, root)),
        Subject::Personal(_) => None,
    };
    // Read before the write, as for a rotation: showing the new secret must not fail on it.
    let policy = lifecycle::policy(store).map_err(|e| e.to_string())?;
    let (record, secret) = lifecycle::create(
        store,
        &caller,
        CreateRequest {
            subject,
            name: name.to_string(),
            permissions: permissions.to_vec(),
            expiry_days,
            allowed_networks: allowed_networks.to_vec(),
        },
        &Actor::cli(),
    )
    .map_err(|e| e.to_string())?;
    // A secret that never reached the operator must not stay valid: revoke it and say so.
    let delivered = if json {
        // The shape of `token show --json`, and the secret.
        let mut value = to_json(&record, &policy, owner_is_disabled(store, &record));
        value["token"] = json!(secret.expose());
        print_json(&value)
    } else {
        announce(&record, &secret)
    };
    if delivered.is_ok() {
        if let Some(note) = not_served {
            note!("{note}");
        }
    }
    delivered.map_err(|e| {
        let undone = lifecycle::revoke(
            store,
            &Caller::Operator,
            None,
            record.id.as_str(),
            &Actor::cli(),
        );
        match undone {
            Ok(_) => format!(
                "{e}: the secret of token '{}' (id {}) could not be shown, so it was revoked \
                 again; create a new one",
                record.name, record.id
            ),
            Err(r) => format!(
                "{e}: the secret of token '{}' (id {}) could not be shown, and revoking it \
                 failed too ({r}): revoke it with `gitgate token revoke {}`",
                record.name, record.id, record.id
            ),
        }
    })
}

/// The new token's details on stderr and its secret, alone, on stdout.
fn announce(record: &TokenRecord, secret: &Secret) -> Result<(), String> {
    note!(
        "created {} token '{}' (id {}) for {} with {}, expires {}",
        record.kind.as_str(),
        record.name,
        record.id,
        record.principal(),
        record.permissions,
        record
            .expires_at
            .map(clock::datetime)
            .unwrap_or_else(|| "never".into())
    );
    note!("the secret below is shown once; store it now:");
    outln!("{}", secret.expose());
    Ok(())
}

pub fn list(store: &Store, user: Option<&str>, json: bool) -> Result<(), String> {
    let tokens = store.tokens(user).map_err(|e| e.to_string())?;
    let policy = lifecycle::policy(store).map_err(|e| e.to_string())?;
    let disabled: std::collections::HashSet<String> = store
        .users()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|u| !u.active)
        .map(|u| u.slug)
        .collect();
    let owner_disabled = |t: &TokenRecord| t.owner.as_ref().is_some_and(|o| disabled.contains(o));
    if json {
        // Written a token at a time, as `audit --json` is: the whole list as one JSON value
        // took some 6 KB a token (1.2 GB for 200,000); the same text comes out.
        out_raw("[")?;
        for (i, t) in tokens.iter().enumerate() {
            let text = serde_json::to_string_pretty(&to_json(t, &policy, owner_disabled(t)))
                .map_err(|e| e.to_string())?;
            let sep = if i == 0 { "\n" } else { ",\n" };
            out_raw(&format!("{sep}  {}", text.replace('\n', "\n  ")))?;
        }
        return out_raw(if tokens.is_empty() { "]\n" } else { "\n]\n" });
    }
    let wn = super::width(20, tokens.iter().map(|t| &t.name));
    let wf = super::width(20, tokens.iter().map(|t| t.principal()));
    let wp = super::width(24, tokens.iter().map(|t| t.permissions.to_string()));
    outln!(
        "{:<12} {:<wn$} {:<10} {:<wf$} {:<wp$} {:<20} {:<20} STATUS",
        "ID",
        "NAME",
        "KIND",
        "FOR",
        "PERMISSIONS",
        "EXPIRES",
        "LAST USED"
    );
    let now = clock::now_ms();
    for t in tokens {
        outln!(
            "{:<12} {:<wn$} {:<10} {:<wf$} {:<wp$} {:<20} {:<20} {}",
            t.id,
            t.name,
            t.kind.as_str(),
            t.principal(),
            t.permissions.to_string(),
            when(t.expires_at),
            when(t.last_used_at),
            status(&t, &policy, now, owner_disabled(&t))
        );
    }
    Ok(())
}

/// The `--json` shape of a token: the store's fields, whether it meets the expiry policy, and
/// its `status` as git would find it — `active`, `revoked`, `expired` or `owner-disabled` — so
/// that a script need not work out from the dates and the owner whether a token still opens
/// anything (the text's STATUS column, in one word each).
fn to_json(t: &TokenRecord, policy: &ExpiryPolicy, owner_disabled: bool) -> serde_json::Value {
    let mut value = t.to_json();
    value["compliant"] = json!(policy.compliant(t));
    value["status"] = json!(state(t, clock::now_ms(), owner_disabled));
    value
}

/// Whether the token's owner (if it has one: a project's or repository's token has none) is
/// disabled, which refuses the token whatever it says itself.
fn owner_is_disabled(store: &Store, t: &TokenRecord) -> bool {
    t.owner
        .as_ref()
        .is_some_and(|owner| store.user(owner).ok().flatten().is_some_and(|u| !u.active))
}

/// A whole secret pasted where the id goes (`token revoke ggt_...`, the leaked string at hand)
/// is answered with its id, which it holds in the clear, instead of "no token with id": the
/// operator revoking a leak at night needs the next command, not a puzzle.
fn not_a_secret(id: &str) -> Result<(), String> {
    // As pasted: with spaces or a line end around it, or its `ggt_` lost in the copy.
    let pasted = id.trim();
    let found = crate::token::parse(pasted)
        .or_else(|| crate::token::parse(&format!("{}{pasted}", crate::token::PREFIX)));
    if let Some(real) = found {
        return Err(format!(
            "that is a token's secret, not its id: its id is '{real}', the 12 characters after \
             ggt_ (the command with '{real}' in its place does it)"
        ));
    }
    // The secret's start, `ggt_` and the id (the part a list shows beside it, or a secret
    // copied in part): said to be the id with `ggt_` before it, as the REST API says, not looked
    // up as an id and answered "no token with id" and the text hidden as a secret.
    match id_after_the_prefix(pasted) {
        Some(real) => Err(format!(
            "a token id has no ggt_ in front: it is the 12 characters after it, '{real}' (the \
             command with '{real}' in its place does it)"
        )),
        None => Ok(()),
    }
}

/// The token id in `text` that starts as a secret does: `ggt_` (in any case) and an id, alone
/// or followed by `_` and whatever of the secret's rest was copied.
fn id_after_the_prefix(text: &str) -> Option<crate::token::TokenId> {
    let prefix = crate::token::PREFIX;
    let rest = text
        .get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .and_then(|_| text.get(prefix.len()..))?;
    let (id, after) = rest.split_at_checked(crate::token::ID_LEN)?;
    if !(after.is_empty() || after.starts_with('_')) {
        return None;
    }
    id.parse().ok()
}

pub fn show(store: &Store, id: &str, json: bool) -> Result<(), String> {
    not_a_secret(id)?;
    let t = lifecycle::get(store, &Caller::Operator, None, id).map_err(|e| e.to_string())?;
    let policy = lifecycle::policy(store).map_err(|e| e.to_string())?;
    if json {
        let mut value = to_json(&t, &policy, owner_is_disabled(store, &t));
        if let Some(until) = old_secret_works_until(store, &t) {
            value["previousSecretValidUntil"] = json!(until);
        }
        return print_json(&value);
    }
    print_details(store, &t, &policy)
}

/// Until when (epoch ms) the secret a rotation replaced still works, inside its overlap.
fn old_secret_works_until(store: &Store, t: &TokenRecord) -> Option<i64> {
    let now = crate::clock::now_ms();
    store
        .auth_record(&t.id)
        .ok()
        .flatten()
        .and_then(|r| r.previous)
        .map(|(_, until)| until)
        .filter(|&until| now < until && t.revoked_at.is_none())
}

fn print_details(store: &Store, t: &TokenRecord, policy: &ExpiryPolicy) -> Result<(), String> {
    outln!("id:          {}", t.id);
    outln!("name:        {}", t.name);
    outln!("kind:        {}", t.kind.as_str());
    outln!("for:         {}", t.principal());
    outln!("permissions: {}", t.permissions);
    outln!(
        "created:     {} by {}",
        when(Some(t.created_at)),
        t.created_by
    );
    outln!("expires:     {}", when(t.expires_at));
    outln!(
        "networks:    {}",
        if t.allowed_networks.is_empty() {
            "anywhere".to_string()
        } else {
            t.network_names().join(", ")
        }
    );
    outln!("rotated:     {}", when(t.rotated_at));
    // Inside a rotation's overlap the old secret still works: until when, for whoever plans
    // the move of its clients (the log says when one still uses it).
    if let Some(until) = old_secret_works_until(store, t) {
        outln!(
            "old secret:  works until {} (the rotation's overlap; the log says when a client \
             still uses it)",
            crate::clock::datetime(until)
        );
    }
    outln!(
        "last used:   {}{}",
        when(t.last_used_at),
        t.last_used_addr
            .as_deref()
            .map(|a| format!(" from {a}"))
            .unwrap_or_default()
    );
    // Not a failure of its own: `token edit` shows the token after its change is made (see
    // `edit`), and the token itself was just read from the same store.
    let owner_disabled = owner_is_disabled(store, t);
    if let Some(at) = t.revoked_at {
        // Who did it is the audit's: the event names the actor and where from.
        match store.who_revoked(&t.id, at) {
            Ok(Some((actor, source))) => outln!(
                "revoked:     {} by {} from {}",
                when(Some(at)),
                crate::log_value::LogValue(&actor),
                crate::log_value::LogValue(&source)
            ),
            _ => outln!(
                "revoked:     {} (by whom: gitgate audit --action token.revoked --target {})",
                when(Some(at)),
                t.id
            ),
        }
    }
    outln!(
        "status:      {}",
        status(t, policy, clock::now_ms(), owner_disabled)
    );
    Ok(())
}

pub fn revoke(store: &Store, id: &str) -> Result<(), String> {
    not_a_secret(id)?;
    let t = match lifecycle::revoke(store, &Caller::Operator, None, id, &Actor::cli()) {
        Ok(t) => t,
        // A row edited by hand into what gitgate cannot read: revoked without reading it.
        Err(lifecycle::Error::Store(crate::store::StoreError::Sqlite(
            e @ rusqlite::Error::ToSqlConversionFailure(_),
        ))) => {
            if store
                .revoke_unreadable_token(id, &Actor::cli())
                .map_err(|e| e.to_string())?
            {
                note!("revoked token {id}, whose row cannot be read ({e}); it is refused from the next request on");
                return Ok(());
            }
            // It was read (and failed), so it is there: revoked already.
            return Err(format!("{e}; it is revoked already"));
        }
        // Said at once, for who revokes a leaked token at night: the store took nothing.
        Err(lifecycle::Error::Store(e)) if e.is_schema_mismatch() => {
            return Err(format!(
                "{e}: token {id} is NOT revoked and still works; revoke it again once the store \
                 is restored"
            ))
        }
        Err(e @ lifecycle::Error::Store(StoreError::Busy | StoreError::Sqlite(_))) => {
            return Err(format!(
                "{e}: token {id} is NOT revoked and still works; free the store (disk space, \
                 the process holding its lock) and revoke it again"
            ))
        }
        // Revoked already: what was asked for holds, as `user disable` of a disabled user.
        Err(e @ lifecycle::Error::Conflict(_)) => {
            return match store.token(id) {
                Ok(Some(t)) if t.revoked_at.is_some() => {
                    note!(
                        "token '{}' ({}) of {} was revoked already on {}; nothing changed",
                        t.name,
                        t.id,
                        t.principal(),
                        super::when(t.revoked_at)
                    );
                    Ok(())
                }
                _ => Err(e.to_string()),
            }
        }
        Err(e) => return Err(e.to_string()),
    };
    note!(
        "revoked token '{}' ({}) of {}; it is refused from the next request on",
        t.name,
        t.id,
        t.principal()
    );
    Ok(())
}

/// What `token edit` was given on the command line.
pub struct Edit<'a> {
    pub name: Option<&'a str>,
    pub permissions: &'a [String],
    pub allowed_networks: &'a [String],
    pub any_network: bool,
    pub expiry_days: Option<u32>,
    pub json: bool,
}

pub fn edit(store: &Store, id: &str, e: Edit) -> Result<(), String> {
    not_a_secret(id)?;
    let allowed_networks = if e.any_network {
        Some(Vec::new())
    } else if e.allowed_networks.is_empty() {
        None
    } else {
        Some(e.allowed_networks.to_vec())
    };
    let req = EditRequest {
        name: e.name.map(str::to_string),
        permissions: (!e.permissions.is_empty()).then(|| e.permissions.to_vec()),
        allowed_networks,
        expiry_days: e.expiry_days,
        expiry_date: None,
    };
    if req.name.is_none()
        && req.permissions.is_none()
        && req.allowed_networks.is_none()
        && req.expiry_days.is_none()
    {
        return Err(
            "nothing to change: give --name, --permission, --allowed-network or --any-network"
                .into(),
        );
    }
    // Read before the write: once the token is changed, showing it must not fail on a read.
    let policy = lifecycle::policy(store).map_err(|e| e.to_string())?;
    // To tell an edit that asked for what the token already had (changed nothing, audited
    // nothing) from a change.
    let before = lifecycle::get(store, &Caller::Operator, None, id).ok();
    let t = lifecycle::edit(store, &Caller::Operator, None, id, req, &Actor::cli())
        .map_err(|e| e.to_string())?;
    let unchanged = before.is_some_and(|b| {
        b.name == t.name
            && b.permissions == t.permissions
            && b.allowed_networks == t.allowed_networks
    });
    let shown = if e.json {
        print_json(&to_json(&t, &policy, owner_is_disabled(store, &t)))
    } else {
        if unchanged {
            note!(
                "token '{}' ({}) already had what was given; nothing changed",
                t.name,
                t.id
            );
        } else {
            note!("token '{}' ({}) updated", t.name, t.id);
        }
        print_details(store, &t, &policy)
    };
    // The change is made: an error from here on must not read as if it were not.
    shown.map_err(|err| {
        if err == super::STDOUT_CLOSED {
            return err;
        }
        format!(
            "token '{}' ({}) was updated, but its details could not be shown: {err}",
            t.name, t.id
        )
    })
}

/// `token rotate`: a new secret for the same token, printed alone on stdout like `create`.
/// A personal token is rotated only by its owner, so this asks for the owner's password.
pub fn rotate(
    store: &Store,
    id: &str,
    overlap_secs: u32,
    password_stdin: bool,
    json: bool,
) -> Result<(), String> {
    not_a_secret(id)?;
    secret_would_be_lost()?;
    let t = lifecycle::get(store, &Caller::Operator, None, id).map_err(|e| e.to_string())?;
    // Before the owner is asked for a password: a token that cannot be rotated is not told only
    // after the password was typed.
    lifecycle::check_rotation(&t, overlap_secs).map_err(|e| e.to_string())?;
    let caller = match &t.owner {
        Some(owner) => {
            owner_may_log_in(store, owner, "rotated")?;
            login_as_owner(store, owner, password_stdin, "rotated")?
        }
        None if password_stdin => {
            return Err(format!(
                "--password-stdin is for personal tokens (their owner's password): token {id} \
                 is a project or repository token, rotated by the operator without one"
            ))
        }
        None => Caller::Operator,
    };
    // Read before the write: once the old secret is replaced, showing the new one must not fail
    // on a read of the store.
    let policy = lifecycle::policy(store).map_err(|e| e.to_string())?;
    let (record, secret, replaced) =
        lifecycle::rotate(store, &caller, None, id, overlap_secs, &Actor::cli())
            .map_err(|e| e.to_string())?;
    let delivered = if json {
        let mut value = to_json(&record, &policy, owner_is_disabled(store, &record));
        value["token"] = json!(secret.expose());
        print_json(&value)
    } else {
        announce_rotation(&record, &secret, overlap_secs)
    };
    // A new secret that never reached the operator must not have replaced the one in use (a
    // CI job's, say): put the old one back and say so.
    delivered.map_err(|e| {
        match lifecycle::undo_rotation(store, &record.id, &secret, &replaced, &Actor::cli()) {
            Ok(()) => format!(
                "{e}: the new secret of token '{}' (id {}) could not be shown, so the rotation \
                 was undone: the old secret works as before; rotate it again",
                record.name, record.id
            ),
            Err(u) => format!(
                "{e}: the new secret of token '{}' (id {}) could not be shown, and undoing the \
                 rotation failed too ({u}): rotate it again (gitgate token rotate {})",
                record.name, record.id, record.id
            ),
        }
    })
}

/// The rotation on stderr and the new secret, alone, on stdout.
fn announce_rotation(
    record: &TokenRecord,
    secret: &Secret,
    overlap_secs: u32,
) -> Result<(), String> {
    let overlap_ends = clock::now_ms() + i64::from(overlap_secs) * 1000;
    let old = match record.expires_at {
        _ if overlap_secs == 0 => "the old secret is refused from now on".to_string(),
        // No secret outlives its token.
        Some(expiry) if expiry < overlap_ends => format!(
            "the old secret keeps working until the token expires, at {}",
            clock::datetime(expiry)
        ),
        _ => format!("the old secret keeps working for {overlap_secs} more seconds"),
    };
    note!("the new secret below is shown once; store it now:");
    outln!("{}", secret.expose());
    // Said once the secret is out: a rotation whose secret could not be shown is undone, and
    // its log must not say first that the old secret was refused.
    note!(
        "rotated token '{}' ({}) of {}; {old}",
        record.name,
        record.id,
        record.principal()
    );
    Ok(())
}

/// Whether `user` could log in to have a token `what` (created, rotated), said before their
/// password is asked for. A login answers every failure alike (a disabled user as a wrong
/// password, so that a guesser learns nothing); the operator at the host can read the store
/// anyway, and is told the cause instead of guessing at it.
fn owner_may_log_in(store: &Store, user: &str, what: &str) -> Result<(), String> {
    let Some(account) = store.user(user).map_err(|e| e.to_string())? else {
        return Err(crate::store::no_such_user(user));
    };
    if !account.active {
        return Err(format!(
            "user '{user}' is disabled: no personal token of theirs can be {what}, and their \
             tokens are refused, until they are enabled again: gitgate user enable {user}"
        ));
    }
    Ok(())
}

/// Personal tokens are created and rotated only by their owner: prove it with the password.
fn login_as_owner(
    store: &Store,
    user: &str,
    password_stdin: bool,
    what: &str,
) -> Result<Caller, String> {
    let password = read_password(password_stdin, &format!("Password for {user}: "))?;
    lifecycle::login(store, user, &password, &Actor::cli()).map_err(|e| {
        // The lock is counted and kept by the login itself (this password may have begun it);
        // whether it holds now is read after.
        let locked_until = store
            .user(user)
            .ok()
            .flatten()
            .and_then(|u| u.locked_until)
            .filter(|&until| clock::now_ms() < until);
        owner_login_error(e, what, user, locked_until)
    })
}

/// Why [`login_as_owner`] failed: who may do `what` is said only to a failed authentication, not
/// to a store that cannot be read or written (a full disk is not the password's fault); and to
/// the operator, whether `user`'s password logins are locked now (`locked_until`), which a
/// login answers as any other failure.
fn owner_login_error(
    e: lifecycle::Error,
    what: &str,
    user: &str,
    locked_until: Option<i64>,
) -> String {
    match e {
        lifecycle::Error::Unauthenticated(_) => {
            let mut said = format!(
                "{e}: a personal token can only be {what} by its owner, with the owner's password"
            );
            if let Some(until) = locked_until {
                said.push_str(&format!(
                    ". Here it is the lock: password logins of '{user}' are locked until {} \
                     (gitgate user unlock {user})",
                    clock::datetime(until)
                ));
            }
            said
        }
        other => other.to_string(),
    }
}

/// A token's status as git would find it: one whose owner is disabled is refused, whatever the
/// token itself says.
fn status(t: &TokenRecord, policy: &ExpiryPolicy, now: i64, owner_disabled: bool) -> &'static str {
    match state(t, now, owner_disabled) {
        "owner-disabled" => "refused: its owner is disabled",
        "active" if !policy.compliant(t) => "active, non-compliant",
        word => word,
    }
}

/// [`status`] in one word, for `--json`: `revoked`, `expired`, `owner-disabled` or `active`.
fn state(t: &TokenRecord, now: i64, owner_disabled: bool) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at.is_some_and(|e| now >= e) {
        "expired"
    } else if owner_disabled {
        "owner-disabled"
    } else {
        "active"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_login_is_told_who_may_create_a_token() {
        let refused = owner_login_error(
            lifecycle::Error::Unauthenticated("authentication failed".into()),
            "created",
            "alice",
            None,
        );
        assert!(refused.ends_with("can only be created by its owner, with the owner's password"));
        let busy = owner_login_error(
            lifecycle::Error::Store(crate::store::StoreError::Busy),
            "created",
            "alice",
            Some(i64::MAX),
        );
        assert!(
            !busy.contains("password") && !busy.contains("unlock"),
            "{busy}"
        );
        let locked = owner_login_error(
            lifecycle::Error::Unauthenticated("authentication failed".into()),
            "rotated",
            "alice",
            Some(0),
        );
        assert!(
            locked.ends_with(
                "Here it is the lock: password logins of 'alice' are locked until \
                 1970-01-01T00:00:00Z (gitgate user unlock alice)"
            ),
            "{locked}"
        );
    }

    fn token(expires_at: Option<i64>) -> TokenRecord {
        let kind = crate::permission::TokenKind::Personal;
        TokenRecord {
            id: "abcdefghijkl".into(),
            kind,
            name: "ci".into(),
            owner: Some("alice".into()),
            scope: None,
            permissions: crate::permission::TokenPermissions::from_names(kind, &["REPO_READ"])
                .unwrap(),
            created_at: 0,
            created_by: "test".into(),
            expires_at,
            last_used_at: None,
            last_used_addr: None,
            revoked_at: None,
            rotated_at: None,
            allowed_networks: Vec::new(),
        }
    }

    /// A token is expired from the millisecond of its expiry on, as git finds it
    /// (`TokenRecord::is_active`): `status` never calls active a token git refuses.
    #[test]
    fn a_token_is_expired_from_the_moment_of_its_expiry() {
        let t = token(Some(1_000));
        assert_eq!(state(&t, 999, false), "active");
        assert_eq!(state(&t, 1_000, false), "expired");
        assert!(!t.is_active(1_000));
        assert_eq!(state(&t, 1_001, false), "expired");
    }

    /// The STATUS column says which active tokens break the expiry policy, and only those: a
    /// token without expiry under a policy that requires one is `active, non-compliant`.
    #[test]
    fn an_active_token_that_breaks_the_policy_is_said_to() {
        let required = ExpiryPolicy {
            expiry_required: true,
            max_expiry_days: None,
        };
        let free = ExpiryPolicy {
            expiry_required: false,
            max_expiry_days: None,
        };
        assert_eq!(
            status(&token(None), &required, 0, false),
            "active, non-compliant"
        );
        assert_eq!(status(&token(Some(1_000)), &required, 0, false), "active");
        assert_eq!(status(&token(None), &free, 0, false), "active");
        assert_eq!(
            status(&token(None), &required, 0, true),
            "refused: its owner is disabled"
        );
    }

    /// A revoked token's old secret works no more than its new one: `token show` names no
    /// rotation overlap for it, even inside the overlap the rotation gave.
    #[test]
    fn a_revoked_token_has_no_old_secret_that_still_works() {
        let (_dir, store) = crate::store::test_support::temp_store();
        let actor = crate::store::test_support::actor();
        let (t, _) = lifecycle::create(
            &store,
            &Caller::Operator,
            CreateRequest {
                subject: Subject::Scoped(Target::parse("team").unwrap()),
                name: "ci".into(),
                permissions: vec!["REPO_READ".into()],
                expiry_days: None,
                allowed_networks: Vec::new(),
            },
            &actor,
        )
        .unwrap();
        lifecycle::rotate(&store, &Caller::Operator, None, &t.id, 3600, &actor).unwrap();
        let rotated = store.token(&t.id).unwrap().unwrap();
        let until = old_secret_works_until(&store, &rotated).expect("inside the overlap");
        assert!(until > clock::now_ms() + 1_800_000, "{until}");
        let revoked = lifecycle::revoke(&store, &Caller::Operator, None, &t.id, &actor).unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(old_secret_works_until(&store, &revoked), None);
    }

    /// A whole secret pasted where the id goes (as pasted: with a line end, or its `ggt_` lost)
    /// is answered with its id, not looked up as one; an id is taken as it is.
    #[test]
    fn a_pasted_secret_is_answered_with_its_id() {
        let new = crate::token::generate().unwrap();
        let secret = new.secret.expose().to_string();
        for pasted in [
            secret.clone(),
            format!(" {secret}\n"),
            secret[crate::token::PREFIX.len()..].to_string(),
        ] {
            let said = not_a_secret(&pasted).unwrap_err();
            assert!(
                said.contains(&format!("its id is '{}'", new.id.as_str())),
                "{said}"
            );
        }
        assert_eq!(not_a_secret(new.id.as_str()), Ok(()));
    }

    /// The secret's start, `ggt_` and the id (alone, or with part of the rest), is answered with
    /// the id, as the REST API answers it; anything else with `ggt_` in front is no id at all.
    #[test]
    fn an_id_with_ggt_in_front_is_answered_with_the_id() {
        let new = crate::token::generate().unwrap();
        let secret = new.secret.expose().to_string();
        let id = new.id.as_str();
        for pasted in [
            format!("ggt_{id}"),
            format!("GGT_{id}\n"),
            format!("ggt_{id}_"),
            secret[..secret.len() - 10].to_string(),
        ] {
            let said = not_a_secret(&pasted).unwrap_err();
            assert!(
                said.contains("no ggt_ in front") && said.contains(&format!("'{id}'")),
                "{pasted}: {said}"
            );
        }
        for not_an_id in ["ggt_", "ggt_abc", "ggt_ABCDEFGHIJKL", &format!("ggt_{id}x")] {
            assert_eq!(not_a_secret(not_an_id), Ok(()), "{not_an_id}");
        }
    }

    /// `--password-stdin` belongs to personal tokens: given with a project or repository token,
    /// the command is refused and makes no token (the operator meant another one).
    #[test]
    fn a_scoped_token_is_refused_with_password_stdin_and_nothing_is_made() {
        let (_dir, store) = crate::store::test_support::temp_store();
        for (project, repo) in [(Some("team"), None), (None, Some("team/app"))] {
            let said = create(
                &store,
                For {
                    user: None,
                    project,
                    repo,
                    git_prefix: "/",
                    project_root: None,
                },
                Create {
                    name: "ci",
                    permissions: &["REPO_READ".to_string()],
                    expiry_days: None,
                    allowed_networks: &[],
                    password_stdin: true,
                    json: false,
                },
            )
            .unwrap_err();
            assert!(
                said.starts_with("--password-stdin is for personal tokens"),
                "{said}"
            );
        }
        assert!(store.tokens(None).unwrap().is_empty());
    }
}
