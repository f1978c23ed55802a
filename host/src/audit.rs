//! The audit trail: every secret access attempt and every management action,
//! recorded durably before the value is released, hash-chained so that an
//! edited, deleted or inserted record is detected.
//!
//! Records live in the `audit` table of the store's SQLite file. Each record's
//! `hash` is SHA-256 over its canonical JSON encoding, which includes the
//! previous record's hash. Appends take a `BEGIN IMMEDIATE` transaction, so
//! appends from several processes serialise and the chain stays linear.
//!
//! Reads from plugins go through [`AuditLog`], whose writer thread commits
//! every record waiting at that moment in one transaction (group commit): one
//! fsync per batch, not per read. Management actions append inside the
//! transaction that makes the change ([`append`]), so the change and its
//! record commit together or not at all.
//!
//! Invariant: a record never contains a secret value; at most an HMAC of it
//! under the audit key, which is kept apart from the master key.

use crate::names::{ExecutionId, Namespace, SecretName};
use crate::store::{StoreError, connect, sql_err};
use hmac::{Hmac, Mac};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;
use zeroize::Zeroizing;

/// Environment variable supplying the audit key (base64 of 32 bytes).
pub const AUDIT_KEY_ENV: &str = "KEYHOLE_AUDIT_KEY";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A running task.
    Task {
        /// Its flow.
        flow: String,
        /// Its task id.
        task: String,
        /// The execution.
        execution: ExecutionId,
        /// SHA-256 of the plugin.
        plugin_sha256: String,
    },
    /// An operator at the command line.
    Cli {
        /// The OS user.
        user: String,
    },
}

impl Actor {
    /// The operator running this process, from `$USER` / `$LOGNAME`.
    pub fn current_user() -> Self {
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
        Actor::Cli { user }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Action {
    /// A plugin's `secrets.get`.
    #[serde(rename = "secret.read")]
    SecretRead,
    /// A task started, with its grants (for the usage report).
    #[serde(rename = "task.start")]
    TaskStart,
    /// `host secret set`.
    #[serde(rename = "secret.set")]
    SecretSet,
    /// `host secret rm`.
    #[serde(rename = "secret.rm")]
    SecretRemove,
    /// `host secret rotate`.
    #[serde(rename = "secret.rotate")]
    SecretRotate,
    /// `host secret revoke`.
    #[serde(rename = "secret.revoke")]
    SecretRevoke,
    /// `host secret destroy`.
    #[serde(rename = "secret.destroy")]
    SecretDestroy,
    /// `host secret export`.
    #[serde(rename = "secret.export")]
    SecretExport,
    /// `host secret import`.
    #[serde(rename = "secret.import")]
    SecretImport,
    /// `host key rotate`.
    #[serde(rename = "key.rotate")]
    KeyRotate,
    /// `host backend add-vault` / `host backend rm`.
    #[serde(rename = "backend.change")]
    BackendChange,
    /// `host audit prune`.
    #[serde(rename = "audit.prune")]
    AuditPrune,
    /// `host audit enable-fingerprints`.
    #[serde(rename = "audit.key-create")]
    AuditKeyCreate,
}

impl Action {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::SecretRead => "secret.read",
            Action::TaskStart => "task.start",
            Action::SecretSet => "secret.set",
            Action::SecretRemove => "secret.rm",
            Action::SecretRotate => "secret.rotate",
            Action::SecretRevoke => "secret.revoke",
            Action::SecretDestroy => "secret.destroy",
            Action::SecretExport => "secret.export",
            Action::SecretImport => "secret.import",
            Action::KeyRotate => "key.rotate",
            Action::BackendChange => "backend.change",
            Action::AuditPrune => "audit.prune",
            Action::AuditKeyCreate => "audit.key-create",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A value was released / the action succeeded.
    Granted,
    /// Not granted to the task.
    Denied,
    /// In no namespace of the chain.
    NotFound,
    /// Revoked.
    Revoked,
    /// Expired.
    Expired,
    /// The host could not serve it.
    Unavailable,
    /// A management action succeeded.
    Ok,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Denied => "denied",
            Outcome::NotFound => "not-found",
            Outcome::Revoked => "revoked",
            Outcome::Expired => "expired",
            Outcome::Unavailable => "unavailable",
            Outcome::Ok => "ok",
        }
    }
}

