//! The HTTP API under `/api/v1`: one table of routes ([`ROUTES`]) from which
//! the router, the authorization of every request, the OpenAPI document
//! and the tests' authorization matrix are all built; the [`Caller`]
//! extractor; thin handlers over the library.
//!
//! Invariant: a handler runs only after [`Caller`] authenticated the token
//! and [`crate::authz::decide`] allowed the route's permission in its
//! namespace (or, for routes that list across namespaces, the handler keeps
//! only the items the caller may see); no handler returns a secret value.

use super::App;
use super::console::{Resolved, SessionFailure};
use super::listen::Peer;
use crate::audit::{Action, Actor, NewRecord, Outcome, now_rfc3339};
use crate::authz::{self, Binding, Permission, Principal};
use crate::executions::{CancelOutcome, ENDED, ExecutionRecord};
use crate::names::{ExecutionId, Namespace, SecretName};
use crate::registry::{Deployed, RegistryError, is_sha256};
use crate::secret::SecretValue;
use crate::store::{SetOptions, StoreError, now};
use crate::tokens::{AuthFailure, TokenError, TokenInfo, TokenSecret};
use axum::Json;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, RawPathParams, State};
use axum::http::{HeaderMap, StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub(super) type AppState = Arc<App>;

/// Where a route's permission is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// No token needed.
    Public,
    /// Any valid token.
    Authenticated,
    /// In the namespace of the path's `{ns}` (`-` is the root).
    PathNamespace,
    /// In the namespace of the execution the path's `{id}` names.
    Execution,
    /// In some namespace: the handler keeps only the items the caller may
    /// see, or checks the item it acts on.
    Anywhere,
    /// In the namespace the request names (a flow's own namespace, a new
    /// token's binding, a plugin upload's `?namespace`): held somewhere to
    /// get past the extractor, then checked there by the handler before
    /// anything is stored.
    Body,
    /// In the root namespace: the answer covers every namespace.
    Root,
}

/// One route of the API.
#[derive(Debug)]
pub struct Route {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// The path, with `{param}`s.
    pub path: &'static str,
    /// The permission it needs, if any.
    pub permission: Option<Permission>,
    /// Where the permission is checked.
    pub scope: Scope,
    /// What it does.
    pub summary: &'static str,
    handler: fn() -> MethodRouter<AppState>,
}

macro_rules! route {
    ($method:literal, $path:literal, $perm:expr, $scope:ident, $summary:literal, $h:expr) => {
        Route {
            method: $method,
            path: $path,
            permission: $perm,
            scope: Scope::$scope,
            summary: $summary,
            handler: || $h,
        }
    };
}

use Permission as P;

