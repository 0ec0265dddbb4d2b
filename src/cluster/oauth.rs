//! OAuth refresh under a Redis lease (SPEC §10): one replica spends a refresh token, the
//! others wait for its result and use it.
//!
//! Keys under the prefix `P`, named by the cluster's keyed fingerprint of the *refresh*
//! token (the one about to be spent; never the profile id nor a secret):
//! - `P oauth:<id>:lease` — `SET NX PX` with the holder's replica id; lives as long as one
//!   refresh may take (plus the write-back), released early only when the refresh failed.
//! - `P oauth:<id>:token` — the result, sealed with AES-256-GCM under a key derived from the
//!   cluster key (HKDF-SHA256), the key name as associated data; lives until the new access
//!   token expires.
//!
//! A replica that finds the lease held polls for the result, bounded by the lease's life;
//! once that has passed it takes the lease itself. Redis down or failing → the refresh is
//! local, as in a single process: the feature degrades, the proxy does not. Every command
//! is bounded by the link's command timeout. Nothing secret is logged.
//!
//! It does not own the refresh itself (`credentials::oauth`).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::link::{query, COMMAND_TIMEOUT, SLOW};
use super::{sign, wire, Cluster};
use crate::credentials::oauth::{BoxFuture, RefreshCoordinator, Tokens, Turn, REFRESH_TIMEOUT};
use crate::secret::Secret;

/// How long a lease lives: one token exchange, plus the write-back.
pub const LEASE: Duration = Duration::from_secs(REFRESH_TIMEOUT.as_secs() + 5);
/// How long a replica waits for another's result: the lease's life, then it may lead.
const WAIT: Duration = Duration::from_secs(LEASE.as_secs() + 1);
/// Poll period while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Shortest life of a shared result.
const MIN_TTL_MS: i64 = 1_000;
/// Largest sealed value read (tokens are a few KiB at most).
const MAX_SEALED: usize = 32 * 1024;
/// The sealed value's version tag.
const TAG: &str = "v1:";
/// Releases a lease only when this replica holds it. KEYS[1] lease; ARGV[1] replica id.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Seals and opens shared tokens with the cluster key.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

/// What is sealed.
#[derive(Serialize, Deserialize)]
struct Plain {
    access: String,
    refresh: String,
    expires: i64,
}

// === impl Sealer ===

impl Sealer {
    /// The sealer for a cluster key (64 hex characters); `None` for anything else.
    pub fn new(cluster_key_hex: &str) -> Option<Self> {
        let mut ikm = [0u8; 32];
        hex::decode_to_slice(cluster_key_hex, &mut ikm).ok()?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"keygate cluster v1").extract(&ikm);
        let okm = prk
            .expand(&[b"oauth tokens aes-256-gcm"], &AES_256_GCM)
            .ok()?;
        Some(Self {
            key: LessSafeKey::new(UnboundKey::from(okm)),
            rng: SystemRandom::new(),
        })
    }

    /// `v1:` + hex(nonce ‖ ciphertext ‖ tag), bound to `aad` (the Redis key).
    pub fn seal(&self, aad: &str, t: &Tokens) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut buf = serde_json::to_vec(&Plain {
            access: t.access.expose().to_owned(),
            refresh: t.refresh.expose().to_owned(),
            expires: t.expires_ms,
        })
        .ok()?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Some(format!("{TAG}{}", hex::encode(out)))
    }

    /// The tokens in a sealed value; `None` when it was sealed under another key or for
    /// another key name, or was altered.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Option<Tokens> {
        if sealed.len() > MAX_SEALED {
            return None;
        }
        let text = std::str::from_utf8(sealed).ok()?.strip_prefix(TAG)?;
        let mut raw = hex::decode(text).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let mut body = raw.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&raw).ok()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
            .ok()?;
        let p: Plain = serde_json::from_slice(plain).ok()?;
        (!p.access.is_empty() && !p.refresh.is_empty()).then(|| Tokens {
            access: Secret::new(p.access),
            refresh: Secret::new(p.refresh),
            expires_ms: p.expires,
        })
    }
}

