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
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use super::body::ProxyBody;
use super::budget::{BodyBudget, Reservation};
use super::error::ProxyError;
use super::inject::{clean_query, clean_request_headers, clean_response_headers, Injection};
use super::redact::Redactor;
use super::upstream::UpstreamClient;
use crate::admin;
use crate::classify::{self, ErrorBody, Reason, SseScanner, Verdict};
use crate::config::{Config, OnAllCooling, ProviderConfig};
use crate::cooldown::{Cooldowns, Ladders};
use crate::credentials::oauth::{self, Refresher};
use crate::credentials::{store, Kind, Source};
use crate::inbound::{Browser, Gatekeeper, Outcome};
use crate::metrics::Metrics;
use crate::pin;
use crate::provider::{self, ModelFrom};
use crate::resolver::{Candidate, Registry};
use crate::secret::Secret;

/// Header a client may use to pin a credential.
pub const PROFILE_HEADER: HeaderName = HeaderName::from_static("x-keygate-profile");
/// The credential that served (or last tried) a request.
pub const CREDENTIAL_HEADER: HeaderName = HeaderName::from_static("x-keygate-credential");
/// How many upstream attempts a request took.
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-keygate-attempts");

/// Everything the request path shares. Built once at startup.
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Inbound authentication.
    pub gate: Gatekeeper,
    /// Credential pools per agent.
    pub registry: Arc<Registry>,
    /// The pooled upstream client.
    pub client: UpstreamClient,
    /// `scheme://authority[/prefix]` per provider, precomputed.
    bases: HashMap<String, Box<str>>,
    /// Whether `/metrics` and `/_keygate/status` live on their own listener.
    pub admin_separate: bool,
    /// Cooldown windows, shared by every agent (a rate limit belongs to the key).
    pub cooldowns: Cooldowns,
    /// Reasons that retry with the next candidate (`[rotation] rotate_on`).
    rotate_on: Vec<Reason>,
    /// Local per-credential request limits, per provider with `rpm`, keyed by the
    /// credential's fingerprint (no allocation per check).
    rpm: HashMap<String, DefaultKeyedRateLimiter<u64>>,
    /// Prometheus series.
    pub metrics: Arc<Metrics>,
    /// OAuth refreshes, one at a time per profile.
    pub refresher: Refresher,
    /// Bytes of request bodies held at once, over every request (`max_buffered_bodies`).
    pub body_budget: BodyBudget,
}

/// What the access log line says about a request.
#[derive(Default)]
struct Access<'s> {
    provider: Option<&'s str>,
    model: Option<Arc<str>>,
    /// The candidate of the last attempt (a reference count, not a copy of its id).
    credential: Option<Arc<Candidate>>,
    attempts: u32,
    error: Option<&'static str>,
}

// === impl AppState ===

