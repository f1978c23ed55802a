//! The HTTP API under `/api/v1`: one table of routes ([`ROUTES`]) from which
//! the router, the authorization of every request (each route's entry rides
//! in its requests' extensions to [`Caller`]), the OpenAPI document and the
//! tests' authorization matrix are all built. The handlers live in
//! [`super::handlers`], one module per area.
//!
//! Invariant: every route is in [`ROUTES`] and passes [`Caller`]; no handler
//! returns a secret value.

use super::AppState;
use super::error::ApiError;
pub use super::extract::{Caller, MAX_BODY_BYTES, Route, Scope};
use super::handlers::{audit::*, executions::*, flows::*, secrets::*, tokens::*};
use crate::authz::Permission as P;
use crate::service::bodies;
use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde_json::{Map, Value, json};

macro_rules! route {
    ($method:literal, $path:literal, $perm:expr, $scope:ident, $summary:literal, $h:expr
     $(, body: $body:ty)? $(, answer: $answer:ty)? $(,)?) => {
        Route {
            method: $method,
            path: $path,
            permission: $perm,
            scope: Scope::$scope,
            summary: $summary,
            body: route!(@schema $($body)?),
            answer: route!(@schema $($answer)?),
            handler: || $h,
        }
    };
    (@schema) => {
        None
    };
    (@schema $t:ty) => {
        Some(|g| g.subschema_for::<$t>())
    };
}

