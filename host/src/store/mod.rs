//! The embedded secret store: one SQLite file, values encrypted at rest.
//! The local backend (`backend::local`) serves namespaces from it.
//!
//! Plaintext enters through [`SecretStore::set`] (and `import`) and leaves
//! only through `resolve_at` (one namespace, one version: the namespace
//! chain is walked by `backend::Router`) and `export`. Rows hold only
//! ciphertext and wrapped data keys.
//! Writes run in `BEGIN IMMEDIATE` transactions on a WAL database with a busy
//! timeout, so two `host` processes can use one store at once.

use crate::audit::{self, Action, Actor, NewRecord};
use crate::crypto::{self, DecryptError, IntegrityKey, KeyError, KeyId, KeySource, MacDomain, MasterKey, Sealed};
use crate::data_dir::DataDir;
use crate::db::{self, DbError, busy_timeout, connect};
use crate::keyring::{KeyFiles, KeyLock};
use crate::names::{Namespace, SecretName};
use crate::network::AllowEntry;
use crate::policy::Grant;
use crate::secret::SecretValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

mod bundle;
mod read;
mod rows;
mod stage;
mod write;

pub use read::Reader;
use rows::load_integrity;

/// Versions kept per secret; older ones are deleted when a new one is set.
pub const VERSIONS_KEPT: u32 = 5;
const VERIFIER_AAD: &[u8] = b"keyhole master key verifier v1";
const VERIFIER_PLAINTEXT: &[u8] = b"keyhole";

/// Store failures; each names the file and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The master key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The master key is not the one this store was created with.
    #[error(
        "secret store {path}: the master key from {source_} (key {got}) is not the key this store was created with (key {expected}); \
         nothing was read or changed: supply the right key in ${env} or {key_file}",
        env = crypto::MASTER_KEY_ENV
    )]
    WrongKey {
        /// The database file.
        path: PathBuf,
        /// Where the wrong key came from.
        source_: KeySource,
        /// Its id.
        got: KeyId,
        /// The id of the key the store expects.
        expected: KeyId,
        /// The key file path, for the hint.
        key_file: String,
    },
    /// A stored row failed to decrypt: it was altered, or copied from another
    /// secret or version.
    #[error(
        "secret store {path}: secret {name} version {version} in namespace {namespace} failed to decrypt: \
         its row was altered or moved from another secret; restore it from a backup or set the secret again"
    )]
    Tampered {
        /// The database file.
        path: PathBuf,
        /// The secret's namespace.
        namespace: Namespace,
        /// The secret's name.
        name: SecretName,
        /// The version that failed.
        version: u64,
    },
    /// A row's security-relevant columns fail their MAC: the database was
    /// edited outside keyhole.
    #[error(
        "secret store {path}: secret {name} in namespace {namespace} failed its integrity check ({what} was edited \
         outside keyhole); nothing was released: restore the store from a backup, or `host secret rm` it and set it again"
    )]
    RowTampered {
        /// The database file.
        path: PathBuf,
        /// The secret's namespace.
        namespace: Namespace,
        /// The secret's name.
        name: SecretName,
        /// What failed the check.
        what: &'static str,
    },
    /// Another process rotated the master key after this one opened the
    /// store; writing now would seal under the retired key.
    #[error(
        "secret store {path}: the master key was rotated by another process while this one ran; run the command again"
    )]
    KeyChanged {
        /// The database file.
        path: PathBuf,
    },
    /// No such secret.
    #[error("no secret {name} in namespace {namespace}: see `host secret list`")]
    NotFound {
        /// Namespace.
        namespace: Namespace,
        /// Name.
        name: SecretName,
    },
    /// A staged version is pending (or none is, for commit and discard).
    #[error("secret {name} in namespace {namespace}: {what} (`host secret describe` shows it)")]
    Staged {
        /// Namespace.
        namespace: Namespace,
        /// Name.
        name: SecretName,
        /// What is pending or missing.
        what: String,
    },
    /// A stored value is not valid text, or a stored name is invalid.
    #[error("secret store {path}: {what}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// A secret found by a lookup, with the namespace it was found in.
#[derive(Debug)]
pub struct Resolved {
    /// The namespace of the chain that held the secret.
    pub namespace: Namespace,
    /// The version returned.
    pub version: u64,
    /// The plaintext.
    pub value: SecretValue,
    /// Where the value may be sent (empty: unbound). A bound value never
    /// reaches a plugin; the host injects it into requests.
    pub destinations: Vec<AllowEntry>,
}

