//! The PostgreSQL engine: a vault shared by several daemons (a fleet).
//!
//! The sync `postgres` client runs on threads of its own, never on the
//! async runtime's: each connection is a thread that owns one client and
//! runs the statements sent to it, so the store's callers (blocking
//! threads, or the runtime once at start) simply wait for the answer.
//! A lost connection is made again at the next statement, unless it was
//! lost inside a transaction: then every statement fails until the
//! transaction ends, so nothing of it runs on the new connection.
//!
//! TLS (rustls, webpki roots or the `sslrootcert` file the URL names) is
//! required to any host but loopback and a Unix socket, as for providers.

use super::engine::{Row, Value};
use super::{Result, StoreError};
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long connecting to the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a PostgreSQL vault is and how to reach it. Its `Debug` and
/// `Display` show the URL without a password.
pub struct PgTarget {
    config: postgres::Config,
    shown: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({})", self.shown)
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgTarget {
    /// Reads a `postgres://` URL. `password` is used when the URL has
    /// none. Errors name what to change; none repeats a password.
    pub fn parse(
        url: &str,
        password: Option<SecretString>,
    ) -> std::result::Result<PgTarget, String> {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| format!("the vault URL is not a valid postgres:// URL ({e})"))?;
        if !latchkey_client::is_database_url(url) {
            return Err("the vault URL must start with postgres:// or postgresql://".into());
        }
        // Our own query parameters (libpq's names), taken out before the
        // client reads the rest.
        let mut root_file = None;
        let mut ssl_mode = None;
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter_map(|(k, v)| match &*k {
                "sslrootcert" => {
                    root_file = Some(v.into_owned());
                    None
                }
                "sslmode" => {
                    ssl_mode = Some(v.into_owned());
                    None
                }
                _ => Some((k.into_owned(), v.into_owned())),
            })
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let mut config: postgres::Config = parsed
            .as_str()
            .parse()
            .map_err(|e| format!("the vault URL is not one PostgreSQL accepts: {e}"))?;
        if config.get_password().is_none() {
            if let Some(password) = &password {
                config.password(password.expose_secret());
            }
        }
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("latchkeyd");
        if config.get_hosts().is_empty() {
            return Err("the vault URL names no host: postgres://USER@HOST:PORT/DATABASE".into());
        }
        let local = config.get_hosts().iter().all(|h| match h {
            postgres::config::Host::Unix(_) => true,
            postgres::config::Host::Tcp(name) => is_loopback(name),
        });
        let over_unix = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, postgres::config::Host::Unix(_)));
        let want_tls = match ssl_mode.as_deref() {
            None | Some("prefer") | Some("allow") => !local,
            Some("disable") if local => false,
            Some("disable") => {
                return Err("TLS to the vault database is required except over loopback: remove sslmode=disable from the vault URL".into())
            }
            Some("require") | Some("verify-ca") | Some("verify-full") => !over_unix,
            Some(other) => {
                return Err(format!(
                    "the vault URL's sslmode={} is not one of disable, prefer, require, verify-ca, verify-full",
                    other.escape_debug()
                ))
            }
        };
        let tls = if want_tls {
            config.ssl_mode(postgres::config::SslMode::Require);
            Some(Arc::new(tls_config(root_file.as_deref())?))
        } else {
            config.ssl_mode(postgres::config::SslMode::Disable);
            None
        };
        let mut shown = parsed.clone();
        let _ = shown.set_password(None);
        shown.set_query(None);
        Ok(PgTarget {
            config,
            shown: shown.to_string(),
            tls,
        })
    }

    /// One new connection.
    fn connect(&self) -> Result<postgres::Client> {
        let connected = match &self.tls {
            Some(tls) => self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (**tls).clone(),
                )),
            None => self.config.connect(postgres::NoTls),
        };
        connected.map_err(|e| self.error(&e))
    }

    fn error(&self, e: &postgres::Error) -> StoreError {
        StoreError::Postgres {
            database: self.shown.clone(),
            message: describe(e),
        }
    }

    /// Opens the store's connection (its own thread), connecting at once
    /// so that a wrong URL or password is said at start.
    pub fn open(self: &Arc<PgTarget>) -> Result<Pg> {
        let pg = Pg::spawn(Arc::clone(self));
        pg.call(|s| s.client().map(|_| ()))?;
        Ok(pg)
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// rustls with ring (as reqwest), trusting webpki's roots or only the
/// certificates of `root_file`.
fn tls_config(root_file: Option<&str>) -> std::result::Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match root_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<_, _>>())
                .map_err(|e| format!("cannot read the vault URL's sslrootcert {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!(
                    "the vault URL's sslrootcert {path} holds no PEM certificate"
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!("the vault URL's sslrootcert {path} holds a certificate rustls refuses: {e}")
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for the vault database: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What went wrong, in words: the server's message (never its DETAIL,
/// which can quote values), or the client's.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// One connection, on its own thread.
pub struct Pg {
    target: Arc<PgTarget>,
    jobs: Mutex<mpsc::Sender<Job>>,
}

/// The connection thread's state.
struct Session {
    target: Arc<PgTarget>,
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
    /// Open transactions: the outer one, then savepoints.
    depth: usize,
    in_tx: bool,
    lost_in_tx: bool,
}

impl Session {
    fn client(&mut self) -> Result<&mut postgres::Client> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
            self.statements.clear();
            if self.in_tx {
                self.lost_in_tx = true;
            }
        }
        if self.lost_in_tx {
            return Err(StoreError::Postgres {
                database: self.target.shown.clone(),
                message:
                    "the connection was lost inside a transaction; nothing of it was committed"
                        .into(),
            });
        }
        if self.client.is_none() {
            self.client = Some(self.target.connect()?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let text = numbered_params(sql);
        let target = Arc::clone(&self.target);
        let stmt = self
            .client()?
            .prepare(&text)
            .map_err(|e| target.error(&e))?;
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    fn exec(&mut self, sql: &str, args: &[Value]) -> Result<u64> {
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        let target = Arc::clone(&self.target);
        self.client()?
            .execute(&stmt, &params)
            .map_err(|e| target.error(&e))
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        let target = Arc::clone(&self.target);
        let rows = self
            .client()?
            .query(&stmt, &params)
            .map_err(|e| target.error(&e))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| column(r, i))
                    .collect::<Result<Vec<_>>>()
                    .map(Row::new)
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        let target = Arc::clone(&self.target);
        self.client()?
            .batch_execute(sql)
            .map_err(|e| target.error(&e))
    }

    /// Whether a failed statement outside a transaction may be tried
    /// again on a new connection (the old one had closed).
    fn retryable(&self, e: &StoreError) -> bool {
        !self.in_tx
            && matches!(e, StoreError::Postgres { .. })
            && self.client.as_ref().is_none_or(|c| c.is_closed())
    }
}

/// Column `i` of a row, by its type (ours are BIGINT, TEXT and BYTEA;
/// `EXISTS` gives a boolean, `count` a BIGINT).
fn column(row: &postgres::Row, i: usize) -> Result<Value> {
    let bad = |_| StoreError::Column { index: i };
    let ty = row.columns()[i].type_();
    Ok(match *ty {
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Int(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Int(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Int(v.into())),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row
            .try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Text),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Blob),
        _ => return Err(StoreError::Column { index: i }),
    })
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(format!("an integer for a {ty} parameter").into()),
            },
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl Pg {
    fn spawn(target: Arc<PgTarget>) -> Pg {
        let (jobs, incoming) = mpsc::channel::<Job>();
        let mut session = Session {
            target: Arc::clone(&target),
            client: None,
            statements: HashMap::new(),
            depth: 0,
            in_tx: false,
            lost_in_tx: false,
        };
        std::thread::Builder::new()
            .name("latchkey-pg".into())
            .spawn(move || {
                for job in incoming {
                    job(&mut session);
                }
            })
            .expect("a thread for the database connection");
        Pg {
            target,
            jobs: Mutex::new(jobs),
        }
    }

    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let gone = || StoreError::Postgres {
            database: self.target.shown.clone(),
            message: "the connection's thread ended".into(),
        };
        let (reply, answer) = mpsc::sync_channel(1);
        crate::sync::lock(&self.jobs)
            .send(Box::new(move |s| {
                let _ = reply.send(f(s));
            }))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    pub fn exec(&self, sql: &str, args: Vec<Value>) -> Result<u64> {
        let sql = sql.to_owned();
        self.call(move |s| s.exec(&sql, &args))
    }

    pub fn query(&self, sql: &str, args: Vec<Value>) -> Result<Vec<Row>> {
        let sql = sql.to_owned();
        self.call(move |s| match s.query(&sql, &args) {
            Err(e) if s.retryable(&e) => s.query(&sql, &args),
            other => other,
        })
    }

    pub fn batch(&self, sql: &str) -> Result<()> {
        let sql = sql.to_owned();
        self.call(move |s| s.batch(&sql))
    }

    /// Starts a transaction, or a savepoint inside the open one (a store
    /// write inside a fleet lock's transaction).
    pub fn begin(&self) -> Result<()> {
        self.call(|s| {
            if s.depth == 0 {
                s.batch("BEGIN")?;
                s.in_tx = true;
            } else {
                s.batch(&format!("SAVEPOINT latchkey_{}", s.depth))?;
            }
            s.depth += 1;
            Ok(())
        })
    }

    pub fn commit(&self) -> Result<()> {
        self.call(|s| {
            s.depth = s.depth.saturating_sub(1);
            if s.depth > 0 {
                return s.batch(&format!("RELEASE SAVEPOINT latchkey_{}", s.depth));
            }
            let done = s.batch("COMMIT");
            if done.is_err() {
                let _ = s.client.as_mut().map(|c| c.batch_execute("ROLLBACK"));
            }
            s.in_tx = false;
            s.lost_in_tx = false;
            done
        })
    }

    pub fn rollback(&self) {
        let _ = self.call(|s| {
            s.depth = s.depth.saturating_sub(1);
            let sql = if s.depth > 0 {
                format!("ROLLBACK TO SAVEPOINT latchkey_{}", s.depth)
            } else {
                s.in_tx = false;
                s.lost_in_tx = false;
                "ROLLBACK".to_owned()
            };
            if let Some(c) = s.client.as_mut().filter(|c| !c.is_closed()) {
                let _ = c.batch_execute(&sql);
            }
            Ok(())
        });
    }

    /// Whether no transaction is open (a connection fit to go back to its pool).
    pub fn idle(&self) -> bool {
        self.call(|s| Ok(s.depth == 0)).unwrap_or(false)
    }

    pub fn target(&self) -> &Arc<PgTarget> {
        &self.target
    }
}

/// Connections for transactions that outlive one call (a fleet lock held
/// across a provider request), beside the store's own: at most
/// [`POOL_MAX`] in use at once (a fleet of daemons must not exhaust the
/// server's `max_connections` when many credentials come due together),
/// at most [`POOL_IDLE`] kept open between uses.
pub struct Pool {
    target: Arc<PgTarget>,
    state: Mutex<PoolState>,
    freed: std::sync::Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Pg>,
    in_use: usize,
}

/// Connections a pool keeps open while unused.
const POOL_IDLE: usize = 4;
/// Connections a pool hands out at once; a caller beyond waits.
const POOL_MAX: usize = 16;

impl Pool {
    pub fn new(target: Arc<PgTarget>) -> Pool {
        Pool {
            target,
            state: Mutex::new(PoolState::default()),
            freed: std::sync::Condvar::new(),
        }
    }

    /// An idle connection, or a new one (connected at its first
    /// statement); waits while [`POOL_MAX`] are in use. Call on a
    /// blocking thread, and [`Pool::give`] it back.
    pub fn take(&self) -> Pg {
        let mut state = crate::sync::lock(&self.state);
        while state.in_use >= POOL_MAX {
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.in_use += 1;
        state
            .idle
            .pop()
            .unwrap_or_else(|| Pg::spawn(Arc::clone(&self.target)))
    }

    /// Back to the pool (kept when no transaction is left open on it).
    pub fn give(&self, pg: Pg) {
        let keep = pg.idle();
        let mut state = crate::sync::lock(&self.state);
        state.in_use = state.in_use.saturating_sub(1);
        if keep && state.idle.len() < POOL_IDLE {
            state.idle.push(pg);
        }
        drop(state);
        self.freed.notify_one();
    }

    pub fn target(&self) -> &Arc<PgTarget> {
        &self.target
    }
}

/// Listens on `channel` on a connection of its own, forever: each
/// notification's payload goes to `deliver`; a lost connection is made
/// again (after `retry`), and `reconnected` is called then, since what
/// was notified meanwhile was missed. Stops when `deliver` returns false.
pub fn listen(
    target: Arc<PgTarget>,
    channel: &'static str,
    retry: Duration,
    mut deliver: impl FnMut(String) -> bool + Send + 'static,
    mut reconnected: impl FnMut() -> bool + Send + 'static,
) {
    std::thread::Builder::new()
        .name("latchkey-pg-listen".into())
        .spawn(move || {
            let mut first = true;
            loop {
                let mut client = match target.connect() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(
                            "cannot listen for the fleet's changes: {e}; trying again in {retry:?}"
                        );
                        std::thread::sleep(retry);
                        continue;
                    }
                };
                if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")) {
                    tracing::warn!(
                        "cannot listen for the fleet's changes: {}",
                        target.error(&e)
                    );
                    std::thread::sleep(retry);
                    continue;
                }
                if !first && !reconnected() {
                    return;
                }
                first = false;
                loop {
                    use postgres::fallible_iterator::FallibleIterator;
                    let next = client
                        .notifications()
                        .timeout_iter(Duration::from_secs(5))
                        .next()
                        .map(|n| n.map(|n| n.payload().to_owned()));
                    match next {
                        Ok(Some(payload)) => {
                            if !deliver(payload) {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(
                                "lost the fleet's change notifications: {}; listening again",
                                target.error(&e)
                            );
                            break;
                        }
                        // Quiet: make sure the connection still answers.
                        Ok(None) => {
                            if client.is_closed()
                                || client.is_valid(Duration::from_secs(5)).is_err()
                            {
                                break;
                            }
                        }
                    }
                }
                std::thread::sleep(retry);
            }
        })
        .expect("a thread for the database notifications");
}

