//! The token path after dispatch: policy (credential, scopes), the cache,
//! and the token request that runs when the cache cannot answer; plus the
//! proactive refresh the ticker starts.

use crate::error::ApiError;
use crate::manage::normalize_scopes;
use crate::oauth::{grant, user};
use crate::state::{Daemon, GrantState, Peer, Session};
use crate::tokens::{Issued, Key};
use crate::vault::{now, Credential, Provider, StoredGrant, StoredToken};
use futures::future::{BoxFuture, FutureExt};
use latchkey_client::protocol::*;
use secrecy::ExposeSecret;
use std::sync::Arc;

/// Lifetime assumed for a token whose response had no `expires_in`.
/// Conservative: the token is fetched again after this, and callers are
/// told `expires_at: null` (the truth: the provider did not say).
const UNKNOWN_LIFETIME_SECS: i64 = 300;
/// Tokens used within this window are refreshed ahead of expiry.
pub const RECENT_USE_SECS: i64 = 600;

impl Daemon {
    // ----- tokens -----------------------------------------------------------

    /// The token path: policy check, then the cache, which answers from
    /// memory or joins/starts the one token request for this credential.
    pub async fn token_get(
        self: &Arc<Self>,
        params: TokenParams,
        peer: Peer,
    ) -> Result<TokenOut, ApiError> {
        let session = self.session()?;
        let (credential, provider) = self.lookup(&session, &params.credential)?;
        let granted = session.grant(&credential.id).map(|g| g.scope);
        let scopes = requested_scopes(&credential, granted.as_deref(), params.scopes.as_deref())?;
        let key: Key = (credential.id.clone(), scopes.join(" "));
        let now = now();
        let daemon = Arc::clone(self);
        let fetch_session = Arc::clone(&session);
        let hit = session
            .tokens
            .get(
                &key,
                params.min_ttl.unwrap_or(0),
                peer.pid,
                now,
                move || daemon.fetch(fetch_session, credential, provider, scopes),
            )
            .await?;
        if hit.first_issue {
            self.audit.record(
                "token_issued",
                Some(&params.credential),
                Some(peer.pid),
                Some(hit.token.scope.clone()),
            );
        }
        Ok(TokenOut(hit.token))
    }

