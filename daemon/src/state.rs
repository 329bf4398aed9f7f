//! The core state, as data plus small verbs: the [`Daemon`] (configuration,
//! the vault file, the one HTTP client, the audit log, the idle clock) and,
//! while the vault is unlocked, its [`Session`] (data key, catalog, grants,
//! token cache). The protocol's verbs live in their own modules
//! (`lifecycle`, `manage`, `token`, `login`, `revoke`) and work through these;
//! this module imports none of them.

use crate::audit::{Audit, Sink};
use crate::cache::TokenCache;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::ApiError;
use crate::oauth::http::Http;
use crate::sync::{lock, read, write};
use crate::vault::store::AuditRow;
use crate::vault::{Catalog, Credential, Grant, Keys, Provider, Vault, VaultError};
use latchkey_client::protocol::{CredentialState, ErrorKind, GrantType, LoginResult};
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

/// The vault file, `None` until `init`; shared by the daemon, its session
/// and the audit writer.
type SharedVault = Arc<Mutex<Option<Vault>>>;

/// A login's outcome as its waiters see it: `None` while it runs.
pub type LoginOutcome = Option<Result<LoginResult, ApiError>>;

/// A login in progress, as the registry holds it.
pub struct LoginEntry {
    /// Its outcome, `None` while it runs.
    pub outcome: watch::Receiver<LoginOutcome>,
    /// Notified when a waiter leaves before the outcome: the login stops
    /// waiting for the person (its listener and tasks end).
    pub cancel: Arc<tokio::sync::Notify>,
}

/// The peer process on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: u32,
}

pub struct Daemon {
    pub(crate) config: Config,
    pub(crate) clock: Clock,
    vault: SharedVault,
    session: RwLock<Option<Arc<Session>>>,
    /// Serializes init, unlock, lock, passphrase change and rekey.
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
    /// Wrong passphrases seen, and until when unlocking is refused.
    pub(crate) limiter: Mutex<Limiter>,
    /// Unix seconds of the last request that counts as use (not `status`).
    last_activity: AtomicI64,
    /// Numbers sessions, so a task can tell its session from a later one.
    sessions: AtomicU64,
    pub(crate) http: Http,
    pub(crate) audit: Audit,
    /// Notified by `daemon.shutdown`; the server stops accepting.
    pub(crate) shutdown: tokio::sync::Notify,
    /// Logins in progress, by login id; each login task removes its own.
    logins: Mutex<HashMap<String, LoginEntry>>,
}

/// Everything that exists only while the vault is unlocked.
pub struct Session {
    id: u64,
    /// The data key; taken out (and zeroized) by [`Session::close`], so a
    /// task that still holds the session can no longer decrypt anything.
    keys: RwLock<Option<Keys>>,
    vault: SharedVault,
    catalog: RwLock<Catalog>,
    pub(crate) tokens: Arc<TokenCache>,
    /// Refresh tokens and login facts of user credentials, by credential id.
    grants: Mutex<HashMap<String, Grant>>,
    /// One gate per credential: refreshes of a credential never overlap,
    /// whatever scope sets they are for (two concurrent uses of a rotating
    /// refresh token make providers revoke the whole grant).
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Wrong passphrases allowed before unlock attempts are slowed down.
const FREE_UNLOCK_ATTEMPTS: u32 = 3;
/// The slow-down doubles per failure up to this.
const MAX_UNLOCK_DELAY_SECS: i64 = 60;

/// Slows down passphrase guessing: after a few wrong passphrases, each
/// further attempt waits twice as long as the last (capped).
#[derive(Default)]
pub struct Limiter {
    failures: u32,
    blocked_until: i64,
}

impl Limiter {
    /// The error for an attempt made too soon after failures, if it is.
    pub fn check(&self, now: i64) -> Result<(), ApiError> {
        let wait = self.blocked_until - now;
        if wait > 0 {
            return Err(ApiError::new(
                ErrorKind::RateLimited,
                format!("too many wrong passphrases: try again in {wait} s"),
            )
            .with_retry_after(Some(wait as u64)));
        }
        Ok(())
    }

