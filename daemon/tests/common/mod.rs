//! The in-process harness shared by the daemon's integration tests: a
//! daemon served by `latchkey_daemon::run` on the test's runtime, with
//! tokio's clock paused and held still (see `in_process.rs` for why).
#![allow(dead_code)] // each test file uses its own subset

use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use latchkey_client::protocol::*;
use latchkey_client::secrecy::{ExposeSecret, SecretString};
use latchkey_client::{Client, Error};
use latchkey_daemon::{keyring, Clock, Config, RateLimits};
use latchkey_testkit::token_endpoint::TokenEndpoint;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PASSPHRASE: &str = "correct horse battery staple";

/// Holds tokio's paused clock still: while a blocking task is in flight,
/// tokio's test-util does not auto-advance the clock, so the runtime waits
/// for I/O in real time. Dropping this ends the task and lets time run.
pub struct Frozen {
    _release: std::sync::mpsc::Sender<()>,
}

pub fn freeze() -> Frozen {
    let (release, released) = std::sync::mpsc::channel::<()>();
    // The task returns when the sender drops; nobody needs its result.
    drop(tokio::task::spawn_blocking(move || {
        let _ = released.recv();
    }));
    Frozen { _release: release }
}

#[derive(Default)]
pub struct Opts {
    /// Zero: no auto-lock.
    pub idle_timeout: Duration,
    /// Client connections served at once (default 4096, the ceiling: one
    /// test process is one peer, and holds a quarter of it).
    pub max_connections: Option<usize>,
    /// Zero: idle client connections stay open.
    pub connection_idle_timeout: Duration,
    /// `None`: no rate limits. Every test connects from this one process
    /// (one app), some with thousands of calls on a clock that stands
    /// still, so only the tests of the limits (`ratelimit.rs`) set them.
    pub rate_limits: Option<RateLimits>,
}

/// One daemon served by `run` on this test's runtime, its socket, and the
/// token endpoint its providers point at.
pub struct TestDaemon {
    pub socket: PathBuf,
    pub endpoint: TokenEndpoint,
    /// `Some` except inside [`TestDaemon::pass`] and [`TestDaemon::running`].
    frozen: Option<Frozen>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    /// Holds the vault file and the socket; removed on drop.
    _dir: tempfile::TempDir,
}

impl TestDaemon {
    pub async fn start(opts: Opts) -> TestDaemon {
        let frozen = freeze();
        let dir = tempfile::tempdir().expect("a temp dir");
        // The client trusts only a socket directory of ours with mode 0700.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("a temp dir of ours can be made private");
        let endpoint = TokenEndpoint::start()
            .await
            .expect("the token endpoint binds 127.0.0.1:0");
        TestDaemon::launch(opts, dir, endpoint, frozen)
    }

    /// Serves a daemon with the vault file and socket in `dir`.
    fn launch(
        opts: Opts,
        dir: tempfile::TempDir,
        endpoint: TokenEndpoint,
        frozen: Frozen,
    ) -> TestDaemon {
        let socket = dir.path().join("latchkey.sock");
        let config = Config {
            vault: latchkey_daemon::VaultLocation::File(dir.path().join("vault.db")),
            socket_path: socket.clone(),
            idle_timeout: opts.idle_timeout,
            frame_timeout: Duration::from_secs(10),
            max_connections: opts.max_connections.unwrap_or(4096),
            connection_idle_timeout: opts.connection_idle_timeout,
            passphrase_file: None,
            key_file: None,
            keyring: keyring::BackendChoice::Auto,
            cli_path: None,
            approval_timeout: Duration::from_secs(60),
            notify: false,
            audit_retention: latchkey_daemon::AuditRetention::DEFAULT,
            rate_limits: opts.rate_limits.unwrap_or(RateLimits::OFF),
            clock: Clock::following_tokio(),
        };
        let name = socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .expect("a valid socket path");
        let listener = ListenerOptions::new()
            .name(name)
            .create_tokio()
            .expect("binds the socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(latchkey_daemon::run(config, listener, async {
            let _ = stopped.await;
        }));
        TestDaemon {
            socket,
            endpoint,
            frozen: Some(frozen),
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect_to(&self.socket)
            .await
            .expect("connects and says hello")
    }

    /// Lets `secs` seconds pass on the daemon's clock, its ticker running.
    pub async fn pass(&mut self, secs: u64) {
        self.frozen = None;
        tokio::time::sleep(Duration::from_secs(secs)).await;
        self.frozen = Some(freeze());
    }

    /// Awaits `work` with the clock running (for what waits on timers).
    pub async fn running<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        self.frozen = None;
        let out = work.await;
        self.frozen = Some(freeze());
        out
    }

    /// Stops the daemon as SIGTERM would and checks `run` returned Ok.
    pub async fn stop(mut self) {
        self.frozen = None;
        if let Some(stop) = self.stop.take() {
            // Already gone when a test sent `daemon.shutdown`.
            let _ = stop.send(());
        }
        let result = (&mut self.task).await.expect("the daemon task panicked");
        result.expect("run returned an error");
    }

    /// Stops the daemon and starts a new one on the same vault file,
    /// socket and token endpoint (a restart, as after `daemon.shutdown`).
    pub async fn restart(mut self, opts: Opts) -> TestDaemon {
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("a temp dir"));
        let endpoint = self.endpoint.clone();
        self.stop().await;
        let frozen = freeze();
        // The old daemon's socket file is left behind; bind anew.
        let _ = std::fs::remove_file(dir.path().join("latchkey.sock"));
        TestDaemon::launch(opts, dir, endpoint, frozen)
    }

    /// `vault.init` with a passphrase, then provider `idp` at the endpoint
    /// (token and device endpoints, no revocation endpoint).
    pub async fn init(&self, client: &mut Client) {
        let init = InitParams {
            breached_list: None,
            passphrase: Some(SecretString::from(PASSPHRASE)),
            keyring: false,
        };
        client
            .request::<VaultInit>(&init)
            .await
            .expect("vault.init");
        let provider = ProviderAddParams {
            name: "idp".into(),
            issuer: None,
            endpoints: Endpoints {
                token_endpoint: Some(self.endpoint.url.clone()),
                device_authorization_endpoint: Some(self.endpoint.device_url.clone()),
                ..Endpoints::default()
            },
            oauth1: None,
        };
        client
            .request::<ProviderAdd>(&provider)
            .await
            .expect("provider.add");
    }
}