impl AppState {
    /// Builds the shared state.
    pub fn new(
        config: Arc<Config>,
        gate: Gatekeeper,
        registry: Arc<Registry>,
        client: UpstreamClient,
        metrics: Arc<Metrics>,
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
        let cooldowns = Cooldowns::new(Ladders {
            backoff: config.rotation.backoff.clone(),
            billing: config.rotation.billing_backoff.clone(),
        });
        let rotate_on = config
            .rotation
            .rotate_on
            .iter()
            .filter_map(|r| Reason::parse(r))
            .collect();
        let rpm = config
            .providers
            .values()
            .filter_map(|p| {
                let n = NonZeroU32::new(p.rpm?)?;
                Some((p.id.clone(), RateLimiter::keyed(Quota::per_minute(n))))
            })
            .collect();
        Self {
            body_budget: BodyBudget::new(config.server.max_buffered_bodies),
            config,
            gate,
            registry,
            client,
            bases,
            admin_separate,
            cooldowns,
            rotate_on,
            rpm,
            metrics,
            refresher: Refresher::default(),
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
    // Cheap (reference counted); only its path is ever logged, never the query.
    let uri = req.uri().clone();
    // A debug-level span: at the default `info` level the access line below carries
    // method and path itself, and no span is built per request.
    let span = tracing::debug_span!("request", %method, path = %req.uri().path());
    async move {
        if let Some(resp) = admin::reserved(&state, peer.ip(), &req, !state.admin_separate).await {
            return Ok(resp);
        }
        if let Some(resp) = base_path_probe(&state, &req) {
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
                    h.insert(ATTEMPTS_HEADER, attempts_value(access.attempts));
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

async fn proxy<'s>(
    state: &'s Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
    access: &mut Access<'s>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();

    // The provider is known from the path before auth, only to answer errors in its shape.
    if let Ok((p, _)) = route(parts.uri.path()) {
        if let Some(p) = state.config.provider(p) {
            access.provider = Some(p.id.as_str());
        }
    }

    // 1. Who is asking: not a browser page (SPEC §4), then its credential.
    state.gate.browser(&parts).map_err(browser_error)?;
    let agent = match state.gate.check(peer.ip(), &parts) {
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

    // 2. Where to.
    let (provider_id, rest) = route(parts.uri.path())?;
    let provider = state
        .config
        .provider(provider_id)
        .ok_or_else(|| ProxyError::UnknownProvider(truncate(provider_id, 64).to_owned()))?;
    access.provider = Some(provider.id.as_str());
    check_path(rest)?;
    let base = state
        .bases
        .get(provider_id)
        .ok_or_else(|| ProxyError::NoBaseUrl(provider.id.clone()))?;

    // 3. The body, bounded.
    let limit = state.config.server.max_request_body;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let read_until = start + state.config.server.request_timeout;
    // Held until the exchange ends: the body stays in memory for retries.
    let mut reservation = Reservation::default();
    if let Some(len) = declared {
        state
            .body_budget
            .reserve(&mut reservation, len as usize, limit)
            .map_err(|_| ProxyError::BodiesOverBudget)?;
    }
    let mut body = read_body(
        body,
        limit,
        declared,
        read_until,
        (&state.body_budget, &mut reservation),
    )
    .await?;

    // 4. Model and pin.
    let mut pinned: Option<String> = parts
        .headers
        .get(&PROFILE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let model: Option<Arc<str>> = match provider.model_from {
        ModelFrom::Body => match pin::body_model(&body) {
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
                        body = pin::rewrite_model(&body, span, &name);
                        Some(name)
                    }
                    None => Some(Arc::from(bm.model.as_ref())),
                }
            }
            None => None,
        },
        ModelFrom::Path => match provider::model_from_path(&provider.id, rest) {
            Some(m) => {
                check_model_len(m)?;
                Some(Arc::from(m))
            }
            None => None,
        },
    };
    access.model = model.clone();

    // 5. Candidates.
    let pool = state.registry.agent(&agent);
    let candidates: Vec<&Arc<Candidate>> = match &pinned {
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
            vec![c]
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
    let exchange = Exchange {
        state,
        provider,
        base,
        rest,
        method: parts.method,
        headers: clean_request_headers(parts.headers, provider),
        query: clean_query(parts.uri.query()),
        body,
        model,
        deadline: start + state.config.server.request_timeout,
        pinned: pinned.is_some(),
        agent: &agent,
    };
    exchange.run(candidates, access).await
}

/// The answer to a request refused as coming from a browser page.
pub(crate) fn browser_error(b: Browser) -> ProxyError {
    match b {
        Browser::ForeignHost => ProxyError::ForeignHost,
        Browser::ForeignOrigin => ProxyError::ForeignOrigin,
    }
}

/// One request's attempts over its candidates.
struct Exchange<'a> {
    state: &'a Arc<AppState>,
    provider: &'a ProviderConfig,
    base: &'a str,
    rest: &'a str,
    method: http::Method,
    headers: http::HeaderMap,
    query: Option<String>,
    body: Bytes,
    model: Option<Arc<str>>,
    deadline: Instant,
    pinned: bool,
    agent: &'a str,
}

/// What one attempt came to.
enum Attempt {
    /// Hand this to the client.
    Done(Response<ProxyBody>),
    /// Failed with a reason that rotates (when another candidate is left); the response is
    /// what the client gets if none is.
    Failed(Response<ProxyBody>, Reason),
    /// Failed before any answer (timeout, connection error).
    Error(ProxyError, Reason),
    /// Not sent: the credential could not be made usable (OAuth refresh failed).
    Skip(ProxyError),
    /// A 2xx stream that broke before its commit point: nothing reached the client, so
    /// the next candidate is tried whatever `rotate_on` says.
    Broken(ProxyError),
}

impl Exchange<'_> {
    async fn run(
        mut self,
        candidates: Vec<&Arc<Candidate>>,
        access: &mut Access<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let st = self.state;
        let rcfg = &st.config.rotation;
        let model = self.model.as_deref();
        let max_attempts = match rcfg.max_attempts {
            0 => usize::MAX,
            n => n as usize,
        };
        // Taken by the last possible attempt, like the headers: a `Uri` built from a
        // `String` allocates on its first clone.
        let mut plain_uri = Some(upstream_uri(
            self.base,
            self.rest,
            self.query.as_deref(),
            None,
        )?);
        let start = Instant::now();
        let wait_limit = start + rcfg.max_wait;

        let mut attempts = 0u32;
        let mut last: Option<Attempt> = None;
        let mut skipped: Option<ProxyError> = None;
        let mut tried = vec![false; candidates.len()];
        loop {
            // Who may serve now: not cooling for this model, not disabled, under its rpm.
            let now = Instant::now();
            let limiter = st.rpm.get(&self.provider.id);
            let mut soonest: Option<Instant> = None;
            let mut next = None;
            for (i, c) in candidates.iter().enumerate() {
                if tried[i] {
                    continue;
                }
                if !self.pinned {
                    if let Some(until) =
                        st.cooldowns
                            .blocked_until(c.cred.id.as_str(), c.fp, model, now)
                    {
                        soonest = Some(soonest.map_or(until, |s: Instant| s.min(until)));
                        continue;
                    }
                    if let Some(l) = limiter {
                        if let Err(not_until) = l.check_key(&c.fp) {
                            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                                &governor::clock::DefaultClock::default(),
                            ));
                            let until = now + wait;
                            soonest = Some(soonest.map_or(until, |s: Instant| s.min(until)));
                            continue;
                        }
                    }
                }
                next = Some(i);
                break;
            }
            let Some(i) = next else {
                if let Some(done) = last {
                    // Every candidate has had its attempt: the last answer goes back.
                    return finish(done, attempts);
                }
                if let Some(e) = skipped {
                    return Err(e);
                }
                // Nothing attempted yet and everyone is cooling.
                let soonest = soonest.unwrap_or(now);
                if rcfg.on_all_cooling == OnAllCooling::Wait
                    && soonest <= wait_limit.min(self.deadline)
                {
                    tracing::debug!(
                        wait_ms = (soonest - now).as_millis() as u64,
                        "all credentials cooling: waiting"
                    );
                    tokio::time::sleep_until(soonest).await;
                    continue;
                }
                tracing::warn!(provider = %self.provider.id, model = model.unwrap_or("-"), "every credential is cooling down");
                return Err(ProxyError::AllCooling {
                    provider: self.provider.id.clone(),
                    retry_after: soonest.saturating_duration_since(now),
                });
            };
            if attempts as usize >= max_attempts {
                return last.map_or_else(
                    || Err(no_credentials(self.provider)),
                    |d| finish(d, attempts),
                );
            }
            tried[i] = true;
            let cand = &candidates[i];
            attempts += 1;
            access.attempts = attempts;
            access.credential = Some(Arc::clone(cand));
            st.registry.touch(cand);

            // The last possible attempt takes the request headers; earlier ones copy them,
            // as a retry needs them again.
            let last_chance = self.pinned || tried.iter().all(|t| *t);
            let headers = if last_chance {
                std::mem::take(&mut self.headers)
            } else {
                self.headers.clone()
            };
            let uri = if last_chance {
                plain_uri.take()
            } else {
                plain_uri.clone()
            };
            let outcome = self.attempt(cand, uri, attempts, headers).await?;
            let reason = match &outcome {
                Attempt::Done(_) => {
                    cand.count_attempt(None);
                    return finish(outcome, attempts);
                }
                Attempt::Failed(_, r) | Attempt::Error(_, r) => *r,
                // Counted as SPEC §7 counts a stream that breaks after commit.
                Attempt::Broken(_) => Reason::Timeout,
                Attempt::Skip(_) => {
                    // Not sent: the next credential serves and this one is not an attempt.
                    attempts -= 1;
                    access.attempts = attempts;
                    if let Attempt::Skip(e) = outcome {
                        skipped = Some(e);
                    }
                    continue;
                }
            };
            cand.count_attempt(Some(reason));
            let more = !self.pinned && tried.iter().any(|t| !t);
            let rotates = st.rotate_on.contains(&reason) || matches!(outcome, Attempt::Broken(_));
            if !(more && rotates) {
                return finish(outcome, attempts);
            }
            tracing::debug!(credential = %cand.cred.id, reason = reason.as_str(), "rotating to the next credential");
            st.metrics.rotation(&self.provider.id, reason);
            last = Some(outcome);
        }
    }

