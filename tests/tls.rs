//! TLS and the network around keygate (SPEC §12), over real sockets and real TLS: a test CA
//! made here (rcgen); keygate serving HTTPS (ALPN h2 and http/1.1, clear text refused
//! cleanly, certificate hot reload, a bad new pair kept out, mTLS, the handshake deadline, a
//! key file others can read); an https upstream trusted through `ca_file`; an egress proxy
//! written here (CONNECT tunnels, absolute-form forwarding, basic auth, `NO_PROXY`); and
//! `config check` showing the effective settings without credentials.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{Empty, Full};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use support::cli::{keygate as run_keygate, write_file};
use support::gateway::{ANT_KEY, GW};
use support::keygate::{post_messages, Keygate, Opts};
use support::logs::Capture;

/// keygate's log at TRACE, for the whole test binary.
fn logs() -> &'static Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(Capture::install)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// --- a test PKI ---------------------------------------------------------------------------

/// A CA that signs leaf certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

/// A leaf certificate and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA cert");
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses).
    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "keygate test");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.der.clone()).expect("CA root");
        r
    }
}

impl Leaf {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.der.clone()]
    }
    fn key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key")
    }
}

/// The server's files in a directory: `tls.crt`, `tls.key` (0600), `ca.pem`.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(ca: &Ca, leaf: &Leaf) -> Files {
        let f = Files {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        write_file(&f.path("ca.pem"), &ca.pem, 0o644);
        f.swap(leaf);
        f
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Replaces the pair as a deployment tool would: new files renamed into place.
    fn swap(&self, leaf: &Leaf) {
        write_file(&self.path("tls.crt.new"), &leaf.cert_pem, 0o644);
        write_file(&self.path("tls.key.new"), &leaf.key_pem, 0o600);
        std::fs::rename(self.path("tls.key.new"), self.path("tls.key")).expect("rename");
        std::fs::rename(self.path("tls.crt.new"), self.path("tls.crt")).expect("rename");
    }
    fn tls_config(&self, client_ca: Option<&Path>) -> String {
        let mut s = format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.path("tls.crt").display(),
            self.path("tls.key").display()
        );
        if let Some(ca) = client_ca {
            s.push_str(&format!("client_ca_file = \"{}\"\n", ca.display()));
        }
        s
    }
}

/// keygate with `[server.tls]` from `files` (plus `more` config).
async fn start_tls(files: &Files, client_ca: Option<&Path>, more: &str) -> Keygate {
    logs();
    Keygate::start(
        Opts::default()
            .config(format!("{more}\n{}", files.tls_config(client_ca)))
            .env("KEYGATE_TOKEN", GW),
    )
    .await
}

// --- clients ------------------------------------------------------------------------------

fn client_config(ca: &Ca, alpn: &[&[u8]], client_cert: Option<&Leaf>) -> rustls::ClientConfig {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca.roots());
    let mut c = match client_cert {
        Some(l) => b
            .with_client_auth_cert(l.chain(), l.key())
            .expect("client cert"),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c
}

/// One TLS connection to `addr` (as 127.0.0.1), its ALPN choice and the server's leaf.
struct Conn {
    alpn: Option<Vec<u8>>,
    leaf: CertificateDer<'static>,
    send: Sender,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn connect(addr: SocketAddr, cfg: rustls::ClientConfig) -> std::io::Result<Conn> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))??;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = session.peer_certificates().expect("server certificate")[0].clone();
    let io = hyper_util::rt::TokioIo::new(tls);
    let send = if alpn.as_deref() == Some(b"h2") {
        let (send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Sender::H2(send)
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Sender::H1(send)
    };
    Ok(Conn { alpn, leaf, send })
}

