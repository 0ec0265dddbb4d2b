//! What the scanner reads from a data-only JSON chunk (OpenAI chat, Gemini), without
//! building a `serde_json::Value`.
//!
//! Why: a chunk was parsed into a `Value` (a `String` per key, a map node per member) to
//! answer four yes/no questions, at ≈ 9 k instructions for a 200-byte OpenAI chunk, and
//! every stream parses one or two such chunks before its first content. Here serde visits
//! the chunk and keeps only the answers. Any shape the typed reading does not expect — a
//! repeated key (a `Value` keeps the last one), an array where an object is expected — is
//! read the old way instead, so the answers are always the `Value` reading's; a test
//! compares the two on generated chunks.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// What a chunk says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Shape {
    /// A top-level `error` that is not `null`.
    pub(super) error: bool,
    /// `choices` is an array (OpenAI chat or completions).
    pub(super) choices: Option<Choices>,
    /// `candidates` is an array (Gemini).
    pub(super) candidates: Option<Candidates>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Choices {
    /// Some choice has `finish_reason: "error"`.
    pub(super) error: bool,
    /// Some choice's `delta` has a field other than `role` with a non-empty value, or its
    /// `text` is non-empty.
    pub(super) content: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Candidates {
    /// Some candidate has a non-empty part in `content.parts`.
    pub(super) content: bool,
    /// Some candidate has a `finishReason` that is not `null`.
    pub(super) finished: bool,
}

/// Reads `data`; `None` when it is not a JSON object.
pub(super) fn read(data: &[u8]) -> Option<Shape> {
    typed(data).or_else(|| from_value(&serde_json::from_slice(data).ok()?))
}

/// The `Value` reading: the reference, and the way for shapes [`typed`] leaves.
pub(super) fn from_value(v: &Value) -> Option<Shape> {
    let obj = v.as_object()?;
    let choices = match obj.get("choices") {
        Some(Value::Array(cs)) => Some(Choices {
            error: cs
                .iter()
                .any(|c| c.get("finish_reason").and_then(Value::as_str) == Some("error")),
            // Chat deltas, and legacy completions' `text`.
            content: cs.iter().any(|c| {
                c.get("delta").is_some_and(delta_has_content)
                    || c.get("text").is_some_and(non_empty)
            }),
        }),
        _ => None,
    };
    let candidates = match obj.get("candidates") {
        Some(Value::Array(cs)) => Some(Candidates {
            content: cs.iter().any(|c| {
                c.pointer("/content/parts")
                    .and_then(Value::as_array)
                    .is_some_and(|parts| parts.iter().any(non_empty))
            }),
            finished: cs
                .iter()
                .any(|c| c.get("finishReason").is_some_and(|r| !r.is_null())),
        }),
        _ => None,
    };
    Some(Shape {
        error: obj.get("error").is_some_and(|e| !e.is_null()),
        choices,
        candidates,
    })
}

fn delta_has_content(delta: &Value) -> bool {
    delta
        .as_object()
        .is_some_and(|d| d.iter().any(|(k, v)| k != "role" && non_empty(v)))
}

fn non_empty(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty() && o.values().any(non_empty),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// The typed reading; `None` for anything it does not take (see the module docs).
fn typed(data: &[u8]) -> Option<Shape> {
    // A derived struct would also accept an array, field by position.
    if data.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let top: Top<'_> = serde_json::from_slice(data).ok()?;
    let array = |raw: Option<&RawValue>| raw.is_some_and(|r| r.get().starts_with('['));
    let choices = match top.choices {
        Some(raw) if array(top.choices) => Some(
            serde_json::from_str::<Each<Choice, Choices>>(raw.get())
                .ok()?
                .0,
        ),
        _ => None,
    };
    let candidates = match top.candidates {
        Some(raw) if array(top.candidates) => Some(
            serde_json::from_str::<Each<Candidate, Candidates>>(raw.get())
                .ok()?
                .0,
        ),
        _ => None,
    };
    Some(Shape {
        error: top.error.is_some(),
        choices,
        candidates,
    })
}

/// The three top-level members read (`null` reads as absent, as in the `Value` reading).
#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    choices: Option<&'a RawValue>,
    #[serde(borrow, default)]
    candidates: Option<&'a RawValue>,
}

/// One element of `choices` or `candidates`, read as an object (see [`Members`]) and
/// folded into the array's summary `S`.
trait Element<S>: for<'de> Members<'de> {
    fn fold(self, into: &mut S);
}

/// An array of `E`s, folded into one summary `S`.
struct Each<E, S>(S, std::marker::PhantomData<E>);

impl<'de, E: Element<S>, S: Default> Deserialize<'de> for Each<E, S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<E, S>(std::marker::PhantomData<(E, S)>);
        impl<'de, E: Element<S>, S: Default> Visitor<'de> for V<E, S> {
            type Value = Each<E, S>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Each<E, S>, A::Error> {
                let mut summary = S::default();
                while let Some(Object(e)) = seq.next_element::<Object<E>>()? {
                    e.fold(&mut summary);
                }
                Ok(Each(summary, std::marker::PhantomData))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// An object read member by member: [`Members::member`] reads the value of a key it knows
/// and says so; other keys are skipped.
trait Members<'de>: Default {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
}

/// A `T` read from an object only: an array (which a derived struct would take, field by
/// position) or a scalar is refused, and so is a known key seen twice (the `Value`
/// reading keeps the last one).
struct Object<T>(T);

impl<'de, T: Members<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Members<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                read_object(map).map(Object)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn read_object<'de, A: MapAccess<'de>, T: Members<'de>>(mut map: A) -> Result<T, A::Error> {
    let mut seen = Seen::default();
    let mut out = T::default();
    while let Some(key) = map.next_key::<&'de str>()? {
        if out.member(key, &mut map)? {
            seen.add(key)?;
        } else {
            map.next_value::<IgnoredAny>()?;
        }
    }
    Ok(out)
}

/// Keys seen in one object, to refuse a repeated one (the `Value` reading keeps the last).
/// Keys are borrowed from the chunk: a key with escapes cannot be, and the chunk is then
/// read the `Value` way.
#[derive(Default)]
struct Seen<'de> {
    keys: [Option<&'de str>; 16],
}

impl<'de> Seen<'de> {
    /// `Err` when `key` was seen before or the object has too many keys to track.
    fn add<E: de::Error>(&mut self, key: &'de str) -> Result<(), E> {
        for slot in &mut self.keys {
            match slot {
                Some(k) if *k == key => return Err(E::custom("repeated key")),
                Some(_) => {}
                None => {
                    *slot = Some(key);
                    return Ok(());
                }
            }
        }
        Err(E::custom("too many keys"))
    }
}

/// A `choices[]` element.
#[derive(Default)]
struct Choice {
    error: bool,
    delta: bool,
    text: bool,
}

impl<'de> Members<'de> for Choice {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "finish_reason" => self.error = map.next_value::<IsError>()?.0,
            "delta" => self.delta = map.next_value::<DeltaContent>()?.0,
            "text" => self.text = map.next_value::<NonEmpty>()?.0,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Element<Choices> for Choice {
    fn fold(self, into: &mut Choices) {
        into.error |= self.error;
        into.content |= self.delta || self.text;
    }
}

/// A `candidates[]` element.
#[derive(Default)]
struct Candidate {
    content: bool,
    finished: bool,
}

impl<'de> Members<'de> for Candidate {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "content" => self.content = map.next_value::<PartsContent>()?.0,
            "finishReason" => self.finished = map.next_value::<NotNull>()?.0,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Element<Candidates> for Candidate {
    fn fold(self, into: &mut Candidates) {
        into.content |= self.content;
        into.finished |= self.finished;
    }
}

/// `content` as far as `content.parts` goes.
#[derive(Default)]
struct Parts(bool);

impl<'de> Members<'de> for Parts {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        if key != "parts" {
            return Ok(false);
        }
        self.0 = map.next_value::<PartsArray>()?.0;
        Ok(true)
    }
}

/// Defines a `bool` reading of any JSON value: `$scalar` for strings (given the string),
/// `$other` for numbers and booleans, `false` for `null`, and the given bodies for arrays
/// and objects (which must consume what they visit).
macro_rules! any_value {
    ($name:ident, |$s:ident| $string:expr, $other:expr,
     |$seq:ident| $array:expr, |$map:ident| $object:expr) => {
        struct $name(bool);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("any value")
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<$name, E> {
                        Ok($name(false))
                    }
                    fn visit_none<E: de::Error>(self) -> Result<$name, E> {
                        Ok($name(false))
                    }
                    fn visit_bool<E: de::Error>(self, _: bool) -> Result<$name, E> {
                        Ok($name($other))
                    }
                    fn visit_i64<E: de::Error>(self, _: i64) -> Result<$name, E> {
                        Ok($name($other))
                    }
                    fn visit_u64<E: de::Error>(self, _: u64) -> Result<$name, E> {
                        Ok($name($other))
                    }
                    fn visit_f64<E: de::Error>(self, _: f64) -> Result<$name, E> {
                        Ok($name($other))
                    }
                    fn visit_str<E: de::Error>(self, $s: &str) -> Result<$name, E> {
                        Ok($name($string))
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut $seq: A) -> Result<$name, A::Error> {
                        Ok($name($array))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut $map: A) -> Result<$name, A::Error> {
                        Ok($name($object))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

/// Drains what is left of an array, which then reads as `answer`.
fn drain_seq<'de, A: SeqAccess<'de>>(seq: &mut A, answer: bool) -> Result<bool, A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(answer)
}

/// Drains what is left of an object, which then reads as `answer`.
fn drain_map<'de, A: MapAccess<'de>>(map: &mut A, answer: bool) -> Result<bool, A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(answer)
}

/// Whether any of an object's values (each key once) reads `true` through `T`, skipping
/// `skip`.
fn any_member<'de, A, T>(
    map: &mut A,
    skip: Option<&str>,
    read: fn(T) -> bool,
) -> Result<bool, A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    let mut seen = Seen::default();
    let mut any = false;
    while let Some(key) = map.next_key::<&'de str>()? {
        let v = read(map.next_value::<T>()?);
        any |= v && skip != Some(key);
        seen.add(key)?;
    }
    Ok(any)
}

