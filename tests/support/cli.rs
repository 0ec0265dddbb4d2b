//! Running the real `keygate` binary for the CLI tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Fails when any of `secrets` appears in stdout or stderr.
    pub fn assert_no_secret(&self, secrets: &[&str]) -> &Self {
        for s in secrets {
            assert!(!self.all().contains(s), "secret {s:?} printed: {self:?}");
        }
        self
    }

    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
}

/// A keygate command in a clean environment: only PATH, HOME (= the state dir, so the real
/// ~/.claude is never read) and `env`.
pub fn command(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", state)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs keygate with `stdin` piped in.
pub fn keygate(state: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = command(state, args, env).spawn().expect("spawn keygate");
    {
        let mut i = child.stdin.take().expect("stdin");
        let _ = i.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait keygate");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn agent_dir(state: &Path) -> PathBuf {
    state.join("agents").join("main").join("agent")
}

pub fn profiles_file(state: &Path) -> PathBuf {
    agent_dir(state).join("auth-profiles.json")
}

pub fn state_file(state: &Path) -> PathBuf {
    agent_dir(state).join("auth-state.json")
}

pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Writes a file with a mode, creating the parent directories (0700).
pub fn write_file(p: &Path, text: &str, mode: u32) {
    if let Some(d) = p.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .unwrap();
    }
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Epoch ms `delta_ms` from now.
pub fn ms_from_now(delta_ms: i64) -> i64 {
    super::now_ms() + delta_ms
}

/// Every regular file under `dir` is 0600 and every directory 0700.
pub fn assert_private_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
            assert_private_tree(&p);
        } else {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
}

/// A free port on 127.0.0.1 (bound, then let go) for `serve --listen`.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// Collects the lines of `from` (a child's stderr) on a thread of its own.
pub fn collect_lines(from: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    log
}

/// Sends `sig` (`-HUP`, `-TERM`, ...) to `child` with `kill`; fails unless it was sent.
pub fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}
