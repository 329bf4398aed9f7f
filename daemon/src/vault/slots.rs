//! Key slots: creating a vault's data key and wrapping it in passphrase
//! and keyring slots, opening it again, changing a passphrase (rewrap only)
//! and rekeying (new data key, every field re-encrypted in one transaction).

use super::crypto::{self, Dek, Kek, PassphraseSlot};
use super::store::{SlotRow, Store};
use super::{keyring, Keys, NewSlots, Result, Vault, VaultError};
use latchkey_client::protocol::SlotInfo;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const SLOT_PASSPHRASE: &str = "passphrase";
pub const SLOT_KEYRING: &str = "keyring";

impl Vault {
    /// Creates a vault with a fresh random DEK wrapped in the requested slots.
    /// Call off the async runtime (Argon2id, keyring).
    pub fn create(path: &Path, slots: NewSlots<'_>) -> Result<(Vault, Keys)> {
        let vault_id = crypto::random_id();
        let keys = Keys {
            vault_id: vault_id.clone(),
            dek: Dek::generate().map_err(|e| VaultError::Slot {
                slot: "new".into(),
                source: e,
            })?,
        };
        let now = latchkey_client::unix_now();
        let mut rows = Vec::new();
        if let Some(passphrase) = slots.passphrase {
            let id = crypto::random_id();
            let slot = PassphraseSlot::new().map_err(|e| VaultError::Slot {
                slot: id.clone(),
                source: e,
            })?;
            let kek = slot.derive(passphrase).map_err(|e| VaultError::Slot {
                slot: id.clone(),
                source: e,
            })?;
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
        let result = Store::open(path, true).and_then(|mut store| {
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

    /// Tries every passphrase slot. Slow (Argon2id per slot): call off the runtime.
    pub fn unlock_with_passphrase(&self, passphrase: &SecretString) -> Result<(Keys, SlotInfo)> {
        let vault_id = self.vault_id()?;
        let slots: Vec<SlotRow> = self
            .store
            .slots()?
            .into_iter()
            .filter(|s| s.kind == SLOT_PASSPHRASE)
            .collect();
        if slots.is_empty() {
            return Err(VaultError::NoPassphraseSlot);
        }
        for slot in slots {
            let dek = passphrase_kek(&slot, passphrase)?.unwrap(&slot.id, &slot.wrapped_dek);
            if let Ok(dek) = dek {
                return Ok((Keys { vault_id, dek }, slot_info(&slot)));
            }
        }
        Err(VaultError::WrongPassphrase)
    }

    /// Tries every keyring slot. Blocking (keyring I/O): call off the runtime.
    pub fn unlock_with_keyring(&self) -> Result<(Keys, SlotInfo)> {
        let vault_id = self.vault_id()?;
        let slots: Vec<SlotRow> = self
            .store
            .slots()?
            .into_iter()
            .filter(|s| s.kind == SLOT_KEYRING)
            .collect();
        let mut last_error = VaultError::NoKeyringSlot;
        for slot in slots {
            match keyring_kek(&vault_id, &slot) {
                Ok(kek) => match kek.unwrap(&slot.id, &slot.wrapped_dek) {
                    Ok(dek) => return Ok((Keys { vault_id, dek }, slot_info(&slot))),
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

    pub fn has_keyring_slot(&self) -> Result<bool> {
        Ok(self.store.slots()?.iter().any(|s| s.kind == SLOT_KEYRING))
    }

    /// Rewraps the DEK under `new` in the slot that `old` opens. Only the
    /// slot changes; no field is touched.
    pub fn change_passphrase(
        &mut self,
        old: &SecretString,
        new: &SecretString,
    ) -> Result<SlotInfo> {
        let (keys, info) = self.unlock_with_passphrase(old)?;
        let slot = PassphraseSlot::new().map_err(|e| VaultError::Slot {
            slot: info.id.clone(),
            source: e,
        })?;
        let kek = slot.derive(new).map_err(|e| VaultError::Slot {
            slot: info.id.clone(),
            source: e,
        })?;
        let params = serde_json::to_string(&slot).expect("slot parameters serialize");
        self.store
            .update_slot(&info.id, &params, &kek.wrap(&info.id, &keys.dek))?;
        Ok(info)
    }

    /// Makes a new DEK and re-encrypts every field and slot in one
    /// transaction. Every slot must be re-wrappable: passphrase slots need
    /// `passphrase`, keyring slots need their keyring entry.
    pub fn rekey(
        &mut self,
        keys: &Keys,
        passphrase: Option<&SecretString>,
    ) -> Result<(Keys, u64, u64)> {
        let new = Keys {
            vault_id: keys.vault_id.clone(),
            dek: Dek::generate().map_err(|e| VaultError::Slot {
                slot: "new".into(),
                source: e,
            })?,
        };
        let mut wrapped = Vec::new();
        for slot in self.store.slots()? {
            let kek = match slot.kind.as_str() {
                SLOT_PASSPHRASE => {
                    let passphrase = passphrase.ok_or(VaultError::WrongPassphrase)?;
                    let kek = passphrase_kek(&slot, passphrase)?;
                    // Prove this passphrase opens this slot before trusting it.
                    kek.unwrap(&slot.id, &slot.wrapped_dek)
                        .map_err(|_| VaultError::WrongPassphrase)?;
                    kek
                }
                _ => keyring_kek(&keys.vault_id, &slot)?,
            };
            wrapped.push((slot.id.clone(), kek.wrap(&slot.id, &new.dek)));
        }
        let mut fields = self.store.sealed_fields()?;
        for field in &mut fields {
            let plain = keys.open(field.table, &field.row_id, field.field, &field.blob)?;
            field.blob = new.seal(field.table, &field.row_id, field.field, &plain);
        }
        self.store.rekey(&fields, &wrapped)?;
        Ok((new, fields.len() as u64, wrapped.len() as u64))
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

fn passphrase_kek(slot: &SlotRow, passphrase: &SecretString) -> Result<Kek> {
    let params: PassphraseSlot =
        serde_json::from_str(&slot.params).map_err(|_| VaultError::Corrupt {
            what: format!("passphrase slot {}", slot.id),
        })?;
    params
        .derive(passphrase)
        .map_err(|source| VaultError::Slot {
            slot: slot.id.clone(),
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
