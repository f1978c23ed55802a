//! The audit trail: every secret access attempt and every management action,
//! recorded durably before the value is released, hash-chained so that an
//! edited, deleted or inserted record is detected.
//!
//! Records live in the `audit` table of the store's SQLite file. Each record's
//! `hash` is an HMAC-SHA256, under the audit subkey of the store's integrity
//! key, over its canonical JSON encoding, which includes the previous
//! record's hash: whoever can write the database but lacks the master key
//! can neither edit a record nor recompute the chain. The newest record is
//! also named by an authenticated head in `meta`, so deleting the newest
//! records is caught, and signed checkpoints ([`checkpoint_note`]) that the
//! operator keeps outside the database catch a rollback of the whole file.
//! Records written before the chain was keyed (by keyhole 0.1) keep their
//! plain SHA-256 hashes up to an authenticated boundary. Appends take a
//! `BEGIN IMMEDIATE` transaction, so appends from several processes
//! serialise and the chain stays linear.
//!
//! Reads from plugins go through [`AuditLog`], whose writer thread commits
//! every record waiting at that moment in one transaction (group commit): one
//! fsync per batch, not per read. Management actions append inside the
//! transaction that makes the change ([`append`]), so the change and its
//! record commit together or not at all.
//!
//! Invariant: a record never contains a secret value; at most an HMAC of it
//! under the audit key, which is kept apart from the master key. Writing a
//! record needs the integrity key; listing needs no key; verifying needs the
//! integrity key. Plugin-chosen text in a record is bounded
//! ([`MAX_FIELD_LEN`]).

use crate::crypto::{IntegrityKey, MacDomain};
use crate::db::{DbError, connect, sql_err};
use crate::names::{ExecutionId, Namespace, SecretName};
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
    /// The operator running this process: the OS user of its effective uid,
    /// never an environment variable the caller could set.
    pub fn current_user() -> Self {
        Actor::Cli { user: os_user() }
    }
}

/// `name (uid N)` of this process's effective user.
fn os_user() -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective uid.
        if let Ok(meta) = std::fs::metadata("/proc/self") {
            let uid = meta.uid();
            let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|text| {
                text.lines().find_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
                })
            });
            return match name {
                Some(n) => format!("{n} (uid {uid})"),
                None => format!("uid {uid}"),
            };
        }
    }
    "unknown".into()
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
    /// A stored row failed its integrity check.
    #[serde(rename = "integrity.check")]
    IntegrityCheck,
    /// The integrity key was created and existing rows authenticated
    /// (first use of a store written by keyhole 0.1).
    #[serde(rename = "integrity.init")]
    IntegrityInit,
    /// A task reached its cap of audited secret requests.
    #[serde(rename = "task.read-cap")]
    TaskReadCap,
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
            Action::IntegrityCheck => "integrity.check",
            Action::IntegrityInit => "integrity.init",
            Action::TaskReadCap => "task.read-cap",
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
    /// A stored row failed its integrity check; nothing was released.
    Tampered,
    /// A remote change is about to be attempted (its outcome follows).
    Pending,
    /// A remote change failed.
    Failed,
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
            Outcome::Tampered => "tampered",
            Outcome::Pending => "pending",
            Outcome::Failed => "failed",
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
    /// Structured details (JSON), e.g. a prune's checkpoint.
    pub detail: Option<serde_json::Value>,
}

impl NewRecord {
    /// A successful management action by `actor`.
    pub fn ok(actor: &Actor, action: Action, namespace: &Namespace, secret: Option<&SecretName>) -> Self {
        NewRecord {
            actor: actor.clone(),
            action,
            outcome: Outcome::Ok,
            namespace: namespace.clone(),
            secret: secret.cloned(),
            version: None,
            reason: None,
            value_hmac: None,
            detail: None,
        }
    }

    /// With a version.
    pub fn version(mut self, v: u64) -> Self {
        self.version = Some(v);
        self
    }

    /// With a reason.
    pub fn reason(mut self, why: impl Into<String>) -> Self {
        self.reason = Some(why.into());
        self
    }

    /// With an outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// With `key: value` added to its structured detail.
    pub fn detail_field(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        let detail = self.detail.get_or_insert_with(|| serde_json::json!({}));
        if let Some(map) = detail.as_object_mut() {
            map.insert(key.to_owned(), value.into());
        }
        self
    }
}

