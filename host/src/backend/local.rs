//! The local backend: namespaces served by the embedded store (`store`),
//! values sealed under the master key in the data directory's SQLite file.
//!
//! Writes go through one [`SecretStore`] behind a mutex (SQLite has one
//! writer anyway). Reads do not queue behind it or behind each other: each
//! takes a [`Reader`] (a connection of its own, WAL mode) from a small pool,
//! so tasks read in parallel.

use super::{BackendError, BackendKind, Read, SecretBackend, Supports, Version};
use crate::audit::NewRecord;
use crate::names::{Namespace, SecretName};
use crate::policy::Grant;
use crate::secret::SecretValue;
use crate::store::{Lookup, Reader, SecretInfo, SecretStore, SetOptions, StoreError, VersionInfo};
use std::sync::{Mutex, MutexGuard};

/// Readers kept for reuse; more are opened under load and dropped after.
const POOLED_READERS: usize = 16;

/// The embedded store as a backend.
#[derive(Debug)]
pub struct LocalBackend {
    store: Mutex<SecretStore>,
    readers: Mutex<Vec<Reader>>,
}

impl LocalBackend {
    /// Serves namespaces from `store`.
    pub fn new(store: SecretStore) -> Self {
        LocalBackend { store: Mutex::new(store), readers: Mutex::new(Vec::new()) }
    }

    /// The store, for what only it does (records, export, key rotation).
    pub fn store(&self) -> MutexGuard<'_, SecretStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> Result<Reader, StoreError> {
        if let Some(r) = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(r);
        }
        self.store().reader()
    }

    fn give_back(&self, reader: Reader) {
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOLED_READERS {
            pool.push(reader);
        }
    }
}

impl SecretBackend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn describe(&self) -> String {
        "the local store".into()
    }

    fn supports(&self) -> Supports {
        Supports { write: true, expiry: true, keep: true, destroy: true, audit_in_transaction: true }
    }

    fn read(&self, namespace: &Namespace, grant: &Grant, version: Option<&Version>) -> Result<Read, BackendError> {
        let number = match version {
            None => None,
            Some(Version::Number(n)) => Some(*n),
            Some(Version::Id(_)) => return Ok(Read::Absent),
        };
        let reader = self.reader()?;
        let found = reader.resolve_at(namespace, grant, number);
        self.give_back(reader);
        Ok(match found? {
            None => Read::Absent,
            Some(Lookup::Found(r)) => Read::Found(r.value, Version::Number(r.version), r.destinations),
            Some(Lookup::Revoked { version, .. }) => Read::Revoked(Version::Number(version)),
            Some(Lookup::Expired { version, .. }) => Read::Expired(Version::Number(version)),
            Some(Lookup::NotFound) => Read::Absent,
        })
    }

    fn write(
        &self,
        namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        opts: &SetOptions,
        audit: &NewRecord,
    ) -> Result<Version, BackendError> {
        Ok(Version::Number(self.store().set(namespace, name, value, opts, audit)?))
    }

    fn revoke(&self, namespace: &Namespace, name: &SecretName, audit: &NewRecord) -> Result<String, BackendError> {
        self.store().revoke(namespace, name, audit)?;
        Ok("every read now gets `revoked`".into())
    }

    fn destroy(&self, namespace: &Namespace, name: &SecretName, audit: &NewRecord) -> Result<String, BackendError> {
        let warning = self.store().destroy(namespace, name, audit)?;
        let done = "every version's ciphertext and data key are erased".to_owned();
        Ok(match warning {
            Some(w) => format!("{done}; but: {w}"),
            None => done,
        })
    }

    fn remove(&self, namespace: &Namespace, name: &SecretName, audit: &NewRecord) -> Result<bool, BackendError> {
        Ok(self.store().remove(namespace, name, audit)?)
    }

    fn list(&self, namespace: &Namespace) -> Result<Vec<SecretInfo>, BackendError> {
        Ok(self.store().list(Some(namespace), None)?)
    }

    fn info(&self, namespace: &Namespace, name: &SecretName) -> Result<Option<SecretInfo>, BackendError> {
        Ok(self.store().describe(namespace, name)?)
    }

    fn versions(&self, namespace: &Namespace, name: &SecretName) -> Result<Vec<VersionInfo>, BackendError> {
        Ok(self.store().versions(namespace, name)?)
    }
}
