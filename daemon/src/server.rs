//! Accepting connections on the local socket: the peer-uid check, the
//! connection limit, bounded framing (size and time), and graceful shutdown
//! that lets every in-flight request finish; with them the two methods that
//! are about the connection and the server, `hello` and `daemon.shutdown`.

use crate::dispatch::{self, After};
use crate::error::ApiError;
use crate::handler::Handler;
use crate::state::{Daemon, Peer};
use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use latchkey_client::framing::{read_frame, Frame, SecretBuf, ZeroizingReader, READ_BUFFER};
use latchkey_client::protocol::{
    DaemonShutdown, Empty, Hello, HelloParams, HelloResult, MAX_REQUEST_LEN, PROTOCOL_VERSION,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, Semaphore};

/// Concurrent connections served; more are closed at once (a local process
/// opening thousands of sockets must not exhaust the daemon's descriptors).
const MAX_CONNECTIONS: usize = 1024;
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
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            () = daemon.shutdown.notified() => break,
        };
        let Some(peer) = check_peer(&daemon, &stream, our_uid) else {
            continue;
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(pid = peer.pid, "too many connections; closing a new one");
            continue;
        };
        let daemon = Arc::clone(&daemon);
        let stop = stop_tx.subscribe();
        let done = done_tx.clone();
        tokio::spawn(async move {
            connection(&daemon, stream, peer, stop, frame_timeout).await;
            drop(permit);
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

async fn connection(
    daemon: &Arc<Daemon>,
    stream: Stream,
    peer: Peer,
    mut stop: broadcast::Receiver<()>,
    frame_timeout: Duration,
) {
    // Requests carry passphrases and secrets, replies carry tokens: every
    // buffer they pass through is wiped (framing.rs).
    let mut reader = ZeroizingReader::with_capacity(READ_BUFFER, stream);
    let mut line = SecretBuf::with_capacity(1024);
    let mut out = SecretBuf::with_capacity(1024);
    loop {
        // Idle between requests for as long as the client likes, but stop
        // waiting when the daemon shuts down.
        let started = tokio::select! {
            r = reader.fill_buf() => matches!(r, Ok(buf) if !buf.is_empty()),
            _ = stop.recv() => false,
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
        let after = dispatch::handle(daemon, peer, &line, &mut out).await;
        // Requests may carry passphrases or secrets, replies carry tokens.
        line.clear();
        let written = tokio::time::timeout(WRITE_TIMEOUT, reader.get_mut().write_all(&out)).await;
        out.clear();
        if !matches!(written, Ok(Ok(()))) || after == After::Close {
            break;
        }
    }
}

/// The handshake: the daemon's protocol version, whatever the client's (a
/// client refuses a daemon that speaks another one).
impl Handler for Hello {
    type Reply = HelloResult;

    async fn handle(
        _: &Arc<Daemon>,
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
