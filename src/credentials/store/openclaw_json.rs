//! OpenClaw's own config, `<state-dir>/openclaw.json`: its `auth.order` and `auth.profiles`
//! (SPEC §5, §6b).
//!
//! OpenClaw's paste commands write `auth.profiles.<id>` = `{provider, mode}` and, once a
//! provider mixes kinds, `auth.order.<provider>`. OpenClaw orders candidates as: the agent's
//! stored order, else `auth.order`; with neither, the ids `auth.profiles` lists for the
//! provider are the only stored candidates; and a profile whose `mode` differs from its
//! stored type is never used (`mode_mismatch`). keygate reads the same file the same way so
//! both choose the same credential.
//!
//! The file is OpenClaw's (JSON5 is allowed there): keygate reads it with a JSON5 parser and
//! writes it only when a command must (`remove` drops the id, a paste into a provider that
//! `auth.profiles` restricts adds it), under `openclaw.json.lock`, and only when the file is
//! plain JSON, which it rewrites in OpenClaw's own layout (two-space indent), so a file
//! OpenClaw wrote changes only where keygate changed it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::StoreError;
use crate::credentials::env::EnvSnapshot;
use crate::credentials::Kind;

/// The file name inside the state dir.
pub const CONFIG_FILE: &str = "openclaw.json";

/// Bounds what is read from a file an outside tool owns.
const MAX_CONFIG_BYTES: usize = 4 << 20;

/// What keygate uses of `openclaw.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// `auth.order`: provider (lower-cased) → profile ids, as listed (non-strings dropped).
    pub order: BTreeMap<String, Vec<String>>,
    /// `auth.profiles`: profile id → what OpenClaw was told about it.
    pub profiles: BTreeMap<String, ConfiguredProfile>,
    /// What was skipped, and why; never a value from the file.
    pub warnings: Vec<String>,
}

/// One `auth.profiles.<id>` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfiguredProfile {
    /// `provider` (lower-cased), when it is a string.
    pub provider: Option<String>,
    /// `mode`: `api_key`, `token` or `oauth`, when it is a string.
    pub mode: Option<String>,
}

/// Why OpenClaw (and so keygate) will not use a stored profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// `auth.profiles.<id>.provider` names another provider.
    ProviderMismatch,
    /// `auth.profiles.<id>.mode` differs from the stored type.
    ModeMismatch {
        /// The configured mode (a short word from the file, shown only when it is one of
        /// OpenClaw's modes).
        mode: String,
    },
}

/// `OPENCLAW_CONFIG_PATH` when set (OpenClaw's own override), else `<state>/openclaw.json`.
pub fn config_path(state_dir: &Path, env: &EnvSnapshot) -> PathBuf {
    match env.get("OPENCLAW_CONFIG_PATH").map(str::trim) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => state_dir.join(CONFIG_FILE),
    }
}

