//! Cooldowns: which credential may not be used, for which model, until when, and why
//! (SPEC §7).
//!
//! Owns the in-memory windows and their rules: `rate_limit` cools (credential, model) for
//! the provider's hint (capped at 24 h) or the `backoff` ladder; `auth` cools the whole
//! credential on the same ladder; `billing` (5 h doubling to 24 h) and `auth_permanent`
//! (10 min doubling to 60 min) disable the credential for every model. An active window is
//! never extended; failure counters reset after a success or after 24 h without failures.
//! Windows are keyed by credential id plus a fingerprint of its secret, so a credential
//! whose source changed starts clean. The map is bounded ([`MAX_ENTRIES`]), so
//! client-chosen model names cannot grow it.
//!
//! Reads are lock-free (an `ArcSwap` snapshot); writers serialise on a mutex and publish a
//! new snapshot. The snapshot's maps are persistent (`imbl`): a new version shares all but
//! the changed path with the old one, so a write costs O(log n), not a copy of the map. It does not own classification (see `classify`) nor the order
//! of candidates (see `pool`).

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::classify::{Reason, RetryHint, Verdict};

/// Bound on remembered (credential, scope) entries.
pub const MAX_ENTRIES: usize = 10_000;
/// Hints and ladders never cool a credential longer than this.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);
/// Failure counters reset after this long without failures.
pub const COUNTER_RESET: Duration = Duration::from_secs(24 * 3600);
/// The `auth_permanent` ladder: 10 min doubling to a 60 min cap.
const AUTH_PERMANENT_LADDER: [Duration; 4] = [
    Duration::from_secs(600),
    Duration::from_secs(1200),
    Duration::from_secs(2400),
    Duration::from_secs(3600),
];

/// What a window covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One model of the credential.
    Model(Arc<str>),
    /// Every model (auth failures, or a rate limit whose model is unknown).
    Credential,
    /// The disabled lane: every model, billing or a permanently rejected key.
    Disabled,
}

/// A window as shown in status output.
#[derive(Clone, Debug)]
pub struct WindowView {
    /// Credential id.
    pub credential: String,
    /// What it covers.
    pub scope: Scope,
    /// Why.
    pub reason: Reason,
    /// Time left (zero when ended).
    pub remaining: Duration,
    /// Where the length came from (`retry-after`, `backoff[2]`, `billing_backoff[0]`, …).
    pub source: Cow<'static, str>,
    /// Consecutive failures counted for this scope.
    pub failures: u32,
    /// The last upstream status that opened or fed the window.
    pub last_status: Option<u16>,
}

/// The cooldown ladders from `[rotation]`.
#[derive(Clone, Debug)]
pub struct Ladders {
    /// Without a hint (default 30 s, 1 min, 5 min).
    pub backoff: Vec<Duration>,
    /// Billing (default 5 h, 10 h, 20 h, 24 h).
    pub billing: Vec<Duration>,
}

/// A window this process opened, as its observer sees it (cluster mode shares it).
#[derive(Debug)]
pub struct Opened<'a> {
    /// Credential id.
    pub credential: &'a str,
    /// Fingerprint of its secret.
    pub fp: u64,
    /// The window.
    pub window: Window,
}

/// A window as it travels between replicas: opened here (in [`Opened`]) or learned from
/// another replica ([`Cooldowns::learn`]), where windows merge by their end.
#[derive(Clone, Debug)]
pub struct Window {
    /// What it covers.
    pub scope: Scope,
    /// When it ends.
    pub until: Instant,
    /// Why.
    pub reason: Reason,
    /// Where its length came from.
    pub source: Cow<'static, str>,
    /// Consecutive failures counted (the position on the ladder).
    pub failures: u32,
    /// The status that opened it.
    pub last_status: Option<u16>,
}

