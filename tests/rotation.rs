//! Rotation on rate limits (SPEC §7) against the mock provider: which answers rotate,
//! which go back as sent, model-scoped cooldowns, stream errors before the commit point,
//! steering, and a bounded load.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::gateway::{ALL, GW};
use support::keygate::{
    post_json, post_messages, read_stream, stream_messages, text_of, Keygate, Opts,
};
use support::mock::{anthropic_sse, Behaviour, End, MockProvider};

const A: &str = "sk-test-key-A-0000000001";
const B: &str = "sk-test-key-B-0000000002";
const C: &str = "sk-test-key-C-0000000003";

async fn keygate(mock: &MockProvider, extra: &str, prefix: &str, keys: &[&str]) -> Keygate {
    Keygate::start(
        Opts::gateway(&mock.url(), ALL)
            .more_config(extra)
            .env(&format!("{prefix}_API_KEYS"), &keys.join(",")),
    )
    .await
}

fn anthropic_429() -> Behaviour {
    Behaviour::status_with(
        429,
        &[("retry-after", "30")],
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization of 50 requests per minute."}}"#,
    )
}

/// One 429 with `retry-after: 1`, then normal answers.
fn limited_for_a_second() -> Behaviour {
    Behaviour::Sequence(vec![
        Behaviour::status_with(
            429,
            &[("retry-after", "1")],
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"rate limited"}}"#,
        ),
        Behaviour::Normal,
    ])
}

#[tokio::test]
async fn a_429_rotates_to_the_next_key_with_identical_bodies() {
    let cases: [(&str, &str, &str, serde_json::Value, Behaviour); 3] = [
        (
            "ANTHROPIC",
            "/anthropic/v1/messages",
            "claude-sonnet-4-5",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 8}),
            anthropic_429(),
        ),
        (
            "OPENAI",
            "/openai/v1/chat/completions",
            "gpt-4o-mini",
            json!({"model": "gpt-4o-mini", "messages": []}),
            Behaviour::status_with(
                429,
                &[
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "20s"),
                ],
                r#"{"error":{"message":"Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
            ),
        ),
        (
            "GEMINI",
            "/google/v1beta/models/gemini-2.5-flash:generateContent",
            "gemini-2.5-flash",
            json!({"contents": []}),
            Behaviour::status(
                429,
                r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"26s"}]}}"#,
            ),
        ),
    ];
    for (prefix, path, _model, body, limited) in cases {
        let mock = MockProvider::start().await;
        mock.on_key(A, limited);
        let kg = keygate(&mock, "", prefix, &[A, B]).await;
        let a = post_json(&kg.url(path), &[("x-api-key", GW)], &body).await;
        assert_eq!(a.status, StatusCode::OK, "{prefix}: {}", a.text());
        assert_eq!(
            a.header("x-keygate-credential"),
            Some(format!("env:{prefix}_API_KEYS#2").as_str()),
            "{prefix}"
        );
        assert_eq!(a.header("x-keygate-attempts"), Some("2"));
        let reqs = mock.requests();
        assert_eq!(
            mock.keys(),
            vec![Some(A.to_owned()), Some(B.to_owned())],
            "{prefix}: A then B"
        );
        assert_eq!(
            reqs[0].body, reqs[1].body,
            "{prefix}: the same bytes replayed"
        );
        assert_eq!(reqs[0].path_and_query, reqs[1].path_and_query);
    }
}

