//! `gitgate policy ...`: show and set the global token expiry policy. The rules live in
//! [`crate::lifecycle`]; this only reads options and prints.

use serde_json::json;

use super::print_json;
use crate::clock::now_ms;
use crate::lifecycle::{self, Caller, ExpiryPolicy, PolicyChange};
use crate::store::{Actor, Store};

fn policy_json(p: &ExpiryPolicy) -> serde_json::Value {
    json!({ "expiryRequired": p.expiry_required, "maxExpiryDays": p.max_expiry_days })
}

pub fn show(store: &Store, json: bool) -> Result<(), String> {
    let p = lifecycle::policy(store).map_err(|e| e.to_string())?;
    if json {
        let mut value = policy_json(&p);
        let tokens = store.tokens(None).map_err(|e| e.to_string())?;
        let non_compliant: Vec<&str> = p
            .breaches(&tokens, now_ms())
            .iter()
            .map(|t| t.id.as_str())
            .collect();
        value["nonCompliantTokens"] = json!(non_compliant);
        return print_json(&value);
    }
    outln!(
        "expiry required:  {}",
        if p.expiry_required { "yes" } else { "no" }
    );
    outln!(
        "max expiry days:  {}",
        match (p.max_expiry_days, p.expiry_required) {
            (None, _) => "none".to_string(),
            (Some(d), true) => d.to_string(),
            (Some(d), false) => format!("{d} (applies only while expiry is required)"),
        }
    );
    let tokens = store.tokens(None).map_err(|e| e.to_string())?;
    let bad = p.breaches(&tokens, now_ms());
    if !bad.is_empty() {
        outln!("non-compliant tokens (revoke them with `gitgate token revoke ID`):");
        for t in bad {
            outln!("  {} '{}' of {}", t.id, t.name, t.principal());
        }
    }
    Ok(())
}

/// `policy set`: options not given keep their current value.
pub fn set(
    store: &Store,
    expiry_required: Option<&str>,
    max_expiry_days: Option<u32>,
    no_max: bool,
) -> Result<(), String> {
    // clap already takes only yes or no (main.rs), before the store opens.
    let expiry_required = match expiry_required {
        None => None,
        Some("yes") => Some(true),
        Some("no") => Some(false),
        Some(other) => return Err(format!("--expiry-required takes yes or no, not '{other}'")),
    };
    let max_expiry_days = match (max_expiry_days, no_max) {
        (_, true) => Some(None),
        (Some(days), false) => Some(Some(days)),
        (None, false) => None,
    };
    // Options left out keep their value as it is when the change is written.
    let change = PolicyChange {
        expiry_required,
        max_expiry_days,
    };
    let (p, changed) = lifecycle::set_policy(store, &Caller::Operator, change, &Actor::cli())
        .map_err(|e| e.to_string())?;
    if changed {
        note!(
            "token policy: {}; it applies to tokens created from now on",
            p.describe()
        );
        // Tokens already made keep working, but one that does not meet the policy cannot be
        // given a new secret: a rotation planned for a CI token would fail (review).
        let tokens = store.tokens(None).unwrap_or_default();
        let bad = p.breaches(&tokens, now_ms());
        if !bad.is_empty() {
            note!(
                "{} token(s) made before do not meet it: they keep working until they are \
                 revoked (`gitgate token revoke ID`) or expire (one without an expiry never \
                 does), but cannot be rotated (create new ones instead); `gitgate policy show` \
                 lists them",
                bad.len()
            );
        }
    } else {
        note!("token policy: {} already; nothing changed", p.describe());
    }
    Ok(())
}
