//! OpenClaw-compatible state files (SPEC §6): loading, and (in [`write`]) writing.
//!
//! Owns: where an agent's files live ([`agent_dir`]), reading `auth-profiles.json` into
//! [`Profile`]s — canonical `{ "version": 1, "profiles": { … } }` and the legacy flat shape,
//! leniently (`mode` → `type`, `apiKey` → `key`, bad entries skipped with a warning that
//! names them) — resolving secret references ([`resolve_ref`]: `env` here, `file`/`exec`
//! through `secret_ref`), reading `auth-state.json` ([`AuthState`]: explicit orders plus
//! every other member kept as found), the Claude Code credentials as `anthropic:claude-cli`
//! ([`load_agent_profiles`]), and the write discipline ([`write`]: lock, re-read, atomic
//! 0600 replace, legacy rewrite for `doctor --fix`).
//!
//! It does not own: OAuth refresh (`oauth`), hot reload, or the choice between candidates
//! (`pool`). No secret value ever appears in a warning or an error from this module.

pub use super::secret_ref::{SecretRef, SecretSource};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::env::EnvSnapshot;
use super::secret_ref::SecretProviders;
use super::{Credential, CredentialId, Kind, Source};
use crate::secret::Secret;

/// File name of the credential store inside an agent directory.
pub const PROFILES_FILE: &str = "auth-profiles.json";

/// File name of the non-secret state (orders, `lastGood`, `usageStats`).
pub const AUTH_STATE_FILE: &str = "auth-state.json";

/// The profiles of one `auth-profiles.json`.
#[derive(Clone, Debug, Default)]
pub struct ProfileSet {
    /// Loaded profiles, sorted by id. Includes unusable ones (see [`Profile::secret`]).
    pub profiles: Vec<Profile>,
    /// One line per skipped entry (naming it) or oddity; never a secret.
    pub warnings: Vec<String>,
    /// The file is in the legacy flat shape (`doctor --fix` rewrites it).
    pub legacy_flat: bool,
    /// Ids of profiles managed by another tool (the Claude Code sync, `anthropic:claude-cli`):
    /// keygate never refreshes nor writes them.
    pub managed_ids: Vec<String>,
}

/// One stored profile.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Profile id as stored (`anthropic:work`; `<provider>:default` for legacy entries).
    pub id: String,
    /// Provider id (`anthropic`).
    pub provider: String,
    /// `api_key`, `token` or `oauth`.
    pub kind: Kind,
    /// The secret (trimmed): the key, the token, or the OAuth access token; or why the
    /// profile has no usable secret.
    pub secret: Result<Secret, ProfileProblem>,
    /// Expiry of a token or OAuth access token; always [`Expires::None`] for api keys.
    pub expires: Expires,
    /// OAuth refresh token (trimmed, non-empty), when stored.
    pub refresh: Option<Secret>,
    /// `email`, when stored.
    pub email: Option<String>,
    /// `displayName`, when stored.
    pub display_name: Option<String>,
}

/// The `expires` field of a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expires {
    /// Absent or `null`.
    None,
    /// Epoch milliseconds (a finite number > 0; fractions are truncated).
    At(i64),
    /// Present but not a finite number > 0 (`invalid_expires`).
    Invalid,
}

/// Why a profile has no usable secret. Never carries a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProfileProblem {
    /// No key / token / access token stored, or it is empty.
    #[error("no secret is stored in this profile")]
    MissingSecret,
    /// A secret reference that cannot be resolved now; the text says why.
    #[error("secret reference is unresolved: {0}")]
    UnresolvedRef(String),
    /// An `oauth` profile carrying a SecretRef (or `${VAR}`) in `field`.
    #[error("OAuth + SecretRef is not supported (field {field}); store the OAuth tokens directly")]
    OAuthSecretRef {
        /// The offending field: `access`, `refresh`, `accessRef`, `refreshRef`, `keyRef`,
        /// `tokenRef`, `key` or `token`.
        field: &'static str,
    },
}

