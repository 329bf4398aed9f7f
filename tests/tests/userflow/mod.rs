//! Shared set-up of the user-flow tests (login, refresh, revoke, crash): a
//! test provider with user clients, a daemon with an unlocked vault, and
//! credentials for those clients. Not a test target itself.

#![allow(dead_code)]

use latchkey_client::protocol::{AuthMethod, CredentialInfo, GrantType};
use latchkey_client::ErrorKind;
use latchkey_tests::daemon::{DaemonHandle, TestEnv};
use latchkey_tests::provider::{ClientSpec, Provider};
use serde_json::{json, Value};

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
    let env = TestEnv::new();
    let daemon = env.start_and_init();
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
