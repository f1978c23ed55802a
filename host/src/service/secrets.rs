//! What may be known about secrets without reading one: the listing and
//! the description that `host secret list|describe` (local and remote),
//! `GET /api/v1/secrets[/{ns}/{name}]` and the console all show, built
//! here once. Metadata only: nothing here reads a value.

use super::ServiceError;
use crate::audit::LastRead;
use crate::authz::Permission;
use crate::backend::{BackendConfig, BackendError, BackendKind, DynamicDef, Router};
use crate::names::{Namespace, SecretName};
use crate::store::{SecretInfo, StoreError, VersionInfo, fmt_time, now};
use crate::vouch::Voucher;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Secrets a caller may list, and the namespaces whose backend did not answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecretList {
    /// By namespace, then name; dynamic secrets included (not when
    /// listing what expires).
    pub secrets: Vec<SecretInfo>,
    /// Backends that could not be listed.
    #[serde(default)]
    pub unavailable: Vec<Unavailable>,
}

impl SecretList {
    /// The listed secrets whose stored state failed its integrity check.
    pub fn tampered(&self) -> impl Iterator<Item = &SecretInfo> {
        self.secrets.iter().filter(|s| s.tampered)
    }
}

/// A namespace whose backend could not be listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unavailable {
    /// The namespace.
    pub namespace: String,
    /// The backend serving it.
    #[serde(default)]
    pub backend: String,
    /// What went wrong.
    pub error: String,
}

/// Lists the secrets `who` may list (`secret:list` where each lives): in
/// `namespace` only, if given; with `expiring_before`, only those whose
/// current version expires before then (expired ones included). A row that
/// fails its integrity check is listed (marked) and recorded.
pub fn list(
    secrets: &Router,
    who: &Voucher,
    namespace: Option<&Namespace>,
    expiring_before: Option<i64>,
) -> Result<SecretList, ServiceError> {
    secrets.refresh()?;
    let mut out =
        SecretList { secrets: secrets.local().store().list(namespace, expiring_before)?, ..Default::default() };
    for (ns, b) in secrets.remote() {
        if namespace.is_some_and(|n| n != ns) || who.may(Permission::SecretList, ns).is_err() {
            continue;
        }
        match b.list(ns) {
            Ok(remote) => out.secrets.extend(remote.into_iter().filter(|_| expiring_before.is_none())),
            Err(e) => {
                let (namespace, backend) = (ns.as_str().to_owned(), b.describe());
                out.unavailable.push(Unavailable { namespace, backend, error: e.to_string() });
            }
        }
        // Dynamic secrets are defined here, whether or not the server answers.
        if expiring_before.is_none() {
            out.secrets.extend(dynamic_defs(b.config().as_ref()).map(|(name, def)| dynamic_info(ns, name, def)));
        }
    }
    out.secrets.retain(|s| Namespace::new(&s.namespace).is_ok_and(|ns| who.may(Permission::SecretList, &ns).is_ok()));
    out.secrets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for s in out.tampered() {
        if let (Ok(namespace), Ok(name)) = (Namespace::new(&s.namespace), SecretName::new(&s.name)) {
            let path = secrets.local().store().path().to_owned();
            let e = StoreError::RowTampered { path, namespace, name, what: "its stored state" };
            secrets.record_tamper(&e.into(), &who.actor);
        }
    }
    Ok(out)
}

/// The dynamic secrets a backend's configuration defines.
fn dynamic_defs(config: Option<&BackendConfig>) -> impl Iterator<Item = (&String, &DynamicDef)> {
    let defs = match config {
        Some(BackendConfig::Vault(v)) => Some(&v.dynamic),
        _ => None,
    };
    defs.into_iter().flatten()
}

/// A dynamic secret as a listing shows it: no version, no times.
fn dynamic_info(ns: &Namespace, name: &str, def: &DynamicDef) -> SecretInfo {
    SecretInfo {
        namespace: ns.as_str().to_owned(),
        name: name.to_owned(),
        version: 0,
        version_id: None,
        versions_stored: 0,
        keep_versions: 0,
        created_at: 0,
        updated_at: 0,
        expires_at: None,
        revoked_at: None,
        destroyed_at: None,
        destinations: def.destinations.clone(),
        tampered: false,
        dynamic: Some(def.path.clone()),
    }
}

/// A secret's state in words, as listings and descriptions say it.
pub fn state(s: &SecretInfo, now: i64) -> String {
    if let Some(path) = &s.dynamic {
        format!("dynamic: minted per execution from {path}")
    } else if s.tampered {
        "TAMPERED (edited outside keyhole; reads refused)".into()
    } else if s.destroyed_at.is_some() {
        "destroyed".into()
    } else if s.revoked_at.is_some() {
        "revoked".into()
    } else {
        match s.expires_at {
            Some(x) if x <= now => "expired".into(),
            Some(x) => format!("expires {}", fmt_time(x)),
            None => "active".into(),
        }
    }
}

/// A version as a description names it: a number, or a backend's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VersionRef {
    /// Keyhole's store and Vault number versions.
    Number(u64),
    /// AWS Secrets Manager names them.
    Id(String),
}

/// A staged version: stored, not read until committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Its number.
    pub version: u64,
    /// When it was staged (RFC 3339).
    pub created: String,
}

/// What a dynamic secret's description adds: its definition and its leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minting {
    /// The path each credential is minted from.
    pub minted_from: String,
    /// The longest a credential lives.
    pub ttl_secs: u64,
    /// The server-side policy of the token that mints it.
    pub policy: String,
    /// Credentials minted so far.
    pub leases: usize,
    /// Of those, not yet revoked.
    pub outstanding: usize,
    /// When the newest was minted (RFC 3339).
    pub last_minted: Option<String>,
}