/// The non-secret `auth-state.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthState {
    /// `order.<provider>`: explicit credential ids, in order (empty and repeated ids dropped).
    pub order: BTreeMap<String, Vec<String>>,
    /// Every other top-level member (`version`, `lastGood`, `usageStats`, …) as found, so a
    /// writer can preserve them.
    pub extra: Map<String, Value>,
    /// Entries of `order` that were ignored, naming them.
    pub warnings: Vec<String>,
}

/// A state file that cannot be read or parsed. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}; check that it is a readable file owned by this user")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error(
        "cannot parse {path} at line {line}, column {column}: {message}; fix the JSON there (keygate never overwrites a file it cannot parse)"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong (never the file's content).
        message: String,
    },
    /// A write (temp file, rename, directory, lock file) failed.
    #[error("cannot write {path}: {source}; check that the directory is writable by this user")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A live process held the lock through every retry (10 s).
    #[error(
        "{path} is held by another running process (keygate or OpenClaw); gave up after waiting 10 s: try again, or remove the lock file if no keygate or openclaw process is running"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A state file, directory or lock is a symbolic link that leads out of the state
    /// directory (or does not resolve): never followed (SPEC §6).
    #[error(
        "{path} is a symbolic link that leads out of the state directory (or nowhere); keygate does not follow it: replace the link with the file or directory itself"
    )]
    Symlink {
        /// The link, as the caller named it.
        path: PathBuf,
    },
    /// An OpenClaw database cannot be read or written; `what` names it and the row.
    #[error("{what}: {message}")]
    Database {
        /// `cannot read <db> (table …, row …)`.
        what: String,
        /// SQLite's reason (never a row's content).
        message: String,
    },
    /// An OpenClaw database of a schema newer than keygate knows: read, never written.
    #[error(
        "{path} was written by a newer OpenClaw (schema {version}; keygate writes up to {known}); keygate does not change it: use the openclaw CLI, or upgrade keygate"
    )]
    NewerSchema {
        /// The database.
        path: PathBuf,
        /// Its `user_version`.
        version: i64,
        /// The newest keygate writes.
        known: i64,
    },
    /// `auth.sharedStore` in `state/openclaw.sqlite` holds a value OpenClaw itself refuses.
    #[error(
        "{path}: row auth.sharedStore is not {{\"location\":\"state-db\"}} nor {{\"location\":\"legacy-main\"}}; run `openclaw doctor --fix`"
    )]
    SharedStoreOwnership {
        /// The state database.
        path: PathBuf,
    },
    /// The state dir is in OpenClaw's SQLite era but has no database to write into (its
    /// JSON files were never imported).
    #[error(
        "{path} does not exist: this state dir is used by OpenClaw 2026.6 or later (it has {marker}), but its credentials were never moved into SQLite; run `openclaw doctor --fix` first (keygate does not create OpenClaw's databases, nor JSON files OpenClaw would refuse)"
    )]
    NoDatabase {
        /// The database a write needs.
        path: PathBuf,
        /// What shows the SQLite era.
        marker: String,
    },
    /// A SQLite dir whose databases hold no profile, while a leftover `auth-profiles.json`
    /// does (and is what is served): a write must wait for the import.
    #[error(
        "{path} holds the profiles in use, but this state dir keeps them in OpenClaw's SQLite store; run `keygate doctor --fix` to import it first (a write now would hide them)"
    )]
    ImportPending {
        /// The leftover file.
        path: PathBuf,
    },
    /// A write was asked of a legacy flat `auth-profiles.json`.
    #[error(
        "{path} is in the legacy flat format; run `keygate doctor --fix` to rewrite it in the canonical shape first"
    )]
    LegacyFlat {
        /// The file.
        path: PathBuf,
    },
}

pub mod backend;
mod claude;
mod guard;
pub mod openclaw_json;
pub mod sqlite;
pub mod write;

