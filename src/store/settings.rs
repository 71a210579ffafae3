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
        pairs: &[(&'static str, String)],
        action: &str,
        detail: &str,
        actor: &Actor,
    ) -> Result<()> {
        self.change_settings(action, actor, |_| {
            Ok(((), Some((pairs.to_vec(), detail.to_string()))))
        })
    }

    /// Read settings and change them in one write transaction: `change` reads them (through the
    /// reader it is given) as they are under the write lock, so that a change made meanwhile by
    /// another process is seen, not written over. It returns its answer and, when something is
    /// to change, the pairs to set with the audit event's detail (`action` is its name); `None`
    /// writes nothing and records nothing.
    pub fn change_settings<T>(
        &self,
        action: &str,
        actor: &Actor,
        change: impl FnOnce(&dyn Fn(&str) -> Result<Option<String>>) -> Result<(T, Option<Changed>)>,
    ) -> Result<T> {
        self.write(|tx| {
            let (answer, changed) = change(&|key| super::setting_in(tx, key))?;
            if let Some((pairs, detail)) = changed {
                for (key, value) in &pairs {
                    tx.execute(
                        "INSERT INTO settings (key, value) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        params![key, value],
                    )?;
                }
                record(tx, actor, action, "settings", &detail)?;
            }
            Ok(answer)
        })
    }
}

/// What [`Store::change_settings`] is to write: the pairs to set, and the audit event's detail.
pub type Changed = (Vec<(&'static str, String)>, String);

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
