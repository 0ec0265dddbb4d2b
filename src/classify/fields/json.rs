//! An error body's JSON read straight into the few values the classifier looks at.
//!
//! Owns: the borrowed, typed deserialization of the envelope shapes listed in `fields`
//! and its leniency rules. It does not pick, lower-case or mask anything (see `fields`).
//!
//! Why not `serde_json::Value`: building the DOM (a map per object, a `String` per string)
//! was a fifth of the classifier's time. Why not derived structs: the result must be the
//! one `Value` gave, so every field takes any JSON type and ignores the ones it does not
//! understand (`"type": 5`, `"message": null`), a repeated key keeps its last value, and
//! the fields whose type varies (`code`, `error`, `details`, `retryDelay`) would need
//! `untagged`, which buffers into `Content`. Skipped values are read with
//! `deserialize_any`, not `IgnoredAny`: serde_json's skipping accepts lone surrogates,
//! out-of-range numbers and nesting past its recursion limit, all of which `Value`
//! rejects, and a body `Value` rejects must still go to the lenient key scan.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// The whole payload: an object, a string, or an array whose first element speaks.
#[derive(Debug)]
pub(super) enum Root<'a> {
    Str(Cow<'a, str>),
    Obj(Box<Obj<'a>>),
}

/// One error object, or an envelope around one. `None` where the key is absent or its
/// value has another type; the message keys keep "present but not a string", which
/// stops the fall-back to the next spelling as `Value::get` did.
#[derive(Debug, Default)]
pub(super) struct Obj<'a> {
    /// `__type` (AWS).
    pub(super) aws_type: Option<Cow<'a, str>>,
    /// `error`.
    pub(super) error: Option<ErrorVal<'a>>,
    /// `type`.
    pub(super) etype: Option<Cow<'a, str>>,
    /// `code`.
    pub(super) code: Option<Code<'a>>,
    /// `status`.
    pub(super) status: Option<Cow<'a, str>>,
    /// `message`.
    pub(super) message: Option<Option<Cow<'a, str>>>,
    /// `Message` (AWS).
    pub(super) message_aws: Option<Option<Cow<'a, str>>>,
    /// `detail`.
    pub(super) detail: Option<Option<Cow<'a, str>>>,
    /// `details`.
    pub(super) details: Option<Details<'a>>,
    /// `errors`; `None` elements were not objects.
    pub(super) errors: Option<Vec<Option<Box<Obj<'a>>>>>,
    /// `reason` (an element of Google's `errors[]`).
    pub(super) reason: Option<Cow<'a, str>>,
    /// `metadata.raw` (OpenRouter).
    pub(super) metadata_raw: Option<Cow<'a, str>>,
}

/// `error`: an object or a plain string.
#[derive(Debug)]
pub(super) enum ErrorVal<'a> {
    Obj(Box<Obj<'a>>),
    Str(Cow<'a, str>),
}

/// `code`: a string or a number.
#[derive(Debug)]
pub(super) enum Code<'a> {
    Str(Cow<'a, str>),
    Num(Number),
}

/// `details`: Anthropic's object, or Google's array of typed details.
#[derive(Debug)]
pub(super) enum Details<'a> {
    /// `details.error_code`.
    Anthropic(Option<Cow<'a, str>>),
    Google(Google<'a>),
}

/// What Google's `details[]` say, gathered in array order.
#[derive(Debug, Default)]
pub(super) struct Google<'a> {
    /// `ErrorInfo.reason` values.
    pub(super) reasons: Vec<Cow<'a, str>>,
    /// `QuotaFailure.violations[].quotaId` values.
    pub(super) quota_ids: Vec<Cow<'a, str>>,
    /// A `QuotaFailure` violation has `quotaValue: "0"`.
    pub(super) quota_zero: bool,
    /// The last `RetryInfo`'s `retryDelay` (inner `None`: a `RetryInfo` without a usable one).
    pub(super) retry_delay: Option<Option<RetryDelay<'a>>>,
}

/// `RetryInfo.retryDelay`: `"26s"` or the protobuf object form.
#[derive(Debug)]
pub(super) enum RetryDelay<'a> {
    Str(Cow<'a, str>),
    /// `seconds` and `nanos`, 0 when absent or not numbers.
    Parts(f64, f64),
}

/// One element of Google's `details[]`, before its `@type` says what it is.
#[derive(Default)]
struct Detail<'a> {
    kind: Option<Cow<'a, str>>,
    reason: Option<Cow<'a, str>>,
    violations: Vec<Violation<'a>>,
    retry_delay: Option<RetryDelay<'a>>,
}

