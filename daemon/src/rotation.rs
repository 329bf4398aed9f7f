//! Client-secret rotation: `credential.set_secret` stores a new client
//! secret and keeps the one it replaces until the new one has worked once.
//! Token requests go through [`with_client_secret`]: the newest secret
//! first; when the provider refuses the client (`invalid_client`) and a
//! previous secret is kept, once more with that one (warned and audited).
//! The newest secret's first success drops the previous one.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::state::{Daemon, Peer, Session};
use crate::vault::{Credential, SecretAges};
use latchkey_client::protocol::*;
use secrecy::{ExposeSecret, SecretString};
use std::future::Future;
use std::sync::Arc;

impl Handler for CredentialSetSecret {
    type Reply = CredentialInfo;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: SetSecretParams,
    ) -> Result<CredentialInfo, ApiError> {
        let session = daemon.session()?;
        let name = params.name.as_str();
        let (credential, _) = session.lookup(name)?;
        if credential.config.auth == AuthMethod::None {
            return Err(ApiError::invalid_params(format!(
                "credential '{name}' is a public client (auth none): it has no client secret to replace"
            )));
        }
        if params.client_secret.expose_secret().is_empty() {
            return Err(ApiError::invalid_params(
                "the client secret is empty; give the new secret the provider issued",
            ));
        }
        // No refresh of this credential is out with the old secret while
        // the secrets change; read the credential again inside the gate.
        let gate = session.gate(&credential.id);
        let _no_request_meanwhile = gate.lock().await;
        let (credential, _) = session.lookup(name)?;
        let rotated = Arc::clone(&credential);
        let ages = session
            .with_vault(move |keys, vault| {
                vault.rotate_client_secret(keys, &rotated, &params.client_secret, params.drop_old)
            })
            .await?;
        let updated = Arc::new(Credential {
            secret_ages: ages,
            has_client_secret: true,
            ..(*credential).clone()
        });
        replace(&session, Arc::clone(&updated), |_| true);
        // A backoff after the old secret's refusal must not delay the new one.
        session.tokens.clear_backoff(&credential.id);
        let kept = if ages.previous.is_some() {
            "the previous secret is kept until this one works"
        } else {
            "no previous secret is kept"
        };
        daemon.audit.record(
            "client_secret_set",
            Some(name),
            Some(&peer),
            Some(kept.into()),
        );
        let catalog = session.catalog();
        let entries = session.tokens.describe(&updated.id, daemon.clock.now());
        Ok(crate::manage::credential_info(
            daemon, &catalog, &updated, &session, entries,
        ))
    }
}

/// Runs a request that authenticates the client (a token request) with
/// the credential's newest client secret, falling back on the previous one
/// as the module says. The secrets are opened for this request only.
pub(crate) async fn with_client_secret<T, Fut>(
    daemon: &Daemon,
    session: &Session,
    credential: &Credential,
    request: impl Fn(Option<SecretString>) -> Fut,
) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    let ages = credential.secret_ages;
    if ages.previous.is_none() {
        let result = request(session.client_secret(credential).await?).await;
        if result.is_ok() && !ages.worked {
            worked(daemon, session, credential).await;
        }
        return result;
    }
    let secrets = session.client_secrets(credential).await?;
    let refused = match request(secrets.current).await {
        Ok(value) => {
            worked(daemon, session, credential).await;
            return Ok(value);
        }
        Err(e) if e.client_rejected => e,
        Err(e) => return Err(e),
    };
    let name = &credential.config.name;
    tracing::warn!(credential = %name, "the provider refused the newest client secret; trying the previous one, kept since the rotation");
    match request(secrets.previous).await {
        Ok(value) => {
            daemon.audit.record(
                "client_secret_fallback",
                Some(name),
                None,
                Some("the newest client secret was refused (invalid_client); the previous one worked".into()),
            );
            Ok(value)
        }
        Err(_) => Err(ApiError {
            message: format!(
                "{}; the previous client secret, kept since the rotation, was refused too",
                refused.message
            ),
            ..refused
        }),
    }
}

/// The newest secret worked: it alone is kept from now on.
async fn worked(daemon: &Daemon, session: &Session, credential: &Credential) {
    let id = credential.id.clone();
    let set_at = credential.secret_ages.set_at;
    if let Err(e) = session
        .with_vault(move |_, vault| vault.client_secret_worked(&id, set_at))
        .await
    {
        tracing::warn!(credential = %credential.config.name, "could not record that the new client secret works: {e}");
        return;
    }
    let had_previous = credential.secret_ages.previous.is_some();
    let ages = SecretAges {
        worked: true,
        previous: None,
        ..credential.secret_ages
    };
    // Only if no rotation came in between (the catalog's secret is the
    // one that worked), checked and replaced under one lock.
    let updated = Arc::new(Credential {
        secret_ages: ages,
        ..credential.clone()
    });
    let replaced = replace(session, updated, |c| c.secret_ages.set_at == set_at);
    if !replaced {
        return;
    }
    if had_previous {
        daemon.audit.record(
            "client_secret_proven",
            Some(&credential.config.name),
            None,
            Some("the newest client secret worked; the previous one is forgotten".into()),
        );
    }
}

/// Puts `updated` into the catalog in place of the credential it updates,
/// when the catalog still holds that one and `still` holds of it; true
/// when it did.
fn replace(
    session: &Session,
    updated: Arc<Credential>,
    still: impl Fn(&Credential) -> bool,
) -> bool {
    let mut catalog = session.catalog_mut();
    let name = &updated.config.name;
    let current = catalog
        .credentials
        .get(name)
        .is_some_and(|c| c.id == updated.id && still(c));
    if current {
        catalog.credentials.insert(name.clone(), updated);
    }
    current
}