    /// The future that requests a token from the provider, stores it sealed,
    /// and returns it. Runs in its own task (see `TokenCache::start`).
    fn fetch(
        self: Arc<Self>,
        session: Arc<Session>,
        credential: Arc<Credential>,
        provider: Arc<Provider>,
        scopes: Vec<String>,
    ) -> BoxFuture<'static, Result<Issued, ApiError>> {
        async move {
            let name = credential.config.name.clone();
            let result = self
                .request_token(&session, &credential, &provider, &scopes)
                .await;
            match &result {
                Ok(t) => self.audit.record(
                    "token_fetched",
                    Some(&name),
                    None,
                    Some(format!(
                        "scope={:?} expires_in={}",
                        t.scope,
                        t.effective_expiry - t.obtained_at
                    )),
                ),
                Err(e) => {
                    tracing::warn!(credential = %name, kind = %e.kind, "token request failed: {e}");
                    self.audit
                        .record("token_failed", Some(&name), None, Some(e.kind.to_string()));
                }
            }
            result
        }
        .boxed()
    }

    async fn request_token(
        &self,
        session: &Session,
        credential: &Credential,
        provider: &Provider,
        scopes: &[String],
    ) -> Result<Issued, ApiError> {
        let name = &credential.config.name;
        if credential.config.grant != GrantType::ClientCredentials {
            return self
                .refresh_user_token(session, credential, provider, scopes)
                .await;
        }
        let secret = self.client_secret(session, credential)?;
        let granted = grant::client_credentials(&self.http, provider, credential, secret, scopes)
            .await
            .map_err(|f| f.error)?;
        let stored = stored_token(
            credential,
            scopes,
            granted.access_token,
            granted.token_type,
            granted.expires_in,
            granted.scope,
        );
        // Persist only into the session that asked: after a lock (or a lock
        // and a new unlock) this result belongs to no one's vault state.
        if self.is_current(session) {
            let saved = session.with_keys(|keys| {
                let mut vault = self.vault();
                let vault = vault.as_mut().ok_or_else(ApiError::not_initialized)?;
                Ok(vault.save_token(keys, &stored)?)
            });
            if let Err(e) = saved {
                tracing::warn!(credential = %name, "could not store the token (it is still served from memory): {e}");
            }
        }
        Ok(issued_from(stored))
    }

    /// A user credential's access token from its refresh token (RFC 6749
    /// §6). Refreshes of one credential never overlap (its gate), and a
    /// rotated refresh token is committed durably — with the access token,
    /// in one transaction — before the access token goes to anyone.
    async fn refresh_user_token(
        &self,
        session: &Session,
        credential: &Credential,
        provider: &Provider,
        scopes: &[String],
    ) -> Result<Issued, ApiError> {
        let name = &credential.config.name;
        let gate = session.gate(&credential.id);
        let _one_at_a_time = gate.lock().await;
        // Read the grant only now: the previous holder of the gate may
        // have rotated the refresh token.
        let grant = session.grant(&credential.id);
        let Some((refresh_token, grant)) =
            grant.and_then(|g| g.refresh_token.clone().map(|t| (t, g)))
        else {
            return Err(reauth(name));
        };
        let secret = self.client_secret(session, credential)?;
        let client = user::client(provider, credential, secret.as_ref())?;
        // Ask for a down-scoped token only when the caller wants less than
        // the grant; otherwise omit `scope` (RFC 6749 §6: same as granted).
        let granted_scopes: Vec<&str> = grant.scope.split_whitespace().collect();
        let down_scope = !scopes.is_empty() && scopes.len() < granted_scopes.len();
        let result = user::refresh(
            &self.http,
            provider,
            credential,
            &client,
            &refresh_token,
            down_scope.then_some(scopes),
        )
        .await;
        let granted = match result {
            Ok(g) => g,
            Err(failure) if failure.error.kind == ErrorKind::ReauthRequired => {
                self.needs_login(
                    session,
                    credential,
                    "the provider refused the refresh token (invalid_grant)",
                );
                return Err(reauth(name));
            }
            Err(failure) => return Err(failure.error),
        };
        let rotated = granted.refresh_token.is_some();
        let new_grant = GrantState {
            refresh_token: Some(granted.refresh_token.map(Arc::new).unwrap_or(refresh_token)),
            scope: if down_scope {
                grant.scope.clone()
            } else {
                granted.scope.clone().unwrap_or_else(|| grant.scope.clone())
            },
            subject: grant.subject.clone(),
        };
        let stored = stored_token(
            credential,
            scopes,
            granted.access_token,
            granted.token_type,
            granted.expires_in,
            granted.scope,
        );
        // The provider may already have invalidated the old refresh token:
        // memory follows the provider at once, whatever happens on disk.
        session.set_grant(&credential.id, Some(new_grant.clone()));
        // Commit even if the vault was locked (or locked and unlocked) while
        // the request was out: the rotated refresh token is the only one the
        // provider still honours. Only a lock that already took the keys
        // stops it (then the grant is honestly lost: `needs_login` later).
        let committed = session.with_keys(|keys| {
            let mut vault = self.vault();
            let vault = vault.as_mut().ok_or_else(ApiError::not_initialized)?;
            let sealed_grant = rotated.then(|| stored_grant(&credential.id, &new_grant));
            Ok(vault.commit_grant(
                keys,
                &credential.id,
                sealed_grant.as_ref(),
                Some(&stored),
                "ready",
            )?)
        });
        if let Err(e) = committed {
            // Not handed out: a token whose rotated refresh token is not on
            // disk would leave a crash with nothing that works.
            tracing::error!(credential = %name, "could not store the refreshed grant: {e}");
            return Err(e);
        }
        self.audit.record(
            "refreshed",
            Some(name),
            None,
            Some(format!("rotated={rotated}")),
        );
        Ok(issued_from(stored))
    }

    /// The provider no longer honours this credential's grant: forget it,
    /// durably, and say so in the state callers see.
    pub(crate) fn needs_login(&self, session: &Session, credential: &Credential, why: &str) {
        session.set_grant(&credential.id, None);
        session.tokens.forget(&credential.id);
        if self.is_current(session) {
            if let Some(vault) = self.vault().as_mut() {
                if let Err(e) = vault.drop_grant(&credential.id, "needs_login") {
                    tracing::error!(credential = %credential.config.name, "could not record needs_login: {e}");
                }
            }
        }
        tracing::warn!(credential = %credential.config.name, "needs a new login: {why}");
        self.audit.record(
            "needs_login",
            Some(&credential.config.name),
            None,
            Some(why.into()),
        );
    }

    /// Starts proactive refreshes for recently used tokens near expiry.
    pub fn refresh_due(self: &Arc<Self>) {
        let Ok(session) = self.session() else {
            return;
        };
        let now = now();
        for key in session.tokens.due(now, RECENT_USE_SECS) {
            let name = {
                let catalog = session.catalog();
                catalog
                    .credentials
                    .values()
                    .find(|c| c.id == key.0)
                    .map(|c| c.config.name.clone())
            };
            // Gone or corrupt: nothing to refresh.
            let Some(Ok((credential, provider))) = name.map(|n| self.lookup(&session, &n)) else {
                continue;
            };
            let scopes: Vec<String> = key.1.split_whitespace().map(str::to_owned).collect();
            let daemon = Arc::clone(self);
            let fetch_session = Arc::clone(&session);
            session.tokens.refresh(&key, now, move || {
                tracing::debug!(credential = %credential.config.name, "refreshing ahead of expiry");
                daemon.fetch(fetch_session, credential, provider, scopes)
            });
        }
    }
}

