//! keygate's validated configuration (SPEC §2).
//!
//! Owns the typed [`Config`] and [`Config::load`]: file → [`raw`] serde structs → checked
//! values ([`validate`]), with every problem reported as a [`ConfigError`] that names the
//! key, line and column. Secrets are never literals here: `*_env` / `*_file` are resolved
//! during validation from an injected variable lookup, so tests never touch the process
//! environment. It does not own credentials (see `credentials`) nor the CLI flags that
//! override a few values (see `cli`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Uri;
use ipnet::IpNet;

use crate::provider::{AuthStyle, ModelFrom};
use crate::secret::Secret;

mod raw;
mod report;
mod validate;

pub use validate::{parse_duration, parse_size, valid_agent_id, MAX_DURATION};

/// Default listen address (SPEC §1).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// The validated configuration. `Debug` never shows secrets (they are [`Secret`]s).
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the file came from, when there was one.
    pub path: Option<PathBuf>,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[gateway.auth]`.
    pub gateway: GatewayAuth,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[log]`.
    pub log: LogFormat,
    /// `[rotation]`.
    pub rotation: RotationConfig,
    /// Effective providers: the built-ins with `[providers.*]` entries laid over them,
    /// plus custom providers. Keyed by provider id.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `[secrets.providers.*]`.
    pub secret_providers: BTreeMap<String, SecretProviderConfig>,
    /// `[cluster]`; `None`: one process, nothing shared.
    pub cluster: Option<ClusterConfig>,
    /// `[upstream]`: egress proxy and trusted roots (SPEC §12).
    pub upstream: UpstreamConfig,
}

/// `[server.tls]` resolved (SPEC §12): the paths only; the files are read when the listener
/// starts and re-read when they change (see `tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (absolute).
    pub cert_file: PathBuf,
    /// PEM private key (absolute; must be owner-only).
    pub key_file: PathBuf,
    /// PEM CA certificates for client certificates (mTLS); `None`: no client certificate
    /// is asked for.
    pub client_ca_file: Option<PathBuf>,
}

/// Which root certificates upstream TLS trusts (`[upstream] roots`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Roots {
    /// The Mozilla set compiled in (webpki-roots).
    #[default]
    Webpki,
    /// The operating system's store.
    Native,
    /// Both.
    Both,
}

/// One egress proxy URL. A secret: from the environment it may carry a password.
#[derive(Clone, Debug)]
pub struct ProxyUrl {
    /// `http://[user[:password]@]host:port`.
    pub url: Secret,
    /// Where it came from (`upstream.proxy` or a variable's name), for messages.
    pub from: String,
    /// `host:port` only (what `config check` shows).
    pub host: String,
}

/// `[upstream]` resolved (SPEC §12).
#[derive(Clone, Debug, Default)]
pub struct UpstreamConfig {
    /// Proxy for `http://` upstreams (`None`: direct).
    pub http_proxy: Option<ProxyUrl>,
    /// Proxy for `https://` upstreams (`None`: direct).
    pub https_proxy: Option<ProxyUrl>,
    /// `NO_PROXY` / `no_proxy`: hosts, domain suffixes, IPs, CIDRs or `*` reached directly.
    pub no_proxy: String,
    /// Extra PEM root files: `ca_file`, then `SSL_CERT_FILE`.
    pub ca_files: Vec<PathBuf>,
    /// `SSL_CERT_DIR`: a directory of PEM roots, added too.
    pub ca_dir: Option<PathBuf>,
    /// The base set of roots (default webpki).
    pub roots: Roots,
}

/// `[cluster]` resolved (SPEC §10).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The Redis URL (`redis://` or `rediss://`). A secret: it may carry a password when it
    /// comes from the environment.
    pub redis_url: Secret,
    /// Where the URL came from (`cluster.redis_url` or the variable's name), for messages.
    pub redis_url_from: String,
    /// Prefix of every key and channel (default `keygate:`).
    pub key_prefix: String,
    /// The cluster key (32 bytes): keys the credential fingerprints and encrypts OAuth
    /// tokens shared through Redis. `None`: tokens are not shared.
    pub secret_key: Option<Secret>,
}

