//! Queuing an execution of a deployed flow, for the API, webhooks and
//! schedules alike: who and what started it, its audit record, the
//! namespace's queue quota.

use super::App;
use super::error::{ApiError, audit_failed};
use super::extract::Caller;
use crate::audit::{Action, Actor, NewRecord, Outcome, now_rfc3339};
use crate::executions::{Audited, ExecutionRecord};
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
    /// The person starting it ([`Principal::person`]); `None` for a trigger.
    pub person: Option<String>,
}

impl Origin {
    /// A principal calling the API, with its own idempotency key.
    pub fn api(caller: &Caller, idempotency_key: Option<&str>) -> Self {
        Origin {
            actor: caller.actor.clone(),
            by: format!("{} ({})", caller.info.name, caller.info.id),
            trigger: "api".into(),
            context: crate::trigger::context("api", None, Map::new()),
            // Keys are the caller's own: another principal's key finds nothing.
            idempotency_key: idempotency_key.map(|k| format!("{}:{k}", caller.info.id)),
            person: Some(caller.principal.person.clone()),
        }
    }
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
        id: ExecutionId::generate().to_string(),
        flow: flow.id.to_string(),
        namespace: flow.namespace.as_str().to_owned(),
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

/// Queues an execution of `ns/flow` (the API, webhooks and schedules);
/// returns the record and whether it is new. Its `execution.create` record
/// commits with it.
pub fn queue_execution(
    app: &App,
    origin: &Origin,
    ns: &Namespace,
    flow_id: &str,
    inputs: &Map<String, Value>,
) -> Result<(ExecutionRecord, bool), ApiError> {
    let (deployed, flow) = app.registry().current(ns, flow_id)?;
    let inputs =
        crate::flow::bind_json_inputs(&flow, inputs).map_err(|e| ApiError::BadRequest(format!("request body: {e}")))?;
    let record = queued_record(&flow, deployed.revision, &origin.trigger, &origin.by, origin.person.as_deref());
    let (id, trigger) = (&record.id, &origin.trigger);
    let rec = NewRecord::ok(&origin.actor, Action::ExecutionCreate, ns, None)
        .reason(format!("execution {id} of flow {flow_id} revision {} ({trigger})", deployed.revision))
        .detail_field("execution", id.to_string())
        .detail_field("trigger", trigger.as_str());
    // Over a namespace's queue quota: refused, on the record.
    let key = origin.idempotency_key.as_deref();
    let over = |why: String| {
        let denied = rec.clone().outcome(Outcome::Denied).reason(format!("flow {flow_id} not queued: {why}"));
        match app.record(denied) {
            Ok(()) => ApiError::Quota(why),
            Err(e) => audit_failed(e),
        }
    };
    let retried = key.is_some_and(|k| app.records().by_idempotency_key(k).ok().flatten().is_some());
    let quota = if retried { None } else { app.records().queue_quota(ns.as_str())? };
    if let Some(why) = quota {
        return Err(over(why));
    }
    // Its record commits with it, and only when a new execution is queued
    // (a retried request finds the first one and records nothing new).
    let audited = Audited { key: &app.integrity, record: &rec };
    let queued = app.records().enqueue(&record, &inputs, &origin.context, key, flow.concurrency, audited);
    let (rec, created) = match queued {
        Err(crate::executions::RecordError::Quota(why)) => return Err(over(why)),
        other => other?,
    };
    if created {
        app.wake();
    }
    Ok((rec, created))
}

/// An `Idempotency-Key` header's value, if it is one: 1 to 128 visible
/// ASCII characters.
pub fn idempotency_key(v: &axum::http::HeaderValue) -> Option<&str> {
    v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 128)
}
