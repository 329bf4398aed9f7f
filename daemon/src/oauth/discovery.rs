//! Provider configuration by issuer URL alone: OpenID Connect Discovery 1.0
//! and RFC 8414 authorization server metadata, with path issuers. Both
//! documents are read and merged: some providers list revocation,
//! introspection or the device endpoint in only one of them.

use super::http::{check_url, Http, HttpError};
use super::text::provider_text;
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
    /// RFC 9207 §3: authorization responses carry `iss`.
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// What discovery found for an issuer.
#[derive(Debug)]
pub struct Discovered {
    /// The issuer as the metadata spells it.
    pub issuer: String,
    pub endpoints: Endpoints,
    /// RFC 9207: some document says authorization responses carry `iss`.
    pub iss_parameter_supported: bool,
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

/// Fetches and checks the issuer's metadata documents and merges them.
/// Every document's `issuer` must equal the one asked for (RFC 8414 §3.3),
/// or a provider could impersonate another. A single trailing slash
/// difference is tolerated (providers disagree on it); the first
/// document's spelling is kept. A location that answers 404 (or any
/// non-200) is skipped; a network failure before any document was found
/// fails discovery as before, one after is logged and the documents found
/// are used.
pub async fn discover(http: &Http, issuer: &str) -> Result<Discovered, ApiError> {
    let issuer_url = check_url("issuer", issuer).map_err(ApiError::invalid_params)?;
    if issuer_url.query().is_some() {
        return Err(ApiError::invalid_params(format!(
            "issuer '{issuer}' must not contain a query (RFC 8414 §2)"
        )));
    }
    let mut tried = Vec::new();
    let mut found: Vec<Metadata> = Vec::new();
    for url in metadata_urls(&issuer_url) {
        let (status, body) = match http.get_json(&url).await {
            Ok(answer) => answer,
            Err(e) if found.is_empty() => return Err(unreachable_issuer(issuer, &url, e)),
            Err(e) => {
                tracing::warn!(issuer, %url, "skipping a metadata location: {e}");
                continue;
            }
        };
        if status != 200 {
            tried.push(format!("{url} (HTTP {status})"));
            continue;
        }
        let Ok(meta) = serde_json::from_slice::<Metadata>(&body) else {
            tried.push(format!("{url} (not a JSON metadata document)"));
            continue;
        };
        let Some(named) = meta.issuer.as_deref() else {
            tried.push(format!("{url} (no 'issuer' field)"));
            continue;
        };
        if named.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(ApiError::new(
                ErrorKind::ProviderError,
                format!(
                    "the metadata at {url} names issuer '{}', not '{issuer}'; use the exact issuer URL the provider documents",
                    provider_text(named, &[])
                ),
            ));
        }
        found.push(meta);
    }
    let Some(merged) = merge(found) else {
        return Err(ApiError::new(
            ErrorKind::ProviderError,
            format!(
                "no authorization server metadata for issuer '{issuer}' (tried {}); check the issuer URL, or give the endpoints explicitly with --token-endpoint",
                tried.join(", ")
            ),
        ));
    };
    let iss_parameter_supported = merged.authorization_response_iss_parameter_supported;
    let issuer = merged
        .issuer
        .clone()
        .expect("kept only documents with an issuer");
    Ok(Discovered {
        issuer,
        endpoints: endpoints(merged)?,
        iss_parameter_supported,
    })
}

