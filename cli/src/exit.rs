//! Exit codes: the numbers scripts branch on, the one table of what each
//! means ([`EXIT_CODES`], printed by `latchkey --help`), and the mapping
//! from an error to its code. The numbers never change.

use latchkey_client::ErrorKind;
use std::fmt;

/// Success.
pub const OK: u8 = 0;
/// Any error without a more specific code.
pub const OTHER: u8 = 1;
/// Bad flags (clap's own exit code) or an input the CLI cannot obtain, such
/// as a passphrase with no source and no terminal to prompt on; or a new
/// passphrase the daemon refused as too weak.
pub const USAGE: u8 = 2;
/// The daemon cannot be reached, failed to start, or went away mid-call; or
/// what listens on the socket is not provably ours, so nothing was sent.
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
/// The credential asks before an app may use it, and nobody could be
/// asked (`approval_required`): add a rule with `latchkey app allow`.
pub const APPROVAL_REQUIRED: u8 = 11;
/// The user (or a stored rule) denied this app the credential.
pub const APPROVAL_DENIED: u8 = 12;
/// The credential needs a fresh step-up confirmation: `latchkey confirm NAME`.
pub const STEP_UP_REQUIRED: u8 = 13;

/// Every exit code and what it means, in order: the one list `latchkey
/// --help` prints ([`help_table`]) and the tests hold the mapping to.
pub const EXIT_CODES: &[(u8, &str)] = &[
    (OK, "ok"),
    (
        OTHER,
        "other error (panic: a credential could not be revoked at its provider)",
    ),
    (
        USAGE,
        "usage error (bad flags, a secret with no source and no terminal, or a new passphrase too weak)",
    ),
    (
        DAEMON_UNREACHABLE,
        "daemon unreachable or failed to start (or its socket is not yours)",
    ),
    (LOCKED, "vault locked or not initialized"),
    (NOT_FOUND, "not found"),
    (
        REAUTH_REQUIRED,
        "re-authentication required: run `latchkey login NAME` (or a login timed out)",
    ),
    (
        PROVIDER_UNAVAILABLE,
        "provider unavailable, rate limited, or vault database unavailable (transient: retry later)",
    ),
    (
        PROVIDER_REFUSED,
        "provider refused the request (e.g. bad client secret)",
    ),
    (
        FORBIDDEN,
        "forbidden (e.g. scopes not granted, or the user denied the login)",
    ),
    (UNLOCK_FAILED, "wrong passphrase or key file, or keyring unavailable"),
    (
        APPROVAL_REQUIRED,
        "approval required: no approver was reachable (add a rule with `latchkey app allow`)",
    ),
    (APPROVAL_DENIED, "approval denied for this app"),
    (
        STEP_UP_REQUIRED,
        "confirmation required (step-up): run `latchkey confirm NAME`",
    ),
];

/// The table shown after `latchkey --help`, made from [`EXIT_CODES`].
pub fn help_table() -> String {
    let mut text = String::from("Exit codes:");
    for (code, meaning) in EXIT_CODES {
        text.push_str(&format!("\n{code:>4}  {meaning}"));
    }
    text
}

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
        ErrorKind::ProviderUnavailable | ErrorKind::RateLimited | ErrorKind::VaultUnavailable => {
            PROVIDER_UNAVAILABLE
        }
        ErrorKind::ProviderError => PROVIDER_REFUSED,
        ErrorKind::Forbidden => FORBIDDEN,
        ErrorKind::ApprovalRequired => APPROVAL_REQUIRED,
        ErrorKind::ApprovalDenied => APPROVAL_DENIED,
        ErrorKind::StepUpRequired => STEP_UP_REQUIRED,
        ErrorKind::WeakPassphrase => USAGE,
        ErrorKind::WrongPassphrase | ErrorKind::KeyringUnavailable => UNLOCK_FAILED,
        // A daemon that is going away is, to the caller, one it cannot reach.
        ErrorKind::ShuttingDown => DAEMON_UNREACHABLE,
        _ => OTHER,
    }
}