#[derive(Default)]
struct Violation<'a> {
    quota_id: Option<Cow<'a, str>>,
    zero: bool,
}

/// The keys read anywhere; one enum so a key is matched once, without a copy.
enum Key {
    AwsType,
    Error,
    Type,
    Code,
    Status,
    Message,
    MessageAws,
    Detail,
    Details,
    Errors,
    Reason,
    Metadata,
    Raw,
    ErrorCode,
    AtType,
    Violations,
    QuotaId,
    QuotaValue,
    RetryDelay,
    Seconds,
    Nanos,
    Other,
}

/// A value that takes only some JSON types. Values of the other types are still read
/// through (so malformed JSON fails as it would for `Value`) and give `None`.
trait Accept<'de>: Sized {
    fn from_str(s: Cow<'de, str>) -> Option<Self> {
        let _ = s;
        None
    }

    fn from_number(n: Number) -> Option<Self> {
        let _ = n;
        None
    }

    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        skip_map(map).map(|()| None)
    }

    fn from_seq<A: SeqAccess<'de>>(seq: A) -> Result<Option<Self>, A::Error> {
        skip_seq(seq).map(|()| None)
    }
}

/// `Some` when the value had a type `T` takes.
struct Lenient<T>(Option<T>);

struct LenientVisitor<T>(PhantomData<T>);

/// Any JSON value, read and dropped.
struct Skip;

struct SkipVisitor;

/// The first element of a root array: an object or a string (an array there says nothing).
struct Item<'a>(Root<'a>);

/// An `errors` array.
struct ObjList<'a>(Vec<Option<Box<Obj<'a>>>>);

/// A `violations` array.
struct Violations<'a>(Vec<Violation<'a>>);

/// `metadata`, of which only `raw` is read.
struct Metadata<'a>(Option<Cow<'a, str>>);

/// A number read as `f64` (`Value::as_f64`).
struct F64(f64);

/// Parses a whole body. `Err` exactly when `serde_json::from_str::<Value>` fails.
pub(super) fn parse(body: &str) -> Result<Option<Root<'_>>, serde_json::Error> {
    serde_json::from_str::<Lenient<Root<'_>>>(body).map(|l| l.0)
}

/// Reads an already-parsed payload the same way.
pub(super) fn root_of(v: &Value) -> Option<Root<'_>> {
    // Every visitor here accepts every JSON type, so reading a `Value` cannot fail.
    Lenient::<Root<'_>>::deserialize(v).ok().and_then(|l| l.0)
}

/// Reads an already-parsed `error` value: an object or a string.
pub(super) fn error_of(v: &Value) -> Option<ErrorVal<'_>> {
    Lenient::<ErrorVal<'_>>::deserialize(v)
        .ok()
        .and_then(|l| l.0)
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<Skip, Skip>()?.is_some() {}
    Ok(())
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Skip>()?.is_some() {}
    Ok(())
}

/// The value of the current entry, `None` when its type is not one `T` takes.
fn value<'de, T: Accept<'de>, A: MapAccess<'de>>(map: &mut A) -> Result<Option<T>, A::Error> {
    map.next_value::<Lenient<T>>().map(|l| l.0)
}

// === impl Lenient ===

