//! The audit log: what happened (unlocks, logins, refreshes, first
//! issuance of each token to each process, denials, failures, removals),
//! who asked and how it ended, never a secret. Events go through a
//! bounded queue to one writer thread that batches them into the vault's
//! `audit` table, so the token path never waits on disk, and a flood of
//! events never grows memory: what does not fit is counted and the log
//! says so in a row of its own.
//!
//! The writer's sink (the vault, `state.rs`) chains each row into the
//! log's MAC chain while the vault is unlocked, chains rows written while
//! it was locked at the next unlock, and applies retention
//! (`vault/chain.rs`). The writer also wakes once a second without events,
//! so that work finishes without waiting for the next event.

use crate::clock::Clock;
use crate::identity::Peer;
use crate::vault::AuditEvent;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// 4096 events: far more than a burst of real use between two batches (a
/// batch is written in milliseconds), and a bound on what a flood of
/// requests can make the daemon hold (a few hundred bytes per event).
const QUEUE_CAPACITY: usize = 4096;
/// Rows written per transaction at most.
const MAX_BATCH: usize = 512;
/// How long the writer sleeps with nothing queued and no work left:
/// retention and late chaining run at least this often.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// The pause between two batches of work left (rows to chain or prune):
/// other users of the vault mutex (a token stored, a `status`) find it
/// free most of the time, and a long backlog (a million rows chained
/// after an upgrade: about half a minute) runs in the background at a fraction
/// of a core.
const BACKLOG_PAUSE: Duration = Duration::from_millis(20);
/// The event of the row that says how many events were dropped.
pub const DROPPED_EVENT: &str = "audit_dropped";

/// How an event ended, as its row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Something went wrong (a wrong passphrase, a provider refusal).
    Failed,
    /// Refused on purpose (policy, approval, rate limit, another user).
    Denied,
}

impl Outcome {
    /// The outcome an event name implies: `…_failed` and `needs_login`
    /// failed; `…_denied`, `…_refused`, `denied` and `rate_limited` were
    /// denied; everything else went as asked.
    pub fn of(event: &str) -> Outcome {
        let denied = ["denied", "rate_limited", "forbidden"];
        if denied.contains(&event) || event.ends_with("_denied") || event.ends_with("_refused") {
            Outcome::Denied
        } else if event.ends_with("_failed")
            || event == "needs_login"
            || event == DROPPED_EVENT
            || event == crate::vault::TRUNCATED_EVENT
        {
            Outcome::Failed
        } else {
            Outcome::Ok
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Denied => "denied",
        }
    }
}

#[derive(Clone)]
pub struct Audit {
    tx: mpsc::SyncSender<AuditEvent>,
    /// Events refused because the queue was full, not yet reported.
    dropped: Arc<AtomicU64>,
    clock: Clock,
}

/// Where the writer puts batches; implemented by the daemon (the store may
/// not exist yet, or be locked). Called on the writer's own thread: it may
/// block. Called with no rows too, once a second and while it says work is
/// left: returns whether it is (rows to chain or prune), so the writer
/// comes back at once.
pub trait Sink: Send + Sync + 'static {
    fn write(&self, rows: &[AuditEvent]) -> bool;
}

impl Audit {
    /// Starts the writer thread. It ends when every `Audit` is dropped.
    pub fn start(sink: impl Sink, clock: Clock) -> Audit {
        Audit::with_capacity(sink, clock, QUEUE_CAPACITY)
    }

