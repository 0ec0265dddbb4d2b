//! Which store a state dir uses, and the operations every reader and writer goes through
//! (SPEC §6, §6b).
//!
//! Owns the choice between the two backends — OpenClaw's JSON files (up to 2026.5) and its
//! SQLite databases (2026.6 on) — and, for SQLite, which rows an agent reads and which one
//! a write changes. The rule (`notes/openclaw-store.md` §1): a state dir with
//! `state/openclaw.sqlite` or an `openclaw-agent.sqlite` is in the SQLite era; there row
//! `auth.sharedStore` says where the shared credentials live (`state-db`: the state
//! database's `authProfiles.store`; `legacy-main` or no row: the main agent database's
//! `auth_profile_store`). An agent sees the shared store with its own store laid over it
//! (its profiles win by id), and the shared state (`authProfiles.state`) with its own state
//! laid over it (its order per provider wins). A write changes exactly one row, in one
//! transaction, keeping every profile and field it does not change as found; keygate never
//! creates `auth-profiles.json` or `auth-state.json` there (OpenClaw would then refuse
//! that provider).
//!
//! It does not own parsing a document (`store`), the JSON files' write discipline
//! (`write`), nor SQLite access itself (`sqlite`).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::sqlite::{Row, RowChange};
use super::write;
use super::{
    agent_dir, auth_state_from_str, load_profiles_from_str, parse_error, profiles_shape_error,
    AuthState, ProfileSet, StoreError, AUTH_STATE_FILE, PROFILES_FILE,
};
use crate::credentials::env::EnvSnapshot;
use crate::credentials::secret_ref::SecretProviders;

/// `state/openclaw.sqlite`, relative to the state dir.
pub const STATE_DB: &str = "state/openclaw.sqlite";

/// The agent database's file name, inside the agent dir.
pub const AGENT_DB: &str = "openclaw-agent.sqlite";

/// The agent whose database holds the shared store in the `legacy-main` layout.
const MAIN_AGENT: &str = "main";

/// Where one agent's credentials and state live, and how to change them.
#[derive(Clone, Debug)]
pub struct AgentStore {
    dir: PathBuf,
    backend: Backend,
}

/// The store a state dir uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `agents/<id>/agent/auth-profiles.json` and `auth-state.json` (OpenClaw ≤ 2026.5,
    /// and a state dir no OpenClaw has touched).
    Json,
    /// OpenClaw's SQLite databases (2026.6 on).
    Sqlite(SqliteDir),
}

/// The databases of a SQLite-era state dir, for one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteDir {
    /// `<state>/state/openclaw.sqlite` (it may not exist in a `legacy-main` dir).
    pub state_db: PathBuf,
    /// Where the shared credentials live.
    pub shared: SharedAt,
    /// `<agent dir>/openclaw-agent.sqlite` (it may not exist: an upgraded dir has none).
    pub agent_db: PathBuf,
    /// The main agent's database (the shared store in the `legacy-main` layout).
    pub main_db: PathBuf,
}

/// `auth.sharedStore`: where the shared credentials live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedAt {
    /// `{"location":"state-db"}`: `config_machine_state` row `authProfiles.store`.
    StateDb,
    /// `{"location":"legacy-main"}` or no row: the main agent database's store.
    LegacyMain,
}

// === impl AgentStore ===

