//! Where the master key lives and how it changes hands: `$KEYHOLE_MASTER_KEY`
//! or the data directory's `master.key`, the rotation file
//! `master.key.next`, retired keys (`master.key.<id>.old`), and the key lock
//! (`keys.lock`) that every opener of the store takes.
//!
//! A rotation writes the new key to `master.key.next` before its
//! transaction re-wraps the data keys, and holds the lock until the old key
//! is retired, so no other process can look at the key files half-way.
//! Opening the store picks the one candidate key that opens the store's
//! verifier and, if a rotation committed but was interrupted before it
//! installed its key file, finishes the installation.
//!
//! Invariant: nothing here deletes or overwrites a key file. Keys that leave
//! their place are renamed (`.old` for a retired key, `.abandoned` for a
//! rotation's key that never committed) and stay until the operator removes
//! them.

use crate::crypto::{self, KeyError, KeyId, KeySource, MasterKey};
use crate::data_dir::{DataDir, sync_dir};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An exclusive lock on the data directory's key files, held while the
/// store is opened (milliseconds) and for a whole master-key rotation.
/// Released when dropped, or when the process dies.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

impl KeyLock {
    /// Takes the lock, waiting up to `timeout` for a rotation in another
    /// process to finish.
    pub fn acquire(dir: &DataDir, timeout: Duration) -> Result<Self, KeyError> {
        let path = dir.root().join("keys.lock");
        let io = |err| KeyError::Io { action: "open the key lock", path: path.clone(), err };
        let file = crate::data_dir::private_file_options().read(true).write(true).open(&path).map_err(io)?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(KeyLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(KeyError::Locked { path, waited: timeout });
                }
                Err(std::fs::TryLockError::Error(err)) => return Err(io(err)),
            }
        }
    }
}

/// The key files of a data directory.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    root: PathBuf,
    current: PathBuf,
}

impl KeyFiles {
    /// The key files in `dir`.
    pub fn new(dir: &DataDir) -> Self {
        KeyFiles { root: dir.root().to_owned(), current: dir.master_key_path() }
    }

    /// `master.key`: the key, when it does not come from the environment.
    pub fn current(&self) -> PathBuf {
        self.current.clone()
    }

    /// `master.key.next`: a rotation's new key, before it is installed (or,
    /// for a key from the environment, until the operator takes it).
    pub fn next(&self) -> PathBuf {
        self.root.join("master.key.next")
    }

    /// Where a key that no longer opens the store is kept.
    pub fn retired(&self, id: &KeyId) -> PathBuf {
        self.root.join(format!("master.key.{id}.old"))
    }

    fn abandoned(&self, id: &str) -> PathBuf {
        self.root.join(format!("master.key.{id}.abandoned"))
    }

    /// Loads the key for a new store: the environment's, else `master.key`,
    /// else a new key written to `master.key` (0600).
    pub fn load_or_create(&self) -> Result<(MasterKey, KeySource), KeyError> {
        if let Some(k) = env_key()? {
            return Ok((k, KeySource::Env));
        }
        let path = self.current();
        match read_if_exists(&path)? {
            Some(k) => Ok((k, KeySource::File(path))),
            None => {
                let key = MasterKey::generate();
                crypto::write_new_key_file(&path, &key)?;
                Ok((key, KeySource::File(path)))
            }
        }
    }