    /// Sends the request with one credential and decides what its answer means.
    async fn attempt(
        &self,
        cand: &Candidate,
        plain_uri: Option<Uri>,
        attempts: u32,
        headers: http::HeaderMap,
    ) -> Result<Attempt, ProxyError> {
        let st = self.state;
        let server = &st.config.server;
        // An oauth profile about to expire is refreshed first (SPEC §5).
        let refreshed;
        let fresh_secret;
        let (inject, secret) = if needs_oauth_refresh(cand) {
            // Boxed: a refresh is rare, and its future (an HTTP exchange of its own) would
            // otherwise enlarge every request's future, which is moved on every call.
            let refresh = Box::pin(st.refresher.fresh_token(
                &st.client,
                self.provider.oauth.as_ref(),
                st.registry.state_dir(),
                self.agent,
                cand.cred.id.as_str(),
            ));
            match refresh.await {
                Ok(fresh) => {
                    let mut cred = cand.cred.clone();
                    fresh_secret = fresh.access;
                    cred.secret = fresh_secret.clone();
                    cred.expires_ms = Some(fresh.expires_ms);
                    refreshed = Injection::new(self.provider, &cred)
                        .map_err(|e| ProxyError::Upstream(e.to_string()))?;
                    (&refreshed, &fresh_secret)
                }
                Err(reason) => {
                    let verdict = Verdict {
                        reason: Reason::Auth,
                        hint: None,
                    };
                    self.mark(cand, &verdict, None);
                    let e = ProxyError::OAuthRefresh {
                        provider: self.provider.id.clone(),
                        reason,
                    };
                    tracing::warn!(credential = %cand.cred.id, error = %e, "oauth refresh failed");
                    return Ok(Attempt::Skip(e));
                }
            }
        } else {
            (&cand.inject, &cand.cred.secret)
        };
        let uri = match (inject.query(), plain_uri) {
            (None, Some(uri)) => uri,
            (q, _) => upstream_uri(self.base, self.rest, self.query.as_deref(), q)?,
        };
        let mut up = Request::new(Full::new(self.body.clone()));
        *up.method_mut() = self.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers;
        inject.apply(up.headers_mut());

        let sent = Instant::now();
        let wait_until = (sent + server.first_byte_timeout).min(self.deadline);
        let answer = tokio::time::timeout_at(wait_until, st.client.request(up)).await;
        st.metrics.upstream(&self.provider.id, sent.elapsed());
        let resp = match answer {
            Err(_) => {
                return Ok(Attempt::Error(
                    ProxyError::UpstreamTimeout(server.first_byte_timeout),
                    Reason::Timeout,
                ))
            }
            Ok(Err(e)) => {
                return Ok(Attempt::Error(
                    ProxyError::Upstream(error_chain(&e)),
                    Reason::Unknown,
                ))
            }
            Ok(Ok(resp)) => resp,
        };
        if resp.status().is_informational() {
            // hyper passes a `101` on as the answer (any other 1xx is skipped): relaying it
            // would switch the client's connection (over h2, a protocol error).
            return Ok(Attempt::Error(
                ProxyError::UpstreamBroken(
                    "it switched protocols (101), which keygate does not relay",
                ),
                Reason::Unknown,
            ));
        }
        let (mut parts, incoming) = resp.into_parts();
        clean_response_headers(&mut parts.headers);
        parts
            .headers
            .insert(CREDENTIAL_HEADER, cand.id_header.clone());
        parts
            .headers
            .insert(ATTEMPTS_HEADER, attempts_value(attempts));
        let status = parts.status;
        let stream = stream_kind(&parts.headers);
        // Only SSE has a text error event to end a broken stream with; a broken AWS
        // event-stream (binary frames) just ends with a body error.
        let error_event =
            (stream == Some(StreamKind::Sse)).then(|| sse_error_event(&self.provider.id));
        let id = cand.cred.id.as_str();
        let model = self.model.as_deref();

        // A 304 is no error: it has no body and goes back as it came, like a 204.
        if !status.is_success() && status != StatusCode::NOT_MODIFIED {
            // Read the error body as it streams in, up to max_error_body, to classify it.
            let (held, rest, collected, broke) =
                read_error_body(incoming, server.max_error_body, wait_until).await;
            let verdict = classify::classify_response(
                &self.provider.id,
                status,
                &parts.headers,
                collected.as_bytes(),
                SystemTime::now(),
            );
            self.mark(cand, &verdict, Some(status.as_u16()));
            let body = redact_error(
                &mut parts.headers,
                secret,
                held,
                rest,
                broke,
                self.deadline,
                None,
            );
            let resp = Response::from_parts(parts, body);
            return Ok(Attempt::Failed(resp, verdict.reason));
        }

        // A success: steer away from a credential that says it is spent.
        let now = Instant::now();
        match classify::steering_hint(&parts.headers, SystemTime::now()) {
            Some(h) if !h.after.is_zero() => {
                st.cooldowns
                    .steer(id, cand.fp, model, h.after, h.source, now);
                tracing::info!(
                    credential = id,
                    model = model.unwrap_or("-"),
                    cooldown_s = h.after.as_secs_f64(),
                    source = h.source,
                    "credential spent: cooling before the provider says 429"
                );
            }
            _ => st.cooldowns.record_success(id, cand.fp, model, now),
        }

        if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
            // No body by definition (RFC 9110 §15.3.5, §15.4.5): the upstream's
            // `content-length` (transfer-encoding is already gone) would make a keep-alive
            // client wait for bytes that never come, or read the next answer as this body.
            parts.headers.remove(header::CONTENT_LENGTH);
            return Ok(Attempt::Done(Response::from_parts(
                parts,
                ProxyBody::full(Bytes::new()),
            )));
        }
        if stream.is_none() {
            return Ok(Attempt::Done(Response::from_parts(
                parts,
                ProxyBody::upstream(VecDeque::new(), Some(incoming), self.deadline, None, None),
            )));
        }
        let mut scanner = SseScanner::new(&self.provider.id);
        let mut held = VecDeque::new();
        let mut rest = Some(incoming);
        if st.config.rotation.peek_stream && !self.pinned {
            // The commit point: hold the stream until its first content-bearing event, so an
            // error event before it can still be retried on another credential.
            let (h, r, err) = match peek_stream(
                rest.take(),
                &mut scanner,
                server.max_error_body,
                wait_until,
            )
            .await
            {
                Peek::Commit(h, r) => (h, r, None),
                Peek::Error(h, r, verdict) => (h, r, Some(verdict)),
                Peek::Broke => {
                    // Nothing reached the client: the next candidate may serve (SPEC §7,
                    // no silent truncation). A broken connection says nothing about the
                    // credential, so nothing is marked.
                    tracing::warn!(provider = %self.provider.id, credential = id, "upstream stream broke before its first content event");
                    return Ok(Attempt::Broken(ProxyError::UpstreamBroken(
                        "its stream broke before the first content event",
                    )));
                }
            };
            held = h;
            rest = r;
            if let Some(mut verdict) = err {
                if verdict.hint.is_none() {
                    verdict.hint = classify::retry_hint(
                        &self.provider.id,
                        &parts.headers,
                        b"",
                        SystemTime::now(),
                    );
                }
                self.mark(cand, &verdict, None);
                let body = redact_error(
                    &mut parts.headers,
                    secret,
                    held,
                    rest,
                    false,
                    self.deadline,
                    error_event,
                );
                let resp = Response::from_parts(parts, body);
                return Ok(Attempt::Failed(resp, verdict.reason));
            }
        }
        let watch = StreamWatch {
            state: self.state.clone(),
            scanner,
            credential: cand.cred.id.to_string(),
            fp: cand.fp,
            model: self.model.clone(),
            provider: self.provider.id.clone(),
        };
        let body = ProxyBody::upstream(
            held,
            rest,
            self.deadline,
            error_event,
            Some(Box::new(watch)),
        );
        Ok(Attempt::Done(Response::from_parts(parts, body)))
    }

    /// Opens the cooldown window a verdict calls for.
    fn mark(&self, cand: &Candidate, verdict: &Verdict, status: Option<u16>) {
        mark(
            self.state,
            cand.cred.id.as_str(),
            cand.fp,
            self.model.as_deref(),
            verdict,
            status,
        );
    }
}

