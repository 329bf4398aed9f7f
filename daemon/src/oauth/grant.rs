//! The client credentials grant (RFC 6749 §4.4, `client_secret_basic` or
//! `client_secret_post`) through the `oauth2` crate, and how a failed token
//! request of any grant maps to the stable error kinds.

use super::http::{Http, HttpError};
use super::Granted;
use crate::error::{quoted, ApiError};
use crate::vault::{Credential, Provider};
use latchkey_client::protocol::{AuthMethod, ErrorKind};
use oauth2::basic::{BasicClient, BasicErrorResponse, BasicErrorResponseType};
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenUrl};
use secrecy::{ExposeSecret, SecretString};

/// Client credentials grant: one POST to the token endpoint.
pub async fn client_credentials(
    http: &Http,
    provider: &Provider,
    credential: &Credential,
    client_secret: Option<SecretString>,
    scopes: &[String],
) -> Result<Granted, ApiError> {
    let name = &credential.config.name;
    let token_url = provider
        .config
        .endpoints
        .token_endpoint
        .clone()
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "provider '{}' has no token endpoint: add one with `latchkey provider add`",
                    provider.config.name
                ),
            )
        })?;
    let token_url = TokenUrl::new(token_url)
        .map_err(|e| ApiError::internal(format!("stored token endpoint is invalid: {e}")))?;
    let mut client = BasicClient::new(ClientId::new(credential.config.client_id.clone()))
        .set_token_uri(token_url)
        .set_auth_type(match credential.config.auth {
            AuthMethod::ClientSecretPost => AuthType::RequestBody,
            _ => AuthType::BasicAuth,
        });
    let secret_text = client_secret.as_ref().map(|s| s.expose_secret().to_owned());
    if let Some(secret) = &client_secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
    }
    let result = client
        .exchange_client_credentials()
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .request_async(http)
        .await;
    match result {
        Ok(response) => Ok(Granted::from_response(&response, None)),
        Err(e) => Err(classify(
            &provider.config.name,
            name,
            e,
            secret_text.as_deref(),
        )),
    }
}

/// What callers are told about a failed token request: the kind says
/// whether it passes (back off and retry) or needs the user.
pub(crate) fn classify(
    provider: &str,
    credential: &str,
    e: RequestTokenError<HttpError, BasicErrorResponse>,
    secret: Option<&str>,
) -> ApiError {
    let at = format!("provider '{provider}' (credential '{credential}')");
    match e {
        RequestTokenError::ServerResponse(response) => {
            let code = scrub(response.error().as_ref(), secret);
            let description = response
                .error_description()
                .map(|d| format!(": {}", scrub(d, secret)))
                .unwrap_or_default();
            let (kind, fix) = match response.error() {
                BasicErrorResponseType::InvalidClient | BasicErrorResponseType::UnauthorizedClient => (
                    ErrorKind::ProviderError,
                    format!("check the client id and secret; to replace them run `latchkey credential remove {credential}` and add it again"),
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
            ApiError::new(kind, format!("{at} refused the token request ({code}{description}); {fix}"))
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
            ApiError::new(kind, format!("token request to {at} failed: {http}; {advice}"))
                .with_retry_after(retry_after)
        }
        // Never quote the body: a half-valid token response may hold a token.
        RequestTokenError::Parse(e, _body) => ApiError::new(
            ErrorKind::ProviderUnavailable,
            format!("{at} sent a token response latchkey cannot read ({}); latchkey backs off and retries", scrub(&e.path().to_string(), secret)),
        ),
        RequestTokenError::Other(what) => ApiError::new(
            ErrorKind::ProviderUnavailable,
            format!("{at} sent an unusable token response ({}); latchkey backs off and retries", scrub(&what, secret)),
        ),
    }
}

/// Providers echo odd things into `error_description`; make sure our own
/// secret is never one of them, and keep it short.
pub(crate) fn scrub(text: &str, secret: Option<&str>) -> String {
    let mut text = quoted(text);
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[redacted]");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_never_carry_the_secret() {
        assert_eq!(
            scrub("bad secret s3cr3t given", Some("s3cr3t")),
            "bad secret [redacted] given"
        );
        assert_eq!(scrub("a\nb", None), "ab");
        assert_eq!(scrub(&"x".repeat(500), None).len(), 200);
    }

    #[test]
    fn http_failures_map_to_kinds() {
        let f = classify(
            "p",
            "c",
            RequestTokenError::Request(HttpError::Status {
                status: 429,
                retry_after: Some(9),
            }),
            None,
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
            None,
        );
        assert_eq!(f.kind, ErrorKind::ProviderUnavailable);
        let f = classify(
            "p",
            "c",
            RequestTokenError::Other("server returned empty error response".into()),
            None,
        );
        assert!(f.message.contains("provider 'p'"));
    }
}
