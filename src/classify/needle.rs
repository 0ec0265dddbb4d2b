//! Substring search of fixed needles in short texts, with a cheap pre-check.
//!
//! Owns: [`Needle`] (a searcher built once plus the byte pairs of the needle) and [`Hay`]
//! (a text plus the byte pairs it contains). It does not know any marker list (see
//! `rules`).
//!
//! Why: the rules look for ~120 needles in each message, and most are absent. Running
//! every searcher over the text was a third of the classifier's time; a needle with a
//! byte pair the text lacks cannot occur in it, and that is four AND instructions to
//! check. Texts are short (messages are capped at 4 KiB and usually a few hundred bytes),
//! so their 256-bit pair set stays sparse and rules out nearly every absent needle.

use memchr::memmem::Finder;

/// A needle to search for: its searcher and its byte pairs.
pub(crate) struct Needle {
    finder: Finder<'static>,
    pairs: Pairs,
}

/// A text to search in, with the set of byte pairs it contains.
pub(crate) struct Hay<'a> {
    text: &'a [u8],
    pairs: Pairs,
}

/// A set of adjacent byte pairs, hashed to 256 bits. It may hold pairs that are not in
/// the text (hash collisions), never lacks one that is.
#[derive(Clone, Copy, Default)]
struct Pairs([u64; 4]);

// === impl Needle ===

impl Needle {
    pub(crate) fn new(needle: &'static str) -> Self {
        Needle {
            finder: Finder::new(needle.as_bytes()),
            pairs: Pairs::of(needle.as_bytes()),
        }
    }

    /// Searchers for a whole list.
    pub(crate) fn list(needles: &[&'static str]) -> Vec<Needle> {
        needles.iter().map(|n| Needle::new(n)).collect()
    }
}

// === impl Hay ===

impl<'a> Hay<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Hay {
            text: text.as_bytes(),
            pairs: Pairs::of(text.as_bytes()),
        }
    }

    /// Whether the text contains `n`. An empty text contains nothing, not even "".
    pub(crate) fn has(&self, n: &Needle) -> bool {
        !self.text.is_empty() && self.pairs.covers(&n.pairs) && n.finder.find(self.text).is_some()
    }

    /// Whether the text contains any of `needles`.
    pub(crate) fn any(&self, needles: &[Needle]) -> bool {
        !self.text.is_empty() && needles.iter().any(|n| self.has(n))
    }
}

// === impl Pairs ===

impl Pairs {
    fn of(b: &[u8]) -> Self {
        let mut set = Pairs::default();
        for w in b.windows(2) {
            let h = u32::from(u16::from_le_bytes([w[0], w[1]])).wrapping_mul(0x9E37_79B1) >> 24;
            set.0[(h >> 6) as usize] |= 1 << (h & 63);
        }
        set
    }

    /// Whether every pair of `other` is in `self`.
    fn covers(&self, other: &Pairs) -> bool {
        (self.0[0] & other.0[0] == other.0[0])
            & (self.0[1] & other.0[1] == other.0[1])
            & (self.0[2] & other.0[2] == other.0[2])
            & (self.0[3] & other.0[3] == other.0[3])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_contains_finds() {
        let texts = [
            "",
            "a",
            "rate limit reached for requests",
            "you exceeded your current quota, please check your plan and billing details",
            "the model `x` does not exist or you do not have access to it",
            "overloaded",
        ];
        let needles = [
            "",
            "a",
            "rate limit",
            "exceeded your current quota",
            "does not exist",
            "overloaded",
            "over",
            "loaded",
            "billing",
            "limit",
            "x",
            "zz",
            "per month",
        ];
        for t in texts {
            let hay = Hay::new(t);
            for n in needles {
                let want = !t.is_empty() && t.contains(n);
                assert_eq!(hay.has(&Needle::new(n)), want, "{n:?} in {t:?}");
            }
        }
    }
}
