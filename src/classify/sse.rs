//! Incremental scanner for a 2xx streamed answer (SPEC §7 "stream commit point").
//!
//! Owns: splitting a `text/event-stream` body into lines and events in any chunking, and
//! reporting the three things the proxy needs — the first content-bearing event (the commit
//! point), error events with their [`Verdict`], and the terminal event — plus AWS binary
//! event-stream frames (Bedrock), recognised by their first byte being `0x00`, which a text
//! stream never starts with. It does not hold the stream back, forward it, or decide what
//! to do with an error (the proxy does).
//!
//! Cost: line ends are found with `memchr`; a line that fits in a chunk is read in place;
//! only a partial line is carried over, at most [`LINE_LIMIT`] bytes (a longer line is
//! dropped whole, the same way in every chunking). JSON is parsed only for error events,
//! for data lines before the commit point of a data-only stream (to see whether the chunk
//! carries content: read by serde into four yes/no answers, see `chunk`), and for later
//! data lines that contain `"error"`.
//!
//! What counts (decisions):
//! - Anthropic: `content_block_start` / `content_block_delta` are content; `message_stop`
//!   is terminal; `event: error` is an error.
//! - OpenAI chat (and compatibles, OpenRouter): a chunk is content when some
//!   `choices[].delta` has a field other than `role` with a non-empty value. The role-only
//!   first chunk (`{"role":"assistant","content":""}`) is **not** content: committing on it
//!   would forward bytes before an error the provider may still send instead of text.
//!   `data: [DONE]` is terminal; a top-level `error` object, or `finish_reason: "error"`,
//!   is an error.
//! - OpenAI Responses: any `response.*.delta` event is content; `response.completed` /
//!   `response.incomplete` are terminal; `event: error` and `response.failed` are errors.
//! - Gemini: a candidate with a non-empty `content.parts` is content; a candidate with a
//!   `finishReason` is terminal.
//! - Cohere v2: `content-*` / `tool-*` events are content, `message-end` is terminal.
//! - Any other named event is read only when its data mentions `"error"`, and is an
//!   error only with a top-level `error` object. `event: message` is the default type.
//! - A data-only stream of unknown shape is probed (JSON-parsed) for at most 32 chunks.
//! - Bedrock event-stream: `chunk` frames (other than Anthropic bookkeeping events) and
//!   `contentBlockStart`/`contentBlockDelta` are content; `messageStop` and an Anthropic
//!   `message_stop` chunk are terminal; exception frames are classified by their
//!   `:exception-type` (`throttlingException` → rate limit, …) and payload message.
//!
//! Events are dispatched at their blank line, as the SSE format says; [`SseScanner::finish`]
//! dispatches an event left open when the stream ends.

use memchr::memmem;
use serde_json::Value;

use super::eventstream::{EventStreamDecoder, Frame};
use super::fields::{aws_name, ErrorFields};
use super::rules::{self, Family};
use super::{hint, Reason, Verdict};

mod chunk;

/// Longest line kept across chunks; a longer line is dropped whole.
pub const LINE_LIMIT: usize = 16 * 1024;

/// Data-only chunks parsed before the commit point while the stream's shape is still
/// unknown; past it, only chunks that mention `"error"` are parsed.
const PROBE_BUDGET: u32 = 32;

/// What completed in one fed chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// The stream's first content-bearing event completed in this chunk (reported once per
    /// stream): the commit point.
    pub first_content: bool,
    /// The first error event that completed in this chunk, if any.
    pub error: Option<StreamError>,
    /// A terminal event (clean end of the answer) completed in this chunk.
    pub terminal: bool,
}

/// An error event inside a 2xx stream, classified as if it came in a non-2xx answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamError {
    /// Reason and hint (from the error object: `RetryInfo` or the message; the response's
    /// headers are the caller's, see [`super::retry_hint`]).
    pub verdict: Verdict,
    /// Content had already been seen before this error: the stream is committed and the
    /// error can no longer be retried transparently.
    pub after_content: bool,
}

