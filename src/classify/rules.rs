//! The classifier rules of SPEC §7, in order, over the fields of one error object.
//!
//! Owns: the order of the checks (permanent auth → billing → region refusal → capacity →
//! oversized request → timeout → rate limit → auth → model → status fallback) and the
//! marker lists. Structured fields (type, code, Google status and details, AWS exception
//! names, Cloudflare codes) are checked before wording in each step. Wording that can be
//! echoed request text (rate-limit and capacity words) is only read on 429, 5xx and
//! in-stream errors, never on a 400/413/422. It does not extract fields (see `fields`) nor
//! compute hints (see `hint`).

use std::sync::LazyLock;

use super::fields::ErrorFields;
use super::needle::{Hay, Needle};
use super::Reason;

/// Provider families whose wording differs (SPEC §7 rule 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// Google AI Studio / Vertex (`google`, `gemini`, `vertex`).
    Google,
    /// Everyone else: OpenAI and the OpenAI-compatible, Anthropic, Bedrock, ….
    Other,
}

/// Billing codes found in `type` / `code` / `details.error_code` (substring match).
const BILLING_TAGS: &[&str] = &[
    "insufficient_quota",
    "credit_balance",
    "spend_limit",
    "usage_limit_exceeded",
    "billing",
    "insufficient_funds",
    "insufficient_balance",
    "insufficient_credit",
    "payment_required",
    "quota_exhausted_billing",
];

/// Billing wording. Kept to phrases that name money or a month: "upgrade to Dev Tier"
/// (Groq) and "add 10 credits to unlock" (OpenRouter free models) are rate limits.
const BILLING_TEXT: &[&str] = &[
    "credit balance",
    "insufficient balance",
    "insufficient funds",
    "insufficient credit",
    "requires more credits",
    "used all available credits",
    "out of credits",
    "no credits",
    "credits are required",
    "purchase credits",
    "spending limit",
    "spend limit",
    "spending cap",
    "spend cap",
    "api usage limits",
    "billing hard limit",
    "payment required",
    "payment method",
    "valid credit card",
    "enable billing",
    "billing is not active",
    "billing account",
    "account is suspended",
    "account has been suspended",
    "/ month",
    "/month",
    "per month",
    "monthly limit",
    "monthly usage",
    "monthly spend",
    "monthly quota",
    "monthly api",
];

/// Credential-is-dead wording (`auth_permanent`), always conclusive.
const PERMANENT_TEXT: &[&str] = &[
    "reported as leaked",
    "only authorized for use with claude code",
];

/// Words that make a credential dead when the message names the credential or account.
const PERMANENT_VERBS: &[&str] = &["revoked", "deactivated", "disabled", "deleted"];

/// What such a message must name (and it must not be about a model).
const CREDENTIAL_NOUNS: &[&str] = &["key", "credential", "token", "account"];

/// Capacity wording (`overloaded`). "dedicated capacity" (Fireworks' sales pitch) is not.
const CAPACITY_TEXT: &[&str] = &[
    "overloaded",
    "high demand",
    "peak load",
    "no capacity",
    "out of capacity",
    "over capacity",
    "capacity exceeded",
    "capacity is exceeded",
    "capacity temporarily",
    "insufficient capacity",
    "capacity exhausted",
    " at capacity",
    "server is busy",
    "servers are busy",
    "temporarily unavailable",
];

/// Rate-limit codes in `type` / `code`.
const RATE_TAGS: &[&str] = &[
    "rate_limit",
    "ratelimit",
    "rate-limit",
    "rate_limited",
    "too_many_requests",
    "throttl",
    "resource_exhausted",
];

/// Rate-limit wording, read only where it cannot be an echo (429, 5xx, streams).
const RATE_TEXT: &[&str] = &[
    "rate limit",
    "rate-limit",
    "ratelimit",
    "rate_limit",
    "too many requests",
    "too many tokens",
    "too many concurrent",
    "concurrency limit",
    "concurrent requests",
    "tokens per minute",
    "requests per minute",
    "tokens per day",
    "requests per day",
    "per minute",
    "per day",
    "throttl",
    "resource exhausted",
    "resource has been exhausted",
    "quota exceeded",
    "exceeded your current quota",
    "quota limit exceeded",
];

