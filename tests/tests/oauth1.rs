//! OAuth 1.0a (RFC 5849) end to end: the real binaries against oauthlib
//! (`tests/oauth1/server.py`, an independent verifier). For HMAC-SHA1,
//! HMAC-SHA256 and RSA-SHA256: the three-legged login (the authorization
//! page approves at once; the test's HTTP client plays the browser), then
//! `latchkey oauth1-sign` for a GET with query parameters and a POST with
//! form parameters that need percent-encoding, each accepted by oauthlib;
//! a replayed header and a header for another URL refused. Token
//! credentials imported from stdin; PLAINTEXT over http and RSA-SHA1
//! refused with their reasons; canaries (consumer secret, token secret,
//! RSA key) in no CLI output, daemon log or error.
//!
//! Needs `cargo build --workspace --bins` and Debian's python3-oauthlib
//! and python3-cryptography.

use latchkey_client::protocol::LoginStartParams;
use latchkey_tests::desktop::{can_run, on_path};
use latchkey_tests::oauth1::{available, Consumer, Oauth1Provider};
use latchkey_tests::resource::{curl, ProxyRun};
use latchkey_tests::TestEnv;

const CONSUMER: &str = "consumer-1";

fn ready(test: &str) -> bool {
    can_run(
        test,
        available(),
        "/usr/bin/python3 lacks oauthlib or cryptography (apt install python3-oauthlib python3-cryptography)",
    )
}

fn canary(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("canary-{label}-{nanos:x}{:x}", std::process::id())
}

/// A vault with the provider `photos` added.
fn env_with(p: &Oauth1Provider) -> TestEnv {
    let env = TestEnv::new();
    env.init();
    env.latchkey(&[
        "provider",
        "add",
        "photos",
        "--oauth1-request-token-url",
        &p.url("/oauth/request_token"),
        "--oauth1-authorize-url",
        &p.url("/oauth/authorize"),
        "--oauth1-access-token-url",
        &p.url("/oauth/access_token"),
    ])
    .success();
    env
}

/// `latchkey credential add NAME --grant oauth1 …` with the consumer
/// secret on stdin, or the RSA key file.
fn add(env: &TestEnv, name: &str, method: &str, secret: Option<&str>, key: Option<&str>) {
    let mut args = vec![
        "credential",
        "add",
        name,
        "--provider",
        "photos",
        "--client-id",
        CONSUMER,
        "--grant",
        "oauth1",
        "--signature-method",
        method,
    ];
    match key {
        Some(path) => args.extend(["--key-file", path]),
        None => args.push("--client-secret-stdin"),
    }
    env.cli(&args)
        .stdin(secret.unwrap_or_default())
        .run()
        .success();
}

fn sign(env: &TestEnv, name: &str, method: &str, url: &str, form: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = form.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec!["oauth1-sign", name, "--method", method, "--url", url];
    for pair in &pairs {
        args.extend(["--form", pair.as_str()]);
    }
    let r = env.latchkey(&args);
    r.success();
    let header = r.out().to_owned();
    assert!(header.starts_with("OAuth "), "{header}");
    header
}

