//! Admission: what a request must pass before any credential is spent.
//!
//! Owns the caller check (browser pages, then the gateway credential, SPEC §4), the bounded
//! request body (`max_request_body`, `max_buffered_bodies`, the read deadline), the model,
//! the `@profile` pin (SPEC §5) and the session key (SPEC §11), the candidates that may serve, and the credential-free
//! `HEAD /<provider>` probe. It does not own routing (`route`) nor the attempts (`attempt`).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::{self, ProxyError};
use super::{route, ProxyBody, PROFILE_HEADER, SESSION_HEADER};
use crate::budget::{BodyBudget, Reservation};
use crate::config::ProviderConfig;
use crate::inbound::Outcome;
use crate::pin;
use crate::pool::{AgentPool, Candidate, Session};
use crate::provider::{self, ModelFrom};
use crate::state::AppState;

/// The caller's agent id, once the request is known not to come from a browser page and its
/// gateway credential checks out. The identity header (trusted-proxy mode) is removed: it is
/// never forwarded.
pub(super) fn caller(
    state: &AppState,
    peer: SocketAddr,
    parts: &mut http::request::Parts,
) -> Result<Cow<'static, str>, ProxyError> {
    state.gate.browser(parts)?;
    let agent = match state.gate.check(peer.ip(), parts) {
        Outcome::Allowed { agent } => agent,
        Outcome::Ambiguous => return Err(ProxyError::AmbiguousCredential),
        Outcome::DuplicateIdentity => return Err(ProxyError::DuplicateIdentity),
        Outcome::Missing => {
            return Err(ProxyError::Unauthorized(
                "missing gateway token: send it as Authorization: Bearer, x-api-key, x-goog-api-key, api-key or ?key=",
            ))
        }
        Outcome::Wrong => return Err(ProxyError::Unauthorized("invalid gateway token")),
        Outcome::Forbidden(why) => return Err(ProxyError::Forbidden(why)),
        Outcome::LockedOut { retry_after } => return Err(ProxyError::LockedOut { retry_after }),
    };
    if let Some(identity) = state.gate.identity_header() {
        parts.headers.remove(identity);
    }
    Ok(agent)
}

/// The request body under `max_request_body` (413 past it, 408 when it stops arriving before
/// `request_timeout` from `start`), with its reservation in the shared body budget (503 when
/// over it). The reservation must be held for as long as the body is.
pub(super) async fn body(
    state: &AppState,
    headers: &http::HeaderMap,
    body: Incoming,
    start: Instant,
) -> Result<(Bytes, Reservation), ProxyError> {
    let limit = state.config.server.max_request_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let read_until = start + state.config.server.request_timeout;
    let mut reservation = Reservation::default();
    if let Some(len) = declared {
        state
            .body_budget
            .reserve(&mut reservation, len as usize, limit)
            .map_err(|_| ProxyError::BodiesOverBudget)?;
    }
    let body = read_body(
        body,
        limit,
        declared,
        read_until,
        (&state.body_budget, &mut reservation),
    )
    .await?;
    Ok((body, reservation))
}

/// What a request asks for, as [`model_and_pin`] reads it.
pub(super) struct Target {
    pub(super) model: Option<Arc<str>>,
    pub(super) pinned: Option<String>,
    pub(super) session: Option<Session>,
}

/// The model (from the body or the path, as the provider says), the pinned profile
/// (`x-keygate-profile`, else a `model@profile` suffix, which is cut from the body by a byte
/// edit) and the session (SPEC §11: header `x-keygate-session`, else from the body in the
/// same scan that finds `model`; none for a pinned request, a pin wins, nor with affinity
/// off).
pub(super) fn model_and_pin(
    state: &AppState,
    agent: &str,
    provider: &ProviderConfig,
    headers: &http::HeaderMap,
    rest: &str,
    body: &mut Bytes,
) -> Result<Target, ProxyError> {
    let mut pinned: Option<String> = headers
        .get(&PROFILE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let affinity = state.affinity.as_ref();
    let session_of = |key: &[u8]| affinity.map(|a| a.session(agent, &provider.id, key));
    let mut session = headers
        .get(&SESSION_HEADER)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty() && v.len() <= pin::MAX_SESSION_LEN)
        .and_then(session_of);
    let model: Option<Arc<str>> = match provider.model_from {
        ModelFrom::Body => {
            let fields = pin::body_fields(body);
            if session.is_none() {
                session = fields.session.and_then(session_of);
            }
            match fields.model {
                Some(bm) => {
                    check_model_len(&bm.model)?;
                    let (name, profile) = pin::split_pin(&bm.model);
                    match profile {
                        Some(profile) => {
                            let name = Arc::<str>::from(name);
                            if pinned.is_none() {
                                pinned = Some(profile.to_owned());
                            }
                            let span = bm.span.clone();
                            *body = pin::rewrite_model(body, span, &name);
                            Some(name)
                        }
                        None => Some(Arc::from(bm.model.as_ref())),
                    }
                }
                None => None,
            }
        }
        // The model is in the path: only the header names a session.
        ModelFrom::Path => match provider::model_from_path(&provider.id, rest) {
            Some(m) => {
                check_model_len(m)?;
                Some(Arc::from(m))
            }
            None => None,
        },
    };
    if pinned.is_some() {
        session = None;
    }
    Ok(Target {
        model,
        pinned,
        session,
    })
}

