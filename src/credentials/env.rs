//! Environment keys in SPEC §5 priority.
//!
//! Owns: the injected environment ([`EnvSnapshot`], built from the process environment plus
//! `<state-dir>/.env`, which never overrides), the SPEC §5 order of environment variables per
//! provider ([`env_credentials`]), env credential ids (`env:VAR`, `env:VAR#N`) and their
//! resolution ([`resolve_env_id`]).
//!
//! It does not own: deduplication across profiles and env, explicit orders (both
//! `pool::order`), cooldowns, or which header a secret goes in (`inject`). Nothing here mutates the process environment.
//!
//! Priority for a provider with prefix `P` (every step trims values and drops empty ones):
//!
//! 1. `OPENCLAW_LIVE_<P>_KEY`: when set, the only env key.
//! 2. Lists split on commas, semicolons and whitespace: for anthropic
//!    `OPENCLAW_LIVE_ANTHROPIC_KEYS` first, then `<P>_API_KEYS`. OpenClaw's
//!    `collectProviderApiKeys` reads `OPENCLAW_LIVE_ANTHROPIC_KEYS` in the list slot (before
//!    `ANTHROPIC_API_KEY`); SPEC §5 says it is read "too", so it keeps that slot and the
//!    plain `ANTHROPIC_API_KEYS` follows it.
//! 3. `<P>_API_KEY`.
//! 4. Every `<P>_API_KEY_*`, sorted by variable name (byte order: `_10` before `_2`).
//! 5. Extras: google `GOOGLE_API_KEY`; anthropic `ANTHROPIC_OAUTH_TOKEN` ([`Kind::Token`]);
//!    bedrock `AWS_BEARER_TOKEN_BEDROCK` (SPEC §2's Bedrock API key variable).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Credential, CredentialId, Kind, Source};
use crate::secret::Secret;

/// An injected snapshot of environment variables.
///
/// Tests build one with [`EnvSnapshot::from_pairs`]; they never call `std::env::set_var`
/// (banned by `clippy.toml`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EnvSnapshot {
    vars: BTreeMap<String, String>,
}

/// A `<state-dir>/.env` file that could not be read or parsed. Never carries a value.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}; check its permissions or remove it")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `NAME=value` (the line's text is not shown: it may hold a secret).
    #[error(
        "cannot parse {path} at line {line}: expected NAME=value (check quotes and escapes on that line)"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number where the bad entry starts.
        line: usize,
    },
}

/// What an environment variable is for a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// One secret, id `env:VAR`.
    Single(Kind),
    /// A separated list, ids `env:VAR#N`.
    List,
}

// === impl EnvSnapshot ===

impl EnvSnapshot {
    /// The current process environment; variables whose name or value is not UTF-8 are
    /// skipped.
    pub fn from_process() -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v): (OsString, OsString)| {
                Some((k.into_string().ok()?, v.into_string().ok()?))
            })
            .collect();
        Self { vars }
    }

    /// A snapshot from name/value pairs (for tests and embedding). A repeated name keeps the
    /// last value, as the process environment would.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self { vars }
    }

    /// Adds the entries of a dotenv file (`<state-dir>/.env`) that the snapshot does not
    /// already have; a variable already present (even empty) is never overridden, and within
    /// the file the first occurrence wins.
    ///
    /// A missing file is `Ok` with the snapshot unchanged. The file is parsed with dotenvy's
    /// iterator (no process-environment mutation); note that dotenvy expands `$VAR` in
    /// unquoted and double-quoted values from the *process* environment, so quote secrets
    /// that contain `$` with single quotes.
    pub fn with_dotenv_file(mut self, path: &Path) -> Result<Self, EnvFileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(source) => {
                return Err(EnvFileError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
        for item in dotenvy::from_read_iter(body.as_bytes()) {
            match item {
                Ok((name, value)) => {
                    self.vars.entry(name).or_insert(value);
                }
                Err(dotenvy::Error::LineParse(bad, _)) => {
                    return Err(EnvFileError::Parse {
                        path: path.to_owned(),
                        line: line_of(body, &bad),
                    })
                }
                Err(dotenvy::Error::Io(source)) => {
                    return Err(EnvFileError::Io {
                        path: path.to_owned(),
                        source,
                    })
                }
                // Only produced by dotenvy's process-env helpers; report it as a parse
                // problem at the end of the file rather than dropping it.
                Err(_) => {
                    return Err(EnvFileError::Parse {
                        path: path.to_owned(),
                        line: body.lines().count().max(1),
                    })
                }
            }
        }
        Ok(self)
    }

    /// The value of `name`, if present (possibly empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Variables whose name starts with `prefix`, in name order.
    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The trimmed, non-empty value of `name`.
    fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }
}

