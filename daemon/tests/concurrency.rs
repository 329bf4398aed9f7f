//! The vault under concurrency, in-process (the harness of `common`, with
//! tokio's clock paused and held still): a slow key derivation stalls no
//! one else, a rekey excludes every writer, a lock waits for a refresh to
//! commit its rotated refresh token, a requested lock holds against
//! unattended unlocks, and the unlock limiter survives a restart.
//!
//! Some tests hold a key derivation still through the daemon's test hook,
//! which is global to this process: every test here takes [`SERIAL`]
//! first, so no test's derivation is caught by another's hook.

mod common;

use common::*;
use latchkey_client::protocol::*;
use latchkey_client::secrecy::SecretString;
use latchkey_daemon::test_hooks;
use latchkey_testkit::token_endpoint::UserClientConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The next Argon2id derivation in this process, held still.
struct HeldDerivation {
    entered: Option<tokio::sync::oneshot::Receiver<()>>,
    release: std::sync::mpsc::Sender<()>,
    blocked: Arc<AtomicBool>,
}

/// 10 s: how long a held derivation waits for its release at most. A
/// bound, not a measurement: on a daemon that makes the test's own calls
/// wait for the derivation, the test can never release it, and the wait
/// ends here (so the test fails instead of hanging).
const HOLD_BOUND: Duration = Duration::from_secs(10);

fn hold_next_derivation() -> HeldDerivation {
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let blocked = Arc::new(AtomicBool::new(false));
    let once = Mutex::new(Some((entered_tx, release_rx)));
    let flag = Arc::clone(&blocked);
    test_hooks::set_before_derive(Some(Arc::new(move || {
        let Some((entered, release)) = once.lock().unwrap().take() else {
            return;
        };
        flag.store(true, Ordering::SeqCst);
        let _ = entered.send(());
        let _ = release.recv_timeout(HOLD_BOUND);
        flag.store(false, Ordering::SeqCst);
    })));
    HeldDerivation {
        entered: Some(entered),
        release,
        blocked,
    }
}

impl HeldDerivation {
    /// Returns once the daemon is inside the held derivation.
    async fn entered(&mut self) {
        let entered = self.entered.take().expect("entered once");
        entered.await.expect("the daemon derived a key");
    }

    fn still_held(&self) -> bool {
        self.blocked.load(Ordering::SeqCst)
    }
}

impl Drop for HeldDerivation {
    fn drop(&mut self) {
        let _ = self.release.send(());
        test_hooks::set_before_derive(None);
    }
}

/// Polls `done` until it holds, with a bound (the daemon works in real
/// time here: the clock is held still).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("gave up waiting for {what}");
}

fn secret_of(s: &str) -> SecretString {
    SecretString::from(s)
}

/// A passphrase change derives two keys (Argon2id), which may take a
/// second, or hang in a crafted case; `token.get` of other callers on the
/// unlocked vault (here a cache miss that reads the client secret from the
/// vault and seals the new token into it) must not wait for that. The
/// passphrase change is the operation that shows it: it really derives
/// while the vault is unlocked (an unlock of an unlocked vault returns at
/// once), and it used to hold the vault mutex across both derivations.
#[tokio::test(start_paused = true)]
async fn a_slow_key_derivation_does_not_delay_other_callers() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_cc_credential(&mut c, "api").await;

    let mut held = hold_next_derivation();
    let mut other = d.client().await;
    let change = tokio::spawn(async move {
        let params = ChangePassphraseParams {
            breached_list: None,
            old: secret_of(PASSPHRASE),
            new: secret_of("another passphrase, longer"),
            totp: None,
        };
        other.request::<VaultChangePassphrase>(&params).await
    });
    held.entered().await;

    let token = c
        .token("api")
        .await
        .expect("a token while the derivation is held");
    assert!(
        held.still_held(),
        "token.get answered only after the key derivation was let go"
    );
    assert_eq!(d.endpoint.served(), 1);
    assert!(!secret(&token).is_empty());

    drop(held);
    change
        .await
        .expect("the change task")
        .expect("the passphrase change completes");
    c.request::<VaultLock>(&Empty {}).await.expect("vault.lock");
    unlock(&mut c, "another passphrase, longer")
        .await
        .expect("the new passphrase opens the vault");
    d.stop().await;
}

