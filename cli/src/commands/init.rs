//! `latchkey init`: create the vault with a passphrase slot, a keyring slot, or both.

use crate::args::{BreachedListArgs, PassphraseArgs, PASSPHRASE_FLAGS};
use crate::context::Ctx;
use crate::exit;
use crate::secret::{self, Source};
use anyhow::{Context, Result};
use latchkey_client::protocol::{InitParams, VaultInit, VaultState};
use latchkey_client::ErrorKind;
use secrecy::SecretString;

/// Passphrase sources, in order: the flags, `$LATCHKEY_PASSPHRASE_FILE`, a
/// prompt on the terminal (asked twice). `--keyring` with no passphrase
/// source creates a keyring slot only.
#[derive(clap::Args)]
pub struct Args {
    /// Create a keyring slot: a random key in the OS keyring unlocks the vault with no passphrase
    #[arg(long)]
    keyring: bool,
    #[command(flatten)]
    passphrase: PassphraseArgs,
    #[command(flatten)]
    breached: BreachedListArgs,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let mut conn = ctx.connect()?;
    // Ask before prompting, so nobody types a passphrase twice for nothing.
    let status = conn.status()?;
    if status.vault != VaultState::Uninitialized {
        return Err(latchkey_client::Error::Daemon {
            kind: ErrorKind::AlreadyInitialized,
            message: format!(
                "the vault {} already exists: unlock it with `latchkey unlock`",
                status.vault_path
            ),
            retry_after: None,
        }
        .into());
    }

    let breached_list = args.breached.path()?;
    let source = args
        .passphrase
        .source()
        .or_else(Source::passphrase_file_env);
    let prompting = source.is_none() && !args.keyring;
    if prompting && !secret::can_prompt() {
        return Err(exit::usage(format!(
            "no passphrase given and no terminal to prompt on: use {PASSPHRASE_FLAGS} (add --keyring to also use the OS keyring)"
        )));
    }
    let passphrase = match source {
        Some(source) => Some(source.read("passphrase")?),
        None => None,
    };
    let keyring_only = passphrase.is_none() && !prompting;
    let create = |passphrase: Option<SecretString>| InitParams {
        passphrase,
        keyring: args.keyring,
        breached_list: breached_list.clone(),
    };
    let sent = if prompting {
        secret::retry_weak("New vault passphrase: ", "passphrase", |passphrase| {
            Ok(conn.raw::<VaultInit>(&create(Some(passphrase)))?)
        })
    } else {
        Ok(conn.raw::<VaultInit>(&create(passphrase))?)
    };
    let result = sent.context("failed to create the vault")?;

    let slots: Vec<String> = result.slots.iter().map(slot_label).collect();
    ctx.done(format_args!(
        "created vault {} with {} slot{}: {}",
        status.vault_path,
        slots.len(),
        if slots.len() == 1 { "" } else { "s" },
        slots.join(", ")
    ))?;
    if keyring_only {
        ctx.warn(
            "the vault has no passphrase slot: if its keyring entry is lost it cannot be recovered \
             (kernel keyutils entries vanish at reboot). To keep a passphrase to recover with, create \
             the vault with both slots: `latchkey init --keyring --passphrase-file PATH`",
        );
    }
    Ok(())
}

/// `passphrase`, or `keyring (backend)`.
pub fn slot_label(slot: &latchkey_client::protocol::SlotInfo) -> String {
    match (&slot.backend, &slot.label) {
        (Some(backend), _) => format!("{} ({backend})", slot.kind),
        (None, Some(label)) => format!("{} ({label})", slot.kind),
        (None, None) => slot.kind.clone(),
    }
}
