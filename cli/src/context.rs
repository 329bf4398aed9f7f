//! What every command shares: where the socket and vault are, how chatty to
//! be, and a [`Connection`] to the daemon — started on demand, making typed
//! calls, and re-unlocking from `$LATCHKEY_KEY_FILE` or
//! `$LATCHKEY_PASSPHRASE_FILE` when the vault auto-locked under a headless
//! caller.

use crate::output;
use crate::secret::{self, Source, KEY_FILE_ENV, PASSPHRASE_FILE_ENV};
use crate::spawn::{self, DaemonArgs};
use anyhow::{Context as _, Result};
use latchkey_client::blocking::Client;
use latchkey_client::protocol::{
    Empty, HelloResult, Status, StatusResult, UnlockParams, VaultUnlock,
};
use latchkey_client::{ErrorKind, Method};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// 5 minutes: a call waits on at most one provider round trip or one Argon2
/// run, which the daemon bounds far below this; the bound only keeps a wedged
/// daemon from hanging a script forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The global options, resolved.
pub struct Ctx {
    /// `--socket`, else `$LATCHKEY_SOCKET`, else the XDG default; absolute.
    pub socket: PathBuf,
    /// `--vault`, else `$LATCHKEY_VAULT`; `None` leaves the choice to the daemon.
    pub vault: Option<PathBuf>,
    /// `-q`: no notices on stderr and no confirmations on stdout.
    pub quiet: bool,
    /// Variables this invocation reads a secret from, kept out of a daemon
    /// it starts ([`DaemonArgs::withheld_env`]).
    pub withheld_env: Vec<String>,
}

impl Ctx {
    /// Resolves the global options. Paths are made absolute because the
    /// daemon may not share our working directory. `withheld_env` names the
    /// variables the command reads a secret from (see
    /// [`crate::secret::env_sources`]).
    pub fn new(
        socket: Option<PathBuf>,
        vault: Option<PathBuf>,
        quiet: bool,
        withheld_env: Vec<String>,
    ) -> Ctx {
        let socket = socket.unwrap_or_else(latchkey_client::socket_path);
        let vault = vault.or_else(|| {
            std::env::var_os(latchkey_client::VAULT_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        Ctx {
            socket: absolute(socket),
            // A database URL is kept as given; a file is made absolute.
            vault: vault.map(|v| match v.to_str() {
                Some(url) if latchkey_client::is_database_url(url) => v,
                _ => absolute(v),
            }),
            quiet,
            withheld_env,
        }
    }

    /// A notice on stderr (`latchkey: …`), unless `--quiet`.
    pub fn info(&self, message: impl std::fmt::Display) {
        if !self.quiet {
            // Nothing useful is left to do when stderr is gone.
            let _ = writeln!(std::io::stderr(), "latchkey: {message}");
        }
    }

    /// A warning on stderr, shown even with `--quiet`.
    pub fn warn(&self, message: impl std::fmt::Display) {
        let _ = writeln!(std::io::stderr(), "latchkey: warning: {message}");
    }

    /// A confirmation on stdout ("vault locked"), unless `--quiet`.
    pub fn done(&self, message: impl std::fmt::Display) -> Result<()> {
        if self.quiet {
            return Ok(());
        }
        output::print(&format!("{message}\n"))
    }

    /// Connects to the daemon, starting it when nothing answers on the socket.
    pub fn connect(&self) -> Result<Connection<'_>> {
        let client = match Client::connect_to(&self.socket) {
            Ok(client) => client,
            Err(latchkey_client::Error::Connect { .. }) => {
                let started = spawn::start(&self.daemon_args(None))?;
                if let Some(pid) = started.spawned_pid {
                    self.info(format_args!("started daemon (pid {pid})"));
                }
                started.client
            }
            Err(err) => return Err(err).context("failed to connect to the latchkey daemon"),
        };
        self.open(client)
    }

    /// Connects and makes a first call in a single round trip: the protocol
    /// check, and the vault check when a vault is named, go out in the same
    /// write as the call, and their answers are checked before the call's
    /// reply is used. The error is the connection's or a check's, as
    /// [`connect`](Self::connect) gives it; the call's answer is returned
    /// as is, for [`Connection::retry_if_locked`]. The daemon receives the
    /// call before either check is done, so this is for calls that do no
    /// harm at a daemon of another version or vault: `token.get` (at worst
    /// it refreshes a token there, which is dropped). When nothing answers,
    /// starts the daemon as [`connect`](Self::connect) does.
    #[allow(clippy::type_complexity)] // the connection, and the call's answer as `raw` gives it
    pub fn connect_with<M: Method>(
        &self,
        params: &M::Params,
    ) -> Result<(Connection<'_>, Result<M::Result, latchkey_client::Error>)> {
        let client = match Client::connect_pipelined(&self.socket) {
            Ok(client) => client,
            // Starting the daemon costs far more than a round trip.
            Err(latchkey_client::Error::Connect { .. }) => {
                let mut conn = self.connect()?;
                let first = conn.raw::<M>(params);
                return Ok((conn, first));
            }
            Err(err) => return Err(err).context("failed to connect to the latchkey daemon"),
        };
        let mut conn = Connection {
            ctx: self,
            client,
            timeout: CALL_TIMEOUT,
        };
        conn.set_timeout(CALL_TIMEOUT)?;
        let first = conn.first_call::<M>(params)?;
        Ok((conn, first))
    }

    /// Connects to a running daemon; `None` when nothing answers on the socket.
    pub fn connect_running(&self) -> Result<Option<Connection<'_>>> {
        match Client::connect_to(&self.socket) {
            Ok(client) => self.open(client).map(Some),
            Err(latchkey_client::Error::Connect { .. }) => Ok(None),
            Err(err) => Err(err).context("failed to connect to the latchkey daemon"),
        }
    }

    /// How to start the daemon for this invocation.
    pub fn daemon_args(&self, idle_timeout: Option<Duration>) -> DaemonArgs<'_> {
        DaemonArgs {
            socket: &self.socket,
            vault: self.vault.as_deref(),
            idle_timeout,
            withheld_env: &self.withheld_env,
        }
    }

