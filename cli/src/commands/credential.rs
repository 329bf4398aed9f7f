//! `latchkey credential add|list|show|set|remove`: OAuth clients registered
//! at a provider, and who may use them (`--access open|ask`). The client secret is read from stdin, a file, a named
//! environment variable or a no-echo prompt — never from argv — and is never
//! shown again.

use crate::args::{parse_scope_arg, split_scopes, ProofArgs};
use crate::context::Ctx;
use crate::exit;
use crate::output::{self, Fields};
use crate::secret::{self, Source};
use anyhow::{Context, Result};
use latchkey_client::duration;
use latchkey_client::protocol::{
    unix_now, Access, AuthMethod, CredentialAdd, CredentialAddParams, CredentialInfo,
    CredentialList, CredentialRemove, CredentialSet, CredentialSetParams, CredentialShow,
    CredentialState, Empty, GrantType, NameParams, RemoveParams, SignatureMethod,
    SubjectTokenSource, TokenExchangeConfig, TOKEN_TYPE_JWT,
};
use latchkey_client::protocol::{CredentialSetSecret, SetSecretParams, StepUp, ROTATION_AGE_SECS};
use secrecy::SecretString;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add a credential: an OAuth client at a provider
    Add(Box<AddArgs>),
    /// List credentials
    List(ListArgs),
    /// Show a credential's settings, state and token expiry (never its secret)
    Show(ShowArgs),
    /// Change who may use a credential
    ///
    /// `--access ask` (the default for new credentials): an app needs a rule
    /// (`latchkey app allow`) or the user's approval (`latchkey approve`).
    /// `--access open`: any program of yours gets tokens; switching to it
    /// needs the vault passphrase.
    /// `--step-up totp|passphrase [--window 10m]`: tokens only within the
    /// window after `latchkey confirm NAME`; `--step-up off`, a longer window
    /// or the passphrase where a code was needed loosen it and need a proof.
    Set(SetArgs),
    /// Replace a credential's client secret (rotation)
    ///
    /// The previous secret is kept until the new one has worked once: token
    /// requests use the new one first and fall back on the previous one when
    /// the provider answers invalid_client (warned and audited). `--drop-old`
    /// keeps nothing to fall back on (the old secret leaked, or is revoked).
    SetSecret(SetSecretArgs),
    /// Remove a credential and its tokens, revoking them at the provider first
    Remove(RemoveArgs),
    /// Store an OAuth 1.0a credential's token credentials, read from stdin
    ///
    /// Two lines on standard input: the token (oauth_token), then the token
    /// secret (oauth_token_secret), as a provider's developer page gives
    /// them; in place of `latchkey login NAME`.
    ImportToken(crate::commands::oauth1::ImportArgs),
    /// Print the public keys of a private_key_jwt credential (a JWKS to register with the provider)
    Jwks(super::keys::JwksArgs),
    /// Add the next client key of a private_key_jwt credential, or retire the old ones
    ///
    /// Without --retire-old: a new key is made in the vault and signs from
    /// now on; the JWKS lists both, and while the provider does not know the
    /// new key yet (invalid_client) the older key signs (warned and audited).
    /// Register the printed JWKS with the provider, then run
    /// `latchkey credential rotate-key NAME --retire-old`.
    RotateKey(super::keys::RotateKeyArgs),
}

/// Who may use a credential.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AccessArg {
    /// Any program of yours (needs the vault passphrase)
    Open,
    /// Only apps with a rule or the user's approval
    Ask,
}

impl From<AccessArg> for Access {
    fn from(a: AccessArg) -> Access {
        match a {
            AccessArg::Open => Access::Open,
            AccessArg::Ask => Access::Ask,
        }
    }
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["access", "step_up"])))]
pub struct SetArgs {
    /// The credential's name
    name: String,
    /// Who may use it
    #[arg(long, value_enum)]
    access: Option<AccessArg>,
    /// Hand out tokens only after a recent confirmation (`latchkey confirm NAME`) with an authenticator code or the passphrase; off turns it off (needs a proof)
    #[arg(long = "step-up", value_enum)]
    step_up: Option<StepUpArg>,
    /// How long a confirmation holds (e.g. 10m, 1h; at most 24h)
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration::parse_whole_secs, requires = "step_up")]
    window: Duration,
    #[command(flatten)]
    proof: ProofArgs,
}

