//! Issue 10, "secrets that still get out" and "streams and answers": what keygate passes on
//! from a broken or careless upstream. Real keygate, real mock upstreams on 127.0.0.1.
//!
//! - a token endpoint that echoes the refresh token: not in the 401, not in the log (SPEC §8);
//! - an upstream error answer that echoes the injected key, in the body and in headers:
//!   redacted to `…` + last 4 (SPEC §8), with a correct `content-length`;
//! - a 200 stream that breaks before its first content event: rotated, or 502 (SPEC §7);
//! - a `101` from the upstream: 502;
//! - a `204`/`304` with the upstream's `content-length`: dropped, keep-alive stays in sync.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::gateway::{anthropic_oauth_at, GW};
use support::keygate::{
    client, post_json, post_messages, read_stream, request, stream_messages, text_of, Keygate, Opts,
};
use support::logs::Capture;
use support::mock::{anthropic_sse, Behaviour, End, MockProvider};
use support::now_ms;
use support::raw::{content_length, RawUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------
// Log capture: one global subscriber for the whole test binary (keygate logs from its own
// tasks on every worker thread).
// ---------------------------------------------------------------------------------------

fn logs() -> &'static Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(Capture::install)
}

fn log_text() -> String {
    logs().text()
}

// ---------------------------------------------------------------------------------------
// 8. OAuth token endpoint errors
// ---------------------------------------------------------------------------------------

const REFRESH: &str = "rt-hardening-refresh-token-5555";
const OLD_ACCESS: &str = "at-hardening-old-access-token-4444";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_error_echoing_the_refresh_token_reaches_neither_client_nor_log() {
    logs();
    let api = MockProvider::start().await;
    let token = MockProvider::start().await;
    // The refresh token in `error` itself (the code keygate shows), URL-encoded in the
    // description, and a very long code: none of it may come back whole.
    token.set_default(Behaviour::status(
        400,
        json!({
            "error": format!("invalid_grant: refresh token {REFRESH} was revoked {}", "x".repeat(5000)),
            "error_description": format!("token={} access={OLD_ACCESS}", REFRESH.replace('-', "%2D")),
        })
        .to_string(),
    ));
    let profiles = json!({"version": 1, "profiles": {
        "anthropic:oauth": {"type": "oauth", "provider": "anthropic", "access": OLD_ACCESS,
                             "refresh": REFRESH, "expires": now_ms() - 60_000}
    }})
    .to_string();
    let kg = Keygate::start(
        Opts::gateway(&api.url(), &["anthropic"])
            .more_config(&anthropic_oauth_at(&token.url()))
            .profiles(&profiles),
    )
    .await;
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text());
    assert_eq!(token.requests().len(), 1, "the refresh was attempted");
    let answer = a.text();
    assert!(
        answer.contains("OAuth token refresh failed for anthropic"),
        "{answer}"
    );
    assert!(answer.len() < 1024, "bounded error text: {answer}");
    let log = log_text();
    assert!(
        log.contains("oauth refresh failed"),
        "the WARN line is logged"
    );
    for secret in [REFRESH, OLD_ACCESS, "rt%2Dhardening"] {
        assert!(!answer.contains(secret), "{secret} in the answer: {answer}");
        assert!(!log.contains(secret), "{secret} in the log");
    }
    assert!(
        !log.contains(&"x".repeat(600)),
        "unbounded error text in the log"
    );
    assert!(api.requests().is_empty());
}

// ---------------------------------------------------------------------------------------
// 9. Upstream error answers that echo the injected key
// ---------------------------------------------------------------------------------------

const ECHO_KEY: &str = "sk-ant-api03-echo-this-key-0123456789-WXYZ";

async fn echo_gateway(mock: &MockProvider, server: &str) -> Keygate {
    Keygate::start(
        Opts::gateway(&mock.url(), &["anthropic"])
            .more_config(&format!("[server]\n{server}\n"))
            .env("ANTHROPIC_API_KEY", ECHO_KEY),
    )
    .await
}

fn assert_no_key_in_headers(headers: &http::HeaderMap) {
    for (name, v) in headers {
        assert!(
            !v.as_bytes()
                .windows(ECHO_KEY.len())
                .any(|w| w == ECHO_KEY.as_bytes()),
            "key in header {name}"
        );
    }
}

