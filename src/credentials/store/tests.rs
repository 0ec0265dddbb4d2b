use super::*;

static NONE: SecretProviders = SecretProviders::new();

const SECRET: &str = "sk-ant-api03-TOPSECRET-value";

fn env(pairs: &[(&str, &str)]) -> EnvSnapshot {
    EnvSnapshot::from_pairs(pairs.iter().copied())
}

fn load(text: &str, e: &EnvSnapshot) -> ProfileSet {
    load_profiles_from_str(text, Path::new("/s/auth-profiles.json"), e, &NONE).unwrap()
}

fn one(text: &str, e: &EnvSnapshot) -> Profile {
    let set = load(text, e);
    assert_eq!(set.profiles.len(), 1, "{:?}", set.warnings);
    set.profiles.into_iter().next().unwrap()
}

fn secret(p: &Profile) -> Result<&str, ProfileProblem> {
    p.secret.as_ref().map(Secret::expose).map_err(Clone::clone)
}

#[test]
fn agent_dir_layout() {
    assert_eq!(
        agent_dir(Path::new("/home/u/.openclaw"), "main"),
        Path::new("/home/u/.openclaw/agents/main/agent")
    );
}

#[test]
fn every_kind_loads_from_canonical_json() {
    let text = r#"{ "version": 1,
      "profiles": {
        "anthropic:default": { "type": "api_key", "provider": "anthropic", "key": " sk-ant-api03-k \n", "email": "a@b.c" },
        "anthropic:work":    { "type": "token",   "provider": "anthropic", "token": "sk-ant-oat01-t", "expires": 1798761600000, "displayName": "Work" },
        "anthropic:claude-cli": { "type": "oauth", "provider": "anthropic", "access": "acc", "refresh": "ref", "expires": 1798761600000, "accountId": "x" },
        "openrouter:default": { "type": "api_key", "provider": "openrouter",
                                "keyRef": { "source": "env", "provider": "default", "id": "OPENROUTER_API_KEY" } } } }"#;
    let set = load(text, &env(&[("OPENROUTER_API_KEY", " or-key ")]));
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    assert!(!set.legacy_flat);
    let ids: Vec<_> = set.profiles.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "anthropic:claude-cli",
            "anthropic:default",
            "anthropic:work",
            "openrouter:default"
        ]
    );
    let [oauth, key, token, or] = &set.profiles[..] else {
        unreachable!()
    };

    assert_eq!((oauth.kind, secret(oauth)), (Kind::OAuth, Ok("acc")));
    assert_eq!(oauth.refresh.as_ref().map(Secret::expose), Some("ref"));
    assert_eq!(oauth.expires, Expires::At(1_798_761_600_000));

    assert_eq!(
        (key.kind, secret(key)),
        (Kind::ApiKey, Ok("sk-ant-api03-k"))
    );
    assert_eq!(key.expires, Expires::None);
    assert_eq!(key.email.as_deref(), Some("a@b.c"));

    assert_eq!(
        (token.kind, secret(token)),
        (Kind::Token, Ok("sk-ant-oat01-t"))
    );
    assert_eq!(token.display_name.as_deref(), Some("Work"));

    assert_eq!(
        (or.kind, secret(or), or.provider.as_str()),
        (Kind::ApiKey, Ok("or-key"), "openrouter")
    );

    let c = token.credential().unwrap();
    assert_eq!(c.id.as_str(), "anthropic:work");
    assert_eq!(
        (&*c.provider, c.kind, c.source),
        ("anthropic", Kind::Token, Source::Profile)
    );
    assert_eq!(c.expires_ms, Some(1_798_761_600_000));
}

#[test]
fn lenient_aliases_mode_and_api_key() {
    let p = one(
        r#"{"profiles":{"openai:x":{"mode":"api_key","provider":"openai","apiKey":"k1"}}}"#,
        &env(&[]),
    );
    assert_eq!((p.kind, secret(&p)), (Kind::ApiKey, Ok("k1")));
    let p = one(
        r#"{"profiles":{"openai:y":{"type":"API-KEY","provider":"openai","key":"k2"}}}"#,
        &env(&[]),
    );
    assert_eq!((p.kind, secret(&p)), (Kind::ApiKey, Ok("k2")));
}

