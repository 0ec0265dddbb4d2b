//! Streaming end to end: SSE events pass through as they arrive, an upstream that breaks
//! mid-stream or a stream past the request timeout ends with an error event and a body
//! error, and a client that goes away cancels the upstream request.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::gateway::{standard, with_server, GW};
use support::keygate::{client, post_messages, read_stream, request, stream_messages, text_of};
use support::mock::{anthropic_sse, Behaviour, End, MockProvider};

#[tokio::test]
async fn sse_events_arrive_incrementally() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Sse {
        events: anthropic_sse("claude-sonnet-4-5", 0)
            .into_iter()
            .take(5)
            .collect(),
        delay: Duration::from_millis(200),
        end: End::Clean,
    });
    let kg = standard(&mock).await;
    let req = request(
        Method::POST,
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW), ("content-type", "application/json")],
        Bytes::from(
            json!({"model": "claude-sonnet-4-5", "stream": true, "max_tokens": 5}).to_string(),
        ),
    );
    let resp = client().request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let (chunks, errored) = read_stream(resp, Duration::from_secs(20)).await;
    assert!(!errored, "stream ended with an error");
    assert!(
        chunks.len() >= 5,
        "events were coalesced: {} chunks",
        chunks.len()
    );
    let first = chunks.first().expect("first");
    let last = chunks.last().expect("last");
    assert!(std::str::from_utf8(&first.1)
        .expect("utf8")
        .contains("message_start"));
    assert!(!std::str::from_utf8(&first.1)
        .expect("utf8")
        .contains("content_block_stop"));
    // The upstream spaced 5 events 200 ms apart: a proxy that buffered would deliver them
    // together; one that streams preserves the spacing (at least 4 × 200 ms, minus slack).
    assert!(
        last.0 - first.0 >= Duration::from_millis(600),
        "first and last event arrived {:?} apart",
        last.0 - first.0
    );
}

#[tokio::test]
async fn upstream_reset_mid_stream_ends_client_stream_with_error() {
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    mock.set_default(Behaviour::Sequence(vec![
        Behaviour::Sse {
            events: anthropic_sse("claude-sonnet-4-5", 3)
                .into_iter()
                .take(4)
                .collect(),
            delay: Duration::ZERO,
            end: End::Reset,
        },
        Behaviour::Normal,
    ]));
    let resp = stream_messages(&kg, GW).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (chunks, errored) = read_stream(resp, Duration::from_secs(20)).await;
    let text = text_of(&chunks);
    assert!(errored, "a broken upstream must not look like a clean end");
    assert!(
        text.contains("event: error"),
        "protocol error event expected: {text}"
    );
    assert!(!text.contains("message_stop"));

    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::OK, "next request succeeds");
}

#[tokio::test]
async fn a_stream_past_request_timeout_ends_with_an_error_event_and_a_body_error() {
    let mock = MockProvider::start().await;
    // 30 events 100 ms apart: 3 s of stream against a 1 s request timeout.
    mock.set_default(Behaviour::Sse {
        events: anthropic_sse("claude-sonnet-4-5", 30),
        delay: Duration::from_millis(100),
        end: End::Clean,
    });
    let kg = with_server(&mock, "request_timeout = \"1s\"").await;
    let resp = stream_messages(&kg, GW).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (chunks, errored) = read_stream(resp, Duration::from_secs(20)).await;
    assert!(errored, "the body must fail, not end cleanly");
    let text = text_of(&chunks);
    assert!(
        text.contains("message_start"),
        "content before the deadline: {text}"
    );
    assert!(
        !text.contains("message_stop"),
        "the stream was cut before its end: {text}"
    );
    assert!(
        text.trim_end().ends_with("}") && text.contains("event: error"),
        "ends with an error event: {text}"
    );
}

#[tokio::test]
async fn client_disconnect_mid_stream_closes_upstream() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Sse {
        events: anthropic_sse("claude-sonnet-4-5", 2)
            .into_iter()
            .take(3)
            .collect(),
        delay: Duration::from_millis(20),
        end: End::Hang,
    });
    let kg = standard(&mock).await;
    let resp = stream_messages(&kg, GW).await;
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("a frame");
    assert!(first.is_some());
    drop(body);
    assert!(
        mock.wait_disconnects(1, Duration::from_secs(10)).await,
        "the mock never saw the connection close"
    );
}

#[tokio::test]
async fn client_gone_before_the_answer_cancels_the_upstream_request() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Hang);
    let kg = standard(&mock).await;
    let req = request(
        Method::POST,
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW), ("content-type", "application/json")],
        Bytes::from(json!({"model": "claude-sonnet-4-5"}).to_string()),
    );
    let pending = tokio::spawn(async move { client().request(req).await });
    assert!(
        mock.wait_requests(1, Duration::from_secs(10)).await,
        "request reached the mock"
    );
    pending.abort();
    assert!(
        mock.wait_disconnects(1, Duration::from_secs(10)).await,
        "the upstream request outlived its client"
    );
}
