//! Deploying a flow is never a way to read a secret: who vouched for each
//! secret a revision names, and whether the revision waits for a second
//! person.
//!
//! A task receives only what its deployer may use. For every secret a flow
//! names (`secrets:`, `rotate:`, a webhook's key or signing secret;
//! [`Flow::secret_uses`]), the deployer needs `secret:use` **in the
//! namespace where the name resolves** (the nearest namespace of the flow's
//! chain that holds it), or in the flow's own namespace when it resolves
//! nowhere yet; `rotate:` needs `secret:write` there too. The namespace each
//! name was checked in is kept with the revision, and at run time the name
//! is served from there only (`backend::Router::lookup`): a secret set
//! closer later, or a farther one answering once the vouched one is gone,
//! is a decision nobody made, and the read is refused until someone
//! deploys the flow again.
//!
//! A protected secret (or one in a protected namespace) adds a second
//! person: a revision that *touches* it (grants it newly, resolves it
//! somewhere new, or changes anything of a task or trigger that holds it)
//! starts pending, and runs only once a principal holding `secret:use`
//! where it lives, who is not the deployer, approves it.
//!
//! Invariant: the decisions are here and nowhere else; this module reads
//! nothing itself (the caller passes where each name resolves and what is
//! protected) and writes nothing.

use crate::audit::Actor;
use crate::authz::{self, Forbidden, Permission, Principal};
use crate::flow::{Flow, FlowTask, SecretUse, UseKind};
use crate::names::{Namespace, SecretName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Who deploys or reviews: the root operator on the data directory's
/// machine (who holds every permission), or a principal of `host serve`.
#[derive(Debug, Clone)]
pub struct Voucher {
    /// As the audit trail names them.
    pub actor: Actor,
    /// The principal and its bindings; `None` for the root operator.
    pub principal: Option<Principal>,
}

impl Voucher {
    /// The operator running this process on the data directory.
    pub fn root() -> Self {
        Voucher { actor: Actor::current_user(), principal: None }
    }

    /// A principal of `host serve`.
    pub fn principal(principal: Principal) -> Self {
        let actor = Actor::Token { id: principal.id.clone(), name: principal.name.clone() };
        Voucher { actor, principal: Some(principal) }
    }

    /// Whether they hold `permission` in `namespace`.
    pub fn may(&self, permission: Permission, namespace: &Namespace) -> Result<(), Forbidden> {
        match &self.principal {
            None => Ok(()),
            Some(p) => authz::decide(p, permission, namespace),
        }
    }

    /// How listings name them: `NAME (tok-…)` or the OS user.
    pub fn label(&self) -> String {
        match &self.actor {
            Actor::Token { id, name } => format!("{name} ({id})"),
            Actor::Cli { user } => user.clone(),
            other => format!("{other:?}"),
        }
    }

    /// Who they are for a rule that asks for a second person: a token, or
    /// an operator at the command line. Two vouchers with the same person
    /// are one person.
    pub fn person(&self) -> String {
        match (&self.principal, &self.actor) {
            (Some(p), _) => p.person.clone(),
            (None, Actor::Cli { user }) => format!("operator {user}"),
            (None, other) => format!("{other:?}"),
        }
    }
}

/// One secret a revision names: where it resolved when the revision was
/// checked, where `secret:use` was checked, and whether it is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Vouch {
    /// The secret.
    pub secret: SecretName,
    /// Each use: `task notify (secrets)`, `trigger github (webhook signing secret)`.
    pub uses: Vec<String>,
    /// Where it resolved; `None`: nowhere yet.
    pub resolved_in: Option<Namespace>,
    /// Where `secret:use` was checked, and where the name is served from:
    /// `resolved_in`, or the flow's namespace.
    pub checked_in: Namespace,
    /// Whether it is protected there.
    #[serde(default)]
    pub protected: bool,
}

