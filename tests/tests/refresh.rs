//! The refresh-token life cycle end to end against oidc-provider (refresh
//! tokens rotate on every use): refresh after expiry, rotation retiring the
//! old refresh token at the provider, single-flight under 1,000 concurrent
//! callers, access revoked by the user at the provider (→ `needs_login`,
//! then a new login restores), provider faults mapped to error kinds with
//! the grant kept, and backoff instead of a retry storm.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use latchkey_client::protocol::{DaemonStats, Empty, GrantType, StatsResult, Status, StatusResult};
use latchkey_client::{ErrorKind, TokenParams};
use latchkey_tests::browser::Browser;
use latchkey_tests::fixture::*;
use latchkey_tests::provider::Provider;
use latchkey_tests::{DaemonOpts, TestEnv};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

/// A `min_ttl` longer than any token here lives: forces one refresh.
const FORCE: Option<u64> = Some(7200);

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn refreshes(p: &Provider) -> u64 {
    p.stats().grant("refresh_token")
}

/// Logs in credential `name` (of `client_id`) with 2 s access tokens, then
/// switches the client to 1 h tokens and lets the login's token expire: the
/// credential holds an expired access token and a live refresh token, and
/// no proactive refresh of a short-lived token muddies the counts.
fn login_then_expire(p: &Provider, env: &TestEnv, name: &str, client_id: &str) {
    let result = env.browser_login(name, &Browser::new());
    assert!(result.refresh_token);
    p.set_access_token_ttl(client_id, 3600);
    std::thread::sleep(Duration::from_millis(2500));
}

#[test]
fn an_expired_access_token_is_refreshed_and_the_refresh_token_rotates() {
    let p = provider(2, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);
    login_then_expire(&p, &env, "app", PUBLIC_ID);
    let issued = p.refresh_tokens(PUBLIC_ID);
    assert_eq!(issued.len(), 1, "the login issued one refresh token");
    let rt0 = issued[0].token.clone();
    assert!(active(&p, &rt0));

    // The login's 2 s token has expired: token.get refreshes, once.
    assert_eq!(refreshes(&p), 0);
    let t1 = env.token_get("app", None).expect("token.get after expiry");
    assert_eq!(refreshes(&p), 1);
    let at1 = t1.access_token.expose_secret().to_string();
    assert_eq!(p.resource(&at1), 200, "the refreshed token is accepted");
    let exp = t1.expires_at.expect("expires_at");
    assert!(
        (exp - unix_now() - 3600).abs() <= 5,
        "expires_at tells the truth: {exp}"
    );

    // Rotation: the old refresh token is spent, the new one is live.
    let issued = p.refresh_tokens(PUBLIC_ID);
    assert_eq!(issued.len(), 2, "{issued:?}");
    let rt1 = issued[1].token.clone();
    assert!(issued[0].consumed);
    assert!(
        !active(&p, &rt0),
        "the rotated-out refresh token is inactive"
    );
    assert!(active(&p, &rt1), "the new refresh token is active");

    // Fresh enough: answered from memory.
    let again = env.token_get("app", None).unwrap();
    assert_eq!(again.access_token.expose_secret(), at1);
    assert_eq!(refreshes(&p), 1);

    // min_ttl beyond any token's life: exactly one refresh, rotating again.
    let t2 = env.token_get("app", FORCE).expect("forced refresh");
    assert_eq!(
        refreshes(&p),
        2,
        "one request, no loop, although 1 h < min_ttl"
    );
    let at2 = t2.access_token.expose_secret().to_string();
    assert_ne!(at2, at1);
    assert_eq!(p.resource(&at2), 200);
    let rt2 = p.refresh_tokens(PUBLIC_ID)[2].token.clone();
    assert!(!active(&p, &rt1) && active(&p, &rt2));

    // The spent refresh token really does not refresh at the provider; its
    // reuse makes oidc-provider end the whole grant (reuse detection), which
    // the daemon then learns on its next refresh.
    let (status, body) = p.refresh_directly(&rt0, PUBLIC_ID, None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], json!("invalid_grant"), "{body}");
    assert!(!active(&p, &rt2), "reuse ended the grant");
    let (kind, message) = kind_of(env.token_get("app", FORCE));
    assert_eq!(kind, ErrorKind::ReauthRequired, "{message}");
    assert!(message.contains("latchkey login app"), "{message}");
}

