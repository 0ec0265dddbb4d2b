//! `handle`: one client request, end to end.
//!
//! Owns the phases of a proxied request in order — reserved paths, inbound auth, routing
//! and path checks, body collection under the limit, model and pin, candidate selection,
//! the attempt loop, and building the streamed response — and the one access-log line per
//! request. Every error becomes a response through [`ProxyError::into_response`]; the
//! service never fails (an error there would drop the connection without an answer).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::inject::{clean_query, clean_request_headers, clean_response_headers};
use super::upstream::UpstreamClient;
use crate::admin;
use crate::config::{Config, ProviderConfig};
use crate::inbound::{Gatekeeper, Outcome};
use crate::pin;
use crate::provider::{self, ModelFrom};
use crate::resolver::{Candidate, Registry};

/// Header a client may use to pin a credential.
pub const PROFILE_HEADER: &str = "x-keygate-profile";

/// Everything the request path shares. Built once at startup.
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Inbound authentication.
    pub gate: Gatekeeper,
    /// Credential pools per agent.
    pub registry: Registry,
    /// The pooled upstream client.
    pub client: UpstreamClient,
    /// `scheme://authority[/prefix]` per provider, precomputed.
    bases: HashMap<String, Box<str>>,
    /// Whether `/metrics` and `/_keygate/status` live on their own listener.
    pub admin_separate: bool,
}

/// What the access log line says about a request.
#[derive(Default)]
struct Access {
    provider: Option<String>,
    model: Option<String>,
    credential: Option<String>,
    attempts: u32,
    error: Option<&'static str>,
}

// === impl AppState ===

impl AppState {
    /// Builds the shared state.
    pub fn new(
        config: Arc<Config>,
        gate: Gatekeeper,
        registry: Registry,
        client: UpstreamClient,
    ) -> Self {
        let bases = config
            .providers
            .values()
            .filter_map(|p| {
                let base = p.base_url.as_ref()?.to_string();
                Some((p.id.clone(), base.trim_end_matches('/').into()))
            })
            .collect();
        let admin_separate = config.admin.listen.is_some();
        Self {
            config,
            gate,
            registry,
            client,
            bases,
            admin_separate,
        }
    }
}

/// Serves one request on the main listener.
pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let span = tracing::info_span!("request", %method, path = %req.uri().path());
    async move {
        if let Some(resp) = admin::reserved(&state, &req, !state.admin_separate).await {
            return Ok(resp);
        }
        let mut access = Access::default();
        let resp = match proxy(&state, peer, req, &mut access).await {
            Ok(resp) => resp,
            Err(e) => {
                access.error = Some(e.metric_label());
                e.into_response(access.provider.as_deref())
            }
        };
        tracing::info!(
            provider = access.provider.as_deref().unwrap_or("-"),
            model = access.model.as_deref().unwrap_or("-"),
            credential = access.credential.as_deref().unwrap_or("-"),
            attempts = access.attempts,
            status = resp.status().as_u16(),
            error = access.error.unwrap_or("-"),
            latency_ms = start.elapsed().as_secs_f64() * 1e3,
            "request"
        );
        Ok(resp)
    }
    .instrument(span)
    .await
}

