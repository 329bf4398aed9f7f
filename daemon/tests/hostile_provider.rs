//! A hostile or broken provider, in-process (see `in_process.rs` for the
//! harness and why the clock is held still): token responses whose values
//! would inject headers, device flows that ask to be polled in a loop,
//! lifetimes of 0 or 1 s, refreshes that keep failing, grants narrowed on
//! refresh.

mod common;

use common::*;
use latchkey_client::protocol::*;
use latchkey_client::Client;
use latchkey_testkit::token_endpoint::{Fault, UserClientConfig};
use std::time::Duration;

/// A device-code credential `user` at `idp` for the endpoint's public
/// client `app` with `scopes`.
async fn add_user(c: &mut Client, scopes: &[&str]) {
    let params = CredentialAddParams {
        name: "user".into(),
        provider: "idp".into(),
        client_id: "app".into(),
        client_secret: None,
        grant: GrantType::DeviceCode,
        auth: AuthMethod::None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
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
    c.request::<CredentialAdd>(&params)
        .await
        .expect("credential.add");
}

fn lifetimes(login: u64, refresh: u64) -> UserClientConfig {
    UserClientConfig {
        login_lifetime: login,
        refresh_lifetime: refresh,
        refresh_delay: Duration::ZERO,
    }
}

/// Starts a device login of `user` with this time limit and waits for it
/// with the clock running.
async fn device_login(
    d: &mut TestDaemon,
    c: &mut Client,
    timeout_secs: Option<u64>,
) -> Result<LoginResult, latchkey_client::Error> {
    let start = LoginStartParams {
        credential: "user".into(),
        device: true,
        timeout_secs,
    };
    let started = c.request::<LoginStart>(&start).await.expect("login.start");
    let wait = LoginWaitParams {
        login_id: started.login_id,
    };
    d.running(c.request::<LoginWait>(&wait)).await
}

fn force() -> TokenParams {
    TokenParams {
        credential: "user".into(),
        scopes: None,
        min_ttl: Some(100_000), // longer than any token here lives
        confirm_wait_secs: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_type_with_a_line_break_is_refused_without_echoing_it() {
    let d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_cc_credential(&mut c, "api").await;
    d.endpoint
        .set_token_type_json(r#""Bearer\r\nX-Injected: yes""#);
    let err = c.token("api").await.expect_err("refused");
    assert_eq!(err.kind(), Some(ErrorKind::ProviderError), "{err}");
    let message = err.to_string();
    assert!(message.contains("token_type"), "{message}");
    assert!(!message.contains("Injected"), "{message}");
    // A type that is a token is kept as the oauth2 crate reads it
    // (lowercased), except the two schemes it is shown as spelled.
    d.endpoint.set_token_type_json(r#""Custom-Scheme""#);
    let mut d = d;
    d.pass(5).await; // past the backoff of the refusal
    let reply = c.token("api").await.expect("a token");
    assert_eq!(reply.token_type, "custom-scheme");
    d.stop().await;
}

/// A provider that echoes the whole request into `error_description`: the
/// error callers see holds none of the secrets sent (client secret, refresh
/// token), no control characters, and a bounded length.
#[tokio::test(start_paused = true)]
async fn an_echoing_provider_never_gets_a_secret_into_an_error() {
    let mut d = TestDaemon::start(Opts::default()).await;
    d.endpoint.add_user_client("app", lifetimes(3600, 3600));
    let mut c = d.client().await;
    d.init(&mut c).await;
    // client_secret_post: the secret is in the body the provider echoes.
    let params = CredentialAddParams {
        name: "api".into(),
        provider: "idp".into(),
        client_id: "api-client".into(),
        client_secret: Some(latchkey_client::secrecy::SecretString::from(
            "s3cret-canary",
        )),
        grant: GrantType::ClientCredentials,
        auth: AuthMethod::ClientSecretPost,
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
    c.request::<CredentialAdd>(&params)
        .await
        .expect("credential.add");
    add_user(&mut c, &["read"]).await;
    device_login(&mut d, &mut c, None).await.expect("approved");
    let refresh_token = d
        .endpoint
        .user_stats("app")
        .last_access
        .expect("minted")
        .0
        .replace("-at-", "-rt-");

    d.endpoint.fail_next(2, Fault::Echo);
    let cc = c.token("api").await.expect_err("refused").to_string();
    let refresh = c
        .token_with(&force())
        .await
        .expect_err("refused")
        .to_string();
    for (message, secret) in [(&cc, "s3cret-canary"), (&refresh, refresh_token.as_str())] {
        assert!(
            message.contains("you sent:"),
            "the echo is quoted: {message}"
        );
        assert!(message.contains("[redacted]"), "{message}");
        assert!(!message.contains(secret), "{message}");
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(
            message.chars().count() < 800,
            "{} chars",
            message.chars().count()
        );
    }
    d.stop().await;
}

/// `interval: 0` and a user who never approves: polls every 5 s (RFC
/// 8628's default), not as fast as the network answers, and the poll ends
/// at the login's time limit with the timed-out error.
#[tokio::test(start_paused = true)]
async fn device_polls_wait_at_least_five_seconds_and_end_at_the_time_limit() {
    let mut d = TestDaemon::start(Opts::default()).await;
    d.endpoint.add_user_client("app", lifetimes(3600, 3600));
    d.endpoint.set_device_interval(0);
    d.endpoint
        .device_answers("app", "authorization_pending", 1_000_000);
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_user(&mut c, &["read"]).await;
    let err = device_login(&mut d, &mut c, Some(60))
        .await
        .expect_err("never approved");
    assert_eq!(err.kind(), Some(ErrorKind::ReauthRequired), "{err}");
    assert!(err.to_string().contains("timed out after 60 s"), "{err}");
    let polls = d.endpoint.user_stats("app").device_polls;
    // At 0, 5, ..., 55 s (and perhaps one at the 60 s edge).
    assert!((12..=13).contains(&polls), "{polls} polls in 60 s");
    d.stop().await;
}

/// `slow_down` adds 5 s to the interval each time (RFC 8628 §3.5).
#[tokio::test(start_paused = true)]
async fn slow_down_adds_five_seconds_each_time() {
    let mut d = TestDaemon::start(Opts::default()).await;
    d.endpoint.add_user_client("app", lifetimes(3600, 3600));
    d.endpoint.set_device_interval(0);
    d.endpoint.device_answers("app", "slow_down", 3);
    d.endpoint
        .device_answers("app", "authorization_pending", 1_000_000);
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_user(&mut c, &["read"]).await;
    let err = device_login(&mut d, &mut c, Some(60))
        .await
        .expect_err("never approved");
    assert_eq!(err.kind(), Some(ErrorKind::ReauthRequired), "{err}");
    // Polls at 0 (slow_down: 10 s), 10 (15 s), 25 (20 s), 45; the next
    // would be at 65, past the limit.
    assert_eq!(d.endpoint.user_stats("app").device_polls, 4);
    d.stop().await;
}

/// A refresh that keeps failing: the proactive refresh backs off
/// exponentially (capped at 5 min) instead of retrying every second.
#[tokio::test(start_paused = true)]
async fn a_failing_proactive_refresh_backs_off() {
    for fault in [
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        Fault::OAuth("invalid_client"),
    ] {
        let mut d = TestDaemon::start(Opts::default()).await;
        d.endpoint.add_user_client("app", lifetimes(60, 60));
        let mut c = d.client().await;
        d.init(&mut c).await;
        add_user(&mut c, &["read"]).await;
        device_login(&mut d, &mut c, None).await.expect("approved");
        c.token("user").await.expect("the login's token");
        d.endpoint.fail_next(1_000_000, fault.clone());
        let before = d.endpoint.requests();
        // Nine minutes: still within the recent-use window of the one call.
        d.pass(9 * 60).await;
        let requests = d.endpoint.requests() - before;
        // Backoff 1, 2, 4, ... 256 s, then 300 s: about ten requests.
        assert!(
            (3..=14).contains(&requests),
            "{fault:?}: {requests} refresh requests in 9 minutes"
        );
        let info = show(&mut c, "user").await;
        assert_eq!(info.state, CredentialState::Backoff, "{fault:?}");
        d.stop().await;
    }
}

/// Tokens of 1 s, and tokens whose `expires_in` is 0: the ticker does not
/// refresh them every second for the ten minutes a used token is kept
/// fresh.
#[tokio::test(start_paused = true)]
async fn tokens_of_zero_or_one_second_are_not_refreshed_every_tick() {
    for lifetime in [0, 1] {
        let mut d = TestDaemon::start(Opts::default()).await;
        d.endpoint
            .add_user_client("app", lifetimes(lifetime, lifetime));
        let mut c = d.client().await;
        d.init(&mut c).await;
        add_user(&mut c, &["read"]).await;
        device_login(&mut d, &mut c, None).await.expect("approved");
        let token = c.token("user").await.expect("a token");
        if lifetime == 0 {
            assert_eq!(token.expires_at, None, "0 is not a lifetime: unknown");
        }
        let before = d.endpoint.user_stats("app").refresh_requests();
        d.pass(9 * 60).await;
        let refreshes = d.endpoint.user_stats("app").refresh_requests() - before;
        // expires_in 0: treated as unknown (refetched every 5 min or so);
        // 1 s: never refreshed ahead (callers fetch on demand).
        assert!(
            refreshes <= 3,
            "lifetime {lifetime}: {refreshes} refreshes in 9 minutes"
        );
        d.stop().await;
    }
}

/// The provider narrows the grant on refresh: `credential show` lists what
/// is granted now next to what is configured, and asking for a dropped
/// scope says so and names `latchkey login`.
#[tokio::test(start_paused = true)]
async fn a_grant_narrowed_on_refresh_is_shown_and_explained() {
    let mut d = TestDaemon::start(Opts::default()).await;
    d.endpoint.add_user_client("app", lifetimes(3600, 3600));
    d.endpoint.set_scopes("app", "read write", "read");
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_user(&mut c, &["read", "write"]).await;
    let login = device_login(&mut d, &mut c, None).await.expect("approved");
    assert_eq!(login.scope, "read write");
    let info = show(&mut c, "user").await;
    assert_eq!(
        info.granted_scopes,
        Some(vec!["read".into(), "write".into()])
    );

    let narrowed = c.token_with(&force()).await.expect("a refreshed token");
    assert_eq!(narrowed.scope, "read");
    let info = show(&mut c, "user").await;
    assert_eq!(info.scopes, ["read", "write"], "configured");
    assert_eq!(
        info.granted_scopes,
        Some(vec!["read".into()]),
        "granted now"
    );

    let ask = TokenParams {
        credential: "user".into(),
        scopes: Some(vec!["write".into()]),
        min_ttl: None,
        confirm_wait_secs: None,
    };
    let err = c.token_with(&ask).await.expect_err("write was dropped");
    assert_eq!(err.kind(), Some(ErrorKind::Forbidden), "{err}");
    let message = err.to_string();
    assert!(message.contains("granted only 'read' now"), "{message}");
    assert!(message.contains("latchkey login user"), "{message}");
    assert!(!message.contains("add a credential"), "{message}");
    d.stop().await;
}
