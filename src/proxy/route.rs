//! Routing, pure: `/{provider}/{rest}`, the path checks that keep a request inside its
//! provider's base URL, and the upstream URI. No I/O, no state.

use http::Uri;

use super::ProxyError;

/// Splits `/{provider}/{rest}`.
pub(crate) fn split(path: &str) -> Result<(&str, &str), ProxyError> {
    let p = path
        .strip_prefix('/')
        .ok_or(ProxyError::BadPath("path must start with /"))?;
    let (provider, rest) = p.split_once('/').unwrap_or((p, ""));
    if provider.is_empty() {
        return Err(ProxyError::BadPath("expected /{provider}/{path}"));
    }
    Ok((provider, rest))
}

/// Rejects any path that could leave the provider's base URL: `.` / `..` segments (also
/// percent-encoded), encoded slashes or backslashes, empty segments (`//host`), NUL.
pub(crate) fn check_path(rest: &str) -> Result<(), ProxyError> {
    if rest.contains('\\') {
        return Err(ProxyError::BadPath("backslash in path"));
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg.is_empty() {
            if last {
                continue;
            }
            return Err(ProxyError::BadPath("empty path segment"));
        }
        if seg.contains('%') {
            let decoded = percent_encoding::percent_decode_str(seg).collect::<Vec<u8>>();
            if decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0)) {
                return Err(ProxyError::BadPath("encoded slash in path"));
            }
            if decoded == b"." || decoded == b".." {
                return Err(ProxyError::BadPath("dot segment in path"));
            }
        } else if seg == "." || seg == ".." {
            return Err(ProxyError::BadPath("dot segment in path"));
        }
    }
    Ok(())
}

/// `{base}/{rest}[?query][&name=value]`.
pub(crate) fn upstream_uri(
    base: &str,
    rest: &str,
    query: Option<&str>,
    extra: Option<(&str, &str)>,
) -> Result<Uri, ProxyError> {
    let mut s = String::with_capacity(
        base.len()
            + rest.len()
            + query.map_or(0, str::len)
            + extra.map_or(0, |(n, v)| n.len() + v.len())
            + 4,
    );
    s.push_str(base);
    s.push('/');
    s.push_str(rest);
    let mut sep = '?';
    if let Some(q) = query {
        s.push(sep);
        s.push_str(q);
        sep = '&';
    }
    if let Some((n, v)) = extra {
        s.push(sep);
        s.push_str(n);
        s.push('=');
        s.push_str(v);
    }
    Uri::try_from(s).map_err(|_| ProxyError::BadPath("path is not a valid URI"))
}

/// `s` cut to at most `max` bytes on a character boundary (for echoing client input).
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tricks_are_rejected() {
        for bad in [
            "v1/../secret",
            "v1/%2e%2e/x",
            "v1/%2E%2e/x",
            "v1/a%2fb",
            "v1/a%2Fb",
            "v1/a%5cb",
            "/evil.com/x",
            "v1//x",
            "v1/./x",
            "v1\\x",
            "..",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "v1/messages",
            "v1/chat/completions",
            "",
            "v1/models/",
            "v1beta/models/gemini-2.5-pro:streamGenerateContent",
            "v1/a%20b",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn split_finds_provider() {
        assert_eq!(
            split("/anthropic/v1/messages").ok(),
            Some(("anthropic", "v1/messages"))
        );
        assert_eq!(split("/openai").ok(), Some(("openai", "")));
        assert!(split("//evil.com/x").is_err());
    }

    #[test]
    fn uri_keeps_query_and_adds_key() {
        let u = upstream_uri(
            "https://x.test/api",
            "v1/m",
            Some("alt=sse"),
            Some(("key", "abc")),
        )
        .expect("uri");
        assert_eq!(u.to_string(), "https://x.test/api/v1/m?alt=sse&key=abc");
        let u = upstream_uri("http://127.0.0.1:9", "v1/m", None, None).expect("uri");
        assert_eq!(u.to_string(), "http://127.0.0.1:9/v1/m");
    }
}
