//! `latchkey header NAME`: print `Authorization: Bearer <token>` for curl -H
//! and friends.

use crate::commands::token::{self, TokenArgs};
use crate::context::Ctx;
use crate::output;
use anyhow::Result;
use secrecy::ExposeSecret;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    token: TokenArgs,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let reply = token::fetch(ctx, &args.token)?;
    output::write_parts(&[
        b"Authorization: ",
        scheme(&reply.token_type).as_bytes(),
        b" ",
        reply.access_token.expose_secret().as_bytes(),
        b"\n",
    ])
}

/// The auth scheme for a token type: providers often send `bearer`, and
/// the scheme is case-insensitive (RFC 6750 §2.1 / RFC 9110 §11.1), but
/// `Bearer` is the spelling every server accepts. Other types pass through.
fn scheme(token_type: &str) -> &str {
    if token_type.is_empty() || token_type.eq_ignore_ascii_case("bearer") {
        "Bearer"
    } else {
        token_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        for (given, want) in [
            ("bearer", "Bearer"),
            ("BEARER", "Bearer"),
            ("Bearer", "Bearer"),
            ("", "Bearer"),
            ("DPoP", "DPoP"),
        ] {
            assert_eq!(scheme(given), want, "{given}");
        }
    }
}
