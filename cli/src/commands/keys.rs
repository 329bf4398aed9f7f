//! The keys a credential holds in the vault, from the command line:
//! `credential add … --generate-key | --key-file PATH [--dpop]` (the flags
//! here), `credential jwks NAME` and `credential rotate-key NAME`. A private
//! key is read only from the file the user names; only public keys are
//! ever printed.

use crate::context::{Connection, Ctx};
use crate::exit;
use crate::output;
use crate::secret::Source;
use anyhow::{Context, Result};
use latchkey_client::protocol::{
    AssertionAudience, AuthMethod, CredentialJwks, CredentialRotateKey, Jwks, KeyAlg, NameParams,
    NewKey, RotateKeyParams,
};
use std::path::PathBuf;

/// A key algorithm, spelled as in JOSE.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Alg {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
    #[value(name = "RS256")]
    Rs256,
}

impl From<Alg> for KeyAlg {
    fn from(alg: Alg) -> KeyAlg {
        match alg {
            Alg::Es256 => KeyAlg::ES256,
            Alg::EdDsa => KeyAlg::EdDSA,
            Alg::Rs256 => KeyAlg::RS256,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum Audience {
    TokenEndpoint,
    Issuer,
}

/// The key flags of `credential add`.
#[derive(clap::Args)]
pub struct KeyArgs {
    /// private_key_jwt: make the client's key pair in the vault and print its public key (a JWKS) to register with the provider
    #[arg(long, conflicts_with = "key_file")]
    generate_key: bool,
    /// private_key_jwt: import the client's private key from this PEM file (PKCS#8, or PKCS#1 for RSA); --grant oauth1 with RSA-SHA256: the client's RSA private key (PKCS#8 PEM or DER)
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// The algorithm of the generated key (ES256, the default, or EdDSA; RSA keys can only be imported, and an imported key's algorithm is its own)
    #[arg(long, value_enum, requires = "generate_key")]
    alg: Option<Alg>,
    /// private_key_jwt: the audience of client assertions [default: token_endpoint]
    #[arg(long, value_enum)]
    assertion_audience: Option<Audience>,
    /// Bind the credential's tokens to a DPoP key made in the vault (RFC 9449); apps get proofs from `latchkey dpop`
    #[arg(long)]
    dpop: bool,
}

impl KeyArgs {
    /// Whether a client key is given (then the auth method defaults to
    /// private_key_jwt).
    pub fn client_key_given(&self) -> bool {
        self.generate_key || self.key_file.is_some()
    }

    /// The key file named (a client key, or an OAuth 1.0a RSA key).
    pub fn key_file(&self) -> Option<&std::path::Path> {
        self.key_file.as_deref()
    }

    /// Whether a flag only an OAuth 2 credential takes is given.
    pub fn oauth2_flags_given(&self) -> bool {
        self.generate_key || self.alg.is_some() || self.assertion_audience.is_some() || self.dpop
    }

    pub fn assertion_audience(&self) -> Option<AssertionAudience> {
        self.assertion_audience.map(|a| match a {
            Audience::TokenEndpoint => AssertionAudience::TokenEndpoint,
            Audience::Issuer => AssertionAudience::Issuer,
        })
    }

    /// The client key and the DPoP key to send; the key file is read here.
    pub fn read(&self, auth: AuthMethod) -> Result<(Option<NewKey>, Option<NewKey>)> {
        let keyed = auth == AuthMethod::PrivateKeyJwt;
        if self.client_key_given() && !keyed {
            return Err(exit::usage(format!(
                "--generate-key and --key-file are for --auth private_key_jwt, not {}",
                auth.as_str()
            )));
        }
        if keyed && !self.client_key_given() {
            return Err(exit::usage(
                "--auth private_key_jwt needs a key: --generate-key (made in the vault) or --key-file PATH",
            ));
        }
        let client = match (&self.key_file, self.generate_key) {
            (Some(path), _) => Some(NewKey::Import(
                Source::File(path.clone()).read("private key")?,
            )),
            (None, true) => Some(NewKey::Generate(
                self.alg.map(KeyAlg::from).unwrap_or_default(),
            )),
            (None, false) => None,
        };
        let dpop = self.dpop.then(|| NewKey::Generate(KeyAlg::ES256));
        Ok((client, dpop))
    }
}

#[derive(clap::Args)]
pub struct JwksArgs {
    /// The credential's name
    name: String,
}

#[derive(clap::Args)]
pub struct RotateKeyArgs {
    /// The credential's name
    name: String,
    /// The next key's algorithm [default: the newest key's]
    #[arg(long, value_enum, conflicts_with = "retire_old")]
    alg: Option<Alg>,
    /// Remove every key but the newest (once the provider has the new JWKS)
    #[arg(long)]
    retire_old: bool,
}

/// `credential jwks NAME`: the JWKS on stdout.
pub fn jwks(ctx: &Ctx, args: JwksArgs) -> Result<()> {
    let mut conn = ctx.connect()?;
    let jwks = conn
        .call::<CredentialJwks>(&NameParams {
            name: args.name.clone(),
        })
        .with_context(|| format!("failed to read the keys of credential '{}'", args.name))?;
    output::print_json(&jwks)
}

pub fn rotate_key(ctx: &Ctx, args: RotateKeyArgs) -> Result<()> {
    let mut conn = ctx.connect()?;
    let jwks: Jwks = conn
        .call::<CredentialRotateKey>(&RotateKeyParams {
            name: args.name.clone(),
            alg: args.alg.map(KeyAlg::from),
            retire_old: args.retire_old,
        })
        .with_context(|| format!("failed to rotate the key of credential '{}'", args.name))?;
    output::print_json(&jwks)?;
    if args.retire_old {
        ctx.info(format_args!(
            "credential '{}' keeps its newest key only; remove the others from the provider's registration too",
            args.name
        ));
    } else {
        ctx.info(format_args!(
            "the new key signs from now on (the older one while the provider refuses it): register this JWKS with the provider, then run `latchkey credential rotate-key {} --retire-old`",
            args.name
        ));
    }
    Ok(())
}

/// After `credential add` with a client key: its JWKS on stdout.
pub fn print_new_jwks(conn: &mut Connection<'_>, name: &str) -> Result<()> {
    let jwks = conn
        .call::<CredentialJwks>(&NameParams {
            name: name.to_owned(),
        })
        .with_context(|| format!("failed to read the keys of credential '{name}'"))?;
    output::print_json(&jwks)
}
