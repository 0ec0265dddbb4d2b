//! Provider descriptions: the built-in table of SPEC §2 and the shape of a provider.
//!
//! Owns: provider ids, how a credential goes on the wire ([`AuthStyle`]), where the model
//! name lives ([`ModelFrom`]), the environment prefix, and the default headers. It does not
//! own config parsing (see `config`, which overlays `[providers.*]` entries on this table)
//! nor the injection itself (see `inject`).

use http::header::{HeaderName, HeaderValue};

/// How an API key is put on the upstream request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthStyle {
    /// `x-api-key: KEY` (Anthropic).
    XApiKey,
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// `x-goog-api-key: KEY` (Google).
    XGoogApiKey,
    /// `api-key: KEY` (Azure).
    ApiKey,
    /// A custom header carrying the raw key.
    Header(HeaderName),
    /// A query parameter carrying the raw key (only for providers that require it).
    Query(String),
}

/// Where the model name of a request is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFrom {
    /// The top-level JSON `model` string of the request body.
    Body,
    /// A segment of the request path (Google, Cloudflare, Bedrock, Azure).
    Path,
}

/// A built-in provider row (SPEC §2).
#[derive(Clone, Debug)]
pub struct Builtin {
    /// Provider id, the first path segment of a proxied URL.
    pub id: &'static str,
    /// Upstream base URL; `None` for Azure, which needs a configured one.
    pub base_url: Option<&'static str>,
    /// How an API key goes on the wire.
    pub auth: AuthStyle,
    /// Environment prefix (`<P>` in SPEC §5).
    pub env_prefix: &'static str,
    /// Where the model name is found.
    pub model_from: ModelFrom,
    /// Headers added when the client did not send them.
    pub headers: &'static [(&'static str, &'static str)],
}

/// The built-in providers of SPEC §2, in table order.
pub fn builtins() -> Vec<Builtin> {
    use AuthStyle::*;
    use ModelFrom::*;
    let b = |id, base_url, auth, env_prefix, model_from| Builtin {
        id,
        base_url,
        auth,
        env_prefix,
        model_from,
        headers: &[],
    };
    vec![
        Builtin {
            headers: &[("anthropic-version", "2023-06-01")],
            ..b(
                "anthropic",
                Some("https://api.anthropic.com"),
                XApiKey,
                "ANTHROPIC",
                Body,
            )
        },
        b(
            "openai",
            Some("https://api.openai.com"),
            Bearer,
            "OPENAI",
            Body,
        ),
        b(
            "openrouter",
            Some("https://openrouter.ai/api"),
            Bearer,
            "OPENROUTER",
            Body,
        ),
        b(
            "google",
            Some("https://generativelanguage.googleapis.com"),
            XGoogApiKey,
            "GEMINI",
            Path,
        ),
        b(
            "groq",
            Some("https://api.groq.com/openai"),
            Bearer,
            "GROQ",
            Body,
        ),
        b(
            "mistral",
            Some("https://api.mistral.ai"),
            Bearer,
            "MISTRAL",
            Body,
        ),
        b(
            "deepseek",
            Some("https://api.deepseek.com"),
            Bearer,
            "DEEPSEEK",
            Body,
        ),
        b("xai", Some("https://api.x.ai"), Bearer, "XAI", Body),
        b(
            "together",
            Some("https://api.together.xyz"),
            Bearer,
            "TOGETHER",
            Body,
        ),
        b(
            "cloudflare",
            Some("https://api.cloudflare.com/client/v4"),
            Bearer,
            "CLOUDFLARE",
            Path,
        ),
        b(
            "bedrock",
            Some("https://bedrock-runtime.us-east-1.amazonaws.com"),
            Bearer,
            "BEDROCK",
            Path,
        ),
        b("azure", None, ApiKey, "AZURE", Path),
    ]
}

/// The environment prefix for a provider id: upper-cased, `-` → `_` (SPEC §5).
pub fn default_env_prefix(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// Extracts the model name from a request path (the part after the provider segment,
/// without query), for providers whose model lives in the path.
///
/// Returns `None` for: paths without the provider's model segment.
pub fn model_from_path<'a>(provider: &str, rest: &'a str) -> Option<&'a str> {
    let model = match provider {
        // .../models/{model}:{method}
        "google" => {
            let i = rest.find("models/")?;
            let tail = &rest[i + "models/".len()..];
            let end = tail.find([':', '/']).unwrap_or(tail.len());
            &tail[..end]
        }
        // .../ai/run/{model} where the model itself contains slashes (`@cf/meta/llama-3`)
        "cloudflare" => {
            let i = rest.find("ai/run/")?;
            &rest[i + "ai/run/".len()..]
        }
        // model/{model}/invoke(-with-response-stream) | converse(-stream)
        "bedrock" => {
            let i = rest.find("model/")?;
            let tail = &rest[i + "model/".len()..];
            let end = tail.find('/').unwrap_or(tail.len());
            &tail[..end]
        }
        // openai/deployments/{deployment}/chat/completions, or a generic models/{m}
        _ => {
            if let Some(i) = rest.find("deployments/") {
                let tail = &rest[i + "deployments/".len()..];
                let end = tail.find('/').unwrap_or(tail.len());
                &tail[..end]
            } else {
                let i = rest.find("models/")?;
                let tail = &rest[i + "models/".len()..];
                let end = tail.find([':', '/']).unwrap_or(tail.len());
                &tail[..end]
            }
        }
    };
    (!model.is_empty()).then_some(model)
}

/// Parses a default-header pair; used for built-ins (static, valid by construction) and
/// for config entries (validated).
pub(crate) fn header_pair(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_str(value).ok()?,
    ))
}

/// Provider id syntax: lowercase letters, digits, `_` and `-`, at most 64 characters, not
/// starting with `_`. The one predicate for provider ids, shared by the config validator and the stores, so a
/// provider the config accepts is never skipped when read from a store.
pub fn is_provider_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_from_path_per_provider() {
        let cases = [
            (
                "google",
                "v1beta/models/gemini-2.5-pro:generateContent",
                Some("gemini-2.5-pro"),
            ),
            (
                "google",
                "v1beta/models/gemini-2.5-flash:streamGenerateContent",
                Some("gemini-2.5-flash"),
            ),
            (
                "cloudflare",
                "accounts/abc/ai/run/@cf/meta/llama-3-8b-instruct",
                Some("@cf/meta/llama-3-8b-instruct"),
            ),
            (
                "bedrock",
                "model/anthropic.claude-3-haiku/invoke",
                Some("anthropic.claude-3-haiku"),
            ),
            (
                "azure",
                "openai/deployments/gpt4o/chat/completions",
                Some("gpt4o"),
            ),
            ("google", "v1beta/files", None),
        ];
        for (p, rest, want) in cases {
            assert_eq!(model_from_path(p, rest), want, "{p} {rest}");
        }
    }

    #[test]
    fn env_prefix_upper_and_underscore() {
        assert_eq!(default_env_prefix("my-llm"), "MY_LLM");
    }

    #[test]
    fn builtin_headers_are_valid() {
        for b in builtins() {
            for (n, v) in b.headers {
                assert!(header_pair(n, v).is_some());
            }
        }
    }
}
