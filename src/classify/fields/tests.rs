//! Unit tests of the field extraction. The reading is checked against a separate copy of
//! the `serde_json::Value` reading (kept below as the reference), on every fixture, on
//! hand-picked edge cases and on generated bodies.

use serde_json::Map;

use super::*;
use crate::testing::XorShift;

/// The `Value`-based reading, written out independently of `fields`.
fn reference(body: &[u8]) -> ErrorFields {
    let trimmed = trim_ascii(body);
    match serde_json::from_slice::<Value>(trimmed) {
        Ok(v) => reference_value(&v),
        Err(_) if trimmed.first().is_some_and(|b| *b == b'{' || *b == b'[') => {
            ErrorFields::lenient(trimmed)
        }
        Err(_) => ErrorFields::text(trimmed),
    }
}

fn reference_mask(s: &str) -> String {
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

fn reference_value(v: &Value) -> ErrorFields {
    let mut f = ErrorFields {
        is_json: true,
        ..ErrorFields::default()
    };
    ref_root(&mut f, v);
    f
}

fn reference_error_value(v: &Value) -> ErrorFields {
    let mut f = ErrorFields {
        is_json: true,
        ..ErrorFields::default()
    };
    match v {
        Value::Object(obj) => ref_object(&mut f, obj),
        Value::String(s) => f.message = mask_quoted(s),
        _ => {}
    }
    f
}

fn ref_root(f: &mut ErrorFields, root: &Value) {
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
            f.message = mask_quoted(s);
        }
        return;
    };
    if let Some(t) = obj.get("__type").and_then(Value::as_str) {
        f.aws_type = aws_name(t);
    }
    match obj.get("error") {
        Some(Value::Object(err)) => {
            ref_object(f, err);
            return;
        }
        Some(Value::String(s)) => {
            // `{"error":"Too Many Requests","message":"…"}` (Fireworks, xAI).
            f.extra = mask_quoted(s);
        }
        _ => {}
    }
    if let Some(Value::Array(errors)) = obj.get("errors") {
        if let Some(Value::Object(first)) = errors.first() {
            // Cloudflare v4 envelope.
            if let Some(c) = first.get("code").and_then(Value::as_i64) {
                f.cf_code = Some(c);
            }
            ref_object(f, first);
            return;
        }
    }
    ref_object(f, obj);
}

fn ref_object(f: &mut ErrorFields, err: &Map<String, Value>) {
    if let Some(t) = err.get("type").and_then(Value::as_str) {
        if !t.eq_ignore_ascii_case("error") {
            f.etype = t.to_ascii_lowercase();
        }
    }
    match err.get("code") {
        Some(Value::String(s)) => {
            f.code = s.to_ascii_lowercase();
            if let Ok(n) = s.trim().parse::<u16>() {
                f.set_numeric_status(n);
            }
        }
        Some(Value::Number(n)) => {
            f.code = n.to_string();
            if let Some(n) = n.as_u64().and_then(|n| u16::try_from(n).ok()) {
                f.set_numeric_status(n);
            }
        }
        _ => {}
    }
    if let Some(s) = err.get("status").and_then(Value::as_str) {
        f.status = s.to_ascii_lowercase();
    }
    let message = err
        .get("message")
        .or_else(|| err.get("Message"))
        .or_else(|| err.get("detail"))
        .and_then(Value::as_str);
    if let Some(m) = message {
        f.message = mask_quoted(m);
    }
    if let Some(Value::Object(details)) = err.get("details") {
        if let Some(c) = details.get("error_code").and_then(Value::as_str) {
            f.detail_code = c.to_ascii_lowercase();
        }
    }
    if let Some(Value::Array(details)) = err.get("details") {
        for d in details {
            ref_google_detail(f, d);
        }
    }
    if let Some(Value::Array(errors)) = err.get("errors") {
        for e in errors {
            if let Some(r) = e.get("reason").and_then(Value::as_str) {
                f.reasons.push(r.to_ascii_lowercase());
            }
        }
    }
    if let Some(Value::Object(meta)) = err.get("metadata") {
        if let Some(raw) = meta.get("raw").and_then(Value::as_str) {
            if !f.extra.is_empty() {
                f.extra.push(' ');
            }
            f.extra.push_str(&mask_quoted(raw));
        }
    }
}

