//! What only the operator on the data directory's machine does (the root
//! principal): a namespace's execution quotas, collecting unreferenced
//! plugins, which backend serves a namespace and which secrets are
//! dynamic, and turning on audit fingerprints. Each is on the record with
//! its change: in the change's transaction where the change is a row,
//! before it takes effect where it is a file (fail closed).

use super::{Plane, ServiceError};
use crate::audit::{Action, Actor, NewRecord};
use crate::executions::{Audited, NamespaceLimits};
use crate::names::{Namespace, SecretName};
use crate::registry::Collected;
use std::time::Duration;

/// Sets (both `None`: clears) the execution quotas of `limits.namespace`
/// and below, committed with its `namespace.limits` record; what was set,
/// in words.
pub fn set_limits(
    plane: &impl Plane,
    who: &Actor,
    namespace: &Namespace,
    max_queued: Option<u64>,
    max_running: Option<u64>,
) -> Result<String, ServiceError> {
    let show = |n: Option<u64>| n.map_or("none".to_owned(), |n| n.to_string());
    let what = format!("max-queued {}, max-running {}", show(max_queued), show(max_running));
    let rec = NewRecord::ok(who, Action::NamespaceLimits, namespace, None)
        .reason(format!("quotas of namespace {namespace} and below: {what}"));
    let limits = NamespaceLimits { namespace: namespace.as_str().to_owned(), max_queued, max_running };
    plane.records().set_limits(&limits, Audited { key: plane.integrity(), record: &rec })?;
    Ok(what)
}

/// Removes the uploaded plugins no revision references and older than
/// `grace`, committed with its `plugin.gc` record.
pub fn collect_plugins(plane: &impl Plane, who: &Actor, grace: Duration) -> Result<Collected, ServiceError> {
    Ok(plane.registry().collect_plugins(grace, |c| {
        NewRecord::ok(who, Action::PluginGc, &Namespace::root(), None)
            .reason(format!("removed {} plugin(s) no flow revision references ({} bytes)", c.removed.len(), c.bytes))
            .detail_field("removed", c.removed.clone())
    })?)
}

/// A change to the backend configuration (`said`: what it does, in
/// words), for `namespace` (and the dynamic secret `secret`): recorded as
/// `backend.change` through `record` before `apply` writes it, so a change
/// that cannot be recorded is not made.
pub fn change_backend<E: std::fmt::Display>(
    record: impl FnOnce(&NewRecord) -> Result<(), E>,
    who: &Actor,
    namespace: &Namespace,
    secret: Option<&SecretName>,
    said: &str,
    apply: impl FnOnce() -> Result<(), ServiceError>,
) -> Result<(), ServiceError> {
    let rec = NewRecord::ok(who, Action::BackendChange, namespace, secret).reason(said.to_owned());
    record(&rec).map_err(|e| ServiceError::AuditFailed(e.to_string()))?;
    apply()
}

/// Records that audit fingerprints were turned on (the key at `path`
/// was just created), through `record`.
pub fn fingerprints_enabled<E: std::fmt::Display>(
    record: impl FnOnce(&NewRecord) -> Result<(), E>,
    who: &Actor,
    path: &std::path::Path,
) -> Result<(), ServiceError> {
    let rec = NewRecord::ok(who, Action::AuditKeyCreate, &Namespace::root(), None)
        .reason(format!("created {}", path.display()));
    record(&rec).map_err(|e| ServiceError::AuditFailed(e.to_string()))
}
