//! Least privilege: which secrets a task may read. Deny by default.
//!
//! A task's [`Grants`] come from the flow (or `host exec --grant`). The only
//! way to obtain a [`Grant`], the token the store demands before it decrypts
//! anything, is [`Grants::check`].

use crate::names::SecretName;
use std::collections::BTreeSet;

/// The secrets one task may read. Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(BTreeSet<SecretName>);

/// Proof that the task's grants include this secret name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant(SecretName);

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
        Grants(names.into_iter().collect())
    }

    /// Grants nothing.
    pub fn none() -> Self {
        Grants::default()
    }

    /// Decides whether `requested` (as the plugin spelled it) may be read.
    /// Names are compared exactly: no wildcards, no case folding.
    pub fn check(&self, requested: &str) -> Result<Grant, Refusal> {
        let name =
            SecretName::new(requested).map_err(|_| Refusal::InvalidName(requested.chars().take(128).collect()))?;
        if self.0.contains(&name) { Ok(Grant(name)) } else { Err(Refusal::NotGranted(name)) }
    }

    /// The granted names, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &SecretName> {
        self.0.iter()
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Grant {
    /// The granted secret's name.
    pub fn name(&self) -> &SecretName {
        &self.0
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
}
