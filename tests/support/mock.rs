//! A scriptable mock LLM provider: a real hyper server (HTTP/1.1 + h2c) on `127.0.0.1:0`.
//!
//! It speaks enough of Anthropic Messages, OpenAI Chat Completions and Gemini
//! `generateContent` / `streamGenerateContent` for keygate to proxy to it, records every
//! request exactly as received, and answers according to [`Behaviour`] rules chosen per
//! credential (see [`MockProvider::on_key`]).
//!
//! ```ignore
//! let mock = MockProvider::start().await;
//! mock.on_key("sk-bad", Behaviour::status(429, r#"{"error":{"type":"rate_limit_error"}}"#));
//! // ... point keygate at mock.url() ...
//! assert_eq!(mock.requests_for_key("sk-bad"), 1);
//! ```
//!
//! Counting rules:
//! - [`MockProvider::in_flight`] counts requests from the moment their head arrives until
//!   their response body has finished or been dropped.
//! - [`MockProvider::disconnects`] counts responses dropped before they finished: the
//!   client went away while the mock was reading the body, waiting ([`Behaviour::Hang`],
//!   [`Behaviour::Delayed`]), or streaming. A scripted [`End::Reset`] is not a disconnect.
//!
//! Every wait is bounded. The server task, and with it every connection, is aborted when
//! the last clone of the [`MockProvider`] handle drops, or on [`MockProvider::shutdown`].
//! Paused-clock tests (`start_paused`) do not mix well with real sockets; prefer the
//! real clock for tests that use the mock.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, Sleep};

/// Number of text deltas in the streams that [`Behaviour::Normal`] sends.
pub const NORMAL_DELTAS: usize = 3;

/// How long a scripted [`End::Reset`] waits after its last event before aborting, so that
/// the response head and the events reach the client first (h2 would otherwise discard
/// still-queued frames of a reset stream).
pub const RESET_GRACE: Duration = Duration::from_millis(50);

/// The text of a non-streaming [`Behaviour::Normal`] answer.
pub const NORMAL_TEXT: &str = "Hello from the mock provider.";

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Request method.
    pub method: Method,
    /// Path and query exactly as sent (`/v1/messages`, `/v1beta/models/x:streamGenerateContent?alt=sse`).
    pub path_and_query: String,
    /// Headers exactly as received, including `Host` for HTTP/1.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
    /// The credential found (x-api-key, `Authorization: Bearer`, x-goog-api-key, api-key, `?key=`; first wins).
    pub key: Option<String>,
    /// When the request body had been read.
    pub at: Instant,
    /// HTTP version of the request.
    pub version: Version,
}

impl Recorded {
    /// A header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}

/// How the mock answers a request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Speak the protocol chosen by path (suffix match, so `/anthropic/v1/messages` works too):
    /// - `POST …/v1/messages`: Anthropic JSON, or SSE ([`anthropic_sse`]) when `"stream": true`;
    /// - `POST …/v1/messages/count_tokens`: `{"input_tokens": N}`;
    /// - `POST …/chat/completions`: OpenAI JSON, or SSE ([`openai_sse`], ends with `data: [DONE]`);
    /// - `POST …/models/{m}:generateContent`: Gemini JSON;
    /// - `POST …/models/{m}:streamGenerateContent`: SSE ([`gemini_sse`]) with `alt=sse`, else a JSON array;
    /// - `GET …/models`: a model list in the provider's shape (Anthropic if `anthropic-version`
    ///   or `x-api-key` is present, Gemini if the key came as `x-goog-api-key`/`?key=` or the
    ///   path has `v1beta`, else OpenAI).
    ///
    /// The request's model is echoed. A body that is not JSON, or lacks `model` where the
    /// protocol needs it, gets a 400 in the provider's error shape. Unknown paths get a 404 JSON error.
    Normal,
    /// A fixed answer. `content-type: application/json` is added unless `headers` has one.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Status 200, `content-type: text/event-stream`, then each event (a raw SSE block) as its
    /// own chunk, each after `delay` (the first one too); then `end`.
    Sse {
        events: Vec<String>,
        delay: Duration,
        end: End,
    },
    /// Read the request and never answer; when the client goes away it counts as a disconnect.
    Hang,
    /// Wait, then behave as the inner behaviour (slow response head, for timeout tests).
    Delayed(Duration, Box<Behaviour>),
    /// Successive behaviours for successive matching requests; the last repeats.
    /// A nested `Sequence` is indexed with the same request number.
    Sequence(Vec<Behaviour>),
}

