//! Every recorded provider answer in `tests/fixtures/provider-errors/` (copied from `../shared/fixtures/provider-errors/`) through the
//! classifier, in 1-byte, 7-byte and whole chunkings (SPEC §7; STYLE.md G).
//!
//! - non-2xx: bytes go through `ErrorBody`, then `classify_response`;
//! - 2xx streams: bytes go through `SseScanner` (the Bedrock case describes a binary
//!   event-stream frame; the frame is built here from that description);
//! - 2xx non-stream: the body is never inspected; only the success path runs
//!   (`steering_hint`), and it must report nothing.
//!
//! Failures are collected and reported together, one line per case.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use keygate::classify::{
    classify_response, steering_hint, ErrorBody, Reason, RetryHint, SseScanner, Verdict,
};
use serde_json::Value;

/// `now` for cases without a `Date` header (any fixed instant keeps them deterministic).
const FIXED_NOW: u64 = 1_760_000_000;
const MAX_ERROR_BODY: usize = 64 * 1024;

struct Case {
    name: String,
    provider: String,
    status: u16,
    headers: HeaderMap,
    body: String,
    expected: String,
    hint: Option<f64>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/provider-errors")
}

fn load() -> Vec<Case> {
    let dir = fixtures_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read fixtures at {}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("readable fixture");
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let mut headers = HeaderMap::new();
            if let Some(Value::Object(h)) = v.get("headers") {
                for (k, val) in h {
                    let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .expect("header name");
                    let value =
                        HeaderValue::from_str(val.as_str().expect("string header")).expect("value");
                    headers.append(name, value);
                }
            }
            Case {
                name: p.file_stem().expect("stem").to_string_lossy().into_owned(),
                provider: v["provider"].as_str().expect("provider").to_string(),
                status: v["status"].as_u64().expect("status") as u16,
                headers,
                body: v["body"].as_str().expect("body").to_string(),
                expected: v["expected"].as_str().expect("expected").to_string(),
                hint: v["retry_hint_seconds"].as_f64(),
            }
        })
        .collect()
}

fn now_for(case: &Case) -> SystemTime {
    case.headers
        .get("date")
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(FIXED_NOW))
}

fn chunkings(len: usize) -> [usize; 3] {
    [1, 7, len.max(1)]
}

fn reason_matches(expected: &str, got: Option<Reason>) -> bool {
    match (expected, got) {
        ("ok", None) => true,
        ("auth", Some(Reason::Auth | Reason::AuthPermanent)) => true,
        (e, Some(r)) => r.as_str() == e,
        _ => false,
    }
}

/// ±1 s for hints read from absolute times, ±1 ms for relative ones.
fn hint_matches(case: &Case, got: Option<RetryHint>) -> bool {
    match (case.hint, got) {
        (None, None) => true,
        (Some(want), Some(h)) => {
            let absolute = h.source.starts_with("anthropic-ratelimit")
                || h.source == "x-ratelimit-reset"
                || (h.source == "retry-after"
                    && case
                        .headers
                        .get("retry-after")
                        .is_some_and(|v| v.as_bytes().contains(&b' ')));
            let tolerance = if absolute { 1.0 } else { 0.001 };
            (h.after.as_secs_f64() - want).abs() <= tolerance
        }
        _ => false,
    }
}

fn classify_error(case: &Case, step: usize) -> Verdict {
    let mut body = ErrorBody::new(MAX_ERROR_BODY);
    for chunk in case.body.as_bytes().chunks(step) {
        if !body.feed(chunk) {
            break;
        }
    }
    let status = StatusCode::from_u16(case.status).expect("status");
    classify_response(
        &case.provider,
        status,
        &case.headers,
        body.as_bytes(),
        now_for(case),
    )
}

/// The first error verdict of a stream (`None` when it has none).
fn scan_stream(case: &Case, bytes: &[u8], step: usize) -> Option<Verdict> {
    let mut scanner = SseScanner::new(&case.provider);
    let mut first = None;
    for chunk in bytes.chunks(step) {
        let r = scanner.feed(chunk);
        if first.is_none() {
            first = r.error.map(|e| e.verdict);
        }
    }
    let r = scanner.finish();
    if first.is_none() {
        first = r.error.map(|e| e.verdict);
    }
    assert_eq!(scanner.first_error(), first, "{}: first_error", case.name);
    first
}

fn is_stream(case: &Case) -> bool {
    case.headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("event-stream") || ct.contains("eventstream"))
}

