//! `latchkey doctor` end to end: the real binaries and the real
//! authorization server. A healthy setup passes every check (exit 0); a
//! provider whose discovery no longer answers is a `fail` row with its fix
//! and exit 1; no daemon is a `fail` row too; `--json` is the documented
//! list of {check, status, detail, fix}.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use latchkey_tests::fixture::{svc, svc_env, TEST_PROVIDER};
use latchkey_tests::provider::Provider;
use latchkey_tests::{DaemonOpts, TestEnv};
use serde_json::Value;

/// The rows of `latchkey doctor --json`, each checked for the four keys.
fn rows_of(out: &latchkey_tests::CliResult) -> Vec<Value> {
    let rows: Vec<Value> = serde_json::from_str(&out.stdout).expect("doctor --json parses");
    for row in &rows {
        for key in ["check", "status", "detail", "fix"] {
            assert!(row.get(key).is_some(), "{key} in {row}");
        }
        let status = row["status"].as_str().unwrap();
        assert!(["ok", "warn", "fail"].contains(&status), "{row}");
    }
    rows
}

fn row<'a>(rows: &'a [Value], check: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["check"] == check)
        .unwrap_or_else(|| panic!("no {check} row in {rows:?}"))
}

#[test]
fn a_healthy_setup_passes_and_an_unreachable_provider_fails_with_its_fix() {
    let p = Provider::start(&[svc()]);
    let (env, _daemon) = svc_env(&p, DaemonOpts::new(), "deploy-api");
    let out = env.latchkey(&["doctor", "--json"]);
    let rows = rows_of(&out);
    let bad: Vec<&Value> = rows.iter().filter(|r| r["status"] != "ok").collect();
    assert!(bad.is_empty(), "a healthy setup: {bad:?}");
    out.success();
    let provider = row(&rows, &format!("provider {TEST_PROVIDER}"));
    let detail = provider["detail"].as_str().unwrap();
    assert!(detail.contains(p.issuer()), "{detail}");
    assert!(detail.contains("clock skew"), "{detail}");
    assert_eq!(row(&rows, "daemon")["status"], "ok");
    assert_eq!(row(&rows, "vault")["detail"], "unlocked");
    assert!(row(&rows, "secret deploy-api")["detail"]
        .as_str()
        .unwrap()
        .contains("the client secret is 0 days old"));
    // The text form says the same, one line per check.
    let text = env.latchkey(&["doctor"]);
    text.success();
    assert!(
        text.stdout.contains("[ok  ] daemon: latchkeyd"),
        "{}",
        text.stdout
    );

    let issuer = p.issuer().to_owned();
    drop(p);
    let out = env.latchkey(&["doctor", "--json"]);
    out.code_is(1);
    let rows = rows_of(&out);
    let provider = row(&rows, &format!("provider {TEST_PROVIDER}"));
    assert_eq!(provider["status"], "fail", "{provider}");
    assert!(
        provider["detail"].as_str().unwrap().contains(&issuer),
        "{provider}"
    );
    assert!(
        provider["fix"]
            .as_str()
            .unwrap()
            .contains("latchkey provider show"),
        "{provider}"
    );
    let text = env.latchkey(&["doctor"]);
    text.code_is(1);
    assert!(text.stdout.contains("[FAIL] provider"), "{}", text.stdout);
    assert!(text.stdout.contains("fix: "), "{}", text.stdout);
}

#[test]
fn no_daemon_is_a_failure_and_doctor_does_not_start_one() {
    let env = TestEnv::new();
    let out = env.latchkey(&["doctor", "--json"]);
    out.code_is(1);
    let rows = rows_of(&out);
    let daemon = row(&rows, "daemon");
    assert_eq!(daemon["status"], "fail", "{daemon}");
    assert!(daemon["fix"]
        .as_str()
        .unwrap()
        .contains("latchkey daemon start"));
    assert!(
        env.cli_started_daemons().is_empty(),
        "doctor started no daemon"
    );
}