impl AgentStore {
    /// The store of `agent` in `state_dir`.
    ///
    /// Errors: `auth.sharedStore` cannot be read, or holds a value OpenClaw refuses
    /// ([`StoreError::SharedStoreOwnership`]).
    pub fn open(state_dir: &Path, agent: &str) -> Result<Self, StoreError> {
        let dir = agent_dir(state_dir, agent);
        let state_db = state_dir.join(STATE_DB);
        let agent_db = dir.join(AGENT_DB);
        let main_db = agent_dir(state_dir, MAIN_AGENT).join(AGENT_DB);
        let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        if !exists(&state_db) && !exists(&agent_db) && !exists(&main_db) {
            return Ok(Self {
                dir,
                backend: Backend::Json,
            });
        }
        let shared = match Row::machine_state(&state_db, "auth.sharedStore").read()? {
            None => SharedAt::LegacyMain,
            Some(text) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(o)) if o.len() == 1 => match o.get("location") {
                    Some(Value::String(l)) if l == "state-db" => SharedAt::StateDb,
                    Some(Value::String(l)) if l == "legacy-main" => SharedAt::LegacyMain,
                    _ => return Err(StoreError::SharedStoreOwnership { path: state_db }),
                },
                _ => return Err(StoreError::SharedStoreOwnership { path: state_db }),
            },
        };
        Ok(Self {
            dir,
            backend: Backend::Sqlite(SqliteDir {
                state_db,
                shared,
                agent_db,
                main_db,
            }),
        })
    }

    /// The store in use.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The agent dir (`<state>/agents/<agent>/agent`).
    pub fn agent_dir(&self) -> &Path {
        &self.dir
    }

    /// `auth-profiles.json` of this agent (the JSON store, or a leftover in a SQLite dir).
    pub fn profiles_file(&self) -> PathBuf {
        self.dir.join(PROFILES_FILE)
    }

    /// `auth-state.json` of this agent.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(AUTH_STATE_FILE)
    }

    /// Where credentials are written, for messages: a file, or a database and row.
    /// (JSON: the agent dir, as in `Auth profile "<id>" not found in <dir>.`, SPEC §1.)
    pub fn profiles_location(&self) -> String {
        match &self.backend {
            Backend::Json => self.dir.display().to_string(),
            Backend::Sqlite(s) => s.shared_store().describe(),
        }
    }

    /// Where the order is written, for messages.
    pub fn state_location(&self) -> String {
        match &self.backend {
            Backend::Json => self.state_file().display().to_string(),
            Backend::Sqlite(s) => s.state_target().describe(),
        }
    }

    /// The agent's profiles (without the Claude Code credentials, see
    /// [`super::load_agent_profiles`]). SQLite: the shared store overlaid by the agent's own
    /// store. A SQLite dir whose databases hold no profile but whose agent dir still has an
    /// `auth-profiles.json` (never imported) is read from that file, with a warning: the
    /// proxy keeps serving what the user has.
    ///
    /// Errors: a file or row that cannot be read or does not parse.
    pub fn load_profiles(
        &self,
        env: &EnvSnapshot,
        secrets: &SecretProviders,
    ) -> Result<ProfileSet, StoreError> {
        let Backend::Sqlite(s) = &self.backend else {
            return super::load_profiles(&self.profiles_file(), env, secrets);
        };
        let mut set = self.load_db_profiles(env, secrets)?;
        let file = self.profiles_file();
        if std::fs::symlink_metadata(&file).is_ok() {
            if set.profiles.is_empty() {
                let legacy = super::load_profiles(&file, env, secrets)?;
                set.warnings.extend(legacy.warnings);
                set.profiles = legacy.profiles;
                set.legacy_flat = legacy.legacy_flat;
                set.warnings.push(format!(
                    "{} was read because {} holds no profiles; OpenClaw 2026.6+ refuses these \
                     providers until it is imported: run `keygate doctor --fix` or `openclaw doctor --fix`",
                    file.display(),
                    s.shared_store().describe()
                ));
            } else {
                set.warnings.push(format!(
                    "{} is ignored: this state dir keeps its credentials in {}; run `keygate doctor --fix` to import and archive it",
                    file.display(),
                    s.shared_store().describe()
                ));
            }
        }
        set.profiles.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(set)
    }

    /// The profiles of the database rows alone (SQLite: shared store overlaid by the
    /// agent's own; empty for a JSON dir), sorted by id.
    pub fn load_db_profiles(
        &self,
        env: &EnvSnapshot,
        secrets: &SecretProviders,
    ) -> Result<ProfileSet, StoreError> {
        let mut set = ProfileSet::default();
        let Backend::Sqlite(s) = &self.backend else {
            return Ok(set);
        };
        for row in s.store_rows() {
            let Some(text) = row.read()? else { continue };
            let layer = load_profiles_from_str(&text, &row.message_path(), env, secrets)?;
            set.warnings.extend(layer.warnings);
            for p in layer.profiles {
                // Later rows are the agent's own: they win by id.
                set.profiles.retain(|q| q.id != p.id);
                set.profiles.push(p);
            }
        }
        set.profiles.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(set)
    }

    /// The agent's non-secret state. SQLite: the shared state row overlaid by the agent's
    /// own (its order per provider, and its `lastGood` / `usageStats` entries, win). With no
    /// state row at all, a leftover `auth-state.json` is read (as for profiles).
    pub fn load_state(&self) -> Result<AuthState, StoreError> {
        let Backend::Sqlite(s) = &self.backend else {
            return super::load_auth_state(&self.state_file());
        };
        let mut merged: Option<AuthState> = None;
        for row in s.state_rows() {
            let Some(text) = row.read()? else { continue };
            let layer = auth_state_from_str(&text, &row.message_path())?;
            merged = Some(match merged {
                None => layer,
                Some(base) => overlay_state(base, layer),
            });
        }
        match merged {
            Some(m) => Ok(m),
            None => super::load_auth_state(&self.state_file()),
        }
    }

    /// Read-modify-write of the profiles that hold (or will hold) `id`: the JSON file, or
    /// in SQLite the agent's own store row when it already has `id`, else the shared store
    /// row. `change` gets the `profiles` object and may fail (nothing is written then).
    /// Every member it does not change is kept, in its order.
    pub fn update_profiles_for<T, E>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Map<String, Value>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let Backend::Sqlite(s) = &self.backend else {
            return write::update_profiles(&self.profiles_file(), change);
        };
        let own = s.own_store();
        // While the databases hold no profile and a leftover auth-profiles.json does, the
        // proxy serves that file: a write into the database now would hide every profile
        // in it. The import (`doctor --fix`) comes first.
        let leftover = self.profiles_file();
        if std::fs::symlink_metadata(&leftover).is_ok()
            && !row_has_any_profile(&s.shared_store())?
            && !own
                .as_ref()
                .map(row_has_any_profile)
                .transpose()?
                .unwrap_or(false)
        {
            return Err(StoreError::ImportPending { path: leftover }.into());
        }
        let row = match own {
            Some(own) if row_has_profile(&own, id)? => own,
            _ => s.shared_store(),
        };
        s.require(&row.db)?;
        update_row_profiles(&row, change)
    }

    /// Read-modify-write of the state row an agent-level write goes to: the JSON file, or
    /// in SQLite the agent database's row (the shared `authProfiles.state` row when the
    /// agent has no database, as in a dir `openclaw doctor --fix` upgraded). `change` gets
    /// the whole document. A state row left without order, `lastGood` and `usageStats` is
    /// deleted, as OpenClaw does.
    pub fn update_state<T, E>(
        &self,
        change: impl FnOnce(&mut Map<String, Value>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let Backend::Sqlite(s) = &self.backend else {
            return write::update_auth_state(&self.state_file(), change);
        };
        let row = s.state_target();
        s.require(&row.db)?;
        update_state_row(&row, change)
    }

    /// Applies `change` to every state document the agent reads (its own and the shared
    /// one; in JSON, the one file): for removals, so that an order cleared from the
    /// agent's row does not reappear from the shared row. `change` says whether it changed
    /// something; the result is whether any did. Rows that do not exist are skipped.
    pub fn update_state_everywhere<E>(
        &self,
        mut change: impl FnMut(&mut Map<String, Value>) -> Result<bool, E>,
    ) -> Result<bool, E>
    where
        E: From<StoreError>,
    {
        let Backend::Sqlite(s) = &self.backend else {
            if std::fs::symlink_metadata(self.state_file()).is_err() {
                return Ok(false);
            }
            return write::update_auth_state(&self.state_file(), change);
        };
        let mut any = false;
        for row in s.state_rows() {
            if row.read()?.is_none() {
                continue;
            }
            any |= update_state_row(&row, &mut change)?;
        }
        Ok(any)
    }

    /// One stored profile entry as found (for the OAuth refresh, which re-reads it under
    /// its lock): from the agent's own store, else the shared one. `None` when no store has
    /// it.
    pub fn profile_entry(&self, id: &str) -> Result<Option<Map<String, Value>>, StoreError> {
        let docs: Vec<(String, PathBuf)> = match &self.backend {
            Backend::Json => {
                let path = self.profiles_file();
                match super::read_optional(&path)? {
                    Some(t) => vec![(t, path)],
                    None => Vec::new(),
                }
            }
            Backend::Sqlite(s) => {
                let mut out = Vec::new();
                for row in s.store_rows().into_iter().rev() {
                    if let Some(t) = row.read()? {
                        out.push((t, row.message_path()));
                    }
                }
                out
            }
        };
        for (text, path) in docs {
            let top: Map<String, Value> =
                serde_json::from_str(&text).map_err(|e| parse_error(&path, &e))?;
            if let Some(Value::Object(entry)) = top.get("profiles").and_then(|p| p.get(id)) {
                return Ok(Some(entry.clone()));
            }
        }
        Ok(None)
    }

    /// Every file whose change can change what this agent sees, for hot reload: the JSON
    /// files and the databases with their WAL (a running OpenClaw writes there first),
    /// whether they exist yet or not, so a dir moving from JSON to SQLite is noticed.
    pub fn watch_paths(state_dir: &Path, agent: &str) -> Vec<PathBuf> {
        let dir = agent_dir(state_dir, agent);
        let main_db = agent_dir(state_dir, MAIN_AGENT).join(AGENT_DB);
        let mut out = vec![dir.join(PROFILES_FILE), dir.join(AUTH_STATE_FILE)];
        for db in [state_dir.join(STATE_DB), dir.join(AGENT_DB), main_db] {
            if out.contains(&db) {
                continue;
            }
            out.push(with_suffix(&db, "-wal"));
            out.push(db);
        }
        out
    }
}

