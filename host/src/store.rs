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
use zeroize::Zeroizing;

/// Versions kept per secret; older ones are deleted when a new one is set.
pub const VERSIONS_KEPT: u32 = 5;
const SCHEMA_VERSION: i64 = 1;
const VERIFIER_AAD: &[u8] = b"keyhole master key verifier v1";
const VERIFIER_PLAINTEXT: &[u8] = b"keyhole";

/// Store failures; each names the file and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
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
    /// No such secret.
    #[error("no secret {name} in namespace {namespace}: see `host secret list`")]
    NotFound {
        /// Namespace.
        namespace: Namespace,
        /// Name.
        name: SecretName,
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

/// What `host secret list` and `describe` show: metadata, never a value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretInfo {
    /// Namespace (`""` for the root).
    pub namespace: String,
    /// Secret name.
    pub name: String,
    /// Current version.
    pub version: u64,
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
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    /// Version number.
    pub version: u64,
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
}

/// Which stored version an execution reads: the one it read first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The namespace it was found in.
    pub namespace: Namespace,
    /// The version.
    pub version: u64,
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

fn record(
    actor: &Actor,
    action: Action,
    namespace: &Namespace,
    name: &SecretName,
    version: Option<u64>,
    reason: Option<String>,
) -> audit::NewRecord {
    audit::NewRecord {
        actor: actor.clone(),
        action,
        outcome: Outcome::Ok,
        namespace: namespace.clone(),
        secret: Some(name.clone()),
        version,
        reason,
        value_hmac: None,
    }
}

/// An open secret store.
#[derive(Debug)]
pub struct SecretStore {
    conn: Connection,
    key: MasterKey,
    path: PathBuf,
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
    /// file is created only for a new store.
    pub fn open(dir: &DataDir) -> Result<Self, StoreError> {
        let path = dir.store_path();
        let conn = connect(&path)?;
        let expected = read_verifier(&conn, &path)?;
        let key_path = dir.master_key_path();
        let next_path = next_key_path(dir);
        let (mut key, source) = match &expected {
            None => MasterKey::load(&key_path, true, None)?,
            Some((id, _)) => match MasterKey::load(&key_path, false, Some(id)) {
                // The key file may be missing only because a rotation was
                // interrupted right between its two renames.
                Err(KeyError::Missing { .. }) if next_path.exists() => {
                    (crypto::read_key_file(&next_path)?, KeySource::File(key_path.clone()))
                }
                other => other?,
            },
        };
        if let Some((_, verifier)) = &expected {
            let matches = |k: &MasterKey| crypto::open(k, VERIFIER_AAD, verifier).is_ok();
            let next = if next_path.exists() { crypto::read_key_file(&next_path).ok() } else { None };
            match (&source, matches(&key), next) {
                // A rotation committed but did not install its new key file: finish it.
                (KeySource::File(_), false, Some(n)) if matches(&n) => {
                    install_key_file(&next_path, &key_path).map_err(|err| KeyError::Io {
                        action: "install the rotated",
                        path: key_path.clone(),
                        err,
                    })?;
                    tracing::warn!(
                        "completed an interrupted master-key rotation: {} now holds key {}",
                        key_path.display(),
                        n.id()
                    );
                    key = n;
                }
                // A rotation stopped before it committed: its new key was never used.
                (KeySource::File(_), true, Some(_)) => {
                    let _ = std::fs::remove_file(&next_path);
                }
                (KeySource::Env, false, Some(n)) if matches(&n) => {
                    return Err(StoreError::Corrupt {
                        path,
                        what: format!(
                            "the master key was rotated to key {}; set ${} to the key in {} (then delete that file)",
                            n.id(),
                            crypto::MASTER_KEY_ENV,
                            next_path.display()
                        ),
                    });
                }
                _ => {}
            }
        }
        let key_file = key_path.display().to_string();
        Self::finish_open(conn, path, key, source, expected, key_file)
    }

