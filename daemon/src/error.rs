//! The daemon's error as callers see it: a stable kind plus a human message
//! that names the thing and the fix. Cheap to clone, because one failed
//! token request is reported to every caller that shared it.

use crate::vault::VaultError;
use latchkey_client::protocol::ErrorKind;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Seconds after which a retry makes sense.
    pub retry_after: Option<u64>,
    /// The provider refused the client's authentication (`invalid_client`,
    /// or a bare HTTP 401 from the token endpoint): a previous client
    /// secret may still work (`rotation.rs`). Not on the wire.
    pub client_rejected: bool,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            retry_after: None,
            client_rejected: false,
        }
    }

    pub fn with_retry_after(mut self, secs: Option<u64>) -> ApiError {
        self.retry_after = secs;
        self
    }

    /// Marks the provider's refusal of the client's authentication.
    pub fn client_rejected(mut self) -> ApiError {
        self.client_rejected = true;
        self
    }

    pub fn invalid_params(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InvalidParams, message)
    }

    pub fn internal(what: impl fmt::Display) -> ApiError {
        ApiError::new(
            ErrorKind::Internal,
            format!("internal error: {what}; the daemon log has details, please report it"),
        )
    }

    pub fn locked() -> ApiError {
        ApiError::new(
            ErrorKind::Locked,
            "the vault is locked: run `latchkey unlock`",
        )
    }

    pub fn not_initialized() -> ApiError {
        ApiError::new(
            ErrorKind::NotInitialized,
            "no vault exists yet: run `latchkey init`",
        )
    }

    pub fn no_credential(name: &str) -> ApiError {
        ApiError::new(
            ErrorKind::NotFound,
            format!("no credential named '{name}': see `latchkey credential list`"),
        )
    }

    /// A user credential without a usable grant.
    pub fn reauth(name: &str) -> ApiError {
        ApiError::new(
            ErrorKind::ReauthRequired,
            format!("credential '{name}' needs a new login: run `latchkey login {name}`"),
        )
    }

    pub fn no_provider(name: &str) -> ApiError {
        ApiError::new(
            ErrorKind::NotFound,
            format!("no provider named '{name}': see `latchkey provider list`"),
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> ApiError {
        match e {
            VaultError::WrongPassphrase => ApiError::new(
                ErrorKind::WrongPassphrase,
                "wrong passphrase: no passphrase slot opens with it",
            ),
            VaultError::NoPassphraseSlot => ApiError::new(
                ErrorKind::WrongPassphrase,
                "the vault has no passphrase slot: unlock with `latchkey unlock --keyring`",
            ),
            VaultError::NoKeyringSlot => ApiError::new(
                ErrorKind::KeyringUnavailable,
                "the vault has no keyring slot: unlock with a passphrase (`latchkey unlock`)",
            ),
            VaultError::Keyring(e) => ApiError::new(ErrorKind::KeyringUnavailable, e.to_string()),
            VaultError::Corrupt { what } => ApiError::new(
                ErrorKind::VaultCorrupt,
                format!("{what} failed its integrity check: the vault file was modified or damaged; nothing was decrypted from it. Restore the vault from a backup, or remove and re-add the affected entry"),
            ),
            VaultError::Slot { slot, source } => ApiError::new(
                ErrorKind::VaultCorrupt,
                format!("key slot {slot} cannot be used: {source}"),
            ),
            e @ VaultError::TooMuchSlotWork { .. } => ApiError::new(
                ErrorKind::VaultCorrupt,
                format!("{e}: more than one unlock may spend, so none was tried; the file was crafted or damaged. Restore the vault from a backup"),
            ),
            VaultError::WrongKeyFile => ApiError::new(
                ErrorKind::WrongPassphrase,
                "the key file does not open any key slot of this vault: was its slot removed? add one with `latchkey slot add --key-file PATH`",
            ),
            VaultError::SlotExists { id } => ApiError::new(
                ErrorKind::AlreadyExists,
                format!("this key file opens the vault already (key slot {id}): nothing to add; see `latchkey slot list`"),
            ),
            e @ VaultError::TooManySlots { .. } => ApiError::new(
                ErrorKind::InvalidRequest,
                format!("{e}: remove one first with `latchkey slot remove ID` (see `latchkey slot list`)"),
            ),
            VaultError::NoSuchSlot { id } => ApiError::new(
                ErrorKind::NotFound,
                format!("the vault has no key slot '{id}': see `latchkey slot list`"),
            ),
            VaultError::LastSlot { id } => ApiError::new(
                ErrorKind::InvalidRequest,
                format!("key slot {id} is the last one that opens the vault for good (a keyring entry can vanish at a reboot): add another first with `latchkey slot add --key-file PATH`, then remove this one"),
            ),
            VaultError::Store(e @ crate::vault::store::StoreError::Postgres { .. }) => {
                tracing::warn!(error = %e, "the vault database failed");
                ApiError::new(
                    ErrorKind::VaultUnavailable,
                    format!("{e}; check that the database is up and reachable from this machine, then retry"),
                )
            }
            VaultError::Store(e) => {
                tracing::error!(error = %e, "vault storage failed");
                ApiError::new(ErrorKind::Internal, format!("{e}; check the disk and the vault file's permissions"))
            }
        }
    }
}