// === impl SqliteDir ===

impl SqliteDir {
    /// The shared store row.
    pub fn shared_store(&self) -> Row {
        match self.shared {
            SharedAt::StateDb => Row::machine_state(&self.state_db, "authProfiles.store"),
            SharedAt::LegacyMain => Row::agent_store(&self.main_db),
        }
    }

    /// The agent's own store row, when it is not the shared one.
    fn own_store(&self) -> Option<Row> {
        (self.shared == SharedAt::StateDb || self.agent_db != self.main_db)
            .then(|| Row::agent_store(&self.agent_db))
    }

    /// Store rows in overlay order: shared first, the agent's own last (it wins).
    fn store_rows(&self) -> Vec<Row> {
        let mut rows = vec![self.shared_store()];
        rows.extend(self.own_store());
        rows
    }

    /// State rows in overlay order: the shared one (state-db: `authProfiles.state`), then
    /// the agent's own. In `legacy-main`, a non-main agent does not read main's state.
    fn state_rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        if self.shared == SharedAt::StateDb {
            rows.push(Row::machine_state(&self.state_db, "authProfiles.state"));
        }
        rows.push(Row::agent_state(&self.agent_db));
        rows
    }

    /// Where an agent-level state write goes: its database, or the shared state row when
    /// it has none (state-db only).
    fn state_target(&self) -> Row {
        let has_agent_db = std::fs::symlink_metadata(&self.agent_db).is_ok();
        if !has_agent_db && self.shared == SharedAt::StateDb {
            Row::machine_state(&self.state_db, "authProfiles.state")
        } else {
            Row::agent_state(&self.agent_db)
        }
    }

    /// The database a write needs exists (keygate never creates one).
    fn require(&self, db: &Path) -> Result<(), StoreError> {
        if std::fs::symlink_metadata(db).is_ok() {
            return Ok(());
        }
        let marker = [&self.state_db, &self.agent_db, &self.main_db]
            .into_iter()
            .find(|p| std::fs::symlink_metadata(p).is_ok())
            .map_or_else(|| STATE_DB.to_owned(), |p| p.display().to_string());
        Err(StoreError::NoDatabase {
            path: db.to_owned(),
            marker,
        })
    }
}

