//! User grants through the `oauth2` crate: authorization code with PKCE
//! (RFC 6749 §4.1, RFC 7636, S256 always), device authorization
//! (RFC 8628), refresh (RFC 6749 §6, with scope down-scoping), revocation
//! (RFC 7009); and ID-token validation through `openidconnect` with the
//! signature algorithms pinned to asymmetric ones (never `none`).

use super::grant::{classify, scrub};
use super::http::{Http, HttpError, PlainLoopback};
use super::Granted;
use crate::error::ApiError;
use crate::vault::{Credential, Provider};
use latchkey_client::protocol::{AuthMethod, ErrorKind};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, DeviceCodeErrorResponse, DeviceCodeErrorResponseType, EndpointMaybeSet,
    EndpointNotSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RefreshToken, RequestTokenError, RevocableToken, RevocationUrl, Scope,
    StandardDeviceAuthorizationResponse, StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `id_token` member of an OIDC token response (absent in plain OAuth).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type TokenResp = StandardTokenResponse<IdTokenField, BasicTokenType>;

/// An oauth2 client with whichever endpoints the provider has.
pub type UserClient = Client<
    BasicErrorResponse,
    TokenResp,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointMaybeSet,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

fn granted(response: TokenResp) -> Granted {
    let id_token = response.extra_fields().id_token.clone();
    Granted::from_response(&response, id_token)
}

fn endpoint<T>(
    what: &str,
    value: &Option<String>,
    make: impl FnOnce(String) -> Result<T, url::ParseError>,
) -> Result<Option<T>, ApiError> {
    value
        .clone()
        .map(make)
        .transpose()
        .map_err(|e| ApiError::internal(format!("the stored {what} is invalid: {e}")))
}

/// Builds the oauth2 client of one credential.
pub fn client(
    provider: &Provider,
    credential: &Credential,
    secret: Option<&SecretString>,
) -> Result<UserClient, ApiError> {
    let e = &provider.config.endpoints;
    let mut client = Client::new(ClientId::new(credential.config.client_id.clone()))
        .set_auth_uri_option(endpoint(
            "authorization endpoint",
            &e.authorization_endpoint,
            AuthUrl::new,
        )?)
        .set_device_authorization_url_option(endpoint(
            "device authorization endpoint",
            &e.device_authorization_endpoint,
            DeviceAuthorizationUrl::new,
        )?)
        .set_revocation_url_option(endpoint(
            "revocation endpoint",
            &e.revocation_endpoint,
            |u| RevocationUrl::new(loopback_as_https(u)),
        )?)
        .set_token_uri_option(endpoint(
            "token endpoint",
            &e.token_endpoint,
            TokenUrl::new,
        )?)
        .set_auth_type(match credential.config.auth {
            AuthMethod::ClientSecretPost => AuthType::RequestBody,
            _ => AuthType::BasicAuth,
        });
    if let Some(secret) = secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
    }
    Ok(client)
}

/// See [`PlainLoopback`]: oauth2 insists on https for revocation; for a
/// plain-http loopback endpoint it is given the https spelling, and
/// `revoke` sends it over plain http again.
fn loopback_as_https(url: String) -> String {
    match url::Url::parse(&url) {
        Ok(mut u) if u.scheme() == "http" && super::http::is_loopback(&u) => {
            let _ = u.set_scheme("https");
            u.to_string()
        }
        _ => url,
    }
}

fn missing(provider: &Provider, what: &str, flag: &str) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidRequest,
        format!(
            "provider '{}' has no {what}: add the provider again with {flag} (or an issuer whose metadata lists it)",
            provider.config.name
        ),
    )
}

/// A prepared browser login: the URL to open and what must be kept to
/// finish it.
pub struct AuthRequest {
    pub url: url::Url,
    pub state: CsrfToken,
    pub pkce_verifier: PkceCodeVerifier,
    pub nonce: Option<String>,
}

/// The authorization URL with `state`, PKCE S256 and, for OIDC, a nonce.
pub fn authorization_request(
    provider: &Provider,
    client: &UserClient,
    scopes: &[String],
    redirect_uri: &RedirectUrl,
) -> Result<AuthRequest, ApiError> {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let nonce = scopes
        .iter()
        .any(|s| s == "openid")
        .then(|| CsrfToken::new_random().secret().clone());
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .map_err(|_| {
            missing(
                provider,
                "authorization endpoint",
                "--authorization-endpoint",
            )
        })?
        .set_redirect_uri(std::borrow::Cow::Borrowed(redirect_uri))
        .set_pkce_challenge(challenge)
        .add_scopes(scopes.iter().cloned().map(Scope::new));
    if let Some(nonce) = &nonce {
        request = request.add_extra_param("nonce", nonce.clone());
    }
    let (url, state) = request.url();
    Ok(AuthRequest {
        url,
        state,
        pkce_verifier: verifier,
        nonce,
    })
}

