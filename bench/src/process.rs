//! Part 3: whole-process time — spawn, run, exit, reap — of
//! `latchkey token NAME` against the bench's daemon, next to programs that
//! do nothing (`/bin/true` and an empty Rust binary). The programs are run
//! round-robin so drift on the machine hits them alike. `latchkey
//! --version` separates the CLI's own start-up from its talk with the
//! daemon; the run with `LATCHKEY_VAULT` set adds the check that the daemon
//! serves that vault (a `status` round trip before issue 8; now read from
//! the daemon's `hello` answer, which shares the token request's round trip);
//! `latchkey header NAME` takes the same path as `token`. Each CLI row's
//! p50 is printed as a ratio to the empty Rust binary's, against the
//! 1.15× target. When the CLI is missing or does not print the cached
//! token yet, its rows are skipped with a message and the floors are still
//! measured.

use crate::daemon::{Env, CREDENTIAL};
use crate::load::{new_histogram, p50, p99, us};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use latchkey_testkit::token_endpoint;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Issue 8's target: a cached `latchkey token NAME`, the whole process,
/// within this factor of an empty Rust binary's at p50.
pub const TARGET_CLI_RATIO: f64 = 1.15;

/// CLI p50/p99 and the empty binary's p50, when the CLI row ran.
pub struct CliFigures {
    pub cli_p50: u64,
    pub cli_p99: u64,
    pub floor_p50: Option<u64>,
}

struct Program {
    label: String,
    /// A `latchkey` row (not a floor).
    cli: bool,
    command: Command,
    hist: Histogram<u64>,
}

impl Program {
    fn new(label: impl Into<String>, path: PathBuf, args: &[&str]) -> Program {
        let cli = path.file_name().is_some_and(|name| name == "latchkey");
        let mut command = Command::new(path);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Program {
            label: label.into(),
            cli,
            command,
            hist: new_histogram(),
        }
    }

    fn run_once(&mut self) -> Result<u64> {
        let start = Instant::now();
        let status = self
            .command
            .status()
            .with_context(|| format!("failed to run {}", self.label))?;
        let nanos = start.elapsed().as_nanos() as u64;
        if !status.success() {
            bail!("{} exited with {status}", self.label);
        }
        Ok(nanos)
    }
}

/// Measures the floors and, when it works, `latchkey token NAME`:
/// `warmup` untimed rounds, then `runs` timed rounds, and prints them.
pub fn run(
    cli_bin: Option<PathBuf>,
    empty_bin: Option<PathBuf>,
    env: &Env,
    warmup: usize,
    runs: usize,
) -> Result<Option<CliFigures>> {
    let mut programs = vec![Program::new("/bin/true", "/bin/true".into(), &[])];
    if let Some(empty) = empty_bin {
        programs.push(Program::new("empty Rust binary", empty, &[]));
    }
    let cli = match cli_bin {
        None => {
            println!("  SKIPPED latchkey token: no `latchkey` binary next to the bench; build it with `cargo build --release -p latchkey-cli`");
            false
        }
        Some(path) => match check_cli(&path, env) {
            Ok(()) => {
                // Start-up alone: parses arguments, talks to no daemon.
                programs.push(Program::new(
                    "latchkey --version",
                    path.clone(),
                    &["--version"],
                ));
                // As a script under LATCHKEY_VAULT runs it: the CLI checks the
                // daemon serves that vault (from its `hello` answer since issue 8;
                // a `status` round trip before).
                let mut named = Program::new(
                    "token, LATCHKEY_VAULT set",
                    path.clone(),
                    &["token", CREDENTIAL],
                );
                env.apply(&mut named.command, true);
                programs.push(named);
                // `header` shares the token path; its output is one line more.
                let mut header = Program::new(
                    format!("latchkey header {CREDENTIAL}"),
                    path.clone(),
                    &["header", CREDENTIAL],
                );
                env.apply(&mut header.command, false);
                programs.push(header);
                // As a desktop user runs it; last, as the figure reported.
                let mut p = Program::new(
                    format!("latchkey token {CREDENTIAL}"),
                    path,
                    &["token", CREDENTIAL],
                );
                env.apply(&mut p.command, false);
                programs.push(p);
                true
            }
            Err(e) => {
                println!("  SKIPPED latchkey token: the CLI does not work yet: {e:#}");
                false
            }
        },
    };

    for _ in 0..warmup {
        for p in programs.iter_mut() {
            p.run_once()?;
        }
    }
    for _ in 0..runs {
        for p in programs.iter_mut() {
            let nanos = p.run_once()?;
            p.hist.saturating_record(nanos);
        }
    }

    for p in &programs {
        println!(
            "  {:<26} p50 {:>10}  p99 {:>10}  min {:>10}",
            p.label,
            us(p50(&p.hist)),
            us(p99(&p.hist)),
            us(p.hist.min())
        );
    }
    if !cli {
        return Ok(None);
    }
    let cli_p = programs.last().expect("the CLI was pushed last");
    let floor_p50 = programs
        .iter()
        .find(|p| p.label == "empty Rust binary")
        .map(|p| p50(&p.hist));
    if let Some(floor) = floor_p50 {
        println!(
            "  latchkey token costs {} more than an empty Rust binary at p50 ({:.2}×)",
            us(p50(&cli_p.hist).saturating_sub(floor)),
            p50(&cli_p.hist) as f64 / floor as f64
        );
        // Every CLI row as a ratio; the token-path rows against the target.
        for p in programs.iter().filter(|p| p.cli) {
            let ratio = p50(&p.hist) as f64 / floor as f64;
            let verdict = match p.label.contains("--version") {
                true => String::new(),
                false => format!(
                    " (target ≤ {TARGET_CLI_RATIO}×): {}",
                    if ratio <= TARGET_CLI_RATIO {
                        "MET"
                    } else {
                        "NOT MET"
                    }
                ),
            };
            println!(
                "  {:<26} {ratio:.2}× the empty Rust binary at p50{verdict}",
                p.label
            );
        }
    }
    Ok(Some(CliFigures {
        cli_p50: p50(&cli_p.hist),
        cli_p99: p99(&cli_p.hist),
        floor_p50,
    }))
}

/// One `latchkey token NAME` run whose output must be the cached token.
fn check_cli(path: &Path, env: &Env) -> Result<()> {
    let mut cmd = Command::new(path);
    cmd.args(["token", CREDENTIAL]).stdin(Stdio::null());
    env.apply(&mut cmd, false);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.trim_end() != token_endpoint::token_for(1) {
        bail!(
            "`latchkey token {CREDENTIAL}` exited with {} and printed {} bytes (expected the cached token); stderr: {}",
            out.status,
            out.stdout.len(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
