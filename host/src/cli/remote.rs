//! The CLI as a client of `host serve`: with `KEYHOLE_ADDR` set, the
//! commands that have a route send it there with `KEYHOLE_TOKEN` (or the
//! token in `KEYHOLE_TOKEN_FILE`, which must be private to its owner) and
//! print the answer the way the local command prints its own.

use super::*;
use serde_json::Value;
use zeroize::Zeroizing;

/// Where the server is.
pub(crate) const ADDR_ENV: &str = "KEYHOLE_ADDR";
/// The bearer token.
pub(crate) const TOKEN_ENV: &str = "KEYHOLE_TOKEN";
/// A file holding the bearer token (mode 0600).
pub(crate) const TOKEN_FILE_ENV: &str = "KEYHOLE_TOKEN_FILE";
/// A PEM file of the CA that signed the server's certificate.
pub(crate) const CA_ENV: &str = "KEYHOLE_CA_FILE";

/// A connection to a server.
pub(crate) struct Remote {
    base: String,
    token: Zeroizing<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("base", &self.base).finish_non_exhaustive()
    }
}

/// A request body of [`keyhole::service::bodies`] as the JSON `send` takes.
pub(crate) fn body(b: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(b).expect("request bodies encode as JSON")
}

/// `-` stands for the root namespace in paths.
pub(crate) fn ns_path(ns: &Namespace) -> String {
    if ns.is_root() { "-".into() } else { ns.as_str().to_owned() }
}

/// `text` as one path segment: anything but letters, digits, `-`, `_` and
/// `.` percent-encoded.
pub(crate) fn path_segment(text: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');
    percent_encoding::utf8_percent_encode(text, KEEP).to_string()
}

