//! Fuzz entry points: one function per target of `fuzz/` (cargo-fuzz, libFuzzer, nightly)
//! and of `tests/fuzz.rs` (stable, seeded, a bounded number of inputs), so both run the
//! same code on the same bytes.
//!
//! Owns: turning a fuzzer's bytes into the inputs of each parser (the layouts are on each
//! function), and the properties checked on every input. A property that does not hold
//! panics, which is what a fuzzer reports. The properties:
//! - no panic, whatever the bytes;
//! - bounded work: inputs are cut at [`MAX_INPUT`] bytes, and every output (warnings,
//!   error text, the loaded value's `Debug`) is at most a linear function of the input;
//! - the stream scanner (SSE and AWS event-stream) gives the same answer however its input
//!   is split into chunks: each chunk reports exactly what its bytes report when fed one
//!   at a time, and the buffer it keeps between chunks stays under a fixed bound;
//! - retry hints never exceed [`MAX_HINT`], and the parsers agree where their formats meet;
//! - the `model@profile` pin: the stripped body re-joins to the original model, stripping
//!   never lengthens the body, and for valid JSON the body scan agrees with serde;
//! - a secret resolved from the environment never shows in a loader's warnings, errors or
//!   `Debug` output.
//!
//! It does not own generating inputs (the fuzzer, or `tests/fuzz.rs`), and it does no I/O:
//! loaders are given text, never a path to read, and a config's `*_file` keys are pointed
//! at a path that does not exist before validation.
//!
//! Not an API: hidden from the docs, for the fuzz crate and the tests only.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::classify::{
    self, parse_go_duration, parse_message_hint, parse_number, parse_reset, parse_retry_after,
    parse_rfc3339, steering_hint, ErrorBody, ScanResult, SseScanner, MAX_HINT,
};
use crate::config::{Config, SecretProviderConfig};
use crate::credentials::env::EnvSnapshot;
use crate::credentials::store::{
    self, claude_cli_from_str, load_profiles_from_str, Expires, CLAUDE_CLI_PROFILE,
};
use crate::credentials::Kind;
use crate::pin::{body_model, rewrite_model, split_pin};

/// Longest input looked at; the rest is cut (bounded time and memory per input).
pub const MAX_INPUT: usize = 64 * 1024;

/// Provider ids an input's first byte picks from (SPEC §2 ids, spellings the classifier
/// understands, and one custom id).
pub const PROVIDERS: [&str; 16] = [
    "anthropic",
    "openai",
    "gemini",
    "google",
    "vertex",
    "azure-openai",
    "azure",
    "openrouter",
    "bedrock",
    "groq",
    "mistral",
    "cohere",
    "deepseek",
    "xai",
    "cloudflare",
    "my-custom",
];

/// Most buffer a stream scanner may keep between chunks, whatever the stream's length.
pub const SCANNER_RETAINED_MAX: usize = 8 * classify::LINE_LIMIT;

/// A value the fuzz environment gives to variables; it must never be printed.
pub const ENV_SECRET: &str = "kg-fuzz-env-secret-7f3a9c";

/// A path that does not exist: config `*_file` keys are pointed here.
const NO_SUCH_FILE: &str = "/nonexistent/keygate-fuzz/secret";

/// `now` for every target (any fixed instant keeps runs reproducible).
const NOW_SECS: u64 = 1_760_000_000;

/// The stream scanner's answers to one stream fed one byte at a time: the reference every
/// other chunking is compared with.
pub struct StreamCheck<'a> {
    provider: &'a str,
    stream: &'a [u8],
    per_byte: Vec<ScanResult>,
    finish: ScanResult,
    end: (bool, bool, Option<classify::Verdict>),
}

// === impl StreamCheck ===

impl<'a> StreamCheck<'a> {
    /// Feeds `stream` one byte at a time and records every answer.
    pub fn new(provider: &'a str, stream: &'a [u8]) -> Self {
        let mut s = SseScanner::new(provider);
        let mut per_byte = Vec::with_capacity(stream.len());
        for i in 0..stream.len() {
            per_byte.push(s.feed(&stream[i..i + 1]));
            assert_retained(&s);
        }
        let finish = s.finish();
        let end = (s.saw_content(), s.saw_terminal(), s.first_error());
        let check = StreamCheck {
            provider,
            stream,
            per_byte,
            finish,
            end,
        };
        check.consistent();
        check
    }

