//! The server around the proxy, end to end: health and readiness, h2c, the request head
//! limit, a first segment that could be HTTP/1.1 or HTTP/2, the request and first-byte
//! timeouts (408, 504), and graceful shutdown.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::gateway::{standard, with_server, ALL, ANT_KEY, GW, OAI_KEY};
use support::keygate::{
    post_json, read_stream, request, send, stream_messages, text_of, Keygate, Opts,
};
use support::mock::{anthropic_sse, Behaviour, End, MockProvider};
use support::raw::{connect_and_send_p, read_to_close, FirstByteSent};

#[tokio::test]
async fn health_and_readiness() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(
        Opts::gateway(&mock.url(), ALL)
            .env("ANTHROPIC_API_KEY", ANT_KEY)
            .env("OPENAI_API_KEY", OAI_KEY),
    )
    .await;
    let a = send(Method::GET, &kg.url("/healthz"), &[], Bytes::new()).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = send(Method::GET, &kg.url("/readyz"), &[], Bytes::new()).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.text().contains("google"), "{}", a.text());
    let a = send(Method::GET, &kg.url("/_keygate/status"), &[], Bytes::new()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "no admin token configured");
    assert!(
        mock.requests().is_empty(),
        "reserved paths are never forwarded"
    );
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    let c: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = request(
        Method::POST,
        &kg.url("/openai/v1/chat/completions"),
        &[
            ("authorization", &format!("Bearer {GW}")),
            ("content-type", "application/json"),
        ],
        Bytes::from(json!({"model": "gpt-4o-mini"}).to_string()),
    );
    let resp = c.request(req).await.expect("h2 response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn oversized_request_head_gets_431_and_the_proxy_keeps_serving() {
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    let url = kg.url("/openai/v1/chat/completions");
    let body = Bytes::from(json!({"model": "gpt-4o-mini"}).to_string());
    let auth = format!("Bearer {GW}");
    // 12 KiB of headers is well inside the 16 KiB head limit.
    let fits = "a".repeat(12 * 1024);
    let a = send(
        Method::POST,
        &url,
        &[("authorization", &auth), ("x-padding", &fits)],
        body.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let too_big = "a".repeat(20 * 1024);
    let a = send(
        Method::POST,
        &url,
        &[("authorization", &auth), ("x-padding", &too_big)],
        body.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        mock.requests().len(),
        1,
        "the oversized request was not sent"
    );
    let a = send(Method::POST, &url, &[("authorization", &auth)], body).await;
    assert_eq!(a.status, StatusCode::OK, "still serving after a 431");
}

#[tokio::test]
async fn an_http2_preface_split_after_its_first_byte_is_served_as_http2() {
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    let s = connect_and_send_p(&kg).await;
    let io = hyper_util::rt::TokioIo::new(FirstByteSent {
        inner: s,
        skipped: false,
    });
    let (mut send, conn) = tokio::time::timeout(
        Duration::from_secs(10),
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            io,
        ),
    )
    .await
    .expect("handshake in time")
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(kg.url("/healthz"))
        .body(http_body_util::Empty::new())
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answer in time")
        .expect("HTTP/2 answer");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_request_line_split_across_segments_is_served_as_http1() {
    use tokio::io::AsyncWriteExt;
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    let mut s = connect_and_send_p(&kg).await;
    s.write_all(
        b"OST /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    )
    .await
    .expect("write");
    let text = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""status":"ok""#), "{text}");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_silent_connection() {
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    // Connected, nothing sent: no request to finish, so the drain must not wait for it
    // (the header timeout and the shutdown grace are both 30 s; `stop` gives up after 10).
    let _silent = tokio::net::TcpStream::connect(kg.addr)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = tokio::time::Instant::now();
    kg.stop().await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for a silent connection",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_at_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockProvider::start().await;
    let kg = with_server(&mock, "request_timeout = \"1s\"").await;
    let mut s = tokio::net::TcpStream::connect(kg.addr)
        .await
        .expect("connect");
    // 100 bytes announced, 20 sent, then silence.
    let head = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {GW}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":\"gpt-4o\","
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut out))
        .await
        .expect("an answer before the client gives up")
        .expect("read");
    let text = String::from_utf8_lossy(&out[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON error body");
    assert_eq!(
        json["error"]["message"], "the request body did not arrive in time",
        "{text}"
    );
    assert!(mock.requests().is_empty(), "nothing was sent upstream");
}

#[tokio::test]
async fn upstream_that_never_answers_gets_504() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Hang);
    let kg = Keygate::start(
        Opts::gateway(&mock.url(), ALL)
            .more_config("[server]\nfirst_byte_timeout = \"300ms\"\n")
            .env("OPENAI_API_KEY", OAI_KEY),
    )
    .await;
    let a = post_json(
        &kg.url("/openai/v1/chat/completions"),
        &[("x-api-key", GW)],
        &json!({"model": "gpt-4o-mini"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a.header("x-keygate-attempts"), Some("1"));
    assert_eq!(a.header("x-keygate-credential"), Some("env:OPENAI_API_KEY"));
    assert!(a.json()["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("did not answer"));
    assert!(
        mock.wait_disconnects(1, Duration::from_secs(10)).await,
        "upstream request cancelled"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Sse {
        events: anthropic_sse("claude-sonnet-4-5", 3),
        delay: Duration::from_millis(100),
        end: End::Clean,
    });
    let kg = standard(&mock).await;
    let addr = kg.addr;
    let resp = stream_messages(&kg, GW).await;
    let stop = tokio::spawn(kg.stop());
    let (chunks, errored) = read_stream(resp, Duration::from_secs(20)).await;
    let text = text_of(&chunks);
    assert!(
        !errored && text.contains("message_stop"),
        "stream cut by shutdown: {text}"
    );
    stop.await.expect("stopped");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// Issue 10 item 1: a connection stuck inside the HTTP/2 preface has no request to finish;
/// it must not reach hyper's untimed h2 handshake, and shutdown closes it instead of
/// waiting the whole `shutdown_grace` for it.
#[tokio::test]
async fn a_connection_stuck_in_the_http2_preface_is_closed_at_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockProvider::start().await;
    let kg = with_server(&mock, "shutdown_grace = \"1h\"").await;
    let mut s = tokio::net::TcpStream::connect(kg.addr)
        .await
        .expect("connect");
    s.write_all(b"PRI * HT").await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stop = tokio::spawn(kg.stop());
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    // Closed (EOF, or a reset for the unread bytes), not left open.
    assert!(closed.is_ok(), "the server did not close the connection");
    tokio::time::timeout(Duration::from_secs(20), stop)
        .await
        .expect("shutdown drained")
        .expect("join");
}
