//! Session affinity (SPEC §11): which credential a conversation last used, so its next
//! request goes there again while that credential is usable (provider prompt caches belong
//! to an account).
//!
//! Owns the bounded map from a session to its credential: keyed by a keyed hash of (agent,
//! provider, session key), so a session value is never stored, logged or recovered;
//! valued by the credential's secret fingerprint (stable over reloads, the same for every
//! pool holding the key); at most `affinity_max_sessions` entries, least recently used
//! evicted, an entry older than `affinity_ttl` read as absent. It does not own finding the
//! session key (`pin::body_fields`, `proxy::admit`), nor whether the credential is usable
//! (`select`): the attempt loop puts the session's credential first and the selector decides.

use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use hashlink::LruCache;
use tokio::time::Instant;

use crate::config::{self, RotationConfig};

/// Shards of the map: requests of different sessions rarely wait for one another's lock.
const SHARDS: usize = 16;

/// The sessions of every agent and provider.
pub struct Affinity {
    shards: Box<[Mutex<LruCache<u64, Entry>>]>,
    /// hashbrown's keyed foldhash, its seed drawn per process: the map's keys say nothing
    /// about the session values without it. Not SipHash (a quarter of affinity's cost per
    /// request was SipHash, measured): a collision aimed at another session could only
    /// change which of the agent's own allowed credentials serves it first.
    hasher: hashlink::DefaultHashBuilder,
    ttl: Duration,
    capacity: usize,
}

/// One session's credential and when the session was last seen.
#[derive(Clone, Copy)]
struct Entry {
    fp: u64,
    seen: Instant,
}

/// A request's session, hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session(u64);

/// What the session's entry said about the credential that answered
/// (`x-keygate-affinity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stuck {
    /// The session had no entry (or it had expired).
    New,
    /// The session's credential answered.
    Kept,
    /// Another credential answered: the session moves there.
    Moved,
}

impl Stuck {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stuck::New => "new",
            Stuck::Kept => "kept",
            Stuck::Moved => "moved",
        }
    }
}

// === impl Affinity ===

impl Affinity {
    /// The map `[rotation]` asks for, `None` with `affinity = "off"`.
    pub fn new(cfg: &RotationConfig) -> Option<Self> {
        if cfg.affinity == config::Affinity::Off {
            return None;
        }
        Some(Self::with_capacity(
            cfg.affinity_max_sessions,
            cfg.affinity_ttl,
        ))
    }

    /// A map of at most `capacity` sessions (at least 1), each kept `ttl` after its last
    /// request.
    pub fn with_capacity(capacity: usize, ttl: Duration) -> Self {
        let capacity = capacity.max(1);
        let n = SHARDS.min(capacity);
        // The capacity split exactly over the shards, so the total never exceeds it.
        let shards = (0..n)
            .map(|i| Mutex::new(LruCache::new(capacity / n + usize::from(i < capacity % n))))
            .collect();
        Self {
            shards,
            hasher: hashlink::DefaultHashBuilder::default(),
            ttl,
            capacity,
        }
    }

    /// The session of `key` for `agent` and `provider`.
    pub fn session(&self, agent: &str, provider: &str, key: &[u8]) -> Session {
        let mut h = self.hasher.build_hasher();
        // Lengths first, so no two different triples feed the hasher the same bytes.
        h.write_usize(agent.len());
        h.write(agent.as_bytes());
        h.write_usize(provider.len());
        h.write(provider.as_bytes());
        h.write(key);
        Session(h.finish())
    }

