//! Quota domains (SPEC §11): credentials that share one account's limits.
//!
//! Owns what a domain is ([`Domain`]: configured by name, or learned from an answer's
//! organisation headers and known by a hash, never by the organisation id), reading those
//! headers ([`from_headers`]), and what was learned ([`Learned`]): kept by a stable
//! fingerprint of the secret, bounded ([`MAX_LEARNED`]), so a pool rebuilt on reload gets
//! its credentials' domains back at once, and written (off the request path, only when
//! something new is learned) to `<state-dir>/keygate-domains.json`, which `models status`
//! reads without a running server. It does not own the cooldowns a domain shares
//! (`cooldown::Cooldowns::share`), nor which credential serves next (`proxy::attempt`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use serde_json::{json, Value};

/// Bound on remembered credentials (and on entries read from the file).
pub const MAX_LEARNED: usize = 4096;
/// The file learned domains are kept in, in the state directory.
pub const FILE_NAME: &str = "keygate-domains.json";
/// Bound on the file's size when read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A credential's quota domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// `[providers.P] quota_domains`, by its name.
    Configured(Arc<str>),
    /// Learned from an answer: the first 8 bytes of a SHA-256 of its organisation headers.
    Learned(u64),
}

/// What was learned, per credential (by [`secret_key`]).
pub struct Learned {
    map: Mutex<LearnedMap>,
    /// Where it is written (`None`: kept in memory only).
    file: Option<PathBuf>,
    /// Serialises writers of the file (the last writer writes the latest map).
    write: Mutex<()>,
}

#[derive(Default)]
struct LearnedMap {
    /// secret key → (domain hash, insertion sequence for eviction).
    by_key: HashMap<u64, (u64, u64)>,
    seq: u64,
}

/// A stable fingerprint of a secret (the first 8 bytes of a SHA-256): the same in every
/// process and release, so the file and the CLI agree with the server. Not `Candidate.fp`,
/// whose hasher (std's `DefaultHasher`) may change between Rust releases.
/// Fed in two parts, so no copy of the secret is left in memory.
pub fn secret_key(secret: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"keygate quota domain\0");
    ctx.update(secret.as_bytes());
    first_u64(ctx.finish().as_ref())
}

/// The domain an answer's headers name: `anthropic-organization-id`, or
/// `openai-organization` with `openai-project` when present. Returns `None` for an answer
/// without them (or with empty values).
pub fn from_headers(headers: &HeaderMap) -> Option<u64> {
    let value = |name: &str| {
        headers
            .get(name)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
    };
    // Looked up before any hashing: an answer without them (most, until learned) costs
    // two header lookups.
    let (tag, org, project): (&[u8], &[u8], Option<&[u8]>) =
        match value("anthropic-organization-id") {
            Some(org) => (b"anthropic\0", org, None),
            None => (
                b"openai\0",
                value("openai-organization")?,
                value("openai-project"),
            ),
        };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(tag);
    ctx.update(org);
    if let Some(p) = project {
        ctx.update(b"\0");
        ctx.update(p);
    }
    Some(first_u64(ctx.finish().as_ref()))
}

fn first_u64(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

// === impl Domain ===

impl Domain {
    /// `configured` or `learned`.
    pub fn source(&self) -> &'static str {
        match self {
            Domain::Configured(_) => "configured",
            Domain::Learned(_) => "learned",
        }
    }
}

impl fmt::Display for Domain {
    /// The name of a configured domain; `org:` and 8 hex digits of a learned one's hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Configured(name) => f.write_str(name),
            Domain::Learned(h) => write!(f, "org:{:08x}", h >> 32),
        }
    }
}

// === impl Learned ===

impl Learned {
    /// An empty store kept in memory only (tests, benches).
    pub fn in_memory() -> Self {
        Self {
            map: Mutex::new(LearnedMap::default()),
            file: None,
            write: Mutex::new(()),
        }
    }

    /// The store of `state_dir`, starting from its file (a missing or unreadable file
    /// starts empty: what it held is learned again from the next answers).
    pub fn open(state_dir: &Path) -> Self {
        let file = state_dir.join(FILE_NAME);
        let mut map = LearnedMap::default();
        for (key, domain) in read_file(state_dir) {
            map.insert(key, domain);
        }
        Self {
            map: Mutex::new(map),
            file: Some(file),
            write: Mutex::new(()),
        }
    }

    /// The domain learned for a secret (by [`secret_key`]).
    pub fn get(&self, key: u64) -> Option<u64> {
        self.lock().by_key.get(&key).map(|(d, _)| *d)
    }

    /// Remembers a secret's domain. Returns whether it is new (then [`Learned::persist`]).
    pub fn insert(&self, key: u64, domain: u64) -> bool {
        self.lock().insert(key, domain)
    }

