//! Exit codes: the numbers scripts branch on, and the mapping from an error
//! to its code. The table is repeated in `latchkey --help` and in `main.rs`;
//! the numbers never change.

use latchkey_client::ErrorKind;
use std::fmt;

/// Success.
pub const OK: u8 = 0;
/// Any error without a more specific code.
pub const OTHER: u8 = 1;
/// Bad flags (clap's own exit code) or an input the CLI cannot obtain, such
/// as a passphrase with no source and no terminal to prompt on.
pub const USAGE: u8 = 2;
/// The daemon cannot be reached, failed to start, or went away mid-call.
pub const DAEMON_UNREACHABLE: u8 = 3;
/// The vault is locked or not initialized.
pub const LOCKED: u8 = 4;
/// No such provider or credential.
pub const NOT_FOUND: u8 = 5;
/// The credential needs a new login (`reauth_required`), or a login timed out.
pub const REAUTH_REQUIRED: u8 = 6;
/// The provider is unreachable or rate-limits us: transient, retry later.
pub const PROVIDER_UNAVAILABLE: u8 = 7;
/// The provider refused the request (`provider_error`, e.g. a bad client secret).
pub const PROVIDER_REFUSED: u8 = 8;
/// The request is not allowed (e.g. scopes never granted, or the user denied a login).
pub const FORBIDDEN: u8 = 9;
/// Wrong passphrase, or the keyring is unavailable.
pub const UNLOCK_FAILED: u8 = 10;

/// The table shown after `latchkey --help`.
pub const HELP_TABLE: &str = "\
Exit codes:
   0  ok
   1  other error (panic: a credential could not be revoked at its provider)
   2  usage error (bad flags, or a secret with no source and no terminal)
   3  daemon unreachable or failed to start
   4  vault locked or not initialized
   5  not found
   6  re-authentication required: run `latchkey login NAME` (or a login timed out)
   7  provider unavailable or rate limited (transient: retry later)
   8  provider refused the request (e.g. bad client secret)
   9  forbidden (e.g. scopes not granted, or the user denied the login)
  10  wrong passphrase or keyring unavailable";

/// An error raised by the CLI itself that carries its exit code.
#[derive(Debug)]
pub struct Fail {
    /// One of the constants above.
    pub code: u8,
    /// Lowercase, names the thing and the fix. Never holds a secret.
    pub message: String,
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fail {}

/// A usage error found by the CLI (exit code 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Fail {
        code: USAGE,
        message: message.into(),
    })
}

/// The daemon could not be started or reached (exit code 3).
pub fn daemon_unreachable(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Fail {
        code: DAEMON_UNREACHABLE,
        message: message.into(),
    })
}

/// Ends the program with an exit code and no message: the output already
/// said what happened (`daemon status` of a stopped daemon), or a child's own
/// exit code is passed on.
#[derive(Debug)]
pub struct Silent(pub u8);

impl fmt::Display for Silent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Silent {}

/// Writing to stdout failed because the reader went away: not an error, the
/// process exits 0 quietly (as `head` expects).
#[derive(Debug)]
pub struct BrokenPipe;

impl fmt::Display for BrokenPipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for BrokenPipe {}

/// The exit code for an error kind the daemon sent.
pub fn for_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Locked | ErrorKind::NotInitialized => LOCKED,
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::ReauthRequired => REAUTH_REQUIRED,
        ErrorKind::ProviderUnavailable | ErrorKind::RateLimited => PROVIDER_UNAVAILABLE,
        ErrorKind::ProviderError => PROVIDER_REFUSED,
        ErrorKind::Forbidden => FORBIDDEN,
        ErrorKind::WrongPassphrase | ErrorKind::KeyringUnavailable => UNLOCK_FAILED,
        // A daemon that is going away is, to the caller, one it cannot reach.
        ErrorKind::ShuttingDown => DAEMON_UNREACHABLE,
        _ => OTHER,
    }
}

/// The exit code for a client error.
pub fn for_client_error(err: &latchkey_client::Error) -> u8 {
    match err {
        latchkey_client::Error::Connect { .. } | latchkey_client::Error::Io(_) => {
            DAEMON_UNREACHABLE
        }
        latchkey_client::Error::Daemon { kind, .. } => for_kind(*kind),
        _ => OTHER,
    }
}

/// The exit code for any error a command returned. `anyhow` finds the typed
/// error under any number of `.context(…)` layers.
pub fn for_error(err: &anyhow::Error) -> u8 {
    if let Some(fail) = err.downcast_ref::<Fail>() {
        fail.code
    } else if let Some(Silent(code)) = err.downcast_ref::<Silent>() {
        *code
    } else if let Some(client) = err.downcast_ref::<latchkey_client::Error>() {
        for_client_error(client)
    } else {
        OTHER
    }
}

/// True when the error only means stdout's reader went away.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<BrokenPipe>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn daemon(kind: ErrorKind) -> latchkey_client::Error {
        latchkey_client::Error::Daemon {
            kind,
            message: "m".into(),
            retry_after: None,
        }
    }

    #[test]
    fn daemon_kinds_map_to_the_documented_codes() {
        let table = [
            (ErrorKind::Locked, 4),
            (ErrorKind::NotInitialized, 4),
            (ErrorKind::NotFound, 5),
            (ErrorKind::ReauthRequired, 6),
            (ErrorKind::ProviderUnavailable, 7),
            (ErrorKind::RateLimited, 7),
            (ErrorKind::ProviderError, 8),
            (ErrorKind::Forbidden, 9),
            (ErrorKind::WrongPassphrase, 10),
            (ErrorKind::KeyringUnavailable, 10),
            (ErrorKind::ShuttingDown, 3),
            (ErrorKind::AlreadyExists, 1),
            (ErrorKind::AlreadyInitialized, 1),
            (ErrorKind::InvalidParams, 1),
            (ErrorKind::VaultCorrupt, 1),
            (ErrorKind::Internal, 1),
            (ErrorKind::Unknown, 1),
        ];
        for (kind, code) in table {
            assert_eq!(for_kind(kind), code, "{kind}");
            let err = anyhow::Error::new(daemon(kind)).context("failed to do a thing");
            assert_eq!(for_error(&err), code, "{kind} under context");
        }
    }

    #[test]
    fn transport_and_cli_errors_map_to_their_codes() {
        let connect = latchkey_client::Error::Connect {
            path: PathBuf::from("/nowhere.sock"),
            source: std::io::ErrorKind::NotFound.into(),
        };
        let io = latchkey_client::Error::Io(std::io::ErrorKind::UnexpectedEof.into());
        let protocol = latchkey_client::Error::Protocol("x".into());
        let cases: [(anyhow::Error, u8); 6] = [
            (anyhow::Error::new(connect), 3),
            (anyhow::Error::new(io), 3),
            (anyhow::Error::new(protocol), 1),
            (usage("no passphrase source").context("failed to init"), 2),
            (daemon_unreachable("latchkeyd exited"), 3),
            (anyhow::anyhow!("plain"), 1),
        ];
        for (err, code) in cases {
            assert_eq!(for_error(&err), code, "{err:#}");
        }
    }

    #[test]
    fn broken_pipe_is_recognised_under_context() {
        let err = anyhow::Error::new(BrokenPipe).context("failed to print");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
        let client_io = latchkey_client::Error::Io(std::io::ErrorKind::BrokenPipe.into());
        assert!(
            !is_broken_pipe(&anyhow::Error::new(client_io)),
            "a broken socket to the daemon is a real error"
        );
    }
}
