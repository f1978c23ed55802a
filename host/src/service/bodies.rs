//! The request and answer bodies of the API, declared once: the server
//! reads requests and writes answers, the remote CLI the other way round,
//! and the OpenAPI document describes both (`JsonSchema`). A field renamed
//! here is renamed on both sides.
//!
//! Invariant: a secret value travels only in [`PutSecret::value`], whose
//! type the reader chooses (the server a zeroizing `SecretValue`, the CLI
//! a borrowed `&str` written into a zeroizing buffer); no answer holds one.

use crate::names::{Namespace, SecretName};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `PUT /api/v1/secrets/{ns}/{name}`: store, rotate or stage a value.
/// Its `Debug` shows `***` for the value, whatever type carries it.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, bound(deserialize = "V: Deserialize<'de>"))]
pub struct PutSecret<V> {
    /// The value; or `generate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<V>,
    /// Generate a random value instead (the answer never holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generate>,
    /// A new version of an existing secret rather than a first one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rotate: bool,
    /// How long the version lives (`90d`, `12h`, `3600s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    /// How many versions to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// Bind it to these destinations (`scheme://host[:port]`) in the same
    /// change: never a moment where the new value is unbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations: Option<Vec<String>>,
    /// Stage it instead of making it current (`rotate` implied).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub staged: bool,
}

impl<V> std::fmt::Debug for PutSecret<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutSecret")
            .field("value", &self.value.as_ref().map(|_| "***"))
            .field("generate", &self.generate)
            .field("rotate", &self.rotate)
            .field("expires_in", &self.expires_in)
            .field("keep", &self.keep)
            .field("destinations", &self.destinations)
            .field("staged", &self.staged)
            .finish()
    }
}

/// A value the server generates.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    /// Characters (or bytes, for `hex` and `base64`).
    pub length: usize,
    /// `alnum` (the default), `hex`, `base64` or `ascii`.
    #[serde(default = "alnum")]
    pub charset: crate::secret::Charset,
}

fn alnum() -> crate::secret::Charset {
    crate::secret::Charset::Alnum
}

/// `PUT /api/v1/secrets/{ns}/{name}/destinations`: where the host may
/// inject the secret (`scheme://host[:port]` each).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BindSecret {
    /// The destinations; empty unbinds.
    pub destinations: Vec<String>,
}

/// `POST /api/v1/executions/{id}/approve|reject`: a decision at a gate.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// The gate's task id.
    pub task: String,
    /// Why, for the record (up to 1,000 characters are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `POST /api/v1/flows`: a flow to deploy, its plugins already uploaded.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// The file name it came from (shown in `flow show`).
    pub file: String,
    /// The flow's YAML.
    pub source: String,
    /// Each task's plugin, by the SHA-256 of an uploaded plugin.
    pub plugins: BTreeMap<String, String>,
}

/// `POST /api/v1/flows/{ns}/{flow}/revisions/{n}/approve|reject`.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Review {
    /// Why, for the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `POST /api/v1/tokens`: a token for a principal.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Unique among live tokens.
    pub name: String,
    /// A built-in or custom role.
    pub role: String,
    /// Where the role is bound (and below); the root when absent.
    #[serde(default)]
    pub namespace: Namespace,
    /// How long it lives (`30d`, `12h`); at most the server's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// The answer to a change of a secret's value: stored, staged, committed
/// or discarded. Never the value.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SecretWritten {
    /// Where it lives.
    pub namespace: Namespace,
    /// The secret.
    pub name: SecretName,
    /// The version stored, staged, committed or discarded.
    pub version: String,
    /// It was staged, not made current.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub staged: bool,
    /// The staged version is now current.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub committed: bool,
    /// The staged version was erased.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discarded: bool,
}

/// The answer to `PUT .../destinations`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SecretBound {
    /// Where it lives.
    pub namespace: Namespace,
    /// The secret.
    pub name: SecretName,
    /// Where the host may now inject it.
    pub destinations: Vec<String>,
}

/// The answer to `POST /api/v1/tokens`: the token, shown this once, and
/// its description. Its `Debug` shows `***` for the token.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct IssuedToken {
    /// The bearer token (`kh_...`): store it now, it is never shown again.
    pub token: String,
    /// Its description.
    pub info: crate::tokens::TokenInfo,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken").field("token", &"***").field("info", &self.info).finish()
    }
}

/// The answer to `POST /api/v1/executions/{ns}/{flow}`: the execution
/// queued (or found again by its idempotency key), as it stands.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Queued {
    /// Its id.
    pub id: String,
    /// `queued`, or how it ended when the request waited (`?wait=`).
    pub status: crate::executions::ExecutionStatus,
    /// A new execution, not one found by its idempotency key.
    pub created: bool,
    /// Its whole record.
    pub execution: crate::executions::ExecutionRecord,
}

/// The answer to `POST /api/v1/executions/{id}/cancel`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CancelAnswer {
    /// The execution.
    pub id: String,
    /// `cancelled` (it was queued) or `cancelling` (its worker stops it).
    pub status: String,
    /// Always true: a cancel that changes nothing is a 409.
    pub cancelled: bool,
}

/// The answer to a decision at a gate.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Decided {
    /// The execution.
    pub id: String,
    /// The gate's task.
    pub task: String,
    /// `approved` or `rejected`.
    pub decision: String,
}