/// What `host secret list` and `describe` show: metadata, never a value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecretInfo {
    /// Namespace (`""` for the root).
    pub namespace: String,
    /// Secret name.
    pub name: String,
    /// Current version.
    pub version: u64,
    /// The current version's id, for a backend that names versions by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// Versions still stored.
    pub versions_stored: u64,
    /// How many versions are kept.
    pub keep_versions: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Time of the last `set` or `rotate`.
    pub updated_at: i64,
    /// Expiry of the current version, if any.
    pub expires_at: Option<i64>,
    /// When it was revoked, if it is.
    pub revoked_at: Option<i64>,
    /// When it was destroyed (crypto-erased), if it was.
    pub destroyed_at: Option<i64>,
    /// The destinations its value may be sent to; empty when unbound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
    /// Its stored state fails its integrity check: it was edited outside
    /// keyhole, and reads are refused.
    pub tampered: bool,
    /// A dynamic secret: the path each execution's credential is minted
    /// from (nothing is stored; `version` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<String>,
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionInfo {
    /// Version number.
    pub version: u64,
    /// The version's id, for a backend that names versions by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Expiry, if any.
    pub expires_at: Option<i64>,
    /// Whether this is the current version.
    pub current: bool,
}

/// Options of `set` / `rotate`.
#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    /// Expiry of the new version (seconds since the Unix epoch).
    pub expires_at: Option<i64>,
    /// Versions to keep from now on.
    pub keep: Option<u32>,
    /// The secret must already exist (recorded as `secret.rotate`).
    pub rotate: bool,
    /// Bind it to these destinations (`None`: leave the binding as it is;
    /// a new secret is then unbound).
    pub destinations: Option<Vec<AllowEntry>>,
}

/// The answer to a lookup.
#[derive(Debug)]
pub enum Lookup {
    /// Found and decrypted.
    Found(Resolved),
    /// In no namespace of the chain.
    NotFound,
    /// Revoked or destroyed.
    Revoked {
        /// Where.
        namespace: Namespace,
        /// Which version was asked for.
        version: u64,
    },
    /// The version's expiry has passed.
    Expired {
        /// Where.
        namespace: Namespace,
        /// Which version.
        version: u64,
    },
}

/// One secret in a backup bundle.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedSecret {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Versions kept.
    pub keep_versions: u64,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Every stored version, oldest first.
    pub versions: Vec<ExportedVersion>,
}

/// One version in a backup bundle.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedVersion {
    /// Version number.
    pub version: u64,
    /// Creation time.
    pub created_at: i64,
    /// Expiry.
    pub expires_at: Option<i64>,
    /// The plaintext, zeroized on drop.
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for ExportedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedVersion").field("version", &self.version).field("value", &"***").finish()
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    /// `namespace/name` restored.
    pub imported: Vec<String>,
    /// `namespace/name` left alone because they exist (use --overwrite).
    pub skipped: Vec<String>,
}

/// Formats seconds since the epoch as RFC 3339.
pub fn fmt_time(t: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)).to_string()
}

/// An open secret store.
#[derive(Debug)]
pub struct SecretStore {
    conn: Connection,
    key: MasterKey,
    source: KeySource,
    integrity: IntegrityKey,
    path: PathBuf,
    /// The integrity key was created by this open (first use).
    first_use: bool,
}

/// Seconds since the Unix epoch: the unit of every time the store keeps.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn aad(ns: &Namespace, name: &SecretName, version: u64) -> Vec<u8> {
    let mut v = b"keyhole secret v1\0".to_vec();
    v.extend_from_slice(ns.as_str().as_bytes());
    v.push(0);
    v.extend_from_slice(name.as_str().as_bytes());
    v.push(0);
    v.extend_from_slice(&version.to_be_bytes());
    v
}

impl SecretStore {
    /// Opens (creating if needed) the store in `dir`, with the master key from
    /// `$KEYHOLE_MASTER_KEY` or the data directory's `master.key`. A new key
    /// file is created only for a new store. Takes the key lock for the
    /// duration of the open, so it never sees a rotation half-way.
    pub fn open(dir: &DataDir) -> Result<Self, StoreError> {
        dir.ensure().map_err(|err| KeyError::Io { action: "create", path: dir.root().to_owned(), err })?;
        let lock = KeyLock::acquire(dir, busy_timeout())?;
        Self::open_locked(dir, &lock)
    }

