//! Leases: credentials minted for one execution from a dynamic secret.
//!
//! The `leases` table keeps what revokes each credential (the child token's
//! accessor, the server's lease id, the expiry), never the credential. A row
//! is written, and synced, before the credential is released; it is marked
//! revoked when the execution ends, however it ends. A row left outstanding
//! (the host died) is revoked by [`sweep`], which `host lease sweep`, every
//! `host run`/`exec` and every start of `host serve` call.
//!
//! Invariants: no credential reaches a task without its lease on disk and a
//! `secret.lease` audit record; an execution's credentials are revoked when
//! it ends ([`ExecutionLeases::revoke_all`], and on drop as a fallback).

use crate::audit::{Action, Actor, AuditLog, NewRecord, Outcome, now_rfc3339};
use crate::backend::{BackendError, Router};
use crate::db::{DbError, connect, sql_err};
use crate::names::{Namespace, SecretName};
use crate::process::{alive, this_process};
use crate::secret::SecretValue;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One minted credential, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The child token's accessor: what revokes it.
    pub accessor: String,
    /// The server's lease id.
    pub lease_id: String,
    /// The namespace whose dynamic secret it came from.
    pub namespace: String,
    /// The dynamic secret.
    pub name: String,
    /// The execution it was minted for.
    pub execution: String,
    /// When (RFC 3339).
    pub minted: String,
    /// When it expires on its own (seconds since the Unix epoch).
    pub expires_at: i64,
    /// The process that holds it (`PID:START`, see [`crate::process`]).
    pub owner: String,
    /// When it was revoked (RFC 3339); `None`: outstanding.
    pub revoked: Option<String>,
}

impl Lease {
    /// Whether the credential still works at `now` (seconds since the Unix
    /// epoch): up to the second before `expires_at`. In its last second it
    /// may die mid-request, so a new one is minted instead.
    pub fn live_at(&self, now: i64) -> bool {
        self.expires_at > now
    }
}

/// The lease records in the store file.
#[derive(Debug)]
pub struct Leases {
    conn: Connection,
    path: PathBuf,
}

impl Leases {
    /// Opens the records in the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Ok(Leases { conn: connect(path)?, path: path.to_owned() })
    }

    /// Records a new lease (a synced commit).
    pub fn record(&self, l: &Lease) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT INTO leases (accessor, lease_id, namespace, name, execution, minted, expires_at, owner) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![l.accessor, l.lease_id, l.namespace, l.name, l.execution, l.minted, l.expires_at, l.owner],
            )
            .map_err(sql_err(&self.path, "record a lease"))?;
        Ok(())
    }

    /// Records a lease's new expiry after a renewal.
    pub fn set_expiry(&self, accessor: &str, expires_at: i64) -> Result<(), DbError> {
        self.conn
            .execute("UPDATE leases SET expires_at = ?2 WHERE accessor = ?1", params![accessor, expires_at])
            .map_err(sql_err(&self.path, "record a lease's renewal"))?;
        Ok(())
    }

    /// Marks a lease revoked.
    pub fn mark_revoked(&self, accessor: &str, at: &str) -> Result<(), DbError> {
        self.conn
            .execute("UPDATE leases SET revoked = ?2 WHERE accessor = ?1 AND revoked IS NULL", params![accessor, at])
            .map_err(sql_err(&self.path, "mark a lease revoked"))?;
        Ok(())
    }

    /// Every lease, newest first; only the outstanding ones with `outstanding`.
    pub fn list(&self, outstanding: bool) -> Result<Vec<Lease>, DbError> {
        let sql = format!(
            "SELECT accessor, lease_id, namespace, name, execution, minted, expires_at, owner, revoked FROM leases {} \
             ORDER BY minted DESC",
            if outstanding { "WHERE revoked IS NULL" } else { "" }
        );
        let mut stmt = self.conn.prepare(&sql).map_err(sql_err(&self.path, "list leases"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Lease {
                    accessor: r.get(0)?,
                    lease_id: r.get(1)?,
                    namespace: r.get(2)?,
                    name: r.get(3)?,
                    execution: r.get(4)?,
                    minted: r.get(5)?,
                    expires_at: r.get(6)?,
                    owner: r.get(7)?,
                    revoked: r.get(8)?,
                })
            })
            .map_err(sql_err(&self.path, "list leases"))?;
        rows.collect::<Result<_, _>>().map_err(sql_err(&self.path, "list leases"))
    }

    /// Whether any lease is outstanding (cheap: one indexed query).
    pub fn any_outstanding(&self) -> Result<bool, DbError> {
        let one: Option<i64> = self
            .conn
            .query_row("SELECT 1 FROM leases WHERE revoked IS NULL LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(sql_err(&self.path, "look for outstanding leases"))?;
        Ok(one.is_some())
    }
}

