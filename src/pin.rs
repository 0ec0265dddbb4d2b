//! Model extraction and `@profile` pinning (SPEC §5 step 1).
//!
//! Owns: reading the top-level JSON `model` string of a request body without copying the
//! body ([`body_model`]; with the session key of SPEC §11 in the same pass, [`body_fields`]), splitting `model@profile` ([`split_pin`]), and the byte-level edit
//! that removes the pin from the body ([`rewrite_model`]; every other byte is unchanged).
//!
//! It does not own: models that live in the path (`provider::model_from_path`), the
//! `x-keygate-profile` header, rejecting models longer than [`MAX_MODEL_LEN`] (the caller
//! does), nor looking the profile up (`pool`).

use std::borrow::Cow;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// The longest model name the proxy accepts, in bytes; [`body_model`] still returns longer
/// ones so the caller can reject them with a clear error.
pub const MAX_MODEL_LEN: usize = 256;

/// The top-level JSON `model` string of a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyModel<'a> {
    /// The decoded model string: borrowed from the body unless it contains JSON escapes.
    pub model: Cow<'a, str>,
    /// Byte range of the JSON string literal, quotes included, in the body.
    pub span: Range<usize>,
}

/// The top-level JSON `model` string of `body`, borrowed where possible, with the byte range
/// of its string literal. Does not copy the body, and does not parse more of it than the
/// top level (see `scan`: the rest is skipped, not validated).
///
/// Returns `None` for: bodies that are not a JSON object (or do not scan as one), bodies
/// without a top-level `model`, a `model` that is not a valid JSON string (including
/// `null`), and bodies with more than one top-level `model` member (ambiguous: which one the
/// provider reads is not ours to guess).
pub fn body_model(body: &[u8]) -> Option<BodyModel<'_>> {
    model_at(body, scan::top_level_member(body, "model")?)
}

/// The longest session key read from a body or the `x-keygate-session` header, in bytes; a
/// longer value is no session key (the request is chosen as if it had none).
pub const MAX_SESSION_LEN: usize = 1024;

/// The longest `metadata` object searched for `user_id`, in bytes: Anthropic's metadata is
/// one or two short members, and a larger one is not scanned (bounded work per request).
const MAX_METADATA_LEN: usize = 4096;

/// What one scan of a request body's top level finds (see [`body_fields`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyFields<'a> {
    /// As [`body_model`] returns it.
    pub model: Option<BodyModel<'a>>,
    /// The session key (SPEC §11): the raw bytes inside the string literal of the first
    /// present of `prompt_cache_key`, `metadata.user_id`, `user`. Raw, not decoded: it is
    /// only hashed, and one client encodes one session the same way every time.
    pub session: Option<&'a [u8]>,
}

/// The model (as [`body_model`]) and the session key of `body`, in one pass over its top
/// level; `metadata.user_id` is one level down, searched only inside a small `metadata`.
pub fn body_fields(body: &[u8]) -> BodyFields<'_> {
    let Some([model, cache_key, metadata, user]) =
        scan::top_level_members(body, ["model", "prompt_cache_key", "metadata", "user"])
    else {
        return BodyFields::default();
    };
    let session = cache_key
        .and_then(|r| session_value(&body[r]))
        .or_else(|| {
            let meta = &body[metadata?];
            if meta.len() > MAX_METADATA_LEN || meta.first() != Some(&b'{') {
                return None;
            }
            session_value(&meta[scan::top_level_member(meta, "user_id")?])
        })
        .or_else(|| session_value(&body[user?]));
    BodyFields {
        model: model.and_then(|span| model_at(body, span)),
        session,
    }
}

/// A JSON string literal's content as a session key: non-empty and not too long.
fn session_value(raw: &[u8]) -> Option<&[u8]> {
    if raw.len() < 3 || raw.len() - 2 > MAX_SESSION_LEN || raw.first() != Some(&b'"') {
        return None;
    }
    Some(&raw[1..raw.len() - 1])
}

/// The model string whose literal is at `span`.
fn model_at(body: &[u8], span: Range<usize>) -> Option<BodyModel<'_>> {
    let raw = &body[span.clone()];
    if raw.first() != Some(&b'"') {
        return None;
    }
    let inner = &raw[1..raw.len() - 1];
    let model = if inner.contains(&b'\\') {
        Cow::Owned(serde_json::from_slice::<String>(raw).ok()?)
    } else {
        // Without escapes, a JSON string is its own content once it is UTF-8 without
        // control characters (which JSON does not allow raw).
        let s = std::str::from_utf8(inner).ok()?;
        if s.bytes().any(|b| b < 0x20) {
            return None;
        }
        Cow::Borrowed(s)
    };
    Some(BodyModel { model, span })
}

