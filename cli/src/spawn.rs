//! Finding `latchkeyd` and starting it in the background: detached from the
//! terminal, its output appended to `latchkeyd.log` beside the socket, and
//! polled until it answers (or exits, in which case its log says why).
//! The socket's directory must be ours and 0700 and the log is opened
//! without following a symbolic link ([`latchkey_client::trust`]); the
//! daemon inherits our environment minus the variables that held a secret
//! and the test-only switches.

use crate::exit;
use anyhow::{Context, Result};
use latchkey_client::blocking::Client;
use latchkey_client::trust;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the daemon binary explicitly (tests, packaging).
pub const DAEMON_BIN_ENV: &str = "LATCHKEY_DAEMON_BIN";

/// The daemon's log file, created in the socket's directory.
pub const LOG_NAME: &str = "latchkeyd.log";

/// 10 s: a daemon opens its vault file and binds its socket in milliseconds;
/// a slow CI machine under load gets a wide margin, a broken one an answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// 2 s: after our daemon exits, how long another daemon that won a start
/// race gets to bind its socket (it holds the vault lock already, so this is
/// milliseconds of work). Only a failed start waits this long.
const RACE_GRACE: Duration = Duration::from_secs(2);

/// How many lines of the log an error quotes.
const LOG_TAIL_LINES: usize = 10;

/// Switches only tests set, never passed on to a daemon we start: a test
/// setting left in a shell must not weaken a real vault. Each entry says
/// where the daemon reads it.
pub const TEST_ONLY_ENV: &[&str] = &[
    // daemon/src/vault/crypto.rs (`INSECURE_TEST_KDF_ENV`): new passphrase
    // slots get Argon2id parameters far below OWASP's minimum.
    "LATCHKEY_INSECURE_TEST_KDF",
];

/// What the daemon is started with.
pub struct DaemonArgs<'a> {
    /// Socket to listen on; always passed, so it listens where we poll.
    pub socket: &'a Path,
    /// Vault file, when the user named one (else the daemon's default).
    pub vault: Option<&'a Path>,
    /// Auto-lock after this long idle, when given on the command line.
    pub idle_timeout: Option<Duration>,
    /// Environment variables this invocation reads a secret from
    /// (`--client-secret-env VAR`, `--passphrase-env VAR`): kept out of the
    /// daemon's environment, where they would live on in `/proc/PID/environ`.
    pub withheld_env: &'a [String],
}

/// A daemon that now answers.
pub struct Started {
    /// A connection to it.
    pub client: Client,
    /// The pid of the daemon we spawned, or `None` when another process won a
    /// race to start one and ours stood down.
    pub spawned_pid: Option<u32>,
}

/// The daemon binary: `$LATCHKEY_DAEMON_BIN`, else `latchkeyd` beside this
/// executable (an install or a cargo target dir), else `latchkeyd` on PATH.
pub fn daemon_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os(DAEMON_BIN_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    let name = format!("latchkeyd{}", std::env::consts::EXE_SUFFIX);
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)))
        .filter(|path| path.is_file())
    {
        return beside;
    }
    PathBuf::from(name)
}

/// The daemon's command line. The environment is inherited, so
/// `LATCHKEY_*` and `XDG_*` variables reach it unchanged, except the
/// variables that hold a secret ([`DaemonArgs::withheld_env`], and the
/// caller's app key) and the [`TEST_ONLY_ENV`] switches.
pub fn command(args: &DaemonArgs) -> Command {
    let mut cmd = Command::new(daemon_binary());
    for var in args.withheld_env {
        cmd.env_remove(var);
    }
    cmd.env_remove(latchkey_client::APP_KEY_ENV);
    for var in TEST_ONLY_ENV {
        cmd.env_remove(var);
    }
    cmd.arg("--socket").arg(args.socket);
    match args.vault {
        // A database URL may hold a password: never on a command line.
        Some(vault) if vault.to_str().is_some_and(latchkey_client::is_database_url) => {
            cmd.env(latchkey_client::VAULT_ENV, vault);
        }
        Some(vault) => {
            cmd.arg("--vault").arg(vault);
        }
        None => {}
    }
    if let Some(idle) = args.idle_timeout {
        cmd.arg("--idle-timeout").arg(idle.as_secs().to_string());
    }
    cmd
}

/// The directory that holds the socket (and the log).
pub fn socket_dir(socket: &Path) -> &Path {
    trust::socket_dir(socket)
}

