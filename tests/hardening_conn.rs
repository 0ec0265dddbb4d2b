//! Connection and process hardening (issue 10): signals, descriptor exhaustion.

mod support;

use std::time::Duration;

use serde_json::json;
use support::gateway::GW;
use support::keygate::{post_json, providers_at};
use support::mock::{anthropic_sse, Behaviour, MockProvider};
use support::served::Served;

const PROFILES: &str = r#"{"version":1,"profiles":{
  "anthropic:a":{"type":"api_key","provider":"anthropic","key":"sk-test-hup-a-0001"},
  "anthropic:b":{"type":"api_key","provider":"anthropic","key":"sk-test-hup-b-0002"}}}"#;

fn messages() -> serde_json::Value {
    json!({"model": "claude", "stream": true})
}

#[tokio::test]
async fn sighup_rereads_the_stores_and_keeps_serving_streams_in_flight() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::delayed(
        Duration::from_millis(1500),
        Behaviour::sse(anthropic_sse("claude", 3)),
    ));
    let state = tempfile::tempdir().expect("tempdir");
    support::cli::write_file(&support::cli::profiles_file(state.path()), PROFILES, 0o600);
    let order = |id: &str| format!(r#"{{"version":1,"order":{{"anthropic":["{id}"]}}}}"#);
    support::cli::write_file(
        &support::cli::state_file(state.path()),
        &order("anthropic:a"),
        0o600,
    );
    let kg = Served::start(state.path(), &providers_at(&mock.url(), &["anthropic"]));
    assert!(
        kg.wait_log("keygate listening").await,
        "{}",
        kg.log.lock().unwrap()
    );

    let url = kg.url("/anthropic/v1/messages");
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post_json(&url, &[("x-api-key", GW)], &messages()).await })
        })
        .collect();
    assert!(mock.wait_in_flight(3, Duration::from_secs(10)).await);
    // A change on disk just before the signal.
    support::cli::write_file(
        &support::cli::state_file(state.path()),
        &order("anthropic:b"),
        0o600,
    );
    kg.signal("-HUP");
    for s in streams {
        let a = s.await.expect("join");
        assert_eq!(a.status, 200, "{}", a.text());
        assert!(
            a.text().contains("message_stop"),
            "stream cut: {}",
            a.text()
        );
    }
    assert!(
        kg.wait_log("SIGHUP received: credential stores re-read")
            .await,
        "{}",
        kg.log.lock().unwrap()
    );
    mock.set_default(Behaviour::status(200, r#"{"type":"message"}"#));
    let next = post_json(&url, &[("x-api-key", GW)], &json!({"model": "claude"})).await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.header("x-keygate-credential"), Some("anthropic:b"));
    let mut kg = kg;
    assert!(
        kg.child.try_wait().expect("wait").is_none(),
        "keygate exited"
    );
}

impl Served {
    fn log_count(&self, needle: &str) -> usize {
        self.log.lock().unwrap().matches(needle).count()
    }

