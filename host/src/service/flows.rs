//! Deploying, removing and reviewing flows, and protecting secrets: who
//! may, what is recorded.

use super::{Plane, ServiceError};
use crate::audit::{Action, NewRecord};
use crate::authz::Permission;
use crate::backend::Router;
use crate::names::{Namespace, SecretName};
use crate::registry::{Decision, Deployed, Registry, Review, RevisionState};
use crate::vouch::{self, Serving, Voucher};
use std::collections::BTreeMap;

/// A flow to deploy: its text, the file name it came from, and each task's
/// plugin by the SHA-256 of a plugin already stored.
#[derive(Debug, Clone, Copy)]
pub struct DeployRequest<'a> {
    /// Shown in messages and listings (cut to 256 characters).
    pub file: &'a str,
    /// The flow text.
    pub source: &'a str,
    /// Task id → plugin digest.
    pub plugins: &'a BTreeMap<String, String>,
}

/// Records a refusal in the registry's file ([`super::refuse`]).
fn refuse(
    registry: &Registry,
    who: &Voucher,
    action: Action,
    namespace: &Namespace,
    secret: Option<&SecretName>,
    permission: Option<Permission>,
    message: String,
) -> ServiceError {
    super::refuse(|rec| registry.record(rec), who, action, namespace, secret, permission, message)
}

/// Deploys a flow as `who`: `flow:deploy` in its namespace, and `secret:use`
/// where each secret it names lives (see [`crate::vouch`]). A refusal is
/// audited and stores nothing. A revision that touches a protected secret
/// is stored `pending`: it runs once a second person approves it.
pub fn deploy(plane: &impl Plane, who: &Voucher, req: DeployRequest<'_>) -> Result<Deployed, ServiceError> {
    let (registry, secrets) = (&*plane.registry(), plane.secrets());
    let file: String = req.file.chars().take(256).collect();
    let flow = registry.prepare(&file, req.source, req.plugins)?;
    let ns = &flow.namespace;
    if let Err(e) = who.may(Permission::FlowDeploy, ns) {
        let why = format!("deploy flow {}: {e}", flow.id);
        return Err(refuse(registry, who, Action::FlowDeploy, ns, None, Some(e.permission), why));
    }
    let serving_row = registry.serving_row(ns, flow.id.as_str())?;
    let serving_flow = match &serving_row {
        Some(d) if !d.removed => Some(registry.parsed(d)?),
        _ => None,
    };
    let serving =
        serving_row.as_ref().zip(serving_flow.as_ref()).map(|(d, flow)| Serving { flow, vouches: d.vouched() });
    let vouches = match check(registry, secrets, who, &flow, serving)? {
        Ok(v) => v,
        Err(refused) => {
            let (at, permission) = (refused.forbidden.namespace.clone(), refused.forbidden.permission);
            let why = format!("deploy flow {} into {ns}: {refused}", flow.id);
            let rec = refuse(registry, who, Action::FlowDeploy, &at, Some(&refused.secret), Some(permission), why);
            return Err(rec);
        }
    };
    let new = crate::registry::NewRevision {
        flow: &flow,
        file: &file,
        source: req.source,
        plugins: req.plugins,
        by: &who.label(),
        vouches: &vouches,
        serving: serving_row.map(|d| d.revision),
    };
    let (d, _) = registry.insert_revision(new, |d| {
        let pending = if d.state == RevisionState::Pending {
            format!(": pending review (it touches protected {})", names(&vouches.review))
        } else {
            String::new()
        };
        NewRecord::ok(&who.actor, Action::FlowDeploy, &d.namespace, None)
            .reason(format!("flow {} revision {}{pending}", d.id, d.revision))
            .detail_field("flow", d.id.clone())
            .detail_field("revision", d.revision)
            .detail_field("plugins", serde_json::to_value(&d.plugins).expect("digests encode"))
            .detail_field("state", serde_json::to_value(d.state).expect("states encode"))
            .detail_field("vouched", vouched(&vouches))
    })?;
    Ok(d)
}

