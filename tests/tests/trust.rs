//! "The client trusts whatever listens on the socket path" (issue 7): a
//! socket directory or a server of another local user is refused before a
//! byte is sent, by the CLI and by both client libraries; the daemon log and
//! lock file are never opened through a planted symbolic link; a daemon the
//! CLI starts inherits no secret variable and no test switch; passphrase
//! files readable by others are refused by the CLI and by the daemon.
//!
//! "Another user" is a real other uid: the tests run as root (which
//! bypasses file modes) and run the fake daemon as `nobody` (uid 65534).
//! Needs `cargo build --workspace --bins` and `python3`.

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use latchkey_client::trust::{Problem, Subject};
use latchkey_tests::process::DaemonOpts;
use latchkey_tests::TestEnv;
use serde_json::json;

/// The uid and gid of `nobody`: the other local user of these tests.
const NOBODY: u32 = 65534;

/// A fake daemon of user `nobody`: listens on a Unix socket and appends
/// every byte any connection sends to a record file. Killed on drop.
struct Impostor {
    child: Child,
    record: PathBuf,
}

/// The fake daemon's program: bind, listen, mark ready, record forever.
const IMPOSTOR_PY: &str = r#"
import os, socket, sys
path, record, ready = sys.argv[1:4]
open(record, "ab").close()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
s.listen(16)
open(ready, "w").close()
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        while True:
            data = c.recv(65536)
            if not data:
                break
            with open(record, "ab") as f:
                f.write(data)
    except OSError:
        pass
    c.close()
"#;