pub use backend::{AgentStore, Backend, SharedAt};

pub(crate) use claude::claude_cli_from_str;
pub use claude::{claude_credentials_path, load_claude_cli, CLAUDE_CLI_PROFILE};
pub use guard::{check_state_dir, chmod_nofollow, confine, confine_in, UnsafeStateDir};

/// Used only to locate a non-object `profiles` member for the error position.
#[derive(Deserialize)]
struct ProfilesShape {
    #[allow(dead_code)]
    profiles: BTreeMap<String, IgnoredAny>,
}

/// `<state>/agents/<agent>/agent`.
pub fn agent_dir(state_dir: &Path, agent: &str) -> PathBuf {
    state_dir.join("agents").join(agent).join("agent")
}

/// Loads an agent's profiles as every command and the proxy see them: from the store the
/// state dir uses ([`AgentStore`]: `<state>/agents/<agent>/agent/auth-profiles.json`, or
/// OpenClaw's SQLite rows), plus the Claude Code credentials as
/// `anthropic:claude-cli` ([`load_claude_cli`]) unless a stored profile has that id. A
/// Claude Code file that cannot be read is a warning, never an error.
///
/// Errors as for [`load_profiles`].
pub fn load_agent_profiles(
    state_dir: &Path,
    agent: &str,
    env: &EnvSnapshot,
    secrets: &SecretProviders,
) -> Result<ProfileSet, StoreError> {
    let mut set = AgentStore::open(state_dir, agent)?.load_profiles(env, secrets)?;
    if !set.profiles.iter().any(|p| p.id == CLAUDE_CLI_PROFILE) {
        match load_claude_cli(env) {
            Ok(Some(p)) => {
                set.managed_ids.push(p.id.clone());
                set.profiles.push(p);
                set.profiles.sort_by(|a, b| a.id.cmp(&b.id));
            }
            Ok(None) => {}
            Err(w) => set.warnings.push(w),
        }
    }
    Ok(set)
}

/// Loads `auth-profiles.json`. A missing file is an empty set.
///
/// Errors: [`StoreError::Io`] when it exists but cannot be read, [`StoreError::Parse`] when
/// it is not a JSON object (with line and column).
pub fn load_profiles(
    path: &Path,
    env: &EnvSnapshot,
    secrets: &SecretProviders,
) -> Result<ProfileSet, StoreError> {
    match read_optional(path)? {
        Some(text) => load_profiles_from_str(&text, path, env, secrets),
        None => Ok(ProfileSet::default()),
    }
}

/// Parses the text of an `auth-profiles.json`; `path_for_messages` names it in warnings and
/// errors.
pub fn load_profiles_from_str(
    text: &str,
    path_for_messages: &Path,
    env: &EnvSnapshot,
    secrets: &SecretProviders,
) -> Result<ProfileSet, StoreError> {
    let mut top: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| parse_error(path_for_messages, &e))?;
    let mut set = ProfileSet::default();

    if let Some(profiles) = top.shift_remove("profiles") {
        let Value::Object(entries) = profiles else {
            return Err(profiles_shape_error(text, path_for_messages));
        };
        if top.get("version").is_some_and(|v| v.as_u64() != Some(1)) {
            // Never the value: a mutated file can hold anything there, a secret included.
            set.warnings.push(format!(
                "{}: \"version\" is not 1; reading it as version 1",
                path_for_messages.display()
            ));
        }
        for (id, entry) in &entries {
            match parse_entry(id, entry, None, env, secrets) {
                Ok(p) => set.profiles.push(p),
                Err(why) => set.warnings.push(skipped(id, &why)),
            }
        }
    } else if top.values().any(Value::is_object) {
        set.legacy_flat = true;
        set.warnings.push(format!(
            "{} is in the legacy flat format (no \"profiles\" key); its entries were read as \
             <provider>:default profiles; run `keygate doctor --fix` to rewrite it",
            path_for_messages.display()
        ));
        for (provider, entry) in &top {
            if provider == "version" {
                continue;
            }
            let id = format!("{provider}:default");
            match parse_entry(&id, entry, Some(provider), env, secrets) {
                Ok(p) => set.profiles.push(p),
                Err(why) => set.warnings.push(skipped(&id, &why)),
            }
        }
    }
    // else: `{}` or `{"version": 1}`: an empty canonical store.

    set.profiles.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(set)
}

