//! The API's own gate, on the record: a request whose credentials do not
//! authenticate, and a principal refused a route's permission. The
//! extractor decides (through `tokens` and `authz`); what is recorded, and
//! in which words, is written here.

use super::{Plane, ServiceError, denied, recorded};
use crate::audit::{Action, Actor, NewRecord, Outcome};
use crate::authz::Permission;
use crate::names::Namespace;

/// A request (`what`: its method and path) whose credentials did not
/// authenticate (`why`, never the token), from `peer`.
pub fn authentication_failed(plane: &impl Plane, what: &str, why: &str, peer: &str) -> Result<(), ServiceError> {
    let rec = NewRecord::ok(&Actor::Server, Action::AuthFailed, &Namespace::root(), None)
        .outcome(Outcome::Denied)
        .reason(format!("{what}: {why}"))
        .detail_field("peer", peer.to_owned());
    recorded(plane, rec)
}

/// `who` refused `permission` at `ns` for request `what` (`message` says
/// which binding is missing).
pub fn route_denied(
    plane: &impl Plane,
    who: &Actor,
    ns: &Namespace,
    what: &str,
    permission: Permission,
    message: &str,
) -> Result<(), ServiceError> {
    recorded(plane, denied(who, Action::ApiDenied, ns, None, Some(permission), format!("{what}: {message}")))
}