/// Auth wording for answers outside 401/403 (Gemini 400 `API key not valid`).
const AUTH_TEXT: &[&str] = &[
    "api key not valid",
    "invalid api key",
    "incorrect api key",
    "invalid x-api-key",
    "invalid_api_key",
    "api key expired",
    "invalid authentication",
    "authentication failed",
];

/// Region refusals: not the key's fault, every key fails from there.
const REGION_TEXT: &[&str] = &[
    "location is not supported",
    "not supported in your country",
    "not available in your country",
    "country, region, or territory not supported",
    "unsupported_country",
    "not available in your region",
];

// === impl Family ===

impl Family {
    pub(crate) fn of(provider: &str) -> Family {
        // Compared in place: this runs on every classification, a lower-cased copy costs
        // an allocation.
        let p = provider.as_bytes();
        let has = |n: &str| {
            p.windows(n.len())
                .any(|w| w.eq_ignore_ascii_case(n.as_bytes()))
        };
        if has("google") || has("gemini") || has("vertex") {
            Family::Google
        } else {
            Family::Other
        }
    }
}

/// A needle list as searchers built once: `str::contains` sets up a new searcher for every
/// needle on every call, which cost more than the searches themselves.
type Needles = LazyLock<Vec<Needle>>;

/// One needle, built once for the same reason.
type One = LazyLock<Needle>;

static BILLING_TAGS_F: Needles = LazyLock::new(|| Needle::list(BILLING_TAGS));
static BILLING_TEXT_F: Needles = LazyLock::new(|| Needle::list(BILLING_TEXT));
static PERMANENT_TEXT_F: Needles = LazyLock::new(|| Needle::list(PERMANENT_TEXT));
static PERMANENT_VERBS_F: Needles = LazyLock::new(|| Needle::list(PERMANENT_VERBS));
static CREDENTIAL_NOUNS_F: Needles = LazyLock::new(|| Needle::list(CREDENTIAL_NOUNS));
static CAPACITY_TEXT_F: Needles = LazyLock::new(|| Needle::list(CAPACITY_TEXT));
static RATE_TAGS_F: Needles = LazyLock::new(|| Needle::list(RATE_TAGS));
static RATE_TEXT_F: Needles = LazyLock::new(|| Needle::list(RATE_TEXT));
static AUTH_TEXT_F: Needles = LazyLock::new(|| Needle::list(AUTH_TEXT));
static REGION_TEXT_F: Needles = LazyLock::new(|| Needle::list(REGION_TEXT));

static UNSUPPORTED_COUNTRY: One = LazyLock::new(|| Needle::new("unsupported_country"));
static REQUEST_TOO_LARGE: One = LazyLock::new(|| Needle::new("request too large"));
static TIMED_OUT: One = LazyLock::new(|| Needle::new("timed out"));
static TIMEOUT: One = LazyLock::new(|| Needle::new("timeout"));
static MODEL: One = LazyLock::new(|| Needle::new("model"));
static EXCEEDED_QUOTA: One = LazyLock::new(|| Needle::new("exceeded your current quota"));
static OVERLOADED: One = LazyLock::new(|| Needle::new("overloaded"));
static INVALID_API_KEY: One = LazyLock::new(|| Needle::new("invalid_api_key"));
static MODEL_NOT_FOUND_TAG: One = LazyLock::new(|| Needle::new("model_not_found"));
static MODEL_NOT_FOUND: One = LazyLock::new(|| Needle::new("model not found"));
static DOES_NOT_EXIST: One = LazyLock::new(|| Needle::new("does not exist"));
static IS_NOT_FOUND: One = LazyLock::new(|| Needle::new("is not found"));
static NO_SUCH_MODEL: One = LazyLock::new(|| Needle::new("no such model"));

/// The searchable texts of one error object, each with its pair set, built once per
/// decision.
struct Texts<'a> {
    message: Hay<'a>,
    extra: Hay<'a>,
    etype: Hay<'a>,
    code: Hay<'a>,
    detail_code: Hay<'a>,
}

// === impl Texts ===

impl<'a> Texts<'a> {
    fn of(f: &'a ErrorFields) -> Self {
        Texts {
            message: Hay::new(&f.message),
            extra: Hay::new(&f.extra),
            etype: Hay::new(&f.etype),
            code: Hay::new(&f.code),
            detail_code: Hay::new(&f.detail_code),
        }
    }