#[tokio::test]
async fn an_error_answer_echoing_the_key_is_redacted_in_body_and_headers() {
    logs();
    let mock = MockProvider::start().await;
    let body = json!({"type": "error", "error": {"type": "authentication_error",
        "message": format!("invalid x-api-key: {ECHO_KEY} (you sent {ECHO_KEY})")}})
    .to_string();
    let realm = format!("Bearer realm=\"{ECHO_KEY}\"");
    mock.set_default(Behaviour::status_with(
        401,
        &[
            ("x-echo-key", ECHO_KEY),
            ("www-authenticate", realm.as_str()),
        ],
        body,
    ));
    let kg = echo_gateway(&mock, "").await;
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(mock.keys(), vec![Some(ECHO_KEY.to_owned())]);
    let text = a.text();
    assert!(!text.contains(ECHO_KEY), "key in the body: {text}");
    assert_eq!(text.matches("…WXYZ").count(), 2, "{text}");
    assert_eq!(
        a.json()["error"]["type"],
        "authentication_error",
        "still the provider's JSON"
    );
    assert_no_key_in_headers(&a.headers);
    assert_eq!(
        a.headers.get("x-echo-key").map(|v| v.as_bytes()),
        Some("…WXYZ".as_bytes())
    );
    assert_eq!(
        a.headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some("Bearer realm=\"…WXYZ\"".as_bytes())
    );
    if let Some(len) = a.header("content-length") {
        assert_eq!(len, a.body.len().to_string(), "content-length fixed");
    }
    assert!(!log_text().contains(ECHO_KEY), "key in the log");
}

#[tokio::test]
async fn an_error_body_longer_than_max_error_body_is_redacted_to_its_end() {
    let mock = MockProvider::start().await;
    let pad = "p".repeat(1500);
    let body = format!(
        "{{\"error\":{{\"type\":\"api_error\",\"message\":\"{ECHO_KEY}{pad}{ECHO_KEY}{pad}{ECHO_KEY}\"}}}}"
    );
    mock.set_default(Behaviour::status(500, body.clone()));
    let kg = echo_gateway(&mock, "max_error_body = \"1KiB\"").await;
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let text = a.text();
    assert!(!text.contains(ECHO_KEY), "key in the body");
    assert_eq!(text.matches("…WXYZ").count(), 3);
    assert_eq!(
        text.len(),
        body.len() - 3 * (ECHO_KEY.len() - "…WXYZ".len())
    );
    if let Some(len) = a.header("content-length") {
        assert_eq!(len, a.body.len().to_string(), "content-length fixed");
    }
}

#[tokio::test]
async fn an_error_event_before_commit_echoing_the_key_is_redacted() {
    let mock = MockProvider::start().await;
    let mut events = anthropic_sse("claude-sonnet-4-5", 1);
    events.truncate(1);
    events.push(format!(
        "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded for {ECHO_KEY}\"}}}}\n\n"
    ));
    mock.set_default(Behaviour::sse(events));
    let kg = echo_gateway(&mock, "").await;
    let a = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW)],
        &json!({"model": "claude-sonnet-4-5", "stream": true}),
    )
    .await;
    let text = a.text();
    assert!(text.contains("overloaded_error"), "{text}");
    assert!(!text.contains(ECHO_KEY), "key in the stream: {text}");
    assert!(text.contains("Overloaded for …WXYZ"), "{text}");
    assert_no_key_in_headers(&a.headers);
}

// ---------------------------------------------------------------------------------------
// 12. A 200 stream that breaks before its first content event
// ---------------------------------------------------------------------------------------

fn broken_after_message_start() -> Behaviour {
    Behaviour::Sse {
        events: anthropic_sse("claude-sonnet-4-5", 3)
            .into_iter()
            .take(1)
            .collect(),
        delay: Duration::ZERO,
        end: End::Reset,
    }
}

#[tokio::test]
async fn a_stream_broken_before_its_first_content_event_rotates_to_the_next_key() {
    let mock = MockProvider::start().await;
    mock.on_key(
        "sk-ant-api03-broken-stream-key-1",
        broken_after_message_start(),
    );
    let kg = Keygate::start(Opts::gateway(&mock.url(), &["anthropic"]).env(
        "ANTHROPIC_API_KEYS",
        "sk-ant-api03-broken-stream-key-1,sk-ant-api03-working-stream-key-2",
    ))
    .await;
    let resp = stream_messages(&kg, GW).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("x-keygate-attempts")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    let (chunks, errored) = read_stream(resp, Duration::from_secs(20)).await;
    let text = text_of(&chunks);
    assert!(!errored, "the second key's stream is complete: {text}");
    assert_eq!(
        text.matches("message_start").count(),
        2,
        "one message: {text}"
    );
    assert!(text.contains("message_stop"), "{text}");
    assert!(!text.contains("event: error"), "{text}");
    assert_eq!(
        mock.keys(),
        vec![
            Some("sk-ant-api03-broken-stream-key-1".to_owned()),
            Some("sk-ant-api03-working-stream-key-2".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_stream_broken_before_its_first_content_event_with_no_key_left_is_502() {
    let mock = MockProvider::start().await;
    mock.set_default(broken_after_message_start());
    let kg = Keygate::start(
        Opts::gateway(&mock.url(), &["anthropic"])
            .env("ANTHROPIC_API_KEY", "sk-ant-api03-only-broken-key-1"),
    )
    .await;
    let a = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW)],
        &json!({"model": "claude-sonnet-4-5", "stream": true}),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert_eq!(a.json()["type"], "error", "{}", a.text());
    assert_eq!(a.header("x-keygate-attempts"), Some("1"));
    assert!(!a.text().contains("message_start"));
}

#[tokio::test]
async fn an_error_body_that_breaks_is_not_passed_on_as_complete() {
    let partial = format!(
        "{{\"error\":{{\"type\":\"invalid_request_error\",\"message\":\"{ECHO_KEY} and more"
    );
    let raw = RawUpstream::start_closing(vec![format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{partial}"
    )
    .into_bytes()])
    .await;
    let kg = Keygate::start(
        Opts::gateway(&raw.url(), &["anthropic"]).env("ANTHROPIC_API_KEY", ECHO_KEY),
    )
    .await;
    let req = request(
        Method::POST,
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW), ("content-type", "application/json")],
        Bytes::from(json!({"model": "claude-sonnet-4-5"}).to_string()),
    );
    let resp = client().request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_no_key_in_headers(resp.headers());
    let (chunks, errored) = read_stream(resp, Duration::from_secs(20)).await;
    let text = text_of(&chunks);
    assert!(errored, "a broken error body must not end cleanly: {text}");
    assert!(!text.contains(ECHO_KEY), "{text}");
}

