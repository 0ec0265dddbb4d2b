//! Cluster mode (SPEC §10): replicas that share one key pool share what they learn about it
//! through Redis.
//!
//! Owns the replica's side of that: the shared identity of a credential (a keyed
//! fingerprint of its secret, never the secret nor its id), the messages and keys that
//! carry cooldown windows (`wire`), the link that keeps a connection, follows pub/sub,
//! re-syncs after a gap and beats (`link`), and what status, metrics and `keygate cluster
//! status` show of it. Reads never wait for Redis: windows learned from other replicas are
//! merged into the local [`Cooldowns`], which the request path reads as before; a window
//! this process opens reaches the link through a bounded queue that never blocks.
//!
//! Cluster-wide `rpm` and in-flight leases (`slots`) are the exception: asked on the request
//! path, each call bounded by a short timeout, and decided locally when Redis cannot answer.
//!
//! It does not own the windows' rules (`cooldown`) nor the pools (`pool`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ring::hmac;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::ClusterConfig;
use crate::cooldown::{Cooldowns, Opened};
use crate::metrics::ClusterSeries;
use crate::pool::{Candidate, Registry};

mod link;
pub mod oauth;
pub mod slots;
pub mod wire;

pub use link::{inspect, Inspection};
pub use slots::{Lease, Leased, Slot, Slots};
use wire::{Replica, WindowMsg};

/// Windows waiting for the link; past it, the next connection re-syncs instead.
const QUEUE: usize = 4096;
/// Bound on remembered shared windows and on the credential index.
const MAX_KNOWN: usize = 16_384;
/// How long start-up waits for the first sync (SPEC §10).
pub const START_WAIT: Duration = Duration::from_secs(1);

/// What the link is told to do.
#[derive(Debug)]
enum Outbound {
    /// Share a window this replica opened.
    Window(WindowMsg),
}

/// This replica's view of the cluster.
pub struct Cluster {
    config: ClusterConfig,
    me: Replica,
    fp_key: hmac::Key,
    cooldowns: Arc<Cooldowns>,
    registry: Weak<Registry>,
    queue: mpsc::Sender<Outbound>,
    inbox: Mutex<Option<mpsc::Receiver<Outbound>>>,
    /// Set when an opened window could not be queued: the link then re-pushes all.
    resync: AtomicBool,
    connected: AtomicBool,
    series: ClusterSeries,
    /// Epoch ms of the last event sent or received (0: none yet).
    last_event_ms: AtomicI64,
    /// (credential id, local fingerprint) → shared id, and back.
    index: Mutex<Index>,
    /// Shared windows seen, by Redis key, for pools built after they arrived.
    known: Mutex<HashMap<String, WindowMsg>>,
    /// Replicas seen in the last 60 s (refreshed with each heartbeat).
    replicas: Mutex<Vec<Replica>>,
    /// Turns true once the first connection attempt has synced or failed.
    ready: watch::Sender<bool>,
    /// Cluster-wide `rpm` and in-flight leases, on the link's connection.
    slots: Arc<Slots>,
    /// The link's command connection while it is up (OAuth leases use it too).
    conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// OAuth profiles already warned about (no cluster key: their tokens are not shared).
    warned: Mutex<HashSet<String>>,
}

#[derive(Default)]
struct Index {
    /// Credential id → (local fingerprint, shared id): one secret per id, as the local
    /// cooldowns keep it.
    by_local: HashMap<Arc<str>, (u64, [u8; 16])>,
    by_shared: HashMap<[u8; 16], Vec<(Arc<str>, u64)>>,
}

impl Cluster {
    /// A replica's cluster state for these cooldowns and pools; nothing connects until
    /// [`Cluster::run`]. Observes the cooldowns and the pools from here on.
    pub fn new(
        config: ClusterConfig,
        cooldowns: Arc<Cooldowns>,
        registry: &Arc<Registry>,
        series: ClusterSeries,
    ) -> Arc<Self> {
        let (queue, inbox) = mpsc::channel(QUEUE);
        let fp_key = hmac::Key::new(hmac::HMAC_SHA256, &fingerprint_key(&config));
        let me = Replica::me();
        let slots = Slots::new(&config.key_prefix, &me.id);
        let cluster = Arc::new(Self {
            me,
            slots,
            fp_key,
            cooldowns: cooldowns.clone(),
            registry: Arc::downgrade(registry),
            queue,
            inbox: Mutex::new(Some(inbox)),
            resync: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            series,
            last_event_ms: AtomicI64::new(0),
            index: Mutex::new(Index::default()),
            known: Mutex::new(HashMap::new()),
            replicas: Mutex::new(Vec::new()),
            ready: watch::channel(false).0,
            conn: Mutex::new(None),
            warned: Mutex::new(HashSet::new()),
            config,
        });
        if cluster.config.secret_key.is_none() {
            tracing::warn!("cluster: no secret_key_env: credential fingerprints in Redis are keyed by the key prefix only, so whoever reads Redis can test a guessed key against them; set secret_key_env (64 hex characters) on every replica");
        }
        let weak = Arc::downgrade(&cluster);
        cooldowns.observe(Box::new(move |o| {
            if let Some(c) = weak.upgrade() {
                c.opened(o);
            }
        }));
        let weak = Arc::downgrade(&cluster);
        registry.on_built(Box::new(move |cand| {
            if let Some(c) = weak.upgrade() {
                c.built(cand);
            }
        }));
        cluster
    }

