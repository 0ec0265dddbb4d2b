//! Files, state directories and config errors (issue 10, items 10, 11, 16, 17, 19, 20, 21):
//! the real binary in tempdirs.

mod support;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::cli::{agent_dir, keygate, mode, profiles_file, state_file, write_file, Run};

/// `keygate serve` on a free port, its stderr collected.
struct Served {
    child: std::process::Child,
    log: Arc<Mutex<String>>,
}

impl Served {
    fn start(state: &Path, extra: &[&str]) -> Served {
        let addr = support::cli::free_addr();
        let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        args.extend(["serve".into(), "--listen".into(), addr.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = support::cli::command(state, &args, &[])
            .spawn()
            .expect("spawn keygate serve");
        let log = support::cli::collect_lines(child.stderr.take().expect("stderr"));
        Served { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded, 10 s) until `pred` holds for the log.
    fn wait_for(&self, pred: impl Fn(&str) -> bool) -> bool {
        for _ in 0..200 {
            if pred(&self.log()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn hangup(&self) {
        support::cli::signal(&self.child, "-HUP");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `keygate serve` that is expected to exit by itself (bounded wait).
fn serve_exits(state: &Path, extra: &[&str]) -> Run {
    let s = Served::start(state, extra);
    let mut s = s;
    for _ in 0..200 {
        if let Some(st) = s.child.try_wait().expect("wait") {
            // Let the reader thread drain stderr.
            std::thread::sleep(Duration::from_millis(100));
            return Run {
                code: st.code().unwrap_or(-1),
                stdout: String::new(),
                stderr: s.log(),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("serve did not exit: {}", s.log());
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

// === item 21 ===

#[test]
fn a_config_file_that_does_not_exist_is_an_error_naming_it() {
    let state = tempfile::tempdir().expect("tmp");
    let missing = state.path().join("nope").join("keygate.toml");
    let m = missing.to_str().expect("utf-8");
    for args in [
        vec!["--config", m, "config", "check"],
        vec!["--config", m, "models", "status"],
    ] {
        let r = keygate(state.path(), &args, &[], "");
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stderr.contains(m), "{args:?}: {r:?}");
        assert!(r.stderr.contains("does not exist"), "{args:?}: {r:?}");
    }
    let r = serve_exits(state.path(), &["--config", m]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(m), "{r:?}");
}

// === item 10 ===

#[test]
fn toml_errors_name_the_key_and_line_never_the_value() {
    let state = tempfile::tempdir().expect("tmp");
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "[server]\nlisten = \"127.0.0.1:1\"\n\n[gateway.auth]\ntokens = [{ token = \"sk-live-SECRET-toml-0001\" }]\n",
            "sk-live-SECRET-toml-0001",
            "line 5",
            &["gateway.auth.tokens", "token"],
        ),
        (
            "[rotation]\nmax_attempts = \"sk-live-SECRET-toml-0002\"\n",
            "sk-live-SECRET-toml-0002",
            "line 2",
            &["rotation.max_attempts"],
        ),
        (
            "[admin]\ntoken_env = \"ADMIN\"\ntoken = \"sk-live-SECRET-toml-0003\"\n",
            "sk-live-SECRET-toml-0003",
            "line 3",
            &["admin.token"],
        ),
        (
            "[gateway.auth]\npassword_env = \"sk-live-SECRET-toml-0004\n",
            "sk-live-SECRET-toml-0004",
            "line 2",
            &["gateway.auth"],
        ),
        (
            "[gateway.auth]\ntokens = \"sk-live-SECRET-toml-0005\"\n",
            "sk-live-SECRET-toml-0005",
            "line 2",
            &["gateway.auth.tokens"],
        ),
        (
            "[providers.openai]\nauth = { header = \"x\", secret = \"sk-live-SECRET-toml-0006\" }\n",
            "sk-live-SECRET-toml-0006",
            "line 2",
            &["providers.openai.auth"],
        ),
        // A secret where a variable name or a path belongs (validation, not parsing).
        (
            "[gateway.auth]\nmode = \"token\"\ntokens = [{ token_env = \"sk-live-SECRET-toml-0007\" }]\n",
            "sk-live-SECRET-toml-0007",
            "line 3",
            &["token_env", "not an environment variable name"],
        ),
        (
            "[admin]\ntoken_file = \"sk-live-SECRET-toml-0008\"\n",
            "sk-live-SECRET-toml-0008",
            "line 2",
            &["admin.token_file"],
        ),
    ];
    for (text, secret, line, keys) in cases {
        let cfg = state.path().join("bad.toml");
        std::fs::write(&cfg, text).expect("write");
        let c = cfg.to_str().expect("utf-8");
        let r = keygate(state.path(), &["--config", c, "config", "check"], &[], "");
        assert_eq!(r.code, 64, "{text}: {r:?}");
        r.assert_no_secret(&[secret, &secret[8..20]]);
        assert!(r.stderr.contains(line), "{text}: {r:?}");
        assert!(r.stderr.contains(c), "{text}: {r:?}");
        for k in *keys {
            assert!(r.stderr.contains(k), "{text}: wants {k}: {r:?}");
        }
        let s = serve_exits(state.path(), &["--config", c]);
        assert_eq!(s.code, 64, "{s:?}");
        assert!(!s.stderr.contains(&secret[8..20]), "{s:?}");
        assert!(s.stderr.contains(line), "{s:?}");
    }
}

// === item 11 ===

#[test]
fn values_from_state_files_are_never_echoed_in_warnings() {
    let state = tempfile::tempdir().expect("tmp");
    let s = state.path();
    let secrets = [
        "sk-live-SECRET-ver-0001",
        "sk-live-SECRET-prov-0003",
        "sk-live-SECRET-state-0004",
        "sk-live-SECRET-ord-0005",
        "sk-live-SECRET-oid-0006",
        "sklivesecretty",
        "sk-live-SECRET-oid2-0007",
    ];
    write_file(
        &profiles_file(s),
        r#"{"version":"sk-live-SECRET-ver-0001","profiles":{
          "anthropic:typed":{"type":"sklivesecretty","provider":"anthropic","key":"sk-ant-api03-aaaaaaaaaaaaaaaa"},
          "anthropic:prov":{"type":"api_key","provider":"sk-live-SECRET-prov-0003","key":"sk-ant-api03-bbbbbbbbbbbbbbbb"},
          "anthropic:ok":{"type":"api_key","provider":"anthropic","key":"sk-ant-api03-cccccccccccccccc"}}}"#,
        0o600,
    );
    write_file(
        &state_file(s),
        r#"{"version":"sk-live-SECRET-state-0004","order":{
          "sk-live-SECRET-ord-0005":"x",
          "anthropic":["anthropic:ok","sk-live-SECRET-oid-0006"],
          "openai":{"a":"sk-live-SECRET-oid2-0007"}}}"#,
        0o600,
    );
    for args in [
        vec!["models", "status"],
        vec!["models", "status", "--json"],
        vec!["models", "auth", "list"],
        vec!["doctor"],
    ] {
        let r = keygate(s, &args, &[], "");
        r.assert_no_secret(&secrets);
        assert!(r.all().contains("version"), "{args:?}: {r:?}");
        assert!(r.all().contains("anthropic:typed"), "{args:?}: {r:?}");
        assert!(r.all().contains("anthropic:prov"), "{args:?}: {r:?}");
    }
    let kg = Served::start(s, &[]);
    assert!(
        kg.wait_for(|l| l.contains("anthropic:prov")),
        "{}",
        kg.log()
    );
    for x in secrets {
        assert!(!kg.log().contains(x), "{x} in {}", kg.log());
    }
}

// === item 19 ===

const BAD_ENTRIES: &str = r#"{"version":1,"profiles":{
  "anthropic:notobj": 5,
  "anthropic:weird": {"type":"weird","provider":"anthropic","key":"sk-ant-api03-dddddddddddddddd"},
  "anthropic:noprov": {"type":"api_key","key":"sk-ant-api03-eeeeeeeeeeeeeeee"},
  "anthropic:ok": {"type":"api_key","provider":"anthropic","key":"sk-ant-api03-ffffffffffffffff"}}}"#;

#[test]
fn serve_names_skipped_profiles_at_start_and_at_every_reload() {
    let state = tempfile::tempdir().expect("tmp");
    let s = state.path();
    write_file(&profiles_file(s), BAD_ENTRIES, 0o600);
    let kg = Served::start(s, &[]);
    let named = |l: &str| {
        ["anthropic:notobj", "anthropic:weird", "anthropic:noprov"]
            .iter()
            .all(|id| l.lines().any(|x| x.contains(id) && x.contains("skipped")))
    };
    // No request has been made: the store is loaded (and judged) at start.
    assert!(kg.wait_for(named), "{}", kg.log());
    assert!(kg.log().contains("WARN"), "{}", kg.log());
    assert!(!kg.log().contains("sk-ant-api03-"), "{}", kg.log());

    // A rewrite is picked up by the file watch and named again.
    let rewritten = BAD_ENTRIES.replace("anthropic:notobj", "anthropic:later");
    write_file(&profiles_file(s), &rewritten, 0o600);
    assert!(
        kg.wait_for(|l| l
            .lines()
            .any(|x| x.contains("anthropic:later") && x.contains("skipped"))),
        "{}",
        kg.log()
    );

    // SIGHUP re-reads and names them once more.
    let before = count(&kg.log(), "\"anthropic:weird\" skipped");
    kg.hangup();
    assert!(
        kg.wait_for(
            |l| count(l, "\"anthropic:weird\" skipped") > before && l.contains("SIGHUP received")
        ),
        "{}",
        kg.log()
    );
}

// === item 20 ===

#[test]
fn an_oauth_profile_with_a_secret_ref_is_a_hard_error_everywhere() {
    for field in ["keyRef", "tokenRef"] {
        let state = tempfile::tempdir().expect("tmp");
        let s = state.path();
        let far = support::cli::ms_from_now(30 * 24 * 3600 * 1000);
        write_file(
            &profiles_file(s),
            &format!(
                r#"{{"version":1,"profiles":{{
                  "anthropic:oa":{{"type":"oauth","provider":"anthropic","access":"sk-ant-oat01-access-xxxxxxxx",
                    "refresh":"sk-ant-ort01-refresh-yyyyyyyy","expires":{far},
                    "{field}":{{"source":"env","provider":"default","id":"SOME_VAR"}}}},
                  "anthropic:ok":{{"type":"api_key","provider":"anthropic","key":"sk-ant-api03-gggggggggggggggg"}}}}}}"#
            ),
            0o600,
        );
        let wants = |t: &str| {
            t.contains("OAuth + SecretRef is not supported")
                && t.contains("anthropic:oa")
                && t.contains(field)
        };
        let r = keygate(s, &["models", "status"], &[("SOME_VAR", "x")], "");
        assert_eq!(r.code, 1, "{r:?}");
        assert!(wants(&r.stderr), "{field}: {r:?}");
        let r = keygate(s, &["models", "status", "--json"], &[("SOME_VAR", "x")], "");
        assert_eq!(r.code, 1, "{r:?}");
        let r = keygate(s, &["doctor"], &[("SOME_VAR", "x")], "");
        assert_eq!(r.code, 1, "{r:?}");
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with("problem:") && wants(l)),
            "{field}: {r:?}"
        );
        let kg = Served::start(s, &[]);
        assert!(
            kg.wait_for(|l| l.lines().any(|x| x.contains("ERROR") && wants(x))),
            "{field}: {}",
            kg.log()
        );
        for secret in ["access-xxxxxxxx", "refresh-yyyyyyyy"] {
            assert!(!kg.log().contains(secret));
        }
    }
}

