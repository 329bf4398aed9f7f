//! The authenticator as a proof of a human, end to end with the real
//! binaries: `latchkey totp enroll` (the code computed from the printed
//! `otpauth://` URI by an independent RFC 6238 implementation, as a phone
//! would), codes and recovery codes standing in for the passphrase
//! (`--totp-file`) for `app allow` and `approve`, a replayed code and a
//! wrong code refused and audited, removal.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use latchkey_tests::fixture::{svc, SVC_ID, SVC_SECRET, TEST_PROVIDER};
use latchkey_tests::provider::Provider;
use latchkey_tests::TestEnv;

const APP_A: &str = env!("CARGO_BIN_EXE_latchkey-test-app-a");
const APP_B: &str = env!("CARGO_BIN_EXE_latchkey-test-app-b");

/// What an authenticator app knows after scanning the QR code.
struct Phone {
    secret: Vec<u8>,
    digits: u32,
    period: u64,
}

impl Phone {
    /// Reads an `otpauth://totp/...` URI as authenticator apps do.
    fn scan(uri: &str) -> Phone {
        let url = reqwest::Url::parse(uri).expect("the enrollment prints a URI");
        assert_eq!(url.scheme(), "otpauth");
        assert_eq!(url.host_str(), Some("totp"));
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        assert_eq!(param("issuer").as_deref(), Some("Latchkey"));
        let secret = data_encoding::BASE32_NOPAD
            .decode(param("secret").expect("a secret").as_bytes())
            .expect("the secret is base32");
        assert!(secret.len() >= 16, "at least 128 bits (RFC 4226 §4)");
        Phone {
            secret,
            digits: param("digits").map_or(6, |d| d.parse().unwrap()),
            period: param("period").map_or(30, |p| p.parse().unwrap()),
        }
    }

    /// The code shown `offset` periods from now.
    fn code(&self, offset: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let at = (now + offset * self.period as i64) as u64;
        totp_lite::totp_custom::<totp_lite::Sha1>(self.period, self.digits, &self.secret, at)
    }
}

/// A daemon, a vault, the provider, and credential `api` with access `ask`.
fn ask_env(p: &Provider) -> TestEnv {
    let env = TestEnv::new();
    env.init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    env.cli(&[
        "credential",
        "add",
        "api",
        "--provider",
        TEST_PROVIDER,
        "--client-id",
        SVC_ID,
        "--scope",
        "api:read",
        "--client-secret-stdin",
        "--access",
        "ask",
    ])
    .stdin(SVC_SECRET)
    .run()
    .success();
    env
}

/// `latchkey totp enroll` answered as a person with a phone would: the
/// phone, and the recovery codes printed.
fn enroll(env: &TestEnv, proof: &[&str]) -> (Phone, Vec<String>) {
    let mut args = vec!["totp", "enroll"];
    args.extend_from_slice(proof);
    let mut child = env.cli(&args).spawn();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut uri = String::new();
    out.read_line(&mut uri).unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "printed {uri:?}");
    let phone = Phone::scan(uri.trim());
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", phone.code(0)).unwrap();
    drop(stdin);
    let codes: Vec<String> = out.lines().map(Result::unwrap).collect();
    let status = wait(&mut child);
    assert!(status.success(), "enroll failed: {codes:?}");
    assert_eq!(codes.len(), 10, "ten recovery codes: {codes:?}");
    (phone, codes)
}

fn wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("the CLI did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn allow_with(env: &TestEnv, app: &str, code_file: &Path) -> latchkey_tests::cli::CliResult {
    env.latchkey(&[
        "app",
        "allow",
        app,
        "--credential",
        "api",
        "--totp-file",
        code_file.to_str().unwrap(),
    ])
}

