//! Plugins, deployed flows, their revisions and reviews.

use crate::authz::Permission as P;
use crate::names::Namespace;
use crate::registry::{Deployed, is_sha256};
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::extract::{Body, Caller, blocking, path_namespace};
use crate::service::bodies::{FlowShown, TaskReach, TriggerShown};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

/// Which namespace's flows an uploaded plugin is for (its quota).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PluginQuery {
    namespace: Namespace,
}

pub(crate) async fn put_plugin(
    State(app): State<AppState>,
    caller: Caller,
    Path(sha): Path<String>,
    query: Result<Query<PluginQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<crate::service::bodies::PluginStored>), ApiError> {
    if !is_sha256(&sha) {
        return Err(ApiError::BadRequest(format!("path: {sha:?} is not a SHA-256 (64 lowercase hex digits)")));
    }
    let Ok(Query(PluginQuery { namespace: ns })) = query else {
        return Err(ApiError::BadRequest(
            "query `namespace`: the namespace of the flow the plugin is for (?namespace=NS; - for the root)".into(),
        ));
    };
    blocking(&app, move |app| {
        let who = caller.voucher();
        let new = crate::service::flows::upload_plugin(&app.state, &who, &ns, &sha, &body, Some(app.max_plugin_bytes))?;
        let status = if new { StatusCode::CREATED } else { StatusCode::OK };
        Ok((status, Json(crate::service::bodies::PluginStored { sha256: sha, stored: new })))
    })
    .await
}

pub(crate) fn flow_namespace_ok(caller: &Caller, ns: &Namespace) -> bool {
    caller.may(P::FlowRead, ns)
}

pub(crate) async fn list_flows(State(app): State<AppState>, caller: Caller) -> Result<Json<Vec<Deployed>>, ApiError> {
    let all = blocking(&app, |app| Ok(app.registry().list()?)).await?;
    Ok(Json(all.into_iter().filter(|d| flow_namespace_ok(&caller, &d.namespace)).collect()))
}

use crate::service::bodies::{Deploy as DeployRequest, Review as ReviewRequest};

pub(crate) async fn deploy_flow(
    State(app): State<AppState>,
    caller: Caller,
    Body(req): Body<DeployRequest>,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    blocking(&app, move |app| {
        let req = crate::service::flows::DeployRequest { file: &req.file, source: &req.source, plugins: &req.plugins };
        let d = crate::service::flows::deploy(&app.state, &caller.voucher(), req)?;
        Ok((StatusCode::CREATED, Json(d)))
    })
    .await
}

pub(crate) async fn approve_revision(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, flow, revision)): Path<(String, String, u64)>,
    Body(req): Body<ReviewRequest>,
) -> Result<Json<Deployed>, ApiError> {
    review_revision(app, caller, (ns, flow, revision), req, crate::registry::Decision::Approved).await
}

pub(crate) async fn reject_revision(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, flow, revision)): Path<(String, String, u64)>,
    Body(req): Body<ReviewRequest>,
) -> Result<Json<Deployed>, ApiError> {
    review_revision(app, caller, (ns, flow, revision), req, crate::registry::Decision::Rejected).await
}

pub(crate) async fn review_revision(
    app: AppState,
    caller: Caller,
    (ns, flow, revision): (String, String, u64),
    req: ReviewRequest,
    decision: crate::registry::Decision,
) -> Result<Json<Deployed>, ApiError> {
    let ns = path_namespace(&ns)?;
    blocking(&app, move |app| {
        let who = caller.voucher();
        let req = crate::service::flows::ReviewRequest {
            namespace: &ns,
            flow: &flow,
            revision,
            decision,
            comment: req.comment,
        };
        let d = crate::service::flows::review(&app.state, &who, req)?;
        Ok(Json(d))
    })
    .await
}

pub(crate) async fn show_flow(
    State(app): State<AppState>,
    _caller: Caller,
    Path((ns, flow)): Path<(String, String)>,
) -> Result<Json<FlowShown>, ApiError> {
    let ns = path_namespace(&ns)?;
    blocking(&app, move |app| {
        let (deployed, flow, pending) = app.registry().shown(&ns, &flow)?;
        let inputs = serde_json::to_value(&flow.inputs).unwrap_or_default();
        let (tasks, triggers) = (flow_tasks(&flow), flow_triggers(&flow, jiff::Timestamp::now()));
        Ok(Json(FlowShown { deployed, pending, inputs, tasks, triggers }))
    })
    .await
}

/// Each task's grants as the console shows them: what it may read, rotate,
/// call, and whether it waits for approval.
pub(crate) fn flow_tasks(flow: &crate::flow::Flow) -> Vec<TaskReach> {
    use crate::flow::Phase;
    let names = |g: &crate::policy::Grants| g.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>();
    flow.tasks
        .iter()
        .map(|t| TaskReach {
            id: t.id.to_string(),
            phase: match t.phase {
                Phase::Main => "tasks",
                Phase::Errors => "errors",
                Phase::Finally => "finally",
            }
            .to_owned(),
            secrets: names(&t.grants),
            rotate: names(&t.rotate),
            network: t.network.allow.entries().iter().map(ToString::to_string).collect(),
            approval: t.approval.as_ref().map(|a| a.permission.as_str().to_owned()),
            for_each: t.for_each.is_some(),
            allow_failure: t.allow_failure,
        })
        .collect()
}

/// Each trigger and, for a schedule, its next firing after `now`.
pub(crate) fn flow_triggers(flow: &crate::flow::Flow, now: jiff::Timestamp) -> Vec<TriggerShown> {
    use crate::trigger::{TriggerKind, WebhookAuth};
    flow.triggers
        .iter()
        .map(|t| match &t.kind {
            TriggerKind::Schedule(s) => TriggerShown::Schedule {
                id: t.id.to_string(),
                cron: s.pattern.clone(),
                timezone: s.timezone.clone(),
                next: s.next_after(now).map(|n| n.to_string()),
            },
            TriggerKind::Webhook(w) => TriggerShown::Webhook {
                id: t.id.to_string(),
                auth: match &w.auth {
                    WebhookAuth::Key(name) => format!("key in secret {name}"),
                    WebhookAuth::Signature { header, secret } => {
                        format!("HMAC-SHA256 in {header}, key in secret {secret}")
                    }
                },
            },
        })
        .collect()
}

pub(crate) async fn flow_revisions(
    State(app): State<AppState>,
    _caller: Caller,
    Path((ns, flow)): Path<(String, String)>,
) -> Result<Json<Vec<Deployed>>, ApiError> {
    let ns = path_namespace(&ns)?;
    blocking(&app, move |app| Ok(Json(app.registry().revisions(&ns, &flow)?))).await
}

pub(crate) async fn remove_flow(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, flow)): Path<(String, String)>,
) -> Result<Json<Deployed>, ApiError> {
    let ns = path_namespace(&ns)?;
    blocking(&app, move |app| Ok(Json(crate::service::flows::remove(&app.state, &caller.voucher(), &ns, &flow)?))).await
}
