//! `latchkey exec --mask`: the real binaries, a child that writes its
//! token in pieces (with pauses between them, so they arrive in separate
//! reads) to stdout and stderr; what reaches us has `***` instead, the
//! rest of the output unchanged, and the child's exit code is ours.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use latchkey_tests::fixture::{svc, svc_env};
use latchkey_tests::provider::Provider;
use latchkey_tests::DaemonOpts;

/// Prints the token's first 5 bytes, pauses, the rest; the whole token on
/// stderr; then a lone prefix of it at the end; exits 7.
const CHILD: &str = r#"t=$LATCHKEY_TOKEN
a=$(printf %s "$t" | cut -c1-5)
b=$(printf %s "$t" | cut -c6-)
printf 'before %s' "$a"
sleep 0.3
printf '%s after\n' "$b"
printf 'err %s%s\n' "$t" "$t" >&2
sleep 0.2
printf 'tail %s' "$a"
exit 7"#;

#[test]
fn the_token_is_masked_in_output_written_in_pieces_and_the_exit_code_kept() {
    let p = Provider::start(&[svc()]);
    let (env, _d) = svc_env(&p, DaemonOpts::new(), "svc");
    let token = env.token("svc");
    assert!(token.len() > 5);
    let r = env
        .cli(&["exec", "svc", "--mask", "--", "sh", "-c", CHILD])
        .run();
    assert_eq!(r.code, 7, "the child's exit code: {r:?}");
    assert!(!r.stdout.contains(&token) && !r.stderr.contains(&token));
    assert_eq!(r.stdout, format!("before *** after\ntail {}", &token[..5]));
    assert!(r.stderr.contains("err ******\n"), "{}", r.stderr);

    // Without --mask the same child shows the token (the test's control).
    let r = env.cli(&["exec", "svc", "--", "sh", "-c", CHILD]).run();
    assert_eq!(r.code, 7);
    assert!(r.stdout.contains(&token));
    // A child that succeeds: exit 0, output as is.
    let r = env
        .cli(&[
            "exec",
            "svc",
            "--mask",
            "--",
            "sh",
            "-c",
            "echo plain; echo more >&2",
        ])
        .run();
    r.success();
    assert_eq!(r.stdout, "plain\n");
    assert!(r.stderr.contains("more\n"));
}

#[test]
fn a_signal_sent_to_latchkey_reaches_the_masked_command() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let p = Provider::start(&[svc()]);
    let (env, _d) = svc_env(&p, DaemonOpts::new(), "svc");
    let child_script = r#"trap 'echo "got TERM $LATCHKEY_TOKEN"; exit 3' TERM; echo ready; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; exit 9"#;
    let mut latchkey = env
        .command(&env.bin("latchkey"))
        .args(["exec", "svc", "--mask", "--", "sh", "-c", child_script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("latchkey runs");
    let mut out = BufReader::new(latchkey.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // SAFETY: signalling the child process this test started.
    unsafe { libc::kill(latchkey.id() as i32, libc::SIGTERM) };
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line, "got TERM ***\n",
        "the command got the signal, its output still masked"
    );
    let status = latchkey.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "the command's exit code: {status:?}"
    );
}