/// SQLite's `?1` parameters as PostgreSQL's `$1`. Our statements hold
/// no `?` inside a literal.
fn numbered_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A migration (written for SQLite) as PostgreSQL DDL: the one schema
/// description, two dialects. Integers are 64-bit, blobs are bytea, and
/// the audit log's seq is given by the `audit_seq` counter (transactional,
/// so seqs have no gaps and writers take turns; see `AuditTx::insert`).
pub fn ddl(sql: &str) -> String {
    let sql = sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT PRIMARY KEY");
    let mut out = String::with_capacity(sql.len());
    for line in sql.lines() {
        let (code, comment) = match line.find("--") {
            Some(i) => line.split_at(i),
            None => (line, ""),
        };
        let code = code
            .split_inclusive(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .map(|word| {
                let (w, rest) = word.split_at(
                    word.find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                        .unwrap_or(word.len()),
                );
                match w {
                    "INTEGER" => format!("BIGINT{rest}"),
                    "BLOB" => format!("BYTEA{rest}"),
                    _ => word.to_owned(),
                }
            })
            .collect::<String>();
        out.push_str(&code);
        out.push_str(comment);
        out.push('\n');
    }
    out
}

/// What a PostgreSQL vault needs beside the tables: the schema version,
/// the audit seq counter, and SQLite's `instr`, which the audit listing
/// uses. Idempotent; run inside the migration transaction.
pub const BOOTSTRAP: &str = "
CREATE TABLE IF NOT EXISTS latchkey_schema (version BIGINT NOT NULL);
INSERT INTO latchkey_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM latchkey_schema);
CREATE TABLE IF NOT EXISTS audit_seq (n BIGINT NOT NULL);
INSERT INTO audit_seq (n) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM audit_seq);
CREATE OR REPLACE FUNCTION instr(haystack TEXT, needle TEXT) RETURNS INTEGER
    LANGUAGE sql IMMUTABLE AS 'SELECT strpos(haystack, needle)';
