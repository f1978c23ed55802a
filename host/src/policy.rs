//! Least privilege: which secrets a task may read. Deny by default.
//!
//! A task's [`Grants`] come from the flow (or `host exec --grant`). The only
//! way to obtain a [`Grant`], the token the store demands before it decrypts
//! anything, is [`Grants::check`].
//!
//! A deployed revision's grants also say where each name was vouched for
//! (the namespace it resolved in when someone holding `secret:use` there
//! deployed or approved it; [`Grants::located`]): the chain walk then
//! serves the name only from there (`backend::Router::lookup`).

use crate::names::{Namespace, SecretName};
use std::collections::{BTreeMap, BTreeSet};

/// The secrets one task may read. Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    names: BTreeSet<SecretName>,
    /// Where a name must resolve, when a deploy vouched for it.
    at: BTreeMap<SecretName, Namespace>,
}

/// Proof that the task's grants include this secret name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    name: SecretName,
    at: Option<Namespace>,
}

/// Why a request was refused by policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The name is valid but was not granted to this task.
    #[error("secret {0} is not granted to this task")]
    NotGranted(SecretName),
    /// The name is not a valid secret name, so it cannot have been granted.
    #[error("{0:?} is not a valid secret name, so it cannot be granted")]
    InvalidName(String),
}

impl Grants {
    /// Grants exactly `names`.
    pub fn new(names: impl IntoIterator<Item = SecretName>) -> Self {
        Grants { names: names.into_iter().collect(), at: BTreeMap::new() }
    }

    /// Grants nothing.
    pub fn none() -> Self {
        Grants::default()
    }

    /// These grants, each name in `at` served only from the namespace given
    /// there (where a deploy vouched for it). Names not in `at` stay free to
    /// resolve anywhere in the chain (a revision deployed before vouching).
    pub fn located(mut self, at: &BTreeMap<SecretName, Namespace>) -> Self {
        self.at = self.names.iter().filter_map(|n| Some((n.clone(), at.get(n)?.clone()))).collect();
        self
    }

    /// Decides whether `requested` (as the plugin spelled it) may be read.
    /// Names are compared exactly: no wildcards, no case folding.
    pub fn check(&self, requested: &str) -> Result<Grant, Refusal> {
        let name =
            SecretName::new(requested).map_err(|_| Refusal::InvalidName(requested.chars().take(128).collect()))?;
        if self.names.contains(&name) {
            let at = self.at.get(&name).cloned();
            Ok(Grant { name, at })
        } else {
            Err(Refusal::NotGranted(name))
        }
    }

    /// The granted names, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &SecretName> {
        self.names.iter()
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Grant {
    /// The granted secret's name.
    pub fn name(&self) -> &SecretName {
        &self.name
    }

    /// The namespace it must resolve in, if a deploy vouched for it there.
    pub fn vouched_at(&self) -> Option<&Namespace> {
        self.at.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(names: &[&str]) -> Grants {
        Grants::new(names.iter().map(|n| SecretName::new(n).unwrap()))
    }

    #[test]
    fn nothing_is_granted_by_default() {
        assert!(matches!(Grants::none().check("ANY"), Err(Refusal::NotGranted(_))));
        assert!(Grants::none().is_empty() && Grants::default().is_empty());
        assert!(!grants(&["A"]).is_empty(), "a grant is not nothing");
    }

    #[test]
    fn only_exact_names_are_granted() {
        let g = grants(&["DB_PASSWORD"]);
        assert_eq!(g.check("DB_PASSWORD").unwrap().name().as_str(), "DB_PASSWORD");
        assert!(g.check("db_password").is_err());
        assert!(g.check("DB_PASSWORD ").is_err());
        assert!(g.check("DB_*").is_err());
        assert!(matches!(g.check("../x"), Err(Refusal::InvalidName(_))));
    }

    #[test]
    fn a_located_grant_carries_where_it_was_vouched_for_and_grants_nothing_more() {
        let ns = |s: &str| Namespace::new(s).unwrap();
        let at: BTreeMap<SecretName, Namespace> =
            [("DB", "finance"), ("OTHER", "x")].map(|(n, s)| (SecretName::new(n).unwrap(), ns(s))).into();
        let g = grants(&["DB", "API"]).located(&at);
        assert_eq!(g.check("DB").unwrap().vouched_at(), Some(&ns("finance")));
        assert_eq!(g.check("API").unwrap().vouched_at(), None, "not vouched: free to resolve (an old revision)");
        assert!(matches!(g.check("OTHER"), Err(Refusal::NotGranted(_))), "a location is not a grant");
        assert_eq!(g.iter().count(), 2);
    }
}
