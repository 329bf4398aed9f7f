//! The vault's life cycle: `status`, `vault.init`, `vault.unlock` (with
//! its rate limit), `vault.lock` and the auto-lock, `vault.change_passphrase`
//! and `vault.rekey`, the key slots (`slot.add`, `slot.list`,
//! `slot.remove`), and the unattended unlock at start. Each runs under
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
//! start, the CLI's from `$LATCHKEY_KEY_FILE` or `$LATCHKEY_PASSPHRASE_FILE`) until a person runs
//! `latchkey unlock`. The idle auto-lock is not held.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::state::{Daemon, Peer, COMMIT_WAIT};
use crate::strength;
use crate::sync::lock as locked;
use crate::vault::crypto::FileKey;
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
        daemon.find_shared_vault().await;
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
        daemon.find_shared_vault().await;
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

/// Opens the data key with a passphrase, a key file or a keyring slot.
/// Wrong passphrases and key files slow further attempts down. An unattended unlock is
/// refused while a requested lock holds; an explicit one ends the hold.
async fn unlock(
    daemon: &Arc<Daemon>,
    params: UnlockParams,
    peer: Peer,
) -> Result<UnlockResult, ApiError> {
    let _guard = daemon.lifecycle.lock().await;
    daemon.find_shared_vault().await;
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
                label: None,
            },
            already_unlocked: true,
        });
    }
    if params.unattended {
        if let Some(hold) = lock_hold(daemon).await? {
            return Err(held(&hold));
        }
    }
    // Decoded before the limiter: a malformed key is no guess.
    let file = match (&params.passphrase, &params.key) {
        (None, Some(key)) => Some(file_key(key)?),
        _ => None,
    };
    check_limit(daemon, &peer, VaultUnlock::NAME)?;
    let guessed = if params.passphrase.is_some() {
        Some("passphrase")
    } else {
        file.as_ref().map(|_| "key file")
    };
    let rows = daemon.with_vault_file(|v| Ok(v.slot_rows()?)).await?;
    // The slow part (Argon2id, keyring), under no lock but ours.
    let opened = tokio::task::spawn_blocking(move || match (&params.passphrase, &file) {
        (Some(p), _) => rows.open_with_passphrase(p),
        (None, Some(file)) => rows.open_with_key_file(file),
        (None, None) => rows.open_with_keyring(),
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
            let counted = match guessed {
                Some(what) => note_failure(daemon, &error, what).await,
                None => None,
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

/// A wrong passphrase (or key file: `what`) counts against the limiter
/// (saved in the vault file); other failures do not. Returns, for a wrong
/// one, what the audit row says: the count in a row and the wait it set.
async fn note_failure(daemon: &Daemon, error: &ApiError, what: &str) -> Option<String> {
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
        format!("wrong {what} {failures} in a row; the next attempt waits {wait} s")
    } else {
        format!("wrong {what} {failures} in a row; no wait yet")
    })
}

/// Records a wrong passphrase given to `vault.change_passphrase` or
/// `vault.rekey` (`event`): guesses there count as unlock attempts do.
async fn note_other_failure(daemon: &Daemon, error: &ApiError, peer: &Peer, event: &str) {
    if let Some(detail) = note_failure(daemon, error, "passphrase").await {
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
                // A shared vault: the fleet's other daemons lock (their
                // data key opens nothing any more) and unlock again.
                daemon.tell_fleet(crate::vault::fleet::Change::Rekey).await;
                Ok(RekeyResult { fields, slots })
            }
            Err(e) => {
                note_other_failure(daemon, &e, &peer, "rekey_failed").await;
                Err(e)
            }
        }
    }
}

/// Tries to unlock without a person: with the key file named by the
/// configuration, then (if that did not open it) the passphrase file,
/// else with a keyring slot — unless a requested lock holds (see the
/// module docs). Failures are logged, naming the file, never its contents.
pub async fn unlock_unattended(daemon: &Arc<Daemon>) {
    daemon.find_shared_vault().await;
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
    if let Some(path) = &daemon.config.key_file {
        let key = match read_key_file(path) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        };
        let params = UnlockParams {
            key: Some(key),
            unattended: true,
            ..UnlockParams::default()
        };
        let peer = Peer::unidentified(std::process::id());
        match unlock(daemon, params, peer).await {
            Ok(r) => {
                tracing::info!(slot = %r.slot.kind, "vault unlocked at start");
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "could not unlock the vault at start with the key file {}: {e}",
                    path.display()
                );
                // Held locked: nothing else may unlock it either.
                if e.kind == ErrorKind::Locked {
                    return;
                }
            }
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
        ..UnlockParams::default()
    };
    match unlock(daemon, params, peer).await {
        Ok(r) => tracing::info!(slot = %r.slot.kind, "vault unlocked at start"),
        Err(e) => tracing::warn!("could not unlock the vault at start: {e}"),
    }
}

fn read_passphrase_file(path: &Path) -> Result<SecretString, String> {
    crate::fsutil::read_secret_file(path, "passphrase file")
}