/// The answer to `PUT|DELETE .../protection`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ProtectionChanged {
    /// The namespace (and below, for a namespace's protection).
    pub namespace: Namespace,
    /// The secret, for a secret's protection.
    pub secret: Option<SecretName>,
    /// Whether it is protected now.
    pub protected: bool,
    /// Whether this request changed it.
    pub changed: bool,
}

/// The answer to revoking (`POST .../revoke`) or destroying (`DELETE`) a
/// secret: which it was, and what it did, in words.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SecretEnded {
    /// The secret, when it was revoked (every read refused, history kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<SecretName>,
    /// The secret, when it was destroyed (every version erased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed: Option<SecretName>,
    /// Where it lived.
    pub namespace: Namespace,
    /// What was done (the versions, the backend's answer).
    pub done: String,
}

/// The answer to `PUT /api/v1/plugins/{sha256}`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PluginStored {
    /// The plugin's SHA-256.
    pub sha256: String,
    /// Whether it was new (201) rather than already stored (200).
    pub stored: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Neither a value on its way in nor a token on its way out shows in
    /// `Debug` (a log line, a panic message), whatever carries it.
    #[test]
    fn debug_never_shows_a_value_or_a_token() {
        let put = PutSecret {
            value: Some("plain-value-7c1e"),
            generate: None,
            rotate: true,
            expires_in: None,
            keep: None,
            destinations: None,
            staged: false,
        };
        let shown = format!("{put:?}");
        assert!(!shown.contains("plain-value-7c1e") && shown.contains("***"), "{shown}");
        let issued: IssuedToken = serde_json::from_value(serde_json::json!({
            "token": "kh_secret-token-51aa",
            "info": {"id": "tok-1", "name": "ci", "bindings": [], "created": "2026-12-08T00:00:00Z",
                     "expires": null, "revoked": null, "last_used": null, "created_by": "root", "state": "active"}
        }))
        .unwrap();
        let shown = format!("{issued:?}");
        assert!(!shown.contains("secret-token-51aa") && shown.contains("tok-1"), "{shown}");
    }
}

/// The answer to `GET /api/v1/executions/{id}/access`: what its tasks did
/// at the trust boundary, from the audit trail; never a value.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionAccess {
    /// The execution.
    pub execution: String,
    /// Each secret read, lease, staged, committed or discarded version.
    pub secrets: Vec<SecretUse>,
    /// Each outbound request that was sent or failed.
    pub requests: Vec<RequestMade>,
}

/// One secret access of an execution.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SecretUse {
    /// When (RFC 3339).
    pub time: String,
    /// The task.
    pub task: Option<String>,
    /// `secret.read`, `secret.lease`, `secret.stage`, `secret.commit` or `secret.discard`.
    pub action: String,
    /// The secret.
    pub secret: Option<String>,
    /// Its version, when known.
    pub version: Option<u64>,
    /// The released value's fingerprint (HMAC under the audit key), when enabled.
    pub fingerprint: Option<String>,
    /// `granted`, `denied`, `not-found`, ...
    pub outcome: String,
}

/// One outbound request of an execution.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RequestMade {
    /// When (RFC 3339).
    pub time: String,
    /// The task.
    pub task: Option<String>,
    /// The HTTP method.
    pub method: Option<String>,
    /// Where it went (scheme, host and port).
    pub destination: Option<String>,
    /// Its path.
    pub path: Option<String>,
    /// `sent` or `failed`.
    pub outcome: String,
    /// Why it failed, or what was injected (never a value).
    pub reason: Option<String>,
}

/// The answer to `GET /api/v1/flows/{ns}/{id}`: the revision that serves
/// the flow (or, when none does yet, the newest pending one), the newer
/// revisions waiting for review, and what each task may reach, as the
/// console shows it.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct FlowShown {
    /// The revision.
    #[serde(flatten)]
    pub deployed: crate::registry::Deployed,
    /// Newer revisions pending review.
    pub pending: Vec<u64>,
    /// The flow's declared inputs, as in its file.
    pub inputs: serde_json::Value,
    /// Each task and what it may reach.
    pub tasks: Vec<TaskReach>,
    /// Each trigger.
    pub triggers: Vec<TriggerShown>,
}

/// What one task of a flow may reach.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskReach {
    /// The task.
    pub id: String,
    /// `tasks`, `errors` or `finally`.
    pub phase: String,
    /// The secrets it may read.
    pub secrets: Vec<String>,
    /// The secrets it may rotate.
    pub rotate: Vec<String>,
    /// The destinations it may call.
    pub network: Vec<String>,
    /// The permission an approver needs, when it waits for approval.
    pub approval: Option<String>,
    /// Whether it runs once per item.
    pub for_each: bool,
    /// Whether its failure lets the flow go on.
    pub allow_failure: bool,
}

/// One trigger of a flow.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TriggerShown {
    /// Fires on a cron pattern.
    Schedule {
        /// The trigger.
        id: String,
        /// The cron pattern.
        cron: String,
        /// Its time zone.
        timezone: String,
        /// The next firing (RFC 3339), when there is one.
        next: Option<String>,
    },
    /// Starts the flow when a request proves itself.
    Webhook {
        /// The trigger.
        id: String,
        /// How the sender proves itself (never the key).
        auth: String,
    },
}

/// The answer to `GET /api/v1/health`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ok`, or `stopping` once a shutdown began.
    pub status: String,
}