/// The Bedrock case holds a description of a binary frame instead of its bytes:
/// `[eventstream frame, decoded] headers: k=v, k=v; payload: {...}`. Build the frame.
fn stream_bytes(case: &Case) -> Vec<u8> {
    let Some(desc) = case
        .body
        .strip_prefix("[eventstream frame, decoded] headers: ")
    else {
        return case.body.as_bytes().to_vec();
    };
    let (headers, payload) = desc.split_once("; payload: ").expect("payload part");
    let headers: Vec<(&str, &str)> = headers
        .split(", ")
        .map(|kv| kv.split_once('=').expect("k=v"))
        .collect();
    encode_frame(&headers, payload.as_bytes())
}

fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (k, v) in headers {
        h.push(k.len() as u8);
        h.extend_from_slice(k.as_bytes());
        h.push(7);
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = 16 + h.len() + payload.len();
    let mut out = Vec::new();
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let c = crc32(&out);
    out.extend_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let c = crc32(&out);
    out.extend_from_slice(&c.to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn every_fixture_is_classified() {
    let cases = load();
    assert!(
        cases.len() >= 60,
        "expected at least 60 fixtures in {}, found {}",
        fixtures_dir().display(),
        cases.len()
    );
    let mut failures = Vec::new();
    let mut passed = 0;
    for case in &cases {
        let mut ok = true;
        let mut report = |what: String| {
            failures.push(format!("{}: {what}", case.name));
        };
        if (200..300).contains(&case.status) && is_stream(case) {
            let bytes = stream_bytes(case);
            let verdicts: Vec<Option<Verdict>> = chunkings(bytes.len())
                .iter()
                .map(|&s| scan_stream(case, &bytes, s))
                .collect();
            if verdicts.iter().any(|v| *v != verdicts[0]) {
                ok = false;
                report(format!("chunkings disagree: {verdicts:?}"));
            }
            let v = verdicts[0];
            if !reason_matches(&case.expected, v.map(|v| v.reason)) {
                ok = false;
                report(format!("expected {}, got {v:?}", case.expected));
            } else if !hint_matches(case, v.and_then(|v| v.hint)) {
                ok = false;
                report(format!("hint: expected {:?}, got {v:?}", case.hint));
            }
        } else if (200..300).contains(&case.status) {
            // Success path: the body is not read; only steering looks at headers.
            let steer = steering_hint(&case.headers, now_for(case));
            if case.expected != "ok" || steer.is_some() {
                ok = false;
                report(format!(
                    "success path: expected {}, steering {steer:?}",
                    case.expected
                ));
            }
        } else {
            let verdicts: Vec<Verdict> = chunkings(case.body.len())
                .iter()
                .map(|&s| classify_error(case, s))
                .collect();
            if verdicts.iter().any(|v| *v != verdicts[0]) {
                ok = false;
                report(format!("chunkings disagree: {verdicts:?}"));
            }
            let v = verdicts[0];
            if !reason_matches(&case.expected, Some(v.reason)) {
                ok = false;
                report(format!("expected {}, got {}", case.expected, v.reason));
            }
            if !hint_matches(case, v.hint) {
                ok = false;
                report(format!("hint: expected {:?}, got {:?}", case.hint, v.hint));
            }
        }
        passed += usize::from(ok);
    }
    println!("{passed}/{} fixtures pass", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} fixtures fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Scanner throughput on ~1 MiB transcripts, fed in 16 KiB chunks. Ignored by default
/// (debug builds say nothing about speed); run with
/// `cargo test --release --test classify_fixtures -- --ignored --nocapture`.
#[test]
#[ignore]
fn scanner_throughput() {
    let anthropic_event = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"The quick brown fox jumps over the lazy dog, again and again.\"}}\n\n";
    let openai_event = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" The quick brown fox jumps over the lazy dog.\"},\"finish_reason\":null}]}\n\n";
    for (provider, event) in [("anthropic", anthropic_event), ("openai", openai_event)] {
        let body = event.repeat((1 << 20) / event.len() + 1);
        let rounds = 200;
        let start = tokio::time::Instant::now();
        for _ in 0..rounds {
            let mut s = SseScanner::new(provider);
            for chunk in body.as_bytes().chunks(16 * 1024) {
                std::hint::black_box(s.feed(chunk));
            }
            assert!(s.saw_content());
        }
        let secs = start.elapsed().as_secs_f64();
        let gbps = (body.len() * rounds) as f64 / secs / 1e9;
        println!("{provider}: {:.2} GB/s over {} bytes", gbps, body.len());
    }
}
