//! Credentials: what a provider credential is, and where they come from.
//!
//! Owns the [`Credential`] value (id, provider, kind, source, secret, expiry) and the loaders
//! for its two sources: environment keys in SPEC §5 priority ([`env`]) and the agent's
//! OpenClaw-compatible state files ([`store`]). It does not own the choice between
//! candidates for a request (see `pool`), cooldowns, or how a secret goes on the wire
//! (see `inject`).

use std::fmt;
use std::sync::Arc;

use crate::secret::Secret;

pub mod env;
pub mod oauth;
pub mod secret_ref;
pub mod store;

/// A credential id as shown in logs, headers, status and cooldowns: a profile id as stored
/// (`anthropic:work`) or an env id (`env:VAR`, `env:VAR#N`). Never contains the secret.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialId(Arc<str>);

/// The kind of a credential (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Long-lived OAuth: access + refresh + expires.
    OAuth,
    /// A static bearer token (e.g. an Anthropic setup-token); not refreshable.
    Token,
    /// A provider API key.
    ApiKey,
}

/// Where a credential came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A stored profile in `auth-profiles.json` (or the Claude Code sync).
    Profile,
    /// A process environment variable or `<state-dir>/.env`.
    Env,
}

/// One usable provider credential.
#[derive(Clone, Debug)]
pub struct Credential {
    /// Stable id (never the secret).
    pub id: CredentialId,
    /// Provider id this credential is for (`anthropic`).
    pub provider: Arc<str>,
    /// Kind, which decides ranking and (for Anthropic) the wire form.
    pub kind: Kind,
    /// Profile or environment.
    pub source: Source,
    /// The secret value, trimmed.
    pub secret: Secret,
    /// Expiry in epoch milliseconds, when known.
    pub expires_ms: Option<i64>,
}

// === impl CredentialId ===

impl CredentialId {
    /// Wraps an id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

// === impl Kind ===

impl Kind {
    /// The wire/file name: `oauth`, `token`, `api_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OAuth => "oauth",
            Kind::Token => "token",
            Kind::ApiKey => "api_key",
        }
    }
}

// === impl Source ===

impl Source {
    /// `profile` or `env`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Profile => "profile",
            Source::Env => "env",
        }
    }
}