/// Longest text a record keeps in a free-text field (after masking);
/// longer text is cut at a character boundary and marked.
pub const MAX_FIELD_LEN: usize = 256;

/// Cuts `text` to [`MAX_FIELD_LEN`] bytes, saying how much was dropped.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_FIELD_LEN {
        return text.to_owned();
    }
    let mut end = MAX_FIELD_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} more bytes cut]", &text[..end], text.len() - end)
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
    /// Structured details (JSON text).
    pub detail: Option<String>,
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
    Db(#[from] DbError),
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
    /// A checkpoint could not be made, read or matched.
    #[error("audit checkpoint: {0}")]
    Checkpoint(String),
}

fn sql(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> AuditError + use<> {
    let to_db = sql_err(path, op);
    move |err| AuditError::Db(to_db(err))
}

/// The canonical encoding a record's hash covers: every field but `hash`,
/// in this order, as compact JSON. Keyed records add `detail`.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Option<&'a str>>,
}

impl Record {
    /// The record's hash: HMAC under the chain key, or for records written
    /// before the chain was keyed (`key` is `None`), plain SHA-256.
    fn canonical_hash(&self, key: Option<&IntegrityKey>) -> String {
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
            detail: key.map(|_| self.detail.as_deref()),
        };
        let bytes = serde_json::to_vec(&c).expect("records always encode");
        match key {
            Some(k) => hex::encode(k.mac(MacDomain::AuditChain, &[b"record", &bytes])),
            None => hex::encode(Sha256::digest(&bytes)),
        }
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

/// Appends `rec` inside the caller's (IMMEDIATE) transaction, chained under
/// `key`, and moves the authenticated head to it; returns its sequence
/// number. Used by management actions so that the change and its record
/// commit together.
pub fn append(tx: &Transaction<'_>, key: &IntegrityKey, rec: &NewRecord) -> rusqlite::Result<u64> {
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
        reason: rec.reason.as_deref().map(bounded),
        value_hmac: rec.value_hmac.clone(),
        detail: rec.detail.as_ref().map(|d| d.to_string()),
        prev_hash,
        hash: String::new(),
    };
    record.hash = record.canonical_hash(Some(key));
    tx.prepare_cached(
        "INSERT INTO audit (seq, time, action, outcome, actor_kind, actor, flow, task, execution, plugin_sha256, \
         namespace, secret, version, reason, value_hmac, prev_hash, hash, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
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
        record.hash,
        record.detail
    ])?;
    set_head(tx, key, record.seq, &record.hash)?;
    Ok(record.seq)
}

const BOUNDARY: &str = "audit_keyed_from";

fn set_head(conn: &Connection, key: &IntegrityKey, seq: u64, hash: &str) -> rusqlite::Result<()> {
    let mac = hex::encode(key.mac(MacDomain::AuditChain, &[b"head", &seq.to_be_bytes(), hash.as_bytes()]));
    conn.prepare_cached("INSERT OR REPLACE INTO audit_head (id, value) VALUES (1, ?1)")?
        .execute(params![format!("{seq} {hash} {mac}").into_bytes()])?;
    Ok(())
}

fn meta_text(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, Vec<u8>>(0))
        .optional()
        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Keys the chain from the next record on: records up to the current head
/// keep their plain hashes, and the boundary (with the head and the newest
/// prune checkpoint at this moment) is authenticated. Called once, in the
/// transaction that creates the store's integrity key.
pub(crate) fn key_the_chain(tx: &Transaction<'_>, key: &IntegrityKey) -> rusqlite::Result<()> {
    let (seq, hash) = head(tx)?;
    let (cseq, chash) = checkpoint(tx)?.unwrap_or((0, GENESIS.to_owned()));
    let fields = format!("{} {hash} {cseq} {chash}", seq + 1);
    let mac = hex::encode(key.mac(MacDomain::AuditChain, &[b"boundary", fields.as_bytes()]));
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![BOUNDARY, format!("{fields} {mac}").into_bytes()],
    )?;
    set_head(tx, key, seq, &hash)
}

/// Where keyed records start, and what the log looked like then.
struct Boundary {
    keyed_from: u64,
    legacy_head: String,
    checkpoint: (u64, String),
}

