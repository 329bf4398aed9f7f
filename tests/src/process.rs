//! Starting and stopping `latchkeyd` for a test: [`DaemonOpts`] says how,
//! [`DaemonHandle`] names a daemon the env started (the env owns the child
//! and kills it on drop); finding every daemon of an env (also those the
//! CLI started), their logs, and bounded waits ([`wait_for`]). Reads
//! `/proc`: [`processes`], [`alive`].
//!
//! Daemons get `PR_SET_PDEATHSIG(SIGKILL)`, so even a test process killed
//! too hard to run `Drop` leaves no orphan.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::env::{TestEnv, BUILD_HINT};
use crate::raw::RawConn;

/// How long a daemon may take to answer `hello` after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM (its own drain bound is 10 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A daemon started by [`TestEnv::start_daemon`]. The child process itself
/// is owned by the env (which kills it on drop); this names it.
#[derive(Debug, Clone)]
pub struct DaemonHandle {
    pub pid: u32,
    /// Where its stderr (the tracing log) goes.
    pub log: PathBuf,
}

/// How to start `latchkeyd`: extra arguments and environment.
#[derive(Debug, Clone, Default)]
pub struct DaemonOpts {
    pub args: Vec<String>,
    pub env: Vec<(String, Option<String>)>,
}

impl DaemonOpts {
    pub fn new() -> Self {
        DaemonOpts::default()
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.env.push((key.into(), Some(value.as_ref().into())));
        self
    }

    /// Removes an environment variable the env would otherwise pass.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// Unlock at start from the env's passphrase file.
    pub fn unlocked(self, env: &TestEnv) -> Self {
        let file = env.passphrase_file();
        self.env(
            "LATCHKEY_PASSPHRASE_FILE",
            file.to_str().expect("utf-8 temp path"),
        )
    }
}

impl TestEnv {
    /// Starts `latchkeyd` with the env's environment and waits until it
    /// answers `hello`.
    pub fn start_daemon(&self) -> DaemonHandle {
        self.start_daemon_with(DaemonOpts::new())
    }

    /// Starts `latchkeyd` with extra options and waits until it answers.
    ///
    /// Call it from the test's own thread: the daemon gets
    /// `PR_SET_PDEATHSIG(SIGKILL)`, so the kernel ends it when the *thread*
    /// that started it exits (this is what cleans up after a test process
    /// killed too hard to run `Drop`).
    pub fn start_daemon_with(&self, opts: DaemonOpts) -> DaemonHandle {
        let (mut child, log) = self.spawn_daemon(&opts);
        let pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting on our own child works") {
                panic!(
                    "latchkeyd (pid {pid}) exited with {status} before it answered\n--- its log ---\n{}",
                    read_lossy(&log)
                );
            }
            // A daemon of another user (`run_as`) refuses our connections:
            // its log says when it listens.
            if self.user().is_some() {
                if read_lossy(&log).contains("latchkeyd listening") {
                    break;
                }
            } else if let Ok(hello) = self.try_hello() {
                let serving = hello["result"]["pid"].as_u64();
                assert_eq!(
                    serving,
                    Some(u64::from(pid)),
                    "another daemon answers on {}: {hello}",
                    self.socket.display()
                );
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "latchkeyd (pid {pid}) did not answer within {START_TIMEOUT:?}\n--- its log ---\n{}",
                    read_lossy(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.daemons.lock().unwrap().push((pid, child, log.clone()));
        DaemonHandle { pid, log }
    }

    /// Starts `latchkeyd` expecting it to exit (e.g. refused to start):
    /// returns its exit status and log. Panics if it still runs after `within`.
    pub fn run_daemon_expecting_exit(
        &self,
        opts: DaemonOpts,
        within: Duration,
    ) -> (ExitStatus, String) {
        let (mut child, log) = self.spawn_daemon(&opts);
        match wait_exit(&mut child, Instant::now() + within) {
            Some(status) => (status, read_lossy(&log)),
            None => panic!(
                "latchkeyd was expected to exit but still ran after {within:?}\n--- its log ---\n{}",
                read_lossy(&log)
            ),
        }
    }

    fn spawn_daemon(&self, opts: &DaemonOpts) -> (Child, PathBuf) {
        let n = {
            let mut started = self.started.lock().unwrap();
            *started += 1;
            *started
        };
        let log = self.root.join(format!("latchkeyd-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut vars = self.vars.lock().unwrap().clone();
        for (key, value) in &opts.env {
            match value {
                Some(v) => vars.insert(key.clone(), v.into()),
                None => vars.remove(key),
            };
        }
        let mut cmd = Command::new(self.bin("latchkeyd"));
        if let Some((uid, gid)) = self.user() {
            cmd.uid(uid).gid(gid);
        }
        cmd.args(&opts.args)
            .env_clear()
            .envs(&vars)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        // If the test process dies without running our Drop (SIGKILL from
        // a timeout), the kernel ends the daemon too. Daemons are started
        // from the test's own thread, which outlives the env.
        // SAFETY: prctl is async-signal-safe; no allocation or locks here.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; {BUILD_HINT}",
                self.bin("latchkeyd").display()
            )
        });
        (child, log)
    }

