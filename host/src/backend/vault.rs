//! The Vault backend: a namespace served by a HashiCorp Vault or OpenBao
//! server (KV version 2) instead of the local store.
//!
//! Secret `NAME` of the namespace is `MOUNT/data/PREFIX+NAME`, its value the
//! field `value`; versions are Vault's version numbers. The token comes from
//! the backend's token file, else `$VAULT_TOKEN` or `$BAO_TOKEN`; it is
//! never written into a message and never follows a redirect (`http`).
//! `revoke` soft-deletes every version in Vault, so the revocation holds
//! whatever happens to keyhole's own files.

use super::{BackendError, BackendKind, Read, SecretBackend, Supports, Version, http};
use crate::audit::NewRecord;
use crate::names::{Namespace, SecretName};
use crate::policy::Grant;
use crate::secret::SecretValue;
use crate::store::{SecretInfo, SetOptions, VersionInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;
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

/// A namespace served by a Vault/OpenBao server.
#[derive(Debug)]
pub struct VaultBackend {
    config: VaultConfig,
    /// Built on first use, then reused (its connections too).
    agent: OnceLock<ureq::Agent>,
    name: String,
}

impl VaultBackend {
    /// The backend `config` describes; nothing is contacted yet.
    pub fn new(config: VaultConfig) -> Self {
        let name = format!("vault server {}", config.address);
        VaultBackend { config, agent: OnceLock::new(), name }
    }

    fn agent(&self) -> Result<ureq::Agent, BackendError> {
        if let Some(a) = self.agent.get() {
            return Ok(a.clone());
        }
        let a = http::agent(&self.name, self.config.ca_file.as_deref())?;
        Ok(self.agent.get_or_init(|| a).clone())
    }

    fn token(&self) -> Result<Zeroizing<String>, BackendError> {
        if let Some(f) = &self.config.token_file {
            let t = std::fs::read_to_string(f).map_err(|e| BackendError::Config {
                backend: self.name.clone(),
                why: format!("cannot read the token file {}: {e}", f.display()),
            })?;
            return Ok(Zeroizing::new(t.trim().to_owned()));
        }
        for var in ["VAULT_TOKEN", "BAO_TOKEN"] {
            if let Ok(t) = std::env::var(var)
                && !t.is_empty()
            {
                return Ok(Zeroizing::new(t));
            }
        }
        Err(BackendError::NoCredentials {
            backend: self.name.clone(),
            hint: "set $VAULT_TOKEN or $BAO_TOKEN, or give the backend a token file".into(),
        })
    }

    fn api_path(&self, kind: &str, name: &SecretName) -> String {
        format!("/v1/{}/{kind}/{}{}", self.config.mount.trim_matches('/'), self.config.prefix, name.as_str())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.address.trim_end_matches('/'))
    }

    fn server_error(&self, op: &str, path: &str, status: u16, body: &Value) -> BackendError {
        if let Some(e) = http::redirected(&self.name, op, path, status) {
            return e;
        }
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
        BackendError::Server { backend: self.name.clone(), op: op.to_owned(), path: path.to_owned(), status, message }
    }

    /// One request; the status and the JSON body (`null` if none).
    fn call(
        &self,
        path: &str,
        query: Option<(&str, String)>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Value), BackendError> {
        let token = self.token()?;
        let agent = self.agent()?;
        let url = self.url(path);
        let sent = match body {
            Some(b) => agent
                .post(&url)
                .header("X-Vault-Token", token.as_str())
                .header("Content-Type", "application/json")
                .send(b),
            None => {
                let mut req = agent.get(&url).header("X-Vault-Token", token.as_str());
                if let Some((k, v)) = query {
                    req = req.query(k, v);
                }
                req.call()
            }
        };
        let mut resp = sent.map_err(|e| http::unreachable(&self.name, e))?;
        let status = resp.status().as_u16();
        let value =
            if (300..400).contains(&status) { Value::Null } else { resp.body_mut().read_json().unwrap_or(Value::Null) };
        Ok((status, value))
    }
}