#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
fn raise_nofile(want: u64) {
    // SAFETY: getrlimit/setrlimit on a valid, owned struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && (lim.rlim_cur as u64) < want {
            lim.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn a_thousand_concurrent_callers_on_an_expired_token_cause_one_refresh() {
    const CALLERS: usize = 1000;
    // 1,000 client sockets here and 1,000 in the daemon (which inherits the limit).
    raise_nofile(4 * CALLERS as u64);
    let p = provider(2, json!({}));
    let (env, _d) = env_with(&p);
    add_confidential(&env, "app", GrantType::AuthorizationCode);
    login_then_expire(&p, &env, "app", CONF_ID);
    p.reset();
    // The refresh takes 500 ms: every caller arrives while it is in flight.
    p.delay_all(500);
    let tokens = concurrent_tokens(&env, "app", CALLERS);
    p.delay_all(0);
    let stats = p.stats();
    assert_eq!(
        stats.grant("refresh_token"),
        1,
        "exactly one refresh: {stats:?}"
    );
    assert_eq!(stats.token_requests, 1, "{stats:?}");
    assert_eq!(tokens.len(), CALLERS);
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "every caller got the one refreshed token"
    );
    assert_eq!(p.resource(&tokens[0]), 200);
    let daemon: StatsResult = env.rpc::<DaemonStats>(&Empty {}).unwrap();
    assert_eq!(daemon.fetches, 1, "{daemon:?}");
    assert_eq!(daemon.hits + daemon.waits, CALLERS as u64, "{daemon:?}");
}

#[test]
fn access_revoked_at_the_provider_needs_login_and_a_new_login_restores() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_confidential(&env, "app", GrantType::AuthorizationCode);
    env.browser_login("app", &Browser::new());
    let before = env.token_get("app", None).unwrap();
    assert_eq!(p.resource(before.access_token.expose_secret()), 200);

    // The user revokes the app's access in the provider's account settings.
    assert!(p.revoke_grants(CONF_ID) >= 1);
    assert_eq!(p.resource(before.access_token.expose_secret()), 401);
    p.reset();

    let (kind, message) = kind_of(env.token_get("app", FORCE));
    assert_eq!(kind, ErrorKind::ReauthRequired, "{message}");
    assert!(message.contains("latchkey login app"), "{message}");
    assert_eq!(refreshes(&p), 1);
    let info = env.credential_show("app");
    assert_eq!(
        info.state,
        latchkey_client::protocol::CredentialState::NeedsLogin,
        "{info:?}"
    );
    assert!(!info.has_refresh_token);

    // Later callers are told the same without asking the provider again,
    // and the credential keeps saying what it needs.
    for min_ttl in [None, FORCE, None] {
        let (kind, message) = kind_of(env.token_get("app", min_ttl));
        assert_eq!(kind, ErrorKind::ReauthRequired, "{message}");
        assert!(message.contains("latchkey login app"), "{message}");
    }
    assert_eq!(
        p.stats().token_requests,
        1,
        "no request without a refresh token"
    );
    let status: StatusResult = env.rpc::<Status>(&Empty {}).unwrap();
    assert_eq!(
        status.needs_login,
        Some(vec!["app".to_string()]),
        "{status:?}"
    );
    let info = env.credential_show("app");
    assert_eq!(
        info.state,
        latchkey_client::protocol::CredentialState::NeedsLogin,
        "credential.show after repeated token.get on a credential that needs a login: {info:?}"
    );
    // Still so once any backoff of those calls has passed.
    std::thread::sleep(Duration::from_millis(2500));
    let info = env.credential_show("app");
    assert_eq!(
        info.state,
        latchkey_client::protocol::CredentialState::NeedsLogin,
        "credential.show a while after token.get on a credential that needs a login: {info:?}"
    );

    // A new login restores it.
    let result = env.browser_login("app", &Browser::as_user("alice"));
    assert!(result.refresh_token);
    let after = env
        .token_get("app", None)
        .expect("token.get after the new login");
    assert_eq!(p.resource(after.access_token.expose_secret()), 200);
    assert_eq!(
        env.credential_show("app").state,
        latchkey_client::protocol::CredentialState::Ready
    );
    let forced = env.token_get("app", FORCE).expect("and it refreshes again");
    assert_eq!(p.resource(forced.access_token.expose_secret()), 200);
}

/// The daemon's error for one call: kind, message, retry_after.
fn error_of(
    r: Result<latchkey_client::TokenReply, latchkey_client::Error>,
) -> (ErrorKind, String, Option<u64>) {
    match r {
        Err(latchkey_client::Error::Daemon {
            kind,
            message,
            retry_after,
        }) => (kind, message, retry_after),
        Err(e) => panic!("expected a daemon error, got {e}"),
        Ok(t) => panic!("expected a daemon error, got {t:?}"),
    }
}

