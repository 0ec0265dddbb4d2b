//! What the upstream sees: the client's headers minus anything that must not travel, plus
//! the chosen credential in the provider's form.
//!
//! Owns the header rules of SPEC §2 and §4: strip hop-by-hop headers (RFC 9110 §7.6.1, and
//! every header the client's `Connection` names), `Host`, every inbound credential carrier
//! (`authorization`, `x-api-key`, `x-goog-api-key`, `api-key`, `?key=`) and every
//! `x-keygate-*` header; add provider default headers only when absent; insert the credential
//! as the provider expects. Header values for credentials are built once, when credentials
//! load, and marked sensitive. It does not choose the credential (see `pool`).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::config::ProviderConfig;
use crate::credentials::{Credential, Kind};
use crate::provider::AuthStyle;
use crate::secret::Secret;

/// The `anthropic-beta` flag an OAuth/setup token needs.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";

static ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// proxy-auth pair. A `match` on the name: the compiler switches on length, then compares
/// bytes, instead of one comparison per listed name.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
    )
}

/// Characters escaped in a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A credential ready to put on a request: built once per credential.
#[derive(Clone, Debug)]
pub struct Injection {
    header: Option<(HeaderName, HeaderValue)>,
    // (name, percent-encoded value) for providers that take the key in the query; a
    // `Secret`, so `Debug` prints it masked.
    query: Option<(String, Secret)>,
    oauth_beta: bool,
}

/// The credential's value could not be put in a header (control characters).
#[derive(Debug, thiserror::Error)]
#[error("credential {0} contains characters that cannot be sent in a header")]
pub struct InvalidCredential(pub String);

// === impl Injection ===

impl Injection {
    /// How `cred` goes on the wire for `provider` (SPEC §2): Anthropic tokens (`token`/`oauth`
    /// kinds, or any secret containing `sk-ant-oat`) as Bearer plus the OAuth beta flag;
    /// other `token`/`oauth` credentials as Bearer; API keys in the provider's style.
    pub fn new(provider: &ProviderConfig, cred: &Credential) -> Result<Self, InvalidCredential> {
        let secret = cred.secret.expose();
        let is_token = matches!(cred.kind, Kind::Token | Kind::OAuth);
        let anthropic_oauth =
            provider.id == "anthropic" && (is_token || secret.contains("sk-ant-oat"));
        let style = if anthropic_oauth || is_token {
            &AuthStyle::Bearer
        } else {
            &provider.auth
        };
        let sensitive = |v: String| {
            let mut v =
                HeaderValue::try_from(v).map_err(|_| InvalidCredential(cred.id.to_string()))?;
            v.set_sensitive(true);
            Ok::<_, InvalidCredential>(v)
        };
        let (header, query) = match style {
            AuthStyle::Bearer => (
                Some((
                    header::AUTHORIZATION,
                    sensitive(format!("Bearer {secret}"))?,
                )),
                None,
            ),
            AuthStyle::XApiKey => (
                Some((
                    HeaderName::from_static("x-api-key"),
                    sensitive(secret.to_owned())?,
                )),
                None,
            ),
            AuthStyle::XGoogApiKey => (
                Some((
                    HeaderName::from_static("x-goog-api-key"),
                    sensitive(secret.to_owned())?,
                )),
                None,
            ),
            AuthStyle::ApiKey => (
                Some((
                    HeaderName::from_static("api-key"),
                    sensitive(secret.to_owned())?,
                )),
                None,
            ),
            AuthStyle::Header(name) => (Some((name.clone(), sensitive(secret.to_owned())?)), None),
            AuthStyle::Query(name) => (
                None,
                Some((
                    name.clone(),
                    Secret::new(utf8_percent_encode(secret, QUERY_VALUE).to_string()),
                )),
            ),
        };
        Ok(Self {
            header,
            query,
            oauth_beta: anthropic_oauth,
        })
    }

    /// The query parameter this credential adds, if any: `(name, encoded value)`.
    pub fn query(&self) -> Option<(&str, &str)> {
        self.query.as_ref().map(|(n, v)| (n.as_str(), v.expose()))
    }

    /// Puts the credential on `headers` (already cleaned by [`clean_request_headers`]).
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some((name, value)) = &self.header {
            headers.insert(name.clone(), value.clone());
        }
        if self.oauth_beta {
            merge_beta(headers);
        }
    }
}

/// Adds `oauth-2025-04-20` to `anthropic-beta`, keeping the client's flags.
fn merge_beta(headers: &mut HeaderMap) {
    let present: Vec<&str> = headers
        .get_all(&ANTHROPIC_BETA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if present
        .iter()
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == OAUTH_BETA)
    {
        return;
    }
    let merged = if present.is_empty() {
        HeaderValue::from_static(OAUTH_BETA)
    } else {
        let mut s = present.join(",");
        s.push(',');
        s.push_str(OAUTH_BETA);
        match HeaderValue::try_from(s) {
            Ok(v) => v,
            Err(_) => HeaderValue::from_static(OAUTH_BETA),
        }
    };
    headers.insert(&ANTHROPIC_BETA, merged);
}

