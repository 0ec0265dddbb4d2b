//! Which candidate serves next, pure: no I/O, no waiting, the clock passed in.
//!
//! Owns the per-credential request limits (`[providers.P] rpm`, governor's keyed limiters,
//! keyed by the secret's fingerprint: no allocation per check; `max_in_flight`, a counter
//! per secret fingerprint shared by every pool and reload, taken as an [`InFlightSlot`])
//! and the rule of SPEC §5/§7/§11: in attempt order, the first candidate not yet tried that
//! is neither cooling for this model nor disabled, is under its in-flight cap and under its
//! rpm — or, when none is, the soonest moment one will be and whether a cap blocked one. A pinned request skips the cooldown and rpm checks (the caller asked for that key).
//! It does not own the order (`registry`), the cooldown windows (`cooldown`), the
//! cluster-wide rpm (`cluster::slots`, asked by the attempt loop after a pick, so this stays
//! pure) nor the wait (`proxy::attempt`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Candidate;
use crate::config::Config;
use crate::cooldown::Cooldowns;

/// One provider's per-credential request limiter.
pub type Limiter = DefaultKeyedRateLimiter<u64>;

/// The request limits of every provider that sets `rpm` or `max_in_flight`.
#[derive(Default)]
pub struct Limits {
    rpm: HashMap<String, Limiter>,
    in_flight: HashMap<String, Arc<Caps>>,
}

/// One provider's `max_in_flight`: a counter per secret fingerprint, and a wake-up for
/// requests waiting for a slot.
pub struct Caps {
    cap: u32,
    /// Counters by fingerprint; a counter lives while a candidate or a slot holds it.
    gates: Mutex<HashMap<u64, Weak<Gate>>>,
    freed: Notify,
}

/// The requests in flight on one credential.
pub struct Gate {
    n: AtomicU32,
    caps: Arc<Caps>,
}

/// One request's hold on a credential's in-flight slot, released when dropped (SPEC §11).
pub struct InFlightSlot(Arc<Gate>);

/// What [`Selector::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    /// The candidate at this index serves now (its rpm token and in-flight slot are taken).
    Use(usize, Option<InFlightSlot>),
    /// Nobody untried may serve now; `soonest` is when a cooling or rate-limited candidate
    /// frees up (`None` when every candidate has been tried).
    Blocked {
        /// The earliest end of the windows that blocked a candidate.
        soonest: Option<Instant>,
        /// An untried candidate was skipped only for being at its `max_in_flight`.
        at_cap: bool,
    },
}

// === impl Caps ===

impl Caps {
    /// Bound on dead entries kept before a sweep (credentials replaced by new secrets).
    const SWEEP_AT: usize = 1024;

    /// The counter of the secret with fingerprint `fp`, shared by every candidate with it.
    fn gate(self: &Arc<Self>, fp: u64) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gates.get(&fp).and_then(Weak::upgrade) {
            return g;
        }
        if gates.len() >= Self::SWEEP_AT {
            gates.retain(|_, g| g.strong_count() > 0);
        }
        let g = Arc::new(Gate {
            n: AtomicU32::new(0),
            caps: Arc::clone(self),
        });
        gates.insert(fp, Arc::downgrade(&g));
        g
    }

    /// Woken when any slot of this provider frees up.
    pub fn freed(&self) -> &Notify {
        &self.freed
    }
}

// === impl Gate ===

impl Gate {
    /// Takes a slot if one is free.
    fn try_take(self: &Arc<Self>) -> Option<InFlightSlot> {
        let cap = self.caps.cap;
        self.n
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlightSlot(Arc::clone(self)))
    }

    /// Requests in flight now.
    pub fn current(&self) -> u32 {
        self.n.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("n", &self.current())
            .field("cap", &self.caps.cap)
            .finish()
    }
}

// === impl InFlightSlot ===

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.n.fetch_sub(1, Ordering::AcqRel);
        self.0.caps.freed.notify_waiters();
    }
}

impl std::fmt::Debug for InFlightSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlightSlot")
    }
}

impl PartialEq for InFlightSlot {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for InFlightSlot {}

/// The choice for one request: its model, whether it is pinned, and the shared state it is
/// checked against.
pub struct Selector<'a> {
    cooldowns: &'a Cooldowns,
    limiter: Option<&'a Limiter>,
    caps: Option<&'a Arc<Caps>>,
    model: Option<&'a str>,
    pinned: bool,
    /// The rpm token is taken by the caller ([`Selector::take_rpm`]) after a cluster lease:
    /// a candidate the cluster finds at its cap must not use one up.
    defer_rpm: bool,
}

// === impl Limits ===

