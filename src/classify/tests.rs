//! Answers that are not in `fixtures/provider-errors/`: invented but realistic wordings,
//! so the rules are tested beyond the recorded set.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};

use super::*;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_760_000_000)
}

fn classify(
    provider: &str,
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: &str,
) -> Verdict {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, HeaderValue::from_static(v));
    }
    let status = StatusCode::from_u16(status).expect("valid status");
    classify_response(provider, status, &h, body.as_bytes(), now())
}

#[test]
fn reason_names_round_trip() {
    for r in Reason::ALL {
        assert_eq!(Reason::parse(r.as_str()), Some(r));
        assert_eq!(r.to_string(), r.as_str());
    }
    assert_eq!(Reason::parse("rate-limit"), None);
    assert_eq!(Reason::parse(""), None);
}

#[test]
fn error_body_keeps_at_most_the_limit() {
    let mut b = ErrorBody::new(10);
    assert!(b.feed(b"12345"));
    assert!(!b.feed(b"67890"));
    assert!(!b.is_truncated());
    assert!(!b.feed(b"abc"));
    assert_eq!(b.as_bytes(), b"1234567890");
    assert!(b.is_truncated());
    let mut z = ErrorBody::new(0);
    assert!(!z.feed(b"x"));
    assert!(z.as_bytes().is_empty());
}

/// provider, status, headers, body, expected reason.
type Case = (
    &'static str,
    u16,
    &'static [(&'static str, &'static str)],
    &'static str,
    Reason,
);

