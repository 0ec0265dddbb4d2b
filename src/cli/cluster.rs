//! `keygate cluster status [--json]` (SPEC §10): the connection, the replicas seen in the
//! last 60 s and the shared cooldowns, credentials named by their id in this agent's pool
//! and their masked secret, never the secret.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{config_or_exit, fail, Context};
use crate::cluster::{self, wire};

/// A string from Redis as printed: control characters (a terminal's escape sequences) are
/// shown as `?`, and it is cut to 64 characters.
fn shown(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `keygate cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the Redis connection, the replicas and the shared cooldowns.
    Status(ClusterStatusArgs),
}

/// `cluster status` flags.
#[derive(Debug, Args)]
pub struct ClusterStatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `cluster` command: exit 0 when Redis answered, 1 when cluster mode is off or
/// Redis cannot be reached.
pub(super) fn run(cx: &Context, command: ClusterCommand) -> ExitCode {
    let ClusterCommand::Status(args) = command;
    let config = match config_or_exit(cx) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(cc) = config.cluster.clone() else {
        return fail("cluster mode is off: add a [cluster] section with redis_url_env (SPEC §10)");
    };
    let url = cluster::shown_url(cc.redis_url.expose());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let got = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), cluster::inspect(&cc))
            .await
            .unwrap_or_else(|_| Err("Redis did not answer in time".into()))
    });
    let seen = match got {
        Ok(s) => s,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    json!({ "connected": false, "redis": url, "prefix": cc.key_prefix, "error": e })
                );
                return ExitCode::from(1);
            }
            return fail(format!("cannot reach Redis at {url}: {e}"));
        }
    };
    // This agent's credentials, by shared id, to name the windows.
    let pool = crate::pool::build_pool(&config, &cx.state_dir, &cx.agent, &cx.env);
    let mut names: Vec<([u8; 16], String, String)> = pool
        .by_id
        .values()
        .map(|c| {
            let id = cluster::shared_id_of(&cc, c.cred.secret.expose());
            (id, c.cred.id.to_string(), c.cred.secret.masked())
        })
        .collect();
    names.sort_by(|a, b| a.1.cmp(&b.1));
    let now = wire::now_ms();
    let windows: Vec<Value> = seen
        .windows
        .iter()
        .map(|w| {
            let local = w
                .shared_bytes()
                .and_then(|b| names.iter().find(|(id, _, _)| *id == b));
            json!({
                "credential": local.map(|l| l.1.as_str()),
                "masked": local.map(|l| l.2.as_str()),
                "fingerprint": &w.cred[..8],
                "model": w.model.as_deref().unwrap_or("all"),
                "lane": if w.scope == "disabled" { "disabled" } else { "cooldown" },
                "reason": w.reason,
                "until": w.end,
                "remainingSeconds": (w.end - now).max(0) as f64 / 1000.0,
                "source": w.source,
                "failures": w.failures,
                "lastStatus": w.status,
                "from": w.from,
            })
        })
        .collect();
    let replicas: Vec<Value> = seen
        .replicas
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "host": r.host,
                "version": r.version,
                "lastBeat": r.beat,
                "lastBeatAgeMs": (now - r.beat).max(0),
            })
        })
        .collect();
    if args.json {
        println!(
            "{}",
            json!({
                "connected": true,
                "redis": url,
                "prefix": cc.key_prefix,
                "replicas": replicas,
                "cooldowns": windows,
            })
        );
        return ExitCode::SUCCESS;
    }
    println!("cluster: connected to {url} (prefix {})", cc.key_prefix);
    println!();
    println!("replicas seen in the last 60 s: {}", replicas.len());
    if !replicas.is_empty() {
        println!("  {:<40} {:<24} {:<10} LAST BEAT", "ID", "HOST", "VERSION");
        for r in &seen.replicas {
            println!(
                "  {:<40} {:<24} {:<10} {}s ago",
                shown(&r.id),
                shown(&r.host),
                shown(&r.version),
                (now - r.beat).max(0) / 1000
            );
        }
    }
    println!();
    println!("shared cooldowns: {}", windows.len());
    if !windows.is_empty() {
        println!(
            "  {:<32} {:<28} {:<10} {:<15} {:>9}  SOURCE",
            "CREDENTIAL", "MODEL", "LANE", "REASON", "REMAINING"
        );
        for w in &windows {
            let cred = match (w["credential"].as_str(), w["masked"].as_str()) {
                (Some(id), Some(m)) => format!("{id} ({m})"),
                _ => format!(
                    "(not in this pool) {}",
                    w["fingerprint"].as_str().unwrap_or("")
                ),
            };
            let left = Duration::from_millis(
                (w["remainingSeconds"].as_f64().unwrap_or(0.0) * 1000.0) as u64,
            );
            println!(
                "  {:<32} {:<28} {:<10} {:<15} {:>9}  {}",
                cred,
                shown(w["model"].as_str().unwrap_or("")),
                w["lane"].as_str().unwrap_or(""),
                shown(w["reason"].as_str().unwrap_or("")),
                crate::status::short_duration(left),
                shown(w["source"].as_str().unwrap_or("")),
            );
        }
    }
    ExitCode::SUCCESS
}
