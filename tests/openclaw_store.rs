//! keygate on state dirs the real OpenClaw wrote (issue 11, SPEC §6b): the SQLite store of
//! 2026.9.6 (live WAL, checkpointed, upgraded from 2026.5) and the JSON files of 2026.5.28.
//! Fixtures: `tests/fixtures/openclaw/` (see its README).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use support::cli::{keygate, Run};
use support::gateway::GW;
use support::keygate::{copy_tree, post_json, Keygate, Opts};
use support::mock::{Behaviour, MockProvider};

const SQLITE: &str = "sqlite-2026.9.6";
const CHECKPOINTED: &str = "sqlite-2026.9.6-checkpointed";
const UPGRADED: &str = "upgraded-2026.5.28-to-2026.9.6";
const JSON_ERA: &str = "json-2026.5.28";
const NEW_KEY: &str = "sk-ant-api03-FAKE-test-new-key-9999";

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/openclaw")
        .join(name)
}

/// A private copy of a fixture (tests never touch the committed files).
fn copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture_dir(name), dir.path());
    dir
}

fn state_db(s: &Path) -> PathBuf {
    s.join("state/openclaw.sqlite")
}

fn agent_db(s: &Path) -> PathBuf {
    support::cli::agent_dir(s).join("openclaw-agent.sqlite")
}

fn read_only(db: &Path) -> Connection {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open db");
    c.busy_timeout(Duration::from_secs(5)).expect("busy");
    c
}

/// Every row of every ordinary table, as text, keyed by table (virtual tables are read
/// through their shadow tables).
fn dump(db: &Path) -> BTreeMap<String, Vec<Vec<String>>> {
    let c = read_only(db);
    let tables: Vec<String> = c
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut st = c.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = st.column_count();
        let mut rows: Vec<Vec<String>> = st
            .query_map([], |r| {
                Ok((0..n).map(|i| cell(r.get_ref(i).unwrap())).collect())
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        out.insert(t, rows);
    }
    out
}

fn cell(v: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!("blob:{b:02x?}"),
    }
}

/// `config_machine_state` row `key` of the state DB.
fn machine_row(s: &Path, key: &str) -> Option<String> {
    read_only(&state_db(s))
        .query_row(
            "SELECT value_json FROM config_machine_state WHERE state_key = ?1",
            [key],
            |r| r.get(0),
        )
        .ok()
}

/// `auth_profile_state` row `primary` of the main agent's DB.
fn agent_state_row(s: &Path) -> Option<String> {
    read_only(&agent_db(s))
        .query_row(
            "SELECT state_json FROM auth_profile_state WHERE state_key = 'primary'",
            [],
            |r| r.get(0),
        )
        .ok()
}

/// The raw JSON text of each profile of a store document, by id.
fn raw_profiles(doc: &str) -> HashMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        profiles: HashMap<String, &'a RawValue>,
    }
    let d: Doc<'_> = serde_json::from_str(doc).expect("store document");
    d.profiles
        .into_iter()
        .map(|(k, v)| (k, v.get().to_owned()))
        .collect()
}

fn secret_of(s: &Path, id: &str) -> String {
    let doc: Value = serde_json::from_str(&machine_row(s, "authProfiles.store").unwrap()).unwrap();
    let p = &doc["profiles"][id];
    p.get("key")
        .or_else(|| p.get("token"))
        .and_then(Value::as_str)
        .unwrap()
        .to_owned()
}

/// Files anywhere under `dir` whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_ending(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out
}

/// What no command may leave in a SQLite dir: JSON auth files (OpenClaw refuses the provider
/// then) and lock files.
fn assert_no_json_store_nor_lock(s: &Path, after: &str) {
    let agent = support::cli::agent_dir(s);
    for f in ["auth-profiles.json", "auth-state.json"] {
        assert!(!agent.join(f).exists(), "{after} created {f}");
    }
    assert_eq!(files_ending(s, ".lock"), Vec::<PathBuf>::new(), "{after}");
}

fn kg(s: &Path, args: &[&str], stdin: &str) -> Run {
    keygate(s, args, &[], stdin)
}

fn list_json(s: &Path) -> Value {
    let r = kg(s, &["models", "auth", "list", "--json"], "");
    r.ok();
    r.json()
}

