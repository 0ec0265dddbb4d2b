//! The configuration file exactly as written on disk (SPEC §2).
//!
//! Owns the serde shape: every section denies unknown keys (the TOML error then names the
//! key, line and column) and every field is optional, with its default stated here and
//! applied in `validate`. Values that need checking after parsing (durations, sizes, URLs,
//! addresses) are kept as [`Spanned`] strings so a validation error can name the line.
//! It does not own defaults' application or any cross-field rule (see `validate`).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// Spanned string: a value with its byte range in the file.
pub(crate) type SStr = Spanned<String>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub(crate) server: RawServer,
    pub(crate) gateway: RawGateway,
    pub(crate) admin: RawAdmin,
    pub(crate) log: RawLog,
    pub(crate) rotation: RawRotation,
    pub(crate) providers: BTreeMap<String, Spanned<RawProvider>>,
    pub(crate) secrets: RawSecrets,
    /// Absent: cluster mode is off.
    pub(crate) cluster: Option<Spanned<RawCluster>>,
    /// `[upstream]` (SPEC §12): egress proxy and trusted roots.
    pub(crate) upstream: RawUpstream,
}

/// `[server.tls]` (SPEC §12). Absent: the listeners speak plain HTTP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    /// Required: PEM certificate chain, leaf first.
    pub(crate) cert_file: Option<SStr>,
    /// Required: PEM private key, owner-only.
    pub(crate) key_file: Option<SStr>,
    /// Optional: PEM CA certificates; when set, clients must present a certificate they sign.
    pub(crate) client_ca_file: Option<SStr>,
}

/// `[upstream]` (SPEC §12).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawUpstream {
    /// Default: none (then `proxy_env`, then `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY`).
    /// Never with a password.
    pub(crate) proxy: Option<SStr>,
    /// The variable holding the proxy URL (it may carry a password); default none.
    pub(crate) proxy_env: Option<SStr>,
    /// Default none (`SSL_CERT_FILE` is added too): extra PEM roots.
    pub(crate) ca_file: Option<SStr>,
    /// `webpki` (default) | `native` | `both`.
    pub(crate) roots: Option<SStr>,
}

/// `[cluster]` (SPEC §10).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCluster {
    /// Default `KEYGATE_REDIS_URL` (when `redis_url` is absent).
    pub(crate) redis_url_env: Option<SStr>,
    /// `redis://host:6379/0` or `rediss://…`; no password in the file.
    pub(crate) redis_url: Option<SStr>,
    /// Default `keygate:`.
    pub(crate) key_prefix: Option<SStr>,
    /// 64 hex characters (32 bytes); default: no tokens are shared.
    pub(crate) secret_key_env: Option<SStr>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawServer {
    /// Default `127.0.0.1:8787` (env `KEYGATE_LISTEN`, flag `--listen`).
    pub(crate) listen: Option<SStr>,
    /// Default `32MiB`.
    pub(crate) max_request_body: Option<SStr>,
    /// Default `64KiB`.
    pub(crate) max_error_body: Option<SStr>,
    /// Default `600s`.
    pub(crate) request_timeout: Option<SStr>,
    /// Default `10s`.
    pub(crate) connect_timeout: Option<SStr>,
    /// Default `120s`.
    pub(crate) first_byte_timeout: Option<SStr>,
    /// Default `30s`.
    pub(crate) shutdown_grace: Option<SStr>,
    /// Default: sized from the open-file limit.
    pub(crate) max_connections: Option<Spanned<u64>>,
    /// Default `256MiB`.
    pub(crate) max_buffered_bodies: Option<SStr>,
    /// `[server.tls]`; default: plain HTTP.
    pub(crate) tls: Option<Spanned<RawTls>>,
    /// Default `false`: warn when a token crosses a non-loopback listener in clear text.
    pub(crate) plaintext_ok: Option<bool>,
}

/// `[gateway]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawGateway {
    pub(crate) auth: RawGatewayAuth,
    /// Browser origins (`scheme://host[:port]`) allowed besides loopback ones; default none.
    pub(crate) allowed_origins: Option<Vec<SStr>>,
}