/// Reads `auth` from `path`. Never fails: a missing file is empty, and an unreadable or
/// unparsable one is empty with a warning (it is OpenClaw's file: its problems must not take
/// the key pool down).
pub fn load(path: &Path) -> AuthConfig {
    let mut cfg = AuthConfig::default();
    let text = match read(path) {
        Ok(Some(t)) => t,
        Ok(None) => return cfg,
        Err(e) => {
            cfg.warnings.push(format!(
                "{}: {e}; its auth.order and auth.profiles are not used",
                path.display()
            ));
            return cfg;
        }
    };
    let doc = match parse(&text) {
        Ok(v) => v,
        Err(where_) => {
            cfg.warnings.push(format!(
                "{} does not parse ({where_}); its auth.order and auth.profiles are not used",
                path.display()
            ));
            return cfg;
        }
    };
    let Some(auth) = doc.get("auth") else {
        return cfg;
    };
    if let Some(order) = auth.get("order").and_then(Value::as_object) {
        for (provider, ids) in order {
            let Some(ids) = ids.as_array() else {
                cfg.warnings.push(format!(
                    "{}: auth.order.{} is not a list; skipped",
                    path.display(),
                    shown_key(provider)
                ));
                continue;
            };
            let ids: Vec<String> = ids
                .iter()
                .filter_map(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            cfg.order.insert(normalize(provider), ids);
        }
    }
    if let Some(profiles) = auth.get("profiles").and_then(Value::as_object) {
        for (id, entry) in profiles {
            let field = |k: &str| entry.get(k).and_then(Value::as_str).map(normalize);
            cfg.profiles.insert(
                id.trim().to_owned(),
                ConfiguredProfile {
                    provider: field("provider"),
                    mode: field("mode"),
                },
            );
        }
    }
    cfg
}

impl AuthConfig {
    /// `auth.order.<provider>`, when the file has one (an empty list is an order too: OpenClaw
    /// reads it as "select no profile").
    pub fn order_for(&self, provider: &str) -> Option<&[String]> {
        self.order.get(provider).map(Vec::as_slice)
    }

    /// Whether `auth.profiles` lists any profile of `provider`: then only those are stored
    /// candidates when no explicit order applies.
    pub fn restricts(&self, provider: &str) -> bool {
        self.profiles
            .values()
            .any(|p| p.provider.as_deref() == Some(provider))
    }

    /// Whether `auth.profiles` lists `id` for `provider`.
    pub fn lists(&self, id: &str, provider: &str) -> bool {
        self.profiles
            .get(id)
            .is_some_and(|p| p.provider.as_deref() == Some(provider))
    }

    /// OpenClaw's eligibility rule for a stored profile (`resolveAuthProfileEligibility`): when
    /// `auth.profiles.<id>` exists, its provider must match and its mode must equal the
    /// stored type, except that `mode: "oauth"` also admits a `token`.
    pub fn eligibility(&self, id: &str, provider: &str, kind: Kind) -> Result<(), Ineligible> {
        let Some(p) = self.profiles.get(id) else {
            return Ok(());
        };
        if p.provider.as_deref().is_some_and(|q| q != provider) {
            return Err(Ineligible::ProviderMismatch);
        }
        match p.mode.as_deref() {
            None => Ok(()),
            Some(m) if m == kind.as_str() => Ok(()),
            Some("oauth") if kind == Kind::Token => Ok(()),
            Some(m) => Err(Ineligible::ModeMismatch {
                mode: if matches!(m, "api_key" | "token" | "oauth") {
                    m.to_owned()
                } else {
                    "(not a mode)".to_owned()
                },
            }),
        }
    }
}

impl Ineligible {
    /// The reason code in status and probe output.
    pub fn code(&self) -> &'static str {
        match self {
            Ineligible::ProviderMismatch => "provider_mismatch",
            Ineligible::ModeMismatch { .. } => "mode_mismatch",
        }
    }

    /// A sentence for status output and logs.
    pub fn detail(&self, kind: Kind) -> String {
        match self {
            Ineligible::ProviderMismatch => {
                "openclaw.json auth.profiles names another provider for this profile.".to_owned()
            }
            Ineligible::ModeMismatch { mode } => format!(
                "openclaw.json auth.profiles says mode {mode}, but the stored profile is {}.",
                kind.as_str()
            ),
        }
    }
}

/// A change to `openclaw.json` made by a keygate command.
#[derive(Clone, Copy, Debug)]
pub enum Edit<'a> {
    /// `remove`: drop `id` from `auth.profiles` and from every `auth.order` list, deleting a
    /// list that becomes empty (as OpenClaw's `removeAuthProfileConfig`: an authored empty
    /// order would mean "select no profile").
    Remove {
        /// Profile id.
        id: &'a str,
    },
    /// A paste into a provider that `auth.profiles` restricts: add (or correct)
    /// `auth.profiles.<id>` so the new profile is a candidate for OpenClaw and keygate.
    Upsert {
        /// Profile id.
        id: &'a str,
        /// Its provider.
        provider: &'a str,
        /// Its kind, as OpenClaw's `mode`.
        kind: Kind,
    },
}