/// How a scripted stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Finish the body normally (HTTP/1 terminating chunk, HTTP/2 END_STREAM).
    Clean,
    /// Abort mid-body ([`RESET_GRACE`] after the last event): HTTP/1 closes the connection
    /// without the terminating chunk, HTTP/2 resets the stream. The client sees the head
    /// and the events, then a body error.
    Reset,
    /// Keep the stream open without sending anything more, until the client goes away.
    Hang,
}

impl Behaviour {
    /// A fixed JSON answer.
    pub fn status(status: u16, body: impl Into<String>) -> Behaviour {
        Behaviour::Status {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A fixed answer with extra headers (`content-type: application/json` unless given).
    pub fn status_with(
        status: u16,
        headers: &[(&str, &str)],
        body: impl Into<String>,
    ) -> Behaviour {
        Behaviour::Status {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    /// A scripted SSE answer sent as fast as possible, ending cleanly.
    pub fn sse(events: Vec<String>) -> Behaviour {
        Behaviour::Sse {
            events,
            delay: Duration::ZERO,
            end: End::Clean,
        }
    }

    /// Wait `delay`, then behave as `then`.
    pub fn delayed(delay: Duration, then: Behaviour) -> Behaviour {
        Behaviour::Delayed(delay, Box::new(then))
    }

    /// A behaviour from a provider-error fixture file's JSON text (fields `status`,
    /// `headers`, `body`, as in `fixtures/provider-errors/`). An event-stream 200 becomes
    /// an [`Behaviour::Sse`] with the body split into events (ending cleanly); anything
    /// else a [`Behaviour::Status`] with the fixture's headers.
    pub fn from_fixture(json: &str) -> Behaviour {
        let v: serde_json::Value = serde_json::from_str(json).expect("fixture is JSON");
        let status = v["status"].as_u64().expect("fixture has a status") as u16;
        let body = v["body"].as_str().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = v["headers"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let is_sse = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("content-type") && v.starts_with("text/event-stream")
        });
        if status == 200 && is_sse {
            Behaviour::sse(split_sse(&body))
        } else {
            Behaviour::Status {
                status,
                headers,
                body,
            }
        }
    }

    /// Pick the concrete behaviour for the `index`-th matching request (0-based).
    fn resolve(&self, index: usize) -> Behaviour {
        match self {
            Behaviour::Sequence(items) if !items.is_empty() => {
                items[index.min(items.len() - 1)].resolve(index)
            }
            Behaviour::Sequence(_) => Behaviour::Normal,
            Behaviour::Delayed(d, inner) => Behaviour::Delayed(*d, Box::new(inner.resolve(index))),
            other => other.clone(),
        }
    }
}

/// Split a raw SSE text into blocks, each keeping its blank-line terminator
/// (`\n\n` or `\r\n\r\n`). A trailing partial block is kept as is.
pub fn split_sse(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let lf = rest.find("\n\n").map(|i| i + 2);
        let crlf = rest.find("\r\n\r\n").map(|i| i + 4);
        let cut = match (lf, crlf) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => rest.len(),
        };
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    out
}

// ---------------------------------------------------------------------------------------
// Transcript generators
// ---------------------------------------------------------------------------------------

fn js(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The text of the `i`-th delta in generated streams.
pub fn delta_text(i: usize) -> String {
    format!("tok{i} ")
}

/// A realistic Anthropic Messages stream: `message_start`, `content_block_start`,
/// `n_text_deltas` × `content_block_delta`, `content_block_stop`, `message_delta`,
/// `message_stop` (so `n_text_deltas + 5` events), `\n\n`-terminated.
pub fn anthropic_sse(model: &str, n_text_deltas: usize) -> Vec<String> {
    let mut v = Vec::with_capacity(n_text_deltas + 5);
    v.push(format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_mock_stream\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":{},\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":12,\"output_tokens\":1}}}}}}\n\n",
        js(model)
    ));
    v.push("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string());
    for i in 0..n_text_deltas {
        v.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n",
            js(&delta_text(i))
        ));
    }
    v.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_string(),
    );
    v.push(format!(
        "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{}}}}}\n\n",
        n_text_deltas.max(1)
    ));
    v.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    v
}

