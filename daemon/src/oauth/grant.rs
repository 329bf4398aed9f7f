//! The client credentials grant (RFC 6749 §4.4, `client_secret_basic` or
//! `client_secret_post`) through the `oauth2` crate, and how a failed token
//! request of any grant maps to the stable error kinds.

use super::client_auth::{ClientAuth, Signed, Via};
use super::http::{Http, HttpError};
use super::text::provider_text;
use super::Granted;
use crate::error::ApiError;
use crate::vault::{Credential, Provider};
use latchkey_client::protocol::{AuthMethod, ErrorKind};
use oauth2::basic::{BasicClient, BasicErrorResponse, BasicErrorResponseType};
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenUrl};
use secrecy::{ExposeSecret, SecretString};

/// How the oauth2 crate authenticates the client: `client_secret_post` and
/// `private_key_jwt` (whose assertion [`Signed`] adds) put the client id in
/// the body; the rest is HTTP Basic (with no secret for a public client).
pub(crate) fn auth_type(auth: AuthMethod) -> AuthType {
    match auth {
        AuthMethod::ClientSecretPost | AuthMethod::PrivateKeyJwt => AuthType::RequestBody,
        AuthMethod::ClientSecretBasic | AuthMethod::None => AuthType::BasicAuth,
    }
}

/// Client credentials grant: one POST to the token endpoint.
pub async fn client_credentials(
    http: &Http,
    provider: &Provider,
    credential: &Credential,
    auth: ClientAuth,
    scopes: &[String],
) -> Result<Granted, ApiError> {
    let ClientAuth {
        secret: client_secret,
        proofs,
    } = auth;
    let name = &credential.config.name;
    let token_url = TokenUrl::new(token_endpoint(provider)?.to_owned())
        .map_err(|e| ApiError::internal(format!("stored token endpoint is invalid: {e}")))?;
    let mut client = BasicClient::new(ClientId::new(credential.config.client_id.clone()))
        .set_token_uri(token_url)
        .set_auth_type(auth_type(credential.config.auth));
    if let Some(secret) = &client_secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
    }
    let result = client
        .exchange_client_credentials()
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .request_async(&Signed {
            inner: Via::Http(http),
            proofs: &proofs,
        })
        .await;
    match result {
        Ok(response) => Granted::from_response(&response, None)
            .map_err(|why| super::unusable(&provider.config.name, name, why))
            .and_then(|g| super::check_bound(&provider.config.name, credential, g)),
        Err(e) => Err(classify(
            &provider.config.name,
            name,
            e,
            &client_secret.iter().collect::<Vec<_>>(),
        )),
    }
}

/// The provider's token endpoint, or the error that names the fix.
pub(crate) fn token_endpoint(provider: &Provider) -> Result<&str, ApiError> {
    provider
        .config
        .endpoints
        .token_endpoint
        .as_deref()
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "provider '{}' has no token endpoint: add one with `latchkey provider add`",
                    provider.config.name
                ),
            )
        })
}

/// What callers are told about a failed token request: the kind says
/// whether it passes (back off and retry) or needs the user. `sent` holds
/// every secret the request carried: provider text quoted in the message
/// goes through [`provider_text`], which scrubs them.
pub(crate) fn classify(
    provider: &str,
    credential: &str,
    e: RequestTokenError<HttpError, BasicErrorResponse>,
    sent: &[&SecretString],
) -> ApiError {
    let at = format!("provider '{provider}' (credential '{credential}')");
    match e {
        RequestTokenError::ServerResponse(response) => {
            let code = provider_text(response.error().as_ref(), sent);
            let description = response
                .error_description()
                .map(|d| format!(": {}", provider_text(d, sent)))
                .unwrap_or_default();
            let client_rejected = *response.error() == BasicErrorResponseType::InvalidClient;
            let (kind, fix) = match response.error() {
                BasicErrorResponseType::InvalidClient | BasicErrorResponseType::UnauthorizedClient => (
                    ErrorKind::ProviderError,
                    format!("check the client id and secret; to replace the secret run `latchkey credential set-secret {credential}`"),
                ),
                BasicErrorResponseType::InvalidGrant => (
                    ErrorKind::ReauthRequired,
                    format!("run `latchkey login {credential}`"),
                ),
                BasicErrorResponseType::InvalidScope => (
                    ErrorKind::Forbidden,
                    "ask only for scopes the client is allowed at the provider".to_owned(),
                ),
                BasicErrorResponseType::Extension(ext) if ext == "temporarily_unavailable" || ext == "slow_down" => (
                    ErrorKind::ProviderUnavailable,
                    "the provider asked to retry later; latchkey backs off".to_owned(),
                ),
                _ => (
                    ErrorKind::ProviderError,
                    "check the credential's configuration at the provider".to_owned(),
                ),
            };
            let error = ApiError::new(kind, format!("{at} refused the token request ({code}{description}); {fix}"));
            if client_rejected {
                error.client_rejected()
            } else {
                error
            }
        }
        RequestTokenError::Request(http) => {
            let (kind, retry_after) = match &http {
                HttpError::Status { status: 429, retry_after } => (ErrorKind::RateLimited, *retry_after),
                HttpError::Status { retry_after, .. } => (ErrorKind::ProviderUnavailable, *retry_after),
                HttpError::Request(_) => (ErrorKind::ProviderError, None),
                _ => (ErrorKind::ProviderUnavailable, None),
            };
            let advice = if http.is_transient() {
                "latchkey backs off and retries; try again later"
            } else {
                "check the provider's endpoints with `latchkey provider show`"
            };
            let unauthorized = matches!(http, HttpError::Status { status: 401, .. });
            let error = ApiError::new(kind, format!("token request to {at} failed: {http}; {advice}"))
                .with_retry_after(retry_after);
            if unauthorized {
                error.client_rejected()
            } else {
                error
            }
        }
        // Never quote the body: a half-valid token response may hold a token.
        RequestTokenError::Parse(e, _body) => ApiError::new(
            ErrorKind::ProviderUnavailable,
            format!("{at} sent a token response latchkey cannot read ({}); latchkey backs off and retries", provider_text(&e.path().to_string(), sent)),
        ),
        RequestTokenError::Other(what) => ApiError::new(
            ErrorKind::ProviderUnavailable,
            format!("{at} sent an unusable token response ({}); latchkey backs off and retries", provider_text(&what, sent)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_failures_map_to_kinds() {
        let f = classify(
            "p",
            "c",
            RequestTokenError::Request(HttpError::Status {
                status: 429,
                retry_after: Some(9),
            }),
            &[],
        );
        assert_eq!(f.kind, ErrorKind::RateLimited);
        assert_eq!(f.retry_after, Some(9));
        let f = classify(
            "p",
            "c",
            RequestTokenError::Request(HttpError::Status {
                status: 503,
                retry_after: None,
            }),
            &[],
        );
        assert_eq!(f.kind, ErrorKind::ProviderUnavailable);
        let f = classify(
            "p",
            "c",
            RequestTokenError::Other("server returned empty error response".into()),
            &[],
        );
        assert!(f.message.contains("provider 'p'"));
    }
}
