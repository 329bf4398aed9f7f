//! What the daemon holds and the verbs on it: the vault file, the unlocked
//! session (data key, catalog, token cache) behind `unlock` / `lock`, the
//! idle clock, and the operations the protocol exposes. `dispatch` parses
//! requests and calls these; nothing else changes this state.

use crate::audit::{Audit, Sink};
use crate::error::ApiError;
use crate::oauth::{discovery, grant, http::check_url, http::Http};
use crate::tokens::{Issued, Key, TokenCache};
use crate::vault::{
    keyring, now, Catalog, Credential, CredentialConfig, Keys, NewSlots, Provider, ProviderConfig,
    StoredToken, Vault,
};
use crate::Config;
use futures::future::{BoxFuture, FutureExt};
use latchkey_client::protocol::*;
use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Lifetime assumed for a token whose response had no `expires_in`.
/// Conservative: the token is fetched again after this, and callers are
/// told `expires_at: null` (the truth: the provider did not say).
const UNKNOWN_LIFETIME_SECS: i64 = 300;
/// Tokens used within this window are refreshed ahead of expiry.
pub const RECENT_USE_SECS: i64 = 600;
/// Wrong passphrases allowed before unlock attempts are slowed down.
const FREE_UNLOCK_ATTEMPTS: u32 = 3;
const MAX_UNLOCK_DELAY_SECS: i64 = 60;

/// The peer process on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: u32,
}

/// Everything that exists only while the vault is unlocked.
pub struct Session {
    id: u64,
    /// The data key; taken out (and zeroized) by `lock`, so a task that
    /// still holds the session can no longer decrypt anything.
    keys: RwLock<Option<Keys>>,
    catalog: RwLock<Catalog>,
    tokens: Arc<TokenCache>,
}

impl Session {
    fn with_keys<T>(&self, f: impl FnOnce(&Keys) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        f(keys.as_ref().ok_or_else(ApiError::locked)?)
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner())
    }

    fn catalog_mut(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().unwrap_or_else(|p| p.into_inner())
    }
}

struct UnlockLimiter {
    failures: u32,
    blocked_until: i64,
}

pub struct Daemon {
    pub config: Config,
    /// The vault file; `None` until `init`. Shared with the audit writer.
    vault: Arc<Mutex<Option<Vault>>>,
    session: RwLock<Option<Arc<Session>>>,
    /// Serializes init, unlock, lock, passphrase change and rekey.
    lifecycle: tokio::sync::Mutex<()>,
    limiter: Mutex<UnlockLimiter>,
    /// Unix seconds of the last request that counts as use (not `status`).
    last_activity: AtomicI64,
    sessions: AtomicU64,
    http: Http,
    audit: Audit,
    pub shutdown: tokio::sync::Notify,
}

struct VaultSink(Arc<Mutex<Option<Vault>>>);

impl Sink for VaultSink {
    fn write(&self, rows: &[crate::vault::store::AuditRow]) {
        let mut vault = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(vault) = vault.as_mut() {
            if let Err(e) = vault.store_mut().append_audit(rows) {
                tracing::warn!(error = %e, "could not write the audit log");
            }
        }
    }
}

impl Daemon {
    /// Opens the vault file if one exists. Must run inside the tokio runtime.
    pub fn new(config: Config) -> Result<Arc<Daemon>, ApiError> {
        let vault = Vault::open(&config.vault_path)?;
        let vault = Arc::new(Mutex::new(vault));
        Ok(Arc::new(Daemon {
            audit: Audit::start(VaultSink(Arc::clone(&vault))),
            config,
            vault,
            session: RwLock::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            limiter: Mutex::new(UnlockLimiter {
                failures: 0,
                blocked_until: 0,
            }),
            last_activity: AtomicI64::new(now()),
            sessions: AtomicU64::new(1),
            http: Http::new(),
            shutdown: tokio::sync::Notify::new(),
        }))
    }

