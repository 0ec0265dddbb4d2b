//! `keygate doctor [--fix]` against the real binary.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use support::cli::*;

const OR_KEY: &str = "sk-or-legacy-key-1234567890";
const TOKEN: &str = "sk-ant-oat01-legacy-token-abcdefgh";

fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                (std::fs::read(&p).unwrap(), mode(&p)),
            );
        }
    }
    out
}

#[test]
fn fix_rewrites_legacy_flat_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    let expires = ms_from_now(30 * 86_400_000);
    let original = format!(
        "{{\n  \"openrouter\": {{ \"apiKey\": \"{OR_KEY}\", \"note\": \"dropped\" }},\n  \"anthropic\": {{ \"mode\": \"token\", \"token\": \"{TOKEN}\", \"expires\": {expires} }},\n  \"google\": {{ \"access\": \"a-acc\", \"refresh\": \"a-ref\", \"expires\": {expires} }}\n}}\n"
    );
    write_file(&profiles_file(s), &original, 0o644);
    std::fs::set_permissions(
        agent_dir(s),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let secrets = [OR_KEY, TOKEN, "a-acc", "a-ref"];

    // Without --fix: problems reported, nothing changed.
    let r = keygate(s, &["doctor"], &[], "");
    assert_eq!(r.code, 1, "{r:?}");
    r.assert_no_secret(&secrets);
    assert!(r.stdout.contains("legacy flat format"), "{r:?}");
    assert!(
        r.stdout.contains("mode 644") && r.stdout.contains("mode 755"),
        "{r:?}"
    );
    assert_eq!(std::fs::read_to_string(profiles_file(s)).unwrap(), original);
    assert_eq!(mode(&profiles_file(s)), 0o644);

    let r = keygate(s, &["doctor", "--fix"], &[], "");
    assert_eq!(r.code, 0, "{r:?}");
    r.assert_no_secret(&secrets);

    let canonical: Value =
        serde_json::from_str(&std::fs::read_to_string(profiles_file(s)).unwrap()).unwrap();
    assert_eq!(
        canonical,
        json!({"version": 1, "profiles": {
            "openrouter:default": {"type": "api_key", "provider": "openrouter", "key": OR_KEY},
            "anthropic:default": {"type": "token", "provider": "anthropic", "token": TOKEN, "expires": expires},
            "google:default": {"type": "oauth", "provider": "google", "access": "a-acc", "refresh": "a-ref", "expires": expires}
        }})
    );
    let baks: Vec<_> = std::fs::read_dir(agent_dir(s))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("auth-profiles.json.legacy-flat.") && n.ends_with(".bak")
        })
        .collect();
    assert_eq!(baks.len(), 1, "{baks:?}");
    let stamp = baks[0].file_name().unwrap().to_string_lossy().into_owned();
    let ms = stamp
        .trim_start_matches("auth-profiles.json.legacy-flat.")
        .trim_end_matches(".bak");
    assert!(
        ms.parse::<u64>().is_ok_and(|ms| ms > 1_600_000_000_000),
        "{stamp}"
    );
    assert_eq!(std::fs::read_to_string(&baks[0]).unwrap(), original);
    assert_eq!(mode(&profiles_file(s)), 0o600);
    assert_eq!(mode(&baks[0]), 0o600);
    assert_eq!(mode(&agent_dir(s)), 0o700);

    // The store now loads without the legacy warning.
    let list = keygate(s, &["models", "auth", "list", "--json"], &[], "");
    assert!(
        list.ok().json()["warnings"].as_array().unwrap().is_empty(),
        "{list:?}"
    );

    // A second --fix changes nothing.
    let before = snapshot(&agent_dir(s));
    let r = keygate(s, &["doctor", "--fix"], &[], "");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains("fixed:"), "{r:?}");
    assert_eq!(snapshot(&agent_dir(s)), before);
    let r = keygate(s, &["doctor"], &[], "");
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn reports_expiry_refs_oauth_refs_hints_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    write_file(
        &profiles_file(s),
        &json!({"version": 1, "profiles": {
            "anthropic:old": {"type": "token", "provider": "anthropic", "token": "sk-ant-oat01-expired-aaaaaaaa", "expires": ms_from_now(-3_600_000)},
            "anthropic:soon": {"type": "token", "provider": "anthropic", "token": "sk-ant-oat01-soon-bbbbbbbbbb", "expires": ms_from_now(3_600_000)},
            "openai:ref": {"type": "api_key", "provider": "openai", "keyRef": {"source": "env", "id": "UNSET_VAR"}},
            "openai:oauthref": {"type": "oauth", "provider": "openai", "access": {"source": "env", "id": "X"}, "refresh": "r-123456789", "expires": 1}
        }})
        .to_string(),
        0o600,
    );
    let env = [
        ("OPENAI_API_KEY", "sk-dup-1234567890"),
        ("OPENAI_API_KEY_2", "sk-dup-1234567890"),
    ];
    let r = keygate(s, &["doctor"], &env, "");
    assert_eq!(r.code, 1, "{r:?}");
    r.assert_no_secret(&[
        "sk-ant-oat01-expired-aaaaaaaa",
        "sk-ant-oat01-soon-bbbbbbbbbb",
        "sk-dup-1234567890",
        "r-123456789",
    ]);
    let out = &r.stdout;
    assert!(
        out.contains("\"anthropic:old\"") && out.contains("expired"),
        "{out}"
    );
    assert!(out.contains("\"anthropic:soon\" expires in"), "{out}");
    assert!(
        out.contains("\"openai:ref\" is unusable") && out.contains("UNSET_VAR"),
        "{out}"
    );
    assert!(
        out.contains("OAuth + SecretRef is not supported") && out.contains("openai:oauthref"),
        "{out}"
    );
    assert!(
        out.contains("only authorized for use with Claude Code"),
        "{out}"
    );
    assert!(
        out.contains("env:OPENAI_API_KEY_2 holds the same key as env:OPENAI_API_KEY"),
        "{out}"
    );

    // Claude Code credentials appear as anthropic:claude-cli (path from the env override).
    let cc = s.join("cc.json");
    write_file(
        &cc,
        &json!({"claudeAiOauth": {"accessToken": "sk-ant-oat01-cc-access-zzzz", "refreshToken": "cc-refresh-yyyy", "expiresAt": ms_from_now(3_600_000)}}).to_string(),
        0o600,
    );
    let cc_env = [("KEYGATE_CLAUDE_CREDENTIALS", cc.to_str().unwrap())];
    let r = keygate(s, &["doctor"], &cc_env, "");
    r.assert_no_secret(&["sk-ant-oat01-cc-access-zzzz", "cc-refresh-yyyy"]);
    assert!(r.stdout.contains("anthropic:claude-cli"), "{r:?}");
    let list = keygate(
        s,
        &["models", "status", "--provider", "anthropic", "--json"],
        &cc_env,
        "",
    );
    list.ok()
        .assert_no_secret(&["sk-ant-oat01-cc-access-zzzz", "cc-refresh-yyyy"]);
    let rows = list.json()["providers"][0]["credentials"].clone();
    let cli = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "anthropic:claude-cli")
        .unwrap()
        .clone();
    assert_eq!(cli["kind"], "oauth");
    assert_eq!(cli["managedBy"], "claude-code");
    assert_eq!(cli["secret"], "…zzzz");
    // It is never written, and cannot be removed through keygate.
    let r = keygate(
        s,
        &["models", "auth", "remove", "anthropic:claude-cli"],
        &cc_env,
        "",
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!std::fs::read_to_string(profiles_file(s))
        .unwrap()
        .contains("claude-cli"));
}
