//! Approval gates: a task waiting for a person's decision, and the one
//! place that decides who may decide.

use super::{ExecutionRecord, Executions, RecordError};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

/// A task waiting at an approval gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gate {
    /// The execution.
    pub execution: String,
    /// The task.
    pub task: String,
    /// The permission a decider needs in the execution's namespace.
    pub permission: String,
    /// Whether the one who started the execution may not decide.
    pub distinct_from_trigger: bool,
    /// When the wait began (RFC 3339).
    pub requested: String,
}

/// A gate's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Approved (else rejected).
    pub approved: bool,
    /// Who decided.
    pub by: String,
    /// Why, as they wrote it.
    pub comment: Option<String>,
}

impl Executions {
    /// Opens task `task`'s gate in `execution` (again after a restart: kept).
    pub fn open_gate(&self, g: &Gate) -> Result<(), RecordError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO approvals (execution, task, permission, distinct_from_trigger, requested) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![g.execution, g.task, g.permission, g.distinct_from_trigger, g.requested],
            )
            .map_err(self.err("open an approval gate"))?;
        Ok(())
    }

    /// The gates of `execution` still waiting for a decision.
    pub fn waiting_gates(&self, execution: &str) -> Result<Vec<Gate>, RecordError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT execution, task, permission, distinct_from_trigger, requested FROM approvals \
                 WHERE execution = ?1 AND decision IS NULL ORDER BY requested, task",
            )
            .map_err(self.err("read approval gates"))?;
        let rows = stmt
            .query_map([execution], |r| {
                Ok(Gate {
                    execution: r.get(0)?,
                    task: r.get(1)?,
                    permission: r.get(2)?,
                    distinct_from_trigger: r.get(3)?,
                    requested: r.get(4)?,
                })
            })
            .map_err(self.err("read approval gates"))?;
        rows.collect::<Result<_, _>>().map_err(self.err("read approval gates"))
    }

    /// The decision at `task`'s gate in `execution`, once there is one.
    pub fn decision(&self, execution: &str, task: &str) -> Result<Option<Decision>, RecordError> {
        self.conn
            .prepare_cached("SELECT decision, decided_by, comment FROM approvals WHERE execution = ?1 AND task = ?2")
            .and_then(|mut s| {
                s.query_row(params![execution, task], |r| {
                    let d: Option<String> = r.get(0)?;
                    Ok(d.map(|d| (d, r.get::<_, Option<String>>(1), r.get::<_, Option<String>>(2))))
                })
            })
            .optional()
            .map_err(self.err("read an approval"))
            .map(|row| {
                row.flatten().map(|(d, by, comment)| Decision {
                    approved: d == "approved",
                    by: by.ok().flatten().unwrap_or_default(),
                    comment: comment.ok().flatten(),
                })
            })
    }

    /// Decides the waiting gate of `task` in `execution`; `false` if it was
    /// not waiting (already decided, or no such gate). One statement: two
    /// deciders at once, one wins.
    pub fn decide(&self, execution: &str, task: &str, d: &Decision, now: &str) -> Result<bool, RecordError> {
        let changed = self
            .conn
            .execute(
                "UPDATE approvals SET decision = ?3, decided_by = ?4, comment = ?5, decided = ?6 \
                 WHERE execution = ?1 AND task = ?2 AND decision IS NULL",
                params![execution, task, if d.approved { "approved" } else { "rejected" }, d.by, d.comment, now],
            )
            .map_err(self.err("decide an approval"))?;
        Ok(changed == 1)
    }
}

/// Why a gate's decision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// No such gate waiting.
    #[error("{0}")]
    NotWaiting(String),
    /// The decider may not decide it.
    #[error("{0}")]
    Denied(String),
    /// The decision could not be audited, so it was not taken.
    #[error("the decision could not be audited, so it was not taken: {0}")]
    Audit(String),
    /// The records failed.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Who decides a gate.
#[allow(missing_debug_implementations)]
pub struct Decider<'a> {
    /// As audited.
    pub actor: &'a crate::audit::Actor,
    /// As execution records name their creator (`NAME (TOKEN-ID)`), or
    /// `None` for the operator at the data directory.
    pub who: Option<String>,
    /// The person they are ([`crate::authz::Principal::person`]), for
    /// `distinct_from_trigger`; `None` for the operator.
    pub person: Option<String>,
    /// Whether they hold a permission in a namespace.
    pub may: &'a dyn Fn(crate::authz::Permission, &crate::names::Namespace) -> bool,
}