    /// Runs the link until `stop` turns true (see `link`).
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let Some(inbox) = self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        link::run(self, inbox, stop).await;
    }

    /// Waits until the first connection attempt has loaded the shared state or failed, at
    /// most `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        let mut rx = self.ready.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|r| *r)).await;
    }

    /// Whether the link is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// One request of `cand` under its provider's `rpm`, counted across the cluster
    /// ([`Slot::Local`]: Redis could not say; the local limiter alone decides).
    pub async fn rpm_slot(&self, cand: &Candidate, rpm: u32) -> Slot {
        self.slots.rpm(&self.shared_id(cand), rpm).await
    }

    /// One of `cand`'s `cap` in-flight slots across the cluster, for `ttl` (≤ 30 s),
    /// refreshed while the lease lives: the hook `max_in_flight` (SPEC §11) takes.
    pub async fn lease(&self, cand: &Candidate, cap: u32, ttl: Duration) -> Leased {
        self.slots.lease(&self.shared_id(cand), cap, ttl).await
    }

    fn set_connected(&self, up: bool) {
        if !up {
            self.slots.attach(None);
            // Unknown while away: only this replica is seen.
            self.replicas
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        self.connected.store(up, Ordering::Relaxed);
        self.series.connected.set(i64::from(up));
    }

    /// Keeps (or, with `None`, forgets) the link's command connection.
    fn set_conn(&self, conn: Option<redis::aio::MultiplexedConnection>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
    }

    /// The command connection, while the link is up.
    fn conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        if !self.connected() {
            return None;
        }
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What coordinates this replica's OAuth refreshes with the others: `None` without a
    /// cluster key (tokens are then never shared, SPEC §10).
    pub fn refresh_coordinator(
        self: &Arc<Self>,
    ) -> Option<Arc<dyn crate::credentials::oauth::RefreshCoordinator>> {
        let share = oauth::OAuthShare::new(self.clone())?;
        Some(Arc::new(share))
    }

    /// The `cluster` block of `/_keygate/status`.
    pub fn status_json(&self) -> Value {
        let last = self.last_event_ms.load(Ordering::Relaxed);
        let age = (last > 0).then(|| (wire::now_ms() - last).max(0));
        let replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        let seen = replicas.iter().filter(|r| r.id != self.me.id).count() + 1;
        json!({
            "connected": self.connected(),
            "replica": self.me.id,
            "replicas": seen,
            "lastEventAgeMs": age,
        })
    }

    /// The shared id of a credential: HMAC-SHA256 of its secret under the cluster's
    /// fingerprint key, first 16 bytes.
    fn shared_id(&self, c: &Candidate) -> [u8; 16] {
        c.shared_id(|secret| sign(&self.fp_key, secret))
    }

    /// Indexes a credential by its shared id (replacing what its id held before: a new
    /// secret, e.g. a refreshed token); returns the shared id.
    fn index(&self, cand: &Candidate) -> [u8; 16] {
        let shared = self.shared_id(cand);
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let id = cand.cred.id.as_str();
        match index.by_local.get(id).copied() {
            Some((fp, _)) if fp == cand.fp => return shared,
            Some((_, old)) => {
                if let Some(v) = index.by_shared.get_mut(&old) {
                    v.retain(|(i, _)| &**i != id);
                    if v.is_empty() {
                        index.by_shared.remove(&old);
                    }
                }
            }
            // Bounded: past the cap a credential is served but not shared.
            None if index.by_local.len() >= MAX_KNOWN => return shared,
            None => {}
        }
        let id: Arc<str> = Arc::from(id);
        index.by_local.insert(id.clone(), (cand.fp, shared));
        index
            .by_shared
            .entry(shared)
            .or_default()
            .push((id, cand.fp));
        shared
    }

    /// A pool was built: index its credentials and apply the shared windows known for them.
    fn built(&self, cand: &Arc<Candidate>) {
        if cand.cred.kind == crate::credentials::Kind::OAuth
            && cand.cred.source == crate::credentials::Source::Profile
            && self.config.secret_key.is_none()
        {
            self.warn_unshared(cand.cred.id.as_str());
        }
        let shared = self.index(cand);
        let hex = hex::encode(shared);
        let known: Vec<WindowMsg> = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|m| m.cred == hex)
            .cloned()
            .collect();
        let now = Instant::now();
        for m in known {
            if let Some(w) = m.learned(now) {
                self.cooldowns.learn(cand.cred.id.as_str(), cand.fp, w, now);
            }
        }
    }

    /// Without a cluster key an oauth profile's refreshes stay local: said once per profile
    /// (at start, for the served agent's store; later for pools built after).
    fn warn_unshared(&self, id: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() < MAX_KNOWN && warned.insert(id.to_owned()) {
            tracing::warn!(profile = id, "cluster: no cluster.secret_key_env, so OAuth tokens are not shared through Redis: every replica refreshes this oauth profile on its own");
        }
    }

    /// A window this process opened: queue it for the link. Never blocks.
    fn opened(&self, o: &Opened<'_>) {
        let shared = {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            index
                .by_local
                .get(o.credential)
                .filter(|(fp, _)| *fp == o.fp)
                .map(|(_, shared)| *shared)
        };
        let Some(shared) = shared.or_else(|| self.lookup(o.credential, o.fp)) else {
            return;
        };
        let Some(msg) = WindowMsg::from_opened(&self.me.id, &shared, o) else {
            return;
        };
        if self.queue.try_send(Outbound::Window(msg)).is_err() {
            self.resync.store(true, Ordering::Relaxed);
        }
    }

    /// The shared id of a credential the index does not hold yet (its pool was built before
    /// the hook). Only indexes: it runs under the cooldowns' write lock (the observer), so
    /// it must not merge windows into them.
    fn lookup(&self, credential: &str, fp: u64) -> Option<[u8; 16]> {
        let registry = self.registry.upgrade()?;
        let mut found = None;
        registry.each_candidate(|c| {
            if found.is_none() && c.fp == fp && c.cred.id.as_str() == credential {
                found = Some(c.clone());
            }
        });
        let found = found?;
        Some(self.index(&found))
    }

    /// A window from Redis (pub/sub or sync): remember it and merge it into the local
    /// cooldowns of every credential with that shared id.
    fn learn(&self, key: String, msg: WindowMsg) {
        let now = Instant::now();
        let Some(w) = msg.learned(now) else { return };
        let Some(shared) = msg.shared_bytes() else {
            return;
        };
        let targets = {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            index.by_shared.get(&shared).cloned().unwrap_or_default()
        };
        for (id, fp) in targets {
            self.cooldowns.learn(&id, fp, w.clone(), now);
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_KNOWN && !known.contains_key(&key) {
            let now_ms = wire::now_ms();
            known.retain(|_, m| m.end > now_ms);
            if known.len() >= MAX_KNOWN {
                return;
            }
        }
        // Later end wins here too.
        if known.get(&key).is_none_or(|m| m.end < msg.end) {
            known.insert(key, msg);
        }
    }

    /// Every window this process holds, as messages (pushed after a reconnect).
    fn local_windows(&self) -> Vec<WindowMsg> {
        let mut out = Vec::new();
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing = Vec::new();
        self.cooldowns.each_active(Instant::now(), |o| {
            match index
                .by_local
                .get(o.credential)
                .filter(|(fp, _)| *fp == o.fp)
            {
                Some((_, shared)) => out.extend(WindowMsg::from_opened(&self.me.id, shared, o)),
                None => missing.push(o.credential.to_owned()),
            }
        });
        drop(index);
        if !missing.is_empty() {
            tracing::debug!(
                n = missing.len(),
                "cluster: windows of credentials no pool serves are not shared"
            );
        }
        out
    }

    fn note_event(&self, sent: bool) {
        let counter = if sent {
            &self.series.sent
        } else {
            &self.series.received
        };
        counter.inc();
        self.last_event_ms.store(wire::now_ms(), Ordering::Relaxed);
    }
}

