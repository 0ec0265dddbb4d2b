use super::*;

fn env(pairs: &[(&str, &str)]) -> EnvSnapshot {
    EnvSnapshot::from_pairs(pairs.iter().copied())
}

/// (id, kind, secret) of each credential.
fn view(list: &[Credential]) -> Vec<(String, Kind, String)> {
    list.iter()
        .map(|c| (c.id.to_string(), c.kind, c.secret.expose().to_owned()))
        .collect()
}

fn ids(list: &[Credential]) -> Vec<String> {
    list.iter().map(|c| c.id.to_string()).collect()
}

#[test]
fn env_priority_table() {
    use Kind::*;
    struct Case {
        name: &'static str,
        provider: &'static str,
        prefix: &'static str,
        vars: &'static [(&'static str, &'static str)],
        want: &'static [(&'static str, Kind, &'static str)],
    }
    let cases = [
        Case {
            name: "live override alone",
            provider: "anthropic",
            prefix: "ANTHROPIC",
            vars: &[
                ("OPENCLAW_LIVE_ANTHROPIC_KEY", " live "),
                ("OPENCLAW_LIVE_ANTHROPIC_KEYS", "l1,l2"),
                ("ANTHROPIC_API_KEYS", "a,b"),
                ("ANTHROPIC_API_KEY", "p"),
                ("ANTHROPIC_API_KEY_2", "two"),
                ("ANTHROPIC_OAUTH_TOKEN", "tok"),
            ],
            want: &[("env:OPENCLAW_LIVE_ANTHROPIC_KEY", ApiKey, "live")],
        },
        Case {
            name: "empty live override is ignored",
            provider: "openai",
            prefix: "OPENAI",
            vars: &[("OPENCLAW_LIVE_OPENAI_KEY", "  "), ("OPENAI_API_KEY", "p")],
            want: &[("env:OPENAI_API_KEY", ApiKey, "p")],
        },
        Case {
            name: "mixed separators",
            provider: "openai",
            prefix: "OPENAI",
            vars: &[("OPENAI_API_KEYS", "a, b;c\n d,,; \t")],
            want: &[
                ("env:OPENAI_API_KEYS#1", ApiKey, "a"),
                ("env:OPENAI_API_KEYS#2", ApiKey, "b"),
                ("env:OPENAI_API_KEYS#3", ApiKey, "c"),
                ("env:OPENAI_API_KEYS#4", ApiKey, "d"),
            ],
        },
        Case {
            name: "full order, numbered keys sorted by name",
            provider: "openai",
            prefix: "OPENAI",
            vars: &[
                ("OPENAI_API_KEY_Z", "z"),
                ("OPENAI_API_KEY_2", "two"),
                ("OPENAI_API_KEY_B", "b"),
                ("OPENAI_API_KEY_10", "ten"),
                ("OPENAI_API_KEY", " primary\n"),
                ("OPENAI_API_KEYS", "l1 l2"),
                ("OPENAI_API_KEY_EMPTY", ""),
                ("OPENAI_API_KEYSX", "not-ours"),
                ("ANTHROPIC_API_KEY", "other-provider"),
            ],
            want: &[
                ("env:OPENAI_API_KEYS#1", ApiKey, "l1"),
                ("env:OPENAI_API_KEYS#2", ApiKey, "l2"),
                ("env:OPENAI_API_KEY", ApiKey, "primary"),
                ("env:OPENAI_API_KEY_10", ApiKey, "ten"),
                ("env:OPENAI_API_KEY_2", ApiKey, "two"),
                ("env:OPENAI_API_KEY_B", ApiKey, "b"),
                ("env:OPENAI_API_KEY_Z", ApiKey, "z"),
            ],
        },
        Case {
            name: "google uses GEMINI prefix then GOOGLE_API_KEY",
            provider: "google",
            prefix: "GEMINI",
            vars: &[
                ("GOOGLE_API_KEY", "g"),
                ("GEMINI_API_KEY", "m"),
                ("GOOGLE_API_KEYS", "not-read"),
            ],
            want: &[
                ("env:GEMINI_API_KEY", ApiKey, "m"),
                ("env:GOOGLE_API_KEY", ApiKey, "g"),
            ],
        },
        Case {
            name: "anthropic lists, then oauth token as Token",
            provider: "anthropic",
            prefix: "ANTHROPIC",
            vars: &[
                ("ANTHROPIC_OAUTH_TOKEN", "sk-ant-oat01-x"),
                ("ANTHROPIC_API_KEYS", "k1"),
                ("OPENCLAW_LIVE_ANTHROPIC_KEYS", "live1;live2"),
                ("ANTHROPIC_API_KEY", "k"),
            ],
            want: &[
                ("env:OPENCLAW_LIVE_ANTHROPIC_KEYS#1", ApiKey, "live1"),
                ("env:OPENCLAW_LIVE_ANTHROPIC_KEYS#2", ApiKey, "live2"),
                ("env:ANTHROPIC_API_KEYS#1", ApiKey, "k1"),
                ("env:ANTHROPIC_API_KEY", ApiKey, "k"),
                ("env:ANTHROPIC_OAUTH_TOKEN", Token, "sk-ant-oat01-x"),
            ],
        },
        Case {
            name: "OPENCLAW_LIVE_ANTHROPIC_KEYS is anthropic only",
            provider: "openai",
            prefix: "OPENAI",
            vars: &[
                ("OPENCLAW_LIVE_ANTHROPIC_KEYS", "a"),
                ("ANTHROPIC_OAUTH_TOKEN", "t"),
            ],
            want: &[],
        },
        Case {
            name: "bedrock bearer token variable",
            provider: "bedrock",
            prefix: "BEDROCK",
            vars: &[("AWS_BEARER_TOKEN_BEDROCK", "br")],
            want: &[("env:AWS_BEARER_TOKEN_BEDROCK", ApiKey, "br")],
        },
    ];
    for case in cases {
        let got = env_credentials(case.provider, case.prefix, &env(case.vars));
        let want: Vec<_> = case
            .want
            .iter()
            .map(|(id, k, s)| (id.to_string(), *k, s.to_string()))
            .collect();
        assert_eq!(view(&got), want, "{}", case.name);
        for c in &got {
            assert_eq!(&*c.provider, case.provider, "{}", case.name);
            assert_eq!(c.source, Source::Env, "{}", case.name);
            assert_eq!(c.expires_ms, None, "{}", case.name);
        }
    }
}