/// A record to append. Never holds a value.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: Action,
    /// Result.
    pub outcome: Outcome,
    /// Namespace asked in (for reads, the task's namespace).
    pub namespace: Namespace,
    /// The secret concerned, if any.
    pub secret: Option<SecretName>,
    /// The version concerned, if known.
    pub version: Option<u64>,
    /// Free text: why, where it was found, grants (never a value).
    pub reason: Option<String>,
    /// HMAC-SHA256 of the released value under the audit key, if enabled.
    pub value_hmac: Option<String>,
}

/// A stored record, as listed and exported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// UTC time, RFC 3339 with milliseconds.
    pub time: String,
    /// `secret.read`, `secret.set`, ...
    pub action: String,
    /// `granted`, `denied`, ...
    pub outcome: String,
    /// `task` or `cli`.
    pub actor_kind: String,
    /// The OS user (cli) or `flow/task` (task).
    pub actor: String,
    /// Flow id, for task actors.
    pub flow: Option<String>,
    /// Task id, for task actors.
    pub task: Option<String>,
    /// Execution id, for task actors.
    pub execution: Option<String>,
    /// Plugin SHA-256, for task actors.
    pub plugin_sha256: Option<String>,
    /// Namespace.
    pub namespace: String,
    /// Secret name.
    pub secret: Option<String>,
    /// Secret version.
    pub version: Option<u64>,
    /// Why / details.
    pub reason: Option<String>,
    /// HMAC of the value under the audit key.
    pub value_hmac: Option<String>,
    /// Hash of the previous record.
    pub prev_hash: String,
    /// Hash of this record.
    pub hash: String,
}

/// Audit failures.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// SQLite refused, or opening the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// There is no store file yet.
    #[error("no keyhole store at {0}: nothing has been recorded yet")]
    NoStore(PathBuf),
    /// The writer thread is gone.
    #[error("audit log writer stopped")]
    WriterGone,
    /// The writer could not start or commit.
    #[error("{0}")]
    Writer(String),
    /// The audit key is malformed or unreadable.
    #[error("audit key: {0}")]
    Key(String),
}

fn sql(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> AuditError + use<> {
    let to_store = sql_err(path, op);
    move |err| AuditError::Store(to_store(err))
}

/// Creates the audit tables (called from the store's schema migration).
pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        actor_kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        flow TEXT,
        task TEXT,
        execution TEXT,
        plugin_sha256 TEXT,
        namespace TEXT NOT NULL,
        secret TEXT,
        version INTEGER,
        reason TEXT,
        value_hmac TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS audit_secret ON audit (secret, time);
    CREATE INDEX IF NOT EXISTS audit_execution ON audit (execution);
    CREATE TABLE IF NOT EXISTS audit_checkpoint (
        seq INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        time TEXT NOT NULL
    );
";

/// The canonical encoding a record's hash covers: every field but `hash`,
/// in this order, as compact JSON.
#[derive(serde::Serialize)]
struct Canonical<'a> {
    seq: u64,
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
    prev_hash: &'a str,
}

impl Record {
    fn canonical_hash(&self) -> String {
        let c = Canonical {
            seq: self.seq,
            time: &self.time,
            action: &self.action,
            outcome: &self.outcome,
            actor_kind: &self.actor_kind,
            actor: &self.actor,
            flow: self.flow.as_deref(),
            task: self.task.as_deref(),
            execution: self.execution.as_deref(),
            plugin_sha256: self.plugin_sha256.as_deref(),
            namespace: &self.namespace,
            secret: self.secret.as_deref(),
            version: self.version,
            reason: self.reason.as_deref(),
            value_hmac: self.value_hmac.as_deref(),
            prev_hash: &self.prev_hash,
        };
        let bytes = serde_json::to_vec(&c).expect("records always encode");
        hex::encode(Sha256::digest(&bytes))
    }

    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
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
            prev_hash: r.get("prev_hash")?,
            hash: r.get("hash")?,
        })
    }
}

/// UTC now, RFC 3339 with milliseconds (sorts as text).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn head(conn: &Connection) -> rusqlite::Result<(u64, String)> {
    if let Some((seq, hash)) = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)))
        .optional()?
    {
        return Ok((seq, hash));
    }
    Ok(checkpoint(conn)?.unwrap_or((0, GENESIS.to_owned())))
}

fn checkpoint(conn: &Connection) -> rusqlite::Result<Option<(u64, String)>> {
    conn.query_row("SELECT seq, hash FROM audit_checkpoint ORDER BY seq DESC LIMIT 1", [], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
    })
    .optional()
}

