//! `POST /api/v1/webhooks/{ns}/{flow}/{key}`: a flow's webhook trigger.
//! No token: the request proves itself with the key (the URL's last
//! segment, compared in constant time with a secret's value) or with an
//! HMAC-SHA256 signature of its raw body under a secret (GitHub's style,
//! the URL ending with the trigger's id).
//!
//! Invariants: the key and the signing secret never leave the host (not in
//! a response, a log line, an audit record or the execution); a refused
//! request is audited and counts against its address's guessing limit, and
//! every refusal of a key looks the same (404), whether the flow, the
//! trigger or the key was wrong.

use super::App;
use super::AppState;
use super::error::ApiError;
use super::extract::{ClientIp, blocking, path_namespace};
use super::queue::{Origin, idempotency_key};
use crate::audit::Actor;
use crate::backend::Lookup;
use crate::names::{Namespace, SecretName};
use crate::policy::Grants;
use crate::secret::SecretValue;
use crate::service::triggers;
use crate::trigger::{TriggerKind, Webhook, WebhookAuth, body_value, context, key_matches, signature_matches};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

/// The handler.
pub async fn receive(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    Path((ns, flow, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if app.rate_limited(ip) {
        return Err(ApiError::TooMany);
    }
    if app.stopping.load(Ordering::SeqCst) {
        return Err(ApiError::Unavailable("the server is stopping: try again once it is back".into()));
    }
    let ns = path_namespace(&ns)?;
    let began = tokio::time::Instant::now();
    let fired = blocking(&app, move |app| fire(app, ip, &ns, &flow, &key, &headers, &body)).await;
    if let Err(ApiError::NotFound(_)) = &fired {
        // Every "no such webhook" leaves at the same time, whatever was
        // wrong: how long the check took (an unknown flow is found missing
        // at once; a known one parses its flow and reads its key) tells a
        // guesser nothing.
        tokio::time::sleep_until(began + REFUSAL_FLOOR).await;
    }
    let rec = fired?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": rec.0.id, "status": rec.0.status, "created": rec.1 }))))
}

/// No refusal of a key is answered sooner than this after the request came.
pub const REFUSAL_FLOOR: std::time::Duration = std::time::Duration::from_millis(100);

/// The one answer to a wrong flow, trigger or key.
const NO_SUCH_WEBHOOK: &str = "no such webhook";

fn fire(
    app: &App,
    ip: IpAddr,
    ns: &Namespace,
    flow_id: &str,
    key: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(crate::executions::ExecutionRecord, bool), ApiError> {
    let shown = crate::audit::bounded(flow_id);
    // What a refusal leaves behind: an audit record (never the key) and a
    // strike against the address.
    let refuse = |secret: Option<&SecretName>, reason: String, err: ApiError| {
        app.auth_failed(ip);
        triggers::webhook_refused(&app.state, ns, &shown, secret, &reason, &ip.to_string())?;
        Err(err)
    };
    let not_found = || ApiError::NotFound(NO_SUCH_WEBHOOK.into());
    // A flow whose only revisions wait for review: its newest pending one's
    // triggers are checked, so that a sender with the right key is told
    // why nothing runs (and anyone else gets the same 404).
    let current = app.registry().current(ns, flow_id);
    let found = match current {
        Ok((d, flow)) => Ok((d, flow, None)),
        Err(crate::registry::RegistryError::Pending { revision, .. }) => {
            let reg = app.registry();
            reg.get(ns, flow_id, revision).and_then(|d| Ok((reg.parsed(&d)?, d))).map(|(f, d)| (d, f, Some(revision)))
        }
        Err(e) => Err(e),
    };
    let Ok((deployed, flow, pending)) = found else {
        return refuse(None, "no such deployed flow".into(), not_found());
    };
    let located = deployed.vouched().map(crate::vouch::Vouches::locations).unwrap_or_default();
    let secret_value = |app: &App, ns: &Namespace, name: &SecretName| secret_value(app, ns, name, &located);
    let mut found = None;
    for t in &flow.triggers {
        let TriggerKind::Webhook(w) = &t.kind else { continue };
        match &w.auth {
            WebhookAuth::Signature { header, secret } if t.id.as_str() == key => {
                let Some(value) = secret_value(app, ns, secret)? else {
                    return refuse(
                        Some(secret),
                        format!("trigger {}: its signing secret is not set", t.id),
                        not_found(),
                    );
                };
                let sent = headers.get(header.as_str()).and_then(|v| v.to_str().ok());
                if let Err(why) = signature_matches(sent, body, value.expose().as_bytes()) {
                    return refuse(Some(secret), format!("trigger {}: {why}", t.id), ApiError::Unauthorized);
                }
                found = Some((t, w));
                break;
            }
            WebhookAuth::Key(secret) => {
                if let Some(value) = secret_value(app, ns, secret)?
                    && key_matches(key, value.expose().as_bytes())
                {
                    found = Some((t, w));
                    break;
                }
            }
            WebhookAuth::Signature { .. } => {}
        }
    }
    let Some((trigger, hook)) = found else {
        return refuse(None, "no webhook trigger has this key".into(), not_found());
    };
    if let Some(revision) = pending {
        let why = crate::registry::RegistryError::Pending { namespace: ns.clone(), id: flow.id.to_string(), revision };
        let (t, f) = (trigger.id.as_str(), flow.id.as_str());
        triggers::webhook_held(&app.state, ns, hook.secret(), t, f, revision, &why.to_string())?;
        return Err(ApiError::Conflict(why.to_string()));
    }
    if body.len() > hook.max_body {
        return Err(ApiError::TooLarge(format!(
            "the body is {} bytes; trigger {} accepts at most {}",
            body.len(),
            trigger.id,
            hook.max_body
        )));
    }
    let body = body_value(body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
    let mut extra = Map::new();
    extra.insert("body".into(), body);
    extra.insert("headers".into(), chosen_headers(hook, headers));
    let name = format!("webhook:{}", trigger.id);
    let actor = Actor::Trigger { flow: flow.id.to_string(), trigger: name.clone() };
    triggers::webhook_verified(&app.state, &actor, ns, hook.secret(), trigger.id.as_str(), flow.id.as_str())?;
    // A sender cannot be told its key is bad: a delivery without a valid one is not deduplicated.
    let key = headers
        .get("idempotency-key")
        .and_then(idempotency_key)
        .map(|k| format!("{name}@{}/{}:{k}", ns.as_str(), flow.id));
    let origin = Origin {
        actor,
        by: format!("webhook {}", trigger.id),
        trigger: name,
        context: context("webhook", Some(trigger.id.as_str()), extra),
        idempotency_key: key,
        person: None,
    };
    Ok(crate::service::executions::queue(&app.state, &origin, ns, flow.id.as_str(), &Map::new())?)
}

/// The value of `name` as `ns`'s tasks would find it (only where the
/// revision was vouched for, as `located` says), for the host's own check;
/// `None` when it is missing, revoked, expired or resolves elsewhere now.
fn secret_value(
    app: &App,
    ns: &Namespace,
    name: &SecretName,
    located: &std::collections::BTreeMap<SecretName, Namespace>,
) -> Result<Option<SecretValue>, ApiError> {
    let grant = Grants::new([name.clone()])
        .located(located)
        .check(name.as_str())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match app.secrets().lookup(ns, &grant, None)? {
        Lookup::Found(found) => Ok(Some(found.value)),
        _ => Ok(None),
    }
}

/// The headers the trigger hands to the flow, under the names it wrote;
/// one the delivery lacks is an empty string, so that a flow renders the
/// same whichever headers a sender includes.
fn chosen_headers(hook: &Webhook, headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in &hook.headers {
        let v = headers.get(name.as_str()).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        out.insert(name.clone(), Value::String(v.unwrap_or_default()));
    }
    Value::Object(out)
}