/// One document from several, in the order they were fetched (OIDC
/// first): an endpoint comes from the first document that lists it — on a
/// conflict the first one wins, since the OIDC document is the one an
/// OpenID provider is certified on — and the RFC 9207 flag is true when
/// any document says so (refusing a callback without `iss` is the safe
/// side).
fn merge(documents: Vec<Metadata>) -> Option<Metadata> {
    let mut documents = documents.into_iter();
    let mut merged = documents.next()?;
    for more in documents {
        let fill = |slot: &mut Option<String>, value: Option<String>| {
            if slot.is_none() {
                *slot = value;
            }
        };
        fill(
            &mut merged.authorization_endpoint,
            more.authorization_endpoint,
        );
        fill(&mut merged.token_endpoint, more.token_endpoint);
        fill(
            &mut merged.device_authorization_endpoint,
            more.device_authorization_endpoint,
        );
        fill(&mut merged.revocation_endpoint, more.revocation_endpoint);
        fill(
            &mut merged.introspection_endpoint,
            more.introspection_endpoint,
        );
        fill(&mut merged.jwks_uri, more.jwks_uri);
        merged.authorization_response_iss_parameter_supported |=
            more.authorization_response_iss_parameter_supported;
    }
    Some(merged)
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
            authorization_response_iss_parameter_supported: false,
        };
        let err = endpoints(meta).unwrap_err();
        assert!(err.message.contains("plain http"), "{}", err.message);
    }

    fn document(fields: serde_json::Value) -> (String, String) {
        ("".into(), fields.to_string())
    }

    /// An issuer with a path whose OpenID document lacks revocation,
    /// introspection and device endpoints, and whose RFC 8414 document has
    /// them (with a conflicting token endpoint, and the RFC 9207 flag).
    #[tokio::test]
    async fn split_documents_are_merged_first_wins_and_the_iss_flag_is_read() {
        let issuer_path = "/tenant/a";
        let make = |issuer: &str| {
            let oidc = document(serde_json::json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/auth"),
                "token_endpoint": format!("{issuer}/token"),
                "jwks_uri": format!("{issuer}/jwks"),
            }));
            let rfc8414 = document(serde_json::json!({
                "issuer": issuer,
                "token_endpoint": format!("{issuer}/other-token"),
                "revocation_endpoint": format!("{issuer}/revoke"),
                "introspection_endpoint": format!("{issuer}/introspect"),
                "device_authorization_endpoint": format!("{issuer}/device"),
                "authorization_response_iss_parameter_supported": true,
            }));
            (oidc.1, rfc8414.1)
        };
        let served = ServedPair::start(issuer_path, make).await;
        let found = discover(&Http::new(), &served.issuer)
            .await
            .expect("discovered");
        let issuer = &served.issuer;
        assert_eq!(&found.issuer, issuer);
        let e = &found.endpoints;
        assert_eq!(
            e.token_endpoint.as_deref(),
            Some(&*format!("{issuer}/token")),
            "first wins"
        );
        assert_eq!(
            e.authorization_endpoint.as_deref(),
            Some(&*format!("{issuer}/auth"))
        );
        assert_eq!(e.jwks_uri.as_deref(), Some(&*format!("{issuer}/jwks")));
        assert_eq!(
            e.revocation_endpoint.as_deref(),
            Some(&*format!("{issuer}/revoke"))
        );
        assert_eq!(
            e.introspection_endpoint.as_deref(),
            Some(&*format!("{issuer}/introspect"))
        );
        assert_eq!(
            e.device_authorization_endpoint.as_deref(),
            Some(&*format!("{issuer}/device"))
        );
        assert!(found.iss_parameter_supported);
    }

    /// The second document naming another issuer is refused like the first.
    #[tokio::test]
    async fn a_second_document_with_another_issuer_is_refused() {
        let served = ServedPair::start("/t", |issuer: &str| {
            (
                document(serde_json::json!({"issuer": issuer, "token_endpoint": format!("{issuer}/token")})).1,
                document(serde_json::json!({"issuer": "https://evil.example/\u{1b}[2J", "revocation_endpoint": "https://evil.example/r"})).1,
            )
        })
        .await;
        let err = discover(&Http::new(), &served.issuer).await.unwrap_err();
        assert!(
            err.message
                .contains("names issuer 'https://evil.example/[2J'"),
            "{}",
            err.message
        );
        assert!(!err.message.contains('\u{1b}'), "{}", err.message);
    }

    /// A metadata server for an issuer at `path`: the OpenID document at
    /// `<issuer>/.well-known/openid-configuration` and the RFC 8414 one at
    /// `/.well-known/oauth-authorization-server<path>`, made by `make` from
    /// the issuer URL.
    struct ServedPair {
        issuer: String,
    }

    impl ServedPair {
        async fn start(path: &str, make: impl Fn(&str) -> (String, String)) -> ServedPair {
            let base = latchkey_testkit::metadata::serve(|base| {
                let (oidc, rfc8414) = make(&format!("{base}{path}"));
                vec![
                    (format!("{path}/.well-known/openid-configuration"), oidc),
                    (
                        format!("/.well-known/oauth-authorization-server{path}"),
                        rfc8414,
                    ),
                ]
            })
            .await
            .unwrap();
            ServedPair {
                issuer: format!("{base}{path}"),
            }
        }
    }
}
