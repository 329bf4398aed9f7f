//! Is it ours? The checks a client makes before it trusts the daemon at a
//! socket path, and the checks the CLI and the daemon make on the private
//! directories and secret files they use (DESIGN.md, threat model: "a fake
//! daemon").
//!
//! - The socket's directory must be a real directory (not a symbolic link,
//!   looked at with `lstat`), owned by our effective uid, with no group or
//!   other permission bits (0700): [`check_private_dir`], [`private_dir`].
//! - Once connected, the process at the other end must run as our uid
//!   (`SO_PEERCRED`): [`check_peer`].
//! - Files opened in those directories (the daemon log, the vault lock file)
//!   are opened without following a symbolic link, and must be regular files
//!   of ours: [`open_own_file`].
//! - A file holding a secret (a passphrase file, a client-secret file) must
//!   be ours and readable by nobody else, as ssh insists for a private key:
//!   [`check_secret_file`].
//!
//! Any failure is an [`Untrusted`], whose message names the path, who owns
//! it or its mode, and the fix. Nothing is sent to a server that failed.

use std::ffi::CStr;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Permission bits for group and others: none may be set on a private
/// directory or a secret file.
const GROUP_OTHER_BITS: u32 = 0o077;

/// What was not ours, and why; its message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Untrusted {
    /// The directory, socket or file that failed the check.
    pub path: PathBuf,
    /// What that path is to us.
    pub subject: Subject,
    /// Which check it failed.
    pub problem: Problem,
}

/// What a checked path is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The directory holding the daemon's socket.
    SocketDir,
    /// The daemon's socket, checked through the connection (its peer).
    Server,
    /// A file the CLI or daemon keeps in a private directory (log, lock file).
    PrivateFile,
    /// A file holding a passphrase or a client secret.
    SecretFile,
}

/// Which check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The path is a symbolic link: where it points is someone's choice.
    Symlink,
    /// A directory was expected.
    NotDirectory,
    /// A regular file was expected.
    NotRegularFile,
    /// It belongs to another user.
    Owner {
        /// Its owner's uid.
        uid: u32,
        /// Its owner's user name, when the system knows one.
        name: Option<String>,
        /// Our own effective uid.
        ours: u32,
    },
    /// Group or others have permissions on it.
    Mode {
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// The server's credentials could not be read (the OS error, as text).
    PeerUnknown(String),
}

impl Untrusted {
    fn new(path: &Path, subject: Subject, problem: Problem) -> Untrusted {
        Untrusted {
            path: path.to_owned(),
            subject,
            problem,
        }
    }

    fn describe(&self) -> String {
        let path = self.path.display();
        // The fix when the path is not ours at all: go somewhere that is.
        let elsewhere =
            "remove it, or set XDG_RUNTIME_DIR or LATCHKEY_SOCKET to a directory of your own";
        match (self.subject, &self.problem) {
            (Subject::Server, Problem::Owner { uid, name, ours }) => format!(
                "the process listening on {path} runs as {}, not as you (uid {ours}): it is not your latchkey daemon, so nothing was sent to it; {elsewhere}",
                owner(*uid, name.as_deref())
            ),
            (Subject::Server, problem) => format!(
                "cannot tell which user listens on {path} ({}), so nothing was sent to it; {elsewhere}",
                match problem {
                    Problem::PeerUnknown(why) => why.as_str(),
                    _ => "unknown peer",
                }
            ),
            (subject, Problem::Symlink) => format!(
                "{} {path} is a symbolic link, which latchkey does not follow there: {}",
                subject.noun(),
                subject.fix_not_ours()
            ),
            (subject, Problem::NotDirectory) => format!(
                "{} {path} is not a directory: {}",
                subject.noun(),
                subject.fix_not_ours()
            ),
            (subject, Problem::NotRegularFile) => format!(
                "{} {path} is not a regular file: {}",
                subject.noun(),
                subject.fix_not_ours()
            ),
            (subject, Problem::Owner { uid, name, ours }) => format!(
                "{} {path} belongs to {}, not to you (uid {ours}): another user could read or replace what is in it; {}",
                subject.noun(),
                owner(*uid, name.as_deref()),
                subject.fix_not_ours()
            ),
            (subject, Problem::Mode { mode }) => {
                let (want, chmod) = match subject {
                    Subject::SocketDir => ("0700", "700"),
                    _ => ("0600", "600"),
                };
                format!(
                    "{} {path} has mode {mode:04o}, so other users can get at it (it must be {want}): run `chmod {chmod} {path}`",
                    subject.noun()
                )
            }
            (subject, Problem::PeerUnknown(why)) => {
                format!("{} {path} cannot be checked: {why}", subject.noun())
            }
        }
    }
}

