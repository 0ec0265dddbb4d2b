//! Extraction of a provider's error object into flat, lower-cased fields.
//!
//! Owns: finding the error object in the shapes providers use (`{"error":{…}}`,
//! `{"type":"error","error":{…}}`, a bare `{"message":…}`, `{"error":"text",…}`,
//! Cloudflare `{"errors":[…]}`, Vertex `[{"error":{…}}]`, AWS `__type`), a lenient
//! key scan when the JSON is truncated, and the quote masking of messages. It does not
//! decide anything (see `rules`) nor parse durations (see `hint`).

use http::HeaderMap;
use serde_json::{Map, Value};

/// Most of a message that is looked at; messages are short, echoes are not.
const MAX_TEXT: usize = 4096;

/// The flat view of one error object. Every string is lower-cased; empty when absent.
#[derive(Debug, Default)]
pub(crate) struct ErrorFields {
    /// `error.type` (or top-level `type`; `"error"` itself is dropped as meaningless).
    pub(crate) etype: String,
    /// `error.code` as a string (numbers too).
    pub(crate) code: String,
    /// Google `error.status` (`resource_exhausted`, …).
    pub(crate) status: String,
    /// The message, with quoted spans masked (see [`mask_quoted`]).
    pub(crate) message: String,
    /// Secondary error text: OpenRouter `metadata.raw`, `error` when it is a plain string.
    pub(crate) extra: String,
    /// Anthropic `error.details.error_code`.
    pub(crate) detail_code: String,
    /// Google `ErrorInfo.reason` and `errors[].reason` values.
    pub(crate) reasons: Vec<String>,
    /// Google `QuotaFailure.violations[].quotaId` values.
    pub(crate) quota_ids: Vec<String>,
    /// Whether a `QuotaFailure` violation reports `quotaValue: "0"`.
    pub(crate) quota_zero: bool,
    /// Google `RetryInfo.retryDelay`, normalised to a Go-style duration string.
    pub(crate) retry_delay: Option<String>,
    /// AWS exception name (`x-amzn-ErrorType` header, event-stream `:exception-type`, or
    /// JSON `__type`), without the `:http://…` suffix.
    pub(crate) aws_type: String,
    /// Cloudflare v4 envelope `errors[0].code`.
    pub(crate) cf_code: Option<i64>,
    /// A numeric `code` that looks like an HTTP status (OpenRouter `code: 429`).
    pub(crate) numeric_status: Option<u16>,
    /// Whether the body parsed as JSON (fully or leniently).
    pub(crate) is_json: bool,
    /// Whether the body is an HTML page (never read for wording).
    pub(crate) is_html: bool,
}

/// AWS's error-type header, pre-parsed.
static AMZN_ERROR_TYPE: http::HeaderName = http::HeaderName::from_static("x-amzn-errortype");

// === impl ErrorFields ===