/// Incremental scanner for one 2xx streamed answer. Feed it every chunk, in order.
#[derive(Debug)]
pub struct SseScanner {
    family: Family,
    mode: Mode,
    carry: Vec<u8>,
    dropping: bool,
    block: Block,
    flavor: Flavor,
    saw_content: bool,
    saw_terminal: bool,
    first_error: Option<Verdict>,
    probe_budget: u32,
}

/// Searchers built once per process: a stream only borrows them.
static ERROR_FINDER: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"error\""));
static FINISH_FINDER: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"finishReason\""));

#[derive(Debug)]
enum Mode {
    Undecided,
    Sse,
    EventStream(EventStreamDecoder),
}

/// What a data-only stream turned out to be (from its first parsed chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Unknown,
    Chat,
    Gemini,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// No `event:` line (and no leading `"type"`).
    Unnamed,
    Content,
    Terminal,
    Error,
    ResponseFailed,
    Other,
}

#[derive(Debug)]
struct Block {
    kind: Kind,
    named: bool,
    has_data: bool,
    done: bool,
    finish: bool,
    keep: bool,
    overflow: bool,
    data: Vec<u8>,
}

// === impl SseScanner ===

impl SseScanner {
    /// A scanner for one answer of `provider` (its id; used for per-provider wording).
    pub fn new(provider: &str) -> Self {
        SseScanner {
            family: Family::of(provider),
            mode: Mode::Undecided,
            carry: Vec::new(),
            dropping: false,
            block: Block::new(),
            flavor: Flavor::Unknown,
            saw_content: false,
            saw_terminal: false,
            first_error: None,
            probe_budget: PROBE_BUDGET,
        }
    }