/// A realistic OpenAI Chat Completions stream: a role chunk, `n_deltas` content chunks, a
/// finish chunk (`finish_reason: "stop"`), then `data: [DONE]` (so `n_deltas + 3` events).
pub fn openai_sse(model: &str, n_deltas: usize) -> Vec<String> {
    let m = js(model);
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{m},\"system_fingerprint\":\"fp_mock\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut v = Vec::with_capacity(n_deltas + 3);
    v.push(chunk(
        "{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}",
        "null",
    ));
    for i in 0..n_deltas {
        v.push(chunk(
            &format!("{{\"content\":{}}}", js(&delta_text(i))),
            "null",
        ));
    }
    v.push(chunk("{}", "\"stop\""));
    v.push("data: [DONE]\n\n".to_string());
    v
}

fn gemini_chunk(model: &str, text: &str, last: bool, total: usize) -> String {
    let finish = if last {
        ",\"finishReason\":\"STOP\""
    } else {
        ""
    };
    let usage = if last {
        format!(
            ",\"usageMetadata\":{{\"promptTokenCount\":12,\"candidatesTokenCount\":{total},\"totalTokenCount\":{}}}",
            12 + total
        )
    } else {
        String::new()
    };
    format!(
        "{{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":{}}}],\"role\":\"model\"}}{finish},\"index\":0}}]{usage},\"modelVersion\":{},\"responseId\":\"mock-response\"}}",
        js(text),
        js(model)
    )
}

/// A realistic Gemini `streamGenerateContent?alt=sse` stream: `max(n, 1)` `data:` events,
/// the last carrying `finishReason: "STOP"` and `usageMetadata`. Like the live API, events
/// end with `\r\n\r\n`.
pub fn gemini_sse(model: &str, n: usize) -> Vec<String> {
    let n = n.max(1);
    (0..n)
        .map(|i| {
            format!(
                "data: {}\r\n\r\n",
                gemini_chunk(model, &delta_text(i), i + 1 == n, n)
            )
        })
        .collect()
}

