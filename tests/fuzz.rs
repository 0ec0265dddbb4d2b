//! The fuzz targets of `fuzz/` on stable, inside `cargo test`: the same functions
//! (`keygate::fuzzing`), on a bounded number of generated inputs.
//!
//! Per target: every seed of `fuzz/corpus/<target>/` as is, then `KEYGATE_FUZZ_ITERS`
//! inputs (default 3000) from a seeded generator (`KEYGATE_FUZZ_SEED`, default fixed, so a
//! run is reproducible): structured inputs built with `arbitrary::Unstructured` over
//! `fastrand` bytes, mutations of real seeds (the recorded provider answers in
//! `tests/fixtures/provider-errors/`, streams, bodies, `config/keygate.toml`) and raw
//! random bytes. Inputs are at most a few KiB, with a few long SSE lines past
//! `LINE_LIMIT`, so the whole file stays well under a minute in a debug build.
//!
//! A failing input is written to `$CARGO_TARGET_TMPDIR/fuzz-failures/<target>-<n>.bin`
//! (replay it with `cargo +nightly fuzz run <target> <file>`, or add it to the corpus)
//! and the panic names the seed and iteration.
//!
//! `cargo test --test fuzz -- --ignored write_seed_corpus` rewrites `fuzz/corpus/` from the
//! fixtures.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use arbitrary::Unstructured;
use keygate::classify::LINE_LIMIT;
use keygate::fuzzing::{self, StreamCheck, PROVIDERS};
use serde_json::{json, Value};

/// One target: its name (the `fuzz/` binary and corpus dir), the shared function, and the
/// structured generator.
struct Target {
    name: &'static str,
    run: fn(&[u8]),
    generate: fn(&mut Unstructured<'_>, &Seeds) -> Vec<u8>,
    /// Tokens the mutator inserts.
    dictionary: &'static [&'static str],
}

/// Real inputs to mutate, per target.
#[derive(Default)]
struct Seeds {
    answers: Vec<Vec<u8>>,
    streams: Vec<(u8, Vec<u8>)>,
    event_streams: Vec<Vec<u8>>,
    bodies: Vec<Vec<u8>>,
    profiles: Vec<Vec<u8>>,
    states: Vec<Vec<u8>>,
    claude: Vec<Vec<u8>>,
    configs: Vec<Vec<u8>>,
}

const JSON_DICT: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "\\",
    "\\u0040",
    "\\\"",
    "null",
    "true",
    "0",
    "-1",
    "1e400",
    "\"error\"",
    "\"message\"",
    "\"type\"",
    "\"code\"",
    "429",
    "\"details\"",
];

const TARGETS: &[Target] = &[
    Target {
        name: "classify",
        run: fuzzing::classify,
        generate: gen_answer,
        dictionary: &[
            "\n\n",
            "\n",
            ": ",
            "retry-after",
            "x-ratelimit-remaining-tokens: 0\n",
            "content-type: text/html\n",
            "x-amzn-errortype: ThrottlingException\n",
            "\"error\"",
            "{",
            "}",
            "\"",
            "rate_limit",
            "quota",
            "try again in ",
            "billing",
            "RESOURCE_EXHAUSTED",
            "retryDelay",
            "\\u",
        ],
    },
    Target {
        name: "sse",
        run: fuzzing::sse,
        generate: gen_sse,
        dictionary: &[
            "\n",
            "\r\n",
            "\n\n",
            "data: ",
            "event: ",
            "event: error\n",
            ": ping\n",
            "data: [DONE]\n\n",
            "\"error\"",
            "\"choices\"",
            "\"delta\"",
            "\"candidates\"",
            "{\"type\":\"",
            "finishReason",
            "{",
            "}",
            "\"",
        ],
    },
    Target {
        name: "eventstream",
        run: fuzzing::eventstream,
        generate: gen_eventstream,
        dictionary: &[
            "\0\0\0",
            "\0\0\0\x10",
            ":message-type",
            "exception",
            "\x07",
            "chunk",
        ],
    },
    Target {
        name: "hint",
        run: fuzzing::hint,
        generate: gen_hint,
        dictionary: &[
            "0",
            "9",
            ".",
            "s",
            "ms",
            "m",
            "h",
            "µs",
            " seconds",
            "-",
            "+",
            "T",
            "Z",
            ":",
            "GMT",
            "99999999999999999999",
            "1e9",
        ],
    },
    Target {
        name: "pin",
        run: fuzzing::pin,
        generate: gen_body,
        dictionary: &[
            "@",
            "/",
            "\"model\"",
            "\"model\":",
            "@20251001",
            "@q4_K_M",
            "@fp8",
            "\\u0040",
            "\\/",
            "\\\"",
            "{",
            "}",
            "[",
            "]",
            ",",
            "\"",
        ],
    },
    Target {
        name: "auth_profiles",
        run: fuzzing::auth_profiles,
        generate: gen_profiles,
        dictionary: JSON_DICT,
    },
    Target {
        name: "auth_state",
        run: fuzzing::auth_state,
        generate: gen_state,
        dictionary: JSON_DICT,
    },
    Target {
        name: "claude_credentials",
        run: fuzzing::claude_credentials,
        generate: gen_claude,
        dictionary: JSON_DICT,
    },
    Target {
        name: "config",
        run: fuzzing::config,
        generate: gen_config,
        dictionary: &[
            "\n",
            "[",
            "]",
            "[[",
            "]]",
            "=",
            "\"",
            "'",
            "{",
            "}",
            ",",
            "_env",
            "_file",
            "[server]\n",
            "[gateway.auth]\n",
            "[providers.x]\n",
            "mode = ",
            "\"1s\"",
            "\"32MiB\"",
            "\\u",
        ],
    },
];

