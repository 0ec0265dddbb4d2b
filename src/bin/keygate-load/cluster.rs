//! The cluster scenarios (SPEC §10, issue 13): keygate replicas sharing one key pool through
//! one `redis-server` the harness starts.
//!
//! - `cluster_rotation`: 1, 2 and 4 replicas (and 4 without `[cluster]`, for contrast) on 4
//!   keys of which 2 always answer 429 with `retry-after: 30`; a closed-loop load spread
//!   over the replicas, replica `k` joining `k × 100 ms` after the first, its workers 1 ms
//!   apart. Reports 429s per limited key and window against the requests that had reached
//!   that key when its first 429 left the mock.
//! - `cluster_propagation`: per trial a fresh model (a fresh model-scoped window); the
//!   limited request goes to replica A while the harness polls replica B's
//!   `/_keygate/status`; the time from the mock sending the 429 (wall clock) to B's status
//!   first showing the window.
//!
//! The CPU comparison (cluster on vs off) is `cluster_overhead`, in the harness's
//! `overhead` code.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::load::{self, LoadClient};
use super::procs::{KeygateOpts, Proc};
use super::redis::Redis;
use super::{mock, round, spec, Args, Plan, CHAT_BODY};

/// The pool of both scenarios, in `ordered` order: the limited keys are tried first.
const ROTATION_KEYS: &str = "sk-lim-1,sk-lim-2,sk-ok-3,sk-ok-4";
/// `retry-after` of the limited keys in `cluster_rotation` (one window per run).
const ROTATION_RETRY_AFTER_S: u64 = 30;
/// How long the mock holds every answer (429s too), so requests are really in flight.
const ROTATION_DELAY_MS: u64 = 5;
/// Admin token of the replicas in `cluster_propagation` (a test value, never printed).
const ADMIN: &str = "adm-keygate-load-cluster";

/// Starts `n` replicas on `mock` with `toml` appended and `env`; when `toml` has a
/// `[cluster]`, waits (at most 5 s each) until each says it is connected.
fn replicas(
    args: &Args,
    mock: &Proc,
    n: usize,
    toml: &str,
    env: &[(String, String)],
) -> Result<Vec<Proc>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Proc::keygate(&KeygateOpts {
            bin: args.keygate_bin.as_deref(),
            log: &args.keygate_log,
            log_format: &args.keygate_log_format,
            upstream: mock.addr,
            extra_toml: toml,
            env: env.to_vec(),
            profiles: None,
            https: false,
        })?);
    }
    if toml.contains("[cluster]") {
        for r in &out {
            r.wait_log("cluster: connected to Redis", Duration::from_secs(5))?;
        }
    }
    Ok(out)
}

/// A key prefix of its own per case, so cases on one Redis share nothing.
fn prefix(case: &str) -> String {
    format!("kgload-{}-{case}:", std::process::id())
}

