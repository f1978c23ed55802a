//! How a record joins the chain: its canonical encoding (built in parts,
//! so that all but its place in the chain is encoded before it queues),
//! its hash, and the append that links it to the head.

use super::*;

/// The canonical encoding a record's hash covers: every field but `hash`,
/// in this order, as compact JSON (`{"seq":..,"time":..,..,"prev_hash":..}`);
/// keyed records add `"detail"` last. Built in three parts so that all but
/// `seq` and `prev_hash` is encoded before the record joins the chain, off
/// the serial commit path: `{"seq":N` + [`body`](CanonicalBody) +
/// `,"prev_hash":"H"` + [`tail`](CanonicalTail) + `}`.
#[derive(serde::Serialize)]
struct CanonicalBody<'a> {
    time: &'a str,
    action: &'a str,
    outcome: &'a str,
    actor_kind: &'a str,
    actor: &'a str,
    flow: Option<&'a str>,
    task: Option<&'a str>,
    execution: Option<&'a str>,
    plugin_sha256: Option<&'a str>,
    namespace: &'a str,
    secret: Option<&'a str>,
    version: Option<u64>,
    reason: Option<&'a str>,
    value_hmac: Option<&'a str>,
}

/// The fields after `prev_hash`: `detail`, in keyed records only.
#[derive(serde::Serialize)]
struct CanonicalTail<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Option<&'a str>>,
}

/// The members of `value`'s JSON object, each preceded by a comma
/// (`,"a":1,"b":2`), or nothing for an empty object.
fn members(value: &impl serde::Serialize) -> Vec<u8> {
    let mut json = serde_json::to_vec(value).expect("records always encode");
    // `{...}` -> `,...`; `{}` -> ``.
    json.pop();
    if json.len() == 1 {
        json.clear();
    } else {
        json[0] = b',';
    }
    json
}

/// A record's canonical parts but `seq` and `prev_hash`, encoded.
pub(super) struct CanonicalParts {
    body: Vec<u8>,
    tail: Vec<u8>,
}

impl CanonicalParts {
    pub(super) fn of(r: &Record, keyed: bool) -> Self {
        let body = CanonicalBody {
            time: &r.time,
            action: &r.action,
            outcome: &r.outcome,
            actor_kind: &r.actor_kind,
            actor: &r.actor,
            flow: r.flow.as_deref(),
            task: r.task.as_deref(),
            execution: r.execution.as_deref(),
            plugin_sha256: r.plugin_sha256.as_deref(),
            namespace: &r.namespace,
            secret: r.secret.as_deref(),
            version: r.version,
            reason: r.reason.as_deref(),
            value_hmac: r.value_hmac.as_deref(),
        };
        let tail = CanonicalTail { detail: keyed.then_some(r.detail.as_deref()) };
        CanonicalParts { body: members(&body), tail: members(&tail) }
    }

    /// The record's hash at `seq` after `prev_hash`: HMAC under the chain
    /// key, or for records written before the chain was keyed (`key` is
    /// `None`), plain SHA-256.
    pub(super) fn hash(&self, key: Option<&IntegrityKey>, seq: u64, prev_hash: &str) -> String {
        let mut bytes = Vec::with_capacity(self.body.len() + self.tail.len() + prev_hash.len() + 40);
        bytes.extend_from_slice(b"{\"seq\":");
        bytes.extend_from_slice(seq.to_string().as_bytes());
        bytes.extend_from_slice(&self.body);
        bytes.extend_from_slice(b",\"prev_hash\":");
        serde_json::to_writer(&mut bytes, prev_hash).expect("strings always encode");
        bytes.extend_from_slice(&self.tail);
        bytes.push(b'}');
        match key {
            Some(k) => hex::encode(k.mac(MacDomain::AuditChain, &[b"record", &bytes])),
            None => hex::encode(crate::crypto::sha256(&bytes)),
        }
    }
}

impl Record {
    /// The record's hash as stored (see [`CanonicalParts::hash`]).
    pub(super) fn canonical_hash(&self, key: Option<&IntegrityKey>) -> String {
        CanonicalParts::of(self, key.is_some()).hash(key, self.seq, &self.prev_hash)
    }

    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Record {
            seq: r.get::<_, i64>("seq")? as u64,
            time: r.get("time")?,
            action: r.get("action")?,
            outcome: r.get("outcome")?,
            actor_kind: r.get("actor_kind")?,
            actor: r.get("actor")?,
            flow: r.get("flow")?,
            task: r.get("task")?,
            execution: r.get("execution")?,
            plugin_sha256: r.get("plugin_sha256")?,
            namespace: r.get("namespace")?,
            secret: r.get("secret")?,
            version: r.get::<_, Option<i64>>("version")?.map(|v| v as u64),
            reason: r.get("reason")?,
            value_hmac: r.get("value_hmac")?,
            detail: r.get("detail")?,
            prev_hash: r.get("prev_hash")?,
            hash: r.get("hash")?,
        })
    }
}

