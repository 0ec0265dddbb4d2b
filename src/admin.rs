//! Reserved paths, never forwarded (SPEC §3).
//!
//! Endpoints:
//! - `GET /healthz` — liveness: always 200 while the process serves.
//! - `GET /readyz` — 200 when every provider with a `[providers.*]` entry has at least one
//!   usable credential for agent `main`; else 503 naming what is missing.
//! - `GET /metrics` — Prometheus text (SPEC §8); open, like the health paths.
//! - `GET /_keygate/status` — credentials per provider (masked, with their quota domain),
//!   explicit order and exclusions, and the cooldown windows; needs the admin token (`Authorization: Bearer` or `x-keygate-admin-token`):
//!   401 without it, 404 when no admin token is configured.
//!
//! With `[admin] listen` set, `/_keygate/status` and `/metrics` are served only on that
//! listener; the health paths are answered on both. This module only reads shared state:
//! the status document is built from the pool being served, never from the files on disk.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::cooldown::Scope;
use crate::inbound::Outcome;
use crate::proxy::{ProxyBody, ProxyError};
use crate::state::AppState;
use crate::status;

/// Answers a reserved path, or returns `None` for anything that should be proxied.
/// `private` says whether the admin-only endpoints are served on this listener; `peer`
/// is the client address the admin token's lockout is counted for.
pub async fn reserved<B>(
    state: &Arc<AppState>,
    peer: IpAddr,
    req: &Request<B>,
    private: bool,
) -> Option<Response<ProxyBody>> {
    let resp = match req.uri().path() {
        "/healthz" => json_response(StatusCode::OK, json!({ "status": "ok" })),
        "/readyz" => readyz(state),
        "/metrics" if private => metrics(state),
        "/metrics" => ProxyError::NotFound.into_response(None),
        "/_keygate/status" if private => status(state, peer, req).await,
        "/_keygate/status" => ProxyError::NotFound.into_response(None),
        p if p.starts_with("/_keygate/") => ProxyError::NotFound.into_response(None),
        _ => return None,
    };
    Some(resp)
}

/// Serves a request on the dedicated admin listener: reserved paths only.
pub async fn handle_admin<B>(
    state: &Arc<AppState>,
    peer: IpAddr,
    req: Request<B>,
) -> Response<ProxyBody> {
    match reserved(state, peer, &req, true).await {
        Some(r) => r,
        None => ProxyError::NotFound.into_response(None),
    }
}

fn metrics(state: &AppState) -> Response<ProxyBody> {
    let now = tokio::time::Instant::now();
    let cooling: Vec<String> = state
        .cooldowns
        .windows(now)
        .into_iter()
        .map(|w| w.credential)
        .collect();
    if let Some(a) = &state.affinity {
        state.metrics.set_sessions(a.len());
    }
    let mut r = Response::new(ProxyBody::full(Bytes::from(state.metrics.render(&cooling))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

fn readyz(state: &AppState) -> Response<ProxyBody> {
    let pool = state.registry.agent("main");
    let missing: Vec<&str> = state
        .config
        .providers
        .values()
        .filter(|p| p.configured)
        .filter(|p| {
            pool.providers
                .get(&p.id)
                .is_none_or(|pp| pp.candidates.is_empty())
        })
        .map(|p| p.id.as_str())
        .collect();
    if missing.is_empty() {
        json_response(StatusCode::OK, json!({ "status": "ready" }))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "status": "not ready",
                "missing": missing,
                "message": format!("no usable credential for: {}", missing.join(", ")),
            }),
        )
    }
}

