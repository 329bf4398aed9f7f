//! The OAuth 1.0a three-legged flow (RFC 5849 §2): temporary credentials
//! with the loopback `oauth_callback`, the resource owner authorization
//! URL, and the token credentials for the verifier. Requests go through
//! `http.rs`; signing is `oauth1_sign.rs`.

use super::http::{Http, HttpError};
use super::oauth1_sign::{authorize, Keys, Request};
use super::text::provider_text;
use crate::error::ApiError;
use latchkey_client::protocol::{ErrorKind, Oauth1Endpoints};
use secrecy::{ExposeSecret, SecretString};
use url::Url;
use zeroize::Zeroizing;

/// A token and its shared secret: temporary credentials (§2.1) or token
/// credentials (§2.3).
pub struct TokenCredentials {
    pub token: SecretString,
    pub secret: SecretString,
}

/// §2.1: the temporary credentials, for a login whose callback is
/// `callback` (the loopback listener). The provider must confirm the
/// callback (`oauth_callback_confirmed=true`, which 1.0a added).
pub async fn temporary_credentials(
    http: &Http,
    provider: &str,
    endpoints: &Oauth1Endpoints,
    keys: &Keys<'_>,
    callback: &Url,
) -> Result<TokenCredentials, ApiError> {
    let url = checked(&endpoints.temporary_credentials, provider)?;
    let header = authorize(
        keys,
        &Request {
            method: "POST",
            url: url.as_str(),
            form: &[],
            callback: Some(callback.as_str()),
            verifier: None,
        },
    )?;
    let body = http
        .post_oauth1(&url, &header)
        .await
        .map_err(|e| refused(provider, "temporary credential", &e))?;
    let (credentials, confirmed) = parse(&body, provider, "temporary credential")?;
    if confirmed.as_deref() != Some("true") {
        return Err(ApiError::new(
            ErrorKind::ProviderError,
            format!("provider '{provider}' did not confirm the callback (oauth_callback_confirmed) of the temporary credential request: it does not speak OAuth 1.0a (RFC 5849), and 1.0 without it is open to session fixation"),
        ));
    }
    Ok(credentials)
}

/// §2.2: where the person authorizes the temporary credentials.
pub fn authorization_url(
    endpoints: &Oauth1Endpoints,
    provider: &str,
    temporary: &TokenCredentials,
) -> Result<Url, ApiError> {
    let mut url = checked(&endpoints.authorization, provider)?;
    url.query_pairs_mut()
        .append_pair("oauth_token", temporary.token.expose_secret());
    Ok(url)
}

/// §2.3: the token credentials for the verifier the callback carried,
/// signed with the temporary credentials.
pub async fn token_credentials(
    http: &Http,
    provider: &str,
    endpoints: &Oauth1Endpoints,
    keys: &Keys<'_>,
    verifier: &str,
) -> Result<TokenCredentials, ApiError> {
    let url = checked(&endpoints.token, provider)?;
    let header = authorize(
        keys,
        &Request {
            method: "POST",
            url: url.as_str(),
            form: &[],
            callback: None,
            verifier: Some(verifier),
        },
    )?;
    let body = http
        .post_oauth1(&url, &header)
        .await
        .map_err(|e| refused(provider, "token", &e))?;
    Ok(parse(&body, provider, "token")?.0)
}

fn checked(raw: &str, provider: &str) -> Result<Url, ApiError> {
    super::http::check_url("OAuth 1.0a endpoint", raw).map_err(|e| {
        ApiError::new(
            ErrorKind::VaultCorrupt,
            format!("provider '{provider}': {e}; remove the provider and add it again"),
        )
    })
}

/// The credentials of a form-encoded answer (§2.1, §2.3), and its
/// `oauth_callback_confirmed`.
fn parse(
    body: &[u8],
    provider: &str,
    what: &str,
) -> Result<(TokenCredentials, Option<String>), ApiError> {
    let mut token = None;
    let mut secret = None;
    let mut confirmed = None;
    for (name, value) in url::form_urlencoded::parse(body) {
        let value = Zeroizing::new(value.into_owned());
        match name.as_ref() {
            "oauth_token" => token = Some(SecretString::from(value.as_str())),
            "oauth_token_secret" => secret = Some(SecretString::from(value.as_str())),
            "oauth_callback_confirmed" => confirmed = Some(value.to_string()),
            _ => {}
        }
    }
    match (token, secret) {
        (Some(token), Some(secret))
            if !token.expose_secret().is_empty() && !secret.expose_secret().is_empty() =>
        {
            Ok((TokenCredentials { token, secret }, confirmed))
        }
        _ => Err(ApiError::new(
            ErrorKind::ProviderError,
            format!("provider '{provider}' answered the {what} request without oauth_token and oauth_token_secret; check its OAuth 1.0a endpoints with `latchkey provider show {provider}`"),
        )),
    }
}

fn refused(provider: &str, what: &str, e: &HttpError) -> ApiError {
    let (kind, retry_after) = match e {
        HttpError::Status {
            status: 429,
            retry_after,
        } => (ErrorKind::RateLimited, *retry_after),
        HttpError::Status { status, .. } if *status < 500 => (ErrorKind::ProviderError, None),
        HttpError::Request(_) => (ErrorKind::ProviderError, None),
        _ => (ErrorKind::ProviderUnavailable, None),
    };
    let fix = if kind == ErrorKind::ProviderError {
        "check the consumer key and secret (or RSA key) registered with the provider, and its endpoints with `latchkey provider show`"
    } else {
        "try again later"
    };
    ApiError::new(
        kind,
        format!(
            "provider '{provider}' refused the {what} request ({}); {fix}",
            provider_text(&e.to_string(), &[])
        ),
    )
    .with_retry_after(retry_after)
}