    /// [`SecretStore::open`] with the key lock already held (by a rotation).
    pub fn open_locked(dir: &DataDir, lock: &KeyLock) -> Result<Self, StoreError> {
        let path = dir.store_path();
        let conn = connect(&path)?;
        let expected = read_verifier(&conn, &path)?;
        let files = KeyFiles::new(dir);
        let (key, source) = match &expected {
            None => files.load_or_create()?,
            Some((id, verifier)) => files.choose(lock, id, |k| crypto::open(k, VERIFIER_AAD, verifier).is_ok())?,
        };
        let key_file = files.current().display().to_string();
        Self::finish_open(conn, path, key, source, expected, key_file)
    }

    /// `host key rotate`: a new random master key; every data key and the
    /// integrity key re-wrapped in one transaction. With the key lock held
    /// throughout: the new key is written to `master.key.next` first; after
    /// the commit, a key file is retired to `master.key.<id>.old` and the
    /// new one installed (a key from the environment instead waits in
    /// `master.key.next` for the operator). `failpoint` is called with the
    /// name of each step, a seam for crash tests. Returns the new key's id,
    /// how many data keys were re-wrapped, and whether the key came from the
    /// environment.
    pub fn rotate_key_files(
        &mut self,
        dir: &DataDir,
        lock: &KeyLock,
        actor: &Actor,
        failpoint: &dyn Fn(&str),
    ) -> Result<(KeyId, u64, bool), StoreError> {
        let files = KeyFiles::new(dir);
        let old_id = self.key.id();
        files.clear_next(lock, |k| k.id() == old_id)?;
        let new = MasterKey::generate();
        files.write_next(lock, &new)?;
        let n = self.rotate_master_key(&new, actor, || failpoint("key-rotate-before-commit"))?;
        failpoint("key-rotate-after-commit");
        let from_env = self.source == KeySource::Env;
        if !from_env {
            files.install_next(lock, &old_id, || failpoint("key-rotate-between-renames"))?;
        }
        Ok((new.id(), n, from_env))
    }

    /// Opens (creating if needed) the store file at `path` with an explicit key.
    pub fn open_with_key(path: &Path, key: MasterKey) -> Result<Self, StoreError> {
        let conn = connect(path)?;
        let expected = read_verifier(&conn, path)?;
        Self::finish_open(conn, path.to_owned(), key, KeySource::Env, expected, "a key file".into())
    }

    /// Checks the key against the verifier (or writes the verifier of a new
    /// store), then loads the integrity key, creating it on first use.
    /// Returns whether the integrity key was created now.
    fn finish_open(
        mut conn: Connection,
        path: PathBuf,
        key: MasterKey,
        source: KeySource,
        expected: Option<(KeyId, Sealed)>,
        key_file: String,
    ) -> Result<Self, StoreError> {
        let expected = match expected {
            Some(e) => e,
            None => write_verifier(&conn, &path, &key)?,
        };
        let (id, verifier) = expected;
        if crypto::open(&key, VERIFIER_AAD, &verifier).is_err() {
            return Err(StoreError::WrongKey { path, source_: source, got: key.id(), expected: id, key_file });
        }
        let (integrity, first_use) = load_integrity(&mut conn, &path, &key)?;
        Ok(SecretStore { conn, key, source, integrity, path, first_use })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |err| StoreError::Db(DbError::Sqlite { path: self.path.clone(), op, err })
    }

    /// The key that authenticates rows, the audit chain and the backend
    /// configuration.
    pub fn integrity(&self) -> &IntegrityKey {
        &self.integrity
    }

