//! A lock someone asked for holds, end to end: with
//! `$LATCHKEY_PASSPHRASE_FILE` set (a CI runner), `latchkey lock` is not
//! undone by the next `latchkey token` nor by a restarted daemon that
//! has the file too; `latchkey unlock` ends it; the idle auto-lock is not
//! held, so the next call unlocks from the file as before.
//!
//! The real binaries against the testkit's token endpoint on loopback
//! (no Node needed). Needs `cargo build --workspace --bins`.

use latchkey_testkit::token_endpoint::TokenEndpoint;
use latchkey_tests::fixture::local_svc;
use latchkey_tests::{wait_for, DaemonOpts, TestEnv};
use std::time::Duration;

fn vault_state(env: &TestEnv) -> String {
    env.latchkey(&["status", "--json"]).json()["vault"]
        .as_str()
        .expect("status says the vault's state")
        .to_string()
}

#[test]
fn a_requested_lock_holds_until_latchkey_unlock_and_the_idle_lock_does_not() {
    // The endpoint serves on this runtime's workers while the test runs.
    let runtime = latchkey_tests::fixture::runtime();
    let endpoint = runtime
        .block_on(TokenEndpoint::start())
        .expect("the token endpoint binds 127.0.0.1:0");
    let env = TestEnv::new();
    env.set_env("LATCHKEY_PASSPHRASE_FILE", env.passphrase_file());
    // 3 s: idle time is counted in whole seconds (see e2e_cli's auto-lock
    // test); every step below that must not see an idle lock is one call.
    let opts = || DaemonOpts::new().arg("--idle-timeout").arg("3s");
    let first = env.start_daemon_with(opts());
    env.init();
    local_svc(&env, &endpoint.url);
    let token = env.token("svc");

    env.latchkey(&["lock"]).success();
    let r = env.latchkey(&["token", "svc"]);
    r.code_is(4);
    assert!(
        r.stderr
            .contains("the vault was locked by `latchkey lock` at ")
            && r.stderr.contains(": unlock it with `latchkey unlock`"),
        "the error says who locked it and the fix: {}",
        r.stderr
    );
    assert_eq!(vault_state(&env), "locked");

    // A restart does not undo it, although the daemon has the file too.
    assert!(env.stop_daemon(&first).success());
    let second = env.start_daemon_with(opts());
    assert_eq!(vault_state(&env), "locked");
    let log = env.daemon_log(&second);
    assert!(
        log.contains("not unlocking the vault at start") && log.contains("`latchkey lock`"),
        "{log}"
    );
    env.latchkey(&["token", "svc"]).code_is(4);
    assert_eq!(vault_state(&env), "locked");

    // `latchkey unlock` (explicit, here from the same file) ends the hold.
    env.latchkey(&["unlock"]).success();
    assert_eq!(env.token("svc"), token, "the stored token, after the hold");

    // The idle auto-lock does not hold: the next call unlocks from the file.
    wait_for(
        "the vault to auto-lock",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || (vault_state(&env) == "locked").then_some(()),
    );
    let r = env.latchkey(&["token", "svc"]);
    assert_eq!(r.out(), token);
    assert!(
        r.stderr
            .contains("unlocked it with $LATCHKEY_PASSPHRASE_FILE"),
        "the CLI says it unlocked: {}",
        r.stderr
    );
}