/// What [`update`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file was rewritten.
    Written,
    /// Nothing to change (or no file).
    Unchanged,
    /// The file needed a change but is not plain JSON (comments, JSON5): it was left as it
    /// is, and the user is told what to change.
    NotPlainJson,
}

/// Applies `edit` to the file at `path` under `openclaw.json.lock`.
///
/// Errors: the file cannot be read or written, or it is locked by a live writer.
pub fn update(path: &Path, edit: Edit<'_>) -> Result<Outcome, StoreError> {
    if !path.exists() {
        return Ok(Outcome::Unchanged);
    }
    let _lock = super::write::lock(path)?;
    let Some(text) = read(path)? else {
        return Ok(Outcome::Unchanged);
    };
    let mut doc: Value = match serde_json::from_str(&text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Ok(Outcome::Unchanged),
        Err(_) => {
            return Ok(match parse(&text) {
                Ok(v) if needs(&v, edit) => Outcome::NotPlainJson,
                _ => Outcome::Unchanged,
            })
        }
    };
    if !apply(&mut doc, edit) {
        return Ok(Outcome::Unchanged);
    }
    let mut out = serde_json::to_string_pretty(&doc).map_err(|e| StoreError::Database {
        what: path.display().to_string(),
        message: e.to_string(),
    })?;
    if text.ends_with('\n') {
        out.push('\n');
    }
    super::write::write_atomic(path, out.as_bytes())?;
    Ok(Outcome::Written)
}

/// Whether `edit` would change `doc`.
fn needs(doc: &Value, edit: Edit<'_>) -> bool {
    apply(&mut doc.clone(), edit)
}

/// Applies `edit` to a parsed document; true when something changed.
fn apply(doc: &mut Value, edit: Edit<'_>) -> bool {
    match edit {
        Edit::Remove { id } => {
            let Some(auth) = doc.get_mut("auth").and_then(Value::as_object_mut) else {
                return false;
            };
            let mut changed = auth
                .get_mut("profiles")
                .and_then(Value::as_object_mut)
                .is_some_and(|p| p.shift_remove(id).is_some());
            if let Some(order) = auth.get_mut("order").and_then(Value::as_object_mut) {
                let mut emptied = Vec::new();
                for (provider, ids) in order.iter_mut() {
                    let Some(list) = ids.as_array_mut() else {
                        continue;
                    };
                    let before = list.len();
                    list.retain(|v| v.as_str().map(str::trim) != Some(id));
                    if list.len() != before {
                        changed = true;
                        if list.is_empty() {
                            emptied.push(provider.clone());
                        }
                    }
                }
                for p in emptied {
                    order.shift_remove(&p);
                }
            }
            changed
        }
        Edit::Upsert { id, provider, kind } => {
            let restricted = doc
                .get("auth")
                .and_then(|a| a.get("profiles"))
                .and_then(Value::as_object)
                .is_some_and(|ps| {
                    ps.values().any(|p| {
                        p.get("provider")
                            .and_then(Value::as_str)
                            .map(normalize)
                            .as_deref()
                            == Some(provider)
                    })
                });
            let profiles = doc
                .get_mut("auth")
                .and_then(|a| a.get_mut("profiles"))
                .and_then(Value::as_object_mut);
            let Some(profiles) = profiles else {
                return false;
            };
            match profiles.get_mut(id).and_then(Value::as_object_mut) {
                // Already listed: keep every field, correct only what would make it ineligible.
                Some(entry) => {
                    let mut changed = false;
                    if entry.get("provider").and_then(Value::as_str) != Some(provider) {
                        entry.insert("provider".into(), Value::from(provider));
                        changed = true;
                    }
                    let mode_ok = match entry.get("mode").and_then(Value::as_str) {
                        Some(m) => m == kind.as_str() || (m == "oauth" && kind == Kind::Token),
                        None => true,
                    };
                    if !mode_ok {
                        entry.insert("mode".into(), Value::from(kind.as_str()));
                        changed = true;
                    }
                    changed
                }
                // A provider with listed profiles: a new one is invisible until listed.
                None if restricted => {
                    let mut entry = Map::new();
                    entry.insert("provider".into(), Value::from(provider));
                    entry.insert("mode".into(), Value::from(kind.as_str()));
                    profiles.insert(id.to_owned(), Value::Object(entry));
                    true
                }
                None => false,
            }
        }
    }
}