impl Subject {
    fn noun(self) -> &'static str {
        match self {
            Subject::SocketDir => "the socket directory",
            Subject::Server => "the socket",
            Subject::PrivateFile => "the file",
            Subject::SecretFile => "the secret file",
        }
    }

    fn fix_not_ours(self) -> &'static str {
        match self {
            Subject::SocketDir | Subject::Server => {
                "remove it, or set XDG_RUNTIME_DIR or LATCHKEY_SOCKET to a directory of your own"
            }
            Subject::PrivateFile => "remove it; latchkey creates it again",
            Subject::SecretFile => "put the secret in a file of your own with mode 0600",
        }
    }
}

/// "uid 65534 (nobody)", or "uid 1234" when the name is unknown.
fn owner(uid: u32, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// Our effective uid: what the kernel checks files and peers against.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The user name of `uid` from the password database, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    // 16 KiB: far above any passwd entry; getpwuid_r says ERANGE otherwise,
    // and a name we cannot look up is only left out of a message.
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids);
    // getpwuid_r only writes into it.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and the
    // buffer length is its real length.
    let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    let name = unsafe { CStr::from_ptr(entry.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

fn owner_problem(uid: u32) -> Problem {
    Problem::Owner {
        uid,
        name: user_name(uid),
        ours: euid(),
    }
}

/// Checks `dir` with `lstat`: a directory (not a symbolic link to one),
/// owned by our effective uid, mode 0700 or stricter. A missing directory is
/// an `io::ErrorKind::NotFound` error, for the caller to create or report.
pub fn check_private_dir(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    check_dir_metadata(dir, &meta).map_err(untrusted_io)
}

fn check_dir_metadata(dir: &Path, meta: &Metadata) -> Result<(), Untrusted> {
    let fail = |problem| Err(Untrusted::new(dir, Subject::SocketDir, problem));
    if meta.file_type().is_symlink() {
        return fail(Problem::Symlink);
    }
    if !meta.is_dir() {
        return fail(Problem::NotDirectory);
    }
    if meta.uid() != euid() {
        return fail(owner_problem(meta.uid()));
    }
    if meta.mode() & GROUP_OTHER_BITS != 0 {
        return fail(Problem::Mode {
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Makes `dir` exist (missing parents too) with mode 0700, then checks it
/// with [`check_private_dir`]. A directory that already existed, or that
/// someone else created first, must pass the same check: it is refused, never
/// taken over or re-chmodded.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        // A symbolic link to a directory makes `create` succeed; one to
        // nothing or to a file fails here: the check below says which.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_private_dir(dir)
}

/// The directory that holds `socket` (`.` for a bare file name).
pub fn socket_dir(socket: &Path) -> &Path {
    match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Checks the uid of the process at the other end of a connection to
/// `socket`: it must be our own effective uid.
pub fn check_peer(socket: &Path, peer_uid: io::Result<Option<u32>>) -> Result<(), Untrusted> {
    let fail = |problem| Err(Untrusted::new(socket, Subject::Server, problem));
    match peer_uid {
        Ok(Some(uid)) if uid == euid() => Ok(()),
        Ok(Some(uid)) => fail(owner_problem(uid)),
        Ok(None) => fail(Problem::PeerUnknown(
            "this system does not report a socket peer's uid".into(),
        )),
        Err(e) => fail(Problem::PeerUnknown(e.to_string())),
    }
}

/// Opens `path` with `options` without following a symbolic link at its
/// last component (`O_NOFOLLOW`), and checks that what was opened is a
/// regular file owned by us. For files in a private directory (the daemon
/// log, the lock file). A refusal is an `io::ErrorKind::PermissionDenied`
/// error wrapping an [`Untrusted`].
pub fn open_own_file(options: &OpenOptions, path: &Path) -> io::Result<File> {
    let mut options = options.clone();
    options.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    let file = match options.open(path) {
        Ok(file) => file,
        // O_NOFOLLOW on a symbolic link fails with ELOOP.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(untrusted_io(Untrusted::new(
                path,
                Subject::PrivateFile,
                Problem::Symlink,
            )))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let fail = |problem| {
        Err(untrusted_io(Untrusted::new(
            path,
            Subject::PrivateFile,
            problem,
        )))
    };
    if !meta.is_file() {
        return fail(Problem::NotRegularFile);
    }
    if meta.uid() != euid() {
        return fail(owner_problem(meta.uid()));
    }
    Ok(file)
}

/// Checks an opened file that holds a secret, by its own metadata (`fstat`:
/// what was opened is what is checked). A regular file must be ours with no
/// group or other permission bits, the rule ssh applies to a private key. A
/// pipe or terminal (`--passphrase-file <(pass show vault)`, `/dev/stdin`)
/// is not a file lying on a disk and is accepted as it is.
pub fn check_secret_file(file: &File, path: &Path) -> Result<(), Untrusted> {
    let meta = file.metadata().map_err(|e| {
        Untrusted::new(
            path,
            Subject::SecretFile,
            Problem::PeerUnknown(e.to_string()),
        )
    })?;
    check_secret_metadata(path, &meta)
}

fn check_secret_metadata(path: &Path, meta: &Metadata) -> Result<(), Untrusted> {
    let file_type = meta.file_type();
    if !file_type.is_file() {
        return if file_type.is_fifo() || file_type.is_char_device() || file_type.is_socket() {
            Ok(())
        } else {
            Err(Untrusted::new(
                path,
                Subject::SecretFile,
                Problem::NotRegularFile,
            ))
        };
    }
    if meta.uid() != euid() {
        return Err(Untrusted::new(
            path,
            Subject::SecretFile,
            owner_problem(meta.uid()),
        ));
    }
    if meta.mode() & GROUP_OTHER_BITS != 0 {
        return Err(Untrusted::new(
            path,
            Subject::SecretFile,
            Problem::Mode {
                mode: meta.mode() & 0o7777,
            },
        ));
    }
    Ok(())
}

/// An [`Untrusted`] as an `io::Error` (kind `PermissionDenied`), for the
/// functions that otherwise fail with I/O errors; `get_ref` gives it back.
fn untrusted_io(untrusted: Untrusted) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, untrusted)
}

/// The [`Untrusted`] inside an error from [`check_private_dir`],
/// [`private_dir`] or [`open_own_file`], if that is why it failed.
pub fn as_untrusted(err: &io::Error) -> Option<&Untrusted> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<Untrusted>())
}

