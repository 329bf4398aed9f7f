//! The daemon's protocol from a test, through `latchkey_client`: blocking
//! and async clients on the env's socket, one call over a fresh connection
//! ([`TestEnv::rpc`]), and the user-flow verbs (credentials, logins,
//! tokens) the login / refresh / revoke / crash tests drive without the CLI.

use latchkey_client::protocol::{CredentialAdd, CredentialShow, LoginStart, LoginWait};
use std::time::Duration;

use crate::env::TestEnv;
use crate::raw::SOCKET_TIMEOUT;

/// How long `login.wait` may block before the harness gives up.
pub const LOGIN_WAIT_TIMEOUT: Duration = Duration::from_secs(90);

impl TestEnv {
    /// A blocking client on the env's socket (30 s call timeout).
    pub fn client(&self) -> latchkey_client::blocking::Client {
        let mut client = latchkey_client::blocking::Client::connect_to(&self.socket)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.socket.display()));
        client.set_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        client
    }

    /// An async client on the env's socket.
    pub async fn async_client(&self) -> latchkey_client::Client {
        latchkey_client::Client::connect_to(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.socket.display()))
    }

    /// `n` async clients on the env's socket, each its own connection, all
    /// open when this returns.
    pub async fn async_clients(&self, n: usize) -> Vec<latchkey_client::Client> {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(self.async_client().await);
        }
        clients
    }

    /// One call over a fresh blocking connection (30 s reply bound).
    pub fn rpc<M: latchkey_client::Method>(
        &self,
        params: &M::Params,
    ) -> Result<M::Result, latchkey_client::Error> {
        self.client().request::<M>(params)
    }

    /// `credential.add` for a user credential (authorization code or device
    /// code grant), over the protocol.
    #[allow(clippy::too_many_arguments)]
    pub fn add_user_credential(
        &self,
        name: &str,
        provider: &str,
        client_id: &str,
        secret: Option<&str>,
        auth: latchkey_client::protocol::AuthMethod,
        grant: latchkey_client::protocol::GrantType,
        scopes: &[&str],
    ) -> latchkey_client::protocol::CredentialInfo {
        let params = latchkey_client::protocol::CredentialAddParams {
            name: name.into(),
            provider: provider.into(),
            client_id: client_id.into(),
            client_secret: secret.map(|s| secrecy::SecretString::from(s.to_string())),
            grant,
            auth,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            redirect_uri: None,
            access: Some(latchkey_client::protocol::Access::Open),
            exchange: None,
            client_key: None,
            assertion_audience: None,
            dpop: None,
            proof: Some(crate::env::proof()),
            signature_method: None,
            private_key: None,
        };
        self.rpc::<CredentialAdd>(&params)
            .unwrap_or_else(|e| panic!("credential.add {name}: {e}"))
    }

    /// `credential.show`.
    #[track_caller]
    pub fn credential_show(&self, name: &str) -> latchkey_client::protocol::CredentialInfo {
        self.rpc::<CredentialShow>(&latchkey_client::protocol::NameParams { name: name.into() })
            .unwrap_or_else(|e| panic!("credential.show {name}: {e}"))
    }

    /// `login.start`.
    pub fn login_start(
        &self,
        params: &latchkey_client::protocol::LoginStartParams,
    ) -> Result<latchkey_client::protocol::LoginStartResult, latchkey_client::Error> {
        self.rpc::<LoginStart>(params)
    }

    /// `login.wait`, bounded by [`LOGIN_WAIT_TIMEOUT`].
    pub fn login_wait(
        &self,
        login_id: &str,
    ) -> Result<latchkey_client::protocol::LoginResult, latchkey_client::Error> {
        let mut client = self.client();
        client.set_timeout(Some(LOGIN_WAIT_TIMEOUT)).unwrap();
        client.request::<LoginWait>(&latchkey_client::protocol::LoginWaitParams {
            login_id: login_id.into(),
        })
    }

    /// A complete browser login of credential `name`: `login.start`, the
    /// browser through the provider's pages to the loopback callback, then
    /// `login.wait`. Panics unless every step succeeds.
    #[track_caller]
    pub fn browser_login(
        &self,
        name: &str,
        browser: &crate::browser::Browser,
    ) -> latchkey_client::protocol::LoginResult {
        let started = self
            .login_start(&latchkey_client::protocol::LoginStartParams {
                credential: name.into(),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("login.start {name}: {e}"));
        let url = started
            .authorization_url
            .unwrap_or_else(|| panic!("login.start {name} gave no authorization URL"));
        let callback = browser.authorize(&url);
        assert_eq!(
            callback.status, 200,
            "the daemon's callback page refused a good login: {}",
            callback.body
        );
        self.login_wait(&started.login_id)
            .unwrap_or_else(|e| panic!("login.wait {name}: {e}"))
    }

    /// `token.get` with an optional `min_ttl`.
    pub fn token_get(
        &self,
        name: &str,
        min_ttl: Option<u64>,
    ) -> Result<latchkey_client::TokenReply, latchkey_client::Error> {
        self.client().token_with(&latchkey_client::TokenParams {
            credential: name.into(),
            scopes: None,
            min_ttl,
            confirm_wait_secs: None,
        })
    }
}
