//! How a daemon runs: paths, timers, unattended unlock, keyring choice and
//! the clock. Built by `main.rs` from arguments (or by tests in-process).

use crate::clock::Clock;
use crate::vault::keyring::BackendChoice;
use std::path::PathBuf;
use std::time::Duration;

/// How a daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub vault_path: PathBuf,
    pub socket_path: PathBuf,
    /// Auto-lock after this long without use; zero disables it.
    pub idle_timeout: Duration,
    /// A started request line must arrive whole within this.
    pub frame_timeout: Duration,
    /// Unlock with this file's passphrase at start (headless runs).
    pub passphrase_file: Option<PathBuf>,
    pub keyring: BackendChoice,
    /// The wall clock, except in in-process tests that drive tokio's.
    pub clock: Clock,
}
