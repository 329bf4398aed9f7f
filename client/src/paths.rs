//! Where the daemon's socket and the vault live: `LATCHKEY_SOCKET` /
//! `LATCHKEY_VAULT` when set, else the XDG base directories.

use std::path::PathBuf;

/// Environment variable naming the socket path explicitly.
pub const SOCKET_ENV: &str = "LATCHKEY_SOCKET";
/// Environment variable naming the vault file explicitly.
pub const VAULT_ENV: &str = "LATCHKEY_VAULT";

/// The daemon's socket: `$LATCHKEY_SOCKET`, else
/// `$XDG_RUNTIME_DIR/latchkey/latchkey.sock`, else a per-user directory in the
/// system temp dir (`/tmp/latchkey-<uid>/latchkey.sock`) for headless machines
/// without a runtime dir. The daemon creates the directory 0700 and checks
/// that it owns it.
pub fn socket_path() -> PathBuf {
    if let Some(path) = non_empty_env(SOCKET_ENV) {
        return PathBuf::from(path);
    }
    let dir = match non_empty_env("XDG_RUNTIME_DIR") {
        Some(runtime) => PathBuf::from(runtime).join("latchkey"),
        None => std::env::temp_dir().join(format!("latchkey-{}", current_uid())),
    };
    dir.join("latchkey.sock")
}

/// The vault file: `$LATCHKEY_VAULT`, else
/// `$XDG_DATA_HOME/latchkey/vault.db`, else `~/.local/share/latchkey/vault.db`.
pub fn vault_path() -> PathBuf {
    if let Some(path) = non_empty_env(VAULT_ENV) {
        return PathBuf::from(path);
    }
    let data = match non_empty_env("XDG_DATA_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => match non_empty_env("HOME") {
            Some(home) => PathBuf::from(home).join(".local/share"),
            None => std::env::temp_dir().join(format!("latchkey-data-{}", current_uid())),
        },
    };
    data.join("latchkey").join("vault.db")
}

fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The environment variable an app's key is read from (`latchkey app add`):
/// a client that finds it presents the key in its `hello`, and the daemon
/// then knows the connection as that app.
pub const APP_KEY_ENV: &str = "LATCHKEY_APP_KEY";

/// The app key in [`APP_KEY_ENV`], if it is set and not empty.
pub fn app_key_from_env() -> Option<secrecy::SecretString> {
    let key = std::env::var(APP_KEY_ENV).ok()?;
    let key = key.trim();
    (!key.is_empty()).then(|| secrecy::SecretString::from(key.to_owned()))
}
