//! The shared vault's database restarts while two daemons serve it: fresh
//! tokens keep being served from memory, a refresh meanwhile fails with
//! `vault_unavailable` naming the database (the credential stays ready),
//! and refreshes resume once it is back. Its own test binary: it stops
//! the tests' PostgreSQL server, which no other test may see.
//!
//! Needs `cargo build --workspace --bins`, `npm ci --prefix tests/provider`
//! and `source .ci/postgres-env.sh` (`.ci/test` does all three).

use latchkey_client::protocol::GrantType;
use latchkey_client::ErrorKind;
use latchkey_tests::browser::Browser;
use latchkey_tests::fixture::*;
use latchkey_tests::postgres::TestDatabase;
use latchkey_tests::{DaemonOpts, TestEnv};
use secrecy::ExposeSecret;
use serde_json::json;
use std::time::Duration;

/// A `min_ttl` longer than any token lives: forces a refresh.
const FORCE: Option<u64> = Some(7200);

fn ctl(action: &str) {
    let script = std::env::var("LATCHKEY_TEST_POSTGRES_CTL")
        .expect("LATCHKEY_TEST_POSTGRES_CTL beside LATCHKEY_TEST_POSTGRES");
    let status = std::process::Command::new(script)
        .arg(action)
        .status()
        .unwrap();
    assert!(status.success(), "postgres {action}: {status}");
}

/// Starts the server again if the test fails while it is stopped.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new(
                std::env::var("LATCHKEY_TEST_POSTGRES_CTL").unwrap_or_default(),
            )
            .arg("start")
            .status();
        }
    }
}

#[test]
fn a_database_restart_leaves_fresh_tokens_served_and_refreshes_resume() {
    let p = provider(3600, json!({}));
    let one = TestEnv::new();
    let Some(db) = TestDatabase::create(&one) else {
        return;
    };
    db.serve(&one);
    let _d1 = one.start_daemon_with(DaemonOpts::new().unlocked(&one));
    one.init();
    one.add_provider(IDP, p.issuer());
    add_public(&one, "app", GrantType::AuthorizationCode);
    assert!(one.browser_login("app", &Browser::new()).refresh_token);
    let two = TestEnv::new();
    db.serve(&two);
    let _d2 = two.start_daemon_with(DaemonOpts::new().unlocked(&two));
    let token = |env: &TestEnv, min_ttl| {
        env.token_get("app", min_ttl)
            .map(|t| t.access_token.expose_secret().to_string())
    };
    let fresh = token(&one, None).expect("a token");
    assert_eq!(token(&two, None).expect("the shared token"), fresh);
    let refreshes = p.stats().grant("refresh_token");

    let _restart = Restart;
    ctl("stop");
    // Fresh tokens: served from memory by both, as if nothing happened.
    for _ in 0..20 {
        assert_eq!(
            token(&one, None).expect("served while the database is down"),
            fresh
        );
        assert_eq!(
            token(&two, None).expect("served while the database is down"),
            fresh
        );
    }
    // A refresh needs the database: refused, naming it; nothing is lost.
    let err = token(&one, FORCE).expect_err("no refresh without the database");
    assert_eq!(err.kind(), Some(ErrorKind::VaultUnavailable), "{err}");
    let message = err.to_string();
    assert!(message.contains(&db.shown), "{message}");
    assert!(!message.contains(db.password()), "{message}");
    assert_eq!(
        p.stats().grant("refresh_token"),
        refreshes,
        "the provider is not asked while the database cannot record the rotation"
    );
    ctl("start");

    // Back: the refresh goes through (the connections are made again),
    // and the sibling takes the new token from the database.
    let renewed = latchkey_tests::wait_for(
        "a refresh once the database is back",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || token(&one, FORCE).ok(),
    );
    assert_ne!(renewed, fresh);
    assert_eq!(p.resource(&renewed), 200);
    assert_eq!(p.stats().grant("refresh_token"), refreshes + 1);
    let seen = latchkey_tests::wait_for(
        "the sibling serves the refreshed token",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || token(&two, None).ok().filter(|t| *t == renewed),
    );
    assert_eq!(seen, renewed);
    let shown = two
        .latchkey(&["credential", "show", "app", "--json"])
        .json();
    assert_eq!(shown["state"], "ready", "{shown}");
}