    /// `host key rotate`: a new random master key; every data key re-wrapped
    /// in one transaction. The new key is first written to
    /// `master.key.next`; after the commit it replaces `master.key` (or, for
    /// a key from the environment, waits there for the operator). Returns the
    /// new key's id and how many data keys were re-wrapped.
    pub fn rotate_key_files(
        &mut self,
        dir: &DataDir,
        actor: &Actor,
        before_commit: impl FnOnce(),
        after_commit: impl FnOnce(),
    ) -> Result<(KeyId, u64, bool), StoreError> {
        let next_path = next_key_path(dir);
        let from_env = std::env::var_os(crypto::MASTER_KEY_ENV).is_some();
        let new = MasterKey::generate();
        let _ = std::fs::remove_file(&next_path);
        crypto::write_new_key_file(&next_path, &new)?;
        sync_dir(dir.root());
        let n = self.rotate_master_key(&new, actor, before_commit)?;
        after_commit();
        if !from_env {
            install_key_file(&next_path, &dir.master_key_path()).map_err(|err| KeyError::Io {
                action: "install the rotated",
                path: dir.master_key_path(),
                err,
            })?;
        }
        Ok((new.id(), n, from_env))
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
    /// version number (1 for a new secret). Keeps the newest `keep` versions
    /// (default [`VERSIONS_KEPT`]). A new version lifts a revocation: it is a
    /// new credential. The change and its audit record (by `actor`) commit
    /// together.
    pub fn set(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        opts: &SetOptions,
        actor: &Actor,
    ) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let tx = begin(&mut self.conn, &path)?;
        let t = now();
        let current: Option<(i64, i64, i64)> = tx
            .query_row(
                "SELECT id, current_version, keep_versions FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![namespace.as_str(), name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(e("look up the secret"))?;
        if opts.rotate && current.is_none() {
            return Err(StoreError::NotFound { namespace: namespace.clone(), name: name.clone() });
        }
        let (id, version, keep) = match current {
            Some((id, v, keep)) => {
                let keep = opts.keep.map_or(keep, i64::from);
                tx.execute(
                    "UPDATE secrets SET current_version = ?1, updated_at = ?2, keep_versions = ?3, revoked_at = NULL, \
                     destroyed_at = NULL WHERE id = ?4",
                    params![v + 1, t, keep, id],
                )
                .map_err(e("update the secret"))?;
                (id, (v + 1) as u64, keep)
            }
            None => {
                let keep = i64::from(opts.keep.unwrap_or(VERSIONS_KEPT));
                tx.execute(
                    "INSERT INTO secrets (namespace, name, current_version, created_at, updated_at, keep_versions) \
                     VALUES (?1, ?2, 1, ?3, ?3, ?4)",
                    params![namespace.as_str(), name.as_str(), t, keep],
                )
                .map_err(e("insert the secret"))?;
                (tx.last_insert_rowid(), 1, keep)
            }
        };
        let sealed = crypto::seal(&self.key, &aad(namespace, name, version), value.expose().as_bytes());
        tx.execute(
            "INSERT INTO secret_versions (secret_id, version, created_at, expires_at, wrapped_key, nonce, ciphertext) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, version as i64, t, opts.expires_at, sealed.wrapped_key, sealed.nonce, sealed.ciphertext],
        )
        .map_err(e("store the new version"))?;
        tx.execute(
            "DELETE FROM secret_versions WHERE secret_id = ?1 AND version <= ?2",
            params![id, version as i64 - keep],
        )
        .map_err(e("prune old versions"))?;
        let action = if opts.rotate { Action::SecretRotate } else { Action::SecretSet };
        let reason = opts.expires_at.map(|x| format!("expires at {}", fmt_time(x)));
        audit::append(&tx, &record(actor, action, namespace, name, Some(version), reason))
            .map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))?;
        Ok(version)
    }

    /// Finds the granted secret in `namespace` or its nearest ancestor and,
    /// unless it is revoked or expired, decrypts its current version (or the
    /// `pin`ned namespace and version, for execution-consistent reads).
    /// Decrypting takes a [`Grant`]: only policy makes one.
    pub fn resolve(&self, namespace: &Namespace, grant: &Grant, pin: Option<&Pin>) -> Result<Lookup, StoreError> {
        if let Some(p) = pin {
            return Ok(self.resolve_at(&p.namespace, grant, Some(p.version))?.unwrap_or(Lookup::NotFound));
        }
        for ns in namespace.chain() {
            if let Some(found) = self.resolve_at(&ns, grant, None)? {
                return Ok(found);
            }
        }
        Ok(Lookup::NotFound)
    }

    /// Looks in exactly `ns`: `None` if the secret is not there; else its
    /// `version` (default: current), unless revoked or expired.
    pub fn resolve_at(
        &self,
        ns: &Namespace,
        grant: &Grant,
        version: Option<u64>,
    ) -> Result<Option<Lookup>, StoreError> {
        let name = grant.name();
        let row: Option<(i64, i64, bool)> = self
            .conn
            .prepare_cached(
                "SELECT id, current_version, revoked_at IS NOT NULL OR destroyed_at IS NOT NULL FROM secrets \
                 WHERE name = ?1 AND namespace = ?2",
            )
            .map_err(self.err("prepare a lookup"))?
            .query_row(params![name.as_str(), ns.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(self.err("look up a secret"))?;
        let Some((id, current, revoked)) = row else { return Ok(None) };
        let version = version.unwrap_or(current as u64);
        if revoked {
            return Ok(Some(Lookup::Revoked { namespace: ns.clone(), version }));
        }
        let row = self
            .conn
            .prepare_cached(
                "SELECT expires_at, wrapped_key, nonce, ciphertext FROM secret_versions WHERE secret_id = ?1 AND version = ?2",
            )
            .map_err(self.err("prepare a lookup"))?
            .query_row(params![id, version as i64], |r| {
                Ok((r.get::<_, Option<i64>>(0)?, Sealed { wrapped_key: r.get(1)?, nonce: r.get(2)?, ciphertext: r.get(3)? }))
            })
            .optional()
            .map_err(self.err("read a secret version"))?;
        let Some((expires_at, sealed)) = row else {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                what: format!("secret {name} in namespace {ns} has no stored version {version} (pruned or deleted)"),
            });
        };
        if expires_at.is_some_and(|x| x <= now()) {
            return Ok(Some(Lookup::Expired { namespace: ns.clone(), version }));
        }
        let plain = crypto::open(&self.key, &aad(ns, name, version), &sealed)
            .map_err(|DecryptError| self.tampered(ns, name, version))?;
        let value = SecretValue::from_utf8(plain).map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("secret {name} version {version} in namespace {ns} is not valid UTF-8"),
        })?;
        Ok(Some(Lookup::Found(Resolved { namespace: ns.clone(), version, value })))
    }

    /// Marks a secret revoked: every later read, including by executions
    /// already running, gets `revoked`. A new `set`/`rotate` lifts it.
    pub fn revoke(&mut self, namespace: &Namespace, name: &SecretName, actor: &Actor) -> Result<(), StoreError> {
        self.mark(namespace, name, actor, Action::SecretRevoke, "revoked_at = ?1")
    }

    /// Crypto-erases a secret: every version's ciphertext and wrapped data
    /// key is deleted; a tombstone row remains (shown as destroyed) so the
    /// audit trail still makes sense. Reads get `revoked`.
    pub fn destroy(&mut self, namespace: &Namespace, name: &SecretName, actor: &Actor) -> Result<(), StoreError> {
        self.mark(namespace, name, actor, Action::SecretDestroy, "destroyed_at = ?1")
    }

    fn mark(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        actor: &Actor,
        action: Action,
        set: &str,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let tx = begin(&mut self.conn, &path)?;
        let id: Option<(i64, i64)> = tx
            .query_row(
                "SELECT id, current_version FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![namespace.as_str(), name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(e("look up the secret"))?;
        let Some((id, version)) = id else {
            return Err(StoreError::NotFound { namespace: namespace.clone(), name: name.clone() });
        };
        tx.execute(&format!("UPDATE secrets SET {set} WHERE id = ?2"), params![now(), id])
            .map_err(e("update the secret"))?;
        let mut reason = None;
        if action == Action::SecretDestroy {
            let n = tx
                .execute("DELETE FROM secret_versions WHERE secret_id = ?1", [id])
                .map_err(e("erase the versions"))?;
            reason = Some(format!("erased {n} version(s): ciphertext and data keys"));
        }
        audit::append(&tx, &record(actor, action, namespace, name, Some(version as u64), reason))
            .map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))?;
        if action == Action::SecretDestroy {
            // Also drop the erased bytes from free pages and the WAL.
            let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;");
        }
        Ok(())
    }

    /// The stored versions of a secret, newest first.
    pub fn versions(&self, namespace: &Namespace, name: &SecretName) -> Result<Vec<VersionInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT v.version, v.created_at, v.expires_at, v.version = s.current_version FROM secret_versions v \
                 JOIN secrets s ON s.id = v.secret_id WHERE s.namespace = ?1 AND s.name = ?2 ORDER BY v.version DESC",
            )
            .map_err(self.err("list versions"))?;
        let rows = stmt
            .query_map(params![namespace.as_str(), name.as_str()], |r| {
                Ok(VersionInfo {
                    version: r.get::<_, i64>(0)? as u64,
                    created_at: r.get(1)?,
                    expires_at: r.get(2)?,
                    current: r.get(3)?,
                })
            })
            .map_err(self.err("list versions"))?;
        let list: Vec<VersionInfo> = rows.collect::<Result<_, _>>().map_err(self.err("list versions"))?;
        if list.is_empty() && self.describe(namespace, name)?.is_none() {
            return Err(StoreError::NotFound { namespace: namespace.clone(), name: name.clone() });
        }
        Ok(list)
    }

    /// Metadata of one secret; never its value.
    pub fn describe(&self, namespace: &Namespace, name: &SecretName) -> Result<Option<SecretInfo>, StoreError> {
        Ok(self
            .list_where("namespace = ?1 AND name = ?2", params![namespace.as_str(), name.as_str()])?
            .into_iter()
            .next())
    }

    fn tampered(&self, ns: &Namespace, name: &SecretName, version: u64) -> StoreError {
        StoreError::Tampered { path: self.path.clone(), namespace: ns.clone(), name: name.clone(), version }
    }

    /// Lists secrets, in `namespace` only when given, sorted by namespace
    /// and name; with `expiring_before`, only those whose current version
    /// expires before that time (already expired included).
    pub fn list(
        &self,
        namespace: Option<&Namespace>,
        expiring_before: Option<i64>,
    ) -> Result<Vec<SecretInfo>, StoreError> {
        self.list_where(
            "(?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR (expires_at IS NOT NULL AND expires_at < ?2))",
            params![namespace.map(Namespace::as_str), expiring_before],
        )
    }

    fn list_where(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<SecretInfo>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT s.namespace, s.name, s.current_version, s.created_at, s.updated_at, s.keep_versions, \
               s.revoked_at, s.destroyed_at, \
               (SELECT expires_at FROM secret_versions v WHERE v.secret_id = s.id AND v.version = s.current_version) AS expires_at, \
               (SELECT count(*) FROM secret_versions v WHERE v.secret_id = s.id) AS stored \
             FROM secrets s) WHERE {filter} ORDER BY namespace, name"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err("prepare the listing"))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(SecretInfo {
                    namespace: r.get(0)?,
                    name: r.get(1)?,
                    version: r.get::<_, i64>(2)? as u64,
                    created_at: r.get(3)?,
                    updated_at: r.get(4)?,
                    keep_versions: r.get::<_, i64>(5)? as u64,
                    revoked_at: r.get(6)?,
                    destroyed_at: r.get(7)?,
                    expires_at: r.get(8)?,
                    versions_stored: r.get::<_, i64>(9)? as u64,
                })
            })
            .map_err(self.err("list secrets"))?;
        rows.collect::<Result<_, _>>().map_err(self.err("list secrets"))
    }

    /// Re-wraps every data key and the key verifier under `new` in one
    /// transaction; the values' ciphertexts are untouched. `before_commit`
    /// runs inside the transaction (a seam for crash tests). Interrupted at
    /// any point, the store is readable with exactly one of the two keys.
    pub fn rotate_master_key(
        &mut self,
        new: &MasterKey,
        actor: &Actor,
        before_commit: impl FnOnce(),
    ) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let tx = begin(&mut self.conn, &path)?;
        let rows: Vec<(i64, i64, String, String, Vec<u8>)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT v.secret_id, v.version, s.namespace, s.name, v.wrapped_key FROM secret_versions v \
                     JOIN secrets s ON s.id = v.secret_id",
                )
                .map_err(e("read the data keys"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .map_err(e("read the data keys"))?;
            rows.collect::<Result<_, _>>().map_err(e("read the data keys"))?
        };
        let mut update = tx
            .prepare("UPDATE secret_versions SET wrapped_key = ?1 WHERE secret_id = ?2 AND version = ?3")
            .map_err(e("prepare the re-wrap"))?;
        let corrupt = |what: String| StoreError::Corrupt { path: path.clone(), what };
        for (id, version, ns, name, wrapped) in &rows {
            let ns = Namespace::new(ns).map_err(|err| corrupt(err.to_string()))?;
            let name = SecretName::new(name).map_err(|err| corrupt(err.to_string()))?;
            let version = *version as u64;
            let rewrapped =
                crypto::rewrap(&self.key, new, &aad(&ns, &name, version), wrapped).map_err(|DecryptError| {
                    StoreError::Tampered { path: path.clone(), namespace: ns.clone(), name: name.clone(), version }
                })?;
            update.execute(params![rewrapped, id, version as i64]).map_err(e("re-wrap a data key"))?;
        }
        drop(update);
        let v = crypto::seal(new, VERIFIER_AAD, VERIFIER_PLAINTEXT);
        for (k, val) in [
            ("key_id", new.id().0.into_bytes()),
            ("verifier_wrapped", v.wrapped_key),
            ("verifier_nonce", v.nonce),
            ("verifier_ciphertext", v.ciphertext),
        ] {
            tx.execute("UPDATE meta SET value = ?1 WHERE key = ?2", params![val, k])
                .map_err(e("replace the key verifier"))?;
        }
        audit::append(
            &tx,
            &audit::NewRecord {
                actor: actor.clone(),
                action: Action::KeyRotate,
                outcome: Outcome::Ok,
                namespace: Namespace::root(),
                secret: None,
                version: None,
                reason: Some(format!(
                    "re-wrapped {} data key(s) from key {} to key {}",
                    rows.len(),
                    self.key.id(),
                    new.id()
                )),
                value_hmac: None,
            },
        )
        .map_err(e("write the audit record"))?;
        before_commit();
        tx.commit().map_err(e("commit"))?;
        self.key = new.clone();
        Ok(rows.len() as u64)
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), what }
    }

    /// Decrypts every stored version of every secret (in `namespace` only,
    /// when given) for a backup. Destroyed secrets are left out.
    pub fn export(&self, namespace: Option<&Namespace>, actor: &Actor) -> Result<Vec<ExportedSecret>, StoreError> {
        let infos = self.list(namespace, None)?;
        let mut out = Vec::new();
        for info in infos.into_iter().filter(|i| i.destroyed_at.is_none()) {
            let ns = Namespace::new(&info.namespace).map_err(|err| self.corrupt(err.to_string()))?;
            let name = SecretName::new(&info.name).map_err(|err| self.corrupt(err.to_string()))?;
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT v.version, v.created_at, v.expires_at, v.wrapped_key, v.nonce, v.ciphertext FROM secret_versions v \
                     JOIN secrets s ON s.id = v.secret_id WHERE s.namespace = ?1 AND s.name = ?2 ORDER BY v.version",
                )
                .map_err(self.err("read versions"))?;
            let rows = stmt
                .query_map(params![ns.as_str(), name.as_str()], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        Sealed { wrapped_key: r.get(3)?, nonce: r.get(4)?, ciphertext: r.get(5)? },
                    ))
                })
                .map_err(self.err("read versions"))?;
            let mut versions = Vec::new();
            for row in rows {
                let (version, created_at, expires_at, sealed) = row.map_err(self.err("read versions"))?;
                let plain = crypto::open(&self.key, &aad(&ns, &name, version), &sealed)
                    .map_err(|DecryptError| self.tampered(&ns, &name, version))?;
                let value = SecretValue::from_utf8(plain).map_err(|_| self.corrupt(format!("{name} is not UTF-8")))?;
                versions.push(ExportedVersion {
                    version,
                    created_at,
                    expires_at,
                    value: Zeroizing::new(value.expose().to_owned()),
                });
            }
            out.push(ExportedSecret {
                namespace: info.namespace,
                name: info.name,
                keep_versions: info.keep_versions,
                revoked: info.revoked_at.is_some(),
                versions,
            });
        }
        let tx = self.conn.unchecked_transaction().map_err(self.err("start a transaction"))?;
        audit::append(
            &tx,
            &audit::NewRecord {
                actor: actor.clone(),
                action: Action::SecretExport,
                outcome: Outcome::Ok,
                namespace: namespace.cloned().unwrap_or_default(),
                secret: None,
                version: None,
                reason: Some(format!("exported {} secret(s)", out.len())),
                value_hmac: None,
            },
        )
        .map_err(self.err("write the audit record"))?;
        tx.commit().map_err(self.err("commit"))?;
        Ok(out)
    }

    /// Restores secrets from a backup in one transaction: a secret that
    /// exists is skipped unless `overwrite`, which replaces all its versions.
    /// `before_commit` runs inside the transaction (a seam for crash tests).
    pub fn import(
        &mut self,
        secrets: &[ExportedSecret],
        overwrite: bool,
        actor: &Actor,
        before_commit: impl FnOnce(),
    ) -> Result<ImportReport, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        // Validate everything before writing anything.
        let mut parsed = Vec::new();
        for s in secrets {
            let ns = Namespace::new(&s.namespace).map_err(|err| self.corrupt(format!("bundle: {err}")))?;
            let name = SecretName::new(&s.name).map_err(|err| self.corrupt(format!("bundle: {err}")))?;
            let current = s
                .versions
                .iter()
                .map(|v| v.version)
                .max()
                .ok_or_else(|| self.corrupt(format!("bundle: {name} has no versions")))?;
            parsed.push((ns, name, current, s));
        }
        let tx = begin(&mut self.conn, &path)?;
        let mut report = ImportReport::default();
        for (ns, name, current, s) in parsed {
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT id FROM secrets WHERE namespace = ?1 AND name = ?2",
                    params![ns.as_str(), name.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(e("look up a secret"))?;
            if let Some(id) = existing {
                if !overwrite {
                    report.skipped.push(format!("{ns}/{name}"));
                    continue;
                }
                tx.execute("DELETE FROM secret_versions WHERE secret_id = ?1", [id]).map_err(e("replace versions"))?;
                tx.execute("DELETE FROM secrets WHERE id = ?1", [id]).map_err(e("replace the secret"))?;
            }
            let created = s.versions.iter().map(|v| v.created_at).min().unwrap_or_else(now);
            let revoked = s.revoked.then(now);
            tx.execute(
                "INSERT INTO secrets (namespace, name, current_version, created_at, updated_at, keep_versions, revoked_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![ns.as_str(), name.as_str(), current as i64, created, now(), s.keep_versions as i64, revoked],
            )
            .map_err(e("insert a secret"))?;
            let id = tx.last_insert_rowid();
            for v in &s.versions {
                let sealed = crypto::seal(&self.key, &aad(&ns, &name, v.version), v.value.as_bytes());
                tx.execute(
                    "INSERT INTO secret_versions (secret_id, version, created_at, expires_at, wrapped_key, nonce, ciphertext) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![id, v.version as i64, v.created_at, v.expires_at, sealed.wrapped_key, sealed.nonce, sealed.ciphertext],
                )
                .map_err(e("insert a version"))?;
            }
            audit::append(&tx, &record(actor, Action::SecretImport, &ns, &name, Some(current), None))
                .map_err(e("write the audit record"))?;
            report.imported.push(format!("{ns}/{name}"));
        }
        before_commit();
        tx.commit().map_err(e("commit"))?;
        Ok(report)
    }

    /// Deletes a secret and all its versions. Returns whether it existed.
    /// The deletion and its audit record (by `actor`) commit together.
    pub fn remove(&mut self, namespace: &Namespace, name: &SecretName, actor: &Actor) -> Result<bool, StoreError> {
        let path = self.path.clone();
        let e = |op| sql_err(&path, op);
        let tx = begin(&mut self.conn, &path)?;
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

/// Starts a write transaction that takes the database's write lock at once,
/// so that concurrent writers queue on the busy timeout instead of failing
/// half-way.
fn begin<'c>(conn: &'c mut Connection, path: &Path) -> Result<rusqlite::Transaction<'c>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_err(path, "start a write transaction"))
}

