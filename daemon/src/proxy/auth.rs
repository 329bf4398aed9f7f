//! How a forwarded request is authorized: the seam between the proxy and
//! the schemes it can speak. [`Scheme::Bearer`] (RFC 6750): the
//! credential's access token from the `token.get` path, in
//! `Authorization: Bearer`. [`Scheme::Dpop`] (RFC 9449), for a credential
//! added with `--dpop`: each request gets a fresh proof from the
//! `dpop.proof` path for exactly its method and URL (from [`Outgoing`]),
//! sent as `DPoP: <proof>` beside `Authorization: DPoP <token>`; the
//! resource server's nonce (§9: `DPoP-Nonce` on a 401 demanding it, or on
//! any other answer) is remembered for the proxy's next proofs, and a 401
//! that demanded one is retried once with it, the token kept.
//! [`Scheme::Oauth1`] (RFC 5849), for an OAuth 1.0a credential: each
//! request is signed through the `oauth1.sign` path for exactly its
//! method, URL (query included) and, when the body is a form, its form
//! parameters (§3.4.1.3.1) — so a form body must be one the proxy buffered.
//! A new scheme is another variant here; the proxy itself does not change.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::keys::valid_nonce;
use crate::state::{Daemon, Peer};
use crate::sync::lock;
use latchkey_client::protocol::{
    DpopProof, DpopProofParams, ErrorKind, GrantType, Oauth1Sign, Oauth1SignParams, TokenGet,
    TokenParams, TokenReply,
};
use secrecy::ExposeSecret;
use std::borrow::Borrow;
use std::sync::{Arc, Mutex};
use url::Url;

/// 30 s: a token the proxy adds lives at least this long (a request and
/// its retry fit in it), unless the provider's live shorter.
const MIN_TTL_SECS: u64 = 30;

/// The header a resource server's nonce comes in (RFC 9449 §9).
const DPOP_NONCE: &str = "dpop-nonce";

/// The schemes a forwarded request can be authorized with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer <access token>` (RFC 6750 §2.1).
    Bearer,
    /// `Authorization: DPoP <bound token>` and `DPoP: <proof>` (RFC 9449
    /// §7.1), a fresh proof for each request.
    Dpop,
    /// `Authorization: OAuth …` (RFC 5849 §3.5.1), a fresh signature for
    /// each request.
    Oauth1,
}

impl Scheme {
    /// The scheme of a credential: OAuth 1.0a signatures for an OAuth
    /// 1.0a credential, DPoP when it was added with `--dpop` (its tokens
    /// are bound to its key), else Bearer.
    pub fn of(grant: GrantType, dpop: bool) -> Scheme {
        match (grant, dpop) {
            (GrantType::Oauth1, _) => Scheme::Oauth1,
            (_, true) => Scheme::Dpop,
            (_, false) => Scheme::Bearer,
        }
    }
}

/// What a scheme may look at to authorize one request: its head, and its
/// body when the proxy buffered it (small bodies; see `forward.rs`).
/// Bearer needs none of it; DPoP signs the method and URL; OAuth 1.0a
/// those and a form body's parameters.
pub struct Outgoing<'a> {
    pub method: &'a http::Method,
    pub url: &'a Url,
    /// `None`: the body is streamed, not seen.
    pub body: Option<&'a [u8]>,
    /// Whether the body is `application/x-www-form-urlencoded`.
    pub form: bool,
}

/// One proxy's way of authorizing: a credential, the scopes asked, a scheme.
pub struct Authorizer {
    pub credential: String,
    pub scopes: Option<Vec<String>>,
    pub scheme: Scheme,
    /// DPoP: the resource server's last `DPoP-Nonce`, put in the next
    /// proofs (RFC 9449 §9). Not a secret: the server sends it in the clear.
    nonce: Mutex<Option<String>>,
}

impl Authorizer {
    pub fn new(credential: String, scopes: Option<Vec<String>>, scheme: Scheme) -> Authorizer {
        Authorizer {
            credential,
            scopes,
            scheme,
            nonce: Mutex::new(None),
        }
    }

