//! Tokens and roles: who may issue what, and revocation.

use crate::audit::Action;
use crate::authz::{self, Binding, Permission as P};
use crate::names::Namespace;
use crate::server::AppState;
use crate::server::error::{ApiError, audit_failed};
use crate::server::extract::{Body, Caller, blocking, refuse};
use crate::tokens::TokenInfo;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

pub(crate) async fn token_self(caller: Caller) -> Json<TokenInfo> {
    Json(caller.info)
}

pub(crate) fn may_manage(caller: &Caller, t: &TokenInfo) -> bool {
    t.bindings.iter().all(|b| caller.may(P::TokenManage, &b.namespace))
}

pub(crate) async fn list_tokens(State(app): State<AppState>, caller: Caller) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let all = blocking(&app, |app| Ok(app.tokens().list()?)).await?;
    Ok(Json(all.into_iter().filter(|t| may_manage(&caller, t)).collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    name: String,
    role: String,
    #[serde(default)]
    namespace: Namespace,
    ttl: Option<String>,
}

pub(crate) async fn create_token(
    State(app): State<AppState>,
    caller: Caller,
    Body(req): Body<NewToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ttl = req
        .ttl
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t)
                .map_err(|e| ApiError::BadRequest(format!("ttl: {t:?} is not a duration like 30d: {e}")))
        })
        .transpose()?;
    // Every token issued through the API expires: at most the server's maximum.
    let max = app.max_token_ttl;
    if let Some(t) = ttl.filter(|t| *t > max) {
        return Err(ApiError::BadRequest(format!(
            "ttl: {} is longer than this server allows ({}, its --max-token-ttl)",
            crate::limits::show_duration(t),
            crate::limits::show_duration(max)
        )));
    }
    let ttl = Some(ttl.unwrap_or(max));
    blocking(&app, move |app| {
        let role = app.tokens().role(&req.role)?;
        if let Err(e) = authz::may_delegate(&caller.principal, &role, &req.namespace) {
            return Err(refuse(app, &caller, "POST /api/v1/tokens", &e.namespace, e.permission, e.to_string()));
        }
        let binding = Binding { role: req.role.clone(), namespace: req.namespace.clone() };
        let by = format!("{} ({})", caller.info.name, caller.info.id);
        let (info, token) = app.tokens().create(&req.name, vec![binding.clone()], ttl, &by, Some(&caller.info.id))?;
        let rec = caller
            .record(Action::TokenCreate, &req.namespace, None)
            .reason(format!("token {} ({}) with {binding}", info.name, info.id))
            .detail_field("token", info.id.clone());
        if let Err(e) = app.record(rec) {
            // Fail closed: a token whose issue is not on the record does not exist.
            let _ = app.tokens().revoke(&info.id);
            return Err(audit_failed(e));
        }
        Ok((StatusCode::CREATED, Json(json!({ "token": token.expose(), "info": info }))))
    })
    .await
}

pub(crate) async fn revoke_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    blocking(&app, move |app| {
        let info = app.tokens().get(&token)?;
        if !may_manage(&caller, &info) {
            let ns = info.bindings.iter().map(|b| b.namespace.clone()).find(|n| !caller.may(P::TokenManage, n));
            let ns = ns.unwrap_or_default();
            let message =
                format!("permission token:manage is required in namespace {ns} to revoke token {}", info.name);
            return Err(refuse(app, &caller, "DELETE /api/v1/tokens/{token}", &ns, P::TokenManage, message));
        }
        let rec = caller
            .record(Action::TokenRevoke, &Namespace::root(), None)
            .reason(format!("token {} ({})", info.name, info.id))
            .detail_field("token", info.id.clone());
        app.record(rec).map_err(audit_failed)?;
        Ok(Json(app.tokens().revoke(&info.id)?))
    })
    .await
}

pub(crate) async fn list_roles(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<authz::Role>>, ApiError> {
    Ok(Json(blocking(&app, |app| Ok(app.tokens().roles()?)).await?))
}
