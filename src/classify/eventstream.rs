//! Incremental decoder for AWS binary event-stream frames (Bedrock
//! `InvokeModelWithResponseStream` / `ConverseStream`, `application/vnd.amazon.eventstream`).
//!
//! Owns: frame boundaries (prelude: total length, headers length, prelude CRC; headers;
//! payload; message CRC), the `:message-type` / `:event-type` / `:exception-type` headers,
//! and what a frame means for the commit point. It keeps only the headers (bounded) and
//! the payload of exception frames (bounded) or the first bytes of a `chunk` payload;
//! everything else is skipped without copying. CRCs are not verified: the scanner only
//! observes a stream that is passed on untouched, and the client's SDK verifies them. A
//! frame whose lengths are impossible stops the decoding for the rest of the stream.
//! It does not classify (see `rules`); `sse` calls it and turns exceptions into verdicts.

/// Largest headers section decoded; larger ones are skipped (the frame counts as other).
const MAX_HEADERS: usize = 8 * 1024;
/// Largest exception payload kept.
const MAX_EXCEPTION_PAYLOAD: usize = 16 * 1024;
/// Bytes kept from a `chunk` payload: enough for `{"bytes":"` and 64 base64 characters.
const CHUNK_PREFIX: usize = 96;
/// Largest frame accepted (the AWS limit is 16 MiB).
const MAX_FRAME: usize = 16 * 1024 * 1024 + 1024;

/// What one complete frame means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Generated content (a model chunk, `contentBlockStart` / `contentBlockDelta`).
    Content,
    /// The clean end (`messageStop`, an Anthropic `message_stop` chunk).
    Terminal,
    /// An exception or error frame: the exception name and its payload (JSON message).
    Exception { name: String, payload: Vec<u8> },
    /// Anything else.
    Other,
}

#[derive(Debug)]
enum State {
    Prelude,
    Headers { left: usize, payload: usize },
    Payload { left: usize },
    Crc { left: usize },
    Broken,
}

/// The decoder; feed it bytes in any chunking.
#[derive(Debug)]
pub(crate) struct EventStreamDecoder {
    state: State,
    buf: Vec<u8>,
    keep: usize,
    message_type: String,
    event_type: String,
    exception_type: String,
    headers_skipped: bool,
}

// === impl EventStreamDecoder ===

impl EventStreamDecoder {
    pub(crate) fn new() -> Self {
        EventStreamDecoder {
            state: State::Prelude,
            buf: Vec::with_capacity(64),
            keep: 0,
            message_type: String::new(),
            event_type: String::new(),
            exception_type: String::new(),
            headers_skipped: false,
        }
    }

    /// Decodes `chunk`, calling `on_frame` for every frame completed in it.
    pub(crate) fn feed(&mut self, mut chunk: &[u8], on_frame: &mut dyn FnMut(Frame)) {
        while !chunk.is_empty() {
            match self.state {
                State::Broken => return,
                State::Prelude => {
                    let take = (12 - self.buf.len()).min(chunk.len());
                    self.buf.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if self.buf.len() == 12 {
                        let total = be32(&self.buf[0..4]);
                        let headers = be32(&self.buf[4..8]);
                        self.buf.clear();
                        if !(16..=MAX_FRAME).contains(&total) || headers > total - 16 {
                            self.state = State::Broken;
                            return;
                        }
                        self.message_type.clear();
                        self.event_type.clear();
                        self.exception_type.clear();
                        self.headers_skipped = headers > MAX_HEADERS;
                        self.state = State::Headers {
                            left: headers,
                            payload: total - 16 - headers,
                        };
                        self.maybe_advance(on_frame);
                    }
                }
                State::Headers { left, payload } => {
                    let take = left.min(chunk.len());
                    if !self.headers_skipped {
                        self.buf.extend_from_slice(&chunk[..take]);
                    }
                    chunk = &chunk[take..];
                    self.state = State::Headers {
                        left: left - take,
                        payload,
                    };
                    self.maybe_advance(on_frame);
                }
                State::Payload { left } => {
                    let take = left.min(chunk.len());
                    let room = self.keep.saturating_sub(self.buf.len());
                    self.buf.extend_from_slice(&chunk[..take.min(room)]);
                    chunk = &chunk[take..];
                    self.state = State::Payload { left: left - take };
                    self.maybe_advance(on_frame);
                }
                State::Crc { left } => {
                    let take = left.min(chunk.len());
                    chunk = &chunk[take..];
                    self.state = State::Crc { left: left - take };
                    self.maybe_advance(on_frame);
                }
            }
        }
    }

    /// Bytes of buffer held between chunks (capacities), for [`super::SseScanner`].
    pub(crate) fn retained(&self) -> usize {
        self.buf.capacity()
            + self.message_type.capacity()
            + self.event_type.capacity()
            + self.exception_type.capacity()
    }

    /// Moves past sections that are complete (including empty ones).
    fn maybe_advance(&mut self, on_frame: &mut dyn FnMut(Frame)) {
        loop {
            match self.state {
                State::Headers { left: 0, payload } => {
                    if !self.headers_skipped {
                        let headers = std::mem::take(&mut self.buf);
                        self.parse_headers(&headers);
                        self.buf = headers;
                        self.buf.clear();
                    }
                    self.keep = match (self.message_type.as_str(), self.event_type.as_str()) {
                        ("exception" | "error", _) => MAX_EXCEPTION_PAYLOAD,
                        (_, "chunk") => CHUNK_PREFIX,
                        _ => 0,
                    };
                    self.state = State::Payload { left: payload };
                }
                State::Payload { left: 0 } => {
                    let frame = self.frame();
                    self.buf.clear();
                    self.state = State::Crc { left: 4 };
                    on_frame(frame);
                }
                State::Crc { left: 0 } => {
                    self.state = State::Prelude;
                    return;
                }
                _ => return,
            }
        }
    }

