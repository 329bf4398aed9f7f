//! User logins end to end, through the protocol (`login.start` /
//! `login.wait`), against oidc-provider: authorization code + PKCE with a
//! loopback redirect for a public and a confidential client, the callback's
//! `state` check, security headers and single use, timeouts, a refused
//! consent, and the device flow approved and denied.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use std::time::{Duration, Instant};

use latchkey_client::protocol::{GrantType, LoginStartParams};
use latchkey_client::ErrorKind;
use latchkey_tests::browser::{query_param, Browser, Decision};
use latchkey_tests::fixture::*;
use latchkey_tests::provider::{Provider, DEVICE_CODE_GRANT};
use reqwest::Url;
use secrecy::ExposeSecret;
use serde_json::json;

fn start(env: &latchkey_tests::TestEnv, name: &str) -> (String, Url) {
    let started = env
        .login_start(&LoginStartParams {
            credential: name.into(),
            ..Default::default()
        })
        .expect("login.start");
    assert!(started.user_code.is_none() && started.verification_uri.is_none());
    let url = Url::parse(
        started
            .authorization_url
            .as_deref()
            .expect("an authorization URL"),
    )
    .expect("the authorization URL parses");
    (started.login_id, url)
}

/// The authorization URL carries what RFC 6749/7636/8252 and OIDC require.
fn check_authorization_url(p: &Provider, url: &Url, client_id: &str) {
    let endpoint = p.discovery()["authorization_endpoint"].as_str().unwrap();
    assert_eq!(
        format!("{}{}", url.origin().ascii_serialization(), url.path()),
        endpoint,
        "the URL points at the discovered authorization endpoint"
    );
    let q = |name: &str| query_param(url, name);
    assert_eq!(q("response_type").as_deref(), Some("code"));
    assert_eq!(q("client_id").as_deref(), Some(client_id));
    assert_eq!(q("code_challenge_method").as_deref(), Some("S256"));
    let challenge = q("code_challenge").expect("a PKCE code_challenge");
    assert_eq!(challenge.len(), 43, "S256 challenge: 32 bytes base64url");
    let state = q("state").expect("a state");
    assert!(state.len() >= 16, "state is random enough: {state:?}");
    assert!(q("nonce").is_some_and(|n| n.len() >= 16), "OIDC: a nonce");
    let redirect = Url::parse(&q("redirect_uri").expect("a redirect_uri")).unwrap();
    assert_eq!(redirect.scheme(), "http");
    assert_eq!(
        redirect.host_str(),
        Some("127.0.0.1"),
        "loopback IP literal (RFC 8252 §7.3)"
    );
    assert!(
        redirect.port().is_some_and(|p| p != 0),
        "an ephemeral port: {redirect}"
    );
    assert_eq!(redirect.path(), "/callback");
    assert!(redirect.query().is_none() && redirect.fragment().is_none());
    let scopes: Vec<String> = q("scope")
        .unwrap_or_default()
        .split(' ')
        .map(str::to_string)
        .collect();
    for s in SCOPES {
        assert!(
            scopes.iter().any(|x| x == s),
            "scope {s} asked for: {scopes:?}"
        );
    }
    assert!(q("client_secret").is_none(), "never a secret in the URL");
}

