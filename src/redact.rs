//! Redaction of a secret inside text keygate passes on: upstream error answers (SPEC §8) and
//! a token endpoint's error text.
//!
//! Owns [`Redactor`]: every occurrence of the secret (as sent: raw, and percent-encoded when
//! that differs, for query-string credentials) is replaced by a fixed marker — `…` and the
//! last four characters, [`Secret::masked`] — in a whole buffer, in a stream of chunks (a
//! bounded carry-over catches an occurrence split across chunks), or in header values.
//! It does not own when to redact: the proxy builds one only for an answer it already
//! treats as an error (status ≥ 400, an error event before the commit point), never for a
//! success, so a 200 costs nothing.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use memchr::memmem::Finder;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::secret::Secret;

/// Shorter values are not searched for: they would match ordinary text, and nothing that
/// short is a credential.
pub const MIN_SECRET_LEN: usize = 8;

/// Escaped in a query value: everything but RFC 3986 unreserved characters.
const UNRESERVED_KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Finds and replaces one secret's wire forms.
pub struct Redactor {
    needles: Vec<Finder<'static>>,
    marker: Bytes,
    // Longest needle minus one: the tail of a chunk that may start an occurrence.
    keep: usize,
    carry: Vec<u8>,
}

// === impl Redactor ===

