//! The status view of an agent's credentials: what `models status` prints, its probes and
//! `doctor` read, and `/_keygate/status` serves from the pool in memory.
//!
//! The view is built from [`Inputs`] — the files of an agent as one load read them, and the
//! environment. The CLI loads them from disk; a running proxy keeps the inputs its pool was
//! built from, so its status shows the pool being served even when the files on disk have
//! since broken.
//!
//! Owns building the view — per provider, every stored profile (Claude Code's included) and
//! environment key with its kind, source, masked secret, expiry, health, quota domain
//! (configured by name; learned ones by their short hash, added by [`add_learned`]) and
//! position in the order the proxy tries them (the pool's own [`order::plan`]), plus the rows an explicit
//! order or `auth.profiles` excludes — the `--check` verdict, and the expiry and duration formats. It does not print
//! (`models`) nor probe (`probe`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::config::Config;
use crate::credentials::env::env_credentials;
use crate::credentials::store::{self, Expires, Profile, ProfileProblem, ProfileSet};
use crate::credentials::{Credential, Kind, Source};
use crate::domain::{self, Domain};
use crate::pool::order::{self, Entry, Fate};
use crate::pool::Inputs;

/// Detail of an `excluded_by_auth_order` row (SPEC §1).
pub const EXCLUDED_DETAIL: &str = "Excluded by auth.order for this provider.";

/// Reason code of a stored profile that openclaw.json `auth.profiles` leaves out when it
/// lists other profiles of the provider (OpenClaw's candidate rule, SPEC §6b).
pub const EXCLUDED_BY_PROFILES: &str = "excluded_by_auth_profiles";
/// Detail of an `excluded_by_auth_profiles` row.
pub const EXCLUDED_BY_PROFILES_DETAIL: &str =
    "Not listed in openclaw.json auth.profiles, which lists other profiles of this provider.";

/// Reason codes of rows that configuration keeps out of the order: not problems of the
/// credential itself, so `--check` does not judge them and probes make no call.
pub fn excluded_by_config(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "excluded_by_auth_order" | EXCLUDED_BY_PROFILES | "mode_mismatch" | "provider_mismatch"
        )
    )
}

/// Health of one credential for `--check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// An api key, or a token without `expires`.
    Static,
    /// Not expiring within the window, or oauth with a refresh token.
    Ok,
    /// Expires within the warn window.
    Expiring,
    /// Past `expires` and not refreshable.
    Expired,
    /// `expires` is not a finite number > 0.
    InvalidExpires,
    /// No usable secret (missing, unresolved reference, OAuth + SecretRef).
    Missing,
}

/// One credential row of the status view.
#[derive(Clone, Debug)]
pub struct Row {
    pub(crate) provider: String,
    pub(crate) id: String,
    pub(crate) kind: Kind,
    pub(crate) source: Source,
    /// `…WXYZ`, when a secret is available.
    pub(crate) masked: Option<String>,
    pub(crate) expires: Expires,
    pub(crate) health: Health,
    /// 1-based position in the order the proxy tries credentials; `None` when not used.
    pub(crate) position: Option<usize>,
    /// Why the row is not used or not usable (`excluded_by_auth_order`, `unresolved_ref`, …).
    pub(crate) reason_code: Option<&'static str>,
    pub(crate) detail: Option<String>,
    /// `claude-code` for the synced Claude Code profile.
    pub(crate) managed_by: Option<&'static str>,
    /// The usable credential (for probes).
    pub(crate) cred: Option<Credential>,
    /// Its quota domain (SPEC §11), configured or learned.
    pub(crate) domain: Option<Domain>,
}

/// The status of one provider.
#[derive(Clone, Debug)]
pub struct ProviderStatus {
    pub(crate) provider: String,
    pub(crate) configured: bool,
    pub(crate) known: bool,
    pub(crate) order: Option<Vec<String>>,
    pub(crate) order_source: Option<&'static str>,
    pub(crate) rows: Vec<Row>,
}

