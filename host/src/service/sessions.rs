//! Console sessions, signing in and out: each on the record before it
//! takes effect (a session that cannot be recorded is never opened, and
//! one whose end cannot be recorded stays open). The sessions themselves
//! (cookies, CSRF tokens, idle timeouts) live in the server's memory.

use super::{Plane, ServiceError, recorded};
use crate::audit::{Action, Actor, NewRecord};
use crate::names::Namespace;
use crate::tokens::TokenInfo;

/// Records that `who` (token `token`) opens a console session, then
/// `open`s it.
pub fn sign_in<T>(
    plane: &impl Plane,
    who: &Actor,
    token: &TokenInfo,
    open: impl FnOnce() -> T,
) -> Result<T, ServiceError> {
    let why = format!("web console session for token {} ({})", token.name, token.id);
    recorded(plane, NewRecord::ok(who, Action::SessionCreate, &Namespace::root(), None).reason(why))?;
    Ok(open())
}

/// Records that `who` (token `token`) ends its console session, then
/// `close`s it.
pub fn sign_out<T>(
    plane: &impl Plane,
    who: &Actor,
    token: &TokenInfo,
    close: impl FnOnce() -> T,
) -> Result<T, ServiceError> {
    let why = format!("web console session of token {} ({})", token.name, token.id);
    recorded(plane, NewRecord::ok(who, Action::SessionEnd, &Namespace::root(), None).reason(why))?;
    Ok(close())
}