/// The client's headers as the upstream may see them, before a credential is applied:
/// hop-by-hop, `Host`, `Content-Length` (re-computed from the body), credential carriers and
/// `x-keygate-*` removed; `Accept-Encoding: identity` (so error bodies and streams can be
/// classified); provider default headers added when absent.
///
/// Cleaned in place: the map the client's request was parsed into is reused, where building
/// a new one cost a map allocation and a hash insert per header. (Removal lets the last
/// header take the removed one's slot; the order of different field names carries no
/// meaning, RFC 9110 §5.3, and the values of one name keep their order.)
pub fn clean_request_headers(mut headers: HeaderMap, provider: &ProviderConfig) -> HeaderMap {
    // The names to drop are gathered first, as a map cannot lose entries while it is read:
    // on the stack, as a request drops about three (`host`, `content-length`, its
    // credential), and in `spill` past that.
    let mut gone: [Option<HeaderName>; 8] = Default::default();
    let mut spill = Vec::new();
    let mut n = 0;
    {
        let named_by_connection: Vec<&str> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for name in headers.keys() {
            if never_forwarded(name)
                || named_by_connection
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(name.as_str()))
            {
                match gone.get_mut(n) {
                    Some(slot) => *slot = Some(name.clone()),
                    None => spill.push(name.clone()),
                }
                n += 1;
            }
        }
    }
    for name in gone.iter().flatten().chain(&spill) {
        headers.remove(name);
    }
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    for (name, value) in &provider.headers {
        if !headers.contains_key(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
    headers
}

/// A request header keygate drops whatever the connection says: hop-by-hop headers, every
/// credential carrier, headers keygate sets itself, and keygate's own `x-keygate-*`.
fn never_forwarded(name: &HeaderName) -> bool {
    let n = name.as_str();
    hop_by_hop(n)
        || matches!(
            n,
            // Where clients put credentials: never forwarded.
            "authorization"
                | "x-api-key"
                | "x-goog-api-key"
                | "api-key"
                // Set for the upstream by hyper or by keygate; keygate already read the
                // whole body, so the upstream gets it at once (no `expect`).
                | "host"
                | "content-length"
                | "accept-encoding"
                | "expect"
        )
        || n.starts_with("x-keygate-")
}

/// Removes hop-by-hop headers from an upstream response before it goes to the client.
pub fn clean_response_headers(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    // One pass over the names present; a removal (which hashes the name) only for those
    // that must go, which on most answers is none or `transfer-encoding`.
    let gone: Vec<HeaderName> = headers
        .keys()
        .filter(|n| hop_by_hop(n.as_str()) || *n == header::PROXY_AUTHENTICATE || named.contains(n))
        .cloned()
        .collect();
    for name in &gone {
        headers.remove(name);
    }
}

/// The client's query without any `key=` parameter (a gateway token carrier).
/// Returns `None` when nothing is left.
pub fn clean_query(query: Option<&str>) -> Option<String> {
    let q = query?;
    if !q.split('&').any(|kv| kv == "key" || kv.starts_with("key=")) {
        return (!q.is_empty()).then(|| q.to_owned());
    }
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| !(kv.is_empty() || *kv == "key" || kv.starts_with("key=")))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::credentials::{CredentialId, Source};
    use crate::secret::Secret;

    fn cred(provider: &str, kind: Kind, secret: &str) -> Credential {
        Credential {
            id: CredentialId::new(format!("{provider}:t")),
            provider: provider.into(),
            kind,
            source: Source::Profile,
            secret: Secret::new(secret),
            expires_ms: None,
        }
    }

    fn applied(provider: &str, c: &Credential, client: &[(&str, &str)]) -> HeaderMap {
        let cfg = Config::defaults();
        let p = cfg.provider(provider).expect("builtin");
        let mut h = HeaderMap::new();
        for (n, v) in client {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let mut out = clean_request_headers(h, p);
        Injection::new(p, c).expect("valid").apply(&mut out);
        out
    }

    #[test]
    fn never_forwarded_covers_hop_by_hop_carriers_and_own_headers() {
        let dropped = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "authorization",
            "x-api-key",
            "x-goog-api-key",
            "api-key",
            "host",
            "content-length",
            "accept-encoding",
            "expect",
            "x-keygate-profile",
            "x-keygate-anything",
        ];
        for n in dropped {
            let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
            assert!(never_forwarded(&name), "{n} must be dropped");
        }
        for n in [
            "content-type",
            "anthropic-version",
            "anthropic-beta",
            "user-agent",
            "x-stainless-lang",
            "openai-organization",
            "accept",
            "x-api-key-id",
            "authorization-extra",
        ] {
            let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
            assert!(!never_forwarded(&name), "{n} must be forwarded");
        }
    }

    #[test]
    fn response_hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("proxy-authenticate", "Basic"),
            ("x-request-id", "req_1"),
            ("anthropic-ratelimit-requests-remaining", "10"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        clean_response_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "anthropic-ratelimit-requests-remaining",
                "content-type",
                "x-request-id"
            ]
        );
    }

    #[test]
    fn anthropic_api_key_goes_in_x_api_key_with_default_version() {
        let h = applied(
            "anthropic",
            &cred("anthropic", Kind::ApiKey, "sk-ant-api03-test"),
            &[("x-api-key", "gw"), ("authorization", "Bearer gw")],
        );
        assert_eq!(h["x-api-key"], "sk-ant-api03-test");
        assert!(h["x-api-key"].is_sensitive());
        assert!(h.get("authorization").is_none());
        assert_eq!(h["anthropic-version"], "2023-06-01");
    }

    #[test]
    fn anthropic_tokens_go_as_bearer_with_beta_merged() {
        for c in [
            cred("anthropic", Kind::Token, "tok-value"),
            cred("anthropic", Kind::ApiKey, "sk-ant-oat01-abc"),
        ] {
            let h = applied(
                "anthropic",
                &c,
                &[
                    ("anthropic-beta", "tools-2024"),
                    ("anthropic-version", "2024-01-01"),
                ],
            );
            assert!(h["authorization"]
                .to_str()
                .expect("ascii")
                .starts_with("Bearer "));
            assert!(h.get("x-api-key").is_none());
            assert_eq!(h["anthropic-beta"], "tools-2024,oauth-2025-04-20");
            assert_eq!(
                h["anthropic-version"], "2024-01-01",
                "client's version wins"
            );
        }
        let h = applied(
            "anthropic",
            &cred("anthropic", Kind::Token, "t"),
            &[("anthropic-beta", "oauth-2025-04-20")],
        );
        assert_eq!(h["anthropic-beta"], "oauth-2025-04-20");
    }

    #[test]
    fn styles_per_provider() {
        let h = applied(
            "google",
            &cred("google", Kind::ApiKey, "AIza-test"),
            &[("x-goog-api-key", "gw")],
        );
        assert_eq!(h["x-goog-api-key"], "AIza-test");
        let h = applied("openai", &cred("openai", Kind::ApiKey, "sk-test"), &[]);
        assert_eq!(h["authorization"], "Bearer sk-test");
        let h = applied(
            "azure",
            &cred("azure", Kind::ApiKey, "az-test"),
            &[("api-key", "gw")],
        );
        assert_eq!(h["api-key"], "az-test");
    }

    #[test]
    fn strips_hop_by_hop_keygate_and_connection_named_headers() {
        let h = applied(
            "openai",
            &cred("openai", Kind::ApiKey, "sk"),
            &[
                ("connection", "keep-alive, x-custom-hop"),
                ("x-custom-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("x-keygate-profile", "openai:a"),
                ("x-keygate-agent", "b"),
                ("host", "127.0.0.1:8787"),
                ("content-length", "12"),
                ("x-request-id", "r1"),
            ],
        );
        for gone in [
            "connection",
            "x-custom-hop",
            "keep-alive",
            "te",
            "x-keygate-profile",
            "x-keygate-agent",
            "host",
            "content-length",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h["x-request-id"], "r1");
        assert_eq!(h["accept-encoding"], "identity");
    }

    #[test]
    fn more_dropped_headers_than_the_stack_batch_all_go_and_the_rest_stay_in_order() {
        // Twelve names to drop (past the 8 gathered on the stack), interleaved with kept
        // headers, one of them with several values.
        let dropped = [
            "connection",
            "x-custom-hop",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "authorization",
            "x-api-key",
            "x-keygate-profile",
            "host",
            "content-length",
            "expect",
        ];
        let mut client = vec![("connection", "x-custom-hop")];
        for (i, n) in dropped.iter().enumerate().skip(1) {
            client.push((n, "drop-me"));
            client.push(("x-trace", ["a", "b", "c", "d"][i % 4]));
        }
        client.push(("content-type", "application/json"));
        let h = applied("openai", &cred("openai", Kind::ApiKey, "sk-kept"), &client);
        for gone in dropped.iter().filter(|n| **n != "authorization") {
            assert!(h.get(*gone).is_none(), "{gone}");
        }
        assert_eq!(h["authorization"], "Bearer sk-kept");
        let trace: Vec<&str> = h
            .get_all("x-trace")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        let sent: Vec<&str> = client
            .iter()
            .filter(|(n, _)| *n == "x-trace")
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(trace, sent);
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["accept-encoding"], "identity");
        assert!(!h.values().any(|v| v == "drop-me"));
        // x-trace, content-type, accept-encoding, authorization (and the provider's
        // defaults, if any).
        assert_eq!(
            h.keys_len(),
            4 + Config::defaults().provider("openai").unwrap().headers.len()
        );
    }

    #[test]
    fn query_key_is_removed() {
        assert_eq!(clean_query(Some("alt=sse&key=gw")), Some("alt=sse".into()));
        assert_eq!(clean_query(Some("key=gw")), None);
        assert_eq!(clean_query(Some("alt=sse")), Some("alt=sse".into()));
        assert_eq!(
            clean_query(Some("monkey=1&key=x&keys=2")),
            Some("monkey=1&keys=2".into())
        );
        assert_eq!(clean_query(None), None);
    }
}