fn boundary(conn: &Connection, key: &IntegrityKey) -> rusqlite::Result<Result<Boundary, String>> {
    let Some(text) = meta_text(conn, BOUNDARY)? else {
        return Ok(Err("the log's keyed boundary is missing from meta (the database was edited)".into()));
    };
    let parts: Vec<&str> = text.split(' ').collect();
    let ok = parts.len() == 5
        && key.verify(
            MacDomain::AuditChain,
            &[b"boundary", parts[..4].join(" ").as_bytes()],
            &hex::decode(parts[4]).unwrap_or_default(),
        );
    let parsed = || -> Option<Boundary> {
        Some(Boundary {
            keyed_from: parts[0].parse().ok()?,
            legacy_head: parts[1].to_owned(),
            checkpoint: (parts[2].parse().ok()?, parts[3].to_owned()),
        })
    };
    Ok(match (ok, parsed()) {
        (true, Some(b)) => Ok(b),
        _ => {
            Err("the log's keyed boundary fails its MAC (the database was edited, or this is another store's key)"
                .into())
        }
    })
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
        let io = |e: std::io::Error| AuditError::Key(format!("cannot create {}: {e}", path.display()));
        let mut f = crate::data_dir::private_file_options().create_new(true).open(path).map_err(io)?;
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

impl Shared {
    fn chain_key(&self) -> &IntegrityKey {
        &self.chain
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.shared.path).finish_non_exhaustive()
    }
}