/// The callback page's headers: nothing to load, frame, sniff or leak.
fn check_security_headers(c: &latchkey_tests::browser::CallbackOutcome) {
    let csp = c.header("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "CSP: {csp:?}");
    assert!(csp.contains("frame-ancestors 'none'"), "CSP: {csp:?}");
    assert_eq!(c.header("referrer-policy"), "no-referrer");
    assert_eq!(c.header("x-frame-options").to_ascii_uppercase(), "DENY");
    assert_eq!(c.header("x-content-type-options"), "nosniff");
    assert!(c.header("cache-control").contains("no-store"));
}

fn auth_code_end_to_end(confidential: bool) {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    let (client_id, expected_auth) = if confidential {
        add_confidential(&env, "app", GrantType::AuthorizationCode);
        (CONF_ID, "client_secret_basic")
    } else {
        add_public(&env, "app", GrantType::AuthorizationCode);
        (PUBLIC_ID, "none")
    };
    assert_eq!(
        env.credential_show("app").state,
        latchkey_client::protocol::CredentialState::NeedsLogin
    );

    let (login_id, url) = start(&env, "app");
    check_authorization_url(&p, &url, client_id);
    let redirect_uri = query_param(&url, "redirect_uri").unwrap();

    let browser = Browser::as_user("alice");
    let callback = browser.authorize(url.as_str());
    assert_eq!(callback.status, 200, "callback page: {}", callback.body);
    check_security_headers(&callback);
    assert!(
        callback
            .url
            .as_str()
            .starts_with(&format!("{redirect_uri}?")),
        "the provider redirected to the exact redirect URI: {} vs {redirect_uri}",
        callback.url
    );
    assert_eq!(callback.param("state"), query_param(&url, "state"));
    assert!(callback.param("code").is_some());

    let result = env.login_wait(&login_id).expect("login.wait");
    assert_eq!(result.credential, "app");
    assert_eq!(
        result.subject.as_deref(),
        Some("alice"),
        "sub from the validated ID token"
    );
    let granted: Vec<&str> = result.scope.split_whitespace().collect();
    for s in ["openid", "api:read", "api:write"] {
        assert!(granted.contains(&s), "granted scope {s}: {}", result.scope);
    }
    assert!(result.refresh_token, "a refresh token was issued");

    let stats = p.stats();
    assert_eq!(stats.grant("authorization_code"), 1, "{stats:?}");
    assert_eq!(
        stats.auth(expected_auth),
        1,
        "the code exchange authenticated as {expected_auth}: {stats:?}"
    );

    let info = env.credential_show("app");
    assert_eq!(
        info.state,
        latchkey_client::protocol::CredentialState::Ready
    );
    assert_eq!(info.subject.as_deref(), Some("alice"));
    assert!(info.has_refresh_token);
    // `status` says whose account the credential holds, and that it needs no login.
    let status: latchkey_client::protocol::StatusResult = env.client().status().unwrap();
    assert_eq!(
        status.accounts.unwrap().get("app").map(String::as_str),
        Some("alice")
    );
    assert_eq!(status.needs_login, Some(Vec::new()));
    let human = env.latchkey(&["status"]);
    assert!(human.out().contains("app: alice"), "{}", human.out());

    let token = env.token_get("app", None).expect("token.get after login");
    let at = token.access_token.expose_secret();
    assert_eq!(p.resource(at), 200, "the resource accepts the token");
    let intro = p.introspect(at, RS_ID, RS_SECRET);
    assert_eq!(intro["active"], json!(true), "{intro}");
    assert_eq!(intro["client_id"], json!(client_id));
    assert_eq!(intro["sub"], json!("alice"));
    // The token came from the login itself: no refresh was needed.
    assert_eq!(p.stats().grant("refresh_token"), 0);
}

#[test]
fn public_client_auth_code_with_pkce_end_to_end() {
    auth_code_end_to_end(false);
}

#[test]
fn confidential_client_basic_auth_code_with_pkce_end_to_end() {
    auth_code_end_to_end(true);
}

#[test]
fn callback_with_a_wrong_state_is_refused_and_the_login_keeps_waiting() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);
    let (login_id, url) = start(&env, "app");
    let browser = Browser::new();
    // The real callback, not opened yet.
    let real = browser.callback_url(url.as_str(), Decision::Approve);
    let code = query_param(&real, "code").unwrap();

    let forge = |query: &str| {
        let mut u = real.clone();
        u.set_query(Some(query));
        browser.open_callback(&u).expect("the listener answers")
    };
    for query in [
        format!("code={code}&state=not-the-state"),
        format!("code={code}"),
        format!("code={code}&state="),
        "error=access_denied&state=forged".to_string(),
    ] {
        let refused = forge(&query);
        assert_eq!(refused.status, 400, "{query}: {}", refused.body);
        check_security_headers(&refused);
    }
    assert_eq!(
        p.stats().grant("authorization_code"),
        0,
        "no code was exchanged on a forged callback"
    );

    // The login still waits: the real callback completes it.
    let good = browser
        .open_callback(&real)
        .expect("the listener still answers");
    assert_eq!(good.status, 200, "{}", good.body);
    let result = env.login_wait(&login_id).expect("login.wait");
    assert_eq!(result.subject.as_deref(), Some("alice"));
    assert_eq!(p.stats().grant("authorization_code"), 1);
}

