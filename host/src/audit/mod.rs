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
//! Reads from plugins go through [`AuditLog`], which commits every record
//! waiting at that moment in one transaction (leader-based group commit):
//! one fsync per batch, not per read. Management actions append inside the
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
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::SystemTime;
use zeroize::Zeroizing;

mod chain;
mod log;
mod query;
mod verify;

pub(crate) use chain::{Prepared, append_all};
pub use chain::{append, append_alone, now_rfc3339};
use chain::{checkpoint, head};
pub use log::{AuditKey, AuditLog};
pub use query::{Filter, LastRead, Usage, last_read, list, usage};
pub use verify::{Checkpoint, Verdict, check_against, checkpoint_note, prune, read_checkpoint, verify};

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
    /// A principal of `host serve`, by its token's name and id (never the
    /// token).
    Token {
        /// The token's id.
        id: String,
        /// The token's name.
        name: String,
    },
    /// `host serve` itself: what it does on its own (recovery).
    Server,
    /// A flow's own trigger on `host serve`: a schedule or a webhook.
    Trigger {
        /// The flow's id (the record's namespace is the flow's).
        flow: String,
        /// `schedule:ID` or `webhook:ID`.
        trigger: String,
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
    /// `host secret bind` (or `set --destination`): where a secret may be sent.
    #[serde(rename = "secret.bind")]
    SecretBind,
    /// A task's outbound HTTP request: `pending` before it is sent, then
    /// `sent` or `failed`; `denied` when refused (`detail.refused` says why).
    #[serde(rename = "http.request")]
    HttpRequest,
    /// `host token create`: a token was issued (never the token itself).
    #[serde(rename = "token.create")]
    TokenCreate,
    /// `host token revoke`.
    #[serde(rename = "token.revoke")]
    TokenRevoke,
    /// `host role create` / `host role rm`.
    #[serde(rename = "role.change")]
    RoleChange,
    /// `host flow deploy`: a revision of a flow and its plugins' digests.
    #[serde(rename = "flow.deploy")]
    FlowDeploy,
    /// `host flow rm`.
    #[serde(rename = "flow.rm")]
    FlowRemove,
    /// An execution was queued (by the API, a webhook or a schedule).
    #[serde(rename = "execution.create")]
    ExecutionCreate,
    /// An execution was cancelled.
    #[serde(rename = "execution.cancel")]
    ExecutionCancel,
    /// A task waiting at an approval gate was approved.
    #[serde(rename = "execution.approve")]
    ExecutionApprove,
    /// A task waiting at an approval gate was rejected (or its wait timed out).
    #[serde(rename = "execution.reject")]
    ExecutionReject,
    /// An execution was cut off by a server stop or crash (`detail.requeued` says what followed).
    #[serde(rename = "execution.interrupt")]
    ExecutionInterrupt,
    /// An API request refused for want of a permission.
    #[serde(rename = "api.denied")]
    ApiDenied,
    /// An API request with a token that is unknown, revoked, expired or edited.
    #[serde(rename = "auth.failed")]
    AuthFailed,
    /// A webhook request: its key or signature checked against a secret
    /// (named, never shown), and what followed.
    #[serde(rename = "trigger.webhook")]
    TriggerWebhook,
    /// A schedule passed over firings missed while the server was down.
    #[serde(rename = "trigger.schedule")]
    TriggerSchedule,
    /// A credential minted for an execution, revoked, or swept
    /// (`detail.op`; the lease id and accessor, never the credential).
    #[serde(rename = "secret.lease")]
    SecretLease,
    /// A new version was staged, not yet current (a rotation in progress).
    #[serde(rename = "secret.stage")]
    SecretStage,
    /// The staged version was made current.
    #[serde(rename = "secret.commit")]
    SecretCommit,
    /// The staged version was erased.
    #[serde(rename = "secret.discard")]
    SecretDiscard,
    /// A token was exchanged for a web console session.
    #[serde(rename = "session.create")]
    SessionCreate,
    /// A web console session was signed out.
    #[serde(rename = "session.end")]
    SessionEnd,
    /// A flow revision that touches a protected secret was approved by a
    /// second person (or a revision deployed before vouching was vouched for).
    #[serde(rename = "flow.approve")]
    FlowApprove,
    /// A flow revision pending review was rejected: it never runs.
    #[serde(rename = "flow.reject")]
    FlowReject,
    /// `host secret protect`: revisions that touch it need a second person.
    #[serde(rename = "secret.protect")]
    SecretProtect,
    /// `host secret unprotect`.
    #[serde(rename = "secret.unprotect")]
    SecretUnprotect,
    /// `host plugin gc`: stored plugins no revision references were removed.
    #[serde(rename = "plugin.gc")]
    PluginGc,
    /// `host namespace limits`: a namespace's queue quotas changed.
    #[serde(rename = "namespace.limits")]
    NamespaceLimits,
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
            Action::HttpRequest => "http.request",
            Action::SecretBind => "secret.bind",
            Action::TokenCreate => "token.create",
            Action::TokenRevoke => "token.revoke",
            Action::RoleChange => "role.change",
            Action::FlowDeploy => "flow.deploy",
            Action::FlowRemove => "flow.rm",
            Action::ExecutionCreate => "execution.create",
            Action::ExecutionCancel => "execution.cancel",
            Action::ExecutionApprove => "execution.approve",
            Action::ExecutionReject => "execution.reject",
            Action::ExecutionInterrupt => "execution.interrupt",
            Action::ApiDenied => "api.denied",
            Action::AuthFailed => "auth.failed",
            Action::TriggerWebhook => "trigger.webhook",
            Action::TriggerSchedule => "trigger.schedule",
            Action::SecretLease => "secret.lease",
            Action::SecretStage => "secret.stage",
            Action::SecretCommit => "secret.commit",
            Action::SecretDiscard => "secret.discard",
            Action::SessionCreate => "session.create",
            Action::SessionEnd => "session.end",
            Action::FlowApprove => "flow.approve",
            Action::FlowReject => "flow.reject",
            Action::SecretProtect => "secret.protect",
            Action::SecretUnprotect => "secret.unprotect",
            Action::PluginGc => "plugin.gc",
            Action::NamespaceLimits => "namespace.limits",
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
    /// An outbound request was sent and answered.
    Sent,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 11] = [
        Outcome::Granted,
        Outcome::Denied,
        Outcome::NotFound,
        Outcome::Revoked,
        Outcome::Expired,
        Outcome::Unavailable,
        Outcome::Ok,
        Outcome::Tampered,
        Outcome::Pending,
        Outcome::Failed,
        Outcome::Sent,
    ];

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
            Outcome::Sent => "sent",
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