/// Coordinates this replica's OAuth refreshes with the others'.
pub struct OAuthShare {
    cluster: Arc<Cluster>,
    sealer: Sealer,
    release: redis::Script,
}

/// The keys of one refresh.
struct Keys {
    lease: String,
    token: String,
}

/// One look at Redis while waiting.
enum Step {
    Shared(Tokens),
    Lead,
    Held,
}

// === impl OAuthShare ===

impl OAuthShare {
    /// `None` without a cluster key: tokens are then never shared.
    pub fn new(cluster: Arc<Cluster>) -> Option<Self> {
        let sealer = Sealer::new(cluster.config.secret_key.as_ref()?.expose())?;
        Some(Self {
            cluster,
            sealer,
            release: redis::Script::new(RELEASE),
        })
    }

    fn keys(&self, refresh: &str) -> Keys {
        let id = hex::encode(sign(&self.cluster.fp_key, refresh));
        let prefix = &self.cluster.config.key_prefix;
        Keys {
            lease: format!("{prefix}oauth:{id}:lease"),
            token: format!("{prefix}oauth:{id}:token"),
        }
    }

    /// The shared result when there is one, else the lease when it is free.
    async fn step(&self, conn: &mut MultiplexedConnection, keys: &Keys) -> Result<Step, String> {
        if let Some(t) = self.shared(conn, keys).await? {
            return Ok(Step::Shared(t));
        }
        let mut set = redis::cmd("SET");
        set.arg(&keys.lease)
            .arg(&self.cluster.me.id)
            .arg("NX")
            .arg("PX")
            .arg(LEASE.as_millis() as u64);
        if query::<Option<String>>(conn, set).await?.is_none() {
            return Ok(Step::Held);
        }
        // A holder that finished between the two reads left its result before its lease
        // could lapse: look again, so a refresh token is never spent twice.
        match self.shared(conn, keys).await? {
            Some(t) => Ok(Step::Shared(t)),
            None => Ok(Step::Lead),
        }
    }

    async fn shared(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &Keys,
    ) -> Result<Option<Tokens>, String> {
        let mut get = redis::cmd("GET");
        get.arg(&keys.token);
        let Some(sealed) = query::<Option<Vec<u8>>>(conn, get).await? else {
            return Ok(None);
        };
        self.sealer
            .open(&keys.token, &sealed)
            .map(Some)
            .ok_or_else(|| "a shared token does not open with this cluster key".to_owned())
    }

