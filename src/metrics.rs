//! Prometheus metrics (SPEC §8), updated without locks on the request path.
//!
//! Owns the series and their text exposition: `keygate_requests_total{provider,status}`,
//! `keygate_upstream_attempts_total{provider,credential,outcome}`,
//! `keygate_rotations_total{provider,reason}`, `keygate_cooldowns_active{provider}`,
//! `keygate_request_duration_seconds{provider}` and `keygate_upstream_duration_seconds{provider}`
//! (histograms). Every label value comes from a closed set — configured provider ids,
//! credential ids, a fixed list of status codes, the reason names — never from the client,
//! and never a secret.
//!
//! Written by hand on purpose: the crates we looked at (prometheus-client, metrics) take a
//! lock per labelled update; here every series is a plain atomic allocated up front (per
//! provider at startup, per credential when its pool loads), so the hot path only does
//! relaxed atomic adds.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::classify::Reason;

/// Status codes that get their own label value; others are labelled by class (`4xx`).
const STATUSES: [u16; 18] = [
    200, 201, 204, 400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504, 529,
];
const STATUS_SLOTS: usize = STATUSES.len() + 4; // + 1xx/2xx/3xx-ish "other", 4xx, 5xx, other
/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Outcomes of an upstream attempt: `success` then every reason.
const OUTCOMES: usize = 1 + Reason::ALL.len();

/// A fixed-bucket histogram of seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// Per-credential attempt counters.
#[derive(Debug, Default)]
pub struct CredentialCounters {
    outcomes: [AtomicU64; OUTCOMES],
}

#[derive(Debug)]
struct ProviderSeries {
    requests: [AtomicU64; STATUS_SLOTS],
    rotations: [AtomicU64; Reason::ALL.len()],
    request_duration: Histogram,
    upstream_duration: Histogram,
}

/// Every series. One per process, shared by the request path and `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    names: Vec<String>,
    index: HashMap<String, usize>,
    series: Vec<ProviderSeries>,
    credentials: Mutex<BTreeMap<(String, String), Arc<CredentialCounters>>>,
}

// === impl Histogram ===

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, provider: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{provider=\"{provider}\",le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{provider=\"{provider}\",le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{provider=\"{provider}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{provider=\"{provider}\"}} {count}");
    }
}

// === impl CredentialCounters ===

impl CredentialCounters {
    /// Counts an attempt: `None` = success, else the failure reason.
    pub fn attempt(&self, outcome: Option<Reason>) {
        self.outcomes[outcome_slot(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for one outcome (tests).
    pub fn get(&self, outcome: Option<Reason>) -> u64 {
        self.outcomes[outcome_slot(outcome)].load(Ordering::Relaxed)
    }
}

fn outcome_slot(outcome: Option<Reason>) -> usize {
    match outcome {
        None => 0,
        Some(r) => 1 + Reason::ALL.iter().position(|x| *x == r).unwrap_or(0),
    }
}

// === impl Metrics ===

impl Metrics {
    /// Series for these provider ids, plus `-` for requests that matched none.
    pub fn new<'a>(providers: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names: Vec<String> = providers.into_iter().map(str::to_owned).collect();
        names.push("-".to_owned());
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let series = names
            .iter()
            .map(|_| ProviderSeries {
                requests: Default::default(),
                rotations: Default::default(),
                request_duration: Histogram::default(),
                upstream_duration: Histogram::default(),
            })
            .collect();
        Self {
            names,
            index,
            series,
            credentials: Mutex::new(BTreeMap::new()),
        }
    }

    fn slot(&self, provider: Option<&str>) -> &ProviderSeries {
        let i = provider
            .and_then(|p| self.index.get(p).copied())
            .unwrap_or(self.names.len() - 1);
        &self.series[i]
    }

    /// A finished client request: its status and time to the response head.
    pub fn request(&self, provider: Option<&str>, status: u16, elapsed: Duration) {
        let s = self.slot(provider);
        s.requests[status_slot(status)].fetch_add(1, Ordering::Relaxed);
        s.request_duration.observe(elapsed);
    }

    /// Time an upstream took to answer with headers.
    pub fn upstream(&self, provider: &str, elapsed: Duration) {
        self.slot(Some(provider)).upstream_duration.observe(elapsed);
    }

    /// A retry with the next credential because of `reason`.
    pub fn rotation(&self, provider: &str, reason: Reason) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.slot(Some(provider)).rotations[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of one credential, created on first use (at pool load, not per request).
    pub fn credential(&self, provider: &str, id: &str) -> Arc<CredentialCounters> {
        let mut map = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((provider.to_owned(), id.to_owned()))
            .or_default()
            .clone()
    }

    /// The provider a credential id was registered under.
    fn provider_of(
        &self,
        map: &BTreeMap<(String, String), Arc<CredentialCounters>>,
        id: &str,
    ) -> Option<usize> {
        map.keys()
            .find(|(_, c)| c == id)
            .and_then(|(p, _)| self.index.get(p).copied())
    }

    /// The Prometheus text exposition. `cooling` lists the credential ids of the active
    /// cooldown windows (one entry per window).
    pub fn render(&self, cooling: &[String]) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let creds = self.credentials.lock().unwrap_or_else(|e| e.into_inner());

        out.push_str(
            "# HELP keygate_requests_total Client requests answered, by provider and status.\n",
        );
        out.push_str("# TYPE keygate_requests_total counter\n");
        for (i, s) in self.series.iter().enumerate() {
            for (slot, c) in s.requests.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "keygate_requests_total{{provider=\"{}\",status=\"{}\"}} {n}",
                        self.names[i],
                        status_label(slot)
                    );
                }
            }
        }