fn mark(
    state: &AppState,
    credential: &str,
    fp: u64,
    model: Option<&str>,
    verdict: &Verdict,
    status: Option<u16>,
) {
    if let Some((until, source)) =
        state
            .cooldowns
            .record_failure(credential, fp, model, verdict, status, Instant::now())
    {
        tracing::info!(
            credential,
            model = model.unwrap_or("*"),
            reason = verdict.reason.as_str(),
            cooldown_s = until.saturating_duration_since(Instant::now()).as_secs_f64(),
            source = %source,
            "credential cooling down"
        );
    }
}

fn finish(a: Attempt, attempts: u32) -> Result<Response<ProxyBody>, ProxyError> {
    match a {
        Attempt::Done(mut r) | Attempt::Failed(mut r, _) => {
            r.headers_mut()
                .insert(ATTEMPTS_HEADER, attempts_value(attempts));
            Ok(r)
        }
        Attempt::Error(e, _) | Attempt::Skip(e) | Attempt::Broken(e) => Err(e),
    }
}

/// The `x-keygate-attempts` value; the usual small counts without an allocation.
fn attempts_value(n: u32) -> HeaderValue {
    const SMALL: [&str; 9] = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match n.checked_sub(1).and_then(|i| SMALL.get(i as usize)) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

/// An oauth profile (not one managed by another tool) whose token expires soon.
fn needs_oauth_refresh(cand: &Candidate) -> bool {
    cand.cred.kind == Kind::OAuth
        && cand.cred.source == Source::Profile
        && cand.cred.id.as_str() != store::CLAUDE_CLI_PROFILE
        && oauth::needs_refresh(cand.cred.expires_ms, oauth::now_ms())
}

/// A connectivity check: `HEAD /<provider>` (or `/<provider>/`) for a known provider, as
/// Claude Code sends before each run without any credential. Answered 200 with no body, no
/// auth and no upstream call, logged at debug only: nothing is revealed (any known provider
/// id answers the same) and nothing is spent. Every other request goes the usual way.
fn base_path_probe(state: &AppState, req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
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

/// Reads up to `limit` bytes of an error body before `until`. Returns the frames read (to
/// replay), the rest of the body (`None` when it ended), the bytes to classify, and
/// whether the body broke (reset, read error) instead of ending.
async fn read_error_body(
    mut body: Incoming,
    limit: usize,
    until: Instant,
) -> (VecDeque<Bytes>, Option<Incoming>, ErrorBody, bool) {
    let mut held = VecDeque::new();
    let mut collected = ErrorBody::new(limit);
    loop {
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let more = collected.feed(&data);
                    held.push_back(data);
                    if !more {
                        return (held, Some(body), collected, false);
                    }
                }
            }
            Ok(None) => return (held, None, collected, false),
            Ok(Some(Err(_))) => return (held, None, collected, true),
            Err(_) => return (held, Some(body), collected, false),
        }
    }
}

