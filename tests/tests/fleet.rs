//! A fleet sharing one credential: three daemons (separate runtime dirs,
//! sockets and data dirs, as on three machines) on one PostgreSQL vault,
//! one user credential at oidc-provider whose refresh tokens rotate on
//! every use and whose reuse ends the whole grant. At every expiry, a
//! thousand callers spread over the three daemons ask at once: the fleet
//! makes exactly one refresh request, and every caller gets its token.
//!
//! Needs `cargo build --workspace --bins`, `npm ci --prefix tests/provider`
//! and `source .ci/postgres-env.sh` (`.ci/test` does all three).

use latchkey_client::protocol::{DaemonStats, Empty, GrantType};
use latchkey_client::ErrorKind;
use latchkey_tests::browser::Browser;
use latchkey_tests::fixture::*;
use latchkey_tests::postgres::TestDatabase;
use latchkey_tests::provider::Provider;
use latchkey_tests::{DaemonHandle, DaemonOpts, TestEnv};
use secrecy::ExposeSecret;
use serde_json::json;
use std::time::Duration;

/// The tests here count refreshes against whole-second expiries with a
/// thousand callers: one at a time, so that none slows another's rounds.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The access tokens' lifetime: each round waits this long for an expiry.
const TTL_SECS: u64 = 2;

fn refreshes(p: &Provider) -> u64 {
    p.stats().grant("refresh_token")
}

/// Three daemons on one database, the first of which added the provider
/// and the credential `app` and logged it in; the others only unlocked.
struct Fleet {
    p: Provider,
    members: Vec<(TestEnv, DaemonHandle)>,
    _db: TestDatabase,
}

fn fleet(daemons: usize) -> Option<Fleet> {
    let p = provider(TTL_SECS, json!({}));
    let first = TestEnv::new();
    let db = TestDatabase::create(&first)?;
    db.serve(&first);
    let d = first.start_daemon_with(DaemonOpts::new().unlocked(&first));
    first.init();
    first.add_provider(IDP, p.issuer());
    add_public(&first, "app", GrantType::AuthorizationCode);
    let login = first.browser_login("app", &Browser::new());
    assert!(login.refresh_token);
    let mut members = vec![(first, d)];
    for _ in 1..daemons {
        let env = TestEnv::new();
        db.serve(&env);
        let d = env.start_daemon_with(DaemonOpts::new().unlocked(&env));
        members.push((env, d));
    }
    Some(Fleet {
        p,
        members,
        _db: db,
    })
}

impl Fleet {
    /// `callers` at once, spread over the daemons: every caller's token.
    fn burst(&self, callers: usize) -> Vec<String> {
        let n = self.members.len();
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .members
                .iter()
                .enumerate()
                .map(|(i, (env, _))| {
                    let share = callers / n + usize::from(i < callers % n);
                    s.spawn(move || concurrent_tokens(env, "app", share))
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("no daemon's callers panicked"))
                .collect()
        })
    }
}

#[test]
fn three_daemons_make_one_refresh_per_expiry_for_a_thousand_callers() {
    let _serial = serial();
    const EXPIRIES: u64 = 50;
    const CALLERS: usize = 1000;
    let Some(f) = fleet(3) else {
        return;
    };
    // The login's token is fresh: answered from memory (or the database)
    // everywhere, no refresh.
    let before = refreshes(&f.p);
    let first = f.burst(CALLERS);
    assert!(first.iter().all(|t| t == &first[0]));
    assert_eq!(refreshes(&f.p), before);
    let mut previous = first[0].clone();
    for expiry in 1..=EXPIRIES {
        // Past the last token's expiry: it was obtained during the last
        // burst, and lives two whole seconds.
        std::thread::sleep(Duration::from_millis(TTL_SECS * 1000 + 150));
        let tokens = f.burst(CALLERS);
        assert_eq!(tokens.len(), CALLERS);
        let distinct: std::collections::BTreeSet<&String> = tokens.iter().collect();
        if distinct.len() != 1 {
            for (env, _) in &f.members {
                eprintln!("{}", env.all_daemon_logs());
            }
        }
        assert_eq!(
            distinct.len(),
            1,
            "expiry {expiry}: every caller of every daemon gets the one new token ({} refreshes)",
            refreshes(&f.p) - before
        );
        assert_ne!(tokens[0], previous, "expiry {expiry}: a new token");
        assert_eq!(
            refreshes(&f.p),
            before + expiry,
            "expiry {expiry}: exactly one refresh request for the fleet"
        );
        assert_eq!(
            f.p.resource(&tokens[0]),
            200,
            "expiry {expiry}: the token is valid"
        );
        previous = tokens[0].clone();
    }
    // Every refresh token was used once and only once: no invalid_grant,
    // no reuse (which would have ended the grant at oidc-provider).
    let issued = f.p.refresh_tokens(PUBLIC_ID);
    assert_eq!(issued.len() as u64, EXPIRIES + 1, "{issued:?}");
    assert!(issued[..issued.len() - 1].iter().all(|r| r.consumed));
    assert!(active(&f.p, &issued.last().unwrap().token));
    for (env, _) in &f.members {
        let shown = env
            .latchkey(&["credential", "show", "app", "--json"])
            .json();
        assert_eq!(shown["state"], "ready", "{shown}");
    }
    // Three daemons wrote the one audit chain all along, each batch in
    // its turn: it verifies whole, from any of them.
    for (env, _) in &f.members {
        let verify = env.latchkey(&["audit", "verify"]);
        assert_eq!(verify.code, 0, "{verify:?}");
    }
}

