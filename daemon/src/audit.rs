//! The audit log: what happened (logins, unlocks, token requests, first
//! issuance of each token to each process, failures, removals), never a
//! secret. Events go through a channel to one writer task that batches
//! them into the vault's `audit` table, so the token path never waits on disk.

use crate::clock::Clock;
use crate::vault::store::AuditRow;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct Audit {
    tx: mpsc::UnboundedSender<AuditRow>,
    clock: Clock,
}

/// Where the writer puts batches; implemented by the daemon (the store may
/// not exist yet, or be closed).
pub trait Sink: Send + Sync + 'static {
    fn write(&self, rows: &[AuditRow]);
}

impl Audit {
    /// Starts the writer task. It ends when every `Audit` is dropped.
    pub fn start(sink: impl Sink, clock: Clock) -> Audit {
        let (tx, mut rx) = mpsc::unbounded_channel::<AuditRow>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(row) = rx.recv().await {
                batch.push(row);
                // Take whatever else is already queued, up to a bound.
                while batch.len() < 512 {
                    match rx.try_recv() {
                        Ok(row) => batch.push(row),
                        Err(_) => break,
                    }
                }
                sink.write(&batch);
                batch.clear();
            }
        });
        Audit { tx, clock }
    }

    /// Records one event. `detail` must never hold a secret: callers pass
    /// names, scopes, kinds and counts only.
    pub fn record(
        &self,
        event: &str,
        credential: Option<&str>,
        peer_pid: Option<u32>,
        detail: Option<String>,
    ) {
        tracing::info!(
            target: "latchkey::audit",
            event,
            credential = credential.unwrap_or(""),
            peer_pid = peer_pid.unwrap_or(0),
            detail = detail.as_deref().unwrap_or(""),
        );
        let _ = self.tx.send(AuditRow {
            at: self.clock.now(),
            event: event.to_owned(),
            credential: credential.map(str::to_owned),
            peer_pid,
            detail,
        });
    }
}