/// Appends `rec` inside the caller's (IMMEDIATE) transaction and returns its
/// sequence number. Used by management actions so that the change and its
/// record commit together.
pub fn append(tx: &Transaction<'_>, rec: &NewRecord) -> rusqlite::Result<u64> {
    let (last, prev_hash) = head(tx)?;
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
    };
    let mut record = Record {
        seq: last + 1,
        time: now_rfc3339(),
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
        reason: rec.reason.clone(),
        value_hmac: rec.value_hmac.clone(),
        prev_hash,
        hash: String::new(),
    };
    record.hash = record.canonical_hash();
    tx.prepare_cached(
        "INSERT INTO audit (seq, time, action, outcome, actor_kind, actor, flow, task, execution, plugin_sha256, \
         namespace, secret, version, reason, value_hmac, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?
    .execute(params![
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
        record.hash
    ])?;
    Ok(record.seq)
}

/// The key for value fingerprints, kept apart from the master key.
#[derive(Clone)]
pub struct AuditKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(***)")
    }
}

impl AuditKey {
    /// `$KEYHOLE_AUDIT_KEY` or the file `path`; `None` when neither exists
    /// (fingerprints disabled).
    pub fn load(path: &Path) -> Result<Option<Self>, AuditError> {
        use base64::Engine as _;
        let text = match std::env::var(AUDIT_KEY_ENV) {
            Ok(t) => Zeroizing::new(t),
            Err(_) => match std::fs::read_to_string(path) {
                Ok(t) => Zeroizing::new(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(AuditError::Key(format!("cannot read {}: {e}", path.display()))),
            },
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| AuditError::Key(format!("not base64 ({e})")))?;
        if bytes.len() < 32 {
            return Err(AuditError::Key(format!("must be at least 32 bytes, got {}", bytes.len())));
        }
        Ok(Some(AuditKey(Zeroizing::new(bytes))))
    }

    /// Creates a new random key file (mode 0600); fails if it exists.
    pub fn create(path: &Path) -> Result<Self, AuditError> {
        use base64::Engine as _;
        use std::io::Write;
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        getrandom::fill(&mut bytes).map_err(|e| AuditError::Key(e.to_string()))?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let io = |e: std::io::Error| AuditError::Key(format!("cannot create {}: {e}", path.display()));
        let mut f = opts.open(path).map_err(io)?;
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*bytes));
        f.write_all(text.as_bytes()).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(AuditKey(bytes))
    }

    /// HMAC-SHA256 of `value`, lowercase hex: the value's fingerprint.
    pub fn fingerprint(&self, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The durable, group-committing writer used on the plugin read path.
///
/// Group commit without a writer thread: a caller queues its record; if no
/// commit is in progress it becomes the leader, takes everything queued and
/// commits it in one transaction on its own thread; callers that arrive
/// meanwhile wait and are committed together by the next leader. One reader
/// pays one fsync and no thread handoff; many readers share fsyncs.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    key: Option<AuditKey>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.shared.path).finish_non_exhaustive()
    }
}

struct Shared {
    path: PathBuf,
    conn: Mutex<Connection>,
    state: Mutex<Queue>,
    committed: Condvar,
}

#[derive(Default)]
struct Queue {
    next_ticket: u64,
    /// Queued records: ticket, record, whether a caller waits for it.
    pending: Vec<(u64, NewRecord, bool)>,
    leader: bool,
    /// Outcomes of committed tickets not yet collected by their waiters.
    done: HashMap<u64, Result<u64, String>>,
    /// Every ticket below this has been committed or has failed.
    settled_below: u64,
}

