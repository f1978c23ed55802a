//! The embedded secret store: one SQLite file, values encrypted at rest.
//!
//! Plaintext enters through [`SecretStore::set`] and leaves only through
//! [`SecretStore::resolve`], whose one caller on the plugin path is
//! `access::get_secret`. Rows hold only ciphertext and wrapped data keys.
//! Writes run in `BEGIN IMMEDIATE` transactions on a WAL database with a busy
//! timeout, so two `host` processes can use one store at once.

use crate::audit::{self, Action, Actor, NewRecord};
use crate::crypto::{self, DecryptError, IntegrityKey, KeyError, KeyId, KeySource, MacDomain, MasterKey, Sealed};
use crate::data_dir::DataDir;
use crate::db::{self, DbError, busy_timeout, connect};
use crate::keyring::{KeyFiles, KeyLock};
use crate::names::{Namespace, SecretName};
use crate::policy::Grant;
use crate::secret::SecretValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

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
    /// Its stored state fails its integrity check: it was edited outside
    /// keyhole, and reads are refused.
    pub tampered: bool,
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
) -> NewRecord {
    let mut r = NewRecord::ok(actor, action, namespace, Some(name));
    r.version = version;
    r.reason = reason;
    r
}

/// An open secret store.
#[derive(Debug)]
pub struct SecretStore {
    conn: Connection,
    key: MasterKey,
    source: KeySource,
    integrity: IntegrityKey,
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
        let (store, created) = Self::finish_open(conn, path, key, source, expected, key_file)?;
        if created {
            // The same first use authenticates the backend configuration.
            crate::vault::Backends::adopt_unsigned(&crate::vault::config_path(dir.root()), &store.integrity)
                .map_err(|e| store.corrupt(e.to_string()))?;
        }
        Ok(store)
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
        Ok(Self::finish_open(conn, path.to_owned(), key, KeySource::Env, expected, "a key file".into())?.0)
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
    ) -> Result<(Self, bool), StoreError> {
        let expected = match expected {
            Some(e) => e,
            None => write_verifier(&conn, &path, &key)?,
        };
        let (id, verifier) = expected;
        if crypto::open(&key, VERIFIER_AAD, &verifier).is_err() {
            return Err(StoreError::WrongKey { path, source_: source, got: key.id(), expected: id, key_file });
        }
        let (integrity, created) = load_integrity(&mut conn, &path, &key)?;
        Ok((SecretStore { conn, key, source, integrity, path }, created))
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
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        let t = now();
        let row = secret_row(&tx, &path, &self.integrity, namespace, name)?;
        if row.as_ref().is_some_and(|r| !r.authentic) {
            // Building on edited state would launder it: `rm` it first.
            return Err(row_tampered(&path, namespace, name, "its current version, keep count or state"));
        }
        let current = row.map(|r| (r.id, r.current, r.keep));
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
        remac_secret(&tx, &self.integrity, id).map_err(e("authenticate the secret"))?;
        remac_version(&tx, &self.integrity, id, version as i64).map_err(e("authenticate the version"))?;
        let action = if opts.rotate { Action::SecretRotate } else { Action::SecretSet };
        let reason = opts.expires_at.map(|x| format!("expires at {}", fmt_time(x)));
        audit::append(&tx, &self.integrity, &record(actor, action, namespace, name, Some(version), reason))
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
        let Some(row) = secret_row(&self.conn, &self.path, &self.integrity, ns, name)? else { return Ok(None) };
        if !row.authentic {
            return Err(row_tampered(&self.path, ns, name, "its current version, keep count or state"));
        }
        let version = version.unwrap_or(row.current as u64);
        if row.revoked {
            return Ok(Some(Lookup::Revoked { namespace: ns.clone(), version }));
        }
        let row = self
            .conn
            .prepare_cached(
                "SELECT created_at, expires_at, mac, wrapped_key, nonce, ciphertext FROM secret_versions \
                 WHERE secret_id = ?1 AND version = ?2",
            )
            .map_err(self.err("prepare a lookup"))?
            .query_row(params![row.id, version as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    Sealed { wrapped_key: r.get(3)?, nonce: r.get(4)?, ciphertext: r.get(5)? },
                ))
            })
            .optional()
            .map_err(self.err("read a secret version"))?;
        let Some((created_at, expires_at, mac, sealed)) = row else {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                what: format!("secret {name} in namespace {ns} has no stored version {version} (pruned or deleted)"),
            });
        };
        let expected = version_mac(&self.integrity, ns.as_str(), name.as_str(), version as i64, created_at, expires_at);
        if mac.as_deref() != Some(&expected[..]) {
            return Err(row_tampered(&self.path, ns, name, "the expiry or creation time of its version"));
        }
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
    /// Returns a warning if the erased bytes could not be vacuumed away.
    pub fn destroy(
        &mut self,
        namespace: &Namespace,
        name: &SecretName,
        actor: &Actor,
    ) -> Result<Option<String>, StoreError> {
        self.mark(namespace, name, actor, Action::SecretDestroy, "destroyed_at = ?1")?;
        // secure_delete zeroes freed pages; also drop them and the WAL.
        Ok(self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;").err().map(|e| {
            format!(
                "the secret is destroyed, but compacting {} failed ({e}): run `host secret destroy` again, or VACUUM the file",
                self.path.display()
            )
        }))
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
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
        // Revoking or destroying only takes away: it proceeds on a row that
        // fails its check, and authenticates the result.
        let row = secret_row(&tx, &path, &self.integrity, namespace, name)?;
        let Some((id, version)) = row.map(|r| (r.id, r.current)) else {
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
        remac_secret(&tx, &self.integrity, id).map_err(e("authenticate the secret"))?;
        audit::append(&tx, &self.integrity, &record(actor, action, namespace, name, Some(version as u64), reason))
            .map_err(e("write the audit record"))?;
        tx.commit().map_err(e("commit"))?;
        Ok(())
    }

    /// The stored versions of a secret, newest first.
    pub fn versions(&self, namespace: &Namespace, name: &SecretName) -> Result<Vec<VersionInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT v.version, v.created_at, v.expires_at, v.version = s.current_version, v.mac FROM secret_versions v \
                 JOIN secrets s ON s.id = v.secret_id WHERE s.namespace = ?1 AND s.name = ?2 ORDER BY v.version DESC",
            )
            .map_err(self.err("list versions"))?;
        let rows = stmt
            .query_map(params![namespace.as_str(), name.as_str()], |r| {
                let info = VersionInfo {
                    version: r.get::<_, i64>(0)? as u64,
                    created_at: r.get(1)?,
                    expires_at: r.get(2)?,
                    current: r.get(3)?,
                };
                Ok((info, r.get::<_, Option<Vec<u8>>>(4)?))
            })
            .map_err(self.err("list versions"))?;
        let rows: Vec<(VersionInfo, Option<Vec<u8>>)> =
            rows.collect::<Result<_, _>>().map_err(self.err("list versions"))?;
        let mut list = Vec::with_capacity(rows.len());
        for (v, mac) in rows {
            let expected = version_mac(
                &self.integrity,
                namespace.as_str(),
                name.as_str(),
                v.version as i64,
                v.created_at,
                v.expires_at,
            );
            if mac.as_deref() != Some(&expected[..]) {
                return Err(row_tampered(&self.path, namespace, name, "the expiry or creation time of a version"));
            }
            list.push(v);
        }
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
               (SELECT count(*) FROM secret_versions v WHERE v.secret_id = s.id) AS stored, s.mac, \
               (SELECT v.created_at FROM secret_versions v WHERE v.secret_id = s.id AND v.version = s.current_version), \
               (SELECT v.mac FROM secret_versions v WHERE v.secret_id = s.id AND v.version = s.current_version) \
             FROM secrets s) WHERE {filter} ORDER BY namespace, name"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err("prepare the listing"))?;
        let rows = stmt
            .query_map(args, |r| {
                let mut info = SecretInfo {
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
                    tampered: false,
                };
                let ik = &self.integrity;
                let (ns, name, cur) = (&info.namespace, &info.name, info.version as i64);
                let row_ok = r.get::<_, Option<Vec<u8>>>(10)?.as_deref()
                    == Some(
                        &secret_mac(ik, ns, name, cur, info.keep_versions as i64, info.revoked_at, info.destroyed_at)[..],
                    );
                let version_ok = match r.get::<_, Option<i64>>(11)? {
                    None => true,
                    Some(created) => {
                        r.get::<_, Option<Vec<u8>>>(12)?.as_deref()
                            == Some(&version_mac(ik, ns, name, cur, created, info.expires_at)[..])
                    }
                };
                info.tampered = !(row_ok && version_ok);
                Ok(info)
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
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
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
            ("integrity_key", self.integrity.seal(new)),
        ] {
            tx.execute("UPDATE meta SET value = ?1 WHERE key = ?2", params![val, k])
                .map_err(e("replace the key verifier"))?;
        }
        let rec = NewRecord::ok(actor, Action::KeyRotate, &Namespace::root(), None).reason(format!(
            "re-wrapped {} data key(s) and the integrity key from key {} to key {}",
            rows.len(),
            self.key.id(),
            new.id()
        ));
        audit::append(&tx, &self.integrity, &rec).map_err(e("write the audit record"))?;
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
        if let Some(bad) = infos.iter().find(|i| i.tampered) {
            // A backup would carry the edited state on as if it were genuine.
            let (ns, name) = (Namespace::new(&bad.namespace), SecretName::new(&bad.name));
            if let (Ok(ns), Ok(name)) = (ns, name) {
                return Err(row_tampered(&self.path, &ns, &name, "its stored state"));
            }
        }
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
        let rec = NewRecord::ok(actor, Action::SecretExport, &namespace.cloned().unwrap_or_default(), None)
            .reason(format!("exported {} secret(s)", out.len()));
        audit::append(&tx, &self.integrity, &rec).map_err(self.err("write the audit record"))?;
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
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
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
                remac_version(&tx, &self.integrity, id, v.version as i64).map_err(e("authenticate a version"))?;
            }
            remac_secret(&tx, &self.integrity, id).map_err(e("authenticate a secret"))?;
            audit::append(&tx, &self.integrity, &record(actor, Action::SecretImport, &ns, &name, Some(current), None))
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
        let kid = self.key.id();
        let tx = begin(&mut self.conn, &path, &kid)?;
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
            let rec = NewRecord::ok(actor, Action::SecretRemove, namespace, Some(name));
            audit::append(&tx, &self.integrity, &rec).map_err(e("write the audit record"))?;
        }
        tx.commit().map_err(e("commit"))?;
        Ok(n > 0)
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