#[derive(clap::Args)]
pub struct SetSecretArgs {
    /// The credential's name
    name: String,
    #[command(flatten)]
    secret: SecretArgs,
    /// Keep no previous secret to fall back on
    #[arg(long)]
    drop_old: bool,
}

/// What confirms a step-up credential.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StepUpArg {
    /// A code of the enrolled authenticator (`latchkey totp enroll`)
    Totp,
    /// The vault passphrase (or an authenticator code)
    Passphrase,
    /// No confirmation
    Off,
}

impl StepUpArg {
    fn with_window(self, window: Duration) -> StepUp {
        let window_secs = window.as_secs();
        match self {
            StepUpArg::Totp => StepUp::Totp { window_secs },
            StepUpArg::Passphrase => StepUp::Passphrase { window_secs },
            StepUpArg::Off => StepUp::Off,
        }
    }
}

/// Whether going from `old` to `new` loosens a step-up (the daemon's rule,
/// so that the CLI asks for a proof exactly when one is needed).
fn loosens(old: StepUp, new: StepUp) -> bool {
    let rank = |s: StepUp| match s {
        StepUp::Off => 0,
        StepUp::Passphrase { .. } => 1,
        StepUp::Totp { .. } => 2,
    };
    rank(new) < rank(old) || (rank(new) == rank(old) && new.window_secs() > old.window_secs())
}

/// The grant, spelled as on the wire.
#[derive(Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum Grant {
    ClientCredentials,
    AuthorizationCode,
    DeviceCode,
    /// OAuth 1.0a (RFC 5849): the daemon signs requests (`latchkey oauth1-sign`)
    Oauth1,
    TokenExchange,
}

impl From<Grant> for GrantType {
    fn from(grant: Grant) -> GrantType {
        match grant {
            Grant::ClientCredentials => GrantType::ClientCredentials,
            Grant::AuthorizationCode => GrantType::AuthorizationCode,
            Grant::DeviceCode => GrantType::DeviceCode,
            Grant::Oauth1 => GrantType::Oauth1,
            Grant::TokenExchange => GrantType::TokenExchange,
        }
    }
}

/// The client authentication method, spelled as on the wire.
#[derive(Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum Auth {
    ClientSecretBasic,
    ClientSecretPost,
    None,
    PrivateKeyJwt,
}

impl From<Auth> for AuthMethod {
    fn from(auth: Auth) -> AuthMethod {
        match auth {
            Auth::ClientSecretBasic => AuthMethod::ClientSecretBasic,
            Auth::ClientSecretPost => AuthMethod::ClientSecretPost,
            Auth::None => AuthMethod::None,
            Auth::PrivateKeyJwt => AuthMethod::PrivateKeyJwt,
        }
    }
}

/// The client secret comes from one of the `--client-secret-*` flags, else a
/// no-echo prompt on the terminal. There is deliberately no flag that takes
/// the secret itself: argv is visible to every local user.
#[derive(clap::Args)]
#[group(id = "secret_source", multiple = false)]
pub struct SecretArgs {
    /// Read the client secret from standard input (one trailing newline is dropped)
    #[arg(long)]
    client_secret_stdin: bool,
    /// Read the client secret from a file (one trailing newline is dropped)
    #[arg(long, value_name = "PATH")]
    client_secret_file: Option<PathBuf>,
    /// Read the client secret from the environment variable VAR
    #[arg(long, value_name = "VAR")]
    client_secret_env: Option<String>,
}

/// Where a token exchange credential (`--grant token_exchange`, RFC 8693)
/// reads its subject token, and what the exchange asks for. The token is
/// never passed here: the daemon reads it at every exchange.
#[derive(clap::Args)]
pub struct ExchangeArgs {
    /// token_exchange: read the subject token from this file at every exchange (e.g. the OIDC token file a CI job gets)
    #[arg(long, value_name = "PATH", conflicts_with = "subject_token_env")]
    subject_token_file: Option<PathBuf>,
    /// token_exchange: read the subject token from this environment variable of the daemon (inherited from the latchkey command that starts it)
    #[arg(long, value_name = "VAR")]
    subject_token_env: Option<String>,
    /// token_exchange: the subject token's type: jwt, id_token, access_token or a full URN [default: jwt]
    #[arg(long, value_name = "URN")]
    subject_token_type: Option<String>,
    /// token_exchange: an audience to ask for (the target service's name); repeat for several
    #[arg(long, value_name = "A")]
    audience: Vec<String>,
    /// token_exchange: a resource URI to ask for (RFC 8707); repeat for several
    #[arg(long, value_name = "URI")]
    resource: Vec<String>,
}

