//! `latchkey token`, `header` and `exec` take a quick path (issue 8): the
//! command line is read by hand on its plain spellings, and the protocol
//! check and the vault check travel in the same write as `token.get`. Seen
//! from outside, nothing else changes: a daemon of another protocol or of
//! another vault is refused with the very error every other command gives,
//! help and usage errors are clap's, and an auto-locked vault is unlocked
//! from `LATCHKEY_PASSPHRASE_FILE` as before.
//!
//! Needs `cargo build --workspace --bins`, and Node for the provider test.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use latchkey_client::protocol::PROTOCOL_VERSION;
use latchkey_tests::fixture::svc_env;
use latchkey_tests::provider::Provider;
use latchkey_tests::{fixture, wait_for, DaemonOpts, TestEnv};

/// The hot commands, as the tests run them (`exec` runs `true`).
const HOT: &[&[&str]] = &[
    &["token", "svc"],
    &["header", "svc"],
    &["exec", "svc", "--", "true"],
];

/// A fake daemon on the env's socket that answers `hello` with protocol
/// `protocol` (and no vault path, as older daemons), `status` with the
/// vault `/elsewhere/vault.db`, and every other request with an empty
/// result. Serves connections until the test process ends.
fn fake_daemon(env: &TestEnv, protocol: u32) {
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let listener = UnixListener::bind(&env.socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    let request: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let id = &request["id"];
                    let result = match request["method"].as_str() {
                        Some("hello") => serde_json::json!({
                            "protocol": protocol, "daemon_version": "9.9.9", "pid": 1}),
                        Some("status") => serde_json::json!({
                            "vault": "locked", "vault_path": "/elsewhere/vault.db", "pid": 1,
                            "daemon_version": "9.9.9", "slots": [], "idle_timeout_secs": 0}),
                        _ => serde_json::json!({}),
                    };
                    let reply = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result});
                    if writeln!(writer, "{reply}").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[test]
fn a_daemon_of_another_protocol_is_refused_as_every_command_refuses_it() {
    let env = TestEnv::new();
    fake_daemon(&env, PROTOCOL_VERSION + 1);
    let status = env.latchkey(&["status"]);
    status.code_is(1);
    assert!(
        status.stderr.contains(&format!(
            "daemon speaks protocol {} but this client speaks {PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 1
        )),
        "{}",
        status.stderr
    );
    for args in HOT {
        // With the vault check in the same write, and without.
        for name_vault in [true, false] {
            let mut cli = env.cli(args);
            if !name_vault {
                cli = cli.env_remove("LATCHKEY_VAULT");
            }
            let r = cli.run();
            r.code_is(1);
            assert_eq!(
                r.stderr, status.stderr,
                "{args:?}, vault named: {name_vault}"
            );
            assert_eq!(r.stdout, "", "{args:?}");
        }
    }
}

#[test]
fn the_hot_commands_refuse_a_daemon_of_another_vault_as_every_command_does() {
    let env = TestEnv::new();
    env.start_daemon();
    env.init();
    // The daemon names its vault when it greets, so the check costs no call.
    let client = latchkey_client::blocking::Client::connect_to(&env.socket).unwrap();
    let greeting = client.greeting().expect("connect_to greets");
    assert_eq!(
        greeting.vault_path.as_deref(),
        Some(env.vault.to_str().unwrap())
    );
    drop(client);
    let other = env.root.join("other.db");
    let status = env.cli(&["status"]).env("LATCHKEY_VAULT", &other).run();
    status.code_is(1);
    assert!(
        status.stderr.contains(&format!(
            "serves the vault {}, not {}",
            env.vault.display(),
            other.display()
        )),
        "{}",
        status.stderr
    );
    for args in HOT {
        let r = env.cli(args).env("LATCHKEY_VAULT", &other).run();
        r.code_is(1);
        assert_eq!(r.stderr, status.stderr, "{args:?}");
        let flag = [&["--vault", other.to_str().unwrap()], *args].concat();
        let r = env.latchkey(&flag);
        r.code_is(1);
        assert_eq!(r.stderr, status.stderr, "{flag:?}");
    }
    // The daemon's own vault passes the check (and has no credential `svc`).
    let r = env.latchkey(&["token", "svc"]);
    r.code_is(5);
    assert!(r.stderr.contains("svc"), "{}", r.stderr);
}

