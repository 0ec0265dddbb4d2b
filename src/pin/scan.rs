//! Finds one member of a request body's top-level JSON object without parsing the rest.
//!
//! Why not serde: deserialising a body, even into a struct that ignores every other member,
//! validates every byte of it, which for a large agent conversation (what Claude Code sends)
//! cost more than all the rest of keygate's work on the request. Here strings, which are
//! most of a body, are skipped with `memchr` (vectorised) from quote to quote, and only the
//! bytes between values are looked at one by one (figures: `inject/body_model_200k` in
//! BENCHMARKS.md).
//!
//! The check is structural: braces, brackets, quotes and escapes must pair up, members must
//! be `"key": value` separated by commas, nothing may follow the object. Bytes inside
//! strings and numbers are not validated; the member found is (by `body_model`), and a body
//! that is not JSON is the provider's to reject. For valid JSON the answer is serde's: a
//! test compares the two on generated bodies.

use std::ops::Range;

/// The values of the top-level members `names`, each as a byte range of `body`
/// (whitespace excluded), in one pass. An entry is `None` when the object has no such
/// member or has it more than once (which of two the provider reads is not ours to guess);
/// the whole answer is `None` when `body` is not an object or does not scan.
pub(super) fn top_level_members<const N: usize>(
    body: &[u8],
    names: [&str; N],
) -> Option<[Option<Range<usize>>; N]> {
    let mut found: [Option<Range<usize>>; N] = std::array::from_fn(|_| None);
    let mut twice = [false; N];
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(body, i + 1);
    if body.get(i) == Some(&b'}') {
        return None;
    }
    loop {
        if body.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(body, i)?;
        let which = key_among(&body[i..key_end], &names);
        i = skip_ws(body, key_end);
        if body.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(body, i + 1);
        let end = value_end(body, start)?;
        if let Some(k) = which {
            twice[k] |= found[k].is_some();
            found[k] = Some(start..end);
        }
        i = skip_ws(body, end);
        match body.get(i) {
            Some(b',') => i = skip_ws(body, i + 1),
            // Nothing may follow the object.
            Some(b'}') => {
                if skip_ws(body, i + 1) != body.len() {
                    return None;
                }
                for (f, t) in found.iter_mut().zip(twice) {
                    if t {
                        *f = None;
                    }
                }
                return Some(found);
            }
            _ => return None,
        }
    }
}

/// The value of the top-level member `name` (see [`top_level_members`]).
pub(super) fn top_level_member(body: &[u8], name: &str) -> Option<Range<usize>> {
    let [found] = top_level_members(body, [name])?;
    found
}

/// Which of `names` the key literal `raw` (quotes included) names, escapes decoded (once,
/// however many names there are).
fn key_among(raw: &[u8], names: &[&str]) -> Option<usize> {
    let inner = &raw[1..raw.len() - 1];
    if inner.contains(&b'\\') {
        let k = serde_json::from_slice::<String>(raw).ok()?;
        names.iter().position(|n| *n == k)
    } else {
        names.iter().position(|n| inner == n.as_bytes())
    }
}

/// The first index at or after `i` that is not JSON whitespace.
fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while matches!(body.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index just past the string literal that starts at `i` (an opening quote).
///
/// Jumps from quote to quote (text is full of `\n` escapes, quotes are rarer); a quote ends
/// the string unless an odd number of backslashes stands right before it.
fn string_end(body: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + memchr::memchr(b'"', body.get(j..)?)?;
        let backslashes = body[i + 1..k]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            return Some(k + 1);
        }
        j = k + 1;
    }
}

/// The index just past the value that starts at `i`.
fn value_end(body: &[u8], i: usize) -> Option<usize> {
    match body.get(i)? {
        b'"' => string_end(body, i),
        b'{' | b'[' => container_end(body, i),
        // A number, `true`, `false` or `null`: up to the next delimiter.
        _ => {
            let n = body[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(body.len() - i);
            (n > 0).then_some(i + n)
        }
    }
}

/// The index just past the object or array that starts at `i`: nesting is counted, not
/// recursed into, so depth costs no stack.
fn container_end(body: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    while let Some(&b) = body.get(j) {
        match b {
            b'"' => {
                j = string_end(body, j)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
    None
}
