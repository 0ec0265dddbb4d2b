//! Inbound authentication: who may use this proxy (SPEC §4).
//!
//! Owns the gateway modes (token, password, trusted-proxy, none), where a client may put
//! its gateway secret (wherever its SDK puts an API key), constant-time comparison, the
//! token → agent mapping, the rule that a request carries one credential, the rule that
//! browsers are not clients (`Host` in mode `none`, `Origin` in every mode), and the per-IP
//! failure lockouts (gateway and admin token, counted apart). It does not own removing the
//! inbound credential from the forwarded request (see `inject`, which strips every
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
/// Credential carriers examined per request (headers and `key=` parameters); a request
/// with more is refused like one with two distinct values. Real clients send one or two.
pub const MAX_CARRIERS: usize = 16;

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
    /// More than one distinct credential value (or more than [`MAX_CARRIERS`] carriers) in
    /// one request: refused before any comparison, counted as one failure.
    Ambiguous,
    /// Trusted-proxy mode: the identity header came more than once (or as a list).
    DuplicateIdentity,
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
    allowed_origins: Vec<String>,
    /// Gateway credential failures.
    gateway: Lockout,
    /// Admin token failures, counted apart from the gateway's.
    admin: Lockout,
}

/// Why a request was refused as coming from a browser page (SPEC §4).
#[derive(Debug, PartialEq, Eq)]
pub enum Browser {
    /// Mode `none` and a `Host` (or `:authority`) that is not a loopback name or address.
    ForeignHost,
    /// An `Origin` that is neither loopback nor listed in `[gateway] allowed_origins`.
    ForeignOrigin,
}

/// Failures per IP and the lockouts they lead to.
#[derive(Debug)]
struct Lockout {
    /// What is being guessed, for the log line.
    what: &'static str,
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

/// Whether gateway credentials would cross the network in clear text (SPEC §12): a token
/// or password mode on a non-loopback address without `[server.tls]`, unless the operator
/// said TLS ends in front of keygate (`plaintext_ok`).
pub fn clear_text_exposed(
    mode: AuthMode,
    listen: &std::net::SocketAddr,
    tls: bool,
    plaintext_ok: bool,
) -> bool {
    matches!(mode, AuthMode::Token | AuthMode::Password)
        && !listen.ip().is_loopback()
        && !tls
        && !plaintext_ok
}

// === impl Gatekeeper ===

impl Gatekeeper {
    /// Builds the checker for an already-validated mode.
    pub fn new(cfg: &GatewayAuth, mode: AuthMode) -> Self {
        Self {
            mode,
            tokens: cfg.tokens.clone(),
            password: cfg.password.clone(),
            trusted: cfg.trusted_cidrs.clone(),
            identity_header: cfg.identity_header.clone(),
            allow_agents: cfg.allow_agents.clone(),
            allowed_origins: cfg.allowed_origins.clone(),
            gateway: Lockout::new("gateway token"),
            admin: Lockout::new("admin token"),
        }
    }

    /// The rule that browsers are not clients (SPEC §4), checked before any credential:
    /// an `Origin` that is not loopback nor allowed, and in mode `none` a `Host` (HTTP/1) or
    /// `:authority` (HTTP/2, or an absolute-form target) that is not loopback. A header
    /// lookup and a scan of its bytes; nothing is allocated.
    pub fn browser(&self, parts: &Parts) -> Result<(), Browser> {
        self.origin(&parts.headers)?;
        if self.mode == AuthMode::None {
            let host_ok = parts
                .uri
                .authority()
                .is_none_or(|a| loopback_host(a.as_str()))
                && parts
                    .headers
                    .get_all(http::header::HOST)
                    .iter()
                    .all(|h| h.to_str().is_ok_and(loopback_host));
            if !host_ok {
                return Err(Browser::ForeignHost);
            }
        }
        Ok(())
    }

