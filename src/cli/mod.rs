//! The command line (SPEC §1): global flags, subcommands, exit codes.
//!
//! Owns argument parsing (clap), the state-dir/config resolution shared by every command,
//! and mapping outcomes to exit codes: 0 ok, 1 error (a config file that does not exist or
//! cannot be read, a state dir other users can write to), 64 usage error (bad flags or a
//! bad config file). Each command lives in its own file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{parse_duration, Config, LogFormat};
use crate::credentials::env::EnvSnapshot;

mod auth;
mod cluster;
mod config_check;
mod doctor;
pub(crate) mod models;
mod probe;
mod serve;

pub use auth::{
    AuthCommand, ListArgs, OrderCommand, PasteKeyArgs, PasteTokenArgs, RemoveArgs, SetupTokenArgs,
};
pub use doctor::DoctorArgs;
pub use models::{ModelsCommand, StatusArgs};
pub use probe::ProbeArgs;

/// Exit code for usage errors (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// keygate: a credential-rotating reverse proxy for LLM provider APIs.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML). Optional: every key has a default.
    #[arg(long, global = true, env = "KEYGATE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// State directory (OpenClaw layout). Default: $KEYGATE_STATE_DIR, $OPENCLAW_STATE_DIR, ~/.openclaw.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Agent id whose auth files are used.
    #[arg(long, global = true, default_value = "main", value_name = "ID")]
    pub agent: String,
    /// Log format (overrides [log] format).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(serve::ServeArgs),
    /// Credentials: status (with --check and --probe) and auth (paste, order, list, remove).
    Models {
        /// What to do.
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Check config, state files, permissions, expiry, legacy formats, Claude Code credentials.
    Doctor(DoctorArgs),
    /// Cluster mode (SPEC §10): the Redis connection, the replicas, the shared cooldowns.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Configuration tools.
    Config {
        /// What to do.
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// `keygate config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate the config, print the effective provider table.
    Check,
}

/// What every command needs: the environment, the state dir, the config.
pub struct Context {
    /// Process environment plus `<state-dir>/.env`.
    pub env: EnvSnapshot,
    /// The process environment alone (`serve` re-reads `.env` on changes).
    pub process_env: EnvSnapshot,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The config path, if any.
    pub config_path: Option<PathBuf>,
    /// The agent id.
    pub agent: String,
}

// === impl Context ===

impl Context {
    /// Loads the config with this context's environment.
    pub fn load_config(&self) -> Result<Config, crate::config::ConfigError> {
        Config::load(self.config_path.as_deref(), &|k| {
            self.env.get(k).map(str::to_owned)
        })
    }
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => EXIT_USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let process_env = EnvSnapshot::from_process();
    let state_dir = cli
        .state_dir
        .clone()
        .or_else(|| {
            process_env
                .get("KEYGATE_STATE_DIR")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| {
            process_env
                .get("OPENCLAW_STATE_DIR")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| {
            process_env
                .get("HOME")
                .map(|h| PathBuf::from(h).join(".openclaw"))
        })
        .unwrap_or_else(|| PathBuf::from(".openclaw"));
    // Printed and logged absolute (`--state-dir ./x` names `/abs/x`); links are kept as
    // spelled, the store's own checks resolve them.
    let state_dir = std::path::absolute(&state_dir).unwrap_or(state_dir);
    // A state dir other users can write to is refused before anything in it is read
    // (SPEC §6); doctor, which reports and repairs it, still runs.
    if !matches!(cli.command, Command::Doctor(_)) {
        if let Err(e) = crate::credentials::store::check_state_dir(&state_dir) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    let env = match process_env
        .clone()
        .with_dotenv_file(&state_dir.join(".env"))
    {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if !crate::config::valid_agent_id(&cli.agent) {
        eprintln!(
            "error: invalid --agent {:?}: use letters, digits, '.', '_' and '-' (at most 64)",
            cli.agent
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let cx = Context {
        env,
        process_env,
        state_dir,
        config_path: cli.config.clone(),
        agent: cli.agent.clone(),
    };
    let log_format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_broken_pipe();
    }
    match cli.command {
        Command::Serve(args) => serve::run(&cx, args, log_format),
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check::run(&cx),
        Command::Models { command } => models::run(&cx, command),
        Command::Doctor(args) => doctor::run(&cx, args),
        Command::Cluster { command } => cluster::run(&cx, command),
    }
}

/// `keygate models status | head` closes stdout early; Rust ignores SIGPIPE, so `println!`
/// panics there. A command-line tool should end quietly instead, like one killed by SIGPIPE
/// (exit 141). Done with a panic hook because resetting SIGPIPE needs `unsafe`, which this
/// crate forbids; other panics keep the default report.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Loads the config for a command; prints the error and gives exit 64 when it is invalid,
/// 1 when it cannot be read (SPEC §1).
pub(super) fn config_or_exit(cx: &Context) -> Result<Config, ExitCode> {
    cx.load_config().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(e.exit_code())
    })
}

/// Prints an error and gives exit 1.
pub(super) fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

/// The "unknown provider" usage error.
pub(super) fn unknown_provider(config: &Config, p: &str) -> ExitCode {
    let known: Vec<&str> = config.providers.keys().map(String::as_str).collect();
    eprintln!(
        "error: unknown provider \"{p}\"; known providers: {}; add [providers.{p}] to the config for a custom one",
        known.join(", ")
    );
    ExitCode::from(EXIT_USAGE)
}

/// A `--…` duration flag (`30s`, `12h`, `7d`).
pub(super) fn parse_dur(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 30s, 12h or 7d"))
}
