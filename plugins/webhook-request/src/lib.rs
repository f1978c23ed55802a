//! Builds the HTTP request that delivers a signed webhook: URL, headers and
//! body, ready for a delivery step. Needs no secret: the signature comes from
//! the signing task's output, so this task is granted nothing.

use keyhole_guest::{TaskError, context, task};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Input {
    url: String,
    payload: String,
    signature: String,
}

#[derive(Serialize)]
struct Request {
    method: &'static str,
    url: String,
    headers: BTreeMap<&'static str, String>,
    body: String,
}

fn build(input: Input) -> Result<Request, TaskError> {
    if !input.url.starts_with("https://") {
        return Err(TaskError::new(format!("refusing to deliver to {:?}: webhooks go over https", input.url)));
    }
    if !input.signature.starts_with("sha256=") {
        return Err(TaskError::new("the signature must look like sha256=<hex>"));
    }
    let me = context::current();
    let mut headers = BTreeMap::new();
    headers.insert("Content-Type", "application/json".to_owned());
    headers.insert("X-Hub-Signature-256", input.signature);
    headers.insert("X-Keyhole-Execution", me.execution_id);
    Ok(Request { method: "POST", url: input.url, headers, body: input.payload })
}

task!(build);