    fn vault(&self) -> std::sync::MutexGuard<'_, Option<Vault>> {
        self.vault.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unlocked session, or the error that says what to do.
    fn session(&self) -> Result<Arc<Session>, ApiError> {
        if let Some(session) = self
            .session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(Arc::clone(session));
        }
        Err(if self.vault().is_some() {
            ApiError::locked()
        } else {
            ApiError::not_initialized()
        })
    }

    fn is_current(&self, session: &Session) -> bool {
        self.session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| s.id == session.id)
    }

    /// Marks the vault as in use: resets the auto-lock clock.
    pub fn touch(&self) {
        self.last_activity.store(now(), Ordering::Relaxed);
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    pub fn stats(&self) -> Option<(u64, u64, u64)> {
        let session = self.session().ok()?;
        let t = &session.tokens;
        Some((
            t.hits.load(Ordering::Relaxed),
            t.waits.load(Ordering::Relaxed),
            t.fetches.load(Ordering::Relaxed),
        ))
    }

    // ----- vault life cycle -------------------------------------------------

    pub fn status(&self) -> Result<StatusResult, ApiError> {
        let vault = self.vault();
        let slots = match vault.as_ref() {
            Some(v) => v.slot_infos()?,
            None => Vec::new(),
        };
        drop(vault);
        let session = self.session().ok();
        let state = match (&session, slots.is_empty()) {
            (Some(_), _) => VaultState::Unlocked,
            (None, false) => VaultState::Locked,
            (None, true) => VaultState::Uninitialized,
        };
        let idle = self.config.idle_timeout.as_secs();
        let locks_in = session.as_ref().filter(|_| idle > 0).map(|_| {
            let idle_for = (now() - self.last_activity.load(Ordering::Relaxed)).max(0) as u64;
            idle.saturating_sub(idle_for)
        });
        let (providers, credentials) = match &session {
            Some(s) => {
                let c = s.catalog();
                (
                    Some(c.providers.len() as u32),
                    Some(c.credentials.len() as u32),
                )
            }
            None => (None, None),
        };
        Ok(StatusResult {
            vault: state,
            vault_path: self.config.vault_path.display().to_string(),
            pid: std::process::id(),
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            slots,
            idle_timeout_secs: idle,
            locks_in_secs: locks_in,
            providers,
            credentials,
        })
    }

    pub async fn init(self: &Arc<Self>, params: InitParams) -> Result<InitResult, ApiError> {
        let _guard = self.lifecycle.lock().await;
        if self.vault().is_some() {
            return Err(ApiError::new(
                ErrorKind::AlreadyInitialized,
                format!(
                    "a vault already exists at {}: unlock it with `latchkey unlock`, or point LATCHKEY_VAULT elsewhere",
                    self.config.vault_path.display()
                ),
            ));
        }
        if params.passphrase.is_none() && !params.keyring {
            return Err(ApiError::invalid_params(
                "vault.init needs a passphrase, a keyring slot, or both",
            ));
        }
        if params
            .passphrase
            .as_ref()
            .is_some_and(|p| p.expose_secret().is_empty())
        {
            return Err(ApiError::invalid_params(
                "the passphrase is empty; choose a non-empty one",
            ));
        }
        let path = self.config.vault_path.clone();
        let choice = self.config.keyring;
        let created = tokio::task::spawn_blocking(move || {
            let backend = if params.keyring {
                Some(keyring::open(choice)?)
            } else {
                None
            };
            let slots = NewSlots {
                passphrase: params.passphrase.as_ref(),
                keyring: backend,
            };
            Vault::create(&path, slots)
        })
        .await
        .map_err(ApiError::internal)??;
        let (vault, keys) = created;
        let vault_id = keys.vault_id.clone();
        let slots = vault.slot_infos()?;
        *self.vault() = Some(vault);
        self.open_session(keys)?;
        self.audit.record(
            "vault_init",
            None,
            None,
            Some(
                slots
                    .iter()
                    .map(|s| s.kind.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        );
        Ok(InitResult { vault_id, slots })
    }

    pub async fn unlock(
        self: &Arc<Self>,
        params: UnlockParams,
        peer: Peer,
    ) -> Result<UnlockResult, ApiError> {
        let _guard = self.lifecycle.lock().await;
        if self.vault().is_none() {
            return Err(ApiError::not_initialized());
        }
        if let Ok(session) = self.session() {
            drop(session);
            return Ok(UnlockResult {
                slot: SlotInfo {
                    id: String::new(),
                    kind: String::new(),
                    created_at: 0,
                    backend: None,
                },
                already_unlocked: true,
            });
        }
        self.check_unlock_limit()?;
        let daemon = Arc::clone(self);
        let by_passphrase = params.passphrase.is_some();
        let opened = tokio::task::spawn_blocking(move || {
            let vault = daemon.vault();
            let vault = vault
                .as_ref()
                .expect("checked above; only init creates the vault");
            match &params.passphrase {
                Some(p) => vault.unlock_with_passphrase(p),
                None => vault.unlock_with_keyring(),
            }
        })
        .await
        .map_err(ApiError::internal)?;
        match opened {
            Ok((keys, slot)) => {
                self.limiter
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .failures = 0;
                self.open_session(keys)?;
                self.audit
                    .record("unlock", None, Some(peer.pid), Some(slot.kind.clone()));
                Ok(UnlockResult {
                    slot,
                    already_unlocked: false,
                })
            }
            Err(e) => {
                let error = ApiError::from(e);
                if by_passphrase && error.kind == ErrorKind::WrongPassphrase {
                    self.note_unlock_failure();
                }
                self.audit.record(
                    "unlock_failed",
                    None,
                    Some(peer.pid),
                    Some(error.kind.to_string()),
                );
                Err(error)
            }
        }
    }

    fn check_unlock_limit(&self) -> Result<(), ApiError> {
        let limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let wait = limiter.blocked_until - now();
        if wait > 0 {
            return Err(ApiError::new(
                ErrorKind::RateLimited,
                format!("too many wrong passphrases: try again in {wait} s"),
            )
            .with_retry_after(Some(wait as u64)));
        }
        Ok(())
    }

    fn note_unlock_failure(&self) {
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        limiter.failures += 1;
        if limiter.failures >= FREE_UNLOCK_ATTEMPTS {
            let exp = limiter.failures - FREE_UNLOCK_ATTEMPTS;
            let delay = (1i64 << exp.min(10)).min(MAX_UNLOCK_DELAY_SECS);
            limiter.blocked_until = now() + delay;
        }
    }

    /// Loads the catalog and stored tokens under `keys` and makes them the session.
    fn open_session(&self, keys: Keys) -> Result<(), ApiError> {
        let tokens = Arc::new(TokenCache::default());
        let catalog = {
            let vault = self.vault();
            let vault = vault.as_ref().ok_or_else(ApiError::not_initialized)?;
            let (catalog, problems) = vault.load_catalog(&keys)?;
            for problem in &problems {
                tracing::warn!("{problem}; it will not be used");
            }
            let (stored, bad) = vault.load_tokens(&keys)?;
            if bad > 0 {
                tracing::warn!(
                    count = bad,
                    "stored tokens failed their integrity check and were ignored"
                );
            }
            for t in stored {
                let key = (t.credential_id.clone(), t.scope_key.clone());
                tokens.insert_stored(key, issued_from(t));
            }
            catalog
        };
        let session = Session {
            id: self.sessions.fetch_add(1, Ordering::Relaxed),
            keys: RwLock::new(Some(keys)),
            catalog: RwLock::new(catalog),
            tokens,
        };
        self.touch();
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(session));
        Ok(())
    }

    /// Locks the vault: the data key and every cached token are dropped and
    /// zeroized. Returns whether it was unlocked.
    pub fn lock(&self, reason: &str) -> bool {
        let session = self
            .session
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(session) = session else {
            return false;
        };
        session
            .keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        session.tokens.clear();
        *session.catalog_mut() = Catalog::default();
        self.audit.record("lock", None, None, Some(reason.into()));
        tracing::info!(reason, "vault locked");
        true
    }

    pub async fn lock_now(&self) -> bool {
        let _guard = self.lifecycle.lock().await;
        self.lock("requested")
    }

    /// Auto-lock: called every tick by the timer task.
    pub fn lock_if_idle(&self) {
        let idle = self.config.idle_timeout.as_secs() as i64;
        if idle == 0 {
            return;
        }
        let idle_for = now() - self.last_activity.load(Ordering::Relaxed);
        if idle_for >= idle
            && self
                .session
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
        {
            self.lock("idle timeout");
        }
    }

    pub async fn change_passphrase(
        self: &Arc<Self>,
        params: ChangePassphraseParams,
    ) -> Result<Empty, ApiError> {
        let _guard = self.lifecycle.lock().await;
        if params.new.expose_secret().is_empty() {
            return Err(ApiError::invalid_params(
                "the new passphrase is empty; choose a non-empty one",
            ));
        }
        self.check_unlock_limit()?;
        let daemon = Arc::clone(self);
        let result = tokio::task::spawn_blocking(move || {
            let mut vault = daemon.vault();
            let vault = vault.as_mut().ok_or_else(ApiError::not_initialized)?;
            vault
                .change_passphrase(&params.old, &params.new)
                .map_err(ApiError::from)
        })
        .await
        .map_err(ApiError::internal)?;
        match result {
            Ok(slot) => {
                self.audit
                    .record("passphrase_changed", None, None, Some(slot.id));
                Ok(Empty {})
            }
            Err(e) => {
                if e.kind == ErrorKind::WrongPassphrase {
                    self.note_unlock_failure();
                }
                Err(e)
            }
        }
    }

    pub async fn rekey(self: &Arc<Self>, params: RekeyParams) -> Result<RekeyResult, ApiError> {
        let _guard = self.lifecycle.lock().await;
        let session = self.session()?;
        self.check_unlock_limit()?;
        let daemon = Arc::clone(self);
        let worker_session = Arc::clone(&session);
        let result = tokio::task::spawn_blocking(move || {
            // Lock order everywhere: session keys, then the vault.
            let keys = worker_session
                .keys
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let keys = keys.as_ref().ok_or_else(ApiError::locked)?;
            let mut vault = daemon.vault();
            let vault = vault.as_mut().ok_or_else(ApiError::not_initialized)?;
            vault
                .rekey(keys, params.passphrase.as_ref())
                .map_err(ApiError::from)
        })
        .await
        .map_err(ApiError::internal)?;
        match result {
            Ok((new_keys, fields, slots)) => {
                // The old key is replaced (and zeroized) in place; cached
                // tokens stay valid, they do not depend on the key.
                *session.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(new_keys);
                self.audit.record(
                    "rekey",
                    None,
                    None,
                    Some(format!("{fields} fields, {slots} slots")),
                );
                Ok(RekeyResult { fields, slots })
            }
            Err(e) => {
                if e.kind == ErrorKind::WrongPassphrase {
                    self.note_unlock_failure();
                }
                Err(e)
            }
        }
    }

    /// Tries to unlock without a person: with the passphrase file named by
    /// the configuration, else with a keyring slot. Failures are logged.
    pub async fn unlock_unattended(self: &Arc<Self>) {
        if self.vault().is_none() {
            return;
        }
        let passphrase = match &self.config.passphrase_file {
            Some(path) => match read_passphrase_file(path) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("{e}");
                    return;
                }
            },
            None => None,
        };
        let has_keyring = self
            .vault()
            .as_ref()
            .is_some_and(|v| v.has_keyring_slot().unwrap_or(false));
        if passphrase.is_none() && !has_keyring {
            return;
        }
        let peer = Peer {
            pid: std::process::id(),
        };
        match self.unlock(UnlockParams { passphrase }, peer).await {
            Ok(r) => tracing::info!(slot = %r.slot.kind, "vault unlocked at start"),
            Err(e) => tracing::warn!("could not unlock the vault at start: {e}"),
        }
    }

    // ----- providers --------------------------------------------------------

    pub async fn provider_add(&self, params: ProviderAddParams) -> Result<ProviderInfo, ApiError> {
        check_name("provider", &params.name)?;
        self.session()?;
        let (issuer, mut endpoints) = match &params.issuer {
            Some(issuer) => {
                let (issuer, endpoints) = discovery::discover(&self.http, issuer).await?;
                (Some(issuer), endpoints)
            }
            None => (None, Endpoints::default()),
        };
        let explicit = params.endpoints;
        let overrides = [
            (
                &mut endpoints.authorization_endpoint,
                explicit.authorization_endpoint,
                "authorization endpoint",
            ),
            (
                &mut endpoints.token_endpoint,
                explicit.token_endpoint,
                "token endpoint",
            ),
            (
                &mut endpoints.device_authorization_endpoint,
                explicit.device_authorization_endpoint,
                "device authorization endpoint",
            ),
            (
                &mut endpoints.revocation_endpoint,
                explicit.revocation_endpoint,
                "revocation endpoint",
            ),
            (
                &mut endpoints.introspection_endpoint,
                explicit.introspection_endpoint,
                "introspection endpoint",
            ),
            (&mut endpoints.jwks_uri, explicit.jwks_uri, "JWKS URI"),
        ];
        for (slot, value, what) in overrides {
            if let Some(value) = value {
                *slot = Some(
                    check_url(what, &value)
                        .map_err(ApiError::invalid_params)?
                        .to_string(),
                );
            }
        }
        if endpoints.token_endpoint.is_none() {
            return Err(ApiError::invalid_params(format!(
                "provider '{}' needs a token endpoint: pass --issuer URL for discovery, or --token-endpoint URL",
                params.name
            )));
        }
        // Re-take the session: discovery awaited the network, and the vault
        // may have been locked (and reopened) meanwhile.
        let session = self.session()?;
        if session.catalog().providers.contains_key(&params.name) {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!("a provider named '{}' exists: remove it first with `latchkey provider remove {}`", params.name, params.name),
            ));
        }
        let config = ProviderConfig {
            name: params.name.clone(),
            issuer,
            endpoints,
        };
        let provider = session.with_keys(|keys| {
            let mut vault = self.vault();
            let vault = vault.as_mut().ok_or_else(ApiError::not_initialized)?;
            Ok(vault.add_provider(keys, config)?)
        })?;
        let info = provider_info(&provider, &[]);
        session
            .catalog_mut()
            .providers
            .insert(params.name.clone(), Arc::new(provider));
        self.audit
            .record("provider_added", None, None, Some(params.name));
        Ok(info)
    }

    pub fn provider_list(&self) -> Result<Vec<ProviderInfo>, ApiError> {
        let session = self.session()?;
        let catalog = session.catalog();
        let mut list: Vec<ProviderInfo> = catalog
            .providers
            .values()
            .map(|p| provider_info(p, &credentials_of(&catalog, &p.id)))
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    pub fn provider_show(&self, name: &str) -> Result<ProviderInfo, ApiError> {
        let session = self.session()?;
        let catalog = session.catalog();
        let provider = catalog
            .providers
            .get(name)
            .ok_or_else(|| ApiError::no_provider(name))?;
        Ok(provider_info(
            provider,
            &credentials_of(&catalog, &provider.id),
        ))
    }

    pub fn provider_remove(&self, name: &str) -> Result<Empty, ApiError> {
        let session = self.session()?;
        let mut catalog = session.catalog_mut();
        let provider = catalog
            .providers
            .get(name)
            .ok_or_else(|| ApiError::no_provider(name))?;
        let users = credentials_of(&catalog, &provider.id);
        if !users.is_empty() {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "provider '{name}' is used by credential(s) {}: remove them first with `latchkey credential remove NAME`",
                    users.join(", ")
                ),
            ));
        }
        let id = provider.id.clone();
        self.vault()
            .as_mut()
            .ok_or_else(ApiError::not_initialized)?
            .remove_provider(&id)?;
        catalog.providers.remove(name);
        self.audit
            .record("provider_removed", None, None, Some(name.into()));
        Ok(Empty {})
    }

    // ----- credentials ------------------------------------------------------

    pub fn credential_add(&self, params: CredentialAddParams) -> Result<CredentialInfo, ApiError> {
        check_name("credential", &params.name)?;
        if params.client_id.is_empty() {
            return Err(ApiError::invalid_params("the client id is empty"));
        }
        let needs_secret = params.auth != AuthMethod::None;
        match (&params.client_secret, needs_secret) {
            (None, true) => {
                return Err(ApiError::invalid_params(format!(
                    "auth method {} needs a client secret: pass it with --client-secret-stdin, --client-secret-file or --client-secret-env",
                    params.auth.as_str()
                )))
            }
            (Some(s), true) if s.expose_secret().is_empty() => {
                return Err(ApiError::invalid_params("the client secret is empty"))
            }
            (Some(_), false) => {
                return Err(ApiError::invalid_params(
                    "auth method none is for public clients, which have no secret; drop the secret or choose --auth client_secret_basic",
                ))
            }
            _ => {}
        }
        if params.grant == GrantType::ClientCredentials && !needs_secret {
            return Err(ApiError::invalid_params(
                "the client_credentials grant needs a confidential client: use --auth client_secret_basic or client_secret_post with a secret",
            ));
        }
        if let Some(uri) = &params.redirect_uri {
            let url = check_url("redirect URI", uri).map_err(ApiError::invalid_params)?;
            if url.scheme() != "http" || !crate::oauth::http::is_loopback(&url) {
                return Err(ApiError::invalid_params(format!(
                    "redirect URI '{uri}' must be a loopback http URI such as http://127.0.0.1/callback (RFC 8252)"
                )));
            }
        }
        let scopes = normalize_scopes(&params.scopes)?;
        let session = self.session()?;
        let mut catalog = session.catalog_mut();
        if catalog.credentials.contains_key(&params.name) {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "a credential named '{0}' exists: remove it first with `latchkey credential remove {0}`",
                    params.name
                ),
            ));
        }
        let provider = catalog
            .providers
            .get(&params.provider)
            .ok_or_else(|| ApiError::no_provider(&params.provider))?;
        let config = CredentialConfig {
            name: params.name.clone(),
            provider_id: provider.id.clone(),
            client_id: params.client_id,
            grant: params.grant,
            auth: params.auth,
            scopes,
            redirect_uri: params.redirect_uri,
        };
        let credential = session.with_keys(|keys| {
            let mut vault = self.vault();
            let vault = vault.as_mut().ok_or_else(ApiError::not_initialized)?;
            Ok(vault.add_credential(keys, config, params.client_secret.as_ref())?)
        })?;
        let info = credential_info(&catalog, &credential, &session.tokens);
        catalog
            .credentials
            .insert(params.name.clone(), Arc::new(credential));
        self.audit
            .record("credential_added", Some(&params.name), None, None);
        Ok(info)
    }

    pub fn credential_list(&self) -> Result<Vec<CredentialInfo>, ApiError> {
        let session = self.session()?;
        let catalog = session.catalog();
        let mut list: Vec<CredentialInfo> = catalog
            .credentials
            .values()
            .map(|c| credential_info(&catalog, c, &session.tokens))
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    pub fn credential_show(&self, name: &str) -> Result<CredentialInfo, ApiError> {
        let session = self.session()?;
        let catalog = session.catalog();
        let credential = catalog
            .credentials
            .get(name)
            .ok_or_else(|| ApiError::no_credential(name))?;
        Ok(credential_info(&catalog, credential, &session.tokens))
    }

    pub fn credential_remove(&self, name: &str) -> Result<Empty, ApiError> {
        let session = self.session()?;
        let mut catalog = session.catalog_mut();
        let credential = catalog
            .credentials
            .get(name)
            .ok_or_else(|| ApiError::no_credential(name))?;
        let id = credential.id.clone();
        self.vault()
            .as_mut()
            .ok_or_else(ApiError::not_initialized)?
            .remove_credential(&id)?;
        catalog.credentials.remove(name);
        session.tokens.forget(&id);
        self.audit
            .record("credential_removed", Some(name), None, None);
        Ok(Empty {})
    }

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

fn issued_from(t: StoredToken) -> Issued {
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

fn read_passphrase_file(path: &std::path::Path) -> Result<SecretString, String> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the passphrase file {}: {e}", path.display()))?,
    );
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(SecretString::from(trimmed))
}

