//! The only module that contains SQL: the vault's tables, their numbered
//! migrations, and typed reads and writes of rows whose secret parts are
//! already sealed blobs. It never sees a key or a plaintext secret.
//!
//! Two engines behind the one interface (`engine.rs`): a SQLite file (WAL,
//! 0600; the embedded default) and a PostgreSQL database shared by a fleet
//! of daemons (`postgres.rs`). Each query is written once.

mod engine;
pub mod postgres;

use engine::{args, Conn, Row, Tx};
pub use postgres::PgTarget;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Numbered migrations, applied in order; `PRAGMA user_version` (SQLite)
/// or `latchkey_schema` (PostgreSQL, through [`postgres::ddl`]) records
/// how many ran. Append only: never edit a released migration.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/0001_init.sql"),
    include_str!("../../../migrations/0002_grants.sql"),
    include_str!("../../../migrations/0003_callers.sql"),
    include_str!("../../../migrations/0004_audit_chain.sql"),
    include_str!("../../../migrations/0005_policy.sql"),
    include_str!("../../../migrations/0006_totp.sql"),
    include_str!("../../../migrations/0007_client_secret_rotation.sql"),
    include_str!("../../../migrations/0008_git_routes.sql"),
    include_str!("../../../migrations/0009_credential_keys.sql"),
];

/// Where a vault is: a SQLite file, or a PostgreSQL database.
#[derive(Debug, Clone)]
pub enum Location {
    File(PathBuf),
    Postgres(Arc<PgTarget>),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Postgres(target) => write!(f, "{target}"),
        }
    }
}

impl Location {
    /// The vault file, for what only a file has (its lock file, its
    /// directory); `None` for a database.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Location::File(path) => Some(path),
            Location::Postgres(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("vault database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Names the database (never its password) and what it said.
    #[error("the vault database {database}: {message}")]
    Postgres { database: String, message: String },
    #[error("a vault row's column {index} has a type latchkey never writes: the database was modified or damaged")]
    Column { index: usize },
    #[error("cannot prepare the vault file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the vault {place} was written by a newer latchkey (schema {found}, this one knows {known}); upgrade latchkey")]
    TooNew {
        place: String,
        found: u32,
        known: u32,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub struct SlotRow {
    pub id: String,
    pub kind: String,
    pub params: String,
    pub wrapped_dek: Vec<u8>,
    pub created_at: i64,
}

/// A slot as a rekey rewrites it: the new DEK wrapped, and new
/// parameters when the slot's change too (a key-file slot's sealed KEK).
pub struct RewrappedSlot {
    pub id: String,
    pub params: Option<String>,
    pub wrapped_dek: Vec<u8>,
}

pub struct ProviderRow {
    pub id: String,
    pub name: String,
    pub config: Vec<u8>,
}

pub struct CredentialRow {
    pub id: String,
    pub name: String,
    pub provider_id: String,
    pub config: Vec<u8>,
    pub client_secret: Option<Vec<u8>>,
    pub state: String,
    /// Unix seconds the client secret was set (`None`: no secret).
    pub secret_set_at: Option<i64>,
    /// Whether the newest secret has been accepted by the provider once.
    pub secret_worked: bool,
    /// The previous client secret, sealed, kept until the newest works.
    pub previous_secret: Option<Vec<u8>>,
    pub previous_secret_set_at: Option<i64>,
}

/// A credential's client secrets after `credential set-secret`.
pub struct SecretRotation<'a> {
    pub credential_id: &'a str,
    pub secret: Vec<u8>,
    pub set_at: i64,
    /// The previous secret (sealed under `previous_secret`), or none.
    pub previous: Option<(Vec<u8>, Option<i64>)>,
}

pub struct TokenRow {
    pub id: String,
    pub credential_id: String,
    pub scope_key: String,
    pub token: Vec<u8>,
}

pub struct GrantRow {
    pub id: String,
    pub credential_id: String,
    pub sealed: Vec<u8>,
}

/// One sealed field anywhere in the vault, for `rekey`.
pub struct SealedField {
    pub table: &'static str,
    pub row_id: String,
    pub field: &'static str,
    pub blob: Vec<u8>,
}

/// One row of the audit log as stored. Its sealed detail is already a
/// blob; its MAC is `None` until the row is chained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRow {
    /// Ignored when inserting: the store gives it, never reused (SQLite's
    /// AUTOINCREMENT; PostgreSQL's `audit_seq` counter).
    pub seq: i64,
    pub at: i64,
    pub event: String,
    pub credential: Option<String>,
    pub peer_pid: Option<u32>,
    /// The verified app identity (`identity::AppId::label`).
    pub app: Option<String>,
    /// Its stable name (`identity::AppId::key`).
    pub app_key: Option<String>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
    pub sealed_id: Option<String>,
    pub sealed_detail: Option<Vec<u8>>,
    pub chained_late: bool,
    pub mac: Option<Vec<u8>>,
}

/// The sealed head of the audit chain, as stored.
pub struct AuditHeadRow {
    pub id: String,
    pub sealed: Vec<u8>,
}

/// What `audit.list` selects (besides the seq window and the limit).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter<'a> {
    /// Rows at or after this Unix time.
    pub since: Option<i64>,
    /// Rows about exactly this credential.
    pub credential: Option<&'a str>,
    /// Rows whose app key is exactly this, or whose app label contains it.
    pub app: Option<&'a str>,
}

/// The audit queries the writer and `audit.list` run, every one a range
/// of the primary key (a test holds them to it: none scans the table).
const AUDIT_ROWS_SQL: &str = "SELECT seq, at, event, credential, peer_pid, app, app_key, outcome, detail, sealed_id, sealed_detail, chained_late, mac
     FROM audit WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3";
const AUDIT_BOUNDS_SQL: &str = "SELECT (SELECT min(seq) FROM audit), (SELECT max(seq) FROM audit)";
const AUDIT_LAST_AT_MOST_SQL: &str = "SELECT max(seq) FROM audit WHERE seq <= ?1";
const AUDIT_PAGE_SQL: &str = "SELECT seq, at, event, credential, peer_pid, app, app_key, outcome, detail, sealed_id, sealed_detail, chained_late, mac
     FROM audit
     WHERE seq > ?1 AND seq <= ?2
       AND (?3 IS NULL OR at >= ?3)
       AND (?4 IS NULL OR credential = ?4)
       AND (?5 IS NULL OR app_key = ?5 OR instr(app, ?5) > 0)
     ORDER BY seq LIMIT ?6";

fn audit_row(mut r: Row) -> Result<AuditRow> {
    Ok(AuditRow {
        seq: r.take(0)?,
        at: r.take(1)?,
        event: r.take(2)?,
        credential: r.take(3)?,
        peer_pid: r.take(4)?,
        app: r.take(5)?,
        app_key: r.take(6)?,
        outcome: r.take(7)?,
        detail: r.take(8)?,
        sealed_id: r.take(9)?,
        sealed_detail: r.take(10)?,
        chained_late: r.take(11)?,
        mac: r.take(12)?,
    })
}

/// The audit log's reads, on the store's connection or inside an
/// [`AuditTx`]. Every one is bounded: a range of seq (the primary key),
/// a limit, or a single row.
pub trait AuditReads {
    #[doc(hidden)]
    fn conn(&self) -> &Conn;

