//! Operators' custom roles, in the `roles` table beside the tokens: each
//! row authenticated with the integrity key like a token's, each change
//! committed with its audit record. A custom role that predates a built-in
//! of its name keeps deciding ([`authz::LATER_BUILTINS`]).

use super::{TokenError, Tokens};
use crate::audit::NewRecord;
use crate::authz::{self, Permission, Role};
use crate::crypto::MacDomain;
use crate::store::now;
use rusqlite::{OptionalExtension, params};

impl Tokens {
    /// A role by name: built-in, or defined with [`Tokens::define_role`].
    pub fn role(&self, name: &str) -> Result<Role, TokenError> {
        if let Some(r) = authz::builtin(name)
            && !(authz::LATER_BUILTINS.contains(&name) && self.has_custom_role(name)?)
        {
            return Ok(r);
        }
        let row: Option<(String, String, i64, Vec<u8>)> = self
            .conn
            .query_row("SELECT allow, deny, created_at, mac FROM roles WHERE name = ?1", [name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map_err(self.err("read a role"))?;
        let shown: String = name.chars().take(64).collect();
        let Some((allow, deny, created_at, mac)) = row else {
            return Err(TokenError::NotFound(format!(
                "no role {shown:?}: built-in roles are {}; see `host role list`",
                authz::BUILTIN_ROLES.join(", ")
            )));
        };
        let fields = [name.as_bytes(), allow.as_bytes(), deny.as_bytes(), &created_at.to_be_bytes()];
        if !self.integrity.verify(MacDomain::RoleRow, &fields, &mac) {
            return Err(TokenError::Tampered(format!("role {shown:?} fails its integrity check")));
        }
        let parse = |text: &str| serde_json::from_str::<Vec<Permission>>(text).unwrap_or_default();
        Ok(Role { name: name.to_owned(), allow: parse(&allow), deny: parse(&deny) })
    }

    /// Whether a custom role row named `name` exists (one defined before a
    /// built-in role took the name keeps deciding: [`authz::LATER_BUILTINS`]).
    fn has_custom_role(&self, name: &str) -> Result<bool, TokenError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM roles WHERE name = ?1", [name], |r| r.get(0))
            .map_err(self.err("read a role"))?;
        Ok(n > 0)
    }

    /// Defines (or redefines) a custom role, committed with `audit`.
    pub fn define_role(&self, role: &Role, audit: &NewRecord) -> Result<(), TokenError> {
        authz::check_role_name(&role.name).map_err(TokenError::Invalid)?;
        if role.allow.is_empty() && role.deny.is_empty() {
            return Err(TokenError::Invalid("a role needs at least one --allow or --deny permission".into()));
        }
        let allow = serde_json::to_string(&role.allow).expect("permissions encode");
        let deny = serde_json::to_string(&role.deny).expect("permissions encode");
        let created_at = now();
        let fields = [role.name.as_bytes(), allow.as_bytes(), deny.as_bytes(), &created_at.to_be_bytes()];
        let mac = self.integrity.mac(MacDomain::RoleRow, &fields).to_vec();
        let tx = self.begin()?;
        tx.execute(
            "INSERT OR REPLACE INTO roles (name, allow, deny, created_at, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![role.name, allow, deny, created_at, mac],
        )
        .map_err(self.err("store a role"))?;
        self.commit(tx, audit)
    }

    /// Every role: the built-in ones, then the custom ones by name.
    pub fn roles(&self) -> Result<Vec<Role>, TokenError> {
        let mut out: Vec<Role> = authz::BUILTIN_ROLES.iter().filter_map(|n| authz::builtin(n)).collect();
        let names: Vec<String> = {
            let mut stmt = self.conn.prepare("SELECT name FROM roles ORDER BY name").map_err(self.err("list roles"))?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(self.err("list roles"))?;
            rows.collect::<Result<_, _>>().map_err(self.err("list roles"))?
        };
        for n in names {
            // A custom role that kept a later built-in's name replaces it in the list.
            out.retain(|r| r.name != n);
            out.push(self.role(&n)?);
        }
        Ok(out)
    }

    /// Removes a custom role no live token is bound to, committed with `audit`.
    pub fn remove_role(&self, name: &str, audit: &NewRecord) -> Result<(), TokenError> {
        if authz::builtin(name).is_some() && !(authz::LATER_BUILTINS.contains(&name) && self.has_custom_role(name)?) {
            return Err(TokenError::Invalid(format!("{name:?} is a built-in role and cannot be removed")));
        }
        self.role(name)?;
        let users: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|t| t.state == "active" && t.bindings.iter().any(|b| b.role == name))
            .map(|t| t.name)
            .collect();
        if !users.is_empty() {
            return Err(TokenError::Conflict(format!(
                "role {name:?} is bound to token(s) {}: revoke them first",
                users.join(", ")
            )));
        }
        let tx = self.begin()?;
        tx.execute("DELETE FROM roles WHERE name = ?1", [name]).map_err(self.err("remove a role"))?;
        self.commit(tx, audit)
    }
}
