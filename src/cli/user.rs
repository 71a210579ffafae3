//! `gitgate user ...`: add, list, disable, enable, passwd.

use serde_json::json;

use super::{print_json, read_new_password, when};
use crate::password;
use crate::store::{Actor, Role, Store, StoreError};

pub fn add(store: &Store, name: &str, admin: bool, password_stdin: bool) -> Result<(), String> {
    crate::store::validate_new_slug(name).map_err(|e| e.to_string())?;
    // Before the password is asked for, twice; the write checks again.
    if store.user(name).map_err(|e| e.to_string())?.is_some() {
        return Err(format!("user '{name}' already exists"));
    }
    let pw = read_new_password(password_stdin, &format!("Password for {name}: "))?;
    let hash = password::hash(&pw)?;
    let role = if admin { Role::Admin } else { Role::User };
    let user = store
        .add_user(name, &hash, role, &Actor::cli())
        .map_err(|e| e.to_string())?;
    note!("added {} '{}'", user.role, user.slug);
    Ok(())
}

pub fn list(store: &Store, json: bool) -> Result<(), String> {
    let mut users = store.users().map_err(|e| e.to_string())?;
    // A lock that has ended is no lock: `lockedUntil` is only shown while it holds.
    let now = crate::clock::now_ms();
    for u in &mut users {
        u.locked_until = u.locked_until.filter(|&until| until > now);
    }
    let lock_after = crate::lifecycle::PASSWORD_FAILURES_BEFORE_LOCK;
    if json {
        // With the lock's count beside each user's, so that a script sees how close it is.
        let mut listed = json!(users);
        for u in listed.as_array_mut().into_iter().flatten() {
            u["lockAfterFailedLogins"] = json!(lock_after);
        }
        return print_json(&listed);
    }
    let w = super::width(24, users.iter().map(|u| &u.slug));
    outln!(
        "{:<w$} {:<6} {:<9} {:<8} CREATED",
        "NAME",
        "ROLE",
        "STATUS",
        "FAILED"
    );
    for u in users {
        let locked = u.locked_until.is_some();
        let status = match (u.active, locked) {
            (false, _) => "disabled",
            (true, true) => "locked",
            (true, false) => "active",
        };
        outln!(
            "{:<w$} {:<6} {:<9} {:<8} {}",
            u.slug,
            u.role,
            status,
            failed_of(u.failed_logins, lock_after),
            when(Some(u.created_at))
        );
    }
    Ok(())
}

/// A user's wrong passwords in a row against the lock's count, as `user list` shows them
/// (`3/10`: seven more lock password logins); `?/10` for a count gitgate does not write
/// (changed by hand), which the next wrong password takes as the lock's.
fn failed_of(failed: Option<i64>, lock_after: u32) -> String {
    match failed {
        Some(n) if n < i64::from(lock_after) => format!("{n}/{lock_after}"),
        _ => format!("?/{lock_after}"),
    }
}

pub fn set_active(store: &Store, name: &str, active: bool) -> Result<(), String> {
    let changed = store
        .set_user_active(name, active, &Actor::cli())
        .map_err(|e| match e {
            // The store took nothing: say what that means for the user's tokens.
            StoreError::Busy | StoreError::Sqlite(_) if !active => format!(
                "{e}: user '{name}' is NOT disabled, and their tokens still work; free the \
                 store (disk space, the process holding its lock) and disable them again"
            ),
            e => e.to_string(),
        })?;
    let what = match (changed, active) {
        (true, true) => "enabled",
        (true, false) => "disabled (their personal tokens stop working at once)",
        (false, true) => "was enabled already; nothing changed",
        (false, false) => "was disabled already; nothing changed",
    };
    note!("user '{name}' {what}");
    if !active {
        // Project and repository tokens belong to their scope, not to who made them: they stay
        // (as in Bitbucket). An offboarding operator must hear so, not assume them gone.
        let made: Vec<String> = super::live_scoped_tokens(store, |t| t.created_by == name)
            .into_iter()
            .map(|t| {
                let scope = t.scope.map(|s| s.to_string()).unwrap_or_default();
                format!("{} ('{}', {scope})", t.id, t.name)
            })
            .collect();
        if !made.is_empty() {
            note!(
                "the {} project or repository token(s) '{name}' made still work (they belong to \
                 their project or repository): {}; revoke any that should stop with `gitgate \
                 token revoke ID`",
                made.len(),
                made.join(", ")
            );
        }
    }
    Ok(())
}

/// `user role NAME admin|user`: an administrator holds ADMIN on every repository; a user what
/// their grants give.
pub fn set_role(store: &Store, name: &str, role: &str) -> Result<(), String> {
    // clap already takes only admin or user (main.rs).
    let role = match role {
        "admin" => Role::Admin,
        "user" => Role::User,
        other => return Err(format!("a role is admin or user, not '{other}'")),
    };
    let changed = store
        .set_user_role(name, role, &Actor::cli())
        .map_err(|e| e.to_string())?;
    match (changed, role) {
        (true, Role::Admin) => note!(
            "user '{name}' is now an administrator (ADMIN on every repository; their tokens \
             have it at once, within each token's permissions)"
        ),
        (true, Role::User) => note!(
            "user '{name}' is now a user: their access is what their grants give (their tokens \
             have no more at once); project and repository tokens they made stay"
        ),
        (false, Role::Admin) => note!("user '{name}' is an administrator already; nothing changed"),
        (false, Role::User) => {
            note!("user '{name}' is a user already (not an administrator); nothing changed")
        }
    }
    Ok(())
}

pub fn unlock(store: &Store, name: &str) -> Result<(), String> {
    let lifted = store
        .unlock_user(name, &Actor::cli())
        .map_err(|e| e.to_string())?;
    if lifted {
        note!("password logins of '{name}' are unlocked");
    } else {
        note!(
            "password logins of '{name}' were not locked in the store; a lock a running server \
             counted in memory (while its store took no writes) is lifted too, within 5 s"
        );
    }
    Ok(())
}

pub fn passwd(store: &Store, name: &str, password_stdin: bool) -> Result<(), String> {
    if store.user(name).map_err(|e| e.to_string())?.is_none() {
        return Err(crate::store::no_such_user(name));
    }
    let pw = read_new_password(password_stdin, &format!("New password for {name}: "))?;
    let hash = password::hash(&pw)?;
    let unlocked = store
        .set_password(name, &hash, crate::clock::now_ms(), &Actor::cli())
        .map_err(|e| e.to_string())?;
    if unlocked {
        note!(
            "password of '{name}' changed; the lock after wrong passwords is lifted with the old \
             password"
        );
    } else {
        note!("password of '{name}' changed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::failed_of;

    #[test]
    fn wrong_passwords_are_shown_against_the_lock() {
        assert_eq!(failed_of(Some(0), 10), "0/10");
        assert_eq!(failed_of(Some(9), 10), "9/10");
        // None gitgate writes: the next wrong password locks.
        assert_eq!(failed_of(Some(10), 10), "?/10");
        assert_eq!(failed_of(None, 10), "?/10");
    }
}
