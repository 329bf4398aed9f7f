//! The core state, as data plus small verbs: the [`Daemon`] (configuration,
//! the vault file, the one HTTP client, the audit log, the idle clock) and,
//! while the vault is unlocked, its [`Session`] (data key, catalog, grants,
//! token cache). The protocol's verbs live in their own modules
//! (`lifecycle`, `manage`, `token`, `login`, `revoke`) and work through these;
//! this module imports none of them.

use crate::approval::Approvals;
use crate::audit::{Audit, Sink};
use crate::cache::TokenCache;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::ApiError;
pub use crate::identity::Peer;
use crate::identity::Resolver;
use crate::oauth::http::Http;
use crate::ratelimit::Limits;
use crate::sync::{lock, read, write};
use crate::vault::fleet::Fleet;
use crate::vault::totp::Checked;
use crate::vault::{
    AuditEvent, Catalog, Credential, Grant, Keys, LimiterState, Provider, SlotKeks, Vault,
    VaultError,
};
use latchkey_client::protocol::{CredentialState, ErrorKind, GrantType, LoginResult, Proof};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::watch;

/// The vault file, `None` until `init`; shared by the daemon, its session
/// and the audit writer. Held only for SQLite work (and the AEAD of the
/// rows it writes), never across a key derivation or a keyring call, and
/// only on blocking threads, never on the async workers.
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

/// A running authenticating proxy, as the registry holds it until its
/// `proxy.wait` claims it (`proxy/`).
pub struct ProxyEntry {
    /// Notified when the proxy is to stop (its waiter left).
    pub stop: Arc<tokio::sync::Notify>,
    /// Set once a `proxy.wait` holds the proxy; the proxy stops if none
    /// does within its claim window.
    pub claimed: Arc<AtomicBool>,
    /// What the proxy did, once it stopped (`None` while it runs).
    pub stopped: watch::Receiver<Option<latchkey_client::protocol::ProxyStopped>>,
}

pub struct Daemon {
    pub(crate) config: Config,
    pub(crate) clock: Clock,
    vault: SharedVault,
    /// Whether a vault file exists, readable without the vault mutex.
    initialized: AtomicBool,
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
    /// The last DPoP nonce each server sent (RFC 9449 §8).
    pub(crate) dpop_nonces: Arc<crate::oauth::client_auth::Nonces>,
    pub(crate) audit: Audit,
    /// The unlocked session's keys, for the audit writer (see [`VaultSink`]).
    audit_keys: AuditKeys,
    /// Rate limits per app and per credential (`ratelimit.rs`).
    pub(crate) limits: Limits,
    /// Finds who is behind a connection; caches executables' hashes.
    pub(crate) identities: Resolver,
    /// Apps waiting for the user's decision, and who decides.
    pub(crate) approvals: Arc<Approvals>,
    /// Notified by `daemon.shutdown`; the server stops accepting.
    pub(crate) shutdown: tokio::sync::Notify,
    /// Logins in progress, by login id; each login task removes its own.
    logins: Mutex<HashMap<String, LoginEntry>>,
    /// Authenticating proxies not yet claimed by a `proxy.wait`, by id.
    proxies: Mutex<HashMap<String, ProxyEntry>>,
    /// A shared (PostgreSQL) vault's fleet: one refresher per credential
    /// across the daemons, and their change notifications. `None` for a file.
    pub(crate) fleet: Option<Arc<Fleet>>,
}

/// Everything that exists only while the vault is unlocked.
pub struct Session {
    id: u64,
    /// The data key; taken out (and zeroized) by [`Session::close`], so a
    /// task that still holds the session can no longer decrypt anything.
    /// Every writer holds the read side from sealing to commit
    /// ([`Session::with_vault`]); a rekey holds the write side for its
    /// whole transaction and the key swap ([`Session::rekey`]), so no
    /// writer ever seals with a key that is no longer the vault's.
    keys: Arc<RwLock<Option<Keys>>>,
    vault: SharedVault,
    catalog: RwLock<Catalog>,
    /// Set by [`Session::catalog_mut`], taken by the dispatcher.
    catalog_changed: AtomicBool,
    pub(crate) tokens: Arc<TokenCache>,
    /// Refresh tokens and login facts of user credentials, by credential id.
    grants: Mutex<HashMap<String, Grant>>,
    /// One gate per credential: refreshes of a credential never overlap,
    /// whatever scope sets they are for (two concurrent uses of a rotating
    /// refresh token make providers revoke the whole grant).
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Refreshes and logins between their token request and their commit:
    /// a lock waits for them (bounded), because a rotated refresh token
    /// that is not committed is lost.
    commits: watch::Sender<Commits>,
    /// An authenticator being enrolled (`totp.rs`): gone at lock.
    pub(crate) enrolling: Mutex<Option<Enrolling>>,
    /// Step-up credentials confirmed, by credential id: until when
    /// (`stepup.rs`). Memory only: a lock ends every confirmation.
    pub(crate) confirmed: Mutex<HashMap<String, i64>>,
    /// Woken at each confirmation, for the callers that wait for one.
    pub(crate) confirmations: tokio::sync::Notify,
    /// Apps (`Caller::issue_key`) that received an OAuth 1.0a signature,
    /// by credential id: the first one per app is audited (`oauth1.rs`).
    pub(crate) oauth1_signed_for: Mutex<HashMap<String, Vec<u64>>>,
}

