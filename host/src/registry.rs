//! Deployed flows: every revision of every flow `host flow deploy` stored,
//! in the `flows` table, with its plugins kept by SHA-256 under
//! `DATA_DIR/plugins/`, who vouched for the secrets each names
//! ([`crate::vouch`]), a second person's decision on a revision that
//! touches a protected secret (`flow_reviews`), and what is protected
//! (`protections`). What runs is exactly what was deployed: a later change
//! to a file on the deployer's disk changes nothing.
//!
//! Which revision serves a flow: the newest one that is `active` (vouched
//! for, and approved if it needed review), `unchecked` (deployed before
//! keyhole vouched) or a removal. A revision `pending` review, or
//! `rejected`, never runs; the one before it keeps serving.
//!
//! Invariant: rows are only added (a removal is a tombstone revision, a
//! decision a row of its own) and each is authenticated with the integrity
//! key, so an edited flow text, plugin digest, vouch or decision is
//! refused, not run; a task's plugin is pinned to its digest, so a blob
//! changed on disk fails the pin check in [`crate::run::prepare`]; a
//! revision, its decision and a protection commit with their audit record.
//! Who may deploy where is [`crate::authz`]'s and [`crate::vouch`]'s
//! decision, made before this module is called.

use crate::audit::NewRecord;
use crate::crypto::{IntegrityKey, MacDomain};
use crate::data_dir::{DataDir, create_private_dir, write_private_atomic};
use crate::db::{DbError, connect, sql_err};
use crate::flow::{self, Diagnostic, Diagnostics, Flow, Severity};
use crate::names::{Namespace, SecretName, TaskId};
use crate::store::{fmt_time, now};
use crate::vouch::Vouches;
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// One deployed revision of a flow, as listed: never a secret (a flow holds
/// only secret names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The flow's namespace.
    pub namespace: Namespace,
    /// The flow id.
    pub id: String,
    /// 1, 2, ... per flow.
    pub revision: u64,
    /// The file name it was deployed from.
    pub file: String,
    /// The flow text as deployed.
    pub source: String,
    /// Each task's plugin SHA-256.
    pub plugins: BTreeMap<String, String>,
    /// When (RFC 3339).
    pub deployed_at: String,
    /// Who: a token's `name (id)` or an OS user.
    pub deployed_by: String,
    /// Whether this revision removed the flow.
    pub removed: bool,
    /// Where each secret it names resolved and who vouched for it; `None`
    /// for a revision deployed before keyhole checked `secret:use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouches: Option<Vouches>,
    /// A second person's decision on it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// Whether it runs (derived from the above).
    #[serde(default)]
    pub state: RevisionState,
}

/// Whether a revision runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevisionState {
    /// Vouched for (and approved, if it touched a protected secret): it runs.
    #[default]
    Active,
    /// It touches a protected secret and waits for a second person: it
    /// never runs until approved.
    Pending,
    /// A second person rejected it: it never runs.
    Rejected,
    /// Deployed before keyhole checked `secret:use`: it keeps running until
    /// it is deployed again or approved.
    Unchecked,
    /// It removed the flow.
    Removed,
}

impl RevisionState {
    /// Whether the revision may serve the flow (a removal serves as "none").
    pub fn serves(self) -> bool {
        matches!(self, RevisionState::Active | RevisionState::Unchecked | RevisionState::Removed)
    }
}

impl fmt::Display for RevisionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RevisionState::Active => "active",
            RevisionState::Pending => "pending review",
            RevisionState::Rejected => "rejected",
            RevisionState::Unchecked => "unchecked",
            RevisionState::Removed => "removed",
        })
    }
}

/// A second person's decision on a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Approved or rejected.
    pub decision: Decision,
    /// Who: `name (tok-…)` or an OS user.
    pub by: String,
    /// The same, for second-person rules.
    pub person: String,
    /// When (RFC 3339).
    pub at: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// For a revision deployed before vouching: what the approver vouched for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouches: Option<Vouches>,
}

/// What a reviewer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// It runs.
    Approved,
    /// It never runs.
    Rejected,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }
}

impl Deployed {
    /// What it was vouched for: at deploy, or by whoever approved a
    /// revision deployed before vouching.
    pub fn vouched(&self) -> Option<&Vouches> {
        self.vouches.as_ref().or_else(|| self.review.as_ref().and_then(|r| r.vouches.as_ref()))
    }

    fn derive_state(&self) -> RevisionState {
        let decided = self.review.as_ref().map(|r| r.decision);
        match (&self.vouches, decided) {
            _ if self.removed => RevisionState::Removed,
            (_, Some(Decision::Rejected)) => RevisionState::Rejected,
            (None, Some(Decision::Approved)) => RevisionState::Active,
            (None, None) => RevisionState::Unchecked,
            (Some(v), None) if !v.review.is_empty() => RevisionState::Pending,
            (Some(_), _) => RevisionState::Active,
        }
    }
}

/// One protected secret, or a whole protected namespace (and those below it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// Where.
    pub namespace: Namespace,
    /// The secret; `None`: every secret of the namespace and those below it.
    pub secret: Option<SecretName>,
    /// When (RFC 3339).
    pub created_at: String,
    /// By whom.
    pub created_by: String,
}

