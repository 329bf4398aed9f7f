//! OS keyring access for the `keyring` key slot: keeps a slot's random
//! 256-bit KEK (opaque bytes) in the Secret Service or, on headless Linux, in
//! the kernel's per-user keyring (keyutils). Nothing else in the daemon talks
//! to an OS keyring.
//!
//! Every function here blocks (D-Bus round trips, keyctl system calls): call
//! them from `tokio::task::spawn_blocking`.
//!
//! # Backends
//!
//! - **Secret Service** (GNOME Keyring, KWallet, KeePassXC) over D-Bus, through
//!   `zbus-secret-service-keyring-store` (pure Rust, the secret travels
//!   encrypted on the bus). Items go into the default (`login`) collection with
//!   the attributes `service = "latchkey"`, `username = <account>`. Each call
//!   opens its own D-Bus connection (calls are rare: `init`, unlock, slot
//!   changes), so a restarted keyring daemon never leaves us a stale session.
//!   Each call runs on a helper thread with a deadline ([`SECRET_SERVICE_TIMEOUT`]):
//!   a locked collection makes the service wait for an unlock prompt that a
//!   headless session never answers, and zbus has no call timeout of its own.
//! - **kernel keyutils** through `linux-keyutils-keyring-store`. Keys are
//!   `user` keys named `latchkey:<account>` in the **user keyring** (`@u`),
//!   not the session keyring that store uses by default; see
//!   [`prepare_process`] for why and for the one piece of process set-up this
//!   needs. Kernel keys live in RAM: a reboot loses them, so a keyring slot
//!   never replaces the passphrase slot as the way to recover a vault.
//!
//! [`open`] picks a backend and proves it works by writing, reading back and
//! deleting a sentinel entry. With [`BackendChoice::Auto`] the Secret Service
//! is tried first, then keyutils; when neither works the error says why for
//! each, and what to do instead.
//!
//! No secret ever reaches an error, a log line or `Debug` output: errors are
//! built from fixed text, account names and the backends' own messages, and
//! the keyring-core error variants that carry secret bytes are described
//! without them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use zeroize::Zeroizing;

/// The service name every entry is stored under (the Secret Service
/// `service` attribute; the `latchkey:` prefix of a kernel key's description).
pub const SERVICE: &str = "latchkey";

/// Environment variable that picks the backend: `auto` (the default),
/// `secret-service` or `keyutils`.
pub const BACKEND_ENV: &str = "LATCHKEY_KEYRING_BACKEND";

/// 25 s, D-Bus's own default call timeout: a working Secret Service answers in
/// milliseconds (D-Bus activation of gnome-keyring included), and an unlock
/// prompt on a desktop gets time for a password to be typed. Past this the
/// service is stuck, and the daemon should say so rather than hang.
pub const SECRET_SERVICE_TIMEOUT: Duration = Duration::from_secs(25);

/// Which keyring backend to use, as asked for by [`BACKEND_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The Secret Service if it works, else kernel keyutils.
    #[default]
    Auto,
    /// Only the Secret Service.
    SecretService,
    /// Only kernel keyutils.
    KeyUtils,
}

impl BackendChoice {
    /// Reads [`BACKEND_ENV`]; unset or empty means [`BackendChoice::Auto`].
    pub fn from_env() -> Result<Self, UnknownBackendChoice> {
        match std::env::var_os(BACKEND_ENV) {
            None => Ok(Self::Auto),
            Some(value) => value
                .to_str()
                .ok_or_else(|| UnknownBackendChoice {
                    value: value.to_string_lossy().into_owned(),
                })?
                .parse(),
        }
    }
}

impl FromStr for BackendChoice {
    type Err = UnknownBackendChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "secret-service" => Ok(Self::SecretService),
            "keyutils" => Ok(Self::KeyUtils),
            _ => Err(UnknownBackendChoice {
                value: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::SecretService => "secret-service",
            Self::KeyUtils => "keyutils",
        })
    }
}

/// A [`BACKEND_ENV`] value that names no backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown keyring backend '{value}' in {BACKEND_ENV}: use auto, secret-service or keyutils")]
pub struct UnknownBackendChoice {
    /// The value as given.
    pub value: String,
}

