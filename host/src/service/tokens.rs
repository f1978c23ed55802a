//! Issuing and revoking tokens, and defining roles: who may, what is
//! recorded.

use super::{Plane, ServiceError, refuse};
use crate::audit::{Action, NewRecord};
use crate::authz::{self, Binding, Permission, Role};
use crate::names::Namespace;
use crate::tokens::{TokenInfo, TokenSecret, Tokens};
use crate::vouch::Voucher;
use std::time::Duration;

/// A token to issue: one role, where it applies, and for how long.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Unique among live tokens.
    pub name: String,
    /// A built-in or custom role.
    pub role: String,
    /// Where the role applies: this namespace and below.
    pub namespace: Namespace,
    /// Its lifetime; `None`: as long as it may live.
    pub ttl: Option<Duration>,
}

/// Issues a token as `who`. A principal needs `token:manage` where the
/// token applies and every permission of the role there (it delegates
/// nothing it lacks); what it issues lives no longer than it does. With
/// `max_ttl` (a server's `--max-token-ttl`) every token expires: a longer
/// `ttl` is refused and none asked for gets the maximum. Returns the token:
/// the only time it is ever available.
pub fn issue(
    plane: &impl Plane,
    who: &Voucher,
    req: IssueRequest,
    max_ttl: Option<Duration>,
) -> Result<(TokenInfo, TokenSecret), ServiceError> {
    let tokens = &*plane.tokens();
    let record = |rec: &NewRecord| tokens.record(rec);
    let ttl = match (req.ttl, max_ttl) {
        (Some(t), Some(max)) if t > max => {
            return Err(ServiceError::Invalid(format!(
                "ttl: {} is longer than this server allows ({}, its --max-token-ttl)",
                crate::limits::show_duration(t),
                crate::limits::show_duration(max)
            )));
        }
        (ttl, max) => ttl.or(max),
    };
    let role = tokens.role(&req.role)?;
    if let Some(p) = &who.principal
        && let Err(e) = authz::may_delegate(p, &role, &req.namespace)
    {
        let why = format!("issue token {:?} with {} in {}: {e}", req.name, req.role, req.namespace);
        return Err(refuse(record, who, Action::TokenCreate, &e.namespace, None, Some(e.permission), why));
    }
    let binding = Binding { role: req.role, namespace: req.namespace.clone() };
    let issuer = who.principal.as_ref().map(|p| p.id.as_str());
    let audit = |info: &TokenInfo| {
        NewRecord::ok(&who.actor, Action::TokenCreate, &req.namespace, None)
            .reason(format!("token {} ({}) with {binding}", info.name, info.id))
            .detail_field("token", info.id.clone())
    };
    Ok(tokens.create(&req.name, vec![binding.clone()], ttl, &who.label(), issuer, audit)?)
}

/// Whether `who` manages `t`: `token:manage` wherever it applies.
fn manages(who: &Voucher, t: &TokenInfo) -> bool {
    t.bindings.iter().all(|b| who.may(Permission::TokenManage, &b.namespace).is_ok())
}

/// Every token `who` manages, oldest first (revoked ones included, marked).
pub fn list(plane: &impl Plane, who: &Voucher) -> Result<Vec<TokenInfo>, ServiceError> {
    Ok(plane.tokens().list()?.into_iter().filter(|t| manages(who, t)).collect())
}

/// Revokes a token (by name or id) as `who`, who needs `token:manage`
/// wherever it applies; it authenticates no one from now on, nor does
/// anything it issued.
pub fn revoke(plane: &impl Plane, who: &Voucher, token: &str) -> Result<TokenInfo, ServiceError> {
    let tokens = &*plane.tokens();
    let info = tokens.get(token)?;
    if !manages(who, &info) {
        let at = info.bindings.iter().map(|b| &b.namespace).find(|n| who.may(Permission::TokenManage, n).is_err());
        let at = at.cloned().unwrap_or_default();
        let why = format!("permission token:manage is required in namespace {at} to revoke token {}", info.name);
        let record = |rec: &NewRecord| tokens.record(rec);
        return Err(refuse(record, who, Action::TokenRevoke, &at, None, Some(Permission::TokenManage), why));
    }
    let audit = |t: &TokenInfo| {
        NewRecord::ok(&who.actor, Action::TokenRevoke, &Namespace::root(), None)
            .reason(format!("token {} ({})", t.name, t.id))
            .detail_field("token", t.id.clone())
    };
    Ok(tokens.revoke(&info.id, audit)?)
}

/// Only the root operator defines roles: a role is what every binding to
/// it means, in every namespace.
fn root_only(tokens: &Tokens, who: &Voucher, what: String) -> Result<(), ServiceError> {
    if who.principal.is_none() {
        return Ok(());
    }
    let why = format!("{what}: only the operator on the data directory's machine defines roles");
    let record = |rec: &NewRecord| tokens.record(rec);
    Err(refuse(record, who, Action::RoleChange, &Namespace::root(), None, None, why))
}

/// Defines (or redefines) a custom role as `who` (the root operator).
pub fn define_role(plane: &impl Plane, who: &Voucher, role: &Role) -> Result<(), ServiceError> {
    let tokens = &*plane.tokens();
    root_only(tokens, who, format!("define role {}", role.name))?;
    authz::check_role_name(&role.name).map_err(ServiceError::Invalid)?;
    let rec = NewRecord::ok(&who.actor, Action::RoleChange, &Namespace::root(), None)
        .reason(format!("role {} defined", role.name))
        .detail_field("role", serde_json::to_value(role).expect("roles encode"));
    Ok(tokens.define_role(role, &rec)?)
}

/// Removes a custom role no live token is bound to, as `who` (the root
/// operator).
pub fn remove_role(plane: &impl Plane, who: &Voucher, name: &str) -> Result<(), ServiceError> {
    let tokens = &*plane.tokens();
    root_only(tokens, who, format!("remove role {name}"))?;
    let rec =
        NewRecord::ok(&who.actor, Action::RoleChange, &Namespace::root(), None).reason(format!("role {name} removed"));
    Ok(tokens.remove_role(name, &rec)?)
}
