//! The token exchange grant (RFC 8693 §2): a subject token (a CI job's
//! OIDC token, read by `subject.rs`) is exchanged at the token endpoint for
//! an access token, with the credential's `audience`, `resource` and
//! `scope`. The `oauth2` crate has no RFC 8693 request, so the request is a
//! typed form ([`ExchangeRequest`]) sent through `http.rs` (by way of
//! `client_auth::Signed`, which adds a `private_key_jwt` assertion or a
//! DPoP proof as for every other grant); the response
//! is read with oauth2's own token and error response types and checked
//! like every other grant's ([`Granted::from_response`], `grant::classify`).

use super::client_auth::{ClientAuth, Signed, Via};
use super::grant::classify;
use super::http::{Http, HttpError};
use super::text::provider_text;
use super::Granted;
use crate::error::ApiError;
use crate::vault::{Credential, Provider};
use latchkey_client::protocol::{AuthMethod, ErrorKind, TokenExchangeConfig};
use oauth2::basic::{BasicErrorResponse, BasicErrorResponseType, BasicTokenType};
use oauth2::{AsyncHttpClient, RequestTokenError, StandardTokenResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::form_urlencoded;
use zeroize::Zeroizing;

/// RFC 8693 §2.1's `grant_type`.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// What an RFC 8693 response adds to RFC 6749's (§2.2.1). A refresh token
/// the provider may send is not kept: the next exchange uses the next
/// subject token instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExchangeFields {
    /// The type of the token issued (an access token, or a JWT usable as one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<String>,
}

impl oauth2::ExtraTokenFields for ExchangeFields {}

/// An RFC 8693 token response, parsed by oauth2's type.
type ExchangeResponse = StandardTokenResponse<ExchangeFields, BasicTokenType>;

/// The parameters of one exchange (RFC 8693 §2.1), client authentication
/// included (`client_secret_post` and public clients in the body).
struct ExchangeRequest<'a> {
    subject_token: &'a SecretString,
    subject_token_type: &'a str,
    audience: &'a [String],
    resource: &'a [String],
    /// Space-separated; `None`: not sent.
    scope: Option<String>,
    /// Sent in the body (public clients and `client_secret_post`; with
    /// HTTP Basic it is in the header only, as oauth2 does).
    client_id: Option<&'a str>,
    /// Sent in the body (`client_secret_post` only).
    client_secret: Option<&'a SecretString>,
}

impl ExchangeRequest<'_> {
    /// `application/x-www-form-urlencoded`, in a buffer sized up front (so
    /// no reallocation leaves a copy of a secret behind) and zeroized on drop.
    fn form(&self) -> Zeroizing<String> {
        let secrets = self.subject_token.expose_secret().len()
            + self.client_secret.map_or(0, |s| s.expose_secret().len());
        let others: usize = self
            .audience
            .iter()
            .chain(self.resource)
            .map(|v| v.len() + 16)
            .sum::<usize>()
            + self.scope.as_ref().map_or(0, String::len)
            + self.client_id.map_or(0, str::len)
            + self.subject_token_type.len();
        // Percent-encoding at most triples a byte.
        let mut form =
            form_urlencoded::Serializer::new(String::with_capacity(3 * (secrets + others) + 256));
        form.append_pair("grant_type", GRANT_TYPE)
            .append_pair("subject_token", self.subject_token.expose_secret())
            .append_pair("subject_token_type", self.subject_token_type);
        for audience in self.audience {
            form.append_pair("audience", audience);
        }
        for resource in self.resource {
            form.append_pair("resource", resource);
        }
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        if let Some(client_id) = self.client_id {
            form.append_pair("client_id", client_id);
        }
        if let Some(secret) = self.client_secret {
            form.append_pair("client_secret", secret.expose_secret());
        }
        Zeroizing::new(form.finish())
    }
}

/// RFC 6749 §2.3.1 as the oauth2 crate does it for the other grants: id and
/// secret form-encoded, then HTTP Basic.
fn basic_auth(client_id: &str, secret: &SecretString) -> Zeroizing<String> {
    use base64::Engine;
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = Zeroizing::new(format!(
        "{}:{}",
        encode(client_id),
        Zeroizing::new(encode(secret.expose_secret())).as_str()
    ));
    Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    ))
}