impl AuditLog {
    /// Opens the log in the store file at `path` with its own connection.
    /// `key` enables value fingerprints.
    pub fn open(path: &Path, key: Option<AuditKey>) -> Result<Self, AuditError> {
        let conn = connect(path)?;
        Ok(AuditLog {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                conn: Mutex::new(conn),
                state: Mutex::new(Queue::default()),
                committed: Condvar::new(),
            }),
            key,
        })
    }

    /// Opens a log in a private in-memory database: nothing is durable. For
    /// benchmarks that measure what durability costs; never used by `host`.
    #[doc(hidden)]
    pub fn open_in_memory() -> Result<Self, AuditError> {
        Self::open(Path::new(":memory:"), None)
    }

    /// The fingerprint of `value`, when fingerprints are enabled.
    pub fn fingerprint(&self, value: &str) -> Option<String> {
        self.key.as_ref().map(|k| k.fingerprint(value))
    }

    /// Appends `record` and returns its sequence number once it is durably
    /// committed.
    pub fn record(&self, record: NewRecord) -> Result<u64, AuditError> {
        let ticket = self.enqueue(record, true);
        self.wait_for(ticket)
    }

    /// Queues `record` without waiting. It commits with the next batch; a
    /// later [`AuditLog::record`] or [`AuditLog::flush`] returns only after
    /// it is durable. For records that release nothing (a task starting).
    pub fn record_later(&self, record: NewRecord) -> Result<(), AuditError> {
        self.enqueue(record, false);
        Ok(())
    }

    /// Returns once every record queued before it is durable.
    pub fn flush(&self) -> Result<(), AuditError> {
        let last = lock(&self.shared.state).next_ticket;
        if last == 0 {
            return Ok(());
        }
        self.wait_for(last - 1).map(|_| ())
    }

    fn enqueue(&self, record: NewRecord, waiter: bool) -> u64 {
        let mut q = lock(&self.shared.state);
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push((ticket, record, waiter));
        ticket
    }

    /// Waits until `ticket` is settled, leading commits when no one else is.
    fn wait_for(&self, ticket: u64) -> Result<u64, AuditError> {
        let sh = &*self.shared;
        let mut q = lock(&sh.state);
        loop {
            if ticket < q.settled_below {
                return match q.done.remove(&ticket) {
                    Some(Ok(seq)) => Ok(seq),
                    Some(Err(why)) => Err(AuditError::Writer(format!("audit log {}: {why}", sh.path.display()))),
                    None => Ok(0),
                };
            }
            if q.leader {
                q = sh.committed.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            q.leader = true;
            let batch = std::mem::take(&mut q.pending);
            let settles = q.next_ticket;
            drop(q);
            let result = commit(&mut lock(&sh.conn), &sh.path, &batch);
            q = lock(&sh.state);
            if let Err(why) = &result {
                tracing::error!("{} audit record(s) could not be written: {why}", batch.len());
            }
            for (i, (t, _, waiter)) in batch.iter().enumerate() {
                if *waiter {
                    q.done.insert(*t, result.as_ref().map(|seqs| seqs[i]).map_err(Clone::clone));
                }
            }
            q.settled_below = settles;
            q.leader = false;
            sh.committed.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Appends a batch in one IMMEDIATE transaction.
fn commit(conn: &mut Connection, path: &Path, batch: &[(u64, NewRecord, bool)]) -> Result<Vec<u64>, String> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let why = |op: &str, e: rusqlite::Error| format!("cannot {op} in {}: {e}", path.display());
    let tx =
        conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| why("start a transaction", e))?;
    let mut seqs = Vec::with_capacity(batch.len());
    for (_, r, _) in batch {
        seqs.push(append(&tx, r).map_err(|e| why("append a record", e))?);
    }
    tx.commit().map_err(|e| why("commit", e))?;
    Ok(seqs)
}

/// Opens the store file for reading and maintaining the audit log. Needs no
/// master key: auditors can inspect the log without access to secrets.
/// Creates the file only when `create` is set.
pub fn open(path: &Path, create: bool) -> Result<Connection, AuditError> {
    if !create && !path.exists() {
        return Err(AuditError::NoStore(path.to_owned()));
    }
    Ok(connect(path)?)
}

/// Filters for `host audit list`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Secret name.
    pub secret: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Flow id.
    pub flow: Option<String>,
    /// Execution id.
    pub execution: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
    /// Action.
    pub action: Option<String>,
    /// Records at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Records before this RFC 3339 time.
    pub until: Option<String>,
    /// At most this many (the newest).
    pub limit: Option<u64>,
}

