//! The types of the key-slot methods (`slot.*`): adding a key-file slot
//! (one machine's way to open the vault), listing the slots, and
//! removing one to cut a machine off without changing anyone else's
//! secret. A slot's list entry is [`SlotInfo`](super::SlotInfo).

use super::{expose, Proof};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// 64 characters: a slot label names a machine (its hostname by default).
pub const SLOT_LABEL_MAX: usize = 64;

/// Parameters of `slot.add`: a key-file slot for one machine's key file.
/// The vault must be unlocked (the data key is wrapped for the new slot).
#[derive(Serialize, Deserialize)]
pub struct SlotAddParams {
    /// The key file's key line (`latchkey-key-file-v1:…`, the format of
    /// `latchkey_client::keyfile`); the daemon keeps only a public key
    /// derived from it.
    #[serde(serialize_with = "expose")]
    pub key: SecretString,
    /// What the slot is called in `slot.list` (printable, at most 64
    /// characters: `SLOT_LABEL_MAX`); default: the daemon's hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Proof of a human: a new slot is a new way to open the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// Parameters of `slot.remove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotRemoveParams {
    /// The slot's id (see `slot.list`).
    pub id: String,
    /// Proof of a human: removing a slot can lock its holder out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}
