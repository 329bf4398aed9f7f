//! Provider configuration by issuer URL alone: OpenID Connect Discovery 1.0
//! and RFC 8414 authorization server metadata, with path issuers.

use super::http::{check_url, Http, HttpError};
use crate::error::ApiError;
use latchkey_client::protocol::{Endpoints, ErrorKind};
use serde::Deserialize;
use url::Url;

/// The metadata fields Latchkey uses. Everything is optional here because
/// real providers omit fields; what is required is checked afterwards.
#[derive(Debug, Deserialize)]
struct Metadata {
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    introspection_endpoint: Option<String>,
    jwks_uri: Option<String>,
}

/// Where the metadata of `issuer` may be, in the order tried:
/// OIDC (`<issuer>/.well-known/openid-configuration`), RFC 8414
/// (`<origin>/.well-known/oauth-authorization-server<path>`), and RFC 8414's
/// compatibility form (`<origin>/.well-known/openid-configuration<path>`).
pub fn metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut origin = issuer.clone();
    origin.set_query(None);
    let mut urls = Vec::new();
    for candidate in [
        format!("{path}/.well-known/openid-configuration"),
        format!("/.well-known/oauth-authorization-server{path}"),
        format!("/.well-known/openid-configuration{path}"),
    ] {
        let mut url = origin.clone();
        url.set_path(&candidate);
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    urls
}

/// Fetches and checks the issuer's metadata. The document's `issuer` must
/// equal the one asked for (RFC 8414 §3.3), or a provider could
/// impersonate another. A single trailing slash difference is tolerated
/// (providers disagree on it); the document's spelling is kept.
pub async fn discover(http: &Http, issuer: &str) -> Result<(String, Endpoints), ApiError> {
    let issuer_url = check_url("issuer", issuer).map_err(ApiError::invalid_params)?;
    if issuer_url.query().is_some() {
        return Err(ApiError::invalid_params(format!(
            "issuer '{issuer}' must not contain a query (RFC 8414 §2)"
        )));
    }
    let mut tried = Vec::new();
    for url in metadata_urls(&issuer_url) {
        let (status, body) = http
            .get_json(&url)
            .await
            .map_err(|e| unreachable_issuer(issuer, &url, e))?;
        if status != 200 {
            tried.push(format!("{url} (HTTP {status})"));
            continue;
        }
        let Ok(meta) = serde_json::from_slice::<Metadata>(&body) else {
            tried.push(format!("{url} (not a JSON metadata document)"));
            continue;
        };
        let Some(found) = meta.issuer.clone() else {
            tried.push(format!("{url} (no 'issuer' field)"));
            continue;
        };
        if found.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(ApiError::new(
                ErrorKind::ProviderError,
                format!("the metadata at {url} names issuer '{}', not '{issuer}'; use the exact issuer URL the provider documents", crate::error::quoted(&found)),
            ));
        }
        return Ok((found, endpoints(meta)?));
    }
    Err(ApiError::new(
        ErrorKind::ProviderError,
        format!(
            "no authorization server metadata for issuer '{issuer}' (tried {}); check the issuer URL, or give the endpoints explicitly with --token-endpoint",
            tried.join(", ")
        ),
    ))
}

fn unreachable_issuer(issuer: &str, url: &Url, e: HttpError) -> ApiError {
    ApiError::new(
        ErrorKind::ProviderUnavailable,
        format!("cannot fetch the metadata of issuer '{issuer}' from {url}: {e}; check the URL and that the provider is reachable"),
    )
}

fn endpoints(meta: Metadata) -> Result<Endpoints, ApiError> {
    let checked = |what: &str, value: Option<String>| -> Result<Option<String>, ApiError> {
        value
            .map(|v| {
                check_url(what, &v).map(|u| u.to_string()).map_err(|e| {
                    ApiError::new(
                        ErrorKind::ProviderError,
                        format!("the provider's metadata is unusable: {e}"),
                    )
                })
            })
            .transpose()
    };
    let endpoints = Endpoints {
        authorization_endpoint: checked("authorization_endpoint", meta.authorization_endpoint)?,
        token_endpoint: checked("token_endpoint", meta.token_endpoint)?,
        device_authorization_endpoint: checked(
            "device_authorization_endpoint",
            meta.device_authorization_endpoint,
        )?,
        revocation_endpoint: checked("revocation_endpoint", meta.revocation_endpoint)?,
        introspection_endpoint: checked("introspection_endpoint", meta.introspection_endpoint)?,
        jwks_uri: checked("jwks_uri", meta.jwks_uri)?,
    };
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_locations_for_plain_and_path_issuers() {
        let plain: Vec<String> = metadata_urls(&Url::parse("https://as.example.com").unwrap())
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            plain,
            [
                "https://as.example.com/.well-known/openid-configuration",
                "https://as.example.com/.well-known/oauth-authorization-server",
            ]
        );
        let path: Vec<String> =
            metadata_urls(&Url::parse("https://as.example.com/tenant/a/").unwrap())
                .iter()
                .map(|u| u.to_string())
                .collect();
        assert_eq!(
            path,
            [
                "https://as.example.com/tenant/a/.well-known/openid-configuration",
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/a",
                "https://as.example.com/.well-known/openid-configuration/tenant/a",
            ]
        );
    }

    #[test]
    fn metadata_with_plain_http_endpoints_is_refused() {
        let meta = Metadata {
            issuer: Some("https://as.example.com".into()),
            authorization_endpoint: None,
            token_endpoint: Some("http://as.example.com/token".into()),
            device_authorization_endpoint: None,
            revocation_endpoint: None,
            introspection_endpoint: None,
            jwks_uri: None,
        };
        let err = endpoints(meta).unwrap_err();
        assert!(err.message.contains("plain http"), "{}", err.message);
    }
}
