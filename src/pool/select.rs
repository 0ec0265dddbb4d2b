//! Which candidate serves next, pure: no I/O, no waiting, the clock passed in.
//!
//! Owns the per-credential request limits (`[providers.P] rpm`, governor's keyed limiters,
//! keyed by the secret's fingerprint: no allocation per check) and the rule of SPEC §5/§7:
//! in attempt order, the first candidate not yet tried that is neither cooling for this
//! model nor disabled and is under its rpm — or, when none is, the soonest moment one will
//! be. A pinned request skips the cooldown and rpm checks (the caller asked for that key).
//! It does not own the order (`registry`), the cooldown windows (`cooldown`), the
//! cluster-wide rpm (`cluster::slots`, asked by the attempt loop after a pick, so this stays
//! pure) nor the wait (`proxy::attempt`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use super::Candidate;
use crate::config::Config;
use crate::cooldown::Cooldowns;

/// One provider's per-credential request limiter.
pub type Limiter = DefaultKeyedRateLimiter<u64>;

/// The request limits of every provider that sets `rpm`.
#[derive(Default)]
pub struct Limits {
    rpm: HashMap<String, Limiter>,
}

/// What [`Selector::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    /// The candidate at this index serves now (its rpm slot is taken).
    Use(usize),
    /// Nobody untried may serve now; `soonest` is when a cooling or rate-limited candidate
    /// frees up (`None` when every candidate has been tried).
    Blocked {
        /// The earliest end of the windows that blocked a candidate.
        soonest: Option<Instant>,
    },
}

/// The choice for one request: its model, whether it is pinned, and the shared state it is
/// checked against.
pub struct Selector<'a> {
    cooldowns: &'a Cooldowns,
    limiter: Option<&'a Limiter>,
    model: Option<&'a str>,
    pinned: bool,
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
        Self { rpm }
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
            model,
            pinned,
        }
    }

    /// The first candidate, in order, that is not `tried` and may serve at `now`.
    /// `tried` has one entry per candidate.
    pub fn next(&self, candidates: &[&Arc<Candidate>], tried: &[bool], now: Instant) -> Pick {
        let mut soonest: Option<Instant> = None;
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
                if let Some(l) = self.limiter {
                    if let Err(not_until) = l.check_key(&c.fp) {
                        blocked(now + not_until.wait_time_from(DefaultClock::default().now()));
                        continue;
                    }
                }
            }
            return Pick::Use(i);
        }
        Pick::Blocked { soonest }
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
        let keys: Vec<String> = (0..n).map(|i| format!("sk-test-{i}-abcd")).collect();
        let env = EnvSnapshot::from_pairs([("OPENAI_API_KEYS".to_owned(), keys.join(","))]);
        let mut config = Config::defaults();
        if let Some(p) = config.providers.get_mut("openai") {
            p.rpm = rpm;
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
        assert_eq!(for_a.next(&list, &tried, now), Pick::Use(1));
        let for_b = Selector::new(&cd, &limits, "openai", Some("gpt-b"), false);
        assert_eq!(for_b.next(&list, &tried, now), Pick::Use(0));
        // Once the window has passed, the first key serves its model again.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(for_a.next(&list, &tried, Instant::now()), Pick::Use(0));
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
                soonest: Some(now + Duration::from_secs(20))
            }
        );
        assert_eq!(sel.next(&list, &[false, false, false], now), Pick::Use(0));
        assert_eq!(
            sel.next(&list, &[true, true, true], now),
            Pick::Blocked { soonest: None }
        );
        // A pinned request ignores cooldowns: the caller asked for that key.
        let pinned = Selector::new(&cd, &limits, "openai", None, true);
        assert_eq!(pinned.next(&list, &[true, false, false], now), Pick::Use(1));
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
        assert_eq!(sel.next(&list, &tried, now), Pick::Use(0));
        assert_eq!(sel.next(&list, &tried, now), Pick::Use(1));
        match sel.next(&list, &tried, now) {
            Pick::Blocked { soonest: Some(at) } => {
                let wait = at - now;
                assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
            }
            other => panic!("expected both keys over their rpm, got {other:?}"),
        }
    }
}
