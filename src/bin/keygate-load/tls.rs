//! The `tls` scenario (SPEC §12, issue 15): TLS on both sides, keygate against nginx doing
//! the same job.
//!
//! A test CA and a certificate for `127.0.0.1`/`localhost` are made with the `openssl` CLI
//! in a temporary directory. The mock serves HTTPS with it; keygate listens with
//! `[server.tls]` and trusts the CA by `[upstream] ca_file`; nginx (the Debian
//! `nginx-light`; the scenario fails saying how to install it) listens with `ssl` on the
//! same pair and proxies to the mock over TLS (`proxy_ssl_verify` against the CA,
//! `proxy_ssl_session_reuse`, upstream `keepalive`, `proxy_buffering off`). The load client
//! trusts the CA and keeps its connections. JSON and SSE answers are measured each in four
//! alternating slices (keygate, nginx, nginx, keygate); CPU is keygate's threads, and
//! nginx's master and workers summed (`schedstat`, ns). The mock counts the connections it
//! accepts and the TLS handshakes that resumed a session, so reuse toward the upstream shows
//! as new connections per 1 000 requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

use super::load::{self, LoadClient, Run, Spec};
use super::procs::{self, KeygateOpts, Proc};
use super::{round, Args, Plan, CHAT_BODY};

