//! `latchkey panic`: the leaked-credentials playbook. The daemon revokes
//! every token it holds at its provider (or only one provider's), forgets
//! them all, and locks the vault. Never prompts: it is run in a hurry, and
//! from scripts.

use crate::context::Ctx;
use crate::output;
use anyhow::{Context, Result};
use latchkey_client::protocol::{PanicEntry, PanicParams, PanicResult, VaultPanic};
use std::time::Duration;

/// 30 minutes: the daemon revokes credential after credential, each request
/// bounded by its own HTTP timeout; a slow provider times out many times over
/// before the daemon answers, and the report is worth the wait.
const PANIC_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(clap::Args)]
pub struct Args {
    /// Only the credentials of this provider
    #[arg(long, value_name = "P")]
    provider: Option<String>,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let mut conn = ctx.connect()?;
    conn.set_timeout(PANIC_TIMEOUT)?;
    let result = conn
        .call::<VaultPanic>(&PanicParams {
            provider: args.provider,
        })
        .context("failed to revoke the vault's tokens")?;
    // The report is the point of the command: printed even with --quiet.
    output::print(&render(&result))?;
    let failed = result
        .credentials
        .iter()
        .filter(|c| c.error.is_some())
        .count();
    if failed > 0 {
        return Err(anyhow::anyhow!(
            "{failed} of {} credentials could not be revoked at their provider: their tokens were forgotten here but stay valid there until they expire (revoke the app's access in the provider's account settings)",
            result.credentials.len()
        ));
    }
    Ok(())
}

/// One line per credential, then whether the vault is locked.
fn render(result: &PanicResult) -> String {
    let mut out = String::new();
    if result.credentials.is_empty() {
        out.push_str("no credentials to revoke\n");
    }
    for entry in &result.credentials {
        out.push_str(&entry_line(entry));
        out.push('\n');
    }
    out.push_str(if result.locked {
        "vault locked\n"
    } else {
        "vault was already locked\n"
    });
    out
}

fn entry_line(entry: &PanicEntry) -> String {
    let name = &entry.credential;
    match (&entry.error, entry.revoked.is_empty()) {
        (Some(error), _) => format!("{name}: not revoked: {error}; forgotten here"),
        (None, true) => format!("{name}: nothing to revoke"),
        (None, false) => format!("{name}: revoked {}", entry.revoked.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, revoked: &[&str], error: Option<&str>) -> PanicEntry {
        PanicEntry {
            credential: name.into(),
            revoked: revoked.iter().map(|s| s.to_string()).collect(),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn the_report_has_a_line_per_credential_then_the_lock() {
        let result = PanicResult {
            credentials: vec![
                entry("gh", &["refresh_token", "access_token"], None),
                entry("ci", &[], None),
                entry("old", &[], Some("provider 'x' is unreachable")),
            ],
            locked: true,
        };
        assert_eq!(
            render(&result),
            "\
gh: revoked refresh_token, access_token
ci: nothing to revoke
old: not revoked: provider 'x' is unreachable; forgotten here
vault locked
"
        );
        let empty = PanicResult {
            credentials: Vec::new(),
            locked: false,
        };
        assert_eq!(
            render(&empty),
            "no credentials to revoke\nvault was already locked\n"
        );
    }
}
