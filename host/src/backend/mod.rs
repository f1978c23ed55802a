//! The secret plane: where secrets live, behind one trait.
//!
//! A [`SecretBackend`] serves namespaces: [`local::LocalBackend`] (the
//! embedded SQLite store, envelope encryption), [`vault::VaultBackend`]
//! (HashiCorp Vault / OpenBao KV v2) and [`aws::AwsBackend`] (AWS Secrets
//! Manager). The [`Router`] maps each namespace to its backend (the local
//! one unless `backends.json` names another, see [`config`]) and owns the
//! two decisions every backend shares:
//!
//! - the namespace chain is walked here, in [`Router::lookup`], and nowhere
//!   else;
//! - every management action (set, rotate, revoke, destroy, remove) is
//!   audited here, with the same record shape whatever the backend: the
//!   local backend commits the record in the transaction of the change; a
//!   remote backend's change is recorded `pending` before it is attempted
//!   (no record, no change) and `ok` or `failed` after.
//!
//! Invariants: a backend never writes the audit trail itself and never
//! walks the namespace chain; its errors name the server or file, never a
//! credential. Adding a backend is one module here implementing the trait,
//! one variant of [`config::BackendConfig`] and one CLI subcommand.

pub mod aws;
pub mod config;
pub mod http;
pub mod local;
pub mod memory;
pub mod router;
pub mod sigv4;
pub mod vault;

pub use config::{BackendConfig, Backends};

/// The backend `cfg` configures (nothing is contacted yet).
pub fn open(cfg: &BackendConfig) -> std::sync::Arc<dyn SecretBackend> {
    match cfg {
        BackendConfig::Vault(c) => std::sync::Arc::new(vault::VaultBackend::new(c.clone())),
        BackendConfig::Aws(c) => std::sync::Arc::new(aws::AwsBackend::new(c.clone())),
    }
}
pub use router::{Lookup, Pin, Pins, Resolved, Router};

use crate::audit::NewRecord;
use crate::names::{Namespace, SecretName};
use crate::policy::Grant;
use crate::secret::SecretValue;
use crate::store::{SecretInfo, SetOptions, StoreError, VersionInfo};
use std::fmt;
use std::time::Duration;

/// Which kind of backend serves a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The embedded store.
    Local,
    /// HashiCorp Vault / OpenBao, KV version 2.
    Vault,
    /// AWS Secrets Manager.
    Aws,
    /// In memory (tests, embedders).
    Memory,
}

impl BackendKind {
    /// `local`, `vault`, `aws`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Vault => "vault",
            BackendKind::Aws => "aws",
            BackendKind::Memory => "memory",
        }
    }
}

/// A version of a secret as its backend names it: a number (local, Vault)
/// or an opaque id (AWS version ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(untagged)]
pub enum Version {
    /// 1, 2, 3, ...
    Number(u64),
    /// An id chosen by the backend.
    Id(String),
}

impl Version {
    /// The number, for the audit record's `version` column.
    pub fn number(&self) -> Option<u64> {
        match self {
            Version::Number(n) => Some(*n),
            Version::Id(_) => None,
        }
    }

    /// The id, for a backend that names versions by id.
    pub fn id(&self) -> Option<&str> {
        match self {
            Version::Id(id) => Some(id),
            Version::Number(_) => None,
        }
    }

    /// Sets `rec`'s version: a number in its column, an id in its detail.
    pub fn on(&self, rec: NewRecord) -> NewRecord {
        match self {
            Version::Number(n) => rec.version(*n),
            Version::Id(id) => rec.detail_field("version_id", id.as_str()),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Number(n) => write!(f, "{n}"),
            Version::Id(id) => f.write_str(id),
        }
    }
}

/// What one backend found for one name in one namespace.
#[derive(Debug)]
pub enum Read {
    /// The value, its version, and the destinations it is bound to
    /// (empty: unbound; only the local store binds).
    Found(SecretValue, Version, Vec<crate::network::AllowEntry>),
    /// Not in this namespace: the chain goes on to the parent.
    Absent,
    /// Revoked, destroyed or deleted: the chain stops here.
    Revoked(Version),
    /// Past its expiry: the chain stops here.
    Expired(Version),
    /// A dynamic secret: its value is minted per execution (see
    /// [`SecretBackend::mint`]).
    Dynamic(DynamicDef),
}

