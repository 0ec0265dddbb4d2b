//! The `sessions` scenario (SPEC §11 session affinity, issue 14): agent conversations over a
//! pool of stored keys, one of them limited half-way through.
//!
//! 50 conversations (10 with `--quick`) run at once, each 20 turns (6) one after the other,
//! each naming itself by `prompt_cache_key` as the OpenAI SDKs do. The pool is four stored
//! `api_key` profiles (§5 takes them least recently used first); the first, `openai:k1`,
//! starts answering 429 (`retry-after: 600`) when half of all turns are done. Per round (10;
//! 1 with `--quick`) a fresh keygate with affinity on and one with `affinity = "off"` run
//! the same conversations (the order alternates per round), each measured for its own CPU
//! (threads' `schedstat`, nanoseconds).
//!
//! Reported per target: the share of turns (after a conversation's first) served by the
//! credential that served its previous turn — over every turn, and over the turns not
//! forced off by the cooldown (the previous credential was the limited key and the limit
//! had begun) — plus the `x-keygate-affinity` counts and CPU per 1 000 requests; then one
//! `"target":"affinity/off"` line with the CPU ratio over all rounds and its spread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::load::{self, LoadClient};
use super::procs::{KeygateOpts, Proc};
use super::{round, Args, CHAT_BODY};

/// The profile id of the key that is limited half-way.
const LIMITED: &str = "openai:k1";

/// Sizes of the scenario.
struct Shape {
    conversations: usize,
    turns: usize,
    rounds: usize,
}

/// One turn as the client saw it.
struct Turn {
    ok: bool,
    credential: Option<String>,
    affinity: Option<String>,
    /// The limit had begun by the time the answer came.
    after_limit: bool,
}

/// One target's totals over its rounds.
#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    /// Turns after a conversation's first.
    follow_ups: u64,
    kept: u64,
    forced: u64,
    kept_unforced: u64,
    new: u64,
    kept_header: u64,
    moved: u64,
    cpu_s: f64,
    /// CPU per 1 000 requests, per round.
    per_round: Vec<f64>,
}

fn profiles() -> String {
    let keys = ["sk-flip-1", "sk-ok-2", "sk-ok-3", "sk-ok-4"];
    let profiles: serde_json::Map<String, Value> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                format!("openai:k{}", i + 1),
                json!({"type": "api_key", "provider": "openai", "key": k}),
            )
        })
        .collect();
    json!({"version": 1, "profiles": profiles}).to_string()
}