impl Conn {
    /// `GET /healthz` on this connection: the status, or the error's text.
    async fn healthz(&mut self) -> Result<StatusCode, String> {
        let req = Request::builder()
            .uri("https://127.0.0.1/healthz")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let fut = async {
            match &mut self.send {
                Sender::H1(s) => {
                    let mut req = req;
                    *req.uri_mut() = "/healthz".parse().expect("uri");
                    req.headers_mut()
                        .insert("host", "127.0.0.1".parse().expect("host"));
                    s.send_request(req).await.map(|r| r.status())
                }
                Sender::H2(s) => s.send_request(req).await.map(|r| r.status()),
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in 10 s".into()),
        }
    }
}

/// The leaf a new handshake sees, polled until `want` (or 10 s): reloads are polled.
async fn wait_for_leaf(addr: SocketAddr, cfg: &rustls::ClientConfig, want: &CertificateDer<'_>) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let c = connect(addr, cfg.clone()).await.expect("handshake");
        if &c.leaf == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "the new certificate was not picked up in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// --- the TLS listener ---------------------------------------------------------------------

#[tokio::test]
async fn an_sdk_like_client_gets_h2_by_alpn_and_http1_when_it_asks() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca, &ca.leaf(&["127.0.0.1", "localhost"]));
    let kg = start_tls(&files, None, "").await;
    let url = format!("https://localhost:{}/healthz", kg.addr.port());
    for version in [http::Version::HTTP_2, http::Version::HTTP_11] {
        // hyper-rustls sets the ALPN list from the versions enabled.
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config(&ca, &[], None))
            .https_only();
        let https = if version == http::Version::HTTP_2 {
            b.enable_all_versions().build()
        } else {
            b.enable_http1().build()
        };
        let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(
                Request::get(url.as_str())
                    .body(Empty::new())
                    .expect("request"),
            ),
        )
        .await
        .expect("answer in 10 s")
        .expect("answer");
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // A client that offers no ALPN at all gets HTTP/1.1.
    let mut c = connect(kg.addr, client_config(&ca, &[], None))
        .await
        .expect("handshake");
    assert_eq!(c.alpn, None);
    assert_eq!(c.healthz().await, Ok(StatusCode::OK));
}

#[tokio::test]
async fn clear_text_to_the_tls_port_fails_cleanly_and_tls_keeps_working() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca, &ca.leaf(&["127.0.0.1"]));
    let kg = start_tls(&files, None, "").await;
    let mut s = TcpStream::connect(kg.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("closed within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("https://"), "{text}");
    // A plain hyper client sees a clean error, not a hang.
    let plain = support::keygate::client();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        plain.request(support::keygate::request(
            Method::GET,
            &kg.url("/healthz"),
            &[],
            Bytes::new(),
        )),
    )
    .await
    .expect("within 10 s");
    assert_eq!(r.expect("an answer").status(), StatusCode::BAD_REQUEST);
    let mut c = connect(kg.addr, client_config(&ca, &[b"h2"], None))
        .await
        .expect("handshake");
    assert_eq!(c.healthz().await, Ok(StatusCode::OK));
}

#[tokio::test]
async fn a_swapped_certificate_reaches_new_handshakes_while_open_connections_go_on() {
    let ca = Ca::new("test CA");
    let first = ca.leaf(&["127.0.0.1"]);
    let files = Files::new(&ca, &first);
    let kg = start_tls(&files, None, "").await;
    let cfg = client_config(&ca, &[b"http/1.1"], None);
    let mut open = connect(kg.addr, cfg.clone()).await.expect("handshake");
    assert_eq!(open.leaf, first.der);
    assert_eq!(open.healthz().await, Ok(StatusCode::OK));
    let mut open_h2 = connect(kg.addr, client_config(&ca, &[b"h2"], None))
        .await
        .expect("handshake");
    assert_eq!(open_h2.healthz().await, Ok(StatusCode::OK));

    let second = ca.leaf(&["127.0.0.1"]);
    files.swap(&second);
    wait_for_leaf(kg.addr, &cfg, &second.der).await;
    // The connections opened before keep their session.
    assert_eq!(open.healthz().await, Ok(StatusCode::OK));
    assert_eq!(open_h2.healthz().await, Ok(StatusCode::OK));
    assert!(logs().text().contains("TLS certificate reloaded"));
}

