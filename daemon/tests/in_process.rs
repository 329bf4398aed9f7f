//! The daemon in-process: `latchkey_daemon::run` serving a socket in a temp
//! dir, the testkit's token endpoint on loopback, tokio's clock paused. The
//! level between the unit tests inside the crate and the end-to-end tests
//! of the real binaries (`tests/`): it needs only `cargo test -p
//! latchkey-daemon` (no Node, no keyring, no network).
//!
//! Time: the daemon reads its [`Clock`] from tokio (`Clock::following_tokio`)
//! and every test starts with tokio's clock paused. Paused, tokio jumps the
//! clock to the next timer (here: the daemon's 1 s ticker) whenever the
//! runtime has nothing to run and a zero-timeout poll finds no I/O ready.
//! Loopback I/O is usually ready at once, but not always (a busy machine
//! may still hold a TCP segment in the kernel), and then a call would let
//! a second pass. So the harness holds the clock still ([`Frozen`]) and
//! lets it run only in [`TestDaemon::pass`]: calls happen at one instant,
//! time passes only where a test says so, and the assertions on seconds
//! (`locks_in_secs`, `retry_after`) are exact.

mod common;

use common::*;
use latchkey_client::protocol::*;
use latchkey_client::Client;
use latchkey_testkit::token_endpoint::{token_for, Fault, UserClientConfig};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// Uninitialized → unlocked → locked → (wrong passphrases, rate limit) →
/// unlocked, and the token sealed into the vault survives the lock.
#[tokio::test(start_paused = true)]
async fn vault_states_and_what_each_allows() {
    let mut d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    assert_eq!(vault_state(&mut c).await, VaultState::Uninitialized);
    assert_eq!(kind(c.token("api").await), ErrorKind::NotInitialized);
    assert_eq!(
        kind(unlock(&mut c, PASSPHRASE).await),
        ErrorKind::NotInitialized
    );

    d.init(&mut c).await;
    assert_eq!(vault_state(&mut c).await, VaultState::Unlocked);
    add_cc_credential(&mut c, "api").await;
    let first = c.token("api").await.expect("a token");
    assert_eq!(secret(&first), token_for(1));
    assert_eq!(d.endpoint.served(), 1);

    c.request::<VaultLock>(&Empty {}).await.expect("vault.lock");
    assert_eq!(vault_state(&mut c).await, VaultState::Locked);
    assert_eq!(kind(c.token("api").await), ErrorKind::Locked);
    assert_eq!(
        kind(c.request::<CredentialList>(&Empty {}).await),
        ErrorKind::Locked
    );
    assert_eq!(
        kind(c.request::<DaemonStats>(&Empty {}).await),
        ErrorKind::Locked
    );

    // Three wrong passphrases are answered as such; then attempts wait,
    // even with the right passphrase.
    for _ in 0..3 {
        assert_eq!(
            kind(unlock(&mut c, "wrong").await),
            ErrorKind::WrongPassphrase
        );
    }
    let (limited, retry_after) = kind_and_retry(unlock(&mut c, PASSPHRASE).await);
    assert_eq!(limited, ErrorKind::RateLimited);
    let retry_after = retry_after.expect("rate_limited says when to retry");
    assert!(retry_after > 0);
    assert_eq!(vault_state(&mut c).await, VaultState::Locked);
    d.pass(retry_after).await;
    let unlocked = unlock(&mut c, PASSPHRASE).await.expect("unlocks");
    assert!(!unlocked.already_unlocked);
    assert_eq!(unlocked.slot.kind, "passphrase");
    assert_eq!(vault_state(&mut c).await, VaultState::Unlocked);

    // The cache was dropped at the lock, but the token is sealed in the
    // vault: it comes back from there, without a request.
    let again = c.token("api").await.expect("a token after unlock");
    assert_eq!(secret(&again), secret(&first));
    assert_eq!(d.endpoint.served(), 1);
    let s = stats(&mut c).await;
    assert_eq!((s.hits, s.fetches), (1, 0), "fresh counters per unlock");
    d.stop().await;
}

/// Only use keeps the vault unlocked: read-only calls do not reset the
/// idle clock, `token.get` does; the ticker locks once the timeout passes.
#[tokio::test(start_paused = true)]
async fn auto_lock_counts_token_requests_not_looking() {
    let mut d = TestDaemon::start(Opts {
        idle_timeout: Duration::from_secs(60),
        ..Opts::default()
    })
    .await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_cc_credential(&mut c, "api").await;
    c.token("api").await.expect("a token");

    d.pass(40).await;
    // Every read-only method, as a status bar or a script would poll them.
    c.hello().await.expect("hello");
    assert_eq!(c.status().await.expect("status").locks_in_secs, Some(20));
    c.request::<CredentialList>(&Empty {}).await.expect("list");
    c.request::<ProviderList>(&Empty {}).await.expect("list");
    show(&mut c, "api").await;
    let idp = NameParams { name: "idp".into() };
    c.request::<ProviderShow>(&idp).await.expect("show");
    stats(&mut c).await;
    let status = c.status().await.expect("status");
    assert_eq!(status.locks_in_secs, Some(20), "looking reset nothing");

    d.pass(19).await;
    assert_eq!(vault_state(&mut c).await, VaultState::Unlocked, "59 s idle");
    d.pass(2).await;
    assert_eq!(vault_state(&mut c).await, VaultState::Locked, "61 s idle");

    // Now with use in between: a token request restarts the 60 s.
    unlock(&mut c, PASSPHRASE).await.expect("unlocks");
    d.pass(40).await;
    c.token("api").await.expect("a token");
    d.pass(40).await;
    assert_eq!(
        vault_state(&mut c).await,
        VaultState::Unlocked,
        "80 s since unlock, 40 s since use"
    );
    d.pass(21).await;
    assert_eq!(vault_state(&mut c).await, VaultState::Locked);
    assert_eq!(kind(c.token("api").await), ErrorKind::Locked);
    d.stop().await;
}

