//! keygate: an auth-aware, credential-rotating reverse proxy for LLM provider APIs.
//!
//! Request flow (one request, SPEC §3–§7):
//!
//! ```text
//! client ──▶ server (hyper auto: HTTP/1.1 + h2c)
//!              │
//!              ▼
//!           proxy::service
//!              ├─ reserved paths (/healthz, /readyz, /metrics, /_keygate/status) ─▶ admin
//!              ├─ inbound auth (gateway token / password / trusted-proxy / none) ─▶ 401/429
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

pub mod classify;
pub mod config;
pub mod credentials;
pub mod inbound;
pub mod pin;
pub mod provider;
pub mod secret;
