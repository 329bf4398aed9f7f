//! Desktop notifications for apps waiting for a decision, end to end: a
//! real `dbus-daemon` session bus started by the test, our notification
//! service on it (`latchkey-test-notifyd`: records every call, clicks on
//! command), the real daemon and apps. No polkit here (the system bus
//! address points nowhere), so notifications can only deny:
//! - many concurrent calls of one app: exactly one notification, Deny only,
//!   naming app, hash, credential and scopes, and no secret;
//! - a Deny click from an impostor (a bus name that does not own the
//!   service) is ignored; the owner's denies the waiting calls;
//! - a prompt answered elsewhere, or timed out, has its notification closed;
//! - the notifier is no approver: with no terminal approver a call fails
//!   at once, and a notice names the command that allows the app;
//! - `--notify never` shows nothing.
//!
//! Needs `dbus-daemon` (`.ci/test` installs it), `cargo build --workspace
//! --bins` and `npm ci --prefix tests/provider`.

use std::path::Path;
use std::time::Duration;

use latchkey_client::protocol::{
    ApprovalAttach, ApprovalDecide, ApprovalNext, ApprovalNextParams, AttachParams, DecideParams,
    Decision,
};
use latchkey_tests::desktop::{can_run, on_path, Bus, Notifyd};
use latchkey_tests::fixture::{svc, SVC_ID, SVC_SECRET, TEST_PROVIDER};
use latchkey_tests::provider::Provider;
use latchkey_tests::{wait_for, DaemonHandle, DaemonOpts, TestEnv};
use serde_json::Value;

const APP_A: &str = env!("CARGO_BIN_EXE_latchkey-test-app-a");
const APP_B: &str = env!("CARGO_BIN_EXE_latchkey-test-app-b");
const NOTIFYD: &str = env!("CARGO_BIN_EXE_latchkey-test-notifyd");

/// One test's world; fields drop in this order (daemons first).
struct World {
    env: TestEnv,
    daemon: DaemonHandle,
    notifyd: Notifyd,
    _bus: Bus,
    _provider: Provider,
}

/// A session bus with our notification service, a daemon (callers wait
/// `approval` at most; `--notify` as given) with no polkit, and credential
/// `api` with access `ask`. `None`: skipped (no dbus-daemon).
fn world(test: &str, approval: &str, notify: &str) -> Option<World> {
    if !can_run(test, on_path("dbus-daemon"), "dbus-daemon is not installed") {
        return None;
    }
    let provider = Provider::start(&[svc()]);
    let env = TestEnv::new();
    let bus = Bus::session(&env);
    // No polkit: its bus is a path nobody listens on.
    env.set_env(
        "DBUS_SYSTEM_BUS_ADDRESS",
        format!("unix:path={}", env.root.join("no-system-bus").display()),
    );
    let notifyd = Notifyd::start(&env, Path::new(NOTIFYD), "actions,body");
    let daemon = env.start_daemon_with(
        DaemonOpts::new()
            .env("LATCHKEY_APPROVAL_TIMEOUT", approval)
            .env("LATCHKEY_NOTIFY", notify),
    );
    env.init();
    env.add_provider(TEST_PROVIDER, provider.issuer());
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
    if notify == "auto" {
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
    }
    Some(World {
        env,
        daemon,
        notifyd,
        _bus: bus,
        _provider: provider,
    })
}

/// Runs app `exe` for credential `api`: `ok app-a`, or the error kind.
fn ask(env: &TestEnv, exe: &Path) -> String {
    env.program(exe, &["api"]).run().stdout.trim().to_owned()
}

fn approvers(env: &TestEnv) -> u64 {
    env.latchkey(&["status", "--json"]).json()["approvers"]
        .as_u64()
        .unwrap_or(0)
}

/// An approver connection, attached with `proof` (or deny-only).
fn approver(env: &TestEnv, can_allow: bool) -> latchkey_client::blocking::Client {
    let mut approver = env.client();
    approver.set_timeout(Some(Duration::from_secs(90))).unwrap();
    let proof = can_allow.then(latchkey_tests::env::proof);
    approver
        .request::<ApprovalAttach>(&AttachParams { proof })
        .unwrap();
    approver
}

