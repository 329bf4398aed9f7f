//! The authenticating proxy: `proxy.start` listens on a loopback address
//! or a Unix socket in a private directory, and each request an app sends
//! there is forwarded to one upstream with the credential's authorization
//! added (`forward.rs`, `auth.rs`): the app never holds the token.
//! `proxy.wait` holds the proxy open; when its caller hangs up (Ctrl-C on
//! `latchkey proxy`), the proxy stops, its listener closes and every
//! connection it holds ends.
//!
//! Only the user's own programs may use it: each connection's owner is
//! found from the kernel (`peer.rs`) and any other uid is refused. Each
//! connection's program is identified as an app, and every request takes
//! the token path as that app (policy, approvals, step-up, rate limits,
//! audit). Starting needs the same authorization, for the CLI's caller.

mod auth;
mod forward;
mod peer;

use crate::error::ApiError;
use crate::handler::Handler;
use crate::oauth::http::check_url;
use crate::state::{Daemon, Peer, ProxyEntry};
use crate::vault::crypto::random_id;
use auth::{Authorizer, Scheme};
use forward::{Bounds, Shared, Upstream};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use latchkey_client::protocol::{
    ErrorKind, ProxyLimits, ProxyStart, ProxyStartParams, ProxyStartResult, ProxyStopped,
    ProxyWait, ProxyWaitParams,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

/// 16: proxies running at once; each holds a listener, its connections
/// and a task.
const MAX_PROXIES: usize = 16;
/// 30 s: a started proxy that no `proxy.wait` holds by then stops (its
/// starter went away between the two calls).
const CLAIM_WINDOW: Duration = Duration::from_secs(30);
/// 30 s: an app connection must send a request's headers within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// 64 KiB: the most a request's head may take.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// 100 ms: pause after an accept error (out of descriptors, mostly).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// 2 s: a refusal's bytes are written within this, or the connection drops.
const REFUSAL_WRITE: Duration = Duration::from_secs(2);

const DEFAULT_MAX_REQUEST: u64 = 16 * 1024 * 1024;
const DEFAULT_MAX_RESPONSE: u64 = 64 * 1024 * 1024;
const DEFAULT_TIMEOUT_SECS: u64 = 300;
const DEFAULT_MAX_CONNECTIONS: u32 = 64;
/// 4 GiB: the largest body limit that may be set.
const MAX_BODY_LIMIT: u64 = 4 * 1024 * 1024 * 1024;
/// 1 h: the longest one forwarded request may take.
const MAX_TIMEOUT_SECS: u64 = 3600;
/// 1024: the most app connections one proxy may serve at once.
const MAX_CONNECTION_LIMIT: u32 = 1024;

impl Handler for ProxyStart {
    type Reply = ProxyStartResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: ProxyStartParams,
    ) -> Result<ProxyStartResult, ApiError> {
        let session = daemon.session()?;
        let (credential, _) = session.lookup(&params.credential)?;
        let name = credential.config.name.clone();
        let upstream = upstream(&params.upstream)?;
        let (bounds, limits) = bounds(params.limits)?;
        let where_ = listen(&params.listen)?;
        // A `--dpop` credential's tokens are bound to its key: each
        // request then carries a fresh proof.
        let auth = Authorizer::new(
            name.clone(),
            params.scopes.clone(),
            Scheme::of(credential.config.grant, credential.config.dpop),
        );
        // The starter must be allowed this credential's tokens, as for
        // `token.get`: asked once now (which also warms the cache).
        let probe_url = upstream.url.clone();
        auth.authorize(
            daemon,
            &peer,
            &auth::Outgoing {
                method: &http::Method::GET,
                url: &probe_url,
                body: None,
                form: false,
            },
        )
        .await?;
        if daemon.proxies().len() >= MAX_PROXIES {
            return Err(ApiError::new(
                ErrorKind::RateLimited,
                format!("{MAX_PROXIES} proxies are already running: end one (Ctrl-C its `latchkey proxy`) and try again"),
            ));
        }
        let listener = Listening::bind(&where_).await?;
        let shown = listener.shown();
        let own_hosts = listener.own_hosts();
        let id = random_id();
        let stop = Arc::new(Notify::new());
        let claimed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(None);
        daemon.proxies().insert(
            id.clone(),
            ProxyEntry {
                stop: Arc::clone(&stop),
                claimed: Arc::clone(&claimed),
                stopped: rx,
            },
        );
        let registered = Registered {
            daemon: Arc::clone(daemon),
            id: id.clone(),
        };
        let upstream_shown = upstream.url.to_string();
        daemon.audit.record(
            "proxy_started",
            Some(&name),
            Some(&peer),
            Some(format!("{shown} -> {upstream_shown}")),
        );
        tracing::info!(credential = %name, "proxy on {shown} for {upstream_shown}");
        let shared = Arc::new(Shared {
            daemon: Arc::clone(daemon),
            upstream,
            own_hosts,
            auth,
            bounds,
            requests: AtomicU64::new(0),
        });
        tokio::spawn(run(shared, listener, stop, claimed, tx, registered));
        Ok(ProxyStartResult {
            proxy_id: id,
            listen: shown,
            upstream: upstream_shown,
            limits,
        })
    }
}

