//! The default (`text`) log line, written straight into the line buffer.
//!
//! Byte for byte tracing-subscriber's default `Full` format without colours:
//! `2026-11-30T02:45:00.123456Z  INFO keygate::proxy::service: request method="POST" status=200`
//! (timestamp, padded level, spans in scope as `name{fields}:`, target, message, then
//! `name=value` with strings in Rust's `Debug` form). Its cost is what differs: there every
//! piece goes through `core::fmt` and a colour wrapper even when no colour is used, and
//! every string through `str`'s `Debug`, one char at a time: 15.7 k instructions per line,
//! more than a fifth of a proxied request. Here plain pushes and `itoa`, and the `Debug` or
//! terminal-escape pass only for the strings that need one.
//!
//! Coloured output (a terminal) and events from the `log` crate (which carry their real
//! target in fields) are left to tracing-subscriber's own formatter. The tests compare the
//! two formatters' output on the same events.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::VisitOutput;
use tracing_subscriber::fmt::format::{
    DefaultVisitor, Format, FormatEvent, FormatFields, Full, Writer,
};
use tracing_subscriber::fmt::time::SystemTime as SubscriberTime;
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::json::{from_log, is_clean, thousandths, timestamp, with_line};

/// The `--log-format text` event format.
#[derive(Default)]
pub(crate) struct TextLine {
    /// tracing-subscriber's formatter, for the cases this one leaves to it.
    reference: Format<Full, SubscriberTime>,
}

impl<S, N> FormatEvent<S, N> for TextLine
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
        if w.has_ansi_escapes() || from_log(event) {
            return self.reference.format_event(ctx, w, event);
        }
        with_line(w, |line| build(line, ctx, event))
    }
}

fn build<S, N>(line: &mut String, ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let meta = event.metadata();
    timestamp(line)?;
    line.push_str(match *meta.level() {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    });
    if let Some(scope) = ctx.event_scope() {
        let mut seen = false;
        for span in scope.from_root() {
            line.push_str(span.metadata().name());
            seen = true;
            let ext = span.extensions();
            if let Some(f) = ext.get::<FormattedFields<N>>() {
                if !f.fields.is_empty() {
                    line.push('{');
                    line.push_str(&f.fields);
                    line.push('}');
                }
            }
            line.push(':');
        }
        if seen {
            line.push(' ');
        }
    }
    line.push_str(meta.target());
    line.push_str(": ");
    let mut fields = Fields {
        line: &mut *line,
        first: true,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    line.push('\n');
    Ok(())
}

/// Writes the fields as tracing-subscriber's `DefaultVisitor` does: space-separated, the
/// message bare, the others `name=value` with the value in its `Debug` form.
struct Fields<'a> {
    line: &'a mut String,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    fn pad(&mut self) {
        if self.first {
            self.first = false;
        } else {
            self.line.push(' ');
        }
    }

    /// Starts a field: the separator, then `name=` (the message has no name).
    fn key(&mut self, field: &Field) {
        self.pad();
        let name = field.name();
        if name != "message" {
            self.line.push_str(name.strip_prefix("r#").unwrap_or(name));
            self.line.push('=');
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        if field.name() == "message" {
            guarded(self.line, value);
        } else {
            debug_str(self.line, value);
        }
    }

    record_bare_scalars!();

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // `Debug` is `Display` with a `.0` on whole numbers (in the range where neither
        // uses an exponent, which covers what `thousandths` takes).
        let start = self.line.len();
        if thousandths(self.line, value) {
            if !self.line[start..].contains('.') {
                self.line.push_str(".0");
            }
        } else {
            let _ = write!(self.line, "{value:?}");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The error and its sources, as tracing-subscriber lays them out: left to it.
        if self.result.is_ok() {
            let mut v = DefaultVisitor::new(Writer::new(&mut *self.line), self.first);
            v.record_error(field, value);
            self.result = v.finish();
            self.first = false;
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.key(field);
            self.result = if field.name() == "message" {
                write!(Guarded(self.line), "{value:?}")
            } else {
                write!(self.line, "{value:?}")
            };
        }
    }
}

/// `s` in `str`'s `Debug` form: quoted as is when it is printable ASCII without `"` or `\`
/// (the form `Debug` gives such a string), else through `Debug` itself.
fn debug_str(line: &mut String, s: &str) {
    if s.is_ascii() && is_clean(s.as_bytes()) {
        line.push('"');
        line.push_str(s);
        line.push('"');
    } else {
        let _ = write!(line, "{s:?}");
    }
}