impl Redactor {
    /// A redactor for `secret`. Returns `None` for: a secret shorter than
    /// [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &Secret) -> Option<Self> {
        Self::for_values(&[secret.expose()], Bytes::from(secret.masked()))
    }

    /// A redactor for several values sharing one marker (each also percent-encoded when
    /// that differs). Returns `None` when none is at least [`MIN_SECRET_LEN`] bytes.
    pub fn for_values(values: &[&str], marker: Bytes) -> Option<Self> {
        let mut forms: Vec<Vec<u8>> = Vec::with_capacity(values.len() * 2);
        for v in values.iter().filter(|v| v.len() >= MIN_SECRET_LEN) {
            // As a query value is sent (`inject`), and as a form value is (everything
            // but letters and digits escaped).
            let query = utf8_percent_encode(v, UNRESERVED_KEPT).to_string();
            let form = utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
            for form in [v.as_bytes().to_vec(), query.into_bytes(), form.into_bytes()] {
                if !forms.contains(&form) {
                    forms.push(form);
                }
            }
        }
        if forms.is_empty() {
            return None;
        }
        // Longest first: at one position the longer form wins (a value and its encoding
        // may share a prefix).
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        let keep = forms[0].len() - 1;
        Some(Redactor {
            needles: forms.iter().map(|f| Finder::new(f).into_owned()).collect(),
            marker,
            keep,
            carry: Vec::new(),
        })
    }

    /// The earliest occurrence in `hay`: (start, end).
    fn find(&self, hay: &[u8]) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for n in &self.needles {
            if let Some(s) = n.find(hay) {
                if best.is_none_or(|(b, _)| s < b) {
                    best = Some((s, s + n.needle().len()));
                }
            }
        }
        best
    }

    /// Copies `src` into `out` up to the end of its last occurrence, each occurrence
    /// replaced by the marker; returns that end (0 when there is none).
    fn replace_into(&self, src: &[u8], out: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        while let Some((s, e)) = self.find(&src[pos..]) {
            out.extend_from_slice(&src[pos..pos + s]);
            out.extend_from_slice(&self.marker);
            pos += e;
        }
        pos
    }

    /// `data` with every occurrence replaced, or `None` when there is none (no copy made).
    pub fn redact_all(&self, data: &[u8]) -> Option<Vec<u8>> {
        self.find(data)?;
        let mut out = Vec::with_capacity(data.len());
        let pos = self.replace_into(data, &mut out);
        out.extend_from_slice(&data[pos..]);
        Some(out)
    }

    /// The next chunk of a stream, redacted. Up to the longest form's length minus one is
    /// held back (it may start an occurrence that the next chunk completes); [`finish`]
    /// returns it.
    ///
    /// [`finish`]: Redactor::finish
    pub fn push(&mut self, data: &[u8]) -> Bytes {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        let mut out = Vec::with_capacity(buf.len());
        let pos = self.replace_into(&buf, &mut out);
        // Whatever follows the last occurrence and lies within `keep` bytes of the end may
        // begin one: an occurrence starting earlier would have fitted and been found.
        let cut = pos.max(buf.len().saturating_sub(self.keep));
        out.extend_from_slice(&buf[pos..cut]);
        buf.drain(..cut);
        self.carry = buf;
        Bytes::from(out)
    }

    /// The held-back tail at the clean end of a stream (it holds no whole occurrence).
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.carry))
    }

    /// Forgets the held-back tail: a stream that broke may have stopped inside the secret,
    /// and a prefix of it must not go out either.
    pub fn discard(&mut self) {
        self.carry.clear();
    }

    /// Replaces every occurrence in every header value (sensitivity kept).
    pub fn headers(&self, headers: &mut HeaderMap) {
        for v in headers.values_mut() {
            let Some(new) = self.redact_all(v.as_bytes()) else {
                continue;
            };
            // The marker is `…` plus the tail of a value that was itself valid on the wire,
            // so the result is a valid value; never keep the secret should it not be.
            let mut nv =
                HeaderValue::from_bytes(&new).unwrap_or(HeaderValue::from_static("[REDACTED]"));
            nv.set_sensitive(v.is_sensitive());
            *v = nv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-test-redaction-key-0123-WXYZ";

    fn redactor() -> Redactor {
        Redactor::new(&Secret::new(KEY)).expect("long enough")
    }

    #[test]
    fn replaces_every_occurrence_with_the_masked_form() {
        let r = redactor();
        let text = format!("a {KEY} b {KEY}{KEY} c");
        let out = r.redact_all(text.as_bytes()).expect("found");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "a …WXYZ b …WXYZ…WXYZ c"
        );
        assert!(
            r.redact_all(b"nothing here").is_none(),
            "no copy without a match"
        );
    }

    #[test]
    fn short_values_are_not_searched() {
        assert!(Redactor::new(&Secret::new("abc")).is_none());
    }

    #[test]
    fn the_percent_encoded_form_is_redacted_too() {
        let r = Redactor::new(&Secret::new("key+with/odd=chars")).expect("long");
        let out = r
            .redact_all(b"url ?key=key%2Bwith%2Fodd%3Dchars and key+with/odd=chars")
            .expect("found");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "url ?key=…hars and …hars"
        );
        let r = Redactor::new(&Secret::new("sk-dash_key.with~unreserved")).expect("long");
        for sent in [
            "sk-dash_key.with~unreserved",
            "sk%2Ddash%5Fkey%2Ewith%7Eunreserved",
        ] {
            let out = r.redact_all(sent.as_bytes()).expect("found");
            assert_eq!(out, "…rved".as_bytes());
        }
    }

    #[test]
    fn a_stream_gives_the_same_answer_however_it_is_split() {
        let text = format!("{{\"m\":\"{KEY} x {KEY}\"}} tail {}", &KEY[..10]);
        let whole = String::from_utf8(redactor().redact_all(text.as_bytes()).expect("found"))
            .expect("utf8");
        for size in [1, 2, 3, 7, 16, 31, 64, text.len()] {
            let mut r = redactor();
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(size) {
                out.extend_from_slice(&r.push(chunk));
            }
            out.extend_from_slice(&r.finish());
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                whole,
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn a_broken_stream_never_sends_a_prefix_of_the_secret() {
        let mut r = redactor();
        let out = r.push(format!("ok {}", &KEY[..KEY.len() - 1]).as_bytes());
        r.discard();
        assert!(
            !String::from_utf8_lossy(&out).contains(&KEY[..8]),
            "{out:?}"
        );
    }

    #[test]
    fn header_values_are_redacted_and_stay_sensitive() {
        let r = redactor();
        let mut h = HeaderMap::new();
        h.insert("x-echo", HeaderValue::from_str(KEY).expect("value"));
        let mut s = HeaderValue::from_str(&format!("Bearer realm=\"{KEY}\"")).expect("value");
        s.set_sensitive(true);
        h.append("www-authenticate", s);
        h.append("www-authenticate", HeaderValue::from_static("Basic"));
        r.headers(&mut h);
        assert_eq!(h["x-echo"].as_bytes(), "…WXYZ".as_bytes());
        let all: Vec<_> = h.get_all("www-authenticate").iter().collect();
        assert_eq!(all[0].as_bytes(), "Bearer realm=\"…WXYZ\"".as_bytes());
        assert!(all[0].is_sensitive());
        assert_eq!(all[1], "Basic");
    }
}