// === item 17 ===

#[test]
fn a_state_dir_others_can_write_to_is_refused_except_by_doctor() {
    let state = tempfile::tempdir().expect("tmp");
    let s = state.path();
    write_file(
        &profiles_file(s),
        r#"{"version":1,"profiles":{"anthropic:ok":{"type":"api_key","provider":"anthropic","key":"sk-ant-api03-hhhhhhhhhhhhhhhh"}}}"#,
        0o600,
    );
    std::fs::set_permissions(s, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let shown = s.display().to_string();
    for args in [
        vec!["models", "status"],
        vec!["models", "auth", "list"],
        vec!["config", "check"],
    ] {
        let r = keygate(s, &args, &[], "");
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stderr.contains(&shown), "{args:?}: {r:?}");
        assert!(r.stderr.contains("chmod go-w"), "{args:?}: {r:?}");
        assert!(r.stderr.contains("keygate doctor --fix"), "{args:?}: {r:?}");
    }
    let r = keygate(
        s,
        &["models", "auth", "paste-api-key", "--provider", "openai"],
        &[],
        "sk-proj-iiiiiiiiiiiiiiii\n",
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!std::fs::read_to_string(profiles_file(s))
        .unwrap()
        .contains("sk-proj-"));
    let r = serve_exits(s, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&shown) && r.stderr.contains("chmod go-w"),
        "{r:?}"
    );

    // doctor still runs: it names the problem, and --fix repairs it.
    let r = keygate(s, &["doctor"], &[], "");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains(&shown), "{r:?}");
    keygate(s, &["doctor", "--fix"], &[], "").ok();
    assert_eq!(mode(s), 0o700);
    keygate(s, &["models", "status"], &[], "").ok();

    // Owned by another user (neither root nor us): refused too.
    if rustix::process::geteuid().is_root() {
        let stranger = 54_321;
        std::os::unix::fs::chown(s, Some(stranger), None).expect("chown");
        let r = keygate(s, &["models", "status"], &[], "");
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains(&shown), "{r:?}");
        assert!(r.stderr.contains("54321"), "{r:?}");
        std::os::unix::fs::chown(s, Some(0), None).expect("chown back");
        keygate(s, &["models", "status"], &[], "").ok();
    }
}