fn order_of(s: &Path, provider: &str) -> Value {
    let r = kg(
        s,
        &[
            "models",
            "auth",
            "order",
            "get",
            "--provider",
            provider,
            "--json",
        ],
        "",
    );
    r.ok();
    r.json()["order"].clone()
}

/// OpenClaw's own answer (`outputs/<fixture>/<file>`).
fn openclaw_output(fixture: &str, file: &str) -> Value {
    let p = fixture_dir("outputs").join(fixture).join(file);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn iso_to_ms(iso: &str) -> i64 {
    // "2027-12-02T19:09:11.930Z": civil date to days (Howard Hinnant's algorithm).
    let (date, time) = iso.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + ms.parse::<i64>().unwrap()
}

// --- reading ---------------------------------------------------------------------------

#[test]
fn every_fixture_reads_every_profile_kind_expiry_and_order_as_openclaw_does() {
    for fixture in [SQLITE, CHECKPOINTED, UPGRADED, JSON_ERA] {
        let dir = copy(fixture);
        let s = dir.path();
        let ours = list_json(s);
        let outputs = if fixture == CHECKPOINTED {
            SQLITE
        } else {
            fixture
        };
        let theirs = openclaw_output(outputs, "models-auth-list.json");
        let mut want: Vec<(String, String, Option<i64>)> = theirs["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_owned(),
                    p["type"].as_str().unwrap().to_owned(),
                    p["expiresAt"].as_str().map(iso_to_ms),
                )
            })
            .collect();
        let mut got: Vec<(String, String, Option<i64>)> = ours["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_owned(),
                    p["kind"].as_str().unwrap().to_owned(),
                    p["expires"].as_i64(),
                )
            })
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{fixture}: {ours}");
        assert!(
            got.len() >= 4 && got.iter().any(|(_, k, e)| k == "token" && e.is_some()),
            "{fixture}"
        );
        for provider in ["anthropic", "openai"] {
            let theirs = openclaw_output(outputs, &format!("order-{provider}.json"));
            assert_eq!(
                order_of(s, provider),
                theirs["order"],
                "{fixture} {provider}"
            );
        }
        if fixture != JSON_ERA {
            assert_no_json_store_nor_lock(s, "reading");
        }
    }
}

#[test]
fn the_wal_only_profile_is_read_from_the_live_fixture() {
    // anthropic:spare exists only in the -wal file of the live fixture.
    let dir = copy(SQLITE);
    let ids: Vec<String> = list_json(dir.path())["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&"anthropic:spare".to_owned()), "{ids:?}");
}

#[test]
fn status_check_passes_and_doctor_names_the_store_and_version() {
    for (fixture, store) in [
        (SQLITE, "OpenClaw SQLite"),
        (UPGRADED, "OpenClaw SQLite"),
        (JSON_ERA, "JSON"),
    ] {
        let dir = copy(fixture);
        let s = dir.path();
        let check = kg(s, &["models", "status", "--check"], "");
        assert_eq!(check.code, 0, "{fixture}: {check:?}");
        let doc = kg(s, &["doctor"], "");
        assert!(doc.stdout.contains(store), "{fixture}: {doc:?}");
        if fixture != JSON_ERA {
            assert!(doc.stdout.contains("2026.9.6"), "{fixture}: {doc:?}");
        }
        doc.assert_no_secret(&["FAKE-work-1234", "FAKE.setup.token.for.keygate"]);
    }
}

#[tokio::test]
async fn serve_uses_the_sqlite_store_in_openclaws_order() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::status(200, r#"{"type":"message"}"#));
    let kg = Keygate::start(
        Opts::gateway(&mock.url(), &["anthropic", "openai"]).copy_of(fixture_dir(SQLITE)),
    )
    .await;
    let s = kg.state_path();
    let a = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW)],
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 1}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("x-keygate-credential"),
        Some("anthropic:setup-token")
    );
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.key.as_deref(),
        Some(secret_of(&s, "anthropic:setup-token").as_str())
    );
    assert!(seen.headers.get("x-api-key").is_none_or(|v| v != GW));

    // A pin to the WAL-only profile works too.
    let b = post_json(
        &kg.url("/anthropic/v1/messages"),
        &[("x-api-key", GW), ("x-keygate-profile", "anthropic:spare")],
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 1}),
    )
    .await;
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(
        mock.last_request().unwrap().key.as_deref(),
        Some(secret_of(&s, "anthropic:spare").as_str())
    );

    let c = post_json(
        &kg.url("/openai/v1/chat/completions"),
        &[("authorization", &format!("Bearer {GW}"))],
        &json!({"model": "gpt-5", "messages": []}),
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(c.header("x-keygate-credential"), Some("openai:default"));
    assert_no_json_store_nor_lock(&s, "serve");
    kg.stop().await;
}

