//! The bound on request bodies buffered at once, over every request (issue 10, item 3).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::json;
use support::gateway::GW;
use support::keygate::{post_json, providers_at, Answer, Keygate, Opts};
use support::mock::{Behaviour, MockProvider};
use tokio::task::JoinHandle;

/// A messages request whose JSON body is about `kib` KiB.
fn big_request(kib: usize) -> serde_json::Value {
    json!({"model": "claude", "max_tokens": 1, "messages": [{"role": "user", "content": "x".repeat(kib * 1024)}]})
}

async fn start(mock: &MockProvider) -> Keygate {
    Keygate::start(
        Opts::default()
            .config(format!(
                "[server]\nmax_request_body = \"1MiB\"\nmax_buffered_bodies = \"1MiB\"\n\n[gateway.auth]\nmode = \"token\"\ntokens = [{{ token_env = \"KG\", agent = \"main\" }}]\n\n{}",
                providers_at(&mock.url(), &["anthropic"])
            ))
            .env("KG", GW)
            .env("ANTHROPIC_API_KEY", "sk-ant-api03-bodies-0001"),
    )
    .await
}

/// A keygate with a 1 MiB body budget before an upstream that answers after 1.5 s, and one
/// 700 KiB request in flight (its body held): the mock, the keygate, the messages URL and
/// the first request's task.
async fn one_body_held() -> (MockProvider, Keygate, String, JoinHandle<Answer>) {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::delayed(
        Duration::from_millis(1500),
        Behaviour::status(200, r#"{"type":"message"}"#),
    ));
    let kg = start(&mock).await;
    let url = kg.url("/anthropic/v1/messages");
    let first = {
        let url = url.clone();
        tokio::spawn(async move { post_json(&url, &[("x-api-key", GW)], &big_request(700)).await })
    };
    assert!(mock.wait_in_flight(1, Duration::from_secs(10)).await);
    (mock, kg, url, first)
}

#[tokio::test]
async fn bodies_over_the_global_budget_get_503_with_retry_after_until_one_finishes() {
    // One 700 KiB body held while its exchange runs...
    let (mock, _kg, url, first) = one_body_held().await;

    // ...leaves no room for a second one: refused at once, in the provider's error shape.
    let second = post_json(&url, &[("x-api-key", GW)], &big_request(700)).await;
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        second.text()
    );
    assert_eq!(second.header("retry-after"), Some("1"));
    let err = second.json();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "overloaded_error");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_buffered_bodies")),
        "{err}"
    );
    // A small body still fits beside the big one.
    let small = post_json(&url, &[("x-api-key", GW)], &big_request(10)).await;
    assert_eq!(small.status, 200, "{}", small.text());

    let first = first.await.expect("join");
    assert_eq!(first.status, 200, "{}", first.text());
    // The first exchange is over: its bytes are free again.
    let again = post_json(&url, &[("x-api-key", GW)], &big_request(700)).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        mock.requests().len(),
        3,
        "the refused request never went upstream"
    );
}

/// A request body fed frame by frame, without a length (chunked on the wire).
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|d| d.map(|d| Ok(http_body::Frame::data(d))))
    }
}

#[tokio::test]
async fn a_chunked_body_is_counted_as_it_arrives() {
    let (mock, kg, url, first) = one_body_held().await;

    // No Content-Length: 50 KiB frames until keygate answers (324 KiB are left).
    let tcp = tokio::net::TcpStream::connect(kg.addr)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = ChanBody(rx);
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header("host", kg.addr.to_string())
        .header("x-api-key", GW)
        .header("content-type", "application/json")
        .body(body)
        .expect("request");
    let feeder = tokio::spawn(async move {
        let mut sent = 0usize;
        for _ in 0..19 {
            if tx.send(Bytes::from(vec![b' '; 50 * 1024])).await.is_err() {
                break;
            }
            sent += 50 * 1024;
        }
        sent
    });
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("max_buffered_bodies"));
    feeder.abort();

    assert_eq!(first.await.expect("join").status, 200);
    assert_eq!(mock.requests().len(), 1);
}
