//! Retry hints (SPEC §7 rule 5): pure parsers for every format providers use, and the
//! order in which they are consulted.
//!
//! Owns: `retry-after` (seconds or HTTP date) and `retry-after-ms`, Go-style durations
//! (`20ms`, `6m0s`, `2h31m16.752s`), protobuf durations (`39.418973511s`), "try again in …"
//! sentences, RFC 3339 and epoch resets, the table of rate-limit dimensions (which
//! `remaining` header goes with which `reset` header), and the 24 h cap. It does not decide
//! the reason (see `rules`) nor turn a hint into a cooldown (the cooldown module does).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName};

use super::fields::ErrorFields;
use super::RetryHint;

/// Longest hint ever reported: daily allowances are real, anything longer is capped.
pub const MAX_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// An absolute reset (epoch, RFC 3339, HTTP date) further than this beyond the answer's
/// `Date` cannot be right (epoch microseconds or nanoseconds read as milliseconds, a year
/// typo): it is no hint at all, and the cooldown falls back to the `backoff` ladder.
pub const ABSURD_RESET: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Rate-limit dimensions: a `remaining` header and the reset headers that go with it (the
/// first one present is used). Azure spells one reset header `x-rate-limit-reset-tokens`.
static DIMENSIONS: [(HeaderName, &[&str]); 12] = [
    (
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        &["x-ratelimit-reset-requests", "x-rate-limit-reset-requests"],
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        &["x-ratelimit-reset-tokens", "x-rate-limit-reset-tokens"],
    ),
    (
        HeaderName::from_static("x-rate-limit-remaining-requests"),
        &["x-rate-limit-reset-requests", "x-ratelimit-reset-requests"],
    ),
    (
        HeaderName::from_static("x-rate-limit-remaining-tokens"),
        &["x-rate-limit-reset-tokens", "x-ratelimit-reset-tokens"],
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining-requests-day"),
        &["x-ratelimit-reset-requests-day"],
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining-tokens-minute"),
        &["x-ratelimit-reset-tokens-minute"],
    ),
    (
        HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
        &["anthropic-ratelimit-requests-reset"],
    ),
    (
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
        &["anthropic-ratelimit-tokens-reset"],
    ),
    (
        HeaderName::from_static("anthropic-ratelimit-input-tokens-remaining"),
        &["anthropic-ratelimit-input-tokens-reset"],
    ),
    (
        HeaderName::from_static("anthropic-ratelimit-output-tokens-remaining"),
        &["anthropic-ratelimit-output-tokens-reset"],
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining"),
        &["x-ratelimit-reset"],
    ),
    (
        HeaderName::from_static("x-rate-limit-remaining"),
        &["x-rate-limit-reset"],
    ),
];

/// `retry-after-ms` (OpenAI), pre-parsed.
static RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// Phrases after which a message states a wait ("Please try again in 1.574s"). Each one
/// contains "try" or "wait" (see [`parse_message_hint`]).
const MESSAGE_PHRASES: &[&str] = &[
    "try again in ",
    "try again after ",
    "retry in ",
    "retry after ",
    "retrying in ",
    "retry-after: ",
    "wait ",
];

/// [`MESSAGE_PHRASES`] as searchers, built once (building one costs more than a search).
static MESSAGE_FINDERS: std::sync::LazyLock<Vec<memchr::memmem::Finder<'static>>> =
    std::sync::LazyLock::new(|| {
        MESSAGE_PHRASES
            .iter()
            .map(|p| memchr::memmem::Finder::new(p.as_bytes()))
            .collect()
    });

/// What every one of [`MESSAGE_PHRASES`] contains.
static MESSAGE_GATES: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 2]> =
    std::sync::LazyLock::new(|| {
        [
            memchr::memmem::Finder::new(b"try"),
            memchr::memmem::Finder::new(b"wait"),
        ]
    });