struct Shared {
    path: PathBuf,
    chain: IntegrityKey,
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
    /// Opens the log in the store file at `path` with its own connection;
    /// records are chained under `chain` (the store's integrity key).
    /// `key` enables value fingerprints.
    pub fn open(path: &Path, chain: IntegrityKey, key: Option<AuditKey>) -> Result<Self, AuditError> {
        let conn = connect(path)?;
        Ok(AuditLog {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                chain,
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
        Self::open(Path::new(":memory:"), IntegrityKey::generate(), None)
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
            let result = commit(&mut lock(&sh.conn), &sh.path, sh.chain_key(), &batch);
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
fn commit(
    conn: &mut Connection,
    path: &Path,
    key: &IntegrityKey,
    batch: &[(u64, NewRecord, bool)],
) -> Result<Vec<u64>, String> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let why = |op: &str, e: rusqlite::Error| format!("cannot {op} in {}: {e}", path.display());
    let tx =
        conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| why("start a transaction", e))?;
    let mut seqs = Vec::with_capacity(batch.len());
    for (_, r, _) in batch {
        seqs.push(append(&tx, key, r).map_err(|e| why("append a record", e))?);
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
            && r.action == Action::AuditPrune.as_str()
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

/// Time of the newest granted read of `name` found in exactly `namespace`.
pub fn last_read(
    conn: &Connection,
    path: &Path,
    namespace: &Namespace,
    name: &SecretName,
) -> Result<Option<String>, AuditError> {
    conn.query_row(
        "SELECT max(time) FROM audit WHERE action = 'secret.read' AND outcome = 'granted' AND secret = ?1 \
         AND (json_extract(detail, '$.found_in') = ?2 OR (detail IS NULL AND reason = ?3))",
        params![name.as_str(), namespace.as_str(), format!("found in namespace {namespace}")],
        |r| r.get(0),
    )
    .map_err(sql(path, "find the last read"))
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
        .prepare("SELECT flow, task, reason, detail FROM audit WHERE action = 'task.start'")
        .map_err(sql(path, "read task starts"))?;
    let starts = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(sql(path, "read task starts"))?;
    for s in starts {
        let (flow, task, reason, detail) = s.map_err(sql(path, "read task starts"))?;
        // The grants are typed in `detail`; records of keyhole 0.1 had them
        // only in the reason text.
        let grants: Vec<String> = match detail.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok()) {
            Some(d) => serde_json::from_value(d["grants"].clone()).unwrap_or_default(),
            None => reason
                .as_deref()
                .and_then(|r| r.strip_prefix("grants: "))
                .and_then(|g| serde_json::from_str(g).ok())
                .unwrap_or_default(),
        };
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
            detail: None,
        }
    }

    fn setup() -> (tempfile::TempDir, PathBuf, AuditLog, IntegrityKey) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = SecretStore::open_with_key(&path, MasterKey::generate()).unwrap();
        let key = store.integrity().clone();
        let log = AuditLog::open(&path, key.clone(), None).unwrap();
        (dir, path, log, key)
    }

    #[test]
    fn records_chain_and_verify() {
        let (_d, path, log, key) = setup();
        for i in 0..5 {
            assert_eq!(log.record(rec(&format!("S{i}"), Outcome::Granted)).unwrap(), i + 1);
        }
        let conn = Connection::open(&path).unwrap();
        match verify(&conn, &path, &key).unwrap() {
            Verdict::Intact { records, head_seq, .. } => assert_eq!((records, head_seq), (5, 5)),
            v => panic!("{v:?}"),
        }
        conn.execute("UPDATE audit SET outcome = 'denied' WHERE seq = 3", []).unwrap();
        assert!(matches!(verify(&conn, &path, &key).unwrap(), Verdict::Broken { seq: 3, .. }));
    }

    #[test]
    fn a_recomputed_chain_or_a_cut_head_is_caught() {
        let (_d, path, log, key) = setup();
        for i in 0..4 {
            log.record(rec(&format!("S{i}"), Outcome::Granted)).unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        let note = checkpoint_note(&conn, &path, &key).unwrap();
        let c = read_checkpoint(&conn, &key, &note).unwrap();
        assert_eq!(c.seq, 4);
        assert!(read_checkpoint(&conn, &key, &note.replace("\n4\n", "\n9\n")).is_err(), "edited note");
        assert!(read_checkpoint(&conn, &IntegrityKey::generate(), &note).is_err(), "other key");
        // Deleting the newest record leaves a linked chain, but not the head.
        conn.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
        match verify(&conn, &path, &key).unwrap() {
            Verdict::Broken { seq: 4, problem } => {
                assert!(problem.contains("newest records were deleted"), "{problem}")
            }
            v => panic!("{v:?}"),
        }
        // Even with the head moved back, the checkpoint kept elsewhere says the log was cut.
        let fake = Verdict::Intact {
            records: 3,
            head_seq: 3,
            head_hash: String::new(),
            from_seq: 1,
            key_id: String::new(),
            keyed_from: 1,
        };
        let e = check_against(&conn, &path, &fake, &c).unwrap_err().to_string();
        assert!(e.contains("the log was cut"), "{e}");
        // A record rewritten with a plain SHA-256 chain fails its MAC.
        let r = Record::from_row;
        let mut rec2: Record = conn.query_row("SELECT * FROM audit WHERE seq = 2", [], r).unwrap();
        rec2.actor = "forger".into();
        let forged = rec2.canonical_hash(None);
        conn.execute("UPDATE audit SET actor = 'forger', hash = ?1 WHERE seq = 2", [forged]).unwrap();
        assert!(matches!(verify(&conn, &path, &key).unwrap(), Verdict::Broken { seq: 2, .. }));
    }

    #[test]
    fn long_fields_are_bounded() {
        let long = "x".repeat(10_000);
        let b = bounded(&long);
        assert!(b.len() < MAX_FIELD_LEN + 40 && b.ends_with("9744 more bytes cut]"), "{b}");
        assert_eq!(bounded("short"), "short");
        let multi = "é".repeat(200);
        assert!(bounded(&multi).starts_with(&"é".repeat(128)));
    }

    #[test]
    fn concurrent_records_are_group_committed_without_loss() {
        let (_d, path, log, key) = setup();
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
        assert!(matches!(verify(&conn, &path, &key).unwrap(), Verdict::Intact { records: 320, .. }));
    }

    #[test]
    fn prune_keeps_the_rest_verifiable() {
        let (_d, path, log, key) = setup();
        for i in 0..4 {
            log.record(rec(&format!("S{i}"), Outcome::Granted)).unwrap();
        }
        let mut conn = Connection::open(&path).unwrap();
        let future =
            humantime::format_rfc3339_millis(SystemTime::now() + std::time::Duration::from_secs(60)).to_string();
        assert_eq!(prune(&mut conn, &path, &key, &future, &Actor::Cli { user: "t".into() }).unwrap(), 4);
        log.record(rec("AFTER", Outcome::Granted)).unwrap();
        match verify(&conn, &path, &key).unwrap() {
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