    /// Feeds the stream cut at `cuts` (offsets; out of range ones are ignored, repeated
    /// ones give empty chunks) and asserts every chunk reports what its bytes reported one
    /// at a time, then the same end.
    pub fn check(&self, cuts: &[usize]) {
        let mut cuts: Vec<usize> = cuts
            .iter()
            .copied()
            .filter(|&c| c <= self.stream.len())
            .collect();
        cuts.sort_unstable();
        cuts.push(self.stream.len());
        let mut s = SseScanner::new(self.provider);
        let mut start = 0;
        for end in cuts {
            let got = s.feed(&self.stream[start..end]);
            let want = fold(&self.per_byte[start..end]);
            assert_eq!(
                got, want,
                "provider {}: chunk {start}..{end} of {} bytes answers differently than fed byte by byte",
                self.provider,
                self.stream.len()
            );
            assert_retained(&s);
            start = end;
        }
        assert_eq!(s.finish(), self.finish, "finish() differs by chunking");
        assert_eq!(
            (s.saw_content(), s.saw_terminal(), s.first_error()),
            self.end,
            "end state differs by chunking"
        );
    }

    /// The reference agrees with itself: one commit at most, reported iff seen; the
    /// first error reported is the one kept.
    fn consistent(&self) {
        let all: Vec<ScanResult> = self
            .per_byte
            .iter()
            .chain(std::iter::once(&self.finish))
            .copied()
            .collect();
        let commits = all.iter().filter(|r| r.first_content).count();
        assert!(commits <= 1, "first_content reported {commits} times");
        assert_eq!(commits == 1, self.end.0, "first_content vs saw_content");
        assert_eq!(
            all.iter().any(|r| r.terminal),
            self.end.1,
            "terminal vs saw_terminal"
        );
        let first = all.iter().find_map(|r| r.error);
        assert_eq!(first.map(|e| e.verdict), self.end.2, "first error kept");
        for e in all.iter().filter_map(|r| r.error) {
            assert!(e.verdict.hint.is_none_or(|h| h.after <= MAX_HINT));
        }
    }
}

/// What a chunk made of these bytes reports: any commit, the first error, any terminal.
fn fold(results: &[ScanResult]) -> ScanResult {
    ScanResult {
        first_content: results.iter().any(|r| r.first_content),
        error: results.iter().find_map(|r| r.error),
        terminal: results.iter().any(|r| r.terminal),
    }
}

fn assert_retained(s: &SseScanner) {
    let kept = s.retained();
    assert!(
        kept <= SCANNER_RETAINED_MAX,
        "the scanner keeps {kept} bytes between chunks (bound {SCANNER_RETAINED_MAX})"
    );
}

