//! OAuth refresh for `oauth` profiles (SPEC §5).
//!
//! Owns the refresh of an access token that expires within [`REFRESH_MARGIN`]: one refresh
//! at a time per profile (a per-profile async mutex), re-reading the file first in case
//! another process already refreshed, the standard `refresh_token` grant against the
//! provider's configured `token_url` (JSON, or form-encoded with `form = true`), and the
//! atomic write-back through the store. Credentials managed by another tool (the Claude
//! Code sync, `anthropic:claude-cli`) are never refreshed here. It does not own when a
//! refresh failure cools the credential (the proxy classifies it as `auth`).
//!
//! Between processes that do not share a state dir (cluster replicas, SPEC §10) a
//! [`RefreshCoordinator`], set at startup, decides who refreshes: this module only asks it
//! before spending a refresh token and tells it the result; how it coordinates is not known
//! here (credentials sit below the cluster).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;

use crate::config::OAuthConfig;
use crate::credentials::store;
use crate::redact::Redactor;
use crate::secret::Secret;
use crate::upstream::UpstreamClient;

/// Refresh when the access token expires within this margin.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Budget for one token-endpoint exchange (also what a replica waits for another's).
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest token-endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// A fresh access token.
#[derive(Clone, Debug)]
pub struct Fresh {
    /// The access token.
    pub access: Secret,
    /// Its expiry (epoch ms).
    pub expires_ms: i64,
}

/// One profile's refresh slot: held during a refresh, caching its result.
type Slot = Arc<tokio::sync::Mutex<Option<Fresh>>>;

/// The outcome of a refresh: what is written back (and what a coordinator shares).
#[derive(Clone, Debug)]
pub struct Tokens {
    /// The new access token.
    pub access: Secret,
    /// The refresh token to use next (the new one, or the old one kept).
    pub refresh: Secret,
    /// The access token's expiry (epoch ms).
    pub expires_ms: i64,
}

/// A boxed, sendable future (the coordinator is a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a coordinator says before a refresh token is spent.
#[derive(Debug)]
pub enum Turn {
    /// Refresh here; nobody else is told (no coordination available right now).
    Alone,
    /// Refresh here, and report the result through [`RefreshCoordinator::finish`].
    Lead,
    /// Another process refreshed it: use this.
    Shared(Tokens),
    /// Another process holds the refresh and did not finish in time (no secret in it).
    Failed(String),
}

/// Decides which of several processes spends a refresh token (cluster mode). Calls are
/// bounded by the implementation; a coordinator that cannot reach its peers answers
/// [`Turn::Alone`].
pub trait RefreshCoordinator: Send + Sync {
    /// Before refreshing `profile` with `refresh`: the right to refresh, or another
    /// process's result.
    fn begin<'a>(&'a self, profile: &'a str, refresh: &'a str) -> BoxFuture<'a, Turn>;
    /// After a refresh this process led: `Some` shares the result, `None` (it failed) hands
    /// the turn to the next process.
    fn finish<'a>(&'a self, refresh: &'a str, result: Option<&'a Tokens>) -> BoxFuture<'a, ()>;
}

/// Refreshes oauth profiles, one refresh at a time per profile.
#[derive(Default)]
pub struct Refresher {
    // Keyed by (agent dir, profile id): bounded by the oauth profiles on disk.
    locks: Mutex<HashMap<(PathBuf, String), Slot>>,
    coordinator: Option<Arc<dyn RefreshCoordinator>>,
}

