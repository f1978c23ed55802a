//! Outbound HTTP from a task, over `wasi:http/outgoing-handler`.
//!
//! ```no_run
//! use keyhole_guest::{http, secrets, TaskError};
//! use serde_json::json;
//!
//! fn open_issue() -> Result<u16, TaskError> {
//!     let token = secrets::get("GITHUB_TOKEN")?;
//!     let response = http::post("https://api.github.com/repos/acme/app/issues")
//!         .header("authorization", &format!("Bearer {token}"))
//!         .header("user-agent", "keyhole-task")
//!         .json(&json!({ "title": "nightly job failed" }))?
//!         .send()?;
//!     Ok(response.status)
//! }
//! # fn main() {}
//! ```
//!
//! The host sends a request only to destinations the flow allows for this
//! task (`network.allow`, or `host exec --allow-outbound`); anything else
//! fails with [`Error::Denied`]. When the secret is bound to destinations
//! (`host secret set NAME --destination URL`), `secrets::get` hands the
//! task a placeholder instead of the value, and the host puts the value in
//! the request as it leaves, only toward those destinations: the code above
//! is the same either way.

use std::fmt;
use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The host refused it: the destination is not allowed for this task,
    /// or a placeholder was sent where its secret may not go.
    Denied,
    /// The destination's name resolved to an address the task may not
    /// reach (loopback, private, link-local) unless the flow names it.
    AddressProhibited,
    /// A limit of the task was reached (requests, concurrency, body size).
    Limit(String),
    /// The URL is not `http(s)://host[:port][/path][?query]`.
    InvalidUrl(String),
    /// Anything else (connection refused, timeout, TLS, protocol).
    Failed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied => f.write_str("the host denied the request (destination not allowed for this task)"),
            Error::AddressProhibited => f.write_str("the destination resolves to an address this task may not reach"),
            Error::Limit(what) => write!(f, "request limit reached: {what}"),
            Error::InvalidUrl(why) => write!(f, "invalid URL: {why}"),
            Error::Failed(why) => write!(f, "request failed: {why}"),
        }
    }
}

impl std::error::Error for Error {}

fn from_code(code: ErrorCode) -> Error {
    match code {
        ErrorCode::HttpRequestDenied => Error::Denied,
        ErrorCode::DestinationIpProhibited => Error::AddressProhibited,
        ErrorCode::ConnectionLimitReached => Error::Limit("too many requests".into()),
        ErrorCode::HttpRequestBodySize(n) => Error::Limit(format!("request body over {} bytes", n.unwrap_or(0))),
        ErrorCode::HttpResponseBodySize(n) => Error::Limit(format!("response body over {} bytes", n.unwrap_or(0))),
        other => Error::Failed(format!("{other:?}")),
    }
}

/// A request being built; [`RequestBuilder::send`] sends it.
#[derive(Debug, Clone)]
#[must_use = "a request is sent only by .send()"]
pub struct RequestBuilder {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// `GET url`.
pub fn get(url: &str) -> RequestBuilder {
    request("GET", url)
}

/// `POST url`.
pub fn post(url: &str) -> RequestBuilder {
    request("POST", url)
}

/// `PUT url`.
pub fn put(url: &str) -> RequestBuilder {
    request("PUT", url)
}

/// `DELETE url`.
pub fn delete(url: &str) -> RequestBuilder {
    request("DELETE", url)
}

/// A request with any method.
pub fn request(method: &str, url: &str) -> RequestBuilder {
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_owned()),
    };
    RequestBuilder { method, url: url.to_owned(), headers: Vec::new(), body: Vec::new() }
}

/// A response, body read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase, in the order received.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Failed(format!("the response is not the JSON expected: {e}")))
    }
}

/// The parts of an `http(s)://authority/path?query` URL.
#[derive(Debug, PartialEq, Eq)]
struct Url<'a> {
    https: bool,
    authority: &'a str,
    path_and_query: String,
}

fn parse_url(url: &str) -> Result<Url<'_>, Error> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(Error::InvalidUrl(format!("{url:?} does not start with http:// or https://")));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(Error::InvalidUrl(format!("{url:?} has no host, or has user info")));
    }
    let path_and_query = match path_and_query {
        p if p.starts_with('/') => p.to_owned(),
        p => format!("/{p}"),
    };
    Ok(Url { https, authority, path_and_query })
}

impl RequestBuilder {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value).map_err(|e| Error::Failed(format!("cannot encode the body: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, Error> {
        let url = parse_url(&self.url)?;
        let headers = Fields::new();
        for (name, value) in &self.headers {
            headers.append(name, value).map_err(|e| Error::InvalidUrl(format!("header {name:?}: {e:?}")))?;
        }
        let request = OutgoingRequest::new(headers);
        let invalid = |what: &str| Error::InvalidUrl(format!("{}: bad {what}", self.url));
        request.set_method(&self.method).map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(if url.https { &Scheme::Https } else { &Scheme::Http }))
            .map_err(|()| invalid("scheme"))?;
        request.set_authority(Some(url.authority)).map_err(|()| invalid("host"))?;
        request.set_path_with_query(Some(&url.path_and_query)).map_err(|()| invalid("path"))?;
        let body = request.body().map_err(|()| Error::Failed("no request body".into()))?;
        let pending = outgoing_handler::handle(request, None).map_err(from_code)?;
        if let Err(write_error) = write_body(&body, &self.body) {
            // The host stops reading a body it refuses (over the task's
            // limit, say): its reason is the response's error, not the
            // closed stream.
            drop(body);
            pending.subscribe().block();
            return Err(match pending.get() {
                Some(Ok(Err(code))) => from_code(code),
                _ => write_error,
            });
        }
        OutgoingBody::finish(body, None).map_err(from_code)?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(code))) => return Err(from_code(code)),
            Some(Err(())) | None => return Err(Error::Failed("the response was lost".into())),
        };
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|()| Error::Failed("no response body".into()))?;
        let mut body = Vec::new();
        {
            let stream = incoming.stream().map_err(|()| Error::Failed("no response body stream".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(e) => return Err(stream_error(&e)),
                }
            }
        }
        Ok(Response { status, headers, body })
    }
}

/// Writes `bytes` into the request's body stream (the stream is closed
/// before the body is finished or dropped).
fn write_body(body: &OutgoingBody, bytes: &[u8]) -> Result<(), Error> {
    let out = body.write().map_err(|()| Error::Failed("no body stream".into()))?;
    for chunk in bytes.chunks(4096) {
        out.blocking_write_and_flush(chunk).map_err(|e| stream_error(&e))?;
    }
    Ok(())
}

fn stream_error(e: &StreamError) -> Error {
    match e {
        StreamError::Closed => Error::Failed("the connection closed".into()),
        StreamError::LastOperationFailed(err) => match wasi::http::types::http_error_code(err) {
            Some(code) => from_code(code),
            None => Error::Failed(err.to_debug_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            parse_url("https://api.github.com/repos?x=1").unwrap(),
            Url { https: true, authority: "api.github.com", path_and_query: "/repos?x=1".into() }
        );
        assert_eq!(parse_url("http://127.0.0.1:8080").unwrap().path_and_query, "/");
        assert_eq!(parse_url("http://h?q=1").unwrap().path_and_query, "/?q=1");
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("https://user@host/").is_err());
        assert!(parse_url("https:///path").is_err());
    }
}
