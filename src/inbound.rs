//! Inbound authentication: who may use this proxy (SPEC §4).
//!
//! Owns the gateway modes (token, password, trusted-proxy, none), where a client may put
//! its gateway secret (wherever its SDK puts an API key), constant-time comparison, the
//! token → agent mapping, and the per-IP failure lockout. It does not own removing the
//! inbound credential from the forwarded request (see `proxy::inject`, which strips every
//! credential carrier regardless of mode).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::request::Parts;
use http::HeaderMap;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use crate::config::{valid_agent_id, AuthMode, GatewayAuth, GatewayToken};

/// Failures allowed per IP in [`FAILURE_WINDOW`] before a lockout (SPEC §4).
pub const MAX_FAILURES: u32 = 10;
/// The window failures are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a locked-out IP gets 429 without its requests being checked.
pub const LOCKOUT: Duration = Duration::from_secs(300);
/// Bound on remembered lockouts and on the governor's per-IP state.
const MAX_TRACKED_IPS: usize = 65_536;

/// The verdict on one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Authenticated as this agent.
    Allowed {
        /// Agent id (selects `agents/<id>/agent/auth-*.json`); `main` is not allocated.
        agent: Cow<'static, str>,
    },
    /// No credential presented (does not count toward the lockout).
    Missing,
    /// A credential was presented and is wrong (counted).
    Wrong,
    /// The request came from an untrusted source or asserted a forbidden agent.
    Forbidden(&'static str),
    /// This IP is locked out after repeated failures.
    LockedOut {
        /// Time left in the lockout.
        retry_after: Duration,
    },
}

/// Checks inbound requests against the configured mode.
#[derive(Debug)]
pub struct Gatekeeper {
    mode: AuthMode,
    tokens: Vec<GatewayToken>,
    password: Option<crate::secret::Secret>,
    trusted: Vec<ipnet::IpNet>,
    identity_header: http::HeaderName,
    allow_agents: Option<Vec<String>>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    lockouts: Mutex<HashMap<IpAddr, Instant>>,
}

/// The effective mode for a config and a listen address (SPEC §4): an explicit mode, else
/// `token` when tokens exist, else `none` — which is refused off loopback.
pub fn effective_mode(
    cfg: &GatewayAuth,
    listen: &std::net::SocketAddr,
) -> Result<AuthMode, String> {
    let mode = cfg.mode.unwrap_or(if cfg.tokens.is_empty() {
        AuthMode::None
    } else {
        AuthMode::Token
    });
    if mode == AuthMode::None && !listen.ip().is_loopback() {
        return Err(format!(
            "refusing to bind to {listen} without auth (set gateway.auth.tokens or KEYGATE_TOKEN)"
        ));
    }
    Ok(mode)
}

// === impl Gatekeeper ===

impl Gatekeeper {
    /// Builds the checker for an already-validated mode.
    pub fn new(cfg: &GatewayAuth, mode: AuthMode) -> Self {
        // 10 failures per 60 s: a burst of 9 plus one more is the 10th failure, which
        // trips the lockout; the bucket refills one cell every 6 s.
        let per = FAILURE_WINDOW / MAX_FAILURES;
        let quota = Quota::with_period(per)
            .expect("the failure period is non-zero")
            .allow_burst(NonZeroU32::new(MAX_FAILURES - 1).expect("MAX_FAILURES > 1"));
        Self {
            mode,
            tokens: cfg.tokens.clone(),
            password: cfg.password.clone(),
            trusted: cfg.trusted_cidrs.clone(),
            identity_header: cfg.identity_header.clone(),
            allow_agents: cfg.allow_agents.clone(),
            failures: RateLimiter::keyed(quota),
            lockouts: Mutex::new(HashMap::new()),
        }
    }

    /// The mode in force.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Decides whether the request may pass and as which agent.
    pub fn check(&self, peer: IpAddr, parts: &Parts) -> Outcome {
        if let Some(retry_after) = self.locked_out(peer) {
            return Outcome::LockedOut { retry_after };
        }
        let outcome = match self.mode {
            AuthMode::None => Outcome::Allowed {
                agent: "main".into(),
            },
            AuthMode::TrustedProxy => self.trusted_proxy(peer, &parts.headers),
            AuthMode::Token | AuthMode::Password => self.secret(parts),
        };
        if outcome == Outcome::Wrong {
            self.record_failure(peer);
        }
        outcome
    }

