//! The harness's mock provider: a cheap HTTP/1.1 server that speaks just enough OpenAI
//! Chat Completions for keygate to proxy it, run as its own process
//! (`keygate-load --mock --listen ADDR`).
//!
//! Owns: draining every request body without keeping it, answering by the `x-load-mode`
//! header (`json`, `sse`, `idle`, `slow`), rate-limiting keys that start with `sk-lim`
//! (429 + `retry-after`, `--retry-after` seconds; `x-load-delay-ms` delays it too) and,
//! after `POST /__flip`, keys that start with `sk-flip` as well, and counting what it saw
//! (`GET /__stats`, `POST /__reset`: requests, connections, resumed TLS handshakes). With
//! `--tls-cert`/`--tls-key` it serves HTTPS (rustls).
//! Every answer is prebuilt `Bytes` (a refcount bump per request), so the mock costs far
//! less CPU than what it measures. It does not own the load or the measurements.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Content events in an `sse` answer (then `data: [DONE]`).
pub(crate) const SSE_EVENTS: usize = 20;

/// Two 429s of one key further apart than this belong to different bursts.
const BURST_GAP: Duration = Duration::from_millis(500);

/// A response body made of prebuilt frames; `hang` keeps it open (never ends) afterwards.
pub(crate) struct MockBody {
    frames: VecDeque<Bytes>,
    exact: Option<u64>,
    hang: bool,
}

/// Prebuilt answers.
struct Answers {
    json: Bytes,
    sse: Vec<Bytes>,
    limited: Bytes,
}

#[derive(Default)]
struct KeyStats {
    requests: u64,
    /// When each 429 was sent.
    r429: Vec<Duration>,
    /// When each request of a limited key was taken (its body read).
    arrived: Vec<Duration>,
    /// Wall clock (µs since the epoch) of the last 429 sent, for cross-process timing.
    last_429_epoch_us: u64,
}

struct Stats {
    start: Instant,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    body_bytes: AtomicU64,
    keys: Mutex<HashMap<String, KeyStats>>,
    /// Whether `sk-flip` keys are limited now.
    flipped: AtomicBool,
    /// Connections accepted (TCP; a TLS handshake each over TLS).
    connections: AtomicU64,
    /// TLS handshakes that resumed an earlier session.
    resumed: AtomicU64,
}

struct Mock {
    answers: Answers,
    stats: Stats,
    retry_after: HeaderValue,
}

// === impl MockBody ===

impl MockBody {
    fn full(b: Bytes) -> Self {
        Self {
            exact: Some(b.len() as u64),
            frames: VecDeque::from([b]),
            hang: false,
        }
    }

    fn stream(frames: impl IntoIterator<Item = Bytes>, hang: bool) -> Self {
        Self {
            frames: frames.into_iter().collect(),
            exact: None,
            hang,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.frames.pop_front() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            // An idle stream: open until the connection goes away (or the process ends).
            None if self.hang => Poll::Pending,
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.hang && self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.exact
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

// === impl Answers ===

impl Answers {
    fn new() -> Self {
        let json = Bytes::from_static(
            br#"{"id":"chatcmpl-load","object":"chat.completion","created":1700000000,"model":"gpt-load","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the load mock. This answer is about as long as a short completion."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28}}"#,
        );
        let mut sse = Vec::with_capacity(SSE_EVENTS + 1);
        sse.push(Bytes::from_static(
            b"data: {\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-load\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        ));
        for i in 1..SSE_EVENTS {
            let finish = if i + 1 == SSE_EVENTS {
                "\"stop\""
            } else {
                "null"
            };
            sse.push(Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-load\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i} \"}},\"finish_reason\":{finish}}}]}}\n\n"
            )));
        }
        sse.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let limited = Bytes::from_static(
            br#"{"error":{"message":"Rate limit reached for gpt-load in organization org-load on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 2s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        Self { json, sse, limited }
    }
}

// === impl Mock ===

impl Mock {
    async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<MockBody>, Infallible> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/__stats") => return Ok(json_response(self.stats_json())),
            (&Method::POST, "/__reset") => {
                self.reset();
                return Ok(json_response(Bytes::from_static(b"{}")));
            }
            (&Method::POST, "/__flip") => {
                self.stats.flipped.store(true, Ordering::Relaxed);
                return Ok(json_response(Bytes::from_static(b"{}")));
            }
            _ => {}
        }
        let st = &self.stats;
        st.requests.fetch_add(1, Ordering::Relaxed);
        let now_in = st.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        st.max_in_flight.fetch_max(now_in, Ordering::Relaxed);

        let h = req.headers();
        let mode = h
            .get("x-load-mode")
            .map(HeaderValue::as_bytes)
            .unwrap_or(b"json")
            .to_vec();
        let delay = h
            .get("x-load-delay-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        let key = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|k| {
                k.starts_with("sk-lim") || k.starts_with("sk-ok") || k.starts_with("sk-flip")
            })
            .map(str::to_owned);

        // Drain the body without keeping it.
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(Ok(f)) = body.frame().await {
            if let Some(d) = f.data_ref() {
                n += d.len() as u64;
            }
        }
        st.body_bytes.fetch_add(n, Ordering::Relaxed);

        let flipped = st.flipped.load(Ordering::Relaxed);
        let limited = key
            .as_deref()
            .is_some_and(|k| k.starts_with("sk-lim") || (flipped && k.starts_with("sk-flip")));
        if let Some(key) = &key {
            let mut keys = st.keys.lock().unwrap_or_else(|e| e.into_inner());
            let k = keys.entry(key.clone()).or_default();
            k.requests += 1;
            if limited {
                k.arrived.push(st.start.elapsed());
            }
        }
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if let (Some(key), true) = (&key, limited) {
            {
                let mut keys = st.keys.lock().unwrap_or_else(|e| e.into_inner());
                let k = keys.entry(key.clone()).or_default();
                k.r429.push(st.start.elapsed());
                k.last_429_epoch_us = epoch_us();
            }
            st.in_flight.fetch_sub(1, Ordering::Relaxed);
            let mut r = Response::new(MockBody::full(self.answers.limited.clone()));
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            let hs = r.headers_mut();
            hs.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            hs.insert(header::RETRY_AFTER, self.retry_after.clone());
            return Ok(r);
        }
        st.in_flight.fetch_sub(1, Ordering::Relaxed);
        let resp = match mode.as_slice() {
            b"sse" => sse_response(MockBody::stream(self.answers.sse.iter().cloned(), false)),
            // Role chunk and one content chunk (keygate commits on it), then silence.
            b"idle" => sse_response(MockBody::stream(
                self.answers.sse.iter().take(2).cloned(),
                true,
            )),
            _ => json_response(self.answers.json.clone()),
        };
        Ok(resp)
    }

