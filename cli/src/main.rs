//! `latchkey`: the command line for the Latchkey credential vault.
//!
//! Every command talks to `latchkeyd` over its local socket through
//! `latchkey_client::blocking::Client`, starting the daemon when nothing
//! answers. One subcommand lives in one file under `commands/`.
//!
//! # Exit codes
//!
//! The numbers are a stable interface for scripts. They and their meanings
//! are listed once, in [`exit::EXIT_CODES`], which `latchkey --help` prints.
//!
//! `latchkey exec` exits with its command's own code (128 + N when a signal
//! N killed it; 126 or 127 when it cannot be run). Errors are printed on
//! stderr as `latchkey: error: <message>`; a closed stdout pipe is not an
//! error (exit 0, nothing printed). The mapping lives in [`exit`].

mod args;
mod commands;
mod context;
mod exit;
mod fast;
mod mask;
mod output;
mod secret;
mod spawn;
mod terminal;
mod watch;

use clap::{CommandFactory, FromArgMatches, Parser};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Hand out short-lived OAuth access tokens from a local, encrypted vault.
#[derive(Parser)]
#[command(name = "latchkey", version, after_help = exit::help_table())]
struct Cli {
    /// The daemon's socket [default: $LATCHKEY_SOCKET, else $XDG_RUNTIME_DIR/latchkey/latchkey.sock]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    socket: Option<PathBuf>,

    /// The vault file the daemon serves [default: $LATCHKEY_VAULT, else $XDG_DATA_HOME/latchkey/vault.db]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    vault: Option<PathBuf>,

    /// Print no notices or confirmations (errors, warnings and requested output still appear)
    #[arg(short, long, global = true, help_heading = "Global options")]
    quiet: bool,

    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Some(version) = fast::version(&args) {
        // As clap does, whether or not stdout took it.
        let _ = output::print(version);
        return ExitCode::from(exit::OK);
    }
    let (cli, withheld_env) = match fast::parse(&args) {
        // `token`, `header` and `exec` read no secret from a variable.
        Some(cli) => (cli, Vec::new()),
        None => parse_with_clap(),
    };
    if let Some(url) = cli.vault.as_deref().and_then(|v| v.to_str()) {
        if latchkey_client::is_database_url(url) && latchkey_client::database_url_has_password(url)
        {
            eprintln!(
                "latchkey: the --vault URL holds a password, which every local user can read in the process list: put the URL in {} instead, or the password in a file named by LATCHKEY_VAULT_PASSWORD_FILE",
                latchkey_client::VAULT_ENV
            );
            return ExitCode::from(exit::USAGE);
        }
    }
    let ctx = context::Ctx::new(cli.socket, cli.vault, cli.quiet, withheld_env);
    match commands::run(&ctx, cli.command, Cli::command) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) if exit::is_broken_pipe(&err) => ExitCode::from(exit::OK),
        Err(err) => {
            if err.downcast_ref::<exit::Silent>().is_none() {
                // If stderr is gone too there is nobody left to tell.
                let _ = writeln!(std::io::stderr(), "latchkey: error: {err:#}");
            }
            ExitCode::from(exit::for_error(&err))
        }
    }
}

/// The whole command line through clap: every command, `--help`, and
/// every usage error with clap's own message and exit code.
fn parse_with_clap() -> (Cli, Vec<String>) {
    let matches = Cli::command().get_matches();
    // The variables a secret is read from, before any command may start a daemon.
    let withheld_env = secret::env_sources(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    (cli, withheld_env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn secret_variables_are_found_in_any_subcommand() {
        let cases: [(&[&str], &[&str]); 4] = [
            (
                &[
                    "latchkey",
                    "credential",
                    "add",
                    "c",
                    "--provider",
                    "p",
                    "--client-id",
                    "i",
                    "--client-secret-env",
                    "MY_SECRET",
                ],
                &["MY_SECRET"],
            ),
            (&["latchkey", "init", "--passphrase-env", "PW"], &["PW"]),
            (&["latchkey", "unlock", "--passphrase-env", "PW2"], &["PW2"]),
            (&["latchkey", "token", "x"], &[]),
        ];
        for (argv, want) in cases {
            let matches = Cli::command().try_get_matches_from(argv).unwrap();
            assert_eq!(secret::env_sources(&matches), want, "{argv:?}");
        }
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("10  wrong passphrase"), "{help}");
        assert!(help.contains("the user denied the login"), "{help}");
    }

    #[test]
    fn help_lists_the_login_and_revocation_commands() {
        let help = Cli::command().render_help().to_string();
        for command in ["login", "revoke", "panic"] {
            assert!(help.contains(&format!("\n  {command} ")), "{help}");
        }
    }
}