/// Whether a token expiring at `expires_ms` needs a refresh at `now_ms`.
pub fn needs_refresh(expires_ms: Option<i64>, now_ms: i64) -> bool {
    expires_ms.is_some_and(|e| e - now_ms <= REFRESH_MARGIN.as_millis() as i64)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// === impl Refresher ===

impl Refresher {
    /// Coordinates refreshes with other processes through `c` (cluster mode).
    pub fn with_coordinator(mut self, c: Arc<dyn RefreshCoordinator>) -> Self {
        self.coordinator = Some(c);
        self
    }

    /// A fresh access token for `profile` of `agent` in `state_dir` (in whichever store
    /// the dir uses, SPEC §6b), refreshing it if needed. The error is the reason, without
    /// any secret; the caller words the SPEC message.
    pub async fn fresh_token(
        &self,
        client: &UpstreamClient,
        cfg: Option<&OAuthConfig>,
        state_dir: &Path,
        agent: &str,
        profile: &str,
    ) -> Result<Fresh, String> {
        let dir = store::agent_dir(state_dir, agent);
        let slot = {
            let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            map.entry((dir, profile.to_owned())).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some(f) = cached
            .as_ref()
            .filter(|f| !needs_refresh(Some(f.expires_ms), now_ms()))
        {
            return Ok(f.clone());
        }
        // Another process may have refreshed already: the store is the truth.
        let entry = read_entry(state_dir, agent, profile).await?;
        if let Some(f) = still_fresh(&entry) {
            *cached = Some(f.clone());
            return Ok(f);
        }
        // Across processes (OpenClaw included): its per-profile refresh lock, so a refresh
        // token (often single-use) is spent once. Held until the result is written back;
        // the store is read again under it.
        let provider = entry
            .get("provider")
            .and_then(Value::as_str)
            .or_else(|| profile.split_once(':').map(|(p, _)| p))
            .unwrap_or_default();
        let lock_target = refresh_lock_target(state_dir, provider, profile);
        let _refresh_lock = tokio::task::spawn_blocking(move || store::write::lock(&lock_target))
            .await
            .map_err(|_| "the lock task failed".to_owned())?
            .map_err(|e| format!("cannot take the refresh lock: {e}"))?;
        let entry = read_entry(state_dir, agent, profile).await?;
        if let Some(f) = still_fresh(&entry) {
            *cached = Some(f.clone());
            return Ok(f);
        }
        let access = entry
            .get("access")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let refresh = entry
            .get("refresh")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .ok_or("the profile has no refresh token")?
            .to_owned();
        let cfg = cfg.ok_or("no [providers.<p>.oauth] token_url is configured")?;
        let coordinator = self.coordinator.as_deref();
        let turn = match coordinator {
            Some(c) => c.begin(profile, &refresh).await,
            None => Turn::Alone,
        };
        let tokens = match turn {
            Turn::Shared(t) => {
                tracing::info!(profile, "oauth token refreshed by another replica");
                t
            }
            Turn::Failed(why) => return Err(why),
            t @ (Turn::Alone | Turn::Lead) => {
                let lead = if matches!(t, Turn::Lead) {
                    coordinator
                } else {
                    None
                };
                match exchange(client, cfg, &refresh, access).await {
                    Ok((access, new_refresh, expires_in)) => {
                        let t = Tokens {
                            access: Secret::new(access),
                            refresh: Secret::new(new_refresh.unwrap_or(refresh.clone())),
                            expires_ms: expiry_after(now_ms(), expires_in),
                        };
                        // Shared before the write-back: the old refresh token is spent
                        // either way.
                        if let Some(c) = lead {
                            c.finish(&refresh, Some(&t)).await;
                        }
                        t
                    }
                    Err(e) => {
                        if let Some(c) = lead {
                            c.finish(&refresh, None).await;
                        }
                        return Err(e);
                    }
                }
            }
        };
        let expires_ms = tokens.expires_ms;
        let (state_dir, agent) = (state_dir.to_owned(), agent.to_owned());
        let id = profile.to_owned();
        let access_value = tokens.access.expose().to_owned();
        let new_refresh =
            (tokens.refresh.expose() != refresh).then(|| tokens.refresh.expose().to_owned());
        tokio::task::spawn_blocking(move || {
            store::AgentStore::open(&state_dir, &agent)?.update_profiles_for(
                &id.clone(),
                |profiles| -> Result<(), store::StoreError> {
                    if let Some(Value::Object(p)) = profiles.get_mut(&id) {
                        p.insert("access".into(), Value::from(access_value));
                        if let Some(r) = new_refresh {
                            p.insert("refresh".into(), Value::from(r));
                        }
                        p.insert("expires".into(), Value::from(expires_ms));
                    }
                    Ok(())
                },
            )
        })
        .await
        .map_err(|_| "the write-back task failed".to_owned())?
        .map_err(|e| format!("cannot write the refreshed token: {e}"))?;
        tracing::info!(profile, "oauth token refreshed");
        let f = Fresh {
            access: tokens.access,
            expires_ms,
        };
        *cached = Some(f.clone());
        Ok(f)
    }
}

/// The stored access token when it does not need a refresh yet.
fn still_fresh(entry: &serde_json::Map<String, Value>) -> Option<Fresh> {
    let access = entry.get("access").and_then(Value::as_str)?;
    let expires = entry
        .get("expires")
        .and_then(Value::as_f64)
        .map(|e| e as i64);
    (!access.is_empty() && !needs_refresh(expires, now_ms())).then(|| Fresh {
        access: Secret::new(access),
        expires_ms: expires.unwrap_or(i64::MAX),
    })
}

/// OpenClaw's cross-agent OAuth refresh lock target (`resolveOAuthRefreshLockPath`):
/// `<state>/locks/oauth-refresh/lock-<digest>`, whose `.lock` sidecar is the lock file.
pub fn refresh_lock_target(state_dir: &Path, provider: &str, profile: &str) -> PathBuf {
    let key = serde_json::to_string(&[provider, profile]).unwrap_or_default();
    state_dir
        .join("locks")
        .join("oauth-refresh")
        .join(format!("lock-{}", refresh_lock_digest(key.as_bytes())))
}

/// OpenClaw's `oauthLockPathDigest`: two 64-bit FNV-1a variants over the UTF-8 bytes of
/// `JSON.stringify([provider, profileId])`, as 32 hex digits. Written out here because the
/// lock path must be byte-for-byte OpenClaw's for the two to exclude each other.
fn refresh_lock_digest(bytes: &[u8]) -> String {
    const PRIME: u64 = 1_099_511_628_211;
    let mut left: u64 = 14_695_981_039_346_656_037;
    let mut right: u64 = 11_160_318_154_034_397_263;
    for &b in bytes {
        left = (left ^ u64::from(b)).wrapping_mul(PRIME);
        right = (right ^ (u64::from(b) + 11_400_714_819_323_198_485)).wrapping_mul(PRIME);
    }
    format!("{left:016x}{right:016x}")
}

async fn read_entry(
    state_dir: &Path,
    agent: &str,
    profile: &str,
) -> Result<serde_json::Map<String, Value>, String> {
    let (state_dir, agent, id) = (state_dir.to_owned(), agent.to_owned(), profile.to_owned());
    // File and SQLite reads are blocking work.
    tokio::task::spawn_blocking(move || {
        let store = store::AgentStore::open(&state_dir, &agent).map_err(|e| e.to_string())?;
        match store.profile_entry(&id) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(format!(
                "profile {id} is no longer in {}",
                store.profiles_location()
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|_| "the read task failed".to_owned())?
}

/// Longest lifetime taken from a token endpoint's `expires_in` (ten years): a hostile or
/// broken answer (`1e300`) must not overflow the expiry arithmetic.
const MAX_EXPIRES_IN_S: f64 = 10.0 * 365.0 * 24.0 * 3600.0;

/// The expiry (epoch ms) of a token issued at `now_ms` that lives `expires_in` seconds.
fn expiry_after(now_ms: i64, expires_in: f64) -> i64 {
    let secs = if expires_in.is_nan() {
        0.0
    } else {
        expires_in.clamp(0.0, MAX_EXPIRES_IN_S)
    };
    now_ms.saturating_add((secs * 1000.0) as i64)
}

/// The `refresh_token` grant. Returns (access token, new refresh token, expires_in seconds).
/// `old_access` is only for keeping it out of the error text.
async fn exchange(
    client: &UpstreamClient,
    cfg: &OAuthConfig,
    refresh: &str,
    old_access: &str,
) -> Result<(String, Option<String>, f64), String> {
    let (body, content_type) = if cfg.form {
        let mut form = String::from("grant_type=refresh_token&refresh_token=");
        form.push_str(&encode(refresh));
        if let Some(id) = &cfg.client_id {
            form.push_str("&client_id=");
            form.push_str(&encode(id));
        }
        (form.into_bytes(), "application/x-www-form-urlencoded")
    } else {
        let mut v = serde_json::json!({ "grant_type": "refresh_token", "refresh_token": refresh });
        if let Some(id) = &cfg.client_id {
            v["client_id"] = Value::from(id.as_str());
        }
        (
            serde_json::to_vec(&v).unwrap_or_default(),
            "application/json",
        )
    };
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = cfg.token_url.clone();
    req.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    req.headers_mut()
        .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let resp = tokio::time::timeout(REFRESH_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "the token endpoint did not answer in time".to_owned())?
        .map_err(|e| format!("the token endpoint is unreachable ({e})"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
        .collect()
        .await
        .map_err(|_| "the token endpoint's answer could not be read".to_owned())?
        .to_bytes();
    if !status.is_success() {
        let code = error_code(&body, &[refresh, old_access]);
        return Err(format!(
            "the token endpoint answered {} ({code})",
            status.as_u16()
        ));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| "the token endpoint's answer is not JSON".to_owned())?;
    let access = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .ok_or("the token endpoint's answer has no access_token")?;
    let expires_in = v
        .get("expires_in")
        .and_then(Value::as_f64)
        .unwrap_or(3600.0)
        .max(0.0);
    let new_refresh = v
        .get("refresh_token")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((access.to_owned(), new_refresh, expires_in))
}

/// Longest error code shown, in characters.
const MAX_ERROR_CODE: usize = 64;

/// What a failed token exchange may say about itself: the `error` member only (RFC 6749
/// §5.2, e.g. `invalid_grant`; descriptions are never shown), with every secret the request
/// carried (`secrets`, also percent-encoded) replaced by its masked form, control
/// characters dropped, and at most [`MAX_ERROR_CODE`] characters. `error` when there is
/// no such string. The result reaches the client's 401 and the log.
fn error_code(body: &[u8], secrets: &[&str]) -> String {
    let Some(code) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
    else {
        return "error".into();
    };
    let mut code = code;
    for s in secrets {
        let secret = Secret::new(*s);
        if let Some(r) = Redactor::new(&secret) {
            if let Some(clean) = r.redact_all(code.as_bytes()) {
                code = String::from_utf8_lossy(&clean).into_owned();
            }
        }
    }
    let mut out: String = code
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_CODE)
        .collect();
    if code
        .chars()
        .filter(|c| !c.is_control())
        .nth(MAX_ERROR_CODE)
        .is_some()
    {
        out.push('…');
    }
    if out.trim().is_empty() {
        return "error".into();
    }
    out
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_lock_path_is_openclaws() {
        // Digests computed with OpenClaw 2026.9.6's own function under node 24.
        let t = refresh_lock_target(Path::new("/s"), "anthropic", "anthropic:claude-cli");
        assert_eq!(
            t,
            Path::new("/s/locks/oauth-refresh/lock-b9177c9e48ffa95a4c2e837b40be614e")
        );
        let t = refresh_lock_target(Path::new("/s"), "openai-codex", "openai-codex:default");
        assert!(
            t.ends_with("lock-7b9da1f0ba485a46aaec13e8c09ceb27"),
            "{t:?}"
        );
        let t = refresh_lock_target(Path::new("/s"), "a\"b", "é");
        assert!(
            t.ends_with("lock-139207e897ac9f1a393cd218596b12b5"),
            "{t:?}"
        );
    }

    #[test]
    fn expiry_never_overflows_on_a_hostile_expires_in() {
        let now = 1_800_000_000_000;
        assert_eq!(expiry_after(now, 3600.0), now + 3_600_000);
        let ten_years = now + (MAX_EXPIRES_IN_S * 1000.0) as i64;
        assert_eq!(expiry_after(now, 1e300), ten_years);
        assert_eq!(expiry_after(now, f64::INFINITY), ten_years);
        assert_eq!(expiry_after(now, -5.0), now);
        assert_eq!(expiry_after(now, f64::NAN), now);
        assert_eq!(expiry_after(i64::MAX - 1, 3600.0), i64::MAX);
    }

    const REFRESH: &str = "rt-unit-refresh-token-0001";

    #[test]
    fn the_error_code_is_shown() {
        assert_eq!(
            error_code(
                br#"{"error":"invalid_grant","error_description":"x"}"#,
                &[REFRESH]
            ),
            "invalid_grant"
        );
        assert_eq!(error_code(b"<html>", &[REFRESH]), "error");
        assert_eq!(
            error_code(br#"{"error":{"message":"m"}}"#, &[REFRESH]),
            "error"
        );
    }

    #[test]
    fn a_secret_in_the_error_code_is_masked() {
        let body = format!(r#"{{"error":"bad token {REFRESH} / {}"}}"#, encode(REFRESH));
        let code = error_code(body.as_bytes(), &[REFRESH, "at-unit-access-0002"]);
        assert_eq!(code, "bad token …0001 / …0001");
    }

    #[test]
    fn the_error_code_is_bounded_and_has_no_control_characters() {
        let body = serde_json::json!({ "error": format!("a\nb{}", "x".repeat(500)) }).to_string();
        let code = error_code(body.as_bytes(), &[REFRESH]);
        assert_eq!(code.chars().count(), MAX_ERROR_CODE + 1);
        assert!(code.starts_with("abx"), "{code}");
        assert!(!code.contains('\n'));
    }
}
