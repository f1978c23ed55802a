//! The audit trail: read, checkpoint, verify.

use crate::authz::Permission as P;
use crate::names::Namespace;
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::extract::{Caller, blocking, rfc3339};
use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

pub(crate) async fn list_audit(
    State(app): State<AppState>,
    caller: Caller,
    Query(mut f): Query<crate::audit::Filter>,
) -> Result<Json<Vec<crate::audit::Record>>, ApiError> {
    // A time that does not parse is a 400 naming the field, never "no filter".
    f.since = f.since.as_deref().map(|t| rfc3339("since", t)).transpose()?;
    f.until = f.until.as_deref().map(|t| rfc3339("until", t)).transpose()?;
    blocking(&app, move |app| {
        let path = app.dir.store_path();
        let conn = app.audit_reads();
        let visible =
            |r: &crate::audit::Record| Namespace::new(&r.namespace).is_ok_and(|ns| caller.may(P::AuditRead, &ns));
        let Some(limit) = f.limit else {
            let all = crate::audit::list(&conn, &path, &f).map_err(|e| ApiError::Internal(e.to_string()))?;
            return Ok(Json(all.into_iter().filter(visible).collect()));
        };
        // The limit counts what the caller may see: page backwards until
        // that many are found or the trail is exhausted.
        let mut page = f.clone();
        let mut out: Vec<crate::audit::Record> = Vec::new();
        while (out.len() as u64) < limit {
            page.limit = Some(limit.max(256));
            let got = crate::audit::list(&conn, &path, &page).map_err(|e| ApiError::Internal(e.to_string()))?;
            let Some(first) = got.first() else { break };
            page.before = Some(first.seq);
            let mut seen: Vec<_> = got.into_iter().filter(visible).collect();
            seen.append(&mut out);
            out = seen;
        }
        let extra = out.len().saturating_sub(limit as usize);
        Ok(Json(out.split_off(extra)))
    })
    .await
}

pub(crate) async fn audit_checkpoint(State(app): State<AppState>, _caller: Caller) -> Result<Response, ApiError> {
    blocking(&app, move |app| {
        let path = app.dir.store_path();
        let internal = |e: crate::audit::AuditError| ApiError::Internal(e.to_string());
        let conn = crate::audit::open(&path, false).map_err(internal)?;
        let key = app.secrets().local().store().integrity().clone();
        let note = crate::audit::checkpoint_note(&conn, &path, &key).map_err(|e| ApiError::Conflict(e.to_string()))?;
        Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
    })
    .await
}

pub(crate) async fn verify_audit(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<crate::audit::Verdict>, ApiError> {
    blocking(&app, move |app| {
        let path = app.dir.store_path();
        let internal = |e: crate::audit::AuditError| ApiError::Internal(e.to_string());
        let conn = crate::audit::open(&path, false).map_err(internal)?;
        let key = app.secrets().local().store().integrity().clone();
        Ok(Json(crate::audit::verify(&conn, &path, &key).map_err(internal)?))
    })
    .await
}
