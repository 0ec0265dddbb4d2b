//! Writes to the state files (SPEC §6, §6b): lock file, read-modify-write, atomic replace.
//!
//! Owns the write discipline every writer follows (CLI commands, `doctor --fix`, and the
//! OAuth refresh): take `<file>.lock` the way OpenClaw does (see [`lock`]), re-read the
//! file under the lock, refuse to touch a file that does not parse (the error names file,
//! line and column), apply the change to the parsed JSON (unknown members are kept as
//! found), then write a temp file in the same directory (mode 0600), fsync it, rename it
//! over the original and fsync the directory. Directories are created 0700.
//!
//! It does not own what a change means (the CLI decides), nor loading for use
//! ([`super::load_profiles`]). SQLite stores lock themselves (`sqlite`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::{infer_kind, parse_error, parse_kind, profiles_shape_error, read_optional};
use super::{StoreError, PROFILES_FILE};
use crate::credentials::Kind;

/// Longest time spent waiting (in sleeps) for a lock a live process holds.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// A lock whose payload has a `createdAt` but no pid is stale after this (OpenClaw's
/// `staleMs` for the auth store).
const CREATED_AT_STALE: Duration = Duration::from_secs(30);

/// A lock that names no owner (empty, not JSON, neither `pid` nor `createdAt`: what older
/// keygate versions left) is stale once its mtime is this old. A writer that has just
/// created its lock and not yet written the payload is younger than this.
const OWNERLESS_STALE: Duration = Duration::from_secs(5);

/// Most bytes of a lock file read to judge it.
const MAX_LOCK_PAYLOAD: u64 = 4096;

/// How many times in a row a lock is retried without a pause after it vanished or was
/// reclaimed (someone else may be racing for it).
const QUICK_RETRIES: u32 = 8;

