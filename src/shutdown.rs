//! The shutdown signal (SIGTERM or SIGINT, Ctrl-C) and SIGHUP (reload, never exit).

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `reload` on every SIGHUP, forever (SPEC §9: SIGHUP re-reads the credential stores
/// and keeps serving; it never exits). Installing the handler replaces SIGHUP's default
/// action, which would end the process at once.
pub async fn hangups(reload: impl Fn() + Send + Sync + 'static) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return std::future::pending().await;
        };
        let reload = std::sync::Arc::new(reload);
        while hup.recv().await.is_some() {
            let r = reload.clone();
            // File metadata and JSON parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || r()).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        std::future::pending::<()>().await;
    }
}