async fn proxy(
    state: &AppState,
    peer: SocketAddr,
    req: Request<Incoming>,
    access: &mut Access,
) -> Result<Response<ProxyBody>, ProxyError> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();

    // 1. Who is asking.
    let agent = match state.gate.check(peer.ip(), &parts) {
        Outcome::Allowed { agent } => agent,
        Outcome::Missing => {
            return Err(ProxyError::Unauthorized(
                "missing gateway token: send it as Authorization: Bearer, x-api-key, x-goog-api-key, api-key or ?key=",
            ))
        }
        Outcome::Wrong => return Err(ProxyError::Unauthorized("invalid gateway token")),
        Outcome::Forbidden(why) => return Err(ProxyError::Forbidden(why)),
        Outcome::LockedOut { retry_after } => return Err(ProxyError::LockedOut { retry_after }),
    };

    // 2. Where to.
    let (provider_id, rest) = route(parts.uri.path())?;
    let provider = state
        .config
        .provider(provider_id)
        .ok_or_else(|| ProxyError::UnknownProvider(truncate(provider_id, 64).to_owned()))?;
    access.provider = Some(provider.id.clone());
    check_path(rest)?;
    let base = state
        .bases
        .get(provider_id)
        .ok_or_else(|| ProxyError::NoBaseUrl(provider.id.clone()))?;

    // 3. The body, bounded.
    let limit = state.config.server.max_request_body;
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ProxyError::BodyTooLarge { limit });
        }
    }
    let mut body: Bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ProxyError::BodyTooLarge { limit })
        }
        Err(_) => return Err(ProxyError::BodyRead),
    };

    // 4. Model and pin.
    let mut pinned: Option<String> = parts
        .headers
        .get(PROFILE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let model: Option<String> = match provider.model_from {
        ModelFrom::Body => match pin::body_model(&body) {
            Some(bm) => {
                check_model_len(&bm.model)?;
                let (name, profile) = pin::split_pin(&bm.model);
                match profile {
                    Some(profile) => {
                        let name = name.to_owned();
                        if pinned.is_none() {
                            pinned = Some(profile.to_owned());
                        }
                        let span = bm.span.clone();
                        body = pin::rewrite_model(&body, span, &name);
                        Some(name)
                    }
                    None => Some(bm.model.into_owned()),
                }
            }
            None => None,
        },
        ModelFrom::Path => match provider::model_from_path(&provider.id, rest) {
            Some(m) => {
                check_model_len(m)?;
                Some(m.to_owned())
            }
            None => None,
        },
    };
    access.model = model.clone();

    // 5. Candidates.
    let pool = state.registry.agent(&agent);
    let candidates: Vec<Arc<Candidate>> = match &pinned {
        Some(id) => {
            let c = pool.by_id.get(id.as_str()).ok_or_else(|| {
                ProxyError::BadRequest(format!("Auth profile \"{}\" not found.", truncate(id, 128)))
            })?;
            if *c.cred.provider != *provider.id {
                return Err(ProxyError::BadRequest(format!(
                    "Auth profile \"{}\" is for {}, not {}.",
                    id, c.cred.provider, provider.id
                )));
            }
            vec![c.clone()]
        }
        None => pool
            .providers
            .get(provider_id)
            .map(|p| state.registry.ordered(p))
            .unwrap_or_default(),
    };
    if candidates.is_empty() {
        return Err(no_credentials(provider));
    }

    // 6. Attempts.
    let rcfg = &state.config.rotation;
    let max_attempts = match rcfg.max_attempts {
        0 => candidates.len(),
        n => (n as usize).min(candidates.len()),
    };
    let deadline = start + state.config.server.request_timeout;
    let headers = clean_request_headers(&parts.headers, provider);
    let query = clean_query(parts.uri.query());
    let plain_uri = upstream_uri(base, rest, query.as_deref(), None)?;

    let mut attempts = 0u32;
    let mut last: Option<Result<Response<ProxyBody>, ProxyError>> = None;
    for cand in candidates.iter().take(max_attempts) {
        attempts += 1;
        access.attempts = attempts;
        access.credential = Some(cand.cred.id.to_string());
        state.registry.touch(cand);

        let uri = match cand.inject.query() {
            Some(q) => upstream_uri(base, rest, query.as_deref(), Some(q))?,
            None => plain_uri.clone(),
        };
        let mut up = Request::new(Full::new(body.clone()));
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers.clone();
        cand.inject.apply(up.headers_mut());

        let wait_until = (Instant::now() + state.config.server.first_byte_timeout).min(deadline);
        let resp = match tokio::time::timeout_at(wait_until, state.client.request(up)).await {
            Err(_) => {
                last = Some(Err(ProxyError::UpstreamTimeout(
                    state.config.server.first_byte_timeout,
                )));
                break;
            }
            Ok(Err(e)) => {
                last = Some(Err(ProxyError::Upstream(error_chain(&e))));
                break;
            }
            Ok(Ok(resp)) => resp,
        };
        last = Some(Ok(passthrough(resp, cand, attempts, deadline, provider)));
        break;
    }
    last.unwrap_or_else(|| Err(no_credentials(provider)))
}

/// The upstream answer as the client will see it: headers cleaned and tagged, body streamed.
fn passthrough(
    resp: Response<Incoming>,
    cand: &Candidate,
    attempts: u32,
    deadline: Instant,
    provider: &ProviderConfig,
) -> Response<ProxyBody> {
    let (mut parts, incoming) = resp.into_parts();
    clean_response_headers(&mut parts.headers);
    let is_sse = is_event_stream(&parts.headers);
    parts
        .headers
        .insert("x-keygate-credential", cand.id_header.clone());
    parts
        .headers
        .insert("x-keygate-attempts", HeaderValue::from(attempts));
    let error_event = is_sse.then(|| sse_error_event(&provider.id));
    let body = ProxyBody::upstream(VecDeque::new(), incoming, deadline, error_event, None);
    Response::from_parts(parts, body)
}

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// The event that ends a broken stream in the provider's own protocol, so SDKs raise an
/// error instead of treating a truncated answer as complete.
pub fn sse_error_event(provider: &str) -> Bytes {
    const MSG: &str = "upstream stream ended unexpectedly (keygate)";
    let text = match provider {
        "anthropic" => format!(
            "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"api_error\",\"message\":\"{MSG}\"}}}}\n\n"
        ),
        "google" => format!(
            "data: {{\"error\":{{\"code\":502,\"message\":\"{MSG}\",\"status\":\"UNAVAILABLE\"}}}}\n\n"
        ),
        _ => format!(
            "data: {{\"error\":{{\"message\":\"{MSG}\",\"type\":\"server_error\",\"code\":\"upstream_stream_broken\"}}}}\n\n"
        ),
    };
    Bytes::from(text)
}