/// The exit code for a client error.
pub fn for_client_error(err: &latchkey_client::Error) -> u8 {
    match err {
        // A socket that is not ours is no daemon of ours: none is reachable.
        latchkey_client::Error::Connect { .. }
        | latchkey_client::Error::Io(_)
        | latchkey_client::Error::Untrusted(_) => DAEMON_UNREACHABLE,
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

    /// The meaning [`EXIT_CODES`] gives a code.
    fn meaning(code: u8) -> &'static str {
        EXIT_CODES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, meaning)| *meaning)
            .unwrap_or_else(|| panic!("exit code {code} is not in EXIT_CODES"))
    }

    #[test]
    fn the_table_lists_each_code_once_in_order() {
        // The numbers are a stable interface: 0 to 13, none skipped.
        let codes: Vec<u8> = EXIT_CODES.iter().map(|(code, _)| *code).collect();
        assert_eq!(codes, (0..=13).collect::<Vec<u8>>());
        assert!(help_table().starts_with("Exit codes:\n   0  ok\n   1  other error"));
        assert!(help_table()
            .ends_with("\n  13  confirmation required (step-up): run `latchkey confirm NAME`"));
    }

    #[test]
    fn daemon_kinds_map_to_the_documented_codes() {
        // Each kind, with the words of its row in EXIT_CODES.
        let table = [
            (ErrorKind::Locked, "vault locked"),
            (ErrorKind::NotInitialized, "not initialized"),
            (ErrorKind::NotFound, "not found"),
            (ErrorKind::ReauthRequired, "re-authentication required"),
            (ErrorKind::ProviderUnavailable, "provider unavailable"),
            (ErrorKind::RateLimited, "rate limited"),
            (ErrorKind::VaultUnavailable, "vault database unavailable"),
            (ErrorKind::ProviderError, "provider refused"),
            (ErrorKind::Forbidden, "forbidden"),
            (ErrorKind::ApprovalRequired, "approval required"),
            (ErrorKind::ApprovalDenied, "approval denied"),
            (ErrorKind::StepUpRequired, "confirmation required"),
            (ErrorKind::WeakPassphrase, "new passphrase too weak"),
            (ErrorKind::WrongPassphrase, "wrong passphrase"),
            (ErrorKind::KeyringUnavailable, "keyring unavailable"),
            (ErrorKind::ShuttingDown, "daemon unreachable"),
            (ErrorKind::AlreadyExists, "other error"),
            (ErrorKind::AlreadyInitialized, "other error"),
            (ErrorKind::InvalidParams, "other error"),
            (ErrorKind::VaultCorrupt, "other error"),
            (ErrorKind::Internal, "other error"),
            (ErrorKind::SubjectTokenUnavailable, "other error"),
            (ErrorKind::Unknown, "other error"),
        ];
        for (kind, words) in table {
            let code = for_kind(kind);
            assert!(meaning(code).contains(words), "{kind} → {code}");
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
        let untrusted = latchkey_client::Error::Untrusted(latchkey_client::trust::Untrusted {
            path: PathBuf::from("/tmp/latchkey-0"),
            subject: latchkey_client::trust::Subject::SocketDir,
            problem: latchkey_client::trust::Problem::Symlink,
        });
        let cases: [(anyhow::Error, &str); 7] = [
            (
                anyhow::Error::new(untrusted).context("failed to connect"),
                "not yours",
            ),
            (anyhow::Error::new(connect), "daemon unreachable"),
            (anyhow::Error::new(io), "daemon unreachable"),
            (anyhow::Error::new(protocol), "other error"),
            (
                usage("no passphrase source").context("failed to init"),
                "usage error",
            ),
            (daemon_unreachable("latchkeyd exited"), "daemon unreachable"),
            (anyhow::anyhow!("plain"), "other error"),
        ];
        for (err, words) in cases {
            assert!(meaning(for_error(&err)).contains(words), "{err:#}");
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