#[test]
fn an_enrolled_authenticator_proves_a_person_once_per_code() {
    let p = Provider::start(&[svc()]);
    let env = ask_env(&p);
    let passphrase = env.passphrase_file().display().to_string();

    // Nothing enrolled: a code proves nothing, and says what to do.
    let code_file = env.write_secret_file("code", "123456");
    let r = allow_with(&env, APP_A, &code_file);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("no authenticator is enrolled"),
        "{}",
        r.stderr
    );
    let status = env.latchkey(&["totp", "status", "--json"]).json();
    assert_eq!(status["enrolled"], false);

    // Enrolling needs a proof itself.
    let r = env.latchkey(&["totp", "enroll"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--passphrase-file"), "{}", r.stderr);
    let (phone, recovery) = enroll(&env, &["--passphrase-file", &passphrase]);
    let status = env.latchkey(&["totp", "status", "--json"]).json();
    assert_eq!(status["enrolled"], true);
    assert_eq!(status["recovery_codes_left"], 10);

    // A wrong code is refused as a wrong passphrase is, and audited.
    let wrong = format!(
        "{:06}",
        (phone.code(0).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    let wrong_file = env.write_secret_file("wrong", &wrong);
    let r = allow_with(&env, APP_A, &wrong_file);
    assert_eq!(r.code, 10, "exit code of a wrong passphrase: {}", r.stderr);
    assert!(
        r.stderr.contains("wrong authenticator code"),
        "{}",
        r.stderr
    );
    assert_eq!(
        env.program(Path::new(APP_A), &["api"]).run().stdout.trim(),
        "approval_required"
    );

    // The next period's code (the one used to enroll is spent) lets app A in.
    let next = env.write_secret_file("next", &phone.code(1));
    allow_with(&env, APP_A, &next).success();
    assert_eq!(
        env.program(Path::new(APP_A), &["api"]).run().stdout.trim(),
        "ok app-a"
    );

    // The same code again: replayed, refused.
    let r = allow_with(&env, APP_B, &next);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("used already"), "{}", r.stderr);
    assert_eq!(
        env.program(Path::new(APP_B), &["api"]).run().stdout.trim(),
        "approval_required"
    );

    // A recovery code works once, in place of a code.
    let rc = env.write_secret_file("recovery", &recovery[3].to_uppercase());
    allow_with(&env, APP_B, &rc).success();
    assert_eq!(
        env.program(Path::new(APP_B), &["api"]).run().stdout.trim(),
        "ok app-b"
    );
    let r = env.latchkey(&[
        "credential",
        "set",
        "api",
        "--access",
        "open",
        "--totp-file",
        rc.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0, "a recovery code is good once");
    let status = env.latchkey(&["totp", "status", "--json"]).json();
    assert_eq!(status["recovery_codes_left"], 9);

    // Every use is in the audit log; no code, recovery code or the secret is.
    let audit = env.latchkey(&["audit", "--json"]);
    audit.success();
    for event in [
        "totp_enrolled",
        "proof_failed",
        "recovery_code_used",
        "rule_added",
    ] {
        assert!(
            audit.stdout.contains(event),
            "no {event} row: {}",
            audit.stdout
        );
    }
    let secret_b32 = data_encoding::BASE32_NOPAD.encode(&phone.secret);
    for planted in recovery
        .iter()
        .map(String::as_str)
        .chain([secret_b32.as_str()])
    {
        assert!(!audit.stdout.contains(planted), "audit holds a secret");
        assert!(!audit
            .stdout
            .to_lowercase()
            .contains(&planted.to_lowercase()));
    }
    assert!(!env.all_daemon_logs().contains(&secret_b32));
    // Nor is any of it in clear in the vault file (or its WAL).
    for file in [env.vault.clone(), env.vault.with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        assert!(
            !text.contains(&secret_b32.to_lowercase()),
            "{} holds the secret",
            file.display()
        );
        for code in &recovery {
            assert!(
                !text.contains(code.as_str()),
                "{} holds a recovery code",
                file.display()
            );
        }
    }

    // Removing needs a proof too; then codes prove nothing.
    let r = env.latchkey(&["totp", "remove"]);
    assert_ne!(r.code, 0);
    let rc = env.write_secret_file("recovery2", &recovery[5]);
    env.latchkey(&["totp", "remove", "--totp-file", rc.to_str().unwrap()])
        .success();
    let status = env.latchkey(&["totp", "status", "--json"]).json();
    assert_eq!(status["enrolled"], false);
}

#[test]
fn an_approver_proved_by_a_code_can_let_an_app_in() {
    let p = Provider::start(&[svc()]);
    let env = ask_env(&p);
    let passphrase = env.passphrase_file().display().to_string();
    let (phone, _) = enroll(&env, &["--passphrase-file", &passphrase]);

    let code = env.write_secret_file("code", &phone.code(1));
    let mut approver = env
        .cli(&[
            "approve",
            "--totp-file",
            code.to_str().unwrap(),
            "--count",
            "1",
        ])
        .spawn();
    let mut stdin = approver.stdin.take().unwrap();
    latchkey_tests::wait_for(
        "the approver to attach",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            (env.latchkey(&["status", "--json"]).json()["approvers"].as_u64() == Some(1))
                .then_some(())
        },
    );
    let app = std::thread::scope(|s| {
        let waiting = s.spawn(|| env.program(Path::new(APP_A), &["api"]).run());
        // Read once the prompt is shown: "once".
        writeln!(stdin, "o").unwrap();
        waiting.join().unwrap()
    });
    drop(stdin);
    assert!(wait(&mut approver).success());
    assert_eq!(app.stdout.trim(), "ok app-a", "{}", app.stderr);
}

#[test]
fn a_step_up_credential_needs_a_fresh_confirmation() {
    let p = Provider::start(&[svc()]);
    let env = latchkey_tests::fixture::svc_cli_env(&p, "vip");
    let passphrase = env.passphrase_file().display().to_string();
    let (phone, recovery) = enroll(&env, &["--passphrase-file", &passphrase]);
    let recovery_file = |i: usize| {
        env.write_secret_file(&format!("rc{i}"), &recovery[i])
            .display()
            .to_string()
    };

    // Tightening needs no proof.
    env.latchkey(&[
        "credential",
        "set",
        "vip",
        "--step-up",
        "totp",
        "--window",
        "10m",
    ])
    .success();
    let r = env.latchkey(&["token", "vip"]);
    assert_eq!(r.code, 13, "step_up_required: {}", r.stderr);
    assert!(r.stderr.contains("latchkey confirm vip"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let show = env.latchkey(&["credential", "show", "vip"]);
    assert!(show.stdout.contains("not confirmed now"), "{}", show.stdout);

    // The passphrase is not a code.
    let r = env.latchkey(&["confirm", "vip", "--passphrase-file", &passphrase]);
    assert_eq!(r.code, 13, "{}", r.stderr);
    let code = env.write_secret_file("code", &phone.code(1));
    env.latchkey(&["confirm", "vip", "--totp-file", code.to_str().unwrap()])
        .success();
    assert!(!env.token("vip").is_empty());
    let info = env
        .latchkey(&["credential", "show", "vip", "--json"])
        .json();
    assert_eq!(info["step_up"]["method"], "totp");
    assert!(info["confirmed_until"].as_i64().is_some());

    // A lock ends every confirmation.
    env.latchkey(&["lock"]).success();
    env.latchkey(&["unlock", "--passphrase-file", &passphrase])
        .success();
    assert_eq!(env.latchkey(&["token", "vip"]).code, 13);

    // Loosening needs a proof, and with an authenticator enrolled, a code:
    // the passphrase alone is not enough (the step-up of sensitive changes).
    let r = env.latchkey(&["credential", "set", "vip", "--step-up", "off"]);
    assert_ne!(r.code, 0);
    let r = env.latchkey(&[
        "credential",
        "set",
        "vip",
        "--step-up",
        "off",
        "--passphrase-file",
        &passphrase,
    ]);
    assert_eq!(r.code, 13, "{}", r.stderr);
    assert!(r.stderr.contains("--totp"), "{}", r.stderr);
    env.latchkey(&[
        "credential",
        "set",
        "vip",
        "--step-up",
        "off",
        "--totp-file",
        &recovery_file(0),
    ])
    .success();
    assert!(!env.token("vip").is_empty());

    // Vault-wide changes need a code too once one is enrolled; panic never.
    let r = env.latchkey(&["rekey", "--passphrase-file", &passphrase]);
    assert_eq!(r.code, 13, "{}", r.stderr);
    env.latchkey(&[
        "rekey",
        "--passphrase-file",
        &passphrase,
        "--totp-file",
        &recovery_file(1),
    ])
    .success();
    let new = env.write_secret_file("new", "a different passphrase for the test");
    let r = env.latchkey(&[
        "passphrase",
        "change",
        "--old-file",
        &passphrase,
        "--new-file",
        new.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 13, "{}", r.stderr);
    let audit = env.latchkey(&["audit", "--json"]).stdout;
    assert!(audit.contains("step_up_confirmed"), "{audit}");
    let r = env.latchkey(&["panic"]);
    assert_eq!(r.code, 0, "panic needs no step-up: {}", r.stderr);
}

/// A caller may wait (bounded) for the confirmation instead of failing at
/// once: `latchkey token --wait-confirm` answers when the user confirms in
/// another terminal, and exits 13 when the wait ends with none.
#[test]
fn a_step_up_caller_can_wait_for_the_confirmation() {
    let p = Provider::start(&[svc()]);
    let env = latchkey_tests::fixture::svc_cli_env(&p, "vip");
    let passphrase = env.passphrase_file().display().to_string();
    env.latchkey(&["credential", "set", "vip", "--step-up", "passphrase"])
        .success();
    let r = env.latchkey(&["token", "vip", "--wait-confirm", "1s"]);
    assert_eq!(r.code, 13, "no confirmation came: {}", r.stderr);
    assert!(r.stderr.contains("latchkey confirm vip"), "{}", r.stderr);
    let r = env.latchkey(&["token", "vip", "--wait-confirm", "5m"]);
    assert_eq!(r.code, 2, "longer than the daemon waits: {}", r.stderr);

    let mut waiting = env.cli(&["token", "vip", "--wait-confirm", "60s"]).spawn();
    // Without the wait it would have exited 13 by now.
    std::thread::sleep(Duration::from_millis(500));
    assert!(waiting.try_wait().unwrap().is_none(), "it waits");
    env.latchkey(&["confirm", "vip", "--passphrase-file", &passphrase])
        .success();
    let status = wait(&mut waiting);
    let mut out = String::new();
    std::io::Read::read_to_string(waiting.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "the waiter got its token");
    assert!(
        !out.trim().is_empty() && !out.trim().contains(char::is_whitespace),
        "{out:?}"
    );
}
