//! The token path after dispatch: `token.get` checks what the caller may
//! have (`policy`), asks the session's cache, and — when the cache cannot
//! answer — runs the one request for it: the client credentials grant, a
//! token exchange (RFC 8693), or a refresh of a user credential's grant, sealed into the vault before it
//! is handed out. Also the proactive refresh the ticker starts, and
//! `daemon.stats`.

use crate::cache::Cached;
use crate::error::ApiError;
use crate::fleet::{self, FleetStep};
use crate::handler::Handler;
use crate::oauth::{exchange, grant, subject, user, Access};
use crate::policy;
use crate::rotation;
use crate::state::{Daemon, Peer, Session};
use crate::vault::fleet::Change;
use crate::vault::{Credential, Grant, Provider, Token};
use futures::future::{BoxFuture, FutureExt};
use latchkey_client::framing::SecretBuf;
use latchkey_client::protocol::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Lifetime assumed for a token whose response had no `expires_in`.
/// Conservative: the token is fetched again after this, and callers are
/// told `expires_at: null` (the truth: the provider did not say).
const UNKNOWN_LIFETIME_SECS: i64 = 300;
/// Tokens used within this window are refreshed ahead of expiry.
const RECENT_USE_SECS: i64 = 600;

/// The policy check, then the cache, which answers from memory or
/// joins/starts the one token request for this credential.
impl Handler for TokenGet {
    type Reply = Served;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: TokenParams,
    ) -> Result<Served, ApiError> {
        let session = daemon.session()?;
        let (credential, provider) = session.lookup(&params.credential)?;
        if credential.config.grant == GrantType::Oauth1 {
            let name = &credential.config.name;
            return Err(ApiError::invalid_params(format!(
                "credential '{name}' is an OAuth 1.0a credential: it signs requests and has no access tokens; run `latchkey oauth1-sign {name} --method GET --url URL`"
            )));
        }
        let scopes = policy::allowed_scopes(
            &credential,
            || session.grant(&credential.id).map(|g| g.scope),
            params.scopes.as_deref(),
        )?;
        if credential.config.access == latchkey_client::protocol::Access::Ask {
            crate::apps::authorize(daemon, &session, &peer, &credential, &scopes).await?;
        }
        let now = daemon.clock.now();
        if !credential.config.step_up.is_off() {
            crate::stepup::check_or_wait(daemon, &session, &credential, params.confirm_wait_secs)
                .await?;
        }
        // Called only on a miss: a hit clones and allocates nothing here.
        let fetcher = || {
            fetch(
                Arc::clone(daemon),
                Arc::clone(&session),
                Arc::clone(&credential),
                Arc::clone(&provider),
                scopes.to_vec(),
            )
        };
        // Rate limit: only the caller whose miss starts a provider request
        // is charged (joiners of one in flight are not).
        let admit = || {
            daemon
                .limits
                .provider(&peer, &params.credential, TokenGet::NAME)
        };
        let hit = session
            .tokens
            .get(
                &credential.id,
                &scopes,
                params.min_ttl.unwrap_or(0),
                peer.caller.issue_key(),
                now,
                fetcher,
                admit,
            )
            .await?;
        if hit.first_issue {
            daemon.audit.record(
                "token_issued",
                Some(&params.credential),
                Some(&peer),
                Some(hit.token.token.reply.scope.clone()),
            );
        }
        Ok(Served(hit.token))
    }

    /// The result serialized when the token arrived: copied, not
    /// serialized again per call.
    fn write_result(reply: &Served, out: &mut SecretBuf) -> serde_json::Result<()> {
        out.extend_from_slice(&reply.0.json);
        Ok(())
    }
}

/// What the token cache did since the vault was unlocked.
impl Handler for DaemonStats {
    type Reply = StatsResult;

    async fn handle(daemon: &Arc<Daemon>, _: Peer, _: Empty) -> Result<StatsResult, ApiError> {
        let session = daemon.session()?;
        let t = &session.tokens;
        Ok(StatsResult {
            hits: t.hits.load(Ordering::Relaxed),
            waits: t.waits.load(Ordering::Relaxed),
            fetches: t.fetches.load(Ordering::Relaxed),
        })
    }
}

/// A cached token as the reply to `token.get`: the protocol's
/// [`TokenReply`] it holds, written from its serialized form (no copy of
/// the secret but the reply line, which is wiped).
pub struct Served(Cached);

impl std::borrow::Borrow<TokenReply> for Served {
    fn borrow(&self) -> &TokenReply {
        &self.0.token.reply
    }
}

