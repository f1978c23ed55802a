//! The store's changes to secrets: `set`, `revoke`, `destroy`, `remove`
//! and the master-key re-wrap. Each runs in one `BEGIN IMMEDIATE`
//! transaction that also checks the store's key id, re-authenticates what it
//! changed and appends its audit record, so a change and its record commit
//! together or not at all.

use super::rows::{encode_destinations, prune_versions, remac_secret, remac_version, row_tampered, secret_row};
use super::stage::staged_row;
use super::*;

impl SecretStore {
    /// Stores `value` as a new version of `namespace`/`name` and returns the
    /// version number (1 for a new secret). Keeps the newest `keep` versions
    /// (default [`VERSIONS_KEPT`]). A new version lifts a revocation: it is a
    /// new credential. The change and its audit record `audit` (given its
    /// version here) commit together.
    pub fn set(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        opts: &SetOptions,
        audit: &NewRecord,
    ) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        let t = now();
        let row = secret_row(&tx, &path, &self.integrity, namespace, name)?;
        if row.as_ref().is_some_and(|r| !r.authentic) {
            // Building on edited state would launder it: `rm` it first.
            return Err(row_tampered(&path, namespace, name, "its current version, keep count or state"));
        }
        let current = row.map(|r| (r.id, r.current, r.keep));
        if let Some((id, v, _)) = current
            && let Some((staged, ..)) = staged_row(&tx, &path, id, v)?
        {
            return Err(StoreError::Staged {
                namespace: namespace.clone(),
                name: name.clone(),
                what: format!(
                    "version {staged} is staged by a rotation: `host secret commit` or `discard` it (with --staged) first"
                ),
            });
        }
        if opts.rotate && current.is_none() {
            return Err(StoreError::NotFound { namespace: namespace.clone(), name: name.clone() });
        }
        let (id, version, keep) = match current {
            Some((id, v, keep)) => {
                let keep = opts.keep.map_or(keep, i64::from);
                tx.execute(
                    "UPDATE secrets SET current_version = ?1, updated_at = ?2, keep_versions = ?3, revoked_at = NULL, \
                     destroyed_at = NULL WHERE id = ?4",
                    params![v + 1, t, keep, id],
                )
                .map_err(e("update the secret"))?;
                (id, (v + 1) as u64, keep)
            }
            None => {
                let keep = i64::from(opts.keep.unwrap_or(VERSIONS_KEPT));
                tx.execute(
                    "INSERT INTO secrets (namespace, name, current_version, created_at, updated_at, keep_versions) \
                     VALUES (?1, ?2, 1, ?3, ?3, ?4)",
                    params![namespace.as_str(), name.as_str(), t, keep],
                )
                .map_err(e("insert the secret"))?;
                (tx.last_insert_rowid(), 1, keep)
            }
        };
        let sealed = crypto::seal(&self.key, &aad(namespace, name, version), value.expose().as_bytes());
        tx.execute(
            "INSERT INTO secret_versions (secret_id, version, created_at, expires_at, wrapped_key, nonce, ciphertext) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, version as i64, t, opts.expires_at, sealed.wrapped_key, sealed.nonce, sealed.ciphertext],
        )
        .map_err(e("store the new version"))?;
        prune_versions(&tx, id, version as i64, keep).map_err(e("prune old versions"))?;
        if let Some(d) = &opts.destinations {
            tx.execute("UPDATE secrets SET destinations = ?1 WHERE id = ?2", params![encode_destinations(d), id])
                .map_err(e("bind the secret"))?;
        }
        remac_secret(&tx, &self.integrity, id).map_err(e("authenticate the secret"))?;
        remac_version(&tx, &self.integrity, id, version as i64).map_err(e("authenticate the version"))?;
        audit::append(&tx, &self.integrity, &audit.clone().version(version)).map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))?;
        Ok(version)
    }

    /// Binds a secret to `destinations` (empty: unbinds it), with its audit
    /// record `audit`, in one transaction.
    pub fn bind(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        destinations: &[AllowEntry],
        audit: &NewRecord,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        let row = secret_row(&tx, &path, &self.integrity, namespace, name)?
            .ok_or_else(|| StoreError::NotFound { namespace: namespace.clone(), name: name.clone() })?;
        if !row.authentic {
            return Err(row_tampered(&path, namespace, name, "its current version, keep count or state"));
        }
        tx.execute(
            "UPDATE secrets SET destinations = ?1 WHERE id = ?2",
            params![encode_destinations(destinations), row.id],
        )
        .map_err(e("bind the secret"))?;
        remac_secret(&tx, &self.integrity, row.id).map_err(e("authenticate the secret"))?;
        audit::append(&tx, &self.integrity, audit).map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))
    }

    /// Marks a secret revoked: every later read, including by executions
    /// already running, gets `revoked`. A new `set`/`rotate` lifts it.
    pub fn revoke(&mut self, namespace: &Namespace, name: &SecretName, audit: &NewRecord) -> Result<(), StoreError> {
        self.mark(namespace, name, audit, "revoked_at = ?1")
    }

    /// Crypto-erases a secret: every version's ciphertext and wrapped data
    /// key is deleted; a tombstone row remains (shown as destroyed) so the
    /// audit trail still makes sense. Reads get `revoked`.
    /// Returns a warning if the erased bytes could not be vacuumed away.
    pub fn destroy(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        audit: &NewRecord,
    ) -> Result<Option<String>, StoreError> {
        self.mark(namespace, name, audit, "destroyed_at = ?1")?;
        // secure_delete zeroes freed pages; also drop them and the WAL.
        Ok(self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;").err().map(|e| {
            format!(
                "the secret is destroyed, but compacting {} failed ({e}): run `host secret destroy` again, or VACUUM the file",
                self.path.display()
            )
        }))
    }

    fn mark(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        audit: &NewRecord,
        set: &str,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        // Revoking or destroying only takes away: it proceeds on a row that
        // fails its check, and authenticates the result.
        let row = secret_row(&tx, &path, &self.integrity, namespace, name)?;
        let Some((id, version)) = row.map(|r| (r.id, r.current)) else {
            return Err(StoreError::NotFound { namespace: namespace.clone(), name: name.clone() });
        };
        tx.execute(&format!("UPDATE secrets SET {set} WHERE id = ?2"), params![now(), id])
            .map_err(e("update the secret"))?;
        let mut rec = audit.clone().version(version as u64);
        if audit.action == Action::SecretDestroy {
            let n = tx
                .execute("DELETE FROM secret_versions WHERE secret_id = ?1", [id])
                .map_err(e("erase the versions"))?;
            rec = rec.reason(format!("erased {n} version(s): ciphertext and data keys"));
        }
        remac_secret(&tx, &self.integrity, id).map_err(e("authenticate the secret"))?;
        audit::append(&tx, &self.integrity, &rec).map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))?;
        Ok(())
    }

    /// Deletes a secret and all its versions. Returns whether it existed.
    /// The deletion and its audit record `audit` commit together; an
    /// attempt on a secret that is not there is recorded as `not-found`.
    pub fn remove(&mut self, namespace: &Namespace, name: &SecretName, audit: &NewRecord) -> Result<bool, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        tx.execute(
            "DELETE FROM secret_versions WHERE secret_id IN (SELECT id FROM secrets WHERE namespace = ?1 AND name = ?2)",
            params![namespace.as_str(), name.as_str()],
        )
        .map_err(e("delete versions"))?;
        let n = tx
            .execute(
                "DELETE FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![namespace.as_str(), name.as_str()],
            )
            .map_err(e("delete the secret"))?;
        // An attempt on nothing is recorded too, as what it found.
        let missing = (n == 0)
            .then(|| audit.clone().outcome(crate::audit::Outcome::NotFound).reason("no such secret: nothing removed"));
        audit::append(&tx, &self.integrity, missing.as_ref().unwrap_or(audit)).map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))?;
        Ok(n > 0)
    }

    /// Re-wraps every data key and the key verifier under `new` in one
    /// transaction; the values' ciphertexts are untouched. `before_commit`
    /// runs inside the transaction (a seam for crash tests). Interrupted at
    /// any point, the store is readable with exactly one of the two keys.
    pub fn rotate_master_key(
        &mut self,
        new: &MasterKey,
        actor: &Actor,
        before_commit: impl FnOnce(),
    ) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        let rows: Vec<(i64, i64, String, String, Vec<u8>)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT v.secret_id, v.version, s.namespace, s.name, v.wrapped_key FROM secret_versions v \
                     JOIN secrets s ON s.id = v.secret_id",
                )
                .map_err(e("read the data keys"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .map_err(e("read the data keys"))?;
            rows.collect::<Result<_, _>>().map_err(e("read the data keys"))?
        };
        let mut update = tx
            .prepare("UPDATE secret_versions SET wrapped_key = ?1 WHERE secret_id = ?2 AND version = ?3")
            .map_err(e("prepare the re-wrap"))?;
        let corrupt = |what: String| StoreError::Corrupt { path: path.clone(), what };
        for (id, version, ns, name, wrapped) in &rows {
            let ns = Namespace::new(ns).map_err(|err| corrupt(err.to_string()))?;
            let name = SecretName::new(name).map_err(|err| corrupt(err.to_string()))?;
            let version = *version as u64;
            let rewrapped =
                crypto::rewrap(&self.key, new, &aad(&ns, &name, version), wrapped).map_err(|DecryptError| {
                    StoreError::Tampered { path: path.clone(), namespace: ns.clone(), name: name.clone(), version }
                })?;
            update.execute(params![rewrapped, id, version as i64]).map_err(e("re-wrap a data key"))?;
        }
        drop(update);
        let v = crypto::seal(new, VERIFIER_AAD, VERIFIER_PLAINTEXT);
        for (k, val) in [
            ("key_id", new.id().0.into_bytes()),
            ("verifier_wrapped", v.wrapped_key),
            ("verifier_nonce", v.nonce),
            ("verifier_ciphertext", v.ciphertext),
            ("integrity_key", self.integrity.seal(new)),
        ] {
            tx.execute("UPDATE meta SET value = ?1 WHERE key = ?2", params![val, k])
                .map_err(e("replace the key verifier"))?;
        }
        let rec = NewRecord::ok(actor, Action::KeyRotate, &Namespace::root(), None).reason(format!(
            "re-wrapped {} data key(s) and the integrity key from key {} to key {}",
            rows.len(),
            self.key.id(),
            new.id()
        ));
        audit::append(&tx, &self.integrity, &rec).map_err(e("write the audit record"))?;
        before_commit();
        tx.commit().map_err(e("commit"))?;
        self.key = new.clone();
        Ok(rows.len() as u64)
    }
}
