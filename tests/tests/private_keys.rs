//! Keys that never leave the vault, end to end with the real binaries and
//! the real authorization server (oidc-provider) as the judge:
//! `private_key_jwt` with a key generated in the vault whose JWKS is
//! registered at the provider (every token request carries a fresh client
//! assertion), key rotation with overlap and `--retire-old`, an imported
//! RSA key, and DPoP (RFC 9449): tokens bound to the vault's key, accepted by
//! a resource only with a proof from `latchkey dpop`, the provider's
//! `use_dpop_nonce` honoured. Private keys never appear anywhere.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use latchkey_tests::desktop::{can_run, on_path};
use latchkey_tests::fixture::{dpop_cli_env, dpop_svc, TEST_PROVIDER};
use latchkey_tests::provider::Provider;
use latchkey_tests::TestEnv;
use serde_json::{json, Value};

const CLIENT: &str = "keyed";

/// A provider on `port` (0: any) whose client `CLIENT` authenticates with
/// `private_key_jwt` against `jwks` (none: no client yet), plus a DPoP
/// client `dpop-svc` with a secret.
fn provider(port: u16, jwks: Option<&Value>, extra: Value) -> Provider {
    let mut clients = vec![dpop_svc().to_json()];
    if let Some(jwks) = jwks {
        clients.push(json!({
            "client_id": CLIENT,
            "token_endpoint_auth_method": "private_key_jwt",
            "grant_types": ["client_credentials"],
            "scope": "api:read",
            "jwks": jwks,
        }));
    }
    let mut config = json!({ "clients": clients, "port": port });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    Provider::start_with(config)
}

fn port_of(p: &Provider) -> u16 {
    p.origin()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("the provider's origin has a port")
}

/// A vault with the provider and `CLIENT` added with `flags`; the JWKS it
/// printed.
fn keyed_env(p: &Provider, flags: &[&str]) -> (TestEnv, Value) {
    let env = TestEnv::new();
    env.init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    let mut args = vec![
        "credential",
        "add",
        "api",
        "--provider",
        TEST_PROVIDER,
        "--client-id",
        CLIENT,
        "--scope",
        "api:read",
    ];
    args.extend_from_slice(flags);
    let r = env.latchkey(&args);
    let printed = r
        .out()
        .lines()
        .take_while(|l| !l.starts_with("added"))
        .collect::<Vec<_>>()
        .join("\n");
    let jwks: Value =
        serde_json::from_str(&printed).unwrap_or_else(|e| panic!("a JWKS on stdout ({e}): {r:?}"));
    (env, jwks)
}

/// Nothing private in a JWKS: public members only.
fn assert_public(jwks: &Value) {
    let keys = jwks["keys"].as_array().expect("keys");
    assert!(!keys.is_empty(), "{jwks}");
    for key in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                key.get(private).is_none(),
                "private member {private} in {key}"
            );
        }
        assert_eq!(key["use"], "sig", "{key}");
        assert!(key["kid"].is_string(), "{key}");
    }
}

fn events(env: &TestEnv) -> Vec<String> {
    env.latchkey(&["audit", "--json"])
        .out()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("one JSON object per line"))
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A fresh token (a longer --min-ttl than any token forces a request).
fn fresh(env: &TestEnv) -> latchkey_tests::CliResult {
    env.latchkey(&["token", "api", "--min-ttl", "30d"])
}

