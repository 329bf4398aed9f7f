//! The vault's life cycle: `status`, `vault.init`, `vault.unlock` (with
//! its rate limit), `vault.lock` and the auto-lock, `vault.change_passphrase`
//! and `vault.rekey`, and the unattended unlock at start. Each runs under
//! the daemon's life-cycle mutex, so they never interleave.
//!
//! Key derivations and keyring calls run on blocking threads under no
//! lock but the life-cycle mutex: the slots are read first (a quick
//! SQLite read under the vault mutex), then opened, then what changed is
//! written — so a slow unlock or an unanswered keyring prompt never stalls
//! the token path.
//!
//! A lock someone asked for (`vault.lock`, `vault.panic`) is *held*: kept
//! in the vault file, it stops every unattended unlock (the daemon's at
//! start, the CLI's from `$LATCHKEY_PASSPHRASE_FILE`) until a person runs
//! `latchkey unlock`. The idle auto-lock is not held.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::state::{Daemon, Peer, COMMIT_WAIT};
use crate::strength;
use crate::sync::lock as locked;
use crate::vault::{keyring, LockHold, NewSlots, Vault};
use latchkey_client::protocol::*;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Vault state, slots, auto-lock timer, and (unlocked) counts, the
/// credentials that need a login and whose accounts they hold.
impl Handler for Status {
    type Reply = StatusResult;

    async fn handle(daemon: &Arc<Daemon>, peer: Peer, _: Empty) -> Result<StatusResult, ApiError> {
        let slots = if daemon.has_vault() {
            daemon.with_vault_file(|v| Ok(v.slot_infos()?)).await?
        } else {
            Vec::new()
        };
        let session = daemon.session().ok();
        let state = match (&session, slots.is_empty()) {
            (Some(_), _) => VaultState::Unlocked,
            (None, false) => VaultState::Locked,
            (None, true) => VaultState::Uninitialized,
        };
        let idle = daemon.config.idle_timeout.as_secs();
        let locks_in = session
            .as_ref()
            .filter(|_| idle > 0)
            .map(|_| idle.saturating_sub(daemon.idle_for() as u64));
        let mut result = StatusResult {
            vault: state,
            vault_path: daemon.config.vault.to_string(),
            pid: std::process::id(),
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            slots,
            idle_timeout_secs: idle,
            locks_in_secs: locks_in,
            caller: Some(peer.caller.info()),
            approvers: daemon.approvals.approvers(),
            providers: None,
            credentials: None,
            needs_login: None,
            accounts: None,
            log_file: crate::fsutil::log_file().map(|p| p.display().to_string()),
        };
        if let Some(s) = &session {
            let catalog = s.catalog();
            // Which credentials hold a token: one pass over the cache (only
            // when a user credential is there to ask about).
            let mut held = None;
            let mut waiting: Vec<String> = catalog
                .credentials
                .values()
                .filter(|c| {
                    s.needs_login(c, || {
                        held.get_or_insert_with(|| s.tokens.describe_all(daemon.clock.now()))
                            .get(&c.id)
                            .is_some_and(|e| e.iter().any(|e| e.has_token))
                    })
                })
                .map(|c| c.config.name.clone())
                .collect();
            waiting.sort();
            result.providers = Some(catalog.providers().len() as u32);
            result.credentials = Some(catalog.credentials.len() as u32);
            result.needs_login = Some(waiting);
            result.accounts = Some(
                catalog
                    .credentials
                    .values()
                    // Only user credentials have grants; the name is copied
                    // only for those with an account (status goes over every
                    // credential: nothing per credential beyond a look).
                    .filter(|c| c.config.grant != GrantType::ClientCredentials)
                    .filter_map(|c| {
                        let subject = s.grant(&c.id)?.subject?;
                        Some((c.config.name.clone(), subject))
                    })
                    .collect(),
            );
        }
        Ok(result)
    }
}