impl Record {
    /// What it records, when this keyhole knows the action's name (a record
    /// written by a newer one may name an action it does not).
    pub fn kind(&self) -> Option<Action> {
        serde_json::from_value(serde_json::Value::String(self.action.clone())).ok()
    }

    /// How it ended, when this keyhole knows the outcome's name.
    pub fn result(&self) -> Option<Outcome> {
        Outcome::ALL.iter().copied().find(|o| o.as_str() == self.outcome)
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
    /// `task`, `cli`, `token`, `server` or `trigger`.
    pub actor_kind: String,
    /// The OS user (cli), `flow/task` (task), `name (id)` (token), or
    /// `flow schedule:ID` / `flow webhook:ID` (trigger).
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

const BOUNDARY: &str = "audit_keyed_from";

fn set_head(conn: &Connection, key: &IntegrityKey, seq: u64, hash: &str) -> rusqlite::Result<()> {
    let mac = hex::encode(key.mac(MacDomain::AuditChain, &[b"head", &seq.to_be_bytes(), hash.as_bytes()]));
    // An upsert rewrites the one row in place; `INSERT OR REPLACE` would
    // delete it (zeroing it: secure_delete) and insert it again.
    conn.prepare_cached(
        "INSERT INTO audit_head (id, value) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET value = excluded.value",
    )?
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

/// Opens the store file for reading and maintaining the audit log. Needs no
/// master key: auditors can inspect the log without access to secrets.
/// Creates the file only when `create` is set.
pub fn open(path: &Path, create: bool) -> Result<Connection, AuditError> {
    if !create && !path.exists() {
        return Err(AuditError::NoStore(path.to_owned()));
    }
    Ok(connect(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::store::SecretStore;

    pub(super) fn rec(name: &str, outcome: Outcome) -> NewRecord {
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

    pub(super) fn setup() -> (tempfile::TempDir, PathBuf, AuditLog, IntegrityKey) {
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

    /// The encoding every record written so far was hashed with: one serde
    /// struct. The three-part encoding must produce the same bytes, or old
    /// logs stop verifying.
    #[derive(serde::Serialize)]
    struct WholeCanonical<'a> {
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

    proptest::proptest! {
        #[test]
        fn the_canonical_encoding_is_the_one_old_logs_were_hashed_with(
            seq in proptest::prelude::any::<u64>(),
            text in proptest::collection::vec(".{0,40}", 8),
            optional in proptest::collection::vec(proptest::option::of("[\\x00-\\x7f\"\\\\é😀]{0,30}"), 7),
            version in proptest::option::of(proptest::prelude::any::<u64>()),
            keyed in proptest::prelude::any::<bool>(),
        ) {
            let r = Record {
                seq,
                time: text[0].clone(),
                action: text[1].clone(),
                outcome: text[2].clone(),
                actor_kind: text[3].clone(),
                actor: text[4].clone(),
                flow: optional[0].clone(),
                task: optional[1].clone(),
                execution: optional[2].clone(),
                plugin_sha256: optional[3].clone(),
                namespace: text[5].clone(),
                secret: optional[4].clone(),
                version,
                reason: optional[5].clone(),
                value_hmac: None,
                detail: optional[6].clone(),
                prev_hash: text[6].clone(),
                hash: String::new(),
            };
            let whole = serde_json::to_vec(&WholeCanonical {
                seq: r.seq,
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
                prev_hash: &r.prev_hash,
                detail: keyed.then_some(r.detail.as_deref()),
            })
            .unwrap();
            let key = IntegrityKey::generate();
            let expected = if keyed {
                hex::encode(key.mac(MacDomain::AuditChain, &[b"record", &whole]))
            } else {
                hex::encode(crate::crypto::sha256(&whole))
            };
            proptest::prop_assert_eq!(r.canonical_hash(keyed.then_some(&key)), expected);
        }
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

    /// Tasks running side by side on an embedder's threads: each queues its
    /// start record without waiting and flushes when it ends, while others
    /// read. Every flush must return (a flush whose records were queued
    /// behind a running commit must be led by someone), and nothing may be
    /// lost.
    #[test]
    fn concurrent_flushes_all_return() {
        let (_d, path, log, key) = setup();
        let (done, finished) = std::sync::mpsc::channel();
        for t in 0..6 {
            let (log, done) = (log.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..300 {
                    if t % 2 == 0 {
                        log.record_later(rec(&format!("T{t}_{i}"), Outcome::Ok)).unwrap();
                        log.flush().unwrap();
                    } else {
                        log.record(rec(&format!("T{t}_{i}"), Outcome::Granted)).unwrap();
                    }
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..6 {
            finished.recv_timeout(std::time::Duration::from_secs(30)).expect("a flush never returned");
        }
        let conn = Connection::open(&path).unwrap();
        assert!(matches!(verify(&conn, &path, &key).unwrap(), Verdict::Intact { records: 1800, .. }));
    }

    /// A record queued without waiting is durable once `flush` returns,
    /// with no later record to carry it: what a task's end relies on.
    #[test]
    fn a_flush_makes_the_queued_records_durable() {
        let (_d, path, log, key) = setup();
        log.flush().unwrap();
        log.record_later(rec("QUEUED", Outcome::Ok)).unwrap();
        log.record_later(rec("ALSO", Outcome::Ok)).unwrap();
        log.flush().unwrap();
        let conn = Connection::open(&path).unwrap();
        assert!(matches!(verify(&conn, &path, &key).unwrap(), Verdict::Intact { records: 2, .. }));
    }

    /// A bug that panics in the middle of a commit (here, a failpoint after
    /// the records are appended) fails that batch: its callers get an
    /// error, nothing of it is kept, and later callers are not left asleep
    /// behind a leader that is gone.
    #[test]
    fn a_panicking_commit_fails_its_batch_and_the_log_goes_on() {
        let (_d, path, log, key) = setup();
        log.record(rec("BEFORE", Outcome::Granted)).unwrap();
        log::PANIC_IN_COMMIT.with(|p| p.set(true));
        let err = log.record(rec("LOST", Outcome::Granted)).unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        let (done, result) = std::sync::mpsc::channel();
        let other = log.clone();
        std::thread::spawn(move || done.send(other.record(rec("AFTER", Outcome::Granted)).map(|_| ())));
        let after = result.recv_timeout(std::time::Duration::from_secs(10));
        after.expect("a caller after the panic was left asleep").unwrap();
        let conn = Connection::open(&path).unwrap();
        assert!(matches!(verify(&conn, &path, &key).unwrap(), Verdict::Intact { records: 2, .. }));
        let names: Vec<String> = conn
            .prepare("SELECT secret FROM audit ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(names, ["BEFORE", "AFTER"]);
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

    #[test]
    fn bounded_cuts_at_a_character_boundary_and_says_how_much() {
        // `é` takes bytes 255 and 256: the cut falls inside it.
        let text = format!("{}\u{e9} tail", "a".repeat(255));
        let b = bounded(&text);
        assert_eq!(b, format!("{}\u{2026}[7 more bytes cut]", "a".repeat(255)));
        assert_eq!(bounded("short"), "short");
    }

    #[cfg(unix)]
    #[test]
    fn os_user_names_the_effective_user_from_the_password_file() {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        let id = std::process::Command::new("id").arg("-un").output().unwrap();
        if id.status.success() {
            let name = String::from_utf8(id.stdout).unwrap();
            assert_eq!(os_user(), format!("{} (uid {uid})", name.trim()));
        }
    }

    #[test]
    fn the_log_is_never_created_by_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyhole.db");
        assert!(matches!(open(&path, false), Err(AuditError::NoStore(_))));
        assert!(!path.exists(), "a reader created the store file");
        open(&path, true).unwrap();
        open(&path, false).unwrap();
    }
}