/// The prompt notification notifyd got next.
#[track_caller]
fn prompt_notification(notifyd: &Notifyd) -> Value {
    notifyd.wait("a prompt notification", |e| {
        e["event"] == "notify"
            && e["summary"]
                .as_str()
                .is_some_and(|s| s.contains("asks to use"))
    })
}

#[test]
fn one_notification_per_prompt_and_only_the_services_deny_counts() {
    let Some(w) = world(
        "one_notification_per_prompt_and_only_the_services_deny_counts",
        "60s",
        "auto",
    ) else {
        return;
    };
    let (env, notifyd) = (&w.env, &w.notifyd);
    // Without polkit the notifier is no approver.
    assert_eq!(approvers(env), 0);
    let mut approver = approver(env, false);
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..20)
            .map(|_| s.spawn(|| ask(env, Path::new(APP_A))))
            .collect();
        let prompt = wait_for(
            "20 waiting calls",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                approver
                    .request::<ApprovalNext>(&ApprovalNextParams {
                        after: 0,
                        wait_secs: Some(1),
                    })
                    .unwrap()
                    .pending
                    .filter(|p| p.waiting == 20)
            },
        );
        let shown = prompt_notification(notifyd);
        let prompts: Vec<Value> = notifyd
            .notifications()
            .into_iter()
            .filter(|n| n["summary"].as_str().unwrap().contains("asks to use"))
            .collect();
        assert_eq!(
            prompts.len(),
            1,
            "one notification for 20 calls: {prompts:?}"
        );
        // Deny only (no polkit to prove an Allow click), and what is asked.
        assert_eq!(
            shown["actions"],
            serde_json::json!(["deny", "Deny"]),
            "{shown}"
        );
        let body = shown["body"].as_str().unwrap();
        let sha = prompt.app.sha256.clone().unwrap();
        for part in [
            format!("program: {APP_A}"),
            format!("sha256: {}", &sha[..16]),
            "credential: api".to_owned(),
            "scopes: api:read".to_owned(),
            "latchkey approve".to_owned(),
        ] {
            assert!(body.contains(&part), "{part:?} in {body}");
        }
        assert_eq!(shown["summary"], "An app asks to use the credential 'api'");
        let id = shown["id"].as_u64().unwrap();

        // An impostor's click is ignored: the calls still wait.
        notifyd.send(&format!("impostor {id} deny"));
        wait_for(
            "the daemon to ignore the impostor",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                env.daemon_log(&w.daemon)
                    .contains("ignored ActionInvoked for a Latchkey notification from a bus name that does not own org.freedesktop.Notifications")
                    .then_some(())
            },
        );
        let still = approver
            .request::<ApprovalNext>(&ApprovalNextParams {
                after: 0,
                wait_secs: Some(1),
            })
            .unwrap()
            .pending
            .expect("the prompt is still open");
        assert_eq!((still.id, still.waiting), (prompt.id, 20));

        // The service's own Deny denies every waiting call.
        notifyd.send(&format!("invoke {id} deny"));
        for call in calls {
            assert_eq!(call.join().unwrap(), "approval_denied");
        }
        notifyd.wait("the notification to be closed", |e| {
            e["event"] == "close" && e["id"] == id
        });
    });
    // No secret ever reaches the desktop.
    let everything = serde_json::to_string(&notifyd.events()).unwrap();
    for secret in [SVC_SECRET, latchkey_tests::env::PASSPHRASE] {
        assert!(!everything.contains(secret), "{secret} in {everything}");
    }
    // The decision is in the audit log (written in batches: waited for).
    wait_for(
        "the decision's audit row",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let db = env.vault_db();
            let mut stmt = db
                .prepare("SELECT coalesce(detail, '') FROM audit WHERE event = 'approval_decided'")
                .unwrap();
            let details: Vec<String> = stmt
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            details
                .iter()
                .any(|d| d.starts_with("denied for ") && d.ends_with("(desktop notification)"))
                .then_some(())
        },
    );
}

