use super::*;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    }
}

#[test]
fn defaults_need_no_file() {
    let c = Config::defaults();
    assert_eq!(c.server.max_request_body, 32 * 1024 * 1024);
    assert_eq!(c.server.max_error_body, 64 * 1024);
    assert_eq!(c.server.request_timeout, Duration::from_secs(600));
    assert_eq!(c.server.first_byte_timeout, Duration::from_secs(120));
    assert_eq!(c.rotation.backoff.len(), 3);
    assert_eq!(c.rotation.rotate_on, ["rate_limit", "billing"]);
    assert!(c.gateway.mode.is_none() && c.gateway.tokens.is_empty());
    for id in [
        "anthropic",
        "openai",
        "openrouter",
        "google",
        "groq",
        "mistral",
        "deepseek",
        "xai",
        "together",
        "cloudflare",
        "bedrock",
        "azure",
    ] {
        assert!(c.provider(id).is_some(), "{id}");
    }
    assert!(c
        .provider("azure")
        .and_then(|p| p.base_url.as_ref())
        .is_none());
}

#[test]
fn unknown_key_names_key_and_line() {
    let err = Config::from_toml(
        "[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n",
        None,
        &|_| None,
    )
    .expect_err("unknown key");
    let msg = err.to_string();
    assert!(msg.contains("listen_port"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
}

#[test]
fn bad_duration_names_key_line_and_column() {
    let err = Config::from_toml(
        "\n[server]\nrequest_timeout = \"ten minutes\"\n",
        None,
        &|_| None,
    )
    .expect_err("bad duration");
    let msg = err.to_string();
    assert!(msg.contains("server.request_timeout"), "{msg}");
    assert!(msg.contains("line 3, column 19"), "{msg}");
}

#[test]
fn tokens_resolve_from_env_and_unset_var_is_an_error() {
    let text =
        "[gateway.auth]\nmode = \"token\"\ntokens = [ { token_env = \"GW_A\", agent = \"ci\" } ]\n";
    let c = Config::from_toml(text, None, &env_of(&[("GW_A", "  tok-a  ")])).expect("valid");
    assert_eq!(c.gateway.tokens.len(), 1);
    assert_eq!(c.gateway.tokens[0].secret.expose(), "tok-a");
    assert_eq!(c.gateway.tokens[0].agent, "ci");
    let err = Config::from_toml(text, None, &|_| None).expect_err("unset");
    assert!(err.to_string().contains("GW_A is not set"), "{err}");
}

#[test]
fn an_unset_env_value_that_looks_like_a_key_is_never_echoed() {
    // Mistral keys are 32 mixed-case alphanumerics, which is also a valid shell name.
    for value in [
        "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
        "ABCDEF0123456789ABCDEF0123456789",
    ] {
        let text = format!(
            "[gateway.auth]\nmode = \"token\"\ntokens = [ {{ token_env = \"{value}\" }} ]\n"
        );
        let err = Config::from_toml(&text, None, &|_| None).expect_err("unset");
        let msg = err.to_string();
        assert!(!msg.contains(value), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("is not set"), "{msg}");
    }
}

#[test]
fn a_64_character_custom_provider_id_is_read_from_the_store() {
    let id = "p".repeat(64);
    assert!(crate::provider::is_provider_id(&id));
    let text = format!(
        "[providers.{id}]\nbase_url = \"http://127.0.0.1:9/v1\"\nauth = {{ header = \"x-key\" }}\n"
    );
    Config::from_toml(&text, None, &|_| None).expect("valid");
    assert!(!crate::provider::is_provider_id(&"p".repeat(65)));
}

#[test]
fn keygate_token_env_is_the_default_token() {
    let c = Config::from_toml("", None, &env_of(&[("KEYGATE_TOKEN", "gw")])).expect("valid");
    assert_eq!(c.gateway.tokens.len(), 1);
    assert_eq!(c.gateway.tokens[0].agent, "main");
}

#[test]
fn custom_provider_needs_base_url_and_auth() {
    let ok =
        "[providers.local]\nbase_url = \"http://127.0.0.1:9/v1/\"\nauth = { header = \"x-key\" }\n";
    let c = Config::from_toml(ok, None, &|_| None).expect("valid");
    let p = c.provider("local").expect("custom");
    assert!(p.configured);
    assert_eq!(p.env_prefix, "LOCAL");
    assert_eq!(
        p.base_url.as_ref().map(|u| u.to_string()),
        Some("http://127.0.0.1:9/v1".into())
    );
    let err = Config::from_toml(
        "[providers.local]\nbase_url = \"http://x\"\n",
        None,
        &|_| None,
    )
    .expect_err("no auth");
    assert!(err.to_string().contains("providers.local.auth"), "{err}");
}

#[test]
fn builtin_override_keeps_other_fields() {
    let c = Config::from_toml(
        "[providers.anthropic]\nbase_url = \"http://127.0.0.1:1\"\n",
        None,
        &|_| None,
    )
    .expect("valid");
    let p = c.provider("anthropic").expect("builtin");
    assert_eq!(p.auth, AuthStyle::XApiKey);
    assert_eq!(p.headers.len(), 1);
    assert!(p.configured);
}

#[test]
fn debug_never_shows_secrets() {
    let c = Config::from_toml(
        "",
        None,
        &env_of(&[
            ("KEYGATE_TOKEN", "gw-secret-value-123"),
            ("KEYGATE_ADMIN_TOKEN", "adm-secret-456"),
        ]),
    )
    .expect("valid");
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("gw-secret-value-123") && !dbg.contains("adm-secret-456"));
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("32MiB"), Some(32 << 20));
    assert_eq!(parse_size("64KiB"), Some(64 << 10));
    assert_eq!(parse_size("1000"), Some(1000));
    assert_eq!(parse_size("lots"), None);
    assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
    assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
    assert_eq!(parse_duration("soon"), None);
}