impl ErrorFields {
    /// Fields of a whole (non-2xx) answer.
    pub(crate) fn from_response(headers: &HeaderMap, body: &[u8]) -> Self {
        let mut f = ErrorFields::from_body(body);
        if let Some(v) = headers.get(&AMZN_ERROR_TYPE).and_then(|v| v.to_str().ok()) {
            f.aws_type = aws_name(v);
        }
        if let Some(ct) = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            if !f.is_json && ct.to_ascii_lowercase().contains("html") {
                f.is_html = true;
                f.message.clear();
            }
        }
        f
    }

    /// Fields of a body alone (also used for in-stream error payloads).
    pub(crate) fn from_body(body: &[u8]) -> Self {
        let trimmed = trim_ascii(body);
        match serde_json::from_slice::<Value>(trimmed) {
            Ok(v) => {
                let mut f = ErrorFields {
                    is_json: true,
                    ..ErrorFields::default()
                };
                f.fill_from_root(&v);
                f
            }
            Err(_) if trimmed.first().is_some_and(|b| *b == b'{' || *b == b'[') => {
                ErrorFields::lenient(trimmed)
            }
            Err(_) => ErrorFields::text(trimmed),
        }
    }

    /// Fields of an already-parsed whole payload (an in-stream `data:` chunk).
    pub(crate) fn from_root_value(v: &Value) -> Self {
        let mut f = ErrorFields {
            is_json: true,
            ..ErrorFields::default()
        };
        f.fill_from_root(v);
        f
    }

    /// Fields of an already-parsed error object (in-stream `error`, `response.error`).
    pub(crate) fn from_error_value(v: &Value) -> Self {
        let mut f = ErrorFields {
            is_json: true,
            ..ErrorFields::default()
        };
        match v {
            Value::Object(obj) => f.fill_from_object(obj),
            Value::String(s) => f.message = mask_quoted(s),
            _ => {}
        }
        f
    }

    /// Any wording at all (message or secondary text) contains `needle`.
    pub(crate) fn text_has(&self, needle: &str) -> bool {
        self.message.contains(needle) || self.extra.contains(needle)
    }

    /// `type`, `code` or Anthropic `details.error_code` contains `needle`.
    pub(crate) fn tag_has(&self, needle: &str) -> bool {
        self.etype.contains(needle)
            || self.code.contains(needle)
            || self.detail_code.contains(needle)
    }

    fn fill_from_root(&mut self, root: &Value) {
        // Vertex answers with an array of error envelopes: the first one speaks.
        let root = match root {
            Value::Array(items) => match items.first() {
                Some(first) => first,
                None => return,
            },
            other => other,
        };
        let Value::Object(obj) = root else {
            if let Value::String(s) = root {
                self.message = mask_quoted(s);
            }
            return;
        };
        if let Some(t) = obj.get("__type").and_then(Value::as_str) {
            self.aws_type = aws_name(t);
        }
        match obj.get("error") {
            Some(Value::Object(err)) => {
                self.fill_from_object(err);
                return;
            }
            Some(Value::String(s)) => {
                // `{"error":"Too Many Requests","message":"…"}` (Fireworks, xAI).
                self.extra = mask_quoted(s);
            }
            _ => {}
        }
        if let Some(Value::Array(errors)) = obj.get("errors") {
            if let Some(Value::Object(first)) = errors.first() {
                // Cloudflare v4 envelope.
                if let Some(c) = first.get("code").and_then(Value::as_i64) {
                    self.cf_code = Some(c);
                }
                self.fill_from_object(first);
                return;
            }
        }
        self.fill_from_object(obj);
    }

    fn fill_from_object(&mut self, err: &Map<String, Value>) {
        if let Some(t) = err.get("type").and_then(Value::as_str) {
            if !t.eq_ignore_ascii_case("error") {
                self.etype = t.to_ascii_lowercase();
            }
        }
        match err.get("code") {
            Some(Value::String(s)) => {
                self.code = s.to_ascii_lowercase();
                if let Ok(n) = s.trim().parse::<u16>() {
                    self.set_numeric_status(n);
                }
            }
            Some(Value::Number(n)) => {
                self.code = n.to_string();
                if let Some(n) = n.as_u64().and_then(|n| u16::try_from(n).ok()) {
                    self.set_numeric_status(n);
                }
            }
            _ => {}
        }
        if let Some(s) = err.get("status").and_then(Value::as_str) {
            self.status = s.to_ascii_lowercase();
        }
        let message = err
            .get("message")
            .or_else(|| err.get("Message"))
            .or_else(|| err.get("detail"))
            .and_then(Value::as_str);
        if let Some(m) = message {
            self.message = mask_quoted(m);
        }
        if let Some(Value::Object(details)) = err.get("details") {
            if let Some(c) = details.get("error_code").and_then(Value::as_str) {
                self.detail_code = c.to_ascii_lowercase();
            }
        }
        if let Some(Value::Array(details)) = err.get("details") {
            for d in details {
                self.google_detail(d);
            }
        }
        if let Some(Value::Array(errors)) = err.get("errors") {
            for e in errors {
                if let Some(r) = e.get("reason").and_then(Value::as_str) {
                    self.reasons.push(r.to_ascii_lowercase());
                }
            }
        }
        if let Some(Value::Object(meta)) = err.get("metadata") {
            if let Some(raw) = meta.get("raw").and_then(Value::as_str) {
                if !self.extra.is_empty() {
                    self.extra.push(' ');
                }
                self.extra.push_str(&mask_quoted(raw));
            }
        }
    }

    fn google_detail(&mut self, d: &Value) {
        let Some(kind) = d.get("@type").and_then(Value::as_str) else {
            return;
        };
        if kind.ends_with("ErrorInfo") {
            if let Some(r) = d.get("reason").and_then(Value::as_str) {
                self.reasons.push(r.to_ascii_lowercase());
            }
        } else if kind.ends_with("QuotaFailure") {
            if let Some(Value::Array(vs)) = d.get("violations") {
                for v in vs {
                    if let Some(id) = v.get("quotaId").and_then(Value::as_str) {
                        self.quota_ids.push(id.to_ascii_lowercase());
                    }
                    if v.get("quotaValue").and_then(Value::as_str) == Some("0") {
                        self.quota_zero = true;
                    }
                }
            }
        } else if kind.ends_with("RetryInfo") {
            self.retry_delay = match d.get("retryDelay") {
                Some(Value::String(s)) => Some(s.trim().to_ascii_lowercase()),
                // The protobuf object form: {"seconds": 26, "nanos": 0}.
                Some(Value::Object(o)) => {
                    let secs = o.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
                    let nanos = o.get("nanos").and_then(Value::as_f64).unwrap_or(0.0);
                    Some(format!("{}s", secs + nanos / 1e9))
                }
                _ => None,
            };
        }
    }

    fn set_numeric_status(&mut self, n: u16) {
        if (400..=599).contains(&n) {
            self.numeric_status = Some(n);
        }
    }

    /// A body that starts like JSON but does not parse (cut at `max_error_body`): read the
    /// first `type`, `code`, `status` and `message` values by a key scan. Error objects
    /// come first in every provider's envelope, so the first hit is the error's own field.
    fn lenient(body: &[u8]) -> Self {
        let mut f = ErrorFields {
            is_json: true,
            ..ErrorFields::default()
        };
        if let Some(t) = scan_string_value(body, b"\"type\"") {
            if t != "error" {
                f.etype = t;
            }
            // `{"type":"error","error":{"type":"…"}}`: the second `type` is the real one.
            if f.etype.is_empty() {
                if let Some(pos) = memchr::memmem::find(body, b"\"error\"") {
                    if let Some(t) = scan_string_value(&body[pos..], b"\"type\"") {
                        f.etype = t;
                    }
                }
            }
        }
        if let Some(c) = scan_string_value(body, b"\"code\"") {
            f.code = c;
        }
        if let Some(s) = scan_string_value(body, b"\"status\"") {
            f.status = s;
        }
        if let Some(m) = scan_string_value(body, b"\"message\"") {
            f.message = mask_quoted(&m);
        }
        f
    }

    /// A body that is not JSON: plain text is read as the message, HTML never is.
    fn text(body: &[u8]) -> Self {
        let head = &body[..body.len().min(MAX_TEXT)];
        let is_html = head.first() == Some(&b'<')
            || memchr::memmem::find(&head.to_ascii_lowercase(), b"<html").is_some();
        let message = if is_html {
            String::new()
        } else {
            mask_quoted(&String::from_utf8_lossy(head))
        };
        ErrorFields {
            message,
            is_html,
            ..ErrorFields::default()
        }
    }
}

