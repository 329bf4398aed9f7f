//! Memory hygiene of the real daemon: its key pages are locked in RAM
//! while it is unlocked (and stay locked: they are never unlocked), and a
//! release build refuses the test suite's KDF switch.
//!
//! Needs `cargo build --workspace --bins`; the release test also needs
//! `cargo build --release -p latchkey-daemon` and says so when it is missing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use latchkey_tests::TestEnv;

/// One field of `/proc/<pid>/status` in kB (`VmLck`, `VmRSS`, ...).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{field}: {line:?}: {e}"))
}

/// The daemon's locked-memory limit, to explain a refusal.
fn memlock_limit(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .unwrap_or("Max locked memory: unknown")
        .to_string()
}

#[test]
fn an_unlocked_daemons_key_pages_are_locked_and_stay_locked() {
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.init();
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    assert!(
        !log.contains("key memory is not locked"),
        "this machine refused to lock the daemon's key memory ({}); raise RLIMIT_MEMLOCK (`ulimit -l`) to run this test\n--- log ---\n{log}",
        memlock_limit(daemon.pid)
    );
    let unlocked = status_kb(daemon.pid, "VmLck");
    assert!(
        unlocked >= 4,
        "an unlocked daemon has {unlocked} kB locked; its key pages should be (limit: {})",
        memlock_limit(daemon.pid)
    );
    env.latchkey(&["lock"]).success();
    let locked = status_kb(daemon.pid, "VmLck");
    assert!(
        locked >= 4,
        "after `latchkey lock` only {locked} kB are locked: key pages must never be munlocked"
    );
    env.latchkey(&[
        "unlock",
        "--passphrase-file",
        env.passphrase_file().to_str().unwrap(),
    ])
    .success();
    assert!(status_kb(daemon.pid, "VmLck") >= 4);
}

/// `target/release/latchkeyd` next to the debug binaries, if one was built.
fn release_daemon(env: &TestEnv) -> Option<PathBuf> {
    let debug = env.bin("latchkeyd");
    let target = debug.parent()?.parent()?;
    let release = target.join("release").join("latchkeyd");
    release.is_file().then_some(release)
}

#[test]
fn a_release_daemon_refuses_the_test_kdf_switch() {
    let env = TestEnv::new();
    let Some(binary) = release_daemon(&env) else {
        latchkey_tests::skip(&format!(
            "no release latchkeyd next to {}; \
             build one with `cargo build --release -p latchkey-daemon` to run it \
             (the rule itself is unit-tested with release=true in daemon/src/vault/crypto.rs)",
            env.bin("latchkeyd").display()
        ));
        return;
    };
    let mut child = Command::new(&binary)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("XDG_RUNTIME_DIR", env.root.join("run"))
        .env("XDG_DATA_HOME", env.root.join("data"))
        .env("HOME", env.root.join("home"))
        .env("LATCHKEY_SOCKET", &env.socket)
        .env("LATCHKEY_VAULT", &env.vault)
        .env("LATCHKEY_INSECURE_TEST_KDF", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the release daemon {} still runs with LATCHKEY_INSECURE_TEST_KDF set \
                 (if it predates the refusal, rebuild it: `cargo build --release -p latchkey-daemon`)",
                binary.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "exit {status}; stderr: {stderr}");
    assert!(
        stderr.contains("LATCHKEY_INSECURE_TEST_KDF")
            && stderr.contains(
                "unset it: it weakens the vault's key derivation and exists only for the test suite"
            ),
        "{stderr}"
    );
    assert!(!env.socket.exists(), "it refused before binding the socket");
    assert!(!env.vault.exists(), "it refused before creating a vault");
}
