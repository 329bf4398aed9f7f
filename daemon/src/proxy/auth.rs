//! How a forwarded request is authorized: the seam between the proxy and
//! the schemes it can speak. Today one, [`Scheme::Bearer`] (RFC 6750): the
//! credential's access token from the `token.get` path, in
//! `Authorization: Bearer`. A DPoP proof (RFC 9449: `htm`/`htu` from
//! [`Outgoing`], the nonce from a 401's `DPoP-Nonce` in
//! [`Authorizer::rejected`]) or an OAuth 1.0a signature (method, URL and a
//! buffered form body, all in [`Outgoing`]) is another variant here; the
//! proxy itself does not change.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::state::{Daemon, Peer};
use latchkey_client::protocol::{ErrorKind, TokenGet, TokenParams, TokenReply};
use secrecy::ExposeSecret;
use std::borrow::Borrow;
use std::sync::Arc;
use url::Url;

/// 30 s: a token the proxy adds lives at least this long (a request and
/// its retry fit in it), unless the provider's live shorter.
const MIN_TTL_SECS: u64 = 30;

/// The schemes a forwarded request can be authorized with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer <access token>` (RFC 6750 §2.1).
    Bearer,
}

/// What a scheme may look at to authorize one request: its head, and its
/// body when the proxy buffered it (small bodies; see `forward.rs`).
/// Bearer needs none of it; DPoP and OAuth 1.0a sign it.
#[allow(dead_code)]
pub struct Outgoing<'a> {
    pub method: &'a http::Method,
    pub url: &'a Url,
    /// `None`: the body is streamed, not seen.
    pub body: Option<&'a [u8]>,
}

/// One proxy's way of authorizing: a credential, the scopes asked, a scheme.
pub struct Authorizer {
    pub credential: String,
    pub scopes: Option<Vec<String>>,
    pub scheme: Scheme,
}

impl Authorizer {
    /// The headers `request` carries for `peer` (the app that sent it),
    /// through the token path: its policy, approvals, step-up, rate limits
    /// and audit apply to the app as to a `token.get` of its own.
    pub async fn authorize(
        &self,
        daemon: &Arc<Daemon>,
        peer: &Peer,
        _request: &Outgoing<'_>,
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
                            "credential '{}' has tokens of another type than Bearer; the proxy sends only Bearer tokens so far: use `latchkey header {}` instead",
                            self.credential, self.credential
                        ),
                    ));
                }
                let mut value = http::HeaderValue::try_from(format!(
                    "Bearer {}",
                    reply.access_token.expose_secret()
                ))
                .map_err(|_| ApiError::internal("an access token is not a valid header value"))?;
                value.set_sensitive(true);
                Ok(vec![(http::header::AUTHORIZATION, value)])
            }
        }
    }

    /// The upstream answered 401 to what [`Authorizer::authorize`] gave:
    /// whether one retry may succeed, having done what it needs first
    /// (bearer: the cached tokens dropped, as `git.erase` does, so the
    /// next authorize fetches a fresh one; the grant stays).
    pub fn rejected(&self, daemon: &Arc<Daemon>, peer: &Peer, _response: &http::HeaderMap) -> bool {
        match self.scheme {
            Scheme::Bearer => {
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
    }
}