#[tokio::test]
async fn hot_reload_serves_a_change_made_by_another_connection() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::status(200, r#"{"type":"message"}"#));
    let kg =
        Keygate::start(Opts::gateway(&mock.url(), &["anthropic"]).copy_of(fixture_dir(SQLITE)))
            .await;
    let s = kg.state_path();
    let ask = || async {
        post_json(
            &kg.url("/anthropic/v1/messages"),
            &[("x-api-key", GW)],
            &json!({"model": "claude-sonnet-4-5", "max_tokens": 1}),
        )
        .await
    };
    assert_eq!(
        ask().await.header("x-keygate-credential"),
        Some("anthropic:setup-token")
    );
    // OpenClaw (another process, here another connection) changes the order.
    let c = Connection::open(agent_db(&s)).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute(
        "UPDATE auth_profile_state SET state_json = ?1 WHERE state_key = 'primary'",
        [r#"{"version":1,"order":{"anthropic":["anthropic:personal","anthropic:work"]}}"#],
    )
    .unwrap();
    drop(c);
    let mut served = None;
    for _ in 0..100 {
        served = ask()
            .await
            .header("x-keygate-credential")
            .map(str::to_owned);
        if served.as_deref() == Some("anthropic:personal") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served.as_deref(), Some("anthropic:personal"));
    kg.stop().await;
}

// --- writing ---------------------------------------------------------------------------

/// Runs `args` on a copy of the SQLite fixture and checks that exactly the rows `changed`
/// (table, key) differ, in either database; returns the dir for further checks.
fn write_case(args: &[&str], stdin: &str, changed: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = copy(SQLITE);
    let s = dir.path();
    let before = (dump(&state_db(s)), dump(&agent_db(s)));
    let r = kg(s, args, stdin);
    r.ok().assert_no_secret(&[NEW_KEY, "FAKE-work-1234"]);
    let after = (dump(&state_db(s)), dump(&agent_db(s)));
    for (which, b, a) in [
        ("state", &before.0, &after.0),
        ("agent", &before.1, &after.1),
    ] {
        assert_eq!(
            b.keys().collect::<Vec<_>>(),
            a.keys().collect::<Vec<_>>(),
            "{args:?}: tables"
        );
        for (table, rows) in b {
            let keep = |rs: &Vec<Vec<String>>| -> Vec<Vec<String>> {
                rs.iter()
                    .filter(|row| {
                        !changed
                            .iter()
                            .any(|(t, k)| *t == table && row.first().is_some_and(|c| c == k))
                    })
                    .cloned()
                    .collect()
            };
            assert_eq!(
                keep(rows),
                keep(&a[table]),
                "{args:?}: {which} db, table {table}"
            );
        }
    }
    assert_no_json_store_nor_lock(s, &format!("{args:?}"));
    dir
}

/// The profiles that `except` does not name are byte-identical in both documents, in the
/// same order.
fn assert_other_profiles_untouched(before: &str, after: &str, except: &[&str]) {
    let (b, a) = (raw_profiles(before), raw_profiles(after));
    for (id, raw) in &b {
        if !except.contains(&id.as_str()) {
            assert_eq!(a.get(id), Some(raw), "{id}");
        }
    }
    let order = |doc: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(doc).unwrap();
        v["profiles"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !except.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    assert_eq!(order(before), order(after));
}

fn fixture_store() -> String {
    let dir = copy(SQLITE);
    machine_row(dir.path(), "authProfiles.store").unwrap()
}

#[test]
fn paste_api_key_adds_one_profile_to_the_shared_row_and_auth_profiles() {
    let dir = write_case(
        &[
            "models",
            "auth",
            "paste-api-key",
            "--provider",
            "anthropic",
            "--profile-id",
            "anthropic:new",
        ],
        NEW_KEY,
        &[("config_machine_state", "authProfiles.store")],
    );
    let s = dir.path();
    let after = machine_row(s, "authProfiles.store").unwrap();
    let before = fixture_store();
    assert_other_profiles_untouched(&before, &after, &["anthropic:new"]);
    // Appended, shaped as OpenClaw writes one (compact JSON, type/provider/key).
    assert_eq!(
        raw_profiles(&after)["anthropic:new"],
        format!(r#"{{"type":"api_key","provider":"anthropic","key":"{NEW_KEY}"}}"#)
    );
    assert!(after.ends_with(&format!(
        r#""anthropic:new":{{"type":"api_key","provider":"anthropic","key":"{NEW_KEY}"}}}}}}"#
    )));
    assert!(!after.contains('\n'));
    // openclaw.json lists anthropic profiles, so the new one is listed too; nothing else
    // changed, in OpenClaw's layout.
    let text = std::fs::read_to_string(s.join("openclaw.json")).unwrap();
    let original = std::fs::read_to_string(fixture_dir(SQLITE).join("openclaw.json")).unwrap();
    let mut want: Value = serde_json::from_str(&original).unwrap();
    want["auth"]["profiles"]["anthropic:new"] = json!({"provider": "anthropic", "mode": "api_key"});
    assert_eq!(text, serde_json::to_string_pretty(&want).unwrap() + "\n");
    // The new profile is listed; the agent's order (which omits it) still decides.
    let ids = list_json(s)["profiles"].to_string();
    assert!(ids.contains("anthropic:new"));
}

#[test]
fn openclaw_json_as_openclaw_wrote_it_is_what_keygate_would_write() {
    // The precondition for "byte-for-byte": re-serialising OpenClaw's file changes nothing.
    for fixture in [SQLITE, JSON_ERA, UPGRADED] {
        let text = std::fs::read_to_string(fixture_dir(fixture).join("openclaw.json")).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_string_pretty(&v).unwrap() + "\n",
            text,
            "{fixture}"
        );
    }
}

#[test]
fn paste_api_key_over_an_existing_profile_changes_only_its_key() {
    let dir = write_case(
        &[
            "models",
            "auth",
            "paste-api-key",
            "--provider",
            "anthropic",
            "--profile-id",
            "anthropic:work",
        ],
        NEW_KEY,
        &[("config_machine_state", "authProfiles.store")],
    );
    let s = dir.path();
    let after = machine_row(s, "authProfiles.store").unwrap();
    assert_other_profiles_untouched(&fixture_store(), &after, &["anthropic:work"]);
    assert_eq!(
        raw_profiles(&after)["anthropic:work"],
        format!(r#"{{"type":"api_key","provider":"anthropic","key":"{NEW_KEY}"}}"#)
    );
    // Same place in the document.
    let v: Value = serde_json::from_str(&after).unwrap();
    assert_eq!(
        v["profiles"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .map(String::as_str),
        Some("anthropic:work")
    );
    // openclaw.json already lists it with the same mode: untouched.
    assert_eq!(
        std::fs::read(s.join("openclaw.json")).unwrap(),
        std::fs::read(fixture_dir(SQLITE).join("openclaw.json")).unwrap()
    );
}

#[test]
fn paste_token_and_setup_token_write_token_profiles_with_expiry() {
    let token = format!("sk-ant-oat01-FAKE-KEYGATE-TEST-{}", "x".repeat(80));
    let dir = write_case(
        &[
            "models",
            "auth",
            "paste-token",
            "--provider",
            "anthropic",
            "--profile-id",
            "anthropic:tok",
            "--expires-in",
            "30d",
        ],
        &token,
        &[("config_machine_state", "authProfiles.store")],
    );
    let after = machine_row(dir.path(), "authProfiles.store").unwrap();
    assert_other_profiles_untouched(&fixture_store(), &after, &["anthropic:tok"]);
    let v: Value = serde_json::from_str(&raw_profiles(&after)["anthropic:tok"]).unwrap();
    assert_eq!(v["type"], "token");
    assert_eq!(v["token"], token.as_str());
    let expires = v["expires"].as_i64().unwrap();
    let in_30d = support::cli::ms_from_now(30 * 86_400_000);
    assert!((expires - in_30d).abs() < 600_000, "{v}");

    let dir = write_case(
        &[
            "models",
            "auth",
            "setup-token",
            "--profile-id",
            "anthropic:st",
        ],
        &token,
        &[("config_machine_state", "authProfiles.store")],
    );
    let after = machine_row(dir.path(), "authProfiles.store").unwrap();
    assert_other_profiles_untouched(&fixture_store(), &after, &["anthropic:st"]);
    let v: Value = serde_json::from_str(&raw_profiles(&after)["anthropic:st"]).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["provider"].as_str()),
        (Some("token"), Some("anthropic"))
    );
}

#[test]
fn order_set_and_clear_change_only_the_agent_state_row() {
    let dir = write_case(
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "anthropic",
            "anthropic:work",
            "anthropic:spare",
        ],
        "",
        &[("auth_profile_state", "primary")],
    );
    let s = dir.path();
    assert_eq!(
        agent_state_row(s).unwrap(),
        r#"{"version":1,"order":{"anthropic":["anthropic:work","anthropic:spare"],"openai":["openai:default"]}}"#
    );
    assert_eq!(
        order_of(s, "anthropic"),
        json!(["anthropic:work", "anthropic:spare"])
    );

    let dir = write_case(
        &["models", "auth", "order", "clear", "--provider", "openai"],
        "",
        &[("auth_profile_state", "primary")],
    );
    assert_eq!(
        agent_state_row(dir.path()).unwrap(),
        r#"{"version":1,"order":{"anthropic":["anthropic:setup-token","anthropic:work","anthropic:personal"]}}"#
    );
}

#[test]
fn order_set_in_an_upgraded_dir_creates_no_json_and_is_read_back() {
    // The upgraded dir keeps its order in config_machine_state authProfiles.state and has no
    // agent DB.
    let dir = copy(UPGRADED);
    let s = dir.path();
    kg(
        s,
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "anthropic",
            "anthropic:personal",
        ],
        "",
    )
    .ok();
    assert_eq!(order_of(s, "anthropic"), json!(["anthropic:personal"]));
    assert_eq!(order_of(s, "openai"), json!(["openai:default"]));
    assert_no_json_store_nor_lock(s, "order set (upgraded)");
}