/// Maps a SQLite error to [`StoreError::Sqlite`] naming the file and the
/// operation; the one constructor for every table in the store file.
pub(crate) fn sql_err(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |err| StoreError::Sqlite { path, op, err }
}

fn next_key_path(dir: &DataDir) -> PathBuf {
    dir.root().join("master.key.next")
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Atomically replaces `to` with `from` and makes the rename durable.
fn install_key_file(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    sync_dir(to.parent().unwrap_or(Path::new(".")));
    Ok(())
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
             keep_versions INTEGER NOT NULL DEFAULT 5,
             revoked_at INTEGER,
             destroyed_at INTEGER,
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
    fn store() -> (tempfile::TempDir, SecretStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SecretStore::open_with_key(&dir.path().join("s.db"), MasterKey::generate()).unwrap();
        (dir, s)
    }
    fn set(s: &mut SecretStore, n: &str, k: &str, v: &str) -> u64 {
        s.set(&ns(n), &name(k), &val(v), &SetOptions::default(), &me()).unwrap()
    }
    fn found(l: Lookup) -> (String, u64, String) {
        match l {
            Lookup::Found(r) => (r.namespace.as_str().to_owned(), r.version, r.value.expose().to_owned()),
            other => panic!("expected a value, got {other:?}"),
        }
    }

    #[test]
    fn nearest_namespace_wins_and_root_is_the_last_resort() {
        let (_d, mut s) = store();
        set(&mut s, "", "K", "root");
        set(&mut s, "finance", "K", "finance");
        assert_eq!(
            found(s.resolve(&ns("finance.reporting"), &grant("K"), None).unwrap()),
            ("finance".into(), 1, "finance".into())
        );
        assert_eq!(found(s.resolve(&ns("ops"), &grant("K"), None).unwrap()), ("".into(), 1, "root".into()));
        assert!(matches!(s.resolve(&ns("ops"), &grant("OTHER"), None).unwrap(), Lookup::NotFound));
    }

    #[test]
    fn set_makes_versions_and_keeps_a_configurable_number() {
        let (_d, mut s) = store();
        for i in 1..=7 {
            assert_eq!(set(&mut s, "a", "K", &format!("v{i}")), i);
        }
        assert_eq!(found(s.resolve(&ns("a"), &grant("K"), None).unwrap()).1, 7);
        let versions: Vec<u64> = s.versions(&ns("a"), &name("K")).unwrap().iter().map(|v| v.version).collect();
        assert_eq!(versions, [7, 6, 5, 4, 3]);
        s.set(&ns("a"), &name("K"), &val("v8"), &SetOptions { keep: Some(2), ..Default::default() }, &me()).unwrap();
        assert_eq!(s.versions(&ns("a"), &name("K")).unwrap().len(), 2);
        assert!(s.remove(&ns("a"), &name("K"), &me()).unwrap());
        assert!(!s.remove(&ns("a"), &name("K"), &me()).unwrap());
        assert!(s.list(None, None).unwrap().is_empty());
    }

    #[test]
    fn pinned_reads_keep_their_version_across_a_rotation() {
        let (_d, mut s) = store();
        set(&mut s, "", "K", "old");
        let pin = Pin { namespace: ns(""), version: 1 };
        s.set(&ns(""), &name("K"), &val("new"), &SetOptions { rotate: true, ..Default::default() }, &me()).unwrap();
        assert_eq!(found(s.resolve(&ns(""), &grant("K"), Some(&pin)).unwrap()).2, "old");
        assert_eq!(found(s.resolve(&ns(""), &grant("K"), None).unwrap()).2, "new");
        let e = s
            .set(&ns(""), &name("NEW"), &val("x"), &SetOptions { rotate: true, ..Default::default() }, &me())
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }));
    }

    #[test]
    fn revoke_expire_and_destroy() {
        let (_d, mut s) = store();
        set(&mut s, "", "R", "r");
        s.revoke(&ns(""), &name("R"), &me()).unwrap();
        assert!(matches!(s.resolve(&ns(""), &grant("R"), None).unwrap(), Lookup::Revoked { version: 1, .. }));
        set(&mut s, "", "R", "r2");
        assert_eq!(found(s.resolve(&ns(""), &grant("R"), None).unwrap()).2, "r2", "a new version lifts the revocation");

        s.set(&ns(""), &name("E"), &val("e"), &SetOptions { expires_at: Some(now() - 1), ..Default::default() }, &me())
            .unwrap();
        assert!(matches!(s.resolve(&ns(""), &grant("E"), None).unwrap(), Lookup::Expired { .. }));
        let soon: Vec<String> = s.list(None, Some(now() + 60)).unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(soon, ["E"]);

        set(&mut s, "", "D", "destroy-me-please");
        s.destroy(&ns(""), &name("D"), &me()).unwrap();
        assert!(matches!(s.resolve(&ns(""), &grant("D"), None).unwrap(), Lookup::Revoked { .. }));
        assert_eq!(s.describe(&ns(""), &name("D")).unwrap().unwrap().versions_stored, 0);
        assert!(s.revoke(&ns(""), &name("NOPE"), &me()).is_err());
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
        assert_eq!(found(s.resolve(&ns("a"), &grant("K3"), None).unwrap()).2, "value-3");
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
        assert_eq!(found(b.resolve(&ns("x"), &grant("K"), None).unwrap()), ("x".into(), 2, "two".into()));
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
