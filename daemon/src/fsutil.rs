//! The vault's directory: created 0700 when missing; an existing one is
//! checked, never changed.

use secrecy::SecretString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

/// Makes `dir` (and missing parents) exist with mode 0700. A directory that
/// already exists must be ours and writable by no one else — someone who
/// can write it could swap our files — and is otherwise refused with the
/// fix; it is never re-chmodded. (It used to be tightened to 0700, which
/// for a vault named in a shared directory — `/tmp/v.db` run as root, or
/// `~/v.db` — changed the permissions of that whole directory.) Unlike the
/// socket's directory, it may be readable by others: the vault file is
/// 0600, and a home directory is often 0755.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to us (uid {uid}); choose another directory",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by other users (mode {:o}), who could replace the vault: run `chmod go-w {}` or choose another directory",
                dir.display(),
                meta.mode() & 0o7777,
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// The file this process's stderr (its log) is written to: the daemon
/// started by the CLI logs to a file, a foreground one to a terminal, a
/// pipe or the journal, and then there is none. Found once, from fd 2
/// itself (a regular file, its path through `/proc/self/fd/2`).
pub fn log_file() -> Option<&'static Path> {
    static LOG: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        use std::os::fd::AsFd;
        let stderr = io::stderr();
        let file = std::fs::File::from(stderr.as_fd().try_clone_to_owned().ok()?);
        if !file.metadata().ok()?.file_type().is_file() {
            return None;
        }
        let path = std::fs::read_link("/proc/self/fd/2").ok()?;
        // A deleted file reads as "PATH (deleted)": nothing to point at.
        path.exists().then_some(path)
    })
    .as_deref()
}

/// A secret from a file the user named (a passphrase, a database
/// password): ours and readable by nobody else, as the CLI insists too;
/// one trailing newline dropped. Errors name the file, never its content.
pub fn read_secret_file(path: &Path, what: &str) -> Result<SecretString, String> {
    use std::io::Read;
    let cannot =
        |e: &dyn std::fmt::Display| format!("cannot read the {what} {}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    latchkey_client::trust::check_secret_file(&file, path).map_err(|e| cannot(&e))?;
    let mut text = zeroize::Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(|e| cannot(&e))?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(SecretString::from(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(dir: &Path) -> u32 {
        std::fs::metadata(dir).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_missing_directory_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn an_existing_directory_is_checked_never_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("home");
        std::fs::create_dir(&dir).unwrap();
        // Readable by others, as home directories often are: used as it is.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o755);
        // Writable by others (a shared /tmp is 1777): refused, left alone.
        for loose in [0o777, 0o1777, 0o775] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(loose)).unwrap();
            let err = private_dir(&dir).unwrap_err();
            assert!(err.to_string().contains("chmod go-w"), "{err}");
            assert_eq!(mode(&dir), loose);
        }
    }
}
