//! Which app may use which credential, end to end with the real binaries:
//! two tiny apps (`latchkey-test-app-a` and `-b`, different executables)
//! asking for an `ask` credential; rules made with `latchkey app allow`
//! (which needs the passphrase) and `app deny`; `latchkey approve` driven
//! through its standard input; one prompt for many concurrent calls; a
//! changed binary at an approved path asking again; app keys; the CLI's
//! requests attributed to the program that ran it; an approver without
//! the passphrase unable to let an app in.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use latchkey_client::protocol::{
    ApprovalAttach, ApprovalDecide, ApprovalNext, ApprovalNextParams, AttachParams, DecideParams,
    Decision, PendingApproval,
};
use latchkey_client::ErrorKind;
use latchkey_tests::fixture::{svc, SVC_ID, SVC_SECRET, TEST_PROVIDER};
use latchkey_tests::provider::Provider;
use latchkey_tests::{wait_for, DaemonOpts, TestEnv};

const APP_A: &str = env!("CARGO_BIN_EXE_latchkey-test-app-a");
const APP_B: &str = env!("CARGO_BIN_EXE_latchkey-test-app-b");

/// A daemon whose callers wait at most `approval` for a decision, a vault,
/// the provider, and credential `api` with access `ask`.
fn ask_env(p: &Provider, approval: &str) -> TestEnv {
    let env = TestEnv::new();
    env.start_daemon_with(DaemonOpts::new().env("LATCHKEY_APPROVAL_TIMEOUT", approval));
    env.init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    env.cli(&[
        "credential",
        "add",
        "api",
        "--provider",
        TEST_PROVIDER,
        "--client-id",
        SVC_ID,
        "--scope",
        "api:read",
        "--client-secret-stdin",
        "--access",
        "ask",
    ])
    .stdin(SVC_SECRET)
    .run()
    .success();
    env
}

/// Runs app `exe` for credential `api`: its stdout line (`ok app-a`, or
/// the error kind).
fn ask(env: &TestEnv, exe: &Path) -> String {
    env.program(exe, &["api"]).run().stdout.trim().to_owned()
}

/// `latchkey app allow APP --credential api` with the passphrase as proof.
fn allow(env: &TestEnv, app: &str) {
    env.latchkey(&[
        "app",
        "allow",
        app,
        "--credential",
        "api",
        "--passphrase-file",
        &passphrase_file(env),
    ])
    .success();
}

fn passphrase_file(env: &TestEnv) -> String {
    env.passphrase_file().display().to_string()
}

/// A copy of `exe` at a path of its own: another app to the daemon.
fn copy_of(env: &TestEnv, exe: &str, name: &str) -> PathBuf {
    let to = env.root.join(name);
    std::fs::copy(exe, &to).unwrap();
    to
}

/// The first prompt an attached approver connection is shown.
fn first_prompt(approver: &mut latchkey_client::blocking::Client) -> PendingApproval {
    wait_for(
        "a prompt",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            approver
                .request::<ApprovalNext>(&ApprovalNextParams {
                    after: 0,
                    wait_secs: Some(1),
                })
                .unwrap()
                .pending
        },
    )
}