    /// CPU time (user + system) the process has used so far, from /proc.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("/proc/PID/stat");
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // USER_HZ is 100 on every Linux ABI.
        Duration::from_millis(ticks * 10)
    }

    async fn healthz_ok(&self) -> bool {
        for _ in 0..100 {
            let ok = tokio::time::timeout(Duration::from_secs(2), async {
                support::keygate::send(http::Method::GET, &self.url("/healthz"), &[], "").await
            })
            .await
            .is_ok_and(|a| a.status == 200);
            if ok {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// Opens `n` idle connections (no bytes sent).
fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect()
}

#[tokio::test]
async fn out_of_descriptors_backs_off_with_one_log_line_and_recovers() {
    let state = tempfile::tempdir().expect("tempdir");
    // A cap above what 64 descriptors allow: accept itself runs out.
    let kg = Served::start_limited(state.path(), "[server]\nmax_connections = 1000\n", Some(64));
    assert!(
        kg.wait_log("keygate listening").await,
        "{}",
        kg.log.lock().unwrap()
    );
    let conns = idle_connections(kg.addr, 100);
    assert!(
        kg.wait_log("accept failed").await,
        "no log line when descriptors ran out:\n{}",
        kg.log.lock().unwrap()
    );
    // While out of descriptors, the accept loop sleeps instead of spinning: far less than
    // one core busy over two seconds (a spinning loop uses all of it).
    let before = kg.cpu_time();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = kg.cpu_time() - before;
    assert!(
        used < Duration::from_millis(1000),
        "accept loop busy while out of descriptors: {used:?} CPU in 2 s"
    );
    assert_eq!(
        kg.log_count("accept failed"),
        1,
        "one line per episode:\n{}",
        kg.log.lock().unwrap()
    );
    drop(conns);
    assert!(kg.healthz_ok().await, "/healthz after recovery");
    assert!(
        kg.wait_log("accepting connections again").await,
        "{}",
        kg.log.lock().unwrap()
    );
    assert_eq!(kg.log_count("accept failed"), 1);
}

#[tokio::test]
async fn the_default_connection_cap_is_sized_from_the_descriptor_limit() {
    let state = tempfile::tempdir().expect("tempdir");
    let kg = Served::start_limited(state.path(), "", Some(64));
    assert!(
        kg.wait_log("keygate listening").await,
        "{}",
        kg.log.lock().unwrap()
    );
    assert!(
        kg.log.lock().unwrap().contains("max_connections=24"),
        "{}",
        kg.log.lock().unwrap()
    );
    let conns = idle_connections(kg.addr, 60);
    assert!(
        kg.wait_log("max_connections reached").await,
        "{}",
        kg.log.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        kg.log_count("accept failed"),
        0,
        "the cap keeps descriptors free:\n{}",
        kg.log.lock().unwrap()
    );
    assert_eq!(kg.log_count("max_connections reached"), 1);
    drop(conns);
    assert!(kg.healthz_ok().await, "/healthz once connections close");
    let mut kg = kg;
    assert!(
        kg.child.try_wait().expect("wait").is_none(),
        "keygate exited"
    );
}

#[tokio::test]
async fn an_http2_connection_is_offered_at_most_128_streams() {
    let kg = support::keygate::Keygate::start(support::keygate::Opts::default()).await;
    let tcp = tokio::net::TcpStream::connect(kg.addr)
        .await
        .expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::get(kg.url("/healthz"))
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("in time")
        .expect("answer");
    assert_eq!(resp.status(), 200);
    // The server's SETTINGS arrived before its answer.
    assert_eq!(client.current_max_send_streams(), 128);
}

#[tokio::test]
async fn a_sighup_sent_the_moment_keygate_says_listening_never_kills_it() {
    // Supervisors send SIGHUP as soon as they read the listen line; the handler must already
    // be installed by then (the default action ends the process).
    let state = tempfile::tempdir().expect("tempdir");
    support::cli::write_file(&support::cli::profiles_file(state.path()), PROFILES, 0o600);
    let kg = Served::start(
        state.path(),
        &providers_at("http://127.0.0.1:9", &["anthropic"]),
    );
    let mut seen = false;
    for _ in 0..10_000 {
        if kg.log.lock().unwrap().contains("keygate listening") {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(seen, "{}", kg.log.lock().unwrap());
    kg.signal("-HUP");
    assert!(
        kg.wait_log("SIGHUP received").await,
        "{}",
        kg.log.lock().unwrap()
    );
    let mut kg = kg;
    assert!(
        kg.child.try_wait().expect("wait").is_none(),
        "keygate exited"
    );
}

#[tokio::test]
async fn a_head_of_a_provider_base_path_is_answered_without_auth_nor_error_line() {
    // Claude Code's connectivity check before each run: `HEAD /anthropic`, no credential.
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::status(200, r#"{"type":"message"}"#));
    let state = tempfile::tempdir().expect("tempdir");
    support::cli::write_file(&support::cli::profiles_file(state.path()), PROFILES, 0o600);
    let kg = Served::start(state.path(), &providers_at(&mock.url(), &["anthropic"]));
    assert!(kg.wait_log("keygate listening").await);
    let head = |path: &str| {
        let url = kg.url(path);
        async move { support::keygate::send(http::Method::HEAD, &url, &[], "").await }
    };
    for path in ["/anthropic", "/anthropic/"] {
        let a = head(path).await;
        assert_eq!(a.status, 200, "{path}");
        assert!(a.body.is_empty());
    }
    // Anything else still needs the token.
    assert_eq!(head("/anthropic/v1/messages").await.status, 401);
    assert_ne!(head("/no-such-provider").await.status, 200);
    assert!(mock.requests().is_empty(), "the probe reached the provider");
    // The two 401s above are the only unauthorized lines: the probes left none.
    assert!(kg.wait_log("path=\"/no-such-provider\"").await);
    assert_eq!(
        kg.log_count("unauthorized"),
        2,
        "{}",
        kg.log.lock().unwrap()
    );
    assert_eq!(
        kg.log_count("path=\"/anthropic"),
        1,
        "{}",
        kg.log.lock().unwrap()
    );

    // `ANTHROPIC_AUTH_TOKEN=$KEYGATE_TOKEN`: the SDK sends `Authorization: Bearer`, which
    // is accepted and never forwarded.
    let a = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("authorization", &format!("Bearer {GW}"))],
        &json!({"model": "claude"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = mock.last_request().expect("forwarded");
    assert!(
        seen.headers.get("authorization").is_none(),
        "{:?}",
        seen.headers
    );
    assert!(seen
        .key
        .as_deref()
        .is_some_and(|k| k.starts_with("sk-test-hup-")));
}
