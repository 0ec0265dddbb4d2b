//! keygate: an auth-aware, credential-rotating reverse proxy for LLM provider APIs.
//!
//! Request flow (one request, SPEC §3–§7):
//!
//! ```text
//! client ──▶ server (HTTP/1.1, or h2c by prior knowledge)
//!              │
//!              ▼
//!           proxy::service::handle
//!              ├─ reserved paths (/healthz, /readyz, /metrics, /_keygate/status) ─▶ admin
//!              ├─ inbound auth (gateway token / password / trusted-proxy / none) ─▶ 401/403/429
//!              ├─ route /{provider}/{rest}: path checks ─▶ 400/404
//!              ├─ body collected under max_request_body into Bytes ─▶ 413
//!              ├─ model from body (borrowed) or path; `@profile` pin stripped by byte edit
//!              ├─ resolver: candidates (pin │ explicit order │ profiles by kind+LRU │ env)
//!              └─ for each candidate:
//!                   inject credential ─▶ upstream (pooled hyper-util + rustls)
//!                   classify answer ─▶ rotate (same Bytes) │ return
//!              ▼
//!           response body streamed frame by frame (never collected)
//! ```

use std::path::PathBuf;
use std::sync::Arc;

pub mod admin;
pub mod classify;
pub mod cli;
pub mod config;
pub mod cooldown;
pub mod credentials;
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod metrics;
pub mod pin;
pub mod provider;
pub mod proxy;
pub mod resolver;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod telemetry;
#[cfg(test)]
mod testing;

pub use server::{run, Listeners};

/// Builds the shared request-path state for a listen address: checks the inbound auth
/// mode against it (SPEC §4) and prepares the credential registry and upstream client.
///
/// `env` is the process environment: `<state-dir>/.env` is layered under it on every
/// (re)load of the credential files.
///
/// Returns the refusal message when the mode is not allowed on this address.
pub fn build_state(
    config: config::Config,
    state_dir: PathBuf,
    env: credentials::env::EnvSnapshot,
    listen: &std::net::SocketAddr,
) -> Result<Arc<proxy::AppState>, String> {
    let mode = inbound::effective_mode(&config.gateway, listen)?;
    if mode == config::AuthMode::None {
        tracing::warn!(%listen, "no gateway auth configured: accepting unauthenticated requests on loopback only (set KEYGATE_TOKEN to require a token)");
    }
    let gate = inbound::Gatekeeper::new(&config.gateway, mode);
    let client = proxy::upstream::client(&config.server);
    let config = Arc::new(config);
    let metrics = Arc::new(metrics::Metrics::new(
        config.providers.keys().map(String::as_str),
    ));
    let registry = Arc::new(resolver::Registry::new(
        config.clone(),
        state_dir,
        env,
        metrics.clone(),
    ));
    Ok(Arc::new(proxy::AppState::new(
        config, gate, registry, client, metrics,
    )))
}