// The `Value` reading's `non_empty`: an array counts when it has elements, whatever they
// are; an object when some member value counts.
any_value!(
    NonEmpty,
    |s| !s.is_empty(),
    true,
    |seq| {
        let mut any = false;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            any = true;
        }
        any
    },
    |map| any_member(&mut map, None, |NonEmpty(v)| v)?
);

// `finish_reason == "error"`.
any_value!(
    IsError,
    |s| s == "error",
    false,
    |seq| drain_seq(&mut seq, false)?,
    |map| drain_map(&mut map, false)?
);

// The `Value` reading's `delta_has_content`: an object with a non-empty field other than
// `role`.
any_value!(
    DeltaContent,
    |_s| false,
    false,
    |seq| drain_seq(&mut seq, false)?,
    |map| any_member(&mut map, Some("role"), |NonEmpty(v)| v)?
);

// `content.parts` is an array with a non-empty element.
any_value!(
    PartsContent,
    |_s| false,
    false,
    |seq| drain_seq(&mut seq, false)?,
    |map| read_object::<_, Parts>(&mut map)?.0
);

// An array with a non-empty element.
any_value!(
    PartsArray,
    |_s| false,
    false,
    |seq| {
        let mut any = false;
        while let Some(NonEmpty(v)) = seq.next_element()? {
            any |= v;
        }
        any
    },
    |map| drain_map(&mut map, false)?
);

// Not `null`.
any_value!(
    NotNull,
    |_s| true,
    true,
    |seq| drain_seq(&mut seq, true)?,
    |map| drain_map(&mut map, true)?
);

#[cfg(test)]
mod tests;
