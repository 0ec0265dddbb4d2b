//! OAuth refresh in cluster mode (SPEC §10, issue 13 item 5): real `keygate serve`
//! replicas, each with its own state dir holding the same oauth profile, a real
//! `redis-server`, and a mock token endpoint.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::gateway::{anthropic_oauth_at, GW};
use support::keygate::{post_json, providers_at};
use support::mock::{Behaviour, MockProvider};
use support::now_ms;
use support::redis::Redis;
use support::served::Served;

const OLD_ACCESS: &str = "oat-old-access-token-qrstuvw";
const OLD_REFRESH: &str = "ort-old-refresh-token-uvwxyz";
const NEW_ACCESS: &str = "oat-new-access-token-ghijklm";
const NEW_REFRESH: &str = "ort-new-refresh-token-klmnop";
const CLUSTER_KEY: &str = "3c1f0e9a7b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e";
const PROFILE: &str = "anthropic:oauth";

fn profiles() -> String {
    json!({"version": 1, "profiles": {
        PROFILE: {"type": "oauth", "provider": "anthropic", "access": OLD_ACCESS,
                  "refresh": OLD_REFRESH, "expires": now_ms() - 60_000}
    }})
    .to_string()
}

fn token_endpoint(token: &MockProvider) {
    // Slow enough that every replica asks while the first refresh is under way.
    token.set_default(Behaviour::delayed(
        Duration::from_millis(400),
        Behaviour::status(
            200,
            format!(
                r#"{{"access_token":"{NEW_ACCESS}","refresh_token":"{NEW_REFRESH}","expires_in":3600,"token_type":"Bearer"}}"#
            ),
        ),
    ));
}

fn config(api: &MockProvider, token: &MockProvider, redis_url: &str, keyed: bool) -> String {
    let key = if keyed {
        "secret_key_env = \"KEYGATE_CLUSTER_KEY\"\n"
    } else {
        ""
    };
    format!(
        "{}\n{}\n[cluster]\nredis_url = \"{redis_url}\"\nkey_prefix = \"kgtest:\"\n{key}",
        providers_at(&api.url(), &["anthropic"]),
        anthropic_oauth_at(&token.url()),
    )
}

/// A replica with its own state dir holding the one oauth profile.
async fn replica(config: &str, keyed: bool) -> (Served, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("tempdir");
    let dir = state.path().join("agents/main/agent");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("auth-profiles.json"), profiles()).expect("profiles");
    let env: &[(&str, &str)] = if keyed {
        &[("KEYGATE_CLUSTER_KEY", CLUSTER_KEY)]
    } else {
        &[]
    };
    let kg = Served::start_with(state.path(), config, env, None);
    assert!(
        kg.wait_log("keygate listening").await,
        "{}",
        kg.log.lock().unwrap()
    );
    (kg, state)
}

async fn ask(url: String) -> support::keygate::Answer {
    post_json(
        &url,
        &[("x-api-key", GW)],
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 1}),
    )
    .await
}

fn stored(state: &tempfile::TempDir) -> Value {
    let path = state.path().join("agents/main/agent/auth-profiles.json");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    v["profiles"][PROFILE].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_refresh_an_expiring_profile_once_and_all_use_the_new_token() {
    let redis = Redis::start();
    let api = MockProvider::start().await;
    let token = MockProvider::start().await;
    token_endpoint(&token);
    let cfg = config(&api, &token, &redis.url(), true);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&cfg, true).await);
    }
    for (kg, _) in &replicas {
        assert!(
            !kg.log.lock().unwrap().contains("not shared"),
            "warned with a cluster key"
        );
    }

    let mut tasks = Vec::new();
    for _ in 0..20 {
        for (kg, _) in &replicas {
            tasks.push(tokio::spawn(ask(kg.url("/anthropic/v1/messages"))));
        }
    }
    for t in tasks {
        let a = t.await.expect("task");
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-keygate-credential"), Some(PROFILE));
    }

    assert_eq!(
        token.requests().len(),
        1,
        "exactly one refresh in the cluster"
    );
    assert_eq!(token.requests()[0].json()["refresh_token"], OLD_REFRESH);
    let sent = api.requests();
    assert_eq!(sent.len(), 60);
    for r in &sent {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {NEW_ACCESS}").as_str())
        );
    }
    // Every replica's own file is current, as after a refresh of its own.
    for (kg, state) in &replicas {
        let p = stored(state);
        assert_eq!(p["access"], NEW_ACCESS, "{}", kg.log.lock().unwrap());
        assert_eq!(p["refresh"], NEW_REFRESH);
        assert!(p["expires"].as_i64().expect("expires") > now_ms() + 3_000_000);
    }

    // The result crossed Redis, sealed: no piece of any secret is there.
    assert_eq!(redis.keys("kgtest:oauth:*:token").len(), 1);
    redis.assert_no_secret(&[
        OLD_ACCESS,
        OLD_REFRESH,
        NEW_ACCESS,
        NEW_REFRESH,
        CLUSTER_KEY,
    ]);
    // Nor in any replica's log.
    for (kg, _) in &replicas {
        let log = kg.log.lock().unwrap().clone();
        for s in [
            OLD_ACCESS,
            OLD_REFRESH,
            NEW_ACCESS,
            NEW_REFRESH,
            CLUSTER_KEY,
        ] {
            assert!(!log.contains(s), "a secret is in the log: {log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_key_each_oauth_profile_is_warned_about_and_no_token_is_shared() {
    let redis = Redis::start();
    let api = MockProvider::start().await;
    let token = MockProvider::start().await;
    token_endpoint(&token);
    let cfg = config(&api, &token, &redis.url(), false);
    let (a, sa) = replica(&cfg, false).await;
    let (b, _sb) = replica(&cfg, false).await;
    for kg in [&a, &b] {
        let log = kg.log.lock().unwrap().clone();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("OAuth tokens are not shared") && l.contains(PROFILE))
            .collect();
        assert_eq!(warnings.len(), 1, "{log}");
    }

    for kg in [&a, &b] {
        let r = ask(kg.url("/anthropic/v1/messages")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Each refreshed on its own; nothing about it went to Redis.
    assert_eq!(token.requests().len(), 2);
    assert_eq!(stored(&sa)["access"], NEW_ACCESS);
    assert!(redis.keys("kgtest:oauth:*").is_empty(), "{}", redis.dump());
    redis.assert_no_secret(&[OLD_ACCESS, OLD_REFRESH, NEW_ACCESS, NEW_REFRESH]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_the_refresh_is_local_and_serves() {
    let api = MockProvider::start().await;
    let token = MockProvider::start().await;
    token_endpoint(&token);
    // A port nothing listens on.
    let dead = format!("redis://127.0.0.1:{}/0", support::cli::free_addr().port());
    let cfg = config(&api, &token, &dead, true);
    let (kg, state) = replica(&cfg, true).await;
    let r = ask(kg.url("/anthropic/v1/messages")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(token.requests().len(), 1);
    assert_eq!(
        api.last_request().expect("sent").header("authorization"),
        Some(format!("Bearer {NEW_ACCESS}").as_str())
    );
    assert_eq!(stored(&state)["access"], NEW_ACCESS);
}