/// Proactive refreshes are coordinated the same way: with 12-s tokens and
/// steady callers on three daemons, each token is replaced ahead of its
/// expiry by one daemon of the fleet, once, and no caller waits.
#[test]
fn proactive_refresh_is_made_once_for_the_fleet() {
    let _serial = serial();
    const SECS: u64 = 30;
    let Some(f) = fleet(3) else {
        return;
    };
    f.p.set_access_token_ttl(PUBLIC_ID, 12);
    // A first refresh gives a 12-s token (the login's lives 2 s).
    std::thread::sleep(Duration::from_millis(TTL_SECS * 1000 + 150));
    let first = f.burst(3);
    assert!(first.iter().all(|t| t == &first[0]));
    let before = refreshes(&f.p);
    let waits_before: Vec<u64> = f
        .members
        .iter()
        .map(|(env, _)| env.rpc::<DaemonStats>(&Empty {}).unwrap().waits)
        .collect();
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(SECS);
    std::thread::scope(|s| {
        for (env, _) in &f.members {
            let seen = &seen;
            s.spawn(move || {
                let mut client = env.client();
                while std::time::Instant::now() < deadline {
                    let t = client.token("app").expect("a token at every call");
                    seen.lock()
                        .unwrap()
                        .insert(t.access_token.expose_secret().to_string());
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    let made = refreshes(&f.p) - before;
    let seen = seen.into_inner().unwrap();
    // Each 12-s token is due about 6 s after it was made: ~5 in 30 s for
    // the fleet (three daemons on their own would make three times that).
    eprintln!(
        "proactive refreshes in {SECS} s: {made}; distinct tokens served: {}",
        seen.len()
    );
    assert!((3..=7).contains(&made), "{made} refreshes in {SECS} s");
    assert!(
        seen.len() as u64 <= made + 1,
        "every refresh's token is the fleet's: {} tokens for {made} refreshes",
        seen.len()
    );
    for ((env, _), before) in f.members.iter().zip(waits_before) {
        let waits = env.rpc::<DaemonStats>(&Empty {}).unwrap().waits;
        assert_eq!(waits, before, "no caller waited on a refresh");
    }
}

/// `callers` at once on one daemon: each caller's token or error kind.
fn burst_results(env: &TestEnv, callers: usize) -> Vec<Result<String, ErrorKind>> {
    runtime().block_on(async {
        let clients = env.async_clients(callers).await;
        latchkey_testkit::burst(clients, |mut client| async move {
            tokio::time::timeout(CALL_TIMEOUT, client.token("app"))
                .await
                .expect("token.get answered in time")
                .map(|t| t.access_token.expose_secret().to_string())
                .map_err(|e| e.kind().unwrap_or(ErrorKind::Unknown))
        })
        .await
        .expect("no caller panicked")
        .results
    })
}

/// The refreshing daemon killed with SIGKILL at random points of its
/// refresh: the database releases its lock, a sibling takes over. Nothing
/// is lost unless the provider had already been asked (it consumed the
/// refresh token for a daemon that died before committing what it got):
/// then, and only then, the credential needs a new login, which every
/// daemon reports. Those rounds are counted.
#[test]
fn a_refresher_killed_mid_refresh_hands_over_to_a_sibling() {
    let _serial = serial();
    const ROUNDS: usize = 10;
    const DELAY_MS: u64 = 400;
    let Some(mut f) = fleet(3) else {
        return;
    };
    // Every refresh request waits at the provider before it is answered
    // (and before oidc-provider consumes the refresh token).
    f.p.delay_all(DELAY_MS);
    let (mut handed_over, mut consumed) = (0, 0);
    for round in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(TTL_SECS * 1000 + 150));
        let victim = round % f.members.len();
        let before = refreshes(&f.p);
        let kill_after = Duration::from_millis(rand::random_range(0..DELAY_MS * 2));
        {
            let (env, daemon) = &f.members[victim];
            let socket = env.socket.clone();
            // The victim's caller starts a refresh; it dies with it.
            let caller = std::thread::spawn(move || {
                let _ = latchkey_client::blocking::Client::connect_to(&socket)
                    .and_then(|mut c| c.token("app"));
            });
            std::thread::sleep(kill_after);
            assert!(
                env.kill_daemon(daemon),
                "round {round}: the victim was running"
            );
            caller.join().unwrap();
        }
        // Did the dead daemon's request reach the provider?
        let reached = refreshes(&f.p) > before;
        let survivors: Vec<usize> = (0..f.members.len()).filter(|&i| i != victim).collect();
        let results: Vec<Result<String, ErrorKind>> = survivors
            .iter()
            .flat_map(|&i| burst_results(&f.members[i].0, 50))
            .collect();
        if results.iter().all(|r| r.is_ok()) {
            let tokens: std::collections::BTreeSet<_> =
                results.iter().map(|r| r.clone().unwrap()).collect();
            assert_eq!(
                tokens.len(),
                1,
                "round {round}: one token for the survivors"
            );
            let token = tokens.into_iter().next().unwrap();
            assert_eq!(f.p.resource(&token), 200, "round {round}: a valid token");
            handed_over += 1;
        } else {
            // Lost only in the provider-consumed window: the dead daemon's
            // request had reached the provider.
            assert!(
                reached,
                "round {round}: the grant was lost although the provider was never asked (killed after {kill_after:?})"
            );
            assert!(
                results.iter().all(|r| *r == Err(ErrorKind::ReauthRequired)),
                "round {round}: every survivor says needs_login: {results:?}"
            );
            for &i in &survivors {
                let shown = f.members[i]
                    .0
                    .latchkey(&["credential", "show", "app", "--json"])
                    .json();
                assert_eq!(shown["state"], "needs_login", "round {round}: {shown}");
            }
            consumed += 1;
            // A new login on a survivor restores the whole fleet.
            let login = f.members[survivors[0]]
                .0
                .browser_login("app", &Browser::new());
            assert!(login.refresh_token);
        }
        let env = &f.members[victim].0;
        let restarted = env.start_daemon_with(DaemonOpts::new().unlocked(env));
        f.members[victim].1 = restarted;
    }
    eprintln!(
        "killed refreshers: {ROUNDS} rounds, {handed_over} handed over to a sibling, {consumed} lost in the provider-consumed window (needs_login)"
    );
    assert_eq!(handed_over + consumed, ROUNDS);
    // After it all, every daemon serves the one live grant.
    f.p.delay_all(0);
    std::thread::sleep(Duration::from_millis(TTL_SECS * 1000 + 150));
    let tokens = f.burst(30);
    assert!(tokens.iter().all(|t| t == &tokens[0]));
    assert_eq!(f.p.resource(&tokens[0]), 200);
}

/// What one daemon changes, the others follow without a restart: a new
/// credential, its removal, a revoked grant, a rekey (the others lock and
/// unlock again), and `panic` (all lock).
#[test]
fn siblings_follow_credentials_revocation_rekey_and_panic() {
    let _serial = serial();
    let Some(f) = fleet(2) else {
        return;
    };
    let (one, two) = (&f.members[0].0, &f.members[1].0);
    let rs = latchkey_tests::provider::ClientSpec::client_credentials(
        RS_ID,
        RS_SECRET,
        "client_secret_basic",
        "",
    );
    client_credentials(one, IDP, "svc", &rs);
    let listed = |env: &TestEnv| -> Vec<String> {
        env.latchkey(&["credential", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    latchkey_tests::wait_for(
        "the sibling sees the new credential",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || listed(two).contains(&"svc".to_owned()).then_some(()),
    );
    assert!(two.token_get("svc", None).is_ok(), "the sibling serves it");
    one.latchkey(&["credential", "remove", "svc", "--local-only"])
        .success();
    latchkey_tests::wait_for(
        "the sibling forgets the removed credential",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (!listed(two).contains(&"svc".to_owned())).then_some(()),
    );

    // A revoked grant is revoked for the fleet.
    assert!(two.token_get("app", None).is_ok());
    one.latchkey(&["revoke", "app"]).success();
    latchkey_tests::wait_for(
        "the sibling drops the revoked grant",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            matches!(two.token_get("app", None), Err(e) if e.kind() == Some(ErrorKind::ReauthRequired))
            .then_some(())
        },
    );

    // A new data key on one machine: the sibling's key opens nothing any
    // more, so it locks; unlocked again, it reads the vault as before.
    let pass = one.passphrase_file();
    one.latchkey(&["rekey", "--passphrase-file", pass.to_str().unwrap()])
        .success();
    latchkey_tests::wait_for(
        "the sibling locks after a rekey",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let status = two.latchkey(&["status", "--json"]).json();
            (status["vault"] == "locked").then_some(())
        },
    );
    let pass = two.passphrase_file();
    two.latchkey(&["unlock", "--passphrase-file", pass.to_str().unwrap()])
        .success();
    assert!(listed(two).contains(&"app".to_owned()));

    // Panic on one machine locks every daemon of the fleet.
    one.latchkey(&["panic"]).success();
    latchkey_tests::wait_for(
        "the sibling locks after a panic",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let status = two.latchkey(&["status", "--json"]).json();
            (status["vault"] == "locked").then_some(())
        },
    );
}
