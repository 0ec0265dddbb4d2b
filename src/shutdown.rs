//! The shutdown signal (SIGTERM or SIGINT, Ctrl-C) and SIGHUP (reload, never exit).

use std::future::Future;

/// A future that resolves on the first SIGTERM or SIGINT. The handlers are installed when
/// this is called (inside the runtime), not when the future is first polled, so a signal
/// sent right after "keygate listening" is never missed.
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                },
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs `reload` on every SIGHUP, forever (SPEC §9: SIGHUP re-reads the credential stores
/// and keeps serving; it never exits). Installing the handler replaces SIGHUP's default
/// action, which would end the process at once; it is installed when this is called (inside
/// the runtime), before the future is spawned, so it is in place before the listen line.
pub fn hangups(reload: impl Fn() + Send + Sync + 'static) -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let hup = signal(SignalKind::hangup()).ok();
        let reload = std::sync::Arc::new(reload);
        async move {
            let Some(mut hup) = hup else {
                return std::future::pending().await;
            };
            while hup.recv().await.is_some() {
                let r = reload.clone();
                // File metadata and JSON parsing are blocking work.
                let _ = tokio::task::spawn_blocking(move || r()).await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        std::future::pending::<()>()
    }
}