impl ExchangeArgs {
    /// The settings for `credential.add`: `None` when no flag of this group
    /// was given (the daemon says what is missing for the grant).
    fn config(self) -> Result<Option<TokenExchangeConfig>> {
        let subject_token = match (self.subject_token_file, self.subject_token_env) {
            (Some(path), _) => {
                // The daemon does not share our working directory; links are
                // kept (not resolved) since a CI system may move their target.
                let path = std::path::absolute(&path)
                    .with_context(|| format!("failed to make {} absolute", path.display()))?;
                let path = path
                    .into_os_string()
                    .into_string()
                    .map_err(|_| exit::usage("--subject-token-file must be a UTF-8 path"))?;
                SubjectTokenSource::File(path)
            }
            (None, Some(var)) => SubjectTokenSource::Env(var),
            (None, None) => {
                if self.subject_token_type.is_some()
                    || !self.audience.is_empty()
                    || !self.resource.is_empty()
                {
                    return Err(exit::usage(
                        "--subject-token-type, --audience and --resource need --subject-token-file PATH or --subject-token-env VAR",
                    ));
                }
                return Ok(None);
            }
        };
        let subject_token_type = match self.subject_token_type.as_deref() {
            None | Some("jwt") => TOKEN_TYPE_JWT.to_owned(),
            Some(short @ ("id_token" | "access_token" | "saml2")) => {
                format!("urn:ietf:params:oauth:token-type:{short}")
            }
            Some(urn) => urn.to_owned(),
        };
        Ok(Some(TokenExchangeConfig {
            subject_token,
            subject_token_type,
            audience: self.audience,
            resource: self.resource,
        }))
    }
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// Local name for the credential (what `latchkey token NAME` asks for)
    name: String,
    /// The provider that issues its tokens
    #[arg(long, value_name = "P")]
    provider: String,
    /// The OAuth client id
    #[arg(long, value_name = "ID")]
    client_id: String,
    /// The OAuth grant
    #[arg(long, value_enum, default_value = "client_credentials")]
    grant: Grant,
    /// Client authentication [default: client_secret_basic; none when no secret is given and the grant is not client_credentials]
    #[arg(long, value_enum)]
    auth: Option<Auth>,
    /// Scopes to request; repeat the flag or separate scopes with spaces
    #[arg(long = "scope", value_name = "S", value_parser = parse_scope_arg)]
    scopes: Vec<String>,
    /// Loopback redirect URI for the authorization code grant
    #[arg(long, value_name = "URI")]
    redirect_uri: Option<String>,
    #[command(flatten)]
    secret: SecretArgs,
    #[command(flatten)]
    exchange: ExchangeArgs,
    #[command(flatten)]
    keys: super::keys::KeyArgs,
    /// Who may use it: ask (apps need a rule or approval) or open (any program of yours; needs the vault passphrase)
    #[arg(long, value_enum, default_value = "ask")]
    access: AccessArg,
    #[command(flatten)]
    proof: ProofArgs,
    /// --grant oauth1: HMAC-SHA1, HMAC-SHA256 or RSA-SHA256 (PLAINTEXT over https only); the consumer key is --client-id, the consumer secret a --client-secret-* flag
    #[arg(long, value_name = "METHOD")]
    signature_method: Option<SignatureMethod>,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// The credential's name
    name: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// The credential's name
    name: String,
    /// Do not revoke the tokens at the provider first (they stay valid there until they expire)
    #[arg(long)]
    local_only: bool,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Add(args) => add(ctx, *args),
        Command::List(args) => list(ctx, args),
        Command::Show(args) => show(ctx, args),
        Command::Set(args) => set(ctx, args),
        Command::SetSecret(args) => set_secret(ctx, args),
        Command::Remove(args) => remove(ctx, args),
        Command::ImportToken(args) => crate::commands::oauth1::import(ctx, args),
        Command::Jwks(args) => super::keys::jwks(ctx, args),
        Command::RotateKey(args) => super::keys::rotate_key(ctx, args),
    }
}

