//! A fleet of daemons sharing one PostgreSQL vault, as the verbs see it:
//! a refresh waits to be the fleet's one refresher of its credential
//! ([`lock_for_refresh`]) and takes a sibling's fresh token instead of
//! asking the provider; what a sibling commits reaches this daemon's
//! memory through the database's notifications ([`follow`]): refreshes
//! and logins (grant and tokens), catalog changes (providers,
//! credentials, rules, app keys), and `panic` and `rekey` (this daemon
//! locks too).
//! The lock and the notifications themselves are `vault/fleet.rs`.

use crate::error::ApiError;
use crate::lifecycle;
use crate::state::{Daemon, Session};
use crate::vault::fleet::{Change, FleetLock};
use crate::vault::{Credential, Grant, Token, TokenKey};
use latchkey_client::protocol::CredentialState;
use secrecy::ExposeSecret;
use std::sync::Arc;

/// What a refresh does on a shared vault, once the fleet's lock is taken.
pub(crate) enum FleetStep {
    /// A sibling daemon refreshed while this one waited: its token.
    Taken(Token),
    /// Refresh, holding the lock until the commit.
    Refresh(Option<FleetLock>),
    /// Not a shared vault.
    Alone,
}

/// On a shared vault: waits to be the fleet's one refresher of
/// `credential`, then re-reads its grant and token. A stored token that
/// lasts and is not one this daemon held when it set out to refresh was
/// a sibling's refresh meanwhile: it is taken, and the provider is not
/// asked. (The one this daemon held is what it means to replace: expired,
/// due, or too short for a caller's `min_ttl`.) The grant read is the newest
/// (the refresh token a sibling rotated), and replaces this daemon's.
pub(crate) async fn lock_for_refresh(
    daemon: &Daemon,
    session: &Session,
    credential: &Credential,
    scopes: &[String],
) -> Result<FleetStep, ApiError> {
    if daemon.fleet.is_none() {
        return Ok(FleetStep::Alone);
    }
    // The tokens this refresh means to replace (or that a caller found
    // short): a stored token that is none of them is a sibling's.
    let replacing = session.tokens.peek(&credential.id);
    let Some((lock, stored)) = lock_and_read(daemon, session, credential, Some(scopes)).await?
    else {
        return Ok(FleetStep::Alone);
    };
    let siblings = stored.filter(|t| {
        !replacing.iter().any(|r| same_token(r, t)) && crate::cache::lasts(t, 0, daemon.clock.now())
    });
    if let Some(token) = siblings {
        release(Some(lock)).await;
        tracing::debug!(credential = %credential.config.name, "another daemon of the fleet refreshed it: its token is taken");
        return Ok(FleetStep::Taken(token));
    }
    Ok(FleetStep::Refresh(Some(lock)))
}

/// On a shared vault: the fleet's lock on `credential` (held until the
/// caller releases or commits it), with this daemon's memory of the
/// grant replaced by the fleet's newest, and the stored token for
/// `scopes` when asked. `None` for a vault file. Waiting for a sibling
/// holds no lock of ours: a `latchkey lock` or a rekey is not held up.
pub(crate) async fn lock_and_read(
    daemon: &Daemon,
    session: &Session,
    credential: &Credential,
    scopes: Option<&[String]>,
) -> Result<Option<(FleetLock, Option<Token>)>, ApiError> {
    let Some(fleet) = daemon.fleet.clone() else {
        return Ok(None);
    };
    let id = credential.id.clone();
    let scope_key = scopes.map(|s| s.join(" "));
    let lock = tokio::task::spawn_blocking(move || fleet.lock(&id))
        .await
        .map_err(ApiError::internal)??;
    let (lock, grant, stored) = session
        .with_keys(move |keys| {
            let mut lock = lock;
            let grant = lock.grant(keys)?;
            let stored = match &scope_key {
                Some(key) => lock.token(keys, key)?,
                None => None,
            };
            Ok((lock, grant, stored))
        })
        .await?;
    session.set_grant(&credential.id, grant);
    Ok(Some((lock, stored)))
}

