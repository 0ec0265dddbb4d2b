//! Session affinity (SPEC §11) against the mock provider: a conversation stays on its
//! credential, moves with a rotation and stays moved, pins and explicit orders bound it,
//! `affinity = "off"` restores §5's order, and the session map stays at its cap.

mod support;

use std::collections::HashSet;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::gateway::GW;
use support::keygate::{post_json, send, Answer, Keygate, Opts};
use support::mock::{anthropic_sse, Behaviour, End, MockProvider};

const KA: &str = "sk-ant-api03-affinity-key-AAAA";
const KB: &str = "sk-ant-api03-affinity-key-BBBB";
const KC: &str = "sk-ant-api03-affinity-key-CCCC";
const ADMIN: &str = "admin-affinity-token";

/// Three stored api_key profiles: §5 takes them least recently used first, so requests
/// without affinity alternate between them.
fn three_profiles() -> String {
    json!({"version": 1, "profiles": {
        "anthropic:a": {"type": "api_key", "provider": "anthropic", "key": KA},
        "anthropic:b": {"type": "api_key", "provider": "anthropic", "key": KB},
        "anthropic:c": {"type": "api_key", "provider": "anthropic", "key": KC},
    }})
    .to_string()
}

async fn keygate(mock: &MockProvider, extra: &str) -> Keygate {
    Keygate::start(
        Opts::gateway(&mock.url(), &["anthropic", "openai"])
            .more_config(extra)
            .env("KEYGATE_ADMIN_TOKEN", ADMIN)
            .profiles(&three_profiles()),
    )
    .await
}

/// Whose key a credential id is.
fn key_of(id: &str) -> &'static str {
    match id {
        "anthropic:a" => KA,
        "anthropic:b" => KB,
        "anthropic:c" => KC,
        other => panic!("unexpected credential {other}"),
    }
}

/// A Messages request of session `session`: in the header when `in_header`, else in the
/// body as Claude Code sends it (`metadata.user_id`).
async fn turn(kg: &Keygate, session: &str, in_header: bool) -> Answer {
    let mut body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []});
    let mut headers = vec![("x-api-key", GW)];
    if in_header {
        headers.push(("x-keygate-session", session));
    } else {
        body["metadata"] = json!({ "user_id": session });
    }
    post_json(&kg.url("/anthropic/v1/messages"), &headers, &body).await
}

fn served(a: &Answer) -> String {
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    a.header("x-keygate-credential")
        .expect("x-keygate-credential")
        .to_owned()
}

async fn status(kg: &Keygate) -> serde_json::Value {
    let auth = format!("Bearer {ADMIN}");
    let s = send(
        Method::GET,
        &kg.url("/_keygate/status"),
        &[("authorization", auth.as_str())],
        Bytes::new(),
    )
    .await;
    assert_eq!(s.status, StatusCode::OK);
    s.json()
}

#[tokio::test]
async fn two_sessions_stay_on_their_keys() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, "").await;
    let mut alpha = Vec::new();
    let mut beta = Vec::new();
    for _ in 0..20 {
        let a = turn(&kg, "conv-alpha", true).await;
        alpha.push((
            served(&a),
            a.header("x-keygate-affinity").map(str::to_owned),
        ));
        let b = turn(&kg, "conv-beta", false).await;
        beta.push((
            served(&b),
            b.header("x-keygate-affinity").map(str::to_owned),
        ));
    }
    for (name, turns) in [("alpha", &alpha), ("beta", &beta)] {
        let creds: HashSet<&str> = turns.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(creds.len(), 1, "{name} used {creds:?}");
        assert_eq!(turns[0].1.as_deref(), Some("new"), "{name}'s first turn");
        for (i, (_, h)) in turns.iter().enumerate().skip(1) {
            assert_eq!(h.as_deref(), Some("kept"), "{name} turn {i}");
        }
    }
    // New sessions still spread: the second conversation took the least recently used key.
    assert_ne!(alpha[0].0, beta[0].0);
    assert_eq!(mock.requests_for_key(key_of(&alpha[0].0)), 20);
    assert_eq!(mock.requests_for_key(key_of(&beta[0].0)), 20);

    let v = status(&kg).await;
    assert_eq!(v["affinity"]["mode"], "session");
    assert_eq!(v["affinity"]["sessions"], 2);
    assert_eq!(v["affinity"]["maxSessions"], 100_000);
    let text = v.to_string();
    assert!(!text.contains("conv-alpha") && !text.contains("conv-beta"));
    let m = send(Method::GET, &kg.url("/metrics"), &[], Bytes::new()).await;
    let m = m.text();
    for line in [
        "keygate_affinity_total{outcome=\"new\"} 2",
        "keygate_affinity_total{outcome=\"kept\"} 38",
        "keygate_affinity_sessions 2",
    ] {
        assert!(m.contains(line), "missing {line}\n{m}");
    }
}

