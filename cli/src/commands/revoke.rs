//! `latchkey revoke NAME`: revoke a credential's refresh and access tokens
//! at the provider (RFC 7009) and forget them here. A user-login credential
//! then needs `latchkey login NAME` again.

use crate::context::Ctx;
use anyhow::{Context, Result};
use latchkey_client::protocol::{RevokeParams, RevokeResult, TokenRevoke};

#[derive(clap::Args)]
pub struct Args {
    /// The credential's name
    name: String,
    /// Only forget the tokens here, without asking the provider to revoke them (for a provider with no revocation endpoint): they stay valid there until they expire
    #[arg(long)]
    local_only: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let params = RevokeParams {
        credential: args.name.clone(),
        local_only: args.local_only,
    };
    let result = ctx
        .connect()?
        .call::<TokenRevoke>(&params)
        .with_context(|| format!("failed to revoke the tokens of credential '{}'", args.name))?;
    ctx.done(render(&args.name, &result, args.local_only))
}

/// What was revoked where, in one line.
fn render(name: &str, result: &RevokeResult, local_only: bool) -> String {
    let forgot = tokens(result.forgotten);
    match (local_only, result.revoked.is_empty(), result.forgotten) {
        (_, true, 0) => format!("credential '{name}' held no tokens: nothing to revoke"),
        (true, _, _) => format!(
            "forgot {forgot} locally only; they stay valid at the provider until they expire"
        ),
        (false, true, _) => format!("nothing needed revoking at the provider; forgot {forgot}"),
        (false, false, _) => format!(
            "revoked {} at the provider; forgot {forgot}",
            result.revoked.join(", ")
        ),
    }
}

/// `1 token`, `2 tokens`.
pub fn tokens(n: u32) -> String {
    if n == 1 {
        "1 token".into()
    } else {
        format!("{n} tokens")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_read_well() {
        let r = |revoked: &[&str], forgotten| RevokeResult {
            revoked: revoked.iter().map(|s| s.to_string()).collect(),
            forgotten,
        };
        let cases = [
            (
                r(&["refresh_token", "access_token"], 2),
                false,
                "revoked refresh_token, access_token at the provider; forgot 2 tokens",
            ),
            (
                r(&["access_token"], 1),
                false,
                "revoked access_token at the provider; forgot 1 token",
            ),
            (
                r(&[], 1),
                false,
                "nothing needed revoking at the provider; forgot 1 token",
            ),
            (
                r(&[], 2),
                true,
                "forgot 2 tokens locally only; they stay valid at the provider until they expire",
            ),
            (
                r(&[], 0),
                false,
                "credential 'gh' held no tokens: nothing to revoke",
            ),
            (
                r(&[], 0),
                true,
                "credential 'gh' held no tokens: nothing to revoke",
            ),
        ];
        for (result, local_only, want) in cases {
            assert_eq!(render("gh", &result, local_only), want);
        }
    }
}
