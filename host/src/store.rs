//! The embedded secret store: one SQLite file, values encrypted at rest.
//!
//! Plaintext enters through [`SecretStore::set`] and leaves only through
//! [`SecretStore::resolve`], whose one caller on the plugin path is
//! `access::get_secret`. Rows hold only ciphertext and wrapped data keys.
//! Writes run in `BEGIN IMMEDIATE` transactions on a WAL database with a busy
//! timeout, so two `host` processes can use one store at once.

use crate::audit::{self, Action, Actor, Outcome};
use crate::crypto::{self, DecryptError, KeyError, KeyId, KeySource, MasterKey, Sealed};
use crate::data_dir::DataDir;
use crate::names::{Namespace, SecretName};
use crate::policy::Grant;
use crate::secret::SecretValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Versions kept per secret; older ones are deleted when a new one is set.
pub const VERSIONS_KEPT: u32 = 5;
const SCHEMA_VERSION: i64 = 1;
const VERIFIER_AAD: &[u8] = b"keyhole master key verifier v1";
const VERIFIER_PLAINTEXT: &[u8] = b"keyhole";

/// Store failures; each names the file and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("secret store {path}: cannot {op}: {err}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The SQLite error.
        #[source]
        err: rusqlite::Error,
    },
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
    /// The database was written by a newer keyhole.
    #[error(
        "secret store {path}: schema version {found} is newer than this host supports ({SCHEMA_VERSION}); upgrade keyhole"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
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
}

/// What `host secret list` shows: metadata, never a value.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SecretInfo {
    /// Namespace (`""` for the root).
    pub namespace: String,
    /// Secret name.
    pub name: String,
    /// Current version.
    pub version: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Time of the last `set`, seconds since the Unix epoch.
    pub updated_at: i64,
}

/// An open secret store.
#[derive(Debug)]
pub struct SecretStore {
    conn: Connection,
    key: MasterKey,
    path: PathBuf,
}