/// The body of an upstream error answer passed on, with every occurrence of the injected
/// secret replaced in it and in `headers` (SPEC §8). Runs only on answers already treated
/// as errors, whose first `max_error_body` bytes are already held. A complete body is
/// redacted at once and gets its exact length; a longer one (or one that `broke` while
/// being read) is redacted as it streams and loses `content-length`. A body that `broke`
/// ends with a body error after its held frames, never cleanly.
fn redact_error(
    headers: &mut http::HeaderMap,
    secret: &Secret,
    mut held: VecDeque<Bytes>,
    rest: Option<Incoming>,
    broke: bool,
    deadline: Instant,
    error_event: Option<Bytes>,
) -> ProxyBody {
    let Some(redactor) = Redactor::new(secret) else {
        let body = ProxyBody::upstream(held, rest, deadline, error_event, None);
        return if broke { body.broken() } else { body };
    };
    redactor.headers(headers);
    if broke {
        headers.remove(header::CONTENT_LENGTH);
        return ProxyBody::redacted(held, None, deadline, error_event, redactor).broken();
    }
    if rest.is_none() {
        let whole: Bytes = match held.len() {
            0 => Bytes::new(),
            1 => held.pop_front().unwrap_or_default(),
            _ => held
                .iter()
                .flat_map(|b| b.iter().copied())
                .collect::<Vec<u8>>()
                .into(),
        };
        return match redactor.redact_all(&whole) {
            Some(clean) => {
                // `ProxyBody::full` has an exact size: hyper writes the new length.
                headers.remove(header::CONTENT_LENGTH);
                ProxyBody::full(clean)
            }
            None => {
                let held = if whole.is_empty() {
                    VecDeque::new()
                } else {
                    VecDeque::from([whole])
                };
                ProxyBody::upstream(held, None, deadline, error_event, None)
            }
        };
    }
    headers.remove(header::CONTENT_LENGTH);
    ProxyBody::redacted(held, rest, deadline, error_event, redactor)
}