impl Remote {
    /// The server `KEYHOLE_ADDR` names, if it is set.
    pub(crate) fn from_env() -> Result<Option<Remote>, Exit> {
        let Some(addr) = std::env::var(ADDR_ENV).ok().filter(|a| !a.is_empty()) else { return Ok(None) };
        let base = addr.trim_end_matches('/').to_owned();
        keyhole::backend::http::check_address(&base, false)
            .map_err(|e| fail(USAGE, anyhow::anyhow!("{ADDR_ENV}: {e}")))?;
        let token = match (std::env::var(TOKEN_ENV), std::env::var(TOKEN_FILE_ENV)) {
            (Ok(t), _) if !t.is_empty() => Zeroizing::new(t),
            (_, Ok(file)) if !file.is_empty() => read_token_file(Path::new(&file))?,
            _ => {
                return Err(fail(
                    USAGE,
                    anyhow::anyhow!("{ADDR_ENV} is set but no token is: set {TOKEN_ENV} or {TOKEN_FILE_ENV}"),
                ));
            }
        };
        let ca = std::env::var(CA_ENV).ok().filter(|c| !c.is_empty()).map(PathBuf::from);
        let agent = keyhole::backend::http::agent("keyhole server", ca.as_deref())?;
        Ok(Some(Remote { base, token, agent }))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn answer(&self, what: &str, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value, Exit> {
        let mut resp =
            r.map_err(|e| fail(HOST, anyhow::anyhow!("{what}: cannot reach the server at {}: {e}", self.base)))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| fail(HOST, anyhow::anyhow!("{what}: cannot read the server's answer: {e}")))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let message = body.get("error").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| body.to_string());
        let (code, hint) = match status {
            401 => (USAGE, format!(": the server does not accept the token in {TOKEN_ENV}/{TOKEN_FILE_ENV}")),
            400 | 403 | 404 | 409 | 429 => (USAGE, String::new()),
            _ => (HOST, String::new()),
        };
        Err(fail(code, anyhow::anyhow!("{what}: the server answered {status}: {message}{hint}")))
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token.as_str())
    }

    /// `GET path`.
    pub(crate) fn get(&self, what: &str, path: &str) -> Result<Value, Exit> {
        let r = self.agent.get(self.url(path)).header("Authorization", self.auth()).call();
        self.answer(what, r)
    }

    /// `DELETE path`.
    pub(crate) fn delete(&self, what: &str, path: &str) -> Result<Value, Exit> {
        let r = self.agent.delete(self.url(path)).header("Authorization", self.auth()).call();
        self.answer(what, r)
    }

    /// `POST`/`PUT path` with a JSON body.
    pub(crate) fn send(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Value, Exit> {
        let req = match method {
            "PUT" => self.agent.put(self.url(path)),
            _ => self.agent.post(self.url(path)),
        };
        let mut req = req.header("Authorization", self.auth()).header("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send(serde_json::to_vec(body).expect("JSON encodes"));
        self.answer(what, r)
    }

    /// `GET path` as server-sent events: calls `on` with each event's name
    /// and JSON data until `on` answers `false`. The stream has no time
    /// limit; a line longer than 4 MiB is an error.
    pub(crate) fn events(
        &self,
        what: &str,
        path: &str,
        mut on: impl FnMut(&str, Value) -> Result<bool, Exit>,
    ) -> Result<(), Exit> {
        use std::io::{BufRead, Read};
        const MAX_LINE: u64 = 4 << 20;
        let r = self
            .agent
            .get(self.url(path))
            .header("Authorization", self.auth())
            .header("Accept", "text/event-stream")
            .config()
            .timeout_global(None)
            .build()
            .call();
        let resp =
            r.map_err(|e| fail(HOST, anyhow::anyhow!("{what}: cannot reach the server at {}: {e}", self.base)))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let err = self.answer(what, Ok(resp)).err();
            return Err(err.unwrap_or_else(|| fail(HOST, anyhow::anyhow!("{what}: the server answered {status}"))));
        }
        let lost = |e: std::io::Error| fail(HOST, anyhow::anyhow!("{what}: the stream from the server broke: {e}"));
        let mut reader = std::io::BufReader::new(resp.into_body().into_reader());
        let (mut event, mut data, mut line) = (String::new(), String::new(), Vec::new());
        loop {
            line.clear();
            let n = Read::by_ref(&mut reader).take(MAX_LINE + 1).read_until(b'\n', &mut line).map_err(lost)?;
            if n == 0 {
                return Err(fail(HOST, anyhow::anyhow!("{what}: the server closed the stream before the end")));
            }
            if n as u64 > MAX_LINE {
                return Err(fail(HOST, anyhow::anyhow!("{what}: the server sent a line over {MAX_LINE} bytes")));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                if !event.is_empty() || !data.is_empty() {
                    let value = serde_json::from_str(&data).unwrap_or_else(|_| Value::String(data.clone()));
                    if !on(&event, value)? {
                        return Ok(());
                    }
                }
                event.clear();
                data.clear();
            } else if let Some(name) = text.strip_prefix("event:") {
                event = name.trim_start().to_owned();
            } else if let Some(more) = text.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(more.strip_prefix(' ').unwrap_or(more));
            }
            // Comments (`:` keep-alives) and other fields are ignored.
        }
    }

    /// `PUT path` with raw bytes of `content_type`.
    pub(crate) fn put_bytes(&self, what: &str, path: &str, content_type: &str, bytes: &[u8]) -> Result<Value, Exit> {
        let r = self
            .agent
            .put(self.url(path))
            .header("Authorization", self.auth())
            .header("Content-Type", content_type)
            .send(bytes);
        self.answer(what, r)
    }
}

fn read_token_file(path: &Path) -> Result<Zeroizing<String>, Exit> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| fail(USAGE, anyhow::anyhow!("{TOKEN_FILE_ENV}: cannot read {}: {e}", path.display())))?;
    if meta.mode() & 0o077 != 0 {
        return Err(fail(
            USAGE,
            anyhow::anyhow!(
                "{TOKEN_FILE_ENV}: {} is readable by others (mode {:o}): `chmod 600 {}`",
                path.display(),
                meta.mode() & 0o777,
                path.display()
            ),
        ));
    }
    let bytes = keyhole::data_dir::read_bounded(path, 4096)
        .map_err(|e| fail(USAGE, anyhow::anyhow!("{TOKEN_FILE_ENV}: cannot read {}: {e}", path.display())))?;
    let text = Zeroizing::new(String::from_utf8_lossy(&bytes).trim().to_owned());
    Ok(text)
}

/// The server's answer `v` as a `T`; `what` names it when it is not one.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value, what: &str) -> Result<T, Exit> {
    serde_json::from_value(v).map_err(|e| fail(HOST, anyhow::anyhow!("the server's answer is not {what}: {e}")))
}