/// A used token is refreshed by the ticker in the last quarter of its
/// life, before it expires, so the next caller does not wait.
#[tokio::test(start_paused = true)]
async fn used_tokens_are_refreshed_ahead_of_expiry() {
    let mut d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_cc_credential(&mut c, "api").await;
    d.endpoint.set_token_lifetime(100);
    let first = c.token("api").await.expect("a token");
    let expires_at = first.expires_at.expect("the endpoint sends expires_in");
    assert_eq!(d.endpoint.served(), 1);

    // Due 25 s before expiry, minus up to 10 s of jitter: not before 65 s.
    d.pass(64).await;
    assert_eq!(d.endpoint.served(), 1, "not refreshed before 65 s");
    d.pass(16).await;
    assert_eq!(d.endpoint.served(), 2, "refreshed by 80 s, before 100 s");

    let before = stats(&mut c).await;
    let next = c.token("api").await.expect("a token");
    let after = stats(&mut c).await;
    assert_eq!(secret(&next), token_for(2), "the refreshed token");
    assert_ne!(secret(&next), secret(&first));
    assert!(next.expires_at.expect("expires_at") > expires_at);
    assert_eq!(after.waits, before.waits, "the caller did not wait");
    assert_eq!(after.hits, before.hits + 1);
    assert_eq!(d.endpoint.served(), 2);
    d.stop().await;
}

/// Proactive refresh is for tokens in use: one not asked for in the last
/// 10 minutes is left to expire, until a caller asks again.
#[tokio::test(start_paused = true)]
async fn unused_tokens_are_not_refreshed_ahead() {
    let mut d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_cc_credential(&mut c, "api").await;
    // 20 min: due between 15 and 13 min, when the last use is older than 10.
    d.endpoint.set_token_lifetime(1200);
    let first = c.token("api").await.expect("a token");
    d.pass(1000).await;
    assert_eq!(d.endpoint.served(), 1, "unused for 16 min: not refreshed");

    // Still valid, so served from memory; now it is in use and overdue.
    let again = c.token("api").await.expect("a token");
    assert_eq!(secret(&again), secret(&first));
    assert_eq!(d.endpoint.served(), 1);
    d.pass(3).await;
    assert_eq!(d.endpoint.served(), 2, "used again: refreshed at once");
    d.stop().await;
}

/// After a failed token request the credential backs off: callers get the
/// error (with `retry_after`) without a new request until the delay (or
/// the provider's Retry-After) has passed; a success clears it.
#[tokio::test(start_paused = true)]
async fn failures_back_off_without_requests() {
    let mut d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_cc_credential(&mut c, "api").await;
    let e = &d.endpoint;
    e.fail_next(
        1,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    e.fail_next(
        1,
        Fault::Status {
            status: 503,
            retry_after: Some(30),
        },
    );

    assert_eq!(kind(c.token("api").await), ErrorKind::ProviderUnavailable);
    assert_eq!(d.endpoint.requests(), 1);
    // First backoff: 1 s (no Retry-After).
    for _ in 0..5 {
        let (k, retry_after) = kind_and_retry(c.token("api").await);
        assert_eq!(k, ErrorKind::ProviderUnavailable);
        assert_eq!(retry_after, Some(1));
    }
    assert_eq!(d.endpoint.requests(), 1, "no request while backing off");
    let info = show(&mut c, "api").await;
    assert_eq!(info.state, CredentialState::Backoff);
    assert!(info.last_error.is_some());

    d.pass(1).await;
    let (k, retry_after) = kind_and_retry(c.token("api").await);
    assert_eq!(d.endpoint.requests(), 2, "a new attempt after the delay");
    assert_eq!((k, retry_after), (ErrorKind::ProviderUnavailable, Some(30)));

    // The provider's Retry-After is a floor: nothing goes out before 30 s.
    for step in [1, 10, 18] {
        d.pass(step).await;
        let (k, retry_after) = kind_and_retry(c.token("api").await);
        assert_eq!(k, ErrorKind::ProviderUnavailable);
        assert!(retry_after.is_some_and(|r| r >= 1), "{retry_after:?}");
    }
    assert_eq!(d.endpoint.requests(), 2, "29 s: still backing off");
    d.pass(1).await;
    let token = c.token("api").await.expect("the faults are used up");
    assert_eq!(secret(&token), token_for(1));
    assert_eq!(d.endpoint.requests(), 3);
    let info = show(&mut c, "api").await;
    assert_eq!(info.state, CredentialState::Ready);
    assert_eq!(info.last_error, None);
    c.token("api").await.expect("from memory");
    assert_eq!(d.endpoint.requests(), 3);
    d.stop().await;
}

/// Many callers of a cold credential, each on its own connection, share
/// one token request — and one failure.
#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_request() {
    const CALLERS: usize = 100;
    let d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_cc_credential(&mut c, "api").await;
    add_cc_credential(&mut c, "flaky").await;

    async fn callers(d: &TestDaemon) -> Vec<Client> {
        let mut all = Vec::with_capacity(CALLERS);
        for _ in 0..CALLERS {
            all.push(d.client().await);
        }
        all
    }
    let get = |name: &'static str| {
        move |mut client: Client| async move {
            client
                .token(name)
                .await
                .map(|t| secret(&t))
                .map_err(|e| e.kind())
        }
    };

    let burst = latchkey_testkit::burst(callers(&d).await, get("api"))
        .await
        .expect("no caller panicked");
    assert_eq!(
        d.endpoint.requests(),
        1,
        "one request for {CALLERS} callers"
    );
    assert!(burst.results.iter().all(|r| r == &Ok(token_for(1))));
    let s = stats(&mut c).await;
    assert_eq!(s.fetches, 1);
    assert_eq!(s.hits + s.waits, CALLERS as u64);
    assert!(s.waits >= 1);

    d.endpoint.fail_next(
        1,
        Fault::Status {
            status: 500,
            retry_after: None,
        },
    );
    let burst = latchkey_testkit::burst(callers(&d).await, get("flaky"))
        .await
        .expect("no caller panicked");
    assert_eq!(d.endpoint.requests(), 2, "one failed request for all");
    assert!(burst
        .results
        .iter()
        .all(|r| r == &Err(Some(ErrorKind::ProviderUnavailable))));
    assert_eq!(stats(&mut c).await.fetches, 2);
    d.stop().await;
}

