//! systemd socket activation with the real `systemd-socket-activate`
//! (Debian package `systemd`): it listens on the socket path, a CLI call
//! starts the daemon on demand, which serves the passed socket, tells
//! `NOTIFY_SOCKET` (an abstract one) it is ready, and refuses a TCP socket;
//! a `LISTEN_PID` that is not the daemon's is ignored.
//!
//! Needs `cargo build --workspace --bins`.

use latchkey_tests::desktop::{can_run, on_path};
use latchkey_tests::{wait_for, DaemonOpts, TestEnv};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

const ACTIVATE: &str = "systemd-socket-activate";

/// The variables the activated daemon needs (`systemd-socket-activate`
/// gives its child only those named with `-E`, and the `LISTEN_*` ones).
const PASSED: &[&str] = &[
    "PATH",
    "HOME",
    "XDG_RUNTIME_DIR",
    "XDG_DATA_HOME",
    "LATCHKEY_SOCKET",
    "LATCHKEY_VAULT",
    "LATCHKEY_INSECURE_TEST_KDF",
];

/// `systemd-socket-activate -l LISTEN … latchkeyd`, its output in `log`.
fn activate(env: &TestEnv, listen: &str, log: &Path, extra: &[&str]) -> Activator {
    let file = std::fs::File::create(log).expect("log file");
    let mut cmd = env.command(Path::new(ACTIVATE));
    cmd.arg("-l").arg(listen).arg("--fdname=latchkey");
    for var in PASSED {
        cmd.arg("-E").arg(var);
    }
    cmd.args(extra)
        .arg(env.bin("latchkeyd"))
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file);
    Activator(cmd.spawn().expect("systemd-socket-activate starts"))
}

/// The activator (later the daemon it became), killed when the test ends
/// however it ends.
struct Activator(Child);

impl Drop for Activator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ready(test: &str) -> bool {
    can_run(
        test,
        on_path(ACTIVATE),
        "systemd-socket-activate is not installed (Debian package systemd)",
    )
}

#[test]
fn a_cli_call_starts_the_daemon_on_the_socket_systemd_holds() {
    if !ready("a_cli_call_starts_the_daemon_on_the_socket_systemd_holds") {
        return;
    }
    let env = TestEnv::new();
    let dir = env.socket.parent().expect("socket dir");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // An abstract NOTIFY_SOCKET, as systemd gives user services.
    let notify_name = format!("latchkey-test-notify-{}", std::process::id());
    let notices = UnixDatagram::bind_addr(
        &SocketAddr::from_abstract_name(notify_name.as_bytes()).expect("abstract address"),
    )
    .expect("bind the notify socket");
    notices
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = env.root.join("activate.log");
    let notify_var = format!("NOTIFY_SOCKET=@{notify_name}");
    let activator = activate(
        &env,
        &env.socket.display().to_string(),
        &log,
        &["-E", &notify_var],
    );
    let activator_pid = activator.0.id();
    wait_for(
        "systemd-socket-activate listens",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || env.socket.exists().then_some(()),
    );
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("latchkeyd listening"),
        "no daemon before the first connection"
    );
    let status = env.latchkey(&["status", "--json"]);
    status.success();
    let status = status.json();
    // Without --accept, systemd-socket-activate execs the daemon itself.
    assert_eq!(
        status["pid"].as_u64(),
        Some(u64::from(activator_pid)),
        "the daemon systemd started answers: {status}"
    );
    assert_eq!(status["vault"], "uninitialized", "{status}");
    let daemon_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        daemon_log.contains("latchkeyd listening on the socket systemd passed"),
        "{daemon_log}"
    );
    assert!(
        env.cli_started_daemons().is_empty(),
        "the CLI started no daemon of its own"
    );
    let mut buf = [0u8; 256];
    let n = notices.recv(&mut buf).expect("a READY notice");
    assert_eq!(&buf[..n], b"READY=1\n");
    // The socket systemd made (umask mode) is narrowed to the daemon's 0600.
    let mode = std::fs::metadata(&env.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(activator_pid as i32, libc::SIGTERM) },
        0
    );
    let n = notices.recv(&mut buf).expect("a STOPPING notice");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    let mut activator = activator;
    let exited = wait_for(
        "the daemon exits",
        Duration::from_secs(20),
        Duration::from_millis(10),
        || activator.0.try_wait().expect("wait on our child"),
    );
    assert!(exited.success(), "a clean stop: {exited}");
}

#[test]
fn a_tcp_socket_is_refused_with_the_fix() {
    if !ready("a_tcp_socket_is_refused_with_the_fix") {
        return;
    }
    let env = TestEnv::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = env.root.join("activate.log");
    let mut activator = activate(&env, &format!("127.0.0.1:{port}"), &log, &[]);
    let connected = wait_for(
        "the TCP socket listens",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
    let status = wait_for(
        "the daemon refuses",
        Duration::from_secs(20),
        Duration::from_millis(10),
        || activator.0.try_wait().expect("wait on our child"),
    );
    drop(connected);
    assert!(!status.success(), "refused: {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("is a TCP/IP socket"), "{text}");
    assert!(
        text.contains("ListenStream=%t/latchkey/latchkey.sock"),
        "{text}"
    );
}

#[test]
fn a_listen_pid_that_is_not_ours_is_ignored_and_the_daemon_binds() {
    let env = TestEnv::new();
    let daemon = env.start_daemon_with(
        DaemonOpts::new()
            .env("LISTEN_PID", "1")
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "latchkey"),
    );
    let status = env.latchkey(&["status", "--json"]);
    status.success();
    assert_eq!(status.json()["pid"].as_u64(), Some(u64::from(daemon.pid)));
    let log = env.daemon_log(&daemon);
    assert!(log.contains("LISTEN_PID is 1, not this process"), "{log}");
    assert!(log.contains("latchkeyd listening"), "{log}");
    assert!(!log.contains("socket systemd passed"), "{log}");
}