/// Registry failures.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// SQLite refused.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The flow does not check; each diagnostic names where.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// A plugin the flow names was not uploaded, or does not match.
    #[error("{0}")]
    Plugin(String),
    /// No such flow.
    #[error("no deployed flow {id} in namespace {namespace}: see `host flow list`")]
    NotFound {
        /// Namespace.
        namespace: Namespace,
        /// Flow id.
        id: String,
    },
    /// The flow has no revision that may run yet: its newest waits for review.
    #[error(
        "flow {id} in namespace {namespace} has no approved revision: revision {revision} is pending review \
         (a second person approves it: `host flow approve {id} -n {ns} --revision {revision}`)",
        ns = namespace.as_str()
    )]
    Pending {
        /// Namespace.
        namespace: Namespace,
        /// Flow id.
        id: String,
        /// The revision waiting.
        revision: u64,
    },
    /// No such revision, or one that cannot be decided now.
    #[error("{0}")]
    Conflict(String),
    /// A row was edited outside keyhole.
    #[error(
        "deployed flow {id} revision {revision} in namespace {namespace} fails its integrity check: it was edited outside keyhole; deploy it again"
    )]
    Tampered {
        /// Namespace.
        namespace: Namespace,
        /// Flow id.
        id: String,
        /// Revision.
        revision: u64,
    },
    /// A protection row was edited outside keyhole.
    #[error("the protection of {what} fails its integrity check: it was edited outside keyhole; protect it again")]
    ProtectionTampered {
        /// `secret NAME in namespace NS` or `namespace NS`.
        what: String,
    },
    /// Writing a plugin file failed.
    #[error("cannot store plugin {path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
}

/// A revision to store: the flow as [`Registry::prepare`] made it, its
/// text and plugins, who deployed it, what they vouched for, and the
/// revision serving the flow when the vouches were compared with it.
#[derive(Debug, Clone, Copy)]
pub struct NewRevision<'a> {
    /// The checked flow.
    pub flow: &'a Flow,
    /// The file name.
    pub file: &'a str,
    /// The flow text.
    pub source: &'a str,
    /// Task id → plugin digest.
    pub plugins: &'a BTreeMap<String, String>,
    /// Who deployed it.
    pub by: &'a str,
    /// What they vouched for.
    pub vouches: &'a Vouches,
    /// The serving revision the vouches were compared with (a removal included).
    pub serving: Option<u64>,
}

