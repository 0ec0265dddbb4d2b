//! Classifier and stream scanner benchmarks (issue 5; STYLE.md G).
//!
//! - `classify/case/<fixture>`: every recorded answer of `tests/fixtures/provider-errors/` (copied from `../shared/fixtures/provider-errors/`)
//!   (read at bench start) through the path keygate takes for it — `classify_response` for a
//!   non-2xx answer, `SseScanner` over a 2xx stream, `steering_hint` for a 2xx JSON answer.
//!   Time per case; target ≤ 2 µs.
//! - `classify/all`: every case once per iteration (`Throughput::Elements`), the mean.
//! - `sse_scanner/{anthropic,openai}/{per_event,16KiB}`: a realistic 1 MiB transcript fed
//!   event by event (as a provider flushes it) and in 16 KiB reads (`Throughput::Bytes`).
//!   Target ≥ 1 GB/s.

// `criterion_main!` generates an undocumented `pub fn main`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use keygate::classify::{classify_response, steering_hint, SseScanner};
use serde_json::Value;

const MIB: usize = 1024 * 1024;

struct Case {
    name: String,
    provider: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    stream: bool,
}

fn fixtures() -> Vec<Case> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provider-errors");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read fixtures at {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(p).expect("fixture"))
                .expect("fixture JSON");
            let mut headers = HeaderMap::new();
            if let Some(Value::Object(h)) = v.get("headers") {
                for (k, val) in h {
                    headers.append(
                        HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).expect("name"),
                        HeaderValue::from_str(val.as_str().expect("string")).expect("value"),
                    );
                }
            }
            let status = StatusCode::from_u16(v["status"].as_u64().expect("status") as u16)
                .expect("status code");
            let stream = headers
                .get("content-type")
                .and_then(|c| c.to_str().ok())
                .is_some_and(|c| c.contains("event-stream"));
            Case {
                name: p.file_stem().expect("stem").to_string_lossy().into_owned(),
                provider: v["provider"].as_str().expect("provider").to_owned(),
                status,
                headers,
                body: v["body"].as_str().expect("body").as_bytes().to_vec(),
                stream,
            }
        })
        .collect()
}

/// What keygate does with this answer.
fn run_case(c: &Case, now: SystemTime) -> u32 {
    if !c.status.is_success() {
        let v = classify_response(&c.provider, c.status, &c.headers, &c.body, now);
        v.reason as u32
    } else if c.stream {
        let mut s = SseScanner::new(&c.provider);
        let r = s.feed(&c.body);
        let f = s.finish();
        u32::from(r.error.is_some() || f.error.is_some())
    } else {
        u32::from(steering_hint(&c.headers, now).is_some())
    }
}

fn classify(c: &mut Criterion) {
    let cases = fixtures();
    let now = UNIX_EPOCH + Duration::from_secs(1_760_000_000);
    let mut g = c.benchmark_group("classify");
    g.warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(400))
        .sample_size(20);
    for case in &cases {
        g.bench_with_input(BenchmarkId::new("case", &case.name), case, |b, case| {
            b.iter(|| run_case(black_box(case), now))
        });
    }
    g.throughput(Throughput::Elements(cases.len() as u64));
    g.measurement_time(Duration::from_secs(2)).sample_size(30);
    g.bench_function("all", |b| {
        b.iter(|| {
            cases
                .iter()
                .map(|c| run_case(black_box(c), now))
                .sum::<u32>()
        })
    });
    g.finish();
}

/// A realistic Anthropic Messages stream of at least `size` bytes: message_start,
/// content_block_start, text deltas of ~40–60 characters, then the closing events.
fn anthropic_transcript(size: usize) -> Vec<Vec<u8>> {
    let mut ev = vec![
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2}}}\n\n".to_vec(),
        b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_vec(),
        b"event: ping\ndata: {\"type\": \"ping\"}\n\n".to_vec(),
    ];
    let words = [
        "The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog, ", "and ",
    ];
    let mut total: usize = ev.iter().map(Vec::len).sum();
    let mut i = 0usize;
    while total < size {
        let text: String = (0..8).map(|k| words[(i + k) % words.len()]).collect();
        let e = format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n"
        );
        total += e.len();
        ev.push(e.into_bytes());
        i += 1;
    }
    ev.push(
        b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_vec(),
    );
    ev.push(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n".to_vec());
    ev.push(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_vec());
    ev
}

/// A realistic OpenAI Chat Completions stream of at least `size` bytes.
fn openai_transcript(size: usize) -> Vec<Vec<u8>> {
    let head = "{\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_fc9f1d7035\",\"choices\":[{\"index\":0,\"delta\":";
    let mut ev = vec![format!(
        "data: {head}{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    )
    .into_bytes()];
    let words = [
        "The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog, ", "and ",
    ];
    let mut total = ev[0].len();
    let mut i = 0usize;
    while total < size {
        let text: String = (0..3).map(|k| words[(i + k) % words.len()]).collect();
        let e = format!(
            "data: {head}{{\"content\":\"{text}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        );
        total += e.len();
        ev.push(e.into_bytes());
        i += 1;
    }
    ev.push(
        format!("data: {head}{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n")
            .into_bytes(),
    );
    ev.push(b"data: [DONE]\n\n".to_vec());
    ev
}

fn rechunk(events: &[Vec<u8>], size: usize) -> Vec<Vec<u8>> {
    events.concat().chunks(size).map(<[u8]>::to_vec).collect()
}

fn scanner(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_scanner");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for (provider, events) in [
        ("anthropic", anthropic_transcript(MIB)),
        ("openai", openai_transcript(MIB)),
    ] {
        let bytes: usize = events.iter().map(Vec::len).sum();
        g.throughput(Throughput::Bytes(bytes as u64));
        for (how, chunks) in [
            ("per_event", events.clone()),
            ("16KiB", rechunk(&events, 16 * 1024)),
        ] {
            g.bench_with_input(BenchmarkId::new(provider, how), &chunks, |b, chunks| {
                b.iter(|| {
                    let mut s = SseScanner::new(provider);
                    let mut content = false;
                    for ch in chunks {
                        content |= s.feed(black_box(ch)).first_content;
                    }
                    let end = s.finish();
                    assert!(content && s.saw_terminal() && end.error.is_none());
                    content
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, classify, scanner);
criterion_main!(benches);
