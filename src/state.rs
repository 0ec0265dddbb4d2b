//! The state the request path and the admin endpoints share, built once at startup.
//!
//! Owns [`AppState`] — configuration, inbound auth, the credential registry, the upstream
//! client, cooldowns (shared with other replicas in cluster mode), request limits, session
//! affinity, metrics, OAuth refreshes, the body budget and the listeners' TLS config — and
//! [`build_state`], which assembles it. It does no request work itself.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::budget::BodyBudget;
use crate::classify::Reason;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::cooldown::{Cooldowns, Ladders};
use crate::credentials::env::EnvSnapshot;
use crate::credentials::oauth::Refresher;
use crate::inbound::Gatekeeper;
use crate::metrics::{ClusterSeries, Metrics};
use crate::pool::{Affinity, Limits, Registry};
use crate::tls::ServerTls;
use crate::upstream::UpstreamClient;

/// Everything the request path shares. Built once at startup.
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Inbound authentication.
    pub gate: Gatekeeper,
    /// Credential pools per agent.
    pub registry: Arc<Registry>,
    /// The pooled upstream client.
    pub client: UpstreamClient,
    /// `scheme://authority[/prefix]` per provider, precomputed.
    pub bases: HashMap<String, Box<str>>,
    /// Whether `/metrics` and `/_keygate/status` live on their own listener.
    pub admin_separate: bool,
    /// Cooldown windows, shared by every agent (a rate limit belongs to the key).
    pub cooldowns: Arc<Cooldowns>,
    /// Cluster mode (SPEC §10): what this replica shares through Redis; `None` when off.
    pub cluster: Option<Arc<Cluster>>,
    /// Reasons that retry with the next candidate (`[rotation] rotate_on`).
    pub rotate_on: Vec<Reason>,
    /// Local per-credential request limits (`[providers.P] rpm`).
    pub limits: Limits,
    /// Which credential each conversation last used (SPEC §11); `None` with
    /// `affinity = "off"`. Local to this replica: sessions are never sent to Redis.
    pub affinity: Option<Affinity>,
    /// Prometheus series.
    pub metrics: Arc<Metrics>,
    /// OAuth refreshes, one at a time per profile.
    pub refresher: Refresher,
    /// Bytes of request bodies held at once, over every request (`max_buffered_bodies`).
    pub body_budget: BodyBudget,
    /// `[server.tls]`: the listeners' certificate, reloaded when its files change
    /// (SPEC §12); `None`: plain HTTP.
    pub tls: Option<Arc<ServerTls>>,
}

// === impl AppState ===

impl AppState {
    /// Builds the shared state.
    pub fn new(
        config: Arc<Config>,
        gate: Gatekeeper,
        registry: Arc<Registry>,
        client: UpstreamClient,
        metrics: Arc<Metrics>,
        cluster_series: ClusterSeries,
    ) -> Self {
        let bases = config
            .providers
            .values()
            .filter_map(|p| {
                let base = p.base_url.as_ref()?.to_string();
                Some((p.id.clone(), base.trim_end_matches('/').into()))
            })
            .collect();
        let admin_separate = config.admin.listen.is_some();
        let cooldowns = Arc::new(Cooldowns::new(Ladders {
            backoff: config.rotation.backoff.clone(),
            billing: config.rotation.billing_backoff.clone(),
        }));
        let cluster = config
            .cluster
            .clone()
            .map(|c| Cluster::new(c, cooldowns.clone(), &registry, cluster_series));
        let rotate_on = config
            .rotation
            .rotate_on
            .iter()
            .filter_map(|r| Reason::parse(r))
            .collect();
        let limits = Limits::new(&config);
        // Cluster mode with a cluster key: one replica refreshes, the others use its result.
        let refresher = match cluster.as_ref().and_then(Cluster::refresh_coordinator) {
            Some(c) => Refresher::default().with_coordinator(c),
            None => Refresher::default(),
        };
        Self {
            affinity: Affinity::new(&config.rotation),
            body_budget: BodyBudget::new(config.server.max_buffered_bodies),
            config,
            gate,
            registry,
            client,
            bases,
            admin_separate,
            cooldowns,
            cluster,
            rotate_on,
            limits,
            metrics,
            refresher,
            tls: None,
        }
    }
}

/// Builds the shared request-path state for a listen address: checks the inbound auth
/// mode against it (SPEC §4) and prepares the credential registry and upstream client.
///
/// `env` is the process environment: `<state-dir>/.env` is layered under it on every
/// (re)load of the credential files.
///
/// Returns the refusal message when the mode is not allowed on this address.
pub fn build_state(
    config: Config,
    state_dir: PathBuf,
    env: EnvSnapshot,
    listen: &std::net::SocketAddr,
) -> Result<Arc<AppState>, String> {
    let mode = crate::inbound::effective_mode(&config.gateway, listen)?;
    if mode == crate::config::AuthMode::None {
        tracing::warn!(%listen, "no gateway auth configured: accepting unauthenticated requests on loopback only (set KEYGATE_TOKEN to require a token)");
    }
    let gate = Gatekeeper::new(&config.gateway, mode);
    // TLS (SPEC §12): files that do not load stop the start, naming the file.
    let tls = config
        .server
        .tls
        .as_ref()
        .map(|t| ServerTls::load(t).map(Arc::new))
        .transpose()?;
    if crate::inbound::clear_text_exposed(mode, listen, tls.is_some(), config.server.plaintext_ok) {
        tracing::warn!(%listen, "gateway credentials cross the network in clear text: configure [server.tls], or set [server] plaintext_ok = true when TLS ends in front of keygate");
    }
    let client = crate::upstream::client(&config.server, &config.upstream)?;
    let config = Arc::new(config);
    let mut metrics = Metrics::new(config.providers.keys().map(String::as_str));
    let cluster_series = config.cluster.is_some().then(|| metrics.register_cluster());
    let metrics = Arc::new(metrics);
    let registry = Arc::new(Registry::new(
        config.clone(),
        state_dir,
        env,
        metrics.clone(),
    ));
    let mut state = AppState::new(
        config,
        gate,
        registry,
        client,
        metrics,
        cluster_series.unwrap_or_default(),
    );
    state.tls = tls;
    Ok(Arc::new(state))
}
