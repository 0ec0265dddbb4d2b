//! `file` and `exec` SecretRef providers (SPEC §6).
//!
//! Owns reading a secret named by a [`SecretRef`] whose source is `file` or `exec`, from the
//! `[secrets.providers.<alias>]` entry of the config, with every rule of SPEC §6:
//!
//! - `file`: the path is absolute, a regular file (no symlink, checked without following
//!   it), owned by the current user, not group/world readable, at most 1 MiB. Mode `json`
//!   (default): the file is JSON and the id is a JSON pointer (`/anthropic/work`) to a
//!   string. Mode `single_value`: the id must be `value`; the whole file is the secret, one
//!   trailing newline stripped. Reads are bounded by 5 s.
//! - `exec`: the command is absolute with the same ownership rules, run without a shell with
//!   only the `pass_env` variables (from the injected environment), stdin
//!   `{"protocolVersion":1,"provider":"<alias>","ids":["…"]}`, stdout
//!   `{"protocolVersion":1,"values":{"<id>":"<secret>"}}`; the configured timeout (5 s by
//!   default), 1 MiB of output, and a non-zero exit fails.
//!
//! It does not own `env` references or templates (see `store::resolve_ref`, the one entry
//! point), nor caching: resolution happens when the store loads, not per request. Errors
//! say why, never the secret or the file's content.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::env::EnvSnapshot;
use crate::config::SecretProviderConfig;
use crate::secret::Secret;

/// A SecretRef (SPEC §6): `{ "source": "env"|"file"|"exec", "provider": "<alias>", "id": "…" }`
/// or the string template `"${ENV_NAME}"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Where the secret lives.
    pub source: SecretSource,
    /// Provider alias (`[secrets.providers.<alias>]`); `default` when absent.
    pub provider: String,
    /// Variable name, JSON pointer or id, depending on the source (trimmed).
    pub id: String,
}

/// The source of a [`SecretRef`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable (from the [`EnvSnapshot`]).
    Env,
    /// A file named by `[secrets.providers.<alias>]`.
    File,
    /// A command named by `[secrets.providers.<alias>]`.
    Exec,
}

// === impl SecretSource ===

impl SecretSource {
    /// `env`, `file` or `exec`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretSource::Env => "env",
            SecretSource::File => "file",
            SecretSource::Exec => "exec",
        }
    }
}

/// The `[secrets.providers]` table of the config, by alias.
pub type SecretProviders = BTreeMap<String, SecretProviderConfig>;

/// Largest file or command output read (1 MiB).
pub const MAX_SECRET_BYTES: u64 = 1024 * 1024;

/// Time limit for reading a secret file.
const FILE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves a `file` or `exec` reference through `[secrets.providers.<alias>]`.
///
/// Errors (the reason, never a secret): provider not configured or of the other source,
/// path/command rules broken, unreadable or unparseable file, JSON pointer not found or not
/// a string, command failure, timeout, size limit, empty value.
pub fn resolve(
    r: &SecretRef,
    providers: &SecretProviders,
    env: &EnvSnapshot,
) -> Result<Secret, String> {
    let Some(cfg) = providers.get(&r.provider) else {
        return Err(format!(
            "secret provider \"{}\" is not configured; add [secrets.providers.{}] to the config",
            r.provider, r.provider
        ));
    };
    let value = match (r.source, cfg) {
        (SecretSource::File, SecretProviderConfig::File { path, single_value }) => {
            read_file_secret(path, *single_value, &r.id)?
        }
        (
            SecretSource::Exec,
            SecretProviderConfig::Exec {
                command,
                args,
                pass_env,
                timeout,
            },
        ) => exec_secret(command, args, pass_env, *timeout, &r.provider, &r.id, env)?,
        _ => {
            return Err(format!(
                "secret provider \"{}\" is not a {} provider",
                r.provider,
                r.source.as_str()
            ))
        }
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("secret \"{}\" is empty", r.id));
    }
    Ok(Secret::new(value))
}

/// Checks the SPEC §6 rules for a secret file or command: absolute, not a symlink, a
/// regular file, owned by the current user, no group/world read (files) or write
/// (commands) access.
pub fn check_owner_only(path: &Path, what: &str, exec: bool) -> Result<(), String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{what} {shown} is not an absolute path"));
    }
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| format!("cannot stat {what} {shown}: {e}"))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(format!(
            "{what} {shown} is a symlink; point the config at the real file"
        ));
    }
    if !ft.is_file() || ft.is_fifo() {
        return Err(format!("{what} {shown} is not a regular file"));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{what} {shown} is not owned by the current user (uid {me})"
        ));
    }
    let mode = meta.mode() & 0o777;
    let bad = if exec { mode & 0o022 } else { mode & 0o077 };
    if bad != 0 {
        let fix = if exec { "chmod 700" } else { "chmod 600" };
        return Err(format!(
            "{what} {shown} has mode {mode:03o}, which other users can access; run `{fix} {shown}`"
        ));
    }
    Ok(())
}

