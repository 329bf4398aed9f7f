//! The shared vault: `latchkeyd --vault postgres://…` (here through
//! `LATCHKEY_VAULT`, its password in `LATCHKEY_VAULT_PASSWORD_FILE`) on the
//! tests' PostgreSQL server, over TLS verified against the tests' CA. The
//! same vault as a file — sealed blobs the database cannot read or move
//! between rows unnoticed — served by several daemons at once.
//!
//! Needs `cargo build --workspace --bins`, `npm ci --prefix tests/provider`
//! and `source .ci/postgres-env.sh` (`.ci/test` does all three).

use latchkey_client::ErrorKind;
use latchkey_tests::fixture::{client_credentials, TEST_PROVIDER};
use latchkey_tests::postgres::TestDatabase;
use latchkey_tests::provider::{ClientSpec, Provider};
use latchkey_tests::{DaemonHandle, DaemonOpts, TestEnv};
use secrecy::ExposeSecret;
use std::time::Duration;

fn token(env: &TestEnv, name: &str) -> Result<String, (ErrorKind, String)> {
    env.client()
        .token(name)
        .map(|t| t.access_token.expose_secret().to_string())
        .map_err(|e| (e.kind().unwrap_or(ErrorKind::Unknown), e.to_string()))
}

/// A second machine of the fleet: its own runtime dir, socket and data
/// dir, the same database.
fn sibling(db: &TestDatabase) -> TestEnv {
    let env = TestEnv::new();
    db.serve(&env);
    env
}

/// The clients `svc-a` (and `svc-b`) at a provider, and a daemon on a fresh
/// database with them as credentials `a` (and `b`): `None` (skipped)
/// without a PostgreSQL server.
fn on_postgres(names: &[&str]) -> Option<(Provider, TestEnv, TestDatabase, DaemonHandle)> {
    let specs: Vec<ClientSpec> = names
        .iter()
        .map(|n| {
            ClientSpec::client_credentials(
                &format!("svc-{n}"),
                &format!("secret-{n}"),
                "client_secret_basic",
                "api:read",
            )
        })
        .collect();
    let p = Provider::start(&specs);
    let env = TestEnv::new();
    let db = TestDatabase::create(&env)?;
    db.serve(&env);
    let daemon = env.start_daemon();
    env.init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    for (name, spec) in names.iter().zip(&specs) {
        client_credentials(&env, TEST_PROVIDER, name, spec);
    }
    Some((p, env, db, daemon))
}

