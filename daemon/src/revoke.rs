//! Revocation and incident response: `token.revoke` revokes a credential's
//! refresh and access tokens at the provider (RFC 7009) and forgets them;
//! `credential.remove` revokes first; `vault.panic` revokes everything it
//! holds (or one provider's), drops every cache and locks the vault.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::lifecycle;
use crate::manage;
use crate::oauth::user;
use crate::state::{Daemon, Peer, Session};
use crate::vault::fleet::Change;
use crate::vault::{Credential, Provider};
use latchkey_client::protocol::{
    CredentialRemove, CredentialState, Empty, ErrorKind, Method, PanicEntry, PanicParams,
    PanicResult, RemoveParams, RevokeParams, RevokeResult, TokenRevoke, VaultPanic,
};
use oauth2::{AccessToken, RefreshToken, StandardRevocableToken};
use secrecy::ExposeSecret;
use std::sync::Arc;

/// Revokes a credential's tokens at the provider (unless `local_only`)
/// and forgets them.
impl Handler for TokenRevoke {
    type Reply = RevokeResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: RevokeParams,
    ) -> Result<RevokeResult, ApiError> {
        let session = daemon.session()?;
        let (credential, provider) = session.lookup(&params.credential)?;
        if !params.local_only {
            // Rate limit: a revocation reaches the provider.
            let name = &credential.config.name;
            daemon.limits.provider(&peer, name, TokenRevoke::NAME)?;
        }
        let result =
            revoke_credential(daemon, &session, &credential, &provider, params.local_only).await?;
        daemon.audit.record(
            "revoked",
            Some(&credential.config.name),
            Some(&peer),
            Some(if params.local_only {
                "local only".into()
            } else {
                result.revoked.join(",")
            }),
        );
        Ok(result)
    }
}

/// Revokes at the provider first (unless `local_only`), then deletes the
/// credential and everything it holds.
impl Handler for CredentialRemove {
    type Reply = Empty;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: RemoveParams,
    ) -> Result<Empty, ApiError> {
        let session = daemon.session()?;
        if let Ok((credential, provider)) = session.lookup(&params.name) {
            let has_something = session.grant(&credential.id).is_some()
                || !session.tokens.peek(&credential.id).is_empty();
            if has_something {
                if !params.local_only {
                    // Rate limit: the revocation reaches the provider.
                    let name = &params.name;
                    daemon
                        .limits
                        .provider(&peer, name, CredentialRemove::NAME)?;
                }
                revoke_credential(daemon, &session, &credential, &provider, params.local_only)
                        .await
                        .map_err(|e| {
                            ApiError::new(
                                e.kind,
                                format!("{e}; the credential was not removed (use --local-only to remove it without revoking)"),
                            )
                        })?;
            }
        }
        manage::credential_delete(daemon, &peer, &params.name).await
    }
}

/// Revokes the refresh token (which at most providers also ends the
/// access tokens of the grant) and every cached access token, then
/// forgets them durably. Nothing is forgotten when revocation fails,
/// unless `local_only`.
async fn revoke_credential(
    daemon: &Daemon,
    session: &Session,
    credential: &Credential,
    provider: &Provider,
    local_only: bool,
) -> Result<RevokeResult, ApiError> {
    let gate = session.gate(&credential.id);
    let _no_refresh_meanwhile = gate.lock().await;
    // A shared vault: no sibling refreshes meanwhile either, and the
    // refresh token revoked is the fleet's newest.
    let fleet_lock = crate::fleet::lock_and_read(daemon, session, credential, None).await?;
    let grant = session.grant(&credential.id);
    let mut revoked = Vec::new();
    let held_refresh = grant.as_ref().and_then(|g| g.refresh_token.clone());
    let held_access = session.tokens.peek(&credential.id);
    let anything_held = held_refresh.is_some() || !held_access.is_empty();
    if !local_only && anything_held {
        if provider.config.endpoints.revocation_endpoint.is_none() {
            return Err(no_revocation_endpoint(&provider.config.name));
        }
        let auth = crate::rotation::client_auth(daemon, session, credential, provider).await?;
        let client = user::client(provider, credential, &auth)?;
        if let Some(rt) = held_refresh {
            let token = StandardRevocableToken::RefreshToken(RefreshToken::new(
                rt.expose_secret().to_owned(),
            ));
            user::revoke(&daemon.http, provider, &client, token).await?;
            revoked.push("refresh_token".to_owned());
        }
        let refresh_revoked = !revoked.is_empty();
        for token in held_access {
            let token = StandardRevocableToken::AccessToken(AccessToken::new(
                token.reply.access_token.expose_secret().to_owned(),
            ));
            match user::revoke(&daemon.http, provider, &client, token).await {
                Ok(()) if !revoked.iter().any(|r| r == "access_token") => {
                    revoked.push("access_token".to_owned())
                }
                Ok(()) => {}
                // The grant is gone at the provider already (RFC 7009
                // §2.1: revoking a refresh token should end its access
                // tokens too); keeping it here would help no one.
                Err(e) if refresh_revoked => {
                    tracing::warn!(credential = %credential.config.name, "access token not confirmed revoked: {e}")
                }
                Err(e) => return Err(e),
            }
        }
    }
    let forgotten = session.tokens.take(&credential.id).len() as u32 + u32::from(grant.is_some());
    session.set_grant(&credential.id, None);
    let state = CredentialState::initial(credential.config.grant);
    let id = credential.id.clone();
    session
        .with_vault(move |_, vault| vault.drop_grant(&id, state))
        .await?;
    if let Some((lock, _)) = fleet_lock {
        crate::fleet::release(Some(lock)).await;
        daemon
            .tell_fleet(Change::Grant(credential.id.clone()))
            .await;
    }
    Ok(RevokeResult { revoked, forgotten })
}

