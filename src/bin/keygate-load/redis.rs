//! A `redis-server` for the cluster scenarios: a free loopback port, a temporary directory,
//! nothing saved, stopped by its PID when the [`Redis`] drops (also while unwinding).
//!
//! Owns finding the binary (failing with how to install it), starting it, waiting for
//! `PING`, and one-shot commands in RESP. It does not own what keygate writes there.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A running `redis-server`, killed on drop.
pub(crate) struct Redis {
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    child: Child,
    dir: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `redis-server` on `PATH`, or an error that says how to install it.
fn binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "redis-server is not installed, and the cluster scenarios need a real one: \
             `apt-get install -y redis-server` (Debian/Ubuntu)"
                .to_owned()
        })
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

// === impl Redis ===

impl Redis {
    /// Starts one and waits (at most 10 s) until it answers `PING`.
    pub(crate) fn start() -> Result<Redis, String> {
        let bin = binary()?;
        let dir = std::env::temp_dir().join(format!(
            "keygate-load-redis-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir: {e}"))?;
        let port = free_port()?;
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
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
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let mut r = Redis { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if r.command(&["PING"]).is_some_and(|a| a.contains("PONG")) {
                return Ok(r);
            }
            if let Ok(Some(status)) = r.child.try_wait() {
                return Err(format!("redis-server exited ({status}) on port {port}"));
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server did not answer PING on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `[cluster]` section for a keygate replica on this Redis.
    pub(crate) fn cluster_toml(&self, key_prefix: &str) -> String {
        format!(
            "[cluster]\nredis_url = \"{}\"\nkey_prefix = \"{key_prefix}\"\n",
            self.url()
        )
    }

    /// One command; the raw reply (`None` when it cannot be reached). Bounded: 2 s.
    pub(crate) fn command(&self, args: &[&str]) -> Option<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        // Every command used here has a one-line reply.
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(b"\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
