//! `keygate models auth ...` against the real binary: round trips of every profile kind and
//! SecretRef source, untouched corrupted files, concurrent writers, permissions, and no
//! secret in any output.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::cli::*;

const KEY: &str = "sk-ant-api03-ROUNDTRIP-key-0001";
const TOKEN: &str = "tok-ROUNDTRIP-token-secret-0002";
const ACCESS: &str = "oauth-ROUNDTRIP-access-0003";
const REFRESH: &str = "oauth-ROUNDTRIP-refresh-0004";

fn setup_token() -> String {
    format!("sk-ant-oat01-{}", "A".repeat(80))
}

fn profile<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} missing in {doc}"))
}

#[test]
fn every_kind_round_trips_and_unknown_fields_survive() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    // An existing file with an oauth profile and fields keygate does not know.
    write_file(
        &profiles_file(s),
        &json!({"version": 1, "custom": {"keep": true}, "profiles": {
            "anthropic:oauth": {"type": "oauth", "provider": "anthropic", "access": ACCESS,
                                "refresh": REFRESH, "expires": ms_from_now(3_600_000), "accountId": "acct"},
            "openai:manual": {"type": "api_key", "provider": "openai", "key": "old-key-value-xxxx",
                              "email": "me@example.com", "x-extra": [1, 2]}
        }})
        .to_string(),
        0o600,
    );
    write_file(
        &state_file(s),
        r#"{"version":1,"lastGood":{"anthropic":"anthropic:oauth"},"usageStats":{"anthropic:oauth":{"lastUsed":5}}}"#,
        0o600,
    );
    let secrets = [KEY, TOKEN, ACCESS, REFRESH, "old-key-value-xxxx"];
    let st = setup_token();

    keygate(
        s,
        &["models", "auth", "paste-api-key", "--provider", "openai"],
        &[],
        &format!("{KEY}\n"),
    )
    .ok()
    .assert_no_secret(&secrets);
    keygate(
        s,
        &[
            "models",
            "auth",
            "paste-token",
            "--provider",
            "anthropic",
            "--profile-id",
            "anthropic:work",
            "--expires-in",
            "30",
        ],
        &[],
        TOKEN,
    )
    .ok()
    .assert_no_secret(&secrets);
    // A setup-token wrapped over lines: whitespace is stripped.
    let wrapped = format!("  {}\n{}\n", &st[..40], &st[40..]);
    keygate(
        s,
        &["models", "auth", "setup-token", "--provider", "anthropic"],
        &[],
        &wrapped,
    )
    .ok()
    .assert_no_secret(&[&st]);
    keygate(
        s,
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "anthropic",
            "anthropic:work",
            "anthropic:oauth",
        ],
        &[],
        "",
    )
    .ok();

    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(profiles_file(s)).unwrap()).unwrap();
    assert_eq!(file["version"], 1);
    assert_eq!(file["custom"], json!({"keep": true}));
    let p = &file["profiles"];
    assert_eq!(
        p["openai:manual"],
        json!({"type": "api_key", "provider": "openai", "key": KEY,
        "email": "me@example.com", "x-extra": [1, 2]})
    );
    assert_eq!(p["anthropic:work"]["type"], "token");
    assert_eq!(p["anthropic:work"]["token"], TOKEN);
    let exp = p["anthropic:work"]["expires"].as_i64().unwrap();
    assert!((exp - ms_from_now(30 * 86_400_000)).abs() < 60_000, "{exp}");
    assert_eq!(
        p["anthropic:default"],
        json!({"type": "token", "provider": "anthropic", "token": st})
    );
    assert_eq!(p["anthropic:oauth"]["refresh"], REFRESH);
    assert_eq!(p["anthropic:oauth"]["accountId"], "acct");

    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(state_file(s)).unwrap()).unwrap();
    assert_eq!(
        state["order"]["anthropic"],
        json!(["anthropic:work", "anthropic:oauth"])
    );
    assert_eq!(state["lastGood"]["anthropic"], "anthropic:oauth");
    assert_eq!(state["usageStats"]["anthropic:oauth"]["lastUsed"], 5);

    // Read back through the CLI: kinds, masked secrets, expiry.
    let list = keygate(s, &["models", "auth", "list", "--json"], &[], "");
    list.ok()
        .assert_no_secret(&secrets)
        .assert_no_secret(&[&st]);
    let doc = list.json();
    assert_eq!(profile(&doc, "openai:manual")["kind"], "api_key");
    assert_eq!(profile(&doc, "openai:manual")["secret"], "…0001");
    assert_eq!(profile(&doc, "anthropic:work")["kind"], "token");
    assert_eq!(profile(&doc, "anthropic:work")["expires"], exp);
    assert_eq!(profile(&doc, "anthropic:oauth")["kind"], "oauth");
    assert_eq!(profile(&doc, "anthropic:default")["secret"], "…AAAA");
    let text = keygate(
        s,
        &["models", "auth", "list", "--provider", "anthropic"],
        &[],
        "",
    );
    text.ok()
        .assert_no_secret(&secrets)
        .assert_no_secret(&[&st]);
    assert!(text.stdout.contains("anthropic:work") && !text.stdout.contains("openai:manual"));

    let status = keygate(s, &["models", "status", "--json"], &[], "");
    status
        .ok()
        .assert_no_secret(&secrets)
        .assert_no_secret(&[&st]);
    let status_text = keygate(s, &["models", "status"], &[], "");
    status_text
        .ok()
        .assert_no_secret(&secrets)
        .assert_no_secret(&[&st]);

    // remove drops the profile and its order entries; the rest is kept.
    keygate(s, &["models", "auth", "remove", "anthropic:work"], &[], "").ok();
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(state_file(s)).unwrap()).unwrap();
    assert_eq!(state["order"]["anthropic"], json!(["anthropic:oauth"]));
    assert_eq!(state["usageStats"]["anthropic:oauth"]["lastUsed"], 5);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(profiles_file(s)).unwrap()).unwrap();
    assert!(file["profiles"].get("anthropic:work").is_none());
    let r = keygate(s, &["models", "auth", "remove", "anthropic:work"], &[], "");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "Auth profile \"anthropic:work\" not found in {}.",
            agent_dir(s).display()
        )),
        "{r:?}"
    );

    assert_private_tree(&s.join("agents"));
}