/// The file's text, bounded; `None` when it does not exist.
fn read(path: &Path) -> Result<Option<String>, StoreError> {
    use std::io::Read;
    let real = super::confine(path)?;
    let Some(f) = super::guard::open_read(&real, path)? else {
        return Ok(None);
    };
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
    if text.len() > MAX_CONFIG_BYTES {
        return Err(StoreError::Database {
            what: path.display().to_string(),
            message: format!("larger than {} MiB", MAX_CONFIG_BYTES >> 20),
        });
    }
    Ok(Some(text))
}

/// Plain JSON first (what OpenClaw writes), then JSON5 (what a user may write by hand).
/// The error names a position only, never the text.
fn parse(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        // json5 has no recursion limit: a deeply nested file would overflow the stack.
        Err(plain) if nesting_exceeds(text, MAX_NESTING) => Err(format!(
            "line {}, column {}: nested deeper than {MAX_NESTING}",
            plain.line(),
            plain.column()
        )),
        Err(plain) => json5::from_str::<Value>(text)
            .map_err(|_| format!("line {}, column {}", plain.line(), plain.column())),
    }
}

/// serde_json's own recursion limit.
const MAX_NESTING: usize = 128;

/// Whether brackets outside strings nest deeper than `max` (a conservative scan: comments
/// are counted too, which can only make it refuse more).
fn nesting_exceeds(text: &str, max: usize) -> bool {
    let (mut depth, mut quote, mut escaped) = (0usize, None::<u8>, false);
    for &b in text.as_bytes() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    false
}

