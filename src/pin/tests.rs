use super::*;
use crate::testing::XorShift;

fn model_of(body: &str) -> Option<String> {
    body_model(body.as_bytes()).map(|m| m.model.into_owned())
}

#[test]
fn reads_top_level_model_only() {
    let body = r#"{"messages":[{"role":"user","model":"nested","content":{"model":"deep"}}],"model":"claude-sonnet-4-5","stream":true}"#;
    let m = body_model(body.as_bytes()).unwrap();
    assert_eq!(m.model, "claude-sonnet-4-5");
    assert!(matches!(m.model, Cow::Borrowed(_)));
    assert_eq!(&body[m.span.clone()], r#""claude-sonnet-4-5""#);

    assert_eq!(model_of(r#"{"messages":[{"model":"nested"}]}"#), None);
}

#[test]
fn none_for_non_json_and_non_string() {
    for body in [
        "",
        "not json",
        "model=claude",
        r#"["model","x"]"#,
        r#""model""#,
        r#"{"model":42}"#,
        r#"{"model":null}"#,
        r#"{"model":{"name":"x"}}"#,
        r#"{"model":"a","model":"b"}"#,
        r#"{"model":"a"} trailing"#,
    ] {
        assert_eq!(model_of(body), None, "{body}");
    }
}

#[test]
fn escaped_model_is_decoded_and_span_covers_literal() {
    let body = r#"{ "model" : "cl\"aude\u0040work\/x" }"#;
    let m = body_model(body.as_bytes()).unwrap();
    assert_eq!(m.model, "cl\"aude@work/x");
    assert!(matches!(m.model, Cow::Owned(_)));
    assert_eq!(&body[m.span], r#""cl\"aude\u0040work\/x""#);
}

#[test]
fn long_model_is_still_returned() {
    let long = "m".repeat(MAX_MODEL_LEN + 10);
    let body = format!(r#"{{"model":"{long}"}}"#);
    assert_eq!(model_of(&body).unwrap().len(), MAX_MODEL_LEN + 10);
}

#[test]
fn rewrite_changes_only_the_literal() {
    let body = "{\n  \"stream\" : true,\n\t\"model\":   \"claude-sonnet-4-5@anthropic:work\" ,\n  \"messages\": [{\"model\": \"x@y\"}]\n}\n";
    let bytes = Bytes::from(body);
    let m = body_model(&bytes).unwrap();
    let (name, profile) = split_pin(&m.model);
    assert_eq!(
        (name, profile),
        ("claude-sonnet-4-5", Some("anthropic:work"))
    );
    let out = rewrite_model(&bytes, m.span.clone(), name);
    let want = body.replace("claude-sonnet-4-5@anthropic:work", "claude-sonnet-4-5");
    assert_eq!(out, want.as_bytes());
    assert_eq!(
        model_of(std::str::from_utf8(&out).unwrap()).unwrap(),
        "claude-sonnet-4-5"
    );
}

#[test]
fn rewrite_escapes_like_serde_json() {
    let body = Bytes::from_static(br#"{"a":1,"model":"x","b":2}"#);
    let span = body_model(&body).unwrap().span;
    for new in [
        "plain",
        "q\"uote\\",
        "ctl\n\r\t\u{8}\u{c}\u{1}\u{1f}",
        "uni-é-😀",
        "",
    ] {
        let out = rewrite_model(&body, span.clone(), new);
        let lit = serde_json::to_string(new).unwrap();
        assert_eq!(
            out,
            format!(r#"{{"a":1,"model":{lit},"b":2}}"#).as_bytes(),
            "{new:?}"
        );
        assert_eq!(body_model(&out).unwrap().model, new);
    }
}

#[test]
fn split_pin_table() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "claude-sonnet-4-5@anthropic:work",
            "claude-sonnet-4-5",
            Some("anthropic:work"),
        ),
        ("claude-sonnet-4-5", "claude-sonnet-4-5", None),
        ("claude@20251001", "claude@20251001", None),
        (
            "claude@20251001@anthropic:work",
            "claude@20251001",
            Some("anthropic:work"),
        ),
        ("claude@2025100@p", "claude", Some("2025100@p")),
        ("llama@q8_0", "llama@q8_0", None),
        ("llama@q8_0@p", "llama@q8_0", Some("p")),
        ("llama@Q4_K_M@p", "llama@Q4_K_M", Some("p")),
        ("llama@iq3_XXS@p", "llama@iq3_XXS", Some("p")),
        ("mlx@4bit@p", "mlx@4bit", Some("p")),
        ("m@fp16@p", "m@fp16", Some("p")),
        ("m@bf16", "m@bf16", None),
        ("m@int8@p", "m@int8", Some("p")),
        ("m@20251001@q8_0@p", "m@20251001@q8_0", Some("p")),
        ("org/model@p", "org/model", Some("p")),
        ("org/model@q8_0", "org/model@q8_0", None),
        ("@cf/meta/llama-3", "@cf/meta/llama-3", None),
        (
            "@cf/meta/llama-3@cloudflare:b",
            "@cf/meta/llama-3",
            Some("cloudflare:b"),
        ),
        ("a@b@c", "a", Some("b@c")),
        (
            "claude@anthropic:me@example.com",
            "claude",
            Some("anthropic:me@example.com"),
        ),
        ("claude@", "claude@", None),
        ("claude@20251001@", "claude@20251001@", None),
        ("@anthropic:work", "@anthropic:work", None),
        ("", "", None),
        ("a/b/", "a/b/", None),
    ];
    for (input, model, profile) in cases {
        assert_eq!(split_pin(input), (*model, *profile), "{input}");
        if let Some(p) = profile {
            assert_eq!(format!("{model}@{p}"), *input);
        }
    }
}

/// What `body_model` answered when it parsed the whole body with serde: the oracle for the
/// scanner on valid JSON.
fn reference(body: &[u8]) -> Option<(String, Range<usize>)> {
    #[derive(serde::Deserialize)]
    struct TopLevel<'a> {
        #[serde(borrow, default)]
        model: Option<&'a serde_json::value::RawValue>,
    }
    let top: TopLevel<'_> = serde_json::from_slice(body).ok()?;
    let raw = top.model?.get();
    if !raw.starts_with('"') {
        return None;
    }
    let start = raw.as_ptr() as usize - body.as_ptr() as usize;
    let model: String = serde_json::from_str(raw).ok()?;
    Some((model, start..start + raw.len()))
}

/// Generated JSON for the scanner's tests.
trait BodyJson {
    fn text(&mut self) -> String;
    fn value(&mut self, depth: u32) -> serde_json::Value;
}

impl BodyJson for XorShift {
    /// A string with the characters that trip scanners: quotes, backslashes, brackets,
    /// braces, colons, commas, control characters and non-ASCII.
    fn text(&mut self) -> String {
        let parts = [
            "a",
            "model",
            "\"",
            "\\",
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            " ",
            "\n",
            "\t",
            "\u{1}",
            "é",
            "😀",
            "\\\"",
            "\"model\":\"x\"",
            "@",
            "/",
            "\u{7f}",
        ];
        (0..self.below(8)).map(|_| self.pick(&parts)).collect()
    }
    fn value(&mut self, depth: u32) -> serde_json::Value {
        use serde_json::{json, Value};
        match self.below(if depth > 3 { 5 } else { 8 }) {
            0 => Value::Null,
            1 => json!(self.below(2) == 0),
            2 => json!(self.below(100_000) as f64 / 7.0 - 50.0),
            3 | 4 => json!(self.text()),
            5 | 6 => {
                let mut m = serde_json::Map::new();
                for _ in 0..self.below(4) {
                    let k = if self.below(3) == 0 {
                        "model".to_owned()
                    } else {
                        self.text()
                    };
                    m.insert(k, self.value(depth + 1));
                }
                Value::Object(m)
            }
            _ => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
        }
    }
}

#[test]
fn the_scanner_agrees_with_a_full_parse_on_generated_bodies() {
    let mut g = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut with_model = 0;
    for n in 0..20_000 {
        // Top-level members written out by hand, so that keys may repeat and `model` may be
        // spelt with escapes; values and keys in serde's own JSON.
        let mut members = Vec::new();
        for _ in 0..g.below(6) {
            let key = match g.below(6) {
                0 | 1 => "\"model\"".to_owned(),
                2 => "\"mod\\u0065l\"".to_owned(),
                3 => "\"Model\"".to_owned(),
                _ => serde_json::to_string(&g.text()).unwrap(),
            };
            let value = if g.below(2) == 0 {
                serde_json::to_string(&g.text()).unwrap()
            } else {
                let v = g.value(0);
                if g.below(2) == 0 {
                    serde_json::to_string_pretty(&v).unwrap()
                } else {
                    serde_json::to_string(&v).unwrap()
                }
            };
            let ws = g.pick(&["", " ", "\n  ", "\t"]);
            members.push(format!("{ws}{key}{ws}:{ws}{value}{ws}"));
        }
        let body = format!(
            "{}{{{}}}{}",
            g.pick(&["", " ", "\n"]),
            members.join(","),
            g.pick(&["", "\n"])
        );
        let ours = body_model(body.as_bytes()).map(|m| (m.model.into_owned(), m.span));
        assert_eq!(ours, reference(body.as_bytes()), "body {n}: {body}");
        with_model += usize::from(ours.is_some());
    }
    assert!(with_model > 2_000, "only {with_model} bodies had a model");
}

#[test]
fn malformed_bodies_do_not_panic_and_mostly_give_nothing() {
    // Every prefix of a body, and bodies with a byte flipped: the scanner must stop cleanly.
    let body = r#"{"a":[1,{"b":"c\"}]"}],"model" : "x\\y","z":{"model":"no"}}"#;
    assert_eq!(body_model(body.as_bytes()).unwrap().model, "x\\y");
    for end in 0..body.len() {
        assert_eq!(body_model(&body.as_bytes()[..end]), None, "prefix {end}");
    }
    let mut g = XorShift(7);
    for _ in 0..20_000 {
        let mut b = body.as_bytes().to_vec();
        let at = g.below(b.len() as u64) as usize;
        b[at] = *g
            .pick(&["\"", "\\", "{", "}", "[", "]", ",", ":", " ", "x"])
            .as_bytes()
            .first()
            .unwrap();
        if let Some(m) = body_model(&b) {
            // Whatever it finds is a real string literal of the body.
            assert_eq!(b[m.span.start], b'"');
            assert_eq!(b[m.span.end - 1], b'"');
        }
    }
}

fn session_of(body: &str) -> Option<String> {
    body_fields(body.as_bytes())
        .session
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
}

#[test]
fn session_key_in_spec_order() {
    // prompt_cache_key, then metadata.user_id, then user: the first present wins.
    let all = r#"{"user":"u1","metadata":{"user_id":"m1"},"model":"gpt","prompt_cache_key":"p1"}"#;
    assert_eq!(session_of(all).as_deref(), Some("p1"));
    let f = body_fields(all.as_bytes());
    assert_eq!(f.model.unwrap().model, "gpt");
    assert_eq!(
        session_of(r#"{"user":"u1","metadata":{"user_id":"m1"}}"#).as_deref(),
        Some("m1")
    );
    assert_eq!(session_of(r#"{"user":"u1"}"#).as_deref(), Some("u1"));
    // A metadata without user_id falls through to user.
    assert_eq!(
        session_of(r#"{"metadata":{"other":"x"},"user":"u1"}"#).as_deref(),
        Some("u1")
    );
    assert_eq!(session_of(r#"{"model":"x"}"#), None);
}

#[test]
fn session_key_must_be_a_short_non_empty_string() {
    for body in [
        r#"{"prompt_cache_key":""}"#,
        r#"{"prompt_cache_key":42}"#,
        r#"{"user":null}"#,
        r#"{"metadata":"user_id"}"#,
        r#"{"metadata":{"user_id":7}}"#,
        // Nested deeper than one level is not metadata.user_id.
        r#"{"messages":[{"user":"x"}],"metadata":{"inner":{"user_id":"x"}}}"#,
        // Twice: ambiguous, so none.
        r#"{"user":"a","user":"b"}"#,
        // Not JSON.
        r#"{"user":"a""#,
    ] {
        assert_eq!(session_of(body), None, "{body}");
    }
    let long = format!(r#"{{"user":"{}"}}"#, "x".repeat(MAX_SESSION_LEN + 1));
    assert_eq!(session_of(&long), None);
    let max = format!(r#"{{"user":"{}"}}"#, "x".repeat(MAX_SESSION_LEN));
    assert_eq!(session_of(&max).map(|s| s.len()), Some(MAX_SESSION_LEN));
    // A large metadata object is not searched.
    let big = format!(
        r#"{{"metadata":{{"pad":"{}","user_id":"m"}},"user":"u"}}"#,
        "p".repeat(5000)
    );
    assert_eq!(session_of(&big).as_deref(), Some("u"));
}

#[test]
fn body_fields_model_matches_body_model() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    for _ in 0..500 {
        let n = (rng.next() % 4) as usize;
        let mut members = vec![r#""model":"m\u0031""#.to_owned()];
        for k in 0..n {
            members.push(format!(r#""k{k}":[{{"user":"{k}"}}]"#));
        }
        if rng.next() % 2 == 0 {
            members.push(r#""user":"abc""#.to_owned());
        }
        let i = (rng.next() as usize) % members.len();
        members.swap(0, i);
        let body = format!("{{{}}}", members.join(","));
        assert_eq!(
            body_fields(body.as_bytes()).model,
            body_model(body.as_bytes()),
            "{body}"
        );
    }
}