#[test]
fn secret_ref_sources_resolve_and_survive_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    let secrets_dir = s.join("secrets");
    std::fs::create_dir(&secrets_dir).unwrap();
    let json_file = secrets_dir.join("llm.json");
    write_file(
        &json_file,
        r#"{"anthropic":{"work":"sk-from-file-json-AAA1"}}"#,
        0o600,
    );
    let single = secrets_dir.join("single");
    write_file(&single, "sk-from-file-single-BBB2\n", 0o600);
    let script = secrets_dir.join("fetch.sh");
    write_file(
        &script,
        "#!/bin/sh\ncat >/dev/null\nprintf '{\"protocolVersion\":1,\"values\":{\"k\":\"sk-from-exec-%s-CCC3\"}}' \"$TEAM\"\n",
        0o700,
    );
    let config = s.join("keygate.toml");
    write_file(
        &config,
        &format!(
            "[secrets.providers.vault]\nsource = \"file\"\npath = \"{}\"\n\n\
             [secrets.providers.one]\nsource = \"file\"\npath = \"{}\"\nmode = \"single_value\"\n\n\
             [secrets.providers.op]\nsource = \"exec\"\ncommand = \"{}\"\npass_env = [\"TEAM\"]\n",
            json_file.display(),
            single.display(),
            script.display()
        ),
        0o600,
    );
    let profiles = json!({"version": 1, "profiles": {
        "openai:env": {"type": "api_key", "provider": "openai", "keyRef": {"source": "env", "provider": "default", "id": "MY_OPENAI"}},
        "openai:tpl": {"type": "api_key", "provider": "openai", "key": "${MY_TEMPLATE}"},
        "anthropic:file": {"type": "api_key", "provider": "anthropic", "keyRef": {"source": "file", "provider": "vault", "id": "/anthropic/work"}},
        "anthropic:single": {"type": "token", "provider": "anthropic", "tokenRef": {"source": "file", "provider": "one", "id": "value"}},
        "anthropic:exec": {"type": "api_key", "provider": "anthropic", "keyRef": {"source": "exec", "provider": "op", "id": "k"}}
    }});
    write_file(
        &profiles_file(s),
        &serde_json::to_string_pretty(&profiles).unwrap(),
        0o600,
    );
    let env = [
        ("MY_OPENAI", "sk-from-env-DDD4"),
        ("MY_TEMPLATE", "sk-from-template-EEE5"),
        ("TEAM", "blue"),
    ];
    let cfg = config.to_str().unwrap();
    let secrets = [
        "sk-from-file-json-AAA1",
        "sk-from-file-single-BBB2",
        "sk-from-exec-blue-CCC3",
        "sk-from-env-DDD4",
        "sk-from-template-EEE5",
    ];

    let status = keygate(
        s,
        &["--config", cfg, "models", "status", "--json", "--check"],
        &env,
        "",
    );
    status.assert_no_secret(&secrets);
    assert_eq!(status.code, 0, "{status:?}");
    let doc = status.json();
    let rows: Vec<&Value> = doc["providers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["credentials"].as_array().unwrap())
        .collect();
    let masked = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap()["secret"].clone();
    assert_eq!(masked("openai:env"), "…DDD4");
    assert_eq!(masked("openai:tpl"), "…EEE5");
    assert_eq!(masked("anthropic:file"), "…AAA1");
    assert_eq!(masked("anthropic:single"), "…BBB2");
    assert_eq!(masked("anthropic:exec"), "…CCC3");

    // A write leaves every reference as a reference (never resolved into the file).
    keygate(
        s,
        &[
            "--config",
            cfg,
            "models",
            "auth",
            "paste-api-key",
            "--provider",
            "openai",
            "--profile-id",
            "openai:new",
        ],
        &env,
        "sk-new-FFF6",
    )
    .ok()
    .assert_no_secret(&secrets);
    let after: Value =
        serde_json::from_str(&std::fs::read_to_string(profiles_file(s)).unwrap()).unwrap();
    for id in [
        "openai:env",
        "openai:tpl",
        "anthropic:file",
        "anthropic:single",
        "anthropic:exec",
    ] {
        assert_eq!(after["profiles"][id], profiles["profiles"][id], "{id}");
    }

    // Unresolvable now: group-readable file, missing variable → unresolved_ref, exit 1.
    std::fs::set_permissions(
        &json_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let status = keygate(
        s,
        &["--config", cfg, "models", "status", "--json", "--check"],
        &[("TEAM", "blue")],
        "",
    );
    assert_eq!(status.code, 1, "{status:?}");
    status.assert_no_secret(&secrets);
    let doc = status.json();
    let rows: Vec<&Value> = doc["providers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["credentials"].as_array().unwrap())
        .collect();
    for id in ["anthropic:file", "openai:env", "openai:tpl"] {
        let r = rows.iter().find(|r| r["id"] == id).unwrap();
        assert_eq!(r["reasonCode"], "unresolved_ref", "{id}: {r}");
        assert_eq!(r["secret"], Value::Null);
    }
}

fn corrupt(s: &Path) -> String {
    // Line 3, column 24: a missing value.
    let text = "{\n  \"version\": 1,\n  \"profiles\": {\"a:b\": }\n}\n".to_owned();
    write_file(&profiles_file(s), &text, 0o644);
    text
}

#[test]
fn corrupted_profiles_file_is_never_overwritten() {
    let st = setup_token();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["models", "auth", "paste-token", "--provider", "anthropic"],
            "tok-corrupt-0001".into(),
        ),
        (
            vec!["models", "auth", "paste-api-key", "--provider", "openai"],
            "key-corrupt-0002".into(),
        ),
        (
            vec!["models", "auth", "setup-token", "--provider", "anthropic"],
            st.clone(),
        ),
        (
            vec![
                "models",
                "auth",
                "order",
                "set",
                "--provider",
                "anthropic",
                "a:b",
            ],
            String::new(),
        ),
        (
            vec![
                "models",
                "auth",
                "order",
                "clear",
                "--provider",
                "anthropic",
            ],
            String::new(),
        ),
        (vec!["models", "auth", "remove", "a:b"], String::new()),
        (vec!["doctor", "--fix"], String::new()),
    ];
    for (args, stdin) in cases {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        let original = corrupt(s);
        let path = profiles_file(s);
        let r = keygate(s, &args, &[], &stdin);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        let all = r.all();
        assert!(all.contains(&path.display().to_string()), "{args:?}: {r:?}");
        assert!(all.contains("line 3, column"), "{args:?}: {r:?}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            original,
            "{args:?}"
        );
        assert_eq!(mode(&path), 0o644, "{args:?}: mode changed");
        r.assert_no_secret(&["tok-corrupt-0001", "key-corrupt-0002", &st]);
    }
}

