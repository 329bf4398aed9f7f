//! Token exchange (RFC 8693) as a CI job uses it: the job's OIDC token
//! (here a JWT our own "CI issuer" signs, ES256) is exchanged by the
//! daemon at the test provider (oidc-provider with an RFC 8693 grant that
//! verifies the token against the CI issuer's key) for an access token —
//! no client secret anywhere, the vault unlocked from
//! `LATCHKEY_PASSPHRASE_FILE`. The subject token comes from a file or from
//! a variable of the job's environment, is read at every exchange (a
//! rotated file is picked up), and never shows in output, logs or the
//! audit log; a missing, empty or expired one is named without a provider
//! request.

use latchkey_client::protocol::{CredentialInfo, SubjectTokenSource};
use latchkey_client::ErrorKind;
use latchkey_tests::fixture::{kind_of, TEST_PROVIDER};
use latchkey_tests::provider::{Provider, TOKEN_EXCHANGE_GRANT};
use latchkey_tests::TestEnv;
use serde_json::{json, Value};

/// The CI issuer's `iss` and the audience it issues job tokens for.
const CI_ISSUER: &str = "https://ci.example.test";
const CI_AUDIENCE: &str = "latchkey-test";
/// A public client allowed only token exchange.
const CI_CLIENT: &str = "ci-deployer";
/// A confidential one (`client_secret_post`).
const CI_CONF: &str = "ci-conf";
const CI_CONF_SECRET: &str = "ci-conf-secret-0123456789";
const PROVIDER_REFUSED: i32 = 8;

/// The CI system's signing key: it mints each job's OIDC token.
struct CiIssuer {
    key: jsonwebtoken::EncodingKey,
    /// The public key, as the provider's config takes it.
    jwk: Value,
}

impl CiIssuer {
    fn new() -> CiIssuer {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // An uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| data_encoding::BASE64URL_NOPAD.encode(b);
        CiIssuer {
            key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
        }
    }

    /// A job token for `sub`, expiring `ttl` seconds from now (negative: expired).
    fn mint(&self, sub: &str, ttl: i64) -> String {
        self.mint_for(sub, CI_AUDIENCE, ttl)
    }

    fn mint_for(&self, sub: &str, aud: &str, ttl: i64) -> String {
        let now = latchkey_client::protocol::unix_now();
        let claims =
            json!({"iss": CI_ISSUER, "aud": aud, "sub": sub, "iat": now, "exp": now + ttl});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &self.key,
        )
        .unwrap()
    }
}

/// The provider: both CI clients, trusting `ci`'s job tokens.
fn provider(ci: &CiIssuer) -> Provider {
    let client = |id: &str, auth: &str| {
        json!({"client_id": id, "token_endpoint_auth_method": auth,
               "grant_types": [TOKEN_EXCHANGE_GRANT], "scope": "deploy read"})
    };
    let mut conf = client(CI_CONF, "client_secret_post");
    conf["client_secret"] = json!(CI_CONF_SECRET);
    Provider::start_with(json!({
        "clients": [client(CI_CLIENT, "none"), conf],
        "token_exchange": {"issuer": CI_ISSUER, "audience": CI_AUDIENCE, "jwk": ci.jwk},
    }))
}

/// A CI job's world: the passphrase in a file the job names through
/// `LATCHKEY_PASSPHRASE_FILE`, the vault made and the provider added by
/// the CLI (which starts the daemon, with the job's environment).
fn ci_env(p: &Provider, vars: &[(&str, &str)]) -> TestEnv {
    let env = TestEnv::new();
    env.set_env("LATCHKEY_PASSPHRASE_FILE", env.passphrase_file());
    for (k, v) in vars {
        env.set_env(k, v);
    }
    env.init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    env
}

/// `latchkey credential add NAME --grant token_exchange` for the public CI
/// client with these extra flags; no secret, no stdin.
#[track_caller]
fn add(env: &TestEnv, name: &str, extra: &[&str]) {
    let mut args = vec![
        "credential",
        "add",
        name,
        "--provider",
        TEST_PROVIDER,
        "--client-id",
        CI_CLIENT,
        "--grant",
        "token_exchange",
        "--scope",
        "deploy",
    ];
    args.extend(extra);
    env.latchkey(&args).success();
}

fn exchanges(p: &Provider) -> u64 {
    p.stats().grant(TOKEN_EXCHANGE_GRANT)
}

/// Nothing the job was given as a subject token shows anywhere the user
/// or another program could read: CLI output, daemon logs, the audit log.
#[track_caller]
fn assert_never_shown(env: &TestEnv, subject_tokens: &[&str]) {
    let audit = env.latchkey(&["audit", "--json"]);
    audit.success();
    let mut places = vec![("the daemon logs".to_owned(), env.all_daemon_logs())];
    for run in env.transcript() {
        places.push((
            format!("`latchkey {}`", run.args.join(" ")),
            format!("{}\n{}", run.stdout, run.stderr),
        ));
    }
    for token in subject_tokens {
        // The signature alone would do: look for it and for the whole.
        let signature = token.rsplit('.').next().unwrap();
        for (place, text) in &places {
            assert!(
                !text.contains(token) && !text.contains(signature),
                "a subject token shows in {place}:\n{text}"
            );
        }
    }
}