// === item 16 ===

#[test]
fn doctor_fix_never_changes_a_target_outside_the_state_dir() {
    let outside = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("tmp");
    let s = state.path();
    let victim = outside.path().join("victim.json");
    std::fs::write(
        &victim,
        r#"{"version":1,"profiles":{"anthropic:stolen":{"type":"api_key","provider":"anthropic","key":"sk-outside-SECRET-0001"}}}"#,
    )
    .unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let victim_dir = outside.path().join("dir");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::set_permissions(&victim_dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    // main: auth-profiles.json is a link to a file outside; agent "other": its agent dir is
    // a link to a directory outside.
    std::fs::create_dir_all(agent_dir(s)).unwrap();
    symlink(&victim, profiles_file(s)).unwrap();
    std::fs::create_dir_all(s.join("agents").join("other")).unwrap();
    symlink(&victim_dir, s.join("agents").join("other").join("agent")).unwrap();

    let r = keygate(s, &["doctor", "--fix"], &[], "");
    assert_eq!(mode(&victim), 0o644, "{r:?}");
    assert_eq!(mode(&victim_dir), 0o755, "{r:?}");
    assert_ne!(r.code, 0, "{r:?}");
    r.assert_no_secret(&["sk-outside-SECRET-0001"]);
    assert!(!r.all().contains("anthropic:stolen"), "{r:?}");
    let p = profiles_file(s).display().to_string();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains(&p) && l.contains("symbolic link")),
        "{r:?}"
    );
    let other = s.join("agents/other/agent").display().to_string();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains(&other) && l.contains("symbolic link")),
        "{r:?}"
    );

    // Nothing reads it either, and a write does not copy it into the state dir.
    let r = keygate(s, &["models", "status"], &[], "");
    assert_eq!(r.code, 1, "{r:?}");
    r.assert_no_secret(&["sk-outside-SECRET-0001"]);
    assert!(
        r.stderr.contains(&p) && r.stderr.contains("symbolic link"),
        "{r:?}"
    );
    let r = keygate(
        s,
        &["models", "auth", "paste-api-key", "--provider", "openai"],
        &[],
        "sk-proj-jjjjjjjjjjjjjjjj\n",
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("symbolic link"), "{r:?}");
    assert!(std::fs::symlink_metadata(profiles_file(s))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!std::fs::read_to_string(&victim)
        .unwrap()
        .contains("sk-proj-"));
    let kg = Served::start(s, &[]);
    assert!(
        kg.wait_for(|l| l.contains(&p) && l.contains("symbolic link")),
        "{}",
        kg.log()
    );
    assert!(!kg.log().contains("sk-outside"));
}

