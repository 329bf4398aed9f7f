//! A fleet sharing one credential: three daemons (separate runtime dirs,
//! sockets and data dirs, as on three machines) on one PostgreSQL vault,
//! one user credential at oidc-provider whose refresh tokens rotate on
//! every use and whose reuse ends the whole grant. At every expiry, a
//! thousand callers spread over the three daemons ask at once: the fleet
//! makes exactly one refresh request, and every caller gets its token.
//!
//! Needs `cargo build --workspace --bins`, `npm ci --prefix tests/provider`
//! and `source .ci/postgres-env.sh` (`.ci/test` does all three).

use latchkey_client::protocol::GrantType;
use latchkey_tests::browser::Browser;
use latchkey_tests::fixture::*;
use latchkey_tests::postgres::TestDatabase;
use latchkey_tests::provider::Provider;
use latchkey_tests::{DaemonHandle, DaemonOpts, TestEnv};
use serde_json::json;
use std::time::{Duration, Instant};

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
    let mut started = Instant::now();
    for expiry in 1..=EXPIRIES {
        // Past the last token's expiry (whole seconds: two, and a margin).
        let wait = Duration::from_millis(TTL_SECS * 1000 + 150).saturating_sub(started.elapsed());
        std::thread::sleep(wait);
        started = Instant::now();
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
}
