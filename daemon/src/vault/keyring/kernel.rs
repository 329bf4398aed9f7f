//! The kernel keyutils backend of the keyring slot: `user` keys in the
//! user keyring `@u`, reached through the session keyring
//! [`prepare_process`](super::prepare_process) joined.

use std::sync::{Arc, OnceLock};

use keyring_core::Entry;
use linux_keyutils::{KeyError, KeyRing, KeyRingIdentifier};
use linux_keyutils_keyring_store::Cred;
use zeroize::Zeroizing;

use super::{describe, failure, Failure, SERVICE};

/// The session keyring [`prepare_process`] joined, or why it could not.
static PREPARED: OnceLock<Result<KeyRing, KeyError>> = OnceLock::new();

pub(super) fn prepare_process() {
    PREPARED.get_or_init(join_session_with_user_keyring);
}

fn join_session_with_user_keyring() -> Result<KeyRing, KeyError> {
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING reads only its second argument,
    // an optional NUL-terminated name; null asks for a new anonymous
    // keyring. No memory is written.
    let id = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING as libc::c_ulong,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if id < 0 {
        return Err(KeyError::from_errno());
    }
    let session = KeyRing::from_special_id(KeyRingIdentifier::Session, false)?;
    session.link_keyring_id(KeyRingIdentifier::User)?;
    Ok(session)
}

/// Refuses early when set-up failed, or when this thread predates it.
pub(super) fn preflight() -> Result<(), String> {
    check_thread().map_err(|f| f.reason())
}

fn check_thread() -> Result<(), Failure> {
    match PREPARED.get() {
        // Not prepared: use the inherited session keyring if it reaches
        // `@u`; otherwise a store would succeed and every load fail.
        None => match session_reaches_user_keyring() {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Other(
                "the session keyring does not link the user keyring @u (started under \
                 systemd's KeyringMode=private, or via sudo?), so keys stored there could \
                 not be read back: call keyring::prepare_process() at start-up"
                    .to_string(),
            )),
            Err(e) => Err(Failure::Other(explain_key_error(e))),
        },
        Some(Err(e)) => Err(Failure::Other(format!(
            "cannot set up a session keyring: {}",
            explain_key_error(*e)
        ))),
        Some(Ok(prepared)) => match KeyRing::from_special_id(KeyRingIdentifier::Session, false) {
            Ok(current) if current == *prepared => Ok(()),
            Ok(_) => Err(Failure::Other(
                "this thread started before keyring::prepare_process() ran, so it lacks \
                     the daemon's session keyring: call prepare_process() first thing in \
                     main, before the tokio runtime starts"
                    .to_string(),
            )),
            Err(e) => Err(Failure::Other(explain_key_error(e))),
        },
    }
}

/// Whether `@u` can be found from this thread's session keyring, which
/// is what makes the keys in it *possessed* (readable and searchable).
/// The kernel names the user keyring `_uid.<uid>`.
fn session_reaches_user_keyring() -> Result<bool, KeyError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let description =
        std::ffi::CString::new(format!("_uid.{uid}")).expect("a formatted number has no NUL byte");
    // SAFETY: KEYCTL_SEARCH reads two NUL-terminated strings that outlive
    // the call; destination keyring 0 means "link the result nowhere".
    let found = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_SEARCH as libc::c_ulong,
            libc::KEY_SPEC_SESSION_KEYRING as libc::c_long,
            c"keyring".as_ptr(),
            description.as_ptr(),
            0 as libc::c_long,
        )
    };
    if found >= 0 {
        return Ok(true);
    }
    match KeyError::from_errno() {
        KeyError::KeyDoesNotExist | KeyError::AccessDenied => Ok(false),
        other => Err(other),
    }
}

fn entry(account: &str) -> Result<Entry, Failure> {
    check_thread()?;
    let user = KeyRing::from_special_id(KeyRingIdentifier::User, true)
        .map_err(|e| Failure::Other(explain_key_error(e)))?;
    // The store's own constructor targets the session keyring and links
    // the persistent one; we point its credential at `@u` instead (see
    // `prepare_process`). `Cred`'s fields are public for this purpose.
    let cred = Cred {
        session: user,
        persistent: None,
        description: format!("{SERVICE}:{account}"),
        specifiers: Some((SERVICE.to_string(), account.to_string())),
    };
    Ok(Entry::new_with_credential(Arc::new(cred)))
}

pub(super) fn store(account: &str, secret: &[u8]) -> Result<(), Failure> {
    entry(account)?
        .set_secret(secret)
        .map_err(|e| failure(e, explain))
}

pub(super) fn load(account: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    entry(account)?
        .get_secret()
        .map(Zeroizing::new)
        .map_err(|e| failure(e, explain))
}

pub(super) fn delete(account: &str) -> Result<(), Failure> {
    entry(account)?
        .delete_credential()
        .map_err(|e| failure(e, explain))
}

fn explain(err: &keyring_core::Error) -> String {
    let inner = match err {
        keyring_core::Error::PlatformFailure(inner)
        | keyring_core::Error::NoStorageAccess(inner) => inner.downcast_ref::<KeyError>(),
        _ => None,
    };
    match inner {
        Some(e) => explain_key_error(*e),
        None => describe(err),
    }
}

/// Turns a keyctl failure into a reason with a fix.
pub(super) fn explain_key_error(err: KeyError) -> String {
    match err {
        KeyError::PermissionDenied => "the kernel refused the keyring system calls (EPERM): \
             a seccomp filter (such as Docker's default profile) or a security module \
             blocks kernel keyrings here"
            .to_string(),
        KeyError::Unknown(libc::ENOSYS) => "the kernel has no key retention service \
             (keyctl returned ENOSYS: built without CONFIG_KEYS, or blocked by seccomp)"
            .to_string(),
        KeyError::AccessDenied => "access denied to the user keyring (EACCES): run \
             keyring::prepare_process() at start-up so the session keyring links @u"
            .to_string(),
        KeyError::QuotaExceeded => "the user's kernel key quota is full (EDQUOT): remove \
             unused keys (`keyctl show @u`) or raise /proc/sys/kernel/keys/maxkeys and maxbytes"
            .to_string(),
        other => format!("keyctl failed: {other}"),
    }
}