#[test]
fn dotenv_file_never_overrides_process_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".env");
    std::fs::write(
        &path,
        "# comment\nOPENAI_API_KEY=from-file\nOPENAI_API_KEY_2='file-two'\nexport GROQ_API_KEY=\"g\"\nOPENAI_API_KEY_2=second-occurrence\n",
    )
    .unwrap();
    let env = env(&[("OPENAI_API_KEY", "from-process")])
        .with_dotenv_file(&path)
        .unwrap();
    assert_eq!(env.get("OPENAI_API_KEY"), Some("from-process"));
    assert_eq!(env.get("OPENAI_API_KEY_2"), Some("file-two"));
    assert_eq!(env.get("GROQ_API_KEY"), Some("g"));
    assert_eq!(
        ids(&env_credentials("openai", "OPENAI", &env)),
        ["env:OPENAI_API_KEY", "env:OPENAI_API_KEY_2"]
    );
}

#[test]
fn missing_dotenv_file_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let before = env(&[("A", "1")]);
    let after = before
        .clone()
        .with_dotenv_file(&dir.path().join(".env"))
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn dotenv_parse_error_names_file_and_line_not_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".env");
    std::fs::write(&path, "A=1\n\nB=2\nSECRET-NAME sk-live-topsecret\n").unwrap();
    let err = env(&[]).with_dotenv_file(&path).unwrap_err();
    assert!(
        matches!(err, EnvFileError::Parse { line: 4, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(".env") && msg.contains("line 4"), "{msg}");
    assert!(!msg.contains("topsecret"), "{msg}");
}

#[test]
fn debug_shows_names_not_values() {
    let s = format!("{:?}", env(&[("OPENAI_API_KEY", "sk-very-secret")]));
    assert!(
        s.contains("OPENAI_API_KEY") && !s.contains("sk-very-secret"),
        "{s}"
    );
}

#[test]
fn resolve_env_id_table() {
    let e = env(&[
        ("X_API_KEY", "x"),
        ("X_API_KEYS", "one, two"),
        ("X_API_KEY_B", "b"),
        ("OPENCLAW_LIVE_X_KEY", "live"),
        ("Y_API_KEY", "y"),
        ("X_API_KEY_EMPTY", " "),
        ("ANTHROPIC_OAUTH_TOKEN", "t"),
    ]);
    let cases: &[(&str, Option<&str>)] = &[
        ("env:X_API_KEY", Some("x")),
        ("env:X_API_KEYS#1", Some("one")),
        ("env:X_API_KEYS#2", Some("two")),
        ("env:X_API_KEYS#9", None),
        ("env:X_API_KEYS#0", None),
        ("env:X_API_KEYS#01", None),
        ("env:X_API_KEYS", None),
        ("env:X_API_KEY#1", None),
        ("env:X_API_KEY_B", Some("b")),
        ("env:X_API_KEY_EMPTY", None),
        ("env:X_API_KEY_MISSING", None),
        // The live override does not hide other variables from an explicit id.
        ("env:OPENCLAW_LIVE_X_KEY", Some("live")),
        ("env:Y_API_KEY", None),
        ("env:ANTHROPIC_OAUTH_TOKEN", None),
        ("X_API_KEY", None),
        ("x:work", None),
    ];
    for (id, want) in cases {
        let got = resolve_env_id(id, "x", "X", &e);
        assert_eq!(got.as_ref().map(|c| c.secret.expose()), *want, "{id}");
        if let Some(c) = got {
            assert_eq!(c.id.as_str(), *id);
            assert_eq!(&*c.provider, "x");
        }
    }
}

#[test]
fn resolve_env_id_matches_env_credentials_ids() {
    let e = env(&[
        ("OPENCLAW_LIVE_ANTHROPIC_KEYS", "l1 l2"),
        ("ANTHROPIC_API_KEYS", "a"),
        ("ANTHROPIC_API_KEY_Q", "q"),
        ("ANTHROPIC_OAUTH_TOKEN", "tok"),
    ]);
    for c in env_credentials("anthropic", "ANTHROPIC", &e) {
        let r = resolve_env_id(c.id.as_str(), "anthropic", "ANTHROPIC", &e).unwrap();
        assert_eq!((r.id, r.kind, r.secret), (c.id, c.kind, c.secret));
    }
}

#[test]
fn suggested_var_uses_prefix() {
    assert_eq!(suggested_var("ANTHROPIC"), "ANTHROPIC_API_KEY");
    assert_eq!(suggested_var("GEMINI"), "GEMINI_API_KEY");
}
