//! The Secret Service backend of the keyring slot (GNOME Keyring, KWallet,
//! KeePassXC over D-Bus): each call on a helper thread with a deadline.

use std::collections::HashMap;
use std::sync::mpsc;

use keyring_core::api::CredentialStoreApi;
use keyring_core::Entry;
use zbus_secret_service_keyring_store::Store;
use zeroize::Zeroizing;

use super::{describe, failure, Failure, SECRET_SERVICE_TIMEOUT, SERVICE};

/// Fails fast, with a clear reason, when there is no session bus at all
/// (zbus would report only a failed connect to `/run/user/<uid>/bus`).
pub(super) fn preflight() -> Result<(), String> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() {
        return Ok(());
    }
    // zbus's fallback when the variable is unset.
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        // SAFETY: geteuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("/run/user/{}", unsafe { libc::geteuid() }).into());
    if runtime_dir.join("bus").exists() {
        return Ok(());
    }
    Err(
        "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set and there is no \
         $XDG_RUNTIME_DIR/bus)"
            .to_string(),
    )
}

pub(super) fn store(account: &str, secret: &[u8]) -> Result<(), Failure> {
    let secret = Zeroizing::new(secret.to_vec());
    call(account, move |entry| entry.set_secret(&secret))
}

pub(super) fn load(account: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    call(account, |entry| entry.get_secret().map(Zeroizing::new))
}

pub(super) fn delete(account: &str) -> Result<(), Failure> {
    call(account, |entry| entry.delete_credential())
}

/// Connects, builds the entry for `account` and runs `op` on a helper
/// thread, giving up after [`SECRET_SERVICE_TIMEOUT`]. A thread stuck on
/// an unanswered prompt is left behind; it ends when the service answers
/// or drops the connection.
///
/// This relies on zbus running on its own async-io executor (its default):
/// with zbus's `tokio` feature the helper thread would need a runtime.
fn call<T: Send + 'static>(
    account: &str,
    op: impl FnOnce(&Entry) -> keyring_core::Result<T> + Send + 'static,
) -> Result<T, Failure> {
    let account = account.to_string();
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("latchkey-secret-service".to_string())
        .spawn(move || {
            let result = Store::new().and_then(|store| {
                let label = format!("Latchkey key-slot key ({account})");
                let modifiers = HashMap::from([("label", label.as_str())]);
                let entry = store.build(SERVICE, &account, Some(&modifiers))?;
                op(&entry)
            });
            // The receiver may have given up waiting; nothing to do then.
            let _ = tx.send(result.map_err(|e| failure(e, explain)));
        })
        .map_err(|e| Failure::Other(format!("cannot start a helper thread: {e}")))?;
    match rx.recv_timeout(SECRET_SERVICE_TIMEOUT) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Failure::Other(format!(
            "no answer within {} s: the Secret Service is stuck or waiting on an unlock \
             prompt nobody answered; unlock the keyring (or restart gnome-keyring) and try again",
            SECRET_SERVICE_TIMEOUT.as_secs()
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(Failure::Other("the helper thread panicked".to_string()))
        }
    }
}

fn explain(err: &keyring_core::Error) -> String {
    let text = describe(err);
    // Matched on the texts secret-service and zbus produce; anything else
    // is passed through as it is.
    if text.contains("prompt dismissed") {
        "the default collection is locked (or missing) and no unlock prompt could be \
         shown; unlock it, e.g. `printf PASSWORD | gnome-keyring-daemon --unlock`"
            .to_string()
    } else if text.contains("Failed to connect to address") {
        format!("{text}: the D-Bus session bus is not running; check DBUS_SESSION_BUS_ADDRESS")
    } else if text.contains("no secret service provider") {
        format!("{text}: install and start gnome-keyring (or another Secret Service)")
    } else if text.contains("ServiceUnknown") || text.contains("was not provided by any") {
        format!("no Secret Service on the session bus ({text}): start gnome-keyring")
    } else if text.contains("NoSuchObject") || text.contains("No such object") {
        format!(
            "{text}: the keyring has no default collection; start gnome-keyring with \
             `--unlock` (or create and unlock a `login` collection)"
        )
    } else {
        text
    }
}
