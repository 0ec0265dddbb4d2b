//! Candidate selection and request rewriting benchmarks (issue 5).
//!
//! - `select/*`: 64 credentials, a cooldown store holding 10 000 live windows over 1 000
//!   models. `blocked_until_one` is one lookup; `first_free_after_3` is `pool::Selector::next`
//!   when the first three candidates cool (three blocked lookups, one free);
//!   `scan_all_64` checks every candidate (the worst case: all cooling); `ordered_64` is
//!   `Registry::ordered` (clone + sort of the pool); `request` is `ordered` followed by
//!   `first_free_after_3`. Target ≤ 500 ns.
//! - `inject/*`: one request's header and body work: `clean_request_headers` of a typical
//!   SDK request, `Injection::apply`, `pin::body_model` (and `pin::body_fields`, the same
//!   scan also finding the session key), and with a `model@profile` pin
//!   `split_pin` + `rewrite_model`.

// `criterion_main!` generates an undocumented `pub fn main`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue};
use keygate::classify::{Reason, RetryHint, Verdict};
use keygate::config::Config;
use keygate::cooldown::{Cooldowns, Ladders};
use keygate::credentials::env::EnvSnapshot;
use keygate::inject::clean_request_headers;
use keygate::pin;
use keygate::pool::{Candidate, Limits, Pick, Registry, Selector};
use tokio::time::Instant;

const CREDENTIALS: usize = 64;
const WINDOWS: usize = 10_000;
const MODELS: usize = 1_000;

fn registry(provider_var: &str, n: usize) -> (Registry, tempfile::TempDir) {
    let keys: Vec<String> = (0..n)
        .map(|i| format!("sk-bench-{i:04}-aaaaaaaaaaaaaaaa"))
        .collect();
    let env = EnvSnapshot::from_pairs([(provider_var.to_owned(), keys.join(","))]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Arc::new(Config::defaults());
    (
        Registry::new(
            config,
            dir.path().to_owned(),
            env,
            Arc::new(keygate::metrics::Metrics::new(["anthropic"])),
        ),
        dir,
    )
}

fn group_times(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
}

fn select(c: &mut Criterion) {
    let (reg, _dir) = registry("OPENAI_API_KEYS", CREDENTIALS);
    let pool = reg.agent("main");
    let provider = pool.providers.get("openai").expect("openai pool");
    assert_eq!(provider.candidates.len(), CREDENTIALS);
    let cands: Vec<Arc<Candidate>> = provider.candidates.clone();

    let cooldowns = Cooldowns::with_cap(
        Ladders {
            backoff: vec![Duration::from_secs(30)],
            billing: vec![Duration::from_secs(3600)],
        },
        WINDOWS,
    );
    let now = Instant::now();
    let verdict = Verdict {
        reason: Reason::RateLimit,
        hint: Some(RetryHint {
            after: Duration::from_secs(3600),
            source: "retry-after",
        }),
    };
    let models: Vec<String> = (0..MODELS).map(|m| format!("model-{m:04}")).collect();
    // Window i: credential i % 64, model (i / 64 + i) % 1000 — 10 000 distinct pairs.
    for i in 0..WINDOWS {
        let cand = &cands[i % CREDENTIALS];
        let model = &models[(i / CREDENTIALS + i) % MODELS];
        cooldowns.record_failure(
            cand.cred.id.as_str(),
            cand.fp,
            Some(model),
            &verdict,
            Some(429),
            now,
        );
    }
    assert_eq!(cooldowns.active(now), WINDOWS);
    // A model every candidate is free for, with the first three made to cool.
    let model = "model-bench-target";
    for cand in &cands[..3] {
        cooldowns.record_failure(
            cand.cred.id.as_str(),
            cand.fp,
            Some(model),
            &verdict,
            Some(429),
            now,
        );
    }
    let check = Instant::now();
    // The request path's own choice (`pool::select`), with no rpm limit configured.
    let limits = Limits::new(&Config::defaults());
    let selector = Selector::new(&cooldowns, &limits, "openai", Some(model), false);
    let tried = vec![false; CREDENTIALS];
    let first_free = |list: &[&Arc<Candidate>]| match selector.next(list, black_box(&tried), check)
    {
        Pick::Use(i, _) => Some(i),
        Pick::Blocked { .. } => None,
    };

    let mut g = c.benchmark_group("select");
    group_times(&mut g);
    g.bench_function("blocked_until_one", |b| {
        let c0 = &cands[10];
        b.iter(|| {
            cooldowns.blocked_until(
                c0.cred.id.as_str(),
                c0.fp,
                Some(black_box("model-0007")),
                check,
            )
        })
    });
    g.bench_function("first_free_after_3", |b| {
        b.iter(|| {
            let refs: Vec<&Arc<Candidate>> = cands.iter().collect();
            let i = first_free(&refs);
            assert_eq!(i, Some(3));
            i
        })
    });
    g.bench_function("scan_all_64", |b| {
        b.iter(|| {
            cands
                .iter()
                .filter(|c| {
                    cooldowns
                        .blocked_until(
                            c.cred.id.as_str(),
                            c.fp,
                            Some(black_box("model-0007")),
                            check,
                        )
                        .is_some()
                })
                .count()
        })
    });
    g.bench_function("ordered_64", |b| {
        b.iter(|| reg.ordered(black_box(provider)).len())
    });
    g.bench_function("request", |b| {
        b.iter(|| {
            let list = reg.ordered(black_box(provider));
            first_free(&list)
        })
    });
    g.finish();
}

/// A typical request of the Anthropic Python SDK, as keygate receives it.
fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", "127.0.0.1:8787"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("user-agent", "Anthropic/Python 0.69.0"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "0.69.0"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", "3.12.3"),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-timeout", "600"),
        ("anthropic-version", "2023-06-01"),
        ("x-api-key", "kg-gateway-token-0123456789abcdef"),
        ("content-type", "application/json"),
        ("content-length", "1830"),
    ] {
        h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
    }
    h
}

