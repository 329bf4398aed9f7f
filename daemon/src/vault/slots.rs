//! Key slots: creating a vault's data key and wrapping it in passphrase,
//! keyring and key-file slots, opening it again, adding and removing
//! key-file slots, changing a passphrase (rewrap only) and rekeying (new
//! data key, every field re-encrypted in one transaction).
//!
//! A key-file slot (one machine's `latchkey slot add --key-file PATH`)
//! stores the X25519 public key derived from the file's secret, the
//! slot's random KEK sealed to it with HPKE (`crypto.rs`), the DEK
//! wrapped under that KEK as in every slot, and a *binding*: the public
//! key and label sealed under the DEK. A rekey needs no key file: it
//! checks the binding (so an edited public key is refused, not sealed
//! to), then seals a fresh KEK to each stored public key.

use super::crypto::{self, Dek, FileKey, KdfParams, Kek, PassphraseSlot, SealedKek};
use super::store::{Location, RewrappedSlot, SlotRow, Store};
use super::{keyring, Keys, NewSlots, Result, Vault, VaultError};
use latchkey_client::protocol::SlotInfo;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub const SLOT_PASSPHRASE: &str = "passphrase";
pub const SLOT_KEYRING: &str = "keyring";
pub const SLOT_KEYFILE: &str = "keyfile";

/// The table and field a key-file slot's binding is sealed for (its
/// associated data names the vault, this table, the slot id and this).
const BINDING_TABLE: &str = "key_slots";
const BINDING_FIELD: &str = "binding";

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
            .map(|s| slot_info(&s))
            .collect())
    }

    /// Adds a key-file slot for `file` that opens the DEK of `keys`,
    /// named `label`. Refused when a slot of this file exists (its id in
    /// the error) or the vault has [`MAX_KEYFILE_SLOTS`] key-file slots.
    pub fn add_keyfile_slot(
        &mut self,
        keys: &Keys,
        file: &FileKey,
        label: &str,
    ) -> Result<SlotInfo> {
        let slots = self.store.slots()?;
        let public = file.public_key();
        let encoded = b64(&public);
        for slot in slots.iter().filter(|s| s.kind == SLOT_KEYFILE) {
            if keyfile_params(slot)?.public_key == encoded {
                return Err(VaultError::SlotExists {
                    id: slot.id.clone(),
                });
            }
        }
        if slots.iter().filter(|s| s.kind == SLOT_KEYFILE).count() >= MAX_KEYFILE_SLOTS {
            return Err(VaultError::TooManySlots {
                max: MAX_KEYFILE_SLOTS,
            });
        }
        let id = crypto::random_id();
        let (params, wrapped_dek) = keyfile_slot(keys, &id, &public, label)?;
        let row = SlotRow {
            params: serde_json::to_string(&params).expect("slot parameters serialize"),
            wrapped_dek,
            id,
            kind: SLOT_KEYFILE.into(),
            created_at: latchkey_client::unix_now(),
        };
        self.store.add_slot(&row)?;
        Ok(slot_info(&row))
    }

    /// Removes slot `id`, unless it is the last way to open the vault:
    /// the last slot, or the last that is not a keyring slot (a keyring
    /// entry may vanish, at a reboot with keyutils). Returns what was
    /// removed, with the keyring entry to delete for a keyring slot
    /// (the caller deletes it outside the vault mutex).
    pub fn remove_slot(&mut self, id: &str) -> Result<RemovedSlot> {
        let slots = self.store.slots()?;
        let slot = slots
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| VaultError::NoSuchSlot { id: id.to_owned() })?;
        let durable = |s: &&SlotRow| s.kind != SLOT_KEYRING;
        let others: Vec<&SlotRow> = slots.iter().filter(|s| s.id != id).collect();
        if others.is_empty() || (durable(&slot) && !others.iter().any(durable)) {
            return Err(VaultError::LastSlot { id: id.to_owned() });
        }
        let keyring = if slot.kind == SLOT_KEYRING {
            let params: KeyringSlot =
                serde_json::from_str(&slot.params).map_err(|_| VaultError::Corrupt {
                    what: format!("keyring slot {}", slot.id),
                })?;
            let vault_id = self.vault_id()?;
            backend_of(&params).map(|backend| (backend, keyring_account(&vault_id, id)))
        } else {
            None
        };
        self.store.remove_slot(id)?;
        Ok(RemovedSlot {
            info: slot_info(slot),
            keyring,
        })
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
            if slot.kind == SLOT_KEYFILE {
                // No key file needed: a fresh KEK sealed to the stored
                // public key, once the binding proves it is the one added.
                let old = keyfile_params(&slot)?;
                let public = checked_public_key(keys, &slot, &old)?;
                let (params, wrapped_dek) = keyfile_slot(&new, &slot.id, &public, &old.label)?;
                wrapped.push(RewrappedSlot {
                    params: Some(
                        serde_json::to_string(&params).expect("slot parameters serialize"),
                    ),
                    wrapped_dek,
                    id: slot.id,
                });
                continue;
            }
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
            wrapped.push(RewrappedSlot {
                wrapped_dek: kek.wrap(&slot.id, &new.dek),
                params: None,
                id: slot.id,
            });
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

