//! An in-process keygate for integration tests: bound on 127.0.0.1:0, with an injected
//! environment and a temporary state directory, stopped when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use keygate::config::Config;
use keygate::credentials::env::EnvSnapshot;

/// A running keygate.
pub struct Keygate {
    pub addr: SocketAddr,
    pub state_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// How to start one.
pub struct Opts {
    pub config: String,
    pub env: Vec<(String, String)>,
    /// Files to write under the state dir before starting: (relative path, contents).
    pub files: Vec<(String, String)>,
    pub listen: SocketAddr,
    /// A directory copied into the state dir first (e.g. an OpenClaw fixture).
    pub copy_from: Option<PathBuf>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            config: String::new(),
            env: Vec::new(),
            files: Vec::new(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            copy_from: None,
        }
    }
}

impl Opts {
    pub fn config(mut self, toml: impl Into<String>) -> Self {
        self.config = toml.into();
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
    pub fn file(mut self, rel: &str, contents: &str) -> Self {
        self.files.push((rel.to_owned(), contents.to_owned()));
        self
    }
    /// Starts from a copy of `dir` (every file, recursively).
    pub fn copy_of(mut self, dir: impl Into<PathBuf>) -> Self {
        self.copy_from = Some(dir.into());
        self
    }
    /// Writes `agents/main/agent/auth-profiles.json`.
    pub fn profiles(self, json: &str) -> Self {
        self.file("agents/main/agent/auth-profiles.json", json)
    }
    /// Writes `agents/main/agent/auth-state.json`.
    pub fn auth_state(self, json: &str) -> Self {
        self.file("agents/main/agent/auth-state.json", json)
    }
}

/// Copies every file under `from` into `to` (directories created as needed).
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        let ty = e.file_type().expect("type");
        if ty.is_dir() {
            copy_tree(&e.path(), &dest);
        } else if ty.is_symlink() {
            // Kept as links (OpenClaw leaves some pointing into its install dir).
            let target = std::fs::read_link(e.path()).expect("readlink");
            std::os::unix::fs::symlink(target, &dest).expect("symlink");
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// `[providers.X] base_url = mock` for every named provider.
pub fn providers_at(url: &str, ids: &[&str]) -> String {
    ids.iter()
        .map(|id| format!("[providers.{id}]\nbase_url = \"{url}\"\n"))
        .collect()
}

impl Keygate {
    pub async fn start(opts: Opts) -> Keygate {
        let state_dir = tempfile::tempdir().expect("tempdir");
        if let Some(from) = &opts.copy_from {
            copy_tree(from, state_dir.path());
        }
        for (rel, contents) in &opts.files {
            let p = state_dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, contents).expect("write");
        }
        let env = EnvSnapshot::from_pairs(opts.env.clone());
        let config = Config::from_toml(&opts.config, None, &|k| env.get(k).map(str::to_owned))
            .expect("test config is valid");
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state =
            keygate::build_state(config, state_dir.path().to_owned(), env, &addr).expect("state");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(keygate::run(
            state,
            keygate::Listeners {
                main: listener,
                admin: None,
            },
            async move {
                let _ = rx.await;
            },
        ));
        Keygate {
            addr,
            state_dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir.path().to_owned()
    }

    /// Signals shutdown and waits (bounded) for the server to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A collected answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::new(body.into())).expect("request")
}

/// Sends and collects the whole answer (bounded to 30 s).
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        client().request(request(method, url, headers, body)),
    )
    .await
    .expect("answer within 30 s")
    .expect("request sent");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("body within 30 s")
        .expect("body")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn post_json(url: &str, headers: &[(&str, &str)], json: &serde_json::Value) -> Answer {
    let mut h: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(Method::POST, url, &h, Bytes::from(json.to_string())).await
}

/// An Anthropic messages request `{"model": model}` with `gateway` as `x-api-key`.
pub async fn post_messages(kg: &Keygate, gateway: &str, model: &str) -> Answer {
    post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", gateway)],
        &serde_json::json!({ "model": model }),
    )
    .await
}

/// A streaming Anthropic messages request (`claude-sonnet-4-5`, `"stream": true`) with
/// `gateway` as `x-api-key`; the response with its body unread.
pub async fn stream_messages(
    kg: &Keygate,
    gateway: &str,
) -> hyper::Response<hyper::body::Incoming> {
    let req = request(
        Method::POST,
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", gateway), ("content-type", "application/json")],
        Bytes::from(serde_json::json!({"model": "claude-sonnet-4-5", "stream": true}).to_string()),
    );
    client().request(req).await.expect("response")
}

/// The chunks of [`read_stream`] joined as text.
pub fn text_of(chunks: &[(Instant, Bytes)]) -> String {
    chunks
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b))
        .collect()
}

/// Reads a streamed body chunk by chunk, noting when each chunk arrived.
/// Returns the chunks with their arrival times and whether the body ended with an error.
pub async fn read_stream(
    resp: hyper::Response<hyper::body::Incoming>,
    within: Duration,
) -> (Vec<(Instant, Bytes)>, bool) {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    let end = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, body.frame()).await {
            Err(_) => return (out, true),
            Ok(None) => return (out, false),
            Ok(Some(Err(_))) => return (out, true),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.push((Instant::now(), data));
                }
            }
        }
    }
}
