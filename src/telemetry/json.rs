//! The JSON log line, written straight into the line buffer.
//!
//! Same shape as tracing-subscriber's flattened JSON (`timestamp`, `level`, the event's
//! fields, `target`, then the `spans` in scope, root first), without its cost: there the
//! line goes through serde's map serializer, each field through a `Serialize` wrapper and
//! each timestamp digit through `core::fmt` (a measurable share of a request's CPU; see
//! BENCHMARKS.md). Here strings
//! are copied with a single escaping scan, integers go through `itoa`, and the timestamp
//! through `humantime`'s fixed-width RFC 3339 writer. Written here because no crate offers
//! a faster `FormatEvent`; the escaping is JSON's (RFC 8259 §7), nothing more.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Json, Writer};
use tracing_subscriber::fmt::time::SystemTime as SubscriberTime;
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The `--log-format json` event format (span fields are stored by `JsonFields`).
pub(crate) struct JsonLine {
    /// tracing-subscriber's flattened JSON, for events from the `log` crate (whose real
    /// target and location are in `log.*` fields that it knows how to read).
    reference: Format<Json, SubscriberTime>,
}

impl Default for JsonLine {
    fn default() -> Self {
        JsonLine {
            reference: Format::default().json().flatten_event(true),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if from_log(event) {
            return self.reference.format_event(ctx, w, event);
        }
        with_line(w, |line| build(line, ctx, event))
    }
}

/// An event made from a `log` crate record (by tracing-log's bridge, which tracing-
/// subscriber installs): its metadata says only "log", the rest is in its fields.
pub(super) fn from_log(event: &Event<'_>) -> bool {
    let meta = event.metadata();
    meta.target() == "log" && meta.name() == "log event"
}

/// Builds a line in a reused buffer with inlined pushes, then hands it to `w` in one call:
/// `Writer` is a `dyn fmt::Write`, and a call per piece costs more than the copy.
pub(super) fn with_line(
    mut w: Writer<'_>,
    build: impl FnOnce(&mut String) -> fmt::Result,
) -> fmt::Result {
    LINE.with(|cell| {
        // A field's `Debug` that logs would re-enter here: it gets a buffer of its own.
        let mut spare = String::new();
        let mut reused = cell.try_borrow_mut();
        let line = match reused.as_deref_mut() {
            Ok(line) => line,
            Err(_) => &mut spare,
        };
        line.clear();
        let result = build(line);
        let written = w.write_str(line);
        if line.capacity() > MAX_KEPT {
            *line = String::new();
        }
        result.and(written)
    })
}

/// Capacity kept between lines (a huge line is not pinned for the thread's life).
const MAX_KEPT: usize = 16 * 1024;

thread_local! {
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn build<S, N>(line: &mut String, ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let meta = event.metadata();
    line.push_str("{\"timestamp\":\"");
    timestamp(line)?;
    line.push_str("\",\"level\":\"");
    line.push_str(meta.level().as_str());
    line.push('"');
    let mut fields = Fields {
        line: &mut *line,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    line.push_str(",\"target\":");
    string(line, meta.target());
    if let Some(scope) = ctx.event_scope() {
        let mut first = true;
        for span in scope.from_root() {
            line.push_str(if first { ",\"spans\":[" } else { "," });
            first = false;
            line.push_str("{\"name\":");
            string(line, span.name());
            let ext = span.extensions();
            // `JsonFields` keeps a span's fields as one JSON object: splice its members.
            let members = ext
                .get::<FormattedFields<N>>()
                .and_then(|f| f.fields.trim().strip_prefix('{'))
                .and_then(|f| f.strip_suffix('}'))
                .filter(|m| !m.is_empty());
            if let Some(m) = members {
                line.push(',');
                line.push_str(m);
            }
            line.push('}');
        }
        if !first {
            line.push(']');
        }
    }
    line.push_str("}\n");
    Ok(())
}

/// The current time, RFC 3339 to the microsecond (`2026-11-30T02:27:39.290972Z`).
/// `humantime` panics on a time before 1970 or after 9999; a clock set there prints the
/// nearest of the two instead.
pub(super) fn timestamp(line: &mut String) -> fmt::Result {
    rfc3339(line, SystemTime::now())
}

fn rfc3339(line: &mut String, t: SystemTime) -> fmt::Result {
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let t = t.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST);
    write!(line, "{}", humantime::format_rfc3339_micros(t))
}

/// Writes each field as `,"name":value`.
struct Fields<'a> {
    line: &'a mut String,
    result: fmt::Result,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        string(self.line, field.name());
        self.line.push(':');
    }