impl<'de, T: Accept<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LenientVisitor(PhantomData)).map(Lenient)
    }
}

impl<'de, T: Accept<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(T::from_number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(T::from_number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // As `Value` does: a non-finite float (never produced by the parser) is null.
        Ok(Number::from_f64(v).and_then(T::from_number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(T::from_str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        // Only strings with escapes come here (the parser unescaped them into scratch).
        Ok(T::from_str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(T::from_str(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Lenient::<T>::deserialize(d).map(|l| l.0)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::from_map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        T::from_seq(seq)
    }
}

// === impl Skip ===

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Skip, D::Error> {
        Skip::deserialize(d)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Skip, A::Error> {
        skip_map(map).map(|()| Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Skip, A::Error> {
        skip_seq(seq).map(|()| Skip)
    }
}

// === impl Key ===

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "__type" => Key::AwsType,
            "error" => Key::Error,
            "type" => Key::Type,
            "code" => Key::Code,
            "status" => Key::Status,
            "message" => Key::Message,
            "Message" => Key::MessageAws,
            "detail" => Key::Detail,
            "details" => Key::Details,
            "errors" => Key::Errors,
            "reason" => Key::Reason,
            "metadata" => Key::Metadata,
            "raw" => Key::Raw,
            "error_code" => Key::ErrorCode,
            "@type" => Key::AtType,
            "violations" => Key::Violations,
            "quotaId" => Key::QuotaId,
            "quotaValue" => Key::QuotaValue,
            "retryDelay" => Key::RetryDelay,
            "seconds" => Key::Seconds,
            "nanos" => Key::Nanos,
            _ => Key::Other,
        })
    }
}

// === impl Accept for the value types ===

impl<'de> Accept<'de> for Cow<'de, str> {
    fn from_str(s: Cow<'de, str>) -> Option<Self> {
        Some(s)
    }
}

impl<'de> Accept<'de> for F64 {
    fn from_number(n: Number) -> Option<Self> {
        n.as_f64().map(F64)
    }
}

impl<'de> Accept<'de> for Root<'de> {
    fn from_str(s: Cow<'de, str>) -> Option<Self> {
        Some(Root::Str(s))
    }

    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        Ok(Box::<Obj<'de>>::from_map(map)?.map(Root::Obj))
    }

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let first = seq
            .next_element::<Lenient<Item<'de>>>()?
            .and_then(|l| l.0)
            .map(|i| i.0);
        skip_seq(seq)?;
        Ok(first)
    }
}

impl<'de> Accept<'de> for Item<'de> {
    fn from_str(s: Cow<'de, str>) -> Option<Self> {
        Some(Item(Root::Str(s)))
    }

    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        Ok(Box::<Obj<'de>>::from_map(map)?.map(|o| Item(Root::Obj(o))))
    }
}

// Boxed from the start: the object is a few hundred bytes, and returned by value through
// the visitor layers it was copied about ten times per body.
impl<'de> Accept<'de> for Box<Obj<'de>> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut o = Box::<Obj<'de>>::default();
        // Each assignment replaces the previous one: a repeated key keeps its last value.
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::AwsType => o.aws_type = value(&mut map)?,
                Key::Error => o.error = value(&mut map)?,
                Key::Type => o.etype = value(&mut map)?,
                Key::Code => o.code = value(&mut map)?,
                Key::Status => o.status = value(&mut map)?,
                Key::Message => o.message = Some(value(&mut map)?),
                Key::MessageAws => o.message_aws = Some(value(&mut map)?),
                Key::Detail => o.detail = Some(value(&mut map)?),
                Key::Details => o.details = value(&mut map)?,
                Key::Errors => o.errors = value::<ObjList<'de>, _>(&mut map)?.map(|l| l.0),
                Key::Reason => o.reason = value(&mut map)?,
                Key::Metadata => {
                    o.metadata_raw = value::<Metadata<'de>, _>(&mut map)?.and_then(|m| m.0);
                }
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Some(o))
    }
}

