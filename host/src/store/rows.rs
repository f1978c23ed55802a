//! Authenticated rows: the MACs over the security-relevant columns of
//! `secrets` and `secret_versions`, the one place that recomputes them, the
//! read of a `secrets` row with its check, and the integrity key's first
//! use.

use super::*;

fn opt(v: Option<i64>) -> Vec<u8> {
    v.map(|x| x.to_be_bytes().to_vec()).unwrap_or_default()
}

/// The MAC over a `secrets` row's security-relevant columns. The
/// destinations a secret is bound to are covered when there are any (a
/// row with none keeps the MAC it had before binding existed), so an
/// edited row can neither unbind a secret nor widen where it may go.
#[allow(clippy::too_many_arguments)]
pub(super) fn secret_mac(
    ik: &IntegrityKey,
    ns: &str,
    name: &str,
    current: i64,
    keep: i64,
    revoked: Option<i64>,
    destroyed: Option<i64>,
    destinations: Option<&str>,
) -> [u8; 32] {
    let (cur, keep, revoked, destroyed) = (current.to_be_bytes(), keep.to_be_bytes(), opt(revoked), opt(destroyed));
    let mut fields: Vec<&[u8]> = vec![ns.as_bytes(), name.as_bytes(), &cur, &keep, &revoked, &destroyed];
    if let Some(d) = destinations {
        fields.extend([b"destinations".as_slice(), d.as_bytes()]);
    }
    ik.mac(MacDomain::SecretRow, &fields)
}

/// The destinations column, parsed; `None` (unbound) for NULL.
pub(super) fn parse_destinations(text: Option<&str>) -> Result<Vec<AllowEntry>, String> {
    let Some(text) = text else { return Ok(Vec::new()) };
    let list: Vec<String> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    list.iter().map(|d| d.parse()).collect()
}

/// The stored form of `destinations`: NULL when empty.
pub(super) fn encode_destinations(destinations: &[AllowEntry]) -> Option<String> {
    if destinations.is_empty() {
        return None;
    }
    let list: Vec<String> = destinations.iter().map(ToString::to_string).collect();
    Some(serde_json::to_string(&list).expect("strings encode"))
}

/// The MAC over a `secret_versions` row's metadata (the ciphertext is
/// authenticated by its own AEAD tag).
pub(super) fn version_mac(
    ik: &IntegrityKey,
    ns: &str,
    name: &str,
    version: i64,
    created: i64,
    expires: Option<i64>,
) -> [u8; 32] {
    ik.mac(
        MacDomain::VersionRow,
        &[ns.as_bytes(), name.as_bytes(), &version.to_be_bytes(), &created.to_be_bytes(), &opt(expires)],
    )
}

/// Deletes the versions of secret `id` beyond the newest `keep` up to
/// `current` (a staged version above it is left alone).
pub(super) fn prune_versions(conn: &Connection, id: i64, current: i64, keep: i64) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM secret_versions WHERE secret_id = ?1 AND version <= ?2", params![id, current - keep])
}

/// Recomputes the MAC of secret `id` from its stored columns: the one place
/// that authenticates a `secrets` row after a change.
pub(super) fn remac_secret(conn: &Connection, ik: &IntegrityKey, id: i64) -> rusqlite::Result<()> {
    let mac = conn.query_row(
        "SELECT namespace, name, current_version, keep_versions, revoked_at, destroyed_at, destinations FROM secrets \
         WHERE id = ?1",
        [id],
        |r| {
            Ok(secret_mac(
                ik,
                &r.get::<_, String>(0)?,
                &r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get::<_, Option<String>>(6)?.as_deref(),
            ))
        },
    )?;
    conn.execute("UPDATE secrets SET mac = ?1 WHERE id = ?2", params![mac.to_vec(), id])?;
    Ok(())
}

/// Recomputes the MAC of one version row from its stored columns.
pub(super) fn remac_version(conn: &Connection, ik: &IntegrityKey, id: i64, version: i64) -> rusqlite::Result<()> {
    let mac = conn.query_row(
        "SELECT s.namespace, s.name, v.created_at, v.expires_at FROM secret_versions v JOIN secrets s ON s.id = v.secret_id \
         WHERE v.secret_id = ?1 AND v.version = ?2",
        params![id, version],
        |r| Ok(version_mac(ik, &r.get::<_, String>(0)?, &r.get::<_, String>(1)?, version, r.get(2)?, r.get(3)?)),
    )?;
    conn.execute(
        "UPDATE secret_versions SET mac = ?1 WHERE secret_id = ?2 AND version = ?3",
        params![mac.to_vec(), id, version],
    )?;
    Ok(())
}

