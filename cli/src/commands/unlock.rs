//! `latchkey unlock`: open the vault with a passphrase, a key file or the
//! keyring slot.

use crate::args::{PassphraseArgs, PASSPHRASE_FLAGS};
use crate::context::{Connection, Ctx};
use crate::exit;
use crate::secret::{self, Source};
use anyhow::{Context, Result};
use latchkey_client::protocol::{UnlockParams, VaultState, VaultUnlock};
use latchkey_client::ErrorKind;
use secrecy::SecretString;
use std::path::{Path, PathBuf};

/// With no flag: `$LATCHKEY_KEY_FILE` if set, else `$LATCHKEY_PASSPHRASE_FILE`
/// if set; else the keyring slot if the vault has one; else a prompt on
/// the terminal.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    passphrase: PassphraseArgs,
    /// Unlock with the keyring slot only
    #[arg(long, conflicts_with = "passphrase_source")]
    keyring: bool,
    /// Unlock with this machine's key file (see `latchkey slot add --key-file`)
    #[arg(long, value_name = "PATH", conflicts_with_all = ["passphrase_source", "keyring"])]
    key_file: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let mut conn = ctx.connect()?;
    if args.keyring {
        return unlock(ctx, &mut conn, None).context("failed to unlock the vault with the keyring");
    }
    let flags = args.passphrase.source();
    if let Some(path) = args
        .key_file
        .or_else(|| flags.is_none().then(secret::key_file_env).flatten())
    {
        return unlock_with_key_file(ctx, &mut conn, &path);
    }
    if let Some(source) = flags.or_else(Source::passphrase_file_env) {
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

/// Unlocks with the key file at `path`; a file whose slot is gone (or
/// never was) is named with the fix.
fn unlock_with_key_file(ctx: &Ctx, conn: &mut Connection, path: &Path) -> Result<()> {
    let key = secret::read_vault_key_file(path)?;
    let params = UnlockParams {
        key: Some(key),
        ..UnlockParams::default()
    };
    match send(ctx, conn, &params) {
        Ok(()) => Ok(()),
        Err(latchkey_client::Error::Daemon {
            kind: ErrorKind::WrongPassphrase,
            retry_after,
            ..
        }) => Err(latchkey_client::Error::Daemon {
            kind: ErrorKind::WrongPassphrase,
            message: wrong_key_file(path),
            retry_after,
        }
        .into()),
        Err(err) => Err(err).with_context(|| {
            format!(
                "failed to unlock the vault with the key file {}",
                path.display()
            )
        }),
    }
}

/// What a key file that opens no slot of the vault is told.
pub fn wrong_key_file(path: &Path) -> String {
    format!(
        "the key file {} does not open any key slot of this vault: was its slot removed? add one with `latchkey slot add --key-file`",
        path.display()
    )
}

fn unlock(
    ctx: &Ctx,
    conn: &mut Connection,
    passphrase: Option<SecretString>,
) -> Result<(), latchkey_client::Error> {
    send(
        ctx,
        conn,
        &UnlockParams {
            passphrase,
            ..UnlockParams::default()
        },
    )
}

fn send(
    ctx: &Ctx,
    conn: &mut Connection,
    params: &UnlockParams,
) -> Result<(), latchkey_client::Error> {
    let result = conn.raw::<VaultUnlock>(params)?;
    let message = if result.already_unlocked {
        "vault is already unlocked".to_owned()
    } else {
        match &result.slot.label {
            Some(label) => format!(
                "vault unlocked with its {} ({label}) slot",
                result.slot.kind
            ),
            None => format!("vault unlocked with its {} slot", result.slot.kind),
        }
    };
    // A closed stdout after a successful unlock is not worth failing over.
    let _ = ctx.done(message);
    Ok(())
}
