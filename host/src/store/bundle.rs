//! Every version of every secret, decrypted for a backup bundle, and the
//! restore of such a bundle in one transaction (`host secret export` /
//! `import`; the bundle's own encryption is in `backup`).

use super::rows::{remac_secret, remac_version, row_tampered};
use super::*;

impl SecretStore {
    /// Decrypts every stored version of every secret (in `namespace` only,
    /// when given) for a backup. Destroyed secrets are left out, and so is a
    /// staged version: restored, it would become current uncommitted.
    pub fn export(&self, namespace: Option<&Namespace>, actor: &Actor) -> Result<Vec<ExportedSecret>, StoreError> {
        let infos = self.list(namespace, None)?;
        if let Some(bad) = infos.iter().find(|i| i.tampered) {
            // A backup would carry the edited state on as if it were genuine.
            let (ns, name) = (Namespace::new(&bad.namespace), SecretName::new(&bad.name));
            if let (Ok(ns), Ok(name)) = (ns, name) {
                return Err(row_tampered(&self.path, &ns, &name, "its stored state"));
            }
        }
        let mut out = Vec::new();
        for info in infos.into_iter().filter(|i| i.destroyed_at.is_none()) {
            let ns = Namespace::new(&info.namespace).map_err(|err| self.corrupt(err.to_string()))?;
            let name = SecretName::new(&info.name).map_err(|err| self.corrupt(err.to_string()))?;
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT v.version, v.created_at, v.expires_at, v.wrapped_key, v.nonce, v.ciphertext FROM secret_versions v \
                     JOIN secrets s ON s.id = v.secret_id WHERE s.namespace = ?1 AND s.name = ?2 \
                     AND v.version <= s.current_version ORDER BY v.version",
                )
                .map_err(self.err("read versions"))?;
            let rows = stmt
                .query_map(params![ns.as_str(), name.as_str()], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        Sealed { wrapped_key: r.get(3)?, nonce: r.get(4)?, ciphertext: r.get(5)? },
                    ))
                })
                .map_err(self.err("read versions"))?;
            let mut versions = Vec::new();
            for row in rows {
                let (version, created_at, expires_at, sealed) = row.map_err(self.err("read versions"))?;
                let plain = crypto::open(&self.key, &aad(&ns, &name, version), &sealed)
                    .map_err(|DecryptError| self.tampered(&ns, &name, version))?;
                let value = SecretValue::from_utf8(plain).map_err(|_| self.corrupt(format!("{name} is not UTF-8")))?;
                versions.push(ExportedVersion {
                    version,
                    created_at,
                    expires_at,
                    value: Zeroizing::new(value.expose().to_owned()),
                });
            }
            out.push(ExportedSecret {
                namespace: info.namespace,
                name: info.name,
                keep_versions: info.keep_versions,
                revoked: info.revoked_at.is_some(),
                versions,
            });
        }
        let tx = self.conn.unchecked_transaction().map_err(self.err("start a transaction"))?;
        let rec = NewRecord::ok(actor, Action::SecretExport, &namespace.cloned().unwrap_or_default(), None)
            .reason(format!("exported {} secret(s)", out.len()));
        audit::append(&tx, &self.integrity, &rec).map_err(self.err("write the audit record"))?;
        tx.commit().map_err(self.err("commit"))?;
        Ok(out)
    }

    /// Restores secrets from a backup in one transaction: a secret that
    /// exists is skipped unless `overwrite`, which replaces all its versions.
    /// `before_commit` runs inside the transaction (a seam for crash tests).
    pub fn import(
        &mut self,
        secrets: &[ExportedSecret],
        overwrite: bool,
        actor: &Actor,
        before_commit: impl FnOnce(),
    ) -> Result<ImportReport, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        // Validate everything before writing anything.
        let mut parsed = Vec::new();
        for s in secrets {
            let ns = Namespace::new(&s.namespace).map_err(|err| self.corrupt(format!("bundle: {err}")))?;
            let name = SecretName::new(&s.name).map_err(|err| self.corrupt(format!("bundle: {err}")))?;
            let current = s
                .versions
                .iter()
                .map(|v| v.version)
                .max()
                .ok_or_else(|| self.corrupt(format!("bundle: {name} has no versions")))?;
            parsed.push((ns, name, current, s));
        }
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        let mut report = ImportReport::default();
        for (ns, name, current, s) in parsed {
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT id FROM secrets WHERE namespace = ?1 AND name = ?2",
                    params![ns.as_str(), name.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(e("look up a secret"))?;
            if let Some(id) = existing {
                if !overwrite {
                    report.skipped.push(format!("{ns}/{name}"));
                    continue;
                }
                tx.execute("DELETE FROM secret_versions WHERE secret_id = ?1", [id]).map_err(e("replace versions"))?;
                tx.execute("DELETE FROM secrets WHERE id = ?1", [id]).map_err(e("replace the secret"))?;
            }
            let created = s.versions.iter().map(|v| v.created_at).min().unwrap_or_else(now);
            let revoked = s.revoked.then(now);
            tx.execute(
                "INSERT INTO secrets (namespace, name, current_version, created_at, updated_at, keep_versions, revoked_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![ns.as_str(), name.as_str(), current as i64, created, now(), s.keep_versions as i64, revoked],
            )
            .map_err(e("insert a secret"))?;
            let id = tx.last_insert_rowid();
            for v in &s.versions {
                let sealed = crypto::seal(&self.key, &aad(&ns, &name, v.version), v.value.as_bytes());
                tx.execute(
                    "INSERT INTO secret_versions (secret_id, version, created_at, expires_at, wrapped_key, nonce, ciphertext) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![id, v.version as i64, v.created_at, v.expires_at, sealed.wrapped_key, sealed.nonce, sealed.ciphertext],
                )
                .map_err(e("insert a version"))?;
                remac_version(&tx, &self.integrity, id, v.version as i64).map_err(e("authenticate a version"))?;
            }
            remac_secret(&tx, &self.integrity, id).map_err(e("authenticate a secret"))?;
            audit::append(
                &tx,
                &self.integrity,
                &NewRecord::ok(actor, Action::SecretImport, &ns, Some(&name)).version(current),
            )
            .map_err(e("write the audit record"))?;
            report.imported.push(format!("{ns}/{name}"));
        }
        before_commit();
        tx.commit().map_err(e("commit"))?;
        Ok(report)
    }
}