    async fn begin_inner(&self, profile: &str, refresh: &str) -> Turn {
        let Some(mut conn) = self.cluster.conn() else {
            tracing::debug!(profile, "cluster: Redis is away; refreshing locally");
            return Turn::Alone;
        };
        let keys = self.keys(refresh);
        let deadline = Instant::now() + WAIT;
        let mut waiting = false;
        loop {
            match self.step(&mut conn, &keys).await {
                Ok(Step::Shared(t)) => return Turn::Shared(t),
                Ok(Step::Lead) => return Turn::Lead,
                Ok(Step::Held) => {}
                Err(e) => {
                    tracing::warn!(profile, error = %e, "cluster: the shared oauth refresh failed; refreshing locally");
                    return Turn::Alone;
                }
            }
            if !waiting {
                tracing::debug!(
                    profile,
                    "cluster: another replica is refreshing; waiting for its result"
                );
                waiting = true;
            }
            if Instant::now() + POLL >= deadline {
                return Turn::Failed(format!(
                    "another replica's refresh did not finish within {} s",
                    WAIT.as_secs()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn finish_inner(&self, refresh: &str, result: Option<&Tokens>) {
        let Some(mut conn) = self.cluster.conn() else {
            return;
        };
        let keys = self.keys(refresh);
        let outcome = match result {
            Some(t) => {
                let Some(sealed) = self.sealer.seal(&keys.token, t) else {
                    tracing::warn!(
                        "cluster: the refreshed oauth token could not be sealed; not shared"
                    );
                    return;
                };
                let ttl = t.expires_ms.saturating_sub(wire::now_ms()).max(MIN_TTL_MS);
                let mut set = redis::cmd("SET");
                set.arg(&keys.token).arg(sealed).arg("PX").arg(ttl);
                query::<()>(&mut conn, set).await
            }
            None => {
                let mut call = self.release.prepare_invoke();
                call.key(&keys.lease).arg(&self.cluster.me.id);
                match tokio::time::timeout(COMMAND_TIMEOUT, call.invoke_async::<i64>(&mut conn))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(SLOW.to_owned()),
                }
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "cluster: could not hand the oauth refresh to the other replicas");
        }
    }
}

impl RefreshCoordinator for OAuthShare {
    fn begin<'a>(&'a self, profile: &'a str, refresh: &'a str) -> BoxFuture<'a, Turn> {
        Box::pin(self.begin_inner(profile, refresh))
    }

    fn finish<'a>(&'a self, refresh: &'a str, result: Option<&'a Tokens>) -> BoxFuture<'a, ()> {
        Box::pin(self.finish_inner(refresh, result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const OTHER: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    const AAD: &str = "keygate:oauth:abcd:token";

    fn tokens() -> Tokens {
        Tokens {
            access: Secret::new("unit-access-token-zzzz"),
            refresh: Secret::new("unit-refresh-token-yyyy"),
            expires_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn sealed_tokens_round_trip_and_show_nothing_of_the_secrets() {
        let s = Sealer::new(KEY).expect("key");
        let sealed = s.seal(AAD, &tokens()).expect("sealed");
        assert!(sealed.starts_with(TAG));
        for secret in ["unit-access-token-zzzz", "unit-refresh-token-yyyy"] {
            for piece in secret.as_bytes().windows(8) {
                assert!(!sealed.as_bytes().windows(8).any(|w| w == piece));
            }
        }
        let back = s.open(AAD, sealed.as_bytes()).expect("opens");
        assert_eq!(back.access.expose(), "unit-access-token-zzzz");
        assert_eq!(back.refresh.expose(), "unit-refresh-token-yyyy");
        assert_eq!(back.expires_ms, 1_800_000_000_000);
        // Two seals of the same tokens differ (fresh nonce).
        assert_ne!(s.seal(AAD, &tokens()).expect("sealed"), sealed);
    }

    #[test]
    fn a_wrong_key_another_key_name_or_a_tampered_value_is_refused() {
        let s = Sealer::new(KEY).expect("key");
        let sealed = s.seal(AAD, &tokens()).expect("sealed");
        assert!(Sealer::new(OTHER)
            .expect("key")
            .open(AAD, sealed.as_bytes())
            .is_none());
        assert!(s
            .open("keygate:oauth:other:token", sealed.as_bytes())
            .is_none());
        // Every byte flipped in turn (nonce, ciphertext, tag) is caught.
        let raw = hex::decode(&sealed[TAG.len()..]).expect("hex");
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let text = format!("{TAG}{}", hex::encode(&bad));
            assert!(s.open(AAD, text.as_bytes()).is_none(), "byte {i}");
        }
        let short = format!("{TAG}{}", hex::encode(&raw[..raw.len() - 1]));
        assert!(s.open(AAD, short.as_bytes()).is_none());
        for junk in [
            &b""[..],
            b"v1:",
            b"v1:zz",
            b"v2:00",
            &sealed.as_bytes()[TAG.len()..],
        ] {
            assert!(s.open(AAD, junk).is_none());
        }
        assert!(s.open(AAD, &vec![b'0'; MAX_SEALED + 1]).is_none());
        assert!(Sealer::new("not hex").is_none());
        assert!(Sealer::new(&KEY[..62]).is_none());
    }
}
