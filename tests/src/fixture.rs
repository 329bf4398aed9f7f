//! The set-ups tests share, one helper each: a client-credentials
//! credential ([`client_credentials`], [`svc_env`]); the user-flow world of
//! the login / refresh / revoke / crash tests (a provider with user
//! clients, a daemon with an unlocked vault, credentials for those
//! clients); and many concurrent callers of one credential
//! ([`concurrent_tokens`]).

use std::time::Duration;

use latchkey_client::protocol::{AuthMethod, CredentialInfo, GrantType};
use latchkey_client::ErrorKind;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::env::TestEnv;
use crate::process::{DaemonHandle, DaemonOpts};
use crate::provider::{ClientSpec, Provider};

// ------------------------------------------------- client credentials ---

/// The provider's local name in the daemon, in client-credentials tests.
pub const TEST_PROVIDER: &str = "test";
/// The client most client-credentials tests use (see [`svc`]).
pub const SVC_ID: &str = "svc";
pub const SVC_SECRET: &str = "s3cret";

/// The usual client-credentials client: [`SVC_ID`] / [`SVC_SECRET`],
/// `client_secret_basic`, scope `api:read`.
pub fn svc() -> ClientSpec {
    ClientSpec::client_credentials(SVC_ID, SVC_SECRET, "client_secret_basic", "api:read")
}

/// The client-credentials client the DPoP tests bind tokens for:
/// [`DPOP_SVC_ID`] / [`DPOP_SVC_SECRET`], `client_secret_basic`, scope
/// `api:read`.
pub const DPOP_SVC_ID: &str = "dpop-svc";
pub const DPOP_SVC_SECRET: &str = "dpop-s3cret";

pub fn dpop_svc() -> ClientSpec {
    ClientSpec::client_credentials(
        DPOP_SVC_ID,
        DPOP_SVC_SECRET,
        "client_secret_basic",
        "api:read",
    )
}

/// `latchkey credential add NAME` for the client-credentials client
/// `client` at the daemon's provider `provider`: its id, auth method and
/// scopes, the secret on stdin. Asserts success.
#[track_caller]
pub fn client_credentials(env: &TestEnv, provider: &str, name: &str, client: &ClientSpec) {
    client_credentials_with(env, provider, name, client, &[]);
}

/// [`client_credentials`] with more flags (e.g. `--dpop`).
#[track_caller]
pub fn client_credentials_with(
    env: &TestEnv,
    provider: &str,
    name: &str,
    client: &ClientSpec,
    extra: &[&str],
) {
    let secret = client
        .client_secret
        .as_deref()
        .expect("a client-credentials client has a secret");
    let mut args = vec![
        "credential",
        "add",
        name,
        "--provider",
        provider,
        "--client-id",
        &client.client_id,
        "--auth",
        &client.auth_method,
        "--client-secret-stdin",
    ];
    if !client.scope.is_empty() {
        args.extend(["--scope", &client.scope]);
    }
    args.extend_from_slice(extra);
    env.cli(&args).stdin(secret).run().success();
}

/// A fresh vault (CLI `init`), `p` added as [`TEST_PROVIDER`], and
/// credential `name` for the [`dpop_svc`] client, with `extra` flags
/// (`--dpop` binds its tokens).
pub fn dpop_cli_env(p: &Provider, name: &str, extra: &[&str]) -> TestEnv {
    let env = TestEnv::new();
    env.init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    client_credentials_with(&env, TEST_PROVIDER, name, &dpop_svc(), extra);
    env
}

/// A fresh vault (CLI `init`, the daemon started by the CLI), `p` added as
/// [`TEST_PROVIDER`], and credential `name` for the [`svc`] client.
pub fn svc_cli_env(p: &Provider, name: &str) -> TestEnv {
    let env = TestEnv::new();
    env.init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    client_credentials(&env, TEST_PROVIDER, name, &svc());
    env
}

/// A daemon started with `opts`, a fresh vault (CLI `init`), `p` added as
/// [`TEST_PROVIDER`], and credential `name` for the [`svc`] client.
pub fn svc_env(p: &Provider, opts: DaemonOpts, name: &str) -> (TestEnv, DaemonHandle) {
    let env = TestEnv::new();
    let daemon = env.start_daemon_with(opts);
    env.init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    client_credentials(&env, TEST_PROVIDER, name, &svc());
    (env, daemon)
}

// ----------------------------------------------------- many callers ---

/// Bound on any one async call of a test.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The runtime concurrent tests drive their async clients on: two worker
/// threads, like the machines CI runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
}

/// Through the CLI: provider `local` at the in-process token endpoint
/// `url`, and credential `svc` of it (client `svc-client`, secret
/// `s3cret` on stdin, `client_secret_basic`).
pub fn local_svc(env: &TestEnv, url: &str) {
    env.latchkey(&["provider", "add", "local", "--token-endpoint", url])
        .success();
    env.cli(&[
        "credential",
        "add",
        "svc",
        "--provider",
        "local",
        "--client-id",
        "svc-client",
        "--auth",
        "client_secret_basic",
        "--client-secret-stdin",
    ])
    .stdin("s3cret")
    .run()
    .success();
}