/// The check before connecting to `socket`: its directory must pass
/// [`check_private_dir`]. A missing or unreadable directory means nothing
/// listens there: a [`crate::Error::Connect`], so the CLI may start a daemon.
pub(crate) fn before_connect(socket: &Path) -> Result<(), crate::Error> {
    check_private_dir(socket_dir(socket)).map_err(|err| match as_untrusted(&err) {
        Some(untrusted) => crate::Error::Untrusted(untrusted.clone()),
        None => crate::Error::Connect {
            path: socket.to_owned(),
            source: err,
        },
    })
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A fresh 0700 directory of ours under the temp dir.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "latchkey-client-trust-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn problem(err: io::Error) -> Problem {
        as_untrusted(&err)
            .unwrap_or_else(|| panic!("not an untrusted error: {err}"))
            .problem
            .clone()
    }

    #[test]
    fn private_dirs_must_be_real_ours_and_0700() {
        let root = scratch("dirs");
        let good = root.join("good");
        private_dir(&good).unwrap();
        check_private_dir(&good).unwrap();
        assert_eq!(
            std::fs::metadata(&good).unwrap().mode() & 0o777,
            0o700,
            "created 0700"
        );

        let loose = root.join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = private_dir(&loose).unwrap_err();
        assert!(err.to_string().contains("chmod 700"), "{err}");
        assert_eq!(problem(err), Problem::Mode { mode: 0o755 });
        assert_eq!(
            std::fs::metadata(&loose).unwrap().mode() & 0o777,
            0o755,
            "refused, not re-chmodded"
        );

        let link = root.join("link");
        symlink(&good, &link).unwrap();
        assert_eq!(problem(private_dir(&link).unwrap_err()), Problem::Symlink);
        assert_eq!(
            problem(check_private_dir(&link).unwrap_err()),
            Problem::Symlink
        );

        let file = root.join("file");
        std::fs::write(&file, "").unwrap();
        assert_eq!(
            problem(check_private_dir(&file).unwrap_err()),
            Problem::NotDirectory
        );
        assert_eq!(
            check_private_dir(&root.join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn peers_must_run_as_us() {
        let sock = Path::new("/run/x/latchkey.sock");
        check_peer(sock, Ok(Some(euid()))).unwrap();
        let other = if euid() == 65534 { 65533 } else { 65534 };
        let err = check_peer(sock, Ok(Some(other))).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/run/x/latchkey.sock"), "{message}");
        assert!(message.contains(&format!("uid {other}")), "{message}");
        assert!(message.contains("nothing was sent"), "{message}");
        assert!(check_peer(sock, Ok(None)).is_err());
        assert!(check_peer(sock, Err(io::ErrorKind::Other.into())).is_err());
    }

    #[test]
    fn messages_name_the_owner_by_name_when_known() {
        // uid 0 is root on every Unix.
        assert_eq!(user_name(0).as_deref(), Some("root"));
        let err = Untrusted::new(
            Path::new("/tmp/latchkey-0"),
            Subject::SocketDir,
            Problem::Owner {
                uid: 65534,
                name: Some("nobody".into()),
                ours: 0,
            },
        );
        assert_eq!(
            err.to_string(),
            "the socket directory /tmp/latchkey-0 belongs to uid 65534 (nobody), not to you (uid 0): another user could read or replace what is in it; remove it, or set XDG_RUNTIME_DIR or LATCHKEY_SOCKET to a directory of your own"
        );
    }

    #[test]
    fn own_files_are_opened_without_following_links() {
        let root = scratch("files");
        let target = root.join("target");
        std::fs::write(&target, "untouched").unwrap();
        let link = root.join("latchkeyd.log");
        symlink(&target, &link).unwrap();
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        let err = open_own_file(&options, &link).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");

        let real = root.join("real.log");
        open_own_file(&options, &real).unwrap();
        assert!(real.is_file());
        let err = open_own_file(&OpenOptions::new().read(true).clone(), &root).unwrap_err();
        assert_eq!(problem(err), Problem::NotRegularFile);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn secret_files_must_be_ours_and_private() {
        let root = scratch("secrets");
        let path = root.join("passphrase");
        std::fs::write(&path, "pw").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o644, false),
            (0o604, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let file = File::open(&path).unwrap();
            let got = check_secret_file(&file, &path);
            assert_eq!(got.is_ok(), ok, "mode {mode:o}: {got:?}");
            if let Err(err) = got {
                let message = err.to_string();
                assert!(
                    message.contains(&format!("run `chmod 600 {}`", path.display())),
                    "{message}"
                );
            }
        }
        // A device (and so a pipe, `<(command)`) is not a file on a disk: accepted.
        let null = File::open("/dev/null").unwrap();
        check_secret_file(&null, Path::new("/dev/null")).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