/// What a table row expects: the call succeeds, or fails with this kind.
fn ok() -> Option<ErrorKind> {
    None
}

fn fails(kind: ErrorKind) -> Option<ErrorKind> {
    Some(kind)
}

/// Every protocol method, with unmet or bad input, answers its stable
/// error kind; locked, each answers `locked` where the vault is needed.
#[tokio::test(start_paused = true)]
async fn every_method_answers_its_error_kinds() {
    use ErrorKind::*;
    let d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_cc_credential(&mut c, "api").await;
    add_device_credential(&mut c, "user", "app").await;
    c.token("api").await.expect("a token, so revoking has work");
    let url = d.endpoint.url.clone();
    let cc = |name: &str, provider: &str| {
        json!({"name": name, "provider": provider, "client_id": "id", "client_secret": "s",
               "grant": "client_credentials", "auth": "client_secret_basic"})
    };
    // A key file's key line (all-zero secret): `slot.add`'s and `vault.unlock`'s `key`.
    const KEY_LINE: &str = "latchkey-key-file-v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    // (method, params, what it answers), in order: rows change state.
    type Row = (&'static str, Value, Option<ErrorKind>);
    #[rustfmt::skip]
    let phases: [(&str, Vec<Row>); 2] = [
        (
            "unlocked",
            vec![
                ("hello", json!({}), fails(InvalidParams)), // no protocol field
                ("hello", json!({"protocol": PROTOCOL_VERSION}), ok()),
                ("status", json!({}), ok()),
                // Step-up (first: a good proof resets the unlock limiter,
                // which the wrong passphrases below count toward).
                ("credential.set", json!({"name": "api", "step_up": {"method": "totp", "window_secs": 0}}), fails(InvalidParams)),
                ("credential.set", json!({"name": "api", "access": "open", "step_up": {"method": "passphrase", "window_secs": 60}}), ok()),
                ("token.get", json!({"credential": "api"}), fails(StepUpRequired)),
                ("credential.confirm", json!({"name": "api"}), fails(Forbidden)), // no proof
                ("credential.confirm", json!({"name": "api", "proof": {"passphrase": PASSPHRASE}}), ok()),
                ("token.get", json!({"credential": "api"}), ok()),
                ("credential.set", json!({"name": "api", "step_up": {"method": "off"}}), ok()), // proven connection
                // Key slots: a key file's slot needs a proof (every time), once per
                // file. Before the wrong passphrases below: a good proof resets the limiter.
                ("slot.list", json!({}), ok()),
                ("slot.add", json!({"key": "not a key line", "proof": {"passphrase": PASSPHRASE}}), fails(InvalidParams)),
                ("slot.add", json!({"key": KEY_LINE}), fails(Forbidden)), // no proof
                ("slot.add", json!({"key": KEY_LINE, "label": "two\nlines", "proof": {"passphrase": PASSPHRASE}}), fails(InvalidParams)),
                ("slot.add", json!({"key": KEY_LINE, "label": "ci", "proof": {"passphrase": PASSPHRASE}}), ok()),
                ("slot.add", json!({"key": KEY_LINE, "proof": {"passphrase": PASSPHRASE}}), fails(AlreadyExists)),
                ("slot.remove", json!({"id": "nope"}), fails(Forbidden)), // no proof
                ("slot.remove", json!({"id": "nope", "proof": {"passphrase": PASSPHRASE}}), fails(NotFound)),
                // The proxy (`api` is open now); one started and never waited for stops by itself.
                ("proxy.start", json!({}), fails(InvalidParams)),
                ("proxy.start", json!({"credential": "nope", "upstream": url, "listen": "127.0.0.1:0"}), fails(NotFound)),
                ("proxy.start", json!({"credential": "api", "upstream": "http://example.com/", "listen": "127.0.0.1:0"}), fails(InvalidParams)),
                ("proxy.start", json!({"credential": "api", "upstream": url, "listen": "0.0.0.0:0"}), fails(InvalidParams)),
                ("proxy.start", json!({"credential": "api", "upstream": url, "listen": "127.0.0.1:0", "limits": {"max_connections": 0}}), fails(InvalidParams)),
                ("proxy.start", json!({"credential": "user", "upstream": url, "listen": "127.0.0.1:0"}), fails(ReauthRequired)), // never logged in
                ("proxy.start", json!({"credential": "api", "upstream": url, "listen": "127.0.0.1:0"}), ok()),
                ("proxy.wait", json!({}), fails(InvalidParams)),
                ("proxy.wait", json!({"proxy_id": "nope"}), fails(NotFound)),
                ("vault.init", json!({"passphrase": "p"}), fails(AlreadyInitialized)),
                ("vault.unlock", json!({"passphrase": 5}), fails(InvalidParams)),
                ("vault.change_passphrase", json!({"old": "p"}), fails(InvalidParams)),
                ("vault.change_passphrase", json!({"old": PASSPHRASE, "new": ""}), fails(WeakPassphrase)),
                ("vault.change_passphrase", json!({"old": PASSPHRASE, "new": "password1234"}), fails(WeakPassphrase)),
                ("vault.change_passphrase", json!({"old": "wrong", "new": "velvet-quarry-ninety-lantern"}), fails(WrongPassphrase)),
                ("vault.rekey", json!({"passphrase": "wrong"}), fails(WrongPassphrase)),
                ("provider.add", json!({"name": "bare"}), fails(InvalidParams)),
                ("provider.add", json!({"name": "bad name", "endpoints": {"token_endpoint": url}}), fails(InvalidParams)),
                ("provider.add", json!({"name": "far", "endpoints": {"token_endpoint": "http://example.com/token"}}), fails(InvalidParams)),
                ("provider.add", json!({"name": "idp", "endpoints": {"token_endpoint": url}}), fails(AlreadyExists)),
                ("provider.list", json!({}), ok()),
                ("provider.check", json!({}), ok()),
                ("provider.show", json!({}), fails(InvalidParams)),
                ("provider.show", json!({"name": "nope"}), fails(NotFound)),
                ("provider.remove", json!({"name": "nope"}), fails(NotFound)),
                ("provider.remove", json!({"name": "idp"}), fails(InvalidRequest)), // in use
                ("credential.add", cc("api", "idp"), fails(AlreadyExists)),
                ("credential.add", cc("new", "nope"), fails(NotFound)),
                ("credential.add", json!({"name": "new", "provider": "idp", "client_id": "id",
                    "grant": "client_credentials", "auth": "client_secret_basic"}), fails(InvalidParams)), // no secret
                ("credential.add", json!({"name": "new", "provider": "idp", "client_id": "id",
                    "grant": "client_credentials", "auth": "none"}), fails(InvalidParams)), // public cc client
                ("credential.add", json!({"name": "new", "provider": "idp", "client_id": "id",
                    "grant": "password", "auth": "none"}), fails(InvalidParams)),
                ("credential.list", json!({}), ok()),
                ("credential.show", json!({"name": "nope"}), fails(NotFound)),
                ("credential.remove", json!({"name": "nope"}), fails(NotFound)),
                ("token.get", json!({}), fails(InvalidParams)),
                ("token.get", json!({"credential": "nope"}), fails(NotFound)),
                ("token.get", json!({"credential": "api", "scopes": ["admin"]}), fails(Forbidden)),
                ("token.get", json!({"credential": "api", "scopes": ["a\"b"]}), fails(InvalidParams)),
                ("token.get", json!({"credential": "user"}), fails(ReauthRequired)), // never logged in
                ("token.revoke", json!({"credential": "nope"}), fails(NotFound)),
                ("token.revoke", json!({"credential": "api"}), fails(InvalidRequest)), // no revocation endpoint
                ("login.start", json!({"credential": "nope"}), fails(NotFound)),
                ("login.start", json!({"credential": "api"}), fails(InvalidRequest)), // client credentials
                ("login.wait", json!({}), fails(InvalidParams)),
                ("login.wait", json!({"login_id": "nope"}), fails(NotFound)),
                ("daemon.stats", json!({}), ok()),
                ("vault.panic", json!({"provider": "nope"}), fails(NotFound)),
                ("audit.list", json!({"limit": 0}), fails(InvalidParams)),
                ("audit.list", json!({"limit": AUDIT_LIST_MAX + 1}), fails(InvalidParams)),
                ("audit.list", json!({"after_seq": -1}), fails(InvalidParams)),
                ("audit.list", json!({"credential": ""}), fails(InvalidParams)),
                ("audit.list", json!({"since": "1h"}), fails(InvalidParams)),
                ("audit.list", json!({"credential": "api", "limit": 10}), ok()),
                ("audit.verify", json!({}), ok()),
                ("vault.explode", json!({}), fails(MethodNotFound)),
                // Who may use what. This connection proved a person is
                // behind it when it added `api` (with the passphrase), so
                // opening and allowing need no second proof here.
                ("credential.set", json!({"name": "nope", "access": "ask"}), fails(NotFound)),
                ("credential.set", json!({"name": "api"}), fails(InvalidParams)),
                ("credential.set", json!({"name": "api", "access": "ask"}), ok()),
                ("token.get", json!({"credential": "api"}), fails(ApprovalRequired)), // nobody to ask
                ("credential.set", json!({"name": "api", "access": "ask"}), ok()),
                // Client-secret rotation (the secret is the one it had).
                ("credential.set_secret", json!({"name": "nope", "client_secret": "s"}), fails(NotFound)),
                ("credential.set_secret", json!({"name": "api"}), fails(InvalidParams)),
                ("credential.set_secret", json!({"name": "api", "client_secret": ""}), fails(InvalidParams)),
                ("credential.set_secret", json!({"name": "api", "client_secret": "s"}), ok()),
                ("app.add", json!({"name": "bad name"}), fails(InvalidParams)),
                ("app.add", json!({"name": "ci"}), ok()),
                ("app.add", json!({"name": "ci"}), fails(AlreadyExists)),
                ("app.list", json!({}), ok()),
                ("app.allow", json!({"app": "key:ci", "credential": "nope"}), fails(NotFound)),
                ("app.allow", json!({"app": "relative/path", "credential": "api"}), fails(InvalidParams)),
                ("app.allow", json!({"app": "/nonexistent/program", "credential": "api"}), fails(NotFound)),
                ("app.allow", json!({"app": "key:nope", "credential": "api"}), fails(NotFound)),
                ("app.allow", json!({"app": "key:ci", "credential": "api"}), ok()),
                ("app.deny", json!({"app": "key:ci", "credential": "api"}), ok()),
                ("app.remove", json!({"id": "nope"}), fails(NotFound)),
                ("app.remove", json!({"id": "key:ci"}), ok()),
                ("approval.next", json!({"wait_secs": 0}), fails(Forbidden)), // not an approver
                ("approval.decide", json!({"id": 1, "decision": {"choice": "deny"}}), fails(Forbidden)),
                ("approval.attach", json!({}), ok()),
                ("approval.next", json!({"wait_secs": 0}), ok()),
                ("approval.decide", json!({"id": 1, "decision": {"choice": "deny"}}), fails(NotFound)),
                ("approval.decide", json!({"id": 1, "decision": {"choice": "maybe"}}), fails(InvalidParams)),
                // The authenticator (this connection is proven, as above).
                ("totp.status", json!({}), ok()),
                ("totp.confirm", json!({}), fails(InvalidParams)),
                ("totp.confirm", json!({"code": "123456"}), fails(InvalidRequest)), // nothing to confirm
                ("totp.enroll", json!({"account": "a:b"}), fails(InvalidParams)),
                ("totp.enroll", json!({}), ok()),
                ("totp.confirm", json!({"code": "abc"}), fails(WrongPassphrase)),
                ("totp.remove", json!({}), fails(NotFound)), // never confirmed
                ("credential.confirm", json!({"name": "nope"}), fails(NotFound)),
                ("credential.confirm", json!({"name": "api"}), fails(InvalidRequest)), // no step-up
                // git routes (`user` is open; `api` asks, and this connection is an approver).
                ("git.route_add", json!({"host": "git.example", "credential": "nope"}), fails(NotFound)),
                ("git.route_add", json!({"host": "a b", "credential": "user"}), fails(InvalidParams)),
                ("git.route_add", json!({"protocol": "http", "host": "git.example", "credential": "user"}), fails(InvalidParams)),
                ("git.route_add", json!({"host": "git.example", "path": "a/../b", "credential": "user"}), fails(InvalidParams)),
                ("git.route_add", json!({"host": "git.example", "path": "acme", "credential": "user"}), ok()),
                ("git.route_list", json!({}), ok()),
                ("git.get", json!({}), fails(InvalidParams)),
                ("git.get", json!({"protocol": "https", "host": "other.example"}), ok()), // no route: nothing
                ("git.get", json!({"protocol": "https", "host": "git.example", "path": "acme/w.git"}), fails(ReauthRequired)),
                ("git.erase", json!({"protocol": "https", "host": "git.example", "path": "acme/w.git"}), ok()),
                ("git.route_remove", json!({}), fails(InvalidParams)),
                ("git.route_remove", json!({"host": "git.example", "path": "acme"}), ok()),
                ("git.route_remove", json!({"host": "git.example", "path": "acme"}), fails(NotFound)),
                // OAuth 1.0a (`api` is an OAuth 2 credential).
                ("oauth1.sign", json!({"credential": "nope", "method": "GET", "url": "https://a.example/"}), fails(NotFound)),
                ("oauth1.sign", json!({"credential": "api"}), fails(InvalidParams)),
                ("oauth1.sign", json!({"credential": "api", "method": "GET", "url": "https://a.example/"}), fails(InvalidParams)),
                ("oauth1.import_token", json!({"credential": "nope", "token": "t", "token_secret": "s"}), fails(NotFound)),
                ("oauth1.import_token", json!({"credential": "api", "token": "t", "token_secret": "s"}), fails(InvalidParams)),
                ("provider.add", json!({"name": "o1", "oauth1": {"temporary_credentials": "http://example.com/rt", "authorization": url, "token": url}}), fails(InvalidParams)),
                ("provider.add", json!({"name": "o1", "oauth1": {"temporary_credentials": url, "authorization": url, "token": url}}), ok()),
                ("credential.add", json!({"name": "o1", "provider": "o1", "client_id": "ck", "grant": "oauth1", "auth": "none",
                    "signature_method": "RSA-SHA1", "private_key": "x"}), fails(InvalidParams)),
                ("credential.add", json!({"name": "o1", "provider": "o1", "client_id": "ck", "client_secret": "cs", "grant": "oauth1", "auth": "none",
                    "signature_method": "PLAINTEXT"}), fails(InvalidParams)), // http endpoints
                ("credential.add", json!({"name": "o1", "provider": "idp", "client_id": "ck", "client_secret": "cs", "grant": "oauth1", "auth": "none",
                    "signature_method": "HMAC-SHA1"}), fails(InvalidParams)), // an OAuth 2 provider
                ("credential.add", json!({"name": "o1", "provider": "o1", "client_id": "ck", "client_secret": "cs", "grant": "oauth1", "auth": "none",
                    "signature_method": "HMAC-SHA1", "access": "open", "proof": {"passphrase": PASSPHRASE}}), ok()),
                ("oauth1.sign", json!({"credential": "o1", "method": "GET", "url": "https://a.example/"}), fails(ReauthRequired)),
                ("oauth1.import_token", json!({"credential": "o1", "token": "", "token_secret": "s"}), fails(InvalidParams)),
                ("oauth1.import_token", json!({"credential": "o1", "token": "t", "token_secret": "s"}), ok()),
                ("oauth1.sign", json!({"credential": "o1", "method": "G T", "url": "https://a.example/"}), fails(InvalidParams)),
                ("oauth1.sign", json!({"credential": "o1", "method": "GET", "url": "not a url"}), fails(InvalidParams)),
                ("oauth1.sign", json!({"credential": "o1", "method": "GET", "url": "https://a.example/?oauth_nonce=1"}), fails(InvalidParams)),
                ("oauth1.sign", json!({"credential": "o1", "method": "POST", "url": "https://a.example/", "form": [["a", "b c"]]}), ok()),
                ("token.get", json!({"credential": "o1"}), fails(InvalidParams)),
                // Keys in the vault: private_key_jwt and DPoP.
                ("credential.add", json!({"name": "pk", "provider": "idp", "client_id": "id",
                    "grant": "client_credentials", "auth": "private_key_jwt"}), fails(InvalidParams)), // no key
                ("credential.add", json!({"name": "pk", "provider": "idp", "client_id": "id",
                    "grant": "client_credentials", "auth": "private_key_jwt", "client_key": {"generate": "RS256"}}), fails(InvalidParams)),
                ("credential.add", json!({"name": "pk", "provider": "idp", "client_id": "id",
                    "grant": "client_credentials", "auth": "private_key_jwt", "client_key": {"import": "not a key"}}), fails(InvalidParams)),
                ("credential.add", json!({"name": "pk", "provider": "idp", "client_id": "id", "client_secret": "s",
                    "grant": "client_credentials", "auth": "client_secret_basic", "client_key": {"generate": "ES256"}}), fails(InvalidParams)),
                ("credential.add", json!({"name": "pk", "provider": "idp", "client_id": "id",
                    "grant": "client_credentials", "auth": "private_key_jwt", "client_key": {"generate": "EdDSA"}}), ok()),
                ("credential.jwks", json!({"name": "nope"}), fails(NotFound)),
                ("credential.jwks", json!({"name": "api"}), fails(InvalidRequest)), // a secret, not a key
                ("credential.jwks", json!({"name": "pk"}), ok()),
                ("credential.rotate_key", json!({"name": "api"}), fails(InvalidRequest)),
                ("credential.rotate_key", json!({"name": "pk", "alg": "RS256"}), fails(InvalidParams)),
                ("credential.rotate_key", json!({"name": "pk", "retire_old": true, "alg": "ES256"}), fails(InvalidParams)),
                ("credential.rotate_key", json!({"name": "pk"}), ok()),
                ("credential.rotate_key", json!({"name": "pk", "retire_old": true}), ok()),
                ("dpop.proof", json!({"credential": "api"}), fails(InvalidParams)), // no method or URL
                ("dpop.proof", json!({"credential": "api", "method": "GET", "url": "/relative"}), fails(InvalidParams)),
                ("dpop.proof", json!({"credential": "api", "method": "G T", "url": "https://rs.example/"}), fails(InvalidParams)),
                ("dpop.proof", json!({"credential": "nope", "method": "GET", "url": "https://rs.example/"}), fails(NotFound)),
                ("dpop.proof", json!({"credential": "api", "method": "GET", "url": "https://rs.example/"}), fails(InvalidRequest)), // bearer
                ("credential.remove", json!({"name": "pk"}), ok()),
                ("vault.lock", json!({}), ok()),
            ],
        ),
        (
            "locked",
            vec![
                ("hello", json!({"protocol": PROTOCOL_VERSION}), ok()),
                ("status", json!({}), ok()),
                ("vault.init", json!({"passphrase": "p"}), fails(AlreadyInitialized)),
                ("vault.lock", json!({}), ok()),
                ("vault.rekey", json!({"passphrase": PASSPHRASE}), fails(Locked)),
                ("provider.add", json!({"name": "new", "endpoints": {"token_endpoint": url}}), fails(Locked)),
                ("provider.list", json!({}), fails(Locked)),
                ("provider.check", json!({}), fails(Locked)),
                ("provider.show", json!({"name": "idp"}), fails(Locked)),
                ("provider.remove", json!({"name": "idp"}), fails(Locked)),
                ("credential.add", cc("new", "idp"), fails(Locked)),
                ("credential.list", json!({}), fails(Locked)),
                ("credential.show", json!({"name": "api"}), fails(Locked)),
                ("credential.remove", json!({"name": "api"}), fails(Locked)),
                ("token.get", json!({"credential": "api"}), fails(Locked)),
                ("token.revoke", json!({"credential": "api"}), fails(Locked)),
                ("login.start", json!({"credential": "user"}), fails(Locked)),
                ("login.wait", json!({"login_id": "nope"}), fails(NotFound)),
                ("daemon.stats", json!({}), fails(Locked)),
                ("vault.panic", json!({}), fails(Locked)),
                ("credential.set", json!({"name": "api", "access": "ask"}), fails(Locked)),
                ("credential.set_secret", json!({"name": "api", "client_secret": "s"}), fails(Locked)),
                ("app.add", json!({"name": "x"}), fails(Locked)),
                ("app.list", json!({}), fails(Locked)),
                ("app.allow", json!({"app": "key:ci", "credential": "api"}), fails(Locked)),
                ("app.deny", json!({"app": "key:ci", "credential": "api"}), fails(Locked)),
                ("app.remove", json!({"id": "x"}), fails(Locked)),
                ("approval.attach", json!({}), ok()),
                ("approval.next", json!({"wait_secs": 0}), ok()),
                ("approval.decide", json!({"id": 1, "decision": {"choice": "deny"}}), fails(NotFound)),
                ("audit.list", json!({}), fails(Locked)),
                ("audit.verify", json!({}), fails(Locked)),
                ("totp.status", json!({}), ok()),
                ("totp.enroll", json!({}), fails(Locked)),
                ("totp.confirm", json!({"code": "123456"}), fails(Locked)),
                ("totp.remove", json!({}), fails(Locked)),
                ("credential.confirm", json!({"name": "api"}), fails(Locked)),
                ("git.route_add", json!({"host": "git.example", "credential": "user"}), fails(Locked)),
                ("git.route_list", json!({}), fails(Locked)),
                ("git.route_remove", json!({"host": "git.example"}), fails(Locked)),
                ("git.get", json!({"protocol": "https", "host": "git.example"}), fails(Locked)),
                ("git.erase", json!({"protocol": "https", "host": "git.example"}), fails(Locked)),
                ("oauth1.sign", json!({"credential": "o1", "method": "GET", "url": "https://a.example/"}), fails(Locked)),
                ("oauth1.import_token", json!({"credential": "o1", "token": "t", "token_secret": "s"}), fails(Locked)),
                ("proxy.start", json!({"credential": "api", "upstream": url, "listen": "127.0.0.1:0"}), fails(Locked)),
                ("proxy.wait", json!({"proxy_id": "nope"}), fails(NotFound)),
                ("credential.jwks", json!({"name": "api"}), fails(Locked)),
                ("credential.rotate_key", json!({"name": "api"}), fails(Locked)),
                ("dpop.proof", json!({"credential": "api", "method": "GET", "url": "https://rs.example/"}), fails(Locked)),
                ("slot.list", json!({}), ok()),
                ("slot.add", json!({"key": KEY_LINE, "proof": {"passphrase": PASSPHRASE}}), fails(Locked)),
                ("slot.remove", json!({"id": "nope", "proof": {"passphrase": PASSPHRASE}}), fails(Locked)),
                ("vault.unlock", json!({"key": "not a key line"}), fails(InvalidParams)), // not counted
                // The third wrong passphrase (two above): the limiter starts.
                ("vault.unlock", json!({"passphrase": "wrong"}), fails(WrongPassphrase)),
                ("vault.unlock", json!({"passphrase": PASSPHRASE}), fails(RateLimited)),
                ("vault.change_passphrase", json!({"old": PASSPHRASE, "new": "n"}), fails(RateLimited)),
                ("daemon.shutdown", json!({}), ok()),
            ],
        ),
    ];
    let mut covered = BTreeSet::new();
    for (phase, rows) in phases {
        for (method, params, expected) in rows {
            let got = c.call::<Value, Value>(method, &params).await;
            let got = got.map(|_| ()).map_err(|e| e.kind());
            let want = expected.map_or(Ok(()), |k| Err(Some(k)));
            assert_eq!(got, want, "{phase}: {method} {params}");
            covered.insert(method);
        }
    }
    let missing: Vec<&str> = METHODS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !covered.contains(name))
        .collect();
    assert!(missing.is_empty(), "methods not tested: {missing:?}");
    // `daemon.shutdown` above: `run` returns, and Ok.
    d.stop().await;
}

