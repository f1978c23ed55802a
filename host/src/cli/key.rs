//! `host key rotate`.

use super::*;
use keyhole::audit::Actor;
use keyhole::keyring::KeyLock;

#[derive(Subcommand, Debug)]
pub(crate) enum KeyCommand {
    /// Re-wrap every data key under a new master key, in one transaction.
    Rotate,
}

pub(crate) fn key_rotate(dir: &DataDir) -> Result<(), Exit> {
    dir.ensure().map_err(|e| fail(HOST, e))?;
    // Held from before the new key is written until the old one is retired.
    let lock = KeyLock::acquire(dir, keyhole::db::busy_timeout())?;
    let mut store = SecretStore::open_locked(dir, &lock)?;
    let (id, n, from_env) = store.rotate_key_files(dir, &lock, &Actor::current_user(), &|name| failpoint(name))?;
    if from_env {
        eprintln!(
            "master key rotated to key {id} ({n} data keys re-wrapped). The new key is in {}: set $KEYHOLE_MASTER_KEY to its contents, then delete the file",
            dir.root().join("master.key.next").display()
        );
    } else {
        eprintln!(
            "master key rotated to key {id} ({n} data keys re-wrapped); {} holds the new key, and the old key is kept \
             as master.key.<id>.old until you remove it",
            dir.master_key_path().display()
        );
    }
    Ok(())
}
