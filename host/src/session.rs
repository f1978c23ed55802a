//! The composition root: everything a run needs, opened from a data
//! directory in one place, so the CLI, the tests and any embedder build the
//! same host: the secret store (master key, integrity key), the wasmtime
//! engine with its compiled-plugin cache, the audit log, the backend
//! configuration and the execution records.
//!
//! Invariant: knows the order things are opened in, nothing else; every
//! decision stays in the module it opens.

use crate::audit::{Actor, AuditError, AuditKey, AuditLog};
use crate::backend::config::{self, Backends, ConfigError};
use crate::backend::local::LocalBackend;
use crate::backend::{BackendError, Router};
use crate::data_dir::DataDir;
use crate::exec::ExecutionEnv;
use crate::executions::{Executions, RecordError};
use crate::mask::MaskSet;
use crate::output::Sink;
use crate::runtime::{Compiler, Runtime, RuntimeOptions};
use crate::store::{SecretStore, StoreError};
use std::sync::Arc;

/// An opened host, ready to run flows.
#[derive(Debug)]
pub struct Session {
    /// The engine, linker and compiled-plugin cache.
    pub runtime: Arc<Runtime>,
    /// What every task of an execution shares: store, audit log, masks, ...
    pub env: ExecutionEnv,
    /// Where execution records are saved.
    pub records: Executions,
}

/// Why a session could not be opened; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The secret store (or its master key).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log or the audit key.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The execution records.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// The backend configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A configured backend.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The WebAssembly engine.
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
}

impl Session {
    /// Opens the host in `dir`: plugin output goes to `sink`, masked with
    /// `masks`; `pooling` uses the pooling instance allocator (worth it for
    /// flows of several tasks); `compiler` compiles what the cache lacks.
    pub fn open(
        dir: &DataDir,
        sink: Sink,
        masks: Arc<MaskSet>,
        pooling: bool,
        compiler: Compiler,
    ) -> Result<Self, SessionError> {
        let secrets = Arc::new(open_secrets(dir)?);
        let runtime = Runtime::new(RuntimeOptions { cache_dir: Some(dir.cache_dir()), pooling, compiler })
            .map_err(|e| SessionError::Engine(format!("{e:#}")))?;
        let audit = open_audit(dir, &secrets)?;
        let records = Executions::open(&dir.store_path())?;
        // Credentials a crashed run left behind are revoked before this one starts.
        sweep_leases(&secrets, &audit, &Actor::current_user());
        let leases =
            Arc::new(crate::lease::ExecutionLeases::new(secrets.clone(), audit.clone(), Actor::current_user()));
        let env = ExecutionEnv {
            secrets,
            sink,
            masks,
            audit,
            pins: Default::default(),
            cancel: Default::default(),
            leases,
            memory: Default::default(),
            waiting: Default::default(),
        };
        Ok(Session { runtime, env, records })
    }
}

/// The secret plane of `dir`: the store (master key, integrity key) and the
/// backends `backends.json` configures, checked against the integrity key.
/// What `host secret` and `host backend` work on.
pub fn open_secrets(dir: &DataDir) -> Result<Router, SessionError> {
    let store = SecretStore::open(dir)?;
    let path = config::config_path(dir.root());
    if store.first_use() {
        // The first use that authenticates rows also signs the configuration.
        Backends::adopt_unsigned(&path, store.integrity())?;
    }
    let backends = Backends::load(&path, store.integrity())?;
    Ok(Router::new(LocalBackend::new(store), backends, Some(path))?)
}

/// The audit trail of `dir`, keyed as `secrets`' store is (and with the
/// audit key, if there is one).
pub fn open_audit(dir: &DataDir, secrets: &Router) -> Result<AuditLog, SessionError> {
    let key = AuditKey::load(&dir.audit_key_path())?;
    Ok(AuditLog::open(&dir.store_path(), secrets.local().store().integrity().clone(), key)?)
}

/// Revokes the leases processes that died left outstanding; says what it
/// did on stderr, and what it could not (the next start tries again).
pub fn sweep_leases(secrets: &Router, audit: &AuditLog, actor: &Actor) {
    let store = secrets.local().store().path().to_owned();
    match crate::lease::sweep(secrets, audit, &store, actor, false) {
        Ok((0, 0, _)) => {}
        Ok((revoked, failed, _)) => {
            eprintln!("revoked {revoked} credential(s) a stopped run left behind ({failed} could not be revoked yet)")
        }
        Err(e) => tracing::warn!("cannot sweep leases: {e}"),
    }
}