/// Every route of the API.
pub static ROUTES: &[Route] = &[
    route!("GET", "/api/v1/health", None, Public, "Liveness: ok, or stopping.", get(health)),
    route!("GET", "/api/v1/openapi.json", None, Public, "This API, as OpenAPI 3.1.", get(openapi)),
    route!(
        "POST",
        "/api/v1/webhooks/{ns}/{flow}/{key}",
        None,
        Public,
        "Start a flow from its webhook trigger: {key} is the key, or the trigger id of a signed webhook.",
        post(super::webhook::receive).layer(DefaultBodyLimit::max(crate::trigger::MAX_WEBHOOK_BODY))
    ),
    route!(
        "GET",
        "/api/v1/tokens/self",
        None,
        Authenticated,
        "The caller's own token (never the token).",
        get(token_self)
    ),
    route!(
        "POST",
        "/api/v1/session",
        None,
        Authenticated,
        "Sign in to the web console: the token as a bearer becomes a session cookie (HttpOnly, SameSite=Strict); the answer holds the CSRF token every change made with the cookie must send as X-CSRF-Token.",
        post(super::console::handlers::sign_in)
    ),
    route!(
        "GET",
        "/api/v1/session",
        None,
        Authenticated,
        "The caller's token and, for a console session, its CSRF token and idle timeout.",
        get(super::console::handlers::current)
    ),
    route!(
        "DELETE",
        "/api/v1/session",
        None,
        Authenticated,
        "Sign out of the web console.",
        delete(super::console::handlers::sign_out)
    ),
    route!(
        "GET",
        "/api/v1/permissions",
        None,
        Authenticated,
        "The permissions the caller holds in ?namespace, and anywhere (the console hides what they lack; every route checks anyway).",
        get(super::console::handlers::permissions)
    ),
    route!(
        "GET",
        "/api/v1/tokens",
        Some(P::TokenManage),
        Anywhere,
        "Tokens bound within the caller's scope.",
        get(list_tokens)
    ),
    route!(
        "POST",
        "/api/v1/tokens",
        Some(P::TokenManage),
        Body,
        "Issue a token: {name, role, namespace, ttl}. The response holds the token, once.",
        post(create_token)
    ),
    route!(
        "DELETE",
        "/api/v1/tokens/{token}",
        Some(P::TokenManage),
        Anywhere,
        "Revoke a token by name or id.",
        delete(revoke_token)
    ),
    route!("GET", "/api/v1/roles", Some(P::TokenManage), Anywhere, "Built-in and custom roles.", get(list_roles)),
    route!(
        "GET",
        "/api/v1/secrets",
        Some(P::SecretList),
        Anywhere,
        "Secret metadata the caller may list (never a value).",
        get(list_secrets)
    ),
    route!(
        "GET",
        "/api/v1/secrets/{ns}/{name}",
        Some(P::SecretList),
        PathNamespace,
        "One secret's metadata and versions.",
        get(describe_secret)
    ),
    route!(
        "PUT",
        "/api/v1/secrets/{ns}/{name}",
        Some(P::SecretWrite),
        PathNamespace,
        "Set or rotate a secret: {value | generate: {length, charset: alnum|hex|base64|ascii}, rotate, expires_in, keep}; a generated value is never in the answer.",
        put(put_secret)
    ),
    route!(
        "PUT",
        "/api/v1/secrets/{ns}/{name}/destinations",
        Some(P::SecretWrite),
        PathNamespace,
        "Bind a secret to destinations (`{destinations: [\"https://host[:port]\"]}`; empty unbinds): tasks get a placeholder, the value goes only there.",
        put(bind_secret)
    ),
    route!(
        "POST",
        "/api/v1/secrets/{ns}/{name}/commit",
        Some(P::SecretWrite),
        PathNamespace,
        "Make the staged version current (a rotation the service accepted).",
        post(commit_staged)
    ),
    route!(
        "POST",
        "/api/v1/secrets/{ns}/{name}/discard",
        Some(P::SecretWrite),
        PathNamespace,
        "Erase the staged version (a rotation the service did not accept).",
        post(discard_staged)
    ),
    route!(
        "POST",
        "/api/v1/secrets/{ns}/{name}/revoke",
        Some(P::SecretRevoke),
        PathNamespace,
        "Revoke a secret: reads are refused.",
        post(revoke_secret)
    ),
    route!(
        "DELETE",
        "/api/v1/secrets/{ns}/{name}",
        Some(P::SecretDestroy),
        PathNamespace,
        "Destroy a secret (crypto-erase every version).",
        delete(destroy_secret)
    ),
    route!(
        "PUT",
        "/api/v1/plugins/{sha256}",
        Some(P::FlowDeploy),
        Body,
        "Upload a plugin (the body: a WebAssembly module or component), stored by its SHA-256, for ?namespace=NS (flow:deploy there; counted against its plugin quota).",
        put(put_plugin).layer(DefaultBodyLimit::max(crate::runtime::MAX_PLUGIN_BYTES))
    ),
    route!("GET", "/api/v1/flows", Some(P::FlowRead), Anywhere, "Deployed flows the caller may read.", get(list_flows)),
    route!(
        "POST",
        "/api/v1/flows",
        Some(P::FlowDeploy),
        Body,
        "Deploy a flow: {file, source, plugins: {task: sha256}}.",
        post(deploy_flow)
    ),
    route!(
        "GET",
        "/api/v1/flows/{ns}/{flow}",
        Some(P::FlowRead),
        PathNamespace,
        "A deployed flow's current revision.",
        get(show_flow)
    ),
    route!(
        "GET",
        "/api/v1/flows/{ns}/{flow}/revisions",
        Some(P::FlowRead),
        PathNamespace,
        "Every revision of a flow.",
        get(flow_revisions)
    ),
    route!(
        "DELETE",
        "/api/v1/flows/{ns}/{flow}",
        Some(P::FlowDeploy),
        PathNamespace,
        "Remove a deployed flow (its executions stay).",
        delete(remove_flow)
    ),
    route!(
        "POST",
        "/api/v1/flows/{ns}/{flow}/revisions/{revision}/approve",
        Some(P::SecretUse),
        PathNamespace,
        "Approve a revision pending review (`{comment}`): a second person holding secret:use where each protected secret it touches lives; or vouch for an unchecked one.",
        post(approve_revision)
    ),
    route!(
        "POST",
        "/api/v1/flows/{ns}/{flow}/revisions/{revision}/reject",
        Some(P::SecretUse),
        PathNamespace,
        "Reject a revision pending review (`{comment}`): it never runs; the revision before it keeps serving.",
        post(reject_revision)
    ),
    route!(
        "GET",
        "/api/v1/protections",
        Some(P::FlowRead),
        Anywhere,
        "Protected secrets and namespaces where the caller may read flows: a flow revision touching one waits for a second person.",
        get(list_protections)
    ),
    route!(
        "PUT",
        "/api/v1/secrets/{ns}/{name}/protection",
        Some(P::SecretWrite),
        PathNamespace,
        "Protect a secret: a flow revision that touches it waits for a second person's approval.",
        put(protect_secret)
    ),
    route!(
        "DELETE",
        "/api/v1/secrets/{ns}/{name}/protection",
        Some(P::SecretWrite),
        PathNamespace,
        "Unprotect a secret.",
        delete(unprotect_secret)
    ),
    route!(
        "PUT",
        "/api/v1/namespaces/{ns}/protection",
        Some(P::SecretWrite),
        PathNamespace,
        "Protect every secret of a namespace and those below it.",
        put(protect_namespace)
    ),
    route!(
        "DELETE",
        "/api/v1/namespaces/{ns}/protection",
        Some(P::SecretWrite),
        PathNamespace,
        "Unprotect a namespace.",
        delete(unprotect_namespace)
    ),
    route!(
        "POST",
        "/api/v1/executions/{ns}/{flow}",
        Some(P::ExecutionCreate),
        PathNamespace,
        "Queue an execution; the body is its inputs. Idempotency-Key header; ?wait=SECONDS.",
        post(create_execution)
    ),
    route!(
        "GET",
        "/api/v1/executions",
        Some(P::ExecutionRead),
        Anywhere,
        "Executions the caller may read: ?namespace, flow, status, since, until (RFC 3339 start times), limit.",
        get(list_executions)
    ),
    route!(
        "GET",
        "/api/v1/executions/{id}",
        Some(P::ExecutionRead),
        Execution,
        "One execution: status and per-task outcome (masked).",
        get(get_execution)
    ),
    route!(
        "GET",
        "/api/v1/executions/{id}/log",
        Some(P::ExecutionRead),
        Execution,
        "An ended execution's log (masked), as text.",
        get(execution_log)
    ),
    route!(
        "GET",
        "/api/v1/executions/{id}/follow",
        Some(P::ExecutionRead),
        Execution,
        "Server-sent events until the execution ends: `status` (the record, when it changes), `log` (masked lines as they are written), `end` (the final record), or `closed`.",
        get(super::follow::follow)
    ),
    route!(
        "GET",
        "/api/v1/executions/{id}/access",
        Some(P::ExecutionRead),
        Execution,
        "What its tasks did at the trust boundary, from the audit trail: secret reads (name, version, fingerprint, outcome) and outbound requests (destination, outcome); never a value.",
        get(execution_access)
    ),
    route!(
        "POST",
        "/api/v1/executions/{id}/cancel",
        Some(P::ExecutionCancel),
        Execution,
        "Cancel: a queued execution never runs, a running one is interrupted.",
        post(cancel_execution)
    ),
    route!(
        "POST",
        "/api/v1/executions/{id}/approve",
        Some(P::ExecutionApprove),
        Execution,
        "Approve a task waiting at its approval gate: `{task, comment}` (the gate's permission at the execution's namespace; not its starter with distinct_from_trigger).",
        post(approve_execution)
    ),
    route!(
        "POST",
        "/api/v1/executions/{id}/reject",
        Some(P::ExecutionApprove),
        Execution,
        "Reject a task waiting at its approval gate: `{task, comment}`; it does not run, `finally:` does.",
        post(reject_execution)
    ),
    route!(
        "GET",
        "/api/v1/audit",
        Some(P::AuditRead),
        Anywhere,
        "Audit records in the caller's scope: ?secret, namespace, flow, execution, outcome, action, actor, since, until, limit.",
        get(list_audit)
    ),
    route!(
        "GET",
        "/api/v1/audit/checkpoint",
        Some(P::AuditRead),
        Root,
        "A signed checkpoint of the log's head (text): keep it, then `host audit verify --against FILE` proves later that nothing before it was rewritten.",
        get(audit_checkpoint)
    ),
    route!(
        "GET",
        "/api/v1/audit/verify",
        Some(P::AuditRead),
        Root,
        "Verify the whole audit chain (links, MACs, authenticated head): `{Intact: {...}}` or `{Broken: {seq, problem}}`.",
        get(verify_audit)
    ),
];

