//! `latchkeyd`, the Latchkey daemon, as a library: [`run`] serves a vault
//! on a local socket until told to stop. `main.rs` only parses arguments,
//! hardens the process, takes the vault lock and binds the socket; tests
//! call [`run`] in-process.
//!
//! The path of a token request: `server` (connection, framing, peer check)
//! → `dispatch` (envelope, routing) → `token::get` (`policy`: credential
//! and scope checks) → `cache::TokenCache` (memory, or one shared request)
//! → `oauth` (the provider) → back, sealed into the `vault` on the way.
//! ARCHITECTURE.md has the whole map.

pub mod activation;
mod approval;
mod approve;
mod apps;
mod audit;
mod audit_log;
mod cache;
mod callback;
mod clock;
mod config;
mod dispatch;
mod error;
pub mod fsutil;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzz;
mod git;
mod handler;
pub mod hardening;
mod health;
mod identity;
mod keys;
mod lifecycle;
pub mod lockfile;
mod login;
mod manage;
mod notify;
mod oauth;
mod oauth1;
mod policy;
mod polkit;
mod proxy;
mod ratelimit;
mod revoke;
mod rotation;
mod server;
mod state;
mod stepup;
mod strength;
mod sync;
mod token;
mod totp;
mod vault;

pub use clock::Clock;
pub use config::Config;
pub use ratelimit::{Rate, RateLimits};
pub use vault::keyring;
pub use vault::store::{Location as VaultLocation, PgTarget};
#[cfg(feature = "testing")]
#[doc(hidden)]
pub use vault::test_hooks;
pub use vault::Retention as AuditRetention;

use interprocess::local_socket::tokio::Listener;
use state::Daemon;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Serves the vault at `config.vault_path` on `listener` until `shutdown`
/// resolves (or a client sends `daemon.shutdown`), then finishes in-flight
/// requests, locks the vault and returns.
pub async fn run(
    config: Config,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let frame_timeout = config.frame_timeout;
    let daemon = Daemon::new(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    lifecycle::unlock_unattended(&daemon).await;
    let ticker = tokio::spawn(tick(Arc::clone(&daemon)));
    let siblings = daemon
        .fleet
        .is_some()
        .then(|| tokio::spawn(follow_fleet(Arc::clone(&daemon))));
    let notifier = daemon
        .config
        .notify
        .then(|| tokio::spawn(notify::run(Arc::clone(&daemon))));
    server::serve(Arc::clone(&daemon), listener, shutdown, frame_timeout).await;
    ticker.abort();
    if let Some(siblings) = siblings {
        siblings.abort();
    }
    if let Some(notifier) = notifier {
        notifier.abort();
    }
    lifecycle::lock(&daemon, "shutdown").await;
    // Give the audit writer a moment to flush the last rows.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// A shared vault: what the fleet's other daemons commit reaches this
/// one's memory (their notifications, on a connection of their own; after
/// the connection was lost, everything is read again).
async fn follow_fleet(daemon: Arc<Daemon>) {
    let Some(fleet) = daemon.fleet.clone() else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let resync = tx.clone();
    fleet.listen(
        move |change| tx.send(Some(change)).is_ok(),
        move || resync.send(None).is_ok(),
    );
    while let Some(change) = rx.recv().await {
        match change {
            Some(vault::fleet::Change::Grant(id)) => token::fleet_changed(&daemon, Some(id)).await,
            None => token::fleet_changed(&daemon, None).await,
            Some(vault::fleet::Change::Catalog | vault::fleet::Change::Panic) => {}
        }
    }
}

/// Once a second: auto-lock when idle, and start proactive refreshes.
/// On the daemon's clock, so a suspend longer than the idle timeout locks
/// on resume.
async fn tick(daemon: Arc<Daemon>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        lifecycle::lock_if_idle(&daemon).await;
        token::refresh_due(&daemon);
    }
}