    fn secret(&self, parts: &Parts) -> Outcome {
        let mut presented = false;
        let mut matched: Option<&GatewayToken> = None;
        let mut password_ok = false;
        for value in presented_secrets(parts) {
            presented = true;
            match self.mode {
                AuthMode::Password => {
                    if let Some(p) = &self.password {
                        password_ok |= ct_eq(value, p.expose());
                    }
                }
                _ => {
                    // Compare against every token without an early exit.
                    for t in &self.tokens {
                        if ct_eq(value, t.secret.expose()) && matched.is_none() {
                            matched = Some(t);
                        }
                    }
                }
            }
        }
        if !presented {
            return Outcome::Missing;
        }
        if password_ok {
            return Outcome::Allowed {
                agent: "main".into(),
            };
        }
        let Some(token) = matched else {
            return Outcome::Wrong;
        };
        let asked = parts
            .headers
            .get("x-keygate-agent")
            .and_then(|v| v.to_str().ok());
        match asked {
            Some(a) if a != token.agent => {
                if !token.any_agent {
                    return Outcome::Forbidden(
                        "this token may not select another agent (x-keygate-agent)",
                    );
                }
                if !valid_agent_id(a) {
                    return Outcome::Forbidden("invalid x-keygate-agent value");
                }
                Outcome::Allowed {
                    agent: Cow::Owned(a.to_owned()),
                }
            }
            _ => Outcome::Allowed {
                agent: token.agent.clone().into(),
            },
        }
    }

    fn trusted_proxy(&self, peer: IpAddr, headers: &HeaderMap) -> Outcome {
        let peer = canonical(peer);
        if !self.trusted.iter().any(|n| n.contains(&peer)) {
            return Outcome::Forbidden("source address is not a trusted proxy");
        }
        let Some(agent) = headers
            .get(&self.identity_header)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|a| !a.is_empty())
        else {
            return Outcome::Missing;
        };
        if !valid_agent_id(agent) {
            return Outcome::Forbidden("invalid identity header value");
        }
        if let Some(allow) = &self.allow_agents {
            if !allow.iter().any(|a| a == agent) {
                return Outcome::Forbidden("agent not allowed");
            }
        }
        Outcome::Allowed {
            agent: agent.to_owned().into(),
        }
    }

    fn locked_out(&self, peer: IpAddr) -> Option<Duration> {
        let mut map = self.lockouts.lock().unwrap_or_else(|e| e.into_inner());
        let until = *map.get(&peer)?;
        let now = Instant::now();
        if until > now {
            Some(until - now)
        } else {
            map.remove(&peer);
            None
        }
    }

    fn record_failure(&self, peer: IpAddr) {
        if self.failures.len() > MAX_TRACKED_IPS {
            self.failures.retain_recent();
        }
        if self.failures.check_key(&peer).is_ok() {
            return;
        }
        let mut map = self.lockouts.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED_IPS {
            let now = Instant::now();
            map.retain(|_, until| *until > now);
        }
        if map.len() < MAX_TRACKED_IPS {
            map.insert(peer, Instant::now() + LOCKOUT);
            tracing::warn!(%peer, "client locked out after repeated authentication failures");
        }
    }
}

/// Every gateway secret the client presented, wherever its SDK put it.
fn presented_secrets(parts: &Parts) -> impl Iterator<Item = &str> {
    let h = &parts.headers;
    let bearer = h
        .get_all(http::header::AUTHORIZATION)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let plain = ["x-api-key", "x-goog-api-key", "api-key"]
        .into_iter()
        .flat_map(move |n| h.get_all(n).into_iter())
        .filter_map(|v| v.to_str().ok())
        .map(str::trim);
    let query = parts
        .uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.strip_prefix("key="));
    bearer.chain(plain).chain(query).filter(|s| !s.is_empty())
}