        out.push_str("# HELP keygate_upstream_attempts_total Upstream attempts, by credential and outcome.\n");
        out.push_str("# TYPE keygate_upstream_attempts_total counter\n");
        for ((provider, id), c) in creds.iter() {
            for (slot, n) in c.outcomes.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let outcome = if slot == 0 {
                        "success"
                    } else {
                        Reason::ALL[slot - 1].as_str()
                    };
                    let _ = writeln!(
                        out,
                        "keygate_upstream_attempts_total{{provider=\"{provider}\",credential=\"{}\",outcome=\"{outcome}\"}} {n}",
                        escape(id)
                    );
                }
            }
        }

        out.push_str(
            "# HELP keygate_rotations_total Retries with the next credential, by reason.\n",
        );
        out.push_str("# TYPE keygate_rotations_total counter\n");
        for (i, s) in self.series.iter().enumerate() {
            for (r, c) in s.rotations.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "keygate_rotations_total{{provider=\"{}\",reason=\"{}\"}} {n}",
                        self.names[i],
                        Reason::ALL[r].as_str()
                    );
                }
            }
        }

        out.push_str("# HELP keygate_cooldowns_active Active cooldown and disabled windows.\n");
        out.push_str("# TYPE keygate_cooldowns_active gauge\n");
        let mut active = vec![0u64; self.names.len()];
        for id in cooling {
            let i = self.provider_of(&creds, id).unwrap_or(self.names.len() - 1);
            active[i] += 1;
        }
        for (i, name) in self.names.iter().enumerate().take(self.names.len() - 1) {
            let _ = writeln!(
                out,
                "keygate_cooldowns_active{{provider=\"{name}\"}} {}",
                active[i]
            );
        }

        for (name, help, pick) in [
            (
                "keygate_request_duration_seconds",
                "Time from request to response head sent to the client.",
                0,
            ),
            (
                "keygate_upstream_duration_seconds",
                "Time from sending an attempt upstream to its response head.",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (i, s) in self.series.iter().enumerate() {
                let h = if pick == 0 {
                    &s.request_duration
                } else {
                    &s.upstream_duration
                };
                if h.count.load(Ordering::Relaxed) > 0 {
                    h.render(&mut out, name, &self.names[i]);
                }
            }
        }
        out
    }
}

fn status_slot(status: u16) -> usize {
    match STATUSES.iter().position(|s| *s == status) {
        Some(i) => i,
        None => match status {
            400..=499 => STATUSES.len() + 1,
            500..=599 => STATUSES.len() + 2,
            200..=299 => STATUSES.len(),
            _ => STATUSES.len() + 3,
        },
    }
}

fn status_label(slot: usize) -> String {
    match slot.checked_sub(STATUSES.len()) {
        None => STATUSES[slot].to_string(),
        Some(0) => "2xx".into(),
        Some(1) => "4xx".into(),
        Some(2) => "5xx".into(),
        Some(_) => "other".into(),
    }
}

/// Label values come from config and state files: escape what the format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::new(["anthropic", "openai"]);
        m.request(Some("anthropic"), 200, Duration::from_millis(3));
        m.request(Some("anthropic"), 418, Duration::from_millis(3));
        m.request(None, 404, Duration::from_micros(10));
        m.rotation("anthropic", Reason::RateLimit);
        let c = m.credential("anthropic", "env:ANTHROPIC_API_KEY");
        c.attempt(Some(Reason::RateLimit));
        c.attempt(None);
        let text = m.render(&["env:ANTHROPIC_API_KEY".to_owned()]);
        for line in [
            "keygate_requests_total{provider=\"anthropic\",status=\"200\"} 1",
            "keygate_requests_total{provider=\"anthropic\",status=\"4xx\"} 1",
            "keygate_requests_total{provider=\"-\",status=\"404\"} 1",
            "keygate_rotations_total{provider=\"anthropic\",reason=\"rate_limit\"} 1",
            "keygate_upstream_attempts_total{provider=\"anthropic\",credential=\"env:ANTHROPIC_API_KEY\",outcome=\"rate_limit\"} 1",
            "keygate_upstream_attempts_total{provider=\"anthropic\",credential=\"env:ANTHROPIC_API_KEY\",outcome=\"success\"} 1",
            "keygate_cooldowns_active{provider=\"anthropic\"} 1",
            "keygate_cooldowns_active{provider=\"openai\"} 0",
            "keygate_request_duration_seconds_bucket{provider=\"anthropic\",le=\"0.005\"} 2",
            "keygate_request_duration_seconds_count{provider=\"anthropic\"} 2",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }
}