/// A keyring backend that [`open`] has proven to work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The freedesktop Secret Service over D-Bus.
    SecretService,
    /// The Linux kernel's key retention service (the user keyring).
    KeyUtils,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SecretService => "Secret Service",
            Self::KeyUtils => "kernel keyutils",
        })
    }
}

/// What went wrong talking to an OS keyring. Carries account names and the
/// backends' own messages, never secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// No backend that was tried works here.
    #[error(
        "no usable OS keyring: {tried}. Use a passphrase slot instead \
         (`latchkey init --passphrase-file PATH`), or start a Secret Service \
         (gnome-keyring) in this session"
    )]
    Unavailable {
        /// `"<backend>: <why>"` for each backend tried, joined by `"; "`.
        tried: String,
    },
    /// The keyring works but holds no entry for this account.
    #[error(
        "the {backend} keyring has no key for {account}: it was deleted{lost}; \
         unlock the vault with another slot (e.g. its passphrase) and add the keyring slot again",
        lost = if *backend == Backend::KeyUtils { ", or lost at reboot (kernel keys live in RAM only)" } else { "" }
    )]
    NotFound {
        /// Where we looked.
        backend: Backend,
        /// The account asked for.
        account: String,
    },
    /// The keyring refused or failed the operation.
    #[error("the {backend} keyring could not {op} the key for {account}: {reason}")]
    Backend {
        /// The backend that failed.
        backend: Backend,
        /// `"store"`, `"load"` or `"delete"`.
        op: &'static str,
        /// The account concerned.
        account: String,
        /// The backend's explanation (no secret), with a fix where one is known.
        reason: String,
    },
}

/// Once-per-process keyring set-up; call it first thing in `main`, **before
/// the tokio runtime (or any other thread) starts**.
///
/// On Linux it gives the process a fresh anonymous session keyring
/// (`keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`) and links the user keyring
/// `@u` into it, as `pam_keyinit` does for a login session. Why:
///
/// - Keys are stored in `@u`, which lives as long as the user's namespace
///   (since Linux 5.3: until reboot on a normal system) with no expiry, so a
///   key stored by one daemon process is there for the next one. The
///   alternatives lose it: the session keyring dies with the session that
///   holds it (an anonymous one per process dies with the process, a login
///   one at logout), a *named* session keyring dies when its last process
///   exits unless pinned elsewhere and can be squatted by another user who
///   creates a searchable keyring of that name first, and the persistent
///   keyring expires after `/proc/sys/kernel/keys/persistent_keyring_expiry`
///   (3 days) without use.
/// - A new key grants read and search only to its *possessor*, and a process
///   possesses what it can reach from its own session keyring. `@u` is
///   reachable only if the session keyring links it, which depends on how the
///   daemon was started (yes under `pam_keyinit` or with no session keyring at
///   all, no under systemd's `KeyringMode=private` or `sudo`, where the
///   inherited session keyring may even belong to another user). Without
///   possession a store succeeds but every load fails with EACCES (the
///   session-keyring default of the store crate fails instead with a
///   misleading "no entry" when the session keyring is missing or foreign).
///   Joining our
///   own session keyring and linking `@u` makes this the same everywhere,
///   without touching the keyring of the login session we came from.
/// - The session keyring is part of a *thread's* credentials: only threads
///   created after this call inherit it. [`store`], [`load`] and [`delete`]
///   check the calling thread and return an error naming this function if it
///   was started too early (e.g. a runtime built by `#[tokio::main]` before
///   `main`'s body runs).
///
/// It never fails: the outcome is remembered, and a failure (for example the
/// keyctl system call blocked by a seccomp filter) is reported by [`open`]
/// as the reason kernel keyutils is unavailable. Calling it again does
/// nothing. Not calling it at all still works wherever the inherited session
/// keyring links `@u` (the probe in [`open`] finds out). A no-op off Linux.
pub fn prepare_process() {
    #[cfg(target_os = "linux")]
    kernel::prepare_process();
}

