//! Who is asking: the program on the other end of a connection, as the
//! daemon finds it from the socket's peer credentials — never as the
//! caller declares it (DESIGN.md, threat model).
//!
//! From the peer's pid: its executable (`/proc/PID/exe`, opened, so the
//! file hashed is the one running even if the path was replaced) and that
//! file's SHA-256, cached by device, inode, size, mtime and ctime; its
//! systemd unit (from its cgroup); its terminal session. The pid is pinned
//! by a pidfd taken from the socket itself (`SO_PEERPIDFD`), and the
//! process must still be alive once everything was read: a pid that exited
//! and was reused meanwhile cannot pass for another program.
//!
//! When the peer is the `latchkey` CLI itself, the program that ran it is
//! the caller (its parent, checked the same way), because "latchkey" says
//! nothing about who wants the token. Interpreters are told apart by app
//! keys (`policy.rs`), not here.

use crate::sync::lock;
use latchkey_client::protocol::{AppInfo, AppKind, ProcessInfo};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use std::any::Any;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// How many ancestors are shown at most (up to the session leader).
const MAX_CHAIN: usize = 16;
/// Executables hashed at most: a bound on the cache (an entry is ~100 B).
const MAX_CACHED_HASHES: usize = 4096;

/// An app as the daemon verified it: what rules name and rows record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppId {
    /// A program, by the path it runs from and the hash of that file.
    Exe { path: String, sha256: [u8; 32] },
    /// An app that presented the key of this name (`latchkey app add`).
    Key { name: String },
    /// The program could not be identified (it exited, or its executable
    /// is unreadable): no rule ever matches it.
    Unknown { why: &'static str },
}

impl AppId {
    /// The stable name rules and rate limits use: `exe:/usr/bin/curl`,
    /// `key:ci`, `unknown`.
    pub fn key(&self) -> String {
        match self {
            AppId::Exe { path, .. } => format!("exe:{path}"),
            AppId::Key { name } => format!("key:{name}"),
            AppId::Unknown { .. } => "unknown".into(),
        }
    }

    /// What a person reads: the path and a hash prefix, or the key's name.
    pub fn label(&self) -> String {
        match self {
            AppId::Exe { path, sha256 } => {
                format!("{path} (sha256 {})", hex::encode(&sha256[..8]))
            }
            AppId::Key { name } => format!("app key '{name}'"),
            AppId::Unknown { why } => format!("unidentified program ({why})"),
        }
    }
}

/// One process of a caller's parent chain, for people to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    /// Its executable's path, when readable.
    pub exe: Option<String>,
}

/// The terminal session a process belongs to: its session id and the
/// leader's start time (a session id alone can be reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TermSession {
    pub sid: u32,
    pub leader_start: u64,
    /// The controlling terminal's device number (0: none).
    pub tty: u32,
}

/// Everything known about the program behind a connection.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub app: AppId,
    /// The programs above it, nearest first, up to the session leader.
    pub chain: Vec<Ancestor>,
    /// Its systemd unit (`foo.service`, `app-….scope`), when it has one.
    pub unit: Option<String>,
    pub session: Option<TermSession>,
    /// Whether the connection came from the `latchkey` CLI, which ran on
    /// this program's behalf.
    pub via_cli: bool,
}

impl Process {
    pub fn unknown(pid: u32, why: &'static str) -> Process {
        Process {
            pid,
            app: AppId::Unknown { why },
            chain: Vec::new(),
            unit: None,
            session: None,
            via_cli: false,
        }
    }
}

/// The connection's caller: the process found at connect, and the app key
/// it may present (`hello`), which then names it instead.
pub struct Caller {
    pub pid: u32,
    pub process: Process,
    /// Set once when the app key it presented was verified.
    by_key: OnceLock<AppId>,
    /// What became of a presented key: see [`KeyState`].
    key_state: AtomicU8,
    /// A key presented while the vault was locked, checked at the first
    /// call after the unlock.
    pending_key: Mutex<Option<SecretString>>,
    /// A first-issuance key for the audit log: a hash of who it is.
    issue_key: AtomicU64,
    /// What this connection attached as (an approver), dropped with it.
    attachment: OnceLock<Box<dyn Any + Send + Sync>>,
    /// Whether this connection proved a person is behind it (the vault
    /// passphrase): later calls that need a proof need no second one.
    proven: AtomicBool,
}

