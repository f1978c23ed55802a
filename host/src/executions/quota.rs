//! Each namespace's quotas of queued and running executions (for it and
//! every namespace below it).

use super::{Executions, RecordError};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// A namespace's quotas, for it and every namespace below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceLimits {
    /// The namespace.
    pub namespace: String,
    /// Most executions queued at once; more are refused (429).
    pub max_queued: Option<u64>,
    /// Most executions running (or paused at a gate) at once; more wait.
    pub max_running: Option<u64>,
}

impl Executions {
    /// Why a new execution of `namespace` would pass a queue quota, if it
    /// would, read in `conn` (the queuing transaction).
    pub(super) fn over_queue_quota(&self, conn: &Connection, namespace: &str) -> Result<Option<String>, RecordError> {
        conn.query_row(
            concat!(
                "SELECT l.namespace, l.max_queued, (SELECT COUNT(*) FROM executions r WHERE r.status = 'queued' AND ",
                covers!("l.namespace", "r.namespace"),
                ") FROM namespace_limits l WHERE l.max_queued IS NOT NULL AND ",
                covers!("l.namespace", "?1"),
                " AND (SELECT COUNT(*) FROM executions r WHERE r.status = 'queued' AND ",
                covers!("l.namespace", "r.namespace"),
                ") >= l.max_queued LIMIT 1"
            ),
            [namespace],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
        )
        .optional()
        .map_err(self.err("read the namespace quotas"))
        .map(|over| {
            over.map(|(ns, max, n)| {
                let shown = if ns.is_empty() { "(root)".to_owned() } else { ns };
                format!(
                    "namespace {shown} has {n} execution(s) queued, its quota (max-queued {max}): try again once \
                     some have run (`host namespace limits` sets it)"
                )
            })
        })
    }

    /// Sets (or with both `None`, clears) the quotas of `namespace` and the
    /// namespaces below it.
    pub fn set_limits(&self, limits: &NamespaceLimits, audit: super::Audited<'_>) -> Result<(), RecordError> {
        let as_i64 = |n: Option<u64>| n.map(|n| n.min(i64::MAX as u64) as i64);
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)
            .map_err(self.err("begin setting a namespace's quotas"))?;
        if limits.max_queued.is_none() && limits.max_running.is_none() {
            tx.execute("DELETE FROM namespace_limits WHERE namespace = ?1", [&limits.namespace])
                .map_err(self.err("clear a namespace's quotas"))?;
        } else {
            tx.execute(
                "INSERT INTO namespace_limits (namespace, max_queued, max_running) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (namespace) DO UPDATE SET max_queued = ?2, max_running = ?3",
                params![limits.namespace, as_i64(limits.max_queued), as_i64(limits.max_running)],
            )
            .map_err(self.err("set a namespace's quotas"))?;
        }
        crate::audit::append(&tx, audit.key, audit.record).map_err(self.err("write the audit record"))?;
        tx.commit().map_err(self.err("set a namespace's quotas"))
    }

    /// Every namespace's quotas.
    pub fn limits(&self) -> Result<Vec<NamespaceLimits>, RecordError> {
        let mut stmt = self
            .conn
            .prepare("SELECT namespace, max_queued, max_running FROM namespace_limits ORDER BY namespace")
            .map_err(self.err("read the namespace quotas"))?;
        let rows = stmt
            .query_map([], |r| {
                let n = |i| r.get::<_, Option<i64>>(i).map(|v| v.map(|v| v.max(0) as u64));
                Ok(NamespaceLimits { namespace: r.get(0)?, max_queued: n(1)?, max_running: n(2)? })
            })
            .map_err(self.err("read the namespace quotas"))?;
        rows.collect::<Result<_, _>>().map_err(self.err("read the namespace quotas"))
    }
}