fn read_file_secret(path: &Path, single_value: bool, id: &str) -> Result<String, String> {
    check_owner_only(path, "secret file", false)?;
    if single_value && id != "value" {
        return Err(format!(
            "secret file {} is single_value: the reference id must be \"value\"",
            path.display()
        ));
    }
    let bytes = bounded_read_file(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("secret file {} is not UTF-8", path.display()))?;
    if single_value {
        let v = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        return Ok(v.to_owned());
    }
    let doc: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "secret file {} is not valid JSON (line {}, column {})",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    if !id.starts_with('/') {
        return Err(format!(
            "secret id \"{id}\" is not a JSON pointer (it must start with '/')"
        ));
    }
    match doc.pointer(id) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!(
            "secret \"{id}\" in {} is not a string",
            path.display()
        )),
        None => Err(format!("secret \"{id}\" not found in {}", path.display())),
    }
}

/// Reads at most [`MAX_SECRET_BYTES`] within [`FILE_TIMEOUT`] (a stalled network mount must
/// not hang the loader).
fn bounded_read_file(path: &Path) -> Result<Vec<u8>, String> {
    let (tx, rx) = mpsc::channel();
    let owned = path.to_owned();
    std::thread::spawn(move || {
        let r = (|| {
            let f = std::fs::File::open(&owned)?;
            let mut buf = Vec::new();
            f.take(MAX_SECRET_BYTES + 1).read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>(buf)
        })();
        let _ = tx.send(r);
    });
    match rx.recv_timeout(FILE_TIMEOUT) {
        Ok(Ok(buf)) if buf.len() as u64 > MAX_SECRET_BYTES => Err(format!(
            "secret file {} is larger than 1 MiB",
            path.display()
        )),
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(e)) => Err(format!("cannot read secret file {}: {e}", path.display())),
        Err(_) => Err(format!(
            "reading secret file {} took longer than 5 s",
            path.display()
        )),
    }
}

fn exec_secret(
    command: &Path,
    args: &[String],
    pass_env: &[String],
    timeout: Duration,
    alias: &str,
    id: &str,
    env: &EnvSnapshot,
) -> Result<String, String> {
    check_owner_only(command, "secret command", true)?;
    let shown = command.display();
    let mut cmd = Command::new(command);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for name in pass_env {
        if let Some(v) = env.get(name) {
            cmd.env(name, v);
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run secret command {shown}: {e}"))?;
    // Written by hand to keep the SPEC's member order (serde_json's map sorts keys).
    let request = format!(
        r#"{{"protocolVersion":1,"provider":{},"ids":[{}]}}"#,
        Value::from(alias),
        Value::from(id)
    );
    if let Some(mut stdin) = child.stdin.take() {
        // A command that exits without reading its stdin is not an error in itself.
        let _ = stdin.write_all(request.to_string().as_bytes());
    }
    let stdout = child.stdout.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = match stdout {
            Some(out) => out
                .take(MAX_SECRET_BYTES + 1)
                .read_to_end(&mut buf)
                .map(|_| buf),
            None => Ok(buf),
        };
        let _ = tx.send(r);
    });
    let output = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "secret command {shown} did not answer within {}",
                humantime::format_duration(timeout)
            ));
        }
    };
    let output = output.map_err(|e| format!("cannot read from secret command {shown}: {e}"))?;
    if output.len() as u64 > MAX_SECRET_BYTES {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("secret command {shown} printed more than 1 MiB"));
    }
    let status = wait_with_deadline(&mut child, timeout)
        .map_err(|e| format!("secret command {shown}: {e}"))?;
    if !status.success() {
        return Err(format!("secret command {shown} failed ({status})"));
    }
    let doc: Value = serde_json::from_slice(&output)
        .map_err(|_| format!("secret command {shown} did not print a JSON object"))?;
    if doc.get("protocolVersion").and_then(Value::as_u64) != Some(1) {
        return Err(format!(
            "secret command {shown} answered without \"protocolVersion\": 1"
        ));
    }
    match doc.get("values").and_then(|v| v.get(id)) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!(
            "secret command {shown} returned a non-string value for \"{id}\""
        )),
        None => Err(format!(
            "secret command {shown} returned no value for \"{id}\""
        )),
    }
}

/// Waits for the child after its stdout closed; kills it past the deadline.
fn wait_with_deadline(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus, String> {
    let step = Duration::from_millis(10);
    let mut waited = Duration::ZERO;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if waited >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "did not exit within {}",
                    humantime::format_duration(timeout)
                ));
            }
            Ok(None) => {
                std::thread::sleep(step);
                waited += step;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;
