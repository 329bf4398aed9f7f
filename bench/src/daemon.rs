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
#[derive(Clone)]
pub struct Env {
    pub socket: PathBuf,
    pub vault: PathBuf,
    pub runtime_dir: PathBuf,
    pub data_home: PathBuf,
    pub log: PathBuf,
    /// A shared vault's URL (`postgres://…`), which the daemon gets in
    /// `LATCHKEY_VAULT` instead of [`Env::vault`].
    pub vault_url: Option<String>,
    /// More variables for the daemon alone (after the bench's own, so they
    /// may override `LATCHKEY_LOG`).
    pub daemon_env: Vec<(String, String)>,
}

/// Inherited variables that would change what the daemon or the CLI does.
const CLEARED: &[&str] = &[
    "LATCHKEY_SOCKET",
    "LATCHKEY_VAULT",
    "LATCHKEY_PASSPHRASE_FILE",
    "LATCHKEY_VAULT_PASSWORD_FILE",
    "PGPASSWORD",
    "LATCHKEY_KEY_FILE",
    "LATCHKEY_IDLE_TIMEOUT",
    "LATCHKEY_FRAME_TIMEOUT",
    "LATCHKEY_LOG",
    "LATCHKEY_INSECURE_TEST_KDF",
    "LATCHKEY_RATE_LIMIT",
    "LATCHKEY_PROVIDER_RATE_LIMIT",
    "LATCHKEY_LOGIN_RATE_LIMIT",
];

/// The rate limits of every daemon the bench starts but part 8's: far
/// above what any part drives (≈ 200 k calls/s at most, 10,000 token
/// requests while filling part 7's vault, a few logins), so the check runs
/// on every call and is in every figure, yet never refuses.
pub const BENCH_RATE_LIMITS: [(&str, &str); 3] = [
    ("LATCHKEY_RATE_LIMIT", "10000000/s"),
    ("LATCHKEY_PROVIDER_RATE_LIMIT", "1000000/s"),
    ("LATCHKEY_LOGIN_RATE_LIMIT", "1000000/s"),
];