    /// Appends one audit record in a transaction of its own (an action that
    /// changes nothing in this file: a remote change, a failed check).
    pub fn record(&mut self, rec: &NewRecord) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(&path, "start a write transaction"))?;
        let seq = audit::append(&tx, &self.integrity, rec).map_err(sql_err(&path, "write the audit record"))?;
        tx.commit().map_err(sql_err(&path, "commit"))?;
        Ok(seq)
    }

    /// Records a failed integrity check (`err` is a tamper error) by `actor`.
    pub fn record_tamper(&mut self, err: &StoreError, actor: &Actor) {
        let (ns, name) = match err {
            StoreError::RowTampered { namespace, name, .. } | StoreError::Tampered { namespace, name, .. } => {
                (namespace.clone(), name.clone())
            }
            _ => return,
        };
        let rec = NewRecord::ok(actor, Action::IntegrityCheck, &ns, Some(&name))
            .outcome(audit::Outcome::Tampered)
            .reason(err.to_string());
        if let Err(e) = self.record(&rec) {
            tracing::error!("cannot record the failed integrity check: {e}");
        }
    }

    /// Whether this open created the integrity key: the first use of the
    /// store by a keyhole that authenticates rows (and the backend
    /// configuration, which the caller then adopts).
    pub fn first_use(&self) -> bool {
        self.first_use
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), what }
    }
}

/// Starts a write transaction that takes the database's write lock at once,
/// so that concurrent writers queue on the busy timeout instead of failing
/// half-way, and checks that the store is still under `key`: a process that
/// opened the store before another one rotated the master key must not
/// seal anything under the retired key.
fn begin<'c>(conn: &'c mut Connection, path: &Path, key: &KeyId) -> Result<rusqlite::Transaction<'c>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err(path, "start a write transaction"))?;
    let current: Option<Vec<u8>> = tx
        .query_row("SELECT value FROM meta WHERE key = 'key_id'", [], |r| r.get(0))
        .optional()
        .map_err(sql_err(path, "read the key id"))?;
    if current.as_deref() != Some(key.0.as_bytes()) {
        return Err(StoreError::KeyChanged { path: path.to_owned() });
    }
    Ok(tx)
}

