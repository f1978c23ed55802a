//! Destination-bound secrets: the placeholder a task gets instead of the
//! value, and the substitution the host makes as a request leaves.
//!
//! A placeholder is `khp_` and 32 hex digits, random per execution and
//! secret. A task puts it anywhere in a request: a header value, the URL's
//! path or query, or the body. Written with a suffix, it asks for a value
//! derived from the secret, computed by the host:
//!
//! - `khp_….basic(USER)`: `base64(USER:secret)`, for `Authorization: Basic`;
//! - `khp_….hmac-sha256-hex(body)` / `….hmac-sha256-base64(body)`: the
//!   HMAC-SHA256 of the request body (after substitution) keyed with the
//!   secret, for webhook signatures (GitHub, Stripe, Slack). Not allowed in
//!   the body itself.
//!
//! The substitution happens only when the request's destination matches
//! one of the secret's destinations; otherwise the request is refused and
//! nothing is sent. Values in URLs are percent-encoded. Responses are
//! scrubbed of every injected value and its encodings.
//!
//! Invariant: a bound value leaves this module only into the request it is
//! injected into, never back to the plugin.

use super::{AllowEntry, Destination};
use crate::mask::MaskSet;
use crate::names::SecretName;
use crate::secret::SecretValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const PREFIX: &str = "khp_";
const ID_LEN: usize = 32;

/// A secret bound to destinations, as one task holds it.
#[derive(Debug)]
struct Bound {
    name: SecretName,
    value: SecretValue,
    destinations: Vec<AllowEntry>,
    /// The staged (next) value of a rotation, not the current one.
    staged: bool,
}

/// The bound secrets one task has asked for, by placeholder id.
#[derive(Debug, Default)]
pub struct BoundSecrets {
    inner: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    by_id: HashMap<String, Arc<Bound>>,
    by_name: HashMap<SecretName, String>,
}

/// What a placeholder asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    Value,
    Basic(String),
    HmacHex,
    HmacBase64,
}

/// One placeholder found in a text: its byte range, id and form.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    start: usize,
    end: usize,
    id: String,
    form: Form,
}

/// Why a request with placeholders may not leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectError {
    /// A secret's placeholder is in a request to a destination the secret
    /// is not bound to: an exfiltration attempt.
    NotBoundThere {
        /// The secret.
        name: SecretName,
    },
    /// An HMAC of the body asked for inside the body.
    HmacInBody,
    /// After substitution a header value is not a valid header value.
    BadHeader(String),
}

impl std::fmt::Display for InjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InjectError::NotBoundThere { name } => {
                write!(f, "the placeholder of secret {name} is in a request to a destination it is not bound to")
            }
            InjectError::HmacInBody => f.write_str("an HMAC of the body cannot be placed in the body itself"),
            InjectError::BadHeader(h) => write!(f, "header {h} is not a valid header value after substitution"),
        }
    }
}

/// The parts of a request the host substitutes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// Path and query, as sent.
    pub path_and_query: String,
    /// Header names and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

/// What was injected: the secrets' names (for the audit record) and a mask
/// set of their values (to scrub the response).
#[derive(Debug, Default)]
pub struct Injected {
    /// Names of the secrets injected, sorted, each once.
    pub names: Vec<SecretName>,
    /// Names of those whose staged (next) value was injected: a rotation
    /// learns from the answer whether the service took it.
    pub staged: Vec<SecretName>,
    /// Their values and encodings.
    pub scrub: MaskSet,
}

/// A new random placeholder id.
fn new_id() -> String {
    let mut raw = [0u8; ID_LEN / 2];
    getrandom::fill(&mut raw).expect("the operating system's random source failed");
    hex::encode(raw)
}

