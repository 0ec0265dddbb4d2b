//! The load generator: one pooled hyper client driving a target closed-loop (fixed
//! concurrency) or open-loop (fixed rate), recording per-request latency,
//! time-to-first-event for streams, and keygate's `x-keygate-attempts`.
//!
//! Every run is bounded by a request count and a duration; every request by a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The load client.
pub(crate) type LoadClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Longest a single request may take before it counts as failed.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What to send.
#[derive(Clone)]
pub(crate) struct Spec {
    /// Target URL.
    pub(crate) uri: Uri,
    /// `x-load-mode` for the mock.
    pub(crate) mode: &'static str,
    /// Request body.
    pub(crate) body: Bytes,
    /// `x-load-delay-ms` for the mock (0: none).
    pub(crate) delay_ms: u64,
}

/// The result of one run.
#[derive(Default)]
pub(crate) struct Run {
    /// Requests answered 200 with a complete body.
    pub(crate) ok: u64,
    /// Everything else.
    pub(crate) err: u64,
    /// Latency of each successful request, µs.
    pub(crate) lat_us: Vec<u32>,
    /// Time to the first body frame of each successful stream, µs.
    pub(crate) ttfe_us: Vec<u32>,
    /// Sum of `x-keygate-attempts` over successful requests (1 when absent).
    pub(crate) attempts: u64,
    /// Wall time of the run.
    pub(crate) elapsed: Duration,
    /// First error seen (for the report).
    pub(crate) first_error: Option<String>,
}

/// One finished request.
struct Done {
    lat: Duration,
    ttfe: Option<Duration>,
    attempts: u64,
}

// === impl Run ===

impl Run {
    fn push(&mut self, r: Result<Done, String>) {
        match r {
            Ok(d) => {
                self.ok += 1;
                self.lat_us.push(micros(d.lat));
                if let Some(t) = d.ttfe {
                    self.ttfe_us.push(micros(t));
                }
                self.attempts += d.attempts;
            }
            Err(e) => {
                self.err += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e);
                }
            }
        }
    }

    fn merge(&mut self, o: Run) {
        self.ok += o.ok;
        self.err += o.err;
        self.lat_us.extend(o.lat_us);
        self.ttfe_us.extend(o.ttfe_us);
        self.attempts += o.attempts;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    /// Requests sent.
    pub(crate) fn total(&self) -> u64 {
        self.ok + self.err
    }

    /// Adds a later run of the same load (one slice of an interleaved measurement): its
    /// time adds up too.
    pub(crate) fn append_slice(&mut self, later: Run) {
        self.elapsed += later.elapsed;
        self.merge(later);
    }

    /// Successful share (1.0 when nothing was sent).
    pub(crate) fn success_rate(&self) -> f64 {
        if self.total() == 0 {
            1.0
        } else {
            self.ok as f64 / self.total() as f64
        }
    }

    /// Successful requests per second.
    pub(crate) fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency percentile in ms.
    pub(crate) fn lat_ms(&mut self, q: f64) -> f64 {
        percentile_ms(&mut self.lat_us, q)
    }

    /// Time-to-first-event percentile in ms.
    pub(crate) fn ttfe_ms(&mut self, q: f64) -> f64 {
        percentile_ms(&mut self.ttfe_us, q)
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn percentile_ms(v: &mut [u32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    f64::from(v[rank - 1]) / 1000.0
}

/// The shared client: HTTP/1.1, a connection per in-flight request; `https` URLs trust the
/// built-in roots.
pub(crate) fn client() -> LoadClient {
    client_with(webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect())
}

/// [`client`] trusting only `roots` for `https` URLs (the `tls` scenario's test CA).
pub(crate) fn client_with(roots: rustls::RootCertStore) -> LoadClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(https)
}

/// Builds one request.
pub(crate) fn request(spec: &Spec) -> Request<Full<Bytes>> {
    let mut r = Request::new(Full::new(spec.body.clone()));
    *r.method_mut() = Method::POST;
    *r.uri_mut() = spec.uri.clone();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert("x-load-mode", header::HeaderValue::from_static(spec.mode));
    if spec.delay_ms > 0 {
        h.insert("x-load-delay-ms", header::HeaderValue::from(spec.delay_ms));
    }
    r
}

/// Sends one request and reads the whole answer.
async fn one(client: &LoadClient, spec: &Spec) -> Result<Done, String> {
    let t0 = Instant::now();
    let fut = async {
        let resp = client
            .request(request(spec))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status();
        let attempts = resp
            .headers()
            .get("x-keygate-attempts")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1u64);
        let mut body = resp.into_body();
        let mut ttfe = None;
        let mut last = Bytes::new();
        let mut len = 0usize;
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| format!("body: {e}"))?;
            if let Ok(d) = f.into_data() {
                if ttfe.is_none() && !d.is_empty() {
                    ttfe = Some(t0.elapsed());
                }
                len += d.len();
                last = d;
            }
        }
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let complete = match spec.mode {
            "sse" => last.ends_with(b"data: [DONE]\n\n"),
            _ => len > 0,
        };
        if !complete {
            return Err("incomplete body".to_owned());
        }
        Ok(Done {
            lat: t0.elapsed(),
            ttfe: (spec.mode == "sse").then_some(ttfe).flatten(),
            attempts,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| "timeout".to_owned())?
}

/// `conc` workers, each sending its next request when the last one finished, until `max`
/// requests were started or `dur` has passed.
pub(crate) async fn closed_loop(
    client: &LoadClient,
    spec: &Spec,
    conc: usize,
    max: u64,
    dur: Duration,
) -> Run {
    spread(client, std::slice::from_ref(spec), conc, max, dur, |_| {
        Duration::ZERO
    })
    .await
}

/// [`closed_loop`] over several targets: worker `i` sends to `specs[i % specs.len()]` and
/// starts `start_of(i)` after the run began (`dur` counts from there).
pub(crate) async fn spread(
    client: &LoadClient,
    specs: &[Spec],
    conc: usize,
    max: u64,
    dur: Duration,
    start_of: impl Fn(usize) -> Duration,
) -> Run {
    let started = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let end = t0 + dur;
    let mut set = JoinSet::new();
    for (i, spec) in specs.iter().cycle().take(conc).enumerate() {
        let (client, spec, started) = (client.clone(), spec.clone(), started.clone());
        let at = t0 + start_of(i);
        set.spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut run = Run::default();
            while Instant::now() < end && started.fetch_add(1, Ordering::Relaxed) < max {
                run.push(one(&client, &spec).await);
            }
            run
        });
    }
    let mut run = Run::default();
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            run.merge(r);
        }
    }
    run.elapsed = t0.elapsed();
    run
}