#[test]
fn a_daemon_keeps_its_vault_in_postgres() {
    let Some((p, env, db, daemon)) = on_postgres(&["a"]) else {
        return;
    };
    let first = token(&env, "a").expect("a token");
    assert_eq!(p.introspect(&first, "svc-a", "secret-a")["active"], true);

    // The daemon names the database, never its password.
    let status = env.latchkey(&["status", "--json"]).json();
    assert_eq!(status["vault_path"], db.shown.as_str());

    // Rows in the database hold sealed blobs only: no secret in clear.
    let mut sql = db.sql();
    let secret: Vec<u8> = sql
        .query_one(
            "SELECT client_secret FROM credentials WHERE name = 'a'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(secret[0], 1, "format v1 blob");
    let dump: Vec<Vec<u8>> = sql
        .query("SELECT token FROM tokens", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dump.len(), 1);
    for blob in dump.iter().chain([&secret]) {
        let text = String::from_utf8_lossy(blob);
        assert!(
            !text.contains("secret-a") && !text.contains(&first),
            "a clear secret in a row"
        );
    }

    // Restarted, it unlocks from the database and serves the stored token
    // without asking the provider again.
    assert!(env.stop_daemon(&daemon).success());
    let requests = p.stats().token_requests;
    let daemon = env.start_daemon_with(DaemonOpts::new().unlocked(&env));
    assert_eq!(token(&env, "a").expect("the stored token"), first);
    assert_eq!(p.stats().token_requests, requests);

    // The database password shows in no argument list and no log.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", daemon.pid)).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(db.password()));
    assert!(!env.all_daemon_logs().contains(db.password()));
    env.stop_daemon(&daemon);
}

#[test]
fn daemons_on_two_machines_share_providers_credentials_and_tokens() {
    let Some((p, one, db, d1)) = on_postgres(&["a"]) else {
        return;
    };
    let t1 = token(&one, "a").expect("a token on the first machine");

    // The second machine was never told about the credential: it reads
    // it (and the token the first one stored) from the database.
    let two = sibling(&db);
    let d2 = two.start_daemon_with(DaemonOpts::new().unlocked(&two));
    let listed = two.latchkey(&["credential", "list", "--json"]).json();
    assert_eq!(listed[0]["name"], "a", "{listed}");
    assert_eq!(token(&two, "a").expect("the shared token"), t1);
    assert_eq!(p.stats().token_requests, 1, "one request for the fleet");

    // Both daemons write the one audit chain; it verifies.
    let verify = two.latchkey(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    two.stop_daemon(&d2);
    one.stop_daemon(&d1);
}

#[test]
fn blobs_swapped_between_rows_by_the_database_administrator_are_detected() {
    let Some((p, env, db, daemon)) = on_postgres(&["a", "b"]) else {
        return;
    };
    assert!(env.stop_daemon(&daemon).success());

    let mut sql = db.sql();
    let swapped = sql
        .execute(
            "UPDATE credentials c SET client_secret = o.client_secret
             FROM credentials o WHERE c.name <> o.name AND c.name IN ('a', 'b') AND o.name IN ('a', 'b')",
            &[],
        )
        .unwrap();
    assert_eq!(swapped, 2);

    let daemon = env.start_daemon_with(DaemonOpts::new().unlocked(&env));
    for name in ["a", "b"] {
        let (kind, message) = token(&env, name).expect_err("a swapped secret serves no token");
        assert_eq!(kind, ErrorKind::VaultCorrupt, "{message}");
        assert!(message.contains("integrity"), "{message}");
    }
    assert_eq!(
        p.stats().token_requests,
        0,
        "a swapped secret is never decrypted and sent"
    );
    env.stop_daemon(&daemon);
}

#[test]
fn the_database_password_is_refused_on_a_command_line() {
    let env = TestEnv::new();
    let url = "postgres://ci:pw-canary-7@db.example.com/vault";
    let (status, log) = env.run_daemon_expecting_exit(
        DaemonOpts::new().arg("--vault").arg(url),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(log.contains("holds a password"), "{log}");
    assert!(log.contains("LATCHKEY_VAULT"), "{log}");
    assert!(!log.contains("pw-canary-7"), "{log}");
    let r = env.latchkey(&["--vault", url, "status"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("holds a password"), "{}", r.stderr);
    assert!(!r.stderr.contains("pw-canary-7"), "{}", r.stderr);
}

#[test]
fn tls_to_a_remote_database_cannot_be_turned_off() {
    let env = TestEnv::new();
    env.set_env(
        "LATCHKEY_VAULT",
        "postgres://ci@db.example.com/vault?sslmode=disable",
    );
    let (status, log) = env.run_daemon_expecting_exit(DaemonOpts::new(), Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        log.contains("TLS to the vault database is required except over loopback"),
        "{log}"
    );
}

#[test]
fn a_daemon_started_before_the_vault_existed_finds_it() {
    let one = TestEnv::new();
    let Some(db) = TestDatabase::create(&one) else {
        return;
    };
    db.serve(&one);
    let two = sibling(&db);
    let d2 = two.start_daemon();
    let status = two.latchkey(&["status", "--json"]).json();
    assert_eq!(status["vault"], "uninitialized", "{status}");
    let d1 = one.start_daemon();
    one.init();
    // The second machine's daemon was running all along: it finds the
    // vault another machine made, and will not make a second one.
    let status = two.latchkey(&["status", "--json"]).json();
    assert_eq!(status["vault"], "locked", "{status}");
    let again = two.latchkey(&[
        "init",
        "--passphrase-file",
        two.passphrase_file().to_str().unwrap(),
    ]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let pass = two.passphrase_file();
    two.latchkey(&["unlock", "--passphrase-file", pass.to_str().unwrap()])
        .success();
    two.stop_daemon(&d2);
    one.stop_daemon(&d1);
}

#[test]
fn a_database_whose_certificate_does_not_verify_is_refused() {
    let env = TestEnv::new();
    let Some(db) = TestDatabase::create(&env) else {
        return;
    };
    // TLS asked for, but against the public roots: the tests' CA is not
    // among them, so the server's certificate does not verify.
    let url = db.url.split('?').next().unwrap().to_owned() + "?sslmode=require";
    env.set_env("LATCHKEY_VAULT", &url);
    env.set_env(
        "LATCHKEY_VAULT_PASSWORD_FILE",
        db.password_file.to_str().unwrap(),
    );
    let (status, log) = env.run_daemon_expecting_exit(DaemonOpts::new(), Duration::from_secs(30));
    assert!(!status.success());
    assert!(log.contains(&db.shown), "names the database: {log}");
    assert!(
        log.contains("certificate") || log.contains("Certificate"),
        "says why: {log}"
    );
    assert!(!log.contains(db.password()), "{log}");
}
