//! `latchkey daemon status` names the daemon's log file only when the
//! daemon writes one (the daemon says so in `status`): a daemon the CLI
//! started logs to `latchkeyd.log` beside the socket; a foreground one
//! logs to its terminal or a pipe, and no file is named.
//!
//! Needs `cargo build --workspace --bins`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use latchkey_tests::TestEnv;

fn log_line(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with("log"))
        .map(str::trim)
}

#[test]
fn a_cli_started_daemon_names_its_log_file() {
    let env = TestEnv::new();
    env.latchkey(&["daemon", "start"]).success();
    let r = env.latchkey(&["daemon", "status"]);
    r.success();
    let log = env.socket.with_file_name("latchkeyd.log");
    let line = log_line(&r.stdout).unwrap_or_else(|| panic!("no log line:\n{}", r.stdout));
    assert!(
        line.ends_with(&log.display().to_string()),
        "{line} names {}",
        log.display()
    );
    assert!(env.cli_daemon_log().contains("latchkeyd listening"));
    env.latchkey(&["daemon", "stop"]).success();
}

#[test]
fn a_foreground_daemon_names_no_log_file() {
    let env = TestEnv::new();
    let mut child = env
        .command(&env.bin("latchkeyd"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("latchkeyd starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let r = env.latchkey(&["daemon", "status"]);
        if r.stdout.contains("running (pid") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not answer: {}",
            r.stderr
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status
            .stdout
            .contains(&format!("running (pid {})", child.id())),
        "{}",
        status.stdout
    );
    assert_eq!(log_line(&status.stdout), None, "{}", status.stdout);
    let json = env.latchkey(&["status", "--json"]).json();
    assert!(json.get("log_file").is_none(), "{json}");
    child.kill().ok();
    child.wait().ok();
}