/// Called with every window this process opens (not with learned ones).
pub type Observer = Box<dyn Fn(&Opened<'_>) + Send + Sync>;

/// The store.
pub struct Cooldowns {
    snap: ArcSwap<Snapshot>,
    write: Mutex<()>,
    ladders: Ladders,
    cap: usize,
    observer: std::sync::OnceLock<Observer>,
}

#[derive(Clone, Debug)]
struct Entry {
    until: Instant,
    reason: Reason,
    source: Cow<'static, str>,
    failures: u32,
    last_failure: Instant,
    last_status: Option<u16>,
}

/// Everything known about one credential. Looked up by `&str` without allocating.
#[derive(Clone, Debug, Default)]
struct CredState {
    fingerprint: u64,
    disabled: Option<Entry>,
    whole: Option<Entry>,
    models: imbl::HashMap<Arc<str>, Entry>,
}

#[derive(Clone, Default)]
struct Snapshot {
    creds: imbl::HashMap<Arc<str>, CredState>,
    entries: usize,
}

/// A non-reversible fingerprint of a secret, to notice that a credential's source changed.
pub fn fingerprint(secret: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.hash(&mut h);
    h.finish()
}

// === impl Scope ===

impl Scope {
    /// The scope a failure with `reason` opens a window in; `None` for reasons that mark
    /// nothing.
    pub fn of_failure(reason: Reason, model: Option<&str>) -> Option<Scope> {
        Some(match reason {
            Reason::RateLimit => model.map_or(Scope::Credential, |m| Scope::Model(Arc::from(m))),
            Reason::Auth => Scope::Credential,
            Reason::Billing | Reason::AuthPermanent => Scope::Disabled,
            Reason::Overloaded
            | Reason::ModelNotFound
            | Reason::Timeout
            | Reason::Format
            | Reason::Unknown => return None,
        })
    }
}

// === impl Entry ===

impl Entry {
    fn window(&self, scope: Scope) -> Window {
        Window {
            scope,
            until: self.until,
            reason: self.reason,
            source: self.source.clone(),
            failures: self.failures,
            last_status: self.last_status,
        }
    }
}

// === impl CredState ===

impl CredState {
    fn slot(&self, scope: &Scope) -> Option<&Entry> {
        match scope {
            Scope::Disabled => self.disabled.as_ref(),
            Scope::Credential => self.whole.as_ref(),
            Scope::Model(m) => self.models.get(&**m),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.disabled.is_some()) + usize::from(self.whole.is_some()) + self.models.len()
    }

    /// (scope, entry) pairs.
    fn iter(&self) -> impl Iterator<Item = (Scope, &Entry)> {
        self.disabled
            .iter()
            .map(|e| (Scope::Disabled, e))
            .chain(self.whole.iter().map(|e| (Scope::Credential, e)))
            .chain(
                self.models
                    .iter()
                    .map(|(m, e)| (Scope::Model(m.clone()), e)),
            )
    }
}

// === impl Snapshot ===

impl Snapshot {
    fn get(&self, credential: &str, fp: u64) -> Option<&CredState> {
        self.creds.get(credential).filter(|c| c.fingerprint == fp)
    }

    fn set(&mut self, credential: &str, fp: u64, scope: Scope, entry: Entry) {
        let mut state = self.creds.get(credential).cloned().unwrap_or_default();
        if state.fingerprint != fp {
            // The credential's source changed: its old state no longer applies.
            self.entries -= state.len();
            state = CredState {
                fingerprint: fp,
                ..CredState::default()
            };
        }
        let added = match scope {
            Scope::Disabled => state.disabled.replace(entry).is_none(),
            Scope::Credential => state.whole.replace(entry).is_none(),
            Scope::Model(m) => state.models.insert(m, entry).is_none(),
        };
        self.entries += usize::from(added);
        self.creds.insert(Arc::from(credential), state);
    }

    fn remove(&mut self, credential: &str, scope: &Scope) {
        let Some(mut state) = self.creds.get(credential).cloned() else {
            return;
        };
        let removed = match scope {
            Scope::Disabled => state.disabled.take().is_some(),
            Scope::Credential => state.whole.take().is_some(),
            Scope::Model(m) => state.models.remove(&**m).is_some(),
        };
        self.entries -= usize::from(removed);
        if state.len() == 0 {
            self.creds.remove(credential);
        } else {
            self.creds.insert(Arc::from(credential), state);
        }
    }
}

// === impl Cooldowns ===

impl Cooldowns {
    /// An empty store with these ladders and the default cap.
    pub fn new(ladders: Ladders) -> Self {
        Self::with_cap(ladders, MAX_ENTRIES)
    }

    /// An empty store with an explicit cap (tests, benches).
    pub fn with_cap(ladders: Ladders, cap: usize) -> Self {
        Self {
            snap: ArcSwap::from_pointee(Snapshot::default()),
            write: Mutex::new(()),
            ladders,
            cap: cap.max(1),
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Sets the observer of opened windows (once; later calls are ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    /// Merges a window learned from another replica: the later end wins; an ended one is
    /// ignored. Failure counters keep the larger count. Not reported to the observer.
    /// Returns whether it changed anything.
    pub fn learn(&self, credential: &str, fp: u64, w: Window, now: Instant) -> bool {
        if w.until <= now {
            return false;
        }
        let later = |snap: &Snapshot| {
            snap.get(credential, fp)
                .and_then(|s| s.slot(&w.scope))
                .is_none_or(|e| e.until < w.until)
        };
        if !later(&self.snap.load()) {
            return false;
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snap.load_full();
        if !later(&cur) {
            return false;
        }
        let prev = cur.get(credential, fp).and_then(|s| s.slot(&w.scope));
        let entry = Entry {
            until: w.until,
            reason: w.reason,
            source: w.source,
            failures: prev.map_or(w.failures, |e| e.failures.max(w.failures)),
            last_failure: now,
            last_status: w.last_status,
        };
        self.store(&cur, credential, fp, w.scope, entry, now);
        true
    }

    /// Every window with time left, with its credential and fingerprint (cluster re-sync).
    pub fn each_active(&self, now: Instant, mut f: impl FnMut(&Opened<'_>)) {
        let snap = self.snap.load();
        for (c, s) in snap.creds.iter() {
            for (scope, e) in s.iter().filter(|(_, e)| e.until > now) {
                f(&Opened {
                    credential: c,
                    fp: s.fingerprint,
                    window: e.window(scope),
                });
            }
        }
    }

    /// Until when the credential may not serve `model`, if it is blocked now: the latest
    /// end among its disabled lane, its credential window and its model window.
    pub fn blocked_until(
        &self,
        credential: &str,
        fp: u64,
        model: Option<&str>,
        now: Instant,
    ) -> Option<Instant> {
        let snap = self.snap.load();
        let state = snap.get(credential, fp)?;
        let model_entry = model.and_then(|m| state.models.get(m));
        [state.disabled.as_ref(), state.whole.as_ref(), model_entry]
            .into_iter()
            .flatten()
            .filter(|e| e.until > now)
            .map(|e| e.until)
            .max()
    }

    /// Records a failed attempt. Returns the window it opened (until, source), or `None`
    /// when the reason marks nothing or a window was already active.
    pub fn record_failure(
        &self,
        credential: &str,
        fp: u64,
        model: Option<&str>,
        verdict: &Verdict,
        status: Option<u16>,
        now: Instant,
    ) -> Option<(Instant, Cow<'static, str>)> {
        let scope = Scope::of_failure(verdict.reason, model)?;
        // Fast path: an active window is never extended, so most failures of an in-flight
        // burst need no write at all.
        let active = |snap: &Snapshot| {
            snap.get(credential, fp)
                .and_then(|s| s.slot(&scope))
                .is_some_and(|e| e.until > now)
        };
        if active(&self.snap.load()) {
            return None;
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snap.load_full();
        if active(&cur) {
            return None;
        }
        let prev = cur.get(credential, fp).and_then(|s| s.slot(&scope));
        let failures = match prev {
            Some(e) if now.saturating_duration_since(e.last_failure) < COUNTER_RESET => {
                e.failures + 1
            }
            _ => 1,
        };
        let step = (failures - 1) as usize;
        let (len, source): (Duration, Cow<'static, str>) = match verdict.reason {
            // A zero hint cannot be right (the classifier gives none; this guards every
            // other caller): never a zero-length window.
            Reason::RateLimit => match verdict.hint.filter(|h| !h.after.is_zero()) {
                Some(h) => (h.after, Cow::Borrowed(h.source)),
                None => ladder_step("backoff", &self.ladders.backoff, step),
            },
            Reason::Auth => ladder_step("backoff", &self.ladders.backoff, step),
            Reason::Billing => ladder_step("billing_backoff", &self.ladders.billing, step),
            _ => ladder_step("auth_permanent", &AUTH_PERMANENT_LADDER, step),
        };
        let until = now + len.min(MAX_COOLDOWN);
        let entry = Entry {
            until,
            reason: verdict.reason,
            source: source.clone(),
            failures,
            last_failure: now,
            last_status: status,
        };
        self.publish(&cur, credential, fp, scope, entry, now);
        Some((until, source))
    }

    /// Copies the window (`credential`, `scope`) to `others`, the rest of its quota domain
    /// (SPEC §11): the same end, reason, source and status, and the larger failure count
    /// (the domain is one account, so one position on the ladder). A sibling whose window in
    /// that scope is active keeps it (never extended), and an ended origin window is not
    /// copied. One write for all; each copy is told to the observer (cluster mode shares
    /// it). Returns the ids of the siblings it cooled.
    pub fn share<'a>(
        &self,
        credential: &str,
        fp: u64,
        scope: &Scope,
        others: impl IntoIterator<Item = (&'a str, u64)>,
        now: Instant,
    ) -> Vec<&'a str> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snap.load_full();
        let Some(origin) = cur
            .get(credential, fp)
            .and_then(|s| s.slot(scope))
            .filter(|e| e.until > now)
            .cloned()
        else {
            return Vec::new();
        };
        let mut cooled = Vec::new();
        for (id, sfp) in others {
            // Under the write lock the latest snapshot is the one this loop stored last.
            let cur = self.snap.load_full();
            let prev = cur.get(id, sfp).and_then(|s| s.slot(scope));
            if id == credential || prev.is_some_and(|e| e.until > now) {
                continue;
            }
            let entry = Entry {
                failures: prev.map_or(origin.failures, |e| e.failures.max(origin.failures)),
                last_failure: now,
                ..origin.clone()
            };
            self.publish(&cur, id, sfp, scope.clone(), entry, now);
            cooled.push(id);
        }
        cooled
    }

    /// Steering before 429: a success that says the credential is spent cools (credential,
    /// model) until the advertised reset, without counting a failure. Without a reset that
    /// can be right (`hint` is `None` or zero) it cools on the `backoff` ladder at the step
    /// the next failure would take: a spent credential never stays usable. Returns the
    /// window's length and source, `None` when an active window was left as it is.
    pub fn steer(
        &self,
        credential: &str,
        fp: u64,
        model: Option<&str>,
        hint: Option<RetryHint>,
        now: Instant,
    ) -> Option<(Duration, Cow<'static, str>)> {
        let scope = model.map_or(Scope::Credential, |m| Scope::Model(Arc::from(m)));
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snap.load_full();
        let prev = cur.get(credential, fp).and_then(|s| s.slot(&scope));
        if prev.is_some_and(|e| e.until > now) {
            return None;
        }
        let (after, source) = match hint.filter(|h| !h.after.is_zero()) {
            Some(h) => (h.after, Cow::Borrowed(h.source)),
            None => {
                let step = prev
                    .filter(|e| now.saturating_duration_since(e.last_failure) < COUNTER_RESET)
                    .map_or(0, |e| e.failures as usize);
                ladder_step("backoff", &self.ladders.backoff, step)
            }
        };
        let entry = Entry {
            until: now + after.min(MAX_COOLDOWN),
            reason: Reason::RateLimit,
            source: source.clone(),
            failures: prev.map_or(0, |e| e.failures),
            last_failure: prev.map_or(now, |e| e.last_failure),
            last_status: Some(200),
        };
        self.publish(&cur, credential, fp, scope, entry, now);
        Some((after, source))
    }

    /// A success: forgets the ended windows (and so the failure counters) of (credential,
    /// model) and of the credential-wide scopes. Cheap when there is nothing to forget.
    pub fn record_success(&self, credential: &str, fp: u64, model: Option<&str>, now: Instant) {
        let ended = |snap: &Snapshot| -> Vec<Scope> {
            let Some(state) = snap.get(credential, fp) else {
                return Vec::new();
            };
            let mut v = Vec::new();
            if state.disabled.as_ref().is_some_and(|e| e.until <= now) {
                v.push(Scope::Disabled);
            }
            if state.whole.as_ref().is_some_and(|e| e.until <= now) {
                v.push(Scope::Credential);
            }
            if let Some((m, _)) = model
                .and_then(|m| state.models.get_key_value(m))
                .filter(|(_, e)| e.until <= now)
            {
                v.push(Scope::Model(m.clone()));
            }
            v
        };
        if ended(&self.snap.load()).is_empty() {
            return;
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snap.load_full();
        let scopes = ended(&cur);
        if scopes.is_empty() {
            return;
        }
        let mut next = Snapshot::clone(&cur);
        for s in &scopes {
            next.remove(credential, s);
        }
        self.snap.store(Arc::new(next));
    }

    /// Number of active windows (for metrics and status).
    pub fn active(&self, now: Instant) -> usize {
        self.snap
            .load()
            .creds
            .values()
            .map(|s| s.iter().filter(|(_, e)| e.until > now).count())
            .sum()
    }

    /// Every window with time left, most recent first.
    pub fn windows(&self, now: Instant) -> Vec<WindowView> {
        let snap = self.snap.load();
        let mut v: Vec<(Instant, WindowView)> = snap
            .creds
            .iter()
            .flat_map(|(c, s)| s.iter().map(move |(scope, e)| (c, scope, e)))
            .filter(|(_, _, e)| e.until > now)
            .map(|(c, scope, e)| {
                (
                    e.last_failure,
                    WindowView {
                        credential: c.to_string(),
                        scope,
                        reason: e.reason,
                        remaining: e.until - now,
                        source: e.source.clone(),
                        failures: e.failures,
                        last_status: e.last_status,
                    },
                )
            })
            .collect();
        v.sort_by_key(|w| std::cmp::Reverse(w.0));
        v.into_iter().map(|(_, w)| w).collect()
    }

    /// Number of entries kept (active or ended with a live counter).
    pub fn len(&self) -> usize {
        self.snap.load().entries
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores a window this process opened, and tells the observer.
    fn publish(
        &self,
        cur: &Snapshot,
        credential: &str,
        fp: u64,
        scope: Scope,
        entry: Entry,
        now: Instant,
    ) {
        if let Some(observe) = self.observer.get() {
            observe(&Opened {
                credential,
                fp,
                window: entry.window(scope.clone()),
            });
        }
        self.store(cur, credential, fp, scope, entry, now);
    }

    fn store(
        &self,
        cur: &Snapshot,
        credential: &str,
        fp: u64,
        scope: Scope,
        entry: Entry,
        now: Instant,
    ) {
        let mut next = cur.clone();
        let exists = next
            .get(credential, fp)
            .and_then(|s| s.slot(&scope))
            .is_some();
        if !exists && next.entries >= self.cap {
            evict(&mut next, self.cap, now);
        }
        next.set(credential, fp, scope, entry);
        self.snap.store(Arc::new(next));
    }
}

fn ladder_step(
    name: &'static str,
    ladder: &[Duration],
    step: usize,
) -> (Duration, Cow<'static, str>) {
    let i = step.min(ladder.len().saturating_sub(1));
    let len = ladder.get(i).copied().unwrap_or(Duration::from_secs(30));
    (len, Cow::Owned(format!("{name}[{i}]")))
}

/// Makes room: first drop ended windows, then the windows that end soonest — a tenth of
/// the cap at once, so a flood of new model names does not evict on every write.
fn evict(s: &mut Snapshot, cap: usize, now: Instant) {
    let mut all: Vec<(bool, Instant, Arc<str>, Scope)> = s
        .creds
        .iter()
        .flat_map(|(c, st)| {
            st.iter()
                .map(move |(scope, e)| (e.until > now, e.until, c.clone(), scope))
        })
        .collect();
    all.sort_by_key(|a| (a.0, a.1));
    let free = (cap / 10).max(1);
    for (_, _, c, scope) in all.into_iter().take(free) {
        s.remove(&c, &scope);
    }
}

#[cfg(test)]
mod tests;
