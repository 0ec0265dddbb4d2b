//! `keygate doctor [--fix]`: check config, state files, permissions, expiry, legacy
//! formats and Claude Code credentials; `--fix` repairs what it safely can.
//!
//! Checks, per agent (the selected one and every `<state>/agents/*/agent`): the config
//! parses; `auth-profiles.json` / `auth-state.json` parse (a problem naming file, line and
//! column otherwise); the legacy flat format; permissions (files with any group/other bits,
//! directories other than 0700 for the state dir and agent dirs); profiles with an unusable
//! secret (missing, unresolved reference, OAuth + SecretRef) or invalid/past `expires`
//! (problems), tokens expiring within 24 h (warning); orders naming nothing; the Claude Code
//! credentials; Claude-Code-only tokens (hint); duplicate environment keys (warning).
//!
//! `--fix`: rewrites a legacy flat file canonically (backup beside it), sets files to 0600
//! and directories to 0700. It never changes a file it cannot parse (not even its mode),
//! never follows a symbolic link out of the state dir (reported as a problem; modes are
//! changed with `fchmod` on an `O_NOFOLLOW` descriptor), and is the one command that runs
//! on a state dir other users can write to (it reports that, and `--fix` repairs the mode).
//! Exit 0 when nothing is left to fix (warnings allowed), 1 when problems remain.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::Context;
use crate::config::Config;
use crate::credentials::env::env_credentials;
use crate::credentials::store::{
    self, write, AgentStore, Backend, Expires, SharedAt, AUTH_STATE_FILE, PROFILES_FILE,
};
use crate::credentials::Kind;
use crate::status::{now_ms, profile_health, when, Health};

/// Warn window for expiring tokens.
const WARN: Duration = Duration::from_secs(24 * 3600);

/// `doctor` flags.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Repair: rewrite a legacy flat auth-profiles.json (keeping a .bak), tighten permissions.
    #[arg(long)]
    pub fix: bool,
}

#[derive(Default)]
struct Report {
    problems: usize,
    fixed: usize,
    /// Problems printed so far (one refused link is met by the load and the mode check).
    seen: Vec<String>,
}

impl Report {
    fn problem(&mut self, msg: impl std::fmt::Display) {
        let msg = msg.to_string();
        if self.seen.contains(&msg) {
            return;
        }
        self.problems += 1;
        println!("problem: {msg}");
        self.seen.push(msg);
    }
    fn warn(&mut self, msg: impl std::fmt::Display) {
        println!("warning: {msg}");
    }
    fn info(&mut self, msg: impl std::fmt::Display) {
        println!("ok: {msg}");
    }
    fn fixed(&mut self, msg: impl std::fmt::Display) {
        self.fixed += 1;
        println!("fixed: {msg}");
    }
}

