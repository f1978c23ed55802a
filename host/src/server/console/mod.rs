//! The web console at `/`: a page and its script, served from the binary,
//! that sign a person in with a token and then act only through the API
//! under `/api/v1`, so every page is backed by a route of
//! [`super::api::ROUTES`] and every action passes the same authorization
//! and audit as a client with a bearer token.
//!
//! - [`Sessions`]: a token exchanged for a session cookie (HttpOnly,
//!   SameSite=Strict, Secure under TLS), an idle timeout, a CSRF token that
//!   every state-changing request made with the cookie must carry.
//! - [`security_headers`]: the headers every response carries, API or page.
//! - the assets (`assets/`): HTML, CSS and JavaScript, no external origin.
//!
//! Invariant: the script builds every element from text nodes and
//! attributes (never `innerHTML`), so a value from the server is shown as
//! text whatever it holds; the Content-Security-Policy allows scripts and
//! styles from this origin only, none inline. No response of the console
//! carries a secret value: it has no route of its own that reads one.

pub(super) mod handlers;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of every response: this origin's scripts,
/// styles and connections only, nothing inline, no frames, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every response (API and console): the
/// CSP, no framing, no MIME sniffing, no referrer, no caching of answers
/// (they describe secrets and executions), HSTS under TLS.
pub async fn security_headers(
    axum::extract::State(tls): axum::extract::State<bool>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, "content-security-policy", CSP);
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cross-origin-resource-policy", "same-origin");
    set(h, "permissions-policy", "camera=(), microphone=(), geolocation=()");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    if tls {
        set(h, "strict-transport-security", "max-age=31536000");
    }
    resp
}

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/icon.svg");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The console's routes: its page and assets. Everything else it does is
/// a call to the API.
pub fn routes() -> axum::Router<super::AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/console/icon.svg", get(|| async { asset("image/svg+xml", ICON) }))
}

/// The console's paths, for the README and the tests.
pub const PAGES: &[&str] = &["/", "/console/app.js", "/console/app.css", "/console/icon.svg"];

/// What a path outside the API and the console gets.
pub fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "not found: the console is at /\n")
        .into_response()
}
