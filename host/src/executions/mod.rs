//! Execution records: every run of a flow (and every `host exec`) with its
//! start, end, status and per-task outcome, in the `executions` table of the
//! store file.
//!
//! Invariant: records hold only masked text; the runner masks outputs and
//! errors before they get here.

use crate::db::{DbError, connect, sql_err};
use crate::names::{ExecutionId, FlowId, Namespace};
use rusqlite::{Connection, OptionalExtension, params};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// An audit record to commit with a change, and the key that chains it.
#[derive(Debug, Clone, Copy)]
pub struct Audited<'a> {
    /// The store's integrity key.
    pub key: &'a crate::crypto::IntegrityKey,
    /// The record.
    pub record: &'a crate::audit::NewRecord,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Not started yet.
    Pending,
    /// Started and not yet ended (the record is saved as each task starts).
    Running,
    /// Returned output.
    Succeeded,
    /// Returned an error, trapped or hit a limit.
    Failed,
    /// Not run: an earlier task failed, or the execution was cancelled.
    Skipped,
    /// At its approval gate, waiting for a decision.
    Waiting,
}

impl TaskStatus {
    /// The word records and listings use.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Skipped => "skipped",
            TaskStatus::Waiting => "waiting",
        }
    }
}

/// One task of an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// Outcome.
    pub status: TaskStatus,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Masked output.
    pub output: Option<Value>,
    /// Masked error.
    pub error: Option<String>,
    /// When it (its first attempt) started (RFC 3339): which tasks ran at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Each attempt, when it was retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Why it did not run (`skipped`): its condition, an earlier failure, a cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Its approval gate's decision: `approved by NAME: COMMENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// What kind of failure `error` is: what `host run` and `host
    /// executions follow` turn into their exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
}

/// What kind of failure a task's `error` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The task ran and returned an error (or output that is not JSON, or
    /// a command's failure status).
    Task,
    /// The plugin trapped or hit a limit (time, memory, output), or did not
    /// load.
    Plugin,
    /// It was stopped: cancelled, rejected at its gate, the flow's timeout.
    Stopped,
    /// The host failed (the audit log, the memory budget, a restart).
    Host,
}

/// One attempt of a retried task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    /// 1, 2, ...
    pub attempt: u32,
    /// When it started (RFC 3339).
    pub started: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Masked error; none for the attempt that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A flow's limit on executions at once: `{limit: 1, behavior: queue}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Most executions running at once (1 to 1000).
    pub limit: u32,
    /// What a new execution does when `limit` are already running or waiting.
    #[serde(default)]
    pub behavior: OverLimit,
}

/// What a new execution does over the flow's concurrency limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OverLimit {
    /// It waits, queued, until one ends (oldest first).
    #[default]
    Queue,
    /// It ends at once, `cancelled`.
    Cancel,
    /// It ends at once, `failed`.
    Fail,
}

/// The states of an execution: `queued`, then `running` (`paused` while a
/// task waits at its approval gate), then one of the ended ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionStatus {
    /// Accepted, waiting for a worker.
    Queued,
    /// A worker runs it.
    Running,
    /// A task waits at its approval gate (nothing else runs).
    Paused,
    /// Every task succeeded (or was skipped).
    Succeeded,
    /// Every task either succeeded or failed with `allow_failure`, and at
    /// least one failed.
    Warning,
    /// A task failed.
    Failed,
    /// Cancelled: queued ones never ran, running ones were stopped.
    Cancelled,
    /// Cut off by a server stop or crash.
    Interrupted,
}

impl ExecutionStatus {
    /// Every status, in order.
    pub const ALL: [ExecutionStatus; 8] = [
        ExecutionStatus::Queued,
        ExecutionStatus::Running,
        ExecutionStatus::Paused,
        ExecutionStatus::Succeeded,
        ExecutionStatus::Warning,
        ExecutionStatus::Failed,
        ExecutionStatus::Cancelled,
        ExecutionStatus::Interrupted,
    ];