/// The hint for a failed answer, first found (see [`super::retry_hint`]).
pub(crate) fn hint_from(
    headers: &HeaderMap,
    f: &ErrorFields,
    now: SystemTime,
) -> Option<RetryHint> {
    // The `Date` header is parsed only for a value that is read relative to it.
    let base = || date_header(headers).unwrap_or(now);
    // A value that cannot be right (zero, in the past, absurd) counts as absent: the next
    // source is consulted, and without one the cooldown uses the `backoff` ladder.
    if let Some(h) = headers
        .get(&RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after_ms)
        .and_then(|after| hint(after, "retry-after-ms"))
    {
        return Some(h);
    }
    if let Some(h) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, base()))
        .and_then(|after| hint(after, "retry-after"))
    {
        return Some(h);
    }
    body_hint(f).or_else(|| {
        may_be_spent(headers)
            .then(|| exhausted(headers, base()).and_then(|s| s.hint))
            .flatten()
    })
}

/// The hint an error object carries by itself (in-stream errors have no headers of their
/// own): `RetryInfo`, then the message.
pub(crate) fn body_hint(f: &ErrorFields) -> Option<RetryHint> {
    let from_message = parse_message_hint(&f.message).or_else(|| parse_message_hint(&f.extra));
    if let Some(ri) = f.retry_delay.as_deref().and_then(parse_go_duration) {
        // Google rounds RetryInfo down to whole seconds while the message says
        // "Please retry in 39.418973511s": the message refines the same value.
        let after = match from_message {
            Some(m) if m >= ri && m < ri + Duration::from_secs(1) => m,
            _ => ri,
        };
        if let Some(h) = hint(after, "RetryInfo") {
            return Some(h);
        }
    }
    from_message.and_then(|after| hint(after, "message"))
}

/// A success answer whose headers say its credential is spent (some `remaining` at 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spent {
    /// Until the advertised reset; `None` when no reset can be right (missing, unparsable,
    /// in the past, absurd): the credential still cools, on the `backoff` ladder.
    pub hint: Option<RetryHint>,
}

/// Steering before 429 (SPEC §7): on a success answer, the reset of the dimension whose
/// `remaining` header is 0 (`x-ratelimit-remaining-requests` / `-tokens`,
/// `anthropic-ratelimit-requests-remaining` / `-tokens-remaining` / `-input-tokens-remaining`
/// / `-output-tokens-remaining`, OpenRouter `X-RateLimit-Remaining`), the longest when
/// several are spent. RFC 3339 resets are read relative to the `Date` header when present.
///
/// Returns `None` when no dimension is at 0. A spent dimension whose reset cannot be right
/// (missing, unparsable, zero, before `Date`, absurd) is still spent: `Spent { hint: None }`.
pub fn steering(headers: &HeaderMap, now: SystemTime) -> Option<Spent> {
    // This runs on every successful answer: look for a spent dimension (pre-parsed header
    // names) before parsing any date.
    if !may_be_spent(headers) {
        return None;
    }
    let base = date_header(headers).unwrap_or(now);
    exhausted(headers, base)
}

/// The advertised reset of [`steering`] alone.
///
/// Returns `None` for: no dimension at 0, or a spent dimension without a reset that can be
/// right (the caller of [`steering`] still cools that one on the ladder).
pub fn steering_hint(headers: &HeaderMap, now: SystemTime) -> Option<RetryHint> {
    steering(headers, now).and_then(|s| s.hint)
}

/// Whether some `remaining` header of [`DIMENSIONS`] has a value at 0 (any of its values:
/// a superset of what [`exhausted_reset`] reads). One pass over the few headers of an
/// answer costs a fraction of the twelve hashed look-ups it saves when nothing is spent.
fn may_be_spent(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| {
        // Every dimension's header starts like one of these: most headers stop here.
        let n = name.as_str();
        (n.starts_with("x-rate") || n.starts_with("anthropic-rate"))
            && DIMENSIONS.iter().any(|(remaining, _)| remaining == name)
            && value
                .to_str()
                .ok()
                .and_then(parse_number)
                .is_some_and(|left| left <= 0.0)
    })
}

/// The spent dimensions of `headers` and the latest of their resets that can be right;
/// `None` when no dimension is at 0.
fn exhausted(headers: &HeaderMap, base: SystemTime) -> Option<Spent> {
    let mut spent = false;
    let mut best: Option<RetryHint> = None;
    for (remaining, resets) in &DIMENSIONS {
        let Some(left) = headers
            .get(remaining)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_number)
        else {
            continue;
        };
        if left > 0.0 {
            continue;
        }
        spent = true;
        let found = resets.iter().find_map(|name| {
            let v = header_str(headers, name)?;
            parse_reset(v, base).and_then(|d| hint(d, name))
        });
        if let Some(h) = found {
            if best.is_none_or(|b| h.after > b.after) {
                best = Some(h);
            }
        }
    }
    spent.then_some(Spent { hint: best })
}

