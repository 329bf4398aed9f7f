//! `latchkey app add|list|allow|deny|remove`: which apps may use which
//! credential. An app is an executable (by absolute path; the daemon
//! hashes the file, and a changed file asks again) or an app key
//! (`key:NAME`) for interpreters and CI. Allowing needs the vault
//! passphrase as proof that a person asks; denying and removing do not.

use crate::args::{parse_scope_arg, split_scopes, ProofArgs};
use crate::context::Ctx;
use crate::output;
use anyhow::{Context, Result};
use latchkey_client::duration;
use latchkey_client::protocol::{
    AppAdd, AppAddParams, AppAllow, AppAllowParams, AppDeny, AppDenyParams, AppList, AppRemove,
    AppRemoveParams, Empty, RuleEffect, RuleInfo,
};
use secrecy::ExposeSecret;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create an app key: printed once, for the app's LATCHKEY_APP_KEY
    ///
    /// For programs that cannot be told apart by their executable
    /// (scripts run by python, node, bash) and CI jobs: whoever presents
    /// the key is the app NAME. The vault keeps only a keyed hash of it.
    Add(AddArgs),
    /// List rules and app keys
    List(ListArgs),
    /// Let an app use a credential (needs the vault passphrase or an authenticator code)
    Allow(AllowArgs),
    /// Refuse an app a credential without asking
    Deny(DenyArgs),
    /// Remove a rule (by id), or an app key and its rules (key:NAME)
    Remove(RemoveArgs),
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// The app key's name
    name: String,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AllowArgs {
    /// The app: an executable's absolute path, or key:NAME
    app: String,
    /// The credential it may use
    #[arg(long)]
    credential: String,
    /// The most it may ask for (repeatable; space-separated); default: all the credential's scopes
    #[arg(long = "scope", value_name = "SCOPES", value_parser = parse_scope_arg)]
    scopes: Vec<String>,
    /// Let the rule end after this long (e.g. 8h, 7d); default: until removed
    #[arg(long = "for", value_name = "DURATION", value_parser = duration::parse_whole_secs)]
    lasts: Option<Duration>,
    #[command(flatten)]
    proof: ProofArgs,
}

#[derive(clap::Args)]
pub struct DenyArgs {
    /// The app: an executable's absolute path, or key:NAME
    app: String,
    /// The credential it may not use
    #[arg(long)]
    credential: String,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// A rule id (see `latchkey app list`), or key:NAME
    id: String,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Add(args) => {
            let mut conn = ctx.connect()?;
            let created = conn
                .call::<AppAdd>(&AppAddParams { name: args.name })
                .context("failed to add the app key")?;
            ctx.info(format_args!(
                "app key '{}' created; it is shown this once: give it to the app as LATCHKEY_APP_KEY, then allow it with `latchkey app allow key:{} --credential NAME`",
                created.name, created.name
            ));
            output::write_parts(&[created.key.expose_secret().as_bytes(), b"\n"])
        }
        Command::List(args) => {
            let mut conn = ctx.connect()?;
            let list = conn.call::<AppList>(&Empty {})?;
            if args.json {
                return output::print_json(&list);
            }
            let now = latchkey_client::unix_now();
            let rows: Vec<Vec<String>> = list.rules.iter().map(|r| rule_row(r, now)).collect();
            let mut text = if rows.is_empty() {
                "no rules: credentials with access `ask` ask about every app\n".to_owned()
            } else {
                output::table(
                    &["ID", "APP", "CREDENTIAL", "EFFECT", "SCOPES", "EXPIRES"],
                    &rows,
                )
            };
            if !list.keys.is_empty() {
                let keys: Vec<Vec<String>> = list
                    .keys
                    .iter()
                    .map(|k| vec![format!("key:{}", k.name), output::utc(k.created_at)])
                    .collect();
                text.push('\n');
                text.push_str(&output::table(&["APP KEY", "CREATED"], &keys));
            }
            output::print(&text)
        }
        Command::Allow(args) => {
            let mut conn = ctx.connect()?;
            let proof = args.proof.proof("to allow an app")?;
            let scopes = split_scopes(&args.scopes);
            let params = AppAllowParams {
                app: args.app,
                credential: args.credential,
                scopes: (!scopes.is_empty()).then_some(scopes),
                expires_in: args.lasts.map(|d| d.as_secs()),
                proof: Some(proof),
            };
            let rule = conn
                .call::<AppAllow>(&params)
                .context("failed to allow the app")?;
            ctx.done(format_args!(
                "allowed {} to use '{}' (rule {})",
                rule.app, rule.credential, rule.id
            ))
        }
        Command::Deny(args) => {
            let mut conn = ctx.connect()?;
            let rule = conn
                .call::<AppDeny>(&AppDenyParams {
                    app: args.app,
                    credential: args.credential,
                })
                .context("failed to deny the app")?;
            ctx.done(format_args!(
                "denied {} the credential '{}' (rule {})",
                rule.app, rule.credential, rule.id
            ))
        }
        Command::Remove(args) => {
            let mut conn = ctx.connect()?;
            conn.call::<AppRemove>(&AppRemoveParams {
                id: args.id.clone(),
            })
            .context("failed to remove")?;
            ctx.done(format_args!("removed {}", args.id))
        }
    }
}

fn rule_row(rule: &RuleInfo, now: i64) -> Vec<String> {
    let app = match &rule.sha256 {
        Some(hash) => format!("{} (sha256 {}…)", rule.app, &hash[..hash.len().min(16)]),
        None => rule.app.clone(),
    };
    vec![
        rule.id.clone(),
        app,
        rule.credential.clone(),
        match rule.effect {
            RuleEffect::Allow => "allow".into(),
            RuleEffect::Deny => "deny".into(),
        },
        rule.scopes
            .as_ref()
            .map_or_else(|| "all".into(), |s| s.join(" ")),
        output::expiry(rule.expires_at, now),
    ]
}