    /// As stored and shown: `queued`, `running`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "queued",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Paused => "paused",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Warning => "warning",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Cancelled => "cancelled",
            ExecutionStatus::Interrupted => "interrupted",
        }
    }

    /// Whether nothing more will happen to it.
    pub fn ended(self) -> bool {
        !matches!(self, ExecutionStatus::Queued | ExecutionStatus::Running | ExecutionStatus::Paused)
    }
}

impl std::fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ExecutionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ExecutionStatus::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = ExecutionStatus::ALL.iter().map(|x| x.as_str()).collect();
            format!(
                "{:?} is not an execution status: one of {}",
                s.chars().take(32).collect::<String>(),
                all.join(", ")
            )
        })
    }
}

impl rusqlite::types::ToSql for ExecutionStatus {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

/// A stored status keyhole does not know is a corrupt row, never a default.
impl rusqlite::types::FromSql for ExecutionStatus {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        v.as_str()?.parse().map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
    }
}

/// One execution of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionRecord {
    /// Execution id.
    pub id: ExecutionId,
    /// Flow id.
    pub flow: FlowId,
    /// Namespace.
    pub namespace: Namespace,
    /// The flow file, or the plugin for `host exec`.
    pub source: String,
    /// Where it is.
    pub status: ExecutionStatus,
    /// Start time (RFC 3339).
    pub started: String,
    /// End time, once ended.
    pub ended: Option<String>,
    /// Per-task outcome, in flow order.
    pub tasks: Vec<TaskRecord>,
    /// What started it on a server: `api`, `webhook`, `schedule`, `cli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The deployed revision it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Who queued it: a token's `name (id)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The person who started it, for `distinct_from_trigger`: the token
    /// of the starter's chain of issuers that the root operator issued
    /// (`token tok-…`); a re-run keeps it. `None` for a trigger's execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
}

/// Execution record failures.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// SQLite refused, or opening failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// No such execution.
    #[error("no execution {0}: see `host executions list`")]
    NotFound(String),
    /// A namespace's quota of queued executions is reached.
    #[error("{0}")]
    Quota(String),
    /// A row does not read as what keyhole writes: edited outside keyhole.
    #[error("execution {id} fails its integrity check: {what}; it was edited outside keyhole")]
    Corrupt {
        /// The execution.
        id: String,
        /// What is wrong.
        what: String,
    },
}

/// SQL: whether namespace `$a` covers namespace `$b` (the same, or an
/// ancestor; the root covers all). Dotted names, so no LIKE wildcards.
macro_rules! covers {
    ($a:literal, $b:literal) => {
        concat!("(", $a, " = '' OR ", $b, " = ", $a, " OR substr(", $b, ", 1, length(", $a, ") + 1) = ", $a, " || '.')")
    };
}

/// The columns [`Executions::from_row`] reads, in its order.
macro_rules! columns {
    () => {
        "id, flow, namespace, source, status, started, ended, tasks, trigger, revision, created_by, person"
    };
}
const COLUMNS: &str = columns!();

/// A JSON text column (inputs, trigger data) of execution `id`: empty when
/// NULL (a record from before it was kept); one that does not parse is a
/// corrupt row, never a default.
fn json_column<T: serde::de::DeserializeOwned + Default>(
    id: &str,
    column: &str,
    text: Option<String>,
) -> Result<T, RecordError> {
    match text {
        None => Ok(T::default()),
        Some(t) => serde_json::from_str(&t).map_err(|e| RecordError::Corrupt {
            id: id.to_owned(),
            what: format!("its {column} column is not what keyhole wrote ({e})"),
        }),
    }
}