/// A rustls acceptor for the mock (`--tls-cert`, `--tls-key`).
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("tls: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("tls: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The scenario's files: CA, server pair, configs; removed when dropped.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e} (apt-get install -y openssl)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A test CA (`ca.pem`) and a P-256 pair for `127.0.0.1` and `localhost` (`srv.pem`,
/// `srv.key`, owner-only as keygate requires).
fn make_certs(dir: &Path) -> Result<(), String> {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .map_err(|e| format!("ext.cnf: {e}"))?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=keygate-load test CA",
    ]);
    openssl(dir, &ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    )?;
    std::fs::set_permissions(
        dir.join("srv.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|e| format!("chmod srv.key: {e}"))
}

/// A running nginx (master and workers), stopped by SIGTERM to the master (then SIGKILL).
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn bin() -> Result<PathBuf, String> {
        for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
            if Path::new(p).exists() {
                return Ok(PathBuf::from(p));
            }
        }
        Err("nginx not found: the tls scenario compares keygate with nginx; install it with `apt-get install -y nginx-light`".into())
    }

    fn start(dir: &Path, upstream: SocketAddr) -> Result<Nginx, String> {
        let bin = Self::bin()?;
        // A free port: nginx cannot report one it picked itself.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let d = dir.display();
        let user = if rustix::process::geteuid().is_root() {
            "user root root;\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log {d}/nginx-access.log combined buffer=64k flush=1s;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               upstream mock {{ server {upstream}; keepalive 64; }}\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n\
                 ssl_certificate {d}/srv.pem;\n    ssl_certificate_key {d}/srv.key;\n\
                 keepalive_requests 100000;\n\
                 location /openai/ {{\n      proxy_pass https://mock/;\n\
                   proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
                   proxy_ssl_trusted_certificate {d}/ca.pem;\n      proxy_ssl_verify on;\n\
                   proxy_ssl_name localhost;\n      proxy_ssl_session_reuse on;\n\
                   proxy_buffering off;\n    }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).map_err(|e| format!("nginx.conf: {e}"))?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn nginx: {e}"))?;
        let mut n = Nginx {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(n.addr).is_err() {
            if let Ok(Some(status)) = n.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
                return Err(format!("nginx exited ({status}): {log}"));
            }
            if tokio::time::Instant::now() > deadline {
                return Err("nginx did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    }

    /// CPU seconds of the master and its workers.
    fn cpu_secs(&self) -> f64 {
        let master = self.child.id();
        let mut pids = vec![master];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                // Field 4 (ppid) follows the command name in parentheses.
                let ppid = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u32>().ok());
                if ppid == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids.into_iter().map(procs::cpu_secs_fine).sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        for _ in 0..250 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mock's `/__stats` over TLS.
async fn mock_stats(client: &LoadClient, mock: SocketAddr) -> Result<Value, String> {
    let uri: http::Uri = format!("https://{mock}/__stats")
        .parse()
        .map_err(|e| format!("uri: {e}"))?;
    let mut r = http::Request::new(http_body_util::Full::new(Bytes::new()));
    *r.uri_mut() = uri;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(r))
        .await
        .map_err(|_| "stats: timeout".to_owned())?
        .map_err(|e| format!("stats: {e}"))?;
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| format!("stats body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("stats json: {e}"))
}

/// One target's totals over its slices.
#[derive(Default)]
struct Side {
    run: Run,
    cpu: f64,
    connections: u64,
    resumed: u64,
}

/// `tls`: see the module docs.
pub(crate) fn tls(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    plan: &Plan,
) -> Result<Vec<Value>, String> {
    // nginx first: without it the scenario has nothing to compare.
    Nginx::bin()?;
    let dir = Dir(std::env::temp_dir().join(format!("keygate-load-tls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("mkdir: {e}"))?;
    make_certs(&dir.0)?;
    let d = dir.0.display();
    let mock = Proc::helper(
        "mock",
        &[
            "--mock".to_owned(),
            "--tls-cert".to_owned(),
            format!("{d}/srv.pem"),
            "--tls-key".to_owned(),
            format!("{d}/srv.key"),
        ],
    )?;
    let extra = format!(
        "[server.tls]\ncert_file = \"{d}/srv.pem\"\nkey_file = \"{d}/srv.key\"\n\n[upstream]\nca_file = \"{d}/ca.pem\"\n"
    );
    let kg = Proc::keygate(&KeygateOpts {
        bin: args.keygate_bin.as_deref(),
        log: &args.keygate_log,
        log_format: &args.keygate_log_format,
        upstream: mock.addr,
        extra_toml: &extra,
        env: vec![("OPENAI_API_KEY".to_owned(), "sk-ok-tls-0001".to_owned())],
        profiles: None,
        https: true,
    })?;
    let nginx = Nginx::start(&dir.0, mock.addr)?;

    let mut roots = rustls::RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(dir.0.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?
    {
        roots
            .add(c.map_err(|e| format!("ca.pem: {e}"))?)
            .map_err(|e| format!("ca.pem: {e}"))?;
    }
    let client = load::client_with(roots);
    let spec_for = |port: u16, mode: &'static str| -> Result<Spec, String> {
        Ok(Spec {
            uri: format!("https://127.0.0.1:{port}/openai/v1/chat/completions")
                .parse()
                .map_err(|e| format!("uri: {e}"))?,
            mode,
            body: Bytes::from_static(CHAT_BODY.as_bytes()),
            delay_ms: 0,
        })
    };
    let mut out = Vec::new();
    for mode in ["json", "sse"] {
        let targets = [
            ("keygate", spec_for(kg.addr.port(), mode)?),
            ("nginx", spec_for(nginx.addr.port(), mode)?),
        ];
        // Warm-up: every connection (client → proxy → mock) opened and its TLS session made.
        for (_, s) in &targets {
            let w = rt.block_on(load::closed_loop(
                &client,
                s,
                plan.conc,
                plan.max,
                plan.warmup,
            ));
            if w.ok == 0 {
                return Err(format!("{mode} warm-up failed: {:?}", w.first_error));
            }
        }
        let mut sides = [Side::default(), Side::default()];
        let slice = (plan.dur / 2).max(Duration::from_millis(100));
        for i in [0usize, 1, 1, 0] {
            let before = rt.block_on(mock_stats(&client, mock.addr))?;
            let c0 = if i == 0 {
                kg.cpu_secs_fine()
            } else {
                nginx.cpu_secs()
            };
            let run = rt.block_on(load::closed_loop(
                &client,
                &targets[i].1,
                plan.conc,
                plan.max,
                slice,
            ));
            let c1 = if i == 0 {
                kg.cpu_secs_fine()
            } else {
                nginx.cpu_secs()
            };
            let after = rt.block_on(mock_stats(&client, mock.addr))?;
            let delta = |k: &str| {
                after[k]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(before[k].as_u64().unwrap_or(0))
            };
            let s = &mut sides[i];
            s.cpu += c1 - c0;
            // The stats call itself is one new connection of the harness's own each time
            // only when the pool dropped it; it is not the proxy's.
            s.connections += delta("connections");
            s.resumed += delta("tls_resumed");
            s.run.append_slice(run);
        }
        let per_1k = |s: &Side| s.cpu * 1000.0 / s.run.ok.max(1) as f64;
        for (i, (name, _)) in targets.iter().enumerate() {
            let s = &mut sides[i];
            let mut m = json!({
                "scenario": "tls",
                "target": name,
                "mode": mode,
                "concurrency": plan.conc,
                "requests": s.run.total(),
                "success_rate": s.run.success_rate(),
                "rps": round(s.run.rps(), 1),
                "cpu_s_per_1k": round(per_1k(s), 4),
                "upstream_new_connections": s.connections,
                "upstream_new_connections_per_1k": round(s.connections as f64 * 1000.0 / s.run.total().max(1) as f64, 3),
                "upstream_tls_resumed": s.resumed,
                "p50_ms": round(s.run.lat_ms(0.5), 3),
                "p99_ms": round(s.run.lat_ms(0.99), 3),
            });
            if let Some(e) = &s.run.first_error {
                m["first_error"] = json!(e);
            }
            out.push(m);
        }
        out.push(json!({
            "scenario": "tls",
            "target": "keygate/nginx",
            "mode": mode,
            "cpu_ratio": round(per_1k(&sides[0]) / per_1k(&sides[1]).max(1e-9), 3),
        }));
    }
    // The mock's handshakes over the whole run (warm-ups included): resumption shows here.
    let total = rt.block_on(mock_stats(&client, mock.addr))?;
    out.push(json!({
        "scenario": "tls",
        "target": "mock",
        "connections_since_last_reset": total["connections"],
        "tls_resumed_since_last_reset": total["tls_resumed"],
    }));
    drop(client);
    drop(nginx);
    drop(kg);
    drop(mock);
    drop(dir);
    Ok(out)
}