#[test]
fn remove_drops_the_profile_its_order_entries_and_its_openclaw_json_entries() {
    let dir = write_case(
        &["models", "auth", "remove", "anthropic:personal"],
        "",
        &[
            ("config_machine_state", "authProfiles.store"),
            ("auth_profile_state", "primary"),
        ],
    );
    let s = dir.path();
    let after = machine_row(s, "authProfiles.store").unwrap();
    assert!(!after.contains("anthropic:personal"));
    assert_other_profiles_untouched(&fixture_store(), &after, &["anthropic:personal"]);
    assert_eq!(
        agent_state_row(s).unwrap(),
        r#"{"version":1,"order":{"anthropic":["anthropic:setup-token","anthropic:work"],"openai":["openai:default"]}}"#
    );
    let text = std::fs::read_to_string(s.join("openclaw.json")).unwrap();
    let original = std::fs::read_to_string(fixture_dir(SQLITE).join("openclaw.json")).unwrap();
    let mut want: Value = serde_json::from_str(&original).unwrap();
    want["auth"]["profiles"]
        .as_object_mut()
        .unwrap()
        .shift_remove("anthropic:personal");
    want["auth"]["order"]["anthropic"] =
        json!(["anthropic:spare", "anthropic:setup-token", "anthropic:work"]);
    assert_eq!(text, serde_json::to_string_pretty(&want).unwrap() + "\n");
}

