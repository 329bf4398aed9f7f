//! Who is behind a proxied connection. For TCP the kernel's socket table
//! (`/proc/net/tcp`, `/proc/net/tcp6`) says which uid owns the app's end
//! (the socket whose local address is the connection's source and whose
//! remote address is our listener), and its inode; the process holding
//! that inode (found in `/proc/PID/fd` of our user's processes) is then
//! identified as for the main socket. For a Unix socket the peer
//! credentials say it, as for the main socket. Any other uid is refused.

use crate::identity::{self, Caller, Process};
use crate::state::{Daemon, Peer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

/// 4096: processes looked at at most for a socket's owner (a desktop
/// session has a few hundred of ours).
const MAX_PROCESSES: usize = 4096;
/// 4096: descriptors looked at at most per process.
const MAX_FDS: usize = 4096;

/// Why a connection is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Owned by another user.
    Uid(u32),
    /// No owner could be found (it closed, or it is not in our tables).
    Unknown,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Uid(uid) => write!(f, "uid {uid}"),
            Refused::Unknown => f.write_str("owner unknown"),
        }
    }
}

/// The peer of a TCP connection from `source` to our `listener` address,
/// if it is a process of `our_uid`. Reads `/proc`: call off the async
/// workers.
pub fn tcp(
    daemon: &Daemon,
    source: SocketAddr,
    listener: SocketAddr,
    our_uid: u32,
) -> Result<Peer, Refused> {
    let (uid, inode) = tcp_owner(source, listener).ok_or(Refused::Unknown)?;
    if uid != our_uid {
        return Err(Refused::Uid(uid));
    }
    let process = match pid_of_socket(inode, our_uid) {
        Some(pid) => {
            let pidfd = identity::pidfd_open(pid);
            daemon.identities.resolve(pid, pidfd.as_ref())
        }
        None => Process::unknown(0, "its socket's process was not found"),
    };
    Ok(Peer {
        pid: process.pid,
        caller: Arc::new(Caller::new(process)),
    })
}

/// The peer of a Unix-socket connection, if it is a process of `our_uid`
/// (its credentials and pidfd from the socket, as `server.rs` takes them).
pub fn unix(
    daemon: &Daemon,
    stream: &tokio::net::UnixStream,
    our_uid: u32,
) -> Result<(u32, Option<OwnedFd>), Refused> {
    let _ = daemon;
    let creds = stream.peer_cred().map_err(|_| Refused::Unknown)?;
    if creds.uid() != our_uid {
        return Err(Refused::Uid(creds.uid()));
    }
    let pid = creds.pid().map_or(0, |p| p as u32);
    let pidfd = identity::peer_pidfd(stream.as_fd()).or_else(|| identity::pidfd_open(pid));
    Ok((pid, pidfd))
}

/// The process behind `pid` as a peer. Reads `/proc` and maybe hashes an
/// executable: call off the async workers.
pub fn resolve(daemon: &Daemon, pid: u32, pidfd: Option<&OwnedFd>) -> Peer {
    let process = daemon.identities.resolve(pid, pidfd);
    Peer {
        pid,
        caller: Arc::new(Caller::new(process)),
    }
}

/// Owner uid and inode of the socket whose local end is `source` and
/// remote end `listener`, from the kernel's TCP tables.
fn tcp_owner(source: SocketAddr, listener: SocketAddr) -> Option<(u32, u64)> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            find_in_table(&text, source, listener)
        })
}

/// The row of a `/proc/net/tcp`-format table for (`local`, `remote`):
/// its uid and inode. A row with inode 0 (a socket no process holds any
/// more) answers nothing.
fn find_in_table(text: &str, local: SocketAddr, remote: SocketAddr) -> Option<(u32, u64)> {
    let (local, remote) = (plain(local), plain(remote));
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
        if fields.len() < 10 {
            return None;
        }
        if parse_addr(fields[1])? != local || parse_addr(fields[2])? != remote {
            return None;
        }
        let uid = fields[7].parse().ok()?;
        let inode = fields[9].parse().ok().filter(|i| *i != 0)?;
        Some((uid, inode))
    })
}

/// An address as the kernel prints it: the IP as 32-bit words in host
/// byte order, hex (one for IPv4, four for IPv6), `:`, the port in hex.
fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(plain(SocketAddr::new(ip, port)))
}

/// An IPv4-mapped IPv6 address as the IPv4 one.
fn plain(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// A process of `uid` that holds the socket `inode`, from `/proc/PID/fd`.
fn pid_of_socket(inode: u64, uid: u32) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");
    let procs = std::fs::read_dir("/proc").ok()?;
    procs
        .filter_map(Result::ok)
        .take(MAX_PROCESSES)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid))
        .find(|pid| {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                return false;
            };
            fds.filter_map(Result::ok).take(MAX_FDS).any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == wanted.as_str())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_are_read_in_host_order() {
        // 127.0.0.1:8080 on a little-endian machine; ::1:443.
        let v4 = if cfg!(target_endian = "little") {
            "0100007F:1F90"
        } else {
            "7F000001:1F90"
        };
        assert_eq!(parse_addr(v4), Some("127.0.0.1:8080".parse().unwrap()));
        let one = if cfg!(target_endian = "little") {
            "01000000"
        } else {
            "00000001"
        };
        let v6 = format!("000000000000000000000000{one}:01BB");
        assert_eq!(parse_addr(&v6), Some("[::1]:443".parse().unwrap()));
        // ::ffff:127.0.0.1 is the IPv4 address.
        let mapped = if cfg!(target_endian = "little") {
            "0000000000000000FFFF00000100007F:0050"
        } else {
            "00000000000000000000FFFF7F000001:0050"
        };
        assert_eq!(parse_addr(mapped), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(parse_addr("zz:1"), None);
    }

    #[test]
    fn the_row_of_the_connection_answers() {
        let table = if cfg!(target_endian = "little") {
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
             1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0 20 4 30 10 -1\n\
             2: 0100007F:D432 0100007F:1F90 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0\n"
        } else {
            "header\n 1: 7F000001:D431 7F000001:1F90 01 0:0 0:0 0 1000 0 222\n"
        };
        let listener: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let source: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(find_in_table(table, source, listener), Some((1000, 222)));
        // Our own end of it is not the app's.
        assert_eq!(find_in_table(table, listener, source), None);
        // A socket in TIME_WAIT (inode 0) has no owner to trust.
        let closed: SocketAddr = "127.0.0.1:54322".parse().unwrap();
        assert_eq!(find_in_table(table, closed, listener), None);
    }

    #[test]
    fn our_own_connection_is_found_with_its_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(at).unwrap();
        let source = client.local_addr().unwrap();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let (owner, inode) = tcp_owner(source, at).expect("the connection is in the table");
        assert_eq!(owner, uid);
        assert_eq!(pid_of_socket(inode, uid), Some(std::process::id()));
        drop(client);
    }
}