/// A client-credentials credential at `idp` with scopes `read write`.
pub async fn add_cc_credential(client: &mut Client, name: &str) {
    let params = CredentialAddParams {
        name: name.into(),
        provider: "idp".into(),
        client_id: format!("{name}-client"),
        client_secret: Some(SecretString::from("s3cret")),
        grant: GrantType::ClientCredentials,
        auth: AuthMethod::ClientSecretBasic,
        scopes: vec!["read".into(), "write".into()],
        redirect_uri: None,
        access: Some(latchkey_client::protocol::Access::Open),
        exchange: None,
        client_key: None,
        assertion_audience: None,
        dpop: None,
        proof: Some(latchkey_client::protocol::Proof::passphrase(
            secrecy::SecretString::from(PASSPHRASE),
        )),
        signature_method: None,
        private_key: None,
    };
    client
        .request::<CredentialAdd>(&params)
        .await
        .expect("credential.add");
}

/// A device-code credential at `idp` for the endpoint's public client `client_id`.
pub async fn add_device_credential(client: &mut Client, name: &str, client_id: &str) {
    let params = CredentialAddParams {
        name: name.into(),
        provider: "idp".into(),
        client_id: client_id.into(),
        client_secret: None,
        grant: GrantType::DeviceCode,
        auth: AuthMethod::None,
        scopes: vec!["read".into()],
        redirect_uri: None,
        access: Some(latchkey_client::protocol::Access::Open),
        exchange: None,
        client_key: None,
        assertion_audience: None,
        dpop: None,
        proof: Some(latchkey_client::protocol::Proof::passphrase(
            secrecy::SecretString::from(PASSPHRASE),
        )),
        signature_method: None,
        private_key: None,
    };
    client
        .request::<CredentialAdd>(&params)
        .await
        .expect("credential.add");
}

pub async fn unlock(client: &mut Client, passphrase: &str) -> Result<UnlockResult, Error> {
    let params = UnlockParams {
        passphrase: Some(SecretString::from(passphrase)),
        ..UnlockParams::default()
    };
    client.request::<VaultUnlock>(&params).await
}

pub async fn stats(client: &mut Client) -> StatsResult {
    client
        .request::<DaemonStats>(&Empty {})
        .await
        .expect("daemon.stats")
}

pub async fn show(client: &mut Client, name: &str) -> CredentialInfo {
    let params = NameParams { name: name.into() };
    client
        .request::<CredentialShow>(&params)
        .await
        .expect("credential.show")
}

pub async fn vault_state(client: &mut Client) -> VaultState {
    client.status().await.expect("status").vault
}

pub fn secret(reply: &TokenReply) -> String {
    reply.access_token.expose_secret().to_owned()
}

/// The error kind of a call that must fail.
pub fn kind<T>(result: Result<T, Error>) -> ErrorKind {
    match result {
        Ok(_) => panic!("expected an error, the call succeeded"),
        Err(e) => e
            .kind()
            .unwrap_or_else(|| panic!("expected a daemon error, got: {e}")),
    }
}

/// Kind and `retry_after` of a call that must fail.
pub fn kind_and_retry<T>(result: Result<T, Error>) -> (ErrorKind, Option<u64>) {
    match result {
        Ok(_) => panic!("expected an error, the call succeeded"),
        Err(Error::Daemon {
            kind, retry_after, ..
        }) => (kind, retry_after),
        Err(e) => panic!("expected a daemon error, got: {e}"),
    }
}
