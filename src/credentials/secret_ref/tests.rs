use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::credentials::store::SecretSource;

fn file_ref(provider: &str, id: &str) -> SecretRef {
    SecretRef {
        source: SecretSource::File,
        provider: provider.into(),
        id: id.into(),
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn file_provider(path: &Path, single_value: bool) -> SecretProviders {
    SecretProviders::from([(
        "vault".to_owned(),
        SecretProviderConfig::File {
            path: path.to_owned(),
            single_value,
        },
    )])
}

fn exec_provider(command: &Path, pass_env: &[&str]) -> SecretProviders {
    SecretProviders::from([(
        "op".to_owned(),
        SecretProviderConfig::Exec {
            command: command.to_owned(),
            args: vec!["--flag".into()],
            pass_env: pass_env.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(5),
        },
    )])
}

#[test]
fn file_json_pointer_and_single_value() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("s.json");
    write(
        &json,
        r#"{"anthropic":{"work":" sk-file-1 "},"n":1}"#,
        0o600,
    );
    let env = EnvSnapshot::default();
    let p = file_provider(&json, false);
    let got = resolve(&file_ref("vault", "/anthropic/work"), &p, &env).unwrap();
    assert_eq!(got.expose(), "sk-file-1");
    let err = resolve(&file_ref("vault", "/anthropic/none"), &p, &env).unwrap_err();
    assert!(err.contains("not found"), "{err}");
    let err = resolve(&file_ref("vault", "/n"), &p, &env).unwrap_err();
    assert!(err.contains("not a string"), "{err}");
    let err = resolve(&file_ref("vault", "anthropic"), &p, &env).unwrap_err();
    assert!(err.contains("JSON pointer"), "{err}");

    let single = dir.path().join("single");
    write(&single, "sk-single-value\n", 0o400);
    let p = file_provider(&single, true);
    let got = resolve(&file_ref("vault", "value"), &p, &env).unwrap();
    assert_eq!(got.expose(), "sk-single-value");
    assert!(resolve(&file_ref("vault", "other"), &p, &env).is_err());
}

#[test]
fn file_rules_mode_symlink_size_and_provider() {
    let dir = tempfile::tempdir().unwrap();
    let env = EnvSnapshot::default();
    let path = dir.path().join("s.json");
    write(&path, r#"{"a":"sk-x-secret"}"#, 0o640);
    let err = resolve(&file_ref("vault", "/a"), &file_provider(&path, false), &env).unwrap_err();
    assert!(
        err.contains("mode 640") && !err.contains("sk-x-secret"),
        "{err}"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let err = resolve(&file_ref("vault", "/a"), &file_provider(&link, false), &env).unwrap_err();
    assert!(err.contains("symlink"), "{err}");

    let err = resolve(
        &file_ref("vault", "/a"),
        &file_provider(dir.path(), false),
        &env,
    )
    .unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");

    let big = dir.path().join("big");
    write(&big, &"x".repeat(MAX_SECRET_BYTES as usize + 1), 0o600);
    let err = resolve(
        &file_ref("vault", "value"),
        &file_provider(&big, true),
        &env,
    )
    .unwrap_err();
    assert!(err.contains("1 MiB"), "{err}");

    let err = resolve(&file_ref("other", "/a"), &file_provider(&path, false), &env).unwrap_err();
    assert!(err.contains("not configured"), "{err}");
    let exec = SecretRef {
        source: SecretSource::Exec,
        ..file_ref("vault", "/a")
    };
    let err = resolve(&exec, &file_provider(&path, false), &env).unwrap_err();
    assert!(err.contains("not a exec provider"), "{err}");
}

#[test]
fn exec_protocol_env_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fetch.sh");
    // Echoes the request back inside the value, so the test sees stdin, args and env.
    write(
        &script,
        "#!/bin/sh\nread req\nprintf '{\"protocolVersion\":1,\"values\":{\"k1\":\"sk-exec-%s|%s|%s|%s\"}}' \"$1\" \"$PASSED\" \"$HIDDEN\" \"$(echo \"$req\" | tr -d '\"{}[]:,')\"\n",
        0o700,
    );
    let env = EnvSnapshot::from_pairs([("PASSED", "p"), ("HIDDEN", "h")]);
    let r = SecretRef {
        source: SecretSource::Exec,
        provider: "op".into(),
        id: "k1".into(),
    };
    let got = resolve(&r, &exec_provider(&script, &["PASSED"]), &env).unwrap();
    assert_eq!(
        got.expose(),
        "sk-exec---flag|p||protocolVersion1provideropidsk1"
    );

    let missing = SecretRef {
        id: "k2".into(),
        ..r.clone()
    };
    let err = resolve(&missing, &exec_provider(&script, &[]), &env).unwrap_err();
    assert!(err.contains("no value for \"k2\""), "{err}");

    let failing = dir.path().join("fail.sh");
    write(
        &failing,
        "#!/bin/sh\necho '{\"protocolVersion\":1,\"values\":{\"k1\":\"v\"}}'\nexit 3\n",
        0o700,
    );
    let err = resolve(&r, &exec_provider(&failing, &[]), &env).unwrap_err();
    assert!(err.contains("failed"), "{err}");

    let slow = dir.path().join("slow.sh");
    write(&slow, "#!/bin/sh\nexec sleep 30\n", 0o700);
    let mut p = exec_provider(&slow, &[]);
    if let Some(SecretProviderConfig::Exec { timeout, .. }) = p.get_mut("op") {
        *timeout = Duration::from_millis(300);
    }
    let err = resolve(&r, &p, &env).unwrap_err();
    assert!(err.contains("did not answer"), "{err}");

    let writable = dir.path().join("w.sh");
    write(&writable, "#!/bin/sh\n", 0o722);
    let err = resolve(&r, &exec_provider(&writable, &[]), &env).unwrap_err();
    assert!(err.contains("mode 722"), "{err}");

    let err = resolve(&r, &exec_provider(Path::new("relative/cmd"), &[]), &env).unwrap_err();
    assert!(err.contains("absolute"), "{err}");
}