/// `[server]` with defaults applied.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Listen address from the file, if any (flag and env take precedence in `serve`).
    pub listen: Option<SocketAddr>,
    /// Largest request body accepted (default 32 MiB); 413 past it.
    pub max_request_body: usize,
    /// How much of an upstream error body is read to classify it (default 64 KiB).
    pub max_error_body: usize,
    /// Whole upstream exchange, streaming included (default 600 s).
    pub request_timeout: Duration,
    /// TCP (+TLS) connect budget (default 10 s).
    pub connect_timeout: Duration,
    /// Budget for the upstream's response headers (default 120 s).
    pub first_byte_timeout: Duration,
    /// How long SIGTERM waits for in-flight streams (default 30 s).
    pub shutdown_grace: Duration,
    /// Open client connections at most; `None`: sized from the open-file limit at start
    /// (see `server::default_max_connections`).
    pub max_connections: Option<usize>,
    /// Total bytes of request bodies buffered at once, over every request (default
    /// 256 MiB); a request that would pass it gets 503 with `retry-after`.
    pub max_buffered_bodies: usize,
    /// `[server.tls]`: HTTPS on the listeners (SPEC §12); `None`: plain HTTP.
    pub tls: Option<TlsConfig>,
    /// `[server] plaintext_ok`: no warning for a token on a non-loopback plain listener.
    pub plaintext_ok: bool,
}

/// Inbound authentication mode (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Gateway tokens, each mapped to an agent.
    Token,
    /// One shared password for agent `main`.
    Password,
    /// Identity asserted by a trusted front proxy.
    TrustedProxy,
    /// No authentication (loopback only).
    None,
}

/// A gateway token and the agent it maps to.
#[derive(Clone, Debug)]
pub struct GatewayToken {
    /// The token value.
    pub secret: Secret,
    /// Agent id it selects.
    pub agent: String,
    /// Whether `x-keygate-agent` may pick another agent.
    pub any_agent: bool,
}

/// `[gateway.auth]` resolved.
#[derive(Clone, Debug)]
pub struct GatewayAuth {
    /// The configured mode; `None` means "decide at startup" (SPEC §4).
    pub mode: Option<AuthMode>,
    /// Tokens (mode `token`), resolved from their variables/files.
    pub tokens: Vec<GatewayToken>,
    /// Password (mode `password`).
    pub password: Option<Secret>,
    /// Trusted-proxy source networks.
    pub trusted_cidrs: Vec<IpNet>,
    /// Trusted-proxy identity header.
    pub identity_header: HeaderName,
    /// Trusted-proxy allow-list of agents, when set.
    pub allow_agents: Option<Vec<String>>,
    /// `[gateway] allowed_origins`: browser origins allowed besides loopback ones, each
    /// normalised (lowercase, no default port) as browsers serialise `Origin`.
    pub allowed_origins: Vec<String>,
}

/// `[admin]` resolved.
#[derive(Clone, Debug, Default)]
pub struct AdminConfig {
    /// Admin token protecting `/_keygate/status`; `None`: that path is a 404.
    pub token: Option<Secret>,
    /// Own listener for the reserved paths.
    pub listen: Option<SocketAddr>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Candidate ordering strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// SPEC §5 order (pin, explicit order, profiles by kind then LRU, env).
    Ordered,
    /// Every candidate least recently used first.
    RoundRobin,
}

/// What to do when every candidate is cooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnAllCooling {
    /// 429 with `retry-after`.
    Fail,
    /// Wait for the soonest candidate up to `max_wait`.
    Wait,
}

/// Whether requests of one conversation stay on one credential (SPEC §11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// By the request's session key (the default).
    Session,
    /// §5's order for every request.
    Off,
}

/// `[rotation]` resolved.
#[derive(Clone, Debug)]
pub struct RotationConfig {
    /// Ordering strategy (default ordered).
    pub strategy: Strategy,
    /// 0 = as many as there are candidates.
    pub max_attempts: u32,
    /// Hold a 2xx SSE answer until its first content-bearing event (default true).
    pub peek_stream: bool,
    /// Reasons that retry with the next candidate (default rate_limit, billing).
    pub rotate_on: Vec<String>,
    /// Default fail.
    pub on_all_cooling: OnAllCooling,
    /// Default 0 s.
    pub max_wait: Duration,
    /// Cooldown ladder without a provider hint (default 30 s, 1 min, 5 min).
    pub backoff: Vec<Duration>,
    /// Billing ladder (default 5 h, 10 h, 20 h, 24 h).
    pub billing_backoff: Vec<Duration>,
    /// Session affinity (default on).
    pub affinity: Affinity,
    /// How long a session is remembered after its last request (default 1 h).
    pub affinity_ttl: Duration,
    /// The most sessions remembered (default 100 000), least recently used evicted.
    pub affinity_max_sessions: usize,
}

