//! Tests of the mock provider itself, with a plain hyper-util client.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::mock::{
    anthropic_sse, gemini_sse, openai_sse, split_sse, Behaviour, End, MockProvider, NORMAL_DELTAS,
};
use tokio::time::{timeout, Instant};

/// Upper bound for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(10);

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn req(
    mock: &MockProvider,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{}{}", mock.url(), path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// Send and read the whole answer, bounded.
async fn send(client: &TestClient, r: Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    timeout(WAIT, async {
        let resp = client.request(r).await.expect("response head");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        (parts, body)
    })
    .await
    .expect("answer within WAIT")
}

fn json(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b).expect("JSON body")
}

fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).expect("UTF-8 body")
}

const ANTHROPIC_BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn anthropic_json_echoes_model_and_records_request() {
    let mock = MockProvider::start().await;
    let c = client();
    let (parts, body) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[
                ("x-api-key", "sk-ant-1"),
                ("anthropic-version", "2023-06-01"),
                ("content-type", "application/json"),
            ],
            ANTHROPIC_BODY,
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["content-type"], "application/json");
    assert!(parts.headers["request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let v = json(&body);
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(v["content"][0]["type"], "text");

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path_and_query, "/v1/messages");
    assert_eq!(r.key.as_deref(), Some("sk-ant-1"));
    assert_eq!(r.header("x-api-key"), Some("sk-ant-1"));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("host"), Some(mock.addr.to_string().as_str()));
    assert_eq!(r.body, Bytes::from(ANTHROPIC_BODY));
    assert_eq!(r.json()["max_tokens"], 16);
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(mock.requests_for_key("sk-ant-1"), 1);
    assert_eq!(mock.requests_for_key("other"), 0);

    assert!(mock.wait_in_flight(0, WAIT).await);
    assert_eq!(mock.disconnects(), 0);
    mock.clear();
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn anthropic_sse_is_a_full_transcript() {
    let mock = MockProvider::start().await;
    let body = r#"{"model":"claude-haiku-4-5","max_tokens":16,"stream":true,"messages":[]}"#;
    let (parts, body) = send(
        &client(),
        req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "k")],
            body,
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(parts.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = split_sse(text(&body));
    assert_eq!(events.len(), NORMAL_DELTAS + 5);
    assert!(events[0].starts_with("event: message_start\n"));
    assert!(events[0].contains("\"model\":\"claude-haiku-4-5\""));
    assert!(events.last().unwrap().starts_with("event: message_stop\n"));
    assert_eq!(events, anthropic_sse("claude-haiku-4-5", NORMAL_DELTAS));
    assert_eq!(mock.disconnects(), 0);
}

#[tokio::test]
async fn openai_sse_ends_with_done() {
    let mock = MockProvider::start().await;
    let body =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (parts, body) = send(
        &client(),
        req(
            &mock,
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-proj-9")],
            body,
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(parts.headers.contains_key("x-request-id"));
    let t = text(&body);
    assert!(t.ends_with("data: [DONE]\n\n"), "{t}");
    assert!(t.contains("\"model\":\"gpt-4o-mini\""));
    assert_eq!(split_sse(t), openai_sse("gpt-4o-mini", NORMAL_DELTAS));
    assert_eq!(mock.requests_for_key("sk-proj-9"), 1);

    // Non-streaming answer.
    let (_, body) = send(
        &client(),
        req(
            &mock,
            Method::POST,
            "/v1/chat/completions",
            &[("api-key", "az-1")],
            r#"{"model":"gpt-4o"}"#,
        ),
    )
    .await;
    let v = json(&body);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(mock.requests_for_key("az-1"), 1);
}

#[tokio::test]
async fn gemini_path_model_is_echoed() {
    let mock = MockProvider::start().await;
    let c = client();
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;

    let (parts, b) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent?key=AIza-q",
            &[],
            body,
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json(&b)["modelVersion"], "gemini-2.5-flash");
    assert_eq!(mock.requests_for_key("AIza-q"), 1);

    let (parts, b) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            &[("x-goog-api-key", "AIza-h")],
            body,
        ),
    )
    .await;
    assert!(parts.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(
        split_sse(text(&b)),
        gemini_sse("gemini-2.5-pro", NORMAL_DELTAS)
    );
    assert!(text(&b).contains("\"modelVersion\":\"gemini-2.5-pro\""));
    assert_eq!(mock.requests_for_key("AIza-h"), 1);

    // Without alt=sse: one JSON array.
    let (parts, b) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
            &[("x-goog-api-key", "AIza-h")],
            body,
        ),
    )
    .await;
    assert_eq!(parts.headers["content-type"], "application/json");
    let arr = json(&b);
    assert_eq!(arr.as_array().unwrap().len(), NORMAL_DELTAS);
    assert_eq!(arr[0]["modelVersion"], "gemini-2.5-pro");
    assert_eq!(
        arr[NORMAL_DELTAS - 1]["candidates"][0]["finishReason"],
        "STOP"
    );
}

