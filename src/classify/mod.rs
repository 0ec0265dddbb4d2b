//! Upstream answer classification (SPEC §7): turns a provider's answer into a [`Reason`]
//! and, when the provider gives one, a [`RetryHint`].
//!
//! Owns:
//! - the reasons table and the classifier rules 1–5 of SPEC §7 ([`classify_response`]);
//! - retry-hint parsing: `retry-after` / `retry-after-ms`, Google `RetryInfo`, "try again in
//!   …" sentences, and the reset header of the exhausted rate-limit dimension
//!   ([`retry_hint`]); the same reset headers on a success answer ([`steering_hint`]);
//! - a bounded collector for error bodies ([`ErrorBody`]);
//! - an incremental scanner for 2xx streams ([`SseScanner`]): the commit point (first
//!   content-bearing event), error events inside the stream, and the terminal event. It also
//!   decodes AWS binary event-stream frames (Bedrock), detected by their first byte.
//!
//! Does not own: what a verdict leads to (rotation, `rotate_on`, cooldown lengths and
//! ladders, metrics), reading bodies off the wire, or any I/O. Every function here is pure: the same bytes and the same `now` give the same
//! answer, so the module is tested from recorded answers (`fixtures/provider-errors/`).
//!
//! What is looked at (rule 1): only the provider's error object — `error.type`, `code`,
//! `status`, `message`, Anthropic `details.error_code`, Google `details` (`ErrorInfo.reason`,
//! `QuotaFailure`, `RetryInfo`), OpenRouter `metadata.raw`, Cloudflare `errors[]`, AWS
//! `x-amzn-ErrorType` / `__type` — never generated content, and free text only after the
//! structured fields. Quoted spans inside a message (`'rate_limit_report'`, `` `model` ``)
//! are masked before any wording check, because that is where providers echo request text.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

mod eventstream;
mod fields;
mod hint;
mod needle;
mod rules;
mod sse;

pub use hint::{
    parse_go_duration, parse_retry_after, steering, steering_hint, Spent, ABSURD_RESET, MAX_HINT,
};
pub use sse::{ScanResult, SseScanner, StreamError, LINE_LIMIT};
// For `crate::fuzzing`, which checks these parsers directly.
pub(crate) use hint::{parse_message_hint, parse_number, parse_reset, parse_rfc3339};

/// Why an upstream answer failed (SPEC §7 reasons table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// This credential's allowance is used up for now; another key or a wait helps.
    RateLimit,
    /// The account behind this credential is out of money or over a spend cap.
    Billing,
    /// This credential will not work again (revoked, deactivated, leaked, Claude-Code-only).
    AuthPermanent,
    /// This credential is rejected.
    Auth,
    /// The provider is out of capacity; other keys fail too.
    Overloaded,
    /// The model does not exist for this credential.
    ModelNotFound,
    /// No answer in time.
    Timeout,
    /// The request itself is wrong; no key fixes it.
    Format,
    /// Anything else (other 5xx, HTML error pages, region refusals).
    Unknown,
}

/// A provider's advice on when to try again, and where it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryHint {
    /// How long to wait, relative to the answer; capped at [`MAX_HINT`] (24 h).
    pub after: Duration,
    /// Where it came from: `"retry-after"`, `"retry-after-ms"`, `"RetryInfo"`, `"message"`,
    /// or the reset header's name (`"x-ratelimit-reset-requests"`,
    /// `"anthropic-ratelimit-tokens-reset"`, `"x-ratelimit-reset"`, …).
    pub source: &'static str,
}

/// The classification of one failed answer or in-stream error event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Why it failed.
    pub reason: Reason,
    /// When to try again, if the provider said so.
    pub hint: Option<RetryHint>,
}

/// Bounded collector for an error body arriving in chunks: keeps at most `limit` bytes
/// (`max_error_body`), never more, whatever the chunk sizes.
#[derive(Clone, Debug)]
pub struct ErrorBody {
    buf: Vec<u8>,
    limit: usize,
    truncated: bool,
}

// === impl Reason ===

impl Reason {
    /// Every reason, in table order.
    pub const ALL: [Reason; 9] = [
        Reason::RateLimit,
        Reason::Billing,
        Reason::AuthPermanent,
        Reason::Auth,
        Reason::Overloaded,
        Reason::ModelNotFound,
        Reason::Timeout,
        Reason::Format,
        Reason::Unknown,
    ];

    /// The wire name used in config (`rotate_on`), status output and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimit => "rate_limit",
            Reason::Billing => "billing",
            Reason::AuthPermanent => "auth_permanent",
            Reason::Auth => "auth",
            Reason::Overloaded => "overloaded",
            Reason::ModelNotFound => "model_not_found",
            Reason::Timeout => "timeout",
            Reason::Format => "format",
            Reason::Unknown => "unknown",
        }
    }

    /// The reverse of [`Reason::as_str`]. Returns `None` for any other string.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl ErrorBody ===

impl ErrorBody {
    /// A collector that keeps at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ErrorBody {
            buf: Vec::with_capacity(limit.min(4096)),
            limit,
            truncated: false,
        }
    }

    /// Appends as much of `chunk` as fits. Returns `false` once the limit is reached (the
    /// caller may stop reading), `true` while more would be kept.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let room = self.limit - self.buf.len();
        if chunk.len() > room {
            self.truncated = true;
        }
        let take = chunk.len().min(room);
        self.buf.extend_from_slice(&chunk[..take]);
        self.buf.len() < self.limit
    }

    /// The bytes kept so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Whether bytes were dropped because the limit was reached.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

/// Classifies a non-2xx answer.
///
/// `provider` is the provider id (SPEC §2, or a custom one; `gemini`, `vertex` and
/// `azure-openai` spellings are understood too). `body` is at most `max_error_body` bytes
/// and may be truncated JSON, HTML or plain text. `now` is used for absolute reset times
/// (RFC 3339 and HTTP dates relative to the `Date` header when present, else `now`;
/// epoch resets relative to `now`). A 2xx status given here finds no error signal and is
/// reported as [`Reason::Unknown`]; success answers are not meant to come here.
pub fn classify_response(
    provider: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Verdict {
    let family = rules::Family::of(provider);
    let f = fields::ErrorFields::from_response(headers, body);
    let reason = rules::decide(Some(status.as_u16()), family, &f);
    let hint = hint::hint_from(headers, &f, now);
    Verdict { reason, hint }
}

/// The retry hint alone (SPEC §7 rule 5), first found: `retry-after` / `retry-after-ms`
/// header → Google `RetryInfo.retryDelay` → a sentence of the error message ("try again in
/// 1.574s", "retry after 37 seconds") → the reset header of the exhausted dimension only
/// (its `remaining` is 0). Capped at [`MAX_HINT`]. `provider` is accepted for
/// provider-specific formats; every format above is recognised for every provider today.
/// Passing an empty `body` gives the header-only hint (e.g. for a 2xx stream whose error
/// event was classified by [`SseScanner`]).
///
/// Returns `None` when none of these is present or parses.
pub fn retry_hint(
    provider: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Option<RetryHint> {
    let _ = provider;
    let f = fields::ErrorFields::from_response(headers, body);
    hint::hint_from(headers, &f, now)
}

#[cfg(test)]
mod tests;
