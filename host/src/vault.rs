//! External backends: a namespace served by a HashiCorp Vault or OpenBao
//! server (KV version 2) instead of the local store.
//!
//! The configuration lives in `DATA_DIR/backends.json`, authenticated with a
//! MAC under the store's integrity key, so an edit that points a namespace
//! (and its token) at another server is refused. The token comes from the
//! backend's token file, else `$VAULT_TOKEN` or `$BAO_TOKEN`; it is never
//! written into a message and never follows a redirect (none are followed).
//! `https://` is required except for a loopback address. Grants, namespace
//! rules, execution-consistent versions and the audit trail work the same as
//! for the local store: `access` calls in here for the namespaces a backend
//! serves.

use crate::crypto::{IntegrityKey, MacDomain};
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
    /// File holding the token; it wins over `$VAULT_TOKEN`/`$BAO_TOKEN`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA certificates to trust instead of the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Plain `http://` to a non-loopback address was allowed explicitly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    backends: Vec<VaultConfig>,
    /// HMAC of `backends` under the store's integrity key (hex).
    #[serde(default)]
    mac: Option<String>,
}

fn config_mac(key: &IntegrityKey, backends: &[VaultConfig]) -> String {
    let text = serde_json::to_vec(backends).expect("config encodes");
    hex::encode(key.mac(MacDomain::Backends, &[&text]))
}