/// Requests started at a fixed `rate` per second for `dur` (at most `max`, at most
/// `in_flight` at once), each timed from its own start.
pub(crate) async fn paced(
    client: &LoadClient,
    spec: &Spec,
    rate: f64,
    max: u64,
    dur: Duration,
    in_flight: usize,
) -> Run {
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let n = ((dur.as_secs_f64() * rate) as u64).min(max);
    let sem = Arc::new(Semaphore::new(in_flight));
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(t0 + period * (i as u32)).await;
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let (client, spec) = (client.clone(), spec.clone());
        set.spawn(async move {
            let r = one(&client, &spec).await;
            drop(permit);
            r
        });
    }
    gather(set, t0).await
}

/// Every request in `set`, as they finish, in one run timed from `t0` (a task that did
/// not finish counts as a failed request).
async fn gather(mut set: JoinSet<Result<Done, String>>, t0: Instant) -> Run {
    let mut run = Run::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(r) => run.push(r),
            Err(e) => run.push(Err(format!("task: {e}"))),
        }
    }
    run.elapsed = t0.elapsed();
    run
}

/// `n` requests started together (over `ramp`), all answered before returning; tracks how
/// many were in flight at once.
pub(crate) async fn burst(
    client: &LoadClient,
    spec: &Spec,
    n: usize,
    ramp: Duration,
) -> (Run, u64) {
    let in_flight = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        let at = t0 + ramp.mul_f64(i as f64 / n.max(1) as f64);
        let (client, spec) = (client.clone(), spec.clone());
        let (cur, max) = (in_flight.clone(), max_in_flight.clone());
        set.spawn(async move {
            tokio::time::sleep_until(at).await;
            let now = cur.fetch_add(1, Ordering::Relaxed) + 1;
            max.fetch_max(now, Ordering::Relaxed);
            let r = one(&client, &spec).await;
            cur.fetch_sub(1, Ordering::Relaxed);
            r
        });
    }
    let run = gather(set, t0).await;
    (run, max_in_flight.load(Ordering::Relaxed))
}

/// Opens `n` SSE streams that stay open after their first events; returns how many opened
/// (200 + a first frame) and a sender that closes them all when dropped.
pub(crate) async fn open_streams(
    client: &LoadClient,
    spec: &Spec,
    n: usize,
    within: Duration,
) -> (usize, tokio::sync::watch::Sender<()>) {
    let (close_tx, close_rx) = tokio::sync::watch::channel(());
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<bool>(n.max(1));
    for i in 0..n {
        let (client, spec) = (client.clone(), spec.clone());
        let (open_tx, mut close_rx) = (open_tx.clone(), close_rx.clone());
        // Spread connection setup a little so accept backlogs never overflow.
        let at = Instant::now() + Duration::from_micros(200 * i as u64);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let opened = async {
                let resp = client.request(request(&spec)).await.ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                let mut body = resp.into_body();
                loop {
                    let f = body.frame().await?.ok()?;
                    if f.data_ref().is_some_and(|d| !d.is_empty()) {
                        return Some(body);
                    }
                }
            };
            match tokio::time::timeout(within, opened).await {
                Ok(Some(body)) => {
                    let _ = open_tx.send(true).await;
                    // Hold the stream until told to close.
                    let _ = close_rx.changed().await;
                    drop(body);
                }
                _ => {
                    let _ = open_tx.send(false).await;
                }
            }
        });
    }
    drop(open_tx);
    let mut opened = 0;
    let deadline = Instant::now() + within + Duration::from_secs(1);
    for _ in 0..n {
        match tokio::time::timeout_at(deadline, open_rx.recv()).await {
            Ok(Some(true)) => opened += 1,
            Ok(Some(false)) => {}
            _ => break,
        }
    }
    (opened, close_tx)
}