    fn with_capacity(sink: impl Sink, clock: Clock, capacity: usize) -> Audit {
        let (tx, rx) = mpsc::sync_channel::<AuditEvent>(capacity);
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

    /// Records one event; its outcome follows from its name
    /// ([`Outcome::of`]). `detail` must never hold a secret: callers pass
    /// names, scopes, kinds and counts only. Never blocks: when the queue
    /// is full the event is counted, and the count is written later.
    pub fn record(
        &self,
        event: &str,
        credential: Option<&str>,
        peer: Option<&Peer>,
        detail: Option<String>,
    ) {
        self.push(event, credential, peer, detail, None);
    }

    /// Like [`Audit::record`], with a detail that identifies an account
    /// (the OIDC subject): it is sealed into the row, and neither logged
    /// nor written in clear.
    pub fn record_sealed(
        &self,
        event: &str,
        credential: Option<&str>,
        peer: Option<&Peer>,
        detail: Option<String>,
        sealed: String,
    ) {
        self.push(event, credential, peer, detail, Some(sealed));
    }

    fn push(
        &self,
        event: &str,
        credential: Option<&str>,
        peer: Option<&Peer>,
        detail: Option<String>,
        sealed: Option<String>,
    ) {
        let app = peer.map(Peer::label);
        let outcome = Outcome::of(event).as_str();
        tracing::info!(
            target: "latchkey::audit",
            event,
            outcome,
            credential = credential.unwrap_or(""),
            peer_pid = peer.map_or(0, |p| p.pid),
            app = app.as_deref().unwrap_or(""),
            detail = detail.as_deref().unwrap_or(""),
            sealed_detail = sealed.is_some(),
        );
        let row = AuditEvent {
            at: self.clock.now(),
            event: event.to_owned(),
            credential: credential.map(str::to_owned),
            peer_pid: peer.map(|p| p.pid),
            app,
            app_key: peer.map(|p| p.caller.app().key()),
            outcome,
            detail,
            sealed,
        };
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(row) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread's state.
struct Writer<S> {
    rx: mpsc::Receiver<AuditEvent>,
    dropped: Arc<AtomicU64>,
    sink: S,
    clock: Clock,
}

impl<S: Sink> Writer<S> {
    fn run(self) {
        let mut batch = Vec::new();
        let mut more = false;
        loop {
            // With work left, go on after a short pause (or at the next event).
            let wait = if more { BACKLOG_PAUSE } else { IDLE_WAKE };
            match self.rx.recv_timeout(wait) {
                Ok(row) => batch.push(row),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
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
                batch.push(AuditEvent {
                    at: self.clock.now(),
                    event: DROPPED_EVENT.into(),
                    outcome: Outcome::of(DROPPED_EVENT).as_str(),
                    detail: Some(format!(
                        "audit events dropped: {dropped} (the audit queue was full; the log has a gap here)"
                    )),
                    ..AuditEvent::default()
                });
            }
            more = self.sink.write(&batch);
            batch.clear();
        }
        // The last rows, after every sender is gone.
        self.sink.write(&batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Event and detail of each row a sink was given.
    type Kept = Arc<Mutex<Vec<(String, Option<String>)>>>;

    /// A sink that stalls on its first batch with rows until released,
    /// and keeps what it was given.
    struct Stalled {
        entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
        rows: Kept,
    }

    impl Sink for Stalled {
        fn write(&self, rows: &[AuditEvent]) -> bool {
            if rows.is_empty() {
                return false;
            }
            if let Some(entered) = self.entered.lock().unwrap().take() {
                entered.send(()).unwrap();
                self.release.lock().unwrap().recv().unwrap();
            }
            let mut kept = self.rows.lock().unwrap();
            kept.extend(rows.iter().map(|r| (r.event.clone(), r.detail.clone())));
            false
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
        assert_eq!(
            audit.dropped.load(Ordering::Relaxed),
            1000 - capacity as u64,
            "the queue holds at most its capacity"
        );

        release.send(()).unwrap();
        // Bounded: the writer drains the 8 queued rows (and reports the
        // drops with them); then one more row, sent with room in the queue.
        let written = |event: &str| rows.lock().unwrap().iter().any(|(e, _)| e == event);
        for _ in 0..500 {
            if written(DROPPED_EVENT) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        audit.record("after", None, None, None);
        for _ in 0..500 {
            if written("after") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let seen = rows.lock().unwrap().clone();
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

    #[test]
    fn outcomes_follow_from_event_names() {
        let cases = [
            ("unlock", "ok"),
            ("lock", "ok"),
            ("login", "ok"),
            ("token_issued", "ok"),
            ("refreshed", "ok"),
            ("rekey", "ok"),
            ("unlock_failed", "failed"),
            ("login_failed", "failed"),
            ("token_failed", "failed"),
            ("needs_login", "failed"),
            (DROPPED_EVENT, "failed"),
            (crate::vault::TRUNCATED_EVENT, "failed"),
            ("peer_refused", "denied"),
            ("approval_denied", "denied"),
            ("denied", "denied"),
            ("rate_limited", "denied"),
        ];
        for (event, outcome) in cases {
            assert_eq!(Outcome::of(event).as_str(), outcome, "{event}");
        }
    }

    /// A sink that keeps whole rows and says work is left for its first
    /// `busy` calls.
    struct Keeping {
        rows: Arc<Mutex<Vec<AuditEvent>>>,
        calls: Arc<AtomicU64>,
        busy: u64,
    }

    impl Sink for Keeping {
        fn write(&self, rows: &[AuditEvent]) -> bool {
            self.rows.lock().unwrap().extend(rows.iter().cloned());
            self.calls.fetch_add(1, Ordering::Relaxed) < self.busy
        }
    }

    #[test]
    fn rows_carry_outcome_and_sealed_details_and_the_writer_comes_back_for_work_left() {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicU64::new(0));
        let busy = 50;
        let audit = Audit::start(
            Keeping {
                rows: Arc::clone(&rows),
                calls: Arc::clone(&calls),
                busy,
            },
            Clock::Wall,
        );
        let peer = Peer::unidentified(42);
        audit.record(
            "unlock_failed",
            None,
            Some(&peer),
            Some("wrong_passphrase".into()),
        );
        audit.record_sealed("login", Some("app"), None, None, "sub=alice".into());
        // Bounded: 50 calls 20 ms apart, then idle wakes.
        for _ in 0..500 {
            if calls.load(Ordering::Relaxed) > busy && rows.lock().unwrap().len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            calls.load(Ordering::Relaxed) > busy,
            "the writer came back {} times for work left",
            calls.load(Ordering::Relaxed)
        );
        let rows = rows.lock().unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            !format!("{rows:?}").contains("alice"),
            "Debug leaves the sealed detail out"
        );
        assert_eq!(rows[0].outcome, "failed");
        assert_eq!(rows[0].peer_pid, Some(42));
        assert_eq!(rows[0].app_key.as_deref(), Some("unknown"));
        assert_eq!(rows[0].sealed, None);
        assert_eq!(rows[1].outcome, "ok");
        assert_eq!(rows[1].detail, None, "the subject is not a clear detail");
        assert_eq!(rows[1].sealed.as_deref(), Some("sub=alice"));
    }
}