/// What holding a 2xx stream back came to.
enum Peek {
    /// Pass it on: the held frames, then the rest (`None` when it already ended).
    Commit(VecDeque<Bytes>, Option<Incoming>),
    /// An error event came before the commit point.
    Error(VecDeque<Bytes>, Option<Incoming>, Verdict),
    /// The upstream broke (reset, read error) before the commit point.
    Broke,
}

/// Holds a 2xx stream until its first content-bearing event, an error event, `limit`
/// bytes, the end, a break, or `until`.
async fn peek_stream(
    body: Option<Incoming>,
    scanner: &mut SseScanner,
    limit: usize,
    until: Instant,
) -> Peek {
    let mut held = VecDeque::new();
    let Some(mut body) = body else {
        return Peek::Commit(held, None);
    };
    let mut seen = 0usize;
    loop {
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let r = scanner.feed(&data);
                seen += data.len();
                held.push_back(data);
                if let Some(e) = r.error.filter(|e| !e.after_content) {
                    return Peek::Error(held, Some(body), e.verdict);
                }
                if r.first_content || scanner.saw_content() || seen >= limit {
                    return Peek::Commit(held, Some(body));
                }
            }
            Ok(None) => {
                let r = scanner.finish();
                return match r.error.filter(|e| !e.after_content) {
                    Some(e) => Peek::Error(held, None, e.verdict),
                    None => Peek::Commit(held, None),
                };
            }
            // Handing on a body that already failed would end the client's stream cleanly.
            Ok(Some(Err(_))) => return Peek::Broke,
            // `first_byte_timeout`: commit; the stream runs on under the request deadline.
            Err(_) => return Peek::Commit(held, Some(body)),
        }
    }
}

