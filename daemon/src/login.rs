//! User logins, run by the daemon so that the refresh token never leaves it:
//! `login.start` prepares a browser login (authorization code + PKCE with a
//! loopback redirect) or a device login (RFC 8628) and returns what the
//! user must do; the login finishes in its own task; `login.wait` waits
//! for its outcome. A finished login is committed durably (grant and first
//! access token in one transaction) before anyone is told.

use crate::callback;
use crate::error::ApiError;
use crate::handler::Handler;
use crate::oauth::{user, Granted};
use crate::state::{Daemon, LoginOutcome, Peer, Session};
use crate::token::received;
use crate::vault::{crypto::random_id, Credential, Grant, Provider};
use latchkey_client::protocol::{
    CredentialState, ErrorKind, GrantType, LoginResult, LoginStart, LoginStartParams,
    LoginStartResult, LoginWait, LoginWaitParams,
};
use oauth2::RedirectUrl;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a login waits for the user unless told otherwise.
const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_LOGIN_TIMEOUT: Duration = Duration::from_secs(3600);

/// Prepares the login, starts the task that finishes it, and returns what
/// the user must do.
impl Handler for LoginStart {
    type Reply = LoginStartResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: LoginStartParams,
    ) -> Result<LoginStartResult, ApiError> {
        let session = daemon.session()?;
        let (credential, provider) = session.lookup(&params.credential)?;
        let name = credential.config.name.clone();
        if credential.config.grant == GrantType::ClientCredentials {
            return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("credential '{name}' uses the client_credentials grant and needs no login: `latchkey token {name}` works as it is"),
                ));
        }
        let timeout = params
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LOGIN_TIMEOUT)
            .clamp(Duration::from_secs(5), MAX_LOGIN_TIMEOUT);
        let secret = session.client_secret(&credential).await?;
        let client = user::client(&provider, &credential, secret.as_ref())?;
        let scopes = credential.config.scopes.clone();
        let login_id = random_id();
        let (tx, rx) = watch::channel::<LoginOutcome>(None);
        daemon.logins().insert(login_id.clone(), rx);
        daemon
            .audit
            .record("login_started", Some(&name), Some(peer.pid), None);
        let task_daemon = Arc::clone(daemon);
        let device = params.device || credential.config.grant == GrantType::DeviceCode;
        if device {
            let details =
                user::device_authorize(&daemon.http, &provider, &credential, &client, &scopes)
                    .await?;
            let expires_in = details.expires_in().as_secs();
            let result = LoginStartResult {
                login_id,
                authorization_url: None,
                verification_uri: Some(details.verification_uri().to_string()),
                verification_uri_complete: details
                    .verification_uri_complete()
                    .map(|u| u.secret().clone()),
                user_code: Some(details.user_code().secret().clone()),
                expires_in,
            };
            let limit = timeout.min(Duration::from_secs(expires_in.max(1)));
            tokio::spawn(async move {
                let daemon = task_daemon;
                let outcome = match user::device_poll(
                    &daemon.http,
                    &provider,
                    &credential,
                    &client,
                    &details,
                    limit,
                )
                .await
                {
                    Ok(granted) => {
                        finish(&daemon, &session, &credential, &provider, granted, None).await
                    }
                    // Our own deadline ended it, not the provider's code expiry.
                    Err(e)
                        if e.kind == ErrorKind::ReauthRequired && limit.as_secs() < expires_in =>
                    {
                        Err(timed_out(&credential, limit))
                    }
                    Err(e) => Err(e),
                };
                report(&daemon, &credential, outcome, tx);
            });
            return Ok(result);
        }
        let loopback = callback::bind(credential.config.redirect_uri.as_deref()).await?;
        let redirect =
            RedirectUrl::new(loopback.redirect_uri.to_string()).map_err(ApiError::internal)?;
        let request = user::authorization_request(&provider, &client, &scopes, &redirect)?;
        let result = LoginStartResult {
            login_id,
            authorization_url: Some(request.url.to_string()),
            verification_uri: None,
            verification_uri_complete: None,
            user_code: None,
            expires_in: timeout.as_secs(),
        };
        let state = request.state.secret().clone();
        let issuer = provider.config.issuer.clone();
        tokio::spawn(async move {
            let daemon = task_daemon;
            let outcome = match tokio::time::timeout(timeout, loopback.wait(state, issuer)).await {
                Err(_) => Err(timed_out(&credential, timeout)),
                Ok(Err(e)) => Err(e),
                Ok(Ok(callback::Code(code))) => {
                    match user::exchange_code(
                        &daemon.http,
                        &provider,
                        &credential,
                        &client,
                        code,
                        request.pkce_verifier,
                        &redirect,
                    )
                    .await
                    {
                        Ok(granted) => {
                            finish(
                                &daemon,
                                &session,
                                &credential,
                                &provider,
                                granted,
                                request.nonce,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            report(&daemon, &credential, outcome, tx);
        });
        Ok(result)
    }
}

/// Waits for a started login's outcome.
impl Handler for LoginWait {
    type Reply = LoginResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        params: LoginWaitParams,
    ) -> Result<LoginResult, ApiError> {
        let rx = daemon.logins().get(&params.login_id).cloned();
        let Some(mut rx) = rx else {
            return Err(ApiError::new(
                    ErrorKind::NotFound,
                    "no such login in progress (it finished, timed out, or the daemon restarted); run `latchkey login NAME` again",
                ));
        };
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ApiError::internal("the login task ended without an outcome"))?
            .clone()
            .expect("waited for Some");
        daemon.logins().remove(&params.login_id);
        outcome
    }
}

fn report(
    daemon: &Daemon,
    credential: &Credential,
    outcome: Result<LoginResult, ApiError>,
    tx: watch::Sender<LoginOutcome>,
) {
    match &outcome {
        Ok(r) => daemon.audit.record(
            "login",
            Some(&credential.config.name),
            None,
            r.subject.as_ref().map(|s| format!("sub={s}")),
        ),
        Err(e) => {
            tracing::warn!(credential = %credential.config.name, "login failed: {e}");
            daemon.audit.record(
                "login_failed",
                Some(&credential.config.name),
                None,
                Some(e.kind.to_string()),
            );
        }
    }
    let _ = tx.send(Some(outcome));
}

/// Validates the ID token (when OIDC), then commits grant and first
/// access token durably, then makes them the credential's state.
async fn finish(
    daemon: &Daemon,
    session: &Arc<Session>,
    credential: &Credential,
    provider: &Provider,
    granted: Granted,
    nonce: Option<String>,
) -> Result<LoginResult, ApiError> {
    // From here until the commit: a lock waits for it.
    let _until_committed = session.begin_commit(&credential.config.name)?;
    let scopes = &credential.config.scopes;
    let wants_oidc = scopes.iter().any(|s| s == "openid");
    let subject = match (&granted.id_token, wants_oidc) {
        (Some(id_token), _) => Some(
            user::verify_id_token(
                &daemon.http,
                provider,
                &credential.config.client_id,
                id_token,
                nonce.as_deref(),
            )
            .await?,
        ),
        (None, true) => {
            tracing::warn!(credential = %credential.config.name, "openid was requested but the provider sent no ID token");
            None
        }
        (None, false) => None,
    };
    let grant = Grant {
        refresh_token: granted.refresh_token.map(Arc::new),
        scope: granted
            .access
            .scope
            .clone()
            .unwrap_or_else(|| scopes.join(" ")),
        subject: subject.clone(),
    };
    let token = received(granted.access, scopes, daemon.clock.now());
    let result = LoginResult {
        credential: credential.config.name.clone(),
        subject,
        scope: grant.scope.clone(),
        refresh_token: grant.refresh_token.is_some(),
    };
    let gate = session.gate(&credential.id);
    let _no_refresh_meanwhile = gate.lock().await;
    if !daemon.is_current(session) {
        return Err(ApiError::locked());
    }
    let key = (credential.id.clone(), scopes.join(" "));
    let (id, stored_key, stored, stored_grant) = (
        credential.id.clone(),
        key.clone(),
        token.copy(),
        grant.clone(),
    );
    session
        .with_vault(move |keys, vault| {
            vault.commit_grant(
                keys,
                &id,
                Some(&stored_grant),
                Some((&stored_key, &stored)),
                CredentialState::Ready,
            )
        })
        .await?;
    session.set_grant(&credential.id, Some(grant));
    session.tokens.forget(&credential.id);
    session.tokens.insert(key, token);
    Ok(result)
}

fn timed_out(credential: &Credential, after: Duration) -> ApiError {
    let name = &credential.config.name;
    ApiError::new(
        ErrorKind::ReauthRequired,
        format!(
            "the login of credential '{name}' timed out after {} s; run `latchkey login {name}` again",
            after.as_secs()
        ),
    )
}