/// Names are shown in commands and messages: keep them plain.
fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_params(format!(
            "invalid {what} name '{}': use 1-64 letters, digits, '-', '_', '.', '@', not starting with '-'",
            name.chars().take(64).collect::<String>()
        )))
    }
}

/// Splits, de-duplicates and sorts scopes; refuses characters RFC 6749
/// §3.3 does not allow in a scope token.
fn normalize_scopes(scopes: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for s in scopes.iter().flat_map(|s| s.split_whitespace()) {
        if !s
            .chars()
            .all(|c| c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c))
        {
            return Err(ApiError::invalid_params(format!(
                "invalid scope '{s}' (RFC 6749 §3.3)"
            )));
        }
        out.push(s.to_owned());
    }
    out.sort();
    out.dedup();
    Ok(out)
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

fn credentials_of(catalog: &Catalog, provider_id: &str) -> Vec<String> {
    let mut names: Vec<String> = catalog
        .credentials
        .values()
        .filter(|c| c.config.provider_id == provider_id)
        .map(|c| c.config.name.clone())
        .collect();
    names.sort();
    names
}

fn provider_info(provider: &Provider, credentials: &[String]) -> ProviderInfo {
    ProviderInfo {
        name: provider.config.name.clone(),
        issuer: provider.config.issuer.clone(),
        endpoints: provider.config.endpoints.clone(),
        credentials: credentials.to_vec(),
    }
}

