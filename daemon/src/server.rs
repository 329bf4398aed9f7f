//! Accepting connections on the local socket: the peer-uid check, the
//! connection limits (a cap, and each peer process's share of it), bounded
//! framing (size and time), idle connections closed, and graceful shutdown
//! that lets every in-flight request finish; with them the two methods that
//! are about the connection and the server, `hello` and `daemon.shutdown`.

use crate::dispatch::{self, After};
use crate::error::ApiError;
use crate::handler::Handler;
use crate::state::{Daemon, Peer};
use futures::FutureExt;
use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use latchkey_client::framing::{read_frame, Frame, SecretBuf, ZeroizingReader, READ_BUFFER};
use latchkey_client::protocol::{
    DaemonShutdown, Empty, ErrorKind, Hello, HelloParams, HelloResult, LoginWait, Method,
    MAX_REQUEST_LEN, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};

/// 4: one peer process may hold at most a quarter of the connection cap,
/// so a runaway (or hostile) program cannot starve every other one.
const PEER_SHARE: usize = 4;
/// 50 ms: after an accept error (out of descriptors, mostly), pause
/// instead of retrying at once: the error would repeat and spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// A client that does not read its reply within this is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
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
    let (stop_tx, _) = broadcast::channel::<()>(1);
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
        let Some(peer) = check_peer(&daemon, &stream, our_uid) else {
            continue;
        };
        let slot = match Slots::take(&slots, peer.pid) {
            Ok(slot) => slot,
            Err(refusal) => {
                refuse(stream, &refusal);
                continue;
            }
        };
        let daemon = Arc::clone(&daemon);
        let stop = stop_tx.subscribe();
        let done = done_tx.clone();
        let timeouts = Timeouts {
            frame: frame_timeout,
            idle: idle_timeout,
        };
        tokio::spawn(async move {
            connection(&daemon, stream, peer, stop, timeouts).await;
            drop(slot);
            drop(done);
        });
    }
    tracing::info!("shutting down: finishing in-flight requests");
    drop(listener);
    let _ = stop_tx.send(());
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
fn check_peer(daemon: &Daemon, stream: &Stream, our_uid: u32) -> Option<Peer> {
    match stream.peer_creds() {
        Ok(creds) => {
            let pid = creds.pid().map_or(0, |p| p as u32);
            match creds.euid() {
                Some(uid) if uid == our_uid => Some(Peer { pid }),
                uid => {
                    tracing::warn!(pid, uid = ?uid, "refused a connection from another user");
                    daemon.audit.record(
                        "peer_refused",
                        None,
                        Some(pid),
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

/// The time bounds of one connection.
#[derive(Clone, Copy)]
struct Timeouts {
    /// A started request must arrive whole within this.
    frame: Duration,
    /// No request for this long closes the connection; zero: never.
    idle: Duration,
}

async fn connection(
    daemon: &Arc<Daemon>,
    stream: Stream,
    peer: Peer,
    mut stop: broadcast::Receiver<()>,
    timeouts: Timeouts,
) {
    let frame_timeout = timeouts.frame;
    // Requests carry passphrases and secrets, replies carry tokens: every
    // buffer they pass through is wiped (framing.rs).
    let mut reader = ZeroizingReader::with_capacity(READ_BUFFER, stream);
    let mut line = SecretBuf::with_capacity(1024);
    let mut out = SecretBuf::with_capacity(1024);
    loop {
        // Idle between requests up to the idle timeout; stop waiting when
        // the daemon shuts down.
        let idle = async {
            if timeouts.idle.is_zero() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(timeouts.idle).await;
        };
        let started = tokio::select! {
            r = reader.fill_buf() => matches!(r, Ok(buf) if !buf.is_empty()),
            _ = stop.recv() => false,
            () = idle => {
                tracing::debug!(pid = peer.pid, "closing a connection idle for {} s", timeouts.idle.as_secs());
                false
            }
        };
        if !started {
            break;
        }
        // Once a request has started, it must arrive whole in time: a
        // half-written frame followed by silence costs one task, briefly.
        match tokio::time::timeout(
            frame_timeout,
            read_frame(&mut reader, &mut line, MAX_REQUEST_LEN),
        )
        .await
        {
            Ok(Ok(Frame::Line)) => {}
            Ok(Ok(Frame::TooLong)) => {
                tracing::info!(
                    pid = peer.pid,
                    "closing a connection that sent an oversized request"
                );
                dispatch::too_large(&mut out);
                let _ = tokio::time::timeout(WRITE_TIMEOUT, reader.get_mut().write_all(&out)).await;
                break;
            }
            Ok(Ok(Frame::Eof)) | Ok(Err(_)) => break,
            Err(_) => {
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
        let after = if waits_for_a_person(&line) {
            // The person's wait ends with the connection: dropping the
            // handler cancels the login (login.rs), so its listener closes.
            tokio::select! {
                after = dispatch::handle(daemon, peer, &line, &mut out) => after,
                () = hung_up(&mut reader) => break,
            }
        } else {
            dispatch::handle(daemon, peer, &line, &mut out).await
        };
        // Requests may carry passphrases or secrets, replies carry tokens.
        line.clear();
        let written = tokio::time::timeout(WRITE_TIMEOUT, reader.get_mut().write_all(&out)).await;
        out.clear();
        if !matches!(written, Ok(Ok(()))) || after == After::Close {
            break;
        }
    }
}

/// Whether `line` is a `login.wait` call: the one request that waits on
/// a person for minutes, and whose waiter leaving must end what it waits for.
fn waits_for_a_person(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        method: Option<&'a str>,
    }
    let name = LoginWait::NAME.as_bytes();
    // The cheap test first: every request passes here.
    line.windows(name.len()).any(|w| w == name)
        && serde_json::from_slice::<Envelope<'_>>(line)
            .is_ok_and(|e| e.method == Some(LoginWait::NAME))
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
        _: Peer,
        params: HelloParams,
    ) -> Result<HelloResult, ApiError> {
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
            vault_path: Some(daemon.config.vault_path.display().to_string()),
        })
    }
}

/// Stops accepting; in-flight requests finish (see [`serve`]).
impl Handler for DaemonShutdown {
    type Reply = Empty;

    async fn handle(daemon: &Arc<Daemon>, peer: Peer, _: Empty) -> Result<Empty, ApiError> {
        daemon
            .audit
            .record("shutdown_requested", None, Some(peer.pid), None);
        daemon.shutdown.notify_one();
        Ok(Empty {})
    }
}