#[tokio::test]
async fn models_list_and_unknown_path() {
    let mock = MockProvider::start().await;
    let c = client();
    let (_, b) = send(
        &c,
        req(
            &mock,
            Method::GET,
            "/v1/models",
            &[("authorization", "Bearer x")],
            "",
        ),
    )
    .await;
    assert_eq!(json(&b)["object"], "list");
    let (_, b) = send(
        &c,
        req(&mock, Method::GET, "/v1/models", &[("x-api-key", "x")], ""),
    )
    .await;
    assert_eq!(json(&b)["data"][0]["type"], "model");
    let (_, b) = send(&c, req(&mock, Method::GET, "/v1beta/models?key=g", &[], "")).await;
    assert!(json(&b)["models"].is_array());

    let (parts, b) = send(&c, req(&mock, Method::POST, "/v1/nothing-here", &[], "{}")).await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(parts.headers["content-type"], "application/json");
    assert!(json(&b)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing-here"));

    // Missing model: provider-shaped 400.
    let (parts, b) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "x")],
            "{}",
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&b)["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn per_key_status_rule_applies_only_to_that_key() {
    let mock = MockProvider::start().await;
    mock.on_key(
        "sk-limited",
        Behaviour::status_with(
            429,
            &[("retry-after", "7")],
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        ),
    );
    let c = client();
    let (parts, b) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "sk-limited")],
            ANTHROPIC_BODY,
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(parts.headers["retry-after"], "7");
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(json(&b)["error"]["type"], "rate_limit_error");

    let (parts, _) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "sk-fine")],
            ANTHROPIC_BODY,
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);

    // The default applies to keys without a rule, never to keys with one.
    mock.set_default(Behaviour::status(503, "{}"));
    let (parts, _) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "sk-fine")],
            ANTHROPIC_BODY,
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    let (parts, _) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "sk-limited")],
            ANTHROPIC_BODY,
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);

    assert_eq!(mock.requests_for_key("sk-limited"), 2);
    assert_eq!(mock.requests_for_key("sk-fine"), 2);
    assert_eq!(
        mock.keys(),
        ["sk-limited", "sk-fine", "sk-fine", "sk-limited"].map(|k| Some(k.to_string()))
    );
}

#[tokio::test]
async fn sequence_advances_and_last_repeats() {
    let mock = MockProvider::start().await;
    mock.on_key(
        "k",
        Behaviour::Sequence(vec![
            Behaviour::status(429, "{}"),
            Behaviour::status(500, "{}"),
            Behaviour::Normal,
        ]),
    );
    let c = client();
    let mut got = Vec::new();
    for _ in 0..5 {
        let (parts, _) = send(
            &c,
            req(
                &mock,
                Method::POST,
                "/v1/messages",
                &[("x-api-key", "k")],
                ANTHROPIC_BODY,
            ),
        )
        .await;
        got.push(parts.status.as_u16());
    }
    assert_eq!(got, [429, 500, 200, 200, 200]);
}

#[tokio::test]
async fn sse_delays_are_observed_in_arrival_order() {
    let mock = MockProvider::start().await;
    let delay = Duration::from_millis(40);
    let events = anthropic_sse("m", 2);
    let n = events.len();
    mock.set_default(Behaviour::Sse {
        events: events.clone(),
        delay,
        end: End::Clean,
    });
    let resp = timeout(
        WAIT,
        client().request(req(&mock, Method::POST, "/v1/messages", &[], "{}")),
    )
    .await
    .unwrap()
    .unwrap();
    let head_at = Instant::now();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut got = String::new();
    while let Some(frame) = timeout(WAIT, body.frame()).await.unwrap() {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            arrivals.push(Instant::now());
            got.push_str(std::str::from_utf8(d).unwrap());
        }
    }
    assert_eq!(got, events.concat());
    // Each event is its own chunk: with a delay between them, none coalesce.
    assert_eq!(arrivals.len(), n);
    assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
    // Timers never fire early: these are lower bounds, not wall-clock budgets.
    assert!(arrivals[0] >= head_at);
    assert!(arrivals[n - 1] - arrivals[0] >= delay);
    assert!(mock.wait_in_flight(0, WAIT).await);
    assert_eq!(mock.disconnects(), 0);
}

