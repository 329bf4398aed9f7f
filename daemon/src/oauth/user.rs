//! User grants through the `oauth2` crate: authorization code with PKCE
//! (RFC 6749 §4.1, RFC 7636, S256 always), device authorization
//! (RFC 8628), refresh (RFC 6749 §6, with scope down-scoping), revocation
//! (RFC 7009); and ID-token validation through `openidconnect` with the
//! signature algorithms pinned to asymmetric ones (never `none`).

use super::client_auth::{ClientAuth, Proofs, Signed, Via};
use super::grant::classify;
use super::http::{Http, HttpError, PlainLoopback};
use super::text::{provider_text, MAX_PROVIDER_TEXT_CHARS};
use super::Granted;
use crate::error::ApiError;
use crate::vault::{Credential, Provider};
use latchkey_client::protocol::ErrorKind;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl,
    DeviceCodeErrorResponse, DeviceCodeErrorResponseType, EndpointMaybeSet, EndpointNotSet,
    ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, RevocableToken, RevocationUrl, Scope, StandardDeviceAuthorizationResponse,
    StandardRevocableToken, StandardTokenResponse, TokenUrl,
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
type OAuthClient = Client<
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

/// The oauth2 client of one credential, and the client secret it sends
/// (kept to scrub it from whatever the provider echoes back; the oauth2
/// crate has no getter for it).
pub struct UserClient {
    oauth: OAuthClient,
    secret: Option<SecretString>,
    /// A client assertion and a DPoP proof, fresh on every request.
    proofs: Proofs,
}

impl UserClient {
    /// The HTTP client its requests go through: `http`, plus the proofs.
    fn signed<'a>(&'a self, http: &'a Http) -> Signed<'a> {
        Signed {
            inner: Via::Http(http),
            proofs: &self.proofs,
        }
    }

    /// Every secret a request of this client carries: its client secret
    /// and `more` (the grant's own: code, verifier, refresh or device code).
    fn sent<'a>(&'a self, more: &[&'a SecretString]) -> Vec<&'a SecretString> {
        self.secret.iter().chain(more.iter().copied()).collect()
    }
}

/// A token response as a [`Granted`], refused when its values are unusable.
fn granted(
    response: TokenResp,
    provider: &Provider,
    credential: &Credential,
) -> Result<Granted, ApiError> {
    let id_token = response.extra_fields().id_token.clone();
    Granted::from_response(&response, id_token)
        .map_err(|why| super::unusable(&provider.config.name, &credential.config.name, why))
        .and_then(|g| super::check_bound(&provider.config.name, credential, g))
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
    auth: &ClientAuth,
) -> Result<UserClient, ApiError> {
    let secret = auth.secret.as_ref();
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
        .set_auth_type(super::grant::auth_type(credential.config.auth));
    if let Some(secret) = secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
    }
    Ok(UserClient {
        oauth: client,
        secret: secret.cloned(),
        proofs: auth.proofs.clone(),
    })
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
        .oauth
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
    // Copies to scrub from the provider's answer: the request takes both.
    let code_sent = SecretString::from(code.as_str());
    let verifier_sent = SecretString::from(verifier.secret().as_str());
    let request = client
        .oauth
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|_| missing(provider, "token endpoint", "--token-endpoint"))?
        .set_pkce_verifier(verifier)
        .set_redirect_uri(std::borrow::Cow::Borrowed(redirect_uri));
    let sent = client.sent(&[&code_sent, &verifier_sent]);
    let result = request.request_async(&client.signed(http)).await;
    result
        .map_err(|e| classify(&provider.config.name, &credential.config.name, e, &sent))
        .and_then(|r| granted(r, provider, credential))
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
        .oauth
        .exchange_device_code()
        .map_err(|_| {
            missing(
                provider,
                "device authorization endpoint",
                "--device-authorization-endpoint",
            )
        })?
        .add_scopes(scopes.iter().cloned().map(Scope::new));
    let sent = client.sent(&[]);
    let details = request
        .request_async(&client.signed(http))
        .await
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => ApiError::new(
                ErrorKind::ProviderError,
                format!(
                    "provider '{}' refused the device login of credential '{}' ({}{})",
                    provider.config.name,
                    credential.config.name,
                    provider_text(r.error().as_ref(), &sent),
                    r.error_description()
                        .map(|d| format!(": {}", provider_text(d, &sent)))
                        .unwrap_or_default()
                ),
            ),
            RequestTokenError::Request(h) => http_failure(provider, credential, h),
            other => ApiError::new(
                ErrorKind::ProviderError,
                format!(
                    "provider '{}' sent an unusable device authorization response: {}",
                    provider.config.name,
                    provider_text(&other.to_string(), &sent)
                ),
            ),
        })?;
    check_shown_to_user(provider, &details)?;
    Ok(details)
}