    /// A value written through `core::fmt` (`Debug`, `Display`), as a JSON string.
    fn formatted(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_ok() {
            self.key(field);
            self.line.push('"');
            self.result = Escaped(self.line).write_fmt(value);
            self.line.push('"');
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        string(self.line, value);
    }

    record_bare_scalars!();

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // Rust's `Display` gives the shortest round-trip form, as serde_json does; JSON has
        // no NaN or infinity.
        if !value.is_finite() {
            self.line.push_str("null");
        } else if !thousandths(self.line, value) {
            let _ = write!(self.line, "{value}");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.formatted(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.formatted(field, format_args!("{value:?}"));
    }
}

/// Writes `value` when it is a whole number of thousandths below 10^9 (latencies in ms to
/// the µs), exactly as `Display` would, without the float formatter: such a value's
/// shortest round-trip form is its integer part and at most three decimals.
pub(super) fn thousandths(line: &mut String, value: f64) -> bool {
    // `-0.0` is in `0.0..1e9` but prints as `-0`; NaN fails the comparison.
    if value.is_sign_negative() || !(0.0..1e9).contains(&value) {
        return false;
    }
    let scaled = (value * 1000.0).round();
    if scaled / 1000.0 != value {
        return false;
    }
    let n = scaled as u64;
    let mut buf = itoa::Buffer::new();
    line.push_str(buf.format(n / 1000));
    let frac = n % 1000;
    if frac != 0 {
        let digits = [
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let len = if frac % 100 == 0 {
            1
        } else if frac % 10 == 0 {
            2
        } else {
            3
        };
        line.push('.');
        for &d in &digits[..len] {
            line.push(char::from(d));
        }
    }
    true
}

/// A JSON string literal.
fn string(line: &mut String, s: &str) {
    line.push('"');
    escape_into(line, s);
    line.push('"');
}

/// Escapes whatever is written through it (for `Debug`/`Display` output).
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// What a byte becomes inside a JSON string: 0 = itself, `u` = `\u00XX`, else `\` + it.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x7f] = b'u';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t
};

/// String contents with `"`, `\` and control characters escaped; runs without them are
/// copied whole. (A word-at-a-time scan was tried: most strings here are a few bytes long,
/// and it cost more than it saved.)
fn escape_into(line: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if is_clean(s.as_bytes()) {
        line.push_str(s);
        return;
    }
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let e = ESCAPE[usize::from(b)];
        if e == 0 {
            continue;
        }
        // Only ASCII bytes are escaped, so `i` is a char boundary.
        line.push_str(&s[start..i]);
        line.push('\\');
        if e == b'u' {
            line.push_str("u00");
            line.push(char::from(HEX[usize::from(b >> 4)]));
            line.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            line.push(char::from(e));
        }
        start = i + 1;
    }
    line.push_str(&s[start..]);
}

/// Whether `s` has nothing to escape, which is the common case; the byte loop above then
/// runs only on strings that need it. Eight bytes a step, with the word tricks of
/// "Bit Twiddling Hacks" (any byte < 0x20, or equal to `"`, `\` or DEL): the strings here
/// are mostly shorter than a vector register, so a SIMD loop would run its scalar tail.
#[inline]
pub(super) fn is_clean(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Some byte of `v` is zero.
    fn zero_byte(v: u64) -> u64 {
        v.wrapping_sub(ONES) & !v
    }
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        let control = x.wrapping_sub(0x20 * ONES) & !x;
        let special = zero_byte(x ^ (u64::from(b'"') * ONES))
            | zero_byte(x ^ (u64::from(b'\\') * ONES))
            | zero_byte(x ^ (0x7f * ONES));
        if (control | special) & HIGH != 0 {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| ESCAPE[usize::from(b)] == 0)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use tracing_subscriber::fmt::format::JsonFields;

    use super::*;
    use crate::telemetry::test_support::Buf;

    #[derive(Debug)]
    struct Oops;

    impl fmt::Display for Oops {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("it broke: \"badly\"")
        }
    }

