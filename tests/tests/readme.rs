//! The README's protocol examples really work: its Python function and its
//! `socat` one-liner are taken from README.md itself and run against a real
//! daemon, and must return the token `latchkey token` prints. Its exit-code
//! table lists the codes `latchkey --help` prints from the CLI's one table.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use latchkey_tests::fixture::{svc, svc_env};
use latchkey_tests::provider::Provider;
use latchkey_tests::{DaemonOpts, TestEnv};
use std::path::Path;
use std::process::Command;

/// The body of the first fenced block in README.md that starts with `lang`.
fn readme_block(lang: &str, containing: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md is readable");
    let mut blocks = readme.split("```").skip(1).step_by(2);
    blocks
        .find_map(|b| {
            b.strip_prefix(lang)
                .filter(|b| b.contains(containing))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("README.md has no ```{lang} block containing {containing:?}"))
}

fn ready_env(p: &Provider) -> TestEnv {
    svc_env(p, DaemonOpts::new(), "deploy-api").0
}

#[test]
fn the_python_example_returns_the_token() {
    let p = Provider::start(&[svc()]);
    let env = ready_env(&p);
    let expected = env.token("deploy-api");
    let function = readme_block("python", "def latchkey_token");
    assert!(
        function.lines().filter(|l| !l.trim().is_empty()).count() <= 14,
        "the example stays short"
    );
    let program = format!("{function}\nprint(latchkey_token('deploy-api'))\ntry:\n    latchkey_token('nope')\nexcept RuntimeError as e:\n    print(e)\n");
    let out = Command::new("python3")
        .arg("-c")
        .arg(&program)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LATCHKEY_SOCKET", &env.socket)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(expected.as_str()));
    let error = lines.next().unwrap_or_default();
    assert!(
        error.starts_with("not_found: no credential named 'nope'"),
        "{error}"
    );
}

#[test]
fn the_socat_example_returns_the_token() {
    if Command::new("socat").arg("-V").output().is_err() {
        // socat is optional on developer machines; .ci/test installs it in CI.
        assert!(
            std::env::var_os("CI").is_none(),
            "socat must be installed in CI"
        );
        latchkey_tests::skip("socat is not installed");
        return;
    }
    let p = Provider::start(&[svc()]);
    let env = ready_env(&p);
    let expected = env.token("deploy-api");
    let block = readme_block("sh", "socat");
    // Pasteable: no prompt, no output mixed in; it runs as it stands, with
    // the daemon's runtime dir as `$XDG_RUNTIME_DIR`.
    assert!(
        !block
            .lines()
            .any(|l| l.starts_with("$ ") || l.starts_with('{')),
        "the socat block is only the command (its output in a block of its own):\n{block}"
    );
    let command = block.trim().to_owned();
    let runtime = env
        .socket
        .parent()
        .and_then(|dir| dir.parent())
        .expect("the socket is in $XDG_RUNTIME_DIR/latchkey");
    let out = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON reply");
    assert_eq!(reply["result"]["access_token"], expected.as_str());
}

/// The codes (first column) of the rows that follow `heading` up to the
/// first blank line after them.
fn codes_after(text: &str, heading: &str, row: impl Fn(&str) -> Option<&str>) -> Vec<u8> {
    let rest = text
        .split_once(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in {text}"))
        .1;
    rest.lines()
        .skip_while(|l| row(l).is_none())
        .map_while(&row)
        .filter_map(|code| code.parse().ok())
        .collect()
}

#[test]
fn the_readme_lists_the_exit_codes_the_cli_has() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md is readable");
    let documented = codes_after(&readme, "## Exit codes of `latchkey`", |l| {
        l.strip_prefix('|')?.split('|').next().map(str::trim)
    });
    let env = TestEnv::new();
    let help = env.latchkey(&["--help"]);
    let help = help.success().out();
    let printed = codes_after(help, "Exit codes:", |l| {
        l.trim_start().split_once("  ").map(|(code, _)| code)
    });
    assert_eq!(printed, (0..=13).collect::<Vec<u8>>(), "{help}");
    assert_eq!(documented, printed, "README.md's exit-code table");
}

/// A newcomer's first command builds both binaries (the CLI starts the
/// daemon beside it) from the committed lock file, and every `cargo
/// install` in the README is `--locked`.
#[test]
fn the_first_command_builds_both_binaries_locked() {
    let first = readme_block("sh", "");
    let build = first
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    for part in [
        "cargo build",
        "--release",
        "--locked",
        "-p latchkey-cli",
        "-p latchkey-daemon",
        "target/release/latchkeyd",
    ] {
        assert!(
            build.contains(part),
            "the README's first command lacks {part:?}: {build}"
        );
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for install in readme.split("cargo install").skip(1) {
        let args: String = install
            .chars()
            .take_while(|&c| c != '`' && c != '\n' && c != '&')
            .collect();
        assert!(
            args.contains("--locked"),
            "`cargo install{args}` in README.md needs --locked"
        );
    }
}

/// The README's one-minute try-out works as written: the test
/// authorization server started from `tests/provider/try.json` (on another
/// port here, so tests can run side by side), then the README's own
/// `latchkey` lines give a token (`init` and `--access open` ask for the
/// passphrase: the env's passphrase file stands in).
#[test]
fn the_try_out_gives_a_token() {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/provider/try.json"))
            .expect("tests/provider/try.json is readable"),
    )
    .expect("try.json is JSON");
    let port = config["port"]
        .as_u64()
        .expect("try.json names a fixed port");
    let mut ephemeral = config.clone();
    ephemeral["port"] = 0.into();
    let p = Provider::start_with(ephemeral);
    let block = readme_block("sh", "latchkey provider add local");
    let fixed = format!("http://127.0.0.1:{port}");
    assert!(
        block.contains(&fixed),
        "the try-out uses the port of try.json:\n{block}"
    );
    let env = TestEnv::new();
    let bin_dir = env.bin("latchkey").parent().unwrap().to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let mut printed = Vec::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        if line.trim() == "latchkey init" {
            env.init();
            continue;
        }
        let mut line = line.replace(&fixed, p.issuer().trim_end_matches('/'));
        if line.contains("--access open") {
            // The passphrase it asks for, from the env's file.
            line.push_str(&format!(
                " --passphrase-file {}",
                env.passphrase_file().display()
            ));
        }
        let out = env
            .command(Path::new("sh"))
            .arg("-c")
            .arg(&line)
            .env("PATH", &path)
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        printed.push(String::from_utf8(out.stdout).unwrap());
    }
    let token = env.token("demo");
    assert!(
        printed.iter().any(|o| o.trim() == token),
        "`latchkey token demo` printed the token"
    );
    assert!(
        printed
            .iter()
            .any(|o| o.trim() == format!("Authorization: Bearer {token}")),
        "`latchkey header demo` printed the header: {printed:?}"
    );
    env.latchkey(&["daemon", "stop"]).success();
}
