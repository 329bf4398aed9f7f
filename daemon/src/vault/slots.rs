//! Key slots: creating a vault's data key and wrapping it in passphrase
//! and keyring slots, opening it again, changing a passphrase (rewrap only)
//! and rekeying (new data key, every field re-encrypted in one transaction).

use super::crypto::{self, Dek, KdfParams, Kek, PassphraseSlot};
use super::store::{Location, SlotRow, Store};
use super::{keyring, Keys, NewSlots, Result, Vault, VaultError};
use latchkey_client::protocol::SlotInfo;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub const SLOT_PASSPHRASE: &str = "passphrase";
pub const SLOT_KEYRING: &str = "keyring";

impl Vault {
    /// Creates a vault with a fresh random DEK wrapped in the requested slots.
    /// Call off the async runtime (Argon2id, keyring).
    pub fn create(location: &Location, slots: NewSlots<'_>) -> Result<(Vault, Keys)> {
        let vault_id = crypto::random_id();
        let keys = Keys::new(
            vault_id.clone(),
            Dek::generate().map_err(|e| VaultError::Slot {
                slot: "new".into(),
                source: e,
            })?,
        );
        let now = latchkey_client::unix_now();
        let mut rows = Vec::new();
        if let Some(passphrase) = slots.passphrase {
            let id = crypto::random_id();
            let slot = PassphraseSlot::new().map_err(|e| VaultError::Slot {
                slot: id.clone(),
                source: e,
            })?;
            let kek = derive(&slot, &id, passphrase)?;
            rows.push(SlotRow {
                wrapped_dek: kek.wrap(&id, &keys.dek),
                params: serde_json::to_string(&slot).expect("slot parameters serialize"),
                id,
                kind: SLOT_PASSPHRASE.into(),
                created_at: now,
            });
        }
        let mut stored_in_keyring = None;
        if let Some(backend) = slots.keyring {
            let id = crypto::random_id();
            let kek = Kek::generate().map_err(|e| VaultError::Slot {
                slot: id.clone(),
                source: e,
            })?;
            let account = keyring_account(&vault_id, &id);
            kek.with_bytes(|bytes| keyring::store(backend, &account, bytes))?;
            stored_in_keyring = Some((backend, account));
            rows.push(SlotRow {
                wrapped_dek: kek.wrap(&id, &keys.dek),
                params: serde_json::to_string(&KeyringSlot {
                    backend: backend_name(backend).into(),
                })
                .expect("slot parameters serialize"),
                id,
                kind: SLOT_KEYRING.into(),
                created_at: now,
            });
        }
        let result = Store::open(location, true).and_then(|mut store| {
            store.initialize(&vault_id, &rows)?;
            Ok(store)
        });
        match result {
            Ok(store) => Ok((Vault { store }, keys)),
            Err(e) => {
                if let Some((backend, account)) = stored_in_keyring {
                    let _ = keyring::delete(backend, &account);
                }
                Err(e.into())
            }
        }
    }

    pub fn slot_infos(&self) -> Result<Vec<SlotInfo>> {
        Ok(self
            .store
            .slots()?
            .into_iter()
            .map(|s| SlotInfo {
                backend: (s.kind == SLOT_KEYRING)
                    .then(|| {
                        serde_json::from_str::<KeyringSlot>(&s.params)
                            .ok()
                            .map(|k| k.backend)
                    })
                    .flatten(),
                id: s.id,
                kind: s.kind,
                created_at: s.created_at,
            })
            .collect())
    }

    /// The vault id and every key slot: all that opening the data key
    /// needs from the file. A quick read: take it under the vault mutex,
    /// then do the slow part ([`SlotRows::open_with_passphrase`], …)
    /// after releasing it.
    pub fn slot_rows(&self) -> Result<SlotRows> {
        Ok(SlotRows {
            vault_id: self.vault_id()?,
            rows: self.store.slots()?,
        })
    }

