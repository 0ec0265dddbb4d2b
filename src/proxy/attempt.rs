//! The attempts of one request: the rotation loop over its candidates, and one send.
//!
//! Policy sits outside the loop's mechanism: [`Selector`] says who may serve next,
//! `[rotation]` (`rotate_on`, `max_attempts`, `on_all_cooling`, `max_wait`) says whether to
//! go on, and [`inspect`] reads each answer. One attempt refreshes an expiring OAuth token,
//! injects the credential, sends the same request `Bytes` and turns the answer into an
//! [`Attempt`]. In cluster mode a pick the selector allows is then asked of the cluster's
//! `rpm` budget (`cluster::slots`), and a refusal skips it like a local one. A pick under
//! `max_in_flight` (SPEC §11) comes with its slot, held over the send and then by the answer's
//! body (in cluster mode with a `Cluster::lease` too, skipped like a local refusal when
//! refused); when every candidate is at its cap the request waits for a slot up to `max_wait`.
//! After a failure that rotates, the rest of the failed credential's quota domain (SPEC §11)
//! counts as tried, so the next attempt goes to another account. Each answer may teach its
//! credential's domain (`Registry::learn_domain`). It does not own admission (`admit`) nor
//! the answer's bytes (`inspect`, `body`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use tokio::time::Instant;

use super::error::{self, sse_error_event, ProxyError};
use super::inspect::{self, Peek, StreamKind, StreamWatch};
use super::route::upstream_uri;
use super::{Access, ProxyBody, AFFINITY_HEADER, ATTEMPTS_HEADER, CREDENTIAL_HEADER};
use crate::classify::{self, Reason, SseScanner, Verdict};
use crate::cluster::slots::MAX_LEASE_TTL;
use crate::cluster::{Lease, Leased, Slot};
use crate::config::{OnAllCooling, ProviderConfig};
use crate::credentials::oauth;
use crate::credentials::{store, Kind, Source};
use crate::inject::{clean_response_headers, Injection};
use crate::pool::{
    affinity, AgentPool, Candidate, Caps, InFlightSlot, Pick, Selector, Session, Stuck,
};
use crate::state::AppState;

/// One request's attempts over its candidates.
pub(super) struct Exchange<'a> {
    pub(super) state: &'a Arc<AppState>,
    pub(super) provider: &'a ProviderConfig,
    pub(super) base: &'a str,
    pub(super) rest: &'a str,
    pub(super) method: http::Method,
    pub(super) headers: http::HeaderMap,
    pub(super) query: Option<String>,
    pub(super) body: Bytes,
    pub(super) model: Option<Arc<str>>,
    pub(super) deadline: Instant,
    pub(super) pinned: bool,
    pub(super) agent: &'a str,
    /// The conversation, when affinity is on and the request names one (SPEC §11).
    pub(super) session: Option<Session>,
    /// The pool the candidates come from (quota domain siblings, SPEC §11).
    pub(super) pool: &'a Arc<AgentPool>,
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
    /// keygate's own request deadline passed before the upstream answered, the upstream
    /// possibly still fine (SPEC §11): nothing is counted against the credential.
    Abandoned(ProxyError),
}

impl Attempt {
    /// Ties an in-flight slot to the answer's body (dropped at once when there is none).
    fn hold(self, slot: Option<InFlightSlot>, lease: Option<Box<Lease>>) -> Self {
        match self {
            Attempt::Done(r) => Attempt::Done(r.map(|b| b.hold(slot).hold_lease(lease))),
            Attempt::Failed(r, why) => {
                Attempt::Failed(r.map(|b| b.hold(slot).hold_lease(lease)), why)
            }
            other => other,
        }
    }
}

/// How often a request waiting for a slot another replica holds asks the cluster again.
const CLUSTER_SLOT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Waits until a slot of `caps` frees up, or `until`. A wake-up missed between the check
/// and the wait costs at most one tick.
async fn wait_for_slot(caps: &Caps, until: Instant) {
    const TICK: std::time::Duration = std::time::Duration::from_millis(50);
    let until = until.min(Instant::now() + TICK);
    let _ = tokio::time::timeout_at(until, caps.freed().notified()).await;
}