/// Request bodies other than plugins: 1 MiB.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The router: every route of [`ROUTES`] and the console's, with the
/// shared state and the security headers (`tls` adds HSTS).
pub fn router(app: AppState, tls: bool) -> axum::Router {
    let mut r = axum::Router::new();
    for route in ROUTES {
        r = r.route(route.path, (route.handler)());
    }
    r.merge(super::console::routes())
        .fallback(|uri: axum::http::Uri| async move {
            if uri.path().starts_with("/api/") {
                ApiError::NotFound("no such route: see GET /api/v1/openapi.json".into()).into_response()
            } else {
                super::console::not_found()
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(limit_headers))
        .layer(axum::middleware::from_fn_with_state(tls, super::console::security_headers))
        .with_state(app)
}

/// Largest total of a request's header names and values the API accepts.
pub const MAX_HEADER_BYTES: usize = 32 << 10;

/// Refuses a request whose headers together exceed [`MAX_HEADER_BYTES`]
/// (431) before any handler, authentication or audit sees it.
async fn limit_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let total: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if total > MAX_HEADER_BYTES {
        let error = format!("the request's headers total {total} bytes, over the limit of {MAX_HEADER_BYTES}");
        return (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Json(json!({ "error": error }))).into_response();
    }
    next.run(req).await
}

/// What a request gets instead of its answer; the body is
/// `{"error": "..."}` naming what failed.
#[derive(Debug)]
pub enum ApiError {
    /// 400: a malformed request, naming the field.
    BadRequest(String),
    /// 401: nothing more is said.
    Unauthorized,
    /// 403: the missing permission and namespace.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 413: a body larger than the route accepts.
    TooLarge(String),
    /// 429: too many failed authentications from this address.
    TooMany,
    /// 429: a namespace's quota is reached (names it).
    Quota(String),
    /// 503: the audit log cannot be written, so nothing was done.
    Unavailable(String),
    /// 500.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized".into()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::TooMany => {
                (StatusCode::TOO_MANY_REQUESTS, "too many failed authentications; wait a minute".into())
            }
            ApiError::Quota(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        let mut resp = (status, Json(json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::Staged { .. } => ApiError::Conflict(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::backend::BackendError> for ApiError {
    fn from(e: crate::backend::BackendError) -> Self {
        use crate::backend::BackendError as B;
        match e {
            B::Store(e) => e.into(),
            e @ B::NotFound { .. } => ApiError::NotFound(e.to_string()),
            e @ (B::Unsupported { .. } | B::Config { .. }) => ApiError::BadRequest(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Invalid(m) => ApiError::BadRequest(m),
            TokenError::NotFound(m) => ApiError::NotFound(m),
            TokenError::Conflict(m) => ApiError::Conflict(m),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            e @ (RegistryError::Invalid(_) | RegistryError::Plugin(_)) => ApiError::BadRequest(e.to_string()),
            e @ RegistryError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            e @ (RegistryError::Pending { .. } | RegistryError::Conflict(_)) => ApiError::Conflict(e.to_string()),
            RegistryError::Quota(m) => ApiError::TooLarge(m),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::executions::RecordError> for ApiError {
    fn from(e: crate::executions::RecordError) -> Self {
        match e {
            e @ crate::executions::RecordError::NotFound(_) => ApiError::NotFound(e.to_string()),
            crate::executions::RecordError::Quota(m) => ApiError::Quota(m),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<authz::Forbidden> for ApiError {
    fn from(e: authz::Forbidden) -> Self {
        ApiError::Forbidden(e.to_string())
    }
}

/// A refusal decided in a handler (the namespace was in the body, or the
/// item acted on is outside the caller's scope): audited like the
/// extractor's, then a 403.
fn refuse(app: &App, caller: &Caller, what: &str, ns: &Namespace, permission: Permission, message: String) -> ApiError {
    let rec = caller
        .record(Action::ApiDenied, ns, None)
        .outcome(Outcome::Denied)
        .reason(format!("{what}: {message}"))
        .detail_field("permission", permission.as_str());
    match app.record(rec) {
        Ok(()) => ApiError::Forbidden(message),
        Err(e) => audit_failed(e),
    }
}

pub(super) fn audit_failed(e: crate::audit::AuditError) -> ApiError {
    ApiError::Unavailable(format!("the audit log cannot be written, so nothing was done: {e}"))
}

/// Runs blocking work (SQLite, the audit log) off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    app: &AppState,
    f: impl FnOnce(&App) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    let root = app.dir.root().display().to_string();
    let done = tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| ApiError::Internal(format!("a handler failed: {e}")))?;
    // A failure names what failed, never where the server keeps its files.
    done.map_err(|e| match e {
        ApiError::Internal(m) => {
            tracing::error!("{m}");
            ApiError::Internal(m.replace(&root, "DATA_DIR"))
        }
        e => e,
    })
}

/// `-` in a path is the root namespace.
pub fn path_namespace(s: &str) -> Result<Namespace, ApiError> {
    if s == "-" {
        return Ok(Namespace::root());
    }
    Namespace::new(s).map_err(|e| ApiError::BadRequest(format!("path: {e} (use - for the root namespace)")))
}

/// An authenticated, authorized principal, as handlers receive it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who, with roles resolved.
    pub principal: Principal,
    /// Their token's description.
    pub info: TokenInfo,
    /// As audit records name them.
    pub actor: Actor,
    /// The console session the request came through, if not a bearer token.
    pub session: Option<Resolved>,
}

impl Caller {
    /// Whether the caller holds `p` in `ns`.
    pub fn may(&self, p: Permission, ns: &Namespace) -> bool {
        authz::decide(&self.principal, p, ns).is_ok()
    }

    fn record(&self, action: Action, ns: &Namespace, secret: Option<&SecretName>) -> NewRecord {
        NewRecord::ok(&self.actor, action, ns, secret)
    }
}

/// The address a request came from (what guessing limits count).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

fn client_ip(parts: &Parts) -> ClientIp {
    let peer = parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0.0);
    ClientIp(peer.map(|p| p.ip()).unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])))
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(client_ip(parts))
    }
}

fn route_of(parts: &Parts) -> Option<&'static Route> {
    let matched = parts.extensions.get::<MatchedPath>()?.as_str().to_owned();
    ROUTES.iter().find(|r| r.path == matched && r.method == parts.method.as_str())
}

/// Why a request did not authenticate.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Token(AuthFailure),
    Session(SessionFailure),
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Token(t) => t.as_str(),
            Refusal::Session(s) => s.as_str(),
        }
    }

    /// Whether it counts as a guess against the address's limit. A
    /// session's cookie is 256 random bits: a stale one is not a guess,
    /// and a browser sends it with every request.
    fn is_guess(self) -> bool {
        matches!(self, Refusal::Token(_))
    }
}