/// `n` callers of `token.get` for `credential`, each on its own connection
/// (all open before anyone asks), released at once behind a barrier
/// ([`latchkey_testkit::burst()`]). Returns every caller's access token, in
/// caller order; panics unless each gets one within [`CALL_TIMEOUT`].
pub fn concurrent_tokens(env: &TestEnv, credential: &str, n: usize) -> Vec<String> {
    runtime().block_on(async {
        let clients = env.async_clients(n).await;
        let burst = latchkey_testkit::burst(clients, |mut client| {
            let credential = credential.to_owned();
            async move {
                tokio::time::timeout(CALL_TIMEOUT, client.token(&credential))
                    .await
                    .expect("token.get answered in time")
                    .map(|t| t.access_token.expose_secret().to_string())
            }
        })
        .await
        .expect("no caller panicked");
        burst
            .results
            .into_iter()
            .map(|r| r.expect("every caller gets a token"))
            .collect()
    })
}

// ---------------------------------------------------------- user flows ---

/// What every user client may ask for, and what credentials ask for.
pub const SCOPE: &str = "openid offline_access api:read api:write";
pub const SCOPES: &[&str] = &["openid", "offline_access", "api:read", "api:write"];

/// A confidential client standing in for a resource server: it introspects
/// everybody's tokens (RFC 7662).
pub const RS_ID: &str = "resource-server";
pub const RS_SECRET: &str = "rs-secret-0123456789";

/// The public user client (`none`).
pub const PUBLIC_ID: &str = "app-public";
/// The confidential user client (`client_secret_basic`).
pub const CONF_ID: &str = "app-conf";
pub const CONF_SECRET: &str = "conf-secret-0123456789";

/// The provider's local name in the daemon.
pub const IDP: &str = "idp";

/// The two user clients and the introspecting one, with this access-token
/// lifetime for the user clients.
pub fn clients(access_token_ttl: u64) -> Vec<Value> {
    let with_ttl = |spec: ClientSpec| {
        let mut v = spec.to_json();
        v["access_token_ttl"] = json!(access_token_ttl);
        v
    };
    vec![
        with_ttl(ClientSpec::user(PUBLIC_ID, None, "none", SCOPE)),
        with_ttl(ClientSpec::user(
            CONF_ID,
            Some(CONF_SECRET),
            "client_secret_basic",
            SCOPE,
        )),
        ClientSpec::client_credentials(RS_ID, RS_SECRET, "client_secret_basic", "").to_json(),
    ]
}

/// A provider with [`clients`] and these extra settings merged in.
pub fn provider(access_token_ttl: u64, extra: Value) -> Provider {
    let mut config = json!({ "clients": clients(access_token_ttl) });
    if let Value::Object(map) = extra {
        for (k, v) in map {
            config[k] = v;
        }
    }
    Provider::start_with(config)
}

/// A daemon (unlocking at start from the passphrase file) with a fresh
/// vault and the provider added by discovery as [`IDP`].
pub fn env_with(p: &Provider) -> (TestEnv, DaemonHandle) {
    env_with_opts(p, DaemonOpts::new())
}

/// [`env_with`], the daemon started with `opts` too.
pub fn env_with_opts(p: &Provider, opts: DaemonOpts) -> (TestEnv, DaemonHandle) {
    let env = TestEnv::new();
    let daemon = env.start_daemon_with(opts.unlocked(&env));
    env.init();
    env.add_provider(IDP, p.issuer());
    (env, daemon)
}

/// Adds a credential `name` for the public client.
pub fn add_public(env: &TestEnv, name: &str, grant: GrantType) -> CredentialInfo {
    env.add_user_credential(name, IDP, PUBLIC_ID, None, AuthMethod::None, grant, SCOPES)
}

/// Adds a credential `name` for the confidential client.
pub fn add_confidential(env: &TestEnv, name: &str, grant: GrantType) -> CredentialInfo {
    env.add_user_credential(
        name,
        IDP,
        CONF_ID,
        Some(CONF_SECRET),
        AuthMethod::ClientSecretBasic,
        grant,
        SCOPES,
    )
}

/// The daemon's error kind, or a panic naming what came instead.
#[track_caller]
pub fn kind_of<T: std::fmt::Debug>(r: Result<T, latchkey_client::Error>) -> (ErrorKind, String) {
    match r {
        Err(e) => (
            e.kind()
                .unwrap_or_else(|| panic!("expected a daemon error, got {e}")),
            e.to_string(),
        ),
        Ok(v) => panic!("expected a daemon error, got {v:?}"),
    }
}

/// Introspection as the resource server.
pub fn active(p: &Provider, token: &str) -> bool {
    p.is_active(token, RS_ID, RS_SECRET)
}

/// The newest refresh token the provider issued to `client_id` (the one
/// the daemon holds after its last refresh).
#[track_caller]
pub fn newest_refresh_token(p: &Provider, client_id: &str) -> String {
    p.refresh_tokens(client_id)
        .last()
        .unwrap_or_else(|| panic!("the provider issued no refresh token to {client_id}"))
        .token
        .clone()
}