/// The shared id of a secret under this cluster config (what `keygate cluster status` uses
/// to name the windows of local credentials).
pub fn shared_id_of(config: &ClusterConfig, secret: &str) -> [u8; 16] {
    sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &fingerprint_key(config)),
        secret,
    )
}

fn sign(key: &hmac::Key, secret: &str) -> [u8; 16] {
    let tag = hmac::sign(key, secret.as_bytes());
    let mut id = [0; 16];
    id.copy_from_slice(&tag.as_ref()[..16]);
    id
}

/// The Redis URL as shown: scheme, host, port and path, never the user info.
pub fn shown_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
            format!("{scheme}://{rest}")
        }
        None => "(not a URL)".to_owned(),
    }
}

/// The key credential fingerprints are computed under: derived from the cluster key when
/// there is one, else from the key prefix (so replicas of one pool agree without a secret;
/// the secrets themselves are high-entropy API keys and tokens).
fn fingerprint_key(config: &ClusterConfig) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"keygate cluster credential fingerprint v1\0");
    // The key's 32 bytes, so its hex spelling (upper or lower case) does not matter.
    match config
        .secret_key
        .as_ref()
        .and_then(|k| hex::decode(k.expose()).ok())
    {
        Some(k) => ctx.update(&k),
        None => ctx.update(config.key_prefix.as_bytes()),
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}