/// The three-legged login, then signed requests oauthlib checks.
fn three_legged(method: &str) {
    let env_dir = tempfile::tempdir().unwrap();
    let secret = canary("consumer");
    let rsa = method.starts_with("RSA");
    let key_path = env_dir.path().join("client-key.pem");
    let consumer = Consumer {
        key: CONSUMER.into(),
        secret: (!rsa).then(|| secret.clone()),
        rsa_key_out: rsa.then(|| key_path.clone()),
    };
    let p = Oauth1Provider::start(env_dir.path(), &[consumer], &[]);
    let env = env_with(&p);
    let name = "photos-user";
    let key = rsa.then(|| key_path.to_str().unwrap().to_owned());
    add(&env, name, method, Some(&secret), key.as_deref());
    let shown = env.latchkey(&["credential", "show", name, "--json"]).json();
    assert_eq!(shown["state"], "needs_login", "{shown}");
    assert_eq!(shown["signature_method"], method);
    let refused = env.latchkey(&["oauth1-sign", name, "--url", &p.url("/photos")]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains(&format!("latchkey login {name}")),
        "{}",
        refused.stderr
    );

    let started = env
        .login_start(&LoginStartParams {
            credential: name.into(),
            ..Default::default()
        })
        .expect("login.start");
    let authorization = started.authorization_url.clone().unwrap();
    assert!(authorization.contains("oauth_token="), "{authorization}");
    assert_eq!(p.browse(started.start_url.as_deref().unwrap()), 200);
    let done = env.login_wait(&started.login_id).expect("login.wait");
    assert!(done.token_credentials && !done.refresh_token);
    let shown = env.latchkey(&["credential", "show", name, "--json"]).json();
    assert_eq!(shown["state"], "ready", "{shown}");
    assert_eq!(shown["has_token_credentials"], true, "{shown}");
    let text = env.latchkey(&["credential", "show", name]);
    assert!(
        text.out().contains("token credentials: held"),
        "{}",
        text.out()
    );

    // A GET with query parameters that need percent-encoding.
    let url = p.url("/photos?file=vacation.jpg&size=original&q=a+b%2Bc%2F%3D%26~%C3%A9&empty=");
    let header = sign(&env, name, "GET", &url, &[]);
    assert!(header.contains(&format!("oauth_signature_method=\"{method}\"")));
    assert!(
        p.accepts("GET", &url, &header, &[]),
        "oauthlib refused {header}"
    );
    // The same header again is a replay (its nonce was seen).
    let before = p.replays_refused();
    assert!(!p.accepts("GET", &url, &header, &[]));
    assert_eq!(p.replays_refused(), before + 1);
    // A signature for one URL is no good for another.
    let header = sign(&env, name, "GET", &url, &[]);
    let other = p.url("/photos?file=vacation.jpg&size=thumbnail");
    assert!(!p.accepts("GET", &other, &header, &[]));
    // Nor for another method.
    let header = sign(&env, name, "GET", &url, &[]);
    assert!(!p.accepts("POST", &url, &header, &[]));

    // A POST with form parameters (and a query) that need encoding.
    let url = p.url("/photos/upload?album=summer%202024");
    let form = [
        ("status", "hello world + / = & ~ é ünïcödé"),
        ("tags[]", "a b"),
        ("tags[]", "c+d"),
        ("z", ""),
    ];
    let header = sign(&env, name, "POST", &url, &form);
    assert!(
        p.accepts("POST", &url, &header, &form),
        "oauthlib refused {header}"
    );
    // The form changed after signing: refused.
    let header = sign(&env, name, "POST", &url, &form);
    let mut changed = form;
    changed[0].1 = "hello world";
    assert!(!p.accepts("POST", &url, &header, &changed));

    // --json for scripts.
    let header = env
        .latchkey(&[
            "oauth1-sign",
            name,
            "--url",
            &url,
            "--method",
            "post",
            "--json",
        ])
        .json();
    let value = header["authorization"].as_str().unwrap().to_owned();
    assert!(p.accepts("POST", &url, &value, &[]), "{value}");

    let mut canaries = vec![("consumer secret", secret.clone())];
    if rsa {
        // A line from the middle of the PEM body: a piece of the key.
        let pem = std::fs::read_to_string(&key_path).unwrap();
        let line = pem.lines().nth(5).unwrap().to_owned();
        canaries = vec![("RSA private key", line)];
    }
    assert_no_canaries(&env, &canaries);
}

fn assert_no_canaries(env: &TestEnv, canaries: &[(&str, String)]) {
    let logs = env.all_daemon_logs();
    for (what, c) in canaries {
        assert!(
            !logs.contains(c.as_str()),
            "the {what} is in the daemon log"
        );
        for run in env.transcript() {
            assert!(
                !run.stdout.contains(c.as_str()) && !run.stderr.contains(c.as_str()),
                "the {what} is in the output of {:?}",
                run.args
            );
        }
    }
    let vault = std::fs::read(&env.vault).unwrap();
    for (what, c) in canaries {
        assert!(
            !vault.windows(c.len()).any(|w| w == c.as_bytes()),
            "the {what} is in the vault file in clear"
        );
    }
}

#[test]
fn hmac_sha1_three_legged_login_and_signed_requests() {
    if ready("hmac_sha1") {
        three_legged("HMAC-SHA1");
    }
}

#[test]
fn hmac_sha256_three_legged_login_and_signed_requests() {
    if ready("hmac_sha256") {
        three_legged("HMAC-SHA256");
    }
}

#[test]
fn rsa_sha256_three_legged_login_and_signed_requests() {
    if ready("rsa_sha256") {
        three_legged("RSA-SHA256");
    }
}

/// A provider that issued `token` to [`CONSUMER`] beforehand (what a
/// developer page hands out), with a canary consumer secret and token
/// secret: the provider, its directory, and the two secrets.
fn with_issued_token(token: &str) -> (tempfile::TempDir, Oauth1Provider, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let secret = canary("consumer");
    let token_secret = canary("tokensecret");
    let p = Oauth1Provider::start(
        dir.path(),
        &[Consumer {
            key: CONSUMER.into(),
            secret: Some(secret.clone()),
            rsa_key_out: None,
        }],
        &[(token, CONSUMER, &token_secret)],
    );
    (dir, p, secret, token_secret)
}