    fn shard(&self, s: Session) -> std::sync::MutexGuard<'_, LruCache<u64, Entry>> {
        // The high bits pick the shard; the map hashes the whole key again for its table.
        let i = ((s.0 >> 32) as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fingerprint of the session's credential, `None` for a new or expired session.
    /// A session found is seen now (its TTL starts again and it becomes the most recently
    /// used), so a request that stays on it needs no [`Affinity::record`].
    pub fn lookup(&self, s: Session, now: Instant) -> Option<u64> {
        let mut shard = self.shard(s);
        let e = shard.get_mut(&s.0)?;
        if now.saturating_duration_since(e.seen) > self.ttl {
            shard.remove(&s.0);
            return None;
        }
        e.seen = now;
        Some(e.fp)
    }

    /// The session is served by the credential with fingerprint `fp`.
    pub fn record(&self, s: Session, fp: u64, now: Instant) {
        self.shard(s).insert(s.0, Entry { fp, seen: now });
    }

    /// Sessions held now (expired ones included until they are read or evicted).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most sessions held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long a session is kept after its last request.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Puts the candidate with fingerprint `fp` first, the others in their order; returns
/// whether it was there.
pub fn promote<T>(candidates: &mut [T], fp: u64, fp_of: impl Fn(&T) -> u64) -> bool {
    match candidates.iter().position(|c| fp_of(c) == fp) {
        Some(i) => {
            candidates[..=i].rotate_right(1);
            true
        }
        None => false,
    }
}

/// What the answer of `served` means for a session that had `prev`.
pub fn stuck(prev: Option<u64>, served: u64) -> Stuck {
    match prev {
        None => Stuck::New,
        Some(fp) if fp == served => Stuck::Kept,
        Some(_) => Stuck::Moved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_its_capacity_least_recently_used_out() {
        let a = Affinity::with_capacity(100_000, Duration::from_secs(3600));
        let now = Instant::now();
        let first = a.session("main", "openai", b"session-0");
        a.record(first, 1, now);
        for i in 1..200_000u32 {
            // The first session is used all along: it must survive the churn.
            if i % 1000 == 0 {
                assert_eq!(a.lookup(first, now), Some(1), "at {i}");
            }
            let s = a.session("main", "openai", format!("session-{i}").as_bytes());
            a.record(s, u64::from(i), now);
        }
        assert_eq!(a.len(), 100_000);
        assert_eq!(a.lookup(first, now), Some(1));
        // The oldest untouched sessions were evicted, the newest are there.
        let old = a.session("main", "openai", b"session-1");
        assert_eq!(a.lookup(old, now), None);
        let new = a.session("main", "openai", b"session-199999");
        assert_eq!(a.lookup(new, now), Some(199_999));
    }

    #[test]
    fn small_capacities_are_exact() {
        for cap in [1, 5, 16, 17, 500] {
            let a = Affinity::with_capacity(cap, Duration::from_secs(60));
            let now = Instant::now();
            for i in 0..(cap * 10) {
                a.record(a.session("a", "p", &i.to_le_bytes()), 1, now);
            }
            assert_eq!(a.len(), cap, "capacity {cap}");
        }
    }

    #[test]
    fn expired_sessions_read_as_new() {
        let a = Affinity::with_capacity(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let s = a.session("a", "p", b"conv");
        a.record(s, 7, t0);
        assert_eq!(a.lookup(s, t0 + Duration::from_secs(60)), Some(7));
        // That lookup saw it: the TTL counts from there.
        assert_eq!(a.lookup(s, t0 + Duration::from_secs(120)), Some(7));
        assert_eq!(a.lookup(s, t0 + Duration::from_secs(181)), None);
        assert!(a.is_empty(), "an expired entry is dropped when read");
    }

    #[test]
    fn sessions_are_per_agent_and_provider() {
        let a = Affinity::with_capacity(10, Duration::from_secs(60));
        let now = Instant::now();
        a.record(a.session("a", "openai", b"x"), 1, now);
        assert_eq!(a.lookup(a.session("b", "openai", b"x"), now), None);
        assert_eq!(a.lookup(a.session("a", "anthropic", b"x"), now), None);
        // Length-prefixed: ("ab", "c") is not ("a", "bc").
        assert_ne!(a.session("ab", "c", b""), a.session("a", "bc", b""));
    }

    #[test]
    fn promote_keeps_the_others_in_order() {
        let mut v = [10u64, 20, 30, 40];
        assert!(promote(&mut v, 30, |x| *x));
        assert_eq!(v, [30, 10, 20, 40]);
        assert!(!promote(&mut v, 99, |x| *x));
        assert_eq!(v, [30, 10, 20, 40]);
        assert_eq!(stuck(None, 1), Stuck::New);
        assert_eq!(stuck(Some(1), 1), Stuck::Kept);
        assert_eq!(stuck(Some(2), 1), Stuck::Moved);
    }
}