impl std::fmt::Debug for EnvSnapshot {
    // Values may be secrets: show names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvSnapshot")
            .field("names", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Environment credentials for a provider, in SPEC §5 priority (see the module docs).
///
/// Not deduplicated: the caller dedups the combined profile + env list with
/// [`super::dedup`]. Empty values and empty list entries are dropped; values are trimmed.
/// Every credential has `source: Env`, `provider: provider_id`, `expires_ms: None`, and kind
/// `ApiKey` except `ANTHROPIC_OAUTH_TOKEN` (`Token`).
pub fn env_credentials(provider_id: &str, env_prefix: &str, env: &EnvSnapshot) -> Vec<Credential> {
    let provider: Arc<str> = Arc::from(provider_id);
    let single = |var: &str, kind: Kind| {
        env.non_empty(var)
            .map(|v| credential(&provider, format!("env:{var}"), kind, v))
    };

    let live = live_key_var(env_prefix);
    if let Some(c) = single(&live, Kind::ApiKey) {
        return vec![c];
    }

    let mut out = Vec::new();
    for var in list_vars(provider_id, env_prefix) {
        if let Some(raw) = env.get(&var) {
            out.extend(split_list(raw).enumerate().map(|(i, v)| {
                credential(&provider, format!("env:{var}#{}", i + 1), Kind::ApiKey, v)
            }));
        }
    }

    let primary = format!("{env_prefix}_API_KEY");
    out.extend(single(&primary, Kind::ApiKey));

    // BTreeMap order is byte order of the name, i.e. sorted by variable name.
    let numbered = format!("{env_prefix}_API_KEY_");
    for (var, value) in env.with_prefix(&numbered) {
        let value = value.trim();
        if !value.is_empty() {
            out.push(credential(
                &provider,
                format!("env:{var}"),
                Kind::ApiKey,
                value,
            ));
        }
    }

    for (var, kind) in extra_vars(provider_id) {
        out.extend(single(var, *kind));
    }
    out
}

/// The variable to suggest when nothing is configured: `<P>_API_KEY`
/// (`ANTHROPIC_API_KEY`, `GEMINI_API_KEY`).
pub fn suggested_var(env_prefix: &str) -> String {
    format!("{env_prefix}_API_KEY")
}

/// Resolves an env credential id (`env:VAR` or `env:VAR#N`) for a provider against the
/// snapshot.
///
/// The variable must be one this provider reads (SPEC §5 steps 1–5); the live override does
/// not hide the others here, because an explicit order names exactly what it wants. List
/// variables (`<P>_API_KEYS`, `OPENCLAW_LIVE_ANTHROPIC_KEYS`) need `#N` (from 1, counting
/// non-empty entries); single variables must not have it.
///
/// Returns `None` for: ids without `env:`, another provider's variable, an unset or empty
/// variable, `#N` out of range or not canonical (`#0`, `#01`), `#N` on a single variable, a
/// list variable without `#N`.
pub fn resolve_env_id(
    id: &str,
    provider_id: &str,
    env_prefix: &str,
    env: &EnvSnapshot,
) -> Option<Credential> {
    let rest = id.strip_prefix("env:")?;
    let (var, index) = match rest.split_once('#') {
        Some((var, n)) => (var, Some(parse_index(n)?)),
        None => (rest, None),
    };
    let provider: Arc<str> = Arc::from(provider_id);
    match (role_of(provider_id, env_prefix, var)?, index) {
        (Role::Single(kind), None) => env
            .non_empty(var)
            .map(|v| credential(&provider, id.to_owned(), kind, v)),
        (Role::List, Some(n)) => {
            let value = split_list(env.get(var)?).nth(n - 1)?;
            Some(credential(&provider, id.to_owned(), Kind::ApiKey, value))
        }
        _ => None,
    }
}

/// `OPENCLAW_LIVE_<P>_KEY`.
fn live_key_var(env_prefix: &str) -> String {
    format!("OPENCLAW_LIVE_{env_prefix}_KEY")
}

/// The list variables of step 2, in order.
fn list_vars(provider_id: &str, env_prefix: &str) -> Vec<String> {
    let mut vars = Vec::with_capacity(2);
    if provider_id == "anthropic" {
        vars.push("OPENCLAW_LIVE_ANTHROPIC_KEYS".to_owned());
    }
    vars.push(format!("{env_prefix}_API_KEYS"));
    vars
}

/// Step 5: provider extras.
fn extra_vars(provider_id: &str) -> &'static [(&'static str, Kind)] {
    match provider_id {
        "google" => &[("GOOGLE_API_KEY", Kind::ApiKey)],
        "anthropic" => &[("ANTHROPIC_OAUTH_TOKEN", Kind::Token)],
        "bedrock" => &[("AWS_BEARER_TOKEN_BEDROCK", Kind::ApiKey)],
        _ => &[],
    }
}

/// What `var` is for this provider, or `None` when it does not read it.
fn role_of(provider_id: &str, env_prefix: &str, var: &str) -> Option<Role> {
    if list_vars(provider_id, env_prefix).iter().any(|v| v == var) {
        return Some(Role::List);
    }
    if let Some((_, kind)) = extra_vars(provider_id).iter().find(|(v, _)| *v == var) {
        return Some(Role::Single(*kind));
    }
    let primary = format!("{env_prefix}_API_KEY");
    let is_single = var == live_key_var(env_prefix)
        || var == primary
        || var
            .strip_prefix(&primary)
            .is_some_and(|rest| rest.starts_with('_'));
    is_single.then_some(Role::Single(Kind::ApiKey))
}

/// A canonical 1-based index: digits only, no leading zero.
fn parse_index(n: &str) -> Option<usize> {
    if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().filter(|&n: &usize| n >= 1)
}

/// Non-empty entries of a key list separated by commas, semicolons or any whitespace.
fn split_list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
}

fn credential(provider: &Arc<str>, id: String, kind: Kind, value: &str) -> Credential {
    Credential {
        id: CredentialId::new(id),
        provider: provider.clone(),
        kind,
        source: Source::Env,
        secret: Secret::new(value.trim()),
        expires_ms: None,
    }
}

/// 1-based line in `text` where the (logical) line `bad` starts; the end of the file when it
/// cannot be found.
fn line_of(text: &str, bad: &str) -> usize {
    let first = bad.lines().next().unwrap_or("").trim_end_matches('\r');
    let at = if first.is_empty() {
        None
    } else {
        text.find(first)
    };
    match at {
        Some(at) => text[..at].matches('\n').count() + 1,
        None => text.lines().count().max(1),
    }
}

#[cfg(test)]
mod tests;
