//! Outbound HTTP policy: which destinations a task may reach
//! ([`allow`]), which resolved addresses are refused unless named
//! ([`address`]), how much a task may send and receive ([`NetLimits`]),
//! and how a destination-bound secret is put into a request without the
//! task ever holding it ([`inject`]). `capability::http` enforces it on
//! each request.
//!
//! Invariant: this module decides and never sends: no socket, no TLS, no
//! wasmtime type. Deny by default: an empty allow-list is no network.

pub mod address;
pub mod allow;
pub mod inject;

pub use allow::{AllowEntry, AllowList, Destination, Host, Scheme};

use std::path::PathBuf;
use std::time::Duration;

/// Per-task limits on outbound HTTP. Overruns fail the request with the
/// matching WASI HTTP error; the task goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLimits {
    /// Requests per task.
    pub requests: u32,
    /// Requests in flight at once.
    pub concurrent: u32,
    /// Bytes of one request body.
    pub request_bytes: usize,
    /// Bytes of one response body.
    pub response_bytes: usize,
    /// Time for one request, connect to last byte (never beyond the task's
    /// deadline).
    pub timeout: Duration,
}

impl Default for NetLimits {
    /// 100 requests, 4 at once, 10 MiB each way, 30 s each.
    fn default() -> Self {
        NetLimits {
            requests: 100,
            concurrent: 4,
            request_bytes: 10 << 20,
            response_bytes: 10 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What one task may do on the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Destinations; empty: none.
    pub allow: AllowList,
    /// Limits.
    pub limits: NetLimits,
    /// Extra trusted roots (PEM), for a private CA.
    pub ca_file: Option<PathBuf>,
}

impl NetworkPolicy {
    /// No network at all.
    pub fn none() -> Self {
        NetworkPolicy::default()
    }
}

/// A task's `network:` block in a flow, as written:
///
/// ```yaml
/// network:
///   allow: ["https://api.github.com", "http://127.0.0.1:8080"]
///   ca_file: certs/private-ca.pem        # relative to the flow file
///   limits: { requests: 20, concurrent: 2, request_body: 1MiB, response_body: 5MiB, timeout: 10s }
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkDoc {
    /// Destinations this task may send HTTP requests to: `scheme://host[:port]`, host may start with `*.`;
    /// a loopback, private or link-local address must be named as an IP literal or CIDR block.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub allow: Vec<AllowEntry>,
    /// PEM file of extra trusted CA certificates (a private CA), relative to the flow file.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Limits on this task's requests.
    #[serde(default)]
    pub limits: NetLimitsDoc,
}

/// `network.limits` as written.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetLimitsDoc {
    /// Requests per task (default 100).
    #[serde(default)]
    pub requests: Option<u32>,
    /// Requests in flight at once (default 4).
    #[serde(default)]
    pub concurrent: Option<u32>,
    /// Largest request body, with a unit (default 10MiB).
    #[serde(default)]
    pub request_body: Option<String>,
    /// Largest response body, with a unit (default 10MiB).
    #[serde(default)]
    pub response_body: Option<String>,
    /// Time for one request: `10s`, `500ms` (default 30s; never beyond the task's timeout).
    #[serde(default)]
    pub timeout: Option<String>,
}

impl NetworkDoc {
    /// The policy it describes; `base` is the flow file's directory.
    pub fn policy(&self, base: &std::path::Path) -> Result<NetworkPolicy, String> {
        use crate::limits::{parse_duration, parse_size};
        let d = NetLimits::default();
        let l = &self.limits;
        let positive = |what: &str, n: Option<u32>, default: u32| match n {
            Some(0) => Err(format!("limits.{what} must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let limits = NetLimits {
            requests: positive("requests", l.requests, d.requests)?,
            concurrent: positive("concurrent", l.concurrent, d.concurrent)?,
            request_bytes: l.request_body.as_deref().map(parse_size).transpose()?.unwrap_or(d.request_bytes),
            response_bytes: l.response_body.as_deref().map(parse_size).transpose()?.unwrap_or(d.response_bytes),
            timeout: l.timeout.as_deref().map(parse_duration).transpose()?.unwrap_or(d.timeout),
        };
        let ca_file = self.ca_file.as_ref().map(|f| base.join(f));
        if let Some(f) = &ca_file
            && !f.is_file()
        {
            return Err(format!("ca_file {} does not exist", f.display()));
        }
        Ok(NetworkPolicy { allow: AllowList::new(self.allow.clone()), limits, ca_file })
    }
}