    /// Number of credentials remembered.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the file in the background (a blocking task), when there is one and a runtime
    /// to run it on. Called only when something new was learned, so rarely.
    pub fn persist(self: &Arc<Self>) {
        if self.file.is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        rt.spawn_blocking(move || this.write_file());
    }

    /// Writes the file now (atomically, mode 0600). Errors are logged, never fatal: the
    /// file only spares relearning after a restart.
    pub fn write_file(&self) {
        let Some(path) = &self.file else { return };
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let doc = {
            let map = self.lock();
            let mut entries: Vec<(&u64, &(u64, u64))> = map.by_key.iter().collect();
            entries.sort_by_key(|(_, (_, seq))| *seq);
            let list: Vec<Value> = entries
                .into_iter()
                .map(|(k, (d, _))| json!({ "credential": format!("{k:016x}"), "domain": format!("{d:016x}") }))
                .collect();
            json!({ "version": 1, "learned": list })
        };
        let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        if let Err(e) = crate::credentials::store::write::write_atomic(path, &bytes) {
            tracing::warn!(error = %e, "could not write the learned quota domains");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LearnedMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for Learned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Learned")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

// === impl LearnedMap ===

impl LearnedMap {
    fn insert(&mut self, key: u64, domain: u64) -> bool {
        if self.by_key.get(&key).is_some_and(|(d, _)| *d == domain) {
            return false;
        }
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_LEARNED {
            // The oldest learned goes: a credential still in use learns it again.
            if let Some(oldest) = self
                .by_key
                .iter()
                .min_by_key(|(_, (_, seq))| *seq)
                .map(|(k, _)| *k)
            {
                self.by_key.remove(&oldest);
            }
        }
        self.seq += 1;
        self.by_key.insert(key, (domain, self.seq));
        true
    }
}

/// The learned domains in `<state_dir>/keygate-domains.json`, by secret key (at most
/// [`MAX_LEARNED`]; a missing, oversized or malformed file reads as empty).
pub fn read_file(state_dir: &Path) -> HashMap<u64, u64> {
    let path = state_dir.join(FILE_NAME);
    let ok =
        std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= MAX_FILE_BYTES);
    if !ok {
        return HashMap::new();
    }
    let Ok(v) = std::fs::read(&path)
        .map_err(drop)
        .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(drop))
    else {
        return HashMap::new();
    };
    let hex = |v: &Value| v.as_str().and_then(|s| u64::from_str_radix(s, 16).ok());
    v["learned"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((hex(&e["credential"])?, hex(&e["domain"])?)))
        .take(MAX_LEARNED)
        .collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn org_headers_name_a_domain_shown_as_a_short_hash() {
        let a = from_headers(&headers(&[("anthropic-organization-id", "org-1")])).expect("a");
        let b = from_headers(&headers(&[("anthropic-organization-id", "org-2")])).expect("b");
        assert_ne!(a, b);
        let o = from_headers(&headers(&[("openai-organization", "org-1")])).expect("o");
        assert_ne!(a, o, "providers' org ids are apart");
        let p = from_headers(&headers(&[
            ("openai-organization", "org-1"),
            ("openai-project", "proj_x"),
        ]))
        .expect("p");
        assert_ne!(o, p, "a project is its own domain");
        assert_eq!(
            from_headers(&headers(&[("openai-project", "proj_x")])),
            None
        );
        assert_eq!(
            from_headers(&headers(&[("anthropic-organization-id", "")])),
            None
        );
        let shown = Domain::Learned(a).to_string();
        assert!(shown.starts_with("org:") && shown.len() == 12, "{shown}");
        assert!(!shown.contains("org-1"));
        assert_eq!(Domain::Configured("team-a".into()).to_string(), "team-a");
    }

    #[test]
    fn the_store_is_bounded_and_its_file_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Learned::open(dir.path());
        assert!(l.insert(1, 10));
        assert!(!l.insert(1, 10), "nothing new");
        for k in 2..=(MAX_LEARNED as u64 + 5) {
            l.insert(k, 20);
        }
        assert_eq!(l.len(), MAX_LEARNED);
        assert_eq!(l.get(1), None, "the oldest went first");
        l.write_file();
        let again = Learned::open(dir.path());
        assert_eq!(again.len(), MAX_LEARNED);
        assert_eq!(again.get(MAX_LEARNED as u64 + 5), Some(20));
        std::fs::write(dir.path().join(FILE_NAME), "{ oops").expect("write");
        assert!(Learned::open(dir.path()).is_empty());
        assert_eq!(secret_key("sk-a"), secret_key("sk-a"));
        assert_ne!(secret_key("sk-a"), secret_key("sk-b"));
    }
}