    fn stats_json(&self) -> Bytes {
        let st = &self.stats;
        let keys = st.keys.lock().unwrap_or_else(|e| e.into_inner());
        let mut per_key = serde_json::Map::new();
        for (k, s) in keys.iter() {
            let mut bursts = 0u64;
            let mut max_per_burst = 0u64;
            let mut cur = 0u64;
            let mut last: Option<Duration> = None;
            for t in &s.r429 {
                if last.is_none_or(|l| t.saturating_sub(l) > BURST_GAP) {
                    bursts += 1;
                    cur = 0;
                }
                cur += 1;
                max_per_burst = max_per_burst.max(cur);
                last = Some(*t);
            }
            // Requests sent to the key before its first 429 left: already in flight when the
            // first 429 arrived anywhere (the first one included).
            let before_first = s
                .r429
                .first()
                .map_or(0, |first| s.arrived.iter().filter(|t| *t <= first).count());
            per_key.insert(
                k.clone(),
                serde_json::json!({
                    "requests": s.requests,
                    "r429": s.r429.len(),
                    "bursts": bursts,
                    "max_429_per_burst": max_per_burst,
                    "arrived_before_first_429": before_first,
                    "last_429_epoch_us": s.last_429_epoch_us,
                }),
            );
        }
        Bytes::from(
            serde_json::json!({
                "requests": st.requests.load(Ordering::Relaxed),
                "max_in_flight": st.max_in_flight.load(Ordering::Relaxed),
                "body_bytes": st.body_bytes.load(Ordering::Relaxed),
                "connections": st.connections.load(Ordering::Relaxed),
                "tls_resumed": st.resumed.load(Ordering::Relaxed),
                "keys": per_key,
            })
            .to_string(),
        )
    }

    fn reset(&self) {
        let st = &self.stats;
        st.requests.store(0, Ordering::Relaxed);
        st.max_in_flight.store(0, Ordering::Relaxed);
        st.body_bytes.store(0, Ordering::Relaxed);
        st.keys.lock().unwrap_or_else(|e| e.into_inner()).clear();
        st.flipped.store(false, Ordering::Relaxed);
        st.connections.store(0, Ordering::Relaxed);
        st.resumed.store(0, Ordering::Relaxed);
    }
}

fn json_response(b: Bytes) -> Response<MockBody> {
    let mut r = Response::new(MockBody::full(b));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn sse_response(body: MockBody) -> Response<MockBody> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// Microseconds since the Unix epoch (the wall clock every process on the host shares).
pub(crate) fn epoch_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Serves the mock on `listener` forever (over TLS with `tls`); limited keys get
/// `retry-after: retry_after_s`.
pub(crate) async fn run(
    listener: TcpListener,
    retry_after_s: u64,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mock = Arc::new(Mock {
        retry_after: HeaderValue::from(retry_after_s),
        answers: Answers::new(),
        stats: Stats {
            start: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
            keys: Mutex::new(HashMap::new()),
            flipped: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        },
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        mock.stats.connections.fetch_add(1, Ordering::Relaxed);
        let mock = mock.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let m = mock.clone();
            let svc = service_fn(move |req| m.clone().serve(req));
            let h1 = http1::Builder::new().keep_alive(true).clone();
            match tls {
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(stream).await {
                        if s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                            mock.stats.resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = h1.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
                None => {
                    let _ = h1.serve_connection(TokioIo::new(stream), svc).await;
                }
            }
        });
    }
}