#[test]
fn bad_entries_are_skipped_with_named_warnings() {
    let text = format!(
        r#"{{"version":1,"profiles":{{
        "good:one": {{"type":"api_key","provider":"good","key":"k"}},
        "bad:array": [1,2],
        "bad:type": {{"type":"password","provider":"x","key":"{SECRET}"}},
        "bad:secret-type": {{"type":"{SECRET}","provider":"x"}},
        "bad:noprovider": {{"type":"token","token":"{SECRET}"}},
        "bad:notype": {{"provider":"x","foo":1}}
    }}}}"#
    );
    let set = load(&text, &env(&[]));
    assert_eq!(set.profiles.len(), 1);
    assert_eq!(set.profiles[0].id, "good:one");
    assert_eq!(set.warnings.len(), 5, "{:?}", set.warnings);
    for id in [
        "bad:array",
        "bad:type",
        "bad:secret-type",
        "bad:noprovider",
        "bad:notype",
    ] {
        assert!(
            set.warnings
                .iter()
                .any(|w| w.contains(&format!("\"{id}\""))),
            "{id}: {:?}",
            set.warnings
        );
    }
    // The type is named as a field, never echoed (a short word could still be a secret).
    assert!(!set.warnings.iter().any(|w| w.contains("password")));
    for w in &set.warnings {
        assert!(!w.contains("TOPSECRET"), "{w}");
    }
}

