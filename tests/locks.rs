//! Lock files against the real binary (SPEC §6b, notes/openclaw-store.md §6): no `*.lock`
//! is left after a write, locks OpenClaw would reclaim (dead owner) and ones older keygate
//! versions left (empty, old) are reclaimed, and a live owner's lock is waited for, then
//! reported, and left alone.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use support::cli::*;

const KEY: &str = "sk-proj-LOCKS-test-key-00000001";

/// Every `*.lock` file under `dir`.
fn locks_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(locks_under(&p));
        } else if p.extension().is_some_and(|x| x == "lock") {
            out.push(p);
        }
    }
    out
}

fn profiles_lock(s: &Path) -> PathBuf {
    agent_dir(s).join("auth-profiles.json.lock")
}

fn paste(s: &Path) -> Run {
    keygate(
        s,
        &["models", "auth", "paste-api-key", "--provider", "openai"],
        &[],
        &format!("{KEY}\n"),
    )
}

fn order_set(s: &Path) -> Run {
    keygate(
        s,
        &[
            "models",
            "auth",
            "order",
            "set",
            "--provider",
            "openai",
            "openai:manual",
        ],
        &[],
        "",
    )
}

/// A pid no process has: a child that exited and was reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Field 22 of `/proc/self/stat`: this test process's start time.
fn my_starttime() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

fn iso_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn set_mtime_back(p: &Path, secs: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs);
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

fn elapsed(since: SystemTime) -> Duration {
    SystemTime::now().duration_since(since).unwrap_or_default()
}

#[test]
fn no_lock_file_is_left_after_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    paste(s).ok().assert_no_secret(&[KEY]);
    assert_eq!(locks_under(s), Vec::<PathBuf>::new(), "after paste-api-key");
    order_set(s).ok();
    assert_eq!(locks_under(s), Vec::<PathBuf>::new(), "after order set");
    keygate(
        s,
        &["models", "auth", "order", "clear", "--provider", "openai"],
        &[],
        "",
    )
    .ok();
    assert_eq!(locks_under(s), Vec::<PathBuf>::new(), "after order clear");
    order_set(s).ok();
    keygate(s, &["models", "auth", "remove", "openai:manual"], &[], "").ok();
    assert_eq!(locks_under(s), Vec::<PathBuf>::new(), "after remove");
    // A failed write (the profile is not there) leaves none either.
    let r = keygate(s, &["models", "auth", "remove", "openai:manual"], &[], "");
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        locks_under(s),
        Vec::<PathBuf>::new(),
        "after a failed remove"
    );
    // auth-state.json has no lock of its own (OpenClaw has none).
    assert!(state_file(s).exists());
}

#[test]
fn a_lock_whose_owner_is_dead_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    std::fs::create_dir_all(agent_dir(s)).unwrap();
    // As OpenClaw 2026.5's sync auth-store lock writes it.
    let payload = format!(
        "{{\n  \"pid\": {},\n  \"createdAt\": \"{}\"\n}}\n",
        dead_pid(),
        iso_now()
    );
    write_file(&profiles_lock(s), &payload, 0o600);
    let t = SystemTime::now();
    paste(s).ok();
    assert!(elapsed(t) < Duration::from_secs(5), "{:?}", elapsed(t));
    assert!(!profiles_lock(s).exists());
    // auth-state.json writes go through the same lock: a dead one there is reclaimed too.
    let payload = format!(
        "{{\"pid\":{},\"createdAt\":\"{}\",\"starttime\":1}}",
        dead_pid(),
        iso_now()
    );
    write_file(&profiles_lock(s), &payload, 0o600);
    order_set(s).ok();
    assert!(!profiles_lock(s).exists());
    // A live pid whose start time differs: the pid was reused, the owner is gone.
    let payload = format!(
        "{{\"pid\":{},\"createdAt\":\"{}\",\"starttime\":{}}}",
        std::process::id(),
        iso_now(),
        my_starttime() + 1
    );
    write_file(&profiles_lock(s), &payload, 0o600);
    paste(s).ok();
    assert!(!profiles_lock(s).exists());
}

#[test]
fn an_empty_old_lock_from_an_older_keygate_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    write_file(&profiles_lock(s), "", 0o600);
    set_mtime_back(&profiles_lock(s), 60);
    let t = SystemTime::now();
    paste(s).ok();
    assert!(elapsed(t) < Duration::from_secs(5), "{:?}", elapsed(t));
    assert!(!profiles_lock(s).exists());
    // A lock with only an expired createdAt (no pid) is reclaimed as OpenClaw does.
    let old = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(120));
    write_file(
        &profiles_lock(s),
        &format!("{{\"createdAt\":\"{old}\"}}"),
        0o600,
    );
    order_set(s).ok();
    assert!(!profiles_lock(s).exists());
}

#[test]
fn a_live_owners_lock_is_waited_for_then_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    // This test process holds it; an hour old does not make it stale.
    let payload = format!(
        "{{\"pid\":{},\"createdAt\":\"{}\",\"starttime\":{}}}",
        std::process::id(),
        humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(3600)),
        my_starttime()
    );
    write_file(&profiles_lock(s), &payload, 0o600);
    set_mtime_back(&profiles_lock(s), 3600);
    let t = SystemTime::now();
    let r = paste(s);
    let waited = elapsed(t);
    assert_eq!(r.code, 1, "{r:?}");
    r.assert_no_secret(&[KEY]);
    assert!(
        r.stderr.contains(&profiles_lock(s).display().to_string()),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("held by another running process"),
        "{r:?}"
    );
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    assert_eq!(
        std::fs::read_to_string(profiles_lock(s)).unwrap(),
        payload,
        "a live lock was touched"
    );
    assert!(!profiles_file(s).exists());
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[test]
fn doctor_import_in_a_sqlite_dir_leaves_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/openclaw/sqlite-2026.9.6-checkpointed"),
        s,
    );
    write_file(
        &profiles_file(s),
        &format!(
            "{{\"version\":1,\"profiles\":{{\"openai:locks\":{{\"type\":\"api_key\",\"provider\":\"openai\",\"key\":\"{KEY}\"}}}}}}"
        ),
        0o600,
    );
    write_file(
        &state_file(s),
        "{\"version\":1,\"order\":{\"openai\":[\"openai:locks\"]}}",
        0o600,
    );
    let r = keygate(s, &["doctor", "--fix"], &[], "");
    r.assert_no_secret(&[KEY]);
    assert!(!profiles_file(s).exists(), "not imported: {r:?}");
    assert!(!state_file(s).exists(), "not imported: {r:?}");
    assert_eq!(locks_under(s), Vec::<PathBuf>::new(), "{r:?}");
}
