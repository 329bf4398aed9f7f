//! `latchkey doctor [--json]`: checks what Latchkey needs, each with its
//! fix — the daemon, the socket directory and vault file modes, keyring
//! backends, memory locking, each provider reachable with its clock
//! (`provider.check`), credentials that need a login, refresh tokens near
//! their end and client secrets due for rotation. Exits 1 (the table's
//! "other error") when any check needs action. Never starts the daemon.

use crate::context::Ctx;
use crate::output;
use anyhow::Result;
use latchkey_client::protocol::{
    CredentialInfo, CredentialList, Empty, ProviderCheck, StatusResult, VaultState,
};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Print the checks as a JSON array of {check, status, detail, fix}
    #[arg(long)]
    json: bool,
}

/// 90 days: client secrets older than this are due for rotation.
pub const SECRET_MAX_AGE: Duration =
    Duration::from_secs(latchkey_client::protocol::ROTATION_AGE_SECS as u64);
/// 60 s: a provider clock further off than this breaks token lifetimes
/// and ID-token checks (their leeway is smaller).
const MAX_CLOCK_SKEW_SECS: i64 = 60;

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One row: what was checked, how it stands, what was found, the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        status: Status,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            check: check.into(),
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let checks = checks(ctx);
    if args.json {
        output::print_json(&checks)?;
    } else {
        let mut text = String::new();
        for c in &checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            text.push_str(&format!("[{mark}] {}: {}\n", c.check, c.detail));
            if let Some(fix) = &c.fix {
                text.push_str(&format!("       fix: {fix}\n"));
            }
        }
        output::print(&text)?;
    }
    if checks.iter().any(|c| c.status != Status::Ok) {
        return Err(crate::exit::Silent(crate::exit::OTHER).into());
    }
    Ok(())
}

fn checks(ctx: &Ctx) -> Vec<Check> {
    let mut checks = vec![socket_dir(&ctx.socket)];
    let conn = match ctx.connect_running() {
        Ok(conn) => conn,
        Err(e) => {
            checks.push(Check::bad(
                Status::Fail,
                "daemon",
                format!("{e:#}"),
                "fix what the message names, then `latchkey daemon start`",
            ));
            None
        }
    };
    match conn {
        None => {
            if checks.iter().all(|c| c.check != "daemon") {
                checks.push(Check::bad(
                    Status::Fail,
                    "daemon",
                    format!("nothing answers on {}", ctx.socket.display()),
                    "`latchkey daemon start`, or `latchkey service install` for a daemon started on demand",
                ));
            }
        }
        Some(mut conn) => match conn.status() {
            Ok(s) => {
                checks.push(Check::ok(
                    "daemon",
                    format!("latchkeyd {} (pid {}) answers", s.daemon_version, s.pid),
                ));
                checks.push(socket_file(&ctx.socket));
                if latchkey_client::is_database_url(&s.vault_path) {
                    checks.push(Check::ok(
                        "vault",
                        format!("a shared PostgreSQL database, {}", s.vault_path),
                    ));
                } else {
                    checks.push(vault_file(Path::new(&s.vault_path)));
                }
                checks.push(vault_state(&s));
                if s.vault == VaultState::Unlocked {
                    checks.extend(providers(&mut conn));
                    checks.extend(logins(&s));
                    match conn.call::<CredentialList>(&Empty {}) {
                        Ok(list) => {
                            checks.extend(refresh_tokens(&list));
                            let now = latchkey_client::unix_now();
                            checks.extend(list.iter().filter(|c| c.has_client_secret).map(|c| {
                                let age = c.client_secret.as_ref().and_then(|s| s.age(now));
                                let age = age.map(|secs| Duration::from_secs(secs as u64));
                                secret_rotation(&c.name, age, SECRET_MAX_AGE)
                            }));
                        }
                        Err(e) => checks.push(Check::bad(
                            Status::Fail,
                            "credentials",
                            format!("{e:#}"),
                            "retry; if it persists, see the daemon's log",
                        )),
                    }
                }
            }
            Err(e) => checks.push(Check::bad(
                Status::Fail,
                "daemon",
                format!("{e:#}"),
                "`latchkey daemon stop`, then `latchkey daemon start`",
            )),
        },
    }
    checks.push(keyring_backends());
    checks.push(memory_locking());
    checks
}

