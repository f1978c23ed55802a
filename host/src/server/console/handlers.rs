//! The API routes the console signs in and out with, and the one it asks
//! what to show: `/api/v1/session` and `/api/v1/permissions`. Listed in
//! [`crate::server::api::ROUTES`] like every other route.

use crate::authz::{self, Permission};
use crate::names::Namespace;
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::extract::{Caller, blocking};
use crate::server::sessions::COOKIE;
use crate::service::sessions;
use crate::tokens::TokenSecret;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

fn with_cookie(status: StatusCode, cookie: &str, body: serde_json::Value) -> Result<Response, ApiError> {
    let value = HeaderValue::from_str(cookie).map_err(|e| ApiError::Internal(format!("a session cookie: {e}")))?;
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, value);
    Ok(resp)
}

/// `POST /api/v1/session`: the token, presented as a bearer (already
/// authenticated by [`Caller`]), becomes a session cookie. Audited before
/// the session exists.
pub(in crate::server) async fn sign_in(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if caller.session.is_some() {
        return Err(ApiError::BadRequest(format!(
            "already signed in to the console: present the token as `Authorization: Bearer` to start a new session \
             (the {COOKIE} cookie was given)"
        )));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| TokenSecret::presented(t.trim()))
        .ok_or(ApiError::Unauthorized)?;
    let info = caller.info.clone();
    blocking(&app, move |app| {
        let (cookie, session) = sessions::sign_in(&app.state, &caller.actor, &info, || app.sessions.open(&bearer))?;
        let body = json!({
            "csrf": session.csrf,
            "idle_timeout_seconds": app.sessions.idle().as_secs(),
            "token": info,
        });
        with_cookie(StatusCode::CREATED, &app.sessions.set_cookie(&cookie), body)
    })
    .await
}

/// `GET /api/v1/session`: who the caller is and, for a console session,
/// the CSRF token its changes must carry.
pub(in crate::server) async fn current(State(app): State<AppState>, caller: Caller) -> Json<serde_json::Value> {
    Json(json!({
        "token": caller.info,
        "csrf": caller.session.as_ref().map(|s| s.csrf.clone()),
        "idle_timeout_seconds": app.sessions.idle().as_secs(),
    }))
}

/// `DELETE /api/v1/session`: signs a console session out (audited; a
/// bearer token has no session to end).
pub(in crate::server) async fn sign_out(State(app): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let Some(session) = caller.session.clone() else {
        return Ok(Json(json!({ "signed_out": false })).into_response());
    };
    blocking(&app, move |app| {
        sessions::sign_out(&app.state, &caller.actor, &caller.info, || app.sessions.close(&session.key))?;
        with_cookie(StatusCode::OK, &app.sessions.clear_cookie(), json!({ "signed_out": true }))
    })
    .await
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(in crate::server) struct PermissionsQuery {
    namespace: Namespace,
}

/// `GET /api/v1/permissions?namespace=NS`: what the caller holds there,
/// as [`authz::decide`] answers it (the console hides the rest).
pub(in crate::server) async fn permissions(
    caller: Caller,
    Query(q): Query<PermissionsQuery>,
) -> Json<serde_json::Value> {
    let held: Vec<&str> = Permission::ALL
        .iter()
        .filter(|p| authz::decide(&caller.principal, **p, &q.namespace).is_ok())
        .map(|p| p.as_str())
        .collect();
    let anywhere: Vec<&str> =
        Permission::ALL.iter().filter(|p| authz::holds_anywhere(&caller.principal, **p)).map(|p| p.as_str()).collect();
    Json(json!({ "namespace": q.namespace, "permissions": held, "anywhere": anywhere }))
}