#[tokio::test]
async fn a_429_moves_only_that_session_and_it_stays_moved() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, "").await;
    let first_a = served(&turn(&kg, "conv-alpha", true).await);
    let first_b = served(&turn(&kg, "conv-beta", true).await);
    assert_ne!(first_a, first_b);

    // Alpha's key is limited for a second.
    mock.on_key(
        key_of(&first_a),
        Behaviour::Sequence(vec![
            Behaviour::status_with(
                429,
                &[("retry-after", "1")],
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"rate limited"}}"#,
            ),
            Behaviour::Normal,
        ]),
    );
    let moved = turn(&kg, "conv-alpha", true).await;
    let new_a = served(&moved);
    assert_ne!(new_a, first_a);
    assert_eq!(moved.header("x-keygate-affinity"), Some("moved"));
    assert_eq!(moved.header("x-keygate-attempts"), Some("2"));
    // The other session never noticed.
    let b = turn(&kg, "conv-beta", true).await;
    assert_eq!(served(&b), first_b);
    assert_eq!(b.header("x-keygate-affinity"), Some("kept"));

    // After the window ends, alpha stays on its new key (its cache is there now).
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    for i in 0..10 {
        let a = turn(&kg, "conv-alpha", true).await;
        assert_eq!(served(&a), new_a, "alpha turn {i}");
        assert_eq!(a.header("x-keygate-affinity"), Some("kept"));
        let b = turn(&kg, "conv-beta", true).await;
        assert_eq!(served(&b), first_b, "beta turn {i}");
    }
    // The limited key answered exactly once (its 429).
    assert_eq!(mock.requests_for_key(key_of(&first_a)), 2);
}

#[tokio::test]
async fn affinity_off_restores_the_section_5_order() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, "[rotation]\naffinity = \"off\"\n").await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let a = turn(&kg, "conv-alpha", true).await;
        assert_eq!(a.header("x-keygate-affinity"), None);
        seen.push(served(&a));
    }
    // Least recently used first: every key in turn.
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 3, "{seen:?}");
    assert_ne!(seen[0], seen[1]);
    assert_eq!(status(&kg).await["affinity"]["mode"], "off");
}

#[tokio::test]
async fn requests_without_a_session_keep_the_section_5_order() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, "").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let a = post_json(
            &kg.url("/anthropic/v1/messages"),
            &[("x-api-key", GW)],
            &json!({"model": "claude-sonnet-4-5", "max_tokens": 8}),
        )
        .await;
        assert_eq!(a.header("x-keygate-affinity"), None);
        seen.push(served(&a));
    }
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 3, "{seen:?}");
}

#[tokio::test]
async fn a_pin_wins_and_an_explicit_order_bounds_the_session() {
    let mock = MockProvider::start().await;
    // Appended to the last provider table, `[providers.anthropic]`.
    let kg = Keygate::start(
        Opts::gateway(&mock.url(), &["anthropic"])
            .more_config("order = [\"anthropic:c\", \"anthropic:b\"]\n")
            .profiles(&three_profiles()),
    )
    .await;
    // Explicit order: only c and b may serve, c first.
    let a = turn(&kg, "conv-alpha", true).await;
    assert_eq!(served(&a), "anthropic:c");
    assert_eq!(a.header("x-keygate-affinity"), Some("new"));

    // A pin wins over the session, and does not move it.
    let pinned = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[
            ("x-api-key", GW),
            ("x-keygate-session", "conv-alpha"),
            ("x-keygate-profile", "anthropic:a"),
        ],
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 8}),
    )
    .await;
    assert_eq!(served(&pinned), "anthropic:a");
    assert_eq!(pinned.header("x-keygate-affinity"), None);
    let a = turn(&kg, "conv-alpha", true).await;
    assert_eq!(served(&a), "anthropic:c");
    assert_eq!(a.header("x-keygate-affinity"), Some("kept"));

    // c limited: the session moves to b (the order's next), never to a.
    mock.on_key(
        KC,
        Behaviour::Sequence(vec![
            Behaviour::status_with(
                429,
                &[("retry-after", "1")],
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"rate limited"}}"#,
            ),
            Behaviour::Normal,
        ]),
    );
    let a = turn(&kg, "conv-alpha", true).await;
    assert_eq!(served(&a), "anthropic:b");
    assert_eq!(a.header("x-keygate-affinity"), Some("moved"));
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    for _ in 0..5 {
        assert_eq!(served(&turn(&kg, "conv-alpha", true).await), "anthropic:b");
    }
    // A new session follows the explicit order as it is.
    assert_eq!(served(&turn(&kg, "conv-gamma", true).await), "anthropic:c");
    assert_eq!(mock.requests_for_key(KA), 1, "a served only the pin");
}

