//! Executions of deployed flows, written once for every way one starts or
//! stops: the API, webhooks and schedules queue through [`queue`], a
//! cancel from the API or the console goes through [`cancel`], and a run
//! cut off by a crash or a shutdown through [`interrupted`].
//!
//! Invariant: an execution's `execution.create` record commits with its
//! queued row (a retried idempotency key records nothing new); a cancel is
//! on the record before it is asked; a refusal (over a quota, already
//! ended) is recorded before it is returned.

use super::{Plane, ServiceError};
use crate::audit::{Action, Actor, AuditError, NewRecord, Outcome, now_rfc3339};
use crate::executions::{Audited, CancelOutcome, ExecutionRecord, RecordError};
use crate::flow::OnInterrupt;
use crate::names::{ExecutionId, Namespace};
use serde_json::{Map, Value};

/// Who queues an execution: a principal through the API, or one of the
/// flow's own triggers.
#[derive(Debug, Clone)]
pub struct Origin {
    /// As the audit trail names it.
    pub actor: Actor,
    /// As the execution record names it (`created_by`).
    pub by: String,
    /// `api`, or `webhook:ID` / `schedule:ID`.
    pub trigger: String,
    /// What `{{ trigger }}` holds.
    pub context: Value,
    /// Scoped so that one origin's key never finds another's execution.
    pub idempotency_key: Option<String>,
    /// The person starting it ([`crate::authz::Principal::person`]); `None`
    /// for a trigger.
    pub person: Option<String>,
}

/// A new `queued` record of `flow` at `revision`, started by `trigger`
/// (`api`, `webhook:ID`, ...) on behalf of `by` (the person `person`).
pub fn queued_record(
    flow: &crate::flow::Flow,
    revision: u64,
    trigger: &str,
    by: &str,
    person: Option<&str>,
) -> ExecutionRecord {
    ExecutionRecord {
        id: ExecutionId::generate(),
        flow: flow.id.clone(),
        namespace: flow.namespace.clone(),
        source: flow.source.clone(),
        status: crate::executions::ExecutionStatus::Queued,
        started: now_rfc3339(),
        ended: None,
        tasks: crate::run::pending_tasks(flow),
        trigger: Some(trigger.to_owned()),
        revision: Some(revision),
        created_by: Some(by.to_owned()),
        person: person.map(str::to_owned),
    }
}

/// Queues an execution of the current revision of `ns/flow_id`; returns
/// the record and whether it is new (a retried idempotency key finds the
/// first). Over the namespace's queue quota it is refused, on the record.
pub fn queue(
    plane: &impl Plane,
    origin: &Origin,
    ns: &Namespace,
    flow_id: &str,
    inputs: &Map<String, Value>,
) -> Result<(ExecutionRecord, bool), ServiceError> {
    let (deployed, flow) = plane.registry().current(ns, flow_id)?;
    let inputs = crate::flow::bind_json_inputs(&flow, inputs)
        .map_err(|e| ServiceError::Invalid(format!("request body: {e}")))?;
    let record = queued_record(&flow, deployed.revision, &origin.trigger, &origin.by, origin.person.as_deref());
    let (id, trigger) = (&record.id, &origin.trigger);
    let rec = NewRecord::ok(&origin.actor, Action::ExecutionCreate, ns, None)
        .reason(format!("execution {id} of flow {flow_id} revision {} ({trigger})", deployed.revision))
        .detail_field("execution", id.to_string())
        .detail_field("trigger", trigger.as_str());
    let over = |why: String| {
        let denied = rec.clone().outcome(Outcome::Denied).reason(format!("flow {flow_id} not queued: {why}"));
        match super::recorded(plane, denied) {
            Ok(()) => ServiceError::OverLimit(why),
            Err(e) => e,
        }
    };
    let key = origin.idempotency_key.as_deref();
    // Its record commits with it, and only when a new execution is queued
    // (the namespace's queue quota is decided in the same transaction).
    let audited = Audited { key: plane.integrity(), record: &rec };
    let queued = plane.intake().enqueue(&record, &inputs, &origin.context, key, flow.concurrency, audited);
    let (rec, created) = match queued {
        Err(RecordError::Quota(why)) => return Err(over(why)),
        // Answered only once on disk, with the intake lock let go.
        other => other?.durable().map_err(RecordError::Db)?,
    };
    if created {
        plane.wake();
    }
    Ok((rec, created))
}

/// What a cancel did: `cancelled` (it was queued and never runs) or
/// `cancelling` (its worker stops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was queued: it never runs.
    Dequeued,
    /// It was running or waiting: its worker stops it.
    Stopping,
}

impl Cancelled {
    /// As the API and the CLI say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Cancelled::Dequeued => "cancelled",
            Cancelled::Stopping => "cancelling",
        }
    }
}

/// Cancels execution `id` for `actor` (whose permission the edge checked
/// at the execution's namespace): recorded as pending before it is asked,
/// then as what it did. `stop` is called for one that runs here. One that
/// already ended is a conflict, on the record too.
pub fn cancel(plane: &impl Plane, actor: &Actor, id: &str, stop: impl FnOnce()) -> Result<Cancelled, ServiceError> {
    let rec = plane.records().get(id)?;
    let ns = rec.namespace.clone();
    let record = |outcome: Outcome, what: String| {
        let r = NewRecord::ok(actor, Action::ExecutionCancel, &ns, None)
            .outcome(outcome)
            .reason(format!("execution {id} of flow {}: {what}", rec.flow))
            .detail_field("execution", id.to_owned());
        super::recorded(plane, r)
    };
    let already =
        |status: &str| ServiceError::Conflict(format!("execution {id} already ended ({status}): nothing to cancel"));
    if rec.status.ended() {
        record(Outcome::Failed, format!("not cancelled: it had already ended ({})", rec.status))?;
        return Err(already(rec.status.as_str()));
    }
    // Recorded before it is asked (no record, no cancel), then what it did.
    record(Outcome::Pending, format!("about to cancel it ({})", rec.status))?;
    let done = match plane.records().request_cancel(id, &now_rfc3339())? {
        CancelOutcome::Dequeued => Cancelled::Dequeued,
        CancelOutcome::Stopping => {
            stop();
            Cancelled::Stopping
        }
        CancelOutcome::AlreadyEnded => {
            let now = plane.records().get(id)?.status;
            record(Outcome::Failed, format!("not cancelled: it ended first ({now})"))?;
            return Err(already(now.as_str()));
        }
    };
    record(Outcome::Ok, format!("{} (it was {})", done.as_str(), rec.status))?;
    Ok(done)
}