/// Whether `d` is the person who started `rec`: the same root-issued
/// token (a token they issued themselves is still them; a re-run keeps its
/// starter), or for a record from before keyhole kept persons, the same
/// token by name and id.
fn same_person(rec: &ExecutionRecord, d: &Decider<'_>) -> bool {
    match (&rec.person, &d.person) {
        (Some(started), Some(deciding)) => started == deciding,
        _ => rec.created_by == d.who,
    }
}

/// Approves (or rejects) `task`'s waiting gate in `execution` for `d`: the
/// one place that checks the gate's permission and `distinct_from_trigger`,
/// audits the decision through `record` (before it is taken: fail closed)
/// and takes it.
pub fn decide_gate(
    records: &Executions,
    d: &Decider<'_>,
    execution: &str,
    task: &str,
    approved: bool,
    comment: Option<String>,
    mut record: impl FnMut(crate::audit::NewRecord) -> Result<(), String>,
) -> Result<(), GateError> {
    let rec = records.get(execution)?;
    let ns = rec.namespace.clone();
    if records.cancel_requested(execution)? {
        return Err(GateError::NotWaiting(format!(
            "execution {execution} was cancelled: its gated tasks never run, there is nothing to decide"
        )));
    }
    let gates = records.waiting_gates(execution)?;
    let Some(gate) = gates.iter().find(|g| g.task == task) else {
        let waiting: Vec<&str> = gates.iter().map(|g| g.task.as_str()).collect();
        return Err(GateError::NotWaiting(if waiting.is_empty() {
            format!("execution {execution} has no task waiting for approval (it is {})", rec.status)
        } else {
            format!("task {task} of execution {execution} is not waiting for approval; waiting: {}", waiting.join(", "))
        }));
    };
    let permission: crate::authz::Permission =
        gate.permission.parse().map_err(|e: String| GateError::Denied(format!("the gate's permission: {e}")))?;
    let verb = if approved { "approved" } else { "rejected" };
    let action = if approved { crate::audit::Action::ExecutionApprove } else { crate::audit::Action::ExecutionReject };
    let refusal = if !(d.may)(permission, &ns) {
        Some(format!("permission {permission} is required in namespace {ns}"))
    } else if gate.distinct_from_trigger && same_person(&rec, d) {
        let who = d.who.as_deref().unwrap_or("the operator of this data directory");
        Some(format!("task {task} needs a decider other than who started the execution ({who}): distinct_from_trigger"))
    } else {
        None
    };
    if let Some(why) = refusal {
        // A refused decision is an access attempt: audited too.
        let denied = crate::audit::NewRecord::ok(d.actor, action, &ns, None)
            .outcome(crate::audit::Outcome::Denied)
            .reason(format!("task {task} of execution {execution} not {verb}: {why}"))
            .detail_field("execution", execution)
            .detail_field("task", task);
        record(denied).map_err(GateError::Audit)?;
        return Err(GateError::Denied(why));
    }
    let mut audit = crate::audit::NewRecord::ok(d.actor, action, &ns, None)
        .reason(format!("task {task} of execution {execution} (flow {}) {verb}", rec.flow))
        .detail_field("execution", execution)
        .detail_field("task", task);
    if let Some(c) = &comment {
        audit = audit.detail_field("comment", crate::audit::bounded(c));
    }
    record(audit).map_err(GateError::Audit)?;
    let by = d.who.clone().unwrap_or_else(|| "the operator".into());
    let decision = Decision { approved, by, comment };
    if !records.decide(execution, task, &decision, &crate::audit::now_rfc3339())? {
        return Err(GateError::NotWaiting(format!("task {task} of execution {execution} was decided meanwhile")));
    }
    DECIDED.notify_waiters();
    Ok(())
}

/// Woken at every decision taken in this process, so a gate waiting here
/// reads its decision at once; a decision from another process (`host
/// executions approve` beside `host run`) is found by the gate's slower look.
static DECIDED: std::sync::LazyLock<tokio::sync::Notify> = std::sync::LazyLock::new(tokio::sync::Notify::new);

/// What wakes at each decision taken in this process.
pub fn decisions() -> &'static tokio::sync::Notify {
    &DECIDED
}