#[test]
fn a_generated_key_authenticates_the_client_and_rotates_with_overlap() {
    for alg in ["ES256", "EdDSA"] {
        let first = provider(0, None, json!({}));
        let port = port_of(&first);
        let (env, jwks) = keyed_env(&first, &["--generate-key", "--alg", alg]);
        assert_public(&jwks);
        assert_eq!(jwks["keys"][0]["alg"], alg, "{jwks}");
        // `credential jwks` prints the same keys again.
        let again = env.latchkey(&["credential", "jwks", "api"]).json();
        assert_eq!(again, jwks);
        let show = env
            .latchkey(&["credential", "show", "api", "--json"])
            .json();
        assert_eq!(show["auth"], "private_key_jwt", "{show}");
        assert_eq!(show["has_client_secret"], false, "{show}");

        // The JWKS registered at the provider: tokens, by assertion only.
        drop(first);
        let p = provider(port, Some(&jwks), json!({}));
        let token = env.token("api");
        assert_eq!(p.resource(&token), 200, "{alg}: a live token");
        fresh(&env).success();
        let stats = p.stats();
        assert_eq!(stats.auth("private_key_jwt"), 2, "{alg}: {stats:?}");
        assert_eq!(stats.token_requests, 2, "{alg}: {stats:?}");

        // Rotation: the new key is not registered yet; the old one answers.
        let rotated = env.latchkey(&["credential", "rotate-key", "api"]).json();
        assert_public(&rotated);
        let keys = rotated["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2, "{rotated}");
        assert_eq!(keys[1], jwks["keys"][0], "the old key is listed second");
        fresh(&env).success();
        assert!(events(&env).contains(&"client_key_fallback".to_owned()));

        // Both registered: the new key signs, with no fallback.
        drop(p);
        let p = provider(port, Some(&rotated), json!({}));
        let before = events(&env)
            .iter()
            .filter(|e| *e == "client_key_fallback")
            .count();
        fresh(&env).success();
        assert_eq!(p.stats().token_requests, 1, "the newest key worked at once");
        // Retired: the JWKS holds the new key alone, and it still works
        // with only that key registered.
        let retired = env
            .latchkey(&["credential", "rotate-key", "api", "--retire-old"])
            .json();
        assert_eq!(retired["keys"].as_array().unwrap().len(), 1, "{retired}");
        assert_eq!(retired["keys"][0], keys[0]);
        drop(p);
        let p = provider(port, Some(&retired), json!({}));
        fresh(&env).success();
        assert_eq!(p.stats().auth("private_key_jwt"), 1);
        let after = events(&env)
            .iter()
            .filter(|e| *e == "client_key_fallback")
            .count();
        assert_eq!(before, after, "no fallback once the provider knows the key");
        assert!(events(&env).contains(&"client_key_rotated".to_owned()));
        assert_no_private_key(&env);
    }
}

#[test]
fn an_imported_rsa_key_signs_and_rsa_generation_is_refused_with_the_fix() {
    let first = provider(0, None, json!({}));
    let env = TestEnv::new();
    env.init();
    env.add_provider(TEST_PROVIDER, first.issuer());
    let r = env
        .cli(&[
            "credential",
            "add",
            "api",
            "--provider",
            TEST_PROVIDER,
            "--client-id",
            CLIENT,
            "--generate-key",
            "--alg",
            "RS256",
        ])
        .run();
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("does not generate RSA keys") && r.stderr.contains("--key-file"),
        "{}",
        r.stderr
    );
    // Neither flag: private_key_jwt needs a key.
    let r = env
        .cli(&[
            "credential",
            "add",
            "api",
            "--provider",
            TEST_PROVIDER,
            "--client-id",
            CLIENT,
            "--auth",
            "private_key_jwt",
        ])
        .run();
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("--generate-key"), "{}", r.stderr);

    if !can_run(
        "an_imported_rsa_key_signs_and_rsa_generation_is_refused_with_the_fix",
        on_path("openssl"),
        "openssl is not installed (it makes the RSA key to import)",
    ) {
        return;
    }
    let key = env.root.join("rsa.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pem = std::fs::read_to_string(&key).unwrap();
    let key_arg = key.to_str().unwrap();
    let r = env.latchkey(&[
        "credential",
        "add",
        "api",
        "--provider",
        TEST_PROVIDER,
        "--client-id",
        CLIENT,
        "--scope",
        "api:read",
        "--key-file",
        key_arg,
    ]);
    let printed = r
        .out()
        .lines()
        .take_while(|l| !l.starts_with("added"))
        .collect::<Vec<_>>()
        .join("\n");
    let jwks: Value = serde_json::from_str(&printed).unwrap();
    assert_public(&jwks);
    assert_eq!(jwks["keys"][0]["kty"], "RSA", "{jwks}");
    let port = port_of(&first);
    drop(first);
    let p = provider(port, Some(&jwks), json!({}));
    let token = env.token("api");
    assert_eq!(p.resource(&token), 200);
    assert_eq!(p.stats().auth("private_key_jwt"), 1);
    // The key file can go: the vault holds the key.
    std::fs::remove_file(&key).unwrap();
    fresh(&env).success();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_no_secret(&env, &body[..64]);
    assert_no_private_key(&env);
}

