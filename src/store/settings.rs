//! Settings: global key/value pairs such as the token expiry policy. Reading is in
//! [`Store::setting`]; changing them is an audited event like any other change.

use rusqlite::params;

use super::audit::record;
use super::{Actor, Result, Store};

impl Store {
    /// Set several settings at once, in one transaction with one audit event (`action`, e.g.
    /// `policy.changed`, with `detail` saying what the new values are).
    pub fn set_settings(
        &self,
        pairs: &[(&str, String)],
        action: &str,
        detail: &str,
        actor: &Actor,
    ) -> Result<()> {
        self.write(|tx| {
            for (key, value) in pairs {
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )?;
            }
            record(tx, actor, action, "settings", detail)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{actor, temp_store};

    #[test]
    fn set_and_read_back_with_audit() {
        let (_d, store) = temp_store();
        assert_eq!(store.setting("a").unwrap(), None);
        store
            .set_settings(
                &[("a", "1".into()), ("b", "x".into())],
                "policy.changed",
                "a=1",
                &actor(),
            )
            .unwrap();
        store
            .set_settings(&[("a", "2".into())], "policy.changed", "a=2", &actor())
            .unwrap();
        assert_eq!(store.setting("a").unwrap().as_deref(), Some("2"));
        assert_eq!(store.setting("b").unwrap().as_deref(), Some("x"));
        let events = store.audit_events(None, 10).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.action == "policy.changed"));
    }
}
