//! The real `latchkey` and `latchkeyd` binaries, seen from Rust.
//!
//! Owns: a private temp directory per test ([`TestEnv`]) with its own
//! `XDG_RUNTIME_DIR`, `XDG_DATA_HOME` and `HOME` (and `LATCHKEY_SOCKET` /
//! `LATCHKEY_VAULT` set explicitly); running the CLI in a clean, controlled
//! environment with stdin input and captured stdout / stderr / exit code;
//! starting and stopping `latchkeyd` directly with its stderr in a log file;
//! clients connected to the env's socket; and cleanup: dropping a
//! [`TestEnv`] kills every daemon it started, and every daemon the CLI
//! started for it, so a test never leaves an orphan.
//!
//! Every wait is bounded. The binaries are found in the cargo target dir
//! next to the test executable (or in `$LATCHKEY_BIN_DIR`); build them
//! first with `cargo build --workspace --bins`. When a test fails, the
//! env prints every daemon log; set `LATCHKEY_TEST_KEEP=1` to keep its temp
//! directory as well.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long one CLI invocation may take before the test fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to answer `hello` after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM (its own drain bound is 10 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Read / write bound on raw socket connections made by the harness.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// The passphrase [`TestEnv::init`] creates the vault with.
pub const PASSPHRASE: &str = "correct horse battery staple";

const BUILD_HINT: &str = "run `cargo build --workspace --bins` first";

/// What one CLI invocation produced.
#[derive(Debug, Clone)]
pub struct CliResult {
    /// The arguments after `latchkey`.
    pub args: Vec<String>,
    /// Exit code; `-1` when a signal ended the process.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliResult {
    /// Asserts exit code 0 and returns `self` for further checks.
    #[track_caller]
    pub fn success(&self) -> &Self {
        self.code_is(0)
    }

    /// Asserts this exit code.
    #[track_caller]
    pub fn code_is(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "`latchkey {}` exited with {} (expected {code})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts exit code 0 and returns stdout without its trailing newline.
    #[track_caller]
    pub fn out(&self) -> &str {
        self.success();
        self.stdout.strip_suffix('\n').unwrap_or(&self.stdout)
    }

    /// Asserts exit code 0 and parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        self.success();
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`latchkey {}` printed no JSON ({e}): {}",
                self.args.join(" "),
                self.stdout
            )
        })
    }
}

/// A CLI invocation being prepared: see [`TestEnv::cli`].
pub struct Cli<'a> {
    env: &'a TestEnv,
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    vars: Vec<(String, Option<OsString>)>,
}

impl Cli<'_> {
    /// Feeds these bytes on stdin (otherwise stdin is `/dev/null`).
    pub fn stdin(mut self, input: impl AsRef<[u8]>) -> Self {
        self.stdin = Some(input.as_ref().to_vec());
        self
    }

    /// Sets one more environment variable for this run only.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.vars.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable the env would otherwise set.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.vars.push((key.into(), None));
        self
    }

    /// Runs it (bounded by [`CLI_TIMEOUT`]) and records it in the transcript.
    pub fn run(self) -> CliResult {
        let mut vars = self.env.vars.lock().unwrap().clone();
        for (key, value) in self.vars {
            match value {
                Some(v) => vars.insert(key, v),
                None => vars.remove(&key),
            };
        }
        let mut cmd = Command::new(self.env.bin("latchkey"));
        cmd.args(&self.args)
            .env_clear()
            .envs(&vars)
            .current_dir(&self.env.root)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (code, stdout, stderr) = run_bounded(cmd, self.stdin, CLI_TIMEOUT, || {
            format!("`latchkey {}`", self.args.join(" "))
        });
        let result = CliResult {
            args: self.args,
            code,
            stdout,
            stderr,
        };
        self.env.transcript.lock().unwrap().push(result.clone());
        result
    }
}