#[test]
fn doctor_fix_imports_a_leftover_auth_profiles_json_into_the_database() {
    let dir = copy(SQLITE);
    let s = dir.path();
    let leftover = format!(
        r#"{{"version":1,"profiles":{{"anthropic:kg":{{"type":"api_key","provider":"anthropic","key":"{NEW_KEY}"}}}}}}"#
    );
    support::cli::write_file(&support::cli::profiles_file(s), &leftover, 0o600);
    let before_agent = dump(&agent_db(s));

    let doc = kg(s, &["doctor"], "");
    assert_ne!(doc.code, 0, "{doc:?}");
    assert!(
        doc.all().contains("AUTH_PROFILE_MIGRATION_REQUIRED"),
        "{doc:?}"
    );
    doc.assert_no_secret(&[NEW_KEY]);

    let fix = kg(s, &["doctor", "--fix"], "");
    fix.ok().assert_no_secret(&[NEW_KEY]);
    let after = machine_row(s, "authProfiles.store").unwrap();
    assert_other_profiles_untouched(&fixture_store(), &after, &["anthropic:kg"]);
    assert_eq!(
        raw_profiles(&after)["anthropic:kg"],
        format!(r#"{{"type":"api_key","provider":"anthropic","key":"{NEW_KEY}"}}"#)
    );
    assert!(!support::cli::profiles_file(s).exists());
    let archived = files_ending(&support::cli::agent_dir(s), ".bak");
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(dump(&agent_db(s)), before_agent);
    assert_no_json_store_nor_lock(s, "doctor --fix");
    let again = kg(s, &["doctor"], "");
    assert!(
        !again.all().contains("AUTH_PROFILE_MIGRATION_REQUIRED"),
        "{again:?}"
    );
}

// --- concurrency -----------------------------------------------------------------------

#[test]
fn a_write_waits_for_another_writer_and_loses_no_update() {
    let dir = copy(SQLITE);
    let s = dir.path().to_owned();
    // "OpenClaw" holds a write transaction and adds a profile in it.
    let mut c = Connection::open(state_db(&s)).unwrap();
    let tx = c
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let doc: String = tx
        .query_row(
            "SELECT value_json FROM config_machine_state WHERE state_key = 'authProfiles.store'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut v: Value = serde_json::from_str(&doc).unwrap();
    v["profiles"]["anthropic:other"] =
        json!({"type": "api_key", "provider": "anthropic", "key": "sk-ant-api03-OTHER-writer-0"});
    tx.execute(
        "UPDATE config_machine_state SET value_json = ?1 WHERE state_key = 'authProfiles.store'",
        [v.to_string()],
    )
    .unwrap();

    let mut child = support::cli::command(
        &s,
        &[
            "models",
            "auth",
            "paste-api-key",
            "--provider",
            "anthropic",
            "--profile-id",
            "anthropic:new",
        ],
        &[],
    )
    .spawn()
    .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(NEW_KEY.as_bytes())
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "keygate did not wait for the writer"
    );
    tx.commit().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let after = machine_row(&s, "authProfiles.store").unwrap();
    let ids = raw_profiles(&after);
    assert!(
        ids.contains_key("anthropic:other") && ids.contains_key("anthropic:new"),
        "{after}"
    );
    assert_eq!(ids.len(), 7);
}

#[test]
fn a_newer_schema_than_keygate_knows_is_never_written() {
    let dir = copy(CHECKPOINTED);
    let s = dir.path();
    let c = Connection::open(state_db(s)).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let before = dump(&state_db(s));
    let r = kg(
        s,
        &["models", "auth", "paste-api-key", "--provider", "anthropic"],
        NEW_KEY,
    );
    assert_ne!(r.code, 0, "{r:?}");
    r.assert_no_secret(&[NEW_KEY]);
    assert_eq!(dump(&state_db(s)), before);
}

#[test]
fn the_json_era_fixture_is_written_as_json_with_no_lock_left() {
    let dir = copy(JSON_ERA);
    let s = dir.path();
    kg(
        s,
        &[
            "models",
            "auth",
            "paste-api-key",
            "--provider",
            "anthropic",
            "--profile-id",
            "anthropic:new",
        ],
        NEW_KEY,
    )
    .ok();
    kg(
        s,
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "anthropic",
            "anthropic:new",
        ],
        "",
    )
    .ok();
    kg(s, &["models", "auth", "remove", "anthropic:personal"], "").ok();
    assert!(!state_db(s).exists() && !agent_db(s).exists());
    assert_eq!(files_ending(s, ".lock"), Vec::<PathBuf>::new());
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(support::cli::profiles_file(s)).unwrap())
            .unwrap();
    assert!(file["profiles"].get("anthropic:new").is_some());
    assert!(file["profiles"].get("anthropic:personal").is_none());
    assert_eq!(order_of(s, "anthropic"), json!(["anthropic:new"]));
}