fn socket_dir(socket: &Path) -> Check {
    let dir = latchkey_client::trust::socket_dir(socket);
    match latchkey_client::trust::check_private_dir(dir) {
        Ok(()) => Check::ok(
            "socket directory",
            format!("{} is ours, 0700", dir.display()),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::ok(
            "socket directory",
            format!(
                "{} does not exist yet (the daemon creates it)",
                dir.display()
            ),
        ),
        Err(e) => Check::bad(
            Status::Fail,
            "socket directory",
            format!("{}: {e}", dir.display()),
            format!(
                "make it yours and private: `chmod 700 {0}` (or remove it if another user owns it)",
                dir.display()
            ),
        ),
    }
}

fn socket_file(socket: &Path) -> Check {
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.uid() == latchkey_client::trust::euid() && meta.mode() & 0o077 == 0 => {
            Check::ok(
                "socket",
                format!("{} is ours, {:o}", socket.display(), meta.mode() & 0o777),
            )
        }
        Ok(meta) => Check::bad(
            Status::Fail,
            "socket",
            format!(
                "{} is uid {}, mode {:o}",
                socket.display(),
                meta.uid(),
                meta.mode() & 0o777
            ),
            format!(
                "`chmod 600 {}` (SocketMode=0600 in latchkey.socket)",
                socket.display()
            ),
        ),
        Err(e) => Check::bad(
            Status::Warn,
            "socket",
            format!("{}: {e}", socket.display()),
            "restart the daemon: `latchkey daemon stop && latchkey daemon start`",
        ),
    }
}

fn vault_file(vault: &Path) -> Check {
    match std::fs::symlink_metadata(vault) {
        Ok(meta) if meta.mode() & 0o077 == 0 => Check::ok(
            "vault file",
            format!("{} is mode {:o}", vault.display(), meta.mode() & 0o777),
        ),
        Ok(meta) => Check::bad(
            Status::Warn,
            "vault file",
            format!(
                "{} is mode {:o}: others may read it",
                vault.display(),
                meta.mode() & 0o777
            ),
            format!("`chmod 600 {}`", vault.display()),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::bad(
            Status::Warn,
            "vault file",
            format!("{} does not exist", vault.display()),
            "`latchkey init`",
        ),
        Err(e) => Check::bad(
            Status::Fail,
            "vault file",
            format!("{}: {e}", vault.display()),
            "check the path's permissions",
        ),
    }
}

fn vault_state(s: &StatusResult) -> Check {
    match s.vault {
        VaultState::Unlocked => Check::ok("vault", "unlocked"),
        VaultState::Locked => Check::bad(
            Status::Warn,
            "vault",
            "locked: tokens cannot be served, providers and credentials not checked",
            "`latchkey unlock`",
        ),
        VaultState::Uninitialized => {
            Check::bad(Status::Warn, "vault", "not initialized", "`latchkey init`")
        }
    }
}

fn providers(conn: &mut crate::context::Connection<'_>) -> Vec<Check> {
    let result = match conn.call::<ProviderCheck>(&Empty {}) {
        Ok(result) => result,
        Err(e) => {
            return vec![Check::bad(
                Status::Fail,
                "providers",
                format!("{e:#}"),
                "retry; if it persists, see the daemon's log",
            )]
        }
    };
    let mut checks = Vec::new();
    for p in result.providers {
        let check = format!("provider {}", p.name);
        if !p.reachable {
            checks.push(Check::bad(
                Status::Fail,
                check,
                p.error
                    .unwrap_or_else(|| format!("{} did not answer", p.url)),
                format!(
                    "check the network and the issuer (`latchkey provider show {}`)",
                    p.name
                ),
            ));
            continue;
        }
        let answered = format!(
            "{} answered HTTP {}",
            p.url,
            p.http_status.map_or("?".into(), |s| s.to_string())
        );
        checks.push(match p.clock_skew_secs {
            Some(skew) if skew.abs() > MAX_CLOCK_SKEW_SECS => Check::bad(
                Status::Warn,
                check,
                format!("{answered}; its clock is {skew:+} s from ours"),
                "synchronize this machine's clock (`timedatectl set-ntp true`)",
            ),
            Some(skew) => Check::ok(check, format!("{answered}; clock skew {skew:+} s")),
            None => Check::ok(
                check,
                format!("{answered}; no Date header, clock skew unknown"),
            ),
        });
    }
    checks
}

fn logins(s: &StatusResult) -> Vec<Check> {
    let waiting = s.needs_login.clone().unwrap_or_default();
    if waiting.is_empty() {
        return vec![Check::ok("logins", "no credential needs a login")];
    }
    waiting
        .into_iter()
        .map(|name| {
            Check::bad(
                Status::Warn,
                format!("login {name}"),
                format!("credential '{name}' has no refresh token: it needs a login"),
                format!("`latchkey login {name}`"),
            )
        })
        .collect()
}

/// Refresh tokens near their end: providers rarely state a refresh
/// token's lifetime and the vault records none, so this says so.
fn refresh_tokens(list: &[CredentialInfo]) -> Vec<Check> {
    let users = list
        .iter()
        .filter(|c| {
            use latchkey_client::protocol::GrantType;
            matches!(
                c.grant,
                GrantType::AuthorizationCode | GrantType::DeviceCode
            )
        })
        .count();
    vec![Check::ok(
        "refresh tokens",
        format!("{users} user credential(s); expiry unknown (the provider states no refresh token lifetime)"),
    )]
}

/// Whether credential `name`'s client secret, `age` old (`None`: the vault
/// records no age), is due for rotation after `max_age`.
pub fn secret_rotation(name: &str, age: Option<Duration>, max_age: Duration) -> Check {
    let check = format!("secret {name}");
    let days = |d: Duration| d.as_secs() / 86_400;
    match age {
        None => Check::ok(check, "client secret age unknown"),
        Some(age) if age > max_age => Check::bad(
            Status::Warn,
            check,
            format!(
                "the client secret is {} days old (rotate after {})",
                days(age),
                days(max_age)
            ),
            format!(
                "issue a new secret at the provider, then `latchkey credential set-secret {name}`"
            ),
        ),
        Some(age) => Check::ok(
            check,
            format!("the client secret is {} days old", days(age)),
        ),
    }
}

/// The keyring slot's backends: the Secret Service (a session bus) and the
/// kernel's keyutils.
fn keyring_backends() -> Check {
    let bus = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty())
        || std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).join("bus").exists());
    let kernel = Path::new("/proc/keys").exists();
    let found: Vec<&str> = [(bus, "secret-service"), (kernel, "kernel keyutils")]
        .into_iter()
        .filter_map(|(here, name)| here.then_some(name))
        .collect();
    if found.is_empty() {
        Check::bad(
            Status::Warn,
            "keyring",
            "no keyring backend: no session bus and no kernel keyutils",
            "use a passphrase slot, or log in to a desktop session (gnome-keyring, KWallet)",
        )
    } else {
        Check::ok("keyring", format!("available: {}", found.join(", ")))
    }
}

