//! The order credentials are tried in (SPEC §5), computed once from an agent's files.
//!
//! Owns [`Inputs`] (what an agent's pool is built from: its profiles, state, `openclaw.json`
//! `auth` and the environment, as one load read them) and [`plan`], the pure rule that turns
//! them into a provider's order: the explicit order (`auth-state.json`, else `openclaw.json`
//! `auth.order`, else `[providers.P] order`) exactly, with everything else excluded; else
//! the stored profiles ranked by kind (oauth, token, api key) — only those `auth.profiles`
//! lists, when it lists any for the provider — then the environment keys in their priority
//! order; in both cases a repeated secret serves once, at its first place. Profiles that
//! `openclaw.json` makes ineligible, or that have no usable secret, never rank.
//!
//! The pool (`registry`) ranks its candidates from the plan and the status view shows it
//! row by row, so what `models status` says is what the proxy does. Least recently used
//! within a kind is applied at request time (`Registry::ordered`), not here.

use crate::config::{Config, ProviderConfig};
use crate::credentials::env::{env_credentials, resolve_env_id, EnvSnapshot};
use crate::credentials::store::openclaw_json::{self, AuthConfig, Ineligible};
use crate::credentials::store::{self, AuthState, Profile, ProfileSet};
use crate::credentials::{Credential, Kind, Source};

/// What an agent's pool is built from: its stored profiles, its state (explicit order),
/// `openclaw.json`'s `auth` section and the environment (with `.env`), as one load read them.
#[derive(Debug, Default)]
pub struct Inputs {
    /// The stored profiles.
    pub set: ProfileSet,
    /// The agent's non-secret state.
    pub state: AuthState,
    /// `openclaw.json` `auth`.
    pub oc: AuthConfig,
    /// The environment the keys were read from.
    pub env: EnvSnapshot,
    /// Why a store file could not be read or parsed (file, line and column; never a value).
    /// Its part of the inputs is then empty.
    pub problems: Vec<String>,
}

impl Inputs {
    /// Reads an agent's files. A file that cannot be read or parsed leaves its part empty and
    /// says why in `problems`: the caller decides whether that is fatal (the CLI) or whether
    /// the last good inputs stay in use (a running proxy).
    pub fn load(
        state_dir: &std::path::Path,
        agent: &str,
        env: EnvSnapshot,
        config: &Config,
    ) -> Self {
        let mut problems = Vec::new();
        let set = store::load_agent_profiles(state_dir, agent, &env, &config.secret_providers)
            .unwrap_or_else(|e| {
                problems.push(e.to_string());
                ProfileSet::default()
            });
        let state = store::load_agent_state(state_dir, agent).unwrap_or_else(|e| {
            problems.push(e.to_string());
            AuthState::default()
        });
        let oc = openclaw_json::load(&openclaw_json::config_path(state_dir, &env));
        Self {
            set,
            state,
            oc,
            env,
            problems,
        }
    }

    /// The explicit order for `provider` and where it comes from (`auth-state`,
    /// `openclaw.json` or `config`): the agent's own (`auth-state.json` or its SQLite state
    /// row), else `openclaw.json` `auth.order`, else `[providers.P] order`.
    pub fn explicit_order<'a>(
        &'a self,
        provider: &str,
        config: Option<&'a ProviderConfig>,
    ) -> Option<(&'a [String], &'static str)> {
        if let Some(o) = self.state.order.get(provider) {
            Some((o, "auth-state"))
        } else if let Some(o) = self.oc.order_for(provider) {
            Some((o, "openclaw.json"))
        } else {
            config
                .and_then(|c| c.order.as_deref())
                .map(|o| (o, "config"))
        }
    }
}

