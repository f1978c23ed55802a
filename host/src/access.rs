//! The single seam through which a plugin's secret request passes:
//! [`get_secret`] checks the grant, resolves the secret in the namespace
//! chain, adds the value to the execution's mask set and only then returns
//! it. The plugin-facing import in `sandbox` is a thin call to this function.
//!
//! Invariant: no other code path hands a secret value to a plugin.

use crate::audit::{Action, Actor, AuditLog, NewRecord, Outcome};
use crate::mask::MaskSet;
use crate::names::{ExecutionId, FlowId, Namespace, SecretName, TaskId};
use crate::policy::Grant;
use crate::policy::{Grants, Refusal};
use crate::secret::SecretValue;
use crate::store::{Lookup, Pin, Resolved, SecretStore, StoreError};
use crate::vault::{Backends, VaultLookup};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most audited `secrets.get` calls one task may make (granted, denied and
/// not-found alike); later calls are `unavailable`, and one summary record
/// says so. Bounds how much a hostile plugin can grow the audit log.
pub const MAX_AUDITED_REQUESTS: u64 = 10_000;

/// Who is asking: the running task's identity.
#[derive(Debug, Clone)]
pub struct TaskIdentity {
    /// Namespace its secrets are looked up in.
    pub namespace: Namespace,
    /// The flow it belongs to.
    pub flow: FlowId,
    /// The task id.
    pub task: TaskId,
    /// The execution.
    pub execution: ExecutionId,
    /// SHA-256 of the plugin's wasm bytes, lowercase hex.
    pub plugin_sha256: String,
}

/// Everything a task's `secrets.get` calls need.
#[derive(Debug, Clone)]
pub struct SecretAccess {
    /// The task.
    pub identity: Arc<TaskIdentity>,
    /// What it may read.
    pub grants: Grants,
    /// Where secrets live.
    pub store: Arc<Mutex<SecretStore>>,
    /// The execution's mask set (what the operator sees is masked with it);
    /// every revealed value goes in here first.
    pub masks: Arc<MaskSet>,
    /// This task's own mask set: only what it read. What it hands to later
    /// tasks is masked with this, so how masking treats its output tells it
    /// nothing about secrets it was not granted.
    pub task_masks: Arc<MaskSet>,
    /// `secrets.get` calls so far (see [`MAX_AUDITED_REQUESTS`]).
    pub requests: Arc<AtomicU64>,
    /// Where every attempt is recorded before it is answered.
    pub audit: AuditLog,
    /// The version each secret was first read at in this execution.
    pub pins: Pins,
    /// Namespaces served by a Vault/OpenBao server.
    pub backends: Arc<Backends>,
}

/// Per execution: secret name to the version first read.
pub type Pins = Arc<Mutex<HashMap<SecretName, Pin>>>;

impl TaskIdentity {
    /// This task as an audit actor.
    pub fn actor(&self) -> Actor {
        Actor::Task {
            flow: self.flow.as_str().to_owned(),
            task: self.task.as_str().to_owned(),
            execution: self.execution.clone(),
            plugin_sha256: self.plugin_sha256.clone(),
        }
    }
}

/// Why a request was not answered with a value; mirrors the WIT `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// Not granted to this task.
    #[error("denied")]
    Denied,
    /// In no namespace of the chain.
    #[error("not found")]
    NotFound,
    /// Revoked by an operator.
    #[error("revoked")]
    Revoked,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// The host could not serve the request; never contains a value.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Decides one `secrets.get(requested)` call from a plugin.
///
/// Order matters: decide, then write the audit record durably, then add the
/// value to the mask set, then release it. If the record cannot be written
/// the answer is `Unavailable` and no value leaves (fail closed).
pub fn get_secret(access: &SecretAccess, requested: &str) -> Result<SecretValue, AccessError> {
    let id = &access.identity;
    let n = access.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if n > MAX_AUDITED_REQUESTS {
        if n == MAX_AUDITED_REQUESTS + 1 {
            let rec = NewRecord::ok(&id.actor(), Action::TaskReadCap, &id.namespace, None)
                .outcome(Outcome::Unavailable)
                .reason(format!(
                    "the task made {MAX_AUDITED_REQUESTS} audited secret requests; this and every later one is refused"
                ));
            let _ = access.audit.record(rec);
        }
        return Err(AccessError::Unavailable(format!(
            "this task has made {MAX_AUDITED_REQUESTS} secret requests, the most one task may make"
        )));
    }
    let mut record = NewRecord {
        actor: id.actor(),
        action: Action::SecretRead,
        outcome: Outcome::Denied,
        namespace: id.namespace.clone(),
        secret: None,
        version: None,
        reason: None,
        value_hmac: None,
        detail: None,
    };
    let grant = match access.grants.check(requested) {
        Ok(g) => g,
        Err(refusal) => {
            // The requested name is plugin-chosen text: a plugin could pass
            // a value it read earlier. Such a request is recorded masked.
            let masked = access.masks.mask(requested);
            if masked != requested {
                record.reason = Some(format!(
                    "not granted: the requested name {:?} contains a secret value",
                    crate::audit::bounded(&masked)
                ));
            } else {
                if let Refusal::NotGranted(n) = &refusal {
                    record.secret = Some(n.clone());
                }
                record.reason = Some(refusal.to_string());
            }
            tracing::info!(task = %id.task, execution = %id.execution, "secret request denied: {}", access.masks.mask(&refusal.to_string()));
            return audited(access, record, Err(AccessError::Denied));
        }
    };
    record.secret = Some(grant.name().clone());
    let lookup = {
        let mut pins = access.pins.lock().unwrap_or_else(|p| p.into_inner());
        let pin = pins.get(grant.name()).cloned();
        let lookup = lookup(access, &grant, pin.as_ref());
        if let (None, Ok(Lookup::Found(found))) = (&pin, &lookup) {
            // Every later read in this execution gets this same version.
            pins.insert(grant.name().clone(), Pin { namespace: found.namespace.clone(), version: found.version });
        }
        lookup
    };
    match lookup {
        Ok(Lookup::Found(found)) => {
            record.outcome = Outcome::Granted;
            record.version = Some(found.version);
            record.reason = Some(format!("found in namespace {}", found.namespace));
            record.detail = Some(serde_json::json!({ "found_in": found.namespace.as_str() }));
            record.value_hmac = access.audit.fingerprint(found.value.expose());
            audited(access, record, Ok(()))?;
            MaskSet::add_to(&[&access.masks, &access.task_masks], &found.value);
            tracing::debug!(task = %id.task, secret = %grant.name(), version = found.version, "secret released");
            Ok(found.value)
        }
        Ok(Lookup::NotFound) => {
            record.outcome = Outcome::NotFound;
            audited(access, record, Err(AccessError::NotFound))
        }
        Ok(Lookup::Revoked { namespace, version }) => {
            record.outcome = Outcome::Revoked;
            record.version = Some(version);
            record.reason = Some(format!("revoked in namespace {namespace}"));
            audited(access, record, Err(AccessError::Revoked))
        }
        Ok(Lookup::Expired { namespace, version }) => {
            record.outcome = Outcome::Expired;
            record.version = Some(version);
            record.reason = Some(format!("expired in namespace {namespace}"));
            audited(access, record, Err(AccessError::Expired))
        }
        Err(e) => {
            // The operator's log and the audit record get the details; the
            // plugin gets no path, address or internal detail.
            tracing::warn!(task = %id.task, secret = %grant.name(), "secret {} is unavailable: {e}", grant.name());
            let tampered =
                matches!(e, LookupError::Store(StoreError::RowTampered { .. } | StoreError::Tampered { .. }));
            record.outcome = if tampered { Outcome::Tampered } else { Outcome::Unavailable };
            record.reason = Some(access.masks.mask(&e.to_string()).into_owned());
            audited(access, record, Err(AccessError::Unavailable(e.for_plugin(grant.name()))))
        }
    }
}

/// Why a lookup failed. `Display` is for the operator; the plugin gets
/// [`LookupError::for_plugin`].
#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
}