    /// Chooses the key for an existing store whose key is `expected`;
    /// `opens` tells whether a key opens the store's verifier. Returns a key
    /// that does not open it only so that the caller can report it as the
    /// wrong key. Finishes a rotation that committed but did not install its
    /// key file. Call with the [`KeyLock`] held.
    pub fn choose(
        &self,
        _lock: &KeyLock,
        expected: &KeyId,
        opens: impl Fn(&MasterKey) -> bool,
    ) -> Result<(MasterKey, KeySource), KeyError> {
        let next_path = self.next();
        // A torn `master.key.next` was never used: a rotation writes and
        // syncs it before its transaction starts.
        let next = read_if_exists(&next_path).ok().flatten();
        if let Some(k) = env_key()? {
            if !opens(&k)
                && let Some(n) = next.as_ref().filter(|n| opens(n))
            {
                return Err(KeyError::RotatedAway { got: k.id(), next: next_path, next_id: n.id() });
            }
            if opens(&k) {
                self.set_aside_unused_next(next.as_ref(), &opens)?;
            }
            return Ok((k, KeySource::Env));
        }
        let current_path = self.current();
        let current = read_if_exists(&current_path)?;
        if let Some(k) = current.as_ref().filter(|k| opens(k)) {
            self.set_aside_unused_next(next.as_ref(), &opens)?;
            return Ok((k.clone(), KeySource::File(current_path)));
        }
        if let Some(n) = next.filter(|n| opens(n)) {
            // The rotation committed: its key is the store's key. Keep the
            // key it replaced, then install the new one.
            if let Some(old) = &current {
                rename(&current_path, &self.retired(&old.id()))?;
            }
            rename(&next_path, &current_path)?;
            sync_dir(&self.root);
            tracing::warn!(
                "completed an interrupted master-key rotation: {} now holds key {}",
                current_path.display(),
                n.id()
            );
            return Ok((n, KeySource::File(current_path)));
        }
        match current {
            Some(k) => Ok((k, KeySource::File(current_path))),
            None => Err(KeyError::Missing { path: current_path, expected: expected.clone() }),
        }
    }

    /// A `master.key.next` that does not open the store, while the store's
    /// key is known, is the key of a rotation that never committed: renamed
    /// to `master.key.<id>.abandoned`, never deleted.
    fn set_aside_unused_next(
        &self,
        next: Option<&MasterKey>,
        opens: &impl Fn(&MasterKey) -> bool,
    ) -> Result<(), KeyError> {
        if let Some(n) = next.filter(|n| !opens(n)) {
            rename(&self.next(), &self.abandoned(&n.id().0))?;
            sync_dir(&self.root);
            tracing::info!("set aside the key of a rotation that never committed as master.key.{}.abandoned", n.id());
        }
        Ok(())
    }

    /// Before a rotation writes `master.key.next`: moves aside whatever is
    /// there (a copy of the current key after the operator adopted it in the
    /// environment, or the key of a rotation that never committed), never
    /// deleting it. Call with the [`KeyLock`] held.
    pub fn clear_next(&self, _lock: &KeyLock, opens: impl Fn(&MasterKey) -> bool) -> Result<(), KeyError> {
        let next = self.next();
        if !next.exists() {
            return Ok(());
        }
        let to = match crypto::read_key_file(&next) {
            Ok(k) if opens(&k) => self.retired(&k.id()),
            Ok(k) => self.abandoned(&k.id().0),
            Err(_) => {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                self.abandoned(&format!("torn-{t}"))
            }
        };
        rename(&next, &to)?;
        sync_dir(&self.root);
        Ok(())
    }

    /// Writes a rotation's new key to `master.key.next` (0600, synced).
    pub fn write_next(&self, _lock: &KeyLock, key: &MasterKey) -> Result<(), KeyError> {
        crypto::write_new_key_file(&self.next(), key)
    }

    /// After a rotation committed, for a key from a file: retires the old
    /// key file (`old_id`) and installs the new one. `between` runs between
    /// the two renames (a seam for crash tests).
    pub fn install_next(&self, _lock: &KeyLock, old_id: &KeyId, between: impl FnOnce()) -> Result<(), KeyError> {
        let current = self.current();
        if current.exists() {
            rename(&current, &self.retired(old_id))?;
        }
        between();
        rename(&self.next(), &current)?;
        sync_dir(&self.root);
        Ok(())
    }
}

fn env_key() -> Result<Option<MasterKey>, KeyError> {
    match std::env::var(crypto::MASTER_KEY_ENV) {
        Ok(text) => Ok(Some(MasterKey::from_base64(&text, KeySource::Env)?)),
        Err(_) => Ok(None),
    }
}

fn read_if_exists(path: &Path) -> Result<Option<MasterKey>, KeyError> {
    match crypto::read_key_file(path) {
        Ok(k) => Ok(Some(k)),
        Err(KeyError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), KeyError> {
    std::fs::rename(from, to).map_err(|err| KeyError::Io { action: "rename", path: from.to_owned(), err })
}
