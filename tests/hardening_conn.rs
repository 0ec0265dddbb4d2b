//! Connection and process hardening (issue 10): signals.

mod cli_common;
mod support;

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::keygate::{post_json, providers_at};
use support::mock::{anthropic_sse, Behaviour, MockProvider};

const GW: &str = "gw-hardening-conn-token";

const PROFILES: &str = r#"{"version":1,"profiles":{
  "anthropic:a":{"type":"api_key","provider":"anthropic","key":"sk-test-hup-a-0001"},
  "anthropic:b":{"type":"api_key","provider":"anthropic","key":"sk-test-hup-b-0002"}}}"#;

/// The real binary serving on a free port, its stderr collected.
struct Served {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Served {
    fn start(state: &std::path::Path, config: &str) -> Served {
        let cfg = state.join("keygate-test.toml");
        std::fs::write(&cfg, config).expect("config");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let mut child = cli_common::command(
            state,
            &[
                "--config",
                cfg.to_str().expect("utf-8"),
                "serve",
                "--listen",
                &addr.to_string(),
            ],
            &[("KEYGATE_TOKEN", GW)],
        )
        .spawn()
        .expect("spawn keygate serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Served { child, addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn wait_log(&self, needle: &str) -> bool {
        for _ in 0..100 {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    cli_common::write_file(&cli_common::profiles_file(state.path()), PROFILES, 0o600);
    let order = |id: &str| format!(r#"{{"version":1,"order":{{"anthropic":["{id}"]}}}}"#);
    cli_common::write_file(
        &cli_common::state_file(state.path()),
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
    cli_common::write_file(
        &cli_common::state_file(state.path()),
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
