//! Logging setup: `tracing` with an `EnvFilter` (`RUST_LOG`, default `info`), text or JSON,
//! written by a background thread.
//!
//! Owns only the subscriber and its writer. Lines are formatted on the request's thread
//! and handed to a writer thread (tracing-appender) that batches them into a buffered
//! stderr, so a request never waits on the stderr lock or a `write` syscall. Under extreme
//! overload, when 64 Ki lines are queued, further lines are dropped rather than slowing the
//! proxy down. Redaction is structural (secrets are `Secret`s, injected headers are
//! sensitive, spans record the path only, never the query): nothing here filters text.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Keeps the writer thread alive; dropping it flushes what is queued.
pub struct LogGuard {
    _guard: Option<WorkerGuard>,
}

/// Installs the global subscriber (once; later calls are ignored). Keep the guard for the
/// life of the process.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(64 * 1024)
        .lossy(true)
        .thread_name("keygate-log")
        // The worker flushes whenever the queue is drained: batches become one write.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    LogGuard {
        _guard: installed.is_ok().then_some(guard),
    }
}
