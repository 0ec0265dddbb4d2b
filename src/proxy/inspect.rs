//! Reading an upstream answer, and what it says about the credential.
//!
//! Owns the bounded read of an error body (to classify it, then replay it redacted), the hold
//! of a 2xx stream until its commit point (its first content-bearing event), the watch over a
//! committed stream (errors inside it still open cooldowns; a stream without its terminal
//! event is reported incomplete), and opening the cooldown windows a verdict calls for —
//! for the credential, and for a `rate_limit` or `billing` the same window for the rest of
//! its quota domain (SPEC §11). It does not decide whether to rotate (`attempt`).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::{Observer, ProxyBody, StreamEnd};
use crate::classify::{ErrorBody, Reason, SseScanner, Verdict};
use crate::cooldown::Scope;
use crate::pool::{AgentPool, Candidate};
use crate::redact::Redactor;
use crate::secret::Secret;
use crate::state::AppState;

/// Opens the cooldown window a verdict calls for (and logs it, by credential id). A
/// `rate_limit` or `billing` window is copied to the credential's quota domain among
/// `siblings` (its provider's candidates in the agent's pool): one account, one limit.
/// `auth` and `auth_permanent` stay with the credential (a revoked key says nothing about
/// the other keys of its account).
pub(super) fn mark(
    state: &AppState,
    cand: &Candidate,
    siblings: &[Arc<Candidate>],
    model: Option<&str>,
    verdict: &Verdict,
    status: Option<u16>,
) {
    let credential = cand.cred.id.as_str();
    let now = Instant::now();
    let Some((until, source)) = state
        .cooldowns
        .record_failure(credential, cand.fp, model, verdict, status, now)
    else {
        return;
    };
    tracing::info!(
        credential,
        model = model.unwrap_or("*"),
        reason = verdict.reason.as_str(),
        cooldown_s = until.saturating_duration_since(now).as_secs_f64(),
        source = %source,
        "credential cooling down"
    );
    let Some(domain) = cand.domain() else {
        return;
    };
    if !matches!(verdict.reason, Reason::RateLimit | Reason::Billing) {
        return;
    }
    let Some(scope) = Scope::of_failure(verdict.reason, model) else {
        return;
    };
    let others = siblings
        .iter()
        .filter(|s| s.domain() == Some(domain))
        .map(|s| (s.cred.id.as_str(), s.fp));
    let cooled = state
        .cooldowns
        .share(credential, cand.fp, &scope, others, now);
    if !cooled.is_empty() {
        tracing::info!(
            credential,
            domain = %domain,
            siblings = ?cooled,
            model = model.unwrap_or("*"),
            reason = verdict.reason.as_str(),
            "quota domain cooling down"
        );
    }
}

/// The candidates of `provider` in `pool`: where a failure looks for its domain siblings.
pub(super) fn siblings<'p>(pool: &'p AgentPool, provider: &str) -> &'p [Arc<Candidate>] {
    pool.providers
        .get(provider)
        .map_or(&[][..], |p| p.candidates.as_slice())
}

/// Reads up to `limit` bytes of an error body before `until`. Returns the frames read (to
/// replay), the rest of the body (`None` when it ended), the bytes to classify, and
/// whether the body broke (reset, read error) instead of ending.
pub(super) async fn read_error_body(
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
pub(super) fn redact_error(
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
pub(super) enum Peek {
    /// Pass it on: the held frames, then the rest (`None` when it already ended).
    Commit(VecDeque<Bytes>, Option<Incoming>),
    /// An error event came before the commit point.
    Error(VecDeque<Bytes>, Option<Incoming>, Verdict),
    /// The upstream broke (reset, read error) before the commit point.
    Broke,
}

/// Holds a 2xx stream until its first content-bearing event, an error event, `limit`
/// bytes, the end, a break, or `until`.
pub(super) async fn peek_stream(
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
pub(super) struct StreamWatch {
    pub(super) state: Arc<AppState>,
    pub(super) scanner: SseScanner,
    pub(super) cand: Arc<Candidate>,
    /// The pool the request was served from (its quota domain siblings).
    pub(super) pool: Arc<AgentPool>,
    pub(super) model: Option<Arc<str>>,
    pub(super) provider: String,
}

impl StreamWatch {
    fn mark(&self, verdict: &Verdict) {
        mark(
            &self.state,
            &self.cand,
            siblings(&self.pool, &self.provider),
            self.model.as_deref(),
            verdict,
            None,
        );
    }
}

impl Observer for StreamWatch {
    fn frame(&mut self, data: &Bytes) {
        let r = self.scanner.feed(data);
        if let Some(e) = r.error {
            self.mark(&e.verdict);
        }
    }

    fn end(&mut self, end: StreamEnd) -> bool {
        match end {
            StreamEnd::Complete => {
                let r = self.scanner.finish();
                if let Some(e) = r.error {
                    self.mark(&e.verdict);
                }
                // A stream that carried content but no terminal event was cut short.
                let incomplete = self.scanner.saw_content()
                    && !self.scanner.saw_terminal()
                    && self.scanner.first_error().is_none();
                if incomplete {
                    tracing::warn!(provider = %self.provider, credential = %self.cand.cred.id, "upstream stream ended without its terminal event");
                }
                incomplete
            }
            StreamEnd::UpstreamError | StreamEnd::Deadline => {
                tracing::warn!(provider = %self.provider, credential = %self.cand.cred.id, ?end, "upstream stream broke after commit");
                false
            }
            StreamEnd::ClientGone => false,
        }
    }
}

/// The streamed answers keygate looks into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StreamKind {
    /// `text/event-stream`.
    Sse,
    /// AWS `application/vnd.amazon.eventstream` (Bedrock), binary frames.
    AwsEventStream,
}

pub(super) fn stream_kind(headers: &http::HeaderMap) -> Option<StreamKind> {
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
