//! The audit log: what happened (logins, unlocks, token requests, first
//! issuance of each token to each process, failures, removals), never a
//! secret. Events go through a bounded queue to one writer thread that
//! batches them into the vault's `audit` table, so the token path never
//! waits on disk, and a flood of events never grows memory: what does not
//! fit is counted and the log says so in a row of its own.

use crate::clock::Clock;
use crate::identity::Peer;
use crate::vault::store::AuditRow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// 4096 events: far more than a burst of real use between two batches (a
/// batch is written in milliseconds), and a bound on what a flood of
/// requests can make the daemon hold (a few hundred bytes per event).
const QUEUE_CAPACITY: usize = 4096;
/// Rows written per transaction at most.
const MAX_BATCH: usize = 512;
/// The event of the row that says how many events were dropped.
pub const DROPPED_EVENT: &str = "audit_dropped";

#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<AuditRow>,
    /// Events refused because the queue was full, not yet reported.
    dropped: Arc<AtomicU64>,
    clock: Clock,
}

/// Where the writer puts batches; implemented by the daemon (the store may
/// not exist yet, or be closed). Called on the writer's own thread: it may
/// block.
pub trait Sink: Send + Sync + 'static {
    fn write(&self, rows: &[AuditRow]);
}

impl Audit {
    /// Starts the writer thread. It ends when every `Audit` is dropped.
    pub fn start(sink: impl Sink, clock: Clock) -> Audit {
        Audit::with_capacity(sink, clock, QUEUE_CAPACITY)
    }

    fn with_capacity(sink: impl Sink, clock: Clock, capacity: usize) -> Audit {
        let (tx, rx) = mpsc::channel::<AuditRow>(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            rx,
            dropped: Arc::clone(&dropped),
            sink,
            clock,
        };
        std::thread::Builder::new()
            .name("latchkey-audit".into())
            .spawn(move || writer.run())
            .expect("the OS starts the audit writer thread");
        Audit { tx, dropped, clock }
    }

    /// Records one event. `detail` must never hold a secret: callers pass
    /// names, scopes, kinds and counts only. Never blocks: when the queue
    /// is full the event is counted, and the count is written later.
    pub fn record(
        &self,
        event: &str,
        credential: Option<&str>,
        peer: Option<&Peer>,
        detail: Option<String>,
    ) {
        let app = peer.map(Peer::label);
        tracing::info!(
            target: "latchkey::audit",
            event,
            credential = credential.unwrap_or(""),
            peer_pid = peer.map_or(0, |p| p.pid),
            app = app.as_deref().unwrap_or(""),
            detail = detail.as_deref().unwrap_or(""),
        );
        let row = AuditRow {
            at: self.clock.now(),
            event: event.to_owned(),
            credential: credential.map(str::to_owned),
            peer_pid: peer.map(|p| p.pid),
            app,
            detail,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(row) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread's state.
struct Writer<S> {
    rx: mpsc::Receiver<AuditRow>,
    dropped: Arc<AtomicU64>,
    sink: S,
    clock: Clock,
}

impl<S: Sink> Writer<S> {
    fn run(mut self) {
        let mut batch = Vec::new();
        while let Some(row) = self.rx.blocking_recv() {
            batch.push(row);
            // Take whatever else is already queued, up to a bound.
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
            // The queue has room again: say what did not fit, in order.
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(dropped, "the audit queue was full: events were dropped");
                batch.push(AuditRow {
                    at: self.clock.now(),
                    event: DROPPED_EVENT.into(),
                    credential: None,
                    peer_pid: None,
                    app: None,
                    detail: Some(format!(
                        "audit events dropped: {dropped} (the audit queue was full; the log has a gap here)"
                    )),
                });
            }
            self.sink.write(&batch);
            batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Event and detail of each row a sink was given.
    type Kept = Arc<Mutex<Vec<(String, Option<String>)>>>;

    /// A sink that stalls on its first batch until released, and keeps
    /// what it was given.
    struct Stalled {
        entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
        rows: Kept,
    }

    impl Sink for Stalled {
        fn write(&self, rows: &[AuditRow]) {
            if let Some(entered) = self.entered.lock().unwrap().take() {
                entered.send(()).unwrap();
                self.release.lock().unwrap().recv().unwrap();
            }
            let mut kept = self.rows.lock().unwrap();
            kept.extend(rows.iter().map(|r| (r.event.clone(), r.detail.clone())));
        }
    }

    #[test]
    fn a_flood_stays_bounded_and_the_log_says_what_it_dropped() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let rows = Arc::new(Mutex::new(Vec::new()));
        let sink = Stalled {
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(release_rx),
            rows: Arc::clone(&rows),
        };
        let capacity = 8;
        let audit = Audit::with_capacity(sink, Clock::Wall, capacity);
        audit.record("first", None, None, None);
        entered.recv().unwrap(); // the writer is stalled inside the sink
        for i in 0..1000 {
            audit.record("flood", None, None, Some(i.to_string()));
        }
        let queued = audit.tx.max_capacity() - audit.tx.capacity();
        assert_eq!(queued, capacity, "the queue holds at most its capacity");
        assert_eq!(
            audit.dropped.load(Ordering::Relaxed),
            1000 - capacity as u64
        );

        release.send(()).unwrap();
        // Bounded: the writer takes the queued rows within milliseconds.
        for _ in 0..500 {
            if audit.tx.capacity() == capacity {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        audit.record("after", None, None, None);
        // Bounded: the writer drains 8 + 2 rows; poll until it has.
        let mut seen = Vec::new();
        for _ in 0..500 {
            seen = rows.lock().unwrap().clone();
            if seen.iter().any(|(e, _)| e == "after") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let events: Vec<&str> = seen.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(events.iter().filter(|e| **e == "flood").count(), capacity);
        let dropped: Vec<_> = seen.iter().filter(|(e, _)| e == DROPPED_EVENT).collect();
        assert_eq!(dropped.len(), 1, "one row reports the drops: {events:?}");
        assert_eq!(
            dropped[0].1.as_deref(),
            Some("audit events dropped: 992 (the audit queue was full; the log has a gap here)")
        );
        assert!(events.contains(&"after"), "{events:?}");
    }
}
