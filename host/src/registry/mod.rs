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
use crate::data_dir::DataDir;
use crate::db::{DbError, connect, sql_err};
use crate::flow::{self, Diagnostic, Diagnostics, Flow, Severity};
use crate::names::{Namespace, TaskId};
use crate::store::{fmt_time, now};
use crate::vouch::Vouches;
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// One deployed revision of a flow, as listed: never a secret (a flow holds
/// only secret names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// A namespace's plugins would pass its quota.
    #[error("{0}")]
    Quota(String),
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

fn mac_refs(fields: &[Vec<u8>]) -> Vec<&[u8]> {
    fields.iter().map(Vec::as_slice).collect()
}

/// Access to the deployed flows.
#[derive(Debug)]
pub struct Registry {
    conn: Connection,
    path: PathBuf,
    integrity: IntegrityKey,
    blobs: PathBuf,
    /// Flows as parsed, by the SHA-256 of their file name and text (a
    /// revision's text never changes, and parsing reads nothing else):
    /// each execution would otherwise parse its flow twice.
    parsed: std::cell::RefCell<std::collections::HashMap<[u8; 32], Flow>>,
}

/// How many parsed flows a registry keeps (it forgets them all past this).
const PARSED_FLOWS: usize = 256;

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Registry {
    /// Opens the registry of `dir` (its store file and plugin directory).
    pub fn open(dir: &DataDir, integrity: IntegrityKey) -> Result<Self, RegistryError> {
        let path = dir.store_path();
        Ok(Registry {
            conn: connect(&path)?,
            path,
            integrity,
            blobs: dir.root().join("plugins"),
            parsed: Default::default(),
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> RegistryError + use<> {
        let e = sql_err(&self.path, op);
        move |err| RegistryError::Db(e(err))
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

    /// Appends one audit record on its own (a refusal).
    pub fn record(&self, rec: &NewRecord) -> Result<(), RegistryError> {
        crate::audit::append_alone(&self.conn, &self.integrity, rec).map_err(self.err("write the audit record"))?;
        Ok(())
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

mod plugins;
mod protection;
mod read;
mod review;
#[cfg(test)]
mod tests;

pub use plugins::{Collected, DEFAULT_MAX_PLUGIN_BYTES, Stored, is_wasm, plugins_dir};
pub use protection::Protection;
pub use review::{Decision, Review};
