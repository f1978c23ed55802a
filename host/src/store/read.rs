//! Reading the store: one secret's version (checked, then decrypted), its
//! versions, and listings of metadata. [`Reader`] is the same read on a
//! connection of its own, so many tasks can read at once.

use super::rows::{row_tampered, secret_mac, secret_row, version_mac};
use super::*;

impl SecretStore {
    /// The stored versions of a secret, newest first.
    pub fn versions(&self, namespace: &Namespace, name: &SecretName) -> Result<Vec<VersionInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT v.version, v.created_at, v.expires_at, v.version = s.current_version, v.mac FROM secret_versions v \
                 JOIN secrets s ON s.id = v.secret_id WHERE s.namespace = ?1 AND s.name = ?2 ORDER BY v.version DESC",
            )
            .map_err(self.err("list versions"))?;
        let rows = stmt
            .query_map(params![namespace.as_str(), name.as_str()], |r| {
                let info = VersionInfo {
                    version: r.get::<_, i64>(0)? as u64,
                    version_id: None,
                    created_at: r.get(1)?,
                    expires_at: r.get(2)?,
                    current: r.get(3)?,
                };
                Ok((info, r.get::<_, Option<Vec<u8>>>(4)?))
            })
            .map_err(self.err("list versions"))?;
        let rows: Vec<(VersionInfo, Option<Vec<u8>>)> =
            rows.collect::<Result<_, _>>().map_err(self.err("list versions"))?;
        let mut list = Vec::with_capacity(rows.len());
        for (v, mac) in rows {
            let expected = version_mac(
                &self.integrity,
                namespace.as_str(),
                name.as_str(),
                v.version as i64,
                v.created_at,
                v.expires_at,
            );
            if mac.as_deref() != Some(&expected[..]) {
                return Err(row_tampered(&self.path, namespace, name, "the expiry or creation time of a version"));
            }
            list.push(v);
        }
        if list.is_empty() && self.describe(namespace, name)?.is_none() {
            return Err(StoreError::NotFound { namespace: namespace.clone(), name: name.clone() });
        }
        Ok(list)
    }

    /// Metadata of one secret; never its value.
    pub fn describe(&self, namespace: &Namespace, name: &SecretName) -> Result<Option<SecretInfo>, StoreError> {
        Ok(self
            .list_where("namespace = ?1 AND name = ?2", params![namespace.as_str(), name.as_str()])?
            .into_iter()
            .next())
    }

    pub(super) fn tampered(&self, ns: &Namespace, name: &SecretName, version: u64) -> StoreError {
        StoreError::Tampered { path: self.path.clone(), namespace: ns.clone(), name: name.clone(), version }
    }

    /// Lists secrets, in `namespace` only when given, sorted by namespace
    /// and name; with `expiring_before`, only those whose current version
    /// expires before that time (already expired included).
    pub fn list(
        &self,
        namespace: Option<&Namespace>,
        expiring_before: Option<i64>,
    ) -> Result<Vec<SecretInfo>, StoreError> {
        self.list_where(
            "(?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR (expires_at IS NOT NULL AND expires_at < ?2))",
            params![namespace.map(Namespace::as_str), expiring_before],
        )
    }

    fn list_where(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<SecretInfo>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT s.namespace, s.name, s.current_version, s.created_at, s.updated_at, s.keep_versions, \
               s.revoked_at, s.destroyed_at, \
               (SELECT expires_at FROM secret_versions v WHERE v.secret_id = s.id AND v.version = s.current_version) AS expires_at, \
               (SELECT count(*) FROM secret_versions v WHERE v.secret_id = s.id) AS stored, s.mac, \
               (SELECT v.created_at FROM secret_versions v WHERE v.secret_id = s.id AND v.version = s.current_version), \
               (SELECT v.mac FROM secret_versions v WHERE v.secret_id = s.id AND v.version = s.current_version), \
               s.destinations \
             FROM secrets s) WHERE {filter} ORDER BY namespace, name"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err("prepare the listing"))?;
        let rows = stmt
            .query_map(args, |r| {
                let mut info = SecretInfo {
                    namespace: r.get(0)?,
                    name: r.get(1)?,
                    version: r.get::<_, i64>(2)? as u64,
                    version_id: None,
                    created_at: r.get(3)?,
                    updated_at: r.get(4)?,
                    keep_versions: r.get::<_, i64>(5)? as u64,
                    revoked_at: r.get(6)?,
                    destroyed_at: r.get(7)?,
                    expires_at: r.get(8)?,
                    versions_stored: r.get::<_, i64>(9)? as u64,
                    destinations: Vec::new(),
                    tampered: false,
                    dynamic: None,
                };
                let destinations: Option<String> = r.get(13)?;
                let parsed = super::rows::parse_destinations(destinations.as_deref());
                let destinations_ok = parsed.is_ok();
                info.destinations = parsed.unwrap_or_default().iter().map(ToString::to_string).collect();
                let ik = &self.integrity;
                let (ns, name, cur) = (&info.namespace, &info.name, info.version as i64);
                let row_ok = r.get::<_, Option<Vec<u8>>>(10)?.as_deref()
                    == Some(
                        &secret_mac(
                            ik,
                            ns,
                            name,
                            cur,
                            info.keep_versions as i64,
                            info.revoked_at,
                            info.destroyed_at,
                            destinations.as_deref(),
                        )[..],
                    );
                let version_ok = match r.get::<_, Option<i64>>(11)? {
                    None => true,
                    Some(created) => {
                        r.get::<_, Option<Vec<u8>>>(12)?.as_deref()
                            == Some(&version_mac(ik, ns, name, cur, created, info.expires_at)[..])
                    }
                };
                info.tampered = !(row_ok && version_ok && destinations_ok);
                Ok(info)
            })
            .map_err(self.err("list secrets"))?;
        rows.collect::<Result<_, _>>().map_err(self.err("list secrets"))
    }
}