fn credential_info(
    catalog: &Catalog,
    credential: &Credential,
    tokens: &TokenCache,
) -> CredentialInfo {
    let now = now();
    let entries = tokens.entries(&credential.id, now);
    let backoff = entries.iter().find_map(|e| e.backoff.clone());
    let state = if credential.corrupt {
        "corrupt"
    } else if credential.config.grant != GrantType::ClientCredentials {
        "needs_login"
    } else if backoff.is_some() {
        "backoff"
    } else {
        "ready"
    };
    CredentialInfo {
        name: credential.config.name.clone(),
        provider: catalog
            .provider_by_id(&credential.config.provider_id)
            .map(|p| p.config.name.clone())
            .unwrap_or_else(|| "?".into()),
        client_id: credential.config.client_id.clone(),
        grant: credential.config.grant,
        auth: credential.config.auth,
        scopes: credential.config.scopes.clone(),
        has_client_secret: credential.has_client_secret,
        state: state.into(),
        tokens: entries
            .into_iter()
            .filter(|e| !e.scope.is_empty() || e.expires_at.is_some())
            .map(|e| TokenSummary {
                scope: e.scope,
                expires_at: e.expires_at,
            })
            .collect(),
        last_error: backoff.map(|(until, message)| {
            format!("{message} (next attempt in {} s)", (until - now).max(0))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for ok in ["github", "deploy-api", "a.b_c@d", "x"] {
            assert!(check_name("credential", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-rf", "a b", "a/b", "ü", &"x".repeat(65)] {
            assert!(check_name("credential", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_are_normalized_and_checked() {
        let s = normalize_scopes(&["b a".into(), "a".into(), "c".into()]).unwrap();
        assert_eq!(s, ["a", "b", "c"]);
        assert!(normalize_scopes(&["a\"b".into()]).is_err());
        assert!(normalize_scopes(&["a\\b".into()]).is_err());
    }

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