/// A credential added while a rekey derives its slot keys is sealed
/// either before the rekey's transaction (and re-sealed by it) or after it
/// under the new key — never under the old key after the rekey committed,
/// which would make it unreadable at the next unlock.
#[tokio::test(start_paused = true)]
async fn a_credential_added_during_a_rekey_is_readable_after_the_next_unlock() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_cc_credential(&mut c, "early").await;

    let mut held = hold_next_derivation();
    let mut other = d.client().await;
    let rekey = tokio::spawn(async move {
        let params = RekeyParams {
            passphrase: Some(secret_of(PASSPHRASE)),
            totp: None,
        };
        other.request::<VaultRekey>(&params).await
    });
    held.entered().await;
    add_cc_credential(&mut c, "late").await;
    // Asserted last: what matters first is that nothing is lost.
    let added_while_held = held.still_held();
    drop(held);
    let rekeyed = rekey.await.expect("the rekey task").expect("vault.rekey");
    assert_eq!(rekeyed.slots, 1);

    c.request::<VaultLock>(&Empty {}).await.expect("vault.lock");
    unlock(&mut c, PASSPHRASE).await.expect("unlocks");
    for name in ["early", "late"] {
        let info = show(&mut c, name).await;
        assert_ne!(info.state, CredentialState::Corrupt, "credential '{name}'");
        // Its client secret opens under the vault's key: a token comes.
        c.token(name)
            .await
            .unwrap_or_else(|e| panic!("a token for '{name}': {e}"));
    }
    assert!(
        added_while_held,
        "credential.add waited for the rekey's derivation"
    );
    d.stop().await;
}

/// A lock while a refresh is out waits for the refresh to commit the
/// rotated refresh token (the provider honours only that one), then locks.
#[tokio::test(start_paused = true)]
async fn a_lock_waits_for_a_refresh_to_commit_its_rotated_refresh_token() {
    let _serial = SERIAL.lock().await;
    let mut d = TestDaemon::start(Opts::default()).await;
    d.endpoint.add_user_client(
        "app",
        UserClientConfig {
            login_lifetime: 3600,
            refresh_lifetime: 3600,
            refresh_delay: Duration::from_secs(20),
        },
    );
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_device_credential(&mut c, "user", "app").await;
    let start = LoginStartParams {
        credential: "user".into(),
        device: true,
        timeout_secs: None,
    };
    let started = c.request::<LoginStart>(&start).await.expect("login.start");
    let wait = LoginWaitParams {
        login_id: started.login_id,
    };
    let login = d
        .running(c.request::<LoginWait>(&wait))
        .await
        .expect("the endpoint approves device logins at once");
    assert!(login.refresh_token);

    let force = TokenParams {
        credential: "user".into(),
        scopes: None,
        min_ttl: Some(7200), // longer than the tokens live: one refresh,
        confirm_wait_secs: None,
    };
    let mut other = d.client().await;
    let refreshing = tokio::spawn(async move { other.token_with(&force).await });
    until("the refresh to reach the endpoint", || {
        d.endpoint.user_stats("app").refreshes == 1
    })
    .await;
    // The endpoint has rotated the refresh token and answers in 20 s; the
    // lock lets the clock run while it waits.
    d.running(c.request::<VaultLock>(&Empty {}))
        .await
        .expect("vault.lock");
    // (With the clock running: a daemon that locked at once leaves the
    // refresh waiting on the endpoint's 20 s.)
    let refreshed = d
        .running(refreshing)
        .await
        .expect("the refresh task")
        .expect("the refresh in flight completed and was served");
    assert_eq!(vault_state(&mut c).await, VaultState::Locked);

    unlock(&mut c, PASSPHRASE).await.expect("unlocks");
    let stored = c.token("user").await.expect("the refreshed token, stored");
    assert_eq!(secret(&stored), secret(&refreshed));
    let force = TokenParams {
        credential: "user".into(),
        scopes: None,
        min_ttl: Some(7200),
        confirm_wait_secs: None,
    };
    d.running(c.token_with(&force))
        .await
        .expect("the rotated refresh token was kept: the provider honours it");
    let stats = d.endpoint.user_stats("app");
    assert_eq!((stats.refreshes, stats.refresh_rejected), (2, 0));
    d.stop().await;
}