/// Access to the deployed flows.
#[derive(Debug)]
pub struct Registry {
    conn: Connection,
    path: PathBuf,
    integrity: IntegrityKey,
    blobs: PathBuf,
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A `flows` row's MAC'd fields; `vouches` (the stored JSON text) only for
/// rows that have it, so rows written before vouching keep their MAC.
fn flow_mac_fields(d: &Deployed, deployed_at: i64, vouches: Option<&str>) -> Vec<Vec<u8>> {
    let mut f = vec![
        d.namespace.as_str().as_bytes().to_vec(),
        d.id.as_bytes().to_vec(),
        d.revision.to_be_bytes().to_vec(),
        d.file.as_bytes().to_vec(),
        d.source.as_bytes().to_vec(),
        serde_json::to_vec(&d.plugins).expect("digests encode"),
        deployed_at.to_be_bytes().to_vec(),
        d.deployed_by.as_bytes().to_vec(),
        vec![d.removed as u8],
    ];
    if let Some(v) = vouches {
        f.push(v.as_bytes().to_vec());
    }
    f
}

/// The raw columns of a review row, as MAC'd.
struct ReviewRow {
    decision: String,
    by: String,
    person: String,
    at: i64,
    comment: Option<String>,
    vouches: Option<String>,
    mac: Vec<u8>,
}

impl ReviewRow {
    fn fields(&self, namespace: &Namespace, id: &str, revision: u64) -> Vec<Vec<u8>> {
        let opt = |o: &Option<String>| o.as_deref().map_or(b"-".to_vec(), |s| format!("+{s}").into_bytes());
        vec![
            namespace.as_str().as_bytes().to_vec(),
            id.as_bytes().to_vec(),
            revision.to_be_bytes().to_vec(),
            self.decision.as_bytes().to_vec(),
            self.by.as_bytes().to_vec(),
            self.person.as_bytes().to_vec(),
            self.at.to_be_bytes().to_vec(),
            opt(&self.comment),
            opt(&self.vouches),
        ]
    }
}

const ROW_COLUMNS: &str = "f.namespace, f.id, f.revision, f.file, f.source, f.plugins, f.deployed_at, f.deployed_by, \
     f.removed, f.mac, f.vouches, r.decision, r.decided_by, r.person, r.decided_at, r.comment, r.vouches, r.mac";

const ROW_FROM: &str =
    "flows f LEFT JOIN flow_reviews r ON r.namespace = f.namespace AND r.id = f.id AND r.revision = f.revision";

fn mac_refs(fields: &[Vec<u8>]) -> Vec<&[u8]> {
    fields.iter().map(Vec::as_slice).collect()
}

impl Registry {
    /// Opens the registry of `dir` (its store file and plugin directory).
    pub fn open(dir: &DataDir, integrity: IntegrityKey) -> Result<Self, RegistryError> {
        let path = dir.store_path();
        Ok(Registry { conn: connect(&path)?, path, integrity, blobs: dir.root().join("plugins") })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> RegistryError + use<> {
        let e = sql_err(&self.path, op);
        move |err| RegistryError::Db(e(err))
    }

    fn blob(&self, sha256: &str) -> PathBuf {
        self.blobs.join(format!("{sha256}.wasm"))
    }

    /// Whether a plugin with this digest is stored.
    pub fn has_plugin(&self, sha256: &str) -> bool {
        is_sha256(sha256) && self.blob(sha256).is_file()
    }

    /// Stores plugin bytes under their digest (once); returns the digest.
    pub fn put_plugin(&self, bytes: &[u8]) -> Result<String, RegistryError> {
        let sha = hex::encode(crate::crypto::sha256(bytes));
        let path = self.blob(&sha);
        if !path.is_file() {
            create_private_dir(&self.blobs).map_err(|err| RegistryError::Io { path: self.blobs.clone(), err })?;
            write_private_atomic(&path, bytes).map_err(|err| RegistryError::Io { path: path.clone(), err })?;
        }
        Ok(sha)
    }

    /// Checks `source` as a flow whose tasks run `plugins` (task id →
    /// digest of a plugin already stored), exactly as `host validate`
    /// checks it; returns the flow as it would run (each task pinned to its
    /// digest). Stores nothing.
    pub fn prepare(&self, file: &str, source: &str, plugins: &BTreeMap<String, String>) -> Result<Flow, RegistryError> {
        let (mut flow, _warnings) = flow::parse(source, file, &self.blobs).map_err(RegistryError::Invalid)?;
        let mut found = Vec::new();
        for t in &flow.tasks {
            let location = format!("{file}: task {}", t.id);
            let mut error = |message: String| {
                found.push(Diagnostic { severity: Severity::Error, location: location.clone(), message })
            };
            match plugins.get(t.id.as_str()) {
                None => error("no plugin was uploaded for this task".into()),
                Some(sha) if !self.has_plugin(sha) => {
                    error(format!("plugin sha256 {sha} was not uploaded: PUT /api/v1/plugins/{sha} first"))
                }
                Some(sha) if t.sha256.as_ref().is_some_and(|pin| pin != sha) => error(format!(
                    "the flow pins sha256 {}, but the uploaded plugin has sha256 {sha}",
                    t.sha256.as_deref().unwrap_or_default()
                )),
                Some(_) => {}
            }
            if t.network.ca_file.is_some() {
                error("network.ca_file names a file on the deployer's disk, which a deployed flow cannot use".into());
            }
        }
        for task in plugins.keys() {
            if !flow.tasks.iter().any(|t| t.id.as_str() == task) {
                found.push(Diagnostic {
                    severity: Severity::Error,
                    location: file.to_owned(),
                    message: format!("a plugin was given for task {task:?}, which the flow does not have"),
                });
            }
        }
        if !found.is_empty() {
            return Err(RegistryError::Invalid(Diagnostics(found)));
        }
        for t in &mut flow.tasks {
            if let Some(sha) = plugins.get(t.id.as_str()) {
                t.plugin = self.blob(sha);
                t.sha256 = Some(sha.clone());
            }
        }
        Ok(flow)
    }

    /// Stores the next revision of a flow with what it was vouched for,
    /// and the audit record `audit` builds for it, in one transaction. If
    /// another deploy or decision changed which revision serves since the
    /// vouches were compared with `new.serving`, nothing is stored.
    pub fn insert_revision(
        &self,
        new: NewRevision<'_>,
        audit: impl FnOnce(&Deployed) -> NewRecord,
    ) -> Result<(Deployed, Flow), RegistryError> {
        let NewRevision { flow, file, source, plugins, by, vouches, serving } = new;
        let tx = self.begin()?;
        if self.serving_row(&flow.namespace, flow.id.as_str())?.map(|d| d.revision) != serving {
            return Err(RegistryError::Conflict(format!(
                "flow {} in namespace {} changed while it was being deployed: deploy it again",
                flow.id, flow.namespace
            )));
        }
        let revision = self.latest_revision(&flow.namespace, flow.id.as_str())? + 1;
        let d = Deployed {
            namespace: flow.namespace.clone(),
            id: flow.id.to_string(),
            revision,
            file: file.to_owned(),
            source: source.to_owned(),
            plugins: plugins.clone(),
            deployed_at: String::new(),
            deployed_by: by.to_owned(),
            removed: false,
            vouches: Some(vouches.clone()),
            review: None,
            state: RevisionState::Active,
        };
        let d = self.insert(&tx, d, audit)?;
        tx.commit().map_err(self.err("commit a flow revision"))?;
        let flow = self.pinned(flow.clone(), &d);
        Ok((d, flow))
    }

    fn begin(&self) -> Result<Transaction<'_>, RegistryError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate).map_err(self.err("start a write"))
    }

    fn latest_revision(&self, namespace: &Namespace, id: &str) -> Result<u64, RegistryError> {
        let max: Option<i64> = self
            .conn
            .query_row(
                "SELECT max(revision) FROM flows WHERE namespace = ?1 AND id = ?2",
                params![namespace.as_str(), id],
                |r| r.get(0),
            )
            .map_err(self.err("read a flow's revisions"))?;
        Ok(max.unwrap_or(0) as u64)
    }

    /// Inserts `d` in `tx` with the audit record `audit` builds for it.
    fn insert(
        &self,
        tx: &Transaction<'_>,
        mut d: Deployed,
        audit: impl FnOnce(&Deployed) -> NewRecord,
    ) -> Result<Deployed, RegistryError> {
        let at = now();
        let vouches = d.vouches.as_ref().map(|v| serde_json::to_string(v).expect("vouches encode"));
        let mac = self.integrity.mac(MacDomain::FlowRow, &mac_refs(&flow_mac_fields(&d, at, vouches.as_deref())));
        tx.execute(
            "INSERT INTO flows (namespace, id, revision, file, source, plugins, deployed_at, deployed_by, removed, mac, vouches) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                d.namespace.as_str(),
                d.id,
                d.revision as i64,
                d.file,
                d.source,
                serde_json::to_string(&d.plugins).expect("digests encode"),
                at,
                d.deployed_by,
                d.removed,
                mac.to_vec(),
                vouches
            ],
        )
        .map_err(self.err("store a flow revision"))?;
        d.deployed_at = fmt_time(at);
        d.state = d.derive_state();
        crate::audit::append(tx, &self.integrity, &audit(&d)).map_err(self.err("write the audit record"))?;
        Ok(d)
    }