impl Limits {
    /// A limiter per provider with a non-zero `rpm`.
    pub fn new(config: &Config) -> Self {
        let rpm = config
            .providers
            .values()
            .filter_map(|p| {
                let n = NonZeroU32::new(p.rpm?)?;
                Some((p.id.clone(), RateLimiter::keyed(Quota::per_minute(n))))
            })
            .collect();
        let in_flight = config
            .providers
            .values()
            .filter_map(|p| {
                let cap = p.max_in_flight.filter(|n| *n > 0)?;
                let caps = Caps {
                    cap,
                    gates: Mutex::new(HashMap::new()),
                    freed: Notify::new(),
                };
                Some((p.id.clone(), Arc::new(caps)))
            })
            .collect();
        Self { rpm, in_flight }
    }

    /// The in-flight caps of `provider`, if it sets `max_in_flight`.
    pub fn in_flight(&self, provider: &str) -> Option<&Arc<Caps>> {
        self.in_flight.get(provider)
    }

    /// The limiter of `provider`, if it has one.
    pub fn provider(&self, provider: &str) -> Option<&Limiter> {
        self.rpm.get(provider)
    }
}

// === impl Selector ===

impl<'a> Selector<'a> {
    /// The selector for one request to `provider` for `model`.
    pub fn new(
        cooldowns: &'a Cooldowns,
        limits: &'a Limits,
        provider: &str,
        model: Option<&'a str>,
        pinned: bool,
    ) -> Self {
        Self {
            cooldowns,
            limiter: limits.provider(provider),
            caps: limits.in_flight(provider),
            model,
            pinned,
            defer_rpm: false,
        }
    }

    /// Leaves the rpm token to [`Selector::take_rpm`] (cluster mode with `max_in_flight`:
    /// the lease is asked first).
    pub fn defer_rpm(mut self) -> Self {
        self.defer_rpm = true;
        self
    }

    /// Takes `c`'s rpm token now, or says when one frees up (always `Ok` for a pinned
    /// request or a provider without `rpm`).
    pub fn take_rpm(&self, c: &Candidate, now: Instant) -> Result<(), Instant> {
        match self.limiter {
            Some(l) if !self.pinned => l
                .check_key(&c.fp)
                .map_err(|not_until| now + not_until.wait_time_from(DefaultClock::default().now())),
            _ => Ok(()),
        }
    }

