//! `latchkeyd`: runs the Latchkey daemon in the foreground (for service
//! managers; `latchkey daemon start` runs it detached). Parses arguments,
//! hardens the process, takes the vault lock, binds the socket, and hands
//! over to `latchkey_daemon::run` until SIGTERM or SIGINT.

use anyhow::{bail, Context};
use clap::Parser;
use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::uds_local_socket::tokio::Listener as UdsListener;
use latchkey_client::duration;
use latchkey_daemon::{
    activation, fsutil, hardening, keyring, lockfile, AuditRetention, Clock, Config, PgTarget,
    Rate, RateLimits, VaultLocation,
};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::filter::Targets;

#[derive(Parser)]
#[command(
    name = "latchkeyd",
    version,
    about = "Latchkey credential vault daemon (foreground)"
)]
struct Args {
    /// Socket path [default: $XDG_RUNTIME_DIR/latchkey/latchkey.sock]
    #[arg(long, env = "LATCHKEY_SOCKET")]
    socket: Option<PathBuf>,
    /// Vault file, or a shared PostgreSQL database as postgres://USER@HOST:PORT/DB
    /// (its password from $LATCHKEY_VAULT_PASSWORD_FILE or $PGPASSWORD, never here)
    /// [env: LATCHKEY_VAULT; default: $XDG_DATA_HOME/latchkey/vault.db]
    #[arg(long)]
    vault: Option<PathBuf>,
    /// Lock the vault after this long without use, in whole seconds: 900, 30s, 15m, 1h, 1d; 0 never
    #[arg(long, env = "LATCHKEY_IDLE_TIMEOUT", value_parser = duration::parse_whole_secs, default_value = "15m")]
    idle_timeout: Duration,
    /// Unlock at start with the passphrase in this file (headless runs)
    #[arg(long, env = "LATCHKEY_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    /// Unlock at start with this key file (`latchkey slot add --key-file`); tried before the passphrase file
    #[arg(long, env = "LATCHKEY_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// How long a started request line may take to arrive
    #[arg(long, env = "LATCHKEY_FRAME_TIMEOUT", value_parser = duration::parse, default_value = "10s", hide = true)]
    frame_timeout: Duration,
    /// Close a client connection that sends no request for this long; 0 never
    #[arg(long, env = "LATCHKEY_CONNECTION_IDLE_TIMEOUT", value_parser = duration::parse, default_value = "10m", hide = true)]
    connection_idle_timeout: Duration,
    /// How long a call for an `ask` credential waits for the user's decision
    #[arg(long, env = "LATCHKEY_APPROVAL_TIMEOUT", value_parser = duration::parse_whole_secs, default_value = "60s")]
    approval_timeout: Duration,
    /// Desktop notifications for apps waiting for a decision: auto (where the session bus has a notification service) or never
    #[arg(long, env = "LATCHKEY_NOTIFY", value_enum, default_value = "auto")]
    notify: Notify,
    /// Delete audit rows older than this (whole seconds or 30d, 400d, ...; at least 1d)
    #[arg(long, env = "LATCHKEY_AUDIT_MAX_AGE", value_parser = audit_max_age, default_value = "400d")]
    audit_max_age: Duration,
    /// Keep at most this many audit rows, deleting the oldest (at least 1000)
    #[arg(long, env = "LATCHKEY_AUDIT_MAX_ROWS", value_parser = audit_max_rows, default_value = "1000000")]
    audit_max_rows: u64,
    /// Calls each app may make: COUNT/PERIOD[,burst=N] (5/m, 20/10s), or off
    #[arg(long, env = "LATCHKEY_RATE_LIMIT", value_parser = limit, default_value = "1000/s,burst=5000")]
    rate_limit: Limit,
    /// Calls each app may make that reach the provider (token requests on a cache miss, logins, revocations), or off
    #[arg(long, env = "LATCHKEY_PROVIDER_RATE_LIMIT", value_parser = limit, default_value = "10/s,burst=30")]
    provider_rate_limit: Limit,
    /// Login starts each credential may have, whoever asks, or off
    #[arg(long, env = "LATCHKEY_LOGIN_RATE_LIMIT", value_parser = limit, default_value = "5/m")]
    login_rate_limit: Limit,
}

