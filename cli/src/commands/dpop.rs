//! `latchkey dpop NAME --method GET --url URL`: the two headers of one
//! request to a resource server with the credential's DPoP-bound token —
//! `Authorization: DPoP <token>` and `DPoP: <proof>` — each on its own line,
//! for `curl -H`. The proof is made in the daemon with a key that never
//! leaves it, for exactly that method and URL.

use crate::context::Ctx;
use crate::output;
use anyhow::{bail, Context, Result};
use latchkey_client::protocol::{DpopProof, DpopProofParams};
use secrecy::ExposeSecret;

#[derive(clap::Args)]
pub struct Args {
    /// The credential's name (added with --dpop)
    name: String,
    /// The request's HTTP method
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// The request's URL
    #[arg(long, value_name = "URL")]
    url: String,
    /// The nonce the resource server sent in its DPoP-Nonce header
    #[arg(long, value_name = "NONCE")]
    nonce: Option<String>,
    /// Scopes of the token (a subset of the credential's)
    #[arg(long = "scope", value_name = "S", value_parser = crate::args::parse_scope_arg)]
    scopes: Vec<String>,
    /// Print JSON: {"authorization", "dpop", "expires_at"}
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let mut conn = ctx.connect()?;
    let result = conn
        .call::<DpopProof>(&DpopProofParams {
            credential: args.name.clone(),
            method: args.method,
            url: args.url,
            nonce: args.nonce,
            scopes: crate::args::split_scopes(&args.scopes),
            min_ttl: None,
        })
        .with_context(|| {
            format!(
                "failed to make a DPoP proof with credential '{}'",
                args.name
            )
        })?;
    let token = result.token.access_token.expose_secret();
    let proof = result.proof.expose_secret();
    let printable = |v: &str| v.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if !printable(token) || !printable(proof) || !printable(&result.token.token_type) {
        bail!("the token or proof of credential '{}' has a character that cannot go into an HTTP header; nothing was printed", args.name);
    }
    if args.json {
        let authorization = format!("{} {token}", result.token.token_type);
        return output::print_json(&serde_json::json!({
            "authorization": authorization,
            "dpop": proof,
            "expires_at": result.token.expires_at,
        }));
    }
    output::write_parts(&[
        b"Authorization: ",
        result.token.token_type.as_bytes(),
        b" ",
        token.as_bytes(),
        b"\nDPoP: ",
        proof.as_bytes(),
        b"\n",
    ])
}