/// The JSON-array form of a Gemini stream (no `alt=sse`), split into chunks:
/// `[obj`, `,\r\nobj`, …, `]`.
pub fn gemini_json_array(model: &str, n: usize) -> Vec<String> {
    let n = n.max(1);
    let mut v: Vec<String> = (0..n)
        .map(|i| {
            let sep = if i == 0 { "[" } else { ",\r\n" };
            format!(
                "{sep}{}",
                gemini_chunk(model, &delta_text(i), i + 1 == n, n)
            )
        })
        .collect();
    v.push("]".to_string());
    v
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

struct Rule {
    behaviour: Behaviour,
    hits: usize,
}

impl Rule {
    fn new(behaviour: Behaviour) -> Rule {
        Rule { behaviour, hits: 0 }
    }

    fn next(&mut self) -> Behaviour {
        let b = self.behaviour.resolve(self.hits);
        self.hits += 1;
        b
    }
}

struct State {
    requests: Vec<Recorded>,
    rules: HashMap<String, Rule>,
    default: Rule,
    /// Headers added to every answer for a credential (see [`MockProvider::key_headers`]).
    key_headers: HashMap<String, Vec<(HeaderName, HeaderValue)>>,
}

struct Inner {
    state: Mutex<State>,
    /// Woken on every new request and every disconnect.
    changed: Notify,
    in_flight: AtomicUsize,
    /// Per key: (requests being answered now, the most ever at once).
    per_key: Mutex<HashMap<String, (usize, usize)>>,
    disconnects: AtomicUsize,
    next_id: AtomicU64,
}

impl Inner {
    fn per_key(&self) -> MutexGuard<'_, HashMap<String, (usize, usize)>> {
        self.per_key.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not hide what was recorded.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct ServerTask(AbortHandle);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Handle to a running mock provider. Clones share the server; it stops when the last
/// clone drops.
#[derive(Clone)]
pub struct MockProvider {
    /// The bound address (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: Arc<ServerTask>,
}

impl fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockProvider")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockProvider {
    /// Bind `127.0.0.1:0` and serve HTTP/1.1 and h2c on the current runtime.
    pub async fn start() -> MockProvider {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("mock: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock: local_addr");
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                requests: Vec::new(),
                rules: HashMap::new(),
                default: Rule::new(Behaviour::Normal),
                key_headers: HashMap::new(),
            }),
            changed: Notify::new(),
            in_flight: AtomicUsize::new(0),
            per_key: Mutex::new(HashMap::new()),
            disconnects: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        });
        let handle = tokio::spawn(serve(listener, inner.clone()));
        MockProvider {
            addr,
            inner,
            task: Arc::new(ServerTask(handle.abort_handle())),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting and abort every connection now (also happens when the last clone drops).
    pub fn shutdown(&self) {
        self.task.0.abort();
    }

    /// Every request received so far, in order of arrival (of the complete body).
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.state().requests.clone()
    }

    /// The last request received, if any.
    pub fn last_request(&self) -> Option<Recorded> {
        self.inner.state().requests.last().cloned()
    }

    /// How many requests carried this credential.
    pub fn requests_for_key(&self, key: &str) -> usize {
        self.inner
            .state()
            .requests
            .iter()
            .filter(|r| r.key.as_deref() == Some(key))
            .count()
    }

    /// The credentials of the requests so far, in order (`None` for requests without one).
    pub fn keys(&self) -> Vec<Option<String>> {
        self.inner
            .state()
            .requests
            .iter()
            .map(|r| r.key.clone())
            .collect()
    }

    /// Forget the recorded requests and the disconnect count. Rules, and the position of
    /// each rule's [`Behaviour::Sequence`], stay.
    pub fn clear(&self) {
        self.inner.state().requests.clear();
        self.inner.disconnects.store(0, Ordering::SeqCst);
    }

    /// Drop every per-key rule and reset the default to [`Behaviour::Normal`].
    pub fn clear_rules(&self) {
        let mut st = self.inner.state();
        st.rules.clear();
        st.default = Rule::new(Behaviour::Normal);
    }

    /// Behaviour for requests carrying this credential (replaces any earlier rule for it and
    /// restarts its sequence).
    pub fn on_key(&self, key: &str, b: Behaviour) {
        self.inner
            .state()
            .rules
            .insert(key.to_string(), Rule::new(b));
    }

    /// Headers added to every answer (whatever the behaviour) for requests carrying this
    /// credential, e.g. the organisation a provider says the key belongs to
    /// (`anthropic-organization-id`). Replaces any earlier set for it; survives
    /// [`MockProvider::clear_rules`].
    pub fn key_headers(&self, key: &str, headers: &[(&str, &str)]) {
        let list = headers
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).expect("mock: header name"),
                    HeaderValue::from_str(v).expect("mock: header value"),
                )
            })
            .collect();
        self.inner.state().key_headers.insert(key.to_string(), list);
    }

    /// Behaviour when no per-key rule matches (initially [`Behaviour::Normal`]).
    pub fn set_default(&self, b: Behaviour) {
        self.inner.state().default = Rule::new(b);
    }

    /// Responses whose client went away before they finished.
    pub fn disconnects(&self) -> usize {
        self.inner.disconnects.load(Ordering::SeqCst)
    }

    /// Wait until `disconnects() >= n`, at most `within`. Returns whether it got there.
    pub async fn wait_disconnects(&self, n: usize, within: Duration) -> bool {
        self.wait_until(within, || self.disconnects() >= n).await
    }

    /// Wait until at least `n` requests have been recorded, at most `within`.
    pub async fn wait_requests(&self, n: usize, within: Duration) -> bool {
        self.wait_until(within, || self.inner.state().requests.len() >= n)
            .await
    }

    /// Requests currently being answered: from head received until the response body
    /// finished or was dropped.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Requests with `key` being answered now (as [`MockProvider::in_flight`]).
    pub fn in_flight_for_key(&self, key: &str) -> usize {
        self.inner.per_key().get(key).map_or(0, |c| c.0)
    }

    /// The most requests with `key` ever answered at once.
    pub fn peak_in_flight_for_key(&self, key: &str) -> usize {
        self.inner.per_key().get(key).map_or(0, |c| c.1)
    }

    /// Wait until `in_flight() == n`, at most `within`.
    pub async fn wait_in_flight(&self, n: usize, within: Duration) -> bool {
        self.wait_until(within, || self.in_flight() == n).await
    }

    async fn wait_until(&self, within: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond();
            }
        }
    }
}

