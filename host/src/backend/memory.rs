//! An in-memory backend: values in a map, versions numbered from 1, lost
//! when the process ends. For embedders' tests and benchmarks, and the
//! fake against which `access` and the router are unit-tested. It can be
//! told to fail like an unreachable server.

use super::{BackendError, BackendKind, Read, SecretBackend, Supports, Version};
use crate::audit::NewRecord;
use crate::names::{Namespace, SecretName};
use crate::policy::Grant;
use crate::secret::SecretValue;
use crate::store::{SecretInfo, SetOptions, VersionInfo};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
struct Entry {
    versions: Vec<SecretValue>,
    revoked: bool,
}

type Map = BTreeMap<(Namespace, SecretName), Entry>;

/// Secrets in memory.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    secrets: Mutex<Map>,
    down: AtomicBool,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on every call fails as if the server were unreachable
    /// (`true`), or works again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    fn up(&self) -> Result<std::sync::MutexGuard<'_, Map>, BackendError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(BackendError::Unreachable {
                backend: self.describe(),
                why: "connection refused (memory://fake.internal:8200)".into(),
            });
        }
        Ok(self.secrets.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn not_found(&self, namespace: &Namespace, name: &SecretName) -> BackendError {
        BackendError::NotFound { namespace: namespace.clone(), name: name.clone(), backend: self.describe() }
    }
}

impl SecretBackend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Memory
    }

    fn describe(&self) -> String {
        "the in-memory backend".into()
    }

    fn supports(&self) -> Supports {
        Supports { write: true, expiry: false, keep: false, destroy: true, audit_in_transaction: false }
    }

    fn read(&self, namespace: &Namespace, grant: &Grant, version: Option<&Version>) -> Result<Read, BackendError> {
        let map = self.up()?;
        let Some(e) = map.get(&(namespace.clone(), grant.name().clone())) else { return Ok(Read::Absent) };
        let n = match version {
            Some(Version::Number(n)) => *n,
            Some(Version::Id(_)) => return Ok(Read::Absent),
            None => e.versions.len() as u64,
        };
        if e.revoked || e.versions.is_empty() {
            return Ok(Read::Revoked(Version::Number(n)));
        }
        Ok(match e.versions.get((n as usize).wrapping_sub(1)) {
            Some(v) => Read::Found(v.clone(), Version::Number(n), Vec::new()),
            None => Read::Absent,
        })
    }

    fn write(
        &self,
        namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        opts: &SetOptions,
        _audit: &NewRecord,
    ) -> Result<Version, BackendError> {
        let mut map = self.up()?;
        let key = (namespace.clone(), name.clone());
        if opts.rotate && !map.contains_key(&key) {
            return Err(self.not_found(namespace, name));
        }
        let e = map.entry(key).or_default();
        e.versions.push(value.clone());
        e.revoked = false;
        Ok(Version::Number(e.versions.len() as u64))
    }

    fn revoke(&self, namespace: &Namespace, name: &SecretName, _audit: &NewRecord) -> Result<String, BackendError> {
        let mut map = self.up()?;
        let e = map.get_mut(&(namespace.clone(), name.clone())).ok_or_else(|| self.not_found(namespace, name))?;
        e.revoked = true;
        Ok("revoked in memory".into())
    }

    fn destroy(&self, namespace: &Namespace, name: &SecretName, _audit: &NewRecord) -> Result<String, BackendError> {
        let mut map = self.up()?;
        let e = map.get_mut(&(namespace.clone(), name.clone())).ok_or_else(|| self.not_found(namespace, name))?;
        e.versions.clear();
        Ok("every version dropped".into())
    }

    fn remove(&self, namespace: &Namespace, name: &SecretName, _audit: &NewRecord) -> Result<bool, BackendError> {
        Ok(self.up()?.remove(&(namespace.clone(), name.clone())).is_some())
    }

    fn list(&self, namespace: &Namespace) -> Result<Vec<SecretInfo>, BackendError> {
        let map = self.up()?;
        Ok(map
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|((ns, name), e)| SecretInfo {
                destinations: Vec::new(),
                namespace: ns.as_str().to_owned(),
                name: name.as_str().to_owned(),
                version: e.versions.len() as u64,
                version_id: None,
                versions_stored: e.versions.len() as u64,
                keep_versions: 0,
                created_at: 0,
                updated_at: 0,
                expires_at: None,
                revoked_at: e.revoked.then_some(0),
                destroyed_at: None,
                tampered: false,
                dynamic: None,
            })
            .collect())
    }

    fn info(&self, namespace: &Namespace, name: &SecretName) -> Result<Option<SecretInfo>, BackendError> {
        Ok(self.list(namespace)?.into_iter().find(|i| i.name == name.as_str()))
    }

    fn versions(&self, namespace: &Namespace, name: &SecretName) -> Result<Vec<VersionInfo>, BackendError> {
        let map = self.up()?;
        let e = map.get(&(namespace.clone(), name.clone())).ok_or_else(|| self.not_found(namespace, name))?;
        let n = e.versions.len() as u64;
        Ok((1..=n)
            .rev()
            .map(|v| VersionInfo { version: v, version_id: None, created_at: 0, expires_at: None, current: v == n })
            .collect())
    }
}
