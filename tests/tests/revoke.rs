//! Revocation end to end against oidc-provider: `token.revoke` (RFC 7009 at
//! the provider, then forgotten here), `local_only` for a provider without a
//! revocation endpoint, `vault.panic` (every credential revoked, vault
//! locked) and `credential.remove` (revokes first).
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use latchkey_client::protocol::{
    CredentialRemove, CredentialShow, Empty, GrantType, PanicParams, PanicResult, RemoveParams,
    RevokeParams, RevokeResult, Status, StatusResult, TokenRevoke, VaultPanic, VaultState,
};
use latchkey_client::ErrorKind;
use latchkey_tests::browser::Browser;
use latchkey_tests::fixture::*;
use latchkey_tests::provider::Provider;
use latchkey_tests::TestEnv;
use secrecy::ExposeSecret;
use serde_json::json;

/// Logs `name` in and gets a token: returns (access token, refresh token
/// the daemon now holds).
fn logged_in(p: &Provider, env: &TestEnv, name: &str, client_id: &str) -> (String, String) {
    let before = p.refresh_tokens(client_id).len();
    env.browser_login(name, &Browser::new());
    let issued = p.refresh_tokens(client_id);
    assert_eq!(
        issued.len(),
        before + 1,
        "the login issued one refresh token"
    );
    let rt = issued.last().unwrap().token.clone();
    let at = env
        .token_get(name, None)
        .expect("token.get")
        .access_token
        .expose_secret()
        .to_string();
    assert!(active(p, &at) && active(p, &rt));
    (at, rt)
}

fn revoke(
    env: &TestEnv,
    name: &str,
    local_only: bool,
) -> Result<RevokeResult, latchkey_client::Error> {
    env.rpc::<TokenRevoke>(&RevokeParams {
        credential: name.into(),
        local_only,
    })
}

fn grant_rows(env: &TestEnv) -> i64 {
    env.vault_db()
        .query_row("SELECT count(*) FROM grants", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn token_revoke_revokes_at_the_provider_and_forgets_locally() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);
    let (at, rt) = logged_in(&p, &env, "app", PUBLIC_ID);
    assert_eq!(grant_rows(&env), 1);

    let result = revoke(&env, "app", false).expect("token.revoke");
    assert!(
        result.revoked.iter().any(|r| r == "refresh_token"),
        "{result:?}"
    );
    assert!(
        result.revoked.iter().any(|r| r == "access_token"),
        "{result:?}"
    );
    assert!(result.forgotten >= 1, "{result:?}");
    assert!(p.stats().revocations >= 1);

    // At the provider: both dead.
    assert!(!active(&p, &at), "the last access token is inactive");
    assert_eq!(p.resource(&at), 401);
    assert!(!active(&p, &rt), "the refresh token is inactive");
    let (status, body) = p.refresh_directly(&rt, PUBLIC_ID, None);
    assert_eq!(status, 400, "the refresh token no longer refreshes: {body}");
    assert_eq!(body["error"], json!("invalid_grant"));

    // Here: forgotten, in memory and on disk.
    let info = env.credential_show("app");
    assert_eq!(
        info.state,
        latchkey_client::protocol::CredentialState::NeedsLogin
    );
    assert!(
        !info.has_refresh_token && info.tokens.is_empty(),
        "{info:?}"
    );
    assert_eq!(
        grant_rows(&env),
        0,
        "the sealed refresh token is gone from the vault"
    );
    let (kind, message) = kind_of(env.token_get("app", None));
    assert_eq!(kind, ErrorKind::ReauthRequired, "{message}");
    assert!(message.contains("latchkey login app"), "{message}");

    // A new login works again.
    env.browser_login("app", &Browser::new());
    assert!(env.token_get("app", None).is_ok());
}