async fn status<B>(state: &Arc<AppState>, peer: IpAddr, req: &Request<B>) -> Response<ProxyBody> {
    let Some(token) = &state.config.admin.token else {
        return ProxyError::NotFound.into_response(None);
    };
    // A browser page must not use an admin token it finds in the browser (SPEC §4).
    if let Err(b) = state.gate.origin(req.headers()) {
        return ProxyError::from(b).into_response(None);
    }
    let refused = match state.gate.check_admin(peer, req.headers(), token.expose()) {
        Outcome::Allowed { .. } => None,
        Outcome::LockedOut { retry_after } => Some(ProxyError::LockedOut { retry_after }),
        Outcome::Ambiguous => Some(ProxyError::BadRequest(
            "the request carries more than one admin token: send it once".into(),
        )),
        _ => Some(ProxyError::Unauthorized(
            "admin token required (Authorization: Bearer or x-keygate-admin-token)",
        )),
    };
    if let Some(e) = refused {
        return e.into_response(None);
    }
    let agent = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("agent="))
        .unwrap_or("main")
        .to_owned();
    if !crate::config::valid_agent_id(&agent) {
        return ProxyError::BadRequest("invalid agent id".into()).into_response(None);
    }
    // The same document as `models status --json`, built from the pool being served (its
    // inputs as last loaded), plus the in-memory cooldowns. Loading an agent seen for the
    // first time reads its files: off the async threads.
    let st = state.clone();
    let agent_id = agent.clone();
    let Ok(pool) = tokio::task::spawn_blocking(move || st.registry.agent(&agent_id)).await else {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": { "message": "status task failed" } }),
        );
    };
    let mut view = status::build_view(
        &pool.inputs,
        &state.config,
        None,
        status::now_ms(),
        std::time::Duration::from_secs(24 * 3600),
    );
    let learned = state.registry.domains();
    status::add_learned(&mut view, &|k| learned.get(k));
    let (result, code) = status::check_result(&view);
    let mut doc = status::document(&view, &agent, state.registry.state_dir());
    doc["check"] = json!({ "result": result, "exitCode": code });
    // The files on disk broke after this pool loaded: it is still what serves.
    doc["stale"] = json!(!pool.stale.is_empty());
    // A store file on disk does not parse now (stale) or did not when the pool loaded.
    doc["filesBroken"] = json!(!pool.stale.is_empty() || !pool.inputs.problems.is_empty());
    if let Some(w) = doc.get_mut("warnings").and_then(Value::as_array_mut) {
        let problems = pool.stale.iter().chain(&pool.inputs.problems);
        let first: Vec<Value> = problems.map(|p| json!(p)).collect();
        w.splice(0..0, first);
    }
    let now = tokio::time::Instant::now();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let windows: Vec<Value> = state
        .cooldowns
        .windows(now)
        .into_iter()
        .map(|w| {
            let (model, lane) = match &w.scope {
                Scope::Model(m) => (m.to_string(), "cooldown"),
                Scope::Credential => ("all".to_owned(), "cooldown"),
                Scope::Disabled => ("all".to_owned(), "disabled"),
            };
            json!({
                "credential": w.credential,
                "model": model,
                "lane": lane,
                "reason": w.reason.as_str(),
                "until": (wall + w.remaining).as_millis() as u64,
                "remainingSeconds": w.remaining.as_secs_f64(),
                "source": w.source,
                "failures": w.failures,
                "lastStatus": w.last_status,
            })
        })
        .collect();
    // Each credential row also lists its own windows.
    if let Some(providers) = doc.get_mut("providers").and_then(Value::as_array_mut) {
        for p in providers {
            if let Some(creds) = p.get_mut("credentials").and_then(Value::as_array_mut) {
                for c in creds {
                    let id = c
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let mine: Vec<Value> = windows
                        .iter()
                        .filter(|w| w["credential"] == id.as_str())
                        .cloned()
                        .collect();
                    c["cooldowns"] = Value::Array(mine);
                }
            }
        }
    }
    doc["cooldowns"] = Value::Array(windows);
    doc["cluster"] = state
        .cluster
        .as_ref()
        .map_or(Value::Null, |c| c.status_json());
    // Counts only: a session is never shown, not even hashed.
    doc["affinity"] = match &state.affinity {
        Some(a) => serde_json::json!({
            "mode": "session",
            "sessions": a.len(),
            "maxSessions": a.capacity(),
            "ttlSeconds": a.ttl().as_secs(),
        }),
        None => serde_json::json!({ "mode": "off" }),
    };
    json_response(StatusCode::OK, doc)
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
