//! The shared vault's database: a fresh database on the tests' PostgreSQL
//! server (`.ci/postgres-env.sh` starts it and names it in
//! `LATCHKEY_TEST_POSTGRES`), dropped when the test ends, and raw SQL on it
//! (as a database administrator would: tampering, counting).

use crate::TestEnv;
use std::path::PathBuf;

/// One database of the tests' server.
pub struct TestDatabase {
    /// `postgres://latchkey@localhost:PORT/NAME?sslmode=verify-full&sslrootcert=CA`:
    /// TLS verified against the tests' CA. No password in it.
    pub url: String,
    /// The URL the daemon shows (no password, no query).
    pub shown: String,
    /// The role's password (in [`TestDatabase::password_file`] for daemons).
    password: String,
    pub password_file: PathBuf,
    name: String,
    port: u16,
}

/// Whether PostgreSQL tests must run (CI): then a missing server fails.
fn required() -> bool {
    std::env::var("LATCHKEY_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

impl TestDatabase {
    /// A fresh database, or `None` (a logged skip) when no server is
    /// configured outside CI.
    pub fn create(env: &TestEnv) -> Option<TestDatabase> {
        let Some(base) = std::env::var("LATCHKEY_TEST_POSTGRES")
            .ok()
            .filter(|v| !v.is_empty())
        else {
            let why = "no PostgreSQL server (LATCHKEY_TEST_POSTGRES unset; `source .ci/postgres-env.sh` starts one)";
            assert!(!required(), "LATCHKEY_TEST_REQUIRE_POSTGRES=1 but {why}");
            crate::skip(why);
            return None;
        };
        let file = std::env::var("LATCHKEY_TEST_POSTGRES_PASSWORD_FILE")
            .expect("LATCHKEY_TEST_POSTGRES_PASSWORD_FILE beside LATCHKEY_TEST_POSTGRES");
        let password = std::fs::read_to_string(file)
            .expect("the test server's password")
            .trim()
            .to_owned();
        let ca = std::env::var("LATCHKEY_TEST_POSTGRES_CA")
            .expect("LATCHKEY_TEST_POSTGRES_CA beside LATCHKEY_TEST_POSTGRES");
        let port: u16 = base
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("a port in LATCHKEY_TEST_POSTGRES");
        let name = format!("lk_{:016x}", rand::random::<u64>());
        let db = TestDatabase {
            url: format!(
                "postgres://latchkey@localhost:{port}/{name}?sslmode=verify-full&sslrootcert={ca}"
            ),
            shown: format!("postgres://latchkey@localhost:{port}/{name}"),
            password_file: env.write_secret_file("pg-password", &format!("{password}\n")),
            password,
            name,
            port,
        };
        db.admin()
            .batch_execute(&format!("CREATE DATABASE {}", db.name))
            .expect("a test database");
        Some(db)
    }

    fn connect(&self, db: &str) -> postgres::Client {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("latchkey")
            .password(&self.password)
            .dbname(db)
            .connect(postgres::NoTls)
            .expect("the tests' PostgreSQL server")
    }

    fn admin(&self) -> postgres::Client {
        self.connect("postgres")
    }

    /// A connection to this database, as its administrator.
    pub fn sql(&self) -> postgres::Client {
        self.connect(&self.name)
    }

    /// Points `env`'s daemons and CLI runs at this database (the URL in
    /// `LATCHKEY_VAULT`, the password in `LATCHKEY_VAULT_PASSWORD_FILE`).
    pub fn serve(&self, env: &TestEnv) {
        env.set_env("LATCHKEY_VAULT", &self.url);
        env.set_env(
            "LATCHKEY_VAULT_PASSWORD_FILE",
            self.password_file.to_str().expect("utf-8 temp path"),
        );
    }

    /// The password, for the canary checks: it must show nowhere.
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = self.admin().batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}