/// 16 passphrase and keyring slots: a vault has a passphrase slot or two
/// (a person's, a CI runner's) and a keyring slot or two. More is a
/// crafted file, and each keyring slot may cost a D-Bus call of up to 25 s.
const MAX_SLOTS: usize = 16;

/// 256 key-file slots: one per machine of a fleet. Cheap to hold: an
/// unlock compares public keys and opens the one slot that matches; a
/// rekey seals one KEK per slot (an X25519 operation each).
const MAX_KEYFILE_SLOTS: usize = 256;

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

/// The KEK of every passphrase and keyring slot, each proven to open its
/// slot: what a rekey rewraps the new DEK with. (Key-file slots get a
/// fresh KEK in the rekey's transaction instead.)
pub struct SlotKeks(Vec<(String, Kek)>);

/// A slot taken out of the vault ([`Vault::remove_slot`]).
pub struct RemovedSlot {
    pub info: SlotInfo,
    /// A keyring slot's entry, to delete (best effort) outside the vault mutex.
    keyring: Option<(keyring::Backend, String)>,
}

impl RemovedSlot {
    /// Deletes a removed keyring slot's entry. Blocking (keyring I/O):
    /// call off the runtime, under no lock. Nothing for other kinds.
    pub fn forget_keyring_entry(&self) -> Result<()> {
        match &self.keyring {
            Some((backend, account)) => Ok(keyring::delete(*backend, account)?),
            None => Ok(()),
        }
    }
}