/// Where the daemon's output goes.
pub fn log_path(socket: &Path) -> PathBuf {
    socket_dir(socket).join(LOG_NAME)
}

/// Starts the daemon in the background and waits until it answers.
pub fn start(args: &DaemonArgs) -> Result<Started> {
    let dir = socket_dir(args.socket);
    create_private_dir(dir).map_err(|err| {
        refusal(
            err,
            format!("failed to create the socket directory {}", dir.display()),
        )
    })?;
    let log_path = log_path(args.socket);
    let log = open_log(&log_path).map_err(|err| {
        refusal(
            err,
            format!("failed to open the daemon log {}", log_path.display()),
        )
    })?;
    // Only what this start appends is quoted if it fails.
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);

    let mut cmd = command(args);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().context("failed to open the daemon log")?)
        .stderr(log);
    detach(&mut cmd);
    let bin = daemon_binary();
    let mut child = cmd.spawn().map_err(|err| {
        let why = if err.kind() == std::io::ErrorKind::NotFound {
            format!(
                "cannot find the daemon binary {}: install latchkeyd next to latchkey or on PATH, or set {DAEMON_BIN_ENV}",
                bin.display()
            )
        } else {
            format!("failed to start the daemon {}: {err}", bin.display())
        };
        exit::daemon_unreachable(why)
    })?;
    wait_until_answering(args.socket, &mut child, &log_path, log_start)
}