/// `--notify`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Notify {
    /// Where the session bus has a notification service with actions.
    Auto,
    /// Never; the session bus is not touched.
    Never,
}

/// One day: a shorter log could not hold what happened since yesterday.
const MIN_AUDIT_AGE: Duration = Duration::from_secs(24 * 3600);
/// A thousand rows: a few days of a busy desktop's events.
const MIN_AUDIT_ROWS: u64 = 1000;

fn audit_max_age(text: &str) -> Result<Duration, String> {
    let age = duration::parse_whole_secs(text).map_err(|e| e.to_string())?;
    if age < MIN_AUDIT_AGE {
        return Err(format!(
            "audit rows must be kept at least a day (1d); '{text}' is shorter"
        ));
    }
    Ok(age)
}

fn audit_max_rows(text: &str) -> Result<u64, String> {
    let rows: u64 = text.parse().map_err(|_| {
        format!("'{text}' is not a number of rows: give a whole number such as 1000000")
    })?;
    if rows < MIN_AUDIT_ROWS {
        return Err(format!(
            "the audit log keeps at least {MIN_AUDIT_ROWS} rows; '{text}' is fewer"
        ));
    }
    Ok(rows)
}

/// A rate limit flag's value: a rate, or `off` (`None`).
#[derive(Clone, Copy)]
struct Limit(Option<Rate>);

fn limit(text: &str) -> Result<Limit, String> {
    Rate::parse_setting(text).map(Limit)
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latchkeyd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    // First, while this is the only thread: the variables are removed.
    let inherited = activation::take_listener()?;
    hardening::refuse_test_switches().map_err(anyhow::Error::msg)?;
    for refused in hardening::harden_process() {
        tracing::warn!("hardening not applied: {refused}");
    }
    keyring::prepare_process();
    let open_files = match hardening::raise_open_files_limit() {
        Ok(limit) => {
            tracing::debug!(
                limit,
                "descriptor limit (RLIMIT_NOFILE, soft) raised to the hard limit"
            );
            limit
        }
        Err(e) => {
            tracing::warn!("cannot read the descriptor limit (RLIMIT_NOFILE): {e}; assuming 1024");
            1024
        }
    };
    let max_connections = Config::connection_cap(open_files);
    tracing::debug!(max_connections, "client connection cap");
    let config = Config {
        vault: vault_location(args.vault)?,
        // A socket systemd passed is where clients will connect, whatever
        // the flag or the default says.
        socket_path: match &inherited {
            Some(inherited) => inherited.path.clone(),
            None => args.socket.unwrap_or_else(latchkey_client::socket_path),
        },
        idle_timeout: args.idle_timeout,
        frame_timeout: args.frame_timeout,
        max_connections,
        connection_idle_timeout: args.connection_idle_timeout,
        passphrase_file: args.passphrase_file.filter(|p| !p.as_os_str().is_empty()),
        key_file: args.key_file.filter(|p| !p.as_os_str().is_empty()),
        keyring: keyring::BackendChoice::from_env()?,
        cli_path: cli_beside_us(),
        approval_timeout: args.approval_timeout,
        notify: args.notify == Notify::Auto,
        audit_retention: AuditRetention {
            max_age_secs: args.audit_max_age.as_secs(),
            max_rows: args.audit_max_rows,
        },
        rate_limits: RateLimits {
            calls: args.rate_limit.0,
            provider: args.provider_rate_limit.0,
            logins: args.login_rate_limit.0,
        },
        clock: Clock::Wall,
    };
    // One daemon per vault file; a database is shared by design (each
    // daemon of the fleet has its own socket).
    let _lock = match config.vault.file() {
        Some(path) => {
            if let Some(dir) = path.parent() {
                fsutil::private_dir(dir).with_context(|| {
                    format!("failed to prepare the vault directory {}", dir.display())
                })?;
            }
            Some(lockfile::acquire(path)?)
        }
        None => None,
    };
    let socket = &config.socket_path;
    // The socket's directory must be ours, 0700 and no symbolic link, whoever
    // created it: refused, never re-chmodded or taken over (DESIGN.md, "a fake
    // daemon"). The client makes the same check before it connects.
    let socket_dir = latchkey_client::trust::socket_dir(socket);
    latchkey_client::trust::private_dir(socket_dir).with_context(|| {
        format!(
            "failed to prepare the socket directory {}",
            socket_dir.display()
        )
    })?;
    if inherited.is_some() {
        activation::check_socket_file(socket)?;
    } else if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!(
                "another daemon is listening on {}; stop it with `latchkey daemon stop`, or choose another socket with LATCHKEY_SOCKET",
                socket.display()
            );
        }
        // A socket file nobody listens on is left from a crash: replace it.
        std::fs::remove_file(socket)
            .with_context(|| format!("failed to remove the stale socket {}", socket.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("latchkeyd")
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        let listener = match inherited {
            Some(inherited) => {
                let listener = UdsListener::try_from(inherited.fd).with_context(|| {
                    format!(
                        "failed to serve the socket systemd passed ({})",
                        socket.display()
                    )
                })?;
                tracing::info!(
                    socket = %socket.display(),
                    vault = %config.vault,
                    pid = std::process::id(),
                    "latchkeyd listening on the socket systemd passed"
                );
                Listener::from(listener)
            }
            None => bind(socket, &config)?,
        };
        activation::notify("READY=1");
        let served = latchkey_daemon::run(config.clone(), listener, shutdown_signal()).await;
        activation::notify("STOPPING=1");
        served
    })?;
    tracing::info!("latchkeyd stopped");
    Ok(())
}

