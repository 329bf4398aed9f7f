//! What Latchkey's end-to-end tests, its benchmark and the daemon's
//! in-process tests share: an in-process OAuth token endpoint
//! ([`token_endpoint`]), a static metadata server for discovery
//! ([`metadata`]), where the built binaries are ([`bin_dir`]), and
//! callers released at the same moment ([`burst()`]).
//!
//! It must not depend on `latchkey-daemon`: the daemon dev-depends on it.

pub mod burst;
pub mod metadata;
pub mod token_endpoint;

pub use burst::burst;

use std::path::PathBuf;

/// Where `latchkey` and `latchkeyd` are: `$LATCHKEY_BIN_DIR` when set (and
/// not empty), else the cargo target profile directory the running
/// executable was built into — `target/<profile>` for a binary such as
/// the bench, and the same for a test, whose executable is one level down
/// in `target/<profile>/deps`. Does not check that the binaries are there.
pub fn bin_dir() -> std::io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LATCHKEY_BIN_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| std::io::Error::other("the running executable is in no directory"))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    Ok(dir.to_path_buf())
}
