//! The types of token exchange (RFC 8693) credentials: where the subject
//! token comes from (a file or an environment variable of the daemon's,
//! such as the OIDC token a CI system gives each job) and what the
//! exchange asks for. Only the source is stored, never the token: it is
//! read again at every exchange.

use serde::{Deserialize, Serialize};

/// RFC 8693 §3: the subject token type latchkey sends unless told another.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Where a token exchange credential reads its subject token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectTokenSource {
    /// An absolute path, read at every exchange (a CI system rewrites it
    /// per job; symbolic links are followed, as Kubernetes' projected
    /// tokens need).
    File(String),
    /// The name of an environment variable of the daemon's own process
    /// (inherited from the `latchkey` command that started it).
    Env(String),
}

impl SubjectTokenSource {
    /// How messages name it: `file /run/ci/token` or `environment variable CI_TOKEN`.
    pub fn describe(&self) -> String {
        match self {
            SubjectTokenSource::File(path) => format!("file {path}"),
            SubjectTokenSource::Env(var) => format!("environment variable {var}"),
        }
    }
}

/// A token exchange credential's settings (`credential.add` with the
/// `token_exchange` grant; shown by `credential.show`). None is secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenExchangeConfig {
    /// Where the subject token is read.
    pub subject_token: SubjectTokenSource,
    /// `subject_token_type` sent (RFC 8693 §3), by default [`TOKEN_TYPE_JWT`].
    #[serde(default = "default_token_type")]
    pub subject_token_type: String,
    /// `audience` values sent (the logical names of the target services).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// `resource` values sent (RFC 8707 absolute URIs of the target services).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource: Vec<String>,
}

fn default_token_type() -> String {
    TOKEN_TYPE_JWT.to_owned()
}
