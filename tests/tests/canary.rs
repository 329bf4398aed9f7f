//! Canary secrets: a full run with a planted passphrase, client secret and
//! the access token obtained, then a search for them everywhere they must
//! never appear — the daemon's debug log, every CLI stderr (and stdout of
//! commands that are not meant to print a token), every error reply, the
//! argv of every process sampled during the run, the raw bytes of the
//! vault file and its WAL, and every column of the audit table and its
//! sealed head (and what `latchkey audit` prints). Also a run with a wrong
//! client secret: the provider's `invalid_client` answer must not carry it.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use latchkey_client::protocol::{
    CredentialAdd, Empty, Method, TokenGet, UnlockParams, VaultChangePassphrase, VaultInit,
    VaultLock, VaultUnlock,
};
use latchkey_client::ErrorKind;
use latchkey_tests::fixture::{client_credentials, TEST_PROVIDER};
use latchkey_tests::provider::{ClientSpec, Provider};
use latchkey_tests::{processes, TestEnv};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

/// Samples every process's argv until stopped.
struct ArgvSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(BTreeSet<String>, usize)>,
}

impl ArgvSampler {
    fn start() -> ArgvSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let mut rounds = 0;
            while !flag.load(Ordering::Relaxed) {
                for (_, argv) in processes() {
                    seen.insert(argv.join(" "));
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (seen, rounds)
        });
        ArgvSampler { stop, thread }
    }

    fn finish(self) -> (BTreeSet<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn unique(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("canary-{label}-{:x}{:x}", nanos, std::process::id())
}

/// Fails naming each canary found in a haystack.
#[track_caller]
fn assert_clean(what: &str, haystack: &[u8], canaries: &[(&str, &str)]) {
    for (name, canary) in canaries {
        let found = haystack
            .windows(canary.len())
            .position(|w| w == canary.as_bytes());
        if let Some(at) = found {
            let from = at.saturating_sub(120);
            let to = (at + canary.len() + 120).min(haystack.len());
            panic!(
                "the {name} leaked into {what}: …{}…",
                String::from_utf8_lossy(&haystack[from..to])
            );
        }
    }
}

#[test]
fn no_secret_reaches_logs_errors_argv_or_the_vault_in_clear() {
    let passphrase = unique("pass");
    let secret = unique("secret");
    let p = Provider::start(&[ClientSpec::client_credentials(
        "svc",
        &secret,
        "client_secret_basic",
        "api:read api:write",
    )]);
    let env = TestEnv::new();
    env.set_env("LATCHKEY_LOG", "debug");
    let sampler = ArgvSampler::start();
    let daemon = env.start_daemon();
    let pass_file = env.write_secret_file("vault-pass", &format!("{passphrase}\n"));
    let pass_path = pass_file.to_str().unwrap();

    env.cli(&["init", "--passphrase-stdin"])
        .stdin(format!("{passphrase}\n"))
        .run()
        .success();
    env.add_provider("test", p.issuer());
    env.cli(&[
        "credential",
        "add",
        "svc",
        "--provider",
        "test",
        "--client-id",
        "svc",
        "--scope",
        "api:read api:write",
        "--client-secret-stdin",
        "--access",
        "open",
        "--passphrase-file",
        pass_path,
    ])
    .stdin(&secret)
    .run()
    .success();
    env.cli(&[
        "credential",
        "add",
        "svc-env",
        "--provider",
        "test",
        "--client-id",
        "svc",
        "--scope",
        "api:read",
        "--client-secret-env",
        "SVC_SECRET",
        "--access",
        "ask",
    ])
    .env("SVC_SECRET", &secret)
    .run()
    .success();

    let token = env.token("svc");
    let token_read = env
        .latchkey(&["token", "svc", "--scope", "api:read"])
        .out()
        .to_string();
    // svc-env asks: an app key allowed with the passphrase gets it.
    let app_key = env.latchkey(&["app", "add", "ci"]).out().to_string();
    env.latchkey(&[
        "app",
        "allow",
        "key:ci",
        "--credential",
        "svc-env",
        "--passphrase-file",
        pass_path,
    ])
    .success();
    let token_env = env
        .cli(&["token", "svc-env"])
        .env("LATCHKEY_APP_KEY", &app_key)
        .run()
        .out()
        .to_string();
    let mut wrong_key = app_key.clone();
    let last = wrong_key.pop().unwrap();
    wrong_key.push(if last == 'a' { 'b' } else { 'a' });
    env.cli(&["token", "svc-env"])
        .env("LATCHKEY_APP_KEY", &wrong_key)
        .run()
        .code_is(9);
    assert_eq!(p.introspect(&token, "svc", &secret)["active"], true);
    env.latchkey(&["token", "svc", "--json"]).success();
    env.latchkey(&["header", "svc"]).success();
    // Long enough for the sampler to see the command that replaced latchkey.
    env.latchkey(&[
        "exec",
        "svc",
        "--",
        "sh",
        "-c",
        "sleep 0.3; test -n \"$LATCHKEY_TOKEN\"",
    ])
    .success();
    for args in [
        &["credential", "list", "--json"][..],
        &["credential", "show", "svc", "--json"],
        &["credential", "show", "svc"],
        &["provider", "show", "test", "--json"],
        &["status", "--json"],
        &["status"],
        &["audit", "--json"],
        &["audit"],
        &["audit", "verify"],
    ] {
        env.latchkey(args).success();
    }
    env.latchkey(&["lock"]).success();
    env.cli(&["unlock", "--passphrase-stdin"])
        .stdin(format!("{passphrase}-wrong\n"))
        .run()
        .code_is(10);
    env.latchkey(&["unlock", "--passphrase-file", pass_path])
        .success();
    assert_eq!(env.token("svc"), token, "served again from the vault");
    env.latchkey(&["token", "svc", "--scope", "admin"])
        .code_is(9);

    // Error replies to requests that carry the secrets in every wrong way.
    let mut errors: Vec<String> = Vec::new();
    let mut client = env.client();
    let mut expect_err =
        |client: &mut latchkey_client::blocking::Client, m: &str, params: Value| {
            let err = client
                .call::<_, Value>(m, &params)
                .expect_err("this request must fail");
            errors.push(format!("{m}: {err} ({:?})", err.kind()));
        };
    client.request::<VaultLock>(&Empty {}).unwrap();
    expect_err(
        &mut client,
        VaultUnlock::NAME,
        json!({"passphrase": format!("{passphrase}x")}),
    );
    expect_err(
        &mut client,
        VaultUnlock::NAME,
        json!({"passphrase": {"p": passphrase}}),
    );
    let _ = client
        .request::<VaultUnlock>(&UnlockParams {
            passphrase: Some(SecretString::from(passphrase.clone())),
            ..UnlockParams::default()
        })
        .unwrap();
    expect_err(
        &mut client,
        VaultInit::NAME,
        json!({"passphrase": passphrase}),
    );
    expect_err(
        &mut client,
        VaultChangePassphrase::NAME,
        json!({"old": format!("{passphrase}z"), "new": passphrase}),
    );
    let add = |name: &str, auth: &str| {
        json!({"name": name, "provider": "test", "client_id": "svc", "client_secret": secret,
               "grant": "client_credentials", "auth": auth, "scopes": ["api:read"]})
    };
    expect_err(
        &mut client,
        CredentialAdd::NAME,
        add("svc", "client_secret_basic"),
    );
    expect_err(
        &mut client,
        CredentialAdd::NAME,
        add("bad name!", "client_secret_basic"),
    );
    expect_err(&mut client, CredentialAdd::NAME, add("public", "none"));
    expect_err(
        &mut client,
        CredentialAdd::NAME,
        add("weird", "client_secret_jwt"),
    );
    expect_err(
        &mut client,
        CredentialAdd::NAME,
        json!({"name": "x", "provider": "test", "client_id": "svc", "client_secret": [secret],
               "grant": "client_credentials", "auth": "client_secret_basic"}),
    );
    expect_err(
        &mut client,
        TokenGet::NAME,
        json!({"credential": {"secret": secret}}),
    );
    expect_err(
        &mut client,
        TokenGet::NAME,
        json!({"credential": "svc", "min_ttl": token}),
    );
    assert!(errors.len() >= 11, "{errors:?}");

    // A wrong client secret: refused by the provider as invalid_client,
    // and the refusal does not quote it.
    let wrong = unique("wrong-secret");
    env.cli(&[
        "credential",
        "add",
        "wrong",
        "--provider",
        "test",
        "--client-id",
        "svc",
        "--client-secret-stdin",
        "--access",
        "open",
        "--passphrase-file",
        pass_path,
    ])
    .stdin(&wrong)
    .run()
    .success();
    let before = p.stats().token_requests;
    let r = env.latchkey(&["token", "wrong"]);
    r.code_is(8);
    assert!(r.stderr.contains("invalid_client"), "{}", r.stderr);
    assert_eq!(
        p.stats().token_requests,
        before + 1,
        "the provider did see the wrong secret"
    );
    let err = env.client().token("wrong").expect_err("still refused");
    assert_eq!(err.kind(), Some(ErrorKind::ProviderError));
    errors.push(err.to_string());

    // Let the audit writer flush, then read the vault while the daemon runs
    // (recent writes live in the WAL) and again after it stopped.
    std::thread::sleep(Duration::from_millis(200));
    let (argv, rounds) = sampler.finish();
    let mut vault_bytes = Vec::new();
    let read_vault = |out: &mut Vec<u8>| {
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let mut path = env.vault.clone().into_os_string();
            path.push(suffix);
            if let Ok(bytes) = std::fs::read(&path) {
                out.extend_from_slice(&bytes);
            }
        }
    };
    read_vault(&mut vault_bytes);
    let status = env.stop_daemon(&daemon);
    assert!(status.success());
    read_vault(&mut vault_bytes);
    // Every column of every row, blobs too, and the chain's sealed head.
    let audit: Vec<String> = {
        let db = env.vault_db();
        let mut stmt = db
            .prepare(
                "SELECT seq, at, event, credential, peer_pid, detail, app, app_key, outcome,
                        sealed_id, sealed_detail, chained_late, mac FROM audit ORDER BY seq",
            )
            .unwrap();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let text = |i| r.get::<_, Option<String>>(i);
                let blob = |i| r.get::<_, Option<Vec<u8>>>(i);
                Ok(format!(
                    "{} {} {} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {} {} {}",
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    text(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    text(5)?,
                    text(6)?,
                    text(7)?,
                    text(8)?,
                    text(9)?,
                    String::from_utf8_lossy(&blob(10)?.unwrap_or_default()),
                    r.get::<_, bool>(11)?,
                    String::from_utf8_lossy(&blob(12)?.unwrap_or_default()),
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut head = db.prepare("SELECT id, sealed FROM audit_head").unwrap();
        rows.extend(
            head.query_map([], |r| {
                Ok(format!(
                    "head {} {}",
                    r.get::<_, String>(0)?,
                    String::from_utf8_lossy(&r.get::<_, Vec<u8>>(1)?)
                ))
            })
            .unwrap()
            .map(Result::unwrap),
        );
        rows
    };

    // The places searched really hold what we think they hold.
    let log = env.all_daemon_logs();
    assert!(
        log.contains("token_fetched") && log.contains("unlock_failed"),
        "{log}"
    );
    for event in [
        "vault_init",
        "credential_added",
        "token_fetched",
        "token_issued",
        "unlock_failed",
        "token_failed",
        "app_key_added",
        "app_key_refused",
        "rule_added",
    ] {
        assert!(
            audit.iter().any(|row| row.contains(event)),
            "no {event} in the audit log: {audit:#?}"
        );
    }
    assert!(
        audit.iter().any(|row| row.starts_with("head ")),
        "the chain's head is searched too: {audit:#?}"
    );
    assert!(rounds > 10, "the argv sampler ran {rounds} rounds");
    assert!(
        argv.iter().any(|a| a.contains("latchkeyd")),
        "the sampler saw the daemon"
    );
    assert!(
        argv.iter().any(|a| a.contains("sleep 0.3")),
        "the sampler saw the command `latchkey exec` ran"
    );
    assert!(
        vault_bytes
            .windows(b"svc-env".len())
            .any(|w| w == b"svc-env"),
        "the vault bytes hold the plaintext names, so they are the real file"
    );

    let canaries = [
        ("passphrase", passphrase.as_str()),
        ("client secret", secret.as_str()),
        ("wrong client secret", wrong.as_str()),
        ("access token", token.as_str()),
        ("down-scoped access token", token_read.as_str()),
        ("second access token", token_env.as_str()),
        ("app key", &app_key["lkapp_".len()..]),
        ("wrong app key", &wrong_key["lkapp_".len()..]),
    ];
    assert_clean("the daemon log", log.as_bytes(), &canaries);
    for run in env.transcript() {
        let what = format!("the stderr of `latchkey {}`", run.args.join(" "));
        assert_clean(&what, run.stderr.as_bytes(), &canaries);
        let shows_a_secret = matches!(run.args[0].as_str(), "token" | "header")
            || run.args.starts_with(&["app".into(), "add".into()]);
        if !shows_a_secret {
            let what = format!("the stdout of `latchkey {}`", run.args.join(" "));
            assert_clean(&what, run.stdout.as_bytes(), &canaries);
        }
    }
    assert_clean("an error reply", errors.join("\n").as_bytes(), &canaries);
    let argv_text: Vec<&str> = argv.iter().map(String::as_str).collect();
    assert_clean(
        "a process's argv",
        argv_text.join("\n").as_bytes(),
        &canaries,
    );
    assert_clean("the vault file", &vault_bytes, &canaries);
    assert_clean("the audit table", audit.join("\n").as_bytes(), &canaries);

    // Positive control: the token is in the vault (sealed) and comes back
    // out of a reply, the one place it is meant to go.
    env.start_daemon();
    let mut client = env.client();
    let _ = client
        .request::<VaultUnlock>(&UnlockParams {
            passphrase: Some(SecretString::from(passphrase.clone())),
            ..UnlockParams::default()
        })
        .unwrap();
    assert_eq!(
        client.token("svc").unwrap().access_token.expose_secret(),
        token
    );
}

#[test]
fn a_wrong_client_secret_is_not_echoed_by_the_provider_error() {
    let right = unique("right");
    let wrong = unique("wrong");
    let client = ClientSpec::client_credentials("svc", &right, "client_secret_post", "api:read");
    let p = Provider::start(std::slice::from_ref(&client));
    let env = TestEnv::new();
    env.set_env("LATCHKEY_LOG", "debug");
    // Started here, not by the CLI: the CLI keeps LATCHKEY_INSECURE_TEST_KDF from a daemon it starts.
    env.start_daemon();
    env.init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    let with_the_wrong_secret = ClientSpec {
        client_secret: Some(wrong.clone()),
        ..client
    };
    client_credentials(&env, TEST_PROVIDER, "svc", &with_the_wrong_secret);
    let r = env.latchkey(&["token", "svc"]);
    r.code_is(8);
    assert!(r.stderr.contains("invalid_client"), "{}", r.stderr);
    assert_eq!(p.stats().auth("client_secret_post"), 1);
    let err = env.client().token("svc").expect_err("refused");
    assert_eq!(err.kind(), Some(ErrorKind::ProviderError));
    let shown = env
        .latchkey(&["credential", "show", "svc", "--json"])
        .json();
    let canaries = [
        ("wrong secret", wrong.as_str()),
        ("right secret", right.as_str()),
    ];
    assert_clean("the CLI's error", r.stderr.as_bytes(), &canaries);
    assert_clean("the error reply", err.to_string().as_bytes(), &canaries);
    assert_clean("credential show", shown.to_string().as_bytes(), &canaries);
    assert_clean(
        "the daemon log",
        env.all_daemon_logs().as_bytes(),
        &canaries,
    );
}
