//! End-to-end forwarding: a real keygate and a real mock provider on 127.0.0.1, real HTTP
//! between. The pool key injected per provider, pinned profiles, no credential, and bad
//! input rejected before anything is forwarded.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::gateway::{
    assert_no_gateway_token, standard, with_server, ALL, ANT_KEY, GEM_KEY, GW, OAI_KEY,
};
use support::keygate::{post_json, post_messages, send, Keygate, Opts};
use support::mock::MockProvider;
use support::raw::raw_get;

#[tokio::test]
async fn anthropic_end_to_end_injects_pool_key() {
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    let a = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW), ("anthropic-version", "2023-06-01"), ("x-keygate-agent", "main")],
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["model"], "claude-sonnet-4-5");
    assert_eq!(
        a.header("x-keygate-credential"),
        Some("env:ANTHROPIC_API_KEY")
    );
    assert_eq!(a.header("x-keygate-attempts"), Some("1"));
    let r = mock.last_request().expect("upstream saw the request");
    assert_eq!(r.path(), "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some(ANT_KEY));
    assert!(r.header("authorization").is_none());
    assert_eq!(r.header("host"), Some(mock.addr.to_string().as_str()));
    assert_no_gateway_token(&mock);
}

#[tokio::test]
async fn openai_end_to_end_bearer_and_base_path() {
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    let a = post_json(
        &kg.url("/openai/v1/chat/completions"),
        &[("authorization", &format!("Bearer {GW}"))],
        &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let r = mock.last_request().expect("request");
    assert_eq!(r.path(), "/v1/chat/completions");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {OAI_KEY}").as_str())
    );
    assert_no_gateway_token(&mock);
}

#[tokio::test]
async fn gemini_model_from_path_and_query_key_stripped() {
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    let a = send(
        Method::POST,
        &kg.url(&format!(
            "/google/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={GW}"
        )),
        &[("content-type", "application/json")],
        Bytes::from(json!({"contents": [{"parts": [{"text": "hi"}]}]}).to_string()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(a
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    assert!(a.text().contains("gemini-2.5-flash"));
    let r = mock.last_request().expect("request");
    assert_eq!(
        r.path_and_query,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(r.header("x-goog-api-key"), Some(GEM_KEY));
    assert_no_gateway_token(&mock);
}

#[tokio::test]
async fn pinned_profile_is_stripped_byte_for_byte() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(
        Opts::gateway(&mock.url(), ALL)
            .env("ANTHROPIC_API_KEY", ANT_KEY)
            .profiles(r#"{"version":1,"profiles":{
                "anthropic:work":{"type":"api_key","provider":"anthropic","key":"sk-ant-api03-work-key-WWWW"},
                "openai:x":{"type":"api_key","provider":"openai","key":"sk-openai-x"}}}"#),
    )
    .await;
    // Odd spacing and key order must survive untouched.
    let client_body = "{ \"max_tokens\" : 8,\n  \"model\":\"claude-sonnet-4-5@anthropic:work\" , \"messages\":[{\"role\":\"user\",\"content\":\"model@x\"}]}";
    let a = send(
        Method::POST,
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW), ("content-type", "application/json")],
        Bytes::from(client_body),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.header("x-keygate-credential"), Some("anthropic:work"));
    let r = mock.last_request().expect("request");
    assert_eq!(
        r.body,
        client_body.replace("@anthropic:work", "").as_bytes()
    );
    assert_eq!(r.header("x-api-key"), Some("sk-ant-api03-work-key-WWWW"));

    // Header pin, unknown profile, another provider's profile.
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 1});
    let a = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[
            ("x-api-key", GW),
            ("x-keygate-profile", "env:ANTHROPIC_API_KEY"),
        ],
        &body,
    )
    .await;
    assert_eq!(
        a.header("x-keygate-credential"),
        Some("env:ANTHROPIC_API_KEY")
    );
    let a = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW), ("x-keygate-profile", "anthropic:nope")],
        &body,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.json()["error"]["message"],
        "Auth profile \"anthropic:nope\" not found."
    );
    let a = post_messages(&kg, GW, "claude@openai:x").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.json()["error"]["message"],
        "Auth profile \"openai:x\" is for openai, not anthropic."
    );
}

#[tokio::test]
async fn no_credentials_is_401_with_hint() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(Opts::gateway(&mock.url(), ALL)).await;
    let a = post_messages(&kg, GW, "claude").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let msg = a.json()["error"]["message"]
        .as_str()
        .expect("msg")
        .to_owned();
    assert!(
        msg.starts_with("No credentials found for provider \"anthropic\"."),
        "{msg}"
    );
    assert!(
        msg.contains("keygate models auth paste-api-key --provider anthropic"),
        "{msg}"
    );
    assert!(msg.contains("ANTHROPIC_API_KEY"), "{msg}");
    assert_eq!(a.json()["type"], "error", "Anthropic error shape");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_proxy_keeps_serving() {
    let mock = MockProvider::start().await;
    let kg = with_server(&mock, "max_request_body = \"1KiB\"").await;
    let h = [("x-api-key", GW)];
    // Path tricks, sent raw so no client normalises them.
    for path in [
        "/openai/v1/../../etc",
        "/openai/v1/%2e%2e/x",
        "/openai/v1%2fchat",
        "/openai//evil.example/x",
        "//evil.example/x",
    ] {
        let a = raw_get(kg.addr, path, GW).await;
        assert!(a.starts_with("HTTP/1.1 400"), "{path}: {a}");
        assert!(
            a.contains("\"error\""),
            "{path}: JSON error body expected: {a}"
        );
    }
    let a = post_json(&kg.url("/nosuch/v1/x"), &h, &json!({})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.json()["error"]["message"].is_string());

    let big = "x".repeat(2048);
    let a = send(
        Method::POST,
        &kg.url("/openai/v1/chat/completions"),
        &h,
        Bytes::from(big),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    let long_model = "m".repeat(300);
    let a = post_json(
        &kg.url("/openai/v1/chat/completions"),
        &h,
        &json!({"model": long_model}),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.text().contains("256"));
    assert!(
        mock.requests().is_empty(),
        "nothing forwarded for rejected requests"
    );

    // A non-JSON body passes through untouched.
    let a = send(
        Method::POST,
        &kg.url("/openai/v1/files"),
        &[("x-api-key", GW), ("content-type", "text/plain")],
        Bytes::from_static(b"not json {"),
    )
    .await;
    assert!(a.status.is_client_error() || a.status.is_success());
    assert_eq!(
        mock.last_request().expect("forwarded").body,
        Bytes::from_static(b"not json {")
    );

    let a = post_json(
        &kg.url("/openai/v1/chat/completions"),
        &h,
        &json!({"model": "gpt-4o-mini"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "still serving");
}
