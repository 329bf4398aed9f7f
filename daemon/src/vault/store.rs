//! The only module that contains SQL: the vault file (SQLite, WAL, 0600),
//! its numbered migrations, and typed reads and writes of rows whose secret
//! parts are already sealed blobs. It never sees a key or a plaintext secret.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::path::{Path, PathBuf};

/// Numbered migrations, applied in order; `PRAGMA user_version` records how
/// many ran. Append only: never edit a released migration.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_grants.sql"),
    include_str!("../../migrations/0003_callers.sql"),
    include_str!("../../migrations/0004_audit_chain.sql"),
    include_str!("../../migrations/0005_policy.sql"),
    include_str!("../../migrations/0006_totp.sql"),
    include_str!("../../migrations/0007_client_secret_rotation.sql"),
    include_str!("../../migrations/0008_git_routes.sql"),
    include_str!("../../migrations/0009_credential_keys.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("vault database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot prepare the vault file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the vault file {} was written by a newer latchkey (schema {found}, this one knows {known}); upgrade latchkey", path.display())]
    TooNew {
        path: PathBuf,
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
    /// Ignored when inserting: SQLite gives it (never reused: AUTOINCREMENT).
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

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get(0)?,
        at: r.get(1)?,
        event: r.get(2)?,
        credential: r.get(3)?,
        peer_pid: r.get(4)?,
        app: r.get(5)?,
        app_key: r.get(6)?,
        outcome: r.get(7)?,
        detail: r.get(8)?,
        sealed_id: r.get(9)?,
        sealed_detail: r.get(10)?,
        chained_late: r.get(11)?,
        mac: r.get(12)?,
    })
}

/// The audit log's reads, on the store's connection or inside an
/// [`AuditTx`]. Every one is bounded: a range of seq (the primary key),
/// a limit, or a single row.
pub trait AuditReads {
    #[doc(hidden)]
    fn conn(&self) -> &Connection;