/// Everything a revision was vouched for, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Vouches {
    /// Who vouched (the deployer, or for a revision deployed before
    /// vouching, who approved it): `NAME (tok-…)` or an OS user.
    pub by: String,
    /// The same, for second-person rules.
    pub person: String,
    /// Each secret the revision names, by name.
    pub secrets: Vec<Vouch>,
    /// The protected secrets the revision touches: a second person must
    /// approve it before it runs (empty: it runs at once).
    #[serde(default)]
    pub review: Vec<SecretName>,
}

impl Vouches {
    /// Where each name is served from.
    pub fn locations(&self) -> BTreeMap<SecretName, Namespace> {
        self.secrets.iter().map(|v| (v.secret.clone(), v.checked_in.clone())).collect()
    }

    /// The vouch for `name`.
    pub fn get(&self, name: &SecretName) -> Option<&Vouch> {
        self.secrets.iter().find(|v| &v.secret == name)
    }
}

/// Why a voucher may not vouch for a revision: the permission, the
/// namespace and the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// What is missing, and where.
    pub forbidden: Forbidden,
    /// The secret that needs it.
    pub secret: SecretName,
    /// How the flow uses it.
    pub uses: String,
    /// Whether the name resolved there (else it resolves nowhere yet and
    /// was checked in the flow's namespace).
    pub resolved: bool,
    /// What the flow does with it: `makes a task receive`, `makes a task
    /// rotate`, `checks webhook requests with`.
    pub does: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let namespace = &self.forbidden.namespace;
        write!(f, "{}: the flow {} secret {} ({}), which ", self.forbidden, self.does, self.secret, self.uses)?;
        if self.resolved {
            write!(f, "resolves in namespace {namespace}")
        } else {
            write!(f, "resolves nowhere yet, so it is checked in the flow's namespace {namespace}")
        }
    }
}

impl std::error::Error for Refused {}

/// The revision now serving the flow, to tell what a new one touches.
#[derive(Debug, Clone, Copy)]
pub struct Serving<'a> {
    /// As it runs.
    pub flow: &'a Flow,
    /// What it was vouched for (`None`: deployed before vouching).
    pub vouches: Option<&'a Vouches>,
}

/// Checks that `who` may make `flow`'s tasks and triggers use every secret
/// it names, and says which protected secrets it touches compared with
/// `serving`. `locate` says where a name resolves for the flow;
/// `protected` whether a secret of a namespace is protected.
pub fn check<E>(
    who: &Voucher,
    flow: &Flow,
    serving: Option<Serving<'_>>,
    mut locate: impl FnMut(&SecretName) -> Result<Option<Namespace>, E>,
    mut protected: impl FnMut(&Namespace, &SecretName) -> Result<bool, E>,
) -> Result<Result<Vouches, Refused>, E> {
    let mut by_name: BTreeMap<SecretName, Vec<SecretUse>> = BTreeMap::new();
    for u in flow.secret_uses() {
        by_name.entry(u.name.clone()).or_default().push(u);
    }
    let mut secrets = Vec::new();
    let mut review = Vec::new();
    for (name, uses) in by_name {
        let resolved_in = locate(&name)?;
        let checked_in = resolved_in.clone().unwrap_or_else(|| flow.namespace.clone());
        let shown = uses.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut needed = vec![Permission::SecretUse];
        if uses.iter().any(|u| u.kind == UseKind::Rotate) {
            needed.push(Permission::SecretWrite);
        }
        for permission in needed {
            if let Err(forbidden) = who.may(permission, &checked_in) {
                let has = |k: UseKind| uses.iter().any(|u| u.kind == k);
                let does = match permission {
                    Permission::SecretUse if has(UseKind::Read) => "makes a task receive",
                    _ if has(UseKind::Rotate) => "makes a task rotate",
                    _ => "checks webhook requests with",
                };
                let resolved = resolved_in.is_some();
                return Ok(Err(Refused { forbidden, secret: name, uses: shown.join(", "), resolved, does }));
            }
        }
        let is_protected = protected(&checked_in, &name)?;
        if is_protected && touches(&name, &resolved_in, &uses, flow, serving) {
            review.push(name.clone());
        }
        secrets.push(Vouch { secret: name, uses: shown, resolved_in, checked_in, protected: is_protected });
    }
    Ok(Ok(Vouches { by: who.label(), person: who.person(), secrets, review }))
}

