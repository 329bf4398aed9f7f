//! OAuth 1.0a verbs: `oauth1.sign` (the `Authorization` header for one
//! request, through the same app policy as `token.get`; the first
//! signature for each app audited like a token issuance) and
//! `oauth1.import_token` (token credentials from elsewhere, stored sealed
//! as a login would). Also the opened signing key and the commit that a
//! three-legged login (`login/oauth1.rs`) shares.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::oauth::oauth1::TokenCredentials;
use crate::oauth::oauth1_sign::{authorize, rsa_key, ClientKey, Keys, Request};
use crate::state::{Daemon, Peer, Session};
use crate::vault::{Credential, Grant, Oauth1Token};
use latchkey_client::protocol::*;
use secrecy::ExposeSecret;
use std::sync::Arc;

/// 64: apps remembered per credential for "first signature"; past it the
/// list starts again (a few more audit rows, never fewer).
const MAX_REMEMBERED_APPS: usize = 64;

impl Handler for Oauth1Sign {
    type Reply = Oauth1SignResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: Oauth1SignParams,
    ) -> Result<Oauth1SignResult, ApiError> {
        let session = daemon.session()?;
        let (credential, _) = session.lookup(&params.credential)?;
        let name = &credential.config.name;
        require_oauth1(&credential)?;
        if credential.config.access == Access::Ask {
            crate::apps::authorize(daemon, &session, &peer, &credential, &[]).await?;
        }
        if !credential.config.step_up.is_off() {
            crate::stepup::check_or_wait(daemon, &session, &credential, None).await?;
        }
        let Some(token) = session.grant(&credential.id).and_then(|g| g.oauth1) else {
            return Err(ApiError::new(
                ErrorKind::ReauthRequired,
                format!("credential '{name}' has no token credentials yet: run `latchkey login {name}`, or import them with `latchkey credential import-token {name}`"),
            ));
        };
        let (method, key) = client_key(&session, &credential).await?;
        let authorization = authorize(
            &Keys {
                method,
                consumer_key: &credential.config.client_id,
                client: &key,
                token: Some((&token.token, &token.secret)),
            },
            &Request {
                method: &params.method,
                url: &params.url,
                form: &params.form,
                callback: None,
                verifier: None,
            },
        )?;
        if first_for_app(&session, &credential, peer.caller.issue_key()) {
            daemon.audit.record(
                "oauth1_signed",
                Some(name),
                Some(&peer),
                Some(method.as_str().to_owned()),
            );
        }
        Ok(Oauth1SignResult { authorization })
    }
}

impl Handler for Oauth1ImportToken {
    type Reply = CredentialInfo;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: Oauth1ImportParams,
    ) -> Result<CredentialInfo, ApiError> {
        let session = daemon.session()?;
        let (credential, _) = session.lookup(&params.credential)?;
        require_oauth1(&credential)?;
        if params.token.expose_secret().is_empty() || params.token_secret.expose_secret().is_empty()
        {
            return Err(ApiError::invalid_params(
                "the token and the token secret must both be given (two lines on stdin: the token, then its secret)",
            ));
        }
        let token = TokenCredentials {
            token: params.token,
            secret: params.token_secret,
        };
        store(daemon, &session, &credential, token).await?;
        daemon.audit.record(
            "oauth1_token_imported",
            Some(&credential.config.name),
            Some(&peer),
            None,
        );
        let catalog = session.catalog();
        let entries = session.tokens.describe(&credential.id, daemon.clock.now());
        Ok(crate::manage::credential_info(
            daemon,
            &catalog,
            &credential,
            &session,
            entries,
        ))
    }
}

/// Refuses credentials that are not OAuth 1.0a ones, naming what to use.
fn require_oauth1(credential: &Credential) -> Result<(), ApiError> {
    let name = &credential.config.name;
    if credential.corrupt {
        return Err(ApiError::new(
            ErrorKind::VaultCorrupt,
            format!("credential '{name}' failed its integrity check: remove it and add it again"),
        ));
    }
    if credential.config.grant != GrantType::Oauth1 {
        return Err(ApiError::invalid_params(format!(
            "credential '{name}' is an OAuth 2 credential: it has access tokens, not signatures; run `latchkey token {name}`"
        )));
    }
    Ok(())
}

/// The credential's signature method and its signing key, opened from
/// the vault for one use.
pub(crate) async fn client_key(
    session: &Session,
    credential: &Credential,
) -> Result<(SignatureMethod, ClientKey), ApiError> {
    let name = &credential.config.name;
    let corrupt = || {
        ApiError::new(
            ErrorKind::VaultCorrupt,
            format!("credential '{name}' has no usable signing key: remove it and add it again"),
        )
    };
    let method = credential.config.signature_method.ok_or_else(corrupt)?;
    let secret = session
        .client_secret(credential)
        .await?
        .ok_or_else(corrupt)?;
    let key = if method.is_rsa() {
        ClientKey::Rsa(Box::new(rsa_key(&secret).map_err(|_| corrupt())?))
    } else {
        ClientKey::Secret(secret)
    };
    Ok((method, key))
}

/// Commits token credentials durably in place of the credential's grant,
/// then makes them its state.
pub(crate) async fn store(
    daemon: &Daemon,
    session: &Arc<Session>,
    credential: &Credential,
    token: TokenCredentials,
) -> Result<(), ApiError> {
    // From here until the commit: a lock waits for it.
    let _until_committed = session.begin_commit(&credential.config.name)?;
    let grant = Grant {
        refresh_token: None,
        scope: String::new(),
        subject: None,
        oauth1: Some(Arc::new(Oauth1Token {
            token: token.token,
            secret: token.secret,
        })),
    };
    let gate = session.gate(&credential.id);
    let _one_at_a_time = gate.lock().await;
    if !daemon.is_current(session) {
        return Err(ApiError::locked());
    }
    let (id, stored) = (credential.id.clone(), grant.clone());
    session
        .with_vault(move |keys, vault| {
            vault.commit_grant(keys, &id, Some(&stored), None, CredentialState::Ready)
        })
        .await?;
    session.set_grant(&credential.id, Some(grant));
    Ok(())
}

/// Whether this is the app's first signature from the credential in this session.
fn first_for_app(session: &Session, credential: &Credential, app: u64) -> bool {
    let mut signed = crate::sync::lock(&session.oauth1_signed_for);
    let apps = signed.entry(credential.id.clone()).or_default();
    if apps.contains(&app) {
        return false;
    }
    if apps.len() >= MAX_REMEMBERED_APPS {
        apps.clear();
    }
    apps.push(app);
    true
}