    /// Rows with `from <= seq <= to`, in order, at most `limit`.
    fn audit_rows(&self, from: i64, to: i64, limit: usize) -> Result<Vec<AuditRow>> {
        self.conn()
            .query(AUDIT_ROWS_SQL, args![from, to, limit as i64])?
            .into_iter()
            .map(audit_row)
            .collect()
    }

    /// The row `seq`, if it exists.
    fn audit_row(&self, seq: i64) -> Result<Option<AuditRow>> {
        Ok(self.audit_rows(seq, seq, 1)?.pop())
    }

    /// The lowest and highest seq present, if any row is. Two look-ups in
    /// the primary key (one `min(seq), max(seq)` would scan the table).
    fn audit_bounds(&self) -> Result<Option<(i64, i64)>> {
        let Some(mut r) = self.conn().one(AUDIT_BOUNDS_SQL, args![])? else {
            return Ok(None);
        };
        let (min, max): (Option<i64>, Option<i64>) = (r.take(0)?, r.take(1)?);
        Ok(min.zip(max))
    }

    /// The highest seq present at or below `seq`.
    fn audit_last_at_most(&self, seq: i64) -> Result<Option<i64>> {
        match self.conn().one(AUDIT_LAST_AT_MOST_SQL, args![seq])? {
            Some(mut r) => r.take(0),
            None => Ok(None),
        }
    }

    /// The seq the next row gets: one past the highest ever given.
    fn audit_next_seq(&self) -> Result<i64> {
        let sql = if self.conn().is_postgres() {
            "SELECT n FROM audit_seq"
        } else {
            "SELECT seq FROM sqlite_sequence WHERE name = 'audit'"
        };
        let given: Option<i64> = match self.conn().one(sql, args![])? {
            Some(mut r) => r.take(0)?,
            None => None,
        };
        Ok(given.unwrap_or(0) + 1)
    }

    /// Whether any row carries a MAC (then a chain was started, and a
    /// missing head means it was removed). Read once, when a chain would
    /// start.
    fn audit_any_mac(&self) -> Result<bool> {
        Ok(self
            .conn()
            .one("SELECT 1 FROM audit WHERE mac IS NOT NULL LIMIT 1", args![])?
            .is_some())
    }

    /// Every row of `audit_head` (one, unless someone edited the file).
    fn audit_heads(&self) -> Result<Vec<AuditHeadRow>> {
        self.conn()
            .query("SELECT id, sealed FROM audit_head", args![])?
            .into_iter()
            .map(|mut r| {
                Ok(AuditHeadRow {
                    id: r.take(0)?,
                    sealed: r.take(1)?,
                })
            })
            .collect()
    }

    /// The rows `audit.list` shows: `after < seq <= through` that pass
    /// `filter`, in order, at most `limit`.
    fn audit_page(
        &self,
        after: i64,
        through: i64,
        filter: &AuditFilter<'_>,
        limit: usize,
    ) -> Result<Vec<AuditRow>> {
        self.conn()
            .query(
                AUDIT_PAGE_SQL,
                args![
                    after,
                    through,
                    filter.since,
                    filter.credential,
                    filter.app,
                    limit as i64
                ],
            )?
            .into_iter()
            .map(audit_row)
            .collect()
    }
}

impl AuditReads for Store {
    fn conn(&self) -> &Conn {
        &self.conn
    }
}

/// One transaction over the audit log: the writer's batch (rows chained
/// late, new rows, pruning) and the new sealed head, committed together.
/// On PostgreSQL it starts by locking the seq counter: daemons sharing
/// the vault take turns, so each batch reads the head the last one wrote.
pub struct AuditTx<'a> {
    tx: Tx<'a>,
}

impl AuditReads for AuditTx<'_> {
    fn conn(&self) -> &Conn {
        self.tx.conn()
    }
}

impl<'a> AuditTx<'a> {
    fn begin(conn: &'a Conn) -> Result<AuditTx<'a>> {
        let tx = conn.begin()?;
        if conn.is_postgres() {
            conn.exec("SELECT n FROM audit_seq FOR UPDATE", args![])?;
        }
        Ok(AuditTx { tx })
    }

    /// Inserts a row (its `seq` is ignored) and returns the seq it got.
    pub fn insert(&mut self, row: &AuditRow) -> Result<i64> {
        let conn = self.tx.conn();
        let (sql, seq) = if conn.is_postgres() {
            let mut next = conn
                .one("UPDATE audit_seq SET n = n + 1 RETURNING n", args![])?
                .ok_or(StoreError::Column { index: 0 })?;
            let seq: i64 = next.take(0)?;
            (
                "INSERT INTO audit (at, event, credential, peer_pid, app, app_key, outcome, detail, sealed_id, sealed_detail, chained_late, mac, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING seq",
                Some(seq),
            )
        } else {
            (
                "INSERT INTO audit (at, event, credential, peer_pid, app, app_key, outcome, detail, sealed_id, sealed_detail, chained_late, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING seq",
                None,
            )
        };
        let mut values = args![
            row.at,
            row.event,
            row.credential,
            row.peer_pid,
            row.app,
            row.app_key,
            row.outcome,
            row.detail,
            row.sealed_id,
            row.sealed_detail,
            row.chained_late,
            row.mac
        ];
        values.extend(seq.map(|s| engine::Arg::arg(&s)));
        let mut given = conn
            .one(sql, values)?
            .ok_or(StoreError::Column { index: 0 })?;
        given.take(0)
    }

    /// Sets a row's MAC (and whether it was chained late).
    pub fn set_mac(&mut self, seq: i64, mac: &[u8], chained_late: bool) -> Result<()> {
        self.tx.exec(
            "UPDATE audit SET mac = ?2, chained_late = ?3 WHERE seq = ?1",
            args![seq, mac, chained_late],
        )?;
        Ok(())
    }

    /// Re-seals a row's sealed detail (rekey).
    pub fn set_sealed_detail(&mut self, seq: i64, blob: &[u8]) -> Result<()> {
        self.tx.exec(
            "UPDATE audit SET sealed_detail = ?2 WHERE seq = ?1",
            args![seq, blob],
        )?;
        Ok(())
    }

    /// Deletes the rows `from <= seq <= to` (retention).
    pub fn delete_range(&mut self, from: i64, to: i64) -> Result<u64> {
        self.tx.exec(
            "DELETE FROM audit WHERE seq >= ?1 AND seq <= ?2",
            args![from, to],
        )
    }

    /// Replaces the head with this one.
    pub fn put_head(&mut self, head: &AuditHeadRow) -> Result<()> {
        self.tx.exec("DELETE FROM audit_head", args![])?;
        self.tx.exec(
            "INSERT INTO audit_head (id, sealed) VALUES (?1, ?2)",
            args![head.id, head.sealed],
        )?;
        Ok(())
    }

    pub fn commit(self) -> Result<()> {
        self.tx.commit()
    }
}

/// A row of `rules`, `app_keys` or `git_routes`: an id and its sealed document.
pub struct SealedRow {
    pub id: String,
    pub sealed: Vec<u8>,
}

pub struct Store {
    conn: Conn,
}

impl Store {
    /// Every row `sql` selects, each mapped by `row`.
    fn all<T>(&self, sql: &str, row: impl FnMut(Row) -> Result<T>) -> Result<Vec<T>> {
        self.conn
            .query(sql, args![])?
            .into_iter()
            .map(row)
            .collect()
    }

