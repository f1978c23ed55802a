//! Proving the trail whole: the chain walk of `host audit verify`, signed
//! checkpoints (C2SP note format) and pruning that vouches for what it
//! removed.

use super::*;

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Verdict {
    /// Every record links to the one before, carries its MAC, and the
    /// newest is the authenticated head.
    Intact {
        /// Records checked.
        records: u64,
        /// Sequence number of the newest record (the head).
        head_seq: u64,
        /// Hash of the newest record.
        head_hash: String,
        /// Where verification started (after a prune checkpoint).
        from_seq: u64,
        /// The id of the chain key the records were verified with.
        key_id: String,
        /// Records before this one were written before the chain was keyed
        /// (plain SHA-256 up to an authenticated boundary).
        keyed_from: u64,
    },
    /// The first record where the chain breaks.
    Broken {
        /// Its sequence number (or the expected one, for a deleted record).
        seq: u64,
        /// What is wrong.
        problem: String,
    },
}

/// Walks the chain from the newest valid prune checkpoint (or the start) to
/// the authenticated head, checking every record's MAC under `key`.
pub fn verify(conn: &Connection, path: &Path, key: &IntegrityKey) -> Result<Verdict, AuditError> {
    let broken = |seq, problem: String| Ok(Verdict::Broken { seq, problem });
    let b = match boundary(conn, key).map_err(sql(path, "read the audit boundary"))? {
        Ok(b) => b,
        Err(problem) => return broken(0, problem),
    };
    let ckpt = checkpoint(conn).map_err(sql(path, "read the checkpoint"))?;
    let (mut expected_seq, mut prev) = match &ckpt {
        Some((seq, hash)) => (seq + 1, hash.clone()),
        None => (1, GENESIS.to_owned()),
    };
    // A checkpoint row is valid only as the boundary recorded it or as an
    // `audit.prune` record in the verified chain says.
    let mut ckpt_vouched = ckpt.as_ref().is_none_or(|c| *c == b.checkpoint);
    let from_seq = expected_seq;
    let mut stmt = conn.prepare("SELECT * FROM audit ORDER BY seq").map_err(sql(path, "read the audit log"))?;
    let rows = stmt.query_map([], Record::from_row).map_err(sql(path, "read the audit log"))?;
    let mut count = 0;
    for row in rows {
        let r = row.map_err(sql(path, "read a record"))?;
        if r.seq < expected_seq {
            return broken(r.seq, "record precedes the prune checkpoint".into());
        }
        if r.seq > expected_seq {
            return broken(expected_seq, format!("record {expected_seq} is missing (next present is {})", r.seq));
        }
        if r.prev_hash != prev || (r.seq == b.keyed_from && r.prev_hash != b.legacy_head) {
            return broken(
                r.seq,
                "its prev_hash does not match the previous record (a record was inserted or removed)".into(),
            );
        }
        let keyed = r.seq >= b.keyed_from;
        if r.canonical_hash(keyed.then_some(key)) != r.hash {
            let why = if keyed {
                "its contents do not match its MAC (the record was altered or forged)"
            } else {
                "its contents do not match its hash (the record was altered)"
            };
            return broken(r.seq, why.into());
        }
        if keyed
            && r.kind() == Some(Action::AuditPrune)
            && let Some((cseq, chash)) = &ckpt
        {
            let vouches =
                r.detail.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()).is_some_and(|d| {
                    d["checkpoint_seq"].as_u64() == Some(*cseq) && d["checkpoint_hash"].as_str() == Some(chash)
                });
            ckpt_vouched |= vouches;
        }
        prev = r.hash;
        expected_seq += 1;
        count += 1;
    }
    let head_seq = expected_seq - 1;
    if let Some((cseq, _)) = &ckpt
        && !ckpt_vouched
    {
        return broken(
            *cseq,
            format!(
                "the prune checkpoint at record {cseq} matches no audit.prune record (a checkpoint row was forged \
                 or the prune record was deleted)"
            ),
        );
    }
    let head_text = conn
        .query_row("SELECT value FROM audit_head WHERE id = 1", [], |r| r.get::<_, Vec<u8>>(0))
        .optional()
        .map_err(sql(path, "read the audit head"))?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    match head_text {
        None => {
            return broken(head_seq + 1, "the log's authenticated head is missing (the database was edited)".into());
        }
        Some(text) => {
            let p: Vec<&str> = text.split(' ').collect();
            let (seq, hash) = (p.first().and_then(|s| s.parse::<u64>().ok()), p.get(1).copied());
            let authentic = p.len() == 3
                && seq.is_some_and(|seq| {
                    key.verify(
                        MacDomain::AuditChain,
                        &[b"head", &seq.to_be_bytes(), p[1].as_bytes()],
                        &hex::decode(p[2]).unwrap_or_default(),
                    )
                });
            if !authentic {
                return broken(head_seq, "the log's head fails its MAC (the database was edited)".into());
            }
            let seq = seq.unwrap_or_default();
            if seq > head_seq {
                return broken(
                    head_seq + 1,
                    format!(
                        "the newest records were deleted: the log's head is record {seq}, but the last record present is {head_seq}"
                    ),
                );
            }
            if seq != head_seq || hash != Some(prev.as_str()) {
                return broken(head_seq, format!("the last record does not match the log's head (record {seq})"));
            }
        }
    }
    Ok(Verdict::Intact {
        records: count,
        head_seq,
        head_hash: prev,
        from_seq,
        key_id: key.id(MacDomain::AuditChain),
        keyed_from: b.keyed_from,
    })
}