#[test]
fn a_ci_job_exchanges_its_token_file_once_and_a_rotated_file_at_the_next_exchange() {
    let ci = CiIssuer::new();
    let p = provider(&ci);
    let env = ci_env(&p, &[]);
    let first = ci.mint("repo:acme/app:job-1", 600);
    env.write_secret_file("ci-token", &format!("{first}\n"));
    // A relative path: the CLI makes it absolute for the daemon.
    add(
        &env,
        "deploy",
        &[
            "--subject-token-file",
            "ci-token",
            "--audience",
            "deploy-api",
            "--resource",
            "https://deploy.example.test/",
            "--resource",
            "https://status.example.test/",
        ],
    );
    let shown: CredentialInfo = serde_json::from_value(
        env.latchkey(&["credential", "show", "deploy", "--json"])
            .json(),
    )
    .unwrap();
    let path = env.root.join("ci-token").display().to_string();
    let exchange = shown
        .exchange
        .expect("credential show names the exchange settings");
    assert_eq!(exchange.subject_token, SubjectTokenSource::File(path));
    assert!(!shown.has_client_secret);
    assert_eq!(shown.state.as_str(), "ready");

    let token = env.token("deploy");
    for _ in 0..4 {
        assert_eq!(env.token("deploy"), token, "served from the cache");
    }
    assert_eq!(exchanges(&p), 1, "one exchange for five calls");
    assert_eq!(p.resource(&token), 200, "the provider's access token works");
    let seen = p.exchanges();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].ok, "{seen:?}");
    assert_eq!(seen[0].client_id, CI_CLIENT);
    assert_eq!(seen[0].sub.as_deref(), Some("repo:acme/app:job-1"));
    assert_eq!(seen[0].audience, ["deploy-api"]);
    assert_eq!(
        seen[0].resource,
        [
            "https://deploy.example.test/",
            "https://status.example.test/"
        ]
    );
    assert_eq!(seen[0].scope.as_deref(), Some("deploy"));
    assert_eq!(p.stats().auth("none"), 1, "a public client: no secret sent");

    // The CI system writes the next job's token; the next exchange (forced
    // here: no token lives 2 h) sends it.
    let second = ci.mint("repo:acme/app:job-2", 600);
    env.write_secret_file("ci-token", &second);
    let renewed = env.latchkey(&["token", "deploy", "--min-ttl", "2h"]);
    let renewed = renewed.out().to_owned();
    assert_ne!(renewed, token);
    assert_eq!(exchanges(&p), 2);
    assert_eq!(
        p.exchanges().last().unwrap().sub.as_deref(),
        Some("repo:acme/app:job-2")
    );
    assert_never_shown(&env, &[&first, &second]);
}

#[test]
fn a_variable_of_the_job_reaches_the_daemon_the_cli_starts_but_not_a_running_one() {
    let ci = CiIssuer::new();
    let p = provider(&ci);
    let job_token = ci.mint("repo:acme/app:job-7", 600);
    // Set for the whole job: the daemon the first command starts inherits it.
    let env = ci_env(&p, &[("CI_JOB_JWT", &job_token)]);
    add(&env, "deploy", &["--subject-token-env", "CI_JOB_JWT"]);
    let token = env.token("deploy");
    assert_eq!(p.resource(&token), 200);
    assert_eq!(
        p.exchanges().last().unwrap().sub.as_deref(),
        Some("repo:acme/app:job-7")
    );

    // Set only for a later command: the running daemon cannot see it, and
    // says so (without asking the provider).
    add(&env, "late", &["--subject-token-env", "LATE_JOB_JWT"]);
    let late_token = ci.mint("repo:acme/app:job-8", 600);
    let before = p.stats().token_requests;
    let r = env
        .cli(&["token", "late"])
        .env("LATE_JOB_JWT", &late_token)
        .run();
    r.code_is(1);
    assert!(
        r.stderr
            .contains("environment variable LATE_JOB_JWT is not set in the daemon's environment")
            && r.stderr.contains("--subject-token-file"),
        "{}",
        r.stderr
    );
    assert_eq!(p.stats().token_requests, before);
    let (kind, _) = kind_of(env.token_get("late", None));
    assert_eq!(kind, ErrorKind::SubjectTokenUnavailable);
    assert_never_shown(&env, &[&job_token, &late_token]);
}

