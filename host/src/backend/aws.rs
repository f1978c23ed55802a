//! The AWS Secrets Manager backend.
//!
//! Secret `NAME` of the namespace is the secret id `PREFIX + NAME`, its
//! value the `SecretString`; versions are AWS version ids (an execution pins
//! the id it first read). `set` is `PutSecretValue` (`CreateSecret` for a
//! new name), `rotate` is `PutSecretValue` of an existing secret, `rm` is
//! `DeleteSecret` with AWS's recovery window and `destroy` is `DeleteSecret`
//! with `ForceDeleteWithoutRecovery`. `revoke` denies reads through keyhole
//! without touching the secret in AWS (other consumers may still use it):
//! the revoked names are kept in the authenticated `backends.json`, so an
//! edit cannot lift a revocation; a new version lifts it.
//!
//! Requests are the Secrets Manager JSON API over `ureq`, signed with
//! `sigv4`. Credentials come from `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else the shared
//! credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default
//! `~/.aws/credentials`) under `AWS_PROFILE` (default `default`); never from
//! the command line or keyhole's configuration, and never in a message.

pub use super::config::AwsConfig;
use super::sigv4::{self, Credentials};
use super::{BackendConfig, BackendError, BackendKind, Read, SecretBackend, Supports, Version, http};
use crate::audit::NewRecord;
use crate::names::{Namespace, SecretName};
use crate::policy::Grant;
use crate::secret::SecretValue;
use crate::store::{SecretInfo, SetOptions, VersionInfo};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{OnceLock, RwLock};
use zeroize::Zeroizing;

/// A namespace served by AWS Secrets Manager.
#[derive(Debug)]
pub struct AwsBackend {
    config: AwsConfig,
    revoked: RwLock<BTreeSet<String>>,
    agent: OnceLock<ureq::Agent>,
    name: String,
}

/// Where credentials are looked for, for messages.
const CREDENTIAL_SOURCES: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give AWS_PROFILE a section in \
                                  the shared credentials file (~/.aws/credentials or AWS_SHARED_CREDENTIALS_FILE)";

impl AwsBackend {
    /// The backend `config` describes; nothing is contacted yet.
    pub fn new(config: AwsConfig) -> Self {
        let name = format!("AWS Secrets Manager {} ({})", config.endpoint(), config.region);
        let revoked = RwLock::new(config.revoked.clone());
        AwsBackend { config, revoked, agent: OnceLock::new(), name }
    }

    fn agent(&self) -> Result<ureq::Agent, BackendError> {
        if let Some(a) = self.agent.get() {
            return Ok(a.clone());
        }
        let a = http::agent(&self.name, None)?;
        Ok(self.agent.get_or_init(|| a).clone())
    }

    fn no_credentials(&self, hint: String) -> BackendError {
        BackendError::NoCredentials { backend: self.name.clone(), hint }
    }