/// What the order does with one credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Tried at this place (0-based).
    Ranked(usize),
    /// Its secret already serves at an earlier place, under this id.
    Duplicate {
        /// The id that serves the secret.
        of: String,
    },
    /// An explicit order applies and does not list it (`excluded_by_auth_order`).
    ExcludedByOrder,
    /// `auth.profiles` lists other profiles of the provider (`excluded_by_auth_profiles`).
    ExcludedByProfiles,
    /// `openclaw.json` `auth.profiles` gives it another mode or provider: never used, nor
    /// pinnable.
    Ineligible(Ineligible),
    /// A stored profile without a usable secret (missing, unresolved, invalid `expires`):
    /// its health says why.
    Unusable,
}

/// One credential a provider's order considered.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The stored profile; `None` for an environment key.
    pub profile: Option<&'a Profile>,
    /// The usable credential; `None` when there is none (or it is ineligible).
    pub cred: Option<Credential>,
    /// What the order does with it.
    pub fate: Fate,
}

/// A provider's order: every credential considered, each with its fate.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Stored profiles by kind, then environment keys in priority order, then the
    /// environment keys only an explicit order names.
    pub entries: Vec<Entry<'a>>,
    /// The explicit order that applies, and where it comes from.
    pub order: Option<(&'a [String], &'static str)>,
    /// Order entries that name no credential (shown when shaped like an id).
    pub warnings: Vec<String>,
}

/// Rank of a stored profile's kind: oauth, then token, then api key.
pub fn kind_rank(kind: Kind) -> u8 {
    match kind {
        Kind::OAuth => 0,
        Kind::Token => 1,
        Kind::ApiKey => 2,
    }
}

/// The order of `provider`'s credentials for an agent (SPEC §5). `config` is `None` for a
/// provider the config does not define (its profiles are shown, never used: no environment
/// keys, no config order).
pub fn plan<'a>(
    inputs: &'a Inputs,
    provider: &str,
    config: Option<&'a ProviderConfig>,
) -> Plan<'a> {
    let order = inputs.explicit_order(provider, config);
    let restricts = order.is_none() && inputs.oc.restricts(provider);
    let listed = |id: &str| order.is_none_or(|(o, _)| o.iter().any(|x| x == id));

    let mut profiles: Vec<&Profile> = inputs
        .set
        .profiles
        .iter()
        .filter(|p| p.provider == provider)
        .collect();
    profiles.sort_by_key(|p| kind_rank(p.kind));
    let mut warnings = Vec::new();
    let mut entries: Vec<Entry<'_>> = Vec::with_capacity(profiles.len() + 4);
    for p in profiles {
        let cred = p.credential();
        let fate = match inputs.oc.eligibility(&p.id, provider, p.kind) {
            Err(why) => Fate::Ineligible(why),
            Ok(()) if !listed(&p.id) => Fate::ExcludedByOrder,
            Ok(()) if restricts && !inputs.oc.lists(&p.id, provider) => Fate::ExcludedByProfiles,
            Ok(()) if usable(cred.as_ref()) => PENDING,
            Ok(()) => Fate::Unusable,
        };
        let cred = cred.filter(|_| !matches!(fate, Fate::Ineligible(_)));
        entries.push(Entry {
            profile: Some(p),
            cred,
            fate,
        });
    }
    if let Some(pc) = config {
        for c in env_credentials(provider, &pc.env_prefix, &inputs.env) {
            let fate = if !listed(c.id.as_str()) {
                Fate::ExcludedByOrder
            } else if usable(Some(&c)) {
                PENDING
            } else {
                Fate::Unusable
            };
            entries.push(Entry {
                profile: None,
                cred: Some(c),
                fate,
            });
        }
    }

    let mut placer = Placer::default();
    match order {
        Some((list, _)) => {
            for oid in list {
                if let Some(i) = entries.iter().position(|e| e.id() == oid) {
                    // Listed twice: the first place holds.
                    if entries[i].fate == PENDING {
                        placer.place(&mut entries, i);
                    }
                    continue;
                }
                // An env id the default scan does not list (e.g. hidden by OPENCLAW_LIVE_*_KEY).
                let resolved = config
                    .and_then(|pc| resolve_env_id(oid, provider, &pc.env_prefix, &inputs.env));
                if let Some(c) = resolved.filter(|c| usable(Some(c))) {
                    entries.push(Entry {
                        profile: None,
                        cred: Some(c),
                        fate: PENDING,
                    });
                    let i = entries.len() - 1;
                    placer.place(&mut entries, i);
                    continue;
                }
                warnings.push(match store::shown_id(oid) {
                    Some(oid) => format!(
                        "order for {provider} lists \"{oid}\", which does not resolve to a credential; skipped"
                    ),
                    None => format!(
                        "order for {provider} lists an entry that is not a credential id (not shown); skipped"
                    ),
                });
            }
        }
        None => {
            for i in 0..entries.len() {
                if entries[i].fate == PENDING {
                    placer.place(&mut entries, i);
                }
            }
        }
    }
    // A candidate the explicit order reached under no id of its own (an earlier entry with
    // the same id shadowed it, e.g. a profile named `env:…`) is not in the order.
    for e in entries.iter_mut().filter(|e| e.fate == PENDING) {
        e.fate = Fate::ExcludedByOrder;
    }
    Plan {
        entries,
        order,
        warnings,
    }
}

