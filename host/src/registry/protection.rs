//! What is protected: a secret, or a namespace and those below it.

use super::{Registry, RegistryError};
use crate::audit::NewRecord;
use crate::crypto::MacDomain;
use crate::names::{Namespace, SecretName};
use crate::store::{fmt_time, now};
use rusqlite::params;
use serde::{Deserialize, Serialize};

/// One protected secret, or a whole protected namespace (and those below it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// Where.
    pub namespace: Namespace,
    /// The secret; `None`: every secret of the namespace and those below it.
    pub secret: Option<SecretName>,
    /// When (RFC 3339).
    pub created_at: String,
    /// By whom.
    pub created_by: String,
}

impl Registry {
    /// Every protection, by namespace and name.
    pub fn protections(&self) -> Result<Vec<Protection>, RegistryError> {
        self.protection_rows("1", [])
    }

    fn protection_rows(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<Protection>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT namespace, name, created_at, created_by, mac FROM protections WHERE {filter} ORDER BY namespace, name"
            ))
            .map_err(self.err("read protections"))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .map_err(self.err("read protections"))?;
        let mut out = Vec::new();
        for row in rows {
            let (ns, name, at, by, mac) = row.map_err(self.err("read protections"))?;
            let what =
                if name == "*" { format!("namespace {ns:?}") } else { format!("secret {name:?} in namespace {ns:?}") };
            let fields = [ns.as_bytes(), name.as_bytes(), &at.to_be_bytes(), by.as_bytes()];
            let namespace =
                Namespace::new(&ns).map_err(|_| RegistryError::ProtectionTampered { what: what.clone() })?;
            let secret = match name.as_str() {
                "*" => None,
                n => Some(SecretName::new(n).map_err(|_| RegistryError::ProtectionTampered { what: what.clone() })?),
            };
            if !self.integrity.verify(MacDomain::ProtectionRow, &fields, &mac) {
                return Err(RegistryError::ProtectionTampered { what });
            }
            out.push(Protection { namespace, secret, created_at: fmt_time(at), created_by: by });
        }
        Ok(out)
    }

    /// Whether secret `name` of `namespace` is protected: itself, or its
    /// namespace or one above it as a whole.
    pub fn is_protected(&self, namespace: &Namespace, name: &SecretName) -> Result<bool, RegistryError> {
        let chain: Vec<String> = namespace.chain().iter().map(|n| n.as_str().to_owned()).collect();
        let found = self.protection_rows(
            "(namespace = ?1 AND name = ?2) OR (name = '*' AND namespace IN (SELECT value FROM json_each(?3)))",
            params![namespace.as_str(), name.as_str(), serde_json::to_string(&chain).expect("names encode")],
        )?;
        Ok(!found.is_empty())
    }

    /// Protects (`on`) or unprotects secret `secret` of `namespace` (or the
    /// whole namespace: `None`), committed with `audit`. Returns whether
    /// anything changed (protecting twice, or unprotecting what is not,
    /// changes nothing and records nothing).
    pub fn set_protection(
        &self,
        namespace: &Namespace,
        secret: Option<&SecretName>,
        on: bool,
        by: &str,
        audit: &NewRecord,
    ) -> Result<bool, RegistryError> {
        let name = secret.map_or("*", SecretName::as_str);
        let tx = self.begin()?;
        let changed = if on {
            let at = now();
            let fields = [namespace.as_str().as_bytes(), name.as_bytes(), &at.to_be_bytes(), by.as_bytes()];
            let mac = self.integrity.mac(MacDomain::ProtectionRow, &fields);
            tx.execute(
                "INSERT OR IGNORE INTO protections (namespace, name, created_at, created_by, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![namespace.as_str(), name, at, by, mac.to_vec()],
            )
        } else {
            tx.execute("DELETE FROM protections WHERE namespace = ?1 AND name = ?2", params![namespace.as_str(), name])
        }
        .map_err(self.err("change a protection"))?;
        if changed > 0 {
            crate::audit::append(&tx, &self.integrity, audit).map_err(self.err("write the audit record"))?;
        }
        tx.commit().map_err(self.err("commit a protection"))?;
        Ok(changed > 0)
    }
}