fn no_credentials(provider: &ProviderConfig) -> ProxyError {
    let var = crate::credentials::env::suggested_var(&provider.env_prefix);
    ProxyError::NoCredentials {
        provider: provider.id.clone(),
        hint: format!(
            "Run `keygate models auth paste-api-key --provider {}` or set {var}.",
            provider.id
        ),
    }
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

/// Splits `/{provider}/{rest}`.
fn route(path: &str) -> Result<(&str, &str), ProxyError> {
    let p = path
        .strip_prefix('/')
        .ok_or(ProxyError::BadPath("path must start with /"))?;
    let (provider, rest) = p.split_once('/').unwrap_or((p, ""));
    if provider.is_empty() {
        return Err(ProxyError::BadPath("expected /{provider}/{path}"));
    }
    Ok((provider, rest))
}

/// Rejects any path that could leave the provider's base URL: `.` / `..` segments (also
/// percent-encoded), encoded slashes or backslashes, empty segments (`//host`), NUL.
fn check_path(rest: &str) -> Result<(), ProxyError> {
    if rest.contains('\\') {
        return Err(ProxyError::BadPath("backslash in path"));
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg.is_empty() {
            if last {
                continue;
            }
            return Err(ProxyError::BadPath("empty path segment"));
        }
        if seg.contains('%') {
            let decoded = percent_encoding::percent_decode_str(seg).collect::<Vec<u8>>();
            if decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0)) {
                return Err(ProxyError::BadPath("encoded slash in path"));
            }
            if decoded == b"." || decoded == b".." {
                return Err(ProxyError::BadPath("dot segment in path"));
            }
        } else if seg == "." || seg == ".." {
            return Err(ProxyError::BadPath("dot segment in path"));
        }
    }
    Ok(())
}

/// `{base}/{rest}[?query][&name=value]`.
fn upstream_uri(
    base: &str,
    rest: &str,
    query: Option<&str>,
    extra: Option<(&str, &str)>,
) -> Result<Uri, ProxyError> {
    let mut s = String::with_capacity(
        base.len()
            + rest.len()
            + query.map_or(0, str::len)
            + extra.map_or(0, |(n, v)| n.len() + v.len())
            + 4,
    );
    s.push_str(base);
    s.push('/');
    s.push_str(rest);
    let mut sep = '?';
    if let Some(q) = query {
        s.push(sep);
        s.push_str(q);
        sep = '&';
    }
    if let Some((n, v)) = extra {
        s.push(sep);
        s.push_str(n);
        s.push('=');
        s.push_str(v);
    }
    Uri::try_from(s).map_err(|_| ProxyError::BadPath("path is not a valid URI"))
}

/// An error's source chain on one line (hyper-util's top-level message alone says little).
/// These messages never carry URLs or headers, so no secret can appear.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A 503 answer used while draining or not ready.
pub fn unavailable(message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(
        serde_json::json!({ "error": { "message": message, "type": "unavailable" } }).to_string(),
    )));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tricks_are_rejected() {
        for bad in [
            "v1/../secret",
            "v1/%2e%2e/x",
            "v1/%2E%2e/x",
            "v1/a%2fb",
            "v1/a%2Fb",
            "v1/a%5cb",
            "/evil.com/x",
            "v1//x",
            "v1/./x",
            "v1\\x",
            "..",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "v1/messages",
            "v1/chat/completions",
            "",
            "v1/models/",
            "v1beta/models/gemini-2.5-pro:streamGenerateContent",
            "v1/a%20b",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn route_splits_provider() {
        assert_eq!(
            route("/anthropic/v1/messages").ok(),
            Some(("anthropic", "v1/messages"))
        );
        assert_eq!(route("/openai").ok(), Some(("openai", "")));
        assert!(route("//evil.com/x").is_err());
    }

    #[test]
    fn uri_keeps_query_and_adds_key() {
        let u = upstream_uri(
            "https://x.test/api",
            "v1/m",
            Some("alt=sse"),
            Some(("key", "abc")),
        )
        .expect("uri");
        assert_eq!(u.to_string(), "https://x.test/api/v1/m?alt=sse&key=abc");
        let u = upstream_uri("http://127.0.0.1:9", "v1/m", None, None).expect("uri");
        assert_eq!(u.to_string(), "http://127.0.0.1:9/v1/m");
    }
}