/// Who may serve, in attempt order: the pinned profile alone (400 when it does not exist or
/// belongs to another provider), else the provider's pool in SPEC §5 order.
pub(super) fn candidates<'p>(
    state: &AppState,
    pool: &'p AgentPool,
    provider: &ProviderConfig,
    pinned: Option<&str>,
) -> Result<Vec<&'p Arc<Candidate>>, ProxyError> {
    let candidates: Vec<&Arc<Candidate>> = match pinned {
        Some(id) => {
            let c = pool.by_id.get(id).ok_or_else(|| {
                ProxyError::BadRequest(format!(
                    "Auth profile \"{}\" not found.",
                    route::truncate(id, 128)
                ))
            })?;
            if *c.cred.provider != *provider.id {
                return Err(ProxyError::BadRequest(format!(
                    "Auth profile \"{}\" is for {}, not {}.",
                    id, c.cred.provider, provider.id
                )));
            }
            vec![c]
        }
        None => pool
            .providers
            .get(provider.id.as_str())
            .map(|p| state.registry.ordered(p))
            .unwrap_or_default(),
    };
    if candidates.is_empty() {
        return Err(error::no_credentials(provider));
    }
    Ok(candidates)
}

/// A connectivity check: `HEAD /<provider>` (or `/<provider>/`) for a known provider, as
/// Claude Code sends before each run without any credential. Answered 200 with no body, no
/// auth and no upstream call, logged at debug only: nothing is revealed (any known provider
/// id answers the same) and nothing is spent. Every other request goes the usual way.
pub(super) fn base_path_probe(
    state: &AppState,
    req: &Request<Incoming>,
) -> Option<Response<ProxyBody>> {
    if req.method() != http::Method::HEAD {
        return None;
    }
    let path = req.uri().path().strip_prefix('/')?;
    let id = path.strip_suffix('/').unwrap_or(path);
    if id.is_empty() || id.contains('/') || state.config.provider(id).is_none() {
        return None;
    }
    tracing::debug!(provider = id, "base path probe answered");
    let mut resp = Response::new(ProxyBody::full(Bytes::new()));
    resp.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from_static("0"),
    );
    Some(resp)
}

/// Reads the client's body into one `Bytes` under `limit` (413 past it). A body that
/// arrives in one frame is kept as is (no copy); otherwise frames are appended into one
/// buffer sized from `Content-Length`, so a large body exists once, not twice.
async fn read_body(
    mut body: Incoming,
    limit: usize,
    declared: Option<u64>,
    until: Instant,
    (budget, reservation): (&BodyBudget, &mut Reservation),
) -> Result<Bytes, ProxyError> {
    let mut first: Option<Bytes> = None;
    let mut buf: Option<Vec<u8>> = None;
    let mut total = 0usize;
    // One timer for the whole body, polled only when a frame is not ready yet: a body that
    // is already buffered never touches the timer wheel.
    let deadline = tokio::time::sleep_until(until);
    tokio::pin!(deadline);
    while !body.is_end_stream() {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = &mut deadline => return Err(ProxyError::BodyTimeout),
        };
        let frame = match frame {
            None => break,
            Some(Err(_)) => return Err(ProxyError::BodyRead),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        // A declared length was reserved up front; a body without one (or longer than it
        // said, which hyper refuses anyway) grows its reservation as it arrives.
        budget
            .reserve(reservation, total, limit)
            .map_err(|_| ProxyError::BodiesOverBudget)?;
        // The buffer grows by explicit, exact steps (never past `limit`) and each step is
        // reserved before it is allocated, so the budget counts the memory held, not only
        // the bytes received (a doubling Vec could otherwise hold twice what was reserved).
        match (&mut buf, first.take()) {
            (Some(b), _) => {
                if b.capacity() - b.len() < data.len() {
                    let grown = (b.capacity() * 2).clamp(total, limit);
                    budget
                        .reserve(reservation, grown, limit)
                        .map_err(|_| ProxyError::BodiesOverBudget)?;
                    b.reserve_exact(grown - b.len());
                }
                b.extend_from_slice(&data);
            }
            (None, None) => first = Some(data),
            (None, Some(f)) => {
                let want = declared
                    .map_or(total * 2, |d| d as usize)
                    .clamp(total, limit);
                budget
                    .reserve(reservation, want, limit)
                    .map_err(|_| ProxyError::BodiesOverBudget)?;
                let mut b = Vec::with_capacity(want);
                b.extend_from_slice(&f);
                b.extend_from_slice(&data);
                buf = Some(b);
            }
        }
    }
    Ok(match buf {
        Some(b) => Bytes::from(b),
        None => first.unwrap_or_default(),
    })
}

fn check_model_len(model: &str) -> Result<(), ProxyError> {
    if model.len() > pin::MAX_MODEL_LEN {
        return Err(ProxyError::BadRequest(format!(
            "model name is longer than {} bytes",
            pin::MAX_MODEL_LEN
        )));
    }
    Ok(())
}