    /// The standard sources, in the standard order.
    fn credentials(&self) -> Result<Credentials, BackendError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Credentials {
                access_key_id: id,
                secret_access_key: Zeroizing::new(secret),
                session_token: var("AWS_SESSION_TOKEN").map(Zeroizing::new),
            });
        }
        let file = match var("AWS_SHARED_CREDENTIALS_FILE") {
            Some(f) => PathBuf::from(f),
            None => match var("HOME") {
                Some(h) => PathBuf::from(h).join(".aws/credentials"),
                None => return Err(self.no_credentials(CREDENTIAL_SOURCES.into())),
            },
        };
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.no_credentials(CREDENTIAL_SOURCES.into()));
            }
            Err(e) => return Err(self.no_credentials(format!("cannot read {}: {e}", file.display()))),
        };
        profile_credentials(&text, &profile).ok_or_else(|| {
            self.no_credentials(format!(
                "{} has no profile [{profile}] with aws_access_key_id and aws_secret_access_key ({CREDENTIAL_SOURCES})",
                file.display()
            ))
        })
    }

    fn secret_id(&self, name: &SecretName) -> String {
        format!("{}{}", self.config.prefix, name.as_str())
    }

    /// One call of the Secrets Manager API: `Ok(reply)` for HTTP 200, else
    /// `Err((status, error type, message))` or a transport error.
    fn call(&self, target: &str, body: &Value) -> Result<Result<Value, (u16, String, String)>, BackendError> {
        let creds = self.credentials()?;
        let endpoint = self.config.endpoint();
        let host = endpoint.split_once("://").map_or(endpoint.as_str(), |(_, rest)| rest);
        let host = host.split('/').next().unwrap_or(host);
        let body = Zeroizing::new(body.to_string());
        let date = sigv4::amz_date_now();
        let target = format!("secretsmanager.{target}");
        let mut headers = vec![
            ("content-type", "application/x-amz-json-1.1"),
            ("host", host),
            ("x-amz-date", date.as_str()),
            ("x-amz-target", target.as_str()),
        ];
        if let Some(t) = &creds.session_token {
            headers.push(("x-amz-security-token", t.as_str()));
        }
        let req = sigv4::Request { method: "POST", path: "/", query: "", headers: &headers, body: body.as_bytes() };
        let auth = sigv4::authorization(&creds, &self.config.region, "secretsmanager", &date, &req);
        let mut post = self.agent()?.post(format!("{endpoint}/"));
        for (k, v) in headers.iter().filter(|(k, _)| *k != "host") {
            post = post.header(*k, *v);
        }
        let mut resp =
            post.header("authorization", auth).send(body.as_bytes()).map_err(|e| http::unreachable(&self.name, e))?;
        let status = resp.status().as_u16();
        if let Some(e) = http::redirected(&self.name, &target, "/", status) {
            return Err(e);
        }
        let text = Zeroizing::new(resp.body_mut().read_to_string().unwrap_or_default());
        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status == 200 {
            return Ok(Ok(reply));
        }
        // Errors come as JSON, or (from the authentication layer) as XML.
        let tag = |t: &str| {
            let (open, close) = (format!("<{t}>"), format!("</{t}>"));
            let start = text.find(&open)? + open.len();
            Some(text[start..].split(&close).next()?.to_owned())
        };
        let kind = reply["__type"].as_str().map(str::to_owned).or_else(|| tag("Code")).unwrap_or_default();
        let kind = kind.rsplit('#').next().unwrap_or(&kind).to_owned();
        let message = reply["message"]
            .as_str()
            .or(reply["Message"].as_str())
            .map(str::to_owned)
            .or_else(|| tag("Message"))
            .unwrap_or_else(|| "request failed".into());
        Ok(Err((status, kind, message)))
    }

    fn server_error(
        &self,
        op: &str,
        name: &SecretName,
        (status, kind, message): (u16, String, String),
    ) -> BackendError {
        BackendError::Server {
            backend: self.name.clone(),
            op: op.to_owned(),
            path: self.secret_id(name),
            status,
            message: if kind.is_empty() { message } else { format!("{kind}: {message}") },
        }
    }

    fn shape(&self, what: String) -> BackendError {
        BackendError::Shape { backend: self.name.clone(), what }
    }

    fn is_revoked(&self, name: &SecretName) -> bool {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(name.as_str())
    }

    fn set_revoked(&self, name: &SecretName, revoked: bool) {
        let mut set = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        if revoked {
            set.insert(name.as_str().to_owned());
        } else {
            set.remove(name.as_str());
        }
    }

    fn delete(&self, name: &SecretName, force: bool) -> Result<bool, BackendError> {
        let mut body = json!({ "SecretId": self.secret_id(name) });
        if force {
            body["ForceDeleteWithoutRecovery"] = json!(true);
        }
        match self.call("DeleteSecret", &body)? {
            Ok(_) => Ok(true),
            Err((_, kind, _)) if kind == "ResourceNotFoundException" => Ok(false),
            Err(e) => Err(self.server_error("DeleteSecret", name, e)),
        }
    }

    fn info_of(&self, namespace: &Namespace, name: &str, d: &Value) -> SecretInfo {
        let time = |k: &str| d[k].as_f64().map(|t| t as i64);
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(name);
        let current = d["VersionIdsToStages"]
            .as_object()
            .and_then(|m| m.iter().find(|(_, s)| s.as_array().is_some_and(|s| s.iter().any(|x| x == "AWSCURRENT"))))
            .map(|(id, _)| id.clone());
        SecretInfo {
            destinations: Vec::new(),
            namespace: namespace.as_str().to_owned(),
            name: name.to_owned(),
            version: 0,
            version_id: current,
            versions_stored: d["VersionIdsToStages"].as_object().map_or(0, |m| m.len() as u64),
            keep_versions: 0,
            created_at: time("CreatedDate").unwrap_or(0),
            updated_at: time("LastChangedDate").or(time("CreatedDate")).unwrap_or(0),
            expires_at: None,
            revoked_at: revoked.then(crate::store::now),
            destroyed_at: time("DeletedDate"),
            tampered: false,
            dynamic: None,
        }
    }
}