#[test]
fn provider_faults_during_refresh_map_to_error_kinds_and_keep_the_grant() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    let cases: [(&str, Value, ErrorKind, Option<u64>); 5] = [
        (
            "http500",
            json!({"kind":"status","status":500}),
            ErrorKind::ProviderUnavailable,
            None,
        ),
        (
            "http503",
            json!({"kind":"status","status":503,"retry_after":4}),
            ErrorKind::ProviderUnavailable,
            Some(4),
        ),
        (
            "http429",
            json!({"kind":"status","status":429,"retry_after":3}),
            ErrorKind::RateLimited,
            Some(3),
        ),
        (
            "drop",
            json!({"kind":"drop"}),
            ErrorKind::ProviderUnavailable,
            None,
        ),
        (
            "garbage",
            json!({"kind":"garbage"}),
            ErrorKind::ProviderUnavailable,
            None,
        ),
    ];
    for (name, _, _, _) in &cases {
        add_confidential(&env, name, GrantType::AuthorizationCode);
        env.browser_login(name, &Browser::new());
    }
    for (name, fault, want, retry_after) in cases {
        p.reset();
        p.inject(fault.clone());
        let (kind, message, got_retry) = error_of(env.token_get(name, FORCE));
        assert_eq!(kind, want, "{name}: {message}");
        assert!(!message.contains(CONF_SECRET), "{name}: {message}");
        if let Some(ra) = retry_after {
            assert!(
                got_retry.is_some_and(|g| g + 1 >= ra),
                "{name}: retry_after {got_retry:?}, provider said {ra}"
            );
        }
        assert_eq!(refreshes(&p), 1, "{name}: one request");
        let info = env.credential_show(name);
        assert_eq!(
            info.state,
            latchkey_client::protocol::CredentialState::Backoff,
            "{name}: {info:?}"
        );
        assert!(
            info.has_refresh_token,
            "{name}: a transient fault keeps the grant"
        );
        assert!(info.last_error.is_some(), "{name}: {info:?}");

        // Asked again at once: the backoff answers, the provider is not asked.
        let (kind, _, retry) = error_of(env.token_get(name, FORCE));
        assert_eq!(kind, want, "{name}");
        assert!(retry.is_some(), "{name}: the backoff says when to retry");
        assert_eq!(refreshes(&p), 1, "{name}: no request while backing off");

        // Once the backoff has passed, the same refresh token still works.
        let t0 = Instant::now();
        let token = loop {
            match env.token_get(name, FORCE) {
                Ok(t) => break t,
                Err(e) if e.kind() == Some(want) && t0.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{name}: after the fault: {e}"),
            }
        };
        if let Some(ra) = retry_after {
            assert!(
                t0.elapsed() + Duration::from_secs(1) >= Duration::from_secs(ra),
                "{name}: retried after {:?} although the provider said {ra} s",
                t0.elapsed()
            );
        }
        assert_eq!(
            p.resource(token.access_token.expose_secret()),
            200,
            "{name}"
        );
        assert_eq!(
            refreshes(&p),
            2,
            "{name}: one more request once the backoff passed"
        );
        assert_eq!(
            env.credential_show(name).state,
            latchkey_client::protocol::CredentialState::Ready,
            "{name}"
        );
    }
}

