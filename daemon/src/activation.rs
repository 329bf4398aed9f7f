//! systemd's side of the daemon's life: a listening socket handed over by
//! socket activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, fd 3;
//! sd_listen_fds(3)) and the readiness notices (`READY=1`, `STOPPING=1`)
//! sent to `NOTIFY_SOCKET` (sd_notify(3)).

use anyhow::{bail, Context};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};

/// What systemd handed over, checked: a Unix stream socket, listening,
/// bound to a path in a directory that is ours.
pub struct Inherited {
    /// The listening socket (close-on-exec).
    pub fd: OwnedFd,
    /// The path it is bound to.
    pub path: PathBuf,
}

/// Takes the socket systemd passed, if it passed one to this process.
/// The activation variables are removed either way, so no child inherits
/// them. A `LISTEN_PID` that is not ours (the variables were inherited from
/// another service) is logged and ignored: the daemon binds as usual.
///
/// Call before any thread is started (it changes the environment).
pub fn take_listener() -> anyhow::Result<Option<Inherited>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let ours = std::process::id().to_string();
    // Tolerated, never required: only the first socket is served.
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    std::env::remove_var("LISTEN_FDNAMES");
    if let Some(pid) = pid.as_deref().filter(|pid| pid.trim() != ours) {
        tracing::warn!(
            "LISTEN_PID is {pid}, not this process ({ours}): the passed sockets are another process's; ignoring them and binding the socket as usual"
        );
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        return Ok(None);
    }
    // SAFETY: called from `main` before the runtime or any other thread
    // exists (the documented precondition of changing the environment).
    let fds: Vec<RawFd> = unsafe { sd_notify::listen_fds_and_unset_env() }
        .context("systemd passed unreadable socket activation variables (LISTEN_PID, LISTEN_FDS); check latchkey.socket")?
        .collect();
    let Some(&fd) = fds.first() else {
        return Ok(None);
    };
    let name = names.split(':').next().unwrap_or_default();
    if fds.len() > 1 {
        tracing::warn!(
            count = fds.len(),
            "systemd passed more than one socket; serving the first ({name}) and closing the rest: latchkey.socket needs one ListenStream="
        );
        for &extra in &fds[1..] {
            // SAFETY: systemd passed these descriptors to us; nothing else owns them.
            drop(unsafe { OwnedFd::from_raw_fd(extra) });
        }
    }
    // SAFETY: fd 3 (the first passed) is ours from systemd and owned by
    // nothing else in this process.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    check_socket(&fd)?;
    let listener = UnixListener::from(fd);
    let addr = listener
        .local_addr()
        .context("cannot read the address of the socket systemd passed")?;
    let Some(path) = addr.as_pathname().map(Path::to_path_buf) else {
        bail!("the socket systemd passed has no file path (abstract or unnamed); set ListenStream=%t/latchkey/latchkey.sock in latchkey.socket");
    };
    Ok(Some(Inherited {
        fd: listener.into(),
        path,
    }))
}

/// The passed descriptor must be what the daemon would have bound itself:
/// an `AF_UNIX` `SOCK_STREAM` socket that listens.
fn check_socket(fd: &OwnedFd) -> anyhow::Result<()> {
    let domain = sockopt(fd, libc::SO_DOMAIN)
        .context("the descriptor systemd passed (fd 3) is not a socket; check latchkey.socket")?;
    if domain != libc::AF_UNIX {
        let what = match domain {
            libc::AF_INET | libc::AF_INET6 => "a TCP/IP socket",
            _ => "not a Unix socket",
        };
        bail!("the socket systemd passed (fd 3) is {what}; latchkeyd serves only a local Unix socket: set ListenStream=%t/latchkey/latchkey.sock (a path, not a port) in latchkey.socket");
    }
    if sockopt(fd, libc::SO_TYPE)? != libc::SOCK_STREAM {
        bail!("the socket systemd passed (fd 3) is not a stream socket; use ListenStream= (not ListenDatagram= or ListenSequentialPacket=) in latchkey.socket");
    }
    if sockopt(fd, libc::SO_ACCEPTCONN)? != 1 {
        bail!("the socket systemd passed (fd 3) is not listening; use ListenStream= with Accept=no in latchkey.socket");
    }
    Ok(())
}

fn sockopt(fd: &OwnedFd, option: libc::c_int) -> anyhow::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(value)
}

/// The socket file systemd created must be ours and private, as the one
/// the daemon binds is: another owner is refused, a wider mode narrowed to
/// 0600 (its directory was already checked to be ours, 0700).
pub fn check_socket_file(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot inspect the socket {}", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        bail!(
            "the socket {} systemd passed belongs to uid {}, not to us ({uid}); run latchkey.socket as a user unit (systemctl --user)",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(
            socket = %path.display(),
            "the passed socket was mode {:o}; made 0600 (set SocketMode=0600 in latchkey.socket)",
            meta.mode() & 0o777
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("failed to make {} private", path.display()))?;
    }
    Ok(())
}

/// Tells the service manager `state` (`READY=1`, `STOPPING=1`) if it asked
/// to be told (`NOTIFY_SOCKET`: a path, or `@name` for an abstract socket).
/// A failure is logged, never fatal: the daemon serves either way.
///
/// Not `sd_notify::notify`: its 0.5 connects to `NOTIFY_SOCKET` as a path
/// only, and systemd gives user services an abstract `@` socket as often.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notice(&socket, state) {
        tracing::warn!(
            "cannot tell the service manager {state} (NOTIFY_SOCKET {}): {e}",
            socket.to_string_lossy()
        );
    }
}

fn send_notice(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => abstract_addr(name)?,
        None => SocketAddr::from_pathname(Path::new(socket))?,
    };
    let datagram = UnixDatagram::unbound()?;
    datagram.connect_addr(&addr)?;
    datagram.send(format!("{state}\n").as_bytes())?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_socket_is_refused_with_the_fix() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let fd = OwnedFd::from(tcp);
        let e = check_socket(&fd).expect_err("refused").to_string();
        assert!(e.contains("TCP/IP socket"), "{e}");
        assert!(e.contains("ListenStream=%t/latchkey/latchkey.sock"), "{e}");
    }

    #[test]
    fn a_listening_unix_stream_socket_passes_and_a_datagram_does_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = UnixListener::bind(dir.path().join("s")).expect("bind");
        check_socket(&OwnedFd::from(listener)).expect("a listening Unix stream socket");
        let datagram = UnixDatagram::bind(dir.path().join("d")).expect("bind");
        let e = check_socket(&OwnedFd::from(datagram))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("not a stream socket"), "{e}");
    }

    #[test]
    fn notices_reach_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        send_notice(path.as_os_str(), "READY=1").expect("sent");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1\n");
        #[cfg(target_os = "linux")]
        {
            let name = format!("latchkey-test-{}", std::process::id());
            let receiver = UnixDatagram::bind_addr(&abstract_addr(name.as_bytes()).expect("addr"))
                .expect("bind abstract");
            send_notice(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").expect("sent");
            let n = receiver.recv(&mut buf).expect("received");
            assert_eq!(&buf[..n], b"STOPPING=1\n");
        }
    }
}
