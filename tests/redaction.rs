//! Secrets never reach logs: capture everything at TRACE during full proxied requests
//! (gateway token in a header and in `?key=`, pool keys in headers and in a query) and
//! search the output for every secret (and every session key).

mod support;

use bytes::Bytes;
use http::Method;
use serde_json::json;
use support::gateway::{ALL, GW};
use support::keygate::{post_json, send, Keygate, Opts};
use support::logs::Capture;
use support::mock::MockProvider;

const ADMIN: &str = "admin-redaction-token-6666";
const KEYS: [&str; 4] = [
    "sk-ant-api03-redaction-pool-key-1111",
    "sk-openai-redaction-pool-key-2222",
    "gemini-redaction-pool-key-3333",
    "custom-query-redaction-key-4444",
];

/// Session keys: not secrets, but a user's conversation ids, never logged either.
const SESSIONS: [&str; 4] = [
    "session-header-value-7777",
    "session-cache-key-value-5555",
    "session-metadata-user-4444",
    "session-user-field-3333",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_contain_secrets() {
    let capture = Capture::install();
    let mock = MockProvider::start().await;
    let url = mock.url();
    let kg = Keygate::start(
        Opts::gateway(&url, ALL)
            .more_config(&format!(
                "[providers.qkey]\nbase_url = \"{url}\"\nauth = {{ query = \"key\" }}\n"
            ))
            .env("ANTHROPIC_API_KEY", KEYS[0])
            .env("OPENAI_API_KEY", KEYS[1])
            .env("GEMINI_API_KEY", KEYS[2])
            .env("QKEY_API_KEY", KEYS[3])
            .env("KEYGATE_ADMIN_TOKEN", ADMIN),
    )
    .await;

    let run = async {
        let a = post_json(
            &kg.url("/anthropic/v1/messages"),
            &[("x-api-key", GW)],
            &json!({"model": "claude", "stream": true}),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
        let a = post_json(
            &kg.url("/openai/v1/chat/completions"),
            &[("authorization", &format!("Bearer {GW}"))],
            &json!({"model": "gpt"}),
        )
        .await;
        assert_eq!(a.status, 200);
        // Session keys (SPEC §11) in every place they are read from, each twice (new, then
        // kept): hashed, never logged.
        for _ in 0..2 {
            let a = post_json(
                &kg.url("/openai/v1/chat/completions"),
                &[
                    ("authorization", &format!("Bearer {GW}")),
                    ("x-keygate-session", SESSIONS[0]),
                ],
                &json!({"model": "gpt", "prompt_cache_key": SESSIONS[1]}),
            )
            .await;
            assert_eq!(a.status, 200);
            assert!(a.header("x-keygate-affinity").is_some());
            let a = post_json(
                &kg.url("/openai/v1/chat/completions"),
                &[("authorization", &format!("Bearer {GW}"))],
                &json!({"model": "gpt", "prompt_cache_key": SESSIONS[1]}),
            )
            .await;
            assert_eq!(a.status, 200);
            let a = post_json(
                &kg.url("/anthropic/v1/messages"),
                &[("x-api-key", GW)],
                &json!({"model": "claude", "metadata": {"user_id": SESSIONS[2]}}),
            )
            .await;
            assert_eq!(a.status, 200);
            let a = post_json(
                &kg.url("/openai/v1/chat/completions"),
                &[("authorization", &format!("Bearer {GW}"))],
                &json!({"model": "gpt", "user": SESSIONS[3]}),
            )
            .await;
            assert_eq!(a.status, 200);
        }
        let a = send(
            Method::POST,
            &kg.url(&format!(
                "/google/v1beta/models/gemini-2.5-flash:generateContent?key={GW}"
            )),
            &[("content-type", "application/json")],
            Bytes::from(json!({"contents": []}).to_string()),
        )
        .await;
        assert_eq!(a.status, 200);
        let a = post_json(
            &kg.url("/qkey/v1/chat/completions"),
            &[("x-api-key", GW)],
            &json!({"model": "q"}),
        )
        .await;
        assert_eq!(
            mock.last_request().expect("req").path_and_query,
            format!("/v1/chat/completions?key={}", KEYS[3])
        );
        let _ = a;
        // A failed auth and a bad request are logged too.
        let _ = post_json(
            &kg.url("/openai/v1/chat/completions?key=wrong-secret-guess-9999"),
            &[],
            &json!({}),
        )
        .await;
        // A wrong admin token is logged, without the value tried.
        let a = send(
            Method::GET,
            &kg.url("/_keygate/status"),
            &[("x-keygate-admin-token", "wrong-admin-guess-8888")],
            Bytes::new(),
        )
        .await;
        assert_eq!(a.status, 401);
    };
    run.await;
    drop(kg);

    let logs = capture.text();
    assert!(
        logs.contains("request"),
        "the access log was captured: {} bytes",
        logs.len()
    );
    assert!(
        logs.contains("env:ANTHROPIC_API_KEY"),
        "credential ids are logged"
    );
    assert!(
        logs.contains("admin token rejected"),
        "admin failures are logged"
    );
    for secret in [
        GW,
        ADMIN,
        "wrong-secret-guess-9999",
        "wrong-admin-guess-8888",
    ]
    .iter()
    .chain(KEYS.iter())
    {
        assert!(!logs.contains(secret), "secret {secret} leaked into logs");
    }
    for session in SESSIONS {
        assert!(
            !logs.contains(session),
            "session {session} reached the logs"
        );
    }
}