/// Constant-time equality (the length is not secret).
fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// IPv4-mapped IPv6 peers compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn gate(toml: &str, env: &'static [(&'static str, &'static str)]) -> Gatekeeper {
        let lookup = move |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        };
        let cfg = Config::from_toml(toml, None, &lookup).expect("valid config");
        let mode =
            effective_mode(&cfg.gateway, &"127.0.0.1:8787".parse().expect("addr")).expect("mode");
        Gatekeeper::new(&cfg.gateway, mode)
    }

    fn req(headers: &[(&str, &str)], uri: &str) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    #[test]
    fn every_carrier_is_accepted() {
        let g = gate("", &[("KEYGATE_TOKEN", "gw-token")]);
        assert_eq!(g.mode(), AuthMode::Token);
        for parts in [
            req(
                &[("authorization", "Bearer gw-token")],
                "/anthropic/v1/messages",
            ),
            req(&[("x-api-key", "gw-token")], "/anthropic/v1/messages"),
            req(&[("x-goog-api-key", "gw-token")], "/google/v1beta/models"),
            req(&[("api-key", "gw-token")], "/azure/x"),
            req(&[], "/google/v1beta/models?alt=sse&key=gw-token"),
        ] {
            assert_eq!(
                g.check(IP, &parts),
                Outcome::Allowed {
                    agent: "main".into()
                }
            );
        }
    }

    #[test]
    fn wrong_and_missing() {
        let g = gate("", &[("KEYGATE_TOKEN", "gw-token")]);
        assert_eq!(
            g.check(IP, &req(&[("x-api-key", "nope")], "/a")),
            Outcome::Wrong
        );
        assert_eq!(g.check(IP, &req(&[], "/a")), Outcome::Missing);
    }

    #[test]
    fn lockout_after_ten_failures_and_missing_does_not_count() {
        let g = gate("", &[("KEYGATE_TOKEN", "gw-token")]);
        for _ in 0..50 {
            assert_eq!(g.check(IP, &req(&[], "/a")), Outcome::Missing);
        }
        for i in 0..MAX_FAILURES {
            assert_eq!(
                g.check(IP, &req(&[("x-api-key", "bad")], "/a")),
                Outcome::Wrong,
                "failure {i}"
            );
        }
        // Locked: even the right token is not checked.
        assert!(matches!(
            g.check(IP, &req(&[("x-api-key", "gw-token")], "/a")),
            Outcome::LockedOut { .. }
        ));
        // Another IP is unaffected.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 9, 9));
        assert!(matches!(
            g.check(other, &req(&[("x-api-key", "gw-token")], "/a")),
            Outcome::Allowed { .. }
        ));
    }

    #[test]
    fn agent_selection_needs_any_agent() {
        let toml = "[gateway.auth]\ntokens = [ { token_env = \"A\", agent = \"a\" }, { token_env = \"B\", agent = \"b\", any_agent = true } ]\n";
        let g = gate(toml, &[("A", "tok-a"), ("B", "tok-b")]);
        assert_eq!(
            g.check(IP, &req(&[("x-api-key", "tok-a")], "/x")),
            Outcome::Allowed { agent: "a".into() }
        );
        assert!(matches!(
            g.check(
                IP,
                &req(&[("x-api-key", "tok-a"), ("x-keygate-agent", "b")], "/x")
            ),
            Outcome::Forbidden(_)
        ));
        assert_eq!(
            g.check(
                IP,
                &req(&[("x-api-key", "tok-b"), ("x-keygate-agent", "ops")], "/x")
            ),
            Outcome::Allowed {
                agent: "ops".into()
            }
        );
    }

    #[test]
    fn none_refused_off_loopback() {
        let cfg = Config::defaults();
        let err = effective_mode(&cfg.gateway, &"0.0.0.0:8787".parse().expect("addr"))
            .expect_err("refused");
        assert_eq!(
            err,
            "refusing to bind to 0.0.0.0:8787 without auth (set gateway.auth.tokens or KEYGATE_TOKEN)"
        );
        assert_eq!(
            effective_mode(&cfg.gateway, &"127.0.0.1:0".parse().expect("addr")),
            Ok(AuthMode::None)
        );
    }

    #[test]
    fn trusted_proxy_checks_source_and_header() {
        let toml = "[gateway.auth]\nmode = \"trusted-proxy\"\ntrusted_cidrs = [\"10.0.0.0/8\"]\nallow_agents = [\"alice\"]\n";
        let g = gate(toml, &[]);
        assert_eq!(
            g.check(IP, &req(&[("x-forwarded-user", "alice")], "/x")),
            Outcome::Allowed {
                agent: "alice".into()
            }
        );
        assert!(matches!(
            g.check(IP, &req(&[("x-forwarded-user", "bob")], "/x")),
            Outcome::Forbidden(_)
        ));
        let outside = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
        assert!(matches!(
            g.check(outside, &req(&[("x-forwarded-user", "alice")], "/x")),
            Outcome::Forbidden(_)
        ));
    }
}
