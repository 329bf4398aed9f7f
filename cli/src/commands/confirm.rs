//! `latchkey confirm NAME`: the step-up confirmation of a privileged
//! credential — an authenticator code (or the passphrase, for `--step-up
//! passphrase` credentials) — after which its tokens are handed out for
//! the credential's window.

use crate::args::ProofArgs;
use crate::context::Ctx;
use crate::output;
use anyhow::{Context, Result};
use latchkey_client::protocol::{
    ConfirmParams, CredentialConfirm, CredentialShow, NameParams, Proof, StepUp,
};

#[derive(clap::Args)]
pub struct Args {
    /// The credential to confirm
    name: String,
    #[command(flatten)]
    proof: ProofArgs,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let mut conn = ctx.connect()?;
    let doing = format!("to confirm '{}'", args.name);
    let info = conn
        .call::<CredentialShow>(&NameParams {
            name: args.name.clone(),
        })
        .with_context(|| format!("failed to confirm credential '{}'", args.name))?;
    // A code is what a `totp` step-up needs: ask for one, not the passphrase.
    let proof = match (info.step_up, args.proof.totp.code(&doing)?) {
        (_, Some(code)) => Proof::totp(code),
        (StepUp::Totp { .. }, None) if args.proof.passphrase_file.is_none() => {
            let asks = crate::args::TotpArgs {
                totp: true,
                totp_file: None,
            };
            Proof::totp(asks.code(&doing)?.expect("--totp asks for a code"))
        }
        _ => args.proof.proof(&doing)?,
    };
    let confirmed = conn
        .call::<CredentialConfirm>(&ConfirmParams {
            name: args.name.clone(),
            proof: Some(proof),
        })
        .with_context(|| format!("failed to confirm credential '{}'", args.name))?;
    ctx.done(format_args!(
        "credential '{}' confirmed: tokens are handed out until {}",
        args.name,
        output::utc(confirmed.until)
    ))
}