/// Exchanges the authorization code, repeating the exact redirect URI.
pub async fn exchange_code(
    http: &Http,
    provider: &Provider,
    credential: &Credential,
    client: &UserClient,
    code: String,
    verifier: PkceCodeVerifier,
    redirect_uri: &RedirectUrl,
) -> Result<Granted, ApiError> {
    let request = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|_| missing(provider, "token endpoint", "--token-endpoint"))?
        .set_pkce_verifier(verifier)
        .set_redirect_uri(std::borrow::Cow::Borrowed(redirect_uri));
    request
        .request_async(http)
        .await
        .map(granted)
        .map_err(|e| classify(&provider.config.name, &credential.config.name, e, None))
}

/// Starts a device login (RFC 8628 §3.1).
pub async fn device_authorize(
    http: &Http,
    provider: &Provider,
    credential: &Credential,
    client: &UserClient,
    scopes: &[String],
) -> Result<StandardDeviceAuthorizationResponse, ApiError> {
    let request = client
        .exchange_device_code()
        .map_err(|_| {
            missing(
                provider,
                "device authorization endpoint",
                "--device-authorization-endpoint",
            )
        })?
        .add_scopes(scopes.iter().cloned().map(Scope::new));
    request.request_async(http).await.map_err(|e| match e {
        RequestTokenError::ServerResponse(r) => ApiError::new(
            ErrorKind::ProviderError,
            format!(
                "provider '{}' refused the device login of credential '{}' ({}{})",
                provider.config.name,
                credential.config.name,
                scrub(r.error().as_ref(), None),
                r.error_description()
                    .map(|d| format!(": {}", scrub(d, None)))
                    .unwrap_or_default()
            ),
        ),
        RequestTokenError::Request(h) => http_failure(provider, credential, h),
        other => ApiError::new(
            ErrorKind::ProviderError,
            format!(
                "provider '{}' sent an unusable device authorization response: {}",
                provider.config.name,
                short(&other)
            ),
        ),
    })
}

/// Polls the token endpoint until the user approves, denies, or the code
/// expires. The oauth2 crate honours `interval`, `slow_down` and
/// `authorization_pending`; `access_denied` and `expired_token` end it.
pub async fn device_poll(
    http: &Http,
    provider: &Provider,
    credential: &Credential,
    client: &UserClient,
    details: &StandardDeviceAuthorizationResponse,
    timeout: Duration,
) -> Result<Granted, ApiError> {
    let request = client
        .exchange_device_access_token(details)
        .map_err(|_| missing(provider, "token endpoint", "--token-endpoint"))?;
    let name = &credential.config.name;
    request
        .request_async(http, tokio::time::sleep, Some(timeout))
        .await
        .map(granted)
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => device_error(&r, name),
            RequestTokenError::Request(h) => http_failure(provider, credential, h),
            other => ApiError::new(
                ErrorKind::ProviderError,
                format!(
                    "provider '{}' sent an unusable token response during the device login: {}",
                    provider.config.name,
                    short(&other)
                ),
            ),
        })
}

fn device_error(r: &DeviceCodeErrorResponse, name: &str) -> ApiError {
    match r.error() {
        DeviceCodeErrorResponseType::AccessDenied => ApiError::new(
            ErrorKind::Forbidden,
            format!("the login of credential '{name}' was denied at the provider; run `latchkey login {name} --device` to try again"),
        ),
        DeviceCodeErrorResponseType::ExpiredToken => ApiError::new(
            ErrorKind::ReauthRequired,
            format!("the device code expired before the login of credential '{name}' was approved; run `latchkey login {name} --device` again"),
        ),
        other => ApiError::new(
            ErrorKind::ProviderError,
            format!(
                "the provider ended the device login of credential '{name}' ({}{})",
                scrub(other.as_ref(), None),
                r.error_description()
                    .map(|d| format!(": {}", scrub(d, None)))
                    .unwrap_or_default()
            ),
        ),
    }
}