/// Whether a second person may approve a revision vouched for by
/// `vouches`: they hold `secret:use` where each protected secret it
/// touches lives, and they are not the person who vouched.
pub fn may_approve(who: &Voucher, vouches: &Vouches) -> Result<(), String> {
    if who.person() == vouches.person {
        return Err(format!(
            "{} deployed this revision and may not approve it: a second person must (see \"the same person\" in the README)",
            who.label()
        ));
    }
    for name in &vouches.review {
        let ns = vouches.get(name).map_or_else(Namespace::root, |v| v.checked_in.clone());
        who.may(Permission::SecretUse, &ns)
            .map_err(|e| format!("{e}: approving a revision that touches protected secret {name} needs it there"))?;
    }
    Ok(())
}

/// Whether the new revision touches `name` compared with the serving one:
/// grants it where the serving one did not, resolves it elsewhere, or
/// changes anything of a task or trigger that holds it.
fn touches(
    name: &SecretName,
    resolved_in: &Option<Namespace>,
    uses: &[SecretUse],
    flow: &Flow,
    serving: Option<Serving<'_>>,
) -> bool {
    let Some(serving) = serving else { return true };
    let before = serving.vouches.and_then(|v| v.get(name));
    if serving.vouches.is_some() && before.is_none_or(|v| &v.resolved_in != resolved_in) {
        return true;
    }
    let old_uses: Vec<SecretUse> = serving.flow.secret_uses().into_iter().filter(|u| &u.name == name).collect();
    uses.iter().any(|u| {
        if !old_uses.contains(u) {
            return true;
        }
        let id = u.by.split_once(' ').map_or("", |(_, id)| id);
        match u.kind {
            UseKind::Read | UseKind::Rotate => {
                let task = |f: &Flow| f.tasks.iter().find(|t| t.id.as_str() == id).map(task_definition);
                task(flow) != task(serving.flow)
            }
            UseKind::WebhookKey | UseKind::WebhookSignature => {
                let trigger =
                    |f: &Flow| f.triggers.iter().find(|t| t.id.as_str() == id).map(|t| format!("{:?}", t.kind));
                trigger(flow) != trigger(serving.flow)
            }
        }
    })
}