/// The classifier (SPEC §7) on one answer.
///
/// Layout: `[provider][status hi][status lo]` then header lines `name: value\n` up to a
/// blank line, then the body (no blank line: no headers, the rest is the body). The status
/// is mapped into 100..=599. Checks: the verdict is deterministic, its hint is at most
/// [`MAX_HINT`] and equals [`classify::retry_hint`]'s; the bounded error-body collector
/// keeps exactly the first `limit` bytes in any chunking.
pub fn classify(data: &[u8]) {
    let data = cut(data);
    let [p, hi, lo, rest @ ..] = data else {
        return;
    };
    let provider = provider(*p);
    let status = StatusCode::from_u16(100 + u16::from_be_bytes([*hi, *lo]) % 500)
        .expect("100..=599 is a valid status");
    let (headers, body) = split_answer(rest);
    let now = now();
    let v = classify::classify_response(provider, status, &headers, body, now);
    assert_eq!(
        v,
        classify::classify_response(provider, status, &headers, body, now)
    );
    assert!(v.hint.is_none_or(|h| h.after <= MAX_HINT));
    assert_eq!(
        classify::retry_hint(provider, &headers, body, now),
        v.hint,
        "retry_hint differs from classify_response's hint"
    );
    assert!(steering_hint(&headers, now).is_none_or(|h| h.after <= MAX_HINT));

    // The collector, with a limit and chunk sizes taken from the input.
    let limit = 1 + usize::from(*lo) * 8;
    let step = 1 + usize::from(*hi % 64);
    let kept = body.len().min(limit);
    let mut eb = ErrorBody::new(limit);
    for chunk in body.chunks(step) {
        if !eb.feed(chunk) {
            break; // what the proxy does
        }
    }
    assert_eq!(eb.as_bytes(), &body[..kept]);
    let mut all = ErrorBody::new(limit);
    for chunk in body.chunks(step) {
        all.feed(chunk);
    }
    assert_eq!(all.as_bytes(), &body[..kept]);
    assert_eq!(all.is_truncated(), body.len() > limit);
    let w = classify::classify_response(provider, status, &headers, eb.as_bytes(), now);
    assert!(w.hint.is_none_or(|h| h.after <= MAX_HINT));
}

/// The stream scanner on a `text/event-stream` body (or an event-stream one, when the
/// body's first byte is 0).
///
/// Layout: `[provider][seed]` then the stream. The stream is fed byte by byte (the
/// reference), whole, and in chunkings drawn from `seed`; see [`StreamCheck`].
pub fn sse(data: &[u8]) {
    let data = cut(data);
    let [p, seed, stream @ ..] = data else {
        return;
    };
    check_splits(provider(*p), stream, *seed);
}

/// The stream scanner on an AWS binary event-stream (Bedrock).
///
/// Layout: when the first byte is 0, the bytes are the stream itself (a real recording
/// starts so). Otherwise the first byte is a seed for the chunkings and the rest describes
/// frames, which are encoded with consistent lengths (see [`event_stream_from_spec`]), so
/// that random bytes reach the frame meanings rather than the length check. Checks as for
/// [`sse`].
pub fn eventstream(data: &[u8]) {
    let data = cut(data);
    match data {
        [] => {}
        [0, ..] => check_splits("bedrock", data, data.len() as u8),
        [seed, spec @ ..] => {
            let stream = event_stream_from_spec(spec);
            check_splits("bedrock", &stream, *seed);
        }
    }
}

fn check_splits(provider: &str, stream: &[u8], seed: u8) {
    let check = StreamCheck::new(provider, stream);
    check.check(&[]);
    let mut rng = SplitMix(u64::from(seed) << 32 | stream.len() as u64);
    // Random chunk sizes, small and larger.
    for max in [8u64, 200] {
        let mut cuts = Vec::new();
        let mut at = 0usize;
        while at < stream.len() {
            at += 1 + rng.below(max) as usize;
            cuts.push(at);
            if rng.below(16) == 0 {
                cuts.push(at); // an empty chunk
            }
        }
        check.check(&cuts);
    }
    // One cut, anywhere.
    if !stream.is_empty() {
        check.check(&[rng.below(stream.len() as u64 + 1) as usize]);
    }
}