fn ref_google_detail(f: &mut ErrorFields, d: &Value) {
    let Some(kind) = d.get("@type").and_then(Value::as_str) else {
        return;
    };
    if kind.ends_with("ErrorInfo") {
        if let Some(r) = d.get("reason").and_then(Value::as_str) {
            f.reasons.push(r.to_ascii_lowercase());
        }
    } else if kind.ends_with("QuotaFailure") {
        if let Some(Value::Array(vs)) = d.get("violations") {
            for v in vs {
                if let Some(id) = v.get("quotaId").and_then(Value::as_str) {
                    f.quota_ids.push(id.to_ascii_lowercase());
                }
                if v.get("quotaValue").and_then(Value::as_str) == Some("0") {
                    f.quota_zero = true;
                }
            }
        }
    } else if kind.ends_with("RetryInfo") {
        f.retry_delay = match d.get("retryDelay") {
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
    let f = ErrorFields::from_body(br#"{"errors":[{"message":"x","code":3040}],"success":false}"#);
    assert_eq!(f.cf_code, Some(3040));
    let f = ErrorFields::from_body(b"<html><body>502</body></html>");
    assert!(f.is_html && f.message.is_empty());
    let f = ErrorFields::from_body(b"Too Many Requests");
    assert_eq!(f.message, "too many requests");
    let f = ErrorFields::from_body(b"");
    assert!(!f.is_json && f.message.is_empty());
}

/// The reading gives what the reference gives, for the body and for the
/// already-parsed paths the stream scanner uses.
#[track_caller]
fn assert_same(body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(
        format!("{:?}", ErrorFields::from_body(body)),
        format!("{:?}", reference(body)),
        "from_body of {text}"
    );
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        assert_eq!(
            format!("{:?}", ErrorFields::from_root_value(&v)),
            format!("{:?}", reference_value(&v)),
            "from_root_value of {text}"
        );
        for e in [&v, v.get("error").unwrap_or(&Value::Null)] {
            assert_eq!(
                format!("{:?}", ErrorFields::from_error_value(e)),
                format!("{:?}", reference_error_value(e)),
                "from_error_value of {e}"
            );
        }
    }
}

#[test]
fn matches_value_reading_on_every_fixture() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provider-errors");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json");
        let body = v["body"].as_str().expect("body");
        assert_same(body.as_bytes());
        // Stream fixtures: every `data:` payload too.
        for line in body.lines() {
            if let Some(data) = line.strip_prefix("data:") {
                assert_same(data.trim().as_bytes());
            }
        }
        n += 1;
    }
    assert!(n >= 60, "only {n} fixtures found");
}