impl SlotRows {
    /// Refuses a file whose slots would make one unlock (or rekey) work
    /// for minutes: too many slots of a kind, or more Argon2id work over
    /// the passphrase slots together than one slot at the ceiling. Checked
    /// before any derivation, so the refusal is quick.
    fn check_work(&self) -> Result<()> {
        let mut work = 0u64;
        for slot in self.rows.iter().filter(|s| s.kind == SLOT_PASSPHRASE) {
            work = work.saturating_add(passphrase_params(slot)?.kdf.work());
        }
        let keyfiles = self.of_kind(SLOT_KEYFILE).count();
        if self.rows.len() - keyfiles > MAX_SLOTS
            || keyfiles > MAX_KEYFILE_SLOTS
            || work > KdfParams::MAX_WORK
        {
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

    /// Tries the key-file slots with a key file's secret: the slot whose
    /// public key is the file's opens, or nothing does
    /// ([`VaultError::WrongKeyFile`], counted as a wrong passphrase is).
    /// One X25519 derivation and one HPKE open: quick, but call it off the
    /// runtime with the others.
    pub fn open_with_key_file(&self, file: &FileKey) -> Result<(Keys, SlotInfo)> {
        self.check_work()?;
        let public = b64(&file.public_key());
        for slot in self.of_kind(SLOT_KEYFILE) {
            let params = keyfile_params(slot)?;
            if params.public_key != public {
                continue;
            }
            // This file's slot: from here on a failure is a damaged or
            // edited row (or another slot's parameters moved here).
            let corrupt = || VaultError::Corrupt {
                what: format!("key-file slot {}", slot.id),
            };
            let sealed = SealedKek {
                enc: unb64(&params.enc).ok_or_else(corrupt)?,
                ciphertext: unb64(&params.sealed_kek).ok_or_else(corrupt)?,
            };
            let kek = file
                .open_kek(&self.vault_id, &slot.id, &sealed)
                .map_err(|_| corrupt())?;
            let dek = kek
                .unwrap(&slot.id, &slot.wrapped_dek)
                .map_err(|_| corrupt())?;
            let keys = Keys::new(self.vault_id.clone(), dek);
            return Ok((keys, slot_info(slot)));
        }
        Err(VaultError::WrongKeyFile)
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
                // A fresh KEK in the rekey itself (see `rekey_with`).
                SLOT_KEYFILE => continue,
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

fn backend_of(params: &KeyringSlot) -> Option<keyring::Backend> {
    match params.backend.as_str() {
        "secret-service" => Some(keyring::Backend::SecretService),
        "keyutils" => Some(keyring::Backend::KeyUtils),
        _ => None,
    }
}

fn keyring_account(vault_id: &str, slot_id: &str) -> String {
    format!("vault-{vault_id}/slot-{slot_id}")
}

/// What a key-file slot stores besides the wrapped DEK, each binary value
/// in base64url without padding.
#[derive(Serialize, Deserialize)]
struct KeyFileSlot {
    /// The X25519 public key derived from the key file (RFC 9180 DeriveKeyPair).
    public_key: String,
    /// Which machine: shown by `slot.list`.
    label: String,
    /// HPKE's encapsulated key.
    enc: String,
    /// The slot's KEK, HPKE-sealed to `public_key`.
    sealed_kek: String,
    /// `public_key || label` sealed under the DEK (`key_slots/<id>/binding`).
    binding: String,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

fn binding_plaintext(public_key: &[u8], label: &str) -> Vec<u8> {
    // The public key has a fixed length, so the two cannot be confused.
    [public_key, label.as_bytes()].concat()
}

/// A key-file slot's parameters and wrapped DEK for `public_key`: a fresh
/// KEK wrapping the DEK of `keys`, sealed to the public key, and the
/// binding sealed under that DEK.
fn keyfile_slot(
    keys: &Keys,
    slot_id: &str,
    public_key: &[u8],
    label: &str,
) -> Result<(KeyFileSlot, Vec<u8>)> {
    let slot_error = |source| VaultError::Slot {
        slot: slot_id.to_owned(),
        source,
    };
    let kek = Kek::generate().map_err(slot_error)?;
    let sealed = kek
        .seal_to(public_key, &keys.vault_id, slot_id)
        .map_err(slot_error)?;
    let binding = keys.seal(
        BINDING_TABLE,
        slot_id,
        BINDING_FIELD,
        &binding_plaintext(public_key, label),
    );
    let params = KeyFileSlot {
        public_key: b64(public_key),
        label: label.to_owned(),
        enc: b64(&sealed.enc),
        sealed_kek: b64(&sealed.ciphertext),
        binding: b64(&binding),
    };
    Ok((params, kek.wrap(slot_id, &keys.dek)))
}

/// The slot's public key, after its binding (opened with the vault's
/// current keys) proved that key and label are the ones added: an edited
/// public key would have the rekey seal the vault's new KEK to someone
/// else's key.
fn checked_public_key(keys: &Keys, slot: &SlotRow, params: &KeyFileSlot) -> Result<Vec<u8>> {
    let corrupt = || VaultError::Corrupt {
        what: format!("key-file slot {}", slot.id),
    };
    let public = unb64(&params.public_key)
        .filter(|p| p.len() == crypto::FILE_PUBLIC_KEY_LEN)
        .ok_or_else(corrupt)?;
    let binding = unb64(&params.binding).ok_or_else(corrupt)?;
    let bound = keys
        .open(BINDING_TABLE, &slot.id, BINDING_FIELD, &binding)
        .map_err(|_| corrupt())?;
    if bound[..] != binding_plaintext(&public, &params.label)[..] {
        return Err(corrupt());
    }
    Ok(public)
}

fn keyfile_params(slot: &SlotRow) -> Result<KeyFileSlot> {
    serde_json::from_str(&slot.params).map_err(|_| VaultError::Corrupt {
        what: format!("key-file slot {}", slot.id),
    })
}

fn slot_info(slot: &SlotRow) -> SlotInfo {
    let (backend, label) = match slot.kind.as_str() {
        SLOT_KEYRING => (
            serde_json::from_str::<KeyringSlot>(&slot.params)
                .ok()
                .map(|k| k.backend),
            None,
        ),
        SLOT_KEYFILE => (None, keyfile_params(slot).ok().map(|k| k.label)),
        _ => (None, None),
    };
    SlotInfo {
        id: slot.id.clone(),
        kind: slot.kind.clone(),
        created_at: slot.created_at,
        backend,
        label,
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
    let backend = backend_of(&params).ok_or_else(|| VaultError::Corrupt {
        what: format!("keyring slot {}", slot.id),
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = "correct horse battery staple";

    fn new_vault(dir: &std::path::Path) -> (Vault, Keys) {
        let pass = SecretString::from(PASS);
        Vault::create(
            &Location::File(dir.join("vault.db")),
            NewSlots {
                passphrase: Some(&pass),
                keyring: None,
            },
        )
        .unwrap()
    }

    fn file(byte: u8) -> FileKey {
        FileKey::from_bytes(&[byte; 32]).unwrap()
    }

    /// The data key `keys` opens what `reference` sealed: the same DEK.
    fn same_dek(keys: &Keys, reference: &Keys) -> bool {
        let blob = reference.seal("t", "r", "f", b"x");
        keys.open("t", "r", "f", &blob).is_ok()
    }

    fn open(vault: &Vault, file: &FileKey) -> Result<(Keys, SlotInfo)> {
        vault.slot_rows()?.open_with_key_file(file)
    }

    fn set_params(vault: &Vault, id: &str, params: &str) {
        vault
            .store
            .conn_for_tests()
            .execute(
                "UPDATE key_slots SET params = ?2 WHERE id = ?1",
                rusqlite::params![id, params],
            )
            .unwrap();
    }

    fn params_of(vault: &Vault, id: &str) -> serde_json::Value {
        let row = vault.store.slots().unwrap();
        let row = row.iter().find(|s| s.id == id).unwrap();
        serde_json::from_str(&row.params).unwrap()
    }

    #[test]
    fn a_key_file_slot_opens_the_vault_and_a_wrong_file_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vault, keys) = new_vault(dir.path());
        assert!(matches!(
            open(&vault, &file(1)),
            Err(VaultError::WrongKeyFile)
        ));
        let info = vault.add_keyfile_slot(&keys, &file(1), "laptop").unwrap();
        assert_eq!(info.kind, SLOT_KEYFILE);
        assert_eq!(info.label.as_deref(), Some("laptop"));
        let listed = vault.slot_infos().unwrap();
        assert_eq!(listed.len(), 2);
        let listed = listed.iter().find(|s| s.id == info.id).unwrap();
        assert_eq!(listed.label.as_deref(), Some("laptop"));

        let (opened, slot) = open(&vault, &file(1)).unwrap();
        assert_eq!(slot.id, info.id);
        assert!(same_dek(&opened, &keys));
        assert!(matches!(
            open(&vault, &file(2)),
            Err(VaultError::WrongKeyFile)
        ));
        // The stored params hold a public key, never the file's secret.
        let params = params_of(&vault, &info.id).to_string();
        assert!(!params.contains(&b64(&[1u8; 32])));
        assert!(params.contains(&b64(&file(1).public_key())));

        assert!(matches!(
            vault.add_keyfile_slot(&keys, &file(1), "again"),
            Err(VaultError::SlotExists { id }) if id == info.id
        ));
        let second = vault.add_keyfile_slot(&keys, &file(2), "ci").unwrap();
        assert!(same_dek(&open(&vault, &file(2)).unwrap().0, &keys));
        assert_ne!(second.id, info.id);
    }

    #[test]
    fn a_tampered_key_file_slot_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vault, keys) = new_vault(dir.path());
        let a = vault.add_keyfile_slot(&keys, &file(1), "a").unwrap();
        let b = vault.add_keyfile_slot(&keys, &file(2), "b").unwrap();
        let (pa, pb) = (params_of(&vault, &a.id), params_of(&vault, &b.id));
        let flip = |text: &str| {
            let mut bytes = unb64(text).unwrap();
            bytes[3] ^= 1;
            b64(&bytes)
        };

        // The sealed KEK or its encapsulated key changed: corrupt, not "wrong file".
        for field in ["sealed_kek", "enc"] {
            let mut bad = pa.clone();
            bad[field] = flip(pa[field].as_str().unwrap()).into();
            set_params(&vault, &a.id, &bad.to_string());
            assert!(
                matches!(open(&vault, &file(1)), Err(VaultError::Corrupt { .. })),
                "{field}"
            );
        }
        // Another slot's parameters moved here: bound to their own slot id.
        set_params(&vault, &a.id, &pb.to_string());
        set_params(&vault, &b.id, &pa.to_string());
        assert!(matches!(
            open(&vault, &file(1)),
            Err(VaultError::Corrupt { .. })
        ));
        assert!(matches!(
            open(&vault, &file(2)),
            Err(VaultError::Corrupt { .. })
        ));
        set_params(&vault, &a.id, &pa.to_string());
        set_params(&vault, &b.id, &pb.to_string());
        assert!(open(&vault, &file(1)).is_ok(), "restored");

        // The wrapped DEK changed.
        let wrapped = vault
            .store
            .slots()
            .unwrap()
            .into_iter()
            .find(|s| s.id == a.id)
            .unwrap()
            .wrapped_dek;
        let mut bad = wrapped.clone();
        bad[30] ^= 1;
        let set_wrapped = |w: &[u8]| {
            vault
                .store
                .conn_for_tests()
                .execute(
                    "UPDATE key_slots SET wrapped_dek = ?2 WHERE id = ?1",
                    rusqlite::params![a.id, w],
                )
                .unwrap();
        };
        set_wrapped(&bad);
        assert!(matches!(
            open(&vault, &file(1)),
            Err(VaultError::Corrupt { .. })
        ));
        set_wrapped(&wrapped);

        // The public key replaced by someone else's: that file opens
        // nothing, and a rekey refuses to seal the new KEK to it.
        let mut bad = pa.clone();
        bad["public_key"] = b64(&file(9).public_key()).into();
        set_params(&vault, &a.id, &bad.to_string());
        assert!(matches!(
            open(&vault, &file(1)),
            Err(VaultError::WrongKeyFile)
        ));
        assert!(matches!(
            open(&vault, &file(9)),
            Err(VaultError::Corrupt { .. })
        ));
        assert!(matches!(
            vault.rekey(&keys, Some(&SecretString::from(PASS))),
            Err(VaultError::Corrupt { what }) if what.contains(&a.id)
        ));
        // So is a changed label (what `slot.list` shows people).
        let mut bad = pa.clone();
        bad["label"] = "b".into();
        set_params(&vault, &a.id, &bad.to_string());
        assert!(matches!(
            vault.rekey(&keys, Some(&SecretString::from(PASS))),
            Err(VaultError::Corrupt { .. })
        ));
        set_params(&vault, &a.id, &pa.to_string());
        assert!(
            same_dek(&open(&vault, &file(1)).unwrap().0, &keys),
            "the refused rekeys changed nothing"
        );
    }

    #[test]
    fn after_a_rekey_every_key_file_opens_the_new_key_without_being_given() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vault, keys) = new_vault(dir.path());
        let provider = vault
            .add_provider(&keys, crate::vault::tests::provider())
            .unwrap();
        vault.add_keyfile_slot(&keys, &file(1), "a").unwrap();
        vault.add_keyfile_slot(&keys, &file(2), "b").unwrap();
        let before = vault.store.slots().unwrap();

        // Only the passphrase is given, as a machine with one file does.
        let (new, fields, slots) = vault.rekey(&keys, Some(&SecretString::from(PASS))).unwrap();
        assert_eq!((fields, slots), (1, 3));
        assert!(!same_dek(&new, &keys));
        for byte in [1, 2] {
            let (opened, _) = open(&vault, &file(byte)).unwrap();
            assert!(same_dek(&opened, &new), "file {byte}");
        }
        let (by_pass, _) = vault
            .unlock_with_passphrase(&SecretString::from(PASS))
            .unwrap();
        assert!(same_dek(&by_pass, &new));
        let (catalog, problems) = vault.load_catalog(&new).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(catalog.providers().values().any(|p| p.id == provider.id));
        let after = vault.store.slots().unwrap();
        let keyfile = |s: &&SlotRow| s.kind == SLOT_KEYFILE;
        for (old, new) in before
            .iter()
            .filter(keyfile)
            .zip(after.iter().filter(keyfile))
        {
            assert_eq!(old.id, new.id);
            let (o, n) = (
                serde_json::from_str::<KeyFileSlot>(&old.params).unwrap(),
                serde_json::from_str::<KeyFileSlot>(&new.params).unwrap(),
            );
            assert_eq!((&o.public_key, &o.label), (&n.public_key, &n.label));
            assert_ne!(o.sealed_kek, n.sealed_kek, "a fresh KEK");
            assert_ne!(o.binding, n.binding, "bound under the new key");
            assert_ne!(old.wrapped_dek, new.wrapped_dek);
        }
        // A second rekey works off the rewritten slots.
        let (newer, _, _) = vault.rekey(&new, Some(&SecretString::from(PASS))).unwrap();
        assert!(same_dek(&open(&vault, &file(2)).unwrap().0, &newer));
    }

    #[test]
    fn a_removed_slot_no_longer_opens_and_the_last_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vault, keys) = new_vault(dir.path());
        let pass_id = vault.slot_infos().unwrap()[0].id.clone();
        let a = vault.add_keyfile_slot(&keys, &file(1), "a").unwrap();
        let b = vault.add_keyfile_slot(&keys, &file(2), "b").unwrap();

        let removed = vault.remove_slot(&a.id).unwrap();
        assert_eq!(removed.info.id, a.id);
        removed.forget_keyring_entry().unwrap();
        assert!(matches!(
            open(&vault, &file(1)),
            Err(VaultError::WrongKeyFile)
        ));
        assert!(
            open(&vault, &file(2)).is_ok(),
            "the other machine is unaffected"
        );
        assert!(matches!(
            vault.remove_slot(&a.id),
            Err(VaultError::NoSuchSlot { .. })
        ));
        // The passphrase slot may go while a key file still opens the vault.
        vault.remove_slot(&pass_id).unwrap();
        assert!(matches!(
            vault.unlock_with_passphrase(&SecretString::from(PASS)),
            Err(VaultError::NoPassphraseSlot)
        ));
        assert!(matches!(
            vault.remove_slot(&b.id),
            Err(VaultError::LastSlot { id }) if id == b.id
        ));
        assert!(open(&vault, &file(2)).is_ok());
        // A rekey of a vault with only a key-file slot needs no secret at all.
        let (new, _, slots) = vault.rekey(&keys, None).unwrap();
        assert_eq!(slots, 1);
        assert!(same_dek(&open(&vault, &file(2)).unwrap().0, &new));
    }