#[test]
fn dpop_bound_tokens_need_the_vaults_proof_and_a_copied_token_is_useless() {
    for nonce in [false, true] {
        let p = provider(0, None, json!({ "dpop_nonce": nonce }));
        let env = dpop_cli_env(&p, "api", &["--dpop"]);
        let show = env
            .latchkey(&["credential", "show", "api", "--json"])
            .json();
        assert_eq!(show["dpop"], true, "{show}");

        let url = p.resource_url();
        let headers = env.latchkey(&["dpop", "api", "--url", &url]);
        let lines: Vec<&str> = headers.out().lines().collect();
        assert_eq!(lines.len(), 2, "{headers:?}");
        let authorization = lines[0]
            .strip_prefix("Authorization: ")
            .expect("an Authorization line");
        let proof = lines[1].strip_prefix("DPoP: ").expect("a DPoP line");
        let token = authorization
            .strip_prefix("DPoP ")
            .expect("a DPoP-bound token");
        let stats = p.stats();
        assert_eq!(
            stats.token_requests_with_dpop, stats.token_requests,
            "{stats:?}"
        );
        // With a nonce demanded, the first request is refused with one and
        // sent again once (RFC 9449 §8).
        assert_eq!(
            stats.token_requests,
            if nonce { 2 } else { 1 },
            "nonce {nonce}: {stats:?}"
        );

        let (status, body) = p.resource_with(authorization, Some(proof));
        assert_eq!(status, 200, "{body}");
        assert!(body["jkt"].is_string(), "bound to a key: {body}");
        // The same proof again: replayed.
        assert_eq!(p.resource_with(authorization, Some(proof)).0, 401);
        // The token alone, as Bearer or as DPoP without a proof: refused.
        let (status, body) = p.resource_with(&format!("Bearer {token}"), None);
        assert_eq!(status, 401, "{body}");
        assert_eq!(p.resource_with(authorization, None).0, 401);
        // A proof for this very token from another key: refused.
        let forged = proof_by_another_key("GET", &url, token);
        let (status, body) = p.resource_with(authorization, Some(&forged));
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("DPoP proof by another key")),
            "{body}"
        );
        // A proof for another method: refused.
        let post = env.latchkey(&["dpop", "api", "--method", "POST", "--url", &url]);
        let post_proof = post
            .out()
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("DPoP: ")
            .unwrap();
        assert_eq!(p.resource_with(authorization, Some(post_proof)).0, 401);
        // `token` says what it is: a DPoP token (useless on its own).
        let r = env.latchkey(&["token", "api", "--json"]).json();
        assert_eq!(r["token_type"], "DPoP", "{r}");
        assert_no_private_key(&env);
    }
}

#[test]
fn a_provider_that_ignores_dpop_is_refused_and_bad_dpop_requests_say_why() {
    // oidc-provider binds whenever a proof is sent; a Bearer answer is
    // what a provider without DPoP gives, faked here by the client
    // without --dpop asking `latchkey dpop`.
    let p = provider(0, None, json!({}));
    let env = dpop_cli_env(&p, "plain", &[]);
    let r = env
        .cli(&["dpop", "plain", "--url", &p.resource_url()])
        .run();
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("--dpop"), "{}", r.stderr);
    let r = env.cli(&["dpop", "plain", "--url", "not a url"]).run();
    assert!(r.stderr.contains("absolute http(s) URL"), "{}", r.stderr);
    let r = env.cli(&["credential", "jwks", "plain"]).run();
    assert!(r.stderr.contains("private_key_jwt"), "{}", r.stderr);
}

/// A DPoP proof for `token`, signed by a key the vault never saw.
fn proof_by_another_key(method: &str, url: &str, token: &str) -> String {
    use jsonwebtoken::jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
        EllipticCurveKeyType, Jwk,
    };
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| data_encoding::BASE64URL_NOPAD.encode(b);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = Some("dpop+jwt".into());
    header.jwk = Some(Jwk {
        common: CommonParameters::default(),
        algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
            key_type: EllipticCurveKeyType::EC,
            curve: EllipticCurve::P256,
            x: b64(&point[1..33]),
            y: b64(&point[33..65]),
        }),
    });
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let claims = json!({
        "jti": format!("forged-{}", rand::random::<u64>()),
        "htm": method,
        "htu": url,
        "iat": latchkey_client::unix_now(),
        "ath": b64(digest.as_ref()),
    });
    let key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// No PEM private key in any output the tests saw or the daemon's logs.
fn assert_no_private_key(env: &TestEnv) {
    assert_no_secret(env, "PRIVATE KEY");
}

fn assert_no_secret(env: &TestEnv, secret: &str) {
    for r in env.transcript() {
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "{secret:?} in {r:?}"
        );
    }
    let logs = env.all_daemon_logs();
    assert!(!logs.contains(secret), "{secret:?} in the daemon logs");
    let audit = env.latchkey(&["audit", "--json"]);
    assert!(!audit.out().contains(secret), "{secret:?} in the audit log");
}
