//! How a daemon runs: paths, timers, unattended unlock, keyring choice and
//! the clock. Built by `main.rs` from arguments (or by tests in-process).

use crate::clock::Clock;
use crate::ratelimit::RateLimits;
use crate::vault::keyring::BackendChoice;
use crate::vault::store::Location;
use crate::vault::Retention;
use std::path::PathBuf;
use std::time::Duration;

/// How a daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The vault: a SQLite file, or a PostgreSQL database (`--vault postgres://…`).
    pub vault: Location,
    pub socket_path: PathBuf,
    /// Auto-lock after this long without use; zero disables it.
    pub idle_timeout: Duration,
    /// A started request line must arrive whole within this.
    pub frame_timeout: Duration,
    /// Client connections served at once; each peer process may hold a
    /// quarter of them. `main.rs` sets [`Config::connection_cap`] of the
    /// descriptor limit.
    pub max_connections: usize,
    /// A client connection that sends no request for this long is closed
    /// (it holds a descriptor and a task); zero keeps idle ones open.
    pub connection_idle_timeout: Duration,
    /// Unlock with this file's passphrase at start (headless runs).
    pub passphrase_file: Option<PathBuf>,
    /// Unlock with this key file at start (tried before the passphrase file).
    pub key_file: Option<PathBuf>,
    pub keyring: BackendChoice,
    /// The `latchkey` CLI's executable: its connections are attributed to
    /// the program that ran it (`identity.rs`). `None`: nothing is.
    pub cli_path: Option<PathBuf>,
    /// How long a call for an `ask` credential waits for the user's decision.
    pub approval_timeout: Duration,
    /// Show prompts (and refusals) as desktop notifications where the
    /// session bus has a notification service (`notify.rs`); `false`
    /// (`--notify never`) never touches the session bus.
    pub notify: bool,
    /// How long the audit log keeps rows (by age and count).
    pub audit_retention: Retention,
    /// Calls per app, provider requests per app, login starts per
    /// credential (`ratelimit.rs`); `RateLimits::DEFAULT` unless told.
    pub rate_limits: RateLimits,
    /// The wall clock, except in in-process tests that drive tokio's.
    pub clock: Clock,
}

/// 4096: enough for every program of a desktop session with room to
/// spare; a cap keeps a flood's memory and descriptors bounded.
const MAX_CONNECTIONS_CEILING: usize = 4096;
/// 8: the fewest connections a daemon serves, however low the limit.
const MIN_CONNECTIONS: usize = 8;

impl Config {
    /// The client connection cap for a descriptor limit of `open_files`:
    /// half of it (the rest is for login listeners, their connections,
    /// the vault and HTTP), at most 4096 (`MAX_CONNECTIONS_CEILING`).
    pub fn connection_cap(open_files: u64) -> usize {
        let half = usize::try_from(open_files / 2).unwrap_or(usize::MAX);
        half.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS_CEILING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_is_half_the_descriptor_limit_within_bounds() {
        assert_eq!(Config::connection_cap(1024), 512);
        assert_eq!(Config::connection_cap(4096), 2048);
        assert_eq!(Config::connection_cap(1 << 20), 4096);
        assert_eq!(Config::connection_cap(u64::MAX), 4096);
        assert_eq!(Config::connection_cap(3), 8);
    }
}
