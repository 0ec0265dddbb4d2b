//! Writes to the state files (SPEC §6): advisory lock, read-modify-write, atomic replace.
//!
//! Owns the write discipline every writer follows (CLI commands, `doctor --fix`, and the
//! OAuth refresh): take `<file>.lock` (an exclusive `flock`, bounded retries), re-read the
//! file under the lock, refuse to touch a file that does not parse (the error names file,
//! line and column), apply the change to the parsed JSON (unknown members are kept as
//! found), then write a temp file in the same directory (mode 0600), fsync it, rename it
//! over the original and fsync the directory. Directories are created 0700.
//!
//! It does not own what a change means (the CLI decides), nor loading for use
//! ([`super::load_profiles`]). Lock files are left in place: removing them would let two
//! writers lock different inodes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::{infer_kind, parse_error, parse_kind, profiles_shape_error, read_optional};
use super::{StoreError, PROFILES_FILE};
use crate::credentials::Kind;

/// How many times a lock is tried before giving up.
const LOCK_ATTEMPTS: u32 = 50;

/// A held advisory lock on `<file>.lock`; released when dropped (the descriptor closes).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
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

/// Takes the exclusive advisory lock `<path>.lock`, creating it (0600) and its directory
/// (0700). Retries [`LOCK_ATTEMPTS`] times, 20–100 ms apart, then fails with
/// [`StoreError::Locked`]. The lock file is opened `O_NOFOLLOW | O_CREAT`: a symbolic link
/// there is refused ([`StoreError::Symlink`]), never followed to create its target.
pub fn lock(path: &Path) -> Result<LockGuard, StoreError> {
    // Beside the real file: two links to one file take one lock.
    let lock_path = lock_path(&super::confine(path)?);
    if let Some(dir) = lock_path.parent() {
        ensure_dir(dir)?;
    }
    let real = super::confine(&lock_path)?;
    let file = super::guard::open_lock(&real, &lock_path)?;
    for attempt in 0..LOCK_ATTEMPTS {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(LockGuard { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                std::thread::sleep(jitter(attempt));
            }
            Err(e) => {
                return Err(StoreError::Write {
                    path: lock_path,
                    source: e.into(),
                })
            }
        }
    }
    Err(StoreError::Locked { path: lock_path })
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
    top.entry("version").or_insert(Value::from(1));
    let profiles = top
        .entry("profiles")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(profiles) = profiles else {
        unreachable!("checked above: profiles is an object or absent");
    };
    let out = change(profiles)?;
    write_atomic(path, &to_json(&Value::Object(top)))?;
    Ok(out)
}

/// Read-modify-write of an `auth-state.json` under its lock: `change` gets the whole
/// top-level object (so `lastGood`, `usageStats` and anything else are kept). Same errors
/// as [`update_profiles`], without the legacy case.
pub fn update_auth_state<T, E>(
    path: &Path,
    change: impl FnOnce(&mut Map<String, Value>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StoreError>,
{
    let _lock = lock(path)?;
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

/// 20–100 ms, varied by process and attempt so two waiting writers do not stay in step.
fn jitter(attempt: u32) -> Duration {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761)
        ^ attempt.wrapping_mul(40_503);
    Duration::from_millis(20 + u64::from(seed % 81))
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
        assert_eq!(names.len(), 2, "{names:?}"); // the file and its .lock
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

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("auth-state.json");
        let held = lock(&path).unwrap();
        let other = File::open(lock_path(&path)).unwrap();
        assert!(
            rustix::fs::flock(&other, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_err()
        );
        drop(held);
        assert!(
            rustix::fs::flock(&other, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
        );
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
