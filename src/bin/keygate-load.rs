//! `keygate-load`: the load harness of BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --bin keygate-load -- --scenario all
//! ```
//!
//! Starts, on 127.0.0.1 and each as its own process: the mock provider
//! (`keygate-load --mock`), a bare forwarder (`keygate-load --bare-forwarder`, hyper with
//! no auth logic: the floor) and keygate (`--keygate-bin PATH`, or by default this binary
//! re-executed as `keygate` — the same `keygate::cli::main` the `keygate` binary runs).
//! Then drives each target with the same bounded load and prints one JSON line per
//! scenario and target, plus one `"target":"keygate/bare"` line with the ratios and
//! whether each target of issue 5 is met. CPU and memory are read from `/proc` per
//! process. Every child is killed when its scenario ends (also on panic).
//!
//! Scenarios: `overhead`, `streaming`, `open_streams`, `big_bodies`, `rotation`, `sessions`
//! (session affinity, see `sessions.rs`), `all`; `tls` (TLS on both sides, keygate vs
//! nginx, see `tls.rs`; not in `all`: it needs `nginx`); and
//! the cluster scenarios (SPEC §10, they start a `redis-server`): `cluster_rotation`,
//! `cluster_propagation`, `cluster_overhead`, or `cluster` for the three.
//! `--quick` shrinks every scenario to a smoke test (tests/load_smoke.rs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

#[path = "keygate-load/cluster.rs"]
mod cluster;
#[path = "keygate-load/forwarder.rs"]
mod forwarder;
#[path = "keygate-load/load.rs"]
mod load;
#[path = "keygate-load/mock.rs"]
mod mock;
#[path = "keygate-load/procs.rs"]
mod procs;
#[path = "keygate-load/redis.rs"]
mod redis;
#[path = "keygate-load/sessions.rs"]
mod sessions;
#[path = "keygate-load/tls.rs"]
mod tls;

use load::{Run, Spec};
use procs::{KeygateOpts, Proc};

/// Set on a child to make this binary behave exactly as `keygate`.
const AS_KEYGATE: &str = "KEYGATE_LOAD_AS_KEYGATE";

