//! `keygate models auth ...`: the commands that write the state files.
//!
//! Owns `paste-token`, `paste-api-key`, `setup-token` (secrets from stdin, never argv, no
//! echo on a TTY), `order get|set|clear`, `list` and `remove`. Every write goes through
//! `store::write` (lock, re-read, refuse unparseable files, atomic 0600 replace). Default
//! profile ids: `P:manual` for `paste-token` and `paste-api-key`, `anthropic:default` for
//! `setup-token`. Output never contains a secret: at most its last four characters.
//!
//! It does not own loading (`store`) nor the status view (`models`).

use std::io::{BufRead, IsTerminal, Read};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::{config_or_exit, fail, unknown_provider};
use super::{Context, EXIT_USAGE};
use crate::config::{parse_duration, Config};
use crate::credentials::env::resolve_env_id;
use crate::credentials::store::{
    self, AgentStore, Expires, StoreError, CLAUDE_CLI_PROFILE, PROFILES_FILE,
};
use crate::credentials::Kind;
use crate::secret::Secret;
use crate::status::{now_ms, rfc3339};

/// Prefix of an Anthropic setup-token (`claude setup-token`).
const SETUP_TOKEN_PREFIX: &str = "sk-ant-oat01-";
/// Minimum length of a setup-token.
const SETUP_TOKEN_MIN_LEN: usize = 80;
/// Largest secret accepted on stdin.
const MAX_STDIN: u64 = 64 * 1024;

/// `keygate models auth ...`.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Read a token from stdin (no echo on a TTY) and store it as `type: token`.
    PasteToken(PasteTokenArgs),
    /// Read an API key from stdin (no echo on a TTY) and store it as `type: api_key`.
    PasteApiKey(PasteKeyArgs),
    /// Store the token that `claude setup-token` printed (read from stdin).
    SetupToken(SetupTokenArgs),
    /// Per-agent explicit order of credentials (auth-state.json, or the agent's OpenClaw SQLite state).
    Order {
        /// What to do.
        #[command(subcommand)]
        command: OrderCommand,
    },
    /// List stored profiles (masked).
    List(ListArgs),
    /// Delete a stored profile and its order entries.
    Remove(RemoveArgs),
}

/// `paste-token` flags.
#[derive(Debug, Args)]
pub struct PasteTokenArgs {
    /// Provider id (anthropic, openai, ...).
    #[arg(long, value_name = "P")]
    pub provider: String,
    /// Profile id (default P:manual).
    #[arg(long, value_name = "ID")]
    pub profile_id: Option<String>,
    /// Lifetime, e.g. 365d or 12h; a bare number is days.
    #[arg(long, value_name = "DUR", value_parser = parse_expires_in)]
    pub expires_in: Option<Duration>,
}

/// `paste-api-key` flags.
#[derive(Debug, Args)]
pub struct PasteKeyArgs {
    /// Provider id (anthropic, openai, ...).
    #[arg(long, value_name = "P")]
    pub provider: String,
    /// Profile id (default P:manual).
    #[arg(long, value_name = "ID")]
    pub profile_id: Option<String>,
}

/// `setup-token` flags.
#[derive(Debug, Args)]
pub struct SetupTokenArgs {
    /// Provider id: only anthropic.
    #[arg(long, value_name = "P", default_value = "anthropic")]
    pub provider: String,
    /// Profile id (default anthropic:default).
    #[arg(long, value_name = "ID")]
    pub profile_id: Option<String>,
}

/// `order get|set|clear`.
#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Print the explicit order of a provider.
    Get {
        /// Provider id.
        #[arg(long, value_name = "P")]
        provider: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set the explicit order: stored profile ids and env ids (env:VAR, env:VAR#N) that resolve now.
    Set {
        /// Provider id.
        #[arg(long, value_name = "P")]
        provider: String,
        /// Credential ids, in order.
        #[arg(required = true, value_name = "PROFILE")]
        ids: Vec<String>,
    },
    /// Remove the explicit order of a provider.
    Clear {
        /// Provider id.
        #[arg(long, value_name = "P")]
        provider: String,
    },
}

/// `list` flags.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this provider.
    #[arg(long, value_name = "P")]
    pub provider: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `remove` arguments.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The profile id to delete.
    #[arg(value_name = "PROFILE")]
    pub profile: String,
}