/// Retry-hint parsers (SPEC §7 rule 5) on one value.
///
/// Layout: the bytes are the value (lossy UTF-8, at most 1 KiB). It goes to every parser
/// directly, into every header a hint is read from (the reset headers with their
/// `remaining` at 0, `retry-after`, `retry-after-ms`, `Date`), and into an error body's
/// message and `RetryInfo`. Checks: every hint is at most [`MAX_HINT`]; a Go duration is
/// read the same as a reset header and in a "try again in …" sentence; a number is a
/// `retry-after`.
pub fn hint(data: &[u8]) {
    let data = &data[..data.len().min(1024)];
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();
    let now = now();
    let capped = |d: Option<Duration>| assert!(d.is_none_or(|d| d <= MAX_HINT), "{d:?} > cap");
    capped(parse_retry_after(s, now));
    capped(parse_go_duration(s));
    capped(parse_message_hint(&s.to_lowercase()));
    capped(parse_reset(s, now));
    capped(parse_reset(s, now - Duration::from_secs(3600)));
    let _ = parse_rfc3339(s);
    if let Some(n) = parse_number(s) {
        assert!(n.is_finite() && n >= 0.0, "parse_number gave {n}");
        assert!(
            parse_retry_after(s, now).is_some(),
            "a number is a retry-after"
        );
    }
    if let Some(d) = parse_go_duration(s) {
        assert_eq!(parse_reset(s, now), Some(d), "Go duration as a reset");
        if s == s.trim() {
            let msg = format!("rate limited. please try again in {s}.");
            assert_eq!(
                parse_message_hint(&msg),
                Some(d),
                "Go duration in a sentence"
            );
        }
    }

    // Through the headers and the body.
    let value = HeaderValue::from_str(s.trim()).ok();
    let mut spent = HeaderMap::new();
    for (remaining, reset) in [
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-rate-limit-reset-tokens"),
        (
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ),
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
    ] {
        spent.insert(remaining, HeaderValue::from_static("0"));
        if let Some(v) = &value {
            spent.insert(reset, v.clone());
        }
    }
    // Every hint is within the cap and never zero (a zero wait is the ladder's).
    let hinted = |h: Option<classify::RetryHint>| {
        assert!(
            h.is_none_or(|h| h.after <= MAX_HINT && !h.after.is_zero()),
            "{h:?} zero or > cap"
        );
    };
    hinted(steering_hint(&spent, now));
    hinted(classify::retry_hint("openai", &spent, b"", now));
    if let Some(v) = &value {
        let mut h = spent.clone();
        h.insert(http::header::DATE, v.clone());
        hinted(steering_hint(&h, now));
        for name in ["retry-after", "retry-after-ms"] {
            let mut h = HeaderMap::new();
            h.insert(name, v.clone());
            hinted(classify::retry_hint("anthropic", &h, b"", now));
        }
    }
    let body = serde_json::json!({
        "error": {
            "code": 429,
            "message": format!("Resource exhausted. Please retry in {s}"),
            "status": "RESOURCE_EXHAUSTED",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": s,
            }],
        }
    })
    .to_string();
    let v = classify::classify_response(
        "gemini",
        StatusCode::TOO_MANY_REQUESTS,
        &HeaderMap::new(),
        body.as_bytes(),
        now,
    );
    hinted(v.hint);
}

/// The body `model` scan, the `model@profile` split and the strip (SPEC §5 step 1).
///
/// Layout: the bytes are a request body. They are also taken (lossy UTF-8) as a model name
/// written into a small body. Checks: the span is the string literal and decodes to the
/// model; for JSON that serde reads as an object, the scan finds the model serde finds
/// (none when `model` is repeated); a pin splits into non-empty parts that re-join to the
/// model; the stripped body is no longer than the original, its model is the name, every
/// other byte is unchanged, and writing the whole model back gives the model again.
pub fn pin(data: &[u8]) {
    let data = cut(data);
    let body = Bytes::copy_from_slice(data);
    check_body(&body);
    let name = String::from_utf8_lossy(data);
    let base = Bytes::from_static(br#"{"stream":true, "model" : "x","max_tokens":1}"#);
    let bm = body_model(&base).expect("the base body has a model");
    let written = rewrite_model(&base, bm.span, &name);
    let back = body_model(&written).expect("a written model reads back");
    assert_eq!(
        back.model, name,
        "a model written into a body reads back the same"
    );
    check_body(&written);
}

fn check_body(body: &Bytes) {
    let found = body_model(body);
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(obj) = v.as_object() {
            let serde_model = obj.get("model").and_then(Value::as_str);
            match &found {
                Some(bm) => assert_eq!(Some(bm.model.as_ref()), serde_model, "scan vs serde"),
                None => assert!(
                    serde_model.is_none() || top_level_models(body) > 1,
                    "serde reads model {serde_model:?}, the scan none"
                ),
            }
        }
    }
    let Some(bm) = found else {
        return;
    };
    let span = bm.span.clone();
    let literal = &body[span.clone()];
    assert!(literal.len() >= 2 && literal[0] == b'"' && literal[literal.len() - 1] == b'"');
    assert_eq!(
        serde_json::from_slice::<String>(literal).ok().as_deref(),
        Some(bm.model.as_ref()),
        "the span is the model's literal"
    );
    let model = bm.model.as_ref();
    let (name, profile) = split_pin(model);
    let Some(profile) = profile else {
        assert_eq!(name, model, "no pin: the whole model");
        return;
    };
    assert!(!name.is_empty() && !profile.is_empty());
    assert_eq!(format!("{name}@{profile}"), model, "the pin re-joins");
    assert_eq!(split_pin(name), (name, None), "a stripped model has no pin");

    let stripped = rewrite_model(body, span.clone(), name);
    assert!(
        stripped.len() <= body.len(),
        "stripping lengthened the body"
    );
    let sm = body_model(&stripped).expect("the stripped body has a model");
    assert_eq!(sm.model, name);
    assert_eq!(sm.span.start, span.start);
    assert_eq!(stripped[..span.start], body[..span.start]);
    assert_eq!(stripped[sm.span.end..], body[span.end..]);
    let rejoined = rewrite_model(&stripped, sm.span, model);
    let rm = body_model(&rejoined).expect("the re-joined body has a model");
    assert_eq!(rm.model, model, "stripped body + pin re-join");
}

