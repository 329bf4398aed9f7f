//! The vault's life cycle: `status`, `vault.init`, `vault.unlock` (with
//! its rate limit), `vault.lock` and the auto-lock, `vault.change_passphrase`
//! and `vault.rekey`, and the unattended unlock at start. Each runs under
//! the daemon's life-cycle mutex, so they never interleave.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::state::{Daemon, Peer};
use crate::vault::{keyring, NewSlots, Vault};
use latchkey_client::protocol::*;
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use std::sync::Arc;

/// Vault state, slots, auto-lock timer, and (unlocked) counts, the
/// credentials that need a login and whose accounts they hold.
impl Handler for Status {
    type Reply = StatusResult;

    async fn handle(daemon: &Arc<Daemon>, _: Peer, _: Empty) -> Result<StatusResult, ApiError> {
        let slots = match daemon.vault().as_ref() {
            Some(v) => v.slot_infos()?,
            None => Vec::new(),
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
            vault_path: daemon.config.vault_path.display().to_string(),
            pid: std::process::id(),
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            slots,
            idle_timeout_secs: idle,
            locks_in_secs: locks_in,
            providers: None,
            credentials: None,
            needs_login: None,
            accounts: None,
        };
        if let Some(s) = &session {
            let catalog = s.catalog();
            let mut waiting: Vec<String> = catalog
                .credentials
                .values()
                .filter(|c| s.needs_login(c))
                .map(|c| c.config.name.clone())
                .collect();
            waiting.sort();
            result.providers = Some(catalog.providers.len() as u32);
            result.credentials = Some(catalog.credentials.len() as u32);
            result.needs_login = Some(waiting);
            result.accounts = Some(
                catalog
                    .credentials
                    .values()
                    .filter_map(|c| Some((c.config.name.clone(), s.grant(&c.id)?.subject?)))
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
        _: Peer,
        params: InitParams,
    ) -> Result<InitResult, ApiError> {
        let _guard = daemon.lifecycle.lock().await;
        if daemon.vault().is_some() {
            return Err(ApiError::new(
                ErrorKind::AlreadyInitialized,
                format!(
                    "a vault already exists at {}: unlock it with `latchkey unlock`, or point LATCHKEY_VAULT elsewhere",
                    daemon.config.vault_path.display()
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
        let path = daemon.config.vault_path.clone();
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
            Vault::create(&path, slots)
        })
        .await
        .map_err(ApiError::internal)??;
        let vault_id = keys.vault_id.clone();
        let slots = vault.slot_infos()?;
        *daemon.vault() = Some(vault);
        daemon.open_session(keys)?;
        let kinds: Vec<&str> = slots.iter().map(|s| s.kind.as_str()).collect();
        daemon
            .audit
            .record("vault_init", None, None, Some(kinds.join(",")));
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
/// passphrases slow further attempts down.
async fn unlock(
    daemon: &Arc<Daemon>,
    params: UnlockParams,
    peer: Peer,
) -> Result<UnlockResult, ApiError> {
    let _guard = daemon.lifecycle.lock().await;
    if daemon.vault().is_none() {
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
    check_limit(daemon)?;
    let by_passphrase = params.passphrase.is_some();
    let worker = Arc::clone(daemon);
    let opened = tokio::task::spawn_blocking(move || {
        let vault = worker.vault();
        let vault = vault
            .as_ref()
            .expect("checked above under the life-cycle mutex; only init creates the vault");
        match &params.passphrase {
            Some(p) => vault.unlock_with_passphrase(p),
            None => vault.unlock_with_keyring(),
        }
    })
    .await
    .map_err(ApiError::internal)?;
    match opened {
        Ok((keys, slot)) => {
            crate::sync::lock(&daemon.limiter).succeeded();
            daemon.open_session(keys)?;
            daemon
                .audit
                .record("unlock", None, Some(peer.pid), Some(slot.kind.clone()));
            Ok(UnlockResult {
                slot,
                already_unlocked: false,
            })
        }
        Err(e) => {
            let error = ApiError::from(e);
            if by_passphrase {
                note_failure(daemon, &error);
            }
            daemon.audit.record(
                "unlock_failed",
                None,
                Some(peer.pid),
                Some(error.kind.to_string()),
            );
            Err(error)
        }
    }
}

fn check_limit(daemon: &Daemon) -> Result<(), ApiError> {
    crate::sync::lock(&daemon.limiter).check(daemon.clock.now())
}

/// A wrong passphrase counts against the limiter; other failures do not.
fn note_failure(daemon: &Daemon, error: &ApiError) {
    if error.kind == ErrorKind::WrongPassphrase {
        crate::sync::lock(&daemon.limiter).failed(daemon.clock.now());
    }
}

/// Locks the vault: the data key and every cached token are dropped and
/// zeroized. Returns whether it was unlocked.
pub fn lock(daemon: &Daemon, reason: &str) -> bool {
    if daemon.close_session().is_none() {
        return false;
    }
    daemon.audit.record("lock", None, None, Some(reason.into()));
    tracing::info!(reason, "vault locked");
    true
}

impl Handler for VaultLock {
    type Reply = Empty;

    async fn handle(daemon: &Arc<Daemon>, _: Peer, _: Empty) -> Result<Empty, ApiError> {
        let _guard = daemon.lifecycle.lock().await;
        lock(daemon, "requested");
        Ok(Empty {})
    }
}

/// Auto-lock: called every tick by the timer task.
pub fn lock_if_idle(daemon: &Daemon) {
    let idle = daemon.config.idle_timeout.as_secs() as i64;
    if idle > 0 && daemon.idle_for() >= idle && daemon.is_unlocked() {
        lock(daemon, "idle timeout");
    }
}

/// Rewraps the data key only; works locked too.
impl Handler for VaultChangePassphrase {
    type Reply = Empty;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        params: ChangePassphraseParams,
    ) -> Result<Empty, ApiError> {
        let _guard = daemon.lifecycle.lock().await;
        if params.new.expose_secret().is_empty() {
            return Err(ApiError::invalid_params(
                "the new passphrase is empty; choose a non-empty one",
            ));
        }
        check_limit(daemon)?;
        let worker = Arc::clone(daemon);
        let result = tokio::task::spawn_blocking(move || {
            let mut vault = worker.vault();
            let vault = vault.as_mut().ok_or_else(ApiError::not_initialized)?;
            vault
                .change_passphrase(&params.old, &params.new)
                .map_err(ApiError::from)
        })
        .await
        .map_err(ApiError::internal)?;
        match result {
            Ok(slot) => {
                daemon
                    .audit
                    .record("passphrase_changed", None, None, Some(slot.id));
                Ok(Empty {})
            }
            Err(e) => {
                note_failure(daemon, &e);
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
        _: Peer,
        params: RekeyParams,
    ) -> Result<RekeyResult, ApiError> {
        let _guard = daemon.lifecycle.lock().await;
        let session = daemon.session()?;
        check_limit(daemon)?;
        let worker = Arc::clone(&session);
        let result = tokio::task::spawn_blocking(move || {
            worker.with_vault(|keys, vault| vault.rekey(keys, params.passphrase.as_ref()))
        })
        .await
        .map_err(ApiError::internal)?;
        match result {
            Ok((new_keys, fields, slots)) => {
                session.replace_keys(new_keys);
                daemon.audit.record(
                    "rekey",
                    None,
                    None,
                    Some(format!("{fields} fields, {slots} slots")),
                );
                Ok(RekeyResult { fields, slots })
            }
            Err(e) => {
                note_failure(daemon, &e);
                Err(e)
            }
        }
    }
}

/// Tries to unlock without a person: with the passphrase file named by
/// the configuration, else with a keyring slot. Failures are logged.
pub async fn unlock_unattended(daemon: &Arc<Daemon>) {
    if daemon.vault().is_none() {
        return;
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
        .vault()
        .as_ref()
        .is_some_and(|v| v.has_keyring_slot().unwrap_or(false));
    if passphrase.is_none() && !has_keyring {
        return;
    }
    let peer = Peer {
        pid: std::process::id(),
    };
    match unlock(daemon, UnlockParams { passphrase }, peer).await {
        Ok(r) => tracing::info!(slot = %r.slot.kind, "vault unlocked at start"),
        Err(e) => tracing::warn!("could not unlock the vault at start: {e}"),
    }
}

fn read_passphrase_file(path: &Path) -> Result<SecretString, String> {
    use std::io::Read;
    let cannot = |e: &dyn std::fmt::Display| {
        format!("cannot read the passphrase file {}: {e}", path.display())
    };
    let mut file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    // Ours and readable by nobody else, as the CLI insists too.
    latchkey_client::trust::check_secret_file(&file, path).map_err(|e| cannot(&e))?;
    let mut text = zeroize::Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(|e| cannot(&e))?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(SecretString::from(trimmed))
}
