//! `Secret`: a credential value that cannot be printed by accident.
//!
//! Owns the redaction of secret values (its `Debug`/`Display` never show the value, it has
//! no `Serialize`), and the one sanctioned way to show a secret to an operator: its kind and
//! at most its last four characters ([`Secret::masked`]). It does not own where secrets come
//! from (see `credentials`) nor how they go on the wire (see `inject`).

use std::fmt;
use std::sync::Arc;

/// A secret string (API key, token, password). Cheap to clone (reference counted).
///
/// `Debug` and `Display` print `Secret(***)`; the value is reachable only through
/// [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

// === impl Secret ===

impl Secret {
    /// Wraps a secret value as given (callers trim where the contract says so).
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The raw value: only for building the wire header, comparing, or hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `true` when the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The operator-facing form: `…` followed by the last four characters, or `…` alone
    /// for values shorter than 12 characters (showing 4 of 8 would reveal too much).
    pub fn masked(&self) -> String {
        let n = self.0.chars().count();
        if n < 12 {
            return "…".to_owned();
        }
        let tail: String = self.0.chars().skip(n - 4).collect();
        format!("…{tail}")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("sk-test-very-secret-value-1234");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
    }

    #[test]
    fn masked_shows_at_most_last_four() {
        assert_eq!(Secret::new("sk-test-abcdefgh-WXYZ").masked(), "…WXYZ");
        assert_eq!(Secret::new("short").masked(), "…");
    }
}
