//! One daemon per vault: an exclusive lock on `<vault>.lock`, holding the
//! owner's pid so a second daemon can say who is running. The file is
//! opened without following a symbolic link and must be a regular file of ours.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Held for the daemon's lifetime; the OS releases the lock when the
/// process exits, however it exits.
pub struct LockFile {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another latchkeyd (pid {pid}) already serves the vault {}; use it, or stop it with `latchkey daemon stop`", vault.display())]
    Held { pid: String, vault: PathBuf },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn acquire(vault: &Path) -> Result<LockFile, LockError> {
    let mut path = vault.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    // Not through a symbolic link, and only a regular file of ours: a link
    // planted here would make us truncate and write whatever it points to.
    let mut file = latchkey_client::trust::open_own_file(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600),
        &path,
    )
    .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.into()
                },
                vault: vault.to_owned(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(LockFile { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault.db");
        let _held = acquire(&vault).unwrap();
        match acquire(&vault) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("the second lock must fail"),
        }
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let vault = dir.path().join("vault.db");
        std::os::unix::fs::symlink(&target, dir.path().join("vault.db.lock")).unwrap();
        let err = match acquire(&vault) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a lock through a symbolic link must fail"),
        };
        assert!(
            err.contains("vault.db.lock") && err.contains("symbolic link"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }
}