/// The error for a credential that needs a (new) login.
pub(crate) fn reauth(name: &str) -> ApiError {
    ApiError::new(
        ErrorKind::ReauthRequired,
        format!("credential '{name}' needs a new login: run `latchkey login {name}`"),
    )
}

/// A token response as stored and cached.
pub(crate) fn stored_token(
    credential: &Credential,
    scopes: &[String],
    access_token: secrecy::SecretString,
    token_type: String,
    expires_in: Option<u64>,
    scope: Option<String>,
) -> StoredToken {
    let obtained_at = now();
    let expires_at =
        expires_in.map(|s| obtained_at.saturating_add(i64::try_from(s).unwrap_or(i64::MAX / 2)));
    StoredToken {
        credential_id: credential.id.clone(),
        scope_key: scopes.join(" "),
        access_token,
        token_type,
        expires_at,
        effective_expiry: expires_at.unwrap_or(obtained_at + UNKNOWN_LIFETIME_SECS),
        scope: scope.unwrap_or_else(|| scopes.join(" ")),
        obtained_at,
    }
}

pub(crate) fn stored_grant(credential_id: &str, grant: &GrantState) -> StoredGrant {
    StoredGrant {
        credential_id: credential_id.to_owned(),
        refresh_token: grant
            .refresh_token
            .as_ref()
            .map(|t| secrecy::SecretString::from(t.expose_secret())),
        scope: grant.scope.clone(),
        subject: grant.subject.clone(),
        obtained_at: now(),
    }
}

/// A token ready to serialize into a `token.get` reply.
pub struct TokenOut(pub Arc<Issued>);

impl serde::Serialize for TokenOut {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let t = &self.0;
        let mut s = ser.serialize_struct("TokenReply", 4)?;
        s.serialize_field("access_token", t.access_token.expose_secret())?;
        s.serialize_field("token_type", &t.token_type)?;
        s.serialize_field("expires_at", &t.expires_at)?;
        s.serialize_field("scope", &t.scope)?;
        s.end()
    }
}

pub(crate) fn issued_from(t: StoredToken) -> Issued {
    Issued {
        refresh_at: Issued::schedule_refresh(t.effective_expiry, t.obtained_at),
        access_token: t.access_token,
        token_type: t.token_type,
        expires_at: t.expires_at,
        effective_expiry: t.effective_expiry,
        scope: t.scope,
        obtained_at: t.obtained_at,
    }
}

/// The scopes a call may have: all the credential's, or a subset of them.
/// `granted` is the scope the user granted at login (user credentials),
/// which may be narrower than the configured one.
fn requested_scopes(
    credential: &Credential,
    granted: Option<&str>,
    asked: Option<&[String]>,
) -> Result<Vec<String>, ApiError> {
    let Some(asked) = asked else {
        return Ok(credential.config.scopes.clone());
    };
    let asked = normalize_scopes(asked)?;
    let allowed: Vec<&str> = match granted {
        Some(g) => g.split_whitespace().collect(),
        None => credential
            .config
            .scopes
            .iter()
            .map(String::as_str)
            .collect(),
    };
    let extra: Vec<&str> = asked
        .iter()
        .map(String::as_str)
        .filter(|s| !allowed.contains(s))
        .collect();
    if !extra.is_empty() {
        let name = &credential.config.name;
        let what = if granted.is_some() {
            "was not granted"
        } else {
            "is not configured for"
        };
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            format!(
                "credential '{name}' {what} scope(s) {}: its scopes are '{}'; ask for a subset, or add a credential with the scopes you need",
                extra.join(" "),
                allowed.join(" ")
            ),
        ));
    }
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::CredentialConfig;

    #[test]
    fn callers_get_a_subset_of_the_configured_scopes_only() {
        let credential = Credential {
            id: "c".into(),
            config: CredentialConfig {
                name: "api".into(),
                provider_id: "p".into(),
                client_id: "id".into(),
                grant: GrantType::ClientCredentials,
                auth: AuthMethod::ClientSecretBasic,
                scopes: vec!["read".into(), "write".into()],
                redirect_uri: None,
            },
            has_client_secret: true,
            corrupt: false,
            stored_state: "ready".into(),
        };
        assert_eq!(
            requested_scopes(&credential, None, None).unwrap(),
            ["read", "write"]
        );
        assert_eq!(
            requested_scopes(&credential, None, Some(&["read".into()])).unwrap(),
            ["read"]
        );
        let err = requested_scopes(&credential, None, Some(&["admin".into()])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
        assert!(err.message.contains("admin"));
    }
}
