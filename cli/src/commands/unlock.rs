//! `latchkey unlock`: open the vault with a passphrase or the keyring slot.

use crate::args::{PassphraseArgs, PASSPHRASE_FLAGS};
use crate::context::{Connection, Ctx};
use crate::exit;
use crate::secret::{self, Source};
use anyhow::{Context, Result};
use latchkey_client::protocol::{UnlockParams, VaultState, VaultUnlock};
use latchkey_client::ErrorKind;
use secrecy::SecretString;

/// With no flag: `$LATCHKEY_PASSPHRASE_FILE` if set; else the keyring slot
/// if the vault has one; else a prompt on the terminal.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    passphrase: PassphraseArgs,
    /// Unlock with the keyring slot only
    #[arg(long, conflicts_with = "passphrase_source")]
    keyring: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let mut conn = ctx.connect()?;
    if args.keyring {
        return unlock(ctx, &mut conn, None).context("failed to unlock the vault with the keyring");
    }
    if let Some(source) = args
        .passphrase
        .source()
        .or_else(Source::passphrase_file_env)
    {
        let passphrase = source.read("passphrase")?;
        return unlock(ctx, &mut conn, Some(passphrase)).with_context(|| {
            format!("failed to unlock the vault with the passphrase from {source}")
        });
    }

    let status = conn.status()?;
    match status.vault {
        VaultState::Uninitialized => {
            return Err(latchkey_client::Error::Daemon {
                kind: ErrorKind::NotInitialized,
                message: format!(
                    "there is no vault at {} yet: create it with `latchkey init`",
                    status.vault_path
                ),
                retry_after: None,
            }
            .into())
        }
        VaultState::Unlocked => return ctx.done("vault is already unlocked"),
        VaultState::Locked => {}
    }
    let has = |kind: &str| status.slots.iter().any(|s| s.kind == kind);
    if has("keyring") {
        match unlock(ctx, &mut conn, None) {
            Ok(()) => return Ok(()),
            Err(err)
                if has("passphrase")
                    && matches!(
                        err.kind(),
                        Some(ErrorKind::KeyringUnavailable | ErrorKind::WrongPassphrase)
                    ) =>
            {
                ctx.warn(format_args!(
                    "the keyring slot did not unlock the vault ({err}); using the passphrase"
                ));
            }
            Err(err) => return Err(err).context("failed to unlock the vault with the keyring"),
        }
    }
    if !secret::can_prompt() {
        return Err(exit::usage(format!(
            "the vault is locked and there is no terminal to ask for its passphrase: use {PASSPHRASE_FLAGS}"
        )));
    }
    let passphrase = secret::prompt("Vault passphrase: ", "passphrase")?;
    unlock(ctx, &mut conn, Some(passphrase)).context("failed to unlock the vault")
}

fn unlock(
    ctx: &Ctx,
    conn: &mut Connection,
    passphrase: Option<SecretString>,
) -> Result<(), latchkey_client::Error> {
    let result = conn.raw::<VaultUnlock>(&UnlockParams {
        passphrase,
        ..UnlockParams::default()
    })?;
    let message = if result.already_unlocked {
        "vault is already unlocked".to_owned()
    } else {
        format!("vault unlocked with its {} slot", result.slot.kind)
    };
    // A closed stdout after a successful unlock is not worth failing over.
    let _ = ctx.done(message);
    Ok(())
}