    /// Sends SIGTERM to a daemon started by [`TestEnv::start_daemon`] and
    /// waits (bounded) for it to exit.
    pub fn stop_daemon(&self, daemon: &DaemonHandle) -> ExitStatus {
        let mut child = self.take_daemon(daemon);
        // SAFETY: kill with a pid we own (our unreaped child) and a valid signal.
        unsafe { libc::kill(daemon.pid as libc::pid_t, libc::SIGTERM) };
        wait_exit(&mut child, Instant::now() + STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "latchkeyd (pid {}) did not exit within {STOP_TIMEOUT:?} of SIGTERM\n--- its log ---\n{}",
                daemon.pid,
                read_lossy(&daemon.log)
            )
        })
    }

    /// Takes a direct daemon's child out of the env (panics if it is not one).
    fn take_daemon(&self, daemon: &DaemonHandle) -> Child {
        let mut daemons = self.daemons.lock().unwrap();
        let i = daemons
            .iter()
            .position(|(pid, _, _)| *pid == daemon.pid)
            .unwrap_or_else(|| panic!("pid {} is not a daemon of this env", daemon.pid));
        daemons.remove(i).1
    }

    /// Whether a direct daemon of this env is still running.
    pub fn daemon_running(&self, daemon: &DaemonHandle) -> bool {
        let mut daemons = self.daemons.lock().unwrap();
        match daemons.iter_mut().find(|(pid, _, _)| *pid == daemon.pid) {
            Some((_, child, _)) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The log of one direct daemon.
    pub fn daemon_log(&self, daemon: &DaemonHandle) -> String {
        read_lossy(&daemon.log)
    }

    /// The log of daemons the CLI started (`latchkeyd.log` beside the socket).
    pub fn cli_daemon_log(&self) -> String {
        read_lossy(&self.socket.with_file_name("latchkeyd.log"))
    }

    /// Every daemon log of this env, concatenated.
    pub fn all_daemon_logs(&self) -> String {
        daemon_logs(&self.root, &self.socket)
    }

    /// One `hello` over a fresh raw connection, bounded.
    fn try_hello(&self) -> std::io::Result<Value> {
        let mut conn = RawConn::try_connect(&self.socket)?;
        conn.stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.send_json(&json!({"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1}}))?;
        conn.read_json()?
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"))
    }

    /// The pid that answers `hello` on the env's socket, if any.
    pub fn serving_pid(&self) -> Option<u32> {
        self.try_hello()
            .ok()
            .and_then(|v| v["result"]["pid"].as_u64())
            .map(|p| p as u32)
    }

    /// Every `latchkeyd` process of this env that is not our direct child:
    /// those the CLI started, recognized by their `--socket` argument.
    pub fn cli_started_daemons(&self) -> Vec<u32> {
        let root = self.root.to_string_lossy().into_owned();
        processes()
            .into_iter()
            .filter(|(_, argv)| {
                argv.first().is_some_and(|a| a.ends_with("latchkeyd"))
                    && argv.iter().any(|a| a.starts_with(&root))
            })
            .map(|(pid, _)| pid)
            .collect()
    }
    /// Starts a daemon (unlocking at start from the passphrase file), and
    /// creates the vault with the CLI.
    pub fn start_and_init(&self) -> DaemonHandle {
        let daemon = self.start_daemon_with(DaemonOpts::new().unlocked(self));
        self.init();
        daemon
    }

    /// Kills a direct daemon with SIGKILL (no clean-up of any kind) and
    /// reaps it. Returns false if it had already exited.
    pub fn kill_daemon(&self, daemon: &DaemonHandle) -> bool {
        let mut child = self.take_daemon(daemon);
        let was_running = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        was_running
    }

    /// Kills every daemon of this env, bounded (from `Drop`): our own
    /// children with SIGKILL, then reaped; daemons the CLI started
    /// (detached, not our children) with SIGKILL by pid after checking the
    /// pid is still such a daemon, then waited for until gone (their
    /// parent, init, reaps them).
    pub(crate) fn kill_every_daemon(&self) {
        for (_, mut child, _) in self.daemons.lock().unwrap().drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut pids = self.cli_started_daemons();
        if let Some(pid) = self.serving_pid() {
            if !pids.contains(&pid) && is_latchkeyd(pid) {
                pids.push(pid);
            }
        }
        for pid in &pids {
            // SAFETY: plain kill(2) on a pid just checked to be our latchkeyd.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits for `child` to exit until `deadline`; past it, kills and reaps it
/// and returns `None`.
fn wait_exit(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("waiting on our own child works") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Every process's pid and argv (processes that vanish mid-scan are skipped).
pub fn processes() -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, argv));
    }
    out
}

fn is_latchkeyd(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            let argv0 = raw.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(argv0).ends_with("latchkeyd")
        })
        .unwrap_or(false)
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `check` every `every` until it returns `Some`, or panics with
/// `what` after `within`.
#[track_caller]
pub fn wait_for<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Every daemon log of the env at `root` whose socket is `socket`, each
/// under its path.
pub(crate) fn daemon_logs(root: &Path, socket: &Path) -> String {
    let mut out = String::new();
    let mut logs: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("latchkeyd-") && n.ends_with(".log"))
        })
        .collect();
    logs.sort();
    logs.push(socket.with_file_name("latchkeyd.log"));
    for log in logs {
        if log.exists() {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                log.display(),
                read_lossy(&log)
            ));
        }
    }
    out
}