/// Refreshes (RFC 6749 §6). `scopes`, when given, asks for a down-scoped token.
pub async fn refresh(
    http: &Http,
    provider: &Provider,
    credential: &Credential,
    client: &UserClient,
    refresh_token: &SecretString,
    scopes: Option<&[String]>,
) -> Result<Granted, ApiError> {
    let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
    let mut request = client
        .exchange_refresh_token(&token)
        .map_err(|_| missing(provider, "token endpoint", "--token-endpoint"))?;
    if let Some(scopes) = scopes {
        request = request.add_scopes(scopes.iter().cloned().map(Scope::new));
    }
    request.request_async(http).await.map(granted).map_err(|e| {
        classify(
            &provider.config.name,
            &credential.config.name,
            e,
            Some(refresh_token.expose_secret()),
        )
    })
}

/// Revokes one token at the provider (RFC 7009).
pub async fn revoke(
    http: &Http,
    provider: &Provider,
    client: &UserClient,
    token: StandardRevocableToken,
) -> Result<(), ApiError> {
    let secret = token.secret().to_owned();
    let request = client.revoke_token(token).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("cannot revoke at provider '{}': {e}", provider.config.name),
        )
    })?;
    let plain_loopback = PlainLoopback(http.clone());
    request.request_async(&plain_loopback).await.map_err(|e| {
        let detail = match &e {
            RequestTokenError::ServerResponse(r) => scrub(r.error().as_ref(), Some(&secret)),
            RequestTokenError::Request(h) => h.to_string(),
            other => short(other),
        };
        ApiError::new(
            ErrorKind::ProviderUnavailable,
            format!(
                "provider '{}' did not confirm the revocation ({detail})",
                provider.config.name
            ),
        )
    })
}

/// Validates an ID token: signature against the provider's JWKS with an
/// asymmetric algorithm, issuer, audience, expiry and nonce. Returns `sub`.
pub async fn verify_id_token(
    http: &Http,
    provider: &Provider,
    client_id: &str,
    id_token: &str,
    nonce: Option<&str>,
) -> Result<String, ApiError> {
    use openidconnect::core::{
        CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm as Alg,
    };
    let name = &provider.config.name;
    let bad = |why: String| {
        ApiError::new(
            ErrorKind::ProviderError,
            format!("the ID token from provider '{name}' is not valid: {why}; the login was not accepted"),
        )
    };
    let issuer = provider.config.issuer.clone().ok_or_else(|| {
        bad("the provider has no issuer configured (add it with --issuer)".into())
    })?;
    let jwks_uri = provider
        .config
        .endpoints
        .jwks_uri
        .as_deref()
        .ok_or_else(|| bad("the provider's metadata has no jwks_uri".into()))?;
    let jwks_url = url::Url::parse(jwks_uri).map_err(|e| bad(format!("bad jwks_uri: {e}")))?;
    let (status, body) = http
        .get_json(&jwks_url)
        .await
        .map_err(|e| bad(format!("cannot fetch the JWKS: {e}")))?;
    if status != 200 {
        return Err(bad(format!("the JWKS endpoint answered HTTP {status}")));
    }
    let keys: CoreJsonWebKeySet =
        serde_json::from_slice(&body).map_err(|e| bad(format!("unreadable JWKS: {e}")))?;
    let issuer =
        openidconnect::IssuerUrl::new(issuer).map_err(|e| bad(format!("bad issuer: {e}")))?;
    let verifier = CoreIdTokenVerifier::new_public_client(
        openidconnect::ClientId::new(client_id.to_owned()),
        issuer,
        keys,
    )
    .set_allowed_algs([
        Alg::RsaSsaPkcs1V15Sha256,
        Alg::RsaSsaPkcs1V15Sha384,
        Alg::RsaSsaPkcs1V15Sha512,
        Alg::RsaSsaPssSha256,
        Alg::RsaSsaPssSha384,
        Alg::RsaSsaPssSha512,
        Alg::EcdsaP256Sha256,
        Alg::EcdsaP384Sha384,
        Alg::EdDsa,
    ]);
    let token: CoreIdToken = id_token
        .parse()
        .map_err(|e| bad(format!("malformed: {e}")))?;
    let expected = nonce.map(|n| openidconnect::Nonce::new(n.to_owned()));
    let claims = match &expected {
        Some(n) => token.claims(&verifier, n),
        None => token.claims(&verifier, |_: Option<&openidconnect::Nonce>| Ok(())),
    }
    .map_err(|e| bad(e.to_string()))?;
    Ok(claims.subject().as_str().to_owned())
}

fn http_failure(provider: &Provider, credential: &Credential, h: HttpError) -> ApiError {
    classify(
        &provider.config.name,
        &credential.config.name,
        RequestTokenError::Request(h),
        None,
    )
}

/// An error's Display without its source chain (which may quote bodies).
fn short<E: std::fmt::Display>(e: &E) -> String {
    scrub(&e.to_string(), None)
}