    impl std::error::Error for Oops {}

    /// Emits the same events through `emit`, once with `JsonLine` and once with
    /// tracing-subscriber's own flattened JSON, and returns both outputs' lines.
    fn both(emit: impl Fn()) -> (Vec<Value>, Vec<Value>) {
        let ours = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(ours.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine::default())
            .finish();
        tracing::subscriber::with_default(sub, &emit);
        let theirs = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(theirs.clone())
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(sub, &emit);
        let lines = |b: &Buf| -> Vec<Value> {
            let text = String::from_utf8(b.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        };
        (lines(&ours), lines(&theirs))
    }

    fn emit() {
        let span = tracing::info_span!("request", method = "POST", path = "/v1/messages");
        let g = span.enter();
        tracing::info!(
            provider = "anthropic",
            attempts = 2u32,
            delta = -3i64,
            status = 429u16,
            ok = false,
            latency_ms = 1.25f64,
            nan = f64::NAN,
            shown = %"display \"quoted\"",
            debugged = ?Some("x"),
            error = &Oops as &(dyn std::error::Error + 'static),
            "request \"done\"\nline two\ttab \u{1} é ✓ \\"
        );
        drop(g);
        tracing::warn!(target: "keygate::other", "plain");
    }

    #[test]
    fn fields_match_tracing_subscribers_json() {
        let (ours, theirs) = both(emit);
        assert_eq!(ours.len(), 2);
        assert_eq!(theirs.len(), 2);
        for (o, t) in ours.iter().zip(&theirs) {
            let (mut o, mut t) = (o.clone(), t.clone());
            for v in [&mut o, &mut t] {
                let m = v.as_object_mut().unwrap();
                let ts = m.remove("timestamp").unwrap();
                let ts = ts.as_str().unwrap();
                assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
                m.remove("span");
                m.remove("spans");
            }
            assert_eq!(o, t);
        }
        let first = &ours[0];
        assert_eq!(
            first["message"],
            json!("request \"done\"\nline two\ttab \u{1} é ✓ \\")
        );
        assert_eq!(first["latency_ms"], json!(1.25));
        assert_eq!(first["nan"], Value::Null);
        assert_eq!(first["error"], json!("it broke: \"badly\""));
        assert_eq!(first["level"], json!("INFO"));
        assert_eq!(
            first["spans"],
            json!([{"name": "request", "method": "POST", "path": "/v1/messages"}])
        );
        assert!(ours[1].get("spans").is_none(), "{}", ours[1]);
        assert_eq!(ours[1]["target"], json!("keygate::other"));
    }

    #[test]
    fn escaping_round_trips_through_a_json_parser() {
        // Deterministic pseudo-random strings over an alphabet dense in escapes, at every
        // alignment relative to the 8-byte steps.
        let alphabet: Vec<char> = "ab \"\\\n\t\u{1}\u{7f}é✓😀/".chars().collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            for _ in 0..20 {
                let s: String = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        alphabet[(seed % alphabet.len() as u64) as usize]
                    })
                    .collect();
                let mut out = String::new();
                string(&mut out, &s);
                let back: String =
                    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
                assert_eq!(back, s);
                assert!(!out.bytes().any(|b| b < 0x20 || b == 0x7f), "{out:?}");
            }
        }
    }

    /// Logs while being formatted.
    struct Noisy;

    impl fmt::Debug for Noisy {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            tracing::info!("inner");
            f.write_str("noisy")
        }
    }

    #[test]
    fn a_field_that_logs_while_formatted_does_not_panic() {
        // tracing drops the nested event (its dispatcher is busy); what matters is that the
        // outer line is whole and nothing panics.
        let (ours, _) = both(|| tracing::info!(x = ?Noisy, "outer"));
        let outer = ours
            .iter()
            .find(|l| l["message"] == "outer")
            .expect("outer line");
        assert_eq!(outer["x"], json!("noisy"));
    }

    #[test]
    fn events_from_the_log_crate_show_their_own_target() {
        let (ours, theirs) = both(crate::telemetry::emit_log_record);
        let cut = |mut v: Value| {
            v.as_object_mut().unwrap().remove("timestamp");
            v
        };
        let ours: Vec<Value> = ours.into_iter().map(cut).collect();
        let theirs: Vec<Value> = theirs.into_iter().map(cut).collect();
        assert_eq!(ours, theirs);
        assert_eq!(ours[0]["target"], json!("rustls::client::hs"));
        assert_eq!(
            ours[0]["message"],
            json!("Sending warning alert CloseNotify")
        );
    }

    #[test]
    fn clocks_out_of_range_print_the_nearest_bound() {
        let at = |t: SystemTime| {
            let mut line = String::new();
            rfc3339(&mut line, t).unwrap();
            line
        };
        assert_eq!(
            at(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            at(UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400 * 100)),
            "9999-12-31T23:59:59.000000Z"
        );
        assert_eq!(
            at(UNIX_EPOCH + Duration::from_micros(1_764_470_859_290_972)),
            "2025-11-30T02:47:39.290972Z"
        );
    }

    #[test]
    fn thousandths_print_as_display_does() {
        let mut checked = 0;
        let values = (0..300_000u64)
            .map(|us| us as f64 / 1e3)
            .chain((0..2000u64).map(|i| (i * 7_919_993) as f64 / 1e3))
            .chain([0.5, 1.25, 999_999_999.999, 3.0, 12.5, 0.001, 0.0]);
        for v in values {
            let mut out = String::new();
            if thousandths(&mut out, v) {
                assert_eq!(out, format!("{v}"), "{v:?}");
                checked += 1;
            }
        }
        assert!(checked > 300_000, "the fast path took {checked} values");
        for v in [0.691226, 4.999979059, 1e9, -1.0, 1.0 / 3.0, -0.0, f64::NAN] {
            assert!(!thousandths(&mut String::new(), v), "{v}");
        }
    }

    #[test]
    fn the_clean_scan_agrees_with_the_escape_table() {
        // Every byte, at the start, middle and end of strings shorter and longer than a
        // vector step: a clean verdict must mean the byte loop would escape nothing.
        for b in 0u8..=255 {
            for len in [1, 7, 15, 16, 17, 33, 64] {
                for pos in [0, len / 2, len - 1] {
                    let mut s = vec![b'a'; len];
                    s[pos] = b;
                    let expected = ESCAPE[usize::from(b)] == 0;
                    assert_eq!(is_clean(&s), expected, "byte {b:#x} at {pos} of {len}");
                }
            }
        }
        assert!(is_clean(b""));
    }

    #[test]
    fn every_control_character_is_escaped() {
        let mut out = String::new();
        let all: String = (0u8..0x80).map(char::from).collect();
        string(&mut out, &all);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, all);
        assert!(!out.bytes().any(|b| b < 0x20), "{out:?}");
    }
}