/// The user code and the complete verification URI are shown to the user
/// as they are (they must be typed or opened exactly), so they cannot be
/// sanitised: a provider that puts control characters in them (or an
/// absurd length) is refused instead. `verification_uri` is a parsed URL.
fn check_shown_to_user(
    provider: &Provider,
    details: &StandardDeviceAuthorizationResponse,
) -> Result<(), ApiError> {
    let shown = [
        ("user_code", Some(details.user_code().secret().as_str())),
        (
            "verification_uri_complete",
            details
                .verification_uri_complete()
                .map(|u| u.secret().as_str()),
        ),
    ];
    for (field, value) in shown {
        if let Some(value) = value {
            if provider_text(value, &[]) != value {
                return Err(ApiError::new(
                    ErrorKind::ProviderError,
                    format!(
                        "provider '{}' sent a device authorization response whose {field} holds control characters or is over {MAX_PROVIDER_TEXT_CHARS} characters long; latchkey does not show it. Use a browser login (`latchkey login NAME` without --device), or ask the provider's administrators to fix it",
                        provider.config.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// RFC 8628 §3.2: with no `interval` the client waits 5 s between polls.
/// Used as the floor whatever the provider says: an `interval` of 0 would
/// otherwise poll as fast as the network answers until the user approves.
pub const MIN_DEVICE_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// `slow_down` adds 5 s each time (RFC 8628 §3.5); past a minute between
/// polls a login would feel stuck, and the provider has made its point.
pub const MAX_DEVICE_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// Polls the token endpoint until the user approves, denies, the code
/// expires, or `timeout` (the login's time limit) passes. The oauth2 crate
/// honours `authorization_pending` and adds 5 s on `slow_down`; latchkey
/// starts from at least [`MIN_DEVICE_POLL_INTERVAL`], never waits more
/// than [`MAX_DEVICE_POLL_INTERVAL`], and bounds the whole poll with
/// tokio's timer (the crate's own deadline reads the system clock).
/// Running out of time is reported as the code's expiry, as the crate does.
pub async fn device_poll(
    http: &Http,
    provider: &Provider,
    credential: &Credential,
    client: &UserClient,
    details: &StandardDeviceAuthorizationResponse,
    timeout: Duration,
) -> Result<Granted, ApiError> {
    let details = with_min_interval(details)?;
    let request = client
        .oauth
        .exchange_device_access_token(&details)
        .map_err(|_| missing(provider, "token endpoint", "--token-endpoint"))?
        .set_max_backoff_interval(MAX_DEVICE_POLL_INTERVAL);
    let name = &credential.config.name;
    let device_code = SecretString::from(details.device_code().secret().as_str());
    let sent = client.sent(&[&device_code]);
    let sleep = |interval: Duration| tokio::time::sleep(poll_wait(interval));
    let signed = client.signed(http);
    let poll = request.request_async(&signed, sleep, Some(timeout));
    let result = match tokio::time::timeout(timeout, poll).await {
        Ok(result) => result,
        Err(_elapsed) => Err(RequestTokenError::ServerResponse(
            DeviceCodeErrorResponse::new(DeviceCodeErrorResponseType::ExpiredToken, None, None),
        )),
    };
    result
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => device_error(&r, name, &sent),
            RequestTokenError::Request(h) => http_failure(provider, credential, h),
            other => ApiError::new(
                ErrorKind::ProviderError,
                format!(
                    "provider '{}' sent an unusable token response during the device login: {}",
                    provider.config.name,
                    provider_text(&other.to_string(), &sent)
                ),
            ),
        })
        .and_then(|r| granted(r, provider, credential))
}

/// How long to wait before the next poll when the crate says `interval`
/// (the provider's, raised to the floor, plus 5 s per `slow_down`, or
/// doubled after a network error): at most [`MAX_DEVICE_POLL_INTERVAL`].
fn poll_wait(interval: Duration) -> Duration {
    interval.clamp(MIN_DEVICE_POLL_INTERVAL, MAX_DEVICE_POLL_INTERVAL)
}

/// The device authorization response with `interval` raised to at least
/// [`MIN_DEVICE_POLL_INTERVAL`] (the crate reads the field only from the
/// response document, so the document is rewritten).
fn with_min_interval(
    details: &StandardDeviceAuthorizationResponse,
) -> Result<StandardDeviceAuthorizationResponse, ApiError> {
    if details.interval() >= MIN_DEVICE_POLL_INTERVAL {
        return Ok(details.clone());
    }
    let mut document = serde_json::to_value(details)
        .map_err(|e| ApiError::internal(format!("the device authorization response: {e}")))?;
    document["interval"] = MIN_DEVICE_POLL_INTERVAL.as_secs().into();
    serde_json::from_value(document)
        .map_err(|e| ApiError::internal(format!("the device authorization response: {e}")))
}

fn device_error(r: &DeviceCodeErrorResponse, name: &str, sent: &[&SecretString]) -> ApiError {
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
                provider_text(other.as_ref(), sent),
                r.error_description()
                    .map(|d| format!(": {}", provider_text(d, sent)))
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
        .oauth
        .exchange_refresh_token(&token)
        .map_err(|_| missing(provider, "token endpoint", "--token-endpoint"))?;
    if let Some(scopes) = scopes {
        request = request.add_scopes(scopes.iter().cloned().map(Scope::new));
    }
    let sent = client.sent(&[refresh_token]);
    let result = request.request_async(&client.signed(http)).await;
    result
        .map_err(|e| classify(&provider.config.name, &credential.config.name, e, &sent))
        .and_then(|r| granted(r, provider, credential))
}

/// Revokes one token at the provider (RFC 7009).
pub async fn revoke(
    http: &Http,
    provider: &Provider,
    client: &UserClient,
    token: StandardRevocableToken,
) -> Result<(), ApiError> {
    let token_sent = SecretString::from(token.secret());
    let sent = client.sent(&[&token_sent]);
    let request = client.oauth.revoke_token(token).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!(
                "cannot revoke at provider '{}': {}",
                provider.config.name,
                provider_text(&e.to_string(), &sent)
            ),
        )
    })?;
    let configured = provider.config.endpoints.revocation_endpoint.as_deref();
    let plain_loopback = PlainLoopback::new(http.clone(), configured.unwrap_or_default());
    let signed = Signed {
        inner: Via::PlainLoopback(&plain_loopback),
        proofs: &client.proofs,
    };
    request.request_async(&signed).await.map_err(|e| {
        let detail = match &e {
            RequestTokenError::ServerResponse(r) => provider_text(r.error().as_ref(), &sent),
            RequestTokenError::Request(h) => h.to_string(),
            other => provider_text(&other.to_string(), &sent),
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
    // `why` may quote the token's claims (an issuer, an audience): provider text.
    let bad = |why: String| {
        ApiError::new(
            ErrorKind::ProviderError,
            format!(
                "the ID token from provider '{name}' is not valid: {}; the login was not accepted",
                provider_text(&why, &[])
            ),
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
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_polls_wait_between_five_seconds_and_a_minute() {
        let secs = Duration::from_secs;
        assert_eq!(poll_wait(secs(0)), secs(5));
        assert_eq!(poll_wait(secs(7)), secs(7));
        assert_eq!(poll_wait(secs(5 + 5 * 30)), secs(60), "30 slow_downs");
    }

    #[test]
    fn a_zero_interval_is_raised_to_the_rfc_default() {
        let zero: StandardDeviceAuthorizationResponse = serde_json::from_value(serde_json::json!({
            "device_code": "dc", "user_code": "UC", "verification_uri": "https://example.com/d",
            "expires_in": 600, "interval": 0
        }))
        .unwrap();
        assert_eq!(
            with_min_interval(&zero).unwrap().interval(),
            Duration::from_secs(5)
        );
        let slow: StandardDeviceAuthorizationResponse = serde_json::from_value(serde_json::json!({
            "device_code": "dc", "user_code": "UC", "verification_uri": "https://example.com/d",
            "expires_in": 600, "interval": 9
        }))
        .unwrap();
        assert_eq!(
            with_min_interval(&slow).unwrap().interval(),
            Duration::from_secs(9)
        );
    }
}
