//! The `latchkey` CLI end to end: the real CLI and daemon binaries, a real
//! vault file and a real authorization server (oidc-provider) on loopback.
//! Covers the user-facing flow (init, providers by discovery, credentials
//! with every secret source and both secret-based client authentications,
//! token / header / exec, scopes), persistence across daemon restarts,
//! `--min-ttl`, daemon start-up (on demand, one per vault), the URL policy,
//! passphrases, lock / unlock and auto-lock.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use latchkey_client::unix_now;
use std::time::Duration;

use latchkey_tests::fixture::{client_credentials, svc, TEST_PROVIDER};
use latchkey_tests::provider::{ClientSpec, Provider};
use latchkey_tests::{alive, wait_for, DaemonOpts, TestEnv};
use serde_json::{json, Value};

/// The pid in a "started daemon (pid N)" notice, if the text has one.
fn started_pid(stderr: &str) -> Option<u32> {
    let rest = stderr.split("started daemon (pid ").nth(1)?;
    rest.split(')').next()?.parse().ok()
}

fn vault_state(env: &TestEnv) -> String {
    env.latchkey(&["status", "--json"]).json()["vault"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn tokens_headers_exec_and_scopes_with_every_secret_source() {
    let p = Provider::start(&[
        ClientSpec::client_credentials(
            "svc-basic",
            "basic-s3cret",
            "client_secret_basic",
            "api:read api:write",
        ),
        ClientSpec::client_credentials(
            "svc-post",
            "post-s3cret!&=",
            "client_secret_post",
            "api:read",
        ),
        ClientSpec::client_credentials("svc-env", "env s3cret", "client_secret_basic", "api:read"),
    ]);
    let env = TestEnv::new();
    // Started here, not by the CLI: the CLI keeps LATCHKEY_INSECURE_TEST_KDF from a daemon it starts.
    env.start_daemon();
    env.init();
    let added = env.latchkey(&["provider", "add", "test", "--issuer", p.issuer()]);
    added.success();
    assert!(
        added.stdout.contains(p.token_endpoint()),
        "provider add shows the discovered token endpoint: {}",
        added.stdout
    );
    let shown = env.latchkey(&["provider", "show", "test", "--json"]).json();
    assert_eq!(shown["endpoints"]["token_endpoint"], p.token_endpoint());
    assert_eq!(shown["issuer"], p.issuer());

    // One credential per secret source. stdin and file drop one trailing
    // newline; an env var is taken as is.
    env.cli(&[
        "credential",
        "add",
        "basic",
        "--provider",
        "test",
        "--client-id",
        "svc-basic",
        "--auth",
        "client_secret_basic",
        "--scope",
        "api:read api:write",
        "--client-secret-stdin",
    ])
    .stdin("basic-s3cret\n")
    .run()
    .success();
    let secret_file = env.write_secret_file("post-secret", "post-s3cret!&=\n");
    env.latchkey(&[
        "credential",
        "add",
        "post",
        "--provider",
        "test",
        "--client-id",
        "svc-post",
        "--auth",
        "client_secret_post",
        "--scope",
        "api:read",
        "--client-secret-file",
        secret_file.to_str().unwrap(),
    ])
    .success();
    // No --auth: client_credentials defaults to client_secret_basic.
    env.cli(&[
        "credential",
        "add",
        "fromenv",
        "--provider",
        "test",
        "--client-id",
        "svc-env",
        "--scope",
        "api:read",
        "--client-secret-env",
        "SVC_SECRET",
    ])
    .env("SVC_SECRET", "env s3cret")
    .run()
    .success();
    let listed = env.latchkey(&["credential", "list", "--json"]).json();
    let auths: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["auth"].as_str().unwrap()))
        .collect();
    assert_eq!(
        auths,
        [
            ("basic", "client_secret_basic"),
            ("fromenv", "client_secret_basic"),
            ("post", "client_secret_post")
        ]
    );
    assert_eq!(
        p.stats().token_requests,
        0,
        "adding credentials requests no token"
    );

    // `token` prints the token alone; the provider knows it.
    let t_basic = env.token("basic");
    let stats = p.stats();
    assert_eq!(
        (stats.token_requests, stats.auth("client_secret_basic")),
        (1, 1),
        "{stats:?}"
    );
    let intro = p.introspect(&t_basic, "svc-basic", "basic-s3cret");
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["client_id"], "svc-basic");
    assert_eq!(intro["scope"], "api:read api:write");
    assert_eq!(p.resource(&t_basic), 200);

    let t_post = env.token("post");
    let stats = p.stats();
    assert_eq!(
        (stats.token_requests, stats.auth("client_secret_post")),
        (2, 1),
        "{stats:?}"
    );
    let intro = p.introspect(&t_post, "svc-post", "post-s3cret!&=");
    assert_eq!(
        (intro["active"].clone(), intro["client_id"].clone()),
        (json!(true), json!("svc-post"))
    );
    assert_eq!(intro["scope"], "api:read");

    let t_env = env.token("fromenv");
    let stats = p.stats();
    assert_eq!(
        (stats.token_requests, stats.auth("client_secret_basic")),
        (3, 2),
        "{stats:?}"
    );
    assert_eq!(
        p.introspect(&t_env, "svc-env", "env s3cret")["client_id"],
        "svc-env"
    );
    assert!(t_basic != t_post && t_post != t_env && t_basic != t_env);

    // --json: exactly four fields, the cached token, the truth about expiry.
    let j = env.latchkey(&["token", "basic", "--json"]).json();
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["access_token", "expires_at", "scope", "token_type"]);
    assert_eq!(j["access_token"], t_basic.as_str());
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["scope"], "api:read api:write");
    let expires_at = j["expires_at"].as_i64().expect("expires_at is a number");
    assert!(
        (unix_now() + 3000..=unix_now() + 3601).contains(&expires_at),
        "expires_at {expires_at}, now {}",
        unix_now()
    );

    // header
    let header = env.latchkey(&["header", "basic"]);
    assert_eq!(header.out(), format!("Authorization: Bearer {t_basic}"));

    // exec: the token reaches the child's environment only, and the
    // child's exit code is ours.
    let tok_file = env.root.join("exec-token");
    let argv_file = env.root.join("exec-argv");
    let script = r#"printf %s "$TOK" > "$0"; tr '\0' ' ' < /proc/$$/cmdline > "$1"; printf %s "${LATCHKEY_TOKEN-unset}" > "$1.default"; exit 42"#;
    let r = env.latchkey(&[
        "exec",
        "basic",
        "--env",
        "TOK",
        "--",
        "sh",
        "-c",
        script,
        tok_file.to_str().unwrap(),
        argv_file.to_str().unwrap(),
    ]);
    r.code_is(42);
    assert_eq!(std::fs::read_to_string(&tok_file).unwrap(), t_basic);
    let argv = std::fs::read_to_string(&argv_file).unwrap();
    assert!(argv.contains("sh -c"), "child argv: {argv}");
    assert!(
        !argv.contains(&t_basic),
        "the token is in the child's argv: {argv}"
    );
    assert_eq!(
        std::fs::read_to_string(argv_file.with_extension("default")).unwrap(),
        "unset",
        "--env TOK puts the token in TOK only"
    );
    assert!(
        !r.stdout.contains(&t_basic) && !r.stderr.contains(&t_basic),
        "{r:?}"
    );
    // The default variable, and exit 0 passed on as 0.
    let r = env.latchkey(&[
        "exec",
        "post",
        "--",
        "sh",
        "-c",
        r#"printf %s "$LATCHKEY_TOKEN" > "$0""#,
        tok_file.to_str().unwrap(),
    ]);
    r.success();
    assert_eq!(std::fs::read_to_string(&tok_file).unwrap(), t_post);
    assert_eq!(
        p.stats().token_requests,
        3,
        "json, header and exec were served from the cache"
    );

    // A subset of the configured scopes: a down-scoped token, cached apart.
    let t_read = env
        .latchkey(&["token", "basic", "--scope", "api:read"])
        .out()
        .to_string();
    assert_ne!(t_read, t_basic);
    assert_eq!(p.stats().token_requests, 4);
    let intro = p.introspect(&t_read, "svc-basic", "basic-s3cret");
    assert_eq!(
        (intro["active"].clone(), intro["scope"].clone()),
        (json!(true), json!("api:read"))
    );
    assert_eq!(
        env.latchkey(&["token", "basic", "--scope", "api:read"])
            .out(),
        t_read
    );
    assert_eq!(
        env.token("basic"),
        t_basic,
        "the full-scope token is still cached"
    );
    assert_eq!(p.stats().token_requests, 4);

    // Scopes the credential was not configured for: forbidden, exit 9,
    // and the provider is never asked.
    let r = env.latchkey(&["token", "basic", "--scope", "api:read admin"]);
    r.code_is(9);
    assert!(r.stderr.contains("admin"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    env.latchkey(&["token", "post", "--scope", "api:write"])
        .code_is(9);
    env.latchkey(&["header", "post", "--scope", "api:write"])
        .code_is(9);
    assert_eq!(p.stats().token_requests, 4);

    // Unknown credential: exit 5.
    env.latchkey(&["token", "nope"]).code_is(5);
}

#[test]
fn a_path_issuer_is_discovered_and_serves_tokens() {
    let client = ClientSpec::client_credentials("svc", "s3cret", "client_secret_post", "api:read");
    let p = Provider::start_with(json!({
        "clients": [client.to_json()],
        "issuer_path": "/tenant-a",
    }));
    assert!(p.issuer().ends_with("/tenant-a"));
    let env = TestEnv::new();
    // Started here, not by the CLI: the CLI keeps LATCHKEY_INSECURE_TEST_KDF from a daemon it starts.
    env.start_daemon();
    env.init();
    env.add_provider("tenant", p.issuer());
    let shown = env
        .latchkey(&["provider", "show", "tenant", "--json"])
        .json();
    assert_eq!(shown["issuer"], p.issuer());
    assert_eq!(
        shown["endpoints"]["token_endpoint"],
        format!("{}/token", p.issuer())
    );
    client_credentials(&env, "tenant", "svc", &client);
    let token = env.token("svc");
    let intro = p.introspect(&token, "svc", "s3cret");
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["iss"], p.issuer());
    assert_eq!(intro["scope"], "api:read");
    assert_eq!(p.stats().auth("client_secret_post"), 1);
}