/// Loads an agent's non-secret state from the store the state dir uses ([`AgentStore`]).
pub fn load_agent_state(state_dir: &Path, agent: &str) -> Result<AuthState, StoreError> {
    AgentStore::open(state_dir, agent)?.load_state()
}

/// Loads `auth-state.json`. A missing file is the default (no orders).
///
/// Lenient inside `order`: a provider whose value is not an array, and ids that are not
/// strings, are ignored with a warning. Errors as for [`load_profiles`].
pub fn load_auth_state(path: &Path) -> Result<AuthState, StoreError> {
    let Some(text) = read_optional(path)? else {
        return Ok(AuthState::default());
    };
    auth_state_from_str(&text, path)
}

/// Parses the text of an `auth-state.json`; `path` names it in warnings and errors.
pub(crate) fn auth_state_from_str(text: &str, path: &Path) -> Result<AuthState, StoreError> {
    let mut extra: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| parse_error(path, &e))?;
    let mut state = AuthState::default();
    match extra.shift_remove("order") {
        None | Some(Value::Null) => {}
        Some(Value::Object(order)) => {
            for (provider, ids) in order {
                let Value::Array(ids) = ids else {
                    state.warnings.push(format!(
                        "{}: {} is not a list of credential ids; ignored",
                        path.display(),
                        order_key(&provider)
                    ));
                    continue;
                };
                let mut list: Vec<String> = Vec::with_capacity(ids.len());
                for (i, id) in ids.iter().enumerate() {
                    match id.as_str().map(str::trim) {
                        Some(id) if !id.is_empty() => {
                            if !list.iter().any(|x| x == id) {
                                list.push(id.to_owned());
                            }
                        }
                        _ => state.warnings.push(format!(
                            "{}: {}[{i}] is not a credential id; ignored",
                            path.display(),
                            order_key(&provider)
                        )),
                    }
                }
                state.order.insert(provider, list);
            }
        }
        Some(_) => state.warnings.push(format!(
            "{}: \"order\" is not an object of provider lists; ignored",
            path.display()
        )),
    }
    state.extra = extra;
    Ok(state)
}

/// Resolves a secret reference. The one place every reference goes through: `env` reads
/// the snapshot; `file` and `exec` go through [`super::secret_ref::resolve`] with the
/// config's `[secrets.providers]`.
///
/// Errors (the reason, never a secret): empty id, variable unset or empty, provider not
/// configured, and every `file`/`exec` rule of SPEC §6.
pub fn resolve_ref(
    r: &SecretRef,
    env: &EnvSnapshot,
    secrets: &SecretProviders,
) -> Result<Secret, String> {
    match r.source {
        SecretSource::Env => {
            if r.id.is_empty() {
                return Err("env secret reference has an empty id".to_owned());
            }
            match env.get(&r.id).map(str::trim) {
                Some(v) if !v.is_empty() => Ok(Secret::new(v)),
                _ => Err(format!("env var {} is not set", r.id)),
            }
        }
        SecretSource::File | SecretSource::Exec => super::secret_ref::resolve(r, secrets, env),
    }
}

// === impl Profile ===

