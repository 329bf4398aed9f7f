//! The keyring key slot against real OS keyrings: the Secret Service (a
//! real gnome-keyring over D-Bus, when `DBUS_SESSION_BUS_ADDRESS` is set —
//! CI sources `.ci/keyring-env.sh` for one) and the kernel's keyutils. For
//! each: `init --keyring`, `lock`, `unlock --keyring`, and a restarted
//! daemon that unlocks itself. Without any keyring, `init --keyring` fails
//! clearly and a passphrase vault still works.
//!
//! With `LATCHKEY_TEST_REQUIRE_KEYRING=1` (CI) a missing Secret Service is a
//! failure; otherwise the test records a skip (`latchkey_tests::skip`) and passes. Kernel
//! keyutils is skipped, with the reason, wherever the sandbox refuses the
//! keyctl system call (e.g. Docker's default seccomp profile).
//!
//! Needs `cargo build --workspace --bins`; no authorization server.

use latchkey_tests::{DaemonHandle, DaemonOpts, TestEnv};
use serde_json::Value;

fn keyring_required() -> bool {
    std::env::var_os("LATCHKEY_TEST_REQUIRE_KEYRING").is_some_and(|v| v == "1")
}

/// Skips (prints and returns `true`) or fails, as `LATCHKEY_TEST_REQUIRE_KEYRING` says.
fn skip_secret_service(why: &str) -> bool {
    if keyring_required() {
        panic!("LATCHKEY_TEST_REQUIRE_KEYRING=1 but {why}; `source .ci/keyring-env.sh` starts one");
    }
    latchkey_tests::skip(&format!(
        "{why}; `source .ci/keyring-env.sh` to run this test"
    ));
    true
}

fn status(env: &TestEnv) -> Value {
    env.latchkey(&["status", "--json"]).json()
}