    /// Column 0 of the first row `sql` selects, if there is one.
    fn first<T: engine::Column>(&self, sql: &str, values: Vec<engine::Value>) -> Result<Option<T>> {
        match self.conn.one(sql, values)? {
            Some(mut r) => Ok(Some(r.take(0)?)),
            None => Ok(None),
        }
    }

    /// Opens (creating when `create`) the vault, and runs pending
    /// migrations. A file is created with owner-only permissions and runs
    /// with WAL and full fsync; a database is connected to (and must
    /// exist: the migrations make the tables).
    pub fn open(location: &Location, create: bool) -> Result<Store> {
        match location {
            Location::File(path) => Store::open_file(path, create),
            Location::Postgres(target) => {
                let mut store = Store {
                    conn: Conn::Postgres(target.open()?),
                };
                store.migrate_postgres(&target.to_string())?;
                Ok(store)
            }
        }
    }

    fn open_file(path: &Path, create: bool) -> Result<Store> {
        let io = |source| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        if create {
            if let Some(dir) = path.parent() {
                crate::fsutil::private_dir(dir).map_err(io)?;
            }
            // Create the file 0600 before SQLite opens it; SQLite gives its
            // -wal and -shm files the same mode.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
        }
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let conn = rusqlite::Connection::open_with_flags(path, flags)?;
        // synchronous=FULL: a committed write (a rotated refresh token above
        // all) survives power loss, not just a process crash.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA secure_delete = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        let mut store = Store {
            conn: Conn::Sqlite(conn),
        };
        store.migrate_file(path)?;
        Ok(store)
    }

