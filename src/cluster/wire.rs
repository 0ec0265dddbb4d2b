//! What crosses Redis (SPEC §10): key names, the window message, the replica heartbeat and
//! the script that merges a window by its end.
//!
//! Layout under the prefix `P` (default `keygate:`), every key with a TTL:
//! - `P cd:<cred>:<scope>[:<model>]` — one window; the value is its [`WindowMsg`] (JSON),
//!   the TTL its remaining time. `<cred>` is the credential's shared id (hex of a keyed
//!   fingerprint), `<scope>` is `model`, `credential` or `disabled`.
//! - `P replicas` — the heartbeats: a sorted set of [`Replica`]s (JSON, `beat` 0) scored by
//!   their last beat (epoch ms); beats older than 60 s are dropped at every beat, and the
//!   key expires 60 s after the last one.
//! - `P rpm:<cred>` — the credential's requests of the last 60 s (a ZSET of one member per
//!   request, scored by Redis's own clock), TTL 60 s; see [`RPM_SCRIPT`].
//! - `P slots:<cred>` — the credential's in-flight leases (a ZSET of one member per lease,
//!   scored by its expiry), TTL the longest lease; see [`LEASE_SCRIPT`].
//! - channel `P events` — every window written, as its message.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::classify::Reason;
use crate::cooldown::{Opened, Scope, Window};

/// Longest model name shared (longer ones stay local: a client picks model names).
pub const MAX_MODEL: usize = 256;
/// Largest message read back.
pub const MAX_MESSAGE: usize = 2048;
/// How long a heartbeat lives (SPEC §10: replicas seen in the last 60 s).
pub const REPLICA_TTL: Duration = Duration::from_secs(60);

/// Sets a window unless one with a later (or equal) end is there, then publishes it.
/// KEYS[1] window key; ARGV: end (epoch ms), message, channel. The TTL is taken on Redis's
/// clock. Returns 1 when written, 0 for a window already over, and the stored message when
/// it ends later (the sender then merges it, so it keeps the later end too).
pub const MERGE_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' and tonumber(old['end']) and tonumber(old['end']) >= tonumber(ARGV[1]) then
    return cur
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1]) - now
if ttl <= 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
"#;

/// The sliding window of `rpm` (SPEC §10): drops the entries older than the window, admits
/// when fewer than the limit remain, records the admission and keeps the key for one window.
/// Times are Redis's clock (`TIME`), so replicas with skewed clocks agree.
/// KEYS[1] the credential's log; ARGV: limit, window (ms), a unique member.
/// Returns 0 when admitted, else the milliseconds until the oldest entry leaves (≥ 1).
pub const RPM_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = 1
if oldest[2] then wait = math.max(1, tonumber(oldest[2]) + window - now) end
return wait
"#;

/// Takes or refreshes an in-flight lease (SPEC §10/§11 `max_in_flight`): drops the leases
/// that expired (their replica stopped refreshing them: it died or lost Redis), then keeps
/// this one for `ttl` if it is already held or fewer than `cap` are. The key lives as long
/// as its longest lease. KEYS[1] the credential's leases; ARGV: cap, ttl (ms), the lease's
/// member. Returns 1 when held, 0 when the credential is at its cap.
pub const LEASE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
  return 1
end
return 0
"#;

/// The key of a credential's rpm log under `prefix`.
pub fn rpm_key(prefix: &str, shared: &[u8; 16]) -> String {
    format!("{prefix}rpm:{}", hex::encode(shared))
}

/// The key of a credential's in-flight leases under `prefix`.
pub fn slots_key(prefix: &str, shared: &[u8; 16]) -> String {
    format!("{prefix}slots:{}", hex::encode(shared))
}

/// One window, as stored and published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowMsg {
    /// The replica that opened it.
    pub from: String,
    /// The credential's shared id (32 hex characters).
    pub cred: String,
    /// `model`, `credential` or `disabled`.
    pub scope: String,
    /// The model, for `scope = model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// When it ends (epoch ms).
    pub end: i64,
    /// Why (`rate_limit`, `auth`, `billing`, `auth_permanent`).
    pub reason: String,
    /// Where its length came from (`retry-after`, `backoff[1]`, …).
    pub source: String,
    /// Consecutive failures (the ladder position).
    #[serde(default)]
    pub failures: u32,
    /// The status that opened it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// A replica's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// `host-pid-xxxx`.
    pub id: String,
    /// Host name.
    pub host: String,
    /// keygate version.
    pub version: String,
    /// Last beat (epoch ms).
    pub beat: i64,
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl WindowMsg {
    /// The message for a window this replica opened; `None` for a model name too long to
    /// share or a window already over.
    pub fn from_opened(from: &str, shared: &[u8; 16], o: &Opened<'_>) -> Option<Self> {
        let w = &o.window;
        let (scope, model) = match &w.scope {
            Scope::Model(m) if m.len() > MAX_MODEL => return None,
            Scope::Model(m) => ("model", Some(m.to_string())),
            Scope::Credential => ("credential", None),
            Scope::Disabled => ("disabled", None),
        };
        let left = w.until.checked_duration_since(Instant::now())?;
        let left = i64::try_from(left.as_millis()).ok()?;
        if left == 0 {
            return None;
        }
        Some(Self {
            from: from.to_owned(),
            cred: hex::encode(shared),
            scope: scope.to_owned(),
            model,
            end: now_ms().saturating_add(left),
            reason: w.reason.as_str().to_owned(),
            source: w.source.chars().take(64).collect(),
            failures: w.failures,
            status: w.last_status,
        })
    }

    /// Its Redis key under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        match &self.model {
            Some(m) => format!("{prefix}cd:{}:{}:{m}", self.cred, self.scope),
            None => format!("{prefix}cd:{}:{}", self.cred, self.scope),
        }
    }

    /// Reads a message (bounded); `None` for anything that is not one.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_MESSAGE {
            return None;
        }
        let m: Self = serde_json::from_slice(bytes).ok()?;
        let model_ok = match (m.scope.as_str(), &m.model) {
            ("model", Some(model)) => model.len() <= MAX_MODEL,
            ("credential" | "disabled", None) => true,
            _ => false,
        };
        (model_ok && m.shared_bytes().is_some() && Reason::parse(&m.reason).is_some()).then_some(m)
    }

    /// The shared id as bytes.
    pub fn shared_bytes(&self) -> Option<[u8; 16]> {
        let mut out = [0; 16];
        hex::decode_to_slice(&self.cred, &mut out).ok()?;
        Some(out)
    }

    /// The window as the local cooldowns take it; `None` once it has ended.
    pub fn learned(&self, now: Instant) -> Option<Window> {
        let left = self.end.checked_sub(now_ms()).filter(|l| *l > 0)?;
        let scope = match (self.scope.as_str(), &self.model) {
            ("model", Some(m)) => Scope::Model(m.as_str().into()),
            ("credential", _) => Scope::Credential,
            ("disabled", _) => Scope::Disabled,
            _ => return None,
        };
        Some(Window {
            scope,
            until: now + Duration::from_millis(left as u64).min(crate::cooldown::MAX_COOLDOWN),
            reason: Reason::parse(&self.reason)?,
            source: Cow::Owned(self.source.clone()),
            failures: self.failures,
            last_status: self.status,
        })
    }
}