/// `latchkey lock` holds: an unlock that says it is automatic is refused
/// with `locked` and a message naming `latchkey unlock`, until an explicit
/// unlock; the idle auto-lock does not hold.
#[tokio::test(start_paused = true)]
async fn a_requested_lock_holds_against_automatic_unlocks_and_the_idle_lock_does_not() {
    let _serial = SERIAL.lock().await;
    let mut d = TestDaemon::start(Opts {
        idle_timeout: Duration::from_secs(5),
        ..Opts::default()
    })
    .await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    let automatic = UnlockParams {
        passphrase: Some(secret_of(PASSPHRASE)),
        unattended: true,
        ..UnlockParams::default()
    };

    c.request::<VaultLock>(&Empty {}).await.expect("vault.lock");
    let refused = c.request::<VaultUnlock>(&automatic).await;
    let Err(latchkey_client::Error::Daemon { kind, message, .. }) = refused else {
        panic!("an automatic unlock of a held lock must fail");
    };
    assert_eq!(kind, ErrorKind::Locked);
    assert!(
        message.starts_with("the vault was locked by `latchkey lock` at ")
            && message.ends_with(": unlock it with `latchkey unlock`"),
        "{message}"
    );
    assert_eq!(vault_state(&mut c).await, VaultState::Locked);
    // Explicit: unlocks, and ends the hold.
    unlock(&mut c, PASSPHRASE)
        .await
        .expect("an explicit unlock");

    d.pass(6).await;
    assert_eq!(vault_state(&mut c).await, VaultState::Locked, "idle lock");
    let opened = c
        .request::<VaultUnlock>(&automatic)
        .await
        .expect("an automatic unlock after the idle lock");
    assert!(!opened.already_unlocked);

    // `panic` holds too, and says so.
    let panic = c
        .request::<VaultPanic>(&PanicParams { provider: None })
        .await
        .expect("vault.panic");
    assert!(panic.locked);
    let refused = c.request::<VaultUnlock>(&automatic).await;
    let Err(latchkey_client::Error::Daemon { kind, message, .. }) = refused else {
        panic!("an automatic unlock after panic must fail");
    };
    assert_eq!(kind, ErrorKind::Locked);
    assert!(
        message.starts_with("the vault was locked by `latchkey panic` at "),
        "{message}"
    );
    d.stop().await;
}

/// Wrong passphrases until unlocking is refused, a restart (which any
/// same-user program can cause with `daemon.shutdown`), and the next
/// attempt is still refused, with the time to wait.
#[tokio::test(start_paused = true)]
async fn the_unlock_limiter_survives_a_restart() {
    let _serial = SERIAL.lock().await;
    let mut d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    c.request::<VaultLock>(&Empty {}).await.expect("vault.lock");
    // Failures 4, 5, 6 each come after the wait the one before set: the
    // delay reaches 8 s, far more than a restart takes.
    for failure in 1..=6u32 {
        assert_eq!(
            kind(unlock(&mut c, "wrong").await),
            ErrorKind::WrongPassphrase
        );
        if (3..6).contains(&failure) {
            let (limited, retry_after) = kind_and_retry(unlock(&mut c, "wrong").await);
            assert_eq!(limited, ErrorKind::RateLimited);
            d.pass(retry_after.expect("says when")).await;
        }
    }
    let (limited, before) = kind_and_retry(unlock(&mut c, PASSPHRASE).await);
    assert_eq!(limited, ErrorKind::RateLimited);
    assert!(before.expect("says when") >= 4, "{before:?}");
    drop(c);

    let d = d.restart(Opts::default()).await;
    let mut c = d.client().await;
    let (limited, after) = kind_and_retry(unlock(&mut c, PASSPHRASE).await);
    assert_eq!(limited, ErrorKind::RateLimited, "the restart reset nothing");
    assert!(after.is_some_and(|s| s > 0), "{after:?}");
    assert_eq!(vault_state(&mut c).await, VaultState::Locked);
    d.stop().await;
}