/// Splits `model@profile` (SPEC §5), following OpenClaw's `splitTrailingAuthProfile`.
///
/// The split is at the first `@` after the last `/` (so `@cf/meta/llama-3` has no pin).
/// Segments right after an `@` that are model suffixes stay in the model, then the next `@`
/// introduces the profile, which is the whole rest (profile ids may contain `@`, e.g.
/// `anthropic:me@example.com`). Model suffixes (ASCII case-insensitive):
///
/// - an 8-digit date: `20251001`;
/// - GGUF / imatrix quantisations: `q` or `iq`, digits, then `_`-separated alphanumerics:
///   `q8_0`, `q4_K_M`, `iq3_XXS`;
/// - bit widths: digits + `bit`: `4bit`, `8bit`;
/// - number formats: `fp4`, `fp8`, `fp16`, `fp32`, `f16`, `f32`, `bf16`, `int4`, `int8`
///   (`fp`/`f`/`int` + digits, and `bf16`), `nf4`, `mxfp4`.
///
/// No pin (the whole input, `None`) when: there is no `@` after the last `/`, the model part
/// would be empty (`@p`), or the profile part would be empty (a trailing `@`, as in
/// `claude@`): an empty pin is not a pin, so the body is forwarded untouched and the
/// provider reports the odd model name. Nothing is trimmed.
///
/// When a profile is returned, `input == model + "@" + profile`.
pub fn split_pin(model: &str) -> (&str, Option<&str>) {
    let tail_start = model.rfind('/').map_or(0, |i| i + 1);
    let mut at = match model[tail_start..].find('@') {
        Some(i) => tail_start + i,
        None => return (model, None),
    };
    loop {
        let rest = &model[at + 1..];
        let segment = rest.split('@').next().unwrap_or(rest);
        if !is_model_suffix(segment) {
            break;
        }
        match rest.find('@') {
            Some(i) => at = at + 1 + i,
            None => return (model, None),
        }
    }
    let (name, profile) = (&model[..at], &model[at + 1..]);
    if name.is_empty() || profile.is_empty() {
        return (model, None);
    }
    (name, Some(profile))
}

/// Replaces the string literal at `span` (as returned by [`body_model`]) with the JSON
/// encoding of `new_model`; every other byte is unchanged. One allocation of the exact
/// result size.
///
/// # Panics
///
/// When `span` is not a range within `body` (a caller bug: spans come from [`body_model`]
/// on the same body).
pub fn rewrite_model(body: &Bytes, span: Range<usize>, new_model: &str) -> Bytes {
    let (prefix, suffix) = (&body[..span.start], &body[span.end..]);
    let literal_len = 2 + new_model.chars().map(escaped_len).sum::<usize>();
    let mut out = BytesMut::with_capacity(prefix.len() + literal_len + suffix.len());
    out.put_slice(prefix);
    out.put_u8(b'"');
    let mut utf8 = [0u8; 4];
    for c in new_model.chars() {
        match escape(c) {
            Escape::Short(e) => out.put_slice(&[b'\\', e]),
            Escape::Unicode(b) => {
                out.put_slice(b"\\u00");
                out.put_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
            Escape::None => out.put_slice(c.encode_utf8(&mut utf8).as_bytes()),
        }
    }
    out.put_u8(b'"');
    out.put_slice(suffix);
    out.freeze()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// How a character is written in a JSON string (the same choices as `serde_json`).
enum Escape {
    None,
    Short(u8),
    Unicode(u8),
}

fn escape(c: char) -> Escape {
    match c {
        '"' => Escape::Short(b'"'),
        '\\' => Escape::Short(b'\\'),
        '\n' => Escape::Short(b'n'),
        '\r' => Escape::Short(b'r'),
        '\t' => Escape::Short(b't'),
        '\u{8}' => Escape::Short(b'b'),
        '\u{c}' => Escape::Short(b'f'),
        // Control characters are all < 0x20, so they fit in one byte.
        c if (c as u32) < 0x20 => Escape::Unicode(c as u8),
        _ => Escape::None,
    }
}

fn escaped_len(c: char) -> usize {
    match escape(c) {
        Escape::None => c.len_utf8(),
        Escape::Short(_) => 2,
        Escape::Unicode(_) => 6,
    }
}

/// Whether an `@` segment belongs to the model (see [`split_pin`]).
fn is_model_suffix(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if s.len() == 8 && digits(&s) {
        return true;
    }
    // q8_0, q4_k_m, iq3_xxs
    let quant = s.strip_prefix("iq").or_else(|| s.strip_prefix('q'));
    if let Some(rest) = quant {
        let mut parts = rest.split('_');
        let head = parts.next().unwrap_or("");
        if digits(head)
            && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return true;
        }
    }
    if s.strip_suffix("bit").is_some_and(digits) {
        return true;
    }
    if ["fp", "int", "f"]
        .iter()
        .any(|p| s.strip_prefix(p).is_some_and(digits))
    {
        return true;
    }
    matches!(s.as_str(), "bf16" | "nf4" | "mxfp4")
}

mod scan;

#[cfg(test)]
mod tests;
