//! `keygate serve`: run the proxy until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;

use super::{Context, EXIT_USAGE};
use crate::config::{LogFormat, DEFAULT_LISTEN};

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address (default 127.0.0.1:8787; env KEYGATE_LISTEN; [server] listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Runs the server; returns when it has drained.
pub(super) fn run(cx: &Context, args: ServeArgs, log_format: Option<LogFormat>) -> ExitCode {
    let config = match cx.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    // Held until `run` returns, so queued log lines are flushed at exit.
    let _log = crate::telemetry::init(log_format.unwrap_or(config.log));
    let listen = match args.listen {
        Some(a) => a,
        None => match cx.env.get("KEYGATE_LISTEN").filter(|s| !s.is_empty()) {
            Some(s) => match s.parse() {
                Ok(a) => a,
                Err(_) => {
                    eprintln!("error: KEYGATE_LISTEN={s:?} is not an address like 127.0.0.1:8787");
                    return ExitCode::from(EXIT_USAGE);
                }
            },
            None => config.server.listen.unwrap_or_else(|| {
                DEFAULT_LISTEN
                    .parse()
                    .expect("the default address is valid")
            }),
        },
    };
    let admin_listen = config.admin.listen;
    let state = match crate::build_state(
        config,
        cx.state_dir.clone(),
        cx.process_env.clone(),
        &listen,
    ) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(1);
        }
    };
    crate::server::raise_nofile_limit();
    // Load (and judge) the selected agent's store now, so what it skips or refuses is in the
    // log at start, not at the first request; reloads log it again.
    let _ = state.registry.agent(&cx.agent);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let main = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return ExitCode::from(1);
            }
        };
        let admin = match admin_listen {
            Some(a) => match tokio::net::TcpListener::bind(a).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("error: cannot listen on {a} (admin): {e}");
                    return ExitCode::from(1);
                }
            },
            None => None,
        };
        let bound = main.local_addr().unwrap_or(listen);
        let max_connections = crate::server::max_connections(state.config.server.max_connections);
        // Both installed before the listen line: a supervisor that sends SIGHUP or SIGTERM as
        // soon as it reads that line never kills the process by the default action.
        let registry = state.registry.clone();
        let tls = state.tls.clone();
        tokio::spawn(crate::shutdown::hangups(move || {
            let replaced = registry.reload_all();
            tracing::info!(replaced, "SIGHUP received: credential stores re-read");
            // The certificate too (SPEC §12): a new pair that does not load keeps the old.
            if let Some(t) = &tls {
                t.reload(true);
            }
        }));
        let stop = crate::shutdown::signal();
        tracing::info!(listen = %bound, tls = state.tls.is_some(), max_connections, admin = ?admin.as_ref().and_then(|l| l.local_addr().ok()), state_dir = %cx.state_dir.display(), "keygate listening");
        crate::run(state, crate::Listeners { main, admin }, stop).await;
        ExitCode::SUCCESS
    })
}