impl Profile {
    /// The usable credential, or `None` when the secret is a [`ProfileProblem`] or the
    /// expiry is [`Expires::Invalid`] (`invalid_expires` makes a profile unusable, SPEC §1).
    /// An expired one is still returned: OAuth refreshes it, and the pool reports it.
    pub fn credential(&self) -> Option<Credential> {
        let secret = self.secret.as_ref().ok()?.clone();
        let expires_ms = match self.expires {
            Expires::None => None,
            Expires::At(ms) => Some(ms),
            Expires::Invalid => return None,
        };
        Some(Credential {
            id: CredentialId::new(self.id.as_str()),
            provider: Arc::from(self.provider.as_str()),
            kind: self.kind,
            source: Source::Profile,
            secret,
            expires_ms,
        })
    }
}

// === impl SecretRef ===

impl SecretRef {
    /// Reads a reference object. Errors say what is wrong with its shape.
    fn from_object(obj: &Map<String, Value>) -> Result<Self, String> {
        let source = match obj.get("source").and_then(Value::as_str).map(str::trim) {
            Some("env") => SecretSource::Env,
            Some("file") => SecretSource::File,
            Some("exec") => SecretSource::Exec,
            Some(_) => return Err("secret reference has an unknown source".to_owned()),
            None => return Err("secret reference has no source".to_owned()),
        };
        let provider = obj
            .get("provider")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or("default")
            .to_owned();
        let id = match obj.get("id") {
            Some(Value::String(id)) => id.trim().to_owned(),
            _ => return Err("secret reference has no id".to_owned()),
        };
        Ok(Self {
            source,
            provider,
            id,
        })
    }

    /// `${ENV_NAME}` (the whole trimmed string) as an env reference.
    fn from_template(s: &str) -> Option<Self> {
        let name = s.trim().strip_prefix("${")?.strip_suffix('}')?;
        let mut chars = name.chars();
        let first = chars.next()?;
        let valid = (first.is_ascii_alphabetic() || first == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        valid.then(|| Self {
            source: SecretSource::Env,
            provider: "default".to_owned(),
            id: name.to_owned(),
        })
    }
}

/// Reads a state file, `None` when it does not exist. A symbolic link is followed only
/// while it stays inside the state directory ([`confine`]); the last step never follows
/// one (`O_NOFOLLOW`).
fn read_optional(path: &Path) -> Result<Option<String>, StoreError> {
    use std::io::Read;
    let real = confine(path)?;
    let Some(mut f) = guard::open_read(&real, path)? else {
        return Ok(None);
    };
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(Some(text))
}

/// A parse error with position, whose message never quotes the file (serde_json's
/// "invalid type" messages would quote a string value).
fn parse_error(path: &Path, e: &serde_json::Error) -> StoreError {
    use serde_json::error::Category;
    let message = match e.classify() {
        Category::Data => "expected a JSON object at the top level".to_owned(),
        Category::Syntax | Category::Eof | Category::Io => {
            let full = e.to_string();
            let pos = format!(" at line {} column {}", e.line(), e.column());
            full.strip_suffix(&pos).unwrap_or(&full).to_owned()
        }
    };
    StoreError::Parse {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        message,
    }
}

/// The error for a `profiles` member that is not an object, positioned at it.
fn profiles_shape_error(text: &str, path: &Path) -> StoreError {
    let (line, column) = match serde_json::from_str::<ProfilesShape>(text) {
        Err(e) => (e.line(), e.column()),
        Ok(_) => (1, 1),
    };
    StoreError::Parse {
        path: path.to_owned(),
        line,
        column,
        message: "\"profiles\" must be an object mapping profile ids to profiles".to_owned(),
    }
}

/// `order.<provider>`, or `an entry of "order"` when the key is not a provider id (it is
/// never echoed then: it could be anything, a secret included).
fn order_key(provider: &str) -> String {
    if is_provider_id(provider) {
        format!("order.{provider}")
    } else {
        "an entry of \"order\" (its provider is not a provider id)".to_owned()
    }
}

pub use crate::provider::is_provider_id;

/// `id` when it has the shape of a credential id (`provider:name`, `env:VAR#N`) and may be
/// shown in a message about a value read from a file; `None` for anything else, which is
/// then named by its position only (it could be a secret pasted in the wrong place).
pub fn shown_id(id: &str) -> Option<&str> {
    let (head, tail) = id.split_once(':')?;
    let ok = id.len() <= 64
        && is_provider_id(head)
        && !tail.is_empty()
        && tail.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b'#' | b':')
        });
    ok.then_some(id)
}

