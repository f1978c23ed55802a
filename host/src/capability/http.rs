//! `wasi:http/outgoing-handler` for every task, under the task's
//! [`NetworkPolicy`]: linked always, so a plugin that *could* make
//! requests loads; each request is checked when it is made.
//!
//! A request goes out only if, in this order: its destination matches the
//! allow-list by name or literal; the task is under its request and
//! concurrency limits; its body fits; every placeholder of a bound secret
//! in it is bound to this destination (then the value is substituted,
//! `network::inject`); the name resolves to an address that is public or
//! that the allow-list names (checked on the address then connected to: a
//! rebinding name gains nothing); and its audit record is durable (fail
//! closed). Anything else fails the request with a WASI HTTP error code (a
//! value, not a trap) and is audited as refused. The response is scrubbed
//! of injected values before the plugin reads it.
//!
//! Invariant: this module owns sending; `network` owns deciding. A request
//! body and a response body are held in memory, bounded by the limits.

use super::TaskState;
use crate::access::{SecretAccess, TaskIdentity};
use crate::audit::{Action, AuditLog, NewRecord, Outcome};
use crate::mask::MaskSet;
use crate::network::inject::{BoundSecrets, Injected, Parts, scrub};
use crate::network::{Destination, Host, NetworkPolicy, Scheme, address};
use crate::rotate::Rotations;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use wasmtime::component::Linker;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks};

/// The task's outbound HTTP state.
pub struct Http {
    ctx: WasiHttpCtx,
    hooks: Outbound,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").field("policy", &self.hooks.0.policy).finish_non_exhaustive()
    }
}

impl Http {
    /// Outbound HTTP for the task of `access` under `policy`, until
    /// `deadline`: requests are audited in its audit log, text from the
    /// plugin (paths) is masked with its masks before it is recorded, and
    /// its bound secrets are injected where their placeholders are.
    pub fn new(policy: NetworkPolicy, access: &SecretAccess, rotations: Arc<Rotations>, deadline: Instant) -> Self {
        let shared = Shared {
            rotations,
            policy,
            identity: access.identity.clone(),
            audit: access.audit.clone(),
            masks: access.masks.clone(),
            bound: access.bound.clone(),
            deadline,
            made: AtomicU32::new(0),
            in_flight: Arc::new(AtomicU32::new(0)),
            tls: OnceLock::new(),
        };
        Http { ctx: WasiHttpCtx::new(), hooks: Outbound(Arc::new(shared)) }
    }
}

impl wasmtime_wasi_http::WasiHttpView for TaskState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let caps = &mut self.caps;
        WasiHttpCtxView { ctx: &mut caps.http.ctx, table: caps.wasi.table(), hooks: &mut caps.http.hooks }
    }
}

/// Adds `wasi:http/outgoing-handler` and `wasi:http/types`.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

struct Outbound(Arc<Shared>);

/// Query keys a request's audit record lists at most.
const MAX_QUERY_KEYS: usize = 32;

struct Shared {
    policy: NetworkPolicy,
    identity: Arc<TaskIdentity>,
    audit: AuditLog,
    masks: Arc<MaskSet>,
    bound: Arc<BoundSecrets>,
    /// The task's rotations: told what the service answered to a staged
    /// value, and given each answer to capture from.
    rotations: Arc<Rotations>,
    deadline: Instant,
    made: AtomicU32,
    in_flight: Arc<AtomicU32>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

type Sent = (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>);

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<Sent, HttpError>> + Send> {
        let shared = self.0.clone();
        Box::new(async move { shared.send(request).await })
    }
}

/// What the audit record says about a request: never a query value or a
/// header, and the path masked.
struct Summary {
    method: String,
    destination: Destination,
    /// `destination` as shown in records and logs: masked, since a plugin
    /// can put a value it read into a host name.
    shown: String,
    path: String,
    query_keys: Vec<String>,
}

/// Why a request was not sent.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    AllowList,
    PrivateAddress,
    DestinationBinding,
    Limit,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::AllowList => "allow-list",
            Refusal::PrivateAddress => "private-address",
            Refusal::DestinationBinding => "destination-binding",
            Refusal::Limit => "limit",
        }
    }
}