/// The request body of non-streaming and streaming requests (a typical small chat call).
const CHAT_BODY: &str = r#"{"model":"gpt-load","max_tokens":64,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence, please."}]}"#;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "keygate-load",
    about = "Load harness: keygate vs a bare forwarder"
)]
struct Args {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Measured time per phase and target (every scenario stays under 20 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    duration: Duration,
    /// Concurrency of `overhead` and `streaming` (rotation uses 64).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Tiny load, every phase short (smoke test).
    #[arg(long)]
    quick: bool,
    /// The keygate binary to run (default: this binary, re-executed as keygate).
    #[arg(long, value_name = "PATH")]
    keygate_bin: Option<PathBuf>,
    /// `RUST_LOG` for keygate (its default is `info`: one access-log line per request).
    #[arg(long, default_value = "info")]
    keygate_log: String,
    /// keygate's `--log-format` (`text`, its default, or `json`).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    keygate_log_format: String,
    /// Mode: run the mock provider.
    #[arg(long)]
    mock: bool,
    /// Mode: run the bare forwarder (needs --upstream).
    #[arg(long)]
    bare_forwarder: bool,
    /// Listen address of --mock / --bare-forwarder.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Upstream `host:port` of --bare-forwarder.
    #[arg(long)]
    upstream: Option<String>,
    /// `retry-after` (seconds) of the limited keys' 429s, for --mock.
    #[arg(long, default_value_t = 2)]
    retry_after: u64,
    /// --mock serves HTTPS with this PEM chain (and --tls-key).
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// --mock's PEM key for --tls-cert.
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
}

/// Scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
enum Scenario {
    Overhead,
    Streaming,
    OpenStreams,
    BigBodies,
    Rotation,
    /// Session affinity (SPEC §11): conversations over 4 keys, one limited half-way.
    Sessions,
    /// TLS on both sides (SPEC §12): keygate vs nginx terminating and originating TLS.
    Tls,
    All,
    ClusterRotation,
    ClusterPropagation,
    ClusterOverhead,
    /// The three cluster scenarios.
    Cluster,
}

/// Sizes of one run.
struct Plan {
    dur: Duration,
    warmup: Duration,
    conc: usize,
    max: u64,
    streams: usize,
    bodies: usize,
    body_size: usize,
    body_delay_ms: u64,
    rotation_conc: usize,
    /// Concurrency of `cluster_rotation`.
    cluster_conc: usize,
    /// Trials of `cluster_propagation`.
    trials: usize,
}

/// The processes of one scenario.
struct Rig {
    mock: Proc,
    bare: Option<Proc>,
    keygate: Proc,
}

fn main() -> ExitCode {
    if std::env::var_os(AS_KEYGATE).is_some() {
        return keygate::cli::main();
    }
    let args = Args::parse();
    if args.mock || args.bare_forwarder {
        return helper(&args);
    }
    let plan = if args.quick {
        Plan {
            dur: Duration::from_millis(400),
            warmup: Duration::from_millis(100),
            conc: 4,
            max: 400,
            streams: 20,
            bodies: 20,
            body_size: 150_000,
            body_delay_ms: 100,
            rotation_conc: 8,
            cluster_conc: 8,
            trials: 6,
        }
    } else {
        Plan {
            dur: args.duration.min(Duration::from_secs(4)),
            warmup: Duration::from_millis(500),
            conc: args.concurrency.max(1),
            max: 500_000,
            streams: 1000,
            bodies: 1500,
            body_size: 150_000,
            body_delay_ms: 1000,
            rotation_conc: 64,
            cluster_conc: 32,
            trials: 200,
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    warn_fd_limit(&plan);
    let all = [
        Scenario::Overhead,
        Scenario::Streaming,
        Scenario::OpenStreams,
        Scenario::BigBodies,
        Scenario::Rotation,
        Scenario::Sessions,
    ];
    let chosen: Vec<Scenario> = match args.scenario {
        Scenario::All => all.to_vec(),
        Scenario::Cluster => vec![
            Scenario::ClusterRotation,
            Scenario::ClusterPropagation,
            Scenario::ClusterOverhead,
        ],
        s => vec![s],
    };
    for s in chosen {
        let lines = match s {
            Scenario::Overhead => overhead(&rt, &args, &plan),
            Scenario::Streaming => streaming(&rt, &args, &plan),
            Scenario::OpenStreams => open_streams(&rt, &args, &plan),
            Scenario::BigBodies => big_bodies(&rt, &args, &plan),
            Scenario::Rotation => rotation(&rt, &args, &plan),
            Scenario::Sessions => sessions::sessions(&rt, &args),
            Scenario::Tls => tls::tls(&rt, &args, &plan),
            Scenario::ClusterRotation => cluster::rotation(&rt, &args, &plan),
            Scenario::ClusterPropagation => cluster::propagation(&rt, &args, &plan),
            Scenario::ClusterOverhead => cluster_overhead(&rt, &args, &plan),
            Scenario::All | Scenario::Cluster => unreachable!("expanded above"),
        };
        match lines {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
            }
            Err(e) => {
                eprintln!("error: scenario {s:?}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// `--mock` / `--bare-forwarder`: serve until the harness closes our stdin.
fn helper(args: &Args) -> ExitCode {
    let threads = if args.mock { 1 } else { 0 };
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    let Ok(rt) = b.enable_all().build() else {
        return ExitCode::FAILURE;
    };
    // The harness holds our stdin; EOF means it is gone, so we go too.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    rt.block_on(async {
        let socket = match tokio::net::TcpSocket::new_v4() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: socket: {e}");
                return ExitCode::FAILURE;
            }
        };
        let _ = socket.set_reuseaddr(true);
        let listener = match socket.bind(args.listen).and_then(|()| socket.listen(4096)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: listen {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let Ok(addr) = listener.local_addr() else {
            return ExitCode::FAILURE;
        };
        println!("LISTEN {addr}");
        if args.mock {
            let tls = match (&args.tls_cert, &args.tls_key) {
                (Some(c), Some(k)) => match tls::acceptor(c, k) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                _ => None,
            };
            mock::run(listener, args.retry_after, tls).await;
        } else {
            let Some(up) = args.upstream.clone() else {
                eprintln!("error: --bare-forwarder needs --upstream HOST:PORT");
                return ExitCode::FAILURE;
            };
            forwarder::run(listener, up).await;
        }
        ExitCode::SUCCESS
    })
}

fn warn_fd_limit(plan: &Plan) {
    let need = (plan.bodies.max(plan.streams) * 2 + 256) as u64;
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<u64>().ok())
        });
    if let Some(soft) = soft.filter(|s| *s < need) {
        eprintln!(
            "warning: open-file limit {soft} < {need} needed by open_streams/big_bodies; raise it with `ulimit -n {need}`"
        );
    }
}

// === scenarios ===

fn start(args: &Args, with_bare: bool, env: Vec<(String, String)>) -> Result<Rig, String> {
    let mock = Proc::helper("mock", &["--mock".to_owned()])?;
    let bare = if with_bare {
        Some(Proc::helper(
            "bare",
            &[
                "--bare-forwarder".to_owned(),
                "--upstream".to_owned(),
                mock.addr.to_string(),
            ],
        )?)
    } else {
        None
    };
    let keygate = Proc::keygate(&KeygateOpts {
        bin: args.keygate_bin.as_deref(),
        log: &args.keygate_log,
        log_format: &args.keygate_log_format,
        upstream: mock.addr,
        extra_toml: "",
        env,
        profiles: None,
        https: false,
    })?;
    Ok(Rig {
        mock,
        bare,
        keygate,
    })
}

fn one_key() -> Vec<(String, String)> {
    vec![("OPENAI_API_KEY".to_owned(), "sk-load-0001".to_owned())]
}

fn spec(addr: SocketAddr, mode: &'static str, body: Bytes, delay_ms: u64) -> Result<Spec, String> {
    let uri = format!("http://{addr}/openai/v1/chat/completions")
        .parse()
        .map_err(|e| format!("uri: {e}"))?;
    Ok(Spec {
        uri,
        mode,
        body,
        delay_ms,
    })
}

fn targets(rig: &Rig) -> Vec<(&'static str, &Proc)> {
    let mut v = Vec::new();
    if let Some(b) = &rig.bare {
        v.push(("bare", b));
    }
    v.push(("keygate", &rig.keygate));
    v
}

/// Runs the same load against every target for `dur` each, in [`SLICES`] alternating slices
/// (A B B A A B B A …), and returns each target's merged run with its CPU seconds per 1 000
/// successful requests. On a shared machine, a burst of someone else's work then lands on
/// both targets instead of on whichever happened to run at the time.
fn interleaved(
    targets: &[(&'static str, &Proc)],
    dur: Duration,
    mut f: impl FnMut(usize, Duration) -> Run,
) -> Vec<(Run, f64)> {
    let slice = dur / SLICES;
    let mut out: Vec<(Run, f64)> = targets.iter().map(|_| (Run::default(), 0.0)).collect();
    for round in 0..SLICES {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..targets.len()).collect()
        } else {
            (0..targets.len()).rev().collect()
        };
        for i in order {
            let c0 = targets[i].1.cpu_secs();
            let run = f(i, slice);
            out[i].1 += targets[i].1.cpu_secs() - c0;
            out[i].0.append_slice(run);
        }
    }
    for (run, cpu) in &mut out {
        *cpu = *cpu * 1000.0 / run.ok.max(1) as f64;
    }
    out
}

/// Slices per target in an interleaved measurement.
const SLICES: u32 = 4;

/// CPU seconds per 1 000 successful requests of `p` during `f`.
fn measured<T>(p: &Proc, ok: impl Fn(&T) -> u64, f: impl FnOnce() -> T) -> (T, f64) {
    let c0 = p.cpu_secs();
    let out = f();
    let cpu = p.cpu_secs() - c0;
    let n = ok(&out).max(1);
    (out, cpu * 1000.0 / n as f64)
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn latency_fields(run: &mut Run, prefix: &str, out: &mut serde_json::Map<String, Value>) {
    for (q, name) in [(0.5, "p50_ms"), (0.9, "p90_ms"), (0.99, "p99_ms")] {
        out.insert(format!("{prefix}{name}"), json!(round(run.lat_ms(q), 3)));
    }
}

fn overhead(rt: &tokio::runtime::Runtime, args: &Args, plan: &Plan) -> Result<Vec<Value>, String> {
    overhead_with(rt, args, plan, None)
}

/// `overhead` with a third target: keygate with a `[cluster]` section on a Redis of its own
/// (same mock, same key), interleaved with the other two.
fn cluster_overhead(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    plan: &Plan,
) -> Result<Vec<Value>, String> {
    let redis = redis::Redis::start()?;
    let lines = overhead_with(rt, args, plan, Some(&redis))?;
    drop(redis);
    Ok(lines)
}

fn overhead_with(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    plan: &Plan,
    redis: Option<&redis::Redis>,
) -> Result<Vec<Value>, String> {
    let scenario = if redis.is_some() {
        "cluster_overhead"
    } else {
        "overhead"
    };
    let rig = start(args, true, one_key())?;
    let clustered = match redis {
        Some(r) => {
            let toml = r.cluster_toml(&format!("kgload-{}-cpu:", std::process::id()));
            let p = Proc::keygate(&KeygateOpts {
                bin: args.keygate_bin.as_deref(),
                log: &args.keygate_log,
                log_format: &args.keygate_log_format,
                upstream: rig.mock.addr,
                extra_toml: &toml,
                env: one_key(),
                profiles: None,
                https: false,
            })?;
            p.wait_log("cluster: connected to Redis", Duration::from_secs(5))?;
            Some(p)
        }
        None => None,
    };
    let redis_cpu0 = redis.map(|r| procs::cpu_secs(r.pid()));
    let client = load::client();
    let body = Bytes::from_static(CHAT_BODY.as_bytes());
    let mut lines = Vec::new();
    let mut targets = targets(&rig);
    if let Some(p) = &clustered {
        targets.push(("keygate_cluster", p));
    }
    let specs = targets
        .iter()
        .map(|(_, p)| spec(p.addr, "json", body.clone(), 0))
        .collect::<Result<Vec<_>, _>>()?;
    for s in &specs {
        rt.block_on(load::closed_loop(
            &client,
            s,
            plan.conc,
            plan.max,
            plan.warmup,
        ));
    }
    // Phase 1: fixed concurrency (saturation on this machine).
    let m0 = rig.mock.cpu_secs();
    let sat = interleaved(&targets, plan.dur, |i, dur| {
        rt.block_on(load::closed_loop(
            &client, &specs[i], plan.conc, plan.max, dur,
        ))
    });
    let mock_cpu = (rig.mock.cpu_secs() - m0) * 1000.0
        / sat.iter().map(|(r, _)| r.ok).sum::<u64>().max(1) as f64;
    let mut paced = Vec::new();
    let mut bare_rps = None;
    for ((name, _), (mut run, cpu)) in targets.iter().zip(sat) {
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), json!(scenario));
        m.insert("target".into(), json!(name));
        m.insert("concurrency".into(), json!(plan.conc));
        m.insert("requests".into(), json!(run.total()));
        m.insert("success_rate".into(), json!(run.success_rate()));
        m.insert("rps".into(), json!(round(run.rps(), 1)));
        latency_fields(&mut run, "", &mut m);
        m.insert("cpu_s_per_1k".into(), json!(round(cpu, 4)));
        m.insert("mock_cpu_s_per_1k".into(), json!(round(mock_cpu, 4)));
        if let Some(e) = &run.first_error {
            m.insert("first_error".into(), json!(e));
        }
        bare_rps.get_or_insert(run.rps());
        paced.push((*name, m));
    }
    // Phase 2: open loop at half (then a quarter of) the bare forwarder's saturation
    // throughput, at most 2 × concurrency in flight (so a target that cannot keep up shows
    // a lower achieved rate instead of opening ever more connections).
    let half = bare_rps.map_or(100.0, |r| r / 2.0).max(10.0);
    for (prefix, rate, dur) in [
        ("paced_", half, plan.dur),
        ("paced_q_", half / 2.0, plan.dur / 2),
    ] {
        let runs = interleaved(&targets, dur, |i, dur| {
            rt.block_on(load::paced(
                &client,
                &specs[i],
                rate,
                plan.max,
                dur,
                plan.conc * 2,
            ))
        });
        for ((_, m), (mut run, cpu)) in paced.iter_mut().zip(runs) {
            m.insert(format!("{prefix}rate"), json!(round(rate, 1)));
            m.insert(format!("{prefix}achieved_rps"), json!(round(run.rps(), 1)));
            m.insert(format!("{prefix}requests"), json!(run.total()));
            m.insert(format!("{prefix}success_rate"), json!(run.success_rate()));
            latency_fields(&mut run, prefix, m);
            m.insert(format!("{prefix}cpu_s_per_1k"), json!(round(cpu, 4)));
            if let (Some(e), false) = (&run.first_error, m.contains_key("first_error")) {
                m.insert("first_error".into(), json!(e));
            }
        }
    }
    for ((_, p), (_, m)) in targets.iter().zip(paced.iter_mut()) {
        m.insert("peak_rss_kb".into(), json!(p.peak_rss_kb()));
    }
    let get = |name: &str, k: &str| {
        paced
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, m)| m.get(k))
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    let cpu_ratio =
        get("keygate", "paced_cpu_s_per_1k") / get("bare", "paced_cpu_s_per_1k").max(1e-9);
    let sat_cpu_ratio = get("keygate", "cpu_s_per_1k") / get("bare", "cpu_s_per_1k").max(1e-9);
    let p99_added = get("keygate", "paced_p99_ms") - get("bare", "paced_p99_ms");
    let p99_added_q = get("keygate", "paced_q_p99_ms") - get("bare", "paced_q_p99_ms");
    let cpu_ratio_q =
        get("keygate", "paced_q_cpu_s_per_1k") / get("bare", "paced_q_cpu_s_per_1k").max(1e-9);
    let rss_ratio = get("keygate", "peak_rss_kb") / get("bare", "peak_rss_kb").max(1.0);
    let rps_ratio = get("keygate", "rps") / get("bare", "rps").max(1e-9);
    let cluster_line = clustered.as_ref().map(|_| {
        let on = |k: &str| get("keygate_cluster", k) / get("keygate", k).max(1e-9);
        let ratio = on("paced_cpu_s_per_1k");
        let ok: f64 = ["requests", "paced_requests", "paced_q_requests"]
            .iter()
            .map(|k| get("keygate_cluster", k))
            .sum();
        let redis_cpu = redis
            .zip(redis_cpu0)
            .map_or(0.0, |(r, c0)| procs::cpu_secs(r.pid()) - c0);
        json!({
            "scenario": scenario,
            "target": "keygate_cluster/keygate",
            "cpu_per_request_ratio": round(ratio, 3),
            "cpu_per_request_ratio_quarter_rate": round(on("paced_q_cpu_s_per_1k"), 3),
            "cpu_per_request_ratio_saturated": round(on("cpu_s_per_1k"), 3),
            "cpu_target": 1.05,
            "cpu_met": ratio <= 1.05,
            "p99_added_ms": round(get("keygate_cluster", "paced_p99_ms") - get("keygate", "paced_p99_ms"), 3),
            "peak_rss_ratio": round(on("peak_rss_kb"), 3),
            // Redis's CPU over the whole run (warm-up included), per 1 000 requests the
            // clustered replica was sent in the measured phases.
            "redis_cpu_s_per_1k": round(redis_cpu * 1000.0 / ok.max(1.0), 5),
        })
    });
    for (_, m) in paced {
        lines.push(Value::Object(m));
    }
    lines.extend(cluster_line);
    lines.push(json!({
        "scenario": scenario,
        "target": "keygate/bare",
        "cpu_per_request_ratio": round(cpu_ratio, 3),
        "cpu_per_request_ratio_saturated": round(sat_cpu_ratio, 3),
        "cpu_target": 1.3,
        "cpu_met": cpu_ratio <= 1.3,
        "p99_added_ms": round(p99_added, 3),
        "p99_added_target_ms": 0.3,
        "p99_met": p99_added <= 0.3,
        "p99_added_ms_quarter_rate": round(p99_added_q, 3),
        "cpu_per_request_ratio_quarter_rate": round(cpu_ratio_q, 3),
        "rps_ratio_saturated": round(rps_ratio, 3),
        "peak_rss_ratio": round(rss_ratio, 3),
    }));
    drop(clustered);
    drop(rig);
    Ok(lines)
}