    /// Rows with `from <= seq <= to`, in order, at most `limit`.
    fn audit_rows(&self, from: i64, to: i64, limit: usize) -> Result<Vec<AuditRow>> {
        let mut stmt = self.conn().prepare_cached(AUDIT_ROWS_SQL)?;
        let rows = stmt.query_map(params![from, to, limit as i64], audit_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The row `seq`, if it exists.
    fn audit_row(&self, seq: i64) -> Result<Option<AuditRow>> {
        Ok(self.audit_rows(seq, seq, 1)?.pop())
    }

    /// The lowest and highest seq present, if any row is. Two look-ups in
    /// the primary key (one `min(seq), max(seq)` would scan the table).
    fn audit_bounds(&self) -> Result<Option<(i64, i64)>> {
        let (min, max): (Option<i64>, Option<i64>) =
            self.conn()
                .query_row(AUDIT_BOUNDS_SQL, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(min.zip(max))
    }

    /// The highest seq present at or below `seq`.
    fn audit_last_at_most(&self, seq: i64) -> Result<Option<i64>> {
        Ok(self
            .conn()
            .query_row(AUDIT_LAST_AT_MOST_SQL, [seq], |r| r.get(0))?)
    }

    /// The seq SQLite gives the next row: one past the highest ever given.
    fn audit_next_seq(&self) -> Result<i64> {
        let given: Option<i64> = self
            .conn()
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'audit'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(given.unwrap_or(0) + 1)
    }

    /// Whether any row carries a MAC (then a chain was started, and a
    /// missing head means it was removed). Read once, when a chain would
    /// start.
    fn audit_any_mac(&self) -> Result<bool> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM audit WHERE mac IS NOT NULL LIMIT 1",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Every row of `audit_head` (one, unless someone edited the file).
    fn audit_heads(&self) -> Result<Vec<AuditHeadRow>> {
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT id, sealed FROM audit_head")?;
        let rows = stmt.query_map([], |r| {
            Ok(AuditHeadRow {
                id: r.get(0)?,
                sealed: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
        let mut stmt = self.conn().prepare_cached(AUDIT_PAGE_SQL)?;
        let rows = stmt.query_map(
            params![
                after,
                through,
                filter.since,
                filter.credential,
                filter.app,
                limit as i64
            ],
            audit_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl AuditReads for Store {
    fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// One transaction over the audit log: the writer's batch (rows chained
/// late, new rows, pruning) and the new sealed head, committed together.
pub struct AuditTx<'a> {
    tx: Transaction<'a>,
}

impl AuditReads for AuditTx<'_> {
    fn conn(&self) -> &Connection {
        &self.tx
    }
}

impl AuditTx<'_> {
    /// Inserts a row (its `seq` is ignored) and returns the seq it got.
    pub fn insert(&mut self, row: &AuditRow) -> Result<i64> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO audit (at, event, credential, peer_pid, app, app_key, outcome, detail, sealed_id, sealed_detail, chained_late, mac)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        stmt.execute(params![
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
        ])?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Sets a row's MAC (and whether it was chained late).
    pub fn set_mac(&mut self, seq: i64, mac: &[u8], chained_late: bool) -> Result<()> {
        let mut stmt = self
            .tx
            .prepare_cached("UPDATE audit SET mac = ?2, chained_late = ?3 WHERE seq = ?1")?;
        stmt.execute(params![seq, mac, chained_late])?;
        Ok(())
    }

    /// Re-seals a row's sealed detail (rekey).
    pub fn set_sealed_detail(&mut self, seq: i64, blob: &[u8]) -> Result<()> {
        let mut stmt = self
            .tx
            .prepare_cached("UPDATE audit SET sealed_detail = ?2 WHERE seq = ?1")?;
        stmt.execute(params![seq, blob])?;
        Ok(())
    }

    /// Deletes the rows `from <= seq <= to` (retention).
    pub fn delete_range(&mut self, from: i64, to: i64) -> Result<u64> {
        let n = self.tx.execute(
            "DELETE FROM audit WHERE seq >= ?1 AND seq <= ?2",
            params![from, to],
        )?;
        Ok(n as u64)
    }

    /// Replaces the head with this one.
    pub fn put_head(&mut self, head: &AuditHeadRow) -> Result<()> {
        self.tx.execute("DELETE FROM audit_head", [])?;
        self.tx.execute(
            "INSERT INTO audit_head (id, sealed) VALUES (?1, ?2)",
            params![head.id, head.sealed],
        )?;
        Ok(())
    }

    pub fn commit(self) -> Result<()> {
        Ok(self.tx.commit()?)
    }
}

/// A row of `rules`, `app_keys` or `git_routes`: an id and its sealed document.
pub struct SealedRow {
    pub id: String,
    pub sealed: Vec<u8>,
}

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Every row `sql` selects, each mapped by `row`.
    fn all<T>(
        &self,
        sql: &str,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Opens (creating when `create`) the vault file with owner-only
    /// permissions, WAL and full fsync, and runs pending migrations.
    pub fn open(path: &Path, create: bool) -> Result<Store> {
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
        let conn = Connection::open_with_flags(path, flags)?;
        // synchronous=FULL: a committed write (a rotated refresh token above
        // all) survives power loss, not just a process crash.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA secure_delete = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        let mut store = Store { conn };
        store.migrate(path)?;
        Ok(store)
    }

    fn migrate(&mut self, path: &Path) -> Result<()> {
        let current: u32 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as u32;
        if current > known {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found: current,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as u32 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Sets (`Some`) or removes (`None`) a plaintext `meta` row.
    pub fn set_meta(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(value) => self.conn.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )?,
            None => self
                .conn
                .execute("DELETE FROM meta WHERE key = ?1", [key])?,
        };
        Ok(())
    }

    /// Writes the vault id and the first slots in one transaction.
    pub fn initialize(&mut self, vault_id: &str, slots: &[SlotRow]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('vault_id', ?1), ('format', '1')",
            [vault_id],
        )?;
        for slot in slots {
            insert_slot(&tx, slot)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn slots(&self) -> Result<Vec<SlotRow>> {
        self.all("SELECT id, kind, params, wrapped_dek, created_at FROM key_slots ORDER BY created_at, id", |r| {
            Ok(SlotRow {
                id: r.get(0)?,
                kind: r.get(1)?,
                params: r.get(2)?,
                wrapped_dek: r.get(3)?,
                created_at: r.get(4)?,
            })
        })
    }

    /// Adds one slot (a key-file slot, to an existing vault).
    pub fn add_slot(&mut self, slot: &SlotRow) -> Result<()> {
        let tx = self.conn.transaction()?;
        insert_slot(&tx, slot)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes one slot.
    pub fn remove_slot(&mut self, id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM key_slots WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Replaces one slot's parameters and wrapped key (passphrase change).
    pub fn update_slot(&mut self, id: &str, params: &str, wrapped_dek: &[u8]) -> Result<()> {
        self.conn.execute(
            "UPDATE key_slots SET params = ?2, wrapped_dek = ?3 WHERE id = ?1",
            params![id, params, wrapped_dek],
        )?;
        Ok(())
    }

    pub fn providers(&self) -> Result<Vec<ProviderRow>> {
        self.all(
            "SELECT id, name, config FROM providers ORDER BY name",
            |r| {
                Ok(ProviderRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    config: r.get(2)?,
                })
            },
        )
    }

    pub fn insert_provider(&mut self, row: &ProviderRow, now: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO providers (id, name, config, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![row.id, row.name, row.config, now],
        )?;
        Ok(())
    }

    pub fn delete_provider(&mut self, id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM providers WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn credentials(&self) -> Result<Vec<CredentialRow>> {
        self.all(
            "SELECT id, name, provider_id, config, client_secret, state, secret_set_at,
                    secret_worked, previous_secret, previous_secret_set_at
             FROM credentials ORDER BY name",
            |r| {
                Ok(CredentialRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    provider_id: r.get(2)?,
                    config: r.get(3)?,
                    client_secret: r.get(4)?,
                    state: r.get(5)?,
                    secret_set_at: r.get(6)?,
                    secret_worked: r.get(7)?,
                    previous_secret: r.get(8)?,
                    previous_secret_set_at: r.get(9)?,
                })
            },
        )
    }

    /// The sealed client secret of one credential, read when a token request needs it.
    pub fn client_secret(&self, credential_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT client_secret FROM credentials WHERE id = ?1",
                [credential_id],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// The sealed previous client secret of one credential, if one is kept.
    pub fn previous_secret(&self, credential_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT previous_secret FROM credentials WHERE id = ?1",
                [credential_id],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Stores a new client secret and what is kept of the previous one.
    pub fn rotate_secret(&mut self, rotation: &SecretRotation<'_>) -> Result<()> {
        let (previous, previous_set_at) = match &rotation.previous {
            Some((blob, at)) => (Some(blob.as_slice()), *at),
            None => (None, None),
        };
        self.conn.execute(
            "UPDATE credentials SET client_secret = ?2, secret_set_at = ?3, secret_worked = 0,
                    previous_secret = ?4, previous_secret_set_at = ?5
             WHERE id = ?1",
            params![
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
        self.conn.execute(
            "UPDATE credentials SET secret_worked = 1, previous_secret = NULL,
                    previous_secret_set_at = NULL
             WHERE id = ?1 AND secret_set_at IS ?2",
            params![credential_id, set_at],
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
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO credentials (id, name, provider_id, config, client_secret, state, created_at,
                                      secret_set_at, secret_worked, previous_secret, previous_secret_set_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
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
            tx.execute(
                "INSERT INTO credential_keys (id, credential_id, sealed, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![key.id, row.id, key.sealed, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes a credential and (by cascade) its tokens.
    pub fn delete_credential(&mut self, id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM credentials WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.all(
            "SELECT id, credential_id, scope_key, token FROM tokens",
            |r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    credential_id: r.get(1)?,
                    scope_key: r.get(2)?,
                    token: r.get(3)?,
                })
            },
        )
    }

    /// Replaces the stored token of (credential, scope set) in one
    /// transaction: the old row goes, a row with a fresh id comes.
    pub fn replace_token(&mut self, row: &TokenRow, expires_at: Option<i64>) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM tokens WHERE credential_id = ?1 AND scope_key = ?2",
            params![row.credential_id, row.scope_key],
        )?;
        tx.execute(
            "INSERT INTO tokens (id, credential_id, scope_key, token, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.id, row.credential_id, row.scope_key, row.token, expires_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn grants(&self) -> Result<Vec<GrantRow>> {
        self.all("SELECT id, credential_id, sealed FROM grants", |r| {
            Ok(GrantRow {
                id: r.get(0)?,
                credential_id: r.get(1)?,
                sealed: r.get(2)?,
            })
        })
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
        let tx = self.conn.transaction()?;
        if let Some(grant) = grant {
            tx.execute(
                "DELETE FROM grants WHERE credential_id = ?1",
                [&grant.credential_id],
            )?;
            tx.execute(
                "INSERT INTO grants (id, credential_id, sealed, updated_at) VALUES (?1, ?2, ?3, ?4)",
                params![grant.id, grant.credential_id, grant.sealed, now],
            )?;
        }
        if let Some((row, expires_at)) = token {
            tx.execute(
                "DELETE FROM tokens WHERE credential_id = ?1 AND scope_key = ?2",
                params![row.credential_id, row.scope_key],
            )?;
            tx.execute(
                "INSERT INTO tokens (id, credential_id, scope_key, token, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.id, row.credential_id, row.scope_key, row.token, expires_at],
            )?;
        }
        tx.execute(
            "UPDATE credentials SET state = ?2 WHERE id = ?1",
            params![credential_id, state],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets a credential's grant and tokens (revoked, or the provider
    /// refused the refresh token) and records its new state.
    pub fn drop_grant(&mut self, credential_id: &str, state: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM grants WHERE credential_id = ?1",
            [credential_id],
        )?;
        tx.execute(
            "DELETE FROM tokens WHERE credential_id = ?1",
            [credential_id],
        )?;
        tx.execute(
            "UPDATE credentials SET state = ?2 WHERE id = ?1",
            params![credential_id, state],
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
            |r| {
                Ok(SealedRow {
                    id: r.get(0)?,
                    sealed: r.get(1)?,
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
        let tx = self.conn.transaction()?;
        if let Some(old) = replaces {
            tx.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [old])?;
        }
        tx.execute(
            &format!("INSERT INTO {table} (id, credential_id, sealed, created_at) VALUES (?1, ?2, ?3, ?4)"),
            params![row.id, credential_id, row.sealed, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes rules by id; true if any existed.
    pub fn delete_rules(&mut self, ids: &[&str]) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let mut any = false;
        for id in ids {
            any |= tx.execute("DELETE FROM rules WHERE id = ?1", [id])? > 0;
        }
        tx.commit()?;
        Ok(any)
    }

    pub fn app_keys(&self) -> Result<Vec<SealedRow>> {
        self.all(
            "SELECT id, sealed FROM app_keys ORDER BY created_at, id",
            |r| {
                Ok(SealedRow {
                    id: r.get(0)?,
                    sealed: r.get(1)?,
                })
            },
        )
    }

    pub fn insert_app_key(&mut self, row: &SealedRow, now: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO app_keys (id, sealed, created_at) VALUES (?1, ?2, ?3)",
            params![row.id, row.sealed, now],
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
            .execute("DELETE FROM git_routes WHERE id = ?1", [id])?
            > 0)
    }

    /// One credential's keys (`credential_keys`), oldest first.
    pub fn credential_keys(&self, credential_id: &str) -> Result<Vec<SealedRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, sealed FROM credential_keys WHERE credential_id = ?1 ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([credential_id], |r| {
            Ok(SealedRow {
                id: r.get(0)?,
                sealed: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
        let tx = self.conn.transaction()?;
        for id in retire {
            tx.execute(
                "DELETE FROM credential_keys WHERE id = ?1 AND credential_id = ?2",
                params![id, credential_id],
            )?;
        }
        if let Some(row) = add {
            tx.execute(
                "INSERT INTO credential_keys (id, credential_id, sealed, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, credential_id, row.sealed, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The authenticator's row, if one is enrolled.
    pub fn authenticator(&self) -> Result<Option<SealedRow>> {
        Ok(self
            .all("SELECT id, sealed FROM authenticator", |r| {
                Ok(SealedRow {
                    id: r.get(0)?,
                    sealed: r.get(1)?,
                })
            })?
            .into_iter()
            .next())
    }

    /// Whether an authenticator is enrolled (readable while locked).
    pub fn has_authenticator(&self) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM authenticator)", [], |r| {
                r.get(0)
            })?)
    }

    /// Puts `row` as the only authenticator, in one transaction.
    pub fn put_authenticator(&mut self, row: &SealedRow, now: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM authenticator WHERE id <> ?1", [&row.id])?;
        tx.execute(
            "INSERT INTO authenticator (id, sealed, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed",
            params![row.id, row.sealed, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Removes the authenticator; true if one was enrolled.
    pub fn delete_authenticator(&mut self) -> Result<bool> {
        Ok(self.conn.execute("DELETE FROM authenticator", [])? > 0)
    }

    /// Deletes an app key and the rules naming it, in one transaction.
    pub fn delete_app_key(&mut self, id: &str, rules: &[&str]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM app_keys WHERE id = ?1", [id])?;
        for rule in rules {
            tx.execute("DELETE FROM rules WHERE id = ?1", [rule])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces a credential's sealed configuration.
    pub fn update_credential_config(&mut self, id: &str, config: &[u8]) -> Result<()> {
        self.conn.execute(
            "UPDATE credentials SET config = ?2 WHERE id = ?1",
            params![id, config],
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
        let mut audit_tx = AuditTx {
            tx: self.conn.transaction().map_err(StoreError::from)?,
        };
        audit(&mut audit_tx)?;
        let tx = audit_tx.tx;
        let sql_err = |e: rusqlite::Error| E::from(StoreError::from(e));
        for f in fields {
            // Table and column names come from `sealed_fields`, never from input.
            let sql = format!("UPDATE {} SET {} = ?2 WHERE id = ?1", f.table, f.field);
            tx.execute(&sql, params![f.row_id, f.blob])
                .map_err(sql_err)?;
        }
        for slot in slots {
            match &slot.params {
                Some(p) => tx.execute(
                    "UPDATE key_slots SET params = ?2, wrapped_dek = ?3 WHERE id = ?1",
                    params![slot.id, p, slot.wrapped_dek],
                ),
                None => tx.execute(
                    "UPDATE key_slots SET wrapped_dek = ?2 WHERE id = ?1",
                    params![slot.id, slot.wrapped_dek],
                ),
            }
            .map_err(sql_err)?;
        }
        tx.commit().map_err(sql_err)?;
        Ok(())
    }

    /// Starts a transaction over the audit log (see [`AuditTx`]).
    pub fn audit_tx(&mut self) -> Result<AuditTx<'_>> {
        Ok(AuditTx {
            tx: self.conn.transaction()?,
        })
    }
}

#[cfg(test)]
impl Store {
    /// Raw access for tests that tamper with the file.
    pub fn conn_for_tests(&self) -> &Connection {
        &self.conn
    }
}

fn insert_slot(tx: &Transaction<'_>, slot: &SlotRow) -> Result<()> {
    tx.execute(
        "INSERT INTO key_slots (id, kind, params, wrapped_dek, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![slot.id, slot.kind, slot.params, slot.wrapped_dek, slot.created_at],
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
        let store = Store::open(&path, true).unwrap();
        assert_eq!(store.meta("vault_id").unwrap(), None);
        drop(store);
        let store = Store::open(&path, false).unwrap();
        let version: u32 = store
            .conn
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
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let store = Store::open(&path, true).unwrap();
        store.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        assert!(matches!(
            Store::open(&path, false),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    /// The writer runs these on every batch and `audit.list` on every
    /// page: with a million rows, a scan would hold the vault mutex for
    /// a tenth of a second each time.
    #[test]
    fn audit_queries_search_the_primary_key_and_never_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("v.db"), true).unwrap();
        let plan = |sql: &str| -> Vec<String> {
            let mut stmt = store
                .conn
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

    #[test]
    fn audit_seqs_are_never_reused_and_reads_are_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db"), true).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db"), true).unwrap();
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
}