/// Read-modify-write of one store row's `profiles` map in one transaction; the row is
/// rewritten only when `change` changed something.
fn update_row_profiles<T, E>(
    row: &Row,
    change: impl FnOnce(&mut Map<String, Value>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StoreError>,
{
    row.update(|current| {
        let path = row.message_path();
        let mut top = match current {
            Some(text) => profiles_doc(text, &path)?,
            None => Map::new(),
        };
        let out = change(write::profiles_of(&mut top))?;
        Ok((put_if_changed(current, &top), out))
    })
}

/// Whether the row exists and its `profiles` map satisfies `test`.
fn row_profiles_are(
    row: &Row,
    test: impl FnOnce(&Map<String, Value>) -> bool,
) -> Result<bool, StoreError> {
    let Some(text) = row.read()? else {
        return Ok(false);
    };
    let top = profiles_doc(&text, &row.message_path())?;
    Ok(top
        .get("profiles")
        .and_then(Value::as_object)
        .is_some_and(test))
}

fn row_has_any_profile(row: &Row) -> Result<bool, StoreError> {
    row_profiles_are(row, |p| !p.is_empty())
}

fn row_has_profile(row: &Row, id: &str) -> Result<bool, StoreError> {
    row_profiles_are(row, |p| p.contains_key(id))
}

/// Parses a store document for a write: a JSON object whose `profiles`, when present, is
/// an object. A legacy flat document is refused (as for the file).
fn profiles_doc(text: &str, path: &Path) -> Result<Map<String, Value>, StoreError> {
    let top: Map<String, Value> = serde_json::from_str(text).map_err(|e| parse_error(path, &e))?;
    match top.get("profiles") {
        Some(Value::Object(_)) => Ok(top),
        Some(_) => Err(profiles_shape_error(text, path)),
        None if top.values().any(Value::is_object) => Err(StoreError::LegacyFlat {
            path: path.to_owned(),
        }),
        None => Ok(top),
    }
}

/// One state row's read-modify-write; an emptied state row is deleted.
fn update_state_row<T, E>(
    row: &Row,
    change: impl FnOnce(&mut Map<String, Value>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StoreError>,
{
    row.update(|current| {
        let path = row.message_path();
        let mut top: Map<String, Value> = match current {
            Some(text) => serde_json::from_str(text).map_err(|e| parse_error(&path, &e))?,
            None => Map::new(),
        };
        top.entry("version").or_insert(Value::from(1));
        let out = change(&mut top)?;
        // OpenClaw's `buildPersistedAuthProfileState` leaves out empty parts and deletes a
        // row with none.
        for part in ["order", "lastGood", "usageStats"] {
            if top
                .get(part)
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                top.shift_remove(part);
            }
        }
        if top.keys().all(|k| k == "version") {
            let what = if current.is_some() {
                RowChange::Delete
            } else {
                RowChange::Keep
            };
            return Ok((what, out));
        }
        Ok((put_if_changed(current, &top), out))
    })
}

/// `Put` of the compact JSON (as OpenClaw's `JSON.stringify` writes it), or `Keep` when it
/// is the text already there.
fn put_if_changed(current: Option<&str>, top: &Map<String, Value>) -> RowChange {
    let json = serde_json::to_string(top).unwrap_or_default();
    if current == Some(json.as_str()) {
        RowChange::Keep
    } else {
        RowChange::Put(json)
    }
}

/// `layer` over `base`: its order per provider replaces the base's; object members of the
/// other parts (`lastGood`, `usageStats`) are merged per key, the layer's winning.
fn overlay_state(mut base: AuthState, layer: AuthState) -> AuthState {
    base.order.extend(layer.order);
    base.warnings.extend(layer.warnings);
    for (k, v) in layer.extra {
        match (base.extra.get_mut(&k), v) {
            (Some(Value::Object(b)), Value::Object(l)) => b.extend(l),
            (_, v) => {
                base.extra.insert(k, v);
            }
        }
    }
    base
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// What [`AgentStore::import_json`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Import {
    /// Profile ids copied into the database.
    pub imported: Vec<String>,
    /// Ids the database already had (its version is kept; the file's stays in the archive).
    pub kept: Vec<String>,
    /// Legacy entries with no recognisable type (left in the archive only).
    pub dropped: Vec<String>,
    /// Providers whose order was copied from `auth-state.json`.
    pub orders: Vec<String>,
    /// Where each file was archived.
    pub archived: Vec<PathBuf>,
}

// === impl AgentStore (import) ===

impl AgentStore {
    /// `doctor --fix` in a SQLite dir: copies the agent dir's leftover `auth-profiles.json`
    /// (canonical or legacy flat) and `auth-state.json` orders into the store the dir uses
    /// — profiles into the row a write goes to, without replacing one the database already
    /// has; orders only for providers the state row has none for — then renames each file
    /// to `<name>.migrated-<unix-ms>.bak`, so OpenClaw stops refusing those providers.
    /// `Ok(None)` for a JSON dir or when there is nothing to import. A file that does not
    /// parse is an error and stays as it is.
    pub fn import_json(&self) -> Result<Option<Import>, StoreError> {
        let Backend::Sqlite(s) = &self.backend else {
            return Ok(None);
        };
        let mut out = Import::default();
        let file = self.profiles_file();
        let state_file = self.state_file();
        // auth-profiles.json.lock covers both files, as OpenClaw 2026.5 takes it; 2026.9.6's
        // doctor imports auth-state.json under auth-state.json.lock, so that is taken too
        // (nothing else in keygate takes it: no writer waits for itself).
        let _lock = write::lock(&file)?;
        let _state_lock = match std::fs::symlink_metadata(&state_file) {
            Ok(_) => Some(write::lock(&state_file)?),
            Err(_) => None,
        };
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if let Some(text) = super::read_optional(&file)? {
            let top: Map<String, Value> =
                serde_json::from_str(&text).map_err(|e| parse_error(&file, &e))?;
            let mut entries: Vec<(String, Value)> = Vec::new();
            match top.get("profiles") {
                Some(Value::Object(p)) => {
                    entries.extend(p.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                Some(_) => return Err(profiles_shape_error(&text, &file)),
                None => {
                    for (provider, entry) in &top {
                        if provider == "version" {
                            continue;
                        }
                        let id = format!("{provider}:default");
                        match write::canonical_entry(provider, entry) {
                            Some(obj) => entries.push((id, Value::Object(obj))),
                            None => out.dropped.push(id),
                        }
                    }
                }
            }
            let row = s.shared_store();
            s.require(&row.db)?;
            update_row_profiles(&row, |profiles| {
                for (id, entry) in entries {
                    if profiles.contains_key(&id) {
                        out.kept.push(id);
                    } else {
                        profiles.insert(id.clone(), entry);
                        out.imported.push(id);
                    }
                }
                Ok::<_, StoreError>(())
            })?;
            let to = with_suffix(&file, &format!(".migrated-{ms}.bak"));
            rename(&file, &to)?;
            out.archived.push(to);
        }
        if let Some(text) = super::read_optional(&state_file)? {
            let legacy = auth_state_from_str(&text, &state_file)?;
            if !legacy.order.is_empty() {
                let target = s.state_target();
                s.require(&target.db)?;
                let current = self.load_state()?;
                update_state_row(&target, |top| {
                    let order = top
                        .entry("order")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !order.is_object() {
                        *order = Value::Object(Map::new());
                    }
                    if let Value::Object(o) = order {
                        for (provider, ids) in &legacy.order {
                            if !current.order.contains_key(provider) && !ids.is_empty() {
                                o.insert(provider.clone(), Value::from(ids.clone()));
                                out.orders.push(provider.clone());
                            }
                        }
                    }
                    Ok::<_, StoreError>(())
                })?;
            }
            let to = with_suffix(&state_file, &format!(".migrated-{ms}.bak"));
            rename(&state_file, &to)?;
            out.archived.push(to);
        }
        Ok((!out.archived.is_empty()).then_some(out))
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|source| StoreError::Write {
        path: from.to_owned(),
        source,
    })
}