fn streaming(rt: &tokio::runtime::Runtime, args: &Args, plan: &Plan) -> Result<Vec<Value>, String> {
    let rig = start(args, true, one_key())?;
    let client = load::client();
    let mut body = CHAT_BODY.trim_end_matches('}').to_owned();
    body.push_str(r#","stream":true}"#);
    let body = Bytes::from(body);
    let mut lines = Vec::new();
    let mut cpus = Vec::new();
    for (name, p) in targets(&rig) {
        let s = spec(p.addr, "sse", body.clone(), 0)?;
        rt.block_on(load::closed_loop(
            &client,
            &s,
            plan.conc,
            plan.max,
            plan.warmup,
        ));
        let (mut run, cpu) = measured(
            p,
            |r: &Run| r.ok,
            || {
                rt.block_on(load::closed_loop(
                    &client, &s, plan.conc, plan.max, plan.dur,
                ))
            },
        );
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), json!("streaming"));
        m.insert("target".into(), json!(name));
        m.insert("concurrency".into(), json!(plan.conc));
        m.insert("events_per_stream".into(), json!(mock::SSE_EVENTS));
        m.insert("requests".into(), json!(run.total()));
        m.insert("success_rate".into(), json!(run.success_rate()));
        m.insert("rps".into(), json!(round(run.rps(), 1)));
        latency_fields(&mut run, "", &mut m);
        m.insert("ttfe_p50_ms".into(), json!(round(run.ttfe_ms(0.5), 3)));
        m.insert("ttfe_p99_ms".into(), json!(round(run.ttfe_ms(0.99), 3)));
        m.insert("cpu_s_per_1k".into(), json!(round(cpu, 4)));
        m.insert("peak_rss_kb".into(), json!(p.peak_rss_kb()));
        if let Some(e) = &run.first_error {
            m.insert("first_error".into(), json!(e));
        }
        cpus.push((cpu, run.ttfe_ms(0.99)));
        lines.push(Value::Object(m));
    }
    if let [(bare_cpu, bare_ttfe), (kg_cpu, kg_ttfe)] = cpus[..] {
        let ratio = kg_cpu / bare_cpu.max(1e-9);
        lines.push(json!({
            "scenario": "streaming",
            "target": "keygate/bare",
            "cpu_per_request_ratio": round(ratio, 3),
            "cpu_target": 1.3,
            "cpu_met": ratio <= 1.3,
            "ttfe_p99_added_ms": round(kg_ttfe - bare_ttfe, 3),
        }));
    }
    Ok(lines)
}

