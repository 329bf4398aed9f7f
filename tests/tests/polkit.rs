//! polkit as a proof of a human, end to end with the real `polkitd` on a
//! private system bus (`dbus-daemon`) started by the test, Latchkey's action
//! file (`dist/polkit/dev.latchkey.policy`) and a JavaScript rule answering
//! YES, then NO, for the test's user. polkit authorizes root for anything,
//! so the daemon, the CLI, the apps, the session bus and the notification
//! service run as `nobody`; the test itself must be root (it installs the
//! action and the rule, removed when it ends).
//! - the action not installed: a clear error naming the install command;
//! - YES: `latchkey approve --polkit` allows a waiting app, `app allow
//!   --polkit` stores a rule, and a notification's Allow click lets an app in;
//! - NO: both commands are refused, a notification's Allow click is not
//!   obeyed (the notification says so, and Deny still works), no app is served.
//!
//! Without polkit at all (any user): `--polkit` is refused, naming the
//! passphrase instead.
//!
//! Needs root, `polkitd` and `dbus-daemon` (`.ci/test` installs them),
//! `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use latchkey_tests::desktop::{
    can_run, is_root, on_path, user_ids, Bus, Notifyd, Polkit, Rule, POLKITD,
};
use latchkey_tests::fixture::{svc, SVC_ID, SVC_SECRET, TEST_PROVIDER};
use latchkey_tests::provider::Provider;
use latchkey_tests::{wait_for, DaemonHandle, DaemonOpts, TestEnv};
use serde_json::Value;

const APP_A: &str = env!("CARGO_BIN_EXE_latchkey-test-app-a");
const APP_B: &str = env!("CARGO_BIN_EXE_latchkey-test-app-b");
const NOTIFYD: &str = env!("CARGO_BIN_EXE_latchkey-test-notifyd");
/// `exit::FORBIDDEN`.
const FORBIDDEN: i32 = 9;

/// `latchkey credential add api … --access ask`.
fn add_ask_credential(env: &TestEnv) {
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
}

/// Runs app `exe` for credential `api`: `ok app-a`, or the error kind.
fn ask(env: &TestEnv, exe: &Path) -> String {
    env.program(exe, &["api"]).run().stdout.trim().to_owned()
}

/// A copy of `exe` in the env's root (owned by its user): another app.
fn copy_of(env: &TestEnv, exe: &str, name: &str) -> PathBuf {
    let to = env.root.join(name);
    std::fs::copy(exe, &to).unwrap();
    if let Some((uid, gid)) = env.user() {
        std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
    }
    to
}

fn allow_with_polkit(env: &TestEnv, app: &str) -> latchkey_tests::CliResult {
    env.latchkey(&["app", "allow", app, "--credential", "api", "--polkit"])
}

fn approvers(env: &TestEnv) -> u64 {
    env.latchkey(&["status", "--json"]).json()["approvers"]
        .as_u64()
        .unwrap_or(0)
}

/// The first prompt notification for `exe` that no earlier wait returned.
#[track_caller]
fn prompt_for(notifyd: &Notifyd, exe: &Path) -> Value {
    let exe = exe.display().to_string();
    notifyd.wait("a prompt notification", |e| {
        e["event"] == "notify" && e["body"].as_str().is_some_and(|b| b.contains(&exe))
    })
}

fn daemon_with_notifications(env: &TestEnv) -> DaemonHandle {
    let daemon = env.start_daemon_with(
        DaemonOpts::new()
            .unlocked(env)
            .env("LATCHKEY_APPROVAL_TIMEOUT", "30s"),
    );
    wait_for(
        "the notifier to find the service",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            env.daemon_log(&daemon)
                .contains("desktop notifications on")
                .then_some(())
        },
    );
    daemon
}