/// Audits that `r` was cut off (`why`: a crash, a shutdown timeout) and,
/// if its flow's revision says `on_interrupt: requeue`, queues a new
/// execution of that revision with the same inputs and trigger, still its
/// starter's (once: keyed by the interrupted id).
pub fn interrupted(plane: &impl Plane, r: &ExecutionRecord, why: &str) -> Result<(), AuditError> {
    let ns = &r.namespace;
    let flow = r.revision.and_then(|rev| Some((rev, plane.registry().revision(ns, r.flow.as_str(), rev).ok()?)));
    let requeue = flow.filter(|(_, f)| f.on_interrupt == OnInterrupt::Requeue);
    let concurrency = requeue.as_ref().and_then(|(_, f)| f.concurrency);
    let key = format!("requeue:{}", r.id);
    let mut again = requeue.map(|(rev, f)| {
        let by = r.created_by.as_deref().unwrap_or("host serve (requeue)");
        queued_record(&f, rev, &key, by, r.person.as_deref())
    });
    // Already re-queued before a crash: the record names that one.
    if let (Some(new), Ok(Some(id))) = (&mut again, plane.records().by_idempotency_key(&key)) {
        new.id = id;
    }
    // Same inputs and trigger data: a row whose inputs or trigger data do not
    // read is not re-queued with none (it would run as something it was
    // not), and the record says why.
    let mut unreadable = None;
    let queued_with = match again.is_some().then(|| plane.records().queued_with(r.id.as_str())) {
        Some(Ok(with)) => Some(with),
        Some(Err(e)) => {
            unreadable = Some(e.to_string());
            again = None;
            None
        }
        None => None,
    };
    let mut rec = NewRecord::ok(&Actor::Server, Action::ExecutionInterrupt, ns, None)
        .reason(format!("execution {} of flow {} {why}", r.id, r.flow))
        .detail_field("execution", r.id.to_string())
        .detail_field("requeued", again.is_some());
    if let Some(new) = &again {
        rec = rec.detail_field("requeued_as", new.id.to_string());
    }
    if let Some(why) = unreadable {
        rec = rec.detail_field("not_requeued", why);
    }
    plane.audit().record(rec)?;
    if let (Some(new), Some((inputs, trigger))) = (again, queued_with) {
        // Keyed by the old id, so at most once.
        let created = NewRecord::ok(&Actor::Server, Action::ExecutionCreate, ns, None)
            .reason(format!("execution {} of flow {} (requeue of {})", new.id, new.flow, r.id))
            .detail_field("execution", new.id.to_string())
            .detail_field("trigger", key.clone());
        let audited = Audited { key: plane.integrity(), record: &created };
        let queued = plane.intake().enqueue(&new, &inputs, &trigger, Some(&key), concurrency, audited);
        match queued.and_then(|q| q.durable().map_err(RecordError::Db)) {
            Ok(_) => plane.wake(),
            Err(e) => tracing::error!("cannot re-queue execution {}: {e}", r.id),
        }
    }
    Ok(())
}

/// What execution `id`'s tasks did at the trust boundary, from the audit
/// trail read through `conn` (the store at `path`): each secret access, and
/// each outbound request once it was sent or failed (its `pending` record,
/// written before it left, is not repeated).
pub fn access(
    conn: &rusqlite::Connection,
    path: &std::path::Path,
    id: &str,
) -> Result<super::bodies::ExecutionAccess, ServiceError> {
    use super::bodies::{ExecutionAccess, RequestMade, SecretUse};
    let filter = crate::audit::Filter { execution: Some(id.to_owned()), ..Default::default() };
    let records = crate::audit::list(conn, path, &filter).map_err(|e| ServiceError::Host(e.to_string()))?;
    let detail = |r: &crate::audit::Record, k: &str| -> Option<String> {
        let d: Value = serde_json::from_str(r.detail.as_deref()?).ok()?;
        d.get(k)?.as_str().map(str::to_owned)
    };
    let mut answer = ExecutionAccess { execution: id.to_owned(), secrets: Vec::new(), requests: Vec::new() };
    for r in records {
        match r.kind() {
            Some(
                Action::SecretRead
                | Action::SecretLease
                | Action::SecretStage
                | Action::SecretCommit
                | Action::SecretDiscard,
            ) => answer.secrets.push(SecretUse {
                time: r.time,
                task: r.task,
                action: r.action,
                secret: r.secret,
                version: r.version,
                fingerprint: r.value_hmac,
                outcome: r.outcome,
            }),
            Some(Action::HttpRequest) if r.result() != Some(Outcome::Pending) => answer.requests.push(RequestMade {
                time: r.time.clone(),
                task: r.task.clone(),
                method: detail(&r, "method"),
                destination: detail(&r, "destination"),
                path: detail(&r, "path"),
                outcome: r.outcome,
                reason: r.reason,
            }),
            _ => {}
        }
    }
    Ok(answer)
}