/// Creates the vault with the slots asked for, unlocked.
impl Handler for VaultInit {
    type Reply = InitResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: InitParams,
    ) -> Result<InitResult, ApiError> {
        let _guard = daemon.lifecycle.lock().await;
        if daemon.has_vault() {
            return Err(ApiError::new(
                ErrorKind::AlreadyInitialized,
                format!(
                    "a vault already exists at {}: unlock it with `latchkey unlock`, or point LATCHKEY_VAULT elsewhere",
                    daemon.config.vault
                ),
            ));
        }
        if params.passphrase.is_none() && !params.keyring {
            return Err(ApiError::invalid_params(
                "vault.init needs a passphrase, a keyring slot, or both",
            ));
        }
        let params = match params.passphrase {
            Some(passphrase) => {
                let list = params.breached_list.clone();
                let passphrase = strong(passphrase, list).await?;
                InitParams {
                    passphrase: Some(passphrase),
                    ..params
                }
            }
            None => params,
        };
        let location = daemon.config.vault.clone();
        let choice = daemon.config.keyring;
        let (vault, keys) = tokio::task::spawn_blocking(move || {
            let backend = if params.keyring {
                Some(keyring::open(choice)?)
            } else {
                None
            };
            let slots = NewSlots {
                passphrase: params.passphrase.as_ref(),
                keyring: backend,
            };
            Vault::create(&location, slots)
        })
        .await
        .map_err(ApiError::internal)??;
        let vault_id = keys.vault_id.clone();
        let slots = vault.slot_infos()?;
        daemon.install_vault(vault);
        daemon.open_session(keys).await?;
        let kinds: Vec<&str> = slots.iter().map(|s| s.kind.as_str()).collect();
        daemon
            .audit
            .record("vault_init", None, Some(&peer), Some(kinds.join(",")));
        Ok(InitResult { vault_id, slots })
    }
}

impl Handler for VaultUnlock {
    type Reply = UnlockResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: UnlockParams,
    ) -> Result<UnlockResult, ApiError> {
        unlock(daemon, params, peer).await
    }
}

/// Opens the data key with a passphrase or a keyring slot. Wrong
/// passphrases slow further attempts down. An unattended unlock is
/// refused while a requested lock holds; an explicit one ends the hold.
async fn unlock(
    daemon: &Arc<Daemon>,
    params: UnlockParams,
    peer: Peer,
) -> Result<UnlockResult, ApiError> {
    let _guard = daemon.lifecycle.lock().await;
    if !daemon.has_vault() {
        return Err(ApiError::not_initialized());
    }
    if daemon.is_unlocked() {
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
    if params.unattended {
        if let Some(hold) = lock_hold(daemon).await? {
            return Err(held(&hold));
        }
    }
    check_limit(daemon, &peer, VaultUnlock::NAME)?;
    let by_passphrase = params.passphrase.is_some();
    let rows = daemon.with_vault_file(|v| Ok(v.slot_rows()?)).await?;
    // The slow part (Argon2id, keyring), under no lock but ours.
    let opened = tokio::task::spawn_blocking(move || match &params.passphrase {
        Some(p) => rows.open_with_passphrase(p),
        None => rows.open_with_keyring(),
    })
    .await
    .map_err(ApiError::internal)?;
    match opened {
        Ok((keys, slot)) => {
            let counted = {
                let mut limiter = locked(&daemon.limiter);
                let counted = limiter.state().failures > 0;
                limiter.succeeded();
                counted
            };
            if counted {
                daemon.save_limiter().await;
            }
            if !params.unattended {
                // A person unlocked it: unattended unlocks may follow again.
                // Written only when a hold is there: each write is a
                // synchronous=FULL commit (an fsync) an unlock need not pay.
                daemon
                    .with_vault_file(|v| {
                        if v.lock_hold()?.is_some() {
                            v.set_lock_hold(None)?;
                        }
                        Ok(())
                    })
                    .await?;
            }
            daemon.open_session(keys).await?;
            daemon
                .audit
                .record("unlock", None, Some(&peer), Some(slot.kind.clone()));
            Ok(UnlockResult {
                slot,
                already_unlocked: false,
            })
        }
        Err(e) => {
            let error = ApiError::from(e);
            let counted = if by_passphrase {
                note_failure(daemon, &error).await
            } else {
                None
            };
            let detail = match counted {
                Some(counted) => format!("{}; {counted}", error.kind),
                None => error.kind.to_string(),
            };
            daemon
                .audit
                .record("unlock_failed", None, Some(&peer), Some(detail));
            Err(error)
        }
    }
}

/// Refuses an attempt made during the wait wrong passphrases set, with an
/// audit row for the first refusal of each wait (a script retrying in a
/// loop would otherwise fill the log); the row counts those not recorded.
fn check_limit(daemon: &Daemon, peer: &Peer, method: &str) -> Result<(), ApiError> {
    let mut limiter = locked(&daemon.limiter);
    let Err(refusal) = limiter.check(daemon.clock.now()) else {
        return Ok(());
    };
    let record = limiter.refused();
    let failures = limiter.failures();
    drop(limiter);
    if let Some(unrecorded) = record {
        let wait = refusal.retry_after.unwrap_or_default();
        daemon.audit.record(
            "rate_limited",
            None,
            Some(peer),
            Some(format!("{method}: refused for {wait} s more after {failures} wrong passphrases in a row; {unrecorded} more refused since the last row")),
        );
    }
    Err(refusal)
}

/// A wrong passphrase counts against the limiter (saved in the vault
/// file); other failures do not. Returns, for a wrong one, what the audit
/// row says: the count in a row and the wait it set.
async fn note_failure(daemon: &Daemon, error: &ApiError) -> Option<String> {
    if error.kind != ErrorKind::WrongPassphrase {
        return None;
    }
    let (failures, wait) = {
        let mut limiter = locked(&daemon.limiter);
        let wait = limiter.failed(daemon.clock.now());
        (limiter.failures(), wait)
    };
    daemon.save_limiter().await;
    Some(if wait > 0 {
        format!("wrong passphrase {failures} in a row; the next attempt waits {wait} s")
    } else {
        format!("wrong passphrase {failures} in a row; no wait yet")
    })
}

/// Records a wrong passphrase given to `vault.change_passphrase` or
/// `vault.rekey` (`event`): guesses there count as unlock attempts do.
async fn note_other_failure(daemon: &Daemon, error: &ApiError, peer: &Peer, event: &str) {
    if let Some(detail) = note_failure(daemon, error).await {
        daemon.audit.record(event, None, Some(peer), Some(detail));
    }
}

async fn lock_hold(daemon: &Daemon) -> Result<Option<LockHold>, ApiError> {
    daemon.with_vault_file(|v| Ok(v.lock_hold()?)).await
}

/// The refusal of an unattended unlock while a requested lock holds.
fn held(hold: &LockHold) -> ApiError {
    // The file's plaintext says which command; only the two known names are echoed.
    let command = if hold.by == "panic" { "panic" } else { "lock" };
    let at = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(hold.at.max(0) as u64));
    ApiError::new(
        ErrorKind::Locked,
        format!("the vault was locked by `latchkey {command}` at {at}: unlock it with `latchkey unlock`"),
    )
}

