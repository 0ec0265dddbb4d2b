//! SPEC §4 inbound rules against a real keygate and the mock provider: the gateway token on
//! every carrier, the lockout after repeated failures, mode none (loopback only), browsers
//! are not clients (Host / Origin), one request one credential, the admin token's lockout,
//! and the trusted-proxy identity header.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::gateway::{assert_no_gateway_token, standard, ALL, GW, OAI_KEY};
use support::keygate::{post_json, providers_at, send, Answer, Keygate, Opts};
use support::mock::MockProvider;

const ADMIN: &str = "admin-inbound-token-0001";

/// OpenAI at `mock` with one key and the admin token; token mode with [`GW`] when `token`,
/// else mode none (or what `extra` sets).
async fn keygate(mock: &MockProvider, extra: &str, token: bool) -> Keygate {
    let opts = if token {
        Opts::gateway(&mock.url(), &["openai"])
    } else {
        Opts::default().config(providers_at(&mock.url(), &["openai"]))
    };
    Keygate::start(
        opts.more_config(extra)
            .env("OPENAI_API_KEY", OAI_KEY)
            .env("KEYGATE_ADMIN_TOKEN", ADMIN),
    )
    .await
}

async fn chat(kg: &Keygate, path_query: &str, headers: &[(&str, &str)]) -> Answer {
    post_json(
        &kg.url(&format!("/openai/v1/chat/completions{path_query}")),
        headers,
        &json!({"model": "gpt-4o-mini", "messages": []}),
    )
    .await
}

fn error_message(a: &Answer) -> String {
    a.json()["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("OpenAI error shape: {}", a.text()))
        .to_owned()
}

#[tokio::test]
async fn inbound_auth_matrix() {
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    let body = json!({"model": "gpt-4o-mini", "messages": []});
    let bearer = format!("Bearer {GW}");
    for headers in [
        vec![("authorization", bearer.as_str())],
        vec![("x-api-key", GW)],
        vec![("x-goog-api-key", GW)],
        vec![("api-key", GW)],
    ] {
        let a = post_json(&kg.url("/openai/v1/chat/completions"), &headers, &body).await;
        assert_eq!(a.status, StatusCode::OK, "{headers:?}: {}", a.text());
    }
    let a = post_json(
        &kg.url(&format!("/openai/v1/chat/completions?key={GW}")),
        &[],
        &body,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "?key=: {}", a.text());
    assert_eq!(
        mock.last_request().expect("request").path_and_query,
        "/v1/chat/completions"
    );

    let before = mock.requests().len();
    let a = post_json(&kg.url("/openai/v1/chat/completions"), &[], &body).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.json()["error"]["message"]
        .as_str()
        .expect("message")
        .contains("missing gateway token"));
    let a = post_json(
        &kg.url("/openai/v1/chat/completions"),
        &[("x-api-key", "wrong")],
        &body,
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        mock.requests().len(),
        before,
        "nothing forwarded without auth"
    );
    assert_no_gateway_token(&mock);
}

#[tokio::test]
async fn lockout_after_repeated_failures() {
    let mock = MockProvider::start().await;
    let kg = standard(&mock).await;
    let body = json!({"model": "gpt-4o-mini"});
    for i in 0..10 {
        let a = post_json(
            &kg.url("/openai/v1/chat/completions"),
            &[("x-api-key", "bad")],
            &body,
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "failure {i}");
    }
    let a = post_json(
        &kg.url("/openai/v1/chat/completions"),
        &[("x-api-key", GW)],
        &body,
    )
    .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = a
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!(secs > 200 && secs <= 300, "{secs}");
}