/// The whole status view of an agent.
#[derive(Clone, Debug)]
pub struct StatusView {
    pub(crate) providers: Vec<ProviderStatus>,
    pub(crate) warnings: Vec<String>,
    /// Hard errors (SPEC §6: an oauth profile carrying a SecretRef), naming profile and
    /// field: `status` prints them and exits 1.
    pub(crate) errors: Vec<String>,
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `--check`: (`ok` | `expiring` | `expired` | `missing`, exit code 0/2/1).
pub fn check_result(view: &StatusView) -> (&'static str, u8) {
    let mut worst = "ok";
    let mut code = 0;
    for p in &view.providers {
        if p.configured && !p.rows.iter().any(|r| r.cred.is_some()) {
            return ("missing", 1);
        }
        for r in p.rows.iter().filter(|r| !excluded_by_config(r.reason_code)) {
            match r.health {
                Health::Missing => return ("missing", 1),
                Health::Expired | Health::InvalidExpires => {
                    worst = "expired";
                    code = 1;
                }
                Health::Expiring if code == 0 => {
                    worst = "expiring";
                    code = 2;
                }
                _ => {}
            }
        }
    }
    (worst, code)
}

/// Builds the status view: every provider with a credential or a `[providers.*]` entry (or
/// just `only`).
pub fn build_view(
    inputs: &Inputs,
    config: &Config,
    only: Option<&str>,
    now_ms: i64,
    warn: Duration,
) -> StatusView {
    let Inputs {
        set,
        state,
        oc,
        env,
        ..
    } = inputs;
    let mut warnings = set.warnings.clone();
    warnings.extend(state.warnings.iter().cloned());
    warnings.extend(oc.warnings.iter().cloned());
    let warn_ms = i64::try_from(warn.as_millis()).unwrap_or(i64::MAX);

    let mut names: Vec<String> = Vec::new();
    for (id, p) in &config.providers {
        let has_profiles = set.profiles.iter().any(|x| &x.provider == id);
        let has_env = !env_credentials(id, &p.env_prefix, env).is_empty();
        if p.configured || has_profiles || has_env || only == Some(id.as_str()) {
            names.push(id.clone());
        }
    }
    for p in &set.profiles {
        if config.provider(&p.provider).is_none() && !names.contains(&p.provider) {
            warnings.push(format!(
                "auth profile \"{}\" is for provider \"{}\", which the config does not define; it is never used",
                p.id, p.provider
            ));
            names.push(p.provider.clone());
        }
    }
    if let Some(o) = only {
        names.retain(|n| n == o);
    }

    let mut providers = Vec::with_capacity(names.len());
    for name in names {
        let pc = config.provider(&name);
        let plan = order::plan(inputs, &name, pc);
        warnings.extend(plan.warnings.iter().cloned());
        let mut rows: Vec<Row> = plan
            .entries
            .iter()
            .map(|e| row(e, set, now_ms, warn_ms))
            .collect();
        if let Some(pc) = pc {
            for r in &mut rows {
                r.domain = pc
                    .quota_domains
                    .get(&r.id)
                    .map(|name| Domain::Configured(name.clone()));
            }
        }
        if plan.order.is_some() {
            rows.sort_by_key(|r| r.position.unwrap_or(usize::MAX));
        }
        let (order, order_source) = match plan.order {
            Some((o, source)) => (Some(o.to_vec()), Some(source)),
            None => (None, None),
        };
        // Shown as the ids it lists; an entry that is neither a credential here nor shaped
        // like an id is not echoed (a file can hold anything there).
        let order = order.map(|o| {
            o.into_iter()
                .map(|id| {
                    if rows.iter().any(|r| r.id == id) || store::shown_id(&id).is_some() {
                        id
                    } else {
                        "(not shown)".to_owned()
                    }
                })
                .collect::<Vec<_>>()
        });
        providers.push(ProviderStatus {
            configured: pc.is_some_and(|p| p.configured),
            known: pc.is_some(),
            provider: name,
            order,
            order_source,
            rows,
        });
    }
    let errors = set
        .profiles
        .iter()
        .filter(|p| only.is_none_or(|o| o == p.provider))
        .filter_map(|p| match &p.secret {
            Err(e @ ProfileProblem::OAuthSecretRef { .. }) => {
                Some(format!("auth profile \"{}\": {e}", p.id))
            }
            _ => None,
        })
        .collect();
    StatusView {
        providers,
        warnings,
        errors,
    }
}

/// Adds the learned quota domains to the rows without a configured one: `learned` maps a
/// secret's [`domain::secret_key`] to its domain (the running proxy's store, or the file
/// `models status` reads).
pub fn add_learned(view: &mut StatusView, learned: &dyn Fn(u64) -> Option<u64>) {
    for r in view.providers.iter_mut().flat_map(|p| p.rows.iter_mut()) {
        if r.domain.is_some() {
            continue;
        }
        if let Some(c) = &r.cred {
            r.domain = learned(domain::secret_key(c.secret.expose())).map(Domain::Learned);
        }
    }
}

/// One entry of a provider's order as a status row.
fn row(e: &Entry<'_>, set: &ProfileSet, now_ms: i64, warn_ms: i64) -> Row {
    let mut r = match (e.profile, &e.cred) {
        (Some(p), _) => profile_row(p, set, now_ms, warn_ms),
        (None, Some(c)) => env_row(c.clone()),
        (None, None) => unreachable!("an environment entry always has its credential"),
    };
    r.cred = e.cred.clone();
    match &e.fate {
        Fate::Ranked(at) => r.position = Some(at + 1),
        Fate::Duplicate { of } => {
            r.reason_code = Some("duplicate");
            r.detail = Some(format!("Same secret as {of}; only the first is used."));
        }
        Fate::ExcludedByOrder => {
            r.reason_code = Some("excluded_by_auth_order");
            r.detail = Some(EXCLUDED_DETAIL.to_owned());
        }
        Fate::ExcludedByProfiles => {
            r.reason_code = Some(EXCLUDED_BY_PROFILES);
            r.detail = Some(EXCLUDED_BY_PROFILES_DETAIL.to_owned());
            r.cred = None;
        }
        Fate::Ineligible(why) => {
            r.reason_code = Some(why.code());
            r.detail = Some(why.detail(r.kind));
        }
        Fate::Unusable => {}
    }
    r
}

fn profile_row(p: &Profile, set: &ProfileSet, now_ms: i64, warn_ms: i64) -> Row {
    let managed_by = set
        .managed_ids
        .iter()
        .any(|m| m == &p.id)
        .then_some("claude-code");
    let (health, reason_code, detail) = profile_health(p, now_ms, warn_ms);
    Row {
        provider: p.provider.clone(),
        id: p.id.clone(),
        kind: p.kind,
        source: Source::Profile,
        masked: p.secret.as_ref().ok().map(|s| s.masked()),
        expires: p.expires,
        health,
        position: None,
        reason_code,
        detail,
        managed_by,
        cred: None,
        domain: None,
    }
}

/// Health of a stored profile (SPEC §1 `--check`), with the reason code a probe would give
/// it when no call can be made.
pub fn profile_health(
    p: &Profile,
    now_ms: i64,
    warn_ms: i64,
) -> (Health, Option<&'static str>, Option<String>) {
    match &p.secret {
        Err(ProfileProblem::UnresolvedRef(why)) => {
            return (Health::Missing, Some("unresolved_ref"), Some(why.clone()))
        }
        Err(e @ ProfileProblem::OAuthSecretRef { .. }) => {
            return (Health::Missing, Some("unresolved_ref"), Some(e.to_string()))
        }
        Err(e @ ProfileProblem::MissingSecret) => {
            return (
                Health::Missing,
                Some("missing_credential"),
                Some(e.to_string()),
            )
        }
        Ok(_) => {}
    }
    if p.kind == Kind::ApiKey {
        return (Health::Static, None, None);
    }
    match p.expires {
        Expires::None => (Health::Static, None, None),
        Expires::Invalid => (
            Health::InvalidExpires,
            Some("invalid_expires"),
            Some("\"expires\" is not a positive epoch-millisecond number".into()),
        ),
        Expires::At(_) if p.kind == Kind::OAuth && p.refresh.is_some() => (Health::Ok, None, None),
        Expires::At(ms) if ms <= now_ms => (
            Health::Expired,
            Some("expired"),
            Some(format!("expired {}", when(ms, now_ms))),
        ),
        Expires::At(ms) if ms - now_ms <= warn_ms => (Health::Expiring, None, None),
        Expires::At(_) => (Health::Ok, None, None),
    }
}

fn env_row(c: Credential) -> Row {
    Row {
        provider: c.provider.to_string(),
        id: c.id.to_string(),
        kind: c.kind,
        source: Source::Env,
        masked: Some(c.secret.masked()),
        expires: Expires::None,
        health: Health::Static,
        position: None,
        reason_code: None,
        detail: None,
        managed_by: None,
        cred: Some(c),
        domain: None,
    }
}

/// The JSON expiry fields (SPEC §6b): epoch ms as a number (`expires`, and `expiresAt` as
/// OpenClaw names it), the RFC 3339 form (`expiresAtIso`) and `remainingMs` (negative once
/// expired). An invalid `expires` is null in all three (its health says `invalid_expires`).
pub fn expiry_json(e: Expires, now_ms: i64) -> (Value, Value, Value) {
    match e {
        Expires::At(ms) => (
            json!(ms),
            json!(rfc3339_millis(ms)),
            json!(ms.saturating_sub(now_ms)),
        ),
        Expires::Invalid | Expires::None => (Value::Null, Value::Null, Value::Null),
    }
}

/// The two largest units of a duration: `364d 23h`, `3h 47m`, `12m 5s`, `40s`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let parts = [(days, "d"), (hours, "h"), (mins, "m"), (secs, "s")];
    let Some(first) = parts.iter().position(|(n, _)| *n > 0) else {
        return "0s".to_owned();
    };
    let mut out = format!("{}{}", parts[first].0, parts[first].1);
    if let Some((n, unit)) = parts.get(first + 1).filter(|(n, _)| *n > 0) {
        out.push_str(&format!(" {n}{unit}"));
    }
    out
}

