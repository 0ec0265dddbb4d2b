//! The request path: from an authenticated client request to a streamed upstream answer.
//!
//! [`handle`] runs the phases of one request in order, each in its own file:
//!
//! - [`admit`]: who is asking (inbound auth), the bounded body, model and pin, and which
//!   candidates may serve;
//! - [`route`] (pure): `/{provider}/{rest}`, path safety, the upstream URI;
//! - [`attempt`]: the rotation loop over the candidates and one send;
//! - [`inspect`]: reading an answer — error bodies, the stream's commit point, the watch
//!   over a committed stream — and opening the cooldowns they call for.
//!
//! It does not own credential pools and their order (`pool`), inbound auth rules
//! (`inbound`), the reserved admin paths (`admin`, dispatched before this by `server`) nor
//! the upstream connections (`upstream`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderName;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use crate::pool::Candidate;
use crate::state::AppState;

pub mod admit;
pub mod attempt;
pub mod body;
pub mod error;
pub mod inspect;
pub mod route;

pub use body::ProxyBody;
pub use error::ProxyError;

/// Header a client may use to pin a credential.
pub const PROFILE_HEADER: HeaderName = HeaderName::from_static("x-keygate-profile");
/// The credential that served (or last tried) a request.
pub const CREDENTIAL_HEADER: HeaderName = HeaderName::from_static("x-keygate-credential");
/// Header a client may use to name its conversation (SPEC §11 session affinity).
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("x-keygate-session");
/// Whether the session's credential answered: `new`, `kept` or `moved`.
pub const AFFINITY_HEADER: HeaderName = HeaderName::from_static("x-keygate-affinity");
/// How many upstream attempts a request took.
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-keygate-attempts");

/// The `tracing` target of the access line: the module that wrote it until the request path
/// was split by phase, kept so that `RUST_LOG` filters and log pipelines keep matching.
const ACCESS_TARGET: &str = "keygate::proxy::service";

/// What the access log line says about a request.
#[derive(Default)]
struct Access<'s> {
    provider: Option<&'s str>,
    model: Option<Arc<str>>,
    /// The candidate of the last attempt (a reference count, not a copy of its id).
    credential: Option<Arc<Candidate>>,
    attempts: u32,
    error: Option<&'static str>,
    /// Whose upstream answer goes back (its secret's fingerprint), and whether it is a
    /// success: session affinity moves only with a success (SPEC §11).
    answered: Option<(u64, bool)>,
}

/// Serves one request on the main listener.
pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    // Cheap (reference counted); only its path is ever logged, never the query.
    let uri = req.uri().clone();
    // A debug-level span: at the default `info` level the access line below carries
    // method and path itself, and no span is built per request.
    let span = tracing::debug_span!("request", %method, path = %req.uri().path());
    async move {
        if let Some(resp) = admit::base_path_probe(&state, &req) {
            return Ok(resp);
        }
        let mut access = Access::default();
        let resp = match proxy(&state, peer, req, &mut access).await {
            Ok(resp) => resp,
            Err(e) => {
                access.error = Some(e.metric_label());
                let mut r = e.into_response(access.provider);
                // Errors after attempts (timeouts, refused connections) still say how many
                // attempts were made and with which credential.
                if access.attempts > 0 {
                    let h = r.headers_mut();
                    h.insert(ATTEMPTS_HEADER, attempt::attempts_value(access.attempts));
                    if let Some(c) = &access.credential {
                        h.insert(CREDENTIAL_HEADER, c.id_header.clone());
                    }
                }
                r
            }
        };
        let elapsed = start.elapsed();
        state
            .metrics
            .request(access.provider, resp.status().as_u16(), elapsed);
        tracing::info!(
            target: ACCESS_TARGET,
            method = method.as_str(),
            path = uri.path(),
            provider = access.provider.unwrap_or("-"),
            model = access.model.as_deref().unwrap_or("-"),
            credential = access
                .credential
                .as_ref()
                .map_or("-", |c| c.cred.id.as_str()),
            attempts = access.attempts,
            status = resp.status().as_u16(),
            error = access.error.unwrap_or("-"),
            // Microseconds are the precision worth logging (and print without float
            // formatting, see `telemetry::json`).
            latency_ms = elapsed.as_micros() as f64 / 1e3,
            "request"
        );
        Ok(resp)
    }
    .instrument(span)
    .await
}

/// The phases of a proxied request, in order. The access record is filled as they learn
/// who, where and with which credential.
async fn proxy<'s>(
    state: &'s Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
    access: &mut Access<'s>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();

    // The provider is known from the path before auth, only to answer errors in its shape.
    if let Ok((p, _)) = route::split(parts.uri.path()) {
        if let Some(p) = state.config.provider(p) {
            access.provider = Some(p.id.as_str());
        }
    }

    // 1. Who is asking.
    let agent = admit::caller(state, peer, &mut parts)?;

    // 2. Where to.
    let (provider_id, rest) = route::split(parts.uri.path())?;
    let provider = state
        .config
        .provider(provider_id)
        .ok_or_else(|| ProxyError::UnknownProvider(route::truncate(provider_id, 64).to_owned()))?;
    access.provider = Some(provider.id.as_str());
    route::check_path(rest)?;
    let base = state
        .bases
        .get(provider_id)
        .ok_or_else(|| ProxyError::NoBaseUrl(provider.id.clone()))?;

    // 3. The body, bounded; held until the exchange ends (it stays in memory for retries).
    let (mut body, _reservation) = admit::body(state, &parts.headers, body, start).await?;

    // 4. Model, pin and session.
    let admit::Target {
        model,
        pinned,
        session,
    } = admit::model_and_pin(state, &agent, provider, &parts.headers, rest, &mut body)?;
    access.model = model.clone();

    // 5. Candidates.
    let pool = state.registry.agent(&agent);
    let candidates = admit::candidates(state, &pool, provider, pinned.as_deref())?;

    // 6. Attempts.
    let exchange = attempt::Exchange {
        state,
        provider,
        base,
        rest,
        method: parts.method,
        headers: crate::inject::clean_request_headers(parts.headers, provider),
        query: crate::inject::clean_query(parts.uri.query()),
        body,
        model,
        deadline: start + state.config.server.request_timeout,
        pinned: pinned.is_some(),
        agent: &agent,
        session,
        pool: &pool,
    };
    exchange.run(candidates, access).await
}