fn approvers(env: &TestEnv) -> u64 {
    env.latchkey(&["status", "--json"]).json()["approvers"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn apps_are_allowed_denied_and_approved_one_by_one() {
    let p = Provider::start(&[svc()]);
    let env = ask_env(&p, "30s");
    let (a, b) = (Path::new(APP_A), Path::new(APP_B));

    // Nobody to ask: refused at once, naming the command that allows.
    let r = env.program(a, &["api"]).run();
    assert_eq!(r.stdout.trim(), "approval_required", "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("latchkey app allow {APP_A} --credential api")),
        "the error names the fix: {}",
        r.stderr
    );

    // Allowing needs the passphrase: the daemon refuses a request without
    // one, and the CLI without a terminal or a file has none to send.
    let err = env
        .rpc::<latchkey_client::protocol::AppAllow>(&latchkey_client::protocol::AppAllowParams {
            app: APP_A.into(),
            credential: "api".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Forbidden), "{err}");
    assert!(err.to_string().contains("passphrase"), "{err}");
    env.latchkey(&["app", "allow", APP_A, "--credential", "api"])
        .code_is(2);
    let wrong = env.write_secret_file("wrong", "not the passphrase");
    env.latchkey(&[
        "app",
        "allow",
        APP_A,
        "--credential",
        "api",
        "--passphrase-file",
        wrong.to_str().unwrap(),
    ])
    .code_is(10);
    assert_eq!(ask(&env, a), "approval_required");

    // App A allowed always: served from then on, B is not.
    allow(&env, APP_A);
    assert_eq!(ask(&env, a), "ok app-a");
    assert_eq!(ask(&env, a), "ok app-a");
    assert_eq!(ask(&env, b), "approval_required");

    // B denied by a rule (no proof needed): refused without asking.
    env.latchkey(&["app", "deny", APP_B, "--credential", "api"])
        .success();
    let r = env.program(b, &["api"]).run();
    assert_eq!(r.stdout.trim(), "approval_denied", "{}", r.stderr);
    let listed = env.latchkey(&["app", "list", "--json"]).json();
    let rules = listed["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{listed}");
    let deny = rules.iter().find(|r| r["effect"] == "deny").unwrap();
    env.latchkey(&["app", "remove", deny["id"].as_str().unwrap()])
        .success();

    // A third app waits, and `latchkey approve` (answers on stdin) lets it
    // in once; the next call asks again, and is denied through it.
    let c = copy_of(&env, APP_B, "app-c");
    std::thread::scope(|s| {
        let approver = s.spawn(|| {
            env.cli(&[
                "approve",
                "--passphrase-file",
                &passphrase_file(&env),
                "--count",
                "2",
            ])
            .stdin("o\nd\n")
            .run()
        });
        wait_for(
            "the approver to attach",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || (approvers(&env) == 1).then_some(()),
        );
        assert_eq!(ask(&env, &c), "ok app-b", "approved once");
        assert_eq!(ask(&env, &c), "approval_denied", "denied the second time");
        let shown = approver.join().unwrap();
        shown.success();
        assert!(
            shown.stdout.contains(&c.display().to_string()),
            "{}",
            shown.stdout
        );
        assert!(shown.stdout.contains("credential:"), "{}", shown.stdout);
        assert!(shown.stdout.contains("api:read"), "{}", shown.stdout);
    });
    assert_eq!(approvers(&env), 0, "the approver detached when it ended");

    // Every decision is in the log, with the app that asked.
    let audit: Vec<(String, String)> = {
        let db = env.vault_db();
        let mut stmt = db
            .prepare("SELECT event, coalesce(app, '') FROM audit ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let events: Vec<&str> = audit.iter().map(|(e, _)| e.as_str()).collect();
    for event in [
        "rule_added",
        "approval_requested",
        "approval_decided",
        "access_denied",
        "rule_removed",
        "token_issued",
    ] {
        assert!(events.contains(&event), "no {event} row: {events:?}");
    }
    assert!(
        audit
            .iter()
            .any(|(e, app)| e == "token_issued" && app.starts_with(APP_A)),
        "the first issuance names app A: {audit:?}"
    );
}

#[test]
fn concurrent_calls_of_one_app_share_one_prompt() {
    let p = Provider::start(&[svc()]);
    let env = ask_env(&p, "60s");
    let a = Path::new(APP_A);
    let mut approver = env.client();
    approver.set_timeout(Some(Duration::from_secs(90))).unwrap();
    approver
        .request::<ApprovalAttach>(&AttachParams {
            proof: Some(latchkey_tests::env::proof()),
        })
        .unwrap();
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..50).map(|_| s.spawn(|| ask(&env, a))).collect();
        // All fifty are waiting on one prompt.
        let prompt = wait_for(
            "50 waiting calls",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let next = approver
                    .request::<ApprovalNext>(&ApprovalNextParams {
                        after: 0,
                        wait_secs: Some(1),
                    })
                    .unwrap();
                next.pending.filter(|p| p.waiting == 50)
            },
        );
        assert_eq!(prompt.app.name, APP_A);
        assert_eq!(prompt.credential, "api");
        let more = approver
            .request::<ApprovalNext>(&ApprovalNextParams {
                after: prompt.id,
                wait_secs: Some(1),
            })
            .unwrap();
        assert!(
            more.pending.is_none(),
            "one prompt, not one per call: {more:?}"
        );
        approver
            .request::<ApprovalDecide>(&DecideParams {
                id: prompt.id,
                decision: Decision::Once,
            })
            .unwrap();
        for call in calls {
            assert_eq!(call.join().unwrap(), "ok app-a");
        }
    });
}