/// A dynamic secret: a credential a secrets engine mints per execution.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicDef {
    /// The path read to mint one, e.g. `database/creds/readonly`.
    pub path: String,
    /// The longest a minted credential lives, in seconds.
    pub ttl_secs: u64,
    /// The server-side policy that allows reading `path` and nothing else;
    /// each credential is read with a child token holding only it.
    pub policy: String,
    /// Bound to these destinations (`scheme://host[:port]`): the task gets
    /// a placeholder, the credential goes only into requests to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
}

/// A credential minted for one execution.
#[derive(Debug)]
pub struct Minted {
    /// The credential's data as JSON text (`{"username": ..., "password": ...}`).
    pub value: SecretValue,
    /// The server's lease id (not secret).
    pub lease_id: String,
    /// The accessor of the child token that holds the lease: revoking it
    /// revokes the lease (not secret: an accessor cannot be used to read).
    pub accessor: String,
    /// When the child token expires (seconds since the Unix epoch).
    pub expires_at: i64,
    /// The child token itself, held in memory only (never recorded) so
    /// the execution can renew it; it can read nothing but the one path.
    pub token: SecretValue,
}

/// What a backend can do, so callers refuse an option up front with a
/// clear message instead of half-applying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Supports {
    /// Writes of any kind (false for a read-only backend).
    pub write: bool,
    /// `--expires-in` on a version.
    pub expiry: bool,
    /// `--keep N` versions.
    pub keep: bool,
    /// Crypto-erase or permanent deletion.
    pub destroy: bool,
    /// The change and its audit record commit in one transaction.
    pub audit_in_transaction: bool,
}

/// Why a backend could not serve a request. `Display` is for the operator:
/// it names the backend (server, file), never a credential. What a plugin
/// is told is [`BackendError::for_plugin`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The local store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server could not be reached.
    #[error("{backend} is unreachable ({why}); check the address and that the server is running")]
    Unreachable {
        /// e.g. `vault server https://vault:8200`.
        backend: String,
        /// The transport error.
        why: String,
    },
    /// The server answered with an error.
    #[error("{backend}: {op} {path}: HTTP {status}: {message}")]
    Server {
        /// e.g. `vault server https://vault:8200`.
        backend: String,
        /// What was asked (`GET`, `PutSecretValue`, ...).
        op: String,
        /// Which path or secret id.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The server's message, or a description.
        message: String,
    },
    /// No credentials were found for the backend.
    #[error("{backend}: no credentials: {hint}")]
    NoCredentials {
        /// The backend.
        backend: String,
        /// Where credentials are looked for.
        hint: String,
    },
    /// The server's answer is not what the backend expects.
    #[error("{backend}: {what}")]
    Shape {
        /// The backend.
        backend: String,
        /// What is wrong.
        what: String,
    },
    /// The backend's configuration is unusable (a file it names, a value).
    #[error("{backend}: {why}")]
    Config {
        /// The backend or file.
        backend: String,
        /// What is wrong.
        why: String,
    },
    /// The backend does not do this.
    #[error("namespace {namespace} is served by {backend}, which {what}")]
    Unsupported {
        /// The namespace.
        namespace: Namespace,
        /// The backend.
        backend: String,
        /// What it does not do, and what to do instead.
        what: String,
    },
    /// No such secret.
    #[error("no secret {name} in namespace {namespace} ({backend})")]
    NotFound {
        /// Namespace.
        namespace: Namespace,
        /// Name.
        name: SecretName,
        /// The backend.
        backend: String,
    },
}

impl BackendError {
    /// Whether stored state failed an integrity check.
    pub fn is_tampered(&self) -> bool {
        matches!(self, BackendError::Store(StoreError::RowTampered { .. } | StoreError::Tampered { .. }))
    }

    /// What a plugin is told about secret `name`: what happened, never a
    /// file path, a server address or another internal detail (the
    /// operator's log has those).
    pub fn for_plugin(&self, name: &SecretName) -> String {
        let why = match self {
            BackendError::Store(StoreError::Tampered { namespace, version, .. }) => {
                format!("version {version} in namespace {namespace} failed to decrypt: its row was altered or moved")
            }
            BackendError::Store(StoreError::RowTampered { namespace, what, .. }) => {
                format!("in namespace {namespace} failed its integrity check: {what} was altered outside keyhole")
            }
            BackendError::Store(_) => "the secret store could not be read".into(),
            BackendError::Unreachable { .. } => "its backend server could not be reached".into(),
            BackendError::Server { status, .. } => format!("its backend server answered HTTP {status}"),
            BackendError::NoCredentials { .. } => "no credentials are configured for its backend".into(),
            BackendError::Shape { .. } | BackendError::Config { .. } => "its backend could not be read".into(),
            BackendError::Unsupported { .. } | BackendError::NotFound { .. } => "could not be read".into(),
        };
        format!("secret {name} {why} (the operator's log has the details)")
    }
}