/// UTC now, RFC 3339 with milliseconds (sorts as text).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub(super) fn head(conn: &Connection) -> rusqlite::Result<(u64, String)> {
    if let Some((seq, hash)) = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)))
        .optional()?
    {
        return Ok((seq, hash));
    }
    Ok(checkpoint(conn)?.unwrap_or((0, GENESIS.to_owned())))
}

pub(super) fn checkpoint(conn: &Connection) -> rusqlite::Result<Option<(u64, String)>> {
    conn.query_row("SELECT seq, hash FROM audit_checkpoint ORDER BY seq DESC LIMIT 1", [], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
    })
    .optional()
}

/// Appends `rec` inside the caller's (IMMEDIATE) transaction, chained under
/// `key`, and moves the authenticated head to it; returns its sequence
/// number. Used by management actions so that the change and its record
/// commit together.
pub fn append(tx: &Transaction<'_>, key: &IntegrityKey, rec: &NewRecord) -> rusqlite::Result<u64> {
    append_all(tx, key, vec![Prepared::new(rec)]).map(|seqs| seqs[0])
}

/// Appends `rec` on its own, in a transaction of its own (a refusal,
/// which changes nothing else); returns its sequence number.
pub fn append_alone(conn: &rusqlite::Connection, key: &IntegrityKey, rec: &NewRecord) -> rusqlite::Result<u64> {
    let tx = Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let seq = append(&tx, key, rec)?;
    tx.commit()?;
    Ok(seq)
}

/// A record made ready to join the chain: everything but its place in it
/// (`seq`, `prev_hash`, `hash`) is filled in and encoded, so the serial
/// part of an append is one MAC and one insert.
pub(crate) struct Prepared {
    record: Record,
    parts: CanonicalParts,
}

impl Prepared {
    /// `rec`, timed now.
    pub(crate) fn new(rec: &NewRecord) -> Self {
        let record = Record::new(rec, now_rfc3339());
        let parts = CanonicalParts::of(&record, true);
        Prepared { record, parts }
    }
}

/// Appends `recs` in order inside the caller's (IMMEDIATE) transaction:
/// reads the head once, chains each record to the one before, and moves
/// the authenticated head once, to the last. Returns their sequence numbers.
pub(crate) fn append_all(tx: &Transaction<'_>, key: &IntegrityKey, recs: Vec<Prepared>) -> rusqlite::Result<Vec<u64>> {
    let (mut last, mut prev_hash) = head(tx)?;
    let mut seqs = Vec::with_capacity(recs.len());
    let mut insert = tx.prepare_cached(
        "INSERT INTO audit (seq, time, action, outcome, actor_kind, actor, flow, task, execution, plugin_sha256, \
         namespace, secret, version, reason, value_hmac, prev_hash, hash, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?;
    for Prepared { mut record, parts } in recs {
        record.seq = last + 1;
        record.hash = parts.hash(Some(key), record.seq, &prev_hash);
        record.prev_hash = prev_hash;
        insert.execute(params![
            record.seq as i64,
            record.time,
            record.action,
            record.outcome,
            record.actor_kind,
            record.actor,
            record.flow,
            record.task,
            record.execution,
            record.plugin_sha256,
            record.namespace,
            record.secret,
            record.version.map(|v| v as i64),
            record.reason,
            record.value_hmac,
            record.prev_hash,
            record.hash,
            record.detail
        ])?;
        seqs.push(record.seq);
        last = record.seq;
        prev_hash = record.hash;
    }
    if !seqs.is_empty() {
        set_head(tx, key, last, &prev_hash)?;
    }
    Ok(seqs)
}

impl Record {
    /// The stored form of `rec` at `time`, not yet in the chain (`seq`,
    /// `prev_hash` and `hash` are still to be filled in).
    pub(super) fn new(rec: &NewRecord, time: String) -> Self {
        let (actor_kind, actor, flow, task, execution, plugin) = match &rec.actor {
            Actor::Task { flow, task, execution, plugin_sha256 } => (
                "task",
                format!("{flow}/{task}"),
                Some(flow.clone()),
                Some(task.clone()),
                Some(execution.to_string()),
                Some(plugin_sha256.clone()),
            ),
            Actor::Cli { user } => ("cli", user.clone(), None, None, None, None),
            Actor::Token { id, name } => ("token", format!("{name} ({id})"), None, None, None, None),
            Actor::Server => ("server", "host serve".to_owned(), None, None, None, None),
            Actor::Trigger { flow, trigger } => {
                ("trigger", format!("{flow} {trigger}"), Some(flow.clone()), None, None, None)
            }
        };
        Record {
            seq: 0,
            time,
            action: rec.action.as_str().to_owned(),
            outcome: rec.outcome.as_str().to_owned(),
            actor_kind: actor_kind.to_owned(),
            actor,
            flow,
            task,
            execution,
            plugin_sha256: plugin,
            namespace: rec.namespace.as_str().to_owned(),
            secret: rec.secret.as_ref().map(|s| s.as_str().to_owned()),
            version: rec.version,
            reason: rec.reason.as_deref().map(bounded),
            value_hmac: rec.value_hmac.clone(),
            detail: rec.detail.as_ref().map(|d| d.to_string()),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }
}