/// Also the suite's test of the production Argon2id parameters.
#[test]
fn a_restarted_daemon_serves_the_stored_token_and_min_ttl_forces_one_request() {
    let p = Provider::start(&[svc()]);
    let env = TestEnv::with_real_kdf();
    let first = env.start_daemon();
    let init = env.init();
    assert!(
        started_pid(&init.stderr).is_none(),
        "a running daemon is used, not a new one: {}",
        init.stderr
    );
    assert_eq!(
        env.passphrase_slot_kdf(),
        [json!({"m_kib": 65536, "t": 3, "p": 4})],
        "without LATCHKEY_INSECURE_TEST_KDF, slots use RFC 9106's second recommended option"
    );
    env.add_provider(TEST_PROVIDER, p.issuer());
    client_credentials(&env, TEST_PROVIDER, "svc", &svc());
    let t1 = env.token("svc");
    assert_eq!(p.stats().token_requests, 1);

    let status = env.stop_daemon(&first);
    assert!(status.success(), "SIGTERM is a clean shutdown: {status}");
    assert!(env.serving_pid().is_none());
    assert!(
        env.daemon_log(&first).contains("latchkeyd stopped"),
        "{}",
        env.daemon_log(&first)
    );

    // A new daemon, unlocked at start from LATCHKEY_PASSPHRASE_FILE.
    let second = env.start_daemon_with(DaemonOpts::new().unlocked(&env));
    assert_eq!(vault_state(&env), "unlocked");
    let t = env.token("svc");
    assert_eq!(t, t1, "the stored token is served after a restart");
    assert_eq!(
        p.stats().token_requests,
        1,
        "and the provider was not asked again"
    );
    assert!(
        env.daemon_log(&second).contains("vault unlocked at start"),
        "{}",
        env.daemon_log(&second)
    );

    // --min-ttl longer than the provider's 1 h tokens: exactly one request,
    // whose token is returned although it lives shorter than asked.
    let r = env
        .latchkey(&["token", "svc", "--min-ttl", "2h", "--json"])
        .json();
    let t2 = r["access_token"].as_str().unwrap().to_string();
    assert_ne!(t2, t1);
    assert_eq!(p.stats().token_requests, 2);
    let expires_at = r["expires_at"].as_i64().unwrap();
    assert!(
        expires_at <= unix_now() + 3600,
        "expires_at tells the truth: {expires_at}"
    );
    assert_eq!(p.introspect(&t2, "svc", "s3cret")["active"], true);
    assert_eq!(env.token("svc"), t2, "the fresh token replaced the old one");
    assert_eq!(
        env.latchkey(&["token", "svc", "--min-ttl", "30m"]).out(),
        t2
    );
    assert_eq!(p.stats().token_requests, 2);
    env.latchkey(&["token", "svc", "--min-ttl", "2h"]).success();
    assert_eq!(
        p.stats().token_requests,
        3,
        "each forcing call costs exactly one request"
    );
}