#[tokio::test]
async fn non_rotating_errors_go_back_as_sent() {
    let cases = [
        (
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: must be positive"}}"#,
        ),
        (
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        ),
        (
            404,
            r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-nope"}}"#,
        ),
        (
            500,
            r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
        ),
        (
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
    ];
    for (status, body) in cases {
        let mock = MockProvider::start().await;
        mock.on_key(
            A,
            Behaviour::status_with(status, &[("x-custom-upstream", "yes")], body),
        );
        let kg = keygate(&mock, "", "ANTHROPIC", &[A, B]).await;
        let a = post_json(
            &kg.url("/anthropic/v1/messages"),
            &[("x-api-key", GW)],
            &json!({"model": "claude-nope", "max_tokens": 1}),
        )
        .await;
        assert_eq!(a.status.as_u16(), status);
        assert_eq!(a.text(), body, "{status}: body exactly as sent");
        assert_eq!(a.header("x-custom-upstream"), Some("yes"));
        assert_eq!(a.header("x-keygate-attempts"), Some("1"));
        assert_eq!(mock.requests().len(), 1, "{status}: no second attempt");
    }
}

#[tokio::test]
async fn all_keys_limited_returns_the_last_answer() {
    let mock = MockProvider::start().await;
    for (k, tag) in [(A, "a"), (B, "b"), (C, "c")] {
        mock.on_key(k, Behaviour::status_with(429, &[("retry-after", "30"), ("x-which", tag)], r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#));
    }
    let kg = keygate(&mock, "", "ANTHROPIC", &[A, B, C]).await;
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.header("x-keygate-attempts"), Some("3"));
    assert_eq!(a.header("x-which"), Some("c"), "the last attempt's headers");
    assert_eq!(a.json()["error"]["type"], "rate_limit_error");

    // Now every key is cooling: keygate answers itself, with retry-after.
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        mock.requests().len(),
        3,
        "no upstream attempt while all cool"
    );
    let ra: u64 = a
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("secs");
    assert!((1..=30).contains(&ra), "{ra}");
    assert_eq!(
        a.json()["error"]["message"],
        "No available credential for anthropic (all in cooldown or unavailable)."
    );
    // Another model is not affected.
    mock.clear_rules();
    let a = post_messages(&kg, GW, "claude-haiku-4-5").await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn cooldown_is_per_model_and_ends_with_the_window() {
    let mock = MockProvider::start().await;
    mock.on_key(A, limited_for_a_second());
    let kg = keygate(&mock, "", "ANTHROPIC", &[A, B]).await;
    let url = kg.url("/anthropic/v1/messages");
    let h = [("x-api-key", GW)];
    let a = post_json(&url, &h, &json!({"model": "m1"})).await;
    assert_eq!(
        a.header("x-keygate-credential"),
        Some("env:ANTHROPIC_API_KEYS#2")
    );
    // Inside the window: M1 goes straight to B, A is never asked.
    mock.clear();
    let a = post_json(&url, &h, &json!({"model": "m1"})).await;
    assert_eq!(a.header("x-keygate-attempts"), Some("1"));
    assert_eq!(mock.keys(), vec![Some(B.to_owned())]);
    // M2 still tries A first.
    mock.clear();
    let a = post_json(&url, &h, &json!({"model": "m2"})).await;
    assert_eq!(
        a.header("x-keygate-credential"),
        Some("env:ANTHROPIC_API_KEYS#1")
    );
    assert_eq!(mock.keys(), vec![Some(A.to_owned())]);
    // After retry-after (1 s), A serves M1 again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = post_json(&url, &h, &json!({"model": "m1"})).await;
    assert_eq!(
        a.header("x-keygate-credential"),
        Some("env:ANTHROPIC_API_KEYS#1")
    );
}

fn stream_with_error(kind: &str) -> Behaviour {
    let start = anthropic_sse("claude-sonnet-4-5", 1).remove(0);
    Behaviour::Sse {
        events: vec![
            start,
            format!("event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"{kind} happened\"}}}}\n\n"),
        ],
        delay: Duration::ZERO,
        end: End::Clean,
    }
}

async fn stream_text(kg: &Keygate) -> (StatusCode, Option<String>, String, bool) {
    let resp = stream_messages(kg, GW).await;
    let status = resp.status();
    let cred = resp
        .headers()
        .get("x-keygate-credential")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (chunks, errored) = read_stream(resp, Duration::from_secs(20)).await;
    (status, cred, text_of(&chunks), errored)
}

#[tokio::test]
async fn error_event_before_content_is_retried_transparently() {
    for (kind, extra) in [
        ("rate_limit_error", ""),
        (
            "overloaded_error",
            "[rotation]\nrotate_on = [\"rate_limit\", \"billing\", \"overloaded\"]\n",
        ),
    ] {
        let mock = MockProvider::start().await;
        mock.on_key(A, stream_with_error(kind));
        let kg = keygate(&mock, extra, "ANTHROPIC", &[A, B]).await;
        let (status, cred, text, errored) = stream_text(&kg).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cred.as_deref(), Some("env:ANTHROPIC_API_KEYS#2"), "{kind}");
        assert!(!errored, "{kind}: clean stream");
        assert!(
            !text.contains("event: error"),
            "{kind}: the error never reached the client: {text}"
        );
        assert_eq!(
            text.matches("event: message_start").count(),
            1,
            "{kind}: one stream only"
        );
        assert!(text.contains("message_stop"));
    }
}

#[tokio::test]
async fn overloaded_stream_error_is_passed_on_by_default() {
    let mock = MockProvider::start().await;
    mock.on_key(A, stream_with_error("overloaded_error"));
    let kg = keygate(&mock, "", "ANTHROPIC", &[A, B]).await;
    let (status, cred, text, _) = stream_text(&kg).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cred.as_deref(), Some("env:ANTHROPIC_API_KEYS#1"));
    assert!(
        text.contains("overloaded_error"),
        "overloaded does not rotate by default: {text}"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn stream_cut_after_commit_ends_with_error_event() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Sse {
        events: anthropic_sse("claude-sonnet-4-5", 3)
            .into_iter()
            .take(4)
            .collect(),
        delay: Duration::ZERO,
        end: End::Clean, // a clean close without message_stop is still a truncation
    });
    let kg = keygate(&mock, "", "ANTHROPIC", &[A, B]).await;
    let (_, _, text, errored) = stream_text(&kg).await;
    assert!(text.contains("event: error"), "{text}");
    assert!(errored, "the body must not end cleanly");
}