    /// Feeds the next chunk; returns the events that completed in it that matter.
    pub fn feed(&mut self, chunk: &[u8]) -> ScanResult {
        let mut out = ScanResult::default();
        if chunk.is_empty() {
            return out;
        }
        if matches!(self.mode, Mode::Undecided) {
            self.mode = if chunk[0] == 0 {
                Mode::EventStream(EventStreamDecoder::new())
            } else {
                Mode::Sse
            };
        }
        if let Mode::EventStream(dec) = &mut self.mode {
            let mut frames = Vec::new();
            dec.feed(chunk, &mut |f| frames.push(f));
            for f in frames {
                self.on_frame(f, &mut out);
            }
            return out;
        }
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let piece = &rest[..nl];
            rest = &rest[nl + 1..];
            if self.dropping {
                self.dropping = false;
                self.carry.clear();
                self.on_dropped_line();
            } else if self.carry.is_empty() {
                if piece.len() > LINE_LIMIT {
                    self.on_dropped_line();
                } else {
                    self.on_line(piece, &mut out);
                }
            } else if self.carry.len() + piece.len() > LINE_LIMIT {
                self.carry.clear();
                self.on_dropped_line();
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(piece);
                self.on_line(&line, &mut out);
                line.clear();
                self.carry = line;
            }
        }
        if !rest.is_empty() && !self.dropping {
            if self.carry.len() + rest.len() > LINE_LIMIT {
                self.carry.clear();
                self.dropping = true;
            } else {
                self.carry.extend_from_slice(rest);
            }
        }
        out
    }

    /// Ends the stream: reads a last line without its newline and dispatches an event left
    /// open. Feeding after this starts a new event.
    pub fn finish(&mut self) -> ScanResult {
        let mut out = ScanResult::default();
        if matches!(self.mode, Mode::Sse) {
            if self.dropping {
                self.dropping = false;
                self.on_dropped_line();
            } else if !self.carry.is_empty() {
                let line = std::mem::take(&mut self.carry);
                self.on_line(&line, &mut out);
            }
            self.dispatch(&mut out);
        }
        out
    }

    /// Whether a content-bearing event has been seen (the stream is committed).
    pub fn saw_content(&self) -> bool {
        self.saw_content
    }

    /// Whether a terminal event has been seen (the answer ended cleanly).
    pub fn saw_terminal(&self) -> bool {
        self.saw_terminal
    }

    /// The first error event of the stream, if any.
    pub fn first_error(&self) -> Option<Verdict> {
        self.first_error
    }

    /// Bytes of buffer the scanner holds between chunks (capacities): what the memory bound
    /// of the module docs is about. For `crate::fuzzing`.
    pub(crate) fn retained(&self) -> usize {
        let decoder = match &self.mode {
            Mode::EventStream(d) => d.retained(),
            Mode::Undecided | Mode::Sse => 0,
        };
        self.carry.capacity() + self.block.data.capacity() + decoder
    }

    fn on_line(&mut self, line: &[u8], out: &mut ScanResult) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return, // comment (": OPENROUTER PROCESSING", keep-alives)
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => self.on_data(value),
            // `message` is the default event type: the same as no `event:` line.
            b"event" if value != b"message" => {
                self.block.kind = kind_of(value);
                self.block.named = true;
            }
            _ => {}
        }
    }

    fn on_data(&mut self, value: &[u8]) {
        let b = &mut self.block;
        b.has_data = true;
        if !b.named {
            if value == b"[DONE]" {
                b.done = true;
                return;
            }
            if b.kind == Kind::Unnamed {
                if let Some(t) = leading_type(value) {
                    b.kind = kind_of(t);
                }
            }
        }
        let keep = match b.kind {
            Kind::Error | Kind::ResponseFailed => true,
            Kind::Unnamed => {
                let probing =
                    !self.saw_content && (self.probe_budget > 0 || self.flavor != Flavor::Unknown);
                if probing || ERROR_FINDER.find(value).is_some() {
                    true
                } else {
                    if self.flavor == Flavor::Gemini && FINISH_FINDER.find(value).is_some() {
                        b.finish = true;
                    }
                    false
                }
            }
            // An unknown named event is read only for a top-level error object.
            Kind::Other => ERROR_FINDER.find(value).is_some(),
            Kind::Content | Kind::Terminal => false,
        };
        if keep {
            b.keep = true;
            if b.data.len() + value.len() + 1 > LINE_LIMIT {
                b.overflow = true;
            } else {
                if !b.data.is_empty() {
                    b.data.push(b'\n');
                }
                b.data.extend_from_slice(value);
            }
        }
    }

    fn on_dropped_line(&mut self) {
        self.block.has_data = true;
        self.block.overflow = true;
    }

    fn dispatch(&mut self, out: &mut ScanResult) {
        let block = std::mem::replace(&mut self.block, Block::new());
        if !block.has_data && !block.named {
            self.block.data = block.data;
            return;
        }
        match block.kind {
            Kind::Content => self.on_content(out),
            Kind::Terminal => self.on_terminal(out),
            Kind::Error => {
                let f = ErrorFields::from_body(&block.data);
                self.on_error(&f, out);
            }
            Kind::ResponseFailed => {
                let f = match serde_json::from_slice::<Value>(&block.data) {
                    Ok(v) => ErrorFields::from_error_value(
                        v.pointer("/response/error").unwrap_or(&Value::Null),
                    ),
                    Err(_) => ErrorFields::from_body(&block.data),
                };
                self.on_error(&f, out);
            }
            Kind::Unnamed => {
                if block.done {
                    self.on_terminal(out);
                } else if block.keep && !block.overflow {
                    self.on_json_chunk(&block.data, out);
                }
                if block.finish {
                    self.on_terminal(out);
                }
            }
            Kind::Other => {
                if block.keep && !block.overflow {
                    self.on_error_chunk(&block.data, out);
                }
            }
        }
        let mut data = block.data;
        data.clear();
        self.block.data = data;
    }

    /// A chunk of a named event that mentions `"error"`: an error only when the chunk
    /// has a top-level `error` object.
    fn on_error_chunk(&mut self, data: &[u8], out: &mut ScanResult) {
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            if v.get("error").is_some_and(|e| !e.is_null()) {
                self.on_error(&ErrorFields::from_root_value(&v), out);
            }
        }
    }

    /// A data-only chunk: error, content, or Gemini terminal.
    fn on_json_chunk(&mut self, data: &[u8], out: &mut ScanResult) {
        if !self.saw_content && self.flavor == Flavor::Unknown {
            self.probe_budget = self.probe_budget.saturating_sub(1);
        }
        let Some(shape) = chunk::read(data) else {
            return;
        };
        if shape.error {
            // Rare: the error's fields are read from the whole chunk.
            if let Ok(v) = serde_json::from_slice::<Value>(data) {
                self.on_error(&ErrorFields::from_root_value(&v), out);
            }
            return;
        }
        if let Some(choices) = shape.choices {
            self.flavor = Flavor::Chat;
            if choices.error {
                self.on_error(&ErrorFields::default(), out);
            } else if choices.content {
                self.on_content(out);
            }
            return;
        }
        if let Some(cands) = shape.candidates {
            self.flavor = Flavor::Gemini;
            if cands.content {
                self.on_content(out);
            }
            if cands.finished {
                self.on_terminal(out);
            }
        }
    }

    fn on_frame(&mut self, frame: Frame, out: &mut ScanResult) {
        match frame {
            Frame::Content => self.on_content(out),
            Frame::Terminal => self.on_terminal(out),
            Frame::Exception { name, payload } => {
                let mut f = ErrorFields::from_body(&payload);
                f.aws_type = aws_name(&name);
                self.on_error(&f, out);
            }
            Frame::Other => {}
        }
    }

    fn on_content(&mut self, out: &mut ScanResult) {
        if !self.saw_content {
            self.saw_content = true;
            out.first_content = true;
        }
    }

    fn on_terminal(&mut self, out: &mut ScanResult) {
        self.saw_terminal = true;
        out.terminal = true;
    }

    fn on_error(&mut self, f: &ErrorFields, out: &mut ScanResult) {
        let verdict = Verdict {
            reason: if f.is_json || !f.message.is_empty() || !f.aws_type.is_empty() {
                rules::decide(None, self.family, f)
            } else {
                Reason::Unknown
            },
            hint: hint::body_hint(f),
        };
        if self.first_error.is_none() {
            self.first_error = Some(verdict);
        }
        if out.error.is_none() {
            out.error = Some(StreamError {
                verdict,
                after_content: self.saw_content,
            });
        }
    }
}