/// A failure reading execution `id`: a row that does not read as what
/// keyhole writes (a JSON column that does not parse, a status keyhole does
/// not know) is corrupt; anything else is the database's.
fn read_error(path: &Path, op: &'static str, id: &str, e: rusqlite::Error) -> RecordError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(_, _, why) => {
            RecordError::Corrupt { id: id.to_owned(), what: why.to_string() }
        }
        rusqlite::Error::InvalidColumnType(i, name, t) => {
            RecordError::Corrupt { id: id.to_owned(), what: format!("column {i} ({name}) holds {t}") }
        }
        e => RecordError::Db(sql_err(path, op)(e)),
    }
}

/// An execution queued on a server, as a worker takes it.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The record, now `running`.
    pub record: ExecutionRecord,
    /// The inputs it was queued with.
    pub inputs: serde_json::Map<String, Value>,
    /// What started it (`{{ trigger }}`).
    pub trigger: Value,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued: it will never run.
    Dequeued,
    /// It is running: its worker stops it.
    Stopping,
    /// It had already ended; nothing changed.
    AlreadyEnded,
}

/// Access to the execution records.
#[derive(Debug)]
pub struct Executions {
    conn: Connection,
    path: PathBuf,
    /// Set when this connection's commits are not synced by SQLite: what
    /// [`Executions::enqueue`] commits is durable through it.
    sync: Option<std::sync::Arc<crate::db::WalSync>>,
}

