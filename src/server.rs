//! The accept loops and graceful shutdown.
//!
//! Owns listening sockets, one task per connection served by hyper-util's auto builder
//! (HTTP/1.1 and h2c by prior knowledge), connection-level limits (header size, header read
//! timeout, h2 stream count), and draining: on shutdown, stop accepting, let in-flight
//! requests and streams finish up to `shutdown_grace`, then close what is left. It does not
//! own what a request does (see `proxy::service` and `admin`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::admin;
use crate::proxy::service::handle;
use crate::proxy::AppState;

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
    let watcher = tokio::spawn(state.registry.clone().watch(RELOAD_POLL, watch_rx));
    let builder = Arc::new(connection_builder());
    tokio::pin!(shutdown);
    let admin = listeners.admin;
    loop {
        tokio::select! {
            accepted = listeners.main.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                serve_conn(&builder, &graceful, stream, peer, state.clone(), false);
            }
            accepted = accept_opt(admin.as_ref()) => {
                let Ok((stream, peer)) = accepted else { continue };
                serve_conn(&builder, &graceful, stream, peer, state.clone(), true);
            }
            () = &mut shutdown => break,
        }
    }
    drop(listeners.main);
    drop(admin);
    let _ = stop_watch.send(true);
    let _ = watcher.await;
    tracing::info!(connections = graceful.count(), grace = ?grace, "shutting down: draining connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(grace = ?grace, "shutdown grace elapsed; closing remaining connections"),
    }
}

async fn accept_opt(
    l: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        // Bounds the request head (431 past it) and each read: a connection's read buffer
        // never grows past 32 KiB, even while a large body streams in.
        .max_buf_size(32 * 1024)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(512)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30));
    b
}

fn serve_conn(
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    is_admin: bool,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move {
            if is_admin {
                Ok(admin::handle_admin(&state, req).await)
            } else {
                handle(state, peer, req).await
            }
        }
    });
    let conn = builder.serve_connection(io, svc).into_owned();
    let fut = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    });
}
