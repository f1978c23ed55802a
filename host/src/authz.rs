//! Who may do what, where: permissions, roles, bindings and the one
//! decision ([`decide`]) every API route and every remote CLI command goes
//! through.
//!
//! The model is Kestra's (a subject holds bindings; a binding is a role at
//! a namespace; a role is a set of permissions), decided by Vault's rule:
//! among the bindings whose namespace covers the target (the namespace
//! itself or an ancestor; the root covers everything) and whose role
//! mentions the permission (allows or denies it), the narrowest decides; at
//! the same depth an explicit deny wins; a permission nothing mentions is
//! denied. So `admin` at the root plus a role denying `secret:destroy` at
//! `finance` leaves that one permission off in `finance` and below, and a
//! `runner` binding at `finance.reporting` reopens what a broader deny
//! closed only for that subtree.
//!
//! No permission reads a secret value: values go only to tasks. What a task
//! receives is vouched for when its flow is deployed: every secret a flow
//! names needs `secret:use` where that secret lives (decided in `vouch`), so
//! `flow:deploy` alone reaches no secret.
//!
//! Invariant: depends on nothing in the crate but `names`; deny by default.

use crate::names::Namespace;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One thing a principal may do in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    /// List secrets and read their metadata (never a value).
    #[serde(rename = "secret:list")]
    SecretList,
    /// Set, rotate and bind secrets.
    #[serde(rename = "secret:write")]
    SecretWrite,
    /// Revoke secrets.
    #[serde(rename = "secret:revoke")]
    SecretRevoke,
    /// Destroy (crypto-erase) and remove secrets.
    #[serde(rename = "secret:destroy")]
    SecretDestroy,
    /// Make a task receive a secret: deploy (or approve) a flow that names
    /// it, checked in the namespace where the secret lives.
    #[serde(rename = "secret:use")]
    SecretUse,
    /// Read deployed flows.
    #[serde(rename = "flow:read")]
    FlowRead,
    /// Deploy and remove flows.
    #[serde(rename = "flow:deploy")]
    FlowDeploy,
    /// Start executions.
    #[serde(rename = "execution:create")]
    ExecutionCreate,
    /// Read executions and follow their logs.
    #[serde(rename = "execution:read")]
    ExecutionRead,
    /// Cancel executions.
    #[serde(rename = "execution:cancel")]
    ExecutionCancel,
    /// Approve or reject a task waiting at an approval gate.
    #[serde(rename = "execution:approve")]
    ExecutionApprove,
    /// Read and verify the audit trail.
    #[serde(rename = "audit:read")]
    AuditRead,
    /// Configure secret backends.
    #[serde(rename = "backend:manage")]
    BackendManage,
    /// Create, list and revoke tokens; define roles.
    #[serde(rename = "token:manage")]
    TokenManage,
    /// Rotate the master key.
    #[serde(rename = "key:rotate")]
    KeyRotate,
}

impl Permission {
    /// Every permission, in a fixed order.
    pub const ALL: [Permission; 15] = [
        Permission::SecretList,
        Permission::SecretWrite,
        Permission::SecretRevoke,
        Permission::SecretDestroy,
        Permission::SecretUse,
        Permission::FlowRead,
        Permission::FlowDeploy,
        Permission::ExecutionCreate,
        Permission::ExecutionRead,
        Permission::ExecutionCancel,
        Permission::ExecutionApprove,
        Permission::AuditRead,
        Permission::BackendManage,
        Permission::TokenManage,
        Permission::KeyRotate,
    ];

    /// The written name, `secret:list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::SecretList => "secret:list",
            Permission::SecretWrite => "secret:write",
            Permission::SecretRevoke => "secret:revoke",
            Permission::SecretDestroy => "secret:destroy",
            Permission::SecretUse => "secret:use",
            Permission::FlowRead => "flow:read",
            Permission::FlowDeploy => "flow:deploy",
            Permission::ExecutionCreate => "execution:create",
            Permission::ExecutionRead => "execution:read",
            Permission::ExecutionCancel => "execution:cancel",
            Permission::ExecutionApprove => "execution:approve",
            Permission::AuditRead => "audit:read",
            Permission::BackendManage => "backend:manage",
            Permission::TokenManage => "token:manage",
            Permission::KeyRotate => "key:rotate",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
            format!("unknown permission {:?}: one of {}", s.chars().take(64).collect::<String>(), names.join(", "))
        })
    }
}