#[test]
fn local_only_revocation_without_a_revocation_endpoint_is_plain_about_it() {
    let p = provider(3600, json!({ "revocation": false }));
    assert!(p.discovery().get("revocation_endpoint").is_none());
    let (env, _d) = env_with(&p);
    add_confidential(&env, "app", GrantType::AuthorizationCode);
    let (at, rt) = logged_in(&p, &env, "app", CONF_ID);

    // Without local_only: refused, saying why and what to do; nothing forgotten.
    let (kind, message) = kind_of(revoke(&env, "app", false));
    assert_eq!(kind, ErrorKind::InvalidRequest, "{message}");
    assert!(message.contains("no revocation endpoint"), "{message}");
    assert!(message.contains("local-only"), "{message}");
    assert!(message.contains("stay valid"), "{message}");
    assert_eq!(
        env.token_get("app", None)
            .unwrap()
            .access_token
            .expose_secret(),
        at,
        "a refused revocation forgets nothing"
    );

    // local_only: forgotten here, plainly not revoked there.
    let result = revoke(&env, "app", true).expect("token.revoke local_only");
    assert!(
        result.revoked.is_empty(),
        "nothing was revoked at the provider: {result:?}"
    );
    assert!(result.forgotten >= 1, "{result:?}");
    assert_eq!(p.stats().revocations, 0);
    assert_eq!(
        env.credential_show("app").state,
        latchkey_client::protocol::CredentialState::NeedsLogin
    );
    assert_eq!(grant_rows(&env), 0);
    let (kind, _) = kind_of(env.token_get("app", None));
    assert_eq!(kind, ErrorKind::ReauthRequired);
    // What the message said: still valid at the provider until they expire.
    assert!(active(&p, &at) && active(&p, &rt));

    // credential.remove follows the same rule.
    env.browser_login("app", &Browser::new());
    let (kind, message) = kind_of(env.rpc::<CredentialRemove>(&RemoveParams {
        name: "app".into(),
        local_only: false,
    }));
    assert_eq!(kind, ErrorKind::InvalidRequest, "{message}");
    assert!(message.contains("not removed"), "{message}");
    assert_eq!(
        env.credential_show("app").state,
        latchkey_client::protocol::CredentialState::Ready
    );
    env.rpc::<CredentialRemove>(&RemoveParams {
        name: "app".into(),
        local_only: true,
    })
    .expect("credential.remove --local-only");
    let (kind, _) = kind_of(
        env.rpc::<CredentialShow>(&latchkey_client::protocol::NameParams { name: "app".into() }),
    );
    assert_eq!(kind, ErrorKind::NotFound);
}

#[test]
fn panic_revokes_every_credential_at_the_provider_and_locks() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "pub", GrantType::AuthorizationCode);
    add_confidential(&env, "conf", GrantType::AuthorizationCode);
    let (at_pub, rt_pub) = logged_in(&p, &env, "pub", PUBLIC_ID);
    let (at_conf, rt_conf) = logged_in(&p, &env, "conf", CONF_ID);

    let result: PanicResult = env
        .rpc::<VaultPanic>(&PanicParams::default())
        .expect("vault.panic");
    assert!(result.locked, "{result:?}");
    assert_eq!(result.credentials.len(), 2, "{result:?}");
    for entry in &result.credentials {
        assert!(entry.error.is_none(), "{entry:?}");
        assert!(
            entry.revoked.iter().any(|r| r == "refresh_token"),
            "{entry:?}"
        );
        assert!(
            entry.revoked.iter().any(|r| r == "access_token"),
            "{entry:?}"
        );
    }
    for (what, token) in [
        ("public access token", &at_pub),
        ("public refresh token", &rt_pub),
        ("confidential access token", &at_conf),
        ("confidential refresh token", &rt_conf),
    ] {
        assert!(!active(&p, token), "{what} is inactive after panic");
    }
    assert_eq!(p.resource(&at_pub), 401);
    assert_eq!(p.resource(&at_conf), 401);

    let status: StatusResult = env.rpc::<Status>(&Empty {}).unwrap();
    assert_eq!(status.vault, VaultState::Locked);
    let (kind, _) = kind_of(env.token_get("pub", None));
    assert_eq!(kind, ErrorKind::Locked);
    assert_eq!(grant_rows(&env), 0, "no refresh token left in the vault");
}

#[test]
fn credential_remove_revokes_at_the_provider_first() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_confidential(&env, "app", GrantType::AuthorizationCode);
    let (at, rt) = logged_in(&p, &env, "app", CONF_ID);
    env.rpc::<CredentialRemove>(&RemoveParams {
        name: "app".into(),
        local_only: false,
    })
    .expect("credential.remove");
    assert!(p.stats().revocations >= 1);
    assert!(!active(&p, &at), "access token revoked");
    assert!(!active(&p, &rt), "refresh token revoked");
    assert_eq!(p.resource(&at), 401);
    let (kind, _) = kind_of(env.token_get("app", None));
    assert_eq!(kind, ErrorKind::NotFound);
    assert_eq!(grant_rows(&env), 0);
}
