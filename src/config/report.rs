//! Describing a TOML error without quoting the file.
//!
//! Owns the text of [`super::ConfigError::Parse`]: line and column from the error's span,
//! the dotted key path found at that span (`gateway.auth.tokens[0].token`), and what is
//! wrong, rebuilt from the parser's message with every value taken out. toml's own
//! `Display` is never used: it prints the offending source line, and serde's messages quote
//! string values (`invalid type: string "sk-…", expected u32`), so a secret written in the
//! wrong place would reach the terminal and the logs. It does not own the checks after
//! parsing (`validate`), whose messages never quote values either.

use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

/// Longest key name shown; longer ones (and names with other characters) are not echoed.
const MAX_SHOWN_KEY: usize = 64;

/// Longest description kept.
const MAX_MESSAGE: usize = 400;

/// `line L, column C, key `a.b[0].c`: what is wrong` for a toml error in `text`.
pub(super) fn describe(text: &str, e: &toml::de::Error) -> String {
    let what = sanitize(e.message(), e.span().and_then(|s| text.get(s)));
    let Some(span) = e.span() else {
        return what;
    };
    let (line, column) = line_col(text, span.start);
    let key = key_path_at(text, span.start).or_else(|| key_by_lines(text, span.start));
    match key {
        Some(k) if !k.is_empty() => format!("line {line}, column {column}, key `{k}`: {what}"),
        _ => format!("line {line}, column {column}: {what}"),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// A key as it may be shown: bare-key characters (plus `.` and `:`), bounded.
fn shown_key(k: &str) -> String {
    let ok = !k.is_empty()
        && k.len() <= MAX_SHOWN_KEY
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        k.to_owned()
    } else {
        "<key>".to_owned()
    }
}

/// The key path of the deepest key or value whose span holds `offset`, from a best-effort
/// parse (a syntax error still yields the document up to it).
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let (root, _) = DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    walk_table(root.get_ref(), offset, &mut path).then(|| join(&path))
}

enum Seg {
    Key(String),
    Index(usize),
}

fn join(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn holds(span: std::ops::Range<usize>, offset: usize) -> bool {
    span.start <= offset && (offset < span.end || span.start == span.end)
}

fn walk_table(t: &DeTable<'_>, offset: usize, path: &mut Vec<Seg>) -> bool {
    for (k, v) in t {
        let name = Seg::Key(shown_key(k.get_ref()));
        if holds(k.span(), offset) {
            path.push(name);
            return true;
        }
        if walk_entry(name, v, offset, path) {
            return true;
        }
    }
    false
}

fn walk_array(a: &DeArray<'_>, offset: usize, path: &mut Vec<Seg>) -> bool {
    a.iter()
        .enumerate()
        .any(|(i, v)| walk_entry(Seg::Index(i), v, offset, path))
}

/// Whether the error lies in `v`, the entry `seg` of a table or array; `seg` then stays
/// on `path`, with the path inside `v`.
fn walk_entry(seg: Seg, v: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<Seg>) -> bool {
    path.push(seg);
    // A table's entries can lie outside its own span (`[header]` tables): look inside
    // first, whatever the span says.
    let inside = match v.get_ref() {
        DeValue::Table(inner) => walk_table(inner, offset, path),
        DeValue::Array(arr) => walk_array(arr, offset, path),
        _ => false,
    };
    if inside || holds(v.span(), offset) {
        return true;
    }
    path.pop();
    false
}

/// Fallback for text the parser could not make a tree of: the last `[table]` header before
/// the error's line, plus the bare key on that line, if any.
fn key_by_lines(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let mut header: Option<String> = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let end = start + line.len();
        let t = line.trim();
        let is_error_line = offset >= start && (offset < end || end == text.len());
        if t.starts_with('[') && !is_error_line {
            let name = t.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or("").trim();
            header = Some(
                name.split('.')
                    .map(|p| shown_key(p.trim().trim_matches('"').trim_matches('\'')))
                    .collect::<Vec<_>>()
                    .join("."),
            );
        }
        if is_error_line {
            let key = t
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !k.starts_with('['))
                .map(shown_key);
            return match (header, key) {
                (Some(h), Some(k)) => Some(format!("{h}.{k}")),
                (h, k) => h.or(k),
            };
        }
        start = end;
    }
    header
}