/// [`vouch::check`] of `flow` for `who`, with where its names resolve now
/// and what the registry says is protected.
fn check(
    registry: &Registry,
    secrets: &Router,
    who: &Voucher,
    flow: &crate::flow::Flow,
    serving: Option<Serving<'_>>,
) -> Result<Result<vouch::Vouches, vouch::Refused>, ServiceError> {
    vouch::check(
        who,
        flow,
        serving,
        |name| secrets.locate(&flow.namespace, name).map_err(ServiceError::from),
        |at, name| registry.is_protected(at, name).map_err(ServiceError::from),
    )
}

fn names(list: &[SecretName]) -> String {
    list.iter().map(SecretName::as_str).collect::<Vec<_>>().join(", ")
}

/// Each secret a revision names → where it was checked (for the audit record).
fn vouched(v: &vouch::Vouches) -> serde_json::Value {
    v.secrets.iter().map(|s| (s.secret.to_string(), serde_json::Value::from(s.checked_in.as_str()))).collect()
}

/// Removes a flow as `who` (`flow:deploy` in its namespace): a tombstone
/// revision, committed with its audit record.
pub fn remove(plane: &impl Plane, who: &Voucher, ns: &Namespace, id: &str) -> Result<Deployed, ServiceError> {
    let registry = &*plane.registry();
    if let Err(e) = who.may(Permission::FlowDeploy, ns) {
        let why = format!("remove flow {}: {e}", crate::audit::bounded(id));
        return Err(refuse(registry, who, Action::FlowRemove, ns, None, Some(e.permission), why));
    }
    let d = registry.remove(ns, id, &who.label(), |d| {
        NewRecord::ok(&who.actor, Action::FlowRemove, ns, None)
            .reason(format!("flow {id} (revision {})", d.revision))
            .detail_field("flow", id)
            .detail_field("revision", d.revision)
    })?;
    Ok(d)
}

/// A decision on one revision of a flow.
#[derive(Debug, Clone)]
pub struct ReviewRequest<'a> {
    /// The flow's namespace.
    pub namespace: &'a Namespace,
    /// The flow id.
    pub flow: &'a str,
    /// Which revision.
    pub revision: u64,
    /// Approve or reject.
    pub decision: Decision,
    /// Why (kept, cut to the audit record's bound).
    pub comment: Option<String>,
}

/// Approves or rejects a revision of a flow as `who`.
///
/// A revision pending review is approved by a principal holding
/// `secret:use` where each protected secret it touches lives, who is not
/// its deployer; it is rejected by such a principal or withdrawn by its
/// deployer. A revision deployed before vouching is approved by someone
/// holding `secret:use` where each secret it names lives (who becomes its
/// voucher), and not by its deployer if it touches a protected secret.
/// Every refusal, self-approval included, is audited.
pub fn review(plane: &impl Plane, who: &Voucher, req: ReviewRequest<'_>) -> Result<Deployed, ServiceError> {
    let (registry, secrets) = (&*plane.registry(), plane.secrets());
    let ReviewRequest { namespace: ns, flow: id, revision, decision, comment } = req;
    let action = match decision {
        Decision::Approved => Action::FlowApprove,
        Decision::Rejected => Action::FlowReject,
    };
    let d = registry.get(ns, id, revision)?;
    let what = format!("flow {id} revision {revision}");
    let denied = |message: String, permission: Option<Permission>| {
        refuse(registry, who, action, ns, None, permission, format!("{what}: {message}"))
    };
    let mut new_vouches = None;
    match (d.state, &d.vouches) {
        (RevisionState::Pending, Some(v)) => {
            let withdrawn = decision == Decision::Rejected && who.person() == v.person;
            if !withdrawn && let Err(why) = vouch::may_approve(who, v) {
                let permission = (who.person() != v.person).then_some(Permission::SecretUse);
                return Err(denied(why, permission));
            }
        }
        (RevisionState::Unchecked, None) if decision == Decision::Approved => {
            let flow = registry.parsed(&d)?;
            let v = match check(registry, secrets, who, &flow, None)? {
                Ok(v) => v,
                Err(refused) => return Err(denied(refused.to_string(), Some(refused.forbidden.permission))),
            };
            if !v.review.is_empty() && who.label() == d.deployed_by {
                let why = format!(
                    "{} deployed this revision and it uses protected {}: a second person must approve it",
                    who.label(),
                    names(&v.review)
                );
                return Err(denied(why, None));
            }
            new_vouches = Some(v);
        }
        (state, _) => {
            return Err(ServiceError::Conflict(format!(
                "{what} in namespace {ns} is {state}: only a revision pending review (or an unchecked one, to approve) is decided"
            )));
        }
    }
    let review = Review {
        decision,
        by: who.label(),
        person: who.person(),
        at: String::new(),
        comment: comment.map(|c| crate::audit::bounded(&c)),
        vouches: new_vouches,
    };
    let verb = match decision {
        Decision::Approved => "approved",
        Decision::Rejected => "rejected",
    };
    let mut rec = NewRecord::ok(&who.actor, action, ns, None)
        .reason(format!("{what} {verb}"))
        .detail_field("flow", id)
        .detail_field("revision", revision)
        .detail_field("deployed_by", d.deployed_by.clone());
    if let Some(c) = &review.comment {
        rec = rec.detail_field("comment", c.clone());
    }
    Ok(registry.decide(ns, id, revision, &review, rec)?)
}