/// A named set of permissions allowed and denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Its name: a built-in one or an operator's.
    pub name: String,
    /// What it allows.
    pub allow: Vec<Permission>,
    /// What it denies (wins over an allow at the same depth).
    #[serde(default)]
    pub deny: Vec<Permission>,
}

impl Role {
    fn mention(&self, p: Permission) -> Option<bool> {
        if self.deny.contains(&p) {
            Some(false)
        } else if self.allow.contains(&p) {
            Some(true)
        } else {
            None
        }
    }
}

/// The built-in roles, by name.
pub fn builtin(name: &str) -> Option<Role> {
    use Permission::*;
    let allow: Vec<Permission> = match name {
        "admin" => Permission::ALL.to_vec(),
        "secret-manager" => vec![SecretList, SecretWrite, SecretRevoke],
        "developer" => vec![FlowRead, FlowDeploy, ExecutionCreate, ExecutionRead, ExecutionCancel],
        "builder" => vec![FlowRead, FlowDeploy, SecretUse, ExecutionCreate, ExecutionRead, ExecutionCancel],
        "runner" => vec![FlowRead, ExecutionCreate, ExecutionRead],
        "auditor" => vec![AuditRead, ExecutionRead, SecretList],
        "approver" => vec![ExecutionRead, ExecutionApprove],
        _ => return None,
    };
    Some(Role { name: name.to_owned(), allow, deny: Vec::new() })
}

/// The names of the built-in roles.
pub const BUILTIN_ROLES: [&str; 7] =
    ["admin", "secret-manager", "developer", "builder", "runner", "auditor", "approver"];

/// Built-in roles added after custom roles existed: a custom role an
/// operator defined under one of these names before it was built in keeps
/// its own meaning (nothing an upgrade does widens or narrows a token).
pub const LATER_BUILTINS: [&str; 1] = ["builder"];

/// Whether `name` may name a custom role: 1 to 64 of `a-z 0-9 - _`, not a
/// built-in name.
pub fn check_role_name(name: &str) -> Result<(), String> {
    let shown: String = name.chars().take(64).collect();
    if BUILTIN_ROLES.contains(&name) {
        return Err(format!("{shown:?} is a built-in role"));
    }
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!("invalid role name {shown:?}: 1 to 64 of a-z, 0-9, '-' and '_'"));
    }
    Ok(())
}

/// A role at a namespace, as stored with a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Binding {
    /// The role's name.
    pub role: String,
    /// Where it applies: this namespace and its children; the root is every namespace.
    pub namespace: Namespace,
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_root() {
            write!(f, "{} (every namespace)", self.role)
        } else {
            write!(f, "{} in {}", self.role, self.namespace)
        }
    }
}

/// Whether `scope` covers `target`: the same namespace or an ancestor.
pub fn covers(scope: &Namespace, target: &Namespace) -> bool {
    scope.is_root()
        || target.as_str() == scope.as_str()
        || target.as_str().strip_prefix(scope.as_str()).is_some_and(|rest| rest.starts_with('.'))
}

fn depth(ns: &Namespace) -> usize {
    if ns.is_root() { 0 } else { ns.as_str().split('.').count() }
}

/// Who is asking, with their roles resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The token's id.
    pub id: String,
    /// The token's name.
    pub name: String,
    /// Who they count as for a rule that wants a second person: the token
    /// of their chain of issuers that the root operator issued (`token
    /// tok-…`). Tokens one person issues to themselves are still them.
    pub person: String,
    /// Each binding with its role.
    pub bindings: Vec<(Role, Namespace)>,
}

/// Why a principal may not do something: what was missing and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission {permission} is required in namespace {namespace}{}", if *.denied { " (explicitly denied)" } else { "" })]
pub struct Forbidden {
    /// The permission asked for.
    pub permission: Permission,
    /// Where.
    pub namespace: Namespace,
    /// Whether a role denied it (rather than none allowing it).
    pub denied: bool,
}

