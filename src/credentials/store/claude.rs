//! Claude Code credential reuse (SPEC §6): `~/.claude/.credentials.json` as the profile
//! `anthropic:claude-cli`.
//!
//! Owns locating the file (`KEYGATE_CLAUDE_CREDENTIALS`, else `$HOME/.claude/.credentials.json`
//! from the injected environment) and reading `claudeAiOauth.accessToken` (required),
//! `refreshToken` and `expiresAt` (epoch ms). It does not own refreshing (never: Claude Code
//! owns the refresh token) nor writing (never).

use std::path::PathBuf;

use serde_json::Value;

use super::{parse_expires, Profile};
use crate::credentials::env::EnvSnapshot;
use crate::credentials::Kind;
use crate::secret::Secret;

/// The profile id the Claude Code credentials appear as.
pub const CLAUDE_CLI_PROFILE: &str = "anthropic:claude-cli";

/// Where the Claude Code credentials are read from: `KEYGATE_CLAUDE_CREDENTIALS` when set
/// and non-empty, else `$HOME/.claude/.credentials.json`; `None` without either.
pub fn claude_credentials_path(env: &EnvSnapshot) -> Option<PathBuf> {
    if let Some(p) = env
        .get("KEYGATE_CLAUDE_CREDENTIALS")
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        return Some(PathBuf::from(p));
    }
    let home = env.get("HOME").map(str::trim).filter(|h| !h.is_empty())?;
    Some(
        PathBuf::from(home)
            .join(".claude")
            .join(".credentials.json"),
    )
}

/// Reads the Claude Code credentials as a profile: kind `oauth` when a refresh token is
/// present, else `token`.
///
/// Returns `Ok(None)` when there is no such file; `Err` (a warning naming the file, never
/// its content) when it cannot be read, is not JSON, or has no `claudeAiOauth.accessToken`.
pub fn load_claude_cli(env: &EnvSnapshot) -> Result<Option<Profile>, String> {
    let Some(path) = claude_credentials_path(env) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "Claude Code credentials {} cannot be read: {e}",
                path.display()
            ))
        }
    };
    let bad = |why: &str| format!("Claude Code credentials {}: {why}; ignored", path.display());
    let doc: Value = serde_json::from_str(&text).map_err(|e| {
        bad(&format!(
            "not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Some(oauth) = doc.get("claudeAiOauth").and_then(Value::as_object) else {
        return Err(bad("no claudeAiOauth object"));
    };
    let text_of = |k: &str| {
        oauth
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
    };
    let Some(access) = text_of("accessToken") else {
        return Err(bad("no claudeAiOauth.accessToken"));
    };
    let refresh = text_of("refreshToken");
    let expires = parse_expires(oauth.get("expiresAt"));
    Ok(Some(Profile {
        id: CLAUDE_CLI_PROFILE.to_owned(),
        provider: "anthropic".to_owned(),
        kind: if refresh.is_some() {
            Kind::OAuth
        } else {
            Kind::Token
        },
        secret: Ok(access),
        expires,
        refresh,
        email: None,
        display_name: None,
    }))
}
