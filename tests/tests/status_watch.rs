//! `latchkey status --watch` end to end, stdout piped: plain lines, one
//! snapshot per interval, bounded by `--count`, naming each credential with
//! its state, its token's countdown, the next proactive refresh and the
//! apps that asked; no escape codes when stdout is not a terminal.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use latchkey_client::protocol::{CredentialState, GrantType};
use latchkey_tests::browser::Browser;
use latchkey_tests::fixture::*;
use serde_json::json;

#[test]
fn watch_with_a_count_prints_plain_snapshots_of_every_credential() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);
    add_public(&env, "mail", GrantType::AuthorizationCode);
    env.browser_login("app", &Browser::new());
    assert_eq!(env.credential_show("app").state, CredentialState::Ready);
    assert!(!env.token("app").is_empty());

    let run = env.cli(&["status", "--watch", "--count", "2"]).run();
    run.success();
    let out = run.out();
    assert!(!out.contains('\x1b'), "no escape codes on a pipe: {out:?}");
    let snapshots: Vec<&str> = out
        .split("\n\n")
        .filter(|s| s.starts_with("latchkey  "))
        .collect();
    assert_eq!(snapshots.len(), 2, "two snapshots: {out}");
    for snap in snapshots {
        assert!(snap.contains("vault unlocked"), "{snap}");
    }
    let lines: Vec<&str> = out.lines().collect();
    let header = lines
        .iter()
        .find(|l| l.starts_with("CREDENTIAL"))
        .unwrap_or_else(|| panic!("a table: {out}"));
    for column in [
        "STATE",
        "TOKEN EXPIRES",
        "NEXT REFRESH",
        "LAST REFRESH",
        "APPS (10m)",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = |name: &str| -> Vec<String> {
        lines
            .iter()
            .rev()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("a row for {name}: {out}"))
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let app = row("app");
    assert_eq!(app[1], "ok", "{app:?}");
    assert!(app[2].starts_with("in "), "a countdown to expiry: {app:?}");
    assert!(
        app[3].starts_with("in "),
        "the next proactive refresh: {app:?}"
    );
    // The test itself asked for the token (the rows name the executable).
    assert!(
        app[5].contains("status_watch"),
        "the app that asked: {app:?}"
    );
    let mail = row("mail");
    assert_eq!(mail[1], "needs login", "{mail:?}");
    assert!(
        out.contains("mail: run `latchkey login mail`"),
        "the fix for a credential that needs a login: {out}"
    );
}

#[test]
fn watch_on_a_locked_vault_says_how_to_unlock() {
    let env = latchkey_tests::TestEnv::new();
    let _d = env.start_and_init();
    env.latchkey(&["lock"]).success();
    let run = env.cli(&["status", "--watch", "--count", "1"]).run();
    run.success();
    let out = run.out();
    assert!(out.contains("vault locked"), "{out}");
    assert!(out.contains("`latchkey unlock`"), "{out}");
    assert_eq!(out.matches("latchkey  ").count(), 1, "one snapshot: {out}");
}

#[test]
fn watch_flags_are_checked() {
    let env = latchkey_tests::TestEnv::new();
    env.cli(&["status", "--count", "2"]).run().code_is(2);
    env.cli(&["status", "--watch", "--count", "0"])
        .run()
        .code_is(2);
    env.cli(&["status", "--watch", "--json"]).run().code_is(2);
}
