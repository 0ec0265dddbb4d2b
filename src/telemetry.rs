//! Logging setup: `tracing` with an `EnvFilter` (`RUST_LOG`, default `info`), text or JSON,
//! written in batches by a background thread.
//!
//! Owns only the subscriber and its writer. Lines are formatted on the request's thread and
//! appended to a shared buffer; a writer thread drains it to stderr. Redaction is structural
//! (secrets are `Secret`s, injected headers are sensitive, spans record the path only, never
//! the query): nothing here filters text.
//!
//! The writer is written here rather than taken from `tracing-appender`, whose worker wakes
//! up for every line (a channel message, a `Vec` per line, a futex wake and, once the queue
//! is drained, a `write(2)`): at proxy rates that cost more CPU than the proxying. Here a
//! request thread only copies its line under a short lock; the writer thread is woken by the
//! first line into an empty buffer, lingers [`LINGER`] to collect what follows, and writes
//! the batch with one syscall — the same trade as nginx's `access_log … buffer= flush=`.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The `Visit` methods the JSON and text line formats share: after the field's key
/// (`self.key(field)`), an integer in decimal and a boolean as `true`/`false` into
/// `self.line`. `Visit` is tracing's trait, so each format's impl has to spell these out;
/// this is the one copy.
macro_rules! record_bare_scalars {
    () => {
        fn record_u64(&mut self, field: &Field, value: u64) {
            self.key(field);
            self.line.push_str(itoa::Buffer::new().format(value));
        }

        fn record_i64(&mut self, field: &Field, value: i64) {
            self.key(field);
            self.line.push_str(itoa::Buffer::new().format(value));
        }

        fn record_bool(&mut self, field: &Field, value: bool) {
            self.key(field);
            self.line.push_str(if value { "true" } else { "false" });
        }
    };
}

mod json;
mod text;

/// How long the writer waits after the first line of a batch: bounds how late a line
/// reaches stderr, and sets how many syscalls a busy proxy spends on logging.
const LINGER: Duration = Duration::from_millis(20);
/// A batch this large is written at once, without waiting out [`LINGER`].
const HIGH_WATER: usize = 64 * 1024;
/// Most bytes queued; under an overload that stderr cannot absorb, further lines are
/// dropped (and counted) instead of growing memory or slowing requests down.
const MAX_QUEUED: usize = 4 * 1024 * 1024;

/// Keeps the writer thread alive; dropping it writes what is queued and joins the thread.
pub struct LogGuard {
    shared: Option<Arc<Shared>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.lock().closed = true;
            shared.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Installs the global subscriber (once; later calls are ignored). Keep the guard for the
/// life of the process.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, shared) = BatchWriter::new();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.event_format(text::TextLine::default()).try_init(),
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::JsonLine::default())
            .try_init(),
    };
    if installed.is_err() {
        return LogGuard {
            shared: None,
            thread: None,
        };
    }
    let drain = shared.clone();
    let thread = std::thread::Builder::new()
        .name("keygate-log".into())
        .spawn(move || drain.run(std::io::stderr()));
    match thread {
        Ok(t) => LogGuard {
            shared: Some(shared),
            thread: Some(t),
        },
        Err(_) => {
            // No writer thread: lines go straight to stderr.
            shared.lock().closed = true;
            LogGuard {
                shared: None,
                thread: None,
            }
        }
    }
}

/// The queue between request threads and the writer thread.
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    dropped: u64,
    /// No writer thread (any more): lines are written directly.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock cannot leave the buffer half-written in a way
        // that matters for a log: keep going.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, line: &[u8]) {
        let mut p = self.lock();
        if p.closed {
            drop(p);
            let _ = std::io::stderr().write_all(line);
            return;
        }
        if p.buf.len() + line.len() > MAX_QUEUED {
            p.dropped += 1;
            return;
        }
        let before = p.buf.len();
        p.buf.extend_from_slice(line);
        let wake = before == 0 || (before < HIGH_WATER && p.buf.len() >= HIGH_WATER);
        drop(p);
        if wake {
            self.wake.notify_one();
        }
    }

    /// The writer thread: waits for a first line, lingers, writes the batch, repeats; on
    /// close, writes what is left and returns.
    fn run(&self, mut out: impl Write) {
        let mut batch = Vec::with_capacity(HIGH_WATER);
        loop {
            let mut p = self.lock();
            while p.buf.is_empty() && !p.closed {
                p = self.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
            }
            if !p.closed && p.buf.len() < HIGH_WATER {
                p = self
                    .wake
                    .wait_timeout(p, LINGER)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut p.buf, &mut batch);
            let dropped = std::mem::take(&mut p.dropped);
            let closed = p.closed;
            drop(p);
            let _ = out.write_all(&batch);
            if dropped > 0 {
                let _ = writeln!(
                    out,
                    "keygate: {dropped} log lines dropped (stderr could not keep up)"
                );
            }
            let _ = out.flush();
            batch.clear();
            // One burst must not pin a large buffer for the life of the process.
            if batch.capacity() > 4 * HIGH_WATER {
                batch = Vec::with_capacity(HIGH_WATER);
            }
            if closed && self.lock().buf.is_empty() {
                return;
            }
        }
    }
}