    /// A fleet's worth of machines, each its own key file; one more is
    /// refused, and a file with more than that (crafted) opens nothing.
    #[test]
    fn a_vault_holds_at_most_max_keyfile_slots() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vault, keys) = new_vault(dir.path());
        let machine = |i: usize| {
            let mut secret = [0u8; 32];
            secret[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            FileKey::from_bytes(&secret).unwrap()
        };
        for i in 0..MAX_KEYFILE_SLOTS {
            vault
                .add_keyfile_slot(&keys, &machine(i), &format!("m{i}"))
                .unwrap();
        }
        assert!(matches!(
            vault.add_keyfile_slot(&keys, &machine(MAX_KEYFILE_SLOTS), "one too many"),
            Err(VaultError::TooManySlots {
                max: MAX_KEYFILE_SLOTS
            })
        ));
        let last = machine(MAX_KEYFILE_SLOTS - 1);
        assert!(same_dek(&open(&vault, &last).unwrap().0, &keys));
        // A crafted file with one more (a copy of a row under a new id).
        let row = vault.store.slots().unwrap().pop().unwrap();
        vault
            .store
            .conn_for_tests()
            .execute(
                "INSERT INTO key_slots (id, kind, params, wrapped_dek, created_at) VALUES ('extra', ?1, ?2, ?3, ?4)",
                rusqlite::params![row.kind, row.params, row.wrapped_dek, row.created_at],
            )
            .unwrap();
        assert!(matches!(
            open(&vault, &last),
            Err(VaultError::TooMuchSlotWork { .. })
        ));
    }
}