    /// Any wording at all (message or secondary text) contains one of `needles`.
    fn text_any(&self, needles: &[Needle]) -> bool {
        self.message.any(needles) || self.extra.any(needles)
    }

    /// Any wording at all contains `needle`.
    fn text_has(&self, needle: &Needle) -> bool {
        self.message.has(needle) || self.extra.has(needle)
    }

    /// `type`, `code` or Anthropic `details.error_code` contains one of `needles`.
    fn tag_any(&self, needles: &[Needle]) -> bool {
        self.etype.any(needles) || self.code.any(needles) || self.detail_code.any(needles)
    }

    /// `type`, `code` or `details.error_code` contains `needle`.
    fn tag_has(&self, needle: &Needle) -> bool {
        self.etype.has(needle) || self.code.has(needle) || self.detail_code.has(needle)
    }
}

fn reason_is(f: &ErrorFields, r: &str) -> bool {
    f.reasons.iter().any(|x| x == r)
}

/// Decides the reason of one error object. `status` is the HTTP status of a non-2xx
/// answer, or `None` for an error event inside a 2xx stream (its own numeric `code`, when
/// it looks like a status, stands in for it).
pub(crate) fn decide(status: Option<u16>, family: Family, f: &ErrorFields) -> Reason {
    let status = status
        .filter(|s| !(200..300).contains(s))
        .or(f.numeric_status);
    let in_stream = status.is_none();
    let s = status.unwrap_or(0);
    // Where rate-limit and capacity wording is trusted (rule 7 of the fixtures README).
    let wording_ok = in_stream || s == 429 || s >= 500;
    let google_exhausted = f.status == "resource_exhausted";
    let t = Texts::of(f);

    // 1. Permanent auth markers, on client errors and in streams only.
    if (in_stream || (400..500).contains(&s)) && s != 429 && is_permanent(&t) {
        return Reason::AuthPermanent;
    }

    // 2. Billing, before the 429 rule (rule 3).
    if s == 402 || is_billing(family, f, &t, google_exhausted) {
        return Reason::Billing;
    }

    // 3. Region refusals are nobody's key problem.
    if t.text_any(&REGION_TEXT_F) || t.code.has(&UNSUPPORTED_COUNTRY) {
        return Reason::Unknown;
    }

    // 4. Capacity, before the 429 rule.
    if s == 529 || is_capacity_tag(f, &t) || (wording_ok && t.text_any(&CAPACITY_TEXT_F)) {
        return Reason::Overloaded;
    }

    // 5. A single request above the whole per-minute budget (rule 4).
    if t.text_has(&REQUEST_TOO_LARGE) || f.etype == "request_too_large" {
        return Reason::Format;
    }

    // 6. Timeouts.
    if matches!(s, 408 | 504 | 524)
        || f.status == "deadline_exceeded"
        || f.aws_type == "modeltimeoutexception"
        || f.cf_code == Some(3007)
        || t.etype.has(&TIMEOUT)
        || (wording_ok && (t.text_has(&TIMED_OUT) || t.text_has(&TIMEOUT)))
    {
        return Reason::Timeout;
    }

    // 7. Rate limits: structured, then the status, then wording.
    if is_rate_tag(f, &t, google_exhausted) || s == 429 || (wording_ok && t.text_any(&RATE_TEXT_F))
    {
        return Reason::RateLimit;
    }

    // 8. Auth.
    if matches!(s, 401 | 403) || is_auth_tag(f, &t) || t.text_any(&AUTH_TEXT_F) {
        return Reason::Auth;
    }

    // 9. Unknown model.
    if is_model_not_found(s, f, &t) {
        return Reason::ModelNotFound;
    }

    // 10. What the status (or the stream error's type) says.
    match s {
        503 => Reason::Overloaded,
        400 | 413 | 422 => {
            if f.status == "failed_precondition" {
                Reason::Unknown
            } else {
                Reason::Format
            }
        }
        0 => stream_type_fallback(f),
        _ => Reason::Unknown,
    }
}

fn is_permanent(t: &Texts<'_>) -> bool {
    if t.text_any(&PERMANENT_TEXT_F) {
        return true;
    }
    // "key has been revoked" / "API key deleted": only when a credential is named, so
    // "this model has been deactivated" stays a model problem.
    t.text_any(&PERMANENT_VERBS_F) && t.text_any(&CREDENTIAL_NOUNS_F) && !t.text_has(&MODEL)
}