impl LookupError {
    /// What the plugin is told: what happened, never a file path, a server
    /// address or another internal detail (the operator's log has those).
    fn for_plugin(&self, name: &SecretName) -> String {
        use crate::vault::VaultError as V;
        let why = match self {
            LookupError::Store(StoreError::Tampered { namespace, version, .. }) => {
                format!("version {version} in namespace {namespace} failed to decrypt: its row was altered or moved")
            }
            LookupError::Store(StoreError::RowTampered { namespace, what, .. }) => {
                format!("in namespace {namespace} failed its integrity check: {what} was altered outside keyhole")
            }
            LookupError::Store(_) => "the secret store could not be read".into(),
            LookupError::Vault(V::Unreachable { .. }) => "its backend server could not be reached".into(),
            LookupError::Vault(V::Server { status, .. }) => format!("its backend server answered HTTP {status}"),
            LookupError::Vault(V::NoToken(_)) => "no token is configured for its backend".into(),
            LookupError::Vault(_) => "its backend could not be read".into(),
        };
        format!("secret {name} {why} (the operator's log has the details)")
    }
}

/// Walks the namespace chain (or goes straight to the pinned namespace and
/// version), asking the backend that serves each namespace: a Vault server
/// where one is configured, else the local store.
fn lookup(access: &SecretAccess, grant: &Grant, pin: Option<&Pin>) -> Result<Lookup, LookupError> {
    let chain = match pin {
        Some(p) => vec![p.namespace.clone()],
        None => access.identity.namespace.chain(),
    };
    let version = pin.map(|p| p.version);
    for ns in chain {
        let found = match access.backends.for_namespace(&ns) {
            Some(vault) => match vault.read(grant.name(), version)? {
                VaultLookup::Found(value, version) => Some(Lookup::Found(Resolved { namespace: ns, version, value })),
                VaultLookup::Deleted(version) => Some(Lookup::Revoked { namespace: ns, version }),
                VaultLookup::NotFound => None,
            },
            None => access.store.lock().unwrap_or_else(|p| p.into_inner()).resolve_at(&ns, grant, version)?,
        };
        if let Some(found) = found {
            return Ok(found);
        }
    }
    Ok(Lookup::NotFound)
}

/// Writes `record`; returns `answer` only once it is durable.
fn audited<T>(access: &SecretAccess, record: NewRecord, answer: Result<T, AccessError>) -> Result<T, AccessError> {
    match access.audit.record(record) {
        Ok(_) => answer,
        Err(e) => {
            tracing::error!("audit record could not be written; refusing the request: {e}");
            Err(AccessError::Unavailable("the audit log cannot be written, so nothing is released".into()))
        }
    }
}
