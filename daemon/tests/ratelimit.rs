//! The rate limits, in-process on a real socket (the harness of `common`,
//! tokio's clock paused and held still, so buckets refill only when a test
//! lets time pass): one app flooding is refused while another is served;
//! the provider's limit is stricter, charges the caller that starts a
//! request and not those that join it; login starts are limited per
//! credential, whoever asks; wrong passphrases meet growing delays, every
//! one of them and every wait audited.
//!
//! Two apps from one test process: the daemon tells apps apart by their
//! executable (path and hash, from the socket's peer credentials), so the
//! second app is this test binary run again from another path (a hard
//! link, else a copy), as the test `second_app`, which does nothing unless
//! [`SECOND_APP`] is set.

mod common;

use common::*;
use latchkey_client::protocol::*;
use latchkey_daemon::{Rate, RateLimits};
use latchkey_testkit::token_endpoint::UserClientConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Set (to the socket path) only in the child process `second_app` runs in.
const SECOND_APP: &str = "LATCHKEY_TEST_SECOND_APP";

/// What the second app does: `status`, `token` (of a credential, with a
/// `min_ttl`) or `login` (a device login start), `calls` times.
struct Work<'a> {
    method: &'a str,
    credential: &'a str,
    min_ttl: u64,
    calls: u32,
}

/// What the second app saw: calls answered, and kinds of the refused.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    answered: u32,
    refused: Vec<String>,
}

/// Not a test of its own: the body of the second app (see the module
/// docs). Prints one `SECOND_APP` line per call.
#[test]
fn second_app() {
    let Some(socket) = std::env::var_os(SECOND_APP) else {
        return;
    };
    let var = |name: &str| std::env::var(format!("{SECOND_APP}_{name}")).expect(name);
    let calls: u32 = var("CALLS").parse().expect("a count");
    let method = var("METHOD");
    let credential = var("CREDENTIAL");
    let min_ttl: u64 = var("MIN_TTL").parse().expect("seconds");
    let mut c = latchkey_client::blocking::Client::connect_to(Path::new(&socket))
        .expect("the second app connects");
    for _ in 0..calls {
        let outcome = match method.as_str() {
            "status" => c.status().map(drop),
            "token" => c
                .token_with(&TokenParams {
                    credential: credential.clone(),
                    scopes: None,
                    min_ttl: Some(min_ttl),
                    confirm_wait_secs: None,
                })
                .map(drop),
            "login" => c
                .request::<LoginStart>(&LoginStartParams {
                    credential: credential.clone(),
                    device: true,
                    timeout_secs: None,
                })
                .map(drop),
            other => panic!("unknown method {other}"),
        };
        match outcome {
            Ok(()) => println!("SECOND_APP answered"),
            Err(e) => println!(
                "SECOND_APP refused {}",
                e.kind().map_or_else(|| e.to_string(), |k| k.to_string())
            ),
        }
    }
}

/// This test binary at another path: another app to the daemon.
struct SecondApp {
    exe: PathBuf,
    _dir: tempfile::TempDir,
}

impl SecondApp {
    fn new() -> SecondApp {
        let me = std::env::current_exe().expect("the test binary's path");
        // Beside it, so a hard link works (same file system).
        let dir = tempfile::Builder::new()
            .prefix("second-app-")
            .tempdir_in(me.parent().expect("a directory"))
            .expect("a temp dir beside the test binary");
        let exe = dir.path().join("second-app");
        if std::fs::hard_link(&me, &exe).is_err() {
            std::fs::copy(&me, &exe).expect("a copy of the test binary");
        }
        SecondApp { exe, _dir: dir }
    }

