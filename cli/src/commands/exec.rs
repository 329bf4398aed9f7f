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