/// Runs a command to completion within `limit`, feeding stdin and capturing
/// stdout and stderr; kills it and panics when it takes longer.
fn run_bounded(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    limit: Duration,
    what: impl Fn() -> String,
) -> (i32, String, String) {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {BUILD_HINT}", what()));
    let writer = input.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A child that exits without reading its input is not our failure.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let out = drain(child.stdout.take().expect("stdout is piped"));
    let err = drain(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting on a child works") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not finish within {limit:?}; killed it\n--- stdout ---\n{}\n--- stderr ---\n{}",
                what(),
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    // An `exec`'d command may leave a grandchild holding the pipes; the
    // readers end when the last holder exits, so join them bounded too.
    let stdout = join_bounded(out, deadline.max(Instant::now() + Duration::from_secs(5)));
    let stderr = join_bounded(err, deadline.max(Instant::now() + Duration::from_secs(5)));
    (status.code().unwrap_or(-1), stdout, stderr)
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn join_bounded(handle: std::thread::JoinHandle<String>, deadline: Instant) -> String {
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return "<output still open: a child process kept the pipe>".into();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.join().unwrap_or_default()
}

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

/// One test's private world: temp dirs, environment, daemons. See the module docs.
pub struct TestEnv {
    dir: tempfile::TempDir,
    /// The temp directory everything lives in.
    pub root: PathBuf,
    /// `$LATCHKEY_SOCKET`.
    pub socket: PathBuf,
    /// `$LATCHKEY_VAULT`.
    pub vault: PathBuf,
    bin_dir: PathBuf,
    /// The environment every CLI run and daemon gets (after `env_clear`).
    vars: Mutex<BTreeMap<String, OsString>>,
    /// Daemons started directly, by pid.
    daemons: Mutex<Vec<(u32, Child, PathBuf)>>,
    started: Mutex<u32>,
    transcript: Mutex<Vec<CliResult>>,
}

impl TestEnv {
    /// A fresh env with `LATCHKEY_INSECURE_TEST_KDF=1` (fast Argon2id).
    pub fn new() -> TestEnv {
        let env = TestEnv::with_real_kdf();
        env.set_env("LATCHKEY_INSECURE_TEST_KDF", "1");
        env
    }

    /// A fresh env whose vaults use the production Argon2id parameters.
    pub fn with_real_kdf() -> TestEnv {
        let bin_dir = bin_dir();
        // Short prefix: a Unix socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("lk-")
            .tempdir()
            .expect("cannot create a temp dir");
        let root = dir.path().to_path_buf();
        let run = root.join("run");
        let data = root.join("data");
        let home = root.join("home");
        for d in [&run, &data, &home] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let socket = run.join("latchkey").join("latchkey.sock");
        let vault = data.join("latchkey").join("vault.db");
        let mut vars = BTreeMap::new();
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        vars.insert("PATH".to_string(), path);
        vars.insert("HOME".to_string(), home.into_os_string());
        vars.insert("XDG_RUNTIME_DIR".to_string(), run.into_os_string());
        vars.insert("XDG_DATA_HOME".to_string(), data.into_os_string());
        vars.insert(
            "LATCHKEY_SOCKET".to_string(),
            socket.clone().into_os_string(),
        );
        vars.insert("LATCHKEY_VAULT".to_string(), vault.clone().into_os_string());
        let env = TestEnv {
            dir,
            root,
            socket,
            vault,
            bin_dir,
            vars: Mutex::new(vars),
            daemons: Mutex::new(Vec::new()),
            started: Mutex::new(0),
            transcript: Mutex::new(Vec::new()),
        };
        env.write_secret_file("passphrase", PASSPHRASE);
        env
    }

    /// Path of a binary in the target dir.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Sets a variable in the environment of every later CLI run and daemon.
    pub fn set_env(&self, key: &str, value: impl Into<OsString>) {
        self.vars.lock().unwrap().insert(key.into(), value.into());
    }

    /// Removes a variable from the environment of later CLI runs and daemons.
    pub fn remove_env(&self, key: &str) {
        self.vars.lock().unwrap().remove(key);
    }

    /// Passes the test process's own value of `key` on, if it has one.
    pub fn pass_env(&self, key: &str) -> bool {
        match std::env::var_os(key) {
            Some(v) => {
                self.set_env(key, v);
                true
            }
            None => false,
        }
    }

    /// Writes a 0600 file in the env's root and returns its path.
    pub fn write_secret_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.root.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// The file holding [`PASSPHRASE`].
    pub fn passphrase_file(&self) -> PathBuf {
        self.root.join("passphrase")
    }

    /// Prepares a CLI run: `env.cli(&["token", "x"]).stdin("...").run()`.
    pub fn cli(&self, args: &[&str]) -> Cli<'_> {
        Cli {
            env: self,
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: None,
            vars: Vec::new(),
        }
    }

    /// Runs the CLI with these arguments.
    pub fn latchkey(&self, args: &[&str]) -> CliResult {
        self.cli(args).run()
    }

    /// Every CLI run so far, in order.
    pub fn transcript(&self) -> Vec<CliResult> {
        self.transcript.lock().unwrap().clone()
    }

    /// `latchkey init --passphrase-file` with [`PASSPHRASE`] (starting the
    /// daemon if none runs).
    pub fn init(&self) -> CliResult {
        let file = self.passphrase_file();
        let r = self.latchkey(&["init", "--passphrase-file", file.to_str().unwrap()]);
        r.success();
        r
    }

    /// `latchkey provider add NAME --issuer ISSUER`.
    pub fn add_provider(&self, name: &str, issuer: &str) {
        self.latchkey(&["provider", "add", name, "--issuer", issuer])
            .success();
    }

    /// `latchkey credential add` for a client-credentials client, the secret
    /// on stdin.
    pub fn add_credential(
        &self,
        name: &str,
        provider: &str,
        client_id: &str,
        secret: &str,
        auth: &str,
        scope: &str,
    ) {
        let mut args = vec![
            "credential",
            "add",
            name,
            "--provider",
            provider,
            "--client-id",
            client_id,
            "--auth",
            auth,
            "--client-secret-stdin",
        ];
        if !scope.is_empty() {
            args.extend(["--scope", scope]);
        }
        self.cli(&args).stdin(secret).run().success();
    }

    /// `latchkey token NAME`, asserting success; the bare token.
    #[track_caller]
    pub fn token(&self, name: &str) -> String {
        let r = self.latchkey(&["token", name]);
        let token = r.out().to_string();
        assert!(
            !token.is_empty() && !token.contains(char::is_whitespace),
            "`latchkey token {name}` printed {:?}",
            r.stdout
        );
        token
    }

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
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "latchkeyd (pid {pid}) exited with {status} before it answered\n--- its log ---\n{}",
                    read_lossy(&log)
                );
            }
            if let Ok(hello) = self.try_hello() {
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
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, read_lossy(&log));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "latchkeyd was expected to exit but still ran after {within:?}\n--- its log ---\n{}",
                    read_lossy(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
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
        let mut child = {
            let mut daemons = self.daemons.lock().unwrap();
            let i = daemons
                .iter()
                .position(|(pid, _, _)| *pid == daemon.pid)
                .unwrap_or_else(|| panic!("pid {} is not a daemon of this env", daemon.pid));
            daemons.remove(i).1
        };
        // SAFETY: kill with a pid we own (our unreaped child) and a valid signal.
        unsafe { libc::kill(daemon.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "latchkeyd (pid {}) did not exit within {STOP_TIMEOUT:?} of SIGTERM\n--- its log ---\n{}",
                    daemon.pid,
                    read_lossy(&daemon.log)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.root)
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
        logs.push(self.socket.with_file_name("latchkeyd.log"));
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

    /// A blocking client on the env's socket (30 s call timeout).
    pub fn client(&self) -> latchkey_client::blocking::Client {
        let mut client = latchkey_client::blocking::Client::connect_to(&self.socket)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.socket.display()));
        client.set_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        client
    }

    /// An async client on the env's socket.
    pub async fn async_client(&self) -> latchkey_client::Client {
        latchkey_client::Client::connect_to(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.socket.display()))
    }

    /// A raw connection to the env's socket, for bytes the clients never send.
    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.socket)
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

    /// Opens the vault file with SQLite, for inspection and tampering. Stop
    /// the daemon before writing: it must not see a file change under it.
    pub fn vault_db(&self) -> rusqlite::Connection {
        let db = rusqlite::Connection::open(&self.vault)
            .unwrap_or_else(|e| panic!("cannot open the vault {}: {e}", self.vault.display()));
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db
    }

    /// The Argon2id parameters of the vault's passphrase slots (`kdf` of each slot's params).
    pub fn passphrase_slot_kdf(&self) -> Vec<Value> {
        let db = self.vault_db();
        let mut stmt = db
            .prepare("SELECT params FROM key_slots WHERE kind = 'passphrase'")
            .unwrap();
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|p| serde_json::from_str::<Value>(&p.unwrap()).unwrap()["kdf"].clone())
            .collect();
        rows
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
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "=== latchkey test env {} (daemon logs follow) ===\n{}",
                self.root.display(),
                self.all_daemon_logs()
            );
        }
        // Our own children: SIGKILL, then reap.
        for (_, mut child, _) in self.daemons.lock().unwrap().drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Daemons the CLI started (detached, not our children): SIGKILL by
        // pid after checking the pid is still such a daemon, then wait until
        // it is gone (its parent, init, reaps it).
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
        if std::env::var_os("LATCHKEY_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// A raw Unix-socket connection to a daemon, with read/write timeouts.
pub struct RawConn {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl RawConn {
    pub fn connect(socket: &Path) -> RawConn {
        RawConn::try_connect(socket)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()))
    }

    fn try_connect(socket: &Path) -> std::io::Result<RawConn> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(RawConn { stream, reader })
    }

    /// Writes bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes one JSON value as a line.
    pub fn send_json(&mut self, value: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(value).unwrap();
        line.push(b'\n');
        self.send(&line)
    }

    /// Reads one reply line; `None` when the daemon closed the connection.
    pub fn read_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line)? {
            0 => Ok(None),
            _ => Ok(Some(line)),
        }
    }

    /// Reads one reply and parses it; `None` on a closed connection.
    pub fn read_json(&mut self) -> std::io::Result<Option<Value>> {
        Ok(self.read_line()?.map(|line| {
            serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("the daemon sent a reply that is not JSON ({e}): {line:?}")
            })
        }))
    }

    /// Sends a request and returns its reply (panics on a closed connection).
    #[track_caller]
    pub fn call(&mut self, request: &Value) -> Value {
        self.send_json(request).expect("cannot send the request");
        self.read_json()
            .expect("cannot read the reply")
            .unwrap_or_else(|| {
                panic!("the daemon closed the connection instead of answering {request}")
            })
    }

    /// Asserts the daemon closes the connection (EOF) within the read timeout,
    /// with no further reply.
    #[track_caller]
    pub fn expect_closed(&mut self) {
        match self.read_line() {
            Ok(None) => {}
            Ok(Some(line)) => panic!("expected the daemon to close the connection, got {line:?}"),
            // A reset also means the daemon dropped us.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the daemon to close the connection, got {e}"),
        }
    }
}

