//! `gitgate token ...`: create, list, show, revoke.
//!
//! `create` prints the secret alone on stdout so that `TOKEN=$(gitgate token create ...)` works;
//! the details go to stderr. The secret is shown this once and never again.

use serde_json::json;

use super::{print_json, read_password, when};
use crate::clock;
use crate::lifecycle::{self, CreateRequest, Subject};
use crate::policy::Target;
use crate::store::{Actor, Store, TokenRecord};

/// Who `token create` is for, as given on the command line (exactly one is set; clap enforces it).
pub struct For<'a> {
    pub user: Option<&'a str>,
    pub project: Option<&'a str>,
    pub repo: Option<&'a str>,
}

pub fn create(
    store: &Store,
    who: For,
    name: &str,
    permissions: &[String],
    expiry_days: Option<u32>,
    password_stdin: bool,
    json: bool,
) -> Result<(), String> {
    let subject = match (who.user, who.project, who.repo) {
        (Some(user), None, None) => {
            if store.user(user).map_err(|e| e.to_string())?.is_none() {
                return Err(format!("no user '{user}'"));
            }
            let password = read_password(password_stdin, &format!("Password for {user}: "))?;
            Subject::Personal {
                user: user.to_string(),
                password,
            }
        }
        (None, Some(project), None) => {
            if project.contains('/') {
                return Err(format!(
                    "--project takes a project key, not '{project}': use --repo for a repository"
                ));
            }
            Subject::Scoped(Target::parse(project)?)
        }
        (None, None, Some(repo)) => {
            if !repo.contains('/') {
                return Err(format!(
                    "--repo takes PROJECT/REPO, not '{repo}': use --project for a whole project"
                ));
            }
            Subject::Scoped(Target::parse(repo)?)
        }
        _ => return Err("give exactly one of --user, --project or --repo".into()),
    };
    let (record, secret) = lifecycle::create(
        store,
        CreateRequest {
            subject,
            name: name.to_string(),
            permissions: permissions.to_vec(),
            expiry_days,
        },
        &Actor::cli(),
    )
    .map_err(|e| e.to_string())?;
    if json {
        let mut value = record.to_json();
        value["token"] = json!(secret.expose());
        return print_json(&value);
    }
    eprintln!(
        "created {} token '{}' (id {}) for {} with {}, expires {}",
        record.kind.as_str(),
        record.name,
        record.id,
        record.principal(),
        record.permissions,
        record
            .expires_at
            .map(clock::date)
            .unwrap_or_else(|| "never".into())
    );
    eprintln!("the secret below is shown once; store it now:");
    println!("{}", secret.expose());
    Ok(())
}

pub fn list(store: &Store, user: Option<&str>, json: bool) -> Result<(), String> {
    let tokens = store.tokens(user).map_err(|e| e.to_string())?;
    if json {
        let values: Vec<_> = tokens.iter().map(TokenRecord::to_json).collect();
        return print_json(&json!(values));
    }
    println!(
        "{:<12} {:<20} {:<10} {:<20} {:<24} {:<20} {:<20} STATUS",
        "ID", "NAME", "KIND", "FOR", "PERMISSIONS", "EXPIRES", "LAST USED"
    );
    let now = clock::now_ms();
    for t in tokens {
        println!(
            "{:<12} {:<20} {:<10} {:<20} {:<24} {:<20} {:<20} {}",
            t.id,
            t.name,
            t.kind.as_str(),
            t.principal(),
            t.permissions.to_string(),
            when(t.expires_at),
            when(t.last_used_at),
            status(&t, now)
        );
    }
    Ok(())
}

pub fn show(store: &Store, id: &str, json: bool) -> Result<(), String> {
    let t = store
        .token(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no token with id '{id}'"))?;
    if json {
        return print_json(&t.to_json());
    }
    println!("id:          {}", t.id);
    println!("name:        {}", t.name);
    println!("kind:        {}", t.kind.as_str());
    println!("for:         {}", t.principal());
    println!("permissions: {}", t.permissions);
    println!(
        "created:     {} by {}",
        when(Some(t.created_at)),
        t.created_by
    );
    println!("expires:     {}", when(t.expires_at));
    println!(
        "last used:   {}{}",
        when(t.last_used_at),
        t.last_used_addr
            .as_deref()
            .map(|a| format!(" from {a}"))
            .unwrap_or_default()
    );
    println!("status:      {}", status(&t, clock::now_ms()));
    Ok(())
}

pub fn revoke(store: &Store, id: &str) -> Result<(), String> {
    let t = store
        .revoke_token(id, &Actor::cli())
        .map_err(|e| e.to_string())?;
    eprintln!(
        "revoked token '{}' ({}) of {}; it is refused from the next request on",
        t.name,
        t.id,
        t.principal()
    );
    Ok(())
}

fn status(t: &TokenRecord, now: i64) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at.is_some_and(|e| now >= e) {
        "expired"
    } else {
        "active"
    }
}