/// What became of the app key a caller presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// It presented none.
    None = 0,
    /// Presented while locked; not checked yet.
    Pending = 1,
    /// Checked: the caller is that key's app.
    Verified = 2,
    /// Not a key of this vault: every later call is refused.
    Refused = 3,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("pid", &self.pid)
            .field("app", self.app())
            .finish()
    }
}

impl Caller {
    pub fn new(process: Process) -> Caller {
        let issue_key = hash_of(&process.app);
        Caller {
            pid: process.pid,
            process,
            by_key: OnceLock::new(),
            key_state: AtomicU8::new(KeyState::None as u8),
            pending_key: Mutex::new(None),
            issue_key: AtomicU64::new(issue_key),
            attachment: OnceLock::new(),
            proven: AtomicBool::new(false),
        }
    }

    /// A caller nobody looked up (in-process tests, the daemon itself).
    pub fn unidentified(pid: u32) -> Caller {
        Caller::new(Process::unknown(pid, "not looked up"))
    }

    /// Who the caller is: its app key's name once it presented one, else
    /// the program found from its pid.
    pub fn app(&self) -> &AppId {
        self.by_key.get().unwrap_or(&self.process.app)
    }

    /// A number that differs between apps (for "first issuance to each
    /// app" in the audit log).
    pub fn issue_key(&self) -> u64 {
        self.issue_key.load(Ordering::Relaxed)
    }

    pub fn key_state(&self) -> KeyState {
        match self.key_state.load(Ordering::Acquire) {
            1 => KeyState::Pending,
            2 => KeyState::Verified,
            3 => KeyState::Refused,
            _ => KeyState::None,
        }
    }

    /// Keeps a key presented while the vault is locked, for later.
    pub fn defer_key(&self, key: SecretString) {
        *lock(&self.pending_key) = Some(key);
        self.key_state
            .store(KeyState::Pending as u8, Ordering::Release);
    }

    /// The key kept by [`Caller::defer_key`], taken.
    pub fn take_pending_key(&self) -> Option<SecretString> {
        lock(&self.pending_key).take()
    }

    /// Names this connection by a verified app key. False if it already
    /// has an identity by key (a connection has one).
    pub fn set_key(&self, name: String) -> bool {
        let app = AppId::Key { name };
        let hash = hash_of(&app);
        if self.by_key.set(app).is_err() {
            return false;
        }
        self.issue_key.store(hash, Ordering::Relaxed);
        self.key_state
            .store(KeyState::Verified as u8, Ordering::Release);
        true
    }

    pub fn proven(&self) -> bool {
        self.proven.load(Ordering::Acquire)
    }

    pub fn set_proven(&self) {
        self.proven.store(true, Ordering::Release);
    }

    /// Marks the presented key as not this vault's.
    pub fn refuse_key(&self) {
        self.key_state
            .store(KeyState::Refused as u8, Ordering::Release);
    }

    /// Attaches `what` to the connection for as long as it lasts; false if
    /// something is attached already.
    pub fn attach(&self, what: Box<dyn Any + Send + Sync>) -> bool {
        self.attachment.set(what).is_ok()
    }

    /// What is attached, if it is a `T`.
    pub fn attached<T: 'static>(&self) -> Option<&T> {
        self.attachment.get()?.downcast_ref()
    }

    /// The caller as the protocol shows it (`status`, approval prompts).
    pub fn info(&self) -> AppInfo {
        let p = &self.process;
        let (kind, name, sha256) = match self.app() {
            AppId::Exe { path, sha256 } => (AppKind::Exe, path.clone(), Some(hex::encode(sha256))),
            AppId::Key { name } => (AppKind::Key, name.clone(), None),
            AppId::Unknown { why } => (AppKind::Unknown, (*why).to_owned(), None),
        };
        AppInfo {
            kind,
            name,
            sha256,
            pid: self.pid,
            via_cli: p.via_cli,
            chain: p
                .chain
                .iter()
                .map(|a| ProcessInfo {
                    pid: a.pid,
                    exe: a.exe.clone(),
                })
                .collect(),
            unit: p.unit.clone(),
            session: p.session.map(|s| s.sid),
        }
    }
}