/// See [`Session::begin_commit`].
#[derive(Default)]
struct Commits {
    /// Set by a lock: no new refresh or login commit may start.
    closing: bool,
    next: u64,
    /// Credential names by registration.
    inflight: HashMap<u64, String>,
}

/// A refresh or login registered from before its token request until its
/// commit (see [`Session::begin_commit`]); dropping it deregisters.
pub(crate) struct CommitGuard<'a> {
    session: &'a Session,
    id: u64,
}

impl Drop for CommitGuard<'_> {
    fn drop(&mut self) {
        self.session.commits.send_modify(|c| {
            c.inflight.remove(&self.id);
        });
    }
}

/// How long a lock waits for refreshes and logins to commit: one HTTP
/// request's timeout (a registered refresh is at most one request away
/// from its commit) plus 5 s for the commit itself.
pub(crate) const COMMIT_WAIT: Duration =
    Duration::from_secs(crate::oauth::http::REQUEST_TIMEOUT.as_secs() + 5);

/// Wrong passphrases allowed before unlock attempts are slowed down.
const FREE_UNLOCK_ATTEMPTS: u32 = 3;
/// What a proof must hold ([`Daemon::check_proof`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// The passphrase or an authenticator code (a code once one is enrolled).
    Person,
    /// An authenticator code.
    Code,
}

/// The slow-down doubles per failure up to this.
const MAX_UNLOCK_DELAY_SECS: i64 = 60;

/// Slows down passphrase guessing: after a few wrong passphrases, each
/// further attempt waits twice as long as the last (capped). Its state is
/// saved in the vault file ([`LimiterState`]) at every change, so that a
/// restart (`daemon.shutdown` is open to any same-user client) resets nothing.
#[derive(Default)]
pub struct Limiter {
    failures: u32,
    blocked_until: i64,
    /// The wait (its `blocked_until`) whose first refusal was recorded in
    /// the audit log: one row per wait, not one per attempt. Memory only.
    refusal_recorded: Option<i64>,
    /// Refusals not recorded since the last one that was.
    unrecorded: u32,
}

impl Limiter {
    pub fn from_state(state: LimiterState) -> Limiter {
        Limiter {
            failures: state.failures,
            blocked_until: state.blocked_until,
            ..Limiter::default()
        }
    }

    pub fn state(&self) -> LimiterState {
        LimiterState {
            failures: self.failures,
            blocked_until: self.blocked_until,
        }
    }

    /// The error for an attempt made too soon after failures, if it is.
    pub fn check(&self, now: i64) -> Result<(), ApiError> {
        let wait = self.blocked_until - now;
        if wait > 0 {
            return Err(ApiError::new(
                ErrorKind::RateLimited,
                format!("too many wrong passphrases or codes: try again in {wait} s (once {FREE_UNLOCK_ATTEMPTS} were wrong in a row, each wrong one doubles the wait, up to {MAX_UNLOCK_DELAY_SECS} s; the right one ends it)"),
            )
            .with_retry_after(Some(wait as u64)));
        }
        Ok(())
    }

    /// Counts a refused attempt: `Some(n)` for the first refusal of each
    /// wait, which is recorded (`n`: refusals of earlier waits not
    /// recorded), `None` for the others.
    pub fn refused(&mut self) -> Option<u32> {
        if self.refusal_recorded == Some(self.blocked_until) {
            self.unrecorded = self.unrecorded.saturating_add(1);
            return None;
        }
        self.refusal_recorded = Some(self.blocked_until);
        Some(std::mem::take(&mut self.unrecorded))
    }