/// A plain GET or POST with an empty or small body; status, headers and body (bounded: 5 s).
async fn call(
    client: &LoadClient,
    method: Method,
    uri: &str,
    bearer: Option<&str>,
) -> Result<(u16, http::HeaderMap, Bytes), String> {
    let mut r = Request::new(Full::new(Bytes::new()));
    *r.method_mut() = method;
    *r.uri_mut() = uri.parse().map_err(|e| format!("uri {uri}: {e}"))?;
    if let Some(t) = bearer {
        let v = http::HeaderValue::try_from(format!("Bearer {t}"))
            .map_err(|e| format!("header: {e}"))?;
        r.headers_mut().insert(header::AUTHORIZATION, v);
    }
    let fut = async {
        let resp = client.request(r).await.map_err(|e| format!("send: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| format!("{uri}: timeout"))?
}

/// The mock's `/__stats`.
async fn mock_stats(client: &LoadClient, mock: &Proc) -> Result<Value, String> {
    let (_, _, body) = call(
        client,
        Method::GET,
        &format!("http://{}/__stats", mock.addr),
        None,
    )
    .await?;
    serde_json::from_slice(&body).map_err(|e| format!("stats json: {e}"))
}

async fn mock_reset(client: &LoadClient, mock: &Proc) -> Result<(), String> {
    call(
        client,
        Method::POST,
        &format!("http://{}/__reset", mock.addr),
        None,
    )
    .await
    .map(|_| ())
}

/// A chat body for `model`.
fn body_for(model: &str) -> Bytes {
    Bytes::from(CHAT_BODY.replacen("gpt-load", model, 1))
}

/// `cluster_rotation`: see the module docs.
pub(crate) fn rotation(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    plan: &Plan,
) -> Result<Vec<Value>, String> {
    let redis = Redis::start()?;
    let client = load::client();
    let env = vec![("OPENAI_API_KEYS".to_owned(), ROTATION_KEYS.to_owned())];
    let conc = plan.cluster_conc;
    let stagger = Duration::from_millis(1);
    let join = Duration::from_millis(100);
    let mut lines = Vec::new();
    let mut by_n = serde_json::Map::new();
    for (n, clustered) in [(1, true), (2, true), (4, true), (4, false)] {
        let mock = Proc::helper(
            "mock",
            &[
                "--mock".to_owned(),
                "--retry-after".to_owned(),
                ROTATION_RETRY_AFTER_S.to_string(),
            ],
        )?;
        let toml = if clustered {
            redis.cluster_toml(&prefix(&format!("rot{n}")))
        } else {
            String::new()
        };
        let reps = replicas(args, &mock, n, &toml, &env)?;
        // Warm-up on another model (windows are per model): connections open, pools built.
        for r in &reps {
            let s = spec(r.addr, "json", body_for("gpt-warm"), 0)?;
            rt.block_on(load::closed_loop(&client, &s, 2, 8, Duration::from_secs(2)));
        }
        rt.block_on(mock_reset(&client, &mock))?;
        let specs = reps
            .iter()
            .map(|r| spec(r.addr, "json", body_for("gpt-load"), ROTATION_DELAY_MS))
            .collect::<Result<Vec<_>, _>>()?;
        // Worker i: replica i % n, joining with its replica, 1 ms after the previous one.
        let start_of = |i: usize| {
            let (k, j) = (i % n, i / n);
            join * k as u32 + stagger * j as u32
        };
        let run = rt.block_on(load::spread(
            &client, &specs, conc, plan.max, plan.dur, start_of,
        ));
        let stats = rt.block_on(mock_stats(&client, &mock))?;
        let mut limited = serde_json::Map::new();
        let (mut max_per_window, mut max_excess, mut bound_met) = (0.0f64, 0i64, true);
        for key in ["sk-lim-1", "sk-lim-2"] {
            let k = &stats["keys"][key];
            let r429 = k["r429"].as_u64().unwrap_or(0);
            let windows = k["bursts"].as_u64().unwrap_or(0).max(1);
            let before = k["arrived_before_first_429"].as_u64().unwrap_or(0);
            let per_window = r429 as f64 / windows as f64;
            let excess = r429 as i64 - before as i64;
            max_per_window = max_per_window.max(per_window);
            max_excess = max_excess.max(excess);
            bound_met &= r429 <= before && windows == 1;
            limited.insert(
                key.to_owned(),
                json!({
                    "r429": r429,
                    "windows": windows,
                    "r429_per_window": round(per_window, 2),
                    "in_flight_at_first_429": before,
                    "excess_429": excess,
                }),
            );
        }
        let upstream = stats["requests"].as_u64().unwrap_or(0);
        let attempts = run.attempts as f64 / run.ok.max(1) as f64;
        let mut m = json!({
            "scenario": "cluster_rotation",
            "target": "keygate",
            "replicas": n,
            "cluster": clustered,
            "keys": 4,
            "limited_keys": 2,
            "retry_after_s": ROTATION_RETRY_AFTER_S,
            "mock_delay_ms": ROTATION_DELAY_MS,
            "concurrency": conc,
            "stagger_ms": stagger.as_millis() as u64,
            "replica_join_ms": join.as_millis() as u64,
            "requests": run.total(),
            "success_rate": run.success_rate(),
            "rps": round(run.rps(), 1),
            "attempts_per_success": round(attempts, 4),
            "upstream_requests": upstream,
            "upstream_attempts_per_request": round(upstream as f64 / run.total().max(1) as f64, 4),
            "limited": limited,
            "max_429_per_key_window": round(max_per_window, 2),
            "max_excess_429": max_excess,
            "bound_met": bound_met,
            "success_met": run.success_rate() >= 1.0,
            "attempts_met": attempts <= 1.01,
        });
        if let Some(e) = &run.first_error {
            m["first_error"] = json!(e);
        }
        if clustered {
            by_n.insert(n.to_string(), json!(round(max_per_window, 2)));
        }
        lines.push(m);
        drop(reps);
        drop(mock);
    }
    lines.push(json!({
        "scenario": "cluster_rotation",
        "target": "summary",
        "max_429_per_key_window_by_replicas": by_n,
    }));
    drop(redis);
    Ok(lines)
}

/// Whether a `/_keygate/status` document shows a window for the first key and `model`.
fn shows_window(doc: &[u8], model: &str) -> bool {
    serde_json::from_slice::<Value>(doc).is_ok_and(|v| {
        v["cooldowns"].as_array().is_some_and(|ws| {
            ws.iter()
                .any(|w| w["credential"] == "env:OPENAI_API_KEYS#1" && w["model"] == model)
        })
    })
}

/// One trial's figures, µs.
struct Trial {
    /// Mock sent the 429 → B's status showed the window.
    propagation: u64,
    /// Duration of the status poll that showed it (the resolution of `propagation`).
    poll: u64,
}

/// `cluster_propagation`: see the module docs.
pub(crate) fn propagation(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    plan: &Plan,
) -> Result<Vec<Value>, String> {
    let redis = Redis::start()?;
    // Short windows keep the status documents B serves small (≤ ≈ 60 live windows).
    let mock = Proc::helper(
        "mock",
        &[
            "--mock".to_owned(),
            "--retry-after".to_owned(),
            "1".to_owned(),
        ],
    )?;
    let env = vec![
        ("OPENAI_API_KEYS".to_owned(), "sk-lim-1,sk-ok-2".to_owned()),
        ("KEYGATE_ADMIN_TOKEN".to_owned(), ADMIN.to_owned()),
    ];
    let reps = replicas(args, &mock, 2, &redis.cluster_toml(&prefix("prop")), &env)?;
    let client = load::client();
    for r in &reps {
        let s = spec(r.addr, "json", body_for("gpt-warm"), 0)?;
        rt.block_on(load::closed_loop(&client, &s, 2, 8, Duration::from_secs(2)));
    }
    let mut trials = Vec::new();
    let (mut missed, mut not_skipped, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let end = Instant::now() + Duration::from_secs(20);
    for i in 0..plan.trials {
        if Instant::now() > end {
            break;
        }
        let (a, b) = if i % 2 == 0 {
            (&reps[0], &reps[1])
        } else {
            (&reps[1], &reps[0])
        };
        let model = format!("gpt-prop-{i}");
        let r = rt.block_on(trial(&client, &mock, a, b, &model));
        match r {
            Ok((Some(t), skipped)) => {
                trials.push(t);
                not_skipped += u64::from(!skipped);
            }
            Ok((None, _)) => missed += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    let mut prop: Vec<u64> = trials.iter().map(|t| t.propagation).collect();
    let mut poll: Vec<u64> = trials.iter().map(|t| t.poll).collect();
    let p = |v: &mut Vec<u64>, q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        round(v[rank - 1] as f64 / 1000.0, 3)
    };
    let p99 = p(&mut prop, 0.99);
    let mut m = json!({
        "scenario": "cluster_propagation",
        "target": "keygate",
        "replicas": 2,
        "measured": "mock sent the 429 to A (wall clock) -> B's /_keygate/status first shows the window",
        "trials": trials.len() as u64 + missed + failed,
        "seen": trials.len(),
        "missed_within_2s": missed,
        "failed": failed,
        "b_sent_limited_key_after_seeing": not_skipped,
        "p50_ms": p(&mut prop, 0.5),
        "p90_ms": p(&mut prop, 0.9),
        "p99_ms": p99,
        "max_ms": p(&mut prop, 1.0),
        "status_poll_p50_ms": p(&mut poll, 0.5),
        "status_poll_p99_ms": p(&mut poll, 0.99),
        "p99_target_ms": 50,
        "p99_met": p99 <= 50.0 && missed == 0 && failed == 0,
    });
    if let Some(e) = first_error {
        m["first_error"] = json!(e);
    }
    drop(client);
    drop(reps);
    drop(mock);
    drop(redis);
    Ok(vec![m])
}

/// One trial: the limited request to `a` while `b`'s status is polled; then one request to
/// `b` for the same model, which must go straight to the second key. `None`: `b` did not
/// show the window within 2 s.
async fn trial(
    client: &LoadClient,
    mock: &Proc,
    a: &Proc,
    b: &Proc,
    model: &str,
) -> Result<(Option<Trial>, bool), String> {
    let s = spec(a.addr, "json", body_for(model), 0)?;
    let limited_req = {
        let client = client.clone();
        tokio::spawn(async move {
            let resp = client
                .request(load::request(&s))
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            Ok::<_, String>(status)
        })
    };
    let status_uri = format!("http://{}/_keygate/status", b.addr);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = None;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let (code, _, doc) = call(client, Method::GET, &status_uri, Some(ADMIN)).await?;
        if code != 200 {
            return Err(format!("status of B answered {code}"));
        }
        if shows_window(&doc, model) {
            seen = Some((mock::epoch_us(), t0.elapsed()));
            break;
        }
    }
    let a_status = limited_req.await.map_err(|e| format!("task: {e}"))??;
    if !a_status.is_success() {
        return Err(format!("A answered {a_status}"));
    }
    let Some((seen_us, poll)) = seen else {
        return Ok((None, false));
    };
    let stats = mock_stats(client, mock).await?;
    let sent_us = stats["keys"]["sk-lim-1"]["last_429_epoch_us"]
        .as_u64()
        .unwrap_or(0);
    // B skips the key: straight to the second one, one attempt.
    let s = spec(b.addr, "json", body_for(model), 0)?;
    let resp = client
        .request(load::request(&s))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let skipped = resp.status().is_success()
        && resp
            .headers()
            .get("x-keygate-credential")
            .is_some_and(|v| v == "env:OPENAI_API_KEYS#2")
        && resp
            .headers()
            .get("x-keygate-attempts")
            .is_some_and(|v| v == "1");
    let _ = resp.into_body().collect().await;
    Ok((
        Some(Trial {
            propagation: seen_us.saturating_sub(sent_us),
            poll: u64::try_from(poll.as_micros()).unwrap_or(u64::MAX),
        }),
        skipped,
    ))
}