/// Releases one in-flight slot when dropped.
struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    async fn send(self: Arc<Self>, request: http::Request<WasiBody>) -> Result<Sent, HttpError> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let summary = self.summary(&parts)?;
        let dest = &summary.destination;
        if !self.policy.allow.permits(dest) {
            let why = if self.policy.allow.is_empty() {
                "the task may not use the network (no `network.allow` in its flow, no --allow-outbound)".to_owned()
            } else {
                format!("{} matches no entry of the task's allow-list", summary.shown)
            };
            return Err(self.refuse(&summary, Refusal::AllowList, why, HttpError::HttpRequestDenied));
        }
        let limits = self.policy.limits;
        let made = self.made.fetch_add(1, Ordering::SeqCst) + 1;
        if made > limits.requests {
            let why = format!("the task has made its {} requests (network.limits.requests)", limits.requests);
            return Err(self.refuse(&summary, Refusal::Limit, why, HttpError::ConnectionLimitReached));
        }
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= limits.concurrent {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let why = format!("{} requests are already in flight (network.limits.concurrent)", limits.concurrent);
            return Err(self.refuse(&summary, Refusal::Limit, why, HttpError::ConnectionLimitReached));
        }
        let _slot = InFlight(self.in_flight.clone());
        let body = match read_body(body, limits.request_bytes).await {
            Ok(b) => b,
            Err(e @ HttpError::HttpRequestBodySize(_)) => {
                let why =
                    format!("the request body is over {} bytes (network.limits.request_body)", limits.request_bytes);
                return Err(self.refuse(&summary, Refusal::Limit, why, e));
            }
            Err(e) => return Err(e),
        };
        // What the task itself wrote: a "credential" that repeats it is not
        // captured (the task would know the value it chose).
        let written = self.rotations.capturing().then(|| {
            let mut w = vec![body.to_vec(), parts.uri.to_string().into_bytes()];
            w.extend(parts.headers.values().map(|v| v.as_bytes().to_vec()));
            w
        });
        let (body, injected) = self.inject(&summary, &mut parts, body)?;
        let addr = self.resolve(&summary).await?;

        // Fail closed: nothing leaves before its record is durable.
        let names: Vec<&str> = injected.names.iter().map(|n| n.as_str()).collect();
        let pending = self
            .record(&summary, Outcome::Pending)
            .detail_field("address", addr.to_string())
            .detail_field("injected", names.clone());
        if let Err(e) = self.audit.record(pending) {
            tracing::error!("outbound request to {} not sent: the audit log could not be written: {e}", summary.shown);
            return Err(HttpError::InternalError(Some("the audit log could not be written; nothing was sent".into())));
        }

        let budget = limits.timeout.min(self.deadline.saturating_duration_since(Instant::now()));
        let bytes_out = body.len();
        // Origin form on the wire; wasi-http has set the Host header.
        parts.uri = http::Uri::builder()
            .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()
            .map_err(|e| HttpError::InternalError(Some(e.to_string())))?;
        let request = http::Request::from_parts(parts, Full::new(body));
        let exchange = self.exchange(dest, addr, request, limits.response_bytes);
        let result = match tokio::time::timeout(budget, exchange).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::HttpResponseTimeout),
        };
        if !injected.staged.is_empty() {
            self.rotations.delivered(&injected.staged, result.as_ref().ok().map(|(h, _)| h.status().as_u16()));
        }
        let done = self
            .record(&summary, if result.is_ok() { Outcome::Sent } else { Outcome::Failed })
            .detail_field("injected", names)
            .detail_field("bytes_out", bytes_out)
            .detail_field("duration_ms", started.elapsed().as_millis() as u64);
        let done = match &result {
            Ok((status, body)) => {
                done.detail_field("status", status.status().as_u16()).detail_field("bytes_in", body.len())
            }
            Err(e) => done.reason(self.masks.mask(&format!("{} {}: {e}", summary.method, summary.shown)).into_owned()),
        };
        if let Err(e) = self.audit.record_later(done) {
            tracing::error!("the audit record of a finished request could not be queued: {e}");
        }
        let (head, body) = result?;
        let (mut head, ()) = head.into_parts();
        // A credential the service hands out for a rotation is stored and
        // replaced by its placeholder before the task reads the answer.
        let mut captured = None;
        if let Some(written) = &written {
            match self.rotations.capture_from(dest, head.status.as_u16(), &body, written) {
                Ok(c) => captured = c,
                Err(why) => return Err(HttpError::InternalError(Some(why))),
            }
        }
        let body = match &captured {
            Some((replaced, _)) => Bytes::from(scrub(&injected, replaced)),
            // An endpoint that echoes the request cannot hand an injected value back.
            None => Bytes::from(scrub(&injected, &body)),
        };
        for value in head.headers.values_mut() {
            let mut clean = scrub(&injected, value.as_bytes());
            if let Some((_, values)) = &captured {
                let mut out = Vec::with_capacity(clean.len());
                values.matcher().mask_all(&clean, &mut out);
                clean = out;
            }
            if clean != value.as_bytes() {
                *value = http::HeaderValue::from_bytes(&clean).unwrap_or(http::HeaderValue::from_static("***"));
            }
        }
        let response = http::Response::from_parts(head, Full::new(body).map_err(|n| match n {}).boxed_unsync());
        Ok((response, Box::new(async { Ok(()) })))
    }

    /// Puts the task's bound secrets where their placeholders are, or
    /// refuses the request (audited as a refused exfiltration).
    fn inject(
        &self,
        s: &Summary,
        parts: &mut http::request::Parts,
        body: Bytes,
    ) -> Result<(Bytes, Injected), HttpError> {
        if self.bound.is_empty() {
            return Ok((body, Injected::default()));
        }
        let mut p = Parts {
            path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            headers: parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect(),
            body: body.to_vec(),
        };
        let injected = self
            .bound
            .inject(&s.destination, &mut p)
            .map_err(|e| self.refuse(s, Refusal::DestinationBinding, e.to_string(), HttpError::HttpRequestDenied))?;
        if injected.names.is_empty() {
            return Ok((body, injected));
        }
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(p.path_and_query.parse().map_err(|_| HttpError::HttpRequestUriInvalid)?);
        parts.uri = http::Uri::from_parts(uri).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        parts.headers.clear();
        for (k, v) in p.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| HttpError::HttpRequestHeaderSize { field_name: None, field_size: None })?;
            let value = http::HeaderValue::from_bytes(&v).map_err(|_| HttpError::HttpRequestDenied)?;
            parts.headers.append(name, value);
        }
        if parts.headers.contains_key(http::header::CONTENT_LENGTH) {
            parts.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(p.body.len()));
        }
        Ok((Bytes::from(p.body), injected))
    }

    fn summary(&self, parts: &http::request::Parts) -> Result<Summary, HttpError> {
        let uri = &parts.uri;
        let scheme = uri.scheme_str().and_then(Scheme::parse).ok_or(HttpError::HttpProtocolError)?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or(HttpError::HttpRequestUriInvalid)?;
        let destination =
            Destination { scheme, host: Host::parse(host), port: uri.port_u16().unwrap_or(scheme.default_port()) };
        let query_keys = uri
            .query()
            .map(|q| q.split('&').filter(|kv| !kv.is_empty()).map(|kv| kv.split('=').next().unwrap_or("").to_owned()))
            .into_iter()
            .flatten()
            // Plugin-chosen text: masked, bounded, and at most 32 keys.
            .take(MAX_QUERY_KEYS)
            .map(|k| crate::audit::bounded(&self.masks.mask(&k)))
            .collect();
        Ok(Summary {
            method: parts.method.to_string(),
            shown: crate::audit::bounded(&self.masks.mask(&destination.to_string())),
            destination,
            path: crate::audit::bounded(&self.masks.mask(uri.path())),
            query_keys,
        })
    }

    fn record(&self, s: &Summary, outcome: Outcome) -> NewRecord {
        NewRecord {
            actor: self.identity.actor(),
            action: Action::HttpRequest,
            outcome,
            namespace: self.identity.namespace.clone(),
            secret: None,
            version: None,
            reason: Some(format!("{} {}{}", s.method, s.shown, s.path)),
            value_hmac: None,
            detail: None,
        }
        .detail_field("method", s.method.clone())
        .detail_field("destination", s.shown.clone())
        .detail_field("path", s.path.clone())
        .detail_field("query_keys", s.query_keys.clone())
    }

    /// Audits a refusal (queued: nothing is sent, nothing is released) and
    /// tells the operator; returns `error` for the plugin.
    fn refuse(&self, s: &Summary, why: Refusal, message: String, error: HttpError) -> HttpError {
        let message = self.masks.mask(&message).into_owned();
        tracing::warn!("task {}: {} {} refused: {message}", self.identity.task, s.method, s.shown);
        let record = self
            .record(s, Outcome::Denied)
            .detail_field("refused", why.as_str())
            .reason(format!("{} {}{}: {message}", s.method, s.shown, s.path));
        if let Err(e) = self.audit.record_later(record) {
            tracing::error!("the audit record of a refused request could not be queued: {e}");
        }
        error
    }

    /// The address to connect to: the literal, or the first address the
    /// name resolves to that passes [`address::check`].
    async fn resolve(&self, s: &Summary) -> Result<SocketAddr, HttpError> {
        let dest = &s.destination;
        let candidates: Vec<SocketAddr> = match &dest.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, dest.port)],
            Host::Name(name) => tokio::net::lookup_host((name.as_str(), dest.port))
                .await
                .map_err(|e| HttpError::DnsError { rcode: Some(e.to_string()), info_code: None })?
                .collect(),
        };
        let mut refused = None;
        for addr in &candidates {
            let ip = addr.ip().to_canonical();
            match address::check(&self.policy.allow, dest.scheme, ip, dest.port) {
                Ok(()) => return Ok(SocketAddr::new(ip, dest.port)),
                Err(what) => refused = Some((ip, what)),
            }
        }
        match refused {
            Some((ip, what)) => {
                let why = format!(
                    "{} resolves to {ip}, a {what} address; allow it only by naming it: {}://{}:{}",
                    dest.host,
                    dest.scheme.as_str(),
                    if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() },
                    dest.port
                );
                Err(self.refuse(s, Refusal::PrivateAddress, why, HttpError::DestinationIpProhibited))
            }
            None => Err(HttpError::DestinationNotFound),
        }
    }

    /// Connects to `addr` (TLS for https, with the request's host name),
    /// sends, and reads the response body up to `max` bytes.
    async fn exchange(
        &self,
        dest: &Destination,
        addr: SocketAddr,
        request: http::Request<Full<Bytes>>,
        max: usize,
    ) -> Result<(http::Response<()>, Bytes), HttpError> {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(HttpError::Connect)?;
        let (head, body) = match dest.scheme {
            Scheme::Http => round_trip(TokioIo::new(tcp), request).await?,
            Scheme::Https => {
                let config = self.tls().map_err(|why| HttpError::InternalError(Some(why)))?;
                let name = match &dest.host {
                    Host::Ip(ip) => rustls::pki_types::ServerName::IpAddress((*ip).into()),
                    Host::Name(n) => rustls::pki_types::ServerName::try_from(n.clone())
                        .map_err(|_| HttpError::HttpRequestUriInvalid)?,
                };
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
                    if e.to_string().contains("certificate") {
                        HttpError::TlsCertificateError
                    } else {
                        HttpError::Tls(e)
                    }
                })?;
                round_trip(TokioIo::new(tls), request).await?
            }
        };
        let body = read_incoming(body, max).await?;
        Ok((head, body))
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls.get_or_init(|| tls_config(self.policy.ca_file.as_deref()).map(Arc::new)).clone()
    }
}

async fn round_trip<S>(
    io: TokioIo<S>,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::Response<()>, hyper::body::Incoming), HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(HttpError::Hyper)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("outbound connection ended: {e}");
        }
    });
    let response = sender.send_request(request).await.map_err(HttpError::Hyper)?;
    let (head, body) = response.into_parts();
    Ok((http::Response::from_parts(head, ()), body))
}

/// The request body, refused beyond `max` bytes.
async fn read_body(mut body: WasiBody, max: usize) -> Result<Bytes, HttpError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > max {
                return Err(HttpError::HttpRequestBodySize(Some(max as u64)));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The response body, refused beyond `max` bytes.
async fn read_incoming(mut body: hyper::body::Incoming, max: usize) -> Result<Bytes, HttpError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(HttpError::Hyper)?.into_data() {
            if buf.len() + data.len() > max {
                return Err(HttpError::HttpResponseBodySize(Some(max as u64)));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The public web roots, plus the certificates of `ca_file` when given.
/// Certificate errors are errors: there is no way to skip verification.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let pem = crate::data_dir::read_bounded(path, crate::data_dir::MAX_CA_FILE_BYTES)
            .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("the CA file {} is not PEM: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("the CA file {} holds a bad certificate: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("the CA file {} holds no certificate", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