/// How many top-level `model` members a JSON object has (serde keeps the last one).
fn top_level_models(body: &[u8]) -> usize {
    struct Count(usize);
    impl<'de> serde::Deserialize<'de> for Count {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Count;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
                    let mut n = 0;
                    while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                        n += usize::from(k == "model");
                        map.next_value::<IgnoredAny>()?;
                    }
                    Ok(Count(n))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Count>(body).map_or(0, |c| c.0)
}

/// The `auth-profiles.json` loader (SPEC §6).
///
/// Layout: the bytes are the file (lossy UTF-8). `FUZZ_KEY` (and `ANTHROPIC_API_KEY`) are
/// set to [`ENV_SECRET`], `EMPTY` to the empty string. Checks: ids are sorted and unique,
/// providers non-empty, secrets non-empty and trimmed, expiries positive; warnings and
/// errors are bounded and never show the environment's secret, nor does `Debug`.
pub fn auth_profiles(data: &[u8]) {
    let text = String::from_utf8_lossy(cut(data));
    let env = EnvSnapshot::from_pairs([
        ("FUZZ_KEY", ENV_SECRET),
        ("ANTHROPIC_API_KEY", ENV_SECRET),
        ("EMPTY", ""),
    ]);
    let path = Path::new("agents/main/agent/auth-profiles.json");
    let guard = !text.contains(ENV_SECRET);
    match load_profiles_from_str(&text, path, &env, &Default::default()) {
        Ok(set) => {
            for w in set.profiles.windows(2) {
                assert!(w[0].id < w[1].id, "profiles sorted by unique id");
            }
            for p in &set.profiles {
                check_profile(p);
            }
            let warned: usize = set.warnings.iter().map(String::len).sum();
            bounded(warned, text.len(), "warnings");
            let dbg = format!("{set:?}");
            bounded(dbg.len(), text.len(), "the profile set's Debug");
            if guard {
                assert!(!dbg.contains(ENV_SECRET), "a secret in Debug: {dbg}");
                for w in &set.warnings {
                    assert!(!w.contains(ENV_SECRET), "a secret in a warning: {w}");
                }
            }
        }
        Err(e) => check_error(&e.to_string(), text.len(), guard),
    }
}

fn check_profile(p: &store::Profile) {
    assert!(!p.id.trim().is_empty(), "an empty profile id");
    assert!(
        !p.provider.trim().is_empty(),
        "profile {:?} has no provider",
        p.id
    );
    if let Ok(s) = &p.secret {
        assert!(
            !s.is_empty() && s.expose() == s.expose().trim(),
            "untrimmed secret"
        );
    }
    if let Some(r) = &p.refresh {
        assert!(
            !r.is_empty() && r.expose() == r.expose().trim(),
            "untrimmed refresh"
        );
    }
    match p.expires {
        Expires::At(ms) => assert!(ms > 0),
        Expires::None | Expires::Invalid => {}
    }
    if p.kind == Kind::ApiKey {
        assert_eq!(p.expires, Expires::None, "api keys do not expire");
    }
}