#[test]
fn corrupted_state_file_is_never_overwritten() {
    for args in [
        vec![
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "openai",
            "openai:manual",
        ],
        vec!["models", "auth", "order", "clear", "--provider", "openai"],
        vec!["models", "auth", "remove", "openai:manual"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        keygate(
            s,
            &["models", "auth", "paste-api-key", "--provider", "openai"],
            &[],
            "k-1234567890",
        )
        .ok();
        let bad = "{\"order\": [}";
        write_file(&state_file(s), bad, 0o600);
        let r = keygate(s, &args, &[], "");
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(&state_file(s).display().to_string())
                && r.stderr.contains("line 1, column"),
            "{r:?}"
        );
        assert_eq!(std::fs::read_to_string(state_file(s)).unwrap(), bad);
    }
}

#[test]
fn order_messages_and_env_ids() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    keygate(
        s,
        &["models", "auth", "paste-api-key", "--provider", "openai"],
        &[],
        "sk-openai-key-123456",
    )
    .ok();
    let env = [(
        "ANTHROPIC_API_KEYS",
        "sk-env-one-11111111,sk-env-two-22222222",
    )];
    let d = agent_dir(s).display().to_string();

    let r = keygate(
        s,
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "anthropic",
            "anthropic:nope",
        ],
        &env,
        "",
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "Auth profile \"anthropic:nope\" not found in {d}."
        )),
        "{r:?}"
    );
    let r = keygate(
        s,
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "anthropic",
            "openai:manual",
        ],
        &env,
        "",
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("Auth profile \"openai:manual\" is for openai, not anthropic."),
        "{r:?}"
    );
    let r = keygate(
        s,
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "anthropic",
            "env:ANTHROPIC_API_KEYS#3",
        ],
        &env,
        "",
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!state_file(s).exists());

    let r = keygate(
        s,
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "anthropic",
            "env:ANTHROPIC_API_KEYS#2",
            "env:ANTHROPIC_API_KEYS#1",
        ],
        &env,
        "",
    );
    r.ok()
        .assert_no_secret(&["sk-env-one-11111111", "sk-env-two-22222222"]);
    let get = keygate(
        s,
        &[
            "models",
            "auth",
            "order",
            "get",
            "--provider",
            "anthropic",
            "--json",
        ],
        &env,
        "",
    );
    assert_eq!(
        get.ok().json()["order"],
        json!(["env:ANTHROPIC_API_KEYS#2", "env:ANTHROPIC_API_KEYS#1"])
    );
    let status = keygate(
        s,
        &["models", "status", "--provider", "anthropic", "--json"],
        &env,
        "",
    );
    status
        .ok()
        .assert_no_secret(&["sk-env-one-11111111", "sk-env-two-22222222"]);
    let rows = status.json()["providers"][0]["credentials"].clone();
    assert_eq!(rows[0]["id"], "env:ANTHROPIC_API_KEYS#2");
    assert_eq!(rows[0]["position"], 1);
    keygate(
        s,
        &[
            "models",
            "auth",
            "order",
            "clear",
            "--provider",
            "anthropic",
        ],
        &env,
        "",
    )
    .ok();
    let get = keygate(
        s,
        &[
            "models",
            "auth",
            "order",
            "get",
            "--provider",
            "anthropic",
            "--json",
        ],
        &env,
        "",
    );
    assert_eq!(get.ok().json()["order"], Value::Null);
    // The global --agent picks another agent's state.
    let r = keygate(
        s,
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "openai",
            "--agent",
            "ops",
            "env:OPENAI_API_KEY",
        ],
        &[("OPENAI_API_KEY", "sk-o-123456789")],
        "",
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(s.join("agents/ops/agent/auth-state.json").exists());
}

