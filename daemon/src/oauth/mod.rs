//! OAuth: discovery, grants, and the one HTTP client they share. Every
//! grant answers with a [`Granted`]: what the provider's token response said.

pub mod client_auth;
pub mod discovery;
pub mod exchange;
pub mod grant;
pub mod http;
pub mod oauth1;
pub mod oauth1_sign;
pub mod subject;
pub mod text;
pub mod user;

use crate::error::ApiError;
use latchkey_client::protocol::ErrorKind;
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
    /// The response's values, checked: the access token and its type end
    /// up in HTTP headers (`latchkey header`, apps), the scope in messages.
    /// `Err` says which field was unusable and why, never its value.
    fn from_response<R>(response: &R, id_token: Option<String>) -> Result<Granted, String>
    where
        R: TokenResponse,
        R::TokenType: AsRef<str>,
    {
        let token_type = response.token_type().as_ref();
        check_token_type(token_type)?;
        let access_token = response.access_token().secret();
        check_access_token(access_token)?;
        let scope = response
            .scopes()
            .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "));
        if let Some(scope) = &scope {
            check_scope(scope)?;
        }
        Ok(Granted {
            access: Access {
                access_token: SecretString::from(access_token.as_str()),
                token_type: display_token_type(token_type),
                expires_in: response.expires_in().map(|d| d.as_secs()),
                scope,
            },
            refresh_token: response
                .refresh_token()
                .map(|r| SecretString::from(r.secret().as_str())),
            id_token,
        })
    }
}

/// A DPoP credential's tokens must come bound to its key (RFC 9449 §5,
/// `token_type: DPoP`): a Bearer token would work without the vault.
pub(crate) fn check_bound(
    provider: &str,
    credential: &crate::vault::Credential,
    granted: Granted,
) -> Result<Granted, ApiError> {
    if credential.config.dpop && !granted.access.token_type.eq_ignore_ascii_case("dpop") {
        return Err(ApiError::new(
            ErrorKind::ProviderError,
            format!(
                "provider '{provider}' issued a {} token to credential '{}', which asks for DPoP-bound tokens: enable DPoP for the client at the provider, or add the credential again without --dpop",
                granted.access.token_type, credential.config.name
            ),
        ));
    }
    Ok(granted)
}

/// The error of a token response whose values latchkey refuses to use.
pub(crate) fn unusable(provider: &str, credential: &str, why: String) -> ApiError {
    ApiError::new(
        ErrorKind::ProviderError,
        format!("provider '{provider}' (credential '{credential}') sent a token response latchkey does not use: {why}; ask the provider's administrators to fix it"),
    )
}

/// RFC 6750/7235: the type is the auth scheme of the `Authorization`
/// header, an RFC 7230 `token` (`1*tchar`), kept in the case it was sent.
fn check_token_type(token_type: &str) -> Result<(), String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if token_type.is_empty() {
        Err("token_type is empty".into())
    } else if !token_type.chars().all(tchar) {
        Err("token_type has a character outside RFC 7230's token set (letters, digits and !#$%&'*+-.^_`|~)".into())
    } else {
        Ok(())
    }
}

/// RFC 6749 Appendix A.12: `access-token = 1*VSCHAR` (%x20-7E). A line
/// break in it would inject headers into `curl -H "$(latchkey header x)"`.
fn check_access_token(access_token: &str) -> Result<(), String> {
    if access_token.is_empty() {
        Err("access_token is empty".into())
    } else if !access_token.chars().all(|c| (' '..='~').contains(&c)) {
        Err("access_token has a character outside RFC 6749's VSCHAR set (printable ASCII), such as a line break".into())
    } else {
        Ok(())
    }
}

/// RFC 6749 §3.3: scope tokens are `1*( %x21 / %x23-5B / %x5D-7E )`.
fn check_scope(scope: &str) -> Result<(), String> {
    let nqchar = |c: char| c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c);
    if scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .all(|s| s.chars().all(nqchar))
    {
        Ok(())
    } else {
        Err("scope has a character outside RFC 6749 §3.3's scope-token set".into())
    }
}

/// `bearer` and `dpop` in any case (the oauth2 crate lowercases what it
/// does not know) are shown as RFC 6750 and RFC 9449 spell them in headers.
fn display_token_type(raw: &str) -> String {
    if raw.eq_ignore_ascii_case("bearer") {
        "Bearer".into()
    } else if raw.eq_ignore_ascii_case("dpop") {
        "DPoP".into()
    } else {
        raw.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_types_are_rfc_7230_tokens_kept_as_sent() {
        for ok in ["Bearer", "bearer", "DPoP", "N_A", "mac", "x-custom.1"] {
            assert_eq!(check_token_type(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Bearer\r\nX-Injected: 1",
            "Bearer x",
            "a:b",
            "é",
            "a\u{1b}",
        ] {
            let why = check_token_type(bad).unwrap_err();
            assert!(why.starts_with("token_type "), "{why}");
            assert!(!why.contains("Injected"), "never echoes the value: {why}");
        }
    }

    #[test]
    fn access_tokens_are_vschar() {
        for ok in ["abc", "a.b-c_d~e+f/g=", "with space", "!#$%&'()*"] {
            assert_eq!(check_access_token(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "tok\r\nX-Injected: 1",
            "tok\n",
            "t\u{7f}",
            "tök",
            "\u{1b}[2J",
        ] {
            let why = check_access_token(bad).unwrap_err();
            assert!(why.starts_with("access_token "), "{why}");
            assert!(!why.contains("Injected"), "never echoes the value: {why}");
        }
    }

    #[test]
    fn scopes_are_scope_tokens() {
        assert_eq!(check_scope("read write https://x.example/a"), Ok(()));
        assert!(check_scope("read \u{1b}[31m").is_err());
        assert!(check_scope("a\"b").is_err());
    }

    #[test]
    fn token_type_spelling() {
        assert_eq!(display_token_type("bearer"), "Bearer");
        assert_eq!(display_token_type("BEARER"), "Bearer");
        assert_eq!(display_token_type("DPoP"), "DPoP");
        assert_eq!(display_token_type("dpop"), "DPoP");
        assert_eq!(display_token_type("N_A"), "N_A");
    }
}