impl SecretBackend for VaultBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Vault
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn supports(&self) -> Supports {
        Supports { write: true, expiry: false, keep: false, destroy: false, audit_in_transaction: false }
    }

    fn read(&self, _namespace: &Namespace, grant: &Grant, version: Option<&Version>) -> Result<Read, BackendError> {
        let path = self.api_path("data", grant.name());
        let asked = version.and_then(Version::number);
        let (status, body) = self.call(&path, asked.map(|v| ("version", v.to_string())), None)?;
        let meta = &body["data"]["metadata"];
        let deleted =
            meta["destroyed"].as_bool() == Some(true) || meta["deletion_time"].as_str().is_some_and(|t| !t.is_empty());
        let number = Version::Number(meta["version"].as_u64().or(asked).unwrap_or(0));
        match status {
            200 if !deleted => {
                let value = body["data"]["data"]["value"].as_str().ok_or_else(|| BackendError::Shape {
                    backend: self.name.clone(),
                    what: format!("{path} has no string field `value`"),
                })?;
                Ok(Read::Found(SecretValue::new(value.to_owned()), number, Vec::new()))
            }
            200 | 404 if deleted => Ok(Read::Revoked(number)),
            404 => Ok(Read::Absent),
            _ => Err(self.server_error("GET", &path, status, &body)),
        }
    }

    fn write(
        &self,
        _namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        _opts: &SetOptions,
        _audit: &NewRecord,
    ) -> Result<Version, BackendError> {
        let path = self.api_path("data", name);
        let body = Zeroizing::new(serde_json::json!({ "data": { "value": value.expose() } }).to_string());
        let (status, reply) = self.call(&path, None, Some(body.as_bytes()))?;
        if status != 200 && status != 204 {
            return Err(self.server_error("POST", &path, status, &reply));
        }
        Ok(Version::Number(reply["data"]["version"].as_u64().unwrap_or(0)))
    }

    /// Soft-deletes every version: every read, pinned or not, then sees it
    /// as revoked, and an edit of keyhole's own files cannot undo that.
    fn revoke(&self, _namespace: &Namespace, name: &SecretName, _audit: &NewRecord) -> Result<String, BackendError> {
        let meta_path = self.api_path("metadata", name);
        let (status, body) = self.call(&meta_path, None, None)?;
        if status != 200 {
            return Err(self.server_error("GET", &meta_path, status, &body));
        }
        let versions: Vec<u64> = body["data"]["versions"]
            .as_object()
            .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default();
        let path = self.api_path("delete", name);
        let req = serde_json::json!({ "versions": versions }).to_string();
        let (status, reply) = self.call(&path, None, Some(req.as_bytes()))?;
        if status != 200 && status != 204 {
            return Err(self.server_error("POST", &path, status, &reply));
        }
        Ok(format!(
            "its {} version(s) are deleted in {}, so every read, pinned or not, gets `revoked` until a new version \
             is written",
            versions.len(),
            self.name
        ))
    }

    fn destroy(&self, namespace: &Namespace, _name: &SecretName, _audit: &NewRecord) -> Result<String, BackendError> {
        Err(self.unsupported(namespace, "destroys versions itself: use `bao kv destroy` (or `vault kv destroy`)"))
    }

    fn remove(&self, namespace: &Namespace, _name: &SecretName, _audit: &NewRecord) -> Result<bool, BackendError> {
        Err(self.unsupported(namespace, "deletes metadata itself: use `bao kv metadata delete`"))
    }

    fn list(&self, namespace: &Namespace) -> Result<Vec<SecretInfo>, BackendError> {
        Err(self.unsupported(namespace, "lists its own secrets: use `bao kv list`"))
    }

    fn info(&self, namespace: &Namespace, _name: &SecretName) -> Result<Option<SecretInfo>, BackendError> {
        Err(self.unsupported(namespace, "keeps its own metadata: use `bao kv metadata get`"))
    }

    fn versions(&self, namespace: &Namespace, _name: &SecretName) -> Result<Vec<VersionInfo>, BackendError> {
        Err(self.unsupported(namespace, "keeps its own metadata: use `bao kv metadata get`"))
    }
}

impl VaultBackend {
    fn unsupported(&self, namespace: &Namespace, what: &str) -> BackendError {
        BackendError::Unsupported { namespace: namespace.clone(), backend: self.name.clone(), what: what.to_owned() }
    }
}
