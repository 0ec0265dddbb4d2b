//! The per-agent credential pools, and the I/O that keeps them current (SPEC §5, §9).
//!
//! Owns building an agent's pool from its files and the environment: for each provider, the
//! candidates in the order [`order::plan`] gives, each with its wire form ([`Injection`])
//! built once, and every usable credential by id for pins; reloading the pools whose
//! files changed (keeping the last good pool when a new version does not parse) and the poll
//! that watches them. At request time it orders candidates (least recently used within a
//! kind, or across the pool for `round_robin`) and answers pin lookups. It does not own
//! cooldowns nor the choice among candidates (`select`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::time::Instant;

use super::order::{self, Entry, Fate, Inputs};
use crate::config::{Config, ProviderConfig, Strategy};
use crate::credentials::env::EnvSnapshot;
use crate::credentials::store;
use crate::credentials::Credential;
use crate::domain::{self, Domain, Learned};
use crate::inject::Injection;
use crate::metrics::{CredentialCounters, Metrics};

/// Bound on cached agent pools (agent ids can come from a trusted proxy's header).
const MAX_AGENTS: usize = 1024;

/// One usable credential, ready to inject.
#[derive(Debug)]
pub struct Candidate {
    /// The credential.
    pub cred: Credential,
    /// Its wire form.
    pub inject: Injection,
    /// `x-keygate-credential` value.
    pub id_header: HeaderValue,
    /// Fingerprint of the secret (cooldown state belongs to one value of a credential).
    pub fp: u64,
    /// Attempt counters for `/metrics`, attached when the pool is registered.
    counters: OnceLock<Arc<CredentialCounters>>,
    /// Rank group: 0 oauth, 1 token, 2 api key (stored profiles), 3 environment.
    group: u8,
    /// Position within its source (env keys keep their priority order).
    position: u32,
    /// Last time an attempt used this credential (ns since the registry's epoch; 0 = never).
    last_used: AtomicU64,
    /// Its identity shared with other replicas (a keyed fingerprint), computed on first use.
    shared_id: OnceLock<[u8; 16]>,
    /// Its `max_in_flight` counter (shared by every candidate with this secret), on first use.
    in_flight: OnceLock<Arc<crate::pool::Gate>>,
    /// Its quota domain (SPEC §11): configured, else learned (from what earlier pools
    /// learned, or from its first answer that names one). Set once: a key belongs to one
    /// organisation, so after that an answer costs this one load.
    domain: OnceLock<Domain>,
}

/// A provider's candidates for one agent.
#[derive(Debug, Default)]
pub struct ProviderPool {
    /// Candidates in their base order.
    pub candidates: Vec<Arc<Candidate>>,
    /// Whether an explicit order applies (then the order is exact and never re-ranked).
    pub explicit: bool,
    /// Whether two stored profiles share a kind, so least recently used reorders them.
    lru_ties: bool,
}

/// Every credential an agent can use.
#[derive(Debug, Default)]
pub struct AgentPool {
    /// Per provider id.
    pub providers: HashMap<String, ProviderPool>,
    /// Every known credential by id (for pins), whichever provider it belongs to.
    pub by_id: HashMap<String, Arc<Candidate>>,
    /// Problems met while loading (named entries, never secrets).
    pub warnings: Vec<String>,
    /// Hard errors (an oauth profile carrying a SecretRef, SPEC §6): logged at ERROR,
    /// naming profile and field; the profile is never used.
    pub errors: Vec<String>,
    /// A state file existed but did not parse (a reload then keeps the last good pool).
    pub broken: bool,
    /// What the pool was built from, for the status view of the pool being served.
    pub inputs: Arc<Inputs>,
    /// Why the files on disk are not what is served: set when a reload found them broken
    /// and kept this (last good) pool; empty when the pool matches the files.
    pub stale: Vec<String>,
    /// The files this pool was built from, with their signatures at build time.
    sources: Vec<(PathBuf, Option<FileSig>)>,
}

/// What changes when a file is rewritten: size, modification time, inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileSig(u64, i128, u64);