/// The hash of record `seq`, if it is still in the log.
fn hash_at(conn: &Connection, seq: u64) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT hash FROM audit WHERE seq = ?1", [seq as i64], |r| r.get(0)).optional()
}

/// A signed statement that the log had `seq` records ending in `hash`: the
/// C2SP `tlog-checkpoint` signed-note format, signed with HMAC-SHA256 under
/// the chain key (so checking one needs the master key too).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    /// `keyhole.audit/STORE-ID`: which store's log.
    pub origin: String,
    /// Sequence number of the newest record it vouches for.
    pub seq: u64,
    /// That record's hash (hex).
    pub hash: String,
    /// When it was made.
    pub time: String,
}

const EM_DASH: &str = "\u{2014}";

fn store_origin(conn: &Connection) -> rusqlite::Result<String> {
    Ok(format!("keyhole.audit/{}", meta_text(conn, "store_id")?.unwrap_or_else(|| "unknown".into())))
}

fn note_signature(key: &IntegrityKey, body: &str) -> String {
    use base64::Engine as _;
    let mut sig = hex::decode(key.id(MacDomain::AuditChain)).expect("key ids are hex");
    sig.extend_from_slice(&key.mac(MacDomain::AuditChain, &[b"checkpoint note", body.as_bytes()]));
    base64::engine::general_purpose::STANDARD.encode(sig)
}

/// Verifies the log and returns a signed checkpoint of its head.
pub fn checkpoint_note(conn: &Connection, path: &Path, key: &IntegrityKey) -> Result<String, AuditError> {
    use base64::Engine as _;
    let (head_seq, head_hash) = match verify(conn, path, key)? {
        Verdict::Intact { head_seq, head_hash, .. } => (head_seq, head_hash),
        Verdict::Broken { seq, problem } => {
            return Err(AuditError::Checkpoint(format!("refusing to sign a broken log: record {seq}: {problem}")));
        }
    };
    let origin = store_origin(conn).map_err(sql(path, "read the store id"))?;
    let hash = hex::decode(&head_hash).map_err(|_| AuditError::Checkpoint("the head hash is not hex".into()))?;
    let body = format!(
        "{origin}\n{head_seq}\n{}\ntime {}\n",
        base64::engine::general_purpose::STANDARD.encode(hash),
        now_rfc3339()
    );
    let sig = note_signature(key, &body);
    Ok(format!("{body}\n{EM_DASH} {origin} {sig}\n"))
}

