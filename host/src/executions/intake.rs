//! Accepting executions: the queuing transaction (idempotency key, the
//! namespace's queue quota, the flow's `concurrency:`, the new row and its
//! `execution.create` record, all in one commit), and the connection the
//! server accepts through, whose commits share syncs (`db::WalSync`).

use super::{Audited, Concurrency, ExecutionRecord, Executions, OverLimit, RecordError, admit};
use rusqlite::{Connection, params};
use serde_json::Value;
use std::path::Path;

impl Executions {
    /// Opens the records for accepting executions (the server's API and
    /// triggers): a new execution and its record commit without a sync of
    /// their own, and [`Executions::enqueue`]'s answer is had only once
    /// they are on disk, by a sync shared with every commit made meanwhile
    /// (other acceptances). Nothing else may write through it:
    /// its other writes would not be synced.
    pub fn open_for_intake(path: &Path) -> Result<Self, RecordError> {
        let mut records = Self::open(path)?;
        records.conn.pragma_update(None, "synchronous", "NORMAL").map_err(records.err("relax intake commits"))?;
        records.sync = Some(crate::db::WalSync::of(path));
        Ok(records)
    }

    /// Queues a new execution (`rec` with status `queued`) with `inputs`
    /// and what started it (`trigger`, from [`crate::trigger::context`]).
    /// With an idempotency key already used, returns that execution instead
    /// (and `false`): a retried request never starts a second one.
    ///
    /// Under the flow's `concurrency`, in one write transaction (so exact
    /// however many start at once): over the limit of executions running or
    /// queued, a `cancel` or `fail` flow's new execution ends at once so; a
    /// `queue` one waits, and [`Executions::claim`] takes it only when fewer
    /// than the limit run.
    ///
    /// `audit` is the record of its creation, chained under its key: it
    /// commits with the new row, and is not written for a retried request.
    pub fn enqueue(
        &self,
        rec: &ExecutionRecord,
        inputs: &serde_json::Map<String, Value>,
        trigger: &Value,
        idempotency_key: Option<&str>,
        concurrency: Option<Concurrency>,
        audit: Audited<'_>,
    ) -> Result<crate::db::Unsynced<(ExecutionRecord, bool)>, RecordError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)
            .map_err(self.err("begin queuing an execution"))?;
        let retried = match idempotency_key {
            Some(k) => {
                tx.query_row("SELECT count(*) FROM executions WHERE idempotency_key = ?1", [k], |r| r.get::<_, i64>(0))
                    .map_err(self.err("find an execution by its idempotency key"))?
                    > 0
            }
            None => false,
        };
        if !retried && let Some(why) = self.over_queue_quota(&tx, rec.namespace.as_str())? {
            return Err(RecordError::Quota(why));
        }
        let mut rec = rec.clone();
        let limit = concurrency.map(|c| c.limit as i64);
        if let Some(c) = concurrency
            && c.behavior != OverLimit::Queue
        {
            let busy = self.busy(&tx, &rec)?;
            if busy >= c.limit as i64 {
                admit::refuse_over_limit(&mut rec, busy, c);
            }
        }
        let (rec, created) = self.insert(&tx, &rec, inputs, trigger, idempotency_key, limit)?;
        if created {
            crate::audit::append(&tx, audit.key, audit.record).map_err(self.err("write the audit record"))?;
        }
        tx.commit().map_err(self.err("queue an execution"))?;
        Ok(match &self.sync {
            Some(s) => s.after_commit((rec, created)),
            None => crate::db::Unsynced::synced((rec, created)),
        })
    }

    pub(super) fn insert(
        &self,
        conn: &Connection,
        rec: &ExecutionRecord,
        inputs: &serde_json::Map<String, Value>,
        trigger: &Value,
        idempotency_key: Option<&str>,
        limit: Option<i64>,
    ) -> Result<(ExecutionRecord, bool), RecordError> {
        let tasks = serde_json::to_string(&rec.tasks).expect("records encode");
        let inputs = serde_json::to_string(inputs).expect("inputs encode");
        let trigger = serde_json::to_string(trigger).expect("trigger data encodes");
        let done = conn.execute(
            "INSERT INTO executions (id, flow, namespace, source, status, started, ended, tasks, inputs, revision, \
             trigger, created_by, idempotency_key, trigger_data, concurrency_limit, person) \
             VALUES (?1, ?2, ?3, ?4, ?13, ?5, ?14, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?15, ?16)",
            params![
                rec.id,
                rec.flow,
                rec.namespace,
                rec.source,
                rec.started,
                tasks,
                inputs,
                rec.revision.map(|r| r as i64),
                rec.trigger,
                rec.created_by,
                idempotency_key,
                trigger,
                rec.status,
                rec.ended,
                limit,
                rec.person
            ],
        );
        match done {
            // As stored: every column `get` reads comes from `rec`.
            Ok(_) => Ok((rec.clone(), true)),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation && idempotency_key.is_some() =>
            {
                let id: String = conn
                    .query_row("SELECT id FROM executions WHERE idempotency_key = ?1", [idempotency_key], |r| r.get(0))
                    .map_err(self.err("find an execution by its idempotency key"))?;
                Ok((self.get(&id)?, false))
            }
            Err(e) => Err(self.err("queue an execution")(e)),
        }
    }
}