/// A sibling daemon of the fleet committed a refresh or login of
/// credential `id` (`None`: of any, after missed notifications): take its
/// grant and any token this daemon does not hold yet, so callers here are
/// served without asking anyone.
pub(crate) async fn grant_changed(daemon: &Daemon, id: Option<String>) {
    let Ok(session) = daemon.session() else {
        return;
    };
    let read = session
        .with_vault(move |keys, vault| match &id {
            Some(id) => Ok((
                vec![(id.clone(), vault.load_grant_of(keys, id)?)],
                vault.load_tokens_of(keys, id)?.0,
            )),
            None => {
                let grants = vault.load_grants(keys)?.0;
                let ids: Vec<(String, Option<Grant>)> =
                    grants.into_iter().map(|(id, g)| (id, Some(g))).collect();
                Ok((ids, vault.load_tokens(keys)?.0))
            }
        })
        .await;
    let (grants, tokens) = match read {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!("could not read what another daemon of the fleet committed: {e}");
            return;
        }
    };
    for (id, grant) in grants {
        if grant.is_none() {
            // Dropped by a sibling (revoked, or the provider refused it).
            session.tokens.forget(&id);
        }
        session.set_grant(&id, grant);
    }
    let now = daemon.clock.now();
    for (key, token) in tokens {
        let held = session
            .tokens
            .peek(&key.0)
            .iter()
            .any(|t| same_token(t, &token));
        if !held && crate::cache::lasts(&token, 0, now) {
            session.tokens.insert(key, token);
        }
    }
}

/// Commits a refresh or a login durably, with the credential ready: the
/// grant (when given: a rotated refresh token above all) and the access
/// token in one transaction — the fleet lock's, which the commit ends and
/// announces to the siblings, or the vault's own when there is no lock.
pub(crate) async fn commit(
    session: &Session,
    lock: Option<FleetLock>,
    credential_id: &str,
    grant: Option<Grant>,
    (key, token): (TokenKey, Token),
) -> Result<(), ApiError> {
    let state = CredentialState::Ready;
    match lock {
        Some(lock) => {
            session
                .with_keys(move |keys| {
                    lock.commit(keys, grant.as_ref(), Some((&key, &token)), state)
                })
                .await
        }
        None => {
            let id = credential_id.to_owned();
            session
                .with_vault(move |keys, vault| {
                    vault.commit_grant(keys, &id, grant.as_ref(), Some((&key, &token)), state)
                })
                .await
        }
    }
}

/// Lets a fleet lock go (a rollback: nothing was committed under it), on
/// a blocking thread.
pub(crate) async fn release(lock: Option<FleetLock>) {
    if let Some(lock) = lock {
        let _ = tokio::task::spawn_blocking(move || drop(lock)).await;
    }
}

/// Follows the siblings' changes until the daemon stops (its task is
/// aborted then): their notifications, on a connection of their own;
/// after that connection was lost, everything is read again.
pub(crate) async fn follow(daemon: Arc<Daemon>) {
    let Some(fleet) = daemon.fleet.clone() else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let resync = tx.clone();
    fleet.listen(
        move |change| tx.send(Some(change)).is_ok(),
        move || resync.send(None).is_ok(),
    );
    while let Some(change) = rx.recv().await {
        match change {
            Some(Change::Grant(id)) => grant_changed(&daemon, Some(id)).await,
            Some(Change::Catalog) => catalog_changed(&daemon).await,
            Some(Change::Panic) => {
                tracing::warn!("another daemon of the fleet ran `latchkey panic`: locking");
                lifecycle::lock(&daemon, "panic on another daemon of the fleet").await;
            }
            Some(Change::Rekey) => {
                // This daemon's data key opens nothing any more; what it
                // sealed now, no sibling could read.
                tracing::warn!("another daemon of the fleet changed the data key (`latchkey rekey`): locking; unlock again");
                lifecycle::lock(&daemon, "rekey on another daemon of the fleet").await;
            }
            None => {
                catalog_changed(&daemon).await;
                grant_changed(&daemon, None).await;
            }
        }
    }
}

/// A sibling changed providers, credentials, rules or app keys: read the
/// catalog again; what belonged to a removed credential is forgotten.
async fn catalog_changed(daemon: &Daemon) {
    let Ok(session) = daemon.session() else {
        return;
    };
    let read = session
        .with_vault(|keys, vault| vault.load_catalog(keys))
        .await;
    let catalog = match read {
        Ok((catalog, problems)) => {
            for problem in &problems {
                tracing::warn!("{problem}; it will not be used");
            }
            catalog
        }
        Err(e) => {
            tracing::warn!("could not read the catalog another daemon of the fleet changed: {e}");
            return;
        }
    };
    let gone: Vec<String> = session
        .catalog()
        .credentials
        .values()
        .filter(|c| !catalog.credentials.values().any(|n| n.id == c.id))
        .map(|c| c.id.clone())
        .collect();
    session.replace_catalog(catalog);
    for id in gone {
        session.tokens.forget(&id);
        session.set_grant(&id, None);
    }
}

/// Whether two tokens are the same access token.
fn same_token(a: &Token, b: &Token) -> bool {
    a.reply.access_token.expose_secret() == b.reply.access_token.expose_secret()
}
