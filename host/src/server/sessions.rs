//! Console sessions: a token presented once at sign-in, exchanged for a
//! random cookie. The server keeps, per session, the token (zeroizing, to
//! authenticate every request exactly as a bearer token is, so a revoked or
//! expired token ends its sessions at once), a CSRF token, and when it was
//! last used. Sessions live in memory: a restart signs everyone out.
//!
//! Invariant: the cookie is looked up by its SHA-256; a request made with
//! the cookie that may change something (any method but GET and HEAD)
//! carries the session's CSRF token in [`CSRF_HEADER`], compared in
//! constant time; a session unused for the idle timeout, or older than
//! [`MAX_AGE`], is gone.

use crate::tokens::TokenSecret;
use base64::Engine as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The session cookie's name.
pub const COOKIE: &str = "keyhole_session";
/// The header a state-changing request made with the cookie must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The longest a session lives, however busy.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions at once; signing in past it ends the least recently used.
pub const MAX_SESSIONS: usize = 10_000;

struct Session {
    token: TokenSecret,
    csrf: String,
    created: Instant,
    seen: Instant,
}

/// Why a cookie did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFailure {
    /// No such session (never made, signed out, or the server restarted).
    Unknown,
    /// Idle too long, or past [`MAX_AGE`].
    Expired,
    /// A state-changing request without the session's CSRF token.
    Csrf,
}

impl SessionFailure {
    /// For the audit record and the error.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionFailure::Unknown => "unknown console session (signed out, or the server restarted)",
            SessionFailure::Expired => "console session expired",
            SessionFailure::Csrf => "missing or wrong CSRF token for a console session",
        }
    }
}

/// Every console session of this server.
pub struct Sessions {
    idle: Duration,
    secure: bool,
    map: Mutex<HashMap<String, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Sessions {{ idle: {:?}, secure: {}, open: {n} }}", self.idle, self.secure)
    }
}

fn random_text() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *bytes).expect("the operating system's random source failed");
    Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*bytes))
}

fn key_of(cookie: &str) -> String {
    hex::encode(crate::crypto::sha256(cookie.as_bytes()))
}

/// What a resolved session gives a request.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The session's key (the cookie's SHA-256), to end it.
    pub key: String,
    /// The session's CSRF token, for `GET /api/v1/session`.
    pub csrf: String,
}

impl Sessions {
    /// Sessions that end after `idle` without a request; `secure` marks the
    /// cookie Secure (the server speaks TLS).
    pub fn new(idle: Duration, secure: bool) -> Self {
        Sessions { idle, secure, map: Mutex::new(HashMap::new()) }
    }

    /// The idle timeout.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.seen) < self.idle && now.duration_since(s.created) < MAX_AGE
    }

    /// A new session for `token` (already authenticated): the cookie value
    /// (for `Set-Cookie` only) and the session.
    pub fn open(&self, token: &TokenSecret) -> (Zeroizing<String>, Resolved) {
        let cookie = random_text();
        let csrf = random_text().to_string();
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| self.live(s, now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let key = key_of(&cookie);
        let session =
            Session { token: TokenSecret::presented(token.expose()), csrf: csrf.clone(), created: now, seen: now };
        map.insert(key.clone(), session);
        (cookie, Resolved { key, csrf })
    }

    /// The token behind `cookie`, for a request that `changes` something
    /// (then `csrf` must be the session's); marks the session used.
    pub fn resolve(
        &self,
        cookie: &str,
        changes: bool,
        csrf: Option<&str>,
    ) -> Result<(TokenSecret, Resolved), SessionFailure> {
        let key = key_of(cookie);
        let now = Instant::now();
        let mut map = self.lock();
        let Some(s) = map.get_mut(&key) else { return Err(SessionFailure::Unknown) };
        if !self.live(s, now) {
            map.remove(&key);
            return Err(SessionFailure::Expired);
        }
        if changes && !csrf.is_some_and(|c| crate::crypto::constant_time_eq(c.as_bytes(), s.csrf.as_bytes())) {
            return Err(SessionFailure::Csrf);
        }
        s.seen = now;
        Ok((TokenSecret::presented(s.token.expose()), Resolved { key, csrf: s.csrf.clone() }))
    }

    /// Whether the session `key` names is still open (neither signed
    /// out, nor idle, nor too old); a look, not a use.
    pub fn is_open(&self, key: &str) -> bool {
        self.lock().get(key).is_some_and(|s| self.live(s, Instant::now()))
    }

    /// Ends session `key`.
    pub fn close(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The `Set-Cookie` value that starts a session.
    pub fn set_cookie(&self, cookie: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict{secure}")
    }

    /// The `Set-Cookie` value that ends it in the browser.
    pub fn clear_cookie(&self) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
    }
}

/// The session cookie among a request's `Cookie` headers.
pub fn cookie_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, v)| *k == COOKIE && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> TokenSecret {
        TokenSecret::presented("kh_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    }

    #[test]
    fn a_session_needs_its_csrf_token_to_change_anything() {
        let s = Sessions::new(Duration::from_secs(60), false);
        let (cookie, r) = s.open(&token());
        assert!(s.resolve(&cookie, false, None).is_ok());
        assert_eq!(s.resolve(&cookie, true, None).unwrap_err(), SessionFailure::Csrf);
        assert_eq!(s.resolve(&cookie, true, Some("nope")).unwrap_err(), SessionFailure::Csrf);
        let (t, _) = s.resolve(&cookie, true, Some(&r.csrf)).unwrap();
        assert_eq!(t.expose(), token().expose());
        s.close(&r.key);
        assert_eq!(s.resolve(&cookie, false, None).unwrap_err(), SessionFailure::Unknown);
    }

    #[test]
    fn an_idle_session_expires() {
        let s = Sessions::new(Duration::from_millis(1), false);
        let (cookie, _) = s.open(&token());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.resolve(&cookie, false, None).unwrap_err(), SessionFailure::Expired);
        assert_eq!(s.resolve(&cookie, false, None).unwrap_err(), SessionFailure::Unknown);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let tls = Sessions::new(Duration::from_secs(60), true).set_cookie("x");
        assert_eq!(tls, "keyhole_session=x; Path=/; HttpOnly; SameSite=Strict; Secure");
        assert!(!Sessions::new(Duration::from_secs(60), false).set_cookie("x").contains("Secure"));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "a=1; keyhole_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie_of(&h).as_deref(), Some("abc"));
        h.clear();
        h.append("cookie", "keyhole_session=".parse().unwrap());
        assert_eq!(cookie_of(&h), None);
    }
}