/// The auth method: the flag, else `private_key_jwt` with a key given,
/// else `client_secret_basic`, except that a user-facing grant with no
/// secret given is a public client.
fn choose_auth(
    auth: Option<Auth>,
    grant: Grant,
    secret_given: bool,
    key_given: bool,
) -> AuthMethod {
    match (auth, grant, secret_given) {
        (Some(auth), _, _) => auth.into(),
        (None, _, false) if key_given => AuthMethod::PrivateKeyJwt,
        (None, Grant::ClientCredentials, _) | (None, _, true) => AuthMethod::ClientSecretBasic,
        (None, _, false) => AuthMethod::None,
    }
}

fn add(ctx: &Ctx, args: AddArgs) -> Result<()> {
    if matches!(args.grant, Grant::Oauth1) {
        return add_oauth1(ctx, args);
    }
    if args.signature_method.is_some() {
        return Err(exit::usage(
            "--signature-method is for OAuth 1.0a credentials: add --grant oauth1",
        ));
    }
    let source = Source::from_flags(
        args.secret.client_secret_file.as_deref(),
        args.secret.client_secret_stdin,
        args.secret.client_secret_env.as_deref(),
    );
    let auth = choose_auth(
        args.auth,
        args.grant,
        source.is_some(),
        args.keys.client_key_given(),
    );
    if auth == AuthMethod::None && source.is_some() {
        return Err(exit::usage(
            "--auth none is for public clients, which have no secret: drop the --client-secret-* flag or choose another --auth",
        ));
    }
    let access = Access::from(args.access);
    let exchange = args.exchange.config()?;
    let mut conn = ctx.connect()?;
    let proof = match access {
        Access::Open => Some(args.proof.proof("to let every app use this credential")?),
        Access::Ask => None,
    };
    let (client_key, dpop) = args.keys.read(auth)?;
    let client_secret = match (auth, source) {
        (AuthMethod::None | AuthMethod::PrivateKeyJwt, None) => None,
        (AuthMethod::None, _) => None,
        (_, Some(source)) => Some(source.read("client secret")?),
        (_, None) => Some(prompt_secret(&args.name, auth)?),
    };
    let params = CredentialAddParams {
        name: args.name,
        provider: args.provider,
        client_id: args.client_id,
        client_secret,
        grant: args.grant.into(),
        auth,
        scopes: split_scopes(&args.scopes),
        redirect_uri: args.redirect_uri,
        access: Some(access),
        proof,
        signature_method: None,
        private_key: None,
        exchange,
        client_key,
        assertion_audience: args.keys.assertion_audience(),
        dpop,
    };
    let info = conn
        .call::<CredentialAdd>(&params)
        .with_context(|| format!("failed to add credential '{}'", params.name))?;
    if auth == AuthMethod::PrivateKeyJwt {
        super::keys::print_new_jwks(&mut conn, &info.name)?;
    }
    ctx.done(format_args!(
        "added credential '{}' ({}, {}, access {})",
        params.name,
        params.grant.as_str(),
        params.auth.as_str(),
        access.as_str()
    ))
}

/// `--grant oauth1`: the consumer secret (HMAC, PLAINTEXT) or the RSA
/// private key file (RSA-SHA256).
fn add_oauth1(ctx: &Ctx, args: AddArgs) -> Result<()> {
    let Some(method) = args.signature_method else {
        return Err(exit::usage(
            "--grant oauth1 needs --signature-method HMAC-SHA1, HMAC-SHA256 or RSA-SHA256",
        ));
    };
    let source = Source::from_flags(
        args.secret.client_secret_file.as_deref(),
        args.secret.client_secret_stdin,
        args.secret.client_secret_env.as_deref(),
    );
    if args.keys.oauth2_flags_given() {
        return Err(exit::usage(
            "--generate-key, --alg, --assertion-audience and --dpop are for OAuth 2 credentials; an OAuth 1.0a credential signs with its consumer secret or --key-file",
        ));
    }
    let access = Access::from(args.access);
    let exchange = args.exchange.config()?;
    let (client_secret, private_key) = match (args.keys.key_file(), source) {
        (Some(_), Some(_)) => {
            return Err(exit::usage(
                "--key-file and a --client-secret-* flag: RSA-SHA256 signs with the key, HMAC with the consumer secret; give one",
            ))
        }
        (Some(path), None) => (None, Some(secret::read_key_file(path)?)),
        (None, Some(source)) => (Some(source.read("consumer secret")?), None),
        (None, None) if method.is_rsa() => {
            return Err(exit::usage(format!(
            "{} signs with the client's RSA private key: pass its PKCS#8 file with --key-file PATH",
            method.as_str()
        )))
        }
        (None, None) => (
            Some(prompt_secret(&args.name, AuthMethod::ClientSecretPost)?),
            None,
        ),
    };
    let mut conn = ctx.connect()?;
    let proof = match access {
        Access::Open => Some(args.proof.proof("to let every app use this credential")?),
        Access::Ask => None,
    };
    let params = CredentialAddParams {
        name: args.name,
        provider: args.provider,
        client_id: args.client_id,
        client_secret,
        grant: GrantType::Oauth1,
        auth: AuthMethod::None,
        scopes: split_scopes(&args.scopes),
        redirect_uri: args.redirect_uri,
        access: Some(access),
        proof,
        signature_method: Some(method),
        private_key,
        exchange,
        client_key: None,
        assertion_audience: None,
        dpop: None,
    };
    conn.call::<CredentialAdd>(&params)
        .with_context(|| format!("failed to add credential '{}'", params.name))?;
    ctx.done(format_args!(
        "added credential '{}' (oauth1, {}, access {}); next: `latchkey login {}` or `latchkey credential import-token {}`",
        params.name,
        method.as_str(),
        access.as_str(),
        params.name,
        params.name
    ))
}