    /// The `Origin` half of [`Gatekeeper::browser`], also applied to `/_keygate/status`.
    pub fn origin(&self, headers: &HeaderMap) -> Result<(), Browser> {
        let mut origins = headers.get_all(http::header::ORIGIN).iter();
        let Some(origin) = origins.next() else {
            return Ok(());
        };
        let ok = origins.next().is_none()
            && origin.to_str().is_ok_and(|o| {
                origin_host(o).is_some_and(loopback_host)
                    || self
                        .allowed_origins
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(o))
            });
        if ok {
            Ok(())
        } else {
            Err(Browser::ForeignOrigin)
        }
    }

    /// Checks the admin token (`x-keygate-admin-token` or `Authorization: Bearer`) with its
    /// own lockout; failures are logged with the peer, never with the value tried.
    pub fn check_admin(&self, peer: IpAddr, headers: &HeaderMap, token: &str) -> Outcome {
        if let Some(retry_after) = self.admin.locked_out(peer) {
            return Outcome::LockedOut { retry_after };
        }
        let values = headers
            .get_all("x-keygate-admin-token")
            .into_iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .chain(bearer_values(headers))
            .filter(|s| !s.is_empty());
        let outcome = match single_value(values) {
            Err(()) => Outcome::Ambiguous,
            Ok(None) => Outcome::Missing,
            Ok(Some(v)) if ct_eq(v, token) => Outcome::Allowed {
                agent: "main".into(),
            },
            Ok(Some(_)) => Outcome::Wrong,
        };
        if matches!(outcome, Outcome::Wrong | Outcome::Ambiguous) {
            tracing::warn!(%peer, "admin token rejected");
            self.admin.record_failure(peer);
        }
        outcome
    }

    /// The header to remove before forwarding: trusted-proxy mode's identity header.
    pub fn identity_header(&self) -> Option<&http::HeaderName> {
        (self.mode == AuthMode::TrustedProxy).then_some(&self.identity_header)
    }

    /// The mode in force.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Decides whether the request may pass and as which agent.
    pub fn check(&self, peer: IpAddr, parts: &Parts) -> Outcome {
        if let Some(retry_after) = self.gateway.locked_out(peer) {
            return Outcome::LockedOut { retry_after };
        }
        let outcome = match self.mode {
            AuthMode::None => Outcome::Allowed {
                agent: "main".into(),
            },
            AuthMode::TrustedProxy => self.trusted_proxy(peer, &parts.headers),
            AuthMode::Token | AuthMode::Password => self.secret(parts),
        };
        if matches!(outcome, Outcome::Wrong | Outcome::Ambiguous) {
            self.gateway.record_failure(peer);
        }
        outcome
    }