/// Found by the `config` fuzz target: a duration past what an `Instant` can be moved by
/// (`request_timeout = "18446744073709551615"`, `"300000000000y"`) validated, then every
/// request panicked at `start + request_timeout` (and `max_wait`, `first_byte_timeout`).
#[test]
fn durations_past_a_century_are_refused() {
    for v in ["18446744073709551615", "300000000000y", "101y"] {
        for key in [
            "server.request_timeout",
            "rotation.max_wait",
            "rotation.backoff",
        ] {
            let (section, name) = key.split_once('.').unwrap();
            let value = if name == "backoff" {
                format!("[\"{v}\"]")
            } else {
                format!("\"{v}\"")
            };
            let text = format!("[{section}]\n{name} = {value}\n");
            let err = Config::from_toml(&text, None, &|_| None).unwrap_err();
            assert!(err.to_string().contains(key), "{key} = {v}: {err}");
        }
    }
    assert_eq!(parse_duration("100y"), Some(MAX_DURATION));
    let c = Config::from_toml("[server]\nrequest_timeout = \"100y\"\n", None, &|_| None).unwrap();
    assert!(tokio::time::Instant::now()
        .checked_add(c.server.request_timeout)
        .is_some());
}

#[test]
fn cluster_is_off_without_its_section_and_takes_its_url_from_the_environment() {
    let env = env_of(&[("KEYGATE_REDIS_URL", "redis://:sk-pass-9999@10.0.0.5:6379/2")]);
    assert!(Config::from_toml("", None, &env)
        .expect("valid")
        .cluster
        .is_none());

    let c = Config::from_toml("[cluster]\n", None, &env).expect("valid");
    let cl = c.cluster.expect("on");
    assert_eq!(
        cl.redis_url.expose(),
        "redis://:sk-pass-9999@10.0.0.5:6379/2"
    );
    assert_eq!(cl.redis_url_from, "KEYGATE_REDIS_URL");
    assert_eq!(cl.key_prefix, "keygate:");
    assert!(cl.secret_key.is_none());
    assert!(!format!("{cl:?}").contains("sk-pass-9999"));

    let text = "[cluster]\nredis_url = \"rediss://cache.internal:6380/0\"\nkey_prefix = \"team-a:\"\nsecret_key_env = \"CK\"\n";
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let c = Config::from_toml(text, None, &|k| (k == "CK").then(|| key.to_owned())).expect("valid");
    let cl = c.cluster.expect("on");
    assert_eq!(cl.key_prefix, "team-a:");
    assert_eq!(cl.secret_key.as_ref().map(|k| k.expose().len()), Some(64));
}