    /// The flow as it runs: each task's plugin is its stored blob, pinned,
    /// and each secret it names is served only from where it was vouched for.
    fn pinned(&self, mut flow: Flow, d: &Deployed) -> Flow {
        let at = d.vouched().map(Vouches::locations).unwrap_or_default();
        for t in &mut flow.tasks {
            if let Some(sha) = d.plugins.get(t.id.as_str()) {
                t.plugin = self.blob(sha);
                t.sha256 = Some(sha.clone());
            }
            t.grants = std::mem::take(&mut t.grants).located(&at);
            t.rotate = std::mem::take(&mut t.rotate).located(&at);
        }
        flow.source = format!("{}/{} revision {}", d.namespace.as_str(), d.id, d.revision);
        flow
    }

    /// Calls `each` with every revision `filter` selects, verified, in
    /// `order`, until it returns false.
    fn each(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
        order: &str,
        mut each: impl FnMut(Deployed) -> Result<bool, RegistryError>,
    ) -> Result<(), RegistryError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM {ROW_FROM} WHERE {filter} ORDER BY {order}"))
            .map_err(self.err("list flows"))?;
        let mut rows = stmt.query(args).map_err(self.err("list flows"))?;
        while let Some(r) = rows.next().map_err(self.err("read flows"))? {
            if !each(self.verified(r)?)? {
                break;
            }
        }
        Ok(())
    }

    /// One row, its MACs checked and its vouches parsed.
    fn verified(&self, r: &rusqlite::Row<'_>) -> Result<Deployed, RegistryError> {
        let e = |err| RegistryError::Db(sql_err(&self.path, "read flows")(err));
        let ns: String = r.get(0).map_err(e)?;
        let id: String = r.get(1).map_err(e)?;
        let revision = r.get::<_, i64>(2).map_err(e)? as u64;
        let namespace = Namespace::new(&ns).unwrap_or_default();
        let tampered = || RegistryError::Tampered { namespace: namespace.clone(), id: id.clone(), revision };
        let plugins: String = r.get(5).map_err(e)?;
        let at: i64 = r.get(6).map_err(e)?;
        let mac: Vec<u8> = r.get(9).map_err(e)?;
        let vouches_text: Option<String> = r.get(10).map_err(e)?;
        let mut d = Deployed {
            namespace: namespace.clone(),
            id: id.clone(),
            revision,
            file: r.get(3).map_err(e)?,
            source: r.get(4).map_err(e)?,
            plugins: serde_json::from_str(&plugins).map_err(|_| tampered())?,
            deployed_at: fmt_time(at),
            deployed_by: r.get(7).map_err(e)?,
            removed: r.get(8).map_err(e)?,
            vouches: None,
            review: None,
            state: RevisionState::Active,
        };
        let fields = flow_mac_fields(&d, at, vouches_text.as_deref());
        if Namespace::new(&ns).is_err() || !self.integrity.verify(MacDomain::FlowRow, &mac_refs(&fields), &mac) {
            return Err(tampered());
        }
        d.vouches = vouches_text.map(|t| serde_json::from_str(&t)).transpose().map_err(|_| tampered())?;
        let decision: Option<String> = r.get(11).map_err(e)?;
        if let Some(decision) = decision {
            let row = ReviewRow {
                decision,
                by: r.get(12).map_err(e)?,
                person: r.get(13).map_err(e)?,
                at: r.get(14).map_err(e)?,
                comment: r.get(15).map_err(e)?,
                vouches: r.get(16).map_err(e)?,
                mac: r.get(17).map_err(e)?,
            };
            let fields = row.fields(&namespace, &id, revision);
            if !self.integrity.verify(MacDomain::ReviewRow, &mac_refs(&fields), &row.mac) {
                return Err(tampered());
            }
            let decision = match row.decision.as_str() {
                "approved" => Decision::Approved,
                "rejected" => Decision::Rejected,
                _ => return Err(tampered()),
            };
            let vouches = row.vouches.map(|t| serde_json::from_str(&t)).transpose().map_err(|_| tampered())?;
            d.review = Some(Review {
                decision,
                by: row.by,
                person: row.person,
                at: fmt_time(row.at),
                comment: row.comment,
                vouches,
            });
        }
        d.state = d.derive_state();
        Ok(d)
    }

    /// Every revision of one flow, oldest first.
    pub fn revisions(&self, namespace: &Namespace, id: &str) -> Result<Vec<Deployed>, RegistryError> {
        let mut all = Vec::new();
        self.each("f.namespace = ?1 AND f.id = ?2", params![namespace.as_str(), id], "f.revision", |d| {
            all.push(d);
            Ok(true)
        })?;
        if all.is_empty() {
            return Err(RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() });
        }
        Ok(all)
    }

    /// The revision that serves a flow now (a removal included), if any;
    /// and the newest revision, if it is pending.
    fn serving_and_pending(
        &self,
        namespace: &Namespace,
        id: &str,
    ) -> Result<(Option<Deployed>, Option<Deployed>), RegistryError> {
        let (mut serving, mut pending) = (None, None);
        self.each("f.namespace = ?1 AND f.id = ?2", params![namespace.as_str(), id], "f.revision DESC", |d| {
            if d.state.serves() {
                serving = Some(d);
                return Ok(false);
            }
            if d.state == RevisionState::Pending && pending.is_none() {
                pending = Some(d);
            }
            Ok(true)
        })?;
        Ok((serving, pending))
    }

    /// The revision that serves a flow now, a removal included.
    pub fn serving_row(&self, namespace: &Namespace, id: &str) -> Result<Option<Deployed>, RegistryError> {
        Ok(self.serving_and_pending(namespace, id)?.0)
    }

    /// The revision serving a flow (not removed) and the flow as it runs,
    /// if there is one.
    pub fn serving(&self, namespace: &Namespace, id: &str) -> Result<Option<(Deployed, Flow)>, RegistryError> {
        match self.serving_row(namespace, id)? {
            Some(d) if !d.removed => {
                let flow = self.parsed(&d)?;
                Ok(Some((d, flow)))
            }
            _ => Ok(None),
        }
    }

    /// Revision `d` as it runs.
    pub fn parsed(&self, d: &Deployed) -> Result<Flow, RegistryError> {
        let (flow, _) = flow::parse(&d.source, &d.file, &self.blobs).map_err(RegistryError::Invalid)?;
        Ok(self.pinned(flow, d))
    }

    /// The revision serving a flow, and the flow as it runs: what a new
    /// execution runs. A flow whose only revisions wait for review is
    /// [`RegistryError::Pending`].
    pub fn current(&self, namespace: &Namespace, id: &str) -> Result<(Deployed, Flow), RegistryError> {
        match self.serving_and_pending(namespace, id)? {
            (Some(d), _) if !d.removed => {
                let flow = self.parsed(&d)?;
                Ok((d, flow))
            }
            (None, Some(p)) => {
                Err(RegistryError::Pending { namespace: namespace.clone(), id: id.to_owned(), revision: p.revision })
            }
            _ => Err(RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() }),
        }
    }

    /// What `flow show` shows: the revision serving the flow, or (when none
    /// serves yet) the newest one pending review; the flow as it runs; and
    /// the revisions newer than it that wait for review.
    pub fn shown(&self, namespace: &Namespace, id: &str) -> Result<(Deployed, Flow, Vec<u64>), RegistryError> {
        let mut pending = Vec::new();
        let mut serving = None;
        self.each("f.namespace = ?1 AND f.id = ?2", params![namespace.as_str(), id], "f.revision DESC", |d| {
            if d.state.serves() {
                serving = Some(d);
                return Ok(false);
            }
            if d.state == RevisionState::Pending {
                pending.push(d);
            }
            Ok(true)
        })?;
        let shown = match serving {
            Some(d) if !d.removed => d,
            _ if !pending.is_empty() => pending.remove(0),
            _ => return Err(RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() }),
        };
        let flow = self.parsed(&shown)?;
        let mut newer: Vec<u64> = pending.iter().map(|d| d.revision).filter(|&r| r > shown.revision).collect();
        newer.sort_unstable();
        Ok((shown, flow, newer))
    }

    /// One revision as listed.
    pub fn get(&self, namespace: &Namespace, id: &str, revision: u64) -> Result<Deployed, RegistryError> {
        let mut found = None;
        let args = params![namespace.as_str(), id, revision as i64];
        self.each("f.namespace = ?1 AND f.id = ?2 AND f.revision = ?3", args, "f.revision", |d| {
            found = Some(d);
            Ok(false)
        })?;
        found.ok_or_else(|| {
            RegistryError::Conflict(format!(
                "flow {id} in namespace {namespace} has no revision {revision}: see `host flow revisions {id} -n {}`",
                namespace.as_str()
            ))
        })
    }

    /// Revision `revision` of a flow, as it runs (what an execution queued
    /// for it runs, even after a newer deploy). One that waits for review,
    /// or was rejected, never runs.
    pub fn revision(&self, namespace: &Namespace, id: &str, revision: u64) -> Result<Flow, RegistryError> {
        let d = self.get(namespace, id, revision)?;
        match d.state {
            RevisionState::Removed => Err(RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() }),
            RevisionState::Pending | RevisionState::Rejected => Err(RegistryError::Conflict(format!(
                "flow {id} revision {revision} in namespace {namespace} is {}: it never runs",
                d.state
            ))),
            RevisionState::Active | RevisionState::Unchecked => self.parsed(&d),
        }
    }

    /// Per flow: the revision serving it (unless removed), and each newer
    /// revision still pending review; by namespace, id and revision.
    pub fn list(&self) -> Result<Vec<Deployed>, RegistryError> {
        let mut out: Vec<Deployed> = Vec::new();
        let mut done: Option<(Namespace, String)> = None;
        self.each("1", [], "f.namespace, f.id, f.revision DESC", |d| {
            let key = (d.namespace.clone(), d.id.clone());
            if done.as_ref() == Some(&key) {
                return Ok(true);
            }
            if d.state.serves() {
                done = Some(key);
                if !d.removed {
                    out.push(d);
                }
            } else if d.state == RevisionState::Pending {
                out.push(d);
            }
            Ok(true)
        })?;
        out.sort_by(|a, b| (&a.namespace, &a.id, a.revision).cmp(&(&b.namespace, &b.id, b.revision)));
        Ok(out)
    }

    /// The revisions serving flows (not removed): what schedules fire.
    pub fn serving_all(&self) -> Result<Vec<Deployed>, RegistryError> {
        Ok(self.list()?.into_iter().filter(|d| d.state.serves()).collect())
    }

    /// Removes a flow: a tombstone revision, committed with `audit`. Its
    /// executions stay; revisions pending review stay pending, and never
    /// serve while the removal is newer.
    pub fn remove(
        &self,
        namespace: &Namespace,
        id: &str,
        by: &str,
        audit: impl FnOnce(&Deployed) -> NewRecord,
    ) -> Result<Deployed, RegistryError> {
        let tx = self.begin()?;
        let (cur, _) = self.current(namespace, id)?;
        let d = Deployed {
            revision: self.latest_revision(namespace, id)? + 1,
            source: String::new(),
            plugins: BTreeMap::new(),
            file: cur.file,
            deployed_by: by.to_owned(),
            removed: true,
            vouches: None,
            review: None,
            ..cur
        };
        let d = self.insert(&tx, d, audit)?;
        tx.commit().map_err(self.err("commit a flow removal"))?;
        Ok(d)
    }

    /// Records a decision on `revision`, committed with `audit`. Only a
    /// revision pending review (or one deployed before vouching, with the
    /// approver's `vouches`) can be decided, once, and only while no newer
    /// revision serves the flow.
    pub fn decide(
        &self,
        namespace: &Namespace,
        id: &str,
        revision: u64,
        review: &Review,
        audit: NewRecord,
    ) -> Result<Deployed, RegistryError> {
        let tx = self.begin()?;
        let d = self.get(namespace, id, revision)?;
        let what = format!("flow {id} revision {revision} in namespace {namespace}");
        match d.state {
            RevisionState::Pending | RevisionState::Unchecked => {}
            state => {
                return Err(RegistryError::Conflict(format!(
                    "{what} is {state}: only a revision pending review (or unchecked) is decided"
                )));
            }
        }
        if let Some(newer) = self.serving_row(namespace, id)?.filter(|s| s.revision > revision) {
            return Err(RegistryError::Conflict(format!(
                "{what} is superseded: revision {} serves the flow now",
                newer.revision
            )));
        }
        let row = ReviewRow {
            decision: review.decision.as_str().to_owned(),
            by: review.by.clone(),
            person: review.person.clone(),
            at: now(),
            comment: review.comment.clone(),
            vouches: review.vouches.as_ref().map(|v| serde_json::to_string(v).expect("vouches encode")),
            mac: Vec::new(),
        };
        let mac = self.integrity.mac(MacDomain::ReviewRow, &mac_refs(&row.fields(namespace, id, revision)));
        tx.execute(
            "INSERT INTO flow_reviews (namespace, id, revision, decision, decided_by, person, decided_at, comment, vouches, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![namespace.as_str(), id, revision as i64, row.decision, row.by, row.person, row.at, row.comment, row.vouches, mac.to_vec()],
        )
        .map_err(self.err("store a review"))?;
        crate::audit::append(&tx, &self.integrity, &audit).map_err(self.err("write the audit record"))?;
        tx.commit().map_err(self.err("commit a review"))?;
        self.get(namespace, id, revision)
    }

    /// Appends one audit record on its own (a refusal).
    pub fn record(&self, rec: &NewRecord) -> Result<(), RegistryError> {
        let tx = self.begin()?;
        crate::audit::append(&tx, &self.integrity, rec).map_err(self.err("write the audit record"))?;
        tx.commit().map_err(self.err("commit the audit record"))
    }

    /// Every protection, by namespace and name.
    pub fn protections(&self) -> Result<Vec<Protection>, RegistryError> {
        self.protection_rows("1", [])
    }

    fn protection_rows(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<Protection>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT namespace, name, created_at, created_by, mac FROM protections WHERE {filter} ORDER BY namespace, name"
            ))
            .map_err(self.err("read protections"))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .map_err(self.err("read protections"))?;
        let mut out = Vec::new();
        for row in rows {
            let (ns, name, at, by, mac) = row.map_err(self.err("read protections"))?;
            let what =
                if name == "*" { format!("namespace {ns:?}") } else { format!("secret {name:?} in namespace {ns:?}") };
            let fields = [ns.as_bytes(), name.as_bytes(), &at.to_be_bytes(), by.as_bytes()];
            let namespace =
                Namespace::new(&ns).map_err(|_| RegistryError::ProtectionTampered { what: what.clone() })?;
            let secret = match name.as_str() {
                "*" => None,
                n => Some(SecretName::new(n).map_err(|_| RegistryError::ProtectionTampered { what: what.clone() })?),
            };
            if !self.integrity.verify(MacDomain::ProtectionRow, &fields, &mac) {
                return Err(RegistryError::ProtectionTampered { what });
            }
            out.push(Protection { namespace, secret, created_at: fmt_time(at), created_by: by });
        }
        Ok(out)
    }

    /// Whether secret `name` of `namespace` is protected: itself, or its
    /// namespace or one above it as a whole.
    pub fn is_protected(&self, namespace: &Namespace, name: &SecretName) -> Result<bool, RegistryError> {
        let chain: Vec<String> = namespace.chain().iter().map(|n| n.as_str().to_owned()).collect();
        let found = self.protection_rows(
            "(namespace = ?1 AND name = ?2) OR (name = '*' AND namespace IN (SELECT value FROM json_each(?3)))",
            params![namespace.as_str(), name.as_str(), serde_json::to_string(&chain).expect("names encode")],
        )?;
        Ok(!found.is_empty())
    }

    /// Protects (`on`) or unprotects secret `secret` of `namespace` (or the
    /// whole namespace: `None`), committed with `audit`. Returns whether
    /// anything changed (protecting twice, or unprotecting what is not,
    /// changes nothing and records nothing).
    pub fn set_protection(
        &self,
        namespace: &Namespace,
        secret: Option<&SecretName>,
        on: bool,
        by: &str,
        audit: &NewRecord,
    ) -> Result<bool, RegistryError> {
        let name = secret.map_or("*", SecretName::as_str);
        let tx = self.begin()?;
        let changed = if on {
            let at = now();
            let fields = [namespace.as_str().as_bytes(), name.as_bytes(), &at.to_be_bytes(), by.as_bytes()];
            let mac = self.integrity.mac(MacDomain::ProtectionRow, &fields);
            tx.execute(
                "INSERT OR IGNORE INTO protections (namespace, name, created_at, created_by, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![namespace.as_str(), name, at, by, mac.to_vec()],
            )
        } else {
            tx.execute("DELETE FROM protections WHERE namespace = ?1 AND name = ?2", params![namespace.as_str(), name])
        }
        .map_err(self.err("change a protection"))?;
        if changed > 0 {
            crate::audit::append(&tx, &self.integrity, audit).map_err(self.err("write the audit record"))?;
        }
        tx.commit().map_err(self.err("commit a protection"))?;
        Ok(changed > 0)
    }
}

