//! `host serve`: one process holds the data directory and the master key;
//! principals reach it over HTTP with bearer tokens. Above
//! [`crate::service`] and [`crate::embedded`] (it opens the data
//! directory's state as one engine and hands it to the service layer) and
//! below nothing.
//!
//! - [`api`]: the route table (the one list the router, the authorization
//!   extractor, the OpenAPI document and the tests are built from), the
//!   [`api::Caller`] extractor that authenticates and asks [`crate::authz`],
//!   and thin handlers over the service layer and the library.
//! - [`worker`]: the threads that take queued executions and run them (an
//!   execution waiting only at gates gives its worker back).
//! - [`schedule`], [`webhook`]: the triggers; [`follow`]: the event stream
//!   of one execution; [`console`]: the web console.
//! - [`listen`]: plain TCP on loopback, or rustls, and the connection layer
//!   (timeouts, a cap).
//!
//! Invariant: no response carries a secret value or a token other than the
//! one `POST /api/v1/tokens` creates; every change and every refusal is
//! audited with the principal as actor before the response; an execution
//! is answered `202` only once it is durably queued; one server per data
//! directory (`server.lock`).

pub mod api;
pub mod console;
pub mod error;
pub mod extract;
pub mod follow;
pub mod handlers;
pub mod listen;
pub mod queue;
pub mod schedule;
pub mod sessions;
pub mod webhook;
pub mod worker;

/// What handlers and extractors hold: the server's shared state.
pub type AppState = Arc<App>;