#[test]
fn the_cli_starts_the_daemon_on_demand_and_says_so() {
    let env = TestEnv::new();
    assert!(env.serving_pid().is_none());
    let r = env.latchkey(&["status", "--json"]);
    let status = r.json();
    assert_eq!(status["vault"], "uninitialized");
    let pid = started_pid(&r.stderr)
        .unwrap_or_else(|| panic!("no start notice on stderr: {:?}", r.stderr));
    assert_eq!(status["pid"], pid);
    assert!(alive(pid));
    assert_eq!(env.serving_pid(), Some(pid));
    assert_eq!(
        env.cli_started_daemons(),
        [pid],
        "the CLI started latchkeyd from its own directory"
    );
    assert!(
        env.cli_daemon_log().contains("latchkeyd listening"),
        "{}",
        env.cli_daemon_log()
    );

    // Later commands use it and say nothing about starting.
    let r = env.init();
    assert!(started_pid(&r.stderr).is_none(), "{}", r.stderr);
    assert_eq!(env.latchkey(&["status", "--json"]).json()["pid"], pid);
    let r = env.latchkey(&["daemon", "status"]);
    r.success();
    assert!(
        r.stdout.contains(&format!("running (pid {pid})")),
        "{}",
        r.stdout
    );

    let r = env.latchkey(&["daemon", "stop"]);
    assert!(
        r.out().contains(&format!("stopped daemon (pid {pid})")),
        "{}",
        r.stdout
    );
    assert!(!alive(pid), "daemon stop returns once the daemon is gone");
    env.latchkey(&["daemon", "status"]).code_is(3);
    // `lock` never starts a daemon just to lock it.
    env.latchkey(&["lock"]).success();
    assert!(env.serving_pid().is_none());

    // The next command starts a new one, which finds the vault locked.
    let r = env.latchkey(&["provider", "list"]);
    r.code_is(4);
    let again = started_pid(&r.stderr).expect("a new daemon was started");
    assert_ne!(again, pid);
    assert!(r.stderr.contains("latchkey unlock"), "{}", r.stderr);
}

