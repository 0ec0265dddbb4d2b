use super::*;

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
