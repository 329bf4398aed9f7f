//! Accepting connections on the local socket: the peer-uid check, the
//! connection limits (a cap, and each peer process's share of it), bounded
//! framing (size and time), idle connections closed, and graceful shutdown
//! that lets every in-flight request finish; with them the two methods that
//! are about the connection and the server, `hello` and `daemon.shutdown`.

use crate::dispatch::{self, After};
use crate::error::ApiError;
use crate::handler::Handler;
use crate::identity::{self, Caller};
use crate::state::{Daemon, Peer};
use futures::task::AtomicWaker;
use futures::FutureExt;
use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use latchkey_client::framing::{read_frame, Frame, SecretBuf, ZeroizingReader};
use latchkey_client::protocol::{
    ApprovalNext, DaemonShutdown, Empty, ErrorKind, Hello, HelloParams, HelloResult, LoginWait,
    Method, ProxyWait, MAX_REQUEST_LEN, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// 4: one peer process may hold at most a quarter of the connection cap,
/// so a runaway (or hostile) program cannot starve every other one.
const PEER_SHARE: usize = 4;
/// 50 ms: after an accept error (out of descriptors, mostly), pause
/// instead of retrying at once: the error would repeat and spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// A client that does not read its reply within this is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// 2 KiB: a connection's read buffer. Request lines are a few hundred
/// bytes as a rule (a `hello` and a `token.get` together about 170), so
/// they arrive in one read; a longer one (up to the 64 KiB limit) takes a
/// few. Smaller than the clients' 8 KiB because a daemon holds one per
/// open connection, most of them idle.
const REQUEST_BUFFER: usize = 2 * 1024;
/// 16 KiB: replies to requests that arrived together are written together
/// up to this much (a `hello` and a `token.get` are a few hundred bytes).
const COALESCE_LIMIT: usize = 16 * 1024;
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` completes or a client asks the daemon
/// to stop, then waits (bounded) for in-flight requests to finish.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
    frame_timeout: Duration,
) {
    let stop = Arc::new(Stop::default());
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let slots = Arc::new(Slots::new(daemon.config.max_connections));
    let idle_timeout = daemon.config.connection_idle_timeout;
    // SAFETY: geteuid has no preconditions.
    let our_uid = unsafe { libc::geteuid() };
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            () = daemon.shutdown.notified() => break,
        };
        let Some(pid) = check_peer(&daemon, &stream, our_uid) else {
            continue;
        };
        // Taken now, before the peer could exit: it pins the process that
        // connected (identity.rs).
        let pidfd = peer_pidfd(&stream).or_else(|| identity::pidfd_open(pid));
        let slot = match Slots::take(&slots, pid) {
            Ok(slot) => slot,
            Err(refusal) => {
                refuse(stream, &refusal);
                continue;
            }
        };
        let daemon = Arc::clone(&daemon);
        let stop = Stop::subscribe(&stop);
        let done = done_tx.clone();
        let timeouts = Timeouts {
            frame: frame_timeout,
            idle: idle_timeout,
        };
        tokio::spawn(async move {
            let peer = identify(&daemon, pid, pidfd).await;
            connection(&daemon, stream, peer, stop, timeouts).await;
            drop(slot);
            drop(done);
        });
    }
    tracing::info!("shutting down: finishing in-flight requests");
    drop(listener);
    stop.stop();
    drop(done_tx);
    if tokio::time::timeout(DRAIN_TIMEOUT, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            "some connections did not finish within {}s",
            DRAIN_TIMEOUT.as_secs()
        );
    }
}

/// The connection cap and each peer's share of it; a [`Slot`] per
/// connection served.
struct Slots {
    max: usize,
    per_peer: usize,
    /// Connections held: in all, and by peer pid.
    held: Mutex<(usize, HashMap<u32, usize>)>,
}

/// One connection's place; given back on drop.
struct Slot {
    slots: Arc<Slots>,
    pid: u32,
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots {
            max,
            per_peer: (max / PEER_SHARE).max(1),
            held: Mutex::new((0, HashMap::new())),
        }
    }

    /// A place for a connection of `pid`, or why there is none.
    fn take(slots: &Arc<Slots>, pid: u32) -> Result<Slot, ApiError> {
        let mut held = crate::sync::lock(&slots.held);
        let (total, by_peer) = &mut *held;
        if *total >= slots.max {
            tracing::warn!(pid, "{} connections are open; closing a new one", slots.max);
            return Err(ApiError::new(
                ErrorKind::RateLimited,
                format!("the latchkey daemon serves at most {} connections at once and has no room for another; retry shortly, and look for a program that opens connections without closing them", slots.max),
            ).with_retry_after(Some(1)));
        }
        let mine = by_peer.entry(pid).or_insert(0);
        if *mine >= slots.per_peer {
            tracing::warn!(
                pid,
                "process {pid} holds {mine} connections, its share; closing a new one"
            );
            return Err(ApiError::new(
                ErrorKind::RateLimited,
                format!("this process already holds {mine} connections to the latchkey daemon, its share of {}; close some (reuse one client) and retry", slots.max),
            ).with_retry_after(Some(1)));
        }
        *mine += 1;
        *total += 1;
        Ok(Slot {
            slots: Arc::clone(slots),
            pid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = crate::sync::lock(&self.slots.held);
        let (total, by_peer) = &mut *held;
        *total -= 1;
        if let Some(mine) = by_peer.get_mut(&self.pid) {
            *mine -= 1;
            if *mine == 0 {
                by_peer.remove(&self.pid);
            }
        }
    }
}

/// Closes a connection there is no room for, with an error frame if the
/// socket takes it at once (a fresh socket's buffer is empty, so it does):
/// the accept loop never waits on a refused client.
fn refuse(mut stream: Stream, why: &ApiError) {
    let mut frame = SecretBuf::with_capacity(256);
    dispatch::error_frame(&mut frame, why);
    let _ = stream.write_all(&frame).now_or_never();
}

/// Only processes of our own user may talk to us, whatever the socket's
/// file mode says (DESIGN.md, threat model).
fn check_peer(daemon: &Daemon, stream: &Stream, our_uid: u32) -> Option<u32> {
    match stream.peer_creds() {
        Ok(creds) => {
            let pid = creds.pid().map_or(0, |p| p as u32);
            match creds.euid() {
                Some(uid) if uid == our_uid => Some(pid),
                uid => {
                    tracing::warn!(pid, uid = ?uid, "refused a connection from another user");
                    daemon.audit.record(
                        "peer_refused",
                        None,
                        Some(&Peer::unidentified(pid)),
                        Some(format!("uid {uid:?}")),
                    );
                    None
                }
            }
        }
        Err(e) => {
            tracing::warn!("refused a connection whose peer credentials are unknown: {e}");
            None
        }
    }
}

fn peer_pidfd(stream: &Stream) -> Option<OwnedFd> {
    match stream {
        Stream::UdSocket(s) => identity::peer_pidfd(s.as_fd()),
    }
}

/// Who is behind a new connection (`identity.rs`): at once when its
/// executables are hashed already, else on a blocking thread (an
/// executable seen for the first time is read whole to hash it).
async fn identify(daemon: &Arc<Daemon>, pid: u32, pidfd: Option<OwnedFd>) -> Peer {
    let process = match daemon.identities.resolve_cached(pid, pidfd.as_ref()) {
        Some(process) => process,
        None => {
            let d = Arc::clone(daemon);
            tokio::task::spawn_blocking(move || d.identities.resolve(pid, pidfd.as_ref()))
                .await
                .unwrap_or_else(|_| identity::Process::unknown(pid, "its lookup failed"))
        }
    };
    Peer {
        pid,
        caller: Arc::new(Caller::new(process)),
    }
}

/// Shutdown's word to every connection: a flag, and each connection's
/// waker, registered once per connection. (A broadcast receiver or a
/// `Notify` would take a lock shared by all connections each time a
/// connection waits for its next request, and again when it stops waiting.)
#[derive(Default)]
struct Stop {
    stopping: AtomicBool,
    /// The wakers of the connections open, by connection number.
    wakers: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    next: AtomicU64,
}

/// One connection's view of [`Stop`]; unregisters on drop.
struct Stopping {
    stop: Arc<Stop>,
    number: u64,
    waker: Arc<AtomicWaker>,
}

impl Stop {
    fn subscribe(stop: &Arc<Stop>) -> Stopping {
        let number = stop.next.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        crate::sync::lock(&stop.wakers).insert(number, Arc::clone(&waker));
        Stopping {
            stop: Arc::clone(stop),
            number,
            waker,
        }
    }

    /// Tells every connection, now and later, that the server stops.
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for waker in crate::sync::lock(&self.wakers).values() {
            waker.wake();
        }
    }
}

impl Stopping {
    fn is_set(&self) -> bool {
        self.stop.stopping.load(Ordering::SeqCst)
    }

    /// Ready once the server stops; else wakes this task when it does.
    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_set() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Stopped between the check and the registration: no wake-up came.
        if self.is_set() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        crate::sync::lock(&self.stop.wakers).remove(&self.number);
    }
}

/// The time bounds of one connection.
#[derive(Clone, Copy)]
struct Timeouts {
    /// A started request must arrive whole within this.
    frame: Duration,
    /// No request for this long closes the connection; zero: never.
    idle: Duration,
}

/// A connection's one timer, behind all three of its bounds (idle between
/// requests, a request arriving whole, a reply being taken). Setting a
/// tokio timer takes the timer driver's lock, so the usual
/// `timeout(…)` around every read and write (three timers per request)
/// costs more than the request itself. Instead a bound starts only when
/// the I/O it bounds has to wait, and the one `Sleep` is moved only
/// earlier: when it fires before the deadline now in force (set for an
/// earlier one, or the connection was used since), it is set again.
struct Timer {
    /// Made on first use; boxed to be polled from a `poll_fn`.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    /// Ready once `deadline` has passed.
    fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            ready!(sleep.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            // Fired for an earlier deadline than this one.
            sleep.as_mut().reset(deadline);
        }
    }
}

/// `duration` after `from`, or (for a duration too long to add) a deadline
/// that never comes in practice, as tokio's own timeouts do.
fn deadline_after(from: Instant, duration: Duration) -> Instant {
    from.checked_add(duration)
        .unwrap_or_else(|| from + Duration::from_secs(86400 * 365 * 30))
}

/// How the wait for a connection's next request ended.
enum Next {
    /// Its first bytes are buffered.
    Request,
    /// The peer closed the connection (or it failed).
    Closed,
    /// No request for the idle timeout.
    Idle,
    /// The server is stopping.
    Stopping,
}

/// Waits for the first bytes of the next request, no longer than the idle
/// timeout after `since`, and not past shutdown.
async fn next_request(
    reader: &mut ZeroizingReader<Stream>,
    timer: &mut Timer,
    stop: &Stopping,
    idle: Duration,
    since: Instant,
) -> Next {
    poll_fn(|cx| {
        // Shutdown first: a client that keeps sending must not hold the
        // drain up.
        if stop.is_set() {
            return Poll::Ready(Next::Stopping);
        }
        match Pin::new(&mut *reader).poll_fill_buf(cx) {
            Poll::Ready(Ok(buf)) if !buf.is_empty() => return Poll::Ready(Next::Request),
            Poll::Ready(_) => return Poll::Ready(Next::Closed),
            Poll::Pending => {}
        }
        if stop.poll(cx).is_ready() {
            return Poll::Ready(Next::Stopping);
        }
        if !idle.is_zero() && timer.poll_until(cx, deadline_after(since, idle)).is_ready() {
            return Poll::Ready(Next::Idle);
        }
        Poll::Pending
    })
    .await
}

/// Reads one request line into `line`. A line already buffered whole (the
/// usual case) is taken without touching the timer; one that must be
/// waited for has to arrive within `frame_timeout` from then (`None`).
async fn read_request(
    reader: &mut ZeroizingReader<Stream>,
    line: &mut SecretBuf,
    timer: &mut Timer,
    frame_timeout: Duration,
) -> Option<std::io::Result<Frame>> {
    let read = read_frame(reader, line, MAX_REQUEST_LEN);
    tokio::pin!(read);
    let mut deadline = None;
    poll_fn(|cx| {
        if let Poll::Ready(frame) = read.as_mut().poll(cx) {
            return Poll::Ready(Some(frame));
        }
        let deadline =
            *deadline.get_or_insert_with(|| deadline_after(Instant::now(), frame_timeout));
        ready!(timer.poll_until(cx, deadline));
        Poll::Ready(None)
    })
    .await
}

/// Writes all of `bytes`; false if the peer is gone or has not taken them
/// within [`WRITE_TIMEOUT`] from the moment the socket was full (a reply
/// that fits the socket buffer, the usual case, never touches the timer).
async fn write_reply(stream: &mut Stream, bytes: &[u8], timer: &mut Timer) -> bool {
    let mut written = 0;
    let mut deadline = None;
    poll_fn(|cx| {
        while written < bytes.len() {
            match Pin::new(&mut *stream).poll_write(cx, &bytes[written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => {
                    let deadline = *deadline
                        .get_or_insert_with(|| deadline_after(Instant::now(), WRITE_TIMEOUT));
                    ready!(timer.poll_until(cx, deadline));
                    return Poll::Ready(false);
                }
            }
        }
        Poll::Ready(true)
    })
    .await
}

async fn connection(
    daemon: &Arc<Daemon>,
    stream: Stream,
    peer: Peer,
    stop: Stopping,
    timeouts: Timeouts,
) {
    // Requests carry passphrases and secrets, replies carry tokens: every
    // buffer they pass through is wiped (framing.rs).
    let mut reader = ZeroizingReader::with_capacity(REQUEST_BUFFER, stream);
    let mut line = SecretBuf::with_capacity(1024);
    let mut out = SecretBuf::with_capacity(1024);
    let mut timer = Timer { sleep: None };
    // The end of the last request: the idle timeout counts from here.
    let mut since = Instant::now();
    loop {
        match next_request(&mut reader, &mut timer, &stop, timeouts.idle, since).await {
            Next::Request => {}
            Next::Idle => {
                tracing::debug!(
                    pid = peer.pid,
                    "closing a connection idle for {} s",
                    timeouts.idle.as_secs()
                );
                break;
            }
            // Replies held back for a pipelined request (below) still go out.
            Next::Closed | Next::Stopping => {
                if !out.is_empty() {
                    write_reply(reader.get_mut(), &out, &mut timer).await;
                }
                break;
            }
        }
        // Once a request has started, it must arrive whole in time: a
        // half-written frame followed by silence costs one task, briefly.
        match read_request(&mut reader, &mut line, &mut timer, timeouts.frame).await {
            Some(Ok(Frame::Line)) => {}
            Some(Ok(Frame::TooLong)) => {
                tracing::info!(
                    pid = peer.pid,
                    "closing a connection that sent an oversized request"
                );
                dispatch::too_large(&mut out);
                write_reply(reader.get_mut(), &out, &mut timer).await;
                break;
            }
            Some(Ok(Frame::Eof)) | Some(Err(_)) => break,
            None => {
                tracing::info!(
                    pid = peer.pid,
                    "closing a connection that stalled mid-request"
                );
                break;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let after = match dispatch::envelope(&line, &mut out) {
            Err(after) => after,
            Ok(request)
                if request.method == LoginWait::NAME
                    || request.method == ApprovalNext::NAME
                    || request.method == ProxyWait::NAME =>
            {
                // A proxy's waiter is held for as long as the proxy runs:
                // at shutdown it is let go (the proxy stops), not waited for.
                let ends_at_shutdown = request.method == ProxyWait::NAME;
                // Replies held back go out before a wait of minutes.
                if !out.is_empty() {
                    if !write_reply(reader.get_mut(), &out, &mut timer).await {
                        break;
                    }
                    out.clear();
                }
                // The person's wait ends with the connection: dropping the
                // handler cancels the login (login.rs), so its listener
                // closes; an approver that left is no longer counted; a
                // proxy whose `latchkey proxy` ended stops (proxy/).
                tokio::select! {
                    after = dispatch::route(daemon, &peer, request, &mut out) => after,
                    () = hung_up(&mut reader) => break,
                    () = poll_fn(|cx| stop.poll(cx)), if ends_at_shutdown => break,
                }
            }
            Ok(request) => dispatch::route(daemon, &peer, request, &mut out).await,
        };
        // Requests may carry passphrases or secrets, replies carry tokens.
        line.clear();
        // A peer that sent several requests at once (the CLI sends `hello`
        // with its call) gets their replies in one write: it wakes once,
        // not once per reply. Bounded, so replies never pile up unsent.
        if after == After::Continue && out.len() < COALESCE_LIMIT && reader.has_buffered_line() {
            continue;
        }
        let written = write_reply(reader.get_mut(), &out, &mut timer).await;
        out.clear();
        if !written || after == After::Close {
            break;
        }
        since = Instant::now();
    }
}

/// Resolves when the peer closes its end (EOF or an error). Bytes of a
/// next request stay buffered for after the reply.
async fn hung_up(reader: &mut ZeroizingReader<Stream>) {
    if matches!(reader.fill_buf().await, Ok(buf) if !buf.is_empty()) {
        std::future::pending::<()>().await;
    }
}

/// The handshake: the daemon's protocol version, whatever the client's (a
/// client refuses a daemon that speaks another one).
impl Handler for Hello {
    type Reply = HelloResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: HelloParams,
    ) -> Result<HelloResult, ApiError> {
        if let Some(key) = params.app_key {
            crate::apps::present_key(daemon, &peer, key)?;
        }
        if params.protocol != PROTOCOL_VERSION {
            tracing::info!(
                client = params.protocol,
                ours = PROTOCOL_VERSION,
                "client speaks another protocol version"
            );
        }
        Ok(HelloResult {
            protocol: PROTOCOL_VERSION,
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            vault_path: Some(daemon.config.vault.to_string()),
        })
    }
}

/// Stops accepting; in-flight requests finish (see [`serve`]).
impl Handler for DaemonShutdown {
    type Reply = Empty;

    async fn handle(daemon: &Arc<Daemon>, peer: Peer, _: Empty) -> Result<Empty, ApiError> {
        daemon
            .audit
            .record("shutdown_requested", None, Some(&peer), None);
        daemon.shutdown.notify_one();
        Ok(Empty {})
    }
}
