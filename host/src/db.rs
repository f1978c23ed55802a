//! Persistence at the bottom: the one SQLite file of a data directory, its
//! connections (WAL, busy timeout, secure delete, created 0600), the schema
//! of every table in it and its migrations (`PRAGMA user_version`), and one
//! error type. The secret store, the audit trail and the execution records
//! sit on top; this module knows none of them.
//!
//! Invariant: imports nothing from the rest of the crate but `data_dir`;
//! schema changes happen only in [`connect`], through a new version.

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema version this host writes: 1 was keyhole 0.1; 2 added the
/// integrity MAC columns, the audit `detail` and the authenticated head; 3
/// secret destinations; 4 the server's tokens, roles, deployed flows and the
/// execution queue; 5 trigger data and schedule state; 6 leases; 7 flow
/// concurrency and approval gates; 8 who vouched for a revision's secrets,
/// second-person reviews and protected secrets.
pub const SCHEMA_VERSION: i64 = 8;

/// A failure of the database file; each names the file and what was being
/// done.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused an operation.
    #[error("keyhole store {path}: cannot {op}: {err}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The SQLite error.
        #[source]
        err: rusqlite::Error,
    },
    /// The database was written by a newer keyhole.
    #[error(
        "keyhole store {path}: schema version {found} is newer than this host supports ({SCHEMA_VERSION}); upgrade keyhole"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// A commit could not be made durable (the log's fsync failed).
    #[error("keyhole store {path}: cannot sync the write-ahead log to disk: {err}")]
    Sync {
        /// The database file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        err: std::io::Error,
    },
}

