//! The accept loops and graceful shutdown.
//!
//! Owns listening sockets, one task per connection served by hyper's HTTP/1.1 or HTTP/2
//! (h2c by prior knowledge) connection, chosen by peeking at the first bytes — or, with
//! `[server.tls]`, by ALPN after the TLS handshake (see `handshake`), on both listeners —,
//! connection-level limits (header size, header read
//! timeout, h2 stream count), and draining: on shutdown, stop accepting, let in-flight
//! requests and streams finish up to `shutdown_grace`, then close what is left. It does not
//! own what a request does (see `proxy` and `admin`).

mod accept;
mod handshake;
mod repoll;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::admin;
use crate::proxy::handle;
use crate::state::AppState;
pub use accept::{default_max_connections, max_connections, raise_nofile_limit};
use accept::{Accepted, Acceptor};
use repoll::Repoll;

/// How often credential files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Pre-bound listeners (tests bind `127.0.0.1:0` and read the port back).
pub struct Listeners {
    /// The proxy listener.
    pub main: TcpListener,
    /// The optional admin listener (`[admin] listen`).
    pub admin: Option<TcpListener>,
}

/// Serves until `shutdown` resolves, then drains for at most `shutdown_grace`.
pub async fn run(state: Arc<AppState>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    let grace = state.config.server.shutdown_grace;
    let graceful = GracefulShutdown::new();
    // Credential files are re-read within 2 s of a change (SPEC §6).
    let (stop_watch, watch_rx) = tokio::sync::watch::channel(false);
    let conn_stop = watch_rx.clone();
    let watcher = tokio::spawn(state.registry.clone().watch(RELOAD_POLL, watch_rx.clone()));
    // Certificate files are polled like the state files (SPEC §12).
    let tls_watcher = state
        .tls
        .clone()
        .map(|t| tokio::spawn(t.watch(RELOAD_POLL, watch_rx.clone())));
    // Cluster mode: the shared state is loaded before the first request (SPEC §10).
    // The link stops after the drain, so windows opened by the last streams are shared.
    let (link_stop, link_rx) = tokio::sync::watch::channel(false);
    let link = state.cluster.clone().map(|c| {
        let task = tokio::spawn(c.clone().run(link_rx));
        (c, task)
    });
    if let Some((c, _)) = &link {
        c.wait_ready(crate::cluster::START_WAIT).await;
    }
    let builders = Arc::new(builders());
    tokio::pin!(shutdown);
    let mut main = Acceptor::new(
        listeners.main,
        max_connections(state.config.server.max_connections),
        "main",
    );
    let mut admin = listeners
        .admin
        .map(|l| Acceptor::new(l, MAX_ADMIN_CONNECTIONS, "admin"));
    loop {
        tokio::select! {
            conn = main.next() => {
                serve_conn(&builders, &graceful, &conn_stop, conn, state.clone(), false);
            }
            conn = accept_opt(admin.as_mut()) => {
                serve_conn(&builders, &graceful, &conn_stop, conn, state.clone(), true);
            }
            () = &mut shutdown => break,
        }
    }
    drop(main);
    drop(admin);
    let _ = stop_watch.send(true);
    let _ = watcher.await;
    if let Some(w) = tls_watcher {
        let _ = w.await;
    }
    tracing::info!(connections = graceful.count(), grace = ?grace, "shutting down: draining connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(grace = ?grace, "shutdown grace elapsed; closing remaining connections"),
    }
    if let Some((_, task)) = link {
        let _ = link_stop.send(true);
        // It says goodbye (drops its heartbeat) within one command timeout; past 2 s it is
        // abandoned with the runtime.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
    }
}

async fn accept_opt(a: Option<&mut Acceptor>) -> Accepted {
    match a {
        Some(a) => a.next().await,
        None => std::future::pending().await,
    }
}

/// Open connections on the admin listener at most (probes and scrapers need few); counted
/// apart, so a full proxy listener never blocks `/metrics`.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Connection settings, built once.
struct Builders {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

fn builders() -> Builders {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // Bounds the request head (431 past it) and each read: a connection's read buffer
        // never grows past 16 KiB, even while a large body streams in (bodies are kept
        // once, in their own buffer; a bigger read buffer only multiplies memory by the
        // number of uploading connections).
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30));
    Builders { h1, h2 }
}

/// Concurrent streams per HTTP/2 connection (nginx's `http2_max_concurrent_streams` is 128,
/// Envoy's default 100): each may buffer a request body.
const MAX_H2_STREAMS: u32 = 128;

/// Largest request head (and HTTP/1.1 read buffer) accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// How long a new connection may stay silent before its request head starts.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP/2 connection preface starts with the `PRI` method, which HTTP/1.1 reserves
/// (RFC 9113 §3.4): three bytes tell the two apart.
const H2_PREFACE_START: &[u8] = b"PRI";