/// Which rate limits a daemon gets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// [`BENCH_RATE_LIMITS`].
    Bench,
    /// The daemon's own defaults (part 8).
    Defaults,
}

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
            vault_url: None,
            daemon_env: Vec::new(),
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
            match &self.vault_url {
                Some(url) => cmd.env("LATCHKEY_VAULT", url),
                None => cmd.env("LATCHKEY_VAULT", &self.vault),
            };
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
        DaemonGuard::start_with(binary, env, Limits::Bench)
    }

    /// [`DaemonGuard::start`] with the rate limits `limits`.
    pub fn start_with(binary: &Path, env: &Env, limits: Limits) -> Result<DaemonGuard> {
        let mut guard = DaemonGuard::spawn(binary, env, limits)?;
        guard.wait_until(
            env,
            "listen",
            Instant::now(),
            Duration::from_millis(10),
            || std::os::unix::net::UnixStream::connect(&env.socket).is_ok(),
        )?;
        Ok(guard)
    }

    /// Starts `latchkeyd` and returns it with the time from the spawn to
    /// its first `hello` reply (a connection through the client library,
    /// which says `hello` as it connects), polled every 0.5 ms (≤ 10 s).
    /// Call from the main thread (see [`DaemonGuard::start`]).
    pub fn start_timed(
        binary: &Path,
        env: &Env,
        rt: &tokio::runtime::Runtime,
    ) -> Result<(DaemonGuard, Duration)> {
        let started = Instant::now();
        let mut guard = DaemonGuard::spawn(binary, env, Limits::Bench)?;
        guard.wait_until(env, "answer", started, Duration::from_micros(500), || {
            rt.block_on(Client::connect_to(&env.socket)).is_ok()
        })?;
        Ok((guard, started.elapsed()))
    }

    /// Polls `ready` every `poll` until it holds, for at most 10 s from
    /// `started`; an error with the daemon's log when it exits or the time
    /// runs out (`what` it did not do: "listen", "answer").
    fn wait_until(
        &mut self,
        env: &Env,
        what: &str,
        started: Instant,
        poll: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = started + Duration::from_secs(10);
        loop {
            if ready() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "latchkeyd did not {what} on {} within 10 s; its log:\n{}",
                    env.socket.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(poll);
        }
    }

    /// An error (with the daemon's log) when it has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "latchkeyd exited at start ({status}); its log:\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    /// Spawns `latchkeyd` on `env`'s vault and socket, without waiting.
    fn spawn(binary: &Path, env: &Env, limits: Limits) -> Result<DaemonGuard> {
        let log = std::fs::File::create(&env.log).context("failed to create the daemon log")?;
        let mut cmd = Command::new(binary);
        env.apply(&mut cmd, true);
        if limits == Limits::Bench {
            cmd.envs(BENCH_RATE_LIMITS);
        }
        cmd.env("LATCHKEY_IDLE_TIMEOUT", "15m")
            .env(
                "LATCHKEY_LOG",
                std::env::var("LATCHKEY_BENCH_DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.daemon_env.iter().map(|(k, v)| (k, v)))
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
        Ok(DaemonGuard {
            child,
            log: env.log.clone(),
        })
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

/// `vault.init` with one passphrase slot.
pub(crate) async fn init_vault(c: &mut Client, passphrase: &str) -> Result<()> {
    let _: InitResult = c
        .request::<VaultInit>(&InitParams {
            breached_list: None,
            passphrase: Some(SecretString::from(passphrase)),
            keyring: false,
        })
        .await
        .context("vault.init failed")?;
    Ok(())
}

/// A provider `name` whose token endpoint is the bench's.
async fn add_provider(c: &mut Client, name: String, endpoint: &TokenEndpoint) -> Result<()> {
    let _: ProviderInfo = c
        .request::<ProviderAdd>(&ProviderAddParams {
            name,
            issuer: None,
            endpoints: Endpoints {
                token_endpoint: Some(endpoint.url.clone()),
                ..Endpoints::default()
            },
            oauth1: None,
        })
        .await
        .context("provider.add failed")?;
    Ok(())
}

/// `vault.init` with a passphrase, a provider whose token endpoint is the
/// bench's, and a client-credentials credential with `client_secret_basic`.
pub async fn set_up_vault(socket: &Path, endpoint: &TokenEndpoint) -> Result<()> {
    let mut c = Client::connect_to(socket).await?;
    init_vault(&mut c, "correct horse battery staple").await?;
    add_provider(&mut c, CREDENTIAL.into(), endpoint).await?;
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
            access: Some(latchkey_client::protocol::Access::Open),
            exchange: None,
            client_key: None,
            assertion_audience: None,
            dpop: None,
            proof: Some(latchkey_client::protocol::Proof::passphrase(
                latchkey_client::secrecy::SecretString::from(PASSPHRASE),
            )),
            signature_method: None,
            private_key: None,
        })
        .await
        .context("credential.add failed")?;
    Ok(())
}

/// The passphrase of every vault the bench creates.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// The name of the `i`-th of many credentials (and of its provider):
/// fixed width, so they sort as they are numbered.
pub fn credential_name(i: usize) -> String {
    format!("cred-{i:05}")
}

pub fn provider_name(i: usize) -> String {
    format!("prov-{i:03}")
}

/// How long filling a vault took, by step.
pub struct Fill {
    pub providers: Duration,
    pub credentials: Duration,
    pub tokens: Duration,
}

/// `vault.init`, then `providers` providers (all pointing at `endpoint`)
/// and `credentials` client-credentials credentials spread over them
/// round-robin, then one `token.get` per credential so each holds a stored
/// token, as a vault in use does. Credentials and tokens go through
/// `conns` connections at once (the daemon writes each in its own
/// transaction, one after the other, under its vault mutex: the
/// connections only keep it busy). Every row is the daemon's own.
pub async fn fill_vault(
    socket: &Path,
    endpoint: &TokenEndpoint,
    providers: usize,
    credentials: usize,
    conns: usize,
) -> Result<Fill> {
    let mut c = Client::connect_to(socket).await?;
    init_vault(&mut c, PASSPHRASE).await?;
    let started = Instant::now();
    for p in 0..providers {
        add_provider(&mut c, provider_name(p), endpoint).await?;
    }
    let providers_took = started.elapsed();

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..conns.min(credentials) {
        let socket = socket.to_owned();
        tasks.spawn(async move {
            let mut c = Client::connect_to(&socket).await?;
            for i in (worker..credentials).step_by(conns) {
                let _: CredentialInfo = c
                    .request::<CredentialAdd>(&CredentialAddParams {
                        name: credential_name(i),
                        provider: provider_name(i % providers),
                        client_id: format!("client-{i:05}"),
                        client_secret: Some(SecretString::from(format!("secret-{i:05}"))),
                        grant: GrantType::ClientCredentials,
                        auth: AuthMethod::ClientSecretBasic,
                        scopes: vec!["read".into()],
                        redirect_uri: None,
                        access: Some(latchkey_client::protocol::Access::Open),
                        exchange: None,
                        client_key: None,
                        assertion_audience: None,
                        dpop: None,
                        proof: Some(latchkey_client::protocol::Proof::passphrase(
                            latchkey_client::secrecy::SecretString::from(PASSPHRASE),
                        )),
                        signature_method: None,
                        private_key: None,
                    })
                    .await
                    .context("credential.add failed")?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let credentials_took = started.elapsed();

    let started = Instant::now();
    for worker in 0..conns.min(credentials) {
        let socket = socket.to_owned();
        tasks.spawn(async move {
            let mut c = Client::connect_to(&socket).await?;
            for i in (worker..credentials).step_by(conns) {
                c.token(&credential_name(i))
                    .await
                    .context("token.get failed")?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(Fill {
        providers: providers_took,
        credentials: credentials_took,
        tokens: started.elapsed(),
    })
}

/// Daemons the bench did not spawn itself (the CLI started them, detached
/// in their own session, so no parent-death signal reaches them): stopped
/// by [`StrayDaemon`]'s drop, or by the signal handler through [`strays`].
static STRAYS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// The pids of daemons the CLI started for the bench, still running.
pub fn strays() -> Vec<u32> {
    STRAYS.lock().map(|s| s.clone()).unwrap_or_default()
}

/// A `latchkeyd` started by someone else (the CLI) on the bench's vault:
/// SIGTERM, then SIGKILL, on drop.
pub struct StrayDaemon {
    pid: u32,
}

impl StrayDaemon {
    pub fn adopt(pid: u32) -> StrayDaemon {
        if let Ok(mut s) = STRAYS.lock() {
            s.push(pid);
        }
        StrayDaemon { pid }
    }
}

impl Drop for StrayDaemon {
    fn drop(&mut self) {
        let pid = self.pid as libc::pid_t;
        // SAFETY: kill with the pid a daemon on the bench's own socket
        // reported (through `status`) and that is still running.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while procfs::is_running(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if procfs::is_running(self.pid) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Ok(mut s) = STRAYS.lock() {
            s.retain(|&p| p != self.pid);
        }
    }
}
