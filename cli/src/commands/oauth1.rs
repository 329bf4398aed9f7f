//! `latchkey oauth1-sign NAME`: the `Authorization` header value for one
//! request, signed by the daemon with an OAuth 1.0a credential; and
//! `latchkey credential import-token NAME` (token credentials from stdin).

use crate::context::Ctx;
use crate::exit;
use crate::output;
use crate::secret;
use anyhow::{Context, Result};
use latchkey_client::protocol::{
    Oauth1ImportParams, Oauth1ImportToken, Oauth1Sign, Oauth1SignParams,
};
use secrecy::ExposeSecret;

#[derive(clap::Args)]
pub struct SignArgs {
    /// The OAuth 1.0a credential's name
    name: String,
    /// The request's HTTP method
    #[arg(long, default_value = "GET")]
    method: String,
    /// The full request URL, query included (its parameters are signed)
    #[arg(long, value_name = "URL")]
    url: String,
    /// A parameter of the application/x-www-form-urlencoded body, decoded (repeat, in order)
    #[arg(long = "form", value_name = "K=V", value_parser = parse_pair)]
    form: Vec<(String, String)>,
    /// Print JSON: {"authorization": "OAuth …"}
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The OAuth 1.0a credential's name
    name: String,
}

fn parse_pair(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{raw}' is not K=V"))
}

pub fn sign(ctx: &Ctx, args: SignArgs) -> Result<()> {
    let params = Oauth1SignParams {
        credential: args.name,
        method: args.method,
        url: args.url,
        form: args.form,
    };
    let reply = ctx
        .connect()?
        .call::<Oauth1Sign>(&params)
        .with_context(|| format!("failed to sign with credential '{}'", params.credential))?;
    let value = reply.authorization.expose_secret();
    // It goes into `curl -H "Authorization: $(…)"`: never two header lines.
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        anyhow::bail!("the signed header has a character that cannot go into an HTTP header; nothing was printed");
    }
    if args.json {
        return output::print_json(&reply);
    }
    output::write_parts(&[value.as_bytes(), b"\n"])
}

pub fn import(ctx: &Ctx, args: ImportArgs) -> Result<()> {
    if secret::can_prompt() {
        eprintln!("Token credentials for '{}' (not echoed):", args.name);
    }
    let (token, token_secret) = secret::read_stdin_pair("token", "token secret")
        .map_err(|e| exit::usage(format!("{e:#}")))?;
    let info = ctx
        .connect()?
        .call::<Oauth1ImportToken>(&Oauth1ImportParams {
            credential: args.name.clone(),
            token,
            token_secret,
        })
        .with_context(|| format!("failed to import token credentials for '{}'", args.name))?;
    ctx.done(format_args!(
        "credential '{}': token credentials stored ({})",
        info.name,
        info.state.as_str()
    ))
}
