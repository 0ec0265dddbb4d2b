//! In-flight caps (SPEC §11) and the proxy's own failures (SPEC §11) against the mock
//! provider: `max_in_flight` under concurrency, the slot released on every end of a request,
//! the wait for a slot and its 429, and keygate's own failures never marking a credential.

mod support;

use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::gateway::GW;
use support::keygate::{post_messages, read_stream, send, stream_messages, Keygate, Opts};
use support::mock::{anthropic_sse, Behaviour, End, MockProvider};

const A: &str = "sk-test-key-A-0000000001";
const B: &str = "sk-test-key-B-0000000002";
const ID_A: &str = "env:ANTHROPIC_API_KEYS#1";
const ADMIN: &str = "admin-in-flight-token";

/// keygate over the mock for anthropic with `keys`, `provider` extra lines in
/// `[providers.anthropic]` and `rest` after it (other tables).
async fn keygate(mock: &MockProvider, keys: &[&str], provider: &str, rest: &str) -> Keygate {
    let config = format!(
        "[providers.anthropic]\nbase_url = \"{}\"\n{provider}\n{rest}\n",
        mock.url()
    );
    Keygate::start(
        Opts::default()
            .config(config)
            .env("KEYGATE_TOKEN", GW)
            .env("KEYGATE_ADMIN_TOKEN", ADMIN)
            .env("ANTHROPIC_API_KEYS", &keys.join(",")),
    )
    .await
}