fn skipped(id: &str, why: &str) -> String {
    format!("auth profile \"{id}\" skipped: {why}")
}

/// Reads one entry. `legacy_provider` is the top-level key of a legacy flat entry.
/// Errors are the reason the entry is skipped.
fn parse_entry(
    id: &str,
    entry: &Value,
    legacy_provider: Option<&str>,
    env: &EnvSnapshot,
    secrets: &SecretProviders,
) -> Result<Profile, String> {
    if id.trim().is_empty() {
        return Err("its id is empty".to_owned());
    }
    let Value::Object(obj) = entry else {
        return Err("not a JSON object".to_owned());
    };
    let kind = match obj.get("type").or_else(|| obj.get("mode")) {
        Some(Value::String(t)) => parse_kind(t).ok_or_else(|| unknown_type(t))?,
        Some(_) => return Err("its type is not a string".to_owned()),
        None => infer_kind(obj).ok_or("it has no type and none can be inferred from its fields")?,
    };
    // A legacy entry's provider is its top-level key, which may be empty too.
    let provider = match legacy_provider {
        Some(p) => Some(p),
        None => obj.get("provider").and_then(Value::as_str),
    }
    .map(str::trim)
    .filter(|p| !p.is_empty())
    .ok_or("it has no provider")?
    .to_owned();
    if !is_provider_id(&provider) {
        // Such a profile can never serve a provider; and its value is not echoed.
        return Err(
            "its provider is not a provider id (lowercase letters, digits, '_' and '-')".to_owned(),
        );
    }

    let (secret, expires, refresh) = match kind {
        Kind::ApiKey => (
            secret_field(obj, &["key", "apiKey"], "keyRef", env, secrets),
            Expires::None,
            None,
        ),
        Kind::Token => (
            secret_field(obj, &["token"], "tokenRef", env, secrets),
            parse_expires(obj.get("expires")),
            None,
        ),
        Kind::OAuth => {
            let (secret, refresh) = oauth_secrets(obj);
            (secret, parse_expires(obj.get("expires")), refresh)
        }
    };

    let text = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Ok(Profile {
        id: id.to_owned(),
        provider,
        kind,
        secret,
        expires,
        refresh,
        email: text("email"),
        display_name: text("displayName"),
    })
}

fn parse_kind(t: &str) -> Option<Kind> {
    match t.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "api_key" | "apikey" => Some(Kind::ApiKey),
        "token" => Some(Kind::Token),
        "oauth" => Some(Kind::OAuth),
        _ => None,
    }
}

fn unknown_type(_t: &str) -> String {
    // The field is named, never its value: it could be anything, even a secret pasted into
    // the wrong field.
    "its \"type\" is not api_key, token or oauth".to_owned()
}

/// SPEC §6 inference: `key`/`apiKey` → api_key, `token` → token,
/// `access`+`refresh`+`expires` → oauth (the `…Ref` forms count too).
fn infer_kind(obj: &Map<String, Value>) -> Option<Kind> {
    let has = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    if has("key") || has("apiKey") || has("keyRef") {
        Some(Kind::ApiKey)
    } else if has("token") || has("tokenRef") {
        Some(Kind::Token)
    } else if has("access") && has("refresh") && has("expires") {
        Some(Kind::OAuth)
    } else {
        None
    }
}