/// Holds a started proxy for as long as the call lasts; the caller
/// hanging up (the server drops this future) stops it.
impl Handler for ProxyWait {
    type Reply = ProxyStopped;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        params: ProxyWaitParams,
    ) -> Result<ProxyStopped, ApiError> {
        let found = daemon.proxies().get(&params.proxy_id).map(|e| {
            (
                Arc::clone(&e.stop),
                e.claimed.swap(true, Ordering::SeqCst),
                e.stopped.clone(),
            )
        });
        let Some((stop, already, mut stopped)) = found else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                "no such proxy running (it stopped, or the daemon restarted); run `latchkey proxy` again",
            ));
        };
        if already {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "that proxy is already held by another `proxy.wait`",
            ));
        }
        let _stop_when_gone = StopOnDrop(stop);
        let result = stopped
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ApiError::internal("the proxy task ended without a result"))?
            .clone()
            .unwrap_or_default();
        Ok(result)
    }
}

/// Stops a proxy when its waiter goes away.
struct StopOnDrop(Arc<Notify>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // A stored permit: seen even if the task is not waiting this instant.
        self.0.notify_one();
    }
}

/// The registry entry, removed whatever ends the proxy task.
struct Registered {
    daemon: Arc<Daemon>,
    id: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.daemon.proxies().remove(&self.id);
    }
}