/// `$LATCHKEY_BIN_DIR`, else the cargo target dir the test executable is in
/// (`target/debug/deps/<test>` → `target/debug`).
fn bin_dir() -> PathBuf {
    let dir = match std::env::var_os("LATCHKEY_BIN_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test knows its own path");
            let deps = exe.parent().expect("the test executable is in a directory");
            deps.parent().unwrap_or(deps).to_path_buf()
        }
    };
    for name in ["latchkey", "latchkeyd"] {
        if !dir.join(name).is_file() {
            panic!(
                "{} not found in {}: {BUILD_HINT} (or set LATCHKEY_BIN_DIR)",
                name,
                dir.display()
            );
        }
    }
    dir
}

fn read_lossy(path: &Path) -> String {
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

// ------------------------------------------------ user logins over the socket ---
//
// Added for the login / refresh / revoke / crash tests: the user-flow verbs
// driven through the protocol (`latchkey_client::blocking::Client`, one
// fresh connection per call), so they do not depend on CLI commands.

/// How long `login.wait` may block before the harness gives up.
pub const LOGIN_WAIT_TIMEOUT: Duration = Duration::from_secs(90);

impl TestEnv {
    /// One call over a fresh blocking connection (30 s reply bound).
    pub fn rpc<P: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, latchkey_client::Error> {
        self.client().call(method, params)
    }

    /// Starts a daemon (unlocking at start from the passphrase file), and
    /// creates the vault with the CLI.
    pub fn start_and_init(&self) -> DaemonHandle {
        let daemon = self.start_daemon_with(DaemonOpts::new().unlocked(self));
        self.init();
        daemon
    }

    /// `credential.add` for a user credential (authorization code or device
    /// code grant), over the protocol.
    #[allow(clippy::too_many_arguments)]
    pub fn add_user_credential(
        &self,
        name: &str,
        provider: &str,
        client_id: &str,
        secret: Option<&str>,
        auth: latchkey_client::protocol::AuthMethod,
        grant: latchkey_client::protocol::GrantType,
        scopes: &[&str],
    ) -> latchkey_client::protocol::CredentialInfo {
        let params = latchkey_client::protocol::CredentialAddParams {
            name: name.into(),
            provider: provider.into(),
            client_id: client_id.into(),
            client_secret: secret.map(|s| secrecy::SecretString::from(s.to_string())),
            grant,
            auth,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            redirect_uri: None,
        };
        self.rpc(latchkey_client::protocol::method::CREDENTIAL_ADD, &params)
            .unwrap_or_else(|e| panic!("credential.add {name}: {e}"))
    }

    /// `credential.show`.
    #[track_caller]
    pub fn credential_show(&self, name: &str) -> latchkey_client::protocol::CredentialInfo {
        self.rpc(
            latchkey_client::protocol::method::CREDENTIAL_SHOW,
            &latchkey_client::protocol::NameParams { name: name.into() },
        )
        .unwrap_or_else(|e| panic!("credential.show {name}: {e}"))
    }

    /// `login.start`.
    pub fn login_start(
        &self,
        params: &latchkey_client::protocol::LoginStartParams,
    ) -> Result<latchkey_client::protocol::LoginStartResult, latchkey_client::Error> {
        self.rpc(latchkey_client::protocol::method::LOGIN_START, params)
    }

    /// `login.wait`, bounded by [`LOGIN_WAIT_TIMEOUT`].
    pub fn login_wait(
        &self,
        login_id: &str,
    ) -> Result<latchkey_client::protocol::LoginResult, latchkey_client::Error> {
        let mut client = self.client();
        client.set_timeout(Some(LOGIN_WAIT_TIMEOUT)).unwrap();
        client.call(
            latchkey_client::protocol::method::LOGIN_WAIT,
            &latchkey_client::protocol::LoginWaitParams {
                login_id: login_id.into(),
            },
        )
    }

    /// A complete browser login of credential `name`: `login.start`, the
    /// browser through the provider's pages to the loopback callback, then
    /// `login.wait`. Panics unless every step succeeds.
    #[track_caller]
    pub fn browser_login(
        &self,
        name: &str,
        browser: &crate::browser::Browser,
    ) -> latchkey_client::protocol::LoginResult {
        let started = self
            .login_start(&latchkey_client::protocol::LoginStartParams {
                credential: name.into(),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("login.start {name}: {e}"));
        let url = started
            .authorization_url
            .unwrap_or_else(|| panic!("login.start {name} gave no authorization URL"));
        let callback = browser.authorize(&url);
        assert_eq!(
            callback.status, 200,
            "the daemon's callback page refused a good login: {}",
            callback.body
        );
        self.login_wait(&started.login_id)
            .unwrap_or_else(|e| panic!("login.wait {name}: {e}"))
    }

    /// `token.get` with an optional `min_ttl`.
    pub fn token_get(
        &self,
        name: &str,
        min_ttl: Option<u64>,
    ) -> Result<latchkey_client::TokenReply, latchkey_client::Error> {
        self.client().token_with(&latchkey_client::TokenParams {
            credential: name.into(),
            scopes: None,
            min_ttl,
        })
    }

    /// Kills a direct daemon with SIGKILL (no clean-up of any kind) and
    /// reaps it. Returns false if it had already exited.
    pub fn kill_daemon(&self, daemon: &DaemonHandle) -> bool {
        let mut child = {
            let mut daemons = self.daemons.lock().unwrap();
            let i = daemons
                .iter()
                .position(|(pid, _, _)| *pid == daemon.pid)
                .unwrap_or_else(|| panic!("pid {} is not a daemon of this env", daemon.pid));
            daemons.remove(i).1
        };
        let was_running = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        was_running
    }
}