/// Locks the vault: new refreshes and logins are refused, those about to
/// commit get a bounded wait ([`COMMIT_WAIT`]), then the data key and
/// every cached token are dropped and zeroized. Returns whether it was
/// unlocked. Does not hold the lock (see [`lock_held`]).
pub async fn lock(daemon: &Daemon, reason: &str) -> bool {
    if daemon.end_session(COMMIT_WAIT).await.is_none() {
        return false;
    }
    daemon.approvals.forget(None);
    daemon.audit.record("lock", None, None, Some(reason.into()));
    tracing::info!(reason, "vault locked");
    true
}

/// A lock someone asked for (`by`: `"lock"` or `"panic"`): held in the
/// vault file, first, so that no unattended unlock undoes it (see the
/// module docs), then [`lock`]. Returns whether it was unlocked.
pub async fn lock_held(daemon: &Daemon, by: &str) -> bool {
    let _guard = daemon.lifecycle.lock().await;
    if daemon.has_vault() {
        let hold = LockHold {
            by: by.to_owned(),
            at: daemon.clock.now(),
        };
        if let Err(e) = daemon
            .with_vault_file(move |v| Ok(v.set_lock_hold(Some(&hold))?))
            .await
        {
            tracing::warn!("could not record in the vault file that it is held locked: {e}");
        }
    }
    let reason = if by == "panic" { "panic" } else { "requested" };
    lock(daemon, reason).await
}

impl Handler for VaultLock {
    type Reply = Empty;

    async fn handle(daemon: &Arc<Daemon>, _: Peer, _: Empty) -> Result<Empty, ApiError> {
        lock_held(daemon, "lock").await;
        Ok(Empty {})
    }
}

/// Auto-lock: called every tick by the timer task. Not held: an
/// unattended unlock may open the vault again.
pub async fn lock_if_idle(daemon: &Daemon) {
    let idle = daemon.config.idle_timeout.as_secs() as i64;
    if idle > 0 && daemon.idle_for() >= idle && daemon.is_unlocked() {
        lock(daemon, "idle timeout").await;
    }
}