/// Provider keys and modes are compared as OpenClaw normalises them (trimmed, lower case).
fn normalize(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

/// A key from the file, shown only when it has the shape of a provider id.
fn shown_key(k: &str) -> String {
    if super::is_provider_id(k) {
        k.to_owned()
    } else {
        "(a key that is not a provider id)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r#"{
  "auth": {
    "profiles": {
      "anthropic:work": { "provider": "anthropic", "mode": "api_key" },
      "anthropic:setup-token": { "provider": "anthropic", "mode": "token" },
      "openai:default": { "provider": "openai", "mode": "api_key", "email": "a@b.c" }
    },
    "order": { "anthropic": ["anthropic:setup-token", "anthropic:work"], "openai": ["openai:default"] }
  },
  "meta": { "lastTouchedVersion": "2026.9.6" }
}
"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_order_and_profiles_as_openclaw_writes_them() {
        let (_d, path) = write(FIXTURE);
        let c = load(&path);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(
            c.order_for("anthropic"),
            Some(
                &[
                    "anthropic:setup-token".to_owned(),
                    "anthropic:work".to_owned()
                ][..]
            )
        );
        assert!(c.restricts("anthropic") && c.restricts("openai") && !c.restricts("groq"));
        assert!(c.lists("anthropic:work", "anthropic") && !c.lists("anthropic:x", "anthropic"));
        assert_eq!(
            c.eligibility("anthropic:work", "anthropic", Kind::ApiKey),
            Ok(())
        );
        assert_eq!(
            c.eligibility("anthropic:work", "anthropic", Kind::Token),
            Err(Ineligible::ModeMismatch {
                mode: "api_key".into()
            })
        );
        assert_eq!(
            c.eligibility("openai:default", "anthropic", Kind::ApiKey),
            Err(Ineligible::ProviderMismatch)
        );
        assert_eq!(c.eligibility("other:x", "other", Kind::OAuth), Ok(()));
    }

    #[test]
    fn a_deeply_nested_file_is_a_warning_not_a_stack_overflow() {
        let (_d, path) = write(&format!("// x\n{}", "[".repeat(1 << 20)));
        let c = load(&path);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("nested deeper"), "{:?}", c.warnings);
        assert!(!nesting_exceeds(r#"{"a": "[[[[[[", 'b': [[1]]}"#, 3));
        assert!(nesting_exceeds("[[[", 2));
    }

    #[test]
    fn oauth_mode_admits_a_token() {
        let (_d, path) = write(
            r#"{"auth":{"profiles":{"anthropic:a":{"provider":"anthropic","mode":"oauth"}}}}"#,
        );
        let c = load(&path);
        assert_eq!(
            c.eligibility("anthropic:a", "anthropic", Kind::Token),
            Ok(())
        );
        assert!(c
            .eligibility("anthropic:a", "anthropic", Kind::ApiKey)
            .is_err());
    }

    #[test]
    fn json5_is_read_and_a_broken_file_is_a_warning_without_its_text() {
        let (_d, path) = write(
            "// my config\n{ auth: { order: { anthropic: ['anthropic:b', 'anthropic:a',], }, }, }\n",
        );
        let c = load(&path);
        assert_eq!(c.order["anthropic"], ["anthropic:b", "anthropic:a"]);
        let (_d2, bad) = write("{ \"auth\": { \"order\": \"sk-ant-api03-SECRET\" ");
        let c = load(&bad);
        assert!(c.order.is_empty());
        assert_eq!(c.warnings.len(), 1);
        assert!(!c.warnings[0].contains("SECRET"), "{:?}", c.warnings);
        assert!(c.warnings[0].contains("line 1"), "{:?}", c.warnings);
        assert_eq!(
            load(&bad.with_file_name("missing.json")),
            AuthConfig::default()
        );
    }

    #[test]
    fn remove_drops_the_id_everywhere_and_keeps_the_rest_byte_for_byte() {
        let (_d, path) = write(FIXTURE);
        // OpenClaw's layout: what serde_json pretty-prints is what OpenClaw wrote.
        let canonical =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(FIXTURE).unwrap()).unwrap()
                + "\n";
        std::fs::write(&path, &canonical).unwrap();
        let remove = || {
            update(
                &path,
                Edit::Remove {
                    id: "openai:default",
                },
            )
            .unwrap()
        };
        assert_eq!(remove(), Outcome::Written);
        let after = std::fs::read_to_string(&path).unwrap();
        let mut expected: Value = serde_json::from_str(&canonical).unwrap();
        expected["auth"]["profiles"]
            .as_object_mut()
            .unwrap()
            .shift_remove("openai:default");
        expected["auth"]["order"]
            .as_object_mut()
            .unwrap()
            .shift_remove("openai");
        assert_eq!(
            after,
            serde_json::to_string_pretty(&expected).unwrap() + "\n"
        );
        assert!(after.contains("\"meta\""));
        assert!(!path.with_file_name("openclaw.json.lock").exists());
        assert_eq!(remove(), Outcome::Unchanged);
    }

    #[test]
    fn upsert_lists_a_new_profile_only_where_the_provider_is_restricted() {
        let (_d, path) = write(FIXTURE);
        let edit = |id, provider, kind| Edit::Upsert { id, provider, kind };
        assert_eq!(
            update(&path, edit("groq:a", "groq", Kind::ApiKey)).unwrap(),
            Outcome::Unchanged
        );
        assert_eq!(
            update(&path, edit("anthropic:new", "anthropic", Kind::ApiKey)).unwrap(),
            Outcome::Written
        );
        let c = load(&path);
        assert!(c.lists("anthropic:new", "anthropic"));
        // A replaced profile of another kind gets its mode corrected, other fields kept.
        update(&path, edit("openai:default", "openai", Kind::Token)).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["auth"]["profiles"]["openai:default"]["mode"], "token");
        assert_eq!(v["auth"]["profiles"]["openai:default"]["email"], "a@b.c");
    }

    #[test]
    fn a_json5_file_that_needs_a_change_is_left_alone() {
        let text = "// hand-written\n{ auth: { profiles: { 'anthropic:a': { provider: 'anthropic', mode: 'api_key' } } } }\n";
        let (_d, path) = write(text);
        assert_eq!(
            update(&path, Edit::Remove { id: "anthropic:a" }).unwrap(),
            Outcome::NotPlainJson
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