/// Whether a page can be locked in RAM (the daemon's keys are).
fn memory_locking() -> Check {
    let page = vec![0u8; 4096];
    // SAFETY: mlock/munlock of a live allocation of that length.
    let locked = unsafe { libc::mlock(page.as_ptr().cast(), page.len()) } == 0;
    if locked {
        // SAFETY: as above.
        unsafe { libc::munlock(page.as_ptr().cast(), page.len()) };
        return Check::ok("memory locking", "mlock works");
    }
    let e = std::io::Error::last_os_error();
    Check::bad(
        Status::Warn,
        "memory locking",
        format!("mlock failed ({e}): keys could be swapped to disk"),
        "raise the limit: `ulimit -l 1024`, or LimitMEMLOCK=8M in latchkey.service",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_older_than_the_limit_are_due() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            secret_rotation("a", None, SECRET_MAX_AGE).status,
            Status::Ok
        );
        assert!(secret_rotation("a", None, SECRET_MAX_AGE)
            .detail
            .contains("unknown"));
        assert_eq!(
            secret_rotation("a", Some(day * 10), SECRET_MAX_AGE).status,
            Status::Ok
        );
        let due = secret_rotation("a", Some(day * 91), SECRET_MAX_AGE);
        assert_eq!(due.status, Status::Warn);
        assert!(due.detail.contains("91 days"), "{}", due.detail);
        assert!(due
            .fix
            .unwrap()
            .contains("latchkey credential set-secret a"));
    }

    #[test]
    fn rows_serialize_to_the_documented_shape() {
        let row = serde_json::to_value(Check::bad(Status::Fail, "x", "y", "z")).unwrap();
        assert_eq!(
            row,
            serde_json::json!({"check": "x", "status": "fail", "detail": "y", "fix": "z"})
        );
    }
}