fn provider_names(env: &TestEnv) -> Vec<String> {
    env.latchkey(&["provider", "list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// `init --keyring --passphrase-file` with the env's backend. `Err` carries
/// the CLI's stderr when the keyring is unavailable (exit 10).
fn init_with_keyring(env: &TestEnv) -> Result<(), String> {
    let pass = env.passphrase_file();
    let r = env.latchkey(&[
        "init",
        "--keyring",
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    if r.code == 10 {
        return Err(r.stderr);
    }
    r.success();
    Ok(())
}

/// The round trip both backends must pass, on a vault already created
/// with a passphrase and a keyring slot by the daemon `first`. Returns the
/// restarted daemon, which unlocked itself.
fn keyring_round_trip(env: &TestEnv, backend: &str, first: DaemonHandle) -> DaemonHandle {
    let s = status(env);
    assert_eq!(s["vault"], "unlocked");
    let slots: Vec<(String, Option<String>)> = s["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["backend"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert!(slots.contains(&("passphrase".into(), None)), "{slots:?}");
    assert!(
        slots.contains(&("keyring".into(), Some(backend.into()))),
        "{slots:?}"
    );
    env.latchkey(&[
        "provider",
        "add",
        "local",
        "--token-endpoint",
        "http://127.0.0.1:9/token",
    ])
    .success();

    // lock, then unlock with the keyring only.
    env.latchkey(&["lock"]).success();
    assert_eq!(status(env)["vault"], "locked");
    let r = env.latchkey(&["unlock", "--keyring"]);
    assert!(r.out().contains("keyring slot"), "{}", r.stdout);
    assert_eq!(status(env)["vault"], "unlocked");
    assert_eq!(
        provider_names(env),
        ["local"],
        "the keyring slot opens the same data key"
    );

    // Plain `unlock` with no passphrase source and no terminal uses the keyring slot.
    env.latchkey(&["lock"]).success();
    let r = env.latchkey(&["unlock"]);
    assert!(r.out().contains("keyring slot"), "{}", r.stdout);

    // The passphrase slot still works alongside.
    env.latchkey(&["lock"]).success();
    let pass = env.passphrase_file();
    let r = env.latchkey(&["unlock", "--passphrase-file", pass.to_str().unwrap()]);
    assert!(r.out().contains("passphrase slot"), "{}", r.stdout);

    // A restarted daemon, given no passphrase, unlocks itself from the keyring.
    assert!(env.stop_daemon(&first).success());
    let second = env.start_daemon();
    assert_eq!(
        status(env)["vault"],
        "unlocked",
        "{}",
        env.daemon_log(&second)
    );
    assert_eq!(provider_names(env), ["local"]);
    let log = env.daemon_log(&second);
    assert!(log.contains("vault unlocked at start"), "{log}");
    second
}

#[test]
fn secret_service_slot_unlocks_and_a_restarted_daemon_unlocks_itself() {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
        && skip_secret_service("no Secret Service: DBUS_SESSION_BUS_ADDRESS is not set")
    {
        return;
    }
    let env = TestEnv::new();
    env.pass_env("DBUS_SESSION_BUS_ADDRESS");
    env.set_env("LATCHKEY_KEYRING_BACKEND", "secret-service");
    let first = env.start_daemon();
    if let Err(stderr) = init_with_keyring(&env) {
        if skip_secret_service(&format!(
            "the Secret Service on DBUS_SESSION_BUS_ADDRESS is not usable: {}",
            stderr.trim()
        )) {
            return;
        }
    }
    let _restarted = keyring_round_trip(&env, "secret-service", first);
    // The entry stays in the Secret Service's default collection, under
    // service "latchkey" (CI's keyring is a throwaway one in /tmp).
}

/// Raw keyctl(2), for the availability probe and cleanup only.
mod keyctl {
    const KEYCTL_GET_KEYRING_ID: libc::c_ulong = 0;
    const KEYCTL_SEARCH: libc::c_ulong = 10;
    const KEYCTL_INVALIDATE: libc::c_ulong = 21;
    const KEY_SPEC_USER_KEYRING: libc::c_long = -4;

    /// Whether keyctl works at all here; `Err` says why not.
    pub fn probe() -> Result<(), String> {
        // SAFETY: KEYCTL_GET_KEYRING_ID reads two integer arguments only.
        let id = unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_GET_KEYRING_ID,
                KEY_SPEC_USER_KEYRING,
                0,
            )
        };
        if id < 0 {
            return Err(format!(
                "keyctl(KEYCTL_GET_KEYRING_ID, @u) failed: {} (a seccomp filter or a kernel without keys)",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Invalidates the `user` key with this description in `@u`, if it is
    /// there. Returns whether one was found.
    pub fn invalidate_user_key(description: &str) -> bool {
        let kind = std::ffi::CString::new("user").unwrap();
        let desc = std::ffi::CString::new(description).unwrap();
        // SAFETY: KEYCTL_SEARCH reads two NUL-terminated strings that live
        // across the call; no memory is written.
        let id = unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_SEARCH,
                KEY_SPEC_USER_KEYRING,
                kind.as_ptr(),
                desc.as_ptr(),
                0,
            )
        };
        if id < 0 {
            return false;
        }
        // SAFETY: KEYCTL_INVALIDATE takes one integer (the key id).
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, id) == 0 }
    }
}

/// `latchkey:vault-<vault id>/slot-<slot id>`: the kernel key of the vault's keyring slot.
fn keyutils_description(env: &TestEnv) -> String {
    let db = env.vault_db();
    let vault_id: String = db
        .query_row("SELECT value FROM meta WHERE key = 'vault_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let slot_id: String = db
        .query_row("SELECT id FROM key_slots WHERE kind = 'keyring'", [], |r| {
            r.get(0)
        })
        .unwrap();
    format!("latchkey:vault-{vault_id}/slot-{slot_id}")
}

#[test]
fn keyutils_slot_unlocks_survives_restarts_and_a_lost_key_falls_back_to_the_passphrase() {
    if let Err(why) = keyctl::probe() {
        latchkey_tests::skip(&format!(
            "kernel keyutils is not usable in this sandbox: {why}"
        ));
        return;
    }
    let env = TestEnv::new();
    env.set_env("LATCHKEY_KEYRING_BACKEND", "keyutils");
    let first = env.start_daemon();
    if let Err(stderr) = init_with_keyring(&env) {
        panic!("keyctl works in this process, but the daemon's keyutils slot failed: {stderr}");
    }
    let second = keyring_round_trip(&env, "keyutils", first);
    let description = keyutils_description(&env);

    // The kernel key goes away (as at a reboot): the vault stays locked at
    // the next start, `unlock --keyring` says what happened, and the
    // passphrase still opens it. (This also removes the test's key from
    // the user keyring.)
    assert!(env.stop_daemon(&second).success());
    assert!(
        keyctl::invalidate_user_key(&description),
        "the daemon's key {description} is in the user keyring"
    );
    let third = env.start_daemon();
    assert_eq!(
        status(&env)["vault"],
        "locked",
        "{}",
        env.daemon_log(&third)
    );
    let r = env.latchkey(&["unlock", "--keyring"]);
    r.code_is(10);
    assert!(
        r.stderr.contains("keyutils") && r.stderr.contains("no key"),
        "{}",
        r.stderr
    );
    let pass = env.passphrase_file();
    env.latchkey(&["unlock", "--passphrase-file", pass.to_str().unwrap()])
        .success();
    assert_eq!(provider_names(&env), ["local"]);
}

#[test]
fn without_a_keyring_init_keyring_fails_clearly_and_a_passphrase_vault_works() {
    // The CLI and daemon get a clean environment: no D-Bus session bus, and
    // an XDG_RUNTIME_DIR with no `bus` in it.
    let env = TestEnv::new();
    env.set_env("LATCHKEY_KEYRING_BACKEND", "secret-service");
    let pass = env.passphrase_file();
    let pass = pass.to_str().unwrap();
    for args in [
        &["init", "--keyring", "--passphrase-file", pass][..],
        &["init", "--keyring"],
    ] {
        let r = env.latchkey(args);
        r.code_is(10);
        assert!(
            r.stderr.contains("no usable OS keyring") && r.stderr.contains("D-Bus"),
            "the error says what is missing: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("--passphrase-file"),
            "and what to do instead: {}",
            r.stderr
        );
        assert_eq!(
            status(&env)["vault"],
            "uninitialized",
            "a failed init leaves no vault"
        );
    }
    let r = env.latchkey(&["init", "--passphrase-file", pass]);
    r.success();
    let slots = status(&env)["slots"].clone();
    assert_eq!(slots.as_array().unwrap().len(), 1, "{slots}");
    assert_eq!(slots[0]["kind"], "passphrase");

    // A vault without a keyring slot cannot be opened with one.
    env.latchkey(&["lock"]).success();
    let r = env.latchkey(&["unlock", "--keyring"]);
    r.code_is(10);
    assert!(r.stderr.contains("no keyring slot"), "{}", r.stderr);
    env.latchkey(&["unlock", "--passphrase-file", pass])
        .success();

    // An unknown backend name is refused at daemon start, by name.
    env.latchkey(&["daemon", "stop"]).success();
    let (status, log) = env.run_daemon_expecting_exit(
        DaemonOpts::new().env("LATCHKEY_KEYRING_BACKEND", "gnome"),
        std::time::Duration::from_secs(20),
    );
    assert!(!status.success(), "{log}");
    assert!(log.contains("unknown keyring backend 'gnome'"), "{log}");
}