fn now() -> i64 {
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
    /// file is created only for a new store.
    pub fn open(dir: &DataDir) -> Result<Self, StoreError> {
        let path = dir.store_path();
        let conn = connect(&path)?;
        let expected = read_verifier(&conn, &path)?;
        let (key, source) = match &expected {
            None => MasterKey::load(&dir.master_key_path(), true, None)?,
            Some((id, _)) => MasterKey::load(&dir.master_key_path(), false, Some(id))?,
        };
        let key_file = dir.master_key_path().display().to_string();
        Self::finish_open(conn, path, key, source, expected, key_file)
    }

    /// Opens (creating if needed) the store file at `path` with an explicit key.
    pub fn open_with_key(path: &Path, key: MasterKey) -> Result<Self, StoreError> {
        let conn = connect(path)?;
        let expected = read_verifier(&conn, path)?;
        Self::finish_open(conn, path.to_owned(), key, KeySource::Env, expected, "a key file".into())
    }

    fn finish_open(
        conn: Connection,
        path: PathBuf,
        key: MasterKey,
        source: KeySource,
        expected: Option<(KeyId, Sealed)>,
        key_file: String,
    ) -> Result<Self, StoreError> {
        let store = SecretStore { conn, key, path };
        match expected {
            Some((id, verifier)) => {
                if crypto::open(&store.key, VERIFIER_AAD, &verifier).is_err() {
                    return Err(StoreError::WrongKey {
                        path: store.path,
                        source_: source,
                        got: store.key.id(),
                        expected: id,
                        key_file,
                    });
                }
            }
            None => store.write_verifier()?,
        }
        Ok(store)
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |err| StoreError::Sqlite { path: self.path.clone(), op, err }
    }

    fn write_verifier(&self) -> Result<(), StoreError> {
        let v = crypto::seal(&self.key, VERIFIER_AAD, VERIFIER_PLAINTEXT);
        // INSERT OR IGNORE: if another process initialised the store first,
        // its verifier stands and ours is checked against it below.
        self.conn
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('key_id', ?1), ('verifier_wrapped', ?2), \
                 ('verifier_nonce', ?3), ('verifier_ciphertext', ?4)",
                params![self.key.id().0.as_bytes(), v.wrapped_key, v.nonce, v.ciphertext],
            )
            .map_err(self.err("initialise the store"))?;
        match read_verifier(&self.conn, &self.path)? {
            Some((_, v)) if crypto::open(&self.key, VERIFIER_AAD, &v).is_ok() => Ok(()),
            Some((id, _)) => Err(StoreError::WrongKey {
                path: self.path.clone(),
                source_: KeySource::Env,
                got: self.key.id(),
                expected: id,
                key_file: "the key file".into(),
            }),
            None => {
                Err(StoreError::Corrupt { path: self.path.clone(), what: "key verifier missing after write".into() })
            }
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `value` as a new version of `namespace`/`name` and returns the
    /// version number (1 for a new secret). Keeps the newest
    /// [`VERSIONS_KEPT`] versions.
    /// The change and its audit record (by `actor`) commit together.
    pub fn set(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        actor: &Actor,
    ) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e("start a write transaction"))?;
        let t = now();
        let current: Option<(i64, i64)> = tx
            .query_row(
                "SELECT id, current_version FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![namespace.as_str(), name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(e("look up the secret"))?;
        let (id, version) = match current {
            Some((id, v)) => {
                tx.execute(
                    "UPDATE secrets SET current_version = ?1, updated_at = ?2 WHERE id = ?3",
                    params![v + 1, t, id],
                )
                .map_err(e("update the secret"))?;
                (id, (v + 1) as u64)
            }
            None => {
                tx.execute(
                    "INSERT INTO secrets (namespace, name, current_version, created_at, updated_at) VALUES (?1, ?2, 1, ?3, ?3)",
                    params![namespace.as_str(), name.as_str(), t],
                )
                .map_err(e("insert the secret"))?;
                (tx.last_insert_rowid(), 1)
            }
        };
        let sealed = crypto::seal(&self.key, &aad(namespace, name, version), value.expose().as_bytes());
        tx.execute(
            "INSERT INTO secret_versions (secret_id, version, created_at, wrapped_key, nonce, ciphertext) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, version as i64, t, sealed.wrapped_key, sealed.nonce, sealed.ciphertext],
        )
        .map_err(e("store the new version"))?;
        tx.execute(
            "DELETE FROM secret_versions WHERE secret_id = ?1 AND version <= ?2",
            params![id, version as i64 - VERSIONS_KEPT as i64],
        )
        .map_err(e("prune old versions"))?;
        audit::append(
            &tx,
            &audit::NewRecord {
                actor: actor.clone(),
                action: Action::SecretSet,
                outcome: Outcome::Ok,
                namespace: namespace.clone(),
                secret: Some(name.clone()),
                version: Some(version),
                reason: None,
                value_hmac: None,
            },
        )
        .map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))?;
        Ok(version)
    }

    /// Finds the granted secret in `namespace` or its nearest ancestor and
    /// decrypts its current version. `Ok(None)` when no namespace of the
    /// chain holds it. Decrypting takes a [`Grant`]: only policy makes one.
    pub fn resolve(&self, namespace: &Namespace, grant: &Grant) -> Result<Option<Resolved>, StoreError> {
        let name = grant.name();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT s.namespace, v.version, v.wrapped_key, v.nonce, v.ciphertext \
                 FROM secrets s JOIN secret_versions v ON v.secret_id = s.id AND v.version = s.current_version \
                 WHERE s.name = ?1 AND s.namespace = ?2",
            )
            .map_err(self.err("prepare a lookup"))?;
        for ns in namespace.chain() {
            let row = stmt
                .query_row(params![name.as_str(), ns.as_str()], |r| {
                    Ok((
                        r.get::<_, i64>(1)? as u64,
                        Sealed { wrapped_key: r.get(2)?, nonce: r.get(3)?, ciphertext: r.get(4)? },
                    ))
                })
                .optional()
                .map_err(self.err("look up a secret"))?;
            if let Some((version, sealed)) = row {
                let plain = crypto::open(&self.key, &aad(&ns, name, version), &sealed)
                    .map_err(|DecryptError| self.tampered(&ns, name, version))?;
                let value = SecretValue::from_utf8(plain).map_err(|_| StoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("secret {name} version {version} in namespace {ns} is not valid UTF-8"),
                })?;
                return Ok(Some(Resolved { namespace: ns, version, value }));
            }
        }
        Ok(None)
    }

    fn tampered(&self, ns: &Namespace, name: &SecretName, version: u64) -> StoreError {
        StoreError::Tampered { path: self.path.clone(), namespace: ns.clone(), name: name.clone(), version }
    }

    /// Lists secrets, in `namespace` only when given, sorted by namespace and name.
    pub fn list(&self, namespace: Option<&Namespace>) -> Result<Vec<SecretInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT namespace, name, current_version, created_at, updated_at FROM secrets \
                 WHERE ?1 IS NULL OR namespace = ?1 ORDER BY namespace, name",
            )
            .map_err(self.err("prepare the listing"))?;
        let rows = stmt
            .query_map(params![namespace.map(Namespace::as_str)], |r| {
                Ok(SecretInfo {
                    namespace: r.get(0)?,
                    name: r.get(1)?,
                    version: r.get::<_, i64>(2)? as u64,
                    created_at: r.get(3)?,
                    updated_at: r.get(4)?,
                })
            })
            .map_err(self.err("list secrets"))?;
        rows.collect::<Result<_, _>>().map_err(self.err("list secrets"))
    }

    /// Deletes a secret and all its versions. Returns whether it existed.
    /// The deletion and its audit record (by `actor`) commit together.
    pub fn remove(&mut self, namespace: &Namespace, name: &SecretName, actor: &Actor) -> Result<bool, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e("start a write transaction"))?;
        tx.execute(
            "DELETE FROM secret_versions WHERE secret_id IN (SELECT id FROM secrets WHERE namespace = ?1 AND name = ?2)",
            params![namespace.as_str(), name.as_str()],
        )
        .map_err(e("delete versions"))?;
        let n = tx
            .execute(
                "DELETE FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![namespace.as_str(), name.as_str()],
            )
            .map_err(e("delete the secret"))?;
        if n > 0 {
            audit::append(
                &tx,
                &audit::NewRecord {
                    actor: actor.clone(),
                    action: Action::SecretRemove,
                    outcome: Outcome::Ok,
                    namespace: namespace.clone(),
                    secret: Some(name.clone()),
                    version: None,
                    reason: None,
                    value_hmac: None,
                },
            )
            .map_err(e("write the audit record"))?;
        }
        tx.commit().map_err(e("commit"))?;
        Ok(n > 0)
    }
}

