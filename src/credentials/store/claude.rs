//! Claude Code credential reuse (SPEC §6): `~/.claude/.credentials.json` as the profile
//! `anthropic:claude-cli`.
//!
//! Owns locating the file (`KEYGATE_CLAUDE_CREDENTIALS`, else `$HOME/.claude/.credentials.json`
//! from the injected environment) and reading `claudeAiOauth.accessToken` (required),
//! `refreshToken` and `expiresAt` (epoch ms). It does not own refreshing (never: Claude Code
//! owns the refresh token) nor writing (never).

use std::path::{Path, PathBuf};

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
    claude_cli_from_str(&text, &path).map(Some)
}

/// Reads the text of a Claude Code credentials file; `path` names it in the warning.
pub(crate) fn claude_cli_from_str(text: &str, path: &Path) -> Result<Profile, String> {
    let bad = |why: &str| format!("Claude Code credentials {}: {why}; ignored", path.display());
    let doc: Value = serde_json::from_str(text).map_err(|e| {
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
    Ok(Profile {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::store::{load_agent_profiles, Expires};

    #[test]
    fn reads_claude_code_credentials_as_a_managed_profile() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().to_str().unwrap().to_owned();
        let env = EnvSnapshot::from_pairs([("HOME", home.as_str())]);
        assert_eq!(
            claude_credentials_path(&env),
            Some(tmp.path().join(".claude/.credentials.json"))
        );
        assert!(load_claude_cli(&env).unwrap().is_none());

        std::fs::create_dir(tmp.path().join(".claude")).unwrap();
        let file = tmp.path().join(".claude/.credentials.json");
        std::fs::write(
            &file,
            r#"{"claudeAiOauth":{"accessToken":" acc-token ","expiresAt":1798761600000}}"#,
        )
        .unwrap();
        let p = load_claude_cli(&env).unwrap().unwrap();
        assert_eq!((p.id.as_str(), p.kind), (CLAUDE_CLI_PROFILE, Kind::Token));
        assert_eq!(p.secret.as_ref().map(Secret::expose), Ok("acc-token"));
        assert_eq!(p.expires, Expires::At(1_798_761_600_000));

        std::fs::write(
            &file,
            r#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r"}}"#,
        )
        .unwrap();
        let set = load_agent_profiles(&tmp.path().join("state"), "main", &env, &Default::default())
            .unwrap();
        assert_eq!(set.profiles[0].kind, Kind::OAuth);
        assert_eq!(set.managed_ids, [CLAUDE_CLI_PROFILE]);

        std::fs::write(&file, r#"{"claudeAiOauth":{"refreshToken":"secret-r"}}"#).unwrap();
        let err = load_claude_cli(&env).unwrap_err();
        assert!(
            err.contains("accessToken") && !err.contains("secret-r"),
            "{err}"
        );

        // The override wins; a stored profile with that id wins over the file.
        let other = tmp.path().join("cc.json");
        std::fs::write(&other, r#"{"claudeAiOauth":{"accessToken":"b"}}"#).unwrap();
        let env = EnvSnapshot::from_pairs([
            ("HOME", home.as_str()),
            ("KEYGATE_CLAUDE_CREDENTIALS", other.to_str().unwrap()),
        ]);
        assert_eq!(
            load_claude_cli(&env)
                .unwrap()
                .unwrap()
                .secret
                .unwrap()
                .expose(),
            "b"
        );
        let dir = crate::credentials::store::agent_dir(&tmp.path().join("state"), "main");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("auth-profiles.json"), r#"{"profiles":{"anthropic:claude-cli":{"type":"api_key","provider":"anthropic","key":"stored"}}}"#).unwrap();
        let set = load_agent_profiles(&tmp.path().join("state"), "main", &env, &Default::default())
            .unwrap();
        assert_eq!(set.profiles.len(), 1);
        assert_eq!(set.profiles[0].kind, Kind::ApiKey);
        assert!(set.managed_ids.is_empty());
    }
}