    /// Tries every passphrase slot. Both halves at once, for tests: the
    /// daemon derives outside the vault mutex (see [`Vault::slot_rows`]).
    #[cfg(test)]
    pub fn unlock_with_passphrase(&self, passphrase: &SecretString) -> Result<(Keys, SlotInfo)> {
        self.slot_rows()?.open_with_passphrase(passphrase)
    }

    pub fn has_keyring_slot(&self) -> Result<bool> {
        Ok(self.store.slots()?.iter().any(|s| s.kind == SLOT_KEYRING))
    }

    /// Rewraps the DEK under `new` in the slot that `old` opens. Only the
    /// slot changes; no field is touched. (The daemon runs the two halves
    /// itself, the derivations outside the vault mutex.)
    #[cfg(test)]
    pub fn change_passphrase(
        &mut self,
        old: &SecretString,
        new: &SecretString,
    ) -> Result<SlotInfo> {
        let change = self.slot_rows()?.passphrase_change(old, new)?;
        self.apply_passphrase_change(change)
    }

    /// Writes a rewrapped passphrase slot made by [`SlotRows::passphrase_change`].
    pub fn apply_passphrase_change(&mut self, change: PassphraseChange) -> Result<SlotInfo> {
        self.store
            .update_slot(&change.slot.id, &change.params, &change.wrapped_dek)?;
        Ok(change.slot)
    }

    /// Makes a new DEK and re-encrypts every field and slot in one
    /// transaction. Every slot must be re-wrappable: passphrase slots need
    /// `passphrase`, keyring slots need their keyring entry. (The daemon
    /// runs the two halves itself, the derivations outside every lock.)
    #[cfg(test)]
    pub fn rekey(
        &mut self,
        keys: &Keys,
        passphrase: Option<&SecretString>,
    ) -> Result<(Keys, u64, u64)> {
        let keks = self.slot_rows()?.keks(passphrase)?;
        self.rekey_with(keys, &keks)
    }

    /// The transaction of a rekey, with the slots' KEKs already derived
    /// ([`SlotRows::keks`]): a new DEK, every field re-sealed under it,
    /// every slot rewrapped. No KDF or keyring call happens here, only
    /// AEAD and SQLite. Returns the new keys and the counts of fields
    /// and slots rewritten.
    pub fn rekey_with(&mut self, keys: &Keys, keks: &SlotKeks) -> Result<(Keys, u64, u64)> {
        let new = Keys::new(
            keys.vault_id.clone(),
            Dek::generate().map_err(|e| VaultError::Slot {
                slot: "new".into(),
                source: e,
            })?,
        );
        let mut wrapped = Vec::new();
        for slot in self.store.slots()? {
            // A slot without a KEK would keep wrapping the old DEK, and
            // open nothing after the commit: refuse instead.
            let kek = keks
                .0
                .iter()
                .find(|(id, _)| *id == slot.id)
                .map(|(_, kek)| kek)
                .ok_or_else(|| VaultError::Corrupt {
                    what: format!("key slot {} (it appeared during the rekey)", slot.id),
                })?;
            wrapped.push((slot.id.clone(), kek.wrap(&slot.id, &new.dek)));
        }
        let mut fields = self.store.sealed_fields()?;
        for field in &mut fields {
            let plain = keys.open(field.table, &field.row_id, field.field, &field.blob)?;
            field.blob = new.seal(field.table, &field.row_id, field.field, &plain);
        }
        // The audit chain under the new key, in the same transaction.
        self.store.rekey(&fields, &wrapped, |tx| {
            super::chain::rechain(tx, keys, &new)
        })?;
        Ok((new, fields.len() as u64, wrapped.len() as u64))
    }
}

/// 16 slots: a vault has a passphrase slot or two (a person's, a CI
/// runner's) and a keyring slot or two. More is a crafted file, and each
/// keyring slot may cost a D-Bus call of up to 25 s.
const MAX_SLOTS: usize = 16;

/// The key slots as read from the file, for the slow work of opening them
/// outside the vault mutex.
pub struct SlotRows {
    vault_id: String,
    rows: Vec<SlotRow>,
}