/// Parses a `retry-after` value: delay seconds (`"37"`; a fraction such as `"1.5"` is
/// accepted) or an HTTP date, taken relative to `base` (the answer's `Date`, else now).
/// Capped at [`MAX_HINT`]. `"0"` gives zero (which the hint order treats as no hint).
///
/// Returns `None` for: empty, negative, garbage, a malformed date, a date not after `base`,
/// or one more than [`ABSURD_RESET`] after it.
pub fn parse_retry_after(value: &str, base: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Some(secs) = parse_number(v) {
        return Some(secs_to_duration(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    until(at, base)
}

/// Parses a `retry-after-ms` value (milliseconds, fractions accepted). Capped.
fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    parse_number(value.trim()).map(|ms| secs_to_duration(ms / 1000.0))
}

/// Parses a Go-style duration as the whole string: one or more `<number><unit>` with units
/// `h`, `m`, `s`, `ms`, `us`/`µs`, `ns` (`20ms`, `6m0s`, `1m26.4s`, `2h31m16.752s`,
/// protobuf `39.418973511s`). Capped at [`MAX_HINT`].
///
/// Returns `None` for: empty, a sign, a bare number, an unknown unit, or trailing text.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (secs, used) = parse_components(s.as_bytes(), false)?;
    (used == s.len()).then(|| secs_to_duration(secs))
}

/// The wait stated in an error message ("try again in 9m38.016s", "Please retry after 37
/// seconds", "retry in 39.418973511s"), in a lower-cased message. Capped.
///
/// Returns `None` when no phrase is followed by a number with a unit.
pub(crate) fn parse_message_hint(msg: &str) -> Option<Duration> {
    let b = msg.as_bytes();
    // Every phrase contains "try" or "wait": two searches rule out the seven of most
    // messages.
    if !MESSAGE_GATES.iter().any(|g| g.find(b).is_some()) {
        return None;
    }
    let mut best: Option<(usize, Duration)> = None;
    for (phrase, finder) in MESSAGE_PHRASES.iter().zip(MESSAGE_FINDERS.iter()) {
        let mut from = 0;
        while let Some(p) = finder.find(&b[from..]) {
            let start = from + p + phrase.len();
            let mut rest = &b[start..];
            for filler in [&b"about "[..], b"approximately ", b"around "] {
                if let Some(r) = rest.strip_prefix(filler) {
                    rest = r;
                }
            }
            if let Some((secs, _)) = parse_components(rest, true) {
                if best.is_none_or(|(at, _)| start < at) {
                    best = Some((start, secs_to_duration(secs)));
                }
                break;
            }
            from = start;
        }
    }
    best.map(|(_, d)| d)
}

/// A reset header value: RFC 3339, epoch milliseconds (OpenRouter) or seconds, or an HTTP
/// date, all relative to `base` (the answer's `Date`, else now: the upstream's clock, not
/// ours); delay seconds or a Go duration. Capped at [`MAX_HINT`].
///
/// Returns `None` for: garbage, an absolute time not after `base` or more than
/// [`ABSURD_RESET`] after it (the caller falls back to the ladder).
pub(crate) fn parse_reset(value: &str, base: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Some(at) = parse_rfc3339(v) {
        return until(at, base);
    }
    if let Some(n) = parse_number(v) {
        return if n >= 1e12 {
            until_epoch(n / 1000.0, base)
        } else if n >= 1e9 {
            until_epoch(n, base)
        } else {
            Some(secs_to_duration(n))
        };
    }
    if let Some(d) = parse_go_duration(v) {
        return Some(d);
    }
    until(httpdate::parse_http_date(v).ok()?, base)
}

/// RFC 3339 timestamp (`2024-03-26T20:00:00Z`, fractions, `+hh:mm` / `-hh:mm` offsets).
pub(crate) fn parse_rfc3339(v: &str) -> Option<SystemTime> {
    let b = v.as_bytes();
    if b.len() < 19 || b[4] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') {
        return None;
    }
    // A numeric offset other than +00:00 is removed here and applied after parsing.
    let (body, offset_secs) = match b.len().checked_sub(6).map(|i| (i, b[i])) {
        Some((i, sign @ (b'+' | b'-'))) if i >= 19 && b[i + 3] == b':' => {
            let h = parse_number(v.get(i + 1..i + 3)?)?;
            let m = parse_number(v.get(i + 4..)?)?;
            let secs = h * 3600.0 + m * 60.0;
            (v.get(..i)?, if sign == b'+' { secs } else { -secs })
        }
        _ => (v, 0.0),
    };
    let body = body.strip_suffix(['Z', 'z']).unwrap_or(body);
    let t = humantime::parse_rfc3339_weak(body).ok()?;
    let off = Duration::from_secs_f64(offset_secs.abs());
    if offset_secs >= 0.0 {
        t.checked_sub(off)
    } else {
        t.checked_add(off)
    }
}