// --- openclaw.json ---------------------------------------------------------------------

const THREE: &str = r#"{"version":1,"profiles":{
  "anthropic:a":{"type":"api_key","provider":"anthropic","key":"sk-ant-api03-TEST-a-00000000000001"},
  "anthropic:b":{"type":"api_key","provider":"anthropic","key":"sk-ant-api03-TEST-b-00000000000002"},
  "anthropic:c":{"type":"token","provider":"anthropic","token":"sk-ant-oat01-TEST-c-00000000000003"}}}"#;

/// (id, position, reasonCode) of the anthropic rows of `models status --json`.
fn rows(s: &Path) -> Vec<(String, Option<u64>, Option<String>)> {
    let r = kg(
        s,
        &["models", "status", "--json", "--provider", "anthropic"],
        "",
    );
    let v = r.json();
    let mut out: Vec<_> = v["providers"][0]["credentials"]
        .as_array()
        .unwrap_or_else(|| panic!("{r:?}"))
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["position"].as_u64(),
                c["reasonCode"].as_str().map(str::to_owned),
            )
        })
        .collect();
    out.sort();
    out
}

fn row(id: &str, pos: Option<u64>, code: Option<&str>) -> (String, Option<u64>, Option<String>) {
    (id.to_owned(), pos, code.map(str::to_owned))
}

