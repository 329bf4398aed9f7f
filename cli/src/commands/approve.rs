//! `latchkey approve`: answer apps that ask for a credential with access
//! `ask`. It asks for the vault passphrase once, when it attaches (any
//! program of the user can run this command; only a person knows the
//! passphrase), or with `--polkit` the daemon asks polkit (the system's
//! authentication dialog) about this process instead; then it shows each waiting app — path, hash prefix, the
//! programs that started it, unit, session, the credential and scopes —
//! and reads the answer from standard input, so it can be driven by a
//! script as well as typed.

use crate::args::ProofArgs;
use crate::context::Ctx;
use crate::exit;
use crate::output;
use anyhow::{Context, Result};
use latchkey_client::protocol::{
    ApprovalAttach, ApprovalDecide, ApprovalNext, ApprovalNextParams, AttachParams, DecideParams,
    Decision, PendingApproval,
};
use std::io::BufRead;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    proof: ProofArgs,
    /// Attach without a proof: apps can then only be denied
    #[arg(long, conflicts_with_all = ["passphrase_file", "totp", "totp_file", "polkit"])]
    deny_only: bool,
    /// Stop after answering this many prompts
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// How long one `approval.next` waits before asking again.
const NEXT_WAIT_SECS: u64 = 25;

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let mut conn = ctx.connect()?;
    let proof = if args.deny_only {
        None
    } else {
        Some(args.proof.proof("to approve apps")?)
    };
    // With the default timeout: polkit's dialog waits for a person.
    let attached = conn
        .call::<ApprovalAttach>(&AttachParams { proof })
        .context("failed to attach as an approver")?;
    conn.set_timeout(Duration::from_secs(NEXT_WAIT_SECS + 30))?;
    ctx.info(if attached.can_allow {
        "waiting for apps that ask for a credential (Ctrl-C to stop)"
    } else {
        "waiting for apps that ask for a credential; without a proof they can only be denied (Ctrl-C to stop)"
    });
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut after = 0;
    let mut answered = 0;
    while args.count.is_none_or(|n| answered < n) {
        let next = conn.call::<ApprovalNext>(&ApprovalNextParams {
            after,
            wait_secs: Some(NEXT_WAIT_SECS),
        })?;
        let Some(pending) = next.pending else {
            continue;
        };
        after = pending.id;
        output::print(&render(&pending))?;
        let decision = loop {
            output::write_parts(&[prompt_line(attached.can_allow).as_bytes()])?;
            let Some(line) = lines.next() else {
                // Standard input ended: nobody is left to answer.
                return Ok(());
            };
            let line = line.context("failed to read the answer")?;
            match parse_answer(&line, attached.can_allow) {
                Ok(d) => break d,
                Err(why) if crate::secret::can_prompt() => ctx.warn(why),
                Err(why) => return Err(exit::usage(why)),
            }
        };
        match conn.call::<ApprovalDecide>(&DecideParams {
            id: pending.id,
            decision,
        }) {
            Ok(_) => ctx.info(decision.describe()),
            // The callers gave up meanwhile: say so and go on.
            Err(e) => ctx.warn(format_args!("{e:#}")),
        }
        answered += 1;
    }
    Ok(())
}

fn render(p: &PendingApproval) -> String {
    let mut f = output::Fields::default();
    f.add("app", output::app_label(&p.app));
    if let Some(hash) = &p.app.sha256 {
        f.add("sha256", hash.clone());
    }
    if !p.app.chain.is_empty() {
        let chain: Vec<String> = p
            .app
            .chain
            .iter()
            .map(|a| format!("{} (pid {})", a.exe.as_deref().unwrap_or("?"), a.pid))
            .collect();
        f.add("started by", chain.join(" <- "));
    }
    if let Some(session) = p.app.session {
        f.add("session", session.to_string());
    }
    f.add("credential", p.credential.clone());
    f.add(
        "scopes",
        if p.scopes.is_empty() {
            "(the credential's)".to_owned()
        } else {
            p.scopes.join(" ")
        },
    );
    f.add(
        "waiting",
        format!("{} call(s), {} s left", p.waiting, p.expires_in),
    );
    let mut text = String::from("\nan app asks for a credential:\n");
    if p.updated {
        text.push_str("NOTE: this program was changed (updated?) since you approved it\n");
    }
    text.push_str(&f.render());
    text
}

fn prompt_line(can_allow: bool) -> String {
    if can_allow {
        "allow [o]nce, for this [s]ession, for [h N] hours, [a]lways, or [d]eny? ".into()
    } else {
        "[d]eny (allowing needs the passphrase: run `latchkey approve` without --deny-only)? "
            .into()
    }
}

fn parse_answer(line: &str, can_allow: bool) -> Result<Decision, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let decision = match words.as_slice() {
        ["o" | "once"] => Decision::Once,
        ["s" | "session"] => Decision::Session,
        ["a" | "always"] => Decision::Always,
        ["d" | "deny" | "n" | "no"] => Decision::Deny,
        ["h" | "hours", n] => Decision::Hours {
            hours: n
                .parse()
                .map_err(|_| format!("'{n}' is not a number of hours"))?,
        },
        _ => {
            return Err(format!(
                "answer o, s, h N, a or d (not '{}')",
                line.chars().take(20).collect::<String>()
            ))
        }
    };
    if decision != Decision::Deny && !can_allow {
        return Err("without the passphrase this approver can only deny: answer d".into());
    }
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_in_short_and_long_forms() {
        assert_eq!(parse_answer("o", true), Ok(Decision::Once));
        assert_eq!(parse_answer(" always ", true), Ok(Decision::Always));
        assert_eq!(parse_answer("h 8", true), Ok(Decision::Hours { hours: 8 }));
        assert_eq!(parse_answer("d", false), Ok(Decision::Deny));
        assert!(parse_answer("a", false).is_err());
        assert!(parse_answer("h x", true).is_err());
        assert!(parse_answer("maybe", true).is_err());
    }
}