fn opt(v: Option<i64>) -> Vec<u8> {
    v.map(|x| x.to_be_bytes().to_vec()).unwrap_or_default()
}

/// The MAC over a `secrets` row's security-relevant columns.
fn secret_mac(
    ik: &IntegrityKey,
    ns: &str,
    name: &str,
    current: i64,
    keep: i64,
    revoked: Option<i64>,
    destroyed: Option<i64>,
) -> [u8; 32] {
    ik.mac(
        MacDomain::SecretRow,
        &[ns.as_bytes(), name.as_bytes(), &current.to_be_bytes(), &keep.to_be_bytes(), &opt(revoked), &opt(destroyed)],
    )
}

/// The MAC over a `secret_versions` row's metadata (the ciphertext is
/// authenticated by its own AEAD tag).
fn version_mac(ik: &IntegrityKey, ns: &str, name: &str, version: i64, created: i64, expires: Option<i64>) -> [u8; 32] {
    ik.mac(
        MacDomain::VersionRow,
        &[ns.as_bytes(), name.as_bytes(), &version.to_be_bytes(), &created.to_be_bytes(), &opt(expires)],
    )
}

/// Recomputes the MAC of secret `id` from its stored columns: the one place
/// that authenticates a `secrets` row after a change.
fn remac_secret(conn: &Connection, ik: &IntegrityKey, id: i64) -> rusqlite::Result<()> {
    let mac = conn.query_row(
        "SELECT namespace, name, current_version, keep_versions, revoked_at, destroyed_at FROM secrets WHERE id = ?1",
        [id],
        |r| {
            Ok(secret_mac(
                ik,
                &r.get::<_, String>(0)?,
                &r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        },
    )?;
    conn.execute("UPDATE secrets SET mac = ?1 WHERE id = ?2", params![mac.to_vec(), id])?;
    Ok(())
}

/// Recomputes the MAC of one version row from its stored columns.
fn remac_version(conn: &Connection, ik: &IntegrityKey, id: i64, version: i64) -> rusqlite::Result<()> {
    let mac = conn.query_row(
        "SELECT s.namespace, s.name, v.created_at, v.expires_at FROM secret_versions v JOIN secrets s ON s.id = v.secret_id \
         WHERE v.secret_id = ?1 AND v.version = ?2",
        params![id, version],
        |r| Ok(version_mac(ik, &r.get::<_, String>(0)?, &r.get::<_, String>(1)?, version, r.get(2)?, r.get(3)?)),
    )?;
    conn.execute(
        "UPDATE secret_versions SET mac = ?1 WHERE secret_id = ?2 AND version = ?3",
        params![mac.to_vec(), id, version],
    )?;
    Ok(())
}

/// A `secrets` row as the read and write paths need it.
struct SecretRow {
    id: i64,
    current: i64,
    keep: i64,
    /// Revoked or destroyed.
    revoked: bool,
    /// Its MAC checks out.
    authentic: bool,
}

fn secret_row(
    conn: &Connection,
    path: &Path,
    ik: &IntegrityKey,
    ns: &Namespace,
    name: &SecretName,
) -> Result<Option<SecretRow>, StoreError> {
    conn.prepare_cached(
        "SELECT id, current_version, keep_versions, revoked_at, destroyed_at, mac FROM secrets \
         WHERE name = ?1 AND namespace = ?2",
    )
    .map_err(sql_err(path, "prepare a lookup"))?
    .query_row(params![name.as_str(), ns.as_str()], |r| {
        let (current, keep, revoked, destroyed) = (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        let expected = secret_mac(ik, ns.as_str(), name.as_str(), current, keep, revoked, destroyed);
        Ok(SecretRow {
            id: r.get(0)?,
            current,
            keep,
            revoked: revoked.is_some() || destroyed.is_some(),
            authentic: r.get::<_, Option<Vec<u8>>>(5)?.as_deref() == Some(&expected[..]),
        })
    })
    .optional()
    .map_err(sql_err(path, "look up a secret"))
}

fn row_tampered(path: &Path, ns: &Namespace, name: &SecretName, what: &'static str) -> StoreError {
    StoreError::RowTampered { path: path.to_owned(), namespace: ns.clone(), name: name.clone(), what }
}

/// Loads the integrity key sealed in `meta`, or creates it on first use:
/// then every existing row is authenticated as it stands (a store written
/// by keyhole 0.1 had no MACs) and the audit chain is keyed from its head.
fn load_integrity(conn: &mut Connection, path: &Path, key: &MasterKey) -> Result<(IntegrityKey, bool), StoreError> {
    let get = |c: &Connection| -> Result<Option<Vec<u8>>, StoreError> {
        c.query_row("SELECT value FROM meta WHERE key = 'integrity_key'", [], |r| r.get(0))
            .optional()
            .map_err(sql_err(path, "read the integrity key"))
    };
    let open = |blob: Vec<u8>| {
        IntegrityKey::open(key, &blob).map_err(|DecryptError| StoreError::Corrupt {
            path: path.to_owned(),
            what: "the sealed integrity key in meta does not open with the master key (the database was edited)".into(),
        })
    };
    if let Some(blob) = get(conn)? {
        return Ok((open(blob)?, false));
    }
    let e = |op| sql_err(path, op);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e("start a write transaction"))?;
    if let Some(blob) = get(&tx)? {
        return Ok((open(blob)?, false));
    }
    let ik = IntegrityKey::generate();
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("the operating system's random source failed");
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('integrity_key', ?1), ('store_id', ?2)",
        params![ik.seal(key), hex::encode(id).into_bytes()],
    )
    .map_err(e("store the integrity key"))?;
    let ids: Vec<i64> = tx
        .prepare("SELECT id FROM secrets")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(e("read the secrets"))?;
    let versions: Vec<(i64, i64)> = tx
        .prepare("SELECT secret_id, version FROM secret_versions")
        .and_then(|mut st| st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(e("read the versions"))?;
    for id in &ids {
        remac_secret(&tx, &ik, *id).map_err(e("authenticate a secret"))?;
    }
    for (id, v) in &versions {
        remac_version(&tx, &ik, *id, *v).map_err(e("authenticate a version"))?;
    }
    audit::key_the_chain(&tx, &ik).map_err(e("key the audit chain"))?;
    if !ids.is_empty() {
        let rec =
            NewRecord::ok(&Actor::current_user(), Action::IntegrityInit, &Namespace::root(), None).reason(format!(
                "authenticated {} secret(s) and {} version(s) as they stood (first use by a keyhole with row MACs)",
                ids.len(),
                versions.len()
            ));
        audit::append(&tx, &ik, &rec).map_err(e("write the audit record"))?;
    }
    tx.commit().map_err(e("commit"))?;
    Ok((ik, true))
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
