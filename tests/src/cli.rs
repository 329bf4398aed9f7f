//! Running the real `latchkey` CLI for a test: [`Cli`] prepares one run in
//! the env's clean environment (stdin, extra variables), [`CliResult`]
//! holds what it printed and its exit code, and every run is bounded by
//! [`CLI_TIMEOUT`] and kept in the env's transcript. Also the CLI verbs
//! tests use to set an env up (`init`, `provider add`, `token`).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::env::{TestEnv, BUILD_HINT};

/// How long one CLI invocation may take before the test fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// What runs: the `latchkey` CLI unless [`TestEnv::program`] named another.
    program: Option<std::path::PathBuf>,
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

    /// The command as it would run, with stdin piped when input was given.
    fn command(&mut self) -> (std::path::PathBuf, Command) {
        let mut vars = self.env.vars.lock().unwrap().clone();
        for (key, value) in std::mem::take(&mut self.vars) {
            match value {
                Some(v) => vars.insert(key, v),
                None => vars.remove(&key),
            };
        }
        let program = self
            .program
            .clone()
            .unwrap_or_else(|| self.env.bin("latchkey"));
        let mut cmd = Command::new(&program);
        if let Some((uid, gid)) = self.env.user() {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
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
        (program, cmd)
    }

    /// Starts it with stdin, stdout and stderr piped, for a conversation
    /// (answer what it prints); the caller bounds it (not recorded in the
    /// transcript).
    pub fn spawn(mut self) -> std::process::Child {
        let (program, mut cmd) = self.command();
        // As a command in a terminal's foreground: Ctrl-C (SIGINT) at its
        // default. A test binary run in the background of a script (`&`,
        // no job control) has SIGINT ignored, and children would inherit
        // that, so a test's Ctrl-C would never arrive.
        // SAFETY: `signal` is async-signal-safe; nothing else runs here.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                Ok(())
            });
        }
        cmd.stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {BUILD_HINT}", program.display()))
    }

    /// Runs it (bounded by [`CLI_TIMEOUT`]) and records it in the transcript.
    pub fn run(mut self) -> CliResult {
        let (program, cmd) = self.command();
        let (code, stdout, stderr) = run_bounded(cmd, self.stdin, CLI_TIMEOUT, || {
            format!("`{} {}`", program.display(), self.args.join(" "))
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

impl TestEnv {
    /// Prepares a CLI run: `env.cli(&["token", "x"]).stdin("...").run()`.
    ///
    /// `credential add` without `--access` adds an `open` credential (with
    /// the passphrase file as the proof it needs): most tests are about
    /// something else than which app asks, and run the CLI from the test
    /// binary. Tests of the access policy say `--access ask`.
    pub fn cli(&self, args: &[&str]) -> Cli<'_> {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if args.starts_with(&["credential".into(), "add".into()])
            && !args.iter().any(|a| a == "--access")
        {
            let file = self.passphrase_file().display().to_string();
            args.extend([
                "--access".into(),
                "open".into(),
                "--passphrase-file".into(),
                file,
            ]);
        }
        Cli {
            env: self,
            program: None,
            args,
            stdin: None,
            vars: Vec::new(),
        }
    }

    /// Prepares a run of another program with the env's environment (an
    /// app asking the daemon for a token, in the access-policy tests).
    pub fn program(&self, exe: &std::path::Path, args: &[&str]) -> Cli<'_> {
        Cli {
            env: self,
            program: Some(exe.to_owned()),
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

    /// `latchkey init --passphrase-file` with [`PASSPHRASE`](crate::env::PASSPHRASE) (starting the
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
}