#[test]
fn a_replayed_callback_after_success_is_refused() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);
    let (login_id, url) = start(&env, "app");
    let browser = Browser::new();
    let first = browser.authorize(url.as_str());
    assert_eq!(first.status, 200);
    env.login_wait(&login_id).expect("login.wait");
    match browser.open_callback(&first.url) {
        Err(_) => {} // the listener is gone: connection refused
        Ok(replay) => {
            assert_eq!(replay.status, 400, "a replay is refused: {}", replay.body);
            check_security_headers(&replay);
        }
    }
    // Nothing more reached the token endpoint.
    assert_eq!(p.stats().grant("authorization_code"), 1);
    // And the waited-for login is gone.
    let (kind, _) = kind_of(env.login_wait(&login_id));
    assert_eq!(kind, ErrorKind::NotFound);
}

#[test]
fn a_login_nobody_completes_times_out_cleanly() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);
    let started = env
        .login_start(&LoginStartParams {
            credential: "app".into(),
            timeout_secs: Some(5),
            ..Default::default()
        })
        .expect("login.start");
    assert_eq!(started.expires_in, 5);
    let url = Url::parse(started.authorization_url.as_deref().unwrap()).unwrap();
    let redirect = Url::parse(&query_param(&url, "redirect_uri").unwrap()).unwrap();
    let t0 = Instant::now();
    let (kind, message) = kind_of(env.login_wait(&started.login_id));
    let waited = t0.elapsed();
    assert_eq!(kind, ErrorKind::ReauthRequired, "{message}");
    assert!(message.contains("timed out"), "{message}");
    assert!(message.contains("latchkey login app"), "{message}");
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(15),
        "waited {waited:?} for a 5 s login"
    );
    // The loopback listener is closed.
    let port = redirect.port().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2)
        )
        .is_err(),
        "nothing listens on the callback port {port} after the timeout"
    );
    assert_eq!(
        env.credential_show("app").state,
        latchkey_client::protocol::CredentialState::NeedsLogin
    );
    assert_eq!(p.stats().token_requests, 0);
    // A late browser finds nobody; a new login works.
    let late = Browser::new().callback_url(url.as_str(), Decision::Approve);
    assert!(Browser::new().open_callback(&late).is_err());
    let result = env.browser_login("app", &Browser::new());
    assert_eq!(result.subject.as_deref(), Some("alice"));
}

#[test]
fn a_refused_consent_is_forbidden() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);
    let (login_id, url) = start(&env, "app");
    let callback = Browser::new().deny(url.as_str());
    assert_eq!(callback.param("error").as_deref(), Some("access_denied"));
    check_security_headers(&callback);
    let (kind, message) = kind_of(env.login_wait(&login_id));
    assert_eq!(kind, ErrorKind::Forbidden, "{message}");
    assert_eq!(
        env.credential_show("app").state,
        latchkey_client::protocol::CredentialState::NeedsLogin
    );
    assert_eq!(p.stats().token_requests, 0);
}

