//! `gitgate grant ...`: give, take and list users' permissions on projects and repositories.

use serde_json::json;

use super::print_json;
use crate::permission::Level;
use crate::policy::Target;
use crate::store::{Actor, GrantChange, Store};

/// `git_prefix`: the config's, where the grant would be served; `project_root`: the embedded
/// backend's, to say so when the target is not there (see [`super::not_served_yet`]).
pub fn add(
    store: &Store,
    name: &str,
    target: &str,
    level: &str,
    git_prefix: &str,
    project_root: Option<&std::path::Path>,
) -> Result<(), String> {
    let target = Target::parse_new(target, git_prefix)?;
    let level: Level = level.parse()?;
    let change = store
        .add_grant(name, &target, level, &Actor::cli())
        .map_err(|e| e.to_string())?;
    match change {
        GrantChange::Added => note!("user '{name}' now has {level} on {target}"),
        GrantChange::Changed { from } => note!(
            "user '{name}' now has {level} on {target}, replacing {from} (their tokens have the \
             new level at once)"
        ),
        GrantChange::Unchanged => {
            note!("user '{name}' already has {level} on {target}; nothing changed")
        }
    }
    if let Some(more) = held_beyond(store, name, &target, Some(level))? {
        note!("note: {more}");
    }
    if let Some(note) = project_root.and_then(|root| super::not_served_yet(&target, root)) {
        note!("{note}");
    }
    Ok(())
}

pub fn remove(store: &Store, name: &str, target: &str) -> Result<(), String> {
    let target = Target::parse(target)?;
    let removed = store
        .remove_grant(name, &target, &Actor::cli())
        .map_err(|e| e.to_string())?;
    if removed {
        match held_beyond(store, name, &target, None)? {
            Some(more) => note!("removed the grant of '{name}' on {target}; but {more}"),
            None => {
                note!("removed the grant of '{name}' on {target} (their tokens lose it at once)")
            }
        }
        return Ok(());
    }
    // In place already, as a script repeating itself expects; the grants there are, for a
    // target mistyped.
    let theirs: Vec<String> = store
        .grants(Some(name))
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|g| match g.level {
            Some(level) => format!("{} {level}", g.target),
            None => format!("{} (unreadable)", g.target),
        })
        .collect();
    let theirs = match theirs.as_slice() {
        [] => "none".to_string(),
        all => all.join(", "),
    };
    note!("'{name}' has no grant on {target} (their grants: {theirs}); nothing changed");
    Ok(())
}

/// What `name` holds on `target` beyond `granted` (the level of the grant on it, `None` when
/// there is none): the administrator role (ADMIN on every repository), or a grant on the
/// repository's project — the highest grant covering a repository counts —, or, for a project,
/// the grants of its repositories above `granted`. An operator who narrows or removes a grant
/// to close a repository to someone must not read that it is closed when it is not.
fn held_beyond(
    store: &Store,
    name: &str,
    target: &Target,
    granted: Option<Level>,
) -> Result<Option<String>, String> {
    let user = store.user(name).map_err(|e| e.to_string())?;
    if user.is_some_and(|u| u.role == crate::store::Role::Admin) {
        return Ok(Some(format!(
            "'{name}' is an administrator, and holds {} on every repository whatever their \
             grants say",
            Level::Admin
        )));
    }
    let grants = store.grants(Some(name)).map_err(|e| e.to_string())?;
    let Target::Repo(repo) = target else {
        // A project's grant narrowed or removed leaves the grants of its repositories: those
        // above the project's new level still open them.
        let above: Vec<String> = grants
            .iter()
            .filter_map(|g| {
                let Ok(Target::Repo(r)) = Target::parse(&g.target) else {
                    return None;
                };
                let level = g.level?;
                (target.covers(&r) && Some(level) > granted).then(|| format!("{level} on {r}"))
            })
            .collect();
        return Ok(match above.as_slice() {
            [] => None,
            [one] => Some(format!(
                "'{name}' still has {one} (a grant on the repository itself; the highest grant \
                 covering a repository counts)"
            )),
            all => Some(format!(
                "'{name}' still has {} (grants on the repositories themselves; the highest \
                 grant covering a repository counts)",
                all.join(", ")
            )),
        });
    };
    let through = grants
        .into_iter()
        .filter_map(|g| {
            let covering = Target::parse(&g.target).ok()?;
            (covering != *target && covering.covers(repo)).then_some((g.level?, g.target))
        })
        .max_by_key(|(level, _)| *level);
    Ok(match through {
        Some((level, project)) if Some(level) > granted => Some(format!(
            "'{name}' still has {level} on {target} through their grant on {project} (the \
             highest grant covering a repository counts)"
        )),
        _ => None,
    })
}

pub fn list(store: &Store, name: Option<&str>, json: bool) -> Result<(), String> {
    let grants = store.grants(name).map_err(|e| e.to_string())?;
    if json {
        return print_json(&json!(grants));
    }
    let wu = super::width(24, grants.iter().map(|g| &g.user));
    let wt = super::width(40, grants.iter().map(|g| &g.target));
    outln!("{:<wu$} {:<wt$} LEVEL", "USER", "TARGET");
    for g in grants {
        match (g.level, &g.unknown_level) {
            (Some(level), _) => outln!("{:<wu$} {:<wt$} {level}", g.user, g.target),
            (None, said) => outln!(
                "{:<wu$} {:<wt$} none: the stored level {:?} or target cannot be read, so it \
                 grants nothing (remove it, and set it again with grant add)",
                g.user,
                g.target,
                said.as_deref().unwrap_or_default()
            ),
        }
    }
    Ok(())
}