/// Serves until told to stop (or unclaimed after [`CLAIM_WINDOW`]); every
/// connection runs in this task's [`JoinSet`] and ends with it.
async fn run(
    shared: Arc<Shared>,
    listener: Listening,
    stop: Arc<Notify>,
    claimed: Arc<AtomicBool>,
    tx: watch::Sender<Option<ProxyStopped>>,
    registered: Registered,
) {
    // SAFETY: geteuid has no preconditions.
    let our_uid = unsafe { libc::geteuid() };
    let permits = Arc::new(Semaphore::new(shared.bounds.max_connections));
    let mut tasks = JoinSet::new();
    let refused = Arc::new(AtomicU64::new(0));
    let claim = tokio::time::sleep(CLAIM_WINDOW);
    tokio::pin!(claim);
    let mut claim_checked = false;
    loop {
        tokio::select! {
            () = stop.notified() => break,
            () = &mut claim, if !claim_checked => {
                claim_checked = true;
                if !claimed.load(Ordering::SeqCst) {
                    tracing::info!("no `proxy.wait` held the proxy on {}: stopping it", listener.shown());
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("the proxy on {} serves {} connections at once; refusing one", listener.shown(), shared.bounds.max_connections);
                        tasks.spawn(refuse(conn, 503, format!(
                            "latchkey proxy: {} connections are open, the proxy's cap; retry shortly, or raise it with `latchkey proxy --max-connections`",
                            shared.bounds.max_connections
                        )));
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    let refused = Arc::clone(&refused);
                    tasks.spawn(async move {
                        serve(shared, conn, our_uid, refused).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("the proxy cannot accept: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    let shown = listener.shown();
    // The port (or socket file) closes here, then every connection ends.
    drop(listener);
    tasks.shutdown().await;
    let result = ProxyStopped {
        requests: shared.requests.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
    };
    shared.daemon.audit.record(
        "proxy_stopped",
        Some(&shared.auth.credential),
        None,
        Some(format!("{shown}: {} requests", result.requests)),
    );
    tracing::info!("proxy on {shown} stopped");
    let _ = tx.send(Some(result));
    drop(registered);
}

/// One app connection: its owner checked, its program identified, then
/// HTTP/1 with a header deadline; each request through `forward.rs`.
async fn serve(shared: Arc<Shared>, conn: Conn, our_uid: u32, refused: Arc<AtomicU64>) {
    let daemon = Arc::clone(&shared.daemon);
    let found = match &conn {
        Conn::Tcp { source, local, .. } => {
            let (source, local) = (*source, *local);
            let d = Arc::clone(&daemon);
            tokio::task::spawn_blocking(move || peer::tcp(&d, source, local, our_uid))
                .await
                .unwrap_or(Err(peer::Refused::Unknown))
        }
        Conn::Unix(stream) => match peer::unix(&daemon, stream, our_uid) {
            Ok((pid, pidfd)) => {
                let d = Arc::clone(&daemon);
                tokio::task::spawn_blocking(move || peer::resolve(&d, pid, pidfd.as_ref()))
                    .await
                    .map_err(|_| peer::Refused::Unknown)
            }
            Err(why) => Err(why),
        },
    };
    let peer = match found {
        Ok(peer) => peer,
        Err(why) => {
            refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("the proxy refused a connection ({why})");
            daemon.audit.record(
                "proxy_peer_refused",
                Some(&shared.auth.credential),
                None,
                Some(why.to_string()),
            );
            refuse(
                conn,
                403,
                "latchkey proxy: only the programs of the user running latchkey may use this proxy"
                    .into(),
            )
            .await;
            return;
        }
    };
    let service = service_fn(move |req| forward::handle(Arc::clone(&shared), peer.clone(), req));
    let builder = {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES);
        b
    };
    let served = match conn {
        Conn::Tcp { stream, .. } => {
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
        Conn::Unix(stream) => {
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
    };
    if let Err(e) = served {
        tracing::debug!("a proxy connection ended: {e}");
    }
}

/// Answers a connection that is not served with a plain HTTP error, then
/// closes it (bounded: a peer that does not read is dropped).
async fn refuse(conn: Conn, status: u16, message: String) {
    let reason = if status == 403 {
        "Forbidden"
    } else {
        "Service Unavailable"
    };
    let body = format!("{message}\n");
    let reply = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        match conn {
            Conn::Tcp { mut stream, .. } => {
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
            Conn::Unix(mut stream) => {
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_WRITE, write).await;
}

/// The upstream, by the providers' URL policy (https, or http to a
/// loopback host), without query or fragment.
fn upstream(raw: &str) -> Result<Upstream, ApiError> {
    let url = check_url("the upstream", raw).map_err(|e| {
        ApiError::invalid_params(format!(
            "{e} (`latchkey proxy NAME --upstream https://api.example.com`)"
        ))
    })?;
    if url.query().is_some() {
        return Err(ApiError::invalid_params(
            "the upstream must not have a query: give its scheme, host and base path (`--upstream https://api.example.com/v1`)",
        ));
    }
    Ok(Upstream { url })
}

/// The bounds asked for, defaults filled in and each checked.
fn bounds(asked: ProxyLimits) -> Result<(Bounds, ProxyLimits), ApiError> {
    let size = |what: &str, flag: &str, v: Option<u64>, default: u64| match v {
        None => Ok(default),
        Some(n) if (1..=MAX_BODY_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid_params(format!(
            "the {what} limit must be 1 byte to 4 GiB: `latchkey proxy {flag} 16M`"
        ))),
    };
    let max_request_bytes = size(
        "request body",
        "--max-request-size",
        asked.max_request_bytes,
        DEFAULT_MAX_REQUEST,
    )?;
    let max_response_bytes = size(
        "response body",
        "--max-response-size",
        asked.max_response_bytes,
        DEFAULT_MAX_RESPONSE,
    )?;
    let timeout_secs = match asked.timeout_secs {
        None => DEFAULT_TIMEOUT_SECS,
        Some(n) if (1..=MAX_TIMEOUT_SECS).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid_params(
                "the proxy's request timeout must be 1 s to 1 h: `latchkey proxy --timeout 5m`",
            ))
        }
    };
    let max_connections = match asked.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(n) if (1..=MAX_CONNECTION_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid_params(format!(
                "the proxy's connection cap must be 1 to {MAX_CONNECTION_LIMIT}: `latchkey proxy --max-connections 64`"
            )))
        }
    };
    Ok((
        Bounds {
            max_request_bytes,
            max_response_bytes,
            timeout: Duration::from_secs(timeout_secs),
            max_connections: max_connections as usize,
        },
        ProxyLimits {
            max_request_bytes: Some(max_request_bytes),
            max_response_bytes: Some(max_response_bytes),
            timeout_secs: Some(timeout_secs),
            max_connections: Some(max_connections),
        },
    ))
}

/// Where a proxy listens.
#[derive(Debug, PartialEq, Eq)]
enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// `127.0.0.1:PORT`, `[::1]:PORT`, `localhost:PORT`, or an absolute Unix
/// socket path (also as `unix:PATH`) in a private directory of ours.
fn listen(raw: &str) -> Result<Listen, ApiError> {
    let raw = raw.trim();
    let path = raw.strip_prefix("unix:").unwrap_or(raw);
    if path.starts_with('/') {
        return unix_path(PathBuf::from(path)).map(Listen::Unix);
    }
    let addr = match raw.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p)),
        None => raw.parse::<SocketAddr>().ok(),
    };
    match addr {
        Some(addr) if addr.ip().is_loopback() => Ok(Listen::Tcp(addr)),
        _ => Err(ApiError::invalid_params(
            "the proxy listens only on a loopback address (`--listen 127.0.0.1:8080`, `[::1]:8080`, port 0 for any) or a Unix socket path in a private directory (`--listen $XDG_RUNTIME_DIR/api.sock`): any other address would let other machines use the credential",
        )),
    }
}

/// A socket path whose directory is ours, a real directory, entered by
/// no one else, and where nothing exists yet.
fn unix_path(path: PathBuf) -> Result<PathBuf, ApiError> {
    let shown = path.display().to_string();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| ApiError::invalid_params(format!("'{shown}' names no directory")))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| {
        ApiError::invalid_params(format!(
            "the directory of '{shown}' cannot be used ({e}): make it with `mkdir -m 700`"
        ))
    })?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(ApiError::invalid_params(format!(
            "the proxy's socket must be in a directory of yours that others cannot enter (a real directory, mode 0700), and '{}' is not: run `chmod 700` on it or choose another (such as $XDG_RUNTIME_DIR)",
            dir.display()
        )));
    }
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(ApiError::invalid_params(format!(
            "'{shown}' exists already: remove it, or choose another path"
        )));
    }
    // sun_path holds 108 bytes with the terminating NUL.
    if path.as_os_str().len() > 107 {
        return Err(ApiError::invalid_params(format!(
            "'{shown}' is longer than a Unix socket path may be (107 bytes): choose a shorter one"
        )));
    }
    Ok(path)
}

