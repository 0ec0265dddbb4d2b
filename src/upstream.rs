//! The upstream client: one pooled hyper-util client for every provider, shared by the
//! request path, OAuth refreshes and probes.
//!
//! Owns connection setup (TCP with `connect_timeout`, rustls with the `ring` provider, ALPN
//! h2 and http/1.1; plain HTTP for local base URLs), the roots TLS trusts (`[upstream]
//! roots`: webpki, the system store or both, plus `ca_file`, `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`), the egress proxy (SPEC §12: an HTTP `CONNECT` tunnel for https
//! upstreams, absolute-form requests for http ones, basic auth from the proxy URL, hosts in
//! `NO_PROXY` reached directly) and pooling, which keys connections by upstream, so tunnels
//! are reused like direct connections. It does not own timeouts on the exchange itself (see
//! `proxy::attempt`, which bounds the wait for headers and the stream), nor retries, nor
//! which proxy settings apply (see `config`: the file, then the environment).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Uri};
use http_body_util::Full;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::config::{Roots, ServerConfig, UpstreamConfig};

/// The connector: HTTP or HTTPS (rustls) over TCP, direct or through the egress proxy.
pub type Connector = hyper_rustls::HttpsConnector<EgressConnector>;

/// Largest extra CA file read.
const MAX_CA_BYTES: u64 = 4 * 1024 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pooled client every attempt goes through. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Client<Connector, Full<Bytes>>,
    /// Set when an http:// upstream may go through a proxy that wants credentials: those
    /// requests carry `Proxy-Authorization` (a CONNECT tunnel carries it once, at setup).
    forward_auth: Option<Arc<Matcher>>,
}

/// TCP to the upstream, or to the egress proxy that reaches it.
#[derive(Clone)]
pub struct EgressConnector {
    tcp: HttpConnector,
    proxy: Option<Arc<Matcher>>,
    /// Bounds the CONNECT exchange too (the TCP connect has its own bound).
    connect_timeout: Duration,
}

/// A connection made by [`EgressConnector`]: TCP to the upstream, a tunnel through the
/// proxy, or TCP to the proxy for absolute-form requests (`forward`).
pub struct EgressStream {
    io: TokioIo<TcpStream>,
    forward: bool,
}

/// Builds the shared client. Errors (an extra CA file that does not load, an empty system
/// store) name the file or setting.
pub fn client(cfg: &ServerConfig, upstream: &UpstreamConfig) -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(root_store(upstream)?)
    .with_no_client_auth();

    let proxy = (upstream.http_proxy.is_some() || upstream.https_proxy.is_some()).then(|| {
        let mut m = Matcher::builder().no(upstream.no_proxy.clone());
        if let Some(p) = &upstream.http_proxy {
            m = m.http(p.url.expose().to_owned());
        }
        if let Some(p) = &upstream.https_proxy {
            m = m.https(p.url.expose().to_owned());
        }
        Arc::new(m.build())
    });
    let forward_auth = upstream
        .http_proxy
        .as_ref()
        .filter(|p| p.url.expose().contains('@'))
        .and(proxy.clone());
    for (scheme, p) in [
        ("https", &upstream.https_proxy),
        ("http", &upstream.http_proxy),
    ] {
        if let Some(p) = p {
            // The host only: the URL may carry credentials.
            tracing::info!(upstreams = scheme, proxy = %p.host, from = %p.from, no_proxy = %upstream.no_proxy, "egress proxy in use");
        }
    }
    let egress = EgressConnector {
        tcp: http,
        proxy,
        connect_timeout: cfg.connect_timeout,
    };

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(egress);

    let inner = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https);
    Ok(UpstreamClient {
        inner,
        forward_auth,
    })
}