/// Starts proactive refreshes for recently used tokens near expiry.
pub fn refresh_due(daemon: &Arc<Daemon>) {
    let Ok(session) = daemon.session() else {
        return;
    };
    let now = daemon.clock.now();
    let due = session.tokens.due(now, RECENT_USE_SECS);
    if due.is_empty() {
        return;
    }
    // Names by id, read once per tick: a search per due token would be
    // quadratic when thousands of credentials come due together.
    let names: std::collections::HashMap<String, String> = session
        .catalog()
        .credentials
        .values()
        .map(|c| (c.id.clone(), c.config.name.clone()))
        .collect();
    for (id, scopes) in due {
        let name = names.get(&id).cloned();
        // Gone or corrupt: nothing to refresh.
        let Some(Ok((credential, provider))) = name.map(|n| session.lookup(&n)) else {
            continue;
        };
        let fetcher = Arc::clone(daemon);
        let fetch_session = Arc::clone(&session);
        let wanted = scopes.clone();
        session.tokens.refresh(&id, &wanted, now, move || {
            tracing::debug!(credential = %credential.config.name, "refreshing ahead of expiry");
            fetch(fetcher, fetch_session, credential, provider, scopes)
        });
    }
}

/// The future that requests a token from the provider, stores it sealed,
/// and returns it. Runs in its own task (see `TokenCache::get`).
fn fetch(
    daemon: Arc<Daemon>,
    session: Arc<Session>,
    credential: Arc<Credential>,
    provider: Arc<Provider>,
    scopes: Vec<String>,
) -> BoxFuture<'static, Result<Token, ApiError>> {
    async move {
        let name = &credential.config.name;
        let result = match credential.config.grant {
            GrantType::ClientCredentials | GrantType::TokenExchange => {
                client_credentials(&daemon, &session, &credential, &provider, &scopes).await
            }
            GrantType::AuthorizationCode | GrantType::DeviceCode => {
                refresh(&daemon, &session, &credential, &provider, &scopes).await
            }
            // Refused before the cache (`TokenGet`): no access tokens.
            GrantType::Oauth1 => Err(ApiError::internal(format!(
                "OAuth 1.0a credential '{name}' has no access tokens"
            ))),
        };
        match &result {
            Ok(t) => daemon.audit.record(
                "token_fetched",
                Some(name),
                None,
                Some(format!(
                    "scope={:?} expires_in={}",
                    t.reply.scope,
                    t.effective_expiry - t.obtained_at
                )),
            ),
            Err(e) => {
                tracing::warn!(credential = %name, kind = %e.kind, "token request failed: {e}");
                daemon
                    .audit
                    .record("token_failed", Some(name), None, Some(e.kind.to_string()));
            }
        }
        result
    }
    .boxed()
}

/// A grant with no user: the client credentials grant, or a token
/// exchange of the subject token read just now. One request, the token
/// stored sealed.
async fn client_credentials(
    daemon: &Daemon,
    session: &Session,
    credential: &Credential,
    provider: &Provider,
    scopes: &[String],
) -> Result<Token, ApiError> {
    let granted = match (credential.config.grant, &credential.config.exchange) {
        (GrantType::TokenExchange, Some(config)) => {
            // Read afresh for every exchange: the CI system rotates it.
            let subject_token = subject::load(
                &credential.config.name,
                &config.subject_token,
                daemon.clock.now(),
            )
            .await?;
            rotation::with_client_auth(daemon, session, credential, provider, |auth| {
                exchange::exchange(
                    &daemon.http,
                    provider,
                    credential,
                    config,
                    &subject_token,
                    auth,
                    scopes,
                )
            })
            .await?
        }
        (GrantType::TokenExchange, None) => {
            return Err(ApiError::internal(format!(
                "token exchange credential '{}' has no subject token source",
                credential.config.name
            )))
        }
        _ => {
            rotation::with_client_auth(daemon, session, credential, provider, |auth| {
                grant::client_credentials(&daemon.http, provider, credential, auth, scopes)
            })
            .await?
        }
    };
    warn_clamped(&credential.config.name, granted.access.expires_in);
    let token = received(granted.access, scopes, daemon.clock.now());
    // Persist only into the session that asked: after a lock (or a lock
    // and a new unlock) this result belongs to no one's vault state.
    if daemon.is_current(session) {
        let key = (credential.id.clone(), scopes.join(" "));
        let stored = token.copy();
        let saved = session
            .with_vault(move |keys, vault| vault.save_token(keys, &key, &stored))
            .await;
        if let Err(e) = saved {
            tracing::warn!(credential = %credential.config.name, "could not store the token (it is still served from memory): {e}");
        }
    }
    Ok(token)
}

