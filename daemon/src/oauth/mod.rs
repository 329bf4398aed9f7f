//! OAuth: discovery, grants, and the one HTTP client they share. Every
//! grant answers with a [`Granted`]: what the provider's token response said.

pub mod discovery;
pub mod grant;
pub mod http;
pub mod user;

use oauth2::TokenResponse;
use secrecy::SecretString;

/// A successful token response (any grant, refreshes included).
pub struct Granted {
    pub access: Access,
    /// Present when the provider issued (or rotated) one.
    pub refresh_token: Option<SecretString>,
    /// The OIDC ID token, not yet validated.
    pub id_token: Option<String>,
}

/// The access token part of a token response, as the provider said it.
pub struct Access {
    pub access_token: SecretString,
    /// As RFC 6750 spells it in headers (`Bearer`).
    pub token_type: String,
    pub expires_in: Option<u64>,
    /// Space-separated; `None` when the provider did not say (RFC 6749 §5.1:
    /// then it is the scope requested).
    pub scope: Option<String>,
}

impl Granted {
    fn from_response<R>(response: &R, id_token: Option<String>) -> Granted
    where
        R: TokenResponse,
        R::TokenType: AsRef<str>,
    {
        Granted {
            access: Access {
                access_token: SecretString::from(response.access_token().secret().as_str()),
                token_type: display_token_type(response.token_type().as_ref()),
                expires_in: response.expires_in().map(|d| d.as_secs()),
                scope: response
                    .scopes()
                    .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
            },
            refresh_token: response
                .refresh_token()
                .map(|r| SecretString::from(r.secret().as_str())),
            id_token,
        }
    }
}

/// `bearer` in any case is shown as RFC 6750 spells it in headers.
fn display_token_type(raw: &str) -> String {
    if raw.eq_ignore_ascii_case("bearer") {
        "Bearer".into()
    } else {
        raw.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_type_spelling() {
        assert_eq!(display_token_type("bearer"), "Bearer");
        assert_eq!(display_token_type("BEARER"), "Bearer");
        assert_eq!(display_token_type("DPoP"), "DPoP");
    }
}
