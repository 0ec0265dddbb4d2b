//! Hot reload (SPEC §6): changed credential files take effect within 2 s without a restart;
//! a broken new version keeps the last good one.

mod support;

use std::path::Path;
use std::time::Duration;

use support::keygate::{post_messages, providers_at, Keygate, Opts};
use support::mock::MockProvider;

const GW: &str = "gw-reload-token";

const PROFILES: &str = r#"{"version":1,"profiles":{
  "anthropic:a":{"type":"api_key","provider":"anthropic","key":"sk-test-reload-a-0001"},
  "anthropic:b":{"type":"api_key","provider":"anthropic","key":"sk-test-reload-b-0002"}}}"#;

fn write(path: &Path, text: &str) {
    // Write-then-rename, as every well-behaved writer (keygate's own CLI included) does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn credential_used(kg: &Keygate) -> String {
    let a = post_messages(kg, GW, "claude").await;
    a.header("x-keygate-credential").unwrap_or("-").to_owned()
}

/// Polls (bounded) until the proxy uses `want`.
async fn eventually_uses(kg: &Keygate, want: &str) -> bool {
    for _ in 0..40 {
        if credential_used(kg).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn order_change_on_disk_takes_effect_without_restart() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(
        Opts::default()
            .config(providers_at(&mock.url(), &["anthropic"]))
            .env("KEYGATE_TOKEN", GW)
            .profiles(PROFILES)
            .auth_state(r#"{"version":1,"order":{"anthropic":["anthropic:a"]}}"#),
    )
    .await;
    assert_eq!(credential_used(&kg).await, "anthropic:a");
    let dir = kg.state_path().join("agents/main/agent");
    write(
        &dir.join("auth-state.json"),
        r#"{"version":1,"order":{"anthropic":["anthropic:b"]}}"#,
    );
    assert!(
        eventually_uses(&kg, "anthropic:b").await,
        "the new order was not picked up"
    );

    // A broken profiles file keeps the last good version.
    write(
        &dir.join("auth-profiles.json"),
        "{ \"version\": 1, \"profiles\": { oops",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        credential_used(&kg).await,
        "anthropic:b",
        "still serving the last good credentials"
    );

    // Fixing it (with a new key for b) is picked up, and b now sends the new secret.
    write(
        &dir.join("auth-profiles.json"),
        &PROFILES.replace("sk-test-reload-b-0002", "sk-test-reload-b-NEW9"),
    );
    for _ in 0..40 {
        credential_used(&kg).await;
        if mock.last_request().and_then(|r| r.key) == Some("sk-test-reload-b-NEW9".into()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the fixed profiles file was not picked up");
}

/// `/_keygate/status` as the admin sees it.
async fn admin_status(kg: &Keygate) -> serde_json::Value {
    let s = support::keygate::send(
        http::Method::GET,
        &kg.url("/_keygate/status"),
        &[("authorization", "Bearer admin-reload-token")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(s.status, http::StatusCode::OK, "{}", s.text());
    s.json()
}

fn anthropic_ids(status: &serde_json::Value) -> Vec<String> {
    status["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .filter(|p| p["provider"] == "anthropic")
        .flat_map(|p| p["credentials"].as_array().cloned().unwrap_or_default())
        .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn status_shows_the_pool_being_served_when_the_files_on_disk_break() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(
        Opts::default()
            .config(providers_at(&mock.url(), &["anthropic"]))
            .env("KEYGATE_TOKEN", GW)
            .env("KEYGATE_ADMIN_TOKEN", "admin-reload-token")
            .profiles(PROFILES),
    )
    .await;
    assert_eq!(credential_used(&kg).await, "anthropic:a");
    let before = admin_status(&kg).await;
    assert_eq!(before["stale"], false);
    assert_eq!(before["filesBroken"], false);
    assert_eq!(anthropic_ids(&before), ["anthropic:a", "anthropic:b"]);

    let dir = kg.state_path().join("agents/main/agent");
    write(
        &dir.join("auth-profiles.json"),
        "{ \"version\": 1, \"profiles\": { oops",
    );
    // The proxy keeps serving its last good pool, and its status says so: 200 with the
    // served credentials, `stale`, and why the file on disk is not in use.
    let mut after = before.clone();
    for _ in 0..40 {
        after = admin_status(&kg).await;
        if after["stale"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after["stale"], true, "{after:#}");
    assert_eq!(after["filesBroken"], true);
    assert_eq!(anthropic_ids(&after), ["anthropic:a", "anthropic:b"]);
    let warnings = after["warnings"].to_string();
    assert!(warnings.contains("auth-profiles.json"), "{warnings}");
    let served = credential_used(&kg).await;
    assert!(served.starts_with("anthropic:"), "still serving: {served}");
    // No secret of the served pool appears in the document.
    let text = after.to_string();
    assert!(!text.contains("sk-test-reload-a-0001") && !text.contains(GW));
}

#[tokio::test]
async fn dotenv_changes_are_picked_up() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(
        Opts::default()
            .config(providers_at(&mock.url(), &["anthropic"]))
            .env("KEYGATE_TOKEN", GW)
            .file(".env", "# no keys yet\n"),
    )
    .await;
    let a = post_messages(&kg, GW, "claude").await;
    assert_eq!(a.status, 401);
    write(
        &kg.state_path().join(".env"),
        "ANTHROPIC_API_KEY=sk-test-from-dotenv-0003\n",
    );
    assert!(eventually_uses(&kg, "env:ANTHROPIC_API_KEY").await);
    assert_eq!(
        mock.last_request().and_then(|r| r.key).as_deref(),
        Some("sk-test-from-dotenv-0003")
    );
}

#[tokio::test]
async fn order_set_cli_on_a_running_proxy_changes_the_next_credential() {
    let mock = MockProvider::start().await;
    let kg = Keygate::start(
        Opts::default()
            .config(providers_at(&mock.url(), &["anthropic"]))
            .env("KEYGATE_TOKEN", GW)
            .profiles(PROFILES),
    )
    .await;
    let first = credential_used(&kg).await;
    assert!(first.starts_with("anthropic:"), "{first}");
    let other = if first == "anthropic:a" {
        "anthropic:b"
    } else {
        "anthropic:a"
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "--state-dir",
            kg.state_path().to_str().expect("utf8"),
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "anthropic",
            other,
        ])
        .env_remove("KEYGATE_CONFIG")
        .output()
        .expect("run keygate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Within the reload window every request goes to `other`, whatever least-recently-used
    // would pick (without the order, a and b alternate).
    let mut streak = 0;
    for _ in 0..60 {
        if credential_used(&kg).await == other {
            streak += 1;
            if streak == 6 {
                return;
            }
        } else {
            streak = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("the order set by the CLI was not picked up");
}