#[test]
fn secret_refs_and_templates() {
    let e = env(&[("SET_VAR", " v1 "), ("EMPTY_VAR", "  ")]);
    let cases: &[(&str, Result<&str, ProfileProblem>)] = &[
        (r#""key":"${SET_VAR}""#, Ok("v1")),
        (
            r#""key":"${UNSET_VAR}""#,
            Err(ProfileProblem::UnresolvedRef(
                "env var UNSET_VAR is not set".into(),
            )),
        ),
        (
            r#""key":"${EMPTY_VAR}""#,
            Err(ProfileProblem::UnresolvedRef(
                "env var EMPTY_VAR is not set".into(),
            )),
        ),
        (
            r#""keyRef":{"source":"env","provider":"default","id":"SET_VAR"}"#,
            Ok("v1"),
        ),
        (
            r#""keyRef":{"source":"env","id":"UNSET_VAR"}"#,
            Err(ProfileProblem::UnresolvedRef(
                "env var UNSET_VAR is not set".into(),
            )),
        ),
        (
            r#""keyRef":{"source":"env","id":"  "}"#,
            Err(ProfileProblem::UnresolvedRef(
                "env secret reference has an empty id".into(),
            )),
        ),
        (r#""keyRef":"${SET_VAR}""#, Ok("v1")),
        // keyRef wins over key (as in OpenClaw)
        (
            r#""key":"literal","keyRef":{"source":"env","id":"SET_VAR"}"#,
            Ok("v1"),
        ),
        // a malformed keyRef falls back to key
        (
            r#""key":"literal","keyRef":{"source":"env"}"#,
            Ok("literal"),
        ),
        (
            r#""keyRef":{"source":"env"}"#,
            Err(ProfileProblem::UnresolvedRef(
                "keyRef: secret reference has no id".into(),
            )),
        ),
        (
            r#""keyRef":{"source":"file","provider":"vault","id":"/a/b"}"#,
            Err(ProfileProblem::UnresolvedRef(
                "secret provider \"vault\" is not configured; add [secrets.providers.vault] to the config".into(),
            )),
        ),
        (
            r#""keyRef":{"source":"exec","provider":"op","id":"x"}"#,
            Err(ProfileProblem::UnresolvedRef(
                "secret provider \"op\" is not configured; add [secrets.providers.op] to the config".into(),
            )),
        ),
        (r#""key":{"source":"env","id":"SET_VAR"}"#, Ok("v1")),
        (r#""key":"   ""#, Err(ProfileProblem::MissingSecret)),
        (r#""key":"$NOT_A_TEMPLATE""#, Ok("$NOT_A_TEMPLATE")),
    ];
    for (fields, want) in cases {
        let text =
            format!(r#"{{"profiles":{{"p:x":{{"type":"api_key","provider":"p",{fields}}}}}}}"#);
        let p = one(&text, &e);
        assert_eq!(secret(&p), want.clone(), "{fields}");
        assert_eq!(p.credential().is_some(), want.is_ok(), "{fields}");
    }
    // token refs
    let p = one(
        r#"{"profiles":{"p:t":{"type":"token","provider":"p","tokenRef":{"source":"env","id":"SET_VAR"}}}}"#,
        &e,
    );
    assert_eq!(secret(&p), Ok("v1"));
    let p = one(
        r#"{"profiles":{"p:t":{"type":"token","provider":"p"}}}"#,
        &e,
    );
    assert_eq!(secret(&p), Err(ProfileProblem::MissingSecret));
}

#[test]
fn oauth_with_secret_ref_is_an_error_naming_the_field() {
    let e = env(&[("A", "a")]);
    let cases = [
        (r#""access":"${A}","refresh":"r""#, "access"),
        (
            r#""access":"a","refresh":{"source":"env","id":"A"}"#,
            "refresh",
        ),
        (
            r#""accessRef":{"source":"env","id":"A"},"refresh":"r""#,
            "accessRef",
        ),
        (
            r#""access":"a","refresh":"r","keyRef":{"source":"env","id":"A"}"#,
            "keyRef",
        ),
        (
            r#""access":"a","refresh":"r","tokenRef":"${A}""#,
            "tokenRef",
        ),
        (r#""access":"a","refresh":"r","token":"${A}""#, "token"),
    ];
    for (fields, field) in cases {
        let text = format!(
            r#"{{"profiles":{{"p:o":{{"type":"oauth","provider":"p",{fields},"expires":5}}}}}}"#
        );
        let p = one(&text, &e);
        assert_eq!(
            secret(&p),
            Err(ProfileProblem::OAuthSecretRef { field }),
            "{fields}"
        );
        assert!(p.credential().is_none());
        assert!(p
            .secret
            .unwrap_err()
            .to_string()
            .contains("OAuth + SecretRef is not supported"));
    }
}

#[test]
fn invalid_expires() {
    let cases = [
        ("0", Expires::Invalid),
        ("-5", Expires::Invalid),
        ("\"1798761600000\"", Expires::Invalid),
        ("\"NaN\"", Expires::Invalid),
        ("\"Infinity\"", Expires::Invalid),
        ("true", Expires::Invalid),
        ("{}", Expires::Invalid),
        ("1e300", Expires::Invalid),
        ("0.5", Expires::Invalid),
        ("null", Expires::None),
        ("1798761600000.7", Expires::At(1_798_761_600_000)),
        ("1", Expires::At(1)),
    ];
    for (raw, want) in cases {
        let text = format!(
            r#"{{"profiles":{{"p:t":{{"type":"token","provider":"p","token":"t","expires":{raw}}}}}}}"#
        );
        let p = one(&text, &env(&[]));
        assert_eq!(p.expires, want, "{raw}");
        assert_eq!(p.credential().is_some(), want != Expires::Invalid, "{raw}");
    }
    // api keys never carry an expiry
    let p = one(
        r#"{"profiles":{"p:k":{"type":"api_key","provider":"p","key":"k","expires":-1}}}"#,
        &env(&[]),
    );
    assert_eq!(p.expires, Expires::None);
}

#[test]
fn legacy_flat_file() {
    let text = r#"{
      "openrouter": { "apiKey": "or" },
      "anthropic": { "mode": "token", "token": "tk", "extra": 1 },
      "google": { "access": "acc", "refresh": "ref", "expires": 99 },
      "weird": { "foo": "bar" },
      "version": 1
    }"#;
    let set = load(text, &env(&[]));
    assert!(set.legacy_flat);
    let got: Vec<_> = set
        .profiles
        .iter()
        .map(|p| {
            (
                p.id.as_str(),
                p.provider.as_str(),
                p.kind,
                secret(p).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("anthropic:default", "anthropic", Kind::Token, "tk"),
            ("google:default", "google", Kind::OAuth, "acc"),
            ("openrouter:default", "openrouter", Kind::ApiKey, "or"),
        ]
    );
    assert_eq!(set.warnings.len(), 2, "{:?}", set.warnings);
    assert!(set.warnings[0].contains("legacy flat format"));
    assert!(set.warnings[1].contains("\"weird:default\""));
}

/// Found by the `auth_profiles` fuzz target: a legacy flat entry under an empty (or
/// blank) top-level key loaded as profile `:default` with no provider, where a canonical
/// entry without a provider is skipped.
#[test]
fn legacy_entry_without_a_provider_is_skipped() {
    let set = load(
        r#"{"":{"key":"sk-a"}," ":{"key":"sk-b"},"openai":{"key":"sk-c"}}"#,
        &env(&[]),
    );
    let ids: Vec<_> = set.profiles.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["openai:default"]);
    assert!(
        set.warnings
            .iter()
            .any(|w| w.contains("\":default\"") && w.contains("no provider")),
        "{:?}",
        set.warnings
    );
}

#[test]
fn empty_objects_are_empty_canonical_stores() {
    for text in ["{}", r#"{"version":1}"#, r#"{"version":1,"profiles":{}}"#] {
        let set = load(text, &env(&[]));
        assert!(
            set.profiles.is_empty() && set.warnings.is_empty() && !set.legacy_flat,
            "{text}"
        );
    }
}

#[test]
fn parse_errors_carry_line_and_column_and_no_content() {
    let text =
        format!("{{\n  \"profiles\": {{\n    \"a\": {{ \"key\": \"{SECRET}\" }},,\n  }}\n}}");
    let err = load_profiles_from_str(&text, Path::new("/s/auth-profiles.json"), &env(&[]), &NONE)
        .unwrap_err();
    let StoreError::Parse { line, column, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((*line, *column), (3, 52));
    let msg = err.to_string();
    assert!(
        msg.contains("/s/auth-profiles.json") && msg.contains("line 3, column 52"),
        "{msg}"
    );
    assert!(!msg.contains("TOPSECRET"), "{msg}");

    // Wrong top-level type: serde's message would quote the string; ours does not.
    let err = load_profiles_from_str(&format!("\"{SECRET}\""), Path::new("f"), &env(&[]), &NONE)
        .unwrap_err();
    assert!(!err.to_string().contains("TOPSECRET"), "{err}");
    assert!(matches!(err, StoreError::Parse { line: 1, .. }));

    // `profiles` that is not an object is positioned at it.
    let err = load_profiles_from_str(
        "{\n \"version\": 1,\n \"profiles\": [1]\n}",
        Path::new("f"),
        &env(&[]),
        &NONE,
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::Parse { line: 3, .. }), "{err:?}");
}

#[test]
fn missing_file_is_empty_and_unreadable_is_io() {
    let dir = tempfile::tempdir().unwrap();
    let set = load_profiles(&dir.path().join(PROFILES_FILE), &env(&[]), &NONE).unwrap();
    assert!(set.profiles.is_empty() && set.warnings.is_empty());
    assert_eq!(
        load_auth_state(&dir.path().join(AUTH_STATE_FILE)).unwrap(),
        AuthState::default()
    );
    // A directory where the file should be.
    let err = load_profiles(dir.path(), &env(&[]), &NONE).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
}

#[test]
fn load_profiles_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(PROFILES_FILE);
    std::fs::write(
        &path,
        r#"{"profiles":{"x:a":{"type":"api_key","provider":"x","key":"k"}}}"#,
    )
    .unwrap();
    let set = load_profiles(&path, &env(&[]), &NONE).unwrap();
    assert_eq!(set.profiles[0].id, "x:a");
}

#[test]
fn auth_state_order_and_unknown_fields_preserved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(AUTH_STATE_FILE);
    std::fs::write(
        &path,
        r#"{ "version": 1,
             "order": { "anthropic": ["anthropic:work", "env:ANTHROPIC_API_KEY", "anthropic:work", 5, ""],
                        "openai": "nope" },
             "lastGood": { "anthropic": "anthropic:work" },
             "usageStats": { "anthropic:work": { "lastUsed": 1700000000000 } } }"#,
    )
    .unwrap();
    let st = load_auth_state(&path).unwrap();
    assert_eq!(
        st.order,
        BTreeMap::from([(
            "anthropic".to_owned(),
            vec![
                "anthropic:work".to_owned(),
                "env:ANTHROPIC_API_KEY".to_owned()
            ]
        )])
    );
    let keys: Vec<_> = st.extra.keys().map(String::as_str).collect();
    assert_eq!(keys, ["version", "lastGood", "usageStats"]);
    assert_eq!(
        st.extra["usageStats"]["anthropic:work"]["lastUsed"],
        1_700_000_000_000_i64
    );
    assert_eq!(st.warnings.len(), 3, "{:?}", st.warnings);
    assert!(st.warnings.iter().any(|w| w.contains("order.openai")));

    std::fs::write(&path, "{ \"order\": ").unwrap();
    assert!(matches!(
        load_auth_state(&path),
        Err(StoreError::Parse { line: 1, .. })
    ));
}

#[test]
fn debug_of_a_profile_set_has_no_secret() {
    let text = format!(
        r#"{{"profiles":{{"a:b":{{"type":"oauth","provider":"a","access":"{SECRET}","refresh":"{SECRET}","expires":1}}}}}}"#
    );
    let s = format!("{:?}", load(&text, &env(&[])));
    assert!(!s.contains("TOPSECRET"), "{s}");
}

#[test]
fn warnings_name_fields_never_values_from_the_file() {
    let text = format!(
        r#"{{"version":"{SECRET}","profiles":{{
          "a:typed":{{"type":"{SECRET}","provider":"anthropic","key":"k"}},
          "a:short":{{"type":"sklivesecret","provider":"anthropic","key":"k"}},
          "a:prov":{{"type":"api_key","provider":"{SECRET}","key":"k"}},
          "a:ok":{{"type":"api_key","provider":"anthropic","key":"k"}}}}}}"#
    );
    let set = load(&text, &env(&[]));
    assert_eq!(set.profiles.len(), 1);
    let all = set.warnings.join("\n");
    assert!(
        !all.contains("TOPSECRET") && !all.contains("sklivesecret"),
        "{all}"
    );
    assert!(all.contains("\"version\" is not 1"), "{all}");
    assert!(all.contains("\"a:typed\" skipped: its \"type\""), "{all}");
    assert!(
        all.contains("\"a:prov\" skipped: its provider is not a provider id"),
        "{all}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("auth-state.json");
    std::fs::write(&path, format!(r#"{{"order":{{"{SECRET}":"x","ok":[1]}}}}"#)).unwrap();
    let st = load_auth_state(&path).unwrap();
    let all = st.warnings.join("\n");
    assert!(!all.contains("TOPSECRET"), "{all}");
    assert!(
        all.contains("an entry of \"order\"") && all.contains("order.ok[0]"),
        "{all}"
    );
}

#[test]
fn only_id_shaped_values_are_shown() {
    assert_eq!(shown_id("anthropic:work"), Some("anthropic:work"));
    assert_eq!(
        shown_id("env:OPENAI_API_KEY#2"),
        Some("env:OPENAI_API_KEY#2")
    );
    assert_eq!(shown_id(SECRET), None);
    assert_eq!(shown_id("Bad:x"), None);
    assert_eq!(shown_id("a:has space"), None);
    assert_eq!(shown_id(&format!("a:{}", "x".repeat(80))), None);
    assert!(is_provider_id("open-router_2") && !is_provider_id("OpenAI") && !is_provider_id(""));
}

#[test]
fn a_profile_of_a_custom_provider_with_a_long_id_is_loaded() {
    // The config accepts provider ids up to 64 characters; the store must not skip them.
    let provider = "my-very-long-self-hosted-gateway-provider-name-2";
    assert!(provider.len() > 32 && provider.len() <= 64);
    let text = format!(
        r#"{{ "version": 1, "profiles": {{ "{provider}:default": {{ "type": "api_key", "provider": "{provider}", "key": "k-1" }} }} }}"#
    );
    let p = one(&text, &env(&[]));
    assert_eq!(p.provider, provider);
}