#[tokio::test]
async fn the_session_key_comes_from_the_header_then_the_body() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(
        Opts::gateway(&mock.url(), &["openai"])
            .env("KEYGATE_ADMIN_TOKEN", ADMIN)
            .env(
                "OPENAI_API_KEYS",
                "sk-oai-affinity-1111,sk-oai-affinity-2222",
            ),
    )
    .await;
    let chat = |body: serde_json::Value, header: Option<&'static str>| {
        let url = kg.url("/openai/v1/chat/completions");
        async move {
            let mut h = vec![("authorization", "Bearer gw-test-token-0001")];
            if let Some(s) = header {
                h.push(("x-keygate-session", s));
            }
            post_json(&url, &h, &body).await
        }
    };
    let base = json!({"model": "gpt-4o-mini", "messages": []});
    let with = |k: &str, v: &str| {
        let mut b = base.clone();
        b[k] = json!(v);
        b
    };
    // prompt_cache_key, then user: each a session of its own.
    let a = chat(with("prompt_cache_key", "pck-1"), None).await;
    assert_eq!(a.header("x-keygate-affinity"), Some("new"));
    let a = chat(with("prompt_cache_key", "pck-1"), None).await;
    assert_eq!(a.header("x-keygate-affinity"), Some("kept"));
    let a = chat(with("user", "user-1"), None).await;
    assert_eq!(a.header("x-keygate-affinity"), Some("new"));
    // prompt_cache_key wins over user.
    let mut both = with("user", "user-1");
    both["prompt_cache_key"] = json!("pck-1");
    let a = chat(both, None).await;
    assert_eq!(a.header("x-keygate-affinity"), Some("kept"));
    // The header wins over the body: a new session.
    let a = chat(with("prompt_cache_key", "pck-1"), Some("hdr-1")).await;
    assert_eq!(a.header("x-keygate-affinity"), Some("new"));
    assert_eq!(status(&kg).await["affinity"]["sessions"], 3);
    // The header is keygate's own: never forwarded.
    for r in mock.requests() {
        assert_eq!(r.header("x-keygate-session"), None);
    }
}

#[tokio::test]
async fn the_session_map_stays_at_its_cap() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(
        Opts::gateway(&mock.url(), &["openai"])
            .more_config("[rotation]\naffinity_max_sessions = 50\n")
            .env("KEYGATE_ADMIN_TOKEN", ADMIN)
            .env(
                "OPENAI_API_KEYS",
                "sk-oai-affinity-1111,sk-oai-affinity-2222",
            ),
    )
    .await;
    let url = kg.url("/openai/v1/chat/completions");
    let turn = |i: usize| {
        let url = url.clone();
        async move {
            post_json(
                &url,
                &[("authorization", "Bearer gw-test-token-0001")],
                &json!({"model": "gpt-4o-mini", "messages": [], "prompt_cache_key": format!("conv-{i}")}),
            )
            .await
        }
    };
    for i in 0..300 {
        let a = turn(i).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.header("x-keygate-affinity"), Some("new"), "conv-{i}");
    }
    let v = status(&kg).await;
    assert_eq!(v["affinity"]["sessions"], 50);
    assert_eq!(v["affinity"]["maxSessions"], 50);
    // The latest conversation is remembered; the first was evicted.
    assert_eq!(turn(299).await.header("x-keygate-affinity"), Some("kept"));
    assert_eq!(turn(0).await.header("x-keygate-affinity"), Some("new"));
    assert_eq!(status(&kg).await["affinity"]["sessions"], 50);
}

#[tokio::test]
async fn an_error_answer_never_moves_the_session() {
    let mock = MockProvider::start().await;
    let kg = keygate(&mock, "").await;
    let home = served(&turn(&kg, "conv-alpha", true).await);
    // Home is limited for a second; every other key answers 200 with an `overloaded` error
    // event before any content (which does not rotate by default): the answer is an error.
    mock.on_key(
        key_of(&home),
        Behaviour::Sequence(vec![
            Behaviour::status_with(
                429,
                &[("retry-after", "1")],
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"rate limited"}}"#,
            ),
            Behaviour::Normal,
        ]),
    );
    let start = anthropic_sse("claude-sonnet-4-5", 1).remove(0);
    let overloaded = Behaviour::Sse {
        events: vec![
            start,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n".to_owned(),
        ],
        delay: std::time::Duration::ZERO,
        end: End::Clean,
    };
    for k in [KA, KB, KC].into_iter().filter(|k| *k != key_of(&home)) {
        mock.on_key(k, overloaded.clone());
    }
    let mut body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": true});
    body["messages"] = json!([]);
    let a = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW), ("x-keygate-session", "conv-alpha")],
        &body,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text().contains("overloaded_error"), "{}", a.text());
    assert_ne!(a.header("x-keygate-credential"), Some(home.as_str()));
    assert_eq!(a.header("x-keygate-affinity"), Some("moved"));

    // Once home is usable again the session is still there: the error did not move it.
    mock.clear_rules();
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let a = turn(&kg, "conv-alpha", true).await;
    assert_eq!(served(&a), home);
    assert_eq!(a.header("x-keygate-affinity"), Some("kept"));
}