async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    // Dropping the JoinSet (when this task is aborted) aborts every connection task.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let inner = inner.clone();
                    let builder = builder.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| handle(inner.clone(), req));
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Tracks one request from head to end of response; on drop before `finish`, counts a disconnect.
struct Tracker {
    inner: Arc<Inner>,
    finished: bool,
    key: Option<String>,
}

impl Tracker {
    fn new(inner: Arc<Inner>) -> Tracker {
        inner.in_flight.fetch_add(1, Ordering::SeqCst);
        Tracker {
            inner,
            finished: false,
            key: None,
        }
    }

    /// Counts this request under `key` too, until it ends.
    fn set_key(&mut self, key: Option<&str>) {
        let Some(key) = key else { return };
        let mut per_key = self.inner.per_key();
        let c = per_key.entry(key.to_owned()).or_insert((0, 0));
        c.0 += 1;
        c.1 = c.1.max(c.0);
        self.key = Some(key.to_owned());
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.finished {
            self.inner.disconnects.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(k) = &self.key {
            if let Some(c) = self.inner.per_key().get_mut(k) {
                c.0 -= 1;
            }
        }
        self.inner.changed.notify_waiters();
    }
}

fn find_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(k) = text("x-api-key") {
        return Some(k.to_string());
    }
    if let Some(auth) = text("authorization") {
        if auth.len() > 7 && auth[..7].eq_ignore_ascii_case("bearer ") {
            return Some(auth[7..].trim().to_string());
        }
    }
    if let Some(k) = text("x-goog-api-key").or_else(|| text("api-key")) {
        return Some(k.to_string());
    }
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "key")
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let mut tracker = Tracker::new(inner.clone());
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        // The client went away mid-request; dropping the tracker counts it.
        Err(_) => {
            return Ok(full(
                tracker,
                400,
                Vec::new(),
                "{\"error\":\"mock: request body failed\"}".into(),
            ))
        }
    };
    let key = find_key(&parts.headers, parts.uri.query());
    tracker.set_key(key.as_deref());
    let recorded = Recorded {
        method: parts.method.clone(),
        path_and_query: parts.uri.path_and_query().map_or_else(
            || parts.uri.path().to_string(),
            |pq| pq.as_str().to_string(),
        ),
        headers: parts.headers.clone(),
        body,
        key,
        at: Instant::now(),
        version: parts.version,
    };
    let (behaviour, extra) = {
        let mut st = inner.state();
        st.requests.push(recorded.clone());
        let st = &mut *st;
        let extra = recorded
            .key
            .as_deref()
            .and_then(|k| st.key_headers.get(k))
            .cloned()
            .unwrap_or_default();
        let b = match recorded.key.as_deref().and_then(|k| st.rules.get_mut(k)) {
            Some(rule) => rule.next(),
            None => st.default.next(),
        };
        (b, extra)
    };
    inner.changed.notify_waiters();
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let mut resp = respond(behaviour, &recorded, id, tracker).await;
    for (k, v) in extra {
        resp.headers_mut().insert(k, v);
    }
    Ok(resp)
}