/// What is wrong, with every value from the file taken out of the parser's message.
/// `at` is the text under the error's span: never echoed, whatever the message.
fn sanitize(message: &str, at: Option<&str>) -> String {
    let message = message.lines().next().unwrap_or("").trim();
    let (head, expected) = match message.split_once(", expected ") {
        Some((h, e)) => (h, Some(e)),
        None => (message, None),
    };
    let with_expected = |s: String| match expected {
        Some(e) => format!("{s}, expected {}", scrub(e)),
        None => s,
    };
    let out = if let Some(found) = head.strip_prefix("invalid type: ") {
        with_expected(format!("wrong type: found {}", kind_of(found)))
    } else if let Some(found) = head.strip_prefix("invalid value: ") {
        with_expected(format!("invalid value: found {}", kind_of(found)))
    } else if let Some(rest) = head.strip_prefix("unknown field ") {
        let name = backticked(rest).map(shown_key);
        let rest = match message.split_once(", ") {
            Some((_, r)) => format!(", {}", scrub(r)),
            None => String::new(),
        };
        match name {
            Some(n) => format!("unknown key `{n}`{rest}"),
            None => format!("unknown key{rest}"),
        }
    } else if head.starts_with("unknown variant ") {
        with_expected("unknown variant".to_owned())
    } else if let Some(rest) = message.strip_prefix("unexpected keys in table: ") {
        match rest.split_once(", available keys: ") {
            Some((_, avail)) => {
                format!("unexpected keys in table; available keys: {}", scrub(avail))
            }
            None => "unexpected keys in table".to_owned(),
        }
    } else {
        scrub(message)
    };
    // A bare key (or number) under the span is not a value to hide; a string is, with or
    // without its quotes.
    let value = at
        .map(str::trim)
        .filter(|a| shown_key(a) != *a)
        .map(|a| a.trim_matches(['"', '\'']))
        .filter(|a| a.len() >= 4);
    let mut out = match value {
        Some(a) if out.contains(a) => out.replace(a, "…"),
        _ => out,
    };
    if out.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// `string "abc"` → `a string`; `integer `5`` → `an integer`: the kind, never the value.
fn kind_of(found: &str) -> String {
    let kind = found
        .split(['`', '"', '\''])
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches(':');
    match kind {
        "" => "another value".to_owned(),
        k if k.starts_with(['a', 'e', 'i', 'o', 'u']) => format!("an {k}"),
        k => format!("a {k}"),
    }
}

/// The first `…` in `s`.
fn backticked(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

/// Keeps quoted parts that look like grammar or key names; anything longer or stranger
/// (a value) becomes `…`.
fn scrub(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['`', '"']) {
        let q = rest.as_bytes()[i] as char;
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find(q) {
            Some(j) => {
                let inner = &after[..j];
                let grammar = inner.chars().count() <= 3;
                let keyish = shown_key(inner) == inner;
                out.push(q);
                out.push_str(if grammar || keyish { inner } else { "…" });
                out.push(q);
                rest = &after[j + 1..];
            }
            None => {
                out.push(q);
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let e = toml::from_str::<super::super::raw::RawConfig>(text).unwrap_err();
        describe(text, &e)
    }

    #[test]
    fn an_unknown_key_inside_an_inline_table_is_named_by_its_path() {
        let m = err("[gateway.auth]\ntokens = [{ token = \"sk-live-abcdefgh\" }]\n");
        assert!(!m.contains("sk-live"), "{m}");
        assert!(
            m.starts_with("line 2, column 13, key `gateway.auth.tokens[0].token`"),
            "{m}"
        );
        assert!(
            m.contains("unknown key `token`, expected one of `token_env`"),
            "{m}"
        );
    }

    #[test]
    fn a_type_error_names_the_kind_not_the_value() {
        let m = err("[rotation]\nmax_attempts = \"sk-live-abcdefgh\"\n");
        assert!(!m.contains("sk-live"), "{m}");
        assert!(m.contains("key `rotation.max_attempts`"), "{m}");
        assert!(
            m.contains("wrong type: found a string, expected u32"),
            "{m}"
        );
    }

    #[test]
    fn a_syntax_error_never_quotes_the_line() {
        let m = err("[admin]\ntoken_env = \"sk-live-abcdefgh\n");
        assert!(!m.contains("sk-live"), "{m}");
        assert!(m.starts_with("line 2"), "{m}");
        assert!(m.contains("admin"), "{m}");
    }

    #[test]
    fn strange_key_names_are_not_echoed() {
        let m = err("[server]\n\"sk-live-abcdefgh ijkl\" = 1\n");
        assert!(!m.contains("sk-live"), "{m}");
        assert!(m.contains("line 2"), "{m}");
    }

    #[test]
    fn scrub_keeps_grammar_and_key_names() {
        assert_eq!(scrub("expected `\"`, `'`"), "expected `\"`, `'`");
        assert_eq!(
            scrub("one of `token_env`, `agent`"),
            "one of `token_env`, `agent`"
        );
        assert_eq!(scrub("string \"a b c d\""), "string \"…\"");
    }

    #[test]
    fn a_secret_where_a_variable_name_or_path_belongs_is_not_echoed() {
        for text in [
            "[admin]\ntoken_env = \"sk-live-abcdefgh\"\n",
            "[admin]\ntoken_file = \"sk-live-abcdefgh\"\n",
            "[gateway.auth]\nmode = \"password\"\npassword_env = \"sk-live abcdefgh\"\n",
        ] {
            let e = super::super::Config::from_toml(text, None, &|_| None).unwrap_err();
            let m = e.to_string();
            assert!(!m.contains("sk-live"), "{m}");
            assert!(m.contains("line 2") || m.contains("line 3"), "{m}");
        }
        let e =
            super::super::Config::from_toml("[admin]\ntoken_env = \"MY_TOKEN\"\n", None, &|_| None)
                .unwrap_err();
        assert!(e.to_string().contains("MY_TOKEN is not set"), "{e}");
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_col("a\néé = x", 9), (2, 6));
        assert_eq!(line_col("", 5), (1, 1));
    }
}
