//! Where the daemon's socket and the vault live: `LATCHKEY_SOCKET` /
//! `LATCHKEY_VAULT` when set, else the XDG base directories.

use std::path::PathBuf;

/// Environment variable naming the socket path explicitly.
pub const SOCKET_ENV: &str = "LATCHKEY_SOCKET";
/// Environment variable naming the vault file (or database) explicitly.
pub const VAULT_ENV: &str = "LATCHKEY_VAULT";

/// Whether a vault names a shared PostgreSQL database
/// (`postgres://…`, `postgresql://…`) rather than a file.
pub fn is_database_url(vault: &str) -> bool {
    vault.starts_with("postgres://") || vault.starts_with("postgresql://")
}

/// A database URL as the daemon names the vault it serves: without the
/// password and the query (`postgres://user@host:port/db`).
pub fn database_url_shown(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or(user);
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

/// Whether a database URL carries a password (which must never be put
/// on a command line: every local user can read those).
pub fn database_url_has_password(url: &str) -> bool {
    database_url_shown(url).len() < url.split(['?', '#']).next().unwrap_or(url).len()
}

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

#[cfg(test)]
mod database_url_tests {
    use super::*;

    #[test]
    fn a_database_url_is_shown_without_its_password_or_query() {
        let url = "postgres://ci:s3cret@db.example.com:5433/vault?sslmode=verify-full&sslrootcert=/ca.pem";
        assert!(is_database_url(url));
        assert_eq!(
            database_url_shown(url),
            "postgres://ci@db.example.com:5433/vault"
        );
        assert!(database_url_has_password(url));
        let plain = "postgresql://ci@localhost/vault?sslmode=require";
        assert_eq!(database_url_shown(plain), "postgresql://ci@localhost/vault");
        assert!(!database_url_has_password(plain));
        assert!(!is_database_url("/home/me/vault.db"));
    }
}