/// Reads every plugin a flow file names (for a deploy from disk): task id →
/// bytes, each up to [`crate::runtime::MAX_PLUGIN_BYTES`].
pub fn read_plugins(flow: &Flow) -> Result<BTreeMap<TaskId, Vec<u8>>, RegistryError> {
    let mut out = BTreeMap::new();
    for t in &flow.tasks {
        let bytes = crate::data_dir::read_bounded(&t.plugin, crate::runtime::MAX_PLUGIN_BYTES).map_err(|err| {
            RegistryError::Plugin(format!("task {}: cannot read plugin {}: {err}", t.id, t.plugin.display()))
        })?;
        out.insert(t.id.clone(), bytes);
    }
    Ok(out)
}

/// The directory plugins are stored in.
pub fn plugins_dir(dir: &DataDir) -> PathBuf {
    dir.root().join("plugins")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Actor};
    use crate::vouch::{Vouch, Vouches};

    fn ns(s: &str) -> Namespace {
        Namespace::new(s).unwrap()
    }

    fn open() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&DataDir::at(dir.path()), IntegrityKey::generate()).unwrap();
        (dir, r)
    }

    const SOURCE: &str = "id: report\nnamespace: finance.reporting\ntasks:\n  - {id: t, plugin: p.wasm, secrets: [DB]}\n";

    fn audit(d: &Deployed) -> NewRecord {
        NewRecord::ok(&Actor::Cli { user: "tester".into() }, Action::FlowDeploy, &d.namespace, None)
    }

    fn vouches(review: &[&str]) -> Vouches {
        Vouches {
            by: "dev (tok-1)".into(),
            person: "token tok-1".into(),
            secrets: vec![Vouch {
                secret: SecretName::new("DB").unwrap(),
                uses: vec!["task t (secrets)".into()],
                resolved_in: Some(ns("finance")),
                checked_in: ns("finance"),
                protected: !review.is_empty(),
            }],
            review: review.iter().map(|n| SecretName::new(n).unwrap()).collect(),
        }
    }

    /// Deploys [`SOURCE`] vouched for with `v`.
    fn deploy(r: &Registry, v: &Vouches) -> Deployed {
        let plugins: BTreeMap<String, String> = [("t".to_owned(), r.put_plugin(b"plugin bytes").unwrap())].into();
        let flow = r.prepare("report.yaml", SOURCE, &plugins).unwrap();
        let serving = r.serving_row(&flow.namespace, "report").unwrap().map(|d| d.revision);
        let new =
            NewRevision { flow: &flow, file: "report.yaml", source: SOURCE, plugins: &plugins, by: &v.by, vouches: v, serving };
        r.insert_revision(new, audit).unwrap().0
    }

    fn review(decision: Decision, vouches: Option<Vouches>) -> Review {
        Review { decision, by: "rev (tok-2)".into(), person: "token tok-2".into(), at: String::new(), comment: None, vouches }
    }

    fn rec() -> NewRecord {
        NewRecord::ok(&Actor::Cli { user: "tester".into() }, Action::FlowApprove, &ns("finance.reporting"), None)
    }

    #[test]
    fn a_deployed_flows_grants_are_served_only_where_they_were_vouched_for() {
        let (_d, r) = open();
        let d = deploy(&r, &vouches(&[]));
        assert_eq!(d.state, RevisionState::Active);
        let (_, flow) = r.current(&ns("finance.reporting"), "report").unwrap();
        let grant = flow.tasks[0].grants.check("DB").unwrap();
        assert_eq!(grant.vouched_at(), Some(&ns("finance")));
    }

    #[test]
    fn a_pending_revision_never_serves_and_a_decision_is_final() {
        let (_d, r) = open();
        let at = ns("finance.reporting");
        let pending = deploy(&r, &vouches(&["DB"]));
        assert_eq!(pending.state, RevisionState::Pending);
        let e = r.current(&at, "report").unwrap_err();
        assert!(e.to_string().contains("revision 1 is pending review"), "{e}");
        assert!(r.revision(&at, "report", 1).is_err(), "a queued execution of it would not run either");
        let listed = r.list().unwrap();
        assert_eq!((listed.len(), listed[0].state), (1, RevisionState::Pending));
        assert!(r.serving_all().unwrap().is_empty(), "no schedule fires for it");
        let d = r.decide(&at, "report", 1, &review(Decision::Approved, None), rec()).unwrap();
        assert_eq!((d.state, d.review.unwrap().by.as_str()), (RevisionState::Active, "rev (tok-2)"));
        assert_eq!(r.current(&at, "report").unwrap().0.revision, 1);
        // A second pending one: rejected, it never serves; revision 1 goes on.
        deploy(&r, &vouches(&["DB"]));
        assert_eq!(r.current(&at, "report").unwrap().0.revision, 1);
        assert_eq!(r.shown(&at, "report").unwrap().2, vec![2], "flow show names the one waiting");
        r.decide(&at, "report", 2, &review(Decision::Rejected, None), rec()).unwrap();
        assert_eq!(r.current(&at, "report").unwrap().0.revision, 1);
        let e = r.decide(&at, "report", 2, &review(Decision::Approved, None), rec()).unwrap_err();
        assert!(e.to_string().contains("is rejected"), "{e}");
        // A newer active revision supersedes an older pending one.
        deploy(&r, &vouches(&["DB"]));
        deploy(&r, &vouches(&[]));
        let e = r.decide(&at, "report", 3, &review(Decision::Approved, None), rec()).unwrap_err();
        assert!(e.to_string().contains("superseded: revision 4 serves"), "{e}");
    }

    /// Writes a `flows` row as keyhole 0.7 did: no vouches, the MAC over
    /// the fields it knew.
    fn legacy_row(r: &Registry) {
        let sha = r.put_plugin(b"plugin bytes").unwrap();
        let d = Deployed {
            namespace: ns("finance.reporting"),
            id: "report".into(),
            revision: 1,
            file: "report.yaml".into(),
            source: SOURCE.into(),
            plugins: [("t".to_owned(), sha)].into(),
            deployed_at: String::new(),
            deployed_by: "old-dev (tok-0)".into(),
            removed: false,
            vouches: None,
            review: None,
            state: RevisionState::Active,
        };
        let mac = r.integrity.mac(MacDomain::FlowRow, &mac_refs(&flow_mac_fields(&d, 1000, None)));
        r.conn
            .execute(
                "INSERT INTO flows (namespace, id, revision, file, source, plugins, deployed_at, deployed_by, removed, mac) \
                 VALUES ('finance.reporting', 'report', 1, 'report.yaml', ?1, ?2, 1000, 'old-dev (tok-0)', 0, ?3)",
                params![SOURCE, serde_json::to_string(&d.plugins).unwrap(), mac.to_vec()],
            )
            .unwrap();
    }

    #[test]
    fn a_revision_deployed_before_vouching_keeps_running_unchecked_until_approved() {
        let (_d, r) = open();
        legacy_row(&r);
        let at = ns("finance.reporting");
        let (d, flow) = r.current(&at, "report").unwrap();
        assert_eq!(d.state, RevisionState::Unchecked, "nothing silently narrows what runs");
        assert_eq!(flow.tasks[0].grants.check("DB").unwrap().vouched_at(), None, "nor widens it");
        assert_eq!(r.list().unwrap()[0].state, RevisionState::Unchecked);
        let d = r.decide(&at, "report", 1, &review(Decision::Approved, Some(vouches(&[]))), rec()).unwrap();
        assert_eq!(d.state, RevisionState::Active);
        let (_, flow) = r.current(&at, "report").unwrap();
        assert_eq!(flow.tasks[0].grants.check("DB").unwrap().vouched_at(), Some(&ns("finance")));
    }

    #[test]
    fn an_edited_vouch_or_decision_is_refused_not_run() {
        let at = ns("finance.reporting");
        let edits = [
            // Widen where a grant may resolve.
            "UPDATE flows SET vouches = replace(vouches, '\"checked_in\":\"finance\"', '\"checked_in\":\"\"')",
            // Make a checked revision look unchecked (no vouch, no pin).
            "UPDATE flows SET vouches = NULL",
            // Clear the review it waits for.
            "UPDATE flows SET vouches = replace(vouches, '\"review\":[\"DB\"]', '\"review\":[]')",
        ];
        for edit in edits {
            let (_d, r) = open();
            deploy(&r, &vouches(&["DB"]));
            r.conn.execute(edit, []).unwrap();
            assert!(matches!(r.current(&at, "report"), Err(RegistryError::Tampered { .. })), "{edit}");
        }
        // A decision no one with the key wrote, or one turned around.
        let (_d, r) = open();
        deploy(&r, &vouches(&["DB"]));
        r.conn
            .execute(
                "INSERT INTO flow_reviews (namespace, id, revision, decision, decided_by, person, decided_at, mac) \
                 VALUES ('finance.reporting', 'report', 1, 'approved', 'x', 'x', 1, x'00')",
                [],
            )
            .unwrap();
        assert!(matches!(r.current(&at, "report"), Err(RegistryError::Tampered { .. })));
        let (_d, r) = open();
        deploy(&r, &vouches(&["DB"]));
        r.decide(&at, "report", 1, &review(Decision::Rejected, None), rec()).unwrap();
        r.conn.execute("UPDATE flow_reviews SET decision = 'approved'", []).unwrap();
        assert!(matches!(r.current(&at, "report"), Err(RegistryError::Tampered { .. })));
    }

    #[test]
    fn protections_cover_a_secret_or_a_namespace_subtree_and_are_authenticated() {
        let (_d, r) = open();
        let db = SecretName::new("DB").unwrap();
        let by = "tester";
        assert!(r.set_protection(&ns("finance"), Some(&db), true, by, &rec()).unwrap());
        assert!(!r.set_protection(&ns("finance"), Some(&db), true, by, &rec()).unwrap(), "twice changes nothing");
        assert!(r.is_protected(&ns("finance"), &db).unwrap());
        assert!(!r.is_protected(&ns("finance.eu"), &db).unwrap(), "a secret's protection is its own");
        assert!(!r.is_protected(&ns("finance"), &SecretName::new("OTHER").unwrap()).unwrap());
        assert!(r.set_protection(&ns("ops"), None, true, by, &rec()).unwrap());
        for (at, covered) in [("ops", true), ("ops.db.eu", true), ("opsx", false), ("", false)] {
            assert_eq!(r.is_protected(&ns(at), &db).unwrap(), covered, "{at:?}");
        }
        assert_eq!(r.protections().unwrap().len(), 2);
        assert!(r.set_protection(&ns("ops"), None, false, by, &rec()).unwrap());
        assert!(!r.is_protected(&ns("ops.db"), &db).unwrap());
        r.conn.execute("UPDATE protections SET namespace = 'finance.eu'", []).unwrap();
        let e = r.is_protected(&ns("finance.eu"), &db).unwrap_err();
        assert!(matches!(e, RegistryError::ProtectionTampered { .. }), "{e}");
    }
}
