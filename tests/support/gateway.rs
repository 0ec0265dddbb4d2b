//! The gateway the end-to-end tests talk to: the one gateway token every test binary uses,
//! the pool keys of the standard set-up, and the set-up itself (token mode, providers at a
//! mock, one key each).

use super::keygate::{providers_at, Keygate, Opts};
use super::mock::MockProvider;

/// The gateway token (token mode, `KEYGATE_TOKEN`).
pub const GW: &str = "gw-test-token-0001";
/// The standard pool: one key a provider.
pub const ANT_KEY: &str = "sk-ant-api03-test-pool-key-AAAA";
pub const OAI_KEY: &str = "sk-test-openai-pool-key-BBBB";
pub const GEM_KEY: &str = "gemini-test-pool-key-CCCC";

/// The three built-in providers.
pub const ALL: &[&str] = &["anthropic", "openai", "google"];

impl Opts {
    /// Token mode with [`GW`]; `[providers.X] base_url = upstream` for every X in `providers`.
    pub fn gateway(upstream: &str, providers: &[&str]) -> Opts {
        Opts::default()
            .config(providers_at(upstream, providers))
            .env("KEYGATE_TOKEN", GW)
    }

    /// Appends `toml` to the config as written (after the provider tables, so a bare
    /// `key = value` lands in the last one).
    pub fn more_config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self
    }

    /// The standard pool in the environment: [`ANT_KEY`], [`OAI_KEY`], [`GEM_KEY`].
    pub fn pool_keys(self) -> Self {
        self.env("ANTHROPIC_API_KEY", ANT_KEY)
            .env("OPENAI_API_KEY", OAI_KEY)
            .env("GEMINI_API_KEY", GEM_KEY)
    }
}

/// All three providers at `mock`, the standard pool, token mode.
pub async fn standard(mock: &MockProvider) -> Keygate {
    with_server(mock, "").await
}

/// [`standard`] with `[server]` settings.
pub async fn with_server(mock: &MockProvider, server: &str) -> Keygate {
    Keygate::start(
        Opts::gateway(&mock.url(), ALL)
            .more_config(&format!("[server]\n{server}\n"))
            .pool_keys(),
    )
    .await
}

/// The gateway token must appear nowhere in what the upstream received, nor any
/// `x-keygate-*` header.
pub fn assert_no_gateway_token(mock: &MockProvider) {
    for r in mock.requests() {
        assert!(
            !r.path_and_query.contains(GW),
            "token in path: {}",
            r.path_and_query
        );
        for (name, v) in &r.headers {
            assert!(
                !v.as_bytes().windows(GW.len()).any(|w| w == GW.as_bytes()),
                "token in header {name}"
            );
            assert!(
                !name.as_str().starts_with("x-keygate-"),
                "x-keygate header forwarded: {name}"
            );
        }
    }
}

/// `[providers.anthropic.oauth]` with its token endpoint at `token` (`/v1/oauth/token`,
/// client id `test-client`): after `Opts::gateway(api, &["anthropic"])`.
pub fn anthropic_oauth_at(token: &str) -> String {
    format!(
        "[providers.anthropic.oauth]\ntoken_url = \"{token}/v1/oauth/token\"\nclient_id = \"test-client\"\n"
    )
}
