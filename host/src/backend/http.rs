//! The HTTP client every remote backend uses, and the check on its
//! address: one place decides that credentials go only to the configured
//! server (no redirect is ever followed), over TLS unless the server is on
//! loopback, trusting a private CA only when the backend names one.

use super::BackendError;
use std::path::Path;
use std::time::Duration;

/// How long one request to a backend may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

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

/// The client for one backend: no redirects (a credential must reach only
/// this server), `ca_file`'s certificates as the only roots when given,
/// statuses returned rather than turned into errors.
pub fn agent(backend: &str, ca_file: Option<&Path>) -> Result<ureq::Agent, BackendError> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder();
    if let Some(ca) = ca_file {
        let bad = |why: String| BackendError::Config { backend: format!("{backend}: CA file {}", ca.display()), why };
        let pem = crate::data_dir::read_bounded(ca, crate::data_dir::MAX_CA_FILE_BYTES)
            .map_err(|e| bad(format!("cannot read the CA file: {e}")))?;
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
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(tls.build())
        .build()
        .into())
}

/// The error for a redirect answer: never followed.
pub fn redirected(backend: &str, op: &str, path: &str, status: u16) -> Option<BackendError> {
    (300..400).contains(&status).then(|| BackendError::Server {
        backend: backend.to_owned(),
        op: op.to_owned(),
        path: path.to_owned(),
        status,
        message: "the server answered with a redirect, which keyhole does not follow (the credentials would go to \
                  another address): configure the backend with the final address"
            .into(),
    })
}

/// The error for a transport failure.
pub fn unreachable(backend: &str, e: ureq::Error) -> BackendError {
    BackendError::Unreachable { backend: backend.to_owned(), why: e.to_string() }
}
