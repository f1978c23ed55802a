//! Secrets (metadata, never a value) and their protections.

use crate::authz::Permission as P;
use crate::names::{Namespace, SecretName};
use crate::secret::SecretValue;
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::extract::{Body, Caller, blocking, path_namespace, secret_name};
use crate::service;
use crate::service::bodies::{ProtectionChanged, SecretBound, SecretEnded, SecretWritten};
use crate::store::{SetOptions, now};
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SecretQuery {
    namespace: Option<Namespace>,
    /// Only what expires within this long (`14d`), expired ones included.
    expiring: Option<String>,
}

pub(crate) async fn list_secrets(
    State(app): State<AppState>,
    caller: Caller,
    Query(q): Query<SecretQuery>,
) -> Result<Json<service::secrets::SecretList>, ApiError> {
    let before = q
        .expiring
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t)
                .map(|d| now() + d.as_secs() as i64)
                .map_err(|e| ApiError::BadRequest(format!("query parameter `expiring`: {t:?}: {e}")))
        })
        .transpose()?;
    blocking(&app, move |app| {
        let list = service::secrets::list(app.secrets(), &caller.voucher(), q.namespace.as_ref(), before)?;
        Ok(Json(list))
    })
    .await
}

pub(crate) async fn describe_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<service::secrets::SecretDescription>, ApiError> {
    let (ns, name) = (path_namespace(&ns)?, secret_name(&name)?);
    blocking(&app, move |app| {
        let path = app.dir.store_path();
        let conn = app.audit_reads();
        Ok(Json(service::secrets::describe(app.secrets(), &path, &conn, &caller.voucher(), &ns, &name)?))
    })
    .await
}

/// The body of a `PUT`: the value read into zeroizing memory.
type PutSecret = crate::service::bodies::PutSecret<SecretValue>;

/// The answer to a change of `name`'s value, `how` marking which.
fn written(
    namespace: Namespace,
    name: SecretName,
    version: String,
    how: impl FnOnce(&mut SecretWritten),
) -> SecretWritten {
    let mut w = SecretWritten { namespace, name, version, staged: false, committed: false, discarded: false };
    how(&mut w);
    w
}

/// `scheme://host[:port]` entries of a request body, each error naming its index.
pub(crate) fn parse_destinations(list: &[String]) -> Result<Vec<crate::network::AllowEntry>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            d.parse::<crate::network::AllowEntry>()
                .map_err(|e| ApiError::BadRequest(format!("request body at field `destinations[{i}]`: {e}")))
        })
        .collect()
}

pub(crate) async fn put_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
    Body(req): Body<PutSecret>,
) -> Result<Json<SecretWritten>, ApiError> {
    let (ns, name) = (path_namespace(&ns)?, secret_name(&name)?);
    let value = match (req.value, &req.generate) {
        (Some(v), None) => v,
        (None, Some(g)) => SecretValue::generate(g.length, g.charset)
            .map_err(|e| ApiError::BadRequest(format!("request body at field `generate.length`: {e}")))?,
        _ => {
            return Err(ApiError::BadRequest(
                "request body: give exactly one of `value` and `generate: {length, charset}`".into(),
            ));
        }
    };
    if value.is_empty() {
        return Err(ApiError::BadRequest("request body at field `value`: the secret value is empty".into()));
    }
    let expires_at = match req.expires_in.as_deref() {
        Some(t) => {
            let d = humantime::parse_duration(t)
                .map_err(|e| ApiError::BadRequest(format!("request body at field `expires_in`: {e}")))?;
            Some(now() + d.as_secs() as i64)
        }
        None => None,
    };
    let destinations = req.destinations.as_deref().map(parse_destinations).transpose()?;
    if req.staged && (destinations.is_some() || req.keep.is_some()) {
        return Err(ApiError::BadRequest(
            "request body at field `staged`: a staged version takes no `destinations` or `keep`".into(),
        ));
    }
    blocking(&app, move |app| {
        if req.staged {
            let version = app.secrets().stage(&caller.actor, &ns, &name, &value, expires_at)?;
            return Ok(Json(written(ns, name, version.to_string(), |w| w.staged = true)));
        }
        let opts = SetOptions { expires_at, keep: req.keep, rotate: req.rotate, destinations };
        // The router audits the change (fail closed) with the caller as actor.
        let version = app.secrets().set(&caller.actor, &ns, &name, &value, &opts)?;
        Ok(Json(written(ns, name, version.to_string(), |_| {})))
    })
    .await
}