#[tokio::test]
async fn a_bad_new_pair_keeps_the_old_one_and_says_why_without_the_key() {
    let ca = Ca::new("test CA");
    let good = ca.leaf(&["127.0.0.1"]);
    let files = Files::new(&ca, &good);
    let kg = start_tls(&files, None, "").await;
    let cfg = client_config(&ca, &[b"h2"], None);
    // A new certificate with a key that is not its own.
    let other = ca.leaf(&["127.0.0.1"]);
    let stray = ca.leaf(&["127.0.0.1"]);
    write_file(&files.path("tls.key"), &stray.key_pem, 0o600);
    write_file(&files.path("tls.crt"), &other.cert_pem, 0o644);
    let end = Instant::now() + Duration::from_secs(10);
    let path = files.path("tls.key").display().to_string();
    while !logs()
        .text()
        .lines()
        .any(|l| l.contains("keeping the last good certificate") && l.contains(&path))
    {
        assert!(
            Instant::now() < end,
            "no warning in 10 s:\n{}",
            logs().text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = connect(kg.addr, cfg.clone()).await.expect("handshake");
    assert_eq!(c.leaf, good.der, "the last good certificate is served");
    assert_eq!(c.healthz().await, Ok(StatusCode::OK));
    let key_body: String = stray.key_pem.lines().skip(1).take(1).collect();
    assert!(
        !logs().text().contains(&key_body),
        "key material in the log"
    );
    // Fixed on disk: picked up.
    files.swap(&other);
    wait_for_leaf(kg.addr, &cfg, &other.der).await;
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate_and_serves_one_with() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca, &ca.leaf(&["127.0.0.1"]));
    let clients = Ca::new("client CA");
    let client_ca = files.path("clients.pem");
    write_file(&client_ca, &clients.pem, 0o644);
    let kg = start_tls(&files, Some(&client_ca), "").await;

    // TLS 1.3: the client's side of the handshake may finish before the server refuses, so
    // the refusal shows on the first exchange at the latest.
    let refused = match connect(kg.addr, client_config(&ca, &[b"http/1.1"], None)).await {
        Err(_) => true,
        Ok(mut c) => c.healthz().await.is_err(),
    };
    assert!(refused, "served without a client certificate");
    // A certificate from another CA is refused too.
    let stranger = Ca::new("other CA").leaf(&["agent"]);
    let refused = match connect(kg.addr, client_config(&ca, &[b"h2"], Some(&stranger))).await {
        Err(_) => true,
        Ok(mut c) => c.healthz().await.is_err(),
    };
    assert!(refused, "served with a certificate of an unknown CA");
    let agent = clients.leaf(&["agent"]);
    for alpn in [b"h2".as_slice(), b"http/1.1"] {
        let mut c = connect(kg.addr, client_config(&ca, &[alpn], Some(&agent)))
            .await
            .expect("handshake with a client certificate");
        assert_eq!(c.healthz().await, Ok(StatusCode::OK));
    }
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_at_the_header_timeout() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca, &ca.leaf(&["127.0.0.1"]));
    let kg = start_tls(&files, None, "").await;
    let started = Instant::now();
    // The first bytes of a TLS record header, then nothing; a client that sends nothing; and
    // clients that finish the handshake and then send nothing.
    let mut partial = TcpStream::connect(kg.addr).await.expect("connect");
    partial.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    let mut silent = TcpStream::connect(kg.addr).await.expect("connect");
    // Handshakes done, then nothing: no h2 preface, no HTTP/1.1 request head.
    let mut after = Vec::new();
    for alpn in [b"h2".as_slice(), b"http/1.1"] {
        let tcp = TcpStream::connect(kg.addr).await.expect("connect");
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client_config(&ca, &[alpn], None)))
            .connect(name, tcp)
            .await
            .expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        after.push(tls);
    }
    for s in [&mut partial, &mut silent] {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(45), s.read(&mut buf))
            .await
            .expect("closed within 45 s");
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "closed without an answer: {r:?}"
        );
    }
    for s in &mut after {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(45), s.read_to_end(&mut buf))
            .await
            .expect("closed within 45 s");
        // An HTTP/1.1 connection may get a 408 first; an h2 one nothing but the close.
        let text = String::from_utf8_lossy(&buf);
        assert!(
            r.is_err() || buf.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(25) && took <= Duration::from_secs(40),
        "closed after {took:?}, expected the 30 s header timeout"
    );
    // The listener kept serving meanwhile.
    let mut c = connect(kg.addr, client_config(&ca, &[b"h2"], None))
        .await
        .expect("handshake");
    assert_eq!(c.healthz().await, Ok(StatusCode::OK));
}

