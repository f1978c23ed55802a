//! Delivers a webhook: POSTs the payload to the receiver, signed the way
//! GitHub signs its webhooks (`X-Hub-Signature-256: sha256=` + the hex
//! HMAC-SHA256 of the body under the signing key).
//!
//! The signing key is a destination-bound secret: this plugin only ever
//! holds its placeholder, and asks the host for the signature by writing
//! `{placeholder}.hmac-sha256-hex(body)` in the header. The host computes it
//! as the request leaves, and only toward the key's destination.

use keyhole_guest::{TaskError, context, http, secrets, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    url: String,
    payload: String,
}

#[derive(Serialize)]
struct Delivery {
    url: String,
    status: u16,
    response: String,
}

fn deliver(input: Input) -> Result<Delivery, TaskError> {
    let key = secrets::get("WEBHOOK_SIGNING_KEY")?;
    if !key.starts_with("khp_") {
        // Unbound, the value itself would go into the header: refuse.
        return Err(TaskError::new(
            "WEBHOOK_SIGNING_KEY is not bound to the receiver, so this task would hold the key itself; bind it: \
             `host secret bind WEBHOOK_SIGNING_KEY --namespace NS --destination <receiver origin>`",
        ));
    }
    let me = context::current();
    let response = http::post(&input.url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", &format!("sha256={key}.hmac-sha256-hex(body)"))
        .header("x-keyhole-execution", &me.execution_id)
        .body(input.payload)
        .send()?;
    if response.status >= 300 {
        return Err(TaskError::new(format!("the receiver answered {}: {}", response.status, response.text())));
    }
    Ok(Delivery { url: input.url, status: response.status, response: response.text() })
}

task!(deliver);