/// Watches a committed stream: errors inside it still open cooldowns, and an answer that
/// ends without its terminal event is reported incomplete.
struct StreamWatch {
    state: Arc<AppState>,
    scanner: SseScanner,
    credential: String,
    fp: u64,
    model: Option<Arc<str>>,
    provider: String,
}

impl super::body::Observer for StreamWatch {
    fn frame(&mut self, data: &Bytes) {
        let r = self.scanner.feed(data);
        if let Some(e) = r.error {
            mark(
                &self.state,
                &self.credential,
                self.fp,
                self.model.as_deref(),
                &e.verdict,
                None,
            );
        }
    }

    fn end(&mut self, end: super::body::StreamEnd) -> bool {
        use super::body::StreamEnd;
        match end {
            StreamEnd::Complete => {
                let r = self.scanner.finish();
                if let Some(e) = r.error {
                    mark(
                        &self.state,
                        &self.credential,
                        self.fp,
                        self.model.as_deref(),
                        &e.verdict,
                        None,
                    );
                }
                // A stream that carried content but no terminal event was cut short.
                let incomplete = self.scanner.saw_content()
                    && !self.scanner.saw_terminal()
                    && self.scanner.first_error().is_none();
                if incomplete {
                    tracing::warn!(provider = %self.provider, credential = %self.credential, "upstream stream ended without its terminal event");
                }
                incomplete
            }
            StreamEnd::UpstreamError | StreamEnd::Deadline => {
                tracing::warn!(provider = %self.provider, credential = %self.credential, ?end, "upstream stream broke after commit");
                false
            }
            StreamEnd::ClientGone => false,
        }
    }
}