/// The roots upstream TLS trusts: the base set (`roots`), then every extra CA file and
/// directory.
fn root_store(u: &UpstreamConfig) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    if matches!(u.roots, Roots::Webpki | Roots::Both) {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if matches!(u.roots, Roots::Native | Roots::Both) {
        let found = rustls_native_certs::load_native_certs();
        if !found.errors.is_empty() {
            tracing::warn!(
                errors = found.errors.len(),
                first = %found.errors[0],
                "some certificates of the system store could not be read; using the rest"
            );
        }
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 && u.roots == Roots::Native {
            return Err("upstream.roots = \"native\": the system certificate store is empty or unreadable (install ca-certificates, or set roots = \"webpki\" or \"both\")".into());
        }
    }
    for f in &u.ca_files {
        for cert in read_ca_file(f)? {
            roots.add(cert).map_err(|e| {
                format!(
                    "extra CA file {} (upstream.ca_file or SSL_CERT_FILE): not a usable CA certificate: {e}",
                    f.display()
                )
            })?;
        }
    }
    if let Some(dir) = &u.ca_dir {
        let found = rustls_native_certs::load_certs_from_paths(None, Some(dir));
        if let Some(e) = found.errors.first() {
            return Err(format!(
                "SSL_CERT_DIR {}: cannot load the certificates there: {e}",
                dir.display()
            ));
        }
        roots.add_parsable_certificates(found.certs);
    }
    Ok(roots)
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use std::io::Read as _;
    let shown = path.display();
    let what = "extra CA file";
    let file = std::fs::File::open(path).map_err(|e| {
        format!("{what} {shown} (upstream.ca_file or SSL_CERT_FILE): cannot read: {e}")
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_CA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{what} {shown}: cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_CA_BYTES {
        return Err(format!("{what} {shown}: larger than 4 MiB"));
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {shown}: not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {shown}: no \"BEGIN CERTIFICATE\" block found (expected PEM CA certificates)"
        ));
    }
    Ok(certs)
}

// === impl UpstreamClient ===

impl UpstreamClient {
    /// Sends a request (hyper-util's `Client::request`, plus `Proxy-Authorization` on an
    /// http:// request that goes through a proxy with credentials).
    pub fn request(&self, mut req: Request<Full<Bytes>>) -> ResponseFuture {
        if let Some(m) = &self.forward_auth {
            if req.uri().scheme() == Some(&Scheme::HTTP) {
                if let Some(auth) = m.intercept(req.uri()).and_then(|i| i.basic_auth().cloned()) {
                    req.headers_mut()
                        .insert(http::header::PROXY_AUTHORIZATION, auth);
                }
            }
        }
        self.inner.request(req)
    }
}

// === impl EgressConnector ===

impl tower_service::Service<Uri> for EgressConnector {
    type Response = EgressStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<EgressStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // HttpConnector is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let via = self.proxy.as_ref().and_then(|m| m.intercept(&dst));
        let Some(via) = via else {
            let connecting = self.tcp.call(dst);
            return Box::pin(async move {
                Ok(EgressStream {
                    io: connecting.await?,
                    forward: false,
                })
            });
        };
        // The intercept's URI has no user info: safe to log.
        tracing::trace!(upstream = ?dst.host(), proxy = %via.uri(), "connecting through the egress proxy");
        if dst.scheme() == Some(&Scheme::HTTPS) {
            let mut tunnel = Tunnel::new(via.uri().clone(), self.tcp.clone());
            if let Some(auth) = via.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            let limit = self.connect_timeout;
            Box::pin(async move {
                let io = tokio::time::timeout(limit, tunnel.call(dst))
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the egress proxy did not open the tunnel within connect_timeout",
                        )
                    })??;
                Ok(EgressStream { io, forward: false })
            })
        } else {
            // http://: the connection goes to the proxy, and the client writes each request
            // in absolute form (`Connected::proxy`).
            let connecting = self.tcp.call(via.uri().clone());
            Box::pin(async move {
                Ok(EgressStream {
                    io: connecting.await?,
                    forward: true,
                })
            })
        }
    }
}

// === impl EgressStream ===

impl Connection for EgressStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.forward)
    }
}

impl Read for EgressStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for EgressStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