impl Replica {
    /// This process.
    pub fn me() -> Self {
        let host = hostname();
        let tag: u16 = {
            let mut b = [0u8; 2];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
            u16::from_le_bytes(b)
        };
        Self {
            id: format!("{host}-{}-{tag:04x}", std::process::id()),
            host,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            beat: now_ms(),
        }
    }

    /// The heartbeats' key under `prefix`.
    pub fn key(prefix: &str) -> String {
        format!("{prefix}replicas")
    }

    /// Its member in that set: itself with `beat` 0 (the score carries the beat).
    pub fn member(&self) -> String {
        let mut m = self.clone();
        m.beat = 0;
        serde_json::to_string(&m).unwrap_or_default()
    }
}

/// The host name (`/proc/sys/kernel/hostname`, else `HOSTNAME`, else `localhost`), cut to
/// 64 visible characters.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let h: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != ':')
        .take(64)
        .collect();
    if h.is_empty() {
        "localhost".to_owned()
    } else {
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(scope: &Scope, left: Duration) -> Opened<'static> {
        Opened {
            credential: "anthropic:work",
            fp: 7,
            window: Window {
                scope: scope.clone(),
                until: Instant::now() + left,
                reason: Reason::RateLimit,
                source: Cow::Borrowed("retry-after"),
                failures: 2,
                last_status: Some(429),
            },
        }
    }

    #[test]
    fn a_window_round_trips_and_its_key_names_no_credential() {
        let scope = Scope::Model("claude-sonnet".into());
        let m = WindowMsg::from_opened("r1", &[0xab; 16], &opened(&scope, Duration::from_secs(30)))
            .expect("shared");
        let key = m.key("keygate:");
        assert_eq!(
            key,
            format!("keygate:cd:{}:model:claude-sonnet", "ab".repeat(16))
        );
        assert!(!key.contains("anthropic:work"));
        let text = serde_json::to_vec(&m).expect("json");
        let back = WindowMsg::parse(&text).expect("parses");
        assert_eq!(back, m);
        let w = back.learned(Instant::now()).expect("still open");
        assert_eq!(w.scope, scope);
        assert_eq!(
            (w.reason, w.failures, w.last_status),
            (Reason::RateLimit, 2, Some(429))
        );
    }

    #[test]
    fn budget_keys_name_the_shared_id_only() {
        let id = [0xcd; 16];
        assert_eq!(rpm_key("kg:", &id), format!("kg:rpm:{}", "cd".repeat(16)));
        assert_eq!(
            slots_key("kg:", &id),
            format!("kg:slots:{}", "cd".repeat(16))
        );
    }

    #[test]
    fn what_is_not_a_window_is_refused() {
        let scope = Scope::Model("m".repeat(MAX_MODEL + 1).into());
        assert!(
            WindowMsg::from_opened("r", &[1; 16], &opened(&scope, Duration::from_secs(5)))
                .is_none()
        );
        assert!(
            WindowMsg::from_opened("r", &[1; 16], &opened(&Scope::Disabled, Duration::ZERO))
                .is_none()
        );
        for bad in [
            &b"not json"[..],
            br#"{"from":"r","cred":"zz","scope":"credential","end":1,"reason":"rate_limit","source":"s"}"#,
            br#"{"from":"r","cred":"abababababababababababababababab","scope":"model","end":1,"reason":"rate_limit","source":"s"}"#,
            br#"{"from":"r","cred":"abababababababababababababababab","scope":"credential","end":1,"reason":"nope","source":"s"}"#,
        ] {
            assert!(WindowMsg::parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(WindowMsg::parse(&vec![b' '; MAX_MESSAGE + 1]).is_none());
        // An ended window is not learned.
        let ended = WindowMsg::parse(br#"{"from":"r","cred":"abababababababababababababababab","scope":"credential","end":1,"reason":"rate_limit","source":"s"}"#).expect("parses");
        assert!(ended.learned(Instant::now()).is_none());
    }
}