    fn migrate_file(&mut self, path: &Path) -> Result<()> {
        let Conn::Sqlite(conn) = &mut self.conn else {
            unreachable!("a file is SQLite");
        };
        let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as u32;
        if current > known {
            return Err(StoreError::TooNew {
                place: format!("file {}", path.display()),
                found: current,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as u32 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// All pending migrations in one transaction, under an advisory lock:
    /// daemons starting together migrate once.
    fn migrate_postgres(&mut self, database: &str) -> Result<()> {
        let tx = self.conn.begin()?;
        let conn = tx.conn();
        conn.exec(
            "SELECT pg_advisory_xact_lock(?1)",
            args![postgres::MIGRATION_LOCK],
        )?;
        conn.batch(postgres::BOOTSTRAP)?;
        let current: i64 = conn
            .one("SELECT version FROM latchkey_schema", args![])?
            .map(|mut r| r.take(0))
            .transpose()?
            .unwrap_or(0);
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::TooNew {
                place: format!("database {database}"),
                found: current as u32,
                known: known as u32,
            });
        }
        for sql in MIGRATIONS.iter().skip(current as usize) {
            conn.batch(&postgres::ddl(sql))?;
        }
        conn.exec("UPDATE latchkey_schema SET version = ?1", args![known])?;
        tx.commit()
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.first("SELECT value FROM meta WHERE key = ?1", args![key])
    }

    /// Sets (`Some`) or removes (`None`) a plaintext `meta` row.
    pub fn set_meta(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(value) => self.conn.exec(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                args![key, value],
            )?,
            None => self
                .conn
                .exec("DELETE FROM meta WHERE key = ?1", args![key])?,
        };
        Ok(())
    }

    /// Writes the vault id and the first slots in one transaction.
    pub fn initialize(&mut self, vault_id: &str, slots: &[SlotRow]) -> Result<()> {
        let tx = self.conn.begin()?;
        tx.exec(
            "INSERT INTO meta (key, value) VALUES ('vault_id', ?1), ('format', '1')",
            args![vault_id],
        )?;
        for slot in slots {
            insert_slot(&tx, slot)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn slots(&self) -> Result<Vec<SlotRow>> {
        self.all("SELECT id, kind, params, wrapped_dek, created_at FROM key_slots ORDER BY created_at, id", |mut r| {
            Ok(SlotRow {
                id: r.take(0)?,
                kind: r.take(1)?,
                params: r.take(2)?,
                wrapped_dek: r.take(3)?,
                created_at: r.take(4)?,
            })
        })
    }

    /// Adds one slot (a key-file slot, to an existing vault).
    pub fn add_slot(&mut self, slot: &SlotRow) -> Result<()> {
        let tx = self.conn.begin()?;
        insert_slot(&tx, slot)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes one slot.
    pub fn remove_slot(&mut self, id: &str) -> Result<()> {
        self.conn
            .exec("DELETE FROM key_slots WHERE id = ?1", args![id])?;
        Ok(())
    }

    /// Replaces one slot's parameters and wrapped key (passphrase change).
    pub fn update_slot(&mut self, id: &str, params: &str, wrapped_dek: &[u8]) -> Result<()> {
        self.conn.exec(
            "UPDATE key_slots SET params = ?2, wrapped_dek = ?3 WHERE id = ?1",
            args![id, params, wrapped_dek],
        )?;
        Ok(())
    }

    pub fn providers(&self) -> Result<Vec<ProviderRow>> {
        self.all(
            "SELECT id, name, config FROM providers ORDER BY name",
            |mut r| {
                Ok(ProviderRow {
                    id: r.take(0)?,
                    name: r.take(1)?,
                    config: r.take(2)?,
                })
            },
        )
    }

    pub fn insert_provider(&mut self, row: &ProviderRow, now: i64) -> Result<()> {
        self.conn.exec(
            "INSERT INTO providers (id, name, config, created_at) VALUES (?1, ?2, ?3, ?4)",
            args![row.id, row.name, row.config, now],
        )?;
        Ok(())
    }

    pub fn delete_provider(&mut self, id: &str) -> Result<()> {
        self.conn
            .exec("DELETE FROM providers WHERE id = ?1", args![id])?;
        Ok(())
    }

    pub fn credentials(&self) -> Result<Vec<CredentialRow>> {
        self.all(
            "SELECT id, name, provider_id, config, client_secret, state, secret_set_at,
                    secret_worked, previous_secret, previous_secret_set_at
             FROM credentials ORDER BY name",
            |mut r| {
                Ok(CredentialRow {
                    id: r.take(0)?,
                    name: r.take(1)?,
                    provider_id: r.take(2)?,
                    config: r.take(3)?,
                    client_secret: r.take(4)?,
                    state: r.take(5)?,
                    secret_set_at: r.take(6)?,
                    secret_worked: r.take(7)?,
                    previous_secret: r.take(8)?,
                    previous_secret_set_at: r.take(9)?,
                })
            },
        )
    }

    /// The sealed client secret of one credential, read when a token request needs it.
    pub fn client_secret(&self, credential_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .first(
                "SELECT client_secret FROM credentials WHERE id = ?1",
                args![credential_id],
            )?
            .flatten())
    }

    /// The sealed previous client secret of one credential, if one is kept.
    pub fn previous_secret(&self, credential_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .first(
                "SELECT previous_secret FROM credentials WHERE id = ?1",
                args![credential_id],
            )?
            .flatten())
    }

    /// Stores a new client secret and what is kept of the previous one.
    pub fn rotate_secret(&mut self, rotation: &SecretRotation<'_>) -> Result<()> {
        let (previous, previous_set_at) = match &rotation.previous {
            Some((blob, at)) => (Some(blob.as_slice()), *at),
            None => (None, None),
        };
        self.conn.exec(
            "UPDATE credentials SET client_secret = ?2, secret_set_at = ?3, secret_worked = 0,
                    previous_secret = ?4, previous_secret_set_at = ?5
             WHERE id = ?1",
            args![
                rotation.credential_id,
                rotation.secret,
                rotation.set_at,
                previous,
                previous_set_at
            ],
        )?;
        Ok(())
    }

    /// The client secret set at `set_at` worked: if it is still the
    /// newest, it is the only one kept.
    pub fn secret_worked(&mut self, credential_id: &str, set_at: Option<i64>) -> Result<()> {
        self.conn.exec(
            "UPDATE credentials SET secret_worked = 1, previous_secret = NULL,
                    previous_secret_set_at = NULL
             WHERE id = ?1 AND secret_set_at IS NOT DISTINCT FROM ?2",
            args![credential_id, set_at],
        )?;
        Ok(())
    }

    /// Inserts a credential with its keys (`credential_keys`), in one
    /// transaction.
    pub fn insert_credential(
        &mut self,
        row: &CredentialRow,
        keys: &[SealedRow],
        now: i64,
    ) -> Result<()> {
        let tx = self.conn.begin()?;
        tx.exec(
            "INSERT INTO credentials (id, name, provider_id, config, client_secret, state, created_at,
                                      secret_set_at, secret_worked, previous_secret, previous_secret_set_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            args![
                row.id,
                row.name,
                row.provider_id,
                row.config,
                row.client_secret,
                row.state,
                now,
                row.secret_set_at,
                row.secret_worked,
                row.previous_secret,
                row.previous_secret_set_at
            ],
        )?;
        for key in keys {
            tx.exec(
                "INSERT INTO credential_keys (id, credential_id, sealed, created_at) VALUES (?1, ?2, ?3, ?4)",
                args![key.id, row.id, key.sealed, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes a credential and (by cascade) its tokens.
    pub fn delete_credential(&mut self, id: &str) -> Result<()> {
        self.conn
            .exec("DELETE FROM credentials WHERE id = ?1", args![id])?;
        Ok(())
    }

    pub fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.all(
            "SELECT id, credential_id, scope_key, token FROM tokens",
            token_row,
        )
    }

    /// Replaces the stored token of (credential, scope set) in one
    /// transaction: the old row goes, a row with a fresh id comes.
    pub fn replace_token(&mut self, row: &TokenRow, expires_at: Option<i64>) -> Result<()> {
        let tx = self.conn.begin()?;
        tx.exec(
            "DELETE FROM tokens WHERE credential_id = ?1 AND scope_key = ?2",
            args![row.credential_id, row.scope_key],
        )?;
        tx.exec(
            "INSERT INTO tokens (id, credential_id, scope_key, token, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![row.id, row.credential_id, row.scope_key, row.token, expires_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// One credential's stored tokens (a fleet lock's re-read).
    pub fn tokens_of(&self, credential_id: &str) -> Result<Vec<TokenRow>> {
        self.conn
            .query(
                "SELECT id, credential_id, scope_key, token FROM tokens WHERE credential_id = ?1",
                args![credential_id],
            )?
            .into_iter()
            .map(token_row)
            .collect()
    }

    /// One credential's grant row, if it has one (a fleet lock's re-read).
    pub fn grant_of(&self, credential_id: &str) -> Result<Option<GrantRow>> {
        self.conn
            .one(
                "SELECT id, credential_id, sealed FROM grants WHERE credential_id = ?1",
                args![credential_id],
            )?
            .map(grant_row)
            .transpose()
    }

    pub fn grants(&self) -> Result<Vec<GrantRow>> {
        self.all("SELECT id, credential_id, sealed FROM grants", grant_row)
    }

    /// Commits a login or a refresh in one durable transaction: the grant
    /// (with a rotated refresh token) and the access token it produced, and
    /// the credential's state. `synchronous=FULL` makes the commit survive
    /// power loss; only after it returns may the access token be handed out.
    pub fn commit_grant(
        &mut self,
        grant: Option<&GrantRow>,
        token: Option<(&TokenRow, Option<i64>)>,
        credential_id: &str,
        state: &str,
        now: i64,
    ) -> Result<()> {
        let tx = self.conn.begin()?;
        if let Some(grant) = grant {
            tx.exec(
                "DELETE FROM grants WHERE credential_id = ?1",
                args![grant.credential_id],
            )?;
            tx.exec(
                "INSERT INTO grants (id, credential_id, sealed, updated_at) VALUES (?1, ?2, ?3, ?4)",
                args![grant.id, grant.credential_id, grant.sealed, now],
            )?;
        }
        if let Some((row, expires_at)) = token {
            tx.exec(
                "DELETE FROM tokens WHERE credential_id = ?1 AND scope_key = ?2",
                args![row.credential_id, row.scope_key],
            )?;
            tx.exec(
                "INSERT INTO tokens (id, credential_id, scope_key, token, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![row.id, row.credential_id, row.scope_key, row.token, expires_at],
            )?;
        }
        tx.exec(
            "UPDATE credentials SET state = ?2 WHERE id = ?1",
            args![credential_id, state],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets a credential's grant and tokens (revoked, or the provider
    /// refused the refresh token) and records its new state.
    pub fn drop_grant(&mut self, credential_id: &str, state: &str) -> Result<()> {
        let tx = self.conn.begin()?;
        tx.exec(
            "DELETE FROM grants WHERE credential_id = ?1",
            args![credential_id],
        )?;
        tx.exec(
            "DELETE FROM tokens WHERE credential_id = ?1",
            args![credential_id],
        )?;
        tx.exec(
            "UPDATE credentials SET state = ?2 WHERE id = ?1",
            args![credential_id, state],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn rules(&self) -> Result<Vec<SealedRow>> {
        self.sealed_rows("rules")
    }

    /// Stores a rule, replacing `replaces` (the rule it supersedes) in the
    /// same transaction.
    pub fn put_rule(
        &mut self,
        row: &SealedRow,
        credential_id: &str,
        replaces: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.put_sealed_row("rules", row, credential_id, replaces, now)
    }

    /// The rows of a table of sealed documents per credential (`rules`,
    /// `git_routes`), oldest first.
    fn sealed_rows(&self, table: &'static str) -> Result<Vec<SealedRow>> {
        // The table name is one of ours, never input.
        self.all(
            &format!("SELECT id, sealed FROM {table} ORDER BY created_at, id"),
            |mut r| {
                Ok(SealedRow {
                    id: r.take(0)?,
                    sealed: r.take(1)?,
                })
            },
        )
    }

    /// Inserts a row into a table of sealed documents per credential,
    /// deleting `replaces` in the same transaction.
    fn put_sealed_row(
        &mut self,
        table: &'static str,
        row: &SealedRow,
        credential_id: &str,
        replaces: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let tx = self.conn.begin()?;
        if let Some(old) = replaces {
            tx.exec(&format!("DELETE FROM {table} WHERE id = ?1"), args![old])?;
        }
        tx.exec(
            &format!("INSERT INTO {table} (id, credential_id, sealed, created_at) VALUES (?1, ?2, ?3, ?4)"),
            args![row.id, credential_id, row.sealed, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes rules by id; true if any existed.
    pub fn delete_rules(&mut self, ids: &[&str]) -> Result<bool> {
        let tx = self.conn.begin()?;
        let mut any = false;
        for id in ids {
            any |= tx.exec("DELETE FROM rules WHERE id = ?1", args![id])? > 0;
        }
        tx.commit()?;
        Ok(any)
    }

    pub fn app_keys(&self) -> Result<Vec<SealedRow>> {
        self.all(
            "SELECT id, sealed FROM app_keys ORDER BY created_at, id",
            |mut r| {
                Ok(SealedRow {
                    id: r.take(0)?,
                    sealed: r.take(1)?,
                })
            },
        )
    }

    pub fn insert_app_key(&mut self, row: &SealedRow, now: i64) -> Result<()> {
        self.conn.exec(
            "INSERT INTO app_keys (id, sealed, created_at) VALUES (?1, ?2, ?3)",
            args![row.id, row.sealed, now],
        )?;
        Ok(())
    }

    pub fn git_routes(&self) -> Result<Vec<SealedRow>> {
        self.sealed_rows("git_routes")
    }

    /// Stores a git route, replacing `replaces` (the route with the same
    /// protocol, host, path and username) in the same transaction.
    pub fn put_git_route(
        &mut self,
        row: &SealedRow,
        credential_id: &str,
        replaces: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.put_sealed_row("git_routes", row, credential_id, replaces, now)
    }

    /// Deletes a git route; true if it existed.
    pub fn delete_git_route(&mut self, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .exec("DELETE FROM git_routes WHERE id = ?1", args![id])?
            > 0)
    }

    /// One credential's keys (`credential_keys`), oldest first.
    pub fn credential_keys(&self, credential_id: &str) -> Result<Vec<SealedRow>> {
        self.conn
            .query(
                "SELECT id, sealed FROM credential_keys WHERE credential_id = ?1 ORDER BY created_at, id",
                args![credential_id],
            )?
            .into_iter()
            .map(|mut r| {
                Ok(SealedRow {
                    id: r.take(0)?,
                    sealed: r.take(1)?,
                })
            })
            .collect()
    }

    /// Every credential's keys, for `rekey`.
    fn all_credential_keys(&self) -> Result<Vec<SealedRow>> {
        self.sealed_rows("credential_keys")
    }

    /// Adds a key to a credential and deletes `retire` of its keys, in one
    /// transaction (a rotation never leaves it with no key).
    pub fn change_credential_keys(
        &mut self,
        credential_id: &str,
        add: Option<&SealedRow>,
        retire: &[&str],
        now: i64,
    ) -> Result<()> {
        let tx = self.conn.begin()?;
        for id in retire {
            tx.exec(
                "DELETE FROM credential_keys WHERE id = ?1 AND credential_id = ?2",
                args![id, credential_id],
            )?;
        }
        if let Some(row) = add {
            tx.exec(
                "INSERT INTO credential_keys (id, credential_id, sealed, created_at) VALUES (?1, ?2, ?3, ?4)",
                args![row.id, credential_id, row.sealed, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The authenticator's row, if one is enrolled.
    pub fn authenticator(&self) -> Result<Option<SealedRow>> {
        Ok(self
            .all("SELECT id, sealed FROM authenticator", |mut r| {
                Ok(SealedRow {
                    id: r.take(0)?,
                    sealed: r.take(1)?,
                })
            })?
            .into_iter()
            .next())
    }

    /// Whether an authenticator is enrolled (readable while locked).
    pub fn has_authenticator(&self) -> Result<bool> {
        Ok(self
            .first("SELECT EXISTS (SELECT 1 FROM authenticator)", args![])?
            .unwrap_or(false))
    }

    /// Puts `row` as the only authenticator, in one transaction.
    pub fn put_authenticator(&mut self, row: &SealedRow, now: i64) -> Result<()> {
        let tx = self.conn.begin()?;
        tx.exec("DELETE FROM authenticator WHERE id <> ?1", args![&row.id])?;
        tx.exec(
            "INSERT INTO authenticator (id, sealed, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed",
            args![row.id, row.sealed, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Removes the authenticator; true if one was enrolled.
    pub fn delete_authenticator(&mut self) -> Result<bool> {
        Ok(self.conn.exec("DELETE FROM authenticator", args![])? > 0)
    }

    /// Deletes an app key and the rules naming it, in one transaction.
    pub fn delete_app_key(&mut self, id: &str, rules: &[&str]) -> Result<()> {
        let tx = self.conn.begin()?;
        tx.exec("DELETE FROM app_keys WHERE id = ?1", args![id])?;
        for rule in rules {
            tx.exec("DELETE FROM rules WHERE id = ?1", args![rule])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces a credential's sealed configuration.
    pub fn update_credential_config(&mut self, id: &str, config: &[u8]) -> Result<()> {
        self.conn.exec(
            "UPDATE credentials SET config = ?2 WHERE id = ?1",
            args![id, config],
        )?;
        Ok(())
    }

    /// Every sealed field in the vault, for `rekey`.
    pub fn sealed_fields(&self) -> Result<Vec<SealedField>> {
        let mut fields = Vec::new();
        for p in self.providers()? {
            fields.push(SealedField {
                table: "providers",
                row_id: p.id,
                field: "config",
                blob: p.config,
            });
        }
        for c in self.credentials()? {
            fields.push(SealedField {
                table: "credentials",
                row_id: c.id.clone(),
                field: "config",
                blob: c.config,
            });
            if let Some(secret) = c.client_secret {
                fields.push(SealedField {
                    table: "credentials",
                    row_id: c.id.clone(),
                    field: "client_secret",
                    blob: secret,
                });
            }
            if let Some(previous) = c.previous_secret {
                fields.push(SealedField {
                    table: "credentials",
                    row_id: c.id,
                    field: "previous_secret",
                    blob: previous,
                });
            }
        }
        for t in self.tokens()? {
            fields.push(SealedField {
                table: "tokens",
                row_id: t.id,
                field: "token",
                blob: t.token,
            });
        }
        for r in self.rules()? {
            fields.push(SealedField {
                table: "rules",
                row_id: r.id,
                field: "sealed",
                blob: r.sealed,
            });
        }
        for k in self.app_keys()? {
            fields.push(SealedField {
                table: "app_keys",
                row_id: k.id,
                field: "sealed",
                blob: k.sealed,
            });
        }
        for r in self.git_routes()? {
            fields.push(SealedField {
                table: "git_routes",
                row_id: r.id,
                field: "sealed",
                blob: r.sealed,
            });
        }
        for k in self.all_credential_keys()? {
            fields.push(SealedField {
                table: "credential_keys",
                row_id: k.id,
                field: "sealed",
                blob: k.sealed,
            });
        }
        if let Some(a) = self.authenticator()? {
            fields.push(SealedField {
                table: "authenticator",
                row_id: a.id,
                field: "sealed",
                blob: a.sealed,
            });
        }
        for g in self.grants()? {
            fields.push(SealedField {
                table: "grants",
                row_id: g.id,
                field: "sealed",
                blob: g.sealed,
            });
        }
        Ok(fields)
    }

    /// Writes re-sealed fields and rewrapped slots, and whatever `audit`
    /// rewrites of the audit log (its chain under the new key), in one
    /// transaction: after a crash the vault is entirely under the old key
    /// or the new one.
    pub fn rekey<E: From<StoreError>>(
        &mut self,
        fields: &[SealedField],
        slots: &[RewrappedSlot],
        audit: impl FnOnce(&mut AuditTx<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut audit_tx = AuditTx::begin(&self.conn)?;
        audit(&mut audit_tx)?;
        let tx = audit_tx.tx;
        for f in fields {
            // Table and column names come from `sealed_fields`, never from input.
            let sql = format!("UPDATE {} SET {} = ?2 WHERE id = ?1", f.table, f.field);
            tx.exec(&sql, args![f.row_id, f.blob])?;
        }
        for slot in slots {
            match &slot.params {
                Some(p) => tx.exec(
                    "UPDATE key_slots SET params = ?2, wrapped_dek = ?3 WHERE id = ?1",
                    args![slot.id, p, slot.wrapped_dek],
                )?,
                None => tx.exec(
                    "UPDATE key_slots SET wrapped_dek = ?2 WHERE id = ?1",
                    args![slot.id, slot.wrapped_dek],
                )?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    /// A store over one pooled connection of a shared vault (no
    /// migrations: the vault's own store ran them).
    pub fn over(pg: postgres::Pg) -> Store {
        Store {
            conn: Conn::Postgres(pg),
        }
    }

    /// The pooled connection back (see [`Store::over`]).
    pub fn into_pg(self) -> Option<postgres::Pg> {
        match self.conn {
            Conn::Postgres(pg) => Some(pg),
            Conn::Sqlite(_) => None,
        }
    }

    /// Opens a transaction that holds the fleet's lock on `credential_id`
    /// (a PostgreSQL advisory lock: released by the commit or rollback,
    /// or by the database when this daemon's connection dies), waiting at
    /// most `wait` for the daemon that holds it now.
    pub fn begin_fleet_lock(&self, credential_id: &str, wait: std::time::Duration) -> Result<()> {
        let Conn::Postgres(pg) = &self.conn else {
            return Ok(());
        };
        pg.begin()?;
        let locked = self
            .conn
            .batch(&format!("SET LOCAL lock_timeout = {}", wait.as_millis()))
            .and_then(|()| {
                self.conn.exec(
                    "SELECT pg_advisory_xact_lock(?1)",
                    args![postgres::lock_key(credential_id)],
                )
            });
        if let Err(e) = locked {
            pg.rollback();
            return Err(e);
        }
        Ok(())
    }

    /// Tells the fleet's other daemons, at commit, that `payload` changed.
    pub fn notify(&self, payload: &str) -> Result<()> {
        self.conn.exec(
            "SELECT pg_notify(?1, ?2)",
            args![postgres::CHANNEL, payload],
        )?;
        Ok(())
    }

    /// Ends the transaction [`Store::begin_fleet_lock`] opened.
    pub fn end_fleet_lock(&self, commit: bool) -> Result<()> {
        match &self.conn {
            Conn::Postgres(pg) if commit => pg.commit(),
            Conn::Postgres(pg) => {
                pg.rollback();
                Ok(())
            }
            Conn::Sqlite(_) => Ok(()),
        }
    }

    /// Starts a transaction over the audit log (see [`AuditTx`]).
    pub fn audit_tx(&mut self) -> Result<AuditTx<'_>> {
        AuditTx::begin(&self.conn)
    }
}

#[cfg(test)]
impl Store {
    /// Raw access for tests that tamper with the file.
    pub fn conn_for_tests(&self) -> &rusqlite::Connection {
        match &self.conn {
            Conn::Sqlite(c) => c,
            Conn::Postgres(_) => panic!("a SQLite vault"),
        }
    }
}

/// A `tokens` row as its query selects it (id, credential, scopes, token).
fn token_row(mut r: Row) -> Result<TokenRow> {
    Ok(TokenRow {
        id: r.take(0)?,
        credential_id: r.take(1)?,
        scope_key: r.take(2)?,
        token: r.take(3)?,
    })
}

/// A `grants` row as its query selects it (id, credential, sealed).
fn grant_row(mut r: Row) -> Result<GrantRow> {
    Ok(GrantRow {
        id: r.take(0)?,
        credential_id: r.take(1)?,
        sealed: r.take(2)?,
    })
}

fn insert_slot(tx: &Tx<'_>, slot: &SlotRow) -> Result<()> {
    tx.exec(
        "INSERT INTO key_slots (id, kind, params, wrapped_dek, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![slot.id, slot.kind, slot.params, slot.wrapped_dek, slot.created_at],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vault.db");
        let store = Store::open_file(&path, true).unwrap();
        assert_eq!(store.meta("vault_id").unwrap(), None);
        drop(store);
        let store = Store::open_file(&path, false).unwrap();
        let version: u32 = store
            .conn_for_tests()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as u32);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let journal: String = store
            .conn_for_tests()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let store = Store::open_file(&path, true).unwrap();
        store
            .conn_for_tests()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(store);
        assert!(matches!(
            Store::open_file(&path, false),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    /// The writer runs these on every batch and `audit.list` on every
    /// page: with a million rows, a scan would hold the vault mutex for
    /// a tenth of a second each time.
    #[test]
    fn audit_queries_search_the_primary_key_and_never_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_file(&dir.path().join("v.db"), true).unwrap();
        let plan = |sql: &str| -> Vec<String> {
            let mut stmt = store
                .conn_for_tests()
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let params = vec![1i64; stmt.parameter_count()];
            let steps = stmt
                .query_map(rusqlite::params_from_iter(params), |r| {
                    r.get::<_, String>(3)
                })
                .unwrap()
                .map(|step| step.unwrap())
                .collect();
            steps
        };
        for sql in [
            AUDIT_ROWS_SQL,
            AUDIT_BOUNDS_SQL,
            AUDIT_LAST_AT_MOST_SQL,
            AUDIT_PAGE_SQL,
        ] {
            let steps = plan(sql);
            assert!(
                steps.iter().any(|s| s.starts_with("SEARCH audit")),
                "{sql}: {steps:?}"
            );
            assert!(
                !steps.iter().any(|s| s.starts_with("SCAN audit")),
                "{sql}: {steps:?}"
            );
        }
        // The one that would, for contrast (and so the test can fail).
        let steps = plan("SELECT min(seq), max(seq) FROM audit");
        assert!(
            steps.iter().any(|s| s.starts_with("SCAN audit")),
            "{steps:?}"
        );
    }

    /// A fresh store of each engine there is: SQLite always, PostgreSQL
    /// when the tests' server is configured (else a logged skip).
    fn engines() -> Vec<(Store, Box<dyn std::any::Any>)> {
        let dir = tempfile::tempdir().unwrap();
        let mut stores: Vec<(Store, Box<dyn std::any::Any>)> = vec![(
            Store::open_file(&dir.path().join("v.db"), true).unwrap(),
            Box::new(dir),
        )];
        if let Some(db) = postgres::testdb::fresh() {
            let store = Store::open(&Location::Postgres(Arc::clone(&db.target)), true).unwrap();
            stores.push((store, Box::new(db)));
        }
        stores
    }

    #[test]
    fn audit_seqs_are_never_reused_and_reads_are_ranges() {
        for (store, _keep) in engines() {
            audit_seqs_on(store);
        }
    }

    fn audit_seqs_on(mut store: Store) {
        assert_eq!(store.audit_bounds().unwrap(), None);
        assert_eq!(store.audit_next_seq().unwrap(), 1);
        let mut tx = store.audit_tx().unwrap();
        for i in 0..5 {
            let row = AuditRow {
                at: i,
                event: format!("e{i}"),
                ..AuditRow::default()
            };
            assert_eq!(tx.insert(&row).unwrap(), i + 1);
        }
        tx.set_mac(2, &[9; 32], true).unwrap();
        tx.commit().unwrap();
        assert_eq!(store.audit_bounds().unwrap(), Some((1, 5)));
        let two = store.audit_row(2).unwrap().unwrap();
        assert_eq!((two.mac, two.chained_late), (Some(vec![9; 32]), true));
        assert!(store.audit_any_mac().unwrap());
        let range: Vec<i64> = store
            .audit_rows(2, 4, 2)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(range, [2, 3]);
        // The tail deleted: its seqs are not given again.
        let mut tx = store.audit_tx().unwrap();
        assert_eq!(tx.delete_range(4, 5).unwrap(), 2);
        tx.commit().unwrap();
        assert_eq!(store.audit_next_seq().unwrap(), 6);
        assert_eq!(store.audit_last_at_most(5).unwrap(), Some(3));
        let mut tx = store.audit_tx().unwrap();
        assert_eq!(tx.insert(&AuditRow::default()).unwrap(), 6);
        tx.put_head(&AuditHeadRow {
            id: "a".into(),
            sealed: vec![1],
        })
        .unwrap();
        tx.put_head(&AuditHeadRow {
            id: "b".into(),
            sealed: vec![2],
        })
        .unwrap();
        tx.commit().unwrap();
        let heads = store.audit_heads().unwrap();
        assert_eq!(heads.len(), 1, "one head, replaced");
        assert_eq!(
            (heads[0].id.as_str(), heads[0].sealed.as_slice()),
            ("b", &[2u8][..])
        );
    }

    #[test]
    fn replacing_a_token_gives_the_row_a_new_id() {
        for (store, _keep) in engines() {
            replacing_a_token_on(store);
        }
    }

    fn replacing_a_token_on(mut store: Store) {
        store
            .insert_provider(
                &ProviderRow {
                    id: "p".into(),
                    name: "prov".into(),
                    config: vec![1],
                },
                0,
            )
            .unwrap();
        store
            .insert_credential(
                &CredentialRow {
                    id: "c".into(),
                    name: "cred".into(),
                    provider_id: "p".into(),
                    config: vec![2],
                    client_secret: Some(vec![3]),
                    state: "ready".into(),
                    secret_set_at: Some(0),
                    secret_worked: false,
                    previous_secret: None,
                    previous_secret_set_at: None,
                },
                &[],
                0,
            )
            .unwrap();
        for id in ["t1", "t2"] {
            let row = TokenRow {
                id: id.into(),
                credential_id: "c".into(),
                scope_key: "a".into(),
                token: vec![4],
            };
            store.replace_token(&row, Some(10)).unwrap();
        }
        let tokens = store.tokens().unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].id, "t2");
        assert_eq!(store.sealed_fields().unwrap().len(), 4);
        store.delete_credential("c").unwrap();
        assert!(
            store.tokens().unwrap().is_empty(),
            "tokens go with their credential"
        );
    }

    /// The one schema description gives both engines the same tables and
    /// columns (names, order, nullability, and SQLite's type as PostgreSQL's).
    #[test]
    fn both_engines_have_the_same_schema() {
        let Some(db) = postgres::testdb::fresh() else {
            return;
        };
        let pg = Store::open(&Location::Postgres(Arc::clone(&db.target)), true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let lite = Store::open_file(&dir.path().join("v.db"), true).unwrap();
        let tables: Vec<String> = lite
            .all(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
                |mut r| r.take(0),
            )
            .unwrap();
        assert!(tables.len() >= 12, "{tables:?}");
        for table in &tables {
            let lite_cols: Vec<(String, String, bool)> = lite
                .conn
                .query(&format!("SELECT name, type, \"notnull\" OR pk FROM pragma_table_info('{table}') ORDER BY cid"), args![])
                .unwrap()
                .into_iter()
                .map(|mut r| {
                    let ty: String = r.take(1).unwrap();
                    let ty = match ty.as_str() {
                        "INTEGER" => "bigint",
                        "BLOB" => "bytea",
                        "TEXT" => "text",
                        other => panic!("{table}: a column of type {other}"),
                    };
                    (r.take(0).unwrap(), ty.to_owned(), r.take(2).unwrap())
                })
                .collect();
            let pg_cols: Vec<(String, String, bool)> = pg
                .conn
                .query(
                    "SELECT column_name::text, data_type::text, is_nullable::text = 'NO' FROM information_schema.columns
                     WHERE table_schema = 'public' AND table_name = ?1 ORDER BY ordinal_position",
                    args![table],
                )
                .unwrap()
                .into_iter()
                .map(|mut r| (r.take(0).unwrap(), r.take(1).unwrap(), r.take(2).unwrap()))
                .collect();
            assert_eq!(lite_cols, pg_cols, "table {table}");
        }
    }

    /// Daemons of a fleet starting at once: one migrates, the others wait
    /// for it and find the schema current; a newer schema is refused.
    #[test]
    fn postgres_migrates_once_and_refuses_a_newer_schema() {
        let Some(db) = postgres::testdb::fresh() else {
            return;
        };
        let location = Location::Postgres(Arc::clone(&db.target));
        let opened: Vec<Result<Store>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| Store::open(&location, true)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for store in &opened {
            let store = store.as_ref().expect("every daemon opens the vault");
            let version: i64 = store
                .first("SELECT version FROM latchkey_schema", args![])
                .unwrap()
                .unwrap();
            assert_eq!(version, MIGRATIONS.len() as i64);
        }
        let store = opened.into_iter().next().unwrap().unwrap();
        store
            .conn
            .exec("UPDATE latchkey_schema SET version = 99", args![])
            .unwrap();
        match Store::open(&location, false) {
            Err(e @ StoreError::TooNew { found: 99, .. }) => {
                assert!(e.to_string().contains("upgrade latchkey"), "{e}");
                assert!(
                    e.to_string().contains("postgres://latchkey@localhost"),
                    "{e}"
                );
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a newer schema was opened"),
        }
    }

    /// Audit writers on several connections (daemons) take turns: every
    /// seq is given once, with no gap, and each batch is contiguous.
    #[test]
    fn concurrent_audit_writers_on_postgres_take_turns() {
        let Some(db) = postgres::testdb::fresh() else {
            return;
        };
        let location = Location::Postgres(Arc::clone(&db.target));
        let seqs: Vec<Vec<i64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|w| {
                    let location = &location;
                    s.spawn(move || {
                        let mut store = Store::open(location, true).unwrap();
                        let mut mine = Vec::new();
                        for batch in 0..10 {
                            let mut tx = store.audit_tx().unwrap();
                            let mut got = Vec::new();
                            for i in 0..5 {
                                got.push(
                                    tx.insert(&AuditRow {
                                        at: batch * 10 + i,
                                        event: format!("w{w}"),
                                        ..AuditRow::default()
                                    })
                                    .unwrap(),
                                );
                            }
                            tx.commit().unwrap();
                            assert!(got.windows(2).all(|p| p[1] == p[0] + 1), "{got:?}");
                            mine.extend(got);
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<i64> = seqs.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (1..=150).collect::<Vec<i64>>());
        let store = Store::open(&location, false).unwrap();
        assert_eq!(store.audit_bounds().unwrap(), Some((1, 150)));
        assert_eq!(store.audit_next_seq().unwrap(), 151);
    }

    /// What the database says reaches the caller naming the database,
    /// never the password; a wrong password is said at open.
    #[test]
    fn postgres_errors_name_the_database_not_the_password() {
        let Some((url, _)) = postgres::testdb::url("postgres") else {
            return;
        };
        let target = PgTarget::parse(&url, Some("wrong-canary-pw".to_owned().into())).unwrap();
        let err = Store::open(&Location::Postgres(Arc::new(target)), false)
            .err()
            .expect("a wrong password is refused");
        let text = err.to_string();
        assert!(
            text.contains("the vault database postgres://latchkey@localhost"),
            "{text}"
        );
        assert!(text.contains("password authentication failed"), "{text}");
        assert!(!text.contains("wrong-canary-pw"), "{text}");
    }
}