/// Who presents what: a bearer token, or a console session's cookie.
fn credentials(parts: &Parts, app: &App) -> Result<(TokenSecret, Option<Resolved>), Refusal> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let bearer = h.to_str().ok().and_then(|h| h.strip_prefix("Bearer "));
        return match bearer {
            Some(t) => Ok((TokenSecret::presented(t.trim()), None)),
            None => Err(Refusal::Token(AuthFailure::Malformed)),
        };
    }
    let Some(cookie) = super::console::cookie_of(&parts.headers) else {
        return Err(Refusal::Token(AuthFailure::Malformed));
    };
    let changes = !matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD);
    let csrf = parts.headers.get(super::console::CSRF_HEADER).and_then(|v| v.to_str().ok());
    let (token, session) = app.sessions.resolve(&cookie, changes, csrf).map_err(Refusal::Session)?;
    Ok((token, Some(session)))
}

/// Authenticates what a request presents for `what` (`METHOD /path`):
/// a failure counts against the address and is audited before the 401.
pub(super) async fn authenticate(
    app: &AppState,
    parts: &Parts,
    what: &str,
) -> Result<(Principal, TokenInfo, Option<Resolved>), ApiError> {
    let peer = parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0.0);
    let ClientIp(ip) = client_ip(parts);
    if app.rate_limited(ip) {
        return Err(ApiError::TooMany);
    }
    let presented = credentials(parts, app);
    let authenticated = blocking(app, move |app| {
        Ok(match presented {
            Ok((token, session)) => {
                app.tokens().authenticate(&token).map(|(p, i)| (p, i, session)).map_err(Refusal::Token)
            }
            Err(why) => Err(why),
        })
    })
    .await?;
    match authenticated {
        Ok(x) => Ok(x),
        Err(why) => {
            if why.is_guess() {
                app.auth_failed(ip);
            }
            let peer = peer.map(|p| p.to_string()).unwrap_or_default();
            let what = what.to_owned();
            blocking(app, move |app| {
                let rec = NewRecord::ok(&Actor::Server, Action::AuthFailed, &Namespace::root(), None)
                    .outcome(Outcome::Denied)
                    .reason(format!("{what}: {}", why.as_str()))
                    .detail_field("peer", peer);
                app.record(rec).map_err(audit_failed)
            })
            .await?;
            match why {
                Refusal::Session(SessionFailure::Csrf) => Err(ApiError::Forbidden(why.as_str().to_owned())),
                _ => Err(ApiError::Unauthorized),
            }
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let route = route_of(parts).ok_or_else(|| ApiError::Internal("a route is missing from ROUTES".into()))?;
        let what = format!("{} {}", route.method, route.path);
        let (principal, info, session) = authenticate(app, parts, &what).await?;
        let caller =
            Caller { actor: Actor::Token { id: info.id.clone(), name: info.name.clone() }, principal, info, session };
        let Some(permission) = route.permission else { return Ok(caller) };
        let params = RawPathParams::from_request_parts(parts, app)
            .await
            .map_err(|e| ApiError::BadRequest(format!("path: {e}")))?;
        let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_owned());
        // An execution the caller may not even read is answered as if it
        // did not exist: its id tells them nothing about other namespaces.
        let mut hidden = None;
        let decision = match route.scope {
            Scope::Public | Scope::Authenticated => Ok(()),
            Scope::Anywhere | Scope::Body => {
                if authz::holds_anywhere(&caller.principal, permission) {
                    Ok(())
                } else {
                    Err((Namespace::root(), format!("permission {permission} is required in some namespace")))
                }
            }
            Scope::Root => authz::decide(&caller.principal, permission, &Namespace::root())
                .map_err(|e| (Namespace::root(), e.to_string())),
            Scope::PathNamespace => {
                let ns = path_namespace(&param("ns").unwrap_or_default())?;
                authz::decide(&caller.principal, permission, &ns).map_err(|e| (ns, e.to_string()))
            }
            Scope::Execution => {
                if !authz::holds_anywhere(&caller.principal, permission) {
                    Err((Namespace::root(), format!("permission {permission} is required in some namespace")))
                } else {
                    let id = param("id").unwrap_or_default();
                    let id: ExecutionId = id.parse().map_err(|e| ApiError::BadRequest(format!("path: {e}")))?;
                    let shown = id.to_string();
                    let rec = blocking(app, move |app| Ok(app.records().get(id.as_str())?)).await?;
                    let ns = path_namespace(if rec.namespace.is_empty() { "-" } else { &rec.namespace })?;
                    if !caller.may(P::ExecutionRead, &ns) {
                        hidden = Some(crate::executions::RecordError::NotFound(shown).to_string());
                    }
                    authz::decide(&caller.principal, permission, &ns).map_err(|e| (ns, e.to_string()))
                }
            }
        };
        match decision {
            Ok(()) => Ok(caller),
            Err((ns, message)) => {
                let rec = caller
                    .record(Action::ApiDenied, &ns, None)
                    .outcome(Outcome::Denied)
                    .reason(format!("{what}: {message}"))
                    .detail_field("permission", permission.as_str());
                blocking(app, move |app| app.record(rec).map_err(audit_failed)).await?;
                Err(match hidden {
                    Some(not_found) => ApiError::NotFound(not_found),
                    None => ApiError::Forbidden(message),
                })
            }
        }
    }
}

/// A JSON body, with a 400 that names what is wrong in it.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(format!("the request body is over the limit of {MAX_BODY_BYTES} bytes"))
            } else {
                ApiError::BadRequest(format!("request body: {e}"))
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let at = if path == "." { String::new() } else { format!(" at field `{path}`") };
            ApiError::BadRequest(format!("request body{at}: {inner}"))
        })?;
        // One JSON document and nothing after it: `{...} junk` is refused.
        de.end()
            .map_err(|e| ApiError::BadRequest(format!("request body: {e}: one JSON document and nothing after it")))?;
        Ok(Body(value))
    }
}

// ---- handlers -------------------------------------------------------------

