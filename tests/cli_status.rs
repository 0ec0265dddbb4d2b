//! `keygate models status --check` exit codes and `--probe` against the mock provider.

mod support;

use serde_json::{json, Value};
use support::cli::*;
use support::mock::{Behaviour, MockProvider};

const HOUR: i64 = 3_600_000;

fn check(profiles: Value, extra: &[&str], config: Option<&str>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    write_file(
        &profiles_file(s),
        &json!({"version": 1, "profiles": profiles}).to_string(),
        0o600,
    );
    let mut args: Vec<String> = Vec::new();
    if let Some(c) = config {
        let p = s.join("keygate.toml");
        write_file(&p, c, 0o600);
        args.extend(["--config".to_owned(), p.display().to_string()]);
    }
    args.extend(["models", "status", "--check"].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = keygate(s, &args, &[], "");
    r.assert_no_secret(&[
        "secret-static-key",
        "secret-token",
        "secret-access",
        "secret-refresh",
    ]);
    r
}

fn key() -> Value {
    json!({"type": "api_key", "provider": "anthropic", "key": "secret-static-key-1"})
}

fn token(expires: Option<i64>) -> Value {
    match expires {
        Some(e) => {
            json!({"type": "token", "provider": "anthropic", "token": "secret-token-2", "expires": e})
        }
        None => json!({"type": "token", "provider": "anthropic", "token": "secret-token-2"}),
    }
}

fn oauth(expires: i64, refresh: bool) -> Value {
    let mut v = json!({"type": "oauth", "provider": "anthropic", "access": "secret-access-3", "expires": expires});
    if refresh {
        v["refresh"] = json!("secret-refresh-4");
    }
    v
}

#[test]
fn check_exit_codes() {
    // static: an api key and a token without expires.
    let r = check(json!({"a:key": key(), "a:tok": token(None)}), &[], None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("check: ok"), "{r:?}");
    // refreshable oauth whose access token has expired: ok.
    let r = check(
        json!({"a:key": key(), "a:oauth": oauth(ms_from_now(-HOUR), true)}),
        &["--json"],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["check"], json!({"result": "ok", "exitCode": 0}));
    let rows = &doc["providers"][0]["credentials"];
    assert_eq!(rows[0]["id"], "a:oauth");
    assert_eq!(rows[0]["health"], "ok");
    // expiring within the default 24 h window: 2.
    let r = check(
        json!({"a:key": key(), "a:tok": token(Some(ms_from_now(2 * HOUR)))}),
        &[],
        None,
    );
    assert_eq!(r.code, 2, "{r:?}");
    // ... but not within a 1 h window.
    let r = check(
        json!({"a:tok": token(Some(ms_from_now(2 * HOUR)))}),
        &["--warn-within", "1h"],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    // oauth without refresh, expiring: 2.
    let r = check(
        json!({"a:oauth": oauth(ms_from_now(HOUR), false)}),
        &[],
        None,
    );
    assert_eq!(r.code, 2, "{r:?}");
    // expired token: 1, even with an expiring one next to it.
    let r = check(
        json!({"a:tok": token(Some(ms_from_now(-HOUR))), "a:oauth": oauth(ms_from_now(HOUR), false)}),
        &["--json"],
        None,
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json()["check"]["result"], "expired");
    // invalid expires: 1.
    let r = check(json!({"a:tok": token(Some(-5))}), &[], None);
    assert_eq!(r.code, 1, "{r:?}");
    // missing secret: 1.
    let r = check(
        json!({"a:tok": {"type": "token", "provider": "anthropic", "token": ""}}),
        &[],
        None,
    );
    assert_eq!(r.code, 1, "{r:?}");
    // a configured provider without any credential: 1.
    let r = check(
        json!({"a:key": key()}),
        &[],
        Some("[providers.openai]\nrpm = 10\n"),
    );
    assert_eq!(r.code, 1, "{r:?}");
    // An expired token that the explicit order excludes does not count... but it is listed.
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    write_file(
        &profiles_file(s),
        &json!({"profiles": {"a:key": key(), "a:tok": token(Some(ms_from_now(-HOUR)))}})
            .to_string(),
        0o600,
    );
    write_file(
        &state_file(s),
        r#"{"order":{"anthropic":["a:key"]}}"#,
        0o600,
    );
    let r = keygate(s, &["models", "status", "--check", "--json"], &[], "");
    assert_eq!(r.code, 0, "{r:?}");
    let rows = r.json()["providers"][0]["credentials"].clone();
    assert_eq!(rows[1]["id"], "a:tok");
    assert_eq!(rows[1]["reasonCode"], "excluded_by_auth_order");
    assert_eq!(
        rows[1]["detail"],
        "Excluded by auth.order for this provider."
    );
}

const OK: &str = "sk-probe-ok-00000001";
const AUTH: &str = "sk-probe-auth-00000002";
const RL: &str = "sk-probe-ratelimit-00000003";
const BILLING: &str = "sk-probe-billing-00000004";
const HANG: &str = "sk-probe-hang-00000005";
const OVERLOADED: &str = "sk-probe-overloaded-00000006";
const EXCLUDED: &str = "sk-probe-excluded-00000007";
const EXPIRED: &str = "sk-probe-expired-00000008";
const CUSTOM: &str = "sk-probe-custom-00000009";
const BADEXP: &str = "sk-probe-badexp-00000010";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_each_status_and_reason() {
    let mock = MockProvider::start().await;
    mock.on_key(
        AUTH,
        Behaviour::status(401, r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#),
    );
    mock.on_key(
        RL,
        Behaviour::status_with(
            429,
            &[("retry-after", "30")],
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#,
        ),
    );
    mock.on_key(
        BILLING,
        Behaviour::status(400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#),
    );
    mock.on_key(HANG, Behaviour::Hang);
    mock.on_key(
        OVERLOADED,
        Behaviour::status(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
    );

    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().to_owned();
    let config = s.join("keygate.toml");
    write_file(
        &config,
        &format!(
            "[providers.anthropic]\nbase_url = \"{url}\"\nprobe_model = \"claude-probe\"\n\n\
             [providers.custom]\nbase_url = \"{url}\"\nauth = \"bearer\"\n\n\
             [providers.openai]\nbase_url = \"{url}\"\nprobe_model = \"gpt-probe\"\n",
            url = mock.url()
        ),
        0o600,
    );
    let key = |k: &str| json!({"type": "api_key", "provider": "anthropic", "key": k});
    write_file(
        &profiles_file(&s),
        &json!({"version": 1, "profiles": {
            "anthropic:ok": key(OK),
            "anthropic:auth": key(AUTH),
            "anthropic:rl": key(RL),
            "anthropic:billing": key(BILLING),
            "anthropic:hang": key(HANG),
            "anthropic:overloaded": key(OVERLOADED),
            "anthropic:excluded": key(EXCLUDED),
            "anthropic:expired": {"type": "token", "provider": "anthropic", "token": EXPIRED, "expires": ms_from_now(-HOUR)},
            "anthropic:unresolved": {"type": "api_key", "provider": "anthropic", "keyRef": {"source": "env", "id": "NOT_SET_ANYWHERE"}},
            "anthropic:nokey": {"type": "api_key", "provider": "anthropic"},
            "anthropic:badexp": {"type": "token", "provider": "anthropic", "token": BADEXP, "expires": -5}
        }})
        .to_string(),
        0o600,
    );
    write_file(
        &state_file(&s),
        &json!({"order": {"anthropic": ["anthropic:ok", "anthropic:auth", "anthropic:rl", "anthropic:billing",
            "anthropic:hang", "anthropic:overloaded", "anthropic:expired", "anthropic:unresolved",
            "anthropic:nokey", "anthropic:badexp"]}})
        .to_string(),
        0o600,
    );
    let cfg = config.display().to_string();
    let run = tokio::task::spawn_blocking(move || {
        let args = [
            "--config",
            &cfg,
            "models",
            "status",
            "--probe",
            "--json",
            "--probe-timeout",
            "1s",
            "--probe-concurrency",
            "4",
        ];
        let json_run = keygate(&s, &args, &[("CUSTOM_API_KEY", CUSTOM)], "");
        let text_run = keygate(
            &s,
            &[
                "--config",
                &cfg,
                "models",
                "status",
                "--probe",
                "--probe-provider",
                "anthropic",
                "--probe-profile",
                "anthropic:ok,anthropic:excluded,anthropic:expired,anthropic:nokey",
                "--probe-timeout",
                "1s",
            ],
            &[],
            "",
        );
        (json_run, text_run)
    });
    let (r, text) = run.await.unwrap();
    let secrets = [
        OK, AUTH, RL, BILLING, HANG, OVERLOADED, EXCLUDED, EXPIRED, CUSTOM, BADEXP,
    ];
    r.ok().assert_no_secret(&secrets);
    text.ok().assert_no_secret(&secrets);
    let doc = r.json();
    let probes = doc["probes"].as_array().unwrap();
    let row = |id: &str| -> &Value {
        probes
            .iter()
            .find(|p| p["credentialId"] == id)
            .unwrap_or_else(|| panic!("no probe row for {id}: {doc}"))
    };
    let expect = [
        ("anthropic:ok", "ok", Value::Null),
        ("anthropic:auth", "auth", json!("auth")),
        ("anthropic:rl", "rate_limit", json!("rate_limit")),
        ("anthropic:billing", "billing", json!("billing")),
        ("anthropic:hang", "timeout", json!("timeout")),
        ("anthropic:overloaded", "rate_limit", json!("overloaded")),
        (
            "anthropic:excluded",
            "unknown",
            json!("excluded_by_auth_order"),
        ),
        // No call was made for these: `unknown`, with the reason (OpenClaw's semantics).
        ("anthropic:expired", "unknown", json!("expired")),
        ("anthropic:unresolved", "unknown", json!("unresolved_ref")),
        ("anthropic:nokey", "unknown", json!("missing_credential")),
        ("anthropic:badexp", "unknown", json!("invalid_expires")),
        ("env:CUSTOM_API_KEY", "no_model", json!("no_model")),
    ];
    for (id, status, reason) in expect {
        let p = row(id);
        assert_eq!(p["status"], status, "{id}: {p}");
        assert_eq!(p["reasonCode"], reason, "{id}: {p}");
    }
    let ok = row("anthropic:ok");
    assert_eq!(ok["provider"], "anthropic");
    assert_eq!(ok["model"], "claude-probe");
    assert_eq!(ok["source"], "profile");
    assert!(ok["latencyMs"].is_u64(), "{ok}");
    assert_eq!(
        row("anthropic:excluded")["detail"],
        "Excluded by auth.order for this provider."
    );
    assert_eq!(row("anthropic:excluded")["latencyMs"], Value::Null);
    assert_eq!(row("env:CUSTOM_API_KEY")["source"], "env");
    for id in ["anthropic:expired", "anthropic:nokey", "anthropic:badexp"] {
        assert_eq!(row(id)["latencyMs"], Value::Null, "{id}");
    }
    // A configured provider without any credential: one row, no call, `unknown`.
    let openai: Vec<&Value> = probes
        .iter()
        .filter(|p| p["provider"] == "openai")
        .collect();
    assert_eq!(openai.len(), 1, "{doc}");
    assert_eq!(openai[0]["status"], "unknown", "{doc}");
    assert_eq!(openai[0]["reasonCode"], "missing_credential", "{doc}");
    assert_eq!(openai[0]["credentialId"], Value::Null, "{doc}");
    assert!(
        !probes.iter().any(|p| p["reasonCode"].is_string()
            && p["latencyMs"].is_null()
            && p["status"] == "auth"),
        "no row without a call says auth: {doc}"
    );

    // One request per called credential, none for the rows without a call; the request is
    // the minimal Messages call.
    // (OK twice: the filtered text run probes it again.)
    for k in [OK, AUTH, RL, BILLING, OVERLOADED] {
        let want = if k == OK { 2 } else { 1 };
        assert_eq!(mock.requests_for_key(k), want, "{k}");
    }
    assert!(
        !mock
            .requests()
            .iter()
            .any(|r| r.path().contains("chat/completions")),
        "no call for the provider without a credential"
    );
    for k in [EXCLUDED, EXPIRED, CUSTOM, BADEXP] {
        assert_eq!(mock.requests_for_key(k), 0, "{k}");
    }
    let req = mock
        .requests()
        .into_iter()
        .find(|r| r.key.as_deref() == Some(OK))
        .unwrap();
    assert_eq!(req.path(), "/v1/messages");
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        req.json(),
        json!({"model": "claude-probe", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
    );

    // The filtered text run: only the two asked-for rows.
    assert!(
        text.stdout.contains("anthropic:ok") && text.stdout.contains("excluded_by_auth_order"),
        "{text:?}"
    );
    assert!(!text.stdout.contains("env:CUSTOM_API_KEY"), "{text:?}");
    // Text columns: PROVIDER MODEL CREDENTIAL SOURCE STATUS REASON …
    for (id, reason) in [
        ("anthropic:expired", "expired"),
        ("anthropic:nokey", "missing_credential"),
        ("anthropic:excluded", "excluded_by_auth_order"),
    ] {
        let line = text
            .stdout
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(id))
            .unwrap_or_else(|| panic!("no text row for {id}: {text:?}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cols[4], cols[5]), ("unknown", reason), "{line}");
    }
}

#[test]
fn status_json_has_numeric_expiry_fields_and_an_absolute_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("st");
    let at = ms_from_now(364 * 24 * HOUR + 23 * HOUR + 30 * 60_000);
    write_file(
        &profiles_file(&s),
        &json!({"version": 1, "profiles": {"anthropic:t": {"type": "token", "provider": "anthropic", "token": "sk-ant-oat01-status-tok", "expires": at}}}).to_string(),
        0o600,
    );
    // A relative --state-dir, from its parent.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .args(["--state-dir", "./st"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let v: Value = serde_json::from_str(&run(&["models", "status", "--json"])).unwrap();
    let real = s.canonicalize().unwrap();
    let shown = std::path::PathBuf::from(v["stateDir"].as_str().unwrap());
    assert!(shown.is_absolute(), "{v}");
    assert_eq!(shown.canonicalize().unwrap(), real);
    let c = &v["providers"][0]["credentials"][0];
    assert_eq!(c["expiresAt"], json!(at), "{c}");
    assert_eq!(c["expires"], json!(at));
    assert!(c["expiresAtIso"].as_str().unwrap().ends_with('Z'), "{c}");
    let remaining = c["remainingMs"].as_i64().unwrap();
    assert!(remaining > 364 * 24 * HOUR && remaining <= at, "{c}");
    let list: Value = serde_json::from_str(&run(&["models", "auth", "list", "--json"])).unwrap();
    assert_eq!(list["profiles"][0]["expiresAt"], json!(at), "{list}");
    let text = run(&["models", "status"]);
    assert!(text.contains("in 364d 23h"), "{text}");
    assert!(
        text.contains(&real.display().to_string())
            || text.contains(&dir.path().join("st").display().to_string()),
        "{text}"
    );
}