#[tokio::test]
async fn openclaw_json_order_profiles_and_modes_decide_as_in_openclaw() {
    let mock = MockProvider::start().await;
    mock.set_default(Behaviour::status(200, r#"{"type":"message"}"#));
    let restricted = r#"{ "auth": { "profiles": {
        "anthropic:a": { "provider": "anthropic", "mode": "api_key" },
        "anthropic:c": { "provider": "anthropic", "mode": "api_key" } } } }"#;
    let kg_ = Keygate::start(
        Opts::gateway(&mock.url(), &["anthropic"])
            .profiles(THREE)
            .file("openclaw.json", restricted),
    )
    .await;
    let s = kg_.state_path();
    // auth.profiles lists anthropic profiles: the unlisted b is no candidate, and c (a token
    // configured as api_key) is a mode mismatch.
    assert_eq!(
        rows(&s),
        vec![
            row("anthropic:a", Some(1), None),
            row("anthropic:b", None, Some("excluded_by_auth_profiles")),
            row("anthropic:c", None, Some("mode_mismatch")),
        ]
    );
    let ask = |pin: Option<&'static str>| {
        let url = kg_.url("/anthropic/v1/messages");
        async move {
            let mut h = vec![("x-api-key", GW)];
            if let Some(p) = pin {
                h.push(("x-keygate-profile", p));
            }
            post_json(&url, &h, &json!({"model": "claude", "max_tokens": 1})).await
        }
    };
    let a = ask(None).await;
    assert_eq!(
        a.header("x-keygate-credential"),
        Some("anthropic:a"),
        "{}",
        a.text()
    );
    assert_eq!(ask(Some("anthropic:c")).await.status, 400);

    // auth.order decides once present (b is in it, and has no auth.profiles entry to fail).
    let ordered = r#"{ "auth": { "profiles": {
        "anthropic:a": { "provider": "anthropic", "mode": "api_key" },
        "anthropic:c": { "provider": "anthropic", "mode": "api_key" } },
      "order": { "anthropic": ["anthropic:b", "anthropic:a"] } } }"#;
    std::fs::write(s.join("openclaw.json"), ordered).unwrap();
    let status = kg(&s, &["models", "status"], "");
    assert!(
        status.stdout.contains("order from openclaw.json"),
        "{status:?}"
    );
    assert_eq!(
        rows(&s),
        vec![
            row("anthropic:a", Some(2), None),
            row("anthropic:b", Some(1), None),
            row("anthropic:c", None, Some("mode_mismatch")),
        ]
    );
    let mut served = None;
    for _ in 0..50 {
        served = ask(None)
            .await
            .header("x-keygate-credential")
            .map(str::to_owned);
        if served.as_deref() == Some("anthropic:b") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served.as_deref(),
        Some("anthropic:b"),
        "openclaw.json change not served"
    );

    // The agent's own order wins over openclaw.json.
    kg(
        &s,
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "anthropic",
            "anthropic:a",
        ],
        "",
    )
    .ok();
    assert_eq!(
        rows(&s),
        vec![
            row("anthropic:a", Some(1), None),
            row("anthropic:b", None, Some("excluded_by_auth_order")),
            row("anthropic:c", None, Some("mode_mismatch")),
        ]
    );
    kg_.stop().await;
}