/// A command failure: a store error or a message.
#[derive(Debug, thiserror::Error)]
enum CmdError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Msg(String),
}

/// Runs `models auth ...`.
pub(super) fn run(cx: &Context, cmd: AuthCommand) -> ExitCode {
    let config = match config_or_exit(cx) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        AuthCommand::PasteToken(a) => paste_token(cx, &config, a),
        AuthCommand::PasteApiKey(a) => paste_api_key(cx, &config, a),
        AuthCommand::SetupToken(a) => setup_token(cx, &config, a),
        AuthCommand::Order { command } => order(cx, &config, command),
        AuthCommand::List(a) => list(cx, &config, a),
        AuthCommand::Remove(a) => remove(cx, &config, a),
    }
}

fn parse_expires_in(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(86_400))
            .map(Duration::from_secs)
    } else {
        parse_duration(t)
    };
    match d {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{s:?} is not a lifetime like 365d or 12h (a bare number is days)"
        )),
    }
}

/// The agent's store (JSON files or OpenClaw's SQLite rows, SPEC §6b).
fn open_store(cx: &Context) -> Result<AgentStore, StoreError> {
    AgentStore::open(&cx.state_dir, &cx.agent)
}

/// Where credentials are written, for messages.
fn profiles_location(cx: &Context) -> String {
    open_store(cx).map_or_else(
        |_| {
            store::agent_dir(&cx.state_dir, &cx.agent)
                .join(PROFILES_FILE)
                .display()
                .to_string()
        },
        |s| s.profiles_location(),
    )
}

/// Checks a profile id: non-empty, no whitespace or control characters, at most 128.
fn valid_profile_id(id: &str) -> Result<(), ExitCode> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        eprintln!(
            "error: invalid profile id {id:?}: use 1-128 characters without spaces, e.g. anthropic:work"
        );
        return Err(ExitCode::from(EXIT_USAGE));
    }
    Ok(())
}

/// Reads one secret from stdin: without echo when stdin is a terminal, else the whole
/// (bounded) input. Errors never contain the value.
fn read_secret(what: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Paste the {what} and press Enter (input is hidden): ");
        let fd = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&fd).ok();
        if let Some(t) = &saved {
            let mut quiet = t.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            let _ = rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &quiet);
        }
        let mut line = String::new();
        let r = stdin.lock().read_line(&mut line);
        if let Some(t) = &saved {
            let _ = rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, t);
        }
        eprintln!();
        r.map_err(|e| format!("cannot read the {what} from stdin: {e}"))?;
        Ok(line)
    } else {
        let mut buf = String::new();
        stdin
            .lock()
            .take(MAX_STDIN + 1)
            .read_to_string(&mut buf)
            .map_err(|e| {
                format!("cannot read the {what} from stdin: {e} (it must be UTF-8 text)")
            })?;
        if buf.len() as u64 > MAX_STDIN {
            return Err(format!("the {what} on stdin is longer than 64 KiB"));
        }
        Ok(buf)
    }
}

/// A pasted secret: trimmed, one line, no inner whitespace.
fn clean_secret(raw: &str, what: &str) -> Result<String, String> {
    let v = raw.trim();
    if v.is_empty() {
        return Err(format!(
            "no {what} on stdin; pipe it in (e.g. `pbpaste | keygate models auth ...`) or paste it when asked"
        ));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the {what} on stdin contains spaces or line breaks; paste exactly one {what}"
        ));
    }
    Ok(v.to_owned())
}