fn sql_err(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |err| StoreError::Sqlite { path, op, err }
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

/// Environment variable overriding how long a write waits for another
/// process's write to finish, in milliseconds (default 10000).
pub const BUSY_TIMEOUT_ENV: &str = "KEYHOLE_BUSY_TIMEOUT_MS";

fn busy_timeout() -> Duration {
    let ms = std::env::var(BUSY_TIMEOUT_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    Duration::from_millis(ms)
}

/// Opens the SQLite file with keyhole's settings and schema.
pub(crate) fn connect(path: &Path) -> Result<Connection, StoreError> {
    let e = |op| move |err| StoreError::Sqlite { path: path.to_owned(), op, err };
    let conn = Connection::open(path).map_err(e("open the database"))?;
    conn.busy_timeout(busy_timeout()).map_err(e("set the busy timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(e("enable WAL mode"))?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(e("set synchronous mode"))?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(e("enable foreign keys"))?;
    migrate(&conn, path)?;
    Ok(conn)
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let e = |op| move |err| StoreError::Sqlite { path: path.to_owned(), op, err };
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(e("read the schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew { path: path.to_owned(), found: version });
    }
    if version == SCHEMA_VERSION {
        return Ok(());
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
             UNIQUE (namespace, name)
         );
         CREATE TABLE IF NOT EXISTS secret_versions (
             secret_id INTEGER NOT NULL REFERENCES secrets (id),
             version INTEGER NOT NULL,
             created_at INTEGER NOT NULL,
             wrapped_key BLOB NOT NULL,
             nonce BLOB NOT NULL,
             ciphertext BLOB NOT NULL,
             PRIMARY KEY (secret_id, version)
         );
         {audit}
         {executions}
         PRAGMA user_version = 1;
         COMMIT;",
        audit = crate::audit::SCHEMA,
        executions = crate::executions::SCHEMA,
    ))
    .map_err(e("create the schema"))
}

fn read_verifier(conn: &Connection, path: &Path) -> Result<Option<(KeyId, Sealed)>, StoreError> {
    let e = |op| move |err| StoreError::Sqlite { path: path.to_owned(), op, err };
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

    #[test]
    fn nearest_namespace_wins_and_root_is_the_last_resort() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SecretStore::open_with_key(&dir.path().join("s.db"), MasterKey::generate()).unwrap();
        s.set(&ns(""), &name("K"), &val("root"), &me()).unwrap();
        s.set(&ns("finance"), &name("K"), &val("finance"), &me()).unwrap();
        let r = s.resolve(&ns("finance.reporting"), &grant("K")).unwrap().unwrap();
        assert_eq!((r.namespace.as_str(), r.value.expose()), ("finance", "finance"));
        let r = s.resolve(&ns("ops"), &grant("K")).unwrap().unwrap();
        assert_eq!((r.namespace.as_str(), r.value.expose()), ("", "root"));
        assert!(s.resolve(&ns("ops"), &grant("OTHER")).unwrap().is_none());
    }

    #[test]
    fn set_makes_versions_and_keeps_five() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SecretStore::open_with_key(&dir.path().join("s.db"), MasterKey::generate()).unwrap();
        for i in 1..=7 {
            assert_eq!(s.set(&ns("a"), &name("K"), &val(&format!("v{i}")), &me()).unwrap(), i);
        }
        let r = s.resolve(&ns("a"), &grant("K")).unwrap().unwrap();
        assert_eq!((r.version, r.value.expose()), (7, "v7"));
        let kept: i64 = s.conn.query_row("SELECT count(*) FROM secret_versions", [], |r| r.get(0)).unwrap();
        assert_eq!(kept, VERSIONS_KEPT as i64);
        assert!(s.remove(&ns("a"), &name("K"), &me()).unwrap());
        assert!(!s.remove(&ns("a"), &name("K"), &me()).unwrap());
        assert!(s.list(None).unwrap().is_empty());
    }

    #[test]
    fn wrong_key_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let k = MasterKey::generate();
        SecretStore::open_with_key(&p, k.clone()).unwrap().set(&ns(""), &name("K"), &val("v"), &me()).unwrap();
        let e = SecretStore::open_with_key(&p, MasterKey::generate()).unwrap_err();
        assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
        assert!(e.to_string().contains(&k.id().0), "{e}");
    }
}
