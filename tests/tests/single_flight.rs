//! The token path under load and under provider failure: many concurrent
//! callers of a cold credential share one token request (single-flight),
//! and a failing provider (503 + Retry-After) is backed off from instead
//! of being hit by every retry, then used again once the delay has passed.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use std::time::Duration;

use latchkey_client::{ErrorKind, TokenParams};
use latchkey_tests::fixture::{concurrent_tokens, runtime, svc, svc_env, CALL_TIMEOUT};
use latchkey_tests::provider::Provider;
use latchkey_tests::{wait_for, DaemonOpts, TestEnv};
use secrecy::ExposeSecret;
use serde_json::json;

/// Concurrent callers in the single-flight test.
const CALLERS: usize = 200;

fn setup(p: &Provider) -> TestEnv {
    svc_env(p, DaemonOpts::new(), "svc").0
}

#[test]
fn two_hundred_concurrent_callers_share_one_token_request() {
    let p = Provider::start(&[svc()]);
    let env = setup(&p);
    // Every token request takes 300 ms, so all callers arrive while the
    // first one is in flight.
    p.delay_all(300);
    let tokens = concurrent_tokens(&env, "svc", CALLERS);
    p.delay_all(0);
    assert_eq!(tokens.len(), CALLERS);
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "every caller got the same token"
    );
    let stats = p.stats();
    assert_eq!(
        stats.token_requests, 1,
        "{CALLERS} callers, one request: {stats:?}"
    );
    assert_eq!(p.introspect(&tokens[0], "svc", "s3cret")["active"], true);
    // And afterwards it is simply cached.
    assert_eq!(env.token("svc"), tokens[0]);
    assert_eq!(p.stats().token_requests, 1);
}

#[test]
fn a_failing_provider_is_backed_off_from_then_used_again() {
    let p = Provider::start(&[svc()]);
    let env = setup(&p);
    p.inject(json!({"kind": "status", "status": 503, "retry_after": 2, "count": 1}));

    // The backoff window is short (Retry-After 2, counted in whole seconds:
    // at least 1 s of real time), so everything that must happen inside it
    // comes first and talks only to the daemon.
    let mut client = env.client();
    let err = client.token("svc").expect_err("the provider answered 503");
    assert_eq!(err.kind(), Some(ErrorKind::ProviderUnavailable), "{err}");
    // A burst of immediate retries, on one connection and on many...
    let mut retry_after = Vec::new();
    for i in 0..50 {
        let err = if i % 2 == 0 {
            client.token("svc").expect_err("still backing off")
        } else {
            env.client().token("svc").expect_err("still backing off")
        };
        assert_eq!(err.kind(), Some(ErrorKind::ProviderUnavailable), "{err}");
        if let latchkey_client::Error::Daemon { retry_after: r, .. } = err {
            retry_after.push(r);
        }
    }
    // ...and the CLI, which says so with exit 7.
    let r = env.latchkey(&["token", "svc"]);
    r.code_is(7);
    assert!(r.stdout.is_empty());
    let shown = env
        .latchkey(&["credential", "show", "svc", "--json"])
        .json();
    assert_eq!(shown["state"], "backoff", "{shown}");
    // None of it cost the provider a request.
    let stats = p.stats();
    assert_eq!(
        (stats.token_requests, stats.faults_pending),
        (1, 0),
        "one request (the 503), none while backing off: {stats:?}"
    );
    assert!(
        retry_after.iter().all(|r| r.is_some_and(|s| s <= 2)),
        "each refusal says when to retry, never beyond the provider's Retry-After: {retry_after:?}"
    );

    // Once Retry-After has passed, exactly one request succeeds.
    let token = wait_for(
        "the backoff to end",
        Duration::from_secs(15),
        Duration::from_millis(250),
        || client.token("svc").ok(),
    );
    assert_eq!(p.stats().token_requests, 2, "one request after the backoff");
    let token = token.access_token.expose_secret().to_string();
    assert_eq!(p.introspect(&token, "svc", "s3cret")["active"], true);
    assert_eq!(env.token("svc"), token);
    let shown = env
        .latchkey(&["credential", "show", "svc", "--json"])
        .json();
    assert_eq!(shown["state"], "ready", "{shown}");
    assert_eq!(p.stats().token_requests, 2);
}

#[test]
fn concurrent_callers_of_a_failing_request_share_its_failure() {
    let p = Provider::start(&[svc()]);
    let env = setup(&p);
    p.delay_all(300);
    p.inject(json!({"kind": "status", "status": 500, "count": 1}));
    let kinds = runtime().block_on(async {
        let clients = env.async_clients(50).await;
        latchkey_testkit::burst(clients, |mut client| async move {
            let params = TokenParams {
                credential: "svc".into(),
                ..TokenParams::default()
            };
            tokio::time::timeout(CALL_TIMEOUT, client.token_with(&params))
                .await
                .expect("answered in time")
                .err()
                .and_then(|e| e.kind())
        })
        .await
        .expect("no caller panicked")
        .results
    });
    p.delay_all(0);
    assert!(
        kinds
            .iter()
            .all(|k| *k == Some(ErrorKind::ProviderUnavailable)),
        "{kinds:?}"
    );
    assert_eq!(
        p.stats().token_requests,
        1,
        "one failing request, not one per caller"
    );
}