/// A user credential's access token from its refresh token (RFC 6749
/// §6). Refreshes of one credential never overlap (its gate), and a
/// rotated refresh token is committed durably — with the access token,
/// in one transaction — before the access token goes to anyone.
async fn refresh(
    daemon: &Daemon,
    session: &Session,
    credential: &Credential,
    provider: &Provider,
    scopes: &[String],
) -> Result<Token, ApiError> {
    let name = &credential.config.name;
    let gate = session.gate(&credential.id);
    let _one_at_a_time = gate.lock().await;
    // From before the request until the commit: a lock waits for it.
    let _until_committed = session.begin_commit(name)?;
    // A shared vault: become the fleet's one refresher of this credential,
    // then take what a sibling daemon committed meanwhile (its token, or
    // at least its rotated refresh token).
    let fleet_lock = match fleet::lock_for_refresh(daemon, session, credential, scopes).await? {
        FleetStep::Taken(token) => return Ok(token),
        FleetStep::Refresh(lock) => lock,
        FleetStep::Alone => None,
    };
    // Read the grant only now: the previous holder of the gate may
    // have rotated the refresh token.
    let grant = session.grant(&credential.id);
    let Some((refresh_token, grant)) = grant.and_then(|g| g.refresh_token.clone().map(|t| (t, g)))
    else {
        fleet::release(fleet_lock).await;
        return Err(ApiError::reauth(name));
    };
    // Ask for a down-scoped token only when the caller wants less than
    // the grant; otherwise omit `scope` (RFC 6749 §6: same as granted).
    let down_scope = !scopes.is_empty() && scopes.len() < grant.scope.split_whitespace().count();
    let result = rotation::with_client_auth(daemon, session, credential, provider, |auth| {
        let refresh_token = &refresh_token;
        async move {
            let client = user::client(provider, credential, &auth)?;
            user::refresh(
                &daemon.http,
                provider,
                credential,
                &client,
                refresh_token,
                down_scope.then_some(scopes),
            )
            .await
        }
    })
    .await;
    let granted = match result {
        Ok(g) => g,
        Err(e) if e.kind == ErrorKind::ReauthRequired => {
            fleet::release(fleet_lock).await;
            needs_login(
                daemon,
                session,
                credential,
                "the provider refused the refresh token (invalid_grant)",
            )
            .await;
            return Err(ApiError::reauth(name));
        }
        Err(e) => {
            fleet::release(fleet_lock).await;
            return Err(e);
        }
    };
    let rotated = granted.refresh_token.is_some();
    let new_grant = Grant {
        refresh_token: Some(granted.refresh_token.map(Arc::new).unwrap_or(refresh_token)),
        scope: match &granted.access.scope {
            Some(said) if !down_scope => said.clone(),
            _ => grant.scope.clone(),
        },
        subject: grant.subject.clone(),
        oauth1: None,
    };
    warn_clamped(name, granted.access.expires_in);
    let token = received(granted.access, scopes, daemon.clock.now());
    // The provider may already have invalidated the old refresh token:
    // memory follows the provider at once, whatever happens on disk.
    session.set_grant(&credential.id, Some(new_grant.clone()));
    // Commit even if the vault was locked (or locked and unlocked) while
    // the request was out: the rotated refresh token is the only one the
    // provider still honours. Only a lock that already took the keys
    // stops it (then the grant is honestly lost: `needs_login` later).
    // A grant the provider narrowed (or widened) is stored too, so
    // `credential show` and the scope check say what is granted now.
    let rescoped = new_grant.scope != grant.scope;
    if rescoped {
        tracing::warn!(credential = %name, granted = %new_grant.scope, "the provider changed the grant's scopes on refresh; `latchkey login {name}` asks for the configured ones again");
    }
    let key = (credential.id.clone(), scopes.join(" "));
    let write_grant = (rotated || rescoped).then(|| new_grant.clone());
    let committed = fleet::commit(
        session,
        fleet_lock,
        &credential.id,
        write_grant,
        (key, token.copy()),
    )
    .await;
    if let Err(e) = committed {
        // Not handed out: a token whose rotated refresh token is not on
        // disk would leave a crash with nothing that works.
        tracing::error!(credential = %name, "could not store the refreshed grant: {e}");
        return Err(e);
    }
    daemon.audit.record(
        "refreshed",
        Some(name),
        None,
        Some(format!("rotated={rotated}")),
    );
    Ok(token)
}

/// The provider no longer honours this credential's grant: forget it,
/// durably, and say so in the state callers see.
async fn needs_login(daemon: &Daemon, session: &Session, credential: &Credential, why: &str) {
    let name = &credential.config.name;
    session.set_grant(&credential.id, None);
    session.tokens.forget(&credential.id);
    if daemon.is_current(session) {
        let id = credential.id.clone();
        let dropped = session
            .with_vault(move |_, vault| vault.drop_grant(&id, CredentialState::NeedsLogin))
            .await;
        if let Err(e) = dropped {
            tracing::error!(credential = %name, "could not record needs_login: {e}");
        }
        daemon
            .tell_fleet(Change::Grant(credential.id.clone()))
            .await;
    }
    tracing::warn!(credential = %name, "needs a new login: {why}");
    daemon
        .audit
        .record("needs_login", Some(name), None, Some(why.into()));
}