/// `ThrottlingException:http://internal.amazon.com/…` → `throttlingexception`.
pub(crate) fn aws_name(v: &str) -> String {
    let name = v.split(':').next().unwrap_or(v);
    let name = name.rsplit('#').next().unwrap_or(name);
    name.trim().to_ascii_lowercase()
}

/// Lower-cases `s` (first [`MAX_TEXT`] bytes) and replaces quoted spans — `'…'`, `"…"`,
/// `` `…` `` opened after a non-alphanumeric character and closed before one — by a
/// single space, so echoed request text (`'rate_limit_report'`) is never matched while
/// apostrophes (`organization's`) are left alone.
pub(crate) fn mask_quoted(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let lower = s[..end].to_lowercase();
    let b = lower.as_bytes();
    if !b.iter().any(|c| matches!(c, b'\'' | b'"' | b'`')) {
        return lower;
    }
    let mut out = String::with_capacity(lower.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let q = b[i];
        let opens =
            matches!(q, b'\'' | b'"' | b'`') && (i == 0 || !b[i - 1].is_ascii_alphanumeric());
        if opens {
            let mut j = i + 1;
            let mut close = None;
            while j < b.len() {
                if b[j] == q && (j + 1 == b.len() || !b[j + 1].is_ascii_alphanumeric()) {
                    close = Some(j);
                    break;
                }
                j += 1;
            }
            if let Some(j) = close {
                // Quotes are ASCII, so both ends are char boundaries.
                out.push_str(&lower[copied..i]);
                out.push(' ');
                i = j + 1;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&lower[copied..]);
    out
}

/// The string (or number) value following the first occurrence of `key` in `body`,
/// lower-cased, with simple escapes resolved; a string cut by the end of the body gives
/// its beginning. `None` when absent.
fn scan_string_value(body: &[u8], key: &[u8]) -> Option<String> {
    let pos = memchr::memmem::find(body, key)?;
    let mut i = pos + key.len();
    while i < body.len() && body[i].is_ascii_whitespace() {
        i += 1;
    }
    if body.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while i < body.len() && body[i].is_ascii_whitespace() {
        i += 1;
    }
    match body.get(i)? {
        b'"' => {
            let mut out = Vec::new();
            let mut j = i + 1;
            while j < body.len() && out.len() < MAX_TEXT {
                match body[j] {
                    b'"' => return Some(String::from_utf8_lossy(&out).to_lowercase()),
                    b'\\' => {
                        j += 1;
                        match body.get(j)? {
                            b'n' => out.push(b'\n'),
                            b't' => out.push(b'\t'),
                            other => out.push(*other),
                        }
                    }
                    other => out.push(other),
                }
                j += 1;
            }
            // Cut inside the string: what arrived is still the provider's own text.
            Some(String::from_utf8_lossy(&out).to_lowercase())
        }
        c if c.is_ascii_digit() => {
            let end = body[i..]
                .iter()
                .position(|c| !c.is_ascii_digit())
                .map_or(body.len(), |p| i + p);
            Some(String::from_utf8_lossy(&body[i..end]).into_owned())
        }
        _ => None,
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_echoed_names_but_not_apostrophes() {
        let m = mask_quoted(
            "Invalid schema for response_format 'rate_limit_report': Missing 'quota_remaining'.",
        );
        assert!(!m.contains("rate_limit"), "{m}");
        assert!(!m.contains("quota"), "{m}");
        let m = mask_quoted("This request would exceed your organization's rate limit of 30,000");
        assert!(m.contains("rate limit"), "{m}");
        let m = mask_quoted("unterminated 'quote stays");
        assert!(m.contains("quote stays"), "{m}");
        let m = mask_quoted("model `llama-3.1` on tokens per minute");
        assert!(
            m.contains("tokens per minute") && !m.contains("llama"),
            "{m}"
        );
    }

    #[test]
    fn lenient_scan_of_truncated_json() {
        let f = ErrorFields::from_body(br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit (https://docs.anth"#);
        assert!(f.is_json);
        assert_eq!(f.etype, "rate_limit_error");
        let f = ErrorFields::from_body(
            br#"{"error":{"message":"Rate limit reached","code":"rate_limit_exceeded","param":"#,
        );
        assert_eq!(f.code, "rate_limit_exceeded");
        assert_eq!(f.message, "rate limit reached");
    }

    #[test]
    fn shapes() {
        let f = ErrorFields::from_body(br#"[{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","errors":[{"reason":"rateLimitExceeded"}]}}]"#);
        assert_eq!(f.status, "resource_exhausted");
        assert_eq!(f.reasons, vec!["ratelimitexceeded".to_string()]);
        assert_eq!(f.numeric_status, Some(429));
        let f =
            ErrorFields::from_body(br#"{"errors":[{"message":"x","code":3040}],"success":false}"#);
        assert_eq!(f.cf_code, Some(3040));
        let f = ErrorFields::from_body(b"<html><body>502</body></html>");
        assert!(f.is_html && f.message.is_empty());
        let f = ErrorFields::from_body(b"Too Many Requests");
        assert_eq!(f.message, "too many requests");
        let f = ErrorFields::from_body(b"");
        assert!(!f.is_json && f.message.is_empty());
    }
}