/// Writes one profile (replacing the secret fields of an existing one with that id, and
/// keeping its other fields).
fn save_profile(
    cx: &Context,
    id: &str,
    provider: &str,
    fields: Map<String, Value>,
) -> Result<(), CmdError> {
    let kind = match fields.get("type").and_then(Value::as_str) {
        Some("api_key") => Some(Kind::ApiKey),
        Some("token") => Some(Kind::Token),
        Some("oauth") => Some(Kind::OAuth),
        _ => None,
    };
    open_store(cx)?.update_profiles_for(id, |profiles| {
        // In place: the other profiles keep their order (as OpenClaw wrote them).
        let slot = profiles
            .entry(id.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(entry) = slot else {
            unreachable!("made an object above");
        };
        for k in [
            "type",
            "mode",
            "key",
            "apiKey",
            "keyRef",
            "token",
            "tokenRef",
            "access",
            "refresh",
            "expires",
            "accessRef",
            "refreshRef",
        ] {
            // A field written again keeps its place; the others of the old kind go.
            if !fields.contains_key(k) {
                entry.shift_remove(k);
            }
        }
        // A new entry reads as OpenClaw writes one: type, provider, then the secret.
        if let Some(t) = fields.get("type") {
            entry.insert("type".into(), t.clone());
        }
        entry.insert("provider".into(), Value::from(provider));
        entry.extend(fields);
        Ok::<_, CmdError>(())
    })?;
    if let Some(kind) = kind {
        sync_openclaw_config(
            cx,
            store::openclaw_json::Edit::Upsert { id, provider, kind },
        );
    }
    Ok(())
}

/// Keeps OpenClaw's `openclaw.json` `auth.profiles` / `auth.order` in step with a change
/// to the store, where it must (SPEC §6b): a removed id leaves them, a pasted one joins a
/// provider that `auth.profiles` restricts. The store change is already made, so a problem
/// here is a note on stderr, not a failure.
fn sync_openclaw_config(cx: &Context, edit: store::openclaw_json::Edit<'_>) {
    use store::openclaw_json::{self, Edit, Outcome};
    let path = openclaw_json::config_path(&cx.state_dir, &cx.env);
    let id = match edit {
        Edit::Remove { id } | Edit::Upsert { id, .. } => id,
    };
    match openclaw_json::update(&path, edit) {
        Ok(Outcome::Written | Outcome::Unchanged) => {}
        Ok(Outcome::NotPlainJson) => eprintln!(
            "note: {} is not plain JSON (comments?), so keygate did not edit it: {} \"{id}\" under auth.profiles / auth.order by hand",
            path.display(),
            match edit {
                Edit::Remove { .. } => "remove",
                Edit::Upsert { .. } => "add",
            }
        ),
        Err(e) => eprintln!("note: {} was not updated: {e}", path.display()),
    }
}

/// The profile id and the secret read from stdin for a `paste-*` command, or its exit code:
/// the provider must be known and the id valid before anything is read.
fn pasted(
    config: &Config,
    provider: &str,
    profile_id: Option<String>,
    what: &str,
) -> Result<(String, String), ExitCode> {
    if config.provider(provider).is_none() {
        return Err(unknown_provider(config, provider));
    }
    let id = profile_id.unwrap_or_else(|| format!("{provider}:manual"));
    valid_profile_id(&id)?;
    let secret = read_secret(what)
        .and_then(|raw| clean_secret(&raw, what))
        .map_err(fail)?;
    Ok((id, secret))
}

/// A profile's secret fields: `{"type": kind, field: secret}`.
fn secret_fields(kind: &str, field: &str, secret: &str) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("type".into(), json!(kind));
    fields.insert(field.into(), json!(secret));
    fields
}