/// One exchange: `subject_token` (just read) for an access token.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    http: &Http,
    provider: &Provider,
    credential: &Credential,
    config: &TokenExchangeConfig,
    subject_token: &SecretString,
    auth: ClientAuth,
    scopes: &[String],
) -> Result<Granted, ApiError> {
    let ClientAuth {
        secret: client_secret,
        proofs,
    } = auth;
    let name = &credential.config.name;
    let token_url = super::grant::token_endpoint(provider)?;
    let basic = credential.config.auth == AuthMethod::ClientSecretBasic;
    let request = ExchangeRequest {
        subject_token,
        subject_token_type: &config.subject_token_type,
        audience: &config.audience,
        resource: &config.resource,
        scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
        client_id: (!basic).then_some(credential.config.client_id.as_str()),
        client_secret: client_secret
            .as_ref()
            .filter(|_| credential.config.auth == AuthMethod::ClientSecretPost),
    };
    let body = request.form();
    let mut builder = http::Request::post(token_url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json");
    if let (true, Some(secret)) = (basic, &client_secret) {
        let mut value =
            http::HeaderValue::from_str(&basic_auth(&credential.config.client_id, secret))
                .map_err(|_| {
                    ApiError::internal("the Basic authorization header is not a header value")
                })?;
        value.set_sensitive(true);
        builder = builder.header(http::header::AUTHORIZATION, value);
    }
    let request = builder
        .body(body.as_bytes().to_vec())
        .map_err(|e| ApiError::internal(format!("stored token endpoint is invalid: {e}")))?;
    let mut sent = vec![subject_token];
    sent.extend(client_secret.as_ref());
    let at = (&provider.config.name[..], &name[..]);
    let signed = Signed {
        inner: Via::Http(http),
        proofs: &proofs,
    };
    let response = match signed.call(request).await {
        Ok(response) => response,
        Err(e) => return Err(classify(at.0, at.1, RequestTokenError::Request(e), &sent)),
    };
    let status = response.status();
    let body = Zeroizing::new(response.into_body());
    if status != http::StatusCode::OK {
        return Err(match serde_json::from_slice::<BasicErrorResponse>(&body) {
            Ok(refusal) => refused(at, credential, config, refusal, &sent),
            Err(_) => classify(
                at.0,
                at.1,
                RequestTokenError::<HttpError, BasicErrorResponse>::Other(format!(
                    "HTTP {} with no OAuth error in the body",
                    status.as_u16()
                )),
                &sent,
            ),
        });
    }
    let parsed: Result<ExchangeResponse, _> =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body));
    match parsed {
        Ok(response) => Granted::from_response(&response, None)
            .map_err(|why| super::unusable(at.0, at.1, why))
            .and_then(|g| super::check_bound(at.0, credential, g)),
        // Never the body: a half-valid token response may hold a token.
        Err(e) => Err(classify(
            at.0,
            at.1,
            RequestTokenError::<HttpError, BasicErrorResponse>::Parse(e, Vec::new()),
            &sent,
        )),
    }
}

/// The provider's RFC 6749 §5.2 refusal of an exchange: what RFC 8693 §2.2.2
/// gives its own meaning (the subject token, the target, the grant itself),
/// else what it means for any token request (`grant::classify`).
fn refused(
    (provider, name): (&str, &str),
    credential: &Credential,
    config: &TokenExchangeConfig,
    refusal: BasicErrorResponse,
    sent: &[&SecretString],
) -> ApiError {
    let code = provider_text(refusal.error().as_ref(), sent);
    let description = refusal
        .error_description()
        .map(|d| format!(": {}", provider_text(d, sent)))
        .unwrap_or_default();
    let at = format!("provider '{provider}' (credential '{name}')");
    let fix = match refusal.error() {
        BasicErrorResponseType::InvalidGrant => format!(
            "refused the subject token from {} ({code}{description}); the provider does not accept what the CI system issued: check the token's issuer and audience against the provider's trust settings, and that it is fresh",
            config.subject_token.describe()
        ),
        BasicErrorResponseType::Extension(ext) if ext == "invalid_target" => format!(
            "refused the audience or resource asked for ({code}{description}); ask only for targets the provider allows client '{}' (see `latchkey credential show {name}`)",
            credential.config.client_id
        ),
        BasicErrorResponseType::UnsupportedGrantType => format!(
            "does not do token exchange for this client ({code}{description}); allow the grant {GRANT_TYPE} for client '{}' at the provider",
            credential.config.client_id
        ),
        _ => return classify(provider, name, RequestTokenError::ServerResponse(refusal), sent),
    };
    ApiError::new(ErrorKind::ProviderError, format!("{at} {fix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_carries_every_parameter_encoded() {
        let subject = SecretString::from("a.b+c/d=");
        let secret = SecretString::from("s&cret");
        let audience = vec!["api one".to_owned()];
        let resource = vec![
            "https://a.example/x?y=1".to_owned(),
            "https://b.example/".to_owned(),
        ];
        let request = ExchangeRequest {
            subject_token: &subject,
            subject_token_type: latchkey_client::protocol::TOKEN_TYPE_JWT,
            audience: &audience,
            resource: &resource,
            scope: Some("read write".into()),
            client_id: Some("ci"),
            client_secret: Some(&secret),
        };
        let form = request.form();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| -> Vec<&str> {
            pairs
                .iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("grant_type"), [GRANT_TYPE]);
        assert_eq!(get("subject_token"), ["a.b+c/d="]);
        assert_eq!(
            get("subject_token_type"),
            ["urn:ietf:params:oauth:token-type:jwt"]
        );
        assert_eq!(get("audience"), ["api one"]);
        assert_eq!(
            get("resource"),
            resource.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(get("scope"), ["read write"]);
        assert_eq!(get("client_id"), ["ci"]);
        assert_eq!(get("client_secret"), ["s&cret"]);
        assert!(form.capacity() >= form.len());
    }

    #[test]
    fn basic_auth_form_encodes_like_oauth2() {
        let header = basic_auth("a:b", &SecretString::from("p w"));
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(header.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"a%3Ab:p+w");
    }

    #[test]
    fn responses_parse_with_issued_token_type() {
        let body = br#"{"access_token":"at","token_type":"Bearer","expires_in":60,"issued_token_type":"urn:ietf:params:oauth:token-type:access_token","scope":"read"}"#;
        let response: ExchangeResponse = serde_json::from_slice(body).unwrap();
        let granted = Granted::from_response(&response, None).unwrap();
        assert_eq!(granted.access.expires_in, Some(60));
        assert_eq!(granted.access.scope.as_deref(), Some("read"));
        assert_eq!(
            oauth2::TokenResponse::access_token(&response).secret(),
            "at"
        );
    }
}