/// A `secrets` row as the read and write paths need it.
pub(super) struct SecretRow {
    pub(super) id: i64,
    pub(super) current: i64,
    pub(super) keep: i64,
    /// Revoked or destroyed.
    pub(super) revoked: bool,
    /// Its MAC checks out.
    pub(super) authentic: bool,
    /// Where its value may be sent (empty: unbound).
    pub(super) destinations: Vec<AllowEntry>,
}

pub(super) fn secret_row(
    conn: &Connection,
    path: &Path,
    ik: &IntegrityKey,
    ns: &Namespace,
    name: &SecretName,
) -> Result<Option<SecretRow>, StoreError> {
    conn.prepare_cached(
        "SELECT id, current_version, keep_versions, revoked_at, destroyed_at, mac, destinations FROM secrets \
         WHERE name = ?1 AND namespace = ?2",
    )
    .map_err(sql_err(path, "prepare a lookup"))?
    .query_row(params![name.as_str(), ns.as_str()], |r| {
        let (current, keep, revoked, destroyed) = (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        let destinations: Option<String> = r.get(6)?;
        let expected =
            secret_mac(ik, ns.as_str(), name.as_str(), current, keep, revoked, destroyed, destinations.as_deref());
        // A column that does not parse is refused like an edited one: a
        // bound secret must never be read as unbound.
        let (destinations, parsed) = match parse_destinations(destinations.as_deref()) {
            Ok(d) => (d, true),
            Err(_) => (Vec::new(), false),
        };
        let authentic = parsed && r.get::<_, Option<Vec<u8>>>(5)?.as_deref() == Some(&expected[..]);
        Ok(SecretRow {
            id: r.get(0)?,
            current,
            keep,
            revoked: revoked.is_some() || destroyed.is_some(),
            authentic,
            destinations,
        })
    })
    .optional()
    .map_err(sql_err(path, "look up a secret"))
}

pub(super) fn row_tampered(path: &Path, ns: &Namespace, name: &SecretName, what: &'static str) -> StoreError {
    StoreError::RowTampered { path: path.to_owned(), namespace: ns.clone(), name: name.clone(), what }
}

/// Loads the integrity key sealed in `meta`, or creates it on first use:
/// then every existing row is authenticated as it stands (a store written
/// by keyhole 0.1 had no MACs) and the audit chain is keyed from its head.
pub(super) fn load_integrity(
    conn: &mut Connection,
    path: &Path,
    key: &MasterKey,
) -> Result<(IntegrityKey, bool), StoreError> {
    let get = |c: &Connection| -> Result<Option<Vec<u8>>, StoreError> {
        c.query_row("SELECT value FROM meta WHERE key = 'integrity_key'", [], |r| r.get(0))
            .optional()
            .map_err(sql_err(path, "read the integrity key"))
    };
    let open = |blob: Vec<u8>| {
        IntegrityKey::open(key, &blob).map_err(|DecryptError| StoreError::Corrupt {
            path: path.to_owned(),
            what: "the sealed integrity key in meta does not open with the master key (the database was edited)".into(),
        })
    };
    if let Some(blob) = get(conn)? {
        return Ok((open(blob)?, false));
    }
    let e = |op| sql_err(path, op);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e("start a write transaction"))?;
    if let Some(blob) = get(&tx)? {
        return Ok((open(blob)?, false));
    }
    let ik = IntegrityKey::generate();
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("the operating system's random source failed");
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('integrity_key', ?1), ('store_id', ?2)",
        params![ik.seal(key), hex::encode(id).into_bytes()],
    )
    .map_err(e("store the integrity key"))?;
    let ids: Vec<i64> = tx
        .prepare("SELECT id FROM secrets")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(e("read the secrets"))?;
    let versions: Vec<(i64, i64)> = tx
        .prepare("SELECT secret_id, version FROM secret_versions")
        .and_then(|mut st| st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(e("read the versions"))?;
    for id in &ids {
        remac_secret(&tx, &ik, *id).map_err(e("authenticate a secret"))?;
    }
    for (id, v) in &versions {
        remac_version(&tx, &ik, *id, *v).map_err(e("authenticate a version"))?;
    }
    audit::key_the_chain(&tx, &ik).map_err(e("key the audit chain"))?;
    if !ids.is_empty() {
        let rec =
            NewRecord::ok(&Actor::current_user(), Action::IntegrityInit, &Namespace::root(), None).reason(format!(
                "authenticated {} secret(s) and {} version(s) as they stood (first use by a keyhole with row MACs)",
                ids.len(),
                versions.len()
            ));
        audit::append(&tx, &ik, &rec).map_err(e("write the audit record"))?;
    }
    tx.commit().map_err(e("commit"))?;
    Ok((ik, true))
}
