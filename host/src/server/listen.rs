//! Where `host serve` listens: plain TCP on loopback, or TLS (rustls) on any
//! address, and how each connection is served. TLS handshakes run in tasks
//! of their own, bounded in time, so a client that never finishes one holds
//! up no one else; a client that sends its request headers slowly, or
//! nothing, is cut off after the header-read timeout, one that goes quiet
//! after the idle timeout; past the connection cap a connection is closed
//! as soon as it is accepted; the descriptor limit is raised at start.
//!
//! Invariant: no client holds a connection, a descriptor or a task for
//! longer than these bounds without sending or receiving.

use axum::serve::Listener;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A listener serving plain TCP or TLS.
#[derive(Debug)]
pub enum ServerListener {
    /// Plain HTTP (loopback only).
    Plain(TcpListener, SocketAddr),
    /// HTTPS: connections whose handshake finished.
    Tls(mpsc::Receiver<(Conn, SocketAddr)>, SocketAddr),
}

/// One accepted connection.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Loads a PEM certificate chain and private key into a rustls server config.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let read = |p: &Path| {
        crate::data_dir::read_bounded(p, crate::data_dir::MAX_CA_FILE_BYTES)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{} is not a PEM private key: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!("the certificate in {} and the key in {} do not fit: {e}", cert.display(), key.display())
        })?;
    Ok(Arc::new(config))
}

impl ServerListener {
    /// Listens on `tcp`, with TLS when `tls` is given.
    pub fn new(tcp: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<Self> {
        let addr = tcp.local_addr()?;
        let Some(config) = tls else { return Ok(ServerListener::Plain(tcp, addr)) };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((Conn::Tls(Box::new(tls)), peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(ServerListener::Tls(rx, addr))
    }
}

impl Listener for ServerListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self {
            ServerListener::Plain(tcp, _) => loop {
                match TcpListener::accept(tcp).await {
                    Ok((s, peer)) => {
                        let _ = s.set_nodelay(true);
                        return (Conn::Plain(s), peer);
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            ServerListener::Tls(rx, _) => match rx.recv().await {
                Some(x) => x,
                // The acceptor task is gone: nothing more will come.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            ServerListener::Plain(_, a) | ServerListener::Tls(_, a) => Ok(*a),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A request's headers must have arrived this long after it began
    /// (the first request, and each one after on a kept-alive connection).
    pub header_timeout: Duration,
    /// A connection that neither sends nor receives a byte for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed as they are accepted.
    pub max_connections: usize,
}

/// Raises this process's soft limit on open descriptors to its hard
/// limit; returns the limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open-file limit to {:?}: {e}", limit.maximum);
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Serves `router` on every connection `listener` accepts, within `limits`,
/// until `stop` completes; then lets each connection finish what it is
/// answering and waits for them all.
pub async fn serve_connections(
    mut listener: ServerListener,
    router: axum::Router,
    limits: ConnLimits,
    stop: impl std::future::Future<Output = ()>,
) {
    use axum::serve::Listener as _;
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let mut refused: u64 = 0;
    tokio::pin!(stop);
    loop {
        let (io, peer) = tokio::select! {
            c = listener.accept() => c,
            () = &mut stop => break,
        };
        while conns.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the cap: closed at once, so it holds nothing.
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    "{refused} connection(s) refused: {} are open (--max-connections)",
                    limits.max_connections
                );
            }
            drop(io);
            continue;
        };
        let router = router.clone();
        let mut stop = stopping.subscribe();
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(Peer(peer)));
                let mut router = router.clone();
                // The router is always ready.
                tower_service::Service::call(&mut router, req)
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let io = hyper_util::rt::TokioIo::new(Idle::new(io, limits.idle_timeout));
            let conn = http.serve_connection(io, service);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
    let _ = stopping.send(true);
    while conns.join_next().await.is_some() {}
}

/// A connection that fails once nothing has been read or written for
/// `idle`.
struct Idle {
    io: Conn,
    idle: Duration,
    quiet: Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn new(io: Conn, idle: Duration) -> Self {
        Idle { io, idle, quiet: Box::pin(tokio::time::sleep(idle)) }
    }

    fn active(&mut self) {
        let at = tokio::time::Instant::now() + self.idle;
        self.quiet.as_mut().reset(at);
    }

    /// On a pending read or write: an error once the quiet went on too long.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.quiet.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no byte in either direction for {:?}", self.idle),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Idle {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx),
        }
    }
}

impl AsyncWrite for Idle {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if r.as_ref().is_ok_and(|n| *n > 0) {
                    this.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