/// Revokes `lease` at its backend, marks it and audits it (`op`: `revoke`
/// at an execution's end, `sweep` after a crash). A failure is audited and
/// leaves the lease outstanding for the next sweep.
fn revoke(router: &Router, audit: &AuditLog, leases: &Leases, lease: &Lease, actor: &Actor, op: &str) -> bool {
    let ns = Namespace::new(&lease.namespace).unwrap_or_default();
    let name = SecretName::new(&lease.name).ok();
    let done = router.revoke_minted(&ns, &lease.lease_id, &lease.accessor);
    let mut rec = NewRecord::ok(actor, Action::SecretLease, &ns, name.as_ref())
        .detail_field("op", op)
        .detail_field("lease_id", lease.lease_id.clone())
        .detail_field("accessor", lease.accessor.clone())
        .detail_field("execution", lease.execution.clone());
    let ok = match &done {
        Ok(()) => leases.mark_revoked(&lease.accessor, &now_rfc3339()).is_ok(),
        Err(e) => {
            rec = rec.outcome(Outcome::Unavailable).reason(format!("not revoked: {e}"));
            false
        }
    };
    if let Err(e) = audit.record(rec) {
        tracing::error!("cannot audit the revocation of lease {}: {e}", lease.lease_id);
    }
    ok
}

/// Revokes every outstanding lease whose process is gone (or every one,
/// with `all`); returns (revoked, failed, left to running processes).
pub fn sweep(
    router: &Router,
    audit: &AuditLog,
    store: &Path,
    actor: &Actor,
    all: bool,
) -> Result<(usize, usize, usize), DbError> {
    let leases = Leases::open(store)?;
    if !leases.any_outstanding()? {
        return Ok((0, 0, 0));
    }
    let (mut revoked, mut failed, mut live) = (0, 0, 0);
    for l in leases.list(true)? {
        if !all && alive(&l.owner) {
            live += 1;
            continue;
        }
        if revoke(router, audit, &leases, &l, actor, "sweep") {
            revoked += 1;
        } else {
            failed += 1;
        }
    }
    Ok((revoked, failed, live))
}

/// A credential held for the rest of an execution, with the token that
/// renews it (in memory only).
#[derive(Debug)]
struct Held {
    value: SecretValue,
    token: SecretValue,
    lease: Lease,
}

/// The credentials one execution has minted, by secret name: a second
/// read of the same name gets the same credential while it lives; the end
/// of the execution revokes them all.
pub struct ExecutionLeases {
    router: Arc<Router>,
    audit: AuditLog,
    store: PathBuf,
    /// Who revokes at the end (`host serve`, or the operator running it).
    revoker: Actor,
    held: Mutex<HashMap<SecretName, Held>>,
}

impl std::fmt::Debug for ExecutionLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionLeases").field("store", &self.store).finish_non_exhaustive()
    }
}

/// Why a credential could not be minted or released.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The backend refused or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The lease could not be recorded or audited: the credential was
    /// revoked at once and not released.
    #[error("the lease could not be recorded, so the credential was revoked unreleased: {0}")]
    Unrecorded(String),
}

impl ExecutionLeases {
    /// Nothing minted yet; leases are recorded in the local store's file,
    /// and revoked at the end in the name of `revoker`.
    pub fn new(router: Arc<Router>, audit: AuditLog, revoker: Actor) -> Self {
        let store = router.local().store().path().to_owned();
        ExecutionLeases { router, audit, store, revoker, held: Mutex::new(HashMap::new()) }
    }