/// "in 364d 23h" / "2h 5m ago": the two largest units.
pub fn when(ms: i64, now_ms: i64) -> String {
    let d = Duration::from_millis((ms - now_ms).unsigned_abs());
    let text = if d < Duration::from_secs(1) {
        "<1s".to_owned()
    } else {
        short_duration(d)
    };
    if ms >= now_ms {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// 9999-12-31T23:59:59.999Z: humantime's formatter fails past it (and `to_string` then
/// panics), while a store may hold any positive number in `expires`.
const MAX_FORMATTED_MS: i64 = 253_402_300_799_999;

fn clamped_time(ms: i64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms.clamp(0, MAX_FORMATTED_MS)).unwrap_or(0))
}

/// RFC 3339 of epoch ms (seconds precision), clamped to years 1970–9999.
pub fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(clamped_time(ms)).to_string()
}

/// RFC 3339 of epoch ms with milliseconds, as OpenClaw writes them (`…11.930Z`).
fn rfc3339_millis(ms: i64) -> String {
    humantime::format_rfc3339_millis(clamped_time(ms)).to_string()
}

impl Health {
    /// The name `models status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Static => "static",
            Health::Ok => "ok",
            Health::Expiring => "expiring",
            Health::Expired => "expired",
            Health::InvalidExpires => "invalid_expires",
            Health::Missing => "missing",
        }
    }
}

