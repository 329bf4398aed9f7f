//! User logins, run by the daemon so that the refresh token never leaves it:
//! `login.start` prepares a browser login (authorization code + PKCE with a
//! loopback redirect) or a device login (RFC 8628) and returns what the
//! user must do; the login finishes in its own task; `login.wait` waits
//! for its outcome. A finished login is committed durably (grant and first
//! access token in one transaction) before anyone is told.
//!
//! Bookkeeping: at most [`MAX_LOGINS`] run at once; each login task owns its
//! registry entry and removes it whatever ends it (success, error, timeout,
//! its waiter leaving, a panic); a waiter that leaves before the outcome
//! cancels the wait for the person, which ends the loopback listener and
//! every one of its connections.

use crate::callback;
use crate::error::ApiError;
use crate::handler::Handler;
use crate::oauth::{user, Granted};
use crate::state::{Daemon, LoginEntry, LoginOutcome, Peer, Session};
use crate::token::received;
use crate::vault::{crypto::random_id, Credential, Grant, Provider};
use latchkey_client::protocol::{
    ErrorKind, GrantType, LoginResult, LoginStart, LoginStartParams, LoginStartResult, LoginWait,
    LoginWaitParams,
};
use oauth2::RedirectUrl;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long a login waits for the user unless told otherwise.
const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(300);
/// 1 h: the longest a person may take; a login holds a port and a task.
const MAX_LOGIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// 8: a person logs in to one or two credentials at a time; more at once
/// is a script gone wrong or a flood, and each login holds a loopback
/// listener, its connections and a task.
pub const MAX_LOGINS: usize = 8;
/// 60 s: how long a finished login's outcome waits for a `login.wait` that
/// has not come yet (a quick browser can finish before the CLI asks).
const UNCLAIMED_OUTCOME_KEPT: Duration = Duration::from_secs(60);

mod oauth1;

/// A login's registry entry, removed when this drops: whatever ends the
/// login task (an outcome, a panic, the runtime shutting down), its entry
/// does not outlive it.
struct Registered {
    daemon: Arc<Daemon>,
    id: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.daemon.logins().remove(&self.id);
    }
}

/// A new login's entry, unless [`MAX_LOGINS`] are in progress.
fn register(
    daemon: &Arc<Daemon>,
) -> Result<(Registered, watch::Sender<LoginOutcome>, Arc<Notify>), ApiError> {
    let mut logins = daemon.logins();
    if logins.len() >= MAX_LOGINS {
        return Err(ApiError::new(
            ErrorKind::RateLimited,
            format!("{MAX_LOGINS} logins are already in progress: finish them, end them (Ctrl-C their `latchkey login`), or wait until they time out, then try again"),
        )
        .with_retry_after(Some(UNCLAIMED_OUTCOME_KEPT.as_secs())));
    }
    let id = random_id();
    let (tx, rx) = watch::channel::<LoginOutcome>(None);
    let cancel = Arc::new(Notify::new());
    logins.insert(
        id.clone(),
        LoginEntry {
            outcome: rx,
            cancel: Arc::clone(&cancel),
        },
    );
    let registered = Registered {
        daemon: Arc::clone(daemon),
        id,
    };
    Ok((registered, tx, cancel))
}

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
        if matches!(
            credential.config.grant,
            GrantType::ClientCredentials | GrantType::TokenExchange
        ) {
            return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("credential '{name}' uses the {} grant and needs no login: `latchkey token {name}` works as it is", credential.config.grant.as_str()),
                ));
        }
        // Rate limits: this credential's login starts, and the app's
        // requests that reach the provider.
        daemon.limits.login(&peer, &credential.id, &name)?;
        let timeout = params
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LOGIN_TIMEOUT)
            .clamp(Duration::from_secs(5), MAX_LOGIN_TIMEOUT);
        if credential.config.grant == GrantType::Oauth1 {
            return oauth1::start(daemon, &peer, session, credential, provider, timeout).await;
        }
        let auth = crate::rotation::client_auth(daemon, &session, &credential, &provider).await?;
        let client = user::client(&provider, &credential, &auth)?;
        let scopes = credential.config.scopes.clone();
        // Registered first, so that a failure below removes it (on drop).
        let (registered, tx, cancel) = register(daemon)?;
        let login_id = registered.id.clone();
        daemon
            .audit
            .record("login_started", Some(&name), Some(&peer), None);
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
                start_url: None,
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
                let mut left = false;
                let polled = tokio::select! {
                    () = cancel.notified() => {
                        left = true;
                        Err(cancelled(&credential))
                    }
                    polled = user::device_poll(
                        &daemon.http,
                        &provider,
                        &credential,
                        &client,
                        &details,
                        limit,
                    ) => polled,
                };
                let outcome = match polled {
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
                report(&daemon, &credential, outcome, tx, registered, left).await;
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
            start_url: Some(loopback.start_url.to_string()),
            verification_uri: None,
            verification_uri_complete: None,
            user_code: None,
            expires_in: timeout.as_secs(),
        };
        let expect = callback::Expect {
            state: request.state.secret().clone(),
            issuer: provider.config.issuer.clone(),
            iss_required: provider.config.iss_parameter_supported,
            authorization_url: request.url.clone(),
            credential: credential.config.name.clone(),
            params: callback::CallbackParams::OAUTH2,
        };
        tokio::spawn(async move {
            let daemon = task_daemon;
            // The listener (and every connection it holds) is dropped when
            // this ends: at the callback, the timeout or a cancel.
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
                Ok(callback::Code(code)) => {
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
            report(&daemon, &credential, outcome, tx, registered, left).await;
        });
        Ok(result)
    }
}

