//! Every file in `config/` is a valid configuration, and `config check` says so.

use std::path::Path;
use std::process::Command;

#[test]
fn every_config_file_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            // Variables named by *_env keys resolve to placeholders so the file validates.
            keygate::config::Config::load(Some(&path), &|_| Some("placeholder-value".into()))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 1, "no config files found");
}

#[test]
fn config_check_cli_reports_errors_with_line_and_exit_64() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:1\"\nmax_request_bdy = \"1MiB\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--config", bad.to_str().expect("utf8"), "config", "check"])
        .env_remove("KEYGATE_CONFIG")
        .env("KEYGATE_STATE_DIR", dir.path())
        .output()
        .expect("run keygate");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_request_bdy") && err.contains("line 3"),
        "{err}"
    );

    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keygate.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--config", good.to_str().expect("utf8"), "config", "check"])
        .env("KEYGATE_STATE_DIR", dir.path())
        .env("KEYGATE_ADMIN_TOKEN", "x")
        .output()
        .expect("run keygate");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("anthropic") && text.contains("x-goog-api-key"),
        "{text}"
    );
}

/// README's first command is `cargo run --release -- serve`: with two binaries in the
/// package, that only works while `keygate` is the default one.
#[test]
fn cargo_run_picks_the_keygate_binary() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("Cargo.toml");
    let parsed: toml::Table = toml::from_str(&manifest).expect("valid manifest");
    assert_eq!(parsed["package"]["default-run"].as_str(), Some("keygate"));
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let first_block: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take(2)
        .collect();
    assert!(
        first_block[0].starts_with("cargo run --release -- serve"),
        "{first_block:?}"
    );
    // The test command installs what the tests need (redis-server), then runs cargo test.
    assert!(
        first_block[1].starts_with("scripts/test"),
        "{first_block:?}"
    );
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test"))
            .expect("scripts/test");
    assert!(
        script.contains("apt-get install -y") && script.contains("redis-server"),
        "{script}"
    );
    assert!(
        script.trim_end().ends_with("exec cargo test \"$@\""),
        "{script}"
    );
}
