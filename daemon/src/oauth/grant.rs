//! Token requests through the `oauth2` crate, and how their failures map to
//! the stable error kinds. This grant is client credentials
//! (RFC 6749 §4.4) with `client_secret_basic` or `client_secret_post`.

use super::http::{Http, HttpError};
use crate::error::ApiError;
use crate::vault::{Credential, Provider};
use latchkey_client::protocol::{AuthMethod, ErrorKind};
use oauth2::basic::{BasicClient, BasicErrorResponse, BasicErrorResponseType};
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl};
use secrecy::{ExposeSecret, SecretString};

/// What a successful token request produced.
pub struct Granted {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_in: Option<u64>,
    /// Space-separated; `None` when the provider did not say (RFC 6749 §5.1:
    /// then it is the scope requested).
    pub scope: Option<String>,
}

/// A failed token request: what callers are told, and whether it is the
/// provider's or network's passing trouble (back off and retry later).
pub struct GrantFailure {
    pub error: ApiError,
    pub transient: bool,
}

/// Client credentials grant: one POST to the token endpoint.
pub async fn client_credentials(
    http: &Http,
    provider: &Provider,
    credential: &Credential,
    client_secret: Option<SecretString>,
    scopes: &[String],
) -> Result<Granted, GrantFailure> {
    let name = &credential.config.name;
    let token_url = provider
        .config
        .endpoints
        .token_endpoint
        .clone()
        .ok_or_else(|| GrantFailure {
            error: ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "provider '{}' has no token endpoint: add one with `latchkey provider add`",
                    provider.config.name
                ),
            ),
            transient: false,
        })?;
    let token_url = TokenUrl::new(token_url).map_err(|e| GrantFailure {
        error: ApiError::internal(format!("stored token endpoint is invalid: {e}")),
        transient: false,
    })?;
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
        Ok(response) => Ok(Granted {
            access_token: SecretString::from(response.access_token().secret().as_str()),
            token_type: display_token_type(response.token_type().as_ref()),
            expires_in: response.expires_in().map(|d| d.as_secs()),
            scope: response
                .scopes()
                .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
        }),
        Err(e) => Err(classify(
            &provider.config.name,
            name,
            e,
            secret_text.as_deref(),
        )),
    }
}

/// `bearer` in any case is shown as RFC 6750 spells it in headers.
pub(crate) fn display_token_type(raw: &str) -> String {
    if raw.eq_ignore_ascii_case("bearer") {
        "Bearer".into()
    } else {
        raw.to_owned()
    }
}

pub(crate) fn classify(
    provider: &str,
    credential: &str,
    e: RequestTokenError<HttpError, BasicErrorResponse>,
    secret: Option<&str>,
) -> GrantFailure {
    let at = format!("provider '{provider}' (credential '{credential}')");
    match e {
        RequestTokenError::ServerResponse(response) => {
            let code = response.error().as_ref().to_owned();
            let description = response
                .error_description()
                .map(|d| format!(": {}", scrub(d, secret)))
                .unwrap_or_default();
            let (kind, transient, fix) = match response.error() {
                BasicErrorResponseType::InvalidClient | BasicErrorResponseType::UnauthorizedClient => (
                    ErrorKind::ProviderError,
                    false,
                    format!("check the client id and secret; to replace them run `latchkey credential remove {credential}` and add it again"),
                ),
                BasicErrorResponseType::InvalidGrant => (
                    ErrorKind::ReauthRequired,
                    false,
                    format!("run `latchkey login {credential}`"),
                ),
                BasicErrorResponseType::InvalidScope => (
                    ErrorKind::Forbidden,
                    false,
                    "ask only for scopes the client is allowed at the provider".to_owned(),
                ),
                BasicErrorResponseType::Extension(ext) if ext == "temporarily_unavailable" || ext == "slow_down" => (
                    ErrorKind::ProviderUnavailable,
                    true,
                    "the provider asked to retry later; latchkey backs off".to_owned(),
                ),
                _ => (
                    ErrorKind::ProviderError,
                    false,
                    "check the credential's configuration at the provider".to_owned(),
                ),
            };
            GrantFailure {
                error: ApiError::new(kind, format!("{at} refused the token request ({code}{description}); {fix}")),
                transient,
            }
        }
        RequestTokenError::Request(http) => {
            let transient = http.is_transient();
            let (kind, retry_after) = match &http {
                HttpError::Status { status: 429, retry_after } => (ErrorKind::RateLimited, *retry_after),
                HttpError::Status { retry_after, .. } => (ErrorKind::ProviderUnavailable, *retry_after),
                HttpError::Request(_) => (ErrorKind::ProviderError, None),
                _ => (ErrorKind::ProviderUnavailable, None),
            };
            let advice = if transient {
                "latchkey backs off and retries; try again later"
            } else {
                "check the provider's endpoints with `latchkey provider show`"
            };
            GrantFailure {
                error: ApiError::new(kind, format!("token request to {at} failed: {http}; {advice}"))
                    .with_retry_after(retry_after),
                transient,
            }
        }
        // Never quote the body: a half-valid token response may hold a token.
        RequestTokenError::Parse(e, _body) => GrantFailure {
            error: ApiError::new(
                ErrorKind::ProviderUnavailable,
                format!("{at} sent a token response latchkey cannot read ({}); latchkey backs off and retries", e.path()),
            ),
            transient: true,
        },
        RequestTokenError::Other(what) => GrantFailure {
            error: ApiError::new(
                ErrorKind::ProviderUnavailable,
                format!("{at} sent an unusable token response ({what}); latchkey backs off and retries"),
            ),
            transient: true,
        },
    }
}

/// Providers echo odd things into `error_description`; make sure our own
/// secret is never one of them, and keep it short.
fn scrub(text: &str, secret: Option<&str>) -> String {
    let mut text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[redacted]");
    }
    text
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
        assert_eq!(f.error.kind, ErrorKind::RateLimited);
        assert_eq!(f.error.retry_after, Some(9));
        assert!(f.transient);
        let f = classify(
            "p",
            "c",
            RequestTokenError::Request(HttpError::Status {
                status: 503,
                retry_after: None,
            }),
            None,
        );
        assert_eq!(f.error.kind, ErrorKind::ProviderUnavailable);
        assert!(f.transient);
        let f = classify(
            "p",
            "c",
            RequestTokenError::Other("server returned empty error response".into()),
            None,
        );
        assert!(f.transient);
        assert!(f.error.message.contains("provider 'p'"));
    }
}