fn set(ctx: &Ctx, args: SetArgs) -> Result<()> {
    let access = args.access.map(Access::from);
    let step_up = args.step_up.map(|s| s.with_window(args.window));
    let mut conn = ctx.connect()?;
    let current = conn
        .call::<CredentialShow>(&NameParams {
            name: args.name.clone(),
        })
        .with_context(|| format!("failed to change credential '{}'", args.name))?;
    let opens = access == Some(Access::Open) && current.access != Access::Open;
    let loosens = step_up.is_some_and(|s| loosens(current.step_up, s));
    let proof = if opens {
        Some(args.proof.proof("to let every app use this credential")?)
    } else if loosens {
        Some(args.proof.proof("to loosen this credential's step-up")?)
    } else {
        None
    };
    let info = conn
        .call::<CredentialSet>(&CredentialSetParams {
            name: args.name.clone(),
            access,
            step_up,
            proof,
        })
        .with_context(|| format!("failed to change credential '{}'", args.name))?;
    ctx.done(format_args!(
        "credential '{}': access {}, step-up {}",
        info.name,
        info.access.as_str(),
        step_up_text(info.step_up)
    ))
}

/// `totp, 10m window`, `off`.
fn step_up_text(step_up: StepUp) -> String {
    match step_up {
        StepUp::Off => "off".to_owned(),
        s => format!("{} ({} window)", s.as_str(), output::span(s.window_secs())),
    }
}

fn prompt_secret(name: &str, auth: AuthMethod) -> Result<SecretString> {
    if !secret::can_prompt() {
        return Err(exit::usage(format!(
            "credential '{name}' needs a client secret (--auth {}) and there is no terminal to prompt on: \
             use --client-secret-stdin, --client-secret-file PATH or --client-secret-env VAR \
             (or --auth none for a public client)",
            auth.as_str()
        )));
    }
    secret::prompt(&format!("Client secret for '{name}': "), "client secret")
}

fn set_secret(ctx: &Ctx, args: SetSecretArgs) -> Result<()> {
    let source = Source::from_flags(
        args.secret.client_secret_file.as_deref(),
        args.secret.client_secret_stdin,
        args.secret.client_secret_env.as_deref(),
    );
    let mut conn = ctx.connect()?;
    let client_secret = match source {
        Some(source) => source.read("client secret")?,
        None if secret::can_prompt() => secret::prompt(
            &format!("New client secret for '{}': ", args.name),
            "client secret",
        )?,
        None => {
            return Err(exit::usage(format!(
                "no new client secret for '{}' and no terminal to prompt on: \
                 use --client-secret-stdin, --client-secret-file PATH or --client-secret-env VAR",
                args.name
            )))
        }
    };
    let info = conn
        .call::<CredentialSetSecret>(&SetSecretParams {
            name: args.name.clone(),
            client_secret,
            drop_old: args.drop_old,
        })
        .with_context(|| format!("failed to set the client secret of '{}'", args.name))?;
    let kept = match info.client_secret.as_ref() {
        Some(s) if s.previous_kept => {
            "; the previous one is kept until the new one has worked once (`--drop-old` keeps none)"
        }
        _ => "; no previous secret is kept",
    };
    ctx.done(format_args!(
        "replaced the client secret of '{}'{kept}",
        args.name
    ))
}