fn hash_of(app: &AppId) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    app.key().hash(&mut h);
    if let AppId::Exe { sha256, .. } = app {
        sha256.hash(&mut h);
    }
    h.finish()
}

/// Hashes of executables, by what identifies a file's content without
/// reading it. The ctime is in the key because a process of the user can
/// set mtime back after rewriting a file, but not ctime.
#[derive(Default)]
pub struct Hashes {
    by_file: Mutex<HashMap<FileKey, [u8; 32]>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Hashes {
    /// The SHA-256 of an open file, from the cache when its key matches;
    /// `None` if it is not cached and `cached_only`.
    fn of(&self, file: &mut File, cached_only: bool) -> std::io::Result<Option<[u8; 32]>> {
        let key = FileKey::of(&file.metadata()?);
        if let Some(hash) = lock(&self.by_file).get(&key) {
            return Ok(Some(*hash));
        }
        if cached_only {
            return Ok(None);
        }
        let hash = sha256_of(file)?;
        let mut cached = lock(&self.by_file);
        if cached.len() >= MAX_CACHED_HASHES {
            cached.clear();
        }
        cached.insert(key, hash);
        Ok(Some(hash))
    }

    /// The SHA-256 of the file at `path` now (`latchkey app allow PATH`).
    pub fn of_path(&self, path: &Path) -> std::io::Result<[u8; 32]> {
        let hash = self.of(&mut File::open(path)?, false)?;
        Ok(hash.expect("computed when not cached"))
    }
}

fn sha256_of(file: &mut impl Read) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// The peer on the other end of a connection: its pid, and who it is as
/// the daemon verified it (`identity.rs`). Cloned per request (one
/// reference count).
#[derive(Debug, Clone)]
pub struct Peer {
    pub pid: u32,
    pub caller: Arc<Caller>,
}

impl Peer {
    /// A peer nobody identified: in-process tests, the daemon's own work.
    pub fn unidentified(pid: u32) -> Peer {
        Peer {
            pid,
            caller: Arc::new(Caller::unidentified(pid)),
        }
    }

    /// Who is asking, as audit rows and prompts name it.
    pub fn label(&self) -> String {
        self.caller.app().label()
    }
}

/// What the lookup needs besides the pid: the hash cache, and which file
/// is the `latchkey` CLI (its callers are attributed to their parent).
pub struct Resolver {
    pub hashes: Hashes,
    /// The CLI's executable, when known: by default `latchkey` beside the
    /// daemon's own executable. A process runs the CLI when its executable
    /// is that very file (same device and inode): a copy elsewhere, or a
    /// program merely named `latchkey`, is identified as itself.
    cli: Option<PathBuf>,
}

impl Resolver {
    pub fn new(cli: Option<PathBuf>) -> Resolver {
        Resolver {
            hashes: Hashes::default(),
            cli,
        }
    }

    fn is_cli(&self, exe: &std::fs::Metadata) -> bool {
        self.cli
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|cli| cli.dev() == exe.dev() && cli.ino() == exe.ino())
    }

    /// Looks up the process behind `pid` (pinned by `pidfd` when the kernel
    /// gave one). Reads small `/proc` files, and an executable whose hash
    /// is not cached, whole.
    pub fn resolve(&self, pid: u32, pidfd: Option<&OwnedFd>) -> Process {
        self.lookup(pid, pidfd, false)
            .expect("a full lookup always ends")
    }

    /// [`Resolver::resolve`] if every executable it needs is hashed
    /// already (only `/proc` and a `stat` then: quick enough for an async
    /// worker); `None` otherwise.
    pub fn resolve_cached(&self, pid: u32, pidfd: Option<&OwnedFd>) -> Option<Process> {
        self.lookup(pid, pidfd, true)
    }

