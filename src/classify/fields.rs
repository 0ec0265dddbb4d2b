//! Extraction of a provider's error object into flat, lower-cased fields.
//!
//! Owns: finding the error object in the shapes providers use (`{"error":{…}}`,
//! `{"type":"error","error":{…}}`, a bare `{"message":…}`, `{"error":"text",…}`,
//! Cloudflare `{"errors":[…]}`, Vertex `[{"error":{…}}]`, AWS `__type`), a lenient
//! key scan when the JSON is truncated, and the quote masking of messages. The JSON is
//! read into a `serde_json::Value`: every field takes any JSON type and ignores the ones it
//! does not understand (`"type": 5`), and a repeated key keeps its last value, which
//! derived structs cannot express. It does not decide anything (see `rules`) nor parse
//! durations (see `hint`).

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
        // The body is at most `max_error_body` bytes (an event's data at most the
        // scanner's line limit), and serde_json stops at 128 levels of nesting: the tree
        // is bounded by the body. A body it rejects (cut, deep, lone surrogate) is scanned.
        match serde_json::from_slice::<Value>(trimmed) {
            Ok(v) => ErrorFields::from_root_value(&v),
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

    fn fill_from_root(&mut self, root: &Value) {
        // Vertex answers with an array of error envelopes: the first one speaks.
        let root = match root {
            Value::Array(items) => match items.first() {
                Some(first) => first,
                None => return,
            },
            other => other,
        };
        let obj = match root {
            Value::Object(obj) => obj,
            Value::String(s) => {
                self.message = mask_quoted(s);
                return;
            }
            _ => return,
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
        if let Some(Value::Object(first)) = obj.get("errors").and_then(|e| e.get(0)) {
            // Cloudflare v4 envelope.
            if let Some(c) = first.get("code").and_then(Value::as_i64) {
                self.cf_code = Some(c);
            }
            self.fill_from_object(first);
            return;
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
        // The first spelling present decides, even when its value is not a string.
        let message = err
            .get("message")
            .or_else(|| err.get("Message"))
            .or_else(|| err.get("detail"))
            .and_then(Value::as_str);
        if let Some(m) = message {
            self.message = mask_quoted(m);
        }
        match err.get("details") {
            // Anthropic: `details.error_code`; Google: an array of typed details.
            Some(Value::Object(d)) => {
                if let Some(c) = d.get("error_code").and_then(Value::as_str) {
                    self.detail_code = c.to_ascii_lowercase();
                }
            }
            Some(Value::Array(details)) => details.iter().for_each(|d| self.google_detail(d)),
            _ => {}
        }
        if let Some(Value::Array(errors)) = err.get("errors") {
            for r in errors.iter().filter_map(|e| e.get("reason")?.as_str()) {
                self.reasons.push(r.to_ascii_lowercase());
            }
        }
        if let Some(raw) = err.get("metadata").and_then(|m| m.get("raw")?.as_str()) {
            if !self.extra.is_empty() {
                self.extra.push(' ');
            }
            self.extra.push_str(&mask_quoted(raw));
        }
    }

    /// One element of Google's `details[]`, by the suffix of its `@type`.
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
                    self.quota_zero |= v.get("quotaValue").and_then(Value::as_str) == Some("0");
                }
            }
        } else if kind.ends_with("RetryInfo") {
            self.retry_delay = match d.get("retryDelay") {
                Some(Value::String(s)) => Some(s.trim().to_ascii_lowercase()),
                // The protobuf object form: {"seconds": 26, "nanos": 0}.
                Some(Value::Object(o)) => {
                    let part = |k| o.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                    Some(format!("{}s", part("seconds") + part("nanos") / 1e9))
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
    let s = &s[..end];
    if s.is_ascii() {
        // ASCII lower-casing moves no byte and changes no quote or alphanumeric class, so
        // masking the original and lower-casing the result in place needs one allocation.
        let mut out = String::with_capacity(s.len());
        mask_into(s, &mut out);
        out.make_ascii_lowercase();
        return out;
    }
    let lower = s.to_lowercase();
    if memchr::memchr3(b'\'', b'"', b'`', lower.as_bytes()).is_none() {
        return lower;
    }
    let mut out = String::with_capacity(lower.len());
    mask_into(&lower, &mut out);
    out
}

/// Appends `s` to `out` with its quoted spans replaced by a space (see [`mask_quoted`]).
fn mask_into(s: &str, out: &mut String) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while let Some(p) = memchr::memchr3(b'\'', b'"', b'`', &b[i..]) {
        let at = i + p;
        let opens = at == 0 || !b[at - 1].is_ascii_alphanumeric();
        if let Some(close) = opens.then(|| closing_quote(b, at)).flatten() {
            // Quotes are ASCII, so both ends are char boundaries.
            out.push_str(&s[copied..at]);
            out.push(' ');
            i = close + 1;
            copied = i;
        } else {
            i = at + 1;
        }
    }
    out.push_str(&s[copied..]);
}

/// The quote closing the one at `open`: the same character, followed by a
/// non-alphanumeric character or the end.
fn closing_quote(b: &[u8], open: usize) -> Option<usize> {
    let q = b[open];
    let mut j = open + 1;
    while let Some(p) = memchr::memchr(q, &b[j..]) {
        let at = j + p;
        if b.get(at + 1).is_none_or(|c| !c.is_ascii_alphanumeric()) {
            return Some(at);
        }
        j = at + 1;
    }
    None
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
mod tests;
