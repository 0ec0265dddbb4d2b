//! Child processes of the harness (mock, bare forwarder, keygate) and what `/proc` says
//! about them.
//!
//! Owns: spawning each on `127.0.0.1:0` and learning its address, killing it when its
//! [`Proc`] drops (also while unwinding from a panic), and reading CPU time
//! (`/proc/PID/stat` utime + stime) and memory (`/proc/PID/status` VmRSS, VmHWM).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Linux reports utime/stime in clock ticks of `USER_HZ`, which is 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;

/// A running child, killed on drop.
pub(crate) struct Proc {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    child: Child,
    // Closing it tells mock/forwarder children that the harness is gone.
    _stdin: Option<ChildStdin>,
    dir: Option<PathBuf>,
}

/// How to start keygate.
pub(crate) struct KeygateOpts<'a> {
    /// The binary; `None` runs this binary as keygate (same library code as `keygate`).
    pub(crate) bin: Option<&'a Path>,
    /// `RUST_LOG` for it.
    pub(crate) log: &'a str,
    /// Its `--log-format`.
    pub(crate) log_format: &'a str,
    /// The mock's address.
    pub(crate) upstream: SocketAddr,
    /// Extra TOML appended to the config.
    pub(crate) extra_toml: &'a str,
    /// Environment (`OPENAI_API_KEY`, …).
    pub(crate) env: Vec<(String, String)>,
    /// The main agent's `auth-profiles.json`, if any.
    pub(crate) profiles: Option<&'a str>,
    /// The mock serves HTTPS (`base_url = "https://…"`).
    pub(crate) https: bool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

// === impl Proc ===

impl Proc {
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds used so far (user + system, every thread).
    pub(crate) fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }

    /// [`cpu_secs_fine`] of this process.
    pub(crate) fn cpu_secs_fine(&self) -> f64 {
        cpu_secs_fine(self.pid())
    }

    /// Resident set size now, in KiB.
    pub(crate) fn rss_kb(&self) -> u64 {
        status_kb(self.pid(), "VmRSS:")
    }

    /// Peak resident set size since start, in KiB.
    pub(crate) fn peak_rss_kb(&self) -> u64 {
        status_kb(self.pid(), "VmHWM:")
    }

    /// Waits (at most `limit`) until keygate's log has a line containing `needle`.
    pub(crate) fn wait_log(&self, needle: &str, limit: Duration) -> Result<(), String> {
        let Some(dir) = &self.dir else {
            return Err("not a keygate process".to_owned());
        };
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(dir.join("keygate.log")).unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "keygate did not log {needle:?} within {limit:?}: {text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawns this binary in a helper mode (`--mock` / `--bare-forwarder`) and reads the
    /// address it prints.
    pub(crate) fn helper(name: &'static str, args: &[String]) -> Result<Proc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {name}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let addr = match read {
            Ok(_) => line
                .trim()
                .strip_prefix("LISTEN ")
                .and_then(|a| a.parse().ok()),
            Err(_) => None,
        };
        let mut p = Proc {
            addr: "127.0.0.1:0".parse().expect("literal address"),
            child,
            _stdin: stdin,
            dir: None,
        };
        match addr {
            Some(a) => {
                p.addr = a;
                Ok(p)
            }
            None => Err(format!("{name} did not report its address: {line:?}")),
        }
    }

    /// Spawns keygate (`serve --listen 127.0.0.1:0`) with a temporary config and state
    /// directory pointing the `openai` provider at the mock, and waits for its listen line.
    pub(crate) fn keygate(o: &KeygateOpts<'_>) -> Result<Proc, String> {
        let dir = std::env::temp_dir().join(format!(
            "keygate-load-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("state")).map_err(|e| format!("mkdir: {e}"))?;
        let config = dir.join("keygate.toml");
        let toml = format!(
            "[server]\nrequest_timeout = \"120s\"\n\n[providers.openai]\nbase_url = \"{}://{}\"\n\n{}",
            if o.https { "https" } else { "http" },
            o.upstream,
            o.extra_toml
        );
        std::fs::write(&config, toml).map_err(|e| format!("write config: {e}"))?;
        if let Some(profiles) = o.profiles {
            let agent = dir.join("state/agents/main/agent");
            std::fs::create_dir_all(&agent).map_err(|e| format!("mkdir: {e}"))?;
            let path = agent.join("auth-profiles.json");
            std::fs::write(&path, profiles).map_err(|e| format!("write profiles: {e}"))?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| format!("chmod profiles: {e}"))?;
        }
        let log = dir.join("keygate.log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let exe = match o.bin {
            Some(b) => b.to_owned(),
            None => std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?,
        };
        let mut cmd = Command::new(exe);
        cmd.env_clear()
            // The listen line must get through whatever the level.
            .env("RUST_LOG", format!("{},keygate::cli::serve=info", o.log))
            .envs(o.env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args([
                "--log-format",
                o.log_format,
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        if o.bin.is_none() {
            cmd.env(super::AS_KEYGATE, "1");
        }
        let child = cmd.spawn().map_err(|e| format!("spawn keygate: {e}"))?;
        let mut p = Proc {
            addr: "127.0.0.1:0".parse().expect("literal address"),
            child,
            _stdin: None,
            dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text
                .lines()
                .filter(|l| l.contains("keygate listening"))
                .find_map(listen_addr);
            if let Some(a) = found {
                p.addr = a;
                return Ok(p);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("keygate exited ({status}): {text}"));
            }
            if Instant::now() > deadline {
                return Err(format!("keygate did not start within 20 s: {text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The address in keygate's "keygate listening" line, JSON (`"listen":"…"`) or text
/// (`listen=…`).
fn listen_addr(line: &str) -> Option<SocketAddr> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        return v["listen"].as_str()?.parse().ok();
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))?
        .parse()
        .ok()
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// CPU seconds (utime + stime) of a process, 0 when unreadable.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at field 3.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14, stime 15 (1-based); `after` starts at field 3.
    (tick(11) + tick(12)) as f64 / USER_HZ
}

/// CPU seconds of a process's live threads from their `schedstat` (nanoseconds: `stat`'s
/// 10 ms ticks are too coarse for a ratio of small runs). Threads that ended are not
/// counted; keygate's runtime threads live as long as the process.
pub(crate) fn cpu_secs_fine(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// A `kB` line of `/proc/PID/status`, 0 when unreadable.
pub(crate) fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