/// Everything of a task that decides what it does with what it holds: its
/// plugin (by digest), grants, phase, retry, failure handling, condition,
/// loop, gate, limits, network policy (allow-list and limits) and input.
/// Both sides are parsed by this same host at the same time, so their
/// `Debug` forms compare exactly.
fn task_definition(t: &FlowTask) -> String {
    format!(
        "{:?}",
        (
            &t.sha256,
            t.grants.iter().collect::<Vec<_>>(),
            t.rotate.iter().collect::<Vec<_>>(),
            t.phase,
            &t.retry,
            t.allow_failure,
            &t.condition,
            &t.for_each,
            &t.approval,
            &t.limits,
            &t.network,
            &t.input,
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Role, builtin};
    use std::convert::Infallible;

    fn ns(s: &str) -> Namespace {
        Namespace::new(s).unwrap()
    }

    fn flow(text: &str) -> Flow {
        let (mut f, _) = crate::flow::parse(text, "f.yaml", std::path::Path::new("/")).unwrap();
        for t in &mut f.tasks {
            t.sha256 = Some("aa".repeat(32));
        }
        f
    }

    fn token(bindings: &[(&str, &str)]) -> Voucher {
        let bindings = bindings.iter().map(|(r, n)| (builtin(r).unwrap(), ns(n))).collect();
        Voucher::principal(Principal { id: "tok-1".into(), name: "dev".into(), person: "token tok-1".into(), bindings })
    }

    /// `PARENT_DB` lives in `finance`; nothing is protected unless listed.
    fn run(who: &Voucher, f: &Flow, serving: Option<Serving<'_>>, protect: &[&str]) -> Result<Vouches, Refused> {
        let locate = |n: &SecretName| -> Result<_, Infallible> {
            Ok(match n.as_str() {
                "PARENT_DB" | "HOOK" => Some(ns("finance")),
                "LOCAL" => Some(ns("finance.reporting")),
                _ => None,
            })
        };
        let protected = |_: &Namespace, n: &SecretName| -> Result<_, Infallible> { Ok(protect.contains(&n.as_str())) };
        check(who, f, serving, locate, protected).unwrap()
    }

    const LEAK: &str =
        "id: innocent\nnamespace: finance.reporting\ntasks:\n  - id: t\n    plugin: p.wasm\n    secrets: [PARENT_DB]\n";

    #[test]
    fn flow_deploy_alone_reaches_no_secret_and_the_check_is_where_the_secret_lives() {
        let f = flow(LEAK);
        let e = run(&token(&[("developer", "finance.reporting")]), &f, None, &[]).unwrap_err();
        assert_eq!(e.forbidden.permission, Permission::SecretUse);
        assert_eq!(e.forbidden.namespace, ns("finance"), "where PARENT_DB resolves, not the flow's namespace");
        assert_eq!(
            e.to_string(),
            "permission secret:use is required in namespace finance: the flow makes a task receive secret PARENT_DB \
             (task t (secrets)), which resolves in namespace finance"
        );
        // secret:use at the flow's own namespace is not enough either.
        let e = run(&token(&[("builder", "finance.reporting")]), &f, None, &[]).unwrap_err();
        assert_eq!(e.forbidden.namespace, ns("finance"));
        let v = run(&token(&[("builder", "finance")]), &f, None, &[]).unwrap();
        assert_eq!((v.by.as_str(), v.person.as_str()), ("dev (tok-1)", "token tok-1"));
        assert_eq!(v.secrets[0].resolved_in, Some(ns("finance")));
        assert_eq!(v.locations()[&SecretName::new("PARENT_DB").unwrap()], ns("finance"));
        assert!(v.review.is_empty());
        // The root operator vouches for everything.
        assert!(run(&Voucher::root(), &f, None, &[]).is_ok());
    }

    #[test]
    fn a_name_that_resolves_nowhere_is_checked_in_the_flows_namespace() {
        let f = flow(&LEAK.replace("PARENT_DB", "NEW_ONE"));
        let e = run(&token(&[("developer", "finance.reporting")]), &f, None, &[]).unwrap_err();
        assert_eq!(e.forbidden.namespace, ns("finance.reporting"));
        assert!(
            e.to_string().ends_with("resolves nowhere yet, so it is checked in the flow's namespace finance.reporting")
        );
        let v = run(&token(&[("builder", "finance.reporting")]), &f, None, &[]).unwrap();
        assert_eq!(
            (v.secrets[0].resolved_in.clone(), v.secrets[0].checked_in.clone()),
            (None, ns("finance.reporting"))
        );
    }

    #[test]
    fn rotate_and_webhook_secrets_need_secret_use_and_rotate_needs_secret_write_too() {
        let rotate = flow(&LEAK.replace("secrets: [PARENT_DB]", "rotate: [PARENT_DB]"));
        let e = run(&token(&[("developer", "finance")]), &rotate, None, &[]).unwrap_err();
        assert_eq!(e.forbidden.permission, Permission::SecretUse);
        let e = run(&token(&[("builder", "finance")]), &rotate, None, &[]).unwrap_err();
        assert_eq!((e.forbidden.permission, e.uses.as_str()), (Permission::SecretWrite, "task t (rotate)"));
        assert!(e.to_string().contains("makes a task rotate secret PARENT_DB"), "{e}");
        let writer = Role { name: "w".into(), allow: vec![Permission::SecretWrite], deny: vec![] };
        let mut both = token(&[("builder", "finance")]);
        both.principal.as_mut().unwrap().bindings.push((writer, ns("finance")));
        assert!(run(&both, &rotate, None, &[]).is_ok());
        for hook in ["{key_secret: HOOK}", "{signature: {header: X-Sig, secret: HOOK}}"] {
            let text = format!(
                "id: h\nnamespace: finance.reporting\ntriggers:\n  - id: in\n    webhook: {hook}\ntasks:\n  - id: t\n    plugin: p.wasm\n"
            );
            let e = run(&token(&[("developer", "finance")]), &flow(&text), None, &[]).unwrap_err();
            assert_eq!((e.secret.as_str(), e.forbidden.namespace.as_str()), ("HOOK", "finance"), "{hook}");
            assert!(e.uses.starts_with("trigger in (webhook"), "{e}");
            assert!(e.to_string().contains("the flow checks webhook requests with secret HOOK"), "{e}");
        }
    }

    #[test]
    fn a_revision_touching_a_protected_secret_waits_for_a_second_person() {
        let builder = token(&[("builder", "finance")]);
        let v1 = run(&builder, &flow(LEAK), None, &["PARENT_DB"]).unwrap();
        assert_eq!(v1.review, vec![SecretName::new("PARENT_DB").unwrap()], "a first grant touches it");
        assert!(v1.secrets[0].protected);
        let serving_flow = flow(LEAK);
        let serving = Some(Serving { flow: &serving_flow, vouches: Some(&v1) });
        // The same task again: nothing touched.
        let same = run(&builder, &flow(&format!("{LEAK}description: again\n")), serving, &["PARENT_DB"]).unwrap();
        assert!(same.review.is_empty(), "{same:?}");
        // Anything of the holding task changed: its input, network, plugin, retry.
        let changes = [
            format!("{LEAK}    input: {{to: x}}\n"),
            format!("{LEAK}    network: {{allow: [\"http://127.0.0.1:18999\"]}}\n"),
            format!("{LEAK}    retry: {{max_attempts: 3}}\n"),
        ];
        for changed in changes {
            let v = run(&builder, &flow(&changed), serving, &["PARENT_DB"]).unwrap();
            assert_eq!(v.review.len(), 1, "{changed}");
        }
        let mut swapped = flow(LEAK);
        swapped.tasks[0].sha256 = Some("bb".repeat(32));
        assert_eq!(run(&builder, &swapped, serving, &["PARENT_DB"]).unwrap().review.len(), 1, "another plugin");
        // Another task newly granted it.
        let more = format!("{LEAK}  - id: u\n    plugin: p.wasm\n    secrets: [PARENT_DB]\n");
        assert_eq!(run(&builder, &flow(&more), serving, &["PARENT_DB"]).unwrap().review.len(), 1);
        // An unprotected secret never needs review.
        assert!(run(&builder, &flow(&more), serving, &[]).unwrap().review.is_empty());
    }

    #[test]
    fn only_someone_else_holding_secret_use_where_it_lives_approves() {
        let builder = token(&[("builder", "finance")]);
        let v = run(&builder, &flow(LEAK), None, &["PARENT_DB"]).unwrap();
        let e = may_approve(&builder, &v).unwrap_err();
        assert!(e.starts_with("dev (tok-1) deployed this revision and may not approve it"), "{e}");
        let other = |role: &str, at: &str| {
            let mut t = token(&[(role, at)]);
            t.principal.as_mut().unwrap().id = "tok-2".into();
            t.principal.as_mut().unwrap().person = "token tok-2".into();
            t.actor = Actor::Token { id: "tok-2".into(), name: "rev".into() };
            t
        };
        assert!(may_approve(&other("builder", "finance"), &v).is_ok());
        let e = may_approve(&other("builder", "finance.reporting"), &v).unwrap_err();
        assert!(e.contains("permission secret:use is required in namespace finance"), "{e}");
        assert!(may_approve(&other("approver", ""), &v).is_err(), "approving executions is not vouching");
        assert!(may_approve(&Voucher::root(), &v).is_ok(), "the root operator is another person");
    }
}
