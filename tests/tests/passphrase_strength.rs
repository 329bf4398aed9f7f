//! New passphrases are strong ones, end to end with the real binaries: a
//! short, a guessable and a listed passphrase refused at `init` and at
//! `passphrase change` (exit 2, the reason and the fix, never the
//! passphrase), from files as CI passes them; a refused prompt asks again
//! on the terminal (a real pty); the vault untouched by every refusal.
//!
//! Needs `cargo build --workspace --bins`.

use std::process::Command;

use latchkey_tests::TestEnv;

/// Exit code of a refused passphrase (`usage`).
const WEAK: i32 = 2;

#[track_caller]
fn refused(r: &latchkey_tests::cli::CliResult, why: &str, passphrase: &str) {
    assert_eq!(r.code, WEAK, "{}", r.stderr);
    assert!(r.stderr.contains(why), "{}", r.stderr);
    assert!(
        r.stderr.contains("random words"),
        "names a better way: {}",
        r.stderr
    );
    assert!(
        !r.stderr.contains(passphrase),
        "echoes the passphrase: {}",
        r.stderr
    );
    assert!(!r.stdout.contains(passphrase));
}

#[test]
fn weak_passphrases_are_refused_at_init_and_change() {
    let env = TestEnv::new();
    for (weak, why) in [
        ("Zq8#pL!x", "too short (8 characters"),
        ("password1234", "too easy to guess"),
        ("qwertyuiop12", "too easy to guess"),
    ] {
        let file = env.write_secret_file("weak", weak);
        let r = env.latchkey(&["init", "--passphrase-file", file.to_str().unwrap()]);
        refused(&r, why, weak);
    }
    // From the environment variable CI runners use, too.
    let weak = env.write_secret_file("weak-env", "letmein12345");
    let r = env
        .cli(&["init"])
        .env("LATCHKEY_PASSPHRASE_FILE", weak.as_os_str())
        .run();
    refused(&r, "too easy to guess", "letmein12345");
    // A breached-password list the user names: plain and Pwned Passwords lines.
    let strong = "velvet-quarry-ninety-lantern";
    let listed = env.write_secret_file("listed", strong);
    let list = env.write_secret_file(
        "breached.txt",
        "hunter2\n8C6E0E9F1BAB1D2D8F8F2E5D7A1A8B7C6D5E4F3A:3\nvelvet-quarry-ninety-lantern\n",
    );
    let r = env.latchkey(&[
        "init",
        "--passphrase-file",
        listed.to_str().unwrap(),
        "--breached-list",
        list.to_str().unwrap(),
    ]);
    refused(&r, "breached-password list", strong);
    let r = env
        .cli(&["init", "--passphrase-file", listed.to_str().unwrap()])
        .env("LATCHKEY_BREACHED_PASSWORDS", list.as_os_str())
        .run();
    refused(&r, "breached-password list", strong);
    // Nothing was created by any refusal.
    let status = env.latchkey(&["status", "--json"]).json();
    assert_eq!(status["vault"], "uninitialized", "{status}");

    env.init();
    let old = env.passphrase_file();
    let short = env.write_secret_file("short", "tiny pass");
    let r = env.latchkey(&[
        "passphrase",
        "change",
        "--old-file",
        old.to_str().unwrap(),
        "--new-file",
        short.to_str().unwrap(),
    ]);
    refused(&r, "too short (9 characters", "tiny pass");
    // The old passphrase still opens the vault; a strong new one is taken.
    env.latchkey(&["lock"]).success();
    env.latchkey(&["unlock", "--passphrase-file", old.to_str().unwrap()])
        .success();
    env.latchkey(&[
        "passphrase",
        "change",
        "--old-file",
        old.to_str().unwrap(),
        "--new-file",
        listed.to_str().unwrap(),
    ])
    .success();
    env.latchkey(&["lock"]).success();
    env.latchkey(&["unlock", "--passphrase-file", listed.to_str().unwrap()])
        .success();
}

/// Drives `latchkey init` on a real pty (python's `pty`): answers each
/// passphrase prompt with the next answer, prints what the terminal showed.
const PTY_DRIVER: &str = r#"
import os, pty, sys, select, termios, time
answers = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "init"])
seen, pending = b"", b""
while True:
    ready, _, _ = select.select([fd], [], [], 30)
    if not ready:
        sys.exit("timed out; the terminal showed: %r" % seen)
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
    pending += chunk
    if pending.rstrip().endswith(b":") and answers:
        # Type as a person does: once the prompt has turned echo off.
        deadline = time.monotonic() + 10
        while termios.tcgetattr(fd)[3] & termios.ECHO and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(fd, answers.pop(0).encode() + b"\n")
        pending = b""
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn a_refused_prompt_asks_again_on_the_terminal() {
    let env = TestEnv::new();
    let mut cmd = env.command(std::path::Path::new("python3"));
    cmd.args(["-c", PTY_DRIVER])
        .arg(env.bin("latchkey"))
        .args(["password1234", "password1234"])
        .args([
            "velvet-quarry-ninety-lantern",
            "velvet-quarry-ninety-lantern",
        ]);
    let out = run(cmd);
    assert!(out.status.success(), "{}", shown(&out));
    let shown = shown(&out);
    assert!(shown.contains("too easy to guess"), "{shown}");
    assert!(shown.contains("Try another."), "{shown}");
    assert!(shown.contains("created vault"), "{shown}");
    assert!(!shown.contains("password1234"), "no echo: {shown}");
    env.latchkey(&["lock"]).success();
    let file = env.write_secret_file("chosen", "velvet-quarry-ninety-lantern");
    env.latchkey(&["unlock", "--passphrase-file", file.to_str().unwrap()])
        .success();
}

fn run(mut cmd: Command) -> std::process::Output {
    cmd.output()
        .expect("python3 runs (it is on every CI machine)")
}

fn shown(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