#[test]
fn a_second_daemon_on_the_same_vault_exits_naming_the_running_one() {
    let env = TestEnv::new();
    let first = env.start_daemon();
    env.init();
    let expected = format!(
        "another latchkeyd (pid {}) already serves the vault",
        first.pid
    );
    // Same vault, another socket: only the vault lock can stop it.
    let other_socket = env.root.join("other.sock");
    let (status, log) = env.run_daemon_expecting_exit(
        DaemonOpts::new()
            .arg("--socket")
            .arg(other_socket.to_str().unwrap()),
        Duration::from_secs(20),
    );
    assert!(!status.success(), "{status}: {log}");
    assert!(log.contains(&expected), "{log}");
    assert!(!other_socket.exists(), "the refused daemon bound no socket");
    // Same vault and socket.
    let (status, log) = env.run_daemon_expecting_exit(DaemonOpts::new(), Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(&expected), "{log}");

    // The first one is untouched and still serves on its socket.
    assert!(env.daemon_running(&first));
    assert_eq!(env.serving_pid(), Some(first.pid));
    assert_eq!(vault_state(&env), "unlocked");
}

#[test]
fn plain_http_providers_off_loopback_are_refused() {
    let env = TestEnv::new();
    // Started here, not by the CLI: the CLI keeps LATCHKEY_INSECURE_TEST_KDF from a daemon it starts.
    env.start_daemon();
    env.init();
    for args in [
        [
            "provider",
            "add",
            "remote",
            "--issuer",
            "http://auth.example.com",
        ],
        [
            "provider",
            "add",
            "remote",
            "--token-endpoint",
            "http://10.1.2.3/oauth/token",
        ],
    ] {
        let r = env.latchkey(&args);
        assert_ne!(r.code, 0, "{r:?}");
        assert!(
            r.stderr.contains("plain http") && r.stderr.contains("use https"),
            "the refusal says why and what to do: {}",
            r.stderr
        );
    }
    assert_eq!(
        env.latchkey(&["provider", "list", "--json"]).json(),
        json!([])
    );
    // Loopback http is allowed (RFC 8252; local test servers).
    env.latchkey(&[
        "provider",
        "add",
        "local",
        "--token-endpoint",
        "http://127.0.0.1:9/token",
    ])
    .success();
    let list = env.latchkey(&["provider", "list", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn wrong_passphrases_keep_the_vault_locked_and_lock_unlock_round_trips() {
    let p = Provider::start(&[svc()]);
    let env = TestEnv::new();
    // Started here, not by the CLI: the CLI keeps LATCHKEY_INSECURE_TEST_KDF from a daemon it starts.
    env.start_daemon();
    env.init();
    assert_eq!(
        env.passphrase_slot_kdf(),
        [json!({"m_kib": 19456, "t": 2, "p": 1})],
        "LATCHKEY_INSECURE_TEST_KDF=1 lowers Argon2id to OWASP's minimum, not below"
    );
    env.add_provider(TEST_PROVIDER, p.issuer());
    client_credentials(&env, TEST_PROVIDER, "svc", &svc());
    let t1 = env.token("svc");

    assert!(env.latchkey(&["lock"]).out().contains("locked"));
    assert_eq!(vault_state(&env), "locked");
    let r = env.latchkey(&["token", "svc"]);
    r.code_is(4);
    assert!(
        r.stderr.contains("latchkey unlock"),
        "the error names the fix: {}",
        r.stderr
    );

    let wrong = env.write_secret_file("wrong", "correct horse battery stapler\n");
    let r = env.latchkey(&["unlock", "--passphrase-file", wrong.to_str().unwrap()]);
    r.code_is(10);
    assert!(r.stderr.contains("wrong passphrase"), "{}", r.stderr);
    assert_eq!(vault_state(&env), "locked");
    env.latchkey(&["token", "svc"]).code_is(4);
    env.cli(&["unlock", "--passphrase-stdin"])
        .stdin("not it")
        .run()
        .code_is(10);
    assert_eq!(vault_state(&env), "locked");

    let r = env
        .cli(&["unlock", "--passphrase-stdin"])
        .stdin(format!("{}\n", latchkey_tests::env::PASSPHRASE))
        .run();
    assert!(r.out().contains("unlocked"), "{}", r.stdout);
    assert_eq!(vault_state(&env), "unlocked");
    assert!(env.latchkey(&["unlock"]).out().contains("already unlocked"));
    // Unlocking reloads the stored token: no new request.
    assert_eq!(env.token("svc"), t1);
    assert_eq!(p.stats().token_requests, 1);

    // Once more, with LATCHKEY_PASSPHRASE_FILE instead of a flag.
    env.latchkey(&["lock"]).success();
    let file = env.passphrase_file();
    env.cli(&["unlock"])
        .env("LATCHKEY_PASSPHRASE_FILE", file.as_os_str())
        .run()
        .success();
    assert_eq!(vault_state(&env), "unlocked");
}

#[test]
fn the_vault_locks_itself_when_idle_and_status_does_not_keep_it_open() {
    // The provider starts before the daemon: on a loaded machine node takes
    // seconds to boot, longer than the idle timeout below.
    let p = Provider::start(&[svc()]);
    let env = TestEnv::new();
    // 3 s: the daemon counts idle time in whole seconds, so the vault may
    // lock after just over 2 s of real idleness; the use loop below leaves
    // far shorter gaps than that.
    env.start_daemon_with(DaemonOpts::new().arg("--idle-timeout").arg("3s"));
    env.init();
    env.latchkey(&[
        "provider",
        "add",
        "local",
        "--token-endpoint",
        "http://127.0.0.1:9/token",
    ])
    .success();
    let status = env.latchkey(&["status", "--json"]).json();
    assert_eq!(status["idle_timeout_secs"], 3, "{status}");

    // Real use (tokens) keeps it open...
    env.add_provider("idp", p.issuer());
    client_credentials(&env, "idp", "svc", &svc());
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        env.token("svc");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(vault_state(&env), "unlocked");

    // ...and read-only polling (status, listings) does not: it locks within a few ticks.
    let mut seen = Vec::new();
    wait_for(
        "the vault to auto-lock",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let s: Value = env.latchkey(&["status", "--json"]).json();
            seen.push(s["locks_in_secs"].clone());
            if s["vault"] != "locked" {
                // May race with the lock itself: only the call matters here.
                let _ = env.latchkey(&["credential", "list"]);
            }
            (s["vault"] == "locked").then_some(())
        },
    );
    assert!(
        seen.iter()
            .all(|v| v.is_null() || v.as_u64().is_some_and(|s| s <= 3)),
        "locks_in_secs never exceeds the timeout: {seen:?}"
    );
    let r = env.latchkey(&["provider", "list"]);
    r.code_is(4);
    assert!(r.stderr.contains("latchkey unlock"), "{}", r.stderr);
    let file = env.passphrase_file();
    env.latchkey(&["unlock", "--passphrase-file", file.to_str().unwrap()])
        .success();
    let list = env.latchkey(&["provider", "list", "--json"]).json();
    assert_eq!(list[1]["name"], "local", "{list}");
}

#[test]
fn a_headless_caller_reunlocks_an_auto_locked_vault_from_the_passphrase_file() {
    let env = TestEnv::new();
    env.start_daemon_with(DaemonOpts::new().arg("--idle-timeout").arg("1s"));
    env.init();
    wait_for(
        "the vault to auto-lock",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || (vault_state(&env) == "locked").then_some(()),
    );
    let file = env.passphrase_file();
    let r = env
        .cli(&["provider", "list", "--json"])
        .env("LATCHKEY_PASSPHRASE_FILE", file.as_os_str())
        .run();
    assert_eq!(r.json(), json!([]));
    assert!(
        r.stderr.contains("LATCHKEY_PASSPHRASE_FILE"),
        "the CLI says it unlocked: {}",
        r.stderr
    );
}