/// The `auth-state.json` loader (SPEC §6).
///
/// Layout: the bytes are the file (lossy UTF-8). Checks: every order lists trimmed,
/// non-empty ids once each; warnings and errors are bounded.
pub fn auth_state(data: &[u8]) {
    let text = String::from_utf8_lossy(cut(data));
    match store::auth_state_from_str(&text, Path::new("agents/main/agent/auth-state.json")) {
        Ok(state) => {
            for (provider, ids) in &state.order {
                for (i, id) in ids.iter().enumerate() {
                    assert!(
                        !id.is_empty() && id == id.trim(),
                        "order.{provider}: {id:?}"
                    );
                    assert!(!ids[..i].contains(id), "order.{provider} repeats {id:?}");
                }
            }
            let warned: usize = state.warnings.iter().map(String::len).sum();
            bounded(warned, text.len(), "warnings");
        }
        Err(e) => check_error(&e.to_string(), text.len(), false),
    }
}

/// The Claude Code credentials reader (SPEC §6).
///
/// Layout: the bytes are `~/.claude/.credentials.json` (lossy UTF-8). Checks: a profile is
/// `anthropic:claude-cli` with a trimmed, non-empty access token, `oauth` exactly when a
/// refresh token is there, a positive expiry; a warning is bounded and shows no token
/// (a token is looked for when it has 8 bytes or more and a `-`, which no message has).
pub fn claude_credentials(data: &[u8]) {
    let text = String::from_utf8_lossy(cut(data));
    match claude_cli_from_str(&text, Path::new("home/.claude/.credentials.json")) {
        Ok(p) => {
            assert_eq!(p.id, CLAUDE_CLI_PROFILE);
            assert_eq!(p.provider, "anthropic");
            assert!(p.secret.is_ok(), "a Claude Code profile without its token");
            assert_eq!(p.kind == Kind::OAuth, p.refresh.is_some());
            check_profile(&p);
        }
        Err(w) => {
            bounded(w.len(), text.len(), "the warning");
            let doc = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
            for key in ["accessToken", "refreshToken"] {
                let token = doc
                    .pointer(&format!("/claudeAiOauth/{key}"))
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .unwrap_or("");
                if token.len() >= 8 && token.contains('-') {
                    assert!(!w.contains(token), "a token in the warning: {w}");
                }
            }
        }
    }
}

/// The config parser and validation (SPEC §2).
///
/// Layout: the bytes are the TOML file (lossy UTF-8). Variables whose name has an even
/// length are set to [`ENV_SECRET`] (a proxy variable to a URL with it as the password;
/// `NO_PROXY` and `SSL_CERT_*`, which hold no secret, stay unset), the others are unset; `*_file` keys are pointed at a
/// path that does not exist (the file is rewritten for that; no file is ever read).
/// Checks: the error, or the loaded config's `Debug`, is bounded and never shows the
/// environment's secret.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(cut(data)).into_owned();
    let Some(text) = without_files(text) else {
        return;
    };
    // Variables that hold no secret (`NO_PROXY`'s host list, `SSL_CERT_*` paths: shown by
    // `config check`) never get it; a proxy variable gets it as its URL's password, the
    // part that must never show (its host may).
    let env = |name: &str| {
        let upper = name.to_ascii_uppercase();
        if upper == "NO_PROXY" || upper.starts_with("SSL_CERT_") || name.len() % 2 != 0 {
            return None;
        }
        if upper.ends_with("_PROXY") {
            return Some(format!("http://user:{ENV_SECRET}@proxy.invalid:3128"));
        }
        Some(ENV_SECRET.to_owned())
    };
    let guard = !text.contains(ENV_SECRET);
    match Config::from_toml(&text, None, &env) {
        Ok(cfg) => {
            let dbg = format!("{cfg:?}");
            // The built-in providers are there whatever the input.
            assert!(
                dbg.len() <= 64 * 1024 + 64 * text.len(),
                "Debug of {} bytes for {} bytes of input",
                dbg.len(),
                text.len()
            );
            if guard {
                assert!(!dbg.contains(ENV_SECRET), "a secret in the config's Debug");
            }
            check_durations(&cfg);
        }
        Err(e) => check_error(&e.to_string(), text.len(), guard),
    }
}