fn respond<'a>(
    behaviour: Behaviour,
    req: &'a Recorded,
    id: u64,
    tracker: Tracker,
) -> Pin<Box<dyn Future<Output = Response<MockBody>> + Send + 'a>> {
    Box::pin(async move {
        match behaviour {
            Behaviour::Normal => normal(req, id, tracker),
            Behaviour::Status {
                status,
                headers,
                body,
            } => full(tracker, status, headers, body.into()),
            Behaviour::Sse { events, delay, end } => stream(
                tracker,
                vec![(
                    "content-type".into(),
                    "text/event-stream; charset=utf-8".into(),
                )],
                events,
                delay,
                end,
            ),
            // Dropped when the client goes away; the tracker then counts a disconnect.
            Behaviour::Hang => std::future::pending().await,
            Behaviour::Delayed(d, then) => {
                tokio::time::sleep(d).await;
                respond(*then, req, id, tracker).await
            }
            Behaviour::Sequence(_) => unreachable!("resolved in Rule::next"),
        }
    })
}

fn build(
    status: u16,
    headers: Vec<(String, String)>,
    default_ct: &str,
) -> Result<http::response::Builder, String> {
    let status = StatusCode::from_u16(status).map_err(|e| format!("status {status}: {e}"))?;
    let mut b = Response::builder().status(status);
    let mut has_ct = false;
    for (k, v) in headers {
        let name = HeaderName::try_from(k.as_str()).map_err(|e| format!("header {k}: {e}"))?;
        let value = HeaderValue::try_from(v.as_str()).map_err(|e| format!("header {k}: {e}"))?;
        has_ct |= name == CONTENT_TYPE;
        b = b.header(name, value);
    }
    if !has_ct {
        b = b.header(CONTENT_TYPE, default_ct);
    }
    Ok(b)
}