async fn health(State(app): State<AppState>) -> Json<Value> {
    let stopping = app.stopping.load(std::sync::atomic::Ordering::SeqCst);
    Json(json!({ "status": if stopping { "stopping" } else { "ok" } }))
}

/// The OpenAPI document, generated from [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut responses = Map::new();
        responses
            .insert("200".into(), json!({"description": "success (201/202 where something was created or queued)"}));
        responses.insert("400".into(), json!({"description": "malformed request: the error names the field"}));
        if r.scope != Scope::Public {
            responses.insert("401".into(), json!({"description": "no valid token"}));
        }
        if r.permission.is_some() {
            responses
                .insert("403".into(), json!({"description": "the error names the missing permission and namespace"}));
        }
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{} {}", r.method, r.path),
            "parameters": params,
            "responses": responses,
        });
        if r.scope == Scope::Public {
            op["security"] = json!([]);
        }
        if let Some(p) = r.permission {
            op["x-keyhole-permission"] = json!(p.as_str());
            let scope = match r.scope {
                Scope::PathNamespace => "the namespace in the path ({ns}; - is the root)",
                Scope::Execution => "the execution's namespace",
                Scope::Anywhere => "each item's namespace",
                Scope::Body => "the namespace the request body names",
                Scope::Root => "the root namespace",
                Scope::Public | Scope::Authenticated => "",
            };
            op["x-keyhole-scope"] = json!(scope);
        }
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "keyhole", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Every route but health and this document needs `Authorization: Bearer TOKEN`. No route returns a secret value."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    })
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

async fn token_self(caller: Caller) -> Json<TokenInfo> {
    Json(caller.info)
}

fn may_manage(caller: &Caller, t: &TokenInfo) -> bool {
    t.bindings.iter().all(|b| caller.may(P::TokenManage, &b.namespace))
}

async fn list_tokens(State(app): State<AppState>, caller: Caller) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let all = blocking(&app, |app| Ok(app.tokens().list()?)).await?;
    Ok(Json(all.into_iter().filter(|t| may_manage(&caller, t)).collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: String,
    #[serde(default)]
    namespace: Namespace,
    ttl: Option<String>,
}

async fn create_token(
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

async fn revoke_token(
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

async fn list_roles(State(app): State<AppState>, _caller: Caller) -> Result<Json<Vec<authz::Role>>, ApiError> {
    Ok(Json(blocking(&app, |app| Ok(app.tokens().roles()?)).await?))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct SecretQuery {
    namespace: Option<Namespace>,
}

async fn list_secrets(
    State(app): State<AppState>,
    caller: Caller,
    Query(q): Query<SecretQuery>,
) -> Result<Json<Value>, ApiError> {
    blocking(&app, move |app| {
        let mut list = app.secrets.local().store().list(q.namespace.as_ref(), None)?;
        let mut unavailable = Vec::new();
        for (ns, b) in app.secrets.remote() {
            if q.namespace.as_ref().is_some_and(|n| n != ns) || !caller.may(P::SecretList, ns) {
                continue;
            }
            match b.list(ns) {
                Ok(remote) => list.extend(remote),
                Err(e) => unavailable.push(json!({"namespace": ns, "error": e.to_string()})),
            }
        }
        list.retain(|s| Namespace::new(&s.namespace).is_ok_and(|ns| caller.may(P::SecretList, &ns)));
        list.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(Json(json!({ "secrets": list, "unavailable": unavailable })))
    })
    .await
}

fn secret_name(s: &str) -> Result<SecretName, ApiError> {
    SecretName::new(s).map_err(|e| ApiError::BadRequest(format!("path: {e}")))
}

async fn describe_secret(
    State(app): State<AppState>,
    _caller: Caller,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (ns, name) = (path_namespace(&ns)?, secret_name(&name)?);
    blocking(&app, move |app| {
        let backend = app.secrets.backend_for(&ns);
        let info = backend
            .info(&ns, &name)?
            .ok_or_else(|| ApiError::NotFound(format!("no secret {name} in namespace {ns}")))?;
        let versions = backend.versions(&ns, &name)?;
        let staged = match backend.kind() {
            crate::backend::BackendKind::Local => app.secrets.local().store().staged(&ns, &name)?,
            _ => None,
        };
        let path = app.dir.store_path();
        let internal = |e: crate::audit::AuditError| ApiError::Internal(e.to_string());
        let conn = app.audit_reads();
        let last_read = crate::audit::last_read(&conn, &path, &ns, &name).map_err(internal)?;
        Ok(Json(json!({
            "backend": backend.describe(),
            "secret": info,
            "versions": versions,
            "staged": staged,
            "last_read": last_read,
        })))
    })
    .await
}

/// A value the server makes, so that no client ever holds it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Generate {
    length: usize,
    #[serde(default = "alnum")]
    charset: crate::secret::Charset,
}

fn alnum() -> crate::secret::Charset {
    crate::secret::Charset::Alnum
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecret {
    /// The value; or `generate`.
    value: Option<SecretValue>,
    /// Generate a random value instead (the answer never holds it).
    generate: Option<Generate>,
    #[serde(default)]
    rotate: bool,
    expires_in: Option<String>,
    keep: Option<u32>,
    /// Bind it to these destinations in the same change (never a moment
    /// where the new value is unbound).
    destinations: Option<Vec<String>>,
    /// Stage it instead of making it current (`rotate` implied).
    #[serde(default)]
    staged: bool,
}

/// `scheme://host[:port]` entries of a request body, each error naming its index.
fn parse_destinations(list: &[String]) -> Result<Vec<crate::network::AllowEntry>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            d.parse::<crate::network::AllowEntry>()
                .map_err(|e| ApiError::BadRequest(format!("request body at field `destinations[{i}]`: {e}")))
        })
        .collect()
}

async fn put_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
    Body(req): Body<PutSecret>,
) -> Result<Json<Value>, ApiError> {
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
            let version = app.secrets.stage(&caller.actor, &ns, &name, &value, expires_at)?;
            return Ok(Json(
                json!({ "namespace": ns, "name": name.as_str(), "version": version.to_string(), "staged": true }),
            ));
        }
        let opts = SetOptions { expires_at, keep: req.keep, rotate: req.rotate, destinations };
        // The router audits the change (fail closed) with the caller as actor.
        let version = app.secrets.set(&caller.actor, &ns, &name, &value, &opts)?;
        Ok(Json(json!({ "namespace": ns, "name": name.as_str(), "version": version.to_string() })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindSecret {
    destinations: Vec<String>,
}

async fn bind_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
    Body(req): Body<BindSecret>,
) -> Result<Json<Value>, ApiError> {
    let (ns, name) = (path_namespace(&ns)?, secret_name(&name)?);
    let destinations = parse_destinations(&req.destinations)?;
    blocking(&app, move |app| {
        // The router audits the change (fail closed) with the caller as actor.
        app.secrets.bind(&caller.actor, &ns, &name, &destinations)?;
        let list: Vec<String> = destinations.iter().map(ToString::to_string).collect();
        Ok(Json(json!({ "namespace": ns, "name": name.as_str(), "destinations": list })))
    })
    .await
}

async fn commit_staged(
    State(app): State<AppState>,
    caller: Caller,
    Path(at): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    resolve_staged(app, caller, at, true).await
}

async fn discard_staged(
    State(app): State<AppState>,
    caller: Caller,
    Path(at): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    resolve_staged(app, caller, at, false).await
}

/// Commits (or discards) the staged version of `ns`/`name`.
async fn resolve_staged(
    app: AppState,
    caller: Caller,
    (ns, name): (String, String),
    commit: bool,
) -> Result<Json<Value>, ApiError> {
    let (ns, name) = (path_namespace(&ns)?, secret_name(&name)?);
    blocking(&app, move |app| {
        let (version, done) = if commit {
            (app.secrets.commit_staged(&caller.actor, &ns, &name)?, "committed")
        } else {
            (app.secrets.discard_staged(&caller.actor, &ns, &name)?, "discarded")
        };
        Ok(Json(json!({ "namespace": ns, "name": name.as_str(), "version": version.to_string(), done: true })))
    })
    .await
}

async fn revoke_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (ns, name) = (path_namespace(&ns)?, secret_name(&name)?);
    blocking(&app, move |app| {
        let done = app.secrets.revoke(&caller.actor, &ns, &name)?;
        Ok(Json(json!({ "revoked": name.as_str(), "namespace": ns, "done": done })))
    })
    .await
}