/// Protects (`on`) or unprotects secret `secret` of `ns` (`None`: the whole
/// namespace and those below it) as `who`, who needs `secret:write` there.
/// Returns whether anything changed.
pub fn protect(
    plane: &impl Plane,
    who: &Voucher,
    ns: &Namespace,
    secret: Option<&SecretName>,
    on: bool,
) -> Result<bool, ServiceError> {
    let registry = &*plane.registry();
    let action = if on { Action::SecretProtect } else { Action::SecretUnprotect };
    let what = match secret {
        Some(s) => format!("secret {s}"),
        None => format!("every secret of namespace {ns} and below"),
    };
    if let Err(e) = who.may(Permission::SecretWrite, ns) {
        let verb = if on { "protect" } else { "unprotect" };
        return Err(refuse(registry, who, action, ns, secret, Some(e.permission), format!("{verb} {what}: {e}")));
    }
    let reason = if on {
        format!("{what}: a flow revision that touches it waits for a second person")
    } else {
        format!("{what}: no longer needs a second person")
    };
    let rec = NewRecord::ok(&who.actor, action, ns, secret).reason(reason);
    Ok(registry.set_protection(ns, secret, on, &who.label(), &rec)?)
}

/// Stores a plugin for flows of `ns` as `who` (`flow:deploy` there): its
/// bytes must have the SHA-256 `sha` and be WebAssembly, within the
/// namespace's plugin quota `max`; recorded before it is stored. Whether
/// it was new.
pub fn upload_plugin(
    plane: &impl Plane,
    who: &Voucher,
    ns: &Namespace,
    sha: &str,
    bytes: &[u8],
    max: Option<u64>,
) -> Result<bool, ServiceError> {
    let registry = &*plane.registry();
    if let Err(e) = who.may(Permission::FlowDeploy, ns) {
        let why = format!("upload plugin {sha}: {e}");
        return Err(refuse(registry, who, Action::FlowDeploy, &e.namespace, None, Some(e.permission), why));
    }
    let actual = hex::encode(crate::crypto::sha256(bytes));
    if actual != sha {
        return Err(ServiceError::Invalid(format!("the body's SHA-256 is {actual}, not {sha}: the upload is corrupt")));
    }
    if !crate::registry::is_wasm(bytes) {
        return Err(ServiceError::Invalid(
            "the upload is not a WebAssembly module or component: nothing was stored".into(),
        ));
    }
    let rec = NewRecord::ok(&who.actor, Action::FlowDeploy, ns, None)
        .reason(format!("plugin {sha} uploaded for namespace {ns} ({} bytes)", bytes.len()))
        .detail_field("plugin_sha256", sha.to_owned());
    registry.record(&rec).map_err(|e| ServiceError::AuditFailed(e.to_string()))?;
    Ok(registry.put_plugin(bytes, ns, max)?.new)
}