/// 24 h: the longest a token is kept, whatever the provider says. A token
/// the provider says lives a year is still replaced daily, so revoking the
/// grant at the provider takes effect here within a day; callers are told
/// the shorter expiry (the token is valid at least that long).
pub(crate) const LIFETIME_CEILING_SECS: u64 = 24 * 3600;

/// The lifetime a response states, as latchkey uses it: `None` when the
/// provider gave none we can use (absent, or 0 — "expired already" would
/// make every call a token request, and providers that send 0 mean "not
/// said"), else at most [`LIFETIME_CEILING_SECS`]. Short lifetimes are kept
/// as they are: serving a token past the provider's own expiry would hand
/// out a dead token; how often short-lived tokens cost a request is the
/// scheduling floor's business (`cache::MIN_PROACTIVE_LIFETIME_SECS`).
/// Returns whether the stated value was changed, for the log.
fn usable_lifetime(expires_in: Option<u64>) -> (Option<u64>, bool) {
    match expires_in {
        None => (None, false),
        Some(0) => (None, true),
        Some(s) if s > LIFETIME_CEILING_SECS => (Some(LIFETIME_CEILING_SECS), true),
        Some(s) => (Some(s), false),
    }
}

/// Credentials whose provider's stated lifetime was clamped, so the log
/// says so once per credential (per daemon process), not per token.
static CLAMP_WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Logs, once per credential, that the provider's `expires_in` was not
/// used as sent.
pub(crate) fn warn_clamped(credential: &str, expires_in: Option<u64>) {
    let (used, clamped) = usable_lifetime(expires_in);
    if !clamped {
        return;
    }
    let mut warned = crate::sync::lock(&CLAMP_WARNED);
    if warned.iter().any(|c| c == credential) {
        return;
    }
    warned.push(credential.to_owned());
    drop(warned);
    let said = expires_in.unwrap_or_default();
    match used {
        Some(used) => tracing::warn!(
            credential,
            "the provider says its tokens live {said} s; latchkey keeps them at most {used} s (24 h) so a revocation at the provider takes effect within a day"
        ),
        None => tracing::warn!(
            credential,
            "the provider sent expires_in 0; latchkey treats the lifetime as unknown (expires_at null) and fetches a new token after {UNKNOWN_LIFETIME_SECS} s"
        ),
    }
}

/// The access token of a response received at `now` for the `requested`
/// scopes, as it is kept and served from then on (see [`usable_lifetime`]).
pub(crate) fn received(access: Access, requested: &[String], now: i64) -> Token {
    let (lifetime, _) = usable_lifetime(access.expires_in);
    let expires_at = lifetime.map(|s| now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX / 2)));
    Token {
        reply: TokenReply {
            access_token: access.access_token,
            token_type: access.token_type,
            expires_at,
            // RFC 6749 §5.1: a silent provider granted the scope requested.
            scope: access.scope.unwrap_or_else(|| requested.join(" ")),
        },
        effective_expiry: expires_at.unwrap_or(now + UNKNOWN_LIFETIME_SECS),
        obtained_at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn access(expires_in: Option<u64>) -> Access {
        Access {
            access_token: SecretString::from("t"),
            token_type: "Bearer".into(),
            expires_in,
            scope: None,
        }
    }

    #[test]
    fn lifetimes_are_clamped_to_a_day_and_zero_means_unknown() {
        let now = 1_000;
        let year = received(access(Some(365 * 24 * 3600)), &[], now);
        assert_eq!(year.reply.expires_at, Some(now + 24 * 3600));
        assert_eq!(year.effective_expiry, now + 24 * 3600);
        let zero = received(access(Some(0)), &[], now);
        assert_eq!(zero.reply.expires_at, None, "0 is not a usable lifetime");
        assert_eq!(zero.effective_expiry, now + UNKNOWN_LIFETIME_SECS);
        let absent = received(access(None), &[], now);
        assert_eq!(absent.reply.expires_at, None);
        assert_eq!(absent.effective_expiry, now + UNKNOWN_LIFETIME_SECS);
        // Short lifetimes are the truth: never served past them.
        let one = received(access(Some(1)), &[], now);
        assert_eq!(
            (one.reply.expires_at, one.effective_expiry),
            (Some(now + 1), now + 1)
        );
        assert_eq!(usable_lifetime(Some(3600)), (Some(3600), false));
        assert_eq!(
            usable_lifetime(Some(u64::MAX)),
            (Some(LIFETIME_CEILING_SECS), true)
        );
    }
}