/// `[gateway.auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawGatewayAuth {
    /// `token` | `password` | `trusted-proxy` | `none`; unset: token when one is configured,
    /// else `none` on loopback.
    pub(crate) mode: Option<SStr>,
    /// Default: `KEYGATE_TOKEN` for agent `main` when that variable is set.
    pub(crate) tokens: Option<Vec<Spanned<RawToken>>>,
    /// Password mode: the variable holding the password.
    pub(crate) password_env: Option<SStr>,
    /// Password mode: a file holding the password.
    pub(crate) password_file: Option<SStr>,
    /// Trusted-proxy mode: source networks allowed to assert an identity.
    pub(crate) trusted_cidrs: Option<Vec<SStr>>,
    /// Trusted-proxy mode: the header carrying the agent id (default `x-forwarded-user`).
    pub(crate) identity_header: Option<SStr>,
    /// Trusted-proxy mode: optional allow-list of agent ids.
    pub(crate) allow_agents: Option<Vec<String>>,
}

/// One gateway token entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawToken {
    pub(crate) token_env: Option<SStr>,
    pub(crate) token_file: Option<SStr>,
    /// Default `main`.
    pub(crate) agent: Option<SStr>,
    /// Default `false`: whether `x-keygate-agent` may pick another agent.
    pub(crate) any_agent: bool,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    /// Default `KEYGATE_ADMIN_TOKEN`.
    pub(crate) token_env: Option<SStr>,
    pub(crate) token_file: Option<SStr>,
    /// Optional own listener for the reserved paths.
    pub(crate) listen: Option<SStr>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLog {
    /// `text` (default) | `json`.
    pub(crate) format: Option<SStr>,
}

/// `[rotation]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRotation {
    /// `ordered` (default) | `round_robin`.
    pub(crate) strategy: Option<SStr>,
    /// Default 0 (as many as there are candidates).
    pub(crate) max_attempts: Option<u32>,
    /// Default true.
    pub(crate) peek_stream: Option<bool>,
    /// Default `["rate_limit", "billing"]`.
    pub(crate) rotate_on: Option<Vec<SStr>>,
    /// `fail` (default) | `wait`.
    pub(crate) on_all_cooling: Option<SStr>,
    /// Default `0s`.
    pub(crate) max_wait: Option<SStr>,
    /// Default `["30s", "1m", "5m"]`.
    pub(crate) backoff: Option<Vec<SStr>>,
    /// Default `["5h", "10h", "20h", "24h"]`.
    pub(crate) billing_backoff: Option<Vec<SStr>>,
    /// `session` (default) | `off`.
    pub(crate) affinity: Option<SStr>,
    /// Default `1h`.
    pub(crate) affinity_ttl: Option<SStr>,
    /// Default 100 000 (an extension: SPEC §11 fixes the bound, tests lower it).
    pub(crate) affinity_max_sessions: Option<Spanned<u64>>,
}

/// `[providers.NAME]`: overrides a built-in, or defines a custom provider.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawProvider {
    pub(crate) base_url: Option<SStr>,
    pub(crate) auth: Option<Spanned<RawAuthStyle>>,
    pub(crate) env_prefix: Option<SStr>,
    pub(crate) model_from: Option<SStr>,
    pub(crate) headers: Option<BTreeMap<String, String>>,
    pub(crate) rpm: Option<u32>,
    pub(crate) max_in_flight: Option<u32>,
    /// Quota domains (SPEC §11): domain name → credential ids. Default none.
    pub(crate) quota_domains: Option<Spanned<BTreeMap<String, Vec<String>>>>,
    pub(crate) order: Option<Vec<String>>,
    /// Models used by `models status --probe`.
    pub(crate) probe_model: Option<String>,
    pub(crate) oauth: Option<RawOAuth>,
}

/// `auth = "bearer"` or `auth = { header = "x-key" }` / `{ query = "key" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawAuthStyle {
    Named(String),
    Table(RawAuthTable),
}

/// The table form of `auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuthTable {
    pub(crate) header: Option<String>,
    pub(crate) query: Option<String>,
}

/// `[providers.P.oauth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawOAuth {
    pub(crate) token_url: Option<SStr>,
    pub(crate) client_id: Option<String>,
    /// Default false: send the refresh as JSON.
    pub(crate) form: bool,
}

/// `[secrets]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSecrets {
    pub(crate) providers: BTreeMap<String, Spanned<RawSecretProvider>>,
}

/// `[secrets.providers.ALIAS]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSecretProvider {
    /// `file` | `exec`.
    pub(crate) source: Option<SStr>,
    pub(crate) path: Option<SStr>,
    /// `json` (default) | `single_value`.
    pub(crate) mode: Option<SStr>,
    pub(crate) command: Option<SStr>,
    pub(crate) args: Option<Vec<String>>,
    pub(crate) pass_env: Option<Vec<String>>,
    /// Default `5s`.
    pub(crate) timeout: Option<SStr>,
}
