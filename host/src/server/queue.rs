//! The API's side of queuing an execution: the caller as its origin, and
//! the `Idempotency-Key` header. The queuing itself (its audit record, the
//! namespace's quota) is [`crate::service::executions::queue`], which
//! webhooks and schedules call too.

use super::extract::Caller;
pub use crate::service::executions::Origin;
use serde_json::Map;

impl Origin {
    /// A principal calling the API, with its own idempotency key.
    pub fn api(caller: &Caller, idempotency_key: Option<&str>) -> Self {
        Origin {
            actor: caller.actor.clone(),
            by: format!("{} ({})", caller.info.name, caller.info.id),
            trigger: "api".into(),
            context: crate::trigger::context("api", None, Map::new()),
            // Keys are the caller's own: another principal's key finds nothing.
            idempotency_key: idempotency_key.map(|k| format!("{}:{k}", caller.info.id)),
            person: Some(caller.principal.person.clone()),
        }
    }
}

/// An `Idempotency-Key` header's value, if it is one: 1 to 128 visible
/// ASCII characters.
pub fn idempotency_key(v: &axum::http::HeaderValue) -> Option<&str> {
    v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 128)
}