    fn lookup(&self, pid: u32, pidfd: Option<&OwnedFd>, cached_only: bool) -> Option<Process> {
        let unknown = |why| Some(Process::unknown(pid, why));
        let Some(stat) = Stat::read(pid) else {
            return unknown("it exited before it could be identified");
        };
        let (mut app, meta) = match exe_of(pid, &self.hashes, cached_only) {
            Ok(found) => found,
            Err(Exe::NotCached) => return None,
            Err(Exe::Unreadable(why)) => return unknown(why),
        };
        let mut at = stat;
        let mut via_cli = false;
        let mut parent_fd = None;
        if self.is_cli(&meta) {
            // The CLI: its parent is the caller, if it is still the one
            // that started it (started no later than the CLI, alive).
            via_cli = true;
            let parent = at.ppid;
            let Some(fd) = pidfd_open(parent) else {
                return unknown("the program that ran latchkey has exited");
            };
            match Stat::read(parent) {
                Some(p) if p.start <= at.start && parent > 1 => {
                    match exe_of(parent, &self.hashes, cached_only) {
                        Ok((found, _)) => app = found,
                        Err(Exe::NotCached) => return None,
                        Err(Exe::Unreadable(why)) => return unknown(why),
                    }
                    at = p;
                    parent_fd = Some(fd);
                }
                _ => return unknown("the program that ran latchkey has exited"),
            }
        }
        let chain = chain_above(&at);
        let unit = unit_of(at.pid);
        let session = session_of(&at);
        // Everything was read while the processes lived: had one exited
        // (and its pid been reused), its pidfd would say so now.
        let alive = pidfd.is_none_or(|fd| pidfd_alive(fd.as_fd()))
            && parent_fd.as_ref().is_none_or(|fd| pidfd_alive(fd.as_fd()));
        if !alive {
            return unknown("it exited while it was identified");
        }
        Some(Process {
            pid,
            app,
            chain,
            unit,
            session,
            via_cli,
        })
    }
}

/// The fields of `/proc/PID/stat` this module uses.
#[derive(Debug, Clone, Copy)]
struct Stat {
    pid: u32,
    ppid: u32,
    sid: u32,
    tty: u32,
    /// Start time in clock ticks after boot.
    start: u64,
}

impl Stat {
    fn read(pid: u32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Stat::parse(pid, &text)
    }

    /// `pid (comm) state ppid pgrp session tty_nr … starttime(22) …`; the
    /// command name may hold spaces and parentheses, so fields are counted
    /// from the last `)`.
    fn parse(pid: u32, text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        // fields[0] is field 3 (state).
        let field = |n: usize| fields.get(n - 3).copied();
        Some(Stat {
            pid,
            ppid: field(4)?.parse().ok()?,
            sid: field(6)?.parse().ok()?,
            tty: field(7)?.parse::<i64>().ok()? as u32,
            start: field(22)?.parse().ok()?,
        })
    }
}

/// Why an executable was not identified.
enum Exe {
    Unreadable(&'static str),
    /// Its hash is not cached, and only the cache was to be used.
    NotCached,
}

/// A process's executable: its path and the hash of the running file, and
/// that file's metadata.
fn exe_of(pid: u32, hashes: &Hashes, cached_only: bool) -> Result<(AppId, std::fs::Metadata), Exe> {
    let link = format!("/proc/{pid}/exe");
    let unreadable = |_| Exe::Unreadable("its executable cannot be read");
    let path = std::fs::read_link(&link).map_err(unreadable)?;
    // Opening the link opens the file the process runs, even if another
    // file has since been put at its path.
    let mut file = File::open(&link).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    let sha256 = hashes
        .of(&mut file, cached_only)
        .map_err(unreadable)?
        .ok_or(Exe::NotCached)?;
    let path = path.to_string_lossy().into_owned();
    Ok((AppId::Exe { path, sha256 }, meta))
}

/// The processes above `at`, nearest first, up to the session leader (or
/// init), each started no later than the one below it.
fn chain_above(at: &Stat) -> Vec<Ancestor> {
    let mut chain = Vec::new();
    let mut child = *at;
    while chain.len() < MAX_CHAIN && child.pid != child.sid && child.ppid > 1 {
        let Some(parent) = Stat::read(child.ppid) else {
            break;
        };
        if parent.start > child.start {
            break;
        }
        let exe = std::fs::read_link(format!("/proc/{}/exe", parent.pid))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        chain.push(Ancestor {
            pid: parent.pid,
            exe,
        });
        child = parent;
    }
    chain
}

/// The systemd unit from `/proc/PID/cgroup` (cgroup v2 `0::/…`): the last
/// path component that names a service or a scope.
fn unit_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unit_in(&text)
}