fn list(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let credentials = ctx
        .connect()?
        .call::<CredentialList>(&Empty {})
        .context("failed to list credentials")?;
    if args.json {
        return output::print_json(&credentials);
    }
    if credentials.is_empty() {
        return ctx.done(
            "no credentials: add one with `latchkey credential add NAME --provider P --client-id ID`",
        );
    }
    output::print(&list_table(&credentials, unix_now()))
}

fn list_table(credentials: &[CredentialInfo], now: i64) -> String {
    let rows: Vec<Vec<String>> = credentials
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.provider.clone(),
                c.grant.as_str().to_owned(),
                c.subject.clone().unwrap_or_else(|| "-".into()),
                token_expiry(c, now),
                state(c),
            ]
        })
        .collect();
    // STATE last: a credential that needs a login says how to log in.
    output::table(
        &["NAME", "PROVIDER", "GRANT", "ACCOUNT", "TOKEN", "STATE"],
        &rows,
    )
}

/// The life-cycle state, with the fix when the user has something to do.
fn state(c: &CredentialInfo) -> String {
    match c.state {
        CredentialState::NeedsLogin => format!("needs login (run `latchkey login {}`)", c.name),
        other => other.to_string(),
    }
}

/// The latest expiry among cached tokens, for the list's last column.
fn token_expiry(c: &CredentialInfo, now: i64) -> String {
    if c.tokens.is_empty() {
        return "-".into();
    }
    match c.tokens.iter().filter_map(|t| t.expires_at).max() {
        Some(at) if at > now => format!("expires in {}", output::span((at - now) as u64)),
        Some(_) => "expired".into(),
        None => "no expiry given".into(),
    }
}

fn show(ctx: &Ctx, args: ShowArgs) -> Result<()> {
    let info = ctx
        .connect()?
        .call::<CredentialShow>(&NameParams {
            name: args.name.clone(),
        })
        .with_context(|| format!("failed to show credential '{}'", args.name))?;
    if args.json {
        return output::print_json(&info);
    }
    output::print(&render(&info, unix_now()))
}

/// `stored, set 12d ago`, with what rotation needs to say: a previous
/// secret kept, a new one not yet accepted, an age past rotation.
fn secret_text(info: &CredentialInfo, now: i64) -> String {
    let Some(secret) = info.client_secret.as_ref() else {
        return if info.has_client_secret {
            "stored"
        } else {
            "none"
        }
        .into();
    };
    let mut text = match secret.age(now) {
        Some(age) => format!("stored, set {} ago", output::span(age as u64)),
        None => "stored".into(),
    };
    if !secret.worked {
        text.push_str(", not yet accepted by the provider");
    }
    if secret.previous_kept {
        text.push_str("; the previous one is kept until it is");
        if let Some(age) = secret.previous_set_at.map(|at| (now - at).max(0)) {
            text.push_str(&format!(" (set {} ago)", output::span(age as u64)));
        }
    }
    if secret.due_for_rotation(now, ROTATION_AGE_SECS) {
        text.push_str(&format!(
            "; older than {} days: rotate it with `latchkey credential set-secret {}`",
            ROTATION_AGE_SECS / 86_400,
            info.name
        ));
    }
    text
}