#[tokio::test]
async fn remaining_zero_on_a_success_steers_the_next_request() {
    let mock = MockProvider::start().await;
    mock.on_key(
        A,
        Behaviour::Sequence(vec![
            Behaviour::status_with(
                200,
                &[
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "30s"),
                ],
                r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[]}"#,
            ),
            Behaviour::Normal,
        ]),
    );
    let kg = keygate(&mock, "", "OPENAI", &[A, B]).await;
    let url = kg.url("/openai/v1/chat/completions");
    let a = post_json(&url, &[("x-api-key", GW)], &json!({"model": "gpt-4o"})).await;
    assert_eq!(
        (a.status, a.header("x-keygate-credential")),
        (StatusCode::OK, Some("env:OPENAI_API_KEYS#1"))
    );
    let a = post_json(&url, &[("x-api-key", GW)], &json!({"model": "gpt-4o"})).await;
    assert_eq!(
        a.header("x-keygate-credential"),
        Some("env:OPENAI_API_KEYS#2")
    );
    assert_eq!(
        mock.requests_for_key(A),
        1,
        "A was not asked again inside its window"
    );
}

/// SPEC §11: the upstream's clock two hours behind ours. OpenRouter's epoch-millisecond
/// `X-RateLimit-Reset` one minute after its `Date` is already past by the local clock: the
/// window is taken relative to `Date`, so the spent key cools and the third request (whose
/// least recently used key is A) still goes to B.
#[tokio::test]
async fn a_spent_key_with_a_reset_past_by_the_local_clock_still_cools() {
    let upstream_now = std::time::SystemTime::now() - Duration::from_secs(7200);
    let date = httpdate::fmt_http_date(upstream_now);
    let reset = (upstream_now + Duration::from_secs(60))
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().to_string())
        .unwrap_or_default();
    // And the same with a reset before its own `Date`: no usable reset, the ladder.
    let before = (upstream_now - Duration::from_secs(5))
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().to_string())
        .unwrap_or_default();
    for reset in [reset, before] {
        let mock = MockProvider::start().await;
        mock.on_key(
            A,
            Behaviour::Sequence(vec![
                Behaviour::status_with(
                    200,
                    &[
                        ("date", date.as_str()),
                        ("x-ratelimit-remaining", "0"),
                        ("x-ratelimit-reset", reset.as_str()),
                    ],
                    r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[]}"#,
                ),
                Behaviour::Normal,
            ]),
        );
        let kg = keygate(&mock, "", "OPENAI", &[A, B]).await;
        let url = kg.url("/openai/v1/chat/completions");
        let mut served = Vec::new();
        for _ in 0..3 {
            let a = post_json(&url, &[("x-api-key", GW)], &json!({"model": "gpt-4o"})).await;
            assert_eq!(a.status, StatusCode::OK);
            served.push(a.header("x-keygate-credential").map(str::to_owned));
        }
        let b = Some("env:OPENAI_API_KEYS#2".to_owned());
        assert_eq!(
            served,
            [Some("env:OPENAI_API_KEYS#1".to_owned()), b.clone(), b],
            "reset {reset}"
        );
        assert_eq!(mock.requests_for_key(A), 1, "A stayed cooling");
    }
}