impl Executions {
    /// Opens the records in the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        Ok(Executions { conn: connect(path)?, path: path.to_owned(), sync: None })
    }

    /// Opens the records for a worker, whose commits (the claim, progress,
    /// the final record and log) are not each synced to disk: a killed
    /// process loses none of them (they are already the kernel's), and a
    /// power loss none older than the last audit record, because the store
    /// is one write-ahead log and the audit's synced commit carries every
    /// write before it. Accepting an execution stays a synced commit.
    pub fn open_for_worker(path: &Path) -> Result<Self, RecordError> {
        let records = Self::open(path)?;
        records.conn.pragma_update(None, "synchronous", "NORMAL").map_err(records.err("relax a worker's commits"))?;
        Ok(records)
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> RecordError + '_ {
        move |err| RecordError::Db(sql_err(&self.path, op)(err))
    }

    /// Inserts or replaces `rec`.
    pub fn save(&self, rec: &ExecutionRecord) -> Result<(), RecordError> {
        let tasks = serde_json::to_string(&rec.tasks).expect("records encode");
        self.conn
            .prepare_cached(
                "INSERT INTO executions (id, flow, namespace, source, status, started, ended, tasks) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO UPDATE SET \
                 flow = ?2, namespace = ?3, source = ?4, status = ?5, started = ?6, ended = ?7, tasks = ?8",
            )
            .and_then(|mut s| {
                s.execute(params![
                    rec.id,
                    rec.flow,
                    rec.namespace,
                    rec.source,
                    rec.status,
                    rec.started,
                    rec.ended,
                    tasks
                ])
            })
            .map_err(self.err("save an execution"))?;
        Ok(())
    }

    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRecord> {
        let tasks: String = r.get(7)?;
        let revision: Option<i64> = r.get(9)?;
        Ok(ExecutionRecord {
            id: r.get(0)?,
            flow: r.get(1)?,
            namespace: r.get(2)?,
            source: r.get(3)?,
            status: r.get(4)?,
            started: r.get(5)?,
            ended: r.get(6)?,
            tasks: serde_json::from_str(&tasks)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e)))?,
            trigger: r.get(8)?,
            revision: revision.map(|r| r as u64),
            created_by: r.get(10)?,
            person: r.get(11)?,
        })
    }

    /// The newest executions first, of `flow` only when given.
    pub fn list(&self, flow: Option<&str>, limit: u64) -> Result<Vec<ExecutionRecord>, RecordError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM executions \
                 WHERE ?1 IS NULL OR flow = ?1 ORDER BY started DESC, id DESC LIMIT ?2"
            ))
            .map_err(self.err("list executions"))?;
        let rows = stmt.query_map(params![flow, limit as i64], Self::from_row).map_err(self.err("list executions"))?;
        self.collect(rows)
    }

    /// One execution.
    pub fn get(&self, id: &str) -> Result<ExecutionRecord, RecordError> {
        self.conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM executions WHERE id = ?1"))
            .and_then(|mut s| s.query_row([id], Self::from_row))
            .optional()
            .map_err(|e| read_error(&self.path, "read an execution", id, e))?
            .ok_or_else(|| RecordError::NotFound(id.to_owned()))
    }

    /// Takes the next queued execution that its flow's concurrency limit
    /// and its namespaces' running quotas let run, and marks it running
    /// (one SQL statement: two workers never take the same one, nor
    /// together exceed a limit). Namespaces take turns: the one with the
    /// fewest executions running goes first, then the one served longest
    /// ago (`namespace_turns`), then the oldest execution of it.
    pub fn claim(&self, now: &str) -> Result<Option<Queued>, RecordError> {
        // Every count goes through the status index: it visits the few
        // executions queued or running, never the whole history.
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)
            .map_err(self.err("take a queued execution"))?;
        // Its id and namespace, the record as claimed (read whole by the
        // same statement), its inputs and trigger data.
        type Claimed = (String, String, rusqlite::Result<ExecutionRecord>, Option<String>, Option<String>);
        let claimed: Option<Claimed> = tx
            .prepare_cached(concat!(
                "UPDATE executions SET status = 'running', started = ?1 WHERE id = ",
                "(SELECT q.id FROM executions q INDEXED BY executions_queue WHERE q.status = 'queued' AND ",
                " (q.concurrency_limit IS NULL OR ",
                "  (SELECT COUNT(*) FROM executions r INDEXED BY executions_queue WHERE r.status IN ('running', 'paused') ",
                "   AND r.namespace = q.namespace AND r.flow = q.flow) < q.concurrency_limit) ",
                " AND NOT EXISTS (SELECT 1 FROM namespace_limits l WHERE l.max_running IS NOT NULL AND ",
                covers!("l.namespace", "q.namespace"),
                "  AND (SELECT COUNT(*) FROM executions r INDEXED BY executions_queue WHERE r.status IN ('running', 'paused') AND ",
                covers!("l.namespace", "r.namespace"),
                "  ) >= l.max_running) ",
                " ORDER BY (SELECT COUNT(*) FROM executions r INDEXED BY executions_queue ",
                "   WHERE r.status = 'running' AND r.namespace = q.namespace), ",
                " (SELECT t.served FROM namespace_turns t WHERE t.namespace = q.namespace) NULLS FIRST, ",
                " q.started, q.id LIMIT 1) ",
                "RETURNING ", columns!(), ", inputs, trigger_data"
            ))
            .and_then(|mut s| {
                s.query_row([now], |r| Ok((r.get(0)?, r.get(2)?, Self::from_row(r), r.get(12)?, r.get(13)?)))
            })
            .optional()
            .map_err(self.err("take a queued execution"))?;
        let Some((id, namespace, record, inputs, trigger)) = claimed else { return Ok(None) };
        // Its namespace was served last: the others go first next time.
        tx.prepare_cached(
            "INSERT INTO namespace_turns (namespace, served) \
             VALUES (?1, (SELECT coalesce(max(served), 0) + 1 FROM namespace_turns)) \
             ON CONFLICT (namespace) DO UPDATE SET served = excluded.served",
        )
        .and_then(|mut s| s.execute([&namespace]))
        .map_err(self.err("take a queued execution"))?;
        tx.commit().map_err(self.err("take a queued execution"))?;
        Ok(Some(Queued {
            record: record.map_err(|e| read_error(&self.path, "read an execution", &id, e))?,
            inputs: json_column(&id, "inputs", inputs)?,
            trigger: json_column(&id, "trigger data", trigger)?,
        }))
    }

    /// Asks an execution to stop: a queued one is cancelled here, a running
    /// one is flagged for its worker.
    pub fn request_cancel(&self, id: &str, now: &str) -> Result<CancelOutcome, RecordError> {
        let rec = self.get(id)?;
        let changed = match rec.status {
            ExecutionStatus::Queued => self
                .conn
                .execute(
                    "UPDATE executions SET status = 'cancelled', ended = ?2, cancel_requested = 1 \
                     WHERE id = ?1 AND status = 'queued'",
                    params![id, now],
                )
                .map_err(self.err("cancel an execution"))?,
            // Paused at a gate: its worker wakes from the wait, the gated
            // task never runs, `finally:` does.
            ExecutionStatus::Running | ExecutionStatus::Paused => {
                self.conn
                    .execute("UPDATE executions SET cancel_requested = 1 WHERE id = ?1", [id])
                    .map_err(self.err("cancel an execution"))?;
                return Ok(CancelOutcome::Stopping);
            }
            _ => return Ok(CancelOutcome::AlreadyEnded),
        };
        if changed == 1 {
            Ok(CancelOutcome::Dequeued)
        } else {
            // A worker took it in between.
            self.request_cancel(id, now)
        }
    }

    /// Whether a cancel was asked for `id`.
    pub fn cancel_requested(&self, id: &str) -> Result<bool, RecordError> {
        self.conn
            .query_row("SELECT cancel_requested FROM executions WHERE id = ?1", [id], |r| r.get(0))
            .map_err(self.err("read an execution"))
    }

    /// When the schedule `trigger` of `namespace/flow` last fired (Unix
    /// seconds), if it ever did on this store.
    pub fn schedule_last(&self, namespace: &str, flow: &str, trigger: &str) -> Result<Option<i64>, RecordError> {
        self.conn
            .query_row(
                "SELECT last_fired FROM schedule_state WHERE namespace = ?1 AND flow = ?2 AND trigger = ?3",
                params![namespace, flow, trigger],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("read a schedule's last firing"))
    }

    /// Records that the schedule `trigger` of `namespace/flow` fired (or
    /// was passed over) at `at` (Unix seconds).
    pub fn set_schedule_last(&self, namespace: &str, flow: &str, trigger: &str, at: i64) -> Result<(), RecordError> {
        self.conn
            .execute(
                "INSERT INTO schedule_state (namespace, flow, trigger, last_fired) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (namespace, flow, trigger) DO UPDATE SET last_fired = ?4",
                params![namespace, flow, trigger, at],
            )
            .map_err(self.err("save a schedule's last firing"))?;
        Ok(())
    }

    /// After a crash: the executions still `running` (but for a command-line
    /// run whose process still runs), each as it will be
    /// recorded once cut off (`interrupted`, its running task failed). The
    /// caller audits each, then saves it: a crash before the save finds it
    /// again next time, so none is left running without a record.
    pub fn cut_off_running(&self, now: &str) -> Result<Vec<ExecutionRecord>, RecordError> {
        let rows: Vec<(String, Option<String>)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, owner FROM executions WHERE status IN ('running', 'paused') ORDER BY started, id")
                .map_err(self.err("recover executions"))?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(self.err("recover executions"))?;
            rows.collect::<Result<_, _>>().map_err(self.err("recover executions"))?
        };
        // A command-line run in a process that still runs is not the server's to cut off.
        let ids: Vec<String> = rows
            .into_iter()
            .filter(|(_, owner)| owner.as_deref().is_none_or(|o| !crate::process::alive(o)))
            .map(|(id, _)| id)
            .collect();
        let mut cut = Vec::with_capacity(ids.len());
        for id in &ids {
            let mut rec = self.get(id)?;
            rec.status = ExecutionStatus::Interrupted;
            rec.ended = Some(now.to_owned());
            for t in rec.tasks.iter_mut().filter(|t| matches!(t.status, TaskStatus::Running | TaskStatus::Waiting)) {
                t.status = TaskStatus::Failed;
                t.error = Some("interrupted: the host stopped while the task ran".into());
                t.failure = Some(FailureKind::Host);
            }
            cut.push(rec);
        }
        Ok(cut)
    }

    /// The execution queued under `idempotency_key`, if any.
    pub fn by_idempotency_key(&self, idempotency_key: &str) -> Result<Option<ExecutionId>, RecordError> {
        self.conn
            .query_row("SELECT id FROM executions WHERE idempotency_key = ?1", [idempotency_key], |r| r.get(0))
            .optional()
            .map_err(self.err("find an execution by its idempotency key"))
    }

    /// The inputs an execution was queued with, and what started it.
    pub fn queued_with(&self, id: &str) -> Result<(serde_json::Map<String, Value>, Value), RecordError> {
        let (inputs, trigger): (Option<String>, Option<String>) = self
            .conn
            .query_row("SELECT inputs, trigger_data FROM executions WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(self.err("read an execution"))?
            .ok_or_else(|| RecordError::NotFound(id.to_owned()))?;
        Ok((json_column(id, "inputs", inputs)?, json_column(id, "trigger data", trigger)?))
    }

    /// Saves an ended execution's record and its (masked) log in one commit.
    pub fn finish(&self, rec: &ExecutionRecord, log: &str) -> Result<(), RecordError> {
        let tasks = serde_json::to_string(&rec.tasks).expect("records encode");
        self.conn
            .prepare_cached(
                "UPDATE executions SET status = ?2, started = ?3, ended = ?4, tasks = ?5, log = ?6 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![rec.id, rec.status, rec.started, rec.ended, tasks, log]))
            .map_err(self.err("save an ended execution"))?;
        Ok(())
    }

    /// The (masked) log of an execution, once it has ended; empty before.
    pub fn log(&self, id: &str) -> Result<String, RecordError> {
        let log: Option<Option<String>> = self
            .conn
            .query_row("SELECT log FROM executions WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(self.err("read an execution's log"))?;
        Ok(log.ok_or_else(|| RecordError::NotFound(id.to_owned()))?.unwrap_or_default())
    }

    /// Executions matching each filter given, newest first.
    pub fn search(&self, f: &Search<'_>, limit: u64) -> Result<Vec<ExecutionRecord>, RecordError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM executions WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR flow = ?2) \
                 AND (?3 IS NULL OR status = ?3) AND (?5 IS NULL OR started >= ?5) AND (?6 IS NULL OR started < ?6) \
                 ORDER BY started DESC, id DESC LIMIT ?4"
            ))
            .map_err(self.err("list executions"))?;
        let rows = stmt
            .query_map(params![f.namespace, f.flow, f.status, limit as i64, f.since, f.until], Self::from_row)
            .map_err(self.err("list executions"))?;
        self.collect(rows)
    }

    /// Rows read as records; a corrupt one is an error naming it.
    fn collect(
        &self,
        rows: impl Iterator<Item = rusqlite::Result<ExecutionRecord>>,
    ) -> Result<Vec<ExecutionRecord>, RecordError> {
        rows.map(|r| r.map_err(|e| read_error(&self.path, "read executions", "(in a listing)", e))).collect()
    }
}

/// What [`Executions::search`] keeps; `None` keeps all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Search<'a> {
    /// Exactly this namespace.
    pub namespace: Option<&'a str>,
    /// This flow id.
    pub flow: Option<&'a str>,
    /// This status.
    pub status: Option<&'a str>,
    /// Started at or after (RFC 3339, as stored).
    pub since: Option<&'a str>,
    /// Started before.
    pub until: Option<&'a str>,
}

mod admit;
mod gates;
mod intake;
mod quota;

pub use admit::Admission;
pub use gates::{Decider, Decision, Gate, GateError, decide_gate, decisions};
pub use quota::NamespaceLimits;
