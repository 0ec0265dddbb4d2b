//! Cluster mode (SPEC §10, issue 13): real `keygate serve` replicas sharing one key pool
//! through a real `redis-server`, against the mock provider.

mod support;

use std::time::Duration;

use tokio::time::Instant;

use hyper::Method;
use serde_json::{json, Value};
use support::gateway::GW;
use support::keygate::{post_json, providers_at, send};
use support::mock::{Behaviour, MockProvider};
use support::redis::Redis;
use support::served::Served;

const LIMITED: &str = "sk-test-cluster-limited-0001";
const OK: &str = "sk-test-cluster-good-0002";
const ADMIN: &str = "adm-test-cluster-0003";

fn limited_mock(mock: &MockProvider) {
    mock.on_key(
        LIMITED,
        Behaviour::status_with(
            429,
            &[("retry-after", "30")],
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
        ),
    );
}

/// `provider` lines go to `[providers.anthropic]`.
fn config_with(mock: &MockProvider, redis: &Redis, provider: &str) -> String {
    format!(
        "{}{provider}\n[cluster]\nredis_url = \"{}\"\nkey_prefix = \"kgtest:\"\n",
        providers_at(&mock.url(), &["anthropic"]),
        redis.url()
    )
}

/// A replica with the two env keys (limited first) and an admin token.
async fn replica(mock: &MockProvider, redis: &Redis) -> (Served, tempfile::TempDir) {
    replica_with(mock, redis, "").await
}

/// A replica whose `[providers.anthropic]` also has these lines.
async fn replica_with(
    mock: &MockProvider,
    redis: &Redis,
    provider: &str,
) -> (Served, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("tempdir");
    let kg = Served::start_with(
        state.path(),
        &config_with(mock, redis, provider),
        &[
            ("ANTHROPIC_API_KEYS", &format!("{LIMITED},{OK}")),
            ("KEYGATE_ADMIN_TOKEN", ADMIN),
        ],
        None,
    );
    assert!(
        kg.wait_log("keygate listening").await,
        "{}",
        kg.log.lock().unwrap()
    );
    (kg, state)
}

async fn ask(kg: &Served) -> support::keygate::Answer {
    post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW)],
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 1}),
    )
    .await
}