#[test]
fn a_daemon_that_names_no_vault_in_its_greeting_is_asked_with_status() {
    let env = TestEnv::new();
    fake_daemon(&env, PROTOCOL_VERSION);
    for args in [&["status"][..], &["token", "svc"], &["header", "svc"]] {
        let r = env.latchkey(args);
        r.code_is(1);
        assert!(
            r.stderr.contains(&format!(
                "serves the vault /elsewhere/vault.db, not {}",
                env.vault.display()
            )),
            "{args:?}: {}",
            r.stderr
        );
    }
}

#[test]
fn help_and_usage_errors_of_the_hot_commands_are_clap_s() {
    let env = TestEnv::new();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["token"], 2, "Usage: latchkey token"),
        (&["token", "svc", "--min-ttl", "soon"], 2, "--min-ttl"),
        (
            &["token", "svc", "--scope", ""],
            2,
            "a scope value must not be empty",
        ),
        (&["token", "svc", "--json", "--json"], 2, "--json"),
        (&["header", "svc", "--json"], 2, "--json"),
        (&["exec", "svc"], 2, "Usage: latchkey exec"),
        (
            &["exec", "svc", "--env", "A=B", "--", "true"],
            2,
            "not a valid environment variable name",
        ),
    ];
    for (args, code, words) in cases {
        let r = env.latchkey(args);
        r.code_is(*code);
        assert!(r.stderr.contains(words), "{args:?}: {}", r.stderr);
    }
    let help = env.latchkey(&["token", "--help"]);
    assert!(
        help.out().contains("--min-ttl <DURATION>"),
        "{}",
        help.stdout
    );
    let version = env.latchkey(&["--version"]);
    assert!(version.out().starts_with("latchkey "), "{}", version.stdout);
    // No daemon was started by any of these.
    assert!(!env.socket.exists());
}

#[test]
fn tokens_pass_the_quick_path_and_an_auto_locked_vault_is_unlocked_from_the_passphrase_file() {
    let p = Provider::start(&[fixture::svc()]);
    let (env, _daemon) = svc_env(&p, DaemonOpts::new().arg("--idle-timeout").arg("1s"), "svc");
    let token = env.token("svc");
    assert_eq!(
        env.latchkey(&["header", "svc"]).out(),
        format!("Authorization: Bearer {token}")
    );
    let exec = env.latchkey(&[
        "-q",
        "exec",
        "svc",
        "--env",
        "T",
        "--",
        "sh",
        "-c",
        "printf %s \"$T\"",
    ]);
    assert_eq!(exec.out(), token);
    // Without LATCHKEY_VAULT: no vault check in the write.
    let bare = env
        .cli(&["token", "svc"])
        .env_remove("LATCHKEY_VAULT")
        .run();
    assert_eq!(bare.out(), token);

    wait_for(
        "the vault to auto-lock",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let status = env.latchkey(&["status", "--json"]).json();
            (status["vault"] == "locked").then_some(())
        },
    );
    let file = env.passphrase_file();
    for name_vault in [true, false] {
        let mut cli = env
            .cli(&["token", "svc"])
            .env("LATCHKEY_PASSPHRASE_FILE", file.as_os_str());
        if !name_vault {
            cli = cli.env_remove("LATCHKEY_VAULT");
        }
        let r = cli.run();
        assert!(!r.out().is_empty());
        if name_vault {
            assert!(
                r.stderr
                    .contains("unlocked it with $LATCHKEY_PASSPHRASE_FILE"),
                "the CLI says it unlocked: {}",
                r.stderr
            );
        }
    }
}