/// The streamed answers keygate looks into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamKind {
    /// `text/event-stream`.
    Sse,
    /// AWS `application/vnd.amazon.eventstream` (Bedrock), binary frames.
    AwsEventStream,
}

fn stream_kind(headers: &http::HeaderMap) -> Option<StreamKind> {
    let ct = headers
        .get(header::CONTENT_TYPE)?
        .to_str()
        .ok()?
        .trim_start();
    if ct.starts_with("text/event-stream") {
        Some(StreamKind::Sse)
    } else if ct.starts_with("application/vnd.amazon.eventstream") {
        Some(StreamKind::AwsEventStream)
    } else {
        None
    }
}

/// The event that ends a broken stream in the provider's own protocol, so SDKs raise an
/// error instead of treating a truncated answer as complete.
pub fn sse_error_event(provider: &str) -> Bytes {
    // Static: every streaming answer carries one, and almost none is ever sent.
    macro_rules! msg {
        () => {
            "upstream stream ended unexpectedly (keygate)"
        };
    }
    Bytes::from_static(match provider {
        "anthropic" => concat!(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"",
            msg!(),
            "\"}}\n\n"
        ),
        "google" => concat!(
            "data: {\"error\":{\"code\":502,\"message\":\"",
            msg!(),
            "\",\"status\":\"UNAVAILABLE\"}}\n\n"
        ),
        _ => concat!(
            "data: {\"error\":{\"message\":\"",
            msg!(),
            "\",\"type\":\"server_error\",\"code\":\"upstream_stream_broken\"}}\n\n"
        ),
    }
    .as_bytes())
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