/// Finds a working keyring backend by storing, reading back and deleting a
/// sentinel entry (`Auto`: the Secret Service first, then kernel keyutils).
pub fn open(choice: BackendChoice) -> Result<Backend, KeyringError> {
    let candidates: &[Backend] = match choice {
        BackendChoice::Auto => &[Backend::SecretService, Backend::KeyUtils],
        BackendChoice::SecretService => &[Backend::SecretService],
        BackendChoice::KeyUtils => &[Backend::KeyUtils],
    };
    let mut tried = Vec::with_capacity(candidates.len());
    for &backend in candidates {
        match probe(backend) {
            Ok(()) => return Ok(backend),
            Err(why) => {
                tracing::info!(%backend, reason = %why, "OS keyring backend not usable");
                tried.push(format!("{backend}: {why}"));
            }
        }
    }
    Err(KeyringError::Unavailable {
        tried: tried.join("; "),
    })
}

/// Stores `secret` for `account`, replacing any earlier value.
pub fn store(backend: Backend, account: &str, secret: &[u8]) -> Result<(), KeyringError> {
    imp::store(backend, account, secret).map_err(|f| f.into_error(backend, "store", account))
}

/// Reads the secret stored for `account`.
pub fn load(backend: Backend, account: &str) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
    imp::load(backend, account).map_err(|f| f.into_error(backend, "load", account))
}

/// Deletes the entry for `account`. [`KeyringError::NotFound`] if there is
/// none; a caller removing a slot may treat that as done.
pub fn delete(backend: Backend, account: &str) -> Result<(), KeyringError> {
    imp::delete(backend, account).map_err(|f| f.into_error(backend, "delete", account))
}

/// Why a backend operation failed, before it is tied to an operation and
/// account. `Other` holds text that is already free of secrets.
#[derive(Debug)]
enum Failure {
    // Only the Linux backends can tell "absent" from other failures.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    NotFound,
    Other(String),
}

impl Failure {
    fn into_error(self, backend: Backend, op: &'static str, account: &str) -> KeyringError {
        match self {
            Failure::NotFound => KeyringError::NotFound {
                backend,
                account: account.to_string(),
            },
            Failure::Other(reason) => KeyringError::Backend {
                backend,
                op,
                account: account.to_string(),
                reason,
            },
        }
    }

    fn reason(&self) -> String {
        match self {
            Failure::NotFound => "the entry just written could not be found".to_string(),
            Failure::Other(reason) => reason.clone(),
        }
    }
}

/// Store, read back and delete a sentinel entry; `Err` says why not.
fn probe(backend: Backend) -> Result<(), String> {
    // Unique per process and call so that concurrent probes never collide.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let account = format!("probe-{}-{nanos:08x}", std::process::id());
    // Not a secret: a fixed marker, so a stray sentinel is recognisable.
    let sentinel = format!("latchkey keyring probe {account}");

    imp::preflight(backend)?;
    imp::store(backend, &account, sentinel.as_bytes())
        .map_err(|f| format!("cannot write: {}", f.reason()))?;
    let read = imp::load(backend, &account);
    let deleted = imp::delete(backend, &account);
    match read {
        Ok(bytes) if bytes.as_slice() == sentinel.as_bytes() => {}
        Ok(_) => return Err("an entry read back differs from what was written".to_string()),
        Err(f) => {
            return Err(format!(
                "wrote an entry but cannot read it back: {}",
                f.reason()
            ))
        }
    }
    deleted.map_err(|f| format!("cannot delete: {}", f.reason()))
}

