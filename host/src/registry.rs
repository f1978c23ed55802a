//! Deployed flows: every revision of every flow `host flow deploy` stored,
//! in the `flows` table, with its plugins kept by SHA-256 under
//! `DATA_DIR/plugins/`. What runs is exactly what was deployed: a later
//! change to a file on the deployer's disk changes nothing.
//!
//! Invariant: rows are only added (a removal is a tombstone revision) and
//! each is authenticated with the integrity key, so an edited flow text or
//! plugin digest is refused, not run; a task's plugin is pinned to its
//! digest, so a blob changed on disk fails the pin check in
//! [`crate::run::prepare`]. Who may deploy where is [`crate::authz`]'s
//! decision, made before this module is called.

use crate::crypto::{IntegrityKey, MacDomain};
use crate::data_dir::{DataDir, create_private_dir, write_private_atomic};
use crate::db::{DbError, connect, sql_err};
use crate::flow::{self, Diagnostic, Diagnostics, Flow, Severity};
use crate::names::{Namespace, TaskId};
use crate::store::{fmt_time, now};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// Writing a plugin file failed.
    #[error("cannot store plugin {path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
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

impl Deployed {
    fn mac_fields(&self, deployed_at: i64) -> Vec<Vec<u8>> {
        vec![
            self.namespace.as_str().as_bytes().to_vec(),
            self.id.as_bytes().to_vec(),
            self.revision.to_be_bytes().to_vec(),
            self.file.as_bytes().to_vec(),
            self.source.as_bytes().to_vec(),
            serde_json::to_vec(&self.plugins).expect("digests encode"),
            deployed_at.to_be_bytes().to_vec(),
            self.deployed_by.as_bytes().to_vec(),
            vec![self.removed as u8],
        ]
    }
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

    /// Checks `source` as a flow and stores it as the next revision, with
    /// `plugins` (task id → digest of a plugin already stored). Returns the
    /// revision and the flow as it will run.
    pub fn deploy(
        &self,
        file: &str,
        source: &str,
        plugins: &BTreeMap<String, String>,
        by: &str,
    ) -> Result<(Deployed, Flow), RegistryError> {
        let (flow, _warnings) = flow::parse(source, file, &self.blobs).map_err(RegistryError::Invalid)?;
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
        };
        let d = self.insert(d)?;
        let flow = self.pinned(flow, &d);
        Ok((d, flow))
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