/// The message as tracing-subscriber writes it: as is, except the characters a terminal
/// would act on (ESC, BEL, BS, FF, DEL and the C1 controls), which are spelled out.
fn guarded(line: &mut String, s: &str) {
    let acts = |b: &u8| matches!(b, 0x07 | 0x08 | 0x0c | 0x1b | 0x7f | 0xc2);
    if !s.as_bytes().iter().any(acts) {
        line.push_str(s);
        return;
    }
    for ch in s.chars() {
        match ch {
            '\x1b' => line.push_str("\\x1b"),
            '\x07' => line.push_str("\\x07"),
            '\x08' => line.push_str("\\x08"),
            '\x0c' => line.push_str("\\x0c"),
            '\x7f' => line.push_str("\\x7f"),
            '\u{80}'..='\u{9f}' => {
                let _ = write!(line, "\\u{{{:x}}}", ch as u32);
            }
            _ => line.push(ch),
        }
    }
}

/// Applies [`guarded`] to whatever is written through it.
struct Guarded<'a>(&'a mut String);

impl fmt::Write for Guarded<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        guarded(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::telemetry::test_support::Buf;

    #[derive(Debug)]
    struct Outer;
    #[derive(Debug)]
    struct Inner;

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("upstream failed: \"badly\"")
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connection reset\x1b[31m")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&Inner)
        }
    }
    impl std::error::Error for Inner {}

    /// The same events through `TextLine` and through tracing-subscriber's default format
    /// (no colours), lines with the timestamp cut off.
    fn both(emit: impl Fn()) -> (Vec<String>, Vec<String>) {
        let run = |ours: bool| {
            let buf = Buf::default();
            let b = tracing_subscriber::fmt()
                .with_writer(buf.clone())
                .with_ansi(false)
                .with_max_level(Level::TRACE);
            if ours {
                tracing::subscriber::with_default(
                    b.event_format(TextLine::default()).finish(),
                    &emit,
                );
            } else {
                tracing::subscriber::with_default(b.finish(), &emit);
            }
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            // A line that does not start with a timestamp continues the event before it
            // (a message with a newline).
            let mut events: Vec<String> = Vec::new();
            for l in text.lines() {
                let stamped = l
                    .get(..27)
                    .is_some_and(|ts| humantime::parse_rfc3339(ts).is_ok());
                match events.last_mut() {
                    Some(last) if !stamped => {
                        last.push('\n');
                        last.push_str(l);
                    }
                    _ => {
                        assert!(stamped, "{l}");
                        events.push(l[27..].to_owned());
                    }
                }
            }
            events
        };
        (run(true), run(false))
    }

    fn emit() {
        let span = tracing::debug_span!("request", method = "POST", path = "/v1/messages");
        let g = span.enter();
        let inner = tracing::info_span!("attempt", n = 2u32);
        let g2 = inner.enter();
        tracing::info!(
            method = "POST",
            path = "/openai/v1/chat/completions",
            provider = "openai",
            credential = "env:OPENAI_API_KEY",
            attempts = 2u32,
            delta = -3i64,
            status = 429u16,
            ok = false,
            latency_ms = 1.25f64,
            whole_ms = 2.0f64,
            zero = 0.0f64,
            neg_zero = -0.0f64,
            tiny = 1e-7f64,
            huge = 1e20f64,
            nan = f64::NAN,
            quoted = "say \"hi\" \\ then",
            control = "tab\there\nnewline \u{1b}[31m red \u{85} nel",
            unicode = "é ✓ \u{301}combining",
            r#type = "raw",
            shown = %"display \"quoted\" \u{1b}",
            debugged = ?Some("x"),
            error = &Outer as &(dyn std::error::Error + 'static),
            "request \"done\"\nline two\ttab \u{1b}[2J \u{9b} é ✓ \\"
        );
        drop(g2);
        drop(g);
        tracing::warn!(target: "keygate::other", "plain");
        tracing::error!(code = 7u64, "with a number");
        tracing::trace!("trace level");
        tracing::debug!(message = 5u64);
        tracing::info!(empty = "", "");
        tracing::warn!(status = 503u16);
    }

    #[test]
    fn lines_match_tracing_subscribers_default_format() {
        let (ours, theirs) = both(emit);
        assert_eq!(ours.len(), 7, "{ours:#?}");
        assert_eq!(ours, theirs);
        // And what the access line looks like.
        assert!(
            ours[0].starts_with(
                "  INFO request{method=\"POST\" path=\"/v1/messages\"}:attempt{n=2}: \
                 keygate::telemetry::text::tests: request \"done\""
            ),
            "{}",
            ours[0]
        );
    }

    #[test]
    fn events_from_the_log_crate_show_their_own_target() {
        let (ours, theirs) = both(crate::telemetry::emit_log_record);
        assert_eq!(ours, theirs);
        assert!(
            ours[0].starts_with("  WARN rustls::client::hs: Sending warning alert CloseNotify"),
            "{ours:?}"
        );
    }

    #[test]
    fn a_field_that_logs_while_formatted_does_not_panic() {
        struct Loud;
        impl fmt::Debug for Loud {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                tracing::info!("from inside Debug");
                f.write_str("loud")
            }
        }
        let (ours, theirs) = both(|| tracing::info!(x = ?Loud, "outer"));
        assert_eq!(ours, theirs);
    }
}