/// The client's part of an HTTP/2 connection start that must arrive before hyper takes the
/// connection: the 24-byte preface and the 9-byte header of its SETTINGS frame
/// (RFC 9113 §3.4). hyper's h2 handshake has no timeout of its own.
const H2_START_LEN: usize = 24 + 9;

/// Which protocol a new connection speaks, read by peeking at its first bytes (nothing is
/// consumed). `None` when the client closed or stayed silent too long. An HTTP/2 client must
/// have sent its preface and the start of its SETTINGS within the header timeout too
/// (SPEC §9): a connection stuck after `PRI * HT` is closed then, and at shutdown.
///
/// Written here rather than using hyper-util's `auto` builder, which reads the first bytes
/// itself and replays them through a `Rewind` wrapper: every later read pays for the
/// wrapper, and the replayed prefix makes hyper's first read short, so its read buffer
/// doubles to 16 KiB on every connection. A peek costs one syscall per connection.
async fn sniff_h2(stream: &tokio::net::TcpStream) -> Option<bool> {
    let mut buf = [0u8; H2_START_LEN];
    let mut wait = Duration::from_millis(1);
    let peeked = tokio::time::timeout(HEADER_READ_TIMEOUT, async {
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            let k = n.min(H2_PREFACE_START.len());
            if buf[..k] != H2_PREFACE_START[..k] {
                return Some(false);
            }
            if n >= H2_START_LEN {
                return Some(true);
            }
            // A prefix of the h2 start split across segments: the rest is on its way (or
            // never comes, and the timeout closes it). Readiness stays set while unread
            // data waits, so back off instead of spinning.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    });
    peeked.await.ok().flatten()
}

fn serve_conn(
    builders: &Arc<Builders>,
    graceful: &GracefulShutdown,
    stop: &tokio::sync::watch::Receiver<bool>,
    conn: Accepted,
    state: Arc<AppState>,
    is_admin: bool,
) {
    let Accepted { stream, peer, slot } = conn;
    let _ = stream.set_nodelay(true);
    let tls = state.tls.clone();
    let svc = service_fn(move |req| {
        let state = state.clone();
        // Boxed so that the connection holds only a pointer between requests: the request
        // future (several KiB) is freed as soon as the response head is ready, instead of
        // staying allocated for as long as the connection (or its stream) lives.
        let fut: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            if is_admin {
                return Ok::<_, Infallible>(admin::handle_admin(&state, peer.ip(), req).await);
            }
            // Reserved paths first (SPEC §3): never proxied, and not in the access log.
            if let Some(resp) =
                admin::reserved(&state, peer.ip(), &req, !state.admin_separate).await
            {
                return Ok(resp);
            }
            handle(state, peer, req).await
        });
        fut
    });
    let builders = builders.clone();
    let watcher = graceful.watcher();
    let mut stop = stop.clone();
    tokio::spawn(async move {
        // Held for as long as the connection lives (`max_connections`).
        let _slot = slot;
        if let Some(tls) = tls {
            // One deadline from accept for the handshake and, on h2, the preface: TLS must
            // not give a stalled client more time than clear text does.
            let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
            let started = tokio::select! {
                s = handshake::accept(tls.config(), stream, peer, deadline) => s,
                _ = stop.wait_for(|stopping| *stopping) => None,
            };
            let Some((stream, h2, read)) = started else {
                return;
            };
            let io = TokioIo::new(stream);
            let result = if h2 {
                tokio::select! {
                    r = Repoll::new(watcher.watch(builders.h2.serve_connection(io, svc))) => r,
                    () = handshake::stalled(read, H2_START_LEN, deadline) => {
                        tracing::debug!(%peer, "h2 preface not received by the header timeout: closed");
                        Ok(())
                    }
                }
            } else {
                Repoll::new(watcher.watch(builders.h1.serve_connection(io, svc))).await
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        // A connection still silent when shutdown starts is closed: it has no request to
        // finish, and it must not hold the drain up until its header timeout.
        let h2 = tokio::select! {
            h2 = sniff_h2(&stream) => h2,
            _ = stop.wait_for(|stopping| *stopping) => None,
        };
        let Some(h2) = h2 else {
            return;
        };
        let io = TokioIo::new(stream);
        // `Repoll`: the service reads request bodies in this task, which wakes it while it
        // runs; see `repoll`.
        let result = if h2 {
            Repoll::new(watcher.watch(builders.h2.serve_connection(io, svc))).await
        } else {
            Repoll::new(watcher.watch(builders.h1.serve_connection(io, svc))).await
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    });
}