/// Lists records matching `f`, oldest first.
pub fn list(conn: &Connection, path: &Path, f: &Filter) -> Result<Vec<Record>, AuditError> {
    let mut stmt = conn
        .prepare(
            "SELECT * FROM (SELECT * FROM audit WHERE \
               (?1 IS NULL OR secret = ?1) AND (?2 IS NULL OR namespace = ?2) AND (?3 IS NULL OR flow = ?3) \
               AND (?4 IS NULL OR execution = ?4) AND (?5 IS NULL OR outcome = ?5) AND (?6 IS NULL OR action = ?6) \
               AND (?7 IS NULL OR time >= ?7) AND (?8 IS NULL OR time < ?8) \
             ORDER BY seq DESC LIMIT ?9) ORDER BY seq",
        )
        .map_err(sql(path, "query the audit log"))?;
    let limit = f.limit.map_or(-1, |l| l as i64);
    let rows = stmt
        .query_map(
            params![f.secret, f.namespace, f.flow, f.execution, f.outcome, f.action, f.since, f.until, limit],
            Record::from_row,
        )
        .map_err(sql(path, "query the audit log"))?;
    rows.collect::<Result<_, _>>().map_err(sql(path, "read the audit log"))
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Verdict {
    /// Every record links to the one before and hashes to its stored hash.
    Intact {
        /// Records checked.
        records: u64,
        /// Sequence number of the newest record (the head).
        head_seq: u64,
        /// Hash of the newest record: keep a copy elsewhere to detect truncation.
        head_hash: String,
        /// Where verification started (after a prune checkpoint).
        from_seq: u64,
    },
    /// The first record where the chain breaks.
    Broken {
        /// Its sequence number (or the expected one, for a deleted record).
        seq: u64,
        /// What is wrong.
        problem: String,
    },
}

/// Walks the chain from the newest checkpoint (or the start) to the head.
pub fn verify(conn: &Connection, path: &Path) -> Result<Verdict, AuditError> {
    let (mut expected_seq, mut prev) = match checkpoint(conn).map_err(sql(path, "read the checkpoint"))? {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_owned()),
    };
    let from_seq = expected_seq;
    let mut stmt = conn.prepare("SELECT * FROM audit ORDER BY seq").map_err(sql(path, "read the audit log"))?;
    let rows = stmt.query_map([], Record::from_row).map_err(sql(path, "read the audit log"))?;
    let mut count = 0;
    for row in rows {
        let r = row.map_err(sql(path, "read a record"))?;
        if r.seq < expected_seq {
            return Ok(Verdict::Broken { seq: r.seq, problem: "record precedes the prune checkpoint".into() });
        }
        if r.seq > expected_seq {
            return Ok(Verdict::Broken {
                seq: expected_seq,
                problem: format!("record {expected_seq} is missing (next present is {})", r.seq),
            });
        }
        if r.prev_hash != prev {
            return Ok(Verdict::Broken {
                seq: r.seq,
                problem: "its prev_hash does not match the previous record (a record was inserted or removed)".into(),
            });
        }
        if r.canonical_hash() != r.hash {
            return Ok(Verdict::Broken {
                seq: r.seq,
                problem: "its contents do not match its hash (the record was altered)".into(),
            });
        }
        prev = r.hash;
        expected_seq += 1;
        count += 1;
    }
    Ok(Verdict::Intact { records: count, head_seq: expected_seq - 1, head_hash: prev, from_seq })
}

/// Deletes records older than `before` (RFC 3339), recording a checkpoint so
/// the rest stays verifiable, and appends an `audit.prune` record. Returns
/// how many records were deleted.
pub fn prune(conn: &mut Connection, path: &Path, before: &str, actor: &Actor) -> Result<u64, AuditError> {
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
    tx.execute(
        "INSERT OR REPLACE INTO audit_checkpoint (seq, hash, time) VALUES (?1, ?2, ?3)",
        params![seq, hash, now_rfc3339()],
    )
    .map_err(sql(path, "write the checkpoint"))?;
    append(
        &tx,
        &NewRecord {
            actor: actor.clone(),
            action: Action::AuditPrune,
            outcome: Outcome::Ok,
            namespace: Namespace::root(),
            secret: None,
            version: None,
            reason: Some(format!("deleted {n} records before {before}, up to seq {seq}")),
            value_hmac: None,
        },
    )
    .map_err(sql(path, "record the prune"))?;
    tx.commit().map_err(sql(path, "commit"))?;
    Ok(n as u64)
}

/// One line of the usage report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Secret name.
    pub secret: String,
    /// Flow id.
    pub flow: String,
    /// Task id.
    pub task: String,
    /// Granted reads.
    pub reads: u64,
    /// Time of the last granted read, if any.
    pub last_read: Option<String>,
}

