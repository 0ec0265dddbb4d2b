//! OAuth refresh (SPEC §5) against a mock token endpoint.

mod support;

use std::os::unix::fs::PermissionsExt;

use serde_json::json;
use support::gateway::{anthropic_oauth_at, GW};
use support::keygate::{post_json, post_messages, Keygate, Opts};
use support::mock::{Behaviour, MockProvider};
use support::now_ms;

fn profiles(expires: i64) -> String {
    json!({"version": 1, "profiles": {
        "anthropic:oauth": {"type": "oauth", "provider": "anthropic", "access": "old-access-token-0001",
                             "refresh": "refresh-token-0001", "expires": expires, "email": "dev@example.com"}
    }})
    .to_string()
}

/// Token mode, Anthropic at `api` with its token endpoint at `token`, and the one OAuth
/// profile expiring at `expires`.
fn opts(api: &MockProvider, token: &MockProvider, expires: i64) -> Opts {
    Opts::gateway(&api.url(), &["anthropic"])
        .more_config(&anthropic_oauth_at(&token.url()))
        .profiles(&profiles(expires))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refreshed_once_under_concurrency() {
    let api = MockProvider::start().await;
    let token = MockProvider::start().await;
    token.set_default(Behaviour::status(
        200,
        r#"{"access_token":"new-access-token-0002","refresh_token":"refresh-token-0002","expires_in":3600,"token_type":"Bearer"}"#,
    ));
    let kg = Keygate::start(opts(&api, &token, now_ms() - 60_000)).await;
    let url = kg.url("/anthropic/v1/messages");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            post_json(
                &url,
                &[("x-api-key", GW)],
                &json!({"model": "claude-sonnet-4-5", "max_tokens": 1}),
            )
            .await
        }));
    }
    for t in tasks {
        let a = t.await.expect("task");
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-keygate-credential"), Some("anthropic:oauth"));
    }
    assert_eq!(token.requests().len(), 1, "exactly one refresh");
    let grant = token.requests()[0].json();
    assert_eq!(grant["grant_type"], "refresh_token");
    assert_eq!(grant["refresh_token"], "refresh-token-0001");
    assert_eq!(grant["client_id"], "test-client");
    for r in api.requests() {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer new-access-token-0002")
        );
        assert!(r
            .header("anthropic-beta")
            .is_some_and(|b| b.contains("oauth-2025-04-20")));
    }
    let path = kg.state_path().join("agents/main/agent/auth-profiles.json");
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let p = &stored["profiles"]["anthropic:oauth"];
    assert_eq!(p["access"], "new-access-token-0002");
    assert_eq!(p["refresh"], "refresh-token-0002");
    assert!(p["expires"].as_i64().expect("expires") > now_ms() + 3_000_000);
    assert_eq!(p["email"], "dev@example.com", "other fields kept");
    assert_eq!(
        std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn failed_refresh_skips_the_profile_and_the_next_credential_serves() {
    let api = MockProvider::start().await;
    let token = MockProvider::start().await;
    token.set_default(Behaviour::status(400, r#"{"error":"invalid_grant","error_description":"refresh token refresh-token-0001 revoked"}"#));
    let kg = Keygate::start(
        opts(&api, &token, now_ms() - 60_000)
            .env("ANTHROPIC_API_KEY", "sk-ant-api03-fallback-key-0003"),
    )
    .await;
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("x-keygate-credential"),
        Some("env:ANTHROPIC_API_KEY")
    );
    assert_eq!(
        api.keys(),
        vec![Some("sk-ant-api03-fallback-key-0003".to_owned())]
    );
    // The profile now cools as `auth`: the next request does not try the refresh again.
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, 200);
    assert_eq!(token.requests().len(), 1);

    // With nothing else to serve, the client gets the SPEC message.
    let kg2 = Keygate::start(opts(&api, &token, now_ms() - 60_000)).await;
    let a = post_messages(&kg2, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, 401);
    let msg = a.json()["error"]["message"]
        .as_str()
        .expect("msg")
        .to_owned();
    assert!(
        msg.starts_with("OAuth token refresh failed for anthropic: "),
        "{msg}"
    );
    assert!(msg.ends_with(". Please re-authenticate."), "{msg}");
    assert!(
        !msg.contains("refresh-token-0001"),
        "no secret in the message: {msg}"
    );
}

#[tokio::test]
async fn a_token_that_is_still_valid_is_not_refreshed() {
    let api = MockProvider::start().await;
    let token = MockProvider::start().await;
    let kg = Keygate::start(opts(&api, &token, now_ms() + 3_600_000)).await;
    let a = post_messages(&kg, GW, "claude-sonnet-4-5").await;
    assert_eq!(a.status, 200);
    assert!(token.requests().is_empty());
    assert_eq!(
        api.last_request().expect("req").header("authorization"),
        Some("Bearer old-access-token-0001")
    );
}

/// Our own pid and start time, as OpenClaw writes them into a lock it holds.
fn live_lock_payload() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let starttime: u64 = rest
        .split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("number");
    json!({"pid": std::process::id(), "createdAt": "2026-12-03T00:00:00.000Z", "starttime": starttime})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_waits_for_openclaws_refresh_lock_and_uses_what_it_wrote() {
    let api = MockProvider::start().await;
    let token = MockProvider::start().await;
    token.set_default(Behaviour::status(
        200,
        r#"{"access_token":"keygate-refreshed-0002","expires_in":3600}"#,
    ));
    let kg = Keygate::start(opts(&api, &token, now_ms() - 60_000)).await;
    // OpenClaw holds its per-profile refresh lock (same path: the digest is OpenClaw's).
    let target = keygate::credentials::oauth::refresh_lock_target(
        &kg.state_path(),
        "anthropic",
        "anthropic:oauth",
    );
    let lock = target.with_file_name(format!(
        "{}.lock",
        target.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, live_lock_payload()).unwrap();

    let url = kg.url("/anthropic/v1/messages");
    let pending = tokio::spawn(async move {
        post_json(
            &url,
            &[("x-api-key", GW)],
            &json!({"model": "claude", "max_tokens": 1}),
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(!pending.is_finished(), "keygate did not wait for the lock");
    assert!(token.requests().is_empty());
    // OpenClaw finishes its refresh, writes the store, releases the lock.
    let path = kg.state_path().join("agents/main/agent/auth-profiles.json");
    std::fs::write(
        &path,
        json!({"version": 1, "profiles": {"anthropic:oauth": {"type": "oauth", "provider": "anthropic",
            "access": "openclaw-refreshed-0003", "refresh": "refresh-token-0003", "expires": now_ms() + 3_600_000}}})
        .to_string(),
    )
    .unwrap();
    std::fs::remove_file(&lock).unwrap();
    let a = pending.await.expect("task");
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        token.requests().is_empty(),
        "the refresh token was spent twice"
    );
    assert_eq!(
        api.last_request().unwrap().header("authorization"),
        Some("Bearer openclaw-refreshed-0003")
    );
    assert!(!lock.exists());
}