/// A key or token: the `…Ref` field wins when it is a well-formed reference (as in
/// OpenClaw), then the literal fields (a `${VAR}` template or a reference object there is a
/// reference too).
fn secret_field(
    obj: &Map<String, Value>,
    literal_keys: &[&str],
    ref_key: &str,
    env: &EnvSnapshot,
    secrets: &SecretProviders,
) -> Result<Secret, ProfileProblem> {
    let unresolved =
        |r: &SecretRef| resolve_ref(r, env, secrets).map_err(ProfileProblem::UnresolvedRef);
    let mut bad_ref = None;
    match obj.get(ref_key) {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => match SecretRef::from_object(o) {
            Ok(r) => return unresolved(&r),
            Err(why) => bad_ref = Some(format!("{ref_key}: {why}")),
        },
        Some(Value::String(s)) => match SecretRef::from_template(s) {
            Some(r) => return unresolved(&r),
            None => bad_ref = Some(format!("{ref_key} is not a secret reference")),
        },
        Some(_) => bad_ref = Some(format!("{ref_key} is not a secret reference")),
    }
    let literal = literal_keys
        .iter()
        .find_map(|k| obj.get(*k).filter(|v| !v.is_null()));
    match literal {
        Some(Value::String(s)) => match SecretRef::from_template(s) {
            Some(r) => unresolved(&r),
            None => {
                let s = s.trim();
                if s.is_empty() {
                    Err(bad_ref
                        .map_or(ProfileProblem::MissingSecret, ProfileProblem::UnresolvedRef))
                } else {
                    Ok(Secret::new(s))
                }
            }
        },
        Some(Value::Object(o)) => match SecretRef::from_object(o) {
            Ok(r) => unresolved(&r),
            Err(why) => Err(ProfileProblem::UnresolvedRef(why)),
        },
        _ => Err(bad_ref.map_or(ProfileProblem::MissingSecret, ProfileProblem::UnresolvedRef)),
    }
}

/// `access` (the secret) and `refresh` of an oauth profile; a reference in either is
/// [`ProfileProblem::OAuthSecretRef`].
fn oauth_secrets(obj: &Map<String, Value>) -> (Result<Secret, ProfileProblem>, Option<Secret>) {
    let is_ref = |k: &str| match obj.get(k) {
        Some(Value::Object(_)) => true,
        Some(Value::String(s)) => SecretRef::from_template(s).is_some(),
        _ => false,
    };
    for field in ["access", "refresh"] {
        if is_ref(field) {
            return (Err(ProfileProblem::OAuthSecretRef { field }), None);
        }
    }
    // `keyRef` / `tokenRef` (and a reference in `key` / `token`) would make the secret of
    // an oauth profile come from elsewhere: refused the same way (SPEC §6).
    for field in ["accessRef", "refreshRef", "keyRef", "tokenRef"] {
        if obj.get(field).is_some_and(|v| !v.is_null()) {
            return (Err(ProfileProblem::OAuthSecretRef { field }), None);
        }
    }
    for field in ["key", "token"] {
        if is_ref(field) {
            return (Err(ProfileProblem::OAuthSecretRef { field }), None);
        }
    }
    let plain = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
    };
    (
        plain("access").ok_or(ProfileProblem::MissingSecret),
        plain("refresh"),
    )
}

/// `expires`: absent or `null` → None; a finite number > 0 that fits in i64 → At (fractions
/// truncated); anything else → Invalid.
fn parse_expires(v: Option<&Value>) -> Expires {
    match v {
        None | Some(Value::Null) => Expires::None,
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return if i > 0 {
                    Expires::At(i)
                } else {
                    Expires::Invalid
                };
            }
            match n.as_f64() {
                // i64::MAX as f64 rounds up to 2^63, so `<` keeps the cast in range.
                Some(f) if f.is_finite() && f >= 1.0 && f < i64::MAX as f64 => {
                    Expires::At(f as i64)
                }
                _ => Expires::Invalid,
            }
        }
        Some(_) => Expires::Invalid,
    }
}

#[cfg(test)]
mod tests;