/// Every row of the audit log, once the writer has written `until`
/// (bounded; the writer is a thread of its own, so this waits in real time).
async fn audit_rows_until(
    c: &mut Client,
    until: impl Fn(&[AuditEntry]) -> bool,
) -> Vec<AuditEntry> {
    let mut rows = Vec::new();
    for _ in 0..500 {
        rows = c
            .request::<AuditList>(&AuditListParams {
                limit: Some(AUDIT_LIST_MAX),
                ..AuditListParams::default()
            })
            .await
            .expect("audit.list")
            .rows;
        if until(&rows) {
            return rows;
        }
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(10)))
            .await
            .unwrap();
    }
    panic!("the audit log never got there: {rows:#?}");
}

/// The audit log over the socket: rows name the app and their outcome,
/// rows written while locked are chained at the unlock, the chain
/// verifies, and the filters select.
#[tokio::test(start_paused = true)]
async fn the_audit_log_is_chained_filtered_and_verified() {
    let d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_cc_credential(&mut c, "api").await;
    c.token("api").await.expect("a token");
    c.request::<VaultLock>(&Empty {}).await.expect("vault.lock");
    assert_eq!(
        kind(unlock(&mut c, "wrong").await),
        ErrorKind::WrongPassphrase
    );
    unlock(&mut c, PASSPHRASE).await.expect("unlock");
    let all_chained = |rows: &[AuditEntry]| {
        rows.iter().any(|r| r.event == "unlock") && rows.iter().all(|r| r.chained)
    };
    let rows = audit_rows_until(&mut c, all_chained).await;
    let events: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "vault_init",
            "provider_added",
            "credential_added",
            "token_fetched",
            "token_issued",
            "lock",
            "unlock_failed",
            "unlock"
        ]
    );
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    let late: Vec<&str> = rows
        .iter()
        .filter(|r| r.chained_late)
        .map(|r| r.event.as_str())
        .collect();
    assert_eq!(late, ["lock", "unlock_failed"], "written while locked");
    let failed = &rows[6];
    assert_eq!(failed.outcome.as_deref(), Some("failed"));
    let detail = failed.detail.as_deref().unwrap_or_default();
    assert!(
        detail.starts_with("wrong_passphrase; wrong passphrase 1 in a row"),
        "{detail}"
    );
    assert_eq!(rows[7].outcome.as_deref(), Some("ok"));
    let app_key = failed.app_key.clone().expect("the caller is named");
    assert!(app_key.starts_with("exe:/"), "{app_key}");
    assert_eq!(failed.pid, Some(std::process::id()));

    let verified = c.request::<AuditVerify>(&Empty {}).await.expect("verify");
    assert!(verified.ok, "{verified:?}");
    assert_eq!(
        (verified.checked, verified.chained_late, verified.unchained),
        (8, 2, 0)
    );
    assert_eq!((verified.first_seq, verified.last_seq), (Some(1), Some(8)));

    async fn list(c: &mut Client, params: AuditListParams) -> AuditListResult {
        c.request::<AuditList>(&params).await.expect("audit.list")
    }
    let by_credential = list(
        &mut c,
        AuditListParams {
            credential: Some("api".into()),
            ..AuditListParams::default()
        },
    )
    .await;
    let events: Vec<&str> = by_credential
        .rows
        .iter()
        .map(|r| r.event.as_str())
        .collect();
    assert_eq!(
        events,
        ["credential_added", "token_fetched", "token_issued"]
    );
    let by_app = list(
        &mut c,
        AuditListParams {
            app: Some(app_key.clone()),
            ..AuditListParams::default()
        },
    )
    .await;
    assert!(by_app
        .rows
        .iter()
        .all(|r| r.app_key.as_deref() == Some(&app_key)));
    assert!(by_app.rows.iter().any(|r| r.event == "unlock"));
    let page = list(
        &mut c,
        AuditListParams {
            after_seq: Some(5),
            limit: Some(2),
            ..AuditListParams::default()
        },
    )
    .await;
    let seqs: Vec<i64> = page.rows.iter().map(|r| r.seq).collect();
    assert_eq!((seqs, page.next, page.more), (vec![6, 7], 7, true));
    let end = list(
        &mut c,
        AuditListParams {
            after_seq: Some(8),
            ..AuditListParams::default()
        },
    )
    .await;
    assert!(end.rows.is_empty() && !end.more && end.next == 8);
}