fn render(info: &CredentialInfo, now: i64) -> String {
    let mut f = Fields::default();
    f.add("name", &info.name)
        .add("provider", &info.provider)
        .add("client id", &info.client_id)
        .add("grant", info.grant.as_str())
        .add("auth", info.auth.as_str())
        .add("client secret", secret_text(info, now));
    if let Some(exchange) = &info.exchange {
        f.add("subject token", exchange.subject_token.describe())
            .add("token type", &exchange.subject_token_type);
        if !exchange.audience.is_empty() {
            f.add("audience", exchange.audience.join(" "));
        }
        if !exchange.resource.is_empty() {
            f.add("resource", exchange.resource.join(" "));
        }
    }
    // What the provider granted now comes first when it is not what is
    // configured (it narrowed the grant at login or on a refresh).
    let narrowed = info
        .granted_scopes
        .as_ref()
        .filter(|g| !info.scopes.is_empty() && **g != info.scopes);
    let configured = if info.scopes.is_empty() {
        "(provider default)".into()
    } else {
        info.scopes.join(" ")
    };
    match narrowed {
        Some(granted) => {
            let granted = if granted.is_empty() {
                "(none)".into()
            } else {
                granted.join(" ")
            };
            f.add("scopes", format!("{granted} (granted now)")).add(
                "configured",
                format!(
                    "{configured} (`latchkey login {}` asks for all of them)",
                    info.name
                ),
            );
        }
        None => {
            f.add("scopes", configured);
        }
    }
    f.add(
        "access",
        match info.access {
            Access::Open => "open (any program of yours)",
            Access::Ask => "ask (apps need a rule or your approval: `latchkey app list`)",
        },
    );
    if !info.step_up.is_off() {
        let confirmed = match info.confirmed_until {
            Some(until) => format!("; confirmed until {}", output::utc(until)),
            None => format!("; not confirmed now: `latchkey confirm {}`", info.name),
        };
        f.add(
            "step-up",
            format!("{}{confirmed}", step_up_text(info.step_up)),
        );
    }
    f.add("state", state(info));
    if let Some(subject) = &info.subject {
        f.add("account", subject);
    }
    if info.has_refresh_token {
        f.add("refresh token", "held");
    }
    if let Some(method) = info.signature_method {
        f.add("signature method", method.as_str());
        f.add(
            "token credentials",
            if info.has_token_credentials {
                "held"
            } else {
                "none"
            },
        );
    }
    if let Some(err) = &info.last_error {
        f.add("last error", err);
    }
    if info.tokens.is_empty() {
        f.add("token", "none cached");
    }
    for token in &info.tokens {
        let scope = if token.scope.is_empty() {
            "(default scopes)"
        } else {
            &token.scope
        };
        f.add(
            "token",
            format!("{scope}: {}", output::expiry(token.expires_at, now)),
        );
    }
    f.render()
}