    fn insert(&self, mut d: Deployed) -> Result<Deployed, RegistryError> {
        let at = now();
        let fields = d.mac_fields(at);
        let mac = self.integrity.mac(MacDomain::FlowRow, &fields.iter().map(Vec::as_slice).collect::<Vec<_>>());
        self.conn
            .execute(
                "INSERT INTO flows (namespace, id, revision, file, source, plugins, deployed_at, deployed_by, removed, mac) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
                    mac.to_vec()
                ],
            )
            .map_err(self.err("store a flow revision"))?;
        d.deployed_at = fmt_time(at);
        Ok(d)
    }

    /// The flow as it runs: each task's plugin is its stored blob, pinned.
    fn pinned(&self, mut flow: Flow, d: &Deployed) -> Flow {
        for t in &mut flow.tasks {
            if let Some(sha) = d.plugins.get(t.id.as_str()) {
                t.plugin = self.blob(sha);
                t.sha256 = Some(sha.clone());
            }
        }
        flow.source = format!("{}/{} revision {}", d.namespace.as_str(), d.id, d.revision);
        flow
    }

    fn rows(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<Deployed>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT namespace, id, revision, file, source, plugins, deployed_at, deployed_by, removed, mac \
                 FROM flows WHERE {filter} ORDER BY namespace, id, revision"
            ))
            .map_err(self.err("list flows"))?;
        let rows = stmt
            .query_map(args, |r| {
                let ns: String = r.get(0)?;
                let plugins: String = r.get(5)?;
                let at: i64 = r.get(6)?;
                let mac: Vec<u8> = r.get(9)?;
                Ok((
                    ns,
                    r.get(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get(3)?,
                    r.get(4)?,
                    plugins,
                    at,
                    r.get(7)?,
                    r.get(8)?,
                    mac,
                ))
            })
            .map_err(self.err("list flows"))?;
        let mut out = Vec::new();
        for row in rows {
            let (ns, id, revision, file, source, plugins, at, by, removed, mac): (
                String,
                String,
                u64,
                String,
                String,
                String,
                i64,
                String,
                bool,
                Vec<u8>,
            ) = row.map_err(self.err("read flows"))?;
            let namespace = Namespace::new(&ns).unwrap_or_default();
            let tampered = || RegistryError::Tampered { namespace: namespace.clone(), id: id.clone(), revision };
            let plugins: BTreeMap<String, String> = serde_json::from_str(&plugins).map_err(|_| tampered())?;
            let d = Deployed {
                namespace: namespace.clone(),
                id: id.clone(),
                revision,
                file,
                source,
                plugins,
                deployed_at: fmt_time(at),
                deployed_by: by,
                removed,
            };
            let fields = d.mac_fields(at);
            let ok = Namespace::new(&ns).is_ok()
                && self.integrity.verify(
                    MacDomain::FlowRow,
                    &fields.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                    &mac,
                );
            if !ok {
                return Err(tampered());
            }
            out.push(d);
        }
        Ok(out)
    }

    /// Every revision of one flow, oldest first.
    pub fn revisions(&self, namespace: &Namespace, id: &str) -> Result<Vec<Deployed>, RegistryError> {
        let all = self.rows("namespace = ?1 AND id = ?2", params![namespace.as_str(), id])?;
        if all.is_empty() {
            return Err(RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() });
        }
        Ok(all)
    }

    /// The current revision of a flow (not removed), and the flow as it runs.
    pub fn current(&self, namespace: &Namespace, id: &str) -> Result<(Deployed, Flow), RegistryError> {
        let not_found = || RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() };
        let d = self
            .rows(
                "namespace = ?1 AND id = ?2 AND revision = (SELECT max(revision) FROM flows WHERE namespace = ?1 AND id = ?2)",
                params![namespace.as_str(), id],
            )?
            .pop()
            .filter(|d| !d.removed)
            .ok_or_else(not_found)?;
        let (flow, _) = flow::parse(&d.source, &d.file, &self.blobs).map_err(RegistryError::Invalid)?;
        Ok((d.clone(), self.pinned(flow, &d)))
    }

    /// Revision `revision` of a flow, as it runs (what an execution queued
    /// for it runs, even after a newer deploy).
    pub fn revision(&self, namespace: &Namespace, id: &str, revision: u64) -> Result<Flow, RegistryError> {
        let d = self
            .rows("namespace = ?1 AND id = ?2 AND revision = ?3", params![namespace.as_str(), id, revision as i64])?
            .pop()
            .filter(|d| !d.removed)
            .ok_or_else(|| RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() })?;
        let (flow, _) = flow::parse(&d.source, &d.file, &self.blobs).map_err(RegistryError::Invalid)?;
        Ok(self.pinned(flow, &d))
    }

    /// The current revision of every flow not removed, by namespace and id.
    pub fn list(&self) -> Result<Vec<Deployed>, RegistryError> {
        let all = self.rows(
            "revision = (SELECT max(revision) FROM flows f WHERE f.namespace = flows.namespace AND f.id = flows.id)",
            [],
        )?;
        Ok(all.into_iter().filter(|d| !d.removed).collect())
    }

    /// Removes a flow: a tombstone revision. Its executions stay.
    pub fn remove(&self, namespace: &Namespace, id: &str, by: &str) -> Result<Deployed, RegistryError> {
        let (cur, _) = self.current(namespace, id)?;
        let d = Deployed {
            revision: cur.revision + 1,
            source: String::new(),
            plugins: BTreeMap::new(),
            file: cur.file,
            deployed_by: by.to_owned(),
            removed: true,
            ..cur
        };
        self.insert(d)
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
