//! The types of the keys a credential holds in the vault: its client key
//! for `private_key_jwt` client authentication (RFC 7523), and its DPoP key
//! (RFC 9449), which binds its access tokens to the vault. Only public keys
//! ever leave the daemon (as a JWKS); a proof or an assertion is signed
//! inside it.

use super::{expose, TokenReply};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The signature algorithm of a key the vault holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum KeyAlg {
    /// ECDSA with P-256 and SHA-256: the default.
    #[default]
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (imported keys only: latchkey does not
    /// generate RSA keys).
    RS256,
}

impl KeyAlg {
    /// The JOSE spelling (`alg`), also the CLI's.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::ES256 => "ES256",
            KeyAlg::EdDSA => "EdDSA",
            KeyAlg::RS256 => "RS256",
        }
    }

    /// Parses the JOSE spelling.
    pub fn parse(s: &str) -> Option<KeyAlg> {
        [KeyAlg::ES256, KeyAlg::EdDSA, KeyAlg::RS256]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// Where a new key comes from.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NewKey {
    /// Generated inside the daemon (`ES256` or `EdDSA`).
    Generate(KeyAlg),
    /// An existing private key: PKCS#8 PEM (`BEGIN PRIVATE KEY`) of a P-256,
    /// Ed25519 or RSA key, or PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`).
    Import(#[serde(serialize_with = "expose")] SecretString),
}

/// Whom a client assertion names as its audience (`aud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AssertionAudience {
    /// The token endpoint's URL (RFC 7523 §3; what most providers expect).
    #[default]
    TokenEndpoint,
    /// The provider's issuer identifier (for providers that require it).
    Issuer,
}

impl AssertionAudience {
    /// The wire and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionAudience::TokenEndpoint => "token_endpoint",
            AssertionAudience::Issuer => "issuer",
        }
    }

    /// Whether it is the default (left out of stored documents).
    pub fn is_default(&self) -> bool {
        *self == AssertionAudience::TokenEndpoint
    }
}

/// A set of public keys (RFC 7517 §5): what to register with the provider.
/// Each key carries `kid`, `alg` and `use: "sig"`; never a private part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Jwks {
    /// Newest first: the key that signs first.
    pub keys: Vec<serde_json::Value>,
}

/// Parameters of `credential.rotate_key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateKeyParams {
    /// Credential name.
    pub name: String,
    /// Algorithm of the next key (default: the newest key's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<KeyAlg>,
    /// Instead of a new key, remove every key but the newest (once the
    /// provider has the new one).
    #[serde(default)]
    pub retire_old: bool,
}

/// Parameters of `dpop.proof`: the request the app is about to make to a
/// resource server with the credential's DPoP-bound token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpopProofParams {
    /// Credential name.
    pub credential: String,
    /// The request's HTTP method (`htm`), e.g. `GET`.
    pub method: String,
    /// The request's URL (`htu`; its query and fragment are left out of
    /// the proof, RFC 9449 §4.2).
    pub url: String,
    /// A nonce the resource server sent in `DPoP-Nonce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Scopes of the token (a subset of the credential's); empty: all.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The token must last at least this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<u64>,
}

/// The result of `dpop.proof`: the token and a fresh proof for exactly that
/// request (`ath` is the token's hash). Send `Authorization: DPoP <token>`
/// and `DPoP: <proof>`.
#[derive(Serialize, Deserialize)]
pub struct DpopProofResult {
    /// The proof JWT (single use: a fresh `jti`).
    #[serde(serialize_with = "expose")]
    pub proof: SecretString,
    /// The DPoP-bound access token the proof is for.
    pub token: TokenReply,
}

impl std::fmt::Debug for DpopProofResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopProofResult")
            .field("proof", &"[redacted]")
            .field("token", &self.token)
            .finish()
    }
}