#[tokio::test]
async fn serve_exits_1_naming_a_key_file_others_can_read_or_a_pair_that_does_not_load() {
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let files = Files::new(&ca, &leaf);
    let state = tempfile::tempdir().expect("state");
    let cfg = files.path("keygate.toml");
    write_file(&cfg, &files.tls_config(None), 0o644);
    let args = [
        "--config",
        cfg.to_str().expect("utf-8"),
        "serve",
        "--listen",
        "127.0.0.1:0",
    ];
    let key = files.path("tls.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let run = run_keygate(state.path(), &args, &[], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&key.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
    assert!(!run.stderr.contains("PRIVATE KEY"), "{}", run.stderr);

    // Owner-only, but the certificate file holds no certificate.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    write_file(&files.path("tls.crt"), "not a certificate\n", 0o644);
    let run = run_keygate(state.path(), &args, &[], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let crt = files.path("tls.crt").display().to_string();
    assert!(run.stderr.contains(&crt), "{}", run.stderr);

    // A key that is not the certificate's.
    write_file(&files.path("tls.crt"), &leaf.cert_pem, 0o644);
    write_file(&key, &ca.leaf(&["x"]).key_pem, 0o600);
    let run = run_keygate(state.path(), &args, &[], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("does not match"), "{}", run.stderr);
}

// --- upstream TLS and the egress proxy ----------------------------------------------------

/// An https upstream answering every request with a small Anthropic message; counts
/// requests and connections.
struct TlsUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start(leaf: &Leaf) -> TlsUpstream {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(leaf.chain(), leaf.key())
            .expect("upstream cert");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, c) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let r = r.clone();
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let body = serde_json::json!({
                                "id": "msg_tls", "type": "message", "role": "assistant",
                                "content": [{"type": "text", "text": "over tls"}],
                                "usage": {"input_tokens": 1, "output_tokens": 1}
                            })
                            .to_string();
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });
        TlsUpstream {
            addr,
            requests,
            connections,
            task,
        }
    }
}

fn anthropic_at(base: &str) -> String {
    format!("[providers.anthropic]\nbase_url = \"{base}\"\n")
}