/// Describes a keyring-core error without any secret it may carry
/// (`BadEncoding` and `BadDataFormat` hold the raw secret bytes, and
/// `Ambiguous`'s Display dumps every matching entry).
#[cfg(target_os = "linux")]
fn describe(err: &keyring_core::Error) -> String {
    use keyring_core::Error as E;
    match err {
        E::NoStorageAccess(inner) => {
            format!("access denied or keyring locked ({inner}); unlock the keyring and try again")
        }
        E::PlatformFailure(inner) => inner.to_string(),
        E::NoEntry => "no such entry".to_string(),
        E::BadEncoding(_) | E::BadDataFormat(..) => {
            "the stored entry is malformed; delete it and add the keyring slot again".to_string()
        }
        E::Ambiguous(entries) => format!(
            "{} entries match service '{SERVICE}' and this account; remove the extra ones \
             (e.g. with seahorse or `secret-tool clear`)",
            entries.len()
        ),
        E::BadStoreFormat(_)
        | E::TooLong(..)
        | E::Invalid(..)
        | E::NoDefaultStore
        | E::NotSupportedByStore(_) => err.to_string(),
        // keyring-core's Error is non_exhaustive; a variant added later might
        // carry secret bytes, so it is not formatted.
        _ => "unexpected keyring error".to_string(),
    }
}

#[cfg(target_os = "linux")]
fn failure(err: keyring_core::Error, explain: impl Fn(&keyring_core::Error) -> String) -> Failure {
    match err {
        keyring_core::Error::NoEntry => Failure::NotFound,
        other => Failure::Other(explain(&other)),
    }
}

/// Per-backend dispatch.
#[cfg(target_os = "linux")]
mod imp {
    use super::{kernel, secret_service, Backend, Failure};
    use zeroize::Zeroizing;

    pub(super) fn preflight(backend: Backend) -> Result<(), String> {
        match backend {
            Backend::SecretService => secret_service::preflight(),
            Backend::KeyUtils => kernel::preflight(),
        }
    }

    pub(super) fn store(backend: Backend, account: &str, secret: &[u8]) -> Result<(), Failure> {
        match backend {
            Backend::SecretService => secret_service::store(account, secret),
            Backend::KeyUtils => kernel::store(account, secret),
        }
    }

    pub(super) fn load(backend: Backend, account: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
        match backend {
            Backend::SecretService => secret_service::load(account),
            Backend::KeyUtils => kernel::load(account),
        }
    }

    pub(super) fn delete(backend: Backend, account: &str) -> Result<(), Failure> {
        match backend {
            Backend::SecretService => secret_service::delete(account),
            Backend::KeyUtils => kernel::delete(account),
        }
    }
}

/// Off Linux this build has no keyring backend: every call reports it.
#[cfg(not(target_os = "linux"))]
mod imp {
    use super::{Backend, Failure};
    use zeroize::Zeroizing;

    const WHY: &str = "this build of latchkey supports OS keyrings on Linux only";

    pub(super) fn preflight(_: Backend) -> Result<(), String> {
        Err(WHY.to_string())
    }

    pub(super) fn store(_: Backend, _: &str, _: &[u8]) -> Result<(), Failure> {
        Err(Failure::Other(WHY.to_string()))
    }

    pub(super) fn load(_: Backend, _: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
        Err(Failure::Other(WHY.to_string()))
    }

    pub(super) fn delete(_: Backend, _: &str) -> Result<(), Failure> {
        Err(Failure::Other(WHY.to_string()))
    }
}

/// The Secret Service backend.
#[cfg(target_os = "linux")]
mod secret_service;