    /// Wraps a fresh client: the default call timeout, and the vault check.
    fn open(&self, client: Client) -> Result<Connection<'_>> {
        let mut conn = Connection {
            ctx: self,
            client,
            timeout: CALL_TIMEOUT,
        };
        conn.set_timeout(CALL_TIMEOUT)?;
        conn.check_vault()?;
        Ok(conn)
    }
}

/// A connection to the daemon plus the options it was opened with. (Not
/// the daemon's `Session`, which is the unlocked vault.)
pub struct Connection<'a> {
    /// For notices and the vault check.
    ctx: &'a Ctx,
    /// The socket, after the protocol handshake.
    client: Client,
    /// How long a call waits for its reply; named in the error when it runs out.
    timeout: Duration,
}

impl Connection<'_> {
    /// Bounds how long each call waits for its reply. Only `login.wait`,
    /// which blocks until a person finishes a login, needs more than the
    /// default.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.client
            .set_timeout(Some(timeout))
            .context("failed to set up the connection to the latchkey daemon")?;
        self.timeout = timeout;
        Ok(())
    }

    /// One call of method `M`, as is: the error keeps its daemon kind for
    /// callers that branch on it.
    pub fn raw<M: Method>(
        &mut self,
        params: &M::Params,
    ) -> Result<M::Result, latchkey_client::Error> {
        let timeout = self.timeout;
        self.client
            .request::<M>(params)
            .map_err(|err| explain(err, timeout))
    }

    /// One call; when the vault turns out locked and `$LATCHKEY_KEY_FILE` or
    /// `$LATCHKEY_PASSPHRASE_FILE` is set (a CI runner whose daemon
    /// auto-locked), unlocks with that file (the key file first) and
    /// retries once. The unlock says it is automatic, so the daemon
    /// refuses it after a `latchkey lock` or `latchkey panic`, and its
    /// message (which names `latchkey unlock`) is the error.
    pub fn call<M: Method>(&mut self, params: &M::Params) -> Result<M::Result> {
        let first = self.raw::<M>(params);
        self.retry_if_locked::<M>(params, first)
    }

    /// The first call on a [pipelined](Client::connect_pipelined)
    /// connection, then the vault check when a vault is named, before the
    /// call's answer is used. The outer error is the connection's or a
    /// check's, worded as [`Ctx::connect`] words them; the inner result is
    /// the call's.
    ///
    /// The check reads the vault from the daemon's answer to `hello`, which
    /// came in the same round trip ([`check_vault`](Self::check_vault)).
    fn first_call<M: Method>(
        &mut self,
        params: &M::Params,
    ) -> Result<Result<M::Result, latchkey_client::Error>> {
        let timeout = self.timeout;
        let explained = |err| explain(err, timeout);
        let reply = self
            .client
            .try_request::<M>(params)
            .map_err(explained)
            .context("failed to connect to the latchkey daemon")?;
        self.check_vault()?;
        Ok(reply.map_err(explained))
    }

    /// What [`call`](Self::call) does with the first answer to a call of
    /// `M` with `params`: when the vault turns out locked, the unlock with
    /// `$LATCHKEY_KEY_FILE` or `$LATCHKEY_PASSPHRASE_FILE` and one retry.
    pub fn retry_if_locked<M: Method>(
        &mut self,
        params: &M::Params,
        first: Result<M::Result, latchkey_client::Error>,
    ) -> Result<M::Result> {
        match first {
            Err(err) if err.kind() == Some(ErrorKind::Locked) => {
                let key_file = secret::key_file_env();
                let passphrase_file = Source::passphrase_file_env();
                if key_file.is_none() && passphrase_file.is_none() {
                    return Err(err.into());
                }
                let mut failed = None;
                if let Some(path) = key_file {
                    match self.unlock_unattended(KEY_FILE_ENV, || {
                        let key = secret::read_vault_key_file(&path)?;
                        Ok(UnlockParams {
                            key: Some(key),
                            unattended: true,
                            ..UnlockParams::default()
                        })
                    }) {
                        Ok(()) => return Ok(self.raw::<M>(params)?),
                        Err(e) if passphrase_file.is_none() => return Err(e),
                        Err(e) => failed = Some(e),
                    }
                }
                if let Some(source) = passphrase_file {
                    let unlocked = self.unlock_unattended(PASSPHRASE_FILE_ENV, || {
                        Ok(UnlockParams {
                            passphrase: Some(source.read("passphrase")?),
                            unattended: true,
                            ..UnlockParams::default()
                        })
                    });
                    if let Err(e) = unlocked {
                        if let Some(key_error) = failed {
                            self.ctx.warn(format_args!("{key_error:#}"));
                        }
                        return Err(e);
                    }
                    if let Some(key_error) = failed {
                        self.ctx.warn(format_args!("{key_error:#}"));
                    }
                }
                Ok(self.raw::<M>(params)?)
            }
            other => Ok(other?),
        }
    }

    /// The unattended unlock of [`retry_if_locked`](Self::retry_if_locked)
    /// with the file `$var` names (`params` reads it). A held lock is the
    /// daemon's own error (it names who locked it and the fix); any other
    /// failure says which variable could not unlock the vault.
    fn unlock_unattended(
        &mut self,
        var: &str,
        params: impl FnOnce() -> Result<UnlockParams>,
    ) -> Result<()> {
        let cannot = || format!("the vault is locked and ${var} could not unlock it");
        let unlock = params().with_context(cannot)?;
        match self.raw::<VaultUnlock>(&unlock) {
            Ok(_) => {}
            // Held locked: the daemon's message says by whom and the fix.
            Err(held) if held.kind() == Some(ErrorKind::Locked) => return Err(held.into()),
            Err(other) => return Err(other).with_context(cannot),
        }
        self.ctx.info(format_args!(
            "the vault was locked; unlocked it with ${var}"
        ));
        Ok(())
    }

    /// `status` (does not reset the daemon's idle timer).
    pub fn status(&mut self) -> Result<StatusResult> {
        self.raw::<Status>(&Empty {})
            .context("failed to get the daemon's status")
    }

    /// `hello`: the daemon's pid and version.
    pub fn hello(&mut self) -> Result<HelloResult> {
        self.client
            .hello()
            .map_err(|err| explain(err, self.timeout))
            .context("failed to greet the latchkey daemon")
    }

    /// The daemon serves one vault, chosen when it started. When the user
    /// named a vault and the running daemon serves another, say so rather
    /// than silently work on the wrong one.
    ///
    /// The daemon names its vault in its answer to `hello`, which every
    /// connection has made by now: no call of its own. Only a daemon too
    /// old to name it there is asked with `status`, which costs a round
    /// trip and a read of the vault file's key slots.
    fn check_vault(&mut self) -> Result<()> {
        let Some(wanted) = self.ctx.vault.clone() else {
            return Ok(());
        };
        let greeting = self.client.greeting();
        let (served, pid) =
            match greeting.and_then(|hello| Some((hello.vault_path.clone()?, hello.pid))) {
                Some(named) => named,
                None => {
                    let status = self.status()?;
                    (status.vault_path, status.pid)
                }
            };
        self.check_served(&wanted, &served, pid)
    }

    /// Refuses the daemon (of process `pid`) when the vault it serves is
    /// not `wanted`.
    fn check_served(&self, wanted: &Path, served: &str, pid: u32) -> Result<()> {
        let (wanted, same) = match wanted.to_str() {
            Some(url) if latchkey_client::is_database_url(url) => {
                let shown = latchkey_client::database_url_shown(url);
                let same = shown == served;
                (PathBuf::from(shown), same)
            }
            _ => (wanted.to_owned(), same_file(wanted, Path::new(served))),
        };
        let served = PathBuf::from(served);
        if !same {
            return Err(anyhow::anyhow!(
                "the daemon at {} (pid {}) serves the vault {}, not {}: stop it with `latchkey daemon stop` or pick another socket with --socket",
                self.ctx.socket.display(),
                pid,
                served.display(),
                wanted.display()
            ));
        }
        Ok(())
    }
}