/// Runs the checks (and fixes).
pub(super) fn run(cx: &Context, args: DoctorArgs) -> ExitCode {
    let mut r = Report::default();
    let config = match cx.load_config() {
        Ok(c) => {
            match &c.path {
                Some(p) => r.info(format!("config {} is valid", p.display())),
                None => r.info("no config file: built-in defaults"),
            }
            c
        }
        Err(e) => {
            r.problem(format!("{e}"));
            Config::defaults()
        }
    };

    if cx.state_dir.exists() {
        // The check every other command refuses to run past (SPEC §6); doctor reports it,
        // and --fix repairs the mode (not the owner).
        match store::check_state_dir(&cx.state_dir) {
            Ok(()) => check_mode(&mut r, &cx.state_dir, &cx.state_dir, true, args.fix, true),
            Err(e @ store::UnsafeStateDir::Writable { .. }) if !args.fix => r.problem(e),
            Err(e @ store::UnsafeStateDir::Owner { .. }) => r.problem(e),
            Err(store::UnsafeStateDir::Writable { .. }) => {
                check_mode(&mut r, &cx.state_dir, &cx.state_dir, true, args.fix, true)
            }
        }
        let dotenv = cx.state_dir.join(".env");
        if dotenv.symlink_metadata().is_ok() {
            check_mode(&mut r, &cx.state_dir, &dotenv, false, args.fix, true);
        }
    } else {
        r.info(format!(
            "state directory {} does not exist yet (it is created on the first write)",
            cx.state_dir.display()
        ));
    }

    let mut agents = vec![cx.agent.clone()];
    if let Ok(rd) = std::fs::read_dir(cx.state_dir.join("agents")) {
        let mut found: Vec<String> = rd
            .filter_map(Result::ok)
            .filter(|e| e.path().join("agent").is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|a| crate::config::valid_agent_id(a) && a != &cx.agent)
            .collect();
        found.sort();
        agents.extend(found);
    }
    describe_store(&mut r, cx);
    for agent in &agents {
        check_agent(&mut r, cx, &config, agent, args.fix);
    }
    check_claude(&mut r, cx);
    check_env(&mut r, cx, &config);

    println!();
    match (r.problems, r.fixed) {
        (0, 0) => println!("doctor: no problems found"),
        (0, n) => println!("doctor: fixed {n} problem(s); nothing else to fix"),
        (p, _) if args.fix => println!("doctor: {p} problem(s) remain that --fix cannot repair"),
        (p, _) => println!(
            "doctor: {p} problem(s); run `keygate doctor --fix` to repair what can be repaired"
        ),
    }
    if r.problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Checks (and with `fix` repairs) a file's or directory's mode. `fixable` is false for a
/// file that does not parse. A symbolic link below `root` (the state dir) is followed only
/// while it stays inside it, and the mode is changed on an `O_NOFOLLOW` descriptor
/// (`fchmod`), so a link never makes doctor change a file elsewhere.
fn check_mode(r: &mut Report, root: &Path, path: &Path, dir: bool, fix: bool, fixable: bool) {
    let real = if path == root {
        // The state dir itself may be a link (to where the user keeps it).
        match path.canonicalize() {
            Ok(p) => p,
            Err(_) => return,
        }
    } else {
        match store::confine_in(root, path) {
            Ok(p) => p,
            Err(e) => return r.problem(e),
        }
    };
    let Ok(meta) = std::fs::symlink_metadata(&real) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    let (bad, want) = if dir {
        (mode != 0o700, 0o700)
    } else {
        (mode & 0o077 != 0, 0o600)
    };
    if !bad {
        return;
    }
    let what = if dir { "directory" } else { "file" };
    if fix && fixable {
        match store::chmod_nofollow(&real, want, dir) {
            Ok(()) => r.fixed(format!(
                "{what} {} had mode {mode:03o}; set to {want:03o}",
                path.display()
            )),
            Err(e) => r.problem(format!(
                "{what} {} has mode {mode:03o} and cannot be changed: {e}",
                path.display()
            )),
        }
    } else {
        r.problem(format!(
            "{what} {} has mode {mode:03o}; it should be {want:03o} (run `keygate doctor --fix` or `chmod {want:o} {}`)",
            path.display(),
            path.display()
        ));
    }
}

fn check_agent(r: &mut Report, cx: &Context, config: &Config, agent: &str, fix: bool) {
    let dir = store::agent_dir(&cx.state_dir, agent);
    if !dir.exists() {
        if agent == cx.agent {
            r.info(format!(
                "agent {agent}: no state files yet ({})",
                dir.display()
            ));
        }
        return;
    }
    for d in [dir.parent().map(Path::to_path_buf), Some(dir.clone())]
        .into_iter()
        .flatten()
    {
        check_mode(r, &cx.state_dir, &d, true, fix, true);
    }
    let agent_store = match AgentStore::open(&cx.state_dir, agent) {
        Ok(s) => s,
        Err(e) => return r.problem(e),
    };
    if let Backend::Sqlite(_) = agent_store.backend() {
        return check_sqlite_agent(r, cx, config, agent, &agent_store, fix);
    }
    let profiles_path = dir.join(PROFILES_FILE);
    let state_path = dir.join(AUTH_STATE_FILE);

    // auth-profiles.json
    let mut parsed = false;
    if profiles_path.symlink_metadata().is_ok() {
        match store::load_profiles(&profiles_path, &cx.env, &config.secret_providers) {
            Err(e) => r.problem(e),
            Ok(set) => {
                parsed = true;
                if set.legacy_flat {
                    if fix {
                        match write::fix_legacy_flat(&profiles_path) {
                            Ok(Some(f)) => {
                                r.fixed(format!(
                                    "{} was in the legacy flat format; rewrote it canonically ({}); the original is {}",
                                    profiles_path.display(),
                                    f.converted.join(", "),
                                    f.backup.display()
                                ));
                                for d in f.dropped {
                                    r.warn(format!("legacy entry \"{d}\" has no recognisable type and was not carried over; it is still in the backup"));
                                }
                            }
                            Ok(None) => {}
                            Err(e) => r.problem(e),
                        }
                    } else {
                        r.problem(format!(
                            "{} is in the legacy flat format (no \"profiles\" key); run `keygate doctor --fix` to rewrite it",
                            profiles_path.display()
                        ));
                    }
                }
                for w in set
                    .warnings
                    .iter()
                    .filter(|w| !w.contains("legacy flat format"))
                {
                    r.warn(w);
                }
                check_profiles(r, agent, &set);
                if !set.profiles.is_empty() || !set.warnings.is_empty() {
                    r.info(format!(
                        "agent {agent}: {} stored profile(s) in {}",
                        set.profiles.len(),
                        profiles_path.display()
                    ));
                }
            }
        }
        check_mode(r, &cx.state_dir, &profiles_path, false, fix, parsed);
    }

    // auth-state.json
    if state_path.symlink_metadata().is_ok() {
        match store::load_auth_state(&state_path) {
            Err(e) => {
                r.problem(e);
                check_mode(r, &cx.state_dir, &state_path, false, fix, false);
            }
            Ok(state) => {
                for w in &state.warnings {
                    r.warn(w);
                }
                for provider in state.order.keys() {
                    if config.provider(provider).is_none() {
                        // The key is shown only when it is a provider id (never a value).
                        let name = if store::is_provider_id(provider) {
                            format!("order.{provider}")
                        } else {
                            "an entry of \"order\" (its provider is not a provider id)".to_owned()
                        };
                        r.warn(format!(
                            "{}: {name} is for a provider the config does not define",
                            state_path.display()
                        ));
                    }
                }
                check_mode(r, &cx.state_dir, &state_path, false, fix, true);
            }
        }
    }
}

/// Health of each profile: unusable, expired, invalid expiry (problems), expiring soon and
/// misfiled subscription tokens (warnings).
fn check_profiles(r: &mut Report, agent: &str, set: &store::ProfileSet) {
    let now = now_ms();
    let warn_ms = i64::try_from(WARN.as_millis()).unwrap_or(i64::MAX);
    for p in &set.profiles {
        let (health, _, detail) = profile_health(p, now, warn_ms);
        let detail = detail.unwrap_or_default();
        match health {
            Health::Missing => r.problem(format!(
                "agent {agent}: auth profile \"{}\" is unusable: {detail}",
                p.id
            )),
            Health::Expired => r.problem(format!(
                "agent {agent}: auth profile \"{}\" ({}) {detail}; paste a new one with `keygate models auth paste-token --provider {} --profile-id {}`",
                p.id, p.kind.as_str(), p.provider, p.id
            )),
            Health::InvalidExpires => r.problem(format!(
                "agent {agent}: auth profile \"{}\": {detail}",
                p.id
            )),
            Health::Expiring => {
                if let Expires::At(ms) = p.expires {
                    r.warn(format!(
                        "agent {agent}: auth profile \"{}\" expires {}",
                        p.id,
                        when(ms, now)
                    ));
                }
            }
            Health::Ok | Health::Static => {}
        }
        if p.kind == Kind::ApiKey
            && p.secret
                .as_ref()
                .is_ok_and(|s| s.expose().contains("sk-ant-oat"))
        {
            r.warn(format!(
                "agent {agent}: auth profile \"{}\" is stored as an api_key but holds a Claude subscription token (sk-ant-oat…); keygate sends it as a Bearer token, but store it with `keygate models auth setup-token` so its kind is right",
                p.id
            ));
        }
    }
}

/// An agent of a SQLite-era state dir (SPEC §6b): leftover JSON files (OpenClaw refuses
/// their providers until they are imported; `--fix` imports them into the database and
/// archives them), the health of the stored profiles, and the order rows.
fn check_sqlite_agent(
    r: &mut Report,
    cx: &Context,
    config: &Config,
    agent: &str,
    st: &AgentStore,
    fix: bool,
) {
    let file = st.profiles_file();
    let state_file = st.state_file();
    let leftovers: Vec<&Path> = [file.as_path(), state_file.as_path()]
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    if !leftovers.is_empty() {
        let db = st.load_db_profiles(&cx.env, &config.secret_providers);
        let json = store::load_profiles(&file, &cx.env, &config.secret_providers);
        if let (Ok(db), Ok(json)) = (&db, &json) {
            let differ: Vec<&str> = json
                .profiles
                .iter()
                .filter(|j| {
                    !db.profiles.iter().any(|d| {
                        d.id == j.id
                            && d.provider == j.provider
                            && d.kind == j.kind
                            && d.secret == j.secret
                            && d.expires == j.expires
                    })
                })
                .map(|j| j.id.as_str())
                .collect();
            if !db.profiles.is_empty() && !differ.is_empty() {
                r.warn(format!(
                    "agent {agent}: {} and {} both hold profiles, and they differ ({}): the database is what OpenClaw and keygate use",
                    file.display(),
                    st.profiles_location(),
                    differ.join(", ")
                ));
            }
        }
        if fix {
            match st.import_json() {
                Ok(Some(i)) => {
                    let mut what = format!("imported {} profile(s)", i.imported.len());
                    if !i.imported.is_empty() {
                        what.push_str(&format!(" ({})", i.imported.join(", ")));
                    }
                    if !i.kept.is_empty() {
                        what.push_str(&format!(
                            "; kept the database's version of {}",
                            i.kept.join(", ")
                        ));
                    }
                    if !i.orders.is_empty() {
                        what.push_str(&format!("; copied the order of {}", i.orders.join(", ")));
                    }
                    let archived: Vec<String> =
                        i.archived.iter().map(|p| p.display().to_string()).collect();
                    r.fixed(format!(
                        "agent {agent}: moved the JSON auth files into {}: {what}; the originals are {}",
                        st.profiles_location(),
                        archived.join(" and ")
                    ));
                    for d in i.dropped {
                        r.warn(format!("legacy entry \"{d}\" has no recognisable type and was not carried over; it is still in the archive"));
                    }
                }
                Ok(None) => {}
                Err(e) => r.problem(e),
            }
        } else {
            let names: Vec<String> = leftovers.iter().map(|p| p.display().to_string()).collect();
            r.problem(format!(
                "agent {agent}: {} left in a state dir whose credentials live in {}: OpenClaw 2026.6+ refuses the providers they name (AUTH_PROFILE_MIGRATION_REQUIRED) and keygate reads them only while the database has no profile; run `keygate doctor --fix` to import and archive them",
                names.join(" and "),
                st.profiles_location()
            ));
        }
    }
    match st.load_profiles(&cx.env, &config.secret_providers) {
        Err(e) => r.problem(e),
        Ok(set) => {
            for w in set
                .warnings
                .iter()
                .filter(|w| !w.contains(" is ignored: ") && !w.contains(" was read because "))
            {
                r.warn(w);
            }
            check_profiles(r, agent, &set);
            r.info(format!(
                "agent {agent}: {} stored profile(s) in {}",
                set.profiles.len(),
                st.profiles_location()
            ));
        }
    }
    match st.load_state() {
        Err(e) => r.problem(e),
        Ok(state) => {
            for w in &state.warnings {
                r.warn(w);
            }
            for provider in state.order.keys() {
                if config.provider(provider).is_none() && store::is_provider_id(provider) {
                    r.warn(format!(
                        "agent {agent}: order.{provider} in {} is for a provider the config does not define",
                        st.state_location()
                    ));
                }
            }
        }
    }
}

/// Names the store the state dir uses, and the OpenClaw version that wrote it (SPEC §6b).
fn describe_store(r: &mut Report, cx: &Context) {
    let st = match AgentStore::open(&cx.state_dir, &cx.agent) {
        Ok(s) => s,
        Err(e) => return r.problem(e),
    };
    match st.backend() {
        Backend::Json => r.info(format!(
            "store: JSON files (agents/<id>/agent/{PROFILES_FILE}, as OpenClaw up to 2026.5 keeps them)"
        )),
        Backend::Sqlite(s) => {
            let version = [&s.state_db, &s.main_db, &s.agent_db]
                .into_iter()
                .find_map(|db| store::sqlite::schema_meta(db).ok().flatten())
                .map_or_else(
                    || "OpenClaw version unknown (no schema_meta)".to_owned(),
                    |(app, schema)| match app {
                        Some(v) => format!("written by OpenClaw {v}, schema {schema}"),
                        None => format!("schema {schema}"),
                    },
                );
            let at = match s.shared {
                SharedAt::StateDb => "auth.sharedStore = state-db",
                SharedAt::LegacyMain => "auth.sharedStore = legacy-main",
            };
            r.info(format!(
                "store: OpenClaw SQLite ({}; {at}; {version})",
                st.profiles_location()
            ));
        }
    }
}

fn check_claude(r: &mut Report, cx: &Context) {
    let path: Option<PathBuf> = store::claude_credentials_path(&cx.env);
    match store::load_claude_cli(&cx.env) {
        Ok(Some(p)) => {
            let state = match p.expires {
                Expires::At(ms) if ms <= now_ms() && p.refresh.is_none() => {
                    format!("its access token expired {}", when(ms, now_ms()))
                }
                Expires::At(ms) if ms <= now_ms() => format!(
                    "its access token expired {}; Claude Code refreshes it when it runs (keygate never does)",
                    when(ms, now_ms())
                ),
                Expires::At(ms) => format!("valid, expires {}", when(ms, now_ms())),
                _ => "no expiry recorded".to_owned(),
            };
            r.info(format!(
                "Claude Code credentials {} appear as auth profile \"{}\" ({}, {state})",
                path.map(|p| p.display().to_string()).unwrap_or_default(),
                p.id,
                p.kind.as_str()
            ));
        }
        Ok(None) => {}
        Err(w) => r.warn(w),
    }
}

fn check_env(r: &mut Report, cx: &Context, config: &Config) {
    let set =
        store::load_agent_profiles(&cx.state_dir, &cx.agent, &cx.env, &config.secret_providers)
            .unwrap_or_default();
    for (id, pc) in &config.providers {
        let env = env_credentials(id, &pc.env_prefix, &cx.env);
        // Duplicate env keys: the same value under two ids.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for c in &env {
            let v = c.secret.expose().trim();
            match seen.iter().find(|(s, _)| *s == v) {
                Some((_, first)) => r.warn(format!(
                    "{} holds the same key as {first}; only {first} is used — remove the duplicate",
                    c.id
                )),
                None => seen.push((v, c.id.as_str())),
            }
        }
        for p in set.profiles.iter().filter(|p| &p.provider == id) {
            if let Ok(s) = &p.secret {
                if let Some((_, e)) = seen.iter().find(|(v, _)| *v == s.expose().trim()) {
                    r.warn(format!(
                        "{e} holds the same key as auth profile \"{}\"; only one of them is used",
                        p.id
                    ));
                }
            }
        }
        if id == "anthropic" {
            let profiles: Vec<_> = set
                .profiles
                .iter()
                .filter(|p| p.provider == "anthropic" && p.secret.is_ok())
                .collect();
            let any = !profiles.is_empty() || !env.is_empty();
            let is_oat = |kind: Kind, s: &str| kind != Kind::ApiKey || s.contains("sk-ant-oat");
            let all_cc = profiles
                .iter()
                .all(|p| p.secret.as_ref().is_ok_and(|s| is_oat(p.kind, s.expose())))
                && env.iter().all(|c| is_oat(c.kind, c.secret.expose()));
            if any && all_cc {
                r.warn(
                    "every anthropic credential is a Claude subscription token (setup-token / OAuth / Claude Code): Anthropic accepts those only for Claude Code requests, and other clients get \"This credential is only authorized for use with Claude Code and cannot be used for other API requests.\"; add an API key (`keygate models auth paste-api-key --provider anthropic`) for other clients",
                );
            }
        }
    }
}