use crate::audit::{Actor, AuditLog, NewRecord, now_rfc3339};
use crate::backend::Router as Secrets;
use crate::data_dir::DataDir;
use crate::embedded::{Embedded, OpenError};
use crate::executions::ExecutionRecord;
use crate::executions::Executions;
use crate::registry::Registry;
use crate::runtime::{Compiler, Runtime, RuntimeOptions};
use crate::service::Plane;
use crate::session::SessionError;
use crate::tokens::Tokens;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How `host serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// PEM certificate chain and key, for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Threads running executions.
    pub workers: usize,
    /// How long running executions may go on after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// Compiler for plugins not in the cache.
    pub compiler: Compiler,
    /// Failed authentications allowed per client address per minute.
    pub max_auth_failures: u32,
    /// How long a console session lasts without a request.
    pub session_idle: Duration,
    /// The longest lifetime of a token issued through the API (and the
    /// lifetime of one issued without `ttl`).
    pub max_token_ttl: Duration,
    /// Plugin bytes one namespace may hold.
    pub max_plugin_bytes: u64,
    /// A request's headers must have arrived this long after it began.
    pub header_timeout: Duration,
    /// A connection quiet this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once (`None`: as many as the descriptor limit leaves room for).
    pub max_connections: Option<usize>,
    /// Memory every running task together may have (`None`: half the machine's).
    pub max_memory: Option<usize>,
}

/// Half the machine's memory (from /proc/meminfo), at least 1 GiB: the
/// default budget of every running task together.
pub fn default_memory_budget() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<usize>().ok().map(|kib| kib.saturating_mul(1024))
    });
    (total.unwrap_or(2 << 30) / 2).max(crate::limits::MAX_TASK_MEMORY)
}

/// Descriptors kept free for the store, the audit log, plugins and the
/// workers when the connection cap comes from the descriptor limit.
const SPARE_DESCRIPTORS: u64 = 256;

impl ServeOptions {
    /// The connection bounds, the cap defaulting to what the descriptor
    /// limit `fds` leaves room for (at most 16384).
    fn conn_limits(&self, fds: u64) -> listen::ConnLimits {
        let room = fds.saturating_sub(SPARE_DESCRIPTORS).clamp(16, 16_384) as usize;
        listen::ConnLimits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections.unwrap_or(room),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Opening the host failed (boxed: it is large, and rare).
    #[error(transparent)]
    Open(Box<SessionError>),
    /// Bad options or a busy data directory; the text says which.
    #[error("{0}")]
    Refused(String),
    /// The network.
    #[error("{0}")]
    Io(String),
}

impl From<SessionError> for ServeError {
    fn from(e: SessionError) -> Self {
        ServeError::Open(Box::new(e))
    }
}

/// What every handler and worker shares.
#[derive(Debug)]
pub struct App {
    /// The data directory.
    pub dir: DataDir,
    /// The state: flows, executions, tokens, the audit chain, secrets.
    pub state: Embedded,
    /// The WebAssembly engine.
    pub runtime: Arc<Runtime>,
    /// One connection for reading the audit trail (opening one per request
    /// costs more than the query).
    audit_reads: Mutex<rusqlite::Connection>,
    /// Running executions (cancel handle, live log), by id; an execution
    /// leaves it only after its record and masked log are stored.
    pub running: Mutex<HashMap<String, worker::Running>>,
    /// Those waiting for an execution to end (`?wait=`), by id: only they
    /// are woken when it does.
    waiters: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
    /// Set once a shutdown began: workers take nothing new.
    pub stopping: AtomicBool,
    /// Set once the drain deadline passed: what is cut off is `interrupted`.
    pub interrupting: AtomicBool,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    max_auth_failures: u32,
    /// The longest lifetime of a token issued through the API.
    pub max_token_ttl: Duration,
    /// Plugin bytes one namespace may hold.
    pub max_plugin_bytes: u64,
    /// The memory every running task together may have.
    pub memory: crate::exec::MemoryBudget,
    /// The web console's sessions.
    pub sessions: sessions::Sessions,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The rate-limit window of failed authentications.
pub const AUTH_WINDOW: Duration = Duration::from_secs(60);

impl App {
    /// Opens everything `host serve` needs in `dir`.
    pub fn open(dir: &DataDir, opts: &ServeOptions, sessions: sessions::Sessions) -> Result<Arc<App>, ServeError> {
        let compiler = opts.compiler;
        let state = Embedded::open(dir).map_err(|e| match e {
            OpenError::Session(e) => ServeError::Open(e),
            e => ServeError::Refused(e.to_string()),
        })?;
        let runtime = Runtime::new(RuntimeOptions { cache_dir: Some(dir.cache_dir()), pooling: true, compiler })
            .map_err(|e| SessionError::Engine(format!("{e:#}")))?;
        let audit_reads = crate::audit::open(&dir.store_path(), false)
            .map_err(|e| ServeError::Refused(format!("cannot read the audit trail: {e}")))?;
        Ok(Arc::new(App {
            dir: dir.clone(),
            state,
            runtime,
            audit_reads: Mutex::new(audit_reads),
            running: Mutex::new(HashMap::new()),
            waiters: Default::default(),
            stopping: AtomicBool::new(false),
            interrupting: AtomicBool::new(false),
            failures: Mutex::new(HashMap::new()),
            max_auth_failures: opts.max_auth_failures,
            max_token_ttl: opts.max_token_ttl,
            max_plugin_bytes: opts.max_plugin_bytes,
            memory: crate::exec::MemoryBudget::new(opts.max_memory.unwrap_or_else(default_memory_budget)),
            sessions,
        }))
    }

    /// The tokens and roles.
    pub fn tokens(&self) -> impl std::ops::Deref<Target = Tokens> + '_ {
        self.state.tokens()
    }

    /// The deployed flows.
    pub fn registry(&self) -> impl std::ops::Deref<Target = Registry> + '_ {
        self.state.registry()
    }

    /// The secrets (the local store and the backends), shared.
    pub fn secrets(&self) -> &Arc<Secrets> {
        self.state.shared_secrets()
    }

    /// The audit trail.
    pub fn audit(&self) -> &AuditLog {
        self.state.audit()
    }

    /// The connection audit-trail reads share (not verification, which
    /// walks the whole chain on its own).
    pub fn audit_reads(&self) -> MutexGuard<'_, rusqlite::Connection> {
        lock(&self.audit_reads)
    }

    /// The execution records.
    pub fn records(&self) -> impl std::ops::Deref<Target = Executions> + '_ {
        self.state.records()
    }

    /// What tells a waiter that execution `id` ended ([`App::ended`]): it
    /// holds `true` from then on, so an end between taking it and looking
    /// is not missed (take it, then read the record). Give it back with
    /// [`App::stop_waiting`].
    pub fn waiter(&self, id: &str) -> tokio::sync::watch::Receiver<bool> {
        lock(&self.waiters).entry(id.to_owned()).or_insert_with(|| tokio::sync::watch::Sender::new(false)).subscribe()
    }

    /// Done waiting on `id`: forgets it when no one else waits.
    pub fn stop_waiting(&self, id: &str, waker: tokio::sync::watch::Receiver<bool>) {
        let mut waiters = lock(&self.waiters);
        drop(waker);
        if waiters.get(id).is_some_and(|w| w.receiver_count() == 0) {
            waiters.remove(id);
        }
    }

    /// Execution `id` ended (its record and log are stored): tells those
    /// waiting on it.
    pub fn ended(&self, id: &str) {
        if let Some(w) = lock(&self.waiters).remove(id) {
            w.send_replace(true);
        }
    }

    /// Wakes a worker: something was queued.
    pub fn wake(&self) {
        self.state.wake()
    }

    /// What changes at each [`App::wake`] (a worker awaits it).
    pub fn queue_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.queue_changes()
    }

    /// Whether `peer` has failed to authenticate too often lately.
    pub fn rate_limited(&self, peer: IpAddr) -> bool {
        let mut f = lock(&self.failures);
        match f.get(&peer) {
            Some((_, since)) if since.elapsed() > AUTH_WINDOW => {
                f.remove(&peer);
                false
            }
            Some((n, _)) => *n >= self.max_auth_failures,
            None => false,
        }
    }

    /// Counts a failed authentication from `peer`.
    pub fn auth_failed(&self, peer: IpAddr) {
        let mut f = lock(&self.failures);
        if f.len() > 10_000 {
            f.retain(|_, (_, since)| since.elapsed() <= AUTH_WINDOW);
        }
        let e = f.entry(peer).or_insert((0, Instant::now()));
        e.0 += 1;
    }

    /// Audits `rec` durably; the caller refuses to go on if this fails.
    pub fn record(&self, rec: NewRecord) -> Result<(), crate::audit::AuditError> {
        self.state.audit().record(rec).map(|_| ())
    }

    /// After a crash or kill: executions left `running` are recorded as
    /// interrupted (and audited), and re-queued where their flow says
    /// `on_interrupt: requeue`. Queued ones stay queued and run.
    pub fn recover(&self) -> Result<usize, ServeError> {
        let refused = |e: crate::executions::RecordError| ServeError::Refused(e.to_string());
        let cut = self.records().cut_off_running(&now_rfc3339()).map_err(refused)?;
        for r in &cut {
            // Audited (and re-queued) first, marked after: a crash between
            // the two repeats both next time, the re-queue at most once.
            self.interrupted(r, "was running when the server stopped")
                .map_err(|e| ServeError::Refused(format!("cannot audit the recovery: {e}")))?;
            self.records().save(r).map_err(refused)?;
        }
        Ok(cut.len())
    }

    /// Audits that `r` was cut off (`why`), re-queuing it where its flow
    /// says so ([`service::executions::interrupted`]).
    pub fn interrupted(&self, r: &ExecutionRecord, why: &str) -> Result<(), crate::audit::AuditError> {
        crate::service::executions::interrupted(&self.state, r, why)
    }
}

/// Refuses a plain-HTTP listener anywhere but loopback: tokens would cross
/// the network in the clear.
pub fn check_listen(addr: &SocketAddr, tls: bool) -> Result<(), ServeError> {
    if !tls && !addr.ip().is_loopback() {
        return Err(ServeError::Refused(format!(
            "refusing to listen on {addr} without TLS: tokens would cross the network in the clear; \
             give --tls-cert and --tls-key, or listen on 127.0.0.1"
        )));
    }
    Ok(())
}

/// Takes `DATA_DIR/server.lock` for the life of the server.
fn lock_data_dir(dir: &DataDir) -> Result<std::fs::File, ServeError> {
    let path = dir.root().join("server.lock");
    let file = crate::data_dir::private_file_options()
        .read(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| ServeError::Refused(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServeError::Refused(format!(
            "another `host serve` holds {}: one server per data directory (stop it, or use another --data-dir)",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(ServeError::Refused(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// Runs the server until SIGTERM or SIGINT, then drains.
pub fn serve(dir: &DataDir, opts: ServeOptions) -> Result<(), ServeError> {
    check_listen(&opts.listen, opts.tls.is_some())?;
    let tls = match &opts.tls {
        Some((cert, key)) => Some(listen::tls_config(cert, key).map_err(ServeError::Refused)?),
        None => None,
    };
    dir.ensure().map_err(|e| ServeError::Refused(format!("cannot create {}: {e}", dir.root().display())))?;
    let _lock = lock_data_dir(dir)?;
    let fds = listen::raise_descriptor_limit();
    let sessions = sessions::Sessions::new(opts.session_idle, opts.tls.is_some());
    let app = App::open(dir, &opts, sessions)?;
    crate::session::sweep_leases(app.secrets(), app.audit(), &Actor::Server);
    let interrupted = app.recover()?;
    if interrupted > 0 {
        eprintln!("recovered: {interrupted} execution(s) cut off by the last stop are recorded as interrupted");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keyhole-http")
        .build()
        .map_err(|e| ServeError::Io(format!("cannot start the async runtime: {e}")))?;
    // A store the workers cannot open fails the start like any store failure (not as a usage error).
    let records = (0..opts.workers.max(1))
        .map(|_| Executions::open_for_worker(&dir.store_path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(SessionError::from)?;
    let workers: Vec<_> =
        records.into_iter().enumerate().map(|(i, records)| worker::spawn(app.clone(), i, records)).collect();
    let scheduler = schedule::spawn(app.clone(), jiff::Timestamp::now());
    let result = rt.block_on(async {
        let tcp = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|e| ServeError::Io(format!("cannot listen on {}: {e}", opts.listen)))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = listen::ServerListener::new(tcp, tls).map_err(|e| ServeError::Io(e.to_string()))?;
        let local = axum::serve::Listener::local_addr(&listener).map_err(|e| ServeError::Io(e.to_string()))?;
        // Tests and scripts wait for this line.
        eprintln!("keyhole server listening on {scheme}://{local} ({} worker(s))", workers.len());
        let router = api::router(app.clone(), scheme == "https");
        listen::serve_connections(listener, router, opts.conn_limits(fds), shutdown_signal(app.clone())).await;
        Ok(())
    });
    drain(&app, opts.shutdown_timeout);
    for w in workers {
        let _ = w.join();
    }
    let _ = scheduler.join();
    eprintln!("keyhole server stopped");
    result
}

/// Waits for SIGTERM or SIGINT, then stops the workers taking work, so that
/// the open follow streams close and the HTTP side can finish.
async fn shutdown_signal(app: Arc<App>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    app.stopping.store(true, Ordering::SeqCst);
    app.wake();
    eprintln!("stopping: no new requests; running executions may finish");
}

/// Stops the workers taking work, lets running executions finish until
/// `timeout`, then cuts the rest off (recorded as interrupted).
fn drain(app: &Arc<App>, timeout: Duration) {
    app.stopping.store(true, Ordering::SeqCst);
    app.wake();
    let deadline = Instant::now() + timeout;
    while !lock(&app.running).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<_> = lock(&app.running).values().map(|r| r.cancel.clone()).collect();
    if !left.is_empty() {
        eprintln!("shutdown timeout: interrupting {} running execution(s)", left.len());
        app.interrupting.store(true, Ordering::SeqCst);
        for c in left {
            c.cancel();
        }
    }
}