fn is_billing(family: Family, f: &ErrorFields, t: &Texts<'_>, google_exhausted: bool) -> bool {
    if t.tag_any(&BILLING_TAGS_F) || f.aws_type.contains("billing") {
        return true;
    }
    if reason_is(f, "billing_disabled") {
        return true;
    }
    // Google: a quota of zero for this project means only a billed key works.
    if google_exhausted && (f.quota_zero || has_limit_zero(&f.message)) {
        return true;
    }
    if t.text_any(&BILLING_TEXT_F) {
        return true;
    }
    // The OpenAI sentence means billing everywhere except at Google, where it comes with
    // RESOURCE_EXHAUSTED for plain per-minute/day limits (rule 2).
    !google_exhausted && family != Family::Google && t.text_has(&EXCEEDED_QUOTA)
}

/// `limit: 0` followed by a non-digit (Gemini "Quota exceeded for metric: …, limit: 0").
fn has_limit_zero(msg: &str) -> bool {
    let b = msg.as_bytes();
    let mut from = 0;
    while let Some(p) = memchr::memmem::find(&b[from..], b"limit: 0") {
        let end = from + p + "limit: 0".len();
        if b.get(end).is_none_or(|c| !c.is_ascii_digit() && *c != b'.') {
            return true;
        }
        from = end;
    }
    false
}

fn is_capacity_tag(f: &ErrorFields, t: &Texts<'_>) -> bool {
    t.etype.has(&OVERLOADED)
        || t.code.has(&OVERLOADED)
        || reason_is(f, "model_capacity_exhausted")
        || f.reasons.iter().any(|r| r.contains("capacity"))
        || f.cf_code == Some(3040)
        || matches!(
            f.aws_type.as_str(),
            "serviceunavailableexception" | "modelnotreadyexception"
        )
}

fn is_rate_tag(f: &ErrorFields, t: &Texts<'_>, google_exhausted: bool) -> bool {
    google_exhausted
        || t.tag_any(&RATE_TAGS_F)
        || f.reasons
            .iter()
            .any(|r| r.contains("ratelimit") || r.contains("rate_limit"))
        || matches!(
            f.aws_type.as_str(),
            "throttlingexception" | "servicequotaexceededexception" | "toomanyrequestsexception"
        )
        || matches!(f.cf_code, Some(3021 | 3036 | 4006))
        || f.numeric_status == Some(429)
}

fn is_auth_tag(f: &ErrorFields, t: &Texts<'_>) -> bool {
    matches!(
        f.etype.as_str(),
        "authentication_error" | "permission_error" | "unauthorized" | "forbidden"
    ) || t.code.has(&INVALID_API_KEY)
        || f.code == "unauthorized"
        || matches!(f.status.as_str(), "unauthenticated" | "permission_denied")
        || f.reasons.iter().any(|r| {
            r.starts_with("api_key_") || r == "consumer_suspended" || r == "service_disabled"
        })
        || matches!(
            f.aws_type.as_str(),
            "accessdeniedexception"
                | "unrecognizedclientexception"
                | "invalidsignatureexception"
                | "expiredtokenexception"
        )
}

fn is_model_not_found(s: u16, f: &ErrorFields, t: &Texts<'_>) -> bool {
    if t.tag_has(&MODEL_NOT_FOUND_TAG) || f.aws_type == "resourcenotfoundexception" {
        return true;
    }
    let mentions_model = t.text_has(&MODEL);
    if s == 404 || f.status == "not_found" || f.etype == "not_found_error" {
        return mentions_model || f.etype == "not_found_error" || t.code.has(&MODEL);
    }
    mentions_model
        && (t.text_has(&MODEL_NOT_FOUND)
            || t.text_has(&DOES_NOT_EXIST)
            || t.text_has(&IS_NOT_FOUND)
            || t.text_has(&NO_SUCH_MODEL))
}

/// An in-stream error with no status: its type tells.
fn stream_type_fallback(f: &ErrorFields) -> Reason {
    let t = f.etype.as_str();
    if t.contains("invalid_request")
        || f.status == "invalid_argument"
        || f.aws_type == "validationexception"
    {
        Reason::Format
    } else if t.contains("unavailable") || f.status == "unavailable" {
        Reason::Overloaded
    } else {
        Reason::Unknown
    }
}
