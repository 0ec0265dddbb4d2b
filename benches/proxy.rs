//! One full request in process: client → keygate → mock provider, against client → mock
//! directly, on the same tokio runtime (issue 5). The difference is keygate's cost per
//! request, without logging (no tracing subscriber is installed here; the load harness
//! measures keygate with its access log).
//!
//! - `proxy/direct_json`, `proxy/keygate_json`: a non-streaming chat completion;
//! - `proxy/direct_sse`, `proxy/keygate_sse`: a 20-event SSE answer, read to the end;
//! - `proxy/direct_429`, `proxy/keygate_429`: OpenAI's 429 "Request too large … (TPM)", an
//!   error answer keygate reads (JSON error body, classified `format`) and passes on without
//!   cooling the key, so every iteration takes the whole error path.

// `criterion_main!` generates an undocumented `pub fn main`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate::config::Config;
use keygate::credentials::env::EnvSnapshot;
use tokio::net::TcpListener;

const JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench mock."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":6,"total_tokens":18}}"#;
const BODY: &str =
    r#"{"model":"gpt-bench","max_tokens":64,"messages":[{"role":"user","content":"Say hello."}]}"#;
/// The recorded answer of `tests/fixtures/provider-errors/openai-request_too_large_for_tpm_429.json`.
const TOO_LARGE: &str = r#"{"error":{"message":"Request too large for gpt-4o in organization org-78asdf87asdf9aaa8976 on tokens per min (TPM): Limit 30000, Requested 31538. The input or output tokens must be reduced in order to run successfully. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;

fn sse_events() -> Vec<Bytes> {
    let mut v = vec![Bytes::from_static(
        b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    )];
    for i in 1..20 {
        v.push(Bytes::from(format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i} \"}},\"finish_reason\":null}}]}}\n\n"
        )));
    }
    v.push(Bytes::from_static(b"data: [DONE]\n\n"));
    v
}

/// A tiny provider: JSON, 20 SSE events when the request says `"stream":true`, a 429 when
/// its model is `gpt-too-large`.
async fn mock() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let events = sse_events();
    let sse: Bytes = events.concat().into();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let sse = sse.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let sse = sse.clone();
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        if contains(&body, b"gpt-too-large") {
                            let mut r =
                                Response::new(Full::new(Bytes::from_static(TOO_LARGE.as_bytes())));
                            *r.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/json"),
                            );
                            return Ok::<_, Infallible>(r);
                        }
                        let stream = contains(&body, b"\"stream\":true");
                        let mut r = Response::new(Full::new(if stream {
                            sse
                        } else {
                            Bytes::from_static(JSON.as_bytes())
                        }));
                        let ct = if stream {
                            "text/event-stream"
                        } else {
                            "application/json"
                        };
                        r.headers_mut()
                            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn contains(body: &[u8], needle: &[u8]) -> bool {
    body.windows(needle.len()).any(|w| w == needle)
}

async fn keygate(upstream: SocketAddr, state_dir: &std::path::Path) -> SocketAddr {
    let env = EnvSnapshot::from_pairs([("OPENAI_API_KEY", "sk-bench-0001")]);
    let toml = format!("[providers.openai]\nbase_url = \"http://{upstream}\"\n");
    let config = Config::from_toml(&toml, None, &|_| None).expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = keygate::build_state(config, state_dir.to_owned(), env, &addr).expect("state");
    tokio::spawn(keygate::run(
        state,
        keygate::Listeners {
            main: listener,
            admin: None,
        },
        std::future::pending(),
    ));
    addr
}

type BenchClient = Client<HttpConnector, Full<Bytes>>;

async fn one(client: &BenchClient, uri: &http::Uri, body: &Bytes) -> usize {
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri.clone();
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let resp = client.request(req).await.expect("answer");
    let too_large = contains(body, b"gpt-too-large");
    assert!(
        resp.status().is_success() != too_large,
        "status {}",
        resp.status()
    );
    resp.into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len()
}

fn proxy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mock_addr, kg_addr) = rt.block_on(async {
        let m = mock().await;
        (m, keygate(m, dir.path()).await)
    });
    let mut client = HttpConnector::new();
    client.set_nodelay(true);
    let client: BenchClient =
        rt.block_on(async { Client::builder(TokioExecutor::new()).build(client) });
    let direct: http::Uri = format!("http://{mock_addr}/v1/chat/completions")
        .parse()
        .expect("uri");
    let via: http::Uri = format!("http://{kg_addr}/openai/v1/chat/completions")
        .parse()
        .expect("uri");
    let json = Bytes::from_static(BODY.as_bytes());
    let mut sse = BODY.trim_end_matches('}').to_owned();
    sse.push_str(r#","stream":true}"#);
    let sse = Bytes::from(sse);
    let too_large = Bytes::from(BODY.replace("gpt-bench", "gpt-too-large"));

    let mut g = c.benchmark_group("proxy");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for (name, uri, body) in [
        ("direct_json", &direct, &json),
        ("keygate_json", &via, &json),
        ("direct_sse", &direct, &sse),
        ("keygate_sse", &via, &sse),
        ("direct_429", &direct, &too_large),
        ("keygate_429", &via, &too_large),
    ] {
        g.bench_function(name, |b| b.iter(|| rt.block_on(one(&client, uri, body))));
    }
    g.finish();
}

criterion_group!(benches, proxy);
criterion_main!(benches);