#[test]
fn a_prompt_answered_elsewhere_or_timed_out_loses_its_notification() {
    let Some(w) = world(
        "a_prompt_answered_elsewhere_or_timed_out_loses_its_notification",
        "5s",
        "auto",
    ) else {
        return;
    };
    let (env, notifyd) = (&w.env, &w.notifyd);
    let mut approver = approver(env, true);
    std::thread::scope(|s| {
        let call = s.spawn(|| ask(env, Path::new(APP_A)));
        let shown = prompt_notification(notifyd);
        let id = shown["id"].as_u64().unwrap();
        let prompt = approver
            .request::<ApprovalNext>(&ApprovalNextParams {
                after: 0,
                wait_secs: Some(5),
            })
            .unwrap()
            .pending
            .expect("the prompt");
        approver
            .request::<ApprovalDecide>(&DecideParams {
                id: prompt.id,
                decision: Decision::Once,
            })
            .unwrap();
        assert_eq!(call.join().unwrap(), "ok app-a");
        notifyd.wait("the answered prompt's notification closed", |e| {
            e["event"] == "close" && e["id"] == id
        });

        // Nobody answers B: at the deadline the call gives up and the
        // notification goes.
        let call = s.spawn(|| ask(env, Path::new(APP_B)));
        let shown = prompt_notification(notifyd);
        assert!(shown["body"].as_str().unwrap().contains(APP_B), "{shown}");
        let id = shown["id"].as_u64().unwrap();
        assert_eq!(call.join().unwrap(), "approval_required");
        notifyd.wait("the timed-out prompt's notification closed", |e| {
            e["event"] == "close" && e["id"] == id
        });
    });
}

#[test]
fn with_nobody_to_ask_a_call_fails_at_once_and_a_notice_says_how_to_allow() {
    let Some(w) = world(
        "with_nobody_to_ask_a_call_fails_at_once_and_a_notice_says_how_to_allow",
        "60s",
        "auto",
    ) else {
        return;
    };
    let (env, notifyd) = (&w.env, &w.notifyd);
    let r = env.program(Path::new(APP_A), &["api"]).run();
    assert_eq!(r.stdout.trim(), "approval_required", "{}", r.stderr);
    let notice = notifyd.wait("a refusal notice", |e| e["event"] == "notify");
    assert_eq!(notice["actions"], serde_json::json!([]), "{notice}");
    assert!(
        notice["summary"].as_str().unwrap().contains("refused"),
        "{notice}"
    );
    let body = notice["body"].as_str().unwrap();
    assert!(body.contains(APP_A), "{body}");
    assert!(
        body.contains(&format!("latchkey app allow {APP_A} --credential api")),
        "{body}"
    );
    // An app retrying in a loop gets one notice a minute, not one per call.
    for _ in 0..5 {
        assert_eq!(ask(env, Path::new(APP_A)), "approval_required");
    }
    // B's refusal is noticed: it was queued after A's retries.
    assert_eq!(ask(env, Path::new(APP_B)), "approval_required");
    notifyd.wait("B's notice", |e| {
        e["event"] == "notify" && e["body"].as_str().is_some_and(|b| b.contains(APP_B))
    });
    let for_a = notifyd
        .notifications()
        .iter()
        .filter(|n| n["body"].as_str().unwrap().contains(APP_A))
        .count();
    assert_eq!(for_a, 1, "{:?}", notifyd.notifications());
}

#[test]
fn with_notify_never_nothing_is_shown() {
    let Some(w) = world("with_notify_never_nothing_is_shown", "60s", "never") else {
        return;
    };
    let (env, notifyd) = (&w.env, &w.notifyd);
    assert_eq!(ask(env, Path::new(APP_A)), "approval_required");
    let _approver = approver(env, false);
    std::thread::scope(|s| {
        let call = s.spawn(|| ask(env, Path::new(APP_B)));
        let mut approver = approver(env, false);
        let prompt = wait_for(
            "B's prompt",
            Duration::from_secs(30),
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
        );
        approver
            .request::<ApprovalDecide>(&DecideParams {
                id: prompt.id,
                decision: Decision::Deny,
            })
            .unwrap();
        assert_eq!(call.join().unwrap(), "approval_denied");
    });
    assert!(
        notifyd.notifications().is_empty(),
        "{:?}",
        notifyd.notifications()
    );
    assert!(!env.daemon_log(&w.daemon).contains("notification"));
}
