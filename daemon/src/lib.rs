//! `latchkeyd`, the Latchkey daemon, as a library: `run` serves a vault on
//! a local socket until told to stop. `main.rs` only parses arguments,
//! hardens the process, takes the vault lock and binds the socket.
//!
//! The path of a token request: `server` (connection, framing, peer check)
//! → `dispatch` (envelope, routing) → `state::Daemon::token_get` (policy:
//! credential and scope checks) → `tokens::TokenCache` (memory, or one
//! shared request) → `oauth::grant` (the provider) → back, sealed into the
//! vault by `vault` on the way.

pub mod audit;
pub mod callback;
pub mod dispatch;
pub mod error;
pub mod fsutil;
pub mod hardening;
pub mod issue;
pub mod lockfile;
pub mod login;
pub mod manage;
pub mod oauth;
pub mod revoke;
pub mod server;
pub mod state;
pub mod tokens;
pub mod vault;

use interprocess::local_socket::tokio::Listener;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
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
    pub keyring: vault::keyring::BackendChoice,
}

/// Default auto-lock: 15 minutes without use.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default bound for a request line to arrive once started.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the vault at `config.vault_path` on `listener` until `shutdown`
/// resolves (or a client sends `daemon.shutdown`), then finishes in-flight
/// requests, locks the vault and returns.
pub async fn run(
    config: Config,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let frame_timeout = config.frame_timeout;
    let daemon = state::Daemon::new(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    daemon.unlock_unattended().await;
    let ticker = tokio::spawn(tick(Arc::clone(&daemon)));
    server::serve(Arc::clone(&daemon), listener, shutdown, frame_timeout).await;
    ticker.abort();
    daemon.lock("shutdown");
    // Give the audit writer a moment to flush the last rows.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// Once a second: auto-lock when idle, and start proactive refreshes.
/// Wall-clock based, so a suspend longer than the idle timeout locks on resume.
async fn tick(daemon: Arc<state::Daemon>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        daemon.lock_if_idle();
        daemon.refresh_due();
    }
}