impl<'de> Accept<'de> for ErrorVal<'de> {
    fn from_str(s: Cow<'de, str>) -> Option<Self> {
        Some(ErrorVal::Str(s))
    }

    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        Ok(Box::<Obj<'de>>::from_map(map)?.map(ErrorVal::Obj))
    }
}

impl<'de> Accept<'de> for Code<'de> {
    fn from_str(s: Cow<'de, str>) -> Option<Self> {
        Some(Code::Str(s))
    }

    fn from_number(n: Number) -> Option<Self> {
        Some(Code::Num(n))
    }
}

impl<'de> Accept<'de> for ObjList<'de> {
    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut list = Vec::new();
        while let Some(e) = seq.next_element::<Lenient<Box<Obj<'de>>>>()? {
            list.push(e.0);
        }
        Ok(Some(ObjList(list)))
    }
}

impl<'de> Accept<'de> for Metadata<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut raw = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Raw => raw = value(&mut map)?,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Some(Metadata(raw)))
    }
}

impl<'de> Accept<'de> for Details<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut code = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::ErrorCode => code = value(&mut map)?,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Some(Details::Anthropic(code)))
    }

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut g = Google::default();
        while let Some(d) = seq.next_element::<Lenient<Detail<'de>>>()? {
            if let Some(d) = d.0 {
                g.add(d);
            }
        }
        Ok(Some(Details::Google(g)))
    }
}

impl<'de> Accept<'de> for Detail<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut d = Detail::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::AtType => d.kind = value(&mut map)?,
                Key::Reason => d.reason = value(&mut map)?,
                Key::Violations => {
                    d.violations =
                        value::<Violations<'de>, _>(&mut map)?.map_or_else(Vec::new, |v| v.0);
                }
                Key::RetryDelay => d.retry_delay = value(&mut map)?,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Some(d))
    }
}

impl<'de> Accept<'de> for Violations<'de> {
    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut list = Vec::new();
        while let Some(v) = seq.next_element::<Lenient<Violation<'de>>>()? {
            list.extend(v.0);
        }
        Ok(Some(Violations(list)))
    }
}

impl<'de> Accept<'de> for Violation<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut v = Violation::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::QuotaId => v.quota_id = value(&mut map)?,
                Key::QuotaValue => {
                    v.zero = value::<Cow<'de, str>, _>(&mut map)?.is_some_and(|q| q == "0");
                }
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Some(v))
    }
}

impl<'de> Accept<'de> for RetryDelay<'de> {
    fn from_str(s: Cow<'de, str>) -> Option<Self> {
        Some(RetryDelay::Str(s))
    }

    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let (mut secs, mut nanos) = (None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Seconds => secs = value::<F64, _>(&mut map)?,
                Key::Nanos => nanos = value::<F64, _>(&mut map)?,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Some(RetryDelay::Parts(
            secs.map_or(0.0, |s| s.0),
            nanos.map_or(0.0, |n| n.0),
        )))
    }
}

// === impl Google ===

impl<'a> Google<'a> {
    /// One `details[]` element, as `Value` was read: by the suffix of its `@type`.
    fn add(&mut self, d: Detail<'a>) {
        let Some(kind) = d.kind else {
            return;
        };
        if kind.ends_with("ErrorInfo") {
            self.reasons.extend(d.reason);
        } else if kind.ends_with("QuotaFailure") {
            for v in d.violations {
                self.quota_ids.extend(v.quota_id);
                self.quota_zero |= v.zero;
            }
        } else if kind.ends_with("RetryInfo") {
            self.retry_delay = Some(d.retry_delay);
        }
    }
}

// === impl Code ===

impl Code<'_> {
    /// `Value::as_i64` of a numeric code.
    pub(super) fn as_i64(&self) -> Option<i64> {
        match self {
            Code::Num(n) => n.as_i64(),
            Code::Str(_) => None,
        }
    }
}