/// Non-negative decimal number: digits with at most one dot (no sign, exponent, `inf`).
pub(crate) fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    let b = s.as_bytes();
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let dots = b.iter().filter(|c| **c == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != b.len() {
        return None;
    }
    s.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// `<number><unit>` components from the start of `b`. With `words`, a space may separate
/// number and unit and long unit names are accepted ("37 seconds"). Returns the total in
/// seconds and the bytes used; `None` when the first component does not parse.
fn parse_components(b: &[u8], words: bool) -> Option<(f64, usize)> {
    let mut i = 0;
    let mut end = 0;
    let mut total = 0.0;
    let mut parts = 0;
    loop {
        let num_start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        let Some(n) = std::str::from_utf8(&b[num_start..i])
            .ok()
            .and_then(parse_number)
        else {
            break;
        };
        let mut j = i;
        if words && b.get(j) == Some(&b' ') {
            j += 1;
        }
        let unit_start = j;
        while j < b.len() && (b[j].is_ascii_alphabetic() || b[j] >= 0x80) {
            j += 1;
        }
        let Some(mult) = std::str::from_utf8(&b[unit_start..j])
            .ok()
            .and_then(|u| unit(u, words))
        else {
            break;
        };
        total += n * mult;
        parts += 1;
        i = j;
        end = j;
    }
    (parts > 0).then_some((total, end))
}

fn unit(u: &str, words: bool) -> Option<f64> {
    let short = match u {
        "h" => Some(3600.0),
        "m" => Some(60.0),
        "s" => Some(1.0),
        "ms" => Some(1e-3),
        "us" | "µs" | "μs" => Some(1e-6),
        "ns" => Some(1e-9),
        _ => None,
    };
    if short.is_some() || !words {
        return short;
    }
    match u {
        "hr" | "hrs" | "hour" | "hours" => Some(3600.0),
        "min" | "mins" | "minute" | "minutes" => Some(60.0),
        "sec" | "secs" | "second" | "seconds" => Some(1.0),
        "msec" | "msecs" | "millisecond" | "milliseconds" => Some(1e-3),
        _ => None,
    }
}

fn secs_to_duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs.min(MAX_HINT.as_secs_f64())).unwrap_or(MAX_HINT)
}

/// The wait from `base` until `secs` after the epoch. A reset past what `Duration` or
/// `SystemTime` can hold is absurd: `None`, never a panic (the value is the upstream's).
fn until_epoch(secs: f64, base: SystemTime) -> Option<Duration> {
    let at = UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)?;
    until(at, base)
}

/// The wait from `base` until `at`, capped at [`MAX_HINT`]; `None` when `at` is not after
/// `base` (a reset already past cannot be right) or more than [`ABSURD_RESET`] after it.
fn until(at: SystemTime, base: SystemTime) -> Option<Duration> {
    let d = at.duration_since(base).ok()?;
    (!d.is_zero() && d <= ABSURD_RESET).then(|| d.min(MAX_HINT))
}

/// A hint, or `None` for a zero wait: a failed or spent answer that says "no wait" cannot
/// be right, and the cooldown then uses the `backoff` ladder, never a zero-length window.
fn hint(after: Duration, source: &'static str) -> Option<RetryHint> {
    (!after.is_zero()).then_some(RetryHint {
        after: after.min(MAX_HINT),
        source,
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn date_header(headers: &HeaderMap) -> Option<SystemTime> {
    headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
}

#[cfg(test)]
mod tests;