pub(crate) async fn bind_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
    Body(req): Body<crate::service::bodies::BindSecret>,
) -> Result<Json<SecretBound>, ApiError> {
    let (ns, name) = (path_namespace(&ns)?, secret_name(&name)?);
    let destinations = parse_destinations(&req.destinations)?;
    blocking(&app, move |app| {
        // The router audits the change (fail closed) with the caller as actor.
        app.secrets().bind(&caller.actor, &ns, &name, &destinations)?;
        let destinations = destinations.iter().map(ToString::to_string).collect();
        Ok(Json(SecretBound { namespace: ns, name, destinations }))
    })
    .await
}

pub(crate) async fn commit_staged(
    State(app): State<AppState>,
    caller: Caller,
    Path(at): Path<(String, String)>,
) -> Result<Json<SecretWritten>, ApiError> {
    resolve_staged(app, caller, at, true).await
}

pub(crate) async fn discard_staged(
    State(app): State<AppState>,
    caller: Caller,
    Path(at): Path<(String, String)>,
) -> Result<Json<SecretWritten>, ApiError> {
    resolve_staged(app, caller, at, false).await
}

/// Commits (or discards) the staged version of `ns`/`name`.
pub(crate) async fn resolve_staged(
    app: AppState,
    caller: Caller,
    (ns, name): (String, String),
    commit: bool,
) -> Result<Json<SecretWritten>, ApiError> {
    let (ns, name) = (path_namespace(&ns)?, secret_name(&name)?);
    blocking(&app, move |app| {
        let written = if commit {
            let version = app.secrets().commit_staged(&caller.actor, &ns, &name)?;
            written(ns, name, version.to_string(), |w| w.committed = true)
        } else {
            let version = app.secrets().discard_staged(&caller.actor, &ns, &name)?;
            written(ns, name, version.to_string(), |w| w.discarded = true)
        };
        Ok(Json(written))
    })
    .await
}

pub(crate) async fn revoke_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path(at): Path<(String, String)>,
) -> Result<Json<SecretEnded>, ApiError> {
    end_secret(app, caller, at, "revoked").await
}

pub(crate) async fn destroy_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path(at): Path<(String, String)>,
) -> Result<Json<SecretEnded>, ApiError> {
    end_secret(app, caller, at, "destroyed").await
}

/// Revokes (refuses every read, keeps the history) or destroys (erases
/// every version) `ns`/`name`, as `how` says.
async fn end_secret(
    app: AppState,
    caller: Caller,
    (ns, name): (String, String),
    how: &'static str,
) -> Result<Json<SecretEnded>, ApiError> {
    let (ns, name) = (path_namespace(&ns)?, secret_name(&name)?);
    blocking(&app, move |app| {
        Ok(Json(if how == "revoked" {
            let done = app.secrets().revoke(&caller.actor, &ns, &name)?;
            SecretEnded { revoked: Some(name), destroyed: None, namespace: ns, done }
        } else {
            let done = app.secrets().destroy(&caller.actor, &ns, &name)?;
            SecretEnded { revoked: None, destroyed: Some(name), namespace: ns, done }
        }))
    })
    .await
}

pub(crate) async fn list_protections(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<crate::registry::Protection>>, ApiError> {
    let all = blocking(&app, |app| Ok(app.registry().protections()?)).await?;
    Ok(Json(all.into_iter().filter(|p| caller.may(P::FlowRead, &p.namespace)).collect()))
}

pub(crate) async fn set_protection(
    app: AppState,
    caller: Caller,
    ns: &str,
    name: Option<&str>,
    on: bool,
) -> Result<Json<ProtectionChanged>, ApiError> {
    let ns = path_namespace(ns)?;
    let name = name.map(secret_name).transpose()?;
    blocking(&app, move |app| {
        let changed = crate::service::flows::protect(&app.state, &caller.voucher(), &ns, name.as_ref(), on)?;
        Ok(Json(ProtectionChanged { namespace: ns, secret: name, protected: on, changed }))
    })
    .await
}

pub(crate) async fn protect_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<ProtectionChanged>, ApiError> {
    set_protection(app, caller, &ns, Some(&name), true).await
}

pub(crate) async fn unprotect_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<ProtectionChanged>, ApiError> {
    set_protection(app, caller, &ns, Some(&name), false).await
}

pub(crate) async fn protect_namespace(
    State(app): State<AppState>,
    caller: Caller,
    Path(ns): Path<String>,
) -> Result<Json<ProtectionChanged>, ApiError> {
    set_protection(app, caller, &ns, None, true).await
}

pub(crate) async fn unprotect_namespace(
    State(app): State<AppState>,
    caller: Caller,
    Path(ns): Path<String>,
) -> Result<Json<ProtectionChanged>, ApiError> {
    set_protection(app, caller, &ns, None, false).await
}
