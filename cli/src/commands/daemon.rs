//! `latchkey daemon start|stop|status`: manage `latchkeyd` explicitly (every
//! other command starts it on demand).

use crate::context::Ctx;
use crate::exit::{self, Silent};
use crate::output::{self, Fields};
use crate::spawn;
use anyhow::{Context, Result};
use latchkey_client::blocking::Client;
use latchkey_client::duration;
use latchkey_client::protocol::{DaemonShutdown, Empty, VaultState};
use latchkey_client::ErrorKind;
use std::process::Command as Process;
use std::time::{Duration, Instant};

/// 10 s: the daemon locks the vault and closes connections in well under a
/// second; past this something is wrong and the user should know.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Subcommand)]
pub enum Command {
    /// Start the daemon in the background (nothing happens if it already runs)
    Start(StartArgs),
    /// Ask the daemon to shut down, and wait until it is gone
    Stop,
    /// Say whether the daemon runs, with its pid and version (exit code 3 if it does not)
    Status,
}

#[derive(clap::Args)]
pub struct StartArgs {
    /// Lock the vault after this long without use: 600, 30s, 10m, 1h or 1d; 0 never locks [default: the daemon's, or $LATCHKEY_IDLE_TIMEOUT]
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_whole_secs)]
    idle_timeout: Option<Duration>,
    /// Run the daemon in this terminal instead of the background, logging to stderr
    #[arg(long)]
    foreground: bool,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Start(args) => start(ctx, args),
        Command::Stop => stop(ctx),
        Command::Status => status(ctx),
    }
}

fn start(ctx: &Ctx, args: StartArgs) -> Result<()> {
    let daemon_args = ctx.daemon_args(args.idle_timeout);
    if args.foreground {
        // The daemon itself refuses to start when another one serves the vault.
        return run_foreground(spawn::command(&daemon_args));
    }
    if let Some(mut conn) = ctx.connect_running()? {
        let pid = conn.hello()?.pid;
        if args.idle_timeout.is_some() {
            ctx.warn("--idle-timeout was not applied: the running daemon keeps its settings; restart it with `latchkey daemon stop` first");
        }
        return ctx.done(format_args!("daemon already running (pid {pid})"));
    }
    let mut started = spawn::start(&daemon_args)?;
    match started.spawned_pid {
        Some(pid) => ctx.info(format_args!("started daemon (pid {pid})")),
        None => {
            let pid = started
                .client
                .hello()
                .context("failed to greet the latchkey daemon")?
                .pid;
            ctx.done(format_args!("daemon already running (pid {pid})"))?;
        }
    }
    Ok(())
}

/// On Unix the CLI becomes the daemon (exec): signals, exit code and stdio
/// are the daemon's own. Returns only on failure.
#[cfg(unix)]
fn run_foreground(mut cmd: Process) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    Err(cannot_start(&cmd, err))
}

#[cfg(not(unix))]
fn run_foreground(mut cmd: Process) -> Result<()> {
    let status = cmd.status().map_err(|err| cannot_start(&cmd, err))?;
    match status.code() {
        Some(0) => Ok(()),
        code => Err(Silent(code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1)).into()),
    }
}

fn cannot_start(cmd: &Process, err: std::io::Error) -> anyhow::Error {
    let bin = std::path::Path::new(cmd.get_program())
        .display()
        .to_string();
    if err.kind() == std::io::ErrorKind::NotFound {
        exit::daemon_unreachable(format!(
            "cannot find the daemon binary {bin}: install latchkeyd next to latchkey or on PATH, or set {}",
            spawn::DAEMON_BIN_ENV
        ))
    } else {
        exit::daemon_unreachable(format!("failed to start the daemon {bin}: {err}"))
    }
}

fn stop(ctx: &Ctx) -> Result<()> {
    let Some(mut conn) = ctx.connect_running()? else {
        return ctx.done("daemon is not running");
    };
    let pid = conn.hello()?.pid;
    match conn.raw::<DaemonShutdown>(&Empty {}) {
        Ok(_) => {}
        // Going away before or while answering is what we asked for.
        Err(latchkey_client::Error::Io(_)) => {}
        Err(err) if err.kind() == Some(ErrorKind::ShuttingDown) => {}
        Err(err) => return Err(err).context("failed to stop the daemon"),
    }
    drop(conn);

    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    // First the socket stops answering; then the process exits and releases
    // the vault's lock file, so a daemon started right after us can take it.
    while answers(ctx) || process_exists(pid) {
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "the daemon (pid {pid}) is still running {}s after it was asked to stop: stop it with `kill {pid}`",
                STOP_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    ctx.done(format_args!("stopped daemon (pid {pid})"))
}

/// Whether anything still completes a handshake on the socket. A daemon
/// that accepts but fails the handshake is still on its way out.
fn answers(ctx: &Ctx) -> bool {
    !matches!(
        Client::connect_to(&ctx.socket),
        Err(latchkey_client::Error::Connect { .. })
    )
}

#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process
    // exists and may be signalled. A failure with EPERM would mean another
    // user's process reuses the pid, so ours is gone: only success counts.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    false
}

fn status(ctx: &Ctx) -> Result<()> {
    let Some(mut conn) = ctx.connect_running()? else {
        output::print(&format!(
            "daemon: not running (socket {}); start it with `latchkey daemon start`\n",
            ctx.socket.display()
        ))?;
        return Err(Silent(exit::DAEMON_UNREACHABLE).into());
    };
    let hello = conn.hello()?;
    let status = conn.status()?;
    let mut f = Fields::default();
    f.add("daemon", format!("running (pid {})", hello.pid))
        .add(
            "version",
            format!(
                "latchkeyd {} (protocol {})",
                hello.daemon_version, hello.protocol
            ),
        )
        .add("socket", ctx.socket.display().to_string())
        .add(
            "vault",
            match status.vault {
                VaultState::Uninitialized => "not initialized",
                VaultState::Locked => "locked",
                VaultState::Unlocked => "unlocked",
            },
        )
        .add("path", &status.vault_path);
    // Only a log the daemon says it writes (a foreground daemon logs to
    // its terminal, or the journal).
    if let Some(log) = &status.log_file {
        f.add("log", log);
    }
    output::print(&f.render())
}