async fn status(kg: &Keygate) -> serde_json::Value {
    let s = send(
        Method::GET,
        &kg.url("/_keygate/status"),
        &[("authorization", &format!("Bearer {ADMIN}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text());
    s.json()
}

/// The credential is not cooling, and the next request is served by it.
async fn still_usable(kg: &Keygate, mock: &MockProvider, case: &str) {
    let s = status(kg).await;
    let cooling = s["cooldowns"].as_array().cloned().unwrap_or_default();
    assert!(
        cooling.is_empty(),
        "{case}: no cooldown opened: {cooling:?}"
    );
    mock.set_default(Behaviour::Normal);
    let a = post_messages(kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::OK, "{case}: {}", a.text());
    assert_eq!(a.header("x-keygate-credential"), Some(ID_A), "{case}");
    let m = send(Method::GET, &kg.url("/metrics"), &[], Bytes::new())
        .await
        .text();
    for line in m.lines().filter(|l| {
        l.starts_with("keygate_upstream_attempts_total") && l.contains(&format!("\"{ID_A}\""))
    }) {
        assert!(
            line.contains("outcome=\"success\"") || line.ends_with(" 0"),
            "{case}: only successes counted: {line}"
        );
    }
}

#[tokio::test]
async fn twenty_concurrent_slow_requests_never_exceed_the_cap_per_key() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::delayed(
        Duration::from_millis(150),
        Behaviour::Normal,
    ));
    let kg = keygate(
        &mock,
        &[A, B],
        "max_in_flight = 2",
        "[rotation]\nmax_wait = \"20s\"",
    )
    .await;
    let url = kg.url("/anthropic/v1/messages");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                support::keygate::post_json(
                    &url,
                    &[("x-api-key", GW)],
                    &serde_json::json!({"model": "claude-sonnet-4-5"}),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        let a = t.await.expect("task");
        assert_eq!(
            a.status,
            StatusCode::OK,
            "every request answered: {}",
            a.text()
        );
    }
    assert_eq!(mock.requests().len(), 20, "one upstream request each");
    for key in [A, B] {
        let peak = mock.peak_in_flight_for_key(key);
        assert!(peak <= 2, "never more than 2 in flight per key, saw {peak}");
        assert_eq!(peak, 2, "the cap is used, not undercut");
    }
    assert_eq!(mock.in_flight(), 0);
}

#[tokio::test]
async fn a_slot_is_freed_after_success_error_disconnect_stream_end_and_abort() {
    let mock = MockProvider::start().await;
    // Cap 1 and no wait: a slot still held makes the next request a 429 at once.
    let kg = keygate(&mock, &[A], "max_in_flight = 1", "").await;
    let ok = |case: &'static str| {
        let kg = &kg;
        async move {
            let a = post_messages(kg, GW, "claude-sonnet-4-5").await;
            assert_eq!(
                a.status,
                StatusCode::OK,
                "slot free after {case}: {}",
                a.text()
            );
        }
    };
    // Success.
    for _ in 0..3 {
        ok("success").await;
    }
    // An upstream error (not a rate limit: goes back as sent).
    mock.set_default(Behaviour::status(
        400,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
    ));
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    mock.set_default(Behaviour::Normal);
    ok("an upstream error").await;
    // A stream read to its end.
    mock.set_default(Behaviour::sse(anthropic_sse("claude-sonnet-4-5", 3)));
    let (_, broke) = read_stream(stream_messages(&kg, GW).await, Duration::from_secs(10)).await;
    assert!(!broke);
    mock.set_default(Behaviour::Normal);
    ok("a stream end").await;
    // A stream the upstream aborts mid-way.
    mock.set_default(Behaviour::Sse {
        events: anthropic_sse("claude-sonnet-4-5", 3),
        delay: Duration::ZERO,
        end: End::Reset,
    });
    let (_, broke) = read_stream(stream_messages(&kg, GW).await, Duration::from_secs(10)).await;
    assert!(broke, "the client sees the abort");
    mock.set_default(Behaviour::Normal);
    ok("an upstream abort").await;
    // A client that goes away mid-stream.
    mock.set_default(Behaviour::Sse {
        events: anthropic_sse("claude-sonnet-4-5", 3),
        delay: Duration::from_millis(20),
        end: End::Hang,
    });
    let resp = stream_messages(&kg, GW).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let _ = http_body_util::BodyExt::frame(&mut body).await;
    // While it runs, the key is at its cap.
    mock.set_default(Behaviour::Normal);
    let busy = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(
        busy.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        busy.text()
    );
    assert_eq!(busy.header("retry-after"), Some("1"));
    drop(body);
    assert!(
        mock.wait_disconnects(1, Duration::from_secs(5)).await,
        "keygate dropped the upstream stream"
    );
    ok("a client disconnect mid-stream").await;
    assert_eq!(mock.in_flight(), 0);
}

#[tokio::test]
async fn all_at_their_cap_wait_up_to_max_wait_then_get_429_retry_after_1() {
    let mock = MockProvider::start().await;
    mock.on_key(A, Behaviour::Hang);
    let kg = keygate(
        &mock,
        &[A],
        "max_in_flight = 1",
        "[rotation]\nmax_wait = \"400ms\"",
    )
    .await;
    let url = kg.url("/anthropic/v1/messages");
    let busy = tokio::spawn(async move {
        support::keygate::post_json(
            &url,
            &[("x-api-key", GW)],
            &serde_json::json!({"model": "claude-sonnet-4-5"}),
        )
        .await
    });
    assert!(mock.wait_requests(1, Duration::from_secs(5)).await);
    let started = Instant::now();
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    let waited = started.elapsed();
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text());
    assert_eq!(a.header("retry-after"), Some("1"));
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    assert_eq!(
        mock.requests().len(),
        1,
        "the waiting request never reached the mock"
    );
    // A slot that frees up during the wait serves the waiting request.
    mock.clear_rules();
    mock.set_default(Behaviour::delayed(
        Duration::from_millis(200),
        Behaviour::Normal,
    ));
    busy.abort();
    assert!(mock.wait_disconnects(1, Duration::from_secs(5)).await);
    let kg2 = keygate(
        &mock,
        &[A],
        "max_in_flight = 1",
        "[rotation]\nmax_wait = \"5s\"",
    )
    .await;
    let first = {
        let url = kg2.url("/anthropic/v1/messages");
        tokio::spawn(async move {
            support::keygate::post_json(
                &url,
                &[("x-api-key", GW)],
                &serde_json::json!({"model": "claude-sonnet-4-5"}),
            )
            .await
        })
    };
    assert!(mock.wait_in_flight(1, Duration::from_secs(5)).await);
    let second = post_messages(&kg2, GW, "claude-sonnet-4-5").await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(first.await.expect("task").status, StatusCode::OK);
    assert_eq!(mock.peak_in_flight_for_key(A), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_never_marks_the_credential() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Hang);
    let kg = keygate(&mock, &[A, B], "max_in_flight = 1", "").await;
    let url = kg.url("/anthropic/v1/messages");
    let gone = tokio::spawn(async move {
        support::keygate::post_json(
            &url,
            &[("x-api-key", GW)],
            &serde_json::json!({"model": "claude-sonnet-4-5"}),
        )
        .await
    });
    assert!(mock.wait_requests(1, Duration::from_secs(5)).await);
    gone.abort();
    assert!(mock.wait_disconnects(1, Duration::from_secs(5)).await);
    still_usable(&kg, &mock, "client gone before the answer").await;
}