/// Saves `fields` (holding `secret`, a `what`) as profile `id` of `provider` and says so,
/// the secret masked, `note` after the place.
fn save_secret(
    cx: &Context,
    id: &str,
    provider: &str,
    fields: Map<String, Value>,
    what: &str,
    secret: String,
    note: &str,
) -> ExitCode {
    match save_profile(cx, id, provider, fields) {
        Ok(()) => {
            println!(
                "Saved {what} {} for {provider} as auth profile \"{id}\" in {}{note}.",
                Secret::new(secret).masked(),
                profiles_location(cx)
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn paste_token(cx: &Context, config: &Config, a: PasteTokenArgs) -> ExitCode {
    let (id, token) = match pasted(config, &a.provider, a.profile_id, "token") {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut fields = secret_fields("token", "token", &token);
    let expires = a
        .expires_in
        .map(|d| now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    if let Some(ms) = expires {
        fields.insert("expires".into(), json!(ms));
    }
    let exp = expires.map_or_else(String::new, |ms| format!(", expires {}", rfc3339(ms)));
    save_secret(cx, &id, &a.provider, fields, "token", token, &exp)
}

fn paste_api_key(cx: &Context, config: &Config, a: PasteKeyArgs) -> ExitCode {
    let (id, key) = match pasted(config, &a.provider, a.profile_id, "API key") {
        Ok(p) => p,
        Err(code) => return code,
    };
    let fields = secret_fields("api_key", "key", &key);
    save_secret(cx, &id, &a.provider, fields, "API key", key, "")
}

fn setup_token(cx: &Context, config: &Config, a: SetupTokenArgs) -> ExitCode {
    if a.provider != "anthropic" {
        eprintln!(
            "error: setup-token is only for --provider anthropic (the token `claude setup-token` prints); use paste-token for {}",
            a.provider
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if config.provider("anthropic").is_none() {
        return unknown_provider(config, "anthropic");
    }
    let id = a
        .profile_id
        .unwrap_or_else(|| "anthropic:default".to_owned());
    if let Err(code) = valid_profile_id(&id) {
        return code;
    }
    let raw = match read_secret("setup-token") {
        Ok(t) => t,
        Err(msg) => return fail(msg),
    };
    // The token may arrive wrapped over several lines: every whitespace goes.
    let token: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
    if token.is_empty() {
        return fail("no setup-token on stdin; run `claude setup-token` on a host with a TTY and paste what it prints");
    }
    if !token.starts_with(SETUP_TOKEN_PREFIX) {
        return fail(format!(
            "this is not a setup-token: it must start with {SETUP_TOKEN_PREFIX}; run `claude setup-token` and paste the token it prints (use paste-api-key for an API key)"
        ));
    }
    if token.chars().count() < SETUP_TOKEN_MIN_LEN {
        return fail(format!(
            "the setup-token is too short ({} characters, at least {SETUP_TOKEN_MIN_LEN} expected); it was probably cut off when copied, paste it again",
            token.chars().count()
        ));
    }
    let fields = secret_fields("token", "token", &token);
    save_secret(cx, &id, "anthropic", fields, "setup-token", token, "")
}

fn order(cx: &Context, config: &Config, cmd: OrderCommand) -> ExitCode {
    let provider = match &cmd {
        OrderCommand::Get { provider, .. }
        | OrderCommand::Set { provider, .. }
        | OrderCommand::Clear { provider } => provider.clone(),
    };
    let Some(pc) = config.provider(&provider) else {
        return unknown_provider(config, &provider);
    };
    let dir = store::agent_dir(&cx.state_dir, &cx.agent);
    // Validate the store first: a broken auth-profiles.json must be fixed before the order
    // that refers to it changes.
    let set = match agent_profiles(cx, config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match cmd {
        OrderCommand::Get { json, .. } => {
            let state = match open_store(cx).and_then(|s| s.load_state()) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let (order, source) = match (state.order.get(&provider), &pc.order) {
                (Some(o), _) => (Some(o.clone()), Some("auth-state")),
                (None, Some(o)) => (Some(o.clone()), Some("config")),
                (None, None) => (None, None),
            };
            if json {
                let doc = json!({"provider": provider, "agent": cx.agent, "order": order, "source": source});
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                match (order, source) {
                    (Some(o), Some(src)) => {
                        println!("order for {provider} (agent {}, from {src}):", cx.agent);
                        for (i, id) in o.iter().enumerate() {
                            println!("  {}. {id}", i + 1);
                        }
                    }
                    _ => println!(
                        "no explicit order for {provider} (agent {}): stored profiles by kind, then environment keys",
                        cx.agent
                    ),
                }
            }
            ExitCode::SUCCESS
        }
        OrderCommand::Set { ids, .. } => {
            let mut list: Vec<String> = Vec::with_capacity(ids.len());
            for id in ids {
                let id = id.trim().to_owned();
                if let Some(p) = set.profiles.iter().find(|p| p.id == id) {
                    if p.provider != provider {
                        return fail(format!(
                            "Auth profile \"{id}\" is for {}, not {provider}.",
                            p.provider
                        ));
                    }
                } else if resolve_env_id(&id, &provider, &pc.env_prefix, &cx.env).is_none() {
                    let other = config.providers.values().find(|o| {
                        o.id != provider
                            && resolve_env_id(&id, &o.id, &o.env_prefix, &cx.env).is_some()
                    });
                    return match other {
                        Some(o) => fail(format!(
                            "Auth profile \"{id}\" is for {}, not {provider}.",
                            o.id
                        )),
                        None => fail(format!(
                            "Auth profile \"{id}\" not found in {}.",
                            dir.display()
                        )),
                    };
                }
                if !list.contains(&id) {
                    list.push(id);
                }
            }
            let r = open_store(cx).map_err(CmdError::from).and_then(|s| {
                s.update_state(|top| {
                    let order = top
                        .entry("order")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !order.is_object() {
                        *order = Value::Object(Map::new());
                    }
                    if let Value::Object(o) = order {
                        o.insert(provider.clone(), json!(list));
                    }
                    Ok::<_, CmdError>(())
                })
            });
            match r {
                Ok(()) => {
                    println!(
                        "Order for {provider} (agent {}): {}.",
                        cx.agent,
                        list.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        OrderCommand::Clear { .. } => {
            let r = open_store(cx).map_err(CmdError::from).and_then(|s| {
                s.update_state_everywhere(|top| {
                    Ok::<_, CmdError>(match top.get_mut("order") {
                        Some(Value::Object(o)) => o.shift_remove(&provider).is_some(),
                        _ => false,
                    })
                })
            });
            match r {
                Ok(true) => {
                    println!("Cleared the order for {provider} (agent {}).", cx.agent);
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    println!(
                        "No explicit order for {provider} (agent {}); nothing to clear.",
                        cx.agent
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

/// The context agent's profiles as every command sees them ([`store::load_agent_profiles`]).
fn agent_profiles(cx: &Context, config: &Config) -> Result<store::ProfileSet, StoreError> {
    store::load_agent_profiles(&cx.state_dir, &cx.agent, &cx.env, &config.secret_providers)
}

fn list(cx: &Context, config: &Config, a: ListArgs) -> ExitCode {
    if let Some(p) = &a.provider {
        if config.provider(p).is_none() {
            return unknown_provider(config, p);
        }
    }
    let set = match agent_profiles(cx, config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let rows: Vec<_> = set
        .profiles
        .iter()
        .filter(|p| a.provider.as_ref().is_none_or(|only| &p.provider == only))
        .collect();
    let managed = |id: &str| {
        set.managed_ids
            .iter()
            .any(|m| m == id)
            .then_some("claude-code")
    };
    if a.json {
        let items: Vec<Value> = rows
            .iter()
            .map(|p| {
                let (expires, at, remaining) = crate::status::expiry_json(p.expires, now_ms());
                json!({
                    "id": p.id,
                    "provider": p.provider,
                    "kind": p.kind.as_str(),
                    "secret": p.secret.as_ref().ok().map(Secret::masked),
                    "problem": p.secret.as_ref().err().map(ToString::to_string),
                    "expires": expires,
                    "expiresAt": expires,
                    "expiresAtIso": at,
                    "remainingMs": remaining,
                    "email": p.email,
                    "displayName": p.display_name,
                    "managedBy": managed(&p.id),
                })
            })
            .collect();
        let doc = json!({"agent": cx.agent, "file": profiles_location(cx), "profiles": items, "warnings": set.warnings});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!("{}", profiles_location(cx));
        if rows.is_empty() {
            println!("  (no stored profiles)");
        } else {
            println!(
                "  {:<32} {:<12} {:<8} {:<8} {:<22} NOTE",
                "ID", "PROVIDER", "KIND", "SECRET", "EXPIRES"
            );
        }
        for p in rows {
            let expires = match p.expires {
                Expires::At(ms) => rfc3339(ms),
                Expires::Invalid => "invalid".into(),
                Expires::None => "-".into(),
            };
            let mut note = p
                .secret
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            if let Some(m) = managed(&p.id) {
                note.push_str(&format!("managed by {m}"));
            }
            println!(
                "  {:<32} {:<12} {:<8} {:<8} {:<22} {note}",
                p.id,
                p.provider,
                p.kind.as_str(),
                p.secret
                    .as_ref()
                    .map_or_else(|_| "-".to_owned(), Secret::masked),
                expires
            );
        }
        for w in &set.warnings {
            eprintln!("warning: {w}");
        }
    }
    ExitCode::SUCCESS
}

fn remove(cx: &Context, _config: &Config, a: RemoveArgs) -> ExitCode {
    let id = a.profile.trim().to_owned();
    let store = match open_store(cx) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let path = store.profiles_location();
    let r = store.update_profiles_for(&id, |profiles| {
        if profiles.shift_remove(&id).is_some() {
            return Ok(());
        }
        if id == CLAUDE_CLI_PROFILE {
            let shown = store::claude_credentials_path(&cx.env).map_or_else(
                || "~/.claude/.credentials.json".to_owned(),
                |p| p.display().to_string(),
            );
            return Err(CmdError::Msg(format!(
                "Auth profile \"{id}\" comes from Claude Code ({shown}) and is not stored by keygate; remove that file or point KEYGATE_CLAUDE_CREDENTIALS elsewhere"
            )));
        }
        Err(CmdError::Msg(format!(
            "Auth profile \"{id}\" not found in {path}."
        )))
    });
    if let Err(e) = r {
        return fail(e);
    }
    // In SQLite a profile may be in the agent's own row and in the shared one: the shared
    // copy would show through again, so it goes too.
    if matches!(store.profile_entry(&id), Ok(Some(_))) {
        let again = store.update_profiles_for(&id, |profiles| {
            profiles.shift_remove(&id);
            Ok::<_, CmdError>(())
        });
        if let Err(e) = again {
            return fail(e);
        }
    }
    let mut from_orders: Vec<String> = Vec::new();
    let r = store.update_state_everywhere(|top| {
        let mut changed = false;
        if let Some(Value::Object(order)) = top.get_mut("order") {
            let mut emptied = Vec::new();
            for (provider, ids) in order.iter_mut() {
                if let Value::Array(list) = ids {
                    let before = list.len();
                    list.retain(|v| v.as_str().map(str::trim) != Some(id.as_str()));
                    if list.len() != before {
                        changed = true;
                        if !from_orders.contains(provider) {
                            from_orders.push(provider.clone());
                        }
                        if list.is_empty() {
                            emptied.push(provider.clone());
                        }
                    }
                }
            }
            // An emptied order would mean "use nothing": drop it instead.
            for p in &emptied {
                order.shift_remove(p);
            }
        }
        Ok::<_, CmdError>(changed)
    });
    if let Err(e) = r {
        return fail(format!(
            "removed auth profile \"{id}\" from {path}, but its order entries could not be removed: {e}"
        ));
    }
    sync_openclaw_config(cx, store::openclaw_json::Edit::Remove { id: &id });
    if from_orders.is_empty() {
        println!("Removed auth profile \"{id}\" from {path}.");
    } else {
        println!(
            "Removed auth profile \"{id}\" from {path} and from the order of {}.",
            from_orders.join(", ")
        );
    }
    ExitCode::SUCCESS
}