#[test]
fn a_missing_empty_or_expired_subject_token_is_named_without_a_provider_request() {
    let ci = CiIssuer::new();
    let p = provider(&ci);
    let env = ci_env(&p, &[]);
    let path = env.root.join("job").join("oidc-token");
    add(
        &env,
        "deploy",
        &["--subject-token-file", path.to_str().unwrap()],
    );
    let shown = path.display().to_string();
    let fails = |what: &str| {
        let r = env.latchkey(&["token", "deploy"]);
        r.code_is(1);
        assert!(
            r.stderr
                .contains(&format!("the subject token file {shown} {what}")),
            "{}",
            r.stderr
        );
        let (kind, _) = kind_of(env.token_get("deploy", None));
        assert_eq!(kind, ErrorKind::SubjectTokenUnavailable);
    };
    fails("does not exist");
    std::fs::create_dir(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "\n").unwrap();
    fails("is empty");
    let expired = ci.mint("repo:acme/app:job-1", -120);
    std::fs::write(&path, &expired).unwrap();
    fails("holds a JWT that expired");
    assert_eq!(p.stats().token_requests, 0, "the provider was never asked");

    // Fixed: the very next call exchanges (no backoff for a local problem).
    let fresh = ci.mint("repo:acme/app:job-2", 600);
    std::fs::write(&path, &fresh).unwrap();
    let token = env.token("deploy");
    assert_eq!(p.resource(&token), 200);
    assert_eq!(exchanges(&p), 1);
    assert_never_shown(&env, &[&expired, &fresh]);
}

#[test]
fn a_subject_token_the_provider_rejects_is_a_provider_refusal_that_names_its_source() {
    let ci = CiIssuer::new();
    let p = provider(&ci);
    let env = ci_env(&p, &[]);
    // Signed by another key, and one for another audience.
    let forged = CiIssuer::new().mint("repo:acme/app:job-1", 600);
    let elsewhere = ci.mint_for("repo:acme/app:job-1", "another-service", 600);
    for (i, rejected) in [&forged, &elsewhere].into_iter().enumerate() {
        let file = env.write_secret_file(&format!("rejected-{i}"), rejected);
        let name = format!("rejected-{i}");
        add(
            &env,
            &name,
            &["--subject-token-file", file.to_str().unwrap()],
        );
        let r = env.latchkey(&["token", &name]);
        r.code_is(PROVIDER_REFUSED);
        assert!(
            r.stderr.contains(&format!(
                "refused the subject token from file {}",
                file.display()
            )) && r.stderr.contains("invalid_grant"),
            "{}",
            r.stderr
        );
        let last = p.exchanges().pop().unwrap();
        assert!(
            !last.ok && last.error.as_deref() == Some("invalid_grant"),
            "{last:?}"
        );
        let (kind, _) = kind_of(env.token_get(&name, None));
        assert_eq!(kind, ErrorKind::ProviderError);
    }

    // A confidential client authenticates as registered (client_secret_post).
    let good = ci.mint("repo:acme/app:job-3", 600);
    let file = env.write_secret_file("good", &good);
    env.cli(&[
        "credential",
        "add",
        "conf",
        "--provider",
        TEST_PROVIDER,
        "--client-id",
        CI_CONF,
        "--grant",
        "token_exchange",
        "--auth",
        "client_secret_post",
        "--client-secret-stdin",
        "--subject-token-file",
        file.to_str().unwrap(),
        "--subject-token-type",
        "id_token",
    ])
    .stdin(CI_CONF_SECRET)
    .run()
    .success();
    let token = env.token("conf");
    assert_eq!(p.resource(&token), 200);
    assert_eq!(p.stats().auth("client_secret_post"), 1);
    assert_never_shown(&env, &[&forged, &elsewhere, &good, CI_CONF_SECRET]);
}

#[test]
fn bad_settings_are_refused_with_the_fix() {
    let ci = CiIssuer::new();
    let p = provider(&ci);
    let env = ci_env(&p, &[]);
    let refused = |extra: &[&str], says: &str| {
        let mut args = vec![
            "credential",
            "add",
            "x",
            "--provider",
            TEST_PROVIDER,
            "--client-id",
            CI_CLIENT,
        ];
        args.extend(extra);
        let r = env.latchkey(&args);
        assert_ne!(r.code, 0, "{args:?} was accepted");
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    };
    refused(
        &["--grant", "token_exchange"],
        "needs the subject token's source: pass --subject-token-file PATH or --subject-token-env VAR",
    );
    refused(
        &["--grant", "device_code", "--subject-token-env", "T"],
        "only the token_exchange grant reads a subject token",
    );
    refused(
        &["--grant", "token_exchange", "--subject-token-env", "A=B"],
        "must be an environment variable's name",
    );
    refused(
        &[
            "--grant",
            "token_exchange",
            "--subject-token-env",
            "T",
            "--resource",
            "not a uri",
        ],
        "must be an absolute URI without a #fragment",
    );
    refused(
        &["--grant", "token_exchange", "--audience", "a"],
        "need --subject-token-file PATH or --subject-token-env VAR",
    );
    // Login is for user grants.
    add(&env, "deploy", &["--subject-token-env", "T"]);
    let r = env.latchkey(&["login", "deploy"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("needs no login"), "{}", r.stderr);
}
