//! `latchkey totp enroll|status|remove`: an authenticator app (RFC 6238
//! TOTP) whose codes prove that a person asks, in place of the vault
//! passphrase (`--totp` wherever a proof is asked for).

use crate::args::ProofArgs;
use crate::context::Ctx;
use crate::{exit, output, terminal};
use anyhow::{Context, Result};
use latchkey_client::protocol::{
    Empty, TotpConfirm, TotpConfirmParams, TotpEnroll, TotpEnrollParams, TotpRemove,
    TotpRemoveParams, TotpStatus,
};
use secrecy::{ExposeSecret, SecretString};
use std::io::{BufRead, IsTerminal, Read, Write};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Enroll an authenticator app: shows a QR code, then asks for a code
    ///
    /// Needs a proof (the vault passphrase, or a code of the authenticator
    /// enrolled now). Shows the otpauth:// URI as a QR code on a terminal
    /// (and the secret to type by hand), then reads a code from the app:
    /// nothing is stored until that code is right. Prints ten one-time
    /// recovery codes: keep them somewhere safe. Without a terminal, the
    /// URI is printed alone on stdout and the code is read from stdin.
    /// Enrolling again replaces the authenticator and its recovery codes.
    Enroll(EnrollArgs),
    /// Whether an authenticator is enrolled, and recovery codes left
    Status(StatusArgs),
    /// Remove the authenticator (needs a proof)
    Remove(RemoveArgs),
}

#[derive(clap::Args)]
pub struct EnrollArgs {
    /// The account name the authenticator app shows (default: your login name)
    #[arg(long)]
    account: Option<String>,
    #[command(flatten)]
    proof: ProofArgs,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    proof: ProofArgs,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Enroll(args) => enroll(ctx, args),
        Command::Status(args) => {
            let mut conn = ctx.connect()?;
            let status = conn.call::<TotpStatus>(&Empty {})?;
            if args.json {
                return output::print_json(&status);
            }
            let text = match (status.enrolled, status.recovery_codes_left) {
                (false, _) => {
                    "no authenticator is enrolled: `latchkey totp enroll` adds one\n".to_owned()
                }
                (true, Some(left)) => format!(
                    "authenticator enrolled {}; {left} recovery code{} left\n",
                    status
                        .enrolled_at
                        .map_or_else(String::new, |t| format!("at {}", output::utc(t))),
                    if left == 1 { "" } else { "s" }
                ),
                (true, None) => {
                    "authenticator enrolled (unlock the vault to see more)\n".to_owned()
                }
            };
            output::print(&text)
        }
        Command::Remove(args) => {
            let mut conn = ctx.connect()?;
            let proof = args.proof.proof("to remove the authenticator")?;
            conn.call::<TotpRemove>(&TotpRemoveParams { proof: Some(proof) })
                .context("failed to remove the authenticator")?;
            ctx.done("authenticator removed: proofs now need the vault passphrase")
        }
    }
}

fn enroll(ctx: &Ctx, args: EnrollArgs) -> Result<()> {
    let mut conn = ctx.connect()?;
    let proof = args.proof.proof("to enroll an authenticator")?;
    let started = conn
        .call::<TotpEnroll>(&TotpEnrollParams {
            proof: Some(proof),
            account: args.account,
        })
        .context("failed to start enrolling")?;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if interactive {
        let mut text = String::from("Scan this with your authenticator app:\n\n");
        if let Some(qr) = terminal::qr(started.uri.expose_secret()) {
            text.push_str(&qr);
        }
        text.push_str(&format!(
            "\nOr type this secret into it: {}\n({} digits, every {} seconds, SHA-1)\n\n",
            started.secret.expose_secret(),
            started.digits,
            started.period
        ));
        output::print(&text)?;
    } else {
        output::write_parts(&[started.uri.expose_secret().as_bytes(), b"\n"])?;
    }
    let code = read_code(interactive, started.expires_in_secs)?;
    let confirmed = conn
        .call::<TotpConfirm>(&TotpConfirmParams { code })
        .context("failed to enroll the authenticator")?;
    let mut text = String::from(
        "authenticator enrolled: `--totp` now proves it is you wherever the passphrase is asked for.\n\
         Recovery codes, each good once in place of a code (keep them somewhere safe; they are not shown again):\n",
    );
    for code in &confirmed.recovery_codes {
        text.push_str("  ");
        text.push_str(code.expose_secret());
        text.push('\n');
    }
    if interactive {
        output::print(&text)
    } else {
        // The codes are the output a script keeps; the explanation is not.
        let mut out = Vec::new();
        for code in &confirmed.recovery_codes {
            out.extend_from_slice(code.expose_secret().as_bytes());
            out.push(b'\n');
        }
        let out = zeroize::Zeroizing::new(out);
        output::write_parts(&[&out])?;
        ctx.info("authenticator enrolled; the recovery codes are on stdout, shown this once");
        Ok(())
    }
}

/// The code the user reads off the app: asked on the terminal, else the
/// first line of stdin.
fn read_code(interactive: bool, expires_in: u64) -> Result<SecretString> {
    let mut line = zeroize::Zeroizing::new(String::new());
    if interactive {
        eprint!(
            "Code the app shows now (within {}): ",
            output::span(expires_in)
        );
        std::io::stderr().flush().ok();
    }
    // One line, at most 128 bytes: a code is 6 digits, a recovery code 11.
    std::io::stdin()
        .lock()
        .take(128)
        .read_line(&mut line)
        .context("failed to read the code")?;
    let code = line.trim();
    if code.is_empty() {
        return Err(exit::usage(
            "no code was given: type the code your authenticator app shows",
        ));
    }
    Ok(SecretString::from(code))
}
