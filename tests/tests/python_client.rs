//! The Python client (`clients/python`) against the real daemon: a daemon
//! with an unlocked vault and a client-credentials credential at the test
//! authorization server, then `python3 -m unittest` (the client's own
//! tests, `clients/python/tests`) with the socket in the environment, and
//! `mypy --strict` over the package and its tests, so CI checks the types.
//! What Python printed must hold neither the client secret nor the token.
//!
//! Needs `cargo build --workspace --bins`, `npm ci --prefix tests/provider`,
//! `python3` and mypy (`.ci/test` installs python3-mypy); without them the
//! tests skip outside CI and fail in CI.

use std::path::{Path, PathBuf};
use std::process::Output;

use latchkey_tests::desktop::{can_run, on_path};
use latchkey_tests::fixture::{svc, svc_env, SVC_SECRET};
use latchkey_tests::provider::Provider;
use latchkey_tests::DaemonOpts;

const CREDENTIAL: &str = "api";

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .join("clients/python")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn python_client_against_the_daemon() {
    if !can_run(
        "python_client_against_the_daemon",
        on_path("python3"),
        "python3 is not installed",
    ) {
        return;
    }
    let p = Provider::start(&[svc()]);
    let (env, _daemon) = svc_env(&p, DaemonOpts::new(), CREDENTIAL);
    // The token the Python client will be handed (the daemon's cached one).
    let token = env.token(CREDENTIAL);

    let dir = python_dir();
    let output = env
        .command(Path::new("python3"))
        .args(["-m", "unittest", "discover", "-v", "-s", "tests", "-t", "."])
        .current_dir(&dir)
        .env("PYTHONPATH", &dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("LATCHKEY_TEST_CREDENTIAL", CREDENTIAL)
        .env("LATCHKEY_TEST_SCOPE", "api:read")
        .env("LATCHKEY_TEST_CANARY", SVC_SECRET)
        .output()
        .expect("python3 runs");
    let printed = text(&output);
    assert!(
        output.status.success(),
        "the Python client's tests failed:\n{printed}"
    );
    assert!(
        printed.contains("\nOK") && !printed.contains("skipped"),
        "every Python test must run against the daemon:\n{printed}"
    );
    assert!(
        !printed.contains(&token),
        "the access token leaked into Python's output:\n{printed}"
    );
    assert!(
        !printed.contains(SVC_SECRET),
        "the client secret leaked into Python's output"
    );
}

/// `mypy --strict` over the package and its tests: the client is fully typed.
#[test]
fn python_client_is_fully_typed() {
    let dir = python_dir();
    let mypy = if on_path("mypy") {
        Some(vec!["mypy".to_string()])
    } else if on_path("python3")
        && std::process::Command::new("python3")
            .args(["-c", "import mypy"])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        Some(vec!["python3".into(), "-m".into(), "mypy".into()])
    } else {
        None
    };
    let Some(mypy) = mypy else {
        can_run(
            "python_client_is_fully_typed",
            false,
            "mypy is not installed",
        );
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(&mypy[0])
        .args(&mypy[1..])
        .args(["--strict", "--cache-dir"])
        .arg(cache.path())
        .args(["latchkey", "tests"])
        .current_dir(&dir)
        .output()
        .expect("mypy runs");
    assert!(
        output.status.success(),
        "mypy --strict found problems in clients/python:\n{}",
        text(&output)
    );
}
