//! Staged versions: a new value stored encrypted beside the current one but
//! not yet current, for a rotation that must not make it current in keyhole
//! while the service that uses it may not have it (nor lose it while the
//! service may). A staged version is the one row above `current_version`;
//! reads never see it. `commit_staged` makes it current, `discard_staged`
//! erases it; each change commits with its audit record.
//!
//! Invariant: at most one staged version per secret; a `set` or `rotate`
//! waits until it is resolved; a staged row that fails its MAC is never
//! made current.

use super::rows::{prune_versions, remac_secret, remac_version, row_tampered, secret_row, version_mac};
use super::*;

/// A staged row: version, created, expires, MAC.
pub(super) type StagedRow = (i64, i64, Option<i64>, Option<Vec<u8>>);

/// The staged version of secret `id`, if any.
pub(super) fn staged_row(
    conn: &Connection,
    path: &Path,
    id: i64,
    current: i64,
) -> Result<Option<StagedRow>, StoreError> {
    conn.query_row(
        "SELECT version, created_at, expires_at, mac FROM secret_versions WHERE secret_id = ?1 AND version > ?2 \
         ORDER BY version DESC LIMIT 1",
        params![id, current],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
    .map_err(sql_err(path, "look for a staged version"))
}

/// The secret's row, which must exist and pass its check: staging and
/// committing build on it.
fn authentic_row(
    conn: &Connection,
    path: &Path,
    ik: &IntegrityKey,
    namespace: &Namespace,
    name: &SecretName,
) -> Result<super::rows::SecretRow, StoreError> {
    let row = secret_row(conn, path, ik, namespace, name)?
        .ok_or_else(|| StoreError::NotFound { namespace: namespace.clone(), name: name.clone() })?;
    if !row.authentic {
        return Err(row_tampered(path, namespace, name, "its current version, keep count or state"));
    }
    Ok(row)
}

fn nothing_staged(namespace: &Namespace, name: &SecretName) -> StoreError {
    StoreError::Staged { namespace: namespace.clone(), name: name.clone(), what: "no version is staged".into() }
}

impl SecretStore {
    /// The staged version of `namespace`/`name`, if one is pending.
    pub fn staged(&self, namespace: &Namespace, name: &SecretName) -> Result<Option<VersionInfo>, StoreError> {
        let Some(row) = secret_row(&self.conn, &self.path, &self.integrity, namespace, name)? else { return Ok(None) };
        Ok(staged_row(&self.conn, &self.path, row.id, row.current)?.map(|(version, created, expires, _)| VersionInfo {
            version: version as u64,
            version_id: None,
            created_at: created,
            expires_at: expires,
            current: false,
        }))
    }

    /// Stores `value` as the staged next version of an existing secret and
    /// returns its number; tasks keep reading the current one.
    pub fn stage(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        expires_at: Option<i64>,
        audit: &NewRecord,
    ) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        let row = authentic_row(&tx, &path, &self.integrity, namespace, name)?;
        if let Some((v, ..)) = staged_row(&tx, &path, row.id, row.current)? {
            return Err(StoreError::Staged {
                namespace: namespace.clone(),
                name: name.clone(),
                what: format!("version {v} is already staged: commit or discard it first"),
            });
        }
        let version = row.current + 1;
        let sealed = crypto::seal(&self.key, &aad(namespace, name, version as u64), value.expose().as_bytes());
        tx.execute(
            "INSERT INTO secret_versions (secret_id, version, created_at, expires_at, wrapped_key, nonce, ciphertext) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![row.id, version, now(), expires_at, sealed.wrapped_key, sealed.nonce, sealed.ciphertext],
        )
        .map_err(e("store the staged version"))?;
        remac_version(&tx, &self.integrity, row.id, version).map_err(e("authenticate the version"))?;
        audit::append(&tx, &self.integrity, &audit.clone().version(version as u64))
            .map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))?;
        Ok(version as u64)
    }

    /// Makes the staged version current (keeping the newest versions as
    /// `set` does) and returns it.
    pub fn commit_staged(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        audit: &NewRecord,
    ) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        let row = authentic_row(&tx, &path, &self.integrity, namespace, name)?;
        let Some((version, created, expires, mac)) = staged_row(&tx, &path, row.id, row.current)? else {
            return Err(nothing_staged(namespace, name));
        };
        let expected = version_mac(&self.integrity, namespace.as_str(), name.as_str(), version, created, expires);
        if mac.as_deref() != Some(expected.as_slice()) {
            return Err(row_tampered(&path, namespace, name, "its staged version"));
        }
        // A new current version is a new credential, as with `set`: it
        // lifts a revocation or a destruction.
        tx.execute(
            "UPDATE secrets SET current_version = ?1, updated_at = ?2, revoked_at = NULL, destroyed_at = NULL \
             WHERE id = ?3",
            params![version, now(), row.id],
        )
        .map_err(e("make the staged version current"))?;
        prune_versions(&tx, row.id, version, row.keep).map_err(e("prune old versions"))?;
        remac_secret(&tx, &self.integrity, row.id).map_err(e("authenticate the secret"))?;
        audit::append(&tx, &self.integrity, &audit.clone().version(version as u64))
            .map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))?;
        Ok(version as u64)
    }

    /// Erases the staged version (ciphertext and data key) and returns it.
    pub fn discard_staged(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        audit: &NewRecord,
    ) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        // Discarding only takes away: it proceeds on a row that fails its check.
        let row = secret_row(&tx, &path, &self.integrity, namespace, name)?
            .ok_or_else(|| StoreError::NotFound { namespace: namespace.clone(), name: name.clone() })?;
        let Some((version, ..)) = staged_row(&tx, &path, row.id, row.current)? else {
            return Err(nothing_staged(namespace, name));
        };
        tx.execute("DELETE FROM secret_versions WHERE secret_id = ?1 AND version = ?2", params![row.id, version])
            .map_err(e("erase the staged version"))?;
        audit::append(&tx, &self.integrity, &audit.clone().version(version as u64))
            .map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))?;
        Ok(version as u64)
    }
}
