//! `DATA_DIR/backends.json`: which namespace is served by which remote
//! backend, one tagged entry per namespace (`"kind": "vault"` or `"aws"`).
//!
//! The file is authenticated with a MAC under the store's integrity key, so
//! an edit that points a namespace (and its credentials) at another server
//! is refused. A file written by keyhole 0.2 (entries without `kind`, all
//! Vault) is read under the MAC it was written with, and rewritten tagged on
//! the next change.

use super::DynamicDef;
use crate::crypto::{IntegrityKey, MacDomain};
use crate::names::Namespace;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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
    /// Dynamic secrets of the namespace, by name: minted per execution.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dynamic: BTreeMap<String, DynamicDef>,
}

/// One configured AWS Secrets Manager backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// The keyhole namespace it serves (exactly this namespace).
    pub namespace: String,
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Another endpoint than `https://secretsmanager.REGION.amazonaws.com`
    /// (a VPC endpoint, or a local test server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Prefix of the secret ids, e.g. `keyhole/finance/`.
    #[serde(default)]
    pub prefix: String,
    /// Refuse every write through keyhole.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Names revoked through keyhole: reads answer `revoked`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub revoked: BTreeSet<String>,
}

impl AwsConfig {
    /// The endpoint requests go to.
    pub fn endpoint(&self) -> String {
        match &self.endpoint_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("https://secretsmanager.{}.amazonaws.com", self.region),
        }
    }
}

/// One configured remote backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendConfig {
    /// HashiCorp Vault / OpenBao, KV version 2.
    Vault(VaultConfig),
    /// AWS Secrets Manager.
    Aws(AwsConfig),
}

impl BackendConfig {
    /// The keyhole namespace it serves (exactly this namespace).
    pub fn namespace(&self) -> &str {
        match self {
            BackendConfig::Vault(c) => &c.namespace,
            BackendConfig::Aws(c) => &c.namespace,
        }
    }

    /// `vault`, `aws`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Vault(_) => "vault",
            BackendConfig::Aws(_) => "aws",
        }
    }

    /// Where it is, for `host backend list`: an address or a region.
    pub fn location(&self) -> String {
        match self {
            BackendConfig::Vault(c) => format!("{} mount {}", c.address, c.mount),
            BackendConfig::Aws(c) => {
                format!("{}{}", c.region, c.endpoint_url.as_deref().map(|u| format!(" at {u}")).unwrap_or_default())
            }
        }
    }

    /// The prefix secret names get in the backend.
    pub fn prefix(&self) -> &str {
        match self {
            BackendConfig::Vault(c) => &c.prefix,
            BackendConfig::Aws(c) => &c.prefix,
        }
    }
}

/// Why the configuration file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// It failed its integrity check.
    #[error(
        "backend configuration {0} failed its integrity check: it was edited outside keyhole (an edit could send \
         credentials to another server); remove it and add the backends again with `host backend add-vault` or \
         `host backend add-aws`"
    )]
    Tampered(PathBuf),
    /// It is unreadable or malformed.
    #[error("backend configuration {path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile<T> {
    backends: Vec<T>,
    /// HMAC of `backends` under the store's integrity key (hex).
    #[serde(default)]
    mac: Option<String>,
}

fn mac_of<T: Serialize>(key: &IntegrityKey, backends: &[T]) -> Vec<u8> {
    key.mac(MacDomain::Backends, &[&serde_json::to_vec(backends).expect("config encodes")]).to_vec()
}

fn verified<T: Serialize>(key: &IntegrityKey, f: &ConfigFile<T>) -> bool {
    f.mac.as_deref().and_then(|m| hex::decode(m).ok()).is_some_and(|m| {
        key.verify(MacDomain::Backends, &[&serde_json::to_vec(&f.backends).expect("config encodes")], &m)
    })
}

/// All configured remote backends.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    list: Vec<BackendConfig>,
}

/// Where the configuration lives in a data directory.
pub fn config_path(data_dir: &Path) -> PathBuf {
    data_dir.join("backends.json")
}

/// The file as read: tagged, or written by keyhole 0.2 (all Vault, no tag).
enum Read {
    Tagged(ConfigFile<BackendConfig>),
    Untagged(ConfigFile<VaultConfig>),
}

impl Backends {
    /// No remote backends: every namespace is local.
    pub fn none() -> Self {
        Backends::default()
    }