/// A candidate not placed yet: every one is placed (or found a duplicate) before [`plan`]
/// returns.
const PENDING: Fate = Fate::Ranked(usize::MAX);

/// Gives candidates their places, a repeated secret serving once.
#[derive(Default)]
struct Placer {
    /// The entries placed so far, by place.
    kept: Vec<usize>,
}

impl Placer {
    fn place(&mut self, entries: &mut [Entry<'_>], i: usize) {
        fn secret<'e>(e: &'e Entry<'_>) -> Option<&'e str> {
            e.cred.as_ref().map(|c| c.secret.expose().trim())
        }
        let mine = secret(&entries[i]);
        let first = self.kept.iter().find(|&&j| secret(&entries[j]) == mine);
        entries[i].fate = match first {
            Some(&j) => Fate::Duplicate {
                of: entries[j].id().to_owned(),
            },
            None => {
                self.kept.push(i);
                Fate::Ranked(self.kept.len() - 1)
            }
        };
    }
}

/// A credential with a non-empty secret.
fn usable(c: Option<&Credential>) -> bool {
    c.is_some_and(|c| !c.secret.expose().trim().is_empty())
}

impl Entry<'_> {
    /// The credential's id.
    pub fn id(&self) -> &str {
        match (self.profile, &self.cred) {
            (Some(p), _) => &p.id,
            (None, Some(c)) => c.id.as_str(),
            (None, None) => "",
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        match (self.profile, &self.cred) {
            (Some(p), _) => p.kind,
            (None, Some(c)) => c.kind,
            (None, None) => Kind::ApiKey,
        }
    }

    /// Where it comes from.
    pub fn source(&self) -> Source {
        if self.profile.is_some() {
            Source::Profile
        } else {
            Source::Env
        }
    }

    /// Its place in the order, if it has one.
    pub fn place(&self) -> Option<usize> {
        match self.fate {
            Fate::Ranked(at) => Some(at),
            _ => None,
        }
    }
}

impl<'a> Plan<'a> {
    /// The ranked entries in the order they are tried.
    pub fn ranked(&self) -> Vec<&Entry<'a>> {
        let mut v: Vec<&Entry<'a>> = self
            .entries
            .iter()
            .filter(|e| e.place().is_some())
            .collect();
        v.sort_by_key(|e| e.place());
        v
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::credentials::env::EnvSnapshot;