/// Maps a SQLite error to a [`StoreError`] naming the file and the operation.
pub(crate) fn sql_err(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + use<> {
    let to_db = db::sql_err(path, op);
    move |err| StoreError::Db(to_db(err))
}

/// Whether `name` exists in some namespace of `namespace`'s chain of the
/// store at `path`. Reads metadata only: needs no master key.
pub fn exists_in_chain(path: &Path, namespace: &Namespace, name: &SecretName) -> Result<bool, StoreError> {
    if !path.exists() {
        return Ok(false);
    }
    let conn = connect(path)?;
    let mut stmt = conn
        .prepare("SELECT 1 FROM secrets WHERE name = ?1 AND namespace = ?2")
        .map_err(sql_err(path, "prepare a lookup"))?;
    for ns in namespace.chain() {
        if stmt.exists(params![name.as_str(), ns.as_str()]).map_err(sql_err(path, "look up a secret"))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes the verifier of a new store under `key` and returns the verifier
/// that stands (another process may have initialised the store first).
fn write_verifier(conn: &Connection, path: &Path, key: &MasterKey) -> Result<(KeyId, Sealed), StoreError> {
    let v = crypto::seal(key, VERIFIER_AAD, VERIFIER_PLAINTEXT);
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('key_id', ?1), ('verifier_wrapped', ?2), \
         ('verifier_nonce', ?3), ('verifier_ciphertext', ?4)",
        params![key.id().0.as_bytes(), v.wrapped_key, v.nonce, v.ciphertext],
    )
    .map_err(sql_err(path, "initialise the store"))?;
    read_verifier(conn, path)?
        .ok_or_else(|| StoreError::Corrupt { path: path.to_owned(), what: "key verifier missing after write".into() })
}

fn read_verifier(conn: &Connection, path: &Path) -> Result<Option<(KeyId, Sealed)>, StoreError> {
    let e = |op| sql_err(path, op);
    let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .optional()
            .map_err(e("read the key verifier"))
    };
    let Some(id) = get("key_id")? else {
        return Ok(None);
    };
    let corrupt =
        || StoreError::Corrupt { path: path.to_owned(), what: "the master key verifier is incomplete".into() };
    let sealed = Sealed {
        wrapped_key: get("verifier_wrapped")?.ok_or_else(corrupt)?,
        nonce: get("verifier_nonce")?.ok_or_else(corrupt)?,
        ciphertext: get("verifier_ciphertext")?.ok_or_else(corrupt)?,
    };
    Ok(Some((KeyId(String::from_utf8_lossy(&id).into_owned()), sealed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Grants;

    fn ns(s: &str) -> Namespace {
        Namespace::new(s).unwrap()
    }
    fn name(s: &str) -> SecretName {
        SecretName::new(s).unwrap()
    }
    fn val(s: &str) -> SecretValue {
        SecretValue::new(s.to_owned())
    }
    fn me() -> Actor {
        Actor::Cli { user: "tester".into() }
    }
    fn grant(s: &str) -> Grant {
        Grants::new([name(s)]).check(s).unwrap()
    }
    fn store() -> (tempfile::TempDir, SecretStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SecretStore::open_with_key(&dir.path().join("s.db"), MasterKey::generate()).unwrap();
        (dir, s)
    }
    fn rec(action: Action, n: &str, k: &str) -> NewRecord {
        NewRecord::ok(&me(), action, &ns(n), Some(&name(k)))
    }
    fn set(s: &mut SecretStore, n: &str, k: &str, v: &str) -> u64 {
        s.set(&ns(n), &name(k), &val(v), &SetOptions::default(), &rec(Action::SecretSet, n, k)).unwrap()
    }
    fn at(s: &SecretStore, n: &str, k: &str, version: Option<u64>) -> Lookup {
        s.resolve_at(&ns(n), &grant(k), version).unwrap().unwrap_or(Lookup::NotFound)
    }
    fn found(l: Lookup) -> (String, u64, String) {
        match l {
            Lookup::Found(r) => (r.namespace.as_str().to_owned(), r.version, r.value.expose().to_owned()),
            other => panic!("expected a value, got {other:?}"),
        }
    }

    #[test]
    fn a_destinations_column_that_does_not_parse_is_refused_even_with_a_valid_mac() {
        // Defence in depth: whoever holds the key and writes a bad binding
        // must not turn a bound secret into an unbound one.
        let (_d, mut s) = store();
        set(&mut s, "", "K", "v");
        s.conn.execute("UPDATE secrets SET destinations = 'not a list'", []).unwrap();
        let id: i64 = s.conn.query_row("SELECT id FROM secrets", [], |r| r.get(0)).unwrap();
        rows::remac_secret(&s.conn, &s.integrity, id).unwrap();
        assert!(matches!(s.resolve_at(&ns(""), &grant("K"), None), Err(StoreError::RowTampered { .. })));
        assert!(s.list(None, None).unwrap()[0].tampered);
    }

    #[test]
    fn a_reader_never_sees_a_rotation_half_done() {
        // A rotation that keeps one version deletes the version a reader
        // just saw as current. Reading the secret row and then the version
        // row in two snapshots would find it gone and report the store as
        // corrupt; one read transaction sees before or after, never between.
        let (_d, mut s) = store();
        set(&mut s, "", "K", "v1");
        let reader = s.reader().unwrap();
        let done = &std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let reads = scope.spawn(move || {
                let mut n = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let (_, version, value) = found(reader.resolve_at(&ns(""), &grant("K"), None).unwrap().unwrap());
                    assert_eq!(value, format!("v{version}"));
                    n += 1;
                }
                n
            });
            let keep_one = SetOptions { keep: Some(1), rotate: true, ..Default::default() };
            for i in 2..=300 {
                s.set(&ns(""), &name("K"), &val(&format!("v{i}")), &keep_one, &rec(Action::SecretRotate, "", "K"))
                    .unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(reads.join().unwrap() > 0);
        });
    }

    #[test]
    fn set_makes_versions_and_keeps_a_configurable_number() {
        let (_d, mut s) = store();
        for i in 1..=7 {
            assert_eq!(set(&mut s, "a", "K", &format!("v{i}")), i);
        }
        assert_eq!(found(at(&s, "a", "K", None)).1, 7);
        let versions: Vec<u64> = s.versions(&ns("a"), &name("K")).unwrap().iter().map(|v| v.version).collect();
        assert_eq!(versions, [7, 6, 5, 4, 3]);
        s.set(
            &ns("a"),
            &name("K"),
            &val("v8"),
            &SetOptions { keep: Some(2), ..Default::default() },
            &rec(Action::SecretSet, "a", "K"),
        )
        .unwrap();
        assert_eq!(s.versions(&ns("a"), &name("K")).unwrap().len(), 2);
        assert!(s.remove(&ns("a"), &name("K"), &rec(Action::SecretRemove, "a", "K")).unwrap());
        assert!(!s.remove(&ns("a"), &name("K"), &rec(Action::SecretRemove, "a", "K")).unwrap());
        assert!(s.list(None, None).unwrap().is_empty());
    }

    #[test]
    fn pinned_reads_keep_their_version_across_a_rotation() {
        let (_d, mut s) = store();
        set(&mut s, "", "K", "old");
        s.set(
            &ns(""),
            &name("K"),
            &val("new"),
            &SetOptions { rotate: true, ..Default::default() },
            &rec(Action::SecretSet, "", "K"),
        )
        .unwrap();
        assert_eq!(found(at(&s, "", "K", Some(1))).2, "old");
        assert_eq!(found(at(&s, "", "K", None)).2, "new");
        let e = s
            .set(
                &ns(""),
                &name("NEW"),
                &val("x"),
                &SetOptions { rotate: true, ..Default::default() },
                &rec(Action::SecretRotate, "", "NEW"),
            )
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }));
    }

    #[test]
    fn revoke_expire_and_destroy() {
        let (_d, mut s) = store();
        set(&mut s, "", "R", "r");
        s.revoke(&ns(""), &name("R"), &rec(Action::SecretRevoke, "", "R")).unwrap();
        assert!(matches!(at(&s, "", "R", None), Lookup::Revoked { version: 1, .. }));
        set(&mut s, "", "R", "r2");
        assert_eq!(found(at(&s, "", "R", None)).2, "r2", "a new version lifts the revocation");

        s.set(
            &ns(""),
            &name("E"),
            &val("e"),
            &SetOptions { expires_at: Some(now() - 1), ..Default::default() },
            &rec(Action::SecretSet, "", "E"),
        )
        .unwrap();
        assert!(matches!(at(&s, "", "E", None), Lookup::Expired { .. }));
        let soon: Vec<String> = s.list(None, Some(now() + 60)).unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(soon, ["E"]);

        set(&mut s, "", "D", "destroy-me-please");
        s.destroy(&ns(""), &name("D"), &rec(Action::SecretDestroy, "", "D")).unwrap();
        assert!(matches!(at(&s, "", "D", None), Lookup::Revoked { .. }));
        assert_eq!(s.describe(&ns(""), &name("D")).unwrap().unwrap().versions_stored, 0);
        assert!(s.revoke(&ns(""), &name("NOPE"), &rec(Action::SecretRevoke, "", "NOPE")).is_err());
    }

    #[test]
    fn master_key_rotation_rewraps_every_data_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let mut s = SecretStore::open_with_key(&p, MasterKey::generate()).unwrap();
        for i in 0..10 {
            set(&mut s, "a", &format!("K{i}"), &format!("value-{i}"));
        }
        let new = MasterKey::generate();
        assert_eq!(s.rotate_master_key(&new, &me(), || {}).unwrap(), 10);
        drop(s);
        let s = SecretStore::open_with_key(&p, new).unwrap();
        assert_eq!(found(at(&s, "a", "K3", None)).2, "value-3");
        assert!(matches!(SecretStore::open_with_key(&p, MasterKey::generate()), Err(StoreError::WrongKey { .. })));
    }

    #[test]
    fn export_and_import_restore_every_version() {
        let (_d, mut a) = store();
        set(&mut a, "x", "K", "one");
        set(&mut a, "x", "K", "two");
        let bundle = a.export(None, &me()).unwrap();
        let (_d2, mut b) = store();
        let r = b.import(&bundle, false, &me(), || {}).unwrap();
        assert_eq!(r.imported, ["x/K"]);
        assert_eq!(found(at(&b, "x", "K", None)), ("x".into(), 2, "two".into()));
        assert_eq!(b.versions(&ns("x"), &name("K")).unwrap().len(), 2);
        let again = b.import(&bundle, false, &me(), || {}).unwrap();
        assert_eq!(again.skipped, ["x/K"]);
    }

    #[test]
    fn wrong_key_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let k = MasterKey::generate();
        let mut s = SecretStore::open_with_key(&p, k.clone()).unwrap();
        set(&mut s, "", "K", "v");
        let e = SecretStore::open_with_key(&p, MasterKey::generate()).unwrap_err();
        assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
        assert!(e.to_string().contains(&k.id().0), "{e}");
    }
}
