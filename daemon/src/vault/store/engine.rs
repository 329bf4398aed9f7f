//! The one seam between the store's queries and its two engines: values
//! in and out, statements, transactions. A query is written once, with
//! SQLite's numbered parameters (`?1`); the PostgreSQL engine turns them
//! into `$1` (see `postgres.rs`).

use super::postgres::Pg;
use super::{Result, StoreError};
use rusqlite::types::{ToSqlOutput, ValueRef};

/// A value bound to a statement or read from a row.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// Values never show in `Debug` (a blob is sealed, but keep it that way).
impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Int(_) => f.write_str("Int"),
            Value::Text(_) => f.write_str("Text"),
            Value::Blob(b) => write!(f, "Blob({} bytes)", b.len()),
        }
    }
}

/// What may be bound to a statement.
pub trait Arg {
    fn arg(&self) -> Value;
}

impl Arg for i64 {
    fn arg(&self) -> Value {
        Value::Int(*self)
    }
}
impl Arg for u32 {
    fn arg(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl Arg for bool {
    fn arg(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl Arg for str {
    fn arg(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl Arg for String {
    fn arg(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl Arg for [u8] {
    fn arg(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl Arg for Vec<u8> {
    fn arg(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl<T: Arg + ?Sized> Arg for &T {
    fn arg(&self) -> Value {
        (**self).arg()
    }
}
impl<T: Arg> Arg for Option<T> {
    fn arg(&self) -> Value {
        self.as_ref().map_or(Value::Null, Arg::arg)
    }
}

/// The values of a statement's parameters, in order: `args![a, b]`.
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        vec![$($crate::vault::store::engine::Arg::arg(&$x)),*]
    };
}
pub(crate) use args;

/// One row read, its columns taken out by index.
pub struct Row(Vec<Value>);

impl Row {
    pub fn new(values: Vec<Value>) -> Row {
        Row(values)
    }

    /// Column `i` as a `T` (taken: a second take of it reads `Null`).
    pub fn take<T: Column>(&mut self, i: usize) -> Result<T> {
        let value = self
            .0
            .get_mut(i)
            .map(|v| std::mem::replace(v, Value::Null))
            .unwrap_or(Value::Null);
        T::from_value(value).ok_or(StoreError::Column { index: i })
    }
}

/// What a column may be read as.
pub trait Column: Sized {
    fn from_value(value: Value) -> Option<Self>;
}

impl Column for i64 {
    fn from_value(value: Value) -> Option<i64> {
        match value {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }
}
impl Column for u32 {
    fn from_value(value: Value) -> Option<u32> {
        i64::from_value(value).and_then(|i| u32::try_from(i).ok())
    }
}
impl Column for bool {
    fn from_value(value: Value) -> Option<bool> {
        i64::from_value(value).map(|i| i != 0)
    }
}
impl Column for String {
    fn from_value(value: Value) -> Option<String> {
        match value {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}
impl Column for Vec<u8> {
    fn from_value(value: Value) -> Option<Vec<u8>> {
        match value {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }
}
impl<T: Column> Column for Option<T> {
    fn from_value(value: Value) -> Option<Option<T>> {
        match value {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn sqlite_value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        // No column of ours is REAL; keep the row readable, never guess.
        ValueRef::Real(_) => Value::Null,
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Which engine holds the vault.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Pg),
}

impl Conn {
    /// Runs one statement; the number of rows it changed.
    pub fn exec(&self, sql: &str, args: Vec<Value>) -> Result<u64> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(args.iter()))? as u64)
            }
            Conn::Postgres(pg) => pg.exec(sql, args),
        }
    }

    /// Every row a query gives.
    pub fn query(&self, sql: &str, args: Vec<Value>) -> Result<Vec<Row>> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n = stmt.column_count();
                let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    (0..n)
                        .map(|i| r.get_ref(i).map(sqlite_value))
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map(Row)
                })?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            }
            Conn::Postgres(pg) => pg.query(sql, args),
        }
    }

    /// The first row a query gives, if any.
    pub fn one(&self, sql: &str, args: Vec<Value>) -> Result<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Statements with no parameters, run as one batch.
    pub fn batch(&self, sql: &str) -> Result<()> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(pg) => pg.batch(sql),
        }
    }

    /// Starts a transaction; it rolls back unless committed.
    pub fn begin(&self) -> Result<Tx<'_>> {
        match self {
            Conn::Sqlite(c) => c.execute_batch("BEGIN")?,
            Conn::Postgres(pg) => pg.begin()?,
        }
        Ok(Tx {
            conn: self,
            open: true,
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Conn::Postgres(_))
    }
}

/// An open transaction on the store's connection. Statements go through
/// [`Tx::conn`] (the same connection); dropped uncommitted, it rolls back.
pub struct Tx<'a> {
    conn: &'a Conn,
    open: bool,
}

impl<'a> Tx<'a> {
    pub fn conn(&self) -> &'a Conn {
        self.conn
    }

    pub fn exec(&self, sql: &str, args: Vec<Value>) -> Result<u64> {
        self.conn.exec(sql, args)
    }

    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        match self.conn {
            Conn::Sqlite(c) => {
                if let Err(e) = c.execute_batch("COMMIT") {
                    let _ = c.execute_batch("ROLLBACK");
                    return Err(e.into());
                }
                Ok(())
            }
            Conn::Postgres(pg) => pg.commit(),
        }
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            match self.conn {
                Conn::Sqlite(c) => {
                    let _ = c.execute_batch("ROLLBACK");
                }
                Conn::Postgres(pg) => pg.rollback(),
            }
        }
    }
}