/// A plain POST with an empty body to the mock (bounded: 5 s).
async fn post(client: &LoadClient, uri: &str) -> Result<(), String> {
    let mut r = Request::new(Full::new(Bytes::new()));
    *r.method_mut() = Method::POST;
    *r.uri_mut() = uri.parse().map_err(|e| format!("uri {uri}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(r))
        .await
        .map_err(|_| format!("{uri}: timeout"))?
        .map_err(|e| format!("{uri}: {e}"))?;
    let _ = resp.into_body().collect().await;
    Ok(())
}

/// The body of conversation `name`: the harness's chat body with its `prompt_cache_key`.
fn body_of(name: &str) -> Bytes {
    let tail = format!(r#","prompt_cache_key":"{name}"}}"#);
    let mut b = CHAT_BODY.trim_end_matches('}').to_owned();
    b.push_str(&tail);
    Bytes::from(b)
}

async fn turn(client: &LoadClient, uri: &http::Uri, body: Bytes) -> (bool, http::HeaderMap) {
    let mut r = Request::new(Full::new(body));
    *r.method_mut() = Method::POST;
    *r.uri_mut() = uri.clone();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let fut = async {
        let resp = client.request(r).await.ok()?;
        let (parts, body) = resp.into_parts();
        let full = body.collect().await.is_ok();
        Some((parts.status.is_success() && full, parts.headers))
    };
    match tokio::time::timeout(load::REQUEST_TIMEOUT, fut).await {
        Ok(Some(r)) => r,
        _ => (false, http::HeaderMap::new()),
    }
}

/// Runs every conversation once against `kg`; limits `openai:k1` at the mock half-way.
async fn conversations(
    client: &LoadClient,
    kg: &Proc,
    mock: &Proc,
    shape: &Shape,
    tag: &str,
) -> Result<Vec<Vec<Turn>>, String> {
    post(client, &format!("http://{}/__reset", mock.addr)).await?;
    let uri: http::Uri = format!("http://{}/openai/v1/chat/completions", kg.addr)
        .parse()
        .map_err(|e| format!("uri: {e}"))?;
    let total = shape.conversations * shape.turns;
    let done = Arc::new(AtomicUsize::new(0));
    let limited_at = Arc::new(OnceLock::<Instant>::new());
    let flip = format!("http://{}/__flip", mock.addr);
    let mut tasks = Vec::with_capacity(shape.conversations);
    for c in 0..shape.conversations {
        let (client, uri, done, limited_at, flip) = (
            client.clone(),
            uri.clone(),
            done.clone(),
            limited_at.clone(),
            flip.clone(),
        );
        let body = body_of(&format!("conv-{tag}-{c}"));
        let turns = shape.turns;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(turns);
            for _ in 0..turns {
                let (ok, h) = turn(&client, &uri, body.clone()).await;
                let header =
                    |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                out.push(Turn {
                    ok,
                    credential: header("x-keygate-credential"),
                    affinity: header("x-keygate-affinity"),
                    after_limit: limited_at.get().is_some(),
                });
                if done.fetch_add(1, Ordering::AcqRel) + 1 == total / 2 {
                    // Half of all turns are done: the first key starts answering 429.
                    if post(&client, &flip).await.is_ok() {
                        let _ = limited_at.set(Instant::now());
                    }
                }
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(tasks.len());
    for t in tasks {
        all.push(t.await.map_err(|e| format!("conversation task: {e}"))?);
    }
    if limited_at.get().is_none() {
        return Err("the limit never began".into());
    }
    Ok(all)
}

fn tally(t: &mut Tally, convs: &[Vec<Turn>]) {
    for conv in convs {
        for (i, turn) in conv.iter().enumerate() {
            t.requests += 1;
            if !turn.ok {
                t.errors += 1;
            }
            match turn.affinity.as_deref() {
                Some("new") => t.new += 1,
                Some("kept") => t.kept_header += 1,
                Some("moved") => t.moved += 1,
                _ => {}
            }
            let Some(prev) = i.checked_sub(1).map(|p| &conv[p]) else {
                continue;
            };
            t.follow_ups += 1;
            let kept = turn.credential.is_some() && turn.credential == prev.credential;
            // Forced off: the previous credential is the limited key and the limit has
            // begun (the turn could not stay where it was).
            let forced = turn.after_limit && prev.credential.as_deref() == Some(LIMITED);
            t.kept += u64::from(kept);
            if forced {
                t.forced += 1;
            } else {
                t.kept_unforced += u64::from(kept);
            }
        }
    }
}

fn line(name: &str, shape: &Shape, t: &Tally) -> Value {
    let unforced = t.follow_ups - t.forced;
    json!({
        "scenario": "sessions",
        "target": name,
        "conversations": shape.conversations,
        "turns": shape.turns,
        "rounds": shape.rounds,
        "keys": 4,
        "requests": t.requests,
        "errors": t.errors,
        "kept_share": round(t.kept as f64 / t.follow_ups.max(1) as f64, 4),
        "kept_share_unforced": round(t.kept_unforced as f64 / unforced.max(1) as f64, 4),
        "forced_turns": t.forced,
        "affinity_new": t.new,
        "affinity_kept": t.kept_header,
        "affinity_moved": t.moved,
        "cpu_s_per_1k": round(t.cpu_s * 1000.0 / t.requests.max(1) as f64, 4),
    })
}

/// `sessions`: see the module docs.
pub(crate) fn sessions(rt: &tokio::runtime::Runtime, args: &Args) -> Result<Vec<Value>, String> {
    let shape = if args.quick {
        Shape {
            conversations: 10,
            turns: 6,
            rounds: 1,
        }
    } else {
        Shape {
            conversations: 50,
            turns: 20,
            rounds: 10,
        }
    };
    let mock = Proc::helper(
        "mock",
        &[
            "--mock".to_owned(),
            "--retry-after".to_owned(),
            "600".to_owned(),
        ],
    )?;
    let client = load::client();
    let profiles = profiles();
    let mut on = Tally::default();
    let mut off = Tally::default();
    for r in 0..shape.rounds {
        // Alternate which goes first, so a drift of the machine favours neither.
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for affinity in order {
            let kg = Proc::keygate(&KeygateOpts {
                bin: args.keygate_bin.as_deref(),
                log: &args.keygate_log,
                log_format: &args.keygate_log_format,
                upstream: mock.addr,
                extra_toml: if affinity {
                    ""
                } else {
                    "[rotation]\naffinity = \"off\"\n"
                },
                env: Vec::new(),
                profiles: Some(&profiles),
                https: false,
            })?;
            // Warm the connections up with requests that name no session.
            rt.block_on(async {
                let uri: http::Uri = format!("http://{}/openai/v1/chat/completions", kg.addr)
                    .parse()
                    .map_err(|e| format!("uri: {e}"))?;
                for _ in 0..20 {
                    turn(&client, &uri, Bytes::from_static(CHAT_BODY.as_bytes())).await;
                }
                Ok::<_, String>(())
            })?;
            let c0 = kg.cpu_secs_fine();
            let convs = rt.block_on(conversations(
                &client,
                &kg,
                &mock,
                &shape,
                &format!("{r}-{affinity}"),
            ))?;
            let cpu = kg.cpu_secs_fine() - c0;
            let t = if affinity { &mut on } else { &mut off };
            let before = t.requests;
            tally(t, &convs);
            t.cpu_s += cpu;
            t.per_round
                .push(cpu * 1000.0 / (t.requests - before).max(1) as f64);
            drop(kg);
        }
    }
    drop(client);
    drop(mock);
    let per_1k = |t: &Tally| t.cpu_s * 1000.0 / t.requests.max(1) as f64;
    let ratio = per_1k(&on) / per_1k(&off).max(1e-9);
    let ratios: Vec<f64> = on
        .per_round
        .iter()
        .zip(&off.per_round)
        .map(|(a, b)| a / b.max(1e-9))
        .collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(0.0, f64::max);
    let on_line = line("keygate", &shape, &on);
    let kept = on_line["kept_share_unforced"].as_f64().unwrap_or(0.0);
    Ok(vec![
        on_line,
        line("keygate-affinity-off", &shape, &off),
        json!({
            "scenario": "sessions",
            "target": "affinity/off",
            "cpu_ratio": round(ratio, 3),
            "cpu_ratio_per_round_min": round(min, 3),
            "cpu_ratio_per_round_max": round(max, 3),
            "kept_share_unforced": kept,
            "kept_goal_met": kept >= 0.99,
            "cpu_goal_met": ratio <= 1.03,
        }),
    ])
}
