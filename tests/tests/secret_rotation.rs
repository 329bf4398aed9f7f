//! Client-secret rotation end to end, with the real binaries and the real
//! authorization server (oidc-provider) as the judge of secrets:
//! `credential set-secret` keeps the previous secret until the new one has
//! worked; a new secret the provider does not know yet (`invalid_client`)
//! falls back on the previous one, warned and audited; the new secret's
//! first success forgets the previous one; `--drop-old` keeps none; ages
//! in `credential show`; no secret in any output.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use latchkey_tests::fixture::{client_credentials, svc, svc_cli_env, SVC_SECRET, TEST_PROVIDER};
use latchkey_tests::provider::Provider;
use latchkey_tests::TestEnv;
use serde_json::Value;

/// A secret the provider does not know (a rotation done here before the
/// provider's side, or a typo).
const NOT_YET: &str = "rotated-but-not-registered-7Qe";

/// A new token from the provider (one longer than any it issues forces
/// a request), or the failed run.
fn fresh(env: &TestEnv) -> latchkey_tests::CliResult {
    env.latchkey(&["token", "api", "--min-ttl", "30d"])
}

fn secret_info(env: &TestEnv) -> Value {
    let show = env
        .latchkey(&["credential", "show", "api", "--json"])
        .json();
    show["client_secret"].clone()
}

fn events(env: &TestEnv) -> Vec<String> {
    let audit = env.latchkey(&["audit", "--json"]).out().to_owned();
    audit
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("one JSON object per line"))
        .filter(|e| e["credential"] == "api")
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn set_secret(env: &TestEnv, secret: &str, extra: &[&str]) -> latchkey_tests::CliResult {
    let mut args = vec!["credential", "set-secret", "api", "--client-secret-stdin"];
    args.extend_from_slice(extra);
    env.cli(&args).stdin(format!("{secret}\n")).run()
}

#[test]
fn a_rotated_secret_falls_back_until_the_new_one_works() {
    let provider = Provider::start(&[svc()]);
    let env = svc_cli_env(&provider, "api");
    fresh(&env).success();
    let first = secret_info(&env);
    assert_eq!(first["worked"], true, "{first}");
    assert_eq!(first["previous_kept"], false, "{first}");
    assert!(first["set_at"].as_i64().is_some(), "{first}");

    // The new secret is not at the provider yet: the previous one answers.
    let r = set_secret(&env, NOT_YET, &[]);
    r.success();
    assert!(
        r.stderr.contains("previous one is kept") || r.stdout.contains("previous one is kept"),
        "{r:?}"
    );
    let kept = secret_info(&env);
    assert_eq!(kept["worked"], false, "{kept}");
    assert_eq!(kept["previous_kept"], true, "{kept}");
    let token = fresh(&env);
    token.success();
    assert!(events(&env).contains(&"client_secret_fallback".to_owned()));
    let text = env
        .latchkey(&["credential", "show", "api"])
        .out()
        .to_owned();
    assert!(text.contains("not yet accepted by the provider"), "{text}");
    assert!(text.contains("the previous one is kept"), "{text}");

    // Corrected: the known-good secret becomes the newest; the failed one
    // is not what is kept (the last secret known to work is).
    set_secret(&env, SVC_SECRET, &[]).success();
    assert_eq!(secret_info(&env)["previous_kept"], true);
    fresh(&env).success();
    let proven = secret_info(&env);
    assert_eq!(proven["worked"], true, "{proven}");
    assert_eq!(
        proven["previous_kept"], false,
        "the first success forgets the previous: {proven}"
    );
    assert!(events(&env).contains(&"client_secret_proven".to_owned()));

    // --drop-old keeps nothing to fall back on: a bad secret now fails, and
    // the refusal names the command that fixes it.
    set_secret(&env, NOT_YET, &["--drop-old"]).success();
    assert_eq!(secret_info(&env)["previous_kept"], false);
    let refused = fresh(&env);
    assert_eq!(refused.code, 8, "provider refused: {}", refused.stderr);
    assert!(
        refused.stderr.contains("invalid_client"),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains("latchkey credential set-secret api"),
        "{}",
        refused.stderr
    );
    // Fixed at once: the backoff after the refusal does not hold the new one.
    set_secret(&env, SVC_SECRET, &[]).success();
    fresh(&env).success();

    let transcript = env.transcript();
    for run in &transcript {
        for secret in [NOT_YET, SVC_SECRET] {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "a secret in the output of `latchkey {}`",
                run.args.join(" ")
            );
        }
    }
    let audit = env.latchkey(&["audit", "--json"]).stdout;
    assert!(!audit.contains(NOT_YET) && !audit.contains(SVC_SECRET));
}

#[test]
fn set_secret_refuses_what_it_cannot_do() {
    let provider = Provider::start(&[svc()]);
    let env = TestEnv::new();
    env.init();
    env.add_provider(TEST_PROVIDER, provider.issuer());
    let r = set_secret(&env, "whatever-secret", &[]);
    assert_eq!(r.code, 5, "no such credential: {}", r.stderr);
    client_credentials(&env, TEST_PROVIDER, "api", &svc());
    let r = env
        .cli(&["credential", "set-secret", "api", "--client-secret-stdin"])
        .stdin("\n")
        .run();
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("empty"), "{}", r.stderr);
    // A public client has no secret to replace.
    env.latchkey(&[
        "credential",
        "add",
        "pub",
        "--provider",
        TEST_PROVIDER,
        "--client-id",
        "pub",
        "--grant",
        "device_code",
        "--auth",
        "none",
    ])
    .success();
    let r = env
        .cli(&["credential", "set-secret", "pub", "--client-secret-stdin"])
        .stdin("whatever-secret\n")
        .run();
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("public client"), "{}", r.stderr);
    // No terminal, no source: says which flags to use.
    let r = env.latchkey(&["credential", "set-secret", "api"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--client-secret-stdin"), "{}", r.stderr);
}