#[test]
fn an_approver_without_the_passphrase_cannot_let_an_app_in() {
    let p = Provider::start(&[svc()]);
    let env = ask_env(&p, "5s");
    let a = Path::new(APP_A);
    let mut approver = env.client();
    let attached = approver
        .request::<ApprovalAttach>(&AttachParams { proof: None })
        .unwrap();
    assert!(!attached.can_allow);
    std::thread::scope(|s| {
        let call = s.spawn(|| ask(&env, a));
        let prompt = first_prompt(&mut approver);
        for decision in [Decision::Once, Decision::Always, Decision::Session] {
            let err = approver
                .request::<ApprovalDecide>(&DecideParams {
                    id: prompt.id,
                    decision,
                })
                .unwrap_err();
            assert_eq!(err.kind(), Some(ErrorKind::Forbidden), "{err}");
        }
        // Not served: the call ends unanswered at its deadline.
        assert_eq!(call.join().unwrap(), "approval_required");
    });
    assert!(
        env.latchkey(&["app", "list", "--json"]).json()["rules"]
            .as_array()
            .unwrap()
            .is_empty(),
        "no rule was stored"
    );
}

#[test]
fn a_changed_binary_asks_again_and_says_so() {
    let p = Provider::start(&[svc()]);
    let env = ask_env(&p, "10s");
    let app = copy_of(&env, APP_A, "tool");
    allow(&env, app.to_str().unwrap());
    assert_eq!(ask(&env, &app), "ok app-a");
    // Another program at the same path (an update, or a swap).
    std::fs::remove_file(&app).unwrap();
    std::fs::copy(APP_B, &app).unwrap();
    assert_eq!(ask(&env, &app), "approval_required");
    let mut approver = env.client();
    approver
        .request::<ApprovalAttach>(&AttachParams { proof: None })
        .unwrap();
    std::thread::scope(|s| {
        let call = s.spawn(|| ask(&env, &app));
        let prompt = first_prompt(&mut approver);
        assert!(
            prompt.updated,
            "the prompt says the program changed: {prompt:?}"
        );
        approver
            .request::<ApprovalDecide>(&DecideParams {
                id: prompt.id,
                decision: Decision::Deny,
            })
            .unwrap();
        assert_eq!(call.join().unwrap(), "approval_denied");
    });
}

#[test]
fn app_keys_name_interpreters_and_a_wrong_key_is_refused() {
    let p = Provider::start(&[svc()]);
    let env = ask_env(&p, "10s");
    let added = env.latchkey(&["app", "add", "ci"]);
    added.success();
    let key = added.out().trim().to_owned();
    assert!(key.starts_with("lkapp_"), "{key}");
    assert!(added.stderr.contains("shown this once"), "{}", added.stderr);
    allow(&env, "key:ci");
    // Any program holding the key is the app `ci`; the same program
    // without it is itself, and has no rule.
    let with_key = |key: &str| {
        env.program(Path::new(APP_B), &["api"])
            .env("LATCHKEY_APP_KEY", key)
            .run()
            .stdout
            .trim()
            .to_owned()
    };
    assert_eq!(with_key(&key), "ok app-b");
    assert_eq!(ask(&env, Path::new(APP_B)), "approval_required");
    let mut wrong = key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    assert_eq!(with_key(&wrong), "forbidden");
    assert_eq!(with_key("not-a-key"), "forbidden");
    // The CLI presents the key too.
    let r = env
        .cli(&["token", "api"])
        .env("LATCHKEY_APP_KEY", &key)
        .run();
    r.success();
    // The key is never listed, and never in the vault in clear.
    let listed = env.latchkey(&["app", "list", "--json"]).json();
    assert_eq!(listed["keys"][0]["name"], "ci");
    assert!(!listed.to_string().contains(&key[6..]), "{listed}");
    let raw = std::fs::read(&env.vault).unwrap();
    let secret = &key.as_bytes()[key.len() - 64..];
    assert!(
        !raw.windows(secret.len()).any(|w| w == secret),
        "the key's secret is not in the vault file"
    );
    // Removing the key removes its rules.
    env.latchkey(&["app", "remove", "key:ci"]).success();
    assert_eq!(with_key(&key), "forbidden");
    assert!(env.latchkey(&["app", "list", "--json"]).json()["rules"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn the_cli_is_attributed_to_the_program_that_ran_it() {
    let p = Provider::start(&[svc()]);
    let env = ask_env(&p, "10s");
    let status = env.latchkey(&["status", "--json"]).json();
    let me = std::env::current_exe().unwrap().display().to_string();
    assert_eq!(status["caller"]["name"], me.as_str(), "{status}");
    assert_eq!(status["caller"]["via_cli"], true, "{status}");
    assert_eq!(status["caller"]["kind"], "exe");
    // So a rule for this test program lets its `latchkey token` through,
    // and no rule for `latchkey` itself is needed (or would help).
    let r = env.latchkey(&["token", "api"]);
    r.code_is(11);
    assert!(
        r.stderr.contains(&format!("latchkey app allow {me}")),
        "{}",
        r.stderr
    );
    allow(&env, &me);
    env.latchkey(&["token", "api"]).success();
    assert_eq!(ask(&env, Path::new(APP_A)), "approval_required");
}