/// A connection of its own to the store file, with the keys to check and
/// decrypt what it reads: reads on different readers run in parallel (WAL).
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    path: PathBuf,
    key: MasterKey,
    integrity: IntegrityKey,
}

impl SecretStore {
    /// Looks in exactly `ns`: `None` if the secret is not there; else its
    /// `version` (default: current), unless revoked or expired.
    pub fn resolve_at(
        &self,
        ns: &Namespace,
        grant: &Grant,
        version: Option<u64>,
    ) -> Result<Option<Lookup>, StoreError> {
        in_snapshot(&self.conn, &self.path, || {
            resolve_in(&self.conn, &self.path, &self.key, &self.integrity, ns, grant, version)
        })
    }

    /// A new [`Reader`] of this store.
    pub fn reader(&self) -> Result<Reader, StoreError> {
        Ok(Reader {
            conn: connect(&self.path)?,
            path: self.path.clone(),
            key: self.key.clone(),
            integrity: self.integrity.clone(),
        })
    }
}

impl Reader {
    /// [`SecretStore::resolve_at`] on this reader's connection.
    pub fn resolve_at(
        &self,
        ns: &Namespace,
        grant: &Grant,
        version: Option<u64>,
    ) -> Result<Option<Lookup>, StoreError> {
        in_snapshot(&self.conn, &self.path, || {
            resolve_in(&self.conn, &self.path, &self.key, &self.integrity, ns, grant, version)
        })
    }
}

/// `read` in one read transaction on `conn`: a lookup's secret row and
/// version row come from the same snapshot (a rotation that prunes the
/// version the first query saw cannot land between them), and the WAL read
/// lock is taken once instead of per query.
fn in_snapshot<T>(
    conn: &Connection,
    path: &Path,
    read: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let run = |sql: &str, op| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map_err(sql_err(path, op));
    run("BEGIN", "begin a read")?;
    let found = read();
    // A read changes nothing, so how it ends loses nothing; it must end, or
    // the connection would hold its snapshot forever.
    if run("COMMIT", "end a read").is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    found
}

/// Looks in exactly `ns`: `None` if the secret is not there; else its
/// `version` (default: current), unless revoked or expired.
fn resolve_in(
    conn: &Connection,
    path: &Path,
    key: &MasterKey,
    ik: &IntegrityKey,
    ns: &Namespace,
    grant: &Grant,
    version: Option<u64>,
) -> Result<Option<Lookup>, StoreError> {
    let name = grant.name();
    let Some(row) = secret_row(conn, path, ik, ns, name)? else { return Ok(None) };
    if !row.authentic {
        return Err(row_tampered(path, ns, name, "its current version, keep count or state"));
    }
    let version = version.unwrap_or(row.current as u64);
    let destinations = row.destinations;
    if row.revoked {
        return Ok(Some(Lookup::Revoked { namespace: ns.clone(), version }));
    }
    let row = conn
        .prepare_cached(
            "SELECT created_at, expires_at, mac, wrapped_key, nonce, ciphertext FROM secret_versions \
             WHERE secret_id = ?1 AND version = ?2",
        )
        .map_err(sql_err(path, "prepare a lookup"))?
        .query_row(params![row.id, version as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
                Sealed { wrapped_key: r.get(3)?, nonce: r.get(4)?, ciphertext: r.get(5)? },
            ))
        })
        .optional()
        .map_err(sql_err(path, "read a secret version"))?;
    let Some((created_at, expires_at, mac, sealed)) = row else {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            what: format!("secret {name} in namespace {ns} has no stored version {version} (pruned or deleted)"),
        });
    };
    let expected = version_mac(ik, ns.as_str(), name.as_str(), version as i64, created_at, expires_at);
    if mac.as_deref() != Some(&expected[..]) {
        return Err(row_tampered(path, ns, name, "the expiry or creation time of its version"));
    }
    if expires_at.is_some_and(|x| x <= now()) {
        return Ok(Some(Lookup::Expired { namespace: ns.clone(), version }));
    }
    let plain = crypto::open(key, &aad(ns, name, version), &sealed).map_err(|DecryptError| StoreError::Tampered {
        path: path.to_owned(),
        namespace: ns.clone(),
        name: name.clone(),
        version,
    })?;
    let value = SecretValue::from_utf8(plain).map_err(|_| StoreError::Corrupt {
        path: path.to_owned(),
        what: format!("secret {name} version {version} in namespace {ns} is not valid UTF-8"),
    })?;
    Ok(Some(Lookup::Found(Resolved { namespace: ns.clone(), version, value, destinations })))
}
