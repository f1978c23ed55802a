//! The Vault backend: a namespace served by a HashiCorp Vault or OpenBao
//! server (KV version 2) instead of the local store.
//!
//! Secret `NAME` of the namespace is `MOUNT/data/PREFIX+NAME`, its value the
//! field `value`; versions are Vault's version numbers. The token comes from
//! the backend's token file, else `$VAULT_TOKEN` or `$BAO_TOKEN`; it is
//! never written into a message and never follows a redirect (`http`).
//! `revoke` soft-deletes every version in Vault, so the revocation holds
//! whatever happens to keyhole's own files.

use super::config::BackendConfig;
pub use super::config::VaultConfig;
use super::{BackendError, BackendKind, DynamicDef, Minted, Read, SecretBackend, Supports, Version, http};
use crate::audit::NewRecord;
use crate::names::{Namespace, SecretName};
use crate::policy::Grant;
use crate::secret::SecretValue;
use crate::store::{SecretInfo, SetOptions, VersionInfo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::RwLock;
use std::time::Duration;
use zeroize::Zeroizing;

/// A namespace served by a Vault/OpenBao server.
#[derive(Debug)]
pub struct VaultBackend {
    config: VaultConfig,
    /// The dynamic secrets, as the configuration file now says (another
    /// process may add one while this one runs).
    dynamic: RwLock<BTreeMap<String, DynamicDef>>,
    /// Built on first use, then reused (its connections too).
    agent: OnceLock<ureq::Agent>,
    name: String,
}

impl VaultBackend {
    /// The backend `config` describes; nothing is contacted yet.
    pub fn new(config: VaultConfig) -> Self {
        let name = format!("vault server {}", config.address);
        let dynamic = RwLock::new(config.dynamic.clone());
        VaultBackend { config, dynamic, agent: OnceLock::new(), name }
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

    /// One request with the backend's token; the status and the JSON body
    /// (`null` if none).
    fn call(
        &self,
        path: &str,
        query: Option<(&str, String)>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Value), BackendError> {
        self.call_as(&self.token()?, path, query, body)
    }

    /// One request with `token`.
    fn call_as(
        &self,
        token: &str,
        path: &str,
        query: Option<(&str, String)>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Value), BackendError> {
        let agent = self.agent()?;
        let url = self.url(path);
        let sent = match body {
            Some(b) => {
                agent.post(&url).header("X-Vault-Token", token).header("Content-Type", "application/json").send(b)
            }
            None => {
                let mut req = agent.get(&url).header("X-Vault-Token", token);
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
        if let Some(def) = self.dynamic.read().unwrap_or_else(|p| p.into_inner()).get(grant.name().as_str()) {
            return Ok(Read::Dynamic(def.clone()));
        }
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

    /// A dynamic definition, or KV metadata (which soft-deleted versions
    /// keep: a revoked secret still stops the chain, as [`Self::read`] does).
    fn holds(&self, _namespace: &Namespace, name: &SecretName) -> Result<bool, BackendError> {
        if self.dynamic.read().unwrap_or_else(|p| p.into_inner()).contains_key(name.as_str()) {
            return Ok(true);
        }
        let path = self.api_path("metadata", name);
        match self.call(&path, None, None)? {
            (200, _) => Ok(true),
            (404, _) => Ok(false),
            (status, body) => Err(self.server_error("GET", &path, status, &body)),
        }
    }

    fn info(&self, namespace: &Namespace, _name: &SecretName) -> Result<Option<SecretInfo>, BackendError> {
        Err(self.unsupported(namespace, "keeps its own metadata: use `bao kv metadata get`"))
    }

    fn versions(&self, namespace: &Namespace, _name: &SecretName) -> Result<Vec<VersionInfo>, BackendError> {
        Err(self.unsupported(namespace, "keeps its own metadata: use `bao kv metadata get`"))
    }

    fn config(&self) -> Option<BackendConfig> {
        let mut c = self.config.clone();
        c.dynamic = self.dynamic.read().unwrap_or_else(|p| p.into_inner()).clone();
        Some(BackendConfig::Vault(c))
    }

    fn reconfigure(&self, config: &BackendConfig) {
        if let BackendConfig::Vault(c) = config {
            *self.dynamic.write().unwrap_or_else(|p| p.into_inner()) = c.dynamic.clone();
        }
    }

    fn keeps_config_state(&self) -> bool {
        true
    }

    /// A child token of ours holding only the secret's policy, living at
    /// most `ttl`, reads the path; its accessor revokes it and the leases
    /// it took.
    fn mint(&self, namespace: &Namespace, def: &DynamicDef, ttl: Duration) -> Result<Minted, BackendError> {
        let ttl = ttl.as_secs().max(1);
        let create = serde_json::json!({
            "policies": [def.policy],
            "no_default_policy": true,
            "ttl": format!("{ttl}s"),
            // Renewable (for a later task of the execution) up to the
            // definition's TTL from now, never beyond.
            "explicit_max_ttl": format!("{}s", def.ttl_secs.max(ttl)),
            "renewable": true,
            "display_name": "keyhole-execution",
        })
        .to_string();
        let (status, reply) = self.call("/v1/auth/token/create", None, Some(create.as_bytes()))?;
        if status != 200 {
            return Err(self.server_error("POST", "/v1/auth/token/create", status, &reply));
        }
        let shape = |what: &str| BackendError::Shape { backend: self.name.clone(), what: what.to_owned() };
        let child = Zeroizing::new(
            reply["auth"]["client_token"]
                .as_str()
                .ok_or_else(|| shape("token/create answered no client_token"))?
                .to_owned(),
        );
        let accessor =
            reply["auth"]["accessor"].as_str().ok_or_else(|| shape("token/create answered no accessor"))?.to_owned();
        let path = format!("/v1/{}", def.path.trim_matches('/'));
        let read = self.call_as(&child, &path, None, None);
        let (status, body) = match read {
            Ok(x) => x,
            Err(e) => {
                let _ = self.revoke_minted(namespace, "", &accessor);
                return Err(e);
            }
        };
        if status != 200 || !body["data"].is_object() {
            let _ = self.revoke_minted(namespace, body["lease_id"].as_str().unwrap_or_default(), &accessor);
            return Err(self.server_error("GET", &path, status, &body));
        }
        let value = SecretValue::new(body["data"].to_string());
        Ok(Minted {
            value,
            lease_id: body["lease_id"].as_str().unwrap_or_default().to_owned(),
            accessor,
            expires_at: crate::store::now() + ttl as i64,
            token: SecretValue::new(child.to_string()),
        })
    }

    fn renew_minted(
        &self,
        _namespace: &Namespace,
        token: &SecretValue,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<i64, BackendError> {
        let increment = format!("{}s", ttl.as_secs().max(1));
        let body = serde_json::json!({ "token": token.expose(), "increment": increment }).to_string();
        let body = Zeroizing::new(body);
        let (status, reply) = self.call("/v1/auth/token/renew", None, Some(body.as_bytes()))?;
        if status != 200 {
            return Err(self.server_error("POST", "/v1/auth/token/renew", status, &reply));
        }
        let now = crate::store::now();
        let mut expires = now + reply["auth"]["lease_duration"].as_i64().unwrap_or(0);
        if !lease_id.is_empty() {
            let body = serde_json::json!({ "lease_id": lease_id, "increment": increment }).to_string();
            let (status, reply) = self.call("/v1/sys/leases/renew", None, Some(body.as_bytes()))?;
            if status != 200 {
                return Err(self.server_error("POST", "/v1/sys/leases/renew", status, &reply));
            }
            if let Some(d) = reply["lease_duration"].as_i64() {
                expires = expires.min(now + d);
            }
        }
        Ok(expires)
    }

    fn revoke_minted(&self, _namespace: &Namespace, lease_id: &str, accessor: &str) -> Result<(), BackendError> {
        // The lease first, synchronously (the engine drops the credential
        // before answering; an unknown lease also answers 204), then the
        // token, whose own revocation of its leases may lag.
        if !lease_id.is_empty() {
            let body = serde_json::json!({ "lease_id": lease_id }).to_string();
            let (status, reply) = self.call("/v1/sys/leases/revoke", None, Some(body.as_bytes()))?;
            if status != 204 && status != 200 {
                return Err(self.server_error("POST", "/v1/sys/leases/revoke", status, &reply));
            }
        }
        let body = serde_json::json!({ "accessor": accessor }).to_string();
        let (status, reply) = self.call("/v1/auth/token/revoke-accessor", None, Some(body.as_bytes()))?;
        // A token already expired or revoked is gone: nothing left to revoke.
        let gone = status == 400
            && reply["errors"].as_array().is_some_and(|e| {
                e.iter().filter_map(Value::as_str).any(|m| m.contains("invalid accessor") || m.contains("not found"))
            });
        if status == 204 || status == 200 || gone {
            return Ok(());
        }
        Err(self.server_error("POST", "/v1/auth/token/revoke-accessor", status, &reply))
    }
}

impl VaultBackend {
    /// Defines dynamic secret `name` minted from `path`: writes the policy
    /// that lets a child token read that path and nothing else. Returns the
    /// definition to save in the configuration.
    pub fn define_dynamic(
        &self,
        namespace: &Namespace,
        name: &SecretName,
        path: &str,
        ttl: Duration,
    ) -> Result<DynamicDef, BackendError> {
        let path = path.trim_matches('/');
        if path.is_empty() || path.contains("..") || path.chars().any(|c| c.is_control() || c == '"' || c == '*') {
            return Err(BackendError::Config {
                backend: self.name.clone(),
                why: format!("{path:?} is not a plain path like database/creds/readonly"),
            });
        }
        let ns = if namespace.is_root() { "root".to_owned() } else { namespace.as_str().replace('.', "-") };
        let policy = format!("keyhole-dynamic-{ns}-{}", name.as_str().to_ascii_lowercase());
        let rules = format!("path \"{path}\" {{ capabilities = [\"read\"] }}\n");
        let body = serde_json::json!({ "policy": rules }).to_string();
        let api = format!("/v1/sys/policies/acl/{policy}");
        let (status, reply) = self.call(&api, None, Some(body.as_bytes()))?;
        if status != 204 && status != 200 {
            return Err(self.server_error("POST", &api, status, &reply));
        }
        Ok(DynamicDef { path: path.to_owned(), ttl_secs: ttl.as_secs().max(1), policy, destinations: Vec::new() })
    }
}

impl VaultBackend {
    fn unsupported(&self, namespace: &Namespace, what: &str) -> BackendError {
        BackendError::Unsupported { namespace: namespace.clone(), backend: self.name.clone(), what: what.to_owned() }
    }
}
