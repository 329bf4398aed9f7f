//! `latchkey exec NAME -- CMD ARGS…`: run a command with an access token in
//! its environment (never in its argv, which every local user can read).

use crate::commands::token::{self, TokenArgs};
use crate::context::Ctx;
use crate::exit::Fail;
use anyhow::Result;
use secrecy::ExposeSecret;
use std::ffi::OsString;
use std::process::Command;

/// The variable the token is put in when `--env` names none.
pub const DEFAULT_ENV: &str = "LATCHKEY_TOKEN";

#[derive(clap::Args)]
#[cfg_attr(test, derive(Debug))]
pub struct Args {
    #[command(flatten)]
    pub(crate) token: TokenArgs,
    /// The environment variable that holds the token in the command's environment
    #[arg(long, value_name = "VAR", default_value = DEFAULT_ENV, value_parser = parse_env_name)]
    pub(crate) env: String,
    /// Replace the token by *** in the command's output (stdout and stderr pass through pipes)
    #[arg(long)]
    pub(crate) mask: bool,
    /// The command to run and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<OsString>,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let reply = token::fetch(ctx, &args.token)?;
    let (program, rest) = args
        .command
        .split_first()
        .expect("clap requires at least one value for CMD");
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .env(&args.env, reply.access_token.expose_secret());
    if args.mask {
        return masked::run(cmd, program, reply.access_token.expose_secret().as_bytes());
    }
    run_command(cmd, program)
}

/// On Unix, exec replaces this process with the command (same pid): its exit
/// code and signals are simply ours, stdio is the terminal's, and no
/// latchkey process lingers holding the token. Returns only on failure.
#[cfg(unix)]
fn run_command(mut cmd: Command, program: &OsString) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    Err(cannot_run(program, err))
}

/// Elsewhere: run the command, wait, and pass its exit code on.
#[cfg(not(unix))]
fn run_command(mut cmd: Command, program: &OsString) -> Result<()> {
    let status = cmd.status().map_err(|err| cannot_run(program, err))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(crate::exit::Silent(u8::try_from(code).unwrap_or(1)).into()),
        None => Err(crate::exit::Silent(1).into()),
    }
}

/// `--mask`: the command runs as a child with its stdout and stderr
/// piped through a [`Masker`](crate::mask::Masker) each; signals that would
/// end or steer us (INT, TERM, HUP, QUIT, USR1, USR2, WINCH) are passed to
/// it; its exit code is ours, and its death by a signal is ours too.
#[cfg(unix)]
mod masked {
    use super::cannot_run;
    use crate::mask::Masker;
    use anyhow::Result;
    use std::ffi::OsString;
    use std::io::{Read, Write};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicI32, Ordering};

    /// The child's pid, for the signal handler (0: none yet).
    static CHILD: AtomicI32 = AtomicI32::new(0);
    const FORWARDED: [libc::c_int; 7] = [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ];
    /// 8 KiB reads: a read returns what the pipe holds, so output is
    /// passed on as soon as it is written.
    const CHUNK: usize = 8192;

    /// Passes a signal sent to us (by `kill`: `si_code` ≤ 0) to the child.
    /// One the terminal sent (Ctrl-C: `si_code` > 0) went to the whole
    /// foreground process group, the child included: not sent twice.
    extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        let pid = CHILD.load(Ordering::Relaxed);
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
        let from_kill = info.is_null() || unsafe { (*info).si_code } <= 0;
        if pid > 0 && from_kill {
            // SAFETY: kill is async-signal-safe; pid is our child's.
            unsafe { libc::kill(pid, sig) };
        }
    }

    pub fn run(mut cmd: Command, program: &OsString, token: &[u8]) -> Result<()> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|err| cannot_run(program, err))?;
        CHILD.store(
            i32::try_from(child.id()).expect("a pid fits in pid_t"),
            Ordering::Relaxed,
        );
        for sig in FORWARDED {
            // SAFETY: `forward` only reads an atomic and its siginfo and
            // calls kill; the sigaction struct is fully initialised.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = forward as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let (t1, t2) = (token.to_vec(), token.to_vec());
        let pumps = [
            std::thread::spawn(move || pump(out, std::io::stdout(), &t1)),
            std::thread::spawn(move || pump(err, std::io::stderr(), &t2)),
        ];
        let status = child.wait();
        for p in pumps {
            let _ = p.join();
        }
        let status = status.map_err(|e| anyhow::anyhow!("failed to wait for the command: {e}"))?;
        if let Some(sig) = status.signal() {
            // Die of the same signal, so a shell sees what it would have.
            // SAFETY: resetting a handler and raising a signal at ourselves.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            return Err(crate::exit::Silent(u8::try_from(128 + sig).unwrap_or(1)).into());
        }
        match status.code() {
            Some(0) => Ok(()),
            Some(code) => Err(crate::exit::Silent(u8::try_from(code).unwrap_or(1)).into()),
            None => Err(crate::exit::Silent(1).into()),
        }
    }

    /// Copies `from` to `to` through a masker until the end; a closed
    /// `to` stops the writing, not the reading (the child never blocks).
    fn pump(mut from: impl Read, mut to: impl Write, token: &[u8]) {
        let mut masker = Masker::new(token);
        let mut buf = zeroize::Zeroizing::new(vec![0u8; CHUNK]);
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(CHUNK + 8));
        let mut open = true;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            out.clear();
            masker.push(&buf[..n], &mut out);
            if open && !out.is_empty() {
                open = to.write_all(&out).and_then(|()| to.flush()).is_ok();
            }
        }
        out.clear();
        masker.finish(&mut out);
        if open {
            let _ = to.write_all(&out).and_then(|()| to.flush());
        }
    }
}

#[cfg(not(unix))]
mod masked {
    pub fn run(_: std::process::Command, _: &std::ffi::OsString, _: &[u8]) -> anyhow::Result<()> {
        Err(crate::exit::usage("--mask is only available on Unix"))
    }
}

/// 127 when the command does not exist and 126 when it cannot be executed,
/// as POSIX shells and env(1) report.
fn cannot_run(program: &OsString, err: std::io::Error) -> anyhow::Error {
    let name = program.to_string_lossy();
    let (code, message) = match err.kind() {
        std::io::ErrorKind::NotFound => (
            127,
            format!("cannot run '{name}': command not found (check its name or PATH)"),
        ),
        _ => (126, format!("cannot run '{name}': {err}")),
    };
    anyhow::Error::new(Fail { code, message })
}

/// An environment variable name: not empty, no `=` and no NUL.
pub(crate) fn parse_env_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(format!("'{name}' is not a valid environment variable name"));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit;

    #[test]
    fn env_names() {
        assert!(parse_env_name("LATCHKEY_TOKEN").is_ok());
        assert!(parse_env_name("GH_TOKEN").is_ok());
        for bad in ["", "A=B", "A\0"] {
            assert!(parse_env_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn failures_to_run_use_the_shell_codes() {
        let missing = cannot_run(&"nope".into(), std::io::ErrorKind::NotFound.into());
        assert_eq!(exit::for_error(&missing), 127);
        let denied = cannot_run(&"x".into(), std::io::ErrorKind::PermissionDenied.into());
        assert_eq!(exit::for_error(&denied), 126);
    }
}