    /// Wrong passphrases in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts a wrong passphrase; returns the wait it sets before the next
    /// attempt, in seconds (0 for the first few).
    pub fn failed(&mut self, now: i64) -> i64 {
        self.failures += 1;
        if self.failures >= FREE_UNLOCK_ATTEMPTS {
            let exp = self.failures - FREE_UNLOCK_ATTEMPTS;
            let delay = (1i64 << exp.min(10)).min(MAX_UNLOCK_DELAY_SECS);
            self.blocked_until = now + delay;
            return delay;
        }
        0
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// A session's keys as the audit writer reaches them: set when a session
/// opens; the session's close empties the keys themselves, so from then on
/// the writer sees it locked.
type AuditKeys = Arc<Mutex<Option<Arc<RwLock<Option<Keys>>>>>>;

/// The audit writer puts its batches into the vault, once there is one:
/// chained under the session's audit key while unlocked (rows written
/// while locked first), unchained while locked (`vault::Vault::write_audit`).
/// It runs on the audit writer's own thread, never on an async worker, and
/// takes the keys before the vault, as every writer does.
struct VaultSink {
    vault: SharedVault,
    keys: AuditKeys,
    retention: crate::vault::Retention,
    clock: Clock,
    /// Whether the broken head was logged (once per daemon, not per batch).
    warned: AtomicBool,
}

impl Sink for VaultSink {
    fn write(&self, rows: &[AuditEvent]) -> bool {
        let handle = lock(&self.keys).clone();
        let keys = handle.as_ref().map(|k| read(k));
        let keys = keys.as_ref().and_then(|k| k.as_ref());
        if rows.is_empty() && keys.is_none() {
            return false;
        }
        let mut vault = lock(&self.vault);
        let Some(vault) = vault.as_mut() else {
            return false;
        };
        match vault.write_audit(keys, rows, self.retention, self.clock.now()) {
            Ok(written) => {
                if written.head_broken && !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::error!("the audit log's sealed head is missing or damaged: new rows are kept but not chained; run `latchkey audit verify`");
                }
                written.more
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not write the audit log");
                false
            }
        }
    }
}

impl Daemon {
    /// Opens the vault file if one exists. Must run inside the tokio runtime.
    pub fn new(config: Config) -> Result<Arc<Daemon>, ApiError> {
        let vault = Vault::open(&config.vault)?;
        let fleet = match &config.vault {
            crate::vault::store::Location::Postgres(target) => {
                Some(Arc::new(Fleet::new(Arc::clone(target))))
            }
            crate::vault::store::Location::File(_) => None,
        };
        let limiter = match &vault {
            Some(v) => Limiter::from_state(v.limiter_state()?),
            None => Limiter::default(),
        };
        let initialized = AtomicBool::new(vault.is_some());
        let vault: SharedVault = Arc::new(Mutex::new(vault));
        let clock = config.clock;
        let identities = Resolver::new(config.cli_path.clone());
        let approval_timeout = config.approval_timeout;
        let audit_keys = AuditKeys::default();
        let sink = VaultSink {
            vault: Arc::clone(&vault),
            keys: Arc::clone(&audit_keys),
            retention: config.audit_retention,
            clock,
            warned: AtomicBool::new(false),
        };
        let audit = Audit::start(sink, clock);
        Ok(Arc::new(Daemon {
            limits: Limits::new(config.rate_limits, clock, audit.clone()),
            audit,
            audit_keys,
            clock,
            config,
            vault,
            initialized,
            session: RwLock::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            limiter: Mutex::new(limiter),
            last_activity: AtomicI64::new(clock.now()),
            sessions: AtomicU64::new(1),
            http: Http::new(),
            dpop_nonces: Arc::default(),
            identities,
            approvals: Approvals::new(approval_timeout),
            shutdown: tokio::sync::Notify::new(),
            logins: Mutex::new(HashMap::new()),
            proxies: Mutex::new(HashMap::new()),
            fleet,
        }))
    }

    /// Tells the fleet's other daemons (a shared vault) that `change`
    /// happened, on a blocking thread; a failure is logged (they read the
    /// database again on their next miss). Nothing for a vault file.
    pub(crate) async fn tell_fleet(&self, change: crate::vault::fleet::Change) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        let told = tokio::task::spawn_blocking(move || fleet.tell(&change)).await;
        if let Ok(Err(e)) = told {
            tracing::warn!("could not tell the fleet's other daemons: {e}");
        }
    }

