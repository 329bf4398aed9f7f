//! `latchkey rekey`: a new data key, every secret re-encrypted in one
//! transaction. Passphrase slots are rewrapped too, so a vault with one
//! needs its passphrase (same sources as `unlock`). Key-file slots need
//! no file: each is rewrapped to the public key it stores, so every
//! machine's key file still opens the vault.

use crate::args::{PassphraseArgs, PASSPHRASE_FLAGS};
use crate::context::Ctx;
use crate::exit;
use crate::secret::{self, Source};
use anyhow::{Context, Result};
use latchkey_client::protocol::{RekeyParams, VaultRekey};

/// The passphrase comes from the flags, else `$LATCHKEY_PASSPHRASE_FILE`,
/// else a prompt; a vault with only a keyring slot needs none.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    passphrase: PassphraseArgs,
    /// Once an authenticator is enrolled, a code of it is needed too (step-up)
    #[command(flatten)]
    totp: crate::args::TotpArgs,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let mut conn = ctx.connect()?;
    let source = args
        .passphrase
        .source()
        .or_else(Source::passphrase_file_env);
    let passphrase = match source {
        Some(source) => Some(source.read("passphrase")?),
        None => {
            let status = conn.status()?;
            if !status.slots.iter().any(|s| s.kind == "passphrase") {
                None
            } else if secret::can_prompt() {
                Some(secret::prompt("Vault passphrase: ", "passphrase")?)
            } else {
                return Err(exit::usage(format!(
                    "rekeying rewraps the passphrase slot, so it needs the passphrase, and there is no terminal to ask on: use {PASSPHRASE_FLAGS}"
                )));
            }
        }
    };
    let totp = args.totp.code("to rekey the vault")?;
    let result = conn
        .call::<VaultRekey>(&RekeyParams { passphrase, totp })
        .context("failed to rekey the vault")?;
    ctx.done(format_args!(
        "re-encrypted {} field{} under a new data key and rewrapped {} key slot{}",
        result.fields,
        plural(result.fields),
        result.slots,
        plural(result.slots)
    ))?;
    let machines = conn
        .status()
        .map(|s| s.slots.iter().filter(|s| s.kind == "keyfile").count())
        .unwrap_or(0);
    if machines > 0 {
        ctx.info(format_args!(
            "{machines} key-file slot{} rewrapped without {} files: {} still open{} the vault",
            plural(machines as u64),
            if machines == 1 { "its" } else { "their" },
            if machines == 1 {
                "that machine's key file"
            } else {
                "those machines' key files"
            },
            if machines == 1 { "s" } else { "" },
        ));
    }
    Ok(())
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
