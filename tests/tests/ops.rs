//! What installing latchkey needs, with the real tools: completion scripts
//! that real bash loads and completes with (zsh and fish parse theirs),
//! man pages `man -l` renders, and `latchkey service install`'s units, which
//! `systemd-analyze verify --user` accepts.
//!
//! Needs `cargo build --workspace --bins`.

use latchkey_tests::desktop::{can_run, on_path};
use latchkey_tests::TestEnv;
use std::path::Path;

/// Every top-level subcommand `latchkey --help` lists.
fn subcommands(env: &TestEnv) -> Vec<String> {
    let help = env.latchkey(&["--help"]);
    help.success();
    help.stdout
        .split("Commands:")
        .nth(1)
        .expect("help lists commands")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_loads_the_completion_script_and_completes_a_subcommand() {
    if !can_run("bash completion", on_path("bash"), "bash is not installed") {
        return;
    }
    let env = TestEnv::new();
    let script = env.latchkey(&["completions", "bash"]);
    script.success();
    let path = env.root.join("latchkey.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let out = env
        .command(Path::new("bash"))
        .arg("-c")
        .arg(format!(
            "source {}; complete -p latchkey; COMP_WORDS=(latchkey serv); COMP_CWORD=1; COMP_LINE='latchkey serv'; COMP_POINT=13; _latchkey latchkey serv latchkey; echo \"reply: ${{COMPREPLY[*]}}\"",
            path.display()
        ))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("-F _latchkey latchkey"), "{stdout}");
    assert!(stdout.contains("reply: service"), "{stdout}");
}

#[test]
fn zsh_and_fish_parse_their_completion_scripts() {
    let env = TestEnv::new();
    for (shell, check) in [("zsh", "-n"), ("fish", "--no-execute")] {
        if !can_run(
            &format!("{shell} completion"),
            on_path(shell),
            &format!("{shell} is not installed"),
        ) {
            continue;
        }
        let script = env.latchkey(&["completions", shell]);
        script.success();
        assert!(script.stdout.contains("latchkey"), "{}", script.stdout);
        let path = env.root.join(format!("latchkey.{shell}"));
        std::fs::write(&path, &script.stdout).unwrap();
        let out = env
            .command(Path::new(shell))
            .arg(check)
            .arg(&path)
            .output()
            .expect("the shell runs");
        assert!(
            out.status.success(),
            "{shell} {check}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn man_pages_name_every_subcommand_and_render() {
    let env = TestEnv::new();
    let page = env.latchkey(&["man"]);
    page.success();
    let names = subcommands(&env);
    assert!(names.len() > 20, "{names:?}");
    // roff spells a hyphen `\-`.
    let text = page.stdout.replace("\\-", "-");
    for name in &names {
        assert!(text.contains(name.as_str()), "latchkey.1 names {name}");
    }
    let dir = env.root.join("man1");
    env.latchkey(&["man", "--dir", dir.to_str().unwrap()])
        .success();
    for name in &names {
        let file = dir.join(format!("latchkey-{name}.1"));
        assert!(file.is_file(), "{} written", file.display());
    }
    assert!(dir.join("latchkey-service-install.1").is_file());
    if !can_run("man -l", on_path("man"), "man (man-db) is not installed") {
        return;
    }
    let out = env
        .command(Path::new("man"))
        .arg("-l")
        .arg(dir.join("latchkey.1"))
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("man runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("NAME") && text.contains("latchkey"), "{text}");
}

#[test]
fn service_install_writes_units_systemd_accepts_and_keeps_a_changed_one() {
    let env = TestEnv::new();
    let config = env.root.join("config");
    env.set_env("XDG_CONFIG_HOME", &config);
    let printed = env.latchkey(&["service", "install", "--print"]);
    printed.success();
    let units = config.join("systemd/user");
    assert!(!units.exists(), "--print writes nothing");
    assert!(
        printed
            .stdout
            .contains("ListenStream=%t/latchkey/latchkey.sock"),
        "{}",
        printed.stdout
    );
    let installed = env.latchkey(&["service", "install"]);
    installed.success();
    assert!(
        installed.stdout.contains(
            "systemctl --user daemon-reload && systemctl --user enable --now latchkey.socket"
        ),
        "{}",
        installed.stdout
    );
    let service = std::fs::read_to_string(units.join("latchkey.service")).unwrap();
    let daemon = env.bin("latchkeyd");
    assert!(
        service.contains(&format!("ExecStart={}\n", daemon.display())),
        "{service}"
    );
    assert!(service.contains("Type=notify"), "{service}");
    // The same files again: nothing to refuse.
    env.latchkey(&["service", "install"]).success();
    std::fs::write(units.join("latchkey.service"), format!("{service}# mine\n")).unwrap();
    let refused = env.latchkey(&["service", "install"]);
    refused.code_is(2);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    env.latchkey(&["service", "install", "--force"]).success();
    assert_eq!(
        std::fs::read_to_string(units.join("latchkey.service")).unwrap(),
        service
    );
    // launchd's plist, on Linux too when asked.
    let plist = env.latchkey(&["service", "install", "--manager", "launchd", "--print"]);
    plist.success();
    assert!(
        plist.stdout.contains("<key>ProgramArguments</key>"),
        "{}",
        plist.stdout
    );
    if !can_run(
        "systemd-analyze verify",
        on_path("systemd-analyze"),
        "systemd-analyze is not installed (Debian package systemd)",
    ) {
        return;
    }
    let out = env
        .command(Path::new("systemd-analyze"))
        .args(["verify", "--user", "--man=no"])
        .arg(units.join("latchkey.socket"))
        .arg(units.join("latchkey.service"))
        .output()
        .expect("systemd-analyze runs");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