/// The file with the vault database's password.
const VAULT_PASSWORD_FILE_ENV: &str = "LATCHKEY_VAULT_PASSWORD_FILE";

/// The vault: `--vault`, else `$LATCHKEY_VAULT`, else the default file. A
/// `postgres://` URL names a database shared by a fleet of daemons; its
/// password comes from the URL only when the URL came from the
/// environment (the command line is readable by every local user), else
/// from `$LATCHKEY_VAULT_PASSWORD_FILE` or `$PGPASSWORD`.
fn vault_location(arg: Option<PathBuf>) -> anyhow::Result<VaultLocation> {
    let from_env = std::env::var_os(latchkey_client::VAULT_ENV).filter(|v| !v.is_empty());
    let (value, on_command_line) = match (arg, from_env) {
        (Some(arg), _) => (arg, true),
        (None, Some(env)) => (PathBuf::from(env), false),
        (None, None) => return Ok(VaultLocation::File(latchkey_client::vault_path())),
    };
    let Some(url) = value
        .to_str()
        .filter(|s| latchkey_client::is_database_url(s))
    else {
        return Ok(VaultLocation::File(value));
    };
    let has_password = url::Url::parse(url).is_ok_and(|u| u.password().is_some());
    if has_password && on_command_line {
        bail!(
            "the vault URL on the command line holds a password, which every local user can read in the process list: \
             put the URL in {} instead, or the password in a file named by {VAULT_PASSWORD_FILE_ENV}",
            latchkey_client::VAULT_ENV
        );
    }
    let password = match std::env::var_os(VAULT_PASSWORD_FILE_ENV).filter(|v| !v.is_empty()) {
        Some(path) => Some(
            fsutil::read_secret_file(std::path::Path::new(&path), "vault database password file")
                .map_err(anyhow::Error::msg)?,
        ),
        None => std::env::var("PGPASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .map(secrecy::SecretString::from),
    };
    let target = PgTarget::parse(url, password).map_err(anyhow::Error::msg)?;
    Ok(VaultLocation::Postgres(std::sync::Arc::new(target)))
}

/// Binds the socket at `socket` (0600) for `config`'s daemon.
fn bind(socket: &std::path::Path, config: &Config) -> anyhow::Result<Listener> {
    let name = socket
        .to_fs_name::<GenericFilePath>()
        .with_context(|| format!("invalid socket path {}", socket.display()))?;
    let listener = ListenerOptions::new()
        .name(name)
        .create_tokio()
        .with_context(|| format!("failed to listen on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("failed to make {} private", socket.display()))?;
    tracing::info!(
        socket = %socket.display(),
        vault = %config.vault,
        pid = std::process::id(),
        "latchkeyd listening"
    );
    Ok(listener)
}

/// The `latchkey` CLI installed beside this executable, whose connections
/// are attributed to the program that ran it. Its hash is what is
/// compared, so a program merely named `latchkey` is not taken for it.
fn cli_beside_us() -> Option<std::path::PathBuf> {
    let cli = std::env::current_exe().ok()?.parent()?.join("latchkey");
    cli.is_file().then_some(cli)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler succeeds at start");
    let mut int =
        signal(SignalKind::interrupt()).expect("installing a SIGINT handler succeeds at start");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    activation::notify("STOPPING=1");
}

/// Logs go to stderr. `LATCHKEY_LOG` sets the filter: a level (`debug`)
/// and/or `target=level` pairs, comma-separated (`info,latchkey_daemon=debug`);
/// a filter that does not parse is reported and `info` is used. HTTP
/// internals stay at `warn` so no header ever reaches a log line. (A
/// `Targets` filter, not `EnvFilter`: no regex engine in the daemon, whose
/// pages an always-running process would keep resident.)
fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    const HTTP_INTERNALS: &str = "hyper=warn,hyper_util=warn,reqwest=warn,rustls=warn,h2=warn";
    let asked = std::env::var("LATCHKEY_LOG").unwrap_or_else(|_| "info".into());
    let (filter, refused) = match format!("{asked},{HTTP_INTERNALS}").parse::<Targets>() {
        Ok(filter) => (filter, None),
        Err(e) => (
            format!("info,{HTTP_INTERNALS}")
                .parse::<Targets>()
                .expect("the default filter parses"),
            Some(e),
        ),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .with(filter)
        .init();
    if let Some(e) = refused {
        tracing::warn!(
            "LATCHKEY_LOG is not a log filter ({e}); logging at info. Use a level such as `debug`, or `info,latchkey_daemon=debug`"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults `--help` shows are `RateLimits::DEFAULT`, and `off`
    /// turns a limit off.
    #[test]
    fn the_rate_limit_flags_default_to_the_documented_limits() {
        let args = Args::try_parse_from(["latchkeyd"]).expect("no arguments parse");
        let parsed = RateLimits {
            calls: args.rate_limit.0,
            provider: args.provider_rate_limit.0,
            logins: args.login_rate_limit.0,
        };
        // An environment that sets one would change what this checks.
        if std::env::vars().any(|(k, _)| k.ends_with("RATE_LIMIT") && k.starts_with("LATCHKEY_")) {
            return;
        }
        assert_eq!(parsed, RateLimits::DEFAULT);
        let args = Args::try_parse_from([
            "latchkeyd",
            "--rate-limit",
            "off",
            "--login-rate-limit",
            "2/h",
        ])
        .expect("parses");
        assert_eq!(args.rate_limit.0, None);
        assert_eq!(
            args.login_rate_limit.0.map(|r| r.to_string()).as_deref(),
            Some("2/1h")
        );
        let refused = Args::try_parse_from(["latchkeyd", "--rate-limit", "lots"]);
        let message = refused.err().expect("refused").to_string();
        assert!(message.contains("COUNT/PERIOD"), "{message}");
    }
}