fn file_sig(path: &Path) -> Option<FileSig> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some(FileSig(m.len(), mtime, ino))
}

/// The pools of all agents seen so far, loaded lazily from the state directory.
pub struct Registry {
    config: Arc<Config>,
    state_dir: PathBuf,
    env: EnvSnapshot,
    epoch: Instant,
    agents: ArcSwap<HashMap<String, Arc<AgentPool>>>,
    load_lock: Mutex<()>,
    metrics: Arc<Metrics>,
    /// Told of every credential of a pool just built (cluster mode applies what it knows).
    on_built: OnceLock<CandidateHook>,
    /// Quota domains learned from answers, kept across rebuilds (SPEC §11).
    domains: Arc<Learned>,
}

/// See [`Registry::on_built`].
pub type CandidateHook = Box<dyn Fn(&Arc<Candidate>) + Send + Sync>;

// === impl Candidate ===

impl Candidate {
    fn new(provider: &ProviderConfig, cred: Credential, group: u8, position: u32) -> Option<Self> {
        let inject = match Injection::new(provider, &cred) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(credential = %cred.id, error = %e, "credential skipped");
                return None;
            }
        };
        let id_header = HeaderValue::from_str(cred.id.as_str()).ok()?;
        let domain = OnceLock::new();
        if let Some(name) = provider.quota_domains.get(cred.id.as_str()) {
            let _ = domain.set(Domain::Configured(name.clone()));
        }
        Some(Self {
            fp: crate::cooldown::fingerprint(cred.secret.expose()),
            counters: OnceLock::new(),
            cred,
            inject,
            id_header,
            group,
            position,
            last_used: AtomicU64::new(0),
            shared_id: OnceLock::new(),
            in_flight: OnceLock::new(),
            domain,
        })
    }

    /// Its quota domain, when configured or learned.
    pub fn domain(&self) -> Option<&Domain> {
        self.domain.get()
    }

    /// Its `max_in_flight` counter, looked up by `init` on first use.
    pub fn in_flight_gate(
        &self,
        init: impl FnOnce() -> Arc<crate::pool::Gate>,
    ) -> &Arc<crate::pool::Gate> {
        self.in_flight.get_or_init(init)
    }

    /// Requests in flight on this credential now (`None` before its first capped pick).
    pub fn in_flight(&self) -> Option<u32> {
        self.in_flight.get().map(|g| g.current())
    }

    /// Its identity shared with other replicas: `derive(secret)`, computed once.
    pub fn shared_id(&self, derive: impl FnOnce(&str) -> [u8; 16]) -> [u8; 16] {
        *self
            .shared_id
            .get_or_init(|| derive(self.cred.secret.expose()))
    }

    /// Counts an attempt for `/metrics` (`None` = success).
    pub fn count_attempt(&self, outcome: Option<crate::classify::Reason>) {
        if let Some(c) = self.counters.get() {
            c.attempt(outcome);
        }
    }

    /// When this credential was last used (ns since the registry epoch; 0 = never).
    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }
}

// === impl Registry ===