async fn destroy_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (ns, name) = (path_namespace(&ns)?, secret_name(&name)?);
    blocking(&app, move |app| {
        let done = app.secrets.destroy(&caller.actor, &ns, &name)?;
        Ok(Json(json!({ "destroyed": name.as_str(), "namespace": ns, "done": done })))
    })
    .await
}

/// Which namespace's flows an uploaded plugin is for (its quota).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginQuery {
    namespace: Namespace,
}

async fn put_plugin(
    State(app): State<AppState>,
    caller: Caller,
    Path(sha): Path<String>,
    query: Result<Query<PluginQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !is_sha256(&sha) {
        return Err(ApiError::BadRequest(format!("path: {sha:?} is not a SHA-256 (64 lowercase hex digits)")));
    }
    let Ok(Query(PluginQuery { namespace: ns })) = query else {
        return Err(ApiError::BadRequest(
            "query `namespace`: the namespace of the flow the plugin is for (?namespace=NS; - for the root)".into(),
        ));
    };
    blocking(&app, move |app| {
        if let Err(e) = authz::decide(&caller.principal, P::FlowDeploy, &ns) {
            let what = format!("PUT /api/v1/plugins/{sha}");
            return Err(refuse(app, &caller, &what, &e.namespace, e.permission, e.to_string()));
        }
        let actual = hex::encode(crate::crypto::sha256(&body));
        if actual != sha {
            return Err(ApiError::BadRequest(format!(
                "the body's SHA-256 is {actual}, not {sha}: the upload is corrupt"
            )));
        }
        if !crate::registry::is_wasm(&body) {
            return Err(ApiError::BadRequest(
                "the upload is not a WebAssembly module or component: nothing was stored".into(),
            ));
        }
        let rec = caller
            .record(Action::FlowDeploy, &ns, None)
            .reason(format!("plugin {sha} uploaded for namespace {ns} ({} bytes)", body.len()))
            .detail_field("plugin_sha256", sha.clone());
        app.record(rec).map_err(audit_failed)?;
        let stored = app.registry().put_plugin(&body, &ns, Some(app.max_plugin_bytes))?;
        let status = if stored.new { StatusCode::CREATED } else { StatusCode::OK };
        Ok((status, Json(json!({ "sha256": sha, "stored": stored.new }))))
    })
    .await
}

fn flow_namespace_ok(caller: &Caller, ns: &Namespace) -> bool {
    caller.may(P::FlowRead, ns)
}

async fn list_flows(State(app): State<AppState>, caller: Caller) -> Result<Json<Vec<Deployed>>, ApiError> {
    let all = blocking(&app, |app| Ok(app.registry().list()?)).await?;
    Ok(Json(all.into_iter().filter(|d| flow_namespace_ok(&caller, &d.namespace)).collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    file: String,
    source: String,
    plugins: BTreeMap<String, String>,
}

impl Caller {
    /// The caller as a voucher for what a flow's tasks receive.
    pub fn voucher(&self) -> crate::vouch::Voucher {
        crate::vouch::Voucher { actor: self.actor.clone(), principal: Some(self.principal.clone()) }
    }
}

async fn deploy_flow(
    State(app): State<AppState>,
    caller: Caller,
    Body(req): Body<DeployRequest>,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    blocking(&app, move |app| {
        let req = crate::service::flows::DeployRequest { file: &req.file, source: &req.source, plugins: &req.plugins };
        let d = crate::service::flows::deploy(&app.registry(), &app.secrets, &caller.voucher(), req)?;
        Ok((StatusCode::CREATED, Json(d)))
    })
    .await
}

impl From<crate::service::ServiceError> for ApiError {
    fn from(e: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError as S;
        match e {
            S::Forbidden(m) => ApiError::Forbidden(m),
            S::Invalid(m) => ApiError::BadRequest(m),
            S::Diagnostics(d) => ApiError::BadRequest(d.to_string()),
            S::NotFound(m) => ApiError::NotFound(m),
            S::Conflict(m) => ApiError::Conflict(m),
            e @ S::AuditFailed(_) => ApiError::Unavailable(e.to_string()),
            S::Backend(e) => e.into(),
            S::Quota(m) => ApiError::TooLarge(m),
            e @ (S::Tampered(_) | S::Host(_)) => ApiError::Internal(e.to_string()),
        }
    }
}

/// A decision on a flow revision.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ReviewRequest {
    comment: Option<String>,
}

async fn approve_revision(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, flow, revision)): Path<(String, String, u64)>,
    Body(req): Body<ReviewRequest>,
) -> Result<Json<Deployed>, ApiError> {
    review_revision(app, caller, (ns, flow, revision), req, crate::registry::Decision::Approved).await
}

async fn reject_revision(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, flow, revision)): Path<(String, String, u64)>,
    Body(req): Body<ReviewRequest>,
) -> Result<Json<Deployed>, ApiError> {
    review_revision(app, caller, (ns, flow, revision), req, crate::registry::Decision::Rejected).await
}