#[test]
fn ignores_values_of_unexpected_types() {
    for body in [
        r#"{"type":5,"code":true,"status":null,"message":{"a":1},"details":"x","errors":7}"#,
        r#"{"error":7,"message":"kept"}"#,
        r#"{"error":null,"errors":null,"metadata":[1],"__type":3,"message":"kept"}"#,
        r#"{"error":{"type":["a"],"code":[429],"status":1.5,"metadata":{"raw":5}}}"#,
        r#"{"error":{"details":[1,"x",null,{"@type":5},{"@type":"x.ErrorInfo","reason":7}]}}"#,
        r#"{"error":{"details":[{"@type":"QuotaFailure","violations":[1,{"quotaId":2,"quotaValue":0}]}]}}"#,
        r#"{"error":{"details":[{"@type":"RetryInfo","retryDelay":5}]}}"#,
        r#"{"errors":[1,{"reason":"second"}],"message":"root"}"#,
        r#"{"errors":[],"message":"root"}"#,
        "5",
        "null",
        "true",
        "[]",
        "[[{\"message\":\"nested\"}]]",
        "[5,{\"message\":\"second\"}]",
    ] {
        assert_same(body.as_bytes());
    }
    let f = ErrorFields::from_body(br#"{"type":5,"error":7,"message":null,"detail":"hidden"}"#);
    assert!(f.is_json);
    assert_eq!((f.etype.as_str(), f.message.as_str()), ("", ""));
}

#[test]
fn keeps_the_last_of_repeated_keys() {
    for body in [
        r#"{"error":{"message":"first","message":"second"}}"#,
        r#"{"error":{"message":"first","message":5,"detail":"third"}}"#,
        r#"{"error":{"type":"a"},"error":"plain","message":"m"}"#,
        r#"{"error":"plain","error":{"type":"a"}}"#,
        r#"{"error":{"details":[{"@type":"RetryInfo","retryDelay":"5s"},{"@type":"RetryInfo"}]}}"#,
        r#"{"error":{"details":[{"@type":"RetryInfo","retryDelay":"5s","retryDelay":{"seconds":2}}]}}"#,
        r#"{"error":{"details":{"error_code":"a","error_code":"b"},"details":{"x":1}}}"#,
        r#"{"metadata":{"raw":"a"},"metadata":{"raw":"b","raw":"c"},"error":"e"}"#,
    ] {
        assert_same(body.as_bytes());
    }
    let f = ErrorFields::from_body(br#"{"error":{"message":"first","message":"second"}}"#);
    assert!(f.is_json);
    assert_eq!(f.message, "second");
}

#[test]
fn reads_array_and_string_roots() {
    let f = ErrorFields::from_body(br#"[{"error":{"message":"Vertex says"}},{"error":{}}]"#);
    assert_eq!(f.message, "vertex says");
    let f = ErrorFields::from_body(br#""Upstream 'x' failed""#);
    assert!(f.is_json);
    assert_eq!(f.message, "upstream   failed");
    for body in [r#"["plain"]"#, r#""s""#, "[]", r#"[[1],{"message":"x"}]"#] {
        assert_same(body.as_bytes());
    }
}

#[test]
fn unescapes_strings() {
    let f = ErrorFields::from_body(
        br#"{"err\u006fr":{"type":"rate_\u006Cimit_error","message":"Line\nTwo \"quoted\" caf\u00e9 \ud83d\ude00"}}"#,
    );
    assert_eq!(f.etype, "rate_limit_error");
    assert_eq!(f.message, "line\ntwo   café 😀");
    for body in [
        r#"{"message":"a\\b\/c\t"}"#,
        r#"{"error":{"metadata":{"r\u0061w":"R\u0041W"}}}"#,
    ] {
        assert_same(body.as_bytes());
    }
}

#[test]
fn reads_code_as_number_or_string() {
    let f = ErrorFields::from_body(br#"{"error":{"code":429}}"#);
    assert_eq!((f.code.as_str(), f.numeric_status), ("429", Some(429)));
    let f = ErrorFields::from_body(br#"{"error":{"code":" 503 "}}"#);
    assert_eq!((f.code.as_str(), f.numeric_status), (" 503 ", Some(503)));
    let f = ErrorFields::from_body(br#"{"errors":[{"code":3040,"message":"busy"}]}"#);
    assert_eq!(f.cf_code, Some(3040));
    for body in [
        r#"{"code":-5}"#,
        r#"{"code":429.0}"#,
        r#"{"code":1e3}"#,
        r#"{"code":70000}"#,
        r#"{"code":18446744073709551615}"#,
        r#"{"errors":[{"code":"3040"}]}"#,
        r#"{"errors":[{"code":3040.5}]}"#,
    ] {
        assert_same(body.as_bytes());
    }
}

#[test]
fn reads_retry_delay_in_both_forms() {
    let f = ErrorFields::from_body(
        br#"{"error":{"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":{"seconds":26,"nanos":500000000}}]}}"#,
    );
    assert_eq!(f.retry_delay.as_deref(), Some("26.5s"));
    let f = ErrorFields::from_body(
        br#"{"error":{"details":[{"retryDelay":" 37S ","@type":"google.rpc.RetryInfo"}]}}"#,
    );
    assert_eq!(f.retry_delay.as_deref(), Some("37s"));
    for body in [
        r#"{"error":{"details":[{"@type":"RetryInfo","retryDelay":{"seconds":"26"}}]}}"#,
        r#"{"error":{"details":[{"@type":"RetryInfo","retryDelay":{}}]}}"#,
        r#"{"error":{"details":[{"@type":"RetryInfo","retryDelay":{"nanos":-1.5e8}}]}}"#,
    ] {
        assert_same(body.as_bytes());
    }
}

#[test]
fn rejects_what_value_rejects() {
    // Bodies serde_json's value skipping would accept but `Value` does not: they must
    // still go to the lenient scan, not count as parsed JSON with no fields.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let deep_obj = format!(
        r#"{{"message":"m","x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let nested = |n: usize| format!("{}\"m\"{}", r#"{"error":"#.repeat(n), "}".repeat(n));
    // Nesting past serde_json's limit through the keys that are read, and just inside it.
    let (deep_known, shallow_known) = (nested(200), nested(100));
    assert!(serde_json::from_str::<Value>(&deep_known).is_err());
    assert!(serde_json::from_str::<Value>(&shallow_known).is_ok());
    for body in [
        deep_known.as_str(),
        shallow_known.as_str(),
        r#"{"x":"\ud800","message":"lone surrogate"}"#,
        r#"{"x":1e400,"message":"out of range"}"#,
        r#"{"message":"trailing"} x"#,
        r#"{"message":"cut"#,
        r#"{"message":"a","message":}"#,
        deep.as_str(),
        deep_obj.as_str(),
    ] {
        assert_same(body.as_bytes());
    }
    assert_same(b"{\"message\":\"bad \xff utf-8\"}");
    assert_same(b"\xff\xfe plain");
}

/// Error-shaped JSON, generated: the keys the parse reads, at every level, with values of
/// every type, repeated keys and escapes.
trait ErrorJson {
    fn value(&mut self, depth: u32, out: &mut String);
    fn object(&mut self, depth: u32, out: &mut String);
}

impl ErrorJson for XorShift {
    fn value(&mut self, depth: u32, out: &mut String) {
        let kind = if depth == 0 {
            self.next() % 5
        } else {
            self.next() % 8
        };
        match kind {
            0 => out.push_str(self.pick(&["null", "true", "0", "429", "-3", "2.5", "3040"])),
            1..=4 => {
                let s = self.pick(&[
                    "error",
                    "Rate limit 'x' exceeded",
                    "RESOURCE_EXHAUSTED",
                    "type.googleapis.com/google.rpc.ErrorInfo",
                    "google.rpc.QuotaFailure",
                    "google.rpc.RetryInfo",
                    "0",
                    " 429 ",
                    "12s",
                    "esc\\\"aped\\u0041\\n",
                    "ThrottlingException:http://x",
                    "",
                ]);
                out.push('"');
                out.push_str(s);
                out.push('"');
            }
            5 => {
                out.push('[');
                for i in 0..self.next() % 4 {
                    if i > 0 {
                        out.push(',');
                    }
                    self.value(depth - 1, out);
                }
                out.push(']');
            }
            _ => self.object(depth, out),
        }
    }

    fn object(&mut self, depth: u32, out: &mut String) {
        out.push('{');
        for i in 0..self.next() % 6 {
            if i > 0 {
                out.push(',');
            }
            let k = self.pick(&[
                "__type",
                "error",
                "type",
                "code",
                "status",
                "message",
                "Message",
                "detail",
                "details",
                "errors",
                "reason",
                "metadata",
                "raw",
                "error_code",
                "@type",
                "violations",
                "quotaId",
                "quotaValue",
                "retryDelay",
                "seconds",
                "nanos",
                "other",
                "mess\\u0061ge",
            ]);
            out.push('"');
            out.push_str(k);
            out.push_str("\":");
            self.value(depth - 1, out);
        }
        out.push('}');
    }
}

#[test]
fn matches_value_reading_on_generated_bodies() {
    let mut g = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut body = String::new();
    for _ in 0..20_000 {
        body.clear();
        // Mostly objects and arrays at the root, as error bodies are.
        match g.next() % 8 {
            0 => g.value(5, &mut body),
            1 => {
                body.push('[');
                g.value(5, &mut body);
                body.push(']');
            }
            _ => g.object(5, &mut body),
        }
        assert_same(body.as_bytes());
    }
}

#[test]
fn masking_matches_the_two_pass_version() {
    let mut g = XorShift(0x2545_f491_4f6c_dd1d);
    let parts = [
        "a",
        "B",
        "1",
        " ",
        "'",
        "\"",
        "`",
        "x'",
        "'y",
        "É",
        "ß",
        "İ",
        "–",
        "\u{1F600}",
        ".",
        "_",
    ];
    let mut s = String::new();
    for _ in 0..20_000 {
        s.clear();
        for _ in 0..g.next() % 24 {
            s.push_str(g.pick(&parts));
        }
        assert_eq!(mask_quoted(&s), reference_mask(&s), "{s:?}");
    }
    let long = format!("{}'{}' tail", "é".repeat(3000), "x".repeat(10));
    assert_eq!(mask_quoted(&long), reference_mask(&long));
    let long = format!("{}'{}' tail", "A".repeat(4090), "x".repeat(10));
    assert_eq!(mask_quoted(&long), reference_mask(&long));
}