impl Registry {
    /// A registry reading `<state_dir>/agents/<agent>/agent/*` with this environment.
    pub fn new(
        config: Arc<Config>,
        state_dir: PathBuf,
        env: EnvSnapshot,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            env,
            epoch: Instant::now(),
            agents: ArcSwap::from_pointee(HashMap::new()),
            load_lock: Mutex::new(()),
            metrics,
            on_built: OnceLock::new(),
            domains: Arc::new(Learned::open(&state_dir)),
            state_dir,
        }
    }

    /// Sets the hook told of every credential of each pool built from now on (once).
    pub fn on_built(&self, hook: CandidateHook) {
        let _ = self.on_built.set(hook);
    }

    /// Calls `f` with every credential of every pool being served.
    pub fn each_candidate(&self, mut f: impl FnMut(&Arc<Candidate>)) {
        for pool in self.agents.load().values() {
            for c in pool.by_id.values() {
                f(c);
            }
        }
    }

    /// The quota domains learned so far (SPEC §11).
    pub fn domains(&self) -> &Arc<Learned> {
        &self.domains
    }

    /// Learns `c`'s quota domain from an answer's headers (SPEC §11). Once a credential
    /// has a domain (configured, or learned before) this is one load and returns.
    #[inline]
    pub fn learn_domain(&self, c: &Candidate, headers: &http::HeaderMap) {
        if c.domain.get().is_none() {
            self.learn_domain_slow(c, headers);
        }
    }

    fn learn_domain_slow(&self, c: &Candidate, headers: &http::HeaderMap) {
        let Some(d) = domain::from_headers(headers) else {
            return;
        };
        if c.domain.set(Domain::Learned(d)).is_err() {
            return;
        }
        tracing::debug!(credential = %c.cred.id, domain = %Domain::Learned(d), "quota domain learned");
        // The same secret in other agents' pools is the same account.
        self.each_candidate(|o| {
            if o.fp == c.fp {
                let _ = o.domain.set(Domain::Learned(d));
            }
        });
        if self
            .domains
            .insert(domain::secret_key(c.cred.secret.expose()), d)
        {
            self.domains.persist();
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The environment snapshot credentials were read from.
    pub fn env(&self) -> &EnvSnapshot {
        &self.env
    }

    /// The pool of `agent`, loading it on first use.
    pub fn agent(&self, agent: &str) -> Arc<AgentPool> {
        if let Some(p) = self.agents.load().get(agent) {
            return p.clone();
        }
        let _guard = self.load_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = self.agents.load().get(agent) {
            return p.clone();
        }
        let pool = self.build(agent);
        log_problems(agent, &pool);
        let current = self.agents.load();
        if current.len() < MAX_AGENTS {
            let mut next = HashMap::clone(&current);
            next.insert(agent.to_owned(), pool.clone());
            self.agents.store(Arc::new(next));
        }
        pool
    }

    fn build(&self, agent: &str) -> Arc<AgentPool> {
        // `.env` is re-read on every build, so an edit to it is picked up by a reload; it
        // never overrides the process environment.
        let dotenv = self.state_dir.join(".env");
        let env = match self.env.clone().with_dotenv_file(&dotenv) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the .env file");
                self.env.clone()
            }
        };
        let mut pool = build_pool(&self.config, &self.state_dir, agent, &env);
        pool.sources = store::AgentStore::watch_paths(&self.state_dir, agent)
            .into_iter()
            .chain([
                dotenv,
                store::openclaw_json::config_path(&self.state_dir, &env),
            ])
            .chain(store::claude_credentials_path(&self.env))
            .map(|p| {
                let sig = file_sig(&p);
                (p, sig)
            })
            .collect();
        for c in pool.by_id.values() {
            c.counters.get_or_init(|| {
                self.metrics
                    .credential(&c.cred.provider, c.cred.id.as_str())
            });
        }
        // What was learned survives the rebuild (configured domains are already set).
        if !self.domains.is_empty() {
            for c in pool.by_id.values().filter(|c| c.domain.get().is_none()) {
                if let Some(d) = self.domains.get(domain::secret_key(c.cred.secret.expose())) {
                    let _ = c.domain.set(Domain::Learned(d));
                }
            }
        }
        if let Some(hook) = self.on_built.get() {
            pool.by_id.values().for_each(hook);
        }
        Arc::new(pool)
    }

    /// Rebuilds the pools whose files changed since they were built. A new version that
    /// does not parse leaves the last good pool in place (and says why). In-flight requests
    /// keep the pool they started with. Returns how many pools were replaced.
    pub fn reload_changed(&self) -> usize {
        self.reload(false)
    }

    /// Rebuilds every pool now, changed or not (SIGHUP, SPEC §9): an edit whose size,
    /// mtime and inode all match the last version is picked up too. A new version that
    /// does not parse still leaves the last good pool in place. Returns how many pools
    /// were replaced.
    pub fn reload_all(&self) -> usize {
        self.reload(true)
    }

    fn reload(&self, force: bool) -> usize {
        let _guard = self.load_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.agents.load_full();
        let mut next: Option<HashMap<String, Arc<AgentPool>>> = None;
        let mut replaced = 0;
        for (agent, pool) in current.iter() {
            if !force && !pool.sources.iter().any(|(p, sig)| file_sig(p) != *sig) {
                continue;
            }
            let fresh = self.build(agent);
            let target = next.get_or_insert_with(|| HashMap::clone(&current));
            if fresh.broken && !pool.broken {
                for w in &fresh.warnings {
                    tracing::warn!(agent = %agent, warning = %w, "credential files changed but do not parse: keeping the last good version");
                }
                // Keep serving the old credentials; remember the new signatures so the
                // warning is not repeated on every poll.
                let kept = AgentPool {
                    providers: clone_providers(&pool.providers),
                    by_id: pool.by_id.clone(),
                    warnings: pool.warnings.clone(),
                    errors: pool.errors.clone(),
                    broken: false,
                    inputs: pool.inputs.clone(),
                    stale: fresh.inputs.problems.clone(),
                    sources: fresh.sources.clone(),
                };
                target.insert(agent.clone(), Arc::new(kept));
                continue;
            }
            tracing::info!(agent = %agent, "credential files changed: reloaded");
            log_problems(agent, &fresh);
            target.insert(agent.clone(), fresh);
            replaced += 1;
        }
        if let Some(n) = next {
            self.agents.store(Arc::new(n));
        }
        replaced
    }

    /// Polls the credential files every `every` until `stop` turns true.
    pub async fn watch(
        self: Arc<Self>,
        every: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let this = self.clone();
                    // File metadata and JSON parsing are blocking work.
                    let _ = tokio::task::spawn_blocking(move || this.reload_changed()).await;
                }
                _ = stop.changed() => return,
            }
        }
    }

    /// Records that an attempt is about to use `c` (for least-recently-used ordering).
    pub fn touch(&self, c: &Candidate) {
        let ns = u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        c.last_used.store(ns, Ordering::Relaxed);
    }

    /// The candidates for a provider in attempt order (SPEC §5): explicit order as is;
    /// otherwise stored profiles by kind then least recently used, then env keys in
    /// priority order; with `round_robin`, everything least recently used first.
    ///
    /// Borrows from the pool (no reference-count traffic); sorts only when least recently
    /// used can change the order (two stored profiles of one kind, or `round_robin`).
    pub fn ordered<'p>(&self, pool: &'p ProviderPool) -> Vec<&'p Arc<Candidate>> {
        let mut list: Vec<&Arc<Candidate>> = pool.candidates.iter().collect();
        let strategy = self.config.rotation.strategy;
        if strategy == Strategy::Ordered && (pool.explicit || !pool.lru_ties) {
            return list;
        }
        match strategy {
            Strategy::Ordered => list.sort_by_key(|c| {
                let lru = if c.group < 3 { c.last_used() } else { 0 };
                (c.group, lru, c.position)
            }),
            Strategy::RoundRobin => list.sort_by_key(|c| (c.last_used(), c.group, c.position)),
        }
        list
    }
}

