//! The real `keygate serve` on a free port, its stderr collected, killed (by PID) on drop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::gateway::GW;

/// A running `keygate serve`.
pub struct Served {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Served {
    /// `serve` with this config (gateway token [`GW`]).
    pub fn start(state: &std::path::Path, config: &str) -> Served {
        Self::start_with(state, config, &[], None)
    }

    /// Started under `ulimit -n nofile` when given (soft and hard: keygate cannot raise it).
    pub fn start_limited(state: &std::path::Path, config: &str, nofile: Option<u32>) -> Served {
        Self::start_with(state, config, &[], nofile)
    }

    /// `serve` with this config, extra environment and optionally a descriptor limit.
    pub fn start_with(
        state: &std::path::Path,
        config: &str,
        env: &[(&str, &str)],
        nofile: Option<u32>,
    ) -> Served {
        let cfg = state.join("keygate-test.toml");
        std::fs::write(&cfg, config).expect("config");
        let addr = super::cli::free_addr();
        let mut all_env = vec![("KEYGATE_TOKEN", GW)];
        all_env.extend_from_slice(env);
        let mut cmd = super::cli::command(
            state,
            &[
                "--config",
                cfg.to_str().expect("utf-8"),
                "serve",
                "--listen",
                &addr.to_string(),
            ],
            &all_env,
        );
        if let Some(n) = nofile {
            // The same command, run by a shell that lowers the limit first and then execs
            // keygate (so the PID is keygate's).
            let mut wrapped = std::process::Command::new("bash");
            wrapped
                .arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(cmd.get_program())
                .args(cmd.get_args())
                .env_clear()
                .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd = wrapped;
        }
        let mut child = cmd.spawn().expect("spawn keygate serve");
        let log = super::cli::collect_lines(child.stderr.take().expect("stderr"));
        Served { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits (up to 10 s) for `needle` in the log.
    pub async fn wait_log(&self, needle: &str) -> bool {
        for _ in 0..100 {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub fn signal(&self, sig: &str) {
        super::cli::signal(&self.child, sig);
    }

    /// Ends the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}