/// One effective provider.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Provider id (first path segment).
    pub id: String,
    /// Upstream base URL (`None`: Azure without a configured one — requests get 502).
    pub base_url: Option<Uri>,
    /// How an API key goes on the wire.
    pub auth: AuthStyle,
    /// Environment prefix (`<P>`).
    pub env_prefix: String,
    /// Where the model is read from.
    pub model_from: ModelFrom,
    /// Headers added when the client did not send them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Optional local per-credential requests per minute.
    pub rpm: Option<u32>,
    /// Optional local per-credential cap on requests in flight (SPEC §11).
    pub max_in_flight: Option<u32>,
    /// Configured quota domains (SPEC §11): credential id → domain name. A credential is in
    /// at most one; configured wins over learned.
    pub quota_domains: BTreeMap<String, Arc<str>>,
    /// Explicit order from config (`auth-state.json` takes precedence).
    pub order: Option<Vec<String>>,
    /// Model used by `models status --probe`.
    pub probe_model: Option<String>,
    /// OAuth refresh endpoint.
    pub oauth: Option<OAuthConfig>,
    /// Whether the config file has a `[providers.<id>]` entry (readiness looks only at these).
    pub configured: bool,
}

/// `[providers.P.oauth]`.
#[derive(Clone, Debug)]
pub struct OAuthConfig {
    /// Token endpoint.
    pub token_url: Uri,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// Send the refresh form-encoded instead of JSON.
    pub form: bool,
}

/// `[secrets.providers.ALIAS]`.
#[derive(Clone, Debug)]
pub enum SecretProviderConfig {
    /// Secrets read from a file.
    File {
        /// Absolute path.
        path: PathBuf,
        /// `true`: the whole file is the value; `false`: ids are JSON pointers.
        single_value: bool,
    },
    /// Secrets printed by a command (protocol v1).
    Exec {
        /// Absolute command path.
        command: PathBuf,
        /// Arguments.
        args: Vec<String>,
        /// Variables passed through.
        pass_env: Vec<String>,
        /// Time limit (default 5 s).
        timeout: Duration,
    },
}

/// Why a configuration could not be loaded. Messages name the file, key, line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` / `KEYGATE_CONFIG` names a file that does not exist (exit 1, SPEC §1).
    #[error("config file {path} does not exist: create it, or point --config / KEYGATE_CONFIG at an existing file")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// TOML syntax or shape (unknown key, wrong type): the message names the line, column
    /// and key, never a value from the file (see `report`).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line, column, key path and what is wrong; never the file's text.
        message: String,
    },
    /// A value that parsed but is not acceptable.
    #[error("invalid config {path}: `{key}`{at}: {reason}", at = fmt_at(*line, *column))]
    Invalid {
        /// The file (`<defaults>` when there is none).
        path: PathBuf,
        /// Dotted key path, e.g. `server.request_timeout`.
        key: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// What is wrong and what to do.
        reason: String,
    },
}

// === impl ConfigError ===

impl ConfigError {
    /// The exit code for this error (SPEC §1): 1 when the file cannot be read (it does not
    /// exist, or I/O failed), 64 (usage) when its content is wrong.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::NotFound { .. } | ConfigError::Io { .. } => 1,
            ConfigError::Parse { .. } | ConfigError::Invalid { .. } => 64,
        }
    }
}

fn fmt_at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

// === impl Config ===

impl Config {
    /// Loads and validates `path` (or the built-in defaults when `None`), resolving
    /// `*_env` names through `env` and `*_file` paths from disk.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        match path {
            None => Self::from_toml("", None, env),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| {
                    if source.kind() == std::io::ErrorKind::NotFound {
                        ConfigError::NotFound { path: p.to_owned() }
                    } else {
                        ConfigError::Io {
                            path: p.to_owned(),
                            source,
                        }
                    }
                })?;
                Self::from_toml(&text, Some(p), env)
            }
        }
    }

    /// Parses and validates configuration text.
    pub fn from_toml(
        text: &str,
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let display = path
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("<defaults>"));
        // Never toml's own Display: it quotes the offending line, secrets included.
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: display.clone(),
            message: report::describe(text, &e),
        })?;
        validate::validate(raw, text, display, path.map(Path::to_owned), env)
    }

    /// Built-in defaults only (no file, no environment).
    pub fn defaults() -> Self {
        Self::from_toml("", None, &|_| None).expect("the built-in defaults are valid")
    }

    /// The provider with this id.
    pub fn provider(&self, id: &str) -> Option<&ProviderConfig> {
        self.providers.get(id)
    }
}

#[cfg(test)]
mod tests;
