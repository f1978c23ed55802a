//! Rotates a credential at an HTTP service without holding it, or calls the
//! service with credentials it holds only placeholders of.
//!
//! With `generate`, the host stages a new random value; with `capture`, the
//! host takes the new credential from the service's answer. Either way the
//! task sends `request` (where `{next}` stands for the new value, `{current}`
//! for the current one, and `{NAME}` for each secret in `read`), commits on
//! a 2xx answer and discards otherwise. Without either, it only sends
//! `request`: the step that uses the rotated credential.

use keyhole_guest::rotation::{self, Charset};
use keyhole_guest::{TaskError, http, secrets, task};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The secret to rotate (with `generate` or `capture`).
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    generate: Option<Generate>,
    /// JSON pointer of the new credential in the service's answer.
    #[serde(default)]
    capture: Option<String>,
    /// Secrets to read (placeholders when bound), written `{NAME}`.
    #[serde(default)]
    read: Vec<String>,
    request: Request,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Generate {
    length: u32,
    #[serde(default = "alnum")]
    charset: String,
}

fn alnum() -> String {
    "alnum".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default = "post")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn post() -> String {
    "POST".into()
}

#[derive(Serialize)]
struct Done {
    status: u16,
    /// The version now current, when a rotation was committed.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
}

fn run(input: Input) -> Result<Done, TaskError> {
    let mut fill: Vec<(String, String)> = Vec::new();
    for name in &input.read {
        fill.push((format!("{{{name}}}"), secrets::get(name)?));
    }
    let rotating = match (&input.secret, &input.generate, &input.capture) {
        (Some(name), Some(g), None) => {
            let charset = match g.charset.as_str() {
                "alnum" => Charset::Alnum,
                "hex" => Charset::Hex,
                "base64" => Charset::Base64,
                "ascii" => Charset::Ascii,
                other => return Err(TaskError::new(format!("charset {other:?}: use alnum, hex, base64 or ascii"))),
            };
            Some((name, rotation::generate(name, g.length, charset)?))
        }
        (Some(name), None, Some(pointer)) => Some((name, rotation::capture(name, pointer)?)),
        (None, None, None) => None,
        _ => return Err(TaskError::new("give `secret` with exactly one of `generate` or `capture`, or neither")),
    };
    if let Some((_, staged)) = &rotating {
        fill.push(("{next}".into(), staged.next.clone()));
        if let Some(current) = &staged.current {
            fill.push(("{current}".into(), current.clone()));
        }
    }
    let expand = |text: &str| fill.iter().fold(text.to_owned(), |t, (k, v)| t.replace(k, v));
    let r = &input.request;
    let mut req = http::request(&r.method, &expand(&r.url)).body(expand(&r.body));
    for (k, v) in &r.headers {
        req = req.header(k, &expand(v));
    }
    let response = req.send()?;
    let Some((name, _)) = rotating else {
        if !response.is_success() {
            return Err(TaskError::new(format!("the service answered {}", response.status)));
        }
        return Ok(Done { status: response.status, version: None });
    };
    if !response.is_success() {
        // The service refused it: erase the staged value (the host would
        // at the end of the task too).
        rotation::discard(name)?;
        return Err(TaskError::new(format!("the service answered {}: {name} is unchanged", response.status)));
    }
    let version = rotation::commit(name)?;
    Ok(Done { status: response.status, version: Some(version) })
}

task!(run);