/// Checks a server address: `https://`, or `http://` only to a loopback
/// address unless `insecure_http`.
pub fn check_address(address: &str, insecure_http: bool) -> Result<(), String> {
    if address.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = address.strip_prefix("http://") else {
        return Err(format!("{address:?} must start with https://"));
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback || insecure_http {
        Ok(())
    } else {
        Err(format!(
            "{address:?} is plain http to a non-loopback host: the token would cross the network in clear; \
             use https:// (or pass --insecure-http if you really mean it)"
        ))
    }
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
    /// The configuration file failed its integrity check.
    #[error(
        "backend configuration {0} failed its integrity check: it was edited outside keyhole (an edit could send a \
         token to another server); remove it and add the backends again with `host backend add-vault`"
    )]
    Tampered(PathBuf),
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

    fn read(path: &Path) -> Result<Option<ConfigFile>, VaultError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(VaultError::Config { path: path.to_owned(), why: e.to_string() }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| VaultError::Config { path: path.to_owned(), why: e.to_string() })
    }

    /// Reads `backends.json` (absent: no backends) and checks its MAC.
    pub fn load(path: &Path, key: &IntegrityKey) -> Result<Self, VaultError> {
        let Some(f) = Self::read(path)? else { return Ok(Backends::none()) };
        let good = f.mac.as_deref().and_then(|m| hex::decode(m).ok()).is_some_and(|m| {
            key.verify(MacDomain::Backends, &[&serde_json::to_vec(&f.backends).expect("config encodes")], &m)
        });
        if !good {
            return Err(VaultError::Tampered(path.to_owned()));
        }
        Ok(Backends { list: f.backends })
    }

    /// On the first use of a store by a keyhole that authenticates its
    /// configuration: signs an unsigned `backends.json` as it stands.
    pub fn adopt_unsigned(path: &Path, key: &IntegrityKey) -> Result<(), VaultError> {
        match Self::read(path)? {
            Some(f) if f.mac.is_none() => Backends { list: f.backends }.save(path, key),
            _ => Ok(()),
        }
    }

    /// Writes the configuration atomically (0600), with its MAC.
    pub fn save(&self, path: &Path, key: &IntegrityKey) -> Result<(), VaultError> {
        let err = |e: std::io::Error| VaultError::Config { path: path.to_owned(), why: e.to_string() };
        let file = ConfigFile { backends: self.list.clone(), mac: Some(config_mac(key, &self.list)) };
        let text = serde_json::to_string_pretty(&file).expect("config encodes");
        crate::data_dir::write_private_atomic(path, text.as_bytes()).map_err(err)
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

impl VaultConfig {
    /// The HTTP client: no redirects (the token must reach only this
    /// server), this backend's CA file if any.
    fn agent(&self) -> Result<ureq::Agent, VaultError> {
        use ureq::tls::{PemItem, RootCerts, TlsConfig};
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &self.ca_file {
            let bad = |why: String| VaultError::Config { path: ca.clone(), why };
            let pem = std::fs::read(ca).map_err(|e| bad(format!("cannot read the CA file: {e}")))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let PemItem::Certificate(c) = item.map_err(|e| bad(format!("not PEM: {e}")))? {
                    certs.push(c);
                }
            }
            if certs.is_empty() {
                return Err(bad("holds no certificate".into()));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        Ok(ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls.build())
            .build()
            .into())
    }

    fn token(&self) -> Result<Zeroizing<String>, VaultError> {
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f)
                .map_err(|e| VaultError::Config { path: f.clone(), why: format!("cannot read the token file: {e}") })?;
            return Ok(Zeroizing::new(t.trim().to_owned()));
        }
        for var in ["VAULT_TOKEN", "BAO_TOKEN"] {
            if let Ok(t) = std::env::var(var)
                && !t.is_empty()
            {
                return Ok(Zeroizing::new(t));
            }
        }
        Err(VaultError::NoToken(self.address.clone()))
    }

    fn redirected(&self, op: &'static str, path: &str, status: u16) -> Option<VaultError> {
        (300..400).contains(&status).then(|| VaultError::Server {
            address: self.address.clone(),
            op,
            path: path.to_owned(),
            status,
            message: "the server answered with a redirect, which keyhole does not follow (the token would go to \
                      another address): configure the backend with the final address"
                .into(),
        })
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
        let mut req = self.agent()?.get(self.url(&path)).header("X-Vault-Token", token.as_str());
        if let Some(v) = version {
            req = req.query("version", v.to_string());
        }
        let mut resp = req.call().map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if let Some(e) = self.redirected("GET", &path, status) {
            return Err(e);
        }
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
        let mut resp = self
            .agent()?
            .post(self.url(&path))
            .header("X-Vault-Token", token.as_str())
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if let Some(e) = self.redirected("POST", &path, status) {
            return Err(e);
        }
        let reply: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        if status != 200 && status != 204 {
            return Err(self.server_error("POST", &path, status, &reply));
        }
        Ok(reply["data"]["version"].as_u64().unwrap_or(0))
    }

    /// Soft-deletes every version (what `host secret revoke` does for a
    /// Vault namespace): every read, pinned or not, then sees it as revoked,
    /// and an edit of keyhole's own files cannot undo that. Returns how many
    /// versions were deleted.
    pub fn delete_all_versions(&self, name: &SecretName) -> Result<usize, VaultError> {
        let token = self.token()?;
        let meta_path = self.api_path("metadata", name);
        let agent = self.agent()?;
        let mut resp = agent
            .get(self.url(&meta_path))
            .header("X-Vault-Token", token.as_str())
            .call()
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let body: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        if status != 200 {
            return Err(self
                .redirected("GET", &meta_path, status)
                .unwrap_or_else(|| self.server_error("GET", &meta_path, status, &body)));
        }
        let versions: Vec<u64> = body["data"]["versions"]
            .as_object()
            .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default();
        let path = self.api_path("delete", name);
        let mut resp = agent
            .post(self.url(&path))
            .header("X-Vault-Token", token.as_str())
            .header("Content-Type", "application/json")
            .send(serde_json::json!({ "versions": versions }).to_string().as_bytes())
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if status != 200 && status != 204 {
            let reply: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
            return Err(self
                .redirected("POST", &path, status)
                .unwrap_or_else(|| self.server_error("POST", &path, status, &reply)));
        }
        Ok(versions.len())
    }
}