/// Adds what the bare client error leaves out: a timeout says which daemon
/// hung, and a retry hint says when.
fn explain(err: latchkey_client::Error, timeout: Duration) -> latchkey_client::Error {
    match err {
        latchkey_client::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            latchkey_client::Error::Io(std::io::Error::new(
                io.kind(),
                format!(
                    "the daemon did not answer within {}s; restart it with `latchkey daemon stop`",
                    timeout.as_secs()
                ),
            ))
        }
        latchkey_client::Error::Daemon {
            kind,
            message,
            retry_after: Some(secs),
        } if !message.contains("retry") => latchkey_client::Error::Daemon {
            kind,
            message: format!("{message} (retry in {})", output::span(secs)),
            retry_after: Some(secs),
        },
        other => other,
    }
}

/// Whether two paths name the same file, even when one does not exist yet
/// (an uninitialized vault): compares canonical parents and file names.
fn same_file(a: &Path, b: &Path) -> bool {
    fn canonical(p: &Path) -> PathBuf {
        if let Ok(c) = p.canonicalize() {
            return c;
        }
        match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => dir
                .canonicalize()
                .map(|d| d.join(name))
                .unwrap_or_else(|_| p.to_owned()),
            _ => p.to_owned(),
        }
    }
    a == b || canonical(a) == canonical(b)
}

fn absolute(path: PathBuf) -> PathBuf {
    // On failure (no working directory) keep the path as given: the daemon
    // then sees what the user typed, which is still the best guess.
    std::path::absolute(&path).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_sees_through_dots_and_missing_files() {
        let tmp = std::env::temp_dir();
        assert!(same_file(
            &tmp.join("./missing.db"),
            &tmp.join("missing.db")
        ));
        assert!(!same_file(&tmp.join("one.db"), &tmp.join("two.db")));
    }

    #[test]
    fn retry_hints_are_added_once() {
        let err = explain(
            latchkey_client::Error::Daemon {
                kind: ErrorKind::RateLimited,
                message: "provider 'gh' is rate limiting".into(),
                retry_after: Some(90),
            },
            CALL_TIMEOUT,
        );
        assert_eq!(
            err.to_string(),
            "provider 'gh' is rate limiting (retry in 1m 30s)"
        );
        let err = explain(
            latchkey_client::Error::Daemon {
                kind: ErrorKind::RateLimited,
                message: "slow down: retry in 5s".into(),
                retry_after: Some(5),
            },
            CALL_TIMEOUT,
        );
        assert_eq!(err.to_string(), "slow down: retry in 5s");
    }
}
