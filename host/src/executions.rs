//! Execution records: every run of a flow (and every `host exec`) with its
//! start, end, status and per-task outcome, in the `executions` table of the
//! store file.
//!
//! Invariant: records hold only masked text; the runner masks outputs and
//! errors before they get here.

use crate::db::{DbError, connect, sql_err};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Not started yet.
    Pending,
    /// Returned output.
    Succeeded,
    /// Returned an error, trapped or hit a limit.
    Failed,
    /// Not run because an earlier task failed.
    Skipped,
}

/// One task of an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// One execution of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// Execution id.
    pub id: String,
    /// Flow id.
    pub flow: String,
    /// Namespace.
    pub namespace: String,
    /// The flow file, or the plugin for `host exec`.
    pub source: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// Start time (RFC 3339).
    pub started: String,
    /// End time, once ended.
    pub ended: Option<String>,
    /// Per-task outcome, in flow order.
    pub tasks: Vec<TaskRecord>,
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
}

/// Access to the execution records.
#[derive(Debug)]
pub struct Executions {
    conn: Connection,
    path: PathBuf,
}

impl Executions {
    /// Opens the records in the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        Ok(Executions { conn: connect(path)?, path: path.to_owned() })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> RecordError + '_ {
        move |err| RecordError::Db(sql_err(&self.path, op)(err))
    }

    /// Inserts or replaces `rec`.
    pub fn save(&self, rec: &ExecutionRecord) -> Result<(), RecordError> {
        let tasks = serde_json::to_string(&rec.tasks).expect("records encode");
        self.conn
            .execute(
                "INSERT OR REPLACE INTO executions (id, flow, namespace, source, status, started, ended, tasks) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![rec.id, rec.flow, rec.namespace, rec.source, rec.status, rec.started, rec.ended, tasks],
            )
            .map_err(self.err("save an execution"))?;
        Ok(())
    }

    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRecord> {
        let tasks: String = r.get(7)?;
        Ok(ExecutionRecord {
            id: r.get(0)?,
            flow: r.get(1)?,
            namespace: r.get(2)?,
            source: r.get(3)?,
            status: r.get(4)?,
            started: r.get(5)?,
            ended: r.get(6)?,
            tasks: serde_json::from_str(&tasks).unwrap_or_default(),
        })
    }

    /// The newest executions first, of `flow` only when given.
    pub fn list(&self, flow: Option<&str>, limit: u64) -> Result<Vec<ExecutionRecord>, RecordError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, flow, namespace, source, status, started, ended, tasks FROM executions \
                 WHERE ?1 IS NULL OR flow = ?1 ORDER BY started DESC, id DESC LIMIT ?2",
            )
            .map_err(self.err("list executions"))?;
        let rows = stmt.query_map(params![flow, limit as i64], Self::from_row).map_err(self.err("list executions"))?;
        rows.collect::<Result<_, _>>().map_err(self.err("read executions"))
    }

    /// One execution.
    pub fn get(&self, id: &str) -> Result<ExecutionRecord, RecordError> {
        self.conn
            .query_row(
                "SELECT id, flow, namespace, source, status, started, ended, tasks FROM executions WHERE id = ?1",
                [id],
                Self::from_row,
            )
            .optional()
            .map_err(self.err("read an execution"))?
            .ok_or_else(|| RecordError::NotFound(id.to_owned()))
    }
}