    pub fn failed(&mut self, now: i64) {
        self.failures += 1;
        if self.failures >= FREE_UNLOCK_ATTEMPTS {
            let exp = self.failures - FREE_UNLOCK_ATTEMPTS;
            let delay = (1i64 << exp.min(10)).min(MAX_UNLOCK_DELAY_SECS);
            self.blocked_until = now + delay;
        }
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// The audit writer puts its batches into the vault, once there is one.
struct VaultSink(SharedVault);

impl Sink for VaultSink {
    fn write(&self, rows: &[AuditRow]) {
        if let Some(vault) = lock(&self.0).as_mut() {
            if let Err(e) = vault.store_mut().append_audit(rows) {
                tracing::warn!(error = %e, "could not write the audit log");
            }
        }
    }
}

impl Daemon {
    /// Opens the vault file if one exists. Must run inside the tokio runtime.
    pub fn new(config: Config) -> Result<Arc<Daemon>, ApiError> {
        let vault: SharedVault = Arc::new(Mutex::new(Vault::open(&config.vault_path)?));
        let clock = config.clock;
        Ok(Arc::new(Daemon {
            audit: Audit::start(VaultSink(Arc::clone(&vault)), clock),
            clock,
            config,
            vault,
            session: RwLock::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            limiter: Mutex::new(Limiter::default()),
            last_activity: AtomicI64::new(clock.now()),
            sessions: AtomicU64::new(1),
            http: Http::new(),
            shutdown: tokio::sync::Notify::new(),
            logins: Mutex::new(HashMap::new()),
        }))
    }

    /// The vault file. Lock order: a session's keys before this (see
    /// [`Session::with_vault`], which is how the token path reaches it).
    pub(crate) fn vault(&self) -> MutexGuard<'_, Option<Vault>> {
        lock(&self.vault)
    }

    /// The unlocked session, or the error that says what to do.
    pub(crate) fn session(&self) -> Result<Arc<Session>, ApiError> {
        if let Some(session) = read(&self.session).as_ref() {
            return Ok(Arc::clone(session));
        }
        Err(if self.vault().is_some() {
            ApiError::locked()
        } else {
            ApiError::not_initialized()
        })
    }

    pub(crate) fn is_unlocked(&self) -> bool {
        read(&self.session).is_some()
    }

    /// Whether `session` is still the unlocked one (not locked meanwhile,
    /// nor locked and unlocked again).
    pub(crate) fn is_current(&self, session: &Session) -> bool {
        read(&self.session)
            .as_ref()
            .is_some_and(|s| s.id == session.id)
    }

    /// Makes a session of `keys`: loads catalog, grants and stored tokens.
    pub(crate) fn open_session(&self, keys: Keys) -> Result<(), ApiError> {
        let id = self.sessions.fetch_add(1, Ordering::Relaxed);
        let session = Session::load(id, keys, Arc::clone(&self.vault), self.clock)?;
        self.touch();
        *write(&self.session) = Some(Arc::new(session));
        Ok(())
    }

    /// Ends the session, if there is one, and returns it (closed).
    pub(crate) fn close_session(&self) -> Option<Arc<Session>> {
        let session = write(&self.session).take()?;
        session.close();
        Some(session)
    }

    /// Marks the vault as in use: resets the auto-lock clock.
    pub(crate) fn touch(&self) {
        self.last_activity
            .store(self.clock.now(), Ordering::Relaxed);
    }

    /// Seconds since the last use.
    pub(crate) fn idle_for(&self) -> i64 {
        (self.clock.now() - self.last_activity.load(Ordering::Relaxed)).max(0)
    }

    pub(crate) fn logins(&self) -> MutexGuard<'_, HashMap<String, LoginEntry>> {
        lock(&self.logins)
    }
}

impl Session {
    /// Reads the catalog, grants and stored tokens under `keys`. Rows that
    /// fail their integrity checks are logged and left out.
    fn load(id: u64, keys: Keys, vault: SharedVault, clock: Clock) -> Result<Session, ApiError> {
        let tokens = Arc::new(TokenCache::new(clock));
        let (catalog, grants) = {
            let guard = lock(&vault);
            let v = guard.as_ref().ok_or_else(ApiError::not_initialized)?;
            let (catalog, problems) = v.load_catalog(&keys)?;
            for problem in &problems {
                tracing::warn!("{problem}; it will not be used");
            }
            let (stored, bad) = v.load_tokens(&keys)?;
            if bad > 0 {
                tracing::warn!(
                    count = bad,
                    "stored tokens failed their integrity check and were ignored"
                );
            }
            for (key, token) in stored {
                tokens.insert(key, token);
            }
            let (grants, bad) = v.load_grants(&keys)?;
            if bad > 0 {
                tracing::warn!(count = bad, "stored refresh tokens failed their integrity check: those credentials need a new login");
            }
            (catalog, grants.into_iter().collect())
        };
        Ok(Session {
            id,
            keys: RwLock::new(Some(keys)),
            vault,
            catalog: RwLock::new(catalog),
            tokens,
            grants: Mutex::new(grants),
            gates: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` with the data key and the vault, taken in the documented
    /// order (keys, then vault). Fails with `locked` once the session is
    /// closed, whoever still holds it.
    pub(crate) fn with_vault<T>(
        &self,
        f: impl FnOnce(&Keys, &mut Vault) -> Result<T, VaultError>,
    ) -> Result<T, ApiError> {
        let keys = read(&self.keys);
        let keys = keys.as_ref().ok_or_else(ApiError::locked)?;
        let mut vault = lock(&self.vault);
        let vault = vault.as_mut().ok_or_else(ApiError::not_initialized)?;
        Ok(f(keys, vault)?)
    }

    /// Puts a new data key in place of the old one (rekey), which is
    /// zeroized as it drops. Cached tokens stay: they do not depend on it.
    pub(crate) fn replace_keys(&self, keys: Keys) {
        *write(&self.keys) = Some(keys);
    }

    /// Drops the data key and everything decrypted with it.
    fn close(&self) {
        write(&self.keys).take();
        self.tokens.clear();
        lock(&self.grants).clear();
        *write(&self.catalog) = Catalog::default();
    }

    pub(crate) fn catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        read(&self.catalog)
    }

    pub(crate) fn catalog_mut(&self) -> RwLockWriteGuard<'_, Catalog> {
        write(&self.catalog)
    }

    /// A credential and its provider by name; a corrupt one is refused.
    pub(crate) fn lookup(&self, name: &str) -> Result<(Arc<Credential>, Arc<Provider>), ApiError> {
        let catalog = self.catalog();
        let credential = catalog
            .credentials
            .get(name)
            .ok_or_else(|| ApiError::no_credential(name))?;
        let corrupt = |what: String| ApiError::from(VaultError::Corrupt { what });
        if credential.corrupt {
            return Err(corrupt(format!("credential '{name}'")));
        }
        let provider = catalog
            .provider_by_id(&credential.config.provider_id)
            .ok_or_else(|| corrupt(format!("the provider of credential '{name}'")))?;
        Ok((Arc::clone(credential), Arc::clone(provider)))
    }

    /// A credential's client secret, opened from the vault just for the
    /// request that needs it.
    pub(crate) fn client_secret(
        &self,
        credential: &Credential,
    ) -> Result<Option<SecretString>, ApiError> {
        self.with_vault(|keys, vault| vault.client_secret(keys, credential))
    }

    /// The gate that keeps refreshes (and logins, revocations) of one
    /// credential from overlapping.
    pub(crate) fn gate(&self, credential_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(
            lock(&self.gates)
                .entry(credential_id.to_owned())
                .or_default(),
        )
    }

    pub(crate) fn grant(&self, credential_id: &str) -> Option<Grant> {
        lock(&self.grants).get(credential_id).cloned()
    }

    pub(crate) fn set_grant(&self, credential_id: &str, grant: Option<Grant>) {
        let mut grants = lock(&self.grants);
        match grant {
            Some(g) => grants.insert(credential_id.to_owned(), g),
            None => grants.remove(credential_id),
        };
    }

    /// Whether a user credential has nothing to get tokens with: no refresh
    /// token and no cached access token.
    pub(crate) fn needs_login(&self, credential: &Credential) -> bool {
        credential.config.grant != GrantType::ClientCredentials
            && self
                .grant(&credential.id)
                .is_none_or(|g| g.refresh_token.is_none())
            && self.tokens.peek(&credential.id).is_empty()
    }

    /// Where a credential stands, as `credential show` and `status` say it.
    pub(crate) fn state_of(&self, credential: &Credential, backing_off: bool) -> CredentialState {
        if credential.corrupt {
            CredentialState::Corrupt
        } else if self.needs_login(credential) {
            CredentialState::NeedsLogin
        } else if backing_off {
            CredentialState::Backoff
        } else {
            CredentialState::Ready
        }
    }
}