    /// The headers `request` carries for `peer` (the app that sent it),
    /// through the token path: its policy, approvals, step-up, rate limits
    /// and audit apply to the app as to a `token.get` of its own.
    pub async fn authorize(
        &self,
        daemon: &Arc<Daemon>,
        peer: &Peer,
        request: &Outgoing<'_>,
    ) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ApiError> {
        match self.scheme {
            Scheme::Bearer => {
                let params = TokenParams {
                    credential: self.credential.clone(),
                    scopes: self.scopes.clone(),
                    min_ttl: Some(MIN_TTL_SECS),
                    confirm_wait_secs: None,
                };
                let served = <TokenGet as Handler>::handle(daemon, peer.clone(), params).await?;
                let reply: &TokenReply = served.borrow();
                if !reply.token_type.eq_ignore_ascii_case("bearer") {
                    return Err(ApiError::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "credential '{}' has tokens of type {}, not Bearer, and was not added with --dpop; the proxy sends Bearer and DPoP tokens: use `latchkey header {}` instead",
                            self.credential,
                            shown_type(&reply.token_type),
                            self.credential
                        ),
                    ));
                }
                let value = sensitive(format!("Bearer {}", reply.access_token.expose_secret()))?;
                Ok(vec![(http::header::AUTHORIZATION, value)])
            }
            Scheme::Dpop => {
                let method = request.method.as_str();
                // The proof names the method as sent; dpop.proof would
                // upper-case another spelling and so sign another one.
                if !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ApiError::invalid_params(format!(
                        "the proxy makes DPoP proofs for methods such as GET or POST, not '{method}'"
                    )));
                }
                let params = DpopProofParams {
                    credential: self.credential.clone(),
                    method: method.to_owned(),
                    url: request.url.to_string(),
                    nonce: lock(&self.nonce).clone(),
                    scopes: self.scopes.clone().unwrap_or_default(),
                    min_ttl: Some(MIN_TTL_SECS),
                };
                let reply = <DpopProof as Handler>::handle(daemon, peer.clone(), params).await?;
                // A provider that ignored the key issues Bearer (§5); the
                // token is then sent as one, still with the proof.
                let scheme = match reply.token.token_type.to_ascii_lowercase().as_str() {
                    "dpop" => "DPoP",
                    "bearer" => "Bearer",
                    _ => {
                        return Err(ApiError::new(
                            ErrorKind::InvalidRequest,
                            format!(
                                "credential '{}' has tokens of type {}, neither DPoP nor Bearer: the proxy cannot send them; use `latchkey header {}` instead",
                                self.credential,
                                shown_type(&reply.token.token_type),
                                self.credential
                            ),
                        ))
                    }
                };
                let authorization = sensitive(format!(
                    "{scheme} {}",
                    reply.token.access_token.expose_secret()
                ))?;
                let proof = sensitive(reply.proof.expose_secret().to_owned())?;
                Ok(vec![
                    (http::header::AUTHORIZATION, authorization),
                    (http::HeaderName::from_static("dpop"), proof),
                ])
            }
            Scheme::Oauth1 => {
                let form = match (request.form, request.body) {
                    (false, _) => Vec::new(),
                    (true, Some(body)) => url::form_urlencoded::parse(body).into_owned().collect(),
                    (true, None) => {
                        return Err(ApiError::invalid_params(format!(
                            "an OAuth 1.0a signature covers a form body's parameters, and this form body is over {} bytes or has no Content-Length: the proxy signs form bodies it can read whole",
                            super::forward::RETRY_BUFFER
                        )))
                    }
                };
                let params = Oauth1SignParams {
                    credential: self.credential.clone(),
                    method: request.method.as_str().to_owned(),
                    url: request.url.to_string(),
                    form,
                };
                let reply = <Oauth1Sign as Handler>::handle(daemon, peer.clone(), params).await?;
                let value = sensitive(reply.authorization.expose_secret().to_owned())?;
                Ok(vec![(http::header::AUTHORIZATION, value)])
            }
        }
    }

    /// The upstream answered 401 to what [`Authorizer::authorize`] gave:
    /// whether one retry may succeed, having done what it needs first.
    /// Bearer: the cached tokens dropped, as `git.erase` does, so the next
    /// authorize fetches a fresh one (the grant stays). DPoP: a 401 with a
    /// valid `DPoP-Nonce` and no `invalid_token` error demanded a nonce
    /// (RFC 9449 §9): it is remembered and the token kept; any other 401
    /// drops the token as for Bearer.
    pub fn rejected(&self, daemon: &Arc<Daemon>, peer: &Peer, response: &http::HeaderMap) -> bool {
        match self.scheme {
            Scheme::Bearer => self.drop_token(daemon, peer),
            // Token credentials do not expire: a fresh signature would be
            // refused the same way (revoked at the provider, or a clock
            // off: `latchkey doctor`).
            Scheme::Oauth1 => false,
            Scheme::Dpop => {
                if self.remember_nonce(response) && !says_invalid_token(response) {
                    return true;
                }
                self.drop_token(daemon, peer)
            }
        }
    }

    /// Any answer the upstream gave that goes back to the app: DPoP
    /// remembers a nonce it carries (a server may send the next one with
    /// any response, RFC 9449 §9.1).
    pub fn answered(&self, response: &http::HeaderMap) {
        if self.scheme == Scheme::Dpop {
            self.remember_nonce(response);
        }
    }

    /// Stores the response's `DPoP-Nonce` if it has a valid one.
    fn remember_nonce(&self, response: &http::HeaderMap) -> bool {
        let Some(nonce) = response
            .get_all(DPOP_NONCE)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|n| valid_nonce(n))
        else {
            return false;
        };
        *lock(&self.nonce) = Some(nonce.to_owned());
        true
    }

    /// The credential's cached tokens dropped (audited); true unless the
    /// vault is locked or the credential gone.
    fn drop_token(&self, daemon: &Arc<Daemon>, peer: &Peer) -> bool {
        let Ok(session) = daemon.session() else {
            return false;
        };
        let Ok((credential, _)) = session.lookup(&self.credential) else {
            return false;
        };
        session.tokens.forget(&credential.id);
        daemon.audit.record(
            "proxy_token_dropped",
            Some(&self.credential),
            Some(peer),
            Some("the upstream answered 401".into()),
        );
        true
    }
}