impl BoundSecrets {
    /// The placeholder of secret `name` for this task: the same one on
    /// every call, a new random one per execution.
    pub fn placeholder(&self, name: &SecretName, value: SecretValue, destinations: Vec<AllowEntry>) -> String {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = t.by_name.get(name) {
            return format!("{PREFIX}{id}");
        }
        let id = new_id();
        t.by_name.insert(name.clone(), id.clone());
        t.by_id.insert(id.clone(), Arc::new(Bound { name: name.clone(), value, destinations, staged: false }));
        format!("{PREFIX}{id}")
    }

    /// A new placeholder for a value not known yet (a credential a service
    /// will hand out); [`BoundSecrets::bind_staged`] gives it its value.
    pub fn reserve(&self) -> String {
        format!("{PREFIX}{}", new_id())
    }

    /// Makes `placeholder` (from [`BoundSecrets::reserve`]) stand for the
    /// staged value of secret `name`, bound to `destinations`.
    pub fn bind_staged(&self, placeholder: &str, name: &SecretName, value: SecretValue, destinations: Vec<AllowEntry>) {
        let id = placeholder.strip_prefix(PREFIX).expect("a placeholder from reserve").to_owned();
        let bound = Bound { name: name.clone(), value, destinations, staged: true };
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_id.insert(id, Arc::new(bound));
    }

    /// Whether any secret is bound in this task (if not, requests are sent
    /// as they are).
    pub fn is_empty(&self) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_id.is_empty()
    }

    /// Substitutes every known placeholder in `parts` for a request to
    /// `dest`, or refuses the request.
    pub fn inject(&self, dest: &Destination, parts: &mut Parts) -> Result<Injected, InjectError> {
        let table = self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_id.clone();
        let mut injected = Injected::default();
        let mut used = |b: &Arc<Bound>| -> Result<(), InjectError> {
            if !b.destinations.iter().any(|d| d.matches(dest)) {
                return Err(InjectError::NotBoundThere { name: b.name.clone() });
            }
            if !injected.names.contains(&b.name) {
                injected.names.push(b.name.clone());
            }
            if b.staged && !injected.staged.contains(&b.name) {
                injected.staged.push(b.name.clone());
            }
            injected.scrub.add(&b.value);
            Ok(())
        };
        let known = |tokens: Vec<Token>| -> Vec<(Token, Arc<Bound>)> {
            tokens.into_iter().filter_map(|t| table.get(&t.id).map(|b| (t, b.clone()))).collect()
        };
        // The body first: the HMAC forms sign it as sent.
        let in_body = known(find(&parts.body));
        for (t, b) in &in_body {
            if matches!(t.form, Form::HmacHex | Form::HmacBase64) {
                return Err(InjectError::HmacInBody);
            }
            used(b)?;
        }
        if !in_body.is_empty() {
            parts.body = replace(&parts.body, &in_body, &[], |v| v.as_bytes().to_vec());
        }
        let Parts { path_and_query, headers, body } = parts;
        let in_url = known(find(path_and_query.as_bytes()));
        for (_, b) in &in_url {
            used(b)?;
        }
        if !in_url.is_empty() {
            let url = replace(path_and_query.as_bytes(), &in_url, body, |v| {
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string().into_bytes()
            });
            *path_and_query = String::from_utf8(url).expect("percent-encoding is ASCII");
        }
        for (name, value) in headers.iter_mut() {
            let found = known(find(value));
            if found.is_empty() {
                continue;
            }
            for (_, b) in &found {
                used(b)?;
            }
            *value = replace(value, &found, body, |v| v.as_bytes().to_vec());
            if value.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0) {
                return Err(InjectError::BadHeader(name.clone()));
            }
        }
        injected.names.sort();
        Ok(injected)
    }
}