fn remove(ctx: &Ctx, args: RemoveArgs) -> Result<()> {
    // The daemon revokes at the provider first, unless told not to; when
    // revocation fails it removes nothing and says to use --local-only.
    ctx.connect()?
        .call::<CredentialRemove>(&RemoveParams {
            name: args.name.clone(),
            local_only: args.local_only,
        })
        .with_context(|| format!("failed to remove credential '{}'", args.name))?;
    if args.local_only {
        ctx.done(format_args!(
            "removed credential '{}' without revoking its tokens: any it held stay valid at the provider until they expire",
            args.name
        ))
    } else {
        ctx.done(format_args!("removed credential '{}'", args.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_client::protocol::TokenSummary;

    #[test]
    fn auth_defaults() {
        use AuthMethod as M;
        let cases = [
            (None, Grant::ClientCredentials, false, M::ClientSecretBasic),
            (None, Grant::ClientCredentials, true, M::ClientSecretBasic),
            (None, Grant::AuthorizationCode, false, M::None),
            (None, Grant::AuthorizationCode, true, M::ClientSecretBasic),
            (None, Grant::DeviceCode, false, M::None),
            (
                Some(Auth::ClientSecretPost),
                Grant::DeviceCode,
                false,
                M::ClientSecretPost,
            ),
            (Some(Auth::None), Grant::ClientCredentials, false, M::None),
        ];
        for (auth, grant, given, want) in cases {
            assert_eq!(choose_auth(auth, grant, given, false), want);
        }
        for grant in [Grant::ClientCredentials, Grant::AuthorizationCode] {
            assert_eq!(
                choose_auth(None, grant, false, true),
                M::PrivateKeyJwt,
                "a key given"
            );
        }
    }

    #[test]
    fn show_never_has_a_secret_and_reads_well() {
        let info = CredentialInfo {
            name: "gh".into(),
            provider: "github".into(),
            client_id: "cid".into(),
            grant: GrantType::ClientCredentials,
            auth: AuthMethod::ClientSecretBasic,
            scopes: vec!["repo".into(), "read:org".into()],
            granted_scopes: None,
            has_client_secret: true,
            dpop: false,
            client_secret: None,
            access: Access::Ask,
            step_up: StepUp::Off,
            confirmed_until: None,
            state: CredentialState::Ready,
            tokens: vec![TokenSummary {
                scope: "repo read:org".into(),
                expires_at: Some(1_000_600),
                refresh_at: None,
            }],
            subject: None,
            has_refresh_token: false,
            last_error: None,
            signature_method: None,
            has_token_credentials: false,
            exchange: None,
        };
        let text = render(&info, 1_000_000);
        assert!(text.contains("client secret: stored\n"), "{text}");
        assert!(text.contains("scopes:        repo read:org\n"), "{text}");
        assert!(
            text.contains("token:         repo read:org: expires in 10m ("),
            "{text}"
        );
        assert_eq!(token_expiry(&info, 1_000_000), "expires in 10m");
        assert_eq!(token_expiry(&info, 2_000_000), "expired");
        assert!(text.contains("state:         ready\n"), "{text}");
        assert!(!text.contains("account"), "{text}");
        assert!(!text.contains("refresh token"), "{text}");
    }

    #[test]
    fn secret_ages_say_what_rotation_needs() {
        let mut info = user_login(CredentialState::Ready);
        info.has_client_secret = true;
        let now = 100 * 86_400;
        info.client_secret = Some(latchkey_client::protocol::ClientSecretInfo {
            set_at: Some(now - 3 * 86_400),
            worked: false,
            previous_kept: true,
            previous_set_at: Some(now - 40 * 86_400),
        });
        assert_eq!(
            secret_text(&info, now),
            "stored, set 3d ago, not yet accepted by the provider; the previous one is kept until it is (set 40d ago)"
        );
        info.client_secret = Some(latchkey_client::protocol::ClientSecretInfo {
            set_at: Some(0),
            worked: true,
            previous_kept: false,
            previous_set_at: None,
        });
        assert_eq!(
            secret_text(&info, now),
            "stored, set 100d ago; older than 90 days: rotate it with `latchkey credential set-secret me`"
        );
    }

    #[test]
    fn a_narrowed_grant_shows_what_is_granted_now_and_what_is_configured() {
        let mut info = user_login(CredentialState::Ready);
        info.scopes = vec!["read".into(), "write".into()];
        info.granted_scopes = Some(vec!["read".into()]);
        let text = render(&info, 1_000_000);
        assert!(
            text.contains("scopes:        read (granted now)\n"),
            "{text}"
        );
        assert!(
            text.contains("configured:    read write (`latchkey login me` asks for all of them)\n"),
            "{text}"
        );
        info.granted_scopes = Some(vec!["read".into(), "write".into()]);
        let text = render(&info, 1_000_000);
        assert!(text.contains("scopes:        read write\n"), "{text}");
        assert!(!text.contains("configured"), "{text}");
    }

    fn user_login(state: CredentialState) -> CredentialInfo {
        CredentialInfo {
            name: "me".into(),
            provider: "corp".into(),
            client_id: "cli".into(),
            grant: GrantType::AuthorizationCode,
            auth: AuthMethod::None,
            scopes: vec!["openid".into()],
            granted_scopes: None,
            has_client_secret: false,
            dpop: false,
            client_secret: None,
            access: Access::Open,
            step_up: StepUp::Off,
            confirmed_until: None,
            state,
            tokens: Vec::new(),
            subject: None,
            has_refresh_token: false,
            last_error: None,
            signature_method: None,
            has_token_credentials: false,
            exchange: None,
        }
    }

    #[test]
    fn a_credential_needing_a_login_says_how() {
        let info = user_login(CredentialState::NeedsLogin);
        let text = render(&info, 0);
        assert!(
            text.contains("state:         needs login (run `latchkey login me`)\n"),
            "{text}"
        );
        let table = list_table(&[info], 0);
        assert_eq!(
            table,
            "\
NAME  PROVIDER  GRANT               ACCOUNT  TOKEN  STATE
me    corp      authorization_code  -        -      needs login (run `latchkey login me`)
"
        );
    }

    #[test]
    fn a_logged_in_credential_shows_its_account_and_refresh_token() {
        let mut info = user_login(CredentialState::Ready);
        info.subject = Some("alice@example.com".into());
        info.has_refresh_token = true;
        let text = render(&info, 0);
        assert!(text.contains("state:         ready\n"), "{text}");
        assert!(
            text.contains("account:       alice@example.com\n"),
            "{text}"
        );
        assert!(text.contains("refresh token: held\n"), "{text}");
        let table = list_table(&[info], 0);
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .contains("alice@example.com  -      ready"),
            "{table}"
        );
    }
}