/// Every duration a valid config holds can be added to now: the request path, cooldowns and
/// shutdown do (`start + request_timeout`), and an overflow there panics.
fn check_durations(cfg: &Config) {
    let (s, r) = (&cfg.server, &cfg.rotation);
    let mut all = vec![
        s.request_timeout,
        s.connect_timeout,
        s.first_byte_timeout,
        s.shutdown_grace,
        r.max_wait,
    ];
    all.extend(&r.backoff);
    all.extend(&r.billing_backoff);
    for p in cfg.secret_providers.values() {
        if let SecretProviderConfig::Exec { timeout, .. } = p {
            all.push(*timeout);
        }
    }
    let (now, wall) = (tokio::time::Instant::now(), SystemTime::now());
    for d in all {
        assert!(
            now.checked_add(d).is_some() && wall.checked_add(d).is_some(),
            "a valid config holds {d:?}, which overflows when added to now"
        );
    }
}

/// The config text with every `*_file` key pointed at [`NO_SUCH_FILE`]; `None` when that
/// rewrite cannot be written back. Text that is not TOML is returned as is (it fails to
/// parse before any file could be read).
fn without_files(text: String) -> Option<String> {
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return Some(text);
    };
    if !redirect_files(&mut table) {
        return Some(text);
    }
    toml::to_string(&table).ok()
}

fn redirect_files(table: &mut toml::Table) -> bool {
    let mut changed = false;
    for (k, v) in table.iter_mut() {
        if k.ends_with("_file") {
            *v = toml::Value::String(NO_SUCH_FILE.to_owned());
            changed = true;
        } else {
            changed |= redirect_value(v);
        }
    }
    changed
}

fn redirect_value(v: &mut toml::Value) -> bool {
    match v {
        toml::Value::Table(t) => redirect_files(t),
        toml::Value::Array(a) => a.iter_mut().fold(false, |c, v| redirect_value(v) | c),
        _ => false,
    }
}

fn check_error(message: &str, input: usize, guard: bool) {
    bounded(message.len(), input, "the error");
    if guard {
        assert!(
            !message.contains(ENV_SECRET),
            "a secret in an error: {message}"
        );
    }
}

/// Output at most linear in the input.
fn bounded(output: usize, input: usize, what: &str) {
    assert!(
        output <= 1024 + 16 * input,
        "{what}: {output} bytes for {input} bytes of input"
    );
}

fn cut(data: &[u8]) -> &[u8] {
    &data[..data.len().min(MAX_INPUT)]
}

fn provider(b: u8) -> &'static str {
    PROVIDERS[usize::from(b) % PROVIDERS.len()]
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// Header lines up to the first blank line, then the body.
fn split_answer(rest: &[u8]) -> (HeaderMap, &[u8]) {
    let mut headers = HeaderMap::new();
    let Some(blank) = memchr::memmem::find(rest, b"\n\n") else {
        return (headers, rest);
    };
    for line in rest[..blank].split(|&b| b == b'\n') {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = HeaderName::from_bytes(line[..colon].trim_ascii());
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (name, value) {
            headers.append(n, v);
        }
    }
    (headers, &rest[blank + 2..])
}

/// Header names a frame description picks from.
const FRAME_HEADERS: [&str; 6] = [
    ":message-type",
    ":event-type",
    ":exception-type",
    ":content-type",
    ":error-code",
    "x-other",
];

/// Header values a frame description picks from.
const FRAME_VALUES: [&str; 14] = [
    "event",
    "exception",
    "error",
    "chunk",
    "contentBlockStart",
    "contentBlockDelta",
    "messageStop",
    "metadata",
    "throttlingException",
    "serviceUnavailableException",
    "modelStreamErrorException",
    "validationException",
    "application/json",
    "",
];

