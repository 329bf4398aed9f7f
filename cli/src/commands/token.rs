//! `latchkey token NAME`: print an access token (the one place, with
//! `header`, where a secret is meant to reach stdout).

use crate::args::{parse_scope_arg, scope_subset};
use crate::context::Ctx;
use crate::output;
use anyhow::{Context, Result};
use latchkey_client::duration;
use latchkey_client::protocol::{TokenGet, TokenParams, TokenReply};
use latchkey_client::ErrorKind;
use secrecy::ExposeSecret;
use std::time::Duration;
use zeroize::Zeroizing;

/// Which token: shared by `token`, `header` and `exec`.
#[derive(clap::Args)]
#[cfg_attr(test, derive(Debug))]
pub struct TokenArgs {
    /// The credential's name
    pub name: String,
    /// The token must stay valid at least this long: 600, 30s, 10m, 1h or 1d (longer than the provider's token lifetime forces one refresh)
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_whole_secs)]
    pub min_ttl: Option<Duration>,
    /// Ask for a subset of the credential's scopes; repeat the flag or separate scopes with spaces
    #[arg(long = "scope", value_name = "S", value_parser = parse_scope_arg)]
    pub scopes: Vec<String>,
    /// A step-up credential not confirmed now: wait this long (at most 4m) for `latchkey confirm NAME` in another terminal instead of exiting 13 at once
    #[arg(long, value_name = "DURATION", value_parser = wait_confirm)]
    pub wait_confirm: Option<Duration>,
}

/// At most 4 minutes: the daemon's bound on a wait for a confirmation.
fn wait_confirm(text: &str) -> Result<Duration, String> {
    let wait = duration::parse_whole_secs(text).map_err(|e| e.to_string())?;
    if wait > Duration::from_secs(240) {
        return Err("at most 4m: a caller waits no longer for a confirmation".into());
    }
    Ok(wait)
}

#[derive(clap::Args)]
#[cfg_attr(test, derive(Debug))]
pub struct Args {
    #[command(flatten)]
    pub(crate) token: TokenArgs,
    /// Print {"access_token","token_type","expires_at","scope"} as JSON instead of the bare token
    #[arg(long)]
    pub(crate) json: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let reply = fetch(ctx, &args.token)?;
    if args.json {
        let mut json = Zeroizing::new(serde_json::to_vec(&reply)?);
        json.push(b'\n');
        return output::write_parts(&[&json]);
    }
    output::write_parts(&[reply.access_token.expose_secret().as_bytes(), b"\n"])
}

/// Asks the daemon for a token: one round trip on a running daemon, the
/// protocol and vault checks in the same write ([`Ctx::connect_with`]).
pub fn fetch(ctx: &Ctx, args: &TokenArgs) -> Result<TokenReply> {
    let params = TokenParams {
        credential: args.name.clone(),
        scopes: scope_subset(&args.scopes),
        min_ttl: args.min_ttl.map(|d| d.as_secs()),
        confirm_wait_secs: args.wait_confirm.map(|d| d.as_secs()),
    };
    let (mut conn, first) = ctx.connect_with::<TokenGet>(&params)?;
    conn.retry_if_locked::<TokenGet>(&params, first)
        .map_err(|err| login_hint(err, &args.name))
        .with_context(|| format!("failed to get a token for '{}'", args.name))
}

/// Makes sure a `reauth_required` error names the command that fixes it.
fn login_hint(err: anyhow::Error, name: &str) -> anyhow::Error {
    match err.downcast::<latchkey_client::Error>() {
        Ok(latchkey_client::Error::Daemon {
            kind: ErrorKind::ReauthRequired,
            message,
            retry_after,
        }) if !message.contains("latchkey login") => latchkey_client::Error::Daemon {
            kind: ErrorKind::ReauthRequired,
            message: format!("{message}: run `latchkey login {name}`"),
            retry_after,
        }
        .into(),
        Ok(other) => other.into(),
        Err(err) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reauth_errors_name_the_login_command_once() {
        let daemon = |message: &str| {
            anyhow::Error::new(latchkey_client::Error::Daemon {
                kind: ErrorKind::ReauthRequired,
                message: message.into(),
                retry_after: None,
            })
        };
        let err = login_hint(daemon("the refresh token was revoked"), "gh");
        assert_eq!(
            err.to_string(),
            "the refresh token was revoked: run `latchkey login gh`"
        );
        assert_eq!(crate::exit::for_error(&err), crate::exit::REAUTH_REQUIRED);
        let msg = "credential 'gh' needs a new login: run `latchkey login gh`";
        assert_eq!(login_hint(daemon(msg), "gh").to_string(), msg);
    }
}
