//! Signs a webhook payload with HMAC-SHA256 under the granted secret
//! `WEBHOOK_SIGNING_KEY`, the way GitHub and Stripe sign their webhooks. The
//! key never leaves the sandbox: only the signature does.

use hmac::{Hmac, Mac};
use keyhole_guest::{TaskError, log, secrets, task};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

#[derive(Deserialize)]
struct Input {
    /// The exact bytes to sign, as text.
    payload: String,
}

#[derive(Serialize)]
struct Output {
    algorithm: &'static str,
    /// `sha256=` followed by the lowercase hex HMAC, as in the
    /// `X-Hub-Signature-256` header.
    signature: String,
    payload_bytes: usize,
}

fn sign(input: Input) -> Result<Output, TaskError> {
    if input.payload.is_empty() {
        return Err(TaskError::new("payload is empty: nothing to sign"));
    }
    let key = secrets::get("WEBHOOK_SIGNING_KEY")?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(|e| TaskError::new(format!("bad signing key: {e}")))?;
    mac.update(input.payload.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    log::info(&format!("signed {} bytes", input.payload.len()));
    Ok(Output { algorithm: "hmac-sha256", signature, payload_bytes: input.payload.len() })
}

task!(sign);