/// A header value not to be logged or compressed (hpack/qpack never index it).
fn sensitive(value: String) -> Result<http::HeaderValue, ApiError> {
    let mut value = http::HeaderValue::try_from(value)
        .map_err(|_| ApiError::internal("a token or proof is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A provider's token type, as a message may show it (bounded, printable).
fn shown_type(token_type: &str) -> String {
    token_type
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect()
}

/// Whether a `WWW-Authenticate` challenge says the token itself is bad
/// (`error="invalid_token"`, RFC 6750 §3.1), not only the nonce.
fn says_invalid_token(response: &http::HeaderMap) -> bool {
    response
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .any(|v| v.contains("error=\"invalid_token\"") || v.contains("error=invalid_token"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_valid_nonce_is_remembered_and_others_are_not() {
        let auth = Authorizer::new("api".into(), None, Scheme::Dpop);
        assert!(!auth.remember_nonce(&headers(&[])));
        assert!(!auth.remember_nonce(&headers(&[("dpop-nonce", "a\"b")])));
        assert!(!auth.remember_nonce(&headers(&[("dpop-nonce", "")])));
        assert_eq!(*lock(&auth.nonce), None);
        assert!(auth.remember_nonce(&headers(&[("dpop-nonce", "eyJ7S_zG.eyJH0-Z")])));
        assert_eq!(lock(&auth.nonce).as_deref(), Some("eyJ7S_zG.eyJH0-Z"));
        // Bearer ignores nonces; DPoP takes one from any answer.
        let bearer = Authorizer::new("api".into(), None, Scheme::Bearer);
        bearer.answered(&headers(&[("dpop-nonce", "n1")]));
        assert_eq!(*lock(&bearer.nonce), None);
        auth.answered(&headers(&[("dpop-nonce", "n2")]));
        assert_eq!(lock(&auth.nonce).as_deref(), Some("n2"));
    }

    #[test]
    fn an_invalid_token_challenge_is_told_from_a_nonce_demand() {
        assert!(says_invalid_token(&headers(&[(
            "www-authenticate",
            "Bearer error=\"invalid_token\", DPoP error = \"invalid_token\""
        )])));
        assert!(!says_invalid_token(&headers(&[(
            "www-authenticate",
            "DPoP error=\"use_dpop_nonce\", error_description=\"Resource server requires nonce in DPoP proof\""
        )])));
        assert!(!says_invalid_token(&headers(&[])));
        assert_eq!(Scheme::of(GrantType::ClientCredentials, true), Scheme::Dpop);
        assert_eq!(
            Scheme::of(GrantType::AuthorizationCode, false),
            Scheme::Bearer
        );
        assert_eq!(Scheme::of(GrantType::Oauth1, false), Scheme::Oauth1);
    }
}