#[test]
fn setup_token_and_paste_validation() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    // Built at run time so no key-shaped literal sits in the repository.
    let api_key_shaped = format!("sk-ant-api03-not-a-setup-token-{}", "a".repeat(66));
    let r = keygate(
        s,
        &["models", "auth", "setup-token", "--provider", "anthropic"],
        &[],
        &api_key_shaped,
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("sk-ant-oat01-") && !r.stderr.contains("not-a-setup-token"),
        "{r:?}"
    );
    let r = keygate(
        s,
        &["models", "auth", "setup-token"],
        &[],
        "sk-ant-oat01-short",
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("at least 80"), "{r:?}");
    let r = keygate(
        s,
        &["models", "auth", "setup-token", "--provider", "openai"],
        &[],
        &setup_token(),
    );
    assert_eq!(r.code, 64, "{r:?}");
    let r = keygate(
        s,
        &["models", "auth", "paste-api-key", "--provider", "openai"],
        &[],
        "  \n",
    );
    assert_eq!(r.code, 1, "{r:?}");
    let r = keygate(
        s,
        &["models", "auth", "paste-api-key", "--provider", "nosuch"],
        &[],
        "k-123456789012",
    );
    assert_eq!(r.code, 64, "{r:?}");
    let r = keygate(
        s,
        &[
            "models",
            "auth",
            "paste-token",
            "--provider",
            "openai",
            "--expires-in",
            "soon",
        ],
        &[],
        "t-123456789012",
    );
    assert_eq!(r.code, 64, "{r:?}");
    assert!(!profiles_file(s).exists());
    for help in [
        vec!["models", "--help"],
        vec!["models", "status", "--help"],
        vec!["models", "auth", "order", "set", "--help"],
        vec!["doctor", "--help"],
    ] {
        keygate(s, &help, &[], "").ok();
    }
}

#[test]
fn concurrent_writers_never_lose_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().to_owned();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let id = format!("openai:w{w}-{i}");
                    let r = keygate(
                        &s,
                        &[
                            "models",
                            "auth",
                            "paste-api-key",
                            "--provider",
                            "openai",
                            "--profile-id",
                            &id,
                        ],
                        &[],
                        &format!("sk-concurrent-{w}-{i}-secret\n"),
                    );
                    assert_eq!(r.code, 0, "{r:?}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(profiles_file(&s)).unwrap()).unwrap();
    let profiles = doc["profiles"].as_object().unwrap();
    assert_eq!(profiles.len(), 100);
    for w in 0..2 {
        for i in 0..50 {
            assert_eq!(
                profiles[&format!("openai:w{w}-{i}")]["key"],
                format!("sk-concurrent-{w}-{i}-secret")
            );
        }
    }
    assert_eq!(mode(&profiles_file(&s)), 0o600);
    assert_private_tree(&s.join("agents"));
}
