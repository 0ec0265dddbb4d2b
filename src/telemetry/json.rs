//! The JSON log line, written straight into the line buffer.
//!
//! Same shape as tracing-subscriber's flattened JSON (`timestamp`, `level`, the event's
//! fields, `target`, then the `spans` in scope, root first), without its cost: there the
//! line goes through serde's map serializer, each field through a `Serialize` wrapper and
//! each timestamp digit through `core::fmt` — about 2 µs of a request's CPU. Here strings
//! are copied with a single escaping scan, integers go through `itoa`, and the timestamp
//! through `humantime`'s fixed-width RFC 3339 writer. Written here because no crate offers
//! a faster `FormatEvent`; the escaping is JSON's (RFC 8259 §7), nothing more.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The `--log-format json` event format (span fields are stored by `JsonFields`).
pub(crate) struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(
            w,
            "{{\"timestamp\":\"{}\",\"level\":\"{}\"",
            humantime::format_rfc3339_micros(SystemTime::now()),
            meta.level().as_str()
        )?;
        let mut fields = Fields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        string(&mut w, meta.target())?;
        if let Some(scope) = ctx.event_scope() {
            let mut first = true;
            for span in scope.from_root() {
                w.write_str(if first { ",\"spans\":[" } else { "," })?;
                first = false;
                w.write_str("{\"name\":")?;
                string(&mut w, span.name())?;
                let ext = span.extensions();
                // `JsonFields` keeps a span's fields as one JSON object: splice its members.
                let members = ext
                    .get::<FormattedFields<N>>()
                    .and_then(|f| f.fields.trim().strip_prefix('{'))
                    .and_then(|f| f.strip_suffix('}'))
                    .filter(|m| !m.is_empty());
                if let Some(m) = members {
                    w.write_char(',')?;
                    w.write_str(m)?;
                }
                w.write_char('}')?;
            }
            if !first {
                w.write_char(']')?;
            }
        }
        w.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`.
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.w.write_char(',')?;
        string(self.w, field.name())?;
        self.w.write_char(':')
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.w));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |w| string(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // Rust's `Display` gives the shortest round-trip form, as serde_json does; JSON has
        // no NaN or infinity.
        self.put(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                w.write_str("null")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, |w| display(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

fn display(w: &mut Writer<'_>, value: &dyn fmt::Display) -> fmt::Result {
    w.write_char('"')?;
    write!(Escaped(w), "{value}")?;
    w.write_char('"')
}

/// A JSON string literal.
fn string(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    escape_into(w, s)?;
    w.write_char('"')
}

/// Escapes whatever is written through it (for `Debug`/`Display` output).
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s)
    }
}

/// String contents with `"`, `\` and control characters escaped; runs without them are
/// copied whole.
fn escape_into(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        // Only ASCII bytes are escaped, so `i` is a char boundary.
        w.write_str(&s[start..i])?;
        if esc.is_empty() {
            write!(w, "\\u{b:04x}")?;
        } else {
            w.write_str(esc)?;
        }
        start = i + 1;
    }
    w.write_str(&s[start..])
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{json, Value};
    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

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
            .event_format(JsonLine)
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
    fn every_control_character_is_escaped() {
        let mut out = String::new();
        let all: String = (0u8..0x80).map(char::from).collect();
        string(&mut out, &all).unwrap();
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, all);
        assert!(!out.bytes().any(|b| b < 0x20), "{out:?}");
    }
}