#[test]
fn polkit_proves_a_person_where_it_runs_and_its_no_is_obeyed() {
    let test = "polkit_proves_a_person_where_it_runs_and_its_no_is_obeyed";
    if !can_run(
        test,
        is_root(),
        "it must run as root (it runs polkitd, and installs an action and a rule)",
    ) || !can_run(
        test,
        Path::new(POLKITD).is_file() && on_path("dbus-daemon"),
        "polkitd or dbus-daemon is not installed (apt-get install polkitd dbus)",
    ) {
        return;
    }
    let (uid, gid) = user_ids("nobody").expect("the user nobody exists");
    let provider = Provider::start(&[svc()]);
    let env = TestEnv::new();
    env.run_as(uid, gid);
    let mut polkit = Polkit::start("nobody", &env.root);
    env.set_env("DBUS_SYSTEM_BUS_ADDRESS", &polkit.bus.address);
    let _session = Bus::session(&env);
    let notifyd = Notifyd::start(&env, Path::new(NOTIFYD), "actions,body");

    // The action not installed yet: the error names the fix.
    let first = env.start_daemon_with(DaemonOpts::new());
    env.init();
    env.add_provider(TEST_PROVIDER, provider.issuer());
    add_ask_credential(&env);
    if !Polkit::action_preinstalled() {
        let r = allow_with_polkit(&env, APP_A);
        r.code_is(FORBIDDEN);
        assert!(
            r.stderr
                .contains("does not know the action dev.latchkey.approve")
                && r.stderr.contains("dist/polkit/dev.latchkey.policy")
                && r.stderr.contains("passphrase"),
            "{}",
            r.stderr
        );
    }
    env.stop_daemon(&first);

    // polkit says YES for this user.
    polkit.set(Rule::Yes);
    let daemon = daemon_with_notifications(&env);
    assert!(
        env.daemon_log(&daemon).contains("allow=true"),
        "{}\n--- polkitd ---\n{}",
        env.daemon_log(&daemon),
        polkit.log()
    );
    // With polkit the notifier is an approver that can allow: calls wait.
    assert_eq!(approvers(&env), 1);
    let (a, b) = (Path::new(APP_A), Path::new(APP_B));
    std::thread::scope(|s| {
        let call = s.spawn(|| ask(&env, a));
        let shown = prompt_for(&notifyd, a);
        assert_eq!(
            shown["actions"],
            serde_json::json!([
                "allow-once",
                "Allow once",
                "allow-always",
                "Allow always",
                "deny",
                "Deny"
            ]),
            "{shown}"
        );
        let approve = env
            .cli(&["approve", "--polkit", "--count", "1"])
            .stdin("o\n")
            .run();
        approve.success();
        assert!(approve.stdout.contains(APP_A), "{}", approve.stdout);
        assert_eq!(
            call.join().unwrap(),
            "ok app-a",
            "allowed through approve --polkit"
        );
    });
    std::thread::scope(|s| {
        let call = s.spawn(|| ask(&env, b));
        let id = prompt_for(&notifyd, b)["id"].as_u64().unwrap();
        notifyd.send(&format!("invoke {id} allow-once"));
        assert_eq!(
            call.join().unwrap(),
            "ok app-b",
            "allowed by a click polkit confirmed"
        );
    });
    let c = copy_of(&env, APP_B, "app-c");
    allow_with_polkit(&env, c.to_str().unwrap()).success();
    assert_eq!(ask(&env, &c), "ok app-b", "a rule stored with --polkit");

    // polkit says NO: nothing is allowed, by any path.
    polkit.set(Rule::No);
    let d = copy_of(&env, APP_B, "app-d");
    let r = allow_with_polkit(&env, d.to_str().unwrap());
    r.code_is(FORBIDDEN);
    assert!(r.stderr.contains("polkit refuses"), "{}", r.stderr);
    let r = env.cli(&["approve", "--polkit", "--count", "1"]).run();
    r.code_is(FORBIDDEN);
    assert!(r.stderr.contains("polkit refuses"), "{}", r.stderr);
    std::thread::scope(|s| {
        let call = s.spawn(|| ask(&env, &d));
        let id = prompt_for(&notifyd, &d)["id"].as_u64().unwrap();
        notifyd.send(&format!("invoke {id} allow-once"));
        let replaced = notifyd.wait("the notification to say allowing failed", |e| {
            e["event"] == "notify" && e["replaces"] == id
        });
        assert!(
            replaced["body"]
                .as_str()
                .unwrap()
                .contains("Allowing was not confirmed: polkit refused"),
            "{replaced}"
        );
        assert_eq!(replaced["actions"], serde_json::json!(["deny", "Deny"]));
        let id = replaced["id"].as_u64().unwrap();
        notifyd.send(&format!("invoke {id} deny"));
        assert_eq!(call.join().unwrap(), "approval_denied");
    });
    let rules = env.latchkey(&["app", "list", "--json"]).json()["rules"].clone();
    let d = d.display().to_string();
    assert!(
        !rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["app"] == d.as_str()),
        "no rule for the app polkit refused: {rules}"
    );
    drop(notifyd);
    eprintln!("polkitd's log:\n{}", polkit.log());
}

#[test]
fn without_polkit_a_polkit_proof_is_refused_naming_the_passphrase() {
    let provider = Provider::start(&[svc()]);
    let env = TestEnv::new();
    env.set_env(
        "DBUS_SYSTEM_BUS_ADDRESS",
        format!("unix:path={}", env.root.join("no-system-bus").display()),
    );
    env.start_daemon_with(DaemonOpts::new().env("LATCHKEY_NOTIFY", "never"));
    env.init();
    env.add_provider(TEST_PROVIDER, provider.issuer());
    add_ask_credential(&env);
    for r in [
        allow_with_polkit(&env, APP_A),
        env.latchkey(&["approve", "--polkit", "--count", "1"]),
        env.latchkey(&["credential", "set", "api", "--access", "open", "--polkit"]),
    ] {
        r.code_is(FORBIDDEN);
        assert!(
            r.stderr
                .contains("cannot be proved by polkit: no polkit on the system bus")
                && r.stderr.contains("give the vault passphrase instead"),
            "{}",
            r.stderr
        );
    }
    assert_eq!(ask(&env, Path::new(APP_A)), "approval_required");
    assert!(env.latchkey(&["app", "list", "--json"]).json()["rules"]
        .as_array()
        .unwrap()
        .is_empty());
}
