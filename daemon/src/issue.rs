//! The token path after dispatch: policy (credential, scopes), the cache,
//! and the token request that runs when the cache cannot answer; plus the
//! proactive refresh the ticker starts.

use crate::error::ApiError;
use crate::manage::normalize_scopes;
use crate::oauth::grant;
use crate::state::{Daemon, Peer, Session};
use crate::tokens::{Issued, Key};
use crate::vault::{now, Credential, Provider, StoredToken};
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
        let (credential, provider) = {
            let catalog = session.catalog();
            let credential = catalog
                .credentials
                .get(&params.credential)
                .ok_or_else(|| ApiError::no_credential(&params.credential))?;
            let provider = catalog
                .provider_by_id(&credential.config.provider_id)
                .cloned();
            (Arc::clone(credential), provider)
        };
        let scopes = requested_scopes(&credential, params.scopes.as_deref())?;
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
        provider: Option<Arc<Provider>>,
        scopes: Vec<String>,
    ) -> BoxFuture<'static, Result<Issued, ApiError>> {
        async move {
            let name = credential.config.name.clone();
            let result = self
                .request_token(&session, &credential, provider.as_deref(), &scopes)
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
        provider: Option<&Provider>,
        scopes: &[String],
    ) -> Result<Issued, ApiError> {
        let name = &credential.config.name;
        if credential.corrupt {
            return Err(ApiError::from(crate::vault::VaultError::Corrupt {
                what: format!("credential '{name}'"),
            }));
        }
        let provider = provider.ok_or_else(|| {
            ApiError::from(crate::vault::VaultError::Corrupt {
                what: format!("the provider of credential '{name}'"),
            })
        })?;
        if credential.config.grant != GrantType::ClientCredentials {
            return Err(ApiError::new(
                ErrorKind::ReauthRequired,
                format!("credential '{name}' needs a login: run `latchkey login {name}`"),
            ));
        }
        let secret = session.with_keys(|keys| {
            let vault = self.vault();
            let vault = vault.as_ref().ok_or_else(ApiError::not_initialized)?;
            Ok(vault.client_secret(keys, credential)?)
        })?;
        let granted = grant::client_credentials(&self.http, provider, credential, secret, scopes)
            .await
            .map_err(|f| f.error)?;
        let obtained_at = now();
        let expires_at = granted
            .expires_in
            .map(|s| obtained_at.saturating_add(i64::try_from(s).unwrap_or(i64::MAX / 2)));
        let stored = StoredToken {
            credential_id: credential.id.clone(),
            scope_key: scopes.join(" "),
            access_token: granted.access_token,
            token_type: granted.token_type,
            expires_at,
            effective_expiry: expires_at.unwrap_or(obtained_at + UNKNOWN_LIFETIME_SECS),
            scope: granted.scope.unwrap_or_else(|| scopes.join(" ")),
            obtained_at,
        };
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

    /// Starts proactive refreshes for recently used tokens near expiry.
    pub fn refresh_due(self: &Arc<Self>) {
        let Ok(session) = self.session() else {
            return;
        };
        let now = now();
        for key in session.tokens.due(now, RECENT_USE_SECS) {
            let found = {
                let catalog = session.catalog();
                catalog
                    .credentials
                    .values()
                    .find(|c| c.id == key.0)
                    .map(|c| {
                        let provider = catalog.provider_by_id(&c.config.provider_id).cloned();
                        (Arc::clone(c), provider)
                    })
            };
            let Some((credential, provider)) = found else {
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
fn requested_scopes(
    credential: &Credential,
    asked: Option<&[String]>,
) -> Result<Vec<String>, ApiError> {
    let Some(asked) = asked else {
        return Ok(credential.config.scopes.clone());
    };
    let asked = normalize_scopes(asked)?;
    let extra: Vec<&str> = asked
        .iter()
        .filter(|s| !credential.config.scopes.contains(s))
        .map(String::as_str)
        .collect();
    if !extra.is_empty() {
        let name = &credential.config.name;
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            format!(
                "credential '{name}' is not configured for scope(s) {}: its scopes are '{}'; ask for a subset, or add a credential with the scopes you need",
                extra.join(" "),
                credential.config.scopes.join(" ")
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
            requested_scopes(&credential, None).unwrap(),
            ["read", "write"]
        );
        assert_eq!(
            requested_scopes(&credential, Some(&["read".into()])).unwrap(),
            ["read"]
        );
        let err = requested_scopes(&credential, Some(&["admin".into()])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
        assert!(err.message.contains("admin"));
    }
}
