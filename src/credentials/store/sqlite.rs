//! OpenClaw's SQLite auth rows (SPEC §6b): reading one row, and changing one row in one
//! transaction.
//!
//! Owns the SQLite discipline OpenClaw itself follows (see `notes/openclaw-store.md`):
//! read-only connections for reads (never `immutable`, which would hide the WAL), a busy
//! timeout instead of failing while OpenClaw writes, and for a write `BEGIN IMMEDIATE`,
//! read the row, change its JSON, upsert it (or delete it), `COMMIT` — one row, nothing
//! else. The tables are `STRICT`, so values are bound as TEXT and INTEGER exactly.
//!
//! It does not own which rows an agent uses (`backend`) nor what a change means.
//! No secret ever appears in an error from here: errors name the database and the row.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::StoreError;

/// How long a read waits for a database another process is recovering or checkpointing.
/// OpenClaw waits 5 s (`OPENCLAW_SQLITE_BUSY_TIMEOUT_MS`).
const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write waits for another writer (OpenClaw's transactions are short; a CLI
/// user would rather wait than retry by hand).
const WRITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The newest agent database schema keygate writes (OpenClaw 2026.9.6: 23). OpenClaw
/// itself refuses an agent database newer than the one it knows; keygate reads one but
/// does not write it.
const AGENT_SCHEMA_MAX: i64 = 23;

/// The newest state database schema keygate writes (OpenClaw 2026.9.6: 18).
const STATE_SCHEMA_MAX: i64 = 18;

/// One JSON-holding row of OpenClaw's databases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The database file.
    pub db: PathBuf,
    table: Table,
    key: &'static str,
}

/// The tables keygate reads, with their column names (they differ between databases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    /// `state/openclaw.sqlite`: `config_machine_state(state_key, value_json, updated_at_ms)`.
    MachineState,
    /// Agent database: `auth_profile_store(store_key, store_json, updated_at)`.
    AgentStore,
    /// Agent database: `auth_profile_state(state_key, state_json, updated_at)`.
    AgentState,
}

/// What a row change does.
#[derive(Debug)]
pub enum RowChange {
    /// Leave the row as it is (nothing is written).
    Keep,
    /// Store this JSON text in the row (insert or update).
    Put(String),
    /// Delete the row (OpenClaw deletes a state row that became empty).
    Delete,
}

// === impl Table ===

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::MachineState => "config_machine_state",
            Table::AgentStore => "auth_profile_store",
            Table::AgentState => "auth_profile_state",
        }
    }

    /// (key column, JSON column, time column).
    fn columns(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Table::MachineState => ("state_key", "value_json", "updated_at_ms"),
            Table::AgentStore => ("store_key", "store_json", "updated_at"),
            Table::AgentState => ("state_key", "state_json", "updated_at"),
        }
    }

    fn schema_max(self) -> i64 {
        match self {
            Table::MachineState => STATE_SCHEMA_MAX,
            Table::AgentStore | Table::AgentState => AGENT_SCHEMA_MAX,
        }
    }
}

// === impl Row ===

impl Row {
    /// `config_machine_state` row `key` of the state database `db`.
    pub fn machine_state(db: &Path, key: &'static str) -> Self {
        Self {
            db: db.to_owned(),
            table: Table::MachineState,
            key,
        }
    }

    /// `auth_profile_store` row `primary` of the agent database `db`.
    pub fn agent_store(db: &Path) -> Self {
        Self {
            db: db.to_owned(),
            table: Table::AgentStore,
            key: "primary",
        }
    }

    /// `auth_profile_state` row `primary` of the agent database `db`.
    pub fn agent_state(db: &Path) -> Self {
        Self {
            db: db.to_owned(),
            table: Table::AgentState,
            key: "primary",
        }
    }

    /// `<db> (table config_machine_state, row authProfiles.store)`: how messages name it.
    pub fn describe(&self) -> String {
        format!(
            "{} (table {}, row {})",
            self.db.display(),
            self.table.name(),
            self.key
        )
    }

    /// A path naming the row in parse warnings and errors.
    pub fn message_path(&self) -> PathBuf {
        PathBuf::from(self.describe())
    }

    /// The row's JSON text; `None` when the database, the table or the row does not exist.
    pub fn read(&self) -> Result<Option<String>, StoreError> {
        let Some(conn) = open_read(&self.db)? else {
            return Ok(None);
        };
        if !has_table(&conn, self.table.name()).map_err(|e| self.read_error(&e))? {
            return Ok(None);
        }
        let (key_col, json_col, _) = self.table.columns();
        let sql = format!(
            "SELECT {json_col} FROM {} WHERE {key_col} = ?1",
            self.table.name()
        );
        conn.query_row(&sql, [self.key], |r| r.get::<_, String>(0))
            .optional()
            .map_err(|e| self.read_error(&e))
    }