#[test]
fn unseen_wordings() {
    let cases: &[Case] = &[
        // Together: plain 429.
        ("together", 429, &[], r#"{"error":{"message":"rate limit exceeded, please try again later","type":"rate_limit","code":null}}"#, Reason::RateLimit),
        // DeepSeek 402 with only a status and two words.
        ("deepseek", 402, &[], r#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#, Reason::Billing),
        // xAI revoked key.
        ("xai", 403, &[], r#"{"code":"The caller does not have permission to execute the specified operation","error":"Your API key has been revoked. Please create a new key at https://console.x.ai."}"#, Reason::AuthPermanent),
        // Groq 503 over capacity.
        ("groq", 503, &[], r#"{"error":{"message":"llama-3.3-70b-versatile is currently over capacity. Please try again and back off exponentially.","type":"internal_server_error"}}"#, Reason::Overloaded),
        // Azure 429 without a body.
        ("azure", 429, &[("retry-after", "12")], "", Reason::RateLimit),
        // OpenRouter free-model daily limit: "credits" here is a way to lift a rate limit.
        ("openrouter", 429, &[], r#"{"error":{"message":"Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day","code":429}}"#, Reason::RateLimit),
        // OpenAI project spend limit (new code, type still insufficient_quota).
        ("openai", 429, &[], r#"{"error":{"message":"You have exceeded your project's spend limit.","type":"insufficient_quota","code":"project_spend_limit_exceeded"}}"#, Reason::Billing),
        // OpenAI deactivated account.
        ("openai", 401, &[], r#"{"error":{"message":"Your account has been deactivated. Please contact us.","type":"invalid_request_error","code":"account_deactivated"}}"#, Reason::AuthPermanent),
        // Gemini 400 invalid key.
        ("google", 400, &[], r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#, Reason::Auth),
        // Gemini 404 model.
        ("google", 404, &[], r#"{"error":{"code":404,"message":"models/gemini-9-pro is not found for API version v1beta, or is not supported for generateContent.","status":"NOT_FOUND"}}"#, Reason::ModelNotFound),
        // OpenAI 404 model.
        ("openai", 404, &[], r#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#, Reason::ModelNotFound),
        // Anthropic billing_error type.
        ("anthropic", 400, &[], r#"{"type":"error","error":{"type":"billing_error","message":"Your organization has no active billing plan."}}"#, Reason::Billing),
        // Anthropic 413.
        ("anthropic", 413, &[], r#"{"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}"#, Reason::Format),
        // Mistral capacity 429.
        ("mistral", 429, &[], r#"{"object":"error","message":"Service tier capacity exceeded for this model.","type":"service_tier_capacity_exceeded","param":null,"code":"3505"}"#, Reason::Overloaded),
        // Bedrock quota 400 via header only.
        ("bedrock", 400, &[("x-amzn-errortype", "ServiceQuotaExceededException:http://internal.amazon.com/coral/com.amazon.bedrock/")], r#"{"message":"Too many tokens per day, please wait before trying again."}"#, Reason::RateLimit),
        // Bedrock access denied.
        ("bedrock", 403, &[("x-amzn-errortype", "AccessDeniedException:http://internal.amazon.com/")], r#"{"message":"You don't have access to the model with the specified model ID."}"#, Reason::Auth),
        // Cloudflare concurrency 3021 under a generic status.
        ("cloudflare", 400, &[], r#"{"errors":[{"message":"AiError: Too many concurrent requests","code":3021}],"success":false}"#, Reason::RateLimit),
        // Fireworks 412 suspended account.
        ("fireworks", 412, &[], r#"{"error":{"object":"error","type":"invalid_request_error","message":"Account abc is suspended, possibly due to reaching the monthly spending limit or failure to pay past invoices."}}"#, Reason::Billing),
        // Plain-text 429 from an edge.
        ("together", 429, &[("content-type", "text/plain")], "Too Many Requests", Reason::RateLimit),
        // Envoy 504 text.
        ("groq", 504, &[], "upstream request timeout", Reason::Timeout),
        // 503 HTML maintenance page: capacity, never read.
        ("openai", 503, &[("content-type", "text/html")], "<html><body>rate limit quota billing</body></html>", Reason::Overloaded),
        // 400 validation echoing trigger words in quotes stays format.
        ("openai", 400, &[], r#"{"error":{"message":"Invalid 'tools[0].function.name': string does not match pattern. Got 'too_many_requests_handler'.","type":"invalid_request_error","param":"tools[0].function.name","code":"invalid_value"}}"#, Reason::Format),
        // 400 context length at DeepSeek.
        ("deepseek", 400, &[], r#"{"error":{"message":"This model's maximum context length is 65536 tokens. However, you requested 70000 tokens.","type":"invalid_request_error","param":null,"code":"invalid_request_error"}}"#, Reason::Format),
        // Unknown 500.
        ("xai", 500, &[], r#"{"code":"Internal error","error":"Service temporarily encountered an internal problem."}"#, Reason::Unknown),
        // Truncated JSON (cut at max_error_body) still classifies.
        ("anthropic", 429, &[], r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed your organization's rate limit of 30,000 input tokens per min"#, Reason::RateLimit),
        ("openai", 429, &[], r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/gu"#, Reason::Billing),
        // Gemini free tier not available: enabling billing fixes it.
        ("google", 400, &[], r#"{"error":{"code":400,"message":"Gemini API free tier is not available in your country. Please enable billing on your project in Google AI Studio.","status":"FAILED_PRECONDITION"}}"#, Reason::Billing),
        // OpenAI region refusal.
        ("openai", 403, &[], r#"{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}"#, Reason::Unknown),
    ];
    let mut failures = Vec::new();
    for (i, (provider, status, headers, body, want)) in cases.iter().enumerate() {
        let got = classify(provider, *status, headers, body).reason;
        if got != *want {
            failures.push(format!("#{i} {provider} {status}: want {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn hints_on_unseen_answers() {
    let v = classify("azure", 429, &[("retry-after", "12")], "");
    assert_eq!(
        v.hint,
        Some(RetryHint {
            after: Duration::from_secs(12),
            source: "retry-after"
        })
    );
    let v = classify(
        "openrouter",
        429,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1760000030000"),
        ],
        r#"{"error":{"message":"Rate limit exceeded","code":429}}"#,
    );
    assert_eq!(
        v.hint,
        Some(RetryHint {
            after: Duration::from_secs(30),
            source: "x-ratelimit-reset"
        })
    );
    let v = classify(
        "google",
        429,
        &[],
        r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"Quota exceeded.","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2.5s"}]}}"#,
    );
    assert_eq!(
        v.hint,
        Some(RetryHint {
            after: Duration::from_millis(2500),
            source: "RetryInfo"
        })
    );
    // The retry hint alone.
    let mut h = HeaderMap::new();
    h.insert("retry-after-ms", HeaderValue::from_static("1500"));
    assert_eq!(
        retry_hint("openai", &h, b"", now()).map(|h| h.after),
        Some(Duration::from_millis(1500))
    );
}

#[test]
fn classifies_in_microseconds() {
    // Not a benchmark: a guard against accidental quadratic work on a large body.
    let big = format!(
        r#"{{"error":{{"message":"{}","type":"invalid_request_error"}}}}"#,
        "a".repeat(60_000)
    );
    let v = classify("openai", 400, &[], &big);
    assert_eq!(v.reason, Reason::Format);
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random bytes, biased towards the bytes the parsers care about.
    let alphabet: &[u8] =
        b"{}[]\":,\\ \n\r0123456789.-+eE:TZtypecodemessageerror\x00\xff\xc3\xa9'`";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut h = HeaderMap::new();
    h.insert(
        "retry-after",
        HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    h.insert(
        "anthropic-ratelimit-tokens-remaining",
        HeaderValue::from_static("0"),
    );
    h.insert(
        "anthropic-ratelimit-tokens-reset",
        HeaderValue::from_static("2024-03-26T20:00:00+05:30"),
    );
    for round in 0..2000 {
        let len = (next() % 300) as usize;
        let body: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let status = StatusCode::from_u16(400 + (round % 200) as u16).expect("status");
        let _ = classify_response("google", status, &h, &body, now());
        let _ = fields::mask_quoted(&String::from_utf8_lossy(&body));
        let _ = hint::parse_message_hint(&String::from_utf8_lossy(&body));
        let _ = hint::parse_reset(&String::from_utf8_lossy(&body), now());
        let mut s = SseScanner::new("openai");
        for c in body.chunks(1 + (next() % 9) as usize) {
            let _ = s.feed(c);
        }
        let _ = s.finish();
    }
}
