//! Reading the trail: filtered listings, the last read of a secret, and
//! per-secret usage from the typed `detail` column.

use super::*;

/// Filters for `host audit list` (and `GET /api/v1/audit`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// Secret name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Flow id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// Execution id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
    /// Outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Who acted: a token's name or id, or an OS user's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Records at or after this RFC 3339 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Records before this RFC 3339 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// At most this many (the newest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Only records before this sequence number (to page backwards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// Lists records matching `f`, oldest first.
pub fn list(conn: &Connection, path: &Path, f: &Filter) -> Result<Vec<Record>, AuditError> {
    let mut stmt = conn
        .prepare(
            "SELECT * FROM (SELECT * FROM audit WHERE \
               (?1 IS NULL OR secret = ?1) AND (?2 IS NULL OR namespace = ?2) AND (?3 IS NULL OR flow = ?3) \
               AND (?4 IS NULL OR execution = ?4) AND (?5 IS NULL OR outcome = ?5) AND (?6 IS NULL OR action = ?6) \
               AND (?7 IS NULL OR time >= ?7) AND (?8 IS NULL OR time < ?8) \
               AND (?10 IS NULL OR actor = ?10 OR actor LIKE ?11 || ' (%' ESCAPE '\\' OR actor LIKE '% (' || ?11 || ')' ESCAPE '\\') \
               AND (?12 IS NULL OR seq < ?12) \
             ORDER BY seq DESC LIMIT ?9) ORDER BY seq",
        )
        .map_err(sql(path, "query the audit log"))?;
    let limit = f.limit.map_or(-1, |l| l as i64);
    // LIKE wildcards in a name are matched literally.
    let like = f.actor.as_deref().map(|a| a.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let rows = stmt
        .query_map(
            params![
                f.secret,
                f.namespace,
                f.flow,
                f.execution,
                f.outcome,
                f.action,
                f.since,
                f.until,
                limit,
                f.actor,
                like,
                f.before.map(|b| b as i64)
            ],
            Record::from_row,
        )
        .map_err(sql(path, "query the audit log"))?;
    rows.collect::<Result<_, _>>().map_err(sql(path, "read the audit log"))
}

/// The newest granted read of a secret: when, and by which task.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastRead {
    /// RFC 3339.
    pub time: String,
    /// The execution, for a task's read.
    pub execution: Option<String>,
    /// The flow.
    pub flow: Option<String>,
    /// The task.
    pub task: Option<String>,
    /// The version read.
    pub version: Option<u64>,
}

/// The newest granted read of `name` found in exactly `namespace`. Walks
/// the `(secret, time)` index from the newest end and stops at the first
/// match (the console and `describe` ask on every view: a scan of every
/// read of a busy secret made metadata reads 10x slower under load).
pub fn last_read(
    conn: &Connection,
    path: &Path,
    namespace: &Namespace,
    name: &SecretName,
) -> Result<Option<LastRead>, AuditError> {
    conn.query_row(
        "SELECT time, execution, flow, task, version FROM audit WHERE action = 'secret.read' AND outcome = 'granted' \
         AND secret = ?1 AND (json_extract(detail, '$.found_in') = ?2 OR (detail IS NULL AND reason = ?3)) \
         ORDER BY time DESC, seq DESC LIMIT 1",
        params![name.as_str(), namespace.as_str(), format!("found in namespace {namespace}")],
        |r| {
            let version: Option<i64> = r.get(4)?;
            Ok(LastRead {
                time: r.get(0)?,
                execution: r.get(1)?,
                flow: r.get(2)?,
                task: r.get(3)?,
                version: version.map(|v| v as u64),
            })
        },
    )
    .optional()
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