#[tokio::test]
async fn an_https_upstream_is_reached_when_ca_file_trusts_its_ca_and_refused_when_not() {
    logs();
    let ca = Ca::new("upstream CA");
    let upstream = TlsUpstream::start(&ca.leaf(&["127.0.0.1", "localhost"])).await;
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("corp-ca.pem");
    write_file(&ca_file, &ca.pem, 0o644);
    let base = format!("https://localhost:{}", upstream.addr.port());

    let trusted = Keygate::start(
        Opts::default()
            .config(format!(
                "{}[upstream]\nca_file = \"{}\"\n",
                anthropic_at(&base),
                ca_file.display()
            ))
            .env("KEYGATE_TOKEN", GW)
            .env("ANTHROPIC_API_KEY", ANT_KEY),
    )
    .await;
    let a = post_messages(&trusted, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(a.text().contains("over tls"));
    // SSL_CERT_FILE adds roots the same way.
    let by_env = Keygate::start(
        Opts::default()
            .config(anthropic_at(&base))
            .env("KEYGATE_TOKEN", GW)
            .env("ANTHROPIC_API_KEY", ANT_KEY)
            .env("SSL_CERT_FILE", ca_file.to_str().expect("utf-8")),
    )
    .await;
    let a = post_messages(&by_env, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());

    let untrusted = Keygate::start(
        Opts::default()
            .config(anthropic_at(&base))
            .env("KEYGATE_TOKEN", GW)
            .env("ANTHROPIC_API_KEY", ANT_KEY),
    )
    .await;
    let seen = upstream.requests.load(Ordering::SeqCst);
    let a = post_messages(&untrusted, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert!(a.json().get("error").is_some(), "{}", a.text());
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        seen,
        "no request got through"
    );
    let h =
        support::keygate::send(Method::GET, &untrusted.url("/healthz"), &[], Bytes::new()).await;
    assert_eq!(h.status, StatusCode::OK, "keygate keeps serving");
}

#[tokio::test]
async fn a_ca_file_that_does_not_load_stops_the_start_naming_it() {
    let state = tempfile::tempdir().expect("state");
    let bad = state.path().join("corp-ca.pem");
    write_file(&bad, "no certificates here\n", 0o644);
    let cfg = state.path().join("keygate.toml");
    write_file(
        &cfg,
        &format!("[upstream]\nca_file = \"{}\"\n", bad.display()),
        0o644,
    );
    let run = run_keygate(
        state.path(),
        &[
            "--config",
            cfg.to_str().expect("utf-8"),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
        "",
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&bad.display().to_string()),
        "{}",
        run.stderr
    );
}

/// An egress proxy written for the test: `CONNECT host:port` opens a tunnel to
/// 127.0.0.1:port whatever the host (so `upstream.invalid` is reachable only through it);
/// any other request is answered by the proxy itself, with its request line recorded.
/// Requires `Proxy-Authorization` when `auth` is set (407 otherwise).
struct EgressProxy {
    addr: SocketAddr,
    tunnels: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    forwarded: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EgressProxy {
    async fn start(auth: Option<&str>) -> EgressProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tunnels = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let want = auth.map(|a| format!("Basic {}", b64(a)));
        let (t, r, f) = (tunnels.clone(), refused.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (t, r, f, want) = (t.clone(), r.clone(), f.clone(), want.clone());
                tokio::spawn(async move {
                    loop {
                        let Some(head) = read_head(&mut client).await else {
                            return;
                        };
                        if let Some(w) = &want {
                            let sent = head.lines().any(|l| {
                                l.split_once(':').is_some_and(|(n, v)| {
                                    n.eq_ignore_ascii_case("proxy-authorization") && v.trim() == w
                                })
                            });
                            if !sent {
                                r.fetch_add(1, Ordering::SeqCst);
                                let _ = client
                                    .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                                    .await;
                                return;
                            }
                        }
                        let line = head.lines().next().unwrap_or_default().to_owned();
                        if let Some(target) = line.strip_prefix("CONNECT ") {
                            let port = target
                                .split_whitespace()
                                .next()
                                .and_then(|hp| hp.rsplit_once(':'))
                                .and_then(|(_, p)| p.parse::<u16>().ok())
                                .expect("CONNECT host:port");
                            let Ok(mut up) = TcpStream::connect(("127.0.0.1", port)).await else {
                                return;
                            };
                            t.fetch_add(1, Ordering::SeqCst);
                            let _ = client
                                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                                .await;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                            return;
                        }
                        f.lock().unwrap().push(line);
                        let len = support::raw::content_length(head.as_bytes());
                        let mut body = vec![0u8; len];
                        if client.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let answer = r#"{"id":"msg_fwd","type":"message","content":[]}"#;
                        let _ = client
                            .write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                                    answer.len()
                                )
                                .as_bytes(),
                            )
                            .await;
                    }
                });
            }
        });
        EgressProxy {
            addr,
            tunnels,
            refused,
            forwarded,
            task,
        }
    }
}

/// A request head (up to the blank line, at most 16 KiB); `None` at EOF.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return None;
        }
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const PROXY_USER: &str = "egress-user";
const PROXY_PASS: &str = "pw-9f8e7d6c5b4a-secret";

