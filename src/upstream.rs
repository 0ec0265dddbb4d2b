//! The upstream client: one pooled hyper-util client for every provider, shared by the
//! request path, OAuth refreshes and probes.
//!
//! Owns connection setup (TCP with `connect_timeout`, rustls with webpki roots and the
//! `ring` provider, ALPN h2 and http/1.1; plain HTTP for local base URLs) and pooling. It does
//! not own timeouts on the exchange itself (see `proxy::attempt`, which bounds the wait for headers
//! and the stream), nor retries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::ServerConfig;

/// The connector: HTTP or HTTPS (rustls) over a tuned TCP connector.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The pooled client every attempt goes through. Cheap to clone.
pub type UpstreamClient = Client<Connector, Full<Bytes>>;

/// Builds the shared client.
pub fn client(cfg: &ServerConfig) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}