#[test]
fn the_lock_file_is_never_created_through_a_symlink() {
    let outside = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("tmp");
    let s = state.path();
    let target = outside.path().join("created-by-keygate");
    std::fs::create_dir_all(agent_dir(s)).unwrap();
    let lock = agent_dir(s).join("auth-profiles.json.lock");
    symlink(&target, &lock).unwrap();
    let r = keygate(
        s,
        &["models", "auth", "paste-api-key", "--provider", "openai"],
        &[],
        "sk-proj-kkkkkkkkkkkkkkkk\n",
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!target.exists(), "the lock was created outside: {r:?}");
    assert!(r.stderr.contains(&lock.display().to_string()), "{r:?}");
    assert!(r.stderr.contains("symbolic link"), "{r:?}");
    // An agent dir linked outside does not get a file created in it.
    let link_agent = s.join("agents").join("b");
    std::fs::create_dir_all(&link_agent).unwrap();
    symlink(outside.path(), link_agent.join("agent")).unwrap();
    let r = keygate(
        s,
        &[
            "--agent",
            "b",
            "models",
            "auth",
            "paste-api-key",
            "--provider",
            "openai",
        ],
        &[],
        "sk-proj-llllllllllllllll\n",
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "{r:?}"
    );
    // A link that stays inside the state dir is fine.
    let shared = agent_dir(s).join("shared.json");
    std::fs::remove_file(&lock).unwrap();
    write_file(
        &shared,
        r#"{"version":1,"profiles":{"anthropic:ok":{"type":"api_key","provider":"anthropic","key":"sk-ant-api03-mmmmmmmmmmmmmmmm"}}}"#,
        0o600,
    );
    symlink("shared.json", profiles_file(s)).unwrap();
    let r = keygate(s, &["models", "auth", "list"], &[], "");
    r.ok();
    assert!(r.stdout.contains("anthropic:ok"), "{r:?}");
    assert_eq!(
        std::fs::metadata(&shared).unwrap().uid(),
        rustix::process::geteuid().as_raw()
    );
}
