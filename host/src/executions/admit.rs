//! `concurrency:` for an execution started at the command line (`host run
//! FLOW.yaml`): the limit the server keeps, kept across every process on
//! the data directory. The count, the decision and the new row are one
//! IMMEDIATE transaction, so two processes never both take the last place.
//!
//! A command-line execution's row names its process (`owner`, pid and
//! start time); one whose process is gone ran no further, and is recorded
//! `interrupted` by the next admission of its flow rather than holding its
//! place forever.

use super::{Concurrency, ExecutionRecord, ExecutionStatus, Executions, OverLimit, RecordError, TaskStatus};
use rusqlite::{Transaction, TransactionBehavior, params};
use std::time::Duration;

/// What [`Executions::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Its record is stored `running` under this process: run it.
    Run,
    /// Over the limit with `cancel` or `fail`: its final record, stored.
    NotRun(Box<ExecutionRecord>),
}

/// How often a queued command-line execution asks again.
const RETRY: Duration = Duration::from_millis(200);

/// Marks `rec` as not run because `busy` executions of its flow hold every
/// place `c` allows (`cancel`: cancelled, `fail`: failed), each task skipped
/// saying why.
pub(super) fn refuse_over_limit(rec: &mut ExecutionRecord, busy: i64, c: Concurrency) {
    let (status, word) = match c.behavior {
        OverLimit::Fail => (ExecutionStatus::Failed, "fail"),
        _ => (ExecutionStatus::Cancelled, "cancel"),
    };
    rec.status = status;
    rec.ended = Some(crate::audit::now_rfc3339());
    let why = format!(
        "not run: {busy} execution(s) of the flow were running or queued, its concurrency limit is {} (behavior: {word})",
        c.limit
    );
    for t in &mut rec.tasks {
        t.status = TaskStatus::Skipped;
        t.skipped = Some(why.clone());
    }
}

impl Executions {
    /// Admits `rec` (a new execution of this process, `owner`) under its
    /// flow's concurrency `c`: stores it `running` when a place is free;
    /// else waits for one (`queue`, calling `waiting` with how many hold
    /// the places each time it finds none), or stores it ended and not run
    /// (`cancel`, `fail`). `alive` says whether an owner process still runs.
    pub fn admit(
        &self,
        rec: &ExecutionRecord,
        c: Concurrency,
        owner: &str,
        alive: impl Fn(&str) -> bool,
        mut waiting: impl FnMut(i64),
    ) -> Result<Admission, RecordError> {
        loop {
            let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
                .map_err(self.err("begin admitting an execution"))?;
            self.interrupt_orphans(&tx, rec, &alive)?;
            let busy = self.busy(&tx, rec)?;
            if busy < i64::from(c.limit) || c.behavior != OverLimit::Queue {
                let mut rec = rec.clone();
                let run = busy < i64::from(c.limit);
                if !run {
                    refuse_over_limit(&mut rec, busy, c);
                }
                let trigger = crate::trigger::context("cli", None, serde_json::Map::new());
                self.insert(&tx, &rec, &serde_json::Map::new(), &trigger, None, Some(i64::from(c.limit)))?;
                tx.execute("UPDATE executions SET owner = ?2 WHERE id = ?1", params![rec.id, owner])
                    .map_err(self.err("record which process runs an execution"))?;
                tx.commit().map_err(self.err("admit an execution"))?;
                return Ok(if run { Admission::Run } else { Admission::NotRun(Box::new(rec)) });
            }
            drop(tx);
            waiting(busy);
            std::thread::sleep(RETRY);
        }
    }

    /// Records as interrupted each running or paused command-line
    /// execution of `rec`'s flow whose process is gone.
    fn interrupt_orphans(
        &self,
        tx: &Transaction<'_>,
        rec: &ExecutionRecord,
        alive: &impl Fn(&str) -> bool,
    ) -> Result<(), RecordError> {
        let owned: Vec<(String, String)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT id, owner FROM executions WHERE namespace = ?1 AND flow = ?2 \
                     AND status IN ('running', 'paused') AND owner IS NOT NULL",
                )
                .map_err(self.err("find the flow's running executions"))?;
            let rows = stmt
                .query_map(params![rec.namespace, rec.flow], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.err("find the flow's running executions"))?;
            rows.collect::<Result<_, _>>().map_err(self.err("read the flow's running executions"))?
        };
        for (id, owner) in owned.into_iter().filter(|(_, o)| !alive(o)) {
            tracing::warn!(
                "execution {id} was left running by process {owner}, which is gone: recorded as interrupted"
            );
            tx.execute(
                "UPDATE executions SET status = ?2, ended = ?3 WHERE id = ?1",
                params![id, ExecutionStatus::Interrupted, crate::audit::now_rfc3339()],
            )
            .map_err(self.err("record an execution as interrupted"))?;
        }
        Ok(())
    }

    /// How many executions of `rec`'s flow are queued, running or paused
    /// (what its `concurrency:` limit counts), read in `tx`.
    pub(super) fn busy(&self, tx: &rusqlite::Transaction<'_>, rec: &ExecutionRecord) -> Result<i64, RecordError> {
        tx.query_row(
            "SELECT COUNT(*) FROM executions WHERE namespace = ?1 AND flow = ?2 \
             AND status IN ('queued', 'running', 'paused')",
            params![rec.namespace, rec.flow],
            |r| r.get(0),
        )
        .map_err(self.err("count the flow's executions"))
    }
}
