//! Quota domains (SPEC §11) against the mock provider: four keys in two learned domains (the
//! mock names each key's organisation), a `rate_limit` shared by the domain for that model
//! only, a request that rotates across domains in one pass, configured domains over learned
//! ones, `billing` disabling a domain, and the domain shown (a short hash, never the
//! organisation id) in `/_keygate/status` and `models status`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::gateway::GW;
use support::keygate::{post_json, send, Answer, Keygate, Opts};
use support::mock::{Behaviour, MockProvider};

const K: [&str; 4] = [
    "sk-test-domain-key-1-000001",
    "sk-test-domain-key-2-000002",
    "sk-test-domain-key-3-000003",
    "sk-test-domain-key-4-000004",
];
/// The organisation ids the mock gives: keys 1 and 2 in `ALPHA`, 3 and 4 in `BETA`.
const ALPHA: &str = "org-alpha-5f1c9e2a-raw-id";
const BETA: &str = "org-beta-77d0b4c1-raw-id";
const ADMIN: &str = "admin-domains-token";
const M1: &str = "claude-sonnet-4-5";
const M2: &str = "claude-haiku-4-5";

fn id(i: usize) -> String {
    format!("env:ANTHROPIC_API_KEYS#{}", i + 1)
}

/// The mock with keys 1–2 in organisation `ALPHA` and 3–4 in `BETA`.
async fn mock() -> MockProvider {
    let mock = MockProvider::start().await;
    for (i, k) in K.iter().enumerate() {
        let org = if i < 2 { ALPHA } else { BETA };
        mock.key_headers(k, &[("anthropic-organization-id", org)]);
    }
    mock
}

/// keygate over the mock with the four keys, `provider` extra lines in
/// `[providers.anthropic]` and `rest` after it.
async fn keygate(mock: &MockProvider, provider: &str, rest: &str) -> Keygate {
    Keygate::start(
        Opts::default()
            .config(format!(
                "[providers.anthropic]\nbase_url = \"{}\"\n{provider}\n{rest}\n",
                mock.url()
            ))
            .env("KEYGATE_TOKEN", GW)
            .env("KEYGATE_ADMIN_TOKEN", ADMIN)
            .env("ANTHROPIC_API_KEYS", &K.join(",")),
    )
    .await
}

/// A messages request for `model`, pinned to key `pin` when given.
async fn ask(kg: &Keygate, model: &str, pin: Option<usize>) -> Answer {
    let pin = pin.map(id);
    let mut h = vec![("x-api-key", GW)];
    if let Some(p) = &pin {
        h.push(("x-keygate-profile", p.as_str()));
    }
    post_json(
        &kg.url("/anthropic/v1/messages"),
        &h,
        &json!({ "model": model, "max_tokens": 8 }),
    )
    .await
}

/// One answer from each key, so each learns its domain; then the mock forgets them.
async fn learn_all(kg: &Keygate, mock: &MockProvider) {
    for i in 0..4 {
        let a = ask(kg, M1, Some(i)).await;
        assert_eq!(a.status, StatusCode::OK, "key {i}: {}", a.text());
    }
    mock.clear();
}

/// Requests the mock got with key `i` for `model`.
fn hits(mock: &MockProvider, i: usize, model: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.key.as_deref() == Some(K[i]) && r.json()["model"] == model)
        .count()
}

