use serde_json::json;

use super::*;
use crate::testing::XorShift;

fn both(data: &str) -> (Option<Shape>, Option<Shape>) {
    let reference = serde_json::from_str::<Value>(data)
        .ok()
        .and_then(|v| from_value(&v));
    (read(data.as_bytes()), reference)
}

#[test]
fn openai_chunks() {
    let role = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
    let text =
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
    let tool =
        r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":""}}]}}]}"#;
    let failed = r#"{"choices":[{"delta":{},"finish_reason":"error"}]}"#;
    let error = r#"{"error":{"message":"Rate limit","code":429}}"#;
    for (data, want) in [
        (role, Some((false, false, false))),
        (text, Some((false, false, true))),
        (tool, Some((false, false, true))),
        (failed, Some((false, true, false))),
    ] {
        let (ours, reference) = both(data);
        assert_eq!(ours, reference, "{data}");
        let c = ours.unwrap();
        let got = c.choices.map(|ch| (c.error, ch.error, ch.content));
        assert_eq!(got, want, "{data}");
    }
    let (ours, reference) = both(error);
    assert_eq!(ours, reference);
    assert!(ours.unwrap().error);
}

#[test]
fn gemini_chunks() {
    let text = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}]}"#;
    let end = r#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"STOP"}]}"#;
    for data in [text, end] {
        let (ours, reference) = both(data);
        assert_eq!(ours, reference, "{data}");
    }
    assert_eq!(
        read(text.as_bytes()).unwrap().candidates,
        Some(Candidates {
            content: true,
            finished: false
        })
    );
    assert_eq!(
        read(end.as_bytes()).unwrap().candidates,
        Some(Candidates {
            content: false,
            finished: true
        })
    );
}

#[test]
fn shapes_the_typed_reading_leaves_get_the_value_answer() {
    for data in [
        // A repeated key: a `Value` keeps the last one.
        r#"{"choices":[{"delta":{"content":"x","content":""}}]}"#,
        r#"{"choices":[{"finish_reason":"error","finish_reason":null}]}"#,
        r#"{"error":null,"error":{"m":1}}"#,
        // Arrays where objects are expected, escaped keys, nulls, odd types.
        r#"{"choices":[["error"]]}"#,
        r#"{"choices":{"0":{"delta":{"content":"x"}}},"candidates":[]}"#,
        r#"{"ch\u006fices":[{"d\u0065lta":{"content":"x"}}]}"#,
        r#"{"choices":[{"delta":{"r\u006fle":"x"}}]}"#,
        r#"{"choices":null,"candidates":[{"content":[{"parts":[1]}],"finishReason":null}]}"#,
        r#"{"candidates":[{"content":{"parts":{"0":"x"}}}]}"#,
        r#"["choices"]"#,
        r#""text""#,
        "not json",
        "",
    ] {
        let (ours, reference) = both(data);
        assert_eq!(ours, reference, "{data}");
    }
}

/// A random JSON value: the keys the reading looks for at every level, values of every
/// type, empty ones, repeated keys, escapes.
fn value(g: &mut XorShift, depth: u32) -> String {
    match g.below(if depth == 0 { 4 } else { 7 }) {
        0 => g
            .pick(&["null", "true", "false", "0", "1.5", "-2"])
            .to_owned(),
        1 | 2 => g
            .pick(&[
                "\"\"",
                "\"error\"",
                "\"x\"",
                "\"STOP\"",
                "\"\\u0065rror\"",
                "\"a\\\"b\"",
            ])
            .to_owned(),
        3 if depth == 0 => "{}".to_owned(),
        3 | 4 => {
            let items: Vec<String> = (0..g.below(4)).map(|_| value(g, depth - 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => object(g, depth),
    }
}

fn object(g: &mut XorShift, depth: u32) -> String {
    let keys = [
        "\"error\"",
        "\"choices\"",
        "\"candidates\"",
        "\"delta\"",
        "\"text\"",
        "\"finish_reason\"",
        "\"content\"",
        "\"role\"",
        "\"parts\"",
        "\"finishReason\"",
        "\"index\"",
        "\"ro\\u006ce\"",
    ];
    let members: Vec<String> = (0..g.below(5))
        .map(|_| {
            let v = value(g, depth.saturating_sub(1));
            format!("{}:{}", g.pick(&keys), v)
        })
        .collect();
    format!("{{{}}}", members.join(","))
}

#[test]
fn the_typed_reading_agrees_with_the_value_reading_on_generated_chunks() {
    let mut g = XorShift(0x5851_f42d_4c95_7f2d);
    let mut typed_taken = 0;
    for n in 0..30_000 {
        // Realistic envelopes around random choices / candidates, and fully random objects.
        let data = match g.below(3) {
            0 => {
                let cs: Vec<String> = (0..g.below(3)).map(|_| object(&mut g, 3)).collect();
                format!(r#"{{"id":"c","choices":[{}]}}"#, cs.join(","))
            }
            1 => {
                let cs: Vec<String> = (0..g.below(3)).map(|_| object(&mut g, 3)).collect();
                format!(
                    r#"{{"candidates":[{}],"usageMetadata":{{}}}}"#,
                    cs.join(",")
                )
            }
            _ => object(&mut g, 4),
        };
        let (ours, reference) = both(&data);
        assert_eq!(ours, reference, "chunk {n}: {data}");
        typed_taken += usize::from(typed(data.as_bytes()).is_some());
    }
    assert!(
        typed_taken > 10_000,
        "the typed reading took only {typed_taken}"
    );
    // A sanity check of the generator itself: it makes content and errors.
    let _ = json!(null);
}
