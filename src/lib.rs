//! keygate: an auth-aware, credential-rotating reverse proxy for LLM provider APIs.
//!
//! Request flow (one request, SPEC §3–§7):
//!
//! ```text
//! client ──▶ server (HTTP/1.1, or h2c by prior knowledge; or TLS with ALPN h2 / http/1.1)
//!              ├─ reserved paths (/healthz, /readyz, /metrics, /_keygate/status) ─▶ admin
//!              ▼
//!           proxy::handle                       (state: AppState, shared with admin)
//!              ├─ admit: inbound auth (gateway token / password / trusted-proxy / none) ─▶ 401/403/429
//!              ├─ route (pure): /{provider}/{rest}, path checks ─▶ 400/404
//!              ├─ admit: body under max_request_body into Bytes ─▶ 413
//!              ├─ admit: model from body (borrowed) or path; `@profile` pin cut by byte edit
//!              ├─ pool: candidates (pin │ pool::order: explicit order │ profiles by kind │ env; LRU)
//!              └─ attempt, for each candidate pool::select lets serve:
//!                   inject credential ─▶ upstream (pooled hyper-util + rustls)
//!                   inspect answer (classify, peek stream) ─▶ rotate (same Bytes) │ return
//!              ▼
//!           response body streamed frame by frame (never collected)
//! ```
//!
//! Layers, each importing only those below it (no cycles between files): `cli` ▸ `server`
//! ▸ `admin` ▸ `proxy`, `status` ▸ `state` ▸ `tls`, `cluster` ▸ `pool` ▸ `domain` ▸ `inject` ▸ `credentials` ▸ `inbound`,
//! `upstream`, `telemetry`, `redact` ▸ `config`, `cooldown`, `metrics` ▸ `classify`,
//! `provider`, `pin`, `secret`, `budget`.

pub mod admin;
pub mod budget;
pub mod classify;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod cooldown;
pub mod credentials;
pub mod domain;
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod inject;
pub mod metrics;
pub mod pin;
pub mod pool;
pub mod provider;
pub mod proxy;
pub mod redact;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod status;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod upstream;

pub use server::{run, Listeners};
pub use state::build_state;