/// A key file's key line, read as the CLI reads one: ours and private,
/// bounded, in a zeroized buffer; the error names the file, never its text.
fn read_key_file(path: &Path) -> Result<SecretString, String> {
    use latchkey_client::keyfile;
    use std::io::Read;
    let cannot =
        |e: &dyn std::fmt::Display| format!("cannot read the key file {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    latchkey_client::trust::check_secret_file(&file, path).map_err(|e| cannot(&e))?;
    let mut buf =
        zeroize::Zeroizing::new(Vec::with_capacity(keyfile::MAX_KEY_FILE_LEN as usize + 64));
    file.take(keyfile::MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut buf)
        .map_err(|e| cannot(&e))?;
    keyfile::parse(&buf).map_err(|e| cannot(&e))
}

/// A key line (`vault.unlock`'s or `slot.add`'s `key`) as the secret it
/// encodes, in locked memory.
fn file_key(key: &SecretString) -> Result<FileKey, ApiError> {
    let bytes = latchkey_client::keyfile::decode(key).map_err(|e| {
        ApiError::invalid_params(format!(
            "the key is not a Latchkey key file's key line: {e}"
        ))
    })?;
    Ok(FileKey::from_bytes(&bytes[..]).expect("a decoded key is 32 bytes"))
}

/// The label a new key-file slot gets: the one asked for, checked, or the
/// machine's hostname (if it makes a fine label).
fn slot_label(asked: Option<&str>) -> Result<String, ApiError> {
    let fine = |l: &str| {
        !l.is_empty()
            && l.chars().count() <= SLOT_LABEL_MAX
            && l.trim() == l
            && !l.chars().any(char::is_control)
    };
    match asked {
        Some(label) if fine(label) => Ok(label.to_owned()),
        Some(_) => Err(ApiError::invalid_params(format!(
            "a slot label is 1 to {SLOT_LABEL_MAX} printable characters, without leading or trailing spaces"
        ))),
        None => Ok(hostname().filter(|h| fine(h)).unwrap_or_else(|| "key file".into())),
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..end]).ok().map(str::to_owned)
}

/// A key-file slot for the caller's key file. Needs the vault unlocked
/// (the data key is wrapped for it) and a fresh proof of a person: it is
/// a new way to open the vault.
impl Handler for SlotAdd {
    type Reply = SlotInfo;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: SlotAddParams,
    ) -> Result<SlotInfo, ApiError> {
        let _guard = daemon.lifecycle.lock().await;
        let session = daemon.session()?;
        let label = slot_label(params.label.as_deref())?;
        let file = file_key(&params.key)?;
        daemon
            .check_proof(
                params.proof.as_ref(),
                &peer,
                "adding a key slot",
                crate::state::Need::Person,
            )
            .await?;
        let slot = session
            .with_vault(move |keys, vault| vault.add_keyfile_slot(keys, &file, &label))
            .await?;
        daemon
            .audit
            .record("slot_added", None, Some(&peer), Some(slot_detail(&slot)));
        Ok(slot)
    }
}

/// The audit detail of a slot: id, kind and label (never key material).
fn slot_detail(slot: &SlotInfo) -> String {
    match &slot.label {
        Some(label) => format!("{} {} '{}'", slot.kind, slot.id, label),
        None => format!("{} {}", slot.kind, slot.id),
    }
}

/// The key slots, locked or not (as `status` shows them).
impl Handler for SlotList {
    type Reply = Vec<SlotInfo>;

    async fn handle(daemon: &Arc<Daemon>, _: Peer, _: Empty) -> Result<Vec<SlotInfo>, ApiError> {
        if !daemon.has_vault() {
            return Err(ApiError::not_initialized());
        }
        daemon.with_vault_file(|v| Ok(v.slot_infos()?)).await
    }
}

/// Removes a key slot (never the last way to open the vault); a keyring
/// slot's entry is deleted too, best effort. Needs the vault unlocked and
/// a fresh proof: removing a slot can lock its holder out.
impl Handler for SlotRemove {
    type Reply = Empty;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: SlotRemoveParams,
    ) -> Result<Empty, ApiError> {
        let _guard = daemon.lifecycle.lock().await;
        daemon.session()?;
        daemon
            .check_proof(
                params.proof.as_ref(),
                &peer,
                "removing a key slot",
                crate::state::Need::Person,
            )
            .await?;
        let id = params.id;
        let removed = daemon
            .with_vault_file(move |v| Ok(v.remove_slot(&id)?))
            .await?;
        daemon.audit.record(
            "slot_removed",
            None,
            Some(&peer),
            Some(slot_detail(&removed.info)),
        );
        let id = removed.info.id.clone();
        let forgotten = tokio::task::spawn_blocking(move || removed.forget_keyring_entry()).await;
        if let Ok(Err(e)) = forgotten {
            tracing::warn!("removed key slot {id}, but its keyring entry stays: {e}");
        }
        Ok(Empty {})
    }
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