/// A held lock: the `<file>.lock` this process created. Dropping it removes the file, but
/// only while that name is still the file created (same device and inode, and the bytes
/// written: a freed inode number is soon reused), so a lock someone else took since is
/// never removed.
#[derive(Debug)]
pub struct LockGuard {
    path: PathBuf,
    dev: u64,
    ino: u64,
    payload: Vec<u8>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Ok(Some(file)) = super::guard::open_read(&self.path, &self.path) else {
            return;
        };
        let Ok(m) = file.metadata() else { return };
        let mut now = Vec::new();
        let read = file.take(MAX_LOCK_PAYLOAD).read_to_end(&mut now);
        if read.is_ok() && m.dev() == self.dev && m.ino() == self.ino && now == self.payload {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What [`fix_legacy_flat`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LegacyFix {
    /// Where the original was copied (`auth-profiles.json.legacy-flat.<unix-ms>.bak`).
    pub backup: PathBuf,
    /// Profile ids written in the canonical file.
    pub converted: Vec<String>,
    /// Entries that could not be converted (named, never their content); they stay in the
    /// backup only.
    pub dropped: Vec<String>,
}

/// Creates `dir` and its missing parents with mode 0700 (existing ones are left as they
/// are; `doctor --fix` tightens those).
///
/// A symbolic link on the way is followed only while it stays inside the state directory
/// (see [`super::confine`]).
pub fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    let real = super::confine(dir)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&real)
        .map_err(|source| StoreError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Takes the lock `<path>.lock` as OpenClaw does (so each respects the other's): the file
/// is created `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600 (its directory 0700), and holds
/// `{"pid":…,"createdAt":"<ISO-8601 UTC, ms>","starttime":<field 22 of /proc/self/stat>}`
/// (`starttime` when readable). The guard removes it when dropped.
///
/// A lock that exists already is reclaimed (removed, then created again) when it is stale:
/// its pid is dead (or a zombie) or runs with another start time than recorded; without a
/// pid, its `createdAt` is older than 30 s or unreadable; naming no owner at all (empty,
/// not JSON: older keygate versions left those), its mtime is older than 5 s and no older
/// keygate holds a `flock` on it. A lock of a live process is never reclaimed: it is retried with growing pauses, 10 s in all, then
/// the result is [`StoreError::Locked`]. A symbolic link at the lock's name is refused
/// ([`StoreError::Symlink`]), never followed.
///
/// The lock is never re-entrant: a caller holding it must not take it again (it would wait
/// for itself and fail).
pub fn lock(path: &Path) -> Result<LockGuard, StoreError> {
    // Beside the real file: two links to one file take one lock.
    let lock_path = lock_path(&super::confine(path)?);
    if let Some(dir) = lock_path.parent() {
        ensure_dir(dir)?;
    }
    // A link at the lock's own name that leads out is named here; one that stays inside
    // is refused when the create finds it.
    super::confine(&lock_path)?;
    let mut slept = Duration::ZERO;
    let mut pauses = 0u32;
    let mut quick = 0u32;
    loop {
        if let Some(guard) = try_create(&lock_path)? {
            return Ok(guard);
        }
        match inspect_lock(&lock_path)? {
            Holder::Gone => quick += 1,
            Holder::Stale { dev, ino, payload } => {
                remove_if_same(&lock_path, dev, ino, &payload)?;
                tracing::debug!(lock = %lock_path.display(), "reclaimed a stale lock");
                quick += 1;
            }
            Holder::Live => quick = QUICK_RETRIES,
        }
        if quick < QUICK_RETRIES {
            continue;
        }
        if slept >= LOCK_WAIT {
            return Err(StoreError::Locked { path: lock_path });
        }
        let pause = backoff(pauses).min(LOCK_WAIT - slept);
        std::thread::sleep(pause);
        slept += pause;
        pauses += 1;
    }
}

/// Creates the lock file and writes its payload; `Ok(None)` when the name is taken.
fn try_create(lock_path: &Path) -> Result<Option<LockGuard>, StoreError> {
    let err = |source| StoreError::Write {
        path: lock_path.to_owned(),
        source,
    };
    let Some(mut file) = super::guard::create_lock(lock_path, lock_path)? else {
        return Ok(None);
    };
    let created = file.metadata();
    let payload = lock_payload(SystemTime::now());
    match created.and_then(|meta| file.write_all(&payload).map(|()| meta)) {
        Ok(meta) => Ok(Some(LockGuard {
            path: lock_path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            payload,
        })),
        Err(e) => {
            // Not left behind half-written (nobody else can have replaced it yet: only a
            // lock older than 5 s without a payload is reclaimed).
            let _ = std::fs::remove_file(lock_path);
            Err(err(e))
        }
    }
}

/// This process's lock payload, compact JSON in OpenClaw's member order.
fn lock_payload(now: SystemTime) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("pid".into(), Value::from(std::process::id()));
    m.insert(
        "createdAt".into(),
        Value::from(humantime::format_rfc3339_millis(now).to_string()),
    );
    if let Some((_, start)) = proc_stat("self") {
        m.insert("starttime".into(), Value::from(start));
    }
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// What an existing lock file is to a writer that wants it.
#[derive(Debug, PartialEq, Eq)]
enum Holder {
    /// Gone since the create failed: try again.
    Gone,
    /// Held by someone who may still be writing.
    Live,
    /// Abandoned: remove it (while it is still this inode) and try again.
    Stale {
        dev: u64,
        ino: u64,
        /// What it held when judged (an inode number is reused at once, so the bytes are
        /// compared too before removing it).
        payload: Vec<u8>,
    },
}

fn inspect_lock(lock_path: &Path) -> Result<Holder, StoreError> {
    let io = |source| StoreError::Io {
        path: lock_path.to_owned(),
        source,
    };
    let Some(file) = super::guard::open_read(lock_path, lock_path)? else {
        return Ok(Holder::Gone);
    };
    let meta = file.metadata().map_err(io)?;
    let mut payload = Vec::new();
    (&file)
        .take(MAX_LOCK_PAYLOAD)
        .read_to_end(&mut payload)
        .map_err(io)?;
    let now = SystemTime::now();
    let age = meta
        .modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .unwrap_or_default();
    // An older keygate holds its (empty) lock with `flock`: while it does, it is live.
    let flocked = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared)
        == Err(rustix::io::Errno::WOULDBLOCK);
    Ok(if !flocked && is_stale(&payload, age, now, owner_gone) {
        Holder::Stale {
            dev: meta.dev(),
            ino: meta.ino(),
            payload,
        }
    } else {
        Holder::Live
    })
}

/// Removes a stale lock, unless another writer replaced it since it was judged.
fn remove_if_same(lock_path: &Path, dev: u64, ino: u64, payload: &[u8]) -> Result<(), StoreError> {
    let same_bytes = || {
        std::fs::File::open(lock_path).is_ok_and(|f| {
            let mut now = Vec::new();
            f.take(MAX_LOCK_PAYLOAD).read_to_end(&mut now).is_ok() && now == payload
        })
    };
    match std::fs::symlink_metadata(lock_path) {
        Ok(m) if m.dev() == dev && m.ino() == ino && same_bytes() => {
            match std::fs::remove_file(lock_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Write {
                    path: lock_path.to_owned(),
                    source: e,
                }),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// OpenClaw's rule (`shouldRemoveDeadOwnerOrExpiredLock`), plus the ownerless case it
/// never reclaims. `payload` is the lock file's content, `age` the time since its mtime;
/// `gone(pid, starttime)` says whether that owner is definitely not running.
fn is_stale(
    payload: &[u8],
    age: Duration,
    now: SystemTime,
    gone: impl Fn(u64, Option<u64>) -> bool,
) -> bool {
    let doc = serde_json::from_slice::<Value>(payload).ok();
    let obj = doc.as_ref().and_then(Value::as_object);
    // A JSON number that is an integer, as JavaScript's Number.isInteger sees it.
    let int = |key: &str| {
        obj.and_then(|o| o.get(key))
            .and_then(Value::as_f64)
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 2f64.powi(53))
            .map(|f| f as u64)
    };
    if let Some(pid) = int("pid").filter(|p| *p > 0) {
        return gone(pid, int("starttime"));
    }
    if let Some(created) = obj.and_then(|o| o.get("createdAt")).and_then(Value::as_str) {
        return match parse_iso(created) {
            Some(t) => now.duration_since(t).is_ok_and(|d| d > CREATED_AT_STALE),
            None => true,
        };
    }
    age > OWNERLESS_STALE
}

/// Whether process `pid` is definitely not the one that wrote a lock: no such process, a
/// zombie, or (with `starttime` recorded) one started at another time (the pid was
/// reused). A process of another user counts as running.
fn owner_gone(pid: u64, starttime: Option<u64>) -> bool {
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return true;
    };
    let stat = proc_stat(&pid.to_string());
    if let (Some(recorded), Some((_, current))) = (starttime, stat) {
        if recorded != current {
            return true;
        }
    }
    if rustix::process::test_kill_process(raw) == Err(rustix::io::Errno::SRCH) {
        return true;
    }
    matches!(stat, Some((b'Z', _)))
}

/// State (field 3) and start time in clock ticks (field 22) from `/proc/<pid>/stat`.
fn proc_stat(pid: &str) -> Option<(u8, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything, ')' too.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// An ISO-8601 / RFC 3339 time as JavaScript writes it (`2026-01-02T03:04:05.678Z`), or
/// with a `±hh:mm` offset. `None` when it is neither.
fn parse_iso(s: &str) -> Option<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339(s) {
        return Some(t);
    }
    let cut = s.len().checked_sub(6)?;
    // A hostile lock file may put a multi-byte character there.
    if !s.is_char_boundary(cut) {
        return None;
    }
    let (head, offset) = s.split_at(cut);
    let b = offset.as_bytes();
    if !(b[0] == b'+' || b[0] == b'-') || b[3] != b':' {
        return None;
    }
    let hours: u64 = offset.get(1..3)?.parse().ok()?;
    let minutes: u64 = offset.get(4..6)?.parse().ok()?;
    let utc = humantime::parse_rfc3339(&format!("{head}Z")).ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    // Local time = UTC + offset, so UTC = local − offset.
    if b[0] == b'+' {
        utc.checked_sub(shift)
    } else {
        utc.checked_add(shift)
    }
}

/// Replaces `path` with `bytes` atomically: a temp file in the same directory (mode 0600),
/// fsync, rename, fsync of the directory. The caller holds the lock. A symbolic link at
/// `path` is replaced through only when it stays inside the state directory (its target
/// is then written, the link kept); one that leads out is [`StoreError::Symlink`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let err = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let real = super::confine(path)?;
    let path = real.as_path();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Read-modify-write of an `auth-profiles.json` under its lock. `change` gets the
/// `profiles` object (empty for a new file) and may fail, in which case nothing is
/// written. `version: 1` is set when absent; every other member is kept.
///
/// Errors: the file does not parse ([`StoreError::Parse`], nothing written), is in the
/// legacy flat shape ([`StoreError::LegacyFlat`]: run `doctor --fix` first), the lock
/// cannot be taken, the write fails, or `change`'s own error.
pub fn update_profiles<T, E>(
    path: &Path,
    change: impl FnOnce(&mut Map<String, Value>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StoreError>,
{
    let _lock = lock(path)?;
    let mut top = match read_optional(path)? {
        Some(text) => {
            let top: Map<String, Value> =
                serde_json::from_str(&text).map_err(|e| parse_error(path, &e))?;
            match top.get("profiles") {
                Some(Value::Object(_)) => {}
                Some(_) => return Err(profiles_shape_error(&text, path).into()),
                None if top.values().any(Value::is_object) => {
                    return Err(StoreError::LegacyFlat {
                        path: path.to_owned(),
                    }
                    .into())
                }
                None => {}
            }
            top
        }
        None => Map::new(),
    };
    let out = change(profiles_of(&mut top))?;
    write_atomic(path, &to_json(&Value::Object(top)))?;
    Ok(out)
}

/// Read-modify-write of an `auth-state.json` under the lock of the `auth-profiles.json`
/// beside it (as OpenClaw 2026.5 does): `change` gets the whole
/// top-level object (so `lastGood`, `usageStats` and anything else are kept). Same errors
/// as [`update_profiles`], without the legacy case.
pub fn update_auth_state<T, E>(
    path: &Path,
    change: impl FnOnce(&mut Map<String, Value>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StoreError>,
{
    // OpenClaw writes auth-state.json under the auth-profiles.json lock (it has no
    // auth-state.json.lock).
    let _lock = lock(&path.with_file_name(PROFILES_FILE))?;
    let mut top = match read_optional(path)? {
        Some(text) => {
            serde_json::from_str::<Map<String, Value>>(&text).map_err(|e| parse_error(path, &e))?
        }
        None => Map::new(),
    };
    top.entry("version").or_insert(Value::from(1));
    let out = change(&mut top)?;
    write_atomic(path, &to_json(&Value::Object(top)))?;
    Ok(out)
}

/// Rewrites a legacy flat `auth-profiles.json` in the canonical shape (SPEC §6), after
/// copying the original byte for byte to `auth-profiles.json.legacy-flat.<unix-ms>.bak`
/// (0600) beside it. Type from `type`/`mode`, else inferred; only the fields of that type
/// are kept (`key`, `keyRef`; `token`, `tokenRef`, `expires`; `access`, `refresh`,
/// `expires`, `email`, `accountId`, `projectId`; `email`, `displayName` for all).
///
/// Returns `Ok(None)` when the file is missing or already canonical (nothing is changed).
/// A file that does not parse is an error and is left untouched.
pub fn fix_legacy_flat(path: &Path) -> Result<Option<LegacyFix>, StoreError> {
    let _lock = lock(path)?;
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let top: Map<String, Value> = serde_json::from_str(&text).map_err(|e| parse_error(path, &e))?;
    if top.contains_key("profiles") || !top.values().any(Value::is_object) {
        return Ok(None);
    }
    let mut fix = LegacyFix::default();
    let mut profiles = Map::new();
    for (provider, entry) in &top {
        if provider == "version" {
            continue;
        }
        let id = format!("{provider}:default");
        match canonical_entry(provider, entry) {
            Some(obj) => {
                fix.converted.push(id.clone());
                profiles.insert(id, Value::Object(obj));
            }
            None => fix.dropped.push(id),
        }
    }
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = path
        .file_name()
        .map_or_else(|| PROFILES_FILE.into(), |n| n.to_string_lossy());
    fix.backup = path.with_file_name(format!("{name}.legacy-flat.{ms}.bak"));
    write_atomic(&fix.backup, text.as_bytes())?;
    let mut canonical = Map::new();
    canonical.insert("version".into(), Value::from(1));
    canonical.insert("profiles".into(), Value::Object(profiles));
    write_atomic(path, &to_json(&Value::Object(canonical)))?;
    Ok(Some(fix))
}

/// Pretty JSON with a trailing newline: the canonical on-disk form.
pub fn to_json(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// One legacy entry in canonical form, `None` when it is not an object or its type
/// cannot be told.
pub(super) fn canonical_entry(provider: &str, entry: &Value) -> Option<Map<String, Value>> {
    let Value::Object(obj) = entry else {
        return None;
    };
    let kind = match obj.get("type").or_else(|| obj.get("mode")) {
        Some(Value::String(t)) => parse_kind(t)?,
        Some(_) => return None,
        None => infer_kind(obj)?,
    };
    let mut out = Map::new();
    out.insert("type".into(), Value::from(kind.as_str()));
    out.insert("provider".into(), Value::from(provider));
    let mut copy = |to: &str, from: &[&str]| {
        if let Some(v) = from
            .iter()
            .find_map(|k| obj.get(*k).filter(|v| !v.is_null()))
        {
            out.insert(to.to_owned(), v.clone());
        }
    };
    match kind {
        Kind::ApiKey => {
            copy("key", &["key", "apiKey"]);
            copy("keyRef", &["keyRef"]);
        }
        Kind::Token => {
            copy("token", &["token"]);
            copy("tokenRef", &["tokenRef"]);
            copy("expires", &["expires"]);
        }
        Kind::OAuth => {
            for k in ["access", "refresh", "expires", "accountId", "projectId"] {
                copy(k, &[k]);
            }
        }
    }
    copy("email", &["email"]);
    copy("displayName", &["displayName"]);
    Some(out)
}

/// The pause before retry `n` of a held lock: 25 ms growing by half each time up to 500 ms,
/// from 50 % to 100 % of that (varied by process and attempt so two waiting writers do not
/// stay in step). About 25 pauses fill [`LOCK_WAIT`].
fn backoff(n: u32) -> Duration {
    let base = (25.0 * 1.5f64.powi(n.min(16) as i32)).min(500.0) as u64;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761)
        ^ n.wrapping_mul(40_503);
    Duration::from_millis(base / 2 + u64::from(seed) % (base / 2 + 1))
}

/// The `profiles` map of an auth-profiles document whose `profiles`, if present, was
/// checked to be an object; `version: 1` and an empty map are added when absent (a new
/// store). Shared by the JSON file and the SQLite rows.
pub(super) fn profiles_of(top: &mut Map<String, Value>) -> &mut Map<String, Value> {
    top.entry("version").or_insert(Value::from(1));
    match top
        .entry("profiles")
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(profiles) => profiles,
        _ => unreachable!("the caller checked that profiles is an object or absent"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn update_creates_private_dirs_and_files_and_keeps_unknown_members() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/auth-profiles.json");
        update_profiles(&path, |p| {
            p.insert(
                "x:1".into(),
                serde_json::json!({"type": "api_key", "provider": "x", "key": "k", "extra": 1}),
            );
            Ok::<_, StoreError>(())
        })
        .unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
        update_profiles(&path, |p| {
            p.insert(
                "x:2".into(),
                serde_json::json!({"type": "token", "provider": "x", "token": "t"}),
            );
            Ok::<_, StoreError>(())
        })
        .unwrap();
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["profiles"]["x:1"]["extra"], 1);
        assert_eq!(doc["profiles"]["x:2"]["token"], "t");
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["auth-profiles.json"]); // no temp file, no lock
    }

    #[test]
    fn unparseable_and_legacy_files_are_not_written() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("auth-profiles.json");
        for text in [
            "{\"profiles\": {,}}",
            "{\"openai\": {\"apiKey\": \"k\"}}",
            "{\"profiles\": 3}",
        ] {
            std::fs::write(&path, text).unwrap();
            let err = update_profiles(&path, |_| Ok::<_, StoreError>(())).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::Parse { .. } | StoreError::LegacyFlat { .. }
                ),
                "{err:?}"
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
        // The closure's own error: nothing written.
        std::fs::write(&path, "{\"profiles\": {}}").unwrap();
        let err = update_profiles(&path, |p| {
            p.insert("a".into(), Value::Null);
            Err::<(), _>(StoreError::Locked { path: path.clone() })
        });
        assert!(err.is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"profiles\": {}}"
        );
    }

    fn read_json(p: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    /// A pid that is not running: a child that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    fn set_mtime_back(p: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
    }

    #[test]
    fn the_lock_payload_is_openclaws_and_the_file_goes_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("auth-profiles.json");
        let lp = lock_path(&path);
        let before = SystemTime::now() - Duration::from_secs(1);
        let held = lock(&path).unwrap();
        assert_eq!(mode(&lp), 0o600);
        let text = std::fs::read_to_string(&lp).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<_> = doc.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["pid", "createdAt", "starttime"], "{text}");
        assert_eq!(doc["pid"], std::process::id());
        let created = doc["createdAt"].as_str().unwrap();
        // JavaScript's toISOString: 24 characters, milliseconds, Z.
        assert_eq!(created.len(), 24, "{created}");
        assert!(created.ends_with('Z') && created.as_bytes()[19] == b'.');
        let t = parse_iso(created).unwrap();
        assert!(t >= before && t <= SystemTime::now() + Duration::from_secs(1));
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        let field22: u64 = me[me.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(doc["starttime"], field22);
        // Our own lock is a live one: never reclaimed.
        assert_eq!(inspect_lock(&lp).unwrap(), Holder::Live);
        drop(held);
        assert!(!lp.exists());
        drop(lock(&path).unwrap());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_guard_never_removes_a_lock_it_did_not_create() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("auth-profiles.json");
        let lp = lock_path(&path);
        let held = lock(&path).unwrap();
        std::fs::remove_file(&lp).unwrap();
        std::fs::write(&lp, "{\"pid\":1}").unwrap();
        drop(held);
        assert_eq!(std::fs::read_to_string(&lp).unwrap(), "{\"pid\":1}");
    }

    #[test]
    fn stale_locks_are_reclaimed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("auth-profiles.json");
        let lp = lock_path(&path);
        // A dead owner (OpenClaw's shape, pretty-printed as its sync lock writes it).
        let dead = dead_pid();
        std::fs::write(
            &lp,
            format!("{{\n  \"pid\": {dead},\n  \"createdAt\": \"2026-01-01T00:00:00.000Z\"\n}}\n"),
        )
        .unwrap();
        let held = lock(&path).unwrap();
        assert_eq!(read_json(&lp)["pid"], std::process::id());
        drop(held);
        // An empty lock an older keygate left, 60 s old: live while that keygate still
        // holds its flock, stale once it does not.
        std::fs::write(&lp, "").unwrap();
        set_mtime_back(&lp, 60);
        let old = File::open(&lp).unwrap();
        rustix::fs::flock(&old, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        assert_eq!(inspect_lock(&lp).unwrap(), Holder::Live);
        drop(old);
        assert!(matches!(inspect_lock(&lp).unwrap(), Holder::Stale { .. }));
        let held = lock(&path).unwrap();
        assert_eq!(read_json(&lp)["pid"], std::process::id());
        drop(held);
        assert!(!lp.exists());
    }

    #[test]
    fn update_auth_state_takes_the_auth_profiles_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("auth-state.json");
        let profiles_lock = lock_path(&tmp.path().join(PROFILES_FILE));
        // A stale auth-profiles.json.lock: only a writer taking that lock removes it.
        std::fs::write(&profiles_lock, format!("{{\"pid\":{}}}", dead_pid())).unwrap();
        update_auth_state(&state, |top| {
            top.insert("order".into(), serde_json::json!({"x": ["x:1"]}));
            Ok::<_, StoreError>(())
        })
        .unwrap();
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["auth-state.json"]);
    }

    #[test]
    fn staleness_follows_openclaw() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let iso = |ago: u64| humantime::format_rfc3339_millis(now - Duration::from_secs(ago));
        let young = Duration::from_secs(1);
        let old = Duration::from_secs(60);
        let alive = |_: u64, _: Option<u64>| false;
        let dead = |_: u64, _: Option<u64>| true;
        // With a pid only the owner decides, whatever the age.
        let p = format!("{{\"pid\":42,\"createdAt\":\"{}\"}}", iso(86_400));
        assert!(!is_stale(p.as_bytes(), old, now, alive));
        assert!(is_stale(p.as_bytes(), young, now, dead));
        let seen = std::cell::Cell::new(None);
        is_stale(b"{\"pid\":42,\"starttime\":7}", young, now, |pid, st| {
            seen.set(Some((pid, st)));
            false
        });
        assert_eq!(seen.get(), Some((42, Some(7))));
        // pid 0, negative, fractional, a string: no pid; then createdAt decides.
        for pid in ["0", "-3", "1.5", "\"42\""] {
            let fresh = format!("{{\"pid\":{pid},\"createdAt\":\"{}\"}}", iso(5));
            assert!(!is_stale(fresh.as_bytes(), old, now, dead), "{fresh}");
            let expired = format!("{{\"pid\":{pid},\"createdAt\":\"{}\"}}", iso(31));
            assert!(is_stale(expired.as_bytes(), young, now, alive), "{expired}");
        }
        // A createdAt that does not parse is stale at once (Date.parse gives NaN).
        assert!(is_stale(
            b"{\"createdAt\":\"yesterday\"}",
            young,
            now,
            alive
        ));
        // An offset is honoured: 10 s ago written as local time two hours ahead.
        let local = humantime::format_rfc3339_seconds(
            now - Duration::from_secs(10) + Duration::from_secs(7200),
        )
        .to_string()
        .replace('Z', "+02:00");
        assert!(!is_stale(
            format!("{{\"createdAt\":\"{local}\"}}").as_bytes(),
            old,
            now,
            alive
        ));
        // No owner at all: by mtime, 5 s.
        for p in ["", "not json", "{}", "[1]", "{\"pid\":null}"] {
            assert!(!is_stale(p.as_bytes(), young, now, dead), "{p:?}");
            assert!(is_stale(p.as_bytes(), old, now, alive), "{p:?}");
        }
    }

    #[test]
    fn owners_are_checked_by_pid_and_start_time() {
        let me = u64::from(std::process::id());
        let (_, start) = proc_stat("self").unwrap();
        assert!(!owner_gone(me, None));
        assert!(!owner_gone(me, Some(start)));
        assert!(owner_gone(me, Some(start + 1)));
        assert!(owner_gone(u64::from(dead_pid()), None));
        assert!(owner_gone(u64::from(u32::MAX), None));
        // A zombie (exited, not yet reaped) is dead too.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let mut zombie = false;
        for _ in 0..200 {
            if matches!(proc_stat(&pid.to_string()), Some((b'Z', _))) {
                zombie = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(zombie);
        assert!(owner_gone(u64::from(pid), None));
        child.wait().unwrap();
    }

    #[test]
    fn iso_times_parse_as_javascript_writes_them() {
        // Never a panic on a multi-byte character where the offset would start.
        assert_eq!(parse_iso("xé12345"), None);
        assert_eq!(parse_iso("2026-01-02T03:04:05é:00"), None);
        let t = UNIX_EPOCH + Duration::from_millis(1_767_323_045_678);
        assert_eq!(parse_iso("2026-01-02T03:04:05.678Z"), Some(t));
        assert_eq!(parse_iso("2026-01-02T04:04:05.678+01:00"), Some(t));
        assert_eq!(parse_iso("2026-01-02T01:34:05.678-01:30"), Some(t));
        for bad in [
            "",
            "2026",
            "2026-01-02",
            "2026-01-02T03:04:05.678Z+01:00",
            "ééééééééééééééééééééé",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }

    #[test]
    fn legacy_entries_convert_by_type_or_inference() {
        let obj = |v: Value| canonical_entry("p", &v).map(Value::Object);
        assert_eq!(
            obj(serde_json::json!({"apiKey": "k", "junk": 1})),
            Some(serde_json::json!({"type": "api_key", "provider": "p", "key": "k"}))
        );
        assert_eq!(
            obj(serde_json::json!({"mode": "token", "token": "t", "expires": 5, "email": "e"})),
            Some(
                serde_json::json!({"type": "token", "provider": "p", "token": "t", "expires": 5, "email": "e"})
            )
        );
        assert_eq!(
            obj(serde_json::json!({"access": "a", "refresh": "r", "expires": 5})),
            Some(
                serde_json::json!({"type": "oauth", "provider": "p", "access": "a", "refresh": "r", "expires": 5})
            )
        );
        assert_eq!(obj(serde_json::json!({"something": "else"})), None);
        assert_eq!(obj(serde_json::json!("string")), None);
    }
}
