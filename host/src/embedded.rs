//! The embedded engine: the state of one data directory, in its SQLite
//! file, behind [`Plane`]: the deployed flows and their plugins, the
//! execution records (and the connection executions are queued through),
//! tokens and roles, the audit chain, and the secrets (the local store
//! behind the backend router). The CLI on a data directory and `host serve`
//! both open it and hand it to the service layer, which reaches state only
//! through the trait; a second engine is a second implementation of it.
//!
//! Invariant: one connection per part, each behind its own mutex, taken
//! for one call at a time (no part's lock is held while another is
//! taken); the intake connection only queues.

use crate::audit::AuditLog;
use crate::backend::Router;
use crate::crypto::IntegrityKey;
use crate::data_dir::DataDir;
use crate::executions::Executions;
use crate::registry::{Registry, RegistryError};
use crate::service::Plane;
use crate::session::{SessionError, open_audit, open_secrets};
use crate::tokens::{TokenError, Tokens};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why the engine could not open; each names the part and the file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The secret store, its key, the backends, the audit log or the
    /// execution records (boxed: it is large, and rare).
    #[error(transparent)]
    Session(Box<SessionError>),
    /// The tokens and roles.
    #[error(transparent)]
    Tokens(#[from] TokenError),
    /// The deployed flows.
    #[error("cannot open the flows: {0}")]
    Registry(#[from] RegistryError),
}

impl From<SessionError> for OpenError {
    fn from(e: SessionError) -> Self {
        OpenError::Session(Box::new(e))
    }
}

/// One data directory's state (see the module doc).
#[derive(Debug)]
pub struct Embedded {
    secrets: Arc<Router>,
    audit: AuditLog,
    integrity: IntegrityKey,
    tokens: Mutex<Tokens>,
    registry: Mutex<Registry>,
    records: Mutex<Executions>,
    intake: Mutex<Executions>,
    queue: tokio::sync::watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Embedded {
    /// Opens the state of `dir` (the master key unlocks the store, whose
    /// integrity key authenticates every other part's rows).
    pub fn open(dir: &DataDir) -> Result<Self, OpenError> {
        let secrets = Arc::new(open_secrets(dir)?);
        let integrity = secrets.local().store().integrity().clone();
        let audit = open_audit(dir, &secrets)?;
        let path = dir.store_path();
        let records = Executions::open(&path).map_err(SessionError::from)?;
        let intake = Executions::open_for_intake(&path).map_err(SessionError::from)?;
        let tokens = Tokens::open(&path, integrity.clone())?;
        let registry = Registry::open(dir, integrity.clone())?;
        Ok(Embedded {
            secrets,
            audit,
            integrity,
            tokens: Mutex::new(tokens),
            registry: Mutex::new(registry),
            records: Mutex::new(records),
            intake: Mutex::new(intake),
            queue: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The secrets, shared (the runner holds them for as long as it runs).
    pub fn shared_secrets(&self) -> &Arc<Router> {
        &self.secrets
    }

    /// What changes at each [`Plane::wake`] (a worker awaits it).
    pub fn queue_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queue.subscribe()
    }
}

impl Plane for Embedded {
    fn registry(&self) -> impl std::ops::Deref<Target = Registry> + '_ {
        lock(&self.registry)
    }
    fn records(&self) -> impl std::ops::Deref<Target = Executions> + '_ {
        lock(&self.records)
    }
    fn intake(&self) -> impl std::ops::Deref<Target = Executions> + '_ {
        lock(&self.intake)
    }
    fn tokens(&self) -> impl std::ops::Deref<Target = Tokens> + '_ {
        lock(&self.tokens)
    }
    fn secrets(&self) -> &Router {
        &self.secrets
    }
    fn audit(&self) -> &AuditLog {
        &self.audit
    }
    fn integrity(&self) -> &IntegrityKey {
        &self.integrity
    }
    fn wake(&self) {
        self.queue.send_modify(|n| *n = n.wrapping_add(1));
    }
}