/// A bound listener.
enum Listening {
    Tcp(TcpListener, SocketAddr),
    /// Its socket file is removed on drop.
    Unix(UnixListener, PathBuf),
}

/// An accepted app connection.
enum Conn {
    Tcp {
        stream: tokio::net::TcpStream,
        /// The app's end.
        source: SocketAddr,
        /// Ours (the listener's address).
        local: SocketAddr,
    },
    Unix(tokio::net::UnixStream),
}

impl Listening {
    async fn bind(at: &Listen) -> Result<Listening, ApiError> {
        match at {
            Listen::Tcp(addr) => {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    ApiError::new(
                        ErrorKind::InvalidRequest,
                        format!("the proxy cannot listen on {addr}: {e}; choose another port (0: any free one)"),
                    )
                })?;
                let bound = listener.local_addr().map_err(ApiError::internal)?;
                Ok(Listening::Tcp(listener, bound))
            }
            Listen::Unix(path) => {
                let listener = UnixListener::bind(path).map_err(|e| {
                    ApiError::new(
                        ErrorKind::InvalidRequest,
                        format!("the proxy cannot listen on '{}': {e}", path.display()),
                    )
                })?;
                let listening = Listening::Unix(listener, path.clone());
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(ApiError::internal)?;
                Ok(listening)
            }
        }
    }

    async fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Listening::Tcp(listener, local) => {
                let (stream, source) = listener.accept().await?;
                Ok(Conn::Tcp {
                    stream,
                    source,
                    local: *local,
                })
            }
            Listening::Unix(listener, _) => Ok(Conn::Unix(listener.accept().await?.0)),
        }
    }

    /// What apps are told: `http://127.0.0.1:PORT` or `unix:PATH`.
    fn shown(&self) -> String {
        match self {
            Listening::Tcp(_, addr) => format!("http://{addr}"),
            Listening::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// The `Host` values that name the proxy itself.
    fn own_hosts(&self) -> Vec<String> {
        match self {
            Listening::Tcp(_, addr) => vec![addr.to_string(), format!("localhost:{}", addr.port())],
            Listening::Unix(..) => vec!["localhost".into()],
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Listening::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_or_a_private_socket_is_listened_on() {
        assert_eq!(
            listen("127.0.0.1:0").unwrap(),
            Listen::Tcp("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            listen("localhost:8080").unwrap(),
            Listen::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert!(matches!(listen("[::1]:9").unwrap(), Listen::Tcp(_)));
        for bad in [
            "0.0.0.0:8080",
            "[::]:8080",
            "192.168.1.2:80",
            "example.com:80",
            "8080",
        ] {
            let e = listen(bad).unwrap_err();
            assert!(e.message.contains("loopback"), "{bad}: {}", e.message);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let sock = dir.path().join("p.sock");
        assert_eq!(
            listen(&format!("unix:{}", sock.display())).unwrap(),
            Listen::Unix(sock.clone())
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(listen(sock.to_str().unwrap())
            .unwrap_err()
            .message
            .contains("chmod 700"));
    }

    #[test]
    fn limits_default_and_are_bounded() {
        let (b, shown) = bounds(ProxyLimits::default()).unwrap();
        assert_eq!(b.max_request_bytes, 16 << 20);
        assert_eq!(b.max_response_bytes, 64 << 20);
        assert_eq!(shown.timeout_secs, Some(300));
        assert!(bounds(ProxyLimits {
            max_connections: Some(0),
            ..ProxyLimits::default()
        })
        .is_err());
        assert!(bounds(ProxyLimits {
            timeout_secs: Some(7200),
            ..ProxyLimits::default()
        })
        .is_err());
    }

    #[test]
    fn the_upstream_follows_the_url_policy() {
        assert!(upstream("https://api.example.com/v1").is_ok());
        assert!(upstream("http://127.0.0.1:9/").is_ok());
        assert!(upstream("http://api.example.com/").is_err());
        assert!(upstream("https://api.example.com/?q=1").is_err());
    }
}
