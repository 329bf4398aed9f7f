//! The real `latchkeyd` for parts 2–4: finds the release binaries, starts
//! the daemon in a private temp dir with a throwaway vault (production
//! Argon2id: a release daemon refuses the test KDF switch), sets
//! up a client-credentials credential through the protocol, and stops the
//! daemon when the guard drops — on success, error or panic alike (and,
//! through `PR_SET_PDEATHSIG`, when the bench itself is killed).

use crate::procfs;
use anyhow::{bail, Context, Result};
use latchkey_client::protocol::{
    AuthMethod, CredentialAdd, CredentialAddParams, CredentialInfo, Endpoints, GrantType,
    InitParams, InitResult, ProviderAdd, ProviderAddParams, ProviderInfo, VaultInit,
};
use latchkey_client::secrecy::SecretString;
use latchkey_client::Client;
use latchkey_testkit::token_endpoint::TokenEndpoint;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The credential (and provider) name the bench creates.
pub const CREDENTIAL: &str = "bench";

/// Where `latchkeyd` and `latchkey` are: [`latchkey_testkit::bin_dir`]
/// (`$LATCHKEY_BIN_DIR`, else the target dir this bench was built into).
pub fn bin_dir() -> Result<PathBuf> {
    latchkey_testkit::bin_dir().context("cannot find the bench's own path")
}

/// Where the bench's own helper binaries are: beside the bench itself,
/// whatever `$LATCHKEY_BIN_DIR` says (cargo builds them together).
pub fn own_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the bench's own path")?;
    Ok(exe
        .parent()
        .context("the bench binary has no parent directory")?
        .to_owned())
}

/// `dir/name`, if it exists; warns when it is older than the sources
/// it is built from (a stale build would measure old code).
pub fn find_binary(dir: &Path, name: &str, sources: &[&str]) -> Result<Option<PathBuf>> {
    let path = dir.join(name);
    if !path.is_file() {
        return Ok(None);
    }
    let built = std::fs::metadata(&path)?.modified()?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = sources
        .iter()
        .filter_map(|s| newest_mtime(&workspace.join(s)))
        .max();
    if newest.is_some_and(|n| n > built) {
        println!(
            "WARNING: {} is older than its sources ({}); rebuild with `cargo build --release -p latchkey-daemon -p latchkey-cli`",
            path.display(),
            sources.join(", ")
        );
    }
    Ok(Some(path))
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let meta = entry.metadata().ok()?;
        let t = if meta.is_dir() {
            newest_mtime(&entry.path())
        } else {
            meta.modified().ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// Paths and environment of the bench's private daemon.
pub struct Env {
    pub socket: PathBuf,
    pub vault: PathBuf,
    pub runtime_dir: PathBuf,
    pub data_home: PathBuf,
    pub log: PathBuf,
}

/// Inherited variables that would change what the daemon or the CLI does.
const CLEARED: &[&str] = &[
    "LATCHKEY_SOCKET",
    "LATCHKEY_VAULT",
    "LATCHKEY_PASSPHRASE_FILE",
    "LATCHKEY_IDLE_TIMEOUT",
    "LATCHKEY_FRAME_TIMEOUT",
    "LATCHKEY_LOG",
    "LATCHKEY_INSECURE_TEST_KDF",
];

impl Env {
    pub fn new(dir: &Path) -> Env {
        let runtime_dir = dir.join("run");
        let data_home = dir.join("data");
        Env {
            socket: runtime_dir.join("latchkey").join("latchkey.sock"),
            // The XDG default under `data_home`, so a CLI that names no
            // vault means this one too (and anything it might start stays here).
            vault: data_home.join("latchkey").join("vault.db"),
            runtime_dir,
            data_home,
            log: dir.join("latchkeyd.log"),
        }
    }

    /// Sets up `cmd`'s environment: the paths a desktop user's shell would
    /// give (`XDG_RUNTIME_DIR`, `XDG_DATA_HOME`), `LATCHKEY_SOCKET`, and
    /// `LATCHKEY_VAULT` only when `name_vault` (the daemon always gets it; for
    /// the CLI it adds a `status` round trip that checks the daemon serves it).
    pub fn apply(&self, cmd: &mut Command, name_vault: bool) {
        for var in CLEARED {
            cmd.env_remove(var);
        }
        cmd.env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("XDG_DATA_HOME", &self.data_home)
            .env("LATCHKEY_SOCKET", &self.socket);
        if name_vault {
            cmd.env("LATCHKEY_VAULT", &self.vault);
        }
    }
}

/// A running `latchkeyd`; stopped (SIGTERM, then SIGKILL) on drop.
pub struct DaemonGuard {
    child: Child,
    log: PathBuf,
}

impl DaemonGuard {
    /// Starts `latchkeyd` and waits (≤ 10 s) until its socket answers.
    /// Call from the main thread: the parent-death signal is tied to the
    /// thread that forks, and the main thread lives as long as the bench.
    pub fn start(binary: &Path, env: &Env) -> Result<DaemonGuard> {
        let log = std::fs::File::create(&env.log).context("failed to create the daemon log")?;
        let mut cmd = Command::new(binary);
        env.apply(&mut cmd, true);
        cmd.env("LATCHKEY_IDLE_TIMEOUT", "15m")
            .env(
                "LATCHKEY_LOG",
                std::env::var("LATCHKEY_BENCH_DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches only this (child) process.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        let mut guard = DaemonGuard {
            child,
            log: env.log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = guard.child.try_wait()? {
                bail!(
                    "latchkeyd exited at start ({status}); its log:\n{}",
                    guard.log_text()
                );
            }
            if std::os::unix::net::UnixStream::connect(&env.socket).is_ok() {
                return Ok(guard);
            }
            if Instant::now() > deadline {
                bail!(
                    "latchkeyd did not listen on {} within 10 s; its log:\n{}",
                    env.socket.display(),
                    guard.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A field of the daemon's `/proc/<pid>/status` (see [`procfs::status_field`]).
    pub fn status_field(&self, field: &str) -> Option<u64> {
        procfs::status_field(self.pid(), field)
    }

    /// CPU time the daemon has used so far.
    pub fn cpu(&self) -> Option<procfs::Cpu> {
        procfs::process_cpu(self.pid())
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill with a pid we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vault.init` with a passphrase, a provider whose token endpoint is the
/// bench's, and a client-credentials credential with `client_secret_basic`.
pub async fn set_up_vault(socket: &Path, endpoint: &TokenEndpoint) -> Result<()> {
    let mut c = Client::connect_to(socket).await?;
    let _: InitResult = c
        .request::<VaultInit>(&InitParams {
            passphrase: Some(SecretString::from("correct horse battery staple")),
            keyring: false,
        })
        .await
        .context("vault.init failed")?;
    let _: ProviderInfo = c
        .request::<ProviderAdd>(&ProviderAddParams {
            name: CREDENTIAL.into(),
            issuer: None,
            endpoints: Endpoints {
                token_endpoint: Some(endpoint.url.clone()),
                ..Endpoints::default()
            },
        })
        .await
        .context("provider.add failed")?;
    let _: CredentialInfo = c
        .request::<CredentialAdd>(&CredentialAddParams {
            name: CREDENTIAL.into(),
            provider: CREDENTIAL.into(),
            client_id: "bench-client".into(),
            client_secret: Some(SecretString::from("bench-client-secret")),
            grant: GrantType::ClientCredentials,
            auth: AuthMethod::ClientSecretBasic,
            scopes: vec!["read".into()],
            redirect_uri: None,
        })
        .await
        .context("credential.add failed")?;
    Ok(())
}
