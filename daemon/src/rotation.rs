//! Client-secret rotation: `credential.set_secret` stores a new client
//! secret and keeps the one it replaces until the new one has worked once.
//! Token requests go through [`with_client_auth`]: the newest secret
//! first; when the provider refuses the client (`invalid_client`) and a
//! previous secret is kept, once more with that one (warned and audited).
//! The newest secret's first success drops the previous one.
//!
//! A `private_key_jwt` credential's keys overlap the same way while the
//! provider learns the new JWKS (`credential.rotate_key`): the newest key
//! first, older ones after an `invalid_client`; `--retire-old` ends it.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::oauth::client_auth::{Assertion, ClientAuth, Proofs};
use crate::state::{Daemon, Peer, Session};
use crate::vault::jose::SigningKey;
use crate::vault::keys::KeyPurpose;
use crate::vault::{Credential, Provider, SecretAges};
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

/// A credential's keys, split by purpose: client keys newest first, and
/// its DPoP key. No vault read for a credential that has none.
async fn keys(
    session: &Session,
    credential: &Credential,
) -> Result<(Vec<Arc<SigningKey>>, Option<Arc<SigningKey>>), ApiError> {
    if credential.config.auth != AuthMethod::PrivateKeyJwt && !credential.config.dpop {
        return Ok((Vec::new(), None));
    }
    let mut client = Vec::new();
    let mut dpop = None;
    for stored in session.credential_keys(credential).await?.into_iter().rev() {
        match stored.purpose {
            KeyPurpose::Client => client.push(Arc::new(stored.key)),
            KeyPurpose::Dpop => dpop = dpop.or(Some(Arc::new(stored.key))),
        }
    }
    let name = &credential.config.name;
    if credential.config.auth == AuthMethod::PrivateKeyJwt && client.is_empty() {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("credential '{name}' authenticates with a key (private_key_jwt) but holds none: add one with `latchkey credential rotate-key {name}` and register it with the provider"),
        ));
    }
    if credential.config.dpop && dpop.is_none() {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("credential '{name}' binds its tokens with DPoP but holds no DPoP key: add the credential again with --dpop"),
        ));
    }
    Ok((client, dpop))
}

/// The proofs for one client key (or none) and the DPoP key.
fn proofs(
    daemon: &Daemon,
    provider: &Provider,
    credential: &Credential,
    client_key: Option<&Arc<SigningKey>>,
    dpop: Option<&Arc<SigningKey>>,
) -> Result<Proofs, ApiError> {
    let assertion = match client_key {
        None => None,
        Some(key) => Some(Assertion {
            key: Arc::clone(key),
            client_id: credential.config.client_id.clone(),
            audience: assertion_audience(provider, credential)?,
        }),
    };
    Ok(Proofs {
        assertion,
        dpop: dpop.cloned(),
        nonces: Arc::clone(&daemon.dpop_nonces),
        clock: daemon.clock,
    })
}

/// RFC 7523 §3: the token endpoint's URL, or the issuer where the
/// credential says the provider wants that.
fn assertion_audience(provider: &Provider, credential: &Credential) -> Result<String, ApiError> {
    let p = &provider.config;
    let audience = match credential.config.assertion_audience {
        AssertionAudience::TokenEndpoint => p.endpoints.token_endpoint.clone(),
        AssertionAudience::Issuer => p.issuer.clone(),
    };
    audience.ok_or_else(|| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!(
                "provider '{}' has no {}, which credential '{}' names as its client assertions' audience: add the provider by its issuer, or set --assertion-audience {}",
                p.name,
                match credential.config.assertion_audience {
                    AssertionAudience::TokenEndpoint => "token endpoint",
                    AssertionAudience::Issuer => "issuer",
                },
                credential.config.name,
                match credential.config.assertion_audience {
                    AssertionAudience::TokenEndpoint => "issuer",
                    AssertionAudience::Issuer => "token_endpoint",
                },
            ),
        )
    })
}

/// How a credential's client authenticates now: its newest secret or key,
/// and its DPoP key (a login, a revocation).
pub(crate) async fn client_auth(
    daemon: &Daemon,
    session: &Session,
    credential: &Credential,
    provider: &Provider,
) -> Result<ClientAuth, ApiError> {
    let (client, dpop) = keys(session, credential).await?;
    Ok(ClientAuth {
        secret: session.client_secret(credential).await?,
        proofs: proofs(daemon, provider, credential, client.first(), dpop.as_ref())?,
    })
}

/// Runs a request that authenticates the client (a token request) with
/// the credential's newest client secret — or newest client key — falling
/// back on the previous one as the module says. Secrets and keys are
/// opened for this request only.
pub(crate) async fn with_client_auth<T, Fut>(
    daemon: &Daemon,
    session: &Session,
    credential: &Credential,
    provider: &Provider,
    request: impl Fn(ClientAuth) -> Fut,
) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    let (client, dpop) = keys(session, credential).await?;
    let auth = |secret: Option<SecretString>, key: Option<&Arc<SigningKey>>| {
        Ok::<_, ApiError>(ClientAuth {
            secret,
            proofs: proofs(daemon, provider, credential, key, dpop.as_ref())?,
        })
    };
    if credential.config.auth == AuthMethod::PrivateKeyJwt {
        return with_client_key(daemon, credential, &client, |key| async {
            request(auth(None, Some(key))?).await
        })
        .await;
    }
    let ages = credential.secret_ages;
    if ages.previous.is_none() {
        let result = request(auth(session.client_secret(credential).await?, None)?).await;
        if result.is_ok() && !ages.worked {
            worked(daemon, session, credential).await;
        }
        return result;
    }
    let secrets = session.client_secrets(credential).await?;
    let refused = match request(auth(secrets.current, None)?).await {
        Ok(value) => {
            worked(daemon, session, credential).await;
            return Ok(value);
        }
        Err(e) if e.client_rejected => e,
        Err(e) => return Err(e),
    };
    let name = &credential.config.name;
    tracing::warn!(credential = %name, "the provider refused the newest client secret; trying the previous one, kept since the rotation");
    match request(auth(secrets.previous, None)?).await {
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

/// The key rotation's overlap: the newest client key first; when the
/// provider refuses the client (it may not have the new key yet), the
/// older keys in turn, newest first (warned and audited).
async fn with_client_key<'k, T, Fut>(
    daemon: &Daemon,
    credential: &Credential,
    keys: &'k [Arc<SigningKey>],
    request: impl Fn(&'k Arc<SigningKey>) -> Fut,
) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut keys = keys.iter();
    let newest = keys
        .next()
        .expect("keys() refuses a keyed credential without keys");
    let refused = match request(newest).await {
        Err(e) if e.client_rejected => e,
        done => return done,
    };
    let name = &credential.config.name;
    for older in keys {
        tracing::warn!(credential = %name, kid = %older.kid, "the provider refused the newest client key; trying an older one, kept since the rotation (register the new JWKS: `latchkey credential jwks {name}`)");
        if let Ok(value) = request(older).await {
            daemon.audit.record(
                "client_key_fallback",
                Some(name),
                None,
                Some(format!(
                    "the newest client key was refused (invalid_client); the older key {} worked",
                    older.kid
                )),
            );
            return Ok(value);
        }
    }
    Err(refused)
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
