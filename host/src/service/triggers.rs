//! A flow's own triggers on the record: webhook deliveries (refused,
//! verified but held by a revision pending review, verified) and schedule
//! firings (missed ones skipped, ones held by a pending revision). The
//! webhook receiver and the scheduler decide; the words are written here,
//! and a firing that is queued goes through [`super::executions::queue`].
//!
//! Invariant: no record names a webhook's key or signing secret's value,
//! only the secret's name.

use super::{Plane, ServiceError, recorded};
use crate::audit::{Action, Actor, NewRecord, Outcome};
use crate::names::{Namespace, SecretName};

/// A delivery to a webhook of flow `flow` (as shown: bounded) refused for
/// `reason`, from `peer`.
pub fn webhook_refused(
    plane: &impl Plane,
    ns: &Namespace,
    flow: &str,
    secret: Option<&SecretName>,
    reason: &str,
    peer: &str,
) -> Result<(), ServiceError> {
    let rec = NewRecord::ok(&Actor::Server, Action::TriggerWebhook, ns, secret)
        .outcome(Outcome::Denied)
        .reason(format!("webhook of flow {flow}: {reason}"))
        .detail_field("peer", peer.to_owned());
    recorded(plane, rec)
}

/// A verified delivery to webhook `trigger` of `flow` not queued: the
/// flow's newest revision (`revision`) waits for review (`why`).
pub fn webhook_held(
    plane: &impl Plane,
    ns: &Namespace,
    secret: &SecretName,
    trigger: &str,
    flow: &str,
    revision: u64,
    why: &str,
) -> Result<(), ServiceError> {
    let rec = NewRecord::ok(&Actor::Server, Action::TriggerWebhook, ns, Some(secret))
        .outcome(Outcome::Denied)
        .reason(format!("webhook {trigger} of flow {flow}: verified, not queued: {why}"))
        .detail_field("revision", revision);
    recorded(plane, rec)
}

/// A delivery to webhook `trigger` of `flow` verified by the host; its
/// execution is queued next, as `actor`.
pub fn webhook_verified(
    plane: &impl Plane,
    actor: &Actor,
    ns: &Namespace,
    secret: &SecretName,
    trigger: &str,
    flow: &str,
) -> Result<(), ServiceError> {
    let rec = NewRecord::ok(actor, Action::TriggerWebhook, ns, Some(secret))
        .reason(format!("webhook {trigger} of flow {flow}: verified by the host"));
    recorded(plane, rec)
}

/// `skipped` firings of `schedule` (its pattern and time zone, as shown)
/// missed while the server was down, skipped as its `recover` says.
pub fn schedule_skipped(
    plane: &impl Plane,
    actor: &Actor,
    ns: &Namespace,
    skipped: usize,
    schedule: &str,
    recover: &str,
) -> Result<(), ServiceError> {
    let rec = NewRecord::ok(actor, Action::TriggerSchedule, ns, None)
        .reason(format!(
            "skipped {skipped} firing(s) of {schedule} missed while the server was down (recover: {recover})"
        ))
        .detail_field("skipped", skipped);
    recorded(plane, rec)
}

/// The firing of `date` not queued: `flow`'s revision `revision` is
/// pending review and no approved revision serves it.
pub fn schedule_held(
    plane: &impl Plane,
    actor: &Actor,
    ns: &Namespace,
    date: &str,
    flow: &str,
    revision: u64,
) -> Result<(), ServiceError> {
    let rec = NewRecord::ok(actor, Action::TriggerSchedule, ns, None)
        .outcome(Outcome::Denied)
        .reason(format!(
            "firing of {date} not queued: flow {flow} revision {revision} is pending review and no approved \
             revision serves the flow"
        ))
        .detail_field("revision", revision);
    recorded(plane, rec)
}