/// A user credential end to end at the testkit endpoint: device login,
/// refresh with a rotated refresh token once the first token expires,
/// and `invalid_grant` on refresh turning it to `needs_login`.
#[tokio::test(start_paused = true)]
async fn device_login_refresh_rotation_and_reauth() {
    let mut d = TestDaemon::start(Opts::default()).await;
    d.endpoint.add_user_client(
        "app",
        UserClientConfig {
            login_lifetime: 30,
            refresh_lifetime: 60,
            refresh_delay: Duration::ZERO,
        },
    );
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_device_credential(&mut c, "user", "app").await;
    assert_eq!(
        show(&mut c, "user").await.state,
        CredentialState::NeedsLogin
    );
    assert_eq!(kind(c.token("user").await), ErrorKind::ReauthRequired);

    let start = LoginStartParams {
        credential: "user".into(),
        device: true,
        timeout_secs: None,
    };
    let started = c.request::<LoginStart>(&start).await.expect("login.start");
    assert!(started.user_code.is_some() && started.verification_uri.is_some());
    let wait = LoginWaitParams {
        login_id: started.login_id,
    };
    // The device grant polls every `interval` (1 s): let the clock run.
    let login = d
        .running(c.request::<LoginWait>(&wait))
        .await
        .expect("the endpoint approves device logins at once");
    assert!(login.refresh_token);
    assert_eq!(login.scope, "read");
    let stats_after_login = d.endpoint.user_stats("app");
    assert_eq!(stats_after_login.logins, 1);
    let info = show(&mut c, "user").await;
    assert_eq!(info.state, CredentialState::Ready);
    assert!(info.has_refresh_token);

    let first = c.token("user").await.expect("the login's token");
    let (login_access, _) = stats_after_login.last_access.expect("a token was minted");
    assert_eq!(secret(&first), login_access, "no refresh needed yet");
    assert_eq!(d.endpoint.user_stats("app").refreshes, 0);

    // Past the login token's 30 s: a refresh (ahead of expiry, by the
    // ticker) with the rotated refresh token honoured.
    d.pass(35).await;
    let second = c.token("user").await.expect("a refreshed token");
    assert_ne!(secret(&second), secret(&first));
    let stats = d.endpoint.user_stats("app");
    assert_eq!((stats.refreshes, stats.refresh_rejected), (1, 0));
    assert_eq!(secret(&second), stats.last_access.expect("minted").0);
    // Once more, forced: the refresh token the first refresh rotated in
    // is the one the daemon kept (the endpoint refuses a reused one).
    let force = TokenParams {
        credential: "user".into(),
        scopes: None,
        min_ttl: Some(3600), // longer than any token here lives,
        confirm_wait_secs: None,
    };
    let third = c.token_with(&force).await.expect("a refreshed token");
    assert_ne!(secret(&third), secret(&second));
    let stats = d.endpoint.user_stats("app");
    assert_eq!((stats.refreshes, stats.refresh_rejected), (2, 0));

    // A refresh the provider refuses: the grant is dropped, callers are
    // told to log in, and no further request goes out.
    d.endpoint.fail_next(1, Fault::OAuth("invalid_grant"));
    let requests = d.endpoint.requests();
    assert_eq!(kind(c.token_with(&force).await), ErrorKind::ReauthRequired);
    assert_eq!(d.endpoint.requests(), requests + 1);
    let info = show(&mut c, "user").await;
    assert_eq!(info.state, CredentialState::NeedsLogin);
    assert!(!info.has_refresh_token);
    let status = c.status().await.expect("status");
    assert_eq!(status.needs_login, Some(vec!["user".to_owned()]));
    assert_eq!(kind(c.token("user").await), ErrorKind::ReauthRequired);
    assert_eq!(d.endpoint.requests(), requests + 1);
    d.stop().await;
}