/// `MakeWriter` handing out writers into the shared queue.
#[derive(Clone)]
struct BatchWriter(Arc<Shared>);

impl BatchWriter {
    fn new() -> (BatchWriter, Arc<Shared>) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        (BatchWriter(shared.clone()), shared)
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter(&self.0)
    }
}

/// The fmt layer writes each formatted event with one `write_all`, so a line is appended
/// whole and lines of different threads never interleave.
struct LineWriter<'a>(&'a Shared);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the formatters' tests share.
#[cfg(test)]
mod test_support {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    /// A log destination that keeps everything written to it.
    #[derive(Clone, Default)]
    pub(super) struct Buf(pub(super) Arc<Mutex<Vec<u8>>>);

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
}

/// Emits a `log` crate record through tracing-log's bridge, as a dependency logging with
/// `log` (rustls) does once the subscriber is installed.
#[cfg(test)]
fn emit_log_record() {
    // One statement: the record borrows the `format_args!` temporary.
    tracing_log::format_trace(
        &log::Record::builder()
            .target("rustls::client::hs")
            .level(log::Level::Warn)
            .module_path_static(Some("rustls::client::hs"))
            .file_static(Some("src/client/hs.rs"))
            .line(Some(42))
            .args(format_args!("Sending warning alert {}", "CloseNotify"))
            .build(),
    )
    .expect("dispatched");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that records every `write` call.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn start() -> (BatchWriter, Arc<Shared>, Sink, JoinHandle<()>) {
        let (w, shared) = BatchWriter::new();
        let sink = Sink::default();
        let (s, out) = (shared.clone(), sink.clone());
        let t = std::thread::spawn(move || s.run(out));
        (w, shared, sink, t)
    }

    fn close(shared: &Shared, t: JoinHandle<()>) {
        shared.lock().closed = true;
        shared.wake.notify_one();
        t.join().unwrap();
    }

    #[test]
    fn lines_are_written_in_order_in_few_batches_and_flushed_on_close() {
        let (w, shared, sink, t) = start();
        for i in 0..1000 {
            w.make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        close(&shared, t);
        let writes = sink.0.lock().unwrap().clone();
        let all: Vec<u8> = writes.concat();
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(all).unwrap(), expected);
        assert!(
            writes.len() < 100,
            "1000 lines were batched, not written one by one: {} writes",
            writes.len()
        );
    }

    #[test]
    fn a_lone_line_reaches_the_output_without_close() {
        let (w, shared, sink, t) = start();
        w.make_writer().write_all(b"hello\n").unwrap();
        // Up to 10 s: the line must come out on its own, by the linger timer.
        for _ in 0..2000 {
            if !sink.0.lock().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.0.lock().unwrap().concat(), b"hello\n");
        close(&shared, t);
    }

    #[test]
    fn overflow_drops_lines_and_says_how_many() {
        let (w, shared) = BatchWriter::new();
        // No writer thread yet: the queue fills up to its cap.
        let line = vec![b'x'; 1023];
        let mut line = line;
        line.push(b'\n');
        let fits = MAX_QUEUED / line.len();
        for _ in 0..fits + 10 {
            w.make_writer().write_all(&line).unwrap();
        }
        assert!(shared.lock().buf.len() <= MAX_QUEUED);
        assert_eq!(shared.lock().dropped, 10);
        let sink = Sink::default();
        shared.lock().closed = true;
        shared.run(sink.clone());
        let out = sink.0.lock().unwrap().concat();
        assert_eq!(
            out.len(),
            fits * line.len() + "keygate: 10 log lines dropped (stderr could not keep up)\n".len()
        );
        assert!(String::from_utf8_lossy(&out)
            .ends_with("keygate: 10 log lines dropped (stderr could not keep up)\n"));
    }
}