fn body(model: &str) -> Bytes {
    let mut s = format!(
        r#"{{"max_tokens":1024,"model":"{model}","system":"You are a careful assistant.","messages":["#
    );
    for i in 0..8 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        s.push_str(&format!(
            r#"{{"role":"{role}","content":[{{"type":"text","text":"Turn {i}: a paragraph of ordinary conversation text, long enough to look like a real message with a model mention inside: {{\"model\": \"not-this-one\"}}."}}]}},"#
        ));
    }
    s.pop();
    s.push_str(r#"],"stream":true}"#);
    Bytes::from(s)
}

/// A long agent conversation (as Claude Code sends: ≈ 200 KB of turns with code, newlines,
/// quotes and non-ASCII text escaped in JSON strings), `model` first.
fn big_body(model: &str) -> Bytes {
    let mut s = format!(
        r#"{{"model":"{model}","max_tokens":32000,"system":[{{"type":"text","text":"You are an agent.\nFollow the rules."}}],"messages":["#
    );
    let mut i = 0;
    while s.len() < 200_000 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        s.push_str(&format!(
            r#"{{"role":"{role}","content":[{{"type":"text","text":"Turn {i}: here is the file:\n```rust\nfn main() {{\n    println!(\"héllo — wörld {{}}\", 42);\n}}\n```\nand a path C:\\src\\main.rs with \u00e9 in it. {pad}"}},{{"type":"tool_use","id":"toolu_{i:04}","name":"Read","input":{{"file_path":"/src/lib.rs","limit":200}}}}]}},"#,
            pad = "lorem ipsum dolor sit amet ".repeat(20)
        ));
        i += 1;
    }
    s.pop();
    s.push_str(r#"],"stream":true}"#);
    Bytes::from(s)
}

fn inject(c: &mut Criterion) {
    let (reg, _dir) = registry("ANTHROPIC_API_KEYS", 2);
    let pool = reg.agent("main");
    let cand = pool
        .providers
        .get("anthropic")
        .expect("anthropic")
        .candidates[0]
        .clone();
    let config = Config::defaults();
    let provider = config.provider("anthropic").expect("anthropic provider");
    let headers = client_headers();
    let plain = body("claude-sonnet-4-5");
    let pinned = body("claude-sonnet-4-5@anthropic:work");

    let mut g = c.benchmark_group("inject");
    group_times(&mut g);
    // The client's map is cleaned in place (as the proxy does with the map hyper parsed):
    // each iteration gets a fresh copy, made outside the measurement.
    g.bench_function("headers", |b| {
        b.iter_batched(
            || headers.clone(),
            |h| {
                let mut out = clean_request_headers(black_box(h), provider);
                cand.inject.apply(&mut out);
                out
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("body_model", |b| {
        b.iter(|| pin::body_model(black_box(&plain)).map(|m| m.span.len()))
    });
    // What the request path runs (SPEC §11): model and session key in one scan.
    g.bench_function("body_fields", |b| {
        b.iter(|| {
            let f = pin::body_fields(black_box(&plain));
            (f.model.map(|m| m.span.len()), f.session.map(<[u8]>::len))
        })
    });
    let big = big_body("claude-sonnet-4-5");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("body_model_200k", |b| {
        b.iter(|| pin::body_model(black_box(&big)).map(|m| m.span.len()))
    });
    // As Claude Code sends it: the session in `metadata.user_id`, after the messages.
    let tail =
        r#"],"metadata":{"user_id":"user_0a1b2c_account_3d4e5f_session_6a7b8c9d"},"stream":true}"#;
    let big_session = Bytes::from(String::from_utf8(big.to_vec()).expect("utf-8").replacen(
        r#"],"stream":true}"#,
        tail,
        1,
    ));
    g.bench_function("body_fields_200k", |b| {
        b.iter(|| {
            let f = pin::body_fields(black_box(&big_session));
            (f.model.map(|m| m.span.len()), f.session.map(<[u8]>::len))
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("body_model_pin_rewrite", |b| {
        b.iter(|| {
            let bm = pin::body_model(black_box(&pinned)).expect("model");
            let (name, profile) = pin::split_pin(&bm.model);
            assert!(profile.is_some());
            pin::rewrite_model(&pinned, bm.span.clone(), name)
        })
    });
    g.bench_function("request", |b| {
        b.iter_batched(
            || headers.clone(),
            |h| {
                let mut out = clean_request_headers(black_box(h), provider);
                cand.inject.apply(&mut out);
                let bm = pin::body_model(black_box(&pinned)).expect("model");
                let (name, _) = pin::split_pin(&bm.model);
                let body = pin::rewrite_model(&pinned, bm.span.clone(), name);
                (out, body)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, select, inject);
criterion_main!(benches);