    /// The first candidate, in order, that is not `tried` and may serve at `now`.
    /// `tried` has one entry per candidate.
    pub fn next(&self, candidates: &[&Arc<Candidate>], tried: &[bool], now: Instant) -> Pick {
        let mut soonest: Option<Instant> = None;
        let mut at_cap = false;
        let mut blocked = |until: Instant| {
            soonest = Some(soonest.map_or(until, |s: Instant| s.min(until)));
        };
        for (i, c) in candidates.iter().enumerate() {
            if tried[i] {
                continue;
            }
            if !self.pinned {
                if let Some(until) =
                    self.cooldowns
                        .blocked_until(c.cred.id.as_str(), c.fp, self.model, now)
                {
                    blocked(until);
                    continue;
                }
            }
            // The cap holds for a pinned request too: it protects the account, not the
            // rotation.
            let slot = match self.caps {
                Some(caps) => match c.in_flight_gate(|| caps.gate(c.fp)).try_take() {
                    Some(slot) => Some(slot),
                    None => {
                        at_cap = true;
                        continue;
                    }
                },
                None => None,
            };
            if !self.defer_rpm {
                if let Err(until) = self.take_rpm(c, now) {
                    // `slot` is dropped: released again.
                    blocked(until);
                    continue;
                }
            }
            return Pick::Use(i, slot);
        }
        Pick::Blocked { soonest, at_cap }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::classify::{Reason, RetryHint, Verdict};
    use crate::cooldown::Ladders;
    use crate::credentials::env::EnvSnapshot;
    use crate::pool::build_pool;

    /// A pool of `n` OpenAI env keys, and a config with `rpm` for openai when given.
    fn pool(n: usize, rpm: Option<u32>) -> (Config, crate::pool::AgentPool) {
        pool_capped(n, rpm, None)
    }

    /// [`pool`] with `max_in_flight` for openai when given.
    fn pool_capped(
        n: usize,
        rpm: Option<u32>,
        cap: Option<u32>,
    ) -> (Config, crate::pool::AgentPool) {
        let keys: Vec<String> = (0..n).map(|i| format!("sk-test-{i}-abcd")).collect();
        let env = EnvSnapshot::from_pairs([("OPENAI_API_KEYS".to_owned(), keys.join(","))]);
        let mut config = Config::defaults();
        if let Some(p) = config.providers.get_mut("openai") {
            p.rpm = rpm;
            p.max_in_flight = cap;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = build_pool(&config, dir.path(), "main", &env);
        (config, pool)
    }

    fn cooldowns() -> Cooldowns {
        Cooldowns::new(Ladders {
            backoff: vec![Duration::from_secs(60)],
            billing: vec![Duration::from_secs(3600)],
        })
    }

    fn rate_limited(after: Duration) -> Verdict {
        Verdict {
            reason: Reason::RateLimit,
            hint: Some(RetryHint {
                after,
                source: "retry-after",
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_cooling_for_one_model_still_serves_another() {
        let (config, pool) = pool(3, None);
        let list: Vec<_> = pool.providers["openai"].candidates.iter().collect();
        let cd = cooldowns();
        let limits = Limits::new(&config);
        let now = Instant::now();
        cd.record_failure(
            list[0].cred.id.as_str(),
            list[0].fp,
            Some("gpt-a"),
            &rate_limited(Duration::from_secs(30)),
            Some(429),
            now,
        );
        let tried = vec![false; list.len()];
        let for_a = Selector::new(&cd, &limits, "openai", Some("gpt-a"), false);
        assert_eq!(for_a.next(&list, &tried, now), Pick::Use(1, None));
        let for_b = Selector::new(&cd, &limits, "openai", Some("gpt-b"), false);
        assert_eq!(for_b.next(&list, &tried, now), Pick::Use(0, None));
        // Once the window has passed, the first key serves its model again.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            for_a.next(&list, &tried, Instant::now()),
            Pick::Use(0, None)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tried_and_cooling_candidates_are_skipped_and_the_soonest_end_reported() {
        let (config, pool) = pool(3, None);
        let list: Vec<_> = pool.providers["openai"].candidates.iter().collect();
        let cd = cooldowns();
        let limits = Limits::new(&config);
        let now = Instant::now();
        for (c, secs) in [(&list[1], 40), (&list[2], 20)] {
            cd.record_failure(
                c.cred.id.as_str(),
                c.fp,
                None,
                &rate_limited(Duration::from_secs(secs)),
                Some(429),
                now,
            );
        }
        let sel = Selector::new(&cd, &limits, "openai", None, false);
        assert_eq!(
            sel.next(&list, &[true, false, false], now),
            Pick::Blocked {
                soonest: Some(now + Duration::from_secs(20)),
                at_cap: false,
            }
        );
        assert_eq!(
            sel.next(&list, &[false, false, false], now),
            Pick::Use(0, None)
        );
        assert_eq!(
            sel.next(&list, &[true, true, true], now),
            Pick::Blocked {
                soonest: None,
                at_cap: false
            }
        );
        // A pinned request ignores cooldowns: the caller asked for that key.
        let pinned = Selector::new(&cd, &limits, "openai", None, true);
        assert_eq!(
            pinned.next(&list, &[true, false, false], now),
            Pick::Use(1, None)
        );
    }

    #[tokio::test]
    async fn rpm_lets_each_key_serve_its_quota_then_moves_on() {
        let (config, pool) = pool(2, Some(1));
        let list: Vec<_> = pool.providers["openai"].candidates.iter().collect();
        let cd = cooldowns();
        let limits = Limits::new(&config);
        let sel = Selector::new(&cd, &limits, "openai", None, false);
        let tried = [false, false];
        let now = Instant::now();
        assert_eq!(sel.next(&list, &tried, now), Pick::Use(0, None));
        assert_eq!(sel.next(&list, &tried, now), Pick::Use(1, None));
        match sel.next(&list, &tried, now) {
            Pick::Blocked {
                soonest: Some(at), ..
            } => {
                let wait = at - now;
                assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
            }
            other => panic!("expected both keys over their rpm, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_key_at_its_cap_is_skipped_until_a_slot_is_dropped() {
        let (config, pool) = pool_capped(2, None, Some(1));
        let list: Vec<_> = pool.providers["openai"].candidates.iter().collect();
        let cd = cooldowns();
        let limits = Limits::new(&config);
        let sel = Selector::new(&cd, &limits, "openai", None, false);
        let tried = [false, false];
        let now = Instant::now();
        let Pick::Use(0, Some(a)) = sel.next(&list, &tried, now) else {
            panic!("first key with a slot");
        };
        let Pick::Use(1, Some(b)) = sel.next(&list, &tried, now) else {
            panic!("first key at its cap: the second serves");
        };
        assert_eq!(
            sel.next(&list, &tried, now),
            Pick::Blocked {
                soonest: None,
                at_cap: true
            }
        );
        // A rebuilt pool (a reload, another agent) shares the counters of the same secrets.
        let dir = tempfile::tempdir().expect("tempdir");
        let env = EnvSnapshot::from_pairs([(
            "OPENAI_API_KEYS".to_owned(),
            "sk-test-0-abcd,sk-test-1-abcd".to_owned(),
        )]);
        let again = build_pool(&config, dir.path(), "other", &env);
        let list2: Vec<_> = again.providers["openai"].candidates.iter().collect();
        assert!(matches!(
            sel.next(&list2, &tried, now),
            Pick::Blocked { at_cap: true, .. }
        ));
        drop(b);
        assert!(matches!(
            sel.next(&list, &tried, now),
            Pick::Use(1, Some(_))
        ));
        drop(a);
        let Pick::Use(0, Some(_held)) = sel.next(&list2, &tried, now) else {
            panic!("a dropped slot is free again");
        };
        // The cap is not counted against a key skipped for cooling: tried keys never take one.
        assert_eq!(
            sel.next(&list, &[true, true], now),
            Pick::Blocked {
                soonest: None,
                at_cap: false
            }
        );
    }
}