impl Impostor {
    /// Starts listening at `socket`, as `nobody`, recording into `work`
    /// (a directory `nobody` can write).
    fn listen(socket: &Path, work: &Path) -> Impostor {
        let record = work.join("record");
        let ready = work.join("ready");
        let child = Command::new("python3")
            .arg("-c")
            .arg(IMPOSTOR_PY)
            .arg(socket)
            .arg(&record)
            .arg(&ready)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs (it is needed by these tests)");
        let mut impostor = Impostor { child, record };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if let Ok(Some(status)) = impostor.child.try_wait() {
                panic!("the fake daemon exited with {status} before listening");
            }
            assert!(Instant::now() < deadline, "the fake daemon never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        impostor
    }

    /// Every byte it received so far.
    fn received(&self) -> Vec<u8> {
        std::fs::read(&self.record).expect("the record file exists once listening")
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory under the system temp dir that `nobody` owns (mode 0755),
/// inside a root-owned 0755 base that anyone may traverse. Returns (base, dir).
fn nobody_dir(base: &tempfile::TempDir, name: &str) -> PathBuf {
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = base.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn make_dir(dir: &Path, mode: u32) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What both client libraries say about `socket`; asserts they refuse it
/// with the same [`Problem`], for `subject`, and returns the message.
fn both_clients_refuse(socket: &Path, subject: Subject) -> (Problem, String) {
    let blocking = match latchkey_client::blocking::Client::connect_to(socket) {
        Err(latchkey_client::Error::Untrusted(u)) => u,
        Err(other) => panic!("blocking client: not a trust refusal: {other}"),
        Ok(_) => panic!("blocking client connected to {}", socket.display()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let not_blocking = match runtime.block_on(latchkey_client::Client::connect_to(socket)) {
        Err(latchkey_client::Error::Untrusted(u)) => u,
        Err(other) => panic!("async client: not a trust refusal: {other}"),
        Ok(_) => panic!("async client connected to {}", socket.display()),
    };
    assert_eq!(blocking, not_blocking, "both clients check the same things");
    assert_eq!(blocking.subject, subject, "{blocking}");
    (blocking.problem.clone(), blocking.to_string())
}

#[test]
fn a_socket_directory_of_another_user_gets_neither_passphrase_nor_secret() {
    // No XDG_RUNTIME_DIR, no LATCHKEY_SOCKET: the socket is
    // $TMPDIR/latchkey-<uid>/latchkey.sock, and `nobody` made that first.
    let env = TestEnv::new();
    let tmp = tempfile::Builder::new()
        .prefix("lk-tmp-")
        .tempdir()
        .unwrap();
    let uid = latchkey_client::trust::euid();
    let planted = nobody_dir(&tmp, &format!("latchkey-{uid}"));
    let socket = planted.join("latchkey.sock");
    let impostor = Impostor::listen(&socket, &planted);
    env.remove_env("LATCHKEY_SOCKET");
    env.remove_env("XDG_RUNTIME_DIR");
    env.set_env("TMPDIR", tmp.path());
    env.set_env("LATCHKEY_PASSPHRASE_FILE", env.passphrase_file());
    env.set_env("MY_CLIENT_SECRET", "client-secret-canary");

    for args in [
        &["token", "x"][..],
        &[
            "credential",
            "add",
            "x",
            "--provider",
            "p",
            "--client-id",
            "c",
            "--client-secret-env",
            "MY_CLIENT_SECRET",
        ],
        &["init"],
    ] {
        let r = env.latchkey(args);
        r.code_is(3);
        for words in [
            planted.to_str().unwrap(),
            "belongs to uid 65534 (nobody)",
            "XDG_RUNTIME_DIR",
        ] {
            assert!(
                r.stderr.contains(words),
                "{args:?}: {words:?} in {}",
                r.stderr
            );
        }
    }
    let (problem, _) = both_clients_refuse(&socket, Subject::SocketDir);
    assert!(
        matches!(problem, Problem::Owner { uid: NOBODY, .. }),
        "{problem:?}"
    );
    assert_eq!(
        impostor.received(),
        b"",
        "not one byte reached the fake daemon"
    );
    assert!(
        env.cli_started_daemons().is_empty(),
        "no daemon was started"
    );
}

#[test]
fn a_loose_or_linked_socket_directory_of_our_own_is_refused() {
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap().to_owned();

    // Ours, but 0755: refused with the chmod, and left as it is.
    make_dir(&dir, 0o755);
    let r = env.latchkey(&["status"]);
    r.code_is(3);
    assert!(
        r.stderr
            .contains(&format!("run `chmod 700 {}`", dir.display())),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o755);
    let (problem, _) = both_clients_refuse(&env.socket, Subject::SocketDir);
    assert_eq!(problem, Problem::Mode { mode: 0o755 });
    // The daemon will not listen there either.
    let (status, log) = env.run_daemon_expecting_exit(DaemonOpts::new(), Duration::from_secs(20));
    assert!(!status.success());
    assert!(log.contains("chmod 700"), "{log}");

    // A symbolic link to a good directory: refused.
    std::fs::remove_dir(&dir).unwrap();
    let real = env.root.join("real");
    make_dir(&real, 0o700);
    symlink(&real, &dir).unwrap();
    let r = env.latchkey(&["status"]);
    r.code_is(3);
    assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
    let (problem, _) = both_clients_refuse(&env.socket, Subject::SocketDir);
    assert_eq!(problem, Problem::Symlink);
    let (status, log) = env.run_daemon_expecting_exit(DaemonOpts::new(), Duration::from_secs(20));
    assert!(!status.success());
    assert!(log.contains("symbolic link"), "{log}");
    assert!(
        std::fs::read_dir(&real).unwrap().next().is_none(),
        "nothing was created through the link"
    );
    assert!(
        env.cli_started_daemons().is_empty(),
        "no daemon was started"
    );
}

#[test]
fn a_server_of_another_user_in_our_directory_is_refused_after_connect() {
    let env = TestEnv::new();
    let tmp = tempfile::Builder::new()
        .prefix("lk-tmp-")
        .tempdir()
        .unwrap();
    let theirs = nobody_dir(&tmp, "theirs");
    let impostor = Impostor::listen(&theirs.join("l.sock"), &theirs);
    // Our own 0700 directory passes; the socket in it is served by `nobody`
    // (moved in as root: the listener keeps accepting on the inode).
    let ours = env.socket.parent().unwrap();
    make_dir(ours, 0o700);
    std::fs::rename(theirs.join("l.sock"), &env.socket).unwrap();
    env.set_env("LATCHKEY_PASSPHRASE_FILE", env.passphrase_file());

    let r = env.latchkey(&["token", "x"]);
    r.code_is(3);
    for words in [
        env.socket.to_str().unwrap(),
        "runs as uid 65534 (nobody)",
        "nothing was sent",
    ] {
        assert!(r.stderr.contains(words), "{words:?} in {}", r.stderr);
    }
    let (problem, message) = both_clients_refuse(&env.socket, Subject::Server);
    assert!(
        matches!(problem, Problem::Owner { uid: NOBODY, .. }),
        "{problem:?}: {message}"
    );
    assert_eq!(
        impostor.received(),
        b"",
        "not one byte reached the fake daemon"
    );
}

#[test]
fn symlinks_at_the_log_and_lock_paths_are_refused_and_their_targets_untouched() {
    let env = TestEnv::new();
    let precious = env.root.join("precious");
    std::fs::write(&precious, "keep me\n").unwrap();

    // The daemon log the CLI opens beside the socket.
    let run = env.socket.parent().unwrap();
    make_dir(run, 0o700);
    symlink(&precious, run.join("latchkeyd.log")).unwrap();
    let r = env.latchkey(&["status"]);
    r.code_is(3);
    assert!(
        r.stderr.contains("latchkeyd.log") && r.stderr.contains("symbolic link"),
        "{}",
        r.stderr
    );
    assert!(
        env.cli_started_daemons().is_empty(),
        "no daemon was started"
    );
    std::fs::remove_file(run.join("latchkeyd.log")).unwrap();

    // The vault's lock file.
    make_dir(env.vault.parent().unwrap(), 0o700);
    let mut lock = env.vault.as_os_str().to_owned();
    lock.push(".lock");
    symlink(&precious, &lock).unwrap();
    let (status, log) = env.run_daemon_expecting_exit(DaemonOpts::new(), Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        log.contains("vault.db.lock") && log.contains("symbolic link"),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
}

/// The environment of a running process, as `KEY=value` strings.
fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("/proc/PID/environ is readable");
    raw.split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn a_daemon_the_cli_starts_inherits_no_secret_variable_and_no_test_switch() {
    // `credential add --client-secret-env` starts the daemon (the vault is
    // not even initialized, so the add itself fails afterwards).
    let env = TestEnv::new();
    env.set_env("MY_CLIENT_SECRET", "client-secret-canary");
    let r = env.latchkey(&[
        "credential",
        "add",
        "x",
        "--provider",
        "p",
        "--client-id",
        "c",
        "--client-secret-env",
        "MY_CLIENT_SECRET",
    ]);
    assert!(r.stderr.contains("started daemon"), "{}", r.stderr);
    let pid = env.serving_pid().expect("the CLI started a daemon");
    let vars = environ(pid);
    assert!(
        vars.iter().any(|v| v.starts_with("LATCHKEY_SOCKET=")),
        "the rest of the environment is passed on: {vars:?}"
    );
    for gone in ["MY_CLIENT_SECRET=", "LATCHKEY_INSECURE_TEST_KDF="] {
        assert!(
            !vars.iter().any(|v| v.starts_with(gone)),
            "{gone} in {vars:?}"
        );
    }

    // `init --passphrase-env` likewise; and with the test switch withheld,
    // the vault gets the production Argon2id parameters.
    let env = TestEnv::new();
    env.set_env("MY_PASSPHRASE", latchkey_tests::env::PASSPHRASE);
    let r = env.latchkey(&["init", "--passphrase-env", "MY_PASSPHRASE"]);
    r.success();
    let pid = env.serving_pid().expect("the CLI started a daemon");
    let vars = environ(pid);
    for gone in ["MY_PASSPHRASE=", "LATCHKEY_INSECURE_TEST_KDF="] {
        assert!(
            !vars.iter().any(|v| v.starts_with(gone)),
            "{gone} in {vars:?}"
        );
    }
    assert_eq!(
        env.passphrase_slot_kdf(),
        [json!({"m_kib": 65536, "t": 3, "p": 4})],
        "a test switch in the CLI's environment does not weaken the vault"
    );
}

#[test]
fn a_passphrase_file_others_can_read_is_refused_by_the_cli_and_the_daemon() {
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.init();
    let loose = env.write_secret_file("loose", &format!("{}\n", latchkey_tests::env::PASSPHRASE));
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fix = format!("run `chmod 600 {}`", loose.display());

    // The CLI: as a flag, and as $LATCHKEY_PASSPHRASE_FILE re-unlocking a
    // locked vault.
    env.latchkey(&["lock"]).success();
    let r = env.latchkey(&["unlock", "--passphrase-file", loose.to_str().unwrap()]);
    r.code_is(2);
    assert!(r.stderr.contains(&fix), "{}", r.stderr);
    let r = env
        .cli(&["provider", "list"])
        .env("LATCHKEY_PASSPHRASE_FILE", &loose)
        .run();
    assert!(r.stderr.contains(&fix), "{}", r.stderr);
    assert_eq!(
        env.latchkey(&["status", "--json"]).json()["vault"],
        "locked"
    );

    // The daemon's unlock at start: its log says why; the vault stays locked.
    // First end the requested lock, which would hold against that unlock
    // (and then no file is read at all): stopped unlocked, it starts locked.
    let good = env.passphrase_file();
    env.latchkey(&["unlock", "--passphrase-file", good.to_str().unwrap()])
        .success();
    env.stop_daemon(&daemon);
    let daemon = env.start_daemon_with(
        DaemonOpts::new().env("LATCHKEY_PASSPHRASE_FILE", loose.to_str().unwrap()),
    );
    let log = env.daemon_log(&daemon);
    assert!(log.contains(&fix), "{log}");
    assert_eq!(
        env.latchkey(&["status", "--json"]).json()["vault"],
        "locked"
    );

    // 0600 works.
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.latchkey(&["unlock", "--passphrase-file", loose.to_str().unwrap()])
        .success();
}