// ---------------------------------------------------------------------------------------
// 13. 101 Switching Protocols
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_101_is_answered_with_502() {
    let raw = RawUpstream::start(vec![
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
            .to_vec(),
    ])
    .await;
    let kg = Keygate::start(
        Opts::gateway(&raw.url(), &["anthropic"])
            .env("ANTHROPIC_API_KEY", "sk-ant-api03-upgrade-key-0001"),
    )
    .await;
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert_eq!(a.json()["error"]["type"], "api_error");
    assert!(a.header("upgrade").is_none());
    assert_eq!(raw.requests(), 1);
}

// ---------------------------------------------------------------------------------------
// 14. 204 / 304 with the upstream's content-length
// ---------------------------------------------------------------------------------------

/// One answer read off a keep-alive connection the way a simple client does: the head, then
/// `content-length` bytes of body (bounded waits: a desynchronised connection fails here).
async fn read_answer(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let head = read_head(s, buf).await;
    let len = content_length(head.as_bytes());
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("the announced body within 10 s (keep-alive out of sync)")
            .expect("read");
        assert!(n > 0, "connection closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..len).collect();
    (head, body)
}

/// An answer head off a keep-alive connection (bounded wait); `buf` keeps what follows.
async fn read_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> String {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer head within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed before an answer head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    head
}

async fn bodiless_then_ok(first: &str) {
    let raw = RawUpstream::start(vec![
        first.as_bytes().to_vec(),
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"
            .to_vec(),
    ])
    .await;
    let kg = Keygate::start(
        Opts::gateway(&raw.url(), &["anthropic"])
            .env("ANTHROPIC_API_KEY", "sk-ant-api03-no-content-key-0001"),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(kg.addr)
        .await
        .expect("connect");
    let body = r#"{"model":"claude-sonnet-4-5"}"#;
    let req = format!(
        "POST /anthropic/v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {GW}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = Vec::new();
    s.write_all(req.as_bytes()).await.expect("write 1");
    let (head, first_body) = read_answer(&mut s, &mut buf).await;
    let status = first.split(' ').nth(1).expect("status");
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "first answer: {head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("content-length: 5"),
        "the upstream's content-length is dropped: {head}"
    );
    assert!(!lower.contains("transfer-encoding"), "{head}");
    assert!(first_body.is_empty());
    s.write_all(req.as_bytes()).await.expect("write 2");
    let (head, second_body) = read_answer(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "second answer: {head}");
    assert_eq!(second_body, b"{\"ok\":true}");
    assert!(buf.is_empty(), "nothing left over on the connection");
    assert_eq!(raw.requests(), 2);
}

#[tokio::test]
async fn a_204_with_content_length_keeps_keep_alive_in_sync() {
    bodiless_then_ok("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").await;
}

#[tokio::test]
async fn a_304_with_content_length_keeps_keep_alive_in_sync() {
    bodiless_then_ok("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\netag: \"x\"\r\n\r\n").await;
}

#[tokio::test]
async fn a_head_answer_keeps_its_content_length_and_sends_no_body() {
    let raw = RawUpstream::start(vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"
            .to_vec(),
    ])
    .await;
    let kg = Keygate::start(
        Opts::gateway(&raw.url(), &["openai"]).env("OPENAI_API_KEY", "sk-openai-head-key-0001"),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(kg.addr)
        .await
        .expect("connect");
    let head_req = format!(
        "HEAD /openai/v1/models HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {GW}\r\n\r\n"
    );
    let get_req = format!(
        "GET /openai/v1/models HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {GW}\r\n\r\n"
    );
    s.write_all(head_req.as_bytes()).await.expect("write 1");
    s.write_all(get_req.as_bytes()).await.expect("write 2");
    // Both answers, back to back: the HEAD one has a length and no body.
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 5"),
        "{head}"
    );
    let (head, body) = read_answer(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, b"{\"ok\":true}");
}
