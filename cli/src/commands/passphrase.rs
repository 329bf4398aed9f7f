//! `latchkey passphrase change`: rewrap the vault's data key under a new passphrase.

use crate::context::Ctx;
use crate::exit;
use crate::secret::{self, Source};
use anyhow::{Context, Result};
use latchkey_client::protocol::{ChangePassphraseParams, VaultChangePassphrase};
use secrecy::SecretString;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Change the vault passphrase (secrets are not re-encrypted; see `latchkey rekey`)
    Change(ChangeArgs),
}

/// Each passphrase comes from its file, else a prompt on the terminal.
#[derive(clap::Args)]
pub struct ChangeArgs {
    /// Read the current passphrase from a file (one trailing newline is dropped)
    #[arg(long, value_name = "PATH")]
    old_file: Option<PathBuf>,
    /// Read the new passphrase from a file (one trailing newline is dropped)
    #[arg(long, value_name = "PATH")]
    new_file: Option<PathBuf>,
    /// Once an authenticator is enrolled, a code of it is needed too (step-up)
    #[command(flatten)]
    totp: crate::args::TotpArgs,
    #[command(flatten)]
    breached: crate::args::BreachedListArgs,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<()> {
    let Command::Change(args) = command;
    let mut conn = ctx.connect()?;
    let breached_list = args.breached.path()?;
    let prompting = args.new_file.is_none();
    let old = read(args.old_file, "current passphrase", false)?;
    let totp = args.totp.code("to change the passphrase")?;
    let mut change = |new: SecretString| {
        conn.call::<VaultChangePassphrase>(&ChangePassphraseParams {
            old: old.clone(),
            new,
            totp: totp.clone(),
            breached_list: breached_list.clone(),
        })
    };
    let sent = if prompting {
        secret::retry_weak("New passphrase: ", "new passphrase", change)
    } else {
        change(read(args.new_file, "new passphrase", true)?)
    };
    sent.context("failed to change the passphrase")?;
    ctx.done("passphrase changed")
}

fn read(file: Option<PathBuf>, what: &str, new: bool) -> Result<SecretString> {
    if let Some(path) = file {
        return Source::File(path).read(what);
    }
    if !secret::can_prompt() {
        return Err(exit::usage(format!(
            "no {what} given and no terminal to prompt on: use --old-file PATH and --new-file PATH"
        )));
    }
    let label = format!("{}: ", secret::capitalise(what));
    if new {
        secret::prompt_new(&label, what)
    } else {
        secret::prompt(&label, what)
    }
}