/// Maps a SQLite error to [`DbError::Sqlite`] naming the file and the
/// operation; the one constructor for every table in the file.
pub fn sql_err(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError + use<> {
    let path = path.to_owned();
    move |err| DbError::Sqlite { path, op, err }
}

const AUDIT_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        actor_kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        flow TEXT,
        task TEXT,
        execution TEXT,
        plugin_sha256 TEXT,
        namespace TEXT NOT NULL,
        secret TEXT,
        version INTEGER,
        reason TEXT,
        value_hmac TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX IF NOT EXISTS audit_secret ON audit (secret, time);
    CREATE INDEX IF NOT EXISTS audit_execution ON audit (execution);
    CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        value BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS audit_checkpoint (
        seq INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        time TEXT NOT NULL
    );
";

const EXECUTIONS_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS executions (
        id TEXT PRIMARY KEY,
        flow TEXT NOT NULL,
        namespace TEXT NOT NULL,
        source TEXT NOT NULL,
        status TEXT NOT NULL,
        started TEXT NOT NULL,
        ended TEXT,
        tasks TEXT NOT NULL,
        inputs TEXT,
        revision INTEGER,
        trigger TEXT,
        created_by TEXT,
        idempotency_key TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        log TEXT,
        trigger_data TEXT,
        concurrency_limit INTEGER
    );
    CREATE TABLE IF NOT EXISTS approvals (
        execution TEXT NOT NULL,
        task TEXT NOT NULL,
        permission TEXT NOT NULL,
        distinct_from_trigger INTEGER NOT NULL,
        requested TEXT NOT NULL,
        decision TEXT,
        decided_by TEXT,
        comment TEXT,
        decided TEXT,
        PRIMARY KEY (execution, task)
    );
    CREATE INDEX IF NOT EXISTS executions_flow ON executions (flow, started);
    CREATE INDEX IF NOT EXISTS executions_queue ON executions (status, started);
    CREATE UNIQUE INDEX IF NOT EXISTS executions_idempotency ON executions (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
";

/// What `host serve` keeps: tokens (their SHA-256, never the token), roles,
/// and every deployed revision of every flow (a removal is a revision too,
/// so MAC'd rows are only ever added).
const SERVER_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        bindings TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER,
        last_used INTEGER,
        created_by TEXT NOT NULL,
        mac BLOB NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
    CREATE TABLE IF NOT EXISTS roles (
        name TEXT PRIMARY KEY,
        allow TEXT NOT NULL,
        deny TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        mac BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS flows (
        namespace TEXT NOT NULL,
        id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        file TEXT NOT NULL,
        source TEXT NOT NULL,
        plugins TEXT NOT NULL,
        deployed_at INTEGER NOT NULL,
        deployed_by TEXT NOT NULL,
        removed INTEGER NOT NULL DEFAULT 0,
        mac BLOB NOT NULL,
        PRIMARY KEY (namespace, id, revision)
    );
";

/// When each schedule trigger last fired (Unix seconds), so that a restart
/// knows which firings it missed.
const SCHEDULE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS schedule_state (
        namespace TEXT NOT NULL,
        flow TEXT NOT NULL,
        trigger TEXT NOT NULL,
        last_fired INTEGER NOT NULL,
        PRIMARY KEY (namespace, flow, trigger)
    );
";

/// Credentials minted for executions (dynamic secrets): what revokes each
/// (the child token's accessor), never the credential. A row without
/// `revoked` is outstanding: `lease sweep` and every start revoke it.
const LEASE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS leases (
        accessor TEXT PRIMARY KEY,
        lease_id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        execution TEXT NOT NULL,
        minted TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        owner TEXT NOT NULL,
        revoked TEXT
    );
    CREATE INDEX IF NOT EXISTS leases_outstanding ON leases (revoked, expires_at);
";

/// Who vouched for the secrets each deployed revision names (`flows.vouches`,
/// JSON under the row's MAC; NULL for a revision deployed before keyhole
/// checked `secret:use`), a second person's decision on a revision that
/// touches a protected secret, and what is protected (a name, or `*`: the
/// whole namespace and those below it). Rows are MAC'd. Also which token
/// issued a token (`tokens.parent`, under its MAC; NULL: the root
/// operator) and the person who started an execution (`executions.person`),
/// for the rules that want a second person; and which namespace uploaded
/// each stored plugin (`plugin_uploads`), for its quota; the process that
/// runs an execution started at the command line (`executions.owner`, for
/// `concurrency:` across processes); and the queue's
/// per-namespace quotas (`namespace_limits`, for a namespace and those
/// below it) and turns (`namespace_turns`: when each was last served).
const REVIEW_SCHEMA: &str = "
    ALTER TABLE flows ADD COLUMN vouches TEXT;
    ALTER TABLE tokens ADD COLUMN parent TEXT;
    ALTER TABLE executions ADD COLUMN person TEXT;
    ALTER TABLE executions ADD COLUMN owner TEXT;
    CREATE TABLE IF NOT EXISTS flow_reviews (
        namespace TEXT NOT NULL,
        id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        decision TEXT NOT NULL,
        decided_by TEXT NOT NULL,
        person TEXT NOT NULL,
        decided_at INTEGER NOT NULL,
        comment TEXT,
        vouches TEXT,
        mac BLOB NOT NULL,
        PRIMARY KEY (namespace, id, revision)
    );
    CREATE TABLE IF NOT EXISTS plugin_uploads (
        sha256 TEXT NOT NULL,
        namespace TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        uploaded_at INTEGER NOT NULL,
        PRIMARY KEY (sha256, namespace)
    );
    CREATE TABLE IF NOT EXISTS namespace_turns (
        namespace TEXT PRIMARY KEY,
        served INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS namespace_limits (
        namespace TEXT PRIMARY KEY,
        max_queued INTEGER,
        max_running INTEGER
    );
    CREATE TABLE IF NOT EXISTS protections (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        mac BLOB NOT NULL,
        PRIMARY KEY (namespace, name)
    );
";

/// Environment variable overriding how long a write waits for another
/// process's write to finish, in milliseconds (default 10000).
pub const BUSY_TIMEOUT_ENV: &str = "KEYHOLE_BUSY_TIMEOUT_MS";

/// How long to wait for another process's write or key rotation.
pub fn busy_timeout() -> Duration {
    // Read once per process: the busy handler asks at every nap.
    static TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TIMEOUT.get_or_init(|| {
        let ms = std::env::var(BUSY_TIMEOUT_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
        Duration::from_millis(ms)
    })
}

/// SQLite's busy handler for keyhole's connections: waits for another
/// writer for up to [`busy_timeout`], in short naps first. SQLite's own
/// (`busy_timeout`) naps at least a millisecond at a time, while a write
/// here holds the lock for tens of microseconds: under load, writers slept
/// through free locks (seven naps per execution of `host serve`).
fn wait_for_writer(attempt: i32) -> bool {
    const FIRST_NAP_US: u64 = 20;
    const LONGEST_NAP_US: u64 = 2_000;
    let attempt = u32::try_from(attempt).unwrap_or(0);
    let nap = |n: u32| (FIRST_NAP_US << n.min(16)).min(LONGEST_NAP_US);
    let waited_us: u64 =
        (0..attempt.min(64)).map(nap).sum::<u64>() + u64::from(attempt.saturating_sub(64)) * LONGEST_NAP_US;
    if waited_us >= u64::try_from(busy_timeout().as_micros()).unwrap_or(u64::MAX) {
        return false;
    }
    std::thread::sleep(Duration::from_micros(nap(attempt)));
    true
}

/// Opens the SQLite file with keyhole's settings and schema.
pub fn connect(path: &Path) -> Result<Connection, DbError> {
    let e = |op| move |err| DbError::Sqlite { path: path.to_owned(), op, err };
    if path != Path::new(":memory:") && !path.exists() {
        // SQLite gives the -wal and -shm files the database file's mode: 0600.
        let _ = crate::data_dir::private_file_options().open(path);
    }
    let conn = Connection::open(path).map_err(e("open the database"))?;
    conn.busy_handler(Some(wait_for_writer)).map_err(e("set the busy handler"))?;
    conn.pragma_update(None, "secure_delete", "ON").map_err(e("enable secure delete"))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(e("enable WAL mode"))?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(e("set synchronous mode"))?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(e("enable foreign keys"))?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Group fsync of a store's write-ahead log, for the connections of this
/// process that commit without syncing (`synchronous = NORMAL`) and must be
/// durable before they act: a caller commits, then [`WalSync::sync`]s. One
/// fsync of the log makes every commit before it durable (the log is
/// appended in order), so the callers that arrive during a sync share the
/// next one, and none holds SQLite's write lock while the disk works.
///
/// Invariant: `sync` returns `Ok` only once an fsync of the log that began
/// after the caller's commit has ended (or the log is gone: a checkpoint
/// that empties it syncs the database file first). After one failed fsync
/// every later sync fails too: the kernel may have dropped the pages it
/// could not write, and a later fsync that succeeds says nothing of them.
#[derive(Debug)]
pub struct WalSync {
    store: PathBuf,
    wal: PathBuf,
    state: std::sync::Mutex<SyncState>,
    done: std::sync::Condvar,
    /// The log, open, with its device and inode: kept while the path
    /// still names that file (opening it at each sync cost more than the
    /// look at the path does).
    file: std::sync::Mutex<Option<(std::fs::File, (u64, u64))>>,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Commits announced so far (each caller's number is its place).
    committed: u64,
    /// Every commit numbered up to this one is durable.
    synced: u64,
    /// An fsync is under way (its leader covers the commits numbered
    /// before it began).
    syncing: bool,
    /// Fsyncs begun and ended so far (one at a time, so fsync `n` begins
    /// after fsync `n - 1` ended).
    begun: u64,
    ended: u64,
    /// Why an fsync failed, once one has: nothing is durable after it.
    failed: Option<String>,
}

impl WalSync {
    /// The one group sync of this process for the store file at `path`.
    pub fn of(path: &Path) -> std::sync::Arc<WalSync> {
        static ALL: std::sync::Mutex<Vec<std::sync::Arc<WalSync>>> = std::sync::Mutex::new(Vec::new());
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.iter().find(|s| s.wal == wal) {
            return s.clone();
        }
        let s = std::sync::Arc::new(WalSync {
            store: path.to_owned(),
            wal,
            state: Default::default(),
            done: Default::default(),
            file: Default::default(),
        });
        all.push(s.clone());
        s
    }

    /// Returns once the caller's last commit is on disk: leads an fsync of
    /// the log when none is under way, else waits for the one that covers it.
    pub fn sync(&self) -> std::io::Result<()> {
        let lock = || self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = lock();
        s.committed += 1;
        let mine = s.committed;
        loop {
            if let Some(why) = &s.failed {
                return Err(std::io::Error::other(format!(
                    "an earlier sync of the log failed ({why}); restart keyhole"
                )));
            }
            if s.synced >= mine {
                return Ok(());
            }
            if !s.syncing {
                s.syncing = true;
                s.begun += 1;
                let covers = s.committed;
                drop(s);
                let result = self.fsync();
                s = lock();
                s.syncing = false;
                s.ended += 1;
                match &result {
                    Ok(()) => s.synced = s.synced.max(covers),
                    Err(e) => s.failed = Some(e.to_string()),
                }
                self.done.notify_all();
                result?;
                continue;
            }
            s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// `value`, committed by the caller just now: durable once
    /// [`Unsynced::durable`] returns it.
    pub fn after_commit<T>(self: &std::sync::Arc<Self>, value: T) -> Unsynced<T> {
        Unsynced { value, sync: Some(self.clone()) }
    }

    /// Syncs the file the log's path names now. One that was removed (and
    /// perhaps made again) since it was opened is not synced in its place:
    /// a log is removed only once wholly checkpointed, the database file
    /// synced, so what it held is on disk.
    fn fsync(&self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let named = match std::fs::metadata(&self.wal) {
            Ok(m) => (m.dev(), m.ino()),
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut open = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if open.as_ref().is_none_or(|(_, id)| *id != named) {
            let f = match std::fs::File::open(&self.wal) {
                Ok(f) => f,
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            let m = f.metadata()?;
            *open = Some((f, (m.dev(), m.ino())));
        }
        open.as_ref().map_or(Ok(()), |(f, _)| f.sync_data())
    }
}

/// What a commit gave, had only once the commit is on disk: whoever acts
/// on it (answers, releases, sends) calls [`Unsynced::durable`] first, and
/// can do so after letting go of the connection, so that commits made
/// meanwhile share the sync.
#[must_use = "a commit is not durable until `durable` returns"]
#[derive(Debug)]
pub struct Unsynced<T> {
    value: T,
    sync: Option<std::sync::Arc<WalSync>>,
}

impl<T> Unsynced<T> {
    /// `value` from a commit that synced itself (`synchronous = FULL`).
    pub fn synced(value: T) -> Self {
        Unsynced { value, sync: None }
    }

    /// The value, once its commit is on disk.
    pub fn durable(self) -> Result<T, DbError> {
        if let Some(s) = &self.sync {
            s.sync().map_err(|err| DbError::Sync { path: s.store.clone(), err })?;
        }
        Ok(self.value)
    }
}

/// Moves the schema from version `from` to `from + 1` with `sql`, in one
/// IMMEDIATE transaction; a no-op when another process did it first.
fn step(conn: &Connection, path: &Path, from: i64, sql: &str) -> Result<(), DbError> {
    let e = |op| move |err| DbError::Sqlite { path: path.to_owned(), op, err };
    conn.execute_batch(&format!("BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {};\nCOMMIT;", from + 1))
        .or_else(|err| {
            let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap_or(0);
            let _ = conn.execute_batch("ROLLBACK");
            if now > from { Ok(()) } else { Err(err) }
        })
        .map_err(e("upgrade the schema"))
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), DbError> {
    let e = |op| move |err| DbError::Sqlite { path: path.to_owned(), op, err };
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(e("read the schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(DbError::TooNew { path: path.to_owned(), found: version });
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version == 1 {
        // keyhole 0.1: add the MAC columns and the audit detail. The MACs
        // themselves are computed by the first open with the master key.
        step(
            conn,
            path,
            1,
            "ALTER TABLE secrets ADD COLUMN mac BLOB;
             ALTER TABLE secret_versions ADD COLUMN mac BLOB;
             ALTER TABLE audit ADD COLUMN detail TEXT;
             CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), value BLOB NOT NULL);",
        )?;
    }
    if version == 1 || version == 2 {
        // keyhole 0.3: the destinations a secret is bound to (NULL: none).
        step(conn, path, 2, "ALTER TABLE secrets ADD COLUMN destinations TEXT;")?;
    }
    if (1..=3).contains(&version) {
        // keyhole 0.4: `host serve`'s tables and the execution queue.
        step(
            conn,
            path,
            3,
            &format!(
                "ALTER TABLE executions ADD COLUMN inputs TEXT;
                 ALTER TABLE executions ADD COLUMN revision INTEGER;
                 ALTER TABLE executions ADD COLUMN trigger TEXT;
                 ALTER TABLE executions ADD COLUMN created_by TEXT;
                 ALTER TABLE executions ADD COLUMN idempotency_key TEXT;
                 ALTER TABLE executions ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE executions ADD COLUMN log TEXT;
                 CREATE INDEX IF NOT EXISTS executions_queue ON executions (status, started);
                 CREATE UNIQUE INDEX IF NOT EXISTS executions_idempotency ON executions (idempotency_key)
                     WHERE idempotency_key IS NOT NULL;
                 {SERVER_SCHEMA}"
            ),
        )?;
    }
    if (1..=4).contains(&version) {
        // keyhole 0.5: what started an execution, and when each schedule last fired.
        step(conn, path, 4, &format!("ALTER TABLE executions ADD COLUMN trigger_data TEXT;\n{SCHEDULE_SCHEMA}"))?;
    }
    if (1..=5).contains(&version) {
        // keyhole 0.6: credentials minted for executions.
        step(conn, path, 5, LEASE_SCHEMA)?;
    }
    if (1..=6).contains(&version) {
        // keyhole 0.7: a flow's limit on executions running at once, and approval gates.
        step(
            conn,
            path,
            6,
            "ALTER TABLE executions ADD COLUMN concurrency_limit INTEGER;
             CREATE TABLE IF NOT EXISTS approvals (
                 execution TEXT NOT NULL, task TEXT NOT NULL, permission TEXT NOT NULL,
                 distinct_from_trigger INTEGER NOT NULL, requested TEXT NOT NULL, decision TEXT,
                 decided_by TEXT, comment TEXT, decided TEXT, PRIMARY KEY (execution, task));",
        )?;
    }
    if (1..=7).contains(&version) {
        // keyhole 0.8: secret:use vouches, reviews, protected secrets.
        return step(conn, path, 7, REVIEW_SCHEMA);
    }
    // IMMEDIATE so that two processes creating the store at once serialise.
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS secrets (
             id INTEGER PRIMARY KEY,
             namespace TEXT NOT NULL,
             name TEXT NOT NULL,
             current_version INTEGER NOT NULL,
             created_at INTEGER NOT NULL,
             updated_at INTEGER NOT NULL,
             keep_versions INTEGER NOT NULL DEFAULT 5,
             revoked_at INTEGER,
             destroyed_at INTEGER,
             mac BLOB,
             destinations TEXT,
             UNIQUE (namespace, name)
         );
         CREATE TABLE IF NOT EXISTS secret_versions (
             secret_id INTEGER NOT NULL REFERENCES secrets (id),
             version INTEGER NOT NULL,
             created_at INTEGER NOT NULL,
             expires_at INTEGER,
             wrapped_key BLOB NOT NULL,
             nonce BLOB NOT NULL,
             ciphertext BLOB NOT NULL,
             mac BLOB,
             PRIMARY KEY (secret_id, version)
         );
         {audit}
         {executions}
         {server}
         {schedule}
         {leases}
         {review}
         PRAGMA user_version = 8;
         COMMIT;",
        audit = AUDIT_SCHEMA,
        executions = EXECUTIONS_SCHEMA,
        server = SERVER_SCHEMA,
        schedule = SCHEDULE_SCHEMA,
        leases = LEASE_SCHEMA,
        review = REVIEW_SCHEMA,
    ))
    .map_err(e("create the schema"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sync returns only once an fsync that began after it was asked
    /// has ended: never on the strength of one already under way, which
    /// may have begun before the caller's commit. Commits made by many
    /// threads at once share fsyncs.
    #[test]
    fn a_sync_waits_for_an_fsync_that_began_after_it_was_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyhole.db");
        let conn = connect(&path).unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        drop(conn);
        let sync = WalSync::of(&path);
        assert!(std::sync::Arc::ptr_eq(&sync, &WalSync::of(&path)), "one group sync per store in a process");
        let counts = |s: &WalSync| {
            let st = s.state.lock().unwrap();
            (st.begun, st.ended)
        };
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (sync, path) = (sync.clone(), path.clone());
                std::thread::spawn(move || {
                    let conn = connect(&path).unwrap();
                    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
                    for i in 0..40 {
                        conn.execute("INSERT INTO meta (key, value) VALUES (?1, x'00')", [format!("t{t}-{i}")])
                            .unwrap();
                        let (begun, _) = counts(&sync);
                        sync.sync().unwrap();
                        let (_, ended) = counts(&sync);
                        assert!(ended > begun, "returned with fsync {ended} ended, asked after fsync {begun} began");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (begun, ended) = counts(&sync);
        assert_eq!(begun, ended);
    }

    /// One failed fsync fails every later sync, even once the log could be
    /// synced again: what the kernel could not write may be gone.
    #[test]
    fn after_a_failed_fsync_nothing_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        // The store's directory is a plain file: the log cannot be opened.
        let blocker = dir.path().join("store");
        std::fs::write(&blocker, b"").unwrap();
        let sync = WalSync::of(&blocker.join("keyhole.db"));
        let e = sync.sync().expect_err("the log cannot be opened");
        assert_ne!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        // Now it could be: still refused.
        std::fs::remove_file(&blocker).unwrap();
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("keyhole.db-wal"), b"log").unwrap();
        let e = sync.sync().expect_err("poisoned").to_string();
        assert!(e.contains("an earlier sync of the log failed") && e.contains("restart keyhole"), "{e}");
        let u = sync.after_commit(7).durable().expect_err("nothing is durable").to_string();
        assert!(u.contains("cannot sync the write-ahead log"), "{u}");
    }
}