fn wait_until_answering(
    socket: &Path,
    child: &mut Child,
    log_path: &Path,
    log_start: u64,
) -> Result<Started> {
    let pid = child.id();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(status) = child.try_wait().context("failed to watch the daemon")? {
            // Another CLI may have started a daemon at the same moment: ours
            // found the vault taken and stood down, and the other one may
            // still be binding its socket. Give it a moment to answer.
            if let Some(client) = poll_connect(
                socket,
                RACE_GRACE.min(deadline.saturating_duration_since(Instant::now())),
            ) {
                return Ok(Started {
                    client,
                    spawned_pid: None,
                });
            }
            return Err(exit::daemon_unreachable(format!(
                "the daemon (pid {pid}) exited with {status} before it answered on {}{}",
                socket.display(),
                log_tail(log_path, log_start)
            )));
        }
        match Client::connect_to(socket) {
            Ok(mut client) => {
                let serving = client
                    .hello()
                    .context("failed to greet the latchkey daemon")?
                    .pid;
                if serving != pid {
                    // Another starter won the race and ours is about to stand
                    // down: reap it, so it is not left behind as a zombie.
                    wait_for_exit(child, RACE_GRACE);
                }
                return Ok(Started {
                    client,
                    spawned_pid: (serving == pid).then_some(pid),
                });
            }
            Err(latchkey_client::Error::Connect { .. }) => {}
            Err(err) => {
                return Err(err).context(format!("the daemon (pid {pid}) answered badly"));
            }
        }
        if Instant::now() >= deadline {
            return Err(exit::daemon_unreachable(format!(
                "the daemon (pid {pid}) did not answer on {} within {}s; it is still running: see {} or stop it with `kill {pid}`{}",
                socket.display(),
                START_TIMEOUT.as_secs(),
                log_path.display(),
                log_tail(log_path, log_start)
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Waits up to `within` for the child to exit, reaping it.
fn wait_for_exit(child: &mut Child, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Tries to connect until `within` has passed.
fn poll_connect(socket: &Path, within: Duration) -> Option<Client> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(client) = Client::connect_to(socket) {
            return Some(client);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An I/O error as the CLI reports it: a trust refusal as the client's
/// [`latchkey_client::Error::Untrusted`] (its message names the path and the
/// fix, and it maps to the exit code of an unreachable daemon), anything
/// else under `context`.
fn refusal(err: std::io::Error, context: String) -> anyhow::Error {
    match trust::as_untrusted(&err) {
        Some(untrusted) => latchkey_client::Error::Untrusted(untrusted.clone()).into(),
        None => anyhow::Error::new(err).context(context),
    }
}

/// The last lines the daemon wrote, as an indented block for an error message.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    let read = trust::open_own_file(OpenOptions::new().read(true), path).and_then(|mut file| {
        let len = file.metadata()?.len();
        // 16 KiB is plenty for ten lines; never read a huge log whole.
        file.seek(SeekFrom::Start(from.max(len.saturating_sub(16 * 1024))))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if read.is_err() {
        return String::new();
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return format!(" (its log {} is empty)", path.display());
    }
    let mut out = format!("; the end of its log {}:", path.display());
    for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
        out.push_str("\n    ");
        out.push_str(&printable(line));
    }
    out
}

/// A log line safe to show on a terminal: colour codes (`ESC [ … letter`)
/// and other control characters removed.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.clone().next() == Some('[') {
                // Skip to the sequence's final byte (0x40..=0x7e).
                chars.next();
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// Creates the directory (and missing parents) 0700 if it does not exist;
/// one that exists, or that someone else created first, must be ours and
/// 0700 and not a symbolic link, or it is refused ([`trust::private_dir`]).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    trust::private_dir(dir)
}

/// Opens the log for appending, creating it 0600; a symbolic link planted at
/// its path, or a file of another user, is refused ([`trust::open_own_file`]).
fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = OpenOptions::new();
    options.append(true).create(true).mode(0o600);
    trust::open_own_file(&options, path)
}

/// Puts the child in a session of its own, so closing the terminal (SIGHUP)
/// or pressing Ctrl-C in it (SIGINT to the foreground group) leaves it running.
#[cfg(unix)]
fn detach(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let new_session = || {
        // SAFETY: setsid has no preconditions; it is async-signal-safe, so it
        // may run between fork and exec.
        if unsafe { libc::setsid() } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls setsid (see above): no allocation, no locks.
    unsafe {
        cmd.pre_exec(new_session);
    }
}

#[cfg(not(unix))]
fn detach(_cmd: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_and_socket_dirs() {
        assert_eq!(
            socket_dir(Path::new("/run/u/latchkey/l.sock")),
            Path::new("/run/u/latchkey")
        );
        assert_eq!(socket_dir(Path::new("l.sock")), Path::new("."));
        assert_eq!(
            log_path(Path::new("/d/l.sock")),
            Path::new("/d/latchkeyd.log")
        );
    }

    #[test]
    fn the_command_names_socket_vault_and_timeout() {
        let cmd = command(&DaemonArgs {
            socket: Path::new("/d/l.sock"),
            vault: Some(Path::new("/v.db")),
            idle_timeout: Some(Duration::from_secs(600)),
            withheld_env: &[],
        });
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--socket",
                "/d/l.sock",
                "--vault",
                "/v.db",
                "--idle-timeout",
                "600"
            ]
        );
    }

    #[test]
    fn the_daemon_gets_no_secret_variable_and_no_test_switch() {
        let withheld = ["MY_CLIENT_SECRET".to_string()];
        let cmd = command(&DaemonArgs {
            socket: Path::new("/d/l.sock"),
            vault: None,
            idle_timeout: None,
            withheld_env: &withheld,
        });
        let removed: Vec<String> = cmd
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key.to_string_lossy().into_owned())
            .collect();
        for var in ["MY_CLIENT_SECRET", "LATCHKEY_INSECURE_TEST_KDF"] {
            assert!(removed.iter().any(|r| r == var), "{var} in {removed:?}");
        }
    }

    #[test]
    fn log_lines_lose_colours_and_control_characters() {
        let cases = [
            ("plain", "plain"),
            (
                "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m up",
                "2026  INFO up",
            ),
            ("bell\u{7}\tand tab", "bell\tand tab"),
            ("lone \u{1b} escape", "lone  escape"),
        ];
        for (line, want) in cases {
            assert_eq!(printable(line), want, "{line:?}");
        }
    }

    #[test]
    fn log_tails_quote_only_the_new_lines() {
        let dir = std::env::temp_dir().join(format!("latchkey-cli-spawn-{}", std::process::id()));
        create_private_dir(&dir).unwrap();
        let path = dir.join(LOG_NAME);
        std::fs::write(&path, "old line\n").unwrap();
        let from = std::fs::metadata(&path).unwrap().len();
        let mut lines = String::new();
        for i in 0..12 {
            lines.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&path, format!("old line\n{lines}")).unwrap();
        let tail = log_tail(&path, from);
        assert!(
            !tail.contains("old line") && !tail.contains("line 1\n"),
            "{tail}"
        );
        assert!(
            tail.contains("line 2\n") && tail.ends_with("line 11"),
            "{tail}"
        );
        assert!(log_tail(&path, std::fs::metadata(&path).unwrap().len()).contains("is empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
