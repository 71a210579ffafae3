//! `gitgate backup FILE`: a consistent copy of the store, made beside a running server, with
//! gitgate alone (a host may have no sqlite3 program; a `cp` of a live store misses what is
//! still in its `-wal`). The store is read as it is: never migrated, nothing written beside it.

use std::path::Path;

use crate::config::Config;
use crate::store::Store;

pub fn run(config_path: &Path, to: &Path) -> Result<(), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let from = &config.store.path;
    let bytes = Store::back_up(from, to).map_err(|e| match e {
        crate::store::StoreError::Refused(m) => m,
        e => config.store_refusal(e),
    })?;
    note!(
        "backed up the token store {} to {} ({bytes} bytes, mode 0600); to restore it, stop \
         gitgate first (see \"Backing up and restoring the store\" in the README)",
        from.display(),
        to.display()
    );
    Ok(())
}
