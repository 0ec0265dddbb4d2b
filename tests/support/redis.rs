//! A real `redis-server` on a free loopback port, in a temp dir, stopped by PID on drop.
//!
//! Tests that need it fail — never skip — when `redis-server` is missing, saying how to
//! install it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running Redis.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// Where `redis-server` is, or a failure that says how to get it.
fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not installed, and the cluster tests need a real one: \
                 `apt-get install -y redis-server` (Debian), or run `scripts/test`, which installs it"
            )
        })
}

impl Redis {
    /// Starts one and waits until it answers PING.
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::cli::free_addr().port();
        let mut r = Redis {
            child: None,
            port,
            dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new(binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        // Up to 10 s.
        for _ in 0..500 {
            if self.command(&["PING"]).is_some_and(|r| r.contains("PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops it (SIGKILL: as if the machine died; nothing is saved).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// One command in RESP; the raw reply (`None` when it cannot be reached).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        // Read until the reply is complete enough for the tests: a short pause ends it.
        s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) if !out.is_empty() => break,
                Err(_) => return None,
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    /// Every key and everything stored under it, whatever its type (string, sorted set,
    /// hash, set, list), for "nothing secret in Redis" checks.
    pub fn dump(&self) -> String {
        let mut all = String::new();
        for k in self.keys("*") {
            all.push_str(&k);
            all.push('\n');
            let kind = self.command(&["TYPE", &k]).unwrap_or_default();
            let read: &[&str] = match kind.trim().trim_start_matches('+') {
                "string" => &["GET"],
                "zset" => &["ZRANGE", "0", "-1", "WITHSCORES"],
                "hash" => &["HGETALL"],
                "set" => &["SMEMBERS"],
                "list" => &["LRANGE", "0", "-1"],
                other => panic!("key {k} of type {other:?}: teach dump() to read it"),
            };
            let mut args = vec![read[0], k.as_str()];
            args.extend_from_slice(&read[1..]);
            if let Some(v) = self.command(&args) {
                all.push_str(&v);
            }
        }
        all
    }

    /// Fails if any 8-character piece of any of `secrets` is stored in Redis (keys or
    /// values of any type).
    pub fn assert_no_secret(&self, secrets: &[&str]) {
        let dump = self.dump();
        assert!(!dump.is_empty(), "Redis holds nothing to check");
        for s in secrets {
            for piece in s.as_bytes().windows(8) {
                let piece = std::str::from_utf8(piece).expect("ascii");
                assert!(
                    !dump.contains(piece),
                    "{piece:?} of a secret is in Redis: {dump}"
                );
            }
        }
    }

    /// Keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.command(&["KEYS", pattern])
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
