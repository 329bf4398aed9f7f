//! What the daemon holds and the verbs on it: the vault file, the unlocked
//! session (data key, catalog, token cache) behind `unlock` / `lock`, the
//! idle clock, and the operations the protocol exposes. `dispatch` parses
//! requests and calls these; nothing else changes this state.

use crate::audit::{Audit, Sink};
use crate::error::ApiError;
use crate::issue::issued_from;
use crate::oauth::http::Http;
use crate::tokens::TokenCache;
use crate::vault::{keyring, now, Catalog, Keys, NewSlots, Vault};
use crate::Config;
use latchkey_client::protocol::*;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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
    pub(crate) id: u64,
    /// The data key; taken out (and zeroized) by `lock`, so a task that
    /// still holds the session can no longer decrypt anything.
    pub(crate) keys: RwLock<Option<Keys>>,
    pub(crate) catalog: RwLock<Catalog>,
    pub(crate) tokens: Arc<TokenCache>,
    /// Refresh tokens and login facts of user credentials, by credential id.
    pub(crate) grants: Mutex<HashMap<String, GrantState>>,
    /// One gate per credential: refreshes of a credential never overlap,
    /// whatever scope sets they are for (two concurrent uses of a rotating
    /// refresh token make providers revoke the whole grant).
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A user credential's grant in memory.
#[derive(Clone)]
pub struct GrantState {
    pub refresh_token: Option<Arc<SecretString>>,
    /// Space-separated scopes the user granted.
    pub scope: String,
    pub subject: Option<String>,
}

impl Session {
    pub(crate) fn with_keys<T>(
        &self,
        f: impl FnOnce(&Keys) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        f(keys.as_ref().ok_or_else(ApiError::locked)?)
    }

    pub(crate) fn gate(&self, credential_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(gates.entry(credential_id.to_owned()).or_default())
    }

    pub(crate) fn grant(&self, credential_id: &str) -> Option<GrantState> {
        self.grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(credential_id)
            .cloned()
    }

    pub(crate) fn set_grant(&self, credential_id: &str, grant: Option<GrantState>) {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        match grant {
            Some(g) => grants.insert(credential_id.to_owned(), g),
            None => grants.remove(credential_id),
        };
    }

    pub(crate) fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn catalog_mut(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
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
    pub(crate) http: Http,
    pub(crate) audit: Audit,
    pub shutdown: tokio::sync::Notify,
    /// Logins in progress, by login id.
    logins: Mutex<HashMap<String, tokio::sync::watch::Receiver<crate::login::LoginOutcome>>>,
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
            logins: Mutex::new(HashMap::new()),
        }))
    }

    pub(crate) fn logins(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        HashMap<String, tokio::sync::watch::Receiver<crate::login::LoginOutcome>>,
    > {
        self.logins.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn vault(&self) -> std::sync::MutexGuard<'_, Option<Vault>> {
        self.vault.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unlocked session, or the error that says what to do.
    pub(crate) fn session(&self) -> Result<Arc<Session>, ApiError> {
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

    pub(crate) fn is_current(&self, session: &Session) -> bool {
        self.session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| s.id == session.id)
    }

    /// A credential's client secret, opened from the vault just for the
    /// request that needs it.
    pub(crate) fn client_secret(
        &self,
        session: &Session,
        credential: &crate::vault::Credential,
    ) -> Result<Option<SecretString>, ApiError> {
        session.with_keys(|keys| {
            let vault = self.vault();
            let vault = vault.as_ref().ok_or_else(ApiError::not_initialized)?;
            Ok(vault.client_secret(keys, credential)?)
        })
    }

    /// Marks the vault as in use: resets the auto-lock clock.
    pub fn touch(&self) {
        self.last_activity.store(now(), Ordering::Relaxed);
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// What the token cache did since the vault was unlocked.
    pub fn stats(&self) -> Result<StatsResult, ApiError> {
        let session = self.session()?;
        let t = &session.tokens;
        Ok(StatsResult {
            hits: t.hits.load(Ordering::Relaxed),
            waits: t.waits.load(Ordering::Relaxed),
            fetches: t.fetches.load(Ordering::Relaxed),
        })
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
        let (providers, credentials, needs_login, accounts) = match &session {
            Some(s) => {
                let c = s.catalog();
                let mut waiting: Vec<String> = c
                    .credentials
                    .values()
                    .filter(|cred| cred.config.grant != GrantType::ClientCredentials)
                    .filter(|cred| s.grant(&cred.id).is_none_or(|g| g.refresh_token.is_none()))
                    .filter(|cred| s.tokens.peek(&cred.id).is_empty())
                    .map(|cred| cred.config.name.clone())
                    .collect();
                waiting.sort();
                let accounts = c
                    .credentials
                    .values()
                    .filter_map(|cred| {
                        Some((cred.config.name.clone(), s.grant(&cred.id)?.subject?))
                    })
                    .collect();
                (
                    Some(c.providers.len() as u32),
                    Some(c.credentials.len() as u32),
                    Some(waiting),
                    Some(accounts),
                )
            }
            None => (None, None, None, None),
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
            needs_login,
            accounts,
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
        let mut grants = HashMap::new();
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
            let (stored_grants, bad) = vault.load_grants(&keys)?;
            if bad > 0 {
                tracing::warn!(count = bad, "stored refresh tokens failed their integrity check: those credentials need a new login");
            }
            for g in stored_grants {
                grants.insert(
                    g.credential_id.clone(),
                    GrantState {
                        refresh_token: g.refresh_token.map(Arc::new),
                        scope: g.scope,
                        subject: g.subject,
                    },
                );
            }
            catalog
        };
        let session = Session {
            id: self.sessions.fetch_add(1, Ordering::Relaxed),
            keys: RwLock::new(Some(keys)),
            catalog: RwLock::new(catalog),
            tokens,
            grants: Mutex::new(grants),
            gates: Mutex::new(HashMap::new()),
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
        session
            .grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
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