/// The kernel keyutils backend: `user` keys in the user keyring `@u`.
#[cfg(target_os = "linux")]
mod kernel;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parses_the_documented_values() {
        let table = [
            ("auto", BackendChoice::Auto),
            ("", BackendChoice::Auto),
            ("  AUTO ", BackendChoice::Auto),
            ("secret-service", BackendChoice::SecretService),
            ("Secret-Service", BackendChoice::SecretService),
            ("keyutils", BackendChoice::KeyUtils),
            ("KEYUTILS\n", BackendChoice::KeyUtils),
        ];
        for (text, want) in table {
            assert_eq!(text.parse::<BackendChoice>(), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn choice_round_trips_through_display() {
        for choice in [
            BackendChoice::Auto,
            BackendChoice::SecretService,
            BackendChoice::KeyUtils,
        ] {
            assert_eq!(choice.to_string().parse::<BackendChoice>(), Ok(choice));
        }
    }

    #[test]
    fn unknown_choice_names_the_value_and_the_fix() {
        for bad in ["gnome", "secret_service", "kwallet", "keyutil"] {
            let err = bad.parse::<BackendChoice>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("unknown keyring backend"), "{msg}");
            assert!(msg.contains(bad), "{msg}");
            assert!(msg.contains(BACKEND_ENV), "{msg}");
            assert!(msg.contains("auto, secret-service or keyutils"), "{msg}");
        }
    }

    #[test]
    fn backends_display_their_names() {
        assert_eq!(Backend::SecretService.to_string(), "Secret Service");
        assert_eq!(Backend::KeyUtils.to_string(), "kernel keyutils");
    }

    #[test]
    fn unavailable_names_each_backend_and_the_fix() {
        let err = KeyringError::Unavailable {
            tried: "Secret Service: no D-Bus session bus; kernel keyutils: EPERM".to_string(),
        };
        let msg = err.to_string();
        assert!(
            msg.starts_with("no usable OS keyring: Secret Service: "),
            "{msg}"
        );
        assert!(msg.contains("kernel keyutils: EPERM"), "{msg}");
        assert!(
            msg.contains("latchkey init --passphrase-file PATH"),
            "{msg}"
        );
        assert!(msg.contains("gnome-keyring"), "{msg}");
    }

    #[test]
    fn messages_start_lowercase_and_name_the_account() {
        let errors = [
            KeyringError::NotFound {
                backend: Backend::KeyUtils,
                account: "vault-ab/slot-cd".to_string(),
            },
            KeyringError::NotFound {
                backend: Backend::SecretService,
                account: "vault-ab/slot-cd".to_string(),
            },
            KeyringError::Backend {
                backend: Backend::SecretService,
                op: "load",
                account: "vault-ab/slot-cd".to_string(),
                reason: "access denied".to_string(),
            },
        ];
        for err in errors {
            let msg = err.to_string();
            assert!(msg.starts_with(char::is_lowercase), "{msg}");
            assert!(msg.contains("vault-ab/slot-cd"), "{msg}");
        }
        let lost = KeyringError::NotFound {
            backend: Backend::KeyUtils,
            account: "a".to_string(),
        };
        assert!(lost.to_string().contains("reboot"), "{lost}");
        assert!(
            lost.to_string().contains("add the keyring slot again"),
            "{lost}"
        );
    }

    /// Errors from keyring-core that carry the secret bytes must not leak
    /// them into our messages or `Debug` output.
    #[cfg(target_os = "linux")]
    #[test]
    fn secret_bytes_in_store_errors_never_reach_our_errors() {
        const CANARY: &str = "CANARY-5f1e2d3c4b5a6978";
        let inner: keyring_core::error::PlatformError = Box::new(std::io::Error::other("bad pad"));
        let store_errors = [
            keyring_core::Error::BadEncoding(CANARY.as_bytes().to_vec()),
            keyring_core::Error::BadDataFormat(CANARY.as_bytes().to_vec(), inner),
        ];
        for store_error in store_errors {
            let err = failure(store_error, describe).into_error(
                Backend::SecretService,
                "load",
                "vault-ab/slot-cd",
            );
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(CANARY), "{shown}");
            let bytes = format!("{:?}", CANARY.as_bytes());
            assert!(!shown.contains(&bytes[1..20]), "{shown}");
            assert!(shown.contains("malformed"), "{shown}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn no_entry_becomes_not_found() {
        let err = failure(keyring_core::Error::NoEntry, describe).into_error(
            Backend::KeyUtils,
            "load",
            "vault-ab/slot-cd",
        );
        assert!(matches!(
            err,
            KeyringError::NotFound {
                backend: Backend::KeyUtils,
                ..
            }
        ));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn blocked_keyctl_is_explained() {
        use linux_keyutils::KeyError;
        let eperm = kernel::explain_key_error(KeyError::PermissionDenied);
        assert!(eperm.contains("seccomp"), "{eperm}");
        let enosys = kernel::explain_key_error(KeyError::Unknown(libc::ENOSYS));
        assert!(enosys.contains("CONFIG_KEYS"), "{enosys}");
        let quota = kernel::explain_key_error(KeyError::QuotaExceeded);
        assert!(quota.contains("maxkeys"), "{quota}");
    }
}
