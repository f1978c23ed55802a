//! The operations a principal asks for, each written once: the local CLI
//! (as the root operator), the API handlers and the console (as a token's
//! principal) all call these. Each decides authorization (through `authz`
//! and `vouch`), writes its audit record with the change in one
//! transaction, and records a refusal before returning it.
//!
//! Invariant: no edge (`cli/`, `server/`) decides who may deploy, review
//! or protect, or builds an audit record at all (`tests/e2e/tidy.rs`).

pub mod access;
pub mod bodies;
pub mod executions;
pub mod flows;
pub mod operator;
pub mod secrets;
pub mod sessions;
pub mod tokens;
pub mod triggers;

use crate::audit::{Action, NewRecord, Outcome};
use crate::authz::Permission;
use crate::names::{Namespace, SecretName};
use crate::registry::RegistryError;
use crate::tokens::TokenError;
use crate::vouch::Voucher;

/// Why an operation was not done; each edge maps the variant (never the
/// text) to its answer: an HTTP status, an exit code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller lacks a permission (named, with the namespace); audited.
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed or does not check (names what and where).
    #[error("{0}")]
    Invalid(String),
    /// The flow does not check: each finding names its line or task.
    #[error("{0}")]
    Diagnostics(crate::flow::Diagnostics),
    /// What it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It cannot be done in the state things are in (names why).
    #[error("{0}")]
    Conflict(String),
    /// Stored state failed its integrity check.
    #[error("{0}")]
    Tampered(String),
    /// A storage quota would be passed (names it and what to do).
    #[error("{0}")]
    Quota(String),
    /// A namespace's limit on queued or running executions is reached:
    /// try again later (names the limit).
    #[error("{0}")]
    OverLimit(String),
    /// The audit record could not be written, so nothing was done.
    #[error("the audit log cannot be written, so nothing was done: {0}")]
    AuditFailed(String),
    /// A secret backend could not answer (where a name resolves).
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    /// The store failed.
    #[error("{0}")]
    Host(String),
}

impl From<RegistryError> for ServiceError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(d) => ServiceError::Diagnostics(d),
            e @ RegistryError::Plugin(_) => ServiceError::Invalid(e.to_string()),
            e @ RegistryError::NotFound { .. } => ServiceError::NotFound(e.to_string()),
            e @ (RegistryError::Pending { .. } | RegistryError::Conflict(_)) => ServiceError::Conflict(e.to_string()),
            e @ (RegistryError::Tampered { .. } | RegistryError::ProtectionTampered { .. }) => {
                ServiceError::Tampered(e.to_string())
            }
            RegistryError::Quota(m) => ServiceError::Quota(m),
            e @ (RegistryError::Db(_) | RegistryError::Io { .. }) => ServiceError::Host(e.to_string()),
        }
    }
}

impl From<crate::executions::RecordError> for ServiceError {
    fn from(e: crate::executions::RecordError) -> Self {
        use crate::executions::RecordError as R;
        match e {
            e @ R::NotFound(_) => ServiceError::NotFound(e.to_string()),
            R::Quota(m) => ServiceError::OverLimit(m),
            e @ R::Corrupt { .. } => ServiceError::Tampered(e.to_string()),
            e @ R::Db(_) => ServiceError::Host(e.to_string()),
        }
    }
}

/// The state the service layer reaches, behind one seam: the deployed
/// flows, the execution records, tokens and roles, the secrets, the audit
/// chain and the key that authenticates rows. The embedded engine (`Embedded`)
/// implements it over SQLite (the server's `App` holds one, the local CLI
/// opens one); a second engine is a second implementation, with no change
/// here, in the CLI or in the server.
pub trait Plane {
    /// The deployed flows.
    fn registry(&self) -> impl std::ops::Deref<Target = crate::registry::Registry> + '_;
    /// The execution records.
    fn records(&self) -> impl std::ops::Deref<Target = crate::executions::Executions> + '_;
    /// The execution records for queuing only: what it queues is durable
    /// once `durable` returns, by a sync shared with every commit meanwhile.
    fn intake(&self) -> impl std::ops::Deref<Target = crate::executions::Executions> + '_;
    /// The tokens and roles.
    fn tokens(&self) -> impl std::ops::Deref<Target = crate::tokens::Tokens> + '_;
    /// The secrets: the local store and the backends, by namespace.
    fn secrets(&self) -> &crate::backend::Router;
    /// The audit chain (durable before it returns).
    fn audit(&self) -> &crate::audit::AuditLog;
    /// The key that authenticates rows and chains records committed with a change.
    fn integrity(&self) -> &crate::crypto::IntegrityKey;
    /// Tells whoever takes queued work that there is some.
    fn wake(&self);
}

impl From<TokenError> for ServiceError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Invalid(m) => ServiceError::Invalid(m),
            TokenError::NotFound(m) => ServiceError::NotFound(m),
            TokenError::Conflict(m) => ServiceError::Conflict(m),
            e @ TokenError::Tampered(_) => ServiceError::Tampered(e.to_string()),
            e @ TokenError::Db(_) => ServiceError::Host(e.to_string()),
        }
    }
}

/// Records a refusal of `action` by `who` (the missing permission, where,
/// and the secret it was for) through `record`, then returns it as the
/// error: `AuditFailed` when it could not be recorded.
fn refuse<E: std::fmt::Display>(
    record: impl FnOnce(&NewRecord) -> Result<(), E>,
    who: &Voucher,
    action: Action,
    namespace: &Namespace,
    secret: Option<&SecretName>,
    permission: Option<Permission>,
    message: String,
) -> ServiceError {
    let rec = denied(&who.actor, action, namespace, secret, permission, message.clone());
    match record(&rec) {
        Ok(()) => ServiceError::Forbidden(message),
        Err(e) => ServiceError::AuditFailed(e.to_string()),
    }
}

/// The record of `action` refused to `actor` for `reason`, naming the
/// permission it lacked when there is one.
fn denied(
    actor: &crate::audit::Actor,
    action: Action,
    namespace: &Namespace,
    secret: Option<&SecretName>,
    permission: Option<Permission>,
    reason: String,
) -> NewRecord {
    let rec = NewRecord::ok(actor, action, namespace, secret).outcome(Outcome::Denied).reason(reason);
    match permission {
        Some(p) => rec.detail_field("permission", p.as_str()),
        None => rec,
    }
}

/// Writes `rec` to the plane's audit chain, durably before it returns;
/// `AuditFailed` when it cannot.
fn recorded(plane: &impl Plane, rec: NewRecord) -> Result<(), ServiceError> {
    plane.audit().record(rec).map(drop).map_err(|e| ServiceError::AuditFailed(e.to_string()))
}

impl From<crate::store::StoreError> for ServiceError {
    fn from(e: crate::store::StoreError) -> Self {
        ServiceError::Backend(e.into())
    }
}