/// Decides whether `principal` holds `permission` in `namespace` (see the
/// module doc for the rule).
pub fn decide(principal: &Principal, permission: Permission, namespace: &Namespace) -> Result<(), Forbidden> {
    let mut best: Option<(usize, bool)> = None;
    for (role, scope) in &principal.bindings {
        if !covers(scope, namespace) {
            continue;
        }
        let Some(allowed) = role.mention(permission) else { continue };
        let d = depth(scope);
        best = match best {
            Some((bd, _)) if bd > d => best,
            Some((bd, ballowed)) if bd == d => Some((d, ballowed && allowed)),
            _ => Some((d, allowed)),
        };
    }
    match best {
        Some((_, true)) => Ok(()),
        Some((_, false)) => Err(Forbidden { permission, namespace: namespace.clone(), denied: true }),
        None => Err(Forbidden { permission, namespace: namespace.clone(), denied: false }),
    }
}

/// Whether `principal` holds `permission` somewhere (in any namespace):
/// for routes that list across namespaces and filter each item.
pub fn holds_anywhere(principal: &Principal, permission: Permission) -> bool {
    principal
        .bindings
        .iter()
        .any(|(role, scope)| role.mention(permission) == Some(true) && decide(principal, permission, scope).is_ok())
}

/// Whether `creator` may issue a token binding `role` at `namespace`:
/// it needs `token:manage` there and must itself hold, there and in every
/// namespace below where it has a binding, each permission the role allows.
/// No one hands out more than they have.
pub fn may_delegate(creator: &Principal, role: &Role, namespace: &Namespace) -> Result<(), Forbidden> {
    decide(creator, Permission::TokenManage, namespace)?;
    for &p in &role.allow {
        decide(creator, p, namespace)?;
        for (_, scope) in &creator.bindings {
            if covers(namespace, scope) {
                decide(creator, p, scope)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ns(s: &str) -> Namespace {
        Namespace::new(s).unwrap()
    }

    #[test]
    fn custom_role_names_are_short_plain_and_never_a_built_in_one() {
        for good in ["deployer", "ci-bot_2", &"a".repeat(64)] {
            assert_eq!(check_role_name(good), Ok(()), "{good:?}");
        }
        // Empty, too long, upper case, a space, a terminal escape: a role
        // name is shown in listings and audit records.
        for bad in ["", &"a".repeat(65), "Deployer", "dev ops", "ops\u{1b}[2J"] {
            assert!(check_role_name(bad).unwrap_err().contains("1 to 64 of a-z"), "{bad:?}");
        }
        assert!(check_role_name("admin").unwrap_err().contains("built-in role"));
    }

    #[test]
    fn a_binding_reads_as_where_the_role_applies() {
        // What `host token list` and the console show an admin.
        let b = |role: &str, at: Namespace| Binding { role: role.into(), namespace: at };
        assert_eq!(b("runner", ns("team.ci")).to_string(), "runner in team.ci");
        assert_eq!(b("auditor", Namespace::root()).to_string(), "auditor (every namespace)");
    }

    fn who(bindings: &[(Role, &str)]) -> Principal {
        Principal {
            id: "t".into(),
            name: "t".into(),
            person: "token t".into(),
            bindings: bindings.iter().map(|(r, n)| (r.clone(), ns(n))).collect(),
        }
    }

    fn role(allow: &[Permission], deny: &[Permission]) -> Role {
        Role { name: "custom".into(), allow: allow.to_vec(), deny: deny.to_vec() }
    }

    #[test]
    fn a_binding_covers_its_namespace_and_children_only() {
        let p = who(&[(builtin("runner").unwrap(), "finance.reporting")]);
        let create = Permission::ExecutionCreate;
        assert!(decide(&p, create, &ns("finance.reporting")).is_ok());
        assert!(decide(&p, create, &ns("finance.reporting.eu")).is_ok());
        assert!(decide(&p, create, &ns("finance")).is_err(), "a parent is not covered");
        assert!(decide(&p, create, &ns("finance.reportingx")).is_err(), "a sibling with the same prefix");
        assert!(decide(&p, create, &ns("")).is_err());
        let e = decide(&p, Permission::SecretList, &ns("finance.reporting")).unwrap_err();
        assert_eq!(e.to_string(), "permission secret:list is required in namespace finance.reporting");
    }

    #[test]
    fn no_builtin_role_but_admin_holds_every_permission_and_none_reads_values() {
        for name in BUILTIN_ROLES {
            let r = builtin(name).unwrap();
            assert_eq!(r.allow.len() == Permission::ALL.len(), name == "admin", "{name}");
        }
        // The permission names are the whole vocabulary: nothing reads a value.
        assert!(Permission::ALL.iter().all(|p| !p.as_str().contains("read") || !p.as_str().starts_with("secret")));
    }

    #[test]
    fn only_admin_and_builder_may_make_a_task_receive_a_secret() {
        // `secret:use` is what deploying a flow that names a secret needs:
        // a developer deploys flows that use none, a builder those too.
        let holders: Vec<&str> =
            BUILTIN_ROLES.into_iter().filter(|n| builtin(n).unwrap().allow.contains(&Permission::SecretUse)).collect();
        assert_eq!(holders, ["admin", "builder"]);
        let (dev, builder) = (builtin("developer").unwrap(), builtin("builder").unwrap());
        assert!(dev.allow.iter().all(|p| builder.allow.contains(p)), "a builder may do what a developer may");
        assert_eq!(builder.allow.len(), dev.allow.len() + 1);
        assert_eq!("secret:use".parse::<Permission>(), Ok(Permission::SecretUse));
        assert!(check_role_name("builder").unwrap_err().contains("built-in role"));
    }

    #[test]
    fn the_narrowest_mention_decides_and_a_deny_wins_at_its_depth() {
        use Permission::*;
        let no_destroy = role(&[], &[SecretDestroy]);
        let p = who(&[(builtin("admin").unwrap(), ""), (no_destroy.clone(), "finance")]);
        assert!(decide(&p, SecretDestroy, &ns("marketing")).is_ok());
        let e = decide(&p, SecretDestroy, &ns("finance.eu")).unwrap_err();
        assert!(e.denied && e.to_string().ends_with("(explicitly denied)"), "{e}");
        assert!(decide(&p, SecretWrite, &ns("finance.eu")).is_ok(), "a deny of one permission leaves the rest");
        // A narrower allow reopens the subtree.
        let reopen = role(&[SecretDestroy], &[]);
        let p2 = who(&[(builtin("admin").unwrap(), ""), (no_destroy.clone(), "finance"), (reopen, "finance.eu")]);
        assert!(decide(&p2, SecretDestroy, &ns("finance.eu.x")).is_ok());
        assert!(decide(&p2, SecretDestroy, &ns("finance.us")).is_err());
        // At the same depth the deny wins, in either order.
        let both = who(&[(no_destroy.clone(), "finance"), (builtin("admin").unwrap(), "finance")]);
        assert!(decide(&both, SecretDestroy, &ns("finance")).is_err());
        let both = who(&[(builtin("admin").unwrap(), "finance"), (no_destroy.clone(), "finance")]);
        assert!(decide(&both, SecretDestroy, &ns("finance")).is_err());
        // The narrower binding decides whichever order the token lists them in.
        let narrow_first = who(&[(builtin("admin").unwrap(), "finance.eu"), (no_destroy, "finance")]);
        assert!(decide(&narrow_first, SecretDestroy, &ns("finance.eu")).is_ok());
        assert!(decide(&narrow_first, SecretDestroy, &ns("finance")).is_err());
    }

    #[test]
    fn bindings_that_do_not_mention_a_permission_do_not_hide_broader_ones() {
        let p = who(&[(builtin("auditor").unwrap(), ""), (builtin("runner").unwrap(), "finance.reporting")]);
        assert!(decide(&p, Permission::AuditRead, &ns("finance.reporting")).is_ok());
        assert!(holds_anywhere(&p, Permission::ExecutionCreate));
        assert!(!holds_anywhere(&p, Permission::FlowDeploy));
        // An allow that a deny at the same depth cancels is held nowhere.
        let cancelled =
            who(&[(builtin("runner").unwrap(), "finance"), (role(&[], &[Permission::ExecutionCreate]), "finance")]);
        assert!(!holds_anywhere(&cancelled, Permission::ExecutionCreate));
        assert!(holds_anywhere(&cancelled, Permission::ExecutionRead));
    }

    #[test]
    fn no_one_delegates_more_than_they_hold() {
        use Permission::*;
        let manager = role(&[TokenManage, FlowRead, ExecutionCreate, ExecutionRead], &[]);
        let p = who(&[(manager, "finance")]);
        let runner = builtin("runner").unwrap();
        assert!(may_delegate(&p, &runner, &ns("finance.reporting")).is_ok());
        assert!(may_delegate(&p, &runner, &ns("marketing")).is_err(), "outside its scope");
        assert!(may_delegate(&p, &runner, &ns("")).is_err(), "wider than its scope");
        let e = may_delegate(&p, &builtin("developer").unwrap(), &ns("finance")).unwrap_err();
        assert_eq!(e.permission, FlowDeploy);
        // A deny below the namespace is not reopened by a token bound above it.
        let closed = role(&[], &[ExecutionCreate]);
        let p2 = who(&[(builtin("admin").unwrap(), ""), (closed, "finance.secret")]);
        assert!(may_delegate(&p2, &runner, &ns("finance")).is_err());
        assert!(may_delegate(&p2, &runner, &ns("marketing")).is_ok());
    }

    fn any_namespace() -> impl Strategy<Value = Namespace> {
        proptest::collection::vec(prop_oneof!["a", "b", "ab"], 0..4).prop_map(|segs| ns(&segs.join(".")))
    }

    /// Three permissions, so that bindings mentioning the same one (the
    /// cases the rule is about) are common rather than rare.
    const FEW: [Permission; 3] = [Permission::SecretWrite, Permission::FlowRead, Permission::AuditRead];

    fn any_role() -> impl Strategy<Value = Role> {
        let perms = proptest::sample::subsequence(FEW.to_vec(), 0..3);
        (perms.clone(), perms).prop_map(|(allow, deny)| role(&allow, &deny))
    }

    proptest! {
        /// The rule in closed form: allowed exactly when some covering
        /// binding allows the permission and every covering deny is broader
        /// than the narrowest covering allow. Deny by default follows.
        #[test]
        fn the_decision_is_the_narrowest_mention_with_deny_winning_ties(
            bindings in proptest::collection::vec((any_role(), any_namespace()), 0..5),
            target in any_namespace(),
            which in 0..FEW.len(),
        ) {
            let perm = FEW[which];
            let p = Principal { id: "t".into(), name: "t".into(), person: "token t".into(), bindings: bindings.clone() };
            let covering = || bindings.iter().filter(|(_, s)| covers(s, &target));
            let allow = covering().filter(|(r, _)| r.allow.contains(&perm) && !r.deny.contains(&perm)).map(|(_, s)| depth(s)).max();
            let deny = covering().filter(|(r, _)| r.deny.contains(&perm)).map(|(_, s)| depth(s)).max();
            let expected = allow.is_some_and(|a| deny.is_none_or(|d| d < a));
            prop_assert_eq!(decide(&p, perm, &target).is_ok(), expected);
        }

        /// Holding a permission somewhere is holding it at one's own
        /// bindings: below them nothing new applies, and nothing else
        /// covers a namespace.
        #[test]
        fn holding_anywhere_is_holding_at_some_binding(
            bindings in proptest::collection::vec((any_role(), any_namespace()), 0..5),
            which in 0..FEW.len(),
        ) {
            let perm = FEW[which];
            let p = Principal { id: "t".into(), name: "t".into(), person: "token t".into(), bindings: bindings.clone() };
            let expected = bindings.iter().any(|(_, s)| decide(&p, perm, s).is_ok());
            prop_assert_eq!(holds_anywhere(&p, perm), expected);
        }

        #[test]
        fn covers_is_the_ancestor_relation(target in any_namespace(), scope in any_namespace()) {
            prop_assert_eq!(covers(&scope, &target), target.chain().contains(&scope));
        }
    }
}
