//! Executions: queue, read, what they touched, cancel, decide gates.

use crate::authz::{Permission, Permission as P};
use crate::executions::ExecutionRecord;
use crate::names::Namespace;
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::extract::{Body, Caller, blocking, path_namespace, rfc3339};
use crate::server::queue::{Origin, idempotency_key};
use crate::service::bodies::{CancelAnswer, Decided, Queued};
use crate::service::executions;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::time::Duration;

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct CreateQuery {
    /// Wait up to this many seconds for the execution to end.
    wait: Option<f64>,
}

pub(crate) async fn create_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, flow)): Path<(String, String)>,
    Query(q): Query<CreateQuery>,
    headers: HeaderMap,
    Body(inputs): Body<Map<String, Value>>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let ns = path_namespace(&ns)?;
    if app.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::Unavailable("the server is stopping: try again once it is back".into()));
    }
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            idempotency_key(v)
                .ok_or_else(|| {
                    ApiError::BadRequest("header Idempotency-Key: 1 to 128 visible ASCII characters".into())
                })?
                .to_owned(),
        ),
        None => None,
    };
    let origin = Origin::api(&caller, key.as_deref());
    let wait = q.wait.filter(|w| w.is_finite() && *w > 0.0).map(|w| Duration::from_secs_f64(w.min(300.0)));
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let (mut rec, created, waker) = blocking(&app, move |app| {
        let (rec, created) = executions::queue(&app.state, &origin, &ns, &flow, &inputs)?;
        // Listening, then reading again: an end after either is not missed.
        let waker = wait.map(|_| app.waiter(rec.id.as_str()));
        let rec = if waker.is_some() && !rec.status.ended() { app.records().get(rec.id.as_str())? } else { rec };
        Ok((rec, created, waker))
    })
    .await?;
    if let (Some(deadline), Some(mut waker)) = (deadline, waker) {
        let ended = rec.status.ended()
            || tokio::time::timeout_at(deadline, waker.wait_for(|ended| *ended)).await.is_ok_and(|r| r.is_ok());
        if ended && !rec.status.ended() {
            let id = rec.id.clone();
            rec = blocking(&app, move |app| Ok(app.records().get(id.as_str())?)).await?;
        }
        app.stop_waiting(rec.id.as_str(), waker);
    }
    let status = if rec.status.ended() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(Queued { id: rec.id.to_string(), status: rec.status, created, execution: rec })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ExecutionQuery {
    namespace: Option<Namespace>,
    flow: Option<String>,
    status: Option<String>,
    /// Started at or after (RFC 3339).
    since: Option<String>,
    /// Started before (RFC 3339).
    until: Option<String>,
    limit: Option<u64>,
}

pub(crate) async fn list_executions(
    State(app): State<AppState>,
    caller: Caller,
    Query(q): Query<ExecutionQuery>,
) -> Result<Json<Vec<ExecutionRecord>>, ApiError> {
    let limit = q.limit.unwrap_or(50).min(1000);
    let list = blocking(&app, move |app| {
        let since = q.since.as_deref().map(|t| rfc3339("since", t)).transpose()?;
        let until = q.until.as_deref().map(|t| rfc3339("until", t)).transpose()?;
        let filter = crate::executions::Search {
            namespace: q.namespace.as_ref().map(Namespace::as_str),
            flow: q.flow.as_deref(),
            status: q.status.as_deref(),
            since: since.as_deref(),
            until: until.as_deref(),
        };
        Ok(app.records().search(&filter, limit)?)
    })
    .await?;
    Ok(Json(list.into_iter().filter(|r| caller.may(P::ExecutionRead, &r.namespace)).collect()))
}

pub(crate) async fn get_execution(
    State(app): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ExecutionRecord>, ApiError> {
    blocking(&app, move |app| Ok(Json(app.records().get(&id)?))).await
}

pub(crate) async fn execution_log(
    State(app): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<String, ApiError> {
    blocking(&app, move |app| Ok(app.records().log(&id)?)).await
}

/// The trust-boundary records of one execution.
pub(crate) async fn execution_access(
    State(app): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<crate::service::bodies::ExecutionAccess>, ApiError> {
    blocking(&app, move |app| {
        let path = app.dir.store_path();
        Ok(Json(executions::access(&app.audit_reads(), &path, &id)?))
    })
    .await
}

pub(crate) async fn cancel_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CancelAnswer>, ApiError> {
    blocking(&app, move |app| {
        let stop = || {
            if let Some(r) = app.running.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
                r.cancel.cancel();
            }
        };
        let done = executions::cancel(&app.state, &caller.actor, &id, stop)?;
        if done == executions::Cancelled::Dequeued {
            app.ended(&id);
        }
        Ok(Json(CancelAnswer { id, status: done.as_str().to_owned(), cancelled: true }))
    })
    .await
}

use crate::service::bodies::Decide as DecideRequest;

pub(crate) async fn approve_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<DecideRequest>,
) -> Result<Json<Decided>, ApiError> {
    decide(app, caller, id, req, true).await
}

pub(crate) async fn reject_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<DecideRequest>,
) -> Result<Json<Decided>, ApiError> {
    decide(app, caller, id, req, false).await
}

pub(crate) async fn decide(
    app: AppState,
    caller: Caller,
    id: String,
    req: DecideRequest,
    approved: bool,
) -> Result<Json<Decided>, ApiError> {
    use crate::executions::{Decider, GateError, decide_gate};
    blocking(&app, move |app| {
        let may = |p: Permission, ns: &Namespace| caller.may(p, ns);
        let d = Decider {
            actor: &caller.actor,
            who: Some(format!("{} ({})", caller.info.name, caller.info.id)),
            person: Some(caller.principal.person.clone()),
            may: &may,
        };
        let comment = req.comment.map(|c| c.chars().take(1000).collect());
        let record = |rec| app.record(rec).map(drop).map_err(|e| e.to_string());
        decide_gate(&app.records(), &d, &id, &req.task, approved, comment, record).map_err(|e| match e {
            GateError::NotWaiting(m) => ApiError::Conflict(m),
            GateError::Denied(m) => ApiError::Forbidden(m),
            GateError::Audit(m) => ApiError::Unavailable(m),
            GateError::Record(r) => r.into(),
        })?;
        let decision = if approved { "approved" } else { "rejected" }.to_owned();
        Ok(Json(Decided { id, task: req.task, decision }))
    })
    .await
}