    /// Changes the row in one `BEGIN IMMEDIATE` transaction: `change` gets the current JSON
    /// text (`None` when the row does not exist) and says what to do. Waits up to
    /// [`WRITE_BUSY_TIMEOUT`] for another writer. The database and its table must exist:
    /// keygate never creates OpenClaw's databases.
    ///
    /// Errors: the database is missing or cannot be written, its schema is newer than
    /// keygate knows, the table is missing, or `change`'s own error (nothing written).
    pub fn update<T, E>(
        &self,
        change: impl FnOnce(Option<&str>) -> Result<(RowChange, T), E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let real = super::confine(&self.db)?;
        if !real.is_file() {
            return Err(self.write_error(&"the database does not exist").into());
        }
        let mut conn = Connection::open_with_flags(
            &real,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.write_error(&e))?;
        conn.busy_timeout(WRITE_BUSY_TIMEOUT)
            .map_err(|e| self.write_error(&e))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.write_error(&e))?;
        if version > self.table.schema_max() {
            return Err(StoreError::NewerSchema {
                path: self.db.clone(),
                version,
                known: self.table.schema_max(),
            }
            .into());
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.write_error(&e))?;
        if !has_table(&tx, self.table.name()).map_err(|e| self.write_error(&e))? {
            return Err(self
                .write_error(&format!("it has no table {}", self.table.name()))
                .into());
        }
        let (key_col, json_col, time_col) = self.table.columns();
        let table = self.table.name();
        let current: Option<String> = tx
            .query_row(
                &format!("SELECT {json_col} FROM {table} WHERE {key_col} = ?1"),
                [self.key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.write_error(&e))?;
        let (what, out) = change(current.as_deref())?;
        match what {
            RowChange::Keep => return Ok(out),
            RowChange::Put(json) => {
                let sql = format!(
                    "INSERT INTO {table} ({key_col}, {json_col}, {time_col}) VALUES (?1, ?2, ?3) \
                     ON CONFLICT({key_col}) DO UPDATE SET {json_col} = excluded.{json_col}, \
                     {time_col} = excluded.{time_col}"
                );
                tx.execute(&sql, rusqlite::params![self.key, json, now_ms()])
                    .map_err(|e| self.write_error(&e))?;
            }
            RowChange::Delete => {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE {key_col} = ?1"),
                    [self.key],
                )
                .map_err(|e| self.write_error(&e))?;
            }
        }
        tx.commit().map_err(|e| self.write_error(&e))?;
        Ok(out)
    }

    fn read_error(&self, e: &dyn std::fmt::Display) -> StoreError {
        StoreError::Database {
            what: format!("cannot read {}", self.describe()),
            message: e.to_string(),
        }
    }

    fn write_error(&self, e: &dyn std::fmt::Display) -> StoreError {
        StoreError::Database {
            what: format!("cannot write {}", self.describe()),
            message: e.to_string(),
        }
    }
}

/// `schema_meta` row `primary` of a database: (`app_version`, `schema_version`), when the
/// database and the row exist. The OpenClaw version that last migrated it.
pub fn schema_meta(db: &Path) -> Result<Option<(Option<String>, i64)>, StoreError> {
    let err = |e: &dyn std::fmt::Display| StoreError::Database {
        what: format!("cannot read {}", db.display()),
        message: e.to_string(),
    };
    let Some(conn) = open_read(db)? else {
        return Ok(None);
    };
    if !has_table(&conn, "schema_meta").map_err(|e| err(&e))? {
        return Ok(None);
    }
    conn.query_row(
        "SELECT app_version, schema_version FROM schema_meta WHERE meta_key = 'primary'",
        [],
        |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?)),
    )
    .optional()
    .map_err(|e| err(&e))
}

/// A read-only connection, `None` when the file does not exist. The WAL is read (a
/// running OpenClaw keeps its last writes there).
fn open_read(db: &Path) -> Result<Option<Connection>, StoreError> {
    let real = super::confine(db)?;
    match std::fs::symlink_metadata(&real) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(StoreError::Database {
                what: format!("cannot read {}", db.display()),
                message: "it is not a regular file".to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: db.to_owned(),
                source,
            })
        }
    }
    let err = |e: rusqlite::Error| StoreError::Database {
        what: format!("cannot read {}", db.display()),
        message: e.to_string(),
    };
    let conn = Connection::open_with_flags(
        &real,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(READ_BUSY_TIMEOUT).map_err(err)?;
    Ok(Some(conn))
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