// === impl Block ===

impl Block {
    fn new() -> Self {
        Block {
            kind: Kind::Unnamed,
            named: false,
            has_data: false,
            done: false,
            finish: false,
            keep: false,
            overflow: false,
            data: Vec::new(),
        }
    }
}

fn kind_of(name: &[u8]) -> Kind {
    match name {
        b"content_block_start" | b"content_block_delta" => Kind::Content,
        // Cohere v2 chat streams.
        b"content-start" | b"content-delta" | b"tool-plan-delta" | b"tool-call-start"
        | b"tool-call-delta" => Kind::Content,
        b"message_stop" | b"response.completed" | b"response.incomplete" | b"message-end" => {
            Kind::Terminal
        }
        b"error" => Kind::Error,
        b"response.failed" => Kind::ResponseFailed,
        n if n.starts_with(b"response.") && n.ends_with(b".delta") => Kind::Content,
        _ => Kind::Other,
    }
}

/// `{"type":"name"` or `{"type": "name"` at the start of a data line.
fn leading_type(v: &[u8]) -> Option<&[u8]> {
    let rest = v
        .strip_prefix(b"{\"type\":\"")
        .or_else(|| v.strip_prefix(b"{\"type\": \""))?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// An OpenAI delta carries content when a field other than `role` has a non-empty value.
#[cfg(test)]
mod tests;