/// Per secret and task: how often it was read and when last; grants that
/// were never used show `reads: 0` (candidates for removal).
pub fn usage(conn: &Connection, path: &Path) -> Result<Vec<Usage>, AuditError> {
    let mut out: std::collections::BTreeMap<(String, String, String), Usage> = Default::default();
    let mut stmt = conn
        .prepare("SELECT flow, task, reason FROM audit WHERE action = 'task.start'")
        .map_err(sql(path, "read task starts"))?;
    let starts = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?)))
        .map_err(sql(path, "read task starts"))?;
    for s in starts {
        let (flow, task, reason) = s.map_err(sql(path, "read task starts"))?;
        let grants: Vec<String> = reason
            .as_deref()
            .and_then(|r| r.strip_prefix("grants: "))
            .and_then(|g| serde_json::from_str(g).ok())
            .unwrap_or_default();
        for g in grants {
            out.entry((g.clone(), flow.clone(), task.clone())).or_insert(Usage {
                secret: g,
                flow: flow.clone(),
                task: task.clone(),
                reads: 0,
                last_read: None,
            });
        }
    }
    let mut stmt = conn
        .prepare(
            "SELECT secret, flow, task, count(*), max(time) FROM audit \
             WHERE action = 'secret.read' AND outcome = 'granted' GROUP BY secret, flow, task",
        )
        .map_err(sql(path, "read usage"))?;
    let reads = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get(4)?))
        })
        .map_err(sql(path, "read usage"))?;
    for row in reads {
        let (secret, flow, task, n, last) = row.map_err(sql(path, "read usage"))?;
        let e = out.entry((secret.clone(), flow.clone(), task.clone())).or_insert(Usage {
            secret,
            flow,
            task,
            reads: 0,
            last_read: None,
        });
        e.reads = n as u64;
        e.last_read = last;
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::store::SecretStore;

    fn rec(name: &str, outcome: Outcome) -> NewRecord {
        NewRecord {
            actor: Actor::Cli { user: "tester".into() },
            action: Action::SecretRead,
            outcome,
            namespace: Namespace::new("a.b").unwrap(),
            secret: Some(SecretName::new(name).unwrap()),
            version: Some(1),
            reason: None,
            value_hmac: None,
        }
    }

    fn setup() -> (tempfile::TempDir, PathBuf, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        SecretStore::open_with_key(&path, MasterKey::generate()).unwrap();
        let log = AuditLog::open(&path, None).unwrap();
        (dir, path, log)
    }

    #[test]
    fn records_chain_and_verify() {
        let (_d, path, log) = setup();
        for i in 0..5 {
            assert_eq!(log.record(rec(&format!("S{i}"), Outcome::Granted)).unwrap(), i + 1);
        }
        let conn = Connection::open(&path).unwrap();
        match verify(&conn, &path).unwrap() {
            Verdict::Intact { records, head_seq, .. } => assert_eq!((records, head_seq), (5, 5)),
            v => panic!("{v:?}"),
        }
        conn.execute("UPDATE audit SET outcome = 'denied' WHERE seq = 3", []).unwrap();
        assert!(matches!(verify(&conn, &path).unwrap(), Verdict::Broken { seq: 3, .. }));
    }

    #[test]
    fn concurrent_records_are_group_committed_without_loss() {
        let (_d, path, log) = setup();
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        log.record(rec(&format!("T{t}_{i}"), Outcome::Denied)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        assert!(matches!(verify(&conn, &path).unwrap(), Verdict::Intact { records: 320, .. }));
    }

    #[test]
    fn prune_keeps_the_rest_verifiable() {
        let (_d, path, log) = setup();
        for i in 0..4 {
            log.record(rec(&format!("S{i}"), Outcome::Granted)).unwrap();
        }
        let mut conn = Connection::open(&path).unwrap();
        let future =
            humantime::format_rfc3339_millis(SystemTime::now() + std::time::Duration::from_secs(60)).to_string();
        assert_eq!(prune(&mut conn, &path, &future, &Actor::Cli { user: "t".into() }).unwrap(), 4);
        log.record(rec("AFTER", Outcome::Granted)).unwrap();
        match verify(&conn, &path).unwrap() {
            Verdict::Intact { records, from_seq, head_seq, .. } => assert_eq!((records, from_seq, head_seq), (2, 5, 6)),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn fingerprints_need_the_key_and_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.key");
        assert!(AuditKey::load(&p).unwrap().is_none());
        let k = AuditKey::create(&p).unwrap();
        let again = AuditKey::load(&p).unwrap().unwrap();
        assert_eq!(k.fingerprint("v"), again.fingerprint("v"));
        assert_ne!(k.fingerprint("v"), k.fingerprint("w"));
        assert!(AuditKey::create(&p).is_err(), "an existing key is never overwritten");
    }
}