    fn frame(&self) -> Frame {
        match self.message_type.as_str() {
            "exception" => Frame::Exception {
                name: self.exception_type.clone(),
                payload: self.buf.clone(),
            },
            "error" => Frame::Exception {
                name: self.exception_type.clone(),
                payload: self.buf.clone(),
            },
            _ => match self.event_type.as_str() {
                "chunk" => chunk_meaning(&self.buf),
                "contentBlockStart" | "contentBlockDelta" => Frame::Content,
                "messageStop" => Frame::Terminal,
                _ => Frame::Other,
            },
        }
    }

    /// Header: name length (u8), name, value type (u8), value. Only string values (type 7)
    /// are read; the others are skipped by their fixed or prefixed size.
    fn parse_headers(&mut self, mut h: &[u8]) {
        while let Some((&name_len, rest)) = h.split_first() {
            let name_len = name_len as usize;
            if rest.len() < name_len + 1 {
                return;
            }
            let name = &rest[..name_len];
            let kind = rest[name_len];
            let rest = &rest[name_len + 1..];
            let fixed = match kind {
                0 | 1 => Some(0),
                2 => Some(1),
                3 => Some(2),
                4 => Some(4),
                5 | 8 => Some(8),
                9 => Some(16),
                _ => None,
            };
            let (value, rest) = match fixed {
                Some(n) if rest.len() >= n => (&rest[..0], &rest[n..]),
                Some(_) => return,
                None => {
                    if rest.len() < 2 {
                        return;
                    }
                    let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    if rest.len() < 2 + n {
                        return;
                    }
                    (&rest[2..2 + n], &rest[2 + n..])
                }
            };
            if kind == 7 {
                let v = String::from_utf8_lossy(value);
                match name {
                    b":message-type" => self.message_type = v.into_owned(),
                    b":event-type" => self.event_type = v.into_owned(),
                    b":exception-type" | b":error-code" => self.exception_type = v.into_owned(),
                    _ => {}
                }
            }
            h = rest;
        }
    }
}

/// A `chunk` payload is `{"bytes":"<base64 of a model event>"}`: decode the first bytes.
/// Anthropic `message_stop` is the end; other Anthropic bookkeeping events are not
/// content; anything else (content blocks, other models' generations) is.
fn chunk_meaning(payload: &[u8]) -> Frame {
    let Some(pos) = memchr::memmem::find(payload, b"\"bytes\":\"") else {
        return Frame::Other;
    };
    let decoded = base64_prefix(&payload[pos + 9..]);
    let starts = |p: &[u8]| decoded.starts_with(p);
    if starts(b"{\"type\":\"message_stop\"") {
        Frame::Terminal
    } else if starts(b"{\"type\":\"content_block_") {
        Frame::Content
    } else if starts(b"{\"type\":\"") {
        Frame::Other
    } else {
        Frame::Content
    }
}

/// Decodes standard base64 up to the first non-alphabet character.
fn base64_prefix(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => break,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes one frame with string headers (CRCs computed, though not checked).
    pub(crate) fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        for (k, v) in headers {
            h.push(k.len() as u8);
            h.extend_from_slice(k.as_bytes());
            h.push(7);
            h.extend_from_slice(&(v.len() as u16).to_be_bytes());
            h.extend_from_slice(v.as_bytes());
        }
        let total = 16 + h.len() + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let c = crc32(&out);
        out.extend_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        let c = crc32(&out);
        out.extend_from_slice(&c.to_be_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn decode_all(bytes: &[u8], step: usize) -> Vec<Frame> {
        let mut d = EventStreamDecoder::new();
        let mut frames = Vec::new();
        for c in bytes.chunks(step) {
            d.feed(c, &mut |f| frames.push(f));
        }
        frames
    }

    #[test]
    fn decodes_chunks_and_exceptions_in_any_chunking() {
        let chunk = |json: &str| {
            let p = format!(
                "{{\"bytes\":\"{}\",\"p\":\"abcdefgh\"}}",
                crate::fuzzing::base64(json.as_bytes())
            );
            encode_frame(
                &[
                    (":event-type", "chunk"),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ],
                p.as_bytes(),
            )
        };
        let mut stream = chunk(r#"{"type":"message_start","message":{}}"#);
        stream.extend(chunk(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        ));
        stream.extend(chunk(r#"{"type":"message_stop"}"#));
        stream.extend(encode_frame(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
            ],
            br#"{"message":"Too many requests"}"#,
        ));
        for step in [1, 3, 7, 4096] {
            let frames = decode_all(&stream, step);
            assert_eq!(frames.len(), 4, "step {step}");
            assert_eq!(frames[0], Frame::Other);
            assert_eq!(frames[1], Frame::Content);
            assert_eq!(frames[2], Frame::Terminal);
            assert_eq!(
                frames[3],
                Frame::Exception {
                    name: "throttlingException".into(),
                    payload: br#"{"message":"Too many requests"}"#.to_vec()
                }
            );
        }
    }

    #[test]
    fn converse_events_and_broken_lengths() {
        let mut s = encode_frame(
            &[
                (":message-type", "event"),
                (":event-type", "contentBlockDelta"),
            ],
            b"{}",
        );
        s.extend(encode_frame(
            &[(":message-type", "event"), (":event-type", "messageStop")],
            b"{}",
        ));
        assert_eq!(decode_all(&s, 5), vec![Frame::Content, Frame::Terminal]);
        // A total length below the minimum stops decoding instead of misreading.
        let bad = [0u8, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3];
        assert!(decode_all(&bad, 1).is_empty());
    }
}