/// One place secrets live. Implementations are thread-safe: tasks read
/// concurrently.
///
/// Management methods get `audit`, the record of the change, built by the
/// [`Router`]: a backend that [`Supports::audit_in_transaction`] commits it
/// with the change (setting the version it made); others ignore it (the
/// router records around the call).
pub trait SecretBackend: Send + Sync + fmt::Debug {
    /// Its kind.
    fn kind(&self) -> BackendKind;

    /// How messages name it: `the local store`, `vault server URL`, ...
    fn describe(&self) -> String;

    /// What it can do.
    fn supports(&self) -> Supports;

    /// Reads the granted secret in exactly `namespace`: the given version,
    /// or the current one.
    fn read(&self, namespace: &Namespace, grant: &Grant, version: Option<&Version>) -> Result<Read, BackendError>;

    /// Stores a new version; returns it.
    fn write(
        &self,
        namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        opts: &SetOptions,
        audit: &NewRecord,
    ) -> Result<Version, BackendError>;

    /// Makes every read, pinned or not, answer `revoked` until a new version
    /// is written. Returns what was done, for the operator.
    fn revoke(&self, namespace: &Namespace, name: &SecretName, audit: &NewRecord) -> Result<String, BackendError>;

    /// Erases every version for good. Returns what was done.
    fn destroy(&self, namespace: &Namespace, name: &SecretName, audit: &NewRecord) -> Result<String, BackendError>;

    /// Deletes the secret; whether it existed.
    fn remove(&self, namespace: &Namespace, name: &SecretName, audit: &NewRecord) -> Result<bool, BackendError>;

    /// Metadata of the secrets it holds for `namespace` (never values).
    fn list(&self, namespace: &Namespace) -> Result<Vec<SecretInfo>, BackendError>;

    /// Metadata of one secret, if it exists.
    fn info(&self, namespace: &Namespace, name: &SecretName) -> Result<Option<SecretInfo>, BackendError>;

    /// Its stored versions, newest first.
    fn versions(&self, namespace: &Namespace, name: &SecretName) -> Result<Vec<VersionInfo>, BackendError>;

    /// Whether `name` is here for `namespace` in any state (current,
    /// revoked, expired, a dynamic definition): whether a walk of the chain
    /// stops here. Reads metadata only, never a value.
    fn holds(&self, namespace: &Namespace, name: &SecretName) -> Result<bool, BackendError> {
        Ok(self.info(namespace, name)?.is_some())
    }

    /// Its configuration as it should now be saved, for a backend that
    /// keeps state there (the names AWS revocations apply to).
    fn config(&self) -> Option<BackendConfig> {
        None
    }

    /// Takes up state another process saved in its configuration (called
    /// before a read when the file changed, for a backend whose `config`
    /// is `Some`).
    fn reconfigure(&self, _config: &BackendConfig) {}

    /// Whether it keeps state in its configuration (see `config`).
    fn keeps_config_state(&self) -> bool {
        false
    }

    /// Mints a credential of dynamic secret `def` that lives at most `ttl`.
    fn mint(&self, namespace: &Namespace, _def: &DynamicDef, _ttl: Duration) -> Result<Minted, BackendError> {
        Err(BackendError::Unsupported {
            namespace: namespace.clone(),
            backend: self.describe(),
            what: "mints no credentials: dynamic secrets need a Vault/OpenBao backend".into(),
        })
    }

    /// Extends a minted credential (its token, and its lease if any) to
    /// live `ttl` from now, as far as the definition's TTL allows; returns
    /// its new expiry (seconds since the Unix epoch).
    fn renew_minted(
        &self,
        namespace: &Namespace,
        _token: &SecretValue,
        _lease_id: &str,
        _ttl: Duration,
    ) -> Result<i64, BackendError> {
        Err(BackendError::Unsupported {
            namespace: namespace.clone(),
            backend: self.describe(),
            what: "mints no credentials, so it has none to renew".into(),
        })
    }

    /// Revokes a minted credential: its lease, then the token that holds
    /// it (by accessor). Revoking one already gone succeeds.
    fn revoke_minted(&self, namespace: &Namespace, _lease_id: &str, _accessor: &str) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            namespace: namespace.clone(),
            backend: self.describe(),
            what: "mints no credentials, so it has none to revoke".into(),
        })
    }
}
