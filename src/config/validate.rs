//! `RawConfig` → `Config`: defaults, durations, sizes, URLs, secrets and cross-field rules.
//!
//! Owns every check that serde cannot do, each reported with the key's path and, when the
//! value came from the file, its line and column. It does not read the process environment
//! directly: `*_env` names go through the injected lookup.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderName;
use http::Uri;
use toml::Spanned;

use super::raw::{self, RawAuthStyle, SStr};
use super::*;
use crate::provider::{self, AuthStyle, ModelFrom};

/// The largest `[server] max_connections` accepted.
const MAX_CONNECTIONS_LIMIT: u64 = 1 << 24;

/// Validation context: the source text (for line/column) and the file name.
struct Ctx<'a> {
    text: &'a str,
    path: PathBuf,
    env: &'a dyn Fn(&str) -> Option<String>,
}

pub(super) fn validate(
    raw: raw::RawConfig,
    text: &str,
    display: PathBuf,
    path: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let cx = Ctx {
        text,
        path: display,
        env,
    };
    let s = &raw.server;
    let server = ServerConfig {
        listen: s
            .listen
            .as_ref()
            .map(|v| cx.addr("server.listen", v))
            .transpose()?,
        max_request_body: cx.size("server.max_request_body", &s.max_request_body, "32MiB")?,
        max_error_body: cx.size("server.max_error_body", &s.max_error_body, "64KiB")?,
        request_timeout: cx.duration("server.request_timeout", &s.request_timeout, "600s")?,
        connect_timeout: cx.duration("server.connect_timeout", &s.connect_timeout, "10s")?,
        first_byte_timeout: cx.duration(
            "server.first_byte_timeout",
            &s.first_byte_timeout,
            "120s",
        )?,
        shutdown_grace: cx.duration("server.shutdown_grace", &s.shutdown_grace, "30s")?,
        max_connections: match &s.max_connections {
            None => None,
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > MAX_CONNECTIONS_LIMIT => {
                return Err(cx.invalid(
                    "server.max_connections",
                    Some(n.span()),
                    format!("must be between 1 and {MAX_CONNECTIONS_LIMIT} (or absent: sized from the open-file limit)"),
                ))
            }
            Some(n) => Some(*n.get_ref() as usize),
        },
        max_buffered_bodies: cx.size(
            "server.max_buffered_bodies",
            &s.max_buffered_bodies,
            "256MiB",
        )?,
        tls: s.tls.as_ref().map(|t| cx.tls(t)).transpose()?,
        plaintext_ok: s.plaintext_ok.unwrap_or(false),
    };
    if server.max_buffered_bodies < server.max_request_body {
        return Err(cx.invalid(
            "server.max_buffered_bodies",
            s.max_buffered_bodies.as_ref().map(|v| v.span()),
            format!(
                "must be at least server.max_request_body ({} bytes): a body of the largest allowed size could never be read",
                server.max_request_body
            ),
        ));
    }
    for (key, v) in [
        ("server.request_timeout", server.request_timeout),
        ("server.connect_timeout", server.connect_timeout),
        ("server.first_byte_timeout", server.first_byte_timeout),
    ] {
        if v.is_zero() {
            return Err(cx.invalid(key, None, "must be greater than 0s".into()));
        }
    }
    if server.max_error_body == 0 || server.max_request_body == 0 {
        return Err(cx.invalid(
            "server.max_request_body",
            None,
            "sizes must be greater than 0".into(),
        ));
    }

    let mut gateway = cx.gateway(&raw.gateway.auth)?;
    gateway.allowed_origins = raw
        .gateway
        .allowed_origins
        .iter()
        .flatten()
        .map(|o| {
            normalise_origin(o.get_ref()).ok_or_else(|| {
                cx.bad(
                    "gateway.allowed_origins",
                    o,
                    "expected an origin like \"https://app.example.com\" or \"http://host:8080\" (scheme://host[:port], no path)",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let admin = AdminConfig {
        token: cx.secret_from(
            "admin.token_env",
            raw.admin.token_env.as_ref(),
            raw.admin.token_file.as_ref(),
            Some("KEYGATE_ADMIN_TOKEN"),
        )?,
        listen: raw
            .admin
            .listen
            .as_ref()
            .map(|v| cx.addr("admin.listen", v))
            .transpose()?,
    };
    let log = match raw.log.format.as_ref() {
        None => LogFormat::Text,
        Some(v) => match v.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(cx.bad("log.format", v, "expected \"text\" or \"json\"")),
        },
    };
    let rotation = cx.rotation(&raw.rotation)?;
    let providers = cx.providers(raw.providers)?;
    let secret_providers = cx.secret_providers(raw.secrets.providers)?;
    let cluster = raw.cluster.as_ref().map(|c| cx.cluster(c)).transpose()?;
    let upstream = cx.upstream(&raw.upstream)?;

    Ok(Config {
        path,
        server,
        gateway,
        admin,
        log,
        rotation,
        providers,
        secret_providers,
        cluster,
        upstream,
    })
}

/// `scheme://host[:port]` lowercased, with the scheme's default port dropped (the form a
/// browser sends in `Origin`); `None` for anything else (a path, user info, `null`).
fn normalise_origin(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let authority: http::uri::Authority = rest.parse().ok()?;
    if authority.host().is_empty() {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let host = authority.host().to_ascii_lowercase();
    // `port()` is `None` for a port that is not a number up to 65535, as for no port.
    let has_port = authority.as_str().len() > authority.host().len();
    let port = match (has_port, authority.port_u16()) {
        (false, _) => None,
        (true, None) => return None,
        (true, Some(n)) => {
            let default = matches!((scheme.as_str(), n), ("http", 80) | ("https", 443));
            (!default).then_some(n)
        }
    };
    Some(match port {
        Some(n) => format!("{scheme}://{host}:{n}"),
        None => format!("{scheme}://{host}"),
    })
}

// === impl Ctx ===

impl Ctx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rfind('\n')
            .map_or(before.len(), |i| before.len() - i - 1)
            + 1;
        (line, col)
    }

    fn invalid(
        &self,
        key: &str,
        span: Option<std::ops::Range<usize>>,
        reason: String,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(r) => {
                let (l, c) = self.line_col(r.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError::Invalid {
            path: self.path.clone(),
            key: key.to_owned(),
            line,
            column,
            reason,
        }
    }

    fn bad<T>(&self, key: &str, v: &Spanned<T>, reason: &str) -> ConfigError {
        self.invalid(key, Some(v.span()), reason.to_owned())
    }

    fn addr(&self, key: &str, v: &SStr) -> Result<SocketAddr, ConfigError> {
        v.get_ref()
            .parse()
            .map_err(|_| self.bad(key, v, "expected an address like \"127.0.0.1:8787\""))
    }

    fn duration(
        &self,
        key: &str,
        v: &Option<SStr>,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(humantime::parse_duration(default).expect("default durations are valid")),
            Some(v) => self.duration_of(key, v),
        }
    }

    fn duration_of(&self, key: &str, v: &SStr) -> Result<Duration, ConfigError> {
        parse_duration(v.get_ref()).ok_or_else(|| {
            self.bad(
                key,
                v,
                "expected a duration like \"30s\", \"5m\", \"24h\" (at most 100 years)",
            )
        })
    }

    fn durations(
        &self,
        key: &str,
        v: &Option<Vec<SStr>>,
        default: &[&str],
    ) -> Result<Vec<Duration>, ConfigError> {
        let list = match v {
            None => default
                .iter()
                .map(|d| humantime::parse_duration(d).expect("default durations are valid"))
                .collect(),
            Some(items) => items
                .iter()
                .map(|d| self.duration_of(key, d))
                .collect::<Result<Vec<_>, _>>()?,
        };
        if list.is_empty() {
            return Err(self.invalid(key, None, "must list at least one duration".into()));
        }
        Ok(list)
    }

    fn size(&self, key: &str, v: &Option<SStr>, default: &str) -> Result<usize, ConfigError> {
        let (text, span) = match v {
            None => (default, None),
            Some(v) => (v.get_ref().as_str(), Some(v.span())),
        };
        parse_size(text).ok_or_else(|| {
            self.invalid(
                key,
                span,
                "expected a size like \"32MiB\", \"64KiB\" or a byte count".into(),
            )
        })
    }

    /// Resolves a secret given as `*_env` (variable name) or `*_file` (path). `default_env`
    /// is tried when neither is configured. An explicitly named variable that is unset is
    /// an error; a missing default variable is not.
    fn secret_from(
        &self,
        key: &str,
        env_name: Option<&SStr>,
        file: Option<&SStr>,
        default_env: Option<&str>,
    ) -> Result<Option<Secret>, ConfigError> {
        if let Some(f) = file {
            let file_key = key.replace("_env", "_file");
            let text = std::fs::read_to_string(f.get_ref()).map_err(|e| {
                // A secret pasted here instead of a path must not be echoed back.
                let shown = if f.get_ref().contains('/') {
                    f.get_ref().as_str()
                } else {
                    "the file named there"
                };
                self.bad(&file_key, f, &format!("cannot read {shown}: {e}"))
            })?;
            let value = text.trim();
            if value.is_empty() {
                return Err(self.bad(&file_key, f, "the file is empty"));
            }
            return Ok(Some(Secret::new(value)));
        }
        if let Some(name) = env_name {
            return match (self.env)(name.get_ref()).map(|v| v.trim().to_owned()) {
                Some(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
                // Named only when it has the shape of a variable name: a secret pasted here
                // by mistake is never echoed back.
                _ if !is_env_name(name.get_ref()) => Err(self.bad(
                    key,
                    name,
                    "the value is not an environment variable name: name the variable that holds the secret (e.g. KEYGATE_TOKEN), never the secret itself",
                )),
                _ if shown_env_name(name.get_ref()) => Err(self.bad(
                    key,
                    name,
                    &format!(
                        "environment variable {} is not set (export it, or remove the key)",
                        name.get_ref()
                    ),
                )),
                _ => Err(self.bad(
                    key,
                    name,
                    "the environment variable named there is not set (export it, or remove the key)",
                )),
            };
        }
        Ok(default_env
            .and_then(|n| (self.env)(n))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(Secret::new))
    }

    /// `[cluster]`: the Redis URL from the file (never with a password) or from a variable
    /// (default `KEYGATE_REDIS_URL`), the key prefix, and the 32-byte cluster key.
    fn cluster(&self, c: &toml::Spanned<raw::RawCluster>) -> Result<ClusterConfig, ConfigError> {
        let section = c.span();
        let c = c.get_ref();
        let (redis_url, redis_url_from) = match (&c.redis_url, &c.redis_url_env) {
            (Some(_), Some(e)) => {
                return Err(self.bad(
                    "cluster.redis_url_env",
                    e,
                    "set redis_url or redis_url_env, not both",
                ))
            }
            (Some(u), None) => {
                let why = redis_url_problem(u.get_ref(), false);
                if let Some(why) = why {
                    return Err(self.bad("cluster.redis_url", u, why));
                }
                (
                    Secret::new(u.get_ref().trim()),
                    "cluster.redis_url".to_owned(),
                )
            }
            (None, named) => {
                let default = named.is_none().then_some("KEYGATE_REDIS_URL");
                let name = named
                    .as_ref()
                    .map_or("KEYGATE_REDIS_URL", |n| n.get_ref().as_str());
                let Some(url) =
                    self.secret_from("cluster.redis_url_env", named.as_ref(), None, default)?
                else {
                    return Err(self.invalid(
                        "cluster.redis_url_env",
                        Some(section),
                        "[cluster] needs the Redis URL: export KEYGATE_REDIS_URL=redis://host:6379/0, or set redis_url_env or redis_url".into(),
                    ));
                };
                if let Some(why) = redis_url_problem(url.expose(), true) {
                    let reason = format!("the value of {name} is not usable: {why}");
                    return Err(match named {
                        Some(n) => self.bad("cluster.redis_url_env", n, &reason),
                        None => self.invalid("cluster.redis_url_env", Some(section), reason),
                    });
                }
                (url, name.to_owned())
            }
        };
        let key_prefix = match &c.key_prefix {
            None => "keygate:".to_owned(),
            Some(p) => {
                let v = p.get_ref();
                if v.is_empty()
                    || v.len() > 64
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"*?[]\\".contains(&b))
                {
                    return Err(self.bad(
                        "cluster.key_prefix",
                        p,
                        "expected 1 to 64 visible ASCII characters without * ? [ ] or \\ (e.g. \"keygate:\")",
                    ));
                }
                v.clone()
            }
        };
        let secret_key = match &c.secret_key_env {
            None => None,
            Some(n) => {
                let key = self.secret_from("cluster.secret_key_env", Some(n), None, None)?;
                let ok = key.as_ref().is_some_and(|k| {
                    k.expose().len() == 64 && k.expose().bytes().all(|b| b.is_ascii_hexdigit())
                });
                if !ok {
                    return Err(self.bad(
                        "cluster.secret_key_env",
                        n,
                        "the cluster key must be 32 bytes written as 64 hex characters (e.g. from `openssl rand -hex 32`)",
                    ));
                }
                key
            }
        };
        Ok(ClusterConfig {
            redis_url,
            redis_url_from,
            key_prefix,
            secret_key,
        })
    }

    fn gateway(&self, a: &raw::RawGatewayAuth) -> Result<GatewayAuth, ConfigError> {
        let mode = match a.mode.as_ref() {
            None => None,
            Some(v) => Some(match v.get_ref().as_str() {
                "token" => AuthMode::Token,
                "password" => AuthMode::Password,
                "trusted-proxy" => AuthMode::TrustedProxy,
                "none" => AuthMode::None,
                _ => {
                    return Err(self.bad(
                        "gateway.auth.mode",
                        v,
                        "expected \"token\", \"password\", \"trusted-proxy\" or \"none\"",
                    ))
                }
            }),
        };
        let mut tokens = Vec::new();
        match &a.tokens {
            Some(list) => {
                for t in list {
                    let span = t.span();
                    let t = t.get_ref();
                    let secret = self.secret_from(
                        "gateway.auth.tokens.token_env",
                        t.token_env.as_ref(),
                        t.token_file.as_ref(),
                        None,
                    )?;
                    let Some(secret) = secret else {
                        return Err(self.invalid(
                            "gateway.auth.tokens",
                            Some(span),
                            "each token needs token_env or token_file".into(),
                        ));
                    };
                    let agent = match &t.agent {
                        None => "main".to_owned(),
                        Some(a) if valid_agent_id(a.get_ref()) => a.get_ref().clone(),
                        Some(a) => {
                            return Err(self.bad(
                                "gateway.auth.tokens.agent",
                                a,
                                "agent ids use letters, digits, '.', '_' and '-' (at most 64)",
                            ))
                        }
                    };
                    tokens.push(GatewayToken {
                        secret,
                        agent,
                        any_agent: t.any_agent,
                    });
                }
            }
            None => {
                if let Some(v) = (self.env)("KEYGATE_TOKEN").map(|v| v.trim().to_owned()) {
                    if !v.is_empty() {
                        tokens.push(GatewayToken {
                            secret: Secret::new(v),
                            agent: "main".into(),
                            any_agent: false,
                        });
                    }
                }
            }
        }
        let password = self.secret_from(
            "gateway.auth.password_env",
            a.password_env.as_ref(),
            a.password_file.as_ref(),
            None,
        )?;
        let trusted_cidrs = a
            .trusted_cidrs
            .iter()
            .flatten()
            .map(|c| {
                let t = c.get_ref();
                t.parse::<IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        self.bad(
                            "gateway.auth.trusted_cidrs",
                            c,
                            "expected a CIDR like \"10.0.0.0/8\"",
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let identity_header = match &a.identity_header {
            None => HeaderName::from_static("x-forwarded-user"),
            Some(h) => HeaderName::from_bytes(h.get_ref().as_bytes()).map_err(|_| {
                self.bad("gateway.auth.identity_header", h, "not a valid header name")
            })?,
        };
        match mode {
            Some(AuthMode::Token) if tokens.is_empty() => return Err(self.invalid(
                "gateway.auth.tokens",
                a.mode.as_ref().map(Spanned::span),
                "mode \"token\" needs at least one token: set gateway.auth.tokens or KEYGATE_TOKEN"
                    .into(),
            )),
            Some(AuthMode::Password) if password.is_none() => {
                return Err(self.invalid(
                    "gateway.auth.password_env",
                    a.mode.as_ref().map(Spanned::span),
                    "mode \"password\" needs password_env or password_file".into(),
                ))
            }
            Some(AuthMode::TrustedProxy) if trusted_cidrs.is_empty() => {
                return Err(self.invalid(
                    "gateway.auth.trusted_cidrs",
                    a.mode.as_ref().map(Spanned::span),
                    "mode \"trusted-proxy\" needs trusted_cidrs".into(),
                ))
            }
            _ => {}
        }
        Ok(GatewayAuth {
            mode,
            tokens,
            password,
            trusted_cidrs,
            identity_header,
            allow_agents: a.allow_agents.clone(),
            allowed_origins: Vec::new(),
        })
    }

    fn rotation(&self, r: &raw::RawRotation) -> Result<RotationConfig, ConfigError> {
        let strategy = match r.strategy.as_ref() {
            None => Strategy::Ordered,
            Some(v) => match v.get_ref().as_str() {
                "ordered" => Strategy::Ordered,
                "round_robin" => Strategy::RoundRobin,
                _ => {
                    return Err(self.bad(
                        "rotation.strategy",
                        v,
                        "expected \"ordered\" or \"round_robin\"",
                    ))
                }
            },
        };
        let on_all_cooling = match r.on_all_cooling.as_ref() {
            None => OnAllCooling::Fail,
            Some(v) => match v.get_ref().as_str() {
                "fail" => OnAllCooling::Fail,
                "wait" => OnAllCooling::Wait,
                _ => {
                    return Err(self.bad(
                        "rotation.on_all_cooling",
                        v,
                        "expected \"fail\" or \"wait\"",
                    ))
                }
            },
        };
        const REASONS: [&str; 9] = [
            "rate_limit",
            "billing",
            "auth_permanent",
            "auth",
            "overloaded",
            "model_not_found",
            "timeout",
            "format",
            "unknown",
        ];
        let rotate_on = match &r.rotate_on {
            None => vec!["rate_limit".to_owned(), "billing".to_owned()],
            Some(list) => list
                .iter()
                .map(|v| {
                    if REASONS.contains(&v.get_ref().as_str()) {
                        Ok(v.get_ref().clone())
                    } else {
                        Err(self.bad(
                            "rotation.rotate_on",
                            v,
                            &format!("unknown reason; expected one of {}", REASONS.join(", ")),
                        ))
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let affinity = match r.affinity.as_ref() {
            None => Affinity::Session,
            Some(v) => match v.get_ref().as_str() {
                "session" => Affinity::Session,
                "off" => Affinity::Off,
                _ => {
                    return Err(self.bad("rotation.affinity", v, "expected \"session\" or \"off\""))
                }
            },
        };
        let affinity_max_sessions = match &r.affinity_max_sessions {
            None => 100_000,
            Some(v) if (1..=10_000_000).contains(v.get_ref()) => *v.get_ref() as usize,
            Some(v) => {
                return Err(self.bad(
                    "rotation.affinity_max_sessions",
                    v,
                    "expected a number from 1 to 10000000",
                ))
            }
        };
        Ok(RotationConfig {
            strategy,
            max_attempts: r.max_attempts.unwrap_or(0),
            peek_stream: r.peek_stream.unwrap_or(true),
            rotate_on,
            on_all_cooling,
            max_wait: self.duration("rotation.max_wait", &r.max_wait, "0s")?,
            backoff: self.durations("rotation.backoff", &r.backoff, &["30s", "1m", "5m"])?,
            billing_backoff: self.durations(
                "rotation.billing_backoff",
                &r.billing_backoff,
                &["5h", "10h", "20h", "24h"],
            )?,
            affinity,
            affinity_ttl: self.duration("rotation.affinity_ttl", &r.affinity_ttl, "1h")?,
            affinity_max_sessions,
        })
    }

    fn providers(
        &self,
        entries: BTreeMap<String, Spanned<raw::RawProvider>>,
    ) -> Result<BTreeMap<String, ProviderConfig>, ConfigError> {
        let mut out: BTreeMap<String, ProviderConfig> = provider::builtins()
            .into_iter()
            .map(|b| {
                let cfg = ProviderConfig {
                    id: b.id.to_owned(),
                    base_url: b
                        .base_url
                        .map(|u| u.parse().expect("built-in URLs are valid")),
                    auth: b.auth,
                    env_prefix: b.env_prefix.to_owned(),
                    model_from: b.model_from,
                    headers: b
                        .headers
                        .iter()
                        .filter_map(|(n, v)| provider::header_pair(n, v))
                        .collect(),
                    rpm: None,
                    max_in_flight: None,
                    quota_domains: BTreeMap::new(),
                    order: None,
                    probe_model: default_probe_model(b.id).map(str::to_owned),
                    oauth: None,
                    configured: false,
                };
                (b.id.to_owned(), cfg)
            })
            .collect();
        for (id, entry) in entries {
            let span = entry.span();
            let p = entry.into_inner();
            let key = |k: &str| format!("providers.{id}.{k}");
            if !valid_provider_id(&id) {
                return Err(self.invalid(
                    &format!("providers.{id}"),
                    Some(span),
                    "provider ids use lowercase letters, digits, '_' and '-'".into(),
                ));
            }
            let builtin = out.remove(&id);
            let is_custom = builtin.is_none();
            let base_url = match &p.base_url {
                Some(u) => Some(self.base_url(&key("base_url"), u)?),
                None => builtin.as_ref().and_then(|b| b.base_url.clone()),
            };
            if is_custom && base_url.is_none() {
                return Err(self.invalid(
                    &key("base_url"),
                    Some(span.clone()),
                    "a custom provider needs base_url and auth".into(),
                ));
            }
            let auth = match &p.auth {
                Some(a) => self.auth_style(&key("auth"), a)?,
                None => match &builtin {
                    Some(b) => b.auth.clone(),
                    None => {
                        return Err(self.invalid(
                            &key("auth"),
                            Some(span),
                            "a custom provider needs base_url and auth".into(),
                        ))
                    }
                },
            };
            let env_prefix = match &p.env_prefix {
                Some(e) => e.get_ref().clone(),
                None => builtin
                    .as_ref()
                    .map(|b| b.env_prefix.clone())
                    .unwrap_or_else(|| provider::default_env_prefix(&id)),
            };
            let model_from = match &p.model_from {
                None => builtin.as_ref().map_or(ModelFrom::Body, |b| b.model_from),
                Some(v) => match v.get_ref().as_str() {
                    "body" => ModelFrom::Body,
                    "path" => ModelFrom::Path,
                    _ => {
                        return Err(self.bad(
                            &key("model_from"),
                            v,
                            "expected \"body\" or \"path\"",
                        ))
                    }
                },
            };
            let mut headers = builtin
                .as_ref()
                .map(|b| b.headers.clone())
                .unwrap_or_default();
            for (n, v) in p.headers.iter().flatten() {
                let Some((name, value)) = provider::header_pair(n, v) else {
                    return Err(self.invalid(
                        &key("headers"),
                        Some(span),
                        format!("header {n:?} has an invalid name or value"),
                    ));
                };
                headers.retain(|(h, _)| h != name);
                headers.push((name, value));
            }
            let oauth = match &p.oauth {
                None => None,
                Some(o) => {
                    let Some(url) = &o.token_url else {
                        return Err(self.invalid(
                            &key("oauth.token_url"),
                            Some(span),
                            "missing token_url".into(),
                        ));
                    };
                    Some(OAuthConfig {
                        token_url: self.base_url(&key("oauth.token_url"), url)?,
                        client_id: o.client_id.clone(),
                        form: o.form,
                    })
                }
            };
            if p.rpm == Some(0) {
                return Err(self.invalid(
                    &key("rpm"),
                    Some(span),
                    "rpm must be at least 1 (or absent)".into(),
                ));
            }
            if p.max_in_flight == Some(0) {
                return Err(self.invalid(
                    &key("max_in_flight"),
                    Some(span),
                    "max_in_flight must be at least 1 (or absent)".into(),
                ));
            }
            let quota_domains = match &p.quota_domains {
                Some(d) => self.quota_domains(&key("quota_domains"), d)?,
                None => BTreeMap::new(),
            };
            out.insert(
                id.clone(),
                ProviderConfig {
                    id: id.clone(),
                    base_url,
                    auth,
                    env_prefix,
                    model_from,
                    headers,
                    rpm: p.rpm,
                    max_in_flight: p.max_in_flight,
                    quota_domains,
                    order: p.order,
                    probe_model: p
                        .probe_model
                        .or_else(|| builtin.and_then(|b| b.probe_model)),
                    oauth,
                    configured: true,
                },
            );
        }
        Ok(out)
    }

    /// `quota_domains = { name = ["id", …] }` → credential id → name. A name uses letters,
    /// digits, `.`, `_` and `-` (at most 64; never `:`, so it cannot pass for a learned
    /// domain's `org:` hash); a credential in two domains is an error naming both. Ids
    /// are not checked against the credentials here (they live in the state files): the
    /// pool warns about one that is not a credential of the provider.
    fn quota_domains(
        &self,
        key: &str,
        v: &Spanned<BTreeMap<String, Vec<String>>>,
    ) -> Result<BTreeMap<String, Arc<str>>, ConfigError> {
        let mut out: BTreeMap<String, Arc<str>> = BTreeMap::new();
        for (name, ids) in v.get_ref() {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(self.bad(
                    &format!("{key}.{name}"),
                    v,
                    "a quota domain name uses letters, digits, '.', '_' and '-' (at most 64)",
                ));
            }
            let shared: Arc<str> = Arc::from(name.as_str());
            for id in ids {
                if id.trim().is_empty() {
                    return Err(self.bad(&format!("{key}.{name}"), v, "an empty credential id"));
                }
                match out.get(id) {
                    Some(other) if **other != **name => {
                        return Err(self.invalid(
                            &format!("{key}.{name}"),
                            Some(v.span()),
                            format!(
                                "credential \"{id}\" is in two quota domains (\"{other}\" and \"{name}\"); a credential belongs to one"
                            ),
                        ))
                    }
                    _ => {
                        out.insert(id.clone(), shared.clone());
                    }
                }
            }
        }
        Ok(out)
    }

    fn base_url(&self, key: &str, v: &SStr) -> Result<Uri, ConfigError> {
        let uri: Uri = v
            .get_ref()
            .trim_end_matches('/')
            .parse()
            .map_err(|_| self.bad(key, v, "expected an absolute http:// or https:// URL"))?;
        match (uri.scheme_str(), uri.authority()) {
            (Some("http" | "https"), Some(_)) if uri.query().is_none() => Ok(uri),
            _ => Err(self.bad(
                key,
                v,
                "expected an absolute http:// or https:// URL without a query",
            )),
        }
    }

    fn auth_style(&self, key: &str, a: &Spanned<RawAuthStyle>) -> Result<AuthStyle, ConfigError> {
        let err = || {
            self.bad(
                key,
                a,
                "expected \"x-api-key\", \"bearer\", \"x-goog-api-key\", \"api-key\", { header = \"name\" } or { query = \"name\" }",
            )
        };
        Ok(match a.get_ref() {
            RawAuthStyle::Named(n) => match n.as_str() {
                "x-api-key" => AuthStyle::XApiKey,
                "bearer" => AuthStyle::Bearer,
                "x-goog-api-key" => AuthStyle::XGoogApiKey,
                "api-key" => AuthStyle::ApiKey,
                _ => return Err(err()),
            },
            RawAuthStyle::Table(t) => match (&t.header, &t.query) {
                (Some(h), None) => {
                    AuthStyle::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|_| err())?)
                }
                (None, Some(q)) if !q.is_empty() => AuthStyle::Query(q.clone()),
                _ => return Err(err()),
            },
        })
    }

    fn secret_providers(
        &self,
        entries: BTreeMap<String, Spanned<raw::RawSecretProvider>>,
    ) -> Result<BTreeMap<String, SecretProviderConfig>, ConfigError> {
        let mut out = BTreeMap::new();
        for (alias, entry) in entries {
            let span = entry.span();
            let p = entry.get_ref();
            let key = |k: &str| format!("secrets.providers.{alias}.{k}");
            let absolute = |k: &str, v: &SStr| -> Result<PathBuf, ConfigError> {
                let path = PathBuf::from(v.get_ref());
                if path.is_absolute() {
                    Ok(path)
                } else {
                    Err(self.bad(&key(k), v, "must be an absolute path"))
                }
            };
            let cfg = match p.source.as_ref().map(|s| s.get_ref().as_str()) {
                Some("file") => {
                    let Some(path) = &p.path else {
                        return Err(self.invalid(
                            &key("path"),
                            Some(span),
                            "source \"file\" needs path".into(),
                        ));
                    };
                    let single_value = match p.mode.as_ref() {
                        None => false,
                        Some(m) => match m.get_ref().as_str() {
                            "json" => false,
                            "single_value" => true,
                            _ => {
                                return Err(self.bad(
                                    &key("mode"),
                                    m,
                                    "expected \"json\" or \"single_value\"",
                                ))
                            }
                        },
                    };
                    SecretProviderConfig::File {
                        path: absolute("path", path)?,
                        single_value,
                    }
                }
                Some("exec") => {
                    let Some(command) = &p.command else {
                        return Err(self.invalid(
                            &key("command"),
                            Some(span),
                            "source \"exec\" needs command".into(),
                        ));
                    };
                    SecretProviderConfig::Exec {
                        command: absolute("command", command)?,
                        args: p.args.clone().unwrap_or_default(),
                        pass_env: p.pass_env.clone().unwrap_or_default(),
                        timeout: self.duration(&key("timeout"), &p.timeout, "5s")?,
                    }
                }
                _ => {
                    return Err(self.invalid(
                        &key("source"),
                        Some(p.source.as_ref().map_or(span, Spanned::span)),
                        "expected source = \"file\" or \"exec\"".into(),
                    ))
                }
            };
            out.insert(alias, cfg);
        }
        Ok(out)
    }
}

/// The model `models status --probe` uses for a built-in provider.
fn default_probe_model(id: &str) -> Option<&'static str> {
    Some(match id {
        "anthropic" => "claude-haiku-4-5",
        "openai" => "gpt-4o-mini",
        "google" => "gemini-2.5-flash",
        "openrouter" => "openrouter/auto",
        "groq" => "llama-3.1-8b-instant",
        "mistral" => "mistral-small-latest",
        "deepseek" => "deepseek-chat",
        "xai" => "grok-3-mini",
        "together" => "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        _ => return None,
    })
}

/// Longest duration accepted anywhere (100 years): every configured duration is added to
/// the current time somewhere (`start + request_timeout`), and a larger one could overflow
/// an `Instant` there, which panics.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Durations as in SPEC §2 (`30s`, `1m`, `5h`, `24h`, `250ms`); a bare number is seconds.
///
/// Returns `None` for anything else, and for more than [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).ok()?,
    };
    (d <= MAX_DURATION).then_some(d)
}

/// Sizes as in SPEC §2 (`32MiB`, `64KiB`, `1MB`, or a plain byte count).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    if let Ok(n) = s.parse::<usize>() {
        return Some(n);
    }
    s.parse::<bytesize::ByteSize>()
        .ok()
        .and_then(|b| usize::try_from(b.as_u64()).ok())
}

/// Agent ids become directory names: keep them to a safe, bounded alphabet.
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters.
fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a variable name may be echoed in an error. Any shell name is accepted as a name,
/// but one that does not read like a conventional `UPPER_SNAKE` name could be a mixed-case or
/// upper-case key pasted in the wrong place (Mistral keys are 32 alphanumerics): those are
/// named by their key and line only. A run of more than 20 characters without an underscore
/// is treated as a token too.
fn shown_env_name(s: &str) -> bool {
    is_env_name(s)
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && s.split('_').all(|run| run.len() <= 20)
}

fn valid_provider_id(id: &str) -> bool {
    crate::provider::is_provider_id(id)
}

/// Why a Redis URL cannot be used, if it cannot: a scheme other than `redis://` or
/// `rediss://`, no host, or — in the file (`from_env` false) — a password. Never quotes the
/// URL (it may carry a password).
fn redis_url_problem(url: &str, from_env: bool) -> Option<&'static str> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some("expected a URL like \"redis://host:6379/0\" (or rediss:// for TLS)");
    };
    if !matches!(scheme, "redis" | "rediss") {
        return Some("the scheme must be redis:// or rediss:// (TLS)");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if host.is_empty() || host.starts_with(':') {
        return Some("the URL has no host (expected redis://host:6379/0)");
    }
    if !from_env && userinfo.is_some_and(|u| u.contains(':')) {
        return Some("a password does not belong in the config file: put the whole URL in an environment variable and name it in redis_url_env");
    }
    None
}

// === impl Ctx: [server.tls] and [upstream] (SPEC §12) ===

/// Variables read for an egress proxy, in order, per upstream scheme (upper case first, as
/// curl and hyper-util do; `ALL_PROXY` last).
const HTTPS_PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
const HTTP_PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

impl Ctx<'_> {
    /// `[server.tls]`: the paths only (the files are read when the listener starts).
    fn tls(&self, t: &Spanned<raw::RawTls>) -> Result<TlsConfig, ConfigError> {
        let section = t.span();
        let t = t.get_ref();
        let required = |key: &str, v: &Option<SStr>| {
            match v {
            Some(v) => self.abs_path(key, v),
            None => Err(self.invalid(
                key,
                Some(section.clone()),
                "[server.tls] needs cert_file (PEM certificate chain) and key_file (PEM private key)"
                    .into(),
            )),
        }
        };
        Ok(TlsConfig {
            cert_file: required("server.tls.cert_file", &t.cert_file)?,
            key_file: required("server.tls.key_file", &t.key_file)?,
            client_ca_file: t
                .client_ca_file
                .as_ref()
                .map(|v| self.abs_path("server.tls.client_ca_file", v))
                .transpose()?,
        })
    }

    fn abs_path(&self, key: &str, v: &SStr) -> Result<PathBuf, ConfigError> {
        let p = PathBuf::from(v.get_ref().trim());
        if !p.is_absolute() {
            // The value is not echoed: PEM text pasted here instead of a path is a secret.
            return Err(self.bad(
                key,
                v,
                "expected an absolute path (e.g. \"/etc/keygate/tls.crt\")",
            ));
        }
        Ok(p)
    }

    /// `[upstream]`: roots, extra CA files (also `SSL_CERT_FILE` / `SSL_CERT_DIR`) and the
    /// egress proxy (`proxy`, else `proxy_env`, else the standard variables; `NO_PROXY`).
    fn upstream(&self, u: &raw::RawUpstream) -> Result<UpstreamConfig, ConfigError> {
        let roots =
            match u.roots.as_ref() {
                None => Roots::Webpki,
                Some(v) => match v.get_ref().as_str() {
                    "webpki" => Roots::Webpki,
                    "native" => Roots::Native,
                    "both" => Roots::Both,
                    _ => return Err(self.bad(
                        "upstream.roots",
                        v,
                        "expected \"webpki\" (built-in), \"native\" (the system store) or \"both\"",
                    )),
                },
            };
        let env_value = |name: &str| {
            (self.env)(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut ca_files = Vec::new();
        if let Some(f) = &u.ca_file {
            ca_files.push(self.abs_path("upstream.ca_file", f)?);
        }
        if let Some(p) = env_value("SSL_CERT_FILE").map(PathBuf::from) {
            if !ca_files.contains(&p) {
                ca_files.push(p);
            }
        }
        let ca_dir = env_value("SSL_CERT_DIR").map(PathBuf::from);

        let explicit = match (&u.proxy, &u.proxy_env) {
            (Some(_), Some(e)) => {
                return Err(self.bad("upstream.proxy_env", e, "set proxy or proxy_env, not both"))
            }
            (Some(p), None) => Some(
                proxy_url(p.get_ref(), "upstream.proxy", false)
                    .map_err(|why| self.bad("upstream.proxy", p, why))?,
            ),
            (None, Some(n)) => {
                let Some(v) = self.secret_from("upstream.proxy_env", Some(n), None, None)? else {
                    return Err(self.bad(
                        "upstream.proxy_env",
                        n,
                        "the environment variable named there is not set (export it, or remove the key)",
                    ));
                };
                let name = n.get_ref().as_str();
                Some(proxy_url(v.expose(), name, true).map_err(|why| {
                    self.bad(
                        "upstream.proxy_env",
                        n,
                        &format!("the proxy URL in that variable is not usable: {why}"),
                    )
                })?)
            }
            (None, None) => None,
        };
        let from_env = |vars: &[&str]| -> Result<Option<ProxyUrl>, ConfigError> {
            for var in vars {
                if let Some(v) = env_value(var) {
                    return proxy_url(&v, var, true).map(Some).map_err(|why| {
                        self.invalid(
                            "upstream.proxy",
                            None,
                            format!("the value of {var} is not a usable proxy URL: {why}"),
                        )
                    });
                }
            }
            Ok(None)
        };
        let (http_proxy, https_proxy) = match explicit {
            Some(p) => (Some(p.clone()), Some(p)),
            None => (from_env(&HTTP_PROXY_VARS)?, from_env(&HTTPS_PROXY_VARS)?),
        };
        let no_proxy = env_value("NO_PROXY")
            .or_else(|| env_value("no_proxy"))
            .unwrap_or_default();
        Ok(UpstreamConfig {
            http_proxy,
            https_proxy,
            no_proxy,
            ca_files,
            ca_dir,
            roots,
        })
    }
}

/// Checks and normalises an egress proxy URL: `http://[user[:password]@]host[:port][/]`
/// (no scheme means `http://`). A password is refused when the URL comes from the file
/// (`from_env` false). Errors never quote the URL (it may carry a password).
fn proxy_url(text: &str, from: &str, from_env: bool) -> Result<ProxyUrl, &'static str> {
    let text = text.trim();
    let full = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let (scheme, rest) = full.split_once("://").unwrap_or(("", ""));
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(
            "only http:// proxies are supported (https upstreams go through them with CONNECT)",
        );
    }
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if !matches!(tail, "" | "/") {
        return Err("expected a proxy URL like \"http://proxy.internal:3128\" (no path)");
    }
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if !from_env && userinfo.is_some_and(|u| u.contains(':')) {
        return Err("a password does not belong in the config file: put the whole URL in an environment variable (HTTPS_PROXY, or one named by proxy_env)");
    }
    if userinfo.is_some_and(|u| u.contains('@')) {
        return Err("an '@' in the proxy user or password must be written %40");
    }
    let parsed: http::uri::Authority = host
        .parse()
        .map_err(|_| "expected a proxy URL like \"http://proxy.internal:3128\"")?;
    if parsed.host().is_empty() {
        return Err("the proxy URL has no host");
    }
    let host = match parsed.port_u16() {
        Some(_) => parsed.as_str().to_owned(),
        None => format!("{}:80", parsed.host()),
    };
    Ok(ProxyUrl {
        url: Secret::new(format!("http://{authority}")),
        from: from.to_owned(),
        host,
    })
}
