//! Crash safety of refresh-token rotation: hundreds of refreshes (each
//! `token.get` forces one with a `min_ttl` longer than any token lives)
//! while the daemon is SIGKILLed at random moments during a `token.get`.
//!
//! After every restart (unlocked from LATCHKEY_PASSPHRASE_FILE) the
//! credential must still refresh — or be honestly `needs_login`, which is
//! only possible when the killed refresh reached the provider (it consumed
//! the old refresh token) and its rotation was not yet committed; never when
//! the killed call had already returned its token (the rotated refresh token
//! is committed before any access token goes out). Then the test logs in
//! again and goes on. Any other outcome is a failure.
//!
//! Set `LATCHKEY_CRASH_SEED` to replay a run's kill timings.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use std::time::{Duration, Instant};

use latchkey_client::protocol::{Empty, GrantType, Status, StatusResult, VaultState};
use latchkey_client::ErrorKind;
use latchkey_tests::browser::Browser;
use latchkey_tests::fixture::*;
use latchkey_tests::{DaemonOpts, TestEnv};
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use serde_json::json;

/// Successful refreshes to reach.
const CYCLES: u64 = 500;
/// Share of iterations that kill the daemon during a `token.get`.
const KILL_PROBABILITY: f64 = 0.25;
/// The whole loop must finish within this.
const BUDGET: Duration = Duration::from_secs(80);
/// Longer than any token here lives: every call refreshes.
const FORCE: Option<u64> = Some(7200);

/// A forcing `token.get` on a fresh connection; a connection that fails
/// (the daemon is being killed) is an error, not a panic.
fn try_token(env: &TestEnv) -> Result<latchkey_client::TokenReply, latchkey_client::Error> {
    let mut client = latchkey_client::blocking::Client::connect_to(&env.socket)?;
    client.set_timeout(Some(Duration::from_secs(30)))?;
    client.token_with(&latchkey_client::TokenParams {
        credential: "app".into(),
        scopes: None,
        min_ttl: FORCE,
        confirm_wait_secs: None,
    })
}

#[derive(Debug, Default)]
struct Figures {
    cycles: u64,
    kills: u64,
    /// The killed call had already answered with a token.
    answered_before_kill: u64,
    /// The killed refresh had reached the provider.
    reached_provider: u64,
    needs_login_after_kill: u64,
}

#[test]
fn rotating_refresh_tokens_survive_sigkill_at_random_moments() {
    let seed = std::env::var("LATCHKEY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    println!("LATCHKEY_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let p = provider(3600, json!({}));
    let env = TestEnv::new();
    // 500 forced refreshes, as fast as they go: far past the provider's
    // rate limit of one app (10/s), which is not what this measures.
    let opts = || {
        DaemonOpts::new()
            .unlocked(&env)
            .arg("--provider-rate-limit")
            .arg("off")
    };
    let mut daemon = env.start_daemon_with(opts());
    env.init();
    env.add_provider(IDP, p.issuer());
    add_confidential(&env, "app", GrantType::AuthorizationCode);
    env.browser_login("app", &Browser::new());

    // How long a forcing token.get takes here: kills land in [0, 2x] of it.
    let mut samples = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        env.token_get("app", FORCE).expect("calibration refresh");
        samples.push(t.elapsed());
    }
    samples.sort();
    let typical = samples[samples.len() / 2];
    println!("a forcing token.get takes ~{typical:?}");

    let mut f = Figures {
        cycles: samples.len() as u64,
        ..Figures::default()
    };
    let started = Instant::now();
    while f.cycles < CYCLES {
        assert!(
            started.elapsed() < BUDGET,
            "the crash loop overran its {BUDGET:?} budget: {f:?}"
        );
        if !rng.random_bool(KILL_PROBABILITY) {
            let t = env
                .token_get("app", FORCE)
                .unwrap_or_else(|e| panic!("refresh failed with no kill involved: {e}; {f:?}"));
            assert_eq!(p.resource(t.access_token.expose_secret()), 200);
            f.cycles += 1;
            continue;
        }

        // A token.get, and a SIGKILL at a random moment after it starts.
        let delay = Duration::from_micros(rng.random_range(0..=2 * typical.as_micros() as u64));
        let before = p.stats().grant("refresh_token");
        let outcome = std::thread::scope(|s| {
            let call = s.spawn(|| try_token(&env));
            std::thread::sleep(delay);
            assert!(
                env.kill_daemon(&daemon),
                "the daemon was running until the kill"
            );
            call.join().expect("the caller thread")
        });
        f.kills += 1;
        let answered = match &outcome {
            Ok(_) => {
                f.answered_before_kill += 1;
                f.cycles += 1;
                true
            }
            // The connection died with the daemon (or never got made).
            Err(e) if e.kind().is_none() => false,
            Err(e) => panic!("the killed call got a daemon error: {e}; {f:?}"),
        };
        let reached = p.stats().grant("refresh_token") > before;
        if reached {
            f.reached_provider += 1;
        }

        daemon = env.start_daemon_with(opts());
        let status: StatusResult = env.rpc::<Status>(&Empty {}).unwrap();
        assert_eq!(
            status.vault,
            VaultState::Unlocked,
            "unlocked at start from the passphrase file"
        );
        match env.token_get("app", FORCE) {
            Ok(t) => {
                assert_eq!(p.resource(t.access_token.expose_secret()), 200);
                f.cycles += 1;
            }
            Err(e) if e.kind() == Some(ErrorKind::ReauthRequired) => {
                f.needs_login_after_kill += 1;
                assert!(
                    e.to_string().contains("latchkey login app"),
                    "{e}"
                );
                assert!(
                    !answered,
                    "needs_login after a kill that came after the call had answered with its token: the rotated refresh token was not durable before the token went out; {f:?}"
                );
                assert!(
                    reached,
                    "needs_login although the killed refresh never reached the provider (after {delay:?}); {f:?}"
                );
                assert_eq!(env.credential_show("app").state, latchkey_client::protocol::CredentialState::NeedsLogin);
                env.browser_login("app", &Browser::new());
            }
            Err(e) => panic!("after a restart, token.get failed with neither success nor reauth_required: {e}; {f:?}"),
        }
    }
    println!(
        "cycles={} kills={} needs_login_after_kill={} (answered_before_kill={}, reached_provider={}) in {:?}",
        f.cycles,
        f.kills,
        f.needs_login_after_kill,
        f.answered_before_kill,
        f.reached_provider,
        started.elapsed()
    );
    assert!(f.kills >= 20, "enough kills to mean something: {f:?}");
    // Only kills inside the short window between the provider's rotation
    // and the commit may cost a login.
    assert!(
        f.needs_login_after_kill * 2 <= f.kills,
        "needs_login after more than half of the kills: {f:?}"
    );
    assert!(
        f.needs_login_after_kill * 4 <= f.cycles,
        "needs_login costs more than 1 login per 4 refreshes: {f:?}"
    );
}