async fn status(kg: &Keygate) -> Value {
    let s = send(
        Method::GET,
        &kg.url("/_keygate/status"),
        &[("authorization", &format!("Bearer {ADMIN}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text());
    s.json()
}

/// The status rows of the anthropic credentials by id.
fn rows(s: &Value) -> Vec<Value> {
    let p = s["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["provider"] == "anthropic"))
        .expect("anthropic in status");
    p["credentials"].as_array().cloned().expect("credentials")
}

fn row(s: &Value, i: usize) -> Value {
    rows(s)
        .into_iter()
        .find(|r| r["id"] == id(i).as_str())
        .unwrap_or_else(|| panic!("no row for {}", id(i)))
}

/// (model, lane, until, source) of each window of key `i`.
fn windows(s: &Value, i: usize) -> Vec<(String, String, u64, String)> {
    s["cooldowns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["credential"] == id(i).as_str())
        .map(|w| {
            (
                w["model"].as_str().unwrap_or_default().to_owned(),
                w["lane"].as_str().unwrap_or_default().to_owned(),
                w["until"].as_u64().unwrap_or_default(),
                w["source"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn rate_limited() -> Behaviour {
    Behaviour::status_with(
        429,
        &[("retry-after", "40")],
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization."}}"#,
    )
}

#[tokio::test]
async fn a_429_cools_its_domain_for_that_model_and_not_the_other_domain() {
    let mock = mock().await;
    let kg = keygate(&mock, "", "").await;
    learn_all(&kg, &mock).await;

    // Key 2 answers 429 for M1 (a pinned request: the window is the key's all the same).
    mock.on_key(K[1], rate_limited());
    let a = ask(&kg, M1, Some(1)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text());
    mock.clear_rules();
    mock.clear();

    let s = status(&kg).await;
    let w2 = windows(&s, 1);
    assert_eq!(w2.len(), 1, "{w2:?}");
    assert_eq!(
        windows(&s, 0),
        w2,
        "key 1 got key 2's window: same until and source"
    );
    assert_eq!(w2[0].0, M1);
    assert_eq!(w2[0].3, "retry-after");
    assert!(
        windows(&s, 2).is_empty() && windows(&s, 3).is_empty(),
        "the other domain is free"
    );

    // M1 goes to the other domain; neither key of the limited domain is called for it.
    for _ in 0..3 {
        let a = ask(&kg, M1, None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.header("x-keygate-credential"), Some(id(2).as_str()));
        assert_eq!(a.header("x-keygate-attempts"), Some("1"));
    }
    assert_eq!((hits(&mock, 0, M1), hits(&mock, 1, M1)), (0, 0));
    // Another model is still served by the limited domain's keys.
    let a = ask(&kg, M2, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.header("x-keygate-credential"), Some(id(0).as_str()));
    let a = ask(&kg, M2, Some(1)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(hits(&mock, 1, M2), 1, "the sibling serves another model");
}

#[tokio::test]
async fn a_request_rotates_across_domains_in_one_pass() {
    // `overloaded` rotates here but opens no window: what keeps key 2 out is the skip of a
    // failed domain, not a cooldown.
    let mock = mock().await;
    let kg = keygate(
        &mock,
        "",
        "[rotation]\nrotate_on = [\"rate_limit\", \"billing\", \"overloaded\"]\n",
    )
    .await;
    learn_all(&kg, &mock).await;

    mock.on_key(
        K[0],
        Behaviour::status(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
    );
    let a = ask(&kg, M1, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.header("x-keygate-credential"), Some(id(2).as_str()));
    assert_eq!(a.header("x-keygate-attempts"), Some("2"));
    assert_eq!(
        mock.keys(),
        vec![Some(K[0].to_owned()), Some(K[2].to_owned())],
        "key 1, then the other domain, never key 1's sibling"
    );
    assert!(status(&kg).await["cooldowns"]
        .as_array()
        .is_some_and(Vec::is_empty));

    // The same with a 429: one pass, two domains.
    mock.on_key(K[0], rate_limited());
    mock.clear();
    let a = ask(&kg, M1, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.header("x-keygate-credential"), Some(id(2).as_str()));
    assert_eq!(a.header("x-keygate-attempts"), Some("2"));
    assert_eq!(hits(&mock, 1, M1), 0);

    // Without domains (a second keygate whose keys never learned one), key 2 is next.
    let plain = MockProvider::start().await;
    plain.on_key(
        K[0],
        Behaviour::status(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
    );
    let kg2 = keygate(
        &plain,
        "",
        "[rotation]\nrotate_on = [\"rate_limit\", \"billing\", \"overloaded\"]\n",
    )
    .await;
    let a = ask(&kg2, M1, None).await;
    assert_eq!(a.header("x-keygate-credential"), Some(id(1).as_str()));
}

#[tokio::test]
async fn an_auth_failure_does_not_skip_its_siblings() {
    let mock = mock().await;
    let kg = keygate(
        &mock,
        "",
        "[rotation]\nrotate_on = [\"rate_limit\", \"billing\", \"auth\"]\n",
    )
    .await;
    learn_all(&kg, &mock).await;
    mock.on_key(
        K[0],
        Behaviour::status(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        ),
    );
    let a = ask(&kg, M1, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(
        a.header("x-keygate-credential"),
        Some(id(1).as_str()),
        "a revoked key says nothing about its sibling"
    );
    let s = status(&kg).await;
    assert!(windows(&s, 1).is_empty(), "{:?}", windows(&s, 1));
}

#[tokio::test]
async fn configured_domains_override_learned_ones() {
    let mock = mock().await;
    // Keys 1 and 3 are one account by configuration, whatever their answers say.
    let kg = keygate(
        &mock,
        "quota_domains = { team-a = [\"env:ANTHROPIC_API_KEYS#1\", \"env:ANTHROPIC_API_KEYS#3\"] }",
        "",
    )
    .await;
    learn_all(&kg, &mock).await;

    let s = status(&kg).await;
    for i in [0, 2] {
        assert_eq!(row(&s, i)["quotaDomain"], "team-a");
        assert_eq!(row(&s, i)["quotaDomainSource"], "configured");
    }
    for i in [1, 3] {
        assert_eq!(row(&s, i)["quotaDomainSource"], "learned");
    }
    assert_ne!(row(&s, 1)["quotaDomain"], row(&s, 3)["quotaDomain"]);

    mock.on_key(K[0], rate_limited());
    let a = ask(&kg, M1, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(
        a.header("x-keygate-credential"),
        Some(id(1).as_str()),
        "key 3 (team-a) is skipped; key 2 (learned with key 1's org) is not key 1's domain"
    );
    assert_eq!(a.header("x-keygate-attempts"), Some("2"));
    assert_eq!(hits(&mock, 2, M1), 0);
    let s = status(&kg).await;
    assert_eq!(
        windows(&s, 2),
        windows(&s, 0),
        "key 3 shares key 1's window"
    );
    assert!(windows(&s, 1).is_empty() && windows(&s, 3).is_empty());
}

#[tokio::test]
async fn billing_disables_the_domain() {
    let mock = mock().await;
    let kg = keygate(&mock, "", "").await;
    learn_all(&kg, &mock).await;
    mock.on_key(
        K[0],
        Behaviour::status(
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#,
        ),
    );
    let a = ask(&kg, M1, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.header("x-keygate-credential"), Some(id(2).as_str()));
    mock.clear_rules();
    mock.clear();

    let s = status(&kg).await;
    let w = windows(&s, 1);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!((w[0].0.as_str(), w[0].1.as_str()), ("all", "disabled"));
    assert_eq!(windows(&s, 0), w, "the same window");
    // Every model now goes to the other domain.
    for model in [M1, M2, "claude-opus-4-1"] {
        let a = ask(&kg, model, None).await;
        assert_eq!(
            a.header("x-keygate-credential"),
            Some(id(2).as_str()),
            "{model}"
        );
    }
    assert_eq!(mock.requests_for_key(K[0]) + mock.requests_for_key(K[1]), 0);
}

#[tokio::test]
async fn status_shows_the_domain_as_a_short_hash_never_the_org_id() {
    let mock = mock().await;
    let kg = keygate(&mock, "", "").await;
    learn_all(&kg, &mock).await;

    let s = status(&kg).await;
    let shown: Vec<String> = (0..4)
        .map(|i| {
            let r = row(&s, i);
            assert_eq!(r["quotaDomainSource"], "learned", "{r}");
            r["quotaDomain"].as_str().expect("a domain").to_owned()
        })
        .collect();
    for d in &shown {
        assert!(
            d.len() == 12 && d.starts_with("org:") && d[4..].bytes().all(|b| b.is_ascii_hexdigit()),
            "{d}"
        );
    }
    assert_eq!(shown[0], shown[1]);
    assert_eq!(shown[2], shown[3]);
    assert_ne!(shown[0], shown[2]);
    let text = s.to_string();
    for raw in [ALPHA, BETA, "alpha", "beta"] {
        assert!(!text.contains(raw), "{raw} in /_keygate/status");
    }

    // `models status` (no server) reads what the server learned from the state dir.
    let state = kg.state_path();
    let file = state.join("keygate-domains.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !file.exists()
        || std::fs::read_to_string(&file).map_or(0, |t| t.matches("domain").count()) < 4
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the learned domains were not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_disk = std::fs::read_to_string(&file).expect("file");
    for raw in [ALPHA, BETA, K[0], K[1], K[2], K[3]] {
        assert!(!on_disk.contains(raw), "{raw} in {on_disk}");
    }
    let env = [("ANTHROPIC_API_KEYS", K.join(","))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cfg = state.join("keygate.toml");
    std::fs::write(
        &cfg,
        "[providers.openai]\nquota_domains = { solo = [\"env:OPENAI_API_KEY\"] }\n",
    )
    .expect("config");
    let cfg = cfg.display().to_string();
    let args = ["--config", cfg.as_str(), "models", "status", "--json"];
    let r = support::cli::keygate(&state, &args, &env, "");
    r.ok().assert_no_secret(&[ALPHA, BETA, "alpha", "beta"]);
    let doc = r.json();
    let cli: Vec<String> = (0..4)
        .map(|i| {
            row(&doc, i)["quotaDomain"]
                .as_str()
                .unwrap_or("-")
                .to_owned()
        })
        .collect();
    assert_eq!(cli, shown, "the CLI shows what the server shows");
    let text = support::cli::keygate(&state, &args[..4], &env, "");
    text.ok().assert_no_secret(&[ALPHA, BETA]);
    assert!(
        text.stdout.contains(&format!("quota domain {}", shown[0])),
        "{}",
        text.stdout
    );
    // A configured domain shows by name, without a server.
    let r = support::cli::keygate(
        &state,
        &args,
        &[("OPENAI_API_KEY", "sk-test-openai-solo-0001")],
        "",
    );
    let doc = r.json();
    let solo = doc["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["provider"] == "openai"))
        .and_then(|p| p["credentials"].get(0))
        .cloned()
        .expect("openai row");
    assert_eq!(solo["quotaDomain"], "solo");
    assert_eq!(solo["quotaDomainSource"], "configured");
}

#[tokio::test]
async fn a_reload_keeps_what_was_learned() {
    let mock = mock().await;
    let kg = keygate(&mock, "", "").await;
    learn_all(&kg, &mock).await;
    // A new profiles file rebuilds the pool; the env keys keep their learned domains.
    let profiles = kg.state_path().join("agents/main/agent/auth-profiles.json");
    std::fs::create_dir_all(profiles.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &profiles,
        r#"{"version":1,"profiles":{"openai:x":{"type":"api_key","provider":"openai","key":"sk-test-openai-x-0001"}}}"#,
    )
    .expect("profiles");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&kg).await;
        let has_openai = s["providers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["provider"] == "openai"));
        if has_openai {
            assert_eq!(row(&s, 0)["quotaDomainSource"], "learned");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first answer after the reload is a 429: its sibling cools at once.
    mock.on_key(K[0], rate_limited());
    let a = ask(&kg, M1, None).await;
    assert_eq!(a.header("x-keygate-credential"), Some(id(2).as_str()));
    assert_eq!(hits(&mock, 1, M1), 0);
}

#[tokio::test]
async fn a_rate_limit_inside_a_committed_stream_cools_the_domain_too() {
    let mock = mock().await;
    let kg = keygate(&mock, "", "").await;
    learn_all(&kg, &mock).await;
    // Content first (the stream is committed), then the provider's rate-limit event.
    let mut events = support::mock::anthropic_sse(M1, 1);
    events.truncate(3);
    events.push(
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"rate limited\"}}\n\n"
            .to_owned(),
    );
    mock.on_key(
        K[0],
        Behaviour::Sse {
            events,
            delay: Duration::ZERO,
            end: support::mock::End::Clean,
        },
    );
    let resp = support::keygate::stream_messages(&kg, GW).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (chunks, _) = support::keygate::read_stream(resp, Duration::from_secs(10)).await;
    assert!(support::keygate::text_of(&chunks).contains("rate_limit_error"));

    let s = status(&kg).await;
    let w1 = windows(&s, 0);
    assert_eq!(w1.len(), 1, "{w1:?}");
    assert_eq!(w1[0].0, M1);
    assert_eq!(windows(&s, 1), w1, "the sibling shares the window");
    assert!(windows(&s, 2).is_empty());
}