/// Token credentials from a provider's developer page, on stdin.
#[test]
fn imported_token_credentials_sign_and_never_show() {
    if !ready("import") {
        return;
    }
    let token = "issued-token-1";
    let (_dir, p, secret, token_secret) = with_issued_token(token);
    let env = env_with(&p);
    add(&env, "imported", "HMAC-SHA256", Some(&secret), None);
    let bad = env
        .cli(&["credential", "import-token", "imported"])
        .stdin("only-one-line\n")
        .run();
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("token secret"), "{}", bad.stderr);
    env.cli(&["credential", "import-token", "imported"])
        .stdin(format!("{token}\n{token_secret}\n"))
        .run()
        .success();
    let url = p.url("/me?fields=name,email");
    let header = sign(&env, "imported", "GET", &url, &[]);
    assert!(p.accepts("GET", &url, &header, &[]), "{header}");
    // An OAuth 2 verb on it names the right one.
    let r = env.latchkey(&["token", "imported"]);
    assert_ne!(r.code, 0);
    // And an oauth_* parameter in the request is refused.
    let r = env.latchkey(&[
        "oauth1-sign",
        "imported",
        "--url",
        &p.url("/x?oauth_token=t"),
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("oauth_"), "{}", r.stderr);
    env.latchkey(&["credential", "list", "--json"]).success();
    env.latchkey(&["credential", "show", "imported"]).success();
    assert_no_canaries(
        &env,
        &[("consumer secret", secret), ("token secret", token_secret)],
    );
}

/// `latchkey proxy` in front of the oauthlib resource: every request is
/// signed in the daemon for its method, URL and form body; the app sends
/// none of the secrets, and its own Authorization header is replaced.
#[test]
fn the_proxy_signs_each_request_with_its_query_and_form() {
    if !ready("proxy") || !can_run("proxy", on_path("curl"), "curl is not installed") {
        return;
    }
    let token = "issued-token-2";
    let (_dir, p, secret, token_secret) = with_issued_token(token);
    let env = env_with(&p);
    add(&env, "proxied", "HMAC-SHA1", Some(&secret), None);
    env.cli(&["credential", "import-token", "proxied"])
        .stdin(format!("{token}\n{token_secret}\n"))
        .run()
        .success();
    let upstream = p.url("");
    let proxy = ProxyRun::start(&env, &["proxied", "--upstream", &upstream]);
    let base = proxy.listen.clone();
    let got = curl(
        &[
            "-H",
            "Authorization: OAuth oauth_token=\"the-apps-own\"",
            &format!("{base}/me?fields=name%2Cemail&q=a+b"),
        ],
        None,
    );
    assert_eq!(got.status, 200, "{got:?} {}", proxy.stderr());
    assert_eq!(got.json()["valid"], true);
    let posted = curl(
        &[
            "--data-urlencode",
            "status=hi & bye, caf\u{e9} 100%",
            // curl leaves the name as given; oauthlib takes only bodies
            // that are fully form-encoded.
            "--data-urlencode",
            "tags%5B%5D=a/b",
            &format!("{base}/statuses/update?x=1"),
        ],
        None,
    );
    assert_eq!(posted.status, 200, "{posted:?} {}", proxy.stderr());
    // A body that is not a form is not signed into the base string.
    let json = curl(
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "{\"a\": 1}",
            &format!("{base}/upload"),
        ],
        None,
    );
    assert_eq!(json.status, 200, "{json:?} {}", proxy.stderr());
    drop(proxy);
    assert_eq!(p.replays_refused(), 0);
    assert_no_canaries(
        &env,
        &[("consumer secret", secret), ("token secret", token_secret)],
    );
}

#[test]
fn plaintext_over_http_and_rsa_sha1_are_refused_with_their_reasons() {
    if !ready("refusals") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = Oauth1Provider::start(dir.path(), &[], &[]);
    let env = env_with(&p);
    let r = env
        .cli(&[
            "credential",
            "add",
            "plain",
            "--provider",
            "photos",
            "--client-id",
            CONSUMER,
            "--grant",
            "oauth1",
            "--signature-method",
            "PLAINTEXT",
            "--client-secret-stdin",
        ])
        .stdin("s3cret")
        .run();
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("PLAINTEXT") && r.stderr.contains("https"),
        "{}",
        r.stderr
    );
    let key = env.write_secret_file(
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let r = env.latchkey(&[
        "credential",
        "add",
        "rsa1",
        "--provider",
        "photos",
        "--client-id",
        CONSUMER,
        "--grant",
        "oauth1",
        "--signature-method",
        "RSA-SHA1",
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("RSA-SHA1 is not supported")
            && r.stderr.contains("RUSTSEC-2023-0071")
            && r.stderr.contains("RSA-SHA256"),
        "{}",
        r.stderr
    );
    // An RSA-SHA256 credential with a key that is not one is refused too.
    let r = env.latchkey(&[
        "credential",
        "add",
        "rsa2",
        "--provider",
        "photos",
        "--client-id",
        CONSUMER,
        "--grant",
        "oauth1",
        "--signature-method",
        "RSA-SHA256",
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("PKCS#8"), "{}", r.stderr);
}