    fn secret(&self, parts: &Parts) -> Outcome {
        // One request, one credential (SPEC §4): the values are compared with each other
        // (client data, nothing secret) before the one left is compared with the secrets.
        let value = match single_value(presented_secrets(parts)) {
            Err(()) => return Outcome::Ambiguous,
            Ok(None) => return Outcome::Missing,
            Ok(Some(v)) => v,
        };
        let mut matched: Option<&GatewayToken> = None;
        let mut password_ok = false;
        match self.mode {
            AuthMode::Password => {
                if let Some(p) = &self.password {
                    password_ok = ct_eq(value, p.expose());
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
        let mut values = headers.get_all(&self.identity_header).iter();
        let first = values.next();
        // A front proxy that appends must not let the client choose: more than one value
        // (two field lines, or one comma-joined list, RFC 9110 §5.3) is refused.
        if values.next().is_some() || first.is_some_and(|v| v.as_bytes().contains(&b',')) {
            return Outcome::DuplicateIdentity;
        }
        let Some(agent) = first
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
}

// === impl Lockout ===

impl Lockout {
    fn new(what: &'static str) -> Self {
        // 10 failures per 60 s: a burst of 9 plus one more is the 10th failure, which
        // trips the lockout; the bucket refills one cell every 6 s.
        let per = FAILURE_WINDOW / MAX_FAILURES;
        let quota = Quota::with_period(per)
            .expect("the failure period is non-zero")
            .allow_burst(NonZeroU32::new(MAX_FAILURES - 1).expect("MAX_FAILURES > 1"));
        Self {
            what,
            failures: RateLimiter::keyed(quota),
            lockouts: Mutex::new(HashMap::new()),
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
            tracing::warn!(%peer, credential = self.what, "client locked out after repeated authentication failures");
        }
    }
}

/// The one distinct value of `values`: `Ok(None)` when there is none, `Err` when there
/// are two distinct ones or more than [`MAX_CARRIERS`] carriers. Stops at the first
/// difference; each value is compared with the first only.
fn single_value<'a>(values: impl Iterator<Item = &'a str>) -> Result<Option<&'a str>, ()> {
    let mut first: Option<&str> = None;
    for (i, v) in values.enumerate() {
        if i >= MAX_CARRIERS {
            return Err(());
        }
        match first {
            None => first = Some(v),
            Some(f) if f == v => {}
            Some(_) => return Err(()),
        }
    }
    Ok(first)
}

/// `Authorization: Bearer` values (the scheme case-insensitive).
fn bearer_values(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(http::header::AUTHORIZATION)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
}

/// The host of a serialised origin (`scheme://host[:port]`), `None` for `null` or a
/// malformed one.
fn origin_host(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    (!rest.contains(['/', '@'])).then_some(rest)
}

/// Whether `authority` (`host[:port]`, as in `Host`) names the loopback interface:
/// `localhost`, `127.0.0.0/8` or `[::1]`, any port.
fn loopback_host(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(all_digits)) {
            return false;
        }
        return v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|a| canonical(IpAddr::V6(a)).is_loopback());
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if all_digits(port) => h,
            Some(_) => return false,
            None => authority,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// Every gateway secret the client presented, wherever its SDK put it.
fn presented_secrets(parts: &Parts) -> impl Iterator<Item = &str> {
    let h = &parts.headers;
    let bearer = bearer_values(h);
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
    #[test]
    fn clear_text_is_flagged_only_for_secrets_on_the_network_without_tls() {
        use super::clear_text_exposed as exposed;
        let lan: std::net::SocketAddr = "10.1.2.3:8787".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:8787".parse().unwrap();
        let lo: std::net::SocketAddr = "127.0.0.1:8787".parse().unwrap();
        assert!(exposed(AuthMode::Token, &lan, false, false));
        assert!(exposed(AuthMode::Password, &any, false, false));
        assert!(!exposed(AuthMode::Token, &lo, false, false), "loopback");
        assert!(!exposed(AuthMode::Token, &lan, true, false), "TLS");
        assert!(!exposed(AuthMode::Token, &lan, false, true), "plaintext_ok");
        assert!(
            !exposed(AuthMode::TrustedProxy, &lan, false, false),
            "no secret"
        );
    }

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
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LocalHost:8787",
            "localhost:",
            "127.0.0.1",
            "127.255.0.1:80",
            "[::1]",
            "[::1]:8787",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "",
            "localhost.",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "128.0.0.1",
            "0.0.0.0:80",
            "[::2]",
            "[::1]x",
            "::1",
            "localhost:80a",
            "evil.example:8787",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
        assert_eq!(origin_host("http://localhost:3000"), Some("localhost:3000"));
        assert_eq!(origin_host("null"), None);
        assert_eq!(origin_host("http://a@localhost"), None);
    }

    #[test]
    fn single_value_is_bounded() {
        assert_eq!(single_value(["a", "a", "a"].into_iter()), Ok(Some("a")));
        assert_eq!(single_value(["a", "b"].into_iter()), Err(()));
        assert_eq!(single_value(std::iter::empty()), Ok(None));
        assert_eq!(
            single_value(std::iter::repeat_n("a", MAX_CARRIERS)),
            Ok(Some("a"))
        );
        assert_eq!(
            single_value(std::iter::repeat_n("a", MAX_CARRIERS + 1)),
            Err(())
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