/// A 429 whose `retry-after` is an HTTP date already past by the upstream's `Date` cannot
/// be right: the key cools on the ladder (30 s) instead of a zero-length window.
#[tokio::test]
async fn a_429_with_a_past_retry_after_date_cools_on_the_ladder() {
    let upstream_now = std::time::SystemTime::now() + Duration::from_secs(7200);
    let date = httpdate::fmt_http_date(upstream_now);
    let past = httpdate::fmt_http_date(upstream_now - Duration::from_secs(10));
    let mock = MockProvider::start().await;
    mock.on_key(
        A,
        Behaviour::Sequence(vec![
            Behaviour::status_with(
                429,
                &[("date", date.as_str()), ("retry-after", past.as_str())],
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"rate limited"}}"#,
            ),
            Behaviour::Normal,
        ]),
    );
    let kg = keygate(&mock, "", "ANTHROPIC", &[A, B]).await;
    let url = kg.url("/anthropic/v1/messages");
    for _ in 0..3 {
        let a = post_json(&url, &[("x-api-key", GW)], &json!({"model": "m"})).await;
        assert_eq!(
            (a.status, a.header("x-keygate-credential")),
            (StatusCode::OK, Some("env:ANTHROPIC_API_KEYS#2"))
        );
    }
    assert_eq!(mock.requests_for_key(A), 1, "A stayed cooling");
}

