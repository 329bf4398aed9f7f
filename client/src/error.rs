//! The client's error type.

use crate::protocol::{ErrorKind, RpcError};
use std::path::PathBuf;

/// Everything a call to the daemon can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached (daemon not running, wrong path).
    #[error("cannot reach the latchkey daemon at {}: {source}; start it with `latchkey daemon start`", path.display())]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed after it was made.
    #[error("lost the connection to the latchkey daemon: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered with an error.
    #[error("{message}")]
    Daemon {
        /// Stable machine kind.
        kind: ErrorKind,
        /// Human message naming the fix.
        message: String,
        /// Seconds after which a retry makes sense.
        retry_after: Option<u64>,
    },
    /// The socket's directory or the process listening on the socket is not
    /// provably ours (another user may pose as the daemon): nothing was sent.
    #[error("{0}")]
    Untrusted(#[from] crate::trust::Untrusted),
    /// The daemon answered something this client cannot understand.
    #[error("unexpected reply from the latchkey daemon: {0}")]
    Protocol(String),
}

impl Error {
    /// The daemon's error kind, when the daemon answered with an error.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Daemon { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Self {
        Error::Daemon {
            kind: e.data.kind,
            message: e.message,
            retry_after: e.data.retry_after,
        }
    }
}