/// A passphrase slot rewrapped under a new passphrase, ready to be written.
pub struct PassphraseChange {
    slot: SlotInfo,
    params: String,
    wrapped_dek: Vec<u8>,
}

/// The KEK of every slot, each proven to open its slot: what a rekey
/// rewraps the new DEK with.
pub struct SlotKeks(Vec<(String, Kek)>);

impl SlotRows {
    /// Refuses a file whose slots would make one unlock (or rekey) work
    /// for minutes: too many slots, or more Argon2id work over the
    /// passphrase slots together than one slot at the ceiling. Checked
    /// before any derivation, so the refusal is quick.
    fn check_work(&self) -> Result<()> {
        let mut work = 0u64;
        for slot in self.rows.iter().filter(|s| s.kind == SLOT_PASSPHRASE) {
            work = work.saturating_add(passphrase_params(slot)?.kdf.work());
        }
        if self.rows.len() > MAX_SLOTS || work > KdfParams::MAX_WORK {
            return Err(VaultError::TooMuchSlotWork {
                slots: self.rows.len(),
                work,
            });
        }
        Ok(())
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a SlotRow> + 'a {
        self.rows.iter().filter(move |s| s.kind == kind)
    }

    /// Tries every passphrase slot (Argon2id each, within the bounds of
    /// [`SlotRows::check_work`]). Slow: call off the runtime.
    pub fn open_with_passphrase(&self, passphrase: &SecretString) -> Result<(Keys, SlotInfo)> {
        self.check_work()?;
        let mut tried = false;
        for slot in self.of_kind(SLOT_PASSPHRASE) {
            tried = true;
            let dek = passphrase_kek(slot, passphrase)?.unwrap(&slot.id, &slot.wrapped_dek);
            if let Ok(dek) = dek {
                let keys = Keys::new(self.vault_id.clone(), dek);
                return Ok((keys, slot_info(slot)));
            }
        }
        Err(if tried {
            VaultError::WrongPassphrase
        } else {
            VaultError::NoPassphraseSlot
        })
    }

