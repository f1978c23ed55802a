//! The single seam through which a plugin's secret request passes:
//! [`get_secret`] checks the grant, resolves the secret in the namespace
//! chain, adds the value to the execution's mask set and only then returns
//! it. The plugin-facing import in `sandbox` is a thin call to this function.
//!
//! Invariant: no other code path hands a secret value to a plugin.

use crate::mask::MaskSet;
use crate::names::{ExecutionId, FlowId, Namespace, TaskId};
use crate::policy::{Grants, Refusal};
use crate::secret::SecretValue;
use crate::store::SecretStore;
use std::sync::{Arc, Mutex};

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
    /// The execution's mask set; every revealed value goes in here first.
    pub masks: Arc<MaskSet>,
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
pub fn get_secret(access: &SecretAccess, requested: &str) -> Result<SecretValue, AccessError> {
    let id = &access.identity;
    let grant = match access.grants.check(requested) {
        Ok(g) => g,
        Err(refusal) => {
            let name = match &refusal {
                Refusal::NotGranted(n) => n.as_str().to_owned(),
                Refusal::InvalidName(n) => format!("{n:?}"),
            };
            tracing::info!(task = %id.task, execution = %id.execution, secret = %name, "secret request denied: not granted");
            return Err(AccessError::Denied);
        }
    };
    let store = access.store.lock().unwrap_or_else(|p| p.into_inner());
    match store.resolve(&id.namespace, &grant) {
        Ok(Some(found)) => {
            access.masks.add(&found.value);
            tracing::debug!(
                task = %id.task, execution = %id.execution, secret = %grant.name(),
                namespace = %found.namespace, version = found.version, "secret released"
            );
            Ok(found.value)
        }
        Ok(None) => Err(AccessError::NotFound),
        Err(e) => {
            tracing::warn!(task = %id.task, secret = %grant.name(), "secret store error: {e}");
            Err(AccessError::Unavailable(e.to_string()))
        }
    }
}
