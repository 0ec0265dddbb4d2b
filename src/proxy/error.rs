//! Every error keygate itself answers with, and the one place that turns them into
//! responses (and into the event that ends a broken stream).
//!
//! Owns [`ProxyError`], its status ([`ProxyError::status`]), a low-cardinality label for
//! logs and metrics, and the JSON body in the shape the client's SDK parses (Anthropic,
//! Google or OpenAI style, chosen by provider). Upstream error answers are not here: they go
//! back to the client exactly as the provider sent them.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use crate::config::ProviderConfig;
use crate::inbound::Browser;

/// An error answered by keygate (never by the upstream).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The path would leave the provider's base URL, or is malformed.
    #[error("invalid path: {0}")]
    BadPath(&'static str),
    /// No provider with this id.
    #[error("unknown provider \"{0}\"; known providers are listed by `keygate config check`")]
    UnknownProvider(String),
    /// A reserved path that does not exist or is disabled.
    #[error("not found")]
    NotFound,
    /// Request body over `max_request_body`.
    #[error("request body exceeds the limit of {limit} bytes (server.max_request_body)")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body could not be read.
    #[error("could not read the request body")]
    BodyRead,
    /// The request body stopped arriving before `request_timeout` (SPEC §9: 408).
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The request bodies being buffered would pass `max_buffered_bodies` (503).
    #[error("keygate is holding too many request bodies at once (server.max_buffered_bodies); retry shortly")]
    BodiesOverBudget,
    /// A bad request detected before forwarding.
    #[error("{0}")]
    BadRequest(String),
    /// Authentication with the gateway failed or is missing.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(&'static str),
    /// More than one distinct credential value in one request (SPEC §4).
    #[error("the request carries more than one credential: send the gateway token once (one of Authorization: Bearer, x-api-key, x-goog-api-key, api-key or ?key=)")]
    AmbiguousCredential,
    /// Trusted-proxy mode: the identity header came more than once.
    #[error("the identity header carries more than one value")]
    DuplicateIdentity,
    /// Mode `none` and a `Host` that is not loopback (a DNS-rebinding page).
    #[error("Host is not a loopback name or address: without gateway auth keygate answers only requests for localhost, 127.0.0.0/8 or [::1]")]
    ForeignHost,
    /// A browser page from an origin that is not loopback nor allowed.
    #[error("requests from web pages of another origin are refused: list the origin in [gateway] allowed_origins to allow it")]
    ForeignOrigin,
    /// Too many failed attempts from this address.
    #[error("too many failed authentication attempts; retry later")]
    LockedOut {
        /// Time left in the lockout.
        retry_after: Duration,
    },
    /// No credential configured at all for this provider.
    #[error("No credentials found for provider \"{provider}\". {hint}")]
    NoCredentials {
        /// Provider id.
        provider: String,
        /// What to do.
        hint: String,
    },
    /// An oauth profile could not be refreshed (and nothing else could serve).
    #[error("OAuth token refresh failed for {provider}: {reason}. Please re-authenticate.")]
    OAuthRefresh {
        /// Provider id.
        provider: String,
        /// Why, without secrets.
        reason: String,
    },
    /// Every candidate is cooling down or disabled.
    #[error("No available credential for {provider} (all in cooldown or unavailable).")]
    AllCooling {
        /// Provider id.
        provider: String,
        /// Until the soonest window ends.
        retry_after: Duration,
    },
    /// Every candidate is at its `max_in_flight` and no slot freed up within `max_wait`.
    #[error("No available credential for {provider} (all at their max_in_flight).")]
    AllBusy {
        /// Provider id.
        provider: String,
    },
    /// The provider has no base URL (Azure without configuration).
    #[error("provider \"{0}\" has no base_url: set [providers.{0}] base_url in the config")]
    NoBaseUrl(String),
    /// The upstream could not be reached or broke before answering.
    #[error("upstream unavailable: {}", Chain(.0))]
    Upstream(#[source] hyper_util::client::legacy::Error),
    /// A refreshed OAuth token cannot be put in a header.
    #[error("upstream unavailable: {0}")]
    BadCredential(#[from] crate::inject::InvalidCredential),
    /// The upstream answered, but not with anything a client can use: a `101`, or a 2xx
    /// stream that broke before its first content event (and no candidate was left).
    #[error("the upstream's answer is unusable: {0}")]
    UpstreamBroken(&'static str),
    /// No answer from the upstream in time.
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(Duration),
}

// === impl ProxyError ===

/// A request refused as coming from a browser page (SPEC §4).
impl From<Browser> for ProxyError {
    fn from(b: Browser) -> Self {
        match b {
            Browser::ForeignHost => ProxyError::ForeignHost,
            Browser::ForeignOrigin => ProxyError::ForeignOrigin,
        }
    }
}

impl ProxyError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_)
            | ProxyError::BodyRead
            | ProxyError::BadRequest(_)
            | ProxyError::AmbiguousCredential
            | ProxyError::DuplicateIdentity => StatusCode::BAD_REQUEST,
            ProxyError::ForeignHost => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::ForeignOrigin => StatusCode::FORBIDDEN,
            ProxyError::UnknownProvider(_) | ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Unauthorized(_)
            | ProxyError::NoCredentials { .. }
            | ProxyError::OAuthRefresh { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::LockedOut { .. }
            | ProxyError::AllCooling { .. }
            | ProxyError::AllBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoBaseUrl(_)
            | ProxyError::Upstream(_)
            | ProxyError::BadCredential(_)
            | ProxyError::UpstreamBroken(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BodiesOverBudget => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A low-cardinality label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::UnknownProvider(_) => "unknown_provider",
            ProxyError::NotFound => "not_found",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyRead => "body_read",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::BodiesOverBudget => "bodies_over_budget",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::AmbiguousCredential => "ambiguous_credential",
            ProxyError::DuplicateIdentity => "duplicate_identity",
            ProxyError::ForeignHost => "foreign_host",
            ProxyError::ForeignOrigin => "foreign_origin",
            ProxyError::LockedOut { .. } => "locked_out",
            ProxyError::NoCredentials { .. } => "no_credentials",
            ProxyError::OAuthRefresh { .. } => "oauth_refresh_failed",
            ProxyError::AllCooling { .. } => "all_cooling",
            ProxyError::AllBusy { .. } => "all_busy",
            ProxyError::NoBaseUrl(_) => "no_base_url",
            ProxyError::Upstream(_) | ProxyError::BadCredential(_) => "upstream_error",
            ProxyError::UpstreamBroken(_) => "upstream_broken",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::LockedOut { retry_after } | ProxyError::AllCooling { retry_after, .. } => {
                Some(*retry_after)
            }
            ProxyError::BodiesOverBudget | ProxyError::AllBusy { .. } => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// The response, with a JSON body in the provider's error shape (OpenAI's when the
    /// provider is unknown).
    pub fn into_response(self, provider: Option<&str>) -> Response<ProxyBody> {
        let status = self.status();
        let message = self.to_string();
        let body = error_json(provider, status, &message);
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after() {
            // Round up: a client that waits exactly this long finds a key.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// No credential at all for `provider`, with how to add one.
pub(crate) fn no_credentials(provider: &ProviderConfig) -> ProxyError {
    let var = crate::credentials::env::suggested_var(&provider.env_prefix);
    ProxyError::NoCredentials {
        provider: provider.id.clone(),
        hint: format!(
            "Run `keygate models auth paste-api-key --provider {}` or set {var}.",
            provider.id
        ),
    }
}

/// An error's source chain on one line (hyper-util's top-level message alone says little).
/// These messages never carry URLs or headers, so no secret can appear.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(c) = cur {
            write!(f, ": {c}")?;
            cur = c.source();
        }
        Ok(())
    }
}

/// A JSON error body in the shape the provider's SDKs parse.
pub fn error_json(provider: Option<&str>, status: StatusCode, message: &str) -> Bytes {
    let value = match provider {
        Some("anthropic") => serde_json::json!({
            "type": "error",
            "error": { "type": anthropic_type(status), "message": message },
        }),
        Some("google") => serde_json::json!({
            "error": { "code": status.as_u16(), "message": message, "status": google_status(status) },
        }),
        _ => serde_json::json!({
            "error": { "message": message, "type": openai_type(status), "param": null, "code": openai_code(status) },
        }),
    };
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 421 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        408 | 504 => "timeout_error",
        503 => "overloaded_error",
        _ => "api_error",
    }
}

fn google_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 421 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        408 | 504 => "DEADLINE_EXCEEDED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        400 | 404 | 413 | 421 => "invalid_request_error",
        _ => "server_error",
    }
}

fn openai_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "invalid_api_key",
        429 => "rate_limit_exceeded",
        413 => "request_too_large",
        404 => "not_found",
        504 => "timeout",
        _ => "keygate_error",
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