    fn read(path: &Path) -> Result<Option<Read>, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid { path: path.to_owned(), why };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(invalid(e.to_string())),
        };
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let untagged = raw["backends"].as_array().is_some_and(|l| l.iter().any(|b| b.get("kind").is_none()));
        Ok(Some(if untagged {
            Read::Untagged(serde_json::from_value(raw).map_err(|e| invalid(e.to_string()))?)
        } else {
            Read::Tagged(serde_json::from_value(raw).map_err(|e| invalid(e.to_string()))?)
        }))
    }

    /// Reads `backends.json` (absent: no backends) and checks its MAC.
    pub fn load(path: &Path, key: &IntegrityKey) -> Result<Self, ConfigError> {
        let list = match Self::read(path)? {
            None => return Ok(Backends::none()),
            Some(Read::Tagged(f)) if verified(key, &f) => f.backends,
            Some(Read::Untagged(f)) if verified(key, &f) => f.backends.into_iter().map(BackendConfig::Vault).collect(),
            Some(_) => return Err(ConfigError::Tampered(path.to_owned())),
        };
        let backends = Backends { list };
        backends.check(path)?;
        Ok(backends)
    }

    /// The namespaces `backends.json` says are served remotely, read
    /// without the key and so without checking the MAC: for advice only
    /// (`host validate` does not warn about a grant it cannot check), never
    /// for deciding where a secret is read or written.
    pub fn remote_namespaces_unverified(path: &Path) -> Vec<String> {
        match Self::read(path) {
            Ok(Some(Read::Tagged(f))) => f.backends.iter().map(|b| b.namespace().to_owned()).collect(),
            Ok(Some(Read::Untagged(f))) => f.backends.into_iter().map(|b| b.namespace).collect(),
            _ => Vec::new(),
        }
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        for b in &self.list {
            Namespace::new(b.namespace())
                .map_err(|e| ConfigError::Invalid { path: path.to_owned(), why: e.to_string() })?;
        }
        Ok(())
    }

    /// On the first use of a store by a keyhole that authenticates its
    /// configuration: signs an unsigned `backends.json` as it stands.
    pub fn adopt_unsigned(path: &Path, key: &IntegrityKey) -> Result<(), ConfigError> {
        let list = match Self::read(path)? {
            Some(Read::Tagged(f)) if f.mac.is_none() => f.backends,
            Some(Read::Untagged(f)) if f.mac.is_none() => f.backends.into_iter().map(BackendConfig::Vault).collect(),
            _ => return Ok(()),
        };
        Backends { list }.save(path, key)
    }

    /// Writes the configuration atomically (0600), with its MAC.
    pub fn save(&self, path: &Path, key: &IntegrityKey) -> Result<(), ConfigError> {
        let file = ConfigFile { backends: self.list.clone(), mac: Some(hex::encode(mac_of(key, &self.list))) };
        let text = serde_json::to_string_pretty(&file).expect("config encodes");
        crate::data_dir::write_private_atomic(path, text.as_bytes())
            .map_err(|e| ConfigError::Invalid { path: path.to_owned(), why: e.to_string() })
    }

    /// The configured backends, by namespace.
    pub fn list(&self) -> &[BackendConfig] {
        &self.list
    }

    /// Adds or replaces the backend of its namespace.
    pub fn upsert(&mut self, cfg: BackendConfig) {
        self.list.retain(|b| b.namespace() != cfg.namespace());
        self.list.push(cfg);
        self.list.sort_by(|a, b| a.namespace().cmp(b.namespace()));
    }

    /// Removes the backend of `namespace`; whether there was one.
    pub fn remove(&mut self, namespace: &Namespace) -> bool {
        let before = self.list.len();
        self.list.retain(|b| b.namespace() != namespace.as_str());
        before != self.list.len()
    }

    /// The backend configured for exactly `namespace`, if any.
    pub fn for_namespace(&self, namespace: &Namespace) -> Option<&BackendConfig> {
        self.list.iter().find(|b| b.namespace() == namespace.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(ns: &str) -> BackendConfig {
        BackendConfig::Vault(VaultConfig {
            namespace: ns.into(),
            address: "http://127.0.0.1:8200".into(),
            mount: "secret".into(),
            prefix: String::new(),
            token_file: None,
            ca_file: None,
            insecure_http: false,
            dynamic: Default::default(),
        })
    }

    #[test]
    fn a_tagged_file_round_trips_and_an_edit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backends.json");
        let key = IntegrityKey::generate();
        let mut b = Backends::none();
        b.upsert(vault("ops"));
        b.upsert(BackendConfig::Aws(AwsConfig {
            namespace: "cloud".into(),
            region: "us-east-1".into(),
            endpoint_url: None,
            prefix: "keyhole/cloud/".into(),
            read_only: true,
            revoked: ["OLD".to_owned()].into(),
        }));
        b.save(&path, &key).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""kind": "aws""#) && text.contains(r#""kind": "vault""#), "{text}");
        assert_eq!(Backends::load(&path, &key).unwrap().list(), b.list());
        std::fs::write(&path, text.replace("127.0.0.1:8200", "evil.example:8200")).unwrap();
        assert_eq!(Backends::load(&path, &key).unwrap_err(), ConfigError::Tampered(path.clone()));
    }

    #[test]
    fn an_untagged_file_of_keyhole_0_2_is_read_as_vault() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backends.json");
        let key = IntegrityKey::generate();
        let BackendConfig::Vault(v) = vault("ops") else { unreachable!() };
        let legacy = vec![v];
        let file = ConfigFile { backends: legacy.clone(), mac: Some(hex::encode(mac_of(&key, &legacy))) };
        std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
        assert_eq!(Backends::load(&path, &key).unwrap().list(), [vault("ops")]);
    }
}