/// Every route of the API.
pub static ROUTES: &[Route] = &[
    route!("GET", "/api/v1/health", None, Public, "Liveness: ok, or stopping.", get(health), answer: bodies::Health),
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
        post(create_token),
        body: bodies::NewToken,
        answer: bodies::IssuedToken
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
        put(put_secret),
        body: bodies::PutSecret<crate::secret::SecretValue>,
        answer: bodies::SecretWritten
    ),
    route!(
        "PUT",
        "/api/v1/secrets/{ns}/{name}/destinations",
        Some(P::SecretWrite),
        PathNamespace,
        "Bind a secret to destinations (`{destinations: [\"https://host[:port]\"]}`; empty unbinds): tasks get a placeholder, the value goes only there.",
        put(bind_secret),
        body: bodies::BindSecret,
        answer: bodies::SecretBound
    ),
    route!(
        "POST",
        "/api/v1/secrets/{ns}/{name}/commit",
        Some(P::SecretWrite),
        PathNamespace,
        "Make the staged version current (a rotation the service accepted).",
        post(commit_staged),
        answer: bodies::SecretWritten
    ),
    route!(
        "POST",
        "/api/v1/secrets/{ns}/{name}/discard",
        Some(P::SecretWrite),
        PathNamespace,
        "Erase the staged version (a rotation the service did not accept).",
        post(discard_staged),
        answer: bodies::SecretWritten
    ),
    route!(
        "POST",
        "/api/v1/secrets/{ns}/{name}/revoke",
        Some(P::SecretRevoke),
        PathNamespace,
        "Revoke a secret: reads are refused.",
        post(revoke_secret),
        answer: bodies::SecretEnded
    ),
    route!(
        "DELETE",
        "/api/v1/secrets/{ns}/{name}",
        Some(P::SecretDestroy),
        PathNamespace,
        "Destroy a secret (crypto-erase every version).",
        delete(destroy_secret),
        answer: bodies::SecretEnded
    ),
    route!(
        "PUT",
        "/api/v1/plugins/{sha256}",
        Some(P::FlowDeploy),
        Body,
        "Upload a plugin (the body: a WebAssembly module or component), stored by its SHA-256, for ?namespace=NS (flow:deploy there; counted against its plugin quota).",
        put(put_plugin).layer(DefaultBodyLimit::max(crate::runtime::MAX_PLUGIN_BYTES)),
        answer: bodies::PluginStored
    ),
    route!("GET", "/api/v1/flows", Some(P::FlowRead), Anywhere, "Deployed flows the caller may read.", get(list_flows)),
    route!(
        "POST",
        "/api/v1/flows",
        Some(P::FlowDeploy),
        Body,
        "Deploy a flow: {file, source, plugins: {task: sha256}}.",
        post(deploy_flow),
        body: bodies::Deploy
    ),
    route!(
        "GET",
        "/api/v1/flows/{ns}/{flow}",
        Some(P::FlowRead),
        PathNamespace,
        "A deployed flow's current revision.",
        get(show_flow),
        answer: bodies::FlowShown
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
        post(approve_revision),
        body: bodies::Review
    ),
    route!(
        "POST",
        "/api/v1/flows/{ns}/{flow}/revisions/{revision}/reject",
        Some(P::SecretUse),
        PathNamespace,
        "Reject a revision pending review (`{comment}`): it never runs; the revision before it keeps serving.",
        post(reject_revision),
        body: bodies::Review
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
        put(protect_secret),
        answer: bodies::ProtectionChanged
    ),
    route!(
        "DELETE",
        "/api/v1/secrets/{ns}/{name}/protection",
        Some(P::SecretWrite),
        PathNamespace,
        "Unprotect a secret.",
        delete(unprotect_secret),
        answer: bodies::ProtectionChanged
    ),
    route!(
        "PUT",
        "/api/v1/namespaces/{ns}/protection",
        Some(P::SecretWrite),
        PathNamespace,
        "Protect every secret of a namespace and those below it.",
        put(protect_namespace),
        answer: bodies::ProtectionChanged
    ),
    route!(
        "DELETE",
        "/api/v1/namespaces/{ns}/protection",
        Some(P::SecretWrite),
        PathNamespace,
        "Unprotect a namespace.",
        delete(unprotect_namespace),
        answer: bodies::ProtectionChanged
    ),
    route!(
        "POST",
        "/api/v1/executions/{ns}/{flow}",
        Some(P::ExecutionCreate),
        PathNamespace,
        "Queue an execution; the body is its inputs. Idempotency-Key header; ?wait=SECONDS.",
        post(create_execution),
        body: serde_json::Map<String, serde_json::Value>,
        answer: bodies::Queued
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
        get(execution_access),
        answer: bodies::ExecutionAccess
    ),
    route!(
        "POST",
        "/api/v1/executions/{id}/cancel",
        Some(P::ExecutionCancel),
        Execution,
        "Cancel: a queued execution never runs, a running one is interrupted.",
        post(cancel_execution),
        answer: bodies::CancelAnswer
    ),
    route!(
        "POST",
        "/api/v1/executions/{id}/approve",
        Some(P::ExecutionApprove),
        Execution,
        "Approve a task waiting at its approval gate: `{task, comment}` (the gate's permission at the execution's namespace; not its starter with distinct_from_trigger).",
        post(approve_execution),
        body: bodies::Decide,
        answer: bodies::Decided
    ),
    route!(
        "POST",
        "/api/v1/executions/{id}/reject",
        Some(P::ExecutionApprove),
        Execution,
        "Reject a task waiting at its approval gate: `{task, comment}`; it does not run, `finally:` does.",
        post(reject_execution),
        body: bodies::Decide,
        answer: bodies::Decided
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

/// The router: every route of [`ROUTES`] and the console's, with the
/// shared state and the security headers (`tls` adds HSTS).
pub fn router(app: AppState, tls: bool) -> axum::Router {
    let mut r = axum::Router::new();
    for route in ROUTES {
        r = r.route(route.path, (route.handler)().layer(axum::Extension(route)));
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
pub(crate) async fn limit_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let total: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if total > MAX_HEADER_BYTES {
        let error = format!("the request's headers total {total} bytes, over the limit of {MAX_HEADER_BYTES}");
        return (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Json(json!({ "error": error }))).into_response();
    }
    next.run(req).await
}

pub(crate) async fn health(State(app): State<AppState>) -> Json<bodies::Health> {
    let stopping = app.stopping.load(std::sync::atomic::Ordering::SeqCst);
    Json(bodies::Health { status: if stopping { "stopping" } else { "ok" }.to_owned() })
}

/// The OpenAPI document, generated from [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = Map::new();
    // Request bodies by reference, each type once under components/schemas.
    let mut schemas = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
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
        if let Some(answer) = r.answer {
            let schema = answer(&mut schemas);
            op["responses"]["200"]["content"] = json!({"application/json": {"schema": schema}});
        }
        if let Some(body) = r.body {
            let schema = body(&mut schemas);
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "keyhole", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Every route but health and this document needs `Authorization: Bearer TOKEN`. No route returns a secret value."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas.take_definitions(true),
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}

pub(crate) async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route that reads a JSON body declares it, by reference to one
    /// schema per type, and the schemas say what a client must send.
    #[test]
    fn the_openapi_document_describes_each_request_body() {
        let doc = openapi_document();
        let schemas = &doc["components"]["schemas"];
        let mut described = Vec::new();
        for r in ROUTES.iter().filter(|r| r.body.is_some()) {
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            // An execution's inputs are the flow's own: an object, inline.
            let Some(target) = schema["$ref"].as_str() else {
                assert_eq!(schema["type"], "object", "{} {}: {schema}", r.method, r.path);
                described.push((r.method, r.path, "object".to_owned()));
                continue;
            };
            let name = target.strip_prefix("#/components/schemas/").expect(target);
            assert!(schemas[name].is_object(), "{target} is not in components/schemas");
            described.push((r.method, r.path, name.to_owned()));
        }
        // The routes whose handlers read a `Body<T>` (the body is not just `{}`).
        assert_eq!(described.len(), 9, "{described:#?}");
        let put = described.iter().find(|(m, p, _)| *m == "PUT" && *p == "/api/v1/secrets/{ns}/{name}").unwrap();
        let put = &schemas[&put.2];
        assert_eq!(put["properties"]["value"]["writeOnly"], true, "{put}");
        assert_eq!(put["additionalProperties"], false, "{put}");
        let charset = serde_json::to_string(&put["properties"]["generate"]).unwrap()
            + &serde_json::to_string(&schemas["Generate"]).unwrap()
            + &serde_json::to_string(&schemas["Charset"]).unwrap();
        assert!(charset.contains("base64"), "{charset}");
        let deploy = &schemas["Deploy"];
        assert_eq!(deploy["required"], json!(["file", "source", "plugins"]), "{deploy}");
        // Answers too: a secret's change names its version, never a value.
        let answer = &doc["paths"]["/api/v1/secrets/{ns}/{name}"]["put"]["responses"]["200"]["content"];
        assert_eq!(answer["application/json"]["schema"]["$ref"], "#/components/schemas/SecretWritten", "{answer}");
        assert!(schemas["SecretWritten"]["properties"]["version"].is_object());
        assert!(schemas["SecretWritten"]["properties"].get("value").is_none());
        assert!(schemas["IssuedToken"]["properties"]["info"]["$ref"].is_string(), "{}", schemas["IssuedToken"]);
        let token = &schemas["NewToken"];
        assert_eq!(token["required"], json!(["name", "role"]), "{token}");
        assert!(token["properties"]["namespace"]["description"].as_str().unwrap().contains("root"), "{token}");
    }
}