#[test]
fn a_bad_cluster_section_names_the_key_and_never_echoes_a_secret() {
    let cases: &[(&str, &str, &str)] = &[
        // (file, key named, a phrase of the reason)
        (
            "[cluster]\nredis_url = \"redis://:hunter2-secret@h:6379\"\n",
            "cluster.redis_url",
            "password does not belong",
        ),
        (
            "[cluster]\nredis_url = \"http://h:6379\"\n",
            "cluster.redis_url",
            "redis:// or rediss://",
        ),
        (
            "[cluster]\nredis_url = \"redis://\"\n",
            "cluster.redis_url",
            "no host",
        ),
        (
            "[cluster]\nredis_url = \"redis://h\"\nredis_url_env = \"X\"\n",
            "cluster.redis_url_env",
            "not both",
        ),
        (
            "[cluster]\nredis_url_env = \"UNSET_URL\"\n",
            "cluster.redis_url_env",
            "UNSET_URL is not set",
        ),
        ("[cluster]\n", "cluster.redis_url_env", "KEYGATE_REDIS_URL"),
        (
            "[cluster]\nredis_url = \"redis://h\"\nkey_prefix = \"a*\"\n",
            "cluster.key_prefix",
            "without * ? [ ]",
        ),
        (
            "[cluster]\nredis_url = \"redis://h\"\nsecret_key_env = \"SHORTKEY\"\n",
            "cluster.secret_key_env",
            "64 hex",
        ),
        (
            "[cluster]\nredis_url = \"redis://h\"\nport = 3\n",
            "port",
            "line 3",
        ),
    ];
    let env = |k: &str| match k {
        "SHORTKEY" => Some("abc123-not-hex-secret".to_owned()),
        "BADURL" => Some("ftp://:pw-secret-77@h".to_owned()),
        _ => None,
    };
    for (text, key, why) in cases {
        let msg = Config::from_toml(text, None, &env)
            .expect_err(text)
            .to_string();
        assert!(msg.contains(key) && msg.contains(why), "{text}: {msg}");
        for secret in ["hunter2-secret", "abc123-not-hex-secret"] {
            assert!(!msg.contains(secret), "{msg}");
        }
    }
    let msg = Config::from_toml("[cluster]\nredis_url_env = \"BADURL\"\n", None, &env)
        .expect_err("bad url in env")
        .to_string();
    assert!(
        msg.contains("BADURL") && msg.contains("redis:// or rediss://"),
        "{msg}"
    );
    assert!(!msg.contains("pw-secret-77"), "{msg}");
}

#[test]
fn max_in_flight_is_read_and_zero_names_key_and_line() {
    let c = Config::from_toml("[providers.openai]\nmax_in_flight = 2\n", None, &|_| None)
        .expect("valid");
    assert_eq!(c.provider("openai").and_then(|p| p.max_in_flight), Some(2));
    assert_eq!(
        Config::defaults()
            .provider("openai")
            .and_then(|p| p.max_in_flight),
        None
    );
    let err = Config::from_toml("\n\n[providers.openai]\nmax_in_flight = 0\n", None, &|_| {
        None
    })
    .expect_err("zero");
    let msg = err.to_string();
    assert!(msg.contains("providers.openai.max_in_flight"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    let err = Config::from_toml("[providers.openai]\nmax_in_flight = -1\n", None, &|_| None)
        .expect_err("negative");
    let msg = err.to_string();
    assert!(msg.contains("max_in_flight"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn quota_domains_map_credentials_to_names_and_a_shared_credential_is_an_error() {
    let c = Config::from_toml(
        "[providers.openai]\nquota_domains = { team-a = [\"env:OPENAI_API_KEYS#1\", \"openai:work\"], b = [\"openai:other\"] }\n",
        None,
        &|_| None,
    )
    .expect("valid");
    let d = &c.provider("openai").expect("openai").quota_domains;
    assert_eq!(d.get("openai:work").map(|n| &**n), Some("team-a"));
    assert_eq!(d.get("env:OPENAI_API_KEYS#1").map(|n| &**n), Some("team-a"));
    assert_eq!(d.get("openai:other").map(|n| &**n), Some("b"));
    assert!(Config::defaults()
        .provider("openai")
        .is_some_and(|p| p.quota_domains.is_empty()));

    let err = Config::from_toml(
        "[providers.openai]\n\nquota_domains = { a = [\"openai:work\"], b = [\"openai:work\"] }\n",
        None,
        &|_| None,
    )
    .expect_err("in two domains");
    let msg = err.to_string();
    assert!(msg.contains("providers.openai.quota_domains"), "{msg}");
    assert!(
        msg.contains("openai:work") && msg.contains("two quota domains"),
        "{msg}"
    );
    assert!(msg.contains("line 3"), "{msg}");

    for bad in ["\"org:x\" = [\"a\"]", "\"\" = [\"a\"]", "a = [\"\"]"] {
        let err = Config::from_toml(
            &format!("[providers.openai]\nquota_domains = {{ {bad} }}\n"),
            None,
            &|_| None,
        )
        .expect_err(bad);
        assert!(err.to_string().contains("quota_domains"), "{bad}: {err}");
    }
    // Not a table of lists: serde names the key.
    let err = Config::from_toml(
        "[providers.openai]\nquota_domains = [\"a\"]\n",
        None,
        &|_| None,
    )
    .expect_err("shape");
    assert!(err.to_string().contains("quota_domains"), "{err}");
}