/// Parses and authenticates a checkpoint note made by [`checkpoint_note`]
/// for this store.
pub fn read_checkpoint(conn: &Connection, key: &IntegrityKey, text: &str) -> Result<Checkpoint, String> {
    use base64::Engine as _;
    let (body, sigs) = text.split_once("\n\n").ok_or("not a signed note: no blank line before the signatures")?;
    let body = format!("{body}\n");
    let origin = store_origin(conn).map_err(|e| e.to_string())?;
    let good = sigs.lines().any(|l| {
        l.strip_prefix(EM_DASH)
            .and_then(|rest| rest.trim().split_once(' '))
            .is_some_and(|(name, sig)| name == origin && sig == note_signature(key, &body))
    });
    if !good {
        return Err(format!(
            "its signature does not verify with this store's audit key {} for {origin} \
             (the file was altered, or it belongs to another store)",
            key.id(MacDomain::AuditChain)
        ));
    }
    let mut lines = body.lines();
    let o = lines.next().unwrap_or_default().to_owned();
    let seq = lines.next().and_then(|l| l.parse().ok()).ok_or("line 2 is not a record number")?;
    let hash = lines
        .next()
        .and_then(|l| base64::engine::general_purpose::STANDARD.decode(l).ok())
        .map(hex::encode)
        .ok_or("line 3 is not a base64 hash")?;
    let time = lines.next().and_then(|l| l.strip_prefix("time ")).unwrap_or_default().to_owned();
    Ok(Checkpoint { origin: o, seq, hash, time })
}

/// Whether the log still contains what `c` vouches for: `Err` says how it
/// was cut or rewritten. Call after [`verify`] found the log intact.
pub fn check_against(conn: &Connection, path: &Path, v: &Verdict, c: &Checkpoint) -> Result<(), AuditError> {
    let Verdict::Intact { head_seq, from_seq, .. } = v else {
        return Ok(());
    };
    let fail = |m: String| Err(AuditError::Checkpoint(m));
    if c.seq > *head_seq {
        return fail(format!(
            "the log was cut: the checkpoint vouches for record {} ({}), but the log ends at record {head_seq}",
            c.seq, c.time
        ));
    }
    if c.seq == 0 {
        return Ok(());
    }
    let stored = if c.seq >= *from_seq {
        hash_at(conn, c.seq).map_err(sql(path, "read a record"))?
    } else {
        checkpoint(conn).map_err(sql(path, "read the checkpoint"))?.filter(|(s, _)| *s == c.seq).map(|(_, h)| h)
    };
    match stored {
        Some(h) if h == c.hash => Ok(()),
        Some(_) => fail(format!("the log was rewritten: record {} differs from the checkpoint ({})", c.seq, c.time)),
        // Pruned past it, with an authenticated prune record: nothing to compare.
        None => Ok(()),
    }
}

/// Deletes records older than `before` (RFC 3339), recording a checkpoint so
/// the rest stays verifiable, and appends an `audit.prune` record that
/// vouches for it. Returns how many records were deleted.
pub fn prune(
    conn: &mut Connection,
    path: &Path,
    key: &IntegrityKey,
    before: &str,
    actor: &Actor,
) -> Result<u64, AuditError> {
    let tx =
        conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql(path, "start a transaction"))?;
    let last: Option<(i64, String)> = tx
        .query_row("SELECT seq, hash FROM audit WHERE time < ?1 ORDER BY seq DESC LIMIT 1", [before], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(sql(path, "find records to prune"))?;
    let Some((seq, hash)) = last else { return Ok(0) };
    let n = tx.execute("DELETE FROM audit WHERE seq <= ?1", [seq]).map_err(sql(path, "delete records"))?;
    tx.execute("DELETE FROM audit_checkpoint", []).map_err(sql(path, "replace the checkpoint"))?;
    tx.execute("INSERT INTO audit_checkpoint (seq, hash, time) VALUES (?1, ?2, ?3)", params![seq, hash, now_rfc3339()])
        .map_err(sql(path, "write the checkpoint"))?;
    let mut rec = NewRecord::ok(actor, Action::AuditPrune, &Namespace::root(), None)
        .reason(format!("deleted {n} records before {before}, up to seq {seq}"));
    rec.detail = Some(serde_json::json!({ "checkpoint_seq": seq, "checkpoint_hash": hash }));
    append(&tx, key, &rec).map_err(sql(path, "record the prune"))?;
    tx.commit().map_err(sql(path, "commit"))?;
    Ok(n as u64)
}