fn misconfigured(tracker: Tracker, why: String) -> Response<MockBody> {
    let body = format!(
        "{{\"error\":{}}}",
        js(&format!("mock misconfigured: {why}"))
    );
    let mut r = Response::new(MockBody::full(tracker, body.into()));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

fn full(
    tracker: Tracker,
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
) -> Response<MockBody> {
    // These statuses never carry a body; hyper will not poll it.
    let body = if matches!(status, 204 | 304) {
        Bytes::new()
    } else {
        body
    };
    match build(status, headers, "application/json") {
        Ok(b) => b
            .body(MockBody::full(tracker, body))
            .expect("validated parts"),
        Err(why) => misconfigured(tracker, why),
    }
}

fn stream(
    tracker: Tracker,
    headers: Vec<(String, String)>,
    events: Vec<String>,
    delay: Duration,
    end: End,
) -> Response<MockBody> {
    match build(200, headers, "text/event-stream; charset=utf-8") {
        Ok(b) => b
            .body(MockBody::script(tracker, events, delay, end))
            .expect("validated parts"),
        Err(why) => misconfigured(tracker, why),
    }
}

fn json_header() -> (String, String) {
    ("content-type".into(), "application/json".into())
}

fn normal(req: &Recorded, id: u64, tracker: Tracker) -> Response<MockBody> {
    let path = req.path();
    let query = req.path_and_query.split_once('?').map(|(_, q)| q);
    let post = req.method == Method::POST;
    let body = req.json();
    let stream_requested = body.get("stream").and_then(|v| v.as_bool()) == Some(true);
    let model = body.get("model").and_then(|v| v.as_str());

    if post && path.ends_with("/v1/messages") {
        let rid = ("request-id".to_string(), format!("req_mock_{id:06}"));
        let Some(model) = model else {
            return full(
                tracker,
                400,
                vec![rid],
                anthropic_error("invalid_request_error", "model: Field required"),
            );
        };
        if stream_requested {
            let headers = vec![
                (
                    "content-type".into(),
                    "text/event-stream; charset=utf-8".into(),
                ),
                rid,
            ];
            return stream(
                tracker,
                headers,
                anthropic_sse(model, NORMAL_DELTAS),
                Duration::ZERO,
                End::Clean,
            );
        }
        let answer = format!(
            "{{\"id\":\"msg_mock_{id:06}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":[{{\"type\":\"text\",\"text\":{}}}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{{\"input_tokens\":12,\"output_tokens\":7}}}}",
            js(model),
            js(NORMAL_TEXT)
        );
        return full(tracker, 200, vec![json_header(), rid], answer.into());
    }
    if post && path.ends_with("/v1/messages/count_tokens") {
        let rid = ("request-id".to_string(), format!("req_mock_{id:06}"));
        return full(
            tracker,
            200,
            vec![json_header(), rid],
            "{\"input_tokens\":12}".into(),
        );
    }
    if post && path.ends_with("/chat/completions") {
        let rid = ("x-request-id".to_string(), format!("req_mock_{id:06}"));
        let Some(model) = model else {
            return full(
                tracker,
                400,
                vec![rid],
                openai_error("you must provide a model parameter"),
            );
        };
        if stream_requested {
            let headers = vec![
                (
                    "content-type".into(),
                    "text/event-stream; charset=utf-8".into(),
                ),
                rid,
            ];
            return stream(
                tracker,
                headers,
                openai_sse(model, NORMAL_DELTAS),
                Duration::ZERO,
                End::Clean,
            );
        }
        let answer = format!(
            "{{\"id\":\"chatcmpl-mock{id:06}\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{},\"refusal\":null}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}},\"system_fingerprint\":\"fp_mock\"}}",
            js(model),
            js(NORMAL_TEXT)
        );
        return full(tracker, 200, vec![json_header(), rid], answer.into());
    }
    if post && path.contains("/models/") {
        let tail = &path[path.rfind("/models/").unwrap_or(0) + "/models/".len()..];
        if let Some((model, method)) = tail.split_once(':') {
            if !req.body.is_empty() && body.is_null() {
                return full(
                    tracker,
                    400,
                    Vec::new(),
                    gemini_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."),
                );
            }
            match method {
                "generateContent" => {
                    let mut answer = gemini_chunk(model, NORMAL_TEXT, true, 7);
                    answer.push('\n');
                    return full(tracker, 200, vec![json_header()], answer.into());
                }
                "streamGenerateContent" => {
                    let sse = query.is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
                    return if sse {
                        let headers = vec![("content-type".into(), "text/event-stream".into())];
                        stream(
                            tracker,
                            headers,
                            gemini_sse(model, NORMAL_DELTAS),
                            Duration::ZERO,
                            End::Clean,
                        )
                    } else {
                        stream(
                            tracker,
                            vec![json_header()],
                            gemini_json_array(model, NORMAL_DELTAS),
                            Duration::ZERO,
                            End::Clean,
                        )
                    };
                }
                _ => {}
            }
        }
    }
    if req.method == Method::GET && path.ends_with("/models") {
        let gemini_key = req.headers.contains_key("x-goog-api-key")
            || query.is_some_and(|q| q.split('&').any(|p| p.starts_with("key=")));
        let list = if req.headers.contains_key("anthropic-version")
            || req.headers.contains_key("x-api-key")
        {
            "{\"data\":[{\"type\":\"model\",\"id\":\"claude-sonnet-4-5\",\"display_name\":\"Claude Sonnet 4.5\",\"created_at\":\"2025-09-29T00:00:00Z\"},{\"type\":\"model\",\"id\":\"claude-haiku-4-5\",\"display_name\":\"Claude Haiku 4.5\",\"created_at\":\"2025-10-01T00:00:00Z\"}],\"has_more\":false,\"first_id\":\"claude-sonnet-4-5\",\"last_id\":\"claude-haiku-4-5\"}"
        } else if gemini_key || path.contains("v1beta") {
            "{\"models\":[{\"name\":\"models/gemini-2.5-flash\",\"displayName\":\"Gemini 2.5 Flash\",\"supportedGenerationMethods\":[\"generateContent\",\"streamGenerateContent\"]},{\"name\":\"models/gemini-2.5-pro\",\"displayName\":\"Gemini 2.5 Pro\",\"supportedGenerationMethods\":[\"generateContent\",\"streamGenerateContent\"]}]}"
        } else {
            "{\"object\":\"list\",\"data\":[{\"id\":\"gpt-4o\",\"object\":\"model\",\"created\":1715367049,\"owned_by\":\"system\"},{\"id\":\"gpt-4o-mini\",\"object\":\"model\",\"created\":1721172741,\"owned_by\":\"system\"}]}"
        };
        return full(tracker, 200, vec![json_header()], list.into());
    }
    let msg = format!("mock: no route for {} {}", req.method, path);
    full(
        tracker,
        404,
        vec![json_header()],
        format!(
            "{{\"error\":{{\"type\":\"not_found_error\",\"message\":{}}}}}",
            js(&msg)
        )
        .into(),
    )
}

fn anthropic_error(kind: &str, msg: &str) -> Bytes {
    format!(
        "{{\"type\":\"error\",\"error\":{{\"type\":{},\"message\":{}}}}}",
        js(kind),
        js(msg)
    )
    .into()
}

fn openai_error(msg: &str) -> Bytes {
    format!(
        "{{\"error\":{{\"message\":{},\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}}}",
        js(msg)
    )
    .into()
}

fn gemini_error(code: u16, status: &str, msg: &str) -> Bytes {
    format!(
        "{{\"error\":{{\"code\":{code},\"message\":{},\"status\":{}}}}}",
        js(msg),
        js(status)
    )
    .into()
}

// ---------------------------------------------------------------------------------------
// Response body
// ---------------------------------------------------------------------------------------

/// The mock's response body: either one chunk, or a scripted stream with delays. Dropping
/// it before it finished counts a disconnect.
pub struct MockBody {
    kind: Kind,
    tracker: Option<Tracker>,
}

enum Kind {
    Full(Option<Bytes>),
    Script {
        events: VecDeque<Bytes>,
        delay: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
        end: End,
        grace_done: bool,
    },
    Done,
}

impl MockBody {
    fn full(tracker: Tracker, body: Bytes) -> MockBody {
        let mut b = MockBody {
            kind: Kind::Full(Some(body)),
            tracker: Some(tracker),
        };
        if b.is_empty_full() {
            b.finish();
        }
        b
    }

    fn script(tracker: Tracker, events: Vec<String>, delay: Duration, end: End) -> MockBody {
        MockBody {
            kind: Kind::Script {
                events: events.into_iter().map(Bytes::from).collect(),
                delay,
                sleep: None,
                end,
                grace_done: false,
            },
            tracker: Some(tracker),
        }
    }

    fn is_empty_full(&self) -> bool {
        matches!(&self.kind, Kind::Full(Some(b)) if b.is_empty())
    }

    /// The response is complete: not a disconnect, no longer in flight.
    fn finish(&mut self) {
        self.kind = Kind::Done;
        if let Some(mut t) = self.tracker.take() {
            t.finished = true;
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        loop {
            match &mut this.kind {
                Kind::Done => return Poll::Ready(None),
                Kind::Full(data) => {
                    let data = data.take().unwrap_or_default();
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Kind::Script {
                    events,
                    delay,
                    sleep,
                    end,
                    grace_done,
                } => {
                    if let Some(s) = sleep {
                        if s.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        *sleep = None;
                        if let Some(ev) = events.pop_front() {
                            return Poll::Ready(Some(Ok(Frame::data(ev))));
                        }
                        continue;
                    }
                    if !events.is_empty() {
                        if delay.is_zero() {
                            let ev = events.pop_front().unwrap_or_default();
                            return Poll::Ready(Some(Ok(Frame::data(ev))));
                        }
                        *sleep = Some(Box::pin(tokio::time::sleep(*delay)));
                        continue;
                    }
                    match end {
                        End::Clean => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        End::Reset if !*grace_done => {
                            // Let the head and the events reach the client first.
                            *grace_done = true;
                            *sleep = Some(Box::pin(tokio::time::sleep(RESET_GRACE)));
                            continue;
                        }
                        End::Reset => {
                            this.finish();
                            return Poll::Ready(Some(Err(std::io::Error::new(
                                std::io::ErrorKind::ConnectionReset,
                                "mock: scripted reset",
                            ))));
                        }
                        // Nothing will wake us: the body lives until the client goes away.
                        End::Hang => return Poll::Pending,
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) | Kind::Done => SizeHint::with_exact(0),
            Kind::Script { .. } => SizeHint::default(),
        }
    }
}