/// The leaked-credentials playbook: revoke every token held (or one
/// provider's), forget them, drop all caches, lock the vault.
impl Handler for VaultPanic {
    type Reply = PanicResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: PanicParams,
    ) -> Result<PanicResult, ApiError> {
        let session = daemon.session()?;
        let targets: Vec<(Arc<Credential>, Arc<Provider>)> = {
            let catalog = session.catalog();
            if let Some(p) = &params.provider {
                if !catalog.providers().contains_key(p) {
                    return Err(ApiError::no_provider(p));
                }
            }
            catalog
                .credentials
                .values()
                .filter(|c| !c.corrupt)
                .filter_map(|c| {
                    let provider = catalog.provider_by_id(&c.config.provider_id)?;
                    let selected = params
                        .provider
                        .as_ref()
                        .is_none_or(|p| &provider.config.name == p);
                    selected.then(|| (Arc::clone(c), Arc::clone(provider)))
                })
                .collect()
        };
        // No refresh or login starts committing from now on: what panic
        // revokes stays revoked (those already committing hold their
        // credential's gate, which the revocation waits for).
        session.stop_commits();
        // Revoke at every provider at once: in an incident, minutes count.
        // Boxed as `Send` explicitly: join_all over borrowed async fns
        // otherwise trips rustc's higher-ranked Send inference.
        let mut revocations: Vec<futures::future::BoxFuture<'_, PanicEntry>> = Vec::new();
        for (credential, provider) in targets {
            revocations.push(Box::pin(panic_one(
                daemon,
                Arc::clone(&session),
                credential,
                provider,
            )));
        }
        let mut entries = futures::future::join_all(revocations).await;
        entries.sort_by(|a, b| a.credential.cmp(&b.credential));
        drop(session);
        let locked = lifecycle::lock_held(daemon, "panic").await;
        // A shared vault: the fleet's other daemons drop their caches and lock too.
        daemon.tell_fleet(Change::Panic).await;
        daemon.audit.record(
            "panic",
            None,
            Some(&peer),
            Some(format!(
                "{} credential(s), provider {:?}",
                entries.len(),
                params.provider
            )),
        );
        Ok(PanicResult {
            credentials: entries,
            locked,
        })
    }
}

async fn panic_one(
    daemon: &Daemon,
    session: Arc<Session>,
    credential: Arc<Credential>,
    provider: Arc<Provider>,
) -> PanicEntry {
    match revoke_credential(daemon, &session, &credential, &provider, false).await {
        Ok(r) => PanicEntry {
            credential: credential.config.name.clone(),
            revoked: r.revoked,
            error: None,
        },
        Err(e) => {
            // Forget it here anyway: nothing stays usable locally.
            let _ = revoke_credential(daemon, &session, &credential, &provider, true).await;
            PanicEntry {
                credential: credential.config.name.clone(),
                revoked: Vec::new(),
                error: Some(e.message),
            }
        }
    }
}

/// Nothing can be revoked at a provider without an RFC 7009 endpoint. The
/// fix is the endpoint; `--local-only` is named only as what it is: the
/// choice that leaves the tokens live at the provider.
fn no_revocation_endpoint(provider: &str) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidRequest,
        format!(
            "provider '{provider}' has no revocation endpoint, so nothing was revoked and its tokens stay valid there until they expire; \
             if the provider has an RFC 7009 endpoint (see its documentation), configure it with \
             `latchkey provider add {provider} --revocation-endpoint URL` (on a provider added anew), \
             or revoke the app's access in the provider's account settings; \
             `--local-only` forgets the tokens here only and leaves them live at the provider"
        ),
    )
}

#[cfg(test)]
mod no_endpoint_tests {
    use super::*;

    #[test]
    fn the_fix_is_the_revocation_endpoint_and_local_only_is_named_for_what_it_leaves() {
        let message = no_revocation_endpoint("gh").message;
        assert!(
            message.contains("latchkey provider add gh --revocation-endpoint URL"),
            "{message}"
        );
        assert!(
            message.contains(
                "`--local-only` forgets the tokens here only and leaves them live at the provider"
            ),
            "{message}"
        );
        assert!(message.contains("stay valid"), "{message}");
    }
}