impl Exchange<'_> {
    /// The attempts, the session's credential first (SPEC §11): the selector still decides
    /// whether it may serve, so a cooling one is passed over as usual and the session moves
    /// to the credential whose success answers it. Only the allowed candidates are ever
    /// reordered; an answer from upstream says `x-keygate-affinity`.
    pub(super) async fn run(
        self,
        mut candidates: Vec<&Arc<Candidate>>,
        access: &mut Access<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let st = self.state;
        let sticky = match (&st.affinity, self.session) {
            (Some(map), Some(s)) => {
                let prev = map.lookup(s, Instant::now());
                if let Some(fp) = prev {
                    affinity::promote(&mut candidates, fp, |c| c.fp);
                }
                Some((map, s, prev))
            }
            _ => None,
        };
        let mut resp = self.rotate(candidates, access).await;
        if let (Some((map, s, prev)), Ok(r), Some((fp, success))) =
            (sticky, &mut resp, access.answered)
        {
            let stuck = affinity::stuck(prev, fp);
            // Only a success moves the session (an error answer, a 200 stream that opened
            // with an error event included); a kept one was refreshed by its lookup.
            if stuck != Stuck::Kept && success {
                map.record(s, fp, Instant::now());
            }
            st.metrics.affinity(stuck.as_str());
            r.headers_mut()
                .insert(AFFINITY_HEADER, HeaderValue::from_static(stuck.as_str()));
        }
        resp
    }

    async fn rotate(
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
        // Whose answer `last` is.
        let mut last_fp = 0u64;
        let mut skipped: Option<ProxyError> = None;
        let mut tried = vec![false; candidates.len()];
        // Candidates the cluster said are at their rpm (SPEC §10): skipped like `tried`
        // until a wait, then asked again.
        let mut refused = Refused::default();
        // A candidate the cluster said is at its max_in_flight (counts as `at_cap`).
        let mut cluster_at_cap = false;
        let cluster_rpm = match (&st.cluster, self.provider.rpm) {
            (Some(c), Some(rpm)) if !self.pinned => Some((c, rpm)),
            _ => None,
        };
        let in_flight = st.limits.in_flight(&self.provider.id);
        // Cluster mode with a cap: the lease first, then the rpm token (local, then shared).
        let defer_rpm = st.cluster.is_some() && in_flight.is_some();
        let mut select = Selector::new(
            &st.cooldowns,
            &st.limits,
            &self.provider.id,
            model,
            self.pinned,
        );
        if defer_rpm {
            select = select.defer_rpm();
        }
        loop {
            // Who may serve now: not cooling for this model, not disabled, under its rpm.
            let now = Instant::now();
            let (i, slot) = match select.next(&candidates, refused.mask(&tried), now) {
                Pick::Use(i, slot) => (i, slot),
                Pick::Blocked { soonest, at_cap } => {
                    let at_cap = at_cap || cluster_at_cap;
                    let soonest = refused.soonest(soonest);
                    if let Some(done) = last {
                        // Every candidate has had its attempt: the last answer goes back.
                        access.answered = Some((last_fp, false));
                        return finish(done, attempts);
                    }
                    if let Some(e) = skipped {
                        return Err(e);
                    }
                    if at_cap {
                        // Every usable candidate is at its max_in_flight: wait for a slot
                        // up to max_wait, whatever on_all_cooling says (SPEC §11).
                        let limit = wait_limit.min(self.deadline);
                        if let (Some(caps), true) = (in_flight, now < limit) {
                            let until = soonest.map_or(limit, |s| s.max(now).min(limit));
                            // Boxed: only a request that waits pays for the wait's future.
                            Box::pin(wait_for_slot(caps, until)).await;
                            refused.clear();
                            cluster_at_cap = false;
                            continue;
                        }
                        tracing::warn!(provider = %self.provider.id, model = model.unwrap_or("-"), "every credential is at its max_in_flight");
                        return Err(ProxyError::AllBusy {
                            provider: self.provider.id.clone(),
                        });
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
                        refused.clear();
                        cluster_at_cap = false;
                        continue;
                    }
                    tracing::warn!(provider = %self.provider.id, model = model.unwrap_or("-"), "every credential is cooling down");
                    return Err(ProxyError::AllCooling {
                        provider: self.provider.id.clone(),
                        retry_after: soonest.saturating_duration_since(now),
                    });
                }
            };
            if attempts as usize >= max_attempts {
                return match last {
                    Some(d) => {
                        access.answered = Some((last_fp, false));
                        finish(d, attempts)
                    }
                    None => Err(error::no_credentials(self.provider)),
                };
            }
            let cand = &candidates[i];
            // In cluster mode the cap is also asked of the cluster (a lease, refreshed while
            // held); Redis away or slow: the local slot alone decides. Asked before any rpm
            // budget is spent, so a candidate at its cap uses up none.
            let mut lease = None;
            if let (Some(cluster), Some(cap), Some(_)) =
                (&st.cluster, self.provider.max_in_flight, &slot)
            {
                match Box::pin(cluster.lease(cand, cap, MAX_LEASE_TTL)).await {
                    Leased::Held(l) => lease = Some(Box::new(l)),
                    Leased::Refused => {
                        tracing::debug!(credential = %cand.cred.id, "at its max_in_flight across the cluster: skipped");
                        refused.refuse(i, candidates.len(), Instant::now() + CLUSTER_SLOT_POLL);
                        cluster_at_cap = true;
                        continue;
                    }
                    Leased::Local => {}
                }
            }
            if defer_rpm {
                if let Err(until) = select.take_rpm(cand, Instant::now()) {
                    // The slot and the lease are given back as they drop.
                    refused.refuse(i, candidates.len(), until);
                    continue;
                }
            }
            if let Some((cluster, rpm)) = cluster_rpm {
                // The local limiter said yes (a cheap first filter: a replica over the rpm
                // alone is over it cluster-wide); the cluster has the last word.
                // Boxed, like the OAuth refresh: a Redis call's future would otherwise
                // enlarge every request's future, cluster or not.
                if let Slot::Refused(wait) = Box::pin(cluster.rpm_slot(cand, rpm)).await {
                    tracing::debug!(credential = %cand.cred.id, "at its rpm across the cluster: skipped");
                    refused.refuse(i, candidates.len(), Instant::now() + wait);
                    continue;
                }
            }
            tried[i] = true;
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
            // The in-flight slot is held over the send, then by the answer's body until it
            // ends in any way (a dropped future drops it too).
            let outcome = self
                .attempt(cand, uri, attempts, headers)
                .await?
                .hold(slot, lease);
            let reason = match &outcome {
                Attempt::Done(_) => {
                    cand.count_attempt(None);
                    access.answered = Some((cand.fp, true));
                    return finish(outcome, attempts);
                }
                // keygate's own deadline, not the upstream's fault: not counted, no rotation.
                // An earlier attempt's answer is worth more to the client than a 504.
                Attempt::Abandoned(_) => {
                    return match last {
                        Some(d) => {
                            access.answered = Some((last_fp, false));
                            finish(d, attempts)
                        }
                        None => finish(outcome, attempts),
                    };
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
            // Only an answer from the provider speaks for the account: a timeout, a refused
            // connection or a broken stream says nothing about the key's siblings.
            if matches!(outcome, Attempt::Failed(..)) {
                skip_domain(&mut tried, &candidates, cand, reason);
            }
            let more = !self.pinned && tried.iter().any(|t| !t);
            let rotates = st.rotate_on.contains(&reason) || matches!(outcome, Attempt::Broken(_));
            if !(more && rotates) {
                if matches!(outcome, Attempt::Failed(..)) {
                    access.answered = Some((cand.fp, false));
                }
                return finish(outcome, attempts);
            }
            tracing::debug!(credential = %cand.cred.id, reason = reason.as_str(), "rotating to the next credential");
            st.metrics.rotation(&self.provider.id, reason);
            let mut outcome = outcome;
            if let Attempt::Failed(r, _) = &mut outcome {
                // Kept only in case nobody else answers: its credential is free again.
                r.body_mut().release();
            }
            last = Some(outcome);
            last_fp = cand.fp;
        }
    }

    /// Sends the request with one credential and decides what its answer means.
    async fn attempt(
        &self,
        cand: &Arc<Candidate>,
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
                    refreshed = Injection::new(self.provider, &cred)?;
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
            Err(_)
                if wait_until == self.deadline && sent + server.first_byte_timeout > wait_until =>
            {
                // keygate's own request deadline, not the upstream's first-byte timeout.
                return Ok(Attempt::Abandoned(ProxyError::UpstreamTimeout(
                    server.request_timeout,
                )));
            }
            Err(_) => {
                return Ok(Attempt::Error(
                    ProxyError::UpstreamTimeout(server.first_byte_timeout),
                    Reason::Timeout,
                ))
            }
            Ok(Err(e)) => return Ok(Attempt::Error(ProxyError::Upstream(e), Reason::Unknown)),
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
        st.registry.learn_domain(cand, &parts.headers);
        clean_response_headers(&mut parts.headers);
        parts
            .headers
            .insert(CREDENTIAL_HEADER, cand.id_header.clone());
        parts
            .headers
            .insert(ATTEMPTS_HEADER, attempts_value(attempts));
        let status = parts.status;
        let stream = inspect::stream_kind(&parts.headers);
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
                inspect::read_error_body(incoming, server.max_error_body, wait_until).await;
            let verdict = classify::classify_response(
                &self.provider.id,
                status,
                &parts.headers,
                collected.as_bytes(),
                SystemTime::now(),
            );
            self.mark(cand, &verdict, Some(status.as_u16()));
            let body = inspect::redact_error(
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
        // A spent credential cools even when its reset cannot be right (ladder then).
        match classify::steering(&parts.headers, SystemTime::now()) {
            Some(spent) => {
                if let Some((after, source)) =
                    st.cooldowns.steer(id, cand.fp, model, spent.hint, now)
                {
                    tracing::info!(
                        credential = id,
                        model = model.unwrap_or("-"),
                        cooldown_s = after.as_secs_f64(),
                        source = source.as_ref(),
                        "credential spent: cooling before the provider says 429"
                    );
                }
            }
            None => st.cooldowns.record_success(id, cand.fp, model, now),
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
            let (h, r, err) = match inspect::peek_stream(
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
                let body = inspect::redact_error(
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
            cand: cand.clone(),
            pool: self.pool.clone(),
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
        inspect::mark(
            self.state,
            cand,
            inspect::siblings(self.pool, &self.provider.id),
            self.model.as_deref(),
            verdict,
            status,
        );
    }
}

/// After `cand` failed with `reason`, the rest of its quota domain counts as tried: its
/// siblings share its limits, so the next attempt goes to another domain (SPEC §11). Not
/// after `auth` or `auth_permanent`: a revoked key says nothing about its siblings. Only
/// on a failure, so the scan costs nothing on the usual path.
fn skip_domain(
    tried: &mut [bool],
    candidates: &[&Arc<Candidate>],
    cand: &Candidate,
    reason: Reason,
) {
    if matches!(reason, Reason::Auth | Reason::AuthPermanent) {
        return;
    }
    let Some(domain) = cand.domain() else { return };
    for (t, c) in tried.iter_mut().zip(candidates) {
        if c.domain() == Some(domain) {
            *t = true;
        }
    }
}

/// The candidates the cluster refused for their rpm in this round, and when the first frees
/// up. Allocates only once a refusal happens.
#[derive(Default)]
struct Refused {
    /// `tried` or refused, per candidate (empty until a refusal).
    skip: Vec<bool>,
    refused: Vec<bool>,
    soonest: Option<Instant>,
}

impl Refused {
    /// What the selector skips: `tried`, plus the refused.
    fn mask<'a>(&'a mut self, tried: &'a [bool]) -> &'a [bool] {
        if self.refused.is_empty() {
            return tried;
        }
        self.skip.clear();
        self.skip
            .extend(tried.iter().zip(&self.refused).map(|(t, r)| *t || *r));
        &self.skip
    }

    fn refuse(&mut self, i: usize, n: usize, until: Instant) {
        if self.refused.is_empty() {
            self.refused = vec![false; n];
        }
        self.refused[i] = true;
        self.soonest = Some(self.soonest.map_or(until, |s| s.min(until)));
    }

    /// The soonest of the selector's and the refusals'.
    fn soonest(&self, selector: Option<Instant>) -> Option<Instant> {
        match (selector, self.soonest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// After a wait, every candidate is asked again.
    fn clear(&mut self) {
        self.refused.iter_mut().for_each(|r| *r = false);
        self.soonest = None;
    }
}

fn finish(a: Attempt, attempts: u32) -> Result<Response<ProxyBody>, ProxyError> {
    match a {
        Attempt::Done(mut r) | Attempt::Failed(mut r, _) => {
            r.headers_mut()
                .insert(ATTEMPTS_HEADER, attempts_value(attempts));
            Ok(r)
        }
        Attempt::Error(e, _) | Attempt::Skip(e) | Attempt::Broken(e) | Attempt::Abandoned(e) => {
            Err(e)
        }
    }
}

/// The `x-keygate-attempts` value; the usual small counts without an allocation.
pub(super) fn attempts_value(n: u32) -> HeaderValue {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn refused_candidates_are_skipped_until_a_wait_and_report_the_soonest() {
        let tried = [true, false, false];
        let mut r = Refused::default();
        assert_eq!(r.mask(&tried), &tried, "nothing refused: `tried` as is");
        let now = Instant::now();
        r.refuse(2, 3, now + Duration::from_secs(40));
        r.refuse(1, 3, now + Duration::from_secs(20));
        assert_eq!(r.mask(&tried), &[true, true, true]);
        assert_eq!(r.soonest(None), Some(now + Duration::from_secs(20)));
        assert_eq!(
            r.soonest(Some(now + Duration::from_secs(5))),
            Some(now + Duration::from_secs(5))
        );
        r.clear();
        assert_eq!(r.mask(&tried), &tried);
        assert_eq!(r.soonest(None), None);
    }
}