#[tokio::test]
async fn none_mode_on_loopback_and_refused_elsewhere() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(
        Opts::default()
            .config(providers_at(&mock.url(), ALL))
            .env("OPENAI_API_KEY", OAI_KEY),
    )
    .await;
    let a = post_json(
        &kg.url("/openai/v1/chat/completions"),
        &[("authorization", "Bearer whatever")],
        &json!({"model": "m"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        mock.last_request().expect("req").header("authorization"),
        Some(format!("Bearer {OAI_KEY}").as_str())
    );

    let cfg = keygate::config::Config::defaults();
    let env = keygate::credentials::env::EnvSnapshot::from_pairs(Vec::<(String, String)>::new());
    let err = keygate::build_state(
        cfg,
        kg.state_path(),
        env,
        &"0.0.0.0:8787".parse().expect("addr"),
    )
    .err()
    .expect("refused");
    assert_eq!(
        err,
        "refusing to bind to 0.0.0.0:8787 without auth (set gateway.auth.tokens or KEYGATE_TOKEN)"
    );
}

#[tokio::test]
async fn mode_none_refuses_foreign_host_and_origin() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, "", false).await;
    let port = kg.addr.port();

    // DNS rebinding: the page's own name in Host.
    let a = chat(&kg, "", &[("host", "attacker.example:8787")]).await;
    assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{}", a.text());
    error_message(&a);
    // A cross-site text/plain POST from a web page.
    for origin in [
        "https://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
    ] {
        let a = chat(
            &kg,
            "",
            &[("origin", origin), ("content-type", "text/plain")],
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{origin}: {}", a.text());
        assert!(
            error_message(&a).contains("allowed_origins"),
            "{}",
            a.text()
        );
    }
    assert!(
        mock.requests().is_empty(),
        "nothing forwarded for a browser"
    );

    // Loopback names and addresses, any port, and loopback origins pass.
    let hosts = [
        format!("localhost:{port}"),
        "LOCALHOST".to_owned(),
        format!("127.0.0.1:{port}"),
        "127.9.8.7".to_owned(),
        format!("[::1]:{port}"),
    ];
    for h in &hosts {
        let a = chat(&kg, "", &[("host", h)]).await;
        assert_eq!(a.status, StatusCode::OK, "{h}: {}", a.text());
    }
    for origin in [
        "http://localhost:3000",
        "http://127.0.0.1",
        "http://[::1]:9",
    ] {
        let a = chat(&kg, "", &[("origin", origin)]).await;
        assert_eq!(a.status, StatusCode::OK, "{origin}: {}", a.text());
    }
    // /healthz stays open to anyone.
    let a = send(
        Method::GET,
        &kg.url("/healthz"),
        &[("origin", "https://evil.example"), ("host", "evil.example")],
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn origin_rule_in_token_mode_with_allowed_origins() {
    let mock = MockProvider::start().await;
    let kg = keygate(
        &mock,
        "[gateway]\nallowed_origins = [\"https://App.example.com:443\"]\n",
        true,
    )
    .await;
    let bearer = format!("Bearer {GW}");
    // Host is not checked outside mode none (a token is required there).
    let a = chat(
        &kg,
        "",
        &[("authorization", &bearer), ("host", "gw.internal")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = chat(
        &kg,
        "",
        &[
            ("authorization", &bearer),
            ("origin", "https://app.example.com"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "listed origin: {}", a.text());
    let before = mock.requests().len();
    let a = chat(
        &kg,
        "",
        &[
            ("authorization", &bearer),
            ("origin", "https://other.example.com"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text());
    // The admin status page: the Origin rule too.
    let a = send(
        Method::GET,
        &kg.url("/_keygate/status"),
        &[
            ("x-keygate-admin-token", ADMIN),
            ("origin", "https://evil.example"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text());
    assert_eq!(mock.requests().len(), before, "nothing forwarded");
}

#[test]
fn allowed_origins_are_validated_naming_key_and_line() {
    for bad in [
        "\"app.example.com\"",
        "\"https://app.example.com/\"",
        "\"https://user@app.example.com\"",
        "\"null\"",
        "\"https://app.example.com:99999\"",
    ] {
        let toml = format!("[gateway]\n\nallowed_origins = [\"https://ok.example\", {bad}]\n");
        let err = keygate::config::Config::from_toml(&toml, None, &|_| None)
            .expect_err(bad)
            .to_string();
        assert!(
            err.contains("gateway.allowed_origins") && err.contains("line 3"),
            "{bad}: {err}"
        );
    }
    keygate::config::Config::from_toml(
        "[gateway]\nallowed_origins = [\"https://a.example\", \"http://b.example:8080\"]\n",
        None,
        &|_| None,
    )
    .expect("valid origins");
}

#[tokio::test]
async fn more_than_one_distinct_credential_is_400_and_counts() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, "", true).await;
    let bearer = format!("Bearer {GW}");
    // The same value on two carriers is one credential.
    let a = chat(
        &kg,
        &format!("?key={GW}"),
        &[("x-api-key", GW), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let served = mock.requests().len();

    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        // Wrong values plus the right one.
        (
            String::new(),
            vec![("x-api-key", "wrong-1"), ("authorization", bearer.as_str())],
        ),
        (format!("?key=wrong-1&key=wrong-2&key={GW}"), vec![]),
        (
            String::new(),
            vec![("x-api-key", "wrong-1"), ("x-api-key", GW)],
        ),
        (format!("?key={GW}"), vec![("api-key", "wrong-1")]),
    ];
    for (q, h) in &cases {
        let a = chat(&kg, q, h).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{q} {h:?}: {}", a.text());
        assert!(error_message(&a).contains("more than one"), "{}", a.text());
    }
    // Many values in one request are one failure each request, not none: after 10 such
    // requests (4 above) the address is locked out, even with the right token.
    let many: String = (0..200).map(|i| format!("key=w{i}&")).collect();
    for i in cases.len()..10 {
        let a = chat(&kg, &format!("?{many}"), &[]).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "request {i}: {}",
            a.text()
        );
    }
    let a = chat(&kg, "", &[("authorization", &bearer)]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text());
    assert_eq!(
        mock.requests().len(),
        served,
        "nothing forwarded after the first"
    );
}

#[tokio::test]
async fn missing_credentials_do_not_count_and_ten_wrong_lock_out() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, "", true).await;
    for _ in 0..30 {
        assert_eq!(chat(&kg, "", &[]).await.status, StatusCode::UNAUTHORIZED);
    }
    for i in 0..9 {
        let a = chat(&kg, "", &[("x-api-key", "wrong")]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "failure {i}");
    }
    assert_eq!(
        chat(&kg, "", &[("x-api-key", GW)]).await.status,
        StatusCode::OK
    );
    let a = chat(&kg, "", &[("x-api-key", "wrong")]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "the 10th failure");
    let a = chat(&kg, "", &[("x-api-key", GW)]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = a
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("secs");
    assert!(secs > 200 && secs <= 300, "{secs}");
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn admin_token_has_its_own_lockout() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, "", true).await;
    let status = |token: &'static str| {
        let url = kg.url("/_keygate/status");
        async move {
            send(
                Method::GET,
                &url,
                &[("x-keygate-admin-token", token)],
                Bytes::new(),
            )
            .await
        }
    };
    assert_eq!(status(ADMIN).await.status, StatusCode::OK);
    for i in 0..10 {
        let a = status("wrong-admin").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "failure {i}");
    }
    let a = status(ADMIN).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text());
    assert!(a.header("retry-after").is_some());
    // Counted apart: the gateway token still works from the same address.
    assert_eq!(
        chat(&kg, "", &[("x-api-key", GW)]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn trusted_proxy_identity_header_is_single_and_not_forwarded() {
    let mock = MockProvider::start().await;
    let kg = keygate(
        &mock,
        "[gateway.auth]\nmode = \"trusted-proxy\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\n",
        false,
    )
    .await;
    let a = chat(&kg, "", &[("x-forwarded-user", "main")]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let r = mock.last_request().expect("forwarded");
    assert!(
        r.header("x-forwarded-user").is_none(),
        "identity header forwarded: {:?}",
        r.headers
    );
    let before = mock.requests().len();
    for h in [
        vec![("x-forwarded-user", "ops"), ("x-forwarded-user", "main")],
        vec![("x-forwarded-user", "ops, main")],
    ] {
        let a = chat(&kg, "", &h).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{h:?}: {}", a.text());
    }
    assert_eq!(mock.requests().len(), before, "nothing forwarded");
}

#[tokio::test]
async fn mode_none_reads_the_http2_authority_as_host() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, "", false).await;
    let stream = tokio::net::TcpStream::connect(kg.addr)
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Full<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let port = kg.addr.port();
    for (authority, want) in [
        (
            format!("attacker.example:{port}"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (format!("localhost:{port}"), StatusCode::OK),
    ] {
        let req = http::Request::post(format!("http://{authority}/openai/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(
                json!({"model": "gpt-4o-mini"}).to_string(),
            )))
            .expect("request");
        let resp = send.send_request(req).await.expect("HTTP/2 answer");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), want, "{authority}");
    }
    assert_eq!(
        mock.requests().len(),
        1,
        "only the loopback request was forwarded"
    );
}
