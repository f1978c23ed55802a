//! External backends: a namespace served by a HashiCorp Vault or OpenBao
//! server (KV version 2) instead of the local store.
//!
//! The configuration lives in `DATA_DIR/backends.json`; the token comes from
//! `$VAULT_TOKEN`, `$BAO_TOKEN` or a token file, and is never written into a
//! message. Grants, namespace rules, execution-consistent versions and the
//! audit trail work the same as for the local store: `resolve` calls in here
//! for the namespaces a backend serves.

use crate::names::{Namespace, SecretName};
use crate::secret::SecretValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// One configured Vault/OpenBao backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The keyhole namespace it serves (exactly this namespace).
    pub namespace: String,
    /// Server address, e.g. `https://vault.example.com:8200`.
    pub address: String,
    /// KV v2 mount, e.g. `secret`.
    pub mount: String,
    /// Path prefix under the mount, e.g. `keyhole/finance/`.
    #[serde(default)]
    pub prefix: String,
    /// File holding the token, used when `$VAULT_TOKEN`/`$BAO_TOKEN` are unset.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    backends: Vec<VaultConfig>,
}

/// Backend failures: name the server and path, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The server could not be reached.
    #[error("vault server {address} is unreachable ({why}); check the address and that the server is running")]
    Unreachable {
        /// Server.
        address: String,
        /// Transport error.
        why: String,
    },
    /// The server answered with an error.
    #[error("vault server {address}: {op} {path}: HTTP {status}: {message}")]
    Server {
        /// Server.
        address: String,
        /// GET, POST, DELETE.
        op: &'static str,
        /// API path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The server's `errors`, or a description.
        message: String,
    },
    /// No token configured.
    #[error("no token for vault server {0}: set $VAULT_TOKEN or $BAO_TOKEN, or give the backend a token file")]
    NoToken(String),
    /// The secret exists but has no `value` field.
    #[error("vault server {address}: {path} has no string field `value`")]
    Shape {
        /// Server.
        address: String,
        /// API path.
        path: String,
    },
    /// The configuration file is unreadable or malformed.
    #[error("backend configuration {path}: {why}")]
    Config {
        /// File.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The result of reading one secret from a backend.
#[derive(Debug)]
pub enum VaultLookup {
    /// Value and version.
    Found(SecretValue, u64),
    /// No such secret.
    NotFound,
    /// The version was deleted or destroyed in Vault.
    Deleted(u64),
}

/// All configured backends.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    list: Vec<VaultConfig>,
}

/// Where the configuration lives in a data directory.
pub fn config_path(data_dir: &Path) -> PathBuf {
    data_dir.join("backends.json")
}

impl Backends {
    /// No backends: everything is local.
    pub fn none() -> Self {
        Backends::default()
    }