/// A secret's description: metadata, never a value. Times are RFC 3339.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretDescription {
    /// Where it lives (`""`: the root).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The backend serving it.
    pub backend: String,
    /// Its state in words (`active`, `expires …`, `revoked`, …).
    pub state: String,
    /// Minted per execution rather than stored.
    pub dynamic: bool,
    /// The version tasks read.
    pub current_version: Option<VersionRef>,
    /// Every version still stored, newest first.
    pub versions: Vec<VersionInfo>,
    /// How many versions are kept.
    pub keep_versions: Option<u64>,
    /// Created.
    pub created: Option<String>,
    /// Last set or rotated.
    pub rotated: Option<String>,
    /// When the current version expires.
    pub expires: Option<String>,
    /// When it was revoked.
    pub revoked: Option<String>,
    /// When it was destroyed.
    pub destroyed: Option<String>,
    /// Where its value may be sent; empty: unbound.
    pub destinations: Vec<String>,
    /// A staged version waiting to be committed.
    pub staged: Option<Staged>,
    /// The newest granted read.
    pub last_read: Option<LastRead>,
    /// Its stored state failed its integrity check (recorded).
    #[serde(default)]
    pub tampered: bool,
    /// For a dynamic secret: its definition and leases.
    #[serde(flatten, default)]
    pub minting: Option<Minting>,
}

/// Describes `name` in exactly `ns` for `who` (`secret:list` there): its
/// metadata, versions, staged version and last read; a dynamic secret's
/// definition and leases. `store_path` is the store file the audit trail
/// and the leases live in, `audit` a connection to read the trail.
pub fn describe(
    secrets: &Router,
    store_path: &Path,
    audit: &rusqlite::Connection,
    who: &Voucher,
    ns: &Namespace,
    name: &SecretName,
) -> Result<SecretDescription, ServiceError> {
    if let Err(e) = who.may(Permission::SecretList, ns) {
        return Err(ServiceError::Forbidden(format!("describe {name}: {e}")));
    }
    secrets.refresh()?;
    let backend = secrets.backend_for(ns);
    let config = backend.config();
    if let Some(def) = dynamic_defs(config.as_ref()).find(|(n, _)| n.as_str() == name.as_str()).map(|(_, d)| d) {
        return describe_dynamic(backend.describe(), store_path, ns, name, def);
    }
    let info = backend.info(ns, name)?.ok_or_else(|| {
        ServiceError::from(BackendError::from(StoreError::NotFound { namespace: ns.clone(), name: name.clone() }))
    })?;
    if info.tampered {
        let path = secrets.local().store().path().to_owned();
        let e = StoreError::RowTampered { path, namespace: ns.clone(), name: name.clone(), what: "its stored state" };
        secrets.record_tamper(&e.into(), &who.actor);
    }
    let versions = backend.versions(ns, name).inspect_err(|e| secrets.record_tamper(e, &who.actor))?;
    let last_read =
        crate::audit::last_read(audit, store_path, ns, name).map_err(|e| ServiceError::Host(e.to_string()))?;
    let staged = match backend.kind() {
        BackendKind::Local => secrets.local().store().staged(ns, name).map_err(BackendError::from)?,
        _ => None,
    };
    Ok(SecretDescription {
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        backend: backend.describe(),
        state: state(&info, now()),
        dynamic: false,
        current_version: Some(info.version_id.clone().map_or(VersionRef::Number(info.version), VersionRef::Id)),
        versions,
        keep_versions: Some(info.keep_versions),
        created: Some(fmt_time(info.created_at)),
        rotated: Some(fmt_time(info.updated_at)),
        expires: info.expires_at.map(fmt_time),
        revoked: info.revoked_at.map(fmt_time),
        destroyed: info.destroyed_at.map(fmt_time),
        destinations: info.destinations.clone(),
        staged: staged.map(|v| Staged { version: v.version, created: fmt_time(v.created_at) }),
        last_read,
        tampered: info.tampered,
        minting: None,
    })
}

fn describe_dynamic(
    backend: String,
    store_path: &Path,
    ns: &Namespace,
    name: &SecretName,
    def: &DynamicDef,
) -> Result<SecretDescription, ServiceError> {
    let leases = crate::lease::Leases::open(store_path).map_err(|e| ServiceError::Host(e.to_string()))?;
    let mine: Vec<_> = leases
        .list(false)
        .map_err(|e| ServiceError::Host(e.to_string()))?
        .into_iter()
        .filter(|l| l.namespace == ns.as_str() && l.name == name.as_str())
        .collect();
    let info = dynamic_info(ns, name.as_str(), def);
    Ok(SecretDescription {
        namespace: ns.as_str().to_owned(),
        name: name.to_string(),
        backend,
        state: state(&info, now()),
        dynamic: true,
        current_version: None,
        versions: Vec::new(),
        keep_versions: None,
        created: None,
        rotated: None,
        expires: None,
        revoked: None,
        destroyed: None,
        destinations: def.destinations.clone(),
        staged: None,
        last_read: None,
        tampered: false,
        minting: Some(Minting {
            minted_from: def.path.clone(),
            ttl_secs: def.ttl_secs,
            policy: def.policy.clone(),
            leases: mine.len(),
            outstanding: mine.iter().filter(|l| l.revoked.is_none()).count(),
            last_minted: mine.first().map(|l| l.minted.clone()),
        }),
    })
}