    /// Runs `work` against `socket` in the second app; on a blocking
    /// thread, so the daemon on this test's runtime serves it meanwhile.
    async fn run(&self, socket: &Path, work: Work<'_>) -> Seen {
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.args(["second_app", "--exact", "--nocapture", "--test-threads=1"])
            .env(SECOND_APP, socket)
            .env(format!("{SECOND_APP}_METHOD"), work.method)
            .env(format!("{SECOND_APP}_CREDENTIAL"), work.credential)
            .env(format!("{SECOND_APP}_MIN_TTL"), work.min_ttl.to_string())
            .env(format!("{SECOND_APP}_CALLS"), work.calls.to_string());
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("the wait for the second app")
            .expect("the second app runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the second app failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut seen = Seen {
            answered: 0,
            refused: Vec::new(),
        };
        // libtest's "test second_app ... " may start the first line.
        let lines = stdout
            .lines()
            .filter_map(|l| l.split_once("SECOND_APP ").map(|(_, r)| r));
        for line in lines {
            match line.split_once(' ') {
                Some(("refused", kind)) => seen.refused.push(kind.to_owned()),
                _ if line == "answered" => seen.answered += 1,
                _ => panic!("unexpected line from the second app: {line}"),
            }
        }
        seen
    }
}

/// `calls` `status` calls on `c`: how many were answered, and every
/// refusal's (kind, retry_after, message).
async fn flood(
    c: &mut latchkey_client::Client,
    calls: u32,
) -> (u32, Vec<(ErrorKind, Option<u64>, String)>) {
    let mut answered = 0;
    let mut refused = Vec::new();
    for _ in 0..calls {
        match c.status().await {
            Ok(_) => answered += 1,
            Err(latchkey_client::Error::Daemon {
                kind,
                message,
                retry_after,
                ..
            }) => refused.push((kind, retry_after, message)),
            Err(e) => panic!("not a daemon error: {e}"),
        }
    }
    (answered, refused)
}

