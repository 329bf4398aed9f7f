//! Key-file slots end to end (issue 12): a vault made with a passphrase
//! gets a machine's key file with `latchkey slot add --key-file` (created
//! 0600), which unlocks it (`latchkey unlock --key-file`), and lets a
//! daemon the CLI starts unlock by itself with only `$LATCHKEY_KEY_FILE`
//! (and the CLI unlock an auto-locked vault with it); `latchkey rekey`
//! keeps the key file working without being given it; `latchkey slot
//! remove` cuts the file off with a clear error while the passphrase still
//! works; the last slot is never removed. The key file's secret never
//! reaches the daemon's log, the audit log or any output.
//!
//! The real binaries against the testkit's token endpoint on loopback
//! (no Node needed). Needs `cargo build --workspace --bins`.

use latchkey_testkit::token_endpoint::TokenEndpoint;
use latchkey_tests::fixture::local_svc;
use latchkey_tests::{wait_for, TestEnv};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn vault_state(env: &TestEnv) -> String {
    env.latchkey(&["status", "--json"]).json()["vault"]
        .as_str()
        .expect("status says the vault's state")
        .to_string()
}

fn slots(env: &TestEnv) -> Vec<Value> {
    env.latchkey(&["slot", "list", "--json"])
        .success()
        .json()
        .as_array()
        .expect("slot list --json is an array")
        .clone()
}