/// Builds an agent's pool from its files and the environment. Unreadable files become
/// warnings, never a failure: a broken profile file must not take env keys down with it.
pub fn build_pool(config: &Config, state_dir: &Path, agent: &str, env: &EnvSnapshot) -> AgentPool {
    let inputs = Arc::new(Inputs::load(state_dir, agent, env.clone(), config));
    let mut warnings = inputs.set.warnings.clone();
    warnings.extend(inputs.problems.iter().cloned());
    let broken = !inputs.problems.is_empty();
    let profiles = &inputs.set.profiles;
    let oc = &inputs.oc;
    warnings.extend(oc.warnings.iter().cloned());

    let errors = profiles
        .iter()
        .filter_map(|p| match &p.secret {
            Err(e @ store::ProfileProblem::OAuthSecretRef { .. }) => {
                Some(format!("auth profile \"{}\": {e}", p.id))
            }
            _ => None,
        })
        .collect();
    let mut pool = AgentPool {
        errors,
        ..AgentPool::default()
    };
    for (id, provider) in &config.providers {
        let plan = order::plan(&inputs, id, Some(provider));
        let explicit = plan.order.is_some();
        // Every credential is pinnable by id, whatever the order says; an ineligible one
        // never is (OpenClaw's rule).
        for e in &plan.entries {
            if let Fate::Ineligible(why) = &e.fate {
                warnings.push(format!(
                    "auth profile \"{}\": {}",
                    e.id(),
                    why.detail(e.kind())
                ));
            }
        }
        for e in plan.entries.iter().filter(|e| e.place().is_none()) {
            let Some(c) = &e.cred else { continue };
            if let Some(cand) = Candidate::new(provider, c.clone(), group(e, false), 0) {
                pool.by_id
                    .entry(c.id.to_string())
                    .or_insert_with(|| Arc::new(cand));
            }
        }
        warnings.extend(plan.warnings.iter().cloned());
        for (cred, name) in &provider.quota_domains {
            if !plan.entries.iter().any(|e| e.id() == cred) {
                warnings.push(format!(
                    "providers.{id}.quota_domains: \"{name}\" lists \"{cred}\", which is not a credential of this provider"
                ));
            }
        }
        let candidates: Vec<Arc<Candidate>> = plan
            .ranked()
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let c = e.cred.clone()?;
                Candidate::new(provider, c, group(e, explicit), i as u32).map(Arc::new)
            })
            .collect();
        // Pins and the pool share one Candidate (so last-used is shared).
        for c in &candidates {
            pool.by_id.insert(c.cred.id.to_string(), c.clone());
        }
        pool.providers.insert(
            id.clone(),
            ProviderPool {
                lru_ties: candidates
                    .windows(2)
                    .any(|w| w[0].group < 3 && w[0].group == w[1].group),
                candidates,
                explicit,
            },
        );
    }
    pool.warnings = warnings;
    pool.broken = broken;
    pool.inputs = inputs;
    pool
}

