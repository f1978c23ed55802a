//! What every request passes before a handler: the route it matched, the
//! [`Caller`] (rate limit, authentication, then the route's permission in
//! its namespace: 429, 401 or 403, each audited), a JSON [`Body`] with
//! errors naming the field, the client's address, path and query parsing,
//! and [`blocking`], which runs a handler's store work off the async threads.
//!
//! Invariant: a handler runs only after [`Caller`] allowed the route's
//! permission (or, for routes that list across namespaces, the handler keeps
//! only the items the caller may see).

use super::error::ApiError;
use super::listen::Peer;
use super::sessions::{CSRF_HEADER, Resolved, SessionFailure, cookie_of};
use super::{App, AppState};

/// Request bodies other than plugins: 1 MiB.
pub const MAX_BODY_BYTES: usize = 1 << 20;

use crate::audit::Actor;
use crate::authz::{self, Permission, Permission as P, Principal};
use crate::names::{ExecutionId, Namespace, SecretName};
use crate::tokens::{AuthFailure, TokenInfo, TokenSecret};
use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use axum::http::{StatusCode, request::Parts};
use axum::routing::MethodRouter;

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
    /// The schema of its JSON request body, if it takes one
    /// ([`crate::service::bodies`]).
    pub body: Option<fn(&mut schemars::SchemaGenerator) -> schemars::Schema>,
    /// The schema of its JSON answer, where one is declared.
    pub answer: Option<fn(&mut schemars::SchemaGenerator) -> schemars::Schema>,
    pub(crate) handler: fn() -> MethodRouter<AppState>,
}

/// Runs blocking work (SQLite, the audit log) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
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
}

impl Caller {
    /// The caller as a voucher for what a flow's tasks receive.
    pub fn voucher(&self) -> crate::vouch::Voucher {
        crate::vouch::Voucher { actor: self.actor.clone(), principal: Some(self.principal.clone()) }
    }
}

/// The address a request came from (what guessing limits count).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

pub(crate) fn client_ip(parts: &Parts) -> ClientIp {
    let peer = parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0.0);
    ClientIp(peer.map(|p| p.ip()).unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])))
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(client_ip(parts))
    }
}

pub(crate) fn route_of(parts: &Parts) -> Option<&'static Route> {
    // Put there by the router, route by route (`api::router`).
    parts.extensions.get::<&'static Route>().copied()
}

/// Why a request did not authenticate.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
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
pub(crate) fn credentials(parts: &Parts, app: &App) -> Result<(TokenSecret, Option<Resolved>), Refusal> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let bearer = h.to_str().ok().and_then(|h| h.strip_prefix("Bearer "));
        return match bearer {
            Some(t) => Ok((TokenSecret::presented(t.trim()), None)),
            None => Err(Refusal::Token(AuthFailure::Malformed)),
        };
    }
    let Some(cookie) = cookie_of(&parts.headers) else {
        return Err(Refusal::Token(AuthFailure::Malformed));
    };
    let changes = !matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD);
    let csrf = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    let (token, session) = app.sessions.resolve(&cookie, changes, csrf).map_err(Refusal::Session)?;
    Ok((token, Some(session)))
}

/// Authenticates what a request presents for `what` (`METHOD /path`):
/// a failure counts against the address and is audited before the 401.
pub(crate) async fn authenticate(
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
                Ok(crate::service::access::authentication_failed(&app.state, &what, why.as_str(), &peer)?)
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
                    let ns = rec.namespace;
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
                let (actor, what, shown) = (caller.actor.clone(), what.to_owned(), message.clone());
                blocking(app, move |app| {
                    Ok(crate::service::access::route_denied(&app.state, &actor, &ns, &what, permission, &shown)?)
                })
                .await?;
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

pub(crate) fn secret_name(s: &str) -> Result<SecretName, ApiError> {
    SecretName::new(s).map_err(|e| ApiError::BadRequest(format!("path: {e}")))
}

/// A query's time, in the stored form (UTC, milliseconds) so that it
/// compares as text.
pub(crate) fn rfc3339(field: &str, t: &str) -> Result<String, ApiError> {
    let at = humantime::parse_rfc3339_weak(t).map_err(|e| {
        ApiError::BadRequest(format!("query `{field}`: {t:?} is not an RFC 3339 time like 2026-12-01T09:00:00Z: {e}"))
    })?;
    Ok(humantime::format_rfc3339_millis(at).to_string())
}
