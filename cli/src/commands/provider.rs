//! `latchkey provider add|list|show|remove`: the authorization servers
//! credentials are issued by.

use crate::context::Ctx;
use crate::output::{self, Fields};
use anyhow::{Context, Result};
use clap::ArgGroup;
use latchkey_client::protocol::{
    Empty, Endpoints, NameParams, Oauth1Endpoints, ProviderAdd, ProviderAddParams, ProviderList,
    ProviderRemove, ProviderShow,
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add a provider by its issuer URL (discovery), by explicit endpoints, or both
    Add(Box<AddArgs>),
    /// List providers
    List(ListArgs),
    /// Show a provider's endpoints and credentials
    Show(ShowArgs),
    /// Remove a provider that no credential uses
    Remove(NameArg),
}

/// Explicit endpoint flags override what discovery finds at the issuer.
#[derive(clap::Args)]
#[command(group(ArgGroup::new("where").required(true).multiple(true).args(["issuer", "token_endpoint", "oauth1_request_token_url"])))]
pub struct AddArgs {
    /// Local name for the provider
    name: String,
    /// Issuer URL: endpoints are discovered from its RFC 8414 / OpenID metadata
    #[arg(long, value_name = "URL")]
    issuer: Option<String>,
    /// Token endpoint URL (required unless --issuer is given)
    #[arg(long, value_name = "URL")]
    token_endpoint: Option<String>,
    /// Authorization endpoint URL (authorization code grant)
    #[arg(long, value_name = "URL")]
    authorization_endpoint: Option<String>,
    /// Device authorization endpoint URL (device code grant, RFC 8628)
    #[arg(long, value_name = "URL")]
    device_authorization_endpoint: Option<String>,
    /// Token revocation endpoint URL (RFC 7009)
    #[arg(long, value_name = "URL")]
    revocation_endpoint: Option<String>,
    /// Token introspection endpoint URL (RFC 7662)
    #[arg(long, value_name = "URL")]
    introspection_endpoint: Option<String>,
    /// JWKS URL for ID-token validation
    #[arg(long, value_name = "URL")]
    jwks_uri: Option<String>,
    /// An OAuth 1.0a provider: its temporary credential request URL (RFC 5849 §2.1)
    #[arg(long, value_name = "URL", requires_all = ["oauth1_authorize_url", "oauth1_access_token_url"], conflicts_with_all = ["issuer", "token_endpoint"])]
    oauth1_request_token_url: Option<String>,
    /// An OAuth 1.0a provider: its resource owner authorization URL (§2.2)
    #[arg(long, value_name = "URL", requires = "oauth1_request_token_url")]
    oauth1_authorize_url: Option<String>,
    /// An OAuth 1.0a provider: its token request URL (§2.3)
    #[arg(long, value_name = "URL", requires = "oauth1_request_token_url")]
    oauth1_access_token_url: Option<String>,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// The provider's name
    name: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct NameArg {
    /// The provider's name
    name: String,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Add(args) => add(ctx, *args),
        Command::List(args) => list(ctx, args),
        Command::Show(args) => show(ctx, args),
        Command::Remove(args) => remove(ctx, args),
    }
}

fn add(ctx: &Ctx, args: AddArgs) -> Result<()> {
    let params = ProviderAddParams {
        name: args.name,
        issuer: args.issuer,
        endpoints: Endpoints {
            authorization_endpoint: args.authorization_endpoint,
            token_endpoint: args.token_endpoint,
            device_authorization_endpoint: args.device_authorization_endpoint,
            revocation_endpoint: args.revocation_endpoint,
            introspection_endpoint: args.introspection_endpoint,
            jwks_uri: args.jwks_uri,
        },
        oauth1: args
            .oauth1_request_token_url
            .map(|temporary| Oauth1Endpoints {
                temporary_credentials: temporary,
                authorization: args.oauth1_authorize_url.unwrap_or_default(),
                token: args.oauth1_access_token_url.unwrap_or_default(),
            }),
    };
    let info = ctx
        .connect()?
        .call::<ProviderAdd>(&params)
        .with_context(|| format!("failed to add provider '{}'", params.name))?;
    ctx.done(format_args!("added provider '{}'", params.name))?;
    // The daemon answers with the provider as configured; show what
    // discovery found, since that is what the user did not type.
    if params.issuer.is_some() && !ctx.quiet {
        let mut f = Fields::default();
        add_endpoints(&mut f, &info.endpoints);
        output::print(&f.render())?;
    }
    Ok(())
}

fn list(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let providers = ctx
        .connect()?
        .call::<ProviderList>(&Empty {})
        .context("failed to list providers")?;
    if args.json {
        return output::print_json(&providers);
    }
    if providers.is_empty() {
        return ctx.done("no providers: add one with `latchkey provider add NAME --issuer URL`");
    }
    let rows: Vec<Vec<String>> = providers
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.issuer.clone().unwrap_or_else(|| "-".into()),
                p.endpoints
                    .token_endpoint
                    .clone()
                    .unwrap_or_else(|| "-".into()),
                p.credentials.len().to_string(),
            ]
        })
        .collect();
    output::print(&output::table(
        &["NAME", "ISSUER", "TOKEN ENDPOINT", "CREDENTIALS"],
        &rows,
    ))
}

fn show(ctx: &Ctx, args: ShowArgs) -> Result<()> {
    let info = ctx
        .connect()?
        .call::<ProviderShow>(&NameParams {
            name: args.name.clone(),
        })
        .with_context(|| format!("failed to show provider '{}'", args.name))?;
    if args.json {
        return output::print_json(&info);
    }
    let mut f = Fields::default();
    f.add("name", &info.name);
    f.add("issuer", info.issuer.as_deref().unwrap_or("-"));
    add_endpoints(&mut f, &info.endpoints);
    if let Some(o) = &info.oauth1 {
        f.add("oauth1 request token url", &o.temporary_credentials);
        f.add("oauth1 authorize url", &o.authorization);
        f.add("oauth1 access token url", &o.token);
    }
    f.add(
        "credentials",
        if info.credentials.is_empty() {
            "none".into()
        } else {
            info.credentials.join(", ")
        },
    );
    output::print(&f.render())
}

fn remove(ctx: &Ctx, args: NameArg) -> Result<()> {
    ctx.connect()?
        .call::<ProviderRemove>(&NameParams {
            name: args.name.clone(),
        })
        .with_context(|| format!("failed to remove provider '{}'", args.name))?;
    ctx.done(format_args!("removed provider '{}'", args.name))
}

fn add_endpoints(f: &mut Fields, e: &Endpoints) {
    let rows = [
        ("token endpoint", &e.token_endpoint),
        ("authorization endpoint", &e.authorization_endpoint),
        (
            "device authorization endpoint",
            &e.device_authorization_endpoint,
        ),
        ("revocation endpoint", &e.revocation_endpoint),
        ("introspection endpoint", &e.introspection_endpoint),
        ("jwks uri", &e.jwks_uri),
    ];
    for (label, value) in rows {
        if let Some(url) = value {
            f.add(label, url);
        }
    }
}