fn unit_in(cgroup: &str) -> Option<String> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

fn session_of(at: &Stat) -> Option<TermSession> {
    if at.sid == 0 {
        return None;
    }
    let leader = Stat::read(at.sid)?;
    Some(TermSession {
        sid: at.sid,
        leader_start: leader.start,
        tty: at.tty,
    })
}

/// The peer's pidfd from the socket (Linux 6.5+): it names the process
/// that connected, whatever has happened to its pid since.
pub fn peer_pidfd(socket: BorrowedFd<'_>) -> Option<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel gave us a new descriptor we now own.
    (rc == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd for `pid` as it is now (the fallback where the kernel has no
/// `SO_PEERPIDFD`, taken at accept: the window in which the peer could
/// exit and its pid be reused is then only between connect and accept).
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, and returns a descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    // SAFETY: a non-negative result is a new descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Whether the process a pidfd names has not exited.
fn pidfd_alive(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: signal 0 checks only; the other arguments may be null/0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "1234 (a (b) c) S 77 1234 60 34817 1234 4194304 1 2 3 4 5 6 7 8 20 0 1 0 987654 1000 10";
        let s = Stat::parse(1234, line).unwrap();
        assert_eq!((s.ppid, s.sid, s.tty, s.start), (77, 60, 34817, 987654));
        assert!(Stat::parse(1, "garbage").is_none());
        assert!(Stat::parse(1, "1 (x) S 2").is_none());
    }

    #[test]
    fn the_unit_is_the_last_service_or_scope_of_the_cgroup() {
        let cg = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/latchkey.service\n";
        assert_eq!(unit_in(cg).as_deref(), Some("latchkey.service"));
        let cg = "0::/user.slice/user-1000.slice/session-3.scope\n";
        assert_eq!(unit_in(cg).as_deref(), Some("session-3.scope"));
        assert_eq!(unit_in("0::/\n"), None);
        assert_eq!(unit_in("1:name=systemd:/x.service\n"), None);
    }

    #[test]
    fn this_process_is_identified_by_its_executable_and_hash() {
        let r = Resolver::new(None);
        let me = std::process::id();
        let fd = pidfd_open(me);
        let p = r.resolve(me, fd.as_ref());
        let exe = std::env::current_exe().unwrap();
        let mut f = File::open(&exe).unwrap();
        let want = sha256_of(&mut f).unwrap();
        match &p.app {
            AppId::Exe { path, sha256 } => {
                assert_eq!(Path::new(path), exe);
                assert_eq!(*sha256, want);
            }
            other => panic!("not identified: {other:?}"),
        }
        assert!(!p.via_cli);
        // Hashed once: the next lookup needs no blocking thread.
        let again = r.resolve_cached(me, fd.as_ref()).expect("cached now");
        assert_eq!(again.app, p.app);
        assert!(Resolver::new(None)
            .resolve_cached(me, fd.as_ref())
            .is_none());
    }

    #[test]
    fn a_process_that_exited_is_not_identified() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let fd = pidfd_open(pid).unwrap();
        child.wait().unwrap();
        let p = Resolver::new(None).resolve(pid, Some(&fd));
        assert!(matches!(p.app, AppId::Unknown { .. }), "{:?}", p.app);
    }

    #[test]
    fn a_changed_file_gets_a_new_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"one").unwrap();
        let h = Hashes::default();
        let first = h.of_path(&path).unwrap();
        assert_eq!(first, h.of_path(&path).unwrap());
        std::fs::write(&path, b"two").unwrap();
        assert_ne!(first, h.of_path(&path).unwrap());
    }
}