/// Rewraps the data key only; works locked too.
impl Handler for VaultChangePassphrase {
    type Reply = Empty;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: ChangePassphraseParams,
    ) -> Result<Empty, ApiError> {
        let _guard = daemon.lifecycle.lock().await;
        check_limit(daemon, &peer, VaultChangePassphrase::NAME)?;
        let new = strong(params.new, params.breached_list.clone()).await?;
        let params = ChangePassphraseParams { new, ..params };
        daemon
            .step_up_if_enrolled(params.totp.as_ref(), &peer, "changing the passphrase")
            .await?;
        let rows = daemon.with_vault_file(|v| Ok(v.slot_rows()?)).await?;
        // Two Argon2id runs, outside the vault mutex; the life-cycle mutex
        // keeps the slots as read until the change is written.
        let change = tokio::task::spawn_blocking(move || {
            rows.passphrase_change(&params.old, &params.new)
                .map_err(ApiError::from)
        })
        .await
        .map_err(ApiError::internal)?;
        let result = match change {
            Ok(change) => {
                daemon
                    .with_vault_file(move |v| Ok(v.apply_passphrase_change(change)?))
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(slot) => {
                daemon
                    .audit
                    .record("passphrase_changed", None, Some(&peer), Some(slot.id));
                Ok(Empty {})
            }
            Err(e) => {
                note_other_failure(daemon, &e, &peer, "passphrase_change_failed").await;
                Err(e)
            }
        }
    }
}

/// A new data key, every field and slot rewritten in one transaction; the
/// session continues under the new key.
impl Handler for VaultRekey {
    type Reply = RekeyResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: RekeyParams,
    ) -> Result<RekeyResult, ApiError> {
        let _guard = daemon.lifecycle.lock().await;
        let session = daemon.session()?;
        check_limit(daemon, &peer, VaultRekey::NAME)?;
        daemon
            .step_up_if_enrolled(params.totp.as_ref(), &peer, "rekeying the vault")
            .await?;
        let rows = daemon.with_vault_file(|v| Ok(v.slot_rows()?)).await?;
        // Every slot's KEK (Argon2id, keyring) first, under no lock but
        // ours; then the transaction and the key swap, excluding writers.
        let keks = tokio::task::spawn_blocking(move || {
            rows.keks(params.passphrase.as_ref())
                .map_err(ApiError::from)
        })
        .await
        .map_err(ApiError::internal)?;
        let result = match keks {
            Ok(keks) => session.rekey(keks).await,
            Err(e) => Err(e),
        };
        match result {
            Ok((fields, slots)) => {
                daemon.audit.record(
                    "rekey",
                    None,
                    Some(&peer),
                    Some(format!("{fields} fields, {slots} slots")),
                );
                Ok(RekeyResult { fields, slots })
            }
            Err(e) => {
                note_other_failure(daemon, &e, &peer, "rekey_failed").await;
                Err(e)
            }
        }
    }
}

/// Tries to unlock without a person: with the passphrase file named by
/// the configuration, else with a keyring slot — unless a requested lock
/// holds (see the module docs). Failures are logged.
pub async fn unlock_unattended(daemon: &Arc<Daemon>) {
    if !daemon.has_vault() {
        return;
    }
    match lock_hold(daemon).await {
        Ok(Some(hold)) => {
            tracing::info!("not unlocking the vault at start: {}", held(&hold));
            return;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!("not unlocking the vault at start: {e}");
            return;
        }
    }
    let passphrase = match &daemon.config.passphrase_file {
        Some(path) => match read_passphrase_file(path) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        },
        None => None,
    };
    let has_keyring = daemon
        .with_vault_file(|v| Ok(v.has_keyring_slot()?))
        .await
        .unwrap_or(false);
    if passphrase.is_none() && !has_keyring {
        return;
    }
    let peer = Peer::unidentified(std::process::id());
    let params = UnlockParams {
        passphrase,
        unattended: true,
    };
    match unlock(daemon, params, peer).await {
        Ok(r) => tracing::info!(slot = %r.slot.kind, "vault unlocked at start"),
        Err(e) => tracing::warn!("could not unlock the vault at start: {e}"),
    }
}

fn read_passphrase_file(path: &Path) -> Result<SecretString, String> {
    crate::fsutil::read_secret_file(path, "passphrase file")
}

/// The passphrase back if it is strong enough ([`strength::check`], on a
/// blocking thread: zxcvbn and a list scan take time).
async fn strong(
    passphrase: SecretString,
    breached_list: Option<PathBuf>,
) -> Result<SecretString, ApiError> {
    tokio::task::spawn_blocking(move || {
        strength::check(&passphrase, breached_list.as_deref()).map(|()| passphrase)
    })
    .await
    .map_err(ApiError::internal)?
}