#[tokio::test]
async fn waiting_for_a_slot_in_vain_never_marks_the_credential() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Hang);
    let kg = keygate(
        &mock,
        &[A, B],
        "max_in_flight = 1",
        "[rotation]\nmax_wait = \"200ms\"",
    )
    .await;
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let url = kg.url("/anthropic/v1/messages");
            tokio::spawn(async move {
                support::keygate::post_json(
                    &url,
                    &[("x-api-key", GW)],
                    &serde_json::json!({"model": "claude-sonnet-4-5"}),
                )
                .await
            })
        })
        .collect();
    assert!(mock.wait_requests(2, Duration::from_secs(5)).await);
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text());
    assert_eq!(a.header("retry-after"), Some("1"));
    busy.iter().for_each(|t| t.abort());
    assert!(mock.wait_disconnects(2, Duration::from_secs(5)).await);
    still_usable(&kg, &mock, "a wait for a slot that timed out").await;
}

#[tokio::test]
async fn a_body_over_the_limit_never_marks_the_credential() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, &[A, B], "", "[server]\nmax_request_body = \"1KiB\"").await;
    let big = serde_json::json!({"model": "claude-sonnet-4-5", "pad": "x".repeat(4096)});
    let a = support::keygate::post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW)],
        &big,
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text());
    assert!(mock.requests().is_empty());
    still_usable(&kg, &mock, "a body over the limit").await;
}

#[tokio::test]
async fn keygates_own_deadline_never_marks_the_credential() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Hang);
    let kg = keygate(
        &mock,
        &[A, B],
        "",
        "[server]\nrequest_timeout = \"300ms\"\n[rotation]\nrotate_on = [\"rate_limit\", \"billing\", \"timeout\"]",
    )
    .await;
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.text());
    assert_eq!(
        mock.requests().len(),
        1,
        "no rotation after keygate's own deadline"
    );
    still_usable(&kg, &mock, "keygate's own request deadline").await;
}

#[tokio::test]
async fn a_failed_answer_kept_for_later_frees_its_slot_while_the_next_key_works() {
    // A answers 500 at once (rotated on here); B is slow. While the first request waits for
    // B, A is free again: a second request is served by A (its 500 comes back after B is
    // found busy), not refused as if every key were at its cap.
    let mock = MockProvider::start().await;
    mock.on_key(
        A,
        Behaviour::status(
            500,
            r#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
        ),
    );
    mock.on_key(
        B,
        Behaviour::delayed(Duration::from_millis(800), Behaviour::Normal),
    );
    let kg = keygate(
        &mock,
        &[A, B],
        "max_in_flight = 1",
        "[rotation]\nrotate_on = [\"rate_limit\", \"billing\", \"unknown\"]\n",
    )
    .await;
    let first = tokio::spawn({
        let url = kg.url("/anthropic/v1/messages");
        async move {
            send(
                Method::POST,
                &url,
                &[("x-api-key", GW), ("content-type", "application/json")],
                Bytes::from_static(br#"{"model":"claude-sonnet-4-5","max_tokens":8}"#),
            )
            .await
        }
    });
    assert!(
        mock.wait_in_flight(1, Duration::from_secs(5)).await,
        "the first request reached B"
    );
    let second = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(second.status.as_u16(), 500, "{}", second.text());
    assert_eq!(second.header("x-keygate-credential"), Some(ID_A));
    let first = first.await.expect("first request");
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
}