impl Row {
    /// The row as `models status --json` shows it.
    pub fn to_json(&self) -> Value {
        let (expires, expires_iso, remaining) = expiry_json(self.expires, now_ms());
        json!({
            "id": self.id,
            "provider": self.provider,
            "kind": self.kind.as_str(),
            "source": self.source.as_str(),
            "secret": self.masked,
            "expires": expires,
            "expiresAt": expires,
            "expiresAtIso": expires_iso,
            "remainingMs": remaining,
            "health": self.health.as_str(),
            "position": self.position,
            "reasonCode": self.reason_code,
            "detail": self.detail,
            "managedBy": self.managed_by,
            "quotaDomain": self.domain.as_ref().map(Domain::to_string),
            "quotaDomainSource": self.domain.as_ref().map(Domain::source),
        })
    }
}

/// The `models status --json` document of a view (without `check`, which the caller adds
/// with [`check_result`]).
pub fn document(view: &StatusView, agent: &str, state_dir: &std::path::Path) -> Value {
    let providers: Vec<Value> = view
        .providers
        .iter()
        .map(|p| {
            json!({
                "provider": p.provider,
                "configured": p.configured,
                "known": p.known,
                "order": p.order,
                "orderSource": p.order_source,
                "missing": !p.rows.iter().any(|r| r.cred.is_some()),
                "credentials": p.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "agent": agent,
        "stateDir": state_dir.display().to_string(),
        "providers": providers,
        "warnings": view.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `models status` numbers is what the proxy tries, in that order: the pool and the
    /// view rank from one plan.
    #[test]
    fn status_positions_are_the_pool_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = dir.path().join("agents/main/agent");
        std::fs::create_dir_all(&agent).expect("agent dir");
        std::fs::write(
            agent.join("auth-profiles.json"),
            r#"{"version":1,"profiles":{
              "anthropic:key":{"type":"api_key","provider":"anthropic","key":"sk-test-key-1111"},
              "anthropic:oa":{"type":"oauth","provider":"anthropic","access":"sk-test-oa-3333","refresh":"r","expires":4102444800000},
              "anthropic:dup":{"type":"token","provider":"anthropic","token":"sk-test-env-4444"}}}"#,
        )
        .expect("profiles");
        let env = crate::credentials::env::EnvSnapshot::from_pairs([(
            "ANTHROPIC_API_KEYS".to_owned(),
            "sk-test-env-4444,sk-test-env-5555".to_owned(),
        )]);
        let config = Config::defaults();
        for state in [
            None,
            Some(
                r#"{"version":1,"order":{"anthropic":["env:ANTHROPIC_API_KEYS#2","anthropic:key"]}}"#,
            ),
        ] {
            if let Some(s) = state {
                std::fs::write(agent.join("auth-state.json"), s).expect("state");
            }
            let pool = crate::pool::build_pool(&config, dir.path(), "main", &env);
            let served: Vec<&str> = pool.providers["anthropic"]
                .candidates
                .iter()
                .map(|c| c.cred.id.as_str())
                .collect();
            let view = build_view(&pool.inputs, &config, Some("anthropic"), 0, Duration::ZERO);
            let mut shown: Vec<(usize, &str)> = view.providers[0]
                .rows
                .iter()
                .filter_map(|r| Some((r.position?, r.id.as_str())))
                .collect();
            shown.sort();
            let shown: Vec<&str> = shown.into_iter().map(|(_, id)| id).collect();
            assert_eq!(served, shown, "order file: {state:?}");
            assert!(served.len() >= 2);
        }
    }

    #[test]
    fn durations_read_in_their_two_largest_units() {
        let s = |secs| short_duration(Duration::from_secs(secs));
        assert_eq!(s(364 * 86_400 + 23 * 3600 + 47 * 60 + 24), "364d 23h");
        assert_eq!(s(3 * 3600 + 47 * 60 + 5), "3h 47m");
        assert_eq!(s(12 * 60 + 5), "12m 5s");
        assert_eq!(s(40), "40s");
        assert_eq!(s(2 * 86_400 + 59), "2d");
        assert_eq!(s(0), "0s");
        let now = 1_800_000_000_000;
        assert_eq!(when(now + 90_061_000, now), "in 1d 1h");
        assert_eq!(when(now - 125_000, now), "2m 5s ago");
        assert_eq!(when(now + 300, now), "in <1s");
    }

    #[test]
    fn expiry_fields_are_numbers_with_the_iso_form_apart() {
        let now = 1_800_000_000_000;
        let (ms, iso, rem) = expiry_json(Expires::At(now - 5_000), now);
        assert_eq!(ms, json!(now - 5_000));
        assert_eq!(iso, json!("2027-01-15T07:59:55.000Z"));
        // Past year 9999 the number is kept and the text clamped (no panic).
        let far = 9_000_000_000_000_000;
        let (ms, iso, _) = expiry_json(Expires::At(far), now);
        assert_eq!(ms, json!(far));
        assert_eq!(iso, json!("9999-12-31T23:59:59.999Z"));
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        assert_eq!(rem, json!(-5_000));
        assert_eq!(
            expiry_json(Expires::Invalid, now),
            (Value::Null, Value::Null, Value::Null)
        );
    }
}