    /// Reads `backends.json` (absent: no backends).
    pub fn load(path: &Path) -> Result<Self, VaultError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Backends::none()),
            Err(e) => return Err(VaultError::Config { path: path.to_owned(), why: e.to_string() }),
        };
        let f: ConfigFile = serde_json::from_str(&text)
            .map_err(|e| VaultError::Config { path: path.to_owned(), why: e.to_string() })?;
        Ok(Backends { list: f.backends })
    }

    /// Writes the configuration atomically.
    pub fn save(&self, path: &Path) -> Result<(), VaultError> {
        let err = |e: std::io::Error| VaultError::Config { path: path.to_owned(), why: e.to_string() };
        let text = serde_json::to_string_pretty(&ConfigFile { backends: self.list.clone() }).expect("config encodes");
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// The configured backends.
    pub fn list(&self) -> &[VaultConfig] {
        &self.list
    }

    /// Adds or replaces the backend for `cfg.namespace`.
    pub fn upsert(&mut self, cfg: VaultConfig) {
        self.list.retain(|b| b.namespace != cfg.namespace);
        self.list.push(cfg);
        self.list.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    }

    /// Removes the backend of `namespace`; whether there was one.
    pub fn remove(&mut self, namespace: &str) -> bool {
        let before = self.list.len();
        self.list.retain(|b| b.namespace != namespace);
        before != self.list.len()
    }

    /// The backend serving exactly `namespace`, if any.
    pub fn for_namespace(&self, namespace: &Namespace) -> Option<&VaultConfig> {
        self.list.iter().find(|b| b.namespace == namespace.as_str())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

impl VaultConfig {
    fn token(&self) -> Result<Zeroizing<String>, VaultError> {
        for var in ["VAULT_TOKEN", "BAO_TOKEN"] {
            if let Ok(t) = std::env::var(var)
                && !t.is_empty()
            {
                return Ok(Zeroizing::new(t));
            }
        }
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f)
                .map_err(|e| VaultError::Config { path: f.clone(), why: format!("cannot read the token file: {e}") })?;
            return Ok(Zeroizing::new(t.trim().to_owned()));
        }
        Err(VaultError::NoToken(self.address.clone()))
    }

    fn api_path(&self, kind: &str, name: &SecretName) -> String {
        format!("/v1/{}/{kind}/{}{}", self.mount.trim_matches('/'), self.prefix, name.as_str())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address.trim_end_matches('/'))
    }

    fn unreachable(&self, e: ureq::Error) -> VaultError {
        VaultError::Unreachable { address: self.address.clone(), why: e.to_string() }
    }

    fn server_error(&self, op: &'static str, path: &str, status: u16, body: &Value) -> VaultError {
        let message = body
            .get("errors")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
            .map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
            .unwrap_or_else(|| {
                match status {
                    403 => "permission denied (check the token and its policy)",
                    404 => "not found",
                    _ => "request failed",
                }
                .to_owned()
            });
        VaultError::Server { address: self.address.clone(), op, path: path.to_owned(), status, message }
    }

    /// Reads `name` (the given version, or the latest).
    pub fn read(&self, name: &SecretName, version: Option<u64>) -> Result<VaultLookup, VaultError> {
        let token = self.token()?;
        let path = self.api_path("data", name);
        let mut req = agent().get(self.url(&path)).header("X-Vault-Token", token.as_str());
        if let Some(v) = version {
            req = req.query("version", v.to_string());
        }
        let mut resp = req.call().map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let body: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        let meta = &body["data"]["metadata"];
        let deleted =
            meta["destroyed"].as_bool() == Some(true) || meta["deletion_time"].as_str().is_some_and(|t| !t.is_empty());
        let meta_version = meta["version"].as_u64();
        match status {
            200 if !deleted => {
                let value = body["data"]["data"]["value"]
                    .as_str()
                    .ok_or_else(|| VaultError::Shape { address: self.address.clone(), path: path.clone() })?;
                Ok(VaultLookup::Found(SecretValue::new(value.to_owned()), meta_version.unwrap_or(0)))
            }
            200 | 404 if deleted => Ok(VaultLookup::Deleted(meta_version.or(version).unwrap_or(0))),
            404 => Ok(VaultLookup::NotFound),
            _ => Err(self.server_error("GET", &path, status, &body)),
        }
    }

    /// Writes a new version of `name`; returns its version number.
    pub fn write(&self, name: &SecretName, value: &SecretValue) -> Result<u64, VaultError> {
        let token = self.token()?;
        let path = self.api_path("data", name);
        let body = Zeroizing::new(serde_json::json!({ "data": { "value": value.expose() } }).to_string());
        let mut resp = agent()
            .post(self.url(&path))
            .header("X-Vault-Token", token.as_str())
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let reply: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        if status != 200 && status != 204 {
            return Err(self.server_error("POST", &path, status, &reply));
        }
        Ok(reply["data"]["version"].as_u64().unwrap_or(0))
    }

    /// Soft-deletes the latest version (what `host secret revoke` does for a
    /// Vault namespace): reads then see it as revoked.
    pub fn delete_latest(&self, name: &SecretName) -> Result<(), VaultError> {
        let token = self.token()?;
        let path = self.api_path("data", name);
        let mut resp = agent()
            .delete(self.url(&path))
            .header("X-Vault-Token", token.as_str())
            .call()
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if status != 200 && status != 204 {
            let reply: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
            return Err(self.server_error("DELETE", &path, status, &reply));
        }
        Ok(())
    }
}