async fn review_revision(
    app: AppState,
    caller: Caller,
    (ns, flow, revision): (String, String, u64),
    req: ReviewRequest,
    decision: crate::registry::Decision,
) -> Result<Json<Deployed>, ApiError> {
    let ns = path_namespace(&ns)?;
    blocking(&app, move |app| {
        let who = caller.voucher();
        let reg = app.registry();
        let req = crate::service::flows::ReviewRequest {
            namespace: &ns,
            flow: &flow,
            revision,
            decision,
            comment: req.comment,
        };
        let d = crate::service::flows::review(&reg, &app.secrets, &who, req)?;
        Ok(Json(d))
    })
    .await
}

async fn list_protections(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<crate::registry::Protection>>, ApiError> {
    let all = blocking(&app, |app| Ok(app.registry().protections()?)).await?;
    Ok(Json(all.into_iter().filter(|p| caller.may(P::FlowRead, &p.namespace)).collect()))
}

async fn set_protection(
    app: AppState,
    caller: Caller,
    ns: &str,
    name: Option<&str>,
    on: bool,
) -> Result<Json<Value>, ApiError> {
    let ns = path_namespace(ns)?;
    let name = name.map(secret_name).transpose()?;
    blocking(&app, move |app| {
        let changed = crate::service::flows::protect(&app.registry(), &caller.voucher(), &ns, name.as_ref(), on)?;
        Ok(Json(json!({ "namespace": ns, "secret": name, "protected": on, "changed": changed })))
    })
    .await
}

async fn protect_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    set_protection(app, caller, &ns, Some(&name), true).await
}

async fn unprotect_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    set_protection(app, caller, &ns, Some(&name), false).await
}

async fn protect_namespace(
    State(app): State<AppState>,
    caller: Caller,
    Path(ns): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_protection(app, caller, &ns, None, true).await
}

async fn unprotect_namespace(
    State(app): State<AppState>,
    caller: Caller,
    Path(ns): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_protection(app, caller, &ns, None, false).await
}

async fn show_flow(
    State(app): State<AppState>,
    _caller: Caller,
    Path((ns, flow)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let ns = path_namespace(&ns)?;
    blocking(&app, move |app| {
        let (deployed, flow, pending) = app.registry().shown(&ns, &flow)?;
        let mut doc = serde_json::to_value(&deployed).map_err(|e| ApiError::Internal(e.to_string()))?;
        doc["pending"] = json!(pending);
        doc["inputs"] = serde_json::to_value(&flow.inputs).unwrap_or_default();
        doc["tasks"] = flow_tasks(&flow);
        doc["triggers"] = flow_triggers(&flow, jiff::Timestamp::now());
        Ok(Json(doc))
    })
    .await
}

/// Each task's grants as the console shows them: what it may read, rotate,
/// call, and whether it waits for approval.
fn flow_tasks(flow: &crate::flow::Flow) -> Value {
    use crate::flow::Phase;
    let names = |g: &crate::policy::Grants| g.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>();
    flow.tasks
        .iter()
        .map(|t| {
            json!({
                "id": t.id.as_str(),
                "phase": match t.phase { Phase::Main => "tasks", Phase::Errors => "errors", Phase::Finally => "finally" },
                "secrets": names(&t.grants),
                "rotate": names(&t.rotate),
                "network": t.network.allow.entries().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "approval": t.approval.as_ref().map(|a| a.permission.as_str()),
                "for_each": t.for_each.is_some(),
                "allow_failure": t.allow_failure,
            })
        })
        .collect()
}

/// Each trigger and, for a schedule, its next firing after `now`.
fn flow_triggers(flow: &crate::flow::Flow, now: jiff::Timestamp) -> Value {
    use crate::trigger::{TriggerKind, WebhookAuth};
    flow.triggers
        .iter()
        .map(|t| match &t.kind {
            TriggerKind::Schedule(s) => json!({
                "id": t.id.as_str(),
                "kind": "schedule",
                "cron": s.pattern,
                "timezone": s.timezone,
                "next": s.next_after(now).map(|n| n.to_string()),
            }),
            TriggerKind::Webhook(w) => json!({
                "id": t.id.as_str(),
                "kind": "webhook",
                "auth": match &w.auth {
                    WebhookAuth::Key(name) => format!("key in secret {name}"),
                    WebhookAuth::Signature { header, secret } => format!("HMAC-SHA256 in {header}, key in secret {secret}"),
                },
            }),
        })
        .collect()
}

async fn flow_revisions(
    State(app): State<AppState>,
    _caller: Caller,
    Path((ns, flow)): Path<(String, String)>,
) -> Result<Json<Vec<Deployed>>, ApiError> {
    let ns = path_namespace(&ns)?;
    blocking(&app, move |app| Ok(Json(app.registry().revisions(&ns, &flow)?))).await
}

async fn remove_flow(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, flow)): Path<(String, String)>,
) -> Result<Json<Deployed>, ApiError> {
    let ns = path_namespace(&ns)?;
    blocking(&app, move |app| Ok(Json(crate::service::flows::remove(&app.registry(), &caller.voucher(), &ns, &flow)?)))
        .await
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct CreateQuery {
    /// Wait up to this many seconds for the execution to end.
    wait: Option<f64>,
}

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
        status: "queued".into(),
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
/// returns the record and whether it is new. Audited before it is queued.
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
    app.record(rec.clone()).map_err(audit_failed)?;
    let queued = app.records().enqueue(&record, &inputs, &origin.context, key, flow.concurrency);
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

async fn create_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path((ns, flow)): Path<(String, String)>,
    Query(q): Query<CreateQuery>,
    headers: HeaderMap,
    Body(inputs): Body<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    let (mut rec, created) = blocking(&app, move |app| queue_execution(app, &origin, &ns, &flow, &inputs)).await?;
    let wait = q.wait.filter(|w| w.is_finite() && *w > 0.0).map(|w| Duration::from_secs_f64(w.min(300.0)));
    if let Some(wait) = wait {
        let id = rec.id.clone();
        let deadline = tokio::time::Instant::now() + wait;
        let waker = app.waiter(&id);
        loop {
            // Listening before reading: an end between the two still wakes us.
            let woken = waker.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let id = id.clone();
            rec = blocking(&app, move |app| Ok(app.records().get(&id)?)).await?;
            if ENDED.contains(&rec.status.as_str()) || tokio::time::timeout_at(deadline, woken).await.is_err() {
                break;
            }
        }
        app.stop_waiting(&id, waker);
    }
    let status = if ENDED.contains(&rec.status.as_str()) { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(json!({ "id": rec.id, "status": rec.status, "created": created, "execution": rec }))))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ExecutionQuery {
    namespace: Option<Namespace>,
    flow: Option<String>,
    status: Option<String>,
    /// Started at or after (RFC 3339).
    since: Option<String>,
    /// Started before (RFC 3339).
    until: Option<String>,
    limit: Option<u64>,
}