    /// A shared vault another daemon of the fleet created after this one
    /// started: found in the database (by `status`, `init` and `unlock`),
    /// and served from then on. Nothing for a vault file, or once found.
    pub(crate) async fn find_shared_vault(&self) {
        if self.fleet.is_none() || self.has_vault() {
            return;
        }
        let location = self.config.vault.clone();
        match tokio::task::spawn_blocking(move || Vault::open(&location)).await {
            Ok(Ok(Some(vault))) => {
                let mut slot = lock(&self.vault);
                if slot.is_none() {
                    *slot = Some(vault);
                    self.initialized.store(true, Ordering::Release);
                    tracing::info!("another daemon of the fleet created the vault: serving it");
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!("cannot read the shared vault: {e}"),
            Err(e) => tracing::warn!("cannot read the shared vault: {e}"),
        }
    }

    /// Whether a vault file exists (without touching it).
    pub(crate) fn has_vault(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
    }

    /// The vault file made by `init`.
    pub(crate) fn install_vault(&self, vault: Vault) {
        *lock(&self.vault) = Some(vault);
        self.initialized.store(true, Ordering::Release);
    }

    /// Runs `f` on the vault file on a blocking thread, under the vault
    /// mutex: for SQLite work only (no key derivation, no keyring call).
    /// Lock order: a session's keys before this (see [`Session::with_vault`],
    /// which is how anything needing the data key reaches the file).
    pub(crate) async fn with_vault_file<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vault) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let vault = Arc::clone(&self.vault);
        tokio::task::spawn_blocking(move || {
            let mut vault = lock(&vault);
            f(vault.as_mut().ok_or_else(ApiError::not_initialized)?)
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Saves the limiter's state in the vault file (see [`Limiter`]).
    pub(crate) async fn save_limiter(&self) {
        let state = lock(&self.limiter).state();
        let saved = self
            .with_vault_file(move |v| Ok(v.set_limiter_state(&state)?))
            .await;
        if let Err(e) = saved {
            tracing::warn!("could not save the unlock limiter in the vault file: {e}");
        }
    }

    /// The unlocked session, or the error that says what to do.
    pub(crate) fn session(&self) -> Result<Arc<Session>, ApiError> {
        if let Some(session) = read(&self.session).as_ref() {
            return Ok(Arc::clone(session));
        }
        Err(if self.has_vault() {
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

    /// Makes a session of `keys`: loads catalog, grants and stored tokens
    /// (on a blocking thread).
    pub(crate) async fn open_session(&self, keys: Keys) -> Result<(), ApiError> {
        let id = self.sessions.fetch_add(1, Ordering::Relaxed);
        let vault = Arc::clone(&self.vault);
        let clock = self.clock;
        let session = tokio::task::spawn_blocking(move || Session::load(id, keys, vault, clock))
            .await
            .map_err(ApiError::internal)??;
        self.touch();
        // The audit writer chains under this session's key from now on.
        *lock(&self.audit_keys) = Some(Arc::clone(&session.keys));
        *write(&self.session) = Some(Arc::new(session));
        Ok(())
    }

    /// Ends the session, if there is one, and returns it (closed); `None`
    /// when there was none (or another lock ended it meanwhile). New
    /// refreshes and logins are refused at once; those already between
    /// their token request and their commit get up to `wait` to commit
    /// (a rotated refresh token must not be lost), then the keys go anyway.
    pub(crate) async fn end_session(&self, wait: Duration) -> Option<Arc<Session>> {
        let session = read(&self.session).clone()?;
        session.stop_commits();
        let mut commits = session.commits.subscribe();
        let settled = tokio::time::timeout(wait, commits.wait_for(|c| c.inflight.is_empty()));
        if settled.await.is_err() {
            for name in session.commits.borrow().inflight.values() {
                tracing::warn!(
                    credential = %name,
                    "locking while credential '{name}' is still committing a refresh or login after {} s: a rotated refresh token may be lost, and then it needs `latchkey login {name}`",
                    wait.as_secs()
                );
            }
        }
        let ended = {
            let mut current = write(&self.session);
            match current.as_ref() {
                Some(s) if s.id == session.id => current.take(),
                _ => None,
            }
        };
        // Taking the keys waits for a writer's SQLite commit: not on an async worker.
        let closing = Arc::clone(&session);
        if let Err(e) = tokio::task::spawn_blocking(move || closing.close()).await {
            tracing::error!("closing the session failed: {e}");
        }
        ended
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

    /// Checks a proof that a person asks, for what would widen access
    /// (allowing an app, opening a credential to every app, enrolling an
    /// authenticator): see [`Daemon::check_proof`]. A connection that
    /// proved once needs no second proof (a script setting up many rules
    /// pays one key derivation, not one per rule).
    pub(crate) async fn prove(
        &self,
        proof: Option<&Proof>,
        peer: &Peer,
        what: &str,
    ) -> Result<(), ApiError> {
        if peer.caller.proven() {
            return Ok(());
        }
        self.check_proof(proof, peer, what, Need::Person).await?;
        peer.caller.set_proven();
        Ok(())
    }

    /// The step-up of a vault-wide change (rekey, passphrase change): once
    /// an authenticator is enrolled, a fresh code of it; nothing before.
    pub(crate) async fn step_up_if_enrolled(
        &self,
        code: Option<&secrecy::SecretString>,
        peer: &Peer,
        what: &str,
    ) -> Result<(), ApiError> {
        if !self.with_vault_file(|v| Ok(v.has_authenticator()?)).await? {
            return Ok(());
        }
        let proof = code.map(|c| Proof::totp(c.clone()));
        self.check_proof(proof.as_ref(), peer, what, Need::Code)
            .await
    }

    /// Checks a proof, every time (no connection is trusted for having
    /// proved before): the vault passphrase, or a code of the enrolled
    /// authenticator that was not used before (or one of its recovery
    /// codes) — things a same-user program does not have. Once an
    /// authenticator is enrolled, a code is required (the step-up of
    /// sensitive changes); `Need::Code` requires one in any case. Without
    /// either, polkit's yes proves a person (`Need::Person` only). Wrong
    /// answers of either kind count against the unlock limiter, so a proof
    /// is no cheaper to guess than an unlock, and are audited.
    pub(crate) async fn check_proof(
        &self,
        proof: Option<&Proof>,
        peer: &Peer,
        what: &str,
        need: Need,
    ) -> Result<(), ApiError> {
        let proof = proof.cloned().unwrap_or_default();
        let enrolled = self.with_vault_file(|v| Ok(v.has_authenticator()?)).await?;
        if proof.totp.is_none() && (enrolled || need == Need::Code) {
            if !enrolled {
                return Err(ApiError::new(
                    ErrorKind::NotFound,
                    format!("{what} needs a code of your authenticator, and none is enrolled: enroll one with `latchkey totp enroll`"),
                ));
            }
            return Err(ApiError::new(
                ErrorKind::StepUpRequired,
                format!("{what} needs a code of your authenticator (one is enrolled): add --totp, or --totp-file PATH"),
            ));
        }
        if proof.passphrase.is_none() && proof.totp.is_none() {
            // polkit's word about the calling process (`polkit.rs`: the
            // system's authentication dialog, asked by the daemon itself).
            if proof.polkit && need == Need::Person {
                let proved = crate::polkit::prove(peer.pid, what).await;
                if proved.is_err() {
                    self.audit.record(
                        "proof_failed",
                        None,
                        Some(peer),
                        Some(format!("{what} (polkit)")),
                    );
                }
                return proved;
            }
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("{what} needs proof that a person asks: give the vault passphrase (at the terminal prompt, or with --passphrase-file FILE), a code of your authenticator (--totp), or use --polkit where polkit runs"),
            ));
        }
        lock(&self.limiter).check(self.clock.now())?;
        let mut failed = None;
        if let Some(passphrase) = proof.passphrase {
            let rows = self.with_vault_file(|v| Ok(v.slot_rows()?)).await?;
            let opened = tokio::task::spawn_blocking(move || {
                rows.open_with_passphrase(&passphrase).map(drop)
            })
            .await
            .map_err(ApiError::internal)?;
            failed = opened.err().map(ApiError::from);
        }
        if let (None, Some(code)) = (&failed, proof.totp) {
            let session = self.session().map_err(|e| {
                if e.kind == ErrorKind::Locked {
                    ApiError::new(
                        ErrorKind::Locked,
                        "the vault is locked, and an authenticator code is checked against the unlocked vault: run `latchkey unlock` first",
                    )
                } else {
                    e
                }
            })?;
            if let CodeCheck::Failed(e) = self.check_code(&session, &code, peer).await? {
                failed = Some(e);
            }
        }
        let Some(error) = failed else {
            let counted = {
                let mut limiter = lock(&self.limiter);
                let counted = limiter.state().failures > 0;
                limiter.succeeded();
                counted
            };
            if counted {
                self.save_limiter().await;
            }
            return Ok(());
        };
        if error.kind == ErrorKind::WrongPassphrase {
            lock(&self.limiter).failed(self.clock.now());
            self.save_limiter().await;
        }
        self.audit
            .record("proof_failed", None, Some(peer), Some(what.to_owned()));
        Err(error)
    }

    pub(crate) fn logins(&self) -> MutexGuard<'_, HashMap<String, LoginEntry>> {
        lock(&self.logins)
    }

    pub(crate) fn proxies(&self) -> MutexGuard<'_, HashMap<String, ProxyEntry>> {
        lock(&self.proxies)
    }
}

/// An enrollment between `totp.enroll` and `totp.confirm`: one at a time,
/// bound to the connection that started it, gone at lock.
pub struct Enrolling {
    pub caller: std::sync::Weak<crate::identity::Caller>,
    pub auth: crate::vault::totp::Authenticator,
    pub deadline: i64,
}

/// What a presented code proved.
enum CodeCheck {
    Proved,
    /// Wrong, or replayed: counts against the unlock limiter.
    Failed(ApiError),
}

/// Checks `code` against the enrolled authenticator, recording its use (a
/// code's step, a recovery code) in the same vault write. Errors that are
/// not the person's (locked, nothing enrolled) are returned as `Err`.
impl Daemon {
    async fn check_code(
        &self,
        session: &Session,
        code: &SecretString,
        peer: &Peer,
    ) -> Result<CodeCheck, ApiError> {
        let daemon = self;
        let code = code.clone();
        let now = daemon.clock.now();
        let checked = session
            .with_vault(move |keys, vault| {
                let Some(mut auth) = vault.load_authenticator(keys)? else {
                    return Ok(None);
                };
                let checked = auth.check(code.expose_secret(), now);
                if matches!(checked, Checked::Code | Checked::Recovery { .. }) {
                    vault.put_authenticator(keys, &auth)?;
                }
                Ok(Some(checked))
            })
            .await?;
        Ok(match checked {
        None => {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                "no authenticator is enrolled: give the vault passphrase instead, or enroll one with `latchkey totp enroll`",
            ))
        }
        Some(Checked::Code) => CodeCheck::Proved,
        Some(Checked::Recovery { left }) => {
            daemon.audit.record(
                "recovery_code_used",
                None,
                Some(peer),
                Some(format!("{left} left")),
            );
            if left <= 2 {
                tracing::warn!(
                    left,
                    "few recovery codes are left: `latchkey totp enroll` makes new ones"
                );
            }
            CodeCheck::Proved
        }
        Some(Checked::Reused) => CodeCheck::Failed(ApiError::new(
            ErrorKind::WrongPassphrase,
            "that authenticator code was used already: wait for the next one",
        )),
        Some(Checked::Wrong) => CodeCheck::Failed(ApiError::new(
            ErrorKind::WrongPassphrase,
            "wrong authenticator code: type the code your authenticator app shows now, or a recovery code",
        )),
    })
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
            keys: Arc::new(RwLock::new(Some(keys))),
            vault,
            catalog: RwLock::new(catalog),
            catalog_changed: AtomicBool::new(false),
            tokens,
            grants: Mutex::new(grants),
            gates: Mutex::new(HashMap::new()),
            commits: watch::Sender::new(Commits::default()),
            enrolling: Mutex::new(None),
            confirmed: Mutex::new(HashMap::new()),
            confirmations: tokio::sync::Notify::new(),
            oauth1_signed_for: Mutex::default(),
        })
    }

    /// Runs `f` with the data key and the vault on a blocking thread, both
    /// taken in the documented order (keys, then vault) and held until `f`
    /// returns: every write that seals goes through here, so a rekey
    /// ([`Session::rekey`]) can exclude them all. Fails with `locked` once
    /// the session is closed, whoever still holds it.
    pub(crate) async fn with_vault<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Keys, &mut Vault) -> Result<T, VaultError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let keys = Arc::clone(&self.keys);
        let vault = Arc::clone(&self.vault);
        tokio::task::spawn_blocking(move || {
            let keys = read(&keys);
            let keys = keys.as_ref().ok_or_else(ApiError::locked)?;
            let mut vault = lock(&vault);
            let vault = vault.as_mut().ok_or_else(ApiError::not_initialized)?;
            Ok(f(keys, vault)?)
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Runs `f` with the data key (not the vault) on a blocking thread:
    /// for work on a fleet lock's own connection ([`FleetLock`]), which
    /// must not wait for the vault mutex. Holds the keys' read side, as
    /// [`Session::with_vault`] does, so a rekey excludes it.
    pub(crate) async fn with_keys<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Keys) -> Result<T, VaultError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let keys = Arc::clone(&self.keys);
        tokio::task::spawn_blocking(move || {
            let keys = read(&keys);
            let keys = keys.as_ref().ok_or_else(ApiError::locked)?;
            Ok(f(keys)?)
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// The rekey transaction with the slots' KEKs already derived, and the
    /// new data key put in place of the old one (zeroized as it drops),
    /// all under the keys' write lock: no writer seals between the commit
    /// and the swap. Cached tokens stay: they do not depend on the key.
    /// Returns the counts of fields and slots rewritten.
    pub(crate) async fn rekey(&self, keks: SlotKeks) -> Result<(u64, u64), ApiError> {
        let keys = Arc::clone(&self.keys);
        let vault = Arc::clone(&self.vault);
        tokio::task::spawn_blocking(move || {
            let mut keys = write(&keys);
            let current = keys.as_ref().ok_or_else(ApiError::locked)?;
            let mut vault = lock(&vault);
            let vault = vault.as_mut().ok_or_else(ApiError::not_initialized)?;
            let (new, fields, slots) = vault.rekey_with(current, &keks)?;
            *keys = Some(new);
            Ok((fields, slots))
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// From now on, [`Session::begin_commit`] refuses with `locked`: the
    /// first step of a lock (and of `panic`, before it revokes).
    pub(crate) fn stop_commits(&self) {
        self.commits.send_modify(|c| c.closing = true);
    }

    /// Registers a refresh or login of credential `name` from before its
    /// token request until its commit (drop the guard then): a lock waits
    /// for it (see [`Daemon::end_session`]). Refused with `locked` once a
    /// lock has begun.
    pub(crate) fn begin_commit(&self, name: &str) -> Result<CommitGuard<'_>, ApiError> {
        let mut id = None;
        self.commits.send_if_modified(|c| {
            if c.closing {
                return false;
            }
            c.next += 1;
            c.inflight.insert(c.next, name.to_owned());
            id = Some(c.next);
            true
        });
        let id = id.ok_or_else(ApiError::locked)?;
        Ok(CommitGuard { session: self, id })
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

    /// The catalog to change: marked changed, so that a shared vault's
    /// other daemons are told when the call ends (`dispatch.rs`).
    pub(crate) fn catalog_mut(&self) -> RwLockWriteGuard<'_, Catalog> {
        self.catalog_changed.store(true, Ordering::Release);
        write(&self.catalog)
    }

    /// Whether the catalog was changed since last asked.
    pub(crate) fn take_catalog_change(&self) -> bool {
        self.catalog_changed.swap(false, Ordering::AcqRel)
    }

    /// The catalog as a sibling daemon of the fleet left it (not a change
    /// of ours to tell anyone about).
    pub(crate) fn replace_catalog(&self, catalog: Catalog) {
        *write(&self.catalog) = catalog;
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
    pub(crate) async fn client_secret(
        &self,
        credential: &Credential,
    ) -> Result<Option<SecretString>, ApiError> {
        let credential = credential.clone();
        self.with_vault(move |keys, vault| vault.client_secret(keys, &credential))
            .await
    }

    /// A credential's keys (`private_key_jwt`, DPoP), opened from the vault
    /// just for the request that needs them, oldest first.
    pub(crate) async fn credential_keys(
        &self,
        credential: &Credential,
    ) -> Result<Vec<crate::vault::keys::StoredKey>, ApiError> {
        let credential = credential.clone();
        self.with_vault(move |keys, vault| vault.credential_keys(keys, &credential))
            .await
    }

    /// A credential's client secrets, the newest and a previous one kept
    /// since a rotation, opened just for the request that needs them.
    pub(crate) async fn client_secrets(
        &self,
        credential: &Credential,
    ) -> Result<crate::vault::ClientSecrets, ApiError> {
        let credential = credential.clone();
        self.with_vault(move |keys, vault| vault.client_secrets(keys, &credential))
            .await
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
    /// token and no cached access token. `holds_token` says whether the
    /// cache holds an access token for it (asked only for a user
    /// credential without a refresh token): a caller that goes over many
    /// credentials reads the whole cache once ([`TokenCache::describe_all`])
    /// instead of scanning it once per credential.
    pub(crate) fn needs_login(
        &self,
        credential: &Credential,
        holds_token: impl FnOnce() -> bool,
    ) -> bool {
        matches!(
            credential.config.grant,
            GrantType::AuthorizationCode | GrantType::DeviceCode | GrantType::Oauth1
        ) && self
            .grant(&credential.id)
            .is_none_or(|g| g.refresh_token.is_none() && g.oauth1.is_none())
            && !holds_token()
    }

    /// Where a credential stands, as `credential show` and `status` say it;
    /// `holds_token`: whether the cache holds an access token for it.
    pub(crate) fn state_of(
        &self,
        credential: &Credential,
        backing_off: bool,
        holds_token: bool,
    ) -> CredentialState {
        if credential.corrupt {
            CredentialState::Corrupt
        } else if self.needs_login(credential, || holds_token) {
            CredentialState::NeedsLogin
        } else if backing_off {
            CredentialState::Backoff
        } else {
            CredentialState::Ready
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::NewSlots;

    /// A daemon over a new vault, unlocked.
    async fn unlocked_daemon(dir: &std::path::Path) -> Arc<Daemon> {
        let path = dir.join("vault.db");
        let pass = SecretString::from("pass");
        let slots = NewSlots {
            passphrase: Some(&pass),
            keyring: None,
        };
        let (vault, keys) =
            Vault::create(&crate::vault::store::Location::File(path.clone()), slots).unwrap();
        drop(vault);
        let daemon = Daemon::new(Config {
            vault: crate::vault::store::Location::File(path),
            socket_path: dir.join("s.sock"),
            idle_timeout: Duration::ZERO,
            frame_timeout: Duration::from_secs(10),
            max_connections: 16,
            connection_idle_timeout: Duration::ZERO,
            passphrase_file: None,
            key_file: None,
            keyring: crate::vault::keyring::BackendChoice::Auto,
            cli_path: None,
            approval_timeout: Duration::from_secs(60),
            notify: false,
            audit_retention: crate::vault::Retention::DEFAULT,
            rate_limits: crate::ratelimit::RateLimits::OFF,
            clock: Clock::following_tokio(),
        })
        .unwrap();
        daemon.open_session(keys).await.unwrap();
        daemon
    }

    /// A lock refuses new commits at once, waits for a registered one,
    /// and — when it never ends — locks anyway after the bound.
    #[tokio::test(start_paused = true)]
    async fn a_lock_waits_for_registered_commits_up_to_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = unlocked_daemon(dir.path()).await;
        let session = daemon.session().unwrap();
        let guard = session.begin_commit("api").unwrap();

        let locking = {
            let daemon = Arc::clone(&daemon);
            tokio::spawn(async move { daemon.end_session(COMMIT_WAIT).await.is_some() })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!locking.is_finished(), "the lock waits for the commit");
        assert_eq!(
            session.begin_commit("other").err().map(|e| e.kind),
            Some(ErrorKind::Locked),
            "no new commit starts once a lock has begun"
        );
        // The registered one still has the keys.
        session.with_vault(|_, _| Ok(())).await.unwrap();
        drop(guard);
        assert!(locking.await.unwrap(), "locked once the commit ended");
        assert!(!daemon.is_unlocked());

        // A commit that never ends: locked anyway after the bound.
        let pass = SecretString::from("pass");
        let rows = daemon
            .with_vault_file(|v| Ok(v.slot_rows()?))
            .await
            .unwrap();
        let (keys, _) = rows.open_with_passphrase(&pass).unwrap();
        daemon.open_session(keys).await.unwrap();
        let session = daemon.session().unwrap();
        let _stuck = session.begin_commit("api").unwrap();
        let started = tokio::time::Instant::now();
        assert!(daemon.end_session(COMMIT_WAIT).await.is_some());
        assert_eq!(started.elapsed(), COMMIT_WAIT);
        assert_eq!(
            session
                .with_vault(|_, _| Ok(()))
                .await
                .err()
                .map(|e| e.kind),
            Some(ErrorKind::Locked),
            "the keys are gone"
        );
    }
}