/// Runs `f` against the bare forwarder and then against keygate (its name, its process and a
/// client), each in a fresh rig with one key, warmed up first by the client (8 workers,
/// 200 requests at most, for `plan.warmup`).
fn each_in_a_fresh_rig(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    plan: &Plan,
    mut f: impl FnMut(&'static str, &Proc, &load::LoadClient) -> Result<(), String>,
) -> Result<(), String> {
    for with_bare in [true, false] {
        let rig = start(args, with_bare, one_key())?;
        let (name, p) = if with_bare {
            ("bare", rig.bare.as_ref().ok_or("no bare forwarder")?)
        } else {
            ("keygate", &rig.keygate)
        };
        let client = load::client();
        let warm = spec(p.addr, "json", Bytes::from_static(CHAT_BODY.as_bytes()), 0)?;
        rt.block_on(load::closed_loop(&client, &warm, 8, 200, plan.warmup));
        f(name, p, &client)?;
        drop(client);
        drop(rig);
    }
    Ok(())
}

fn open_streams(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    plan: &Plan,
) -> Result<Vec<Value>, String> {
    let mut lines = Vec::new();
    let mut per_stream = Vec::new();
    // A fresh rig per target: the mock keeps idle streams open until its process ends.
    each_in_a_fresh_rig(rt, args, plan, |name, p, client| {
        std::thread::sleep(Duration::from_millis(200));
        let base = p.rss_kb();
        let s = spec(p.addr, "idle", Bytes::from_static(CHAT_BODY.as_bytes()), 0)?;
        let (opened, close, rss_open) = rt.block_on(async {
            let (opened, close) =
                load::open_streams(client, &s, plan.streams, Duration::from_secs(12)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            (opened, close, p.rss_kb())
        });
        drop(close);
        let per = (rss_open.saturating_sub(base) * 1024) as f64 / opened.max(1) as f64;
        per_stream.push(per);
        lines.push(json!({
            "scenario": "open_streams",
            "target": name,
            "streams": plan.streams,
            "opened": opened,
            "success_rate": opened as f64 / plan.streams.max(1) as f64,
            "rss_base_kb": base,
            "rss_open_kb": rss_open,
            "rss_per_stream_bytes": round(per, 0),
        }));
        Ok(())
    })?;
    if let [bare, kg] = per_stream[..] {
        lines.push(json!({
            "scenario": "open_streams",
            "target": "keygate/bare",
            "keygate_rss_per_stream_bytes": round(kg, 0),
            "bare_rss_per_stream_bytes": round(bare, 0),
            "rss_per_stream_target_bytes": 16384,
            "rss_per_stream_met": kg <= 16384.0,
        }));
    }
    Ok(lines)
}

fn big_bodies(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    plan: &Plan,
) -> Result<Vec<Value>, String> {
    let mut lines = Vec::new();
    let mut ratios = Vec::new();
    // A JSON body with a model, padded to the size (like a long conversation).
    let mut body = String::with_capacity(plan.body_size);
    body.push_str(r#"{"model":"gpt-load","messages":[{"role":"user","content":""#);
    while body.len() + 4 < plan.body_size {
        body.push('x');
    }
    body.push_str(r#""}]}"#);
    let body = Bytes::from(body);
    let in_flight_bytes = (plan.bodies * body.len()) as f64;
    // A fresh rig per target, so each peak RSS (VmHWM) is this scenario's alone.
    each_in_a_fresh_rig(rt, args, plan, |name, p, client| {
        let base = p.rss_kb();
        let s = spec(p.addr, "slow", body.clone(), plan.body_delay_ms)?;
        let (run, max_in_flight) = rt.block_on(load::burst(
            client,
            &s,
            plan.bodies,
            Duration::from_millis(300),
        ));
        let peak = p.peak_rss_kb();
        let ratio = (peak * 1024) as f64 / in_flight_bytes.max(1.0);
        ratios.push(ratio);
        let mut m = json!({
            "scenario": "big_bodies",
            "target": name,
            "bodies": plan.bodies,
            "body_bytes": body.len(),
            "bytes_in_flight": in_flight_bytes,
            "client_max_in_flight": max_in_flight,
            "success_rate": run.success_rate(),
            "rss_base_kb": base,
            "peak_rss_kb": peak,
            "peak_rss_over_bytes_in_flight": round(ratio, 3),
            "added_rss_over_bytes_in_flight": round(((peak.saturating_sub(base)) * 1024) as f64 / in_flight_bytes.max(1.0), 3),
        });
        if let Some(e) = &run.first_error {
            m["first_error"] = json!(e);
        }
        lines.push(m);
        Ok(())
    })?;
    if let [_, kg] = ratios[..] {
        lines.push(json!({
            "scenario": "big_bodies",
            "target": "keygate/bare",
            "keygate_peak_rss_over_bytes_in_flight": round(kg, 3),
            "target_ratio": 1.5,
            "peak_rss_met": kg <= 1.5,
        }));
    }
    Ok(lines)
}

fn rotation(rt: &tokio::runtime::Runtime, args: &Args, plan: &Plan) -> Result<Vec<Value>, String> {
    // 8 keys; the first three (tried first in the default `ordered` strategy) always 429
    // with `retry-after: 2`, so every 2 s window opens a new burst.
    let keys: Vec<String> = (1..=8)
        .map(|i| {
            if i <= 3 {
                format!("sk-lim-{i}")
            } else {
                format!("sk-ok-{i}")
            }
        })
        .collect();
    let env = vec![("OPENAI_API_KEYS".to_owned(), keys.join(","))];
    let rig = start(args, false, env)?;
    let client = load::client();
    let s = spec(
        rig.keygate.addr,
        "json",
        Bytes::from_static(CHAT_BODY.as_bytes()),
        0,
    )?;
    let conc = plan.rotation_conc;
    let dur = plan.dur * 2;
    let (run, cpu) = measured(
        &rig.keygate,
        |r: &Run| r.ok,
        || rt.block_on(load::closed_loop(&client, &s, conc, plan.max, dur)),
    );
    let stats: Value = rt.block_on(async {
        let uri: http::Uri = format!("http://{}/__stats", rig.mock.addr)
            .parse()
            .map_err(|e| format!("uri: {e}"))?;
        let plain: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let resp = plain.get(uri).await.map_err(|e| format!("stats: {e}"))?;
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| format!("stats body: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("stats json: {e}"))
    })?;
    let upstream = stats["requests"].as_u64().unwrap_or(0);
    let mut limited = serde_json::Map::new();
    let mut good = serde_json::Map::new();
    let mut max_burst = 0u64;
    if let Some(k) = stats["keys"].as_object() {
        for (key, v) in k {
            if key.starts_with("sk-lim") {
                max_burst = max_burst.max(v["max_429_per_burst"].as_u64().unwrap_or(0));
                limited.insert(key.clone(), v.clone());
            } else {
                good.insert(key.clone(), v["requests"].clone());
            }
        }
    }
    let mut m = json!({
        "scenario": "rotation",
        "target": "keygate",
        "keys": 8,
        "limited_keys": 3,
        "retry_after_s": 2,
        "concurrency": conc,
        "requests": run.total(),
        "success_rate": run.success_rate(),
        "rps": round(run.rps(), 1),
        "attempts_per_request": round(run.attempts as f64 / run.ok.max(1) as f64, 4),
        "upstream_requests": upstream,
        "upstream_attempts_per_request": round(upstream as f64 / run.total().max(1) as f64, 4),
        "limited": limited,
        "good_key_requests": good,
        "max_429_per_burst": max_burst,
        "max_429_per_burst_bound": conc,
        "burst_bound_met": max_burst <= conc as u64,
        "cpu_s_per_1k": round(cpu, 4),
    });
    if let Some(e) = &run.first_error {
        m["first_error"] = json!(e);
    }
    drop(client);
    drop(rig);
    Ok(vec![m])
}