/// Hammers `token.get` (forcing a refresh) from 4 threads for `secs`;
/// returns (calls, provider refresh requests). Every call must fail with
/// `want`.
fn hammer(p: &Provider, env: &TestEnv, name: &str, want: ErrorKind, secs: u64) -> (u64, u64) {
    let before = refreshes(p);
    let calls = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut client = env.client();
                while Instant::now() < deadline {
                    let r = client.token_with(&TokenParams {
                        credential: name.into(),
                        scopes: None,
                        min_ttl: FORCE,
                        confirm_wait_secs: None,
                    });
                    match r {
                        Err(e) if e.kind() == Some(want) => {}
                        other => panic!("{name}: expected {want}, got {other:?}"),
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (calls.into_inner(), refreshes(p) - before)
}

#[test]
fn a_failing_provider_gets_no_retry_storm() {
    let p = provider(3600, json!({}));
    // Four callers as fast as they go (thousands of calls a second): the
    // daemon's limit on one app's calls would refuse them before the
    // backoff this measures does.
    let (env, _d) = env_with_opts(&p, DaemonOpts::new().arg("--rate-limit").arg("off"));
    add_confidential(&env, "a", GrantType::AuthorizationCode);
    add_confidential(&env, "b", GrantType::AuthorizationCode);
    env.browser_login("a", &Browser::new());
    env.browser_login("b", &Browser::new());

    // 500s for ever, no Retry-After: exponential backoff (1, 2, 4, 8 s ...,
    // in whole seconds with jitter) allows at most ~5 requests in 6 s.
    p.reset();
    p.inject(json!({"kind":"status","status":500,"count":10000}));
    let (calls, requests) = hammer(&p, &env, "a", ErrorKind::ProviderUnavailable, 6);
    println!("500s: {calls} token.get calls, {requests} refresh requests in 6 s");
    assert!(calls >= 100, "the callers kept asking: {calls}");
    assert!(
        (2..=6).contains(&requests),
        "{requests} refresh requests in 6 s under {calls} calls: at most one per backoff step"
    );

    // 429 with Retry-After 3: never sooner than the provider asked.
    p.reset();
    p.inject(json!({"kind":"status","status":429,"retry_after":3,"count":10000}));
    let (calls, requests) = hammer(&p, &env, "b", ErrorKind::RateLimited, 6);
    println!("429 + Retry-After 3: {calls} token.get calls, {requests} refresh requests in 6 s");
    assert!(calls >= 100, "the callers kept asking: {calls}");
    assert!(
        (1..=3).contains(&requests),
        "{requests} refresh requests in 6 s with Retry-After: 3"
    );

    // Both credentials still hold their grant and recover.
    p.reset();
    for name in ["a", "b"] {
        let info = env.credential_show(name);
        assert!(info.has_refresh_token, "{info:?}");
    }
}

#[test]
fn short_lived_tokens_are_refreshed_ahead_about_once_per_lifetime() {
    // 10 s tokens, used once: a proactive refresh ahead of each expiry is
    // what a caller needs, i.e. about one refresh per 10 s, not one per
    // ticker second.
    let p = provider(10, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);
    env.browser_login("app", &Browser::new());
    env.token_get("app", None).expect("token.get");
    p.reset();
    std::thread::sleep(Duration::from_secs(10));
    let requests = refreshes(&p);
    println!("proactive refreshes of a 10 s token in 10 s: {requests}");
    assert!(
        requests <= 3,
        "{requests} proactive refreshes in 10 s of a token that lives 10 s"
    );
    // And the token served is live.
    let t = env.token_get("app", None).unwrap();
    assert_eq!(p.resource(t.access_token.expose_secret()), 200);
}

#[test]
fn a_scope_subset_gets_its_own_down_scoped_token_and_ungranted_scopes_are_refused() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);
    let result = env.browser_login("app", &Browser::new());
    assert!(result.refresh_token);
    let full = env.token_get("app", None).expect("the login's token");
    assert_eq!(refreshes(&p), 0, "the login's own token is served");

    // A subset: one refresh with `scope=api:read` (RFC 6749 §6).
    let narrow = env
        .client()
        .token_with(&TokenParams {
            credential: "app".into(),
            scopes: Some(vec!["api:read".into()]),
            min_ttl: None,
            confirm_wait_secs: None,
        })
        .expect("a down-scoped token");
    assert_eq!(refreshes(&p), 1);
    assert_eq!(narrow.scope, "api:read");
    let narrow_token = narrow.access_token.expose_secret().to_string();
    assert_ne!(narrow_token, full.access_token.expose_secret());
    let seen = p.introspect(&narrow_token, RS_ID, RS_SECRET);
    assert_eq!(seen["active"], json!(true), "{seen}");
    assert_eq!(
        seen["scope"],
        json!("api:read"),
        "the provider issued it down-scoped: {seen}"
    );

    // Cached per scope set: asking again costs nothing, the full token is untouched.
    let again = env
        .client()
        .token_with(&TokenParams {
            credential: "app".into(),
            scopes: Some(vec!["api:read".into()]),
            min_ttl: None,
            confirm_wait_secs: None,
        })
        .unwrap();
    assert_eq!(again.access_token.expose_secret(), narrow_token);
    let full_again = env.token_get("app", None).unwrap();
    assert_eq!(
        full_again.access_token.expose_secret(),
        full.access_token.expose_secret()
    );
    assert_eq!(refreshes(&p), 1);

    // Never granted: refused without asking the provider.
    let err = env
        .client()
        .token_with(&TokenParams {
            credential: "app".into(),
            scopes: Some(vec!["admin".into()]),
            min_ttl: None,
            confirm_wait_secs: None,
        })
        .expect_err("a scope never granted is refused");
    assert_eq!(err.kind(), Some(ErrorKind::Forbidden), "{err}");
    assert!(err.to_string().contains("admin"), "{err}");
    assert_eq!(refreshes(&p), 1);
}
