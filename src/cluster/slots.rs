//! Cluster-wide request budgets (SPEC §10): `rpm` as a sliding window per credential, and
//! in-flight leases that expire when their replica dies (the `max_in_flight` primitive of
//! SPEC §11).
//!
//! Unlike the windows of `link`, these are asked on the request path, so each call is
//! bounded by [`SLOT_TIMEOUT`] and never fails a request: with no connection, an error or a
//! slow answer the caller gets [`Slot::Local`] and applies its local limiter alone. After a
//! slow answer Redis is left alone for [`QUIET`], so a slow Redis costs one timeout a second,
//! not one per request. The connection is the link's multiplexed one, attached while the
//! link is up. Credentials are named by their shared id, never their id or secret.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;

use super::wire::{self, LEASE_SCRIPT, RPM_SCRIPT};

/// Longest wait for one slot call on the request path.
pub const SLOT_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the request path skips Redis after a call timed out.
pub const QUIET: Duration = Duration::from_secs(1);
/// The `rpm` window.
pub const RPM_WINDOW: Duration = Duration::from_secs(60);
/// Longest lease: a dead replica's slots are free again within it (SPEC §10: 30 s).
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(30);
/// Shortest lease (tests use short ones).
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(100);

/// The cluster's answer for one slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// Granted cluster-wide.
    Granted,
    /// The credential is at its cluster-wide budget; a slot frees up after this long.
    Refused(Duration),
    /// Redis could not answer in time (or is not connected): decide locally.
    Local,
}

/// What [`Slots::lease`] came to.
#[derive(Debug)]
pub enum Leased {
    /// Held until the [`Lease`] is released or dropped.
    Held(Lease),
    /// Every slot of the credential is held.
    Refused,
    /// Redis could not answer in time (or is not connected): decide locally.
    Local,
}

/// The slot calls of one replica.
pub struct Slots {
    prefix: String,
    me: String,
    conn: ArcSwapOption<MultiplexedConnection>,
    /// Makes members unique within this replica.
    next: AtomicU64,
    /// Epoch ms before which the request path does not ask Redis (after a timeout).
    quiet_until: AtomicI64,
    rpm: redis::Script,
    lease: redis::Script,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("prefix", &self.prefix)
            .field("me", &self.me)
            .field("attached", &self.attached())
            .finish_non_exhaustive()
    }
}

impl Slots {
    /// Slot calls for keys under `prefix`, made by replica `me` (its id names its members).
    pub fn new(prefix: &str, me: &str) -> Arc<Self> {
        Arc::new(Self {
            prefix: prefix.to_owned(),
            me: me.to_owned(),
            conn: ArcSwapOption::empty(),
            next: AtomicU64::new(0),
            quiet_until: AtomicI64::new(0),
            rpm: redis::Script::new(RPM_SCRIPT),
            lease: redis::Script::new(LEASE_SCRIPT),
        })
    }

    /// Uses this connection from now on (`None`: Redis is away, every call is local).
    pub fn attach(&self, conn: Option<MultiplexedConnection>) {
        self.conn.store(conn.map(Arc::new));
        self.quiet_until.store(0, Ordering::Relaxed);
    }

    /// Whether a connection is attached.
    pub fn attached(&self) -> bool {
        self.conn.load().is_some()
    }

    /// One request of the credential `shared` under a cluster-wide `limit` per minute.
    pub async fn rpm(&self, shared: &[u8; 16], limit: u32) -> Slot {
        let key = wire::rpm_key(&self.prefix, shared);
        let member = self.member();
        let args = [i64::from(limit), RPM_WINDOW.as_millis() as i64];
        match self.call(&self.rpm, &key, &args, &member).await {
            Some(0) => Slot::Granted,
            Some(wait) => Slot::Refused(Duration::from_millis(wait.clamp(1, 60_000) as u64)),
            None => Slot::Local,
        }
    }

    /// One of the credential's `cap` in-flight slots, held for `ttl` (clamped to
    /// [`MIN_LEASE_TTL`]..=[`MAX_LEASE_TTL`]) and refreshed every third of it while the
    /// [`Lease`] lives. A replica that dies stops refreshing: its slots free up within `ttl`.
    pub async fn lease(self: &Arc<Self>, shared: &[u8; 16], cap: u32, ttl: Duration) -> Leased {
        let ttl = ttl.clamp(MIN_LEASE_TTL, MAX_LEASE_TTL);
        let key = wire::slots_key(&self.prefix, shared);
        let member = self.member();
        let args = [i64::from(cap), ttl.as_millis() as i64];
        match self.call(&self.lease, &key, &args, &member).await {
            Some(1) => {}
            Some(_) => return Leased::Refused,
            None => return Leased::Local,
        }
        let me = Arc::downgrade(self);
        let (k, m) = (key.clone(), member.clone());
        let refresher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(slots) = me.upgrade() else { return };
                // A refresh that fails leaves the lease to expire: the cap holds either way.
                let _ = slots.call(&slots.lease, &k, &args, &m).await;
            }
        });
        Leased::Held(Lease {
            slots: Arc::clone(self),
            key,
            member,
            refresher: Some(refresher),
        })
    }

    /// `<replica>:<n>`: unique across the cluster.
    fn member(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.me)
    }

    /// Runs `script` on `key` with `args` then `member`; `None` when Redis is not there, is
    /// quiet, errs, or takes longer than [`SLOT_TIMEOUT`] (then it is quiet for [`QUIET`]).
    async fn call(
        &self,
        script: &redis::Script,
        key: &str,
        args: &[i64],
        member: &str,
    ) -> Option<i64> {
        if wire::now_ms() < self.quiet_until.load(Ordering::Relaxed) {
            return None;
        }
        let mut conn = MultiplexedConnection::clone(self.conn.load().as_deref()?);
        let mut call = script.prepare_invoke();
        call.key(key);
        for a in args {
            call.arg(*a);
        }
        call.arg(member);
        match tokio::time::timeout(SLOT_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::debug!(kind = ?e.kind(), "cluster: slot call failed; deciding locally");
                None
            }
            Err(_) => {
                let until = wire::now_ms() + QUIET.as_millis() as i64;
                self.quiet_until.store(until, Ordering::Relaxed);
                tracing::debug!("cluster: slot call timed out; deciding locally for 1 s");
                None
            }
        }
    }
}

/// One held in-flight slot. Released when dropped (in the background, bounded by
/// [`SLOT_TIMEOUT`]); if that fails too, it expires with its TTL.
#[derive(Debug)]
pub struct Lease {
    slots: Arc<Slots>,
    key: String,
    member: String,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// Gives the slot back now.
    pub async fn release(mut self) {
        self.stop_refreshing();
        remove(&self.slots, &self.key, &self.member).await;
        self.member.clear();
    }

    /// Stops refreshing without giving the slot back: as if this replica died (tests).
    pub fn abandon(mut self) {
        self.stop_refreshing();
        self.member.clear();
    }

    fn stop_refreshing(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_refreshing();
        if self.member.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (slots, key, member) = (
            Arc::clone(&self.slots),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        rt.spawn(async move { remove(&slots, &key, &member).await });
    }
}

/// `ZREM key member`, bounded by [`SLOT_TIMEOUT`]; a failure leaves it to its TTL.
async fn remove(slots: &Slots, key: &str, member: &str) {
    let Some(conn) = slots.conn.load_full() else {
        return;
    };
    let mut conn = MultiplexedConnection::clone(&conn);
    let mut cmd = redis::cmd("ZREM");
    cmd.arg(key).arg(member);
    let _ = tokio::time::timeout(SLOT_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await;
}
