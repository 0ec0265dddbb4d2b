//! Prometheus metrics (SPEC §8): the series, the handles the request path updates, and the
//! text exposition `/metrics` sends (prometheus-client's Prometheus text format 0.0.4).
//!
//! Series: `keygate_requests_total{provider,status}`,
//! `keygate_upstream_attempts_total{provider,credential,outcome}`,
//! `keygate_rotations_total{provider,reason}`, `keygate_cooldowns_active{provider}`,
//! `keygate_request_duration_seconds{provider}` and `keygate_upstream_duration_seconds{provider}`
//! (histograms); `keygate_affinity_total{outcome}` (`new`, `kept`, `moved`) and the gauge
//! `keygate_affinity_sessions` (SPEC §11); in cluster mode also `keygate_cluster_connected`
//! and `keygate_cluster_events_total{direction}` ([`ClusterSeries`]). Every label value
//! comes from a closed set — configured provider ids,
//! credential ids, a fixed list of status codes, the reason names — never from the client,
//! and never a secret.
//!
//! Each series lives in a prometheus-client `Family`; its handle is resolved up front (per
//! provider when [`Metrics`] is built, per credential when its pool loads, as
//! [`CredentialCounters`]), so the request path only updates resolved handles and never
//! looks a label set up. The histograms are this module's [`Histogram`], plain atomics
//! encoded through the crate's encoder, because the crate's own histogram takes a lock per
//! observation. A counter still at zero and a histogram with no observation are left out
//! of the exposition; the cooldown gauge is written for every configured provider.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::classify::Reason;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Status codes that get their own label value; others are labelled by class (`4xx`).
const STATUSES: [(u16, &str); 18] = [
    (200, "200"),
    (201, "201"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (402, "402"),
    (403, "403"),
    (404, "404"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (529, "529"),
];
/// The label values of the statuses not in [`STATUSES`], after them in slot order.
const STATUS_CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];
const STATUS_SLOTS: usize = STATUSES.len() + STATUS_CLASSES.len();
/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Outcomes of an upstream attempt: `success` then every reason.
const OUTCOMES: usize = 1 + Reason::ALL.len();
/// `keygate_affinity_total`'s outcomes (`x-keygate-affinity`'s values).
const AFFINITY_OUTCOMES: [&str; 3] = ["new", "kept", "moved"];
/// The provider label of requests that matched no provider.
const NO_PROVIDER: &str = "-";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    provider: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    provider: String,
    credential: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    provider: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AffinityLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// Cluster mode's series (SPEC §10): `keygate_cluster_connected` and
/// `keygate_cluster_events_total{direction="sent"|"received"}`.
#[derive(Clone, Debug, Default)]
pub struct ClusterSeries {
    /// 1 while the link to Redis is up.
    pub connected: Gauge,
    /// Windows this replica wrote to Redis.
    pub sent: Counter,
    /// Windows received from other replicas.
    pub received: Counter,
}

/// A counter that is left out of the exposition while it is zero.
#[derive(Clone, Debug, Default)]
struct Sparse(Counter);

/// A metric whose HELP and TYPE lines are written even when it has no series yet.
#[derive(Debug)]
struct Listed<M>(M);

/// A fixed-bucket histogram of seconds: relaxed atomic adds, no lock.
#[derive(Clone, Debug, Default)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Debug, Default)]
struct HistogramCells {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// Per-credential attempt counters (handles into `keygate_upstream_attempts_total`).
#[derive(Debug)]
pub struct CredentialCounters {
    outcomes: [Counter; OUTCOMES],
}

/// The handles of one provider's series.
#[derive(Debug)]
struct ProviderSeries {
    requests: [Counter; STATUS_SLOTS],
    rotations: [Counter; Reason::ALL.len()],
    request_duration: Histogram,
    upstream_duration: Histogram,
}

/// Every series. One per process, shared by the request path and `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    names: Vec<String>,
    index: HashMap<String, usize>,
    series: Vec<ProviderSeries>,
    /// `keygate_cooldowns_active`, one per configured provider (not `-`), set by a scrape.
    cooldowns: Vec<Gauge>,
    attempts: Family<AttemptLabels, Sparse>,
    /// The credentials registered so far; locked at pool load and by a scrape only.
    credentials: Mutex<BTreeMap<(String, String), Arc<CredentialCounters>>>,
    /// `keygate_affinity_total` by `new`, `kept`, `moved` (SPEC §11).
    affinity: [Counter; 3],
    /// `keygate_affinity_sessions`, set by a scrape.
    sessions: Gauge,
    registry: Registry,
}

// === impl Sparse ===

impl TypedMetric for Sparse {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Sparse {
    fn encode(&self, encoder: MetricEncoder<'_>) -> std::fmt::Result {
        if self.0.get() == 0 {
            return Ok(());
        }
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

// === impl Listed ===

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder<'_>) -> std::fmt::Result {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

// === impl Histogram ===

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let c = &*self.0;
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            c.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        c.count.fetch_add(1, Ordering::Relaxed);
        c.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        let c = &*self.0;
        let count = c.count.load(Ordering::Relaxed);
        if count == 0 {
            return Ok(());
        }
        let buckets: [(f64, u64); BUCKETS.len()] =
            std::array::from_fn(|i| (BUCKETS[i], c.buckets[i].load(Ordering::Relaxed)));
        let sum = c.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

// === impl CredentialCounters ===

impl CredentialCounters {
    /// Counts an attempt: `None` = success, else the failure reason.
    pub fn attempt(&self, outcome: Option<Reason>) {
        self.outcomes[outcome_slot(outcome)].inc();
    }

    /// The count for one outcome (tests).
    pub fn get(&self, outcome: Option<Reason>) -> u64 {
        self.outcomes[outcome_slot(outcome)].get()
    }
}

fn outcome_slot(outcome: Option<Reason>) -> usize {
    match outcome {
        None => 0,
        Some(r) => 1 + Reason::ALL.iter().position(|x| *x == r).unwrap_or(0),
    }
}

fn outcome_label(slot: usize) -> &'static str {
    match slot.checked_sub(1) {
        None => "success",
        Some(r) => Reason::ALL[r].as_str(),
    }
}

// === impl Metrics ===

impl Metrics {
    /// Series for these provider ids, plus `-` for requests that matched none.
    pub fn new<'a>(providers: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names: Vec<String> = providers.into_iter().map(str::to_owned).collect();
        names.push(NO_PROVIDER.to_owned());
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();

        let requests = Family::<RequestLabels, Sparse>::default();
        let attempts = Family::<AttemptLabels, Sparse>::default();
        let rotations = Family::<RotationLabels, Sparse>::default();
        let cooldowns = Family::<ProviderLabels, Gauge>::default();
        let request_duration = Family::<ProviderLabels, Histogram>::default();
        let upstream_duration = Family::<ProviderLabels, Histogram>::default();

        let series = names
            .iter()
            .map(|name| {
                let provider = || ProviderLabels {
                    provider: name.clone(),
                };
                ProviderSeries {
                    requests: std::array::from_fn(|slot| {
                        requests
                            .get_or_create_owned(&RequestLabels {
                                provider: name.clone(),
                                status: status_label(slot),
                            })
                            .0
                    }),
                    rotations: std::array::from_fn(|r| {
                        rotations
                            .get_or_create_owned(&RotationLabels {
                                provider: name.clone(),
                                reason: Reason::ALL[r].as_str(),
                            })
                            .0
                    }),
                    request_duration: request_duration.get_or_create_owned(&provider()),
                    upstream_duration: upstream_duration.get_or_create_owned(&provider()),
                }
            })
            .collect();
        let cooldown_gauges = names[..names.len() - 1]
            .iter()
            .map(|name| {
                cooldowns.get_or_create_owned(&ProviderLabels {
                    provider: name.clone(),
                })
            })
            .collect();

        let mut registry = Registry::default();
        registry.register(
            "keygate_requests",
            "Client requests answered, by provider and status",
            Listed(requests),
        );
        registry.register(
            "keygate_upstream_attempts",
            "Upstream attempts, by credential and outcome",
            Listed(attempts.clone()),
        );
        registry.register(
            "keygate_rotations",
            "Retries with the next credential, by reason",
            Listed(rotations),
        );
        registry.register(
            "keygate_cooldowns_active",
            "Active cooldown and disabled windows",
            Listed(cooldowns),
        );
        registry.register(
            "keygate_request_duration_seconds",
            "Time from request to response head sent to the client",
            Listed(request_duration),
        );
        registry.register(
            "keygate_upstream_duration_seconds",
            "Time from sending an attempt upstream to its response head",
            Listed(upstream_duration),
        );

        let outcomes = Family::<AffinityLabels, Sparse>::default();
        let affinity = AFFINITY_OUTCOMES
            .map(|outcome| outcomes.get_or_create_owned(&AffinityLabels { outcome }).0);
        registry.register(
            "keygate_affinity",
            "Requests with a session, by whether the session's credential answered",
            Listed(outcomes),
        );
        let sessions = Gauge::default();
        registry.register(
            "keygate_affinity_sessions",
            "Sessions remembered for affinity",
            sessions.clone(),
        );

        Self {
            names,
            index,
            series,
            cooldowns: cooldown_gauges,
            attempts,
            credentials: Mutex::new(BTreeMap::new()),
            affinity,
            sessions,
            registry,
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
        s.requests[status_slot(status)].inc();
        s.request_duration.observe(elapsed);
    }

    /// Time an upstream took to answer with headers.
    pub fn upstream(&self, provider: &str, elapsed: Duration) {
        self.slot(Some(provider)).upstream_duration.observe(elapsed);
    }

    /// A retry with the next credential because of `reason`.
    pub fn rotation(&self, provider: &str, reason: Reason) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.slot(Some(provider)).rotations[i].inc();
    }

    /// A request with a session was answered (SPEC §11): `outcome` is `new`, `kept` or
    /// `moved` (anything else is not counted).
    pub fn affinity(&self, outcome: &str) {
        if let Some(i) = AFFINITY_OUTCOMES.iter().position(|o| *o == outcome) {
            self.affinity[i].inc();
        }
    }

    /// The sessions held now, for the next scrape.
    pub fn set_sessions(&self, n: usize) {
        self.sessions.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The counters of one credential, created on first use (at pool load, not per request).
    pub fn credential(&self, provider: &str, id: &str) -> Arc<CredentialCounters> {
        let mut map = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((provider.to_owned(), id.to_owned()))
            .or_insert_with(|| {
                Arc::new(CredentialCounters {
                    outcomes: std::array::from_fn(|slot| {
                        self.attempts
                            .get_or_create_owned(&AttemptLabels {
                                provider: provider.to_owned(),
                                credential: id.to_owned(),
                                outcome: outcome_label(slot),
                            })
                            .0
                    }),
                })
            })
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

    /// Registers cluster mode's series (once, before the metrics are shared).
    pub fn register_cluster(&mut self) -> ClusterSeries {
        let events = Family::<DirectionLabels, Counter>::default();
        // Handles share the family's values (a `Counter` is an `Arc`'d atomic). One statement
        // each: `get_or_create` returns a read guard, which must be gone before the next.
        let handle = |direction| events.get_or_create(&DirectionLabels { direction }).clone();
        let sent = handle("sent");
        let received = handle("received");
        let series = ClusterSeries {
            connected: Gauge::default(),
            sent,
            received,
        };
        self.registry.register(
            "keygate_cluster_connected",
            "Whether this replica's link to Redis is up (1) or not (0)",
            series.connected.clone(),
        );
        self.registry.register(
            "keygate_cluster_events",
            "Cooldown windows shared with other replicas, by direction",
            events,
        );
        series
    }

    /// The Prometheus text exposition. `cooling` lists the credential ids of the active
    /// cooldown windows (one entry per window).
    pub fn render(&self, cooling: &[String]) -> String {
        // Held through the encoding, so concurrent scrapes never mix their gauge values.
        let creds = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        let mut active = vec![0i64; self.names.len()];
        for id in cooling {
            let i = self.provider_of(&creds, id).unwrap_or(self.names.len() - 1);
            active[i] += 1;
        }
        for (gauge, n) in self.cooldowns.iter().zip(active) {
            gauge.set(n);
        }
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a `String` cannot fail, and neither can any metric here.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

fn status_slot(status: u16) -> usize {
    match STATUSES.iter().position(|(code, _)| *code == status) {
        Some(i) => i,
        None => match status {
            400..=499 => STATUSES.len() + 1,
            500..=599 => STATUSES.len() + 2,
            200..=299 => STATUSES.len(),
            _ => STATUSES.len() + 3,
        },
    }
}

fn status_label(slot: usize) -> &'static str {
    match slot.checked_sub(STATUSES.len()) {
        None => STATUSES[slot].1,
        Some(class) => STATUS_CLASSES[class],
    }
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

    #[test]
    fn a_fresh_exposition_has_each_spec_series_once_and_no_zero_samples() {
        let m = Metrics::new(["anthropic"]);
        let _c = m.credential("anthropic", "env:ANTHROPIC_API_KEY");
        let text = m.render(&[]);
        for (name, kind) in [
            ("keygate_requests_total", "counter"),
            ("keygate_upstream_attempts_total", "counter"),
            ("keygate_rotations_total", "counter"),
            ("keygate_cooldowns_active", "gauge"),
            ("keygate_request_duration_seconds", "histogram"),
            ("keygate_upstream_duration_seconds", "histogram"),
            ("keygate_affinity_total", "counter"),
            ("keygate_affinity_sessions", "gauge"),
        ] {
            let types: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("# TYPE {name} ")))
                .collect();
            assert_eq!(types, [format!("# TYPE {name} {kind}")], "{name}\n{text}");
        }
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE ")).count(), 8);
        assert!(!text.contains("_total_total"), "{text}");
        assert!(text.contains(
            "# HELP keygate_requests_total Client requests answered, by provider and status.\n"
        ));
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "keygate_cooldowns_active{provider=\"anthropic\"} 0",
                "keygate_affinity_sessions 0"
            ],
            "{text}"
        );
    }

    #[test]
    fn credential_ids_are_escaped_and_handles_are_shared() {
        let m = Metrics::new(["openai"]);
        m.credential("openai", "file:a\"b\\c").attempt(None);
        // A pool reload asks again: the same series, not a second one.
        m.credential("openai", "file:a\"b\\c").attempt(None);
        let text = m.render(&[]);
        assert!(
            text.contains(
                "keygate_upstream_attempts_total{provider=\"openai\",credential=\"file:a\\\"b\\\\c\",outcome=\"success\"} 2\n"
            ),
            "{text}"
        );
        m.request(Some("openai"), 99, Duration::from_secs(60));
        let text = m.render(&[]);
        assert!(text.contains("keygate_requests_total{provider=\"openai\",status=\"other\"} 1"));
        assert!(text
            .contains("keygate_request_duration_seconds_bucket{provider=\"openai\",le=\"30\"} 0"));
        assert!(text.contains(
            "keygate_request_duration_seconds_bucket{provider=\"openai\",le=\"+Inf\"} 1"
        ));
    }
}