    /// The credential of dynamic secret `name` (defined in `namespace`
    /// with `def`) for this execution: the one already held while it lives
    /// (renewed to last until `until` if it would end sooner, as far as
    /// `def.ttl_secs` from its minting allows), else a new one living until
    /// `until` at most (and `def.ttl_secs`). A new one is recorded and
    /// audited before it is returned; the second value says whether it is new.
    #[allow(clippy::too_many_arguments)]
    pub fn get(
        &self,
        actor: &Actor,
        execution: &str,
        namespace: &Namespace,
        name: &SecretName,
        def: &crate::backend::DynamicDef,
        until: i64,
    ) -> Result<(SecretValue, Lease, bool), MintError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::store::now();
        if let Some(h) = held.get_mut(name)
            && h.lease.live_at(now)
        {
            if h.lease.expires_at < until {
                self.renew(actor, namespace, name, h, until - now);
            }
            return Ok((h.value.clone(), h.lease.clone(), false));
        }
        let ttl = (until - now).clamp(1, def.ttl_secs.max(1) as i64) as u64;
        let minted = self.router.mint(namespace, def, std::time::Duration::from_secs(ttl))?;
        let lease = Lease {
            accessor: minted.accessor.clone(),
            lease_id: minted.lease_id.clone(),
            namespace: namespace.as_str().to_owned(),
            name: name.as_str().to_owned(),
            execution: execution.to_owned(),
            minted: now_rfc3339(),
            expires_at: minted.expires_at,
            owner: this_process(),
            revoked: None,
        };
        let rec = NewRecord::ok(actor, Action::SecretLease, namespace, Some(name))
            .reason(format!("minted for execution {execution}, expires in {ttl} s"))
            .detail_field("op", "mint")
            .detail_field("lease_id", lease.lease_id.clone())
            .detail_field("accessor", lease.accessor.clone())
            .detail_field("expires_at", lease.expires_at);
        let recorded = Leases::open(&self.store)
            .map_err(|e| e.to_string())
            .and_then(|l| l.record(&lease).map_err(|e| e.to_string()))
            .and_then(|()| self.audit.record(rec).map(drop).map_err(|e| e.to_string()));
        if let Err(why) = recorded {
            let _ = self.router.revoke_minted(namespace, &lease.lease_id, &lease.accessor);
            return Err(MintError::Unrecorded(why));
        }
        // A credential it replaces (expired) is revoked now.
        let fresh = Held { value: minted.value.clone(), token: minted.token, lease: lease.clone() };
        if let Some(old) = held.insert(name.clone(), fresh)
            && let Ok(leases) = Leases::open(&self.store)
        {
            revoke(&self.router, &self.audit, &leases, &old.lease, actor, "revoke");
        }
        Ok((minted.value, lease, true))
    }

    /// Renews `h` to live `ttl` more (audited as `op: renew`, the expiry
    /// recorded); a failure is audited and leaves it as it was, still valid
    /// until its expiry.
    fn renew(&self, actor: &Actor, namespace: &Namespace, name: &SecretName, h: &mut Held, ttl: i64) {
        let renewed = self.router.renew_minted(
            namespace,
            &h.token,
            &h.lease.lease_id,
            std::time::Duration::from_secs(ttl as u64),
        );
        let mut rec = NewRecord::ok(actor, Action::SecretLease, namespace, Some(name))
            .detail_field("op", "renew")
            .detail_field("lease_id", h.lease.lease_id.clone())
            .detail_field("accessor", h.lease.accessor.clone());
        match renewed {
            Ok(expires_at) => {
                if let Err(e) = Leases::open(&self.store).and_then(|l| l.set_expiry(&h.lease.accessor, expires_at)) {
                    tracing::warn!("the renewal of lease {} could not be recorded: {e}", h.lease.lease_id);
                }
                rec = rec
                    .reason(format!("renewed for a later task, expires in {} s", expires_at - crate::store::now()))
                    .detail_field("expires_at", expires_at);
                h.lease.expires_at = expires_at;
            }
            Err(e) => {
                tracing::warn!("lease {} of {name} could not be renewed: {e}", h.lease.lease_id);
                rec = rec.outcome(Outcome::Unavailable).reason(format!("not renewed: {e}"));
            }
        }
        if let Err(e) = self.audit.record(rec) {
            tracing::error!("cannot audit the renewal of lease {}: {e}", h.lease.lease_id);
        }
    }

    /// Revokes every credential this execution minted (idempotent).
    pub fn revoke_all(&self) {
        let held: Vec<Held> = self.held.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, h)| h).collect();
        if held.is_empty() {
            return;
        }
        let leases = match Leases::open(&self.store) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot open the lease records ({e}); `host lease sweep` revokes what is left");
                return;
            }
        };
        for h in held {
            revoke(&self.router, &self.audit, &leases, &h.lease, &self.revoker, "revoke");
        }
    }
}

impl Drop for ExecutionLeases {
    fn drop(&mut self) {
        self.revoke_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held credential is handed out again until the second before it
    /// expires; in that second a later task gets a new one.
    #[test]
    fn a_lease_is_live_until_the_second_before_it_expires() {
        let lease = Lease {
            accessor: "a".into(),
            lease_id: "database/creds/ro/1".into(),
            namespace: "ops".into(),
            name: "DB".into(),
            execution: "e".into(),
            minted: "2026-12-05T00:00:00Z".into(),
            expires_at: 1_000,
            owner: this_process(),
            revoked: None,
        };
        assert!(lease.live_at(998) && lease.live_at(999));
        assert!(!lease.live_at(1_000), "its last second: a new one is minted");
        assert!(!lease.live_at(1_001));
    }
}