/// Model events a `chunk` payload picks from (base64 inside `{"bytes":…}`).
const CHUNK_EVENTS: [&str; 5] = [
    r#"{"type":"message_start","message":{}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"text":"Hi"}}"#,
    r#"{"type":"message_stop"}"#,
    r#"{"type":"ping"}"#,
    r#"{"generation":"Hello","stop_reason":null}"#,
];

/// Exception payloads a frame picks from.
const EXCEPTION_PAYLOADS: [&str; 4] = [
    r#"{"message":"Too many requests, please wait before trying again."}"#,
    r#"{"message":"Too many tokens, please wait before trying again. Retry in 12s"}"#,
    r#"{"message":"The model is overloaded"}"#,
    "not json",
];

/// Encodes frame descriptions as an AWS event-stream (CRC fields are zero: the scanner
/// does not check them).
///
/// Each frame: an op byte — bits 0–1: 1 to 4 headers; bits 2–3: payload (raw: a length
/// byte and that many bytes; a `chunk` event; an exception message; none); bit 6: cut the
/// frame short; bit 7: replace its total length with the next four bytes. Each header: a
/// name byte, a type byte (below 224: string; else a type 0–9 with its fixed size or a
/// length prefix), and a value byte.
pub fn event_stream_from_spec(spec: &[u8]) -> Vec<u8> {
    let mut r = Reader(spec);
    let mut out = Vec::new();
    while let Some(op) = r.byte() {
        if out.len() > MAX_INPUT {
            break;
        }
        let mut headers = Vec::new();
        for _ in 0..=(op & 3) {
            let name = FRAME_HEADERS[usize::from(r.byte().unwrap_or(0)) % FRAME_HEADERS.len()];
            headers.push(name.len() as u8);
            headers.extend_from_slice(name.as_bytes());
            let kind = r.byte().unwrap_or(0);
            let value =
                FRAME_VALUES[usize::from(r.byte().unwrap_or(0)) % FRAME_VALUES.len()].as_bytes();
            if kind < 224 {
                headers.push(7);
                headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
                headers.extend_from_slice(value);
            } else {
                let kind = kind % 10;
                headers.push(kind);
                match kind {
                    0 | 1 => {}
                    2 => headers.push(0),
                    3 => headers.extend_from_slice(&[0; 2]),
                    4 => headers.extend_from_slice(&[0; 4]),
                    5 | 8 => headers.extend_from_slice(&[0; 8]),
                    9 => headers.extend_from_slice(&[0; 16]),
                    _ => {
                        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
                        headers.extend_from_slice(value);
                    }
                }
            }
        }
        let payload: Vec<u8> = match (op >> 2) & 3 {
            0 => {
                let n = usize::from(r.byte().unwrap_or(0));
                r.take(n).to_vec()
            }
            1 => {
                let event = CHUNK_EVENTS[usize::from(r.byte().unwrap_or(0)) % CHUNK_EVENTS.len()];
                format!(r#"{{"bytes":"{}","p":"abc"}}"#, base64(event.as_bytes())).into_bytes()
            }
            2 => EXCEPTION_PAYLOADS[usize::from(r.byte().unwrap_or(0)) % EXCEPTION_PAYLOADS.len()]
                .as_bytes()
                .to_vec(),
            _ => Vec::new(),
        };
        let start = out.len();
        let total = 16 + headers.len() + payload.len();
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&headers);
        out.extend_from_slice(&payload);
        out.extend_from_slice(&[0; 4]);
        if op & 0x80 != 0 {
            let t = r.take(4);
            if t.len() == 4 {
                out[start..start + 4].copy_from_slice(t);
            }
        }
        if op & 0x40 != 0 {
            let short = usize::from(r.byte().unwrap_or(1)) % (total + 1);
            out.truncate(out.len() - short);
        }
    }
    out
}

/// Standard base64 with padding (also the event-stream tests' encoder).
pub(crate) fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Reads a frame description byte by byte.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// Chunkings drawn from a seed (splitmix64).
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}