/// Waits for a started login's outcome. A waiter that leaves first (its
/// connection closed: the server drops this future) cancels the login.
impl Handler for LoginWait {
    type Reply = LoginResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        params: LoginWaitParams,
    ) -> Result<LoginResult, ApiError> {
        let found = daemon
            .logins()
            .get(&params.login_id)
            .map(|e| (e.outcome.clone(), Arc::clone(&e.cancel)));
        let Some((mut rx, cancel)) = found else {
            return Err(ApiError::new(
                    ErrorKind::NotFound,
                    "no such login in progress (it finished, timed out, or the daemon restarted); run `latchkey login NAME` again",
                ));
        };
        let mut leaving = CancelOnDrop(Some(cancel));
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ApiError::internal("the login task ended without an outcome"))?
            .clone()
            .expect("waited for Some");
        leaving.0 = None;
        daemon.logins().remove(&params.login_id);
        outcome
    }
}

/// Cancels a login when its waiter goes away before the outcome.
struct CancelOnDrop(Option<Arc<Notify>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            // A stored permit: the login task sees it even if it is not
            // waiting on it at this instant.
            cancel.notify_one();
        }
    }
}

/// Audits the outcome, hands it to the waiters, and keeps it a while for
/// a waiter still to come (unless the waiter left: the login was
/// cancelled); the entry goes when `registered` drops.
async fn report(
    daemon: &Daemon,
    credential: &Credential,
    outcome: Result<LoginResult, ApiError>,
    tx: watch::Sender<LoginOutcome>,
    registered: Registered,
    waiter_left: bool,
) {
    match &outcome {
        // Whose account it is identifies the person: sealed, not in clear.
        Ok(r) => match &r.subject {
            Some(subject) => daemon.audit.record_sealed(
                "login",
                Some(&credential.config.name),
                None,
                None,
                format!("sub={subject}"),
            ),
            None => daemon
                .audit
                .record("login", Some(&credential.config.name), None, None),
        },
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
    // Every receiver is gone once `login.wait` took the entry out; until
    // then (bounded) the outcome waits for it. A cancelled login's waiter
    // is gone already: nobody is to come.
    if !waiter_left {
        let _ = tokio::time::timeout(UNCLAIMED_OUTCOME_KEPT, tx.closed()).await;
    }
    drop(registered);
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
    crate::token::warn_clamped(&credential.config.name, granted.access.expires_in);
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
        oauth1: None,
    };
    let token = received(granted.access, scopes, daemon.clock.now());
    let result = LoginResult {
        credential: credential.config.name.clone(),
        subject,
        scope: grant.scope.clone(),
        refresh_token: grant.refresh_token.is_some(),
        token_credentials: false,
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
    // A shared vault: under the fleet's lock (no sibling's refresh of the
    // old grant commits over this login), and the siblings are told.
    let fleet_lock = crate::fleet::lock_and_read(daemon, session, credential, None)
        .await?
        .map(|(lock, _)| lock);
    crate::fleet::commit(
        session,
        fleet_lock,
        &id,
        Some(stored_grant),
        (stored_key, stored),
    )
    .await?;
    session.set_grant(&credential.id, Some(grant));
    session.tokens.forget(&credential.id);
    session.tokens.insert(key, token);
    Ok(result)
}

fn cancelled(credential: &Credential) -> ApiError {
    let name = &credential.config.name;
    ApiError::new(
        ErrorKind::InvalidRequest,
        format!("the login of credential '{name}' was cancelled: its waiter went away; run `latchkey login {name}` again"),
    )
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