#[test]
fn a_broken_openclaw_json_is_a_warning_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    support::cli::write_file(&support::cli::profiles_file(s), THREE, 0o600);
    support::cli::write_file(
        &s.join("openclaw.json"),
        r#"{ "auth": { "order": { "anthropic": ["sk-ant-api03-LEAKED-0000" "#,
        0o600,
    );
    let r = kg(s, &["models", "status"], "");
    r.ok().assert_no_secret(&["LEAKED"]);
    assert!(r.all().contains("openclaw.json does not parse"), "{r:?}");
}

#[test]
fn remove_of_a_profile_in_both_the_agent_row_and_the_shared_row_removes_both() {
    let dir = copy(SQLITE);
    let s = dir.path();
    let c = Connection::open(agent_db(s)).unwrap();
    c.execute(
        "UPDATE auth_profile_store SET store_json = ?1 WHERE store_key = 'primary'",
        [r#"{"version":1,"profiles":{"anthropic:work":{"type":"api_key","provider":"anthropic","key":"sk-ant-api03-AGENT-OWN-0000"}}}"#],
    )
    .unwrap();
    drop(c);
    kg(s, &["models", "auth", "remove", "anthropic:work"], "").ok();
    let listed = list_json(s)["profiles"].to_string();
    assert!(!listed.contains("anthropic:work"), "{listed}");
    assert!(!machine_row(s, "authProfiles.store")
        .unwrap()
        .contains("anthropic:work"));
}

#[test]
fn an_expired_unlisted_token_is_excluded_in_status_as_in_serve() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    let expired = support::cli::ms_from_now(-3_600_000);
    support::cli::write_file(
        &support::cli::profiles_file(s),
        &json!({"version": 1, "profiles": {
            "anthropic:a": {"type": "api_key", "provider": "anthropic", "key": "sk-ant-api03-TEST-a-0001"},
            "anthropic:old": {"type": "token", "provider": "anthropic", "token": "sk-ant-oat01-TEST-old-0002", "expires": expired}}})
        .to_string(),
        0o600,
    );
    support::cli::write_file(
        &s.join("openclaw.json"),
        r#"{"auth":{"profiles":{"anthropic:a":{"provider":"anthropic","mode":"api_key"}}}}"#,
        0o600,
    );
    assert_eq!(
        rows(s),
        vec![
            row("anthropic:a", Some(1), None),
            row("anthropic:old", None, Some("excluded_by_auth_profiles")),
        ]
    );
    assert_eq!(kg(s, &["models", "status", "--check"], "").code, 0);
}

#[test]
fn a_write_waits_for_the_import_while_a_leftover_file_is_what_is_served() {
    let dir = copy(SQLITE);
    let s = dir.path();
    let c = Connection::open(state_db(s)).unwrap();
    c.execute(
        "UPDATE config_machine_state SET value_json = '{\"version\":1,\"profiles\":{}}' WHERE state_key = 'authProfiles.store'",
        [],
    )
    .unwrap();
    drop(c);
    let leftover = r#"{"version":1,"profiles":{"anthropic:old":{"type":"api_key","provider":"anthropic","key":"sk-ant-api03-LEFTOVER-0001"}}}"#;
    support::cli::write_file(&support::cli::profiles_file(s), leftover, 0o600);
    // Served from the file meanwhile.
    assert!(list_json(s)["profiles"]
        .to_string()
        .contains("anthropic:old"));
    let args = [
        "models",
        "auth",
        "paste-api-key",
        "--provider",
        "anthropic",
        "--profile-id",
        "anthropic:new",
    ];
    let r = kg(s, &args, NEW_KEY);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("doctor --fix"), "{r:?}");
    r.assert_no_secret(&[NEW_KEY, "LEFTOVER-0001"]);
    assert_eq!(
        machine_row(s, "authProfiles.store").unwrap(),
        r#"{"version":1,"profiles":{}}"#
    );
    kg(s, &["doctor", "--fix"], "").ok();
    kg(s, &args, NEW_KEY).ok();
    let ids = raw_profiles(&machine_row(s, "authProfiles.store").unwrap());
    assert!(
        ids.contains_key("anthropic:old") && ids.contains_key("anthropic:new"),
        "{ids:?}"
    );
}