fn device_login(confidential: bool, approve: bool) {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    let client_id = if confidential {
        add_confidential(&env, "tv", GrantType::DeviceCode);
        CONF_ID
    } else {
        add_public(&env, "tv", GrantType::DeviceCode);
        PUBLIC_ID
    };
    let started = env
        .login_start(&LoginStartParams {
            credential: "tv".into(),
            device: true,
            timeout_secs: Some(120),
        })
        .expect("login.start --device");
    assert!(started.authorization_url.is_none());
    let uri = started
        .verification_uri
        .clone()
        .expect("a verification URI");
    let code = started.user_code.clone().expect("a user code");
    assert!(started.expires_in > 0);
    let browser = Browser::as_user("bob");
    let page = if confidential {
        // Type the code in on the plain verification page.
        browser.approve_device(&uri, Some(&code), approve)
    } else {
        let complete = started
            .verification_uri_complete
            .clone()
            .expect("oidc-provider gives verification_uri_complete");
        assert!(complete.contains(&code.replace('-', "")) || complete.contains(&code));
        browser.approve_device(&complete, None, approve)
    };
    let outcome = env.login_wait(&started.login_id);
    let stats = p.stats();
    if approve {
        assert!(
            page.is_device_success(),
            "device page: {}\n{}",
            page.status,
            page.body
        );
        let result = outcome.expect("login.wait after approval");
        assert_eq!(result.subject.as_deref(), Some("bob"));
        assert!(
            result.scope.split_whitespace().any(|s| s == "api:read"),
            "{}",
            result.scope
        );
        assert!(result.refresh_token);
        assert!(stats.grant(DEVICE_CODE_GRANT) >= 1, "{stats:?}");
        let info = env.credential_show("tv");
        assert_eq!(
            info.state,
            latchkey_client::protocol::CredentialState::Ready
        );
        let token = env.token_get("tv", None).expect("token.get");
        let at = token.access_token.expose_secret();
        assert_eq!(p.resource(at), 200);
        assert_eq!(
            p.introspect(at, RS_ID, RS_SECRET)["client_id"],
            json!(client_id)
        );
    } else {
        assert!(
            page.is_device_aborted(),
            "device page: {}\n{}",
            page.status,
            page.body
        );
        let (kind, message) = kind_of(outcome);
        assert_eq!(kind, ErrorKind::Forbidden, "{message}");
        assert!(message.contains("denied"), "{message}");
        assert_eq!(
            env.credential_show("tv").state,
            latchkey_client::protocol::CredentialState::NeedsLogin
        );
        let (kind, _) = kind_of(env.token_get("tv", None));
        assert_eq!(kind, ErrorKind::ReauthRequired);
    }
}

#[test]
fn device_flow_approved_end_to_end_public_client() {
    device_login(false, true);
}

#[test]
fn device_flow_approved_end_to_end_confidential_client_typing_the_code() {
    device_login(true, true);
}

#[test]
fn device_flow_denied_is_forbidden() {
    device_login(false, false);
}

#[test]
fn a_registered_redirect_port_is_used_exactly_and_a_busy_one_is_reported() {
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    // A port nobody uses right now, registered as the credential's redirect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    env.latchkey(&[
        "credential",
        "add",
        "fixed",
        "--provider",
        IDP,
        "--client-id",
        PUBLIC_ID,
        "--grant",
        "authorization_code",
        "--auth",
        "none",
        "--scope",
        SCOPE,
        "--redirect-uri",
        &redirect,
    ])
    .success();
    let started = env
        .login_start(&LoginStartParams {
            credential: "fixed".into(),
            ..Default::default()
        })
        .expect("login.start");
    let url = Url::parse(started.authorization_url.as_deref().unwrap()).unwrap();
    assert_eq!(
        query_param(&url, "redirect_uri").as_deref(),
        Some(redirect.as_str())
    );
    let callback = Browser::new().authorize(url.as_str());
    assert_eq!(callback.status, 200, "{}", callback.body);
    let result = env.login_wait(&started.login_id).expect("login.wait");
    assert!(result.refresh_token);

    // While something else holds the registered port, the login says so.
    let _busy = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let err = env
        .login_start(&LoginStartParams {
            credential: "fixed".into(),
            ..Default::default()
        })
        .expect_err("the registered port is taken");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );

    // Not loopback: refused when the credential is added.
    let r = env.latchkey(&[
        "credential",
        "add",
        "remote",
        "--provider",
        IDP,
        "--client-id",
        PUBLIC_ID,
        "--grant",
        "authorization_code",
        "--auth",
        "none",
        "--redirect-uri",
        "https://app.example.com/cb",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("loopback"), "{}", r.stderr);
}