#[tokio::test]
async fn an_https_upstream_is_reached_through_the_proxy_with_pooled_tunnels_and_no_proxy_bypasses()
{
    let logs = logs();
    let ca = Ca::new("corp CA");
    // `upstream.invalid` never resolves: only the proxy can reach it.
    let upstream = TlsUpstream::start(&ca.leaf(&["upstream.invalid", "127.0.0.1"])).await;
    let proxy = EgressProxy::start(Some(&format!("{PROXY_USER}:{PROXY_PASS}"))).await;
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("corp-ca.pem");
    write_file(&ca_file, &ca.pem, 0o644);
    let proxy_url = format!("http://{PROXY_USER}:{PROXY_PASS}@{}", proxy.addr);
    let config = |host: &str| {
        format!(
            "{}[upstream]\nca_file = \"{}\"\n",
            anthropic_at(&format!("https://{host}:{}", upstream.addr.port())),
            ca_file.display()
        )
    };

    let kg = Keygate::start(
        Opts::default()
            .config(config("upstream.invalid"))
            .env("KEYGATE_TOKEN", GW)
            .env("ANTHROPIC_API_KEY", ANT_KEY)
            .env("HTTPS_PROXY", &proxy_url),
    )
    .await;
    for _ in 0..3 {
        let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert!(a.text().contains("over tls"));
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        proxy.tunnels.load(Ordering::SeqCst),
        1,
        "one tunnel, reused by the pool"
    );
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 0);

    // The same upstream by address, with NO_PROXY naming it: direct, no tunnel.
    let direct = Keygate::start(
        Opts::default()
            .config(config("127.0.0.1"))
            .env("KEYGATE_TOKEN", GW)
            .env("ANTHROPIC_API_KEY", ANT_KEY)
            .env("https_proxy", &proxy_url)
            .env("NO_PROXY", "example.com, 127.0.0.0/8"),
    )
    .await;
    let a = post_messages(&direct, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(
        proxy.tunnels.load(Ordering::SeqCst),
        1,
        "NO_PROXY bypasses the proxy"
    );

    // Wrong credentials: the proxy refuses, keygate answers 502 and keeps serving.
    let wrong = Keygate::start(
        Opts::default()
            .config(format!(
                "{}proxy_env = \"KEYGATE_EGRESS\"\n",
                config("upstream.invalid")
            ))
            .env("KEYGATE_TOKEN", GW)
            .env("ANTHROPIC_API_KEY", ANT_KEY)
            .env(
                "KEYGATE_EGRESS",
                &format!("http://{PROXY_USER}:wrong@{}", proxy.addr),
            )
            .env("HTTPS_PROXY", &proxy_url),
    )
    .await;
    let a = post_messages(&wrong, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert_eq!(
        proxy.refused.load(Ordering::SeqCst),
        1,
        "proxy_env wins over HTTPS_PROXY"
    );

    let text = logs.text();
    assert!(
        text.contains("connecting through the egress proxy"),
        "the log is captured at TRACE"
    );
    for secret in [
        PROXY_PASS.to_owned(),
        b64(&format!("{PROXY_USER}:{PROXY_PASS}")),
        "wrong@".to_owned(),
    ] {
        assert!(!text.contains(&secret), "proxy credentials in the log");
    }
}

#[tokio::test]
async fn an_http_upstream_goes_through_the_proxy_in_absolute_form_with_its_credentials() {
    logs();
    let proxy = EgressProxy::start(Some("fwd:fwd-pass-0001")).await;
    let kg = Keygate::start(
        Opts::default()
            .config(anthropic_at("http://plain-upstream.invalid:8080"))
            .env("KEYGATE_TOKEN", GW)
            .env("ANTHROPIC_API_KEY", ANT_KEY)
            .env(
                "HTTP_PROXY",
                &format!("http://fwd:fwd-pass-0001@{}", proxy.addr),
            ),
    )
    .await;
    for _ in 0..2 {
        let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    }
    let lines = proxy.forwarded.lock().unwrap().clone();
    assert_eq!(
        lines,
        vec!["POST http://plain-upstream.invalid:8080/v1/messages HTTP/1.1".to_owned(); 2]
    );
    assert_eq!(
        proxy.refused.load(Ordering::SeqCst),
        0,
        "credentials on every request"
    );
    assert_eq!(proxy.tunnels.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_proxy_password_in_the_file_is_refused_without_echoing_it() {
    let err = keygate::config::Config::from_toml(
        "[upstream]\nproxy = \"http://me:hunter2-secret@proxy.internal:3128\"\n",
        None,
        &|_| None,
    )
    .expect_err("refused")
    .to_string();
    assert!(err.contains("upstream.proxy"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // A user without a password, or none at all, is fine.
    for ok in ["http://me@proxy.internal:3128", "proxy.internal:3128"] {
        keygate::config::Config::from_toml(
            &format!("[upstream]\nproxy = \"{ok}\"\n"),
            None,
            &|_| None,
        )
        .expect("accepted");
    }
    let err =
        keygate::config::Config::from_toml("[upstream]\nroots = \"system\"\n", None, &|_| None)
            .expect_err("refused")
            .to_string();
    assert!(err.contains("upstream.roots"), "{err}");
    let err = keygate::config::Config::from_toml(
        "[server.tls]\ncert_file = \"/etc/keygate/tls.crt\"\n",
        None,
        &|_| None,
    )
    .expect_err("refused")
    .to_string();
    assert!(err.contains("server.tls.key_file"), "{err}");
}

#[tokio::test]
async fn config_check_prints_tls_and_egress_without_credentials() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca, &ca.leaf(&["127.0.0.1"]));
    let state = tempfile::tempdir().expect("state");
    let cfg = files.path("keygate.toml");
    write_file(
        &cfg,
        &format!(
            "{}\n[upstream]\nroots = \"both\"\nca_file = \"{}\"\n",
            files.tls_config(None),
            files.path("ca.pem").display()
        ),
        0o644,
    );
    let run = run_keygate(
        state.path(),
        &["--config", cfg.to_str().expect("utf-8"), "config", "check"],
        &[
            (
                "HTTPS_PROXY",
                &format!("http://{PROXY_USER}:{PROXY_PASS}@proxy.internal:3128"),
            ),
            ("NO_PROXY", "localhost,10.0.0.0/8"),
        ],
        "",
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(
        out.contains(&files.path("tls.crt").display().to_string()),
        "{out}"
    );
    assert!(out.contains("proxy.internal:3128"), "{out}");
    assert!(out.contains("HTTPS_PROXY"), "{out}");
    assert!(out.contains("10.0.0.0/8"), "{out}");
    assert!(out.contains("both"), "{out}");
    assert!(
        !out.contains(PROXY_PASS) && !out.contains(PROXY_USER),
        "{out}"
    );
}

#[tokio::test]
async fn the_admin_listener_speaks_tls_too() {
    logs();
    let ca = Ca::new("test CA");
    let files = Files::new(&ca, &ca.leaf(&["127.0.0.1"]));
    let env = keygate::credentials::env::EnvSnapshot::from_pairs(vec![(
        "KEYGATE_TOKEN".to_owned(),
        GW.to_owned(),
    )]);
    let main = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (main_addr, admin_addr) = (
        main.local_addr().expect("addr"),
        admin.local_addr().expect("addr"),
    );
    let config = keygate::config::Config::from_toml(
        &format!(
            "[admin]\nlisten = \"{admin_addr}\"\n{}",
            files.tls_config(None)
        ),
        None,
        &|k| env.get(k).map(str::to_owned),
    )
    .expect("config");
    let state_dir = tempfile::tempdir().expect("state");
    let state =
        keygate::build_state(config, state_dir.path().to_owned(), env, &main_addr).expect("state");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(keygate::run(
        state,
        keygate::Listeners {
            main,
            admin: Some(admin),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    for addr in [main_addr, admin_addr] {
        let mut c = connect(addr, client_config(&ca, &[b"h2"], None))
            .await
            .expect("handshake");
        assert_eq!(c.alpn.as_deref(), Some(b"h2".as_slice()));
        assert_eq!(c.healthz().await, Ok(StatusCode::OK));
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

#[tokio::test]
async fn sighup_re_reads_the_certificate_and_keeps_serving() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca, &ca.leaf(&["127.0.0.1"]));
    let state = tempfile::tempdir().expect("state");
    let served = support::served::Served::start(state.path(), &files.tls_config(None));
    assert!(
        served.wait_log("keygate listening").await,
        "{}",
        served.log.lock().unwrap()
    );
    served.signal("-HUP");
    assert!(
        served.wait_log("TLS certificate reloaded").await,
        "{}",
        served.log.lock().unwrap()
    );
    let mut c = connect(served.addr, client_config(&ca, &[b"http/1.1"], None))
        .await
        .expect("handshake after SIGHUP");
    assert_eq!(c.healthz().await, Ok(StatusCode::OK));
}

#[test]
fn proxy_credentials_are_not_in_the_config_debug_output() {
    let env = [(
        "HTTPS_PROXY",
        format!("http://{PROXY_USER}:{PROXY_PASS}@proxy.internal:3128"),
    )];
    let cfg = keygate::config::Config::from_toml("", None, &|k| {
        env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })
    .expect("config");
    let https = cfg
        .upstream
        .https_proxy
        .as_ref()
        .expect("proxy from HTTPS_PROXY");
    assert_eq!(https.host, "proxy.internal:3128");
    assert_eq!(https.from, "HTTPS_PROXY");
    assert!(
        cfg.upstream.http_proxy.is_none(),
        "HTTPS_PROXY is for https upstreams only"
    );
    let shown = format!("{cfg:?}");
    assert!(!shown.contains(PROXY_PASS), "{shown}");
}