    /// A state dir whose agent `main` has `profiles` as its auth-profiles.json, and
    /// `state` as its auth-state.json and `openclaw` as the openclaw.json when given (the
    /// pool's tests build theirs here too).
    pub(crate) fn state_dir(
        profiles: &str,
        state: Option<&str>,
        openclaw: Option<&str>,
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = dir.path().join("agents/main/agent");
        std::fs::create_dir_all(&agent).expect("agent dir");
        std::fs::write(agent.join("auth-profiles.json"), profiles).expect("profiles");
        if let Some(s) = state {
            std::fs::write(agent.join("auth-state.json"), s).expect("state");
        }
        if let Some(o) = openclaw {
            std::fs::write(dir.path().join("openclaw.json"), o).expect("openclaw.json");
        }
        dir
    }

    const PROFILES: &str = r#"{"version":1,"profiles":{
      "anthropic:key":{"type":"api_key","provider":"anthropic","key":"sk-test-key-1111"},
      "anthropic:tok":{"type":"token","provider":"anthropic","token":"sk-test-tok-2222"},
      "anthropic:oa":{"type":"oauth","provider":"anthropic","access":"sk-test-oa-3333","refresh":"r-test-3333","expires":4102444800000},
      "anthropic:copy":{"type":"api_key","provider":"anthropic","key":"sk-test-env-4444"},
      "anthropic:empty":{"type":"api_key","provider":"anthropic"}}}"#;

    struct Files {
        dir: tempfile::TempDir,
        env: Vec<(&'static str, &'static str)>,
    }

    impl Files {
        fn new(state: Option<&str>, openclaw: Option<&str>) -> Self {
            Self {
                dir: state_dir(PROFILES, state, openclaw),
                env: vec![],
            }
        }

        fn env(mut self, vars: &[(&'static str, &'static str)]) -> Self {
            self.env.extend_from_slice(vars);
            self
        }

        fn inputs(&self, config: &Config) -> Inputs {
            let env = EnvSnapshot::from_pairs(
                self.env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            Inputs::load(self.dir.path(), "main", env, config)
        }
    }

    /// (id, fate) per entry, in the plan's order.
    fn fates(plan: &Plan<'_>) -> Vec<(String, Fate)> {
        plan.entries
            .iter()
            .map(|e| (e.id().to_owned(), e.fate.clone()))
            .collect()
    }

    fn ranked(plan: &Plan<'_>) -> Vec<String> {
        plan.ranked().iter().map(|e| e.id().to_owned()).collect()
    }

    fn dup(of: &str) -> Fate {
        Fate::Duplicate { of: of.to_owned() }
    }

    #[test]
    fn profiles_rank_by_kind_then_env_keys_and_a_repeated_secret_serves_at_its_first_place() {
        let config = Config::defaults();
        let files = Files::new(None, None).env(&[(
            "ANTHROPIC_API_KEYS",
            "sk-test-env-4444, sk-test-env-5555 ,sk-test-env-5555",
        )]);
        let inputs = files.inputs(&config);
        let plan = plan(&inputs, "anthropic", config.provider("anthropic"));
        assert_eq!(
            fates(&plan),
            [
                ("anthropic:oa".to_owned(), Fate::Ranked(0)),
                ("anthropic:tok".to_owned(), Fate::Ranked(1)),
                ("anthropic:copy".to_owned(), Fate::Ranked(2)),
                ("anthropic:empty".to_owned(), Fate::Unusable),
                ("anthropic:key".to_owned(), Fate::Ranked(3)),
                ("env:ANTHROPIC_API_KEYS#1".to_owned(), dup("anthropic:copy")),
                ("env:ANTHROPIC_API_KEYS#2".to_owned(), Fate::Ranked(4)),
                (
                    "env:ANTHROPIC_API_KEYS#3".to_owned(),
                    dup("env:ANTHROPIC_API_KEYS#2")
                ),
            ]
        );
        assert!(plan.order.is_none() && plan.warnings.is_empty());
        // A provider the config does not define: its profiles only, never env keys.
        let plan = super::plan(&inputs, "anthropic", None);
        assert_eq!(plan.entries.len(), 5);
    }

    #[test]
    fn an_explicit_order_is_exact_once_per_id_and_excludes_everything_else() {
        let config = Config::defaults();
        // The live override hides ANTHROPIC_API_KEY from the scan; the order still reaches it.
        let state = r#"{"version":1,"order":{"anthropic":[
            "anthropic:key","env:ANTHROPIC_API_KEY","anthropic:key","anthropic:copy",
            "anthropic:empty","anthropic:gone","not an id"]}}"#;
        let files = Files::new(Some(state), None).env(&[
            ("OPENCLAW_LIVE_ANTHROPIC_KEY", "sk-test-live-8888"),
            ("ANTHROPIC_API_KEY", "sk-test-key-1111"),
        ]);
        let inputs = files.inputs(&config);
        let plan = plan(&inputs, "anthropic", config.provider("anthropic"));
        assert_eq!(plan.order.map(|(_, src)| src), Some("auth-state"));
        assert_eq!(
            fates(&plan),
            [
                ("anthropic:oa".to_owned(), Fate::ExcludedByOrder),
                ("anthropic:tok".to_owned(), Fate::ExcludedByOrder),
                ("anthropic:copy".to_owned(), Fate::Ranked(1)),
                ("anthropic:empty".to_owned(), Fate::Unusable),
                ("anthropic:key".to_owned(), Fate::Ranked(0)),
                (
                    "env:OPENCLAW_LIVE_ANTHROPIC_KEY".to_owned(),
                    Fate::ExcludedByOrder
                ),
                // Reached by id, and its secret is anthropic:key's.
                ("env:ANTHROPIC_API_KEY".to_owned(), dup("anthropic:key")),
            ]
        );
        assert_eq!(ranked(&plan), ["anthropic:key", "anthropic:copy"]);
        // What names no credential is said, the odd entry without echoing it.
        assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
        assert!(plan.warnings[0].contains("\"anthropic:gone\""));
        assert!(plan.warnings[1].contains("not shown") && !plan.warnings[1].contains("not an id"));
    }

    #[test]
    fn auth_profiles_in_openclaw_json_restrict_stored_profiles_and_rule_out_other_modes() {
        let config = Config::defaults();
        let oc = r#"{"auth":{"profiles":{
            "anthropic:tok":{"provider":"anthropic","mode":"token"},
            "anthropic:key":{"provider":"anthropic","mode":"oauth"}}}}"#;
        let files = Files::new(None, Some(oc)).env(&[("ANTHROPIC_API_KEY", "sk-test-env-9999")]);
        let inputs = files.inputs(&config);
        let plan = plan(&inputs, "anthropic", config.provider("anthropic"));
        let got = fates(&plan);
        assert_eq!(
            got[0],
            ("anthropic:oa".to_owned(), Fate::ExcludedByProfiles)
        );
        assert_eq!(got[1], ("anthropic:tok".to_owned(), Fate::Ranked(0)));
        assert!(matches!(
            got[4].1,
            Fate::Ineligible(Ineligible::ModeMismatch { .. })
        ));
        assert!(
            plan.entries[4].cred.is_none(),
            "an ineligible profile is not usable"
        );
        assert_eq!(ranked(&plan), ["anthropic:tok", "env:ANTHROPIC_API_KEY"]);
    }

    #[test]
    fn env_keys_alone_deduplicate_by_trimmed_secret_keeping_the_first_id() {
        let config = Config::defaults();
        let files = Files::new(None, None).env(&[
            ("OPENAI_API_KEYS", "same,other"),
            ("OPENAI_API_KEY", "same"),
            ("OPENAI_API_KEY_1", " other "),
        ]);
        let inputs = files.inputs(&config);
        let plan = plan(&inputs, "openai", config.provider("openai"));
        assert_eq!(
            ranked(&plan),
            ["env:OPENAI_API_KEYS#1", "env:OPENAI_API_KEYS#2"]
        );
        assert_eq!(
            plan.entries
                .iter()
                .filter(|e| matches!(e.fate, Fate::Duplicate { .. }))
                .count(),
            2
        );
    }
}
