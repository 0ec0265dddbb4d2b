//! `keygate models status` (with `--check` and `--probe`) and the `models auth` dispatch.
//!
//! Owns printing the status view (`view`) as a table or as JSON, and `--check`'s exit codes
//! (SPEC §1). It does not build the view (`view`), nor own the probe requests (`probe`), the
//! writing commands (`auth`), nor the proxy's live cooldowns (in memory of a running
//! `serve`; see `/_keygate/status`).
//!
//! JSON (`--json`) field names are camelCase: `agent`, `stateDir`, `warnings`,
//! `providers[]` {`provider`, `configured`, `order`, `orderSource`, `missing`,
//! `credentials[]` {`id`, `provider`, `kind`, `source`, `secret` (masked), `expires`
//! (epoch ms), `expiresAt` (epoch ms, as OpenClaw names it), `expiresAtIso` (RFC 3339),
//! `remainingMs`, `health`, `position`, `reasonCode`, `detail`,
//! `managedBy`, `quotaDomain` (a configured domain's name, a learned one's `org:` hash from
//! `<state-dir>/keygate-domains.json`, or null), `quotaDomainSource` (`configured` |
//! `learned` | null)}}, `check` {`result`, `exitCode`}, and with `--probe` `probes[]` (see
//! `probe`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::probe::{self, ProbeArgs};
use super::{auth, config_or_exit, fail, parse_dur, unknown_provider, Context};
use crate::credentials::store::{self, Expires};
use crate::pool::Inputs;
use crate::status::{self, build_view, check_result, now_ms, rfc3339, when, StatusView};

/// `keygate models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Show every credential per provider: id, kind, source, masked secret, expiry, order position.
    Status(StatusArgs),
    /// Manage stored credentials and the explicit order (JSON files, or OpenClaw's SQLite store).
    Auth {
        /// What to do.
        #[command(subcommand)]
        command: auth::AuthCommand,
    },
}

/// `models status` flags.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this provider.
    #[arg(long, value_name = "P")]
    pub provider: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 if a credential is expired or missing (or a configured provider has none), 2 if one expires within --warn-within.
    #[arg(long)]
    pub check: bool,
    /// Warn window for --check (e.g. 24h, 7d).
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_dur)]
    pub warn_within: Duration,
    /// Send one minimal real request per credential and report how the provider answers.
    #[arg(long)]
    pub probe: bool,
    /// Which credentials to probe, and how.
    #[command(flatten)]
    pub probing: ProbeArgs,
}

/// Runs `models ...`.
pub(super) fn run(cx: &Context, cmd: ModelsCommand) -> ExitCode {
    match cmd {
        ModelsCommand::Status(args) => status(cx, args),
        ModelsCommand::Auth { command } => auth::run(cx, command),
    }
}

fn status(cx: &Context, args: StatusArgs) -> ExitCode {
    let config = match config_or_exit(cx) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for p in [&args.provider, &args.probing.probe_provider]
        .into_iter()
        .flatten()
    {
        if config.provider(p).is_none() {
            return unknown_provider(&config, p);
        }
    }
    // A store file that does not parse is an error here (file, line and column): the view
    // would otherwise show a pool without the profiles the operator asked about.
    let inputs = Inputs::load(&cx.state_dir, &cx.agent, cx.env.clone(), &config);
    if let Some(problem) = inputs.problems.first() {
        return fail(problem);
    }
    let mut view = build_view(
        &inputs,
        &config,
        args.provider.as_deref(),
        now_ms(),
        args.warn_within,
    );
    // Learned quota domains, as the server last wrote them (none without a file).
    let learned = crate::domain::read_file(&cx.state_dir);
    status::add_learned(&mut view, &|k| learned.get(&k).copied());
    let (result, check_code) = check_result(&view);

    let probes = if args.probe {
        match probe::run(&config, &view, &args.probing) {
            Ok(p) => Some(p),
            Err(msg) => return fail(msg),
        }
    } else {
        None
    };

    if args.json {
        let mut doc = status::document(&view, &cx.agent, &cx.state_dir);
        doc["check"] = json!({ "result": result, "exitCode": check_code });
        if let Some(p) = &probes {
            doc["probes"] = Value::Array(p.iter().map(probe::ProbeRow::to_json).collect());
        }
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_view(cx, &view);
        if let Some(p) = &probes {
            println!();
            probe::print(p);
        }
        if args.check {
            println!();
            println!("check: {result}");
        }
    }
    if !view.errors.is_empty() {
        for e in &view.errors {
            eprintln!("error: {e}");
        }
        return ExitCode::from(1);
    }
    if args.check {
        ExitCode::from(check_code)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_view(cx: &Context, view: &StatusView) {
    println!(
        "agent {} (state {})",
        cx.agent,
        store::agent_dir(&cx.state_dir, &cx.agent).display()
    );
    let now = now_ms();
    for p in &view.providers {
        println!();
        let mut head = p.provider.clone();
        if p.configured {
            head.push_str(" (configured)");
        }
        if let (Some(o), Some(src)) = (&p.order, p.order_source) {
            head.push_str(&format!(" order from {src}: {}", o.join(", ")));
        }
        println!("{head}");
        if p.rows.is_empty() {
            println!("  (no credentials) — add one with `keygate models auth paste-api-key --provider {}`", p.provider);
            continue;
        }
        println!(
            "  {:<4} {:<32} {:<8} {:<8} {:<8} {:<28} {:<10} NOTE",
            "POS", "ID", "KIND", "SOURCE", "SECRET", "EXPIRES", "HEALTH"
        );
        for r in &p.rows {
            let expires = match r.expires {
                Expires::At(ms) => format!("{} ({})", rfc3339(ms), when(ms, now)),
                Expires::Invalid => "invalid".to_owned(),
                Expires::None => "-".to_owned(),
            };
            let mut note = r.reason_code.map(str::to_owned).unwrap_or_default();
            if let Some(d) = &r.detail {
                if !note.is_empty() {
                    note.push_str(": ");
                }
                note.push_str(d);
            }
            if let Some(m) = r.managed_by {
                if !note.is_empty() {
                    note.push_str("; ");
                }
                note.push_str(&format!("managed by {m}"));
            }
            if let Some(d) = &r.domain {
                if !note.is_empty() {
                    note.push_str("; ");
                }
                note.push_str(&format!("quota domain {d}"));
            }
            println!(
                "  {:<4} {:<32} {:<8} {:<8} {:<8} {:<28} {:<10} {}",
                r.position.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                r.id,
                r.kind.as_str(),
                r.source.as_str(),
                r.masked.as_deref().unwrap_or("-"),
                expires,
                r.health.as_str(),
                note
            );
        }
    }
    for w in &view.warnings {
        eprintln!("warning: {w}");
    }
}