/// `text` with each token replaced by what it asks for; `encode` turns a
/// plain or Basic value into bytes for this part of the request.
fn replace(text: &[u8], tokens: &[(Token, Arc<Bound>)], body: &[u8], encode: impl Fn(&str) -> Vec<u8>) -> Vec<u8> {
    if tokens.is_empty() {
        return text.to_vec();
    }
    use base64::Engine as _;
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for (t, b) in tokens {
        out.extend_from_slice(&text[at..t.start]);
        let secret = b.value.expose();
        let piece = match &t.form {
            Form::Value => encode(secret),
            Form::Basic(user) => {
                let creds = zeroize::Zeroizing::new(format!("{user}:{secret}"));
                base64::engine::general_purpose::STANDARD.encode(creds.as_bytes()).into_bytes()
            }
            Form::HmacHex | Form::HmacBase64 => {
                let tag = crate::crypto::hmac_sha256(secret.as_bytes(), body);
                match t.form {
                    Form::HmacHex => hex::encode(tag).into_bytes(),
                    _ => base64::engine::general_purpose::STANDARD.encode(tag).into_bytes(),
                }
            }
        };
        out.extend_from_slice(&piece);
        at = t.end;
    }
    out.extend_from_slice(&text[at..]);
    out
}

/// Every placeholder in `text`, in order, not overlapping.
fn find(text: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&text[from..], PREFIX.as_bytes()) {
        let start = from + i;
        let id_start = start + PREFIX.len();
        let id_end = id_start + ID_LEN;
        let is_id =
            text.get(id_start..id_end).is_some_and(|id| id.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        if !is_id || text.get(id_end).is_some_and(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            from = start + 1;
            continue;
        }
        let id = String::from_utf8(text[id_start..id_end].to_vec()).expect("hex is ASCII");
        let (form, end) = suffix(&text[id_end..]).map_or((Form::Value, id_end), |(f, n)| (f, id_end + n));
        tokens.push(Token { start, end, id, form });
        from = end;
    }
    tokens
}

/// A derivation suffix at the start of `rest`, and its length.
fn suffix(rest: &[u8]) -> Option<(Form, usize)> {
    for (tag, form) in [(".hmac-sha256-hex(body)", Form::HmacHex), (".hmac-sha256-base64(body)", Form::HmacBase64)] {
        if rest.starts_with(tag.as_bytes()) {
            return Some((form, tag.len()));
        }
    }
    let args = rest.strip_prefix(b".basic(")?;
    let close = args.iter().position(|&c| c == b')')?;
    let user = std::str::from_utf8(&args[..close]).ok()?;
    Some((Form::Basic(user.to_owned()), ".basic(".len() + close + 1))
}