async fn assert_reset_is_body_error(c: TestClient) {
    let mock = MockProvider::start().await;
    let events = openai_sse("gpt-4o", 2)[..2].to_vec();
    mock.set_default(Behaviour::Sse {
        events: events.clone(),
        delay: Duration::ZERO,
        end: End::Reset,
    });
    let resp = timeout(
        WAIT,
        c.request(req(&mock, Method::POST, "/v1/chat/completions", &[], "{}")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let outcome = loop {
        match timeout(WAIT, body.frame()).await.unwrap() {
            Some(Ok(frame)) => got.extend_from_slice(frame.data_ref().unwrap()),
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    assert!(outcome.is_err(), "client must see an incomplete body");
    // The events sent before the reset did arrive.
    assert_eq!(got, events.concat().into_bytes());
    // A scripted reset is not the client going away.
    assert!(mock.wait_in_flight(0, WAIT).await);
    assert_eq!(mock.disconnects(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_gives_client_a_body_error_http1() {
    assert_reset_is_body_error(client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_gives_client_a_body_error_h2c() {
    assert_reset_is_body_error(h2_client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_then_client_drop_counts_a_disconnect() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Hang);
    let c = client();
    let pending = tokio::spawn({
        let r = req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "k")],
            ANTHROPIC_BODY,
        );
        async move { c.request(r).await }
    });
    assert!(mock.wait_requests(1, WAIT).await);
    assert_eq!(mock.in_flight(), 1);
    assert_eq!(mock.disconnects(), 0);
    pending.abort();
    assert!(mock.wait_disconnects(1, WAIT).await);
    assert!(mock.wait_in_flight(0, WAIT).await);
    assert_eq!(mock.requests()[0].body, Bytes::from(ANTHROPIC_BODY));
}

#[tokio::test]
async fn stream_end_hang_then_body_drop_counts_a_disconnect() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::Sse {
        events: anthropic_sse("m", 1)[..2].to_vec(),
        delay: Duration::ZERO,
        end: End::Hang,
    });
    for c in [client(), h2_client()] {
        mock.clear();
        let resp = timeout(
            WAIT,
            c.request(req(&mock, Method::POST, "/v1/messages", &[], "{}")),
        )
        .await
        .unwrap()
        .unwrap();
        let mut body = resp.into_body();
        let first = timeout(WAIT, body.frame()).await.unwrap().unwrap().unwrap();
        assert!(first
            .data_ref()
            .unwrap()
            .starts_with(b"event: message_start"));
        assert_eq!(mock.in_flight(), 1);
        drop(body);
        drop(c);
        assert!(mock.wait_disconnects(1, WAIT).await);
        assert!(mock.wait_in_flight(0, WAIT).await);
    }
}

#[tokio::test]
async fn delayed_answer_waits_before_the_head() {
    let mock = MockProvider::start().await;
    let delay = Duration::from_millis(50);
    mock.set_default(Behaviour::delayed(delay, Behaviour::Normal));
    let start = Instant::now();
    let (parts, _) = send(
        &client(),
        req(&mock, Method::POST, "/v1/messages", &[], ANTHROPIC_BODY),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(start.elapsed() >= delay);
}

#[tokio::test]
async fn h2c_is_served_and_recorded() {
    let mock = MockProvider::start().await;
    let (parts, b) = send(
        &h2_client(),
        req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "k2")],
            ANTHROPIC_BODY,
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.version, Version::HTTP_2);
    assert_eq!(json(&b)["model"], "claude-sonnet-4-5");
    let r = mock.last_request().unwrap();
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.key.as_deref(), Some("k2"));
}

#[tokio::test]
async fn fixture_becomes_a_behaviour() {
    let fixture = r#"{
        "provider": "anthropic", "status": 429,
        "headers": {"content-type": "application/json", "retry-after": "12"},
        "body": "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"x\"}}"
    }"#;
    let sse_fixture = r#"{
        "status": 200, "headers": {"content-type": "text/event-stream; charset=utf-8"},
        "body": "event: ping\ndata: {}\n\nevent: error\ndata: {\"type\":\"error\"}\n\n"
    }"#;
    let mock = MockProvider::start().await;
    mock.on_key("a", Behaviour::from_fixture(fixture));
    mock.on_key("b", Behaviour::from_fixture(sse_fixture));
    let c = client();
    let (parts, b) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "a")],
            "{}",
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(parts.headers["retry-after"], "12");
    assert_eq!(json(&b)["error"]["type"], "rate_limit_error");
    let (parts, b) = send(
        &c,
        req(
            &mock,
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "b")],
            "{}",
        ),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(split_sse(text(&b)).len(), 2);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let mock = MockProvider::start().await;
    let addr = mock.addr;
    let clone = mock.clone();
    drop(mock);
    // A clone keeps it alive.
    let (parts, _) = send(&client(), req(&clone, Method::GET, "/v1/models", &[], "")).await;
    assert_eq!(parts.status, StatusCode::OK);
    drop(clone);
    let deadline = Instant::now() + WAIT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "listener still open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