/// The audit rows with `event`, as (credential, app, detail), once the
/// audit writer has written at least `at_least` of them (bounded wait).
async fn audit_rows(
    socket: &Path,
    event: &'static str,
    at_least: usize,
) -> Vec<(Option<String>, Option<String>, Option<String>)> {
    let vault = socket.with_file_name("vault.db");
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open_with_flags(
            &vault,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("the vault file opens");
        let mut rows = Vec::new();
        // Bounded: the writer batches within milliseconds.
        for _ in 0..400 {
            let mut stmt = conn
                .prepare("SELECT credential, app, detail FROM audit WHERE event = ?1 ORDER BY seq")
                .expect("the audit table");
            rows = stmt
                .query_map([event], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .expect("a query")
                .collect::<Result<Vec<_>, _>>()
                .expect("rows");
            if rows.len() >= at_least {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        rows
    })
    .await
    .expect("the audit reader")
}

/// Polls `done` (bounded) while letting the daemon's tasks run.
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

fn this_exe() -> String {
    std::env::current_exe()
        .expect("the test binary's path")
        .display()
        .to_string()
}

/// One app (this test process) floods past its burst: refused with
/// `rate_limited`, when to retry and what to change, one audit row however
/// many refusals; another app is served meanwhile; a second later the
/// bucket has refilled, up to its burst.
#[tokio::test(start_paused = true)]
async fn a_flooding_app_is_refused_while_another_app_is_served() {
    let mut d = TestDaemon::start(Opts {
        rate_limits: Some(RateLimits {
            calls: Some(Rate::new(100, Duration::from_secs(1), 40)),
            ..RateLimits::OFF
        }),
        ..Opts::default()
    })
    .await;
    let mut c = d.client().await;
    // vault.init and provider.add: two calls (hello is not counted).
    d.init(&mut c).await;

    let (answered, refused) = flood(&mut c, 100).await;
    assert_eq!(answered, 38, "the burst of 40, less the two set-up calls");
    assert_eq!(refused.len(), 62);
    for (kind, retry_after, message) in &refused {
        assert_eq!(*kind, ErrorKind::RateLimited);
        assert_eq!(*retry_after, Some(1), "a token every 10 ms: retry in 1 s");
        assert!(
            message.starts_with(&format!("app {} (sha256 ", this_exe())),
            "names the app: {message}"
        );
        assert!(
            message.contains("made more than 100 calls per second (bursts of 40): retry after 1 s; the limit is set with `latchkeyd --rate-limit`"),
            "{message}"
        );
    }
    // hello still works (the handshake is never refused), and so does a
    // new connection.
    c.hello().await.expect("hello is not limited");
    let mut again = d.client().await;
    assert_eq!(
        kind(again.status().await),
        ErrorKind::RateLimited,
        "per app, not per connection"
    );

    // Another app is served as if nothing happened.
    let second = SecondApp::new();
    let work = Work {
        method: "status",
        credential: "",
        min_ttl: 0,
        calls: 5,
    };
    let seen = second.run(&d.socket, work).await;
    assert_eq!(
        seen,
        Seen {
            answered: 5,
            refused: vec![]
        }
    );
    assert_eq!(
        kind(c.status().await),
        ErrorKind::RateLimited,
        "still refused"
    );

    // A second refills 100, of which the bucket holds its burst of 40.
    d.pass(1).await;
    let (answered, refused) = flood(&mut c, 100).await;
    assert_eq!((answered, refused.len()), (40, 60));

    // 124 refusals, one row (the next comes a minute later at the earliest).
    let rows = audit_rows(&d.socket, "rate_limited", 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (credential, app, detail) = &rows[0];
    assert_eq!(*credential, None);
    assert!(
        app.as_deref().is_some_and(|a| a.starts_with(&this_exe())),
        "{app:?}"
    );
    assert_eq!(
        detail.as_deref(),
        Some("status: more than 100 calls per second (bursts of 40); 0 more refused since the last row")
    );
    d.stop().await;
}

/// The provider's limit is stricter: only calls that reach the provider
/// count (a login start, a cache miss's token request), the caller whose
/// miss starts a request pays for it, those who join it pay nothing, and
/// answers from memory are never refused. Each app has its own bucket.
#[tokio::test(start_paused = true)]
async fn the_provider_limit_charges_the_caller_that_starts_a_request_not_those_that_join() {
    let mut d = TestDaemon::start(Opts {
        rate_limits: Some(RateLimits {
            calls: Some(Rate::new(1000, Duration::from_secs(1), 1000)),
            provider: Some(Rate::new(1, Duration::from_secs(60), 2)),
            logins: None,
        }),
        ..Opts::default()
    })
    .await;
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
    add_cc_credential(&mut c, "api").await;

    // The login start reaches the provider: the first of two tokens.
    let start = LoginStartParams {
        credential: "user".into(),
        device: true,
        timeout_secs: None,
    };
    let started = c.request::<LoginStart>(&start).await.expect("login.start");
    let wait = LoginWaitParams {
        login_id: started.login_id,
    };
    d.running(c.request::<LoginWait>(&wait))
        .await
        .expect("the endpoint approves device logins at once");

    // A forced refresh (min_ttl past the tokens' life): the second token.
    // The endpoint holds it 20 s on the paused clock.
    let force = TokenParams {
        credential: "user".into(),
        scopes: None,
        min_ttl: Some(7200),
        confirm_wait_secs: None,
    };
    let mut callers = tokio::task::JoinSet::new();
    let mut first = d.client().await;
    let forced = force.clone();
    callers.spawn(async move { first.token_with(&forced).await.map(|t| secret(&t)) });
    until("the refresh to reach the endpoint", || {
        d.endpoint.user_stats("app").refreshes == 1
    })
    .await;
    // Ten more callers join it: the bucket is empty, and none is refused.
    for _ in 0..10 {
        let mut joiner = d.client().await;
        let forced = force.clone();
        callers.spawn(async move { joiner.token_with(&forced).await.map(|t| secret(&t)) });
    }
    let mut probe = d.client().await;
    for _ in 0..200 {
        if stats(&mut probe).await.waits == 11 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        stats(&mut probe).await.waits,
        11,
        "all eleven wait on the one request"
    );
    let tokens = d.running(callers.join_all()).await;
    let tokens: Vec<String> = tokens
        .into_iter()
        .map(|t| t.expect("a joiner is charged nothing"))
        .collect();
    assert_eq!(tokens.len(), 11);
    assert!(tokens.iter().all(|t| *t == tokens[0]), "one token for all");
    assert_eq!(d.endpoint.user_stats("app").refreshes, 1);

    // The next request this app would start is refused...
    let served = d.endpoint.served();
    let refused = c.token("api").await;
    let Err(latchkey_client::Error::Daemon {
        kind,
        message,
        retry_after,
        ..
    }) = refused
    else {
        panic!("a third provider request within the minute must be refused");
    };
    assert_eq!(kind, ErrorKind::RateLimited);
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "{retry_after:?}"
    );
    assert!(
        message.contains("made more than 1 requests that reach the provider per minute (bursts of 2): retry after"),
        "{message}"
    );
    assert!(
        message.ends_with("`latchkeyd --provider-rate-limit`"),
        "{message}"
    );
    assert_eq!(d.endpoint.served(), served, "nothing reached the endpoint");
    // ...and left nothing behind for others: no backoff on the credential.
    assert_eq!(
        show(&mut c, "api").await.state,
        CredentialState::Ready,
        "not backing off"
    );
    // Answers from memory are never the provider's business.
    c.token("user").await.expect("a cached token");

    // Another app has its own bucket: its miss reaches the provider.
    let second = SecondApp::new();
    let work = Work {
        method: "token",
        credential: "api",
        min_ttl: 0,
        calls: 3,
    };
    let seen = second.run(&d.socket, work).await;
    assert_eq!(
        seen,
        Seen {
            answered: 3,
            refused: vec![]
        },
        "one request, two hits"
    );
    assert_eq!(d.endpoint.served(), served + 1);
    // Now cached for everyone: this app's call is a hit, not refused.
    c.token("api").await.expect("from memory");

    let rows = audit_rows(&d.socket, "rate_limited", 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0.as_deref(), Some("api"));
    assert!(
        rows[0]
            .2
            .as_deref()
            .is_some_and(|r| r
                .starts_with("token.get: more than 1 requests that reach the provider per minute")),
        "{rows:?}"
    );
    d.stop().await;
}

/// Login starts are limited per credential, whoever asks: a second app
/// is refused too once the credential had its share; another credential
/// is not affected; the bucket refills.
#[tokio::test(start_paused = true)]
async fn login_starts_are_limited_per_credential() {
    let mut d = TestDaemon::start(Opts {
        rate_limits: Some(RateLimits {
            logins: Some(Rate::new(2, Duration::from_secs(60), 2)),
            ..RateLimits::OFF
        }),
        ..Opts::default()
    })
    .await;
    d.endpoint.add_user_client(
        "app",
        UserClientConfig {
            login_lifetime: 3600,
            refresh_lifetime: 3600,
            refresh_delay: Duration::ZERO,
        },
    );
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_device_credential(&mut c, "one", "app").await;
    add_device_credential(&mut c, "two", "app").await;
    let start = |name: &str| LoginStartParams {
        credential: name.into(),
        device: true,
        timeout_secs: None,
    };
    c.request::<LoginStart>(&start("one")).await.expect("first");
    c.request::<LoginStart>(&start("one"))
        .await
        .expect("second");
    let (limited, retry_after) = kind_and_retry(c.request::<LoginStart>(&start("one")).await);
    assert_eq!(limited, ErrorKind::RateLimited);
    assert_eq!(retry_after, Some(30), "one start every 30 s");
    let Err(latchkey_client::Error::Daemon { message, .. }) =
        c.request::<LoginStart>(&start("one")).await
    else {
        panic!("still refused");
    };
    assert_eq!(
        message,
        "credential 'one' had more than 2 login starts per minute: retry after 30 s, and finish or cancel the logins already started; the limit is set with `latchkeyd --login-rate-limit`"
    );
    // Whoever asks: another app is refused for this credential too.
    let second = SecondApp::new();
    let work = Work {
        method: "login",
        credential: "one",
        min_ttl: 0,
        calls: 1,
    };
    let seen = second.run(&d.socket, work).await;
    assert_eq!(
        seen,
        Seen {
            answered: 0,
            refused: vec!["rate_limited".into()]
        }
    );
    // Another credential has its own.
    c.request::<LoginStart>(&start("two"))
        .await
        .expect("another credential");

    d.pass(30).await;
    c.request::<LoginStart>(&start("one"))
        .await
        .expect("refilled");
    assert_eq!(
        kind(c.request::<LoginStart>(&start("one")).await),
        ErrorKind::RateLimited
    );
    let rows = audit_rows(&d.socket, "rate_limited", 1).await;
    assert_eq!(rows.len(), 1, "one row in the minute: {rows:?}");
    assert_eq!(rows[0].0.as_deref(), Some("one"));
    d.stop().await;
}

/// Brute force on the passphrase: after three wrong ones each attempt
/// waits twice as long as the last (1, 2, 4, 8 s), attempts made during a
/// wait are refused (even with the right passphrase), and the audit log
/// has every wrong passphrase with the wait it set, and one row per wait
/// however many attempts it refused.
#[tokio::test(start_paused = true)]
async fn wrong_passphrases_meet_growing_delays_all_audited() {
    let mut d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    c.request::<VaultLock>(&Empty {}).await.expect("vault.lock");

    let mut waits = Vec::new();
    for failure in 1..=7u32 {
        assert_eq!(
            kind(unlock(&mut c, "wrong").await),
            ErrorKind::WrongPassphrase,
            "failure {failure}"
        );
        if failure < 3 {
            continue;
        }
        // Refused at once, twice (the right passphrase too), with the wait.
        let (limited, wait) = kind_and_retry(unlock(&mut c, PASSPHRASE).await);
        assert_eq!(limited, ErrorKind::RateLimited);
        let (again, same) = kind_and_retry(unlock(&mut c, "wrong").await);
        assert_eq!((again, same), (ErrorKind::RateLimited, wait));
        let wait = wait.expect("rate_limited says when");
        waits.push(wait);
        d.pass(wait).await;
    }
    assert_eq!(waits, [1, 2, 4, 8, 16], "doubling after the third");
    unlock(&mut c, PASSPHRASE)
        .await
        .expect("the right one, after the wait");

    let failed = audit_rows(&d.socket, "unlock_failed", 7).await;
    let details: Vec<&str> = failed.iter().filter_map(|r| r.2.as_deref()).collect();
    assert_eq!(
        details,
        [0, 0, 1, 2, 4, 8, 16]
            .iter()
            .enumerate()
            .map(|(i, w)| match w {
                0 => format!(
                    "wrong_passphrase; wrong passphrase {} in a row; no wait yet",
                    i + 1
                ),
                w => format!(
                    "wrong_passphrase; wrong passphrase {} in a row; the next attempt waits {w} s",
                    i + 1
                ),
            })
            .collect::<Vec<_>>()
    );
    assert!(
        failed
            .iter()
            .all(|r| r.1.as_deref().is_some_and(|a| a.starts_with(&this_exe()))),
        "each names the app: {failed:?}"
    );
    let refused = audit_rows(&d.socket, "rate_limited", 5).await;
    let details: Vec<&str> = refused.iter().filter_map(|r| r.2.as_deref()).collect();
    assert_eq!(
        details,
        [1, 2, 4, 8, 16]
            .iter()
            .enumerate()
            .map(|(i, w)| format!(
                "vault.unlock: refused for {w} s more after {} wrong passphrases in a row; {} more refused since the last row",
                i + 3,
                // The second refusal of each wait is counted in the next row.
                u32::from(i > 0)
            ))
            .collect::<Vec<_>>(),
        "one row per wait"
    );
    let unlocked = audit_rows(&d.socket, "unlock", 1).await;
    assert_eq!(unlocked.len(), 1, "after the wait: {unlocked:?}");
    d.stop().await;
}