/// `bytes` with every injected value (and its encodings) replaced by `***`.
pub fn scrub(injected: &Injected, bytes: &[u8]) -> Vec<u8> {
    if injected.names.is_empty() {
        return bytes.to_vec();
    }
    let mut out = Vec::with_capacity(bytes.len());
    injected.scrub.matcher().mask_all(bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Host, Scheme};

    fn dest(url: &str) -> Destination {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (host, port) = rest.split_once(':').unwrap();
        Destination { scheme: Scheme::parse(scheme).unwrap(), host: Host::parse(host), port: port.parse().unwrap() }
    }

    fn bound(value: &str, to: &[&str]) -> (BoundSecrets, String) {
        let b = BoundSecrets::default();
        let p = b.placeholder(
            &SecretName::new("TOKEN").unwrap(),
            SecretValue::new(value.into()),
            to.iter().map(|d| d.parse().unwrap()).collect(),
        );
        (b, p)
    }

    fn parts(url: &str, headers: &[(&str, &str)], body: &str) -> Parts {
        Parts {
            path_and_query: url.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn placeholders_are_stable_per_task_and_unique_per_execution() {
        let (b, p) = bound("v", &["https://api.example.com"]);
        assert!(p.starts_with("khp_") && p.len() == 4 + 32, "{p}");
        let again = b.placeholder(&SecretName::new("TOKEN").unwrap(), SecretValue::new("v".into()), vec![]);
        assert_eq!(again, p);
        let (_, other) = bound("v", &["https://api.example.com"]);
        assert_ne!(other, p);
    }

    #[test]
    fn values_go_into_headers_url_and_body_toward_a_bound_destination() {
        let (b, p) = bound("s3cr/t&v", &["https://api.example.com"]);
        let mut req = parts(
            &format!("/v1/{p}?key={p}"),
            &[("authorization", &format!("Bearer {p}")), ("x-basic", &format!("Basic {p}.basic(alice)"))],
            &format!("{{\"token\":\"{p}\"}}"),
        );
        let injected = b.inject(&dest("https://api.example.com:443"), &mut req).unwrap();
        assert_eq!(injected.names, [SecretName::new("TOKEN").unwrap()]);
        assert_eq!(req.path_and_query, "/v1/s3cr%2Ft%26v?key=s3cr%2Ft%26v");
        assert_eq!(req.headers[0].1, b"Bearer s3cr/t&v");
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:s3cr/t&v");
        assert_eq!(req.headers[1].1, format!("Basic {basic}").into_bytes());
        assert_eq!(req.body, b"{\"token\":\"s3cr/t&v\"}");
    }

    #[test]
    fn an_hmac_signs_the_body_as_sent() {
        let (b, p) = bound("whsec", &["https://hooks.example.com"]);
        let mut req =
            parts("/hook", &[("x-hub-signature-256", &format!("sha256={p}.hmac-sha256-hex(body)"))], "{\"a\":1}");
        b.inject(&dest("https://hooks.example.com:443"), &mut req).unwrap();
        let expected = format!("sha256={}", hex::encode(crate::crypto::hmac_sha256(b"whsec", b"{\"a\":1}")));
        assert_eq!(String::from_utf8(req.headers[0].1.clone()).unwrap(), expected);
        let mut in_body = parts("/hook", &[], &format!("{p}.hmac-sha256-hex(body)"));
        assert!(matches!(b.inject(&dest("https://hooks.example.com:443"), &mut in_body), Err(InjectError::HmacInBody)));
    }

    #[test]
    fn a_placeholder_toward_another_destination_refuses_the_request() {
        let (b, p) = bound("v", &["https://api.example.com"]);
        for d in ["https://evil.example.net:443", "http://api.example.com:80", "https://api.example.com:8443"] {
            let mut req = parts("/", &[("authorization", &p)], "");
            let before = req.clone();
            let e = b.inject(&dest(d), &mut req).unwrap_err();
            assert!(matches!(e, InjectError::NotBoundThere { .. }), "{d}: {e}");
            assert_eq!(req.headers, before.headers, "nothing substituted");
        }
        // A placeholder-looking string that is not one of this task's is left alone.
        let mut req = parts("/", &[("x", "khp_0123456789abcdef0123456789abcdef")], "");
        assert!(b.inject(&dest("https://evil.example.net:443"), &mut req).unwrap().names.is_empty());
    }

    /// A rotation learns whether the service took the staged value only
    /// from a request that carried it: the current value's placeholder
    /// alone says nothing about the next one.
    #[test]
    fn only_a_request_carrying_the_staged_value_reports_it() {
        let (b, current) = bound("now", &["https://api.example.com"]);
        let name = SecretName::new("TOKEN").unwrap();
        let next = b.reserve();
        b.bind_staged(&next, &name, SecretValue::new("next".into()), vec!["https://api.example.com".parse().unwrap()]);
        let to = dest("https://api.example.com:443");
        let send = |headers: &[(&str, &str)]| b.inject(&to, &mut parts("/", headers, "")).unwrap();
        let got = send(&[("authorization", &current)]);
        assert_eq!((got.names.clone(), got.staged), (vec![name.clone()], vec![]), "the current value only");
        let got = send(&[("authorization", &next), ("x-again", &next)]);
        assert_eq!(got.staged, std::slice::from_ref(&name), "the staged value, listed once");
        let got = send(&[("authorization", &current), ("x-next", &next)]);
        assert_eq!((got.names, got.staged), (vec![name.clone()], vec![name]), "both: one name, staged once");
    }

    #[test]
    fn a_value_with_a_line_break_cannot_forge_a_header() {
        // CR LF, a bare LF or CR (which some servers take for a line end), a NUL.
        for value in ["v\r\nx-evil: 1", "v\nx-evil: 1", "v\rx-evil: 1", "v\0x"] {
            let (b, p) = bound(value, &["https://api.example.com"]);
            let mut req = parts("/", &[("authorization", &p)], "");
            let got = b.inject(&dest("https://api.example.com:443"), &mut req);
            assert!(matches!(got, Err(InjectError::BadHeader(_))), "{value:?}");
        }
    }

    #[test]
    fn responses_are_scrubbed_of_injected_values_and_their_encodings() {
        let (b, p) = bound("tok-123456", &["https://api.example.com"]);
        let mut req = parts("/", &[("authorization", &p)], "");
        let injected = b.inject(&dest("https://api.example.com:443"), &mut req).unwrap();
        use base64::Engine as _;
        let echo =
            format!("you sent tok-123456 and {}", base64::engine::general_purpose::STANDARD.encode("tok-123456"));
        let clean = String::from_utf8(scrub(&injected, echo.as_bytes())).unwrap();
        assert!(!clean.contains("tok-123456") && !clean.contains("dG9rLTEyMzQ1Ng"), "{clean}");
    }

    proptest::proptest! {
        #[test]
        fn finding_never_panics_and_finds_what_was_written(
            before in "\\PC{0,20}", after in "[^0-9a-f]\\PC{0,20}|", user in "[a-z]{0,8}", basic in proptest::prelude::any::<bool>()
        ) {
            let id = "0123456789abcdef0123456789abcdef";
            let token = if basic { format!("khp_{id}.basic({user})") } else { format!("khp_{id}") };
            let text = format!("{before}{token}{after}");
            let found = find(text.as_bytes());
            proptest::prop_assert!(found.iter().any(|t| t.id == id && text[t.start..t.end] == token), "{:?} in {:?}", found, text);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_finder(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = find(&bytes);
        }

        /// Text made of prefixes, hex runs and other characters: every
        /// token found is a prefix and exactly 32 hex digits, and every such
        /// run that is not part of a longer one is found. (No `(`: a
        /// `.basic(...)` suffix takes what follows, up to its `)`.)
        #[test]
        fn only_whole_placeholders_are_found(text in "(khp_|[0-9a-f]{1,40}|[g-z .)]){0,12}") {
            let b = text.as_bytes();
            let hex = |c: &u8| matches!(c, b'0'..=b'9' | b'a'..=b'f');
            for t in find(b) {
                proptest::prop_assert!(b[t.start..].starts_with(PREFIX.as_bytes()));
                let id_end = t.start + PREFIX.len() + ID_LEN;
                proptest::prop_assert!(b[t.start + PREFIX.len()..id_end].iter().all(hex));
                proptest::prop_assert!(!b.get(id_end).is_some_and(hex), "{:?} in {:?}", t, text);
            }
            let whole = |i: usize| {
                b.get(i + PREFIX.len()..i + PREFIX.len() + ID_LEN).is_some_and(|id| id.iter().all(hex))
                    && !b.get(i + PREFIX.len() + ID_LEN).is_some_and(hex)
            };
            let expected = (0..b.len()).filter(|&i| b[i..].starts_with(PREFIX.as_bytes()) && whole(i)).count();
            proptest::prop_assert_eq!(find(b).len(), expected, "{:?}", text);
        }
    }

    #[test]
    fn near_misses_are_not_placeholders() {
        let id = "0123456789abcdef0123456789abcdef";
        let text = format!("khp_ khp_zz khp_{id}f khp_{} khp_{id}", &id[1..]);
        let found = find(text.as_bytes());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].start, found[0].id.as_str()), (text.len() - 36, id));
    }
}