    /// Tries every keyring slot. Blocking (keyring I/O): call off the runtime.
    pub fn open_with_keyring(&self) -> Result<(Keys, SlotInfo)> {
        self.check_work()?;
        let mut last_error = VaultError::NoKeyringSlot;
        for slot in self.of_kind(SLOT_KEYRING) {
            match keyring_kek(&self.vault_id, slot) {
                Ok(kek) => match kek.unwrap(&slot.id, &slot.wrapped_dek) {
                    Ok(dek) => {
                        let keys = Keys::new(self.vault_id.clone(), dek);
                        return Ok((keys, slot_info(slot)));
                    }
                    Err(_) => {
                        last_error = VaultError::Corrupt {
                            what: format!("keyring slot {}", slot.id),
                        }
                    }
                },
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// Opens the slot `old` opens and rewraps its DEK under `new` (two
    /// Argon2id runs). Slow: call off the runtime.
    pub fn passphrase_change(
        &self,
        old: &SecretString,
        new: &SecretString,
    ) -> Result<PassphraseChange> {
        let (keys, info) = self.open_with_passphrase(old)?;
        let slot = PassphraseSlot::new().map_err(|e| VaultError::Slot {
            slot: info.id.clone(),
            source: e,
        })?;
        let kek = derive(&slot, &info.id, new)?;
        Ok(PassphraseChange {
            params: serde_json::to_string(&slot).expect("slot parameters serialize"),
            wrapped_dek: kek.wrap(&info.id, &keys.dek),
            slot: info,
        })
    }

    /// The KEK of every slot for a rekey: Argon2id of `passphrase` for
    /// passphrase slots (each proven to open its slot), the keyring entry
    /// for keyring slots. Slow and blocking: call off the runtime, under
    /// no lock.
    pub fn keks(&self, passphrase: Option<&SecretString>) -> Result<SlotKeks> {
        self.check_work()?;
        let mut keks = Vec::new();
        for slot in &self.rows {
            let kek = match slot.kind.as_str() {
                SLOT_PASSPHRASE => {
                    let passphrase = passphrase.ok_or(VaultError::WrongPassphrase)?;
                    let kek = passphrase_kek(slot, passphrase)?;
                    // Prove this passphrase opens this slot before trusting it.
                    kek.unwrap(&slot.id, &slot.wrapped_dek)
                        .map_err(|_| VaultError::WrongPassphrase)?;
                    kek
                }
                _ => keyring_kek(&self.vault_id, slot)?,
            };
            keks.push((slot.id.clone(), kek));
        }
        Ok(SlotKeks(keks))
    }
}

#[derive(Serialize, Deserialize)]
struct KeyringSlot {
    backend: String,
}

fn backend_name(backend: keyring::Backend) -> &'static str {
    match backend {
        keyring::Backend::SecretService => "secret-service",
        keyring::Backend::KeyUtils => "keyutils",
    }
}

fn keyring_account(vault_id: &str, slot_id: &str) -> String {
    format!("vault-{vault_id}/slot-{slot_id}")
}

fn slot_info(slot: &SlotRow) -> SlotInfo {
    SlotInfo {
        id: slot.id.clone(),
        kind: slot.kind.clone(),
        created_at: slot.created_at,
        backend: None,
    }
}

fn passphrase_params(slot: &SlotRow) -> Result<PassphraseSlot> {
    serde_json::from_str(&slot.params).map_err(|_| VaultError::Corrupt {
        what: format!("passphrase slot {}", slot.id),
    })
}

fn passphrase_kek(slot: &SlotRow, passphrase: &SecretString) -> Result<Kek> {
    derive(&passphrase_params(slot)?, &slot.id, passphrase)
}

/// Every Argon2id derivation of a slot's KEK goes through here.
fn derive(params: &PassphraseSlot, slot_id: &str, passphrase: &SecretString) -> Result<Kek> {
    #[cfg(feature = "testing")]
    test_hooks::before_derive();
    params
        .derive(passphrase)
        .map_err(|source| VaultError::Slot {
            slot: slot_id.to_owned(),
            source,
        })
}

fn keyring_kek(vault_id: &str, slot: &SlotRow) -> Result<Kek> {
    let params: KeyringSlot =
        serde_json::from_str(&slot.params).map_err(|_| VaultError::Corrupt {
            what: format!("keyring slot {}", slot.id),
        })?;
    let backend = match params.backend.as_str() {
        "secret-service" => keyring::Backend::SecretService,
        "keyutils" => keyring::Backend::KeyUtils,
        _ => {
            return Err(VaultError::Corrupt {
                what: format!("keyring slot {}", slot.id),
            })
        }
    };
    let bytes = keyring::load(backend, &keyring_account(vault_id, &slot.id))?;
    Kek::from_bytes(&bytes).ok_or_else(|| VaultError::Corrupt {
        what: format!("the keyring entry of slot {}", slot.id),
    })
}

/// A hook for the daemon's own tests: code run before every Argon2id
/// derivation, so a test can hold one still and show that nothing else
/// waits for it. Nothing in the daemon sets it, and only a build with the
/// `testing` feature (the daemon's own tests) has it.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod test_hooks {
    use std::sync::{Arc, Mutex};

    type Hook = Arc<dyn Fn() + Send + Sync>;

    static BEFORE_DERIVE: Mutex<Option<Hook>> = Mutex::new(None);

    /// Runs `hook` before each derivation from now on (`None`: no more).
    pub fn set_before_derive(hook: Option<Hook>) {
        *crate::sync::lock(&BEFORE_DERIVE) = hook;
    }

    pub(super) fn before_derive() {
        // Cloned out, so a hook that blocks holds no lock.
        let hook = crate::sync::lock(&BEFORE_DERIVE).clone();
        if let Some(hook) = hook {
            hook();
        }
    }
}
