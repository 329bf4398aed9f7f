//! The daemon's rate limits, end to end: set with `latchkeyd` flags (a
//! value that does not parse stops it at start with the grammar), they
//! refuse the CLI's calls with exit 7 and a message that names the app —
//! the program that ran the CLI, here this test — and the flag to change.
//!
//! The real binaries against the testkit's token endpoint on loopback
//! (no Node needed). Needs `cargo build --workspace --bins`.

use latchkey_testkit::token_endpoint::TokenEndpoint;
use latchkey_tests::fixture::local_svc;
use latchkey_tests::{DaemonOpts, TestEnv};
use std::time::Duration;

/// Exit code of a transient refusal (cli/src/exit.rs: provider
/// unavailable or rate limited).
const RETRY_LATER: i32 = 7;

#[test]
fn a_rate_limit_that_does_not_parse_stops_the_daemon_at_start() {
    let env = TestEnv::new();
    let (status, log) = env.run_daemon_expecting_exit(
        DaemonOpts::new().arg("--rate-limit").arg("lots"),
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(
        log.contains("invalid rate limit 'lots'") && log.contains("COUNT/PERIOD"),
        "{log}"
    );
}

#[test]
fn the_cli_is_refused_with_the_app_and_the_flag_named() {
    let runtime = latchkey_tests::fixture::runtime();
    let endpoint = runtime
        .block_on(TokenEndpoint::start())
        .expect("the token endpoint binds 127.0.0.1:0");
    let env = TestEnv::new();
    // A minute's worth: nothing refills while the test runs.
    env.start_daemon_with(
        DaemonOpts::new()
            .arg("--rate-limit")
            .arg("40/m")
            .arg("--provider-rate-limit")
            .arg("2/m"),
    );
    env.init();
    local_svc(&env, &endpoint.url);

    // Two requests reach the provider (a miss, then one forced), the
    // third is refused before it does; cached answers go on.
    env.latchkey(&["token", "svc"]).success();
    env.latchkey(&["token", "svc", "--min-ttl", "2h"]).success();
    assert_eq!(endpoint.served(), 2);
    let refused = env.latchkey(&["token", "svc", "--min-ttl", "2h"]);
    refused.code_is(RETRY_LATER);
    assert!(
        refused.stderr.contains("requests that reach the provider")
            && refused.stderr.contains("`latchkeyd --provider-rate-limit`"),
        "{}",
        refused.stderr
    );
    assert_eq!(endpoint.served(), 2, "refused before the provider");
    env.latchkey(&["token", "svc"]).success();

    // Calls of one app: this test runs the CLI, so it is the app named.
    let me = std::env::current_exe().expect("the test's path");
    let mut answered = 0;
    let refusal = loop {
        let r = env.latchkey(&["status"]);
        if r.code != 0 {
            break r;
        }
        answered += 1;
        assert!(answered <= 40, "40 calls a minute, and more were answered");
    };
    refusal.code_is(RETRY_LATER);
    assert!(
        refusal
            .stderr
            .contains(&format!("app {} (sha256 ", me.display())),
        "names the program that ran the CLI: {}",
        refusal.stderr
    );
    assert!(
        refusal
            .stderr
            .contains("made more than 40 calls per minute: retry after")
            && refusal.stderr.contains("`latchkeyd --rate-limit`"),
        "{}",
        refusal.stderr
    );
}
