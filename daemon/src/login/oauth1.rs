//! The OAuth 1.0a three-legged login (RFC 5849 §2), on the same registry,
//! loopback listener and outcome reporting as OAuth 2 logins: temporary
//! credentials with the listener's URL as `oauth_callback`, the person
//! authorizes them in the browser, the callback's `oauth_token` must be
//! the temporary one, and its `oauth_verifier` buys the token credentials,
//! committed sealed in place of a grant.

use super::{cancelled, register, report, timed_out};
use crate::callback;
use crate::error::ApiError;
use crate::oauth::oauth1::{authorization_url, temporary_credentials, token_credentials};
use crate::oauth::oauth1_sign::Keys;
use crate::state::{Daemon, Peer, Session};
use crate::vault::{Credential, Provider};
use latchkey_client::protocol::{ErrorKind, LoginResult, LoginStartResult};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;

/// Gets the temporary credentials, then leaves the rest of the login to
/// its task; returns where the person goes.
pub(super) async fn start(
    daemon: &Arc<Daemon>,
    peer: &Peer,
    session: Arc<Session>,
    credential: Arc<Credential>,
    provider: Arc<Provider>,
    timeout: Duration,
) -> Result<LoginStartResult, ApiError> {
    let name = credential.config.name.clone();
    let provider_name = provider.config.name.clone();
    let Some(endpoints) = provider.config.oauth1.clone() else {
        return Err(ApiError::new(
            ErrorKind::VaultCorrupt,
            format!("provider '{provider_name}' has no OAuth 1.0a endpoints: remove credential '{name}' and add it again with an OAuth 1.0a provider"),
        ));
    };
    let (method, key) = crate::oauth1::client_key(&session, &credential).await?;
    // Registered first, so that a failure below removes it (on drop).
    let (registered, tx, cancel) = register(daemon)?;
    let login_id = registered.id.clone();
    let loopback = callback::bind(credential.config.redirect_uri.as_deref()).await?;
    let keys = Keys {
        method,
        consumer_key: &credential.config.client_id,
        client: &key,
        token: None,
    };
    let temporary = temporary_credentials(
        &daemon.http,
        &provider_name,
        &endpoints,
        &keys,
        &loopback.redirect_uri,
    )
    .await?;
    let url = authorization_url(&endpoints, &provider_name, &temporary)?;
    daemon
        .audit
        .record("login_started", Some(&name), Some(peer), None);
    let result = LoginStartResult {
        login_id,
        authorization_url: Some(url.to_string()),
        start_url: Some(loopback.start_url.to_string()),
        verification_uri: None,
        verification_uri_complete: None,
        user_code: None,
        expires_in: timeout.as_secs(),
    };
    let expect = callback::Expect {
        state: temporary.token.expose_secret().to_owned(),
        issuer: None,
        iss_required: false,
        authorization_url: url,
        credential: name,
        params: callback::CallbackParams::OAUTH1,
    };
    let daemon = Arc::clone(daemon);
    tokio::spawn(async move {
        let mut left = false;
        let called_back = tokio::select! {
            () = cancel.notified() => {
                left = true;
                Err(cancelled(&credential))
            }
            waited = tokio::time::timeout(timeout, loopback.wait(expect)) => {
                waited.unwrap_or_else(|_| Err(timed_out(&credential, timeout)))
            }
        };
        let outcome = match called_back {
            Err(e) => Err(e),
            Ok(callback::Code(verifier)) => {
                let keys = Keys {
                    method,
                    consumer_key: &credential.config.client_id,
                    client: &key,
                    token: Some((&temporary.token, &temporary.secret)),
                };
                match token_credentials(&daemon.http, &provider_name, &endpoints, &keys, &verifier)
                    .await
                {
                    Ok(token) => crate::oauth1::store(&daemon, &session, &credential, token)
                        .await
                        .map(|()| LoginResult {
                            credential: credential.config.name.clone(),
                            subject: None,
                            scope: String::new(),
                            refresh_token: false,
                            token_credentials: true,
                        }),
                    Err(e) => Err(e),
                }
            }
        };
        report(&daemon, &credential, outcome, tx, registered, left).await;
    });
    Ok(result)
}