#[test]
fn a_key_file_unlocks_on_its_machine_survives_a_rekey_and_is_cut_off_by_slot_remove() {
    let runtime = latchkey_tests::fixture::runtime();
    let endpoint = runtime
        .block_on(TokenEndpoint::start())
        .expect("the token endpoint binds 127.0.0.1:0");
    let env = TestEnv::new();
    let pass_file = env.passphrase_file();
    let pass_file = pass_file.to_str().unwrap();
    env.init();
    local_svc(&env, &endpoint.url);
    let token = env.token("svc");

    // A new key file: created 0600, a comment then the key line.
    let key_path = env.root.join("machine.key");
    let key_arg = key_path.to_str().unwrap();
    let r = env.latchkey(&[
        "slot",
        "add",
        "--key-file",
        key_arg,
        "--label",
        "ci-runner",
        "--passphrase-file",
        pass_file,
    ]);
    r.success();
    assert!(r.stdout.contains("added key slot"), "{}", r.stdout);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is private from the start");
    let text = std::fs::read_to_string(&key_path).unwrap();
    assert!(text.starts_with("# Latchkey key file"), "{text}");
    let key_line = text
        .lines()
        .find(|l| l.starts_with("latchkey-key-file-v1:"))
        .expect("a key line");
    // The canary: the secret part of the key line.
    let canary = key_line
        .strip_prefix("latchkey-key-file-v1:")
        .unwrap()
        .to_owned();
    assert_eq!(canary.len(), 43);

    let listed = slots(&env);
    let keyfile: Vec<&Value> = listed.iter().filter(|s| s["kind"] == "keyfile").collect();
    assert_eq!(keyfile.len(), 1, "{listed:?}");
    assert_eq!(keyfile[0]["label"], "ci-runner");
    let key_slot = keyfile[0]["id"].as_str().unwrap().to_owned();
    let pass_slot = listed
        .iter()
        .find(|s| s["kind"] == "passphrase")
        .expect("the passphrase slot")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let table = env.latchkey(&["slot", "list"]).success().stdout.clone();
    assert!(
        table.contains(&key_slot) && table.contains("keyfile") && table.contains("ci-runner"),
        "{table}"
    );

    // A refused proof: the key file made for the slot is not left behind.
    let wrong = env.write_secret_file("wrong-pass", "not the passphrase\n");
    let stray = env.root.join("stray.key");
    let r = env.latchkey(&[
        "slot",
        "add",
        "--key-file",
        stray.to_str().unwrap(),
        "--passphrase-file",
        wrong.to_str().unwrap(),
    ]);
    r.code_is(10);
    assert!(
        !stray.exists(),
        "the new key file was removed: {}",
        r.stderr
    );
    // Its parent must exist.
    let r = env.latchkey(&[
        "slot",
        "add",
        "--key-file",
        env.root.join("no/such/dir/m.key").to_str().unwrap(),
        "--passphrase-file",
        pass_file,
    ]);
    r.code_is(2);
    assert!(
        r.stderr.contains("does not exist: create it first"),
        "{}",
        r.stderr
    );

    // The same file again: its key is reused, and the vault has it already.
    let r = env.latchkey(&[
        "slot",
        "add",
        "--key-file",
        key_arg,
        "--passphrase-file",
        pass_file,
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("opens the vault already"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        text,
        "untouched"
    );
    // A file that is not a key file of ours is refused, not replaced.
    let other = env.write_secret_file("notes.txt", "just notes\n");
    let r = env.latchkey(&[
        "slot",
        "add",
        "--key-file",
        other.to_str().unwrap(),
        "--passphrase-file",
        pass_file,
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not a Latchkey key file"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "just notes\n");

    // lock, then unlock with the key file.
    env.latchkey(&["lock"]).success();
    assert_eq!(vault_state(&env), "locked");
    let r = env.latchkey(&["unlock", "--key-file", key_arg]);
    r.success();
    assert!(
        r.stdout
            .contains("vault unlocked with its keyfile (ci-runner) slot"),
        "{}",
        r.stdout
    );
    assert_eq!(env.token("svc"), token);

    // A key file readable by others is refused before it is read.
    let loose = env.root.join("loose.key");
    std::fs::write(&loose, &text).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = env.latchkey(&["unlock", "--key-file", loose.to_str().unwrap()]);
    r.code_is(2);
    assert!(r.stderr.contains("chmod 600"), "{}", r.stderr);

    // A daemon the CLI starts with only $LATCHKEY_KEY_FILE unlocks at start
    // and serves; once it auto-locks, the CLI unlocks with the file too.
    env.latchkey(&["daemon", "stop"]).success();
    env.set_env("LATCHKEY_KEY_FILE", &key_path);
    env.set_env("LATCHKEY_IDLE_TIMEOUT", "3s");
    let r = env.latchkey(&["token", "svc"]);
    assert_eq!(r.out(), token, "{}", r.stderr);
    assert!(
        env.cli_daemon_log().contains("vault unlocked at start"),
        "{}",
        env.cli_daemon_log()
    );
    wait_for(
        "the vault to auto-lock",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || (vault_state(&env) == "locked").then_some(()),
    );
    let r = env.latchkey(&["token", "svc"]);
    assert_eq!(r.out(), token, "{}", r.stderr);
    assert!(
        r.stderr.contains("unlocked it with $LATCHKEY_KEY_FILE"),
        "{}",
        r.stderr
    );
    env.latchkey(&["daemon", "stop"]).success();
    env.remove_env("LATCHKEY_IDLE_TIMEOUT");
    env.remove_env("LATCHKEY_KEY_FILE");

    // rekey with the passphrase alone: the key file still opens the vault.
    env.latchkey(&["unlock", "--passphrase-file", pass_file])
        .success();
    let r = env.latchkey(&["rekey", "--passphrase-file", pass_file]);
    r.success();
    assert!(r.stdout.contains("rewrapped 2 key slots"), "{}", r.stdout);
    assert!(r.stderr.contains("key-file slot"), "{}", r.stderr);
    env.latchkey(&["lock"]).success();
    env.latchkey(&["unlock", "--key-file", key_arg]).success();
    assert_eq!(env.token("svc"), token, "the secrets survived the rekey");

    // slot remove: the key file is cut off, the passphrase still works.
    env.latchkey(&["slot", "remove", &key_slot, "--passphrase-file", pass_file])
        .success();
    env.latchkey(&["lock"]).success();
    let r = env.latchkey(&["unlock", "--key-file", key_arg]);
    r.code_is(10);
    assert!(
        r.stderr.contains(&format!(
            "the key file {key_arg} does not open any key slot of this vault: was its slot removed? add one with `latchkey slot add --key-file`"
        )),
        "{}",
        r.stderr
    );
    env.latchkey(&["unlock", "--passphrase-file", pass_file])
        .success();
    assert_eq!(slots(&env).len(), 1);

    // Both variables set, the key file cut off: the daemon the CLI starts,
    // and the CLI after an auto-lock, fall back to the passphrase file.
    env.latchkey(&["daemon", "stop"]).success();
    env.set_env("LATCHKEY_KEY_FILE", &key_path);
    env.set_env("LATCHKEY_PASSPHRASE_FILE", pass_file);
    env.set_env("LATCHKEY_IDLE_TIMEOUT", "3s");
    let r = env.latchkey(&["token", "svc"]);
    assert_eq!(r.out(), token, "{}", r.stderr);
    let log = env.cli_daemon_log();
    assert!(
        log.contains(&format!(
            "could not unlock the vault at start with the key file {key_arg}"
        )),
        "{log}"
    );
    wait_for(
        "the vault to auto-lock",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || (vault_state(&env) == "locked").then_some(()),
    );
    let r = env.latchkey(&["token", "svc"]);
    assert_eq!(r.out(), token, "{}", r.stderr);
    assert!(
        r.stderr.contains("$LATCHKEY_KEY_FILE could not unlock it")
            && r.stderr
                .contains("unlocked it with $LATCHKEY_PASSPHRASE_FILE"),
        "the CLI says which variable failed and which worked: {}",
        r.stderr
    );
    env.latchkey(&["daemon", "stop"]).success();
    for var in [
        "LATCHKEY_KEY_FILE",
        "LATCHKEY_PASSPHRASE_FILE",
        "LATCHKEY_IDLE_TIMEOUT",
    ] {
        env.remove_env(var);
    }
    env.latchkey(&["unlock", "--passphrase-file", pass_file])
        .success();

    // The last slot is never removed.
    let r = env.latchkey(&["slot", "remove", &pass_slot, "--passphrase-file", pass_file]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("is the last one that opens the vault")
            && r.stderr.contains("latchkey slot add --key-file PATH"),
        "{}",
        r.stderr
    );
    env.latchkey(&["lock"]).success();
    env.latchkey(&["unlock", "--passphrase-file", pass_file])
        .success();

    // The audit log names the slots, never their keys.
    let audit = env.latchkey(&["audit", "--json"]).success().stdout.clone();
    let events: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for event in ["slot_added", "slot_removed"] {
        let row = events
            .iter()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("no {event} row: {audit}"));
        let detail = row["detail"].as_str().unwrap();
        assert!(
            detail.contains(&key_slot) && detail.contains("ci-runner"),
            "{detail}"
        );
    }
    assert!(
        events.iter().any(|r| r["event"] == "unlock_failed"
            && r["detail"]
                .as_str()
                .unwrap_or("")
                .contains("wrong key file")),
        "the wrong key file is audited as a failed unlock: {audit}"
    );

    // The canary: nowhere but in the file.
    let logs = env.all_daemon_logs();
    assert!(!logs.contains(&canary), "the daemon's log holds the key");
    assert!(!audit.contains(&canary), "the audit log holds the key");
    for run in env.transcript() {
        assert!(
            !run.stdout.contains(&canary) && !run.stderr.contains(&canary),
            "`latchkey {}` printed the key",
            run.args.join(" ")
        );
    }
}

/// The slot's id of the key-file slot labelled `label`.
fn slot_id(env: &TestEnv, label: &str) -> String {
    slots(env)
        .iter()
        .find(|s| s["label"] == label)
        .unwrap_or_else(|| panic!("no slot labelled {label}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Two machines sharing a PostgreSQL vault (`source .ci/postgres-env.sh`),
/// each with its own key file: each unlocks with its own, a rekey on one
/// keeps the other's working without its file, and removing one machine's
/// slot cuts off that machine only.
#[test]
fn each_machine_of_a_shared_postgres_vault_unlocks_with_its_own_key_file() {
    let one = TestEnv::new();
    let Some(db) = latchkey_tests::postgres::TestDatabase::create(&one) else {
        return;
    };
    db.serve(&one);
    one.init();
    let pass = one.passphrase_file();
    let pass = pass.to_str().unwrap();
    let two = TestEnv::new();
    db.serve(&two);
    let pass_two = two.passphrase_file();
    let pass_two = pass_two.to_str().unwrap();
    two.latchkey(&["unlock", "--passphrase-file", pass_two])
        .success();

    let key_one = one.root.join("one.key");
    let key_two = two.root.join("two.key");
    for (env, key, label, pass) in [
        (&one, &key_one, "one", pass),
        (&two, &key_two, "two", pass_two),
    ] {
        env.latchkey(&[
            "slot",
            "add",
            "--key-file",
            key.to_str().unwrap(),
            "--label",
            label,
            "--passphrase-file",
            pass,
        ])
        .success();
    }
    assert_eq!(
        slots(&one).len(),
        3,
        "both machines' slots, in the one vault"
    );

    // Each machine opens the vault with its own file only.
    for (env, key) in [(&one, &key_one), (&two, &key_two)] {
        env.latchkey(&["lock"]).success();
        env.latchkey(&["unlock", "--key-file", key.to_str().unwrap()])
            .success();
    }
    // A rekey on machine one, which has only its own file and the passphrase.
    one.latchkey(&["rekey", "--passphrase-file", pass])
        .success();
    two.latchkey(&["lock"]).success();
    two.latchkey(&["unlock", "--key-file", key_two.to_str().unwrap()])
        .success();

    // Machine one cuts machine two off; its own file still works.
    let id = slot_id(&one, "two");
    one.latchkey(&["slot", "remove", &id, "--passphrase-file", pass])
        .success();
    two.latchkey(&["lock"]).success();
    two.latchkey(&["unlock", "--key-file", key_two.to_str().unwrap()])
        .code_is(10);
    one.latchkey(&["lock"]).success();
    one.latchkey(&["unlock", "--key-file", key_one.to_str().unwrap()])
        .success();
}
