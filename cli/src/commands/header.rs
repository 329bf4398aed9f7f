//! `latchkey header NAME`: print `Authorization: Bearer <token>` for curl -H
//! and friends.

use crate::commands::token::{self, TokenArgs};
use crate::context::Ctx;
use crate::output;
use anyhow::{bail, Result};
use secrecy::ExposeSecret;

#[derive(clap::Args)]
#[cfg_attr(test, derive(Debug))]
pub struct Args {
    #[command(flatten)]
    pub(crate) token: TokenArgs,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let reply = token::fetch(ctx, &args.token)?;
    // The daemon refuses such token responses already; this line goes
    // into `curl -H "$(…)"`, so a daemon of another version (or a bug)
    // must still never make it two header lines.
    let scheme = scheme(&reply.token_type);
    if !header_safe(scheme) || !header_safe(reply.access_token.expose_secret()) {
        bail!(
            "the token of credential '{}' has a character that cannot go into an HTTP header (a control character such as a line break); nothing was printed. Check the provider, or get the token with `latchkey token`",
            args.token.name
        );
    }
    output::write_parts(&[
        b"Authorization: ",
        scheme.as_bytes(),
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

/// Printable ASCII only (RFC 6749 VSCHAR, which RFC 7230 tokens are a
/// part of): no CR, LF or other control character.
fn header_safe(value: &str) -> bool {
    value.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_never_reach_the_header() {
        assert!(header_safe("Bearer") && header_safe("abc.DEF-_~+/="));
        for bad in ["a\r\nX-Injected: 1", "a\n", "a\u{7f}", "é", "\u{1b}[2J"] {
            assert!(!header_safe(bad), "{bad:?}");
        }
    }

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