fn iterations() -> usize {
    std::env::var("KEYGATE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn seed() -> u64 {
    std::env::var("KEYGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6b65_7967_6174_6521)
}

fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a known target")
}

/// Runs one target on its corpus and on generated inputs; reports the first failure.
fn fuzz(name: &str) {
    let t = target(name);
    let seeds = seeds();
    let mut inputs: Vec<Vec<u8>> = corpus(name);
    let base = inputs.len();
    let mut rng = fastrand::Rng::with_seed(seed() ^ fnv(name));
    let pool = seed_pool(name, &seeds);
    for i in 0..iterations() {
        let input = match i % 4 {
            // Structured.
            0 | 1 => {
                let raw: Vec<u8> = (0..rng.usize(64..2048)).map(|_| rng.u8(..)).collect();
                (t.generate)(&mut Unstructured::new(&raw), &seeds)
            }
            // A real seed, mutated.
            2 if !pool.is_empty() => mutate(&mut rng, &pool, t.dictionary),
            // Raw bytes.
            _ => (0..rng.usize(0..512)).map(|_| rng.u8(..)).collect(),
        };
        inputs.push(input);
    }
    for (i, input) in inputs.iter().enumerate() {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (t.run)(input))) {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            std::fs::create_dir_all(&dir).expect("failure dir");
            let file = dir.join(format!("{name}-{i}.bin"));
            std::fs::write(&file, input).expect("failure file");
            let what = if i < base {
                format!("corpus input {i}")
            } else {
                format!(
                    "generated input {} (KEYGATE_FUZZ_SEED={})",
                    i - base,
                    seed()
                )
            };
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!(
                "fuzz target {name}: {what} fails: {msg}\n  input ({} bytes) saved to {}\n  starts {:?}",
                input.len(),
                file.display(),
                String::from_utf8_lossy(&input[..input.len().min(300)])
            );
        }
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Structure-aware mutation of a real seed: a few edits among flips, inserted tokens,
/// deleted, duplicated or spliced ranges, and truncation.
fn mutate(rng: &mut fastrand::Rng, pool: &[Vec<u8>], dict: &[&str]) -> Vec<u8> {
    let mut v = pool[rng.usize(..pool.len())].clone();
    for _ in 0..rng.usize(1..6) {
        let at = rng.usize(..=v.len());
        match rng.u8(..7) {
            0 if !v.is_empty() => {
                let i = rng.usize(..v.len());
                v[i] ^= 1 << rng.u8(..8);
            }
            1 => {
                let tok = dict[rng.usize(..dict.len())].as_bytes();
                v.splice(at..at, tok.iter().copied());
            }
            2 => {
                let end = (at + rng.usize(..16)).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let end = (at + rng.usize(..64)).min(v.len());
                let dup = v[at..end].to_vec();
                let to = rng.usize(..=v.len());
                v.splice(to..to, dup);
            }
            4 => {
                let other = &pool[rng.usize(..pool.len())];
                let from = rng.usize(..=other.len());
                let end = (from + rng.usize(..128)).min(other.len());
                v.splice(at..at, other[from..end].iter().copied());
            }
            5 => v.truncate(at),
            _ if !v.is_empty() => {
                let i = rng.usize(..v.len());
                v[i] = rng.u8(..);
            }
            _ => {}
        }
    }
    v.truncate(16 * 1024);
    v
}

fn seed_pool(name: &str, s: &Seeds) -> Vec<Vec<u8>> {
    match name {
        "classify" => s.answers.clone(),
        "sse" => s
            .streams
            .iter()
            .map(|(p, b)| [&[*p, 7][..], b].concat())
            .collect(),
        "eventstream" => s.event_streams.clone(),
        "hint" => HINT_VALUES.iter().map(|v| v.as_bytes().to_vec()).collect(),
        "pin" => s.bodies.clone(),
        "auth_profiles" => s.profiles.clone(),
        "auth_state" => s.states.clone(),
        "claude_credentials" => s.claude.clone(),
        "config" => s.configs.clone(),
        _ => Vec::new(),
    }
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = root().join("fuzz/corpus").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.expect("corpus entry").path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("corpus file"))
        .collect()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn provider_byte(id: &str) -> u8 {
    PROVIDERS.iter().position(|p| *p == id).unwrap_or(15) as u8
}

/// A recorded answer in the `classify` layout.
fn answer_bytes(provider: &str, status: u16, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let code = status - 100;
    let mut v = vec![provider_byte(provider), (code >> 8) as u8, code as u8];
    for (k, val) in headers {
        v.extend_from_slice(format!("{k}: {val}\n").as_bytes());
    }
    v.extend_from_slice(b"\n\n");
    v.extend_from_slice(body);
    v
}

fn seeds() -> Seeds {
    let mut s = Seeds::default();
    let dir = root().join("tests/fixtures/provider-errors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/provider-errors")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for f in files {
        let v: Value = serde_json::from_slice(&std::fs::read(&f).expect("fixture")).expect("json");
        let provider = v["provider"].as_str().expect("provider");
        let status = v["status"].as_u64().expect("status") as u16;
        let body = v["body"].as_str().expect("body").as_bytes().to_vec();
        let headers: Vec<(String, String)> = v["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        if status == 200 {
            s.streams.push((provider_byte(provider), body));
        } else {
            s.answers
                .push(answer_bytes(provider, status, &headers, &body));
        }
    }
    for (p, body) in STREAMS {
        s.streams.push((provider_byte(p), body.as_bytes().to_vec()));
    }
    s.event_streams.push(bedrock_recording());
    s.event_streams
        .push(vec![1, 0x05, 1, 0, 2, 3, 1, 1, 1, 8, 0x01, 0, 0, 2, 0]);
    for b in BODIES {
        s.bodies.push(b.as_bytes().to_vec());
    }
    for p in PROFILE_FILES {
        s.profiles.push(p.as_bytes().to_vec());
    }
    for p in STATE_FILES {
        s.states.push(p.as_bytes().to_vec());
    }
    for p in CLAUDE_FILES {
        s.claude.push(p.as_bytes().to_vec());
    }
    s.configs
        .push(std::fs::read(root().join("config/keygate.toml")).expect("config"));
    for c in CONFIGS {
        s.configs.push(c.as_bytes().to_vec());
    }
    s
}

const STREAMS: &[(&str, &str)] = &[
    ("anthropic", "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hi\"}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
    ("openai", "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"),
    ("openai", "data: {\"error\":{\"message\":\"Rate limit reached. Please try again in 1.5s.\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}\n\n"),
    ("gemini", "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}],\"role\": \"model\"}}]}\r\n\r\ndata: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"!\"}]},\"finishReason\": \"STOP\"}]}\r\n\r\n"),
    ("gemini", "data: {\"error\": {\"code\": 429, \"message\": \"Resource exhausted\", \"status\": \"RESOURCE_EXHAUSTED\", \"details\": [{\"@type\": \"type.googleapis.com/google.rpc.RetryInfo\", \"retryDelay\": \"26s\"}]}}\n\n"),
    ("openai", "event: response.created\ndata: {\"type\":\"response.created\"}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\nevent: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"server_error\",\"message\":\"overloaded\"}}}\n\n"),
    ("cohere", "event: message-start\ndata: {}\n\nevent: content-delta\ndata: {\"delta\":{}}\n\nevent: message-end\ndata: {}\n\n"),
];

const BODIES: &[&str] = &[
    r#"{"model":"claude-sonnet-4-5@anthropic:work","max_tokens":1024,"messages":[{"role":"user","content":"hi @ there","model":"x@y"}],"stream":true}"#,
    r#"{ "stream" : true, "model" : "llama-3@q4_K_M@home" }"#,
    r#"{"model":"@cf/meta/llama-3@20251001@me@example.com"}"#,
    r#"{"model":"gpt-4o\u0040team\/x","messages":[]}"#,
    r#"{"model":"a","model":"b@c"}"#,
    r#"{"messages":[{"content":"{\"model\":\"no\"}"}],"model":"m@fp8@p"}"#,
    "{\n\t\"model\":\"claude@\"\n}\n",
];

const PROFILE_FILES: &[&str] = &[
    r#"{"version":1,"profiles":{"anthropic:work":{"type":"api_key","provider":"anthropic","key":"sk-ant-api03-aaaa-bbbb"},"openai:env":{"type":"api_key","provider":"openai","keyRef":{"source":"env","provider":"default","id":"FUZZ_KEY"}},"anthropic:me@example.com":{"type":"oauth","provider":"anthropic","access":"sk-ant-oat01-xxxx","refresh":"sk-ant-ort01-yyyy","expires":1798761600000,"email":"me@example.com"},"x":{"type":"token","provider":"x","token":"${FUZZ_KEY}","expires":-5},"bad":5,"odd":{"type":"laser","provider":"p"}}}"#,
    r#"{"anthropic":{"key":"sk-legacy-1234"},"openai":{"mode":"api_key","apiKey":"sk-legacy-5678"},"version":2}"#,
    r#"{"profiles":[]}"#,
    r#"{"profiles":{"a:b":{"provider":"a","key":"","keyRef":{"source":"exec","provider":"vault","id":"x"}},"c:d":{"type":"oauth","provider":"c","accessRef":{"source":"env","id":"FUZZ_KEY"}}}}"#,
];

const STATE_FILES: &[&str] = &[
    r#"{"version":1,"order":{"anthropic":["anthropic:work"," anthropic:me ","anthropic:work",""],"openai":"x","x":[1,null,"y"]},"lastGood":{"anthropic":"anthropic:work"},"usageStats":{}}"#,
    r#"{"order":null}"#,
    r#"{"order":[1,2]}"#,
];

const CLAUDE_FILES: &[&str] = &[
    r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-abcdefgh","refreshToken":"sk-ant-ort01-ijklmnop","expiresAt":1798761600000,"scopes":["user:inference"],"subscriptionType":"max"}}"#,
    r#"{"claudeAiOauth":{"accessToken":" sk-ant-oat01-only ","expiresAt":"soon"}}"#,
    r#"{"claudeAiOauth":{"refreshToken":"sk-ant-ort01-no-access"}}"#,
    r#"{"claudeAiOauth":"sk-ant-oat01-not-an-object"}"#,
];

const CONFIGS: &[&str] = &[
    "[server]\nlisten = \"127.0.0.1:8787\"\nrequest_timeout = \"10m\"\nmax_request_body = \"1MiB\"\n\n[gateway.auth]\nmode = \"token\"\ntokens = [{ token_env = \"GATEWAY\", agent = \"main\" }, { token_file = \"/etc/keygate/token\", any_agent = true }]\n\n[admin]\ntoken_file = \"/dev/zero\"\n",
    "[rotation]\nstrategy = \"round-robin\"\nbackoff = [\"1s\", \"5m\"]\nrotate_on = [\"rate_limit\", \"billing\"]\n\n[providers.mine]\nbase_url = \"https://llm.example.com/v1\"\nauth = { header = \"x-key\" }\nenv_prefix = \"MINE\"\nheaders = { \"x-a\" = \"b\" }\n\n[secrets.providers.vault]\nsource = \"exec\"\ncommand = \"/usr/bin/vault\"\nargs = [\"read\"]\ntimeout = \"5s\"\n",
    "[gateway.auth]\nmode = \"password\"\npassword_env = \"PW\"\n[gateway]\nallowed_origins = [\"https://app.example.com\"]\n",
];

/// Values the hint parsers meet, and their traps.
const HINT_VALUES: &[&str] = &[
    "37",
    "1.5",
    "0",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "6m0s",
    "2h31m16.752s",
    "39.418973511s",
    "20ms",
    "1µs",
    "2024-03-26T20:00:00Z",
    "2024-03-26T20:00:00.123+02:00",
    "1760000037",
    "1760000037123",
    "99999999999999999999",
    "try again in 9m38.016s",
    "-1",
    "1e9",
    " 12 ",
];

/// A Bedrock stream as recorded: a content chunk, then a throttling exception.
fn bedrock_recording() -> Vec<u8> {
    let frame = |headers: &[(&str, &str)], payload: &[u8]| {
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
        out.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        out.extend_from_slice(&[0x9a, 0xbc, 0xde, 0xf0]);
        out
    };
    let mut s = frame(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        // base64 of {"type":"content_block_delta","index":0,"delta":{"text":"Hi"}}
        br#"{"bytes":"eyJ0eXBlIjoiY29udGVudF9ibG9ja19kZWx0YSIsImluZGV4IjowLCJkZWx0YSI6eyJ0ZXh0IjoiSGkifX0=","p":"abcd"}"#,
    );
    s.extend(frame(
        &[
            (":message-type", "exception"),
            (":exception-type", "throttlingException"),
            (":content-type", "application/json"),
        ],
        br#"{"message":"Too many requests, please wait before trying again. You have sent too many requests.  Wait before trying again."}"#,
    ));
    s
}

// === generators ===

fn pick<'a, T: ?Sized>(u: &mut Unstructured<'_>, from: &[&'a T]) -> &'a T {
    u.choose(from).copied().unwrap_or(from[0])
}

fn small(u: &mut Unstructured<'_>, max: usize) -> usize {
    u.int_in_range(0..=max).unwrap_or(0)
}

fn text(u: &mut Unstructured<'_>, max: usize) -> String {
    let n = small(u, max);
    let mut s = String::new();
    for _ in 0..n {
        let c: char = u.arbitrary().unwrap_or('x');
        s.push(c);
    }
    s
}

/// A JSON value with the keys the loaders and the classifier look at.
fn json_value(u: &mut Unstructured<'_>, depth: usize, keys: &[&str], strings: &[&str]) -> Value {
    let kind = if depth == 0 { small(u, 4) } else { small(u, 7) };
    match kind {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary().unwrap_or(false)),
        2 => match small(u, 3) {
            0 => json!(u.arbitrary::<i64>().unwrap_or(0)),
            1 => json!(u
                .arbitrary::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .unwrap_or(1.5)),
            _ => json!(u.int_in_range(0..=600u64).unwrap_or(429)),
        },
        3 | 4 => {
            if u.ratio(1, 4).unwrap_or(false) {
                Value::String(text(u, 12))
            } else {
                Value::String(pick(u, strings).to_owned())
            }
        }
        5 => Value::Array(
            (0..small(u, 3))
                .map(|_| json_value(u, depth - 1, keys, strings))
                .collect(),
        ),
        _ => Value::Object(
            (0..small(u, 5))
                .map(|_| {
                    let k = if u.ratio(1, 8).unwrap_or(false) {
                        text(u, 6)
                    } else {
                        pick(u, keys).to_owned()
                    };
                    (k, json_value(u, depth - 1, keys, strings))
                })
                .collect(),
        ),
    }
}

const ERROR_KEYS: &[&str] = &[
    "error",
    "type",
    "code",
    "status",
    "message",
    "Message",
    "details",
    "errors",
    "reason",
    "metadata",
    "raw",
    "__type",
    "error_code",
    "@type",
    "retryDelay",
    "violations",
    "quotaId",
    "quotaValue",
    "detail",
    "success",
    "result",
];
const ERROR_STRINGS: &[&str] = &[
    "rate_limit_error",
    "overloaded_error",
    "insufficient_quota",
    "RESOURCE_EXHAUSTED",
    "type.googleapis.com/google.rpc.RetryInfo",
    "type.googleapis.com/google.rpc.QuotaFailure",
    "type.googleapis.com/google.rpc.ErrorInfo",
    "26s",
    "1.5s",
    "Rate limit reached. Please try again in 6m0s.",
    "You exceeded your current quota, please check your plan and billing details.",
    "Please retry in 39.418973511s",
    "ThrottlingException",
    "enforced_spend_limit_reached",
    "invalid x-api-key",
    "'rate_limit' is not a valid 'model'",
    "0",
    "error",
];

fn gen_answer(u: &mut Unstructured<'_>, seeds: &Seeds) -> Vec<u8> {
    let provider = pick(u, &PROVIDERS);
    let status = *u
        .choose(&[
            400u16, 401, 402, 403, 404, 408, 412, 413, 429, 500, 502, 503, 504, 529, 200,
        ])
        .unwrap_or(&429);
    let mut headers = Vec::new();
    for _ in 0..small(u, 5) {
        let name = pick(
            u,
            &[
                "retry-after",
                "retry-after-ms",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "content-type",
                "x-amzn-errortype",
                "date",
            ],
        );
        let value = if u.ratio(1, 3).unwrap_or(false) {
            text(u, 16)
        } else {
            pick(u, HINT_VALUES).to_owned()
        };
        headers.push((name.to_owned(), value));
    }
    let body = if u.ratio(1, 3).unwrap_or(false) && !seeds.answers.is_empty() {
        let a = pick(u, &seeds.answers.iter().collect::<Vec<_>>()).clone();
        let at = memchr_blank(&a).map_or(a.len(), |i| i + 2);
        a[at..].to_vec()
    } else {
        json_value(u, 4, ERROR_KEYS, ERROR_STRINGS)
            .to_string()
            .into_bytes()
    };
    let cut = if u.ratio(1, 4).unwrap_or(false) {
        small(u, body.len())
    } else {
        body.len()
    };
    answer_bytes(provider, status, &headers, &body[..cut])
}

fn memchr_blank(v: &[u8]) -> Option<usize> {
    v.windows(2).position(|w| w == b"\n\n")
}

fn gen_sse(u: &mut Unstructured<'_>, seeds: &Seeds) -> Vec<u8> {
    let provider = pick(u, &PROVIDERS);
    let mut out = vec![provider_byte(provider), u.arbitrary().unwrap_or(0)];
    let crlf = u.ratio(1, 4).unwrap_or(false);
    let nl = if crlf { "\r\n" } else { "\n" };
    for _ in 0..small(u, 8) {
        match small(u, 9) {
            0 => out.extend_from_slice(format!(": keep-alive{nl}{nl}").as_bytes()),
            1 => out.extend_from_slice(format!("data: [DONE]{nl}{nl}").as_bytes()),
            2 => {
                // A line at or past LINE_LIMIT.
                let len = LINE_LIMIT - 8 + small(u, 16);
                out.extend_from_slice(b"data: ");
                out.extend(std::iter::repeat_n(b'a', len));
                out.extend_from_slice(format!("{nl}{nl}").as_bytes());
            }
            3 if !seeds.streams.is_empty() => {
                let s = &seeds.streams[small(u, seeds.streams.len() - 1)].1;
                let from = small(u, s.len());
                let to = from + small(u, s.len() - from);
                out.extend_from_slice(&s[from..to]);
            }
            _ => {
                if u.ratio(2, 3).unwrap_or(true) {
                    let ev = pick(
                        u,
                        &[
                            "message_start",
                            "content_block_start",
                            "content_block_delta",
                            "message_stop",
                            "error",
                            "ping",
                            "message",
                            "response.output_text.delta",
                            "response.completed",
                            "response.failed",
                            "content-delta",
                            "message-end",
                        ],
                    );
                    out.extend_from_slice(format!("event: {ev}{nl}").as_bytes());
                }
                for _ in 0..=small(u, 1) {
                    let data = json_value(
                        u,
                        4,
                        &[
                            "type",
                            "error",
                            "choices",
                            "delta",
                            "content",
                            "role",
                            "text",
                            "finish_reason",
                            "candidates",
                            "parts",
                            "finishReason",
                            "message",
                            "code",
                            "response",
                        ],
                        &[
                            "assistant",
                            "",
                            "Hi",
                            "error",
                            "stop",
                            "STOP",
                            "content_block_delta",
                            "message_stop",
                            "rate_limit_error",
                            "overloaded_error",
                            "try again in 2s",
                        ],
                    );
                    out.extend_from_slice(format!("data: {data}{nl}").as_bytes());
                }
                if u.ratio(5, 6).unwrap_or(true) {
                    out.extend_from_slice(nl.as_bytes());
                }
            }
        }
    }
    out
}

fn gen_eventstream(u: &mut Unstructured<'_>, seeds: &Seeds) -> Vec<u8> {
    if u.ratio(1, 4).unwrap_or(false) {
        let s = &seeds.event_streams[0];
        let mut v = s.clone();
        // A recording cut anywhere or with a byte changed.
        let at = small(u, v.len() - 1);
        if u.arbitrary().unwrap_or(false) {
            v.truncate(at);
        } else {
            v[at] = u.arbitrary().unwrap_or(0);
        }
        return v;
    }
    // A frame description (see `fuzzing::event_stream_from_spec`): mostly strings and
    // meaningful payloads.
    let mut spec = vec![u.int_in_range(1..=255u8).unwrap_or(1)];
    for _ in 0..small(u, 6) {
        let corrupt = if u.ratio(1, 8).unwrap_or(false) {
            0x40
        } else {
            0
        };
        let payload = small(u, 3) << 2;
        let nh = small(u, 3);
        spec.push(corrupt | payload as u8 | nh as u8);
        for _ in 0..=nh {
            spec.push(u.arbitrary().unwrap_or(0));
            spec.push(if u.ratio(1, 10).unwrap_or(false) {
                250
            } else {
                7
            });
            spec.push(u.arbitrary().unwrap_or(0));
        }
        match payload >> 2 {
            0 => {
                let n = small(u, 40);
                spec.push(n as u8);
                spec.extend((0..n).map(|_| u.arbitrary::<u8>().unwrap_or(0)));
            }
            1 | 2 => spec.push(u.arbitrary().unwrap_or(0)),
            _ => {}
        }
        if corrupt != 0 {
            spec.push(u.arbitrary().unwrap_or(1));
        }
    }
    spec
}

fn gen_hint(u: &mut Unstructured<'_>, _: &Seeds) -> Vec<u8> {
    let mut s = String::new();
    match small(u, 6) {
        0 => s.push_str(&u.arbitrary::<u64>().unwrap_or(0).to_string()),
        1 => {
            // Digits, possibly very many, with a dot.
            for _ in 0..=small(u, 40) {
                s.push(char::from(b'0' + u.int_in_range(0..=9u8).unwrap_or(9)));
            }
            if u.arbitrary().unwrap_or(false) {
                let at = small(u, s.len());
                s.insert(at, '.');
            }
        }
        2 => {
            for _ in 0..=small(u, 4) {
                s.push_str(&u.int_in_range(0..=99_999u32).unwrap_or(1).to_string());
                if u.arbitrary().unwrap_or(false) {
                    s.push('.');
                    s.push_str(&u.int_in_range(0..=999u32).unwrap_or(5).to_string());
                }
                s.push_str(pick(
                    u,
                    &["h", "m", "s", "ms", "us", "µs", "ns", " seconds", "x"],
                ));
            }
        }
        3 => {
            let (y, mo, d) = (
                u.int_in_range(0..=9999u32).unwrap_or(2024),
                u.int_in_range(0..=13u32).unwrap_or(3),
                u.int_in_range(0..=32u32).unwrap_or(26),
            );
            let (h, mi, se) = (
                u.int_in_range(0..=25u32).unwrap_or(20),
                u.int_in_range(0..=61u32).unwrap_or(0),
                u.int_in_range(0..=61u32).unwrap_or(0),
            );
            s = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}");
            s.push_str(pick(
                u,
                &["Z", "", ".5Z", "+02:00", "-11:30", "+99:99", "z"],
            ));
        }
        4 => {
            s = format!(
                "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
                pick(u, &["Mon", "Wed", "Sun", "Xyz"]),
                u.int_in_range(0..=32u32).unwrap_or(1),
                pick(u, &["Jan", "Oct", "Dec", "Foo"]),
                u.int_in_range(0..=99999u32).unwrap_or(2015),
                u.int_in_range(0..=25u32).unwrap_or(7),
                u.int_in_range(0..=61u32).unwrap_or(28),
                u.int_in_range(0..=61u32).unwrap_or(0),
            );
        }
        5 => s = text(u, 24),
        _ => {
            s.push_str(pick(u, HINT_VALUES));
            s.push_str(pick(u, HINT_VALUES));
        }
    }
    s.into_bytes()
}

fn gen_body(u: &mut Unstructured<'_>, _: &Seeds) -> Vec<u8> {
    let mut model = String::new();
    if u.ratio(1, 4).unwrap_or(false) {
        model.push_str(pick(u, &["@cf/meta/", "org/", "a/b/", "@"]));
    }
    model.push_str(pick(
        u,
        &[
            "claude-sonnet-4-5",
            "gpt-4o",
            "llama-3",
            "m",
            "",
            "a@b",
            "x\"y",
        ],
    ));
    for _ in 0..small(u, 3) {
        model.push('@');
        model.push_str(pick(
            u,
            &[
                "20251001",
                "q4_K_M",
                "iq3_XXS",
                "8bit",
                "fp8",
                "bf16",
                "mxfp4",
                "anthropic:work",
                "me@example.com",
                "",
                "Q8_0",
                "int4",
                "p/q",
            ],
        ));
    }
    let literal = if u.ratio(1, 3).unwrap_or(false) {
        // Escape some characters the long way.
        let mut l = String::from("\"");
        for c in model.chars() {
            match c {
                '@' if u.arbitrary().unwrap_or(false) => l.push_str("\\u0040"),
                '/' if u.arbitrary().unwrap_or(false) => l.push_str("\\/"),
                '"' => l.push_str("\\\""),
                c => l.push(c),
            }
        }
        l.push('"');
        l
    } else {
        Value::String(model).to_string()
    };
    let mut members: Vec<String> = Vec::new();
    for _ in 0..small(u, 3) {
        members.push(format!(
            "\"{}\":{}",
            pick(
                u,
                &[
                    "messages",
                    "stream",
                    "max_tokens",
                    "metadata",
                    "mod\\u0065l"
                ]
            ),
            json_value(u, 3, &["model", "content", "role"], &["x@y", "hi"])
        ));
    }
    let at = small(u, members.len());
    members.insert(at, format!("\"model\" : {literal}"));
    if u.ratio(1, 10).unwrap_or(false) {
        members.push("\"model\":\"dup\"".to_owned());
    }
    let ws = pick(u, &["", " ", "\n\t", "\r\n"]);
    format!("{{{ws}{}{ws}}}", members.join(&format!(",{ws}"))).into_bytes()
}

const PROFILE_KEYS: &[&str] = &[
    "type",
    "mode",
    "provider",
    "key",
    "apiKey",
    "token",
    "access",
    "refresh",
    "expires",
    "email",
    "displayName",
    "keyRef",
    "tokenRef",
    "accessRef",
    "refreshRef",
    "source",
    "id",
];
const PROFILE_STRINGS: &[&str] = &[
    "api_key",
    "token",
    "oauth",
    "anthropic",
    "openai",
    "env",
    "file",
    "exec",
    "default",
    "FUZZ_KEY",
    "EMPTY",
    "UNSET",
    "${FUZZ_KEY}",
    "${EMPTY}",
    "sk-ant-api03-zzzz-1111",
    " sk-padded-2222 ",
    "",
];

fn gen_profiles(u: &mut Unstructured<'_>, _: &Seeds) -> Vec<u8> {
    let mut entries = serde_json::Map::new();
    for _ in 0..small(u, 5) {
        let id = format!(
            "{}:{}",
            pick(u, &["anthropic", "openai", "x", ""]),
            pick(u, &["work", "me@example.com", "default", " "])
        );
        let entry = if u.ratio(4, 5).unwrap_or(true) {
            let mut e = serde_json::Map::new();
            for _ in 0..small(u, 6) {
                let k = pick(u, PROFILE_KEYS).to_owned();
                let v = if k.ends_with("Ref") && u.ratio(2, 3).unwrap_or(true) {
                    json!({
                        "source": pick(u, &["env", "file", "exec", "other"]),
                        "provider": pick(u, &["default", "vault"]),
                        "id": pick(u, &["FUZZ_KEY", "EMPTY", "UNSET", ""]),
                    })
                } else {
                    json_value(u, 2, PROFILE_KEYS, PROFILE_STRINGS)
                };
                e.insert(k, v);
            }
            Value::Object(e)
        } else {
            json_value(u, 2, PROFILE_KEYS, PROFILE_STRINGS)
        };
        entries.insert(id, entry);
    }
    let doc = if u.ratio(1, 5).unwrap_or(false) {
        Value::Object(entries)
    } else {
        let version = if u.ratio(1, 4).unwrap_or(false) {
            json_value(u, 1, &["v"], &["2", "one"])
        } else {
            json!(1)
        };
        json!({ "version": version, "profiles": entries })
    };
    doc.to_string().into_bytes()
}

fn gen_state(u: &mut Unstructured<'_>, _: &Seeds) -> Vec<u8> {
    let mut order = serde_json::Map::new();
    for _ in 0..small(u, 4) {
        let ids = if u.ratio(4, 5).unwrap_or(true) {
            Value::Array(
                (0..small(u, 5))
                    .map(|_| {
                        if u.ratio(5, 6).unwrap_or(true) {
                            json!(pick(u, &["a:1", " a:1", "a:1 ", "b:2", "", "  "]))
                        } else {
                            json_value(u, 1, &["id"], &["x"])
                        }
                    })
                    .collect(),
            )
        } else {
            json_value(u, 2, &["id"], &["x"])
        };
        order.insert(pick(u, &["anthropic", "openai", "", "x"]).to_owned(), ids);
    }
    let mut doc = serde_json::Map::new();
    doc.insert("order".to_owned(), Value::Object(order));
    for _ in 0..small(u, 2) {
        doc.insert(
            pick(u, &["version", "lastGood", "usageStats", "order"]).to_owned(),
            json_value(u, 3, &["anthropic", "lastUsed"], &["a:1"]),
        );
    }
    Value::Object(doc).to_string().into_bytes()
}

fn gen_claude(u: &mut Unstructured<'_>, _: &Seeds) -> Vec<u8> {
    let mut oauth = serde_json::Map::new();
    for _ in 0..small(u, 5) {
        let k = pick(
            u,
            &[
                "accessToken",
                "refreshToken",
                "expiresAt",
                "scopes",
                "subscriptionType",
            ],
        );
        let v = if u.ratio(2, 3).unwrap_or(true) {
            json!(pick(
                u,
                &[
                    "sk-ant-oat01-abcdefgh",
                    "sk-ant-ort01-ijklmnop",
                    " sk-ant-oat01-padded ",
                    "",
                    "   ",
                ]
            ))
        } else {
            json_value(u, 2, &["x"], &["y"])
        };
        oauth.insert(k.to_owned(), v);
    }
    let doc = if u.ratio(5, 6).unwrap_or(true) {
        json!({ "claudeAiOauth": oauth })
    } else {
        json_value(
            u,
            3,
            &["claudeAiOauth", "accessToken"],
            &["sk-ant-oat01-abcdefgh"],
        )
    };
    doc.to_string().into_bytes()
}

const DURATIONS: &[&str] = &[
    "\"1s\"",
    "\"250ms\"",
    "\"10m\"",
    "\"24h\"",
    "\"0s\"",
    "\"90\"",
    "\"18446744073709551615\"",
    "\"300000000000y\"",
    "\"100years\"",
    "\"1x\"",
];

/// A config key and values that are mostly valid for it.
type KeyValues = (&'static str, &'static [&'static str]);

/// Config sections, their keys and values that are mostly valid for them.
const CONFIG_SECTIONS: &[(&str, &[KeyValues])] = &[
    (
        "server",
        &[
            ("listen", &["\"127.0.0.1:8787\"", "\"[::1]:0\"", "\"nowhere\""]),
            ("max_request_body", &["\"32MiB\"", "\"1\"", "\"0\"", "\"1EiB\"", "\"99999999999999999999\""]),
            ("max_error_body", &["\"64KiB\"", "\"1MB\""]),
            ("request_timeout", DURATIONS),
            ("connect_timeout", DURATIONS),
            ("first_byte_timeout", DURATIONS),
            ("shutdown_grace", DURATIONS),
        ],
    ),
    (
        "gateway.auth",
        &[
            ("mode", &["\"none\"", "\"token\"", "\"password\"", "\"trusted-proxy\"", "\"x\""]),
            ("password_env", &["\"PW\"", "\"ODD\""]),
            ("password_file", &["\"/etc/keygate/pw\""]),
            ("trusted_cidrs", &["[\"10.0.0.0/8\", \"::1/128\"]", "[\"300.0.0.0/8\"]"]),
            ("identity_header", &["\"x-forwarded-user\"", "\"bad header\""]),
            ("allow_agents", &["[\"main\", \"ci\"]", "[\"../x\"]"]),
            ("tokens", &["[{ token_env = \"GW\", agent = \"main\" }, { token_file = \"/dev/zero\", any_agent = true }]", "[{ agent = \"main\" }]"]),
        ],
    ),
    ("gateway", &[("allowed_origins", &["[\"https://app.example.com\"]", "[\"https://x/path\"]"])]),
    (
        "admin",
        &[
            ("token_env", &["\"ADMIN\"", "\"ODD\""]),
            ("token_file", &["\"/dev/zero\""]),
            ("listen", &["\"127.0.0.1:9000\""]),
        ],
    ),
    ("log", &[("format", &["\"json\"", "\"text\"", "\"xml\""])]),
    (
        "rotation",
        &[
            ("strategy", &["\"round-robin\"", "\"lru\"", "\"fill-first\""]),
            ("max_attempts", &["3", "0", "4294967295"]),
            ("peek_stream", &["true", "false"]),
            ("rotate_on", &["[\"rate_limit\", \"billing\"]", "[\"bogus\"]"]),
            ("on_all_cooling", &["\"wait\"", "\"fail\""]),
            ("max_wait", DURATIONS),
            ("backoff", &["[\"1s\", \"5m\"]", "[]", "[\"18446744073709551615\"]", "[\"300000000000y\"]"]),
            ("billing_backoff", &["[\"5h\", \"24h\"]", "[\"100years\"]"]),
        ],
    ),
    (
        "providers.mine",
        &[
            ("base_url", &["\"https://llm.example.com/v1\"", "\"ftp://x\"", "\"http://[::1]:1/\""]),
            ("auth", &["{ header = \"x-key\" }", "{ query = \"key\" }", "\"bearer\"", "\"weird\""]),
            ("env_prefix", &["\"MINE\"", "\"\""]),
            ("model_from", &["\"body\"", "\"path\""]),
            ("headers", &["{ \"x-a\" = \"b\" }", "{ \"bad name\" = \"b\" }"]),
            ("rpm", &["60", "0"]),
            ("order", &["[\"mine:a\"]"]),
            ("probe_model", &["\"m\""]),
        ],
    ),
    ("providers.anthropic", &[("base_url", &["\"https://api.anthropic.com\""]), ("rpm", &["1"])]),
    (
        "providers.mine.oauth",
        &[
            ("token_url", &["\"https://auth.example.com/token\"", "\"nope\""]),
            ("client_id", &["\"abc\""]),
            ("form", &["true"]),
        ],
    ),
    (
        "secrets.providers.vault",
        &[
            ("source", &["\"exec\"", "\"file\""]),
            ("path", &["\"/run/secrets.json\"", "\"relative\""]),
            ("mode", &["\"json\"", "\"singleValue\""]),
            ("command", &["\"/usr/bin/vault\""]),
            ("args", &["[\"read\"]"]),
            ("pass_env", &["[\"VAULT_ADDR\"]"]),
            ("timeout", DURATIONS),
        ],
    ),
];

fn gen_config(u: &mut Unstructured<'_>, _: &Seeds) -> Vec<u8> {
    let mut out = String::new();
    for _ in 0..small(u, 4) {
        let (name, keys) = *u.choose(CONFIG_SECTIONS).unwrap_or(&CONFIG_SECTIONS[0]);
        out.push_str(&format!("[{name}]\n"));
        for _ in 0..=small(u, 3) {
            let (key, values) = *u.choose(keys).unwrap_or(&keys[0]);
            let value = match small(u, 12) {
                0 => format!("{:?}", text(u, 10)),
                1 => {
                    let (_, other) = *u.choose(keys).unwrap_or(&keys[0]);
                    pick(u, other).to_owned()
                }
                _ => pick(u, values).to_owned(),
            };
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out.into_bytes()
}

// === the targets ===

#[test]
fn classify_survives_generated_answers() {
    fuzz("classify");
}

#[test]
fn sse_answers_the_same_in_any_chunking() {
    fuzz("sse");
}

#[test]
fn eventstream_answers_the_same_in_any_chunking() {
    fuzz("eventstream");
}

#[test]
fn hint_parsers_are_capped_and_agree() {
    fuzz("hint");
}

#[test]
fn pin_split_round_trips() {
    fuzz("pin");
}

#[test]
fn auth_profiles_loader_survives_generated_files() {
    fuzz("auth_profiles");
}

#[test]
fn auth_state_loader_survives_generated_files() {
    fuzz("auth_state");
}

#[test]
fn claude_credentials_loader_survives_generated_files() {
    fuzz("claude_credentials");
}

#[test]
fn config_parser_survives_generated_files() {
    fuzz("config");
}

/// Every real stream split at every offset into two chunks, and into three around each
/// event boundary: the exhaustive form of the chunking property on the recordings.
#[test]
fn recorded_streams_answer_the_same_split_anywhere() {
    let seeds = seeds();
    let mut streams: Vec<(&str, &[u8])> = seeds
        .streams
        .iter()
        .map(|(p, s)| (PROVIDERS[usize::from(*p)], s.as_slice()))
        .collect();
    streams.push(("bedrock", &seeds.event_streams[0]));
    for (provider, stream) in streams {
        let check = StreamCheck::new(provider, stream);
        for at in 0..=stream.len() {
            check.check(&[at]);
        }
        for (i, _) in stream.iter().enumerate().filter(|(_, b)| **b == b'\n') {
            check.check(&[i.saturating_sub(1), i, i + 1]);
        }
    }
}

/// Rewrites `fuzz/corpus/<target>/` from the fixtures and seeds above.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let seeds = seeds();
    for t in TARGETS {
        let dir = root().join("fuzz/corpus").join(t.name);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (i, input) in seed_pool(t.name, &seeds).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), input).expect("seed");
        }
    }
}