/// Logs what loading an agent's store skipped (WARN) or refused (ERROR), naming entries,
/// never values.
fn log_problems(agent: &str, pool: &AgentPool) {
    for w in &pool.warnings {
        tracing::warn!(agent, warning = %w, "credential store");
    }
    for e in &pool.errors {
        tracing::error!(agent, error = %e, "credential store: profile refused");
    }
}

fn clone_providers(p: &HashMap<String, ProviderPool>) -> HashMap<String, ProviderPool> {
    p.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                ProviderPool {
                    candidates: v.candidates.clone(),
                    explicit: v.explicit,
                    lru_ties: v.lru_ties,
                },
            )
        })
        .collect()
}

/// Rank group of an entry: 0 for every entry of an explicit order (exact, never
/// re-ranked), else 0 oauth, 1 token, 2 api key (stored profiles), 3 environment.
fn group(e: &Entry<'_>, explicit: bool) -> u8 {
    match e.profile {
        _ if explicit => 0,
        Some(p) => order::kind_rank(p.kind),
        None => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILES: &str = r#"{"version":1,"profiles":{
      "anthropic:key":{"type":"api_key","provider":"anthropic","key":"sk-test-key-1111"},
      "anthropic:tok":{"type":"token","provider":"anthropic","token":"sk-test-tok-2222"},
      "anthropic:oa":{"type":"oauth","provider":"anthropic","access":"sk-test-oa-3333","refresh":"r-test-3333","expires":4102444800000},
      "anthropic:copy":{"type":"api_key","provider":"anthropic","key":"sk-test-env-4444"}}}"#;

    /// The pool of agent `main` for these files and `ANTHROPIC_API_KEYS`.
    fn pool(state: Option<&str>, env_keys: &str) -> (AgentPool, tempfile::TempDir) {
        let dir = order::tests::state_dir(PROFILES, state, None);
        let env = EnvSnapshot::from_pairs([("ANTHROPIC_API_KEYS".to_owned(), env_keys.to_owned())]);
        let pool = build_pool(&Config::defaults(), dir.path(), "main", &env);
        (pool, dir)
    }

    fn ids(pool: &AgentPool) -> Vec<&str> {
        pool.providers["anthropic"]
            .candidates
            .iter()
            .map(|c| c.cred.id.as_str())
            .collect()
    }

    #[test]
    fn profiles_rank_by_kind_then_env_keys_and_a_repeated_secret_serves_once() {
        let (pool, _dir) = pool(None, "sk-test-env-4444,sk-test-env-5555");
        // oauth, token, api keys (by id, as the store lists them), then env keys; the env
        // key whose secret a profile already holds is dropped, the profile keeps its place.
        assert_eq!(
            ids(&pool),
            [
                "anthropic:oa",
                "anthropic:tok",
                "anthropic:copy",
                "anthropic:key",
                "env:ANTHROPIC_API_KEYS#2"
            ]
        );
        assert!(!pool.providers["anthropic"].explicit);
        // Every credential is pinnable by id, the dropped duplicate too.
        assert!(pool.by_id.contains_key("env:ANTHROPIC_API_KEYS#1"));
        assert!(!pool.broken && pool.inputs.problems.is_empty());
    }

    #[test]
    fn an_explicit_order_is_exact_and_names_what_it_leaves_out() {
        let state = r#"{"version":1,"order":{"anthropic":["anthropic:key","env:ANTHROPIC_API_KEYS#1","anthropic:missing"]}}"#;
        let (pool, _dir) = pool(Some(state), "sk-test-env-6666");
        assert_eq!(ids(&pool), ["anthropic:key", "env:ANTHROPIC_API_KEYS#1"]);
        let p = &pool.providers["anthropic"];
        assert!(p.explicit);
        // What the order leaves out is still pinnable.
        for id in ["anthropic:copy", "anthropic:oa", "anthropic:tok"] {
            assert!(pool.by_id.contains_key(id), "{id}");
        }
        assert!(
            pool.warnings
                .iter()
                .any(|w| w.contains("anthropic:missing")),
            "{:?}",
            pool.warnings
        );
    }

    #[test]
    fn a_broken_profiles_file_keeps_env_keys_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = dir.path().join("agents/main/agent");
        std::fs::create_dir_all(&agent).expect("agent dir");
        std::fs::write(agent.join("auth-profiles.json"), "{ oops").expect("profiles");
        let env = EnvSnapshot::from_pairs([(
            "ANTHROPIC_API_KEYS".to_owned(),
            "sk-test-env-7777".to_owned(),
        )]);
        let pool = build_pool(&Config::defaults(), dir.path(), "main", &env);
        assert!(pool.broken);
        assert_eq!(ids(&pool), ["env:ANTHROPIC_API_KEYS#1"]);
        assert_eq!(pool.inputs.problems.len(), 1);
        assert!(pool.inputs.problems[0].contains("auth-profiles.json"));
        assert!(!pool.inputs.problems[0].contains("sk-test"));
    }

    #[test]
    fn a_configured_domain_is_set_at_build_and_an_unknown_id_is_a_warning() {
        let dir = order::tests::state_dir(PROFILES, None, None);
        let env = EnvSnapshot::from_pairs([(
            "ANTHROPIC_API_KEYS".to_owned(),
            "sk-test-env-8888".to_owned(),
        )]);
        let config = Config::from_toml(
            "[providers.anthropic]\nquota_domains = { team = [\"anthropic:key\", \"env:ANTHROPIC_API_KEYS#1\", \"anthropic:nope\"] }\n",
            None,
            &|_| None,
        )
        .expect("config");
        let pool = build_pool(&config, dir.path(), "main", &env);
        let team = Domain::Configured("team".into());
        assert_eq!(pool.by_id["anthropic:key"].domain(), Some(&team));
        assert_eq!(pool.by_id["env:ANTHROPIC_API_KEYS#1"].domain(), Some(&team));
        assert_eq!(pool.by_id["anthropic:tok"].domain(), None);
        assert!(
            pool.warnings
                .iter()
                .any(|w| w.contains("quota_domains") && w.contains("anthropic:nope")),
            "{:?}",
            pool.warnings
        );
        assert!(!pool
            .warnings
            .iter()
            .any(|w| w.contains("\"anthropic:key\", which")));
    }
}