async fn status(kg: &Served) -> Value {
    let a = send(
        Method::GET,
        &kg.url("/_keygate/status"),
        &[("authorization", &format!("Bearer {ADMIN}"))],
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()
}

/// Waits (bounded) until `kg` shows a cooldown for the limited key.
async fn sees_cooldown(kg: &Served) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let s = status(kg).await;
        if s["cooldowns"].as_array().is_some_and(|c| {
            c.iter()
                .any(|w| w["credential"] == "env:ANTHROPIC_API_KEYS#1")
        }) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn metric(kg: &Served, name: &str) -> Option<f64> {
    let text = send(Method::GET, &kg.url("/metrics"), &[], "").await.text();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_rate_limit_one_replica_learns_is_never_sent_by_the_others_even_after_they_all_restart() {
    let redis = Redis::start();
    let mock = MockProvider::start().await;
    limited_mock(&mock);
    let (a, _sa) = replica(&mock, &redis).await;
    let (b, _sb) = replica(&mock, &redis).await;
    let (c, _sc) = replica(&mock, &redis).await;
    for kg in [&a, &b, &c] {
        assert_eq!(status(kg).await["cluster"]["connected"], true);
    }

    // A learns it from the provider: one 429, then the next key answers.
    let first = ask(&a).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(mock.requests_for_key(LIMITED), 1);

    // B and C skip it for the rest of the window without ever sending it.
    assert!(sees_cooldown(&b).await, "B never learned the window");
    assert!(sees_cooldown(&c).await, "C never learned the window");
    for kg in [&b, &c, &b, &c, &a] {
        let r = ask(kg).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("x-keygate-credential"),
            Some("env:ANTHROPIC_API_KEYS#2")
        );
    }
    assert_eq!(
        mock.requests_for_key(LIMITED),
        1,
        "a replica sent the limited key"
    );
    assert_eq!(metric(&a, "keygate_cluster_connected").await, Some(1.0));
    assert!(metric(&a, "keygate_cluster_events_total{direction=\"sent\"}").await >= Some(1.0));
    assert!(metric(&b, "keygate_cluster_events_total{direction=\"received\"}").await >= Some(1.0));
    // The last to start read every heartbeat when it joined.
    let s = status(&c).await;
    assert_eq!(
        s["cluster"]["replicas"].as_u64(),
        Some(3),
        "{}",
        s["cluster"]
    );

    // The window in Redis names no secret and no credential id.
    redis.assert_no_secret(&[LIMITED, OK, GW, ADMIN]);
    assert!(!redis.dump().contains("ANTHROPIC_API_KEYS"));

    // Every replica restarts: the window still holds.
    drop((a, b, c));
    let (d, _sd) = replica(&mock, &redis).await;
    let (e, _se) = replica(&mock, &redis).await;
    for kg in [&d, &e] {
        let r = ask(kg).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        mock.requests_for_key(LIMITED),
        1,
        "the window was lost on restart"
    );
}

#[tokio::test]
async fn redis_going_away_fails_no_request_and_its_return_resyncs_the_replicas() {
    let mut redis = Redis::start();
    let mock = MockProvider::start().await;
    limited_mock(&mock);
    let (a, _sa) = replica(&mock, &redis).await;
    let (b, _sb) = replica(&mock, &redis).await;

    // Load on both replicas while Redis goes away under it: no request fails.
    let urls = [
        a.url("/anthropic/v1/messages"),
        b.url("/anthropic/v1/messages"),
    ];
    let load: Vec<_> = (0..4)
        .map(|i| {
            let url = urls[i % 2].clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..15 {
                    let r = post_json(
                        &url,
                        &[("x-api-key", GW)],
                        &json!({"model": "claude-sonnet-4-5", "max_tokens": 1}),
                    )
                    .await;
                    statuses.push(r.status.as_u16());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(40)).await;
    redis.stop();
    for task in load {
        let statuses = task.await.expect("load task");
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    for kg in [&a, &b] {
        let r = ask(kg).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The limit was learned before Redis went (then shared) or by each replica on its own:
    // at most the first request of each of the 4 clients, all in flight at once.
    let learned = mock.requests_for_key(LIMITED);
    assert!((1..=4).contains(&learned), "{learned}");
    assert!(
        a.wait_log("Redis unreachable").await,
        "{}",
        a.log.lock().unwrap()
    );
    assert_eq!(
        a.log.lock().unwrap().matches("Redis unreachable").count(),
        1,
        "one warning per outage"
    );
    assert_eq!(metric(&a, "keygate_cluster_connected").await, Some(0.0));
    assert_eq!(status(&a).await["cluster"]["connected"], false);

    // Redis comes back empty: the replicas reconnect and push what they hold.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis.keys("kgtest:cd:*").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !redis.keys("kgtest:cd:*").is_empty(),
        "no window was re-synced"
    );
    // A replica that starts now learns it from Redis and never sends the limited key.
    let (c, _sc) = replica(&mock, &redis).await;
    let r = ask(&c).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.requests_for_key(LIMITED), learned);
    assert!(a.wait_log("cluster: connected to Redis").await);
}

#[test]
fn the_merge_script_keeps_the_later_end_and_expires_with_the_window() {
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).expect("client");
    let mut con = client.get_connection().expect("connection");
    let script = redis::Script::new(keygate::cluster::wire::MERGE_SCRIPT);
    let now = support::now_ms();
    // 1: written; 0: already over; -1: a later window is stored (its message comes back).
    let write = |con: &mut redis::Connection, key: &str, end: i64| -> i64 {
        let msg = json!({"end": end}).to_string();
        let got: redis::Value = script
            .key(key)
            .arg(end)
            .arg(msg)
            .arg("kgtest:events")
            .invoke(con)
            .expect("script");
        match got {
            redis::Value::Int(n) => n,
            redis::Value::BulkString(b) => {
                let stored: Value = serde_json::from_slice(&b).expect("the stored message");
                assert!(stored["end"].as_i64() > Some(end), "{stored}");
                -1
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(write(&mut con, "kgtest:cd:x", now + 10_000), 1);
    assert_eq!(
        write(&mut con, "kgtest:cd:x", now + 5_000),
        -1,
        "an earlier end lost"
    );
    assert_eq!(
        write(&mut con, "kgtest:cd:x", now + 20_000),
        1,
        "a later end wins"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg("kgtest:cd:x")
        .query(&mut con)
        .expect("pttl");
    assert!((15_000..=20_000).contains(&ttl), "{ttl}");
    let stored: String = redis::cmd("GET")
        .arg("kgtest:cd:x")
        .query(&mut con)
        .expect("get");
    assert!(stored.contains(&(now + 20_000).to_string()));

    // A short window leaves nothing behind.
    assert_eq!(write(&mut con, "kgtest:cd:y", support::now_ms() + 150), 1);
    std::thread::sleep(Duration::from_millis(400));
    let gone: Option<String> = redis::cmd("GET")
        .arg("kgtest:cd:y")
        .query(&mut con)
        .expect("get");
    assert_eq!(gone, None);
    // An ended window is never written.
    assert_eq!(write(&mut con, "kgtest:cd:z", support::now_ms() - 1), 0);
}

#[tokio::test]
async fn cluster_status_lists_the_replicas_and_the_shared_windows_masked() {
    let redis = Redis::start();
    let mock = MockProvider::start().await;
    limited_mock(&mock);
    let (a, sa) = replica(&mock, &redis).await;
    assert_eq!(ask(&a).await.status, 200);
    let cfg = sa.path().join("keygate-test.toml");
    let keys = format!("{LIMITED},{OK}");
    let cluster_status = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            cfg.to_str().expect("utf-8"),
            "cluster",
            "status",
        ];
        args.extend_from_slice(extra);
        support::cli::keygate(sa.path(), &args, &[("ANTHROPIC_API_KEYS", &keys)], "")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let run = loop {
        let run = cluster_status(&["--json"]);
        let done = run.code == 0
            && run.json()["cooldowns"]
                .as_array()
                .is_some_and(|c| !c.is_empty());
        if done || Instant::now() > deadline {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    run.ok().assert_no_secret(&[LIMITED, OK]);
    let doc = run.json();
    assert_eq!(doc["connected"], true);
    assert_eq!(doc["replicas"].as_array().map(Vec::len), Some(1), "{doc}");
    let w = &doc["cooldowns"][0];
    assert_eq!(w["credential"], "env:ANTHROPIC_API_KEYS#1", "{doc}");
    assert_eq!(w["masked"], "…0001");
    assert_eq!(w["reason"], "rate_limit");
    assert_eq!(w["model"], "claude-sonnet-4-5");

    let text = cluster_status(&[]);
    text.ok().assert_no_secret(&[LIMITED, OK]);
    assert!(
        text.stdout.contains("replicas seen in the last 60 s: 1"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("env:ANTHROPIC_API_KEYS#1 (…0001)"),
        "{}",
        text.stdout
    );

    // Redis away: exit 1 and a message that names the URL without a password.
    drop(a);
    drop(redis);
    let down = cluster_status(&[]);
    assert_eq!(down.code, 1, "{down:?}");
    assert!(
        down.stderr
            .contains("cannot reach Redis at redis://127.0.0.1:"),
        "{down:?}"
    );
}

/// `n` requests spread round-robin over `replicas`, `parallel` at a time; the answers'
/// statuses in order of completion.
async fn burst(replicas: &[&Served], n: usize, parallel: usize) -> Vec<support::keygate::Answer> {
    use futures_util::StreamExt;
    futures_util::stream::iter((0..n).map(|i| ask(replicas[i % replicas.len()])))
        .buffer_unordered(parallel)
        .collect()
        .await
}

/// A 429 of keygate's own (every credential at its rpm), not a provider's answer.
fn is_all_cooling(a: &support::keygate::Answer) -> bool {
    a.status == 429
        && a.header("retry-after").is_some()
        && a.header("x-keygate-credential").is_none()
        && a.text().contains("No available credential")
}

#[tokio::test]
async fn rpm_counts_across_the_replicas_and_every_request_still_gets_an_answer() {
    let redis = Redis::start();
    let mock = MockProvider::start().await;
    let (a, _sa) = replica_with(&mock, &redis, "rpm = 60\n").await;
    let (b, _sb) = replica_with(&mock, &redis, "rpm = 60\n").await;
    let (c, _sc) = replica_with(&mock, &redis, "rpm = 60\n").await;
    for kg in [&a, &b, &c] {
        assert_eq!(status(kg).await["cluster"]["connected"], true);
    }

    // 150 requests within a few seconds: each replica alone would send 50 on the first key
    // (under its local 60); across the cluster the first key takes 60, the second the next
    // 60, and the rest are keygate's own 429s.
    let answers = burst(&[&a, &b, &c], 150, 12).await;
    let ok = answers.iter().filter(|r| r.status == 200).count();
    for r in &answers {
        assert!(
            r.status == 200 || is_all_cooling(r),
            "{} {:?} {}",
            r.status,
            r.headers,
            r.text()
        );
    }
    let (first, second) = (mock.requests_for_key(LIMITED), mock.requests_for_key(OK));
    assert!(
        first <= 60,
        "the first key got {first} requests in a minute"
    );
    assert!(
        second <= 60,
        "the second key got {second} requests in a minute"
    );
    assert_eq!(first + second, ok, "an answer that is no upstream's");
    assert!(
        ok >= 110,
        "the cluster budget was mostly lost: {ok} served ({first} + {second})"
    );

    // The logs are in Redis under shared ids, with the window's TTL, and name no secret.
    let logs = redis.keys("kgtest:rpm:*");
    assert_eq!(logs.len(), 2, "{logs:?}");
    for k in &logs {
        let ttl: i64 = redis
            .command(&["PTTL", k])
            .and_then(|r| r.trim().trim_start_matches(':').parse().ok())
            .expect("pttl");
        assert!((1..=60_000).contains(&ttl), "{k}: {ttl}");
    }
    redis.assert_no_secret(&[LIMITED, OK, GW, ADMIN]);
    assert!(!redis.dump().contains("ANTHROPIC_API_KEYS"));
}

#[tokio::test]
async fn max_in_flight_counts_across_the_replicas_and_slots_come_back_when_answers_end() {
    let redis = Redis::start();
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::delayed(
        Duration::from_millis(1500),
        Behaviour::Normal,
    ));
    let cfg = "max_in_flight = 1\n[rotation]\nmax_wait = \"0s\"\n";
    let (a, _sa) = replica_with(&mock, &redis, cfg).await;
    let (b, _sb) = replica_with(&mock, &redis, cfg).await;
    for kg in [&a, &b] {
        assert_eq!(status(kg).await["cluster"]["connected"], true);
    }
    // Replica a takes both keys' only slot; replica b finds them held cluster-wide.
    let busy = {
        let url = a.url("/anthropic/v1/messages");
        let one = move || {
            let url = url.clone();
            async move {
                post_json(
                    &url,
                    &[("x-api-key", GW)],
                    &json!({"model": "claude-sonnet-4-5", "max_tokens": 1}),
                )
                .await
            }
        };
        (tokio::spawn(one()), tokio::spawn(one()))
    };
    assert!(mock.wait_in_flight(2, Duration::from_secs(5)).await);
    let refused = ask(&b).await;
    assert!(
        is_all_cooling(&refused),
        "{} {}",
        refused.status,
        refused.text()
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.text().contains("max_in_flight"),
        "{}",
        refused.text()
    );
    assert_eq!(mock.requests().len(), 2, "b sent nothing");
    assert_eq!(busy.0.await.expect("task").status, 200);
    assert_eq!(busy.1.await.expect("task").status, 200);
    for key in [LIMITED, OK] {
        assert_eq!(mock.peak_in_flight_for_key(key), 1, "one at a time per key");
    }
    // The leases went back with the answers (in the background, bounded): b serves again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = ask(&b).await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a slot never came back: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_redis_stopped_rpm_holds_per_replica_and_no_request_fails() {
    let mut redis = Redis::start();
    let mock = MockProvider::start().await;
    let (a, _sa) = replica_with(&mock, &redis, "rpm = 5\n").await;
    let (b, _sb) = replica_with(&mock, &redis, "rpm = 5\n").await;
    let (c, _sc) = replica_with(&mock, &redis, "rpm = 5\n").await;
    redis.stop();

    // Each replica on its own: two keys at 5 a minute serve 10 of its 15 requests.
    for kg in [&a, &b, &c] {
        let before = mock.requests().len();
        let mut ok = 0;
        for _ in 0..15 {
            let r = ask(kg).await;
            assert!(
                r.status == 200 || is_all_cooling(&r),
                "{} {}",
                r.status,
                r.text()
            );
            ok += usize::from(r.status == 200);
        }
        assert_eq!(ok, 10, "the local rpm did not hold");
        assert_eq!(mock.requests().len() - before, 10);
    }
    assert_eq!(mock.requests_for_key(LIMITED), 15);
    assert_eq!(mock.requests_for_key(OK), 15);
}

/// A multiplexed connection to `redis` and slot calls for replica `me` on it.
async fn slots(redis: &Redis, me: &str) -> std::sync::Arc<keygate::cluster::Slots> {
    let client = redis::Client::open(redis.url()).expect("client");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let s = keygate::cluster::Slots::new("kgtest:", me);
    s.attach(Some(conn));
    s
}

#[tokio::test]
async fn the_rpm_window_admits_its_limit_and_a_slow_or_absent_redis_decides_locally() {
    use keygate::cluster::{Slot, Slots};
    let redis = Redis::start();
    let (a, b) = (slots(&redis, "a").await, slots(&redis, "b").await);
    let cred = [7u8; 16];
    for s in [&a, &b, &a] {
        assert_eq!(s.rpm(&cred, 3).await, Slot::Granted);
    }
    match b.rpm(&cred, 3).await {
        Slot::Refused(wait) => assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        ),
        other => panic!("a fourth request in a minute: {other:?}"),
    }
    // Another credential has its own window.
    assert_eq!(a.rpm(&[8u8; 16], 3).await, Slot::Granted);

    // Not connected: local.
    let away = Slots::new("kgtest:", "c");
    assert_eq!(away.rpm(&cred, 3).await, Slot::Local);

    // Slow: local after the slot timeout, then local at once while Redis is left alone.
    redis
        .command(&["CLIENT", "PAUSE", "700", "ALL"])
        .expect("pause");
    let t = Instant::now();
    assert_eq!(a.rpm(&[9u8; 16], 3).await, Slot::Local);
    let waited = t.elapsed();
    assert!(
        waited >= keygate::cluster::slots::SLOT_TIMEOUT && waited < Duration::from_millis(400),
        "{waited:?}"
    );
    let t = Instant::now();
    assert_eq!(a.rpm(&[9u8; 16], 3).await, Slot::Local);
    assert!(t.elapsed() < Duration::from_millis(20));
    tokio::time::sleep(keygate::cluster::slots::QUIET + Duration::from_millis(100)).await;
    assert_eq!(a.rpm(&[9u8; 16], 3).await, Slot::Granted);

    // The added latency of a slot call on loopback (measured, reported, bounded).
    let mut took: Vec<Duration> = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        assert_eq!(b.rpm(&[10u8; 16], 100_000).await, Slot::Granted);
        took.push(t.elapsed());
    }
    took.sort();
    let (p50, p99) = (took[500], took[990]);
    eprintln!(
        "rpm slot call on loopback: p50 {p50:?}, p99 {p99:?}, max {:?}",
        took[999]
    );
    assert!(p99 < keygate::cluster::slots::SLOT_TIMEOUT, "p99 {p99:?}");
}

#[tokio::test]
async fn in_flight_leases_hold_while_refreshed_and_a_dead_replicas_free_within_their_ttl() {
    use keygate::cluster::Leased;
    let redis = Redis::start();
    let (a, b) = (slots(&redis, "a").await, slots(&redis, "b").await);
    let cred = [3u8; 16];
    let ttl = Duration::from_millis(300);
    let take = |s: &std::sync::Arc<keygate::cluster::Slots>| {
        let s = s.clone();
        async move { s.lease(&cred, 2, ttl).await }
    };
    let (Leased::Held(l1), Leased::Held(l2)) = (take(&a).await, take(&a).await) else {
        panic!("two slots of two")
    };
    assert!(matches!(take(&b).await, Leased::Refused), "a third slot");

    // Refreshed while held: still taken well past the TTL.
    tokio::time::sleep(ttl * 3).await;
    assert!(
        matches!(take(&b).await, Leased::Refused),
        "a held lease expired"
    );
    // (Asked without blocking the runtime, which runs the refreshes.)
    let pttl = |key: String| {
        let url = redis.url();
        async move {
            let client = redis::Client::open(url).expect("client");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connection");
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .expect("pttl")
        }
    };
    let left = pttl(format!("kgtest:slots:{}", "03".repeat(16))).await;
    assert!((1..=300).contains(&left), "{left}");

    // A replica that dies stops refreshing: its slot frees within the TTL.
    l1.abandon();
    let t = Instant::now();
    let l3 = loop {
        if let Leased::Held(l) = take(&b).await {
            break l;
        }
        assert!(t.elapsed() < ttl * 2, "a dead replica's slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        t.elapsed() >= ttl / 2,
        "freed before it expired: {:?}",
        t.elapsed()
    );

    // A lease given back frees at once.
    l2.release().await;
    let Leased::Held(l4) = take(&b).await else {
        panic!("a released slot is still taken")
    };
    assert!(matches!(take(&a).await, Leased::Refused));
    // Dropped: released in the background.
    drop((l3, l4));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(take(&a).await, Leased::Held(_)));

    // A TTL past 30 s is cut to 30 s.
    let Leased::Held(long) = a.lease(&[4u8; 16], 1, Duration::from_secs(600)).await else {
        panic!("free slot")
    };
    let left = pttl(format!("kgtest:slots:{}", "04".repeat(16))).await;
    assert!((29_000..=30_000).contains(&left), "{left}");
    long.release().await;
}
