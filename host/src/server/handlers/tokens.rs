//! Tokens and roles: thin edges over [`crate::service::tokens`].

use crate::authz;
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::extract::{Body, Caller, blocking};
use crate::service::tokens::{self, IssueRequest};
use crate::tokens::TokenInfo;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

pub(crate) async fn token_self(caller: Caller) -> Json<TokenInfo> {
    Json(caller.info)
}

pub(crate) async fn list_tokens(State(app): State<AppState>, caller: Caller) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(blocking(&app, move |app| Ok(tokens::list(&app.state, &caller.voucher())?)).await?))
}

use crate::service::bodies::{IssuedToken, NewToken};

pub(crate) async fn create_token(
    State(app): State<AppState>,
    caller: Caller,
    Body(req): Body<NewToken>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    let ttl = req
        .ttl
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t)
                .map_err(|e| ApiError::BadRequest(format!("ttl: {t:?} is not a duration like 30d: {e}")))
        })
        .transpose()?;
    let req = IssueRequest { name: req.name, role: req.role, namespace: req.namespace, ttl };
    blocking(&app, move |app| {
        // Every token issued through the API expires: at most the server's maximum.
        let (info, token) = tokens::issue(&app.state, &caller.voucher(), req, Some(app.max_token_ttl))?;
        Ok((StatusCode::CREATED, Json(IssuedToken { token: token.expose().to_owned(), info })))
    })
    .await
}

pub(crate) async fn revoke_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    Ok(Json(blocking(&app, move |app| Ok(tokens::revoke(&app.state, &caller.voucher(), &token)?)).await?))
}

pub(crate) async fn list_roles(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<authz::Role>>, ApiError> {
    Ok(Json(blocking(&app, |app| Ok(app.tokens().roles()?)).await?))
}