/// The keys of `[profile]` in an AWS shared credentials file.
fn profile_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_section = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = section.trim() == profile;
        } else if in_section && let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(Zeroizing::new(v)),
                "aws_session_token" => token = Some(Zeroizing::new(v)),
                _ => {}
            }
        }
    }
    Some(Credentials { access_key_id: id?, secret_access_key: secret?, session_token: token })
}

impl SecretBackend for AwsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Aws
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn supports(&self) -> Supports {
        let write = !self.config.read_only;
        Supports { write, expiry: false, keep: false, destroy: write, audit_in_transaction: false }
    }

    fn config(&self) -> Option<BackendConfig> {
        let mut c = self.config.clone();
        c.revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner()).clone();
        Some(BackendConfig::Aws(c))
    }

    fn keeps_config_state(&self) -> bool {
        true
    }

    fn reconfigure(&self, config: &BackendConfig) {
        if let BackendConfig::Aws(c) = config {
            *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = c.revoked.clone();
        }
    }

    fn read(&self, _namespace: &Namespace, grant: &Grant, version: Option<&Version>) -> Result<Read, BackendError> {
        let name = grant.name();
        if self.is_revoked(name) {
            return Ok(Read::Revoked(version.cloned().unwrap_or_else(|| Version::Id("revoked".into()))));
        }
        let mut body = json!({ "SecretId": self.secret_id(name) });
        if let Some(id) = version.and_then(Version::id) {
            body["VersionId"] = json!(id);
        }
        match self.call("GetSecretValue", &body)? {
            Ok(reply) => {
                let id =
                    reply["VersionId"].as_str().ok_or_else(|| self.shape("GetSecretValue: no VersionId".into()))?;
                let Some(value) = reply["SecretString"].as_str() else {
                    return Err(self.shape(format!(
                        "secret {} has no SecretString (binary secrets are not served)",
                        self.secret_id(name)
                    )));
                };
                Ok(Read::Found(SecretValue::new(value.to_owned()), Version::Id(id.to_owned()), Vec::new()))
            }
            Err((_, kind, _)) if kind == "ResourceNotFoundException" => Ok(Read::Absent),
            Err((_, kind, message)) if kind == "InvalidRequestException" && message.contains("deletion") => {
                Ok(Read::Revoked(version.cloned().unwrap_or_else(|| Version::Id("deleted".into()))))
            }
            Err(e) => Err(self.server_error("GetSecretValue", name, e)),
        }
    }

    fn write(
        &self,
        namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        opts: &SetOptions,
        _audit: &NewRecord,
    ) -> Result<Version, BackendError> {
        let token = crate::names::ExecutionId::generate().as_str().to_owned();
        let body =
            json!({ "SecretId": self.secret_id(name), "SecretString": value.expose(), "ClientRequestToken": token });
        let reply = match self.call("PutSecretValue", &body)? {
            Ok(reply) => reply,
            Err((_, kind, _)) if kind == "ResourceNotFoundException" && !opts.rotate => {
                let body = json!({ "Name": self.secret_id(name), "SecretString": value.expose(), "ClientRequestToken": token });
                self.call("CreateSecret", &body)?.map_err(|e| self.server_error("CreateSecret", name, e))?
            }
            Err((_, kind, _)) if kind == "ResourceNotFoundException" => {
                return Err(BackendError::NotFound {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    backend: self.name.clone(),
                });
            }
            Err(e) => return Err(self.server_error("PutSecretValue", name, e)),
        };
        let id = reply["VersionId"].as_str().ok_or_else(|| self.shape("no VersionId in the reply".into()))?;
        self.set_revoked(name, false);
        Ok(Version::Id(id.to_owned()))
    }

    fn revoke(&self, namespace: &Namespace, name: &SecretName, _audit: &NewRecord) -> Result<String, BackendError> {
        match self.call("DescribeSecret", &json!({ "SecretId": self.secret_id(name) }))? {
            Ok(_) => {}
            Err((_, kind, _)) if kind == "ResourceNotFoundException" => {
                return Err(BackendError::NotFound {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    backend: self.name.clone(),
                });
            }
            Err(e) => return Err(self.server_error("DescribeSecret", name, e)),
        }
        self.set_revoked(name, true);
        Ok(format!(
            "every read through keyhole, pinned or not, gets `revoked` until a new version is written; the secret \
             itself is unchanged in {}",
            self.name
        ))
    }

    fn destroy(&self, namespace: &Namespace, name: &SecretName, _audit: &NewRecord) -> Result<String, BackendError> {
        if !self.delete(name, true)? {
            return Err(BackendError::NotFound {
                namespace: namespace.clone(),
                name: name.clone(),
                backend: self.name.clone(),
            });
        }
        Ok(format!("deleted from {} without recovery", self.name))
    }

    fn remove(&self, _namespace: &Namespace, name: &SecretName, _audit: &NewRecord) -> Result<bool, BackendError> {
        self.delete(name, false)
    }

    fn list(&self, namespace: &Namespace) -> Result<Vec<SecretInfo>, BackendError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut body = json!({ "MaxResults": 100 });
            if !self.config.prefix.is_empty() {
                body["Filters"] = json!([{ "Key": "name", "Values": [self.config.prefix] }]);
            }
            if let Some(t) = &next {
                body["NextToken"] = json!(t);
            }
            let reply = self.call("ListSecrets", &body)?.map_err(|(status, kind, message)| BackendError::Server {
                backend: self.name.clone(),
                op: "ListSecrets".into(),
                path: self.config.prefix.clone(),
                status,
                message: format!("{kind}: {message}"),
            })?;
            for s in reply["SecretList"].as_array().into_iter().flatten() {
                let Some(name) = s["Name"].as_str().and_then(|n| n.strip_prefix(self.config.prefix.as_str())) else {
                    continue;
                };
                if SecretName::new(name).is_ok() {
                    out.push(self.info_of(namespace, name, s));
                }
            }
            next = reply["NextToken"].as_str().map(str::to_owned);
            if next.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn info(&self, namespace: &Namespace, name: &SecretName) -> Result<Option<SecretInfo>, BackendError> {
        match self.call("DescribeSecret", &json!({ "SecretId": self.secret_id(name) }))? {
            Ok(d) => Ok(Some(self.info_of(namespace, name.as_str(), &d))),
            Err((_, kind, _)) if kind == "ResourceNotFoundException" => Ok(None),
            Err(e) => Err(self.server_error("DescribeSecret", name, e)),
        }
    }

    fn versions(&self, _namespace: &Namespace, name: &SecretName) -> Result<Vec<VersionInfo>, BackendError> {
        let body = json!({ "SecretId": self.secret_id(name), "IncludeDeprecated": false });
        let reply = self
            .call("ListSecretVersionIds", &body)?
            .map_err(|e| self.server_error("ListSecretVersionIds", name, e))?;
        let mut out: Vec<VersionInfo> = reply["Versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                Some(VersionInfo {
                    version: 0,
                    version_id: Some(v["VersionId"].as_str()?.to_owned()),
                    created_at: v["CreatedDate"].as_f64().map_or(0, |t| t as i64),
                    expires_at: None,
                    current: v["VersionStages"].as_array().is_some_and(|s| s.iter().any(|x| x == "AWSCURRENT")),
                })
            })
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.current.cmp(&a.current)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_credentials_file_is_read_by_profile() {
        let text = "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n\n\
                    [ci]\naws_access_key_id=AKIACI\naws_secret_access_key=s2\naws_session_token = t\n";
        let c = profile_credentials(text, "ci").unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("AKIACI", "s2"));
        assert_eq!(c.session_token.as_deref().map(String::as_str), Some("t"));
        assert_eq!(profile_credentials(text, "default").unwrap().access_key_id, "AKIADEFAULT");
        assert!(profile_credentials(text, "missing").is_none());
        assert!(format!("{c:?}").contains("***") && !format!("{c:?}").contains("s2"));
    }
}