/// A query's time, in the stored form (UTC, milliseconds) so that it
/// compares as text.
fn rfc3339(field: &str, t: &str) -> Result<String, ApiError> {
    let at = humantime::parse_rfc3339_weak(t).map_err(|e| {
        ApiError::BadRequest(format!("query `{field}`: {t:?} is not an RFC 3339 time like 2026-12-01T09:00:00Z: {e}"))
    })?;
    Ok(humantime::format_rfc3339_millis(at).to_string())
}

async fn list_executions(
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
    Ok(Json(
        list.into_iter()
            .filter(|r| Namespace::new(&r.namespace).is_ok_and(|ns| caller.may(P::ExecutionRead, &ns)))
            .collect(),
    ))
}

async fn get_execution(
    State(app): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ExecutionRecord>, ApiError> {
    blocking(&app, move |app| Ok(Json(app.records().get(&id)?))).await
}

async fn execution_log(
    State(app): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<String, ApiError> {
    blocking(&app, move |app| Ok(app.records().log(&id)?)).await
}

/// The trust-boundary records of one execution.
async fn execution_access(
    State(app): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(&app, move |app| {
        let path = app.dir.store_path();
        let internal = |e: crate::audit::AuditError| ApiError::Internal(e.to_string());
        let conn = app.audit_reads();
        let filter = crate::audit::Filter { execution: Some(id.clone()), ..Default::default() };
        let records = crate::audit::list(&conn, &path, &filter).map_err(internal)?;
        let detail = |r: &crate::audit::Record, k: &str| {
            r.detail.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()).and_then(|d| d.get(k).cloned())
        };
        let mut secrets = Vec::new();
        let mut requests = Vec::new();
        for r in &records {
            match r.action.as_str() {
                "secret.read" | "secret.lease" | "secret.stage" | "secret.commit" | "secret.discard" => {
                    secrets.push(json!({
                        "time": r.time, "task": r.task, "action": r.action, "secret": r.secret,
                        "version": r.version, "fingerprint": r.value_hmac, "outcome": r.outcome,
                    }))
                }
                // `pending` precedes each request's `sent` or `failed`.
                "http.request" if r.outcome != "pending" => requests.push(json!({
                    "time": r.time, "task": r.task, "method": detail(r, "method"),
                    "destination": detail(r, "destination"), "path": detail(r, "path"),
                    "outcome": r.outcome, "reason": r.reason,
                })),
                _ => {}
            }
        }
        Ok(Json(json!({ "execution": id, "secrets": secrets, "requests": requests })))
    })
    .await
}

async fn cancel_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(&app, move |app| {
        let rec = app.records().get(&id)?;
        let ns = Namespace::new(&rec.namespace).unwrap_or_default();
        let record = |outcome: Outcome, what: String| {
            let rec = caller
                .record(Action::ExecutionCancel, &ns, None)
                .outcome(outcome)
                .reason(format!("execution {id} of flow {}: {what}", rec.flow))
                .detail_field("execution", id.clone());
            app.record(rec).map_err(audit_failed)
        };
        let already =
            |status: &str| ApiError::Conflict(format!("execution {id} already ended ({status}): nothing to cancel"));
        if ENDED.contains(&rec.status.as_str()) {
            record(Outcome::Failed, format!("not cancelled: it had already ended ({})", rec.status))?;
            return Err(already(&rec.status));
        }
        // Recorded before it is asked (no record, no cancel), then what it did.
        record(Outcome::Pending, format!("about to cancel it ({})", rec.status))?;
        let outcome = app.records().request_cancel(&id, &now_rfc3339())?;
        if outcome == CancelOutcome::Stopping
            && let Some(r) = app.running.lock().unwrap_or_else(|p| p.into_inner()).get(&id)
        {
            r.cancel.cancel();
        }
        let status = match outcome {
            CancelOutcome::Dequeued => "cancelled",
            CancelOutcome::Stopping => "cancelling",
            CancelOutcome::AlreadyEnded => {
                let now = app.records().get(&id)?.status;
                record(Outcome::Failed, format!("not cancelled: it ended first ({now})"))?;
                return Err(already(&now));
            }
        };
        record(Outcome::Ok, format!("{status} (it was {})", rec.status))?;
        if outcome == CancelOutcome::Dequeued {
            app.ended(&id);
        }
        Ok(Json(json!({ "id": id, "status": status, "cancelled": true })))
    })
    .await
}

/// A decision at an approval gate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideRequest {
    task: String,
    #[serde(default)]
    comment: Option<String>,
}

async fn approve_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<DecideRequest>,
) -> Result<Json<Value>, ApiError> {
    decide(app, caller, id, req, true).await
}

async fn reject_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<DecideRequest>,
) -> Result<Json<Value>, ApiError> {
    decide(app, caller, id, req, false).await
}

async fn decide(
    app: AppState,
    caller: Caller,
    id: String,
    req: DecideRequest,
    approved: bool,
) -> Result<Json<Value>, ApiError> {
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
        Ok(Json(json!({ "id": id, "task": req.task, "decision": if approved { "approved" } else { "rejected" } })))
    })
    .await
}

async fn list_audit(
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

async fn audit_checkpoint(State(app): State<AppState>, _caller: Caller) -> Result<Response, ApiError> {
    blocking(&app, move |app| {
        let path = app.dir.store_path();
        let internal = |e: crate::audit::AuditError| ApiError::Internal(e.to_string());
        let conn = crate::audit::open(&path, false).map_err(internal)?;
        let key = app.secrets.local().store().integrity().clone();
        let note = crate::audit::checkpoint_note(&conn, &path, &key).map_err(|e| ApiError::Conflict(e.to_string()))?;
        Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
    })
    .await
}

async fn verify_audit(State(app): State<AppState>, _caller: Caller) -> Result<Json<crate::audit::Verdict>, ApiError> {
    blocking(&app, move |app| {
        let path = app.dir.store_path();
        let internal = |e: crate::audit::AuditError| ApiError::Internal(e.to_string());
        let conn = crate::audit::open(&path, false).map_err(internal)?;
        let key = app.secrets.local().store().integrity().clone();
        Ok(Json(crate::audit::verify(&conn, &path, &key).map_err(internal)?))
    })
    .await
}