";

/// The channel daemons of a fleet tell each other what changed on.
pub const CHANNEL: &str = "latchkey_changes";

/// The advisory lock key of a credential: the first 64 bits of the
/// SHA-256 of its id (a collision would only make two credentials take
/// turns).
pub fn lock_key(credential_id: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(credential_id.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("32 bytes"))
}

/// The advisory lock every daemon takes while it migrates: the first one
/// migrates, the others wait and find nothing left to do.
pub const MIGRATION_LOCK: i64 = 0x6c61_7463_686b_6579; // "latchkey"

/// A fresh database on the tests' server (`.ci/postgres-env.sh`), dropped
/// at the end: `None` (a skip, logged) when no server is configured,
/// unless `LATCHKEY_TEST_REQUIRE_POSTGRES=1` (CI) makes that a failure.
#[cfg(test)]
pub mod testdb {
    use super::*;

    pub struct TestDb {
        pub target: Arc<PgTarget>,
        admin: PgTarget,
        name: String,
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            if let Ok(mut c) = self.admin.connect() {
                let _ = c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ));
            }
        }
    }

    /// The server's URL with `db` as its database, TLS verified against
    /// the test CA, and its password.
    pub fn url(db: &str) -> Option<(String, SecretString)> {
        let base = std::env::var("LATCHKEY_TEST_POSTGRES")
            .ok()
            .filter(|v| !v.is_empty());
        let Some(base) = base else {
            let why = "no PostgreSQL server (LATCHKEY_TEST_POSTGRES unset; `source .ci/postgres-env.sh` starts one)";
            if std::env::var("LATCHKEY_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("LATCHKEY_TEST_REQUIRE_POSTGRES=1 but {why}");
            }
            let line = format!(
                "SKIPPED {}: {why}\n",
                std::thread::current().name().unwrap_or("a test")
            );
            eprint!("{line}");
            if let Some(log) = std::env::var_os("LATCHKEY_TEST_SKIP_LOG").filter(|p| !p.is_empty())
            {
                use std::io::Write;
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .and_then(|mut f| f.write_all(line.as_bytes()));
            }
            return None;
        };
        let file = std::env::var("LATCHKEY_TEST_POSTGRES_PASSWORD_FILE")
            .expect("the password file beside the URL");
        let password = std::fs::read_to_string(file).expect("the test server's password");
        let mut url = url::Url::parse(&base).expect("a URL");
        url.set_path(db);
        url.set_host(Some("localhost")).expect("a host");
        let ca = std::env::var("LATCHKEY_TEST_POSTGRES_CA").expect("the test CA beside the URL");
        url.query_pairs_mut()
            .append_pair("sslmode", "verify-full")
            .append_pair("sslrootcert", &ca);
        Some((
            url.to_string(),
            SecretString::from(password.trim().to_owned()),
        ))
    }

    pub fn fresh() -> Option<TestDb> {
        let (admin_url, password) = url("postgres")?;
        let admin = PgTarget::parse(&admin_url, Some(password.clone())).expect("the admin URL");
        let name = format!("latchkey_test_{}", crate::vault::crypto::random_id());
        admin
            .connect()
            .expect("the test server")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("a test database");
        let (url, _) = url(&name)?;
        let target = Arc::new(PgTarget::parse(&url, Some(password)).expect("the test URL"));
        Some(TestDb {
            target,
            admin,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_for_postgres() {
        assert_eq!(
            numbered_params("SELECT a FROM t WHERE b = ?1 AND c IS NOT DISTINCT FROM ?12"),
            "SELECT a FROM t WHERE b = $1 AND c IS NOT DISTINCT FROM $12"
        );
    }

    #[test]
    fn the_schema_translates_types_not_names() {
        let pg = ddl("CREATE TABLE x (\n  seq INTEGER PRIMARY KEY AUTOINCREMENT,\n  n INTEGER NOT NULL, -- an INTEGER\n  b BLOB,\n  blobby TEXT\n);");
        assert!(pg.contains("seq BIGINT PRIMARY KEY,"), "{pg}");
        assert!(pg.contains("n BIGINT NOT NULL, -- an INTEGER"), "{pg}");
        assert!(pg.contains("b BYTEA,"), "{pg}");
        assert!(pg.contains("blobby TEXT"), "{pg}");
    }

    #[test]
    fn tls_is_required_except_to_loopback() {
        let remote = PgTarget::parse("postgres://u@db.example.com/v", None).unwrap();
        assert!(remote.tls.is_some());
        let refused =
            PgTarget::parse("postgres://u@db.example.com/v?sslmode=disable", None).unwrap_err();
        assert!(
            refused.contains("TLS to the vault database is required"),
            "{refused}"
        );
        let local = PgTarget::parse("postgres://u@127.0.0.1:5432/v", None).unwrap();
        assert!(local.tls.is_none());
        let asked = PgTarget::parse("postgres://u@localhost/v?sslmode=require", None).unwrap();
        assert!(asked.tls.is_some());
        let socket = PgTarget::parse("postgres://u@%2Frun%2Fpostgresql/v", None).unwrap();
        assert!(socket.tls.is_none());
    }

    #[test]
    fn the_password_never_shows() {
        let t = PgTarget::parse(
            "postgres://u:hunter2-canary@db.example.com:5433/v?sslmode=require",
            None,
        )
        .unwrap();
        assert_eq!(t.to_string(), "postgres://u@db.example.com:5433/v");
        assert!(!format!("{t:?}").contains("hunter2"));
        let t = PgTarget::parse(
            "postgres://u@db.example.com/v",
            Some(SecretString::from("hunter2-canary")),
        )
        .unwrap();
        assert_eq!(t.config.get_password(), Some(&b"hunter2-canary"[..]));
        assert!(!format!("{t:?} {t}").contains("hunter2"));
    }
}