#[tokio::test]
async fn pinned_requests_never_rotate() {
    let mock = MockProvider::start().await;
    mock.on_key(A, anthropic_429());
    let kg = keygate(&mock, "", "ANTHROPIC", &[A, B]).await;
    let a = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[
            ("x-api-key", GW),
            ("x-keygate-profile", "env:ANTHROPIC_API_KEYS#1"),
        ],
        &json!({"model": "claude"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn on_all_cooling_wait_waits_for_the_soonest_key() {
    let mock = MockProvider::start().await;
    mock.on_key(A, limited_for_a_second());
    let kg = keygate(
        &mock,
        "[rotation]\non_all_cooling = \"wait\"\nmax_wait = \"5s\"\n",
        "ANTHROPIC",
        &[A],
    )
    .await;
    let url = kg.url("/anthropic/v1/messages");
    let a = post_json(&url, &[("x-api-key", GW)], &json!({"model": "m"})).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let a = post_json(&url, &[("x-api-key", GW)], &json!({"model": "m"})).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "waited for A's window to end: {}",
        a.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_with_two_keys_always_limited() {
    const KEYS: [&str; 5] = [
        "sk-load-key-1-xxxxxxxx",
        "sk-load-key-2-xxxxxxxx",
        "sk-load-key-3-xxxxxxxx",
        "sk-load-key-4-xxxxxxxx",
        "sk-load-key-5-xxxxxxxx",
    ];
    const REQUESTS: usize = 500;
    const CONCURRENCY: usize = 50;
    let mock = MockProvider::start().await;
    for k in &KEYS[..2] {
        mock.on_key(k, anthropic_429());
    }
    let kg = keygate(&mock, "", "ANTHROPIC", &KEYS).await;
    let url = kg.url("/anthropic/v1/messages");
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let _p = permit;
            post_json(
                &url,
                &[("x-api-key", GW)],
                &json!({"model": "claude-sonnet-4-5", "i": i}),
            )
            .await
            .status
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.expect("task") == StatusCode::OK {
            ok += 1;
        }
    }
    let limited: Vec<usize> = KEYS[..2].iter().map(|k| mock.requests_for_key(k)).collect();
    let served: Vec<usize> = KEYS[2..].iter().map(|k| mock.requests_for_key(k)).collect();
    println!("load: {ok}/{REQUESTS} ok; 429s received by the limited keys: {limited:?}; served by the others: {served:?}");
    assert_eq!(ok, REQUESTS, "every request succeeds");
    for n in &limited {
        assert!(
            *n <= CONCURRENCY + 1,
            "a limited key kept receiving traffic: {limited:?}"
        );
    }
}

#[tokio::test]
async fn metrics_and_status_show_the_rotation() {
    let mock = MockProvider::start().await;
    mock.on_key(A, anthropic_429());
    let kg = Keygate::start(
        Opts::gateway(&mock.url(), &["anthropic"])
            .env("KEYGATE_ADMIN_TOKEN", "admin-secret-token")
            .env("ANTHROPIC_API_KEYS", &format!("{A},{B}")),
    )
    .await;
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::OK);

    let m = support::keygate::send(Method::GET, &kg.url("/metrics"), &[], Bytes::new()).await;
    assert_eq!(m.status, StatusCode::OK);
    let text = m.text();
    for line in [
        "keygate_requests_total{provider=\"anthropic\",status=\"200\"} 1",
        "keygate_rotations_total{provider=\"anthropic\",reason=\"rate_limit\"} 1",
        "keygate_upstream_attempts_total{provider=\"anthropic\",credential=\"env:ANTHROPIC_API_KEYS#1\",outcome=\"rate_limit\"} 1",
        "keygate_upstream_attempts_total{provider=\"anthropic\",credential=\"env:ANTHROPIC_API_KEYS#2\",outcome=\"success\"} 1",
        "keygate_cooldowns_active{provider=\"anthropic\"} 1",
        "keygate_upstream_duration_seconds_count{provider=\"anthropic\"} 2",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    assert!(!text.contains(A) && !text.contains(B) && !text.contains(GW));

    let s =
        support::keygate::send(Method::GET, &kg.url("/_keygate/status"), &[], Bytes::new()).await;
    assert_eq!(s.status, StatusCode::UNAUTHORIZED);
    let s = support::keygate::send(
        Method::GET,
        &kg.url("/_keygate/status"),
        &[("authorization", "Bearer admin-secret-token")],
        Bytes::new(),
    )
    .await;
    assert_eq!(s.status, StatusCode::OK);
    let v = s.json();
    let w = &v["cooldowns"][0];
    assert_eq!(w["credential"], "env:ANTHROPIC_API_KEYS#1");
    assert_eq!(w["model"], "claude-sonnet-4-5");
    assert_eq!(w["reason"], "rate_limit");
    assert_eq!(w["source"], "retry-after");
    assert_eq!(w["failures"], 1);
    assert_eq!(w["lastStatus"], 429);
    let anthropic = v["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .find(|p| p["provider"] == "anthropic")
        .expect("anthropic row");
    let creds = anthropic["credentials"].as_array().expect("credentials");
    let a_row = creds
        .iter()
        .find(|c| c["id"] == "env:ANTHROPIC_API_KEYS#1")
        .expect("A's row");
    assert_eq!(a_row["secret"], "…0001");
    assert_eq!(a_row["kind"], "api_key");
    assert_eq!(
        a_row["cooldowns"][0]["reason"], "rate_limit",
        "the row carries its cooldown"
    );
    assert_eq!(
        v["check"]["exitCode"], 0,
        "the same document as `models status --json`"
    );
    assert!(!s.text().contains(A) && !s.text().contains(B));
}

#[tokio::test]
async fn round_robin_spreads_load_over_the_pool() {
    let mock = MockProvider::start().await;
    let kg = keygate(
        &mock,
        "[rotation]\nstrategy = \"round_robin\"\n",
        "ANTHROPIC",
        &[A, B, C],
    )
    .await;
    for _ in 0..9 {
        let a = post_messages(&kg, GW, "m").await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let counts: Vec<usize> = [A, B, C].iter().map(|k| mock.requests_for_key(k)).collect();
    assert_eq!(counts, vec![3, 3, 3], "least recently used first");
}

#[tokio::test]
async fn a_key_at_its_local_rpm_is_skipped_not_failed() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(
        Opts::gateway(&mock.url(), &["openai"])
            .more_config("rpm = 1\n")
            .env("OPENAI_API_KEYS", &format!("{A},{B}")),
    )
    .await;
    let url = kg.url("/openai/v1/chat/completions");
    let used: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let a = post_json(&url, &[("x-api-key", GW)], &json!({"model": "m"})).await;
            v.push(format!(
                "{} {}",
                a.status.as_u16(),
                a.header("x-keygate-credential").unwrap_or("-")
            ));
        }
        v
    };
    assert_eq!(used[0], "200 env:OPENAI_API_KEYS#1");
    assert_eq!(
        used[1], "200 env:OPENAI_API_KEYS#2",
        "A is at its rpm: skipped"
    );
    assert!(used[2].starts_with("429"), "both at their rpm: {}", used[2]);
    assert_eq!(
        mock.requests().len(),
        2,
        "no upstream attempt over the local limit"
    );
}

#[tokio::test]
async fn max_attempts_bounds_the_rotation() {
    let mock = MockProvider::start().await;
    for k in [A, B] {
        mock.on_key(k, anthropic_429());
    }
    let kg = keygate(
        &mock,
        "[rotation]\nmax_attempts = 2\n",
        "ANTHROPIC",
        &[A, B, C],
    )
    .await;
    let a = post_messages(&kg, GW, "m").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.header("x-keygate-attempts"), Some("2"));
    assert_eq!(mock.requests_for_key(C), 0);
}
